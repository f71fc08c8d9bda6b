//! `shoal lab`: a multi-node swarm on one machine, the way kind and k3d give Kubernetes one.
//!
//! Layout of a lab called NAME with nodes `mgr1…`, `wrk1…`:
//! - network namespace `shoal-NAME-hub` holding bridge `br0` (its own namespace, so the host's
//!   iptables FORWARD policy and bridge netfilter never see lab traffic), the host's own veth
//!   `shl<hash>` ↔ `h0` on `br0` with the subnet's last address (host traffic to the lab is
//!   locally generated, so a DROP FORWARD policy does not apply), and one namespace
//!   `shoal-NAME-<node>` per node with `lo` up and `eth0` (veth peer of `v<N>` on `br0`) carrying
//!   `<subnet>.N/prefix`;
//! - `/run/shoal-lab/NAME/lab.json` (everything the lab creates, written before it is created),
//!   `/run/shoal-lab/NAME/<node>/{docker.sock,daemon.log,x/}` (socket, log, exec-root) and
//!   `/var/lib/shoal-lab/NAME/<node>` (data-root);
//! - one `shoal daemon` per node, started with `nsenter --net` (not `ip netns exec`, which
//!   remounts /sys) in its own session and its own UTS namespace whose hostname is the node's
//!   name.
//!
//! `down` works from lab.json and, when that is missing or incomplete, from the naming
//! conventions above, so it also cleans up after a crash half-way through `up`.
//! Plain std + libc + serde_json: no async runtime (a tiny HTTP/1.1 client over the socket).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const RUN_ROOT: &str = "/run/shoal-lab";
const DATA_ROOT: &str = "/var/lib/shoal-lab";
const NETNS_DIR: &str = "/run/netns";
const BRIDGE: &str = "br0";
const API: &str = "/v1.50";
const MAX_NAME_LEN: usize = 32;
const MAX_NODES: usize = 250;

#[derive(Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Create a lab: namespaces joined by a bridge, a daemon per node, one swarm.
    Up(UpArgs),
    /// List labs, their nodes, addresses, sockets and whether each daemon is alive.
    Ls,
    /// Remove a lab and everything it created (also after a crash).
    Down(DownArgs),
}

#[derive(Args)]
struct UpArgs {
    /// Lab name (lowercase letters, digits and '-').
    #[arg(long, default_value = "lab")]
    name: String,
    /// Number of manager nodes (node 1 initialises the swarm).
    #[arg(long, default_value_t = 1)]
    managers: usize,
    /// Number of worker nodes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// IPv4 subnet of the lab network; node N gets the N-th address.
    #[arg(long, default_value = "10.99.0.0/24")]
    subnet: String,
    /// Start the daemons but leave swarm init/join to you (the tutorial's way).
    #[arg(long)]
    no_swarm: bool,
}

#[derive(Args)]
struct DownArgs {
    /// Lab name.
    #[arg(long, default_value = "lab")]
    name: String,
}

/// Entry point of `shoal lab …`.
pub fn run(args: LabArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("shoal lab needs root (it creates network namespaces, mounts and cgroups); run it as root, e.g. with sudo");
    }
    match args.command {
        LabCommand::Up(a) => up(a),
        LabCommand::Ls => ls(),
        LabCommand::Down(a) => down(&a.name),
    }
}

// ---------------------------------------------------------------------------------------------
// Planning (pure)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    Manager,
    Worker,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

/// One entry of lab.json's `nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Node {
    /// `mgr1`, `wrk2`, …
    name: String,
    role: Role,
    /// 1-based position in the lab: address offset and veth number.
    index: usize,
    addr: Option<Ipv4Addr>,
    netns: String,
    /// The hub side of the veth pair (`v<index>` on `br0`).
    veth: String,
    /// `/run/shoal-lab/NAME/<node>`: socket, log, exec-root.
    dir: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    data_root: PathBuf,
    exec_root: PathBuf,
    pid: Option<i32>,
    pid_start: Option<u64>,
}

/// The contents of lab.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Lab {
    name: String,
    subnet: String,
    prefix: u8,
    hub_netns: String,
    bridge: String,
    /// `/run/shoal-lab/NAME`.
    dir: PathBuf,
    /// `/var/lib/shoal-lab/NAME`.
    data_dir: PathBuf,
    exe: PathBuf,
    nodes: Vec<Node>,
    /// This host's own link into the lab (`shl<hash>` here, `h0` on `br0`) and its address, so
    /// `curl http://<node>:PORT/` works from the host's shell; None when the host already routes
    /// the subnet (another lab?) or the subnet has no address left.
    #[serde(default)]
    host_link: Option<HostLink>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct HostLink {
    ifname: String,
    addr: Ipv4Addr,
}

/// `shl` + 8 hex digits of FNV-1a(lab name): unique per lab and within IFNAMSIZ.
fn host_link_name(lab: &str) -> String {
    let hash = lab.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    format!("shl{hash:08x}")
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0] != b'-';
    if !ok {
        bail!("invalid lab name {name:?}: use 1 to {MAX_NAME_LEN} lowercase letters, digits and '-', not starting with '-'");
    }
    Ok(())
}

/// `10.99.0.0/24` → (network address, prefix). Host bits must be zero.
fn parse_subnet(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (ip, prefix) = s.split_once('/').with_context(|| format!("invalid --subnet {s:?}: expected e.g. 10.99.0.0/24"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| anyhow!("invalid --subnet {s:?}: {ip:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| anyhow!("invalid --subnet {s:?}: bad prefix length {prefix:?}"))?;
    if !(8..=30).contains(&prefix) {
        bail!("invalid --subnet {s:?}: the prefix length must be between 8 and 30");
    }
    let mask = u32::MAX << (32 - prefix);
    if u32::from(ip) & !mask != 0 {
        bail!("invalid --subnet {s:?}: host bits are set (did you mean {}/{prefix}?)", Ipv4Addr::from(u32::from(ip) & mask));
    }
    Ok((ip, prefix))
}

fn node_name(role: Role, n: usize) -> String {
    match role {
        Role::Manager => format!("mgr{n}"),
        Role::Worker => format!("wrk{n}"),
    }
}

fn role_of_node_name(name: &str) -> Option<Role> {
    let (role, num) = if let Some(n) = name.strip_prefix("mgr") {
        (Role::Manager, n)
    } else if let Some(n) = name.strip_prefix("wrk") {
        (Role::Worker, n)
    } else {
        return None;
    };
    let valid = !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) && !num.starts_with('0');
    valid.then_some(role)
}

fn netns_name(lab: &str, what: &str) -> String {
    format!("shoal-{lab}-{what}")
}

/// A node's paths and names by convention (address and index unknown: `down` without lab.json).
fn conventional_node(lab: &str, name: &str, role: Role, index: usize, addr: Option<Ipv4Addr>) -> Node {
    let dir = Path::new(RUN_ROOT).join(lab).join(name);
    Node {
        name: name.to_string(),
        role,
        index,
        addr,
        netns: netns_name(lab, name),
        veth: format!("v{index}"),
        sock: dir.join("docker.sock"),
        log: dir.join("daemon.log"),
        exec_root: dir.join("x"),
        data_root: Path::new(DATA_ROOT).join(lab).join(name),
        dir,
        pid: None,
        pid_start: None,
    }
}

fn plan(name: &str, managers: usize, workers: usize, subnet: &str, exe: &Path) -> Result<Lab> {
    validate_name(name)?;
    if managers == 0 {
        bail!("a lab needs at least one manager (--managers 1)");
    }
    let total = managers + workers;
    if total > MAX_NODES {
        bail!("at most {MAX_NODES} nodes per lab (asked for {total})");
    }
    let (net, prefix) = parse_subnet(subnet)?;
    let hosts = (1u64 << (32 - prefix)) - 2;
    if total as u64 > hosts {
        bail!("--subnet {subnet} has room for {hosts} nodes, not {total}");
    }
    let mut nodes = Vec::new();
    for (i, (role, n)) in (1..=managers).map(|n| (Role::Manager, n)).chain((1..=workers).map(|n| (Role::Worker, n))).enumerate() {
        let index = i + 1;
        let addr = Ipv4Addr::from(u32::from(net) + index as u32);
        let node = conventional_node(name, &node_name(role, n), role, index, Some(addr));
        let len = node.exec_root.as_os_str().len();
        if len > shoal_engine::MAX_EXEC_ROOT_LEN {
            bail!("lab name {name:?} is too long: exec-root {} would be {len} bytes (at most {})", node.exec_root.display(), shoal_engine::MAX_EXEC_ROOT_LEN);
        }
        nodes.push(node);
    }
    Ok(Lab {
        name: name.to_string(),
        subnet: format!("{net}/{prefix}"),
        prefix,
        hub_netns: netns_name(name, "hub"),
        bridge: BRIDGE.to_string(),
        dir: Path::new(RUN_ROOT).join(name),
        data_dir: Path::new(DATA_ROOT).join(name),
        exe: exe.to_path_buf(),
        nodes,
        // The last address of the subnet, if no node takes it.
        host_link: ((total as u64) < hosts)
            .then(|| HostLink { ifname: host_link_name(name), addr: Ipv4Addr::from(u32::from(net) + hosts as u32) }),
    })
}

impl Lab {
    fn state_path(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    /// Atomic write of lab.json (temp + fsync + rename).
    fn save(&self) -> Result<()> {
        let path = self.state_path();
        let tmp = self.dir.join(".lab.json.tmp");
        let mut text = serde_json::to_string_pretty(self).context("serialising lab.json")?;
        text.push('\n');
        let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    fn load(name: &str) -> Result<Option<Lab>> {
        let path = Path::new(RUN_ROOT).join(name).join("lab.json");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?))
    }
}

// ---------------------------------------------------------------------------------------------
// up
// ---------------------------------------------------------------------------------------------

fn find_in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]).map(|d| d.join(prog)).find(|p| p.is_file())
}

/// True if this host's namespace already has a route or an address in `subnet`.
fn host_routes(subnet: &str) -> Result<bool> {
    let routes = ip_output(&["-4", "-o", "route", "show", "match", subnet])?;
    let own = routes.lines().any(|l| !l.starts_with("default"));
    Ok(own || !ip_output(&["-4", "-o", "addr", "show", "to", subnet])?.trim().is_empty())
}

fn check_tools() -> Result<()> {
    let missing: Vec<&str> = ["ip", "nsenter"].into_iter().filter(|t| find_in_path(t).is_none()).collect();
    if !missing.is_empty() {
        bail!(
            "shoal lab needs `ip` (iproute2) and `nsenter` (util-linux) in PATH; missing: {}",
            missing.join(", ")
        );
    }
    Ok(())
}

/// True when anything a lab called `name` would create already exists.
fn lab_exists(name: &str) -> bool {
    Path::new(RUN_ROOT).join(name).exists() || Path::new(DATA_ROOT).join(name).exists() || !lab_netns(name).is_empty()
}

/// Namespaces in /run/netns named like lab `name`'s hub or nodes.
fn lab_netns(name: &str) -> Vec<String> {
    let prefix = format!("shoal-{name}-");
    let mut out: Vec<String> = fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.strip_prefix(&prefix).is_some_and(|rest| rest == "hub" || role_of_node_name(rest).is_some()))
        .collect();
    out.sort();
    out
}

fn ip(args: &[&str]) -> Result<()> {
    ip_output(args).map(drop)
}

fn ip_output(args: &[&str]) -> Result<String> {
    let prog = find_in_path("ip").unwrap_or_else(|| PathBuf::from("ip"));
    let out = Command::new(prog).args(args).stdin(Stdio::null()).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn up(a: UpArgs) -> Result<()> {
    check_tools()?;
    let exe = std::env::current_exe().context("finding the shoal binary")?;
    let mut lab = plan(&a.name, a.managers, a.workers, &a.subnet, &exe)?;
    let exists = || anyhow!("lab {0} already exists; run `shoal lab down --name {0}` first", lab.name);
    if lab_exists(&lab.name) {
        return Err(exists());
    }
    // create_dir (not _all) is the lock: two `up`s of one name cannot both get here. A `down`
    // of another lab may remove an empty /run/shoal-lab in between, hence the retries.
    let mut attempt = 0;
    loop {
        fs::create_dir_all(RUN_ROOT).with_context(|| format!("creating {RUN_ROOT}"))?;
        match fs::create_dir(&lab.dir) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(exists()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 5 => attempt += 1,
            Err(e) => return Err(e).with_context(|| format!("creating {}", lab.dir.display())),
        }
    }
    // The whole plan (namespaces, dirs, mount roots) is on disk before anything is created.
    lab.save()?;
    match build(&mut lab, !a.no_swarm) {
        Ok(report) => {
            print_up(&lab, &report);
            Ok(())
        }
        Err(e) => {
            eprintln!("shoal lab up failed: {e:#}");
            eprintln!("removing the partly created lab {} …", lab.name);
            if let Err(e2) = down(&lab.name) {
                eprintln!("cleanup failed too: {e2:#}; run `shoal lab down --name {}`", lab.name);
            }
            Err(e.context(format!("creating lab {}", lab.name)))
        }
    }
}

/// What happened to each node's swarm membership.
struct UpReport {
    swarm: Vec<(String, std::result::Result<String, String>)>,
}

fn build(lab: &mut Lab, swarm: bool) -> Result<UpReport> {
    // Network: hub with the bridge, then one namespace + veth per node.
    ip(&["netns", "add", &lab.hub_netns])?;
    ip(&["-n", &lab.hub_netns, "link", "set", "lo", "up"])?;
    ip(&["-n", &lab.hub_netns, "link", "add", &lab.bridge, "type", "bridge"])?;
    ip(&["-n", &lab.hub_netns, "link", "set", &lab.bridge, "up"])?;
    if let Some(link) = lab.host_link.clone() {
        if host_routes(&lab.subnet)? {
            eprintln!(
                "warning: this host already routes {} (another lab?); reach the nodes from inside the lab with nsenter",
                lab.subnet
            );
            lab.host_link = None;
            lab.save()?;
        } else {
            let me = std::process::id().to_string();
            ip(&["-n", &lab.hub_netns, "link", "add", "h0", "type", "veth", "peer", "name", &link.ifname, "netns", &me])?;
            ip(&["-n", &lab.hub_netns, "link", "set", "h0", "master", &lab.bridge, "up"])?;
            ip(&["addr", "add", &format!("{}/{}", link.addr, lab.prefix), "dev", &link.ifname])?;
            ip(&["link", "set", &link.ifname, "up"])?;
        }
    }
    for n in &lab.nodes {
        let addr = format!("{}/{}", n.addr.context("node without an address")?, lab.prefix);
        ip(&["netns", "add", &n.netns])?;
        ip(&["-n", &n.netns, "link", "set", "lo", "up"])?;
        ip(&["-n", &lab.hub_netns, "link", "add", &n.veth, "type", "veth", "peer", "name", "eth0", "netns", &n.netns])?;
        ip(&["-n", &lab.hub_netns, "link", "set", &n.veth, "master", &lab.bridge, "up"])?;
        ip(&["-n", &n.netns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", &n.netns, "link", "set", "eth0", "up"])?;
    }
    // Daemons.
    let nsenter = find_in_path("nsenter").context("nsenter not found")?;
    let mut children: Vec<Child> = Vec::new();
    for i in 0..lab.nodes.len() {
        let n = &lab.nodes[i];
        for d in [&n.dir, &n.exec_root, &n.data_root] {
            mkdir_all(d)?;
        }
        let log = fs::OpenOptions::new().create(true).append(true).open(&n.log).with_context(|| format!("opening {}", n.log.display()))?;
        let mut cmd = Command::new(&nsenter);
        cmd.arg(format!("--net={NETNS_DIR}/{}", n.netns))
            .arg("--")
            .arg(&lab.exe)
            .arg("daemon")
            .arg("-H")
            .arg(format!("unix://{}", n.sock.display()))
            .arg("--data-root")
            .arg(&n.data_root)
            .arg("--exec-root")
            .arg(&n.exec_root)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Each node gets its own UTS namespace named after it, so `docker node ls` shows mgr1,
        // wrk2, … like separate hosts would.
        let hostname = n.name.clone().into_bytes();
        // SAFETY: between fork and exec the closure only makes async-signal-safe syscalls
        // (setsid, unshare, sethostname) on memory allocated before the fork; the child leaves
        // our session so it outlives us.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || libc::unshare(libc::CLONE_NEWUTS) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::sethostname(hostname.as_ptr().cast(), hostname.len()) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting the daemon of {}", n.name))?;
        let pid = child.id() as i32;
        // nsenter execs the daemon in place (no fork for --net), so this pid is the daemon's.
        let start = proc_stat(pid).map(|s| s.start);
        children.push(child);
        let n = &mut lab.nodes[i];
        n.pid = Some(pid);
        n.pid_start = start;
        lab.save()?;
    }
    // Wait for every socket to answer /_ping.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, n) in lab.nodes.iter().enumerate() {
        loop {
            if ping(&n.sock) {
                break;
            }
            if let Ok(Some(st)) = children[i].try_wait() {
                bail!("the daemon of {} exited during startup ({st}); its log ({}):\n{}", n.name, n.log.display(), tail(&n.log, 30));
            }
            if Instant::now() >= deadline {
                bail!("the daemon of {} did not answer on {} within 30 s; its log ({}):\n{}", n.name, n.sock.display(), n.log.display(), tail(&n.log, 30));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(children); // they stay running: dropping a Child neither kills nor waits
    if !swarm {
        return Ok(UpReport { swarm: Vec::new() });
    }
    // Swarm: init on node 1, then join the others.
    let first = &lab.nodes[0];
    let first_addr = first.addr.context("node 1 without an address")?;
    let body = json!({"ListenAddr": "0.0.0.0:2377", "AdvertiseAddr": first_addr.to_string()});
    let r = api(&first.sock, "POST", "/swarm/init", Some(&body), Duration::from_secs(60)).with_context(|| format!("swarm init on {}", first.name))?;
    if r.status != 200 {
        bail!("swarm init on {} failed: {}; its log ({}):\n{}", first.name, r.error_text(), first.log.display(), tail(&first.log, 30));
    }
    let mut report = UpReport { swarm: vec![(first.name.clone(), Ok("leader".into()))] };
    let r = api(&first.sock, "GET", "/swarm", None, Duration::from_secs(30)).context("reading the join tokens")?;
    if r.status != 200 {
        bail!("GET /swarm on {} failed: {}", first.name, r.error_text());
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Cluster {
        join_tokens: JoinTokens,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct JoinTokens {
        worker: String,
        manager: String,
    }
    let cluster: Cluster = r.json().with_context(|| format!("GET /swarm on {}: no JoinTokens", first.name))?;
    let JoinTokens { worker: worker_token, manager: manager_token } = cluster.join_tokens;
    for n in &lab.nodes[1..] {
        let addr = n.addr.context("node without an address")?;
        let body = json!({
            "ListenAddr": "0.0.0.0:2377",
            "AdvertiseAddr": addr.to_string(),
            "RemoteAddrs": [format!("{first_addr}:2377")],
            "JoinToken": if n.role == Role::Manager { &manager_token } else { &worker_token },
        });
        let outcome = match api(&n.sock, "POST", "/swarm/join", Some(&body), Duration::from_secs(60)) {
            Ok(r) if r.status == 200 => Ok(format!("joined as {}", n.role.as_str())),
            Ok(r) => Err(format!("{} {}", r.status, r.error_text())),
            Err(e) => Err(format!("{e:#}")),
        };
        if let Err(msg) = &outcome {
            eprintln!(
                "warning: node {} ({addr}) did not join the swarm: {msg}; its daemon keeps running as a standalone node",
                n.name
            );
        }
        report.swarm.push((n.name.clone(), outcome));
    }
    Ok(report)
}

fn print_up(lab: &Lab, report: &UpReport) {
    let mut out = String::new();
    let _ = writeln!(out, "lab {} is up: {} node(s) on {} (bridge {} in netns {})", lab.name, lab.nodes.len(), lab.subnet, lab.bridge, lab.hub_netns);
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<8} {:<8} {:<16} SWARM", "NODE", "ROLE", "ADDRESS");
    for n in &lab.nodes {
        let swarm = match report.swarm.iter().find(|(name, _)| *name == n.name).map(|(_, o)| o) {
            Some(Ok(s)) => s.clone(),
            Some(Err(_)) => "NOT JOINED (see warning)".into(),
            None => "inactive (run docker swarm init)".into(),
        };
        let addr = n.addr.map(|a| a.to_string()).unwrap_or_default();
        let _ = writeln!(out, "{:<8} {:<8} {:<16} {swarm}", n.name, n.role.as_str(), addr);
    }
    let _ = writeln!(out);
    for n in &lab.nodes {
        let addr = n.addr.map(|a| a.to_string()).unwrap_or_default();
        let _ = writeln!(out, "# {} ({}, {addr})", n.name, n.role.as_str());
        let _ = writeln!(out, "export DOCKER_HOST=unix://{}", n.sock.display());
    }
    let _ = writeln!(out);
    let (first, other) = (&lab.nodes[0], lab.nodes.last().unwrap_or(&lab.nodes[0]));
    let other_addr = other.addr.map(|a| a.to_string()).unwrap_or_default();
    match &lab.host_link {
        Some(link) => {
            let _ = writeln!(out, "This host is on the lab network as {} ({}): node ports answer here, e.g.", link.addr, link.ifname);
            let _ = writeln!(out, "  curl http://{other_addr}:PORT/");
        }
        None => {
            let _ = writeln!(out, "Node ports are reachable inside the lab network, e.g. from {}:", first.name);
            let _ = writeln!(out, "  nsenter --net={NETNS_DIR}/{} curl http://{other_addr}:PORT/", first.netns);
        }
    }
    let _ = writeln!(out, "Daemon logs: {}/<node>/daemon.log", lab.dir.display());
    let _ = writeln!(out, "Remove everything: shoal lab down --name {}", lab.name);
    print!("{out}");
}

// ---------------------------------------------------------------------------------------------
// ls
// ---------------------------------------------------------------------------------------------

fn ls() -> Result<()> {
    let mut names: Vec<String> = BTreeSet::<String>::from_iter(
        [RUN_ROOT, DATA_ROOT]
            .iter()
            .flat_map(|d| fs::read_dir(d).into_iter().flatten().flatten())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok()),
    )
    .into_iter()
    .collect();
    names.retain(|n| validate_name(n).is_ok());
    if names.is_empty() {
        println!("no labs");
        return Ok(());
    }
    for name in names {
        let lab = match Lab::load(&name) {
            Ok(Some(l)) => l,
            Ok(None) => {
                println!("lab {name}: incomplete (no lab.json); remove it with `shoal lab down --name {name}`\n");
                continue;
            }
            Err(e) => {
                println!("lab {name}: unreadable ({e:#}); remove it with `shoal lab down --name {name}`\n");
                continue;
            }
        };
        println!("lab {} ({}, bridge {} in netns {})", lab.name, lab.subnet, lab.bridge, lab.hub_netns);
        println!("  {:<8} {:<8} {:<16} {:<22} {:<18} {:<10} DOCKER_HOST", "NODE", "ROLE", "ADDRESS", "NETNS", "DAEMON", "SWARM");
        for n in &lab.nodes {
            let alive = matches!((n.pid, n.pid_start), (Some(p), Some(s)) if alive(p, s));
            let daemon = match (alive, ping(&n.sock)) {
                (true, true) => format!("running ({})", n.pid.unwrap_or(0)),
                (true, false) => format!("no answer ({})", n.pid.unwrap_or(0)),
                (false, true) => "running".to_string(),
                (false, false) => "dead".to_string(),
            };
            let swarm = swarm_state(&n.sock).unwrap_or_else(|| "-".into());
            let addr = n.addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "  {:<8} {:<8} {:<16} {:<22} {:<18} {:<10} unix://{}",
                n.name,
                n.role.as_str(),
                addr,
                n.netns,
                daemon,
                swarm,
                n.sock.display()
            );
        }
        println!();
    }
    Ok(())
}

/// `active`, `inactive`, `pending`, … from `GET /info` (None when the daemon does not answer).
fn swarm_state(sock: &Path) -> Option<String> {
    let r = api(sock, "GET", "/info", None, Duration::from_secs(3)).ok()?;
    let v: Value = r.json().ok()?;
    let sw = v.get("Swarm")?;
    let state = sw.get("LocalNodeState")?.as_str()?.to_string();
    let manager = sw.get("ControlAvailable").and_then(Value::as_bool).unwrap_or(false);
    Some(if state == "active" && manager { "manager".into() } else if state == "active" { "worker".into() } else { state })
}

// ---------------------------------------------------------------------------------------------
// down
// ---------------------------------------------------------------------------------------------

/// The lab as lab.json records it, completed by what the naming conventions find on disk.
fn discover(name: &str) -> Result<Option<Lab>> {
    let recorded = match Lab::load(name) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("warning: {e:#}; cleaning up by naming convention");
            None
        }
    };
    let mut found: BTreeSet<String> = BTreeSet::new();
    let prefix = format!("shoal-{name}-");
    for ns in lab_netns(name) {
        if let Some(rest) = ns.strip_prefix(&prefix) {
            if rest != "hub" {
                found.insert(rest.to_string());
            }
        }
    }
    for root in [RUN_ROOT, DATA_ROOT] {
        for e in fs::read_dir(Path::new(root).join(name)).into_iter().flatten().flatten() {
            if let Ok(n) = e.file_name().into_string() {
                if role_of_node_name(&n).is_some() {
                    found.insert(n);
                }
            }
        }
    }
    let anything = recorded.is_some()
        || !found.is_empty()
        || Path::new(RUN_ROOT).join(name).exists()
        || Path::new(DATA_ROOT).join(name).exists()
        || Path::new(NETNS_DIR).join(netns_name(name, "hub")).exists();
    if !anything {
        return Ok(None);
    }
    let mut lab = recorded.unwrap_or_else(|| Lab {
        name: name.to_string(),
        subnet: String::new(),
        prefix: 0,
        hub_netns: netns_name(name, "hub"),
        bridge: BRIDGE.to_string(),
        dir: Path::new(RUN_ROOT).join(name),
        data_dir: Path::new(DATA_ROOT).join(name),
        exe: PathBuf::new(),
        nodes: Vec::new(),
        host_link: None,
    });
    for n in found {
        if lab.nodes.iter().all(|x| x.name != n) {
            let role = role_of_node_name(&n).unwrap_or(Role::Worker);
            lab.nodes.push(conventional_node(name, &n, role, 0, None));
        }
    }
    Ok(Some(lab))
}

fn down(name: &str) -> Result<()> {
    validate_name(name)?;
    let Some(lab) = discover(name)? else {
        println!("lab {name} does not exist; nothing to remove");
        return Ok(());
    };
    // 1. Ask each live daemon to remove its containers (in parallel).
    std::thread::scope(|s| {
        for n in &lab.nodes {
            s.spawn(move || remove_containers(n));
        }
    });
    // 2. SIGTERM the daemons (pid + start time verified), wait, SIGKILL leftovers.
    let daemons: Vec<(String, i32, u64)> = lab
        .nodes
        .iter()
        .filter_map(|n| Some((n.name.clone(), n.pid?, n.pid_start?)))
        .filter(|(_, p, s)| alive(*p, *s))
        .collect();
    for (_, pid, start) in &daemons {
        signal(*pid, *start, libc::SIGTERM);
    }
    let stopped = wait_for(Duration::from_secs(10), || daemons.iter().all(|(_, p, s)| !alive(*p, *s)));
    if !stopped {
        for (name, pid, start) in &daemons {
            if alive(*pid, *start) {
                eprintln!("warning: the daemon of {name} (pid {pid}) ignored SIGTERM; killing it");
                signal(*pid, *start, libc::SIGKILL);
            }
        }
    }
    // 3. Kill leftovers per node: processes naming its dirs, members of its cgroups, and their
    //    descendants; then remove the cgroups.
    let mut problems = Vec::new();
    for n in &lab.nodes {
        let roots = node_roots(n);
        let cgroups: Vec<PathBuf> = cgroup_names(&n.data_root).iter().flat_map(|c| cgroup_dirs(c)).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = proc_table();
            let mut seeds: Vec<i32> = procs.iter().filter(|(_, p)| cmdline_mentions(&p.cmdline, &roots)).map(|(pid, _)| *pid).collect();
            for dir in &cgroups {
                seeds.extend(cgroup_procs(dir));
            }
            let me = std::process::id() as i32;
            let mut victims = descendants(&procs, &seeds);
            victims.retain(|(pid, _)| *pid > 1 && *pid != me && procs.get(pid).is_some_and(|p| p.state != 'Z'));
            if victims.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                problems.push(format!("processes of {} survive SIGKILL: {:?}", n.name, victims.iter().map(|v| v.0).collect::<Vec<_>>()));
                break;
            }
            for (pid, start) in &victims {
                signal(*pid, *start, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for dir in &cgroups {
            let ok = wait_for(Duration::from_secs(5), || {
                rmdir_tree(dir);
                !dir.exists()
            });
            if !ok {
                problems.push(format!("could not remove cgroup {}", dir.display()));
            }
        }
    }
    // 4. Unmount everything under the nodes' roots, deepest first.
    for n in &lab.nodes {
        for root in [&n.data_root, &n.exec_root, &n.dir] {
            if let Some(left) = unmount_under(root) {
                problems.push(format!("mounts left under {}: {left:?}", root.display()));
            }
        }
    }
    // 5. The host link (it would also go with the hub namespace, but a crash may have left the
    //    host side alone), then the namespaces: the nodes', then the hub (which takes the veths
    //    and the bridge with it).
    let host_if = lab.host_link.as_ref().map(|l| l.ifname.clone()).unwrap_or_else(|| host_link_name(name));
    if Path::new("/sys/class/net").join(&host_if).exists() {
        if let Err(e) = ip(&["link", "del", &host_if]) {
            problems.push(format!("{e:#}"));
        }
    }
    for ns in lab.nodes.iter().map(|n| n.netns.clone()).chain([lab.hub_netns.clone()]).chain(lab_netns(name)) {
        if Path::new(NETNS_DIR).join(&ns).exists() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                problems.push(format!("{e:#}"));
            }
        }
    }
    // 6. Directories; lab.json goes last with the lab dir.
    for n in &lab.nodes {
        for d in [&n.data_root, &n.dir] {
            remove_dir(d, &mut problems);
        }
    }
    remove_dir(&lab.data_dir, &mut problems);
    remove_dir(&lab.dir, &mut problems);
    for root in [DATA_ROOT, RUN_ROOT] {
        let _ = fs::remove_dir(root); // only when empty: other labs may live there
    }
    if !problems.is_empty() {
        bail!("lab {name} was not removed completely:\n  {}\nrun `shoal lab down --name {name}` again", problems.join("\n  "));
    }
    println!("lab {name} removed");
    Ok(())
}

/// `create_dir_all`, retried when a concurrent `down` of another lab removes an empty parent.
fn mkdir_all(d: &Path) -> Result<()> {
    let mut attempt = 0;
    loop {
        match fs::create_dir_all(d) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 5 => attempt += 1,
            Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
        }
    }
}

fn remove_dir(d: &Path, problems: &mut Vec<String>) {
    if let Err(e) = fs::remove_dir_all(d) {
        if d.exists() {
            problems.push(format!("could not remove {}: {e}", d.display()));
        }
    }
}

fn remove_containers(n: &Node) {
    if !ping(&n.sock) {
        return;
    }
    let Ok(r) = api(&n.sock, "GET", "/containers/json?all=1", None, Duration::from_secs(10)) else { return };
    let Ok(list) = r.json::<Vec<Value>>() else { return };
    for c in &list {
        if let Some(id) = c.get("Id").and_then(Value::as_str) {
            match api(&n.sock, "DELETE", &format!("/containers/{id}?force=1&v=1"), None, Duration::from_secs(30)) {
                Ok(r) if r.status == 204 || r.status == 404 => {}
                Ok(r) => eprintln!("warning: removing container {} on {}: {}", &id[..id.len().min(12)], n.name, r.error_text()),
                Err(e) => eprintln!("warning: removing container {} on {}: {e}", &id[..id.len().min(12)], n.name),
            }
        }
    }
}

/// The paths whose mention in a command line marks a process as this node's.
fn node_roots(n: &Node) -> Vec<PathBuf> {
    let mut roots = vec![n.data_root.clone(), n.exec_root.clone(), n.dir.clone()];
    if let Ok(c) = fs::canonicalize(&n.data_root) {
        roots.push(c);
    }
    roots.sort();
    roots.dedup();
    roots
}

/// True when an argument is one of `roots` or a path under one (also `unix://<path>`).
fn cmdline_mentions(cmdline: &[String], roots: &[PathBuf]) -> bool {
    cmdline.iter().any(|arg| {
        let arg = arg.strip_prefix("unix://").unwrap_or(arg);
        let arg = arg.split_once('=').map(|(k, v)| if k.starts_with('-') { v } else { arg }).unwrap_or(arg);
        let p = Path::new(arg);
        p.is_absolute() && roots.iter().any(|r| p.starts_with(r))
    })
}

/// The daemon's cgroup parent names for this data root (as given and canonicalised).
fn cgroup_names(data_root: &Path) -> Vec<String> {
    let mut v = vec![shoal_engine::cgroup_parent_for(data_root)];
    if let Ok(c) = fs::canonicalize(data_root) {
        v.push(shoal_engine::cgroup_parent_for(&c));
    }
    v.sort();
    v.dedup();
    v
}

// ---------------------------------------------------------------------------------------------
// Processes, cgroups, mounts
// ---------------------------------------------------------------------------------------------

struct Stat {
    state: char,
    ppid: i32,
    start: u64,
}

fn parse_stat(stat: &str) -> Option<Stat> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ": state=0, ppid=1, …, starttime=19.
    Some(Stat { state: f.first()?.chars().next()?, ppid: f.get(1)?.parse().ok()?, start: f.get(19)?.parse().ok()? })
}

fn proc_stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The process exists, is the one started at `start`, and is not a zombie.
fn alive(pid: i32, start: u64) -> bool {
    proc_stat(pid).is_some_and(|s| s.start == start && s.state != 'Z' && s.state != 'X')
}

/// Sends `sig` only when `pid` is still the process that started at `start`.
fn signal(pid: i32, start: u64, sig: i32) {
    if pid > 1 && alive(pid, start) {
        // SAFETY: kill(2) on a pid just verified (pid + start time) to be the one we mean.
        unsafe { libc::kill(pid, sig) };
    }
}

struct ProcInfo {
    state: char,
    ppid: i32,
    start: u64,
    cmdline: Vec<String>,
}

fn proc_table() -> HashMap<i32, ProcInfo> {
    let mut m = HashMap::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Some(st) = proc_stat(pid) else { continue };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| b.split(|c| *c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
            .unwrap_or_default();
        m.insert(pid, ProcInfo { state: st.state, ppid: st.ppid, start: st.start, cmdline });
    }
    m
}

/// `roots` and all their descendants, as (pid, start time).
fn descendants(procs: &HashMap<i32, ProcInfo>, roots: &[i32]) -> BTreeSet<(i32, u64)> {
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for (pid, p) in procs {
        children.entry(p.ppid).or_default().push(*pid);
    }
    let mut out = BTreeSet::new();
    let mut stack = roots.to_vec();
    while let Some(pid) = stack.pop() {
        let Some(p) = procs.get(&pid) else { continue };
        if out.insert((pid, p.start)) {
            stack.extend(children.get(&pid).into_iter().flatten().copied());
        }
    }
    out
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("077"), 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (mount point, fstype) of every mount in our mount namespace.
fn mounts() -> Vec<(PathBuf, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mp = pre.split_whitespace().nth(4)?;
            Some((PathBuf::from(unescape_mountinfo(mp)), post.split_whitespace().next()?.to_string()))
        })
        .collect()
}

/// `<mount>/<name>` in every cgroup v1 controller and cgroup2 hierarchy, where it exists.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|(_, t)| t == "cgroup" || t == "cgroup2")
        .map(|(m, _)| m.join(name))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Every pid in `cgroup.procs` of `dir` and its sub-cgroups.
fn cgroup_procs(dir: &Path) -> Vec<i32> {
    let mut v: Vec<i32> =
        fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().split_whitespace().filter_map(|s| s.parse().ok()).collect();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            v.extend(cgroup_procs(&e.path()));
        }
    }
    v
}

/// rmdir a cgroup tree bottom-up (cgroup dirs hold only kernel files, so rmdir is enough).
fn rmdir_tree(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            rmdir_tree(&e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Unmounts everything at or under `dir`, deepest first, lazily when busy. Returns what is left.
fn unmount_under(dir: &Path) -> Option<Vec<PathBuf>> {
    let under = || -> Vec<PathBuf> { mounts().into_iter().map(|(m, _)| m).filter(|m| m.starts_with(dir)).collect() };
    for _ in 0..20 {
        let mut mps = under();
        if mps.is_empty() {
            return None;
        }
        mps.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for mp in mps {
            let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()) else { continue };
            // SAFETY: umount2 with a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
                // SAFETY: as above.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
    let left = under();
    (!left.is_empty()).then_some(left)
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client over the daemon's unix socket
// ---------------------------------------------------------------------------------------------

struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).context("invalid JSON in the daemon's answer")
    }

    /// The API's `{"message": …}`, or the raw body.
    fn error_text(&self) -> String {
        match self.json::<Value>().ok().as_ref().and_then(|v| v.get("message")).and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => String::from_utf8_lossy(&self.body).trim().to_string(),
        }
    }
}

fn ping(sock: &Path) -> bool {
    http(sock, "GET", "/_ping", None, Duration::from_secs(2)).map(|r| r.status == 200).unwrap_or(false)
}

/// A versioned API call (`/v1.50<path>`), body sent as JSON.
fn api(sock: &Path, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<Response> {
    let text = body.map(Value::to_string);
    let full = format!("{API}{path}");
    http(sock, method, &full, text.as_deref(), timeout).with_context(|| format!("{method} {full} on {}", sock.display()))
}

fn http(sock: &Path, method: &str, path: &str, body: Option<&str>, timeout: Duration) -> io::Result<Response> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: shoal-lab\r\nConnection: close\r\n");
    if let Some(b) = body {
        let _ = write!(req, "Content-Type: application/json\r\nContent-Length: {}\r\n", b.len());
    } else if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("incomplete HTTP response"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("bad HTTP status line"))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        let mut out = Vec::new();
        let mut r = rest;
        loop {
            let eol = r.windows(2).position(|w| w == b"\r\n").ok_or_else(|| bad("bad chunk"))?;
            let size_text = String::from_utf8_lossy(&r[..eol]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).map_err(|_| bad("bad chunk size"))?;
            r = &r[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(r.get(..size).ok_or_else(|| bad("short chunk"))?);
            r = r.get(size + 2..).unwrap_or_default();
        }
        out
    } else {
        match length {
            Some(n) => rest.get(..n).ok_or_else(|| bad("short body"))?.to_vec(),
            None => rest.to_vec(),
        }
    };
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe() -> PathBuf {
        PathBuf::from("/usr/local/bin/shoal")
    }

    #[test]
    fn plans_names_addresses_and_paths() {
        let lab = plan("lab", 1, 2, "10.99.0.0/24", &exe()).unwrap();
        assert_eq!(lab.hub_netns, "shoal-lab-hub");
        assert_eq!(lab.subnet, "10.99.0.0/24");
        let got: Vec<(&str, Role, String, &str, &str)> =
            lab.nodes.iter().map(|n| (n.name.as_str(), n.role, n.addr.unwrap().to_string(), n.netns.as_str(), n.veth.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("mgr1", Role::Manager, "10.99.0.1".into(), "shoal-lab-mgr1", "v1"),
                ("wrk1", Role::Worker, "10.99.0.2".into(), "shoal-lab-wrk1", "v2"),
                ("wrk2", Role::Worker, "10.99.0.3".into(), "shoal-lab-wrk2", "v3"),
            ]
        );
        let w = &lab.nodes[2];
        assert_eq!(w.sock, Path::new("/run/shoal-lab/lab/wrk2/docker.sock"));
        assert_eq!(w.exec_root, Path::new("/run/shoal-lab/lab/wrk2/x"));
        assert_eq!(w.data_root, Path::new("/var/lib/shoal-lab/lab/wrk2"));
        assert_eq!(w.log, Path::new("/run/shoal-lab/lab/wrk2/daemon.log"));

        let lab = plan("big", 3, 1, "192.168.4.0/30", &exe());
        assert!(lab.unwrap_err().to_string().contains("room for 2 nodes"));
        let lab = plan("m", 2, 0, "172.30.0.0/16", &exe()).unwrap();
        assert_eq!(lab.nodes[1].name, "mgr2");
        assert_eq!(lab.nodes[1].addr.unwrap(), Ipv4Addr::new(172, 30, 0, 2));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["", "-x", "Lab", "a/b", "a b", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(plan(bad, 1, 0, "10.99.0.0/24", &exe()).is_err(), "{bad:?}");
        }
        assert!(plan(&"x".repeat(MAX_NAME_LEN), 1, 0, "10.99.0.0/24", &exe()).is_ok());
        assert!(plan("a", 0, 2, "10.99.0.0/24", &exe()).unwrap_err().to_string().contains("at least one manager"));
        assert!(parse_subnet("10.99.0.1/24").unwrap_err().to_string().contains("host bits"));
        assert!(parse_subnet("10.99.0.0").is_err());
        assert!(parse_subnet("10.99.0.0/31").is_err());
        assert!(parse_subnet("::1/64").is_err());
        assert_eq!(parse_subnet("10.0.0.0/8").unwrap(), (Ipv4Addr::new(10, 0, 0, 0), 8));
    }

    #[test]
    fn exec_root_stays_short() {
        let lab = plan(&"y".repeat(MAX_NAME_LEN), 1, 200, "10.0.0.0/16", &exe()).unwrap();
        for n in &lab.nodes {
            assert!(n.exec_root.as_os_str().len() <= 64, "{}", n.exec_root.display());
            assert!(n.sock.as_os_str().len() < 108);
            assert!(n.veth.len() < 16);
        }
    }

    #[test]
    fn node_names_and_namespaces_match_exactly() {
        assert_eq!(role_of_node_name("mgr1"), Some(Role::Manager));
        assert_eq!(role_of_node_name("wrk12"), Some(Role::Worker));
        for bad in ["mgr", "mgr0", "wrk01", "wrk1-hub", "hub", "x1"] {
            assert_eq!(role_of_node_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn lab_json_round_trips() {
        let mut lab = plan("rt", 1, 2, "10.99.0.0/24", &exe()).unwrap();
        lab.nodes[0].pid = Some(4242);
        lab.nodes[0].pid_start = Some(123_456_789_012);
        lab.nodes[2].addr = None;
        let text = serde_json::to_string_pretty(&lab).unwrap();
        let back: Lab = serde_json::from_str(&text).unwrap();
        assert_eq!(back, lab);
        assert!(text.contains("\"pid\": 4242"), "{text}");
        assert!(text.contains("\"pid\": null"), "{text}");
        assert!(text.contains("\"role\": \"manager\""), "{text}");
        assert!(text.contains("\"addr\": \"10.99.0.2\""), "{text}");
    }

    #[test]
    fn http_responses_parse() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2;x=y\r\n2]\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"[1,2]"[..]));
        let r = parse_response(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 29\r\n\r\n{\"message\":\"joining not yet\"}").unwrap();
        assert_eq!(r.status, 501);
        assert_eq!(r.error_text(), "joining not yet");
        let r = parse_response(b"HTTP/1.1 500 x\r\n\r\nplain text").unwrap();
        assert_eq!(r.error_text(), "plain text");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn command_lines_match_on_path_boundaries() {
        let n = conventional_node("t1", "mgr1", Role::Manager, 1, None);
        let roots = vec![n.data_root.clone(), n.exec_root.clone(), n.dir.clone()];
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(cmdline_mentions(&argv("shoal daemon --data-root /var/lib/shoal-lab/t1/mgr1"), &roots));
        assert!(cmdline_mentions(&argv("shoal shim --bundle /var/lib/shoal-lab/t1/mgr1/containers/abc/bundle"), &roots));
        assert!(cmdline_mentions(&argv("shoal daemon -H unix:///run/shoal-lab/t1/mgr1/docker.sock"), &roots));
        assert!(cmdline_mentions(&argv("x --exec-root=/run/shoal-lab/t1/mgr1/x"), &roots));
        assert!(!cmdline_mentions(&argv("shoal daemon --data-root /var/lib/shoal-lab/t1/mgr10"), &roots));
        assert!(!cmdline_mentions(&argv("shoal daemon --data-root /var/lib/shoal-lab/t1"), &roots));
        assert!(!cmdline_mentions(&argv("sleep 100"), &roots));
    }

    #[test]
    fn proc_stat_parses_odd_comms() {
        let s = parse_stat("1234 (my (weird) comm) Z 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10").unwrap();
        assert_eq!((s.state, s.ppid, s.start), ('Z', 77, 987654));
        let me = std::process::id() as i32;
        let st = proc_stat(me).unwrap();
        assert!(alive(me, st.start));
        assert!(!alive(me, st.start + 1));
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
    }
}

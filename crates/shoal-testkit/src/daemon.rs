//! The daemon guard: runs `shoal daemon` in a network namespace and drives it with `docker`.

use crate::http::{roundtrip, HttpResponse};
use crate::netns::Netns;
use crate::util::{output_with_timeout, random_hex, sha256_hex, tail_file, wait_until};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct DaemonOpts {
    /// The shoal executable (`env!("CARGO_BIN_EXE_shoal")`).
    pub exe: PathBuf,
    /// The namespace the daemon runs in (always one: tests never touch the root namespace).
    pub netns: Netns,
    /// Extra arguments after `daemon -H … --data-root … --exec-root …`.
    pub args: Vec<String>,
    /// Extra environment for the daemon (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// How long to wait for `/_ping` (default 15 s).
    pub start_timeout: Duration,
    /// Timeout for each `docker` CLI invocation (default 120 s).
    pub docker_timeout: Duration,
    /// Run the daemon in its own UTS namespace with this hostname (its swarm node name).
    pub hostname: Option<String>,
}

impl DaemonOpts {
    pub fn new(exe: impl Into<PathBuf>, netns: &Netns) -> DaemonOpts {
        DaemonOpts {
            exe: exe.into(),
            netns: netns.clone(),
            args: Vec::new(),
            env: Vec::new(),
            start_timeout: Duration::from_secs(15),
            docker_timeout: Duration::from_secs(120),
            hostname: None,
        }
    }

    /// Gives the daemon its own hostname (a UTS namespace), as `shoal lab` does.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// A running `shoal daemon` with its own temp dir `/tmp/shoal-test-<random>/` holding
/// `data/` (data-root), `x/` (exec-root; short to keep unix socket paths under 108 bytes),
/// `docker.sock`, `daemon.log` and `docker-config/`.
///
/// Dropping it removes all containers (if the daemon answers), stops the daemon, kills every
/// leftover process of this daemon (descendants, processes whose command line names its dir,
/// members of its cgroups `shoal-<8 hex of sha256(data-root)>`), removes those cgroups,
/// unmounts everything under the dir and deletes it.
pub struct Daemon {
    opts: DaemonOpts,
    dir: PathBuf,
    data_root: PathBuf,
    exec_root: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    docker_config: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts the daemon and waits until `HEAD /_ping` answers. Panics (after cleaning up)
    /// with the daemon's log when it does not come up.
    pub fn start(opts: DaemonOpts) -> Daemon {
        let dir = PathBuf::from(format!("/tmp/shoal-test-{}", random_hex(3)));
        let d = Daemon {
            data_root: dir.join("data"),
            exec_root: dir.join("x"),
            sock: dir.join("docker.sock"),
            log: dir.join("daemon.log"),
            docker_config: dir.join("docker-config"),
            dir,
            opts,
            child: None,
        };
        let mut d = d;
        for p in [&d.dir, &d.data_root, &d.exec_root, &d.docker_config] {
            fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        }
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open daemon log");
        let _ = writeln!(&log, "=== shoal-testkit: starting daemon at {:?}", std::time::SystemTime::now());
        let mut cmd = match &self.opts.hostname {
            None => self.opts.netns.command(&self.opts.exe),
            Some(name) => {
                // unshare and sh exec in turn: the child's pid stays the daemon's.
                let mut c = self.opts.netns.command("unshare");
                c.args(["--uts", "--", "sh", "-c", "hostname \"$1\" && shift && exec \"$@\"", "sh", name]).arg(&self.opts.exe);
                c
            }
        };
        cmd.arg("daemon")
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("--exec-root")
            .arg(&self.exec_root)
            .args(&self.opts.args)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        self.child = Some(child);
        let timeout = self.opts.start_timeout;
        let t0 = Instant::now();
        let mut exited = None;
        let up = wait_until(timeout, || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    exited = Some(st);
                    return true;
                }
            }
            self.ping()
        });
        if let Some(st) = exited {
            self.child = None;
            panic!("shoal daemon exited during startup ({st}); log:\n{}", self.log_tail());
        }
        if !up {
            panic!("shoal daemon did not answer /_ping within {timeout:?}; log:\n{}", self.log_tail());
        }
        eprintln!("shoal-testkit: daemon pid {} up in {:?} ({})", self.pid().unwrap_or(0), t0.elapsed(), self.dir.display());
    }

    /// True when `HEAD /_ping` answers 200 on the socket.
    pub fn ping(&self) -> bool {
        self.request("HEAD", "/_ping", None).map(|r| r.status == 200).unwrap_or(false)
    }

    /// One raw API request over the unix socket (`Connection: close`, 30 s timeouts).
    /// `body` is sent as JSON.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> io::Result<HttpResponse> {
        let s = UnixStream::connect(&self.sock)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        roundtrip(s, method, "localhost", path, body.map(|b| ("application/json", b.as_bytes())))
    }

    fn docker_cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .env("DOCKER_CONFIG", &self.docker_config)
            .env("DOCKER_CLI_HINTS", "false")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        c
    }

    /// Runs the real `docker` CLI against this daemon (killed after `docker_timeout`).
    pub fn docker<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let cmd = self.docker_cmd(args);
        output_with_timeout(cmd, self.opts.docker_timeout).expect("spawn docker")
    }

    /// Like [`Daemon::docker`] but asserts success and returns stdout; on failure panics with
    /// the command, its stdout/stderr and the daemon log tail.
    /// Runs `docker args…`, asserting that it fails with `needle` in its stderr.
    pub fn docker_fails(&self, args: &[&str], needle: &str) -> Output {
        let out = self.docker(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "`docker {}` should fail", args.join(" "));
        assert!(stderr.contains(needle), "`docker {}`: expected {needle:?} in stderr, got: {stderr}", args.join(" "));
        out
    }

    pub fn docker_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
        let out = self.docker(&args);
        if !out.status.success() {
            panic!(
                "docker {:?} failed ({}):\n--- stdout:\n{}\n--- stderr:\n{}\n--- daemon log tail:\n{}",
                args,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILLs the daemon (containers and shims keep running) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon gracefully (SIGTERM, SIGKILL after 15 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::util::terminate_child(&mut c, Duration::from_secs(15));
        }
    }

    /// Stops the daemon if it runs, then starts it again with the same dirs and namespace.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The daemon's pid (None when stopped or killed).
    pub fn pid(&mut self) -> Option<u32> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(None) => Some(c.id()),
            _ => None,
        }
    }

    pub fn sock(&self) -> &Path {
        &self.sock
    }

    /// `unix:///tmp/shoal-test-…/docker.sock`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    pub fn exec_root(&self) -> &Path {
        &self.exec_root
    }

    pub fn netns(&self) -> &Netns {
        &self.opts.netns
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Copies the whole log of a failed test to `target/test-artifacts/daemon-logs/` (the data
    /// dir it lives in is removed with the daemon).
    fn keep_log(&self) {
        let dir = crate::workspace_root().join("target/test-artifacts/daemon-logs");
        let name = format!("{}-{}.log", self.opts.netns.name(), std::process::id());
        if fs::create_dir_all(&dir).is_ok() && fs::copy(&self.log, dir.join(&name)).is_ok() {
            eprintln!("--- full daemon log kept as {}", dir.join(name).display());
        }
    }

    /// The last 60 lines of the daemon log.
    pub fn log_tail(&self) -> String {
        tail_file(&self.log, 60)
    }

    /// This daemon's cgroup parent name: `shoal-<first 8 hex of sha256(data-root)>`.
    pub fn cgroup_name(&self) -> String {
        cgroup_name_for(&self.data_root)
    }

    fn cleanup(&mut self) {
        // 1. Ask the daemon to remove its containers.
        if self.pid().is_some() && self.ping() {
            let t = self.opts.docker_timeout.min(Duration::from_secs(60));
            let ps = output_with_timeout(self.docker_cmd(["ps", "-aq", "--no-trunc"]), t);
            if let Ok(out) = ps {
                let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm".to_string(), "-f".to_string()];
                    args.extend(ids);
                    let _ = output_with_timeout(self.docker_cmd(&args), t);
                }
            }
        }
        // 2. Remember the daemon's descendants, then stop it.
        let procs = proc_table();
        let mut victims: BTreeSet<(i32, u64)> = BTreeSet::new();
        if let Some(pid) = self.pid() {
            victims.extend(descendants(&procs, &[pid as i32]));
        }
        self.stop();
        // 3. Kill leftovers until none remain.
        let cg = self.cgroup_name();
        let needle = self.dir.to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = proc_table();
            let mut roots: Vec<i32> = Vec::new();
            roots.extend(victims.iter().filter(|v| procs.get(&v.0).map(|p| p.start) == Some(v.1)).map(|v| v.0));
            for (pid, p) in &procs {
                if p.cmdline.contains(&needle) {
                    roots.push(*pid);
                }
            }
            for dir in cgroup_dirs(&cg) {
                roots.extend(cgroup_procs(&dir));
            }
            let me = std::process::id() as i32;
            let mut kill: BTreeSet<(i32, u64)> = descendants(&procs, &roots);
            kill.retain(|(pid, _)| *pid > 1 && *pid != me);
            if kill.is_empty() {
                break;
            }
            for (pid, start) in &kill {
                if proc_start(*pid) == Some(*start) {
                    // SAFETY: kill(2) on a pid verified (pid + start time) to be ours.
                    unsafe { libc::kill(*pid, libc::SIGKILL) };
                }
            }
            if Instant::now() >= deadline {
                eprintln!("shoal-testkit: processes of {} survive SIGKILL: {kill:?}", self.dir.display());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // 4. Remove this daemon's cgroups (empty now; retry while the kernel reaps).
        for dir in cgroup_dirs(&cg) {
            let ok = wait_until(Duration::from_secs(5), || {
                rmdir_tree(&dir);
                !dir.exists()
            });
            if !ok {
                eprintln!("shoal-testkit: could not remove cgroup {}", dir.display());
            }
        }
        // 5. Unmount everything under the dir, deepest first; then delete it.
        unmount_under(&self.dir);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if self.dir.exists() {
                eprintln!("shoal-testkit: could not remove {}: {e}", self.dir.display());
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- shoal daemon log tail ({}):\n{}", self.log.display(), self.log_tail());
            self.keep_log();
        }
        self.cleanup();
    }
}

/// `shoal-<first 8 hex of sha256(data_root)>`.
pub(crate) fn cgroup_name_for(data_root: &Path) -> String {
    format!("shoal-{}", &sha256_hex(data_root.to_string_lossy().as_bytes())[..8])
}

struct ProcInfo {
    ppid: i32,
    start: u64,
    cmdline: String,
}

fn parse_stat(stat: &str) -> Option<(i32, u64)> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ": state=0, ppid=1, ..., starttime=19.
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

fn proc_start(pid: i32) -> Option<u64> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).map(|x| x.1)
}

fn proc_table() -> HashMap<i32, ProcInfo> {
    let mut m = HashMap::new();
    let Ok(rd) = fs::read_dir("/proc") else { return m };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((ppid, start)) = parse_stat(&stat) else { continue };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        m.insert(pid, ProcInfo { ppid, start, cmdline });
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
    let mut stack: Vec<i32> = roots.to_vec();
    while let Some(pid) = stack.pop() {
        let Some(p) = procs.get(&pid) else { continue };
        if out.insert((pid, p.start)) {
            stack.extend(children.get(&pid).into_iter().flatten().copied());
        }
    }
    out
}

/// Mount points of every cgroup (v1 controllers and cgroup2) hierarchy.
fn cgroup_mounts() -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v = Vec::new();
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let fstype = post.split_whitespace().next().unwrap_or("");
        if fstype == "cgroup" || fstype == "cgroup2" {
            if let Some(mp) = pre.split_whitespace().nth(4) {
                v.push(PathBuf::from(unescape_mountinfo(mp)));
            }
        }
    }
    v
}

fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    cgroup_mounts().into_iter().map(|m| m.join(name)).filter(|p| p.is_dir()).collect()
}

/// Every pid in `cgroup.procs` of `dir` and its sub-cgroups.
fn cgroup_procs(dir: &Path) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                v.extend(cgroup_procs(&e.path()));
            }
        }
    }
    v
}

/// rmdir a cgroup tree bottom-up (cgroup dirs hold only kernel files, so rmdir is enough).
fn rmdir_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push(u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap(), 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or under `dir` (from /proc/self/mountinfo).
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|mp| PathBuf::from(unescape_mountinfo(mp)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Unmounts everything under `dir`, deepest first; lazily when busy.
pub(crate) fn unmount_under(dir: &Path) {
    for _round in 0..20 {
        let mut mps = mounts_under(dir);
        if mps.is_empty() {
            return;
        }
        mps.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for mp in mps {
            let Ok(c) = std::ffi::CString::new(mp.to_string_lossy().as_bytes()) else { continue };
            // SAFETY: umount2 with a valid C string.
            let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
            if rc != 0 {
                // SAFETY: as above.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        eprintln!("shoal-testkit: mounts left under {}: {left:?}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_mountinfo_parsing() {
        let s = "1234 (my (weird) comm) S 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(s), Some((77, 987654)));
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(cgroup_name_for(Path::new("/x")).len(), "shoal-".len() + 8);
        let me = std::process::id() as i32;
        let t = proc_table();
        assert!(descendants(&t, &[me]).iter().any(|(p, _)| *p == me));
    }
}

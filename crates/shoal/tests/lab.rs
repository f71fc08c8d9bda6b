//! `shoal lab` end to end: the built binary creates a three-node lab, the nodes answer, node 1 is
//! in a swarm, a container on a worker is reachable from node 1 over the lab network, and
//! `lab down` leaves no namespaces, processes, mounts, cgroups or directories behind.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use shoal_testkit::{ensure_packages, random_hex, sha256_hex, wait_until, TestImage};

const EXE: &str = env!("CARGO_BIN_EXE_shoal");

fn shoal(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().expect("run shoal")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `shoal lab down` (idempotent) and removes the docker config dir when dropped, so a
/// failing test leaves nothing behind.
struct LabGuard {
    name: String,
    config: PathBuf,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let out = shoal(&["lab", "down", "--name", &self.name]);
        if !out.status.success() {
            eprintln!("lab down --name {} failed: {}{}", self.name, text(&out.stdout), text(&out.stderr));
        }
        let _ = fs::remove_dir_all(&self.config);
    }
}

struct Docker {
    sock: String,
    config: PathBuf,
}

impl Docker {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.sock))
            .args(args)
            .env("DOCKER_CONFIG", &self.config)
            .env("DOCKER_CLI_HINTS", "false")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .output()
            .expect("run docker")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "docker {args:?} on {}: {}{}", self.sock, text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }
}

/// One HTTP GET from inside the network namespace at `netns` (a thread that entered it).
fn get_in_netns(netns: &Path, addr: &str, path: &str) -> std::io::Result<String> {
    let ns = fs::File::open(netns)?;
    let (addr, path) = (addr.to_string(), path.to_string());
    std::thread::spawn(move || {
        // SAFETY: setns on a valid fd changes only this thread's network namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .join()
    .expect("http thread")
}

/// Pids (not zombies) whose command line mentions `needle`.
fn procs_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let zombie = stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3)) == Some("Z");
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).map(|b| text(&b).replace('\0', " ")).unwrap_or_default();
        if !zombie && cmd.contains(needle) {
            v.push((pid, cmd));
        }
    }
    v
}

fn mounts_mentioning(needle: &str) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(needle)).map(String::from).collect()
}

fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mount = pre.split_whitespace().nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount).join(name))
        })
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn lab_up_ls_container_across_nodes_and_down() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: shoal lab needs root");
        return;
    }
    ensure_packages(&["busybox-static", "iproute2", "nftables"]);
    let busybox = TestImage::busybox().docker_archive();
    let name = format!("t{}", random_hex(3));
    let config = std::env::temp_dir().join(format!("shoal-lab-test-{name}"));
    let _guard = LabGuard { name: name.clone(), config: config.clone() };
    fs::create_dir_all(&config).unwrap();

    // up
    let out = shoal(&["lab", "up", "--name", &name, "--managers", "1", "--workers", "2"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "lab up failed:\n{stdout}\n{stderr}");
    let nodes = ["mgr1", "wrk1", "wrk2"];
    let sock = |n: &str| format!("/run/shoal-lab/{name}/{n}/docker.sock");
    for (i, n) in nodes.iter().enumerate() {
        assert!(stdout.contains(&format!("export DOCKER_HOST=unix://{}", sock(n))), "{stdout}");
        assert!(stdout.contains(&format!("10.99.0.{}", i + 1)), "{stdout}");
    }
    // The host gets its own link into the lab, unless another lab already uses the subnet.
    let host_link: Option<String> = stdout
        .split_once("This host is on the lab network as 10.99.0.254 (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(ifname, _)| ifname.to_string());
    match &host_link {
        Some(ifname) => {
            assert!(Path::new("/sys/class/net").join(ifname).exists(), "host link {ifname} missing");
            assert!(stdout.contains("  curl http://10.99.0."), "{stdout}");
        }
        None => assert!(stdout.contains(&format!("nsenter --net=/run/netns/shoal-{name}-mgr1 curl http://10.99.0.")), "{stdout}"),
    }
    assert!(Path::new(&format!("/run/shoal-lab/{name}/lab.json")).is_file());
    // The same name again is refused without touching the running lab.
    let again = shoal(&["lab", "up", "--name", &name]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains(&format!("lab {name} already exists; run `shoal lab down --name {name}` first")));

    // Every daemon answers; node 1 is a swarm manager.
    let docker: Vec<Docker> = nodes.iter().map(|n| Docker { sock: sock(n), config: config.clone() }).collect();
    let state = |d: &Docker| d.ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).trim().to_string();
    assert_eq!(state(&docker[0]), "active");
    assert!(docker[0].ok(&["info"]).contains("Is Manager: true"));
    let join_unsupported = stderr.contains("did not join the swarm");
    if join_unsupported {
        // Joining is not implemented yet: each worker gets a warning and stays a standalone node.
        for (n, d) in nodes.iter().zip(&docker).skip(1) {
            assert!(stderr.contains(&format!("warning: node {n} (")), "{stderr}");
            assert_eq!(state(d), "inactive");
        }
        eprintln!("note: joining is not supported yet; lab up warned:\n{stderr}");
    } else {
        for d in &docker[1..] {
            assert_eq!(state(d), "active");
        }
        let ok = wait_until(Duration::from_secs(10), || docker[0].ok(&["node", "ls", "-q"]).lines().count() == 3);
        assert!(ok, "node ls: {}", docker[0].ok(&["node", "ls"]));
        // Each node has its own hostname (its UTS namespace).
        let mut hostnames: Vec<String> = docker[0].ok(&["node", "ls", "--format", "{{.Hostname}}"]).lines().map(str::to_string).collect();
        hostnames.sort();
        assert_eq!(hostnames, nodes, "node ls hostnames");
    }

    // ls shows the nodes, addresses, sockets and live daemons.
    let out = shoal(&["lab", "ls"]);
    let ls = text(&out.stdout);
    assert!(out.status.success(), "{ls}{}", text(&out.stderr));
    for (i, n) in nodes.iter().enumerate() {
        let line = ls.lines().find(|l| l.contains(&sock(n))).unwrap_or_else(|| panic!("{n} missing from lab ls:\n{ls}"));
        assert!(line.contains(&format!("10.99.0.{}", i + 1)) && line.contains("running"), "{line}");
    }

    // A container published on a worker is reachable from node 1 over the lab network.
    docker[1].ok(&["load", "-i", busybox.to_str().unwrap()]);
    docker[1].ok(&[
        "run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c",
        "mkdir -p /www && echo hello-from-wrk1 > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let mgr_ns = PathBuf::from(format!("/run/netns/shoal-{name}-mgr1"));
    let mut last = String::new();
    let reached = wait_until(Duration::from_secs(10), || match get_in_netns(&mgr_ns, "10.99.0.2:8080", "/") {
        Ok(body) => {
            last = body;
            last.contains("hello-from-wrk1")
        }
        Err(e) => {
            last = e.to_string();
            false
        }
    });
    assert!(reached, "GET http://10.99.0.2:8080/ from mgr1: {last}");

    // What down must remove.
    let cgroups: Vec<String> =
        nodes.iter().map(|n| format!("shoal-{}", &sha256_hex(format!("/var/lib/shoal-lab/{name}/{n}").as_bytes())[..8])).collect();
    assert!(!cgroup_dirs(&cgroups[1]).is_empty(), "the worker's container cgroup should exist");
    let marker = format!("/shoal-lab/{name}/");
    assert!(procs_mentioning(&marker).len() >= 4, "3 daemons + a shim: {:?}", procs_mentioning(&marker));

    // down
    let out = shoal(&["lab", "down", "--name", &name]);
    assert!(out.status.success(), "lab down: {}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("lab {name} removed")));
    let netns: Vec<String> = fs::read_dir("/run/netns")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    let left: Vec<&String> = netns.iter().filter(|n| n.starts_with(&format!("shoal-{name}-"))).collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    if let Some(ifname) = &host_link {
        assert!(!Path::new("/sys/class/net").join(ifname).exists(), "host link {ifname} left");
    }
    assert!(procs_mentioning(&marker).is_empty(), "processes left: {:?}", procs_mentioning(&marker));
    assert!(mounts_mentioning(&marker).is_empty(), "mounts left: {:?}", mounts_mentioning(&marker));
    for cg in &cgroups {
        assert!(cgroup_dirs(cg).is_empty(), "cgroups left: {:?}", cgroup_dirs(cg));
    }
    for d in [format!("/run/shoal-lab/{name}"), format!("/var/lib/shoal-lab/{name}")] {
        assert!(!Path::new(&d).exists(), "{d} left");
    }
    // Idempotent.
    let out = shoal(&["lab", "down", "--name", &name]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("does not exist"));
}

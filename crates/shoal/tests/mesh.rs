//! The ingress routing mesh, end to end on a three-node lab with the stock docker CLI: the
//! tutorial verbatim (two nginx tasks on the workers, a different page copied into each, every
//! node's port 8001 alternating between them), a five-replica whoami service answering from every
//! node in a repeating round-robin order, and scaling it down under load without a failed
//! request.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_testkit::{running_as_root, ensure_packages, wait_until, Daemon, DaemonOpts, Lab, Netns, TestImage};

/// One HTTP/1.0 GET from inside `netns` (a fresh connection each time); the body, or the error.
fn get(netns: &Netns, addr: Ipv4Addr, port: u16) -> Result<String, String> {
    let target = SocketAddr::from((addr, port));
    netns
        .run(move || -> Result<String, String> {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).map_err(|e| format!("connect {target}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
            s.write_all(format!("GET / HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes()).map_err(|e| format!("send to {target}: {e}"))?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).map_err(|e| format!("read from {target}: {e}"))?;
            let text = String::from_utf8_lossy(&buf).into_owned();
            if !text.starts_with("HTTP/1.") || !text.contains(" 200 ") {
                return Err(format!("{target}: unexpected answer: {text:?}"));
            }
            Ok(text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
        })
        .map_err(|e| format!("entering the client netns: {e}"))?
}

/// whoami's `Hostname: …` line.
fn hostname_of(body: &str) -> String {
    body.lines().find_map(|l| l.strip_prefix("Hostname: ")).unwrap_or("?").trim().to_string()
}

/// The containers of `service` on this node.
fn containers(d: &Daemon, service: &str) -> Vec<String> {
    d.docker_ok(["ps", "-q", "--filter", &format!("label=com.docker.swarm.service.name={service}")])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn routing_mesh_round_robin_from_every_node() {
    if !running_as_root("mesh tests") {
        return;
    }
    ensure_packages(&["busybox-static", "nftables", "iproute2"]);
    let lab = Lab::new("shoal-mesh", 3);
    let images = [TestImage::nginx().docker_archive(), TestImage::whoami().docker_archive()];
    let nodes: Vec<Daemon> = (0..3)
        .map(|i| {
            let d = Daemon::start(DaemonOpts::new(env!("CARGO_BIN_EXE_shoal"), lab.node(i)));
            for img in &images {
                d.docker_ok(["load", "-i", img.to_str().unwrap()]);
            }
            d
        })
        .collect();
    let manager_addr = format!("{}:2377", lab.addr(0));
    nodes[0].docker_ok(["swarm", "init", "--advertise-addr", &lab.addr(0).to_string()]);
    let token = nodes[0].docker_ok(["swarm", "join-token", "-q", "worker"]).trim().to_string();
    for w in &nodes[1..] {
        w.docker_ok(["swarm", "join", "--token", &token, &manager_addr]);
    }
    let ready = wait_until(Duration::from_secs(20), || {
        nodes[0].docker_ok(["node", "ls", "--format", "{{.Status}}"]).lines().filter(|l| *l == "Ready").count() == 3
    });
    assert!(ready, "node ls: {}", nodes[0].docker_ok(["node", "ls"]));
    let ls = nodes[0].docker_ok(["network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}"]);
    assert!(ls.lines().any(|l| l == "ingress overlay swarm"), "network ls: {ls}");

    // The tutorial, verbatim (without -d the CLI waits until both tasks run).
    nodes[0].docker_ok([
        "service", "create", "--name", "web-alb", "--constraint", "node.role==worker", "--replicas", "2", "--publish", "8001:80", "nginx",
    ]);
    let pages = tempfile_dir();
    for (i, w) in nodes[1..].iter().enumerate() {
        let ids = containers(w, "web-alb");
        assert_eq!(ids.len(), 1, "worker {} runs {ids:?}", i + 1);
        let dir = pages.join(format!("w{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("index.html");
        std::fs::write(&file, format!("page from worker {}\n", i + 1)).unwrap();
        w.docker_ok(["cp", file.to_str().unwrap(), &format!("{}:/usr/share/nginx/html/", ids[0])]);
    }
    assert!(containers(&nodes[0], "web-alb").is_empty(), "the manager runs no web-alb task");
    // The client: the lab's hub namespace, given an address on the lab network.
    let client = lab.hub();
    let client_addr = lab.subnet().replace(".0/24", ".254/24");
    client.ip(&["addr", "add", &client_addr, "dev", "br0"]);
    let want: HashSet<String> = ["page from worker 1\n".to_string(), "page from worker 2\n".to_string()].into();
    for i in 0..3 {
        let addr = lab.addr(i);
        // The mesh is programmed from the network map a moment after the tasks run.
        let both = wait_until(Duration::from_secs(20), || {
            let got: HashSet<String> = (0..4).filter_map(|_| get(client, addr, 8001).ok()).collect();
            got == want
        });
        assert!(both, "node {addr}:8001 does not reach both pages; manager log:\n{}", nodes[0].log_tail());
        let answers: Vec<String> = (0..6).map(|_| get(client, addr, 8001).unwrap()).collect();
        for w in answers.windows(2) {
            assert_ne!(w[0], w[1], "node {addr}: answers must alternate: {answers:?}");
        }
    }

    // Five whoami tasks over three nodes: every node cycles through all five.
    nodes[0].docker_ok(["service", "create", "--name", "who", "--replicas", "5", "--publish", "4567:80", "whoami"]);
    for i in 0..3 {
        let addr = lab.addr(i);
        let all = wait_until(Duration::from_secs(20), || {
            let got: HashSet<String> = (0..10).filter_map(|_| get(client, addr, 4567).ok()).map(|b| hostname_of(&b)).collect();
            got.len() == 5
        });
        assert!(all, "node {addr}:4567 does not reach five tasks");
        let seq: Vec<String> = (0..10).map(|_| hostname_of(&get(client, addr, 4567).unwrap())).collect();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for h in &seq {
            *counts.entry(h.as_str()).or_default() += 1;
        }
        assert_eq!(counts.len(), 5, "node {addr}: {seq:?}");
        assert!(counts.values().all(|c| *c == 2), "node {addr}: each task twice: {seq:?}");
        assert_eq!(seq[..5], seq[5..], "node {addr}: the order repeats: {seq:?}");
    }

    // Scale 5 → 1 while a client keeps sending requests to every node: none fails.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let addrs: Vec<Ipv4Addr> = (0..3).map(|i| lab.addr(i)).collect();
    let failures = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut failures = Vec::new();
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = get(client, addrs[k % 3], 4567) {
                    failures.push(e);
                }
                k += 1;
                sent.store(k, Ordering::Relaxed);
            }
            failures
        });
        std::thread::sleep(Duration::from_millis(300));
        nodes[0].docker_ok(["service", "scale", "who=1"]);
        let one = wait_until(Duration::from_secs(30), || nodes.iter().map(|d| containers(d, "who").len()).sum::<usize>() == 1);
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let failures = load.join().unwrap();
        assert!(one, "scaling down left {} containers", nodes.iter().map(|d| containers(d, "who").len()).sum::<usize>());
        failures
    });
    let total = sent.load(Ordering::Relaxed);
    assert!(total > 10, "the client sent only {total} requests");
    assert!(failures.is_empty(), "{} of {total} requests failed while scaling down: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    let left: HashSet<String> = (0..6).map(|k| hostname_of(&get(client, addrs[k % 3], 4567).unwrap())).collect();
    assert_eq!(left.len(), 1, "after scaling to 1 every node answers with the one task: {left:?}");

    // Beyond Swarm: a service that keeps client addresses. Its task sees the client's own address
    // when the receiving node runs it; another node forwards with source NAT, as Docker does.
    let w1 = nodes[1].docker_ok(["info", "--format", "{{.Swarm.NodeID}}"]).trim().to_string();
    nodes[0].docker_ok([
        "service", "create", "--name", "keep", "--label", "shoal.ingress.client-address=preserve", "--constraint",
        &format!("node.id=={w1}"), "--publish", "4568:80", "whoami",
    ]);
    let remote_addr = |node: usize| -> String {
        let body = get(client, lab.addr(node), 4568).unwrap_or_default();
        body.lines().find_map(|l| l.strip_prefix("RemoteAddr: ")).unwrap_or("").split(':').next().unwrap_or("").to_string()
    };
    let client_ip = client_addr.split('/').next().unwrap().to_string();
    let kept = wait_until(Duration::from_secs(20), || remote_addr(1) == client_ip);
    assert!(kept, "on the task's node the client address is kept: saw {:?}, client {client_ip}", remote_addr(1));
    let via_manager = remote_addr(0);
    assert!(via_manager.starts_with("10.0.0."), "through another node the source is that node's ingress address: {via_manager:?}");

    // mode=host: the port opens on the task's own node only.
    nodes[0].docker_ok([
        "service", "create", "--name", "hostport", "--constraint", &format!("node.id=={w1}"), "--publish",
        "mode=host,published=4569,target=80", "whoami",
    ]);
    let on_task_node = wait_until(Duration::from_secs(20), || get(client, lab.addr(1), 4569).is_ok());
    assert!(on_task_node, "host-mode port on the task's node");
    assert!(get(client, lab.addr(0), 4569).is_err(), "host-mode port must not open on other nodes");

    for d in &nodes {
        d.docker_ok(["swarm", "leave", "--force"]);
    }
    let _ = std::fs::remove_dir_all(&pages);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The VIP of `service` on its first network.
fn vip(manager: &Daemon, service: &str) -> String {
    let addr = manager.docker_ok(["service", "inspect", service, "--format", "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}"]);
    addr.split_whitespace().next().and_then(|a| a.split('/').next()).unwrap_or_default().to_string()
}

#[test]
fn overlay_network_service_discovery_and_vip() {
    if !running_as_root("mesh tests") {
        return;
    }
    ensure_packages(&["busybox-static", "nftables", "iproute2"]);
    let lab = Lab::new("shoal-sd", 2);
    let images = [TestImage::busybox().docker_archive(), TestImage::whoami().docker_archive()];
    let nodes: Vec<Daemon> = (0..2)
        .map(|i| {
            let d = Daemon::start(DaemonOpts::new(env!("CARGO_BIN_EXE_shoal"), lab.node(i)));
            for img in &images {
                d.docker_ok(["load", "-i", img.to_str().unwrap()]);
            }
            d
        })
        .collect();
    nodes[0].docker_ok(["swarm", "init", "--advertise-addr", &lab.addr(0).to_string()]);
    let token = nodes[0].docker_ok(["swarm", "join-token", "-q", "worker"]).trim().to_string();
    nodes[1].docker_ok(["swarm", "join", "--token", &token, &format!("{}:2377", lab.addr(0))]);
    assert!(wait_until(Duration::from_secs(20), || nodes[0].docker_ok(["node", "ls", "--format", "{{.Status}}"]).lines().filter(|l| *l == "Ready").count() == 2));

    nodes[0].docker_ok(["network", "create", "-d", "overlay", "app"]);
    // Two whoami tasks (one per node by spread), a DNS round-robin service, and a client on the manager.
    nodes[0].docker_ok(["service", "create", "--name", "web", "--network", "app", "--replicas", "2", "whoami"]);
    nodes[0].docker_ok(["service", "create", "--name", "rr", "--network", "app", "--endpoint-mode", "dnsrr", "--replicas", "2", "whoami"]);
    nodes[0].docker_ok(["service", "create", "--name", "cli", "--network", "app", "--constraint", "node.role==manager", "busybox", "sleep", "1d"]);
    let cli = containers(&nodes[0], "cli");
    assert_eq!(cli.len(), 1);
    let exec = |args: &[&str]| -> String {
        let mut full = vec!["exec", cli[0].as_str()];
        full.extend_from_slice(args);
        let out = nodes[0].docker(&full);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let web_vip = vip(&nodes[0], "web");
    assert!(web_vip.starts_with("10.0."), "web VIP: {web_vip:?}");
    assert!(exec(&["cat", "/etc/resolv.conf"]).contains("nameserver 127.0.0.11"));

    // `web` is its VIP; `tasks.web` its two tasks; `rr` (dnsrr) its tasks directly.
    let resolved = wait_until(Duration::from_secs(15), || exec(&["nslookup", "web", "127.0.0.11"]).contains(&web_vip));
    assert!(resolved, "nslookup web: {}", exec(&["nslookup", "web", "127.0.0.11"]));
    let task_ips: HashSet<String> = exec(&["nslookup", "tasks.web", "127.0.0.11"])
        .lines()
        .filter_map(|l| l.strip_prefix("Address: ").or_else(|| l.strip_prefix("Address 1: ")).map(|a| a.trim().to_string()))
        .filter(|a| a.starts_with("10.0.") && *a != web_vip)
        .collect();
    assert_eq!(task_ips.len(), 2, "tasks.web: {}", exec(&["nslookup", "tasks.web", "127.0.0.11"]));
    let rr = exec(&["nslookup", "rr", "127.0.0.11"]);
    let rr_ips = rr.lines().filter(|l| l.contains("Address") && l.contains("10.0.")).count();
    assert_eq!(rr_ips, 2, "rr (dnsrr) resolves to its two tasks: {rr}");

    // Connections to the VIP are balanced over both tasks, across nodes. (By address: the test
    // image's static busybox wget cannot use glibc's resolver; nslookup above is the DNS check.)
    let url = format!("http://{web_vip}/");
    let mut seen = HashSet::new();
    for _ in 0..6 {
        let body = exec(&["timeout", "5", "wget", "-qO-", &url]); // (busybox 1.35 wget -T crashes)
        seen.insert(hostname_of(&body));
    }
    seen.remove("?");
    assert_eq!(seen.len(), 2, "answers through the VIP: {seen:?}");

    // The worker lists the swarm networks it takes part in (ingress, and `app` for its web
    // task), as Docker's workers do; it cannot remove them.
    assert!(!containers(&nodes[1], "web").is_empty(), "a web task on the worker");
    let worker_ls = nodes[1].docker_ok(["network", "ls", "--filter", "scope=swarm", "--format", "{{.Name}} {{.Driver}} {{.Scope}}"]);
    let mut listed: Vec<&str> = worker_ls.lines().collect();
    listed.sort();
    assert_eq!(listed, ["app overlay swarm", "ingress overlay swarm"], "worker network ls: {worker_ls}");
    let subnet = nodes[1].docker_ok(["network", "inspect", "app", "--format", "{{range .IPAM.Config}}{{.Subnet}}{{end}}"]);
    assert!(subnet.trim().starts_with("10.0."), "worker network inspect app: {subnet}");
    nodes[1].docker_fails(&["network", "rm", "app"], "not a swarm manager");

    // `service logs` on the manager includes the worker's task (published over its session):
    // one task per node, two lines.
    nodes[0].docker_ok([
        "service", "create", "--name", "talk", "--replicas", "2", "--replicas-max-per-node", "1", "busybox", "sh", "-c",
        "echo hello-from-$(hostname); sleep 1d",
    ]);
    assert_eq!(containers(&nodes[1], "talk").len(), 1, "one talk task on the worker");
    let mut got = String::new();
    let both = wait_until(Duration::from_secs(20), || {
        got = nodes[0].docker_ok(["service", "logs", "talk"]);
        got.lines().filter(|l| l.contains("hello-from-")).count() == 2
    });
    assert!(both, "service logs on the manager: {got}");

    for d in &nodes {
        d.docker_ok(["swarm", "leave", "--force"]);
    }
}

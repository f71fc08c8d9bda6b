//! Multi-node swarm, end to end: four daemons, each in its own node namespace of a testkit
//! `Lab`, driven by the stock docker CLI. Joining with mutual TLS (wrong secret and foreign CA
//! refused), the per-node view, placement on workers, drain, node failure (kill -9 → Down →
//! tasks rescheduled) and a restarted worker rejoining by itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use shoal_testkit::{running_as_root, ensure_packages, wait_until, Daemon, DaemonOpts, Lab, TestImage};

/// Running containers of `service` on this node.
fn running(d: &Daemon, service: &str) -> usize {
    d.docker_ok(["ps", "--filter", &format!("label=com.docker.swarm.service.name={service}"), "--format", "{{.Names}}"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// Tasks of `service` the manager sees running (statuses reported by the workers).
fn tasks_running(manager: &Daemon) -> usize {
    manager
        .docker_ok(["service", "ps", "sleeper", "--filter", "desired-state=running", "--format", "{{.CurrentState}}"])
        .lines()
        .filter(|l| l.starts_with("Running"))
        .count()
}

fn node_state(manager: &Daemon, node: &str) -> String {
    manager.docker_ok(["node", "inspect", node, "--format", "{{.Status.State}}"]).trim().to_string()
}

fn local_state(d: &Daemon) -> String {
    d.docker_ok(["info", "--format", "{{.Swarm.LocalNodeState}}"]).trim().to_string()
}

#[test]
fn multinode_join_schedule_drain_and_node_failure() {
    if !running_as_root("multi-node tests") {
        return;
    }
    ensure_packages(&["busybox-static", "nftables", "iproute2"]);
    let t0 = Instant::now();
    let lab = Lab::new("shoal-mn", 4);
    let busybox = TestImage::busybox().docker_archive();
    let mut nodes: Vec<Daemon> = (0..4)
        .map(|i| {
            let d = Daemon::start(DaemonOpts::new(env!("CARGO_BIN_EXE_shoal"), lab.node(i)));
            d.docker_ok(["load", "-i", busybox.to_str().unwrap()]);
            d
        })
        .collect();
    let manager_addr = format!("{}:2377", lab.addr(0));

    // init on node 1, with a short heartbeat so node failure is seen quickly
    let out = nodes[0].docker_ok(["swarm", "init", "--advertise-addr", &lab.addr(0).to_string()]);
    assert!(out.contains(&manager_addr), "{out}");
    nodes[0].docker_ok(["swarm", "update", "--dispatcher-heartbeat", "1s"]);
    let token = nodes[0].docker_ok(["swarm", "join-token", "-q", "worker"]).trim().to_string();
    let (prefix, secret) = token.rsplit_once('-').unwrap();

    // a wrong secret and a token naming another CA are refused; node 4 stays out
    let wrong_secret = format!("{prefix}-{}", if secret.starts_with('0') { "1".repeat(25) } else { "0".repeat(25) });
    nodes[3].docker_fails(&["swarm", "join", "--token", &wrong_secret, &manager_addr], "A valid join token is necessary to join this cluster");
    let foreign_ca = format!("SWMTKN-1-{}-{secret}", "1".repeat(50));
    nodes[3].docker_fails(&["swarm", "join", "--token", &foreign_ca, &manager_addr], "remote CA does not match fingerprint");
    assert_eq!(local_state(&nodes[3]), "inactive");

    // the cluster port speaks TLS only: a plaintext request gets no HTTP answer
    let target: SocketAddr = manager_addr.parse().unwrap();
    let answer = lab
        .node(3)
        .run(move || {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).expect("connect to the cluster port");
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(b"GET /v1/ca HTTP/1.1\r\nHost: manager\r\n\r\n").unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            buf
        })
        .unwrap();
    assert!(!answer.starts_with(b"HTTP/"), "plaintext got an HTTP answer: {:?}", String::from_utf8_lossy(&answer));

    // nodes 2 and 3 join as workers
    for w in [&nodes[1], &nodes[2]] {
        let out = w.docker_ok(["swarm", "join", "--token", &token, &manager_addr]);
        assert!(out.contains("This node joined a swarm as a worker."), "{out}");
        assert_eq!(local_state(w), "active");
    }
    let w1 = nodes[1].docker_ok(["info", "--format", "{{.Swarm.NodeID}}"]).trim().to_string();
    let w2 = nodes[2].docker_ok(["info", "--format", "{{.Swarm.NodeID}}"]).trim().to_string();
    assert!(!w1.is_empty() && !w2.is_empty() && w1 != w2);
    let ready = wait_until(Duration::from_secs(15), || {
        let ls = nodes[0].docker_ok(["node", "ls", "--format", "{{.Status}} {{.Availability}} {{.ManagerStatus}}"]);
        let lines: Vec<&str> = ls.lines().collect();
        lines.len() == 3
            && lines.iter().all(|l| l.starts_with("Ready Active"))
            && lines.iter().filter(|l| l.ends_with("Leader")).count() == 1
    });
    assert!(ready, "node ls: {}", nodes[0].docker_ok(["node", "ls"]));
    assert_eq!(nodes[0].docker_ok(["node", "inspect", &w1, "--format", "{{.Status.Addr}}"]).trim(), lab.addr(1).to_string());

    // a worker is not a manager
    nodes[1].docker_fails(&["node", "ls"], "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state.");
    assert!(nodes[0].docker_ok(["info", "--format", "{{.Swarm.ControlAvailable}}"]).contains("true"));
    assert!(nodes[1].docker_ok(["info", "--format", "{{.Swarm.ControlAvailable}}"]).contains("false"));

    // one task on each worker, none on the manager
    nodes[0].docker_ok([
        "service", "create", "-d", "--name", "sleeper", "--constraint", "node.role==worker", "--replicas", "2", "busybox", "sleep", "1000",
    ]);
    let spread = wait_until(Duration::from_secs(30), || running(&nodes[1], "sleeper") == 1 && running(&nodes[2], "sleeper") == 1);
    assert!(spread, "tasks: {}\nworker1 log:\n{}", nodes[0].docker_ok(["service", "ps", "sleeper"]), nodes[1].log_tail());
    assert_eq!(running(&nodes[0], "sleeper"), 0);
    assert!(wait_until(Duration::from_secs(10), || tasks_running(&nodes[0]) == 2), "worker statuses never reached the manager");

    // draining worker 2 moves its task to worker 1
    nodes[0].docker_ok(["node", "update", "--availability", "drain", &w2]);
    let moved = wait_until(Duration::from_secs(30), || running(&nodes[2], "sleeper") == 0 && running(&nodes[1], "sleeper") == 2);
    assert!(moved, "after drain: {}", nodes[0].docker_ok(["service", "ps", "sleeper"]));
    nodes[0].docker_ok(["node", "update", "--availability", "active", &w2]);

    // kill -9 worker 1: it is marked down and its tasks run again on worker 2
    let killed = Instant::now();
    nodes[1].kill9();
    assert!(wait_until(Duration::from_secs(15), || node_state(&nodes[0], &w1) == "down"), "worker 1 never marked down");
    let detected = killed.elapsed();
    assert!(
        wait_until(Duration::from_secs(30), || running(&nodes[2], "sleeper") == 2),
        "tasks not rescheduled: {}",
        nodes[0].docker_ok(["service", "ps", "sleeper"])
    );
    let rescheduled = killed.elapsed();
    eprintln!("node loss: marked down after {detected:?}, tasks running elsewhere after {rescheduled:?}");

    // restart it: it rejoins with its stored identity and its stale tasks stop; total stays 2
    nodes[1].restart();
    assert_eq!(local_state(&nodes[1]), "active");
    assert!(wait_until(Duration::from_secs(20), || node_state(&nodes[0], &w1) == "ready"), "worker 1 did not rejoin");
    let settled = wait_until(Duration::from_secs(20), || running(&nodes[1], "sleeper") == 0 && running(&nodes[2], "sleeper") == 2);
    assert!(settled, "after rejoin: w1={} w2={}", running(&nodes[1], "sleeper"), running(&nodes[2], "sleeper"));
    assert_eq!(tasks_running(&nodes[0]), 2);

    // a worker leaves without --force
    let out = nodes[2].docker_ok(["swarm", "leave"]);
    assert!(out.contains("Node left the swarm."), "{out}");
    assert_eq!(local_state(&nodes[2]), "inactive");
    eprintln!("multinode test took {:?}", t0.elapsed());
}

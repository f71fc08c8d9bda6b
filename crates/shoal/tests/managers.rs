//! Several managers, end to end: four daemons in the node namespaces of a testkit `Lab`, driven
//! by the stock docker CLI. Two nodes join with the manager token and one as a worker; every
//! manager answers `node ls` and `info`; a service created on a follower runs; demote/promote
//! round trip; kill -9 the leader: another manager takes over, keeps reconciling (the dead
//! node's tasks run elsewhere) and accepts new services; the old leader restarts as a follower;
//! a manager demoted while it is down becomes a worker when it comes back.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_testkit::{running_as_root, ensure_packages, wait_until, Daemon, DaemonOpts, Lab, TestImage};

/// Generous guards: elections, joins and role changes take seconds; a loaded machine more.
const SOON: Duration = Duration::from_secs(90);

/// What `node ls` shows on `d`: node ID → (STATUS, MANAGER STATUS); `None` if it fails.
fn node_table(d: &Daemon) -> Option<BTreeMap<String, (String, String)>> {
    let out = d.docker(["node", "ls", "--format", "{{.ID}}|{{.Status}}|{{.ManagerStatus}}"]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut table = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.split('|');
        let id = f.next()?.trim().trim_end_matches('*').trim().to_string();
        let status = f.next()?.trim().to_string();
        let manager = f.next().unwrap_or("").trim().to_string();
        table.insert(id, (status, manager));
    }
    Some(table)
}

fn table_text(d: &Daemon) -> String {
    let out = d.docker(["node", "ls"]);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn info(d: &Daemon, field: &str) -> String {
    d.docker_ok(["info", "--format", &format!("{{{{.Swarm.{field}}}}}")]).trim().to_string()
}

/// Tasks of `service` that `d` sees running with desired state running.
fn tasks_running(d: &Daemon, service: &str) -> Option<usize> {
    let out = d.docker(["service", "ps", service, "--filter", "desired-state=running", "--format", "{{.CurrentState}}"]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("Running")).count())
}

/// The manager `d` names as leader.
fn leader(d: &Daemon) -> Option<String> {
    node_table(d)?.into_iter().find(|(_, (_, m))| m == "Leader").map(|(id, _)| id)
}

#[test]
fn three_managers_share_the_work_and_fail_over() {
    if !running_as_root("multi-manager tests") {
        return;
    }
    ensure_packages(&["busybox-static", "nftables", "iproute2"]);
    let lab = Lab::new("shoal-mgr", 4);
    let busybox = TestImage::busybox().docker_archive();
    let mut nodes: Vec<Daemon> = (0..4)
        .map(|i| {
            let d = Daemon::start(DaemonOpts::new(env!("CARGO_BIN_EXE_shoal"), lab.node(i)));
            d.docker_ok(["load", "-i", busybox.to_str().unwrap()]);
            d
        })
        .collect();

    // init on node 1 (short heartbeat: failures are noticed quickly); 2 and 3 join as managers,
    // 4 as a worker
    nodes[0].docker_ok(["swarm", "init", "--advertise-addr", &lab.addr(0).to_string()]);
    nodes[0].docker_ok(["swarm", "update", "--dispatcher-heartbeat", "1s"]);
    let manager_token = nodes[0].docker_ok(["swarm", "join-token", "-q", "manager"]).trim().to_string();
    let worker_token = nodes[0].docker_ok(["swarm", "join-token", "-q", "worker"]).trim().to_string();
    // (node 3 joins through node 2 and the worker through node 3: followers forward joins)
    for (i, via) in [(1, 0), (2, 1)] {
        let out = nodes[i].docker_ok(["swarm", "join", "--token", &manager_token, &format!("{}:2377", lab.addr(via))]);
        assert!(out.contains("This node joined a swarm as a manager."), "node {}: {out}\nlog:\n{}", i + 1, nodes[i].log_tail());
    }
    let out = nodes[3].docker_ok(["swarm", "join", "--token", &worker_token, &format!("{}:2377", lab.addr(2))]);
    assert!(out.contains("This node joined a swarm as a worker."), "{out}");
    let ids: Vec<String> = nodes.iter().map(|d| info(d, "NodeID")).collect();
    assert!(ids.iter().all(|id| !id.is_empty()), "{ids:?}");

    // node ls: 3 managers (1 Leader, 2 Reachable) and 1 worker, all ready, on every manager
    let settled = |d: &Daemon| {
        node_table(d).is_some_and(|t| {
            t.len() == 4
                && t.values().all(|(s, _)| s == "Ready")
                && t.get(&ids[0]).is_some_and(|(_, m)| m == "Leader")
                && t.get(&ids[1]).is_some_and(|(_, m)| m == "Reachable")
                && t.get(&ids[2]).is_some_and(|(_, m)| m == "Reachable")
                && t.get(&ids[3]).is_some_and(|(_, m)| m.is_empty())
        })
    };
    for i in 0..3 {
        assert!(wait_until(SOON, || settled(&nodes[i])), "node ls on node {}:\n{}", i + 1, table_text(&nodes[i]));
        assert_eq!(info(&nodes[i], "ControlAvailable"), "true", "node {}", i + 1);
        assert_eq!(info(&nodes[i], "Managers"), "3", "node {}", i + 1);
        let out = nodes[i].docker_ok(["info"]);
        assert!(out.contains("Is Manager: true") && out.contains("Managers: 3"), "node {}: {out}", i + 1);
    }
    assert_eq!(info(&nodes[3], "ControlAvailable"), "false");
    nodes[3].docker_fails(&["node", "ls"], "This node is not a swarm manager.");

    // a service created on a follower runs
    nodes[1].docker_ok(["service", "create", "-d", "--name", "sleeper", "--replicas", "4", "busybox", "sleep", "1000"]);
    assert!(
        wait_until(SOON, || tasks_running(&nodes[1], "sleeper") == Some(4)),
        "service ps on a follower: {}",
        nodes[1].docker_ok(["service", "ps", "sleeper"])
    );
    assert_eq!(tasks_running(&nodes[2], "sleeper"), Some(4), "the other follower's replica");

    // a manager must be demoted before it is removed, and leaves only with --force
    nodes[0].docker_fails(&["node", "rm", "--force", &ids[2]], "It must be demoted to worker before removal");
    nodes[1].docker_fails(&["swarm", "leave"], "You are attempting to leave the swarm on a node that is participating as a manager.");

    // demote node 3 (asked on a follower), then promote it again
    let out = nodes[1].docker_ok(["node", "demote", &ids[2]]);
    assert!(out.contains("demoted in the swarm"), "{out}");
    let demoted = wait_until(SOON, || {
        node_table(&nodes[0]).is_some_and(|t| t.get(&ids[2]).is_some_and(|(_, m)| m.is_empty()))
            && info(&nodes[2], "ControlAvailable") == "false"
            && info(&nodes[0], "Managers") == "2"
    });
    assert!(demoted, "after demote:\n{}\nnode 3 log:\n{}", table_text(&nodes[0]), nodes[2].log_tail());
    nodes[2].docker_fails(&["node", "ls"], "This node is not a swarm manager.");
    let out = nodes[0].docker(["info"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Running Swarm in a two-manager configuration"), "{text}");
    let out = nodes[0].docker_ok(["node", "promote", &ids[2]]);
    assert!(out.contains("promoted to a manager in the swarm"), "{out}");
    assert!(wait_until(SOON, || settled(&nodes[0]) && info(&nodes[2], "ControlAvailable") == "true"), "after promote:\n{}\nnode 3 log:\n{}", table_text(&nodes[0]), nodes[2].log_tail());
    assert!(wait_until(SOON, || settled(&nodes[2])), "node ls on the promoted node:\n{}", table_text(&nodes[2]));

    // kill -9 the leader: another manager takes over
    let old = ids.iter().position(|id| Some(id.clone()) == leader(&nodes[0])).expect("a leader");
    nodes[old].kill9();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let mut new_leader = None;
    let took_over = wait_until(SOON, || {
        for &i in &survivors {
            if let Some(l) = leader(&nodes[i]).filter(|l| *l != ids[old]) {
                new_leader = ids.iter().position(|id| *id == l);
                return true;
            }
        }
        false
    });
    assert!(took_over, "no new leader:\n{}", table_text(&nodes[survivors[0]]));
    let new = new_leader.expect("the new leader is one of the nodes");
    assert!(survivors.contains(&new), "leader {new}");
    // the old leader is seen down and unreachable
    let seen_down = wait_until(SOON, || {
        node_table(&nodes[new]).is_some_and(|t| t.get(&ids[old]).is_some_and(|(s, m)| s == "Down" && m == "Unreachable"))
    });
    assert!(seen_down, "old leader:\n{}", table_text(&nodes[new]));
    nodes[new].docker_ok(["service", "ls"]);
    // the dead node's task runs elsewhere; new services run
    assert!(
        wait_until(SOON, || tasks_running(&nodes[new], "sleeper") == Some(4)),
        "after failover: {}",
        nodes[new].docker_ok(["service", "ps", "sleeper"])
    );
    nodes[new].docker_ok(["service", "create", "-d", "--name", "after", "busybox", "sleep", "1000"]);
    assert!(
        wait_until(SOON, || tasks_running(&nodes[new], "after") == Some(1)),
        "new service: {}",
        nodes[new].docker_ok(["service", "ps", "after"])
    );

    // the old leader comes back as a follower; the worker stays connected throughout
    nodes[old].restart();
    let rejoined = wait_until(SOON, || {
        node_table(&nodes[new]).is_some_and(|t| t.get(&ids[old]).is_some_and(|(s, m)| s == "Ready" && m == "Reachable"))
    });
    assert!(rejoined, "after restart:\n{}\nlog:\n{}", table_text(&nodes[new]), nodes[old].log_tail());
    assert_eq!(info(&nodes[old], "ControlAvailable"), "true");
    assert!(wait_until(SOON, || leader(&nodes[old]).is_some_and(|l| l != ids[old])), "node ls on the old leader:\n{}", table_text(&nodes[old]));
    assert!(
        wait_until(SOON, || node_table(&nodes[new]).is_some_and(|t| t.get(&ids[3]).is_some_and(|(s, _)| s == "Ready"))),
        "worker:\n{}",
        table_text(&nodes[new])
    );
    assert!(wait_until(SOON, || tasks_running(&nodes[old], "sleeper") == Some(4)), "{}", nodes[old].docker_ok(["service", "ps", "sleeper"]));

    // a manager demoted while it is down learns it from the other managers when it comes back
    nodes[old].kill9();
    assert!(
        wait_until(SOON, || node_table(&nodes[new]).is_some_and(|t| t.get(&ids[old]).is_some_and(|(_, m)| m == "Unreachable"))),
        "{}",
        table_text(&nodes[new])
    );
    nodes[new].docker_ok(["node", "demote", &ids[old]]);
    nodes[old].restart();
    let worker_again = wait_until(Duration::from_secs(150), || {
        info(&nodes[old], "ControlAvailable") == "false"
            && node_table(&nodes[new]).is_some_and(|t| t.get(&ids[old]).is_some_and(|(s, m)| s == "Ready" && m.is_empty()))
    });
    assert!(worker_again, "after a demotion while down:\n{}\nlog:\n{}", table_text(&nodes[new]), nodes[old].log_tail());
    assert_eq!(info(&nodes[new], "Managers"), "2");
}

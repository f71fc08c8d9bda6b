//! Swarm mode on one node, end to end: a real daemon in its own network namespace, driven by the
//! stock docker CLI (`swarm init`, `node`, `service`, `logs`, kill -9 persistence, bad input).

use std::time::Duration;

use shoal_testkit::{running_as_root, ensure_packages, wait_until, Daemon, DaemonOpts, Netns, TestImage};

fn start(prefix: &str) -> Daemon {
    ensure_packages(&["busybox-static", "nginx", "nftables", "iproute2"]);
    let netns = Netns::new(prefix);
    let d = Daemon::start(DaemonOpts::new(env!("CARGO_BIN_EXE_shoal"), &netns));
    d.docker_ok(["load", "-i", TestImage::nginx().docker_archive().to_str().unwrap()]);
    d.docker_ok(["load", "-i", TestImage::busybox().docker_archive().to_str().unwrap()]);
    d
}

/// Running task containers of a service, as `docker ps` names them.
fn task_containers(d: &Daemon, service: &str) -> Vec<String> {
    let mut names: Vec<String> = d
        .docker_ok(["ps", "--filter", &format!("label=com.docker.swarm.service.name={service}"), "--format", "{{.Names}}"])
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

fn running_tasks(d: &Daemon, service: &str) -> usize {
    d.docker_ok(["service", "ps", service, "--filter", "desired-state=running", "--format", "{{.CurrentState}}"])
        .lines()
        .filter(|l| l.starts_with("Running"))
        .count()
}

#[test]
fn single_node_swarm_story() {
    if !running_as_root("swarm tests") {
        return;
    }
    let mut d = start("shoal-swarm");
    d.docker_fails(&["service", "ls"], "This node is not a swarm manager");

    let out = d.docker_ok(["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    assert!(out.contains("Swarm initialized: current node ("), "{out}");
    assert!(out.contains("docker swarm join --token SWMTKN-1-") && out.contains("127.0.0.1:2377"), "{out}");
    d.docker_fails(&["swarm", "init", "--advertise-addr", "127.0.0.1"], "already part of a swarm");

    let nodes = d.docker_ok(["node", "ls", "--format", "{{.Self}} {{.Status}} {{.Availability}} {{.ManagerStatus}}"]);
    assert_eq!(nodes.trim(), "true Ready Active Leader");
    let info = d.docker_ok(["info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.Nodes}} {{.Swarm.Managers}}"]);
    assert_eq!(info.trim(), "active true 1 1");
    assert_eq!(d.docker_ok(["swarm", "join-token", "-q", "worker"]).trim().len(), 9 + 50 + 1 + 25);

    // create converges and returns by itself (the CLI's progress display, with a short verify window)
    let out = d.docker_ok(["service", "create", "--name", "web", "--replicas", "3", "--update-monitor", "1s", "nginx"]);
    assert!(out.contains("verify: Service") && out.contains("converged"), "{out}");
    let containers = task_containers(&d, "web");
    assert_eq!(containers.len(), 3, "{containers:?}");
    for (i, name) in containers.iter().enumerate() {
        assert!(name.starts_with(&format!("web.{}.", i + 1)), "{name}");
    }
    let ls = d.docker_ok(["service", "ls", "--format", "{{.Name}} {{.Mode}} {{.Replicas}}"]);
    assert_eq!(ls.trim(), "web replicated 3/3");

    // A killed container is replaced in its slot; the old task shows Failed.
    let victim = &containers[0];
    let pid = d.docker_ok(["inspect", "-f", "{{.State.Pid}}", victim]).trim().parse::<i32>().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(20), || {
        let names = task_containers(&d, "web");
        names.len() == 3 && !names.contains(victim) && running_tasks(&d, "web") == 3
    }));
    let ps = d.docker_ok(["service", "ps", "--no-trunc", "web"]);
    assert!(ps.contains("Failed") && ps.contains("task: non-zero exit (137)"), "{ps}");

    // scale up and down
    d.docker_ok(["service", "scale", "-d", "web=10"]);
    assert!(wait_until(Duration::from_secs(60), || task_containers(&d, "web").len() == 10 && running_tasks(&d, "web") == 10));
    d.docker_ok(["service", "scale", "-d", "web=2"]);
    assert!(wait_until(Duration::from_secs(60), || task_containers(&d, "web").len() == 2));
    assert_eq!(d.docker_ok(["service", "ls", "--format", "{{.Replicas}}"]).trim(), "2/2");

    // update rolls every task; rollback restores the previous spec
    let before = task_containers(&d, "web");
    let out = d.docker_ok(["service", "update", "--env-add", "FOO=bar", "web"]);
    assert!(out.contains("converged"), "{out}");
    let after = task_containers(&d, "web");
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|n| !before.contains(n)), "every task was replaced: {before:?} -> {after:?}");
    for name in &after {
        assert_eq!(d.docker_ok(["exec", name, "sh", "-c", "echo $FOO"]).trim(), "bar");
    }
    let out = d.docker_ok(["service", "rollback", "web"]);
    assert!(out.contains("converged") || out.contains("rollback"), "{out}");
    assert!(wait_until(Duration::from_secs(30), || d.docker_ok(["service", "inspect", "-f", "{{.UpdateStatus.State}}", "web"]).trim() == "rollback_completed"));
    assert!(wait_until(Duration::from_secs(30), || {
        let names = task_containers(&d, "web");
        names.len() == 2 && names.iter().all(|n| d.docker_ok(["exec", n, "sh", "-c", "echo -n $FOO"]).is_empty())
    }));
    let logs = d.docker(["service", "logs", "--tail", "5", "web"]);
    let text = format!("{}{}", String::from_utf8_lossy(&logs.stdout), String::from_utf8_lossy(&logs.stderr));
    assert!(logs.status.success() && text.contains("web.") && text.contains("@"), "service logs show task names: {text}");
    assert_eq!(d.docker_ok(["node", "ps", "self", "--filter", "desired-state=running", "-q"]).lines().count(), 2);

    // kill -9 the daemon: services, tasks and containers come back, nothing duplicated
    let containers_before = task_containers(&d, "web");
    let tasks_before = d.docker_ok(["service", "ps", "-q", "web"]);
    d.kill9();
    d.restart();
    assert!(wait_until(Duration::from_secs(10), || running_tasks(&d, "web") == 2));
    assert_eq!(task_containers(&d, "web"), containers_before);
    assert_eq!(d.docker_ok(["service", "ps", "-q", "web"]), tasks_before);
    assert_eq!(d.docker_ok(["service", "ls", "--format", "{{.Name}} {{.Replicas}}"]).trim(), "web 2/2");

    // remove: containers go away
    d.docker_ok(["service", "rm", "web"]);
    assert!(wait_until(Duration::from_secs(30), || task_containers(&d, "web").is_empty()));
    d.docker_ok(["swarm", "leave", "--force"]);
    assert_eq!(d.docker_ok(["info", "--format", "{{.Swarm.LocalNodeState}}"]).trim(), "inactive");
}

#[test]
fn swarm_bad_input_gets_docker_errors() {
    if !running_as_root("swarm tests") {
        return;
    }
    let d = start("shoal-swarm-bad");
    d.docker_ok(["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    d.docker_ok(["service", "create", "-d", "--name", "one", "--publish", "8001:80", "nginx"]);
    d.docker_fails(&["service", "create", "-d", "--name", "one", "nginx"], "already exists");
    d.docker_fails(&["service", "create", "-d", "--name", "two", "--constraint", "node.role=worker", "nginx"], "constraint expected one operator");
    d.docker_fails(&["service", "create", "-d", "--name", "three", "--constraint", "node.nope==x", "nginx"], "InvalidArgument");
    d.docker_fails(&["service", "create", "-d", "--name", "four", "--publish", "8001:80", "nginx"], "is already in use by service 'one'");
    d.docker_fails(&["service", "create", "-d", "--name", "five", "--restart-delay", "-5s", "nginx"], "cannot be negative");
    d.docker_fails(&["service", "create", "-d", "--name", "six", "127.0.0.1:1/no/such:image"], "not found");
    d.docker_fails(&["service", "create", "-d", "--name", "bad name!", "nginx"], "InvalidArgument");
    d.docker_fails(&["service", "update", "-d", "--image", "127.0.0.1:1/no/such:image", "one"], "not found");
    d.docker_fails(&["service", "rollback", "-d", "one"], "does not have a previous spec");
    d.docker_fails(&["service", "inspect", "nope"], "no such service: nope");
    d.docker_fails(&["node", "rm", "self"], "must be demoted");
    d.docker_fails(&["node", "demote", "self"], "last manager");
    // A stale version is refused, and nothing was written by any of the above.
    let r = d.request("POST", "/v1.50/services/one/update?version=1", Some(r#"{"Name":"one","TaskTemplate":{"ContainerSpec":{"Image":"nginx"}}}"#)).unwrap();
    assert_eq!(r.status, 500);
    assert!(r.text().contains("update out of sequence"), "{}", r.text());
    assert_eq!(d.docker_ok(["service", "ls", "-q"]).lines().count(), 1);
    let r = d.request("GET", "/v1.50/tasks?filters=%7B%22desired-state%22%3A%5B%22bogus%22%5D%7D", None).unwrap();
    assert_eq!(r.status, 400);
    assert!(d.ping());
    d.docker_ok(["swarm", "leave", "--force"]);
}

/// A service's healthcheck gates RUNNING (moby's container controller): a task whose probe never
/// passes stays STARTING, its container is stopped and the task FAILS with moby's
/// `ErrContainerUnhealthy` cause; a task whose probe passes becomes RUNNING and converges.
#[test]
fn swarm_healthchecks_gate_running() {
    if !running_as_root("swarm tests") {
        return;
    }
    let d = start("shoal-swarm-health");
    d.docker_ok(["swarm", "init", "--advertise-addr", "127.0.0.1"]);

    d.docker_ok([
        "service", "create", "-d", "--name", "sick", "--health-cmd", "false", "--health-interval", "300ms", "--health-retries", "1",
        "--stop-grace-period", "1s", "busybox", "sleep", "1000",
    ]);
    // Every (state, error) seen while polling, e.g. ("Starting", "") or ("Failed", "\"task: …\"").
    let mut seen = std::collections::BTreeSet::new();
    let failed = wait_until(Duration::from_secs(20), || {
        let lines = d.docker_ok(["service", "ps", "--no-trunc", "sick", "--format", "{{.CurrentState}}|{{.Error}}"]);
        for l in lines.lines() {
            let (state, err) = l.split_once('|').unwrap_or((l, ""));
            seen.insert((state.split(' ').next().unwrap_or_default().to_string(), err.trim_matches('"').to_string()));
        }
        seen.contains(&("Failed".to_string(), "task: non-zero exit (137): dockerexec: unhealthy container".to_string()))
    });
    assert!(failed, "no task failed as unhealthy: {seen:?}");
    assert!(seen.iter().any(|(s, _)| s == "Starting"), "tasks wait in STARTING: {seen:?}");
    assert!(!seen.iter().any(|(s, _)| s == "Running"), "an unhealthy task was reported RUNNING: {seen:?}");
    assert!(seen.iter().all(|(s, e)| s != "Failed" || e.ends_with(": dockerexec: unhealthy container")), "{seen:?}");
    assert_eq!(running_tasks(&d, "sick"), 0);
    d.docker_ok(["service", "rm", "sick"]);

    let out = d.docker_ok([
        "service", "create", "--name", "fine", "--health-cmd", "true", "--health-interval", "300ms", "--update-monitor", "1s", "busybox", "sleep",
        "1000",
    ]);
    assert!(out.contains("converged"), "{out}");
    assert_eq!(running_tasks(&d, "fine"), 1);
    let names = task_containers(&d, "fine");
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(d.docker_ok(["inspect", "-f", "{{.State.Health.Status}}", &names[0]]).trim(), "healthy");
    d.docker_ok(["service", "rm", "fine"]);
    assert!(wait_until(Duration::from_secs(20), || task_containers(&d, "fine").is_empty() && task_containers(&d, "sick").is_empty()));
    d.docker_ok(["swarm", "leave", "--force"]);
}

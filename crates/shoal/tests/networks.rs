//! Networks in the Docker API, end to end with the stock docker CLI: the local `bridge`, `host`
//! and `none` networks every daemon has, the `ingress` network `swarm init` creates, and overlay
//! networks created, inspected, attached to services and removed on a manager; refusals (local
//! custom networks, duplicates, overlapping subnets, networks in use, non-managers).

use std::time::Duration;

use shoal_testkit::{running_as_root, ensure_packages, wait_until, Daemon, DaemonOpts, Lab, Netns, TestImage};

/// Runs `docker args`, expects failure with exit code 1 and `needle` on stderr.
fn fails_with(d: &Daemon, args: &[&str], needle: &str) {
    let out = d.docker(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "`docker {}` should fail with exit code 1: {stderr}", args.join(" "));
    assert!(stderr.contains(needle), "`docker {}`: expected {needle:?} in: {stderr}", args.join(" "));
}

/// `docker network ls` as `NAME DRIVER SCOPE` lines (the CLI sorts by name).
fn ls(d: &Daemon, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}"];
    args.extend_from_slice(extra);
    d.docker_ok(args).lines().map(str::to_string).collect()
}

fn names(d: &Daemon, filter: &str) -> Vec<String> {
    d.docker_ok(["network", "ls", "--filter", filter, "--format", "{{.Name}}"]).lines().map(str::to_string).collect()
}

fn inspect(d: &Daemon, network: &str, format: &str) -> String {
    d.docker_ok(["network", "inspect", network, "--format", format]).trim().to_string()
}

const POOL: &str = "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}";

const LOCAL: [&str; 3] = ["bridge bridge local", "host host local", "none null local"];

#[test]
fn local_and_swarm_networks_through_the_cli() {
    if !running_as_root("network tests") {
        return;
    }
    ensure_packages(&["busybox-static", "nftables", "iproute2"]);
    let netns = Netns::new("shoal-nets");
    let mut d = Daemon::start(DaemonOpts::new(env!("CARGO_BIN_EXE_shoal"), &netns));
    d.docker_ok(["load", "-i", TestImage::busybox().docker_archive().to_str().unwrap()]);

    // ---- before swarm init: the three local networks ----
    assert_eq!(ls(&d, &[]), LOCAL);
    let bridge_id = inspect(&d, "bridge", "{{.Id}}");
    assert_eq!(bridge_id.len(), 64, "{bridge_id}");
    assert_eq!(inspect(&d, "bridge", "{{.Scope}} {{.Driver}} {{.Ingress}}"), "local bridge false");
    let pool = inspect(&d, "bridge", POOL);
    assert!(pool.contains('/') && pool.split(' ').count() == 2, "bridge IPAM: {pool}");
    assert_eq!(inspect(&d, "none", "{{.Driver}}"), "null");
    assert_eq!(inspect(&d, &bridge_id[..12], "{{.Name}}"), "bridge", "lookup by ID prefix");
    fails_with(&d, &["network", "inspect", "nope"], "network nope not found");

    // a running container shows up in the bridge network with its address
    d.docker_ok(["run", "-d", "--name", "c1", "busybox", "sleep", "300"]);
    let ip = d.docker_ok(["inspect", "c1", "--format", "{{.NetworkSettings.IPAddress}}"]).trim().to_string();
    let attached = inspect(&d, "bridge", "{{range .Containers}}{{.Name}} {{.IPv4Address}}{{end}}");
    assert!(attached.starts_with(&format!("c1 {ip}/")), "bridge containers: {attached}");

    // refusals on a node outside any swarm
    fails_with(&d, &["network", "create", "-d", "overlay", "ov"], "This node is not a swarm manager. Use \"docker swarm init\"");
    let r = d.request("POST", "/v1.50/networks/create", Some(r#"{"Name":"ov","Driver":"overlay"}"#)).unwrap();
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    fails_with(&d, &["network", "create", "mybridge"], "shoal supports only the default bridge network locally");
    fails_with(&d, &["network", "rm", "bridge"], "bridge is a pre-defined network and cannot be removed");
    fails_with(&d, &["network", "connect", "bridge", "c1"], "does not support docker network connect");
    assert!(d.docker_ok(["network", "prune", "-f"]).trim().is_empty());

    // local IDs are stable across a restart
    d.restart();
    assert_eq!(inspect(&d, "bridge", "{{.Id}}"), bridge_id);

    // ---- swarm init creates the ingress network ----
    d.docker_ok(["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    assert_eq!(ls(&d, &[]), ["bridge bridge local", "host host local", "ingress overlay swarm", "none null local"]);
    assert_eq!(inspect(&d, "ingress", "{{.Scope}} {{.Driver}} {{.Ingress}} {{.Attachable}}"), "swarm overlay true false");
    assert_eq!(inspect(&d, "ingress", POOL), "10.0.0.0/24 10.0.0.1");
    assert_eq!(inspect(&d, "ingress", "{{index .Options \"com.docker.network.driver.overlay.vxlanid_list\"}}"), "4096");
    let ingress_id = inspect(&d, "ingress", "{{.Id}}");
    assert_eq!(ingress_id.len(), 25, "{ingress_id}");
    assert!(d.docker_ok(["info", "--format", "{{.Plugins.Network}}"]).contains("overlay"));

    // ---- overlay networks: create, list, inspect ----
    let backend_id = d.docker_ok(["network", "create", "-d", "overlay", "backend"]).trim().to_string();
    assert_eq!(backend_id.len(), 25, "{backend_id}");
    assert_eq!(inspect(&d, "backend", "{{.Id}} {{.Scope}} {{.Driver}} {{.Attachable}} {{.Ingress}}"), format!("{backend_id} swarm overlay false false"));
    assert_eq!(inspect(&d, "backend", POOL), "10.0.1.0/24 10.0.1.1");
    d.docker_ok([
        "network", "create", "-d", "overlay", "--subnet", "10.20.0.0/24", "--gateway", "10.20.0.254", "--attachable", "--internal", "--label",
        "team=a", "db",
    ]);
    assert_eq!(inspect(&d, "db", POOL), "10.20.0.0/24 10.20.0.254");
    assert_eq!(inspect(&d, "db", "{{.Attachable}} {{.Internal}} {{.Labels.team}}"), "true true a");
    assert_eq!(
        ls(&d, &[]),
        ["backend overlay swarm", "bridge bridge local", "db overlay swarm", "host host local", "ingress overlay swarm", "none null local"]
    );
    assert_eq!(names(&d, "driver=overlay"), ["backend", "db", "ingress"]);
    assert_eq!(names(&d, "scope=local"), ["bridge", "host", "none"]);
    assert_eq!(names(&d, "type=custom"), ["backend", "db", "ingress"]);
    assert_eq!(names(&d, "label=team=a"), ["db"]);
    assert_eq!(names(&d, "name=ack"), ["backend"]);
    assert_eq!(names(&d, &format!("id={}", &backend_id[..6])), ["backend"]);
    fails_with(&d, &["network", "ls", "--filter", "colour=red"], "invalid filter 'colour'");

    // refusals: duplicate names, predefined names, overlapping subnets, other drivers
    fails_with(&d, &["network", "create", "-d", "overlay", "backend"], "network with name backend already exists");
    let r = d.request("POST", "/v1.50/networks/create", Some(r#"{"Name":"backend","Driver":"overlay"}"#)).unwrap();
    assert_eq!(r.status, 409);
    fails_with(&d, &["network", "create", "-d", "overlay", "bridge"], "operation is not permitted on predefined bridge network");
    fails_with(&d, &["network", "create", "-d", "overlay", "--subnet", "10.20.0.128/25", "clash"], "overlaps with network db (10.20.0.0/24)");
    // (the CLI checks this one itself; the daemon too)
    let body = r#"{"Name":"gw","Driver":"overlay","IPAM":{"Config":[{"Subnet":"10.30.0.0/24","Gateway":"10.31.0.1"}]}}"#;
    let r = d.request("POST", "/v1.50/networks/create", Some(body)).unwrap();
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("subnet 10.30.0.0/24 does not contain gateway 10.31.0.1"), "{}", String::from_utf8_lossy(&r.body));
    fails_with(&d, &["network", "create", "-d", "bridge", "localnet"], "shoal supports only the default bridge network locally");
    fails_with(&d, &["network", "create", "-d", "overlay", "--opt", "encrypted", "secret"], "encrypted overlay networks");
    fails_with(&d, &["network", "create", "-d", "overlay", "--ingress", "ingress2"], "ingress network (");
    assert!(!ls(&d, &[]).iter().any(|l| l.starts_with("clash") || l.starts_with("gw ") || l.starts_with("ingress2")));

    // ---- services attach by name; the ID is stored ----
    d.docker_ok(["service", "create", "-d", "--name", "svc", "--network", "backend", "busybox", "sleep", "3600"]);
    let targets = d.docker_ok(["service", "inspect", "svc", "--format", "{{range .Spec.TaskTemplate.Networks}}{{.Target}} {{end}}"]);
    assert_eq!(targets.trim(), backend_id);
    d.docker_ok(["service", "update", "-d", "--network-add", "db", "svc"]);
    let targets = d.docker_ok(["service", "inspect", "svc", "--format", "{{range .Spec.TaskTemplate.Networks}}{{.Target}} {{end}}"]);
    let db_id = inspect(&d, "db", "{{.Id}}");
    // (the CLI sorts the attachments by target ID)
    let mut got: Vec<&str> = targets.split_whitespace().collect();
    got.sort_unstable();
    let mut want = [backend_id.as_str(), db_id.as_str()];
    want.sort_unstable();
    assert_eq!(got, want);
    let svc_id = d.docker_ok(["service", "inspect", "svc", "--format", "{{.ID}}"]).trim().to_string();
    fails_with(&d, &["network", "rm", "backend"], &format!("network {backend_id} is in use by service {svc_id}"));
    fails_with(&d, &["service", "create", "-d", "--name", "bad", "--network", "nope", "busybox"], "network nope not found");
    fails_with(&d, &["service", "create", "-d", "--name", "bad", "--network", "ingress", "busybox"], "Service cannot be explicitly attached to the ingress network \"ingress\"");
    // an ID sent directly (not through the CLI's lookup) is checked as well
    let body = r#"{"Name":"raw","TaskTemplate":{"ContainerSpec":{"Image":"busybox"},"Networks":[{"Target":"nope"}]}}"#;
    let r = d.request("POST", "/v1.50/services/create", Some(body)).unwrap();
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));

    // ingress is held by services publishing ports through the routing mesh
    d.docker_ok(["service", "create", "-d", "--name", "pub", "-p", "8080:80", "busybox", "sleep", "3600"]);
    let r = d.request("DELETE", "/v1.50/networks/ingress", None).unwrap();
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("ingress network cannot be removed because service"), "{}", String::from_utf8_lossy(&r.body));
    d.docker_ok(["service", "rm", "pub"]);

    // ---- removal once unused ----
    d.docker_ok(["service", "rm", "svc"]);
    // (its tasks hold the network until the orchestrator has shut them down)
    let removed = wait_until(Duration::from_secs(30), || d.docker(["network", "rm", "backend"]).status.success());
    assert!(removed, "network rm backend after service rm: {:?}", d.docker(["network", "rm", "backend"]));
    assert_eq!(d.docker_ok(["network", "rm", &db_id[..10]]).trim(), &db_id[..10]);
    fails_with(&d, &["network", "rm", "backend"], "network backend not found");
    assert!(d.docker(["network", "rm", "-f", "backend"]).status.success());

    // the ingress network can be removed when unused, and recreated
    let r = d.request("DELETE", &format!("/v1.50/networks/{ingress_id}"), None).unwrap();
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(ls(&d, &[]), LOCAL);
    d.docker_ok(["network", "create", "-d", "overlay", "--ingress", "--subnet", "10.11.0.0/24", "mesh"]);
    assert_eq!(inspect(&d, "mesh", "{{.Ingress}}"), "true");
    assert!(d.docker_ok(["network", "prune", "-f"]).trim().is_empty());
    assert!(ls(&d, &[]).contains(&"mesh overlay swarm".to_string()), "swarm networks are never pruned");

    // leaving the swarm leaves the local networks
    d.docker_ok(["swarm", "leave", "--force"]);
    assert_eq!(ls(&d, &[]), LOCAL);
    d.docker_ok(["rm", "-f", "c1"]);
}

#[test]
fn workers_see_local_networks_and_cannot_create_overlays() {
    if !running_as_root("network tests") {
        return;
    }
    ensure_packages(&["busybox-static", "nftables", "iproute2"]);
    let lab = Lab::new("shoal-netw", 2);
    let nodes: Vec<Daemon> = (0..2).map(|i| Daemon::start(DaemonOpts::new(env!("CARGO_BIN_EXE_shoal"), lab.node(i)))).collect();
    let manager_addr = format!("{}:2377", lab.addr(0));
    nodes[0].docker_ok(["swarm", "init", "--advertise-addr", &lab.addr(0).to_string()]);
    let token = nodes[0].docker_ok(["swarm", "join-token", "-q", "worker"]).trim().to_string();
    nodes[1].docker_ok(["swarm", "join", "--token", &token, &manager_addr]);
    assert!(wait_until(Duration::from_secs(15), || nodes[0].docker_ok(["node", "ls", "-q"]).lines().count() == 2));
    nodes[0].docker_ok(["network", "create", "-d", "overlay", "backend"]);

    // the worker has no store: it lists its local networks and, from its network map, the swarm
    // networks it takes part in — ingress, not `backend` (none of its tasks uses it), as Docker's
    // workers do
    let mut expected: Vec<String> = LOCAL.iter().map(|s| s.to_string()).collect();
    expected.push("ingress overlay swarm".into());
    expected.sort();
    let mut seen = Vec::new();
    let listed = wait_until(Duration::from_secs(15), || {
        seen = ls(&nodes[1], &[]);
        seen.sort();
        seen == expected
    });
    assert!(listed, "worker network ls: {seen:?}");
    fails_with(&nodes[1], &["network", "create", "-d", "overlay", "ov"], "This node is not a swarm manager.");
    fails_with(&nodes[1], &["network", "inspect", "backend"], "network backend not found");
    fails_with(&nodes[1], &["network", "rm", "backend"], "network backend not found");
    assert!(ls(&nodes[0], &[]).contains(&"backend overlay swarm".to_string()));
}

//! End-to-end tests of the container engine: a real `shoal daemon` in its own network namespace,
//! driven by the stock `docker` CLI, with images built from Debian packages by the testkit.
//! Run as root (CI does); without root they are skipped with a message.

use std::time::Duration;

use shoal_testkit::{running_as_root, ensure_packages, http_get, wait_until, Compression, Daemon, DaemonOpts, Netns, Registry, TestImage};

fn start_daemon(prefix: &str) -> Daemon {
    ensure_packages(&["busybox-static", "nginx", "nftables", "iproute2", "tini"]);
    let netns = Netns::new(prefix);
    Daemon::start(DaemonOpts::new(env!("CARGO_BIN_EXE_shoal"), &netns))
}

fn load(d: &Daemon, archive: &std::path::Path) -> String {
    d.docker_ok(["load", "-i", archive.to_str().unwrap()])
}

fn get(netns: &Netns, url: &str) -> Option<String> {
    http_get(netns, url).ok()
}

fn wait_http(netns: &Netns, url: &str, needle: &str) -> String {
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(15), || {
        last = get(netns, url).unwrap_or_default();
        last.contains(needle)
    });
    assert!(ok, "{url} never answered with {needle:?}; last answer: {last:?}");
    last
}

/// The issue's story: load → run -d -p nginx → HTTP → cp → exec → logs → stop/start → kill -9 the
/// daemon → still serving and controllable → rm -f.
#[test]
fn nginx_story_with_live_restore() {
    if !running_as_root("engine tests") {
        return;
    }
    let mut d = start_daemon("shoal-story");
    let out = load(&d, &TestImage::nginx().docker_archive());
    assert!(out.contains("Loaded image: nginx:latest"), "{out}");
    let out = load(&d, &TestImage::busybox().oci_archive(Compression::Gzip));
    assert!(out.contains("busybox"), "{out}");
    let images = d.docker_ok(["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.contains("nginx:latest") && images.contains("busybox:latest"), "{images}");

    let id = d.docker_ok(["run", "-d", "--name", "web", "-p", "8080:80", "nginx"]).trim().to_string();
    assert_eq!(id.len(), 64, "run -d prints the full id: {id}");
    let netns = d.netns().clone();
    wait_http(&netns, "http://127.0.0.1:8080/", "Welcome to nginx");
    wait_http(&netns, "http://172.17.0.1:8080/", "Welcome to nginx");

    let ps = d.docker_ok(["ps", "--format", "{{.Names}} {{.Status}} {{.Ports}}"]);
    assert!(ps.contains("web Up") && ps.contains("0.0.0.0:8080->80/tcp"), "{ps}");

    let page = d.dir().join("index.html");
    std::fs::write(&page, "<h1>hello from shoal</h1>\n").unwrap();
    d.docker_ok(["cp", page.to_str().unwrap(), "web:/usr/share/nginx/html/index.html"]);
    wait_http(&netns, "http://127.0.0.1:8080/", "hello from shoal");

    let copied_back = d.dir().join("back.html");
    d.docker_ok(["cp", "web:/usr/share/nginx/html/index.html", copied_back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&copied_back).unwrap(), "<h1>hello from shoal</h1>\n");

    assert_eq!(d.docker_ok(["exec", "web", "cat", "/usr/share/nginx/html/index.html"]), "<h1>hello from shoal</h1>\n");
    let out = d.docker(["exec", "web", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let logs = d.docker_ok(["logs", "web"]);
    assert!(logs.contains("GET / HTTP"), "nginx access log should be in docker logs: {logs}");
    let tail = d.docker_ok(["logs", "--tail", "1", "-t", "web"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(tail.starts_with("20"), "timestamps: {tail}");

    d.docker_ok(["stop", "web"]);
    assert!(get(&netns, "http://127.0.0.1:8080/").is_none(), "stopped container still serving");
    let state = d.docker_ok(["inspect", "-f", "{{.State.Status}}", "web"]);
    assert_eq!(state.trim(), "exited");
    d.docker_ok(["start", "web"]);
    wait_http(&netns, "http://127.0.0.1:8080/", "hello from shoal");
    let pid_before = d.docker_ok(["inspect", "-f", "{{.State.Pid}}", "web"]);
    d.docker_ok(["restart", "-t", "2", "web"]);
    assert_ne!(d.docker_ok(["inspect", "-f", "{{.State.Pid}}", "web"]), pid_before, "restart runs a new process");
    wait_http(&netns, "http://127.0.0.1:8080/", "hello from shoal");
    let short = &id[..12];
    assert_eq!(d.docker_ok(["ps", "-q", "--filter", &format!("id={short}")]).trim(), short);

    // kill -9 the daemon: the container keeps serving, and a new daemon re-adopts it.
    d.kill9();
    assert!(get(&netns, "http://127.0.0.1:8080/").is_some_and(|b| b.contains("hello from shoal")));
    d.restart();
    let ps = d.docker_ok(["ps", "--format", "{{.Names}} {{.State}}"]);
    assert!(ps.contains("web running"), "{ps}");
    assert_eq!(d.docker_ok(["exec", "web", "cat", "/etc/hostname"]).trim(), &id[..12]);
    wait_http(&netns, "http://127.0.0.1:8080/", "hello from shoal");
    assert!(d.docker_ok(["logs", "web"]).contains("GET / HTTP"));
    d.docker_ok(["cp", page.to_str().unwrap(), "web:/tmp/"]);
    d.docker_ok(["stop", "-t", "5", "web"]);
    assert!(get(&netns, "http://127.0.0.1:8080/").is_none());
    d.docker_ok(["rm", "-f", "web"]);
    assert!(d.docker_ok(["ps", "-aq"]).trim().is_empty());
}

#[test]
fn run_rm_prints_and_cleans_up() {
    if !running_as_root("engine tests") {
        return;
    }
    let d = start_daemon("shoal-runrm");
    load(&d, &TestImage::busybox().docker_archive());
    assert_eq!(d.docker_ok(["run", "--rm", "busybox", "echo", "hi"]), "hi\n");
    let out = d.docker(["run", "--rm", "busybox", "sh", "-c", "echo to-err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-err\n");
    assert!(wait_until(Duration::from_secs(5), || d.docker_ok(["ps", "-aq"]).trim().is_empty()));
    // Options: env, workdir, user, entrypoint, hostname, labels, tmpfs, bind mounts, init.
    let host_dir = d.dir().join("bind");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("f"), "from-host").unwrap();
    let bind = format!("{}:/data:ro", host_dir.display());
    let out = d.docker_ok([
        "run", "--rm", "-e", "A=1", "-w", "/work", "-u", "1000:1000", "--hostname", "box", "-v", &bind, "--tmpfs", "/scratch",
        "busybox", "sh", "-c", "echo $A $(pwd) $(id -u):$(id -g) $(hostname) $(cat /data/f); touch /data/x 2>/dev/null || echo ro; touch /scratch/y && echo tmpfs-ok",
    ]);
    assert_eq!(out, "1 /work 1000:1000 box from-host\nro\ntmpfs-ok\n");
    assert_eq!(d.docker_ok(["run", "--rm", "--entrypoint", "echo", "busybox", "via-entrypoint"]), "via-entrypoint\n");
    assert_eq!(d.docker_ok(["run", "--rm", "--init", "busybox", "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"]).trim_end(), "/sbin/docker-init -- sh -c cat /proc/1/cmdline | tr '\\0' ' '");
    d.docker_ok(["run", "-d", "--name", "lab", "-l", "team=a", "busybox", "sleep", "1000"]);
    assert_eq!(d.docker_ok(["ps", "-q", "--filter", "label=team=a"]).lines().count(), 1);
    assert_eq!(d.docker_ok(["ps", "-q", "--filter", "label=team=b"]).lines().count(), 0);
    assert_eq!(d.docker_ok(["ps", "--filter", "name=lab", "--format", "{{.Names}}"]).trim(), "lab");
    let top = d.docker_ok(["top", "lab"]);
    assert!(top.contains("sleep 1000"), "{top}");
    let stats = d.docker_ok(["stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", "lab"]);
    assert_eq!(stats.trim(), "lab 1");
    d.docker_ok(["rename", "lab", "lab2"]);
    d.docker_ok(["kill", "lab2"]);
    let code = d.docker_ok(["wait", "lab2"]);
    assert_eq!(code.trim(), "137");
    assert_eq!(d.docker_ok(["ps", "-a", "--filter", "status=exited", "--format", "{{.Names}}"]).trim(), "lab2");
    d.docker_ok(["rm", "lab2"]);
    // The event stream saw the whole life of `lab`, in order.
    let until = format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1);
    let events = d.docker_ok(["events", "--since", "0", "--until", &until, "--filter", "type=container", "--filter", "event=create", "--filter", "event=start", "--filter", "event=die", "--filter", "event=destroy", "--format", "{{.Action}} {{.Actor.Attributes.name}}"]);
    let lab: Vec<&str> = events.lines().filter(|l| l.ends_with(" lab") || l.ends_with(" lab2")).collect();
    assert_eq!(lab, vec!["create lab", "start lab", "die lab2", "destroy lab2"], "{events}");
    // With its last container gone the daemon leaves no cgroup of its own behind.
    assert!(d.docker_ok(["ps", "-aq"]).trim().is_empty());
    let cg = d.cgroup_name();
    for hierarchy in ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup"] {
        let dir = format!("{hierarchy}/{cg}");
        assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
    }
}

#[test]
fn daemon_refuses_an_exec_root_too_long_for_socket_paths() {
    if !running_as_root("engine tests") {
        return;
    }
    let long = format!("/tmp/shoal-long-exec-root-{}-{}", std::process::id(), "x".repeat(48));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["daemon", "-H", "unix:///tmp/shoal-never.sock", "--data-root", &format!("{long}-data"), "--exec-root", &long])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&long);
    let _ = std::fs::remove_dir_all(format!("{long}-data"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is too long"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn daemon_refuses_to_run_without_root() {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_shoal"), "daemon", "--data-root", "/tmp/shoal-nonroot-never-created"])
        .output()
        .expect("setpriv (util-linux) is installed");
    if !nix::unistd::geteuid().is_root() {
        // Without root setpriv itself cannot switch users; the plain run shows the same message.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal")).arg("daemon").output().unwrap();
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs root"));
        return;
    }
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the daemon needs root privileges"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!std::path::Path::new("/tmp/shoal-nonroot-never-created").exists());
}

#[test]
fn limits_are_enforced_by_cgroups() {
    if !running_as_root("engine tests") {
        return;
    }
    let d = start_daemon("shoal-limits");
    load(&d, &TestImage::busybox().docker_archive());
    let id = d.docker_ok(["run", "-d", "-m", "64m", "--pids-limit", "20", "--cpus", "0.5", "busybox", "sleep", "1000"]).trim().to_string();
    let cg = d.cgroup_name();
    let read = |ctrl: &str, file: &str| -> String {
        let ctrls: &[&str] = if ctrl == "cpu" { &["cpu", "cpu,cpuacct"] } else { &[ctrl] };
        let mut bases: Vec<String> = ctrls.iter().map(|c| format!("/sys/fs/cgroup/{c}/{cg}/{id}")).collect();
        bases.push(format!("/sys/fs/cgroup/{cg}/{id}"));
        for base in bases {
            if let Ok(v) = std::fs::read_to_string(format!("{base}/{file}")) {
                return v.trim().to_string();
            }
        }
        String::new()
    };
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        assert_eq!(read("", "memory.max"), "67108864");
        assert_eq!(read("", "pids.max"), "20");
        assert_eq!(read("", "cpu.max"), "50000 100000");
    } else {
        assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(read("pids", "pids.max"), "20");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    }
    // A graceful daemon restart (SIGTERM) leaves the container, and its limits, in place.
    let mut d = d;
    d.restart();
    assert_eq!(d.docker_ok(["inspect", "-f", "{{.State.Status}}", &id]).trim(), "running");
    assert_eq!(read("pids", "pids.max"), "20");
    assert_eq!(d.docker_ok(["exec", &id, "echo", "still-here"]), "still-here\n");
    // The pids limit bites: forking past it fails inside the container.
    let out = d.docker(["exec", &id, "sh", "-c", "for i in $(seq 1 40); do sleep 30 </dev/null >/dev/null 2>&1 & done; echo spawned"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("can't fork") || !out.status.success(), "pids limit not enforced");
    d.docker_ok(["rm", "-f", &id]);
}

#[test]
fn restart_policies_apply_live_and_after_daemon_death() {
    if !running_as_root("engine tests") {
        return;
    }
    let mut d = start_daemon("shoal-restart");
    load(&d, &TestImage::busybox().docker_archive());
    d.docker_ok(["run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c", "exit 1"]);
    assert!(wait_until(Duration::from_secs(15), || {
        d.docker_ok(["inspect", "-f", "{{.RestartCount}} {{.State.Status}}", "flaky"]).trim() == "2 exited"
    }));
    d.docker_ok(["run", "-d", "--name", "always", "--restart", "always", "busybox", "sleep", "1000"]);
    let pid = d.docker_ok(["inspect", "-f", "{{.State.Pid}}", "always"]).trim().parse::<i32>().unwrap();
    // The container dies while the daemon is down; the new daemon restarts it.
    d.kill9();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !std::path::Path::new(&format!("/proc/{pid}")).exists()));
    d.restart();
    assert!(wait_until(Duration::from_secs(15), || {
        d.docker_ok(["inspect", "-f", "{{.State.Status}} {{.RestartCount}}", "always"]).trim() == "running 1"
    }));
    d.docker_ok(["rm", "-f", "always", "flaky"]);
}

#[test]
fn image_formats_tags_history_and_import() {
    if !running_as_root("engine tests") {
        return;
    }
    let d = start_daemon("shoal-images");
    for c in [Compression::Zstd, Compression::None] {
        let out = load(&d, &TestImage::whoami().oci_archive(c));
        assert!(out.contains("whoami"), "{out}");
    }
    load(&d, &TestImage::busybox().docker_archive());
    d.docker_ok(["tag", "busybox", "example.local/team/bb:v1"]);
    let tags = d.docker_ok(["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(tags.contains("example.local/team/bb:v1"), "{tags}");
    let inspect: serde_json::Value = serde_json::from_str(&d.docker_ok(["image", "inspect", "busybox"])).unwrap();
    assert_eq!(inspect[0]["Id"].as_str().unwrap(), TestImage::busybox().id());
    assert!(!d.docker_ok(["history", "busybox"]).is_empty());
    d.docker_ok(["rmi", "example.local/team/bb:v1"]);
    let imported = d.docker_ok(["import", TestImage::busybox().rootfs_tar().to_str().unwrap(), "imported:1"]);
    assert!(imported.trim().starts_with("sha256:"), "{imported}");
    assert_eq!(d.docker_ok(["run", "--rm", "imported:1", "/bin/echo", "imported-ok"]), "imported-ok\n");
    d.docker_ok(["rmi", "imported:1"]);
    // whoami answers with its hostname and IP.
    d.docker_ok(["run", "-d", "--name", "who", "-P", "--hostname", "who1", "whoami"]);
    let port = d.docker_ok(["port", "who", "80/tcp"]);
    let port = port.lines().next().unwrap().rsplit(':').next().unwrap().trim().to_string();
    let body = wait_http(d.netns(), &format!("http://127.0.0.1:{port}/"), "Hostname: who1");
    assert!(body.contains("IP: 172.17."), "{body}");
    d.docker_ok(["rm", "-f", "who"]);
}

#[test]
fn pull_from_a_local_registry() {
    if !running_as_root("engine tests") {
        return;
    }
    ensure_packages(&["docker-registry", "skopeo"]);
    let d = start_daemon("shoal-pull");
    let registry = Registry::start(d.netns());
    registry.push_archive(&TestImage::busybox().docker_archive(), "test/busybox:latest");
    let out = d.docker_ok(["pull", "127.0.0.1:5000/test/busybox"]);
    assert!(out.contains("Downloaded newer image") || out.contains("127.0.0.1:5000/test/busybox"), "{out}");
    assert_eq!(d.docker_ok(["run", "--rm", "127.0.0.1:5000/test/busybox", "echo", "pulled"]), "pulled\n");
    d.docker_fails(&["pull", "127.0.0.1:5000/test/nope"], "Error response from daemon");
}

#[test]
fn bad_inputs_get_docker_errors() {
    if !running_as_root("engine tests") {
        return;
    }
    let d = start_daemon("shoal-errors");
    load(&d, &TestImage::busybox().docker_archive());
    d.docker_fails(&["create", "--pull", "never", "nosuchimage"], "No such image: nosuchimage:latest");
    d.docker_fails(&["create", "--name", "a b", "busybox"], "Invalid container name");
    d.docker_fails(&["start", "nosuch"], "No such container: nosuch");
    d.docker_fails(&["run", "-m", "1m", "busybox", "true"], "Minimum memory limit allowed is 6MB");
    d.docker_fails(&["run", "--rm", "--restart", "always", "busybox", "true"], "conflicting options");
    let out = d.docker(["run", "--name", "nocmd", "busybox", "nosuchcmd"]);
    assert_eq!(out.status.code(), Some(127), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("executable file not found"));
    // A failed start of an --rm container removes it, so the CLI's wait for removal returns.
    let out = d.docker(["run", "--rm", "--name", "gone", "busybox", "nosuchcmd"]);
    assert_eq!(out.status.code(), Some(127), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(d.docker(["inspect", "gone"]).status.code() == Some(1), "the --rm container is removed");
    d.docker_ok(["run", "-d", "--name", "busy", "busybox", "sleep", "1000"]);
    d.docker_fails(&["run", "-d", "--name", "busy", "busybox", "true"], "is already in use");
    d.docker_fails(&["rm", "busy"], "container is running");
    d.docker_fails(&["rmi", "busybox"], "conflict");
    d.docker_ok(["stop", "-t", "1", "busy"]);
    d.docker_fails(&["exec", "busy", "true"], "is not running");
    d.docker_fails(&["kill", "busy"], "is not running");
    let garbage = d.dir().join("garbage.tar");
    std::fs::write(&garbage, b"this is not a tar archive at all, not even close............").unwrap();
    d.docker_fails(&["load", "-i", garbage.to_str().unwrap()], "invalid archive");
    d.docker_fails(&["cp", "busy:/nope/nothing", d.dir().to_str().unwrap()], "Could not find the file");
    // The API itself: version bounds, unknown routes, filter errors, all as JSON messages.
    let r = d.request("GET", "/v1.12/info", None).unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("too old"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = d.request("GET", "/v1.99/info", None).unwrap();
    assert_eq!(r.status, 400);
    let r = d.request("GET", "/v1.50/nope", None).unwrap();
    assert_eq!(r.status, 404);
    assert!(r.text().contains("\"message\""));
    let r = d.request("GET", "/containers/json?filters=%7B%22bogus%22%3A%5B%22x%22%5D%7D", None).unwrap();
    assert_eq!(r.status, 400);
    let r = d.request("POST", "/containers/create", Some("{not json")).unwrap();
    assert_eq!(r.status, 400);
    let r = d.request("GET", "/containers/json?filters=%7B%22status%22%3A%7B%22exited%22%3Atrue%7D%7D", None).unwrap();
    assert_eq!(r.status, 200, "map-form filters");
    // The daemon is still healthy after all of that.
    assert!(d.ping());
    d.docker_ok(["rm", "-f", "busy", "nocmd"]);
}

#[test]
fn interactive_exec_and_run_with_a_tty() {
    if !running_as_root("engine tests") {
        return;
    }
    let d = start_daemon("shoal-tty");
    load(&d, &TestImage::busybox().docker_archive());
    d.docker_ok(["run", "-d", "--name", "tt", "busybox", "sleep", "1000"]);
    // stdin through exec -i
    let mut child = std::process::Command::new("docker")
        .args(["-H", &d.host(), "exec", "-i", "tt", "sh", "-c", "read x; echo got:$x"])
        .env("DOCKER_CONFIG", d.dir().join("docker-config"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"ping\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got:ping\n");
    // A tty exec, under `script` so the CLI has a terminal.
    let cmd = format!("docker -H {} exec -it tt sh -c 'tty; exit 5'", d.host());
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("DOCKER_CONFIG", d.dir().join("docker-config"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "tty exec output: {text}");
    assert_eq!(out.status.code(), Some(5), "tty exec output: {text}");
    let cmd = format!("docker -H {} run --rm -t busybox sh -c 'tty'", d.host());
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("DOCKER_CONFIG", d.dir().join("docker-config"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("/dev/pts/"), "run -t: {}", String::from_utf8_lossy(&out.stdout));
    // logs -f follows until the container stops.
    d.docker_ok(["run", "-d", "--name", "ticker", "busybox", "sh", "-c", "for i in 1 2 3; do echo tick$i; sleep 0.3; done"]);
    let follow = d.docker_ok(["logs", "-f", "ticker"]);
    assert_eq!(follow, "tick1\ntick2\ntick3\n");
    d.docker_ok(["rm", "-f", "tt", "ticker"]);
}

#[test]
fn tcp_listener_detached_exec_and_udp_ports() {
    if !running_as_root("engine tests") {
        return;
    }
    ensure_packages(&["busybox-static", "nftables", "iproute2"]);
    let netns = Netns::new("shoal-tcp");
    let d = Daemon::start(DaemonOpts::new(env!("CARGO_BIN_EXE_shoal"), &netns).arg("-H").arg("tcp://127.0.0.1:2375"));
    load(&d, &TestImage::busybox().docker_archive());
    let out = netns
        .command("/usr/local/bin/docker")
        .args(["-H", "tcp://127.0.0.1:2375", "version", "--format", "{{.Server.APIVersion}}"])
        .env("DOCKER_CONFIG", d.dir().join("docker-config"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1.50", "{}", String::from_utf8_lossy(&out.stderr));
    d.docker_ok(["run", "-d", "--name", "udp", "-p", "5353:53/udp", "busybox", "sleep", "1000"]);
    assert_eq!(d.docker_ok(["port", "udp"]).trim(), "53/udp -> 0.0.0.0:5353");
    d.docker_ok(["exec", "-d", "udp", "sh", "-c", "echo detached > /tmp/x"]);
    assert!(wait_until(Duration::from_secs(5), || d.docker(["exec", "udp", "cat", "/tmp/x"]).stdout == b"detached\n"));
    d.docker_ok(["rm", "-f", "udp"]);
}

/// Healthchecks like dockerd: `(health: starting)` → `unhealthy` after `retries` failures →
/// `healthy` once the probe passes; inspect, `ps --filter health=`, events, probe timeouts,
/// `--no-healthcheck`, a restart resets to `starting`, and a re-adopted container keeps probing
/// after the daemon was killed.
#[test]
fn healthchecks_like_docker() {
    if !running_as_root("engine tests") {
        return;
    }
    let mut d = start_daemon("shoal-health");
    load(&d, &TestImage::busybox().docker_archive());
    let status = |d: &Daemon, name: &str| d.docker_ok(["ps", "-a", "--filter", &format!("name={name}"), "--format", "{{.Status}}"]).trim().to_string();
    let health_filter = |d: &Daemon, value: &str| d.docker_ok(["ps", "--filter", &format!("health={value}"), "--format", "{{.Names}}"]);

    let id = d
        .docker_ok(["run", "-d", "--health-cmd", "test -f /tmp/ok", "--health-interval", "500ms", "--health-retries", "2", "--name", "hc", "busybox", "sleep", "1000"])
        .trim()
        .to_string();
    let s = status(&d, "hc");
    assert!(s.starts_with("Up ") && s.ends_with("(health: starting)"), "{s}");
    assert_eq!(d.docker_ok(["inspect", "-f", "{{.State.Health.Status}}", "hc"]).trim(), "starting");
    let cfg = d.docker_ok(["inspect", "-f", "{{json .Config.Healthcheck}}", "hc"]);
    assert_eq!(cfg.trim(), r#"{"Test":["CMD-SHELL","test -f /tmp/ok"],"Interval":500000000,"Retries":2}"#);
    assert!(wait_until(Duration::from_secs(10), || status(&d, "hc").ends_with("(unhealthy)")), "{}", status(&d, "hc"));
    let streak: u32 = d.docker_ok(["inspect", "-f", "{{.State.Health.FailingStreak}}", "hc"]).trim().parse().unwrap();
    assert!(streak >= 2, "{streak}");
    let log = d.docker_ok(["inspect", "-f", "{{range .State.Health.Log}}{{.ExitCode}} {{end}}", "hc"]);
    assert!(log.trim().split(' ').all(|c| c == "1") && log.trim().split(' ').count() >= 2, "{log}");
    assert_eq!(health_filter(&d, "unhealthy").trim(), "hc");
    assert_eq!(health_filter(&d, "healthy").trim(), "");

    d.docker_ok(["exec", "hc", "touch", "/tmp/ok"]);
    assert!(wait_until(Duration::from_secs(10), || status(&d, "hc").ends_with("(healthy)")), "{}", status(&d, "hc"));
    assert_eq!(d.docker_ok(["inspect", "-f", "{{.State.Health.FailingStreak}}", "hc"]).trim(), "0");
    assert_eq!(health_filter(&d, "healthy").trim(), "hc");
    let until = format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1);
    let events = d.docker_ok(["events", "--since", "0", "--until", &until, "--filter", "event=health_status", "--format", "{{.Action}} {{.Actor.ID}}"]);
    assert_eq!(events.lines().collect::<Vec<_>>(), vec![format!("health_status: unhealthy {id}"), format!("health_status: healthy {id}")], "{events}");

    // A probe that outlives its timeout is killed and counts as a failure with Docker's text.
    d.docker_ok(["run", "-d", "--health-cmd", "sleep 30", "--health-timeout", "300ms", "--health-interval", "200ms", "--health-retries", "1", "--name", "slow", "busybox", "sleep", "1000"]);
    assert!(wait_until(Duration::from_secs(10), || status(&d, "slow").ends_with("(unhealthy)")), "{}", status(&d, "slow"));
    let out = d.docker_ok(["inspect", "-f", "{{range .State.Health.Log}}{{.ExitCode}}|{{.Output}}{{end}}", "slow"]);
    assert!(out.starts_with("-1|Health check exceeded timeout (300ms)"), "{out}");
    d.docker_ok(["rm", "-f", "slow"]);

    // --no-healthcheck: no probes, no health, filter `none`.
    d.docker_ok(["run", "-d", "--no-healthcheck", "--name", "plain", "busybox", "sleep", "1000"]);
    assert_eq!(d.docker_ok(["inspect", "-f", "{{json .Config.Healthcheck}} {{json .State.Health}}", "plain"]).trim(), r#"{"Test":["NONE"]} null"#);
    let s = status(&d, "plain");
    assert!(s.starts_with("Up ") && !s.contains('('), "{s}");
    assert_eq!(health_filter(&d, "none").trim(), "plain");
    d.docker_fails(&["ps", "--filter", "health=bogus"], "Unrecognised filter value for health: bogus");
    d.docker_fails(&["run", "-d", "--health-cmd", "true", "--health-interval", "500us", "busybox", "true"], "Interval in Healthcheck cannot be less than 1ms");

    // A restart resets the health to starting; the probe loop runs again.
    d.docker_ok(["exec", "hc", "rm", "/tmp/ok"]);
    assert!(wait_until(Duration::from_secs(10), || status(&d, "hc").ends_with("(unhealthy)")), "{}", status(&d, "hc"));
    d.docker_ok(["kill", "hc"]);
    assert!(wait_until(Duration::from_secs(10), || status(&d, "hc").starts_with("Exited")), "{}", status(&d, "hc"));
    assert_eq!(d.docker_ok(["inspect", "-f", "{{.State.Health.Status}}", "hc"]).trim(), "unhealthy", "kept after the stop, as in Docker");
    d.docker_ok(["start", "hc"]);
    assert_eq!(d.docker_ok(["inspect", "-f", "{{.State.Health.Status}} {{.State.Health.FailingStreak}}", "hc"]).trim(), "starting 0");
    assert!(wait_until(Duration::from_secs(10), || status(&d, "hc").ends_with("(unhealthy)")), "{}", status(&d, "hc"));

    // kill -9 the daemon: the re-adopted container is probed again and its health persisted.
    d.kill9();
    d.restart();
    assert!(status(&d, "hc").contains("(health: starting)") || status(&d, "hc").ends_with("(unhealthy)"), "{}", status(&d, "hc"));
    d.docker_ok(["exec", "hc", "touch", "/tmp/ok"]);
    assert!(wait_until(Duration::from_secs(10), || status(&d, "hc").ends_with("(healthy)")), "{}", status(&d, "hc"));
    d.docker_ok(["rm", "-f", "hc", "plain"]);
}

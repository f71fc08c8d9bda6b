//! End-to-end tests through the real shim (needs root and busybox-static; skipped otherwise).
//! Each test builds a busybox rootfs under /tmp, runs containers in their own new network
//! namespace, and removes everything (containers, cgroups, processes, temp dirs) in Drop guards.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shoal_runtime::*;

const EXE: &str = env!("CARGO_BIN_EXE_shoal-runtime-testshim");
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root");
        return false;
    }
    if !Path::new("/bin/busybox").exists() && !Path::new("/usr/bin/busybox").exists() {
        eprintln!("skipping: needs busybox-static");
        return false;
    }
    true
}

struct Fixture {
    dir: PathBuf,
    rootfs: PathBuf,
    exec_root: PathBuf,
    cg_parent: String,
    ids: Vec<String>,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!(
            "/tmp/shoal-rt-{}-{}-{}",
            tag,
            std::process::id(),
            n
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let rootfs = dir.join("rootfs");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        let bb = if Path::new("/bin/busybox").exists() {
            "/bin/busybox"
        } else {
            "/usr/bin/busybox"
        };
        std::fs::copy(bb, rootfs.join("bin/busybox")).unwrap();
        let list = std::process::Command::new(bb)
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        let exec_root = dir.join("run");
        std::fs::create_dir_all(exec_root.join("runtime")).unwrap();
        Fixture {
            dir,
            rootfs,
            exec_root,
            cg_parent: format!("shoal-test-{}-{}", std::process::id(), n),
            ids: Vec::new(),
        }
    }

    fn runtime_root(&self) -> PathBuf {
        self.exec_root.join("runtime")
    }
    fn shim_dir(&self, id: &str) -> PathBuf {
        self.exec_root.join("shim").join(id)
    }
    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}-json.log"))
    }

    fn input(&self, id: &str, args: &[&str]) -> SpecInput {
        SpecInput {
            rootfs: self.rootfs.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            hostname: id.into(),
            cgroups_path: format!("/{}/{}", self.cg_parent, id),
            ..Default::default()
        }
    }

    fn shim_args(&mut self, id: &str, tty: bool, open_stdin: bool) -> ShimArgs {
        self.ids.push(id.to_string());
        ShimArgs {
            id: id.into(),
            bundle: self.exec_root.join("bundles").join(id),
            runtime_root: self.runtime_root(),
            shim_dir: self.shim_dir(id),
            log_path: self.log_path(id),
            tty,
            open_stdin,
            stdin_once: false,
            start_gated: false,
        }
    }

    fn run(
        &mut self,
        id: &str,
        input: &SpecInput,
        tty: bool,
        open_stdin: bool,
    ) -> Result<ShimStarted, RuntimeError> {
        let args = self.shim_args(id, tty, open_stdin);
        write_bundle(&args.bundle, input).unwrap();
        spawn_shim(Path::new(EXE), &args)
    }

    fn wait_exit(&self, id: &str, timeout: Duration) -> ExitInfo {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = read_exit(&self.shim_dir(id)) {
                // The shim deletes the container right after writing exit.json; let it finish.
                let until = Instant::now() + Duration::from_secs(5);
                while shim_alive(&self.shim_dir(id), id).is_some() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit in time"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn cgroup_file(&self, id: &str, v1_ctrl: &str, v1_file: &str, v2_file: &str) -> String {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let p = if v2 {
            PathBuf::from(format!(
                "/sys/fs/cgroup/{}/{}/{}",
                self.cg_parent, id, v2_file
            ))
        } else {
            PathBuf::from(format!(
                "/sys/fs/cgroup/{}/{}/{}/{}",
                v1_ctrl, self.cg_parent, id, v1_file
            ))
        };
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
            .trim()
            .to_string()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::env::var_os("SHOAL_TEST_KEEP").is_some() {
            return;
        }
        for id in &self.ids {
            let sd = self.shim_dir(id);
            if let Some((shim, init)) = shim_alive(&sd, id) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(init),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let until = Instant::now() + Duration::from_secs(5);
                while shim_alive(&sd, id).is_some() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(shim),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            cleanup_stale(&self.runtime_root(), id);
        }
        // Remove the per-fixture cgroup parents.
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for ent in rd.flatten() {
                let p = ent.path().join(&self.cg_parent);
                if p.exists() {
                    if let Ok(children) = std::fs::read_dir(&p) {
                        for c in children.flatten() {
                            if c.path().is_dir() {
                                let _ = std::fs::remove_dir(c.path());
                            }
                        }
                    }
                    let _ = std::fs::remove_dir(&p);
                }
            }
        }
        let root = Path::new("/sys/fs/cgroup").join(&self.cg_parent);
        let _ = std::fs::remove_dir(root);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    let data = std::fs::read(path).unwrap_or_default();
    data.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// Reads stdcopy frames until `pred` holds on the collected payload or the timeout elapses.
fn read_frames_until(
    s: &mut std::os::unix::net::UnixStream,
    timeout: Duration,
    pred: impl Fn(&[u8]) -> bool,
) -> (Vec<u8>, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut payload = Vec::new();
    let mut streams = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !pred(&payload) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        while raw.len() >= 8 {
            let len = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
            if raw.len() < 8 + len {
                break;
            }
            streams.push(raw[0]);
            payload.extend_from_slice(&raw[8..8 + len]);
            raw.drain(..8 + len);
        }
    }
    (payload, streams)
}

#[test]
fn echo_hi_logs_and_exit_zero() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new("echo");
    let input = f.input("echo1", &["echo", "hi"]);
    let started = f.run("echo1", &input, false, false).expect("start");
    assert!(started.shim_pid > 0 && started.init_pid > 0);
    let exit = f.wait_exit("echo1", Duration::from_secs(20));
    assert_eq!(exit.exit_code, 0);
    assert_eq!(exit.signal, None);
    let lines = log_lines(&f.log_path("echo1"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["log"], "hi\n");
    assert_eq!(lines[0]["stream"], "stdout");
    // The shim deleted the libcontainer state and the cgroup.
    assert!(!f.runtime_root().join("echo1").exists());
    assert!(shim_alive(&f.shim_dir("echo1"), "echo1").is_none());

    // stderr + partial last line + non-zero exit.
    let input = f.input("echo2", &["sh", "-c", "echo oops >&2; printf tail; exit 7"]);
    f.run("echo2", &input, false, false).expect("start");
    let exit = f.wait_exit("echo2", Duration::from_secs(20));
    assert_eq!(exit.exit_code, 7);
    let lines = log_lines(&f.log_path("echo2"));
    assert!(
        lines
            .iter()
            .any(|l| l["log"] == "oops\n" && l["stream"] == "stderr"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["log"] == "tail" && l["stream"] == "stdout"),
        "{lines:?}"
    );
}

#[test]
fn start_true_timing() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new("timing");
    let mut times = Vec::new();
    for i in 0..3 {
        let id = format!("true{i}");
        let input = f.input(&id, &["true"]);
        let t = Instant::now();
        f.run(&id, &input, false, false).expect("start");
        let started = t.elapsed();
        let exit = f.wait_exit(&id, Duration::from_secs(20));
        times.push((started, t.elapsed()));
        assert_eq!(exit.exit_code, 0);
    }
    eprintln!("TIMING start `true` (spawn_shim returned, exit.json+cleanup done): {times:?}");
}

#[test]
fn attach_and_kill() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new("attach");
    let input = f.input(
        "tick",
        &[
            "sh",
            "-c",
            "trap 'exit 143' TERM; while true; do echo tick; sleep 0.1; done",
        ],
    );
    let started = f.run("tick", &input, false, false).expect("start");
    let (shim, init) = shim_alive(&f.shim_dir("tick"), "tick").expect("shim alive");
    assert_eq!((shim, init), (started.shim_pid, started.init_pid));
    let status = std::fs::read_to_string(format!("/proc/{shim}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or("?")
        .to_string();
    eprintln!("SHIM RSS while container runs: {rss}");
    // The shim is not our child and has its own session.
    let stat = std::fs::read_to_string(format!("/proc/{shim}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    assert_ne!(fields[1].parse::<u32>().unwrap(), std::process::id());
    assert_eq!(
        fields[3].parse::<i32>().unwrap(),
        shim,
        "shim is a session leader"
    );

    let mut s = attach(&f.shim_dir("tick"), false, true, true).unwrap();
    let (payload, streams) = read_frames_until(&mut s, Duration::from_secs(10), |p| {
        p.windows(4).filter(|w| w == b"tick").count() >= 2
    });
    assert!(
        payload.starts_with(b"tick\n"),
        "{:?}",
        String::from_utf8_lossy(&payload)
    );
    assert!(streams.iter().all(|s| *s == 1));

    // pidfd on the shim becomes readable when it exits.
    let pidfd = pidfd_open(shim).unwrap();
    control(&f.shim_dir("tick"), &ControlRequest::Kill(15)).unwrap();
    let exit = f.wait_exit("tick", Duration::from_secs(20));
    assert_eq!(exit.exit_code, 143);
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: single valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(n, 1, "shim pidfd readable after exit");
    // Attached client got EOF.
    let (_p, _s) = read_frames_until(&mut s, Duration::from_secs(2), |_| false);
    let mut b = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(s.read(&mut b).unwrap_or(0), 0);
    assert!(control(&f.shim_dir("tick"), &ControlRequest::Kill(9)).is_err());

    // Killed by a signal: 128+9, signal recorded.
    let input = f.input("sleeper", &["sleep", "1000"]);
    f.run("sleeper", &input, false, false).expect("start");
    control(&f.shim_dir("sleeper"), &ControlRequest::Kill(9)).unwrap();
    let exit = f.wait_exit("sleeper", Duration::from_secs(20));
    assert_eq!(exit.exit_code, 137);
    assert_eq!(exit.signal, Some(9));
}

#[test]
fn stdin_and_tty_container() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new("stdin");
    // Non-tty with open stdin + stdin_once: cat echoes until the client closes its write side.
    let input = f.input("cat1", &["cat"]);
    let mut args = f.shim_args("cat1", false, true);
    args.stdin_once = true;
    write_bundle(&args.bundle, &input).unwrap();
    spawn_shim(Path::new(EXE), &args).expect("start");
    let mut s = attach(&f.shim_dir("cat1"), true, true, true).unwrap();
    s.write_all(b"hello stdin\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (payload, _) = read_frames_until(&mut s, Duration::from_secs(10), |p| {
        p.ends_with(b"hello stdin\n")
    });
    assert_eq!(payload, b"hello stdin\n");
    let exit = f.wait_exit("cat1", Duration::from_secs(20));
    assert_eq!(exit.exit_code, 0);

    // Tty container: output through the pty master, resize via control.
    let mut input = f.input("tty1", &["sh", "-c", "sleep 0.5; stty size; echo done"]);
    input.tty = true;
    f.run("tty1", &input, true, false).expect("start tty");
    control(
        &f.shim_dir("tty1"),
        &ControlRequest::Resize(ResizeRequest {
            height: 33,
            width: 77,
        }),
    )
    .unwrap();
    let exit = f.wait_exit("tty1", Duration::from_secs(20));
    assert_eq!(exit.exit_code, 0);
    let lines = log_lines(&f.log_path("tty1"));
    let text: String = lines
        .iter()
        .map(|l| l["log"].as_str().unwrap().to_string())
        .collect();
    assert!(text.contains("33 77"), "{text:?}");
    assert!(text.contains("done\r\n"), "{text:?}");
}

#[test]
fn exec_in_container() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new("exec");
    let input = f.input("ex", &["sleep", "1000"]);
    f.run("ex", &input, false, false).expect("start");

    let pj = f.dir.join("exec1.json");
    write_exec_process(
        &pj,
        &ExecProcessInput {
            args: vec!["sh".into(), "-c".into(), "echo $((1+2)); exit 3".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let args = ExecHelperArgs {
        id: "ex".into(),
        runtime_root: f.runtime_root(),
        process_json: pj,
        tty: false,
    };
    let t = Instant::now();
    let ec = spawn_exec(Path::new(EXE), &args).unwrap();
    let out = ec.child.wait_with_output().unwrap();
    eprintln!("TIMING exec round trip: {:?}", t.elapsed());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "3\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3));

    // Missing executable.
    let pj = f.dir.join("exec2.json");
    write_exec_process(
        &pj,
        &ExecProcessInput {
            args: vec!["nope".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let args = ExecHelperArgs {
        id: "ex".into(),
        runtime_root: f.runtime_root(),
        process_json: pj,
        tty: false,
    };
    let out = spawn_exec(Path::new(EXE), &args)
        .unwrap()
        .child
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OCI runtime exec failed: exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH: unknown"),
        "{err}"
    );

    // Tty exec: the pty master comes back to us.
    let pj = f.dir.join("exec3.json");
    write_exec_process(
        &pj,
        &ExecProcessInput {
            args: vec![
                "sh".into(),
                "-c".into(),
                "sleep 0.3; tty; stty size; exit 5".into(),
            ],
            tty: true,
            ..Default::default()
        },
    )
    .unwrap();
    let args = ExecHelperArgs {
        id: "ex".into(),
        runtime_root: f.runtime_root(),
        process_json: pj,
        tty: true,
    };
    let mut ec = spawn_exec(Path::new(EXE), &args).unwrap();
    let master = ec.pty_master.take().expect("pty master");
    let ws = libc::winsize {
        ws_row: 21,
        ws_col: 99,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize pointer on our pty master.
    assert_eq!(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );
    let mut mf = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match mf.read(&mut buf) {
            Ok(0) | Err(_) => break, // EIO once the slave side is closed
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let status = ec.child.wait().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("21 99"), "{text:?}");
    assert_eq!(status.code(), Some(5));
}

#[test]
fn missing_executable_reported_at_start() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new("missing");
    let input = f.input("miss", &["nosuchcmd"]);
    let err = f.run("miss", &input, false, false).unwrap_err();
    match &err {
        RuntimeError::Exec { message, exit_code } => {
            assert_eq!(
                message,
                "exec: \"nosuchcmd\": executable file not found in $PATH"
            );
            assert_eq!(*exit_code, 127);
        }
        other => panic!("unexpected error {other:?}"),
    }
    let input = f.input("miss2", &["/bin/nothere"]);
    let err = f.run("miss2", &input, false, false).unwrap_err();
    assert!(
        matches!(err, RuntimeError::Exec { exit_code: 127, .. }),
        "{err}"
    );
    let input = f.input("miss3", &["/etc/passwd"]);
    let err = f.run("miss3", &input, false, false).unwrap_err();
    assert!(
        matches!(err, RuntimeError::Exec { exit_code: 126, .. }),
        "{err}"
    );
    assert!(!f.runtime_root().join("miss").exists());
}

#[test]
fn cgroup_limits_applied() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new("cgroup");
    let mut input = f.input("lim", &["sleep", "1000"]);
    input.pids_limit = Some(20);
    input.memory_limit = Some(64 << 20);
    input.nano_cpus = Some(500_000_000);
    f.run("lim", &input, false, false).expect("start");
    assert_eq!(f.cgroup_file("lim", "pids", "pids.max", "pids.max"), "20");
    assert_eq!(
        f.cgroup_file("lim", "memory", "memory.limit_in_bytes", "memory.max"),
        (64u64 << 20).to_string()
    );
    let quota = f.cgroup_file("lim", "cpu", "cpu.cfs_quota_us", "cpu.max");
    assert!(quota.starts_with("50000"), "{quota}");
    control(&f.shim_dir("lim"), &ControlRequest::Kill(9)).unwrap();
    f.wait_exit("lim", Duration::from_secs(20));
    // The cgroup is gone after exit.
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let p = if v2 {
        format!("/sys/fs/cgroup/{}/lim", f.cg_parent)
    } else {
        format!("/sys/fs/cgroup/pids/{}/lim", f.cg_parent)
    };
    assert!(!Path::new(&p).exists(), "{p} still exists");
}

#[test]
fn shim_survives_its_spawner() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new("survive");
    let input = f.input(
        "surv",
        &[
            "sh",
            "-c",
            "trap 'exit 143' TERM; while true; do sleep 0.1; done",
        ],
    );
    let mut args = f.shim_args("surv", false, false);
    args.start_gated = true;
    write_bundle(&args.bundle, &input).unwrap();
    // A throwaway "daemon" (sh) spawns the shim with the ready pipe (its own stdout) as the
    // shim's stdout, then exits.
    let mut cmd = String::from("exec ");
    cmd.push_str(EXE);
    cmd.push_str(" shim");
    for a in args.to_argv() {
        cmd.push_str(&format!(" '{a}'"));
    }
    cmd.push_str(" </dev/null 2>/dev/null");
    // Read only the ready line: in gated mode the not-yet-started init still holds the pipe.
    let mut sh = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(sh.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(sh.wait().unwrap().success());
    let rep: serde_json::Value = serde_json::from_str(line.lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(rep["ok"], true, "{rep}");
    let (shim, _init) =
        shim_alive(&f.shim_dir("surv"), "surv").expect("shim alive after spawner exited");
    assert_eq!(shim as i64, rep["shim_pid"].as_i64().unwrap());
    // Gated start: attach first, then start.
    control(&f.shim_dir("surv"), &ControlRequest::Start(true)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(shim_alive(&f.shim_dir("surv"), "surv").is_some());
    assert!(read_exit(&f.shim_dir("surv")).is_none());
    control(&f.shim_dir("surv"), &ControlRequest::Kill(15)).unwrap();
    assert_eq!(f.wait_exit("surv", Duration::from_secs(20)).exit_code, 143);
}

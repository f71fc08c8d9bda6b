//! The per-container shim: `shoal shim <argv>`.
//!
//! Process model. The daemon spawns `<exe> shim <argv>` (process A) with stdin and stderr on
//! /dev/null and the write end of a *ready pipe* as stdout (A moves it off fd 1 and puts
//! /dev/null there). A forks B and exits at once (the
//! daemon reaps A); B calls `setsid` and `PR_SET_CHILD_SUBREAPER`, so it is reparented away from
//! the daemon and survives the daemon being killed. B creates and starts the container with
//! libcontainer. libcontainer clones the container init as a sibling of its intermediate process,
//! so **the container init is a direct child of the shim** (B reaps it and learns the exit
//! status; a pidfd tells the event loop when it exits). B then writes one JSON line to the ready
//! pipe (`{"ok":true,"shim_pid":..,"init_pid":..}` or `{"ok":false,"error":"..","exit_code":127}`)
//! and closes it, and runs a single-threaded `poll(2)` loop until the init exits.
//!
//! Nothing in the shim depends on the daemon after the ready report.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use crate::client::{ControlRequest, ExitInfo, ReadyReport};
use crate::logfile::{push_frame, LineSplitter, Stream};
use crate::RuntimeError;

/// fd number on which the exec helper in tty mode receives its extra channel.
pub const READY_FD: RawFd = 3;
/// Clients whose unsent output exceeds this are dropped.
const MAX_CLIENT_BUFFER: usize = 1 << 20;
/// Stdin bytes buffered towards the container before we stop reading from clients.
const MAX_STDIN_BUFFER: usize = 1 << 20;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Arguments of `shoal shim`. Both sides use [`ShimArgs::to_argv`] / [`ShimArgs::from_argv`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShimArgs {
    pub id: String,
    pub bundle: PathBuf,
    /// libcontainer root path (= <exec-root>/runtime).
    pub runtime_root: PathBuf,
    /// <exec-root>/shim/<id>
    pub shim_dir: PathBuf,
    pub log_path: PathBuf,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    /// When true the shim creates the container, reports ready, and waits for a
    /// `{"start":true}` control request before starting it, so the engine can attach first
    /// (`docker run` attaches before start). When false the container is started before the
    /// ready report.
    pub start_gated: bool,
}

pub(crate) fn parse_kv(
    argv: &[String],
    what: &str,
) -> Result<HashMap<String, String>, RuntimeError> {
    let mut m = HashMap::new();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let Some(key) = k.strip_prefix("--") else {
            return Err(RuntimeError::InvalidInput(format!(
                "{what}: unexpected argument {k:?}"
            )));
        };
        let Some(v) = it.next() else {
            return Err(RuntimeError::InvalidInput(format!(
                "{what}: missing value for --{key}"
            )));
        };
        m.insert(key.to_string(), v.clone());
    }
    Ok(m)
}

pub(crate) fn take(
    m: &mut HashMap<String, String>,
    key: &str,
    what: &str,
) -> Result<String, RuntimeError> {
    m.remove(key)
        .ok_or_else(|| RuntimeError::InvalidInput(format!("{what}: missing --{key}")))
}

pub(crate) fn take_bool(
    m: &mut HashMap<String, String>,
    key: &str,
    what: &str,
) -> Result<bool, RuntimeError> {
    match m.remove(key).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(RuntimeError::InvalidInput(format!(
            "{what}: --{key} must be true or false, got {v:?}"
        ))),
    }
}

impl ShimArgs {
    /// `["--id", id, "--bundle", p, "--runtime-root", p, "--shim-dir", p, "--log-path", p,
    ///   "--tty", bool, "--open-stdin", bool, "--stdin-once", bool, "--start-gated", bool]`
    /// (paths are converted lossily to UTF-8).
    pub fn to_argv(&self) -> Vec<String> {
        vec![
            "--id".into(),
            self.id.clone(),
            "--bundle".into(),
            self.bundle.display().to_string(),
            "--runtime-root".into(),
            self.runtime_root.display().to_string(),
            "--shim-dir".into(),
            self.shim_dir.display().to_string(),
            "--log-path".into(),
            self.log_path.display().to_string(),
            "--tty".into(),
            self.tty.to_string(),
            "--open-stdin".into(),
            self.open_stdin.to_string(),
            "--stdin-once".into(),
            self.stdin_once.to_string(),
            "--start-gated".into(),
            self.start_gated.to_string(),
        ]
    }

    /// Parses what [`ShimArgs::to_argv`] produced (without the leading "shim").
    pub fn from_argv(argv: &[String]) -> Result<Self, RuntimeError> {
        const W: &str = "shim arguments";
        let mut m = parse_kv(argv, W)?;
        let a = ShimArgs {
            id: take(&mut m, "id", W)?,
            bundle: take(&mut m, "bundle", W)?.into(),
            runtime_root: take(&mut m, "runtime-root", W)?.into(),
            shim_dir: take(&mut m, "shim-dir", W)?.into(),
            log_path: take(&mut m, "log-path", W)?.into(),
            tty: take_bool(&mut m, "tty", W)?,
            open_stdin: take_bool(&mut m, "open-stdin", W)?,
            stdin_once: take_bool(&mut m, "stdin-once", W)?,
            start_gated: take_bool(&mut m, "start-gated", W)?,
        };
        if let Some(k) = m.keys().next() {
            return Err(RuntimeError::InvalidInput(format!(
                "{W}: unknown flag --{k}"
            )));
        }
        validate_id(&a.id)?;
        Ok(a)
    }
}

pub(crate) fn validate_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidInput(format!(
            "invalid container id {id:?}"
        )))
    }
}

/// Entry point of `shoal shim`. Must be called before the process starts any thread.
/// Returns the process exit code.
pub fn shim_main(args: ShimArgs) -> i32 {
    let ready = take_ready_pipe();
    if thread_count() > 1 {
        let msg = "shim must be started before any thread is spawned".to_string();
        report(ready, &ReadyReport::failure(msg, None));
        return 1;
    }
    // SAFETY: the process is single-threaded (checked above), so fork is sound; the child only
    // continues running ordinary Rust code in a fresh copy of this single thread.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            report(
                ready,
                &ReadyReport::failure(format!("fork shim: {e}"), None),
            );
            1
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => 0,
        Ok(nix::unistd::ForkResult::Child) => {
            let _ = nix::unistd::setsid();
            // SAFETY: plain prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            match run(&args, ready) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(id = %args.id, error = %e, "shim failed");
                    1
                }
            }
        }
    }
}

/// Takes the ready pipe from stdout (when stdout is a pipe, as the daemon spawns the shim) and
/// puts /dev/null on fd 1.
fn take_ready_pipe() -> Option<File> {
    let stdout = std::io::stdout();
    let is_pipe = nix::sys::stat::fstat(stdout.as_raw_fd())
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO)
        .unwrap_or(false);
    if !is_pipe {
        return None;
    }
    // SAFETY: F_DUPFD_CLOEXEC only duplicates fd 1 onto a fresh descriptor (>= 3).
    let dup = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return None;
    }
    // SAFETY: `dup` was just created by us and nothing else refers to it.
    let ready = unsafe { OwnedFd::from_raw_fd(dup) };
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1 replaces stdout atomically; `null` stays owned by its File.
        unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) };
    }
    Some(File::from(ready))
}

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Threads:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(1))
            })
        })
        .unwrap_or(1)
}

fn report(ready: Option<File>, r: &ReadyReport) {
    if let Some(mut f) = ready {
        if let Ok(mut line) = serde_json::to_vec(r) {
            line.push(b'\n');
            let _ = f.write_all(&line);
        }
    }
}

fn init_shim_logging(shim_dir: &Path) {
    let path = shim_dir.join("shim.log");
    if let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_SHIM_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init();
    }
}

fn set_sigpipe(ignore: bool) {
    let h = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: installing SIG_IGN/SIG_DFL for SIGPIPE has no memory-safety implications.
    unsafe { libc::signal(libc::SIGPIPE, h) };
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

/// Maps libcontainer's executable validation errors to Docker's wording.
pub(crate) fn map_exec_error(chain: &str) -> Option<RuntimeError> {
    if let Some(start) = chain.find("executable '") {
        let rest = &chain[start + "executable '".len()..];
        if let Some(end) = rest.find('\'') {
            let name = &rest[..end];
            let tail = &rest[end..];
            if tail.starts_with("' not found in $PATH") {
                return Some(RuntimeError::Exec {
                    message: format!("exec: \"{name}\": executable file not found in $PATH"),
                    exit_code: 127,
                });
            }
            if tail.contains("does not have correct permissions") {
                return Some(RuntimeError::Exec {
                    message: format!("exec: \"{name}\": permission denied"),
                    exit_code: 126,
                });
            }
        }
    }
    None
}

/// Checks that `spec.process.args[0]` resolves to an executable file inside the rootfs, using
/// the spec's PATH, without following symlinks out of the rootfs. Paths under user mounts are
/// not checked (the file is not in the rootfs).
pub(crate) fn check_executable(spec: &Spec) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(process) = spec.process() else {
        return Ok(());
    };
    let Some(arg0) = process.args().as_ref().and_then(|a| a.first()).cloned() else {
        return Err(RuntimeError::InvalidInput("no command specified".into()));
    };
    let Some(root) = spec.root().as_ref().map(|r| r.path().clone()) else {
        return Ok(());
    };
    let under_mount = |p: &str| {
        spec.mounts().iter().flatten().any(|m| {
            m.typ().as_deref().is_some_and(|t| t == "bind")
                && Path::new(p).starts_with(m.destination())
                && m.destination() != Path::new("/")
        })
    };
    let check = |p: &str| -> std::io::Result<bool> {
        let f = crate::safepath::open_in_root(&root, p, libc::O_PATH)?;
        let meta = f.metadata()?;
        Ok(meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if arg0.contains('/') {
        let full = if arg0.starts_with('/') {
            arg0.clone()
        } else {
            process.cwd().join(&arg0).display().to_string()
        };
        if under_mount(&full) {
            return Ok(());
        }
        return match check(&full) {
            Ok(true) => Ok(()),
            Ok(false) => Err(RuntimeError::Exec {
                message: format!("exec: \"{arg0}\": permission denied"),
                exit_code: 126,
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(RuntimeError::Exec {
                message: format!("exec: \"{arg0}\": stat {arg0}: no such file or directory"),
                exit_code: 127,
            }),
            Err(_) => Ok(()), // let the runtime decide
        };
    }
    let env = process.env().clone().unwrap_or_default();
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(crate::spec::DEFAULT_PATH_ENV.trim_start_matches("PATH="))
        .to_string();
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let cand = format!("{}/{}", dir.trim_end_matches('/'), arg0);
        if under_mount(&cand) {
            return Ok(());
        }
        if let Ok(true) = check(&cand) {
            return Ok(());
        }
    }
    Err(RuntimeError::Exec {
        message: format!("exec: \"{arg0}\": executable file not found in $PATH"),
        exit_code: 127,
    })
}

/// Receives one fd sent with SCM_RIGHTS on `sock`.
pub(crate) fn recv_fd(sock: &UnixStream) -> Result<Option<OwnedFd>, RuntimeError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| RuntimeError::sys("recvmsg console fd", e))?;
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| RuntimeError::sys("parse control message", e))?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut owned: Vec<OwnedFd> = fds
                .into_iter()
                // SAFETY: SCM_RIGHTS just installed these fds in our table; we own them.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            if !owned.is_empty() {
                return Ok(Some(owned.swap_remove(0)));
            }
        }
    }
    Ok(None)
}

/// Sends `fd` over `sock` with SCM_RIGHTS.
pub(crate) fn send_fd(sock: RawFd, fd: RawFd) -> Result<(), RuntimeError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(b"pty")];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(|e| RuntimeError::sys("sendmsg pty fd", e))?;
    Ok(())
}

pub(crate) fn set_winsize(fd: RawFd, height: u16, width: u16) -> Result<(), RuntimeError> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` from the valid pointer we pass; fd is a pty master.
    let r = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws as *const libc::winsize) };
    if r < 0 {
        return Err(RuntimeError::sys("resize pty", nix::Error::last()));
    }
    Ok(())
}

pub(crate) fn raw_pidfd_open(pid: i32) -> Result<OwnedFd, RuntimeError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(RuntimeError::sys("pidfd_open", nix::Error::last()));
    }
    let fd = RawFd::try_from(r).map_err(|_| RuntimeError::Protocol("pidfd out of range".into()))?;
    // SAFETY: the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> Result<(), nix::Error> {
    // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, a NULL siginfo and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(())
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RuntimeError::sys("pipe2", e))
}

fn set_nonblocking(fd: RawFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(fl) = fcntl(fd, FcntlArg::F_GETFL) {
        let _ = fcntl(
            fd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK),
        );
    }
}

/// The container's stdio as seen from the shim.
struct Stdio {
    stdout: Option<File>,
    stderr: Option<File>,
    stdin: Option<File>,
    /// tty mode: the pty master (kept for resize; `stdout`/`stdin` are dups of it).
    master: Option<File>,
}

fn run(args: &ShimArgs, ready: Option<File>) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(&args.shim_dir)
        .map_err(|e| RuntimeError::io("create shim dir", &args.shim_dir, e))?;
    init_shim_logging(&args.shim_dir);
    let my_pid = std::process::id() as i32;
    for stale in [
        "exit.json",
        "init.pid",
        "attach.sock",
        "control.sock",
        "console.sock",
    ] {
        let _ = std::fs::remove_file(args.shim_dir.join(stale));
    }
    if let Err(e) = std::fs::write(args.shim_dir.join("shim.pid"), my_pid.to_string()) {
        let err = RuntimeError::io("write", args.shim_dir.join("shim.pid"), e);
        report(ready, &ReadyReport::failure(err.to_string(), None));
        return Err(err);
    }
    match setup(args) {
        Ok(mut shim) => {
            report(ready, &ReadyReport::success(my_pid, shim.init_pid));
            tracing::info!(id = %args.id, init_pid = shim.init_pid, "container started");
            shim.event_loop();
            shim.finish();
            Ok(())
        }
        Err(e) => {
            let code = match &e {
                RuntimeError::Exec { exit_code, .. } => Some(*exit_code),
                _ => None,
            };
            tracing::error!(id = %args.id, error = %e, "container creation failed");
            report(ready, &ReadyReport::failure(e.to_string(), code));
            cleanup_container(&args.runtime_root, &args.id);
            for f in [
                "attach.sock",
                "control.sock",
                "console.sock",
                "shim.pid",
                "init.pid",
            ] {
                let _ = std::fs::remove_file(args.shim_dir.join(f));
            }
            Err(e)
        }
    }
}

/// Force-deletes libcontainer state (and thereby the cgroup) for `id`, best effort.
pub(crate) fn cleanup_container(runtime_root: &Path, id: &str) {
    let dir = runtime_root.join(id);
    if !dir.exists() {
        return;
    }
    match Container::load(dir.clone()) {
        Ok(mut c) => {
            if let Err(e) = c.delete(true) {
                tracing::warn!(%id, error = %error_chain(&e), "libcontainer delete failed");
            }
        }
        Err(e) => tracing::warn!(%id, error = %error_chain(&e), "cannot load libcontainer state"),
    }
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn setup(args: &ShimArgs) -> Result<Shim, RuntimeError> {
    let config = args.bundle.join("config.json");
    let spec = Spec::load(&config)
        .map_err(|e| RuntimeError::Spec(format!("load {}: {e}", config.display())))?;
    let mut spec_abs = spec.clone();
    spec_abs
        .canonicalize_rootfs(&args.bundle)
        .map_err(|e| RuntimeError::Spec(format!("rootfs of {}: {e}", config.display())))?;
    check_executable(&spec_abs)?;
    let cgroups_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .unwrap_or_else(|| PathBuf::from(format!("/shoal/{}", args.id)));

    std::fs::create_dir_all(&args.runtime_root)
        .map_err(|e| RuntimeError::io("create runtime root", &args.runtime_root, e))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log_path)
        .map_err(|e| RuntimeError::io("open log", &args.log_path, e))?;

    let lc_err = |op: &'static str| {
        let id = args.id.clone();
        move |e: libcontainer::error::LibcontainerError| {
            let chain = error_chain(&e);
            map_exec_error(&chain).unwrap_or(RuntimeError::Libcontainer {
                op,
                id,
                message: chain,
            })
        }
    };
    let mut builder = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.runtime_root)
        .map_err(lc_err("root path"))?;

    let console_path = args.shim_dir.join("console.sock");
    let mut console_listener = None;
    let mut stdio = Stdio {
        stdout: None,
        stderr: None,
        stdin: None,
        master: None,
    };
    if args.tty {
        let l = UnixListener::bind(&console_path)
            .map_err(|e| RuntimeError::io("bind", &console_path, e))?;
        console_listener = Some(l);
        builder = builder.with_console_socket(Some(&console_path));
    } else {
        let (out_r, out_w) = pipe_cloexec()?;
        let (err_r, err_w) = pipe_cloexec()?;
        builder = builder.with_stdout(out_w).with_stderr(err_w);
        if args.open_stdin {
            let (in_r, in_w) = pipe_cloexec()?;
            builder = builder.with_stdin(in_r);
            stdio.stdin = Some(File::from(in_w));
        } else {
            let null =
                File::open("/dev/null").map_err(|e| RuntimeError::io("open", "/dev/null", e))?;
            builder = builder.with_stdin(OwnedFd::from(null));
        }
        stdio.stdout = Some(File::from(out_r));
        stdio.stderr = Some(File::from(err_r));
    }

    // The init is cloned inside build(): it must inherit the default SIGPIPE disposition.
    set_sigpipe(false);
    let built = builder
        .as_init(&args.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build();
    set_sigpipe(true);
    let mut container = built.map_err(lc_err("create"))?;
    let init_pid =
        container
            .pid()
            .map(|p| p.as_raw())
            .ok_or_else(|| RuntimeError::Libcontainer {
                op: "create",
                id: args.id.clone(),
                message: "no init pid".into(),
            })?;

    if let Some(l) = console_listener {
        let _ = l.set_nonblocking(true);
        let deadline = Instant::now() + Duration::from_secs(10);
        let conn = loop {
            match l.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(RuntimeError::io("accept console", &console_path, e)),
            }
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let master = recv_fd(&conn)?.ok_or_else(|| {
            RuntimeError::Protocol("console socket closed without a pty master".into())
        })?;
        let _ = std::fs::remove_file(&console_path);
        let master = File::from(master);
        let dup = |f: &File| {
            f.try_clone()
                .map_err(|e| RuntimeError::io("dup", "pty master", e))
        };
        stdio.stdout = Some(dup(&master)?);
        stdio.stdin = Some(dup(&master)?);
        stdio.master = Some(master);
    }
    for f in [&stdio.stdout, &stdio.stderr, &stdio.stdin]
        .into_iter()
        .flatten()
    {
        set_nonblocking(f.as_raw_fd());
    }

    let pidfd = raw_pidfd_open(init_pid)?;
    let init_pid_path = args.shim_dir.join("init.pid");
    std::fs::write(&init_pid_path, init_pid.to_string())
        .map_err(|e| RuntimeError::io("write", &init_pid_path, e))?;

    let bind = |name: &str| -> Result<UnixListener, RuntimeError> {
        let p = args.shim_dir.join(name);
        let _ = std::fs::remove_file(&p);
        let l = UnixListener::bind(&p).map_err(|e| RuntimeError::io("bind", &p, e))?;
        l.set_nonblocking(true)
            .map_err(|e| RuntimeError::io("set nonblocking", &p, e))?;
        Ok(l)
    };
    let attach_l = bind("attach.sock")?;
    let control_l = bind("control.sock")?;

    let mut started = false;
    if !args.start_gated {
        container.start().map_err(lc_err("start"))?;
        started = true;
    }

    Ok(Shim {
        trim_at: started.then(|| Instant::now() + TRIM_DELAY),
        args: args.clone(),
        init_pid,
        pidfd: Some(pidfd),
        exit: None,
        container,
        started,
        cgroups_path,
        stdio,
        stdin_buf: Vec::new(),
        stdin_close_pending: false,
        log: BufWriter::new(log),
        split_out: LineSplitter::default(),
        split_err: LineSplitter::default(),
        attach_l,
        control_l,
        clients: Vec::new(),
        controls: Vec::new(),
    })
}

struct Client {
    sock: UnixStream,
    header_done: bool,
    inbuf: Vec<u8>,
    want_stdin: bool,
    want_stdout: bool,
    want_stderr: bool,
    out: Vec<u8>,
    read_closed: bool,
    dead: bool,
}

struct ControlConn {
    sock: UnixStream,
    inbuf: Vec<u8>,
    dead: bool,
}

struct Shim {
    /// When to give back start-up memory: once the loop has been idle for a moment after start.
    trim_at: Option<Instant>,
    args: ShimArgs,
    init_pid: i32,
    pidfd: Option<OwnedFd>,
    exit: Option<(i32, Option<i32>)>,
    container: Container,
    started: bool,
    cgroups_path: PathBuf,
    stdio: Stdio,
    stdin_buf: Vec<u8>,
    stdin_close_pending: bool,
    log: BufWriter<File>,
    split_out: LineSplitter,
    split_err: LineSplitter,
    attach_l: UnixListener,
    control_l: UnixListener,
    clients: Vec<Client>,
    controls: Vec<ControlConn>,
}

#[derive(Clone, Copy)]
enum Slot {
    Out(Stream),
    Stdin,
    Pidfd,
    AttachListener,
    ControlListener,
    Client(usize),
    Control(usize),
}

#[derive(serde::Deserialize, Default)]
struct AttachHeader {
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    stdout: bool,
    #[serde(default)]
    stderr: bool,
}

/// How long the loop waits after start before trimming (lets start-up traffic settle).
const TRIM_DELAY: Duration = Duration::from_secs(1);

impl Shim {
    fn event_loop(&mut self) {
        let mut drain_deadline: Option<Instant> = None;
        let mut last_reap = Instant::now();
        loop {
            if self.exit.is_some() {
                let deadline =
                    *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                if (self.stdio.stdout.is_none() && self.stdio.stderr.is_none())
                    || Instant::now() >= deadline
                {
                    return;
                }
            }
            let mut fds: Vec<libc::pollfd> = Vec::new();
            let mut slots: Vec<Slot> = Vec::new();
            let mut add = |fd: RawFd, events: i16, slot: Slot, fds: &mut Vec<libc::pollfd>| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                slots.push(slot);
            };
            if let Some(f) = &self.stdio.stdout {
                add(
                    f.as_raw_fd(),
                    libc::POLLIN,
                    Slot::Out(Stream::Stdout),
                    &mut fds,
                );
            }
            if let Some(f) = &self.stdio.stderr {
                add(
                    f.as_raw_fd(),
                    libc::POLLIN,
                    Slot::Out(Stream::Stderr),
                    &mut fds,
                );
            }
            if self.exit.is_none() {
                if let (Some(f), false) = (&self.stdio.stdin, self.stdin_buf.is_empty()) {
                    add(f.as_raw_fd(), libc::POLLOUT, Slot::Stdin, &mut fds);
                }
                if let Some(p) = &self.pidfd {
                    add(p.as_raw_fd(), libc::POLLIN, Slot::Pidfd, &mut fds);
                }
                add(
                    self.attach_l.as_raw_fd(),
                    libc::POLLIN,
                    Slot::AttachListener,
                    &mut fds,
                );
                add(
                    self.control_l.as_raw_fd(),
                    libc::POLLIN,
                    Slot::ControlListener,
                    &mut fds,
                );
                let stdin_room = self.stdin_buf.len() < MAX_STDIN_BUFFER;
                for (i, c) in self.clients.iter().enumerate() {
                    let mut ev = 0;
                    if !c.read_closed && (stdin_room || !c.header_done) {
                        ev |= libc::POLLIN;
                    }
                    if !c.out.is_empty() {
                        ev |= libc::POLLOUT;
                    }
                    add(c.sock.as_raw_fd(), ev, Slot::Client(i), &mut fds);
                }
                for (i, c) in self.controls.iter().enumerate() {
                    add(c.sock.as_raw_fd(), libc::POLLIN, Slot::Control(i), &mut fds);
                }
            }
            let timeout_ms = if self.exit.is_some() {
                100
            } else if let Some(at) = self.trim_at {
                at.saturating_duration_since(Instant::now()).as_millis().clamp(1, 2000) as i32
            } else {
                2000
            };
            // SAFETY: `fds` is a valid, initialised array of pollfd whose length we pass.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                let e = nix::Error::last();
                if e != nix::Error::EINTR {
                    tracing::error!(error = %e, "poll failed");
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
            if n == 0 && self.exit.is_none() && self.trim_at.is_some_and(|at| Instant::now() >= at) {
                self.trim_at = None;
                crate::trim::release_startup_memory();
            }
            for (pfd, slot) in fds.iter().zip(slots.iter()) {
                if pfd.revents == 0 {
                    continue;
                }
                match *slot {
                    Slot::Out(s) => self.read_output(s),
                    Slot::Stdin => self.write_stdin(),
                    Slot::Pidfd => self.reap(),
                    Slot::AttachListener => self.accept_clients(),
                    Slot::ControlListener => self.accept_controls(),
                    Slot::Client(i) => self.service_client(i, pfd.revents),
                    Slot::Control(i) => self.service_control(i),
                }
            }
            self.clients.retain(|c| !c.dead);
            self.controls.retain(|c| !c.dead);
            let _ = self.log.flush();
            if last_reap.elapsed() > Duration::from_secs(2) {
                self.reap();
                last_reap = Instant::now();
            }
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    if pid.as_raw() == self.init_pid {
                        self.on_init_exit(code, None);
                    }
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    if pid.as_raw() == self.init_pid {
                        let s = sig as i32;
                        self.on_init_exit(128 + s, Some(s));
                    }
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn on_init_exit(&mut self, code: i32, signal: Option<i32>) {
        tracing::info!(id = %self.args.id, exit_code = code, ?signal, "container init exited");
        self.exit = Some((code, signal));
        self.pidfd = None;
        // Nobody can consume stdin any more.
        self.stdio.stdin = None;
        self.stdin_buf.clear();
    }

    fn read_output(&mut self, stream: Stream) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let slot = match stream {
                Stream::Stdout => &mut self.stdio.stdout,
                Stream::Stderr => &mut self.stdio.stderr,
            };
            let Some(f) = slot.as_mut() else { return };
            match f.read(&mut buf) {
                Ok(0) => {
                    *slot = None;
                    return;
                }
                Ok(n) => {
                    let data = &buf[..n];
                    let splitter = match stream {
                        Stream::Stdout => &mut self.split_out,
                        Stream::Stderr => &mut self.split_err,
                    };
                    if let Err(e) = splitter.feed(stream, data, &mut self.log) {
                        tracing::warn!(error = %e, "writing container log failed");
                    }
                    for c in self.clients.iter_mut().filter(|c| c.header_done && !c.dead) {
                        let wanted = match stream {
                            Stream::Stdout => c.want_stdout,
                            Stream::Stderr => c.want_stderr,
                        };
                        if wanted {
                            push_frame(&mut c.out, stream, data);
                            if c.out.len() > MAX_CLIENT_BUFFER {
                                tracing::warn!(id = %self.args.id, "dropping slow attach client");
                                c.dead = true;
                            }
                        }
                    }
                    if n < buf.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    // EIO on a pty master once the slave side is gone: end of output.
                    *slot = None;
                    return;
                }
            }
        }
    }

    fn write_stdin(&mut self) {
        let Some(f) = self.stdio.stdin.as_mut() else {
            self.stdin_buf.clear();
            return;
        };
        while !self.stdin_buf.is_empty() {
            match f.write(&self.stdin_buf) {
                Ok(n) => {
                    self.stdin_buf.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.stdio.stdin = None;
                    self.stdin_buf.clear();
                    return;
                }
            }
        }
        self.maybe_close_stdin();
    }

    fn maybe_close_stdin(&mut self) {
        if self.stdin_close_pending && self.stdin_buf.is_empty() && !self.args.tty {
            self.stdio.stdin = None;
            self.stdin_close_pending = false;
        }
    }

    fn accept_clients(&mut self) {
        loop {
            match self.attach_l.accept() {
                Ok((sock, _)) => {
                    let _ = sock.set_nonblocking(true);
                    self.clients.push(Client {
                        sock,
                        header_done: false,
                        inbuf: Vec::new(),
                        want_stdin: false,
                        want_stdout: false,
                        want_stderr: false,
                        out: Vec::new(),
                        read_closed: false,
                        dead: false,
                    });
                }
                Err(_) => return,
            }
        }
    }

    fn accept_controls(&mut self) {
        loop {
            match self.control_l.accept() {
                Ok((sock, _)) => {
                    let _ = sock.set_nonblocking(true);
                    self.controls.push(ControlConn {
                        sock,
                        inbuf: Vec::new(),
                        dead: false,
                    });
                }
                Err(_) => return,
            }
        }
    }

    fn service_client(&mut self, i: usize, revents: i16) {
        if revents & libc::POLLOUT != 0 {
            let c = &mut self.clients[i];
            while !c.out.is_empty() {
                match c.sock.write(&c.out) {
                    Ok(n) => {
                        c.out.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.dead = true;
                        return;
                    }
                }
            }
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
            return;
        }
        let mut buf = [0u8; 32 * 1024];
        loop {
            let c = &mut self.clients[i];
            if c.read_closed || c.dead {
                if revents & libc::POLLERR != 0 {
                    c.dead = true;
                }
                return;
            }
            match c.sock.read(&mut buf) {
                Ok(0) => {
                    c.read_closed = true;
                    if !c.header_done {
                        c.dead = true;
                        return;
                    }
                    let (want_stdin, want_output) = (c.want_stdin, c.want_stdout || c.want_stderr);
                    if want_stdin && self.args.stdin_once {
                        self.stdin_close_pending = true;
                        if self.args.tty {
                            // EOT: the line discipline turns it into EOF for the reader.
                            self.stdin_buf.push(0x04);
                        }
                        self.maybe_close_stdin();
                    }
                    if !want_output {
                        self.clients[i].dead = true;
                    }
                    return;
                }
                Ok(n) => {
                    let mut data = &buf[..n];
                    if !c.header_done {
                        c.inbuf.extend_from_slice(data);
                        let Some(pos) = c.inbuf.iter().position(|b| *b == b'\n') else {
                            if c.inbuf.len() > 4096 {
                                c.dead = true;
                                return;
                            }
                            continue;
                        };
                        let hdr: AttachHeader = match serde_json::from_slice(&c.inbuf[..pos]) {
                            Ok(h) => h,
                            Err(_) => {
                                c.dead = true;
                                return;
                            }
                        };
                        c.want_stdin = hdr.stdin;
                        c.want_stdout = hdr.stdout;
                        c.want_stderr = hdr.stderr;
                        c.header_done = true;
                        let rest: Vec<u8> = c.inbuf.split_off(pos + 1);
                        c.inbuf.clear();
                        if c.want_stdin && self.stdio.stdin.is_some() {
                            self.stdin_buf.extend_from_slice(&rest);
                        }
                        data = &[];
                    }
                    let c = &self.clients[i];
                    if c.want_stdin && self.stdio.stdin.is_some() && !data.is_empty() {
                        self.stdin_buf.extend_from_slice(data);
                    }
                    if !self.stdin_buf.is_empty() {
                        self.write_stdin();
                    }
                    if self.stdin_buf.len() >= MAX_STDIN_BUFFER {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    c.dead = true;
                    return;
                }
            }
        }
    }

    fn service_control(&mut self, i: usize) {
        let mut buf = [0u8; 4096];
        let line = {
            let c = &mut self.controls[i];
            match c.sock.read(&mut buf) {
                Ok(0) => {
                    c.dead = true;
                    return;
                }
                Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    return
                }
                Err(_) => {
                    c.dead = true;
                    return;
                }
            }
            match c.inbuf.iter().position(|b| *b == b'\n') {
                Some(pos) => c.inbuf[..pos].to_vec(),
                None => {
                    if c.inbuf.len() > 4096 {
                        c.dead = true;
                    }
                    return;
                }
            }
        };
        let result = match serde_json::from_slice::<ControlRequest>(&line) {
            Ok(req) => self.handle_control(&req),
            Err(e) => Err(format!("invalid control request: {e}")),
        };
        let reply = match result {
            Ok(()) => serde_json::json!({"ok": true}),
            Err(e) => serde_json::json!({"ok": false, "error": e}),
        };
        let c = &mut self.controls[i];
        let _ = c.sock.set_nonblocking(false);
        let _ = c.sock.set_write_timeout(Some(Duration::from_secs(1)));
        let mut out = reply.to_string().into_bytes();
        out.push(b'\n');
        let _ = c.sock.write_all(&out);
        c.dead = true;
    }

    fn handle_control(&mut self, req: &ControlRequest) -> Result<(), String> {
        match req {
            ControlRequest::Kill(sig) => {
                if self.exit.is_some() {
                    return Err(format!("container {} is not running", self.args.id));
                }
                let Some(pidfd) = &self.pidfd else {
                    return Err(format!("container {} is not running", self.args.id));
                };
                tracing::info!(id = %self.args.id, signal = sig, "signalling container init");
                pidfd_send_signal(pidfd, *sig)
                    .map_err(|e| format!("kill container {} with signal {sig}: {e}", self.args.id))
            }
            ControlRequest::Resize(r) => {
                let Some(m) = &self.stdio.master else {
                    return Err(format!("container {} has no tty", self.args.id));
                };
                set_winsize(m.as_raw_fd(), r.height, r.width).map_err(|e| e.to_string())
            }
            ControlRequest::Start(_) => {
                if self.started {
                    return Ok(());
                }
                if self.exit.is_some() {
                    return Err(format!("container {} already exited", self.args.id));
                }
                self.container.start().map_err(|e| {
                    format!("start container {}: {}", self.args.id, error_chain(&e))
                })?;
                self.started = true;
                self.trim_at = Some(Instant::now() + TRIM_DELAY);
                Ok(())
            }
        }
    }

    fn oom_killed(&self) -> bool {
        let rel = self
            .cgroups_path
            .strip_prefix("/")
            .unwrap_or(&self.cgroups_path);
        let candidates = [
            Path::new("/sys/fs/cgroup/memory")
                .join(rel)
                .join("memory.oom_control"),
            Path::new("/sys/fs/cgroup").join(rel).join("memory.events"),
        ];
        for p in candidates {
            if let Ok(s) = std::fs::read_to_string(&p) {
                for l in s.lines() {
                    if let Some(v) = l.strip_prefix("oom_kill ") {
                        if v.trim().parse::<u64>().unwrap_or(0) > 0 {
                            return true;
                        }
                    }
                }
            }
        }
        false
    }

    fn finish(mut self) {
        let _ = self.split_out.flush(Stream::Stdout, &mut self.log);
        let _ = self.split_err.flush(Stream::Stderr, &mut self.log);
        let _ = self.log.flush();
        // Give attached clients a bounded chance to receive the tail of the output.
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        for c in self.clients.iter_mut().filter(|c| !c.dead) {
            let _ = c.sock.set_nonblocking(false);
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10));
            let _ = c.sock.set_write_timeout(Some(left));
            let _ = c.sock.write_all(&c.out);
        }
        let (exit_code, signal) = self.exit.unwrap_or((255, None));
        let info = ExitInfo {
            exit_code,
            signal,
            finished_at: crate::logfile::now_rfc3339_nano(),
            oom_killed: self.oom_killed(),
            error: None,
        };
        let exit_path = self.args.shim_dir.join("exit.json");
        match serde_json::to_vec(&info) {
            Ok(data) => {
                if let Err(e) = write_atomic(&exit_path, &data) {
                    tracing::error!(path = %exit_path.display(), error = %e, "writing exit.json failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "serialising exit info failed"),
        }
        if let Err(e) = self.container.delete(true) {
            tracing::warn!(id = %self.args.id, error = %error_chain(&e), "libcontainer delete failed");
            cleanup_container(&self.args.runtime_root, &self.args.id);
        }
        for f in ["attach.sock", "control.sock"] {
            let _ = std::fs::remove_file(self.args.shim_dir.join(f));
        }
        for c in self.clients.drain(..) {
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
        }
        // Reap anything else that was reparented to us.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        tracing::info!(id = %self.args.id, exit_code, "shim exiting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_roundtrip() {
        let a = ShimArgs {
            id: "abc123".into(),
            bundle: "/run/shoal/bundles/abc123".into(),
            runtime_root: "/run/shoal/runtime".into(),
            shim_dir: "/run/shoal/shim/abc123".into(),
            log_path: "/var/lib/shoal/containers/abc123/abc123-json.log".into(),
            tty: true,
            open_stdin: true,
            stdin_once: false,
            start_gated: true,
        };
        let argv = a.to_argv();
        assert_eq!(ShimArgs::from_argv(&argv).unwrap(), a);
        let mut bad = argv.clone();
        bad.push("--bogus".into());
        assert!(ShimArgs::from_argv(&bad).is_err());
        let mut bad = argv;
        bad[1] = "../etc".into();
        assert!(ShimArgs::from_argv(&bad).is_err());
    }

    #[test]
    fn maps_libcontainer_exec_errors() {
        let e = map_exec_error(
            "failed to run container process: executable 'nosuchcmd' not found in $PATH",
        )
        .unwrap();
        assert_eq!(
            e.to_string(),
            "exec: \"nosuchcmd\": executable file not found in $PATH"
        );
        assert!(map_exec_error("something else").is_none());
    }
}

//! `docker exec`: `shoal exec-helper <argv>`, a direct child of the daemon that joins the
//! container with libcontainer's tenant builder, waits for the process and exits with its code.
//!
//! Non-tty: the helper's stdin/stdout/stderr (pipes from the daemon) are inherited by the exec'd
//! process. Tty: fd 3 ([`crate::shim::READY_FD`]) is one end of a unix socketpair; the helper
//! sends the pty master over it with SCM_RIGHTS (one message, payload "pty") and closes it; the
//! daemon then does the I/O and resizes on the master itself. In tty mode the helper's stderr
//! only carries its own error messages. If the command cannot be started the helper prints
//! Docker's error text to stderr and exits 126/127 (and, for tty, closes fd 3 without sending).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{waitpid, WaitStatus};
use serde_json::json;

use crate::shim::{
    error_chain, map_exec_error, parse_kv, recv_fd, send_fd, take, take_bool, validate_id, READY_FD,
};
use crate::spec::{caps_json, complete_env, rlimits_json, tweak_capabilities};
use crate::user::ResolvedUser;
use crate::RuntimeError;

/// Arguments of `shoal exec-helper`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecHelperArgs {
    pub id: String,
    pub runtime_root: PathBuf,
    /// OCI Process JSON written by [`write_exec_process`].
    pub process_json: PathBuf,
    pub tty: bool,
}

impl ExecHelperArgs {
    /// `["--id", id, "--runtime-root", p, "--process", p, "--tty", bool]`
    pub fn to_argv(&self) -> Vec<String> {
        vec![
            "--id".into(),
            self.id.clone(),
            "--runtime-root".into(),
            self.runtime_root.display().to_string(),
            "--process".into(),
            self.process_json.display().to_string(),
            "--tty".into(),
            self.tty.to_string(),
        ]
    }

    /// Parses what [`ExecHelperArgs::to_argv`] produced (without the leading "exec-helper").
    pub fn from_argv(argv: &[String]) -> Result<Self, RuntimeError> {
        const W: &str = "exec-helper arguments";
        let mut m = parse_kv(argv, W)?;
        let a = ExecHelperArgs {
            id: take(&mut m, "id", W)?,
            runtime_root: take(&mut m, "runtime-root", W)?.into(),
            process_json: take(&mut m, "process", W)?.into(),
            tty: take_bool(&mut m, "tty", W)?,
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

/// What to run in an existing container.
#[derive(Debug, Clone, Default)]
pub struct ExecProcessInput {
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Empty = "/".
    pub cwd: String,
    pub user: ResolvedUser,
    pub tty: bool,
    /// Docker exec runs with the container's capabilities: pass the container's cap_add/cap_drop;
    /// `privileged` (container or `exec --privileged`) gives every capability.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
}

/// Writes the OCI `Process` JSON for an exec.
pub fn write_exec_process(path: &Path, input: &ExecProcessInput) -> Result<(), RuntimeError> {
    if input.args.is_empty() {
        return Err(RuntimeError::InvalidInput(
            "no exec command specified".into(),
        ));
    }
    let caps = tweak_capabilities(&input.cap_add, &input.cap_drop, input.privileged)?;
    let cwd = if input.cwd.is_empty() {
        "/".to_string()
    } else {
        input.cwd.clone()
    };
    let mut user = json!({"uid": input.user.uid, "gid": input.user.gid});
    if !input.user.additional_gids.is_empty() {
        user["additionalGids"] = json!(input.user.additional_gids);
    }
    let v = json!({
        "terminal": input.tty,
        "user": user,
        "args": input.args,
        "env": complete_env(&input.env, input.tty),
        "cwd": cwd,
        "capabilities": caps_json(&caps),
        "rlimits": rlimits_json(&[])?,
        "noNewPrivileges": false,
    });
    // Validate through oci-spec's type.
    let p: oci_spec::runtime::Process =
        serde_json::from_value(v).map_err(|e| RuntimeError::Spec(e.to_string()))?;
    let data = serde_json::to_vec(&p).map_err(|e| RuntimeError::Spec(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io("create dir", dir, e))?;
    }
    std::fs::write(path, data).map_err(|e| RuntimeError::io("write", path, e))
}

/// A running exec helper. `pty_master` is set for tty execs that started successfully.
#[derive(Debug)]
pub struct ExecChild {
    pub child: Child,
    pub pty_master: Option<OwnedFd>,
}

/// Spawns `<exe> exec-helper <args>` as a direct child. Non-tty: stdin/stdout/stderr are pipes
/// (`child.stdin` etc.). Tty: stdin/stdout are /dev/null, stderr is a pipe (error text only) and
/// the pty master is returned once the process started; if it could not start, `pty_master` is
/// None and the child exits 126/127 with Docker's message on stderr.
pub fn spawn_exec(exe: &Path, args: &ExecHelperArgs) -> Result<ExecChild, RuntimeError> {
    validate_id(&args.id)?;
    let mut cmd = Command::new(exe);
    cmd.arg("exec-helper").args(args.to_argv());
    if !args.tty {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .map_err(|e| RuntimeError::io("spawn exec helper", exe, e))?;
        return Ok(ExecChild {
            child,
            pty_master: None,
        });
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| RuntimeError::io("socketpair", "exec tty channel", e))?;
    crate::client::map_fd_in_child(&mut cmd, theirs.as_raw_fd(), READY_FD);
    let child = cmd
        .spawn()
        .map_err(|e| RuntimeError::io("spawn exec helper", exe, e))?;
    drop(theirs);
    let deadline = Instant::now() + crate::client::SHIM_READY_TIMEOUT;
    loop {
        let ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd: ours.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, length 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            break;
        }
        if n == 0 || Instant::now() >= deadline {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(RuntimeError::ShimTimeout(format!("{} (exec)", args.id)));
        }
    }
    let master = recv_fd(&ours)?;
    Ok(ExecChild {
        child,
        pty_master: master,
    })
}

fn exit_code_of(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, c) => c,
        WaitStatus::Signaled(_, s, _) => 128 + s as i32,
        _ => 255,
    }
}

/// Entry point of `shoal exec-helper`. Must be called before any thread is spawned.
pub fn exec_helper_main(args: ExecHelperArgs) -> i32 {
    // SAFETY: F_GETFD only inspects the descriptor table.
    let chan = if args.tty && unsafe { libc::fcntl(READY_FD, libc::F_GETFD) } >= 0 {
        // SAFETY: fd 3 was handed to us by spawn_exec for exclusive use.
        Some(unsafe { OwnedFd::from_raw_fd(READY_FD) })
    } else {
        None
    };
    if let Some(c) = &chan {
        let _ = nix::fcntl::fcntl(
            c.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    match run_exec(&args, chan) {
        Ok(code) => code,
        Err(RuntimeError::Exec { message, exit_code }) => {
            eprintln!("OCI runtime exec failed: exec failed: unable to start container process: {message}: unknown");
            exit_code
        }
        Err(e) => {
            eprintln!("OCI runtime exec failed: {e}: unknown");
            126
        }
    }
}

fn run_exec(args: &ExecHelperArgs, chan: Option<OwnedFd>) -> Result<i32, RuntimeError> {
    let mut builder = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.runtime_root)
        .map_err(|e| RuntimeError::Libcontainer {
            op: "exec",
            id: args.id.clone(),
            message: error_chain(&e),
        })?;
    let mut listener = None;
    let mut sock_path = None;
    if args.tty {
        let p = args
            .process_json
            .with_extension(format!("{}.console.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let l = UnixListener::bind(&p).map_err(|e| RuntimeError::io("bind", &p, e))?;
        builder = builder.with_console_socket(Some(&p));
        listener = Some(l);
        sock_path = Some(p);
    }
    // The exec'd process is cloned in build(): give it the default SIGPIPE disposition.
    // SAFETY: installing SIG_DFL for SIGPIPE has no memory-safety implications.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let built = builder
        .as_tenant()
        .with_process(Some(&args.process_json))
        .with_detach(args.tty)
        .build();
    let result = (|| {
        let pid = built.map_err(|e| {
            let chain = error_chain(&e);
            map_exec_error(&chain).unwrap_or(RuntimeError::Libcontainer {
                op: "exec",
                id: args.id.clone(),
                message: chain,
            })
        })?;
        if let (Some(l), Some(chan)) = (&listener, &chan) {
            l.set_nonblocking(true)
                .map_err(|e| RuntimeError::io("set nonblocking", "console socket", e))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let conn = loop {
                match l.accept() {
                    Ok((c, _)) => break c,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => return Err(RuntimeError::io("accept", "console socket", e)),
                }
            };
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let master = recv_fd(&conn)?
                .ok_or_else(|| RuntimeError::Protocol("no pty master received".into()))?;
            send_fd(chan.as_raw_fd(), master.as_raw_fd())?;
        }
        Ok(pid)
    })();
    if let Some(p) = sock_path {
        let _ = std::fs::remove_file(p);
    }
    drop(chan);
    let pid = result?;
    loop {
        match waitpid(pid, None) {
            Ok(st @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                return Ok(exit_code_of(st))
            }
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(RuntimeError::sys("waitpid exec process", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_roundtrip_and_process_json() {
        let a = ExecHelperArgs {
            id: "c1".into(),
            runtime_root: "/run/shoal/runtime".into(),
            process_json: "/run/shoal/exec/x.json".into(),
            tty: true,
        };
        assert_eq!(ExecHelperArgs::from_argv(&a.to_argv()).unwrap(), a);
        let dir = std::env::temp_dir().join(format!("shoal-exec-{}", std::process::id()));
        let p = dir.join("p.json");
        write_exec_process(
            &p,
            &ExecProcessInput {
                args: vec!["sh".into()],
                user: ResolvedUser {
                    uid: 1,
                    gid: 2,
                    additional_gids: vec![3],
                },
                ..Default::default()
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["user"]["additionalGids"], json!([3]));
        assert_eq!(v["cwd"], json!("/"));
        assert_eq!(v["capabilities"]["bounding"].as_array().unwrap().len(), 14);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

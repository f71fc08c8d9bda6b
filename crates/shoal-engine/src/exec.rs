//! `docker exec`: extra processes inside a running container, run through the runtime's exec
//! helper (a re-executed single-threaded `shoal` process that joins the container).

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::error::{EngineError, Result};
use crate::model::Status;
use crate::{lock, new_id, Engine};

/// What `POST /containers/{id}/exec` asked for.
#[derive(Debug, Clone, Default)]
pub struct ExecConfig {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub tty: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub privileged: bool,
}

/// The state of an exec instance (`GET /exec/{id}/json`).
#[derive(Debug, Clone)]
pub struct ExecView {
    pub id: String,
    pub container_id: String,
    pub config: ExecConfig,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub pid: i32,
}

pub(crate) struct ExecInstance {
    pub(crate) container_id: String,
    state: Mutex<ExecView>,
    started: Mutex<bool>,
    pty: Mutex<Option<Arc<OwnedFd>>>,
}

/// A started, attached exec: output chunks (stream, bytes) until the process ends. The exit code
/// is recorded before the output channel closes.
pub struct ExecSession {
    pub tty: bool,
    pub output: mpsc::Receiver<(u8, Bytes)>,
    pub stdin: Option<mpsc::Sender<Bytes>>,
}

impl Engine {
    pub async fn exec_create(&self, reference: &str, config: ExecConfig) -> Result<String> {
        let c = self.find(reference)?;
        let (container_id, status) = {
            let rec = c.lock();
            (rec.id.clone(), rec.state.status)
        };
        if status != Status::Running {
            return Err(EngineError::Conflict(format!("container {container_id} is not running")));
        }
        if config.cmd.is_empty() {
            return Err(EngineError::Invalid("No exec command specified".into()));
        }
        let id = new_id();
        let view = ExecView { id: id.clone(), container_id: container_id.clone(), config, running: false, exit_code: None, pid: 0 };
        let instance = Arc::new(ExecInstance { container_id, state: Mutex::new(view), started: Mutex::new(false), pty: Mutex::new(None) });
        lock(&self.inner.execs).insert(id.clone(), instance);
        Ok(id)
    }

    pub fn exec_inspect(&self, id: &str) -> Result<ExecView> {
        let execs = lock(&self.inner.execs);
        let instance = execs.get(id).ok_or_else(|| EngineError::NoSuchExec(id.to_string()))?;
        let view = lock(&instance.state).clone();
        Ok(view)
    }

    pub fn exec_resize(&self, id: &str, height: u16, width: u16) -> Result<()> {
        let instance = lock(&self.inner.execs).get(id).cloned().ok_or_else(|| EngineError::NoSuchExec(id.to_string()))?;
        let pty = lock(&instance.pty).clone();
        if let Some(master) = pty {
            set_winsize(&master, height, width)?;
        }
        Ok(())
    }

    /// Drops a finished (or abandoned) exec instance, e.g. a health probe, from the table.
    pub(crate) fn exec_forget(&self, id: &str) {
        lock(&self.inner.execs).remove(id);
    }

    /// Kills a running exec's process and everything it started (SIGKILL via pidfds). The exec
    /// then finishes as usual, with exit code 137.
    pub(crate) fn exec_kill(&self, id: &str) {
        let Some(instance) = lock(&self.inner.execs).get(id).cloned() else { return };
        let (helper, running) = {
            let view = lock(&instance.state);
            (view.pid, view.running)
        };
        if !running || helper <= 0 {
            return;
        }
        // Hold pidfds first, then signal only what is still in the helper's tree: a pid that was
        // reused in between is never signalled.
        let first = descendants(helper);
        let fds: Vec<(i32, OwnedFd)> = first.iter().filter_map(|&p| shoal_runtime::pidfd_open(p).ok().map(|fd| (p, fd))).collect();
        let still = descendants(helper);
        let mut killed = 0;
        for (pid, fd) in &fds {
            if still.contains(pid) && pidfd_kill(fd).is_ok() {
                killed += 1;
            }
        }
        if killed == 0 {
            // The process was not created yet: stop the helper itself.
            if let Ok(fd) = shoal_runtime::pidfd_open(helper) {
                let _ = pidfd_kill(&fd);
            }
        }
        debug!(exec = %id, killed, "exec killed");
    }

    /// Starts an exec. Detached: returns `None` once the process runs.
    pub async fn exec_start(&self, id: &str, detach: bool) -> Result<Option<ExecSession>> {
        let instance = lock(&self.inner.execs).get(id).cloned().ok_or_else(|| EngineError::NoSuchExec(id.to_string()))?;
        {
            let mut started = lock(&instance.started);
            if *started {
                return Err(EngineError::Conflict(format!("Error: Exec command {id} has already run")));
            }
            *started = true;
        }
        let c = self.find(&instance.container_id)?;
        let (rec_status, container_env, container_wd, container_user) = {
            let rec = c.lock();
            (rec.state.status, rec.config.env.clone(), rec.config.working_dir.clone(), rec.config.user.clone())
        };
        if rec_status != Status::Running {
            return Err(EngineError::Conflict(format!("container {} is not running", instance.container_id)));
        }
        let config = lock(&instance.state).config.clone();
        let container_id = instance.container_id.clone();
        let rootfs = self.dirs(&container_id).rootfs();
        let user_spec = if config.user.is_empty() { container_user } else { config.user.clone() };
        let user = {
            let rootfs = rootfs.clone();
            tokio::task::spawn_blocking(move || shoal_runtime::resolve_user(&rootfs, &user_spec))
                .await
                .map_err(|e| EngineError::Internal(format!("exec: {e}")))??
        };
        let mut env = container_env;
        for entry in &config.env {
            let key = entry.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(entry.clone());
        }
        if config.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        let cwd = if !config.working_dir.is_empty() {
            config.working_dir.clone()
        } else if !container_wd.is_empty() {
            container_wd
        } else {
            "/".into()
        };
        // Short path: the exec helper binds its console socket next to this file, and unix socket
        // paths are limited to 107 bytes.
        let exec_dir = self.inner.cfg.exec_root.join("exec");
        std::fs::create_dir_all(&exec_dir).map_err(|e| EngineError::io(format!("creating {}", exec_dir.display()), e))?;
        let process_json = exec_dir.join(format!("{}.json", &id[..12]));
        let input = shoal_runtime::ExecProcessInput { args: config.cmd.clone(), env, cwd, user, tty: config.tty, cap_add: Vec::new(), cap_drop: Vec::new(), privileged: config.privileged };
        shoal_runtime::write_exec_process(&process_json, &input)?;
        let args = shoal_runtime::ExecHelperArgs {
            id: container_id.clone(),
            runtime_root: self.runtime_root(),
            process_json: process_json.clone(),
            tty: config.tty,
        };
        let exe = self.inner.cfg.shim_exe.clone();
        let mut child = tokio::task::spawn_blocking(move || shoal_runtime::spawn_exec(&exe, &args))
            .await
            .map_err(|e| EngineError::Internal(format!("exec: {e}")))??;
        {
            let mut view = lock(&instance.state);
            view.running = true;
            view.pid = child.child.id() as i32;
        }
        info!(exec = %id, container = %container_id, "exec started");
        let snapshot = c.snapshot();
        self.emit_container("exec_start", &snapshot, &[("execID", id.to_string())]);

        let (out_tx, out_rx) = mpsc::channel::<(u8, Bytes)>(64);
        let want_stdin = config.attach_stdin && !detach;
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(64);
        let mut readers = Vec::new();

        if let Some(master) = child.pty_master.take() {
            let master = Arc::new(master);
            *lock(&instance.pty) = Some(master.clone());
            let read_fd = dup_fd(&master)?;
            let write_fd = dup_fd(&master)?;
            let tx = out_tx.clone();
            readers.push(tokio::spawn(async move {
                let file = tokio::fs::File::from_std(std::fs::File::from(read_fd));
                pump(file, 1, tx, detach).await
            }));
            if want_stdin {
                tokio::spawn(async move {
                    let mut file = tokio::fs::File::from_std(std::fs::File::from(write_fd));
                    while let Some(chunk) = in_rx.recv().await {
                        if file.write_all(&chunk).await.is_err() {
                            break;
                        }
                        let _ = file.flush().await;
                    }
                });
            }
        } else {
            if let Some(stdout) = child.child.stdout.take() {
                let rx = pipe::Receiver::from_owned_fd(OwnedFd::from(stdout)).map_err(|e| EngineError::io("exec stdout", e))?;
                readers.push(tokio::spawn(pump(rx, 1, out_tx.clone(), detach || !config.attach_stdout)));
            }
            if let Some(stderr) = child.child.stderr.take() {
                let rx = pipe::Receiver::from_owned_fd(OwnedFd::from(stderr)).map_err(|e| EngineError::io("exec stderr", e))?;
                readers.push(tokio::spawn(pump(rx, 2, out_tx.clone(), detach || !config.attach_stderr)));
            }
            if let Some(stdin) = child.child.stdin.take() {
                let tx = pipe::Sender::from_owned_fd(OwnedFd::from(stdin)).map_err(|e| EngineError::io("exec stdin", e))?;
                if want_stdin {
                    tokio::spawn(async move {
                        let mut tx = tx;
                        while let Some(chunk) = in_rx.recv().await {
                            if tx.write_all(&chunk).await.is_err() {
                                break;
                            }
                        }
                    });
                } else {
                    drop(tx);
                }
            }
        }
        drop(out_tx);

        let mut proc = child.child;
        let inst = instance.clone();
        let engine = self.clone();
        let exec_id = id.to_string();
        let finisher = tokio::spawn(async move {
            let status = tokio::task::spawn_blocking(move || proc.wait()).await;
            let code = match status {
                Ok(Ok(s)) => {
                    use std::os::unix::process::ExitStatusExt;
                    s.code().map(i64::from).unwrap_or_else(|| 128 + i64::from(s.signal().unwrap_or(0)))
                }
                _ => 126,
            };
            {
                let mut view = lock(&inst.state);
                view.running = false;
                view.exit_code = Some(code);
            }
            *lock(&inst.pty) = None;
            let _ = std::fs::remove_file(&process_json);
            debug!(exec = %exec_id, code, "exec finished");
            if let Ok(c) = engine.find(&inst.container_id) {
                let snapshot = c.snapshot();
                engine.emit_container("exec_die", &snapshot, &[("execID", exec_id.clone()), ("exitCode", code.to_string())]);
            }
            code
        });

        if detach {
            return Ok(None);
        }
        // Forward output only after the exit code is known, so the client's inspect right after
        // EOF sees it.
        let (final_tx, final_rx) = mpsc::channel::<(u8, Bytes)>(64);
        let mut out_rx = out_rx;
        tokio::spawn(async move {
            while let Some(chunk) = out_rx.recv().await {
                if final_tx.send(chunk).await.is_err() {
                    break;
                }
            }
            for r in readers {
                let _ = r.await;
            }
            let _ = finisher.await;
            drop(final_tx);
        });
        Ok(Some(ExecSession { tty: config.tty, output: final_rx, stdin: want_stdin.then_some(in_tx) }))
    }
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(mut reader: R, stream: u8, tx: mpsc::Sender<(u8, Bytes)>, discard: bool) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !discard && tx.send((stream, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                    // The client went away; keep draining so the process never blocks on output.
                    continue;
                }
            }
        }
    }
}

/// All descendants of `pid` (children first-level first), from `/proc/<pid>/task/*/children`.
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("children")) else { continue };
            for child in text.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                if !out.contains(&child) {
                    out.push(child);
                    queue.push(child);
                }
            }
        }
    }
    out
}

fn pidfd_kill(fd: &OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal with a valid pidfd owned by `fd`, SIGKILL, a NULL siginfo and no
    // flags; no memory is passed to the kernel.
    let rc = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn dup_fd(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone().map_err(|e| EngineError::io("duplicating the pty master", e))
}

pub(crate) fn set_winsize(fd: &OwnedFd, height: u16, width: u16) -> Result<()> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a `winsize` from the pointer, which points to a valid local value;
    // the fd is an open pty master owned by `fd` for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        return Err(EngineError::io("resizing the exec tty", std::io::Error::last_os_error()));
    }
    Ok(())
}

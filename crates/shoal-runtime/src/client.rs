//! Daemon-side helpers for talking to shims. All blocking and std-only: call them from a
//! blocking context (e.g. `tokio::task::spawn_blocking`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::shim::ShimArgs;
use crate::RuntimeError;

/// How long [`spawn_shim`] waits for the shim's ready report.
pub const SHIM_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a successfully started shim reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimStarted {
    pub shim_pid: i32,
    pub init_pid: i32,
}

/// `exit.json` written by the shim when the container's init exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, or 128+signal when killed by a signal.
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// RFC3339Nano, UTC.
    pub finished_at: String,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeRequest {
    pub height: u16,
    pub width: u16,
}

/// A control-socket request: `{"kill":15}`, `{"resize":{"height":24,"width":80}}` or
/// `{"start":true}` (only meaningful for a shim spawned with `start_gated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlRequest {
    Kill(i32),
    Resize(ResizeRequest),
    Start(bool),
}

/// The single JSON line a shim writes on its ready pipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReadyReport {
    pub ok: bool,
    #[serde(default)]
    pub shim_pid: i32,
    #[serde(default)]
    pub init_pid: i32,
    #[serde(default)]
    pub error: Option<String>,
    /// Docker's exit code for command-not-startable failures (126/127).
    #[serde(default)]
    pub exit_code: Option<i32>,
}

impl ReadyReport {
    pub(crate) fn success(shim_pid: i32, init_pid: i32) -> Self {
        ReadyReport {
            ok: true,
            shim_pid,
            init_pid,
            error: None,
            exit_code: None,
        }
    }
    pub(crate) fn failure(error: String, exit_code: Option<i32>) -> Self {
        ReadyReport {
            ok: false,
            shim_pid: 0,
            init_pid: 0,
            error: Some(error),
            exit_code,
        }
    }
}

/// Makes `fd` the child's fd `target` (clearing CLOEXEC) in a `pre_exec` hook.
pub(crate) fn map_fd_in_child(cmd: &mut Command, fd: i32, target: i32) {
    // SAFETY: the closure runs between fork and exec and only calls the async-signal-safe
    // functions dup2 and fcntl; it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            if fd == target {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Spawns `<exe> shim <args>` and waits (bounded by [`SHIM_READY_TIMEOUT`]) until the shim
/// reports that the container is started (or created, with `start_gated`), or why it failed.
/// A failure to find the command yields [`RuntimeError::Exec`] with Docker's text.
pub fn spawn_shim(exe: &Path, args: &ShimArgs) -> Result<ShimStarted, RuntimeError> {
    crate::shim::validate_id(&args.id)?;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::sys("pipe2", e))?;
    // The ready pipe goes in as the shim's stdout: with no fork-time hook, std spawns it with
    // posix_spawn (vfork semantics) instead of fork, so the daemon's page tables are not copied
    // for every container.
    let mut cmd = Command::new(exe);
    cmd.arg("shim")
        .args(args.to_argv())
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::null());
    let started = Instant::now();
    let spawned = cmd.spawn();
    drop(cmd); // our copy of the write end: the read end sees EOF once the shim is done with it
    let mut child = spawned.map_err(|e| RuntimeError::io("spawn shim", exe, e))?;
    tracing::debug!(id = %args.id, pid = child.id(), "spawned shim");

    let mut reader = std::fs::File::from(r);
    let line = read_line_with_deadline(&mut reader, started + SHIM_READY_TIMEOUT, Some(&mut child));
    // The intermediate process exits right after forking the real shim.
    let _ = child.wait();
    match line {
        Ok(Some(line)) => {
            let rep: ReadyReport = serde_json::from_slice(&line).map_err(|e| {
                RuntimeError::Protocol(format!("bad ready report from shim {}: {e}", args.id))
            })?;
            if rep.ok {
                tracing::info!(id = %args.id, shim_pid = rep.shim_pid, init_pid = rep.init_pid,
                    elapsed_ms = started.elapsed().as_millis() as u64, "shim ready");
                Ok(ShimStarted {
                    shim_pid: rep.shim_pid,
                    init_pid: rep.init_pid,
                })
            } else {
                let msg = rep.error.unwrap_or_else(|| "unknown shim failure".into());
                match rep.exit_code {
                    Some(code) => Err(RuntimeError::Exec {
                        message: msg,
                        exit_code: code,
                    }),
                    None => Err(RuntimeError::ShimFailed(msg)),
                }
            }
        }
        Ok(None) => Err(RuntimeError::ShimFailed(format!(
            "shim for container {} exited without reporting",
            args.id
        ))),
        Err(()) => {
            tracing::error!(id = %args.id, "shim did not report in time; killing it");
            if let Some(pid) = read_pid(&args.shim_dir.join("shim.pid")) {
                if pid_is_shim(pid, &args.id) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            cleanup_stale(&args.runtime_root, &args.id);
            Err(RuntimeError::ShimTimeout(args.id.clone()))
        }
    }
}

/// Reads one '\n'-terminated line. Ok(None) on EOF without a line, Err(()) on timeout.
pub(crate) fn read_line_with_deadline(
    f: &mut std::fs::File,
    deadline: Instant,
    mut child: Option<&mut std::process::Child>,
) -> Result<Option<Vec<u8>>, ()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            buf.truncate(pos);
            return Ok(Some(buf));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(());
        }
        if let Some(c) = child.as_deref_mut() {
            let _ = c.try_wait();
        }
        let ms = deadline.duration_since(now).as_millis().min(200) as i32;
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, length 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            continue;
        }
        match f.read(&mut chunk) {
            Ok(0) => {
                return if buf.is_empty() {
                    Ok(None)
                } else {
                    Ok(Some(buf))
                }
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(None),
        }
    }
}

fn read_pid(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p: &i32| *p > 0)
}

/// True when /proc/<pid>/cmdline is `<exe> shim ... --id <id> ...`.
fn pid_is_shim(pid: i32, id: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    if argv.get(1) != Some(&&b"shim"[..]) {
        return false;
    }
    argv.windows(2)
        .any(|w| w[0] == b"--id" && w[1] == id.as_bytes())
}

/// `Some((shim_pid, init_pid))` when the shim for `id` is running (pid files present and
/// /proc/<pid>/cmdline is our shim for that id).
pub fn shim_alive(shim_dir: &Path, id: &str) -> Option<(i32, i32)> {
    let shim = read_pid(&shim_dir.join("shim.pid"))?;
    let init = read_pid(&shim_dir.join("init.pid"))?;
    pid_is_shim(shim, id).then_some((shim, init))
}

/// Parses `exit.json` if the shim wrote it.
pub fn read_exit(shim_dir: &Path) -> Option<ExitInfo> {
    let data = std::fs::read(shim_dir.join("exit.json")).ok()?;
    serde_json::from_slice(&data).ok()
}

/// Connects to `attach.sock` and sends the attach header. Read stdcopy frames from the returned
/// stream; write stdin bytes to it (only forwarded when `stdin` is true).
pub fn attach(
    shim_dir: &Path,
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> Result<UnixStream, RuntimeError> {
    let p = shim_dir.join("attach.sock");
    let mut s = UnixStream::connect(&p).map_err(|e| RuntimeError::io("connect", &p, e))?;
    let mut hdr = serde_json::json!({"stdin": stdin, "stdout": stdout, "stderr": stderr})
        .to_string()
        .into_bytes();
    hdr.push(b'\n');
    s.write_all(&hdr)
        .map_err(|e| RuntimeError::io("write attach header", &p, e))?;
    Ok(s)
}

/// Sends one control request and waits for the reply.
pub fn control(shim_dir: &Path, req: &ControlRequest) -> Result<(), RuntimeError> {
    let p = shim_dir.join("control.sock");
    let mut s = UnixStream::connect(&p).map_err(|e| RuntimeError::io("connect", &p, e))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let mut line = serde_json::to_vec(req).map_err(|e| RuntimeError::Protocol(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| RuntimeError::io("write control request", &p, e))?;
    let mut reply = String::new();
    BufReader::new(&s)
        .read_line(&mut reply)
        .map_err(|e| RuntimeError::io("read control reply", &p, e))?;
    #[derive(Deserialize)]
    struct Reply {
        ok: bool,
        #[serde(default)]
        error: Option<String>,
    }
    let r: Reply = serde_json::from_str(reply.trim())
        .map_err(|e| RuntimeError::Protocol(format!("bad control reply {reply:?}: {e}")))?;
    if r.ok {
        Ok(())
    } else {
        Err(RuntimeError::ShimFailed(
            r.error.unwrap_or_else(|| "control request failed".into()),
        ))
    }
}

/// `pidfd_open(2)`: readable when `pid` exits (works for non-children such as the shim).
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, RuntimeError> {
    crate::shim::raw_pidfd_open(pid)
}

/// Force-deletes libcontainer state and cgroup of `id` whose shim is gone.
pub fn cleanup_stale(runtime_root: &Path, id: &str) {
    if crate::shim::validate_id(id).is_err() {
        return;
    }
    crate::shim::cleanup_container(runtime_root, id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_wire_format() {
        assert_eq!(
            serde_json::to_string(&ControlRequest::Kill(15)).unwrap(),
            r#"{"kill":15}"#
        );
        assert_eq!(
            serde_json::to_string(&ControlRequest::Resize(ResizeRequest {
                height: 24,
                width: 80
            }))
            .unwrap(),
            r#"{"resize":{"height":24,"width":80}}"#
        );
        assert_eq!(
            serde_json::to_string(&ControlRequest::Start(true)).unwrap(),
            r#"{"start":true}"#
        );
        let e: ExitInfo = serde_json::from_str(
            r#"{"exit_code":137,"signal":9,"finished_at":"2026-11-24T10:00:00.123456789Z","oom_killed":false,"error":null}"#,
        )
        .unwrap();
        assert_eq!(e.exit_code, 137);
        assert_eq!(e.signal, Some(9));
    }
}

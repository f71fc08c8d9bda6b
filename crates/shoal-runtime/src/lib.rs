//! shoal-runtime owns turning a container description into an OCI bundle and running it with
//! youki's `libcontainer` inside a small single-threaded per-container shim process — never inside
//! the multi-threaded daemon (libcontainer changes the process cwd and forks; fork after threads is
//! undefined behaviour). The shim is the `shoal` binary re-executed as `shoal shim <args>`; it
//! detaches from the daemon (so containers survive a daemon restart), owns the container's stdio,
//! writes the json-file log, serves `attach.sock`/`control.sock`, and records `exit.json` when the
//! container's init exits. `shoal exec-helper <args>` runs one `docker exec` process the same way.
//! This crate knows nothing about HTTP, images or swarm; paths and wire formats follow
//! `docs/CONTRACTS.md`.
//!
//! Layout: [`spec`] (config.json generation), [`user`] (`-u` resolution inside an untrusted
//! rootfs), [`shim`] (the shim process and its event loop), [`client`] (daemon-side blocking
//! helpers), [`exec`] (the exec helper), [`logfile`] (json-file log lines and stdcopy frames).

pub mod client;
pub mod exec;
pub mod logfile;
pub mod safepath;
pub mod shim;
pub mod spec;
mod trim;
pub mod user;

pub use client::{
    attach, cleanup_stale, control, pidfd_open, read_exit, shim_alive, spawn_shim, ControlRequest,
    ExitInfo, ResizeRequest, ShimStarted,
};
pub use exec::{
    exec_helper_main, spawn_exec, write_exec_process, ExecChild, ExecHelperArgs, ExecProcessInput,
};
pub use shim::{shim_main, ShimArgs};
pub use spec::{build_spec, default_capabilities, write_bundle, MountKind, MountSpec, SpecInput};
pub use user::{resolve_user, ResolvedUser};

/// Every error this crate returns. Messages are lower-case and name the input that failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The caller passed something we cannot turn into a container (bad capability, argv...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// `-u` named a user or group the rootfs does not know.
    #[error("{0}")]
    UserNotFound(String),
    /// The container's command cannot be executed (Docker-like text, e.g.
    /// `exec: "nosuchcmd": executable file not found in $PATH`).
    #[error("{message}")]
    Exec {
        /// Docker-like description.
        message: String,
        /// Exit code Docker uses for this failure (126 or 127).
        exit_code: i32,
    },
    /// An I/O operation on `path` failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// libcontainer refused or failed an operation.
    #[error("libcontainer {op} for container {id}: {message}")]
    Libcontainer {
        op: &'static str,
        id: String,
        message: String,
    },
    /// OCI spec construction or serialisation failed.
    #[error("oci spec: {0}")]
    Spec(String),
    /// The shim reported a failure to create or start the container.
    #[error("{0}")]
    ShimFailed(String),
    /// The shim did not report within the timeout.
    #[error("shim for container {0} did not report readiness in time")]
    ShimTimeout(String),
    /// A protocol exchange with the shim failed.
    #[error("shim protocol: {0}")]
    Protocol(String),
    /// A system call failed.
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: nix::Error,
    },
}

impl RuntimeError {
    pub(crate) fn io(
        op: &'static str,
        path: impl AsRef<std::path::Path>,
        source: std::io::Error,
    ) -> Self {
        RuntimeError::Io {
            op,
            path: path.as_ref().display().to_string(),
            source,
        }
    }
    pub(crate) fn sys(op: &'static str, source: nix::Error) -> Self {
        RuntimeError::Sys { op, source }
    }
}

/// Runs the helper subcommand named by `argv[1]` (`shim` or `exec-helper`) and returns its exit
/// code, or None for anything else. Call it first thing in `main`, before any thread exists:
/// both helpers fork and the shim drives libcontainer, which must not run in a threaded process.
pub fn helper_main(argv: &[String]) -> Option<i32> {
    let rest = argv.get(2..).unwrap_or_default();
    match argv.get(1).map(String::as_str) {
        Some("shim") => Some(match ShimArgs::from_argv(rest) {
            Ok(args) => shim_main(args),
            Err(e) => {
                eprintln!("shoal shim: {e}");
                2
            }
        }),
        Some("exec-helper") => Some(match ExecHelperArgs::from_argv(rest) {
            Ok(args) => exec_helper_main(args),
            Err(e) => {
                eprintln!("shoal exec-helper: {e}");
                2
            }
        }),
        _ => None,
    }
}

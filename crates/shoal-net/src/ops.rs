//! Side effects behind a trait: bridge, veth, netns, sysctl, nftables and port probing.
//!
//! [`SystemOps`] builds container endpoints over rtnetlink ([`crate::netlink`]) and shells out to
//! `ip` (iproute2) and `nft -f -` for the rest (bridge setup, rulesets: rare, a few ms each). Every
//! operation runs on a dedicated, short-lived OS thread that first `setns`es into the host
//! network namespace captured at construction (or into a container's namespace), because
//! `setns(CLONE_NEWNET)` only affects the calling thread and child processes inherit the netns of
//! the thread that spawns them. Such threads are never returned to a pool: they end with the call.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::NetError;
use crate::netlink::{Rtnl, VethPair};
use crate::ports::Proto;

/// The loopback device's index in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

/// What [`NetOps::create_endpoint`] must build.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    pub netns_path: PathBuf,
    pub host_veth: String,
    pub bridge: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    pub mtu: u32,
}

/// Bridge parameters needed by [`NetOps::ensure_bridge`].
#[derive(Debug, Clone)]
pub struct BridgeSpec {
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u32,
    pub netns_dir: PathBuf,
}

/// Kernel side effects used by [`crate::BridgeNetwork`]. Implementations must be idempotent
/// where documented.
pub trait NetOps: Send + Sync {
    /// Creates (if missing) and brings up the bridge with the gateway address, enables
    /// `ip_forward` and `route_localnet` on the bridge, and prepares `netns_dir` as a shared
    /// mountpoint. Idempotent.
    fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<(), NetError>;
    /// Atomically replaces our nft table with `script` (a complete `nft -f` script).
    fn apply_ruleset(&self, script: &str) -> Result<(), NetError>;
    /// Whether some socket in the host namespace already holds `proto` `port`.
    fn port_in_use(&self, proto: Proto, port: u16) -> bool;
    /// Creates the netns file, veth pair and in-namespace addressing. On error, nothing is left.
    /// Returns `Err` whose message contains "File exists" if `host_veth` is taken.
    fn create_endpoint(&self, spec: &EndpointSpec) -> Result<(), NetError>;
    /// Deletes the veth (host side if known, else eth0 inside the netns) and unmounts and removes
    /// the netns file. Idempotent.
    fn remove_endpoint(&self, netns_path: &Path, host_veth: Option<&str>) -> Result<(), NetError>;
    /// Removes stale leftovers at `netns_path` (a file from a crashed daemon). Idempotent.
    fn remove_netns_file(&self, netns_path: &Path) -> Result<(), NetError>;
    /// Deletes our nft table and the bridge and unmounts `netns_dir`. Best effort.
    fn teardown(&self, spec: &BridgeSpec, table: &str) -> Result<(), NetError>;
}

/// Runs `f` on a fresh OS thread that has joined the network namespace `ns`.
pub fn in_netns<T: Send>(
    ns: &OwnedFd,
    what: &str,
    f: impl FnOnce() -> Result<T, NetError> + Send,
) -> Result<T, NetError> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("shoal-netns".into())
            .spawn_scoped(s, move || {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetError::sys("setns", what, e))?;
                f()
            })
            .map_err(|e| NetError::io("spawn thread for", what, e))?;
        handle.join().map_err(|_| NetError::Internal(format!("netns thread for {what} panicked")))?
    })
}

/// Like [`in_netns`] but opens the namespace from a path (e.g. a bind-mounted netns file).
pub fn in_netns_path<T: Send>(path: &Path, f: impl FnOnce() -> Result<T, NetError> + Send) -> Result<T, NetError> {
    let fd: OwnedFd = File::open(path).map_err(|e| NetError::io("open netns", path.display(), e))?.into();
    in_netns(&fd, &path.display().to_string(), f)
}

/// Opens the network namespace of the calling thread.
pub fn current_netns() -> Result<OwnedFd, NetError> {
    let p = "/proc/thread-self/ns/net";
    Ok(File::open(p).map_err(|e| NetError::io("open", p, e))?.into())
}

/// Runs a command (in the calling thread's namespaces), feeding `stdin`; returns stdout.
pub fn run(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    let cmdline = || format!("{prog} {}", args.join(" "));
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::io("spawn", cmdline(), e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(|e| NetError::io("write stdin of", cmdline(), e))?;
    }
    let out = child.wait_with_output().map_err(|e| NetError::io("wait for", cmdline(), e))?;
    if !out.status.success() {
        return Err(NetError::Command {
            cmd: cmdline(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn is_not_found(e: &NetError) -> bool {
    matches!(e, NetError::Command { stderr, .. }
        if stderr.contains("Cannot find device") || stderr.contains("does not exist") || stderr.contains("No such file"))
}

pub(crate) fn write_sysctl(path: &str, value: &str) -> Result<(), NetError> {
    std::fs::write(path, value).map_err(|e| NetError::io("write sysctl", path, e))
}

/// Makes `dir` a shared mountpoint (bind-mounting it onto itself first if it is not a
/// mountpoint), like iproute2 does for /run/netns, so netns bind mounts below it propagate
/// their unmounts into mount namespaces copied from ours.
fn make_shared_mountpoint(dir: &Path) -> Result<(), NetError> {
    std::fs::create_dir_all(dir).map_err(|e| NetError::io("create dir", dir.display(), e))?;
    let shared = || mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
    match shared() {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .map_err(|e| NetError::sys("bind mount", dir.display(), e))?;
            shared().map_err(|e| NetError::sys("make shared", dir.display(), e))
        }
        Err(e) => Err(NetError::sys("make shared", dir.display(), e)),
    }
}

fn unmount_and_remove(path: &Path) -> Result<(), NetError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(NetError::sys("unmount", path.display(), e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetError::io("remove", path.display(), e)),
    }
}

/// Creates a new network namespace bind-mounted at `path` (on a throwaway thread).
fn create_netns_file(path: &Path) -> Result<(), NetError> {
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("shoal-netns-new".into())
            .spawn_scoped(s, || {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetError::sys("unshare netns for", path.display(), e))?;
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o444)
                    .open(path)
                    .map_err(|e| NetError::io("create netns file", path.display(), e))?;
                let src = "/proc/thread-self/ns/net";
                if let Err(e) = mount(Some(src), path, None::<&str>, MsFlags::MS_BIND, None::<&str>) {
                    let _ = std::fs::remove_file(path);
                    return Err(NetError::sys("bind mount netns at", path.display(), e));
                }
                Ok(())
            })
            .map_err(|e| NetError::io("spawn thread for", path.display(), e))?;
        h.join().map_err(|_| NetError::Internal(format!("netns creation thread for {} panicked", path.display())))?
    })
}

/// The real implementation: `ip`, `nft`, sysctls via /proc, mounts via nix.
pub struct SystemOps {
    host_ns: OwnedFd,
}

impl SystemOps {
    /// Captures the network namespace of the calling thread as the "host" namespace.
    pub fn new() -> Result<Self, NetError> {
        Ok(SystemOps { host_ns: current_netns()? })
    }

    fn host<T: Send>(&self, what: &str, f: impl FnOnce() -> Result<T, NetError> + Send) -> Result<T, NetError> {
        in_netns(&self.host_ns, what, f)
    }
}

impl NetOps for SystemOps {
    fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<(), NetError> {
        let br = spec.bridge.as_str();
        self.host("ensure bridge", || {
            match run("ip", &["-d", "-j", "link", "show", "dev", br], None) {
                Ok(json) => {
                    let v: serde_json::Value = serde_json::from_str(&json)
                        .map_err(|e| NetError::Internal(format!("parse ip -j link show {br}: {e}")))?;
                    let kind = v[0]["linkinfo"]["info_kind"].as_str().unwrap_or("").to_string();
                    if kind != "bridge" {
                        return Err(NetError::NotABridge { name: br.to_string(), kind });
                    }
                }
                Err(e) if is_not_found(&e) => {
                    if let Err(e) = run("ip", &["link", "add", "name", br, "type", "bridge"], None) {
                        // lost a race with a concurrent setup: fine if it now exists
                        if !matches!(&e, NetError::Command { stderr, .. } if stderr.contains("File exists")) {
                            return Err(e);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
            let batch = format!(
                "link set dev {br} mtu {mtu} up\naddr replace {gw}/{p} dev {br}\n",
                mtu = spec.mtu,
                gw = spec.gateway,
                p = spec.prefix_len
            );
            run("ip", &["-batch", "-"], Some(&batch))?;
            write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
            write_sysctl(&format!("/proc/sys/net/ipv4/conf/{br}/route_localnet"), "1")?;
            Ok(())
        })?;
        make_shared_mountpoint(&spec.netns_dir)
    }

    fn apply_ruleset(&self, script: &str) -> Result<(), NetError> {
        self.host("apply nft ruleset", || run("nft", &["-f", "-"], Some(script)).map(|_| ()))
    }

    fn port_in_use(&self, proto: Proto, port: u16) -> bool {
        let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
        self.host("probe port", || {
            Ok(match proto {
                Proto::Tcp => TcpListener::bind(addr).is_err(),
                Proto::Udp => UdpSocket::bind(addr).is_err(),
            })
        })
        .unwrap_or(true)
    }

    fn create_endpoint(&self, spec: &EndpointSpec) -> Result<(), NetError> {
        let path = spec.netns_path.as_path();
        let mac = crate::netlink::parse_mac(&spec.mac)?;
        create_netns_file(path)?;
        let netns: OwnedFd = match File::open(path) {
            Ok(f) => f.into(),
            Err(e) => {
                let _ = unmount_and_remove(path);
                return Err(NetError::io("open netns", path.display(), e));
            }
        };
        // Host side: the veth pair, its peer created directly as eth0 inside the container netns.
        let host = self.host("create veth", || {
            let mut nl = Rtnl::open()?;
            let bridge_index = nl
                .link_index(&spec.bridge)?
                .ok_or_else(|| NetError::NotABridge { name: spec.bridge.clone(), kind: "missing".into() })?;
            nl.add_veth(&VethPair {
                host_name: &spec.host_veth,
                bridge_index,
                mtu: spec.mtu,
                peer_name: "eth0",
                peer_mac: mac,
                peer_netns: netns.as_fd(),
            })
        });
        if let Err(e) = host {
            if e.to_string().contains("File exists") {
                // The name belongs to someone else: leave that link alone, drop only our netns.
                let _ = unmount_and_remove(path);
            } else {
                let _ = self.remove_endpoint(path, Some(&spec.host_veth));
            }
            return Err(e);
        }
        // Container side, from a thread inside the new netns.
        let inside = in_netns(&netns, &path.display().to_string(), || {
            let mut nl = Rtnl::open()?;
            nl.set_up(LOOPBACK_INDEX)?;
            let eth0 = nl.link_index("eth0")?.ok_or_else(|| NetError::Internal(format!("eth0 missing in {}", path.display())))?;
            nl.add_address(eth0, spec.ip, spec.prefix_len)?;
            nl.set_up(eth0)?;
            nl.add_default_route(spec.gateway, eth0)
        });
        if let Err(e) = inside {
            let _ = self.remove_endpoint(path, Some(&spec.host_veth));
            return Err(e);
        }
        Ok(())
    }

    fn remove_endpoint(&self, netns_path: &Path, host_veth: Option<&str>) -> Result<(), NetError> {
        match host_veth {
            Some(v) => self.host("delete veth", || Rtnl::open()?.delete_link(v))?,
            None if netns_path.exists() => {
                // Host side name unknown (e.g. after a daemon restart): delete the peer from inside.
                if let Err(e) = in_netns_path(netns_path, || Rtnl::open()?.delete_link("eth0")) {
                    tracing::warn!(netns = %netns_path.display(), error = %e, "could not delete eth0 in container netns");
                }
            }
            None => {}
        }
        unmount_and_remove(netns_path)
    }

    fn remove_netns_file(&self, netns_path: &Path) -> Result<(), NetError> {
        unmount_and_remove(netns_path)
    }

    fn teardown(&self, spec: &BridgeSpec, table: &str) -> Result<(), NetError> {
        let br = spec.bridge.as_str();
        self.host("teardown", || {
            if let Err(e) = run("nft", &["delete", "table", "ip", table], None) {
                if !is_not_found(&e) && !matches!(&e, NetError::Command { stderr, .. } if stderr.contains("No such")) {
                    tracing::warn!(table, error = %e, "delete nft table");
                }
            }
            match run("ip", &["link", "del", "dev", br], None) {
                Err(e) if !is_not_found(&e) => Err(e),
                _ => Ok(()),
            }
        })?;
        match umount2(&spec.netns_dir, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(NetError::sys("unmount", spec.netns_dir.display(), e)),
        }
    }
}

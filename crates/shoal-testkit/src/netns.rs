//! Network namespace guards: a single [`Netns`] and a multi-node [`Lab`].

use crate::util::{random_hex, run_ok};
use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

#[derive(Debug)]
struct NetnsInner {
    name: String,
    path: PathBuf,
}

impl Drop for NetnsInner {
    fn drop(&mut self) {
        match Command::new("ip").args(["netns", "del", &self.name]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "shoal-testkit: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("shoal-testkit: ip netns del {}: {e}", self.name),
        }
    }
}

/// A named network namespace (`ip netns add <prefix>-<random>`, `lo` up).
/// Cloning shares it; the namespace is deleted when the last clone drops.
#[derive(Debug, Clone)]
pub struct Netns(Arc<NetnsInner>);

impl Netns {
    /// Creates `<prefix>-<6 random hex>` with loopback up. Panics on failure.
    pub fn new(prefix: &str) -> Netns {
        let name = format!("{prefix}-{}", random_hex(3));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns(Arc::new(NetnsInner { path: PathBuf::from(format!("/run/netns/{name}")), name }));
        run_ok(Command::new("ip").args(["-n", ns.name(), "link", "set", "lo", "up"]));
        ns
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// `--net=/run/netns/<name>`, the nsenter argument.
    pub fn nsenter_arg(&self) -> String {
        format!("--net={}", self.path().display())
    }

    /// A `Command` that runs `program` inside this namespace via
    /// `nsenter --net=<path> -- program` (not `ip netns exec`, which remounts /sys).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(self.nsenter_arg()).arg("--").arg(program);
        c
    }

    /// `ip -n <name> <args>`; panics on failure, returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").arg("-n").arg(self.name()).args(args))
    }

    /// Runs `f` on a fresh thread that has entered this namespace (sockets it opens live here).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> std::io::Result<R> {
        let file = fs::File::open(self.path())?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on a valid fd affects only this thread's network namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

/// A lab for multi-node tests: a bridge `br0` in its own namespace (the hub) and N node
/// namespaces, each connected by a veth pair (`eth0` in the node, `v<i>` on the bridge) with
/// address `10.<x>.<y>.<i+1>/24`. Everything lives in namespaces the lab created, so the host's
/// bridges and firewall are untouched; dropping the lab deletes them all (a node namespace that
/// a [`crate::Daemon`] still holds is deleted when that daemon drops).
#[derive(Debug)]
pub struct Lab {
    // Field order is drop order: nodes, then the hub.
    nodes: Vec<Netns>,
    hub: Netns,
    net: [u8; 2],
}

impl Lab {
    /// Creates the hub and `n` nodes (`n` ≤ 253). Panics on failure (partial state is removed).
    pub fn new(prefix: &str, n: usize) -> Lab {
        assert!(n <= 253, "at most 253 nodes");
        let r = random_hex(2);
        let rb = hex::decode(&r).unwrap();
        let net = [200 + rb[0] % 50, rb[1]];
        let hub = Netns::new(&format!("{prefix}-hub"));
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["link", "set", "br0", "up"]);
        let mut lab = Lab { nodes: Vec::new(), hub, net };
        for i in 0..n {
            let node = Netns::new(&format!("{prefix}-n{i}"));
            let veth = format!("v{i}");
            lab.hub.ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", node.name()]);
            lab.hub.ip(&["link", "set", &veth, "master", "br0", "up"]);
            let addr = format!("{}/24", lab.addr_of(i));
            node.ip(&["addr", "add", &addr, "dev", "eth0"]);
            node.ip(&["link", "set", "eth0", "up"]);
            lab.nodes.push(node);
        }
        lab
    }

    pub fn node(&self, i: usize) -> &Netns {
        &self.nodes[i]
    }

    pub fn nodes(&self) -> &[Netns] {
        &self.nodes
    }

    /// The namespace holding the bridge.
    pub fn hub(&self) -> &Netns {
        &self.hub
    }

    /// Address of node `i`: `10.x.y.(i+1)`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.nodes.len());
        self.addr_of(i)
    }

    fn addr_of(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net[0], self.net[1], (i + 1) as u8)
    }

    /// The lab subnet, e.g. `10.231.7.0/24`.
    pub fn subnet(&self) -> String {
        format!("10.{}.{}.0/24", self.net[0], self.net[1])
    }
}

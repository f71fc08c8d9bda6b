//! The mesh's kernel side effects behind [`MeshOps`], and [`SystemMeshOps`] doing them with
//! `ip`, `bridge` and `nft` from dedicated threads `setns`ed into the host namespace (the same
//! discipline as [`crate::SystemOps`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::names::{self, DeviceKind};
use crate::error::NetError;
use crate::ipam::{mac_for_ip, Ipv4Net};
use crate::ops::{current_netns, in_netns, in_netns_path, is_not_found, run, write_sysctl};

/// UDP port of our VXLAN devices (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// The devices of one overlay, as [`MeshOps::ensure_overlay`] must make them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaySpec {
    pub vni: u32,
    /// Linux bridge `<prefix><vni>`.
    pub bridge: String,
    /// VXLAN device `<prefix>x<vni>`, enslaved to `bridge`.
    pub vxlan: String,
    /// This node's underlay address (the VXLAN `local`).
    pub local: Ipv4Addr,
    pub subnet: Ipv4Net,
    /// Address of the bridge (`host_ip/<subnet prefix>`); the bridge's MAC is then
    /// `mac_for_ip(host_ip)` so peers can program it statically.
    pub host_ip: Option<Ipv4Addr>,
    pub mtu: u32,
    /// The ingress overlay: `ip_forward` and `route_localnet` on the bridge are switched on.
    pub ingress: bool,
}

/// Forwarding entries of one overlay (the ones the mesh owns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// VXLAN FDB entries `(mac, remote underlay)`; the all-zeros MAC is the flood list.
    pub fdb: BTreeSet<(String, Ipv4Addr)>,
    /// Permanent neighbour entries on the bridge, `ip -> mac`.
    pub neigh: BTreeMap<Ipv4Addr, String>,
}

/// The all-zeros MAC: FDB entries with it are the default destinations (flooding).
pub const ZERO_MAC: &str = "00:00:00:00:00:00";

/// Difference between two [`Forwarding`]s, applied deletions first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardingChanges {
    pub bridge: String,
    pub vxlan: String,
    pub fdb_del: Vec<(String, Ipv4Addr)>,
    /// Zero MAC entries are appended, others replaced.
    pub fdb_add: Vec<(String, Ipv4Addr)>,
    pub neigh_del: Vec<Ipv4Addr>,
    pub neigh_set: Vec<(Ipv4Addr, String)>,
}

impl ForwardingChanges {
    /// What turns `have` into `want` on `spec`'s devices.
    pub fn between(spec: &OverlaySpec, have: &Forwarding, want: &Forwarding) -> Self {
        ForwardingChanges {
            bridge: spec.bridge.clone(),
            vxlan: spec.vxlan.clone(),
            fdb_del: have.fdb.difference(&want.fdb).cloned().collect(),
            fdb_add: want.fdb.difference(&have.fdb).cloned().collect(),
            neigh_del: have.neigh.keys().filter(|ip| !want.neigh.contains_key(ip)).copied().collect(),
            neigh_set: want
                .neigh
                .iter()
                .filter(|(ip, mac)| have.neigh.get(ip) != Some(mac))
                .map(|(ip, mac)| (*ip, mac.clone()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fdb_del.is_empty() && self.fdb_add.is_empty() && self.neigh_del.is_empty() && self.neigh_set.is_empty()
    }
}

/// What [`MeshOps::ensure_overlay`] had to create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnsureOutcome {
    pub bridge_created: bool,
    /// The VXLAN device was created (or recreated because its parameters differed): its FDB
    /// is empty.
    pub vxlan_created: bool,
}

/// A veth from an overlay bridge into a container's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachSpec {
    pub netns_path: PathBuf,
    /// Host side `<prefix>v<8 hex>`, enslaved to `bridge`.
    pub host_veth: String,
    pub bridge: String,
    /// Container side name (e.g. `eth1`).
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: String,
    pub mtu: u32,
}

/// Kernel side effects of [`super::Mesh`]. Everything runs in the host namespace captured at
/// construction unless it names a container namespace.
pub trait MeshOps: Send + Sync {
    /// VNIs of overlay devices named by `prefix` that already exist (left by an earlier run).
    fn list_overlays(&self, prefix: &str) -> Result<Vec<u32>, NetError>;
    /// Creates what is missing, fixes what differs (MTU, MAC, address, master, up, sysctls).
    /// Idempotent.
    fn ensure_overlay(&self, spec: &OverlaySpec) -> Result<EnsureOutcome, NetError>;
    /// Reads the mesh-owned forwarding entries (VXLAN FDB entries with a remote, permanent
    /// neighbours on the bridge).
    fn read_forwarding(&self, spec: &OverlaySpec) -> Result<Forwarding, NetError>;
    /// Applies a diff (deletions first).
    fn update_forwarding(&self, changes: &ForwardingChanges) -> Result<(), NetError>;
    /// Deletes the overlay's VXLAN device and bridge and any veth still enslaved to the bridge;
    /// missing = Ok.
    fn delete_overlay(&self, bridge: &str, vxlan: &str) -> Result<(), NetError>;
    /// Runs a complete `nft -f` script (atomic).
    fn apply_ruleset(&self, script: &str) -> Result<(), NetError>;
    /// Creates the veth pair and the container-side addressing. On error nothing is left.
    fn attach(&self, spec: &AttachSpec) -> Result<(), NetError>;
    /// Removes a veth: by its host side name when known, else `ifname` inside `netns_path`
    /// (only if it is a veth). Missing = Ok.
    fn detach(&self, netns_path: &Path, ifname: &str, host_veth: Option<&str>) -> Result<(), NetError>;
    /// Deletes every device named by `prefix` (bridges, VXLAN devices, veths) and the table.
    fn teardown(&self, prefix: &str, table: &str) -> Result<(), NetError>;
}

/// The real [`MeshOps`].
pub struct SystemMeshOps {
    host_ns: OwnedFd,
}

impl SystemMeshOps {
    /// Captures the calling thread's network namespace as the host namespace.
    pub fn new() -> Result<Self, NetError> {
        Ok(SystemMeshOps { host_ns: current_netns()? })
    }

    fn host<T: Send>(&self, what: &str, f: impl FnOnce() -> Result<T, NetError> + Send) -> Result<T, NetError> {
        in_netns(&self.host_ns, what, f)
    }
}

fn parse_json(cmd: &str, out: &str) -> Result<Vec<Value>, NetError> {
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Value>(out) {
        Ok(Value::Array(v)) => Ok(v),
        Ok(_) => Err(NetError::Internal(format!("parse output of {cmd}: not a json array"))),
        Err(e) => Err(NetError::Internal(format!("parse output of {cmd}: {e}"))),
    }
}

/// One link from `ip -d -j link show`.
struct LinkInfo {
    name: String,
    kind: String,
    data: Value,
}

fn all_links() -> Result<Vec<LinkInfo>, NetError> {
    let out = run("ip", &["-d", "-j", "link", "show"], None)?;
    Ok(parse_json("ip -d -j link show", &out)?.into_iter().filter_map(link_info).collect())
}

fn link_info(v: Value) -> Option<LinkInfo> {
    Some(LinkInfo {
        name: v["ifname"].as_str()?.to_string(),
        kind: v["linkinfo"]["info_kind"].as_str().unwrap_or("").to_string(),
        data: v["linkinfo"]["info_data"].clone(),
    })
}

/// `None` if the device does not exist.
fn one_link(name: &str) -> Result<Option<LinkInfo>, NetError> {
    match run("ip", &["-d", "-j", "link", "show", "dev", name], None) {
        Ok(out) => Ok(parse_json("ip -d -j link show", &out)?.into_iter().filter_map(link_info).next()),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn del_link(name: &str) -> Result<(), NetError> {
    match run("ip", &["link", "del", "dev", name], None) {
        Err(e) if !is_not_found(&e) => Err(e),
        _ => Ok(()),
    }
}

fn file_exists(e: &NetError) -> bool {
    matches!(e, NetError::Command { stderr, .. } if stderr.contains("File exists"))
}

fn vxlan_matches(l: &LinkInfo, spec: &OverlaySpec) -> bool {
    l.kind == "vxlan"
        && l.data["id"].as_u64() == Some(u64::from(spec.vni))
        && l.data["local"].as_str() == Some(spec.local.to_string().as_str())
        && l.data["port"].as_u64() == Some(u64::from(VXLAN_PORT))
        && l.data["learning"].as_bool() == Some(false)
}

impl MeshOps for SystemMeshOps {
    fn list_overlays(&self, prefix: &str) -> Result<Vec<u32>, NetError> {
        let links = self.host("list overlays", all_links)?;
        let mut vnis = BTreeSet::new();
        for l in links {
            match names::parse(prefix, &l.name) {
                Some(DeviceKind::Bridge(v)) if l.kind == "bridge" => {
                    vnis.insert(v);
                }
                Some(DeviceKind::Vxlan(v)) if l.kind == "vxlan" => {
                    vnis.insert(v);
                }
                _ => {}
            }
        }
        Ok(vnis.into_iter().collect())
    }

    fn ensure_overlay(&self, spec: &OverlaySpec) -> Result<EnsureOutcome, NetError> {
        let (br, vx) = (spec.bridge.as_str(), spec.vxlan.as_str());
        self.host("ensure overlay", || {
            let mut out = EnsureOutcome::default();
            match one_link(br)? {
                Some(l) if l.kind == "bridge" => {}
                Some(l) => return Err(NetError::NotABridge { name: br.to_string(), kind: l.kind }),
                None => match run("ip", &["link", "add", "name", br, "type", "bridge"], None) {
                    Ok(_) => out.bridge_created = true,
                    Err(e) if file_exists(&e) => {}
                    Err(e) => return Err(e),
                },
            }
            let mut batch = String::new();
            match one_link(vx)? {
                Some(l) if vxlan_matches(&l, spec) => {}
                existing => {
                    if let Some(l) = existing {
                        tracing::warn!(device = vx, kind = %l.kind, data = %l.data, "recreating vxlan device with different parameters");
                        del_link(vx)?;
                    }
                    out.vxlan_created = true;
                    batch.push_str(&format!(
                        "link add {vx} mtu {mtu} type vxlan id {vni} local {local} dstport {VXLAN_PORT} nolearning\n",
                        mtu = spec.mtu,
                        vni = spec.vni,
                        local = spec.local
                    ));
                }
            }
            let mac = spec.host_ip.map(|ip| format!(" address {}", mac_for_ip(ip))).unwrap_or_default();
            batch.push_str(&format!("link set dev {br} mtu {mtu}{mac} up\n", mtu = spec.mtu));
            batch.push_str(&format!("link set dev {vx} mtu {mtu} master {br} up\n", mtu = spec.mtu));
            // Addresses: exactly host_ip/prefix (or none).
            let want = spec.host_ip.map(|ip| format!("{ip}/{}", spec.subnet.prefix_len()));
            let addrs = run("ip", &["-j", "-4", "addr", "show", "dev", br], None)?;
            for a in parse_json("ip -j addr show", &addrs)? {
                for info in a["addr_info"].as_array().into_iter().flatten() {
                    if let (Some(local), Some(len)) = (info["local"].as_str(), info["prefixlen"].as_u64()) {
                        let have = format!("{local}/{len}");
                        if Some(&have) != want.as_ref() {
                            batch.push_str(&format!("addr del {have} dev {br}\n"));
                        }
                    }
                }
            }
            if let Some(w) = &want {
                batch.push_str(&format!("addr replace {w} dev {br}\n"));
            }
            run("ip", &["-batch", "-"], Some(&batch))?;
            if spec.ingress {
                write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
                write_sysctl(&format!("/proc/sys/net/ipv4/conf/{br}/route_localnet"), "1")?;
            }
            Ok(out)
        })
    }

    fn read_forwarding(&self, spec: &OverlaySpec) -> Result<Forwarding, NetError> {
        let (br, vx) = (spec.bridge.as_str(), spec.vxlan.as_str());
        self.host("read forwarding", || {
            let mut f = Forwarding::default();
            let fdb = run("bridge", &["-j", "fdb", "show", "dev", vx], None)?;
            for e in parse_json("bridge -j fdb show", &fdb)? {
                let dst = e["dst"].as_str().and_then(|d| d.parse::<Ipv4Addr>().ok());
                if let (Some(mac), Some(dst)) = (e["mac"].as_str(), dst) {
                    f.fdb.insert((mac.to_ascii_lowercase(), dst));
                }
            }
            let neigh = run("ip", &["-j", "-4", "neigh", "show", "dev", br, "nud", "permanent"], None)?;
            for n in parse_json("ip -j neigh show", &neigh)? {
                let ip = n["dst"].as_str().and_then(|d| d.parse::<Ipv4Addr>().ok());
                if let (Some(ip), Some(mac)) = (ip, n["lladdr"].as_str()) {
                    f.neigh.insert(ip, mac.to_ascii_lowercase());
                }
            }
            Ok(f)
        })
    }

    fn update_forwarding(&self, ch: &ForwardingChanges) -> Result<(), NetError> {
        let (br, vx) = (ch.bridge.as_str(), ch.vxlan.as_str());
        let mut fdb = String::new();
        for (mac, dst) in &ch.fdb_del {
            fdb.push_str(&format!("fdb del {mac} dev {vx} dst {dst} self\n"));
        }
        for (mac, dst) in &ch.fdb_add {
            // The zero MAC holds a list of remotes: append adds one (appending a present one is
            // a no-op); a real MAC has one remote: replace creates or moves it.
            let verb = if mac == ZERO_MAC { "append" } else { "replace" };
            fdb.push_str(&format!("fdb {verb} {mac} dev {vx} dst {dst} self permanent\n"));
        }
        let mut neigh = String::new();
        for ip in &ch.neigh_del {
            neigh.push_str(&format!("neigh del {ip} dev {br}\n"));
        }
        for (ip, mac) in &ch.neigh_set {
            neigh.push_str(&format!("neigh replace {ip} lladdr {mac} dev {br} nud permanent\n"));
        }
        self.host("update forwarding", || {
            if !fdb.is_empty() {
                run("bridge", &["-batch", "-"], Some(&fdb))?;
            }
            if !neigh.is_empty() {
                run("ip", &["-batch", "-"], Some(&neigh))?;
            }
            Ok(())
        })
    }

    fn delete_overlay(&self, bridge: &str, vxlan: &str) -> Result<(), NetError> {
        self.host("delete overlay", || {
            // Container veths still enslaved (e.g. attached by a previous daemon) would be left
            // dangling: remove them with the bridge.
            match run("ip", &["-d", "-j", "link", "show", "master", bridge], None) {
                Ok(out) => {
                    for l in parse_json("ip -d -j link show master", &out)?.into_iter().filter_map(link_info) {
                        if l.kind == "veth" {
                            tracing::info!(device = %l.name, bridge, "deleting veth of removed overlay");
                            del_link(&l.name)?;
                        }
                    }
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
            del_link(vxlan)?;
            del_link(bridge)
        })
    }

    fn apply_ruleset(&self, script: &str) -> Result<(), NetError> {
        self.host("apply mesh nft ruleset", || run("nft", &["-f", "-"], Some(script)).map(|_| ()))
    }

    fn attach(&self, spec: &AttachSpec) -> Result<(), NetError> {
        let Some(path_s) = spec.netns_path.to_str() else {
            return Err(NetError::Internal(format!("non-utf8 netns path {}", spec.netns_path.display())));
        };
        let host_batch = format!(
            "link add {hv} mtu {mtu} master {br} up type veth peer name {ifn} mtu {mtu} address {mac} netns {path_s}\n",
            hv = spec.host_veth,
            mtu = spec.mtu,
            br = spec.bridge,
            ifn = spec.ifname,
            mac = spec.mac,
        );
        self.host("create overlay veth", || run("ip", &["-batch", "-"], Some(&host_batch)).map(|_| ()))?;
        let batch =
            format!("addr add {}/{} dev {ifn}\nlink set dev {ifn} up\n", spec.ip, spec.prefix_len, ifn = spec.ifname);
        if let Err(e) = in_netns_path(&spec.netns_path, || run("ip", &["-batch", "-"], Some(&batch)).map(|_| ())) {
            let hv = spec.host_veth.as_str();
            if let Err(e2) = self.host("delete overlay veth", || del_link(hv)) {
                tracing::warn!(host_veth = hv, error = %e2, "could not remove veth after failed attach");
            }
            return Err(e);
        }
        Ok(())
    }

    fn detach(&self, netns_path: &Path, ifname: &str, host_veth: Option<&str>) -> Result<(), NetError> {
        if let Some(hv) = host_veth {
            return self.host("delete overlay veth", || del_link(hv));
        }
        if !netns_path.exists() {
            return Ok(());
        }
        in_netns_path(netns_path, || match one_link(ifname)? {
            Some(l) if l.kind == "veth" => del_link(ifname),
            Some(l) => Err(NetError::Internal(format!(
                "refusing to detach {ifname} in {}: it is a {:?} device, not a veth",
                netns_path.display(),
                l.kind
            ))),
            None => Ok(()),
        })
    }

    fn teardown(&self, prefix: &str, table: &str) -> Result<(), NetError> {
        let script = super::render::render_mesh_delete(table);
        self.host("mesh teardown", || {
            let mut first: Option<NetError> = None;
            // veths first (they are enslaved), then vxlan devices, then bridges
            let links = all_links()?;
            let mut order: Vec<(u8, String)> = links
                .into_iter()
                .filter_map(|l| match (names::parse(prefix, &l.name), l.kind.as_str()) {
                    (Some(DeviceKind::Veth), "veth") => Some((0, l.name)),
                    (Some(DeviceKind::Vxlan(_)), "vxlan") => Some((1, l.name)),
                    (Some(DeviceKind::Bridge(_)), "bridge") => Some((2, l.name)),
                    _ => None,
                })
                .collect();
            order.sort();
            for (_, name) in order {
                if let Err(e) = del_link(&name) {
                    tracing::warn!(device = %name, error = %e, "mesh teardown: delete device");
                    first.get_or_insert(e);
                }
            }
            if let Err(e) = run("nft", &["-f", "-"], Some(&script)) {
                tracing::warn!(table, error = %e, "mesh teardown: delete nft table");
                first.get_or_insert(e);
            }
            first.map_or(Ok(()), Err)
        })
    }
}

//! The node-local bridge network (Docker's default `bridge`).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::ipam::{mac_for_ip, Ipam, Ipv4Net};
use crate::ops::{BridgeSpec, EndpointSpec, NetOps, SystemOps};
use crate::ports::{PortSpec, PortTable, Proto, PublishedPort};
use crate::rules::{render_ruleset, RuleInput};

/// Configuration of the bridge network. Names only need to be unique within the daemon's netns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeConfig {
    /// Bridge interface name (default `shoal0`).
    pub bridge: String,
    /// Subnet of the bridge (default 172.17.0.0/16).
    pub subnet: Ipv4Net,
    /// Address of the bridge, the containers' default gateway (default: first host address).
    pub gateway: Ipv4Addr,
    /// Name of our nftables table in family `ip` (default `shoal`).
    pub nft_table: String,
    /// Directory holding bind-mounted container network namespaces (`<exec-root>/netns`).
    pub netns_dir: PathBuf,
    /// MTU of the bridge and of every veth (default 1500).
    pub mtu: u32,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            bridge: "shoal0".into(),
            subnet: Ipv4Net::from_parts_unchecked(Ipv4Addr::new(172, 17, 0, 0), 16),
            gateway: Ipv4Addr::new(172, 17, 0, 1),
            nft_table: "shoal".into(),
            netns_dir: PathBuf::from("/var/run/shoal/netns"),
            mtu: 1500,
        }
    }
}

impl BridgeConfig {
    /// Defaults with `netns_dir = <exec_root>/netns`.
    pub fn with_exec_root(exec_root: impl Into<PathBuf>) -> Self {
        BridgeConfig { netns_dir: exec_root.into().join("netns"), ..Default::default() }
    }

    fn validate(&self) -> Result<(), NetError> {
        let bad = |field: &'static str, value: String, reason: &str| {
            Err(NetError::InvalidConfig { field, value, reason: reason.to_string() })
        };
        let ifname_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 15
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        if !ifname_ok(&self.bridge) {
            return bad("bridge", self.bridge.clone(), "must be 1-15 chars of [A-Za-z0-9_.-]");
        }
        let table_ok = !self.nft_table.is_empty()
            && self.nft_table.len() <= 64
            && self.nft_table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            && self.nft_table.as_bytes()[0].is_ascii_alphabetic();
        if !table_ok {
            return bad("nft_table", self.nft_table.clone(), "must be 1-64 chars of [A-Za-z0-9_-] starting with a letter");
        }
        if !(68..=65535).contains(&self.mtu) {
            return bad("mtu", self.mtu.to_string(), "must be 68-65535");
        }
        if !self.netns_dir.is_absolute() || self.netns_dir.to_str().is_none() {
            return bad("netns_dir", self.netns_dir.display().to_string(), "must be an absolute utf-8 path");
        }
        Ok(())
    }
}

/// A container's attachment to the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Bind-mounted network namespace (`<netns_dir>/<container id>`), for the OCI spec.
    pub netns_path: PathBuf,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    pub host_veth: String,
}

struct State {
    ipam: Ipam,
    ports: PortTable,
    /// container id -> host veth name (None when restored without knowing it).
    endpoints: HashMap<String, Option<String>>,
}

/// The bridge network of one daemon. `Send + Sync`; every method is blocking.
pub struct BridgeNetwork {
    cfg: BridgeConfig,
    ops: Box<dyn NetOps>,
    state: Mutex<State>,
}

pub(crate) fn validate_container_id(id: &str) -> Result<(), NetError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidContainerId(id.to_string()))
    }
}

fn random_veth_name() -> String {
    format!("veth{:07x}", rand::random::<u32>() & 0x0fff_ffff)
}

impl BridgeNetwork {
    /// Sets up the bridge in the calling thread's network namespace (captured for all later
    /// calls) and loads our nft table. Idempotent.
    pub fn setup(cfg: BridgeConfig) -> Result<Self, NetError> {
        cfg.validate()?;
        let ops = SystemOps::new()?;
        Self::with_ops(cfg, Box::new(ops))
    }

    /// Like [`BridgeNetwork::setup`] with a custom side-effect implementation (tests).
    pub fn with_ops(cfg: BridgeConfig, ops: Box<dyn NetOps>) -> Result<Self, NetError> {
        cfg.validate()?;
        let ipam = Ipam::new(cfg.subnet, cfg.gateway)?;
        let started = Instant::now();
        ops.ensure_bridge(&Self::bridge_spec(&cfg))?;
        let net = BridgeNetwork {
            cfg,
            ops,
            state: Mutex::new(State { ipam, ports: PortTable::new(), endpoints: HashMap::new() }),
        };
        {
            let st = net.lock();
            net.apply(&st)?;
        }
        tracing::info!(
            bridge = %net.cfg.bridge,
            subnet = %net.cfg.subnet,
            gateway = %net.cfg.gateway,
            table = %net.cfg.nft_table,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "bridge network ready"
        );
        Ok(net)
    }

    fn bridge_spec(cfg: &BridgeConfig) -> BridgeSpec {
        BridgeSpec {
            bridge: cfg.bridge.clone(),
            gateway: cfg.gateway,
            prefix_len: cfg.subnet.prefix_len(),
            mtu: cfg.mtu,
            netns_dir: cfg.netns_dir.clone(),
        }
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The nft script for the current state.
    pub fn render(&self) -> String {
        let st = self.lock();
        self.render_locked(&st)
    }

    fn render_locked(&self, st: &State) -> String {
        let ports = st.ports.all();
        render_ruleset(&RuleInput {
            table: &self.cfg.nft_table,
            bridge: &self.cfg.bridge,
            subnet: self.cfg.subnet,
            ports: &ports,
        })
    }

    fn apply(&self, st: &State) -> Result<(), NetError> {
        let started = Instant::now();
        let script = self.render_locked(st);
        self.ops.apply_ruleset(&script)?;
        tracing::debug!(table = %self.cfg.nft_table, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "nft table replaced");
        Ok(())
    }

    /// Allocates a container address; `preferred` must be free (else Conflict).
    pub fn allocate_ip(&self, preferred: Option<Ipv4Addr>) -> Result<Ipv4Addr, NetError> {
        let ip = self.lock().ipam.allocate(preferred)?;
        tracing::debug!(ip = %ip, "allocated ip");
        Ok(ip)
    }

    /// Returns an address to the pool; unknown addresses are ignored.
    pub fn release_ip(&self, ip: Ipv4Addr) {
        self.lock().ipam.release(ip);
        tracing::debug!(ip = %ip, "released ip");
    }

    /// Path of a container's network namespace file.
    pub fn netns_path(&self, container_id: &str) -> Result<PathBuf, NetError> {
        validate_container_id(container_id)?;
        Ok(self.cfg.netns_dir.join(container_id))
    }

    /// Creates the container's network namespace, veth pair and addressing.
    pub fn create_endpoint(&self, container_id: &str, ip: Ipv4Addr) -> Result<Endpoint, NetError> {
        let netns_path = self.netns_path(container_id)?;
        {
            let mut st = self.lock();
            if !self.cfg.subnet.contains(ip) || ip == self.cfg.gateway || ip == self.cfg.subnet.network() || ip == self.cfg.subnet.broadcast() {
                return Err(NetError::IpOutOfSubnet { ip, subnet: self.cfg.subnet.to_string() });
            }
            if st.endpoints.contains_key(container_id) {
                return Err(NetError::EndpointExists(container_id.to_string()));
            }
            st.endpoints.insert(container_id.to_string(), None);
        }
        let started = Instant::now();
        let result = self.create_endpoint_inner(container_id, ip, netns_path);
        let mut st = self.lock();
        match result {
            Ok(ep) => {
                st.endpoints.insert(container_id.to_string(), Some(ep.host_veth.clone()));
                tracing::info!(
                    container_id,
                    ip = %ip,
                    host_veth = %ep.host_veth,
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "endpoint created"
                );
                Ok(ep)
            }
            Err(e) => {
                st.endpoints.remove(container_id);
                tracing::warn!(container_id, ip = %ip, error = %e, "endpoint creation failed");
                Err(e)
            }
        }
    }

    fn create_endpoint_inner(&self, container_id: &str, ip: Ipv4Addr, netns_path: PathBuf) -> Result<Endpoint, NetError> {
        if netns_path.exists() {
            tracing::warn!(container_id, path = %netns_path.display(), "removing stale netns file");
            self.ops.remove_netns_file(&netns_path)?;
        }
        let mut spec = EndpointSpec {
            netns_path,
            host_veth: random_veth_name(),
            bridge: self.cfg.bridge.clone(),
            ip,
            prefix_len: self.cfg.subnet.prefix_len(),
            gateway: self.cfg.gateway,
            mac: mac_for_ip(ip),
            mtu: self.cfg.mtu,
        };
        let mut attempt = 0;
        loop {
            match self.ops.create_endpoint(&spec) {
                Ok(()) => break,
                Err(e) if attempt < 4 && e.to_string().contains("File exists") => {
                    attempt += 1;
                    spec.host_veth = random_veth_name();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Endpoint {
            netns_path: spec.netns_path,
            ip,
            prefix_len: spec.prefix_len,
            gateway: spec.gateway,
            mac: spec.mac,
            host_veth: spec.host_veth,
        })
    }

    /// Deletes the veth and the netns file. Does not release the IP or unpublish ports.
    /// Idempotent.
    pub fn remove_endpoint(&self, container_id: &str) -> Result<(), NetError> {
        let path = self.netns_path(container_id)?;
        let host_veth = self.lock().endpoints.remove(container_id).flatten();
        self.ops.remove_endpoint(&path, host_veth.as_deref())?;
        tracing::info!(container_id, host_veth = host_veth.as_deref().unwrap_or(""), "endpoint removed");
        Ok(())
    }

    /// Publishes ports of a container at `ip` by kernel DNAT. All-or-nothing.
    pub fn publish(&self, container_id: &str, ip: Ipv4Addr, ports: &[PortSpec]) -> Result<Vec<PublishedPort>, NetError> {
        validate_container_id(container_id)?;
        if !self.cfg.subnet.contains(ip) {
            return Err(NetError::IpOutOfSubnet { ip, subnet: self.cfg.subnet.to_string() });
        }
        let mut st = self.lock();
        let ops = &self.ops;
        let planned = st.ports.plan(ports, |proto: Proto, port: u16| ops.port_in_use(proto, port))?;
        if planned.is_empty() {
            return Ok(planned);
        }
        st.ports.add(container_id, ip, planned.clone());
        if let Err(e) = self.apply(&st) {
            st.ports.rollback(container_id, planned.len());
            return Err(e);
        }
        for p in &planned {
            tracing::info!(container_id, host_ip = %p.host_ip, host_port = p.host_port, container = %format!("{ip}:{}", p.container_port), proto = %p.proto, "port published");
        }
        Ok(planned)
    }

    /// Removes every published port of a container. Idempotent.
    pub fn unpublish(&self, container_id: &str) -> Result<(), NetError> {
        validate_container_id(container_id)?;
        let mut st = self.lock();
        if st.ports.remove(container_id).is_some() {
            self.apply(&st)?;
            tracing::info!(container_id, "ports unpublished");
        }
        Ok(())
    }

    /// The ports currently published for a container.
    pub fn published(&self, container_id: &str) -> Vec<PublishedPort> {
        self.lock().ports.of(container_id).map(|p| p.to_vec()).unwrap_or_default()
    }

    /// After a daemon restart: re-registers a running container's IP, endpoint and ports (the
    /// kernel state is still there) and re-renders the rules.
    pub fn restore(&self, container_id: &str, ip: Ipv4Addr, published: &[PublishedPort]) -> Result<(), NetError> {
        let path = self.netns_path(container_id)?;
        let mut st = self.lock();
        st.ipam.reserve(ip)?;
        if path.exists() {
            st.endpoints.entry(container_id.to_string()).or_insert(None);
        }
        let before = st.ports.of(container_id).map(|p| p.to_vec());
        st.ports.restore(container_id, ip, published)?;
        if let Err(e) = self.apply(&st) {
            match before {
                Some(b) => {
                    let _ = st.ports.restore(container_id, ip, &b);
                }
                None => {
                    st.ports.remove(container_id);
                }
            }
            return Err(e);
        }
        tracing::info!(container_id, ip = %ip, ports = published.len(), "container network restored");
        Ok(())
    }

    /// Removes every known endpoint, our nft table and the bridge, and unmounts `netns_dir`
    /// (which setup bind-mounted onto itself). For tests and `shoal lab`; the daemon normally
    /// leaves the bridge in place on shutdown, like Docker.
    pub fn teardown(&self) -> Result<(), NetError> {
        let ids: Vec<String> = self.lock().endpoints.keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.remove_endpoint(&id) {
                tracing::warn!(container_id = %id, error = %e, "teardown: remove endpoint");
            }
        }
        self.ops.teardown(&Self::bridge_spec(&self.cfg), &self.cfg.nft_table)
    }
}

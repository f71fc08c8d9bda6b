//! shoal-swarm: this node's membership in a swarm.
//!
//! It owns the node's swarm lifecycle — `init`, (later) `join`, `leave`, resuming after a daemon
//! restart — and the local swarm state under `<data-root>/swarm`: the state file, the Raft store
//! directory, and which of the store, the manager control loops and the agent run here. It also
//! owns the control API (`control.rs`): validating requests and turning them into versioned store
//! writes, the way swarmkit's controlapi does. It must not know HTTP or Docker's wire framing
//! (the API crate calls it) and never touches containers itself (the agent does, through the
//! engine).

mod ca;
pub mod control;
mod error;
mod logs;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use shoal_store::{Store, StoreOptions};
use shoal_types::{
    Cluster, ClusterSecrets, InitRequest, JoinTokens, ManagerStatus, Node, NodeRole, NodeSpec, NodeState,
    NodeStatus, Reachability,
};

pub use error::{ErrorKind, Result, SwarmError};
pub use logs::{LogLine, LogOptions};

/// Docker's `LocalNodeState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalNodeState {
    Inactive,
    Pending,
    Active,
    Error,
    Locked,
}

impl LocalNodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            LocalNodeState::Inactive => "inactive",
            LocalNodeState::Pending => "pending",
            LocalNodeState::Active => "active",
            LocalNodeState::Error => "error",
            LocalNodeState::Locked => "locked",
        }
    }
}

/// What `/info` and `/_ping` report about the swarm.
#[derive(Debug, Clone)]
pub struct SwarmInfo {
    pub node_id: String,
    pub node_addr: String,
    pub state: LocalNodeState,
    pub control_available: bool,
    pub error: String,
    pub remote_managers: Vec<(String, String)>,
    pub nodes: usize,
    pub managers: usize,
    pub cluster: Option<Cluster>,
}

/// The persisted local state: present means this node is part of a swarm.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LocalState {
    node_id: String,
    cluster_id: String,
    role: String,
    advertise_addr: String,
    listen_addr: String,
}

/// What runs while this node is in a swarm.
struct Active {
    state: LocalState,
    store: Store,
    manager: tokio::sync::Mutex<Option<shoal_manager::ManagerHandle>>,
    agent: shoal_agent::AgentHandle,
}

/// This node's swarm membership. Cheap to clone.
#[derive(Clone)]
pub struct Swarm {
    inner: Arc<Inner>,
}

struct Inner {
    engine: shoal_engine::Engine,
    dir: PathBuf,
    /// Serialises init/join/leave.
    lifecycle: tokio::sync::Mutex<()>,
    active: RwLock<Option<Arc<Active>>>,
}

const DEFAULT_PORT: u16 = 2377;

impl Swarm {
    /// Opens the swarm state under `<data-root>/swarm` and, if this node was in a swarm,
    /// resumes it: store, manager loops and agent come back and pick up where they stopped.
    pub async fn load(engine: shoal_engine::Engine, data_root: &std::path::Path) -> Result<Swarm> {
        let swarm = Swarm {
            inner: Arc::new(Inner {
                engine,
                dir: data_root.join("swarm"),
                lifecycle: tokio::sync::Mutex::new(()),
                active: RwLock::new(None),
            }),
        };
        let state_path = swarm.inner.dir.join("state.json");
        if let Ok(data) = std::fs::read(&state_path) {
            let state: LocalState = serde_json::from_slice(&data)
                .map_err(|e| SwarmError::Internal(format!("reading {}: {e}", state_path.display())))?;
            let _guard = swarm.inner.lifecycle.lock().await;
            let store = swarm.open_store().await?;
            swarm.mark_self_ready(&store, &state).await?;
            swarm.activate(state, store).await;
            info!("resumed swarm membership");
        }
        Ok(swarm)
    }

    fn active(&self) -> Option<Arc<Active>> {
        self.inner.active.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The store, if this node is an active manager.
    pub fn store(&self) -> Result<Store> {
        match self.active() {
            Some(a) => Ok(a.store.clone()),
            None => Err(SwarmError::NotInSwarm),
        }
    }

    pub fn node_id(&self) -> Option<String> {
        self.active().map(|a| a.state.node_id.clone())
    }

    pub fn engine(&self) -> &shoal_engine::Engine {
        &self.inner.engine
    }

    async fn open_store(&self) -> Result<Store> {
        let dir = self.inner.dir.join("raft");
        std::fs::create_dir_all(&dir).map_err(|e| SwarmError::Internal(format!("creating {}: {e}", dir.display())))?;
        Ok(Store::open(&dir, StoreOptions::default()).await?)
    }

    async fn activate(&self, state: LocalState, store: Store) {
        let manager = shoal_manager::Manager::start(store.clone(), shoal_manager::ManagerConfig::default());
        let control = Arc::new(shoal_agent::LocalControlPlane::new(store.clone(), state.node_id.clone()));
        let agent = shoal_agent::Agent::start(state.node_id.clone(), self.inner.engine.clone(), control);
        let active = Arc::new(Active { state, store, manager: tokio::sync::Mutex::new(Some(manager)), agent });
        *self.inner.active.write().unwrap_or_else(|p| p.into_inner()) = Some(active);
    }

    /// `docker swarm init`: a new one-manager cluster with this node as leader.
    pub async fn init(&self, req: InitRequest) -> Result<String> {
        let _guard = self.inner.lifecycle.lock().await;
        if self.active().is_some() {
            return Err(SwarmError::AlreadyInSwarm);
        }
        let listen = parse_listen_addr(&req.listen_addr)?;
        let advertise_ip = resolve_advertise_addr(&req.advertise_addr, &listen)?;
        let advertise_port = advertise_port(&req.advertise_addr).unwrap_or(listen.port());
        let spec = req.spec.merged_with_defaults();
        if spec.name != "default" && !spec.name.is_empty() {
            return Err(SwarmError::Invalid(format!("invalid cluster name {:?}: it must be \"default\"", spec.name)));
        }
        let ca = ca::generate_root_ca()?;
        let node_id = shoal_types::new_id();
        let cluster_id = shoal_types::new_id();
        let unlock = shoal_types::unlock_key(&shoal_types::ids::new_unlock_secret());
        let mut cluster = Cluster {
            id: cluster_id.clone(),
            spec,
            join_tokens: JoinTokens { worker: ca::new_join_token(&ca.digest), manager: ca::new_join_token(&ca.digest) },
            store_only: Some(ClusterSecrets { root_ca_cert_pem: ca.cert_pem.clone(), root_ca_key_pem: ca.key_pem.clone(), unlock_key: unlock, network_keys: Vec::new() }),
            ..Cluster::default()
        };
        cluster.tls_info.trust_root = ca.cert_pem.clone();
        if !req.default_addr_pool.is_empty() {
            cluster.default_addr_pool = req.default_addr_pool.clone();
        }
        if req.subnet_size > 0 {
            cluster.subnet_size = req.subnet_size;
        }
        if req.data_path_port > 0 {
            cluster.data_path_port = req.data_path_port;
        }
        let advertise = SocketAddr::new(advertise_ip, advertise_port).to_string();
        let node = Node {
            id: node_id.clone(),
            spec: NodeSpec { role: NodeRole::Manager, availability: req.availability, ..NodeSpec::default() },
            description: shoal_agent::describe(&self.inner.engine),
            status: NodeStatus { state: NodeState::Ready, message: String::new(), addr: advertise_ip.to_string() },
            manager_status: Some(ManagerStatus { leader: true, reachability: Reachability::Reachable, addr: advertise.clone() }),
            ..Node::default()
        };
        let store = self.open_store().await?;
        store
            .update(move |tx| {
                tx.create(cluster)?;
                tx.create(node)?;
                Ok(())
            })
            .await?;
        let state = LocalState {
            node_id: node_id.clone(),
            cluster_id,
            role: "manager".into(),
            advertise_addr: advertise,
            listen_addr: listen.to_string(),
        };
        self.write_state(&state)?;
        self.activate(state, store).await;
        info!(node_id = %node_id, "swarm initialised");
        Ok(node_id)
    }

    fn write_state(&self, state: &LocalState) -> Result<()> {
        let path = self.inner.dir.join("state.json");
        let tmp = self.inner.dir.join(".state.json.tmp");
        let data = serde_json::to_vec_pretty(state).map_err(|e| SwarmError::Internal(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.inner.dir)?.sync_all()
        };
        write().map_err(|e| SwarmError::Internal(format!("writing {}: {e}", path.display())))
    }

    async fn mark_self_ready(&self, store: &Store, state: &LocalState) -> Result<()> {
        let node_id = state.node_id.clone();
        let description = shoal_agent::describe(&self.inner.engine);
        let addr = state.advertise_addr.clone();
        store
            .update(move |tx| {
                if let Some(mut node) = tx.get::<Node>(&node_id) {
                    node.description = description;
                    node.status.state = NodeState::Ready;
                    node.status.message.clear();
                    if let Some(ms) = node.manager_status.as_mut() {
                        ms.leader = true;
                        ms.reachability = Reachability::Reachable;
                        ms.addr = addr;
                    }
                    tx.update(node)?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// `docker swarm leave [--force]`.
    pub async fn leave(&self, force: bool) -> Result<()> {
        let _guard = self.inner.lifecycle.lock().await;
        let Some(active) = self.active() else { return Err(SwarmError::NotPartOfSwarm) };
        if active.state.role == "manager" && !force {
            return Err(SwarmError::LeaveLastManager);
        }
        *self.inner.active.write().unwrap_or_else(|p| p.into_inner()) = None;
        active.agent.stop().await;
        if let Some(m) = active.manager.lock().await.take() {
            m.stop().await;
        }
        if let Err(e) = active.store.shutdown().await {
            warn!(error = %e, "store shutdown failed");
        }
        // Leaving removes this node's task containers, as dockerd does.
        for rec in self.inner.engine.list() {
            if rec.config.labels.contains_key("com.docker.swarm.task.id") {
                if let Err(e) = self.inner.engine.remove(&rec.id, true).await {
                    warn!(container = %rec.id, error = %e, "removing a task container failed");
                }
            }
        }
        std::fs::remove_dir_all(&self.inner.dir).map_err(|e| SwarmError::Internal(format!("removing {}: {e}", self.inner.dir.display())))?;
        info!("left the swarm");
        Ok(())
    }

    /// The swarm part of `/info` (and the `Swarm` ping header).
    pub fn info(&self) -> SwarmInfo {
        let Some(active) = self.active() else {
            return SwarmInfo {
                node_id: String::new(),
                node_addr: String::new(),
                state: LocalNodeState::Inactive,
                control_available: false,
                error: String::new(),
                remote_managers: Vec::new(),
                nodes: 0,
                managers: 0,
                cluster: None,
            };
        };
        let view = active.store.view();
        let nodes: Vec<Node> = view.list::<Node>();
        let managers: Vec<&Node> = nodes.iter().filter(|n| n.manager_status.is_some()).collect();
        let cluster = view.list::<Cluster>().into_iter().next();
        SwarmInfo {
            node_id: active.state.node_id.clone(),
            node_addr: active.state.advertise_addr.rsplit_once(':').map(|(ip, _)| ip.to_string()).unwrap_or_default(),
            state: LocalNodeState::Active,
            control_available: true,
            error: String::new(),
            remote_managers: managers
                .iter()
                .filter_map(|n| n.manager_status.as_ref().map(|m| (n.id.clone(), m.addr.clone())))
                .collect(),
            nodes: nodes.len(),
            managers: managers.len(),
            cluster,
        }
    }

    /// Stops the agent and manager loops without leaving (daemon shutdown).
    pub async fn shutdown(&self) {
        if let Some(active) = self.active() {
            active.agent.stop().await;
            if let Some(m) = active.manager.lock().await.take() {
                m.stop().await;
            }
            let _ = active.store.shutdown().await;
        }
    }
}

fn parse_listen_addr(text: &str) -> Result<SocketAddr> {
    if text.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    if let Some(port) = text.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    Err(SwarmError::BadRequest(format!("invalid listen address {text:?}")))
}

fn advertise_port(text: &str) -> Option<u16> {
    text.parse::<SocketAddr>().ok().map(|a| a.port())
}

/// Docker's rules: an explicit IP (or IP:port, or interface name); else the listen IP if it is
/// specific; else the address of the interface holding the default route.
fn resolve_advertise_addr(text: &str, listen: &SocketAddr) -> Result<IpAddr> {
    if !text.is_empty() {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr.ip());
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(ip);
        }
        let name = text.split(':').next().unwrap_or(text);
        return interface_ipv4(name).ok_or_else(|| {
            SwarmError::BadRequest(format!("interface {name} has no usable IPv4 address"))
        });
    }
    if !listen.ip().is_unspecified() {
        return Ok(listen.ip());
    }
    default_route_interface()
        .and_then(|iface| interface_ipv4(&iface))
        .ok_or_else(|| SwarmError::BadRequest("could not find the system's IP address".into()))
}

fn interface_ipv4(name: &str) -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if a.interface_name != name {
            continue;
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            return Some(IpAddr::V4(sin.ip()));
        }
    }
    None
}

fn default_route_interface() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_like_docker() {
        assert_eq!(parse_listen_addr("").unwrap().port(), 2377);
        assert_eq!(parse_listen_addr("0.0.0.0:2377").unwrap().port(), 2377);
        assert_eq!(parse_listen_addr("10.0.0.1").unwrap(), "10.0.0.1:2377".parse().unwrap());
        assert!(parse_listen_addr("nope").is_err());
        let listen: SocketAddr = "0.0.0.0:2377".parse().unwrap();
        assert_eq!(resolve_advertise_addr("10.1.2.3", &listen).unwrap().to_string(), "10.1.2.3");
        assert_eq!(resolve_advertise_addr("10.1.2.3:4000", &listen).unwrap().to_string(), "10.1.2.3");
        assert_eq!(resolve_advertise_addr("lo", &listen).unwrap().to_string(), "127.0.0.1");
        assert_eq!(advertise_port("10.1.2.3:4000"), Some(4000));
    }
}

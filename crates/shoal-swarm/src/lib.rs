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
mod dispatcher;
mod error;
mod logs;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use shoal_agent::remote::wire::RemoteManager;
use shoal_rpc::{NodeIdentity, NodeKey, Role, RpcClient, RpcError, RpcServer};
use shoal_store::{Store, StoreOptions};
use shoal_types::{
    Cluster, ClusterSecrets, InitRequest, JoinRequest, JoinTokens, ManagerStatus, Node, NodeRole, NodeSpec, NodeState,
    NodeStatus, Reachability,
};

use dispatcher::{Dispatcher, JoinRpcRequest, JoinRpcResponse, JOIN_PATH};

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
    /// The managers this node knows (workers connect to them; first = preferred).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    managers: Vec<RemoteManager>,
}

impl LocalState {
    fn is_manager(&self) -> bool {
        self.role == "manager"
    }
}

/// What runs while this node is in a swarm.
struct Active {
    state: LocalState,
    /// The replicated store; only on managers.
    store: Option<Store>,
    manager: tokio::sync::Mutex<Option<shoal_manager::ManagerHandle>>,
    agent: shoal_agent::AgentHandle,
    /// A manager's cluster port (CA server + dispatcher) and its node-health loop.
    cluster_port: std::sync::Mutex<Option<ClusterPort>>,
}

struct ClusterPort {
    _server: RpcServer,
    health: tokio::task::JoinHandle<()>,
}

impl Drop for ClusterPort {
    fn drop(&mut self) {
        self.health.abort();
    }
}

impl Active {
    /// Stops the agent, the manager loops, the cluster port and the store (containers keep
    /// running).
    async fn stop(&self) {
        self.agent.stop().await;
        drop(self.cluster_port.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(m) = self.manager.lock().await.take() {
            m.stop().await;
        }
        if let Some(store) = &self.store {
            if let Err(e) = store.shutdown().await {
                warn!(error = %e, "store shutdown failed");
            }
        }
    }
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
            if state.is_manager() {
                let store = swarm.open_store().await?;
                swarm.mark_self_ready(&store, &state).await?;
                let listener = match bind_cluster_port(&state.listen_addr).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        warn!(error = %e, "the cluster port is not available; other nodes cannot reach this manager");
                        None
                    }
                };
                swarm.activate_manager(state, store, listener).await?;
            } else {
                let (ca, cert, key) = swarm.read_certs()?;
                swarm.activate_worker(state, &ca, &cert, &key)?;
            }
            info!("resumed swarm membership");
        }
        Ok(swarm)
    }

    fn active(&self) -> Option<Arc<Active>> {
        self.inner.active.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The store, if this node is an active manager (a worker: [`SwarmError::NotManager`]).
    pub fn store(&self) -> Result<Store> {
        match self.active() {
            Some(a) => a.store.clone().ok_or(SwarmError::NotManager),
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

    fn certs_dir(&self) -> PathBuf {
        self.inner.dir.join("certificates")
    }

    /// This node's stored identity: (CA, node certificate, node key) PEMs.
    fn read_certs(&self) -> Result<(String, String, String)> {
        let dir = self.certs_dir();
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| SwarmError::Internal(format!("reading {}: {e}", dir.join(name).display())))
        };
        Ok((read("ca.crt")?, read("node.crt")?, read("node.key")?))
    }

    /// Stores this node's identity atomically (the key 0600).
    fn write_certs(&self, ca: &str, cert: &str, key: &str) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.certs_dir();
        let write = |name: &str, data: &str, mode: u32| -> std::io::Result<()> {
            use std::io::Write;
            let tmp = dir.join(format!(".{name}.tmp"));
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
            f.write_all(data.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(name))
        };
        let all = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            write("ca.crt", ca, 0o644)?;
            write("node.crt", cert, 0o644)?;
            write("node.key", key, 0o600)?;
            std::fs::File::open(&dir)?.sync_all()
        };
        all().map_err(|e| SwarmError::Internal(format!("writing {}: {e}", dir.display())))
    }

    /// A manager's node certificate: the stored one if it is still this node's and signed by the
    /// cluster CA, else a fresh one.
    fn manager_identity(&self, state: &LocalState, cluster: &Cluster) -> Result<(String, String, String)> {
        let ca = ca::load_root_ca(cluster)?;
        if let Ok((ca_pem, cert, key)) = self.read_certs() {
            let valid = ca_pem == ca.cert_pem()
                && NodeIdentity::from_pem(&cert).is_ok_and(|id| {
                    id.node_id == state.node_id
                        && id.role == Role::Manager
                        && id.cluster_id == cluster.id
                        && id.not_after > std::time::SystemTime::now() + std::time::Duration::from_secs(3600)
                });
            if valid {
                return Ok((ca_pem, cert, key));
            }
        }
        let pki = |e: RpcError| SwarmError::Internal(format!("issuing this manager's certificate: {e}"));
        let key = NodeKey::generate().map_err(pki)?;
        let ips: Vec<IpAddr> = state
            .advertise_addr
            .parse::<SocketAddr>()
            .map(|a| vec![a.ip()])
            .unwrap_or_default();
        let cert = ca
            .issue(&key.csr_pem, &state.node_id, Role::Manager, &cluster.id, &ips, shoal_rpc::pki::DEFAULT_NODE_CERT_VALIDITY)
            .map_err(pki)?;
        self.write_certs(ca.cert_pem(), &cert, &key.key_pem)?;
        Ok((ca.cert_pem().to_string(), cert, key.key_pem))
    }

    /// Runs a manager: cluster port (when `listener` is given), manager loops, local agent.
    async fn activate_manager(&self, state: LocalState, store: Store, listener: Option<tokio::net::TcpListener>) -> Result<()> {
        let mut cluster_port = None;
        if let Some(listener) = listener {
            let cluster = store
                .view()
                .list::<Cluster>()
                .into_iter()
                .next()
                .ok_or_else(|| SwarmError::Internal("the cluster object is missing".into()))?;
            let (ca, cert, key) = self.manager_identity(&state, &cluster)?;
            let config = shoal_rpc::tls::server_config(&ca, &cert, &key)
                .map_err(|e| SwarmError::Internal(format!("cluster port TLS: {e}")))?;
            let dispatcher = Dispatcher::new(store.clone(), state.node_id.clone());
            let d = dispatcher.clone();
            let server = RpcServer::from_listener(listener, config, move |peer, req| {
                let d = d.clone();
                async move { d.handle(peer, req).await }
            })
            .map_err(|e| SwarmError::Internal(format!("serving the cluster port: {e}")))?;
            info!(addr = %server.local_addr(), "cluster port listening");
            let health = tokio::spawn(dispatcher.health_loop());
            cluster_port = Some(ClusterPort { _server: server, health });
        }
        let manager = shoal_manager::Manager::start(store.clone(), shoal_manager::ManagerConfig::default());
        let control = Arc::new(shoal_agent::LocalControlPlane::new(store.clone(), state.node_id.clone()));
        let agent = shoal_agent::Agent::start(state.node_id.clone(), self.inner.engine.clone(), control);
        let active = Arc::new(Active {
            state,
            store: Some(store),
            manager: tokio::sync::Mutex::new(Some(manager)),
            agent,
            cluster_port: std::sync::Mutex::new(cluster_port),
        });
        *self.inner.active.write().unwrap_or_else(|p| p.into_inner()) = Some(active);
        Ok(())
    }

    /// Runs a worker: only the agent, over a dispatcher session with the known managers.
    fn activate_worker(&self, state: LocalState, ca: &str, cert: &str, key: &str) -> Result<()> {
        let config = shoal_rpc::tls::client_config(ca, cert, key)
            .map_err(|e| SwarmError::Internal(format!("loading this node's certificate: {e}")))?;
        let clients: Vec<RpcClient> = state
            .managers
            .iter()
            .filter_map(|m| m.addr.parse::<SocketAddr>().ok())
            .map(|addr| RpcClient::new(addr, config.clone()))
            .collect();
        if clients.is_empty() {
            return Err(SwarmError::Internal("this worker knows no manager address".into()));
        }
        let advertise = state.advertise_addr.parse::<SocketAddr>().map(|a| a.ip().to_string()).unwrap_or_default();
        let control = Arc::new(shoal_agent::RemoteControlPlane::new(
            state.node_id.clone(),
            shoal_agent::describe(&self.inner.engine),
            advertise,
            clients,
        ));
        let agent = shoal_agent::Agent::start(state.node_id.clone(), self.inner.engine.clone(), control);
        let active = Arc::new(Active {
            state,
            store: None,
            manager: tokio::sync::Mutex::new(None),
            agent,
            cluster_port: std::sync::Mutex::new(None),
        });
        *self.inner.active.write().unwrap_or_else(|p| p.into_inner()) = Some(active);
        Ok(())
    }

    /// `docker swarm join`: join the swarm of the manager at `remote_addrs[0]` as a worker.
    /// The manager's CA is checked against the token's digest before anything is sent; the
    /// node's key never leaves it (the manager signs a CSR).
    pub async fn join(&self, req: JoinRequest) -> Result<()> {
        let _guard = self.inner.lifecycle.lock().await;
        if self.active().is_some() {
            return Err(SwarmError::AlreadyInSwarm);
        }
        let Some(remote) = req.remote_addrs.first() else {
            return Err(SwarmError::BadRequest("at least 1 RemoteAddr is required to join".into()));
        };
        let token = req.join_token.trim();
        if shoal_rpc::pki::token_ca_digest(token).is_none() {
            return Err(SwarmError::BadRequest("invalid join token".into()));
        }
        let manager = resolve_remote_addr(remote).await?;
        let listen = parse_listen_addr(&req.listen_addr)?;
        let advertise_ip = if req.advertise_addr.is_empty() {
            local_ip_towards(manager)?
        } else {
            resolve_advertise_addr(&req.advertise_addr, &listen)?
        };
        let (ca_pem, client) = shoal_rpc::client::bootstrap(manager, token).await.map_err(|e| join_error(e, manager))?;
        let key = NodeKey::generate().map_err(|e| SwarmError::Internal(e.to_string()))?;
        let description = shoal_agent::describe(&self.inner.engine);
        let body = JoinRpcRequest {
            token: token.to_string(),
            csr: key.csr_pem.clone(),
            hostname: description.hostname.clone(),
            availability: req.availability,
            advertise_addr: advertise_ip.to_string(),
            description,
        };
        let resp: JoinRpcResponse = client.call_json(JOIN_PATH, &body).await.map_err(|e| join_error(e, manager))?;
        let id = NodeIdentity::from_pem(&resp.cert).map_err(|e| SwarmError::Internal(format!("the manager sent an invalid certificate: {e}")))?;
        if id.node_id != resp.node_id || id.role != Role::Worker || resp.ca != ca_pem {
            return Err(SwarmError::Internal("the manager's join answer does not match the certificate it issued".into()));
        }
        // The manager we joined through first, then the others it named.
        let mut managers = vec![RemoteManager { node_id: String::new(), addr: manager.to_string() }];
        for m in resp.managers {
            if m.addr == manager.to_string() {
                managers[0].node_id = m.node_id;
            } else if m.addr.parse::<SocketAddr>().is_ok() {
                managers.push(m);
            }
        }
        std::fs::create_dir_all(&self.inner.dir)
            .map_err(|e| SwarmError::Internal(format!("creating {}: {e}", self.inner.dir.display())))?;
        self.write_certs(&ca_pem, &resp.cert, &key.key_pem)?;
        let state = LocalState {
            node_id: resp.node_id.clone(),
            cluster_id: resp.cluster_id,
            role: "worker".into(),
            advertise_addr: SocketAddr::new(advertise_ip, listen.port()).to_string(),
            listen_addr: listen.to_string(),
            managers,
        };
        self.write_state(&state)?;
        self.activate_worker(state, &ca_pem, &resp.cert, &key.key_pem)?;
        info!(node_id = %resp.node_id, manager = %manager, "joined the swarm as a worker");
        Ok(())
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
        let listener = bind_cluster_port(&listen.to_string()).await?;
        let ca = ca::generate_root_ca()?;
        let node_id = shoal_types::new_id();
        let cluster_id = shoal_types::new_id();
        let unlock = shoal_types::unlock_key(&shoal_types::ids::new_unlock_secret());
        let mut cluster = Cluster {
            id: cluster_id.clone(),
            spec,
            join_tokens: JoinTokens { worker: ca::new_join_token(&ca.digest()), manager: ca::new_join_token(&ca.digest()) },
            store_only: Some(ClusterSecrets { root_ca_cert_pem: ca.cert_pem().to_string(), root_ca_key_pem: ca.key_pem().to_string(), unlock_key: unlock, network_keys: Vec::new() }),
            ..Cluster::default()
        };
        cluster.tls_info.trust_root = ca.cert_pem().to_string();
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
            managers: Vec::new(),
        };
        self.write_state(&state)?;
        self.activate_manager(state, store, Some(listener)).await?;
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
        if active.state.is_manager() && !force {
            return Err(SwarmError::LeaveLastManager);
        }
        *self.inner.active.write().unwrap_or_else(|p| p.into_inner()) = None;
        active.stop().await;
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
        let Some(store) = &active.store else {
            // A worker: what it knows locally.
            return SwarmInfo {
                node_id: active.state.node_id.clone(),
                node_addr: node_ip(&active.state.advertise_addr),
                state: LocalNodeState::Active,
                control_available: false,
                error: String::new(),
                remote_managers: active.state.managers.iter().map(|m| (m.node_id.clone(), m.addr.clone())).collect(),
                nodes: 0,
                managers: 0,
                cluster: None,
            };
        };
        let view = store.view();
        let nodes: Vec<Node> = view.list::<Node>();
        let managers: Vec<&Node> = nodes.iter().filter(|n| n.manager_status.is_some()).collect();
        let cluster = view.list::<Cluster>().into_iter().next();
        SwarmInfo {
            node_id: active.state.node_id.clone(),
            node_addr: node_ip(&active.state.advertise_addr),
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
            active.stop().await;
        }
    }
}

fn node_ip(advertise: &str) -> String {
    advertise.rsplit_once(':').map(|(ip, _)| ip.to_string()).unwrap_or_default()
}

/// Binds the cluster port. A port still held by a just-stopped server (leave, then init) is
/// retried for a moment.
async fn bind_cluster_port(listen: &str) -> Result<tokio::net::TcpListener> {
    let addr = parse_listen_addr(listen)?;
    let mut attempts = 0;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(SwarmError::BadRequest(format!("failed to listen on remote API address: listen tcp {addr}: {e}")))
            }
        }
    }
}

/// A manager address from `swarm join` (`ip[:port]` or `host[:port]`, port 2377 by default).
async fn resolve_remote_addr(text: &str) -> Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let with_port = if text.contains(':') { text.to_string() } else { format!("{text}:{DEFAULT_PORT}") };
    tokio::net::lookup_host(with_port.as_str())
        .await
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| SwarmError::BadRequest(format!("invalid remote address {text:?}")))
}

/// The local IP this node uses to reach `remote` (its default advertise address as a worker).
fn local_ip_towards(remote: SocketAddr) -> Result<IpAddr> {
    let bind: SocketAddr = if remote.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let sock = std::net::UdpSocket::bind(bind).map_err(|e| SwarmError::Internal(e.to_string()))?;
    sock.connect(remote)
        .map_err(|e| SwarmError::BadRequest(format!("no route to the manager at {remote}: {e}")))?;
    Ok(sock.local_addr().map_err(|e| SwarmError::Internal(e.to_string()))?.ip())
}

/// A failed join, in the words the docker CLI users know.
fn join_error(e: RpcError, manager: SocketAddr) -> SwarmError {
    match e {
        RpcError::Status { status: 400, message } => SwarmError::Invalid(message),
        RpcError::Status { status: 501, message } => SwarmError::Unimplemented(message),
        RpcError::Status { message, .. } => SwarmError::Internal(message),
        e @ RpcError::CaMismatch { .. } => {
            SwarmError::BadRequest(format!("error while validating Root CA Certificate: {e}"))
        }
        e @ (RpcError::Connect { .. } | RpcError::Timeout(_) | RpcError::Disconnected { .. }) => {
            SwarmError::Unavailable(format!("could not join the swarm through the manager at {manager}: {e}"))
        }
        e => SwarmError::Internal(format!("joining the swarm through {manager}: {e}")),
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

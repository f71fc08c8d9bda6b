//! shoal-swarm: this node's membership in a swarm.
//!
//! It owns the node's swarm lifecycle — `init`, `join` (as a worker or a manager), `leave`,
//! promotion and demotion, resuming after a daemon restart — and the local swarm state under
//! `<data-root>/swarm`: the state file, the Raft store directory, and which of the store, the
//! manager control loops and the agent run here. Managers form one Raft group over their
//! cluster ports (`managers.rs`, `peers.rs`); only the leader runs the control loops. It also
//! owns the control API (`control.rs`): validating requests and turning them into versioned store
//! writes on the leader, the way swarmkit's controlapi does. It must not know HTTP or Docker's
//! wire framing (the API crate calls it) and never touches containers itself (the agent does,
//! through the engine).

mod ca;
mod certs;
pub mod control;
pub mod dashboard;
mod dispatcher;
mod logbroker;
mod error;
mod logs;
mod managers;
pub mod networks;
mod peers;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use shoal_agent::remote::wire::RemoteManager;
use shoal_rpc::{NodeIdentity, NodeKey, Role, RpcClient, RpcError, RpcServer};
use shoal_store::{Store, StoreOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use shoal_types::{
    Cluster, ClusterSecrets, InitRequest, JoinRequest, JoinTokens, ManagerStatus, Node, NodeRole, NodeSpec, NodeState,
    NodeStatus, Reachability,
};

use dispatcher::{Dispatcher, JoinRpcRequest, JoinRpcResponse, JOIN_PATH};
use managers::{ControlOp, ControlReply, ControlRequest, ManagerControlPlane, CONTROL_PATH};
use peers::{Peers, Purpose, RaftOverRpc};

pub use error::{ErrorKind, Result, SwarmError};
pub use dashboard::{ChangeAction, ChangeFeed, FeedItem, ObjectChange};
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
    /// A manager's clients to the other managers (Raft, forwarded writes).
    peers: Option<Arc<Peers>>,
    /// A worker's control plane (its manager list).
    remote: Option<Arc<shoal_agent::RemoteControlPlane>>,
    /// A manager's leader-only work (`managers::spawn_leadership`): its stop switch and task.
    leadership: tokio::sync::Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
    agent: shoal_agent::AgentHandle,
    /// A manager's cluster port (CA server, dispatcher, Raft) and its node-health loop.
    cluster_port: std::sync::Mutex<Option<ClusterPort>>,
    /// This node's certificate loop (renewal, trust roots; on managers also the CA
    /// reconciler), `certs.rs`.
    cert_task: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Other background work of this membership (a worker's manager-list persistence).
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

struct ClusterPort {
    /// The certificate loop holds a weak reference, to swap the TLS config.
    server: Arc<RpcServer>,
    dispatcher: Arc<Dispatcher>,
    health: JoinHandle<()>,
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
        let cert_task = self.cert_task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = cert_task {
            t.abort();
            let _ = t.await;
        }
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
        self.agent.stop().await;
        if let Some((stop, task)) = self.leadership.lock().await.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
        drop(self.cluster_port.lock().unwrap_or_else(|p| p.into_inner()).take());
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
    /// Serialises init/join/leave and role changes.
    lifecycle: tokio::sync::Mutex<()>,
    active: RwLock<Option<Arc<Active>>>,
    /// A role change (promotion, demotion) is under way.
    changing_role: AtomicBool,
    /// Whether this node runs as a manager now (`Swarm::manager_watch`).
    manager_tx: watch::Sender<bool>,
    /// Logs of tasks on other nodes (managers).
    log_broker: logbroker::LogBroker,
}

const DEFAULT_PORT: u16 = 2377;
/// How long a new manager's replica may take to show the cluster after it joined Raft.
const REPLICA_WAIT: Duration = Duration::from_secs(30);
/// How long a new manager keeps asking to be admitted into Raft.
const ADMISSION_WAIT: Duration = Duration::from_secs(90);
/// How long a demoted manager keeps its Raft member running for the leader to remove it.
const DEMOTION_WAIT: Duration = Duration::from_secs(10);

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
                changing_role: AtomicBool::new(false),
                manager_tx: watch::channel(false).0,
                log_broker: logbroker::LogBroker::default(),
            }),
        };
        let state_path = swarm.inner.dir.join("state.json");
        if let Ok(data) = std::fs::read(&state_path) {
            let state: LocalState = serde_json::from_slice(&data)
                .map_err(|e| SwarmError::Internal(format!("reading {}: {e}", state_path.display())))?;
            let _guard = swarm.inner.lifecycle.lock().await;
            if state.is_manager() {
                let peers = Peers::new();
                // `join`: never start a new group here, whatever is on disk.
                let store = swarm.open_store(&state.advertise_addr, &peers, true).await?;
                if store.raft_status().is_leader {
                    // The only manager: nobody else will mark it ready. (A restarted member of
                    // a larger group may briefly believe it still leads: then the new leader
                    // marks it instead.)
                    if let Err(e) = swarm.mark_self_ready(&store, &state).await {
                        warn!(error = %e, "marking this manager ready failed; the leader will");
                    }
                }
                let listener = match bind_cluster_port(&state.listen_addr).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        warn!(error = %e, "the cluster port is not available; other nodes cannot reach this manager");
                        None
                    }
                };
                swarm.activate_manager(state, store, peers, listener).await?;
            } else {
                let identity = certs::read_identity(&swarm.certs_dir())?;
                swarm.activate_worker(state, identity)?;
            }
            info!("resumed swarm membership");
        }
        Ok(swarm)
    }

    /// Replaces what runs for this membership (and tells `manager_watch` subscribers).
    fn set_active(&self, active: Option<Arc<Active>>) {
        let manager = active.as_ref().is_some_and(|a| a.store.is_some());
        *self.inner.active.write().unwrap_or_else(|p| p.into_inner()) = active;
        self.inner.manager_tx.send_replace(manager);
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

    fn raft_dir(&self) -> PathBuf {
        self.inner.dir.join("raft")
    }

    /// Open (or create) this manager's store. `addr` is its cluster address (its Raft
    /// address); with `join`, a fresh store waits to be added to the existing group.
    async fn open_store(&self, addr: &str, peers: &Arc<Peers>, join: bool) -> Result<Store> {
        let dir = self.raft_dir();
        std::fs::create_dir_all(&dir).map_err(|e| SwarmError::Internal(format!("creating {}: {e}", dir.display())))?;
        let opts = StoreOptions { addr: addr.to_string(), transport: Arc::new(RaftOverRpc(peers.clone())), join, ..StoreOptions::default() };
        Ok(Store::open(&dir, opts).await?)
    }

    fn remove_raft_dir(&self) -> Result<()> {
        let dir = self.raft_dir();
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SwarmError::Internal(format!("removing {}: {e}", dir.display()))),
            _ => Ok(()),
        }
    }

    fn certs_dir(&self) -> PathBuf {
        self.inner.dir.join("certificates")
    }

    /// Stores this node's identity (`certs::write_identity`: replaced as a unit, the key 0600).
    fn write_certs(&self, ca: &str, cert: &str, key: &str) -> Result<()> {
        let identity = certs::Identity { ca: ca.to_string(), cert: cert.to_string(), key: key.to_string() };
        certs::write_identity(&self.certs_dir(), &identity)
    }

    /// A manager's identity: the stored one if its certificate is still this manager's, for its
    /// key, issued by a CA the cluster trusts (the root, or the root being rotated to) and not
    /// about to expire, else a fresh one. The trust roots are the cluster's current ones. The
    /// certificate loop renews it later as any node's.
    fn manager_identity(&self, state: &LocalState, cluster: &Cluster) -> Result<certs::Identity> {
        let bundle = ca::trust_bundle(cluster)?;
        if let Ok(stored) = certs::read_identity(&self.certs_dir()) {
            let valid = NodeIdentity::from_pem(&stored.cert).is_ok_and(|id| {
                id.node_id == state.node_id
                    && id.role == Role::Manager
                    && id.cluster_id == cluster.id
                    && id.not_after > std::time::SystemTime::now() + std::time::Duration::from_secs(60)
            }) && shoal_rpc::pki::cert_matches_key(&stored.cert, &stored.key).unwrap_or(false)
                && shoal_rpc::IssuerInfo::of_chain(&stored.cert, &bundle).is_ok();
            if valid {
                let identity = certs::Identity { ca: bundle, ..stored.clone() };
                if identity != stored {
                    certs::write_identity(&self.certs_dir(), &identity)?;
                }
                return Ok(identity);
            }
        }
        let key = NodeKey::generate().map_err(|e: RpcError| SwarmError::Internal(format!("issuing this manager's certificate: {e}")))?;
        let ips: Vec<IpAddr> = state
            .advertise_addr
            .parse::<SocketAddr>()
            .map(|a| vec![a.ip()])
            .unwrap_or_default();
        let cert = ca::issue_node_cert(cluster, &key.csr_pem, &state.node_id, Role::Manager, &ips)?;
        let identity = certs::Identity { ca: bundle, cert, key: key.key_pem };
        certs::write_identity(&self.certs_dir(), &identity)?;
        Ok(identity)
    }

    /// Runs a manager from its store: its identity (stored or issued here), cluster port (when
    /// `listener` is given), leader-only work, certificate loop, local agent.
    async fn activate_manager(&self, state: LocalState, store: Store, peers: Arc<Peers>, listener: Option<tokio::net::TcpListener>) -> Result<()> {
        let cluster = store
            .view()
            .list::<Cluster>()
            .into_iter()
            .next()
            .ok_or_else(|| SwarmError::Internal("the cluster object is missing".into()))?;
        let identity = self.manager_identity(&state, &cluster)?;
        let config = shoal_rpc::tls::client_config(&identity.ca, &identity.cert, &identity.key)
            .map_err(|e| SwarmError::Internal(format!("loading this manager's certificate: {e}")))?;
        peers.set_config(config);
        let port = match listener {
            Some(l) => Some(self.serve_cluster_port(l, &identity, &store, &state)?),
            None => None,
        };
        self.run_manager(state, store, peers, port, identity);
        Ok(())
    }

    /// Serve the cluster port on `listener` with `identity`, and start its node-health loop.
    fn serve_cluster_port(&self, listener: tokio::net::TcpListener, identity: &certs::Identity, store: &Store, state: &LocalState) -> Result<ClusterPort> {
        let config = shoal_rpc::tls::server_config(&identity.ca, &identity.cert, &identity.key)
            .map_err(|e| SwarmError::Internal(format!("cluster port TLS: {e}")))?;
        let dispatcher = Dispatcher::new(store.clone(), state.node_id.clone(), state.cluster_id.clone(), Arc::downgrade(&self.inner));
        let d = dispatcher.clone();
        let server = RpcServer::from_listener(listener, config, move |peer, req| {
            let d = d.clone();
            async move { d.handle(peer, req).await }
        })
        .map_err(|e| SwarmError::Internal(format!("serving the cluster port: {e}")))?;
        info!(addr = %server.local_addr(), "cluster port listening");
        let health = tokio::spawn(dispatcher.clone().health_loop());
        Ok(ClusterPort { server: Arc::new(server), dispatcher, health })
    }

    /// The manager's background work, from a store, clients, cluster port and identity.
    fn run_manager(&self, state: LocalState, store: Store, peers: Arc<Peers>, port: Option<ClusterPort>, identity: certs::Identity) {
        let server_ref = port.as_ref().map(|p| Arc::downgrade(&p.server));
        let dispatcher = port.as_ref().map(|p| p.dispatcher.clone());
        let cert_task = certs::spawn_manager(self.certs_dir(), state.node_id.clone(), store.clone(), identity, server_ref, peers.clone(), self.clone());
        let (stop, stop_rx) = watch::channel(false);
        let leadership = managers::spawn_leadership(store.clone(), dispatcher, state.node_id.clone(), state.advertise_addr.clone(), stop_rx);
        let control = Arc::new(ManagerControlPlane::new(store.clone(), peers.clone(), state.node_id.clone()));
        let agent = shoal_agent::Agent::start(state.node_id.clone(), self.inner.engine.clone(), control);
        let active = Arc::new(Active {
            state,
            store: Some(store),
            peers: Some(peers),
            remote: None,
            leadership: tokio::sync::Mutex::new(Some((stop, leadership))),
            agent,
            cluster_port: std::sync::Mutex::new(port),
            cert_task: std::sync::Mutex::new(Some(cert_task)),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        self.set_active(Some(active));
    }

    /// Runs a worker: the agent, over a dispatcher session with the known managers, and the
    /// certificate loop. The manager list the sessions name is kept in `state.json`.
    fn activate_worker(&self, state: LocalState, identity: certs::Identity) -> Result<()> {
        let config = shoal_rpc::tls::client_config(&identity.ca, &identity.cert, &identity.key)
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
        let mut description = shoal_agent::describe(&self.inner.engine);
        description.tls_info = identity.tls_info();
        let control = Arc::new(shoal_agent::RemoteControlPlane::new(state.node_id.clone(), description, advertise, clients));
        let cert_task = certs::spawn_worker(self.certs_dir(), identity, control.clone(), self.clone());
        let persist = {
            let mut managers = control.managers();
            let swarm = self.clone();
            let mut state = state.clone();
            tokio::spawn(async move {
                while managers.changed().await.is_ok() {
                    let list = managers.borrow_and_update().clone();
                    if list.is_empty() || list == state.managers {
                        continue;
                    }
                    state.managers = list;
                    if let Err(e) = swarm.write_state(&state) {
                        warn!(error = %e, "recording the managers' addresses failed");
                    }
                }
            })
        };
        let agent = shoal_agent::Agent::start(state.node_id.clone(), self.inner.engine.clone(), control.clone());
        let active = Arc::new(Active {
            state,
            store: None,
            peers: None,
            remote: Some(control),
            leadership: tokio::sync::Mutex::new(None),
            agent,
            cluster_port: std::sync::Mutex::new(None),
            cert_task: std::sync::Mutex::new(Some(cert_task)),
            tasks: std::sync::Mutex::new(vec![persist]),
        });
        self.set_active(Some(active));
        Ok(())
    }

    /// Make this node a Raft member: open an empty store, serve the cluster port, ask a manager
    /// (one of `via`, `ip:port`) to admit it, and wait until the replica shows the cluster and
    /// this node. On failure everything started here is stopped again.
    async fn enter_raft(
        &self,
        state: &LocalState,
        identity: &certs::Identity,
        listener: tokio::net::TcpListener,
        via: &[String],
    ) -> Result<(Store, Arc<Peers>, ClusterPort)> {
        let peers = Peers::new();
        let config = shoal_rpc::tls::client_config(&identity.ca, &identity.cert, &identity.key)
            .map_err(|e| SwarmError::Internal(format!("loading this manager's certificate: {e}")))?;
        peers.set_config(config);
        // A store left from an earlier membership is stale: this manager starts empty.
        self.remove_raft_dir()?;
        let store = self.open_store(&state.advertise_addr, &peers, true).await?;
        let port = match self.serve_cluster_port(listener, identity, &store, state) {
            Ok(p) => p,
            Err(e) => {
                let _ = store.shutdown().await;
                return Err(e);
            }
        };
        let admitted = async {
            self.ask_admission(state, &store, &peers, via).await?;
            let deadline = tokio::time::Instant::now() + REPLICA_WAIT;
            loop {
                let view = store.view();
                let ready = !view.list::<Cluster>().is_empty()
                    && view.get::<Node>(&state.node_id).is_some_and(|n| n.manager_status.is_some());
                if ready {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(SwarmError::Unavailable("this manager joined raft but its replica did not catch up in time".into()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        .await;
        if let Err(e) = admitted {
            drop(port);
            let _ = store.shutdown().await;
            let _ = self.remove_raft_dir();
            return Err(e);
        }
        Ok((store, peers, port))
    }

    /// `POST /v1/control` `AddManager` to the managers in `via`, in turn, until one answers
    /// (retrying while the swarm has no leader).
    async fn ask_admission(&self, state: &LocalState, store: &Store, peers: &Peers, via: &[String]) -> Result<()> {
        let req = ControlRequest {
            hops: 0,
            op: ControlOp::AddManager { node_id: state.node_id.clone(), raft_id: store.raft_id(), addr: state.advertise_addr.clone() },
        };
        let deadline = tokio::time::Instant::now() + ADMISSION_WAIT;
        let mut last = String::from("no manager to ask");
        loop {
            for addr in via {
                let client = match peers.client(addr, Purpose::Control) {
                    Ok(c) => c,
                    Err(e) => {
                        last = e.to_string();
                        continue;
                    }
                };
                match client.call_json::<_, ControlReply>(CONTROL_PATH, &req).await {
                    Ok(ControlReply::Ok { .. }) => {
                        info!(via = %addr, raft_id = %format!("{:x}", store.raft_id()), "admitted into the managers' raft group");
                        return Ok(());
                    }
                    Ok(ControlReply::Err { kind, message }) if ErrorKind::parse(&kind) != ErrorKind::Unavailable => {
                        return Err(SwarmError::Remote { kind: ErrorKind::parse(&kind), message });
                    }
                    Ok(ControlReply::Err { message, .. }) => last = message,
                    Err(e) => last = e.to_string(),
                }
                debug!(via = %addr, error = %last, "asking to join the managers failed; trying the next manager");
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SwarmError::Unavailable(format!("could not join the managers' raft group: {last}")));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// A promotion or demotion of this node finished on the certificate side: change what runs
    /// here (in the background; one change at a time).
    pub(crate) fn role_changed(&self, role: Role) {
        if self.inner.changing_role.swap(true, Ordering::SeqCst) {
            return;
        }
        let swarm = self.clone();
        tokio::spawn(async move {
            if let Err(e) = swarm.change_role(role).await {
                warn!(role = ?role, error = %e, "changing this node's role failed; will retry");
            }
            swarm.inner.changing_role.store(false, Ordering::SeqCst);
        });
    }

    async fn change_role(&self, want: Role) -> Result<()> {
        let _guard = self.inner.lifecycle.lock().await;
        let Some(active) = self.active() else { return Ok(()) };
        match (want, active.store.is_some()) {
            (Role::Manager, false) => self.become_manager(active).await,
            (Role::Worker, true) => self.become_worker(active).await,
            _ => Ok(()),
        }
    }

    /// A promoted worker (it holds a manager certificate now) joins Raft and runs as a manager.
    async fn become_manager(&self, active: Arc<Active>) -> Result<()> {
        let identity = certs::read_identity(&self.certs_dir())?;
        if certs::identity_role(&identity) != Role::Manager {
            return Ok(());
        }
        let mut state = active.state.clone();
        state.role = "manager".into();
        let via: Vec<String> = match &active.remote {
            Some(r) => r.managers().borrow().iter().map(|m| m.addr.clone()).collect(),
            None => state.managers.iter().map(|m| m.addr.clone()).collect(),
        };
        info!(node = %state.node_id, "this node was promoted: joining the managers");
        let listener = bind_cluster_port(&state.listen_addr).await?;
        let (store, peers, port) = self.enter_raft(&state, &identity, listener, &via).await?;
        self.set_active(None);
        active.stop().await;
        state.managers = Vec::new();
        self.write_state(&state)?;
        self.run_manager(state, store, peers, Some(port), identity);
        info!("this node now runs as a manager");
        Ok(())
    }

    /// A demoted manager (it holds a worker certificate now) leaves Raft and runs as a worker.
    async fn become_worker(&self, active: Arc<Active>) -> Result<()> {
        let identity = certs::read_identity(&self.certs_dir())?;
        if certs::identity_role(&identity) != Role::Worker {
            return Ok(());
        }
        let Some(store) = active.store.clone() else { return Ok(()) };
        info!(node = %active.state.node_id, "this manager was demoted: leaving the managers");
        // The leader removes this member next. With two voters that needs this node's vote, so
        // it stays until it sees itself removed (or a while passed); in a larger group the
        // others make the quorum, and it only lingers a moment to acknowledge what it has.
        let raft_id = store.raft_id();
        let voters = store.raft_status().voters.len();
        let wait = if voters <= 2 { DEMOTION_WAIT } else { Duration::from_secs(1) };
        let deadline = tokio::time::Instant::now() + wait;
        while store.raft_status().voters.contains_key(&raft_id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = store.raft_status();
        let managers: Vec<RemoteManager> = dispatcher::managers_of(&store.view(), status.leader_addr())
            .into_iter()
            .filter(|m| m.node_id != active.state.node_id && m.addr != active.state.advertise_addr)
            .collect();
        if managers.is_empty() {
            return Err(SwarmError::Internal("a demoted manager knows no other manager".into()));
        }
        self.set_active(None);
        active.stop().await;
        self.remove_raft_dir()?;
        let mut state = active.state.clone();
        state.role = "worker".into();
        state.managers = managers;
        self.write_state(&state)?;
        self.activate_worker(state, identity)?;
        info!("this node now runs as a worker");
        Ok(())
    }

    /// `docker swarm join`: join the swarm of the manager at `remote_addrs[0]`, as a worker or
    /// (with the manager token) as a manager. The manager's CA is checked against the token's
    /// digest before anything is sent; the node's key never leaves it (the manager signs a
    /// CSR). A new manager then enters the Raft group (`enter_raft`) before this returns.
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
        let advertise = SocketAddr::new(advertise_ip, advertise_port(&req.advertise_addr).unwrap_or(listen.port()));
        let (ca_pem, client) = shoal_rpc::client::bootstrap(manager, token).await.map_err(|e| join_error(e, manager))?;
        // A manager token makes this node a manager: its cluster port must be free. (Bound
        // before the join so a busy port fails it early; a worker just drops it.)
        let listener = bind_cluster_port(&listen.to_string()).await;
        let key = NodeKey::generate().map_err(|e| SwarmError::Internal(e.to_string()))?;
        let description = shoal_agent::describe(&self.inner.engine);
        let body = JoinRpcRequest {
            token: token.to_string(),
            csr: key.csr_pem.clone(),
            hostname: description.hostname.clone(),
            availability: req.availability,
            advertise_addr: advertise.to_string(),
            description,
        };
        let resp: JoinRpcResponse = client.call_json(JOIN_PATH, &body).await.map_err(|e| join_error(e, manager))?;
        let id = NodeIdentity::from_pem(&resp.cert).map_err(|e| SwarmError::Internal(format!("the manager sent an invalid certificate: {e}")))?;
        let role = if resp.role == "manager" { Role::Manager } else { Role::Worker };
        if id.node_id != resp.node_id || id.role != role || resp.ca != ca_pem {
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
        let identity = certs::Identity { ca: ca_pem, cert: resp.cert, key: key.key_pem };
        let mut state = LocalState {
            node_id: resp.node_id.clone(),
            cluster_id: resp.cluster_id,
            role: "worker".into(),
            advertise_addr: advertise.to_string(),
            listen_addr: listen.to_string(),
            managers,
        };
        if role == Role::Worker {
            drop(listener);
            self.write_state(&state)?;
            self.activate_worker(state, identity)?;
            info!(node_id = %resp.node_id, manager = %manager, "joined the swarm as a worker");
            return Ok(());
        }
        let listener = listener?;
        state.role = "manager".into();
        let via: Vec<String> = state.managers.iter().map(|m| m.addr.clone()).collect();
        state.managers = Vec::new();
        let (store, peers, port) = match self.enter_raft(&state, &identity, listener, &via).await {
            Ok(x) => x,
            Err(e) => {
                // Nothing of this membership stays behind (the cluster keeps a Node that never
                // came up; `docker node rm` removes it).
                let _ = std::fs::remove_dir_all(&self.inner.dir);
                return Err(e);
            }
        };
        self.write_state(&state)?;
        self.run_manager(state, store, peers, Some(port), identity);
        info!(node_id = %resp.node_id, manager = %manager, "joined the swarm as a manager");
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
        let dashboard_credential = dashboard::new_credential();
        let mut cluster = Cluster {
            id: cluster_id.clone(),
            spec,
            join_tokens: JoinTokens { worker: ca::new_join_token(&ca.digest()), manager: ca::new_join_token(&ca.digest()) },
            store_only: Some(ClusterSecrets { root_ca_cert_pem: ca.cert_pem().to_string(), root_ca_key_pem: ca.key_pem().to_string(), unlock_key: unlock, dashboard_credential: dashboard::hash_credential(&dashboard_credential), ..ClusterSecrets::default() }),
            ..Cluster::default()
        };
        cluster.tls_info = ca.issuer_info().tls_info(ca.cert_pem());
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
        // The routing mesh's network (`docker swarm init --default-addr-pool` and
        // `--data-path-port` are recorded on the cluster; ingress keeps 10.0.0.0/24).
        let ingress = networks::ingress_network()?;
        let peers = Peers::new();
        let store = self.open_store(&advertise, &peers, false).await?;
        store
            .update(move |tx| {
                tx.create(cluster)?;
                tx.create(node)?;
                tx.create(ingress)?;
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
        self.write_credential_file(&dashboard_credential)?;
        self.activate_manager(state, store, peers, Some(listener)).await?;
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
            let (mut reachable, mut unreachable) = (1, 0); // this manager
            if let Ok(nodes) = self.nodes() {
                for n in nodes.iter().filter(|n| n.id != active.state.node_id) {
                    match n.manager_status.as_ref().map(|m| m.reachability) {
                        Some(Reachability::Reachable) => reachable += 1,
                        Some(Reachability::Unreachable) => unreachable += 1,
                        _ => {}
                    }
                }
            }
            return Err(leave_refusal(reachable, unreachable));
        }
        self.set_active(None);
        active.stop().await;
        // Leaving removes this node's task containers, as dockerd does.
        for rec in self.inner.engine.list() {
            if rec.config.labels.contains_key("com.docker.swarm.task.id") {
                if let Err(e) = self.inner.engine.remove(&rec.id, true).await {
                    warn!(container = %rec.id, error = %e, "removing a task container failed");
                }
            }
        }
        // The overlays and the routing mesh belonged to the swarm.
        let engine = self.inner.engine.clone();
        match tokio::task::spawn_blocking(move || engine.mesh().teardown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "removing the overlay mesh failed"),
            Err(e) => warn!(error = %e, "removing the overlay mesh failed"),
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

/// Why a manager may not leave without `--force`, in moby's words: `reachable` managers
/// (this one included) and `unreachable` ones.
fn leave_refusal(reachable: usize, unreachable: usize) -> SwarmError {
    let mut msg = String::from("You are attempting to leave the swarm on a node that is participating as a manager. ");
    if reachable.saturating_sub(2) <= unreachable {
        if reachable == 1 && unreachable == 0 {
            return SwarmError::LeaveLastManager;
        }
        msg.push_str(&format!(
            "Removing this node leaves {} managers out of {}. Without a Raft quorum your swarm will be inaccessible. ",
            reachable.saturating_sub(1),
            reachable + unreachable
        ));
    }
    msg.push_str("The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message.");
    SwarmError::Unavailable(msg)
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

    #[test]
    fn managers_leave_only_with_force_in_mobys_words() {
        assert!(matches!(leave_refusal(1, 0), SwarmError::LeaveLastManager));
        let two = leave_refusal(2, 0).to_string();
        assert!(two.contains("Removing this node leaves 1 managers out of 2. Without a Raft quorum"), "{two}");
        let lossy = leave_refusal(3, 1).to_string();
        assert!(lossy.contains("Removing this node leaves 2 managers out of 4."), "{lossy}");
        let three = leave_refusal(3, 0).to_string();
        assert!(!three.contains("Removing this node") && three.ends_with("Use `--force` to suppress this message."), "{three}");
        assert_eq!(leave_refusal(3, 0).kind(), ErrorKind::Unavailable);
    }
}

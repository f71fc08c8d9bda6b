//! The manager's cluster port (`docs/CONTRACTS.md`, "Multi-node contracts"): the CA server
//! (`GET /v1/ca`, `POST /v1/join`), the dispatcher (`/v1/session`, `/v1/heartbeat`,
//! `/v1/status`), the Raft transport (`/v1/raft/{rpc}`) and write forwarding (`/v1/control`),
//! served by [`shoal_rpc::RpcServer`] over mutual TLS, plus the node-health loop that marks a
//! node DOWN when its heartbeats stop (swarmkit `manager/dispatcher`, `ca/server`). Every
//! manager serves the port; the dispatcher proper (sessions, heartbeats, node health) works only
//! on the Raft leader.
//!
//! - Join: the token is compared in constant time with the cluster's current worker and manager
//!   tokens; the join creates the Node (status unknown until its session starts, Addr = its
//!   advertise address or the connection's peer IP) and signs the CSR for the token's role. A
//!   manager's Node also gets `ManagerStatus {Addr: <advertise ip>:<port>}`; the new manager then
//!   asks to be added to Raft (`managers.rs`). A join reaching a follower is forwarded to the
//!   leader.
//! - Session: only on the leader (a follower answers 503, so the worker tries the next manager).
//!   The caller's certificate names the node. The node is marked READY, the stream carries the
//!   session message (its ID, the heartbeat period and every manager, the leader first; sent
//!   again whenever the managers change), the complete assignment set and then incremental
//!   changes (the same watch logic the manager's own agent uses,
//!   [`shoal_agent::LocalControlPlane`]).
//! - Heartbeat: answers the current `Dispatcher.HeartbeatPeriod` (default 1 s); the node must
//!   send the next one within 3 periods or it is marked DOWN ("heartbeat failure") and its
//!   session closed. A node whose session stream closes gets one period to open a new one. The
//!   orchestrators then replace its tasks at once (no restart delay for a down node). The answer's
//!   `cluster_version` also moves while the node's certificate role differs from the role its
//!   Node says (a promotion or demotion), so the node fetches its certificate policy at once.
//! - Status: [`shoal_agent::record_status`], the rules the local agent uses (only the caller's
//!   tasks, never backwards), on the leader (forwarded from a follower).
//! - Node health, on the leader only: workers by their dispatcher heartbeats; managers by Raft
//!   (a manager whose Raft member has not acknowledged the leader for 3 heartbeat periods is
//!   Down and `Unreachable`, `Reachable` and Ready again when it does). A new leader gives every
//!   node twice the usual grace before marking it down.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde::{Deserialize, Serialize};
use shoal_agent::remote::wire::{
    HeartbeatRequest, HeartbeatResponse, RemoteManager, SessionInfo, SessionMessage, SessionRequest, StatusRequest,
};
use shoal_agent::{ControlPlane, LocalControlPlane};
use shoal_rpc::server::{ndjson, ok, ok_bytes, read_bytes, read_json, root_ca_response};
use shoal_rpc::{require, NodeIdentity, Peer, Role, RootCa, RpcBody, Status};
use shoal_store::{Leadership, RaftRpc, ReadTx, Store, StoreError};
use shoal_types::{
    Cluster, Kind, ManagerStatus, Node, NodeAvailability, NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus,
    Reachability,
};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::{ErrorKind, SwarmError};
use crate::managers::{ControlOp, ControlReply, ControlRequest, CONTROL_PATH};
use crate::peers::{MAX_RAFT_MESSAGE, RAFT_PATH_PREFIX};

pub(crate) const JOIN_PATH: &str = "/v1/join";
/// A node that misses this many heartbeat periods is marked down (swarmkit's grace multiplier).
pub(crate) const GRACE_PERIODS: u32 = 3;
const DEFAULT_PERIOD: Duration = Duration::from_secs(1);
const INVALID_TOKEN: &str = "A valid join token is necessary to join this cluster";
/// The longest back-off of an agent between two session attempts (`shoal_agent`).
const AGENT_MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A manager is unreachable when Raft has not heard from it for this long, at least.
const MIN_MANAGER_SILENCE: Duration = Duration::from_secs(2);

/// `POST /v1/join` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct JoinRpcRequest {
    pub token: String,
    pub csr: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub availability: NodeAvailability,
    #[serde(default)]
    pub advertise_addr: String,
    #[serde(default)]
    pub description: NodeDescription,
}

/// `POST /v1/join` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct JoinRpcResponse {
    pub node_id: String,
    pub role: String,
    pub cluster_id: String,
    pub cert: String,
    pub ca: String,
    #[serde(default)]
    pub managers: Vec<RemoteManager>,
}

/// What the dispatcher knows about a worker's liveness.
struct Liveness {
    /// The open session, if any.
    session_id: Option<String>,
    /// Mark the node down if no heartbeat arrives before this.
    deadline: Instant,
    /// The task streaming this session's assignments.
    forward: Option<AbortHandle>,
}

/// The manager's cluster-port service.
pub(crate) struct Dispatcher {
    store: Store,
    /// This manager's node ID (its own agent is local; it is never marked down here).
    self_id: String,
    /// The cluster's ID: callers' certificates must name it (known before the replica has the
    /// cluster object, which a joining manager's Raft route needs).
    cluster_id: String,
    /// The swarm, for writes that may have to be forwarded to the leader.
    swarm: Weak<crate::Inner>,
    leadership: watch::Receiver<Leadership>,
    sessions: Mutex<HashMap<String, Liveness>>,
    /// When this manager became the leader (`None` while it follows).
    leader_since: Mutex<Option<Instant>>,
}

pub(crate) fn heartbeat_period(cluster: Option<&Cluster>) -> Duration {
    cluster
        .map(|c| c.spec.dispatcher.heartbeat_period)
        .filter(|p| *p > 0)
        .map(|p| Duration::from_nanos(p as u64))
        .unwrap_or(DEFAULT_PERIOD)
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// A swarm error as a route's answer.
pub(crate) fn status_of(e: SwarmError) -> Status {
    match e.kind() {
        ErrorKind::InvalidArgument => Status::bad_request(e.to_string()),
        ErrorKind::NotFound => Status::not_found(e.to_string()),
        ErrorKind::Forbidden => Status::forbidden(e.to_string()),
        ErrorKind::Conflict => Status::conflict(e.to_string()),
        ErrorKind::Unavailable => Status::unavailable(e.to_string()),
        ErrorKind::Unimplemented => Status::new(hyper::StatusCode::NOT_IMPLEMENTED, e.to_string()),
        ErrorKind::Internal => Status::internal(e.to_string()),
    }
}

/// The IP part of an advertise address (`ip`, `ip:port`), if it is one.
fn advertise_ip(text: &str) -> Option<IpAddr> {
    text.parse::<SocketAddr>().map(|a| a.ip()).ok().or_else(|| text.parse::<IpAddr>().ok())
}

/// Every manager as nodes know it, the one at `leader_addr` first.
pub(crate) fn managers_of(view: &ReadTx, leader_addr: Option<&str>) -> Vec<RemoteManager> {
    let mut list: Vec<RemoteManager> = view
        .list::<Node>()
        .into_iter()
        .filter_map(|n| n.manager_status.map(|m| RemoteManager { node_id: n.id, addr: m.addr }))
        .filter(|m| !m.addr.is_empty())
        .collect();
    list.sort_by_key(|m| Some(m.addr.as_str()) != leader_addr);
    list
}

fn root_ca(cluster: &Cluster) -> Result<RootCa, SwarmError> {
    let secrets = cluster.store_only.as_ref().ok_or_else(|| SwarmError::Unavailable("the cluster has no root CA".into()))?;
    RootCa::from_pem(&secrets.root_ca_cert_pem, &secrets.root_ca_key_pem).map_err(|e| SwarmError::Internal(e.to_string()))
}

fn cluster_of(store: &Store) -> Result<Cluster, SwarmError> {
    store
        .view()
        .list::<Cluster>()
        .into_iter()
        .next()
        .ok_or_else(|| SwarmError::Unavailable("the cluster object is missing".into()))
}

/// `POST /v1/join` on the leader: check the token, create the Node, sign the CSR for the
/// token's role. `peer_ip` is the joining node's address as the first manager saw it.
pub(crate) async fn join_node(store: &Store, req: JoinRpcRequest, peer_ip: IpAddr) -> Result<JoinRpcResponse, SwarmError> {
    let cluster = cluster_of(store)?;
    let role = if shoal_rpc::tokens_match(&req.token, &cluster.join_tokens.worker) {
        Role::Worker
    } else if shoal_rpc::tokens_match(&req.token, &cluster.join_tokens.manager) {
        Role::Manager
    } else {
        return Err(SwarmError::BadRequest(INVALID_TOKEN.into()));
    };
    let ca = root_ca(&cluster)?;
    let node_id = shoal_types::new_id();
    let ip = advertise_ip(&req.advertise_addr).unwrap_or(peer_ip);
    let manager_addr = match req.advertise_addr.parse::<SocketAddr>() {
        Ok(a) => SocketAddr::new(ip, a.port()),
        Err(_) => SocketAddr::new(ip, shoal_rpc::DEFAULT_PORT),
    };
    let validity = Duration::from_nanos(cluster.spec.ca_config.node_cert_expiry.max(0) as u64);
    let validity = if validity.is_zero() { shoal_rpc::pki::DEFAULT_NODE_CERT_VALIDITY } else { validity };
    let ips: Vec<IpAddr> = if role == Role::Manager { vec![ip] } else { Vec::new() };
    let cert = ca
        .issue(&req.csr, &node_id, role, &cluster.id, &ips, validity)
        .map_err(|e| SwarmError::BadRequest(e.to_string()))?;
    let mut description = req.description.clone();
    if description.hostname.is_empty() {
        description.hostname = req.hostname.clone();
    }
    let (node_role, manager_status) = match role {
        Role::Manager => (
            NodeRole::Manager,
            Some(ManagerStatus { leader: false, reachability: Reachability::Unknown, addr: manager_addr.to_string() }),
        ),
        Role::Worker => (NodeRole::Worker, None),
    };
    let node = Node {
        id: node_id.clone(),
        spec: NodeSpec { role: node_role, availability: req.availability, ..NodeSpec::default() },
        description,
        status: NodeStatus { state: NodeState::Unknown, message: String::new(), addr: ip.to_string() },
        manager_status,
        ..Node::default()
    };
    store.update(move |tx| tx.create(node)).await?;
    let role_name = if role == Role::Manager { "manager" } else { "worker" };
    info!(node = %node_id, addr = %ip, role = role_name, "a node joined the swarm");
    let status = store.raft_status();
    Ok(JoinRpcResponse {
        node_id,
        role: role_name.into(),
        cluster_id: cluster.id.clone(),
        cert,
        ca: ca.cert_pem().to_string(),
        managers: managers_of(&store.view(), status.leader_addr()),
    })
}

impl Dispatcher {
    pub(crate) fn new(store: Store, self_id: String, cluster_id: String, swarm: Weak<crate::Inner>) -> Arc<Dispatcher> {
        let leadership = store.leadership();
        Arc::new(Dispatcher {
            store,
            self_id,
            cluster_id,
            swarm,
            leadership,
            sessions: Mutex::new(HashMap::new()),
            leader_since: Mutex::new(None),
        })
    }

    fn is_leader(&self) -> bool {
        self.leadership.borrow().is_leader
    }

    /// This manager became the leader (`true`) or stopped being it. A new leader starts with no
    /// sessions: every worker gets a grace period to open one; a former leader ends its
    /// sessions, so their workers move to the new leader.
    pub(crate) fn set_leader(&self, leader: bool) {
        *self.leader_since.lock().unwrap_or_else(|e| e.into_inner()) = leader.then(Instant::now);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for l in sessions.values() {
            if let Some(f) = &l.forward {
                f.abort();
            }
        }
        sessions.clear();
    }

    fn swarm(&self) -> Result<crate::Swarm, Status> {
        self.swarm
            .upgrade()
            .map(|inner| crate::Swarm { inner })
            .ok_or_else(|| Status::unavailable("this manager is shutting down"))
    }

    fn cluster(&self) -> Result<Cluster, Status> {
        cluster_of(&self.store).map_err(status_of)
    }

    fn period(&self) -> Duration {
        heartbeat_period(self.store.view().list::<Cluster>().first())
    }

    fn not_leader() -> Status {
        Status::unavailable("this manager is not the swarm leader; try another manager")
    }

    /// The route table.
    pub(crate) async fn handle(self: Arc<Self>, peer: Peer, req: Request<Incoming>) -> Result<Response<RpcBody>, Status> {
        let path = req.uri().path().to_string();
        if let Some(rpc) = path.strip_prefix(RAFT_PATH_PREFIX) {
            if req.method() != Method::POST {
                return Err(Status::not_found(format!("no route {} {path}", req.method())));
            }
            self.manager_caller(&peer)?;
            let rpc: RaftRpc = rpc.parse().map_err(|e: StoreError| Status::not_found(e.to_string()))?;
            let body = read_bytes(req, MAX_RAFT_MESSAGE).await?;
            return match self.store.handle_raft_rpc(rpc, &body).await {
                Ok(reply) => ok_bytes(reply),
                Err(e @ StoreError::Invalid(_)) => Err(Status::bad_request(e.to_string())),
                Err(e) => Err(Status::unavailable(e.to_string())),
            };
        }
        match (req.method().clone(), path.as_str()) {
            (Method::GET, shoal_rpc::server::CA_PATH) => {
                let cluster = self.cluster()?;
                Ok(root_ca_response(root_ca(&cluster).map_err(status_of)?.cert_pem()))
            }
            (Method::POST, JOIN_PATH) => {
                let body: JoinRpcRequest = read_json(req).await?;
                let answer: JoinRpcResponse =
                    self.swarm()?.write(ControlOp::Join { req: body, peer_ip: peer.addr.ip() }).await.map_err(status_of)?;
                ok(&answer)
            }
            (Method::POST, shoal_agent::remote::wire::SESSION_PATH) => {
                let id = self.caller(&peer)?;
                if !self.is_leader() {
                    return Err(Self::not_leader());
                }
                let body: SessionRequest = read_json(req).await?;
                self.session(&peer, id, body).await
            }
            (Method::POST, shoal_agent::remote::wire::HEARTBEAT_PATH) => {
                let id = self.caller(&peer)?;
                if !self.is_leader() {
                    return Err(Self::not_leader());
                }
                let body: HeartbeatRequest = read_json(req).await?;
                self.heartbeat(&id, &body.session_id)
            }
            (Method::POST, shoal_agent::remote::wire::LOGS_PATH) => {
                let id = self.caller(&peer)?;
                let body: shoal_agent::remote::wire::LogBatch = read_json(req).await?;
                let wanted = self.swarm()?.inner.log_broker.publish(&id.node_id, body).await;
                ok(&shoal_agent::remote::wire::LogBatchResponse { wanted })
            }
            (Method::POST, shoal_agent::remote::wire::INSPECT_PATH) => {
                let id = self.caller(&peer)?;
                let body: shoal_agent::remote::wire::TaskInspectAnswer = read_json(req).await?;
                let wanted = self.swarm()?.inner.log_broker.answer(&id.node_id, body);
                ok(&serde_json::json!({ "wanted": wanted }))
            }
            (Method::POST, shoal_agent::remote::wire::STATUS_PATH) => {
                let id = self.caller(&peer)?;
                let body: StatusRequest = read_json(req).await?;
                let op = ControlOp::RecordStatus { node_id: id.node_id.clone(), updates: body.updates };
                self.swarm()?.write::<()>(op).await.map_err(status_of)?;
                ok(&serde_json::json!({}))
            }
            (Method::POST, crate::certs::RENEW_PATH) => {
                let id = self.caller(&peer)?;
                let body: crate::certs::RenewRequest = read_json(req).await?;
                crate::certs::renew(&self.store, &id, body)
            }
            (Method::POST, crate::certs::TLS_PATH) => {
                let id = self.caller(&peer)?;
                let body: crate::certs::TlsRequest = read_json(req).await?;
                crate::certs::report_tls(&self.swarm()?, &self.store, &id, body).await
            }
            (Method::POST, CONTROL_PATH) => {
                let id = self.manager_caller(&peer)?;
                let mut body: ControlRequest = read_json(req).await?;
                if body.hops == 0 {
                    // A manager asking for itself: the certificate says who it is.
                    if let ControlOp::AddManager { node_id, .. } = &mut body.op {
                        node_id.clone_from(&id.node_id);
                    }
                }
                let swarm = self.swarm()?;
                let reply = match swarm.route(body.op, body.hops).await {
                    Ok(value) => ControlReply::Ok { value, index: self.store.view().index() },
                    Err(e) => ControlReply::Err { kind: e.kind().as_str().to_string(), message: e.to_string() },
                };
                ok(&reply)
            }
            _ => Err(Status::not_found(format!("no route {} {path}", req.method()))),
        }
    }

    /// The calling node, from its certificate, which must belong to this cluster.
    fn caller(&self, peer: &Peer) -> Result<NodeIdentity, Status> {
        let id = require(peer, Role::Worker)?.clone();
        if id.cluster_id != self.cluster_id {
            return Err(Status::forbidden("the node certificate belongs to another cluster"));
        }
        Ok(id)
    }

    /// The calling manager (manager certificate of this cluster only).
    fn manager_caller(&self, peer: &Peer) -> Result<NodeIdentity, Status> {
        require(peer, Role::Manager)?;
        self.caller(peer)
    }

    fn managers(&self) -> Vec<RemoteManager> {
        managers_of(&self.store.view(), self.store.raft_status().leader_addr())
    }

    async fn session(self: &Arc<Self>, peer: &Peer, id: NodeIdentity, req: SessionRequest) -> Result<Response<RpcBody>, Status> {
        let node_id = id.node_id.clone();
        if !req.node_id.is_empty() && req.node_id != node_id {
            return Err(Status::forbidden("the session's node ID does not match the node certificate"));
        }
        let addr = advertise_ip(&req.advertise_addr).unwrap_or(peer.addr.ip()).to_string();
        let description = req.description;
        let nid = node_id.clone();
        let found = self
            .store
            .update(move |tx| {
                let Some(mut node) = tx.get::<Node>(&nid) else { return Ok(false) };
                if !description.hostname.is_empty() {
                    node.description = description;
                }
                node.status = NodeStatus { state: NodeState::Ready, message: String::new(), addr };
                tx.update(node)?;
                Ok(true)
            })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if !found {
            return Err(Status::forbidden(format!("node {node_id} is not a member of this swarm (it was removed)")));
        }
        let period = self.period();
        let session_id = shoal_types::new_id();
        let (tx, rx) = mpsc::channel::<SessionMessage>(16);
        let mut managers = self.managers();
        tx.send(SessionMessage::Session(SessionInfo {
            id: session_id.clone(),
            heartbeat_period_ns: period.as_nanos() as u64,
            managers: managers.clone(),
        }))
        .await
        .map_err(internal)?;
        let (_, mut commits) = self.store.watch();
        let mut assignments = LocalControlPlane::new(self.store.clone(), node_id.clone())
            .assignments()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if let Ok(swarm) = self.swarm() {
            swarm.inner.log_broker.session_opened(&node_id, tx.clone());
        }
        let dispatcher = Arc::downgrade(self);
        let (nid, sid) = (node_id.clone(), session_id.clone());
        let forward = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    a = assignments.recv() => match a {
                        Some(a) => if tx.send(SessionMessage::from(a)).await.is_err() { break },
                        None => return,
                    },
                    c = commits.recv() => {
                        let nodes_changed = match &c {
                            Ok(c) => c.changes.iter().any(|ch| ch.kind() == Kind::Node),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        };
                        let Some(d) = dispatcher.upgrade().filter(|_| nodes_changed) else { continue };
                        // The managers changed: tell the node, so it can fail over to any of them.
                        let now = d.managers();
                        if now != managers {
                            managers = now.clone();
                            let info = SessionInfo { id: sid.clone(), heartbeat_period_ns: d.period().as_nanos() as u64, managers: now };
                            if tx.send(SessionMessage::Session(info)).await.is_err() { break }
                        }
                    }
                }
            }
            if let Some(d) = dispatcher.upgrade() {
                if let Ok(swarm) = d.swarm() {
                    swarm.inner.log_broker.session_closed(&nid, &tx);
                }
                d.session_closed(&nid, &sid);
            }
        });
        let old = self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(
            node_id.clone(),
            Liveness { session_id: Some(session_id.clone()), deadline: Instant::now() + period * GRACE_PERIODS, forward: Some(forward.abort_handle()) },
        );
        if let Some(f) = old.and_then(|o| o.forward) {
            f.abort(); // a node has one session: the newest
        }
        info!(node = %node_id, session = %session_id, "dispatcher session started");
        Ok(ndjson(rx))
    }

    /// The node closed its session stream (its daemon stopped or the connection broke): unless
    /// it opens a new one within one heartbeat period it is marked down, without waiting for
    /// the remaining grace periods.
    fn session_closed(&self, node_id: &str, session_id: &str) {
        let soon = Instant::now() + self.period();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = sessions.get_mut(node_id).filter(|l| l.session_id.as_deref() == Some(session_id)) {
            l.deadline = l.deadline.min(soon);
            l.forward = None;
            l.session_id = None; // its heartbeats now get "session invalid": the node must reopen
            info!(node = %node_id, session = %session_id, "dispatcher session stream closed");
        }
    }

    fn heartbeat(&self, caller: &NodeIdentity, session_id: &str) -> Result<Response<RpcBody>, Status> {
        let period = self.period();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get_mut(&caller.node_id) {
            Some(l) if l.session_id.as_deref() == Some(session_id) => {
                l.deadline = Instant::now() + period * GRACE_PERIODS;
                drop(sessions);
                let view = self.store.view();
                let mut cluster_version = view.list::<Cluster>().first().map_or(0, |c| c.meta.version.index);
                if let Some(node) = view.get::<Node>(&caller.node_id) {
                    if crate::ca::renewal_role(caller.role, &node) != caller.role {
                        // A promotion or demotion: the node must fetch its certificate policy.
                        cluster_version = cluster_version.max(node.meta.version.index);
                    }
                }
                ok(&HeartbeatResponse { period_ns: period.as_nanos() as u64, cluster_version })
            }
            _ => Err(Status::not_found("session invalid: open a new session")),
        }
    }

    /// The leader's node-health work, every tick; a follower does nothing. Runs until aborted.
    pub(crate) async fn health_loop(self: Arc<Self>) {
        loop {
            let tick = (self.period() / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
            tokio::time::sleep(tick).await;
            let Some(since) = *self.leader_since.lock().unwrap_or_else(|e| e.into_inner()) else { continue };
            if !self.is_leader() {
                continue;
            }
            self.track_workers(since);
            self.expire_workers().await;
            if let Err(e) = self.check_managers(since).await {
                debug!(error = %e, "updating the managers' health failed; will retry");
            }
        }
    }

    /// Every worker that is not down and has no entry (it just joined, was just demoted, or
    /// this manager just became the leader) gets twice the grace period to open a session;
    /// after a leader change also the agents' longest reconnection back-off.
    fn track_workers(&self, leader_since: Instant) {
        let grace = self.period() * GRACE_PERIODS;
        let now = Instant::now();
        let deadline = (now + grace * 2).max(leader_since + grace * 2 + AGENT_MAX_BACKOFF);
        let view = self.store.view();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for n in view.find::<Node>(|n| n.manager_status.is_none() && n.status.state != NodeState::Down && n.id != self.self_id) {
            sessions.entry(n.id).or_insert(Liveness { session_id: None, deadline, forward: None });
        }
    }

    /// Marks workers whose heartbeat deadline passed DOWN and ends their sessions.
    async fn expire_workers(&self) {
        let now = Instant::now();
        let expired: Vec<String> = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<String> = sessions.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| id.clone()).collect();
            for id in &ids {
                if let Some(f) = sessions.remove(id).and_then(|l| l.forward) {
                    f.abort();
                }
            }
            ids
        };
        for id in expired {
            let nid = id.clone();
            let r = self
                .store
                .update(move |tx| {
                    if let Some(mut node) = tx.get::<Node>(&nid) {
                        // Managers are watched through Raft, not heartbeats.
                        if node.status.state != NodeState::Down && node.manager_status.is_none() {
                            node.status.state = NodeState::Down;
                            node.status.message = "heartbeat failure".into();
                            tx.update(node)?;
                            return Ok(true);
                        }
                    }
                    Ok(false)
                })
                .await;
            match r {
                Ok(true) => warn!(node = %id, "node missed its heartbeats; marked it down"),
                Ok(false) => {}
                Err(e) => {
                    warn!(node = %id, error = %e, "marking a node down failed; retrying");
                    // Try again on the next tick.
                    self.sessions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(id)
                        .or_insert(Liveness { session_id: None, deadline: Instant::now(), forward: None });
                }
            }
        }
    }

    /// Managers' health from Raft: see [`manager_health`].
    async fn check_managers(&self, leader_since: Instant) -> Result<(), StoreError> {
        let status = self.store.raft_status();
        if !status.is_leader {
            return Ok(());
        }
        let silence = (self.period() * GRACE_PERIODS).max(MIN_MANAGER_SILENCE);
        let in_grace = leader_since.elapsed() < silence * 2;
        let members = status.members();
        let view = self.store.view();
        let mut changes = Vec::new();
        for node in view.find::<Node>(|n| n.manager_status.is_some()) {
            let heard = if node.id == self.self_id {
                Some(true)
            } else {
                let addr = node.manager_status.as_ref().map(|m| m.addr.as_str()).unwrap_or_default();
                let member = crate::managers::member_at(&members, addr);
                let age = member.and_then(|id| status.peer_ack_age.get(&id).copied().flatten());
                match age {
                    Some(age) if age < silence => Some(true),
                    _ if in_grace => None,
                    _ => Some(false),
                }
            };
            if let Some(want) = manager_health(&node, node.id == self.self_id, heard) {
                changes.push((node.id.clone(), want));
            }
        }
        for (id, (state, message, reach, leader)) in changes {
            let nid = id.clone();
            let (msg, r) = (message.clone(), reach);
            self.store
                .update(move |tx| {
                    let Some(mut node) = tx.get::<Node>(&nid) else { return Ok(()) };
                    let Some(ms) = node.manager_status.as_mut() else { return Ok(()) };
                    ms.reachability = r;
                    ms.leader = leader;
                    node.status.state = state;
                    node.status.message = msg;
                    tx.update(node)
                })
                .await?;
            match reach {
                Reachability::Unreachable => warn!(node = %id, "manager unreachable over raft; marked it down"),
                _ => info!(node = %id, reachability = ?reach, leader, "manager status updated"),
            }
        }
        Ok(())
    }
}

/// What a manager's Node should say, as the leader sees it: `heard` = whether its Raft member
/// acknowledged the leader recently (`None`: not known yet, keep what is stored). Returns the
/// new (state, message, reachability, leader) when it differs from the stored one.
pub(crate) fn manager_health(node: &Node, is_self: bool, heard: Option<bool>) -> Option<(NodeState, String, Reachability, bool)> {
    let ms = node.manager_status.as_ref()?;
    let want = match heard? {
        true => (NodeState::Ready, String::new(), Reachability::Reachable, is_self),
        false => (NodeState::Down, "heartbeat failure".to_string(), Reachability::Unreachable, false),
    };
    let have = (node.status.state, node.status.message.clone(), ms.reachability, ms.leader);
    (have != want).then_some(want)
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        for l in self.sessions.get_mut().unwrap_or_else(|e| e.into_inner()).values() {
            if let Some(f) = &l.forward {
                f.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(state: NodeState, reach: Reachability, leader: bool) -> Node {
        Node {
            id: "m".into(),
            status: NodeStatus { state, message: String::new(), addr: "10.0.0.2".into() },
            manager_status: Some(ManagerStatus { leader, reachability: reach, addr: "10.0.0.2:2377".into() }),
            ..Node::default()
        }
    }

    #[test]
    fn manager_health_follows_raft() {
        // A joining manager (unknown) that Raft hears from becomes Ready/Reachable.
        let n = manager(NodeState::Unknown, Reachability::Unknown, false);
        assert_eq!(manager_health(&n, false, Some(true)), Some((NodeState::Ready, String::new(), Reachability::Reachable, false)));
        // Silence: down and unreachable; unknown (grace after an election): unchanged.
        let n = manager(NodeState::Ready, Reachability::Reachable, false);
        assert_eq!(
            manager_health(&n, false, Some(false)),
            Some((NodeState::Down, "heartbeat failure".into(), Reachability::Unreachable, false))
        );
        assert_eq!(manager_health(&n, false, None), None);
        assert_eq!(manager_health(&n, false, Some(true)), None);
        // The old leader's flag is cleared; the leader marks itself.
        let old_leader = manager(NodeState::Ready, Reachability::Reachable, true);
        assert_eq!(manager_health(&old_leader, false, Some(true)).map(|w| w.3), Some(false));
        assert_eq!(manager_health(&n, true, Some(true)).map(|w| w.3), Some(true));
        // Workers are not managed here.
        assert_eq!(manager_health(&Node::default(), false, Some(false)), None);
    }
}

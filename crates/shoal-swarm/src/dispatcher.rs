//! The manager's cluster port (`docs/CONTRACTS.md`, "Multi-node contracts"): the CA server
//! (`GET /v1/ca`, `POST /v1/join`) and the dispatcher (`/v1/session`, `/v1/heartbeat`,
//! `/v1/status`), served by [`shoal_rpc::RpcServer`] over mutual TLS, plus the node-health loop
//! that marks a node DOWN when its heartbeats stop (swarmkit `manager/dispatcher`, `ca/server`).
//!
//! - Join: the token is compared in constant time with the cluster's current worker and manager
//!   tokens; a worker join creates the Node (worker, status unknown until its session starts,
//!   Addr = its advertise address or the connection's peer IP) and signs the CSR. Manager joins
//!   are refused (501) until multi-manager Raft exists.
//! - Session: the caller's certificate names the node. The node is marked READY, the stream
//!   carries the session message, the complete assignment set and then incremental changes (the
//!   same watch logic the manager's own agent uses, [`shoal_agent::LocalControlPlane`]).
//! - Heartbeat: answers the current `Dispatcher.HeartbeatPeriod`; the node must send the next one
//!   within 3 periods or it is marked DOWN ("heartbeat failure") and its session closed. The
//!   orchestrators then replace its tasks.
//! - Status: [`shoal_agent::record_status`], the rules the local agent uses (only the caller's
//!   tasks, never backwards).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use shoal_agent::remote::wire::{
    HeartbeatRequest, HeartbeatResponse, RemoteManager, SessionInfo, SessionMessage, SessionRequest, StatusRequest,
};
use shoal_agent::{ControlError, ControlPlane, LocalControlPlane};
use shoal_rpc::server::{ndjson, ok, read_json, root_ca_response};
use shoal_rpc::{require, NodeIdentity, Peer, Role, RootCa, RpcBody, Status};
use shoal_store::Store;
use shoal_types::{Cluster, Node, NodeAvailability, NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{info, warn};

pub(crate) const JOIN_PATH: &str = "/v1/join";
/// A node that misses this many heartbeat periods is marked down (swarmkit's grace multiplier).
const GRACE_PERIODS: u32 = 3;
const DEFAULT_PERIOD: Duration = Duration::from_secs(5);
const INVALID_TOKEN: &str = "A valid join token is necessary to join this cluster";

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

/// What the dispatcher knows about a (non-local) node's liveness.
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
    sessions: Mutex<HashMap<String, Liveness>>,
}

fn heartbeat_period(cluster: Option<&Cluster>) -> Duration {
    cluster
        .map(|c| c.spec.dispatcher.heartbeat_period)
        .filter(|p| *p > 0)
        .map(|p| Duration::from_nanos(p as u64))
        .unwrap_or(DEFAULT_PERIOD)
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// The IP part of an advertise address (`ip`, `ip:port`), if it is one.
fn advertise_ip(text: &str) -> Option<IpAddr> {
    text.parse::<std::net::SocketAddr>().map(|a| a.ip()).ok().or_else(|| text.parse::<IpAddr>().ok())
}

impl Dispatcher {
    pub(crate) fn new(store: Store, self_id: String) -> Arc<Dispatcher> {
        let d = Arc::new(Dispatcher { store, self_id, sessions: Mutex::new(HashMap::new()) });
        // Nodes that were up when the manager stopped get a grace period to come back.
        let period = d.period();
        let deadline = Instant::now() + period * GRACE_PERIODS;
        let nodes = d.store.view().list::<Node>();
        let mut sessions = d.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for n in nodes {
            if n.id != d.self_id && n.status.state != NodeState::Down {
                sessions.insert(n.id, Liveness { session_id: None, deadline, forward: None });
            }
        }
        drop(sessions);
        d
    }

    fn cluster(&self) -> Result<Cluster, Status> {
        self.store
            .view()
            .list::<Cluster>()
            .into_iter()
            .next()
            .ok_or_else(|| Status::unavailable("the cluster object is missing"))
    }

    fn period(&self) -> Duration {
        heartbeat_period(self.store.view().list::<Cluster>().first())
    }

    fn root_ca(cluster: &Cluster) -> Result<RootCa, Status> {
        let secrets = cluster.store_only.as_ref().ok_or_else(|| Status::unavailable("the cluster has no root CA"))?;
        RootCa::from_pem(&secrets.root_ca_cert_pem, &secrets.root_ca_key_pem).map_err(internal)
    }

    fn managers(&self) -> Vec<RemoteManager> {
        self.store
            .view()
            .list::<Node>()
            .into_iter()
            .filter_map(|n| n.manager_status.map(|m| RemoteManager { node_id: n.id, addr: m.addr }))
            .collect()
    }

    /// The route table.
    pub(crate) async fn handle(self: Arc<Self>, peer: Peer, req: Request<Incoming>) -> Result<Response<RpcBody>, Status> {
        let path = req.uri().path().to_string();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, shoal_rpc::server::CA_PATH) => {
                let cluster = self.cluster()?;
                Ok(root_ca_response(Self::root_ca(&cluster)?.cert_pem()))
            }
            (Method::POST, JOIN_PATH) => {
                let body: JoinRpcRequest = read_json(req).await?;
                self.join(&peer, body).await
            }
            (Method::POST, shoal_agent::remote::wire::SESSION_PATH) => {
                let id = self.caller(&peer)?;
                let body: SessionRequest = read_json(req).await?;
                self.session(&peer, id, body).await
            }
            (Method::POST, shoal_agent::remote::wire::HEARTBEAT_PATH) => {
                let id = self.caller(&peer)?;
                let body: HeartbeatRequest = read_json(req).await?;
                self.heartbeat(&id.node_id, &body.session_id)
            }
            (Method::POST, shoal_agent::remote::wire::STATUS_PATH) => {
                let id = self.caller(&peer)?;
                let body: StatusRequest = read_json(req).await?;
                let updates = body.updates.into_iter().map(|u| (u.task_id, u.status)).collect();
                match shoal_agent::record_status(&self.store, &id.node_id, updates).await {
                    Ok(()) => ok(&serde_json::json!({})),
                    Err(ControlError::Unavailable(m)) => Err(Status::unavailable(m)),
                    Err(ControlError::Failed(m)) => Err(Status::internal(m)),
                }
            }
            _ => Err(Status::not_found(format!("no route {} {path}", req.method()))),
        }
    }

    /// The calling node, from its certificate, which must belong to this cluster.
    fn caller(&self, peer: &Peer) -> Result<NodeIdentity, Status> {
        let id = require(peer, Role::Worker)?.clone();
        let cluster = self.cluster()?;
        if id.cluster_id != cluster.id {
            return Err(Status::forbidden("the node certificate belongs to another cluster"));
        }
        Ok(id)
    }

    async fn join(&self, peer: &Peer, req: JoinRpcRequest) -> Result<Response<RpcBody>, Status> {
        let cluster = self.cluster()?;
        let role = if shoal_rpc::tokens_match(&req.token, &cluster.join_tokens.worker) {
            Role::Worker
        } else if shoal_rpc::tokens_match(&req.token, &cluster.join_tokens.manager) {
            Role::Manager
        } else {
            return Err(Status::bad_request(INVALID_TOKEN));
        };
        if role == Role::Manager {
            return Err(Status::new(StatusCode::NOT_IMPLEMENTED, "joining as a manager is not supported yet"));
        }
        let ca = Self::root_ca(&cluster)?;
        let node_id = shoal_types::new_id();
        let validity = Duration::from_nanos(cluster.spec.ca_config.node_cert_expiry.max(0) as u64);
        let validity = if validity.is_zero() { shoal_rpc::pki::DEFAULT_NODE_CERT_VALIDITY } else { validity };
        let cert = ca
            .issue(&req.csr, &node_id, role, &cluster.id, &[], validity)
            .map_err(|e| Status::bad_request(e.to_string()))?;
        let ip = advertise_ip(&req.advertise_addr).unwrap_or(peer.addr.ip());
        let mut description = req.description.clone();
        if description.hostname.is_empty() {
            description.hostname = req.hostname.clone();
        }
        let node = Node {
            id: node_id.clone(),
            spec: NodeSpec { role: NodeRole::Worker, availability: req.availability, ..NodeSpec::default() },
            description,
            status: NodeStatus { state: NodeState::Unknown, message: String::new(), addr: ip.to_string() },
            ..Node::default()
        };
        self.store.update(move |tx| tx.create(node)).await.map_err(internal)?;
        let deadline = Instant::now() + self.period() * GRACE_PERIODS;
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.clone(), Liveness { session_id: None, deadline, forward: None });
        info!(node = %node_id, addr = %ip, "a worker joined the swarm");
        ok(&JoinRpcResponse {
            node_id,
            role: "worker".into(),
            cluster_id: cluster.id.clone(),
            cert,
            ca: ca.cert_pem().to_string(),
            managers: self.managers(),
        })
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
        tx.send(SessionMessage::Session(SessionInfo {
            id: session_id.clone(),
            heartbeat_period_ns: period.as_nanos() as u64,
            managers: self.managers(),
        }))
        .await
        .map_err(internal)?;
        let mut assignments = LocalControlPlane::new(self.store.clone(), node_id.clone())
            .assignments()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let forward = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    a = assignments.recv() => match a {
                        Some(a) => if tx.send(SessionMessage::Assignments(a.into())).await.is_err() { return },
                        None => return,
                    },
                }
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

    fn heartbeat(&self, node_id: &str, session_id: &str) -> Result<Response<RpcBody>, Status> {
        let period = self.period();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get_mut(node_id) {
            Some(l) if l.session_id.as_deref() == Some(session_id) => {
                l.deadline = Instant::now() + period * GRACE_PERIODS;
                drop(sessions);
                ok(&HeartbeatResponse { period_ns: period.as_nanos() as u64 })
            }
            _ => Err(Status::not_found("session invalid: open a new session")),
        }
    }

    /// Marks nodes whose heartbeat deadline passed DOWN and ends their sessions. Runs until
    /// aborted.
    pub(crate) async fn health_loop(self: Arc<Self>) {
        loop {
            let tick = (self.period() / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
            tokio::time::sleep(tick).await;
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
                warn!(node = %id, "node missed its heartbeats; marking it down");
                let nid = id.clone();
                let r = self
                    .store
                    .update(move |tx| {
                        if let Some(mut node) = tx.get::<Node>(&nid) {
                            if node.status.state != NodeState::Down {
                                node.status.state = NodeState::Down;
                                node.status.message = "heartbeat failure".into();
                                tx.update(node)?;
                            }
                        }
                        Ok(())
                    })
                    .await;
                if let Err(e) = r {
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

//! Several managers (swarmkit's `manager.go`, `role_manager.go`, raft membership): how writes
//! reach the leader, what only the leader does, and how managers join and leave the Raft group.
//!
//! - **Raft ids ↔ nodes.** A manager's Raft id is random, chosen when its store is created and
//!   persisted in it (shoal-store's rule; the first manager's too). The Raft membership maps
//!   each id to the manager's cluster address, `ip:port`, which is also its Node's
//!   `ManagerStatus.Addr`: that address is the link between a Raft member and a Node
//!   ([`member_at`]). Every member belongs to a manager Node: a manager records its address in
//!   its Node before it enters the group, and the leader removes members whose Node is no
//!   longer a manager.
//! - **Writes go to the leader** (`POST /v1/control`, manager certificates only). Every
//!   control-API write is a [`ControlOp`]: the manager a user talks to validates what it can
//!   locally (specs, names, the image), then [`Swarm::write`] runs the op on the leader —
//!   here when this manager leads, else forwarded (at most two hops, waiting up to 10 s for an
//!   election). The answer carries the leader's applied index, and the forwarding manager waits
//!   until its own replica has applied that far, so a user reads their own writes on any
//!   manager. Reads are served from the local replica. Errors keep the leader's text and class.
//! - **Leader-only work** ([`spawn_leadership`]): the control loops (`shoal_manager`), the
//!   dispatcher's sessions and node health, and the role manager run only while the store says
//!   this manager leads, and stop when it no longer does.
//! - **Joining** (a manager token, or a promotion): the node gets a manager certificate, opens
//!   an empty store, serves its cluster port, then asks the leader to add it
//!   ([`ControlOp::AddManager`]): the leader records its address, adds it as a learner, waits
//!   until it caught up and makes it a voter.
//! - **Role manager** (leader): `docker node promote` sets `Spec.Role = manager`; the leader
//!   gives the node a `ManagerStatus`, which lets it renew into a manager certificate and join
//!   (above). `docker node demote` sets `Spec.Role = worker`; the leader takes the
//!   `ManagerStatus` away (the node learns it from its replica and renews into a worker
//!   certificate), then removes its Raft member. A leader asked to demote itself first hands
//!   leadership to a reachable voter, which then demotes it.
//! - **A manager's own agent** ([`ManagerControlPlane`]) reads its assignments from the local
//!   replica and sends its task statuses to the leader (recorded locally when it leads).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_agent::remote::wire::{StatusRequest, StatusUpdate, STATUS_PATH};
use shoal_agent::{Assignment, ControlError, ControlPlane, LocalControlPlane};
use shoal_rpc::RpcError;
use shoal_store::{RaftStatus, Store};
use shoal_types::{Kind, ManagerStatus, NetworkSpec, Node, NodeRole, NodeSpec, Reachability, ServiceSpec, SwarmSpec, TaskStatus, TlsInfo};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::dispatcher::{Dispatcher, JoinRpcRequest, GRACE_PERIODS};
use crate::error::{ErrorKind, Result, SwarmError};
use crate::peers::{Peers, Purpose};
use crate::Swarm;

pub(crate) const CONTROL_PATH: &str = "/v1/control";
/// A write is forwarded at most this many times (follower → leader, plus one leader change).
const MAX_HOPS: u8 = 2;
/// How long a write waits for a leader to be elected (or reachable).
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long a forwarding manager waits for its replica to catch up with the leader's answer.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// How long a new manager may take to catch up before it becomes a voter.
const JOIN_CATCH_UP: Duration = Duration::from_secs(60);
/// How long a membership change may take (it needs a quorum of the old and the new group).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);

/// A write to the cluster state, run on the leader (`POST /v1/control`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ControlOp {
    /// `spec` is validated, its networks resolved and its image checked by the first manager.
    CreateService { id: String, spec: ServiceSpec },
    UpdateService { id: String, version: u64, spec: ServiceSpec, rollback: bool },
    RemoveService { id: String },
    UpdateNode { id: String, version: u64, spec: NodeSpec },
    RemoveNode { id: String, force: bool },
    UpdateCluster { version: u64, spec: SwarmSpec, rotate_worker: bool, rotate_manager: bool, rotate_unlock: bool },
    CreateNetwork { id: String, spec: NetworkSpec },
    RemoveNetwork { id: String, reference: String },
    /// A node joining through some manager (`peer_ip`: its address as that manager saw it).
    Join { req: JoinRpcRequest, peer_ip: IpAddr },
    /// Task statuses a node reported to some manager.
    RecordStatus { node_id: String, updates: Vec<StatusUpdate> },
    RecordTlsInfo { node_id: String, info: TlsInfo },
    /// Admit manager `node_id` (its store's Raft id, its cluster address) into the Raft group.
    AddManager { node_id: String, raft_id: u64, addr: String },
    /// The dashboard credential's new hash (`dashboard.rs`).
    SetDashboardCredential { hash: String },
}

impl ControlOp {
    fn name(&self) -> &'static str {
        match self {
            ControlOp::CreateService { .. } => "create service",
            ControlOp::UpdateService { .. } => "update service",
            ControlOp::RemoveService { .. } => "remove service",
            ControlOp::UpdateNode { .. } => "update node",
            ControlOp::RemoveNode { .. } => "remove node",
            ControlOp::UpdateCluster { .. } => "update cluster",
            ControlOp::CreateNetwork { .. } => "create network",
            ControlOp::RemoveNetwork { .. } => "remove network",
            ControlOp::Join { .. } => "join",
            ControlOp::RecordStatus { .. } => "record status",
            ControlOp::RecordTlsInfo { .. } => "record tls info",
            ControlOp::AddManager { .. } => "add manager",
            ControlOp::SetDashboardCredential { .. } => "set dashboard credential",
        }
    }
}

/// `POST /v1/control` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ControlRequest {
    /// How many managers forwarded it already (0 from the originator).
    #[serde(default)]
    pub hops: u8,
    pub op: ControlOp,
}

/// `POST /v1/control` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ControlReply {
    /// The op's result and the answering manager's applied index after it.
    Ok { value: Value, index: u64 },
    /// The op failed: the error's class ([`ErrorKind::as_str`]) and text.
    Err { kind: String, message: String },
}

fn no_leader() -> SwarmError {
    SwarmError::Unavailable("rpc error: code = Unavailable desc = The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.".into())
}

/// The Raft member whose address is `addr`.
pub(crate) fn member_at(members: &BTreeMap<u64, String>, addr: &str) -> Option<u64> {
    members.iter().find(|(_, a)| a.as_str() == addr).map(|(id, _)| *id)
}

/// swarmkit's `CanRemoveMember`: after removing `remove` from `voters` (raft id → reachable),
/// do the reachable ones still make a quorum of the smaller group?
pub(crate) fn can_remove_member(voters: &BTreeMap<u64, bool>, remove: u64) -> bool {
    let reachable = voters.iter().filter(|(id, up)| **id != remove && **up).count();
    let remaining = voters.len() - usize::from(voters.contains_key(&remove));
    // a majority of the remaining group
    reachable > remaining / 2
}

/// Each voter's reachability as the leader sees it (itself always; a peer when it acknowledged
/// within `silence`).
pub(crate) fn voter_reachability(status: &RaftStatus, silence: Duration) -> BTreeMap<u64, bool> {
    let mut all = member_reachability(status, silence);
    all.retain(|id, _| status.voters.contains_key(id));
    all
}

/// [`voter_reachability`] for every member, learners too.
pub(crate) fn member_reachability(status: &RaftStatus, silence: Duration) -> BTreeMap<u64, bool> {
    status
        .members()
        .keys()
        .map(|id| {
            let up = *id == status.node_id
                || status.peer_ack_age.get(id).copied().flatten().is_some_and(|age| age < silence);
            (*id, up)
        })
        .collect()
}

/// Show who leads as this manager sees it now: `Leader` on the manager at `leader_addr`
/// (reachable, since it leads), on no other. The stored flags lag a leader change until the
/// new leader rewrites them.
pub(crate) fn overlay_leader(nodes: &mut [Node], leader_addr: Option<&str>) {
    for n in nodes {
        if let Some(ms) = n.manager_status.as_mut() {
            ms.leader = leader_addr == Some(ms.addr.as_str());
            if ms.leader {
                ms.reachability = Reachability::Reachable;
            }
        }
    }
}

/// Why a forwarded write failed.
enum Forward {
    /// It never reached a manager that could run it (retry elsewhere).
    NotSent(SwarmError),
    /// It may have run; the answer is final.
    Failed(SwarmError),
}

async fn forward(peers: &Peers, addr: &str, req: &ControlRequest) -> std::result::Result<(Value, u64), Forward> {
    let client = peers.client(addr, Purpose::Control).map_err(|e| Forward::NotSent(SwarmError::Unavailable(e.to_string())))?;
    match client.call_json::<_, ControlReply>(CONTROL_PATH, req).await {
        Ok(ControlReply::Ok { value, index }) => Ok((value, index)),
        Ok(ControlReply::Err { kind, message }) => Err(Forward::Failed(SwarmError::Remote { kind: ErrorKind::parse(&kind), message })),
        Err(e @ RpcError::Connect { .. }) => Err(Forward::NotSent(SwarmError::Unavailable(format!("the leader is unreachable: {e}")))),
        Err(RpcError::Status { status: 503, message }) => Err(Forward::NotSent(SwarmError::Unavailable(message))),
        Err(e) => Err(Forward::Failed(SwarmError::Unavailable(format!("the leader at {addr} did not answer: {e}")))),
    }
}

/// Wait (a little) until `store` has applied `index`.
async fn wait_applied(store: &Store, index: u64) {
    let deadline = Instant::now() + CATCH_UP_WAIT;
    while store.view().index() < index && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Swarm {
    /// This manager's store and peer clients ([`SwarmError::NotManager`] on a worker).
    fn manager_parts(&self) -> Result<(Store, Arc<Peers>)> {
        let active = self.active().ok_or(SwarmError::NotInSwarm)?;
        match (&active.store, &active.peers) {
            (Some(store), Some(peers)) => Ok((store.clone(), peers.clone())),
            _ => Err(SwarmError::NotManager),
        }
    }

    /// Run `op` on the leader and decode its result.
    pub(crate) async fn write<T: DeserializeOwned>(&self, op: ControlOp) -> Result<T> {
        let value = self.route(op, 0).await?;
        serde_json::from_value(value).map_err(|e| SwarmError::Internal(format!("decoding the leader's answer: {e}")))
    }

    /// Run `op` here if this manager leads, else forward it to the leader (`hops` = how many
    /// managers forwarded it so far).
    pub(crate) async fn route(&self, op: ControlOp, hops: u8) -> Result<Value> {
        let (store, peers) = self.manager_parts()?;
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let status = store.raft_status();
            if status.is_leader {
                match self.execute(op.clone()).await {
                    // Leadership moved before the write was proposed: find the new leader.
                    Err(e) if e.kind() == ErrorKind::Unavailable && !store.raft_status().is_leader && Instant::now() < deadline => {
                        debug!(op = op.name(), error = %e, "lost the leadership during a write; forwarding it");
                        continue;
                    }
                    r => return r,
                }
            }
            if hops >= MAX_HOPS {
                return Err(no_leader());
            }
            if let Some(addr) = status.leader_addr() {
                let req = ControlRequest { hops: hops + 1, op: op.clone() };
                match forward(&peers, addr, &req).await {
                    Ok((value, index)) => {
                        wait_applied(&store, index).await;
                        return Ok(value);
                    }
                    Err(Forward::NotSent(e)) if Instant::now() < deadline => {
                        debug!(op = op.name(), leader = %addr, error = %e, "could not forward a write; retrying");
                    }
                    Err(Forward::NotSent(e) | Forward::Failed(e)) => return Err(e),
                }
            }
            if Instant::now() >= deadline {
                return Err(no_leader());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Run `op` on this manager, the leader.
    async fn execute(&self, op: ControlOp) -> Result<Value> {
        let unit = |r: Result<()>| r.map(|()| Value::Null);
        let name = op.name();
        let r = match op {
            ControlOp::CreateService { id, spec } => unit(self.commit_create_service(id, spec).await),
            ControlOp::UpdateService { id, version, spec, rollback } => unit(self.commit_update_service(id, version, spec, rollback).await),
            ControlOp::RemoveService { id } => unit(self.commit_remove_service(id).await),
            ControlOp::UpdateNode { id, version, spec } => unit(self.commit_update_node(id, version, spec).await),
            ControlOp::RemoveNode { id, force } => unit(self.commit_remove_node(id, force).await),
            ControlOp::UpdateCluster { version, spec, rotate_worker, rotate_manager, rotate_unlock } => {
                unit(self.commit_update_cluster(version, spec, rotate_worker, rotate_manager, rotate_unlock).await)
            }
            ControlOp::CreateNetwork { id, spec } => unit(self.commit_create_network(id, spec).await),
            ControlOp::RemoveNetwork { id, reference } => unit(self.commit_remove_network(id, reference).await),
            ControlOp::Join { req, peer_ip } => {
                let answer = crate::dispatcher::join_node(&self.store()?, req, peer_ip).await?;
                serde_json::to_value(answer).map_err(|e| SwarmError::Internal(e.to_string()))
            }
            ControlOp::RecordStatus { node_id, updates } => {
                let updates = updates.into_iter().map(|u| (u.task_id, u.status)).collect();
                match shoal_agent::record_status(&self.store()?, &node_id, updates).await {
                    Ok(()) => Ok(Value::Null),
                    Err(ControlError::Unavailable(m)) => Err(SwarmError::Unavailable(m)),
                    Err(ControlError::Failed(m)) => Err(SwarmError::Internal(m)),
                }
            }
            ControlOp::RecordTlsInfo { node_id, info } => unit(crate::certs::record_tls_info(&self.store()?, &node_id, info).await),
            ControlOp::AddManager { node_id, raft_id, addr } => unit(self.add_manager(node_id, raft_id, addr).await),
            ControlOp::SetDashboardCredential { hash } => unit(self.commit_set_dashboard_credential(hash).await),
        };
        if let Err(e) = &r {
            debug!(op = name, error = %e, "write refused");
        }
        r
    }

    /// Admit a manager into the Raft group (on the leader): record its address in its Node,
    /// drop an older member at the same address (the same manager with a new store), add it as
    /// a learner, wait until it caught up, make it a voter.
    async fn add_manager(&self, node_id: String, raft_id: u64, addr: String) -> Result<()> {
        let store = self.store()?;
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(SwarmError::Invalid(format!("invalid manager address {addr:?}")));
        }
        let Some(node) = store.view().get::<Node>(&node_id) else {
            return Err(SwarmError::PermissionDenied(format!("node {node_id} is not a member of this swarm")));
        };
        if node.spec.role != NodeRole::Manager {
            return Err(SwarmError::FailedPrecondition(format!("node {node_id} is not a manager")));
        }
        let (nid, a) = (node_id.clone(), addr.clone());
        store
            .update(move |tx| {
                let Some(mut node) = tx.get::<Node>(&nid) else { return Ok(()) };
                let ms = node.manager_status.get_or_insert_with(ManagerStatus::default);
                if ms.addr != a {
                    ms.addr = a;
                    tx.update(node)?;
                }
                Ok(())
            })
            .await?;
        let members = store.raft_status().members();
        for (old, _) in members.iter().filter(|(id, a)| a.as_str() == addr && **id != raft_id) {
            info!(node = %node_id, old = %format!("{old:x}"), "removing this manager's previous raft member");
            membership(store.remove_member(*old)).await?;
        }
        info!(node = %node_id, raft_id = %format!("{raft_id:x}"), %addr, "adding a manager to the raft group");
        tokio::time::timeout(JOIN_CATCH_UP, store.add_voter(raft_id, &addr))
            .await
            .map_err(|_| SwarmError::Unavailable(format!("manager {node_id} at {addr} did not catch up with the raft log in time")))??;
        let nid = node_id.clone();
        store
            .update(move |tx| {
                let Some(mut node) = tx.get::<Node>(&nid) else { return Ok(()) };
                if let Some(ms) = node.manager_status.as_mut().filter(|ms| ms.reachability != Reachability::Reachable) {
                    ms.reachability = Reachability::Reachable;
                    tx.update(node)?;
                }
                Ok(())
            })
            .await?;
        info!(node = %node_id, raft_id = %format!("{raft_id:x}"), %addr, "a manager joined the raft group");
        Ok(())
    }
}

/// A membership change with a deadline.
async fn membership(change: impl std::future::Future<Output = std::result::Result<(), shoal_store::StoreError>>) -> Result<()> {
    tokio::time::timeout(MEMBERSHIP_TIMEOUT, change)
        .await
        .map_err(|_| SwarmError::Unavailable("the raft membership change did not complete in time".into()))?
        .map_err(SwarmError::from)
}

// ---- leader-only work ----

/// Start and stop the leader-only work as this manager gains and loses the leadership: the
/// control loops, the dispatcher's leader mode and the role manager. A new leader also makes
/// sure the Raft membership has its cluster address `addr` (a store created by an older
/// version recorded a placeholder). Ends (stopping it all) when `stop` turns true.
pub(crate) fn spawn_leadership(
    store: Store,
    dispatcher: Option<Arc<Dispatcher>>,
    node_id: String,
    addr: String,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut leadership = store.leadership();
        let mut running: Option<(shoal_manager::ManagerHandle, watch::Sender<bool>, JoinHandle<()>)> = None;
        loop {
            let is_leader = leadership.borrow_and_update().is_leader;
            if is_leader && running.is_none() {
                let manager = shoal_manager::Manager::start(store.clone(), shoal_manager::ManagerConfig::default());
                if let Some(d) = &dispatcher {
                    d.set_leader(true);
                }
                let (role_stop, role_rx) = watch::channel(false);
                let roles = tokio::spawn(role_manager(store.clone(), node_id.clone(), role_rx));
                running = Some((manager, role_stop, roles));
                info!(node = %node_id, "this manager is the leader: control loops started");
                let raft_id = store.raft_id();
                if store.raft_status().voters.get(&raft_id).is_some_and(|a| *a != addr) {
                    match store.set_member_addr(raft_id, &addr).await {
                        Ok(()) => info!(%addr, "recorded this manager's raft address"),
                        Err(e) => warn!(%addr, error = %e, "recording this manager's raft address failed"),
                    }
                }
            } else if !is_leader {
                if let Some((manager, role_stop, roles)) = running.take() {
                    stop_leader_work(manager, role_stop, roles, dispatcher.as_deref()).await;
                    info!(node = %node_id, "this manager is no longer the leader: control loops stopped");
                }
            }
            tokio::select! {
                r = leadership.changed() => if r.is_err() { break },
                _ = stop.changed() => break,
            }
        }
        if let Some((manager, role_stop, roles)) = running.take() {
            stop_leader_work(manager, role_stop, roles, dispatcher.as_deref()).await;
        }
    })
}

async fn stop_leader_work(manager: shoal_manager::ManagerHandle, role_stop: watch::Sender<bool>, roles: JoinHandle<()>, dispatcher: Option<&Dispatcher>) {
    if let Some(d) = dispatcher {
        d.set_leader(false);
    }
    let _ = role_stop.send(true);
    let _ = roles.await;
    manager.stop().await;
}

/// The role manager: reconcile promotions, demotions and Raft members with the Nodes, at
/// start, on every node commit and every few seconds (retries). Leader only.
async fn role_manager(store: Store, self_id: String, mut stop: watch::Receiver<bool>) {
    let (_, mut commits) = store.watch();
    loop {
        if let Err(e) = reconcile_roles(&store, &self_id).await {
            warn!(error = %e, "reconciling manager roles failed; will retry");
        }
        let wait = async {
            loop {
                match commits.recv().await {
                    Ok(c) if c.changes.iter().any(|ch| ch.kind() == Kind::Node) => return,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = wait => {}
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// What the role manager must do now (pure; see [`role_manager`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RoleAction {
    /// Promote: give node `0` a `ManagerStatus` with address `1`.
    Admit(String, String),
    /// Demote: take node `0`'s `ManagerStatus` away.
    Dismiss(String),
    /// This leader is being demoted: hand leadership to voter `0` first.
    HandOver(u64),
    /// Remove Raft member `0`: no manager Node has its address.
    RemoveMember(u64),
}

/// The role manager's decisions, from the nodes and the Raft status as the leader `self_id`
/// sees them (`reachable`: members that acknowledged recently). A member no manager Node
/// claims is removed once it holds every Node write so far (so a demoted manager has seen its
/// demotion before it is cut off), or at once when it is unreachable.
pub(crate) fn role_actions(nodes: &[Node], status: &RaftStatus, self_id: &str, reachable: &BTreeMap<u64, bool>) -> Vec<RoleAction> {
    let mut actions = Vec::new();
    for n in nodes {
        match (n.spec.role, &n.manager_status) {
            (NodeRole::Manager, None) if !n.status.addr.is_empty() => {
                actions.push(RoleAction::Admit(n.id.clone(), format!("{}:{}", n.status.addr, shoal_rpc::DEFAULT_PORT)));
            }
            (NodeRole::Worker, Some(_)) if n.id == self_id => {
                let to = reachable.iter().find(|(id, up)| **up && **id != status.node_id).map(|(id, _)| *id);
                if let Some(to) = to {
                    actions.push(RoleAction::HandOver(to));
                }
            }
            (NodeRole::Worker, Some(_)) => actions.push(RoleAction::Dismiss(n.id.clone())),
            _ => {}
        }
    }
    // Members whose Node is no longer a manager (or is being dismissed now) leave the group.
    let dismissed: Vec<&str> = actions.iter().filter_map(|a| if let RoleAction::Dismiss(id) = a { Some(id.as_str()) } else { None }).collect();
    let addrs: Vec<&str> = nodes
        .iter()
        .filter(|n| !dismissed.contains(&n.id.as_str()))
        .filter_map(|n| n.manager_status.as_ref().map(|m| m.addr.as_str()))
        .collect();
    let latest_node_write = nodes.iter().map(|n| n.meta.version.index).max().unwrap_or(0);
    for (id, addr) in status.members() {
        if id == status.node_id || addrs.contains(&addr.as_str()) {
            continue;
        }
        let has_everything = status.peer_matched.get(&id).copied().flatten().is_some_and(|m| m >= latest_node_write);
        let unreachable = !reachable.get(&id).copied().unwrap_or(false);
        if has_everything || unreachable {
            actions.push(RoleAction::RemoveMember(id));
        }
    }
    actions
}

async fn reconcile_roles(store: &Store, self_id: &str) -> Result<()> {
    let status = store.raft_status();
    if !status.is_leader {
        return Ok(());
    }
    let view = store.view();
    let nodes = view.list::<Node>();
    let period = crate::dispatcher::heartbeat_period(view.list::<shoal_types::Cluster>().first());
    let reachable = member_reachability(&status, (period * GRACE_PERIODS).max(Duration::from_secs(2)));
    for action in role_actions(&nodes, &status, self_id, &reachable) {
        match action {
            RoleAction::Admit(id, addr) => {
                let nid = id.clone();
                let a = addr.clone();
                store
                    .update(move |tx| {
                        let Some(mut node) = tx.get::<Node>(&nid) else { return Ok(()) };
                        if node.spec.role == NodeRole::Manager && node.manager_status.is_none() {
                            node.manager_status = Some(ManagerStatus { leader: false, reachability: Reachability::Unknown, addr: a });
                            tx.update(node)?;
                        }
                        Ok(())
                    })
                    .await?;
                info!(node = %id, %addr, "promoting a node: it may now renew into a manager certificate");
            }
            RoleAction::Dismiss(id) => {
                let nid = id.clone();
                store
                    .update(move |tx| {
                        let Some(mut node) = tx.get::<Node>(&nid) else { return Ok(()) };
                        if node.spec.role == NodeRole::Worker && node.manager_status.is_some() {
                            node.manager_status = None;
                            tx.update(node)?;
                        }
                        Ok(())
                    })
                    .await?;
                info!(node = %id, "demoted a manager");
            }
            RoleAction::HandOver(to) => {
                info!(to = %format!("{to:x}"), "this leader is being demoted: handing the leadership over");
                store.transfer_leader(to).await?;
                return Ok(());
            }
            RoleAction::RemoveMember(id) => {
                info!(member = %format!("{id:x}"), "removing a raft member that is no longer a manager");
                membership(store.remove_member(id)).await?;
            }
        }
    }
    Ok(())
}

// ---- a manager's own agent ----

/// The control plane of a manager's own agent: assignments from the local replica, statuses
/// to the leader.
pub(crate) struct ManagerControlPlane {
    local: LocalControlPlane,
    store: Store,
    peers: Arc<Peers>,
    node_id: String,
}

impl ManagerControlPlane {
    pub(crate) fn new(store: Store, peers: Arc<Peers>, node_id: String) -> ManagerControlPlane {
        ManagerControlPlane { local: LocalControlPlane::new(store.clone(), node_id.clone()), store, peers, node_id }
    }
}

impl ControlPlane for ManagerControlPlane {
    fn assignments(&self) -> BoxFuture<'_, std::result::Result<mpsc::Receiver<Assignment>, ControlError>> {
        self.local.assignments()
    }

    fn report(&self, updates: Vec<(String, TaskStatus)>) -> BoxFuture<'_, std::result::Result<(), ControlError>> {
        Box::pin(async move {
            let status = self.store.raft_status();
            if status.is_leader {
                return shoal_agent::record_status(&self.store, &self.node_id, updates).await;
            }
            let addr = status.leader_addr().ok_or_else(|| ControlError::Unavailable("the swarm has no leader".into()))?;
            let client = self.peers.client(addr, Purpose::Control).map_err(|e| ControlError::Unavailable(e.to_string()))?;
            let req = StatusRequest {
                session_id: String::new(),
                updates: updates.into_iter().map(|(task_id, status)| StatusUpdate { task_id, status }).collect(),
            };
            client
                .call_json::<_, Value>(STATUS_PATH, &req)
                .await
                .map(|_| ())
                .map_err(|e| ControlError::Unavailable(format!("sending statuses to the leader at {addr}: {e}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::NodeStatus;

    fn node(id: &str, role: NodeRole, addr: Option<&str>) -> Node {
        Node {
            id: id.into(),
            spec: NodeSpec { role, ..NodeSpec::default() },
            status: NodeStatus { addr: "10.0.0.9".into(), ..NodeStatus::default() },
            manager_status: addr.map(|a| ManagerStatus { addr: a.into(), ..ManagerStatus::default() }),
            ..Node::default()
        }
    }

    fn status(me: u64, voters: &[(u64, &str)], learners: &[(u64, &str)]) -> RaftStatus {
        RaftStatus {
            node_id: me,
            is_leader: true,
            leader: Some(me),
            term: 1,
            last_log_index: None,
            last_applied: None,
            snapshot_index: None,
            purged_index: None,
            voters: voters.iter().map(|(i, a)| (*i, a.to_string())).collect(),
            learners: learners.iter().map(|(i, a)| (*i, a.to_string())).collect(),
            peer_ack_age: BTreeMap::new(),
            peer_matched: BTreeMap::new(),
            time_to_leader: None,
        }
    }

    #[test]
    fn quorum_safeguard_follows_swarmkit() {
        let v = |xs: &[(u64, bool)]| xs.iter().copied().collect::<BTreeMap<u64, bool>>();
        // 3 reachable: removing one leaves 2 of 2.
        assert!(can_remove_member(&v(&[(1, true), (2, true), (3, true)]), 3));
        // One of 3 down: removing a live one leaves 1 reachable of 2 (quorum 2).
        assert!(!can_remove_member(&v(&[(1, true), (2, true), (3, false)]), 2));
        // ...but removing the dead one leaves 2 of 2.
        assert!(can_remove_member(&v(&[(1, true), (2, true), (3, false)]), 3));
        // 2 managers: removing one leaves 1 of 1.
        assert!(can_remove_member(&v(&[(1, true), (2, true)]), 2));
        // An unknown id changes nothing: 2 of 3 reachable is a quorum.
        assert!(can_remove_member(&v(&[(1, true), (2, true), (3, false)]), 9));
    }

    #[test]
    fn members_map_to_nodes_by_address() {
        let members: BTreeMap<u64, String> = [(7, "10.0.0.1:2377".to_string()), (9, "10.0.0.2:2377".to_string())].into();
        assert_eq!(member_at(&members, "10.0.0.2:2377"), Some(9));
        assert_eq!(member_at(&members, "10.0.0.3:2377"), None);
        let mut nodes = vec![node("a", NodeRole::Manager, Some("10.0.0.1:2377")), node("b", NodeRole::Manager, Some("10.0.0.2:2377")), node("w", NodeRole::Worker, None)];
        nodes[0].manager_status.as_mut().unwrap().leader = true;
        overlay_leader(&mut nodes, Some("10.0.0.2:2377"));
        assert!(!nodes[0].manager_status.as_ref().unwrap().leader);
        let b = nodes[1].manager_status.as_ref().unwrap();
        assert!(b.leader && b.reachability == Reachability::Reachable);
        assert!(nodes[2].manager_status.is_none());
    }

    #[test]
    fn role_manager_decisions() {
        let mut st = status(1, &[(1, "10.0.0.1:2377"), (2, "10.0.0.2:2377"), (3, "10.0.0.3:2377")], &[(4, "10.0.0.4:2377")]);
        let up: BTreeMap<u64, bool> = [(1, true), (2, true), (3, false), (4, true), (5, true)].into();
        let nodes = vec![
            node("leader", NodeRole::Manager, Some("10.0.0.1:2377")),
            node("m2", NodeRole::Manager, Some("10.0.0.2:2377")),
            // demoted: its ManagerStatus goes, then its member (3)
            node("m3", NodeRole::Worker, Some("10.0.0.3:2377")),
            // promoted: it gets a ManagerStatus at its node address
            node("w1", NodeRole::Manager, None),
            node("w2", NodeRole::Worker, None),
        ];
        // 4 is reachable and holds every node write; 5 (reachable) lags behind them.
        let mut nodes = nodes;
        nodes[4].meta.version.index = 40;
        st.learners.insert(5, "10.0.0.5:2377".into());
        st.peer_matched = [(4, Some(40)), (5, Some(39))].into();
        let actions = role_actions(&nodes, &st, "leader", &up);
        assert_eq!(
            actions,
            vec![
                RoleAction::Dismiss("m3".into()),
                RoleAction::Admit("w1".into(), "10.0.0.9:2377".into()),
                // unreachable: at once
                RoleAction::RemoveMember(3),
                // a learner nobody claims (a join that never finished), up to date
                RoleAction::RemoveMember(4),
            ]
        );
        // The leader demoted: hand over to a reachable voter, never to itself or a dead one.
        let nodes = vec![node("leader", NodeRole::Worker, Some("10.0.0.1:2377")), node("m2", NodeRole::Manager, Some("10.0.0.2:2377")), node("m3", NodeRole::Manager, Some("10.0.0.3:2377"))];
        let st = status(1, &[(1, "10.0.0.1:2377"), (2, "10.0.0.2:2377"), (3, "10.0.0.3:2377")], &[]);
        assert_eq!(role_actions(&nodes, &st, "leader", &up), vec![RoleAction::HandOver(2)]);
        // Settled: nothing to do.
        let nodes = vec![node("leader", NodeRole::Manager, Some("10.0.0.1:2377"))];
        let st = status(1, &[(1, "10.0.0.1:2377")], &[]);
        assert!(role_actions(&nodes, &st, "leader", &up).is_empty());
    }

    #[test]
    fn control_messages_have_a_stable_shape() {
        let req = ControlRequest { hops: 1, op: ControlOp::RemoveService { id: "s1".into() } };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v, serde_json::json!({"hops": 1, "op": {"remove_service": {"id": "s1"}}}));
        let reply: ControlReply = serde_json::from_value(serde_json::json!({"err": {"kind": "not_found", "message": "service x not found"}})).unwrap();
        let ControlReply::Err { kind, message } = reply else { panic!("not an error") };
        let e = SwarmError::Remote { kind: ErrorKind::parse(&kind), message };
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.to_string(), "service x not found");
    }
}

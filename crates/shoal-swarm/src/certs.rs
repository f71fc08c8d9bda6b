//! This node's TLS identity over time: certificate renewal, trust-root changes during a root
//! rotation, and the manager side of both (`docs/CONTRACTS.md`, "Multi-node contracts").
//!
//! - **Identity files** (`<data-root>/swarm/certificates/`): `ca.crt` (every root this node
//!   trusts: the trust root first, then during a rotation the root being rotated to),
//!   `node.crt` (the node certificate, followed by the cross-signed root during a rotation) and
//!   `node.key`. They are replaced together: the new files are written next to the old ones,
//!   a commit marker is written, then they are renamed into place; a crash in between is rolled
//!   forward (marker present) or back (marker absent) on the next read.
//! - **Policy** (`POST /v1/tls`, node cert): the node reports its `TLSInfo` (trust root and the
//!   issuer of its certificate), which the manager records in the node's `Description.TLSInfo`
//!   (what `docker node inspect` and `docker swarm ca --rotate` show), and gets back the
//!   cluster's desired `TLSInfo`, the roots to trust, `CAConfig.NodeCertExpiry` and when to ask
//!   again (the dispatcher heartbeat period, kept within 2–30 s).
//! - **Renewal** (`POST /v1/renew`, node cert): `{csr}` → `{cert, ca}`. The node ID comes from
//!   the caller's verified certificate, the role from [`ca::renewal_role`] (manager only for a
//!   Node the leader admitted as a manager, worker once it demoted it), a node no longer in the
//!   store is refused; the certificate is issued as at join time ([`ca::issue_node_cert`]).
//! - **When a node renews** ([`renewal_due`], pure): at a random 50–80 % of its certificate's
//!   validity (chosen once per certificate, swarmkit's range); at once when its certificate's
//!   issuer is not the one the cluster wants (a root rotation); and at once when its
//!   certificate's validity (not-after minus issue time) is longer than `NodeCertExpiry` plus a
//!   minute, so `docker swarm update --cert-expiry 2h` moves every node to 2 h certificates
//!   within a poll; and at once when the policy's `role` is not its certificate's (a promotion
//!   or demotion). A node whose certificate changed role then changes role itself (a worker
//!   becomes a manager, a manager a worker: `Swarm::change_role`). Comparing validity lengths rather than absolute expiry times keeps a node
//!   whose clock differs from the manager's from renewing in a loop. Every renewal uses a new
//!   key; new connections use the new identity, open ones (the session stream) keep theirs.
//!   A node whose certificate expired (it was off for longer than the rest of its validity)
//!   cannot renew over mutual TLS and has to join again.
//! - **Workers** run [`spawn_worker`]: poll the policy from a manager, renew over RPC, swap the
//!   client TLS config of every manager client and the `TLSInfo` new sessions report.
//! - **Managers** run [`spawn_manager`], woken by cluster and node commits and at the poll
//!   period: on the leader, finish a root rotation once every node that is not Down has moved
//!   ([`ca::rotation_converged`]) and keep the cluster's `TLSInfo` consistent; on every manager,
//!   renew the manager's own certificate locally (the CA key is in the replicated store) with
//!   the same rules, swap the cluster port's and the peer clients' TLS config (new
//!   connections), and record its own `TLSInfo` (forwarded to the leader). A follower also
//!   asks the other managers every 30 s for its policy: a manager demoted while it was down (or
//!   cut off from Raft before its demotion reached it) never sees the demotion in its replica,
//!   so it renews into a worker certificate through them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use hyper::Response;
use serde::{Deserialize, Serialize};
use shoal_rpc::pki::{cert_matches_key, cert_pems, renew_at_fraction, renew_fraction, BACKDATE};
use shoal_rpc::server::ok;
use shoal_rpc::{IssuerInfo, NodeIdentity, NodeKey, Role, RpcBody, RpcClient, RpcServer, Status};
use shoal_store::Store;
use shoal_types::{Cluster, Kind, Node, TlsInfo};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::ca;
use crate::error::{Result, SwarmError};
use crate::managers::ControlOp;
use crate::peers::Peers;
use crate::Swarm;

pub(crate) const RENEW_PATH: &str = "/v1/renew";
pub(crate) const TLS_PATH: &str = "/v1/tls";

/// A certificate whose validity is longer than the policy by more than this is renewed.
const EXPIRY_SLACK: Duration = Duration::from_secs(60);
/// Never renew twice within this (a guard against a policy that cannot be met).
const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);
const MIN_POLL: Duration = Duration::from_secs(2);
/// A worker re-reads the certificate policy at least this often (for its renewal schedule);
/// policy changes reach it at once through the heartbeats' cluster version.
const WORKER_IDLE_POLL: Duration = Duration::from_secs(60);
const MAX_POLL: Duration = Duration::from_secs(30);
const DEFAULT_POLL: Duration = Duration::from_secs(5);
const MIN_RETRY: Duration = Duration::from_millis(500);
/// The longest `TLSInfo` field a node may report.
const MAX_TLS_FIELD: usize = 64 << 10;

const FILES: [(&str, u32); 3] = [("ca.crt", 0o644), ("node.crt", 0o644), ("node.key", 0o600)];
const COMMIT_MARKER: &str = ".next.complete";

// ---- wire ----

/// `POST /v1/renew` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RenewRequest {
    pub csr: String,
}

/// `POST /v1/renew` answer: the certificate chain (PEM, leaf first) and the roots to trust.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RenewResponse {
    pub cert: String,
    pub ca: String,
}

/// `POST /v1/tls` body: what the node has now.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TlsRequest {
    #[serde(default)]
    pub tls_info: TlsInfo,
}

/// `POST /v1/tls` answer: what the cluster wants.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CertPolicy {
    /// The cluster's `TLSInfo`: the trust root to report and the issuer certificates should have.
    pub desired: TlsInfo,
    /// Every root to trust (PEM bundle).
    pub ca: String,
    pub node_cert_expiry_ns: u64,
    pub poll_ns: u64,
    /// The role (`manager` or `worker`) the caller's certificate should have; empty from an
    /// older manager (keep the current one).
    #[serde(default)]
    pub role: String,
}

// ---- manager routes ----

use crate::dispatcher::status_of;

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Manager => "manager",
        Role::Worker => "worker",
    }
}

fn cluster_of(store: &Store) -> Result<Cluster, Status> {
    store.view().list::<Cluster>().into_iter().next().ok_or_else(|| Status::unavailable("the cluster object is missing"))
}

fn member(store: &Store, caller: &NodeIdentity) -> Result<Node, Status> {
    store
        .view()
        .get::<Node>(&caller.node_id)
        .ok_or_else(|| Status::forbidden(format!("node {} is not a member of this swarm (it was removed)", caller.node_id)))
}

/// The poll period: the dispatcher heartbeat period, kept within 2–30 s.
fn poll_period(cluster: &Cluster) -> Duration {
    let ns = cluster.spec.dispatcher.heartbeat_period;
    let period = if ns > 0 { Duration::from_nanos(ns as u64) } else { DEFAULT_POLL };
    period.clamp(MIN_POLL, MAX_POLL)
}

fn policy(cluster: &Cluster, role: Role) -> Result<CertPolicy> {
    Ok(CertPolicy {
        desired: ca::desired_tls_info(cluster)?,
        ca: ca::trust_bundle(cluster)?,
        node_cert_expiry_ns: ca::node_cert_validity(cluster).as_nanos() as u64,
        poll_ns: poll_period(cluster).as_nanos() as u64,
        role: role_name(role).to_string(),
    })
}

/// `POST /v1/renew` for the verified `caller`.
pub(crate) fn renew(store: &Store, caller: &NodeIdentity, req: RenewRequest) -> Result<Response<RpcBody>, Status> {
    ok(&renewal(store, caller, req)?)
}

fn renewal(store: &Store, caller: &NodeIdentity, req: RenewRequest) -> Result<RenewResponse, Status> {
    let cluster = cluster_of(store)?;
    let node = member(store, caller)?;
    let role = ca::renewal_role(caller.role, &node);
    let ips: Vec<std::net::IpAddr> = match (role, &node.manager_status) {
        (shoal_rpc::Role::Manager, Some(ms)) => ms.addr.parse::<std::net::SocketAddr>().map(|a| vec![a.ip()]).unwrap_or_default(),
        _ => Vec::new(),
    };
    let cert = ca::issue_node_cert(&cluster, &req.csr, &caller.node_id, role, &ips).map_err(status_of)?;
    let bundle = ca::trust_bundle(&cluster).map_err(status_of)?;
    info!(node = %caller.node_id, role = ?role, validity = ?ca::node_cert_validity(&cluster), "renewed a node certificate");
    Ok(RenewResponse { cert, ca: bundle })
}

/// `POST /v1/tls` for the verified `caller`: record its `TLSInfo`, answer the policy.
pub(crate) async fn report_tls(swarm: &Swarm, store: &Store, caller: &NodeIdentity, req: TlsRequest) -> Result<Response<RpcBody>, Status> {
    ok(&tls_policy(Some(swarm), store, caller, req).await?)
}

/// The policy for `caller`, after recording its `TLSInfo` (through `swarm`, forwarded to the
/// leader when this manager is not it; without `swarm`, in `store` directly).
async fn tls_policy(swarm: Option<&Swarm>, store: &Store, caller: &NodeIdentity, req: TlsRequest) -> Result<CertPolicy, Status> {
    let info = req.tls_info;
    if [&info.trust_root, &info.cert_issuer_subject, &info.cert_issuer_public_key].iter().any(|f| f.len() > MAX_TLS_FIELD) {
        return Err(Status::bad_request(format!("a TLSInfo field is longer than {MAX_TLS_FIELD} bytes")));
    }
    let cluster = cluster_of(store)?;
    let node = member(store, caller)?;
    let role = ca::renewal_role(caller.role, &node);
    if node.description.tls_info != info {
        match swarm {
            Some(swarm) => {
                let op = ControlOp::RecordTlsInfo { node_id: caller.node_id.clone(), info };
                swarm.write::<()>(op).await.map_err(status_of)?;
            }
            None => record_tls_info(store, &caller.node_id, info).await.map_err(status_of)?,
        }
    }
    policy(&cluster, role).map_err(status_of)
}

/// Record `info` as node `node_id`'s `TLSInfo` (on the leader).
pub(crate) async fn record_tls_info(store: &Store, node_id: &str, info: TlsInfo) -> Result<()> {
    let id = node_id.to_string();
    store
        .update(move |tx| {
            if let Some(mut node) = tx.get::<Node>(&id) {
                if node.description.tls_info != info {
                    node.description.tls_info = info;
                    tx.update(node)?;
                }
            }
            Ok(())
        })
        .await?;
    debug!(node = %node_id, "recorded the node's TLS info");
    Ok(())
}

// ---- identity files ----

/// This node's TLS identity: trusted roots, certificate chain, key (all PEM).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("cert", &self.cert).finish_non_exhaustive()
    }
}

impl Identity {
    /// The trust root this node reports: the first certificate of its bundle.
    fn trust_root(&self) -> String {
        cert_pems(&self.ca).ok().and_then(|mut c| (!c.is_empty()).then(|| c.remove(0))).unwrap_or_default()
    }

    /// Docker's `TLSInfo` for this identity (empty issuer if the chain cannot be read).
    pub(crate) fn tls_info(&self) -> TlsInfo {
        let trust_root = self.trust_root();
        match IssuerInfo::of_chain(&self.cert, &self.ca) {
            Ok(issuer) => issuer.tls_info(&trust_root),
            Err(e) => {
                warn!(error = %e, "cannot tell who issued this node's certificate");
                TlsInfo { trust_root, ..TlsInfo::default() }
            }
        }
    }
}

fn io_err(dir: &Path, e: std::io::Error) -> SwarmError {
    SwarmError::Internal(format!("certificates in {}: {e}", dir.display()))
}

fn next_name(name: &str) -> String {
    format!(".{name}.next")
}

/// Finish or undo a replacement a crash interrupted.
fn recover(dir: &Path) -> std::io::Result<()> {
    if dir.join(COMMIT_MARKER).exists() {
        for (name, _) in FILES {
            let next = dir.join(next_name(name));
            if next.exists() {
                std::fs::rename(&next, dir.join(name))?;
            }
        }
        std::fs::remove_file(dir.join(COMMIT_MARKER))?;
        std::fs::File::open(dir)?.sync_all()?;
    } else {
        for (name, _) in FILES {
            match std::fs::remove_file(dir.join(next_name(name))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Read the identity stored in `dir` (after recovering an interrupted replacement).
pub(crate) fn read_identity(dir: &Path) -> Result<Identity> {
    recover(dir).map_err(|e| io_err(dir, e))?;
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| SwarmError::Internal(format!("reading {}: {e}", dir.join(name).display())))
    };
    Ok(Identity { ca: read("ca.crt")?, cert: read("node.crt")?, key: read("node.key")? })
}

/// Replace the identity in `dir` as one unit (see the module docs); the key is 0600.
pub(crate) fn write_identity(dir: &Path, identity: &Identity) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let all = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        recover(dir)?;
        for ((name, mode), data) in FILES.iter().zip([&identity.ca, &identity.cert, &identity.key]) {
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(*mode).open(dir.join(next_name(name)))?;
            f.write_all(data.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::File::create(dir.join(COMMIT_MARKER))?.sync_all()?;
        std::fs::File::open(dir)?.sync_all()?;
        recover(dir)
    };
    all().map_err(|e| io_err(dir, e))
}

async fn store_identity(dir: &Path, identity: &Identity) -> Result<()> {
    let (dir, identity) = (dir.to_path_buf(), identity.clone());
    tokio::task::spawn_blocking(move || write_identity(&dir, &identity))
        .await
        .map_err(|e| SwarmError::Internal(format!("writing certificates: {e}")))?
}

// ---- when to renew ----

/// Why a certificate is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RenewReason {
    /// Its renewal point (50–80 % of its validity) has passed.
    Scheduled,
    /// Its issuer is not the one the cluster wants (a root rotation).
    NewIssuer,
    /// It is valid for longer than `NodeCertExpiry` allows.
    ShorterExpiry,
    /// The node was promoted or demoted: its certificate must carry the other role.
    RoleChange,
}

/// Whether and why a certificate valid from `issued` to `not_after`, whose issuer is named by
/// `have`, must be renewed at `now`, when the cluster wants `want`'s issuer and certificates
/// valid for `expiry`; `fraction` is this certificate's renewal point (see
/// [`shoal_rpc::pki::renew_fraction`]).
pub(crate) fn renewal_due(
    now: SystemTime,
    issued: SystemTime,
    not_after: SystemTime,
    fraction: f64,
    have: &TlsInfo,
    want: &TlsInfo,
    expiry: Duration,
) -> Option<RenewReason> {
    if have.cert_issuer_subject != want.cert_issuer_subject || have.cert_issuer_public_key != want.cert_issuer_public_key {
        return Some(RenewReason::NewIssuer);
    }
    let Ok(validity) = not_after.duration_since(issued) else { return Some(RenewReason::Scheduled) };
    if validity > expiry + EXPIRY_SLACK {
        return Some(RenewReason::ShorterExpiry);
    }
    (now >= renew_at_fraction(not_after, issued, fraction)).then_some(RenewReason::Scheduled)
}

/// [`renewal_due`] for an identity, plus a role change when `role` (the role the certificate
/// should have) is given and differs. A certificate that cannot be read is renewed.
fn identity_due(identity: &Identity, fraction: f64, want: &TlsInfo, expiry: Duration, role: Option<Role>) -> Option<RenewReason> {
    let Ok(id) = NodeIdentity::from_pem(&identity.cert) else { return Some(RenewReason::Scheduled) };
    if role.is_some_and(|r| r != id.role) {
        return Some(RenewReason::RoleChange);
    }
    renewal_due(SystemTime::now(), id.not_before + BACKDATE, id.not_after, fraction, &identity.tls_info(), want, expiry)
}

/// The role of an identity's certificate (worker when it cannot be read).
pub(crate) fn identity_role(identity: &Identity) -> Role {
    NodeIdentity::from_pem(&identity.cert).map(|id| id.role).unwrap_or(Role::Worker)
}

fn parse_role(s: &str) -> Option<Role> {
    match s {
        "manager" => Some(Role::Manager),
        "worker" => Some(Role::Worker),
        _ => None,
    }
}

/// Check a renewed certificate before using it: this node, this cluster, this key.
fn check_renewed(old: &Identity, new: &Identity) -> Result<()> {
    let bad = |why: String| SwarmError::Internal(format!("the renewed certificate is not usable: {why}"));
    let before = NodeIdentity::from_pem(&old.cert).map_err(|e| bad(e.to_string()))?;
    let after = NodeIdentity::from_pem(&new.cert).map_err(|e| bad(e.to_string()))?;
    if after.node_id != before.node_id || after.cluster_id != before.cluster_id {
        return Err(bad(format!("it names node {} of cluster {}", after.node_id, after.cluster_id)));
    }
    if !cert_matches_key(&new.cert, &new.key).map_err(|e| bad(e.to_string()))? {
        return Err(bad("it is not for this node's new key".into()));
    }
    IssuerInfo::of_chain(&new.cert, &new.ca).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

// ---- workers ----

/// Ask the managers in turn (from `*next`) until one answers.
async fn call_any<Req: Serialize, Resp: serde::de::DeserializeOwned>(
    clients: &[RpcClient],
    next: &mut usize,
    path: &str,
    req: &Req,
) -> std::result::Result<Resp, shoal_rpc::RpcError> {
    let mut last = None;
    for _ in 0..clients.len() {
        let client = &clients[*next % clients.len()];
        match client.call_json(path, req).await {
            Ok(r) => return Ok(r),
            Err(e) => {
                debug!(manager = %client.addr(), path, error = %e, "certificate call failed; trying the next manager");
                last = Some(e);
                *next = (*next + 1) % clients.len();
            }
        }
    }
    Err(last.unwrap_or_else(|| shoal_rpc::RpcError::Protocol("no manager to ask".into())))
}

/// A worker's certificate loop (see the module docs). Runs until aborted. A certificate that
/// says manager (a promotion) makes `swarm` turn this node into a manager.
pub(crate) fn spawn_worker(dir: PathBuf, identity: Identity, control: Arc<shoal_agent::RemoteControlPlane>, swarm: Swarm) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut cluster_version = control.cluster_version();
        let mut identity = identity;
        let mut fraction = renew_fraction();
        let mut last_renewal: Option<tokio::time::Instant> = None;
        let mut next = 0usize;
        let mut retry = MIN_RETRY;
        loop {
            if identity_role(&identity) == Role::Manager {
                swarm.role_changed(Role::Manager);
            }
            let clients = control.clients();
            let mine = identity.tls_info();
            control.set_tls_info(mine.clone());
            let policy: CertPolicy = match call_any(&clients, &mut next, TLS_PATH, &TlsRequest { tls_info: mine }).await {
                Ok(p) => p,
                Err(e) => {
                    debug!(error = %e, retry = ?retry, "cannot reach a manager for the certificate policy");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_POLL);
                    continue;
                }
            };
            retry = MIN_RETRY;
            cluster_version.borrow_and_update();
            let mut updated = identity.clone();
            if !policy.ca.is_empty() && cert_pems(&policy.ca).ok() != cert_pems(&identity.ca).ok() {
                info!(roots = cert_pems(&policy.ca).map(|c| c.len()).unwrap_or(0), "the cluster's trust roots changed");
                updated.ca = policy.ca.clone();
            }
            let expiry = Duration::from_nanos(policy.node_cert_expiry_ns);
            let recent = last_renewal.is_some_and(|t| t.elapsed() < MIN_RENEW_INTERVAL);
            let role = parse_role(&policy.role);
            if let Some(reason) = identity_due(&updated, fraction, &policy.desired, expiry, role).filter(|_| !recent) {
                match renew_remote(&clients, &mut next, &updated).await {
                    Ok(renewed) => {
                        info!(reason = ?reason, "renewed this node's certificate");
                        updated = renewed;
                        fraction = renew_fraction();
                        last_renewal = Some(tokio::time::Instant::now());
                    }
                    Err(e) => warn!(reason = ?reason, error = %e, "renewing this node's certificate failed; will retry"),
                }
            }
            if updated != identity {
                if let Err(e) = store_identity(&dir, &updated).await {
                    warn!(error = %e, "storing the new certificates failed; using them until the daemon restarts");
                }
                match shoal_rpc::tls::client_config(&updated.ca, &updated.cert, &updated.key) {
                    Ok(config) => {
                        for c in &clients {
                            c.set_config(config.clone());
                        }
                        identity = updated;
                        continue; // report the new TLSInfo at once
                    }
                    Err(e) => warn!(error = %e, "the new certificates cannot be used; keeping the old ones"),
                }
            }
            // Ask again when the cluster object changes (heartbeats carry its version) or, for
            // the renewal schedule, after a while: no certificate traffic at rest.
            tokio::select! {
                _ = tokio::time::sleep(WORKER_IDLE_POLL) => {}
                _ = cluster_version.changed() => {}
            }
        }
    })
}

async fn renew_remote(clients: &[RpcClient], next: &mut usize, current: &Identity) -> Result<Identity> {
    let key = NodeKey::generate().map_err(|e| SwarmError::Internal(e.to_string()))?;
    let resp: RenewResponse = call_any(clients, next, RENEW_PATH, &RenewRequest { csr: key.csr_pem.clone() })
        .await
        .map_err(|e| SwarmError::Unavailable(format!("renewing the certificate: {e}")))?;
    let ca = if resp.ca.is_empty() { current.ca.clone() } else { resp.ca };
    let renewed = Identity { ca, cert: resp.cert, key: key.key_pem };
    check_renewed(current, &renewed)?;
    Ok(renewed)
}

// ---- managers ----

/// Wait for a commit that touches the cluster or a node (or for the watch to lag).
async fn cluster_or_node_commit(commits: &mut broadcast::Receiver<Arc<shoal_store::Commit>>) {
    loop {
        match commits.recv().await {
            Ok(c) if c.changes.iter().any(|ch| matches!(ch.kind(), Kind::Cluster | Kind::Node)) => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// Finish a converged rotation and keep the cluster's `TLSInfo` right. Writes only when
/// something changes, and only on the leader.
async fn reconcile_cluster(store: &Store) -> Result<()> {
    if !store.leadership().borrow().is_leader {
        return Ok(());
    }
    let view = store.view();
    let Some(cluster) = view.list::<Cluster>().into_iter().next() else { return Ok(()) };
    let nodes = view.list::<Node>();
    let finish = ca::rotation_converged(&cluster, &nodes);
    let want = ca::desired_tls_info(&cluster)?;
    if !finish && cluster.tls_info == want && cluster.root_rotation_in_progress == cluster.store_only.as_ref().is_some_and(|s| s.root_rotation.is_some()) {
        return Ok(());
    }
    let finished = store
        .update(move |tx| {
            let Some(mut cluster) = tx.list::<Cluster>().into_iter().next() else { return Ok(false) };
            let finishing = ca::rotation_converged(&cluster, &tx.list::<Node>());
            if finishing {
                ca::finish_rotation(&mut cluster).map_err(|e| shoal_store::StoreError::Internal(e.to_string()))?;
            } else {
                cluster.root_rotation_in_progress = cluster.store_only.as_ref().is_some_and(|s| s.root_rotation.is_some());
                cluster.tls_info = ca::desired_tls_info(&cluster).map_err(|e| shoal_store::StoreError::Internal(e.to_string()))?;
            }
            tx.update(cluster)?;
            Ok(finishing)
        })
        .await?;
    if finished {
        info!("root CA rotation finished: every node that is not down has a certificate from the new root");
    }
    Ok(())
}

/// One round of a manager's own certificate: trust roots, renewal, TLS config, `TLSInfo`.
/// Returns the identity to use from now on.
async fn manager_round(
    swarm: &Swarm,
    store: &Store,
    dir: &Path,
    node_id: &str,
    identity: &Identity,
    fraction: &mut f64,
    last_renewal: &mut Option<tokio::time::Instant>,
) -> Result<Identity> {
    let view = store.view();
    let cluster = view.list::<Cluster>().into_iter().next().ok_or_else(|| SwarmError::Internal("the cluster object is missing".into()))?;
    let node = view.get::<Node>(node_id).ok_or_else(|| SwarmError::Internal(format!("this manager's node {node_id} is missing")))?;
    let mut updated = identity.clone();
    let bundle = ca::trust_bundle(&cluster)?;
    if cert_pems(&bundle).ok() != cert_pems(&identity.ca).ok() {
        info!(roots = cert_pems(&bundle).map(|c| c.len()).unwrap_or(0), "the cluster's trust roots changed");
        updated.ca = bundle;
    }
    let want = ca::desired_tls_info(&cluster)?;
    let recent = last_renewal.is_some_and(|t| t.elapsed() < MIN_RENEW_INTERVAL);
    let current_role = NodeIdentity::from_pem(&identity.cert).map(|id| id.role).unwrap_or(Role::Manager);
    let role = ca::renewal_role(current_role, &node);
    if let Some(reason) = identity_due(&updated, *fraction, &want, ca::node_cert_validity(&cluster), Some(role)).filter(|_| !recent) {
        let ips: Vec<std::net::IpAddr> = node
            .manager_status
            .as_ref()
            .and_then(|ms| ms.addr.parse::<std::net::SocketAddr>().ok())
            .map(|a| vec![a.ip()])
            .unwrap_or_default();
        let key = NodeKey::generate().map_err(|e| SwarmError::Internal(e.to_string()))?;
        let cert = ca::issue_node_cert(&cluster, &key.csr_pem, node_id, role, &ips)?;
        let renewed = Identity { ca: updated.ca.clone(), cert, key: key.key_pem };
        check_renewed(identity, &renewed)?;
        info!(reason = ?reason, role = ?role, "renewed this manager's certificate");
        updated = renewed;
        *fraction = renew_fraction();
        *last_renewal = Some(tokio::time::Instant::now());
    }
    if updated != *identity {
        store_identity(dir, &updated).await?;
    }
    let info = updated.tls_info();
    if node.description.tls_info != info && identity_role(&updated) == Role::Manager {
        let op = ControlOp::RecordTlsInfo { node_id: node_id.to_string(), info };
        if let Err(e) = swarm.write::<()>(op).await {
            debug!(error = %e, "recording this manager's TLS info failed; will retry");
        }
    }
    Ok(updated)
}

/// A follower manager asks its peers this often whether it is still a manager.
const PEER_ROLE_CHECK: Duration = Duration::from_secs(30);

/// Ask the other managers (the leader first) for this manager's certificate policy; when they
/// say its certificate should be a worker's, renew it through them and return the worker
/// identity.
async fn demoted_by_peers(store: &Store, peers: &Peers, node_id: &str, identity: &Identity) -> Result<Option<Identity>> {
    let status = store.raft_status();
    let others: Vec<String> = crate::dispatcher::managers_of(&store.view(), status.leader_addr())
        .into_iter()
        .filter(|m| m.node_id != node_id)
        .map(|m| m.addr)
        .collect();
    let mut last = SwarmError::Unavailable("no other manager is known".into());
    for addr in others {
        let client = match peers.client(&addr, crate::peers::Purpose::Control) {
            Ok(c) => c,
            Err(e) => {
                last = SwarmError::Unavailable(e.to_string());
                continue;
            }
        };
        let policy: CertPolicy = match client.call_json(TLS_PATH, &TlsRequest { tls_info: identity.tls_info() }).await {
            Ok(p) => p,
            Err(e) => {
                last = SwarmError::Unavailable(format!("{addr}: {e}"));
                continue;
            }
        };
        if parse_role(&policy.role) != Some(Role::Worker) {
            return Ok(None);
        }
        let renewed = renew_remote(&[client], &mut 0, identity).await?;
        return Ok((identity_role(&renewed) == Role::Worker).then_some(renewed));
    }
    Err(last)
}

/// A manager's certificate loop (see the module docs). `server` is this manager's cluster
/// port and `peers` its clients to the other managers, whose TLS configs follow the identity.
/// A certificate that says worker (a finished demotion) makes `swarm` turn this node into a
/// worker. Runs until aborted.
pub(crate) fn spawn_manager(
    dir: PathBuf,
    node_id: String,
    store: Store,
    identity: Identity,
    server: Option<Weak<RpcServer>>,
    peers: Arc<Peers>,
    swarm: Swarm,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (_, mut commits) = store.watch();
        let mut identity = identity;
        let mut fraction = renew_fraction();
        let mut last_renewal = None;
        let mut last_peer_check = tokio::time::Instant::now();
        loop {
            if let Err(e) = reconcile_cluster(&store).await {
                debug!(error = %e, "reconciling the cluster CA failed; will retry");
            }
            match manager_round(&swarm, &store, &dir, &node_id, &identity, &mut fraction, &mut last_renewal).await {
                Ok(updated) if updated != identity => {
                    let server = server.as_ref().and_then(Weak::upgrade);
                    match (server, shoal_rpc::tls::server_config(&updated.ca, &updated.cert, &updated.key)) {
                        (Some(server), Ok(config)) => server.set_config(config),
                        (None, _) => {}
                        (_, Err(e)) => warn!(error = %e, "the new certificates cannot be served"),
                    }
                    match shoal_rpc::tls::client_config(&updated.ca, &updated.cert, &updated.key) {
                        Ok(config) => peers.set_config(config),
                        Err(e) => warn!(error = %e, "the new certificates cannot be used towards other managers"),
                    }
                    identity = updated;
                    continue;
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "this manager's certificate round failed; will retry"),
            }
            if identity_role(&identity) == Role::Manager && !store.leadership().borrow().is_leader && last_peer_check.elapsed() >= PEER_ROLE_CHECK {
                // A follower's replica may never show its demotion (it was demoted while down,
                // or removed from Raft before the entry reached it): ask the other managers.
                last_peer_check = tokio::time::Instant::now();
                match demoted_by_peers(&store, &peers, &node_id, &identity).await {
                    Ok(Some(renewed)) => {
                        info!("the other managers say this node was demoted; renewed as a worker");
                        if let Err(e) = store_identity(&dir, &renewed).await {
                            warn!(error = %e, "storing the worker certificate failed");
                        } else {
                            identity = renewed;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => debug!(error = %e, "asking the other managers about this node's role failed"),
                }
            }
            if identity_role(&identity) == Role::Worker {
                // Demoted: the swarm turns this node into a worker (which ends this loop).
                swarm.role_changed(Role::Worker);
            }
            let poll = store.view().list::<Cluster>().first().map(poll_period).unwrap_or(DEFAULT_POLL);
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = cluster_or_node_commit(&mut commits) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(subject: &str, key: &str) -> TlsInfo {
        TlsInfo { trust_root: "root".into(), cert_issuer_subject: subject.into(), cert_issuer_public_key: key.into() }
    }

    #[test]
    fn renewal_schedule() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hour = Duration::from_secs(3600);
        let not_after = t0 + 100 * hour;
        let same = issuer("s", "k");
        let due = |now: SystemTime, fraction: f64, want: &TlsInfo, expiry: Duration| renewal_due(now, t0, not_after, fraction, &same, want, expiry);
        let policy = 100 * hour;

        // Between 50 % and 80 % of the validity, at the point chosen for this certificate.
        assert_eq!(due(t0, 0.5, &same, policy), None);
        assert_eq!(due(t0 + 49 * hour, 0.5, &same, policy), None);
        assert_eq!(due(t0 + 50 * hour, 0.5, &same, policy), Some(RenewReason::Scheduled));
        assert_eq!(due(t0 + 79 * hour, 0.8, &same, policy), None);
        assert_eq!(due(t0 + 80 * hour, 0.8, &same, policy), Some(RenewReason::Scheduled));
        // Out-of-range fractions are clamped to the window.
        assert_eq!(due(t0 + 45 * hour, 0.1, &same, policy), None);
        assert_eq!(due(t0 + 81 * hour, 1.0, &same, policy), Some(RenewReason::Scheduled));
        // Expired: due.
        assert_eq!(due(t0 + 200 * hour, 0.7, &same, policy), Some(RenewReason::Scheduled));

        // Another issuer wanted (a root rotation): at once.
        assert_eq!(due(t0, 0.5, &issuer("s", "k2"), policy), Some(RenewReason::NewIssuer));
        assert_eq!(due(t0, 0.5, &issuer("s2", "k"), policy), Some(RenewReason::NewIssuer));

        // `--cert-expiry` shortened below this certificate's validity: at once; a certificate
        // within a minute of the policy (rounding) or shorter (capped by the root) is kept.
        assert_eq!(due(t0, 0.5, &same, 2 * hour), Some(RenewReason::ShorterExpiry));
        assert_eq!(due(t0, 0.5, &same, policy - Duration::from_secs(30)), None);
        assert_eq!(due(t0, 0.5, &same, 200 * hour), None);
        // A certificate that ends before it starts: renewed.
        assert_eq!(renewal_due(t0, not_after, t0, 0.5, &same, &same, hour), Some(RenewReason::Scheduled));
    }

    #[test]
    fn identity_files_are_replaced_as_a_unit() {
        let dir = std::env::temp_dir().join(format!("shoal-certs-test-{}", shoal_types::new_id()));
        let one = Identity { ca: "ca1".into(), cert: "cert1".into(), key: "key1".into() };
        let two = Identity { ca: "ca2".into(), cert: "cert2".into(), key: "key2".into() };
        write_identity(&dir, &one).unwrap();
        assert_eq!(read_identity(&dir).unwrap(), one);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.join("node.key")).unwrap().permissions().mode() & 0o777, 0o600);

        // A crash while the new files were written (no marker): the old identity stays.
        std::fs::write(dir.join(".node.crt.next"), "half").unwrap();
        assert_eq!(read_identity(&dir).unwrap(), one);
        assert!(!dir.join(".node.crt.next").exists());

        // A crash after the marker, with one file already renamed: rolled forward.
        std::fs::write(dir.join(".ca.crt.next"), "ca2").unwrap();
        std::fs::write(dir.join(".node.key.next"), "key2").unwrap();
        std::fs::write(dir.join("node.crt"), "cert2").unwrap();
        std::fs::write(dir.join(COMMIT_MARKER), "").unwrap();
        assert_eq!(read_identity(&dir).unwrap(), two);
        assert!(!dir.join(COMMIT_MARKER).exists());

        write_identity(&dir, &one).unwrap();
        assert_eq!(read_identity(&dir).unwrap(), one);
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().starts_with('.')).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn renewal_is_for_members_only_and_follows_the_nodes_role() {
        use shoal_types::{ClusterSecrets, JoinTokens, ManagerStatus, NodeRole, NodeSpec};
        let dir = std::env::temp_dir().join(format!("shoal-renew-test-{}", shoal_types::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir, shoal_store::StoreOptions::default()).await.unwrap();
        let root = shoal_rpc::RootCa::generate().unwrap();
        let mut cluster = Cluster {
            id: shoal_types::new_id(),
            join_tokens: JoinTokens::default(),
            store_only: Some(ClusterSecrets { root_ca_cert_pem: root.cert_pem().into(), root_ca_key_pem: root.key_pem().into(), ..Default::default() }),
            ..Cluster::default()
        };
        cluster.spec.ca_config.node_cert_expiry = 2 * 3600 * 1_000_000_000;
        cluster.tls_info = ca::desired_tls_info(&cluster).unwrap();
        // The store says this node is a manager, but its certificate says worker.
        let node = Node {
            id: shoal_types::new_id(),
            spec: NodeSpec { role: NodeRole::Manager, ..NodeSpec::default() },
            manager_status: Some(ManagerStatus { addr: "10.0.0.9:2377".into(), ..ManagerStatus::default() }),
            ..Node::default()
        };
        let (c, n) = (cluster.clone(), node.clone());
        store
            .update(move |tx| {
                tx.create(c)?;
                tx.create(n)
            })
            .await
            .unwrap();
        let now = SystemTime::now();
        let caller = NodeIdentity {
            node_id: node.id.clone(),
            role: shoal_rpc::Role::Worker,
            cluster_id: cluster.id.clone(),
            not_before: now,
            not_after: now,
        };
        let key = NodeKey::generate().unwrap();
        // Admitted as a manager (a promotion): the worker certificate renews as a manager's.
        let answer = renewal(&store, &caller, RenewRequest { csr: key.csr_pem.clone() }).unwrap();
        let id = NodeIdentity::from_pem(&answer.cert).unwrap();
        assert_eq!((id.node_id.as_str(), id.role), (node.id.as_str(), shoal_rpc::Role::Manager));
        // Not (or no longer) a manager: a worker certificate.
        let nid = node.id.clone();
        store
            .update(move |tx| {
                let mut n = tx.get::<Node>(&nid).unwrap();
                n.manager_status = None;
                tx.update(n)
            })
            .await
            .unwrap();
        let answer = renewal(&store, &caller, RenewRequest { csr: key.csr_pem.clone() }).unwrap();
        let id = NodeIdentity::from_pem(&answer.cert).unwrap();
        assert_eq!((id.node_id.as_str(), id.role), (node.id.as_str(), shoal_rpc::Role::Worker));
        assert_eq!(id.not_after.duration_since(id.not_before).unwrap().as_secs() / 60, 3 * 60, "the cluster's 2 h, backdated 1 h");
        assert!(cert_matches_key(&answer.cert, &key.key_pem).unwrap());
        assert_eq!(answer.ca, root.cert_pem());
        assert!(renewal(&store, &caller, RenewRequest { csr: "junk".into() }).is_err_and(|s| s.status == 400));

        // The node reports its TLS info and gets the policy.
        let info = IssuerInfo::of_chain(&answer.cert, &answer.ca).unwrap().tls_info(root.cert_pem());
        let policy = tls_policy(None, &store, &caller, TlsRequest { tls_info: info.clone() }).await.unwrap();
        assert_eq!(policy.role, "worker");
        assert_eq!(policy.desired, cluster.tls_info);
        assert_eq!(policy.desired, info);
        assert_eq!(policy.node_cert_expiry_ns, 2 * 3600 * 1_000_000_000);
        assert_eq!(store.view().get::<Node>(&node.id).unwrap().description.tls_info, info);

        // A removed node gets nothing.
        let nid = node.id.clone();
        store.update(move |tx| tx.delete::<Node>(&nid)).await.unwrap();
        let refused = renewal(&store, &caller, RenewRequest { csr: key.csr_pem.clone() }).unwrap_err();
        assert_eq!(refused.status, hyper::StatusCode::FORBIDDEN);
        assert!(refused.message.contains("removed"), "{}", refused.message);
        assert_eq!(tls_policy(None, &store, &caller, TlsRequest::default()).await.unwrap_err().status, hyper::StatusCode::FORBIDDEN);
        store.shutdown().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn identities_report_their_issuer() {
        let old = shoal_rpc::RootCa::generate().unwrap();
        let new = shoal_rpc::RootCa::generate().unwrap();
        let key = NodeKey::generate().unwrap();
        let cert = new.issue(&key.csr_pem, "n1", shoal_rpc::Role::Worker, "c1", &[], Duration::from_secs(7200)).unwrap();
        let cross = old.cross_sign(&new).unwrap();
        let chain = cert + &cross;
        let id = Identity { ca: old.cert_pem().to_string(), cert: chain, key: key.key_pem.clone() };
        assert_eq!(id.tls_info(), new.issuer_info().tls_info(old.cert_pem()));
        // The trust root is the first of the bundle.
        let both = Identity { ca: format!("{}{}", old.cert_pem(), new.cert_pem()), ..id.clone() };
        assert_eq!(both.tls_info().trust_root, old.cert_pem());
        // A renewal must be for this node and its new key.
        let key2 = NodeKey::generate().unwrap();
        let renewed = Identity {
            cert: new.issue(&key2.csr_pem, "n1", shoal_rpc::Role::Worker, "c1", &[], Duration::from_secs(7200)).unwrap() + &cross,
            key: key2.key_pem.clone(),
            ..id.clone()
        };
        check_renewed(&id, &renewed).unwrap();
        // Without the cross-signed root, a node trusting only the old root could not use it.
        let bare = Identity { cert: shoal_rpc::pki::cert_pems(&renewed.cert).unwrap().remove(0), ..renewed.clone() };
        assert!(check_renewed(&id, &bare).is_err());
        assert!(check_renewed(&id, &Identity { key: key.key_pem.clone(), ..renewed.clone() }).is_err());
        let other = Identity {
            cert: new.issue(&key2.csr_pem, "n2", shoal_rpc::Role::Worker, "c1", &[], Duration::from_secs(7200)).unwrap() + &cross,
            ..renewed
        };
        assert!(check_renewed(&id, &other).is_err());
    }
}

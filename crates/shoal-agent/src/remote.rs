//! [`RemoteControlPlane`]: the agent's control plane on a worker, a dispatcher session with a
//! manager over mutual TLS (`docs/CONTRACTS.md`, "Multi-node contracts"), and the wire messages
//! of the dispatcher routes (shared with the manager side in shoal-swarm).
//!
//! A session is one `POST /v1/session` NDJSON stream: a `session` message (ID, heartbeat period,
//! managers), the complete assignment set, then incremental changes. While it is open the node
//! heartbeats at the period the manager last gave; a failed heartbeat or a broken stream ends the
//! session and the agent opens a new one with back-off (100 ms → 8 s, in [`crate::Agent`]),
//! trying the known managers in turn. Tasks keep running meanwhile; the next complete set
//! reconciles them. Statuses go out with `POST /v1/status`; the agent's reporter batches and
//! retries them until delivered. Every `session` message names the cluster's managers: the
//! node's manager list follows it (new managers get a client, removed ones are dropped), so a
//! worker fails over to managers that joined after it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use shoal_rpc::RpcClient;
use shoal_types::{NodeDescription, TaskStatus, TlsInfo};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::control::{Assignment, ControlError, ControlPlane};

/// Wire messages of the dispatcher routes.
pub mod wire {
    use serde::{Deserialize, Serialize};
    use shoal_types::{NodeDescription, Task, TaskStatus};

    use crate::control::Assignment;

    pub const SESSION_PATH: &str = "/v1/session";
    pub const HEARTBEAT_PATH: &str = "/v1/heartbeat";
    pub const STATUS_PATH: &str = "/v1/status";

    /// `POST /v1/session` body.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct SessionRequest {
        #[serde(default)]
        pub node_id: String,
        #[serde(default)]
        pub description: NodeDescription,
        /// The node's address as it wants managers to see it (empty: the connection's peer IP).
        #[serde(default)]
        pub advertise_addr: String,
    }

    /// A manager as a node knows it.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RemoteManager {
        pub node_id: String,
        /// `ip:port` of its cluster port.
        pub addr: String,
    }

    /// The first message of a session.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct SessionInfo {
        pub id: String,
        pub heartbeat_period_ns: u64,
        #[serde(default)]
        pub managers: Vec<RemoteManager>,
    }

    /// An assignment message: `complete` (the whole set) or `updated` + `removed`.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct AssignmentsMsg {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub complete: Option<Vec<Task>>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub updated: Vec<Task>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub removed: Vec<String>,
    }

    impl From<Assignment> for SessionMessage {
        fn from(a: Assignment) -> Self {
            match a {
                Assignment::Complete(tasks) => {
                    SessionMessage::Assignments(AssignmentsMsg { complete: Some(tasks), ..Default::default() })
                }
                Assignment::Incremental { updated, removed } => {
                    SessionMessage::Assignments(AssignmentsMsg { complete: None, updated, removed })
                }
                Assignment::NetworkMap(m) => SessionMessage::NetworkMap(m),
                Assignment::Logs(sub) => SessionMessage::LogSubscription(sub),
                Assignment::Inspect(req) => SessionMessage::TaskInspect(req),
            }
        }
    }

    impl From<AssignmentsMsg> for Assignment {
        fn from(m: AssignmentsMsg) -> Self {
            match m.complete {
                Some(tasks) => Assignment::Complete(tasks),
                None => Assignment::Incremental { updated: m.updated, removed: m.removed },
            }
        }
    }

    /// `POST /v1/logs`: a node publishes log lines of its tasks for a subscription.
    pub const LOGS_PATH: &str = "/v1/logs";

    /// A manager asks a node for the logs of some of its tasks (`docker service logs` on the
    /// manager): sent on the node's session stream.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LogSubscription {
        pub id: String,
        pub task_ids: Vec<String>,
        #[serde(default)]
        pub stdout: bool,
        #[serde(default)]
        pub stderr: bool,
        #[serde(default)]
        pub follow: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tail: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub since: Option<chrono::DateTime<chrono::Utc>>,
    }

    /// One log line of a task.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LogEntry {
        pub task_id: String,
        /// 1 = stdout, 2 = stderr.
        pub stream: u8,
        pub time: chrono::DateTime<chrono::Utc>,
        pub line: String,
    }

    /// `POST /v1/logs` body: lines for a subscription; `done` when the node has sent everything
    /// (never for `follow`).
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct LogBatch {
        pub subscription_id: String,
        #[serde(default)]
        pub lines: Vec<LogEntry>,
        #[serde(default)]
        pub done: bool,
    }

    /// `POST /v1/logs` answer: false when nobody wants the subscription any more.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct LogBatchResponse {
        pub wanted: bool,
    }

    /// `POST /v1/inspect`: a node answers a manager's [`TaskInspectRequest`].
    pub const INSPECT_PATH: &str = "/v1/inspect";

    /// A manager asks a node for the engine's record of one of its task containers (the
    /// dashboard's inspect of a container on another node): sent on the node's session stream.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TaskInspectRequest {
        pub id: String,
        pub task_id: String,
    }

    /// `POST /v1/inspect` body: the container record (the engine's JSON), or why there is none.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct TaskInspectAnswer {
        pub request_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub container: Option<serde_json::Value>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub error: String,
    }

    /// One line of the session stream: `{"session": …}`, `{"assignments": …}`,
    /// `{"network_map": …}`, `{"log_subscription": …}` or `{"task_inspect": …}`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum SessionMessage {
        Session(SessionInfo),
        Assignments(AssignmentsMsg),
        NetworkMap(shoal_types::NetworkMap),
        LogSubscription(LogSubscription),
        TaskInspect(TaskInspectRequest),
    }

    /// `POST /v1/heartbeat` body.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct HeartbeatRequest {
        pub session_id: String,
    }

    /// `POST /v1/heartbeat` answer: when to send the next one, and the version of the cluster
    /// object (certificate policy, trust roots): a node asks for the certificate policy only
    /// when it changes.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct HeartbeatResponse {
        pub period_ns: u64,
        #[serde(default)]
        pub cluster_version: u64,
    }

    /// One observed status.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct StatusUpdate {
        pub task_id: String,
        pub status: TaskStatus,
    }

    /// `POST /v1/status` body.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct StatusRequest {
        #[serde(default)]
        pub session_id: String,
        #[serde(default)]
        pub updates: Vec<StatusUpdate>,
    }
}

use wire::*;

/// Shortest heartbeat period a node accepts from a manager (guards against a zero period).
const MIN_PERIOD: Duration = Duration::from_millis(100);
/// How long the first session message may take.
const SESSION_START_TIMEOUT: Duration = Duration::from_secs(10);

/// [`ControlPlane`] over dispatcher sessions with the cluster's managers.
pub struct RemoteControlPlane {
    node_id: String,
    /// Sent with every new session; its `TLSInfo` follows this node's certificate
    /// ([`RemoteControlPlane::set_tls_info`]).
    description: Mutex<NodeDescription>,
    advertise_addr: String,
    /// The known managers, refreshed from session messages.
    managers: Arc<ManagerList>,
    /// Index of the manager to use (advanced after a failure).
    next: AtomicUsize,
    /// The open session: (manager client, session ID).
    current: Arc<Mutex<Option<(RpcClient, String)>>>,
    /// The cluster object's version as the latest heartbeat answer named it.
    cluster_version: Arc<watch::Sender<u64>>,
}

impl RemoteControlPlane {
    /// `clients`: one mTLS client per known manager (at least one), in order of preference.
    pub fn new(node_id: String, description: NodeDescription, advertise_addr: String, clients: Vec<RpcClient>) -> RemoteControlPlane {
        assert!(!clients.is_empty(), "a remote control plane needs at least one manager");
        let known = clients.iter().map(|c| RemoteManager { node_id: String::new(), addr: c.addr().to_string() }).collect();
        RemoteControlPlane {
            node_id,
            description: Mutex::new(description),
            advertise_addr,
            managers: Arc::new(ManagerList { clients: Mutex::new(clients), known: watch::channel(known).0 }),
            next: AtomicUsize::new(0),
            current: Arc::new(Mutex::new(None)),
            cluster_version: Arc::new(watch::channel(0).0),
        }
    }

    /// Changes whenever a heartbeat answer names a new version of the cluster object.
    pub fn cluster_version(&self) -> watch::Receiver<u64> {
        self.cluster_version.subscribe()
    }

    /// The `TLSInfo` (trust root and certificate issuer) new sessions report in the node's
    /// description, after this node's certificate or trust root changed.
    pub fn set_tls_info(&self, tls_info: TlsInfo) {
        self.description.lock().unwrap_or_else(|e| e.into_inner()).tls_info = tls_info;
    }

    /// A client per known manager (the certificate loop swaps their TLS config).
    pub fn clients(&self) -> Vec<RpcClient> {
        self.managers.clients.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The known managers; changes when a session message names a different set.
    pub fn managers(&self) -> watch::Receiver<Vec<RemoteManager>> {
        self.managers.known.subscribe()
    }

    fn failed_over(&self, idx: usize) {
        let n = self.managers.len();
        let _ = self.next.compare_exchange(idx, (idx + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The managers a worker knows: a client for each, in the order the latest session gave.
struct ManagerList {
    clients: Mutex<Vec<RpcClient>>,
    known: watch::Sender<Vec<RemoteManager>>,
}

impl ManagerList {
    fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).len().max(1)
    }

    /// The client at `idx` (modulo the list length) and the index used.
    fn get(&self, idx: usize) -> (usize, RpcClient) {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let idx = idx % clients.len().max(1);
        (idx, clients[idx].clone())
    }

    /// Follow the managers a session message names: clients of managers still named are kept
    /// (their connections too), new ones copy an existing client's TLS config. An empty or
    /// unparsable list changes nothing.
    fn update(&self, managers: &[RemoteManager]) {
        let named: Vec<(&RemoteManager, std::net::SocketAddr)> =
            managers.iter().filter_map(|m| m.addr.parse().ok().map(|a| (m, a))).collect();
        if named.is_empty() {
            return;
        }
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let same = clients.len() == named.len() && clients.iter().zip(&named).all(|(c, (_, a))| c.addr() == *a);
        if !same {
            let template = clients[0].clone();
            let next: Vec<RpcClient> = named
                .iter()
                .map(|(_, a)| clients.iter().find(|c| c.addr() == *a).cloned().unwrap_or_else(|| template.for_addr(*a)))
                .collect();
            info!(managers = ?named.iter().map(|(_, a)| a.to_string()).collect::<Vec<_>>(), "the cluster's managers changed");
            *clients = next;
        }
        drop(clients);
        let list: Vec<RemoteManager> = named.into_iter().map(|(m, _)| m.clone()).collect();
        self.known.send_if_modified(|k| if *k == list { false } else { *k = list; true });
    }
}

fn unavailable(e: shoal_rpc::RpcError) -> ControlError {
    match e.status() {
        Some(s) if (400..500).contains(&s) => ControlError::Failed(e.to_string()),
        _ => ControlError::Unavailable(e.to_string()),
    }
}

fn period_of(ns: u64) -> Duration {
    Duration::from_nanos(ns).max(MIN_PERIOD)
}

impl ControlPlane for RemoteControlPlane {
    /// Opens a session, trying each known manager once (a follower manager refuses sessions,
    /// a dead one cannot be reached) before the agent backs off.
    fn assignments(&self) -> BoxFuture<'_, Result<mpsc::Receiver<Assignment>, ControlError>> {
        Box::pin(async move {
            let tries = self.managers.len();
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.open_session().await {
                    Err(ControlError::Unavailable(e)) if attempt < tries => {
                        debug!(error = %e, "this manager cannot take the session; trying the next one");
                    }
                    r => return r,
                }
            }
        })
    }

    fn report(&self, updates: Vec<(String, TaskStatus)>) -> BoxFuture<'_, Result<(), ControlError>> {
        self.send_report(updates)
    }

    fn publish_logs(&self, batch: LogBatch) -> BoxFuture<'_, Result<bool, ControlError>> {
        Box::pin(async move {
            let client = self.session_client();
            let r: LogBatchResponse = client.call_json(LOGS_PATH, &batch).await.map_err(|e| ControlError::Unavailable(e.to_string()))?;
            Ok(r.wanted)
        })
    }

    fn answer_inspect(&self, answer: TaskInspectAnswer) -> BoxFuture<'_, Result<(), ControlError>> {
        Box::pin(async move {
            let client = self.session_client();
            client.call_json::<_, serde_json::Value>(INSPECT_PATH, &answer).await.map_err(|e| ControlError::Unavailable(e.to_string()))?;
            Ok(())
        })
    }
}

impl RemoteControlPlane {
    /// The manager holding this node's session (answers go where the request came from).
    fn session_client(&self) -> RpcClient {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(c, _)| c.clone())
            .unwrap_or_else(|| self.managers.get(self.next.load(Ordering::Relaxed)).1)
    }
}

impl RemoteControlPlane {
    fn open_session(&self) -> BoxFuture<'_, Result<mpsc::Receiver<Assignment>, ControlError>> {
        Box::pin(async move {
            let (idx, client) = self.managers.get(self.next.load(Ordering::Relaxed));
            let req = SessionRequest {
                node_id: self.node_id.clone(),
                description: self.description.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                advertise_addr: self.advertise_addr.clone(),
            };
            let mut stream = match client.stream_ndjson::<_, SessionMessage>(SESSION_PATH, &req).await {
                Ok(s) => s,
                Err(e) => {
                    self.failed_over(idx);
                    return Err(unavailable(e));
                }
            };
            let info = match tokio::time::timeout(SESSION_START_TIMEOUT, stream.recv()).await {
                Ok(Some(Ok(SessionMessage::Session(info)))) => info,
                Ok(Some(Ok(_))) => return Err(ControlError::Failed("the session did not start with a session message".into())),
                Ok(Some(Err(e))) => {
                    self.failed_over(idx);
                    return Err(unavailable(e));
                }
                Ok(None) => return Err(ControlError::Unavailable("the session ended before it started".into())),
                Err(_) => {
                    self.failed_over(idx);
                    return Err(ControlError::Unavailable("the manager did not start the session in time".into()));
                }
            };
            info!(manager = %client.addr(), session = %info.id, period = ?period_of(info.heartbeat_period_ns), "dispatcher session open");
            self.managers.update(&info.managers);
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((client.clone(), info.id.clone()));
            let current = self.current.clone();
            let managers = self.managers.clone();
            let cluster_version = self.cluster_version.clone();
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(async move {
                let session_id = info.id.clone();
                let mut next_beat = tokio::time::Instant::now() + period_of(info.heartbeat_period_ns);
                let why = loop {
                    tokio::select! {
                        _ = tx.closed() => break "the agent closed the session".to_string(),
                        msg = stream.recv() => match msg {
                            Some(Ok(SessionMessage::Assignments(a))) => {
                                if tx.send(a.into()).await.is_err() {
                                    break "the agent closed the session".to_string();
                                }
                            }
                            Some(Ok(SessionMessage::NetworkMap(m))) => {
                                if tx.send(Assignment::NetworkMap(m)).await.is_err() {
                                    break "the agent closed the session".to_string();
                                }
                            }
                            Some(Ok(SessionMessage::LogSubscription(sub))) => {
                                if tx.send(Assignment::Logs(sub)).await.is_err() {
                                    break "the agent closed the session".to_string();
                                }
                            }
                            Some(Ok(SessionMessage::TaskInspect(req))) => {
                                if tx.send(Assignment::Inspect(req)).await.is_err() {
                                    break "the agent closed the session".to_string();
                                }
                            }
                            Some(Ok(SessionMessage::Session(info))) => managers.update(&info.managers),
                            Some(Err(e)) => break format!("session stream failed: {e}"),
                            None => break "the manager ended the session".to_string(),
                        },
                        _ = tokio::time::sleep_until(next_beat) => {
                            let beat = HeartbeatRequest { session_id: session_id.clone() };
                            match client.call_json::<_, HeartbeatResponse>(HEARTBEAT_PATH, &beat).await {
                                Ok(r) => {
                                    next_beat = tokio::time::Instant::now() + period_of(r.period_ns);
                                    cluster_version.send_if_modified(|v| std::mem::replace(v, r.cluster_version) != r.cluster_version);
                                }
                                Err(e) => break format!("heartbeat failed: {e}"),
                            }
                        }
                    }
                };
                warn!(session = %session_id, reason = %why, "dispatcher session ended");
                let mut cur = current.lock().unwrap_or_else(|e| e.into_inner());
                if cur.as_ref().is_some_and(|(_, id)| *id == session_id) {
                    *cur = None;
                }
            });
            Ok(rx)
        })
    }

    fn send_report(&self, updates: Vec<(String, TaskStatus)>) -> BoxFuture<'_, Result<(), ControlError>> {
        Box::pin(async move {
            let (client, session_id) = self
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_else(|| (self.managers.get(self.next.load(Ordering::Relaxed)).1, String::new()));
            let n = updates.len();
            let req = StatusRequest {
                session_id,
                updates: updates.into_iter().map(|(task_id, status)| StatusUpdate { task_id, status }).collect(),
            };
            let r: Result<serde_json::Value, _> = client.call_json(STATUS_PATH, &req).await;
            match r {
                Ok(_) => {
                    debug!(statuses = n, "statuses delivered to the manager");
                    Ok(())
                }
                // Every failure is retried by the reporter, so call them all "unavailable".
                Err(e) => Err(ControlError::Unavailable(e.to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::wire::*;
    use crate::control::Assignment;

    #[test]
    fn session_messages_have_the_contract_shape() {
        let m = SessionMessage::Session(SessionInfo { id: "s1".into(), heartbeat_period_ns: 5_000_000_000, managers: vec![] });
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["session"]["id"], "s1");
        assert_eq!(v["session"]["heartbeat_period_ns"], 5_000_000_000u64);
        let m = SessionMessage::from(Assignment::Complete(vec![]));
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"assignments":{"complete":[]}}"#);
        let m = SessionMessage::from(Assignment::Incremental { updated: vec![], removed: vec!["t1".into()] });
        let line = serde_json::to_string(&m).unwrap();
        assert_eq!(line, r#"{"assignments":{"removed":["t1"]}}"#);
        let m = SessionMessage::from(Assignment::NetworkMap(shoal_types::NetworkMap::default()));
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"network_map":{"networks":[],"nodes":[],"services":[]}}"#);
        let SessionMessage::Assignments(back) = serde_json::from_str(&line).unwrap() else { panic!() };
        assert_eq!(Assignment::from(back), Assignment::Incremental { updated: vec![], removed: vec!["t1".into()] });
    }
}

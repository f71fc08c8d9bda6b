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
//! retries them until delivered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use shoal_rpc::RpcClient;
use shoal_types::{NodeDescription, TaskStatus};
use tokio::sync::mpsc;
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

    impl From<Assignment> for AssignmentsMsg {
        fn from(a: Assignment) -> Self {
            match a {
                Assignment::Complete(tasks) => AssignmentsMsg { complete: Some(tasks), ..Default::default() },
                Assignment::Incremental { updated, removed } => AssignmentsMsg { complete: None, updated, removed },
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

    /// One line of the session stream: `{"session": …}` or `{"assignments": …}`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum SessionMessage {
        Session(SessionInfo),
        Assignments(AssignmentsMsg),
    }

    /// `POST /v1/heartbeat` body.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct HeartbeatRequest {
        pub session_id: String,
    }

    /// `POST /v1/heartbeat` answer: when to send the next one.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct HeartbeatResponse {
        pub period_ns: u64,
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
    description: NodeDescription,
    advertise_addr: String,
    clients: Vec<RpcClient>,
    /// Index of the manager to use (advanced after a failure).
    next: AtomicUsize,
    /// The open session: (manager index, session ID).
    current: Arc<Mutex<Option<(usize, String)>>>,
}

impl RemoteControlPlane {
    /// `clients`: one mTLS client per known manager (at least one), in order of preference.
    pub fn new(node_id: String, description: NodeDescription, advertise_addr: String, clients: Vec<RpcClient>) -> RemoteControlPlane {
        assert!(!clients.is_empty(), "a remote control plane needs at least one manager");
        RemoteControlPlane {
            node_id,
            description,
            advertise_addr,
            clients,
            next: AtomicUsize::new(0),
            current: Arc::new(Mutex::new(None)),
        }
    }

    fn failed_over(&self, idx: usize) {
        let _ = self.next.compare_exchange(idx, (idx + 1) % self.clients.len(), Ordering::Relaxed, Ordering::Relaxed);
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
    fn assignments(&self) -> BoxFuture<'_, Result<mpsc::Receiver<Assignment>, ControlError>> {
        Box::pin(async move {
            let idx = self.next.load(Ordering::Relaxed) % self.clients.len();
            let client = self.clients[idx].clone();
            let req = SessionRequest {
                node_id: self.node_id.clone(),
                description: self.description.clone(),
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
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((idx, info.id.clone()));
            let current = self.current.clone();
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
                            Some(Ok(SessionMessage::Session(_))) => {}
                            Some(Err(e)) => break format!("session stream failed: {e}"),
                            None => break "the manager ended the session".to_string(),
                        },
                        _ = tokio::time::sleep_until(next_beat) => {
                            let beat = HeartbeatRequest { session_id: session_id.clone() };
                            match client.call_json::<_, HeartbeatResponse>(HEARTBEAT_PATH, &beat).await {
                                Ok(r) => next_beat = tokio::time::Instant::now() + period_of(r.period_ns),
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

    fn report(&self, updates: Vec<(String, TaskStatus)>) -> BoxFuture<'_, Result<(), ControlError>> {
        Box::pin(async move {
            let (idx, session_id) = self
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_else(|| (self.next.load(Ordering::Relaxed) % self.clients.len(), String::new()));
            let n = updates.len();
            let req = StatusRequest {
                session_id,
                updates: updates.into_iter().map(|(task_id, status)| StatusUpdate { task_id, status }).collect(),
            };
            let r: Result<serde_json::Value, _> = self.clients[idx].call_json(STATUS_PATH, &req).await;
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
        let m = SessionMessage::Assignments(Assignment::Complete(vec![]).into());
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"assignments":{"complete":[]}}"#);
        let m = SessionMessage::Assignments(Assignment::Incremental { updated: vec![], removed: vec!["t1".into()] }.into());
        let line = serde_json::to_string(&m).unwrap();
        assert_eq!(line, r#"{"assignments":{"removed":["t1"]}}"#);
        let SessionMessage::Assignments(back) = serde_json::from_str(&line).unwrap() else { panic!() };
        assert_eq!(Assignment::from(back), Assignment::Incremental { updated: vec![], removed: vec!["t1".into()] });
    }
}

//! The boundary between the agent and the control plane, and its in-process implementation over
//! the local store (for manager nodes). A remote implementation (dispatcher session over mutual
//! TLS) implements the same trait.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use shoal_store::{Action, Commit, ReadTx, Store, StoreError};
use shoal_types::{Annotations, Kind, NetworkMap, Service, Task, TaskState, TaskStatus};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

/// One message of an assignment session.
#[derive(Debug, Clone, PartialEq)]
pub enum Assignment {
    /// Every task assigned to this node (observed state ≥ ASSIGNED). Tasks the agent runs that
    /// are not in the set are shut down and their containers removed.
    Complete(Vec<Task>),
    /// Changes since the previous message: tasks added or updated, and IDs of tasks no longer
    /// assigned here (deleted or moved).
    Incremental { updated: Vec<Task>, removed: Vec<String> },
    /// The cluster's network map (sent after the first complete set and whenever it changes):
    /// the node programs its overlay data plane and routing mesh from it.
    NetworkMap(NetworkMap),
    /// A manager wants the logs of some of this node's tasks ([`ControlPlane::publish_logs`]).
    Logs(crate::remote::wire::LogSubscription),
    /// A manager wants the record of one of this node's task containers
    /// ([`ControlPlane::answer_inspect`]).
    Inspect(crate::remote::wire::TaskInspectRequest),
}

/// Why a control-plane call failed. The agent retries with back-off in both cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No manager could be reached (or this one cannot commit writes right now).
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// The control plane refused the call.
    #[error("control plane error: {0}")]
    Failed(String),
}

/// What the agent needs from the control plane. Implementations know which node they serve.
pub trait ControlPlane: Send + Sync + 'static {
    /// Opens an assignment session. Its first message is [`Assignment::Complete`], then
    /// [`Assignment::Incremental`] changes follow. When the receiver yields `None` the session is
    /// over; the agent opens a new one (and gets a new complete set).
    fn assignments(&self) -> BoxFuture<'_, Result<mpsc::Receiver<Assignment>, ControlError>>;

    /// Records observed task statuses. Statuses that would move a task backwards, or that name a
    /// task not assigned to this node, are ignored (not an error).
    fn report(&self, updates: Vec<(String, TaskStatus)>) -> BoxFuture<'_, Result<(), ControlError>>;

    /// Sends log lines for a subscription the control plane made ([`Assignment::Logs`]); Ok(false)
    /// when it is no longer wanted. Managers read their own tasks' logs directly, so the local
    /// control plane never subscribes.
    fn publish_logs(&self, batch: crate::remote::wire::LogBatch) -> BoxFuture<'_, Result<bool, ControlError>> {
        let _ = batch;
        Box::pin(async { Err(ControlError::Failed("this control plane does not collect logs".into())) })
    }

    /// Answers an [`Assignment::Inspect`]. Like logs, only remote control planes ask.
    fn answer_inspect(&self, answer: crate::remote::wire::TaskInspectAnswer) -> BoxFuture<'_, Result<(), ControlError>> {
        let _ = answer;
        Box::pin(async { Err(ControlError::Failed("this control plane does not inspect remote containers".into())) })
    }
}

/// [`ControlPlane`] over the local [`Store`] (a manager node running its own agent).
#[derive(Clone)]
pub struct LocalControlPlane {
    store: Store,
    node_id: Arc<str>,
}

impl LocalControlPlane {
    pub fn new(store: Store, node_id: impl Into<String>) -> LocalControlPlane {
        LocalControlPlane { store, node_id: Arc::from(node_id.into()) }
    }
}

fn assigned_here(t: &Task, node: &str) -> bool {
    t.node_id == node && t.status.state >= TaskState::Assigned
}

/// Fills `ServiceAnnotations` from the service when the orchestrator left it empty (the agent
/// needs the service name for container names and labels).
fn enrich(mut t: Task, view: &ReadTx) -> Task {
    if t.service_annotations.as_ref().is_none_or(|a| a.name.is_empty()) {
        if let Some(s) = view.get::<Service>(&t.service_id) {
            t.service_annotations = Some(Annotations { name: s.spec.name, labels: s.spec.labels });
        }
    }
    t
}

/// True if `a` and `b` differ only in observed status and metadata (the agent's own writes
/// coming back: not worth re-sending).
fn only_status_changed(a: &Task, b: &Task) -> bool {
    let mut a = a.clone();
    a.status = b.status.clone();
    a.meta = b.meta.clone();
    a.service_annotations = b.service_annotations.clone();
    a == *b
}

fn complete_set(view: &ReadTx, node: &str) -> Vec<Task> {
    view.find::<Task>(|t| assigned_here(t, node)).into_iter().map(|t| enrich(t, view)).collect()
}

impl ControlPlane for LocalControlPlane {
    fn assignments(&self) -> BoxFuture<'_, Result<mpsc::Receiver<Assignment>, ControlError>> {
        Box::pin(async move {
            let (view, mut events) = self.store.watch();
            let node = self.node_id.clone();
            let store = self.store.clone();
            let (tx, rx) = mpsc::channel(64);
            let initial = complete_set(&view, &node);
            let mut known: HashMap<String, Task> = initial.iter().map(|t| (t.id.clone(), t.clone())).collect();
            let mut map = crate::netmap::compute(&view);
            tx.send(Assignment::Complete(initial)).await.map_err(|_| ControlError::Failed("agent gone".into()))?;
            tx.send(Assignment::NetworkMap(map.clone())).await.map_err(|_| ControlError::Failed("agent gone".into()))?;
            tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        _ = tx.closed() => return,
                        ev = events.recv() => match ev {
                            Ok(commit) => {
                                let view = store.view();
                                let networking = commit.changes.iter().any(|c| matches!(c.kind(), Kind::Network | Kind::Node | Kind::Service | Kind::Task));
                                if networking {
                                    let fresh = crate::netmap::compute(&view);
                                    if fresh != map {
                                        map = fresh;
                                        if tx.send(Assignment::NetworkMap(map.clone())).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                                diff(&commit, &view, &node, &mut known)
                            }
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                debug!(skipped = n, "assignment watch lagged; resending the complete set");
                                let (view, fresh) = store.watch();
                                events = fresh;
                                let set = complete_set(&view, &node);
                                known = set.iter().map(|t| (t.id.clone(), t.clone())).collect();
                                Some(Assignment::Complete(set))
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                    };
                    if let Some(msg) = msg {
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                }
            });
            Ok(rx)
        })
    }

    fn report(&self, updates: Vec<(String, TaskStatus)>) -> BoxFuture<'_, Result<(), ControlError>> {
        Box::pin(record_status(&self.store, &self.node_id, updates))
    }
}

/// Records task statuses observed by `node` (the one rule set shared by the local control plane
/// and the dispatcher's `/v1/status`): a status is ignored when its task is unknown, assigned to
/// another node, or when it would move the task backwards; an unchanged status is not rewritten.
/// Retries on write conflicts; `NotLeader` is [`ControlError::Unavailable`].
pub async fn record_status(store: &Store, node: &str, updates: Vec<(String, TaskStatus)>) -> Result<(), ControlError> {
    let node: Arc<str> = Arc::from(node);
    let mut attempt = 0;
    loop {
        let updates = updates.clone();
        let node = node.clone();
        let r = store
            .update(move |tx| {
                for (id, status) in updates {
                    let Some(mut t) = tx.get::<Task>(&id) else { continue };
                    if t.node_id != *node || status.state < t.status.state {
                        continue;
                    }
                    let mut cur = t.status.clone();
                    cur.timestamp = status.timestamp;
                    if cur == status {
                        continue; // nothing new
                    }
                    t.status = status;
                    tx.update(t)?;
                }
                Ok(())
            })
            .await;
        match r {
            Ok(()) => return Ok(()),
            Err(StoreError::SequenceConflict) if attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
            }
            Err(e @ StoreError::NotLeader) => return Err(ControlError::Unavailable(e.to_string())),
            Err(e) => {
                warn!(error = %e, "recording task status failed");
                return Err(ControlError::Failed(e.to_string()));
            }
        }
    }
}

/// The assignment change one commit makes for `node`, updating `known`.
fn diff(commit: &Commit, view: &ReadTx, node: &str, known: &mut HashMap<String, Task>) -> Option<Assignment> {
    let mut updated: Vec<Task> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    for change in &commit.changes {
        let Some(t) = change.get::<Task>() else { continue };
        match change.action {
            Action::Delete => {
                if known.remove(&t.id).is_some() {
                    removed.push(t.id.clone());
                }
            }
            _ if assigned_here(t, node) => {
                let t = enrich(t.clone(), view);
                let skip = known.get(&t.id).is_some_and(|old| only_status_changed(old, &t));
                known.insert(t.id.clone(), t.clone());
                if !skip {
                    updated.retain(|u| u.id != t.id);
                    updated.push(t);
                }
            }
            _ => {
                if known.remove(&t.id).is_some() {
                    removed.push(t.id.clone());
                }
            }
        }
    }
    if updated.is_empty() && removed.is_empty() {
        None
    } else {
        Some(Assignment::Incremental { updated, removed })
    }
}

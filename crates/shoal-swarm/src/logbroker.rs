//! Logs of tasks on other nodes (swarmkit's log broker): `docker service logs` on a manager
//! subscribes the nodes running the service's tasks over their dispatcher sessions
//! (`{"log_subscription": …}`); each node publishes its lines to `POST /v1/logs`, which feeds
//! them into the caller's stream. A node may only publish for a subscription addressed to it.
//! The same session streams carry one-shot inspects of a task's container
//! (`{"task_inspect": …}`, answered on `POST /v1/inspect`), for the dashboard.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use shoal_agent::remote::wire::{LogBatch, LogSubscription, SessionMessage, TaskInspectAnswer, TaskInspectRequest};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::logs::LogLine;

struct Subscription {
    node_id: String,
    service_id: String,
    lines: mpsc::Sender<LogLine>,
}

/// One per daemon; the dispatcher registers sessions and receives batches, `Swarm::logs`
/// subscribes.
#[derive(Default)]
pub(crate) struct LogBroker {
    /// The open session stream of each node.
    sessions: Mutex<HashMap<String, mpsc::Sender<SessionMessage>>>,
    subscriptions: Mutex<HashMap<String, Subscription>>,
    /// Inspects waiting for their answer: request id → (node asked, reply).
    inspects: Mutex<HashMap<String, (String, oneshot::Sender<TaskInspectAnswer>)>>,
}

/// Why a node could not be asked about a task's container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    #[error("node {0} is not connected to this manager")]
    NotConnected(String),
    #[error("node {0} did not answer in time")]
    Timeout(String),
    #[error("{0}")]
    Refused(String),
}

impl LogBroker {
    pub(crate) fn session_opened(&self, node_id: &str, tx: mpsc::Sender<SessionMessage>) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(node_id.to_string(), tx);
    }

    pub(crate) fn session_closed(&self, node_id: &str, tx: &mpsc::Sender<SessionMessage>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.get(node_id).is_some_and(|t| t.same_channel(tx)) {
            sessions.remove(node_id);
        }
    }

    /// Asks `node_id` for the logs in `sub`; its lines will go to `lines`. False when the node
    /// has no open session (it is down or not connected to this manager).
    pub(crate) async fn subscribe(&self, node_id: &str, service_id: &str, sub: LogSubscription, lines: mpsc::Sender<LogLine>) -> bool {
        let Some(tx) = self.sessions.lock().unwrap_or_else(|e| e.into_inner()).get(node_id).cloned() else {
            return false;
        };
        let id = sub.id.clone();
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id.clone(),
            Subscription { node_id: node_id.to_string(), service_id: service_id.to_string(), lines },
        );
        if tx.send(SessionMessage::LogSubscription(sub)).await.is_err() {
            self.cancel(&id);
            return false;
        }
        debug!(node = %node_id, subscription = %id, "log subscription sent");
        true
    }

    /// Asks `node_id` for the engine record of `task_id`'s container; waits up to `timeout`.
    pub(crate) async fn inspect(&self, node_id: &str, task_id: &str, timeout: std::time::Duration) -> Result<serde_json::Value, InspectError> {
        let Some(tx) = self.sessions.lock().unwrap_or_else(|e| e.into_inner()).get(node_id).cloned() else {
            return Err(InspectError::NotConnected(node_id.to_string()));
        };
        let id = shoal_types::ids::new_id();
        let (reply, answer) = oneshot::channel();
        self.inspects.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), (node_id.to_string(), reply));
        let req = TaskInspectRequest { id: id.clone(), task_id: task_id.to_string() };
        let outcome = if tx.send(SessionMessage::TaskInspect(req)).await.is_err() {
            Err(InspectError::NotConnected(node_id.to_string()))
        } else {
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(a)) => a.container.ok_or(InspectError::Refused(a.error)),
                Ok(Err(_)) | Err(_) => Err(InspectError::Timeout(node_id.to_string())),
            }
        };
        self.inspects.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        outcome
    }

    /// An inspect answer from `caller`; false when nobody asked `caller` this.
    pub(crate) fn answer(&self, caller: &str, answer: TaskInspectAnswer) -> bool {
        let mut pending = self.inspects.lock().unwrap_or_else(|e| e.into_inner());
        if pending.get(&answer.request_id).is_none_or(|(node, _)| node != caller) {
            return false;
        }
        match pending.remove(&answer.request_id) {
            Some((_, reply)) => reply.send(answer).is_ok(),
            None => false,
        }
    }

    pub(crate) fn cancel(&self, id: &str) {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// A batch from `caller`, forwarded to the subscriber. False when the subscription is gone
    /// (or not addressed to `caller`): the node stops publishing. The subscriber's stream ends
    /// once every node is done (each subscription holds a sender of it).
    pub(crate) async fn publish(&self, caller: &str, batch: LogBatch) -> bool {
        let found = {
            let subs = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
            subs.get(&batch.subscription_id).filter(|s| s.node_id == caller).map(|s| (s.lines.clone(), s.service_id.clone(), s.node_id.clone()))
        };
        let Some((lines_tx, service_id, node_id)) = found else { return false };
        for l in batch.lines {
            let line = LogLine {
                node_id: node_id.clone(),
                service_id: service_id.clone(),
                task_id: l.task_id,
                stream: l.stream,
                time: l.time,
                line: Bytes::from(l.line.into_bytes()),
            };
            if lines_tx.send(line).await.is_err() {
                self.cancel(&batch.subscription_id);
                return false;
            }
        }
        if batch.done {
            self.cancel(&batch.subscription_id);
        }
        !batch.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A broker with a session for `node`; the returned receiver sees what the node is sent.
    fn broker_with(node: &str) -> (std::sync::Arc<LogBroker>, mpsc::Receiver<SessionMessage>) {
        let broker = std::sync::Arc::new(LogBroker::default());
        let (tx, rx) = mpsc::channel(4);
        broker.session_opened(node, tx);
        (broker, rx)
    }

    #[tokio::test]
    async fn an_inspect_is_answered_only_by_the_node_asked() {
        let (broker, mut session) = broker_with("n1");
        let asking = tokio::spawn({
            let broker = broker.clone();
            async move { broker.inspect("n1", "task1", Duration::from_secs(5)).await }
        });
        let Some(SessionMessage::TaskInspect(req)) = session.recv().await else { panic!("no inspect request sent") };
        assert_eq!(req.task_id, "task1");
        let forged = TaskInspectAnswer { request_id: req.id.clone(), container: Some(serde_json::json!({"id": "evil"})), error: String::new() };
        assert!(!broker.answer("n2", forged), "another node cannot answer");
        let real = TaskInspectAnswer { request_id: req.id.clone(), container: Some(serde_json::json!({"id": "c1"})), error: String::new() };
        assert!(broker.answer("n1", real));
        assert_eq!(asking.await.unwrap().unwrap(), serde_json::json!({"id": "c1"}));
        let late = TaskInspectAnswer { request_id: req.id, container: None, error: String::new() };
        assert!(!broker.answer("n1", late), "answered requests are gone");
    }

    #[tokio::test]
    async fn inspect_errors_name_the_node() {
        let (broker, mut session) = broker_with("n1");
        assert_eq!(
            broker.inspect("n9", "t", Duration::from_millis(50)).await,
            Err(InspectError::NotConnected("n9".into()))
        );
        assert_eq!(broker.inspect("n1", "t", Duration::from_millis(50)).await, Err(InspectError::Timeout("n1".into())));
        let Some(SessionMessage::TaskInspect(_)) = session.recv().await else { panic!("no inspect request sent") };
        let asking = tokio::spawn({
            let broker = broker.clone();
            async move { broker.inspect("n1", "t", Duration::from_secs(5)).await }
        });
        let Some(SessionMessage::TaskInspect(req)) = session.recv().await else { panic!("no inspect request sent") };
        broker.answer("n1", TaskInspectAnswer { request_id: req.id, container: None, error: "task t has no container on this node".into() });
        assert_eq!(asking.await.unwrap(), Err(InspectError::Refused("task t has no container on this node".into())));
    }
}

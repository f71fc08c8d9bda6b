//! Logs of tasks on other nodes (swarmkit's log broker): `docker service logs` on a manager
//! subscribes the nodes running the service's tasks over their dispatcher sessions
//! (`{"log_subscription": …}`); each node publishes its lines to `POST /v1/logs`, which feeds
//! them into the caller's stream. A node may only publish for a subscription addressed to it.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use shoal_agent::remote::wire::{LogBatch, LogSubscription, SessionMessage};
use tokio::sync::mpsc;
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

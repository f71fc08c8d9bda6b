//! `docker service logs` / task logs: the logs of a service's task containers, each line tagged
//! with the node, service and task it came from — read from the engine for this node's tasks and
//! through the log broker ([`crate::logbroker`]) from the nodes running the others.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use shoal_types::{Service, Task};

use crate::error::{Result, SwarmError};
use crate::Swarm;
use shoal_agent::remote::wire::LogSubscription;

/// How long a non-follow `service logs` waits for other nodes' lines.
const REMOTE_LOGS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an inspect of a container on another node waits for the node's answer.
const REMOTE_INSPECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub stdout: bool,
    pub stderr: bool,
    pub follow: bool,
    pub tail: Option<usize>,
    pub since: Option<DateTime<Utc>>,
}

impl From<&LogOptions> for shoal_engine::LogOptions {
    fn from(o: &LogOptions) -> Self {
        shoal_engine::LogOptions { stdout: o.stdout, stderr: o.stderr, follow: o.follow, tail: o.tail, since: o.since, until: None }
    }
}

/// One log line of one task.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub node_id: String,
    pub service_id: String,
    pub task_id: String,
    pub stream: u8,
    pub time: DateTime<Utc>,
    pub line: Bytes,
}

impl Swarm {
    /// The engine's record (as JSON) of `task`'s container, wherever the task runs: read here
    /// for this node's tasks, asked of the task's node over its dispatcher session otherwise.
    pub async fn inspect_task_container(&self, task: &Task) -> Result<serde_json::Value> {
        if task.node_id.is_empty() {
            return Err(SwarmError::NotFound { kind: "container of task", reference: task.id.clone() });
        }
        if Some(task.node_id.as_str()) == self.node_id().as_deref() {
            let rec = shoal_agent::task_container(self.engine(), &task.id)
                .ok_or_else(|| SwarmError::NotFound { kind: "container of task", reference: task.id.clone() })?;
            return serde_json::to_value(&rec).map_err(|e| SwarmError::Internal(format!("encoding the container of task {}: {e}", task.id)));
        }
        self.inner.log_broker.inspect(&task.node_id, &task.id, REMOTE_INSPECT_TIMEOUT).await.map_err(|e| match e {
            crate::logbroker::InspectError::Refused(msg) => SwarmError::NotFound { kind: "container of task", reference: format!("{} ({msg})", task.id) },
            other => SwarmError::Unavailable(other.to_string()),
        })
    }

    /// Streams the logs of a service's tasks (or of one task); with `follow`, tasks that start
    /// later are picked up too. The channel closes at the end.
    pub async fn logs(&self, service: Option<Service>, task: Option<Task>, opts: LogOptions) -> Result<mpsc::Receiver<LogLine>> {
        let store = self.store()?;
        let (tx, rx) = mpsc::channel(256);
        let engine = self.engine().clone();
        let this_node = self.node_id().unwrap_or_default();
        let swarm = self.clone();
        tokio::spawn(async move {
            let mut seen: HashSet<String> = HashSet::new();
            let mut subscriptions: Vec<String> = Vec::new();
            loop {
                // Tasks on other nodes: ask those nodes to publish their logs here.
                let remote: Vec<Task> = match (&service, &task) {
                    (_, Some(t)) => store.view().get::<Task>(&t.id).into_iter().collect(),
                    (Some(s), None) => store.view().find::<Task>(|t| t.service_id == s.id),
                    (None, None) => Vec::new(),
                };
                let mut by_node: std::collections::BTreeMap<String, (String, Vec<String>)> = Default::default();
                for t in remote {
                    let has_container = t.status.container_status.as_ref().is_some_and(|c| !c.container_id.is_empty());
                    if t.node_id.is_empty() || t.node_id == this_node || !has_container || !seen.insert(t.id.clone()) {
                        continue;
                    }
                    by_node.entry(t.node_id.clone()).or_insert_with(|| (t.service_id.clone(), Vec::new())).1.push(t.id);
                }
                for (node, (service_id, task_ids)) in by_node {
                    let sub = LogSubscription {
                        id: shoal_types::new_id(),
                        task_ids,
                        stdout: opts.stdout,
                        stderr: opts.stderr,
                        follow: opts.follow,
                        tail: opts.tail,
                        since: opts.since,
                    };
                    let id = sub.id.clone();
                    if swarm.inner.log_broker.subscribe(&node, &service_id, sub, tx.clone()).await {
                        subscriptions.push(id.clone());
                        if !opts.follow {
                            // A node that never answers must not hold the stream open.
                            let swarm = swarm.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(REMOTE_LOGS_TIMEOUT).await;
                                swarm.inner.log_broker.cancel(&id);
                            });
                        }
                    }
                }
                let tasks: Vec<Task> = match (&service, &task) {
                    (_, Some(t)) => store.view().get::<Task>(&t.id).into_iter().collect(),
                    (Some(s), None) => store.view().find::<Task>(|t| t.service_id == s.id),
                    (None, None) => Vec::new(),
                };
                for t in tasks {
                    let Some(container) = t.status.container_status.as_ref().map(|c| c.container_id.clone()).filter(|c| !c.is_empty()) else {
                        continue;
                    };
                    if !seen.insert(t.id.clone()) || engine.inspect(&container).is_err() {
                        continue;
                    }
                    let Ok((_tty, mut records)) = engine.logs(&container, (&opts).into()).await else { continue };
                    let tx = tx.clone();
                    let (node_id, service_id, task_id) = (t.node_id.clone(), t.service_id.clone(), t.id.clone());
                    tokio::spawn(async move {
                        while let Some(r) = records.recv().await {
                            let line = LogLine {
                                node_id: node_id.clone(),
                                service_id: service_id.clone(),
                                task_id: task_id.clone(),
                                stream: r.stream,
                                time: r.time,
                                line: r.line,
                            };
                            if tx.send(line).await.is_err() {
                                return;
                            }
                        }
                    });
                }
                if !opts.follow {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = tx.closed() => {
                        for id in &subscriptions {
                            swarm.inner.log_broker.cancel(id);
                        }
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

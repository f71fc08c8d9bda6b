//! `docker service logs` / task logs: the logs of a service's task containers on this node,
//! each line tagged with the node, service and task it came from.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use shoal_types::{Service, Task};

use crate::error::Result;
use crate::Swarm;

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub stdout: bool,
    pub stderr: bool,
    pub follow: bool,
    pub tail: Option<usize>,
    pub since: Option<DateTime<Utc>>,
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
    /// Streams the logs of a service's tasks (or of one task); with `follow`, tasks that start
    /// later are picked up too. The channel closes at the end.
    pub async fn logs(&self, service: Option<Service>, task: Option<Task>, opts: LogOptions) -> Result<mpsc::Receiver<LogLine>> {
        let store = self.store()?;
        let (tx, rx) = mpsc::channel(256);
        let engine = self.engine().clone();
        tokio::spawn(async move {
            let mut seen: HashSet<String> = HashSet::new();
            loop {
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
                    let options = shoal_engine::LogOptions {
                        stdout: opts.stdout,
                        stderr: opts.stderr,
                        follow: opts.follow,
                        tail: opts.tail,
                        since: opts.since,
                        until: None,
                    };
                    let Ok((_tty, mut records)) = engine.logs(&container, options).await else { continue };
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
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }
}

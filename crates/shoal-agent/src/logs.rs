//! Publishing this node's task logs to a manager that subscribed to them (`docker service logs`
//! run on a manager for tasks that live here): each task container's log is read from the engine
//! (tail, since, follow as asked), and lines go to the manager in batches until the
//! subscription is done or no longer wanted. Also the one-shot answer to a manager's inspect of
//! a task container.

use std::sync::Arc;
use std::time::Duration;

use shoal_engine::{Engine, LogOptions};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::control::ControlPlane;
use crate::controller::task_containers;
use crate::remote::wire::{LogBatch, LogEntry, LogSubscription, TaskInspectAnswer, TaskInspectRequest};

/// Lines per batch, and how long a partial batch may wait.
const BATCH_LINES: usize = 200;
const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// The engine's record of the (newest) container of the requested task, as JSON.
pub(crate) fn inspect(engine: &Engine, req: TaskInspectRequest) -> TaskInspectAnswer {
    let mut answer = TaskInspectAnswer { request_id: req.id, ..TaskInspectAnswer::default() };
    match crate::controller::task_container(engine, &req.task_id).map(|rec| serde_json::to_value(&rec)) {
        Some(Ok(v)) => answer.container = Some(v),
        Some(Err(e)) => answer.error = format!("encoding the container of task {}: {e}", req.task_id),
        None => answer.error = format!("task {} has no container on this node", req.task_id),
    }
    answer
}

/// Streams the subscribed tasks' logs to the control plane. Runs until every log ended (without
/// follow) or the manager no longer wants them.
pub(crate) async fn publish(engine: Engine, control: Arc<dyn ControlPlane>, sub: LogSubscription) {
    let (tx, mut rx) = mpsc::channel::<LogEntry>(1024);
    for task_id in &sub.task_ids {
        let Some(rec) = task_containers(&engine, task_id).into_iter().next() else { continue };
        let opts = LogOptions {
            stdout: sub.stdout,
            stderr: sub.stderr,
            follow: sub.follow,
            tail: sub.tail,
            since: sub.since,
            until: None,
        };
        let Ok((_tty, mut records)) = engine.logs(&rec.id, opts).await else { continue };
        let tx = tx.clone();
        let task_id = task_id.clone();
        tokio::spawn(async move {
            while let Some(r) = records.recv().await {
                let entry = LogEntry {
                    task_id: task_id.clone(),
                    stream: r.stream,
                    time: r.time,
                    line: String::from_utf8_lossy(&r.line).into_owned(),
                };
                if tx.send(entry).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx); // the channel ends when every task's log ended
    let mut ended = false;
    while !ended {
        let mut lines = Vec::new();
        match rx.recv().await {
            Some(l) => lines.push(l),
            None => ended = true,
        }
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while !ended && lines.len() < BATCH_LINES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(l)) => lines.push(l),
                Ok(None) => ended = true,
                Err(_) => break,
            }
        }
        let batch = LogBatch { subscription_id: sub.id.clone(), lines, done: ended };
        match control.publish_logs(batch).await {
            Ok(true) => {}
            Ok(false) => {
                debug!(subscription = %sub.id, "log subscription no longer wanted");
                return;
            }
            Err(e) => {
                warn!(subscription = %sub.id, error = %e, "publishing logs failed");
                return;
            }
        }
    }
}

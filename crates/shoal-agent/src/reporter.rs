//! Batches observed task statuses and sends them to the control plane.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_types::TaskStatus;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::control::ControlPlane;

/// How long the reporter gathers statuses before sending a batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The sending side handed to task controllers.
#[derive(Clone)]
pub(crate) struct Reporter {
    tx: mpsc::UnboundedSender<(String, TaskStatus)>,
}

impl Reporter {
    pub(crate) fn new() -> (Reporter, mpsc::UnboundedReceiver<(String, TaskStatus)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Reporter { tx }, rx)
    }

    pub(crate) fn send(&self, task_id: &str, status: TaskStatus) {
        let _ = self.tx.send((task_id.to_string(), status));
    }
}

/// Keeps the most advanced status per task: a later status replaces an earlier one unless it
/// would move the task backwards.
pub(crate) fn merge(pending: &mut BTreeMap<String, TaskStatus>, id: String, status: TaskStatus) {
    match pending.get(&id) {
        Some(old) if status.state < old.state => {}
        _ => {
            pending.insert(id, status);
        }
    }
}

/// Runs until every [`Reporter`] is dropped and everything pending was delivered (or the task
/// is aborted). Failed deliveries are retried with back-off, merged with newer statuses.
pub(crate) async fn run(control: Arc<dyn ControlPlane>, mut rx: mpsc::UnboundedReceiver<(String, TaskStatus)>) {
    let mut pending: BTreeMap<String, TaskStatus> = BTreeMap::new();
    let mut closed = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        if pending.is_empty() {
            if closed {
                return;
            }
            match rx.recv().await {
                Some((id, s)) => merge(&mut pending, id, s),
                None => return,
            }
        }
        // Gather for the batch window.
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while !closed {
            tokio::select! {
                m = rx.recv() => match m {
                    Some((id, s)) => merge(&mut pending, id, s),
                    None => closed = true,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let batch: Vec<(String, TaskStatus)> = pending.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let n = batch.len();
        let sent = std::time::Instant::now();
        match control.report(batch).await {
            Ok(()) => {
                debug!(statuses = n, elapsed_ms = sent.elapsed().as_secs_f64() * 1e3, "reported task statuses");
                pending.clear();
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                warn!(error = %e, statuses = n, "reporting task statuses failed; retrying");
                // Keep gathering while waiting, so the retry carries the newest statuses.
                let until = tokio::time::Instant::now() + backoff;
                loop {
                    tokio::select! {
                        m = rx.recv(), if !closed => match m {
                            Some((id, s)) => merge(&mut pending, id, s),
                            None => closed = true,
                        },
                        _ = tokio::time::sleep_until(until) => break,
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::TaskState;

    #[test]
    fn merge_never_goes_backwards() {
        let mut p = BTreeMap::new();
        let st = |s: TaskState| TaskStatus::new(s, chrono::Utc::now());
        merge(&mut p, "a".into(), st(TaskState::Running));
        merge(&mut p, "a".into(), st(TaskState::Starting));
        assert_eq!(p["a"].state, TaskState::Running);
        merge(&mut p, "a".into(), st(TaskState::Failed));
        assert_eq!(p["a"].state, TaskState::Failed);
        merge(&mut p, "b".into(), st(TaskState::Accepted));
        assert_eq!(p.len(), 2);
    }
}

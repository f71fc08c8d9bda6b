//! The leader-only control loops wired onto `shoal-store`.
//!
//! Every loop has the same shape: take `store.watch()` (a snapshot plus every commit after it),
//! run a full reconcile first (so a restarted leader picks up exactly where the state is), then
//! react to commits (batched: everything already queued is taken at once) and to its own timers.
//! Decisions are computed *inside* `store.update(|tx| …)` from what the transaction reads, so a
//! loop never writes from a stale view; a `SequenceConflict` is retried, any other error makes
//! the loop back off and reconcile everything again. A lagging watcher re-subscribes and
//! reconciles everything. Loops never call each other; they only meet in the store.

pub(crate) mod allocator;
pub(crate) mod orchestrator;
pub(crate) mod reaper;
pub(crate) mod scheduler;
pub(crate) mod updater;

use std::sync::Arc;
use std::time::Duration;

use shoal_store::{Commit, Store, StoreError, WriteTx};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::update::UpdaterConfig;

/// Tunables of the control loops (defaults follow swarmkit).
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The scheduler waits this long after the latest new PENDING task before scheduling (3 ms;
    /// swarmkit uses 50 ms, but tasks created together arrive in one commit anyway).
    pub scheduler_batch_delay: Duration,
    /// …but never longer than this after the first one (1 s).
    pub scheduler_max_batch_delay: Duration,
    /// The task reaper runs at most this often (250 ms).
    pub reaper_interval: Duration,
    /// Longest wait for an old task to stop before its replacement starts anyway (1 min).
    pub old_task_timeout: Duration,
    /// Updater timeouts (see [`UpdaterConfig`]).
    pub updater: UpdaterConfig,
    /// Back-off after a failed store write before reconciling again (500 ms).
    pub retry_backoff: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            scheduler_batch_delay: Duration::from_millis(3),
            scheduler_max_batch_delay: Duration::from_secs(1),
            reaper_interval: Duration::from_millis(250),
            old_task_timeout: crate::restart::OLD_TASK_TIMEOUT,
            updater: UpdaterConfig::default(),
            retry_backoff: Duration::from_millis(500),
        }
    }
}

/// Starts the control loops.
pub struct Manager;

impl Manager {
    /// Spawn every loop on the current tokio runtime. Call when this node becomes the leader;
    /// call [`ManagerHandle::stop`] when it stops being the leader.
    pub fn start(store: Store, config: ManagerConfig) -> ManagerHandle {
        let (stop_tx, stop_rx) = watch::channel(false);
        let cfg = Arc::new(config);
        let ctx = |name: &'static str| Ctx { name, store: store.clone(), cfg: cfg.clone(), stop: stop_rx.clone() };
        let tasks = vec![
            tokio::spawn(orchestrator::run(ctx("orchestrator"))),
            tokio::spawn(allocator::run(ctx("allocator"))),
            tokio::spawn(scheduler::run(ctx("scheduler"))),
            tokio::spawn(updater::run(ctx("updater"))),
            tokio::spawn(reaper::run(ctx("task reaper"))),
        ];
        ManagerHandle { stop: stop_tx, tasks }
    }
}

/// The running loops.
pub struct ManagerHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ManagerHandle {
    /// Stop every loop and wait for them to finish (their in-flight store write completes or
    /// fails first).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// True once every loop has ended (only after `stop`, or if one panicked).
    pub fn is_finished(&self) -> bool {
        self.tasks.iter().all(|t| t.is_finished())
    }
}

pub(crate) struct Ctx {
    pub name: &'static str,
    pub store: Store,
    pub cfg: Arc<ManagerConfig>,
    pub stop: watch::Receiver<bool>,
}

pub(crate) enum Wake {
    Commits(Vec<Arc<Commit>>),
    Lagged,
    Timer,
    Stop,
}

impl Ctx {
    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Wait for commits (all that are queued), a lag, the deadline or the stop signal.
    pub async fn next(&mut self, rx: &mut broadcast::Receiver<Arc<Commit>>, deadline: Option<Instant>) -> Wake {
        if self.stopped() {
            return Wake::Stop;
        }
        let first = tokio::select! {
            biased;
            r = self.stop.changed() => {
                let _ = r;
                return Wake::Stop;
            }
            r = rx.recv() => r,
            _ = sleep_opt(deadline) => return Wake::Timer,
        };
        let mut commits = match first {
            Ok(c) => vec![c],
            Err(broadcast::error::RecvError::Lagged(_)) => return Wake::Lagged,
            Err(broadcast::error::RecvError::Closed) => return Wake::Stop,
        };
        loop {
            match rx.try_recv() {
                Ok(c) => commits.push(c),
                Err(broadcast::error::TryRecvError::Lagged(_)) => return Wake::Lagged,
                Err(_) => break,
            }
        }
        Wake::Commits(commits)
    }

    /// Run a write transaction, retrying on `SequenceConflict`. `f` may run more than once.
    pub async fn write<R, F>(&self, mut f: F) -> Result<R, StoreError>
    where
        F: FnMut(&mut WriteTx) -> Result<R, StoreError> + Send,
        R: Send,
    {
        let mut attempt = 0;
        loop {
            match self.store.update(|tx| f(tx)).await {
                Err(StoreError::SequenceConflict) if attempt < 5 => attempt += 1,
                r => return r,
            }
        }
    }

    /// Log a failed write and wait before the loop reconciles again.
    pub async fn backoff(&mut self, e: &StoreError) {
        tracing::warn!(target: "shoal_manager", "{}: store write failed: {e}", self.name);
        let d = self.cfg.retry_backoff;
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.stop.changed() => {}
        }
    }
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// std → tokio instant.
pub(crate) fn tokio_instant(i: std::time::Instant) -> Instant {
    Instant::from_std(i)
}

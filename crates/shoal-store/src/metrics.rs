//! Process-wide counters for redb commit latency (fsync included).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static COMMITS: AtomicU64 = AtomicU64::new(0);
static COMMIT_NANOS: AtomicU64 = AtomicU64::new(0);
static COMMIT_MAX_NANOS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn record_commit(d: Duration) {
    let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    COMMITS.fetch_add(1, Ordering::Relaxed);
    COMMIT_NANOS.fetch_add(n, Ordering::Relaxed);
    COMMIT_MAX_NANOS.fetch_max(n, Ordering::Relaxed);
}

/// Durable-commit statistics of every store in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Number of fsync'ed redb commits.
    pub commits: u64,
    /// Mean commit latency.
    pub mean: Duration,
    /// Slowest commit.
    pub max: Duration,
}

pub(crate) fn commit_stats() -> CommitStats {
    let commits = COMMITS.load(Ordering::Relaxed);
    let total = COMMIT_NANOS.load(Ordering::Relaxed);
    CommitStats {
        commits,
        mean: Duration::from_nanos(total.checked_div(commits).unwrap_or(0)),
        max: Duration::from_nanos(COMMIT_MAX_NANOS.load(Ordering::Relaxed)),
    }
}

//! The task reaper loop: runs [`crate::reaper::reap`] at most every `reaper_interval` while
//! something it cares about changed (a task stopped or got desired SHUTDOWN/REMOVE, a service or
//! node was deleted, the cluster's retention limit changed).

use std::collections::HashSet;

use shoal_store::{Action, StoreError, WriteTx};
use shoal_types::{Cluster, Node, Service, Task, TaskState};
use tokio::time::Instant;

use super::{Ctx, Wake};
use crate::reaper::{reap, DEFAULT_RETENTION};

pub(crate) async fn run(mut ctx: Ctx) {
    let (_, mut rx) = ctx.store.watch();
    let mut dirty = true;
    let mut last_run: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let next_allowed = last_run.map(|l| l + ctx.cfg.reaper_interval);
        if dirty && next_allowed.is_none_or(|t| t <= now) {
            dirty = false;
            last_run = Some(now);
            if let Err(e) = ctx.write(reap_tx).await {
                ctx.backoff(&e).await;
                dirty = true;
                continue;
            }
        }
        let deadline = if dirty { next_allowed } else { None };
        match ctx.next(&mut rx, deadline).await {
            Wake::Stop => return,
            Wake::Timer => {}
            Wake::Lagged => {
                rx = ctx.store.watch().1;
                dirty = true;
            }
            Wake::Commits(commits) => {
                for c in commits {
                    for ch in &c.changes {
                        let relevant = if let Some(t) = ch.get::<Task>() {
                            ch.action != Action::Delete
                                && (t.desired_state > TaskState::Running || t.status.state > TaskState::Running)
                        } else {
                            ch.get::<Cluster>().is_some()
                                || (ch.action == Action::Delete
                                    && (ch.get::<Service>().is_some() || ch.get::<Node>().is_some()))
                        };
                        dirty |= relevant;
                    }
                }
            }
        }
    }
}

fn reap_tx(tx: &mut WriteTx) -> Result<(), StoreError> {
    let retention = tx
        .list::<Cluster>()
        .first()
        .and_then(|c| c.spec.orchestration.task_history_retention_limit)
        .unwrap_or(DEFAULT_RETENTION);
    let services: HashSet<String> = tx.list::<Service>().into_iter().map(|s| s.id).collect();
    let nodes: HashSet<String> = tx.list::<Node>().into_iter().map(|n| n.id).collect();
    let tasks = tx.list::<Task>();
    for id in reap(&tasks, &services, &nodes, retention) {
        tx.delete::<Task>(&id)?;
    }
    Ok(())
}

//! The allocator loop: service endpoints (published ports), then NEW → PENDING.
//!
//! A task moves to PENDING ("pending task scheduling") once its service's endpoint is allocated.
//! An allocation failure (a port taken meanwhile, the dynamic range exhausted) leaves the tasks
//! NEW with the reason in `Status.Err`, instead of only in the logs as swarmkit does.

use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use shoal_store::{Action, StoreError, WriteTx};
use shoal_types::{Service, Task, TaskState, TaskStatus};

use super::{Ctx, Wake};
use crate::allocator::{allocate_endpoint, needs_allocation};

#[derive(Default)]
struct Work {
    full: bool,
    services: BTreeSet<String>,
    tasks: BTreeSet<String>,
}

pub(crate) async fn run(mut ctx: Ctx) {
    let (_, mut rx) = ctx.store.watch();
    let mut work = Work { full: true, ..Default::default() };
    loop {
        if work.full || !work.services.is_empty() || !work.tasks.is_empty() {
            let w = std::mem::take(&mut work);
            if let Err(e) = ctx.write(|tx| allocate(tx, &w)).await {
                ctx.backoff(&e).await;
                work.full = true;
                continue;
            }
        }
        match ctx.next(&mut rx, None).await {
            Wake::Stop => return,
            Wake::Timer => {}
            Wake::Lagged => {
                rx = ctx.store.watch().1;
                work.full = true;
            }
            Wake::Commits(commits) => {
                for c in commits {
                    for ch in c.changes.iter().filter(|ch| ch.action != Action::Delete) {
                        if let Some(s) = ch.get::<Service>() {
                            // Allocate it, or let its waiting NEW tasks go on.
                            work.services.insert(s.id.clone());
                        } else if let Some(t) = ch.get::<Task>() {
                            if t.status.state == TaskState::New {
                                work.tasks.insert(t.id.clone());
                            }
                        }
                    }
                }
            }
        }
    }
}

fn allocate(tx: &mut WriteTx, w: &Work) -> Result<(), StoreError> {
    let wall = Utc::now();
    let mut services: HashMap<String, Service> = tx.list::<Service>().into_iter().map(|s| (s.id.clone(), s)).collect();
    let mut failed: HashMap<String, String> = HashMap::new();
    let mut ids: Vec<String> = services
        .values()
        .filter(|s| (w.full || w.services.contains(&s.id)) && needs_allocation(s))
        .map(|s| s.id.clone())
        .collect();
    ids.sort();
    for id in ids {
        let others: Vec<Service> = services.values().filter(|s| s.id != id).cloned().collect();
        let Some(mut svc) = services.get(&id).cloned() else { continue };
        match allocate_endpoint(&svc, &others) {
            Ok(ep) => {
                svc.endpoint = ep;
                tx.update(svc.clone())?;
                services.insert(id, svc);
            }
            Err(e) => {
                tracing::warn!(target: "shoal_manager", "allocator: service {id}: {e}");
                failed.insert(id, e.to_string());
            }
        }
    }
    // Tasks: the ones named, plus every NEW task of a service handled here (or all on a full pass).
    let new_tasks: Vec<Task> = tx.find::<Task>(|t| {
        t.status.state == TaskState::New
            && (w.full || w.tasks.contains(&t.id) || w.services.contains(&t.service_id))
    });
    for mut t in new_tasks {
        let Some(svc) = services.get(&t.service_id) else { continue };
        if let Some(err) = failed.get(&t.service_id) {
            let err = format!("port allocation failed: {err}");
            if t.status.err != err {
                t.status.err = err;
                tx.update(t)?;
            }
            continue;
        }
        if needs_allocation(svc) {
            continue;
        }
        t.status = TaskStatus::new(TaskState::Pending, wall);
        tx.update(t)?;
    }
    Ok(())
}

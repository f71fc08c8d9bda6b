//! The updater loop: drives [`crate::update::step`] for every service whose tasks are dirty.
//!
//! Steps a service on its own changes, on changes of its tasks or of nodes while an update runs,
//! and on the run's timers. Every service is stepped once at start, so an update interrupted by
//! a leader change continues (its failure counters start from zero).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use chrono::Utc;
use shoal_store::{Action, StoreError, WriteTx};
use shoal_types::{Node, Service, Task, TaskState, UpdateState, UpdateStatus};

use super::{tokio_instant, Ctx, Wake};
use crate::update::{apply_rollback, step, UpdateAction, UpdateRun, UpdaterConfig};

#[derive(Default)]
struct State {
    runs: HashMap<String, UpdateRun>,
    wakes: HashMap<String, Instant>,
}

pub(crate) async fn run(mut ctx: Ctx) {
    let (view, mut rx) = ctx.store.watch();
    let mut st = State::default();
    let mut todo: BTreeSet<String> = view.list::<Service>().into_iter().map(|s| s.id).collect();
    drop(view);
    loop {
        let now = Instant::now();
        let due: Vec<String> = st.wakes.iter().filter(|(_, w)| **w <= now).map(|(k, _)| k.clone()).collect();
        for id in due {
            st.wakes.remove(&id);
            todo.insert(id);
        }
        if !todo.is_empty() {
            let ids = std::mem::take(&mut todo);
            let cfg = ctx.cfg.updater.clone();
            let state = &mut st;
            if let Err(e) = ctx.write(|tx| step_services(tx, state, &ids, &cfg)).await {
                ctx.backoff(&e).await;
                // Start over from the stored state.
                st = State::default();
                todo = ctx.store.view().list::<Service>().into_iter().map(|s| s.id).collect();
                continue;
            }
        }
        let deadline = st.wakes.values().min().copied().map(tokio_instant);
        match ctx.next(&mut rx, deadline).await {
            Wake::Stop => return,
            Wake::Timer => {}
            Wake::Lagged => {
                let (view, new_rx) = ctx.store.watch();
                rx = new_rx;
                todo.extend(view.list::<Service>().into_iter().map(|s| s.id));
            }
            Wake::Commits(commits) => {
                for c in commits {
                    for ch in &c.changes {
                        if let Some(s) = ch.get::<Service>() {
                            if ch.action == Action::Delete {
                                st.runs.remove(&s.id);
                                st.wakes.remove(&s.id);
                            } else {
                                todo.insert(s.id.clone());
                            }
                        } else if let Some(t) = ch.get::<Task>() {
                            if st.runs.contains_key(&t.service_id) {
                                todo.insert(t.service_id.clone());
                            }
                        } else if ch.get::<Node>().is_some() {
                            todo.extend(st.runs.keys().cloned());
                        }
                    }
                }
            }
        }
    }
}

fn step_services(tx: &mut WriteTx, st: &mut State, ids: &BTreeSet<String>, cfg: &UpdaterConfig) -> Result<(), StoreError> {
    let now = Instant::now();
    let wall = Utc::now();
    let nodes: HashMap<String, Node> = tx.list::<Node>().into_iter().map(|n| (n.id.clone(), n)).collect();
    let mut by_service: HashMap<String, Vec<Task>> = HashMap::new();
    for t in tx.find::<Task>(|t| ids.contains(&t.service_id)) {
        by_service.entry(t.service_id.clone()).or_default().push(t);
    }
    for id in ids {
        let Some(mut svc) = tx.get::<Service>(id) else {
            st.runs.remove(id);
            st.wakes.remove(id);
            continue;
        };
        let tasks = by_service.remove(id).unwrap_or_default();
        let mut run = st.runs.remove(id);
        let res = step(&mut run, &svc, &tasks, &nodes, now, wall, cfg);
        let mut svc_changed = false;
        for a in res.actions {
            match a {
                UpdateAction::Create(t) => tx.create(t)?,
                UpdateAction::SetDesired { task_id, state } => {
                    if let Some(mut t) = tx.get::<Task>(&task_id) {
                        let raise_ready = state == TaskState::Running && t.desired_state == TaskState::Ready;
                        if raise_ready || (state > TaskState::Running && t.desired_state < state) {
                            t.desired_state = state;
                            tx.update(t)?;
                        }
                    }
                }
                UpdateAction::Status(s) => {
                    svc.update_status = Some(s);
                    svc_changed = true;
                }
                UpdateAction::Rollback { message } => {
                    if !apply_rollback(&mut svc, &message, wall) {
                        tracing::warn!(target: "shoal_manager", "updater: service {id} has no previous spec to roll back to");
                        let started_at = svc.update_status.as_ref().and_then(|u| u.started_at);
                        svc.update_status = Some(UpdateStatus {
                            state: Some(UpdateState::Paused),
                            started_at,
                            completed_at: None,
                            message: message.replace("update rolled back", "update paused"),
                        });
                    }
                    svc_changed = true;
                }
            }
        }
        if svc_changed {
            tx.update(svc)?;
        }
        match run {
            Some(r) => {
                st.runs.insert(id.clone(), r);
                match res.wake_at {
                    Some(w) => st.wakes.insert(id.clone(), w),
                    None => st.wakes.remove(id),
                };
            }
            None => {
                st.wakes.remove(id);
            }
        }
    }
    Ok(())
}

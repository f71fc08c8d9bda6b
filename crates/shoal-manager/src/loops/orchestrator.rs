//! The orchestrator loop: replicated, global, replicated-job and global-job services plus the
//! restart supervisor and its delayed starts.
//!
//! Reacts to: service create/update (reconcile that service), service delete (its tasks get
//! desired REMOVE), task changes (restart failed tasks; jobs reconcile on every task change),
//! node changes (restart tasks on unusable nodes; reconcile global services), and the restart
//! supervisor's timers. Scale is reconciled on service events (and at start), not on task
//! events, like swarmkit, so a slot stopped for good by the restart policy stays stopped.

use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use shoal_store::{Action, StoreError, WriteTx};
use shoal_types::{Node, Service, ServiceMode, Task, TaskState};

use super::{tokio_instant, Ctx, Wake};
use crate::orchestrator::{self, global, has_stopped, jobs, replicated, SlotKey};
use crate::restart::{Due, RestartDecision, RestartSupervisor};

#[derive(Default)]
struct Work {
    full: bool,
    services: BTreeSet<String>,
    deleted: BTreeSet<String>,
    tasks: BTreeSet<String>,
    nodes: BTreeSet<String>,
    timers: bool,
}

impl Work {
    fn is_empty(&self) -> bool {
        !self.full
            && self.services.is_empty()
            && self.deleted.is_empty()
            && self.tasks.is_empty()
            && self.nodes.is_empty()
            && !self.timers
    }
}

pub(crate) async fn run(mut ctx: Ctx) {
    let mut sup = RestartSupervisor::new(ctx.cfg.old_task_timeout);
    let (_, mut rx) = ctx.store.watch();
    let mut work = Work { full: true, ..Default::default() };
    loop {
        if !work.is_empty() {
            let w = std::mem::take(&mut work);
            if let Err(e) = ctx.write(|tx| reconcile(tx, &mut sup, &w)).await {
                ctx.backoff(&e).await;
                work.full = true;
                continue;
            }
        }
        let deadline = sup.next_deadline().map(tokio_instant);
        match ctx.next(&mut rx, deadline).await {
            Wake::Stop => return,
            Wake::Timer => work.timers = true,
            Wake::Lagged => {
                rx = ctx.store.watch().1;
                work.full = true;
            }
            Wake::Commits(commits) => {
                for c in commits {
                    for ch in &c.changes {
                        if let Some(s) = ch.get::<Service>() {
                            if ch.action == Action::Delete {
                                work.deleted.insert(s.id.clone());
                            } else {
                                work.services.insert(s.id.clone());
                            }
                        } else if let Some(t) = ch.get::<Task>() {
                            if ch.action == Action::Delete {
                                sup.forget(&t.id);
                                continue;
                            }
                            if t.desired_state <= TaskState::Running && t.status.state > TaskState::Running {
                                work.tasks.insert(t.id.clone());
                            }
                            if t.job_iteration.is_some() && t.status.state > TaskState::Running {
                                work.services.insert(t.service_id.clone());
                            }
                            if sup.delayed().next().is_some() {
                                work.timers = true;
                            }
                        } else if let Some(n) = ch.get::<Node>() {
                            work.nodes.insert(n.id.clone());
                            work.timers = true;
                        }
                    }
                }
            }
        }
    }
}

/// One write transaction doing everything `w` asks for.
fn reconcile(tx: &mut WriteTx, sup: &mut RestartSupervisor, w: &Work) -> Result<(), StoreError> {
    let now = std::time::Instant::now();
    let wall = Utc::now();
    let nodes: HashMap<String, Node> = tx.list::<Node>().into_iter().map(|n| (n.id.clone(), n)).collect();
    let mut services: HashMap<String, Service> = tx.list::<Service>().into_iter().map(|s| (s.id.clone(), s)).collect();
    let mut tasks: HashMap<String, Task> = tx.list::<Task>().into_iter().map(|t| (t.id.clone(), t)).collect();

    // 1. Tasks of deleted services get desired REMOVE (all orphans on a full pass).
    let mut orphan_ids: Vec<String> = tasks
        .values()
        .filter(|t| {
            t.desired_state < TaskState::Remove
                && !services.contains_key(&t.service_id)
                && (w.full || w.deleted.contains(&t.service_id))
        })
        .map(|t| t.id.clone())
        .collect();
    orphan_ids.sort();
    for id in orphan_ids {
        set_desired(tx, &mut tasks, &id, TaskState::Remove)?;
    }
    for s in &w.deleted {
        sup.forget_service(s);
    }

    // 2. Restarts: failed tasks, tasks on unusable nodes.
    let mut candidates: BTreeSet<String> = w.tasks.clone();
    if w.full || !w.nodes.is_empty() {
        for t in tasks.values() {
            if w.full || w.nodes.contains(&t.node_id) {
                candidates.insert(t.id.clone());
            }
        }
    }
    for id in candidates {
        let Some(t) = tasks.get(&id).cloned() else { continue };
        let Some(svc) = services.get(&t.service_id) else { continue };
        let node = nodes.get(&t.node_id);
        if !replicated::needs_restart(&t, node) {
            continue;
        }
        // Global tasks on unusable nodes are shut down by the global reconcile, not restarted.
        if svc.spec.mode.is_global() && (t.status.state <= TaskState::Running || orchestrator::invalid_node(node)) {
            continue;
        }
        do_restart(tx, sup, svc, &t, node, &mut tasks, wall, now)?;
    }

    // 3. Due delayed starts.
    if sup.delayed().next().is_some() {
        let due = {
            let tasks_ref = &tasks;
            let nodes_ref = &nodes;
            sup.due(now, |id| tasks_ref.get(id).map(|t| (t, nodes_ref.get(&t.node_id))))
        };
        for d in due {
            match d {
                Due::Promote(id) => {
                    if tasks.get(&id).is_some_and(|t| t.desired_state == TaskState::Ready) {
                        set_desired(tx, &mut tasks, &id, TaskState::Running)?;
                    }
                }
                Due::Restart(id) => {
                    let Some(t) = tasks.get(&id).cloned() else { continue };
                    let Some(svc) = services.get(&t.service_id) else { continue };
                    if t.desired_state <= TaskState::Running {
                        do_restart(tx, sup, svc, &t, nodes.get(&t.node_id), &mut tasks, wall, now)?;
                    }
                }
            }
        }
    }

    // 4. Services to reconcile.
    let mut to_reconcile: BTreeSet<String> = w.services.clone();
    if w.full {
        to_reconcile.extend(services.keys().cloned());
    }
    if !w.nodes.is_empty() {
        to_reconcile.extend(services.values().filter(|s| s.spec.mode.is_global()).map(|s| s.id.clone()));
    }
    let node_list: Vec<Node> = {
        let mut v: Vec<Node> = nodes.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    for sid in to_reconcile {
        let Some(mut svc) = services.get(&sid).cloned() else { continue };
        let svc_tasks: Vec<Task> = tasks.values().filter(|t| t.service_id == sid).cloned().collect();
        match svc.spec.mode {
            ServiceMode::Replicated { .. } => {
                let plan = replicated::reconcile(&svc, &svc_tasks);
                for slot in plan.create_slots {
                    create(tx, &mut tasks, orchestrator::new_task(&svc, slot, "", wall))?;
                }
                for id in plan.remove {
                    set_desired(tx, &mut tasks, &id, TaskState::Remove)?;
                }
            }
            ServiceMode::Global => {
                let plan = global::reconcile(&svc, &svc_tasks, &node_list);
                for n in plan.create_on {
                    create(tx, &mut tasks, orchestrator::new_task(&svc, 0, &n, wall))?;
                }
                for id in plan.shutdown {
                    set_desired(tx, &mut tasks, &id, TaskState::Shutdown)?;
                }
            }
            ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob => {
                if jobs::needs_new_iteration(&svc, &svc_tasks) {
                    jobs::bump_iteration(&mut svc, wall);
                    tx.update(svc.clone())?;
                    services.insert(sid.clone(), svc.clone());
                }
                let plan = if svc.spec.mode.is_global() {
                    jobs::reconcile_global(&svc, &svc_tasks, &node_list)
                } else {
                    jobs::reconcile_replicated(&svc, &svc_tasks)
                };
                for slot in plan.create_slots {
                    create(tx, &mut tasks, orchestrator::new_task(&svc, slot, "", wall))?;
                }
                for n in plan.create_on {
                    create(tx, &mut tasks, orchestrator::new_task(&svc, 0, &n, wall))?;
                }
                for id in plan.shutdown {
                    set_desired(tx, &mut tasks, &id, TaskState::Shutdown)?;
                }
            }
        }
    }

    // 5. On a full pass, adopt replacements left waiting (desired READY) by a previous leader.
    if w.full {
        let ready: Vec<Task> = tasks.values().filter(|t| t.desired_state == TaskState::Ready).cloned().collect();
        for t in ready {
            let old = tasks
                .values()
                .find(|o| {
                    o.id != t.id
                        && o.service_id == t.service_id
                        && SlotKey::of(o) == SlotKey::of(&t)
                        && !has_stopped(o, nodes.get(&o.node_id))
                })
                .map(|o| o.id.clone());
            sup.adopt(&t, old, wall, now);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn do_restart(
    tx: &mut WriteTx,
    sup: &mut RestartSupervisor,
    svc: &Service,
    t: &Task,
    node: Option<&Node>,
    tasks: &mut HashMap<String, Task>,
    wall: chrono::DateTime<Utc>,
    now: std::time::Instant,
) -> Result<(), StoreError> {
    match sup.restart(svc, t, node, wall, now) {
        RestartDecision::Deferred => Ok(()),
        RestartDecision::Restart { old, replacement } => {
            tx.update(old.clone())?;
            tasks.insert(old.id.clone(), old);
            if let Some(new) = replacement {
                create(tx, tasks, new)?;
            }
            Ok(())
        }
    }
}

fn create(tx: &mut WriteTx, tasks: &mut HashMap<String, Task>, t: Task) -> Result<(), StoreError> {
    tx.create(t.clone())?;
    tasks.insert(t.id.clone(), t);
    Ok(())
}

fn set_desired(tx: &mut WriteTx, tasks: &mut HashMap<String, Task>, id: &str, state: TaskState) -> Result<(), StoreError> {
    let Some(t) = tasks.get_mut(id) else { return Ok(()) };
    if t.desired_state == state || (t.desired_state > state && state != TaskState::Running) {
        return Ok(());
    }
    t.desired_state = state;
    tx.update(t.clone())
}

//! The scheduler loop: PENDING → ASSIGNED.
//!
//! Keeps a [`NodeSet`] up to date from the watch stream, collects PENDING tasks and schedules
//! them in batches (after `scheduler_batch_delay` without a new one, at most
//! `scheduler_max_batch_delay` after the first). A task no node can take stays PENDING with
//! `Status.Err = "no suitable node (…)"` and is retried when nodes change or a task leaves a node.
//! A PENDING task whose desired state is past RUNNING is moved to SHUTDOWN (swarmkit #2998).

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;
use shoal_store::{Action, ReadTx, StoreError, WriteTx};
use shoal_types::{Node, Task, TaskState, TaskStatus};

use super::{tokio_instant, Ctx, Wake};
use crate::scheduler::{schedule, NodeSet};

struct State {
    nodes: NodeSet,
    /// Waiting for the next batch.
    pending: BTreeMap<String, Task>,
    /// Tried, no node fits; retried when something changes.
    unschedulable: BTreeMap<String, Task>,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

impl State {
    fn from_view(v: &ReadTx) -> State {
        let nodes: Vec<Node> = v.list::<Node>();
        let tasks: Vec<Task> = v.list::<Task>();
        let mut s = State {
            nodes: NodeSet::from_state(&nodes, &tasks),
            pending: BTreeMap::new(),
            unschedulable: BTreeMap::new(),
            first_at: None,
            last_at: None,
        };
        let now = Instant::now();
        for t in tasks.into_iter().filter(|t| t.status.state == TaskState::Pending) {
            s.pending.insert(t.id.clone(), t);
            s.first_at.get_or_insert(now);
            s.last_at = Some(now);
        }
        s
    }

    fn retry_unschedulable(&mut self, now: Instant) {
        if self.unschedulable.is_empty() {
            return;
        }
        let u = std::mem::take(&mut self.unschedulable);
        self.pending.extend(u);
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
    }

    fn observe_task(&mut self, t: &Task, deleted: bool, now: Instant) {
        if deleted {
            self.nodes.remove_task(&t.id);
            self.pending.remove(&t.id);
            self.unschedulable.remove(&t.id);
            self.retry_unschedulable(now);
            return;
        }
        let held_before = self.nodes.holds(&t.id);
        self.nodes.upsert_task(t, now);
        if held_before && t.status.state > TaskState::Running {
            // Resources or a per-node slot were freed.
            self.retry_unschedulable(now);
        }
        if t.status.state == TaskState::Pending {
            if let Some(u) = self.unschedulable.get_mut(&t.id) {
                *u = t.clone();
                if t.desired_state > TaskState::Running {
                    let t = self.unschedulable.remove(&t.id).expect("present");
                    self.pending.insert(t.id.clone(), t);
                    self.last_at = Some(now);
                    self.first_at.get_or_insert(now);
                }
            } else {
                self.pending.insert(t.id.clone(), t.clone());
                self.first_at.get_or_insert(now);
                self.last_at = Some(now);
            }
        } else {
            self.pending.remove(&t.id);
            self.unschedulable.remove(&t.id);
        }
    }
}

pub(crate) async fn run(mut ctx: Ctx) {
    let (view, mut rx) = ctx.store.watch();
    let mut st = State::from_view(&view);
    drop(view);
    loop {
        let now = Instant::now();
        let due = match (st.first_at, st.last_at) {
            (Some(f), Some(l)) if !st.pending.is_empty() => {
                Some((l + ctx.cfg.scheduler_batch_delay).min(f + ctx.cfg.scheduler_max_batch_delay))
            }
            _ => None,
        };
        if due.is_some_and(|d| d <= now) {
            let batch = std::mem::take(&mut st.pending);
            st.first_at = None;
            st.last_at = None;
            let nodes = &mut st.nodes;
            let res = ctx.write(|tx| apply(tx, nodes, &batch)).await;
            match res {
                Ok(unschedulable) => st.unschedulable.extend(unschedulable),
                Err(e) => {
                    ctx.backoff(&e).await;
                    let (view, new_rx) = ctx.store.watch();
                    st = State::from_view(&view);
                    rx = new_rx;
                }
            }
            continue;
        }
        match ctx.next(&mut rx, due.map(tokio_instant)).await {
            Wake::Stop => return,
            Wake::Timer => {}
            Wake::Lagged => {
                let (view, new_rx) = ctx.store.watch();
                st = State::from_view(&view);
                rx = new_rx;
            }
            Wake::Commits(commits) => {
                let now = Instant::now();
                for c in commits {
                    for ch in &c.changes {
                        if let Some(t) = ch.get::<Task>() {
                            st.observe_task(t, ch.action == Action::Delete, now);
                        } else if let Some(n) = ch.get::<Node>() {
                            if ch.action == Action::Delete {
                                st.nodes.remove_node(&n.id);
                            } else {
                                st.nodes.upsert_node(n.clone());
                            }
                            st.retry_unschedulable(now);
                        }
                    }
                }
            }
        }
    }
}

/// Schedule `batch` against the tasks as stored now. Returns the tasks left unschedulable.
fn apply(tx: &mut WriteTx, nodes: &mut NodeSet, batch: &BTreeMap<String, Task>) -> Result<BTreeMap<String, Task>, StoreError> {
    let wall = Utc::now();
    let mut fresh: Vec<Task> = Vec::with_capacity(batch.len());
    for id in batch.keys() {
        let Some(mut t) = tx.get::<Task>(id) else { continue };
        if t.status.state != TaskState::Pending {
            continue;
        }
        if t.desired_state > TaskState::Running {
            t.status = TaskStatus::new(TaskState::Shutdown, wall);
            t.status.message = "shutdown before the task was scheduled".into();
            tx.update(t)?;
            continue;
        }
        fresh.push(t);
    }
    let decisions = schedule(nodes, &fresh);
    let mut by_id: BTreeMap<String, Task> = fresh.into_iter().map(|t| (t.id.clone(), t)).collect();
    let mut left = BTreeMap::new();
    for d in decisions {
        let Some(mut t) = by_id.remove(&d.task_id) else { continue };
        match d.result {
            Ok(node) => {
                t.node_id = node;
                t.status = TaskStatus::new(TaskState::Assigned, wall);
                tx.update(t)?;
            }
            Err(e) => {
                if t.status.err != e {
                    t.status.err = e;
                    t.status.timestamp = wall;
                    tx.update(t.clone())?;
                }
                left.insert(t.id.clone(), t);
            }
        }
    }
    Ok(left)
}

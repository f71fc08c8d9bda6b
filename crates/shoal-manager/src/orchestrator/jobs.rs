//! Jobs (swarmkit `manager/orchestrator/jobs/*`).
//!
//! `ReplicatedJob{MaxConcurrent, TotalCompletions}` runs tasks in slots 1..=TotalCompletions,
//! at most MaxConcurrent at a time, until every slot has a COMPLETE task. `GlobalJob` runs one
//! task per eligible node. Every task carries the service's `JobStatus.JobIteration`; a new
//! iteration (the API bumps it on every update with [`bump_iteration`]; the orchestrator also
//! bumps it when the spec changed under tasks of the current iteration) re-runs the job and
//! shuts down what is left of older iterations. For jobs the restart condition `any` behaves
//! like `on-failure`: a COMPLETE task is never restarted.
//!
//! shoal gives job tasks desired state RUNNING (swarmkit uses COMPLETE); the agent stops at
//! COMPLETE when the container exits 0.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use shoal_types::{JobStatus, Node, NodeAvailability, Service, ServiceMode, Task, TaskState, Version};

use super::global::node_usable;
use super::is_runnable;
use crate::constraint;

/// What a job needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobPlan {
    /// Replicated jobs: new tasks, one per slot.
    pub create_slots: Vec<u64>,
    /// Global jobs: nodes that need a task.
    pub create_on: Vec<String>,
    /// Tasks whose desired state becomes SHUTDOWN (older iterations, ineligible nodes).
    pub shutdown: Vec<String>,
}

/// The current iteration, if set.
pub fn iteration(service: &Service) -> Option<u64> {
    service.job_status.as_ref().map(|j| j.job_iteration.index)
}

/// Start a new iteration of a job (call on every service update of a job, and on create).
/// The new index is above the old one and at least the service's version.
pub fn bump_iteration(service: &mut Service, now: DateTime<Utc>) {
    let next = match iteration(service) {
        Some(cur) => (cur + 1).max(service.meta.version.index),
        None => service.meta.version.index,
    };
    service.job_status = Some(JobStatus { job_iteration: Version::new(next), last_execution: now });
}

/// Does the orchestrator have to start a new iteration? Yes when the job has none yet, or when
/// a task of the current iteration was made from another spec (the service was updated).
pub fn needs_new_iteration(service: &Service, tasks: &[Task]) -> bool {
    let Some(cur) = iteration(service) else { return true };
    tasks.iter().any(|t| {
        t.service_id == service.id
            && t.job_iteration.map(|v| v.index) == Some(cur)
            && t.spec != service.spec.task_template
    })
}

fn of_iteration<'a>(service: &'a Service, tasks: &'a [Task]) -> (Vec<&'a Task>, Vec<String>) {
    let cur = iteration(service);
    let mut current = Vec::new();
    let mut stale = Vec::new();
    for t in tasks.iter().filter(|t| t.service_id == service.id) {
        if t.job_iteration.map(|v| v.index) == cur {
            current.push(t);
        } else if is_runnable(t) {
            stale.push(t.id.clone());
        }
    }
    (current, stale)
}

/// Replicated job: fill free slots up to MaxConcurrent running tasks.
pub fn reconcile_replicated(service: &Service, tasks: &[Task]) -> JobPlan {
    let ServiceMode::ReplicatedJob { max_concurrent, total_completions } = service.spec.mode else {
        return JobPlan::default();
    };
    let max_concurrent = if max_concurrent == 0 { total_completions } else { max_concurrent };
    let (current, stale) = of_iteration(service, tasks);
    let mut plan = JobPlan { shutdown: stale, ..Default::default() };
    #[derive(PartialEq)]
    enum SlotState {
        Complete,
        InFlight,
        Dead,
    }
    let mut slots: BTreeMap<u64, SlotState> = BTreeMap::new();
    for t in &current {
        let st = if t.status.state == TaskState::Complete {
            SlotState::Complete
        } else if is_runnable(t) {
            SlotState::InFlight
        } else {
            SlotState::Dead
        };
        let e = slots.entry(t.slot).or_insert(SlotState::Dead);
        if st == SlotState::Complete || (st == SlotState::InFlight && *e == SlotState::Dead) {
            *e = st;
        }
    }
    let in_flight = slots.values().filter(|s| **s == SlotState::InFlight).count() as u64;
    let mut room = max_concurrent.saturating_sub(in_flight);
    let mut slot = 1u64;
    while room > 0 && slot <= total_completions {
        if !slots.contains_key(&slot) {
            plan.create_slots.push(slot);
            room -= 1;
        }
        slot += 1;
    }
    plan
}

/// Global job: one task of the current iteration per eligible node.
pub fn reconcile_global(service: &Service, tasks: &[Task], nodes: &[Node]) -> JobPlan {
    let (current, stale) = of_iteration(service, tasks);
    let mut plan = JobPlan { shutdown: stale, ..Default::default() };
    let exprs = service.spec.task_template.placement.as_ref().map(|p| p.constraints.clone()).unwrap_or_default();
    let parsed = constraint::parse_all(&exprs).ok();
    let mut by_node: HashMap<&str, Vec<&Task>> = HashMap::new();
    for t in &current {
        by_node.entry(t.node_id.as_str()).or_default().push(t);
    }
    let mut nodes: Vec<&Node> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    for n in &nodes {
        let eligible = node_usable(n) && parsed.as_ref().is_some_and(|c| constraint::node_matches(c, n));
        let on_node = by_node.get(n.id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        if !eligible {
            plan.shutdown.extend(on_node.iter().filter(|t| is_runnable(t)).map(|t| t.id.clone()));
            continue;
        }
        if n.spec.availability != NodeAvailability::Pause && on_node.is_empty() {
            plan.create_on.push(n.id.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn job(max: u64, total: u64) -> Service {
        let mut s = service("j", ServiceMode::ReplicatedJob { max_concurrent: max, total_completions: total });
        bump_iteration(&mut s, Utc::now());
        s
    }

    fn t(s: &Service, id: &str, slot: u64, state: TaskState) -> Task {
        let mut t = running(s, id, slot, "n1");
        t.status.state = state;
        t
    }

    #[test]
    fn replicated_job_respects_max_concurrent_and_total() {
        let s = job(2, 5);
        let p = reconcile_replicated(&s, &[]);
        assert_eq!(p.create_slots, vec![1, 2]);
        // Slot 1 complete, slot 2 running: one more may start.
        let tasks = vec![t(&s, "a", 1, TaskState::Complete), t(&s, "b", 2, TaskState::Running)];
        assert_eq!(reconcile_replicated(&s, &tasks).create_slots, vec![3]);
        // Everything complete: nothing to do.
        let tasks: Vec<Task> = (1..=5).map(|i| t(&s, &format!("t{i}"), i, TaskState::Complete)).collect();
        assert_eq!(reconcile_replicated(&s, &tasks), JobPlan::default());
    }

    #[test]
    fn new_iteration_reruns_and_stops_old_tasks() {
        let mut s = job(1, 1);
        let old = t(&s, "a", 1, TaskState::Running);
        assert!(!needs_new_iteration(&s, std::slice::from_ref(&old)));
        s.spec.task_template.container_spec.args = vec!["x".into()];
        assert!(needs_new_iteration(&s, std::slice::from_ref(&old)));
        s.meta.version = Version::new(20);
        bump_iteration(&mut s, Utc::now());
        assert_eq!(iteration(&s), Some(20));
        let p = reconcile_replicated(&s, &[old]);
        assert_eq!(p.shutdown, vec!["a".to_string()]);
        assert_eq!(p.create_slots, vec![1]);
    }

    #[test]
    fn global_job_runs_once_per_node() {
        let mut s = service("gj", ServiceMode::GlobalJob);
        bump_iteration(&mut s, Utc::now());
        let mut done = running(&s, "a", 0, "n1");
        done.status.state = TaskState::Complete;
        let p = reconcile_global(&s, &[done], &[node("n1"), node("n2")]);
        assert_eq!(p.create_on, vec!["n2".to_string()]);
        assert!(p.shutdown.is_empty());
    }
}

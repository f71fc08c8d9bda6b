//! Replicated services (swarmkit `manager/orchestrator/replicated/*.go`): slots 1..N.
//!
//! A slot is runnable while one of its tasks has desired state ≤ RUNNING. With too few runnable
//! slots, new tasks fill the lowest free slot numbers; with too many, the slots removed are those
//! on the nodes holding the most tasks of the service, and on a tie the ones not running.
//! Dirty slots are the updater's business, failed tasks the restart supervisor's.

use std::collections::HashMap;

use shoal_types::{Node, Service, Task, TaskState};

use super::{invalid_node, runnable_slots, SlotKey};

/// What a replicated service needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScalePlan {
    /// New tasks to create, one per slot number.
    pub create_slots: Vec<u64>,
    /// Tasks whose desired state becomes REMOVE (scale-down).
    pub remove: Vec<String>,
}

/// Compare the runnable slots of `service` with its replica count.
pub fn reconcile(service: &Service, tasks: &[Task]) -> ScalePlan {
    let Some(want) = service.spec.mode.replicas() else {
        return ScalePlan::default();
    };
    let want = want as usize;
    let slots = runnable_slots(tasks.iter().filter(|t| t.service_id == service.id && t.slot > 0));
    let have = slots.len();
    let mut plan = ScalePlan::default();
    if have < want {
        let mut n = 1u64;
        while plan.create_slots.len() < want - have {
            if !slots.contains_key(&SlotKey::Slot(n)) {
                plan.create_slots.push(n);
            }
            n += 1;
        }
    } else if have > want {
        let mut list: Vec<Vec<&Task>> = slots.into_values().collect();
        // Running slots first, so that among equals the non-running ones are removed.
        list.sort_by_key(|s| !s.iter().any(|t| t.status.state == TaskState::Running));
        // Index each slot as the n-th copy of the service on its node; unassigned or
        // multi-task slots get no index and go last.
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        let mut indexed: Vec<(Option<usize>, Vec<&Task>)> = list
            .into_iter()
            .map(|s| {
                if s.len() == 1 && !s[0].node_id.is_empty() {
                    let c = per_node.entry(s[0].node_id.as_str()).or_default();
                    *c += 1;
                    (Some(*c), s)
                } else {
                    (None, s)
                }
            })
            .collect();
        indexed.sort_by_key(|(i, _)| i.unwrap_or(usize::MAX));
        for (_, slot) in indexed.into_iter().skip(want) {
            plan.remove.extend(slot.into_iter().map(|t| t.id.clone()));
        }
    }
    plan
}

/// swarmkit's task-change rule: a runnable task needs the restart supervisor when its observed
/// state moved past RUNNING, or when it sits on a node that is gone, DOWN or drained.
pub fn needs_restart(task: &Task, node: Option<&Node>) -> bool {
    task.desired_state <= TaskState::Running
        && (task.status.state > TaskState::Running || (!task.node_id.is_empty() && invalid_node(node)))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use shoal_types::{NodeAvailability, NodeState, ServiceMode};

    fn svc(n: u64) -> Service {
        service("s", ServiceMode::Replicated { replicas: n })
    }

    #[test]
    fn scale_up_fills_gaps() {
        let s = svc(5);
        let tasks = vec![running(&s, "a", 2, "n1"), running(&s, "b", 4, "n1")];
        let p = reconcile(&s, &tasks);
        assert_eq!(p.create_slots, vec![1, 3, 5]);
        assert!(p.remove.is_empty());
    }

    #[test]
    fn dead_slots_do_not_count() {
        let s = svc(2);
        let mut dead = running(&s, "a", 1, "n1");
        dead.desired_state = TaskState::Shutdown;
        dead.status.state = TaskState::Failed;
        let tasks = vec![dead, running(&s, "b", 2, "n1")];
        assert_eq!(reconcile(&s, &tasks).create_slots, vec![1]);
        // A slot with a failed task still desired RUNNING counts (the restart supervisor acts).
        let mut failed = running(&s, "c", 1, "n1");
        failed.status.state = TaskState::Failed;
        let tasks = vec![failed, running(&s, "b", 2, "n1")];
        assert_eq!(reconcile(&s, &tasks), ScalePlan::default());
    }

    #[test]
    fn scale_down_prefers_crowded_nodes_then_not_running() {
        let s = svc(2);
        // n1 holds 3 tasks, n2 one; slot 3 on n1 is not running yet.
        let mut starting = running(&s, "c", 3, "n1");
        starting.status.state = TaskState::Starting;
        let tasks = vec![
            running(&s, "a", 1, "n1"),
            running(&s, "b", 2, "n1"),
            starting,
            running(&s, "d", 4, "n2"),
        ];
        let mut p = reconcile(&s, &tasks);
        p.remove.sort();
        assert_eq!(p.remove, vec!["b".to_string(), "c".to_string()]);
        assert!(p.create_slots.is_empty());
    }

    #[test]
    fn scale_down_removes_unassigned_first() {
        let s = svc(1);
        let mut pending = running(&s, "b", 2, "");
        pending.status.state = TaskState::Pending;
        let tasks = vec![running(&s, "a", 1, "n1"), pending];
        assert_eq!(reconcile(&s, &tasks).remove, vec!["b".to_string()]);
    }

    #[test]
    fn scale_ten_to_two() {
        let s = svc(2);
        let tasks: Vec<Task> = (1..=10).map(|i| running(&s, &format!("t{i:02}"), i, "n1")).collect();
        let p = reconcile(&s, &tasks);
        assert_eq!(p.remove.len(), 8);
        assert!(!p.remove.contains(&"t01".to_string()) && !p.remove.contains(&"t02".to_string()));
    }

    #[test]
    fn restart_rule() {
        let s = svc(1);
        let n = node("n1");
        let mut t = running(&s, "a", 1, "n1");
        assert!(!needs_restart(&t, Some(&n)));
        t.status.state = TaskState::Failed;
        assert!(needs_restart(&t, Some(&n)));
        t.desired_state = TaskState::Shutdown;
        assert!(!needs_restart(&t, Some(&n)), "already handled");
        let t = running(&s, "a", 1, "n1");
        let mut down = node("n1");
        down.status.state = NodeState::Down;
        assert!(needs_restart(&t, Some(&down)));
        let mut drained = node("n1");
        drained.spec.availability = NodeAvailability::Drain;
        assert!(needs_restart(&t, Some(&drained)));
        assert!(needs_restart(&t, None));
    }
}

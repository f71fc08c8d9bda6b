//! The task reaper (swarmkit `manager/orchestrator/taskreaper/task_reaper.go`).
//!
//! - keeps at most `TaskHistoryRetentionLimit` (default 5, negative = keep all) tasks per slot
//!   (per node for global services), deleting the oldest by status timestamp, and only tasks that
//!   are both desired and observed past RUNNING;
//! - deletes tasks with desired REMOVE once they never reached a node or have stopped;
//! - deletes tasks of services that no longer exist once they never reached a node or have
//!   stopped (a still-running one first gets desired REMOVE from the orchestrator).

use std::collections::{BTreeMap, HashSet};

use shoal_types::{Task, TaskState};

/// swarmkit's default `TaskHistoryRetentionLimit`.
pub const DEFAULT_RETENTION: i64 = 5;

fn gone_or_stopped(t: &Task, nodes: &HashSet<String>) -> bool {
    t.node_id.is_empty()
        || t.status.state < TaskState::Assigned
        || t.status.state > TaskState::Running
        || !nodes.contains(&t.node_id)
}

/// The IDs of the tasks to delete. `services` and `nodes` hold the IDs of existing services and
/// nodes; a task whose node no longer exists counts as stopped (swarmkit leaves such tasks stuck
/// in REMOVE forever, moby/moby#38988).
pub fn reap(tasks: &[Task], services: &HashSet<String>, nodes: &HashSet<String>, retention: i64) -> Vec<String> {
    let mut out = Vec::new();
    let mut groups: BTreeMap<(&str, u64, &str), Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        let orphan = !services.contains(&t.service_id);
        if (t.desired_state == TaskState::Remove || orphan || t.status.state == TaskState::Orphaned)
            && gone_or_stopped(t, nodes)
        {
            out.push(t.id.clone());
            continue;
        }
        let node = if t.slot > 0 { "" } else { t.node_id.as_str() };
        groups.entry((t.service_id.as_str(), t.slot, node)).or_default().push(t);
    }
    if retention >= 0 {
        let limit = retention as usize;
        for (_, mut ts) in groups {
            if ts.len() <= limit {
                continue;
            }
            ts.sort_by(|a, b| a.status.timestamp.cmp(&b.status.timestamp).then_with(|| a.id.cmp(&b.id)));
            let mut excess = ts.len() - limit;
            for t in ts {
                if excess == 0 {
                    break;
                }
                if t.desired_state > TaskState::Running && t.status.state > TaskState::Running {
                    out.push(t.id.clone());
                    excess -= 1;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, Utc};

    fn t(id: &str, slot: u64, state: TaskState, desired: TaskState, age_s: i64) -> Task {
        let mut t = Task { id: id.into(), service_id: "s".into(), slot, node_id: "n1".into(), ..Default::default() };
        t.status.state = state;
        t.desired_state = desired;
        t.status.timestamp = Utc::now() - Duration::seconds(age_s);
        t
    }

    fn svcs() -> HashSet<String> {
        ["s".to_string()].into_iter().collect()
    }

    fn reap(tasks: &[Task], services: &HashSet<String>, retention: i64) -> Vec<String> {
        let nodes: HashSet<String> = ["n1".to_string()].into_iter().collect();
        super::reap(tasks, services, &nodes, retention)
    }

    #[test]
    fn retention_per_slot_keeps_newest() {
        let mut tasks: Vec<Task> =
            (0..7).map(|i| t(&format!("dead{i}"), 1, TaskState::Failed, TaskState::Shutdown, 100 - i)).collect();
        tasks.push(t("live", 1, TaskState::Running, TaskState::Running, 1));
        tasks.push(t("other-slot", 2, TaskState::Failed, TaskState::Shutdown, 1000));
        let mut out = reap(&tasks, &svcs(), 5);
        out.sort();
        // 8 tasks in slot 1, keep 5: the 3 oldest dead ones go.
        assert_eq!(out, vec!["dead0", "dead1", "dead2"]);
        assert!(reap(&tasks, &svcs(), -1).is_empty(), "negative keeps everything");
        assert_eq!(reap(&tasks, &svcs(), 0).len(), 8, "0 keeps only what still runs");
    }

    #[test]
    fn running_tasks_are_never_reaped_by_retention() {
        let tasks: Vec<Task> =
            (0..3).map(|i| t(&format!("r{i}"), 1, TaskState::Running, TaskState::Shutdown, 10 - i)).collect();
        assert!(reap(&tasks, &svcs(), 1).is_empty());
    }

    #[test]
    fn remove_and_orphans() {
        let mut unassigned = t("pending", 2, TaskState::Pending, TaskState::Remove, 1);
        unassigned.node_id.clear();
        let tasks = vec![
            t("stopped", 1, TaskState::Shutdown, TaskState::Remove, 1),
            t("still-running", 3, TaskState::Running, TaskState::Remove, 1),
            unassigned,
        ];
        let mut out = reap(&tasks, &svcs(), 5);
        out.sort();
        assert_eq!(out, vec!["pending", "stopped"]);
        let mut orphan = t("orphan", 1, TaskState::Complete, TaskState::Shutdown, 1);
        orphan.service_id = "deleted".into();
        let mut orphan_running = t("orphan-running", 2, TaskState::Running, TaskState::Running, 1);
        orphan_running.service_id = "deleted".into();
        assert_eq!(reap(&[orphan, orphan_running.clone()], &svcs(), 5), vec!["orphan"]);
        // Its node is gone: nothing will ever stop it.
        assert_eq!(super::reap(&[orphan_running], &svcs(), &HashSet::new(), 5), vec!["orphan-running"]);
    }
}

//! Global services (swarmkit `manager/orchestrator/global/global.go`): one task per eligible node.
//!
//! A node is eligible when it is not DOWN, not drained and satisfies the placement
//! constraints. A paused node keeps its tasks but gets no new one. Tasks on nodes that are gone,
//! DOWN, drained or no longer satisfy the constraints are shut down (so a rolling update never
//! waits on an unreachable node). A node whose task finished for good under the restart policy
//! (`none`, or `on-failure` after a clean exit) gets no new task.

use std::collections::{BTreeMap, HashMap};

use shoal_types::{Node, NodeAvailability, NodeState, RestartCondition, Service, Task, TaskState};

use super::is_runnable;
use crate::constraint;

/// What a global service needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalPlan {
    /// Nodes that need a new task.
    pub create_on: Vec<String>,
    /// Tasks whose desired state becomes SHUTDOWN.
    pub shutdown: Vec<String>,
}

/// Not DOWN and not drained (swarmkit `isValidNode`).
pub fn node_usable(n: &Node) -> bool {
    n.status.state != NodeState::Down && n.spec.availability != NodeAvailability::Drain
}

/// The task's restart condition (default `any`).
pub fn restart_condition(t: &Task) -> RestartCondition {
    t.spec.restart_policy.as_ref().map(|r| r.condition()).unwrap_or(RestartCondition::Any)
}

/// The task ended by itself and the restart policy says it is not to be run again.
pub fn finished_for_good(t: &Task) -> bool {
    if is_runnable(t) {
        return false;
    }
    match restart_condition(t) {
        RestartCondition::None => matches!(t.status.state, TaskState::Complete | TaskState::Failed | TaskState::Rejected),
        RestartCondition::OnFailure => t.status.state == TaskState::Complete,
        RestartCondition::Any => false,
    }
}

/// Compare the tasks of a global `service` with the nodes.
pub fn reconcile(service: &Service, tasks: &[Task], nodes: &[Node]) -> GlobalPlan {
    let constraints = service
        .spec
        .task_template
        .placement
        .as_ref()
        .map(|p| p.constraints.clone())
        .unwrap_or_default();
    let parsed = constraint::parse_all(&constraints).ok();
    let nodes: HashMap<&str, &Node> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();

    let mut runnable: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    let mut completed: std::collections::HashSet<&str> = Default::default();
    for t in tasks.iter().filter(|t| t.service_id == service.id && !t.node_id.is_empty()) {
        if is_runnable(t) {
            runnable.entry(t.node_id.as_str()).or_default().push(t);
        } else if finished_for_good(t) && t.spec == service.spec.task_template {
            completed.insert(t.node_id.as_str());
        }
    }

    let mut plan = GlobalPlan::default();
    let mut ids: Vec<&&str> = nodes.keys().collect();
    ids.sort();
    for id in ids {
        let n = nodes[*id];
        let on_node = runnable.get(*id).map(Vec::as_slice).unwrap_or(&[]);
        let meets = parsed.as_ref().is_some_and(|c| constraint::node_matches(c, n));
        if !node_usable(n) || !meets || completed.contains(*id) {
            plan.shutdown.extend(on_node.iter().map(|t| t.id.clone()));
            continue;
        }
        if n.spec.availability == NodeAvailability::Pause {
            continue;
        }
        if on_node.is_empty() {
            plan.create_on.push(n.id.clone());
        }
    }
    // Tasks on nodes that no longer exist.
    for (node_id, ts) in &runnable {
        if !nodes.contains_key(node_id) {
            plan.shutdown.extend(ts.iter().map(|t| t.id.clone()));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use shoal_types::{NodeRole, Placement, RestartPolicy, ServiceMode};

    #[test]
    fn one_task_per_eligible_node() {
        let mut s = service("g", ServiceMode::Global);
        s.spec.task_template.placement =
            Some(Placement { constraints: vec!["node.role==worker".into()], ..Default::default() });
        let mut mgr = node("m");
        mgr.spec.role = NodeRole::Manager;
        let mut drained = node("d");
        drained.spec.availability = NodeAvailability::Drain;
        let mut down = node("x");
        down.status.state = NodeState::Down;
        let mut paused = node("p");
        paused.spec.availability = NodeAvailability::Pause;
        let nodes = vec![node("a"), node("b"), mgr, drained, down, paused];
        let tasks = vec![
            running(&s, "ta", 0, "a"),
            running(&s, "td", 0, "d"),
            running(&s, "tx", 0, "x"),
            running(&s, "tm", 0, "m"),
            running(&s, "tgone", 0, "gone"),
        ];
        let mut p = reconcile(&s, &tasks, &nodes);
        assert_eq!(p.create_on, vec!["b".to_string()]);
        p.shutdown.sort();
        assert_eq!(p.shutdown, vec!["td", "tgone", "tm", "tx"]);
    }

    #[test]
    fn completed_nodes_get_no_new_task() {
        let mut s = service("g", ServiceMode::Global);
        s.spec.task_template.restart_policy =
            Some(RestartPolicy { condition: Some(RestartCondition::OnFailure), ..Default::default() });
        let mut done = running(&s, "t1", 0, "a");
        done.status.state = TaskState::Complete;
        done.desired_state = TaskState::Shutdown;
        let p = reconcile(&s, &[done], &[node("a"), node("b")]);
        assert_eq!(p.create_on, vec!["b".to_string()]);
    }
}

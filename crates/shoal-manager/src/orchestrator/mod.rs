//! Orchestrator decisions shared by every service mode: the task factory, the dirty check,
//! node validity and slot grouping (swarmkit `manager/orchestrator/task.go`, `slot.go`).

pub mod global;
pub mod jobs;
pub mod replicated;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use shoal_types::{
    Annotations, Node, NodeAvailability, NodeState, Placement, Service, Task, TaskSpec, TaskState,
    TaskStatus,
};

use crate::constraint;

/// A fresh task for `service`: a new ID, the service's task template, state NEW ("created"),
/// desired RUNNING, `SpecVersion` = the service's version, the service's name and labels, the
/// job iteration for jobs. Replicated tasks get `slot`, global tasks get `node_id`.
pub fn new_task(service: &Service, slot: u64, node_id: &str, now: DateTime<Utc>) -> Task {
    Task {
        id: shoal_types::new_id(),
        spec: service.spec.task_template.clone(),
        service_id: service.id.clone(),
        slot,
        node_id: node_id.to_string(),
        status: TaskStatus::new(TaskState::New, now),
        desired_state: TaskState::Running,
        job_iteration: service.job_status.as_ref().map(|j| j.job_iteration),
        service_annotations: Some(Annotations {
            name: service.spec.name.clone(),
            labels: service.spec.labels.clone(),
        }),
        spec_version: Some(service.meta.version),
        ..Task::default()
    }
}

fn without_constraints(spec: &TaskSpec) -> TaskSpec {
    let mut s = spec.clone();
    if let Some(p) = s.placement.as_mut() {
        p.constraints.clear();
    }
    if s.placement == Some(Placement::default()) {
        s.placement = None;
    }
    s
}

/// True if the task was made from another spec than the service's current one (swarmkit
/// `IsTaskDirty`). A change of placement constraints alone does not make a task dirty while its
/// node still satisfies the new constraints. `ForceUpdate` lives in the task spec, so bumping it
/// makes every task dirty.
///
/// Note: shoal's `Task` carries no `Endpoint`, so an endpoint-spec-only change (ports) does not
/// make tasks dirty; published ports live on the service and the mesh reads them from there.
pub fn is_task_dirty(service: &Service, task: &Task, node: Option<&Node>) -> bool {
    let want = &service.spec.task_template;
    if task.spec == *want {
        return false;
    }
    // Constraint-only change: clean if the node still satisfies the new constraints.
    if let Some(node) = node {
        if !task.node_id.is_empty() && without_constraints(&task.spec) == without_constraints(want) {
            let exprs = want.placement.as_ref().map(|p| p.constraints.clone()).unwrap_or_default();
            return !constraint::node_matches_exprs(&exprs, node);
        }
    }
    true
}

/// swarmkit `InvalidNode`: the node is gone, DOWN, or drained.
pub fn invalid_node(node: Option<&Node>) -> bool {
    match node {
        None => true,
        Some(n) => n.status.state == NodeState::Down || n.spec.availability == NodeAvailability::Drain,
    }
}

/// A task is runnable (counts for its slot) while its desired state is ≤ RUNNING.
pub fn is_runnable(t: &Task) -> bool {
    t.desired_state <= TaskState::Running
}

/// The slot key of a task: its slot for replicated services, its node for global ones.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlotKey {
    Slot(u64),
    Node(String),
}

impl SlotKey {
    pub fn of(t: &Task) -> SlotKey {
        if t.slot > 0 {
            SlotKey::Slot(t.slot)
        } else {
            SlotKey::Node(t.node_id.clone())
        }
    }
}

/// Runnable tasks grouped by slot (or node for global services).
pub fn runnable_slots<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> BTreeMap<SlotKey, Vec<&'a Task>> {
    let mut m: BTreeMap<SlotKey, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        if is_runnable(t) {
            m.entry(SlotKey::of(t)).or_default().push(t);
        }
    }
    m
}

/// Has a task that was asked to stop actually stopped (or never started)? True when its
/// observed state is past RUNNING, when it never reached a node, or when its node is down/gone.
pub fn has_stopped(t: &Task, node: Option<&Node>) -> bool {
    t.status.state > TaskState::Running
        || t.status.state < TaskState::Assigned
        || t.node_id.is_empty()
        || node.is_none_or(|n| n.status.state == NodeState::Down)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use shoal_types::{ContainerSpec, NodeRole, ServiceMode, ServiceSpec, Version};

    pub fn service(id: &str, mode: ServiceMode) -> Service {
        let mut s = Service { id: id.into(), ..Default::default() };
        s.spec = ServiceSpec {
            name: format!("svc-{id}"),
            mode,
            task_template: TaskSpec {
                container_spec: ContainerSpec { image: "nginx".into(), ..Default::default() },
                ..Default::default()
            },
            ..Default::default()
        };
        s.meta.version = Version::new(10);
        s
    }

    pub fn node(id: &str) -> Node {
        let mut n = Node { id: id.into(), ..Default::default() };
        n.status.state = NodeState::Ready;
        n.spec.role = NodeRole::Worker;
        n
    }

    pub fn running(s: &Service, id: &str, slot: u64, node: &str) -> Task {
        let mut t = new_task(s, slot, node, Utc::now());
        t.id = id.into();
        t.status.state = TaskState::Running;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use shoal_types::ServiceMode;

    #[test]
    fn new_task_fields() {
        let s = service("s1", ServiceMode::Replicated { replicas: 1 });
        let t = new_task(&s, 3, "", Utc::now());
        assert_eq!(t.id.len(), 25);
        assert_eq!(t.slot, 3);
        assert_eq!(t.status.state, TaskState::New);
        assert_eq!(t.status.message, "created");
        assert_eq!(t.desired_state, TaskState::Running);
        assert_eq!(t.service_name(), "svc-s1");
        assert_eq!(t.spec_version, Some(s.meta.version));
    }

    #[test]
    fn dirty_check() {
        let mut s = service("s1", ServiceMode::Replicated { replicas: 1 });
        let n = node("n1");
        let t = running(&s, "t1", 1, "n1");
        assert!(!is_task_dirty(&s, &t, Some(&n)));
        s.spec.task_template.container_spec.env.push("A=1".into());
        assert!(is_task_dirty(&s, &t, Some(&n)));
        s.spec.task_template.container_spec.env.clear();
        s.spec.task_template.force_update += 1;
        assert!(is_task_dirty(&s, &t, Some(&n)), "force update dirties");
        s.spec.task_template.force_update -= 1;
        // Constraint-only change that the node satisfies: clean; one it doesn't: dirty.
        s.spec.task_template.placement =
            Some(Placement { constraints: vec!["node.role==worker".into()], ..Default::default() });
        assert!(!is_task_dirty(&s, &t, Some(&n)));
        s.spec.task_template.placement =
            Some(Placement { constraints: vec!["node.role==manager".into()], ..Default::default() });
        assert!(is_task_dirty(&s, &t, Some(&n)));
    }
}

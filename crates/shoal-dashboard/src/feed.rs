//! The live side: one task per dashboard follows the store's change feed (and this node's
//! engine events), bumps a generation counter that every open page's event stream watches,
//! and keeps the recent events for the event page.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::debug;

use shoal_swarm::{ChangeAction, FeedItem, ObjectChange, Swarm};
use shoal_types::{AnyObject, NodeAvailability, NodeRole, NodeState, TaskState};

/// How many events the event page keeps.
const KEEP: usize = 300;

/// One line of the event feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventEntry {
    pub time: DateTime<Utc>,
    pub kind: &'static str,
    pub text: String,
}

/// What changed, for the pages that show it live.
#[derive(Debug)]
pub struct Hub {
    generation: watch::Sender<u64>,
    events: Mutex<VecDeque<EventEntry>>,
    last: Mutex<Seen>,
}

/// The last state the feed reported per task and node, so only transitions become events.
#[derive(Debug, Default)]
struct Seen {
    tasks: HashMap<String, TaskState>,
    nodes: HashMap<String, (NodeState, NodeAvailability, NodeRole)>,
    names: HashMap<String, String>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            generation: watch::channel(0).0,
            events: Mutex::new(VecDeque::new()),
            last: Mutex::new(Seen::default()),
        }
    }
}

impl Hub {
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The current generation (how many changes so far).
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Something changed: every live page refreshes.
    pub fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn events(&self) -> Vec<EventEntry> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn push(&self, kind: &'static str, text: String) {
        let mut ev = self.events.lock().unwrap_or_else(|p| p.into_inner());
        ev.push_back(EventEntry {
            time: Utc::now(),
            kind,
            text,
        });
        while ev.len() > KEEP {
            ev.pop_front();
        }
    }

    /// Turns committed changes into event lines (transitions only).
    pub fn record(&self, changes: &[ObjectChange]) {
        let mut seen = self.last.lock().unwrap_or_else(|p| p.into_inner());
        // Names first, so a task created with its service reads well.
        for c in changes {
            match c.object.as_ref() {
                AnyObject::Service(s) => {
                    seen.names.insert(s.id.clone(), s.spec.name.clone());
                }
                AnyObject::Node(n) => {
                    seen.names
                        .insert(n.id.clone(), n.display_name().to_string());
                }
                _ => {}
            }
        }
        let mut lines: Vec<(&'static str, String)> = Vec::new();
        for c in changes {
            let verb = match c.action {
                ChangeAction::Create => "created",
                ChangeAction::Update => "updated",
                ChangeAction::Delete => "removed",
            };
            match c.object.as_ref() {
                AnyObject::Service(s) => {
                    let what = match &s.spec.mode {
                        shoal_types::ServiceMode::Replicated { replicas } => format!(
                            " ({replicas} replicas, {})",
                            s.spec.task_template.container_spec.image
                        ),
                        _ => format!(
                            " ({}, {})",
                            s.spec.mode.name(),
                            s.spec.task_template.container_spec.image
                        ),
                    };
                    let what = if c.action == ChangeAction::Delete {
                        String::new()
                    } else {
                        what
                    };
                    lines.push(("service", format!("service {} {verb}{what}", s.spec.name)));
                }
                AnyObject::Node(n) => {
                    let now = (n.status.state, n.spec.availability, n.spec.role);
                    match c.action {
                        ChangeAction::Delete => {
                            seen.nodes.remove(&n.id);
                            lines.push(("node", format!("node {} removed", n.display_name())));
                        }
                        _ => {
                            if seen.nodes.insert(n.id.clone(), now) != Some(now) {
                                lines.push((
                                    "node",
                                    format!(
                                        "node {} {}: {}, {}, {}",
                                        n.display_name(),
                                        verb,
                                        n.status.state.as_str(),
                                        n.spec.availability.as_str(),
                                        n.spec.role.as_str()
                                    ),
                                ));
                            }
                        }
                    }
                }
                AnyObject::Task(t) => {
                    if c.action == ChangeAction::Delete {
                        seen.tasks.remove(&t.id);
                        continue;
                    }
                    if seen.tasks.insert(t.id.clone(), t.status.state) == Some(t.status.state) {
                        continue;
                    }
                    let service = seen
                        .names
                        .get(&t.service_id)
                        .cloned()
                        .unwrap_or_else(|| t.service_name().to_string());
                    let name = shoal_types::task_display_name(&service, t.slot, &t.node_id);
                    let node = if t.node_id.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " on {}",
                            seen.names
                                .get(&t.node_id)
                                .cloned()
                                .unwrap_or_else(|| crate::html::short(&t.node_id).to_string())
                        )
                    };
                    let err = if t.status.err.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", t.status.err)
                    };
                    lines.push((
                        "task",
                        format!("task {name}{node} {}{err}", t.status.state.as_str()),
                    ));
                }
                AnyObject::Network(n) => {
                    if c.action != ChangeAction::Update {
                        lines.push(("network", format!("network {} {verb}", n.spec.name)));
                    }
                }
                AnyObject::Cluster(_) => {
                    lines.push(("cluster", format!("cluster settings {verb}")))
                }
                AnyObject::Secret(_) | AnyObject::Config(_) => {}
            }
        }
        drop(seen);
        for (kind, text) in lines {
            self.push(kind, text);
        }
    }

    /// Follows the swarm's changes and this node's engine until `stop` turns true.
    pub async fn run(&self, swarm: Swarm, mut stop: watch::Receiver<bool>) {
        let (_, mut engine_events) = swarm.engine().subscribe();
        loop {
            let mut feed = match swarm.changes() {
                Ok(f) => f,
                Err(e) => {
                    debug!(error = %e, "no change feed yet");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            // Pages opened before this feed started may have missed something.
            self.bump();
            loop {
                tokio::select! {
                    item = feed.next() => match item {
                        Some(FeedItem::Changes { changes, .. }) => {
                            self.record(&changes);
                            self.bump();
                        }
                        Some(FeedItem::Missed(_)) => self.bump(),
                        None => break,
                    },
                    ev = engine_events.recv() => match ev {
                        Ok(e) if e.kind == "container" || e.kind == "image" => self.bump(),
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.bump(),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            let (_, rx) = swarm.engine().subscribe();
                            engine_events = rx;
                        }
                    },
                    _ = stop.changed() => return,
                }
            }
            if *stop.borrow() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::{Node, Service, ServiceMode, ServiceSpec, Task, TaskStatus};
    use std::sync::Arc;

    fn change(action: ChangeAction, object: AnyObject) -> ObjectChange {
        ObjectChange {
            action,
            object: Arc::new(object),
        }
    }

    #[test]
    fn only_transitions_become_events() {
        let hub = Hub::default();
        let mut rx = hub.subscribe();
        let mut svc = Service {
            id: "s1".into(),
            spec: ServiceSpec {
                name: "web".into(),
                mode: ServiceMode::Replicated { replicas: 2 },
                ..ServiceSpec::default()
            },
            ..Service::default()
        };
        svc.spec.task_template.container_spec.image = "nginx".into();
        let mut node = Node {
            id: "n1".into(),
            ..Node::default()
        };
        node.description.hostname = "worker-1".into();
        node.status.state = NodeState::Ready;
        let task = |state| Task {
            id: "t1".into(),
            service_id: "s1".into(),
            slot: 1,
            node_id: "n1".into(),
            status: TaskStatus {
                state,
                ..TaskStatus::default()
            },
            ..Task::default()
        };
        hub.record(&[
            change(ChangeAction::Create, AnyObject::Service(svc.clone())),
            change(ChangeAction::Update, AnyObject::Node(node.clone())),
        ]);
        hub.record(&[change(
            ChangeAction::Create,
            AnyObject::Task(task(TaskState::Pending)),
        )]);
        hub.record(&[change(
            ChangeAction::Update,
            AnyObject::Task(task(TaskState::Pending)),
        )]);
        hub.record(&[change(
            ChangeAction::Update,
            AnyObject::Task(task(TaskState::Running)),
        )]);
        hub.record(&[change(ChangeAction::Update, AnyObject::Node(node.clone()))]);
        node.spec.availability = NodeAvailability::Drain;
        hub.record(&[change(ChangeAction::Update, AnyObject::Node(node))]);
        let texts: Vec<String> = hub.events().into_iter().map(|e| e.text).collect();
        assert_eq!(
            texts,
            vec![
                "service web created (2 replicas, nginx)",
                "node worker-1 updated: ready, active, worker",
                "task web.1 on worker-1 pending",
                "task web.1 on worker-1 running",
                "node worker-1 updated: ready, drain, worker",
            ]
        );
        hub.bump();
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
    }

    #[test]
    fn the_feed_keeps_the_latest_events() {
        let hub = Hub::default();
        for i in 0..(KEEP + 10) {
            hub.push("task", format!("e{i}"));
        }
        let ev = hub.events();
        assert_eq!(ev.len(), KEEP);
        assert_eq!(ev.last().unwrap().text, format!("e{}", KEEP + 9));
    }
}

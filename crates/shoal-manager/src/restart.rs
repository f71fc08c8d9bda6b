//! The restart supervisor (swarmkit `manager/orchestrator/restart/restart.go`).
//!
//! When a runnable task fails (or its node goes down or is drained) the orchestrator calls
//! [`RestartSupervisor::restart`] inside a store transaction:
//! 1. the old task gets desired SHUTDOWN;
//! 2. the restart policy decides: `none` → stop; `on-failure` → not after a clean exit
//!    (COMPLETE); `any` → restart (for jobs `any` behaves like `on-failure`); with
//!    `MaxAttempts > 0` the restarts of the slot (or node, for global services) are counted,
//!    only within `Window` when one is set;
//! 3. the replacement is created in the same slot (same node for global services) with desired
//!    READY, so the agent may prepare it but not start it;
//! 4. it is promoted to RUNNING once the old task stopped (waiting at most 1 minute; not at all
//!    when the old task is already dead or its node is down) and the restart `Delay` (default
//!    5 s) elapsed after that. The delay only damps crash loops: a task moved off a drained or
//!    down node did not fail by itself, so its replacement starts at once (swarmkit waits the
//!    delay there too, which is most of its 36 s node-loss recovery).
//!
//! The history is in memory only, like swarmkit's: MaxAttempts counting restarts after a leader
//! change. A task that fails while its own delayed start is pending is restarted only when that
//! delay is over, which prevents tight crash loops.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shoal_types::{defaults, Node, NodeAvailability, NodeState, RestartCondition, Service, Task, TaskState};

use crate::orchestrator::{self, has_stopped};

/// swarmkit's `defaultOldTaskTimeout`.
pub const OLD_TASK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HistoryKey {
    service_id: String,
    slot: u64,
    node_id: String,
}

#[derive(Debug, Clone, Default)]
struct RestartInfo {
    spec_version: Option<u64>,
    total: u64,
    times: VecDeque<Instant>,
}

/// A replacement waiting to be promoted from desired READY to RUNNING.
#[derive(Debug, Clone)]
pub struct DelayedStart {
    /// The task it replaces (waited for when `wait_stop`).
    pub old_task_id: Option<String>,
    pub wait_stop: bool,
    pub created: Instant,
    pub delay: Duration,
    /// When the old task was seen stopped (or the wait timed out); the delay runs from here.
    pub stopped_at: Option<Instant>,
    /// The replacement itself failed while waiting: restart it when the delay is over.
    pub restart_when_done: bool,
}

/// The outcome of [`RestartSupervisor::restart`].
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum RestartDecision {
    /// The task is itself a pending delayed start: nothing now, restart when its delay is over.
    Deferred,
    /// The old task (desired SHUTDOWN) and, if the policy allows, its replacement (desired
    /// READY, registered for a delayed start).
    Restart { old: Task, replacement: Option<Task> },
}

/// What to do with a delayed start that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Raise desired state to RUNNING.
    Promote(String),
    /// The replacement failed while waiting: hand it to [`RestartSupervisor::restart`].
    Restart(String),
}

/// Restart policy state: history per slot/node and the pending delayed starts.
#[derive(Debug, Clone)]
pub struct RestartSupervisor {
    history: HashMap<HistoryKey, RestartInfo>,
    delayed: BTreeMap<String, DelayedStart>,
    old_task_timeout: Duration,
}

impl Default for RestartSupervisor {
    fn default() -> Self {
        RestartSupervisor::new(OLD_TASK_TIMEOUT)
    }
}

fn delay_of(t: &Task) -> Duration {
    let ns = t.spec.restart_policy.as_ref().and_then(|r| r.delay).unwrap_or(defaults::RESTART_DELAY);
    Duration::from_nanos(ns.max(0) as u64)
}

fn condition(t: &Task, is_job: bool) -> RestartCondition {
    let c = orchestrator::global::restart_condition(t);
    if is_job && c == RestartCondition::Any {
        RestartCondition::OnFailure
    } else {
        c
    }
}

impl RestartSupervisor {
    pub fn new(old_task_timeout: Duration) -> RestartSupervisor {
        RestartSupervisor { history: HashMap::new(), delayed: BTreeMap::new(), old_task_timeout }
    }

    fn key(t: &Task, is_global: bool) -> HistoryKey {
        HistoryKey {
            service_id: t.service_id.clone(),
            slot: t.slot,
            node_id: if is_global { t.node_id.clone() } else { String::new() },
        }
    }

    /// The restart policy's verdict for a task that stopped (swarmkit `shouldRestart`).
    pub fn should_restart(&mut self, t: &Task, is_job: bool, is_global: bool, now: Instant) -> bool {
        match condition(t, is_job) {
            RestartCondition::Any => {}
            RestartCondition::OnFailure => {
                if t.status.state == TaskState::Complete {
                    return false;
                }
            }
            RestartCondition::None => return false,
        }
        let policy = t.spec.restart_policy.clone().unwrap_or_default();
        let max = policy.max_attempts.unwrap_or(0);
        if max == 0 {
            return true;
        }
        let Some(info) = self.history.get_mut(&Self::key(t, is_global)) else { return true };
        if t.spec_version.map(|v| v.index) != info.spec_version {
            return true;
        }
        let window = policy.window.unwrap_or(0);
        if window <= 0 {
            return info.total < max;
        }
        let window = Duration::from_nanos(window as u64);
        while info.times.front().is_some_and(|t0| now.saturating_duration_since(*t0) >= window) {
            info.times.pop_front();
        }
        (info.times.len() as u64) < max
    }

    fn record(&mut self, replacement: &Task, is_global: bool, now: Instant) {
        let policy = replacement.spec.restart_policy.clone().unwrap_or_default();
        if policy.max_attempts.unwrap_or(0) == 0 {
            return;
        }
        let version = replacement.spec_version.map(|v| v.index);
        let info = self.history.entry(Self::key(replacement, is_global)).or_default();
        if info.spec_version != version {
            *info = RestartInfo { spec_version: version, ..Default::default() };
        }
        info.total += 1;
        if policy.window.unwrap_or(0) > 0 {
            info.times.push_back(now);
        }
    }

    /// Handle a runnable task that failed or whose node became unusable. `task` and `node` are
    /// as read inside the transaction; the caller writes `old` and creates `replacement`.
    pub fn restart(
        &mut self,
        service: &Service,
        task: &Task,
        node: Option<&Node>,
        wall: DateTime<Utc>,
        now: Instant,
    ) -> RestartDecision {
        if let Some(d) = self.delayed.get_mut(&task.id) {
            d.restart_when_done = true;
            return RestartDecision::Deferred;
        }
        let mut old = task.clone();
        old.desired_state = TaskState::Shutdown;
        let is_job = service.spec.mode.is_job();
        let is_global = service.spec.mode.is_global();
        if !self.should_restart(task, is_job, is_global, now) {
            return RestartDecision::Restart { old, replacement: None };
        }
        let mut new = if is_global {
            orchestrator::new_task(service, 0, &task.node_id, wall)
        } else {
            orchestrator::new_task(service, task.slot, "", wall)
        };
        new.desired_state = TaskState::Ready;
        let drained = node.is_some_and(|n| n.spec.availability == NodeAvailability::Drain);
        let down = node.is_some_and(|n| n.status.state == NodeState::Down);
        let delay = if drained || down { Duration::ZERO } else { delay_of(task) };
        let wait_stop = !(down || task.status.state > TaskState::Running);
        self.record(&new, is_global, now);
        self.delayed.insert(
            new.id.clone(),
            DelayedStart {
                old_task_id: Some(task.id.clone()),
                wait_stop,
                created: now,
                delay,
                stopped_at: if wait_stop { None } else { Some(now) },
                restart_when_done: false,
            },
        );
        RestartDecision::Restart { old, replacement: Some(new) }
    }

    /// Track a task found with desired READY when the loop (re)starts: promote it once the other
    /// tasks of its slot stopped and the rest of its restart delay (from its creation) elapsed.
    pub fn adopt(&mut self, t: &Task, old_task_id: Option<String>, wall: DateTime<Utc>, now: Instant) {
        if self.delayed.contains_key(&t.id) {
            return;
        }
        let age = (wall - t.meta.created_at).to_std().unwrap_or(Duration::ZERO);
        let delay = delay_of(t).saturating_sub(age);
        self.delayed.insert(
            t.id.clone(),
            DelayedStart {
                wait_stop: old_task_id.is_some(),
                stopped_at: if old_task_id.is_some() { None } else { Some(now) },
                old_task_id,
                created: now,
                delay,
                restart_when_done: false,
            },
        );
    }

    /// Forget a delayed start (task deleted, shut down, or promoted by someone else).
    pub fn forget(&mut self, task_id: &str) {
        self.delayed.remove(task_id);
    }

    pub fn is_delayed(&self, task_id: &str) -> bool {
        self.delayed.contains_key(task_id)
    }

    pub fn delayed(&self) -> impl Iterator<Item = (&String, &DelayedStart)> {
        self.delayed.iter()
    }

    /// Drop the history of a deleted service.
    pub fn forget_service(&mut self, service_id: &str) {
        self.history.retain(|k, _| k.service_id != service_id);
    }

    /// Delayed starts that are due now. `lookup(id)` gives a task and its node as currently
    /// stored. Due entries are removed; entries whose task is gone or no longer desired READY
    /// are dropped.
    pub fn due<'a>(
        &mut self,
        now: Instant,
        lookup: impl Fn(&str) -> Option<(&'a Task, Option<&'a Node>)>,
    ) -> Vec<Due> {
        let mut out = Vec::new();
        let timeout = self.old_task_timeout;
        self.delayed.retain(|id, d| {
            let Some((t, _)) = lookup(id) else { return false };
            if t.desired_state != TaskState::Ready {
                return false;
            }
            if d.stopped_at.is_none() {
                let stopped = match d.old_task_id.as_deref().and_then(&lookup) {
                    None => true,
                    Some((old, node)) => has_stopped(old, node),
                };
                if stopped || now.saturating_duration_since(d.created) >= timeout {
                    d.stopped_at = Some(now);
                }
            }
            match d.stopped_at {
                Some(at) if now.saturating_duration_since(at) >= d.delay => {
                    let failed = d.restart_when_done || t.status.state > TaskState::Running;
                    out.push(if failed { Due::Restart(id.clone()) } else { Due::Promote(id.clone()) });
                    false
                }
                _ => true,
            }
        });
        out
    }

    /// The next instant at which a delayed start may become due without any store event.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.delayed
            .values()
            .map(|d| match d.stopped_at {
                Some(at) => at + d.delay,
                None => d.created + self.old_task_timeout,
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::testutil::*;
    use shoal_types::{RestartPolicy, ServiceMode};

    fn svc(policy: RestartPolicy) -> Service {
        let mut s = service("s", ServiceMode::Replicated { replicas: 1 });
        s.spec.task_template.restart_policy = Some(policy);
        s
    }

    fn failed(s: &Service, id: &str, state: TaskState) -> Task {
        let mut t = running(s, id, 1, "n1");
        t.status.state = state;
        t
    }

    fn restart(sup: &mut RestartSupervisor, s: &Service, t: &Task, now: Instant) -> Option<Task> {
        match sup.restart(s, t, Some(&node("n1")), Utc::now(), now) {
            RestartDecision::Restart { old, replacement } => {
                assert_eq!(old.desired_state, TaskState::Shutdown);
                replacement
            }
            RestartDecision::Deferred => panic!("deferred"),
        }
    }

    #[test]
    fn conditions() {
        let now = Instant::now();
        let mut sup = RestartSupervisor::default();
        let any = svc(RestartPolicy { condition: Some(RestartCondition::Any), ..Default::default() });
        let r = restart(&mut sup, &any, &failed(&any, "a", TaskState::Complete), now).unwrap();
        assert_eq!(r.slot, 1);
        assert_eq!(r.desired_state, TaskState::Ready);
        let onf = svc(RestartPolicy { condition: Some(RestartCondition::OnFailure), ..Default::default() });
        assert!(restart(&mut sup, &onf, &failed(&onf, "b", TaskState::Complete), now).is_none());
        assert!(restart(&mut sup, &onf, &failed(&onf, "c", TaskState::Failed), now).is_some());
        let none = svc(RestartPolicy { condition: Some(RestartCondition::None), ..Default::default() });
        assert!(restart(&mut sup, &none, &failed(&none, "d", TaskState::Failed), now).is_none());
        // Jobs: any = on-failure.
        let mut job = service("j", ServiceMode::ReplicatedJob { max_concurrent: 1, total_completions: 1 });
        job.spec.task_template.restart_policy = Some(RestartPolicy::default());
        assert!(restart(&mut sup, &job, &failed(&job, "e", TaskState::Complete), now).is_none());
        assert!(restart(&mut sup, &job, &failed(&job, "f", TaskState::Failed), now).is_some());
    }

    #[test]
    fn max_attempts_and_window() {
        let now = Instant::now();
        let mut sup = RestartSupervisor::default();
        let s = svc(RestartPolicy { max_attempts: Some(2), ..Default::default() });
        assert!(restart(&mut sup, &s, &failed(&s, "a", TaskState::Failed), now).is_some());
        assert!(restart(&mut sup, &s, &failed(&s, "b", TaskState::Failed), now).is_some());
        assert!(restart(&mut sup, &s, &failed(&s, "c", TaskState::Failed), now).is_none(), "limit reached");

        let mut sup = RestartSupervisor::default();
        let s = svc(RestartPolicy { max_attempts: Some(1), window: Some(10_000_000_000), ..Default::default() });
        assert!(restart(&mut sup, &s, &failed(&s, "a", TaskState::Failed), now).is_some());
        assert!(restart(&mut sup, &s, &failed(&s, "b", TaskState::Failed), now + Duration::from_secs(5)).is_none());
        assert!(
            restart(&mut sup, &s, &failed(&s, "c", TaskState::Failed), now + Duration::from_secs(11)).is_some(),
            "the first restart left the window"
        );
        // A new spec version resets the count.
        let mut s2 = s.clone();
        s2.meta.version.index += 1;
        assert!(restart(&mut sup, &s2, &failed(&s2, "d", TaskState::Failed), now + Duration::from_secs(12)).is_some());
    }

    #[test]
    fn task_on_a_down_node_is_replaced_without_delay() {
        let now = Instant::now();
        let mut sup = RestartSupervisor::default();
        let s = svc(RestartPolicy { delay: Some(5_000_000_000), ..Default::default() });
        let old = running(&s, "old", 1, "n1");
        let mut n = node("n1");
        n.status.state = NodeState::Down;
        let RestartDecision::Restart { old: old_shut, replacement: Some(new) } =
            sup.restart(&s, &old, Some(&n), Utc::now(), now)
        else {
            panic!("a task on a down node must be replaced")
        };
        let tasks: HashMap<String, Task> =
            [(old_shut.id.clone(), old_shut.clone()), (new.id.clone(), new.clone())].into_iter().collect();
        let lookup = |id: &str| tasks.get(id).map(|t| (t, Some(&n)));
        assert_eq!(sup.due(now, lookup), vec![Due::Promote(new.id.clone())], "no restart delay, no wait for the old task");
    }

    #[test]
    fn delayed_start_waits_for_old_task_and_delay() {
        let now = Instant::now();
        let mut sup = RestartSupervisor::default();
        let s = svc(RestartPolicy { delay: Some(2_000_000_000), ..Default::default() });
        // Node drained → the old task is still running: wait for it to stop.
        let old = running(&s, "old", 1, "n1");
        let n = node("n1");
        let RestartDecision::Restart { old: old_shut, replacement: Some(new) } =
            sup.restart(&s, &old, Some(&n), Utc::now(), now)
        else {
            panic!()
        };
        let tasks: HashMap<String, Task> =
            [(old_shut.id.clone(), old_shut.clone()), (new.id.clone(), new.clone())].into_iter().collect();
        let lookup = |id: &str| tasks.get(id).map(|t| (t, Some(&n)));
        assert!(sup.due(now + Duration::from_secs(3), lookup).is_empty(), "old task still running");
        assert_eq!(sup.next_deadline(), Some(now + OLD_TASK_TIMEOUT));
        let mut stopped = old_shut.clone();
        stopped.status.state = TaskState::Shutdown;
        let tasks2: HashMap<String, Task> =
            [(stopped.id.clone(), stopped), (new.id.clone(), new.clone())].into_iter().collect();
        let lookup2 = |id: &str| tasks2.get(id).map(|t| (t, Some(&n)));
        let t4 = now + Duration::from_secs(4);
        assert!(sup.due(t4, lookup2).is_empty(), "delay starts when the old task stopped");
        assert_eq!(sup.next_deadline(), Some(t4 + Duration::from_secs(2)));
        assert_eq!(sup.due(t4 + Duration::from_secs(2), lookup2), vec![Due::Promote(new.id.clone())]);
        assert!(sup.next_deadline().is_none());
    }

    #[test]
    fn old_task_wait_is_capped() {
        let now = Instant::now();
        let mut sup = RestartSupervisor::default();
        let s = svc(RestartPolicy { delay: Some(0), ..Default::default() });
        let n = node("n1");
        let old = running(&s, "old", 1, "n1");
        let RestartDecision::Restart { old: o, replacement: Some(new) } = sup.restart(&s, &old, Some(&n), Utc::now(), now)
        else {
            panic!()
        };
        let tasks: HashMap<String, Task> = [(o.id.clone(), o), (new.id.clone(), new.clone())].into_iter().collect();
        let lookup = |id: &str| tasks.get(id).map(|t| (t, Some(&n)));
        assert_eq!(sup.due(now + OLD_TASK_TIMEOUT, lookup), vec![Due::Promote(new.id)]);
    }

    #[test]
    fn failure_during_delay_is_deferred() {
        let now = Instant::now();
        let mut sup = RestartSupervisor::default();
        let s = svc(RestartPolicy { delay: Some(1_000_000_000), ..Default::default() });
        let n = node("n1");
        let old = failed(&s, "old", TaskState::Failed);
        let new = restart(&mut sup, &s, &old, now).unwrap();
        let mut new_failed = new.clone();
        new_failed.status.state = TaskState::Rejected;
        assert!(matches!(sup.restart(&s, &new_failed, Some(&n), Utc::now(), now), RestartDecision::Deferred));
        let tasks: HashMap<String, Task> = [(new.id.clone(), new_failed)].into_iter().collect();
        let lookup = |id: &str| tasks.get(id).map(|t| (t, Some(&n)));
        assert!(sup.due(now, lookup).is_empty());
        assert_eq!(sup.due(now + Duration::from_secs(1), lookup), vec![Due::Restart(new.id)]);
    }
}

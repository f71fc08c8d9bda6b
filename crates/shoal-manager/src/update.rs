//! The updater: rolling updates and rollbacks (swarmkit `manager/orchestrator/update/updater.go`).
//!
//! [`step`] is a pure state machine driven by the updater loop on every change of the service,
//! of its tasks or of nodes, and on timers. It never blocks; it returns store writes and the
//! next instant it wants to run again. At most one [`UpdateRun`] exists per service; a new spec
//! (or a switch between update and rollback) replaces it.
//!
//! - Dirty slots: runnable slots (slot number, or node for global services) holding more than one
//!   runnable task or a task made from another spec ([`is_task_dirty`]). No dirty slot, no run.
//! - Status: `updating` "update in progress" when a run starts (a rollback keeps
//!   `rollback_started`); `completed` "update completed" / `rollback_completed` "rollback
//!   completed" after the last slot plus one more monitoring period (`Monitor`, or `Delay + 1s`
//!   when `Delay ≥ Monitor`); a `paused`/`rollback_paused` service is left alone until the
//!   next update.
//! - `Parallelism` slots at a time (0 = all); a worker rests `Delay` after each slot.
//! - stop-first: the old tasks get desired SHUTDOWN and the new task (desired READY) is raised to
//!   RUNNING once they stopped (at most 1 min). start-first: the new task is RUNNING at once and
//!   the old ones are shut down when it reports RUNNING. A slot that already holds an up-to-date
//!   task just has its other tasks shut down.
//! - Failures: a task created by the run that ends (> RUNNING) before reaching RUNNING or within
//!   `Monitor` of it counts; when `failures / dirty slots > MaxFailureRatio` the `FailureAction`
//!   applies: pause ("update paused due to failure or early termination of task <id>"),
//!   continue, or rollback (spec ← previous spec, `rollback_started`); a failing rollback pauses
//!   (`rollback_paused`).
//! - **Timeout (shoal's addition, swarmkit waits forever):** a new task that has not reached
//!   RUNNING within `max(Monitor, UpdaterConfig::task_start_timeout)` (default 2 minutes, enough
//!   for the 1-minute wait for the old task plus an image pull) counts as a failure and frees its
//!   worker, so a rollout never hangs: with the default `pause` it stops with the usual message
//!   naming that task, with `continue` it moves on.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shoal_types::{
    defaults, FailureAction, Node, Service, Task, TaskSpec, TaskState, UpdateConfig, UpdateOrder, UpdateState,
    UpdateStatus,
};

use crate::orchestrator::{has_stopped, is_task_dirty, new_task, runnable_slots, SlotKey};
use crate::restart::OLD_TASK_TIMEOUT;

/// Tunables of the updater.
#[derive(Debug, Clone)]
pub struct UpdaterConfig {
    /// A new task must reach RUNNING within `max(Monitor, this)` or it counts as a failure.
    pub task_start_timeout: Duration,
    /// How long stop-first waits for the old task to stop before starting the new one anyway.
    pub old_task_timeout: Duration,
}

impl Default for UpdaterConfig {
    fn default() -> Self {
        UpdaterConfig { task_start_timeout: Duration::from_secs(120), old_task_timeout: OLD_TASK_TIMEOUT }
    }
}

/// A store write decided by [`step`].
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum UpdateAction {
    Create(Task),
    SetDesired { task_id: String, state: TaskState },
    /// Replace `Service.UpdateStatus`.
    Status(UpdateStatus),
    /// Automatic rollback: `Spec ← PreviousSpec`, `PreviousSpec ← None`, `rollback_started`
    /// with this message (pause instead if there is no previous spec).
    Rollback { message: String },
}

#[derive(Debug, Clone)]
struct InFlight {
    task_id: String,
    created: Instant,
    order: UpdateOrder,
}

#[derive(Debug, Clone)]
struct Watch {
    created: Instant,
    running_at: Option<Instant>,
    done: bool,
}

/// The in-memory state of one service's update.
#[derive(Debug, Clone)]
pub struct UpdateRun {
    target: TaskSpec,
    pub rollback: bool,
    total_dirty: usize,
    pub failures: usize,
    in_flight: BTreeMap<SlotKey, InFlight>,
    watched: HashMap<String, Watch>,
    resting_until: Vec<Instant>,
    done_at: Option<Instant>,
}

/// What [`step`] decided.
#[derive(Debug, Clone, Default)]
pub struct StepResult {
    pub actions: Vec<UpdateAction>,
    /// Run `step` again at this instant even if nothing changes.
    pub wake_at: Option<Instant>,
}

fn dur(ns: i64) -> Duration {
    Duration::from_nanos(ns.max(0) as u64)
}

fn status(state: UpdateState, msg: &str, started: Option<DateTime<Utc>>, completed: Option<DateTime<Utc>>) -> UpdateStatus {
    UpdateStatus { state: Some(state), started_at: started, completed_at: completed, message: msg.to_string() }
}

/// Advance the update of `service`. `tasks` are the service's tasks, `nodes` every node.
pub fn step(
    run: &mut Option<UpdateRun>,
    service: &Service,
    tasks: &[Task],
    nodes: &HashMap<String, Node>,
    now: Instant,
    wall: DateTime<Utc>,
    cfg: &UpdaterConfig,
) -> StepResult {
    let mut res = StepResult::default();
    if service.spec.mode.is_job() {
        *run = None;
        return res;
    }
    let cur_state = service.update_status.as_ref().and_then(|u| u.state);
    if matches!(cur_state, Some(UpdateState::Paused) | Some(UpdateState::RollbackPaused)) {
        *run = None;
        return res;
    }
    let rollback = cur_state == Some(UpdateState::RollbackStarted);
    let ucfg: UpdateConfig = if rollback {
        service.spec.rollback_config.clone()
    } else {
        service.spec.update_config.clone()
    }
    .unwrap_or_default();
    let monitor = if ucfg.monitor > 0 { dur(ucfg.monitor) } else { dur(defaults::UPDATE_MONITOR) };
    let delay = dur(ucfg.delay);
    let start_timeout = cfg.task_start_timeout.max(monitor);
    let started_at = service.update_status.as_ref().and_then(|u| u.started_at);

    if run.as_ref().is_some_and(|r| r.target != service.spec.task_template || r.rollback != rollback) {
        *run = None;
    }

    let by_id: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let node_of = |t: &Task| nodes.get(&t.node_id);
    let slots = runnable_slots(tasks.iter().filter(|t| t.service_id == service.id));
    let dirty: Vec<SlotKey> = slots
        .iter()
        .filter(|(_, ts)| ts.len() > 1 || ts.iter().any(|t| is_task_dirty(service, t, node_of(t))))
        .map(|(k, _)| k.clone())
        .collect();

    if run.is_none() {
        if dirty.is_empty() {
            match cur_state {
                Some(UpdateState::Updating) => res.actions.push(UpdateAction::Status(status(
                    UpdateState::Completed,
                    "update completed",
                    started_at,
                    Some(wall),
                ))),
                Some(UpdateState::RollbackStarted) => res.actions.push(UpdateAction::Status(status(
                    UpdateState::RollbackCompleted,
                    "rollback completed",
                    started_at,
                    Some(wall),
                ))),
                _ => {}
            }
            return res;
        }
        *run = Some(UpdateRun {
            target: service.spec.task_template.clone(),
            rollback,
            total_dirty: dirty.len(),
            failures: 0,
            in_flight: BTreeMap::new(),
            watched: HashMap::new(),
            resting_until: Vec::new(),
            done_at: None,
        });
        if !rollback && cur_state != Some(UpdateState::Updating) {
            res.actions.push(UpdateAction::Status(status(UpdateState::Updating, "update in progress", Some(wall), None)));
        } else if rollback && started_at.is_none() {
            let msg = service.update_status.as_ref().map(|u| u.message.clone()).unwrap_or_default();
            res.actions.push(UpdateAction::Status(status(UpdateState::RollbackStarted, &msg, Some(wall), None)));
        }
    }
    let Some(r) = run.as_mut() else { return res };

    // 1. Failure detection on the tasks this run created.
    let mut failed_task: Option<String> = None;
    for (id, w) in r.watched.iter_mut() {
        if w.done {
            continue;
        }
        let Some(t) = by_id.get(id.as_str()) else {
            w.done = true;
            continue;
        };
        if t.status.state == TaskState::Running && w.running_at.is_none() {
            w.running_at = Some(now);
        }
        if t.status.state > TaskState::Running {
            w.done = true;
            if w.running_at.is_none_or(|at| now.saturating_duration_since(at) <= monitor) {
                r.failures += 1;
                failed_task = Some(id.clone());
            }
        } else if w.running_at.is_none() && now.saturating_duration_since(w.created) >= start_timeout {
            w.done = true;
            r.failures += 1;
            failed_task = Some(id.clone());
        } else if w.running_at.is_some_and(|at| now.saturating_duration_since(at) > monitor) {
            w.done = true;
        }
    }
    if let Some(id) = failed_task {
        if r.failures as f32 / r.total_dirty.max(1) as f32 > ucfg.max_failure_ratio {
            let msg = format!("update paused due to failure or early termination of task {id}");
            match ucfg.failure_action {
                FailureAction::Continue => {}
                FailureAction::Pause => {
                    let st = if r.rollback { UpdateState::RollbackPaused } else { UpdateState::Paused };
                    res.actions.push(UpdateAction::Status(status(st, &msg, started_at, None)));
                    *run = None;
                    return res;
                }
                FailureAction::Rollback => {
                    if r.rollback {
                        res.actions.push(UpdateAction::Status(status(UpdateState::RollbackPaused, &msg, started_at, None)));
                    } else {
                        res.actions.push(UpdateAction::Rollback {
                            message: format!("update rolled back due to failure or early termination of task {id}"),
                        });
                    }
                    *run = None;
                    return res;
                }
            }
        }
    }

    // 2. Progress of the slots being updated.
    let mut finished: Vec<SlotKey> = Vec::new();
    for (key, f) in r.in_flight.iter() {
        let new = by_id.get(f.task_id.as_str());
        let Some(new) = new.filter(|t| t.desired_state <= TaskState::Running) else {
            finished.push(key.clone());
            continue;
        };
        let others: Vec<&&Task> = slots
            .get(key)
            .map(|v| v.iter().filter(|t| t.id != new.id).collect())
            .unwrap_or_default();
        if new.status.state >= TaskState::Running {
            if f.order == UpdateOrder::StartFirst && new.status.state == TaskState::Running {
                for o in others {
                    res.actions.push(UpdateAction::SetDesired { task_id: o.id.clone(), state: TaskState::Shutdown });
                }
            }
            finished.push(key.clone());
            continue;
        }
        if now.saturating_duration_since(f.created) >= start_timeout {
            finished.push(key.clone());
            continue;
        }
        if new.desired_state == TaskState::Ready {
            let old_stopped = tasks
                .iter()
                .filter(|t| SlotKey::of(t) == *key && t.id != new.id && t.desired_state > TaskState::Running)
                .all(|t| has_stopped(t, node_of(t)));
            if old_stopped || now.saturating_duration_since(f.created) >= cfg.old_task_timeout {
                res.actions.push(UpdateAction::SetDesired { task_id: new.id.clone(), state: TaskState::Running });
            }
        }
    }
    let finished_now: std::collections::HashSet<SlotKey> = finished.iter().cloned().collect();
    for k in finished {
        r.in_flight.remove(&k);
        r.resting_until.push(now + delay);
    }
    r.resting_until.retain(|t| *t > now);

    // 3. Start more slots.
    let parallelism = if ucfg.parallelism == 0 { usize::MAX } else { ucfg.parallelism as usize };
    let mut waiting = 0usize;
    for key in &dirty {
        if r.in_flight.contains_key(key) || finished_now.contains(key) {
            continue;
        }
        if r.in_flight.len().saturating_add(r.resting_until.len()) >= parallelism {
            waiting += 1;
            continue;
        }
        let slot_tasks = &slots[key];
        if let Some(keep) = slot_tasks.iter().find(|t| !is_task_dirty(service, t, node_of(t))) {
            // An up-to-date task already exists (e.g. a restart): drop the others.
            for o in slot_tasks.iter().filter(|t| t.id != keep.id) {
                res.actions.push(UpdateAction::SetDesired { task_id: o.id.clone(), state: TaskState::Shutdown });
            }
            continue;
        }
        let mut new = match key {
            SlotKey::Slot(n) => new_task(service, *n, "", wall),
            SlotKey::Node(id) => new_task(service, 0, id, wall),
        };
        match ucfg.order {
            UpdateOrder::StartFirst => new.desired_state = TaskState::Running,
            UpdateOrder::StopFirst => {
                for o in slot_tasks {
                    res.actions.push(UpdateAction::SetDesired { task_id: o.id.clone(), state: TaskState::Shutdown });
                }
                let all_stopped = slot_tasks.iter().all(|t| has_stopped(t, node_of(t)));
                new.desired_state = if all_stopped { TaskState::Running } else { TaskState::Ready };
            }
        }
        r.in_flight.insert(key.clone(), InFlight { task_id: new.id.clone(), created: now, order: ucfg.order });
        r.watched.insert(new.id.clone(), Watch { created: now, running_at: None, done: false });
        res.actions.push(UpdateAction::Create(new));
    }

    // 4. Completion after one more monitoring period.
    if r.in_flight.is_empty() && waiting == 0 && !res.actions.iter().any(|a| matches!(a, UpdateAction::Create(_))) {
        let done_at = *r.done_at.get_or_insert(now);
        let final_wait = if delay >= monitor { delay + Duration::from_secs(1) } else { monitor };
        if now.saturating_duration_since(done_at) >= final_wait {
            let st = if r.rollback {
                status(UpdateState::RollbackCompleted, "rollback completed", started_at, Some(wall))
            } else {
                status(UpdateState::Completed, "update completed", started_at, Some(wall))
            };
            res.actions.push(UpdateAction::Status(st));
            *run = None;
            return res;
        }
        res.wake_at = Some(done_at + final_wait);
    } else {
        r.done_at = None;
    }

    // Next timer.
    let mut wake: Vec<Instant> = Vec::new();
    wake.extend(res.wake_at);
    wake.extend(r.resting_until.iter().copied());
    for f in r.in_flight.values() {
        wake.push(f.created + start_timeout);
        if f.order == UpdateOrder::StopFirst {
            wake.push(f.created + cfg.old_task_timeout);
        }
    }
    for w in r.watched.values().filter(|w| !w.done && w.running_at.is_none()) {
        wake.push(w.created + start_timeout);
    }
    res.wake_at = wake.into_iter().filter(|t| *t > now).min().or(res.wake_at);
    res
}

/// Apply [`UpdateAction::Rollback`] to a service read inside the write transaction. Returns false
/// (and leaves the service untouched) when there is no previous spec.
pub fn apply_rollback(service: &mut Service, message: &str, wall: DateTime<Utc>) -> bool {
    let Some(prev) = service.previous_spec.take() else { return false };
    service.spec = prev;
    service.update_status = Some(status(UpdateState::RollbackStarted, message, Some(wall), None));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::testutil::*;
    use shoal_types::ServiceMode;

    struct Sim {
        service: Service,
        tasks: Vec<Task>,
        nodes: HashMap<String, Node>,
        run: Option<UpdateRun>,
        now: Instant,
        cfg: UpdaterConfig,
    }

    impl Sim {
        fn new(replicas: u64, ucfg: UpdateConfig) -> Sim {
            let mut service = service("s", ServiceMode::Replicated { replicas });
            service.spec.update_config = Some(ucfg.clone());
            service.spec.rollback_config = Some(ucfg);
            let tasks = (1..=replicas).map(|i| running(&service, &format!("old{i}"), i, "n1")).collect();
            let nodes = [("n1".to_string(), node("n1"))].into_iter().collect();
            Sim { service, tasks, nodes, run: None, now: Instant::now(), cfg: UpdaterConfig::default() }
        }

        fn change_spec(&mut self) {
            self.service.previous_spec = Some(self.service.spec.clone());
            self.service.spec.task_template.container_spec.env = vec!["V=2".into()];
            self.service.meta.version.index += 1;
            self.service.update_status = None;
        }

        fn step(&mut self) -> Vec<UpdateAction> {
            let r = step(&mut self.run, &self.service, &self.tasks, &self.nodes, self.now, Utc::now(), &self.cfg);
            for a in &r.actions {
                match a {
                    UpdateAction::Create(t) => {
                        let mut t = t.clone();
                        t.node_id = "n1".into();
                        t.status.state = TaskState::Assigned;
                        self.tasks.push(t);
                    }
                    UpdateAction::SetDesired { task_id, state } => {
                        let t = self.tasks.iter_mut().find(|t| t.id == *task_id).unwrap();
                        t.desired_state = *state;
                    }
                    UpdateAction::Status(s) => self.service.update_status = Some(s.clone()),
                    UpdateAction::Rollback { message } => {
                        assert!(apply_rollback(&mut self.service, message, Utc::now()));
                    }
                }
            }
            r.actions
        }

        /// The fake agent: stop what should stop, run what should run.
        fn agent(&mut self) {
            for t in &mut self.tasks {
                if t.desired_state > TaskState::Running && t.status.state <= TaskState::Running {
                    t.status.state = TaskState::Shutdown;
                } else if t.desired_state == TaskState::Running && t.status.state < TaskState::Running {
                    t.status.state = TaskState::Running;
                }
            }
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
        }

        fn state(&self) -> Option<UpdateState> {
            self.service.update_status.as_ref().and_then(|u| u.state)
        }

        fn running_new(&self) -> usize {
            self.tasks
                .iter()
                .filter(|t| t.status.state == TaskState::Running && t.spec == self.service.spec.task_template)
                .count()
        }
    }

    fn ucfg(parallelism: u64, order: UpdateOrder) -> UpdateConfig {
        UpdateConfig { parallelism, order, monitor: 1_000_000_000, ..Default::default() }
    }

    #[test]
    fn stop_first_one_at_a_time() {
        let mut s = Sim::new(3, ucfg(1, UpdateOrder::StopFirst));
        assert!(s.step().is_empty(), "nothing dirty");
        s.change_spec();
        let a = s.step();
        assert_eq!(s.state(), Some(UpdateState::Updating));
        assert_eq!(s.service.update_status.as_ref().unwrap().message, "update in progress");
        let creates: Vec<&Task> = a.iter().filter_map(|a| if let UpdateAction::Create(t) = a { Some(t) } else { None }).collect();
        assert_eq!(creates.len(), 1, "parallelism 1");
        assert_eq!(creates[0].desired_state, TaskState::Ready, "old task still running");
        assert_eq!(creates[0].slot, 1);
        assert!(a.contains(&UpdateAction::SetDesired { task_id: "old1".into(), state: TaskState::Shutdown }));
        // The old task stops → the new one is promoted.
        s.agent();
        let a = s.step();
        assert!(a.iter().any(|a| matches!(a, UpdateAction::SetDesired { state: TaskState::Running, .. })));
        for _ in 0..10 {
            s.agent();
            s.step();
        }
        assert_eq!(s.running_new(), 3);
        assert_eq!(s.state(), Some(UpdateState::Updating), "still monitoring");
        s.advance(Duration::from_millis(1100));
        s.step();
        assert_eq!(s.state(), Some(UpdateState::Completed));
        assert_eq!(s.service.update_status.as_ref().unwrap().message, "update completed");
        assert!(s.service.update_status.as_ref().unwrap().completed_at.is_some());
        assert!(s.run.is_none());
    }

    #[test]
    fn parallelism_zero_updates_all_at_once() {
        let mut s = Sim::new(4, ucfg(0, UpdateOrder::StopFirst));
        s.change_spec();
        let a = s.step();
        assert_eq!(a.iter().filter(|a| matches!(a, UpdateAction::Create(_))).count(), 4);
    }

    #[test]
    fn start_first_keeps_old_until_new_runs() {
        let mut s = Sim::new(1, ucfg(1, UpdateOrder::StartFirst));
        s.change_spec();
        let a = s.step();
        let new = a.iter().find_map(|a| if let UpdateAction::Create(t) = a { Some(t.clone()) } else { None }).unwrap();
        assert_eq!(new.desired_state, TaskState::Running);
        assert!(!a.iter().any(|a| matches!(a, UpdateAction::SetDesired { .. })), "old task kept");
        s.agent();
        let a = s.step();
        assert_eq!(a, vec![UpdateAction::SetDesired { task_id: "old1".into(), state: TaskState::Shutdown }]);
    }

    #[test]
    fn delay_between_batches() {
        let mut c = ucfg(1, UpdateOrder::StopFirst);
        c.delay = 5_000_000_000;
        let mut s = Sim::new(2, c);
        s.change_spec();
        s.step();
        s.agent();
        s.step();
        s.agent();
        let a = s.step();
        assert!(!a.iter().any(|a| matches!(a, UpdateAction::Create(_))), "resting");
        s.advance(Duration::from_secs(5));
        let a = s.step();
        assert!(a.iter().any(|a| matches!(a, UpdateAction::Create(_))));
    }

    #[test]
    fn failure_pauses() {
        let mut s = Sim::new(2, ucfg(1, UpdateOrder::StopFirst));
        s.change_spec();
        s.step();
        let new_id = s.tasks.last().unwrap().id.clone();
        s.tasks.last_mut().unwrap().status.state = TaskState::Rejected;
        s.step();
        assert_eq!(s.state(), Some(UpdateState::Paused));
        assert_eq!(
            s.service.update_status.as_ref().unwrap().message,
            format!("update paused due to failure or early termination of task {new_id}")
        );
        // Paused: nothing more happens until the next update.
        assert!(s.step().is_empty());
    }

    #[test]
    fn failure_within_monitor_after_running_counts() {
        let mut s = Sim::new(1, ucfg(1, UpdateOrder::StopFirst));
        s.change_spec();
        s.step();
        s.agent();
        s.step();
        s.agent();
        s.step(); // seen RUNNING
        s.advance(Duration::from_millis(500));
        s.tasks.last_mut().unwrap().status.state = TaskState::Failed;
        s.step();
        assert_eq!(s.state(), Some(UpdateState::Paused));
    }

    #[test]
    fn continue_ignores_failures() {
        let mut c = ucfg(1, UpdateOrder::StopFirst);
        c.failure_action = FailureAction::Continue;
        let mut s = Sim::new(2, c);
        s.change_spec();
        s.step();
        s.tasks.last_mut().unwrap().status.state = TaskState::Rejected;
        let a = s.step();
        assert_eq!(s.state(), Some(UpdateState::Updating));
        assert!(a.iter().any(|a| matches!(a, UpdateAction::Create(t) if t.slot == 2)), "moves on to slot 2");
    }

    #[test]
    fn failure_rolls_back_then_completes() {
        let mut c = ucfg(1, UpdateOrder::StopFirst);
        c.failure_action = FailureAction::Rollback;
        let mut s = Sim::new(2, c);
        let old_spec = s.service.spec.task_template.clone();
        s.change_spec();
        s.step();
        s.tasks.last_mut().unwrap().status.state = TaskState::Rejected;
        let a = s.step();
        assert!(matches!(&a[0], UpdateAction::Rollback { message } if message.starts_with("update rolled back due to failure")));
        assert_eq!(s.state(), Some(UpdateState::RollbackStarted));
        assert_eq!(s.service.spec.task_template, old_spec);
        assert!(s.service.previous_spec.is_none());
        // The rollback: slot 1 holds a rejected new-spec task (not runnable after the restart
        // supervisor shut it down) and the old task; everything converges to the old spec.
        for t in &mut s.tasks {
            if t.status.state == TaskState::Rejected {
                t.desired_state = TaskState::Shutdown;
            }
        }
        for _ in 0..10 {
            s.step();
            s.agent();
        }
        s.advance(Duration::from_secs(2));
        s.step();
        assert_eq!(s.state(), Some(UpdateState::RollbackCompleted));
        assert_eq!(s.service.update_status.as_ref().unwrap().message, "rollback completed");
    }

    #[test]
    fn failing_rollback_pauses() {
        let mut c = ucfg(1, UpdateOrder::StopFirst);
        c.failure_action = FailureAction::Rollback;
        let mut s = Sim::new(1, c);
        s.change_spec();
        s.service.update_status = Some(status(UpdateState::RollbackStarted, "manually requested rollback", None, None));
        s.step();
        s.tasks.last_mut().unwrap().status.state = TaskState::Failed;
        s.step();
        assert_eq!(s.state(), Some(UpdateState::RollbackPaused));
    }

    #[test]
    fn stuck_task_times_out() {
        let mut s = Sim::new(2, ucfg(1, UpdateOrder::StopFirst));
        s.cfg.task_start_timeout = Duration::from_secs(10);
        s.change_spec();
        let r = step(&mut s.run, &s.service, &s.tasks, &s.nodes, s.now, Utc::now(), &s.cfg);
        assert!(r.wake_at.is_some_and(|w| w <= s.now + Duration::from_secs(10)));
        s.run = None;
        s.step();
        // The new task never gets further than ASSIGNED.
        s.advance(Duration::from_secs(10));
        s.step();
        assert_eq!(s.state(), Some(UpdateState::Paused));
    }

    #[test]
    fn max_failure_ratio_tolerates_some() {
        let mut c = ucfg(0, UpdateOrder::StopFirst);
        c.max_failure_ratio = 0.5;
        let mut s = Sim::new(4, c);
        s.change_spec();
        s.step();
        let ids: Vec<String> = s.tasks.iter().filter(|t| t.id.len() == 25).map(|t| t.id.clone()).collect();
        s.tasks.iter_mut().find(|t| t.id == ids[0]).unwrap().status.state = TaskState::Failed;
        s.tasks.iter_mut().find(|t| t.id == ids[1]).unwrap().status.state = TaskState::Failed;
        s.step();
        assert_eq!(s.state(), Some(UpdateState::Updating), "2/4 is not > 0.5");
        s.tasks.iter_mut().find(|t| t.id == ids[2]).unwrap().status.state = TaskState::Failed;
        s.step();
        assert_eq!(s.state(), Some(UpdateState::Paused));
    }

    #[test]
    fn existing_up_to_date_task_is_kept() {
        let mut s = Sim::new(1, ucfg(1, UpdateOrder::StopFirst));
        s.change_spec();
        // A restart already created a new-spec task in slot 1.
        let mut fresh = running(&s.service, "fresh", 1, "n1");
        fresh.status.state = TaskState::Running;
        s.tasks.push(fresh);
        let a = s.step();
        assert!(a.contains(&UpdateAction::SetDesired { task_id: "old1".into(), state: TaskState::Shutdown }));
        assert!(!a.iter().any(|a| matches!(a, UpdateAction::Create(_))));
    }
}

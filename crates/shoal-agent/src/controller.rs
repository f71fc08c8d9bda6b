//! One task controller per assigned task: drives the task through the state machine
//! ([`crate::state`]) with engine calls and reports each observed state.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use shoal_engine::{ContainerRecord, Engine, EngineError, HealthStatus, Status, WaitCondition};
use shoal_types::{ContainerStatus, Task, TaskState, TaskStatus};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::reporter::Reporter;
use crate::spec::{self, TemplateContext, LABEL_TASK_ID};
use crate::state::{exit_error, exit_state_with_cause, failure_state, may_report, next_step, Step, ERR_CONTAINER_UNHEALTHY};

/// The containers of the engine that belong to `task_id`, newest first.
pub(crate) fn task_containers(engine: &Engine, task_id: &str) -> Vec<ContainerRecord> {
    engine
        .list()
        .into_iter()
        .filter(|c| c.config.labels.get(LABEL_TASK_ID).map(String::as_str) == Some(task_id))
        .collect()
}

/// The newest container of `task_id` on this engine.
pub fn task_container(engine: &Engine, task_id: &str) -> Option<ContainerRecord> {
    task_containers(engine, task_id).into_iter().max_by_key(|r| r.created)
}

fn is_running(rec: &ContainerRecord) -> bool {
    matches!(rec.state.status, Status::Running | Status::Restarting)
}

/// How long a task that served connections through the mesh keeps running after it left the
/// rotation, so every node has dropped it from its ingress rules before it stops (the manager
/// pushes the new network map to all nodes at once; applying it takes milliseconds). moby waits
/// 2 s for gossip to converge here.
const ROTATION_DRAIN: Duration = Duration::from_millis(250);
/// Longest wait for this node's mesh to know a task's overlay networks before starting it.
const OVERLAY_READY_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) struct Controller {
    engine: Engine,
    /// VXLAN IDs of the overlays this node's mesh has programmed.
    overlays_ready: watch::Receiver<BTreeSet<u32>>,
    reporter: Reporter,
    ctx: TemplateContext,
    task: Task,
    /// The latest observed status: what we reported, or the stored one if that is further.
    status: TaskStatus,
    /// The container's ID once known.
    container: Option<String>,
    /// The container was removed (desired REMOVE): never create it again.
    removed: bool,
    /// The container was stopped because it became unhealthy: its exit carries moby's
    /// `ErrContainerUnhealthy` as cause.
    unhealthy: bool,
}

impl Controller {
    pub(crate) fn new(
        engine: Engine,
        overlays_ready: watch::Receiver<BTreeSet<u32>>,
        reporter: Reporter,
        ctx: TemplateContext,
        task: Task,
    ) -> Controller {
        let status = task.status.clone();
        Controller { engine, overlays_ready, reporter, ctx, task, status, container: None, removed: false, unhealthy: false }
    }

    /// Waits until the node's mesh knows every overlay network the task joins.
    async fn wait_overlays(&mut self) -> Result<(), String> {
        let want: BTreeSet<u32> = self.task.networks_attachments.iter().filter_map(|a| a.network.vni()).collect();
        if want.is_empty() {
            return Ok(());
        }
        let ready = tokio::time::timeout(OVERLAY_READY_TIMEOUT, self.overlays_ready.wait_for(|have| want.is_subset(have))).await;
        match ready {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!("overlay networks {want:?} are not ready on this node")),
        }
    }

    /// Runs until the task is no longer assigned here (`None` in `rx`) and its container is gone,
    /// or until the agent drops the sender. Returns the task ID.
    pub(crate) async fn run(mut self, mut rx: watch::Receiver<Option<Task>>) -> String {
        let id = self.task.id.clone();
        loop {
            let latest = rx.borrow_and_update().clone();
            let Some(task) = latest else {
                self.teardown().await;
                return id;
            };
            self.absorb(task);
            if self.status.state > TaskState::Running {
                self.settle_finished().await;
                if rx.changed().await.is_err() {
                    return id;
                }
                continue;
            }
            match next_step(self.status.state, self.task.desired_state) {
                Step::Idle => {
                    if rx.changed().await.is_err() {
                        return id;
                    }
                }
                Step::Transition(s) => self.report(s, String::new(), true),
                Step::Prepare => {
                    let r = tokio::select! {
                        r = self.prepare() => Some(r),
                        _ = shutdown_requested(&mut rx) => None,
                    };
                    match r {
                        Some(Ok(())) => self.report(TaskState::Ready, String::new(), true),
                        Some(Err(e)) => self.fail(e),
                        None => {} // re-evaluate: shutdown or removal wins
                    }
                }
                Step::Start => {
                    // With a healthcheck the task stays STARTING until the container is healthy
                    // (moby's controller.Start waits for `health_status: healthy`).
                    let r = match self.start().await {
                        Ok(()) => tokio::select! {
                            r = self.wait_healthy() => Some(r),
                            _ = shutdown_requested(&mut rx) => None,
                        },
                        Err(e) => Some(Err(e)),
                    };
                    match r {
                        Some(Ok(())) => self.report(TaskState::Running, String::new(), true),
                        Some(Err(e)) => self.fail(e),
                        None => {} // re-evaluate: shutdown or removal wins
                    }
                }
                Step::Wait => {
                    tokio::select! {
                        r = self.wait_exit() => match r {
                            Ok(code) => {
                                let cause = self.unhealthy.then_some(ERR_CONTAINER_UNHEALTHY);
                                let (state, err) = exit_state_with_cause(code, cause);
                                self.report(state, err, state == TaskState::Complete);
                            }
                            Err(e) => self.fail(e),
                        },
                        changed = rx.changed() => {
                            if changed.is_err() {
                                return id;
                            }
                        }
                    }
                }
                Step::Shutdown => match self.shutdown().await {
                    Ok(()) => self.report(TaskState::Shutdown, String::new(), true),
                    Err(e) => self.fail(e),
                },
            }
        }
    }

    /// Takes a newer task object; adopts its stored status if it is further than ours.
    fn absorb(&mut self, task: Task) {
        if task.status.state > self.status.state {
            self.status = task.status.clone();
        }
        self.task = task;
    }

    /// Reports `state` (`err` for failures). With `new_message` the message becomes the state's
    /// standard one; otherwise the previous message stays (swarmkit keeps it on failures).
    fn report(&mut self, state: TaskState, err: String, new_message: bool) {
        if !may_report(self.status.state, state) {
            warn!(task = %self.task.id, from = %self.status.state, to = %state, "refusing to move a task backwards");
            return;
        }
        let container_status = self.container_status();
        let status = TaskStatus {
            timestamp: Utc::now(),
            state,
            message: if new_message { state.default_message().to_string() } else { self.status.message.clone() },
            err,
            container_status,
            port_status: Default::default(),
        };
        debug!(task = %self.task.id, state = %state, err = %status.err, "task state");
        self.status = status.clone();
        self.reporter.send(&self.task.id, status);
    }

    fn fail(&mut self, err: String) {
        let state = failure_state(self.status.state);
        info!(task = %self.task.id, state = %state, error = %err, "task failed");
        self.report(state, err, false);
    }

    fn container_status(&self) -> Option<ContainerStatus> {
        let id = self.container.as_ref()?;
        let (pid, exit_code) = match self.engine.inspect(id) {
            Ok(rec) if is_running(&rec) => (rec.state.pid as i64, 0),
            Ok(rec) => (0, rec.state.exit_code),
            Err(_) => (0, 0),
        };
        Some(ContainerStatus { container_id: id.clone(), pid, exit_code })
    }

    /// The task's container, if any (remembered, or found by label). Extra containers of the
    /// same task (which should never exist) are removed, keeping a running one.
    fn find_container(&mut self) -> Option<ContainerRecord> {
        if let Some(id) = &self.container {
            match self.engine.inspect(id) {
                Ok(rec) => return Some(rec),
                Err(_) => self.container = None,
            }
        }
        let mut found = task_containers(&self.engine, &self.task.id);
        if found.is_empty() {
            return None;
        }
        let keep = found.iter().position(is_running).unwrap_or(0);
        let rec = found.remove(keep);
        for dup in found {
            warn!(task = %self.task.id, container = %dup.id, "removing a duplicate container of the task");
            let engine = self.engine.clone();
            tokio::spawn(async move {
                let _ = engine.remove(&dup.id, true).await;
            });
        }
        self.container = Some(rec.id.clone());
        Some(rec)
    }

    /// PREPARING → READY: the image is present (pulled if missing) and the container exists.
    async fn prepare(&mut self) -> Result<(), String> {
        if self.removed {
            return Err("task: container was removed".into());
        }
        if self.find_container().is_some() {
            return Ok(()); // created by an earlier run of the agent
        }
        let image = self.task.spec.container_spec.image.clone();
        let images = self.engine.images().clone();
        if images.get(&image).is_err() {
            info!(task = %self.task.id, image = %image, "pulling image");
            if let Err(e) = images.pull(&image, &mut |_| {}).await {
                if images.get(&image).is_err() {
                    warn!(task = %self.task.id, image = %image, error = %e, "pulling the image failed");
                    return Err(format!("No such image: {image}"));
                }
            }
        }
        let create = spec::create_spec(&self.task, &self.ctx)?;
        match self.engine.create(create).await {
            Ok((id, _)) => {
                info!(task = %self.task.id, container = %id, "container created");
                self.container = Some(id);
                Ok(())
            }
            Err(e) => {
                // A concurrent creation (or a crash right after create) may have left it.
                if self.find_container().is_some() {
                    return Ok(());
                }
                Err(e.to_string())
            }
        }
    }

    /// STARTING → RUNNING: starts the container unless it already runs (or already ran).
    async fn start(&mut self) -> Result<(), String> {
        let rec = self.find_container().ok_or_else(|| "task: container not found".to_string())?;
        if is_running(&rec) || rec.state.has_been_started {
            return Ok(()); // started by an earlier run; Wait reports how it ended
        }
        self.wait_overlays().await?;
        self.engine.start(&rec.id).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// STARTING, container started: with an active healthcheck (the container's, or its
    /// image's unless `NONE`) waits until it is healthy. Unhealthy: the container is stopped and
    /// its non-zero exit fails the task with moby's `ErrContainerUnhealthy` cause. An exit
    /// before that fails the task with the exit code (exit 0: RUNNING, then COMPLETE).
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let rec = self.find_container().ok_or_else(|| "task: container not found".to_string())?;
        if !is_running(&rec) || rec.config.active_healthcheck().is_none() {
            return Ok(()); // no healthcheck, or already exited: Wait reports how it ended
        }
        let id = rec.id.clone();
        debug!(task = %self.task.id, container = %id, "waiting for the container to be healthy");
        let mut changes = self.engine.watch(&id).map_err(|_| "task: container not found".to_string())?;
        loop {
            let rec = self.engine.inspect(&id).map_err(|_| "task: container not found".to_string())?;
            match (rec.state.status, rec.state.health.as_ref().map(|h| h.status)) {
                (Status::Running, Some(HealthStatus::Healthy)) => return Ok(()),
                (Status::Running, Some(HealthStatus::Unhealthy)) => break,
                (Status::Running | Status::Restarting, _) => {}
                _ => {
                    let cause = self.unhealthy.then_some(ERR_CONTAINER_UNHEALTHY);
                    return match rec.state.exit_code {
                        0 => Ok(()),
                        code => Err(exit_error(code, cause)),
                    };
                }
            }
            if changes.changed().await.is_err() {
                return Err("task: container not found".into());
            }
        }
        info!(task = %self.task.id, container = %id, "container is unhealthy; stopping it");
        self.unhealthy = true;
        self.stop_container().await.map_err(|e| format!("unhealthy container shutdown failed: {e}"))?;
        let code = match self.engine.wait(&id, WaitCondition::NotRunning).await {
            Ok(out) => out.status_code,
            Err(_) => return Err("task: container not found".into()),
        };
        match code {
            0 => Ok(()),
            code => Err(exit_error(code, Some(ERR_CONTAINER_UNHEALTHY))),
        }
    }

    /// RUNNING → exit code of the container. A container with a healthcheck that becomes
    /// unhealthy is stopped (moby's controller.Wait/checkHealth).
    async fn wait_exit(&mut self) -> Result<i64, String> {
        let rec = self.find_container().ok_or_else(|| "task: container not found".to_string())?;
        if !is_running(&rec) && !rec.state.has_been_started {
            return Err("task: container is not running".into());
        }
        let id = rec.id.clone();
        let exited = self.engine.wait(&id, WaitCondition::NotRunning);
        let code = if rec.config.active_healthcheck().is_some() && is_running(&rec) {
            let engine = self.engine.clone();
            tokio::select! {
                r = exited => r,
                () = became_unhealthy(engine, id.clone()) => {
                    info!(task = %self.task.id, container = %id, "container is unhealthy; stopping it");
                    self.unhealthy = true;
                    self.stop_container().await?;
                    self.engine.wait(&id, WaitCondition::NotRunning).await
                }
            }
        } else {
            exited.await
        };
        match code {
            Ok(out) => Ok(out.status_code),
            Err(EngineError::NoSuchContainer(_)) => Err("task: container not found".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Stops the container (stop signal, then SIGKILL after the grace period) if it runs.
    async fn stop_container(&mut self) -> Result<(), String> {
        let Some(rec) = self.find_container() else { return Ok(()) };
        if !is_running(&rec) {
            return Ok(());
        }
        let grace = spec::stop_grace_secs(&self.task);
        info!(task = %self.task.id, container = %rec.id, grace, "stopping container");
        match self.engine.stop(&rec.id, Some(grace), None).await {
            Ok(()) | Err(EngineError::NotModified(_)) | Err(EngineError::NoSuchContainer(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn shutdown(&mut self) -> Result<(), String> {
        let served = !self.task.networks_attachments.is_empty() && self.status.state == TaskState::Running;
        if served && self.find_container().is_some_and(|c| is_running(&c)) {
            // It left the rotation when its desired state changed: let the nodes catch up.
            tokio::time::sleep(ROTATION_DRAIN).await;
        }
        self.stop_container().await
    }

    async fn remove_container(&mut self) {
        if let Some(rec) = self.find_container() {
            info!(task = %self.task.id, container = %rec.id, "removing container");
            match self.engine.remove(&rec.id, true).await {
                Ok(()) | Err(EngineError::NoSuchContainer(_)) => {}
                Err(e) => {
                    warn!(task = %self.task.id, container = %rec.id, error = %e, "removing the container failed");
                    return;
                }
            }
        }
        self.container = None;
        self.removed = true;
    }

    /// A finished task: its container must not run; with desired REMOVE it goes away.
    async fn settle_finished(&mut self) {
        if let Err(e) = self.stop_container().await {
            warn!(task = %self.task.id, error = %e, "stopping the container of a finished task failed");
        }
        if self.task.desired_state >= TaskState::Remove && !self.removed {
            self.remove_container().await;
        }
    }

    /// The task is gone (deleted, or no longer assigned here): stop and remove its container.
    async fn teardown(&mut self) {
        if let Err(e) = self.stop_container().await {
            warn!(task = %self.task.id, error = %e, "stopping the container of a removed task failed");
        }
        self.remove_container().await;
    }
}

/// Resolves when the running container `id` is unhealthy; never if it stops or goes away first.
async fn became_unhealthy(engine: Engine, id: String) {
    let Ok(mut changes) = engine.watch(&id) else { return std::future::pending().await };
    loop {
        match engine.inspect(&id) {
            Ok(rec) if rec.state.status == Status::Running => {
                if rec.state.health.as_ref().is_some_and(|h| h.status == HealthStatus::Unhealthy) {
                    return;
                }
            }
            _ => return std::future::pending().await,
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Resolves when the task is gone, shut down or removed (or the agent stops).
async fn shutdown_requested(rx: &mut watch::Receiver<Option<Task>>) {
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        match &*rx.borrow() {
            None => return,
            Some(t) if t.desired_state >= TaskState::Shutdown => return,
            Some(_) => {}
        }
    }
}

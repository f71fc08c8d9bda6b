//! shoal-agent owns the worker side of a node: it turns the tasks the control plane assigns to
//! this node into containers of the node-local engine and reports each observed task state back.
//! It must not decide placement, write desired state, or touch tasks of other nodes.
//!
//! Shape (swarmkit's `agent`/`worker`/`taskManager` and moby's container controller):
//! - [`ControlPlane`] is the boundary to the managers: an assignment session (a complete set of
//!   this node's tasks, then incremental changes) and `report` of observed statuses.
//!   [`LocalControlPlane`] implements it over the local store on manager nodes; a remote
//!   implementation over the dispatcher session implements the same trait.
//! - [`Agent`] keeps the session open (re-opening it with back-off), runs one task controller
//!   (a tokio task) per assigned task, and removes containers of tasks that are no longer
//!   assigned here.
//! - Each controller follows swarmkit's `Do` rules ([`state`]): ASSIGNED → ACCEPTED → PREPARING
//!   (image present, container created) → READY → (only when desired ≥ RUNNING) STARTING
//!   (with a healthcheck: until healthy; unhealthy → container stopped, FAILED) →
//!   RUNNING → COMPLETE/FAILED; desired ≥ SHUTDOWN stops the container → SHUTDOWN; desired
//!   REMOVE or the task's deletion removes the container. Observed state never goes backwards.
//! - Containers carry `com.docker.swarm.task.id`; that label, not agent memory, links a task to
//!   its container, so an agent (or daemon) restart re-adopts running containers instead of
//!   creating duplicates, and containers survive the agent (live restore).
//! - Statuses are batched ([`reporter`], 50 ms) and retried until delivered.

mod control;
mod controller;
mod discovery;
mod logs;
pub mod netmap;
pub mod remote;
pub mod reporter;
pub mod spec;
pub mod state;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_engine::Engine;
use shoal_types::{EngineDescription, NetworkMap, NodeDescription, NodeResources, Platform, PluginDescription, Task};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

pub use controller::task_container;
pub use control::{record_status, Assignment, ControlError, ControlPlane, LocalControlPlane};
pub use remote::RemoteControlPlane;
pub use spec::TemplateContext;

use controller::{task_containers, Controller};
use reporter::Reporter;

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// The worker agent of one node.
pub struct Agent;

impl Agent {
    /// Starts the agent for `node_id` on the current tokio runtime. It runs until
    /// [`AgentHandle::stop`] or until the handle is dropped (which aborts it). Containers keep
    /// running either way; a new agent re-adopts them.
    pub fn start(node_id: String, engine: Engine, control: Arc<dyn ControlPlane>) -> AgentHandle {
        let (stop_tx, stop_rx) = oneshot::channel();
        let ctx = TemplateContext { node_hostname: hostname() };
        let (map_tx, map_rx) = watch::channel(None);
        let main = tokio::spawn(run(node_id, engine, control, ctx, stop_rx, map_tx));
        AgentHandle { inner: Mutex::new(Some((stop_tx, main))), network_map: map_rx }
    }
}

/// Controls a running [`Agent`].
pub struct AgentHandle {
    inner: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
    network_map: watch::Receiver<Option<NetworkMap>>,
}

impl AgentHandle {
    /// The latest network map this node received (what a worker knows of the swarm's networks).
    pub fn network_map(&self) -> Option<NetworkMap> {
        self.network_map.borrow().clone()
    }

    /// Stops the agent: ends the session, stops the task controllers (containers keep running)
    /// and delivers pending status reports (for at most 2 s). Idempotent.
    pub async fn stop(&self) {
        let taken = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((stop, main)) = taken {
            let _ = stop.send(());
            let _ = main.await;
        }
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        if let Some((_, main)) = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take() {
            main.abort();
        }
    }
}

struct Running {
    tx: watch::Sender<Option<Task>>,
    task: tokio::task::Id,
}

struct State {
    node_id: String,
    engine: Engine,
    control: Arc<dyn ControlPlane>,
    /// The latest network map, for the mesh task.
    network_map: watch::Sender<Option<NetworkMap>>,
    /// VXLAN IDs the mesh has programmed (controllers wait for theirs before starting).
    overlays_ready: watch::Receiver<BTreeSet<u32>>,
    ctx: TemplateContext,
    reporter: Reporter,
    controllers: JoinSet<String>,
    running: HashMap<String, Running>,
    /// Background removals of containers whose task is unknown here.
    cleanups: JoinSet<()>,
}

impl State {
    fn upsert(&mut self, task: Task) {
        if task.node_id != self.node_id {
            // Never act on another node's task, even if the control plane sends one.
            warn!(task = %task.id, node = %task.node_id, "ignoring a task assigned to another node");
            return;
        }
        if let Some(r) = self.running.get(&task.id) {
            let _ = r.tx.send(Some(task));
            return;
        }
        let id = task.id.clone();
        let (tx, rx) = watch::channel(Some(task.clone()));
        let ctl = Controller::new(self.engine.clone(), self.overlays_ready.clone(), self.reporter.clone(), self.ctx.clone(), task);
        let handle = self.controllers.spawn(ctl.run(rx));
        self.running.insert(id, Running { tx, task: handle.id() });
    }

    fn remove(&mut self, id: &str) {
        if let Some(r) = self.running.get(id) {
            let _ = r.tx.send(None);
        }
    }

    fn apply(&mut self, a: Assignment) {
        match a {
            Assignment::Complete(tasks) => {
                let ids: HashSet<String> = tasks.iter().map(|t| t.id.clone()).collect();
                let gone: Vec<String> = self.running.keys().filter(|id| !ids.contains(*id)).cloned().collect();
                for id in gone {
                    self.remove(&id);
                }
                for t in tasks {
                    self.upsert(t);
                }
                self.remove_unknown_containers();
            }
            Assignment::Incremental { updated, removed } => {
                for id in removed {
                    self.remove(&id);
                }
                for t in updated {
                    self.upsert(t);
                }
            }
            Assignment::NetworkMap(map) => {
                self.network_map.send_replace(Some(map));
            }
            Assignment::Logs(sub) => {
                self.cleanups.spawn(logs::publish(self.engine.clone(), self.control.clone(), sub));
            }
            Assignment::Inspect(req) => {
                let answer = logs::inspect(&self.engine, req);
                let control = self.control.clone();
                self.cleanups.spawn(async move {
                    if let Err(e) = control.answer_inspect(answer).await {
                        tracing::debug!(error = %e, "answering a container inspect failed");
                    }
                });
            }
        }
    }

    /// Removes task containers (label `com.docker.swarm.task.id`) that no controller owns: their
    /// task was deleted or moved while no agent ran.
    fn remove_unknown_containers(&mut self) {
        for rec in self.engine.list() {
            let Some(task_id) = rec.config.labels.get(spec::LABEL_TASK_ID) else { continue };
            if self.running.contains_key(task_id) {
                continue;
            }
            info!(container = %rec.id, task = %task_id, "removing the container of a task no longer assigned here");
            let engine = self.engine.clone();
            self.cleanups.spawn(async move {
                if let Err(e) = engine.remove(&rec.id, true).await {
                    warn!(container = %rec.id, error = %e, "removing an orphaned task container failed");
                }
            });
        }
    }

    fn reap(&mut self, res: Result<(tokio::task::Id, String), tokio::task::JoinError>) {
        let tid = match &res {
            Ok((tid, _)) => *tid,
            Err(e) => {
                warn!(error = %e, "a task controller ended abnormally");
                e.id()
            }
        };
        self.running.retain(|_, r| r.task != tid);
    }
}

async fn run(
    node_id: String,
    engine: Engine,
    control: Arc<dyn ControlPlane>,
    ctx: TemplateContext,
    mut stop: oneshot::Receiver<()>,
    map_tx: watch::Sender<Option<NetworkMap>>,
) {
    let (reporter, report_rx) = Reporter::new();
    let mut reporter_task = JoinSet::new();
    reporter_task.spawn(reporter::run(control.clone(), report_rx));
    let map_rx = map_tx.subscribe();
    let (ready_tx, ready_rx) = watch::channel(BTreeSet::new());
    let discovery = discovery::Discovery::new(map_rx.clone(), tokio::runtime::Handle::current());
    engine.set_netns_hook(Some(discovery.clone()));
    let mesh_task = tokio::spawn(run_mesh(node_id.clone(), engine.clone(), map_rx, ready_tx, discovery));
    let mut st = State {
        node_id,
        engine,
        control: control.clone(),
        network_map: map_tx,
        overlays_ready: ready_rx,
        ctx,
        reporter,
        controllers: JoinSet::new(),
        running: HashMap::new(),
        cleanups: JoinSet::new(),
    };
    info!(node = %st.node_id, "agent started");
    let mut backoff = INITIAL_BACKOFF;
    'session: loop {
        let session = tokio::select! {
            _ = &mut stop => break 'session,
            s = control.assignments() => s,
        };
        let mut rx = match session {
            Ok(rx) => rx,
            Err(e) => {
                warn!(error = %e, ?backoff, "opening the assignment session failed");
                tokio::select! {
                    _ = &mut stop => break 'session,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (INITIAL_BACKOFF + backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        loop {
            tokio::select! {
                _ = &mut stop => break 'session,
                msg = rx.recv() => match msg {
                    Some(a) => {
                        backoff = INITIAL_BACKOFF;
                        st.apply(a);
                    }
                    None => {
                        warn!("assignment session ended; reconnecting");
                        tokio::select! {
                            _ = &mut stop => break 'session,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (INITIAL_BACKOFF + backoff * 2).min(MAX_BACKOFF);
                        continue 'session;
                    }
                },
                Some(res) = st.controllers.join_next_with_id(), if !st.controllers.is_empty() => st.reap(res),
                Some(_) = st.cleanups.join_next(), if !st.cleanups.is_empty() => {}
            }
        }
    }
    // Stop: controllers end (their containers keep running), then the reporter flushes. The
    // mesh stays as programmed (live restore); leaving the swarm tears it down.
    mesh_task.abort();
    st.engine.set_netns_hook(None);
    st.controllers.shutdown().await;
    st.cleanups.shutdown().await;
    let State { reporter, .. } = st;
    drop(reporter);
    if tokio::time::timeout(Duration::from_secs(2), reporter_task.join_next()).await.is_err() {
        warn!("pending task status reports were not delivered before the agent stopped");
    }
    info!("agent stopped");
}

/// Programs this node's overlay data plane and routing mesh from each new network map. A failed
/// apply is retried with the newest map, backing off from 1 s to 30 s.
async fn run_mesh(
    node_id: String,
    engine: Engine,
    mut maps: watch::Receiver<Option<NetworkMap>>,
    ready: watch::Sender<BTreeSet<u32>>,
    discovery: Arc<discovery::Discovery>,
) {
    let mut adopted = false;
    const FIRST_RETRY: Duration = Duration::from_secs(1);
    const MAX_RETRY: Duration = Duration::from_secs(30);
    let mut retry = FIRST_RETRY;
    let mut pending = false;
    loop {
        if !pending {
            if maps.changed().await.is_err() {
                return;
            }
        }
        let Some(map) = maps.borrow_and_update().clone() else {
            pending = false;
            continue;
        };
        // This node's tasks by their bridge address (services that keep client addresses).
        let local_bridge: HashMap<String, std::net::Ipv4Addr> = engine
            .list()
            .into_iter()
            .filter_map(|rec| Some((rec.config.labels.get(spec::LABEL_TASK_ID)?.clone(), rec.network.ip?)))
            .collect();
        let Some(state) = netmap::mesh_state(&map, &node_id, &local_bridge) else {
            pending = false;
            continue;
        };
        let vnis: BTreeSet<u32> = state.overlays.iter().map(|o| o.vni).collect();
        let e = engine.clone();
        let t = std::time::Instant::now();
        let d = discovery.clone();
        let adopt = !adopted;
        let applied = tokio::task::spawn_blocking(move || {
            e.mesh().apply(&state)?;
            if adopt {
                d.adopt(&e);
            }
            d.refresh();
            Ok::<(), shoal_net::NetError>(())
        });
        match applied.await {
            Ok(Ok(())) => {
                adopted = true;
                tracing::debug!(overlays = vnis.len(), elapsed_ms = t.elapsed().as_secs_f64() * 1e3, "mesh programmed");
                ready.send_replace(vnis);
                pending = false;
                retry = FIRST_RETRY;
            }
            Ok(Err(err)) => {
                warn!(error = %err, ?retry, "programming the overlay mesh failed; retrying");
                pending = true;
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    changed = maps.changed() => if changed.is_err() { return },
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
            Err(err) => {
                warn!(error = %err, ?retry, "the mesh task panicked; retrying");
                pending = true;
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    changed = maps.changed() => if changed.is_err() { return },
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

fn mem_total_bytes() -> i64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<i64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Docker-style architecture name (`uname -m`): `x86_64`, `aarch64`, …
fn architecture() -> String {
    match std::env::consts::ARCH {
        "x86" => "i386".into(),
        other => other.into(),
    }
}

/// This node's description for the control plane: hostname, platform (`x86_64`/`linux`),
/// resources (CPUs as NanoCPUs, memory), engine version and the plugins tasks may rely on.
/// The TLS info is the node runner's to fill.
pub fn describe(engine: &Engine) -> NodeDescription {
    let _ = engine; // the engine has no node-level facts yet beyond what the host tells us
    let cpus = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
    let plugin = |kind: &str, name: &str| PluginDescription { kind: kind.into(), name: name.into() };
    NodeDescription {
        hostname: hostname(),
        platform: Platform { architecture: architecture(), os: std::env::consts::OS.into() },
        resources: NodeResources { nano_cpus: cpus * 1_000_000_000, memory_bytes: mem_total_bytes(), generic_resources: Vec::new() },
        engine: EngineDescription {
            engine_version: env!("CARGO_PKG_VERSION").into(),
            labels: Default::default(),
            plugins: vec![
                plugin("Log", "json-file"),
                plugin("Network", "bridge"),
                plugin("Network", "host"),
                plugin("Network", "null"),
                plugin("Network", "overlay"),
            ],
        },
        ..NodeDescription::default()
    }
}

/// The containers of `task_id` on `engine` (by label), newest first. For diagnostics and tests.
pub fn containers_of_task(engine: &Engine, task_id: &str) -> Vec<shoal_engine::ContainerRecord> {
    task_containers(engine, task_id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn platform_like_docker() {
        if cfg!(target_arch = "x86_64") {
            assert_eq!(super::architecture(), "x86_64");
        }
        assert!(super::mem_total_bytes() > 0);
    }
}

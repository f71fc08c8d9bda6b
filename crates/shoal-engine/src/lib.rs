//! shoal-engine: the node-local container engine.
//!
//! It owns containers: their records under `<data-root>/containers`, their lifecycle (create,
//! start, stop, kill, restart policies, removal), logs, attach, exec, file copy, `top` and stats,
//! and re-adopting running containers after a daemon restart (live restore). It composes the image
//! store (`shoal-image`), the runtime shim (`shoal-runtime`) and node-local networking
//! (`shoal-net`). It must not know HTTP or the Docker wire format (the API crate converts), nor
//! anything about swarm.
//!
//! Invariants: every change of a container record is persisted atomically before it is reported;
//! lifecycle operations on one container are serialised by its operation lock; the exit of a
//! container is observed only through its shim (pidfd + `exit.json`), so a container started by a
//! previous daemon is handled exactly like one started by this one.

pub mod archive;
mod error;
mod exec;
pub mod health;
mod lifecycle;
mod logs;
pub mod model;
mod names;
pub use names::random_name;
mod persist;
mod procs;
pub mod rootfs;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use tokio::sync::{broadcast, watch};

pub use error::{EngineError, ErrorKind, Result};
pub use exec::{ExecConfig, ExecSession, ExecView};
pub use logs::{LogOptions, LogRecord};
pub use lifecycle::AttachSession;
pub use model::*;
pub use procs::{StatsSample, TopResult};
pub use shoal_image::ImageStore;

use rootfs::ContainerDirs;

const SHIM_DIR_ID_LEN: usize = 24;

/// The longest `--exec-root` whose shim sockets (`<exec-root>/shim/<24 hex>/console.sock`) still
/// fit a unix socket path (107 bytes plus the terminating NUL).
pub const MAX_EXEC_ROOT_LEN: usize = 107 - "/shim/".len() - SHIM_DIR_ID_LEN - "/console.sock".len();

/// How the engine is set up on this node.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    /// The `shoal` binary, re-executed as the archive helper.
    pub self_exe: PathBuf,
    /// The binary run as `<shim_exe> shim …` and `<shim_exe> exec-helper …`: the small
    /// `shoal-shim` next to `shoal` when it is there ([`shim_exe_for`]), else `shoal` itself.
    pub shim_exe: PathBuf,
    pub bridge: shoal_net::BridgeConfig,
    /// A static init binary for `--init` (Docker's docker-init / tini).
    pub init_path: Option<PathBuf>,
}

/// The container engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: EngineConfig,
    images: ImageStore,
    net: shoal_net::BridgeNetwork,
    /// Overlay networks and the ingress routing mesh (programmed by the swarm agent).
    mesh: shoal_net::Mesh,
    /// Service discovery for containers on overlay networks (installed by the swarm agent).
    netns_hook: std::sync::RwLock<Option<Arc<dyn NetnsHook>>>,
    containers_root: PathBuf,
    cgroup_parent: String,
    containers: Mutex<BTreeMap<String, Arc<Container>>>,
    execs: Mutex<HashMap<String, Arc<exec::ExecInstance>>>,
    events: broadcast::Sender<Event>,
    recent_events: Mutex<VecDeque<Event>>,
}

/// One container in memory: its record plus the synchronisation around it.
pub(crate) struct Container {
    record: Mutex<ContainerRecord>,
    /// Serialises start/stop/restart/remove of this container.
    op: tokio::sync::Mutex<()>,
    /// Bumped on every state change; waiters watch it.
    changed: watch::Sender<u64>,
    /// Incremented each time the container exits (for `wait?condition=next-exit`).
    exits: Mutex<u64>,
    removed: Mutex<bool>,
    /// Attach sessions made before the container started; connected at start.
    pending_attach: Mutex<Vec<lifecycle::PendingAttach>>,
    /// The running healthcheck loop, if any.
    health_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// Held while the record file is written or the container's files removed (true once they
    /// are): one writer at a time, so no two share the temp file and none recreates a removed
    /// container's directory.
    disk: Mutex<bool>,
}

impl Container {
    fn new(record: ContainerRecord) -> Arc<Container> {
        let (changed, _) = watch::channel(0);
        Arc::new(Container {
            record: Mutex::new(record),
            op: tokio::sync::Mutex::new(()),
            changed,
            exits: Mutex::new(0),
            removed: Mutex::new(false),
            pending_attach: Mutex::new(Vec::new()),
            health_task: Mutex::new(None),
            disk: Mutex::new(false),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ContainerRecord> {
        lock(&self.record)
    }

    pub(crate) fn snapshot(&self) -> ContainerRecord {
        self.lock().clone()
    }

    pub(crate) fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Locks a std mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts shown by `docker info`.
#[derive(Debug, Clone, Default)]
pub struct EngineCounts {
    pub containers: usize,
    pub running: usize,
    pub paused: usize,
    pub stopped: usize,
    pub images: usize,
}

impl Engine {
    /// Opens the stores, sets up the bridge and re-adopts containers left by a previous daemon.
    pub async fn open(cfg: EngineConfig) -> Result<Engine> {
        let containers_root = cfg.data_root.join("containers");
        for dir in [&containers_root, &cfg.exec_root.join("shim"), &cfg.exec_root.join("bundles"), &cfg.exec_root.join("runtime")] {
            std::fs::create_dir_all(dir).map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
        }
        let image_root = cfg.data_root.join("image");
        let images = tokio::task::spawn_blocking(move || ImageStore::open(&image_root))
            .await
            .map_err(|e| EngineError::Internal(format!("opening the image store: {e}")))??;
        let bridge = cfg.bridge.clone();
        let net = tokio::task::spawn_blocking(move || shoal_net::BridgeNetwork::setup(bridge))
            .await
            .map_err(|e| EngineError::Internal(format!("setting up the bridge: {e}")))??;
        let mesh = tokio::task::spawn_blocking(|| shoal_net::Mesh::setup(shoal_net::MeshConfig::default()))
            .await
            .map_err(|e| EngineError::Internal(format!("setting up the overlay mesh: {e}")))??;
        let cgroup_parent = cgroup_parent_for(&cfg.data_root);
        let (events, _) = broadcast::channel(1024);
        let engine = Engine {
            inner: Arc::new(Inner {
                cfg,
                images,
                net,
                mesh,
                netns_hook: std::sync::RwLock::new(None),
                containers_root,
                cgroup_parent,
                containers: Mutex::new(BTreeMap::new()),
                execs: Mutex::new(HashMap::new()),
                events,
                recent_events: Mutex::new(VecDeque::new()),
            }),
        };
        engine.restore().await?;
        Ok(engine)
    }

    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    /// Installs (or with `None` removes) the hook called around overlay containers' namespaces.
    pub fn set_netns_hook(&self, hook: Option<Arc<dyn NetnsHook>>) {
        *self.inner.netns_hook.write().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// Where a bridge-mode container's network namespace is bound.
    pub fn netns_path(&self, container_id: &str) -> Result<PathBuf> {
        Ok(self.inner.net.netns_path(container_id)?)
    }

    pub(crate) fn netns_hook(&self) -> Option<Arc<dyn NetnsHook>> {
        self.inner.netns_hook.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The node's overlay data plane (blocking API: call it from `spawn_blocking`).
    pub fn mesh(&self) -> &shoal_net::Mesh {
        &self.inner.mesh
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    pub(crate) fn dirs(&self, id: &str) -> ContainerDirs {
        ContainerDirs::new(&self.inner.containers_root, id)
    }

    /// The shim's directory. Named by a 24-hex-digit ID prefix (96 bits, unique in practice) so
    /// the sockets inside stay under the 108-byte unix socket path limit.
    pub(crate) fn shim_dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.exec_root.join("shim").join(&id[..SHIM_DIR_ID_LEN.min(id.len())])
    }

    pub(crate) fn bundle_dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.exec_root.join("bundles").join(id)
    }

    pub(crate) fn runtime_root(&self) -> PathBuf {
        self.inner.cfg.exec_root.join("runtime")
    }

    pub(crate) fn cgroups_path(&self, id: &str) -> String {
        format!("/{}/{}", self.inner.cgroup_parent, id)
    }

    /// Finds a container by full ID, name (with or without `/`) or unique ID prefix.
    pub(crate) fn find(&self, reference: &str) -> Result<Arc<Container>> {
        let containers = lock(&self.inner.containers);
        if let Some(c) = containers.get(reference) {
            return Ok(c.clone());
        }
        let name = reference.strip_prefix('/').unwrap_or(reference);
        if let Some(c) = containers.values().find(|c| c.lock().name == name) {
            return Ok(c.clone());
        }
        if !reference.is_empty() && reference.chars().all(|c| c.is_ascii_hexdigit()) {
            let mut matches = containers.iter().filter(|(id, _)| id.starts_with(reference));
            if let Some((_, first)) = matches.next() {
                if matches.next().is_some() {
                    return Err(EngineError::Invalid(format!(
                        "multiple IDs found with provided prefix: {reference}"
                    )));
                }
                return Ok(first.clone());
            }
        }
        Err(EngineError::NoSuchContainer(reference.to_string()))
    }

    /// A receiver that sees every change of the container's record (state, health); its value
    /// is a counter, so `changed()` wakes on each change. Re-read the record with `inspect`.
    pub fn watch(&self, reference: &str) -> Result<watch::Receiver<u64>> {
        Ok(self.find(reference)?.changed.subscribe())
    }

    /// The record of one container.
    pub fn inspect(&self, reference: &str) -> Result<ContainerRecord> {
        Ok(self.find(reference)?.snapshot())
    }

    /// All containers, newest first.
    pub fn list(&self) -> Vec<ContainerRecord> {
        let containers: Vec<Arc<Container>> = lock(&self.inner.containers).values().cloned().collect();
        let mut records: Vec<ContainerRecord> = containers.iter().map(|c| c.snapshot()).collect();
        records.sort_by(|a, b| b.created.cmp(&a.created));
        records
    }

    pub fn counts(&self) -> EngineCounts {
        let mut counts = EngineCounts::default();
        for record in self.list() {
            counts.containers += 1;
            match record.state.status {
                Status::Running | Status::Restarting => counts.running += 1,
                _ => counts.stopped += 1,
            }
        }
        counts.images = self.inner.images.list().len();
        counts
    }

    /// IDs of images used by any container (for `rmi` conflict checks and `images` counts).
    pub fn image_in_use(&self, image_id: &str) -> bool {
        lock(&self.inner.containers).values().any(|c| c.lock().config.image_id == image_id)
    }

    /// Subscribes to events; also returns recent events for `since` replays.
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let rx = self.inner.events.subscribe();
        let recent = lock(&self.inner.recent_events).iter().cloned().collect();
        (recent, rx)
    }

    /// Records and broadcasts an event.
    pub fn emit(&self, kind: &'static str, action: &str, actor_id: &str, attributes: BTreeMap<String, String>) {
        let now = Utc::now();
        let event = Event {
            kind,
            action: action.to_string(),
            actor_id: actor_id.to_string(),
            attributes,
            time_nano: now.timestamp_nanos_opt().unwrap_or_default(),
        };
        {
            let mut recent = lock(&self.inner.recent_events);
            if recent.len() >= 1000 {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        let _ = self.inner.events.send(event);
    }

    pub(crate) fn emit_container(&self, action: &str, record: &ContainerRecord, extra: &[(&str, String)]) {
        let mut attributes = record.config.labels.clone();
        attributes.insert("name".into(), record.name.clone());
        attributes.insert("image".into(), record.config.image_ref.clone());
        for (k, v) in extra {
            attributes.insert((*k).to_string(), v.clone());
        }
        self.emit("container", action, &record.id, attributes);
    }

    /// Removes this daemon's (empty) cgroup parent in every hierarchy once no container is left,
    /// so a daemon leaves no cgroup behind. A non-empty parent is simply kept.
    pub(crate) fn remove_cgroup_parent(&self) {
        let parent = &self.inner.cgroup_parent;
        let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else { return };
        let mut candidates = vec![std::path::PathBuf::from("/sys/fs/cgroup").join(parent)];
        for entry in entries.flatten() {
            candidates.push(entry.path().join(parent));
        }
        for dir in candidates {
            if dir.is_dir() {
                if let Err(e) = std::fs::remove_dir(&dir) {
                    tracing::debug!(dir = %dir.display(), error = %e, "cgroup parent kept");
                }
            }
        }
    }

    /// Writes `c`'s current record to disk (fsync'ed), blocking. The record is read under the
    /// container's disk lock, so the newest state always lands last.
    pub(crate) fn write_record(&self, c: &Container) -> Result<()> {
        let removed = lock(&c.disk);
        if *removed {
            return Ok(());
        }
        let record = c.snapshot();
        persist::write_json_atomic(&self.dirs(&record.id).record(), &record)
    }

    /// [`Engine::write_record`] on a blocking thread: the fsyncs never stall the runtime.
    pub(crate) async fn persist(&self, c: &Arc<Container>) -> Result<()> {
        let (this, c) = (self.clone(), c.clone());
        tokio::task::spawn_blocking(move || this.write_record(&c))
            .await
            .map_err(|e| EngineError::Internal(format!("persisting a container record: {e}")))?
    }
}

/// A cgroup parent unique to this daemon, so daemons sharing a machine never share cgroups.
/// The shim binary to use with `self_exe`: `shoal-shim` in the same directory if it exists
/// (built with the workspace), otherwise `self_exe` (which dispatches `shim` as well).
pub fn shim_exe_for(self_exe: &Path) -> PathBuf {
    let sibling = self_exe.with_file_name("shoal-shim");
    if sibling.is_file() {
        sibling
    } else {
        self_exe.to_path_buf()
    }
}

pub fn cgroup_parent_for(data_root: &Path) -> String {
    use sha2_lite::digest_hex8;
    format!("shoal-{}", digest_hex8(data_root.to_string_lossy().as_bytes()))
}

mod sha2_lite {
    /// First 8 hex chars of the SHA-256 of `data` (the cgroup-parent convention in CONTRACTS.md).
    pub fn digest_hex8(data: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(data);
        hex::encode(&digest[..4])
    }
}

/// A fresh 64-hex-character ID.
pub(crate) fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

//! shoal-store owns the replicated cluster state. It runs openraft (pinned with `=`, wrapped
//! behind this crate's API so no openraft type leaks out) with redb holding the Raft log, vote,
//! snapshots and the applied state in one file (`<dir>/raft.redb`); typed tables per object kind
//! with optimistic versions (`Version.Index` = the Raft index of the last write); and an event
//! stream of commits for the control loops. It must not know HTTP or containers.
//!
//! Reads ([`Store::view`]) come from in-memory persistent maps and never touch disk. Writes
//! ([`Store::update`]) are serialised (one writer at a time, like swarmkit's store lock), run a
//! closure against an overlay of the current state, and propose the accumulated actions as ONE
//! Raft entry; `update` returns after the entry is committed, applied and fsync'ed. Watchers get
//! one [`Commit`] per applied entry, in log order. A receiver that falls behind gets
//! `RecvError::Lagged`: it must then take a fresh [`Store::view`] (or [`Store::watch`] again)
//! and reconcile from that state.

mod core;
mod error;
mod metrics;
pub mod network;
mod raft;
mod state;

use std::path::Path;
use std::sync::Arc;

use shoal_types::{AnyObject, Kind, Object};
use tokio::sync::{broadcast, Mutex};

pub use crate::core::{Leadership, RaftStatus, StoreOptions};
pub use crate::error::StoreError;
pub use crate::metrics::CommitStats;
pub use crate::network::{RaftRpc, RaftTransport, TransportError, TransportFuture, UnreachableTransport};
pub use crate::state::Action;

use crate::core::Core;
use crate::raft::Applied;
use crate::state::{Codec, StoreAction, Tables};

/// Everything one Raft entry changed: `index` is the entry's log index, which is also the
/// `Version.Index` of every object it wrote.
pub type Commit = state::Commit<AnyObject>;
/// One change of a [`Commit`]; for `Delete`, `object` is the object that was removed.
pub type Change = state::Change<AnyObject>;

impl state::Change<AnyObject> {
    /// The object as a `T`, if it is one.
    pub fn get<T: Object>(&self) -> Option<&T> {
        T::from_any_ref(&self.object)
    }
    pub fn kind(&self) -> Kind {
        self.object.kind()
    }
}

/// The object model as the core sees it.
struct Model;

impl Codec for Model {
    type Object = AnyObject;

    fn decode(kind: &str, bytes: &[u8]) -> Result<AnyObject, String> {
        fn de<T: Object>(b: &[u8]) -> Result<AnyObject, String> {
            serde_json::from_slice::<T>(b).map(T::into_any).map_err(|e| e.to_string())
        }
        let kind: Kind = kind.parse().map_err(|e: shoal_types::ParseEnumError| e.to_string())?;
        match kind {
            Kind::Cluster => de::<shoal_types::Cluster>(bytes),
            Kind::Node => de::<shoal_types::Node>(bytes),
            Kind::Service => de::<shoal_types::Service>(bytes),
            Kind::Task => de::<shoal_types::Task>(bytes),
            Kind::Network => de::<shoal_types::Network>(bytes),
            Kind::Secret => de::<shoal_types::Secret>(bytes),
            Kind::Config => de::<shoal_types::Config>(bytes),
        }
    }

    fn encode(obj: &AnyObject) -> Result<Vec<u8>, String> {
        let r = match obj {
            AnyObject::Cluster(o) => serde_json::to_vec(o),
            AnyObject::Node(o) => serde_json::to_vec(o),
            AnyObject::Service(o) => serde_json::to_vec(o),
            AnyObject::Task(o) => serde_json::to_vec(o),
            AnyObject::Network(o) => serde_json::to_vec(o),
            AnyObject::Secret(o) => serde_json::to_vec(o),
            AnyObject::Config(o) => serde_json::to_vec(o),
        };
        r.map_err(|e| e.to_string())
    }

    fn stamp(obj: &mut AnyObject, prev: Option<&AnyObject>, index: u64, at: chrono::DateTime<chrono::Utc>) {
        let created = prev.map(|p| p.meta().created_at);
        let meta = obj.meta_mut();
        meta.version.index = index;
        meta.updated_at = at;
        meta.created_at = created.unwrap_or(at);
    }

    fn version(obj: &AnyObject) -> u64 {
        obj.meta().version.index
    }
}

fn get_in<T: Object>(tables: &Tables<AnyObject>, id: &str) -> Option<T> {
    tables.get(T::KIND.as_str(), id).and_then(|o| T::from_any_ref(o)).cloned()
}

fn find_in<T: Object>(tables: &Tables<AnyObject>, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
    match tables.table(T::KIND.as_str()) {
        Some(t) => t.values().filter_map(|o| T::from_any_ref(o)).filter(|o| pred(o)).cloned().collect(),
        None => Vec::new(),
    }
}

/// A consistent, immutable snapshot of the store. Cheap to take and to clone.
#[derive(Clone)]
pub struct ReadTx {
    state: Arc<Applied<AnyObject>>,
}

impl ReadTx {
    /// The object `id` of type `T`.
    pub fn get<T: Object>(&self, id: &str) -> Option<T> {
        get_in(&self.state.tables, id)
    }
    /// Every `T`, ordered by ID.
    pub fn list<T: Object>(&self) -> Vec<T> {
        find_in(&self.state.tables, |_: &T| true)
    }
    /// Every `T` matching `pred`, ordered by ID.
    pub fn find<T: Object>(&self, pred: impl FnMut(&T) -> bool) -> Vec<T> {
        find_in(&self.state.tables, pred)
    }
    /// Number of `T` objects.
    pub fn count<T: Object>(&self) -> usize {
        self.state.tables.table(T::KIND.as_str()).map_or(0, |t| t.len())
    }
    /// The Raft index this snapshot reflects (0 for an empty store).
    pub fn index(&self) -> u64 {
        self.state.last_applied.map_or(0, |l| l.index())
    }
}

/// A write transaction: reads see the current state plus this transaction's own writes.
pub struct WriteTx {
    tables: Tables<AnyObject>,
    actions: Vec<StoreAction>,
}

impl WriteTx {
    pub fn get<T: Object>(&self, id: &str) -> Option<T> {
        get_in(&self.tables, id)
    }
    pub fn list<T: Object>(&self) -> Vec<T> {
        find_in(&self.tables, |_: &T| true)
    }
    pub fn find<T: Object>(&self, pred: impl FnMut(&T) -> bool) -> Vec<T> {
        find_in(&self.tables, pred)
    }

    fn record<T: Object>(&mut self, action: Action, obj: T) -> Result<(), StoreError> {
        let data = serde_json::to_string(&obj)
            .map_err(|e| StoreError::Invalid(format!("encode {} {}: {e}", T::KIND, obj.id())))?;
        let id = obj.id().to_string();
        self.tables.insert(T::KIND.as_str(), &id, Arc::new(obj.into_any()));
        self.actions.push(StoreAction { action, kind: T::KIND.as_str().to_string(), id, data });
        Ok(())
    }

    /// Create `obj`. Fails with `AlreadyExists` if its ID is taken. `Version`, `CreatedAt` and
    /// `UpdatedAt` are set when the write commits.
    pub fn create<T: Object>(&mut self, obj: T) -> Result<(), StoreError> {
        if obj.id().is_empty() {
            return Err(StoreError::Invalid(format!("{} without an id", T::KIND)));
        }
        if self.tables.get(T::KIND.as_str(), obj.id()).is_some() {
            return Err(StoreError::AlreadyExists { kind: T::KIND.to_string(), id: obj.id().to_string() });
        }
        self.record(Action::Create, obj)
    }

    /// Replace the stored object. Fails with `NotFound`, or `SequenceConflict` if
    /// `obj.meta().version` is not the stored version.
    pub fn update<T: Object>(&mut self, obj: T) -> Result<(), StoreError> {
        let Some(cur) = self.tables.get(T::KIND.as_str(), obj.id()) else {
            return Err(StoreError::NotFound { kind: T::KIND.to_string(), id: obj.id().to_string() });
        };
        if cur.meta().version.index != obj.meta().version.index {
            return Err(StoreError::SequenceConflict);
        }
        self.record(Action::Update, obj)
    }

    /// Delete the `T` with `id`. Fails with `NotFound`.
    pub fn delete<T: Object>(&mut self, id: &str) -> Result<(), StoreError> {
        if self.tables.remove(T::KIND.as_str(), id).is_none() {
            return Err(StoreError::NotFound { kind: T::KIND.to_string(), id: id.to_string() });
        }
        self.actions.push(StoreAction {
            action: Action::Delete,
            kind: T::KIND.as_str().to_string(),
            id: id.to_string(),
            data: String::new(),
        });
        Ok(())
    }

    /// Number of changes recorded so far.
    pub fn len(&self) -> usize {
        self.actions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

struct Inner {
    core: Core<Model>,
    write_lock: Mutex<()>,
}

/// The replicated store. Cloning shares it; the Raft node stops when the last clone is dropped
/// (or on [`Store::shutdown`]).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.inner.core.dir()).field("raft_id", &self.raft_id()).finish()
    }
}

impl Store {
    /// Open (or create) the store in `dir`. A fresh store becomes a one-member Raft group with a
    /// random (or the given) Raft id; an existing one recovers from disk. Returns once this node
    /// leads a single-member group and every entry in its log is applied.
    pub async fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let core = Core::<Model>::open(dir, opts).await?;
        Ok(Store { inner: Arc::new(Inner { core, write_lock: Mutex::new(()) }) })
    }

    /// A consistent snapshot of the applied state.
    pub fn view(&self) -> ReadTx {
        ReadTx { state: self.inner.core.current() }
    }

    /// Run `f` as one write transaction and commit its changes as one Raft entry. Serialised with
    /// every other `update`. If `f` fails nothing is written; if it records no change nothing is
    /// committed. Returns after the entry is committed, applied and durable.
    pub async fn update<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut WriteTx) -> Result<R, StoreError> + Send,
        R: Send,
    {
        let _guard = self.inner.write_lock.lock().await;
        let mut tx = WriteTx { tables: self.inner.core.current().tables.clone(), actions: Vec::new() };
        let r = f(&mut tx)?;
        if !tx.actions.is_empty() {
            self.inner.core.propose(tx.actions).await?;
        }
        Ok(r)
    }

    /// A snapshot plus a stream of every commit applied after it (no gap, no duplicate).
    /// On `RecvError::Lagged`, take a fresh `view()`/`watch()` and reconcile.
    pub fn watch(&self) -> (ReadTx, broadcast::Receiver<Arc<Commit>>) {
        let (state, rx) = self.inner.core.watch();
        (ReadTx { state }, rx)
    }

    /// This node's Raft id (persisted in the store).
    pub fn raft_id(&self) -> u64 {
        self.inner.core.node_id()
    }

    /// Raft position, leadership and members of this node.
    pub fn raft_status(&self) -> RaftStatus {
        self.inner.core.status()
    }

    /// Durable-commit (fsync) latency of every store in this process.
    pub fn commit_stats() -> CommitStats {
        metrics::commit_stats()
    }

    /// Build a snapshot now (normally done every `snapshot_interval` entries) and wait until one
    /// covering the current applied index exists.
    pub async fn snapshot(&self) -> Result<u64, StoreError> {
        let index = self.view().index();
        self.inner.core.trigger_snapshot().await?;
        self.inner.core.wait_snapshot_at_least(index, std::time::Duration::from_secs(30)).await?;
        Ok(index)
    }

    /// Serve a Raft message received from a peer manager; returns the reply bytes.
    pub async fn handle_raft_rpc(&self, rpc: RaftRpc, body: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.inner.core.handle_rpc(rpc, body).await
    }

    /// Who leads, as this node sees it; changes when leadership moves (a new term, a leader
    /// elected or lost). Manager components start and stop their leader-only work from it.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<Leadership> {
        self.inner.core.leadership()
    }

    /// Add a manager as a non-voting learner and wait until it has caught up (leader only:
    /// `NotLeader` elsewhere).
    pub async fn add_learner(&self, raft_id: u64, addr: &str) -> Result<(), StoreError> {
        self.inner.core.add_learner(raft_id, addr).await
    }

    /// Set the voting members; every new voter must already be a learner (leader only).
    pub async fn change_voters(&self, raft_ids: Vec<u64>) -> Result<(), StoreError> {
        self.inner.core.change_voters(raft_ids).await
    }

    /// Add a manager at `addr` as a learner, wait until it has caught up, then make it a voter
    /// (leader only). A no-op for a member that already votes.
    pub async fn add_voter(&self, raft_id: u64, addr: &str) -> Result<(), StoreError> {
        self.inner.core.add_voter(raft_id, addr).await
    }

    /// Remove a member (voter or learner) from the group (leader only). Unknown ids are a no-op.
    /// A leader that removes itself hands leadership to another voter shortly after.
    pub async fn remove_member(&self, raft_id: u64) -> Result<(), StoreError> {
        self.inner.core.remove_member(raft_id).await
    }

    /// Record `addr` as the address of member `raft_id` (leader only), e.g. a manager whose
    /// store was created before its address was known.
    pub async fn set_member_addr(&self, raft_id: u64, addr: &str) -> Result<(), StoreError> {
        self.inner.core.set_member_addr(raft_id, addr).await
    }

    /// Hand leadership to voter `raft_id` (leader only; best effort, returns at once).
    pub async fn transfer_leader(&self, raft_id: u64) -> Result<(), StoreError> {
        self.inner.core.transfer_leader(raft_id).await
    }

    /// Stop the Raft node. Further writes fail; reads keep working on the last state.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.inner.core.shutdown().await
    }
}

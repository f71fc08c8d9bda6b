//! openraft glue: the type config, redb-backed log storage and state machine, and the network
//! adapter over [`RaftTransport`]. Nothing here is public outside the crate.
//!
//! On-disk layout (one redb file, `<dir>/raft.redb`):
//! - `raft_log`   u64 index -> JSON of the openraft entry
//! - `raft_meta`  "vote", "last_purged", "node_id" -> JSON
//! - `sm_meta`    "last_applied", "membership" -> JSON (written in the same transaction as objects)
//! - `snapshot`   "meta", "data" -> the last built/installed snapshot
//! - `obj/<kind>` object id -> stamped object JSON, one table per kind
//!
//! Every write transaction commits with `Durability::Immediate` (fsync) before it is reported.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::TryStreamExt;
use openraft::type_config::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::state::{apply_proposal, diff, Codec, Commit, DbOp, Proposal, Tables};

openraft::declare_raft_types!(
    /// shoal's openraft type configuration: u64 node ids, `BasicNode{addr}`, [`Proposal`] entries.
    pub TypeConfig:
        D = Proposal,
        R = (),
);

pub(crate) type Raft<M> = openraft::Raft<TypeConfig, StateMachine<M>>;

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
pub(crate) const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
pub(crate) const OBJ_PREFIX: &str = "obj/";

fn io_err(context: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {e}"))
}

fn to_json<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn from_json<T: for<'de> Deserialize<'de>>(b: &[u8]) -> io::Result<T> {
    serde_json::from_slice(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Start a durable write transaction.
pub(crate) fn begin_write(db: &Database) -> io::Result<redb::WriteTransaction> {
    let mut tx = db.begin_write().map_err(|e| io_err("begin write", e))?;
    tx.set_durability(Durability::Immediate).map_err(|e| io_err("set durability", e))?;
    Ok(tx)
}

pub(crate) fn commit(tx: redb::WriteTransaction) -> io::Result<()> {
    let t = Instant::now();
    tx.commit().map_err(|e| io_err("commit", e))?;
    crate::metrics::record_commit(t.elapsed());
    Ok(())
}

/// Read one JSON value from a `&str -> &[u8]` table.
pub(crate) fn get_meta<T: for<'de> Deserialize<'de>>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> io::Result<Option<T>> {
    let tx = db.begin_read().map_err(|e| io_err("begin read", e))?;
    let t = match tx.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(io_err("open table", e)),
    };
    match t.get(key).map_err(|e| io_err("read", e))? {
        Some(v) => Ok(Some(from_json(v.value())?)),
        None => Ok(None),
    }
}

pub(crate) fn put_meta<T: Serialize>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
) -> io::Result<()> {
    let bytes = to_json(value)?;
    let tx = begin_write(db)?;
    {
        let mut t = tx.open_table(table).map_err(|e| io_err("open table", e))?;
        t.insert(key, bytes.as_slice()).map_err(|e| io_err("write", e))?;
    }
    commit(tx)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| io_err("blocking task", e))?
}

// ------------------------------------------------------------------------------------------
// Log storage

#[derive(Clone)]
pub(crate) struct LogStore {
    pub(crate) db: Arc<Database>,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let tx = self.db.begin_read().map_err(|e| io_err("begin read", e))?;
        let t = tx.open_table(LOG).map_err(|e| io_err("open raft_log", e))?;
        let mut out = Vec::new();
        for item in t.range(start..).map_err(|e| io_err("read raft_log", e))? {
            let (k, v) = item.map_err(|e| io_err("read raft_log", e))?;
            if !range.contains(&k.value()) {
                break;
            }
            out.push(from_json::<EntryOf<TypeConfig>>(v.value())?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        get_meta(&self.db, RAFT_META, "vote")
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogIdOf<TypeConfig>> = get_meta(&self.db, RAFT_META, "last_purged")?;
        let tx = self.db.begin_read().map_err(|e| io_err("begin read", e))?;
        let t = tx.open_table(LOG).map_err(|e| io_err("open raft_log", e))?;
        let last = match t.last().map_err(|e| io_err("read raft_log", e))? {
            Some((_, v)) => Some(from_json::<EntryOf<TypeConfig>>(v.value())?.log_id()),
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || put_meta(&db, RAFT_META, "vote", &vote)).await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.index(), to_json(&e)?));
        }
        let db = self.db.clone();
        // The entries must be readable when this returns, and durable before the callback:
        // one fsync'ed redb commit gives both.
        let res = blocking(move || {
            let tx = begin_write(&db)?;
            {
                let mut t = tx.open_table(LOG).map_err(|e| io_err("open raft_log", e))?;
                for (i, b) in &rows {
                    t.insert(*i, b.as_slice()).map_err(|e| io_err("append raft_log", e))?;
                }
            }
            commit(tx)
        })
        .await;
        match res {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        let db = self.db.clone();
        blocking(move || {
            let tx = begin_write(&db)?;
            {
                let mut t = tx.open_table(LOG).map_err(|e| io_err("open raft_log", e))?;
                t.retain_in(from.., |_, _| false).map_err(|e| io_err("truncate raft_log", e))?;
            }
            commit(tx)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let db = self.db.clone();
        blocking(move || {
            let marker = to_json(&log_id)?;
            let tx = begin_write(&db)?;
            {
                let mut m = tx.open_table(RAFT_META).map_err(|e| io_err("open raft_meta", e))?;
                m.insert("last_purged", marker.as_slice()).map_err(|e| io_err("write raft_meta", e))?;
                let mut t = tx.open_table(LOG).map_err(|e| io_err("open raft_log", e))?;
                t.retain_in(..=log_id.index(), |_, _| false).map_err(|e| io_err("purge raft_log", e))?;
            }
            commit(tx)
        })
        .await
    }
}

// ------------------------------------------------------------------------------------------
// State machine

/// The applied state: object tables plus the Raft position they reflect.
pub(crate) struct Applied<O: Clone> {
    pub(crate) tables: Tables<O>,
    pub(crate) last_applied: Option<LogIdOf<TypeConfig>>,
    pub(crate) membership: StoredMembershipOf<TypeConfig>,
}

impl<O: Clone> Clone for Applied<O> {
    fn clone(&self) -> Self {
        Applied {
            tables: self.tables.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        }
    }
}

/// A state snapshot plus the commits applied after it.
pub(crate) type Watch<O> = (Arc<Applied<O>>, broadcast::Receiver<Arc<Commit<O>>>);

/// State shared between the state machine (writer) and readers/watchers.
pub(crate) struct Shared<M: Codec> {
    /// The current applied state. Held only to swap the pointer, clone it, or subscribe.
    current: Mutex<Arc<Applied<M::Object>>>,
    events: broadcast::Sender<Arc<Commit<M::Object>>>,
}

impl<M: Codec> Shared<M> {
    pub(crate) fn new(initial: Applied<M::Object>, capacity: usize) -> Self {
        let (events, _) = broadcast::channel(capacity);
        Shared { current: Mutex::new(Arc::new(initial)), events }
    }

    pub(crate) fn current(&self) -> Arc<Applied<M::Object>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Snapshot and subscription taken under the same lock the publisher holds, so no commit is
    /// lost or duplicated between them.
    pub(crate) fn watch(&self) -> Watch<M::Object> {
        let g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (g.clone(), self.events.subscribe())
    }

    fn publish(&self, next: Arc<Applied<M::Object>>, commits: Vec<Commit<M::Object>>) {
        let mut g = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *g = next;
        for c in commits {
            // No receivers is fine.
            let _ = self.events.send(Arc::new(c));
        }
    }
}

pub(crate) struct StateMachine<M: Codec> {
    pub(crate) db: Arc<Database>,
    pub(crate) shared: Arc<Shared<M>>,
}

/// Load the applied state (objects + meta) from redb.
pub(crate) fn load_applied<M: Codec>(db: &Database) -> io::Result<Applied<M::Object>> {
    let last_applied = get_meta(db, SM_META, "last_applied")?;
    let membership = get_meta(db, SM_META, "membership")?.unwrap_or_default();
    let mut tables = Tables::default();
    let tx = db.begin_read().map_err(|e| io_err("begin read", e))?;
    for h in tx.list_tables().map_err(|e| io_err("list tables", e))? {
        let name = h.name().to_string();
        let Some(kind) = name.strip_prefix(OBJ_PREFIX) else { continue };
        let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
        let t = tx.open_table(def).map_err(|e| io_err("open object table", e))?;
        for item in t.iter().map_err(|e| io_err("read object table", e))? {
            let (k, v) = item.map_err(|e| io_err("read object table", e))?;
            let obj = M::decode(kind, v.value()).map_err(|e| io_err(&format!("decode {kind} {}", k.value()), e))?;
            tables.insert(kind, k.value(), Arc::new(obj));
        }
    }
    Ok(Applied { tables, last_applied, membership })
}

fn write_sm_meta(tx: &redb::WriteTransaction, a: &Applied<impl Clone>) -> io::Result<()> {
    let mut m = tx.open_table(SM_META).map_err(|e| io_err("open sm_meta", e))?;
    m.insert("last_applied", to_json(&a.last_applied)?.as_slice())
        .map_err(|e| io_err("write sm_meta", e))?;
    m.insert("membership", to_json(&a.membership)?.as_slice())
        .map_err(|e| io_err("write sm_meta", e))?;
    Ok(())
}

fn write_ops(tx: &redb::WriteTransaction, ops: &[DbOp]) -> io::Result<()> {
    for op in ops {
        match op {
            DbOp::Put { kind, id, bytes } => {
                let name = format!("{OBJ_PREFIX}{kind}");
                let mut t = tx
                    .open_table(TableDefinition::<&str, &[u8]>::new(&name))
                    .map_err(|e| io_err("open object table", e))?;
                t.insert(id.as_str(), bytes.as_slice()).map_err(|e| io_err("write object", e))?;
            }
            DbOp::Del { kind, id } => {
                let name = format!("{OBJ_PREFIX}{kind}");
                let mut t = tx
                    .open_table(TableDefinition::<&str, &[u8]>::new(&name))
                    .map_err(|e| io_err("open object table", e))?;
                t.remove(id.as_str()).map_err(|e| io_err("delete object", e))?;
            }
        }
    }
    Ok(())
}

/// Snapshot payload: a full dump of the object tables.
#[derive(Serialize, Deserialize)]
struct SnapshotDump {
    objects: Vec<DumpedObject>,
}

#[derive(Serialize, Deserialize)]
struct DumpedObject {
    kind: String,
    id: String,
    data: String,
}

impl<M: Codec> RaftStateMachine<TypeConfig> for StateMachine<M> {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder<M>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let cur = self.shared.current();
        Ok((cur.last_applied, cur.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut next = (*self.shared.current()).clone();
        let mut commits = Vec::new();
        let mut ops = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(p) => {
                    let (changes, o) = apply_proposal::<M>(&mut next.tables, p, log_id.index())
                        .map_err(|e| io_err(&format!("apply entry {}", log_id.index()), e))?;
                    ops.extend(o);
                    if !changes.is_empty() {
                        commits.push(Commit { index: log_id.index(), changes });
                    }
                }
                EntryPayload::Membership(m) => {
                    next.membership = StoredMembershipOf::<TypeConfig>::new(Some(log_id), m.clone());
                }
            }
            next.last_applied = Some(log_id);
            if let Some(r) = responder {
                responders.push(r);
            }
        }
        let next = Arc::new(next);
        let db = self.db.clone();
        let n2 = next.clone();
        // Objects and last_applied in one fsync'ed transaction: after a crash the applied
        // state is exactly some prefix of the log.
        blocking(move || {
            let tx = begin_write(&db)?;
            write_ops(&tx, &ops)?;
            write_sm_meta(&tx, &n2)?;
            commit(tx)
        })
        .await?;
        self.shared.publish(next, commits);
        for r in responders {
            r.send(());
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), state: self.shared.current(), _m: std::marker::PhantomData }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let dump: SnapshotDump = from_json(&snapshot)?;
        let mut tables = Tables::default();
        let mut ops = Vec::with_capacity(dump.objects.len());
        for o in dump.objects {
            let obj = M::decode(&o.kind, o.data.as_bytes()).map_err(|e| io_err("decode snapshot object", e))?;
            tables.insert(&o.kind, &o.id, Arc::new(obj));
            ops.push(DbOp::Put { kind: o.kind, id: o.id, bytes: o.data.into_bytes() });
        }
        let next = Arc::new(Applied { tables, last_applied: meta.last_log_id, membership: meta.last_membership.clone() });
        let db = self.db.clone();
        let n2 = next.clone();
        let meta_bytes = to_json(meta)?;
        blocking(move || {
            let tx = begin_write(&db)?;
            let names: Vec<String> = tx
                .list_tables()
                .map_err(|e| io_err("list tables", e))?
                .map(|h| h.name().to_string())
                .filter(|n| n.starts_with(OBJ_PREFIX))
                .collect();
            for n in names {
                tx.delete_table(TableDefinition::<&str, &[u8]>::new(&n)).map_err(|e| io_err("drop object table", e))?;
            }
            write_ops(&tx, &ops)?;
            write_sm_meta(&tx, &n2)?;
            {
                let mut s = tx.open_table(SNAPSHOT).map_err(|e| io_err("open snapshot", e))?;
                s.insert("meta", meta_bytes.as_slice()).map_err(|e| io_err("write snapshot", e))?;
                s.insert("data", snapshot.as_slice()).map_err(|e| io_err("write snapshot", e))?;
            }
            commit(tx)
        })
        .await?;
        let old = self.shared.current();
        let changes = diff::<M>(&old.tables, &next.tables);
        let index = meta.last_log_id.map(|l| l.index()).unwrap_or(0);
        let commits = if changes.is_empty() { vec![] } else { vec![Commit { index, changes }] };
        self.shared.publish(next, commits);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        let db = self.db.clone();
        blocking(move || {
            let tx = db.begin_read().map_err(|e| io_err("begin read", e))?;
            let s = match tx.open_table(SNAPSHOT) {
                Ok(s) => s,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(io_err("open snapshot", e)),
            };
            let (Some(m), Some(d)) = (
                s.get("meta").map_err(|e| io_err("read snapshot", e))?,
                s.get("data").map_err(|e| io_err("read snapshot", e))?,
            ) else {
                return Ok(None);
            };
            Ok(Some(SnapshotOf::<TypeConfig, Vec<u8>> { meta: from_json(m.value())?, snapshot: d.value().to_vec() }))
        })
        .await
    }
}

pub(crate) struct SnapshotBuilder<M: Codec> {
    db: Arc<Database>,
    state: Arc<Applied<M::Object>>,
    _m: std::marker::PhantomData<fn() -> M>,
}

impl<M: Codec> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<M> {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let state = self.state.clone();
        let db = self.db.clone();
        blocking(move || {
            let meta = SnapshotMetaOf::<TypeConfig> {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
            };
            let mut objects = Vec::with_capacity(state.tables.len());
            for (kind, t) in state.tables.kinds.iter() {
                for (id, obj) in t.iter() {
                    let data = M::encode(obj).map_err(|e| io_err("encode snapshot object", e))?;
                    let data = String::from_utf8(data).map_err(|e| io_err("encode snapshot object", e))?;
                    objects.push(DumpedObject { kind: kind.clone(), id: id.clone(), data });
                }
            }
            let data = to_json(&SnapshotDump { objects })?;
            let tx = begin_write(&db)?;
            {
                let mut s = tx.open_table(SNAPSHOT).map_err(|e| io_err("open snapshot", e))?;
                s.insert("meta", to_json(&meta)?.as_slice()).map_err(|e| io_err("write snapshot", e))?;
                s.insert("data", data.as_slice()).map_err(|e| io_err("write snapshot", e))?;
            }
            commit(tx)?;
            Ok(SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot: data })
        })
        .await
    }
}

/// Ensure all fixed tables exist so readers never see `TableDoesNotExist` for them.
pub(crate) fn create_tables(db: &Database) -> io::Result<()> {
    let tx = begin_write(db)?;
    tx.open_table(LOG).map_err(|e| io_err("create raft_log", e))?;
    tx.open_table(RAFT_META).map_err(|e| io_err("create raft_meta", e))?;
    tx.open_table(SM_META).map_err(|e| io_err("create sm_meta", e))?;
    tx.open_table(SNAPSHOT).map_err(|e| io_err("create snapshot", e))?;
    commit(tx)
}

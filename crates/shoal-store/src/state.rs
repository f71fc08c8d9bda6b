//! The replicated state, independent of the object model: log entry payloads
//! ([`Proposal`] = a batch of [`StoreAction`]s), the in-memory tables, and the pure apply step.
//!
//! The object model plugs in through [`Codec`]: the core only needs to decode stored bytes,
//! encode them back, and stamp `Version.Index`/times onto an object when an entry is applied.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a change does: create, update or delete one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// One change inside a Raft entry: `kind`/`id` name the object, `data` is its JSON
/// (empty for `Delete`). Objects in the log are not yet stamped: the state machine sets
/// `Version.Index` (= the entry's log index) and the times when it applies the entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreAction {
    pub action: Action,
    pub kind: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
}

/// The application payload of one Raft log entry: applied atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposer's clock when the batch was proposed; every replica stamps this same time,
    /// so applying is deterministic.
    pub at: DateTime<Utc>,
    pub actions: Vec<StoreAction>,
}

/// How the core talks to the object model.
pub trait Codec: Send + Sync + 'static {
    type Object: Clone + Send + Sync + fmt::Debug + 'static;
    /// Decode an object of `kind` from its stored JSON.
    fn decode(kind: &str, bytes: &[u8]) -> Result<Self::Object, String>;
    /// Encode an object to its stored JSON.
    fn encode(obj: &Self::Object) -> Result<Vec<u8>, String>;
    /// Stamp an object being written by the entry at `index`, proposed at `at`. `prev` is the
    /// stored object for an update (`None` on create).
    fn stamp(obj: &mut Self::Object, prev: Option<&Self::Object>, index: u64, at: DateTime<Utc>);
    /// The object's `Version.Index`.
    fn version(obj: &Self::Object) -> u64;
}

/// One applied change, as published to watchers.
#[derive(Debug, Clone)]
pub struct Change<O> {
    pub action: Action,
    /// The object as stored after the change; for `Delete`, the object that was removed.
    pub object: Arc<O>,
}

/// Everything one Raft entry changed, published after it is durable and visible in `view()`.
#[derive(Debug, Clone)]
pub struct Commit<O> {
    /// The Raft log index of the entry (= `Version.Index` of every object it wrote).
    pub index: u64,
    pub changes: Vec<Change<O>>,
}

/// Per-kind persistent (structurally shared) maps: cloning is O(1), so views are cheap.
pub(crate) type Table<O> = imbl::OrdMap<String, Arc<O>>;

#[derive(Clone)]
pub(crate) struct Tables<O: Clone> {
    pub(crate) kinds: imbl::OrdMap<String, Table<O>>,
}

impl<O: Clone> Default for Tables<O> {
    fn default() -> Self {
        Tables { kinds: imbl::OrdMap::new() }
    }
}

impl<O: Clone> Tables<O> {
    pub(crate) fn get(&self, kind: &str, id: &str) -> Option<&Arc<O>> {
        self.kinds.get(kind).and_then(|t| t.get(id))
    }
    pub(crate) fn table(&self, kind: &str) -> Option<&Table<O>> {
        self.kinds.get(kind)
    }
    pub(crate) fn insert(&mut self, kind: &str, id: &str, obj: Arc<O>) -> Option<Arc<O>> {
        if !self.kinds.contains_key(kind) {
            self.kinds.insert(kind.to_string(), Table::new());
        }
        self.kinds.get_mut(kind).and_then(|t| t.insert(id.to_string(), obj))
    }
    pub(crate) fn remove(&mut self, kind: &str, id: &str) -> Option<Arc<O>> {
        self.kinds.get_mut(kind).and_then(|t| t.remove(id))
    }
    pub(crate) fn len(&self) -> usize {
        self.kinds.values().map(|t| t.len()).sum()
    }
}

/// A database write implied by applying an entry.
pub(crate) enum DbOp {
    Put { kind: String, id: String, bytes: Vec<u8> },
    Del { kind: String, id: String },
}

/// What applying one proposal produced: published changes and database writes.
pub(crate) type ApplyOutput<O> = (Vec<Change<O>>, Vec<DbOp>);

/// Apply one proposal to `tables` (pure: no I/O). Returns the published changes and the
/// database writes. Applying is total: a create over an existing id or a delete of a missing id
/// (which the write transaction prevents on the leader) is applied as an upsert / no-op so that
/// every replica stays identical.
pub(crate) fn apply_proposal<M: Codec>(
    tables: &mut Tables<M::Object>,
    p: &Proposal,
    index: u64,
) -> Result<ApplyOutput<M::Object>, String> {
    let mut changes = Vec::with_capacity(p.actions.len());
    let mut ops = Vec::with_capacity(p.actions.len());
    for a in &p.actions {
        match a.action {
            Action::Create | Action::Update => {
                let mut obj = M::decode(&a.kind, a.data.as_bytes())
                    .map_err(|e| format!("decode {} {}: {e}", a.kind, a.id))?;
                let prev = tables.get(&a.kind, &a.id).cloned();
                let action = if prev.is_some() { Action::Update } else { Action::Create };
                M::stamp(&mut obj, prev.as_deref(), index, p.at);
                let bytes = M::encode(&obj).map_err(|e| format!("encode {} {}: {e}", a.kind, a.id))?;
                let obj = Arc::new(obj);
                tables.insert(&a.kind, &a.id, obj.clone());
                ops.push(DbOp::Put { kind: a.kind.clone(), id: a.id.clone(), bytes });
                changes.push(Change { action, object: obj });
            }
            Action::Delete => {
                if let Some(old) = tables.remove(&a.kind, &a.id) {
                    ops.push(DbOp::Del { kind: a.kind.clone(), id: a.id.clone() });
                    changes.push(Change { action: Action::Delete, object: old });
                }
            }
        }
    }
    Ok((changes, ops))
}

/// The changes that turn `old` into `new` (used when a snapshot replaces the state).
pub(crate) fn diff<M: Codec>(old: &Tables<M::Object>, new: &Tables<M::Object>) -> Vec<Change<M::Object>> {
    let mut out = Vec::new();
    for (kind, nt) in new.kinds.iter() {
        let ot = old.table(kind);
        for (id, obj) in nt.iter() {
            match ot.and_then(|t| t.get(id)) {
                None => out.push(Change { action: Action::Create, object: obj.clone() }),
                Some(o) if M::version(o) != M::version(obj) => {
                    out.push(Change { action: Action::Update, object: obj.clone() })
                }
                Some(_) => {}
            }
        }
    }
    for (kind, ot) in old.kinds.iter() {
        let nt = new.table(kind);
        for (id, obj) in ot.iter() {
            if nt.and_then(|t| t.get(id)).is_none() {
                out.push(Change { action: Action::Delete, object: obj.clone() });
            }
        }
    }
    out
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal({} actions)", self.actions.len())
    }
}

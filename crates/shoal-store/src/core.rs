//! The untyped core: opens redb, runs openraft, proposes batches of [`StoreAction`]s and exposes
//! the applied state. Generic over the object model ([`Codec`]).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::impls::BasicNode;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use redb::Database;

use crate::network::{Network, RaftRpc, RaftTransport, Reply, UnreachableTransport};
use crate::raft::{self, Applied, LogStore, Raft, Shared, StateMachine, RAFT_META};
use crate::state::{Codec, Proposal, StoreAction};
use crate::StoreError;

/// How to open a store.
#[derive(Clone)]
pub struct StoreOptions {
    /// Raft id to use when the store is created; `None` picks a random one. Ignored (must match)
    /// once the store exists: the id is persisted.
    pub node_raft_id: Option<u64>,
    /// This manager's Raft address, recorded in the membership for peers to dial.
    pub addr: String,
    /// Build a snapshot every this many applied entries (swarmkit's `SnapshotInterval`).
    pub snapshot_interval: u64,
    /// Log entries kept behind a snapshot for slow followers (swarmkit's
    /// `LogEntriesForSlowFollowers`).
    pub keep_logs_after_snapshot: u64,
    /// How Raft messages reach other managers.
    pub transport: Arc<dyn RaftTransport>,
    /// A fresh store normally initialises a one-member group. With `join`, it stays empty and
    /// waits to be added (as a learner, then voter) by an existing leader.
    pub join: bool,
    /// How often the leader sends Raft heartbeats (ms).
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in this range (ms) starts an election.
    pub election_timeout_ms: (u64, u64),
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            node_raft_id: None,
            addr: "127.0.0.1:2377".to_string(),
            snapshot_interval: 10_000,
            keep_logs_after_snapshot: 500,
            transport: Arc::new(UnreachableTransport),
            join: false,
            heartbeat_ms: 200,
            election_timeout_ms: (1000, 2000),
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("node_raft_id", &self.node_raft_id)
            .field("addr", &self.addr)
            .field("snapshot_interval", &self.snapshot_interval)
            .field("keep_logs_after_snapshot", &self.keep_logs_after_snapshot)
            .field("join", &self.join)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("election_timeout_ms", &self.election_timeout_ms)
            .finish_non_exhaustive()
    }
}

/// Facts about the local Raft node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub node_id: u64,
    pub is_leader: bool,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Voting members: raft id -> address.
    pub voters: BTreeMap<u64, String>,
    /// Non-voting members (learners catching up): raft id -> address.
    pub learners: BTreeMap<u64, String>,
    /// On the leader: for every other member, how long ago it last acknowledged a heartbeat or
    /// replication (`None`: never since this node became leader). Empty on a follower.
    pub peer_ack_age: BTreeMap<u64, Option<Duration>>,
    /// On the leader: for every other member, the last log index it is known to hold
    /// (`None`: none yet). Empty on a follower.
    pub peer_matched: BTreeMap<u64, Option<u64>>,
    /// How long `open` waited for this node to become leader.
    pub time_to_leader: Option<Duration>,
}

impl RaftStatus {
    /// The address of the current leader, if it is known and a member.
    pub fn leader_addr(&self) -> Option<&str> {
        let leader = self.leader?;
        self.voters.get(&leader).or_else(|| self.learners.get(&leader)).map(String::as_str)
    }

    /// Every member (voters and learners): raft id -> address.
    pub fn members(&self) -> BTreeMap<u64, String> {
        let mut all = self.voters.clone();
        all.extend(self.learners.iter().map(|(k, v)| (*k, v.clone())));
        all
    }
}

/// Who leads, as this node sees it (see [`crate::Store::leadership`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leadership {
    /// This node is the leader.
    pub is_leader: bool,
    /// The current leader's raft id, if one is known.
    pub leader: Option<u64>,
    pub term: u64,
}

pub(crate) struct Core<M: Codec> {
    raft: Raft<M>,
    shared: Arc<Shared<M>>,
    node_id: u64,
    time_to_leader: Option<Duration>,
    dir: PathBuf,
    leadership: tokio::sync::watch::Receiver<Leadership>,
    /// Serialises membership changes (openraft refuses overlapping ones).
    membership_lock: tokio::sync::Mutex<()>,
}

impl<M: Codec> Drop for Core<M> {
    fn drop(&mut self) {
        // Stop the Raft tasks (they hold the database) even without an explicit shutdown.
        let raft = self.raft.clone();
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let _ = raft.shutdown().await;
            });
        }
    }
}

/// A failed write or membership change: `NotLeader` when this node cannot commit it.
fn write_error(context: &str, e: RaftError<raft::TypeConfig, ClientWriteError<raft::TypeConfig>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => StoreError::NotLeader,
        e => StoreError::internal(context, e),
    }
}

/// Follows the Raft metrics and publishes who leads, deduplicated. Ends when Raft stops.
fn spawn_leadership_watch<M: Codec>(raft: &Raft<M>) -> tokio::sync::watch::Receiver<Leadership> {
    let mut metrics = raft.metrics();
    let of = |m: &openraft::RaftMetrics<raft::TypeConfig>| Leadership {
        is_leader: m.state == ServerState::Leader,
        leader: m.current_leader,
        term: m.current_term,
    };
    let first = of(&metrics.borrow_watched());
    let (tx, rx) = tokio::sync::watch::channel(first);
    tokio::spawn(async move {
        while metrics.changed().await.is_ok() {
            let now = of(&metrics.borrow_watched());
            tx.send_if_modified(|cur| {
                if *cur == now {
                    false
                } else {
                    tracing::info!(is_leader = now.is_leader, leader = ?now.leader.map(|l| format!("{l:x}")), term = now.term, "raft leadership changed");
                    *cur = now;
                    true
                }
            });
        }
    });
    rx
}

fn internal(context: &str) -> impl Fn(io::Error) -> StoreError + '_ {
    move |e| StoreError::internal(context, e)
}

/// Open `path`, waiting a little if a previous instance in this process is still shutting down.
async fn open_db(path: PathBuf) -> Result<Database, StoreError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = path.clone();
        let res = tokio::task::spawn_blocking(move || Database::create(p))
            .await
            .map_err(|e| StoreError::internal("open database", e))?;
        match res {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(StoreError::internal(&format!("open {}", path.display()), e)),
        }
    }
}

impl<M: Codec> Core<M> {
    pub(crate) async fn open(dir: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::internal(&format!("create {}", dir.display()), e))?;
        let db = Arc::new(open_db(dir.join("raft.redb")).await?);

        let (node_id, applied) = {
            let db = db.clone();
            let want = opts.node_raft_id;
            tokio::task::spawn_blocking(move || -> Result<(u64, Applied<M::Object>), StoreError> {
                raft::create_tables(&db).map_err(internal("create tables"))?;
                let stored: Option<u64> = raft::get_meta(&db, RAFT_META, "node_id").map_err(internal("read node id"))?;
                let id = match (stored, want) {
                    (Some(s), Some(w)) if s != w => {
                        return Err(StoreError::Invalid(format!("store belongs to raft node {s:x}, not {w:x}")))
                    }
                    (Some(s), _) => s,
                    (None, w) => {
                        let id = w.unwrap_or_else(|| loop {
                            let r: u64 = rand::random();
                            if r != 0 {
                                break r;
                            }
                        });
                        raft::put_meta(&db, RAFT_META, "node_id", &id).map_err(internal("write node id"))?;
                        id
                    }
                };
                let applied = raft::load_applied::<M>(&db).map_err(internal("load state"))?;
                Ok((id, applied))
            })
            .await
            .map_err(|e| StoreError::internal("open", e))??
        };

        let shared = Arc::new(Shared::<M>::new(applied, 4096));
        let (election_min, election_max) = opts.election_timeout_ms;
        let config = Config {
            cluster_name: "shoal".to_string(),
            heartbeat_interval: opts.heartbeat_ms.max(10),
            election_timeout_min: election_min.max(opts.heartbeat_ms.max(10) * 3),
            election_timeout_max: election_max.max(election_min.max(opts.heartbeat_ms.max(10) * 3) + 1),
            // A restarted or partitioned manager first asks whether it could win, so it does not
            // depose a healthy leader by bumping the term.
            enable_pre_vote: Some(true),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_interval.max(1)),
            max_in_snapshot_log_to_keep: opts.keep_logs_after_snapshot,
            // Purge as soon as a snapshot allows it (the purge point only moves on snapshots).
            purge_batch_size: 1,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::internal("raft config", e))?;

        let raft = Raft::<M>::new(
            node_id,
            Arc::new(config),
            Network { transport: opts.transport.clone() },
            LogStore { db: db.clone() },
            StateMachine { db: db.clone(), shared: shared.clone() },
        )
        .await
        .map_err(|e| StoreError::internal("start raft", e))?;

        let started = Instant::now();
        let fresh = !raft.is_initialized().await.map_err(|e| StoreError::internal("raft", e))?
            && !opts.join;
        if fresh {
            let mut members = BTreeMap::new();
            members.insert(node_id, BasicNode::new(&opts.addr));
            raft.initialize(members).await.map_err(|e| StoreError::internal("initialize raft", e))?;
        }
        // A fresh store was just initialised with itself as the only voter; metrics may not show
        // that membership yet.
        let voters: Vec<u64> = raft.metrics().borrow_watched().membership_config.voter_ids().collect();
        let mut time_to_leader = None;
        if fresh || voters == [node_id] {
            // Sole voter: no one else can win, so skip the election timeout.
            let _ = raft.trigger().elect(false).await;
            let m = raft
                .wait(Some(Duration::from_secs(10)))
                .state(ServerState::Leader, "become leader")
                .await
                .map_err(|e| StoreError::internal("wait for leadership", e))?;
            time_to_leader = Some(started.elapsed());
            // Everything already in the log (incl. this term's blank entry) is applied before
            // the store serves reads, so `view()` shows every acknowledged write.
            raft.wait(Some(Duration::from_secs(30)))
                .applied_index_at_least(m.last_log_index, "apply recovered log")
                .await
                .map_err(|e| StoreError::internal("wait for recovery", e))?;
        }
        tracing::info!(node_id = %format!("{node_id:x}"), ?time_to_leader, fresh, "store opened");
        let leadership = spawn_leadership_watch(&raft);
        Ok(Core {
            raft,
            shared,
            node_id,
            time_to_leader,
            dir: dir.to_path_buf(),
            leadership,
            membership_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn leadership(&self) -> tokio::sync::watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    pub(crate) fn current(&self) -> Arc<Applied<M::Object>> {
        self.shared.current()
    }

    pub(crate) fn watch(&self) -> raft::Watch<M::Object> {
        self.shared.watch()
    }

    /// Propose one entry and wait until it is committed and applied. Returns its log index.
    pub(crate) async fn propose(&self, actions: Vec<StoreAction>) -> Result<u64, StoreError> {
        let p = Proposal { at: Utc::now(), actions };
        match self.raft.client_write(p).await {
            Ok(resp) => Ok(resp.log_id.index()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(StoreError::NotLeader),
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => Err(StoreError::NotLeader),
            Err(e) => Err(StoreError::internal("raft write", e)),
        }
    }

    pub(crate) fn node_id(&self) -> u64 {
        self.node_id
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn status(&self) -> RaftStatus {
        use openraft::Instant as _;
        let m = self.raft.metrics().borrow_watched().clone();
        let learners: std::collections::BTreeSet<u64> = m.membership_config.membership().learner_ids().collect();
        RaftStatus {
            node_id: self.node_id,
            is_leader: m.state == ServerState::Leader,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index()),
            snapshot_index: m.snapshot.map(|l| l.index()),
            purged_index: m.purged.map(|l| l.index()),
            voters: m
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| m.membership_config.voter_ids().any(|v| v == **id))
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            learners: m
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| learners.contains(id))
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            peer_ack_age: m
                .heartbeat
                .as_ref()
                .map(|h| {
                    h.iter()
                        .filter(|(id, _)| **id != self.node_id)
                        .map(|(id, at)| (*id, at.as_ref().map(|t| t.elapsed())))
                        .collect()
                })
                .unwrap_or_default(),
            peer_matched: m
                .replication
                .as_ref()
                .map(|r| r.iter().filter(|(id, _)| **id != self.node_id).map(|(id, l)| (*id, l.as_ref().map(|l| l.index()))).collect())
                .unwrap_or_default(),
            time_to_leader: self.time_to_leader,
        }
    }

    pub(crate) async fn trigger_snapshot(&self) -> Result<(), StoreError> {
        self.raft.trigger().snapshot().await.map_err(|e| StoreError::internal("trigger snapshot", e))
    }

    pub(crate) async fn wait_snapshot_at_least(&self, index: u64, timeout: Duration) -> Result<(), StoreError> {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.snapshot.is_some_and(|s| s.index() >= index), "snapshot")
            .await
            .map(|_| ())
            .map_err(|e| StoreError::internal("wait for snapshot", e))
    }

    pub(crate) async fn add_learner(&self, id: u64, addr: &str) -> Result<(), StoreError> {
        let _g = self.membership_lock.lock().await;
        self.raft.add_learner(id, BasicNode::new(addr), true).await.map(|_| ()).map_err(|e| write_error("add learner", e))
    }

    pub(crate) async fn change_voters(&self, voters: Vec<u64>) -> Result<(), StoreError> {
        let _g = self.membership_lock.lock().await;
        let set: std::collections::BTreeSet<u64> = voters.into_iter().collect();
        self.raft.change_membership(set, false).await.map(|_| ()).map_err(|e| write_error("change membership", e))
    }

    /// Add `id` (at `addr`) as a learner, wait until it has caught up, then make it a voter.
    pub(crate) async fn add_voter(&self, id: u64, addr: &str) -> Result<(), StoreError> {
        let _g = self.membership_lock.lock().await;
        let is_voter = self.raft.metrics().borrow_watched().membership_config.voter_ids().any(|v| v == id);
        if is_voter {
            return Ok(());
        }
        self.raft.add_learner(id, BasicNode::new(addr), true).await.map_err(|e| write_error("add learner", e))?;
        let ids: std::collections::BTreeSet<u64> = [id].into();
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(ids), true)
            .await
            .map(|_| ())
            .map_err(|e| write_error("add voter", e))
    }

    /// Remove `id` from the group (voter or learner). Removing an unknown id is a no-op.
    pub(crate) async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        let _g = self.membership_lock.lock().await;
        let (is_voter, is_learner) = {
            let m = self.raft.metrics().borrow_watched().clone();
            let voter = m.membership_config.voter_ids().any(|v| v == id);
            let learner = m.membership_config.membership().learner_ids().any(|l| l == id);
            (voter, learner)
        };
        let ids: std::collections::BTreeSet<u64> = [id].into();
        if is_voter {
            // `retain = false`: the removed voter is not kept as a learner.
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(ids), false)
                .await
                .map(|_| ())
                .map_err(|e| write_error("remove voter", e))
        } else if is_learner {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(ids), false)
                .await
                .map(|_| ())
                .map_err(|e| write_error("remove learner", e))
        } else {
            Ok(())
        }
    }

    /// Record `addr` as member `id`'s address (its voting status unchanged).
    pub(crate) async fn set_member_addr(&self, id: u64, addr: &str) -> Result<(), StoreError> {
        let _g = self.membership_lock.lock().await;
        let nodes: BTreeMap<u64, BasicNode> = [(id, BasicNode::new(addr))].into();
        self.raft
            .change_membership(ChangeMembers::SetNodes(nodes), true)
            .await
            .map(|_| ())
            .map_err(|e| write_error("set member address", e))
    }

    /// Ask the leader (this node) to hand leadership to `to`.
    pub(crate) async fn transfer_leader(&self, to: u64) -> Result<(), StoreError> {
        self.raft.trigger().transfer_leader(to).await.map_err(|e| StoreError::internal("transfer leadership", e))
    }

    /// Serve one Raft message from a peer (see [`crate::network`]).
    pub(crate) async fn handle_rpc(&self, rpc: RaftRpc, body: &[u8]) -> Result<Vec<u8>, StoreError> {
        fn de<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
            serde_json::from_slice(b).map_err(|e| StoreError::Invalid(format!("raft message: {e}")))
        }
        fn reply<T: serde::Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Result<Vec<u8>, StoreError> {
            let r = match r {
                Ok(v) => Reply::Ok(v),
                Err(e) => Reply::Err(e.to_string()),
            };
            serde_json::to_vec(&r).map_err(|e| StoreError::internal("encode raft reply", e))
        }
        match rpc {
            RaftRpc::AppendEntries => reply(self.raft.append_entries(de(body)?).await),
            RaftRpc::Vote => reply(self.raft.vote(de(body)?).await),
            RaftRpc::PreVote => reply(self.raft.pre_vote(de(body)?).await),
            RaftRpc::Snapshot => {
                let (vote, meta, data): (openraft::type_config::alias::VoteOf<raft::TypeConfig>, _, Vec<u8>) = de(body)?;
                let snap = openraft::type_config::alias::SnapshotOf::<raft::TypeConfig, Vec<u8>> { meta, snapshot: data };
                reply(self.raft.install_full_snapshot(vote, snap).await)
            }
            RaftRpc::TransferLeader => reply(self.raft.handle_transfer_leader(de(body)?).await),
        }
    }

    pub(crate) async fn shutdown(&self) -> Result<(), StoreError> {
        self.raft.shutdown().await.map_err(|e| StoreError::internal("shutdown raft", e))
    }
}

#[cfg(test)]
mod tests {
    //! Core-level smoke tests with a schemaless JSON codec.
    use super::*;
    use crate::state::Action;

    struct Json;
    impl Codec for Json {
        type Object = serde_json::Value;
        fn decode(_kind: &str, bytes: &[u8]) -> Result<Self::Object, String> {
            serde_json::from_slice(bytes).map_err(|e| e.to_string())
        }
        fn encode(obj: &Self::Object) -> Result<Vec<u8>, String> {
            serde_json::to_vec(obj).map_err(|e| e.to_string())
        }
        fn stamp(obj: &mut Self::Object, _prev: Option<&Self::Object>, index: u64, at: chrono::DateTime<Utc>) {
            obj["Version"] = serde_json::json!({ "Index": index });
            obj["UpdatedAt"] = serde_json::json!(at);
        }
        fn version(obj: &Self::Object) -> u64 {
            obj["Version"]["Index"].as_u64().unwrap_or(0)
        }
    }

    fn put(id: &str, v: u64) -> StoreAction {
        StoreAction { action: Action::Create, kind: "thing".into(), id: id.into(), data: format!("{{\"v\":{v}}}") }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn core_propose_apply_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let core = Core::<Json>::open(dir.path(), StoreOptions::default()).await.unwrap();
        let (_, mut rx) = core.watch();
        let i1 = core.propose(vec![put("a", 1), put("b", 2)]).await.unwrap();
        let i2 = core.propose(vec![put("a", 3)]).await.unwrap();
        assert!(i2 > i1);
        let c = rx.recv().await.unwrap();
        assert_eq!(c.index, i1);
        assert_eq!(c.changes.len(), 2);
        let c = rx.recv().await.unwrap();
        assert_eq!(c.index, i2);
        assert_eq!(c.changes[0].action, Action::Update);
        let cur = core.current();
        assert_eq!(Json::version(cur.tables.get("thing", "a").unwrap()), i2);
        let st = core.status();
        eprintln!("status: {st:?}");
        assert!(st.is_leader);
        core.shutdown().await.unwrap();
        drop(core);
        let core = Core::<Json>::open(dir.path(), StoreOptions::default()).await.unwrap();
        let cur = core.current();
        assert_eq!(cur.tables.get("thing", "a").unwrap()["v"], 3);
        assert_eq!(Json::version(cur.tables.get("thing", "b").unwrap()), i1);
        let i3 = core.propose(vec![put("c", 1)]).await.unwrap();
        assert!(i3 > i2);
        eprintln!("reopen status: {:?}", core.status());
    }
}

//! Two managers in one process over an in-memory `RaftTransport`: exercises the transport seam,
//! snapshot installation on a joining node, and membership changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_store::{
    Action, RaftRpc, RaftTransport, Store, StoreError, StoreOptions, TransportError, TransportFuture,
};
use shoal_types::{new_id, Service, ServiceSpec};

#[derive(Default)]
struct Mesh {
    nodes: Mutex<HashMap<u64, Store>>,
}

struct MeshTransport(Arc<Mesh>);

impl RaftTransport for MeshTransport {
    fn call(&self, target: u64, addr: &str, rpc: RaftRpc, body: Vec<u8>) -> TransportFuture {
        let store = self.0.nodes.lock().unwrap().get(&target).cloned();
        let addr = addr.to_string();
        Box::pin(async move {
            let Some(store) = store else { return Err(TransportError::Unreachable(addr)) };
            store.handle_raft_rpc(rpc, &body).await.map_err(|e| TransportError::Network(e.to_string()))
        })
    }
}

fn svc(name: &str) -> Service {
    Service { id: new_id(), spec: ServiceSpec { name: name.to_string(), ..Default::default() }, ..Default::default() }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_manager_joins_via_snapshot() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mesh = Arc::new(Mesh::default());
    let opts = |addr: &str, join: bool| StoreOptions {
        addr: addr.to_string(),
        snapshot_interval: 10,
        keep_logs_after_snapshot: 0,
        transport: Arc::new(MeshTransport(mesh.clone())),
        join,
        ..Default::default()
    };

    let a = Store::open(da.path(), opts("a:2377", false)).await.unwrap();
    mesh.nodes.lock().unwrap().insert(a.raft_id(), a.clone());
    for i in 0..30 {
        let s = svc(&format!("s{i}"));
        a.update(move |tx| tx.create(s)).await.unwrap();
    }
    eventually("leader purge", || a.raft_status().purged_index.is_some()).await;

    let b = Store::open(db.path(), opts("b:2377", true)).await.unwrap();
    assert!(!b.raft_status().is_leader);
    mesh.nodes.lock().unwrap().insert(b.raft_id(), b.clone());
    let (snap, mut rx) = b.watch();
    assert_eq!(snap.count::<Service>(), 0);

    // The leader's log was purged, so B catches up through a snapshot.
    a.add_learner(b.raft_id(), "b:2377").await.unwrap();
    eventually("learner catch-up", || b.view().count::<Service>() == 30).await;
    let mut created = 0;
    while let Ok(c) = rx.try_recv() {
        created += c.changes.iter().filter(|ch| ch.action == Action::Create).count();
    }
    assert_eq!(created, 30, "snapshot install published the objects it added");
    assert_eq!(a.view().list::<Service>(), b.view().list::<Service>());

    a.change_voters(vec![a.raft_id(), b.raft_id()]).await.unwrap();
    assert_eq!(a.raft_status().voters.len(), 2);
    let s = svc("after-join");
    let id = s.id.clone();
    a.update(move |tx| tx.create(s)).await.unwrap();
    eventually("replication to follower", || b.view().get::<Service>(&id).is_some()).await;
    assert_eq!(
        a.view().get::<Service>(&id).unwrap().meta.version,
        b.view().get::<Service>(&id).unwrap().meta.version
    );

    // Only the leader writes.
    let err = b.update(|tx| tx.create(svc("x"))).await.unwrap_err();
    assert_eq!(err, StoreError::NotLeader);

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    mesh.nodes.lock().unwrap().clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_fail_over_and_change_membership() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mesh = Arc::new(Mesh::default());
    let opts = |addr: &str, join: bool| StoreOptions {
        addr: addr.to_string(),
        transport: Arc::new(MeshTransport(mesh.clone())),
        join,
        heartbeat_ms: 50,
        election_timeout_ms: (300, 600),
        ..Default::default()
    };
    let a = Store::open(dirs[0].path(), opts("a:2377", false)).await.unwrap();
    mesh.nodes.lock().unwrap().insert(a.raft_id(), a.clone());
    assert!(a.leadership().borrow().is_leader);
    let mut stores = vec![a.clone()];
    for (i, name) in ["b:2377", "c:2377"].into_iter().enumerate() {
        let s = Store::open(dirs[i + 1].path(), opts(name, true)).await.unwrap();
        mesh.nodes.lock().unwrap().insert(s.raft_id(), s.clone());
        a.add_voter(s.raft_id(), name).await.unwrap();
        // Adding a voter twice is a no-op.
        a.add_voter(s.raft_id(), name).await.unwrap();
        stores.push(s);
    }
    let st = a.raft_status();
    assert_eq!(st.voters.len(), 3);
    assert!(st.learners.is_empty());
    assert_eq!(st.leader_addr(), Some("a:2377"));
    eventually("acks from both followers", || {
        let st = a.raft_status();
        st.peer_ack_age.len() == 2 && st.peer_ack_age.values().all(|age| age.is_some())
    })
    .await;
    let s = svc("replicated");
    let id = s.id.clone();
    a.update(move |tx| tx.create(s)).await.unwrap();
    for s in &stores {
        eventually("replication", || s.view().get::<Service>(&id).is_some()).await;
        assert_eq!(s.raft_status().leader, Some(a.raft_id()));
    }

    // The leader dies: one of the others takes over and keeps writing.
    mesh.nodes.lock().unwrap().remove(&a.raft_id());
    a.shutdown().await.unwrap();
    let (b, c) = (stores[1].clone(), stores[2].clone());
    let watch = b.leadership();
    eventually("a new leader", || {
        let (lb, lc) = (b.raft_status(), c.raft_status());
        lb.leader.is_some() && lb.leader != Some(a.raft_id()) && lb.leader == lc.leader
    })
    .await;
    assert!(watch.has_changed().unwrap());
    let leader = if b.raft_status().is_leader { b.clone() } else { c.clone() };
    let follower = if b.raft_status().is_leader { c.clone() } else { b.clone() };
    assert!(leader.leadership().borrow().is_leader);
    assert!(!follower.leadership().borrow().is_leader);
    let s = svc("after-failover");
    let id2 = s.id.clone();
    leader.update(move |tx| tx.create(s)).await.unwrap();
    eventually("replication after failover", || follower.view().get::<Service>(&id2).is_some()).await;
    eventually("the dead leader unacknowledged", || {
        leader.raft_status().peer_ack_age.get(&a.raft_id()).is_some_and(|age| age.is_none_or(|d| d > Duration::from_millis(200)))
    })
    .await;

    // Remove the dead member: two voters remain and still commit.
    leader.remove_member(a.raft_id()).await.unwrap();
    assert_eq!(leader.raft_status().voters.len(), 2);
    leader.remove_member(a.raft_id()).await.unwrap(); // unknown now: no-op
    let err = follower.remove_member(leader.raft_id()).await.unwrap_err();
    assert_eq!(err, StoreError::NotLeader);
    let s = svc("two-voters");
    leader.update(move |tx| tx.create(s)).await.unwrap();

    for s in [&b, &c] {
        s.shutdown().await.unwrap();
    }
    mesh.nodes.lock().unwrap().clear();
}

//! Store behaviour through the public API: single-node Raft on redb in a temp dir (no root).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use shoal_store::{Action, Store, StoreError, StoreOptions};
use shoal_types::{new_id, Object, Secret, Service, ServiceSpec};
use tokio::sync::broadcast::error::TryRecvError;

fn svc(name: &str) -> Service {
    Service { id: new_id(), spec: ServiceSpec { name: name.to_string(), ..Default::default() }, ..Default::default() }
}

async fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).await.expect("open store")
}

async fn create(store: &Store, s: Service) -> Service {
    let id = s.id.clone();
    store.update(move |tx| tx.create(s)).await.expect("create");
    store.view().get::<Service>(&id).expect("created service visible")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;

    let (a, b) = (svc("a"), svc("b"));
    let (aid, bid) = (a.id.clone(), b.id.clone());
    let n = store
        .update(|tx| {
            tx.create(a)?;
            tx.create(b)?;
            // Reads see the transaction's own writes.
            assert_eq!(tx.list::<Service>().len(), 2);
            Ok(tx.find::<Service>(|s| s.spec.name == "a").len())
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    let v = store.view();
    assert_eq!(v.list::<Service>().len(), 2);
    assert_eq!(v.count::<Service>(), 2);
    assert!(v.list::<Secret>().is_empty());

    // Duplicate ID.
    let dup = v.get::<Service>(&aid).unwrap();
    let err = store.update(move |tx| tx.create(dup)).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");

    // Update with the stored version.
    let mut a = v.get::<Service>(&aid).unwrap();
    a.spec.labels.insert("k".into(), "v".into());
    store.update(move |tx| tx.update(a)).await.unwrap();
    assert_eq!(store.view().get::<Service>(&aid).unwrap().spec.labels["k"], "v");

    // Delete; then deleting or updating it again is NotFound.
    store.update(|tx| tx.delete::<Service>(&bid)).await.unwrap();
    assert!(store.view().get::<Service>(&bid).is_none());
    let b2 = bid.clone();
    let err = store.update(move |tx| tx.delete::<Service>(&b2)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let mut ghost = svc("ghost");
    ghost.id = bid.clone();
    let err = store.update(move |tx| tx.update(ghost)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

    // A failing closure writes nothing, even what it did before failing.
    let before = store.view().index();
    let c = svc("c");
    let err = store
        .update(move |tx| {
            tx.create(c)?;
            Err::<(), _>(StoreError::Invalid("no".into()))
        })
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::Invalid("no".into()));
    assert_eq!(store.view().index(), before);
    assert_eq!(store.view().list::<Service>().len(), 1);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_raft_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let (_, mut rx) = store.watch();

    let (a, sec) = (svc("a"), Secret { id: new_id(), ..Default::default() });
    let (aid, sid) = (a.id.clone(), sec.id.clone());
    store
        .update(move |tx| {
            tx.create(a)?;
            tx.create(sec)
        })
        .await
        .unwrap();
    let c1 = rx.recv().await.unwrap();
    let v = store.view();
    let a1 = v.get::<Service>(&aid).unwrap();
    let s1 = v.get::<Secret>(&sid).unwrap();
    // Both objects of one entry carry that entry's index.
    assert_eq!(a1.meta().version.index, c1.index);
    assert_eq!(s1.meta().version.index, c1.index);
    assert_eq!(v.index(), c1.index);
    assert_eq!(a1.meta().created_at, a1.meta().updated_at);
    assert!(a1.meta().created_at > shoal_types::time::zero_time());

    let mut last = c1.index;
    let mut cur = a1.clone();
    for i in 0..3 {
        cur.spec.labels.insert("i".into(), i.to_string());
        let next = cur.clone();
        store.update(move |tx| tx.update(next)).await.unwrap();
        let c = rx.recv().await.unwrap();
        cur = store.view().get::<Service>(&aid).unwrap();
        assert!(c.index > last, "index must increase");
        assert_eq!(cur.meta().version.index, c.index);
        assert_eq!(cur.meta().created_at, a1.meta().created_at, "CreatedAt kept on update");
        assert!(cur.meta().updated_at >= a1.meta().updated_at);
        last = c.index;
    }
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let a = create(&store, svc("a")).await;

    let mut fresh = a.clone();
    fresh.spec.name = "a2".into();
    store.update(move |tx| tx.update(fresh)).await.unwrap();

    let before = store.view().index();
    let mut stale = a.clone();
    stale.spec.name = "a3".into();
    let err = store.update(move |tx| tx.update(stale)).await.unwrap_err();
    assert_eq!(err, StoreError::SequenceConflict);
    assert_eq!(err.to_string(), "update out of sequence");
    assert_eq!(store.view().index(), before);
    assert_eq!(store.view().get::<Service>(&a.id).unwrap().spec.name, "a2");
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_update_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let (_, mut rx) = store.watch();
    let before = store.raft_status().last_log_index;
    let r = store.update(|tx| Ok(tx.list::<Service>().len())).await.unwrap();
    assert_eq!(r, 0);
    assert_eq!(store.raft_status().last_log_index, before);
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_every_commit_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    create(&store, svc("before-watch")).await;

    let (snap, mut rx) = store.watch();
    let start = snap.index();
    assert_eq!(snap.list::<Service>().len(), 1);

    const TASKS: usize = 4;
    const PER_TASK: usize = 25;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let s = svc(&format!("t{t}-{i}"));
                store.update(move |tx| tx.create(s)).await.unwrap();
                if i % 5 == 4 {
                    // Also update the task's previous objects, racing with the others.
                    let mine = store.view().find::<Service>(|s| s.spec.name.starts_with(&format!("t{t}-")));
                    store
                        .update(move |tx| {
                            for mut s in mine {
                                s.spec.labels.insert("seen".into(), "1".into());
                                tx.update(s)?;
                            }
                            Ok(())
                        })
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let end = store.view().index();

    // Replay the events on top of the snapshot: exactly the final state, strictly in order.
    let mut state: BTreeMap<String, u64> =
        snap.list::<Service>().into_iter().map(|s| (s.id.clone(), s.meta().version.index)).collect();
    let mut last = start;
    let mut creates = 0;
    let mut commits = 0;
    loop {
        match rx.try_recv() {
            Ok(c) => {
                assert!(c.index > last, "commit {} after {}", c.index, last);
                last = c.index;
                commits += 1;
                for ch in &c.changes {
                    let s = ch.get::<Service>().unwrap();
                    assert_eq!(s.meta().version.index, c.index);
                    match ch.action {
                        Action::Create => {
                            creates += 1;
                            assert!(state.insert(s.id.clone(), c.index).is_none(), "created twice");
                        }
                        Action::Update => assert!(state.insert(s.id.clone(), c.index).is_some()),
                        Action::Delete => assert!(state.remove(&s.id).is_some()),
                    }
                }
            }
            Err(TryRecvError::Empty) => break,
            Err(e) => panic!("watch: {e}"),
        }
    }
    assert_eq!(last, end);
    assert_eq!(creates, TASKS * PER_TASK);
    assert_eq!(commits, TASKS * PER_TASK + TASKS * PER_TASK / 5);
    let fin: BTreeMap<String, u64> =
        store.view().list::<Service>().into_iter().map(|s| (s.id.clone(), s.meta().version.index)).collect();
    assert_eq!(state, fin);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_drop_recovers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let raft_id = store.raft_id();
    let a = create(&store, svc("a")).await;
    let mut b = create(&store, svc("b")).await;
    b.spec.name = "b2".into();
    let b2 = b.clone();
    store.update(move |tx| tx.update(b2)).await.unwrap();
    let c = create(&store, svc("c")).await;
    store.update({
        let id = c.id.clone();
        move |tx| tx.delete::<Service>(&id)
    })
    .await
    .unwrap();
    let before: Vec<Service> = store.view().list();
    let last_index = store.view().index();
    // No shutdown: a crash as far as the store is concerned.
    drop(store);

    let store = open(dir.path()).await;
    assert_eq!(store.raft_id(), raft_id, "raft id persisted");
    let after: Vec<Service> = store.view().list();
    assert_eq!(before, after);
    assert_eq!(store.view().get::<Service>(&a.id).unwrap().meta().version, a.meta().version);
    assert_eq!(store.view().get::<Service>(&b.id).unwrap().spec.name, "b2");
    assert!(store.view().get::<Service>(&c.id).is_none());
    let st = store.raft_status();
    assert!(st.is_leader);
    eprintln!("reopen: time to leader {:?}", st.time_to_leader);
    let d = create(&store, svc("d")).await;
    assert!(d.meta().version.index > last_index, "log index continues after reopen");

    // Reopening with another raft id is refused.
    store.shutdown().await.unwrap();
    drop(store);
    let err = Store::open(dir.path(), StoreOptions { node_raft_id: Some(raft_id ^ 1), ..Default::default() })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
}

/// Child half of `abort_mid_stream_loses_no_acknowledged_write`: runs only when the parent sets
/// SHOAL_STORE_CRASH_DIR; writes until it aborts itself.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("SHOAL_STORE_CRASH_DIR") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let store = Store::open(Path::new(&dir), StoreOptions::default()).await.unwrap();
        let ack = std::fs::OpenOptions::new().create(true).append(true).open(Path::new(&dir).join("acked")).unwrap();
        let ack = std::sync::Arc::new(std::sync::Mutex::new(ack));
        // Abort from another thread at an arbitrary point of the stream.
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(300 + u64::from(rand_byte()) % 200));
            std::process::abort();
        });
        let mut tasks = Vec::new();
        for t in 0..3 {
            let store = store.clone();
            let ack = ack.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let s = svc(&format!("t{t}-{i}"));
                    let id = s.id.clone();
                    store.update(move |tx| tx.create(s)).await.unwrap();
                    // Acknowledged: record it (the page cache survives a process abort).
                    writeln!(ack.lock().unwrap(), "{id}").unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn rand_byte() -> u8 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    (t.subsec_nanos() % 251) as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_mid_stream_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("SHOAL_STORE_CRASH_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "child must have aborted");

        let acked: BTreeSet<String> = std::io::BufReader::new(std::fs::File::open(dir.path().join("acked")).unwrap())
            .lines()
            .map(|l| l.unwrap())
            .filter(|l| !l.is_empty())
            .collect();
        assert!(!acked.is_empty(), "child acknowledged some writes before aborting");

        let store = open(dir.path()).await;
        let present: BTreeSet<String> = store.view().list::<Service>().into_iter().map(|s| s.id).collect();
        let missing: Vec<_> = acked.difference(&present).collect();
        assert!(missing.is_empty(), "round {round}: {} acknowledged writes lost", missing.len());
        // At most one in-flight entry per writer may have committed without being acknowledged.
        assert!(present.len() <= acked.len() + 3, "{} present, {} acked", present.len(), acked.len());
        eprintln!("round {round}: {} acknowledged, {} present after abort", acked.len(), present.len());
        // Still writable.
        create(&store, svc("after-crash")).await;
        store.update(|tx| {
            for s in tx.find::<Service>(|s| s.spec.name == "after-crash") {
                tx.delete::<Service>(&s.id)?;
            }
            Ok(())
        })
        .await
        .unwrap();
        store.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_log_purge_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || StoreOptions { snapshot_interval: 20, keep_logs_after_snapshot: 0, ..Default::default() };
    let store = Store::open(dir.path(), opts()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..60 {
        let s = svc(&format!("s{i}"));
        ids.push(s.id.clone());
        store.update(move |tx| tx.create(s)).await.unwrap();
    }
    // Delete a few so the snapshot must also drop objects.
    let gone: Vec<String> = ids.drain(..5).collect();
    let g = gone.clone();
    store
        .update(move |tx| {
            for id in &g {
                tx.delete::<Service>(id)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let idx = store.snapshot().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = store.raft_status();
        if st.snapshot_index >= Some(idx) && st.purged_index.is_some() {
            eprintln!("snapshot at {:?}, purged through {:?}", st.snapshot_index, st.purged_index);
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot/purge: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before: Vec<Service> = store.view().list();
    store.shutdown().await.unwrap();
    drop(store);

    let store = Store::open(dir.path(), opts()).await.unwrap();
    let st = store.raft_status();
    assert!(st.purged_index.is_some(), "log stays purged after reopen: {st:?}");
    let after: Vec<Service> = store.view().list();
    assert_eq!(before, after);
    assert_eq!(after.len(), 55);
    for id in &gone {
        assert!(store.view().get::<Service>(id).is_none());
    }
    let n = create(&store, svc("after")).await;
    assert!(n.meta().version.index > idx);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_latency() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let store = open(dir.path()).await;
    let open_time = t0.elapsed();
    let mut lat = Vec::new();
    for i in 0..200 {
        let s = svc(&format!("s{i}"));
        let t = Instant::now();
        store.update(move |tx| tx.create(s)).await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    let stats = Store::commit_stats();
    eprintln!(
        "open {:?} (time to leader {:?}); update p50 {:?} p99 {:?} max {:?}; redb commit mean {:?} max {:?} over {}",
        open_time,
        store.raft_status().time_to_leader,
        p(0.50),
        p(0.99),
        lat[lat.len() - 1],
        stats.mean,
        stats.max,
        stats.commits
    );
    store.shutdown().await.unwrap();
}

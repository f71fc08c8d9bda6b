//! The control loops against a real `shoal-store` (single-member Raft on redb in a temp dir),
//! with a fake agent that plays the node: it walks assigned tasks to RUNNING (or REJECTED for
//! image "bad"), stops tasks whose desired state is past RUNNING, and completes job tasks.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use shoal_manager::{Manager, ManagerConfig, ManagerHandle};
use shoal_store::{ReadTx, Store, StoreOptions};
use shoal_types::{
    new_id, ContainerSpec, FailureAction, Node, NodeAvailability, NodeRole, NodeState, RestartPolicy, Service,
    ServiceMode, ServiceSpec, Task, TaskSpec, TaskState, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(15);

fn config() -> ManagerConfig {
    ManagerConfig {
        scheduler_batch_delay: Duration::from_millis(5),
        scheduler_max_batch_delay: Duration::from_millis(100),
        reaper_interval: Duration::from_millis(20),
        retry_backoff: Duration::from_millis(50),
        ..ManagerConfig::default()
    }
}

async fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).await.expect("open store")
}

fn node(id: &str, role: NodeRole) -> Node {
    let mut n = Node { id: id.into(), ..Default::default() };
    n.status.state = NodeState::Ready;
    n.status.addr = "127.0.0.1".into();
    n.spec.availability = NodeAvailability::Active;
    n.spec.role = role;
    n.description.hostname = format!("host-{id}");
    n
}

fn spec(name: &str, mode: ServiceMode) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        mode,
        task_template: TaskSpec {
            container_spec: ContainerSpec { image: "nginx".into(), ..Default::default() },
            restart_policy: Some(RestartPolicy { delay: Some(0), ..Default::default() }),
            ..Default::default()
        },
        update_config: Some(UpdateConfig {
            parallelism: 2,
            monitor: 100_000_000,
            order: UpdateOrder::StopFirst,
            ..Default::default()
        }),
        rollback_config: Some(UpdateConfig { parallelism: 0, monitor: 100_000_000, ..Default::default() }),
        ..Default::default()
    }
}

async fn create_service(store: &Store, spec: ServiceSpec) -> String {
    let s = Service { id: new_id(), spec, ..Default::default() };
    let id = s.id.clone();
    store.update(move |tx| tx.create(s)).await.expect("create service");
    id
}

/// What the API does on `service update`: keep the previous spec, reset UpdateStatus.
async fn update_service(store: &Store, id: &str, f: impl FnOnce(&mut ServiceSpec) + Send) {
    let id = id.to_string();
    store
        .update(move |tx| {
            let mut s = tx.get::<Service>(&id).expect("service");
            s.previous_spec = Some(s.spec.clone());
            f(&mut s.spec);
            s.update_status = None;
            tx.update(s)
        })
        .await
        .expect("update service");
}

async fn add_node(store: &Store, n: Node) {
    store.update(move |tx| tx.create(n)).await.expect("create node");
}

fn tasks_of(v: &ReadTx, service: &str) -> Vec<Task> {
    v.find::<Task>(|t| t.service_id == service)
}

fn running(v: &ReadTx, service: &str) -> Vec<Task> {
    tasks_of(v, service)
        .into_iter()
        .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
        .collect()
}

async fn wait_until(store: &Store, what: &str, mut f: impl FnMut(&ReadTx) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if f(&store.view()) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let v = store.view();
            let dump: Vec<String> = v
                .list::<Task>()
                .iter()
                .map(|t| format!("{} slot={} node={} {}/{} err={}", &t.id[..6], t.slot, t.node_id, t.status.state, t.desired_state, t.status.err))
                .collect();
            let svcs: Vec<String> =
                v.list::<Service>().iter().map(|s| format!("{} {:?}", s.spec.name, s.update_status)).collect();
            panic!("timed out waiting for {what}\ntasks:\n{}\nservices: {svcs:?}", dump.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The fake agent: a store watcher that plays every node.
fn spawn_agent(store: Store) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (_, mut rx) = store.watch();
        loop {
            let _ = store
                .update(|tx| {
                    for mut t in tx.list::<Task>() {
                        if t.node_id.is_empty() || t.status.state < TaskState::Assigned {
                            continue;
                        }
                        let next = if t.desired_state > TaskState::Running {
                            (t.status.state <= TaskState::Running).then_some(TaskState::Shutdown)
                        } else if t.status.state >= TaskState::Running {
                            let is_job = t.job_iteration.is_some();
                            (is_job && t.status.state == TaskState::Running).then_some(TaskState::Complete)
                        } else if t.spec.container_spec.image == "bad" {
                            Some(TaskState::Rejected)
                        } else if t.desired_state == TaskState::Ready {
                            (t.status.state < TaskState::Ready).then_some(TaskState::Ready)
                        } else {
                            Some(TaskState::Running)
                        };
                        if let Some(s) = next {
                            t.status = shoal_types::TaskStatus::new(s, chrono::Utc::now());
                            tx.update(t)?;
                        }
                    }
                    Ok(())
                })
                .await;
            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = rx.recv().await {
                return;
            }
        }
    })
}

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    manager: Option<ManagerHandle>,
    agent: JoinHandle<()>,
}

impl Env {
    async fn new(nodes: &[Node]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        for n in nodes {
            add_node(&store, n.clone()).await;
        }
        let agent = spawn_agent(store.clone());
        let manager = Some(Manager::start(store.clone(), config()));
        Env { _dir: dir, store, manager, agent }
    }

    async fn stop(mut self) {
        if let Some(m) = self.manager.take() {
            m.stop().await;
        }
        self.agent.abort();
        let _ = self.store.shutdown().await;
    }
}

fn by_slot(tasks: &[Task]) -> BTreeMap<u64, Vec<&Task>> {
    let mut m: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        m.entry(t.slot).or_default().push(t);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicated_service_lifecycle() {
    let env = Env::new(&[node("node1", NodeRole::Manager)]).await;
    let store = &env.store;
    let sid = create_service(store, spec("web", ServiceMode::Replicated { replicas: 3 })).await;

    // 3 replicas, all assigned to the one ready node, slots 1..3.
    wait_until(store, "3 running tasks", |v| running(v, &sid).len() == 3).await;
    let v = store.view();
    let ts = running(&v, &sid);
    assert!(ts.iter().all(|t| t.node_id == "node1"));
    let mut slots: Vec<u64> = ts.iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2, 3]);
    assert_eq!(tasks_of(&v, &sid).len(), 3);

    // Kill one: a replacement appears in the same slot.
    let victim = ts.iter().find(|t| t.slot == 2).unwrap().clone();
    let vid = victim.id.clone();
    store
        .update(move |tx| {
            let mut t = tx.get::<Task>(&vid).unwrap();
            t.status = shoal_types::TaskStatus::new(TaskState::Failed, chrono::Utc::now());
            tx.update(t)
        })
        .await
        .unwrap();
    wait_until(store, "replacement in slot 2", |v| {
        let r = running(v, &sid);
        r.len() == 3 && r.iter().any(|t| t.slot == 2 && t.id != victim.id)
    })
    .await;
    let old = store.view().get::<Task>(&victim.id).unwrap();
    assert_eq!(old.desired_state, TaskState::Shutdown);

    // Scale to 10, then down to 2.
    update_service(store, &sid, |s| s.mode = ServiceMode::Replicated { replicas: 10 }).await;
    wait_until(store, "10 running", |v| running(v, &sid).len() == 10).await;
    update_service(store, &sid, |s| s.mode = ServiceMode::Replicated { replicas: 2 }).await;
    wait_until(store, "2 running, removed tasks reaped", |v| {
        let ts = tasks_of(v, &sid);
        running(v, &sid).len() == 2 && !ts.iter().any(|t| t.desired_state == TaskState::Remove)
    })
    .await;

    // Update the env: every task replaced, UpdateStatus completed.
    update_service(store, &sid, |s| s.task_template.container_spec.env = vec!["V=2".into()]).await;
    wait_until(store, "update completed", |v| {
        let s = v.get::<Service>(&sid).unwrap();
        s.update_status.as_ref().and_then(|u| u.state) == Some(UpdateState::Completed)
    })
    .await;
    let v = store.view();
    let r = running(&v, &sid);
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|t| t.spec.container_spec.env == vec!["V=2".to_string()]));
    let s = v.get::<Service>(&sid).unwrap();
    let us = s.update_status.unwrap();
    assert_eq!(us.message, "update completed");
    assert!(us.started_at.is_some() && us.completed_at.is_some());
    // History per slot stays within the retention limit (5).
    for (_, ts) in by_slot(&tasks_of(&v, &sid)) {
        assert!(ts.len() <= 5);
    }

    // Delete the service: tasks get desired REMOVE, then are reaped.
    let sid2 = sid.clone();
    store.update(move |tx| tx.delete::<Service>(&sid2)).await.unwrap();
    wait_until(store, "tasks reaped", |v| tasks_of(v, &sid).is_empty()).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_update_rolls_back_and_manual_rollback() {
    let env = Env::new(&[node("node1", NodeRole::Worker)]).await;
    let store = &env.store;
    let mut sp = spec("api", ServiceMode::Replicated { replicas: 2 });
    sp.update_config.as_mut().unwrap().failure_action = FailureAction::Rollback;
    let sid = create_service(store, sp).await;
    wait_until(store, "2 running", |v| running(v, &sid).len() == 2).await;

    // An image the agent rejects: the update fails and rolls back by itself.
    update_service(store, &sid, |s| s.task_template.container_spec.image = "bad".into()).await;
    wait_until(store, "rollback completed", |v| {
        let s = v.get::<Service>(&sid).unwrap();
        s.update_status.as_ref().and_then(|u| u.state) == Some(UpdateState::RollbackCompleted)
    })
    .await;
    let v = store.view();
    let s = v.get::<Service>(&sid).unwrap();
    assert_eq!(s.spec.task_template.container_spec.image, "nginx");
    assert_eq!(s.update_status.unwrap().message, "rollback completed");
    wait_until(store, "2 running nginx", |v| {
        let r = running(v, &sid);
        r.len() == 2 && r.iter().all(|t| t.spec.container_spec.image == "nginx")
    })
    .await;

    // A good update, then a manual rollback (what the API does for `docker service rollback`).
    update_service(store, &sid, |s| s.task_template.container_spec.env = vec!["V=2".into()]).await;
    wait_until(store, "update completed", |v| {
        v.get::<Service>(&sid).unwrap().update_status.and_then(|u| u.state) == Some(UpdateState::Completed)
    })
    .await;
    let sid2 = sid.clone();
    store
        .update(move |tx| {
            let mut s = tx.get::<Service>(&sid2).unwrap();
            let prev = s.previous_spec.take().unwrap();
            s.previous_spec = Some(std::mem::replace(&mut s.spec, prev));
            s.update_status = Some(UpdateStatus {
                state: Some(UpdateState::RollbackStarted),
                message: "manually requested rollback".into(),
                started_at: Some(chrono::Utc::now()),
                completed_at: None,
            });
            tx.update(s)
        })
        .await
        .unwrap();
    wait_until(store, "manual rollback completed", |v| {
        let s = v.get::<Service>(&sid).unwrap();
        s.update_status.and_then(|u| u.state) == Some(UpdateState::RollbackCompleted)
            && running(v, &sid).iter().all(|t| t.spec.container_spec.env.is_empty())
            && running(v, &sid).len() == 2
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_update_pauses() {
    let env = Env::new(&[node("node1", NodeRole::Worker)]).await;
    let store = &env.store;
    let sid = create_service(store, spec("p", ServiceMode::Replicated { replicas: 2 })).await;
    wait_until(store, "2 running", |v| running(v, &sid).len() == 2).await;
    update_service(store, &sid, |s| s.task_template.container_spec.image = "bad".into()).await;
    wait_until(store, "update paused", |v| {
        v.get::<Service>(&sid).unwrap().update_status.and_then(|u| u.state) == Some(UpdateState::Paused)
    })
    .await;
    let msg = store.view().get::<Service>(&sid).unwrap().update_status.unwrap().message;
    assert!(msg.starts_with("update paused due to failure or early termination of task "), "{msg}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn constraints_spread_global_and_unschedulable() {
    let mut w1 = node("w1", NodeRole::Worker);
    w1.spec.labels.insert("zone".into(), "a".into());
    let mut w2 = node("w2", NodeRole::Worker);
    w2.spec.labels.insert("zone".into(), "b".into());
    let env = Env::new(&[node("m1", NodeRole::Manager), w1, w2]).await;
    let store = &env.store;

    // The acceptance demo's placement: 2 replicas on workers only, one each.
    let mut sp = spec("web-alb", ServiceMode::Replicated { replicas: 2 });
    sp.task_template.placement =
        Some(shoal_types::Placement { constraints: vec!["node.role==worker".into()], ..Default::default() });
    sp.endpoint_spec = Some(shoal_types::EndpointSpec {
        ports: vec![shoal_types::PortConfig { target_port: 80, published_port: 8001, ..Default::default() }],
        ..Default::default()
    });
    let sid = create_service(store, sp).await;
    wait_until(store, "2 running on workers", |v| running(v, &sid).len() == 2).await;
    let mut nodes: Vec<String> = running(&store.view(), &sid).into_iter().map(|t| t.node_id).collect();
    nodes.sort();
    assert_eq!(nodes, vec!["w1", "w2"]);
    let svc = store.view().get::<Service>(&sid).unwrap();
    assert_eq!(svc.endpoint.ports[0].published_port, 8001);

    // Global: one task per node.
    let gid = create_service(store, spec("agent", ServiceMode::Global)).await;
    wait_until(store, "3 global tasks", |v| running(v, &gid).len() == 3).await;

    // Unschedulable: stays PENDING with swarmkit's explanation.
    let mut sp = spec("nowhere", ServiceMode::Replicated { replicas: 1 });
    sp.task_template.placement =
        Some(shoal_types::Placement { constraints: vec!["node.labels.zone==c".into()], ..Default::default() });
    let nid = create_service(store, sp).await;
    wait_until(store, "explained pending task", |v| {
        tasks_of(v, &nid).iter().any(|t| {
            t.status.state == TaskState::Pending
                && t.status.err == "no suitable node (scheduling constraints not satisfied on 3 nodes)"
        })
    })
    .await;
    // A node gets the label: the task is scheduled.
    store
        .update(|tx| {
            let mut n = tx.get::<Node>("w2").unwrap();
            n.spec.labels.insert("zone".into(), "c".into());
            tx.update(n)
        })
        .await
        .unwrap();
    wait_until(store, "pending task scheduled", |v| running(v, &nid).len() == 1).await;

    // Draining a node: the global task there is shut down, the replicated one moves.
    store
        .update(|tx| {
            let mut n = tx.get::<Node>("w1").unwrap();
            n.spec.availability = NodeAvailability::Drain;
            tx.update(n)
        })
        .await
        .unwrap();
    wait_until(store, "tasks off w1", |v| {
        running(v, &gid).len() == 2
            && !running(v, &sid).iter().any(|t| t.node_id == "w1")
            && running(v, &sid).len() == 1
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_run_to_completion() {
    let env = Env::new(&[node("n1", NodeRole::Worker), node("n2", NodeRole::Worker)]).await;
    let store = &env.store;
    let jid = create_service(store, spec("batch", ServiceMode::ReplicatedJob { max_concurrent: 2, total_completions: 5 })).await;
    wait_until(store, "5 completions", |v| {
        tasks_of(v, &jid).iter().filter(|t| t.status.state == TaskState::Complete).count() == 5
    })
    .await;
    let gj = create_service(store, spec("once", ServiceMode::GlobalJob)).await;
    wait_until(store, "global job done on both nodes", |v| {
        tasks_of(v, &gj).iter().filter(|t| t.status.state == TaskState::Complete).count() == 2
    })
    .await;
    // Nothing more is started once done.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(tasks_of(&store.view(), &jid).len(), 5);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_manager_and_store_make_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    add_node(&store, node("node1", NodeRole::Manager)).await;
    let agent = spawn_agent(store.clone());
    let m = Manager::start(store.clone(), config());
    let sid = create_service(&store, spec("web", ServiceMode::Replicated { replicas: 3 })).await;
    wait_until(&store, "3 running", |v| running(v, &sid).len() == 3).await;

    // Leader stops (as on leadership loss), then a new manager on the same store.
    m.stop().await;
    let m = Manager::start(store.clone(), config());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tasks_of(&store.view(), &sid).len(), 3);

    // A service created while no manager runs, then the whole daemon "crashes" (store closed
    // and reopened from disk) and comes back.
    m.stop().await;
    let sid2 = create_service(&store, spec("late", ServiceMode::Replicated { replicas: 4 })).await;
    agent.abort();
    store.shutdown().await.unwrap();
    drop(store);
    let store = open(dir.path()).await;
    let agent = spawn_agent(store.clone());
    let m = Manager::start(store.clone(), config());
    wait_until(&store, "late service running", |v| running(v, &sid2).len() == 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = store.view();
    assert_eq!(tasks_of(&v, &sid).len(), 3, "no duplicates after restart");
    assert_eq!(tasks_of(&v, &sid2).len(), 4);
    let slots: HashMap<u64, usize> = tasks_of(&v, &sid2).iter().fold(HashMap::new(), |mut m, t| {
        *m.entry(t.slot).or_default() += 1;
        m
    });
    assert!(slots.values().all(|c| *c == 1), "{slots:?}");
    m.stop().await;
    agent.abort();
    store.shutdown().await.unwrap();
}

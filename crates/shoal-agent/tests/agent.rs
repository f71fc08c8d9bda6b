//! The agent against a real store (temp dir) and a real engine running in-process inside a
//! test network namespace (root only; skipped otherwise). Each test owns a temp dir and a
//! namespace; the [`Env`] guard kills, unmounts and removes everything it created, also when the
//! test panics.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use shoal_agent::{containers_of_task, Agent, LocalControlPlane};
use shoal_engine::{CreateSpec, Engine, EngineConfig, Status};
use shoal_store::{Store, StoreOptions};
use shoal_testkit::{random_hex, sha256_hex, workspace_root, Netns, TestImage};
use shoal_types::{
    new_id, ContainerSpec, Service, ServiceSpec, Task, TaskSpec, TaskState, TaskStatus,
};

const NODE: &str = "node00000000000000000000a";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The `shoal` binary (the engine re-executes it as the container shim), built on first use.
fn shoal_exe() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let root = workspace_root();
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        let exe = target.join("debug").join("shoal");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo).args(["build", "-p", "shoal"]).current_dir(&root).status();
        match st {
            Ok(s) if s.success() => {}
            other if exe.is_file() => eprintln!("cargo build -p shoal failed ({other:?}); using the existing {}", exe.display()),
            other => panic!("cargo build -p shoal failed: {other:?}"),
        }
        exe
    })
    .clone()
}

/// Everything one test creates: `/tmp/sha-<hex>/{data,x,store}` (short: unix socket paths live under it) and a namespace.
struct Env {
    dir: PathBuf,
    netns: Netns,
}

struct Ctx {
    engine: Engine,
    store: Store,
}

impl Env {
    fn new(prefix: &str) -> Env {
        let dir = PathBuf::from(format!("/tmp/sha-{}", random_hex(3)));
        for d in ["data", "x", "store"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let netns = Netns::new(prefix);
        Env { dir, netns }
    }

    fn engine_config(&self) -> EngineConfig {
        let exec_root = self.dir.join("x");
        EngineConfig {
            data_root: self.dir.join("data"),
            exec_root: exec_root.clone(),
            self_exe: shoal_exe(),
            shim_exe: shoal_engine::shim_exe_for(&shoal_exe()),
            bridge: shoal_net::BridgeConfig::with_exec_root(&exec_root),
            init_path: None,
        }
    }

    /// Runs `body` like one daemon lifetime: a fresh runtime on a thread inside the namespace,
    /// the engine and the store opened from this env's dirs. With `clean`, every container is
    /// removed afterwards; without, the runtime is simply torn down (like `kill -9` of the daemon:
    /// containers keep running).
    fn daemon<F, Fut>(&self, clean: bool, body: F)
    where
        F: FnOnce(Ctx) -> Fut + Send,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let cfg = self.engine_config();
        let store_dir = self.dir.join("store");
        let result = self
            .netns
            .run(move || {
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
                let r = rt.block_on(async move {
                    let engine = Engine::open(cfg).await.expect("open engine");
                    if engine.images().get("busybox:latest").is_err() {
                        let f = std::fs::File::open(TestImage::busybox().docker_archive()).unwrap();
                        engine.images().load(f).expect("load busybox");
                    }
                    let store = Store::open(&store_dir, StoreOptions::default()).await.expect("open store");
                    let ctx = Ctx { engine: engine.clone(), store: store.clone() };
                    let r = tokio::spawn(body(ctx)).await;
                    if clean {
                        for c in engine.list() {
                            let _ = engine.remove(&c.id, true).await;
                        }
                    }
                    let _ = store.shutdown().await;
                    r
                });
                rt.shutdown_timeout(Duration::from_secs(2));
                r
            })
            .expect("enter the test namespace");
        if let Err(e) = result {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let needle = self.dir.to_string_lossy().into_owned();
        let cg = format!("shoal-{}", &sha256_hex(self.dir.join("data").to_string_lossy().as_bytes())[..8]);
        let cgroups = cgroup_dirs(&cg);
        // Kill leftover processes: shims (their command line names our dir) and containers.
        for _ in 0..50 {
            let mut pids: Vec<i32> = cgroups.iter().flat_map(|d| cgroup_procs(d)).collect();
            if let Ok(rd) = std::fs::read_dir("/proc") {
                for e in rd.flatten() {
                    let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    if String::from_utf8_lossy(&cmd).contains(&needle) {
                        pids.push(pid);
                    }
                }
            }
            let me = std::process::id() as i32;
            pids.retain(|p| *p > 1 && *p != me);
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: kill(2); these processes belong to this test's engine.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for d in &cgroups {
            for _ in 0..50 {
                rmdir_tree(d);
                if !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        unmount_under(&self.dir);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mp = pre.split_whitespace().nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mp).join(name))
        })
        .filter(|p| p.is_dir())
        .collect()
}

fn cgroup_procs(dir: &Path) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            v.extend(cgroup_procs(&e.path()));
        }
    }
    v
}

fn rmdir_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            rmdir_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn unmount_under(dir: &Path) {
    for _ in 0..20 {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mps: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .map(PathBuf::from)
            .filter(|p| p.starts_with(dir))
            .collect();
        if mps.is_empty() {
            return;
        }
        mps.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for mp in mps {
            let c = std::ffi::CString::new(mp.to_string_lossy().as_bytes()).unwrap();
            // SAFETY: umount2 with a valid C string.
            if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
                // SAFETY: as above.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

fn service(name: &str, container: ContainerSpec) -> Service {
    Service {
        id: new_id(),
        spec: ServiceSpec {
            name: name.into(),
            task_template: TaskSpec { container_spec: container, ..Default::default() },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn sleeper() -> ContainerSpec {
    ContainerSpec {
        image: "busybox:latest".into(),
        command: vec!["sh".into(), "-c".into()],
        args: vec!["trap 'exit 0' TERM; while true; do sleep 0.1; done".into()],
        stop_grace_period: Some(5_000_000_000),
        ..Default::default()
    }
}

/// A task of `svc` as the scheduler leaves it: ASSIGNED to `node`, desired RUNNING.
fn task(svc: &Service, slot: u64, node: &str) -> Task {
    Task {
        id: new_id(),
        service_id: svc.id.clone(),
        slot,
        node_id: node.into(),
        spec: svc.spec.task_template.clone(),
        desired_state: TaskState::Running,
        status: TaskStatus::new(TaskState::Assigned, chrono::Utc::now()),
        ..Default::default()
    }
}

async fn create(store: &Store, svc: Option<&Service>, tasks: &[&Task]) {
    let svc = svc.cloned();
    let tasks: Vec<Task> = tasks.iter().map(|t| (*t).clone()).collect();
    store
        .update(move |tx| {
            if let Some(s) = svc {
                tx.create(s)?;
            }
            for t in tasks {
                tx.create(t)?;
            }
            Ok(())
        })
        .await
        .unwrap();
}

async fn set_desired(store: &Store, id: &str, desired: TaskState) {
    let id = id.to_string();
    store
        .update(move |tx| {
            let mut t = tx.get::<Task>(&id).unwrap();
            t.desired_state = desired;
            tx.update(t)
        })
        .await
        .unwrap();
}

async fn until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until_state(store: &Store, id: &str, state: TaskState) -> Task {
    let mut last = None;
    let r = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let t = store.view().get::<Task>(id).expect("task exists");
            if t.status.state == state {
                return t;
            }
            assert!(t.status.state < state, "task {id} reached {} ({:?}) instead of {state}", t.status.state, t.status);
            last = Some(t.status.clone());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("task {id} did not reach {state}; last status {last:?}"))
}

fn kill9(pid: i64) {
    assert!(pid > 0);
    // SAFETY: kill(2) on the container's init pid reported by the engine.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

macro_rules! root_only {
    () => {
        if !is_root() {
            eprintln!("skipping: needs root (namespaces, mounts, cgroups)");
            return;
        }
    };
}

#[test]
fn runs_stops_and_removes_tasks() {
    root_only!();
    let env = Env::new("agent-life");
    env.daemon(true, |Ctx { engine, store }| async move {
        let control = Arc::new(LocalControlPlane::new(store.clone(), NODE));
        let agent = Agent::start(NODE.into(), engine.clone(), control);

        let web = service("web", sleeper());
        let t1 = task(&web, 1, NODE);
        let t2 = task(&web, 2, NODE);
        let other = task(&web, 3, "someothernode000000000000");
        create(&store, Some(&web), &[&t1, &t2, &other]).await;

        // RUNNING with the container status, container named and labelled like Docker's.
        let got = until_state(&store, &t1.id, TaskState::Running).await;
        assert_eq!(got.status.message, "started");
        let cs = got.status.container_status.clone().expect("container status");
        assert!(cs.pid > 0, "{cs:?}");
        let rec = engine.inspect(&cs.container_id).unwrap();
        assert_eq!(rec.name, format!("web.1.{}", t1.id));
        assert_eq!(rec.state.status, Status::Running);
        let l = &rec.config.labels;
        assert_eq!(l["com.docker.swarm.task"], "");
        assert_eq!(l["com.docker.swarm.task.id"], t1.id);
        assert_eq!(l["com.docker.swarm.task.name"], format!("web.1.{}", t1.id));
        assert_eq!(l["com.docker.swarm.node.id"], NODE);
        assert_eq!(l["com.docker.swarm.service.id"], web.id);
        assert_eq!(l["com.docker.swarm.service.name"], "web");
        assert_eq!(rec.config.host.restart_policy.name_str(), "no");
        until_state(&store, &t2.id, TaskState::Running).await;
        // Another node's task is never touched.
        assert!(containers_of_task(&engine, &other.id).is_empty());
        assert_eq!(store.view().get::<Task>(&other.id).unwrap().status.state, TaskState::Assigned);

        // Desired SHUTDOWN: stopped with its stop signal, reported SHUTDOWN; container kept.
        let t0 = Instant::now();
        set_desired(&store, &t1.id, TaskState::Shutdown).await;
        let got = until_state(&store, &t1.id, TaskState::Shutdown).await;
        assert!(t0.elapsed() < Duration::from_secs(9), "stop took {:?}: the stop signal was ignored and the 10 s grace period ran out", t0.elapsed());
        assert_eq!(got.status.message, "shutdown");
        assert_eq!(engine.inspect(&cs.container_id).unwrap().state.status, Status::Exited);

        // Desired REMOVE: the container goes away.
        set_desired(&store, &t1.id, TaskState::Remove).await;
        until("t1's container removed", Duration::from_secs(30), || containers_of_task(&engine, &t1.id).is_empty().then_some(())).await;

        // Task deleted from the store: its running container is removed.
        assert_eq!(containers_of_task(&engine, &t2.id).len(), 1);
        let id2 = t2.id.clone();
        store.update(move |tx| tx.delete::<Task>(&id2)).await.unwrap();
        until("t2's container removed", Duration::from_secs(30), || containers_of_task(&engine, &t2.id).is_empty().then_some(())).await;

        agent.stop().await;
    });
}

#[test]
fn exits_failures_and_rejections() {
    root_only!();
    let env = Env::new("agent-exit");
    env.daemon(true, |Ctx { engine, store }| async move {
        let control = Arc::new(LocalControlPlane::new(store.clone(), NODE));
        let agent = Agent::start(NODE.into(), engine.clone(), control);

        let sleepy = service("sleepy", sleeper());
        let killed = task(&sleepy, 1, NODE);
        let mut staged = task(&sleepy, 2, NODE);
        staged.desired_state = TaskState::Ready;
        let sh = |script: &str| ContainerSpec {
            image: "busybox:latest".into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        };
        let ok = service("ok", sh("exit 0"));
        let bad = service("bad", sh("exit 3"));
        let missing = service("missing", ContainerSpec { image: "127.0.0.1:9/nosuch:latest".into(), ..Default::default() });
        let t_ok = task(&ok, 1, NODE);
        let t_bad = task(&bad, 1, NODE);
        let t_missing = task(&missing, 1, NODE);
        create(&store, Some(&sleepy), &[&killed, &staged]).await;
        create(&store, Some(&ok), &[&t_ok]).await;
        create(&store, Some(&bad), &[&t_bad]).await;
        create(&store, Some(&missing), &[&t_missing]).await;

        // Killed by SIGKILL → FAILED, exit 137.
        let got = until_state(&store, &killed.id, TaskState::Running).await;
        let cs = got.status.container_status.unwrap();
        kill9(cs.pid);
        let got = until_state(&store, &killed.id, TaskState::Failed).await;
        assert_eq!(got.status.err, "task: non-zero exit (137)");
        let cs2 = got.status.container_status.unwrap();
        assert_eq!(cs2.exit_code, 137);
        assert_eq!(cs2.container_id, cs.container_id);
        // A failed task's container stays (until the task is removed); it is not restarted.
        assert_eq!(engine.inspect(&cs.container_id).unwrap().state.status, Status::Exited);

        let got = until_state(&store, &t_ok.id, TaskState::Complete).await;
        assert_eq!(got.status.message, "finished");
        assert_eq!(got.status.container_status.unwrap().exit_code, 0);

        let got = until_state(&store, &t_bad.id, TaskState::Failed).await;
        assert_eq!(got.status.err, "task: non-zero exit (3)");

        let got = until_state(&store, &t_missing.id, TaskState::Rejected).await;
        assert_eq!(got.status.err, "No such image: 127.0.0.1:9/nosuch:latest");
        assert!(containers_of_task(&engine, &t_missing.id).is_empty());

        // Desired READY: prepared (container created) but not started until desired RUNNING.
        let got = until_state(&store, &staged.id, TaskState::Ready).await;
        let cid = got.status.container_status.unwrap().container_id;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(engine.inspect(&cid).unwrap().state.status, Status::Created);
        assert_eq!(store.view().get::<Task>(&staged.id).unwrap().status.state, TaskState::Ready);
        set_desired(&store, &staged.id, TaskState::Running).await;
        let got = until_state(&store, &staged.id, TaskState::Running).await;
        assert_eq!(got.status.container_status.unwrap().container_id, cid);

        agent.stop().await;
    });
}

#[test]
fn restart_readopts_containers() {
    root_only!();
    let env = Env::new("agent-restart");
    let web = service("web", sleeper());
    let t1 = task(&web, 1, NODE);
    let ghost_task = new_id();
    let first: Arc<std::sync::Mutex<Option<(String, i64)>>> = Default::default();

    // Daemon 1: run the task, plus a stray task container whose task doesn't exist; then die
    // without stopping anything (runtime torn down, like kill -9).
    {
        let (web, t1, first, ghost_task) = (web.clone(), t1.clone(), first.clone(), ghost_task.clone());
        env.daemon(false, move |Ctx { engine, store }| async move {
            let control = Arc::new(LocalControlPlane::new(store.clone(), NODE));
            let agent = Agent::start(NODE.into(), engine.clone(), control);
            create(&store, Some(&web), &[&t1]).await;
            let got = until_state(&store, &t1.id, TaskState::Running).await;
            let cs = got.status.container_status.unwrap();
            *first.lock().unwrap() = Some((cs.container_id, cs.pid));
            let mut spec = CreateSpec {
                name: Some(format!("web.9.{ghost_task}")),
                image: "busybox:latest".into(),
                cmd: Some(vec!["sleep".into(), "1000".into()]),
                ..Default::default()
            };
            spec.labels.insert("com.docker.swarm.task.id".into(), ghost_task.clone());
            let (gid, _) = engine.create(spec).await.unwrap();
            engine.start(&gid).await.unwrap();
            std::mem::forget(agent); // no orderly stop
        });
    }
    let (cid, pid) = first.lock().unwrap().clone().unwrap();

    // Daemon 2: same store and engine dirs. The running container is re-adopted (no duplicate),
    // the stray one removed, and the agent keeps watching the task.
    env.daemon(true, move |Ctx { engine, store }| async move {
        assert_eq!(engine.inspect(&cid).unwrap().state.status, Status::Running, "live restore");
        let control = Arc::new(LocalControlPlane::new(store.clone(), NODE));
        let agent = Agent::start(NODE.into(), engine.clone(), control);
        until("stray container removed", Duration::from_secs(30), || containers_of_task(&engine, &ghost_task).is_empty().then_some(())).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mine = containers_of_task(&engine, &t1.id);
        assert_eq!(mine.len(), 1, "no duplicate container");
        assert_eq!(mine[0].id, cid);
        assert_eq!(mine[0].state.status, Status::Running);
        let t = store.view().get::<Task>(&t1.id).unwrap();
        assert_eq!(t.status.state, TaskState::Running);
        assert_eq!(t.status.container_status.as_ref().unwrap().container_id, cid);

        // Restart the agent alone (drop + start) too: still the same container.
        drop(agent);
        let control = Arc::new(LocalControlPlane::new(store.clone(), NODE));
        let agent = Agent::start(NODE.into(), engine.clone(), control);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(containers_of_task(&engine, &t1.id).len(), 1);

        // The new agent still observes the container: its death is reported.
        kill9(pid);
        let got = until_state(&store, &t1.id, TaskState::Failed).await;
        assert_eq!(got.status.err, "task: non-zero exit (137)");
        agent.stop().await;
    });
}

//! Container lifecycle: create, start, stop, kill, restart, remove, rename, wait, attach, the exit
//! monitor with restart policies, and re-adoption of containers after a daemon restart.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::error::{EngineError, Result};
use crate::model::*;
use crate::rootfs::{self, ContainerDirs};
use crate::{lock, names, new_id, Container, Engine};

/// Output chunks of an attach session: (stream, bytes); stream 1 = stdout, 2 = stderr.
pub type OutputRx = mpsc::Receiver<(u8, Bytes)>;

/// A client attached to a container's stdio.
pub struct AttachSession {
    pub tty: bool,
    pub output: OutputRx,
    /// Bytes sent here go to the container's stdin; dropping it closes stdin (when `stdin_once`).
    pub stdin: Option<mpsc::Sender<Bytes>>,
}

pub(crate) struct PendingAttach {
    out: mpsc::Sender<(u8, Bytes)>,
    stdin: Option<mpsc::Receiver<Bytes>>,
    streams: (bool, bool, bool),
}

/// Parses `SIGTERM`, `TERM`, `term` or `15`.
pub fn parse_signal(text: &str) -> Result<i32> {
    let trimmed = text.trim();
    if let Ok(n) = trimmed.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(EngineError::Invalid(format!("Invalid signal: {text}")));
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| EngineError::Invalid(format!("Invalid signal: {text}")))
}

/// Merges image defaults into a create request (Docker's rules for Cmd/Entrypoint/Env/...).
pub(crate) fn merge_config(id: &str, spec: &CreateSpec, image: &shoal_image::ImageRecord, image_ref: &str) -> Result<ContainerConfig> {
    let img = &image.config;
    let entrypoint = match &spec.entrypoint {
        Some(ep) if ep.is_empty() || (ep.len() == 1 && ep[0].is_empty()) => None,
        Some(ep) => Some(ep.clone()),
        None => img.entrypoint.clone(),
    };
    let cmd = match &spec.cmd {
        Some(c) if !c.is_empty() => Some(c.clone()),
        _ if spec.entrypoint.is_some() => None,
        _ => img.cmd.clone(),
    };
    let mut argv: Vec<String> = entrypoint.clone().unwrap_or_default();
    argv.extend(cmd.clone().unwrap_or_default());
    if argv.is_empty() {
        return Err(EngineError::Invalid("no command specified".into()));
    }
    let path = argv.remove(0);

    let mut env: Vec<String> = img.env.clone();
    for entry in &spec.env {
        let key = entry.split('=').next().unwrap_or_default();
        if key.is_empty() {
            return Err(EngineError::Invalid(format!("invalid environment variable: {entry}")));
        }
        env.retain(|e| e.split('=').next() != Some(key));
        if entry.contains('=') {
            env.push(entry.clone());
        }
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }

    let mut exposed: Vec<PortProto> = img.exposed_ports.keys().filter_map(|p| PortProto::parse(p)).collect();
    exposed.extend(spec.exposed_ports.iter().copied());
    exposed.extend(spec.host.port_bindings.iter().map(|b| b.container));
    exposed.sort();
    exposed.dedup();

    let mut labels = img.labels.clone();
    labels.extend(spec.labels.clone());

    Ok(ContainerConfig {
        image_ref: image_ref.to_string(),
        image_id: image.id.clone(),
        path,
        args: argv,
        cmd,
        entrypoint,
        env,
        working_dir: if spec.working_dir.is_empty() { img.working_dir.clone() } else { spec.working_dir.clone() },
        user: if spec.user.is_empty() { img.user.clone() } else { spec.user.clone() },
        hostname: if spec.hostname.is_empty() { id[..12].to_string() } else { spec.hostname.clone() },
        domainname: spec.domainname.clone(),
        labels,
        tty: spec.tty,
        open_stdin: spec.open_stdin,
        stdin_once: spec.stdin_once,
        attach_stdin: spec.attach_stdin,
        attach_stdout: spec.attach_stdout,
        attach_stderr: spec.attach_stderr,
        exposed_ports: exposed,
        stop_signal: spec.stop_signal.clone().or_else(|| img.stop_signal.clone()).unwrap_or_else(|| "SIGTERM".into()),
        stop_timeout: spec.stop_timeout,
        healthcheck: crate::health::merge(spec.healthcheck.as_ref(), img.healthcheck.as_ref()),
        host: spec.host.clone(),
    })
}

/// Checks the host part of a create request the way dockerd does.
pub(crate) fn validate_host(host: &HostSpec, spec: &CreateSpec) -> Result<()> {
    if host.auto_remove && host.restart_policy.name != RestartPolicyName::No {
        return Err(EngineError::Invalid("conflicting options: cannot specify both --restart and --rm".into()));
    }
    if host.memory != 0 && host.memory < 6 * 1024 * 1024 {
        return Err(EngineError::Invalid("Minimum memory limit allowed is 6MB".into()));
    }
    if host.memory_swap > 0 && host.memory > 0 && host.memory_swap < host.memory {
        return Err(EngineError::Invalid(
            "Minimum memoryswap limit should be larger than memory limit, see usage".into(),
        ));
    }
    let ncpu = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
    if host.nano_cpus < 0 || host.nano_cpus > ncpu * 1_000_000_000 {
        return Err(EngineError::Invalid(format!(
            "Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
        )));
    }
    if host.nano_cpus > 0 && host.nano_cpus < 10_000_000 {
        return Err(EngineError::Invalid(format!(
            "Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
        )));
    }
    if host.nano_cpus > 0 && (host.cpu_quota > 0 || host.cpu_period > 0) {
        return Err(EngineError::Invalid(
            "Conflicting options: Nano CPUs and CPU Period cannot both be set".into(),
        ));
    }
    for bind in &host.binds {
        if !bind.source.starts_with('/') {
            return Err(EngineError::Invalid(format!(
                "invalid mount config for type \"bind\": invalid mount path: '{}' mount path must be absolute",
                bind.source
            )));
        }
        if !bind.destination.starts_with('/') || bind.destination == "/" {
            return Err(EngineError::Invalid(format!("invalid mount config: invalid mount path: '{}'", bind.destination)));
        }
        if !std::path::Path::new(&bind.source).exists() {
            return Err(EngineError::Invalid(format!(
                "invalid mount config for type \"bind\": bind source path does not exist: {}",
                bind.source
            )));
        }
    }
    for dest in host.tmpfs.keys() {
        if !dest.starts_with('/') || dest == "/" {
            return Err(EngineError::Invalid(format!("invalid tmpfs mount path: '{dest}'")));
        }
    }
    if host.network_mode == NetworkMode::Host && !host.port_bindings.is_empty() {
        // dockerd only warns here; published ports are meaningless with the host network.
    }
    if let Some(sig) = &spec.stop_signal {
        parse_signal(sig)?;
    }
    if let Some(h) = &spec.healthcheck {
        crate::health::validate(h).map_err(EngineError::Invalid)?;
    }
    Ok(())
}

impl Engine {
    /// Creates a container. Returns its ID and warnings.
    pub async fn create(&self, spec: CreateSpec) -> Result<(String, Vec<String>)> {
        let name = match &spec.name {
            Some(n) if !n.is_empty() => names::validate_name(n).map_err(EngineError::Invalid)?,
            _ => loop {
                let candidate = names::random_name();
                if self.find(&candidate).is_err() {
                    break candidate;
                }
            },
        };
        validate_host(&spec.host, &spec)?;
        let images = self.inner.images.clone();
        let image_name = spec.image.clone();
        if image_name.is_empty() {
            return Err(EngineError::Invalid("config cannot be empty in order to create a container".into()));
        }
        let image = tokio::task::spawn_blocking(move || images.get(&image_name))
            .await
            .map_err(|e| EngineError::Internal(format!("image lookup: {e}")))?
            .map_err(|e| match e.kind() {
                shoal_image::ErrorKind::NotFound => EngineError::NotFound(format!("No such image: {}", normalize_for_message(&spec.image))),
                _ => EngineError::Image(e),
            })?;
        let id = new_id();
        let config = merge_config(&id, &spec, &image, &spec.image)?;
        let dirs = self.dirs(&id);
        let record = ContainerRecord {
            id: id.clone(),
            name: name.clone(),
            created: Utc::now(),
            config,
            state: ContainerState::default(),
            network: NetworkState::default(),
            log_path: dirs.root.join(format!("{id}-json.log")).to_string_lossy().into_owned(),
        };
        // The name is taken at once (under the map's lock); the files are written outside it,
        // on a blocking thread, with the container's operation lock held so nothing acts on it
        // before they exist.
        let c = Container::new(record.clone());
        let _op = c.op.try_lock().map_err(|_| EngineError::Internal("a new container's lock is taken".into()))?;
        {
            let mut containers = lock(&self.inner.containers);
            if let Some(other) = containers.values().find(|c| c.lock().name == name) {
                let other_id = other.lock().id.clone();
                return Err(EngineError::Conflict(format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \"{other_id}\". You have to remove (or rename) that container to be able to reuse that name."
                )));
            }
            containers.insert(id.clone(), c.clone());
        }
        let written = {
            let (this, c) = (self.clone(), c.clone());
            tokio::task::spawn_blocking(move || {
                dirs.create()?;
                this.write_record(&c)
            })
            .await
            .map_err(|e| EngineError::Internal(format!("creating {id}: {e}")))
            .and_then(|r| r)
        };
        if let Err(e) = written {
            lock(&self.inner.containers).remove(&id);
            let _ = std::fs::remove_dir_all(&self.dirs(&id).root);
            return Err(e);
        }
        info!(container = %id, name = %name, image = %spec.image, "container created");
        self.emit_container("create", &record, &[]);
        Ok((id, Vec::new()))
    }

    /// Starts a created or stopped container.
    pub async fn start(&self, reference: &str) -> Result<()> {
        let c = self.find(reference)?;
        let _op = c.op.lock().await;
        {
            let mut rec = c.lock();
            match rec.state.status {
                Status::Running => return Err(EngineError::NotModified("started")),
                Status::Removing | Status::Dead => {
                    return Err(EngineError::Conflict(format!("container {} is marked for removal and cannot be started", rec.id)))
                }
                _ => {}
            }
            rec.state.manually_stopped = false;
        }
        let result = self.start_locked(&c).await;
        drop(_op);
        if result.is_err() && c.lock().config.host.auto_remove {
            // `docker run --rm` waits for the removal after a failed start, as with dockerd.
            if let Err(e) = self.remove_container(&c, true).await {
                warn!(error = %e, "removing a container whose start failed");
            }
        }
        result
    }

    /// Starts a container whose operation lock is held by the caller.
    async fn start_locked(&self, c: &Arc<Container>) -> Result<()> {
        let record = c.snapshot();
        let id = record.id.clone();
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || this.prepare_and_spawn(&record))
            .await
            .map_err(|e| EngineError::Internal(format!("starting {id}: {e}")))?;
        match result {
            Ok(started) => {
                let snapshot = {
                    let mut rec = c.lock();
                    rec.state.status = Status::Running;
                    rec.state.pid = started.init_pid;
                    rec.state.shim_pid = started.shim_pid;
                    rec.state.started_at = Some(Utc::now());
                    rec.state.error.clear();
                    rec.state.exit_code = 0;
                    rec.state.oom_killed = false;
                    rec.state.has_been_started = true;
                    crate::health::reset_for_start(&mut rec);
                    rec.network = started.network;
                    rec.clone()
                };
                self.persist(c).await?;
                c.notify();
                self.start_health_monitor(c);
                self.connect_pending_attaches(c, &id).await;
                if let Err(e) = self.release_start_gate(&id).await {
                    warn!(container = %id, error = %e, "releasing the start gate failed");
                }
                self.emit_container("start", &snapshot, &[]);
                self.spawn_monitor(c.clone(), started.shim_pid);
                info!(container = %id, pid = started.init_pid, "container started");
                Ok(())
            }
            Err(err) => {
                {
                    let mut rec = c.lock();
                    rec.state.error = err.to_string();
                    if rec.state.status != Status::Created {
                        rec.state.status = Status::Exited;
                    }
                    rec.state.exit_code = if err.to_string().contains("executable file not found") || err.to_string().contains("no such file or directory") { 127 } else { 128 };
                }
                let _ = self.persist(c).await;
                // A start failure ends any pending attach.
                lock(&c.pending_attach).clear();
                c.notify();
                Err(err)
            }
        }
    }

    /// Blocking part of start: rootfs, network, bundle, shim.
    fn prepare_and_spawn(&self, record: &ContainerRecord) -> Result<Started> {
        let id = &record.id;
        let dirs = self.dirs(id);
        let cfg = &record.config;
        let layers = self.inner.images.layer_paths(&cfg.image_id)?;
        rootfs::mount_rootfs(&dirs, &layers)?;
        let mut cleanup = StartCleanup { engine: self, id: id.clone(), dirs: dirs.clone(), ip: None, endpoint: false, published: false, armed: true };

        let rootfs_path = dirs.rootfs();
        let wd = if cfg.working_dir.is_empty() { "/".to_string() } else { cfg.working_dir.clone() };
        rootfs::ensure_dir_in_root(&rootfs_path, &wd)?;
        let user = shoal_runtime::resolve_user(&rootfs_path, &cfg.user)?;

        let mut network = NetworkState::default();
        let mut netns_path = None;
        match cfg.host.network_mode {
            NetworkMode::Bridge => {
                let ip = self.inner.net.allocate_ip(None)?;
                cleanup.ip = Some(ip);
                let endpoint = self.inner.net.create_endpoint(id, ip)?;
                cleanup.endpoint = true;
                netns_path = Some(endpoint.netns_path.clone());
                network.ip = Some(ip);
                network.prefix_len = endpoint.prefix_len;
                network.gateway = Some(endpoint.gateway);
                network.mac = endpoint.mac.clone();
                let specs = port_specs(cfg);
                if !specs.is_empty() {
                    let published = self.inner.net.publish(id, ip, &specs)?;
                    cleanup.published = true;
                    network.ports = published.iter().map(from_net_published).collect();
                }
                // Overlay interfaces live in the container's netns: removing the endpoint
                // (the netns) removes them too.
                for (i, o) in cfg.host.overlays.iter().enumerate() {
                    let ifname = format!("eth{}", i + 1);
                    self.inner.mesh.attach(&endpoint.netns_path, o.vni, o.ip, &ifname)?;
                }
                if !cfg.host.overlays.is_empty() {
                    if let Some(hook) = self.netns_hook() {
                        hook.netns_ready(id, &endpoint.netns_path, &cfg.host.overlays).map_err(EngineError::Internal)?;
                    }
                }
            }
            NetworkMode::Host => netns_path = Some(format!("/proc/{}/ns/net", std::process::id()).into()),
            NetworkMode::None => {}
        }
        rootfs::write_etc_files(
            &dirs,
            &cfg.hostname,
            &cfg.domainname,
            network.ip,
            &cfg.host.extra_hosts,
            &cfg.host.dns,
            cfg.host.network_mode == NetworkMode::Host,
        )?;

        let mut env = cfg.env.clone();
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.push(format!("HOSTNAME={}", cfg.hostname));
        }
        if cfg.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", rootfs::home_dir(&rootfs_path, user.uid)));
        }
        let mut mounts = Vec::new();
        for (src, dest) in [(dirs.resolv_conf(), "/etc/resolv.conf"), (dirs.hostname(), "/etc/hostname"), (dirs.hosts(), "/etc/hosts")] {
            mounts.push(shoal_runtime::MountSpec { source: src, destination: dest.into(), kind: shoal_runtime::MountKind::Bind { readonly: cfg.host.readonly_rootfs } });
        }
        for bind in &cfg.host.binds {
            mounts.push(shoal_runtime::MountSpec {
                source: bind.source.clone().into(),
                destination: bind.destination.clone(),
                kind: shoal_runtime::MountKind::Bind { readonly: bind.readonly },
            });
        }
        for (dest, opts) in &cfg.host.tmpfs {
            let mut options: Vec<String> = vec!["nosuid".into(), "nodev".into(), "noexec".into()];
            options.extend(opts.split(',').filter(|o| !o.is_empty()).map(str::to_string));
            mounts.push(shoal_runtime::MountSpec { source: "tmpfs".into(), destination: dest.clone(), kind: shoal_runtime::MountKind::Tmpfs { options } });
        }
        let init_path = if cfg.host.init == Some(true) {
            Some(self.inner.cfg.init_path.clone().ok_or_else(|| {
                EngineError::Invalid("--init requested but no init binary (tini-static or docker-init) was found on this node".into())
            })?)
        } else {
            None
        };
        let nano_cpus = if cfg.host.nano_cpus > 0 {
            Some(cfg.host.nano_cpus)
        } else if cfg.host.cpu_quota > 0 {
            let period = if cfg.host.cpu_period > 0 { cfg.host.cpu_period } else { 100_000 };
            Some(cfg.host.cpu_quota * 1_000_000_000 / period)
        } else {
            None
        };
        let spec = shoal_runtime::SpecInput {
            rootfs: rootfs_path.clone(),
            args: std::iter::once(cfg.path.clone()).chain(cfg.args.iter().cloned()).collect(),
            env,
            cwd: wd,
            user,
            tty: cfg.tty,
            hostname: cfg.hostname.clone(),
            netns_path: netns_path.clone(),
            mounts,
            memory_limit: (cfg.host.memory > 0).then_some(cfg.host.memory),
            memory_swap: (cfg.host.memory_swap != 0).then_some(cfg.host.memory_swap),
            nano_cpus,
            cpu_shares: (cfg.host.cpu_shares > 0).then_some(cfg.host.cpu_shares as u64),
            pids_limit: cfg.host.pids_limit.filter(|p| *p > 0),
            cgroups_path: self.cgroups_path(id),
            readonly_rootfs: cfg.host.readonly_rootfs,
            cap_add: cfg.host.cap_add.clone(),
            cap_drop: cfg.host.cap_drop.clone(),
            privileged: cfg.host.privileged,
            init_path,
            sysctls: Default::default(),
            oom_score_adj: None,
            rlimits: Vec::new(),
        };
        let bundle = self.bundle_dir(id);
        std::fs::create_dir_all(&bundle).map_err(|e| EngineError::io(format!("creating {}", bundle.display()), e))?;
        shoal_runtime::write_bundle(&bundle, &spec)?;
        let shim_dir = self.shim_dir(id);
        let _ = std::fs::remove_dir_all(&shim_dir);
        std::fs::create_dir_all(&shim_dir).map_err(|e| EngineError::io(format!("creating {}", shim_dir.display()), e))?;
        let args = shoal_runtime::ShimArgs {
            id: id.clone(),
            bundle,
            runtime_root: self.runtime_root(),
            shim_dir,
            log_path: record.log_path.clone().into(),
            tty: cfg.tty,
            open_stdin: cfg.open_stdin,
            stdin_once: cfg.stdin_once,
            start_gated: true,
        };
        let started = shoal_runtime::spawn_shim(&self.inner.cfg.shim_exe, &args)?;
        cleanup.armed = false;
        Ok(Started { shim_pid: started.shim_pid, init_pid: started.init_pid, network })
    }

    async fn release_start_gate(&self, id: &str) -> Result<()> {
        let shim_dir = self.shim_dir(id);
        tokio::task::spawn_blocking(move || shoal_runtime::control(&shim_dir, &shoal_runtime::ControlRequest::Start(true)))
            .await
            .map_err(|e| EngineError::Internal(format!("start gate: {e}")))??;
        Ok(())
    }

    /// Watches the shim; when it exits, records the exit and applies the restart policy.
    pub(crate) fn spawn_monitor(&self, c: Arc<Container>, shim_pid: i32) {
        let engine = self.clone();
        tokio::spawn(async move {
            match shoal_runtime::pidfd_open(shim_pid) {
                Ok(fd) => wait_pidfd(fd).await,
                Err(e) => debug!(shim_pid, error = %e, "shim already gone"),
            }
            engine.handle_exit(c).await;
        });
    }

    /// Records a container's exit, tears down its resources and applies its restart policy.
    async fn handle_exit(&self, c: Arc<Container>) {
        self.stop_health_monitor(&c);
        let id = c.lock().id.clone();
        let shim_dir = self.shim_dir(&id);
        let exit = tokio::task::spawn_blocking({
            let shim_dir = shim_dir.clone();
            move || shoal_runtime::read_exit(&shim_dir)
        })
        .await
        .ok()
        .flatten();
        let this = self.clone();
        let teardown_id = id.clone();
        // An --rm container's endpoint goes away with the container (in the background, see
        // `remove_container`); everyone else's before the exit is reported, so a restart finds a
        // clean slate.
        let (keep_endpoint, ip) = {
            let rec = c.lock();
            (rec.config.host.auto_remove, rec.network.ip)
        };
        let _ = tokio::task::spawn_blocking(move || {
            this.teardown_local(&teardown_id);
            if !keep_endpoint {
                this.teardown_endpoint(&teardown_id, ip);
            }
        })
        .await;
        let (snapshot, restart_after) = {
            let mut rec = c.lock();
            match &exit {
                Some(e) => {
                    rec.state.exit_code = e.exit_code as i64;
                    rec.state.oom_killed = e.oom_killed;
                    rec.state.finished_at = Some(chrono::DateTime::parse_from_rfc3339(&e.finished_at).map(|t| t.with_timezone(&Utc)).unwrap_or_else(|_| Utc::now()));
                    if let Some(err) = &e.error {
                        rec.state.error = err.clone();
                    }
                }
                None => {
                    rec.state.exit_code = 255;
                    rec.state.finished_at = Some(Utc::now());
                }
            }
            rec.state.pid = 0;
            rec.state.shim_pid = 0;
            rec.network.ports.clear();
            if !keep_endpoint {
                rec.network.ip = None;
            }
            let restart = should_restart(&rec);
            rec.state.status = if restart.is_some() { Status::Restarting } else { Status::Exited };
            (rec.clone(), restart)
        };
        if let Err(e) = self.persist(&c).await {
            warn!(container = %id, error = %e, "persisting the exit failed");
        }
        *lock(&c.exits) += 1;
        c.notify();
        info!(container = %id, exit_code = snapshot.state.exit_code, "container exited");
        self.emit_container("die", &snapshot, &[("exitCode", snapshot.state.exit_code.to_string())]);

        if let Some(delay) = restart_after {
            let engine = self.clone();
            tokio::spawn(async move { engine.restart_after(c, delay).await });
        } else if snapshot.config.host.auto_remove {
            if let Err(e) = self.remove_container(&c, true).await {
                warn!(container = %id, error = %e, "auto-remove failed");
            }
        }
    }

    async fn restart_after(&self, c: Arc<Container>, delay: Duration) {
        tokio::time::sleep(delay).await;
        let _op = c.op.lock().await;
        let (status, stopped) = {
            let rec = c.lock();
            (rec.state.status, rec.state.manually_stopped)
        };
        if *lock(&c.removed) || stopped || status != Status::Restarting {
            return;
        }
        {
            let mut rec = c.lock();
            rec.state.restart_count += 1;
        }
        if let Err(e) = self.start_locked(&c).await {
            warn!(error = %e, "restart by policy failed");
            c.lock().state.status = Status::Exited;
            let _ = self.persist(&c).await;
            c.notify();
        }
    }

    /// Releases what a started container held: runtime state, network, rootfs mount.

    /// The fast part of releasing a stopped container: runtime state, port rules, rootfs mount.
    fn teardown_local(&self, id: &str) {
        let t = std::time::Instant::now();
        shoal_runtime::cleanup_stale(&self.runtime_root(), id);
        if let Err(e) = self.inner.net.unpublish(id) {
            warn!(container = %id, error = %e, "unpublishing ports failed");
        }
        if let Err(e) = rootfs::unmount_rootfs(&self.dirs(id)) {
            warn!(container = %id, error = %e, "unmounting the rootfs failed");
        }
        let _ = std::fs::remove_dir_all(self.bundle_dir(id));
        debug!(container = %id, elapsed_ms = t.elapsed().as_secs_f64() * 1e3, "container runtime state released");
    }

    /// Removes the container's network endpoint, then frees its IP (only then, so the address
    /// is never handed out while the old veth still exists). Deleting a veth waits for the
    /// kernel, which is why --rm containers do this off the critical path.
    fn teardown_endpoint(&self, id: &str, ip: Option<std::net::Ipv4Addr>) {
        let t = std::time::Instant::now();
        if let Some(hook) = self.netns_hook() {
            hook.netns_gone(id);
        }
        if let Err(e) = self.inner.net.remove_endpoint(id) {
            warn!(container = %id, error = %e, "removing the network endpoint failed");
        }
        if let Some(ip) = ip {
            self.inner.net.release_ip(ip);
        }
        debug!(container = %id, elapsed_ms = t.elapsed().as_secs_f64() * 1e3, "network endpoint removed");
    }

    /// Sends a signal to the container's main process.
    pub async fn kill(&self, reference: &str, signal: Option<&str>) -> Result<()> {
        let c = self.find(reference)?;
        let sig = parse_signal(signal.unwrap_or("SIGKILL"))?;
        let (id, running) = {
            let rec = c.lock();
            (rec.id.clone(), rec.state.status == Status::Running)
        };
        if !running {
            return Err(EngineError::Conflict(format!("Cannot kill container: {reference}: container {id} is not running")));
        }
        if sig == libc::SIGKILL || sig == libc::SIGTERM || sig == libc::SIGINT {
            c.lock().state.manually_stopped = true;
        }
        self.signal(&id, sig).await?;
        let snapshot = c.snapshot();
        self.emit_container("kill", &snapshot, &[("signal", sig.to_string())]);
        Ok(())
    }

    async fn signal(&self, id: &str, sig: i32) -> Result<()> {
        let shim_dir = self.shim_dir(id);
        tokio::task::spawn_blocking(move || shoal_runtime::control(&shim_dir, &shoal_runtime::ControlRequest::Kill(sig)))
            .await
            .map_err(|e| EngineError::Internal(format!("signalling {id}: {e}")))??;
        Ok(())
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout` seconds.
    pub async fn stop(&self, reference: &str, timeout: Option<i64>, signal: Option<&str>) -> Result<()> {
        let c = self.find(reference)?;
        let _op = c.op.lock().await;
        self.stop_locked(&c, timeout, signal).await
    }

    async fn stop_locked(&self, c: &Arc<Container>, timeout: Option<i64>, signal: Option<&str>) -> Result<()> {
        let (id, status, stop_signal, default_timeout) = {
            let mut rec = c.lock();
            rec.state.manually_stopped = true;
            (rec.id.clone(), rec.state.status, rec.config.stop_signal.clone(), rec.config.stop_timeout)
        };
        if status == Status::Restarting {
            c.lock().state.status = Status::Exited;
            self.persist(c).await?;
            c.notify();
            return Ok(());
        }
        if status != Status::Running {
            self.persist(c).await?;
            return Err(EngineError::NotModified("stopped"));
        }
        let sig = parse_signal(signal.unwrap_or(&stop_signal))?;
        let timeout = timeout.or(default_timeout).unwrap_or(10);
        let mut rx = c.changed.subscribe();
        let exits_before = *lock(&c.exits);
        let exited = |c: &Container| *lock(&c.exits) > exits_before;
        if let Err(e) = self.signal(&id, sig).await {
            debug!(container = %id, error = %e, "stop signal not delivered");
        }
        let deadline = if timeout < 0 { None } else { Some(Duration::from_secs(timeout as u64)) };
        let graceful = async {
            while !exited(c) {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        let done = match deadline {
            Some(d) => tokio::time::timeout(d, graceful).await.is_ok(),
            None => {
                graceful.await;
                true
            }
        };
        if !done {
            info!(container = %id, timeout, "stop timeout reached, killing");
            if let Err(e) = self.signal(&id, libc::SIGKILL).await {
                debug!(container = %id, error = %e, "SIGKILL not delivered");
            }
            while !exited(c) {
                if tokio::time::timeout(Duration::from_secs(30), rx.changed()).await.is_err() {
                    return Err(EngineError::Internal(format!("container {id} did not exit after SIGKILL")));
                }
            }
        }
        // The monitor has marked it exited; make sure no restart policy brings it back.
        let snapshot = {
            let mut rec = c.lock();
            if rec.state.status == Status::Restarting {
                rec.state.status = Status::Exited;
            }
            rec.clone()
        };
        self.persist(c).await?;
        c.notify();
        self.emit_container("stop", &snapshot, &[]);
        Ok(())
    }

    /// Stops (if running) and starts a container again.
    pub async fn restart(&self, reference: &str, timeout: Option<i64>, signal: Option<&str>) -> Result<()> {
        let c = self.find(reference)?;
        let _op = c.op.lock().await;
        match self.stop_locked(&c, timeout, signal).await {
            Ok(()) | Err(EngineError::NotModified(_)) => {}
            Err(e) => return Err(e),
        }
        c.lock().state.manually_stopped = false;
        self.start_locked(&c).await?;
        let snapshot = c.snapshot();
        self.emit_container("restart", &snapshot, &[]);
        Ok(())
    }

    /// Removes a container; a running one only with `force` (it is killed first).
    pub async fn remove(&self, reference: &str, force: bool) -> Result<()> {
        let c = self.find(reference)?;
        self.remove_container(&c, force).await
    }

    async fn remove_container(&self, c: &Arc<Container>, force: bool) -> Result<()> {
        let _op = c.op.lock().await;
        let (id, status) = {
            let rec = c.lock();
            (rec.id.clone(), rec.state.status)
        };
        if *lock(&c.removed) {
            return Ok(());
        }
        self.stop_health_monitor(c);
        match status {
            Status::Running if !force => {
                return Err(EngineError::Conflict(format!(
                    "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                    c.lock().name
                )))
            }
            Status::Running => {
                c.lock().state.manually_stopped = true;
                match self.stop_locked(c, Some(0), Some("SIGKILL")).await {
                    Ok(()) | Err(EngineError::NotModified(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Status::Restarting => {
                c.lock().state.manually_stopped = true;
            }
            _ => {}
        }
        let ip = c.lock().network.ip;
        let this = self.clone();
        let rm_id = id.clone();
        let files = c.clone();
        tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            this.teardown_local(&rm_id);
            let _ = std::fs::remove_dir_all(this.shim_dir(&rm_id));
            let mut gone = lock(&files.disk);
            *gone = true;
            let dirs = this.dirs(&rm_id);
            let result = std::fs::remove_dir_all(&dirs.root).map_err(|e| EngineError::io(format!("removing {}", dirs.root.display()), e));
            debug!(container = %rm_id, elapsed_ms = t.elapsed().as_secs_f64() * 1e3, "container files removed");
            result
        })
        .await
        .map_err(|e| EngineError::Internal(format!("removing {id}: {e}")))??;
        let snapshot = c.snapshot();
        let none_left = {
            let mut containers = lock(&self.inner.containers);
            containers.remove(&id);
            containers.is_empty()
        };
        if none_left {
            self.remove_cgroup_parent();
        }
        lock(&self.inner.execs).retain(|_, e| e.container_id != id);
        *lock(&c.removed) = true;
        c.notify();
        info!(container = %id, "container removed");
        self.emit_container("destroy", &snapshot, &[]);
        // The ID is gone for good, so the endpoint can finish going away in the background.
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.teardown_endpoint(&id, ip));
        Ok(())
    }

    pub async fn rename(&self, reference: &str, new_name: &str) -> Result<()> {
        let c = self.find(reference)?;
        let new_name = names::validate_name(new_name).map_err(EngineError::Invalid)?;
        let snapshot = {
            let containers = lock(&self.inner.containers);
            if let Some(other) = containers.values().find(|o| o.lock().name == new_name) {
                let other_id = other.lock().id.clone();
                return Err(EngineError::Conflict(format!(
                    "Conflict. The container name \"/{new_name}\" is already in use by container \"{other_id}\". You have to remove (or rename) that container to be able to reuse that name."
                )));
            }
            let mut rec = c.lock();
            let old = std::mem::replace(&mut rec.name, new_name.clone());
            let snapshot = rec.clone();
            drop(rec);
            if let Err(e) = self.write_record(&c) {
                c.lock().name = old;
                return Err(e);
            }
            snapshot
        };
        self.emit_container("rename", &snapshot, &[]);
        Ok(())
    }

    /// Waits for a container condition and returns its exit code.
    pub async fn wait(&self, reference: &str, condition: WaitCondition) -> Result<WaitOutcome> {
        let c = self.find(reference)?;
        let mut rx = c.changed.subscribe();
        let exits_at_start = *lock(&c.exits);
        loop {
            let (status, code, error) = {
                let rec = c.lock();
                (rec.state.status, rec.state.exit_code, rec.state.error.clone())
            };
            let removed = *lock(&c.removed);
            let exits = *lock(&c.exits);
            let outcome = WaitOutcome { status_code: code, error: (!error.is_empty()).then_some(error) };
            let done = match condition {
                WaitCondition::NotRunning => !matches!(status, Status::Running | Status::Restarting) || removed,
                WaitCondition::NextExit => exits > exits_at_start || removed,
                WaitCondition::Removed => removed,
            };
            if done {
                return Ok(outcome);
            }
            if rx.changed().await.is_err() {
                return Ok(outcome);
            }
        }
    }

    /// Attaches to a container's stdio. Before the container starts, the session waits and is
    /// connected at start so no output is missed.
    pub async fn attach(&self, reference: &str, stdin: bool, stdout: bool, stderr: bool) -> Result<AttachSession> {
        let c = self.find(reference)?;
        let (id, status, tty, open_stdin) = {
            let rec = c.lock();
            (rec.id.clone(), rec.state.status, rec.config.tty, rec.config.open_stdin)
        };
        let stdin = stdin && open_stdin;
        let (out_tx, out_rx) = mpsc::channel(64);
        let (in_tx, in_rx) = if stdin {
            let (tx, rx) = mpsc::channel(64);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let pending = PendingAttach { out: out_tx, stdin: in_rx, streams: (stdin, stdout, stderr) };
        if status == Status::Running {
            self.connect_attach(&id, pending).await?;
        } else {
            lock(&c.pending_attach).push(pending);
        }
        Ok(AttachSession { tty, output: out_rx, stdin: in_tx })
    }

    async fn connect_pending_attaches(&self, c: &Arc<Container>, id: &str) {
        let pending: Vec<PendingAttach> = std::mem::take(&mut *lock(&c.pending_attach));
        for p in pending {
            if let Err(e) = self.connect_attach(id, p).await {
                warn!(container = %id, error = %e, "attaching failed");
            }
        }
    }

    async fn connect_attach(&self, id: &str, p: PendingAttach) -> Result<()> {
        let shim_dir = self.shim_dir(id);
        let (si, so, se) = p.streams;
        let stream = tokio::task::spawn_blocking(move || shoal_runtime::attach(&shim_dir, si, so, se))
            .await
            .map_err(|e| EngineError::Internal(format!("attach: {e}")))??;
        stream.set_nonblocking(true).map_err(|e| EngineError::io("attach socket", e))?;
        let stream = tokio::net::UnixStream::from_std(stream).map_err(|e| EngineError::io("attach socket", e))?;
        let (mut reader, mut writer) = stream.into_split();
        if let Some(mut stdin) = p.stdin {
            tokio::spawn(async move {
                while let Some(chunk) = stdin.recv().await {
                    if writer.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = writer.shutdown().await;
            });
        }
        let out = p.out;
        tokio::spawn(async move {
            let mut header = [0u8; 8];
            loop {
                if reader.read_exact(&mut header).await.is_err() {
                    break;
                }
                let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
                let mut payload = vec![0u8; len];
                if reader.read_exact(&mut payload).await.is_err() {
                    break;
                }
                if out.send((header[0], Bytes::from(payload))).await.is_err() {
                    break;
                }
            }
        });
        Ok(())
    }

    /// Resizes a running container's tty.
    pub async fn resize(&self, reference: &str, height: u16, width: u16) -> Result<()> {
        let c = self.find(reference)?;
        let (id, running) = {
            let rec = c.lock();
            (rec.id.clone(), rec.state.status == Status::Running)
        };
        if !running {
            return Err(EngineError::Conflict(format!("Container {id} is not running")));
        }
        let shim_dir = self.shim_dir(&id);
        tokio::task::spawn_blocking(move || {
            shoal_runtime::control(&shim_dir, &shoal_runtime::ControlRequest::Resize(shoal_runtime::ResizeRequest { height, width }))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("resize: {e}")))??;
        Ok(())
    }

    /// Loads container records and re-adopts those whose shim still runs (live restore).
    pub(crate) async fn restore(&self) -> Result<()> {
        let root = self.inner.containers_root.clone();
        let entries = std::fs::read_dir(&root).map_err(|e| EngineError::io(format!("reading {}", root.display()), e))?;
        let mut to_start = Vec::new();
        for entry in entries.flatten() {
            let dirs = ContainerDirs { root: entry.path() };
            let record: ContainerRecord = match crate::persist::read_json(&dirs.record()) {
                Ok(r) => r,
                Err(e) => {
                    warn!(path = %dirs.record().display(), error = %e, "skipping unreadable container record");
                    continue;
                }
            };
            let id = record.id.clone();
            let c = Container::new(record.clone());
            lock(&self.inner.containers).insert(id.clone(), c.clone());
            let was_running = matches!(record.state.status, Status::Running | Status::Restarting);
            if !was_running {
                if boot_restart(&record) {
                    to_start.push(c);
                }
                continue;
            }
            let shim_dir = self.shim_dir(&id);
            let alive = {
                let id = id.clone();
                tokio::task::spawn_blocking(move || shoal_runtime::shim_alive(&shim_dir, &id)).await.ok().flatten()
            };
            match alive {
                Some((shim_pid, init_pid)) if record.state.status == Status::Running => {
                    if let Some(ip) = record.network.ip {
                        let published: Vec<shoal_net::PublishedPort> = record.network.ports.iter().map(to_net_published).collect();
                        if let Err(e) = self.inner.net.restore(&id, ip, &published) {
                            warn!(container = %id, error = %e, "restoring the network state failed");
                        }
                    }
                    let snapshot = {
                        let mut rec = c.lock();
                        rec.state.shim_pid = shim_pid;
                        rec.state.pid = init_pid;
                        crate::health::reset_for_start(&mut rec);
                        rec.clone()
                    };
                    if snapshot.state.health.is_some() {
                        if let Err(e) = self.write_record(&c) {
                            warn!(container = %id, error = %e, "persisting the reset health state failed");
                        }
                    }
                    info!(container = %id, shim_pid, "re-adopted running container");
                    self.start_health_monitor(&c);
                    self.spawn_monitor(c, shim_pid);
                }
                _ => {
                    info!(container = %id, "container died while the daemon was down");
                    self.handle_exit(c).await;
                }
            }
        }
        // Endpoints of containers removed while their background cleanup was cut short.
        if let Ok(entries) = std::fs::read_dir(&self.inner.cfg.bridge.netns_dir) {
            let known: std::collections::HashSet<String> = lock(&self.inner.containers).keys().cloned().collect();
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.len() == 64 && !known.contains(&name) {
                    info!(container = %name, "removing the endpoint of a removed container");
                    if let Err(e) = self.inner.net.remove_endpoint(&name) {
                        warn!(container = %name, error = %e, "removing a stale endpoint failed");
                    }
                }
            }
        }
        for c in to_start {
            let engine = self.clone();
            tokio::spawn(async move {
                let id = c.lock().id.clone();
                let _op = c.op.lock().await;
                if let Err(e) = engine.start_locked(&c).await {
                    warn!(container = %id, error = %e, "starting at boot by restart policy failed");
                }
            });
        }
        Ok(())
    }
}

struct Started {
    shim_pid: i32,
    init_pid: i32,
    network: NetworkState,
}

/// Undoes a half-finished start when dropped while armed.
struct StartCleanup<'a> {
    engine: &'a Engine,
    id: String,
    dirs: ContainerDirs,
    ip: Option<std::net::Ipv4Addr>,
    endpoint: bool,
    published: bool,
    armed: bool,
}

impl Drop for StartCleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let net = &self.engine.inner.net;
        if self.published {
            let _ = net.unpublish(&self.id);
        }
        if self.endpoint {
            if let Some(hook) = self.engine.netns_hook() {
                hook.netns_gone(&self.id);
            }
            let _ = net.remove_endpoint(&self.id);
        }
        if let Some(ip) = self.ip {
            net.release_ip(ip);
        }
        shoal_runtime::cleanup_stale(&self.engine.runtime_root(), &self.id);
        let _ = rootfs::unmount_rootfs(&self.dirs);
    }
}

async fn wait_pidfd(fd: OwnedFd) {
    // SAFETY: `fd` is an `OwnedFd` moved into the AsyncFd, so it stays open and refers to the same
    // pidfd until the AsyncFd is dropped; nothing else closes or replaces it.
    match unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1) {
        Ok(async_fd) => {
            let _ = async_fd.readable().await;
        }
        Err(e) => warn!(error = %e, "watching a pidfd failed"),
    }
}

/// The delay before restarting an exited container, or None if its policy says no.
pub(crate) fn should_restart(rec: &ContainerRecord) -> Option<Duration> {
    if rec.state.manually_stopped || rec.config.host.auto_remove {
        return None;
    }
    let policy = rec.config.host.restart_policy;
    let restart = match policy.name {
        RestartPolicyName::No => false,
        RestartPolicyName::Always | RestartPolicyName::UnlessStopped => true,
        RestartPolicyName::OnFailure => {
            rec.state.exit_code != 0
                && (policy.maximum_retry_count == 0 || rec.state.restart_count < policy.maximum_retry_count)
        }
    };
    if !restart {
        return None;
    }
    // Docker's back-off: 100 ms doubling per restart, capped at one minute, reset once a run
    // lasted at least ten seconds.
    let ran_long = match (rec.state.started_at, rec.state.finished_at) {
        (Some(s), Some(f)) => (f - s).num_seconds() >= 10,
        _ => false,
    };
    let exponent = if ran_long { 0 } else { rec.state.restart_count.min(10) };
    Some(Duration::from_millis((100u64 << exponent).min(60_000)))
}

/// Whether a stopped container should be started when the daemon boots.
fn boot_restart(rec: &ContainerRecord) -> bool {
    match rec.config.host.restart_policy.name {
        RestartPolicyName::Always => rec.state.has_been_started,
        RestartPolicyName::UnlessStopped => rec.state.has_been_started && !rec.state.manually_stopped,
        _ => false,
    }
}

fn port_specs(cfg: &ContainerConfig) -> Vec<shoal_net::PortSpec> {
    let mut specs: Vec<shoal_net::PortSpec> = cfg
        .host
        .port_bindings
        .iter()
        .map(|b| shoal_net::PortSpec {
            host_ip: b.host_ip,
            host_port: b.host_port,
            container_port: b.container.port,
            proto: net_proto(b.container.proto),
        })
        .collect();
    if cfg.host.publish_all {
        for port in &cfg.exposed_ports {
            if !cfg.host.port_bindings.iter().any(|b| b.container == *port) {
                specs.push(shoal_net::PortSpec { host_ip: None, host_port: None, container_port: port.port, proto: net_proto(port.proto) });
            }
        }
    }
    specs
}

fn net_proto(p: Proto) -> shoal_net::Proto {
    match p {
        Proto::Tcp => shoal_net::Proto::Tcp,
        Proto::Udp => shoal_net::Proto::Udp,
    }
}

fn from_net_published(p: &shoal_net::PublishedPort) -> PublishedPort {
    PublishedPort {
        container: PortProto {
            port: p.container_port,
            proto: match p.proto {
                shoal_net::Proto::Tcp => Proto::Tcp,
                shoal_net::Proto::Udp => Proto::Udp,
            },
        },
        host_ip: (!p.host_ip.is_unspecified()).then_some(p.host_ip),
        host_port: p.host_port,
    }
}

fn to_net_published(p: &PublishedPort) -> shoal_net::PublishedPort {
    shoal_net::PublishedPort {
        container_port: p.container.port,
        proto: net_proto(p.container.proto),
        host_ip: p.host_ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        host_port: p.host_port,
    }
}

/// `busybox` → `busybox:latest`, as dockerd prints it in "No such image".
fn normalize_for_message(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || last.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(policy: RestartPolicyName, max: u32, exit: i64, restarts: u32) -> ContainerRecord {
        ContainerRecord {
            id: "a".repeat(64),
            name: "x".into(),
            created: Utc::now(),
            config: ContainerConfig {
                image_ref: "busybox".into(),
                image_id: "sha256:x".into(),
                path: "true".into(),
                args: vec![],
                cmd: None,
                entrypoint: None,
                env: vec![],
                working_dir: String::new(),
                user: String::new(),
                hostname: "h".into(),
                domainname: String::new(),
                labels: BTreeMap::new(),
                tty: false,
                open_stdin: false,
                stdin_once: false,
                attach_stdin: false,
                attach_stdout: false,
                attach_stderr: false,
                exposed_ports: vec![],
                stop_signal: "SIGTERM".into(),
                stop_timeout: None,
                healthcheck: None,
                host: HostSpec { restart_policy: RestartPolicy { name: policy, maximum_retry_count: max }, ..Default::default() },
            },
            state: ContainerState { exit_code: exit, restart_count: restarts, ..Default::default() },
            network: NetworkState::default(),
            log_path: String::new(),
        }
    }

    #[test]
    fn restart_policies_follow_docker() {
        assert!(should_restart(&record(RestartPolicyName::No, 0, 1, 0)).is_none());
        assert!(should_restart(&record(RestartPolicyName::Always, 0, 0, 0)).is_some());
        assert!(should_restart(&record(RestartPolicyName::OnFailure, 0, 0, 0)).is_none());
        assert!(should_restart(&record(RestartPolicyName::OnFailure, 2, 1, 1)).is_some());
        assert!(should_restart(&record(RestartPolicyName::OnFailure, 2, 1, 2)).is_none());
        let mut stopped = record(RestartPolicyName::Always, 0, 0, 0);
        stopped.state.manually_stopped = true;
        assert!(should_restart(&stopped).is_none());
        assert_eq!(should_restart(&record(RestartPolicyName::Always, 0, 0, 3)), Some(Duration::from_millis(800)));
    }

    #[test]
    fn signals_parse_like_docker() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("3").unwrap(), 3);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn restart_policy_validation() {
        assert!(RestartPolicy::from_parts("on-failure", 3).is_ok());
        assert!(RestartPolicy::from_parts("always", 3).is_err());
        assert!(RestartPolicy::from_parts("sometimes", 0).is_err());
    }
}

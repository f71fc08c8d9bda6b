//! Container endpoints.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use base64::Engine as _;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use shoal_engine::{BindMount, CreateSpec, HealthConfig, HostSpec, LogOptions, NetworkMode, PortBinding, PortProto, RestartPolicy, Status, WaitCondition};

use crate::filters::Filters;
use crate::http::{self, ApiError, ApiResult, Query};
use crate::system::parse_time_opt;
use crate::wire;
use crate::ApiState;

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    hostname: String,
    domainname: String,
    user: String,
    attach_stdin: bool,
    attach_stdout: bool,
    attach_stderr: bool,
    exposed_ports: Option<HashMap<String, Value>>,
    tty: bool,
    open_stdin: bool,
    stdin_once: bool,
    env: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    image: String,
    working_dir: String,
    entrypoint: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
    stop_timeout: Option<i64>,
    healthcheck: Option<HealthcheckBody>,
    host_config: Option<HostConfigBody>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct HealthcheckBody {
    test: Option<Vec<String>>,
    interval: i64,
    timeout: i64,
    start_period: i64,
    start_interval: i64,
    retries: i64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct HostConfigBody {
    binds: Option<Vec<String>>,
    port_bindings: Option<HashMap<String, Option<Vec<PortBindingBody>>>>,
    publish_all_ports: bool,
    restart_policy: Option<RestartPolicyBody>,
    auto_remove: bool,
    memory: i64,
    memory_swap: i64,
    nano_cpus: i64,
    cpu_shares: i64,
    cpu_quota: i64,
    cpu_period: i64,
    pids_limit: Option<i64>,
    init: Option<bool>,
    tmpfs: Option<BTreeMap<String, String>>,
    cap_add: Option<Vec<String>>,
    cap_drop: Option<Vec<String>>,
    privileged: bool,
    readonly_rootfs: bool,
    network_mode: String,
    dns: Option<Vec<String>>,
    extra_hosts: Option<Vec<String>>,
    mounts: Option<Vec<MountBody>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct PortBindingBody {
    host_ip: String,
    host_port: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct RestartPolicyBody {
    name: String,
    maximum_retry_count: i64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct MountBody {
    #[serde(rename = "Type")]
    kind: String,
    source: String,
    target: String,
    read_only: bool,
    tmpfs_options: Option<TmpfsOptionsBody>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct TmpfsOptionsBody {
    size_bytes: i64,
    mode: u32,
}

fn parse_port_key(key: &str) -> Result<PortProto, ApiError> {
    PortProto::parse(key).ok_or_else(|| ApiError::bad_request(format!("invalid port specification: \"{key}\"")))
}

fn parse_binds(binds: &[String]) -> Result<Vec<BindMount>, ApiError> {
    binds
        .iter()
        .map(|b| {
            let parts: Vec<&str> = b.split(':').collect();
            let (source, destination, mode) = match parts.as_slice() {
                [s, d] => (*s, *d, ""),
                [s, d, m] => (*s, *d, *m),
                _ => return Err(ApiError::bad_request(format!("invalid volume specification: '{b}'"))),
            };
            if !source.starts_with('/') {
                return Err(ApiError::bad_request(format!(
                    "invalid volume specification: '{b}': named volumes are not supported by this daemon; use an absolute host path"
                )));
            }
            let mut readonly = false;
            for opt in mode.split(',').filter(|o| !o.is_empty()) {
                match opt {
                    "ro" => readonly = true,
                    "rw" | "z" | "Z" | "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "nocopy" => {}
                    other => return Err(ApiError::bad_request(format!("invalid mode: {other}"))),
                }
            }
            Ok(BindMount { source: source.into(), destination: destination.into(), readonly })
        })
        .collect()
}

fn to_spec(name: Option<String>, body: CreateBody) -> Result<CreateSpec, ApiError> {
    let hc = body.host_config.unwrap_or_default();
    let mut exposed = Vec::new();
    for key in body.exposed_ports.unwrap_or_default().keys() {
        exposed.push(parse_port_key(key)?);
    }
    let mut port_bindings = Vec::new();
    for (key, bindings) in hc.port_bindings.unwrap_or_default() {
        let container = parse_port_key(&key)?;
        let bindings = bindings.unwrap_or_default();
        let bindings = if bindings.is_empty() { vec![PortBindingBody::default()] } else { bindings };
        for b in bindings {
            let host_ip: Option<IpAddr> = match b.host_ip.as_str() {
                "" | "0.0.0.0" => None,
                ip => Some(ip.parse().map_err(|_| ApiError::bad_request(format!("invalid IP address: {ip}")))?),
            };
            let host_port = match b.host_port.as_str() {
                "" | "0" => None,
                p => Some(p.parse::<u16>().map_err(|_| ApiError::bad_request(format!("invalid port specification: \"{p}\"")))?),
            };
            port_bindings.push(PortBinding { container, host_ip, host_port });
        }
    }
    let rp = hc.restart_policy.unwrap_or_default();
    let restart_policy = RestartPolicy::from_parts(&rp.name, rp.maximum_retry_count).map_err(ApiError::bad_request)?;
    let mut binds = parse_binds(&hc.binds.unwrap_or_default())?;
    let mut tmpfs = hc.tmpfs.unwrap_or_default();
    for m in hc.mounts.unwrap_or_default() {
        match m.kind.as_str() {
            "bind" => binds.push(BindMount { source: m.source, destination: m.target, readonly: m.read_only }),
            "tmpfs" => {
                let mut opts = Vec::new();
                if let Some(t) = &m.tmpfs_options {
                    if t.size_bytes > 0 {
                        opts.push(format!("size={}", t.size_bytes));
                    }
                    if t.mode > 0 {
                        opts.push(format!("mode={:o}", t.mode));
                    }
                }
                tmpfs.insert(m.target, opts.join(","));
            }
            other => return Err(ApiError::bad_request(format!("mount type \"{other}\" is not supported by this daemon"))),
        }
    }
    let network_mode = NetworkMode::parse(&hc.network_mode).map_err(ApiError::not_found)?;
    Ok(CreateSpec {
        name,
        image: body.image,
        cmd: body.cmd,
        entrypoint: body.entrypoint,
        env: body.env.unwrap_or_default(),
        working_dir: body.working_dir,
        user: body.user,
        hostname: body.hostname,
        domainname: body.domainname,
        labels: body.labels.unwrap_or_default(),
        tty: body.tty,
        open_stdin: body.open_stdin,
        stdin_once: body.stdin_once,
        attach_stdin: body.attach_stdin,
        attach_stdout: body.attach_stdout,
        attach_stderr: body.attach_stderr,
        exposed_ports: exposed,
        stop_signal: body.stop_signal.filter(|s| !s.is_empty()),
        stop_timeout: body.stop_timeout,
        healthcheck: body.healthcheck.map(|h| HealthConfig {
            test: h.test.unwrap_or_default(),
            interval: h.interval,
            timeout: h.timeout,
            start_period: h.start_period,
            start_interval: h.start_interval,
            retries: h.retries,
        }),
        host: HostSpec {
            binds,
            tmpfs,
            port_bindings,
            publish_all: hc.publish_all_ports,
            restart_policy,
            auto_remove: hc.auto_remove,
            memory: hc.memory,
            memory_swap: hc.memory_swap,
            nano_cpus: hc.nano_cpus,
            cpu_shares: hc.cpu_shares,
            cpu_quota: hc.cpu_quota,
            cpu_period: hc.cpu_period,
            pids_limit: hc.pids_limit,
            init: hc.init,
            cap_add: hc.cap_add.unwrap_or_default(),
            cap_drop: hc.cap_drop.unwrap_or_default(),
            privileged: hc.privileged,
            readonly_rootfs: hc.readonly_rootfs,
            network_mode,
            dns: hc.dns.unwrap_or_default(),
            extra_hosts: hc.extra_hosts.unwrap_or_default(),
            overlays: Vec::new(), // only swarm tasks join overlays (the agent sets them)
        },
    })
}

pub async fn create(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let name = q.get("name").filter(|n| !n.is_empty()).map(str::to_string);
    let body: CreateBody = http::read_json(req.into_body()).await?;
    let spec = to_spec(name, body)?;
    let (id, warnings) = state.engine.create(spec).await?;
    Ok(http::json(StatusCode::CREATED, &json!({"Id": id, "Warnings": warnings})))
}

pub async fn list(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let all = q.bool("all");
    let limit = q.int("limit")?.filter(|l| *l > 0);
    let filters = Filters::parse(q.get("filters"), &["ancestor", "before", "expose", "exited", "health", "id", "isolation", "is-task", "label", "name", "network", "publish", "since", "status", "volume"])?;
    if let Some(statuses) = filters.get("status") {
        for s in statuses {
            if !["created", "restarting", "running", "removing", "paused", "exited", "dead"].contains(&s.as_str()) {
                return Err(ApiError::bad_request(format!("invalid filter 'status={s}'")));
            }
        }
    }
    if let Some(values) = filters.get("health") {
        for v in values {
            if !["starting", "healthy", "unhealthy", "none"].contains(&v.as_str()) {
                return Err(ApiError::bad_request(format!("Unrecognised filter value for health: {v}")));
            }
        }
    }
    let show_all = all || filters.get("status").is_some() || filters.get("exited").is_some();
    let records = state.engine.list();
    let mut out = Vec::new();
    for rec in &records {
        let running = matches!(rec.state.status, Status::Running | Status::Restarting);
        if !show_all && !running {
            continue;
        }
        let ok = filters.any("id", |v| rec.id.starts_with(v))
            && filters.any("name", |v| rec.name.contains(v.trim_start_matches('/')))
            && filters.any("status", |v| v == rec.state.status.as_str())
            && filters.any("exited", |v| rec.state.status == Status::Exited && v.parse::<i64>().ok() == Some(rec.state.exit_code))
            && filters.any("ancestor", |v| rec.config.image_ref == v || rec.config.image_id == v || rec.config.image_id.trim_start_matches("sha256:").starts_with(v))
            && filters.any("is-task", |v| (v == "true") == rec.config.labels.contains_key("com.docker.swarm.task"))
            && filters.any("publish", |v| rec.network.ports.iter().any(|p| v.split('/').next() == Some(&p.host_port.to_string())))
            && filters.any("expose", |v| rec.config.exposed_ports.iter().any(|p| v.split('/').next() == Some(&p.port.to_string())))
            && filters.any("network", |v| v == rec.config.host.network_mode.as_str())
            && filters.any("health", |v| v == wire::health_text(rec))
            && filters.labels_match(&rec.config.labels);
        if ok {
            out.push(wire::container_summary(rec));
        }
        if limit.is_some_and(|l| out.len() as i64 >= l) {
            break;
        }
    }
    Ok(http::json(StatusCode::OK, &out))
}

pub async fn inspect(state: &ApiState, _req: Request<Incoming>, id: &str) -> ApiResult {
    let rec = state.engine.inspect(id)?;
    let dirs = format!("{}/containers/{}", state.daemon.data_root, rec.id);
    Ok(http::json(StatusCode::OK, &wire::container_inspect(&rec, &dirs)))
}

pub async fn start(state: &ApiState, id: &str) -> ApiResult {
    state.engine.start(id).await?;
    Ok(http::empty(StatusCode::NO_CONTENT))
}

pub async fn stop(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    let timeout = q.int("t")?;
    state.engine.stop(id, timeout, q.get("signal").filter(|s| !s.is_empty())).await?;
    Ok(http::empty(StatusCode::NO_CONTENT))
}

pub async fn restart(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    let timeout = q.int("t")?;
    state.engine.restart(id, timeout, q.get("signal").filter(|s| !s.is_empty())).await?;
    Ok(http::empty(StatusCode::NO_CONTENT))
}

pub async fn kill(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    state.engine.kill(id, q.get("signal").filter(|s| !s.is_empty())).await?;
    Ok(http::empty(StatusCode::NO_CONTENT))
}

pub async fn wait(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    let condition = match q.get("condition").unwrap_or("not-running") {
        "" | "not-running" => WaitCondition::NotRunning,
        "next-exit" => WaitCondition::NextExit,
        "removed" => WaitCondition::Removed,
        other => return Err(ApiError::bad_request(format!("invalid condition: \"{other}\""))),
    };
    // Resolve now so an unknown container is a 404, not a broken stream.
    state.engine.inspect(id)?;
    let engine = state.engine.clone();
    let id = id.to_string();
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        let body = match engine.wait(&id, condition).await {
            Ok(o) => json!({"StatusCode": o.status_code, "Error": o.error.map(|m| json!({"Message": m}))}),
            Err(e) => json!({"StatusCode": -1, "Error": {"Message": e.to_string()}}),
        };
        let mut line = serde_json::to_vec(&body).unwrap_or_default();
        line.push(b'\n');
        let _ = tx.send(Bytes::from(line)).await;
    });
    Ok(http::streaming(StatusCode::OK, http::JSON, rx))
}

pub async fn rename(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    let name = q.str("name");
    if name.is_empty() {
        return Err(ApiError::bad_request("Neither old nor new names may be empty"));
    }
    state.engine.rename(id, &name).await?;
    Ok(http::empty(StatusCode::NO_CONTENT))
}

pub async fn resize(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    let h = q.int("h")?.unwrap_or(0);
    let w = q.int("w")?.unwrap_or(0);
    if !(0..=u16::MAX as i64).contains(&h) || !(0..=u16::MAX as i64).contains(&w) {
        return Err(ApiError::bad_request("invalid terminal size"));
    }
    state.engine.resize(id, h as u16, w as u16).await?;
    Ok(http::empty(StatusCode::OK))
}

pub async fn remove(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    state.engine.remove(id, q.bool("force")).await?;
    Ok(http::empty(StatusCode::NO_CONTENT))
}

pub async fn prune(state: &ApiState) -> ApiResult {
    let mut deleted = Vec::new();
    for rec in state.engine.list() {
        if matches!(rec.state.status, Status::Exited | Status::Created | Status::Dead) && state.engine.remove(&rec.id, false).await.is_ok() {
            deleted.push(rec.id);
        }
    }
    Ok(http::json(StatusCode::OK, &json!({"ContainersDeleted": deleted, "SpaceReclaimed": 0})))
}

pub async fn attach(state: &ApiState, mut req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    let rec = state.engine.inspect(id)?;
    let stream_wanted = q.bool("stream");
    let (stdin, stdout, stderr) = (q.bool("stdin"), q.bool("stdout"), q.bool("stderr"));
    if !stream_wanted && !q.bool("logs") {
        return Err(ApiError::bad_request("at least one of stream or logs must be set"));
    }
    let session = state.engine.attach(&rec.id, stdin, stdout, stderr).await?;
    let tty = session.tty;
    let content_type = if tty { http::RAW_STREAM } else { http::MULTIPLEXED };
    if !http::wants_upgrade(&req) {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let mut output = session.output;
        tokio::spawn(async move {
            while let Some((stream, data)) = output.recv().await {
                let chunk = if tty { data } else { http::frame(stream, &data) };
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        return Ok(http::streaming(StatusCode::OK, content_type, rx));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "attach upgrade failed");
                return;
            }
        };
        pump_hijacked(TokioIo::new(upgraded), tty, session.output, session.stdin).await;
    });
    Ok(http::upgrade_response(content_type))
}

/// Moves bytes between a hijacked connection and a session until the output ends.
pub(crate) async fn pump_hijacked<S>(io: S, tty: bool, mut output: mpsc::Receiver<(u8, Bytes)>, stdin: Option<mpsc::Sender<Bytes>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let mut input = tokio::spawn(async move {
        let mut stdin = stdin;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(tx) = &stdin {
                        if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            // The process is gone; keep draining so the client never sees a reset.
                            stdin = None;
                        }
                    }
                }
            }
        }
        // Dropping the sender closes the container's stdin.
        drop(stdin);
    });
    while let Some((stream, data)) = output.recv().await {
        let res = if tty { writer.write_all(&data).await } else { writer.write_all(&http::frame(stream, &data)).await };
        if res.is_err() {
            break;
        }
        let _ = writer.flush().await;
    }
    // Half-close, then drain what the client still sends: closing a unix socket with unread
    // bytes makes the client's read fail with ECONNRESET instead of a clean EOF.
    let _ = writer.shutdown().await;
    if tokio::time::timeout(std::time::Duration::from_secs(2), &mut input).await.is_err() {
        input.abort();
    }
}

pub async fn logs(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    let tail = match q.get("tail") {
        None | Some("") | Some("all") => None,
        Some(n) => match n.parse::<i64>() {
            Ok(v) if v >= 0 => Some(v as usize),
            Ok(_) => None,
            Err(_) => return Err(ApiError::bad_request(format!("invalid value for \"tail\": \"{n}\""))),
        },
    };
    let opts = LogOptions {
        stdout: q.bool("stdout"),
        stderr: q.bool("stderr"),
        follow: q.bool("follow"),
        tail,
        since: parse_time_opt(&q, "since")?.filter(|t| t.timestamp() != 0),
        until: parse_time_opt(&q, "until")?.filter(|t| t.timestamp() != 0),
    };
    let timestamps = q.bool("timestamps");
    let (tty, mut records) = state.engine.logs(id, opts).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        while let Some(rec) = records.recv().await {
            let mut line = Vec::new();
            if timestamps {
                line.extend_from_slice(rec.time.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string().as_bytes());
                line.push(b' ');
            }
            line.extend_from_slice(&rec.line);
            let chunk = if tty { Bytes::from(line) } else { http::frame(rec.stream, &line) };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    Ok(http::streaming(StatusCode::OK, if tty { http::RAW_STREAM } else { http::MULTIPLEXED }, rx))
}

pub async fn top(state: &ApiState, id: &str) -> ApiResult {
    let top = state.engine.top(id).await?;
    Ok(http::json(StatusCode::OK, &json!({"Titles": top.titles, "Processes": top.processes})))
}

fn stats_json(rec: &shoal_engine::ContainerRecord, pre: &shoal_engine::StatsSample, cur: &shoal_engine::StatsSample) -> Value {
    let cpu = |s: &shoal_engine::StatsSample| {
        json!({
            "cpu_usage": {"total_usage": s.cpu_total_ns, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "system_cpu_usage": s.system_cpu_ns, "online_cpus": s.online_cpus,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}
        })
    };
    let mut networks = serde_json::Map::new();
    if rec.state.status == Status::Running {
        networks.insert(
            "eth0".into(),
            json!({"rx_bytes": cur.net_rx_bytes, "rx_packets": cur.net_rx_packets, "rx_errors": 0, "rx_dropped": 0,
                   "tx_bytes": cur.net_tx_bytes, "tx_packets": cur.net_tx_packets, "tx_errors": 0, "tx_dropped": 0}),
        );
    }
    json!({
        "name": format!("/{}", rec.name), "id": rec.id,
        "read": wire::time(cur.read), "preread": wire::time(pre.read),
        "pids_stats": {"current": cur.pids_current, "limit": cur.pids_limit},
        "blkio_stats": {"io_service_bytes_recursive": [
            {"major": 0, "minor": 0, "op": "read", "value": cur.blk_read},
            {"major": 0, "minor": 0, "op": "write", "value": cur.blk_write}
        ]},
        "num_procs": 0, "storage_stats": {},
        "cpu_stats": cpu(cur), "precpu_stats": cpu(pre),
        "memory_stats": {"usage": cur.memory_usage, "limit": cur.memory_limit, "stats": {"total_inactive_file": cur.memory_cache, "inactive_file": cur.memory_cache}},
        "networks": networks,
    })
}

pub async fn stats(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    let stream = q.bool_or("stream", true) && !q.bool("one-shot");
    let rec = state.engine.inspect(id)?;
    if !stream {
        let (pre, cur) = state.engine.stats_pair(&rec.id, std::time::Duration::from_millis(500)).await?;
        return Ok(http::json(StatusCode::OK, &stats_json(&rec, &pre, &cur)));
    }
    let engine = state.engine.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut pre = shoal_engine::StatsSample::default();
        loop {
            let Ok(rec) = engine.inspect(&rec.id) else { return };
            let Ok(cur) = engine.stats(&rec.id).await else { return };
            let mut line = serde_json::to_vec(&stats_json(&rec, &pre, &cur)).unwrap_or_default();
            line.push(b'\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
            pre = cur;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
    Ok(http::streaming(StatusCode::OK, http::JSON, rx))
}

fn stat_header(stat: &shoal_engine::archive::PathStat) -> String {
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(stat).unwrap_or_default())
}

fn archive_path(q: &Query) -> Result<String, ApiError> {
    let path = q.str("path");
    if path.is_empty() {
        return Err(ApiError::bad_request("missing path parameter"));
    }
    Ok(path)
}

pub async fn archive_head(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    let path = archive_path(&q)?;
    let stat = state.engine.archive_stat(id, &path).await?;
    let mut resp = http::empty(StatusCode::OK);
    if let Ok(v) = stat_header(&stat).parse() {
        resp.headers_mut().insert("X-Docker-Container-Path-Stat", v);
    }
    Ok(resp)
}

pub async fn archive_get(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    let path = archive_path(&q)?;
    let (stat, reader) = state.engine.archive_get(id, &path).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut reader = reader;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.stdout.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
        reader.finish().await;
    });
    let mut resp = http::streaming(StatusCode::OK, "application/x-tar", rx);
    if let Ok(v) = stat_header(&stat).parse() {
        resp.headers_mut().insert("X-Docker-Container-Path-Stat", v);
    }
    Ok(resp)
}

pub async fn archive_put(state: &ApiState, req: Request<Incoming>, id: &str) -> ApiResult {
    let q = Query::parse(&req);
    let path = archive_path(&q)?;
    let no_overwrite = q.bool("noOverwriteDirNonDir");
    let copy_uid_gid = q.bool("copyUIDGID");
    state.engine.inspect(id)?;
    let body = http::body_reader(req.into_body());
    state.engine.archive_put(id, &path, no_overwrite, copy_uid_gid, body).await?;
    Ok(http::empty(StatusCode::OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_converts() {
        let body: CreateBody = serde_json::from_str(
            r#"{"Image":"nginx","Cmd":["sh"],"ExposedPorts":{"80/tcp":{}},
                "HostConfig":{"PortBindings":{"80/tcp":[{"HostIp":"","HostPort":"8080"}]},"Binds":["/tmp:/data:ro"],
                "RestartPolicy":{"Name":"on-failure","MaximumRetryCount":3},"PidsLimit":null}}"#,
        )
        .unwrap();
        let spec = to_spec(Some("web".into()), body).unwrap();
        assert_eq!(spec.host.port_bindings[0].host_port, Some(8080));
        assert!(spec.host.binds[0].readonly);
        assert_eq!(spec.host.restart_policy.maximum_retry_count, 3);
    }

    #[test]
    fn healthcheck_converts() {
        let body: CreateBody = serde_json::from_str(
            r#"{"Image":"busybox","Healthcheck":{"Test":["CMD-SHELL","test -f /tmp/ok"],"Interval":500000000,"Retries":2}}"#,
        )
        .unwrap();
        let h = to_spec(None, body).unwrap().healthcheck.unwrap();
        assert_eq!(h.test, vec!["CMD-SHELL", "test -f /tmp/ok"]);
        assert_eq!((h.interval, h.retries, h.timeout), (500_000_000, 2, 0));
        let body: CreateBody = serde_json::from_str(r#"{"Image":"busybox","Healthcheck":{"Test":["NONE"]}}"#).unwrap();
        assert_eq!(to_spec(None, body).unwrap().healthcheck.unwrap().test, vec!["NONE"]);
        let body: CreateBody = serde_json::from_str(r#"{"Image":"busybox","Healthcheck":null}"#).unwrap();
        assert!(to_spec(None, body).unwrap().healthcheck.is_none());
    }

    #[test]
    fn bad_inputs_are_400() {
        let body: CreateBody = serde_json::from_str(r#"{"Image":"x","HostConfig":{"Binds":["data:/data"]}}"#).unwrap();
        assert_eq!(to_spec(None, body).unwrap_err().status, StatusCode::BAD_REQUEST);
        let body: CreateBody = serde_json::from_str(r#"{"Image":"x","HostConfig":{"RestartPolicy":{"Name":"sometimes"}}}"#).unwrap();
        assert_eq!(to_spec(None, body).unwrap_err().status, StatusCode::BAD_REQUEST);
        let body: CreateBody = serde_json::from_str(r#"{"Image":"x","HostConfig":{"PortBindings":{"80/tcp":[{"HostPort":"99999"}]}}}"#).unwrap();
        assert_eq!(to_spec(None, body).unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}

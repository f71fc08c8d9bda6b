//! `/_ping`, `/version`, `/info`, `/events`, `/system/df`.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;
use tokio::sync::mpsc;

use crate::filters::Filters;
use crate::http::{self, ApiError, ApiResult, Query, Resp};
use crate::wire;
use crate::{ApiState, API_VERSION, MIN_API_VERSION};

pub fn ping(head: bool, swarm: &str) -> Resp {
    let mut resp = if head {
        http::full(StatusCode::OK, "text/plain; charset=utf-8", Bytes::new())
    } else {
        http::full(StatusCode::OK, "text/plain; charset=utf-8", "OK")
    };
    let h = resp.headers_mut();
    if let Ok(v) = swarm.parse() {
        h.insert("Swarm", v);
    }
    for (k, v) in [
        ("Cache-Control", "no-cache, no-store, must-revalidate"),
        ("Pragma", "no-cache"),
        ("Builder-Version", "1"),
    ] {
        if let Ok(v) = v.parse() {
            h.insert(k, v);
        }
    }
    resp
}

fn kernel_version() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn version(state: &ApiState) -> Resp {
    let v = &state.daemon.version;
    http::json(
        StatusCode::OK,
        &json!({
            "Platform": {"Name": "shoal"},
            "Components": [{
                "Name": "Engine", "Version": v,
                "Details": {
                    "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "GitCommit": env!("CARGO_PKG_VERSION"),
                    "GoVersion": "n/a (rust)", "Os": "linux", "Arch": arch(), "KernelVersion": kernel_version(),
                    "Experimental": "false", "BuildTime": ""
                }
            }],
            "Version": v, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": env!("CARGO_PKG_VERSION"), "GoVersion": "n/a (rust)", "Os": "linux", "Arch": arch(),
            "KernelVersion": kernel_version(), "BuildTime": "",
        }),
    )
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_else(|| "Linux".into())
}

fn os_version() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VERSION_ID=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_default()
}

fn mem_total() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())))
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn cgroup_version() -> &'static str {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "2" } else { "1" }
}

fn open_fds() -> i64 {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count() as i64).unwrap_or(0)
}

pub fn info(state: &ApiState) -> Resp {
    let counts = state.engine.counts();
    let ncpu = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
    let init = state.engine.config().init_path.is_some();
    http::json(
        StatusCode::OK,
        &json!({
            "ID": state.daemon.id,
            "Containers": counts.containers,
            "ContainersRunning": counts.running,
            "ContainersPaused": counts.paused,
            "ContainersStopped": counts.stopped,
            "Images": counts.images,
            "Driver": "overlay2",
            "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"], ["Using metacopy", "false"], ["Native Overlay Diff", "true"]],
            "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "null", "overlay"], "Authorization": null, "Log": ["json-file"]},
            "MemoryLimit": true, "SwapLimit": true, "CpuCfsPeriod": true, "CpuCfsQuota": true, "CPUShares": true,
            "CPUSet": true, "PidsLimit": true, "IPv4Forwarding": true, "Debug": false,
            "NFd": open_fds(), "OomKillDisable": false, "NGoroutines": 0,
            "SystemTime": wire::time(Some(Utc::now())),
            "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs",
            "CgroupVersion": cgroup_version(),
            "NEventsListener": 0,
            "KernelVersion": kernel_version(),
            "OperatingSystem": os_name(),
            "OSVersion": os_version(),
            "OSType": "linux",
            "Architecture": std::env::consts::ARCH,
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {"AllowNondistributableArtifactsCIDRs": null, "AllowNondistributableArtifactsHostnames": null,
                "InsecureRegistryCIDRs": ["127.0.0.0/8", "::1/128"], "IndexConfigs": {}, "Mirrors": null},
            "NCPU": ncpu,
            "MemTotal": mem_total(),
            "GenericResources": null,
            "DockerRootDir": state.daemon.data_root,
            "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
            "Name": state.daemon.hostname,
            "Labels": [],
            "ExperimentalBuild": false,
            "ServerVersion": state.daemon.version,
            "Runtimes": {"shoal": {"path": "libcontainer (embedded)"}},
            "DefaultRuntime": "shoal",
            "Swarm": crate::swarm::info_json(state),
            "LiveRestoreEnabled": true,
            "Isolation": "",
            "InitBinary": if init { "docker-init" } else { "" },
            "ContainerdCommit": {"ID": ""},
            "RuncCommit": {"ID": ""},
            "InitCommit": {"ID": ""},
            "SecurityOptions": ["name=cgroupns"],
            "Warnings": crate::swarm::info_warnings(state),
        }),
    )
}

pub fn disk_usage(state: &ApiState) -> Resp {
    let images: Vec<serde_json::Value> = state.engine.images().list().iter().map(|i| json!({"Id": i.id, "Size": i.size, "RepoTags": i.repo_tags, "Containers": 0, "SharedSize": -1, "Created": i.created.map(|c| c.timestamp()).unwrap_or(0), "ParentId": "", "RepoDigests": i.repo_digests, "Labels": i.config.labels})).collect();
    let containers: Vec<serde_json::Value> = state.engine.list().iter().map(wire::container_summary).collect();
    http::json(StatusCode::OK, &json!({"LayersSize": 0, "Images": images, "Containers": containers, "Volumes": [], "BuildCache": []}))
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let (secs, nanos) = text.split_once('.').unwrap_or((text, "0"));
    let secs: i64 = secs.parse().map_err(|_| ApiError::bad_request(format!("invalid time {text}")))?;
    let nanos: u32 = format!("{nanos:0<9}")[..9].parse().map_err(|_| ApiError::bad_request(format!("invalid time {text}")))?;
    DateTime::from_timestamp(secs, nanos).ok_or_else(|| ApiError::bad_request(format!("invalid time {text}")))
}

pub(crate) fn parse_time_opt(q: &Query, key: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    match q.get(key) {
        None | Some("") => Ok(None),
        Some(v) => parse_time(v).map(Some),
    }
}

fn event_json(e: &shoal_engine::Event) -> serde_json::Value {
    let secs = e.time_nano / 1_000_000_000;
    let mut v = json!({
        "Type": e.kind, "Action": e.action, "Actor": {"ID": e.actor_id, "Attributes": e.attributes},
        "scope": "local", "time": secs, "timeNano": e.time_nano,
    });
    if e.kind == "container" {
        v["status"] = json!(e.action);
        v["id"] = json!(e.actor_id);
        v["from"] = json!(e.attributes.get("image").cloned().unwrap_or_default());
    }
    v
}

fn event_matches(f: &Filters, e: &shoal_engine::Event) -> bool {
    let name = e.attributes.get("name").cloned().unwrap_or_default();
    f.any("type", |t| t == e.kind)
        && f.any("event", |a| a == e.action || e.action.starts_with(&format!("{a}:")))
        && f.any("container", |c| e.kind == "container" && (e.actor_id.starts_with(c) || name == c))
        && f.any("image", |i| e.attributes.get("image").is_some_and(|img| img == i) || e.actor_id == i)
        && f.any("scope", |s| s == "local")
        && f.labels_match(&e.attributes)
}

pub async fn events(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let filters = Filters::parse(q.get("filters"), &["config", "container", "daemon", "event", "image", "label", "network", "node", "plugin", "scope", "secret", "service", "type", "volume"])?;
    let since = parse_time_opt(&q, "since")?;
    let until = parse_time_opt(&q, "until")?;
    let (recent, mut rx) = state.engine.subscribe();
    let (tx, body_rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let to_bytes = |e: &shoal_engine::Event| {
            let mut line = serde_json::to_vec(&event_json(e)).unwrap_or_default();
            line.push(b'\n');
            Bytes::from(line)
        };
        let in_window = |e: &shoal_engine::Event| {
            let t = DateTime::from_timestamp_nanos(e.time_nano);
            since.is_none_or(|s| t >= s) && until.is_none_or(|u| t <= u)
        };
        if since.is_some() {
            for e in recent.iter().filter(|e| in_window(e) && event_matches(&filters, e)) {
                if tx.send(to_bytes(e)).await.is_err() {
                    return;
                }
            }
        }
        loop {
            let deadline = until.map(|u| (u - Utc::now()).to_std().unwrap_or_default());
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout(d, rx.recv()).await.ok(),
                    None => Some(rx.recv().await),
                }
            };
            tokio::select! {
                item = next => match item {
                    None => return,
                    Some(Ok(e)) => {
                        if in_window(&e) && event_matches(&filters, &e) && tx.send(to_bytes(&e)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                    Some(Err(_)) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    Ok(http::streaming(StatusCode::OK, http::JSON, body_rx))
}

//! Swarm endpoints: `/swarm`, `/nodes`, `/services`, `/tasks` and their logs.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use shoal_swarm::{control, ErrorKind, SwarmError};
use shoal_types::{InitRequest, JoinRequest, Node, NodeSpec, Service, ServiceSpec, SwarmSpec, Task, TaskState};

use crate::filters::Filters;
use crate::http::{self, ApiError, ApiResult, Query};
use crate::system::parse_time_opt;
use crate::ApiState;

impl From<SwarmError> for ApiError {
    fn from(e: SwarmError) -> Self {
        let status = match e.kind() {
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

fn version_param(q: &Query) -> Result<u64, ApiError> {
    let raw = q.get("version").unwrap_or_default();
    raw.parse().map_err(|e| ApiError::bad_request(format!("invalid version '{raw}': {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

// ---- /swarm ----

pub async fn inspect(state: &ApiState) -> ApiResult {
    let cluster = state.swarm.cluster()?;
    Ok(http::json(StatusCode::OK, &cluster))
}

pub async fn init(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let body: InitRequest = http::read_json(req.into_body()).await?;
    let node_id = state.swarm.init(body).await?;
    Ok(http::json(StatusCode::OK, &node_id))
}

pub async fn join(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let body: JoinRequest = http::read_json(req.into_body()).await?;
    state.swarm.join(body).await?;
    Ok(http::empty(StatusCode::OK))
}

pub async fn leave(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    state.swarm.leave(q.bool("force")).await?;
    Ok(http::empty(StatusCode::OK))
}

pub async fn update(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let version = version_param(&q)?;
    let (w, m, k) = (q.bool("rotateWorkerToken"), q.bool("rotateManagerToken"), q.bool("rotateManagerUnlockKey"));
    let spec: SwarmSpec = http::read_json(req.into_body()).await?;
    state.swarm.update_cluster(version, spec, w, m, k).await?;
    Ok(http::empty(StatusCode::OK))
}

pub async fn unlock_key(state: &ApiState) -> ApiResult {
    let key = state.swarm.unlock_key()?;
    Ok(http::json(StatusCode::OK, &json!({ "UnlockKey": key })))
}

/// The `Swarm` part of `/info`.
pub fn info_json(state: &ApiState) -> Value {
    let info = state.swarm.info();
    let mut v = json!({
        "NodeID": info.node_id,
        "NodeAddr": info.node_addr,
        "LocalNodeState": info.state.as_str(),
        "ControlAvailable": info.control_available,
        "Error": info.error,
        "RemoteManagers": if info.remote_managers.is_empty() { Value::Null } else {
            Value::Array(info.remote_managers.iter().map(|(id, addr)| json!({"NodeID": id, "Addr": addr})).collect())
        },
    });
    if info.control_available {
        v["Nodes"] = json!(info.nodes);
        v["Managers"] = json!(info.managers);
        if let Some(c) = &info.cluster {
            v["Cluster"] = to_json(&c.info());
        }
    }
    v
}

/// moby's swarm warnings for `/info` (a two-manager swarm has no fault tolerance).
pub fn info_warnings(state: &ApiState) -> Vec<String> {
    let info = state.swarm.info();
    if info.control_available && info.managers == 2 {
        vec!["WARNING: Running Swarm in a two-manager configuration. This configuration provides no fault tolerance, and poses a high risk to lose control over the cluster. Refer to https://docs.docker.com/engine/swarm/admin_guide/ to configure the Swarm for fault-tolerance.".to_string()]
    } else {
        Vec::new()
    }
}

/// The value of the `Swarm` header on `/_ping`.
pub fn ping_header(state: &ApiState) -> String {
    let info = state.swarm.info();
    match (info.state.as_str(), info.control_available) {
        ("active", true) => "active/manager".into(),
        ("active", false) => "active/worker".into(),
        (other, _) => other.into(),
    }
}

// ---- nodes ----

pub async fn list_nodes(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let f = Filters::parse(q.get("filters"), &["id", "label", "membership", "name", "node.label", "role"])?;
    let nodes: Vec<Node> = state
        .swarm
        .nodes()?
        .into_iter()
        .filter(|n| {
            f.any("id", |v| n.id.starts_with(v))
                && f.any("name", |v| n.description.hostname.starts_with(v) || (!n.spec.name.is_empty() && n.spec.name.starts_with(v)))
                && f.any("role", |v| v == n.spec.role.as_str())
                && f.any("membership", |v| v == "accepted")
                && labels_match(&f, "label", &n.description.engine.labels)
                && labels_match(&f, "node.label", &n.spec.labels)
        })
        .collect();
    Ok(http::json(StatusCode::OK, &nodes))
}

fn labels_match(f: &Filters, key: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
    match f.get(key) {
        None => true,
        Some(values) => values.iter().all(|v| match v.split_once('=') {
            Some((k, val)) => labels.get(k).is_some_and(|lv| lv == val),
            None => labels.contains_key(v.as_str()),
        }),
    }
}

pub async fn inspect_node(state: &ApiState, reference: &str) -> ApiResult {
    let node = state.swarm.find_node(reference)?;
    Ok(http::json(StatusCode::OK, &node))
}

pub async fn update_node(state: &ApiState, req: Request<Incoming>, reference: &str) -> ApiResult {
    let q = Query::parse(&req);
    let version = version_param(&q)?;
    let spec: NodeSpec = http::read_json(req.into_body()).await?;
    state.swarm.update_node(reference, version, spec).await?;
    Ok(http::empty(StatusCode::OK))
}

pub async fn remove_node(state: &ApiState, req: Request<Incoming>, reference: &str) -> ApiResult {
    let q = Query::parse(&req);
    state.swarm.remove_node(reference, q.bool("force")).await?;
    Ok(http::empty(StatusCode::OK))
}

// ---- services ----

pub async fn list_services(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let f = Filters::parse(q.get("filters"), &["id", "label", "mode", "name", "runtime"])?;
    let with_status = q.bool("status");
    let (tasks, nodes) = if with_status { (state.swarm.tasks()?, state.swarm.nodes()?) } else { (Vec::new(), Vec::new()) };
    let services: Vec<Service> = state
        .swarm
        .services()?
        .into_iter()
        .filter(|s| {
            f.any("id", |v| s.id.starts_with(v))
                && f.any("name", |v| s.spec.name.starts_with(v))
                && f.any("mode", |v| v == s.spec.mode.name())
                && f.any("runtime", |v| v == "container")
                && f.labels_match(&s.spec.labels)
        })
        .map(|mut s| {
            if with_status {
                s.service_status = Some(control::service_status(&s, &tasks, &nodes));
            }
            s
        })
        .collect();
    Ok(http::json(StatusCode::OK, &services))
}

pub async fn create_service(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let spec: ServiceSpec = http::read_json(req.into_body()).await?;
    let id = state.swarm.create_service(spec).await?;
    Ok(http::json(StatusCode::CREATED, &json!({"ID": id, "Warnings": null})))
}

pub async fn inspect_service(state: &ApiState, req: Request<Incoming>, reference: &str) -> ApiResult {
    let q = Query::parse(&req);
    let mut service = state.swarm.find_service(reference)?;
    if q.bool("insertDefaults") {
        service.spec = shoal_types::with_defaults(&service.spec);
        if let Some(prev) = &service.previous_spec {
            service.previous_spec = Some(shoal_types::with_defaults(prev));
        }
    }
    Ok(http::json(StatusCode::OK, &service))
}

pub async fn update_service(state: &ApiState, req: Request<Incoming>, reference: &str) -> ApiResult {
    let q = Query::parse(&req);
    let version = version_param(&q)?;
    let rollback = match q.get("rollback") {
        None | Some("") => false,
        Some("previous") => true,
        Some(other) => return Err(ApiError::bad_request(format!("unrecognized rollback option {other}"))),
    };
    let spec: ServiceSpec = http::read_json(req.into_body()).await?;
    state.swarm.update_service(reference, version, spec, rollback).await?;
    Ok(http::json(StatusCode::OK, &json!({"Warnings": null})))
}

pub async fn remove_service(state: &ApiState, reference: &str) -> ApiResult {
    state.swarm.remove_service(reference).await?;
    Ok(http::empty(StatusCode::OK))
}

// ---- tasks ----

pub async fn list_tasks(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let f = Filters::parse(q.get("filters"), &["_up-to-date", "desired-state", "id", "label", "name", "node", "runtime", "service"])?;
    let services = state.swarm.services()?;
    let nodes = state.swarm.nodes()?;
    let mut service_ids = Vec::new();
    if let Some(values) = f.get("service") {
        for v in values {
            service_ids.push(state.swarm.find_service(v)?.id);
        }
    }
    let mut node_ids = Vec::new();
    if let Some(values) = f.get("node") {
        for v in values {
            let reference = if v == "self" { state.swarm.node_id().unwrap_or_default() } else { v.clone() };
            node_ids.push(state.swarm.find_node(&reference)?.id);
        }
    }
    for v in f.get("desired-state").into_iter().flatten() {
        if parse_state(v).is_none() {
            return Err(ApiError::bad_request(format!("Invalid desired-state filter value: {v}")));
        }
    }
    let up_to_date = f.get("_up-to-date").is_some();
    let tasks: Vec<Task> = state
        .swarm
        .tasks()?
        .into_iter()
        .filter(|t| {
            let service = services.iter().find(|s| s.id == t.service_id);
            let node = nodes.iter().find(|n| n.id == t.node_id);
            (service_ids.is_empty() || service_ids.contains(&t.service_id))
                && (node_ids.is_empty() || node_ids.contains(&t.node_id))
                && f.any("id", |v| t.id.starts_with(v))
                && f.any("name", |v| t.display_name().starts_with(v))
                && f.any("desired-state", |v| parse_state(v) == Some(t.desired_state))
                && f.any("runtime", |v| v == "container")
                && f.labels_match(&t.labels)
                && (!up_to_date || service.is_some_and(|s| shoal_swarm::Swarm::task_up_to_date(s, t, node)))
        })
        .collect();
    Ok(http::json(StatusCode::OK, &tasks))
}

pub async fn inspect_task(state: &ApiState, id: &str) -> ApiResult {
    let task = state.swarm.get_task(id)?;
    Ok(http::json(StatusCode::OK, &task))
}

fn parse_state(v: &str) -> Option<TaskState> {
    serde_json::from_value(Value::String(v.to_string())).ok()
}

// ---- logs ----

fn details_text(line: &shoal_swarm::LogLine) -> String {
    format!(
        "com.docker.swarm.node.id={},com.docker.swarm.service.id={},com.docker.swarm.task.id={}",
        line.node_id, line.service_id, line.task_id
    )
}

pub async fn logs(state: &ApiState, req: Request<Incoming>, service_ref: Option<&str>, task_id: Option<&str>) -> ApiResult {
    let q = Query::parse(&req);
    let (stdout, stderr) = (q.bool("stdout"), q.bool("stderr"));
    if !stdout && !stderr {
        return Err(ApiError::bad_request("Bad parameters: you must choose at least one stream"));
    }
    let tail = match q.get("tail") {
        None | Some("") | Some("all") => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid value for \"tail\": \"{n}\"")))?),
    };
    let service = match service_ref {
        Some(r) => Some(state.swarm.find_service(r)?),
        None => None,
    };
    let task = match task_id {
        Some(id) => Some(state.swarm.get_task(id)?),
        None => None,
    };
    let tty = service.as_ref().map(|s| s.spec.task_template.container_spec.tty).or(task.as_ref().map(|t| t.spec.container_spec.tty)).unwrap_or(false);
    let opts = shoal_swarm::LogOptions { stdout, stderr, follow: q.bool("follow"), tail, since: parse_time_opt(&q, "since")?.filter(|t| t.timestamp() != 0) };
    let (details, timestamps) = (q.bool("details"), q.bool("timestamps"));
    let mut lines = state.swarm.logs(service, task, opts).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        while let Some(l) = lines.recv().await {
            let mut text = Vec::new();
            if timestamps {
                text.extend_from_slice(l.time.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string().as_bytes());
                text.push(b' ');
            }
            if details {
                text.extend_from_slice(details_text(&l).as_bytes());
                text.push(b' ');
            }
            text.extend_from_slice(&l.line);
            let chunk = if tty { Bytes::from(text) } else { http::frame(l.stream, &text) };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    Ok(http::streaming(StatusCode::OK, if tty { http::RAW_STREAM } else { http::MULTIPLEXED }, rx))
}

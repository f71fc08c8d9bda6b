//! Image endpoints: list, inspect, history, tag, remove, load, pull and import.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use shoal_image::{ImageRecord, ImportOptions, PullProgress};

use crate::filters::Filters;
use crate::http::{self, ApiError, ApiResult, Query};
use crate::wire;
use crate::ApiState;

fn image_summary(state: &ApiState, img: &ImageRecord) -> Value {
    json!({
        "Id": img.id,
        "ParentId": img.parent,
        "RepoTags": img.repo_tags,
        "RepoDigests": img.repo_digests,
        "Created": img.created.map(|c| c.timestamp()).unwrap_or(0),
        "Size": img.size,
        "SharedSize": -1,
        "Labels": img.config.labels,
        "Containers": if state.engine.image_in_use(&img.id) { 1 } else { 0 },
    })
}

fn image_config_json(img: &ImageRecord) -> Value {
    let c = &img.config;
    json!({
        "Hostname": "", "Domainname": "", "User": c.user, "AttachStdin": false, "AttachStdout": false, "AttachStderr": false,
        "ExposedPorts": if c.exposed_ports.is_empty() { Value::Null } else { json!(c.exposed_ports.keys().map(|k| (k.clone(), json!({}))).collect::<serde_json::Map<_, _>>()) },
        "Tty": false, "OpenStdin": false, "StdinOnce": false,
        "Env": c.env, "Cmd": c.cmd, "Image": "", "Volumes": if c.volumes.is_empty() { Value::Null } else { json!(c.volumes.keys().map(|k| (k.clone(), json!({}))).collect::<serde_json::Map<_, _>>()) },
        "WorkingDir": c.working_dir, "Entrypoint": c.entrypoint, "OnBuild": null, "Labels": c.labels,
        "StopSignal": c.stop_signal, "Healthcheck": c.healthcheck,
    })
}

pub async fn list(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let filters = Filters::parse(q.get("filters"), &["before", "dangling", "label", "reference", "since", "until"])?;
    let images = state.engine.images().list();
    let items: Vec<Value> = images
        .iter()
        .filter(|img| {
            filters.any("dangling", |d| (d == "true" || d == "1") == img.repo_tags.is_empty())
                && filters.any("reference", |r| img.repo_tags.iter().any(|t| reference_matches(r, t)))
                && filters.labels_match(&img.config.labels)
        })
        .map(|img| image_summary(state, img))
        .collect();
    Ok(http::json(StatusCode::OK, &items))
}

/// `reference=busybox` matches `busybox:*`; `busybox:1.36` matches exactly; `*` globs a path part.
fn reference_matches(pattern: &str, tag: &str) -> bool {
    let (repo, t) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
    let (prepo, ptag) = match pattern.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (pattern, None),
    };
    glob(prepo, repo) && ptag.is_none_or(|pt| glob(pt, t))
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((pre, rest)) => {
            text.starts_with(pre) && (0..=text.len() - pre.len()).any(|i| glob(rest, &text[pre.len() + i..]) && !text[pre.len()..pre.len() + i].contains('/'))
        }
    }
}

pub async fn inspect(state: &ApiState, name: &str) -> ApiResult {
    let img = get_image(state, name).await?;
    Ok(http::json(
        StatusCode::OK,
        &json!({
            "Id": img.id, "RepoTags": img.repo_tags, "RepoDigests": img.repo_digests, "Parent": img.parent,
            "Comment": img.comment, "Created": wire::time(img.created), "DockerVersion": img.docker_version,
            "Author": img.author, "Config": image_config_json(&img), "Architecture": img.architecture, "Os": img.os,
            "Size": img.size, "GraphDriver": {"Name": "overlay2", "Data": null},
            "RootFS": {"Type": "layers", "Layers": img.layers}, "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
        }),
    ))
}

async fn get_image(state: &ApiState, name: &str) -> Result<ImageRecord, ApiError> {
    let store = state.engine.images().clone();
    let name = name.to_string();
    let shown = name.clone();
    tokio::task::spawn_blocking(move || store.get(&name))
        .await
        .map_err(|e| ApiError::internal(format!("image lookup: {e}")))?
        .map_err(|e| match e.kind() {
            shoal_image::ErrorKind::NotFound => ApiError::not_found(format!("No such image: {shown}")),
            _ => ApiError::from(e),
        })
}

pub async fn history(state: &ApiState, name: &str) -> ApiResult {
    get_image(state, name).await?;
    let store = state.engine.images().clone();
    let name = name.to_string();
    let items = tokio::task::spawn_blocking(move || store.history(&name))
        .await
        .map_err(|e| ApiError::internal(format!("history: {e}")))??;
    let out: Vec<Value> = items
        .iter()
        .map(|h| json!({"Id": h.id, "Created": h.created, "CreatedBy": h.created_by, "Tags": h.tags, "Size": h.size, "Comment": h.comment}))
        .collect();
    Ok(http::json(StatusCode::OK, &out))
}

pub async fn tag(state: &ApiState, req: Request<Incoming>, name: &str) -> ApiResult {
    let q = Query::parse(&req);
    let repo = q.str("repo");
    if repo.is_empty() {
        return Err(ApiError::bad_request("repository name must have at least one component"));
    }
    let target = match q.get("tag") {
        Some(t) if !t.is_empty() => format!("{repo}:{t}"),
        _ => repo,
    };
    get_image(state, name).await?;
    let store = state.engine.images().clone();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || store.tag(&name, &target))
        .await
        .map_err(|e| ApiError::internal(format!("tag: {e}")))??;
    Ok(http::empty(StatusCode::CREATED))
}

pub async fn remove(state: &ApiState, req: Request<Incoming>, name: &str) -> ApiResult {
    let q = Query::parse(&req);
    let force = q.bool("force");
    get_image(state, name).await?;
    let store = state.engine.images().clone();
    let engine = state.engine.clone();
    let name = name.to_string();
    let items = tokio::task::spawn_blocking(move || store.remove(&name, force, &|id: &str| engine.image_in_use(id)))
        .await
        .map_err(|e| ApiError::internal(format!("remove: {e}")))??;
    let out: Vec<Value> = items
        .iter()
        .map(|d| match (&d.untagged, &d.deleted) {
            (Some(u), _) => json!({"Untagged": u}),
            (None, Some(del)) => json!({"Deleted": del}),
            _ => json!({}),
        })
        .collect();
    for d in &items {
        if let Some(del) = &d.deleted {
            state.engine.emit("image", "delete", del, Default::default());
        } else if let Some(u) = &d.untagged {
            state.engine.emit("image", "untag", u, Default::default());
        }
    }
    Ok(http::json(StatusCode::OK, &out))
}

fn message_line(v: Value) -> Bytes {
    let mut line = serde_json::to_vec(&v).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

pub async fn load(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let quiet = q.bool("quiet");
    let reader = http::body_reader(req.into_body());
    let bridge = tokio_util::io::SyncIoBridge::new(reader);
    let store = state.engine.images().clone();
    let loaded = tokio::task::spawn_blocking(move || store.load(bridge))
        .await
        .map_err(|e| ApiError::internal(format!("load: {e}")))?;
    let (tx, rx) = mpsc::channel(16);
    match loaded {
        Ok(images) => {
            for img in &images {
                if img.tags.is_empty() {
                    let _ = tx.try_send(message_line(json!({"stream": format!("Loaded image ID: {}\n", img.id)})));
                } else {
                    for t in &img.tags {
                        let _ = tx.try_send(message_line(json!({"stream": format!("Loaded image: {t}\n")})));
                    }
                }
                state.engine.emit("image", "load", &img.id, Default::default());
            }
            let _ = quiet;
        }
        Err(e) => {
            let msg = e.to_string();
            let _ = tx.try_send(message_line(json!({"errorDetail": {"message": msg}, "error": msg})));
        }
    }
    drop(tx);
    Ok(http::streaming(StatusCode::OK, http::JSON, rx))
}

pub async fn create(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    if let Some(src) = q.get("fromSrc") {
        if src != "-" {
            return Err(ApiError::bad_request("importing from a URL is not supported; send the archive in the request body (fromSrc=-)"));
        }
        return import(state, req, &q).await;
    }
    let from = q.str("fromImage");
    if from.is_empty() {
        return Err(ApiError::bad_request("fromImage or fromSrc is required"));
    }
    let tag = q.str("tag");
    let reference = if tag.is_empty() {
        from.clone()
    } else if tag.starts_with("sha256:") {
        format!("{from}@{tag}")
    } else {
        format!("{from}:{tag}")
    };
    let (tx, mut rx) = mpsc::channel::<Value>(64);
    let store = state.engine.images().clone();
    let engine = state.engine.clone();
    let pull_ref = reference.clone();
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let mut on_progress = move |p: PullProgress| {
            let msg = match p {
                PullProgress::Resolving => None,
                PullProgress::LayerStart { id, .. } => Some(json!({"status": "Pulling fs layer", "progressDetail": {}, "id": id})),
                PullProgress::LayerProgress { id, current, total } => Some(json!({"status": "Downloading", "progressDetail": {"current": current, "total": total}, "id": id})),
                PullProgress::LayerDone { id } => Some(json!({"status": "Pull complete", "progressDetail": {}, "id": id})),
                PullProgress::LayerExists { id } => Some(json!({"status": "Already exists", "progressDetail": {}, "id": id})),
                PullProgress::Digest(d) => Some(json!({"status": format!("Digest: {d}")})),
                PullProgress::Done => None,
            };
            if let Some(m) = msg {
                let _ = progress_tx.try_send(m);
            }
        };
        let result = store.pull(&pull_ref, &mut on_progress).await;
        match result {
            Ok(img) => {
                let shown = img.repo_tags.first().cloned().unwrap_or_else(|| pull_ref.clone());
                let _ = tx.send(json!({"status": format!("Status: Downloaded newer image for {shown}")})).await;
                engine.emit("image", "pull", &shown, Default::default());
            }
            Err(e) => {
                let status = match e.kind() {
                    shoal_image::ErrorKind::NotFound => 404,
                    shoal_image::ErrorKind::InvalidInput => 400,
                    _ => 500,
                };
                let msg = e.to_string();
                let _ = tx.send(json!({"errorDetail": {"message": msg}, "error": msg, "_status": status})).await;
            }
        }
    });
    // Errors before any progress become a proper status code, as dockerd does.
    let first = rx.recv().await;
    if let Some(v) = &first {
        if let Some(status) = v.get("_status").and_then(|s| s.as_u64()) {
            let msg = v.get("error").and_then(|m| m.as_str()).unwrap_or("pull failed").to_string();
            let code = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(ApiError::new(code, msg));
        }
    }
    let (btx, brx) = mpsc::channel::<Bytes>(64);
    let repo_part = from.clone();
    let tag_part = if tag.is_empty() { "latest".to_string() } else { tag.clone() };
    tokio::spawn(async move {
        let _ = btx.send(message_line(json!({"status": format!("Pulling from {repo_part}"), "id": tag_part}))).await;
        let mut next = first;
        while let Some(mut v) = next {
            if let Some(obj) = v.as_object_mut() {
                obj.remove("_status");
            }
            if btx.send(message_line(v)).await.is_err() {
                return;
            }
            next = rx.recv().await;
        }
    });
    Ok(http::streaming(StatusCode::OK, http::JSON, brx))
}

async fn import(state: &ApiState, req: Request<Incoming>, q: &Query) -> ApiResult {
    let repo = q.str("repo");
    let tag = q.str("tag");
    let reference = if repo.is_empty() { None } else if tag.is_empty() { Some(repo) } else { Some(format!("{repo}:{tag}")) };
    let changes: Vec<String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.strip_prefix("changes="))
        .map(|v| urlencoding::decode(&v.replace('+', " ")).map(|c| c.into_owned()).unwrap_or_default())
        .filter(|c| !c.is_empty())
        .collect();
    let opts = ImportOptions {
        reference,
        message: q.get("message").filter(|m| !m.is_empty()).map(str::to_string),
        changes,
        architecture: None,
        os: None,
    };
    let reader = http::body_reader(req.into_body());
    let bridge = tokio_util::io::SyncIoBridge::new(reader);
    let store = state.engine.images().clone();
    let result = tokio::task::spawn_blocking(move || store.import(bridge, opts))
        .await
        .map_err(|e| ApiError::internal(format!("import: {e}")))?;
    let img = result?;
    state.engine.emit("image", "import", &img.id, Default::default());
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(message_line(json!({"status": img.id})));
    drop(tx);
    Ok(http::streaming(StatusCode::OK, http::JSON, rx))
}

/// `GET /distribution/{name}/json`: for local images answer an empty descriptor, which the CLI
/// accepts silently (no digest pinning, no warning).
pub async fn distribution(state: &ApiState, name: &str) -> ApiResult {
    get_image(state, name).await.map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.message))?;
    Ok(http::json(StatusCode::OK, &json!({"Descriptor": {}, "Platforms": []})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_filter() {
        assert!(reference_matches("busybox", "busybox:latest"));
        assert!(reference_matches("busybox:latest", "busybox:latest"));
        assert!(!reference_matches("busybox:1", "busybox:latest"));
        assert!(reference_matches("busy*", "busybox:latest"));
        assert!(!reference_matches("nginx", "busybox:latest"));
    }
}

//! Listeners, per-connection HTTP/1.1 serving with upgrades, API version handling and routing.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tracing::{debug, info, warn};

use crate::http::{ApiError, ApiResult, Resp};
use crate::{containers, dashboard, exec, images, networks, swarm, system, ApiState, API_VERSION};

/// Where to listen, as given by `-H`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerSpec {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl ListenerSpec {
    /// Parses `unix:///path`, `tcp://addr:port` or `fd://` (not supported) like dockerd's `-H`.
    pub fn parse(text: &str) -> Result<ListenerSpec, String> {
        if let Some(path) = text.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(format!("invalid host {text}: empty unix socket path"));
            }
            return Ok(ListenerSpec::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text.strip_prefix("tcp://") {
            let addr = if addr.starts_with(':') { format!("0.0.0.0{addr}") } else { addr.to_string() };
            let addr = addr.trim_end_matches('/');
            return addr.parse().map(ListenerSpec::Tcp).map_err(|_| format!("invalid host {text}: expected tcp://ADDRESS:PORT"));
        }
        if text.starts_with('/') {
            return Ok(ListenerSpec::Unix(PathBuf::from(text)));
        }
        Err(format!("invalid host {text}: use unix:///path/to/socket or tcp://address:port"))
    }
}

/// A bound listener.
pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    /// Binds; a stale unix socket file left by a dead daemon is replaced.
    pub async fn bind(spec: &ListenerSpec) -> std::io::Result<Listener> {
        match spec {
            ListenerSpec::Unix(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                if path.exists() {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            format!("{} is in use by another daemon", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
                Ok(Listener::Unix(listener, path.clone()))
            }
            ListenerSpec::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
        }
    }
}

/// Serves the API on every listener until the process ends.
pub async fn serve(state: ApiState, listeners: Vec<Listener>) {
    let state = Arc::new(state);
    let mut tasks = Vec::new();
    for listener in listeners {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            match listener {
                Listener::Unix(l, path) => {
                    info!(socket = %path.display(), "API listening");
                    loop {
                        match l.accept().await {
                            Ok((stream, _)) => {
                                let root = stream.peer_cred().map(|c| c.uid() == 0).unwrap_or(false);
                                spawn_conn(state.clone(), TokioIo::new(stream), root)
                            }
                            Err(e) => warn!(error = %e, "accept failed"),
                        }
                    }
                }
                Listener::Tcp(l) => {
                    info!(addr = ?l.local_addr().ok(), "API listening");
                    loop {
                        match l.accept().await {
                            Ok((stream, _)) => {
                                let _ = stream.set_nodelay(true);
                                spawn_conn(state.clone(), TokioIo::new(stream), false)
                            }
                            Err(e) => warn!(error = %e, "accept failed"),
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Serves one connection; `root`: the peer is root on the unix socket.
fn spawn_conn<I>(state: Arc<ApiState>, io: I, root: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(dashboard::LocalRoot(root));
            let state = state.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(state, req).await) }
        });
        if let Err(e) = http1::Builder::new().serve_connection(io, svc).with_upgrades().await {
            debug!(error = %e, "connection ended with an error");
        }
    });
}

/// Splits `/v1.50/containers/json` into (`Some("1.50")`, `/containers/json`).
pub(crate) fn split_version(path: &str) -> (Option<&str>, &str) {
    if let Some(rest) = path.strip_prefix("/v") {
        let end = rest.find('/').unwrap_or(rest.len());
        let ver = &rest[..end];
        if !ver.is_empty() && ver.chars().all(|c| c.is_ascii_digit() || c == '.') {
            let tail = &rest[end..];
            return (Some(ver), if tail.is_empty() { "/" } else { tail });
        }
    }
    (None, path)
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

pub(crate) fn check_version(v: &str) -> Result<(), ApiError> {
    let parsed = parse_version(v).ok_or_else(|| ApiError::bad_request(format!("invalid API version: {v}")))?;
    let min = parse_version(crate::MIN_API_VERSION).unwrap_or((1, 24));
    let max = parse_version(API_VERSION).unwrap_or((1, 50));
    if parsed < min {
        return Err(ApiError::bad_request(format!(
            "client version {v} is too old. Minimum supported API version is {}, please upgrade your client to a newer version",
            crate::MIN_API_VERSION
        )));
    }
    if parsed > max {
        return Err(ApiError::bad_request(format!("client version {v} is too new. Maximum supported API version is {API_VERSION}")));
    }
    Ok(())
}

async fn handle(state: Arc<ApiState>, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    debug!(%method, %path, "request");
    let (version, route) = split_version(&path);
    let result = match version.map(check_version) {
        Some(Err(e)) => Err(e),
        _ => dispatch(&state, req, &method, route).await,
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                warn!(%method, %path, status = e.status.as_u16(), message = %e.message, "request failed");
            } else {
                debug!(%method, %path, status = e.status.as_u16(), message = %e.message, "request refused");
            }
            e.into_response()
        }
    };
    let h = resp.headers_mut();
    let put = |h: &mut hyper::HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = v.parse() {
            h.insert(k, v);
        }
    };
    put(h, "Api-Version", API_VERSION.to_string());
    put(h, "Ostype", "linux".to_string());
    put(h, "Docker-Experimental", "false".to_string());
    put(h, "Server", format!("Docker/{} (linux)", state.daemon.version));
    resp
}

async fn dispatch(state: &ApiState, req: Request<Incoming>, method: &Method, route: &str) -> ApiResult {
    let segs: Vec<&str> = route.trim_start_matches('/').split('/').collect();
    match (method.clone(), segs.as_slice()) {
        (Method::GET | Method::HEAD, ["_ping"]) => Ok(system::ping(method == Method::HEAD, &swarm::ping_header(state))),
        (Method::GET, ["version"]) => Ok(system::version(state)),
        (Method::GET, ["info"]) => Ok(system::info(state)),
        (Method::GET, ["events"]) => system::events(state, req).await,
        (Method::GET, ["system", "df"]) => Ok(system::disk_usage(state)),

        (Method::GET, ["images", "json"]) => images::list(state, req).await,
        (Method::POST, ["images", "load"]) => images::load(state, req).await,
        (Method::POST, ["images", "create"]) => images::create(state, req).await,
        (Method::GET, ["images", rest @ .., "json"]) if !rest.is_empty() => images::inspect(state, &rest.join("/")).await,
        (Method::GET, ["images", rest @ .., "history"]) if !rest.is_empty() => images::history(state, &rest.join("/")).await,
        (Method::POST, ["images", rest @ .., "tag"]) if !rest.is_empty() => images::tag(state, req, &rest.join("/")).await,
        (Method::DELETE, ["images", rest @ ..]) if !rest.is_empty() => images::remove(state, req, &rest.join("/")).await,
        (Method::GET, ["distribution", rest @ .., "json"]) if !rest.is_empty() => images::distribution(state, &rest.join("/")).await,

        (Method::POST, ["containers", "create"]) => containers::create(state, req).await,
        (Method::GET, ["containers", "json"]) => containers::list(state, req).await,
        (Method::POST, ["containers", "prune"]) => containers::prune(state).await,
        (Method::GET, ["containers", id, "json"]) => containers::inspect(state, req, id).await,
        (Method::POST, ["containers", id, "start"]) => containers::start(state, id).await,
        (Method::POST, ["containers", id, "stop"]) => containers::stop(state, req, id).await,
        (Method::POST, ["containers", id, "restart"]) => containers::restart(state, req, id).await,
        (Method::POST, ["containers", id, "kill"]) => containers::kill(state, req, id).await,
        (Method::POST, ["containers", id, "wait"]) => containers::wait(state, req, id).await,
        (Method::POST, ["containers", id, "rename"]) => containers::rename(state, req, id).await,
        (Method::POST, ["containers", id, "attach"]) => containers::attach(state, req, id).await,
        (Method::POST, ["containers", id, "resize"]) => containers::resize(state, req, id).await,
        (Method::DELETE, ["containers", id]) => containers::remove(state, req, id).await,
        (Method::GET, ["containers", id, "logs"]) => containers::logs(state, req, id).await,
        (Method::GET, ["containers", id, "top"]) => containers::top(state, id).await,
        (Method::GET, ["containers", id, "stats"]) => containers::stats(state, req, id).await,
        (Method::POST, ["containers", id, "exec"]) => exec::create(state, req, id).await,
        (Method::HEAD, ["containers", id, "archive"]) => containers::archive_head(state, req, id).await,
        (Method::GET, ["containers", id, "archive"]) => containers::archive_get(state, req, id).await,
        (Method::PUT, ["containers", id, "archive"]) => containers::archive_put(state, req, id).await,

        (Method::POST, ["exec", id, "start"]) => exec::start(state, req, id).await,
        (Method::POST, ["exec", id, "resize"]) => exec::resize(state, req, id).await,
        (Method::GET, ["exec", id, "json"]) => exec::inspect(state, id).await,

        (Method::GET, ["networks"] | ["networks", ""]) => networks::list(state, req).await,
        (Method::POST, ["networks", "create"]) => networks::create(state, req).await,
        (Method::POST, ["networks", "prune"]) => networks::prune(state, req).await,
        (Method::GET, ["networks", id]) => networks::inspect(state, req, id).await,
        (Method::DELETE, ["networks", id]) => networks::remove(state, id).await,
        (Method::POST, ["networks", id, "connect"]) => networks::connect(state, req, id, true).await,
        (Method::POST, ["networks", id, "disconnect"]) => networks::connect(state, req, id, false).await,

        (Method::GET, ["swarm"]) => swarm::inspect(state).await,
        (Method::POST, ["swarm", "init"]) => swarm::init(state, req).await,
        (Method::POST, ["swarm", "join"]) => swarm::join(state, req).await,
        (Method::POST, ["swarm", "leave"]) => swarm::leave(state, req).await,
        (Method::POST, ["swarm", "update"]) => swarm::update(state, req).await,
        (Method::GET, ["swarm", "unlockkey"]) => swarm::unlock_key(state).await,
        (Method::GET, ["nodes"]) => swarm::list_nodes(state, req).await,
        (Method::GET, ["nodes", id]) => swarm::inspect_node(state, id).await,
        (Method::DELETE, ["nodes", id]) => swarm::remove_node(state, req, id).await,
        (Method::POST, ["nodes", id, "update"]) => swarm::update_node(state, req, id).await,
        (Method::GET, ["services"]) => swarm::list_services(state, req).await,
        (Method::POST, ["services", "create"]) => swarm::create_service(state, req).await,
        (Method::GET, ["services", id]) => swarm::inspect_service(state, req, id).await,
        (Method::DELETE, ["services", id]) => swarm::remove_service(state, id).await,
        (Method::POST, ["services", id, "update"]) => swarm::update_service(state, req, id).await,
        (Method::GET, ["services", id, "logs"]) => swarm::logs(state, req, Some(id), None).await,
        (Method::GET, ["tasks"]) => swarm::list_tasks(state, req).await,
        (Method::GET, ["tasks", id]) => swarm::inspect_task(state, id).await,
        (Method::GET, ["tasks", id, "logs"]) => swarm::logs(state, req, None, Some(id)).await,
        (_, ["swarm", ..]) | (_, ["nodes", ..]) | (_, ["services", ..]) | (_, ["tasks", ..]) => Err(ApiError::not_found("page not found")),
        (Method::GET | Method::POST, ["shoal", "dashboard", "credentials"]) => dashboard::credentials(state, req).await,
        (_, ["secrets", ..]) | (_, ["configs", ..]) => {
            state.swarm.store()?;
            Err(ApiError::new(StatusCode::NOT_IMPLEMENTED, "secrets and configs are not supported by this daemon yet"))
        }
        _ => Err(ApiError::not_found("page not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefixes() {
        assert_eq!(split_version("/v1.50/containers/json"), (Some("1.50"), "/containers/json"));
        assert_eq!(split_version("/containers/json"), (None, "/containers/json"));
        assert_eq!(split_version("/volumes"), (None, "/volumes"));
        assert!(check_version("1.24").is_ok());
        assert!(check_version("1.50").is_ok());
        assert!(check_version("1.23").unwrap_err().message.contains("too old"));
        assert!(check_version("1.51").unwrap_err().message.contains("too new"));
    }

    #[test]
    fn hosts_parse_like_dockerd() {
        assert_eq!(ListenerSpec::parse("unix:///run/x.sock").unwrap(), ListenerSpec::Unix("/run/x.sock".into()));
        assert_eq!(ListenerSpec::parse("tcp://127.0.0.1:2375").unwrap(), ListenerSpec::Tcp("127.0.0.1:2375".parse().unwrap()));
        assert!(ListenerSpec::parse("tcp://nope").is_err());
        assert!(ListenerSpec::parse("ftp://x").is_err());
    }
}

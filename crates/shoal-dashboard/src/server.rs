//! The dashboard's HTTP/1.1 server: routing, the session gate, CSRF checks on every POST,
//! actions through the swarm's control API, and the event streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use shoal_swarm::{Swarm, SwarmError};
use shoal_types::{NodeAvailability, NodeRole, ServiceMode};

use crate::auth::{self, Flash, SessionView, Sessions, Throttle};
use crate::feed::Hub;
use crate::forms::{parse_labels, parse_replicas, Form, ServiceForm};
use crate::pages::{self, Ctx, LocalCounts, Page, Snapshot};

type Body = UnsyncBoxBody<Bytes, Infallible>;
type Resp = Response<Body>;

const CSS: &str = include_str!("../assets/dashboard.css");
const JS: &str = include_str!("../assets/dashboard.js");
/// Form bodies are small.
const MAX_FORM: usize = 256 * 1024;
/// Events closer together than this reach open pages as one.
const COALESCE: Duration = Duration::from_millis(150);
const KEEPALIVE: Duration = Duration::from_secs(15);

pub(crate) struct App {
    swarm: Swarm,
    sessions: Sessions,
    throttle: Throttle,
    pub(crate) hub: Arc<Hub>,
    stop: watch::Receiver<bool>,
}

impl App {
    pub(crate) fn new(swarm: Swarm, stop: watch::Receiver<bool>) -> App {
        App {
            swarm,
            sessions: Sessions::default(),
            throttle: Throttle::default(),
            hub: Arc::new(Hub::default()),
            stop,
        }
    }

    fn snapshot(&self) -> Result<Snapshot, SwarmError> {
        let cluster = self.swarm.cluster()?;
        Ok(Snapshot {
            now: chrono::Utc::now(),
            this_node: self.swarm.node_id().unwrap_or_default(),
            cluster_id: cluster.id,
            nodes: self.swarm.nodes()?,
            services: self.swarm.services()?,
            tasks: self.swarm.tasks()?,
            networks: self.swarm.networks()?,
        })
    }
}

/// Accepts connections until `stop` turns true, then closes them all.
pub(crate) async fn serve(app: Arc<App>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let app = app.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| {
                            let app = app.clone();
                            async move { Ok::<_, Infallible>(handle(&app, req, peer).await) }
                        });
                        if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await {
                            debug!(error = %e, "dashboard connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "dashboard accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

// ---- responses ----

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()).boxed_unsync());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

fn html(status: StatusCode, body: String) -> Resp {
    full(status, "text/html; charset=utf-8", body)
}

fn text(status: StatusCode, body: &str) -> Resp {
    full(status, "text/plain; charset=utf-8", body.to_string())
}

fn redirect(location: &str) -> Resp {
    let mut resp = full(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

fn event_stream(rx: mpsc::Receiver<Bytes>) -> Resp {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp.headers_mut()
        .insert("X-Accel-Buffering", HeaderValue::from_static("no"));
    resp
}

/// A local path to go back to: `/…` but not `//…` (another host).
fn safe_local(path: &str) -> Option<&str> {
    (path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && !path.contains(['\r', '\n']))
    .then_some(path)
}

fn with_security_headers(mut resp: Resp) -> Resp {
    let h = resp.headers_mut();
    for (k, v) in [
        ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "same-origin"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

// ---- routing ----

struct Req {
    method: Method,
    path: String,
    segs: Vec<String>,
    query: HashMap<String, String>,
    headers: hyper::HeaderMap,
    peer: SocketAddr,
}

impl Req {
    fn fragment(&self) -> bool {
        self.query.contains_key("fragment")
    }

    fn header(&self, name: impl hyper::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The page that sent a form (same origin only), for going back after an action.
    fn back(&self, default: &str) -> String {
        let host = self.header(hyper::header::HOST).unwrap_or_default();
        self.header(hyper::header::REFERER)
            .and_then(|r| {
                r.strip_prefix("http://")
                    .or_else(|| r.strip_prefix("https://"))
            })
            .and_then(|r| r.strip_prefix(host))
            .and_then(safe_local)
            .unwrap_or(default)
            .to_string()
    }
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    Form::parse(q.unwrap_or_default().as_bytes())
        .0
        .into_iter()
        .collect()
}

async fn handle(app: &Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .map(|s| {
            urlencoding::decode(s)
                .map(|c| c.into_owned())
                .unwrap_or_else(|_| s.to_string())
        })
        .collect();
    let r = Req {
        method: parts.method,
        query: parse_query(parts.uri.query()),
        path,
        segs,
        headers: parts.headers,
        peer,
    };
    let resp = with_security_headers(route(app, &r, body).await);
    debug!(method = %r.method, path = %r.path, status = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "dashboard request");
    resp
}

async fn route(app: &Arc<App>, r: &Req, body: Incoming) -> Resp {
    let segs: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    match (&r.method, segs.as_slice()) {
        (&Method::GET | &Method::HEAD, ["static", "dashboard.css"]) => {
            return asset("text/css; charset=utf-8", CSS)
        }
        (&Method::GET | &Method::HEAD, ["static", "dashboard.js"]) => {
            return asset("text/javascript; charset=utf-8", JS)
        }
        (&Method::GET, ["login"]) => {
            if current_session(app, r).is_some() {
                return redirect("/");
            }
            let next = r
                .query
                .get("next")
                .and_then(|n| safe_local(n))
                .unwrap_or("/");
            return html(StatusCode::OK, pages::login(None, next));
        }
        (&Method::POST, ["login"]) => return login(app, r, body).await,
        _ => {}
    }
    let Some(session) = current_session(app, r) else {
        let wants_page = r.method == Method::GET
            && !r.fragment()
            && !segs.last().is_some_and(|s| *s == "logs" || *s == "live");
        if wants_page {
            return redirect(&format!("/login?next={}", urlencoding::encode(&r.path)));
        }
        return text(StatusCode::UNAUTHORIZED, "log in first");
    };
    if r.method == Method::POST {
        return post(app, r, body, &session).await;
    }
    if r.method != Method::GET && r.method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    // Read before the snapshot: a change after this point refreshes the page once more at
    // worst, never not at all.
    let generation = app.hub.generation();
    let ctx = |host: String| Ctx {
        csrf: session.csrf.clone(),
        flash: session.flash.clone(),
        host,
        generation,
    };
    // Event streams first: they need no snapshot.
    match segs.as_slice() {
        ["live"] => {
            let since = r.query.get("since").and_then(|g| g.parse::<u64>().ok());
            return live(app, &session, since);
        }
        ["services", id, "logs"] => return service_logs(app, id, &session).await,
        ["containers", id, "logs"] => return container_logs(app, id, &session).await,
        ["tasks", id, "logs"] => return task_logs(app, id, &session).await,
        _ => {}
    }
    let snap = match app.snapshot() {
        Ok(s) => s,
        Err(e) => {
            return render(
                &ctx(String::new()),
                r,
                pages::error_page("Not available", &e.to_string()),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    };
    let host = snap.node_name(&snap.this_node);
    let ctx = ctx(host);
    let page = match segs.as_slice() {
        [""] => pages::overview(&snap, local_counts(&app.swarm)),
        ["visualizer"] => pages::visualizer(&snap),
        ["nodes"] => pages::nodes(&snap, &session.csrf),
        ["services"] => pages::services(&snap, &session.csrf),
        ["services", "new"] => pages::new_service(
            &session.csrf,
            &ServiceForm {
                replicas: "1".into(),
                ..ServiceForm::default()
            },
            None,
        ),
        ["services", id] => match app.swarm.find_service(id) {
            Ok(svc) => pages::service(&snap, &svc, &session.csrf),
            Err(e) => {
                return render(
                    &ctx,
                    r,
                    pages::error_page("Service not found", &e.to_string()),
                    StatusCode::NOT_FOUND,
                )
            }
        },
        ["containers"] => pages::containers(&snap, &app.swarm.engine().list()),
        ["containers", id] => match app.swarm.engine().inspect(id) {
            Ok(c) => pages::container(&c, snap.now),
            Err(e) => {
                return render(
                    &ctx,
                    r,
                    pages::error_page("Container not found", &e.to_string()),
                    StatusCode::NOT_FOUND,
                )
            }
        },
        ["tasks", id] => match app.swarm.get_task(id) {
            Ok(t) => {
                // A live refresh shows the state only; the container record is read (perhaps
                // from another node) when the page itself is loaded.
                let container = if r.fragment() {
                    None
                } else {
                    Some(app.swarm.inspect_task_container(&t).await.map_err(|e| e.to_string()))
                };
                pages::task(&snap, &t, container)
            }
            Err(e) => {
                return render(
                    &ctx,
                    r,
                    pages::error_page("Task not found", &e.to_string()),
                    StatusCode::NOT_FOUND,
                )
            }
        },
        ["images"] => {
            let mut in_use: HashMap<String, usize> = HashMap::new();
            for c in app.swarm.engine().list() {
                *in_use.entry(c.config.image_id.clone()).or_default() += 1;
            }
            pages::images(&app.swarm.engine().images().list(), &in_use, snap.now)
        }
        ["networks"] => pages::networks(&snap),
        ["events"] => pages::events(&app.hub.events(), snap.now),
        ["settings"] => pages::settings(&session.csrf, None),
        _ => {
            return render(
                &ctx,
                r,
                pages::error_page("Not found", &format!("there is no page {}", r.path)),
                StatusCode::NOT_FOUND,
            )
        }
    };
    render(&ctx, r, page, StatusCode::OK)
}

fn asset(content_type: &str, body: &'static str) -> Resp {
    let mut resp = full(StatusCode::OK, content_type, body);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn render(ctx: &Ctx, r: &Req, page: Page, status: StatusCode) -> Resp {
    if r.fragment() {
        return html(status, page.live);
    }
    html(status, pages::layout(ctx, &page, &r.path))
}

fn local_counts(swarm: &Swarm) -> LocalCounts {
    let c = swarm.engine().counts();
    LocalCounts {
        containers: c.containers,
        running: c.running,
        images: c.images,
    }
}

fn current_session(app: &App, r: &Req) -> Option<SessionView> {
    let token = auth::cookie_token(r.header(COOKIE))?;
    app.sessions.touch(&token)
}

/// A POST must come from a page of this dashboard: its `Origin` (when the browser sends one)
/// names this host.
fn same_origin(r: &Req) -> bool {
    match r.header(hyper::header::ORIGIN) {
        None => true,
        Some(origin) => {
            let host = r.header(hyper::header::HOST).unwrap_or_default();
            !host.is_empty()
                && (origin == format!("http://{host}") || origin == format!("https://{host}"))
        }
    }
}

async fn read_form(body: Incoming) -> Result<Form, Resp> {
    match http_body_util::Limited::new(body, MAX_FORM).collect().await {
        Ok(c) => Ok(Form::parse(&c.to_bytes())),
        Err(e) => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("reading the form: {e}"),
        )),
    }
}

async fn login(app: &App, r: &Req, body: Incoming) -> Resp {
    if !same_origin(r) {
        return text(StatusCode::FORBIDDEN, "cross-origin login refused");
    }
    let form = match read_form(body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let next = safe_local(form.get("next")).unwrap_or("/").to_string();
    let ip = r.peer.ip();
    let delay = app.throttle.delay(ip);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let ok = match app
        .swarm
        .check_dashboard_credential(form.get("credential"))
        .await
    {
        Ok(ok) => ok,
        Err(e) => {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::login(Some(&e.to_string()), &next),
            )
        }
    };
    if !ok {
        app.throttle.failed(ip);
        warn!(client = %ip, "dashboard login refused: wrong credential");
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("Wrong credential."), &next),
        );
    }
    app.throttle.succeeded(ip);
    let token = app.sessions.create();
    info!(client = %ip, sessions = app.sessions.len(), "dashboard login");
    let mut resp = redirect(&next);
    if let Ok(v) = HeaderValue::from_str(&auth::session_cookie(&token)) {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
    resp
}

// ---- actions ----

async fn post(app: &App, r: &Req, body: Incoming, session: &SessionView) -> Resp {
    if !same_origin(r) {
        return text(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    let form = match read_form(body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    if !app.sessions.check_csrf(&session.token, form.get("csrf")) {
        warn!(client = %r.peer.ip(), path = %r.path, "dashboard form refused: missing or wrong CSRF token");
        return text(
            StatusCode::FORBIDDEN,
            "this form has expired; reload the page and try again",
        );
    }
    let segs: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    let swarm = &app.swarm;
    let flash = |error: bool, text: String| {
        app.sessions
            .set_flash(&session.token, Flash { error, text })
    };
    let done = |result: Result<String, String>, back: String| {
        match result {
            Ok(msg) => flash(false, msg),
            Err(msg) => flash(true, msg),
        }
        redirect(&back)
    };
    match segs.as_slice() {
        ["logout"] => {
            app.sessions.remove(&session.token);
            let mut resp = redirect("/login");
            if let Ok(v) = HeaderValue::from_str(&auth::clear_cookie()) {
                resp.headers_mut().insert(SET_COOKIE, v);
            }
            resp
        }
        ["services"] => {
            let sf = ServiceForm::from_form(&form);
            let result = match sf.to_spec() {
                Ok(spec) => swarm.create_service(spec).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(id) => {
                    let name = swarm
                        .find_service(&id)
                        .map(|s| s.spec.name)
                        .unwrap_or_else(|_| id.clone());
                    info!(service = %name, "service created from the dashboard");
                    flash(false, format!("Service {name} created."));
                    redirect(&format!("/services/{}", urlencoding::encode(&id)))
                }
                Err(e) => {
                    let host = swarm
                        .find_node("self")
                        .map(|n| n.display_name().to_string())
                        .unwrap_or_default();
                    let ctx = Ctx {
                        csrf: session.csrf.clone(),
                        flash: None,
                        host,
                        generation: app.hub.generation(),
                    };
                    html(
                        StatusCode::BAD_REQUEST,
                        pages::layout(
                            &ctx,
                            &pages::new_service(&session.csrf, &sf, Some(&e)),
                            "/services/new",
                        ),
                    )
                }
            }
        }
        ["services", id, action] => {
            let back = r.back(&format!("/services/{}", urlencoding::encode(id)));
            let result = service_action(swarm, id, action, &form).await;
            let back = if *action == "remove" && result.is_ok() {
                "/services".to_string()
            } else {
                back
            };
            done(result, back)
        }
        ["nodes", id, action] => {
            let result = node_action(swarm, id, action, &form).await;
            done(result, r.back("/nodes"))
        }
        ["settings", "credential"] => {
            let (current, new, confirm) =
                (form.get("current"), form.get("new"), form.get("confirm"));
            let error = match swarm.check_dashboard_credential(current).await {
                Ok(false) => Some("The current credential is wrong.".to_string()),
                Err(e) => Some(e.to_string()),
                Ok(true) if new != confirm => {
                    Some("The new credential and its confirmation differ.".to_string())
                }
                Ok(true) => match swarm.set_dashboard_credential(new).await {
                    Ok(()) => None,
                    Err(e) => Some(e.to_string()),
                },
            };
            match error {
                None => {
                    app.sessions.remove_others(&session.token);
                    info!("dashboard credential changed from the dashboard");
                    flash(
                        false,
                        "The dashboard credential was changed; other sessions were logged out."
                            .into(),
                    );
                    redirect("/settings")
                }
                Some(e) => {
                    flash(true, e);
                    redirect("/settings")
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, "no such action"),
    }
}

async fn service_action(
    swarm: &Swarm,
    id: &str,
    action: &str,
    form: &Form,
) -> Result<String, String> {
    let svc = swarm.find_service(id).map_err(|e| e.to_string())?;
    let name = svc.spec.name.clone();
    let version = svc.meta.version.index;
    let r = match action {
        "scale" => {
            let n = parse_replicas(form.get("replicas")).map_err(|e| e.to_string())?;
            let mut spec = svc.spec.clone();
            match &mut spec.mode {
                ServiceMode::Replicated { replicas } => *replicas = n,
                _ => {
                    return Err(format!(
                        "scale can only be used with replicated mode; {name} is {}",
                        svc.spec.mode.name()
                    ))
                }
            }
            swarm
                .update_service(&svc.id, version, spec, false)
                .await
                .map(|()| format!("Service {name} scaled to {n}."))
        }
        "image" => {
            let image = form.get("image").trim();
            if image.is_empty() {
                return Err("an image is required".into());
            }
            let mut spec = svc.spec.clone();
            let image = crate::forms::normalize_image(image);
            spec.task_template.container_spec.image = image.clone();
            swarm
                .update_service(&svc.id, version, spec, false)
                .await
                .map(|()| format!("Service {name} is updating to {image}."))
        }
        "rollback" => swarm
            .update_service(&svc.id, version, svc.spec.clone(), true)
            .await
            .map(|()| format!("Service {name} is rolling back.")),
        "remove" => swarm
            .remove_service(&svc.id)
            .await
            .map(|()| format!("Service {name} removed.")),
        other => return Err(format!("unknown service action {other:?}")),
    };
    info!(service = %name, action, ok = r.is_ok(), "service action from the dashboard");
    r.map_err(|e| e.to_string())
}

async fn node_action(swarm: &Swarm, id: &str, action: &str, form: &Form) -> Result<String, String> {
    let node = swarm.find_node(id).map_err(|e| e.to_string())?;
    let name = node.display_name().to_string();
    let mut spec = node.spec.clone();
    let msg = match action {
        "availability" => {
            let a = form.get("availability");
            spec.availability = a
                .parse::<NodeAvailability>()
                .map_err(|_| format!("invalid availability {a:?}: use active, pause or drain"))?;
            format!("Node {name}: availability set to {a}.")
        }
        "labels" => {
            spec.labels = parse_labels(form.get("labels")).map_err(|e| e.to_string())?;
            format!("Labels of node {name} saved.")
        }
        "role" => {
            let role = form.get("role");
            spec.role = role
                .parse::<NodeRole>()
                .map_err(|_| format!("invalid role {role:?}: use worker or manager"))?;
            format!("Node {name} is becoming a {role}.")
        }
        other => return Err(format!("unknown node action {other:?}")),
    };
    let r = swarm
        .update_node(&node.id, node.meta.version.index, spec)
        .await;
    info!(node = %name, action, ok = r.is_ok(), "node action from the dashboard");
    r.map(|()| msg).map_err(|e| e.to_string())
}

// ---- event streams ----

fn sse(event: &str, data: &str) -> Bytes {
    let mut out = format!("event: {event}\n");
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// `/live?since=G`: an `update` event whenever the cluster (or this node's engine) changed, at
/// most one per [`COALESCE`], and one at once when it changed since generation `G` (the one the
/// page was rendered at); `logout` when the session ended.
fn live(app: &Arc<App>, session: &SessionView, since: Option<u64>) -> Resp {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let mut generation = app.hub.subscribe();
    let mut stop = app.stop.clone();
    let token = session.token.clone();
    let app = app.clone();
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b"retry: 2000\n: connected\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let now = *generation.borrow_and_update();
        if since.is_some_and(|g| g != now) && tx.send(sse("update", &now.to_string())).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                r = generation.changed() => {
                    if r.is_err() { return; }
                    tokio::time::sleep(COALESCE).await;
                    let g = *generation.borrow_and_update();
                    if !app.sessions.is_alive(&token) {
                        let _ = tx.send(sse("logout", "")).await;
                        return;
                    }
                    if tx.send(sse("update", &g.to_string())).await.is_err() { return; }
                }
                _ = tokio::time::sleep(KEEPALIVE) => {
                    if !app.sessions.is_alive(&token) {
                        let _ = tx.send(sse("logout", "")).await;
                        return;
                    }
                    if tx.send(Bytes::from_static(b": ping\n\n")).await.is_err() { return; }
                }
                _ = tx.closed() => return,
                r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            }
        }
    });
    event_stream(rx)
}

/// Follow options shared by every log view: the last 200 lines, then live.
fn follow_opts() -> shoal_swarm::LogOptions {
    shoal_swarm::LogOptions {
        stdout: true,
        stderr: true,
        follow: true,
        tail: Some(200),
        since: None,
    }
}

/// An event stream of `line` events, one per item of `lines` (`to_json` shapes each), with
/// keep-alives, until the browser goes away, the lines end or the dashboard stops.
fn log_stream<T: Send + 'static>(
    app: &App,
    mut lines: mpsc::Receiver<T>,
    mut to_json: impl FnMut(T) -> serde_json::Value + Send + 'static,
) -> Resp {
    let mut stop = app.stop.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let _ = tx
            .send(Bytes::from_static(b"retry: 3000\n: connected\n\n"))
            .await;
        loop {
            tokio::select! {
                line = lines.recv() => {
                    let Some(l) = line else { return };
                    if tx.send(sse("line", &to_json(l).to_string())).await.is_err() { return; }
                }
                _ = tokio::time::sleep(KEEPALIVE) => if tx.send(Bytes::from_static(b": ping\n\n")).await.is_err() { return },
                _ = tx.closed() => return,
                r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            }
        }
    });
    event_stream(rx)
}

fn line_text(line: &[u8]) -> String {
    String::from_utf8_lossy(line).trim_end_matches('\n').to_string()
}

/// The live logs of a service's tasks, each line named by its task.
async fn service_logs(app: &App, id: &str, _session: &SessionView) -> Resp {
    let svc = match app.swarm.find_service(id) {
        Ok(s) => s,
        Err(e) => return text(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let lines = match app.swarm.logs(Some(svc.clone()), None, follow_opts()).await {
        Ok(l) => l,
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let swarm = app.swarm.clone();
    let mut names: HashMap<String, String> = HashMap::new();
    log_stream(app, lines, move |l: shoal_swarm::LogLine| {
        let name = names
            .entry(l.task_id.clone())
            .or_insert_with(|| {
                swarm
                    .get_task(&l.task_id)
                    .map(|t| shoal_types::task_display_name(&svc.spec.name, t.slot, &t.node_id))
                    .unwrap_or_else(|_| crate::html::short(&l.task_id).to_string())
            })
            .clone();
        serde_json::json!({"task": name, "stream": l.stream, "text": line_text(&l.line)})
    })
}

/// The live logs of one task's container, wherever it runs (through the log broker).
async fn task_logs(app: &App, id: &str, _session: &SessionView) -> Resp {
    let task = match app.swarm.get_task(id) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::NOT_FOUND, &e.to_string()),
    };
    match app.swarm.logs(None, Some(task), follow_opts()).await {
        Ok(lines) => log_stream(app, lines, |l: shoal_swarm::LogLine| {
            serde_json::json!({"stream": l.stream, "text": line_text(&l.line)})
        }),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// The live logs of a container on this node.
async fn container_logs(app: &App, id: &str, _session: &SessionView) -> Resp {
    match app.swarm.engine().logs(id, (&follow_opts()).into()).await {
        Ok((_tty, records)) => log_stream(app, records, |rec: shoal_engine::LogRecord| {
            serde_json::json!({"stream": rec.stream, "text": line_text(&rec.line)})
        }),
        Err(e) => text(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(safe_local("/services/x"), Some("/services/x"));
        assert_eq!(safe_local("//evil.example/"), None);
        assert_eq!(safe_local("/\\evil"), None);
        assert_eq!(safe_local("http://evil/"), None);
        assert_eq!(safe_local("/a\r\nSet-Cookie: x"), None);
    }

    #[test]
    fn sse_frames_split_lines() {
        assert_eq!(&sse("update", "7")[..], b"event: update\ndata: 7\n\n");
        assert_eq!(
            &sse("line", "a\nb")[..],
            b"event: line\ndata: a\ndata: b\n\n"
        );
    }
}

//! The mTLS RPC server: TLS is mandatory (a plaintext client gets a TLS alert and the
//! connection is closed), client certificates are verified against the cluster CA when present,
//! and every request reaches the handler with the caller's [`Peer`] identity. Routes authorize
//! with [`require`]; a route that calls nothing is anonymous.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::error::{Result, Status};
use crate::pki::{NodeIdentity, Role};

/// Response body type of every route.
pub type RpcBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// The path of the anonymous route that serves the root CA certificate to joining nodes.
pub const CA_PATH: &str = "/v1/ca";
/// Largest JSON request body [`read_json`] accepts.
pub const MAX_REQUEST_BODY: usize = 16 << 20;
/// A TLS handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The body of `GET /v1/ca`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RootCaResponse {
    /// PEM of the cluster root CA certificate.
    pub certificate: String,
}

/// Who is calling: the identity from a verified client certificate (`None` for a client that
/// presented none) and the remote address.
#[derive(Debug, Clone)]
pub struct Peer {
    pub identity: Option<NodeIdentity>,
    pub addr: SocketAddr,
}

/// Authorize a call. `Role::Worker` admits any node certificate of this cluster (workers and
/// managers); `Role::Manager` admits only manager certificates (403 for a worker). No
/// certificate → 401.
pub fn require(peer: &Peer, role: Role) -> std::result::Result<&NodeIdentity, Status> {
    let Some(id) = &peer.identity else {
        return Err(Status::unauthenticated(
            "this call requires a node certificate; join the swarm first",
        ));
    };
    match (role, id.role) {
        (Role::Worker, _) | (Role::Manager, Role::Manager) => Ok(id),
        (Role::Manager, Role::Worker) => Err(Status::forbidden(format!(
            "permission denied: node {} has a worker certificate and this call is for managers only",
            id.node_id
        ))),
    }
}

/// What the server calls for every request. Implemented for
/// `Fn(Peer, Request<Incoming>) -> impl Future<Output = Result<Response<RpcBody>, Status>>`.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        peer: Peer,
        req: Request<Incoming>,
    ) -> impl Future<Output = std::result::Result<Response<RpcBody>, Status>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Peer, Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Response<RpcBody>, Status>> + Send,
{
    fn handle(
        &self,
        peer: Peer,
        req: Request<Incoming>,
    ) -> impl Future<Output = std::result::Result<Response<RpcBody>, Status>> + Send {
        self(peer, req)
    }
}

fn full(bytes: impl Into<Bytes>) -> RpcBody {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn with_json_type(mut resp: Response<RpcBody>, content_type: &'static str) -> Response<RpcBody> {
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<RpcBody> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = Response::new(full(body));
            *resp.status_mut() = status;
            with_json_type(resp, "application/json")
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding the response: {e}"),
        ),
    }
}

/// `200 OK` with a JSON body, as a handler result.
pub fn ok<T: Serialize + ?Sized>(value: &T) -> std::result::Result<Response<RpcBody>, Status> {
    Ok(json(StatusCode::OK, value))
}

/// A JSON error `{"message": …}` with `status`.
pub fn error(status: StatusCode, message: &str) -> Response<RpcBody> {
    #[derive(Serialize)]
    struct Msg<'a> {
        message: &'a str,
    }
    let mut resp = Response::new(full(
        serde_json::to_vec(&Msg { message }).unwrap_or_default(),
    ));
    *resp.status_mut() = status;
    with_json_type(resp, "application/json")
}

impl Status {
    pub fn into_response(self) -> Response<RpcBody> {
        error(self.status, &self.message)
    }
}

/// The anonymous `GET /v1/ca` answer.
pub fn root_ca_response(ca_pem: &str) -> Response<RpcBody> {
    json(
        StatusCode::OK,
        &RootCaResponse {
            certificate: ca_pem.to_string(),
        },
    )
}

/// A `200` streaming response: every message sent into the channel becomes one line of JSON
/// (`application/x-ndjson`, chunked). Dropping the sender ends the stream cleanly; when the
/// client goes away the receiver is dropped, so `tx.send` fails and `tx.closed()` resolves.
pub fn ndjson<T: Serialize + Send + 'static>(rx: mpsc::Receiver<T>) -> Response<RpcBody> {
    with_json_type(
        Response::new(NdjsonBody { rx }.boxed_unsync()),
        "application/x-ndjson",
    )
}

struct NdjsonBody<T> {
    rx: mpsc::Receiver<T>,
}

impl<T: Serialize> Body for NdjsonBody<T> {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, std::io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(msg)) => {
                let mut line = match serde_json::to_vec(&msg) {
                    Ok(line) => line,
                    Err(e) => {
                        return Poll::Ready(Some(Err(std::io::Error::other(format!(
                            "encoding a stream message: {e}"
                        )))))
                    }
                };
                line.push(b'\n');
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `200 OK` with opaque bytes (`application/octet-stream`), as a handler result.
pub fn ok_bytes(bytes: impl Into<Bytes>) -> std::result::Result<Response<RpcBody>, Status> {
    Ok(with_json_type(Response::new(full(bytes)), "application/octet-stream"))
}

/// Read an opaque request body of at most `limit` bytes: 413 when larger.
pub async fn read_bytes(req: Request<Incoming>, limit: usize) -> std::result::Result<Bytes, Status> {
    Ok(Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Status::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than {limit} bytes"))
            } else {
                Status::bad_request(format!("reading the request body: {e}"))
            }
        })?
        .to_bytes())
}

/// Read a JSON request body (at most [`MAX_REQUEST_BODY`]): 413 when larger, 400 when not JSON.
/// An empty body reads as JSON `null`.
pub async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
) -> std::result::Result<T, Status> {
    let body = Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Status::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is larger than {MAX_REQUEST_BODY} bytes"),
                )
            } else {
                Status::bad_request(format!("reading the request body: {e}"))
            }
        })?
        .to_bytes();
    let body: &[u8] = if body.is_empty() { b"null" } else { &body };
    serde_json::from_slice(body)
        .map_err(|e| Status::bad_request(format!("invalid request body: {e}")))
}

/// A running server. Dropping it (or [`RpcServer::shutdown`]) stops accepting and closes every
/// open connection, including streams.
pub struct RpcServer {
    local_addr: SocketAddr,
    config: Arc<RwLock<Arc<ServerConfig>>>,
    task: JoinHandle<()>,
}

impl RpcServer {
    /// Bind `addr` (port 0 for an ephemeral port) and serve.
    pub async fn bind<H: Handler>(
        addr: SocketAddr,
        config: Arc<ServerConfig>,
        handler: H,
    ) -> Result<RpcServer> {
        let listener = TcpListener::bind(addr).await?;
        Self::from_listener(listener, config, handler)
    }

    /// Serve on an already bound listener.
    pub fn from_listener<H: Handler>(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        handler: H,
    ) -> Result<RpcServer> {
        let local_addr = listener.local_addr()?;
        let config = Arc::new(RwLock::new(config));
        let task = tokio::spawn(accept_loop(listener, config.clone(), Arc::new(handler)));
        Ok(RpcServer {
            local_addr,
            config,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Use a new TLS config (renewed certificate, rotated CA) for connections accepted from now
    /// on; open connections keep theirs.
    pub fn set_config(&self, config: Arc<ServerConfig>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Stop accepting and close all connections.
    pub fn shutdown(self) {}
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    config: Arc<RwLock<Arc<ServerConfig>>>,
    handler: Arc<H>,
) {
    // Connection tasks live in this set, so aborting the accept loop closes them all.
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (tcp, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "rpc accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(config.read().unwrap_or_else(|e| e.into_inner()).clone());
        let handler = handler.clone();
        conns.spawn(serve_connection(tcp, addr, acceptor, handler));
    }
}

async fn serve_connection<H: Handler>(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    handler: Arc<H>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "rpc tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%addr, "rpc tls handshake timed out");
            return;
        }
    };
    let identity = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|leaf| {
        NodeIdentity::from_der(leaf.as_ref())
            .inspect_err(|e| tracing::warn!(%addr, error = %e, "verified client certificate is not a node certificate; treating the caller as anonymous"))
            .ok()
    });
    let peer = Peer { identity, addr };
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        let peer = peer.clone();
        async move {
            let resp = match handler.handle(peer, req).await {
                Ok(resp) => resp,
                Err(status) => status.into_response(),
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), service);
    if let Err(e) = conn.await {
        tracing::debug!(%addr, error = %e, "rpc connection ended with an error");
    }
}

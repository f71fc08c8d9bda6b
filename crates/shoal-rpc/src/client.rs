//! The mTLS RPC client: JSON calls (`POST` with a JSON body, or `GET`), NDJSON streams on a
//! dedicated connection, a connect timeout (TCP + TLS, default 5 s), a call timeout (request to
//! last body byte, default 10 s; for a stream only until the response head), and keep-alive
//! reuse of idle connections. Also the join bootstrap ([`fetch_root_ca`], [`bootstrap`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use crate::error::{Result, RpcError};
use crate::pki::{token_ca_digest, verify_ca_digest, MANAGER_SERVER_NAME};
use crate::server::{RootCaResponse, CA_PATH};
use crate::tls;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JSON response body, and largest single NDJSON message.
pub const MAX_RESPONSE_BODY: usize = 64 << 20;
const MAX_IDLE: usize = 4;
const STREAM_BUFFER: usize = 64;

type Sender = SendRequest<Full<Bytes>>;

/// A client for one remote node. Cheap to clone; clones share idle connections.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    config: RwLock<Arc<ClientConfig>>,
    idle: Mutex<Vec<Sender>>,
    connect_timeout: Duration,
    call_timeout: Duration,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl RpcClient {
    /// A client for the manager at `addr`, verifying it under the name `swarm-manager`.
    pub fn new(addr: SocketAddr, config: Arc<ClientConfig>) -> RpcClient {
        Self::build(
            addr,
            config,
            MANAGER_SERVER_NAME,
            DEFAULT_CONNECT_TIMEOUT,
            DEFAULT_CALL_TIMEOUT,
        )
    }

    /// The same client with other timeouts (connect = TCP + TLS handshake; call = whole call).
    pub fn with_timeouts(self, connect: Duration, call: Duration) -> RpcClient {
        let name = self.inner.server_name.clone();
        let config = self
            .inner
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        RpcClient {
            inner: Arc::new(Inner {
                connect_timeout: connect,
                call_timeout: call,
                ..Inner::new(self.inner.addr, config, name)
            }),
        }
    }

    /// The same client verifying the server under another DNS name.
    pub fn with_server_name(self, name: &str) -> Result<RpcClient> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| RpcError::TlsConfig(format!("server name {name:?}: {e}")))?;
        let config = self
            .inner
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(RpcClient {
            inner: Arc::new(Inner {
                connect_timeout: self.inner.connect_timeout,
                call_timeout: self.inner.call_timeout,
                ..Inner::new(self.inner.addr, config, name)
            }),
        })
    }

    fn build(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        name: &'static str,
        connect: Duration,
        call: Duration,
    ) -> RpcClient {
        let name = ServerName::try_from(name).expect("static server name is valid");
        RpcClient {
            inner: Arc::new(Inner {
                connect_timeout: connect,
                call_timeout: call,
                ..Inner::new(addr, config, name)
            }),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// A client for another node at `addr` with this client's TLS config, server name and
    /// timeouts (connections are not shared).
    pub fn for_addr(&self, addr: SocketAddr) -> RpcClient {
        let config = self.inner.config.read().unwrap_or_else(|e| e.into_inner()).clone();
        RpcClient {
            inner: Arc::new(Inner {
                connect_timeout: self.inner.connect_timeout,
                call_timeout: self.inner.call_timeout,
                ..Inner::new(addr, config, self.inner.server_name.clone())
            }),
        }
    }

    /// Use a new TLS config (renewed certificate) from now on; idle connections are dropped.
    pub fn set_config(&self, config: Arc<ClientConfig>) {
        *self.inner.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        self.inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// `POST path` with `req` as JSON; the JSON answer decoded as `Resp`. A non-2xx answer is
    /// [`RpcError::Status`] with the server's `message`.
    pub async fn call_json<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp> {
        let body = serde_json::to_vec(req)
            .map_err(|e| RpcError::Protocol(format!("encoding the request: {e}")))?;
        self.call(Method::POST, path, Bytes::from(body)).await
    }

    /// `POST path` with opaque `body` bytes (`application/octet-stream`); the answer's bytes. A
    /// non-2xx answer is [`RpcError::Status`] with the server's `message`.
    pub async fn call_bytes(&self, path: &str, body: Vec<u8>) -> Result<Bytes> {
        let what = format!("POST {path} to {}", self.inner.addr);
        let fut = async {
            let (sender, resp) = self.send(Method::POST, path, Bytes::from(body), true).await?;
            let status = resp.status();
            let bytes = read_body(resp, &self.inner.addr).await?;
            self.keep_idle(sender);
            if !status.is_success() {
                return Err(status_error(status.as_u16(), &bytes));
            }
            Ok(bytes)
        };
        tokio::time::timeout(self.inner.call_timeout, fut).await.map_err(|_| RpcError::Timeout(what))?
    }

    fn keep_idle(&self, sender: Sender) {
        if !sender.is_closed() {
            let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
    }

    /// `GET path`; the JSON answer decoded as `Resp`.
    pub async fn get_json<Resp: DeserializeOwned>(&self, path: &str) -> Result<Resp> {
        self.call(Method::GET, path, Bytes::new()).await
    }

    async fn call<Resp: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Resp> {
        let what = format!("{method} {path} to {}", self.inner.addr);
        let fut = async {
            let (sender, resp) = self.send(method.clone(), path, body, true).await?;
            let status = resp.status();
            let bytes = read_body(resp, &self.inner.addr).await?;
            self.keep_idle(sender);
            if !status.is_success() {
                return Err(status_error(status.as_u16(), &bytes));
            }
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            serde_json::from_slice(bytes).map_err(|e| {
                RpcError::Protocol(format!("decoding the answer to {method} {path}: {e}"))
            })
        };
        tokio::time::timeout(self.inner.call_timeout, fut)
            .await
            .map_err(|_| RpcError::Timeout(what))?
    }

    /// `POST path` with `req` as JSON, answered by a stream of newline-delimited JSON messages
    /// on a connection of its own. Each message arrives as `Ok(msg)` in order. When the server
    /// ends the stream cleanly the channel closes; when the connection breaks first the last
    /// item is `Err(RpcError::Disconnected)`. Dropping the receiver closes the connection, which
    /// the server sees as its sender failing. A non-2xx answer is an error before any stream.
    pub async fn stream_ndjson<Req: Serialize + ?Sized, Msg: DeserializeOwned + Send + 'static>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<mpsc::Receiver<Result<Msg>>> {
        let body = serde_json::to_vec(req)
            .map_err(|e| RpcError::Protocol(format!("encoding the request: {e}")))?;
        let what = format!("POST {path} to {}", self.inner.addr);
        let (sender, resp) = tokio::time::timeout(
            self.inner.call_timeout,
            self.send(Method::POST, path, Bytes::from(body), false),
        )
        .await
        .map_err(|_| RpcError::Timeout(what.clone()))??;
        let status = resp.status();
        if !status.is_success() {
            let bytes =
                tokio::time::timeout(self.inner.call_timeout, read_body(resp, &self.inner.addr))
                    .await
                    .map_err(|_| RpcError::Timeout(what))??;
            return Err(status_error(status.as_u16(), &bytes));
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(pump_stream(sender, resp.into_body(), tx, self.inner.addr));
        Ok(rx)
    }

    /// Send one request, on an idle connection when `reuse` allows and one is open, else on a
    /// new one. A request that never left an idle connection (it closed meanwhile) is retried
    /// once on a new connection; one that was sent is not (calls need not be idempotent).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        reuse: bool,
    ) -> Result<(Sender, Response<Incoming>)> {
        let request = || {
            Request::builder()
                .method(method.clone())
                .uri(path)
                .header(HOST, self.inner.server_name.to_str().as_ref())
                .header(CONTENT_TYPE, "application/json")
                .header(ACCEPT, "application/json, application/x-ndjson")
                .body(Full::new(body.clone()))
                .map_err(|e| RpcError::Protocol(format!("building a request for {path:?}: {e}")))
        };
        if reuse {
            while let Some(mut sender) = self.take_idle() {
                if sender.ready().await.is_err() {
                    continue;
                }
                match sender.try_send_request(request()?).await {
                    Ok(resp) => return Ok((sender, resp)),
                    Err(mut e) => {
                        if e.take_message().is_some() {
                            continue; // never sent: the connection closed while idle
                        }
                        return Err(self.disconnected(e.into_error()));
                    }
                }
            }
        }
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(request()?)
            .await
            .map_err(|e| self.disconnected(e))?;
        Ok((sender, resp))
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn disconnected(&self, e: impl std::error::Error) -> RpcError {
        RpcError::Disconnected {
            addr: self.inner.addr.to_string(),
            message: error_chain(&e),
        }
    }

    async fn connect(&self) -> Result<Sender> {
        let addr = self.inner.addr;
        let config = self
            .inner
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let name = self.inner.server_name.clone();
        let fail = |message: String| RpcError::Connect {
            addr: addr.to_string(),
            message,
        };
        let handshake = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let tls = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| fail(format!("tls handshake: {e}")))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| fail(format!("http handshake: {}", error_chain(&e))))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%addr, error = %e, "rpc client connection ended with an error");
                }
            });
            Ok::<_, RpcError>(sender)
        };
        tokio::time::timeout(self.inner.connect_timeout, handshake)
            .await
            .map_err(|_| RpcError::Timeout(format!("connecting to {addr}")))?
    }
}

impl Inner {
    fn new(addr: SocketAddr, config: Arc<ClientConfig>, server_name: ServerName<'static>) -> Inner {
        Inner {
            addr,
            server_name,
            config: RwLock::new(config),
            idle: Mutex::new(Vec::new()),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// An error with its sources, so "connection error" says why (e.g. the TLS alert).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

async fn read_body(resp: Response<Incoming>, addr: &SocketAddr) -> Result<Bytes> {
    Ok(Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
        .collect()
        .await
        .map_err(|e| RpcError::Disconnected {
            addr: addr.to_string(),
            message: format!("reading the answer: {}", error_chain(&*e)),
        })?
        .to_bytes())
}

fn status_error(status: u16, body: &[u8]) -> RpcError {
    #[derive(serde::Deserialize)]
    struct Msg {
        message: String,
    }
    let message = match serde_json::from_slice::<Msg>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    RpcError::Status { status, message }
}

async fn pump_stream<Msg: DeserializeOwned + Send + 'static>(
    sender: Sender,
    mut body: Incoming,
    tx: mpsc::Sender<Result<Msg>>,
    addr: SocketAddr,
) {
    // Keep the connection's sender alive for as long as the stream is read.
    let _sender = sender;
    let mut buf = BytesMut::new();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = tx.closed() => return, // the receiver is gone: dropping the body closes the connection
        };
        match frame {
            None => {
                if !buf.iter().all(u8::is_ascii_whitespace) {
                    let _ = tx
                        .send(Err(RpcError::Protocol(
                            "stream ended in the middle of a message".into(),
                        )))
                        .await;
                }
                return;
            }
            Some(Err(e)) => {
                let _ = tx
                    .send(Err(RpcError::Disconnected {
                        addr: addr.to_string(),
                        message: error_chain(&e),
                    }))
                    .await;
                return;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line = buf.split_to(pos + 1);
                    let line = &line[..pos];
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let msg = serde_json::from_slice(line)
                        .map_err(|e| RpcError::Protocol(format!("decoding a stream message: {e}")));
                    let bad = msg.is_err();
                    if tx.send(msg).await.is_err() || bad {
                        return;
                    }
                }
                if buf.len() > MAX_RESPONSE_BODY {
                    let _ = tx
                        .send(Err(RpcError::Protocol("stream message too large".into())))
                        .await;
                    return;
                }
            }
        }
    }
}

/// Download the root CA from the manager at `addr` over a TLS connection that checks nothing
/// about the server, then check the CA against the digest from the join token
/// (`RpcError::CaMismatch` — "remote CA does not match fingerprint. Expected: …" — otherwise).
/// Nothing fetched this way is trusted until that check passes.
pub async fn fetch_root_ca(addr: SocketAddr, token_digest_base36: &str) -> Result<String> {
    let client = RpcClient::new(addr, tls::insecure_bootstrap_config()?);
    let resp: RootCaResponse = client.get_json(CA_PATH).await?;
    verify_ca_digest(&resp.certificate, token_digest_base36)?;
    Ok(resp.certificate)
}

/// The join bootstrap: fetch and check the CA named by `join_token`, then return it with a
/// client (no client certificate) that verifies the manager against that CA only, for the
/// join call itself.
pub async fn bootstrap(addr: SocketAddr, join_token: &str) -> Result<(String, RpcClient)> {
    let digest =
        token_ca_digest(join_token).ok_or_else(|| RpcError::Pki("invalid join token".into()))?;
    let ca_pem = fetch_root_ca(addr, digest).await?;
    let client = RpcClient::new(addr, tls::anonymous_client_config(&ca_pem)?);
    Ok((ca_pem, client))
}

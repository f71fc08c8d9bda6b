//! Response builders, request helpers and the error mapping shared by all handlers.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use tokio::sync::mpsc;

use shoal_engine::{EngineError, ErrorKind};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;
pub type Resp = Response<Body>;

pub const JSON: &str = "application/json";

/// An error on its way to the client: a status and Docker's `{"message": …}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub fn into_response(self) -> Resp {
        if self.status == StatusCode::NOT_MODIFIED {
            return empty(StatusCode::NOT_MODIFIED);
        }
        json(self.status, &serde_json::json!({ "message": self.message }))
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match e.kind() {
            ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::NotModified => StatusCode::NOT_MODIFIED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<shoal_image::ImageError> for ApiError {
    fn from(e: shoal_image::ImageError) -> Self {
        ApiError::from(EngineError::from(e))
    }
}

pub type ApiResult = Result<Resp, ApiError>;

pub fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()).boxed_unsync());
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Resp {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            full(status, JSON, body)
        }
        Err(e) => full(StatusCode::INTERNAL_SERVER_ERROR, JSON, format!("{{\"message\":\"encoding response: {e}\"}}\n")),
    }
}

pub fn empty(status: StatusCode) -> Resp {
    let mut resp = Response::new(Empty::new().boxed_unsync());
    *resp.status_mut() = status;
    resp
}

/// A streaming response fed by a channel; the stream ends when the sender is dropped.
pub fn streaming(status: StatusCode, content_type: &str, rx: mpsc::Receiver<Bytes>) -> Resp {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx)) });
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Parsed query string (last value wins, like Go's `r.Form.Get`).
pub struct Query(pub HashMap<String, String>);

impl Query {
    pub fn parse(req: &Request<Incoming>) -> Query {
        let mut map = HashMap::new();
        if let Some(q) = req.uri().query() {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let dec = |s: &str| urlencoding::decode(&s.replace('+', " ")).map(|c| c.into_owned()).unwrap_or_else(|_| s.to_string());
                map.insert(dec(k), dec(v));
            }
        }
        Query(map)
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    pub fn str(&self, key: &str) -> String {
        self.get(key).unwrap_or_default().to_string()
    }
    /// moby's BoolValue: anything but "", "0", "no", "false", "none" is true.
    pub fn bool(&self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "no" | "false" | "none"),
        }
    }
    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        if self.0.contains_key(key) { self.bool(key) } else { default }
    }
    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ApiError::bad_request(format!("invalid value for {key}: {v}"))),
        }
    }
}

/// Reads a whole request body (bounded).
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let collected = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
    Ok(collected.to_bytes())
}

/// Decodes a JSON request body; an empty body decodes as the type's default.
pub async fn read_json<T: serde::de::DeserializeOwned + Default>(body: Incoming) -> Result<T, ApiError> {
    let bytes = read_body(body, 16 * 1024 * 1024).await?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// Turns a request body into an `AsyncRead`.
pub fn body_reader(body: Incoming) -> impl tokio::io::AsyncRead + Unpin + Send + 'static {
    let stream = http_body_util::BodyStream::new(body).filter_map(|frame| async move {
        match frame {
            Ok(f) => f.into_data().ok().map(Ok),
            Err(e) => Some(Err(std::io::Error::other(e))),
        }
    });
    tokio_util::io::StreamReader::new(Box::pin(stream))
}

/// A stdcopy frame header + payload (stream 1 stdout, 2 stderr, 3 system error).
pub fn frame(stream: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.push(stream);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Whether the client asked to hijack the connection (`Upgrade: tcp`).
pub fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().get(hyper::header::UPGRADE).is_some()
}

/// The 101 response that hands the connection over to a raw stream.
pub fn upgrade_response(content_type: &str) -> Resp {
    let mut resp = empty(StatusCode::SWITCHING_PROTOCOLS);
    let h = resp.headers_mut();
    h.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("Upgrade"));
    h.insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static("tcp"));
    if let Ok(v) = content_type.parse() {
        h.insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

pub const MULTIPLEXED: &str = "application/vnd.docker.multiplexed-stream";
pub const RAW_STREAM: &str = "application/vnd.docker.raw-stream";

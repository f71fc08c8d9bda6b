//! Errors: [`RpcError`] for PKI, TLS and client calls; [`Status`] for a route's refusal on the
//! server side (turned into a JSON `{"message"}` response).

use hyper::StatusCode;

pub type Result<T, E = RpcError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// A certificate, key or CSR could not be made, parsed or used.
    #[error("pki: {0}")]
    Pki(String),
    /// A TLS configuration could not be built.
    #[error("tls config: {0}")]
    TlsConfig(String),
    /// The CA fetched during the join bootstrap is not the one named by the join token.
    #[error("remote CA does not match fingerprint. Expected: {expected}")]
    CaMismatch { expected: String },
    /// TCP connect or TLS handshake to `addr` failed.
    #[error("connecting to {addr}: {message}")]
    Connect { addr: String, message: String },
    /// A deadline passed.
    #[error("{0} timed out")]
    Timeout(String),
    /// The server answered with a non-success status.
    #[error("{message} (status {status})")]
    Status { status: u16, message: String },
    /// The peer sent something that is not what the protocol expects.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The connection went away (for a stream: before the server ended it cleanly).
    #[error("connection to {addr} lost: {message}")]
    Disconnected { addr: String, message: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl RpcError {
    /// The HTTP status for [`RpcError::Status`], else `None`.
    pub fn status(&self) -> Option<u16> {
        match self {
            RpcError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A route's answer when it refuses a request: HTTP status plus a message, sent as
/// `{"message": …}` with `Content-Type: application/json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (status {status})")]
pub struct Status {
    pub status: StatusCode,
    pub message: String,
}

impl Status {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Status {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn unauthenticated(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
}

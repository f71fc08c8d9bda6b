//! The single error type of shoal-net.

use std::net::Ipv4Addr;

/// Coarse classification of a [`NetError`], mapped by the engine onto HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller passed something malformed or out of range (HTTP 400).
    InvalidInput,
    /// The request collides with existing state, e.g. a port already allocated (HTTP 409).
    Conflict,
    /// The kernel or a helper tool failed (HTTP 500).
    Internal,
}

/// Everything that can go wrong in shoal-net.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid subnet {subnet:?}: {reason}")]
    InvalidSubnet { subnet: String, reason: String },
    #[error("invalid bridge config field {field} = {value:?}: {reason}")]
    InvalidConfig { field: &'static str, value: String, reason: String },
    #[error("invalid container id {0:?}: must be 1-128 chars of [A-Za-z0-9_.-]")]
    InvalidContainerId(String),
    #[error("ip address {ip} is not in subnet {subnet}")]
    IpOutOfSubnet { ip: Ipv4Addr, subnet: String },
    #[error("ip address {ip} is reserved in subnet {subnet} (network, gateway or broadcast)")]
    IpReserved { ip: Ipv4Addr, subnet: String },
    #[error("ip address {0} is already in use")]
    IpInUse(Ipv4Addr),
    #[error("no available ipv4 addresses in subnet {0}")]
    PoolExhausted(String),
    #[error("invalid port mapping {spec}: {reason}")]
    InvalidPort { spec: String, reason: String },
    /// Docker's exact text (the one message that is not lower-case).
    #[error("Bind for {host_ip}:{port} failed: port is already allocated")]
    PortAllocated { host_ip: String, port: u16 },
    #[error("no free ephemeral {proto} host port in 32768-60999")]
    NoEphemeralPort { proto: String },
    #[error("endpoint for container {0} already exists")]
    EndpointExists(String),
    #[error("interface {name} exists but is not a bridge (kind {kind:?})")]
    NotABridge { name: String, kind: String },
    #[error("command `{cmd}` failed ({status}): {stderr}")]
    Command { cmd: String, status: String, stderr: String },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, #[source] source: std::io::Error },
    #[error("{op} {target}: {source}")]
    Sys { op: &'static str, target: String, #[source] source: nix::errno::Errno },
    #[error("invalid mesh state {what}: {reason}")]
    InvalidMesh { what: String, reason: String },
    /// `attach` for an overlay that no `apply` has declared. Classified as
    /// [`ErrorKind::InvalidInput`] (there is no not-found kind yet); see [`NetError::is_not_found`].
    #[error("overlay vni {0} is not known to this node's mesh (apply a state that contains it first)")]
    UnknownOverlay(u32),
    /// A DNS message that cannot be parsed (`offset` = where parsing stopped).
    #[error("malformed dns message at byte {offset}: {reason}")]
    DnsMessage { offset: usize, reason: &'static str },
    #[error("invalid dns name {name:?}: {reason}")]
    InvalidDnsName { name: String, reason: &'static str },
    #[error("internal error: {0}")]
    Internal(String),
}

impl NetError {
    /// The coarse class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NetError::InvalidSubnet { .. }
            | NetError::InvalidConfig { .. }
            | NetError::InvalidContainerId(_)
            | NetError::IpOutOfSubnet { .. }
            | NetError::IpReserved { .. }
            | NetError::InvalidPort { .. }
            | NetError::InvalidMesh { .. }
            | NetError::UnknownOverlay(_)
            | NetError::DnsMessage { .. }
            | NetError::InvalidDnsName { .. } => ErrorKind::InvalidInput,
            NetError::IpInUse(_)
            | NetError::PoolExhausted(_)
            | NetError::PortAllocated { .. }
            | NetError::NoEphemeralPort { .. }
            | NetError::EndpointExists(_)
            | NetError::NotABridge { .. } => ErrorKind::Conflict,
            NetError::Command { .. } | NetError::Io { .. } | NetError::Sys { .. } | NetError::Internal(_) => {
                ErrorKind::Internal
            }
        }
    }

    /// Whether this error means "the named thing does not exist" (today only
    /// [`NetError::UnknownOverlay`]). Callers that want a 404 can test this until [`ErrorKind`]
    /// grows a `NotFound` kind.
    pub fn is_not_found(&self) -> bool {
        matches!(self, NetError::UnknownOverlay(_))
    }

    pub(crate) fn io(op: &'static str, path: impl std::fmt::Display, source: std::io::Error) -> Self {
        NetError::Io { op, path: path.to_string(), source }
    }

    pub(crate) fn sys(op: &'static str, target: impl std::fmt::Display, source: nix::errno::Errno) -> Self {
        NetError::Sys { op, target: target.to_string(), source }
    }
}

//! The swarm layer's errors and how each is classed for the API edge.

use thiserror::Error;

/// The HTTP-independent class of a failure; the API maps it to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    Conflict,
    /// Docker answers 403 (e.g. gRPC `PermissionDenied`).
    Forbidden,
    /// Not a manager / not in a swarm / not ready (Docker answers 503).
    Unavailable,
    Unimplemented,
    Internal,
}

#[derive(Debug, Error)]
pub enum SwarmError {
    #[error("This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.")]
    NotInSwarm,
    #[error("This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.")]
    NotManager,
    #[error("This node is not part of a swarm")]
    NotPartOfSwarm,
    #[error("This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.")]
    AlreadyInSwarm,
    #[error("You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. ")]
    LeaveLastManager,
    #[error("{kind} {reference} not found")]
    NotFound { kind: &'static str, reference: String },
    #[error("{kind} {reference} is ambiguous ({count} matches found)")]
    Ambiguous { kind: &'static str, reference: String, count: usize },
    #[error("rpc error: code = InvalidArgument desc = {0}")]
    Invalid(String),
    /// A plain 400 whose text dockerd prints without the rpc prefix.
    #[error("{0}")]
    BadRequest(String),
    #[error("rpc error: code = AlreadyExists desc = {0}")]
    AlreadyExists(String),
    /// A plain 409 whose text dockerd prints without the rpc prefix.
    #[error("{0}")]
    Conflict(String),
    #[error("rpc error: code = PermissionDenied desc = {0}")]
    PermissionDenied(String),
    #[error("rpc error: code = Unknown desc = update out of sequence")]
    OutOfSequence,
    #[error("rpc error: code = Unimplemented desc = {0}")]
    Unimplemented(String),
    #[error("rpc error: code = FailedPrecondition desc = {0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// An error the leader returned for a write this manager forwarded: the leader's text and
    /// class, unchanged.
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },
}

impl SwarmError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SwarmError::NotInSwarm
            | SwarmError::NotManager
            | SwarmError::NotPartOfSwarm
            | SwarmError::AlreadyInSwarm
            | SwarmError::LeaveLastManager
            | SwarmError::Unavailable(_) => ErrorKind::Unavailable,
            SwarmError::NotFound { .. } => ErrorKind::NotFound,
            SwarmError::Ambiguous { .. }
            | SwarmError::Invalid(_)
            | SwarmError::BadRequest(_)
            | SwarmError::FailedPrecondition(_) => ErrorKind::InvalidArgument,
            SwarmError::AlreadyExists(_) | SwarmError::Conflict(_) => ErrorKind::Conflict,
            SwarmError::PermissionDenied(_) => ErrorKind::Forbidden,
            SwarmError::Unimplemented(_) => ErrorKind::Unimplemented,
            SwarmError::OutOfSequence | SwarmError::Internal(_) => ErrorKind::Internal,
            SwarmError::Remote { kind, .. } => *kind,
        }
    }
}

impl ErrorKind {
    /// The name used when an error crosses the cluster port.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Unimplemented => "unimplemented",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind named `s` ([`ErrorKind::as_str`]); unknown names are `Internal`.
    pub fn parse(s: &str) -> ErrorKind {
        [
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Forbidden,
            ErrorKind::Unavailable,
            ErrorKind::Unimplemented,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .unwrap_or(ErrorKind::Internal)
    }
}

impl From<shoal_store::StoreError> for SwarmError {
    fn from(e: shoal_store::StoreError) -> Self {
        use shoal_store::StoreError as S;
        match e {
            S::SequenceConflict => SwarmError::OutOfSequence,
            S::NotLeader => SwarmError::Unavailable(
                "This node is not a swarm manager. Manager is being prepared or has trouble connecting to the cluster.".into(),
            ),
            other => SwarmError::Internal(other.to_string()),
        }
    }
}

pub type Result<T, E = SwarmError> = std::result::Result<T, E>;

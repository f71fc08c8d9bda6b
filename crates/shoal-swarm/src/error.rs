//! The swarm layer's errors and how each is classed for the API edge.

use thiserror::Error;

/// The HTTP-independent class of a failure; the API maps it to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    Conflict,
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
            SwarmError::AlreadyExists(_) => ErrorKind::Conflict,
            SwarmError::Unimplemented(_) => ErrorKind::Unimplemented,
            SwarmError::OutOfSequence | SwarmError::Internal(_) => ErrorKind::Internal,
        }
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

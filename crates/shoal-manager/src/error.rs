//! The manager's error type.

use shoal_store::StoreError;

/// Errors of the control loops and of the validation helpers the API uses.
/// Messages are lower-case, except where they copy Docker/swarmkit texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerError {
    /// A placement constraint could not be parsed (swarmkit's texts).
    #[error("{0}")]
    InvalidConstraint(String),
    /// A published port is already taken (Docker's text).
    #[error("{0}")]
    PortConflict(String),
    /// No free port is left in the dynamic range.
    #[error("no available ports in the dynamic range 30000-32767 for service {0}")]
    PortsExhausted(String),
    /// The service has no previous spec to roll back to.
    #[error("service {0} does not have a previous spec")]
    NoPreviousSpec(String),
    /// A store transaction failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl ManagerError {
    /// A coarse kind the API can map to a status code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ManagerError::InvalidConstraint(_) | ManagerError::PortConflict(_) => ErrorKind::InvalidArgument,
            ManagerError::PortsExhausted(_) => ErrorKind::Unavailable,
            ManagerError::NoPreviousSpec(_) => ErrorKind::FailedPrecondition,
            ManagerError::Store(StoreError::NotLeader) => ErrorKind::Unavailable,
            ManagerError::Store(StoreError::NotFound { .. }) => ErrorKind::NotFound,
            ManagerError::Store(_) => ErrorKind::Internal,
        }
    }
}

/// See [`ManagerError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    FailedPrecondition,
    Unavailable,
    Internal,
}

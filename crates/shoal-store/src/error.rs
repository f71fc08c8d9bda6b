//! The store's error type.

/// Errors returned by the store. Messages are lower-case and name the failing input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{kind} {id} not found")]
    NotFound { kind: String, id: String },
    /// An object with this ID already exists.
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: String, id: String },
    /// The object's `Version.Index` is not the stored one (optimistic concurrency).
    #[error("update out of sequence")]
    SequenceConflict,
    /// This node is not the Raft leader, so it cannot commit writes.
    #[error("this node is not the raft leader")]
    NotLeader,
    /// The request is malformed (e.g. an object that cannot be encoded).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Storage, consensus or encoding failure inside the store.
    #[error("internal store error: {0}")]
    Internal(String),
}

impl StoreError {
    pub(crate) fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        StoreError::Internal(format!("{context}: {e}"))
    }
}

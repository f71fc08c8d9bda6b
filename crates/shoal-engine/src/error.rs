//! The engine's error type and how each failure is classed for the API edge.

use thiserror::Error;

/// How a failure should be reported to a client (the API maps these to HTTP statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidInput,
    NotFound,
    Conflict,
    NotModified,
    Forbidden,
    Internal,
}

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    #[error("No such exec instance: {0}")]
    NoSuchExec(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("container already {0}")]
    NotModified(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Image(#[from] shoal_image::ImageError),
    #[error(transparent)]
    Runtime(#[from] shoal_runtime::RuntimeError),
    #[error(transparent)]
    Net(#[from] shoal_net::NetError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::NoSuchContainer(_) | EngineError::NoSuchExec(_) | EngineError::NotFound(_) => {
                ErrorKind::NotFound
            }
            EngineError::Invalid(_) => ErrorKind::InvalidInput,
            EngineError::Conflict(_) => ErrorKind::Conflict,
            EngineError::NotModified(_) => ErrorKind::NotModified,
            EngineError::Forbidden(_) => ErrorKind::Forbidden,
            EngineError::Image(e) => match e.kind() {
                shoal_image::ErrorKind::NotFound => ErrorKind::NotFound,
                shoal_image::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
                shoal_image::ErrorKind::Conflict => ErrorKind::Conflict,
                shoal_image::ErrorKind::Internal => ErrorKind::Internal,
            },
            EngineError::Runtime(e) => match e {
                shoal_runtime::RuntimeError::InvalidInput(_)
                | shoal_runtime::RuntimeError::UserNotFound(_)
                | shoal_runtime::RuntimeError::Exec { .. } => ErrorKind::InvalidInput,
                _ => ErrorKind::Internal,
            },
            EngineError::Net(e) => match e.kind() {
                shoal_net::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
                shoal_net::ErrorKind::Conflict => ErrorKind::Conflict,
                shoal_net::ErrorKind::Internal => ErrorKind::Internal,
            },
            EngineError::Io { .. } | EngineError::Internal(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        EngineError::Io { context: context.into(), source }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

//! The crate's single error type.

use std::io;

/// How the API layer should report an [`ImageError`] (404 / 400 / 409 / 500).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    InvalidInput,
    Conflict,
    Internal,
}

/// Every failure of the image store. Messages are lower-case and name the input that failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("invalid reference format: {0}")]
    InvalidReference(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("invalid archive: {0}")]
    InvalidArchive(String),
    #[error("unsafe path in layer {layer}: {path}")]
    UnsafePath { layer: String, path: String },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("{0}")]
    Conflict(String),
    #[error("registry error for {reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("registry returned {status} for {url}: {message}")]
    RegistryStatus { url: String, status: u16, message: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("corrupt image store metadata {path}: {message}")]
    Corrupt { path: String, message: String },
}

impl ImageError {
    /// The HTTP-ish class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::NotFound(_) => ErrorKind::NotFound,
            ImageError::InvalidReference(_)
            | ImageError::InvalidInput(_)
            | ImageError::InvalidArchive(_)
            | ImageError::UnsafePath { .. }
            | ImageError::DigestMismatch { .. } => ErrorKind::InvalidInput,
            ImageError::Conflict(_) => ErrorKind::Conflict,
            ImageError::RegistryStatus { status: 404, .. } => ErrorKind::NotFound,
            ImageError::Registry { .. }
            | ImageError::RegistryStatus { .. }
            | ImageError::Io { .. }
            | ImageError::Corrupt { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: io::Error) -> Self {
        // A truncated or malformed stream surfaces as an io error from the decoder/tar reader:
        // that is the input's fault, not ours.
        ImageError::Io { path: path.as_ref().display().to_string(), source }
    }

    pub(crate) fn archive(msg: impl Into<String>) -> Self {
        ImageError::InvalidArchive(msg.into())
    }
}

/// Extension to attach a path to io errors.
pub(crate) trait IoCtx<T> {
    fn ctx(self, path: impl AsRef<std::path::Path>) -> Result<T, ImageError>;
}

impl<T> IoCtx<T> for Result<T, io::Error> {
    fn ctx(self, path: impl AsRef<std::path::Path>) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(path, e))
    }
}

impl<T> IoCtx<T> for Result<T, nix::errno::Errno> {
    fn ctx(self, path: impl AsRef<std::path::Path>) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(path, io::Error::from(e)))
    }
}

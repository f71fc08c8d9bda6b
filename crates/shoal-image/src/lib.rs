//! shoal-image owns the node-local image store under `<data-root>/image`: content-addressed
//! image configs, layers unpacked once per chain id (shared between images) as overlayfs lower
//! directories, the tag/digest reference table, and the three ways images arrive — `docker load`
//! (docker-archive and OCI image layout tarballs), `docker import` (rootfs tarballs) and registry
//! pulls over the OCI distribution protocol. Layer unpacking is a security boundary (no path
//! escapes, no writes through symlinks, OCI whiteouts turned into overlayfs whiteouts), and every
//! write is atomic (temp + fsync + rename) so a crash never leaves a half image, layer or tag.
//! It must not know about containers, HTTP routes or swarm: callers pass an `in_use` predicate to
//! [`ImageStore::remove`], and map [`ErrorKind`] to status codes themselves.
//!
//! Registry client: a small hand-written OCI distribution client on `hyper` 1.x
//! (`hyper::client::conn::http1`, one connection per request) with `tokio-rustls` (ring provider,
//! webpki roots plus the system CA bundle) for HTTPS. Chosen over `oci-client` because 0.18 pulls in
//! reqwest 0.13 whose rustls feature means aws-lc, and because owning the client keeps plain-HTTP
//! loopback registries, anonymous bearer-token auth, redirects, digest verification and streaming
//! progress simple and explicit.
//!
//! On-disk layout (all below `root` = `<data-root>/image`):
//! ```text
//! repositories.json          {"refs": {"docker.io/library/busybox:latest": "sha256:<id>", "<name>@sha256:..": ..}}
//! images/<id hex>.json       per-image metadata (layer chain ids, size); its presence = the image exists
//! blobs/sha256/<id hex>      the raw image config JSON (the image id is its sha256)
//! layers/<chain hex>.json    per-layer metadata (diff id, parent, size, dir)
//! l/<12 hex of chain id>/    unpacked layer = overlayfs lowerdir (short to fit mount data)
//! tmp/                       in-flight loads/pulls; wiped by `open`
//! ```

mod archive;
mod error;
mod fsutil;
mod import;
mod reference;
mod registry;
mod store;
mod unpack;

#[cfg(test)]
mod testutil;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use error::{ErrorKind, ImageError};
pub use store::ImageStore;

/// One image as the engine and the API see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<64 hex>`, the digest of the config JSON.
    pub id: String,
    /// Familiar form: `busybox:latest`, `127.0.0.1:5000/busybox:latest`.
    pub repo_tags: Vec<String>,
    /// Familiar form: `busybox@sha256:...`.
    pub repo_digests: Vec<String>,
    pub parent: String,
    pub created: Option<chrono::DateTime<chrono::Utc>>,
    /// Sum of unpacked layer sizes.
    pub size: u64,
    pub config: ImageConfig,
    pub architecture: String,
    pub os: String,
    pub author: String,
    pub comment: String,
    pub docker_version: String,
    /// Diff ids, bottom-most first.
    pub layers: Vec<String>,
    pub raw_config: serde_json::Value,
}

/// The runtime defaults of an image (the config's `config` object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: String,
    pub user: String,
    /// `"80/tcp"`.
    pub exposed_ports: BTreeMap<String, ()>,
    pub labels: BTreeMap<String, String>,
    pub volumes: BTreeMap<String, ()>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<serde_json::Value>,
}

/// One image brought in by [`ImageStore::load`]: print `Loaded image: <tag>` per tag, or
/// `Loaded image ID: <id>` when there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedImage {
    pub id: String,
    /// Familiar form.
    pub tags: Vec<String>,
}

/// Options of `docker import`.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// `repo[:tag]` to tag the new image with.
    pub reference: Option<String>,
    /// Commit message (config `comment` and the history entry).
    pub message: Option<String>,
    /// Dockerfile-like changes: CMD, ENTRYPOINT, ENV, WORKDIR, EXPOSE, LABEL, USER, VOLUME, STOPSIGNAL.
    pub changes: Vec<String>,
    /// Defaults to `amd64`.
    pub architecture: Option<String>,
    /// Defaults to `linux`.
    pub os: Option<String>,
}

/// Progress of [`ImageStore::pull`]; layer ids are the first 12 hex of the blob digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    Resolving,
    LayerStart { id: String, size: u64 },
    LayerProgress { id: String, current: u64, total: u64 },
    LayerDone { id: String },
    LayerExists { id: String },
    /// `sha256:...` of the manifest (or index) the reference resolved to.
    Digest(String),
    Done,
}

/// One line of `docker rmi` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteItem {
    pub untagged: Option<String>,
    pub deleted: Option<String>,
}

/// One line of `docker history`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryItem {
    /// The image id for the top entry, `<missing>` below it.
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    pub created_by: String,
    pub tags: Vec<String>,
    pub size: u64,
    pub comment: String,
}

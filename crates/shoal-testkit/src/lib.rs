//! shoal-testkit: the support code shoal's integration tests run on (a dev-dependency only).
//!
//! It owns everything a test needs around the daemon and nothing of the daemon itself:
//! small test images assembled from Debian packages (busybox, nginx, whoami) and cached under
//! `<workspace>/target/test-images/`; writers for `docker save`-style archives and OCI image
//! layout tarballs (none/gzip/zstd layers); guards for network namespaces and multi-node labs;
//! a guard that runs a `shoal daemon` inside a namespace and drives it with the stock `docker`
//! CLI; a guard for a local `docker-registry`; and small HTTP/wait helpers. Every guard removes
//! what it created (namespaces, links, mounts, cgroups, processes, temp dirs) when dropped, also
//! when the test panics.

mod archive;
mod daemon;
mod http;
mod image;
mod netns;
mod registry;
mod util;

pub use archive::{
    normalize_ref, write_docker_archive, write_layer_tar, write_oci_layout, Compression,
};
pub use daemon::{Daemon, DaemonOpts};
pub use http::{http_get, http_request, HttpResponse};
pub use image::{ImageConfig, Layer, TestImage};
pub use netns::{Lab, Netns};
pub use registry::Registry;
pub use util::{ensure_packages, random_hex, running_as_root, sha256_file, sha256_hex, test_images_dir, wait_until, workspace_root};

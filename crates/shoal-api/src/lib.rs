#![recursion_limit = "256"]
//! shoal-api: the Docker Engine HTTP API (v1.24–1.50) on unix sockets and TCP.
//!
//! It owns the wire format: routing (with and without the `/v1.xx` prefix), Docker's JSON shapes,
//! error bodies (`{"message": …}` with `Content-Type: application/json`), filters in both
//! encodings, streaming responses and the HTTP hijack used by attach and exec. It holds no state
//! of its own: every request becomes a call on the engine, and engine types are converted to
//! Docker JSON here and nowhere else.

mod containers;
mod dashboard;
mod exec;
mod filters;
mod http;
mod images;
mod networks;
mod server;
mod swarm;
mod system;
mod wire;

pub use server::{serve, Listener, ListenerSpec};

/// The API version we advertise, and the oldest we accept.
pub const API_VERSION: &str = "1.50";
pub const MIN_API_VERSION: &str = "1.24";

/// What the daemon tells clients about itself.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub version: String,
    pub hostname: String,
    pub data_root: String,
    pub id: String,
}

/// Shared state handed to every request handler.
#[derive(Clone)]
pub struct ApiState {
    pub engine: shoal_engine::Engine,
    pub swarm: shoal_swarm::Swarm,
    pub daemon: DaemonInfo,
}

//! shoal-dashboard: the web dashboard every manager serves (the role Portainer plays in the
//! tutorial, without an extra container).
//!
//! It owns the dashboard's HTTP listener (`--dashboard-addr`, default `0.0.0.0:9000`), started
//! while this node is a manager and stopped when it leaves the swarm or is demoted; login
//! against the cluster's dashboard credential, sessions and CSRF checks (`auth.rs`); the pages,
//! server-rendered HTML with every outside string escaped (`html.rs`, `pages.rs`), a small
//! stylesheet and script embedded in the binary (`assets/`); form handling (`forms.rs`); and the
//! live side (`feed.rs`): a server-sent-event stream that tells open pages to re-fetch their
//! live region whenever the store commits a change, plus the recent-events feed.
//!
//! It must not know the store's internals or Docker's wire format: cluster reads and every
//! action go through shoal-swarm's public control API (the same calls, validation and error
//! texts as `docker service …` / `docker node …`), containers and images through the engine of
//! this node. It keeps no state that matters beyond the process: sessions live in memory.

mod auth;
mod feed;
mod forms;
mod html;
mod pages;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use html::esc;

/// The dashboard's own errors (the swarm's are shown as they come).
#[derive(Debug, Error)]
pub enum DashboardError {
    /// A form field the dashboard could not read.
    #[error("{0}")]
    Form(String),
    #[error("invalid dashboard address {0:?}: use IP:PORT (e.g. 0.0.0.0:9000), :PORT, or \"off\"")]
    Address(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The default `--dashboard-addr` (the tutorial's Portainer port).
pub const DEFAULT_ADDR: &str = "0.0.0.0:9000";

/// Parses `--dashboard-addr`: `IP:PORT`, `:PORT`, or `off`/empty (no dashboard).
pub fn parse_addr(text: &str) -> Result<Option<SocketAddr>, DashboardError> {
    let t = text.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if let Some(port) = t.strip_prefix(':') {
        return port
            .parse::<u16>()
            .map(|p| Some(SocketAddr::from(([0, 0, 0, 0], p))))
            .map_err(|_| DashboardError::Address(text.to_string()));
    }
    t.parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| DashboardError::Address(text.to_string()))
}

/// Serves the dashboard on `addr` whenever this node is a manager: binds when it becomes one
/// (swarm init, join as manager, promotion, daemon start) and closes the listener and every
/// connection when it stops being one (leave, demotion). Runs until the daemon ends.
pub fn spawn(swarm: shoal_swarm::Swarm, addr: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut manager = swarm.manager_watch();
        loop {
            let is_manager = *manager.borrow_and_update();
            if is_manager {
                match bind(addr).await {
                    Ok(listener) => {
                        info!(addr = %addr, "dashboard listening");
                        let (stop_tx, stop_rx) = watch::channel(false);
                        let app = Arc::new(server::App::new(swarm.clone(), stop_rx.clone()));
                        let hub = app.hub.clone();
                        let feed = tokio::spawn({
                            let swarm = swarm.clone();
                            let stop = stop_rx.clone();
                            async move { hub.run(swarm, stop).await }
                        });
                        let serving = tokio::spawn(server::serve(app, listener, stop_rx));
                        // Until this node stops being a manager.
                        loop {
                            if manager.changed().await.is_err() {
                                break;
                            }
                            if !*manager.borrow_and_update() {
                                break;
                            }
                        }
                        let _ = stop_tx.send(true);
                        let _ = serving.await;
                        let _ = feed.await;
                        info!(addr = %addr, "dashboard stopped: this node is no longer a manager");
                        continue;
                    }
                    Err(e) => warn!(error = %e, "the dashboard is not available"),
                }
            }
            if manager.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Binds, retrying a moment while a just-closed listener still holds the port.
async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, DashboardError> {
    let mut attempts = 0;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(source) => return Err(DashboardError::Listen { addr, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_addr("0.0.0.0:9000").unwrap(),
            Some("0.0.0.0:9000".parse().unwrap())
        );
        assert_eq!(
            parse_addr(":9443").unwrap(),
            Some("0.0.0.0:9443".parse().unwrap())
        );
        assert_eq!(parse_addr("off").unwrap(), None);
        assert_eq!(parse_addr("").unwrap(), None);
        let e = parse_addr("nine").unwrap_err().to_string();
        assert!(e.contains("\"nine\""), "{e}");
    }
}

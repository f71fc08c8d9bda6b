//! Clients from this manager to the other managers, over their cluster ports with this
//! manager's certificate: the Raft transport (`POST /v1/raft/{rpc}`, [`RaftOverRpc`]) and the
//! forwarding of writes to the leader (`POST /v1/control`, `managers.rs`).
//!
//! One client per (peer address, purpose), kept for as long as this manager runs, so calls reuse
//! their connections. Raft calls use short timeouts (connect 1 s, call 2 s: well inside an
//! election timeout, so a dead peer never holds up a heartbeat round) except whole snapshots
//! (2 min); forwarded writes may wait for a new manager to catch up (90 s). A renewed
//! certificate replaces the TLS config of every client ([`Peers::set_config`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use shoal_rpc::tls::ClientConfig;
use shoal_rpc::{RpcClient, RpcError};
use shoal_store::{RaftRpc, RaftTransport, TransportError, TransportFuture};
use tracing::debug;

/// The route prefix of Raft messages.
pub(crate) const RAFT_PATH_PREFIX: &str = "/v1/raft/";
/// Largest Raft message a manager accepts (a whole snapshot is one message).
pub(crate) const MAX_RAFT_MESSAGE: usize = 512 << 20;

/// What a client is for; each purpose has its own timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Purpose {
    Raft,
    Snapshot,
    Control,
}

impl Purpose {
    fn timeouts(self) -> (Duration, Duration) {
        match self {
            Purpose::Raft => (Duration::from_secs(1), Duration::from_secs(2)),
            Purpose::Snapshot => (Duration::from_secs(2), Duration::from_secs(120)),
            Purpose::Control => (Duration::from_secs(2), Duration::from_secs(90)),
        }
    }
}

/// Why no client could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("invalid manager address {0:?}")]
    BadAddr(String),
    #[error("this manager has no certificate yet")]
    NoIdentity,
}

/// This manager's clients to its peers.
#[derive(Default)]
pub(crate) struct Peers {
    config: RwLock<Option<Arc<ClientConfig>>>,
    clients: Mutex<HashMap<(SocketAddr, Purpose), RpcClient>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.clients.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("Peers").field("clients", &n).finish_non_exhaustive()
    }
}

impl Peers {
    pub(crate) fn new() -> Arc<Peers> {
        Arc::new(Peers::default())
    }

    /// Use this TLS client config (this manager's identity) for every call from now on.
    pub(crate) fn set_config(&self, config: Arc<ClientConfig>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Some(config.clone());
        for c in self.clients.lock().unwrap_or_else(|e| e.into_inner()).values() {
            c.set_config(config.clone());
        }
    }

    /// The client for the manager at `addr` (`ip:port`) for `purpose`.
    pub(crate) fn client(&self, addr: &str, purpose: Purpose) -> Result<RpcClient, PeerError> {
        let sock: SocketAddr = addr.parse().map_err(|_| PeerError::BadAddr(addr.to_string()))?;
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&(sock, purpose)) {
            return Ok(c.clone());
        }
        let config = self.config.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or(PeerError::NoIdentity)?;
        let (connect, call) = purpose.timeouts();
        let client = RpcClient::new(sock, config).with_timeouts(connect, call);
        clients.insert((sock, purpose), client.clone());
        Ok(client)
    }
}

/// [`RaftTransport`] over the managers' cluster ports.
pub(crate) struct RaftOverRpc(pub(crate) Arc<Peers>);

/// How a failed call looks to Raft: a peer that cannot be reached (Raft backs off) or a
/// message that may or may not have arrived (Raft retries).
pub(crate) fn transport_error(e: RpcError) -> TransportError {
    match e {
        RpcError::Connect { .. } | RpcError::Timeout(_) => TransportError::Unreachable(e.to_string()),
        e => TransportError::Network(e.to_string()),
    }
}

impl RaftTransport for RaftOverRpc {
    fn call(&self, target: u64, addr: &str, rpc: RaftRpc, body: Vec<u8>) -> TransportFuture {
        let purpose = if rpc == RaftRpc::Snapshot { Purpose::Snapshot } else { Purpose::Raft };
        let client = self.0.client(addr, purpose);
        let addr = addr.to_string();
        Box::pin(async move {
            let client = client.map_err(|e| TransportError::Unreachable(format!("{target:x} at {addr}: {e}")))?;
            let path = format!("{RAFT_PATH_PREFIX}{}", rpc.as_str());
            match client.call_bytes(&path, body).await {
                Ok(reply) => Ok(reply.to_vec()),
                Err(e) => {
                    debug!(peer = %format!("{target:x}"), %addr, rpc = %rpc, error = %e, "raft message not delivered");
                    Err(transport_error(e))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_need_an_identity_and_a_socket_address() {
        let peers = Peers::new();
        assert_eq!(peers.client("10.0.0.1:2377", Purpose::Raft).unwrap_err(), PeerError::NoIdentity);
        assert!(matches!(peers.client("manager-1", Purpose::Raft), Err(PeerError::BadAddr(_))));
    }

    #[test]
    fn failures_map_to_raft_transport_errors() {
        let e = transport_error(RpcError::Connect { addr: "a".into(), message: "refused".into() });
        assert!(matches!(e, TransportError::Unreachable(_)));
        assert!(matches!(transport_error(RpcError::Timeout("x".into())), TransportError::Unreachable(_)));
        let e = transport_error(RpcError::Status { status: 500, message: "boom".into() });
        assert!(matches!(e, TransportError::Network(m) if m.contains("boom")));
    }
}

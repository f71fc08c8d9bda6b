//! Raft transport seam. Raft messages cross the crate boundary as opaque bytes: the sending side
//! hands `(target, addr, rpc, body)` to a [`RaftTransport`]; the receiving side passes the bytes
//! to [`crate::Store::handle_raft_rpc`] and returns its reply bytes. shoal-swarm implements
//! [`RaftTransport`] over the managers' mutual-TLS cluster port (`POST /v1/raft/{rpc}`, with
//! [`RaftRpc::as_str`] as `{rpc}`); [`UnreachableTransport`] refuses every call, which is all a
//! one-member group needs. Raft ids are random per store (persisted in it); the membership maps
//! each id to the manager's cluster address (`ip:port`), which is how callers find the node.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::raft::TypeConfig;
use crate::StoreError;

/// Which Raft RPC a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RaftRpc {
    AppendEntries,
    Vote,
    PreVote,
    /// A whole snapshot in one message.
    Snapshot,
    TransferLeader,
}

impl RaftRpc {
    /// Every message kind.
    pub const ALL: [RaftRpc; 5] =
        [RaftRpc::AppendEntries, RaftRpc::Vote, RaftRpc::PreVote, RaftRpc::Snapshot, RaftRpc::TransferLeader];

    /// The name used on the wire (the `{rpc}` of `POST /v1/raft/{rpc}`).
    pub fn as_str(self) -> &'static str {
        match self {
            RaftRpc::AppendEntries => "append-entries",
            RaftRpc::Vote => "vote",
            RaftRpc::PreVote => "pre-vote",
            RaftRpc::Snapshot => "snapshot",
            RaftRpc::TransferLeader => "transfer-leader",
        }
    }
}

impl std::fmt::Display for RaftRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RaftRpc {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        RaftRpc::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| StoreError::Invalid(format!("unknown raft message kind {s:?}")))
    }
}

/// A transport failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The peer cannot be reached now; Raft backs off before retrying.
    #[error("raft peer {0} unreachable")]
    Unreachable(String),
    /// The message may or may not have been delivered; Raft retries.
    #[error("raft transport: {0}")]
    Network(String),
}

/// Boxed future returned by [`RaftTransport::call`].
pub type TransportFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send + 'static>>;

/// Carries opaque Raft messages between managers.
pub trait RaftTransport: Send + Sync + 'static {
    /// Deliver `body` to raft node `target` at `addr` and return the reply bytes that the peer's
    /// [`crate::Store::handle_raft_rpc`] produced.
    fn call(&self, target: u64, addr: &str, rpc: RaftRpc, body: Vec<u8>) -> TransportFuture;
}

/// The single-manager transport: every peer is unreachable.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnreachableTransport;

impl RaftTransport for UnreachableTransport {
    fn call(&self, target: u64, addr: &str, _rpc: RaftRpc, _body: Vec<u8>) -> TransportFuture {
        let msg = format!("{target} at {addr} (no raft transport configured)");
        Box::pin(async move { Err(TransportError::Unreachable(msg)) })
    }
}

pub(crate) struct Network {
    pub(crate) transport: Arc<dyn RaftTransport>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &openraft::impls::BasicNode) -> Peer {
        Peer { target, addr: node.addr.clone(), transport: self.transport.clone() }
    }
}

pub(crate) struct Peer {
    target: u64,
    addr: String,
    transport: Arc<dyn RaftTransport>,
}

/// The reply envelope: the peer's Raft either answered or failed fatally (shutting down).
#[derive(Serialize, serde::Deserialize)]
pub(crate) enum Reply<T> {
    Ok(T),
    Err(String),
}

impl Peer {
    async fn request<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: RaftRpc,
        req: &Req,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = self.transport.call(self.target, &self.addr, rpc, body).await.map_err(|e| match e {
            TransportError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
            TransportError::Network(_) => RPCError::Network(NetworkError::new(&e)),
        })?;
        let reply: Reply<Resp> =
            serde_json::from_slice(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        match reply {
            Reply::Ok(r) => Ok(r),
            Reply::Err(msg) => Err(RPCError::Unreachable(Unreachable::from_string(msg))),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.request(RaftRpc::AppendEntries, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.request(RaftRpc::Vote, &rpc).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.request(RaftRpc::PreVote, &rpc).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = (vote, snapshot.meta, snapshot.snapshot);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = self.request::<_, SnapshotResponse<TypeConfig>>(RaftRpc::Snapshot, &req) => match res {
                Ok(r) => Ok(r),
                Err(RPCError::Unreachable(u)) => Err(StreamingError::Unreachable(u)),
                Err(e) => Err(StreamingError::Network(NetworkError::new(&e))),
            },
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.request(RaftRpc::TransferLeader, &req).await
    }
}

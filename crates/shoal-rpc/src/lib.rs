//! Cluster PKI and the mutually authenticated node-to-node transport.
//!
//! This crate owns the cluster PKI — the root CA, node certificates, certificate signing
//! requests, and the node identity (node ID, role, cluster ID) read back from a verified
//! certificate — and the mutual-TLS transport (server and client) that every node-to-node call
//! uses: JSON over HTTP/1.1 (hyper) inside TLS (rustls with the `ring` provider), with long-lived
//! streams as chunked bodies of newline-delimited JSON. It must not know swarm semantics: the
//! dispatcher, CA-server and Raft messages and routes are defined by the crates that use it.
//!
//! - [`pki`]: [`RootCa`], [`NodeKey`], [`NodeIdentity`], join-token digest and secret checks,
//!   renewal timing, cross-signing for root rotation, [`IssuerInfo`] (Docker's `TLSInfo`).
//! - [`tls`]: rustls configs for a manager's server, a node's client, and the join bootstrap
//!   (fetch the CA over an unverified connection, check it against the token digest, then trust
//!   only it).
//! - [`server`]: [`RpcServer`], [`Peer`], route guards ([`require`]) and response helpers.
//! - [`client`]: [`RpcClient`] with JSON calls, NDJSON streams, timeouts and connection reuse.

pub mod client;
pub mod error;
pub mod pki;
pub mod server;
pub mod tls;

pub use client::RpcClient;
pub use error::{Result, RpcError, Status};
pub use pki::{
    renew_at, tokens_match, verify_ca_digest, IssuerInfo, NodeIdentity, NodeKey, Role, RootCa,
};
pub use server::{require, Peer, RpcBody, RpcServer};

/// The default cluster (manager) port.
pub const DEFAULT_PORT: u16 = 2377;

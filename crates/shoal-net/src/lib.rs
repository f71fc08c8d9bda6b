//! shoal-net: node-local container networking.
//!
//! This crate owns the node-local bridge (Docker's default `bridge` network): the bridge
//! interface and its gateway address, container network namespaces (bind-mounted under
//! `<exec-root>/netns/<container id>`), veth pairs, IP address management for the bridge subnet,
//! outbound NAT (masquerade) and published ports via kernel DNAT in our own nftables table. It
//! must not know HTTP, images, or swarm. [`mesh`] is the node side of VXLAN overlay networks and
//! of the ingress routing mesh, reconciled from a complete desired [`MeshState`].
//! [`dns`] is the embedded DNS server containers query at 127.0.0.11 (Docker's service
//! discovery); unlike the rest of the crate it is async and serves on the caller's tokio runtime.
//!
//! All side effects go through [`NetOps`]; [`SystemOps`] implements them with `ip` (iproute2) and
//! `nft -f -`, each run from a dedicated short-lived thread that has `setns`ed into the right
//! network namespace (never a pooled thread). The API is blocking: call it from
//! `spawn_blocking`. The namespace of the thread calling [`BridgeNetwork::setup`] becomes the
//! "host" namespace for every later call, whichever thread makes it.
//!
//! The nft table (family `ip`, default name `shoal`) is rendered whole from in-memory state and
//! replaced atomically on every change; other tables are never flushed or parsed.

mod bridge;
pub mod dns;
mod error;
mod ipam;
mod netlink;
pub mod mesh;
mod ops;
mod ports;
mod rules;
mod vip;

pub use bridge::{BridgeConfig, BridgeNetwork, Endpoint};
pub use dns::{DnsServer, Resolver};
pub use error::{ErrorKind, NetError};
pub use ipam::{mac_for_ip, Ipam, Ipv4Net};
pub use mesh::{IngressPort, Mesh, MeshConfig, MeshOps, MeshPeer, MeshState, OverlayNet, SystemMeshOps};
pub use ops::{current_netns, in_netns, in_netns_path, BridgeSpec, EndpointSpec, NetOps, SystemOps};
pub use ports::{PortSpec, Proto, PublishedPort, EPHEMERAL_FIRST, EPHEMERAL_LAST};
pub use rules::{render_ruleset, RuleInput};
pub use vip::{apply_vips, render_vip_table, VipRule, VIP_TABLE};

#[cfg(test)]
mod tests;

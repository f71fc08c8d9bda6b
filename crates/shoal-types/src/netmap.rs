//! The network map: what every node needs to program the overlay data plane and the ingress
//! routing mesh, computed by the manager from cluster state and pushed to every node (no gossip).
//!
//! It is not a Docker API shape (nodes exchange it over the cluster port), so it uses snake_case
//! JSON. Addresses are plain IPv4 strings without a prefix length; a network's prefix is in its
//! `subnet`.

use serde::{Deserialize, Serialize};

use crate::taskspec::PortConfig;

/// Service label asking the mesh to keep clients' addresses (`preserve`): a node sends the
/// connections it receives to its own tasks of the service without source NAT, and only falls
/// back to the cluster-wide rotation (masqueraded, as Docker does) when it runs none.
pub const CLIENT_ADDRESS_LABEL: &str = "shoal.ingress.client-address";

/// A complete snapshot; nodes replace their previous one with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkMap {
    /// Overlay networks, sorted by ID.
    #[serde(default)]
    pub networks: Vec<MapNetwork>,
    /// Every node with its underlay address and its own overlay addresses, sorted by ID.
    #[serde(default)]
    pub nodes: Vec<MapNode>,
    /// Services with a VIP or published ingress ports, sorted by ID.
    #[serde(default)]
    pub services: Vec<MapService>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapNetwork {
    pub id: String,
    pub name: String,
    pub vni: u32,
    /// CIDR, e.g. `10.0.0.0/24`.
    pub subnet: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(default)]
    pub ingress: bool,
}

impl MapNetwork {
    /// The network as a node without the store sees it (a worker's `docker network ls` and
    /// `inspect`): name, overlay driver with its VXLAN ID, subnet and gateway; no labels or
    /// creation time, which the map does not carry.
    pub fn to_network(&self) -> crate::Network {
        use crate::{Driver, IpamConfig, IpamOptions, OVERLAY_DRIVER, VXLAN_ID_OPTION};
        crate::Network {
            id: self.id.clone(),
            spec: crate::NetworkSpec {
                name: self.name.clone(),
                ingress: self.ingress,
                scope: "swarm".into(),
                ..Default::default()
            },
            driver_state: Driver {
                name: OVERLAY_DRIVER.into(),
                options: [(VXLAN_ID_OPTION.to_string(), self.vni.to_string())].into_iter().collect(),
            },
            ipam_options: Some(IpamOptions {
                driver: Driver { name: "default".into(), ..Default::default() },
                configs: vec![IpamConfig { subnet: self.subnet.clone(), gateway: self.gateway.clone(), ..Default::default() }],
            }),
            ..Default::default()
        }
    }
}

/// An address on one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MapAddr {
    pub network_id: String,
    pub ip: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapNode {
    pub id: String,
    /// The node's underlay (advertise) IP; empty if unknown.
    pub addr: String,
    /// Down nodes stay in the map (their tasks' addresses still exist) but get no new traffic.
    #[serde(default)]
    pub ready: bool,
    /// The node's own overlay addresses (its ingress address).
    #[serde(default)]
    pub attachments: Vec<MapAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapService {
    pub id: String,
    pub name: String,
    /// `vip` or `dnsrr`.
    pub endpoint_mode: String,
    #[serde(default)]
    pub vips: Vec<MapAddr>,
    /// Published ports in ingress mode (`PublishedPort` allocated).
    #[serde(default)]
    pub ingress_ports: Vec<PortConfig>,
    /// Tasks holding overlay addresses (not yet terminal), sorted by slot then task ID.
    #[serde(default)]
    pub tasks: Vec<MapTask>,
    /// [`CLIENT_ADDRESS_LABEL`] is `preserve`.
    #[serde(default)]
    pub preserve_client_address: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapTask {
    pub id: String,
    pub node_id: String,
    #[serde(default)]
    pub slot: u64,
    #[serde(default)]
    pub addrs: Vec<MapAddr>,
    /// Receives new connections: desired and observed RUNNING (healthy, when it has a
    /// healthcheck) on a Ready node.
    #[serde(default)]
    pub in_rotation: bool,
}

//! Nodes (moby `api/types/swarm/node.go`).

use serde::{Deserialize, Serialize};

use crate::common::{GenericResource, Labels, Meta, Platform, TlsInfo};
use crate::util::{is_false, is_zero_i64, nullable, str_enum};

str_enum! {
    /// `Spec.Role`.
    NodeRole { Worker = "worker", Manager = "manager" } default Worker
}
str_enum! {
    /// `Spec.Availability`.
    NodeAvailability { Active = "active", Pause = "pause", Drain = "drain" } default Active
}
str_enum! {
    /// `Status.State`.
    NodeState { Unknown = "unknown", Down = "down", Ready = "ready", Disconnected = "disconnected" } default Unknown
}
str_enum! {
    /// `ManagerStatus.Reachability`.
    Reachability { Unknown = "unknown", Unreachable = "unreachable", Reachable = "reachable" } default Unknown
}

/// A swarm node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: NodeSpec,
    #[serde(default, deserialize_with = "nullable")]
    pub description: NodeDescription,
    #[serde(default, deserialize_with = "nullable")]
    pub status: NodeStatus,
    /// Present only for managers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_status: Option<ManagerStatus>,
    /// The node's own addresses on overlay networks (its ingress address, through which it
    /// forwards published-port traffic), allocated by the manager (swarmkit `Node.Attachments`).
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<crate::EndpointVirtualIp>,
}

impl Node {
    /// `Spec.Name` if set, else `Description.Hostname` (what `service ps` shows).
    pub fn display_name(&self) -> &str {
        if self.spec.name.is_empty() {
            &self.description.hostname
        } else {
            &self.spec.name
        }
    }
}

/// `NodeSpec` (also the `POST /nodes/{id}/update` body).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: Labels,
    #[serde(default)]
    pub role: NodeRole,
    #[serde(default)]
    pub availability: NodeAvailability,
}

/// `NodeDescription`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeDescription {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, deserialize_with = "nullable")]
    pub platform: Platform,
    #[serde(default, deserialize_with = "nullable")]
    pub resources: NodeResources,
    #[serde(default, deserialize_with = "nullable")]
    pub engine: EngineDescription,
    #[serde(rename = "TLSInfo", default, deserialize_with = "nullable")]
    pub tls_info: TlsInfo,
    #[serde(
        rename = "CSIInfo",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub csi_info: Vec<serde_json::Value>,
}

/// `Resources` (`{NanoCPUs, MemoryBytes, GenericResources?}`, all int64 omitempty) — used for node
/// resources and task reservations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeResources {
    #[serde(rename = "NanoCPUs", default, skip_serializing_if = "is_zero_i64")]
    pub nano_cpus: i64,
    #[serde(rename = "MemoryBytes", default, skip_serializing_if = "is_zero_i64")]
    pub memory_bytes: i64,
    #[serde(
        rename = "GenericResources",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub generic_resources: Vec<GenericResource>,
}

/// `EngineDescription`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EngineDescription {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine_version: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Labels::is_empty"
    )]
    pub labels: Labels,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub plugins: Vec<PluginDescription>,
}

/// `{"Type", "Name"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PluginDescription {
    #[serde(rename = "Type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// `NodeStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeStatus {
    #[serde(default)]
    pub state: NodeState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Node IP without port.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
}

/// `ManagerStatus` (managers only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ManagerStatus {
    #[serde(default, skip_serializing_if = "is_false")]
    pub leader: bool,
    #[serde(default)]
    pub reachability: Reachability,
    /// Control address with port, e.g. `10.0.0.1:2377`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
}

//! Swarm-scoped networks, secrets and configs (moby `api/types/swarm/network.go`,
//! `secret.go`, `config.go`).
//!
//! `Network` is the *swarm* shape (`ID, Version, CreatedAt, UpdatedAt, Spec, DriverState,
//! IPAMOptions`) as embedded in `Task.NetworksAttachments`; `GET /networks` uses a different
//! (`network.Inspect`) shape which the API layer derives from this object.
//! `Secret.Spec.Data` is stored but must be cleared by the API layer before serving a secret.

use serde::{Deserialize, Serialize};

use crate::common::{Driver, Labels, Meta};
use crate::util::{is_false, nullable};

/// A swarm-scoped network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Network {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: NetworkSpec,
    #[serde(default, deserialize_with = "nullable")]
    pub driver_state: Driver,
    #[serde(
        rename = "IPAMOptions",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipam_options: Option<IpamOptions>,
}

/// The overlay driver's name (the only driver for swarm-scoped networks).
pub const OVERLAY_DRIVER: &str = "overlay";
/// `DriverState.Options` key holding the VXLAN ID (swarmkit's name for it).
pub const VXLAN_ID_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";
/// The name of the ingress network created at `swarm init`.
pub const INGRESS_NAME: &str = "ingress";
/// Docker's default ingress subnet.
pub const INGRESS_SUBNET: &str = "10.0.0.0/24";

impl Network {
    /// The VXLAN ID the manager allocated (`DriverState.Options`), if any.
    pub fn vni(&self) -> Option<u32> {
        self.driver_state.options.get(VXLAN_ID_OPTION)?.split(',').next()?.trim().parse().ok()
    }

    /// The allocated subnet (CIDR) and gateway of the network's first IPAM pool.
    pub fn pool(&self) -> Option<(&str, &str)> {
        let c = self.ipam_options.as_ref()?.configs.first()?;
        (!c.subnet.is_empty()).then_some((c.subnet.as_str(), c.gateway.as_str()))
    }
}

/// `NetworkSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_configuration: Option<Driver>,
    #[serde(rename = "IPv6Enabled", default, skip_serializing_if = "is_false")]
    pub ipv6_enabled: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub internal: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub attachable: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ingress: bool,
    #[serde(
        rename = "IPAMOptions",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipam_options: Option<IpamOptions>,
    /// Opaque `{"Network": "<config-only network>"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_from: Option<serde_json::Value>,
    /// `"swarm"` for swarm networks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

/// `{"Driver", "Configs"?}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamOptions {
    #[serde(default, deserialize_with = "nullable")]
    pub driver: Driver,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub configs: Vec<IpamConfig>,
}

/// `{"Subnet"?, "Range"?, "Gateway"?}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subnet: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub range: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
}

/// A secret. The API must serve it with `Spec.Data` cleared ([`Secret::public`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Secret {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: SecretSpec,
}

impl Secret {
    /// Copy without the secret payload (what `GET /secrets` returns).
    pub fn public(&self) -> Secret {
        let mut s = self.clone();
        s.spec.data.clear();
        s
    }
}

/// `{"Name", "Labels", "Data"?: base64, "Driver"?, "Templating"?}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecretSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: Labels,
    /// Base64 (Go `[]byte`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templating: Option<Driver>,
}

/// A config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Config {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: ConfigSpec,
}

/// `{"Name", "Labels", "Data"?: base64, "Templating"?}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConfigSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: Labels,
    /// Base64 (Go `[]byte`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templating: Option<Driver>,
}

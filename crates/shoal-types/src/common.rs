//! Shapes shared by several objects (moby `api/types/swarm/common.go`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::time::{gotime, zero_time};
use crate::util::nullable;

/// Label map. `BTreeMap` for stable output and `PartialEq`.
pub type Labels = BTreeMap<String, String>;

/// Object version: `{"Index": <uint64>}`; the store sets it to the Raft index of the last write.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "PascalCase")]
pub struct Version {
    #[serde(default)]
    pub index: u64,
}

impl Version {
    pub fn new(index: u64) -> Version {
        Version { index }
    }
}

/// Inlined metadata of every stored object: `Version`, `CreatedAt`, `UpdatedAt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Meta {
    #[serde(default, deserialize_with = "nullable")]
    pub version: Version,
    #[serde(default = "zero_time", with = "gotime")]
    pub created_at: DateTime<Utc>,
    #[serde(default = "zero_time", with = "gotime")]
    pub updated_at: DateTime<Utc>,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            version: Version::default(),
            created_at: zero_time(),
            updated_at: zero_time(),
        }
    }
}

/// `{"Name"?, "Options"?}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Driver {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub options: BTreeMap<String, String>,
}

/// `{"Architecture"?, "OS"?}` (capitalised keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(
        rename = "Architecture",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub architecture: String,
    #[serde(rename = "OS", default, skip_serializing_if = "String::is_empty")]
    pub os: String,
}

/// `{"TrustRoot"?, "CertIssuerSubject"?, "CertIssuerPublicKey"?}`; the last two are base64 strings
/// (Go `[]byte`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TlsInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trust_root: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert_issuer_subject: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert_issuer_public_key: String,
}

/// Swarmkit `Annotations` (name + labels), used where it is a nested object
/// (e.g. `Task.ServiceAnnotations`). Most specs inline these two fields instead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Annotations {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: Labels,
}

/// `GenericResource` — kept opaque (`{"NamedResourceSpec":…}` / `{"DiscreteResourceSpec":…}`).
pub type GenericResource = serde_json::Value;

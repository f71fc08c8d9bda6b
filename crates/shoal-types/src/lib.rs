//! `shoal-types` owns the Docker-API-shaped swarm object model: the stored objects
//! ([`Cluster`], [`Node`], [`Service`], [`Task`], [`Network`], [`Secret`], [`Config`]) and their
//! specs, serialised with serde in PascalCase with field names and JSON types exactly as the
//! docker CLI's Go structs (`github.com/docker/docker/api/types/swarm`) decode them. It also owns
//! swarm IDs and join tokens ([`ids`]), task-state ordering ([`TaskState`]), Go-compatible time
//! formatting ([`time`]) and the swarmkit spec defaults ([`defaults`]). It must not do I/O.
//!
//! Conventions:
//! - Incoming JSON: unknown fields are ignored, every field is optional, and `null` decodes as
//!   the empty value wherever Go could send `null` (nil maps/slices).
//! - Outgoing JSON: Go's `omitempty` is mirrored with `skip_serializing_if`; durations are `i64`
//!   nanoseconds; times are RFC3339Nano strings; `Version.Index` is a `u64`.
//! - `TaskSpec.ContainerSpec` is always present (never `null`): the CLI panics on a null one.
//! - Store-only data: [`Cluster::store_only`] (JSON key `ShoalStoreOnly`) holds CA key and unlock
//!   key; it round-trips through the store's JSON but the API must serve [`Cluster::public`]
//!   (and [`ClusterInfo`] in `/info`). Secrets are served via [`Secret::public`] (no `Data`).
//!   `Task.ServiceAnnotations`/`Task.SpecVersion` are internal but harmless (the CLI ignores them).

pub mod common;
pub mod defaults;
pub mod ids;
pub mod netmap;
pub mod network;
pub mod node;
pub mod service;
pub mod state;
pub mod swarm;
pub mod task;
pub mod taskspec;
pub mod time;
pub mod util;

pub use common::{Annotations, Driver, GenericResource, Labels, Meta, Platform, TlsInfo, Version};
pub use defaults::with_defaults;
pub use ids::{join_token, new_id, unlock_key};
pub use netmap::{MapAddr, MapNetwork, MapNode, MapService, MapTask, NetworkMap, CLIENT_ADDRESS_LABEL};
pub use network::{
    Config, ConfigSpec, IpamConfig, IpamOptions, Network, NetworkSpec, Secret, SecretSpec,
    INGRESS_NAME, INGRESS_SUBNET, OVERLAY_DRIVER, VXLAN_ID_OPTION,
};
pub use node::{
    EngineDescription, ManagerStatus, Node, NodeAvailability, NodeDescription, NodeResources,
    NodeRole, NodeSpec, NodeState, NodeStatus, PluginDescription, Reachability,
};
pub use service::{
    Endpoint, EndpointSpec, EndpointVirtualIp, FailureAction, JobStatus, Mode, ResolutionMode,
    Service, ServiceCreateResponse, ServiceMode, ServiceSpec, ServiceStatus, ServiceUpdateResponse,
    UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};
pub use state::TaskState;
pub use swarm::{
    CaConfig, Cluster, ClusterInfo, ClusterSecrets, DispatcherConfig, EncryptionConfig,
    InitRequest, JoinRequest, JoinTokens, OrchestrationConfig, RaftConfig, RootRotation, SwarmSpec,
    TaskDefaults, UnlockRequest,
};
pub use task::{
    task_container_name, task_display_name, ContainerStatus, NetworkAttachment, PortStatus, Task,
    TaskStatus,
};
pub use taskspec::{
    ConfigReference, ContainerSpec, DnsConfig, FileTarget, HealthConfig, Limit, Mount,
    NetworkAttachmentConfig, Placement, PlacementPreference, PortConfig, PortProtocol, PublishMode,
    ResourceRequirements, RestartCondition, RestartPolicy, SecretReference, SpreadOver, TaskSpec,
    Ulimit,
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Error parsing one of the string enums.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} value {value:?}")]
pub struct ParseEnumError {
    pub kind: &'static str,
    pub value: String,
}

/// The kinds of stored objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Cluster,
    Node,
    Service,
    Task,
    Network,
    Secret,
    Config,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Cluster,
        Kind::Node,
        Kind::Service,
        Kind::Task,
        Kind::Network,
        Kind::Secret,
        Kind::Config,
    ];

    /// `"cluster"`, `"node"`, `"service"`, `"task"`, `"network"`, `"secret"`, `"config"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::Network => "network",
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = ParseEnumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ParseEnumError {
                kind: "Kind",
                value: s.to_string(),
            })
    }
}

/// Implemented by every stored object.
pub trait Object: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    const KIND: Kind;
    fn id(&self) -> &str;
    fn meta(&self) -> &Meta;
    fn meta_mut(&mut self) -> &mut Meta;
    /// `meta().version`.
    fn version(&self) -> Version {
        self.meta().version
    }
    /// Wrap into [`AnyObject`].
    fn into_any(self) -> AnyObject;
    /// Borrow as `Self` if `a` is of this kind.
    fn from_any_ref(a: &AnyObject) -> Option<&Self>;
    /// Unwrap if `a` is of this kind.
    fn from_any(a: AnyObject) -> Result<Self, WrongKind>;
}

/// Any stored object. Serialises externally tagged by kind: `{"service": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(clippy::large_enum_variant)]
pub enum AnyObject {
    Cluster(Cluster),
    Node(Node),
    Service(Service),
    Task(Task),
    Network(Network),
    Secret(Secret),
    Config(Config),
}

/// `TryFrom<AnyObject>` failure: the object is of another kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a {expected} object, got a {found}")]
pub struct WrongKind {
    pub expected: Kind,
    pub found: Kind,
}

macro_rules! any_dispatch {
    ($self:expr, $o:ident => $e:expr) => {
        match $self {
            AnyObject::Cluster($o) => $e,
            AnyObject::Node($o) => $e,
            AnyObject::Service($o) => $e,
            AnyObject::Task($o) => $e,
            AnyObject::Network($o) => $e,
            AnyObject::Secret($o) => $e,
            AnyObject::Config($o) => $e,
        }
    };
}

impl AnyObject {
    pub fn kind(&self) -> Kind {
        any_dispatch!(self, o => kind_of(o))
    }
    pub fn id(&self) -> &str {
        any_dispatch!(self, o => o.id())
    }
    pub fn meta(&self) -> &Meta {
        any_dispatch!(self, o => o.meta())
    }
    pub fn meta_mut(&mut self) -> &mut Meta {
        any_dispatch!(self, o => o.meta_mut())
    }
    pub fn version(&self) -> Version {
        self.meta().version
    }
    /// Typed view if this is a `T`.
    pub fn downcast_ref<T: Object>(&self) -> Option<&T> {
        T::from_any_ref(self)
    }
}

fn kind_of<T: Object>(_: &T) -> Kind {
    T::KIND
}

macro_rules! impl_object {
    ($t:ident) => {
        impl Object for $t {
            const KIND: Kind = Kind::$t;
            fn id(&self) -> &str {
                &self.id
            }
            fn meta(&self) -> &Meta {
                &self.meta
            }
            fn meta_mut(&mut self) -> &mut Meta {
                &mut self.meta
            }
            fn into_any(self) -> AnyObject {
                AnyObject::$t(self)
            }
            fn from_any_ref(a: &AnyObject) -> Option<&$t> {
                match a {
                    AnyObject::$t(o) => Some(o),
                    _ => None,
                }
            }
            fn from_any(a: AnyObject) -> Result<$t, WrongKind> {
                match a {
                    AnyObject::$t(o) => Ok(o),
                    other => Err(WrongKind {
                        expected: Kind::$t,
                        found: other.kind(),
                    }),
                }
            }
        }
        impl From<$t> for AnyObject {
            fn from(o: $t) -> AnyObject {
                AnyObject::$t(o)
            }
        }
        impl TryFrom<AnyObject> for $t {
            type Error = WrongKind;
            fn try_from(a: AnyObject) -> Result<$t, WrongKind> {
                <$t as Object>::from_any(a)
            }
        }
    };
}

impl_object!(Cluster);
impl_object!(Node);
impl_object!(Service);
impl_object!(Task);
impl_object!(Network);
impl_object!(Secret);
impl_object!(Config);

#[cfg(test)]
mod tests;

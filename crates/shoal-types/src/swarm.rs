//! The cluster object (Docker's `Swarm` / `ClusterInfo`) and `SwarmSpec`
//! (moby `api/types/swarm/swarm.go`).

use serde::{Deserialize, Serialize};

use crate::common::{Driver, Labels, Meta, TlsInfo};
use crate::node::NodeAvailability;
use crate::time::SECOND;
use crate::util::{is_zero_i64, is_zero_u64, nullable};

/// The cluster object as stored and as returned by `GET /swarm`.
///
/// **Store-only data** lives in [`Cluster::store_only`] (JSON key `ShoalStoreOnly`): it is
/// persisted with the object but must never reach an API client. The API layer returns
/// [`Cluster::public`] from `GET /swarm` (it clears `store_only`, which is then omitted) and
/// [`ClusterInfo::from`] for `/info` (no `JoinTokens` either).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Cluster {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default)]
    pub spec: SwarmSpec,
    #[serde(rename = "TLSInfo", default)]
    pub tls_info: TlsInfo,
    #[serde(default)]
    pub root_rotation_in_progress: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub default_addr_pool: Vec<String>,
    #[serde(default)]
    pub subnet_size: u32,
    #[serde(default)]
    pub data_path_port: u32,
    #[serde(default)]
    pub join_tokens: JoinTokens,
    /// Secrets kept in the store only. Stripped by [`Cluster::public`].
    #[serde(
        rename = "ShoalStoreOnly",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub store_only: Option<ClusterSecrets>,
}

/// Cluster secrets that are persisted but never served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClusterSecrets {
    /// Root CA certificate, PEM (also public as `TLSInfo.TrustRoot`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_ca_cert_pem: String,
    /// Root CA private key, PEM.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_ca_key_pem: String,
    /// Human-readable unlock key (`SWMKEY-1-…`) when autolock is on, else empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unlock_key: String,
    /// Overlay/gossip encryption keys (opaque, base64), newest last.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub network_keys: Vec<String>,
    /// The root rotation in progress, if any (swarmkit `RootCA.RootRotation`): while it is set,
    /// node certificates are issued by its CA and chained to the old root through its
    /// cross-signed certificate, and `Cluster.RootRotationInProgress` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_rotation: Option<RootRotation>,
    /// The `CAConfig.ForceRotate` value the last rotation was started for (swarmkit
    /// `RootCA.LastForcedRotation`): a cluster update with another value starts a rotation.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub last_forced_rotation: u64,
    /// The web dashboard's login credential, hashed (`pbkdf2-sha256$<iterations>$<salt>$<hash>`,
    /// hex; see `shoal_swarm::dashboard`); empty when none was set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dashboard_credential: String,
}

/// A root CA rotation in progress: the CA being rotated to and its certificate cross-signed by
/// the current root (same subject and key, issued by the current root).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootRotation {
    /// The new root CA certificate, PEM.
    #[serde(default)]
    pub ca_cert_pem: String,
    /// The new root CA key, PEM.
    #[serde(default)]
    pub ca_key_pem: String,
    /// The new root's certificate signed by the current root, PEM.
    #[serde(default)]
    pub cross_signed_pem: String,
}

/// `{"Worker", "Manager"}` join tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinTokens {
    #[serde(default)]
    pub worker: String,
    #[serde(default)]
    pub manager: String,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            id: String::new(),
            meta: Meta::default(),
            spec: SwarmSpec::default_spec(),
            tls_info: TlsInfo::default(),
            root_rotation_in_progress: false,
            default_addr_pool: vec!["10.0.0.0/8".into()],
            subnet_size: 24,
            data_path_port: 4789,
            join_tokens: JoinTokens::default(),
            store_only: None,
        }
    }
}

impl Cluster {
    /// Copy safe to serve from `GET /swarm`: store-only secrets removed.
    pub fn public(&self) -> Cluster {
        Cluster {
            store_only: None,
            ..self.clone()
        }
    }

    /// The `/info` `Swarm.Cluster` view (no join tokens, no secrets).
    pub fn info(&self) -> ClusterInfo {
        ClusterInfo::from(self)
    }
}

/// `ClusterInfo`: the cluster as shown in `/info` (`Swarm.Cluster`), without `JoinTokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClusterInfo {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default)]
    pub spec: SwarmSpec,
    #[serde(rename = "TLSInfo", default)]
    pub tls_info: TlsInfo,
    #[serde(default)]
    pub root_rotation_in_progress: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub default_addr_pool: Vec<String>,
    #[serde(default)]
    pub subnet_size: u32,
    #[serde(default)]
    pub data_path_port: u32,
}

impl From<&Cluster> for ClusterInfo {
    fn from(c: &Cluster) -> Self {
        ClusterInfo {
            id: c.id.clone(),
            meta: c.meta.clone(),
            spec: c.spec.clone(),
            tls_info: c.tls_info.clone(),
            root_rotation_in_progress: c.root_rotation_in_progress,
            default_addr_pool: c.default_addr_pool.clone(),
            subnet_size: c.subnet_size,
            data_path_port: c.data_path_port,
        }
    }
}

/// `SwarmSpec` (moby `swarm.Spec`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: Labels,
    #[serde(default, deserialize_with = "nullable")]
    pub orchestration: OrchestrationConfig,
    #[serde(default, deserialize_with = "nullable")]
    pub raft: RaftConfig,
    #[serde(default, deserialize_with = "nullable")]
    pub dispatcher: DispatcherConfig,
    #[serde(rename = "CAConfig", default, deserialize_with = "nullable")]
    pub ca_config: CaConfig,
    #[serde(default, deserialize_with = "nullable")]
    pub task_defaults: TaskDefaults,
    #[serde(default, deserialize_with = "nullable")]
    pub encryption_config: EncryptionConfig,
}

/// `{"TaskHistoryRetentionLimit"?: int64}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OrchestrationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_history_retention_limit: Option<i64>,
}

/// Raft settings. `ElectionTick`/`HeartbeatTick` are Go `int` and always emitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RaftConfig {
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub snapshot_interval: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_old_snapshots: Option<u64>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub log_entries_for_slow_followers: u64,
    #[serde(default)]
    pub election_tick: i64,
    #[serde(default)]
    pub heartbeat_tick: i64,
}

/// `{"HeartbeatPeriod"?: ns}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DispatcherConfig {
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub heartbeat_period: i64,
}

/// CA configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaConfig {
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub node_cert_expiry: i64,
    #[serde(
        rename = "ExternalCAs",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub external_cas: Vec<serde_json::Value>,
    #[serde(
        rename = "SigningCACert",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub signing_ca_cert: String,
    #[serde(
        rename = "SigningCAKey",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub signing_ca_key: String,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub force_rotate: u64,
}

/// `{"LogDriver"?: Driver}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_driver: Option<Driver>,
}

/// `{"AutoLockManagers": bool}` (always emitted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptionConfig {
    #[serde(default)]
    pub auto_lock_managers: bool,
}

/// Default node certificate lifetime: 90 days in ns.
pub const DEFAULT_NODE_CERT_EXPIRY: i64 = 90 * 24 * 3600 * SECOND;

impl SwarmSpec {
    /// moby/swarmkit defaults for a new cluster.
    pub fn default_spec() -> SwarmSpec {
        SwarmSpec {
            name: "default".into(),
            labels: Labels::new(),
            orchestration: OrchestrationConfig {
                task_history_retention_limit: Some(5),
            },
            raft: RaftConfig {
                snapshot_interval: 10_000,
                keep_old_snapshots: Some(0),
                log_entries_for_slow_followers: 500,
                election_tick: 10,
                heartbeat_tick: 1,
            },
            dispatcher: DispatcherConfig {
                // swarmkit uses 5 s (a lost node is noticed after 15 s); 1 s keeps node-loss
                // recovery under 5 s for ~0.3 KB/s of heartbeat traffic per node (bench/nodeloss.sh).
                heartbeat_period: SECOND,
            },
            ca_config: CaConfig {
                node_cert_expiry: DEFAULT_NODE_CERT_EXPIRY,
                ..Default::default()
            },
            task_defaults: TaskDefaults::default(),
            encryption_config: EncryptionConfig {
                auto_lock_managers: false,
            },
        }
    }

    /// Fill zero/unset fields of a client-supplied spec (e.g. the `swarm init` body, which sends
    /// zeros for everything not given on the command line) from [`SwarmSpec::default_spec`].
    pub fn merged_with_defaults(&self) -> SwarmSpec {
        let d = SwarmSpec::default_spec();
        let mut s = self.clone();
        if s.name.is_empty() {
            s.name = d.name;
        }
        if s.orchestration.task_history_retention_limit.is_none() {
            s.orchestration.task_history_retention_limit =
                d.orchestration.task_history_retention_limit;
        }
        if s.raft.snapshot_interval == 0 {
            s.raft.snapshot_interval = d.raft.snapshot_interval;
        }
        if s.raft.keep_old_snapshots.is_none() {
            s.raft.keep_old_snapshots = d.raft.keep_old_snapshots;
        }
        if s.raft.log_entries_for_slow_followers == 0 {
            s.raft.log_entries_for_slow_followers = d.raft.log_entries_for_slow_followers;
        }
        if s.raft.election_tick == 0 {
            s.raft.election_tick = d.raft.election_tick;
        }
        if s.raft.heartbeat_tick == 0 {
            s.raft.heartbeat_tick = d.raft.heartbeat_tick;
        }
        if s.dispatcher.heartbeat_period == 0 {
            s.dispatcher.heartbeat_period = d.dispatcher.heartbeat_period;
        }
        if s.ca_config.node_cert_expiry == 0 {
            s.ca_config.node_cert_expiry = d.ca_config.node_cert_expiry;
        }
        s
    }
}

/// `POST /swarm/init` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InitRequest {
    #[serde(default)]
    pub listen_addr: String,
    #[serde(default)]
    pub advertise_addr: String,
    #[serde(default)]
    pub data_path_addr: String,
    #[serde(default)]
    pub data_path_port: u32,
    #[serde(default)]
    pub force_new_cluster: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: SwarmSpec,
    #[serde(default)]
    pub auto_lock_managers: bool,
    /// `""` decodes as `active`.
    #[serde(default)]
    pub availability: NodeAvailability,
    #[serde(default, deserialize_with = "nullable")]
    pub default_addr_pool: Vec<String>,
    #[serde(default)]
    pub subnet_size: u32,
}

/// `POST /swarm/join` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinRequest {
    #[serde(default)]
    pub listen_addr: String,
    #[serde(default)]
    pub advertise_addr: String,
    #[serde(default)]
    pub data_path_addr: String,
    #[serde(default, deserialize_with = "nullable")]
    pub remote_addrs: Vec<String>,
    #[serde(default)]
    pub join_token: String,
    #[serde(default)]
    pub availability: NodeAvailability,
}

/// `POST /swarm/unlock` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UnlockRequest {
    #[serde(default)]
    pub unlock_key: String,
}

//! Services (moby `api/types/swarm/service.go`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::common::{Labels, Meta, Version};
use crate::taskspec::{NetworkAttachmentConfig, PortConfig, TaskSpec};
use crate::time::{gotime, gotime_opt, zero_time};
use crate::util::{is_zero_i64, nullable, str_enum};

/// A service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<ServiceSpec>,
    #[serde(default, deserialize_with = "nullable")]
    pub endpoint: Endpoint,
    /// Null on create and after a plain update; set by the updater.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
    /// Only with `?status=true`; computed by the API layer, not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_status: Option<ServiceStatus>,
    /// Jobs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_status: Option<JobStatus>,
}

/// `ServiceSpec` (also the `services/create` and `services/{id}/update` body).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: Labels,
    #[serde(default, deserialize_with = "nullable")]
    pub task_template: TaskSpec,
    #[serde(default, deserialize_with = "nullable")]
    pub mode: ServiceMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfig>,
    /// Deprecated location of network attachments (use `TaskTemplate.Networks`).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub networks: Vec<NetworkAttachmentConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_spec: Option<EndpointSpec>,
}

impl ServiceSpec {
    /// Replicated-job or global-job.
    pub fn is_job(&self) -> bool {
        self.mode.is_job()
    }

    /// Global or global-job.
    pub fn is_global(&self) -> bool {
        self.mode.is_global()
    }

    /// Network attachments: `TaskTemplate.Networks`, falling back to the deprecated `Networks`.
    pub fn network_attachments(&self) -> &[NetworkAttachmentConfig] {
        if self.task_template.networks.is_empty() {
            &self.networks
        } else {
            &self.task_template.networks
        }
    }

    /// Published ports of the spec (`EndpointSpec.Ports`), empty if none.
    pub fn ports(&self) -> &[PortConfig] {
        self.endpoint_spec
            .as_ref()
            .map(|e| e.ports.as_slice())
            .unwrap_or(&[])
    }
}

/// Service mode. Wire shapes: `{"Replicated":{"Replicas":N}}`, `{"Global":{}}`,
/// `{"ReplicatedJob":{"MaxConcurrent":M,"TotalCompletions":T}}`, `{"GlobalJob":{}}`.
/// Decoding `{}` or `{"Replicated":{}}` gives `Replicated { replicas: 1 }` (moby's default);
/// a replicated job with missing numbers gets `TotalCompletions` 1 and
/// `MaxConcurrent` = `TotalCompletions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceMode {
    Replicated {
        replicas: u64,
    },
    Global,
    ReplicatedJob {
        max_concurrent: u64,
        total_completions: u64,
    },
    GlobalJob,
}

/// Short alias.
pub type Mode = ServiceMode;

impl Default for ServiceMode {
    fn default() -> Self {
        ServiceMode::Replicated { replicas: 1 }
    }
}

impl ServiceMode {
    /// Desired replica count for replicated services, `TotalCompletions` for replicated jobs,
    /// `None` for global modes.
    pub fn replicas(&self) -> Option<u64> {
        match self {
            ServiceMode::Replicated { replicas } => Some(*replicas),
            ServiceMode::ReplicatedJob {
                total_completions, ..
            } => Some(*total_completions),
            _ => None,
        }
    }

    pub fn is_job(&self) -> bool {
        matches!(
            self,
            ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob
        )
    }

    pub fn is_global(&self) -> bool {
        matches!(self, ServiceMode::Global | ServiceMode::GlobalJob)
    }

    pub fn is_replicated(&self) -> bool {
        matches!(
            self,
            ServiceMode::Replicated { .. } | ServiceMode::ReplicatedJob { .. }
        )
    }

    /// `replicated`, `global`, `replicated job`, `global job` (as `service ls` prints).
    pub fn name(&self) -> &'static str {
        match self {
            ServiceMode::Replicated { .. } => "replicated",
            ServiceMode::Global => "global",
            ServiceMode::ReplicatedJob { .. } => "replicated job",
            ServiceMode::GlobalJob => "global job",
        }
    }

    /// True when both are the same kind of mode (mode changes are refused on update).
    pub fn same_kind(&self, other: &ServiceMode) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawMode {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replicated: Option<RawReplicated>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    global: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replicated_job: Option<RawReplicatedJob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    global_job: Option<Empty>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawReplicated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replicas: Option<u64>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawReplicatedJob {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_concurrent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    total_completions: Option<u64>,
}

#[derive(Default, Serialize, Deserialize)]
struct Empty {}

impl Serialize for ServiceMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut raw = RawMode::default();
        match *self {
            ServiceMode::Replicated { replicas } => {
                raw.replicated = Some(RawReplicated {
                    replicas: Some(replicas),
                })
            }
            ServiceMode::Global => raw.global = Some(Empty {}),
            ServiceMode::ReplicatedJob {
                max_concurrent,
                total_completions,
            } => {
                raw.replicated_job = Some(RawReplicatedJob {
                    max_concurrent: Some(max_concurrent),
                    total_completions: Some(total_completions),
                })
            }
            ServiceMode::GlobalJob => raw.global_job = Some(Empty {}),
        }
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ServiceMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Option::<RawMode>::deserialize(d)?.unwrap_or_default();
        Ok(if let Some(r) = raw.replicated {
            ServiceMode::Replicated {
                replicas: r.replicas.unwrap_or(1),
            }
        } else if raw.global.is_some() {
            ServiceMode::Global
        } else if let Some(j) = raw.replicated_job {
            let total = j.total_completions.unwrap_or(1);
            ServiceMode::ReplicatedJob {
                max_concurrent: j.max_concurrent.unwrap_or(total),
                total_completions: total,
            }
        } else if raw.global_job.is_some() {
            ServiceMode::GlobalJob
        } else {
            ServiceMode::default()
        })
    }
}

str_enum! {
    /// `UpdateConfig.FailureAction`.
    FailureAction { Pause = "pause", Continue = "continue", Rollback = "rollback" } default Pause
}
str_enum! {
    /// `UpdateConfig.Order`.
    UpdateOrder { StopFirst = "stop-first", StartFirst = "start-first" } default StopFirst
}

/// Update / rollback configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateConfig {
    /// 0 = all at once. Always emitted.
    #[serde(default)]
    pub parallelism: u64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub delay: i64,
    #[serde(default)]
    pub failure_action: FailureAction,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub monitor: i64,
    #[serde(default)]
    pub max_failure_ratio: f32,
    #[serde(default)]
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    /// swarmkit defaults: parallelism 1, pause, monitor 5s, ratio 0, stop-first.
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay: 0,
            failure_action: FailureAction::Pause,
            monitor: 5 * crate::time::SECOND,
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
        }
    }
}

str_enum! {
    /// `EndpointSpec.Mode`.
    ResolutionMode { Vip = "vip", Dnsrr = "dnsrr" } default Vip
}

/// `{"Mode", "Ports"?}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSpec {
    #[serde(default)]
    pub mode: ResolutionMode,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<PortConfig>,
}

/// `Service.Endpoint`: the spec plus allocated ports and VIPs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Endpoint {
    #[serde(default, deserialize_with = "nullable")]
    pub spec: EndpointSpec,
    /// Spec ports with `PublishedPort` filled in.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<PortConfig>,
    #[serde(
        rename = "VirtualIPs",
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub virtual_ips: Vec<EndpointVirtualIp>,
}

/// `{"NetworkID", "Addr": "10.0.0.5/24"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointVirtualIp {
    #[serde(
        rename = "NetworkID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub network_id: String,
    #[serde(rename = "Addr", default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
}

str_enum! {
    /// `UpdateStatus.State`.
    UpdateState {
        Updating = "updating",
        Paused = "paused",
        Completed = "completed",
        RollbackStarted = "rollback_started",
        RollbackPaused = "rollback_paused",
        RollbackCompleted = "rollback_completed",
    } default Updating
}

/// `{"State"?, "StartedAt"?, "CompletedAt"?, "Message"?}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<UpdateState>,
    #[serde(default, with = "gotime_opt", skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, with = "gotime_opt", skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// `{"RunningTasks", "DesiredTasks", "CompletedTasks"}` (uint64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceStatus {
    #[serde(default)]
    pub running_tasks: u64,
    #[serde(default)]
    pub desired_tasks: u64,
    #[serde(default)]
    pub completed_tasks: u64,
}

/// `{"JobIteration": Version, "LastExecution"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobStatus {
    #[serde(default, deserialize_with = "nullable")]
    pub job_iteration: Version,
    #[serde(default = "zero_time", with = "gotime")]
    pub last_execution: DateTime<Utc>,
}

impl Default for JobStatus {
    fn default() -> Self {
        JobStatus {
            job_iteration: Version::default(),
            last_execution: zero_time(),
        }
    }
}

/// `POST /services/create` response `{"ID", "Warnings"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCreateResponse {
    #[serde(rename = "ID")]
    pub id: String,
    /// `null` when empty, like moby.
    #[serde(rename = "Warnings")]
    pub warnings: Option<Vec<String>>,
}

/// `POST /services/{id}/update` response `{"Warnings"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUpdateResponse {
    #[serde(rename = "Warnings")]
    pub warnings: Option<Vec<String>>,
}

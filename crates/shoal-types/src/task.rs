//! Tasks (moby `api/types/swarm/task.go`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::common::{Annotations, GenericResource, Labels, Meta, Version};
use crate::network::Network;
use crate::state::TaskState;
use crate::taskspec::{PortConfig, TaskSpec};
use crate::time::{gotime, zero_time};
use crate::util::{is_zero_u64, nullable};

/// A task: one scheduled instance of a service.
///
/// Besides Docker's fields it carries two store-internal ones that the CLI ignores:
/// `ServiceAnnotations` (the service's name/labels at creation, for container naming) and
/// `SpecVersion` (the service `Version` the task was created from).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: Labels,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: TaskSpec,
    #[serde(
        rename = "ServiceID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub service_id: String,
    /// 1..N for replicated services; 0 (omitted) for global.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub slot: u64,
    /// Empty until assigned (omitted).
    #[serde(rename = "NodeID", default, skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub status: TaskStatus,
    #[serde(default)]
    pub desired_state: TaskState,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub networks_attachments: Vec<NetworkAttachment>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub generic_resources: Vec<GenericResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_iteration: Option<Version>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub volumes: Vec<serde_json::Value>,
    /// Store-internal: service name/labels at task creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_annotations: Option<Annotations>,
    /// Store-internal: service spec version the task was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_version: Option<Version>,
    /// The service's allocated endpoint when the task was allocated (swarmkit `Task.Endpoint`):
    /// the agent binds its host-mode published ports from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<crate::Endpoint>,
}

impl Default for Task {
    fn default() -> Self {
        Task {
            id: String::new(),
            meta: Meta::default(),
            name: String::new(),
            labels: Labels::new(),
            spec: TaskSpec::default(),
            service_id: String::new(),
            slot: 0,
            node_id: String::new(),
            status: TaskStatus::default(),
            desired_state: TaskState::Running,
            networks_attachments: Vec::new(),
            generic_resources: Vec::new(),
            job_iteration: None,
            volumes: Vec::new(),
            service_annotations: None,
            spec_version: None,
            endpoint: None,
        }
    }
}

impl Task {
    /// Service name recorded at creation (`ServiceAnnotations.Name`), or `""`.
    pub fn service_name(&self) -> &str {
        self.service_annotations
            .as_ref()
            .map(|a| a.name.as_str())
            .unwrap_or("")
    }

    /// The name the CLI shows: `<service>.<slot>` (replicated) or `<service>.<nodeID>` (global).
    pub fn display_name(&self) -> String {
        task_display_name(self.service_name(), self.slot, &self.node_id)
    }

    /// Container name: `<service>.<slot>.<taskID>` or `<service>.<nodeID>.<taskID>`.
    pub fn container_name(&self) -> String {
        task_container_name(self.service_name(), self.slot, &self.node_id, &self.id)
    }
}

/// `<service>.<slot>` when `slot > 0`, else `<service>.<node_id>`.
pub fn task_display_name(service: &str, slot: u64, node_id: &str) -> String {
    if slot > 0 {
        format!("{service}.{slot}")
    } else {
        format!("{service}.{node_id}")
    }
}

/// `<service>.<slot>.<task_id>` when `slot > 0`, else `<service>.<node_id>.<task_id>`
/// (moby executor container naming; also the `com.docker.swarm.task.name` label).
pub fn task_container_name(service: &str, slot: u64, node_id: &str, task_id: &str) -> String {
    format!("{}.{}", task_display_name(service, slot, node_id), task_id)
}

/// Observed task status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskStatus {
    #[serde(default = "zero_time", with = "gotime")]
    pub timestamp: DateTime<Utc>,
    #[serde(default)]
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub err: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_status: Option<ContainerStatus>,
    #[serde(default, deserialize_with = "nullable")]
    pub port_status: PortStatus,
}

impl Default for TaskStatus {
    fn default() -> Self {
        TaskStatus {
            timestamp: zero_time(),
            state: TaskState::New,
            message: String::new(),
            err: String::new(),
            container_status: None,
            port_status: PortStatus::default(),
        }
    }
}

impl TaskStatus {
    /// A status in `state` with swarmkit's standard message, stamped `now`.
    pub fn new(state: TaskState, timestamp: DateTime<Utc>) -> TaskStatus {
        TaskStatus {
            timestamp,
            state,
            message: state.default_message().to_string(),
            ..TaskStatus::default()
        }
    }
}

/// `{"ContainerID", "PID", "ExitCode"}` (Go ints, always emitted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    #[serde(rename = "ContainerID", default)]
    pub container_id: String,
    #[serde(rename = "PID", default)]
    pub pid: i64,
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i64,
}

/// `{"Ports"?}` (host-mode published ports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortStatus {
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<PortConfig>,
}

/// `{"Network": Network, "Addresses": ["10.0.1.3/24"]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkAttachment {
    #[serde(default, deserialize_with = "nullable")]
    pub network: Network,
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<String>,
}

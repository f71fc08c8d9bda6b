//! The engine's own container model. The API layer converts Docker JSON to and from these types;
//! nothing here knows the wire format.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Transport protocol of a container port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A container port such as `80/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortProto {
    pub port: u16,
    pub proto: Proto,
}

impl PortProto {
    /// Parses `80`, `80/tcp` or `53/udp`.
    pub fn parse(text: &str) -> Option<PortProto> {
        let (port, proto) = match text.split_once('/') {
            Some((p, "tcp")) | Some((p, "")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some(_) => return None,
            None => (text, Proto::Tcp),
        };
        let port: u16 = port.parse().ok()?;
        (port != 0).then_some(PortProto { port, proto })
    }
}

impl std::fmt::Display for PortProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.proto.as_str())
    }
}

/// A request to publish a container port on the host (`-p [ip:][host:]ctr[/proto]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    pub container: PortProto,
    pub host_ip: Option<IpAddr>,
    /// `None` asks for an ephemeral port.
    pub host_port: Option<u16>,
}

/// A port actually published, as reported by `ps` and `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub container: PortProto,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicyName {
    #[default]
    No,
    Always,
    UnlessStopped,
    OnFailure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub name: RestartPolicyName,
    pub maximum_retry_count: u32,
}

impl RestartPolicy {
    /// Parses the policy name Docker accepts in `HostConfig.RestartPolicy.Name`.
    pub fn from_parts(name: &str, max: i64) -> Result<RestartPolicy, String> {
        let name = match name {
            "" | "no" => RestartPolicyName::No,
            "always" => RestartPolicyName::Always,
            "unless-stopped" => RestartPolicyName::UnlessStopped,
            "on-failure" => RestartPolicyName::OnFailure,
            other => return Err(format!("invalid restart policy '{other}'")),
        };
        if max < 0 {
            return Err(format!("invalid restart policy: maximum retry count can't be negative ({max})"));
        }
        if max > 0 && name != RestartPolicyName::OnFailure {
            return Err(format!(
                "invalid restart policy: maximum retry count can only be used with 'on-failure'"
            ));
        }
        Ok(RestartPolicy { name, maximum_retry_count: max as u32 })
    }

    pub fn name_str(&self) -> &'static str {
        match self.name {
            RestartPolicyName::No => "no",
            RestartPolicyName::Always => "always",
            RestartPolicyName::UnlessStopped => "unless-stopped",
            RestartPolicyName::OnFailure => "on-failure",
        }
    }
}

/// A bind mount (`-v /host:/ctr[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: String,
    pub destination: String,
    pub readonly: bool,
}

/// Container network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Bridge,
    None,
    Host,
}

impl NetworkMode {
    pub fn parse(text: &str) -> Result<NetworkMode, String> {
        match text {
            "" | "default" | "bridge" => Ok(NetworkMode::Bridge),
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            other => Err(format!("network {other} not found")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
        }
    }
}

/// Everything a client asked for when creating a container (image defaults not yet applied).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateSpec {
    pub name: Option<String>,
    pub image: String,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub hostname: String,
    pub domainname: String,
    pub labels: BTreeMap<String, String>,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub exposed_ports: Vec<PortProto>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<i64>,
    /// `Config.Healthcheck`; fields left zero/empty are taken from the image's healthcheck.
    #[serde(default)]
    pub healthcheck: Option<HealthConfig>,
    pub host: HostSpec,
}

/// A healthcheck (Docker's `HealthConfig`): `test` is `["NONE"]`, `["CMD", args…]` or
/// `["CMD-SHELL", "cmd"]` (empty: inherit); durations in nanoseconds, 0 meaning the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthConfig {
    pub test: Vec<String>,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub start_interval: i64,
    pub retries: i64,
}

/// A container's health (`State.Health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// One probe run (`State.Health.Log[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResult {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub exit_code: i64,
    pub output: String,
}

/// `State.Health`: status, consecutive failures and the last results (at most 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    pub failing_streak: u32,
    pub log: Vec<HealthResult>,
}

/// The host-side part of a container (Docker's `HostConfig`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostSpec {
    pub binds: Vec<BindMount>,
    pub tmpfs: BTreeMap<String, String>,
    pub port_bindings: Vec<PortBinding>,
    pub publish_all: bool,
    pub restart_policy: RestartPolicy,
    pub auto_remove: bool,
    pub memory: i64,
    pub memory_swap: i64,
    pub nano_cpus: i64,
    pub cpu_shares: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
    pub pids_limit: Option<i64>,
    pub init: Option<bool>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    pub readonly_rootfs: bool,
    pub network_mode: NetworkMode,
    pub dns: Vec<String>,
    pub extra_hosts: Vec<String>,
    /// Swarm overlay networks the container joins (`eth1`, `eth2`, … in this order); its
    /// default route stays on the bridge (`eth0`).
    #[serde(default)]
    pub overlays: Vec<OverlayAttachment>,
}

/// Called by the engine around the life of a container's network namespace when the container
/// joins overlay networks (the swarm agent installs one: service discovery DNS and VIP rules must
/// be in place before the container's process starts). Runs in blocking context.
pub trait NetnsHook: Send + Sync + 'static {
    /// The namespace at `netns_path` exists with the container's overlay interfaces; its process
    /// has not started yet. An error fails the start.
    fn netns_ready(&self, container_id: &str, netns_path: &std::path::Path, overlays: &[OverlayAttachment]) -> Result<(), String>;
    /// The namespace is going away (the container stopped).
    fn netns_gone(&self, container_id: &str);
}

/// One overlay network interface of a container: the overlay (by VXLAN ID) must be known to the
/// engine's mesh ([`shoal_net::Mesh::apply`]) before the container starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayAttachment {
    pub network_id: String,
    pub network_name: String,
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

/// The resolved configuration a container runs with (image defaults applied).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub image_ref: String,
    pub image_id: String,
    pub path: String,
    pub args: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub hostname: String,
    pub domainname: String,
    pub labels: BTreeMap<String, String>,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub exposed_ports: Vec<PortProto>,
    pub stop_signal: String,
    pub stop_timeout: Option<i64>,
    /// The effective healthcheck (image's merged with the container's); `None` or `["NONE"]`
    /// means no probes.
    #[serde(default)]
    pub healthcheck: Option<HealthConfig>,
    pub host: HostSpec,
}

impl ContainerConfig {
    /// The healthcheck probes run with, if any (`CMD`/`CMD-SHELL` with a command).
    pub fn active_healthcheck(&self) -> Option<&HealthConfig> {
        self.healthcheck.as_ref().filter(|h| crate::health::is_active(h))
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Restarting => "restarting",
            Status::Removing => "removing",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    pub status: Status,
    pub pid: i32,
    pub shim_pid: i32,
    pub exit_code: i64,
    pub error: String,
    pub oom_killed: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub restart_count: u32,
    /// Set by `docker stop`/`kill` so restart policies (and unless-stopped at boot) leave it down.
    pub manually_stopped: bool,
    /// Whether the container was ever started (drives `restarting` vs `created`).
    pub has_been_started: bool,
    /// Health of a container with a healthcheck (reset to `starting` at every start); kept
    /// after it stops, as Docker does.
    #[serde(default)]
    pub health: Option<Health>,
}

impl Default for ContainerState {
    fn default() -> Self {
        ContainerState {
            status: Status::Created,
            pid: 0,
            shim_pid: 0,
            exit_code: 0,
            error: String::new(),
            oom_killed: false,
            started_at: None,
            finished_at: None,
            restart_count: 0,
            manually_stopped: false,
            has_been_started: false,
            health: None,
        }
    }
}

/// A container's attachment to the node-local bridge while it runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkState {
    pub ip: Option<Ipv4Addr>,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mac: String,
    pub ports: Vec<PublishedPort>,
}

/// The persisted record of one container (`<data-root>/containers/<id>/container.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub created: DateTime<Utc>,
    pub config: ContainerConfig,
    pub state: ContainerState,
    pub network: NetworkState,
    pub log_path: String,
}

impl ContainerRecord {
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }
}

/// Condition for `wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    NotRunning,
    NextExit,
    Removed,
}

#[derive(Debug, Clone)]
pub struct WaitOutcome {
    pub status_code: i64,
    pub error: Option<String>,
}

/// One engine event (`docker events`).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub kind: &'static str,
    pub action: String,
    pub actor_id: String,
    pub attributes: BTreeMap<String, String>,
    pub time_nano: i64,
}

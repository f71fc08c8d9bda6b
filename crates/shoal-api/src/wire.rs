//! Conversions from engine types to Docker's JSON shapes, and time formatting the Go CLI accepts.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use shoal_engine::{ContainerRecord, HealthConfig, NetworkMode, PublishedPort, Status};

/// RFC 3339 with nanoseconds trimmed the way Go prints them; zero time when absent.
pub fn time(t: Option<DateTime<Utc>>) -> String {
    match t {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => "0001-01-01T00:00:00Z".into(),
    }
}

/// Go's `units.HumanDuration`.
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs < 1 {
        return "Less than a second".into();
    }
    if secs == 1 {
        return "1 second".into();
    }
    if secs < 60 {
        return format!("{secs} seconds");
    }
    let mins = d.num_minutes();
    if mins == 1 {
        return "About a minute".into();
    }
    if mins < 60 {
        return format!("{mins} minutes");
    }
    let hours = (d.num_seconds() as f64 / 3600.0).round() as i64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", hours / 24 / 365)
}

/// The `Status` column text of `docker ps`.
pub fn status_text(rec: &ContainerRecord) -> String {
    let now = Utc::now();
    match rec.state.status {
        Status::Running => {
            let up = human_duration(now - rec.state.started_at.unwrap_or(now));
            match &rec.state.health {
                Some(h) if h.status == shoal_engine::HealthStatus::Starting => format!("Up {up} (health: starting)"),
                Some(h) => format!("Up {up} ({})", h.status.as_str()),
                None => format!("Up {up}"),
            }
        }
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            rec.state.exit_code,
            human_duration(now - rec.state.finished_at.unwrap_or(now))
        ),
        Status::Exited => match rec.state.finished_at {
            Some(f) => format!("Exited ({}) {} ago", rec.state.exit_code, human_duration(now - f)),
            None => format!("Exited ({})", rec.state.exit_code),
        },
        Status::Created => "Created".into(),
        Status::Removing => "Removal In Progress".into(),
        Status::Dead => "Dead".into(),
    }
}

/// The container's health for `ps --filter health=`: `starting`, `healthy`, `unhealthy` or
/// `none` (no healthcheck).
pub fn health_text(rec: &ContainerRecord) -> &'static str {
    rec.state.health.as_ref().map(|h| h.status.as_str()).unwrap_or("none")
}

/// Docker's `HealthConfig` JSON (zero fields omitted).
fn healthcheck_json(h: &HealthConfig) -> Value {
    let mut m = serde_json::Map::new();
    if !h.test.is_empty() {
        m.insert("Test".into(), json!(h.test));
    }
    for (k, v) in [("Interval", h.interval), ("Timeout", h.timeout), ("StartPeriod", h.start_period), ("StartInterval", h.start_interval), ("Retries", h.retries)] {
        if v != 0 {
            m.insert(k.into(), json!(v));
        }
    }
    Value::Object(m)
}

/// `State.Health`.
fn health_json(h: &shoal_engine::Health) -> Value {
    let log: Vec<Value> = h
        .log
        .iter()
        .map(|r| json!({"Start": time(Some(r.start)), "End": time(Some(r.end)), "ExitCode": r.exit_code, "Output": r.output}))
        .collect();
    json!({"Status": h.status.as_str(), "FailingStreak": h.failing_streak, "Log": log})
}

fn command_text(rec: &ContainerRecord) -> String {
    std::iter::once(rec.config.path.clone()).chain(rec.config.args.iter().cloned()).collect::<Vec<_>>().join(" ")
}

fn host_ip_text(p: &PublishedPort) -> String {
    p.host_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "0.0.0.0".into())
}

/// `NetworkSettings.Ports`: exposed ports map to their bindings (or null).
fn ports_map(rec: &ContainerRecord) -> Value {
    let mut map = serde_json::Map::new();
    for port in &rec.config.exposed_ports {
        map.insert(port.to_string(), Value::Null);
    }
    for p in &rec.network.ports {
        let entry = map.entry(p.container.to_string()).or_insert(Value::Array(vec![]));
        if entry.is_null() {
            *entry = Value::Array(vec![]);
        }
        if let Value::Array(a) = entry {
            a.push(json!({"HostIp": host_ip_text(p), "HostPort": p.host_port.to_string()}));
        }
    }
    Value::Object(map)
}

fn network_entry(rec: &ContainerRecord) -> Value {
    let ip = rec.network.ip.map(|i| i.to_string()).unwrap_or_default();
    let gw = rec.network.gateway.map(|i| i.to_string()).unwrap_or_default();
    json!({
        "IPAMConfig": null, "Links": null, "Aliases": null, "MacAddress": rec.network.mac,
        "DriverOpts": null, "NetworkID": "bridge", "EndpointID": if ip.is_empty() { String::new() } else { rec.id.clone() },
        "Gateway": gw, "IPAddress": ip, "IPPrefixLen": if rec.network.ip.is_some() { rec.network.prefix_len } else { 0 },
        "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "DNSNames": null
    })
}

fn networks(rec: &ContainerRecord) -> Value {
    let mode = rec.config.host.network_mode;
    let mut map = serde_json::Map::new();
    match mode {
        NetworkMode::Bridge => {
            map.insert("bridge".into(), network_entry(rec));
        }
        other => {
            map.insert(other.as_str().into(), json!({"NetworkID": other.as_str(), "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "MacAddress": ""}));
        }
    }
    Value::Object(map)
}

fn mounts(rec: &ContainerRecord) -> Value {
    let mut out: Vec<Value> = rec
        .config
        .host
        .binds
        .iter()
        .map(|b| json!({"Type": "bind", "Source": b.source, "Destination": b.destination, "Mode": if b.readonly { "ro" } else { "" }, "RW": !b.readonly, "Propagation": "rprivate"}))
        .collect();
    for dest in rec.config.host.tmpfs.keys() {
        out.push(json!({"Type": "tmpfs", "Source": "", "Destination": dest, "Mode": "", "RW": true, "Propagation": ""}));
    }
    Value::Array(out)
}

/// `GET /containers/json` item.
pub fn container_summary(rec: &ContainerRecord) -> Value {
    let mut ports: Vec<Value> = rec
        .network
        .ports
        .iter()
        .map(|p| json!({"IP": host_ip_text(p), "PrivatePort": p.container.port, "PublicPort": p.host_port, "Type": p.container.proto.as_str()}))
        .collect();
    for port in &rec.config.exposed_ports {
        if !rec.network.ports.iter().any(|p| p.container == *port) {
            ports.push(json!({"PrivatePort": port.port, "Type": port.proto.as_str()}));
        }
    }
    json!({
        "Id": rec.id,
        "Names": [format!("/{}", rec.name)],
        "Image": rec.config.image_ref,
        "ImageID": rec.config.image_id,
        "Command": command_text(rec),
        "Created": rec.created.timestamp(),
        "Ports": ports,
        "Labels": rec.config.labels,
        "State": rec.state.status.as_str(),
        "Status": status_text(rec),
        "HostConfig": {"NetworkMode": rec.config.host.network_mode.as_str()},
        "NetworkSettings": {"Networks": networks(rec)},
        "Mounts": mounts(rec),
    })
}

fn opt_vec(v: &Option<Vec<String>>) -> Value {
    match v {
        Some(v) => json!(v),
        None => Value::Null,
    }
}

/// `GET /containers/{id}/json`.
pub fn container_inspect(rec: &ContainerRecord, dirs_root: &str) -> Value {
    let cfg = &rec.config;
    let host = &cfg.host;
    let exposed: BTreeMap<String, Value> = cfg.exposed_ports.iter().map(|p| (p.to_string(), json!({}))).collect();
    let mut port_bindings = serde_json::Map::new();
    for b in &host.port_bindings {
        let entry = port_bindings.entry(b.container.to_string()).or_insert(Value::Array(vec![]));
        if let Value::Array(a) = entry {
            a.push(json!({"HostIp": b.host_ip.map(|i| i.to_string()).unwrap_or_default(), "HostPort": b.host_port.map(|p| p.to_string()).unwrap_or_default()}));
        }
    }
    let binds: Vec<String> = host
        .binds
        .iter()
        .map(|b| if b.readonly { format!("{}:{}:ro", b.source, b.destination) } else { format!("{}:{}", b.source, b.destination) })
        .collect();
    let running = rec.state.status == Status::Running;
    let mut out = json!({
        "Id": rec.id,
        "Created": time(Some(rec.created)),
        "Path": cfg.path,
        "Args": cfg.args,
        "State": {
            "Status": rec.state.status.as_str(),
            "Running": running || rec.state.status == Status::Restarting,
            "Paused": false,
            "Restarting": rec.state.status == Status::Restarting,
            "OOMKilled": rec.state.oom_killed,
            "Dead": rec.state.status == Status::Dead,
            "Pid": rec.state.pid,
            "ExitCode": rec.state.exit_code,
            "Error": rec.state.error,
            "StartedAt": time(rec.state.started_at),
            "FinishedAt": time(rec.state.finished_at),
        },
        "Image": cfg.image_id,
        "ResolvConfPath": format!("{dirs_root}/resolv.conf"),
        "HostnamePath": format!("{dirs_root}/hostname"),
        "HostsPath": format!("{dirs_root}/hosts"),
        "LogPath": rec.log_path,
        "Name": format!("/{}", rec.name),
        "RestartCount": rec.state.restart_count,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": null,
        "HostConfig": {
            "Binds": if binds.is_empty() { Value::Null } else { json!(binds) },
            "ContainerIDFile": "",
            "LogConfig": {"Type": "json-file", "Config": {}},
            "NetworkMode": host.network_mode.as_str(),
            "PortBindings": port_bindings,
            "RestartPolicy": {"Name": host.restart_policy.name_str(), "MaximumRetryCount": host.restart_policy.maximum_retry_count},
            "AutoRemove": host.auto_remove,
            "VolumeDriver": "",
            "VolumesFrom": null,
            "CapAdd": if host.cap_add.is_empty() { Value::Null } else { json!(host.cap_add) },
            "CapDrop": if host.cap_drop.is_empty() { Value::Null } else { json!(host.cap_drop) },
            "Dns": host.dns,
            "DnsOptions": [],
            "DnsSearch": [],
            "ExtraHosts": if host.extra_hosts.is_empty() { Value::Null } else { json!(host.extra_hosts) },
            "Privileged": host.privileged,
            "PublishAllPorts": host.publish_all,
            "ReadonlyRootfs": host.readonly_rootfs,
            "Tmpfs": host.tmpfs,
            "Init": host.init,
            "Memory": host.memory,
            "MemorySwap": host.memory_swap,
            "NanoCpus": host.nano_cpus,
            "CpuShares": host.cpu_shares,
            "CpuPeriod": host.cpu_period,
            "CpuQuota": host.cpu_quota,
            "PidsLimit": host.pids_limit,
            "ShmSize": 67108864,
            "Runtime": "shoal",
            "Isolation": "",
            "MaskedPaths": ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"],
            "ReadonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
        "GraphDriver": {"Name": "overlay2", "Data": {
            "MergedDir": format!("{dirs_root}/rootfs"), "UpperDir": format!("{dirs_root}/upper"), "WorkDir": format!("{dirs_root}/work")
        }},
        "Mounts": mounts(rec),
        "Config": {
            "Hostname": cfg.hostname,
            "Domainname": cfg.domainname,
            "User": cfg.user,
            "AttachStdin": cfg.attach_stdin,
            "AttachStdout": cfg.attach_stdout,
            "AttachStderr": cfg.attach_stderr,
            "ExposedPorts": if exposed.is_empty() { Value::Null } else { json!(exposed) },
            "Tty": cfg.tty,
            "OpenStdin": cfg.open_stdin,
            "StdinOnce": cfg.stdin_once,
            "Env": cfg.env,
            "Cmd": opt_vec(&cfg.cmd),
            "Image": cfg.image_ref,
            "Volumes": null,
            "WorkingDir": cfg.working_dir,
            "Entrypoint": opt_vec(&cfg.entrypoint),
            "OnBuild": null,
            "Labels": cfg.labels,
            "StopSignal": cfg.stop_signal,
            "StopTimeout": cfg.stop_timeout,
        },
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": if rec.network.ip.is_some() { rec.id.clone() } else { String::new() },
            "SandboxKey": "",
            "HairpinMode": false,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "Ports": ports_map(rec),
            "SecondaryIPAddresses": null,
            "SecondaryIPv6Addresses": null,
            "EndpointID": if rec.network.ip.is_some() { rec.id.clone() } else { String::new() },
            "Gateway": rec.network.gateway.map(|g| g.to_string()).unwrap_or_default(),
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "IPAddress": rec.network.ip.map(|i| i.to_string()).unwrap_or_default(),
            "IPPrefixLen": if rec.network.ip.is_some() { rec.network.prefix_len } else { 0 },
            "IPv6Gateway": "",
            "MacAddress": rec.network.mac,
            "Networks": networks(rec),
        },
    });
    if let Some(h) = &rec.state.health {
        out["State"]["Health"] = health_json(h);
    }
    if let Some(h) = &cfg.healthcheck {
        out["Config"]["Healthcheck"] = healthcheck_json(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(chrono::Duration::milliseconds(300)), "Less than a second");
        assert_eq!(human_duration(chrono::Duration::seconds(5)), "5 seconds");
        assert_eq!(human_duration(chrono::Duration::seconds(61)), "About a minute");
        assert_eq!(human_duration(chrono::Duration::minutes(5)), "5 minutes");
        assert_eq!(human_duration(chrono::Duration::hours(3)), "3 hours");
        assert_eq!(human_duration(chrono::Duration::days(3)), "3 days");
    }

    #[test]
    fn times_are_go_compatible() {
        assert_eq!(time(None), "0001-01-01T00:00:00Z");
        let t: DateTime<Utc> = "2025-01-02T03:04:05.120Z".parse().unwrap();
        assert_eq!(time(Some(t)), "2025-01-02T03:04:05.120Z");
    }
}

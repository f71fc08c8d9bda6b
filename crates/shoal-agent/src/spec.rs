//! Task → engine container conversion (moby `daemon/cluster/executor/container/container.go`).

use std::collections::BTreeMap;

use shoal_engine::{BindMount, CreateSpec, HealthConfig, HostSpec, NetworkMode, OverlayAttachment, PortBinding, PortProto, RestartPolicy};
use shoal_types::{Mount, PortProtocol, PublishMode, Task};

/// Label namespace of swarm containers.
pub const LABEL_PREFIX: &str = "com.docker.swarm";
/// `com.docker.swarm.task` (always `""`; marks a container as a swarm task).
pub const LABEL_TASK: &str = "com.docker.swarm.task";
/// `com.docker.swarm.task.id`: how the agent finds a task's container.
pub const LABEL_TASK_ID: &str = "com.docker.swarm.task.id";
pub const LABEL_TASK_NAME: &str = "com.docker.swarm.task.name";
pub const LABEL_NODE_ID: &str = "com.docker.swarm.node.id";
pub const LABEL_SERVICE_ID: &str = "com.docker.swarm.service.id";
pub const LABEL_SERVICE_NAME: &str = "com.docker.swarm.service.name";

/// Default stop grace period in seconds (swarmkit `StopGracePeriod` default 10 s).
pub const DEFAULT_STOP_GRACE_SECS: i64 = 10;

/// Values available to the spec's Go-style placeholders (`{{.Task.Slot}}` …).
#[derive(Debug, Clone, Default)]
pub struct TemplateContext {
    pub node_hostname: String,
}

/// The container labels of `task`: the spec's labels, then the task's, then the swarm system
/// labels, each overriding the previous.
pub fn task_labels(task: &Task) -> BTreeMap<String, String> {
    let mut labels = task.spec.container_spec.labels.clone();
    labels.extend(task.labels.clone());
    labels.insert(LABEL_TASK.into(), String::new());
    labels.insert(LABEL_TASK_ID.into(), task.id.clone());
    labels.insert(LABEL_TASK_NAME.into(), task.container_name());
    labels.insert(LABEL_NODE_ID.into(), task.node_id.clone());
    labels.insert(LABEL_SERVICE_ID.into(), task.service_id.clone());
    labels.insert(LABEL_SERVICE_NAME.into(), task.service_name().to_string());
    labels
}

/// Stop grace period of the task in whole seconds (Go truncates `Duration.Seconds()`).
pub fn stop_grace_secs(task: &Task) -> i64 {
    match task.spec.container_spec.stop_grace_period {
        Some(ns) if ns >= 0 => ns / 1_000_000_000,
        _ => DEFAULT_STOP_GRACE_SECS,
    }
}

/// Expands the placeholders Docker supports in `Hostname`, `Env` and mount paths:
/// `{{.Service.ID}}`, `{{.Service.Name}}`, `{{.Task.ID}}`, `{{.Task.Name}}`, `{{.Task.Slot}}`,
/// `{{.Node.ID}}`, `{{.Node.Hostname}}` (spaces inside the braces allowed). Anything else is
/// left as written.
pub fn expand(text: &str, task: &Task, ctx: &TemplateContext) -> String {
    if !text.contains("{{") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = after[..end].trim();
        let value = match key {
            ".Service.ID" => Some(task.service_id.clone()),
            ".Service.Name" => Some(task.service_name().to_string()),
            ".Task.ID" => Some(task.id.clone()),
            ".Task.Name" => Some(task.container_name()),
            ".Task.Slot" => Some(if task.slot > 0 { task.slot.to_string() } else { task.node_id.clone() }),
            ".Node.ID" => Some(task.node_id.clone()),
            ".Node.Hostname" => Some(ctx.node_hostname.clone()),
            _ => None,
        };
        match value {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Swarm's `"IP host1 host2"` (or Docker's `host:IP`) entries as Docker `ExtraHosts` (`host:IP`).
pub fn extra_hosts(hosts: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in hosts {
        let parts: Vec<&str> = entry.split_whitespace().collect();
        match parts.as_slice() {
            [] => {}
            [single] => out.push((*single).to_string()),
            [ip, names @ ..] => out.extend(names.iter().map(|n| format!("{n}:{ip}"))),
        }
    }
    out
}

/// `TmpfsOptions {SizeBytes, Mode}` → mount options (`size=N`, `mode=0NNN`).
fn tmpfs_options(m: &Mount) -> String {
    let mut opts = Vec::new();
    if let Some(o) = &m.tmpfs_options {
        if let Some(size) = o.get("SizeBytes").and_then(|v| v.as_i64()).filter(|s| *s > 0) {
            opts.push(format!("size={size}"));
        }
        if let Some(mode) = o.get("Mode").and_then(|v| v.as_u64()).filter(|m| *m != 0) {
            opts.push(format!("mode={mode:o}"));
        }
    }
    if m.read_only {
        opts.push("ro".into());
    }
    opts.join(",")
}

/// The engine create request for `task` (its container `<service>.<slot|node>.<task id>`).
/// Fails with a message (the task is then REJECTED) for what the engine cannot provide.
pub fn create_spec(task: &Task, ctx: &TemplateContext) -> Result<CreateSpec, String> {
    let c = &task.spec.container_spec;
    if c.image.is_empty() {
        return Err("task: container spec has no image".into());
    }
    let mut host = HostSpec {
        restart_policy: RestartPolicy::default(), // "no": swarm restarts by creating new tasks
        network_mode: NetworkMode::Bridge,
        init: c.init,
        readonly_rootfs: c.read_only,
        cap_add: c.capability_add.clone(),
        cap_drop: c.capability_drop.clone(),
        extra_hosts: extra_hosts(&c.hosts),
        dns: c.dns_config.as_ref().map(|d| d.nameservers.clone()).unwrap_or_default(),
        ..HostSpec::default()
    };
    if let Some(limits) = task.spec.resources.as_ref().and_then(|r| r.limits.as_ref()) {
        host.nano_cpus = limits.nano_cpus;
        host.memory = limits.memory_bytes;
        if limits.pids > 0 {
            host.pids_limit = Some(limits.pids);
        }
    }
    // Host-mode published ports bind on this node only, like `docker run -p`.
    for p in task.endpoint.iter().flat_map(|e| e.ports.iter()).filter(|p| p.publish_mode == PublishMode::Host) {
        let proto = match p.protocol {
            PortProtocol::Tcp => shoal_engine::Proto::Tcp,
            PortProtocol::Udp => shoal_engine::Proto::Udp,
            PortProtocol::Sctp => return Err("host-mode port publishing does not support sctp on this node".into()),
        };
        let container = u16::try_from(p.target_port).map_err(|_| format!("invalid target port {}", p.target_port))?;
        let host_port = match p.published_port {
            0 => None,
            n => Some(u16::try_from(n).map_err(|_| format!("invalid published port {n}"))?),
        };
        host.port_bindings.push(PortBinding { container: PortProto { port: container, proto }, host_ip: None, host_port });
    }
    for a in &task.networks_attachments {
        let vni = a.network.vni().ok_or_else(|| format!("network {} has no VXLAN ID", a.network.spec.name))?;
        let addr = a.addresses.first().ok_or_else(|| format!("no address on network {}", a.network.spec.name))?;
        let (ip, len) = addr.split_once('/').unwrap_or((addr.as_str(), "24"));
        let (Ok(ip), Ok(prefix_len)) = (ip.parse(), len.parse()) else {
            return Err(format!("invalid address {addr:?} on network {}", a.network.spec.name));
        };
        host.overlays.push(OverlayAttachment {
            network_id: a.network.id.clone(),
            network_name: a.network.spec.name.clone(),
            vni,
            ip,
            prefix_len,
        });
    }
    // On a user overlay network the container asks the embedded DNS server (service names;
    // everything else is forwarded to this node's resolvers).
    if host.dns.is_empty() && task.networks_attachments.iter().any(|a| !a.network.spec.ingress) {
        host.dns = vec![crate::discovery::EMBEDDED_DNS.to_string()];
    }
    for m in &c.mounts {
        let target = expand(&m.target, task, ctx);
        match m.kind.as_str() {
            "bind" => host.binds.push(BindMount {
                source: expand(&m.source, task, ctx),
                destination: target,
                readonly: m.read_only,
            }),
            "tmpfs" => {
                host.tmpfs.insert(target, tmpfs_options(m));
            }
            other => {
                let kind = if other.is_empty() { "volume" } else { other };
                return Err(format!("invalid mount config: mount type \"{kind}\" is not supported by this node"));
            }
        }
    }
    Ok(CreateSpec {
        name: Some(task.container_name()),
        image: c.image.clone(),
        entrypoint: (!c.command.is_empty()).then(|| c.command.clone()),
        cmd: (!c.args.is_empty()).then(|| c.args.clone()),
        env: c.env.iter().map(|e| expand(e, task, ctx)).collect(),
        working_dir: c.dir.clone(),
        user: c.user.clone(),
        hostname: expand(&c.hostname, task, ctx),
        labels: task_labels(task),
        tty: c.tty,
        open_stdin: c.open_stdin,
        stop_signal: (!c.stop_signal.is_empty()).then(|| c.stop_signal.clone()),
        stop_timeout: Some(stop_grace_secs(task)),
        healthcheck: c.healthcheck.as_ref().map(|h| HealthConfig {
            test: h.test.clone(),
            interval: h.interval,
            timeout: h.timeout,
            start_period: h.start_period,
            start_interval: h.start_interval,
            retries: h.retries,
        }),
        host,
        ..CreateSpec::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::{Annotations, ContainerSpec, Limit, ResourceRequirements, TaskSpec};

    fn task() -> Task {
        let mut labels = BTreeMap::new();
        labels.insert("com.docker.swarm.task.id".to_string(), "spoofed".to_string());
        labels.insert("app".to_string(), "web".to_string());
        Task {
            id: "t0000000000000000000000001".into(),
            service_id: "s1".into(),
            node_id: "n1".into(),
            slot: 2,
            service_annotations: Some(Annotations { name: "web".into(), labels: BTreeMap::new() }),
            spec: TaskSpec {
                container_spec: ContainerSpec {
                    image: "busybox:latest".into(),
                    command: vec!["sh".into(), "-c".into()],
                    args: vec!["sleep 1000".into()],
                    env: vec!["A=1".into(), "SLOT={{.Task.Slot}}".into()],
                    dir: "/tmp".into(),
                    user: "nobody".into(),
                    hostname: "{{.Service.Name}}-{{ .Task.Slot }}-{{.Node.Hostname}}".into(),
                    labels,
                    tty: true,
                    open_stdin: true,
                    stop_signal: "SIGQUIT".into(),
                    stop_grace_period: Some(3_500_000_000),
                    init: Some(true),
                    healthcheck: Some(shoal_types::HealthConfig {
                        test: vec!["CMD-SHELL".into(), "true".into()],
                        interval: 500_000_000,
                        retries: 2,
                        ..Default::default()
                    }),
                    hosts: vec!["10.0.0.1 db cache".into(), "x:10.0.0.2".into()],
                    mounts: vec![
                        Mount { kind: "bind".into(), source: "/srv".into(), target: "/data".into(), read_only: true, ..Default::default() },
                        Mount {
                            kind: "tmpfs".into(),
                            target: "/scratch".into(),
                            tmpfs_options: Some(serde_json::json!({"SizeBytes": 1048576, "Mode": 0o1777})),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                resources: Some(ResourceRequirements {
                    limits: Some(Limit { nano_cpus: 500_000_000, memory_bytes: 64 << 20, pids: 100 }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn converts_container_spec() {
        let t = task();
        let ctx = TemplateContext { node_hostname: "h1".into() };
        let s = create_spec(&t, &ctx).unwrap();
        assert_eq!(s.name.as_deref(), Some("web.2.t0000000000000000000000001"));
        assert_eq!(s.image, "busybox:latest");
        assert_eq!(s.entrypoint, Some(vec!["sh".to_string(), "-c".to_string()]));
        assert_eq!(s.cmd, Some(vec!["sleep 1000".to_string()]));
        assert_eq!(s.env, vec!["A=1".to_string(), "SLOT=2".to_string()]);
        assert_eq!(s.working_dir, "/tmp");
        assert_eq!(s.user, "nobody");
        assert_eq!(s.hostname, "web-2-h1");
        assert!(s.tty && s.open_stdin);
        assert_eq!(s.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(s.stop_timeout, Some(3));
        assert_eq!(s.host.restart_policy.name_str(), "no");
        assert_eq!(s.host.init, Some(true));
        assert_eq!(s.host.nano_cpus, 500_000_000);
        assert_eq!(s.host.memory, 64 << 20);
        assert_eq!(s.host.pids_limit, Some(100));
        assert_eq!(s.host.extra_hosts, vec!["db:10.0.0.1", "cache:10.0.0.1", "x:10.0.0.2"]);
        assert_eq!(s.host.binds.len(), 1);
        assert_eq!(s.host.binds[0].source, "/srv");
        assert_eq!(s.host.binds[0].destination, "/data");
        assert!(s.host.binds[0].readonly);
        assert_eq!(s.host.tmpfs.get("/scratch").map(String::as_str), Some("size=1048576,mode=1777"));
        // System labels override user labels.
        assert_eq!(s.labels[LABEL_TASK], "");
        assert_eq!(s.labels[LABEL_TASK_ID], t.id);
        assert_eq!(s.labels[LABEL_TASK_NAME], "web.2.t0000000000000000000000001");
        assert_eq!(s.labels[LABEL_NODE_ID], "n1");
        assert_eq!(s.labels[LABEL_SERVICE_ID], "s1");
        assert_eq!(s.labels[LABEL_SERVICE_NAME], "web");
        assert_eq!(s.labels["app"], "web");
        let h = s.healthcheck.unwrap();
        assert_eq!((h.test, h.interval, h.retries, h.timeout), (vec!["CMD-SHELL".to_string(), "true".to_string()], 500_000_000, 2, 0));
    }

    #[test]
    fn defaults_and_global_naming() {
        let mut t = task();
        t.slot = 0;
        t.spec.container_spec = ContainerSpec { image: "nginx".into(), ..Default::default() };
        t.spec.resources = None;
        let s = create_spec(&t, &TemplateContext::default()).unwrap();
        assert_eq!(s.name.as_deref(), Some("web.n1.t0000000000000000000000001"));
        assert_eq!(s.entrypoint, None);
        assert_eq!(s.cmd, None);
        assert_eq!(s.stop_signal, None);
        assert_eq!(s.stop_timeout, Some(10));
        assert_eq!(s.host.pids_limit, None);
        assert_eq!(s.hostname, "");
        assert!(s.healthcheck.is_none());
    }

    #[test]
    fn rejects_what_the_engine_cannot_do() {
        let mut t = task();
        t.spec.container_spec.mounts = vec![Mount { kind: "volume".into(), source: "v".into(), target: "/v".into(), ..Default::default() }];
        let e = create_spec(&t, &TemplateContext::default()).unwrap_err();
        assert!(e.contains("\"volume\""), "{e}");
        t.spec.container_spec.image.clear();
        assert!(create_spec(&t, &TemplateContext::default()).is_err());
    }

    #[test]
    fn expand_leaves_unknown_placeholders() {
        let t = task();
        let ctx = TemplateContext::default();
        assert_eq!(expand("{{.Foo}}-{{.Task.ID}}", &t, &ctx), "{{.Foo}}-t0000000000000000000000001");
        assert_eq!(expand("a{{b", &t, &ctx), "a{{b");
        assert_eq!(expand("{{.Service.ID}}/{{.Node.ID}}/{{.Task.Name}}", &t, &ctx), "s1/n1/web.2.t0000000000000000000000001");
    }
}

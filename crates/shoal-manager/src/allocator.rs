//! The allocator step for published ports (swarmkit `manager/allocator/portallocator.go`,
//! `controlapi/service.go` `checkPortConflicts`).
//!
//! A service's `Endpoint` records the `EndpointSpec` it was allocated for and its ports with
//! `PublishedPort` filled in: ingress ports with `PublishedPort` 0 get one from the dynamic range
//! 30000–32767, unique cluster-wide per protocol (a port allocated before is kept across
//! updates); host-mode ports are copied as they are (the node binds them). `VirtualIPs` has one
//! address per network the service's tasks join ([`task_networks`]) in VIP mode; the addresses
//! themselves come from [`crate::netalloc`]. A task goes NEW → PENDING once its service is
//! allocated and it has its own overlay addresses.

use std::collections::HashSet;

use shoal_types::{Endpoint, EndpointSpec, PortConfig, PortProtocol, PublishMode, ResolutionMode, Service, ServiceSpec};

use crate::error::ManagerError;

pub const DYNAMIC_PORT_START: u32 = 30000;
pub const DYNAMIC_PORT_END: u32 = 32767;

/// For the API (create and update): refuse a spec whose published ports another service holds.
/// `service_id` is the service being updated (`""` on create). Docker's messages:
/// `port '8001' is already in use by service 'web' (<id>) as an ingress port` (or `as a
/// host-published port`).
pub fn check_port_conflicts(services: &[Service], spec: &ServiceSpec, service_id: &str) -> Result<(), String> {
    let key = |p: &PortConfig| (p.protocol, p.published_port);
    let mut ingress = HashSet::new();
    let mut host = HashSet::new();
    for p in spec.ports().iter().filter(|p| p.published_port != 0) {
        match p.publish_mode {
            PublishMode::Ingress => ingress.insert(key(p)),
            PublishMode::Host => host.insert(key(p)),
        };
    }
    if ingress.is_empty() && host.is_empty() {
        return Ok(());
    }
    for s in services.iter().filter(|s| service_id.is_empty() || s.id != service_id) {
        for p in s.spec.ports().iter().chain(s.endpoint.ports.iter()) {
            if p.published_port == 0 {
                continue;
            }
            match p.publish_mode {
                PublishMode::Host if ingress.contains(&key(p)) => {
                    return Err(format!(
                        "port '{}' is already in use by service '{}' ({}) as a host-published port",
                        p.published_port, s.spec.name, s.id
                    ));
                }
                PublishMode::Ingress if ingress.contains(&key(p)) || host.contains(&key(p)) => {
                    return Err(format!(
                        "port '{}' is already in use by service '{}' ({}) as an ingress port",
                        p.published_port, s.spec.name, s.id
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The endpoint spec the service asks for (default: VIP, no ports).
pub fn wanted_spec(service: &Service) -> EndpointSpec {
    service.spec.endpoint_spec.clone().unwrap_or_default()
}

/// True if the service publishes ports through the routing mesh.
pub fn uses_ingress(service: &Service) -> bool {
    wanted_spec(service).ports.iter().any(|p| p.publish_mode == PublishMode::Ingress)
}

/// The overlay networks (IDs) a task of `service` joins: the ingress network when the service
/// publishes ingress ports, then the networks of its task template, without duplicates.
pub fn task_networks(service: &Service, ingress_id: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(i) = ingress_id.filter(|_| uses_ingress(service)) {
        out.push(i.to_string());
    }
    let spec_nets = service.spec.task_template.networks.iter().chain(service.spec.networks.iter());
    for n in spec_nets {
        if !n.target.is_empty() && !out.contains(&n.target) {
            out.push(n.target.clone());
        }
    }
    out
}

/// The networks (IDs) the service needs a VIP on: all its task networks in VIP mode, none with
/// DNS round robin.
pub fn vip_networks(service: &Service, ingress_id: Option<&str>) -> Vec<String> {
    match wanted_spec(service).mode {
        ResolutionMode::Dnsrr => Vec::new(),
        _ => task_networks(service, ingress_id),
    }
}

/// True if the service's `Endpoint` was not allocated for its current spec (ports or VIPs).
pub fn needs_allocation(service: &Service, ingress_id: Option<&str>) -> bool {
    let want = wanted_spec(service);
    let mut have: Vec<&str> = service.endpoint.virtual_ips.iter().map(|v| v.network_id.as_str()).collect();
    have.sort_unstable();
    let mut vips = vip_networks(service, ingress_id);
    vips.sort_unstable();
    service.endpoint.spec != want || service.endpoint.ports.len() != want.ports.len() || have != vips
}

/// Allocate the endpoint of `service`; `others` are every other service (their allocated ingress
/// ports are taken).
pub fn allocate_endpoint(service: &Service, others: &[Service]) -> Result<Endpoint, ManagerError> {
    let want = wanted_spec(service);
    let mut used: HashSet<(PortProtocol, u32)> = HashSet::new();
    for s in others.iter().filter(|s| s.id != service.id) {
        for p in s.endpoint.ports.iter().filter(|p| p.publish_mode == PublishMode::Ingress && p.published_port != 0) {
            used.insert((p.protocol, p.published_port));
        }
    }
    // Explicit ingress ports first.
    for p in want.ports.iter().filter(|p| p.publish_mode == PublishMode::Ingress && p.published_port != 0) {
        if !used.insert((p.protocol, p.published_port)) {
            let holder = others
                .iter()
                .find(|s| s.endpoint.ports.iter().any(|q| q.protocol == p.protocol && q.published_port == p.published_port));
            return Err(ManagerError::PortConflict(match holder {
                Some(s) => format!(
                    "port '{}' is already in use by service '{}' ({}) as an ingress port",
                    p.published_port, s.spec.name, s.id
                ),
                None => format!("port '{}' is requested twice", p.published_port),
            }));
        }
    }
    let mut ports = Vec::with_capacity(want.ports.len());
    for p in &want.ports {
        let mut out = p.clone();
        if p.publish_mode == PublishMode::Ingress && p.published_port == 0 {
            // Keep the port this service had for the same target, if still free.
            let prev = service.endpoint.ports.iter().find(|q| {
                q.target_port == p.target_port
                    && q.protocol == p.protocol
                    && q.name == p.name
                    && (DYNAMIC_PORT_START..=DYNAMIC_PORT_END).contains(&q.published_port)
                    && !used.contains(&(q.protocol, q.published_port))
            });
            let port = match prev {
                Some(q) => q.published_port,
                None => (DYNAMIC_PORT_START..=DYNAMIC_PORT_END)
                    .find(|n| !used.contains(&(p.protocol, *n)))
                    .ok_or_else(|| ManagerError::PortsExhausted(service.spec.name.clone()))?,
            };
            used.insert((p.protocol, port));
            out.published_port = port;
        }
        ports.push(out);
    }
    Ok(Endpoint { spec: want, ports, virtual_ips: service.endpoint.virtual_ips.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(id: &str, name: &str, ports: &[(u32, u32, PublishMode)]) -> Service {
        let mut s = Service { id: id.into(), ..Default::default() };
        s.spec.name = name.into();
        s.spec.endpoint_spec = Some(EndpointSpec {
            ports: ports
                .iter()
                .map(|(t, p, m)| PortConfig { target_port: *t, published_port: *p, publish_mode: *m, ..Default::default() })
                .collect(),
            ..Default::default()
        });
        s
    }

    #[test]
    fn conflicts_use_dockers_message() {
        let mut web = svc("webid", "web", &[(80, 8001, PublishMode::Ingress)]);
        web.endpoint = allocate_endpoint(&web, &[]).unwrap();
        let spec = svc("", "api", &[(8080, 8001, PublishMode::Ingress)]).spec;
        assert_eq!(
            check_port_conflicts(std::slice::from_ref(&web), &spec, ""),
            Err("port '8001' is already in use by service 'web' (webid) as an ingress port".into())
        );
        // Updating web itself is fine.
        assert!(check_port_conflicts(std::slice::from_ref(&web), &web.spec, "webid").is_ok());
        // Host-mode request vs ingress holder.
        let spec = svc("", "api", &[(8080, 8001, PublishMode::Host)]).spec;
        assert!(check_port_conflicts(std::slice::from_ref(&web), &spec, "").unwrap_err().contains("as an ingress port"));
        // Ingress request vs host-mode holder.
        let h = svc("hid", "h", &[(80, 9000, PublishMode::Host)]);
        let spec = svc("", "api", &[(8080, 9000, PublishMode::Ingress)]).spec;
        assert_eq!(
            check_port_conflicts(std::slice::from_ref(&h), &spec, ""),
            Err("port '9000' is already in use by service 'h' (hid) as a host-published port".into())
        );
        // Two host-mode services may share a port (the scheduler sorts it out).
        let spec = svc("", "api", &[(8080, 9000, PublishMode::Host)]).spec;
        assert!(check_port_conflicts(&[h], &spec, "").is_ok());
    }

    #[test]
    fn dynamic_ports_are_unique_and_stable() {
        let mut a = svc("a", "a", &[(80, 0, PublishMode::Ingress), (443, 0, PublishMode::Ingress)]);
        assert!(needs_allocation(&a, None));
        a.endpoint = allocate_endpoint(&a, &[]).unwrap();
        assert!(!needs_allocation(&a, None));
        let pa: Vec<u32> = a.endpoint.ports.iter().map(|p| p.published_port).collect();
        assert_eq!(pa, vec![30000, 30001]);
        let mut b = svc("b", "b", &[(80, 0, PublishMode::Ingress), (81, 30002, PublishMode::Ingress)]);
        b.endpoint = allocate_endpoint(&b, std::slice::from_ref(&a)).unwrap();
        let pb: Vec<u32> = b.endpoint.ports.iter().map(|p| p.published_port).collect();
        assert_eq!(pb, vec![30003, 30002], "explicit ports are taken first");
        // An update adding a port keeps the earlier allocation.
        a.spec.endpoint_spec.as_mut().unwrap().ports.push(PortConfig { target_port: 8080, ..Default::default() });
        assert!(needs_allocation(&a, None));
        let ea = allocate_endpoint(&a, std::slice::from_ref(&b)).unwrap();
        let pa2: Vec<u32> = ea.ports.iter().map(|p| p.published_port).collect();
        assert_eq!(pa2, vec![30000, 30001, 30004]);
        // Host-mode ports are copied unallocated.
        let h = svc("h", "h", &[(80, 0, PublishMode::Host)]);
        assert_eq!(allocate_endpoint(&h, &[]).unwrap().ports[0].published_port, 0);
    }

    #[test]
    fn explicit_conflict_at_allocation() {
        let mut a = svc("a", "a", &[(80, 8001, PublishMode::Ingress)]);
        a.endpoint = allocate_endpoint(&a, &[]).unwrap();
        let b = svc("b", "b", &[(80, 8001, PublishMode::Ingress)]);
        let e = allocate_endpoint(&b, &[a]).unwrap_err();
        assert_eq!(e.to_string(), "port '8001' is already in use by service 'a' (a) as an ingress port");
    }
}

//! The network map as managers compute it from cluster state ([`compute`]), and what one node
//! makes of it: the [`shoal_net::MeshState`] of its overlay data plane ([`mesh_state`]).
//!
//! Rotation order: a service's tasks sorted by slot, then task ID; every node uses the same
//! order, so round robin cycles through the tasks the same way wherever a client connects.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use shoal_net::{IngressPort, Ipv4Net, MeshPeer, MeshState, OverlayNet, Proto, VipRule};
use shoal_store::ReadTx;
use shoal_types::{
    MapAddr, MapNetwork, MapNode, MapService, MapTask, Network, NetworkMap, Node, NodeState, PortProtocol, PublishMode,
    ResolutionMode, Service, Task, TaskState,
};

fn ip_of(addr: &str) -> Option<Ipv4Addr> {
    addr.split('/').next()?.parse().ok()
}

fn map_addr(network_id: &str, addr: &str) -> Option<MapAddr> {
    ip_of(addr).map(|ip| MapAddr { network_id: network_id.to_string(), ip: ip.to_string() })
}

/// The complete map from a store view.
pub fn compute(view: &ReadTx) -> NetworkMap {
    let mut networks: Vec<MapNetwork> = view
        .list::<Network>()
        .into_iter()
        .filter_map(|n| {
            let vni = n.vni()?;
            let (subnet, gateway) = n.pool()?;
            Some(MapNetwork {
                id: n.id.clone(),
                name: n.spec.name.clone(),
                vni,
                subnet: subnet.to_string(),
                gateway: gateway.to_string(),
                ingress: n.spec.ingress,
            })
        })
        .collect();
    networks.sort_by(|a, b| a.id.cmp(&b.id));
    let node_objs = view.list::<Node>();
    let ready: HashMap<&str, bool> = node_objs.iter().map(|n| (n.id.as_str(), n.status.state == NodeState::Ready)).collect();
    let mut nodes: Vec<MapNode> = node_objs
        .iter()
        .map(|n| MapNode {
            id: n.id.clone(),
            addr: ip_of(&n.status.addr).map(|ip| ip.to_string()).unwrap_or_default(),
            ready: n.status.state == NodeState::Ready,
            attachments: n.attachments.iter().filter_map(|a| map_addr(&a.network_id, &a.addr)).collect(),
        })
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut by_service: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
    let tasks = view.list::<Task>();
    for t in tasks.iter().filter(|t| !t.networks_attachments.is_empty() && t.status.state <= TaskState::Running && !t.node_id.is_empty()) {
        by_service.entry(t.service_id.clone()).or_default().push(t);
    }
    let mut services: Vec<MapService> = view
        .list::<Service>()
        .into_iter()
        .filter_map(|s| {
            let ingress_ports: Vec<_> = s
                .endpoint
                .ports
                .iter()
                .filter(|p| p.publish_mode == PublishMode::Ingress && p.published_port != 0)
                .cloned()
                .collect();
            let mut tasks: Vec<MapTask> = by_service
                .get(&s.id)
                .map(|ts| {
                    ts.iter()
                        .map(|t| MapTask {
                            id: t.id.clone(),
                            node_id: t.node_id.clone(),
                            slot: t.slot,
                            addrs: t
                                .networks_attachments
                                .iter()
                                .flat_map(|a| a.addresses.iter().filter_map(|addr| map_addr(&a.network.id, addr)))
                                .collect(),
                            in_rotation: t.desired_state == TaskState::Running
                                && t.status.state == TaskState::Running
                                && ready.get(t.node_id.as_str()).copied().unwrap_or(false),
                        })
                        .collect()
                })
                .unwrap_or_default();
            if tasks.is_empty() && ingress_ports.is_empty() && s.endpoint.virtual_ips.is_empty() {
                return None;
            }
            tasks.sort_by(|a, b| (a.slot, &a.id).cmp(&(b.slot, &b.id)));
            let mode = match s.endpoint.spec.mode {
                ResolutionMode::Dnsrr => "dnsrr",
                _ => "vip",
            };
            Some(MapService {
                id: s.id.clone(),
                name: s.spec.name.clone(),
                endpoint_mode: mode.into(),
                vips: s.endpoint.virtual_ips.iter().filter_map(|v| map_addr(&v.network_id, &v.addr)).collect(),
                ingress_ports,
                tasks,
                preserve_client_address: s.spec.labels.get(shoal_types::CLIENT_ADDRESS_LABEL).is_some_and(|v| v == "preserve"),
            })
        })
        .collect();
    services.sort_by(|a, b| a.id.cmp(&b.id));
    NetworkMap { networks, nodes, services }
}

/// What `node_id` programs: every overlay network (with its own address on it, if any), the
/// other nodes as peers with the addresses they host, and the ingress ports with the in-rotation
/// tasks as backends (and, for services preserving client addresses, this node's own tasks by
/// their bridge addresses from `local_bridge`: task ID → address). None until the node knows its
/// own underlay address.
pub fn mesh_state(map: &NetworkMap, node_id: &str, local_bridge: &HashMap<String, Ipv4Addr>) -> Option<MeshState> {
    let me = map.nodes.iter().find(|n| n.id == node_id)?;
    let underlay: Ipv4Addr = me.addr.parse().ok()?;
    // Per network, per node: the overlay addresses that node hosts.
    let mut hosted: HashMap<(&str, &str), Vec<Ipv4Addr>> = HashMap::new();
    for n in &map.nodes {
        for a in &n.attachments {
            if let Ok(ip) = a.ip.parse() {
                hosted.entry((a.network_id.as_str(), n.id.as_str())).or_default().push(ip);
            }
        }
    }
    for s in &map.services {
        for t in &s.tasks {
            for a in &t.addrs {
                if let Ok(ip) = a.ip.parse() {
                    hosted.entry((a.network_id.as_str(), t.node_id.as_str())).or_default().push(ip);
                }
            }
        }
    }
    let mut overlays = Vec::new();
    let mut ingress_vni = None;
    let mut ingress_id = None;
    for net in &map.networks {
        let Ok(subnet) = net.subnet.parse::<Ipv4Net>() else { continue };
        let host_ip = me.attachments.iter().find(|a| a.network_id == net.id).and_then(|a| a.ip.parse().ok());
        let mut peers: Vec<MeshPeer> = map
            .nodes
            .iter()
            .filter(|n| n.id != node_id)
            .filter_map(|n| {
                let underlay: Ipv4Addr = n.addr.parse().ok()?;
                let mut endpoints = hosted.get(&(net.id.as_str(), n.id.as_str())).cloned().unwrap_or_default();
                endpoints.sort_unstable();
                endpoints.dedup();
                Some(MeshPeer { underlay, endpoints })
            })
            .collect();
        peers.sort_by_key(|p| p.underlay);
        peers.dedup_by_key(|p| p.underlay);
        if net.ingress {
            ingress_vni = Some(net.vni);
            ingress_id = Some(net.id.as_str());
        }
        overlays.push(OverlayNet { vni: net.vni, subnet, host_ip, peers });
    }
    let mut ingress = Vec::new();
    if let Some(ingress_id) = ingress_id {
        for s in &map.services {
            let backends: Vec<Ipv4Addr> = s
                .tasks
                .iter()
                .filter(|t| t.in_rotation)
                .filter_map(|t| t.addrs.iter().find(|a| a.network_id == ingress_id)?.ip.parse().ok())
                .collect();
            let local: Vec<Ipv4Addr> = if s.preserve_client_address {
                s.tasks.iter().filter(|t| t.in_rotation && t.node_id == node_id).filter_map(|t| local_bridge.get(&t.id).copied()).collect()
            } else {
                Vec::new()
            };
            for p in &s.ingress_ports {
                let proto = match p.protocol {
                    PortProtocol::Tcp => Proto::Tcp,
                    PortProtocol::Udp => Proto::Udp,
                    _ => continue,
                };
                let (Ok(published), Ok(target)) = (u16::try_from(p.published_port), u16::try_from(p.target_port)) else { continue };
                ingress.push(IngressPort { proto, published, target, backends: backends.clone(), local: local.clone() });
            }
        }
    }
    ingress.sort_by_key(|p| (p.published, p.proto == Proto::Udp));
    Some(MeshState { underlay, overlays, ingress_vni, ingress })
}

/// The in-rotation tasks' addresses of `s` on `network`, in rotation order.
fn backends_on(s: &MapService, network: &str) -> Vec<Ipv4Addr> {
    s.tasks
        .iter()
        .filter(|t| t.in_rotation)
        .filter_map(|t| t.addrs.iter().find(|a| a.network_id == network)?.ip.parse().ok())
        .collect()
}

/// The VIP rules of a container attached to `networks` (IDs): every VIP-mode service with a VIP
/// on one of them, balanced over its tasks on that network.
pub fn vip_rules(map: &NetworkMap, networks: &[String]) -> Vec<VipRule> {
    let mut rules: Vec<VipRule> = map
        .services
        .iter()
        .filter(|s| s.endpoint_mode != "dnsrr")
        .flat_map(|s| {
            s.vips.iter().filter(|v| networks.contains(&v.network_id)).filter_map(move |v| {
                Some(VipRule { vip: v.ip.parse().ok()?, backends: backends_on(s, &v.network_id) })
            })
        })
        .collect();
    rules.sort();
    rules
}

/// The embedded DNS answer for `name` (lower-case, no trailing dot) asked by a container attached
/// to `networks`: `<service>` → its VIPs on those networks (its tasks' addresses in dnsrr mode),
/// `tasks.<service>` → its running tasks' addresses. None: not a service name on these networks.
pub fn resolve(map: &NetworkMap, networks: &[String], name: &str) -> Option<Vec<Ipv4Addr>> {
    let (service, tasks_only) = match name.strip_prefix("tasks.") {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    let s = map.services.iter().find(|s| s.name.eq_ignore_ascii_case(service))?;
    let shared: Vec<&String> = networks
        .iter()
        .filter(|n| s.vips.iter().any(|v| &v.network_id == *n) || s.tasks.iter().any(|t| t.addrs.iter().any(|a| &a.network_id == *n)))
        .collect();
    if shared.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for n in shared {
        if !tasks_only && s.endpoint_mode != "dnsrr" {
            out.extend(s.vips.iter().filter(|v| &v.network_id == n).filter_map(|v| v.ip.parse::<Ipv4Addr>().ok()));
        } else {
            out.extend(backends_on(s, n));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::PortConfig;

    fn addr(net: &str, ip: &str) -> MapAddr {
        MapAddr { network_id: net.into(), ip: ip.into() }
    }

    fn map() -> NetworkMap {
        let node = |id: &str, a: &str, ingress_ip: &str| MapNode {
            id: id.into(),
            addr: a.into(),
            ready: true,
            attachments: vec![addr("ing", ingress_ip)],
        };
        let task = |id: &str, node: &str, slot: u64, ip: &str, in_rotation: bool| MapTask {
            id: id.into(),
            node_id: node.into(),
            slot,
            addrs: vec![addr("ing", ip)],
            in_rotation,
        };
        NetworkMap {
            networks: vec![MapNetwork { id: "ing".into(), name: "ingress".into(), vni: 4096, subnet: "10.0.0.0/24".into(), ingress: true, ..Default::default() }],
            nodes: vec![node("n1", "10.99.0.1", "10.0.0.2"), node("n2", "10.99.0.2", "10.0.0.3"), node("n3", "10.99.0.3", "10.0.0.4")],
            services: vec![MapService {
                id: "s".into(),
                name: "web".into(),
                endpoint_mode: "vip".into(),
                vips: vec![addr("ing", "10.0.0.5")],
                ingress_ports: vec![PortConfig { target_port: 80, published_port: 8001, ..Default::default() }],
                tasks: vec![
                    task("a", "n2", 1, "10.0.0.6", true),
                    task("b", "n3", 2, "10.0.0.7", true),
                    task("c", "n3", 3, "10.0.0.8", false),
                ],
                preserve_client_address: false,
            }],
        }
    }

    #[test]
    fn a_node_sees_peers_and_rotation() {
        let st = mesh_state(&map(), "n1", &HashMap::new()).unwrap();
        assert_eq!(st.underlay, Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(st.ingress_vni, Some(4096));
        let ov = &st.overlays[0];
        assert_eq!(ov.host_ip, Some(Ipv4Addr::new(10, 0, 0, 2)));
        let peers: Vec<(String, Vec<String>)> =
            ov.peers.iter().map(|p| (p.underlay.to_string(), p.endpoints.iter().map(|e| e.to_string()).collect())).collect();
        assert_eq!(
            peers,
            vec![
                ("10.99.0.2".to_string(), vec!["10.0.0.3".to_string(), "10.0.0.6".to_string()]),
                ("10.99.0.3".to_string(), vec!["10.0.0.4".to_string(), "10.0.0.7".to_string(), "10.0.0.8".to_string()]),
            ]
        );
        assert_eq!(st.ingress.len(), 1);
        let p = &st.ingress[0];
        assert_eq!((p.published, p.target), (8001, 80));
        assert_eq!(p.backends, vec![Ipv4Addr::new(10, 0, 0, 6), Ipv4Addr::new(10, 0, 0, 7)], "only in-rotation tasks, slot order");
    }

    #[test]
    fn preserving_services_prefer_local_tasks() {
        let mut m = map();
        m.services[0].preserve_client_address = true;
        let local: HashMap<String, Ipv4Addr> = [("b".to_string(), Ipv4Addr::new(172, 17, 0, 5))].into();
        let on_n3 = mesh_state(&m, "n3", &local).unwrap();
        assert_eq!(on_n3.ingress[0].local, vec![Ipv4Addr::new(172, 17, 0, 5)], "n3 runs b (in rotation); c is not");
        let on_n1 = mesh_state(&m, "n1", &local).unwrap();
        assert!(on_n1.ingress[0].local.is_empty(), "n1 runs no task: cluster-wide fallback");
    }

    #[test]
    fn vips_and_names_on_a_user_network() {
        let mut m = map();
        m.networks.push(MapNetwork { id: "app".into(), name: "app".into(), vni: 4097, subnet: "10.0.1.0/24".into(), ingress: false, ..Default::default() });
        m.services[0].vips.push(addr("app", "10.0.1.2"));
        for (t, ip) in m.services[0].tasks.iter_mut().zip(["10.0.1.3", "10.0.1.4", "10.0.1.5"]) {
            t.addrs.push(addr("app", ip));
        }
        let nets = vec!["app".to_string()];
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(vip_rules(&m, &nets), vec![VipRule { vip: ip("10.0.1.2"), backends: vec![ip("10.0.1.3"), ip("10.0.1.4")] }]);
        assert_eq!(resolve(&m, &nets, "web"), Some(vec![ip("10.0.1.2")]));
        assert_eq!(resolve(&m, &nets, "WEB"), Some(vec![ip("10.0.1.2")]));
        assert_eq!(resolve(&m, &nets, "tasks.web"), Some(vec![ip("10.0.1.3"), ip("10.0.1.4")]));
        assert_eq!(resolve(&m, &nets, "db"), None);
        assert_eq!(resolve(&m, &["other".to_string()], "web"), None, "not on a shared network");
        m.services[0].endpoint_mode = "dnsrr".into();
        assert_eq!(resolve(&m, &nets, "web"), Some(vec![ip("10.0.1.3"), ip("10.0.1.4")]));
        assert!(vip_rules(&m, &nets).is_empty());
    }

    #[test]
    fn unknown_node_or_address_gives_nothing() {
        assert!(mesh_state(&map(), "nx", &HashMap::new()).is_none());
        let mut m = map();
        m.nodes[0].addr.clear();
        assert!(mesh_state(&m, "n1", &HashMap::new()).is_none());
    }
}

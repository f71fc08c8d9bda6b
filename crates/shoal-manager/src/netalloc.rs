//! Cluster-wide allocation for overlay networks (swarmkit `manager/allocator/network.go` and its
//! IPAM): a VXLAN ID and a subnet per network, and addresses on it for nodes (their ingress
//! address), service VIPs and tasks. The manager is the only allocator, so addresses never clash
//! across nodes.
//!
//! Allocation is recomputed from stored state (every non-terminal holder of an address), never
//! kept in memory, so a new leader continues exactly where the state is. Within a network the
//! lowest free address after the gateway is taken.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use shoal_types::{Driver, IpamConfig, IpamOptions, Network, Node, Service, Task, TaskState, VXLAN_ID_OPTION};

/// The first VXLAN ID handed out (swarmkit starts at 4096 as well).
pub const FIRST_VNI: u32 = 4096;
/// Default address pool for overlay networks (`DefaultAddrPool`) and its subnet size.
pub const DEFAULT_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 0, 0), 8);
pub const DEFAULT_SUBNET_SIZE: u8 = 24;

/// Why an address or network could not be allocated (lower-case, names the input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetAllocError {
    #[error("invalid subnet {0:?}: expected an IPv4 CIDR such as 10.0.9.0/24")]
    BadSubnet(String),
    #[error("invalid gateway {gateway:?} for subnet {subnet}")]
    BadGateway { subnet: String, gateway: String },
    #[error("subnet {subnet} overlaps with network {other} ({other_subnet})")]
    Overlap { subnet: String, other: String, other_subnet: String },
    #[error("no free subnet left in the default address pool 10.0.0.0/8")]
    PoolExhausted,
    #[error("network {0} has no free address left")]
    NetworkFull(String),
    #[error("network {0} has no allocated subnet")]
    NotAllocated(String),
}

/// `a.b.c.d/n` → (network address, prefix); host bits must be zero.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), NetAllocError> {
    let bad = || NetAllocError::BadSubnet(s.to_string());
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&len) || u32::from(ip) & !mask(len) != 0 {
        return Err(bad());
    }
    Ok((ip, len))
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let m = mask(a.1.min(b.1));
    u32::from(a.0) & m == u32::from(b.0) & m
}

/// The VXLAN ID and IPAM pool for a new overlay network. `subnet`/`gateway` are what the user
/// asked for (empty: pick the next free /24 of 10.0.0.0/8); `existing` are the networks already
/// stored. The result is written into the network's `DriverState` and `IPAMOptions`.
pub fn allocate_network(network: &mut Network, existing: &[Network], subnet: &str, gateway: &str) -> Result<(), NetAllocError> {
    let taken: Vec<(String, (Ipv4Addr, u8), String)> = existing
        .iter()
        .filter(|n| n.id != network.id)
        .filter_map(|n| {
            let (s, _) = n.pool()?;
            Some((n.spec.name.clone(), parse_cidr(s).ok()?, s.to_string()))
        })
        .collect();
    let cidr = if subnet.is_empty() {
        let (base, pool_len) = DEFAULT_POOL;
        let count = 1u32 << (DEFAULT_SUBNET_SIZE - pool_len);
        (0..count)
            .map(|i| (Ipv4Addr::from(u32::from(base) + (i << (32 - u32::from(DEFAULT_SUBNET_SIZE)))), DEFAULT_SUBNET_SIZE))
            .find(|c| taken.iter().all(|(_, t, _)| !overlaps(*c, *t)))
            .ok_or(NetAllocError::PoolExhausted)?
    } else {
        let c = parse_cidr(subnet)?;
        if let Some((name, _, s)) = taken.iter().find(|(_, t, _)| overlaps(c, *t)) {
            return Err(NetAllocError::Overlap { subnet: subnet.to_string(), other: name.clone(), other_subnet: s.clone() });
        }
        c
    };
    let first_host = Ipv4Addr::from(u32::from(cidr.0) + 1);
    let gw = if gateway.is_empty() {
        first_host
    } else {
        let g: Ipv4Addr = gateway.parse().map_err(|_| NetAllocError::BadGateway { subnet: format!("{}/{}", cidr.0, cidr.1), gateway: gateway.into() })?;
        let inside = u32::from(g) & mask(cidr.1) == u32::from(cidr.0);
        let broadcast = u32::from(cidr.0) | !mask(cidr.1);
        if !inside || g == cidr.0 || u32::from(g) == broadcast {
            return Err(NetAllocError::BadGateway { subnet: format!("{}/{}", cidr.0, cidr.1), gateway: gateway.into() });
        }
        g
    };
    let used_vnis: BTreeSet<u32> = existing.iter().filter(|n| n.id != network.id).filter_map(Network::vni).collect();
    let vni = (FIRST_VNI..).find(|v| !used_vnis.contains(v)).unwrap_or(FIRST_VNI);
    network.driver_state = Driver {
        name: shoal_types::OVERLAY_DRIVER.into(),
        options: [(VXLAN_ID_OPTION.to_string(), vni.to_string())].into_iter().collect(),
    };
    network.ipam_options = Some(IpamOptions {
        driver: Driver { name: "default".into(), ..Default::default() },
        configs: vec![IpamConfig { subnet: format!("{}/{}", cidr.0, cidr.1), gateway: gw.to_string(), ..Default::default() }],
    });
    Ok(())
}

/// One network's address space.
#[derive(Debug, Clone)]
struct Pool {
    base: u32,
    len: u8,
    used: BTreeSet<u32>,
}

impl Pool {
    fn new(subnet: &str, gateway: &str) -> Option<Pool> {
        let (ip, len) = parse_cidr(subnet).ok()?;
        let mut used = BTreeSet::new();
        if let Ok(g) = gateway.parse::<Ipv4Addr>() {
            used.insert(u32::from(g));
        }
        Some(Pool { base: u32::from(ip), len, used })
    }

    fn contains(&self, ip: u32) -> bool {
        ip & mask(self.len) == self.base
    }

    fn take(&mut self) -> Option<Ipv4Addr> {
        let broadcast = self.base | !mask(self.len);
        let ip = (self.base + 1..broadcast).find(|ip| !self.used.contains(ip))?;
        self.used.insert(ip);
        Some(Ipv4Addr::from(ip))
    }
}

/// `10.0.0.5/24` or `10.0.0.5` → the address.
pub fn addr_ip(addr: &str) -> Option<Ipv4Addr> {
    addr.split('/').next()?.parse().ok()
}

/// Every overlay network's address space with what stored objects hold.
#[derive(Debug, Clone, Default)]
pub struct AddressBook {
    pools: HashMap<String, Pool>,
}

impl AddressBook {
    /// Marks what nodes, service VIPs and non-terminal tasks hold.
    pub fn from_state(networks: &[Network], nodes: &[Node], services: &[Service], tasks: &[Task]) -> AddressBook {
        let mut pools = HashMap::new();
        for n in networks {
            if let Some(pool) = n.pool().and_then(|(s, g)| Pool::new(s, g)) {
                pools.insert(n.id.clone(), pool);
            }
        }
        let mut book = AddressBook { pools };
        for n in nodes {
            for a in &n.attachments {
                book.mark(&a.network_id, &a.addr);
            }
        }
        for s in services {
            for v in &s.endpoint.virtual_ips {
                book.mark(&v.network_id, &v.addr);
            }
        }
        for t in tasks.iter().filter(|t| holds_addresses(t)) {
            for a in &t.networks_attachments {
                for addr in &a.addresses {
                    book.mark(&a.network.id, addr);
                }
            }
        }
        book
    }

    fn mark(&mut self, network_id: &str, addr: &str) {
        if let (Some(p), Some(ip)) = (self.pools.get_mut(network_id), addr_ip(addr)) {
            if p.contains(u32::from(ip)) {
                p.used.insert(u32::from(ip));
            }
        }
    }

    /// A free address on `network`, as `ip/prefix`.
    pub fn allocate(&mut self, network: &Network) -> Result<String, NetAllocError> {
        let p = self.pools.get_mut(&network.id).ok_or_else(|| NetAllocError::NotAllocated(network.spec.name.clone()))?;
        let len = p.len;
        let ip = p.take().ok_or_else(|| NetAllocError::NetworkFull(network.spec.name.clone()))?;
        Ok(format!("{ip}/{len}"))
    }
}

/// A task keeps its overlay addresses until it is terminal (its container is gone or dead).
pub fn holds_addresses(t: &Task) -> bool {
    t.status.state <= TaskState::Running
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::{EndpointVirtualIp, NetworkAttachment, NetworkSpec};

    fn net(id: &str, name: &str) -> Network {
        Network { id: id.into(), spec: NetworkSpec { name: name.into(), ..Default::default() }, ..Default::default() }
    }

    #[test]
    fn networks_get_distinct_vnis_and_subnets() {
        let mut ingress = net("i", "ingress");
        allocate_network(&mut ingress, &[], "10.0.0.0/24", "").unwrap();
        assert_eq!(ingress.vni(), Some(4096));
        assert_eq!(ingress.pool(), Some(("10.0.0.0/24", "10.0.0.1")));
        let mut a = net("a", "a");
        allocate_network(&mut a, std::slice::from_ref(&ingress), "", "").unwrap();
        assert_eq!((a.vni(), a.pool()), (Some(4097), Some(("10.0.1.0/24", "10.0.1.1"))));
        let mut b = net("b", "b");
        let e = allocate_network(&mut b, &[ingress.clone(), a.clone()], "10.0.1.128/25", "").unwrap_err();
        assert_eq!(e.to_string(), "subnet 10.0.1.128/25 overlaps with network a (10.0.1.0/24)");
        allocate_network(&mut b, &[ingress, a], "192.168.50.0/24", "192.168.50.254").unwrap();
        assert_eq!(b.pool(), Some(("192.168.50.0/24", "192.168.50.254")));
        assert!(allocate_network(&mut b, &[], "192.168.50.1/24", "").is_err(), "host bits set");
        assert!(allocate_network(&mut b, &[], "192.168.50.0/24", "192.168.51.1").is_err(), "gateway outside");
    }

    #[test]
    fn addresses_skip_holders_and_free_terminal_tasks() {
        let mut ingress = net("i", "ingress");
        allocate_network(&mut ingress, &[], "10.0.0.0/29", "").unwrap();
        let mut node = Node::default();
        node.attachments.push(EndpointVirtualIp { network_id: "i".into(), addr: "10.0.0.2/29".into() });
        let mut svc = Service::default();
        svc.endpoint.virtual_ips.push(EndpointVirtualIp { network_id: "i".into(), addr: "10.0.0.3/29".into() });
        let attach = |addr: &str| NetworkAttachment { network: ingress.clone(), addresses: vec![addr.into()] };
        let mut running = Task::default();
        running.status.state = TaskState::Running;
        running.networks_attachments.push(attach("10.0.0.4/29"));
        let mut dead = Task::default();
        dead.status.state = TaskState::Failed;
        dead.networks_attachments.push(attach("10.0.0.5/29"));
        let mut book = AddressBook::from_state(std::slice::from_ref(&ingress), &[node], &[svc], &[running, dead]);
        assert_eq!(book.allocate(&ingress).unwrap(), "10.0.0.5/29");
        assert_eq!(book.allocate(&ingress).unwrap(), "10.0.0.6/29");
        assert_eq!(book.allocate(&ingress).unwrap_err(), NetAllocError::NetworkFull("ingress".into()));
        assert!(matches!(book.allocate(&net("x", "x")), Err(NetAllocError::NotAllocated(_))));
    }
}

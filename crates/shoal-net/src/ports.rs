//! Published-port bookkeeping: conflict detection and ephemeral host-port allocation.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::error::NetError;

/// First and last ephemeral host port (Docker's defaults, from ip_local_port_range).
pub const EPHEMERAL_FIRST: u16 = 32768;
pub const EPHEMERAL_LAST: u16 = 60999;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A requested port mapping (`-p [host_ip:][host_port]:container_port[/proto]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// `None` (or an unspecified address) publishes on every host address.
    pub host_ip: Option<IpAddr>,
    /// `None` or `Some(0)` picks an ephemeral port.
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub proto: Proto,
}

/// A mapping that is in effect. `host_ip` is `0.0.0.0` when published on every address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublishedPort {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hip = self.host_ip.map(|i| i.to_string()).unwrap_or_default();
        let hp = self.host_port.map(|p| p.to_string()).unwrap_or_default();
        write!(f, "{hip}:{hp}:{}/{}", self.container_port, self.proto)
    }
}

fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a.is_unspecified() || b.is_unspecified() || a == b
}

/// Normalises the host address of a spec: unspecified (v4 or v6) becomes `0.0.0.0`; other IPv6
/// addresses are rejected because the bridge network is IPv4-only.
fn normalize_host_ip(spec: &PortSpec) -> Result<IpAddr, NetError> {
    match spec.host_ip {
        None => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Some(ip) if ip.is_unspecified() => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Some(IpAddr::V4(v4)) => Ok(IpAddr::V4(v4)),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => Ok(IpAddr::V4(v4)),
            None => Err(NetError::InvalidPort {
                spec: spec.to_string(),
                reason: "ipv6 host addresses are not supported on the bridge network".into(),
            }),
        },
    }
}

/// Published ports of every container, keyed by container id.
#[derive(Debug, Default)]
pub struct PortTable {
    by_container: BTreeMap<String, (Ipv4Addr, Vec<PublishedPort>)>,
    /// Next ephemeral port to try (sequential like Docker's port allocator).
    next_ephemeral: u16,
}

impl PortTable {
    pub fn new() -> Self {
        PortTable { by_container: BTreeMap::new(), next_ephemeral: EPHEMERAL_FIRST }
    }

    fn taken(&self, extra: &[PublishedPort], skip: Option<&str>, host_ip: IpAddr, port: u16, proto: Proto) -> bool {
        let clash = |p: &PublishedPort| p.proto == proto && p.host_port == port && overlaps(p.host_ip, host_ip);
        extra.iter().any(clash)
            || self
                .by_container
                .iter()
                .filter(|(id, _)| Some(id.as_str()) != skip)
                .any(|(_, (_, ps))| ps.iter().any(clash))
    }

    /// Resolves `specs` into concrete mappings without changing the table. `in_use(proto, port)`
    /// reports whether some socket already holds an ephemeral candidate on the host.
    pub fn plan(
        &mut self,
        specs: &[PortSpec],
        mut in_use: impl FnMut(Proto, u16) -> bool,
    ) -> Result<Vec<PublishedPort>, NetError> {
        let mut out: Vec<PublishedPort> = Vec::with_capacity(specs.len());
        for spec in specs {
            if spec.container_port == 0 {
                return Err(NetError::InvalidPort { spec: spec.to_string(), reason: "container port must be 1-65535".into() });
            }
            let host_ip = normalize_host_ip(spec)?;
            let host_port = match spec.host_port {
                Some(p) if p != 0 => {
                    let dup = PublishedPort { host_ip, host_port: p, container_port: spec.container_port, proto: spec.proto };
                    if out.contains(&dup) {
                        continue; // the very same mapping listed twice
                    }
                    if self.taken(&out, None, host_ip, p, spec.proto) {
                        return Err(NetError::PortAllocated { host_ip: host_ip.to_string(), port: p });
                    }
                    p
                }
                _ => self.pick_ephemeral(&out, host_ip, spec.proto, &mut in_use)?,
            };
            out.push(PublishedPort { host_ip, host_port, container_port: spec.container_port, proto: spec.proto });
        }
        Ok(out)
    }

    fn pick_ephemeral(
        &mut self,
        pending: &[PublishedPort],
        host_ip: IpAddr,
        proto: Proto,
        in_use: &mut impl FnMut(Proto, u16) -> bool,
    ) -> Result<u16, NetError> {
        let count = u32::from(EPHEMERAL_LAST - EPHEMERAL_FIRST) + 1;
        let start = if (EPHEMERAL_FIRST..=EPHEMERAL_LAST).contains(&self.next_ephemeral) {
            self.next_ephemeral
        } else {
            EPHEMERAL_FIRST
        };
        for i in 0..count {
            let off = (u32::from(start - EPHEMERAL_FIRST) + i) % count;
            // off < count <= 28232, so it fits in u16.
            let port = EPHEMERAL_FIRST + off as u16;
            if self.taken(pending, None, host_ip, port, proto) || in_use(proto, port) {
                continue;
            }
            self.next_ephemeral = if port == EPHEMERAL_LAST { EPHEMERAL_FIRST } else { port + 1 };
            return Ok(port);
        }
        Err(NetError::NoEphemeralPort { proto: proto.to_string() })
    }

    /// Adds mappings for a container (appending to any it already has).
    pub fn add(&mut self, container_id: &str, ip: Ipv4Addr, ports: Vec<PublishedPort>) {
        let entry = self.by_container.entry(container_id.to_string()).or_insert_with(|| (ip, Vec::new()));
        entry.0 = ip;
        entry.1.extend(ports);
    }

    /// Replaces the mappings of a container with already-resolved ones (restore), checking
    /// them against every other container.
    pub fn restore(&mut self, container_id: &str, ip: Ipv4Addr, ports: &[PublishedPort]) -> Result<(), NetError> {
        for (i, p) in ports.iter().enumerate() {
            if p.host_port == 0 || p.container_port == 0 {
                return Err(NetError::InvalidPort {
                    spec: format!("{}:{}:{}/{}", p.host_ip, p.host_port, p.container_port, p.proto),
                    reason: "restored ports must be 1-65535".into(),
                });
            }
            if self.taken(&ports[..i], Some(container_id), p.host_ip, p.host_port, p.proto)
                && !ports[..i].contains(p)
            {
                return Err(NetError::PortAllocated { host_ip: p.host_ip.to_string(), port: p.host_port });
            }
        }
        self.by_container.insert(container_id.to_string(), (ip, ports.to_vec()));
        Ok(())
    }

    /// Removes a container's mappings; returns them.
    pub fn remove(&mut self, container_id: &str) -> Option<(Ipv4Addr, Vec<PublishedPort>)> {
        self.by_container.remove(container_id)
    }

    /// Removes the last `n` mappings added for a container (rollback of a failed apply).
    pub fn rollback(&mut self, container_id: &str, n: usize) {
        if let Some((_, ps)) = self.by_container.get_mut(container_id) {
            let keep = ps.len().saturating_sub(n);
            ps.truncate(keep);
            if ps.is_empty() {
                self.by_container.remove(container_id);
            }
        }
    }

    /// All mappings with their container address, in a deterministic order.
    pub fn all(&self) -> Vec<(Ipv4Addr, PublishedPort)> {
        let mut v: Vec<_> = self
            .by_container
            .values()
            .flat_map(|(ip, ps)| ps.iter().map(move |p| (*ip, p.clone())))
            .collect();
        v.sort_by_key(|(ip, p)| (p.proto, p.host_port, p.host_ip, *ip));
        v
    }

    pub fn of(&self, container_id: &str) -> Option<&[PublishedPort]> {
        self.by_container.get(container_id).map(|(_, p)| p.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host_port: Option<u16>, container_port: u16) -> PortSpec {
        PortSpec { host_ip: None, host_port, container_port, proto: Proto::Tcp }
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn explicit_port_conflict_has_docker_text() {
        let mut t = PortTable::new();
        let p = t.plan(&[spec(Some(8080), 80)], |_, _| false).unwrap();
        assert_eq!(p[0].host_ip.to_string(), "0.0.0.0");
        t.add("a", ip("172.17.0.2"), p);
        let e = t.plan(&[spec(Some(8080), 81)], |_, _| false).unwrap_err();
        assert_eq!(e.to_string(), "Bind for 0.0.0.0:8080 failed: port is already allocated");
        assert_eq!(e.kind(), crate::ErrorKind::Conflict);
        // a different protocol does not conflict
        let udp = PortSpec { proto: Proto::Udp, ..spec(Some(8080), 80) };
        assert!(t.plan(&[udp], |_, _| false).is_ok());
    }

    #[test]
    fn host_ip_overlap_rules() {
        let mut t = PortTable::new();
        let lo = PortSpec { host_ip: Some("127.0.0.1".parse().unwrap()), ..spec(Some(9000), 80) };
        let other = PortSpec { host_ip: Some("10.0.0.1".parse().unwrap()), ..spec(Some(9000), 80) };
        let p = t.plan(std::slice::from_ref(&lo), |_, _| false).unwrap();
        t.add("a", ip("172.17.0.2"), p);
        // distinct specific addresses can share a port
        assert!(t.plan(&[other], |_, _| false).is_ok());
        // the same address conflicts, with the requested address in the message
        let e = t.plan(&[lo], |_, _| false).unwrap_err();
        assert_eq!(e.to_string(), "Bind for 127.0.0.1:9000 failed: port is already allocated");
        // the wildcard overlaps everything
        assert!(t.plan(&[spec(Some(9000), 80)], |_, _| false).is_err());
        // "::" counts as the wildcard, other v6 is rejected
        let v6any = PortSpec { host_ip: Some("::".parse().unwrap()), ..spec(Some(9001), 80) };
        assert_eq!(t.plan(&[v6any], |_, _| false).unwrap()[0].host_ip.to_string(), "0.0.0.0");
        let v6 = PortSpec { host_ip: Some("fe80::1".parse().unwrap()), ..spec(Some(9001), 80) };
        assert_eq!(t.plan(&[v6], |_, _| false).unwrap_err().kind(), crate::ErrorKind::InvalidInput);
    }

    #[test]
    fn conflict_within_one_request() {
        let mut t = PortTable::new();
        assert!(t.plan(&[spec(Some(80), 80), spec(Some(80), 81)], |_, _| false).is_err());
        // an identical duplicate is collapsed
        assert_eq!(t.plan(&[spec(Some(80), 80), spec(Some(80), 80)], |_, _| false).unwrap().len(), 1);
        assert_eq!(t.plan(&[spec(Some(80), 0)], |_, _| false).unwrap_err().kind(), crate::ErrorKind::InvalidInput);
    }

    #[test]
    fn ephemeral_skips_published_and_bound() {
        let mut t = PortTable::new();
        let p = t.plan(&[spec(Some(32768), 80)], |_, _| false).unwrap();
        t.add("a", ip("172.17.0.2"), p);
        // 32769 is bound by some other socket on the host
        let got = t.plan(&[spec(None, 80), spec(Some(0), 81)], |_, port| port == 32769).unwrap();
        assert_eq!(got[0].host_port, 32770);
        assert_eq!(got[1].host_port, 32771);
        t.add("b", ip("172.17.0.3"), got);
        // sequential: continues after the last one handed out
        assert_eq!(t.plan(&[spec(None, 80)], |_, _| false).unwrap()[0].host_port, 32772);
    }

    #[test]
    fn ephemeral_wraps_and_exhausts() {
        let mut t = PortTable::new();
        t.next_ephemeral = EPHEMERAL_LAST;
        let got = t.plan(&[spec(None, 80), spec(None, 81)], |_, _| false).unwrap();
        assert_eq!(got[0].host_port, EPHEMERAL_LAST);
        assert_eq!(got[1].host_port, EPHEMERAL_FIRST);
        let e = t.plan(&[spec(None, 80)], |_, _| true).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Conflict);
    }

    #[test]
    fn restore_and_remove() {
        let mut t = PortTable::new();
        let pp = PublishedPort { host_ip: "0.0.0.0".parse().unwrap(), host_port: 8080, container_port: 80, proto: Proto::Tcp };
        t.restore("a", ip("172.17.0.2"), std::slice::from_ref(&pp)).unwrap();
        // restoring the same container again is idempotent
        t.restore("a", ip("172.17.0.2"), std::slice::from_ref(&pp)).unwrap();
        assert!(t.restore("b", ip("172.17.0.3"), std::slice::from_ref(&pp)).is_err());
        assert_eq!(t.all().len(), 1);
        assert!(t.remove("a").is_some());
        assert!(t.all().is_empty());
        t.restore("b", ip("172.17.0.3"), &[pp]).unwrap();
    }

    #[test]
    fn rollback_removes_last_added() {
        let mut t = PortTable::new();
        let p = t.plan(&[spec(Some(1000), 80)], |_, _| false).unwrap();
        t.add("a", ip("172.17.0.2"), p);
        let p = t.plan(&[spec(Some(1001), 80)], |_, _| false).unwrap();
        t.add("a", ip("172.17.0.2"), p);
        t.rollback("a", 1);
        assert_eq!(t.of("a").unwrap().len(), 1);
        t.rollback("a", 1);
        assert!(t.of("a").is_none());
    }
}

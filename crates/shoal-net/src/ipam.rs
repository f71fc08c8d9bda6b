//! IPv4 subnets, IP address management for the bridge subnet, and MAC derivation.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::NetError;

/// An IPv4 network in CIDR form, always normalised to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Net {
    /// Builds a network; host bits of `addr` are cleared. `prefix_len` must be <= 32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, NetError> {
        if prefix_len > 32 {
            return Err(NetError::InvalidSubnet {
                subnet: format!("{addr}/{prefix_len}"),
                reason: "prefix length must be at most 32".into(),
            });
        }
        let mask = Self::mask_bits(prefix_len);
        Ok(Ipv4Net { addr: Ipv4Addr::from(u32::from(addr) & mask), prefix_len })
    }

    /// For compile-time constants that are known to be normalised.
    pub(crate) const fn from_parts_unchecked(addr: Ipv4Addr, prefix_len: u8) -> Self {
        Ipv4Net { addr, prefix_len }
    }

    fn mask_bits(prefix_len: u8) -> u32 {
        if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix_len))
        }
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The broadcast address (the last address of the network).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !Self::mask_bits(self.prefix_len))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_bits(self.prefix_len) == u32::from(self.addr)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = |reason: &str| NetError::InvalidSubnet { subnet: s.to_string(), reason: reason.to_string() };
        let (a, p) = s.split_once('/').ok_or_else(|| bad("expected a.b.c.d/len"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad("bad ipv4 address"))?;
        let prefix_len: u8 = p.parse().map_err(|_| bad("bad prefix length"))?;
        Ipv4Net::new(addr, prefix_len)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Docker's MAC for a container IP: `02:42` followed by the four address bytes.
pub fn mac_for_ip(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// Next-fit allocator over the host addresses of a subnet, skipping network, gateway and
/// broadcast addresses.
#[derive(Debug)]
pub struct Ipam {
    net: Ipv4Net,
    gateway: Ipv4Addr,
    used: BTreeSet<u32>,
    /// Last address handed out; the next search starts after it (like Docker).
    last: u32,
}

impl Ipam {
    /// `net` must have at least two host addresses (prefix <= 30) and contain `gateway`.
    pub fn new(net: Ipv4Net, gateway: Ipv4Addr) -> Result<Self, NetError> {
        if net.prefix_len() > 30 {
            return Err(NetError::InvalidSubnet {
                subnet: net.to_string(),
                reason: "prefix length must be at most 30".into(),
            });
        }
        let ipam = Ipam { net, gateway, used: BTreeSet::new(), last: u32::from(net.network()) };
        if !net.contains(gateway) {
            return Err(NetError::IpOutOfSubnet { ip: gateway, subnet: net.to_string() });
        }
        if gateway == net.network() || gateway == net.broadcast() {
            return Err(NetError::IpReserved { ip: gateway, subnet: net.to_string() });
        }
        Ok(ipam)
    }

    fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        ip == self.net.network() || ip == self.net.broadcast() || ip == self.gateway
    }

    fn check_usable(&self, ip: Ipv4Addr) -> Result<(), NetError> {
        if !self.net.contains(ip) {
            return Err(NetError::IpOutOfSubnet { ip, subnet: self.net.to_string() });
        }
        if self.is_reserved(ip) {
            return Err(NetError::IpReserved { ip, subnet: self.net.to_string() });
        }
        Ok(())
    }

    /// Allocates `preferred` (which must be usable and free) or the next free address.
    pub fn allocate(&mut self, preferred: Option<Ipv4Addr>) -> Result<Ipv4Addr, NetError> {
        if let Some(ip) = preferred {
            self.check_usable(ip)?;
            if !self.used.insert(u32::from(ip)) {
                return Err(NetError::IpInUse(ip));
            }
            return Ok(ip);
        }
        let first = u32::from(self.net.network()) + 1;
        let last = u32::from(self.net.broadcast()) - 1;
        let count = last - first + 1;
        let start = if self.last < first || self.last >= last { first } else { self.last + 1 };
        for i in 0..count {
            let cand = first + (start - first + i) % count;
            let ip = Ipv4Addr::from(cand);
            if self.is_reserved(ip) || self.used.contains(&cand) {
                continue;
            }
            self.used.insert(cand);
            self.last = cand;
            return Ok(ip);
        }
        Err(NetError::PoolExhausted(self.net.to_string()))
    }

    /// Marks `ip` as used; succeeds if it already was (restore after a daemon restart).
    pub fn reserve(&mut self, ip: Ipv4Addr) -> Result<(), NetError> {
        self.check_usable(ip)?;
        self.used.insert(u32::from(ip));
        Ok(())
    }

    /// Returns `ip` to the pool; unknown addresses are ignored.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }

    pub fn is_allocated(&self, ip: Ipv4Addr) -> bool {
        self.used.contains(&u32::from(ip))
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.net
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn subnet_parse_and_normalise() {
        let n: Ipv4Net = "172.17.5.3/16".parse().unwrap();
        assert_eq!(n.to_string(), "172.17.0.0/16");
        assert_eq!(n.broadcast(), ip("172.17.255.255"));
        assert!(n.contains(ip("172.17.200.1")));
        assert!(!n.contains(ip("172.18.0.1")));
        assert!("172.17.0.0".parse::<Ipv4Net>().is_err());
        assert!("172.17.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("foo/16".parse::<Ipv4Net>().is_err());
        let z: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(z.contains(ip("8.8.8.8")));
    }

    #[test]
    fn mac_derivation_matches_docker() {
        assert_eq!(mac_for_ip(ip("172.17.0.2")), "02:42:ac:11:00:02");
        assert_eq!(mac_for_ip(ip("10.255.1.200")), "02:42:0a:ff:01:c8");
    }

    #[test]
    fn sequential_allocation_skips_reserved() {
        let mut ipam = Ipam::new("172.17.0.0/16".parse().unwrap(), ip("172.17.0.1")).unwrap();
        assert_eq!(ipam.allocate(None).unwrap(), ip("172.17.0.2"));
        assert_eq!(ipam.allocate(None).unwrap(), ip("172.17.0.3"));
        ipam.release(ip("172.17.0.2"));
        // next-fit: does not immediately reuse the released address
        assert_eq!(ipam.allocate(None).unwrap(), ip("172.17.0.4"));
    }

    #[test]
    fn small_subnet_exhausts_and_wraps() {
        // /29: .0 network, .1 gw, .2-.6 usable, .7 broadcast
        let mut ipam = Ipam::new("10.0.0.0/29".parse().unwrap(), ip("10.0.0.1")).unwrap();
        let got: Vec<_> = (0..5).map(|_| ipam.allocate(None).unwrap()).collect();
        assert_eq!(got, vec![ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.4"), ip("10.0.0.5"), ip("10.0.0.6")]);
        let e = ipam.allocate(None).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Conflict);
        ipam.release(ip("10.0.0.3"));
        assert_eq!(ipam.allocate(None).unwrap(), ip("10.0.0.3"));
    }

    #[test]
    fn gateway_in_middle_is_skipped() {
        let mut ipam = Ipam::new("10.0.0.0/29".parse().unwrap(), ip("10.0.0.3")).unwrap();
        let got: Vec<_> = (0..5).map(|_| ipam.allocate(None).unwrap()).collect();
        assert!(!got.contains(&ip("10.0.0.3")));
        assert!(got.contains(&ip("10.0.0.1")));
    }

    #[test]
    fn preferred_rules() {
        let mut ipam = Ipam::new("172.17.0.0/16".parse().unwrap(), ip("172.17.0.1")).unwrap();
        assert_eq!(ipam.allocate(Some(ip("172.17.0.9"))).unwrap(), ip("172.17.0.9"));
        assert_eq!(ipam.allocate(Some(ip("172.17.0.9"))).unwrap_err().kind(), crate::ErrorKind::Conflict);
        for bad in ["172.17.0.0", "172.17.0.1", "172.17.255.255", "10.0.0.2"] {
            assert_eq!(ipam.allocate(Some(ip(bad))).unwrap_err().kind(), crate::ErrorKind::InvalidInput, "{bad}");
        }
        // reserve is idempotent
        ipam.reserve(ip("172.17.0.9")).unwrap();
        assert!(ipam.is_allocated(ip("172.17.0.9")));
    }

    #[test]
    fn bad_gateway_or_prefix() {
        assert!(Ipam::new("10.0.0.0/31".parse().unwrap(), ip("10.0.0.1")).is_err());
        assert!(Ipam::new("10.0.0.0/24".parse().unwrap(), ip("10.0.1.1")).is_err());
        assert!(Ipam::new("10.0.0.0/24".parse().unwrap(), ip("10.0.0.0")).is_err());
        assert!(Ipam::new("10.0.0.0/24".parse().unwrap(), ip("10.0.0.255")).is_err());
    }
}

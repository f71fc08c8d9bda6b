//! Device names. With a prefix of at most 6 characters every name fits Linux's 15:
//!
//! | device                 | name                 | longest (prefix `shov`) |
//! |------------------------|----------------------|-------------------------|
//! | overlay bridge         | `<prefix><vni>`      | `shov16777215` (12)     |
//! | VXLAN device           | `<prefix>x<vni>`     | `shovx16777215` (13)    |
//! | host side of a veth    | `<prefix>v<8 hex>`   | `shovv1a2b3c4d` (13)    |
//!
//! The character after the prefix (digit, `x`, `v`) tells them apart. The veth suffix is a hash
//! of (vni, container ip), so the same address attached twice to one overlay collides ("File
//! exists" → conflict) instead of silently making two devices.

use std::net::Ipv4Addr;

/// Longest allowed prefix.
pub const MAX_PREFIX_LEN: usize = 6;
/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

pub fn bridge(prefix: &str, vni: u32) -> String {
    format!("{prefix}{vni}")
}

pub fn vxlan(prefix: &str, vni: u32) -> String {
    format!("{prefix}x{vni}")
}

/// FNV-1a over the vni and address bytes.
pub fn veth(prefix: &str, vni: u32, ip: Ipv4Addr) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in vni.to_be_bytes().into_iter().chain(ip.octets()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{prefix}v{h:08x}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Bridge(u32),
    Vxlan(u32),
    Veth,
}

fn parse_vni(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0') {
        return None;
    }
    s.parse().ok().filter(|v| (1..=MAX_VNI).contains(v))
}

/// Which of our devices `name` would be, if any.
pub fn parse(prefix: &str, name: &str) -> Option<DeviceKind> {
    let rest = name.strip_prefix(prefix)?;
    if let Some(v) = rest.strip_prefix('x') {
        return parse_vni(v).map(DeviceKind::Vxlan);
    }
    if let Some(h) = rest.strip_prefix('v') {
        return (h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then_some(DeviceKind::Veth);
    }
    parse_vni(rest).map(DeviceKind::Bridge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_parse_back() {
        let p = "shoalm";
        assert_eq!(p.len(), MAX_PREFIX_LEN);
        for vni in [1, 4096, MAX_VNI] {
            let (b, x) = (bridge(p, vni), vxlan(p, vni));
            assert!(b.len() <= 15 && x.len() <= 15, "{b} {x}");
            assert_eq!(parse(p, &b), Some(DeviceKind::Bridge(vni)));
            assert_eq!(parse(p, &x), Some(DeviceKind::Vxlan(vni)));
        }
        let v = veth(p, MAX_VNI, Ipv4Addr::new(10, 0, 0, 10));
        assert_eq!(v.len(), 15);
        assert_eq!(parse(p, &v), Some(DeviceKind::Veth));
        assert_eq!(bridge("shov", 4096), "shov4096");
        assert_eq!(vxlan("shov", 4096), "shovx4096");
        assert_ne!(veth("shov", 4096, Ipv4Addr::new(10, 0, 0, 10)), veth("shov", 4097, Ipv4Addr::new(10, 0, 0, 10)));
        assert_ne!(veth("shov", 4096, Ipv4Addr::new(10, 0, 0, 10)), veth("shov", 4096, Ipv4Addr::new(10, 0, 0, 11)));
        for other in [
            "shov",
            "shov0",
            "shov04096",
            "shovx",
            "shovx0",
            "shovx123456789",
            "shovvABCDEF12",
            "shovv123",
            "eth0",
            "shoal0",
            "shov16777216",
        ] {
            assert_eq!(parse("shov", other), None, "{other}");
        }
    }
}

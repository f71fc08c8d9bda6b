//! Service VIPs inside a container's network namespace: connections a container opens to a
//! service's virtual IP are DNATed, round robin, to the service's tasks on that network (what
//! Docker does with IPVS inside each container's namespace; here nftables `numgen`). Because the
//! translation happens in the client's own namespace, replies come back through it and are
//! un-DNATed there: no source NAT, the task sees the client's address.
//!
//! One table (family `ip`, [`VIP_TABLE`]) per container namespace, rendered whole and replaced
//! atomically; ports are kept (a VIP forwards every port, like Docker's). A VIP with no task
//! refuses connections (`reject`, TCP reset) instead of letting them time out.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::error::NetError;
use crate::ops::{in_netns_path, run};

/// The table in each container namespace.
pub const VIP_TABLE: &str = "shoal_vip";

/// One service VIP and the tasks behind it, in rotation order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VipRule {
    pub vip: Ipv4Addr,
    pub backends: Vec<Ipv4Addr>,
}

/// The `nft -f -` script that makes the table hold exactly `rules` (or removes it when empty).
pub fn render_vip_table(rules: &[VipRule]) -> String {
    let t = VIP_TABLE;
    // `table` is a no-op if it exists, so `delete` never fails.
    let mut s = format!("table ip {t}\ndelete table ip {t}\n");
    if rules.is_empty() {
        return s;
    }
    let _ = writeln!(s, "table ip {t} {{\n  chain output {{\n    type nat hook output priority -100; policy accept;");
    for r in rules {
        let vip = r.vip;
        match r.backends.as_slice() {
            [] => {
                let _ = writeln!(s, "    ip daddr {vip} meta l4proto tcp reject with tcp reset");
                let _ = writeln!(s, "    ip daddr {vip} reject");
            }
            [one] => {
                let _ = writeln!(s, "    ip daddr {vip} dnat to {one}");
            }
            many => {
                let map: Vec<String> = many.iter().enumerate().map(|(i, b)| format!("{i} : {b}")).collect();
                let _ = writeln!(s, "    ip daddr {vip} dnat to numgen inc mod {} map {{ {} }}", many.len(), map.join(", "));
            }
        }
    }
    s.push_str("  }\n}\n");
    s
}

/// Replaces the VIP table in the namespace at `netns_path` (blocking: call from
/// `spawn_blocking`).
pub fn apply_vips(netns_path: &Path, rules: &[VipRule]) -> Result<(), NetError> {
    let script = render_vip_table(rules);
    in_netns_path(netns_path, move || run("nft", &["-f", "-"], Some(&script)).map(drop))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn renders_round_robin_single_and_refusing_vips() {
        let rules = vec![
            VipRule { vip: ip("10.0.1.2"), backends: vec![ip("10.0.1.3"), ip("10.0.1.4")] },
            VipRule { vip: ip("10.0.1.5"), backends: vec![ip("10.0.1.6")] },
            VipRule { vip: ip("10.0.1.7"), backends: vec![] },
        ];
        assert_eq!(
            render_vip_table(&rules),
            "table ip shoal_vip\ndelete table ip shoal_vip\n\
             table ip shoal_vip {\n  chain output {\n    type nat hook output priority -100; policy accept;\n\
             \x20   ip daddr 10.0.1.2 dnat to numgen inc mod 2 map { 0 : 10.0.1.3, 1 : 10.0.1.4 }\n\
             \x20   ip daddr 10.0.1.5 dnat to 10.0.1.6\n\
             \x20   ip daddr 10.0.1.7 meta l4proto tcp reject with tcp reset\n\
             \x20   ip daddr 10.0.1.7 reject\n  }\n}\n"
        );
    }

    #[test]
    fn no_rules_removes_the_table() {
        assert_eq!(render_vip_table(&[]), "table ip shoal_vip\ndelete table ip shoal_vip\n");
    }
}

//! Rendering of our nftables table from in-memory state.
//!
//! The whole table is rendered as one `nft -f -` script that (re)creates it atomically:
//! `table ip T` (creates it if missing) + `delete table ip T` + the full definition, all in one
//! transaction. Other tables are never touched.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use crate::ipam::Ipv4Net;
use crate::ports::PublishedPort;

/// What the ruleset depends on.
pub struct RuleInput<'a> {
    pub table: &'a str,
    pub bridge: &'a str,
    pub subnet: Ipv4Net,
    /// (container ip, mapping), in a stable order.
    pub ports: &'a [(Ipv4Addr, PublishedPort)],
}

/// The complete `nft -f -` script replacing our table.
pub fn render_ruleset(inp: &RuleInput<'_>) -> String {
    let t = inp.table;
    let br = inp.bridge;
    let net = inp.subnet;
    let mut s = String::with_capacity(1024 + 80 * inp.ports.len());
    // `table` is a no-op if it exists; together with `delete` this makes the script idempotent.
    let _ = writeln!(s, "table ip {t}\ndelete table ip {t}\ntable ip {t} {{");
    // Published ports, jumped to for any packet addressed to a local address.
    s.push_str("  chain published {\n");
    for (cip, p) in inp.ports {
        s.push_str("    ");
        if let IpAddr::V4(h) = p.host_ip {
            if !h.is_unspecified() {
                let _ = write!(s, "ip daddr {h} ");
            }
        }
        let _ = writeln!(s, "{} dport {} dnat to {}:{}", p.proto, p.host_port, cip, p.container_port);
    }
    s.push_str("  }\n");
    s.push_str(
        "  chain prerouting {\n    type nat hook prerouting priority -100; policy accept;\n    fib daddr type local jump published\n  }\n",
    );
    s.push_str(
        "  chain output {\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump published\n  }\n",
    );
    let _ = write!(
        s,
        "  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n\
         \x20   oifname \"{br}\" ip saddr 127.0.0.0/8 masquerade\n\
         \x20   oifname \"{br}\" ip saddr {net} ct status dnat masquerade\n\
         \x20   oifname != \"{br}\" ip saddr {net} masquerade\n  }}\n"
    );
    let _ = write!(
        s,
        "  chain forward {{\n    type filter hook forward priority 0; policy accept;\n\
         \x20   iifname \"{br}\" accept\n    oifname \"{br}\" accept\n  }}\n"
    );
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Proto;

    #[test]
    fn renders_full_table() {
        let ports = vec![
            (
                "172.17.0.2".parse().unwrap(),
                PublishedPort { host_ip: "0.0.0.0".parse().unwrap(), host_port: 8080, container_port: 80, proto: Proto::Tcp },
            ),
            (
                "172.17.0.3".parse().unwrap(),
                PublishedPort { host_ip: "127.0.0.1".parse().unwrap(), host_port: 5353, container_port: 53, proto: Proto::Udp },
            ),
        ];
        let got = render_ruleset(&RuleInput {
            table: "shoal",
            bridge: "shoal0",
            subnet: "172.17.0.0/16".parse().unwrap(),
            ports: &ports,
        });
        let want = r#"table ip shoal
delete table ip shoal
table ip shoal {
  chain published {
    tcp dport 8080 dnat to 172.17.0.2:80
    ip daddr 127.0.0.1 udp dport 5353 dnat to 172.17.0.3:53
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    fib daddr type local jump published
  }
  chain output {
    type nat hook output priority -100; policy accept;
    fib daddr type local jump published
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    oifname "shoal0" ip saddr 127.0.0.0/8 masquerade
    oifname "shoal0" ip saddr 172.17.0.0/16 ct status dnat masquerade
    oifname != "shoal0" ip saddr 172.17.0.0/16 masquerade
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname "shoal0" accept
    oifname "shoal0" accept
  }
}
"#;
        assert_eq!(got, want);
    }

    #[test]
    fn empty_table_has_empty_published_chain() {
        let got = render_ruleset(&RuleInput {
            table: "t2",
            bridge: "br-x",
            subnet: "10.1.0.0/24".parse().unwrap(),
            ports: &[],
        });
        assert!(got.starts_with("table ip t2\ndelete table ip t2\ntable ip t2 {\n  chain published {\n  }\n"));
        assert!(got.contains("oifname != \"br-x\" ip saddr 10.1.0.0/24 masquerade"));
    }
}

//! Rendering of the mesh's own nftables table (pure; unit-tested for exact text).
//!
//! Same discipline as [`crate::render_ruleset`]: the whole table is one `nft -f -` script that
//! recreates it atomically (`table` + `delete table` + the full definition in one transaction),
//! so a replace never leaves a moment without rules. Conntrack entries survive the replace, so
//! established connections keep their DNAT mapping.

use std::fmt::Write as _;

use super::{IngressPort, Proto};

/// What the mesh table depends on.
pub struct MeshRuleInput<'a> {
    /// Table name (family `ip`).
    pub table: &'a str,
    /// Every overlay bridge of this node, for the forward accepts.
    pub bridges: &'a [String],
    /// The ingress overlay's bridge when ingress is active (it has a host address). `None` renders
    /// no NAT chains at all.
    pub ingress_bridge: Option<&'a str>,
    /// Published ingress ports (ignored when `ingress_bridge` is `None`).
    pub ports: &'a [IngressPort],
}

/// The script that removes our table if it exists (and succeeds if it does not).
pub fn render_mesh_delete(table: &str) -> String {
    format!("table ip {table}\ndelete table ip {table}\n")
}

/// One rule of the `ingress` chain.
fn port_rule(p: &IngressPort) -> String {
    let proto = p.proto;
    let dport = p.published;
    // Local tasks' bridge addresses leave through the node's bridge, which this table does not
    // masquerade: the client's address reaches the task.
    let targets = if p.local.is_empty() { &p.backends } else { &p.local };
    match targets.as_slice() {
        [] => match proto {
            Proto::Tcp => format!("{proto} dport {dport} reject with tcp reset"),
            Proto::Udp => format!("{proto} dport {dport} reject"),
        },
        [one] => format!("{proto} dport {dport} dnat to {one}:{}", p.target),
        many => {
            let mut m = String::with_capacity(20 * many.len());
            for (i, ip) in many.iter().enumerate() {
                if i > 0 {
                    m.push_str(", ");
                }
                let _ = write!(m, "{i} : {ip}");
            }
            format!("{proto} dport {dport} dnat to numgen inc mod {} map {{ {m} }} : {}", many.len(), p.target)
        }
    }
}

/// The complete `nft -f -` script replacing our table.
///
/// - `ingress`: one rule per published port, sorted by (proto, port). Several backends are
///   chosen round robin by `numgen inc mod N` looked up in an anonymous map; the counter lives in
///   that one rule, which both `prerouting` and `output` jump to, so both paths share one
///   rotation. No backends: refused (`reject with tcp reset` / ICMP port unreachable).
/// - `prerouting`/`output` (nat, priority -100): any packet to a local address (`fib daddr type
///   local`), so every node address and 127.0.0.1 work (`route_localnet` is set on the ingress
///   bridge so 127.0.0.1-sourced packets may leave through it).
/// - `postrouting`: masquerade what we DNATed out of the ingress bridge (source becomes this
///   node's ingress address), so replies come back through this node.
/// - `forward`: accept to/from our bridges. Another table's drop still drops (an accept only
///   ends evaluation of its own base chain).
pub fn render_mesh_ruleset(inp: &MeshRuleInput<'_>) -> String {
    let t = inp.table;
    let mut s = String::with_capacity(1024 + 96 * inp.ports.len());
    let _ = writeln!(s, "table ip {t}\ndelete table ip {t}\ntable ip {t} {{");
    if let Some(br) = inp.ingress_bridge {
        let mut ports: Vec<&IngressPort> = inp.ports.iter().collect();
        ports.sort_by_key(|p| (p.proto, p.published));
        s.push_str("  chain ingress {\n");
        for p in ports {
            let _ = writeln!(s, "    {}", port_rule(p));
        }
        s.push_str("  }\n");
        s.push_str(
            "  chain prerouting {\n    type nat hook prerouting priority -100; policy accept;\n    fib daddr type local jump ingress\n  }\n",
        );
        s.push_str(
            "  chain output {\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump ingress\n  }\n",
        );
        let _ = write!(
            s,
            "  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n\
             \x20   oifname \"{br}\" ct status dnat masquerade\n  }}\n"
        );
    }
    s.push_str("  chain forward {\n    type filter hook forward priority 0; policy accept;\n");
    for br in inp.bridges {
        let _ = writeln!(s, "    iifname \"{br}\" accept\n    oifname \"{br}\" accept");
    }
    s.push_str("  }\n}\n");
    s
}

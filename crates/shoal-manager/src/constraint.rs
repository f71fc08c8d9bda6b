//! Placement constraints (swarmkit `manager/constraint/constraint.go`).
//!
//! Each constraint is `key == value` or `key != value`; a list is an AND. Values compare
//! case-insensitively and exactly; a missing attribute compares as `""` (so `!=` matches).
//! Supported keys: `node.id`, `node.hostname`, `node.ip` (an IP or a CIDR), `node.role`,
//! `node.platform.os`, `node.platform.arch`, `node.labels.<k>` (admin labels, `<k>` is
//! case-sensitive) and `engine.labels.<k>` (daemon labels reported by the node).
//!
//! Parse errors use swarmkit's texts (`constraint expected one operator from ==, !=`,
//! `key '…' is invalid`, `value '…' is invalid`). Unlike swarmkit, which only fails the match at
//! scheduling time, an unknown key is rejected at parse time so the API can answer 400.

use std::net::IpAddr;

use shoal_types::Node;

use crate::error::ManagerError;

/// `==` or `!=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
}

/// The attribute a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    NodeId,
    NodeHostname,
    NodeIp,
    NodeRole,
    PlatformOs,
    PlatformArch,
    /// `node.labels.<k>`
    NodeLabel(String),
    /// `engine.labels.<k>`
    EngineLabel(String),
}

const NODE_LABEL_PREFIX: &str = "node.labels.";
const ENGINE_LABEL_PREFIX: &str = "engine.labels.";

/// One parsed constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// The key as written.
    pub raw_key: String,
    pub key: Key,
    pub op: Op,
    /// The expected value as written (trimmed).
    pub exp: String,
}

fn valid_key(k: &str) -> bool {
    // swarmkit: ^(?i)[a-z_][a-z0-9\-_.]+$
    let mut chars = k.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    let rest: Vec<char> = chars.collect();
    !rest.is_empty()
        && rest
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_value(v: &str) -> bool {
    // swarmkit: ^(?i)[a-z0-9:\-_\s\.\*\(\)\?\+\[\]\\\^\$\|\/]+$
    !v.is_empty()
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || c.is_whitespace()
                || matches!(
                    c,
                    ':' | '-' | '_' | '.' | '*' | '(' | ')' | '?' | '+' | '[' | ']' | '\\' | '^'
                        | '$' | '|' | '/'
                )
        })
}

fn parse_key(k: &str) -> Option<Key> {
    let lower = k.to_ascii_lowercase();
    Some(match lower.as_str() {
        "node.id" => Key::NodeId,
        "node.hostname" => Key::NodeHostname,
        "node.ip" => Key::NodeIp,
        "node.role" => Key::NodeRole,
        "node.platform.os" => Key::PlatformOs,
        "node.platform.arch" => Key::PlatformArch,
        _ if lower.starts_with(NODE_LABEL_PREFIX) && k.len() > NODE_LABEL_PREFIX.len() => {
            Key::NodeLabel(k[NODE_LABEL_PREFIX.len()..].to_string())
        }
        _ if lower.starts_with(ENGINE_LABEL_PREFIX) && k.len() > ENGINE_LABEL_PREFIX.len() => {
            Key::EngineLabel(k[ENGINE_LABEL_PREFIX.len()..].to_string())
        }
        _ => return None,
    })
}

/// Parse one constraint expression.
pub fn parse(expr: &str) -> Result<Constraint, ManagerError> {
    for (op_str, op) in [("==", Op::Eq), ("!=", Op::Ne)] {
        let Some((k, v)) = expr.split_once(op_str) else {
            continue;
        };
        let k = k.trim();
        if !valid_key(k) {
            return Err(ManagerError::InvalidConstraint(format!("key '{k}' is invalid")));
        }
        let v = v.trim();
        if !valid_value(v) {
            return Err(ManagerError::InvalidConstraint(format!("value '{v}' is invalid")));
        }
        let key = parse_key(k).ok_or_else(|| {
            ManagerError::InvalidConstraint(format!(
                "constraint key '{k}' is not supported (use node.id, node.hostname, node.ip, \
                 node.role, node.platform.os, node.platform.arch, node.labels.<key> or \
                 engine.labels.<key>)"
            ))
        })?;
        return Ok(Constraint { raw_key: k.to_string(), key, op, exp: v.to_string() });
    }
    Err(ManagerError::InvalidConstraint(
        "constraint expected one operator from ==, !=".to_string(),
    ))
}

/// Parse a list of constraints (an AND).
pub fn parse_all(exprs: &[String]) -> Result<Vec<Constraint>, ManagerError> {
    exprs.iter().map(|e| parse(e)).collect()
}

/// For the API: `Err(message)` if any constraint is malformed (answer 400 with it).
pub fn validate_constraints(exprs: &[String]) -> Result<(), String> {
    parse_all(exprs).map(|_| ()).map_err(|e| e.to_string())
}

impl Constraint {
    fn matches_value(&self, what: &str) -> bool {
        let eq = self.exp.eq_ignore_ascii_case(what) || self.exp.to_lowercase() == what.to_lowercase();
        match self.op {
            Op::Eq => eq,
            Op::Ne => !eq,
        }
    }

    /// True if `node` satisfies this constraint.
    pub fn matches(&self, node: &Node) -> bool {
        match &self.key {
            Key::NodeId => self.matches_value(&node.id),
            Key::NodeHostname => self.matches_value(&node.description.hostname),
            Key::NodeRole => self.matches_value(node.spec.role.as_str()),
            Key::PlatformOs => self.matches_value(&node.description.platform.os),
            Key::PlatformArch => self.matches_value(&node.description.platform.architecture),
            Key::NodeLabel(k) => {
                self.matches_value(node.spec.labels.get(k).map(String::as_str).unwrap_or(""))
            }
            Key::EngineLabel(k) => self.matches_value(
                node.description.engine.labels.get(k).map(String::as_str).unwrap_or(""),
            ),
            Key::NodeIp => {
                let node_ip: Option<IpAddr> = node.status.addr.parse().ok();
                let within = if let Ok(ip) = self.exp.parse::<IpAddr>() {
                    Some(node_ip == Some(ip))
                } else {
                    parse_cidr(&self.exp).map(|(net, bits)| {
                        node_ip.is_some_and(|n| cidr_contains(net, bits, n))
                    })
                };
                match (within, self.op) {
                    (None, _) => false, // malformed address: the constraint fails
                    (Some(w), Op::Eq) => w,
                    (Some(w), Op::Ne) => !w,
                }
            }
        }
    }
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

fn cidr_contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits as u32) };
            (u32::from(n) & mask) == (u32::from(i) & mask)
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits as u32) };
            (u128::from(n) & mask) == (u128::from(i) & mask)
        }
        _ => false,
    }
}

/// True if `node` satisfies every constraint.
pub fn node_matches(constraints: &[Constraint], node: &Node) -> bool {
    constraints.iter().all(|c| c.matches(node))
}

/// Parse `exprs` and match; malformed constraints never match (stored specs were validated by
/// the API, so this only happens for data written by something else).
pub fn node_matches_exprs(exprs: &[String], node: &Node) -> bool {
    match parse_all(exprs) {
        Ok(c) => node_matches(&c, node),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::{NodeRole, Platform};

    fn node() -> Node {
        let mut n = Node { id: "node1abc".into(), ..Default::default() };
        n.description.hostname = "Worker-1".into();
        n.description.platform = Platform { architecture: "x86_64".into(), os: "linux".into() };
        n.spec.role = NodeRole::Worker;
        n.spec.labels.insert("zone".into(), "EU-1".into());
        n.description.engine.labels.insert("disk".into(), "ssd".into());
        n.status.addr = "10.1.2.3".into();
        n
    }

    fn m(expr: &str) -> bool {
        parse(expr).unwrap().matches(&node())
    }

    #[test]
    fn matches_every_key() {
        assert!(m("node.id==node1abc"));
        assert!(m("node.hostname==worker-1"), "case-insensitive value");
        assert!(m("node.role == worker"));
        assert!(!m("node.role==manager"));
        assert!(m("node.role!=manager"));
        assert!(m("node.platform.os==Linux"));
        assert!(m("node.platform.arch==x86_64"));
        assert!(m("node.labels.zone==eu-1"));
        assert!(!m("node.labels.Zone==eu-1"), "label key is case-sensitive");
        assert!(m("engine.labels.disk==ssd"));
        assert!(m("node.ip==10.1.2.3"));
        assert!(m("node.ip==10.1.0.0/16"));
        assert!(m("node.ip!=10.2.0.0/16"));
        assert!(!m("node.ip==10.2.0.0/16"));
        assert!(m("NODE.ROLE==worker"), "key is case-insensitive");
    }

    #[test]
    fn missing_attribute_is_empty() {
        assert!(!m("node.labels.rack==r1"));
        assert!(m("node.labels.rack!=r1"));
        assert!(m("engine.labels.gpu!=yes"));
    }

    #[test]
    fn list_is_and() {
        let c = parse_all(&["node.role==worker".into(), "node.labels.zone==eu-1".into()]).unwrap();
        assert!(node_matches(&c, &node()));
        let c = parse_all(&["node.role==worker".into(), "node.labels.zone==us".into()]).unwrap();
        assert!(!node_matches(&c, &node()));
    }

    #[test]
    fn parse_errors() {
        let e = |s: &str| validate_constraints(&[s.to_string()]).unwrap_err();
        assert_eq!(e("node.role=worker"), "constraint expected one operator from ==, !=");
        assert_eq!(e("node.role"), "constraint expected one operator from ==, !=");
        assert_eq!(e("==worker"), "key '' is invalid");
        assert_eq!(e("node.role==wor>ker"), "value 'wor>ker' is invalid");
        assert_eq!(e("node.role=="), "value '' is invalid");
        assert!(e("node.colour==red").starts_with("constraint key 'node.colour' is not supported"));
        assert!(e("node.labels.==x").contains("not supported"));
        assert!(validate_constraints(&["node.role==worker".into(), "node.labels.a!=b".into()]).is_ok());
        assert!(validate_constraints(&[]).is_ok());
    }

    #[test]
    fn malformed_ip_never_matches() {
        assert!(!m("node.ip==10.1.2"));
        assert!(!m("node.ip!=10.1.2"));
    }
}

//! `/networks`: the node-local networks every daemon has (`bridge`, `host`, `none`) and, on a
//! manager, the swarm-scoped overlay networks from the store, in Docker's `network.Inspect`
//! shape; create/remove of overlay networks goes to shoal-swarm.
//!
//! Lookups follow moby's `getNetwork`/`findUniqueNetwork`: full ID, then exact name, then unique
//! ID prefix, across both scopes. Local networks have stable 64-hex IDs derived from the data
//! root, so they survive restarts. A worker has no store: it lists its local networks and the
//! swarm networks it takes part in (ingress, its tasks' overlays) from its network map.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use shoal_engine::{NetworkMode, Status};
use shoal_swarm::ErrorKind;
use shoal_types::util::nullable;
use shoal_types::{Driver, IpamConfig, IpamOptions, Labels, Network, NetworkSpec, Node, Service, Task, TaskState, OVERLAY_DRIVER};

use crate::filters::Filters;
use crate::http::{self, ApiError, ApiResult, Query};
use crate::{wire, ApiState};

/// The predefined local networks: (name, driver).
const LOCAL: [(&str, &str); 3] = [("bridge", "bridge"), ("host", "host"), ("none", "null")];

const LIST_FILTERS: &[&str] = &["dangling", "driver", "id", "label", "name", "scope", "type"];

/// What shoal answers for local networks other than the three predefined ones.
const LOCAL_UNSUPPORTED: &str =
    "shoal supports only the default bridge network locally; create an overlay network (-d overlay) on a swarm manager";

/// Docker's text when an overlay network is asked of a node that is not a manager (moby
/// `daemon/network.go` answers it with 403 Forbidden, on workers too).
const NOT_MANAGER: &str =
    "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";

fn is_predefined(name: &str) -> bool {
    LOCAL.iter().any(|(n, _)| *n == name)
}

/// A network as the API sees it, from either scope.
struct Entry {
    id: String,
    name: String,
    driver: String,
    labels: Labels,
    /// Containers or services use it (moby's "dangling" test; predefined ones always count).
    in_use: bool,
    kind: Kind,
}

enum Kind {
    /// One of [`LOCAL`].
    Local,
    Swarm(Box<Network>),
}

impl Entry {
    fn scope(&self) -> &'static str {
        match self.kind {
            Kind::Local => "local",
            Kind::Swarm(_) => "swarm",
        }
    }
}

/// The stable ID of a local network on this daemon.
fn local_id(data_root: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("shoal-network\n{data_root}\n{name}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// When the local networks were "created": when the data root was.
fn local_created(data_root: &str) -> String {
    let meta = std::fs::metadata(data_root).ok();
    let t = meta.and_then(|m| m.created().or_else(|_| m.modified()).ok()).map(DateTime::<Utc>::from);
    wire::time(t)
}

/// The swarm networks (managers; empty elsewhere), with the services of the store.
fn swarm_state(state: &ApiState) -> Result<(Vec<Network>, Vec<Service>), ApiError> {
    let networks = match state.swarm.networks() {
        Ok(n) => n,
        // A worker (no store): the networks it takes part in, from its network map.
        Err(e) if e.kind() == ErrorKind::Unavailable => return Ok((state.swarm.node_networks(), Vec::new())),
        Err(e) => return Err(e.into()),
    };
    let services = state.swarm.services().unwrap_or_default();
    Ok((networks, services))
}

/// Every network in `scope` (`""` = both).
fn entries(state: &ApiState, scope: &str) -> Result<Vec<Entry>, ApiError> {
    let mut out = Vec::new();
    if scope.is_empty() || scope == "local" {
        for (name, driver) in LOCAL {
            out.push(Entry {
                id: local_id(&state.daemon.data_root, name),
                name: name.into(),
                driver: driver.into(),
                labels: Labels::new(),
                in_use: true,
                kind: Kind::Local,
            });
        }
    }
    if scope.is_empty() || scope == "swarm" {
        let (networks, services) = swarm_state(state)?;
        for n in networks {
            let in_use = if n.spec.ingress {
                services.iter().any(|s| s.spec.ports().iter().any(|p| p.publish_mode == shoal_types::PublishMode::Ingress))
            } else {
                services.iter().any(|s| s.spec.network_attachments().iter().any(|a| a.target == n.id))
            };
            out.push(Entry {
                id: n.id.clone(),
                name: n.spec.name.clone(),
                driver: if n.driver_state.name.is_empty() { OVERLAY_DRIVER.into() } else { n.driver_state.name.clone() },
                labels: n.spec.labels.clone(),
                in_use,
                kind: Kind::Swarm(Box::new(n)),
            });
        }
    }
    Ok(out)
}

/// moby's `getNetwork` resolution: full ID, unique exact name, unique ID prefix.
fn find<'a>(entries: &'a [Entry], term: &str) -> Result<&'a Entry, ApiError> {
    if let Some(e) = entries.iter().find(|e| e.id == term) {
        return Ok(e);
    }
    let by_name: Vec<&Entry> = entries.iter().filter(|e| e.name == term).collect();
    match by_name.len() {
        1 => return Ok(by_name[0]),
        0 => {}
        n => return Err(ApiError::bad_request(format!("network {term} is ambiguous ({n} matches found based on name)"))),
    }
    let by_prefix: Vec<&Entry> = entries.iter().filter(|e| !term.is_empty() && e.id.starts_with(term)).collect();
    match by_prefix.len() {
        1 => Ok(by_prefix[0]),
        0 => Err(ApiError::not_found(format!("network {term} not found"))),
        n => Err(ApiError::bad_request(format!("network {term} is ambiguous ({n} matches found based on ID prefix)"))),
    }
}

// ---- rendering ----

fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

fn nullable_map(m: &BTreeMap<String, String>) -> Value {
    if m.is_empty() {
        Value::Null
    } else {
        string_map(m)
    }
}

/// The `network.Inspect` object; `detailed` adds attached containers (and peers for swarm
/// networks), as moby does for `GET /networks/{id}` but not for the list.
fn render(state: &ApiState, e: &Entry, detailed: bool, peers: &[Value]) -> Value {
    let mut v = base(e);
    match &e.kind {
        Kind::Local => render_local(state, e, detailed, &mut v),
        Kind::Swarm(n) => render_swarm(n, detailed, peers, &mut v),
    }
    v
}

/// The fields every network has, with the defaults of a local network.
fn base(e: &Entry) -> Value {
    json!({
        "Name": e.name,
        "Id": e.id,
        "Scope": e.scope(),
        "Driver": e.driver,
        "EnableIPv4": true,
        "EnableIPv6": false,
        "Internal": false,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": {},
        "Labels": string_map(&e.labels),
    })
}

fn render_local(state: &ApiState, e: &Entry, detailed: bool, v: &mut Value) {
    let bridge = &state.engine.config().bridge;
    v["Created"] = json!(local_created(&state.daemon.data_root));
    if e.name == "bridge" {
        v["IPAM"] = json!({"Driver": "default", "Options": null,
            "Config": [{"Subnet": bridge.subnet.to_string(), "Gateway": bridge.gateway.to_string()}]});
        v["Options"] = json!({
            "com.docker.network.bridge.default_bridge": "true",
            "com.docker.network.bridge.enable_ip_masquerade": "true",
            "com.docker.network.bridge.name": bridge.bridge,
            "com.docker.network.driver.mtu": bridge.mtu.to_string(),
        });
    } else {
        v["IPAM"] = json!({"Driver": "default", "Options": null, "Config": []});
        v["Options"] = json!({});
    }
    if detailed {
        v["Containers"] = Value::Object(local_containers(state, &e.name));
    }
}

/// moby's `BasicNetworkFromGRPC` (plus `EnableIPv4` and the peers).
fn render_swarm(n: &Network, detailed: bool, peers: &[Value], v: &mut Value) {
    let ipam = n.ipam_options.clone().or_else(|| n.spec.ipam_options.clone()).unwrap_or_default();
    let configs: Vec<Value> = ipam
        .configs
        .iter()
        .map(|c| {
            let mut o = Map::new();
            for (k, val) in [("Subnet", &c.subnet), ("IPRange", &c.range), ("Gateway", &c.gateway)] {
                if !val.is_empty() {
                    o.insert(k.into(), json!(val));
                }
            }
            Value::Object(o)
        })
        .collect();
    let driver = if ipam.driver.name.is_empty() { "default" } else { ipam.driver.name.as_str() };
    v["Created"] = json!(wire::time(Some(n.meta.created_at)));
    v["EnableIPv6"] = json!(n.spec.ipv6_enabled);
    v["Internal"] = json!(n.spec.internal);
    v["Attachable"] = json!(n.spec.attachable);
    v["Ingress"] = json!(n.spec.ingress);
    v["IPAM"] = json!({"Driver": driver, "Options": nullable_map(&ipam.driver.options), "Config": configs});
    v["Options"] = string_map(&n.driver_state.options);
    if detailed && !peers.is_empty() {
        v["Peers"] = Value::Array(peers.to_vec());
    }
}

/// Running containers attached to a local network, keyed by container ID.
fn local_containers(state: &ApiState, network: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for rec in state.engine.list() {
        let mode = rec.config.host.network_mode;
        if mode.as_str() != network || rec.state.status != Status::Running {
            continue;
        }
        let (endpoint, mac, ipv4) = match mode {
            NetworkMode::Bridge => match rec.network.ip {
                Some(ip) => (rec.id.clone(), rec.network.mac.clone(), format!("{ip}/{}", rec.network.prefix_len)),
                None => continue,
            },
            NetworkMode::Host | NetworkMode::None => (String::new(), String::new(), String::new()),
        };
        out.insert(
            rec.id.clone(),
            json!({"Name": rec.name.trim_start_matches('/'), "EndpointID": endpoint, "MacAddress": mac, "IPv4Address": ipv4, "IPv6Address": ""}),
        );
    }
    out
}

/// The nodes holding an address on a swarm network (their ingress address, or a live task's).
fn peers(network: &Network, nodes: &[Node], tasks: &[Task]) -> Vec<Value> {
    nodes
        .iter()
        .filter(|node| {
            node.attachments.iter().any(|a| a.network_id == network.id)
                || tasks.iter().any(|t| {
                    t.node_id == node.id
                        && t.status.state <= TaskState::Running
                        && t.networks_attachments.iter().any(|a| a.network.id == network.id)
                })
        })
        .map(|node| json!({"Name": node.description.hostname, "IP": node.status.addr}))
        .collect()
}

// ---- filters ----

/// moby's `filters.Args.Match`: an exact match, or the value as an (unanchored) Go regular
/// expression; [`go_regex_match`] covers literals, `.`, `*`, `+`, `?`, `^`, `$` and `\` escapes,
/// and anything else is matched as a plain substring.
fn filter_match(pattern: &str, text: &str) -> bool {
    pattern == text || go_regex_match(pattern, text).unwrap_or_else(|| text.contains(pattern))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Atom {
    Any,
    Lit(char),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    One(Atom),
    Star(Atom),
    Plus(Atom),
    Opt(Atom),
    End,
}

/// A small regular-expression subset; `None` when the pattern uses syntax outside it.
fn go_regex_match(pattern: &str, text: &str) -> Option<bool> {
    let mut chars = pattern.chars().peekable();
    let anchored = chars.peek() == Some(&'^');
    if anchored {
        chars.next();
    }
    let mut toks = Vec::new();
    while let Some(c) = chars.next() {
        let atom = match c {
            '.' => Atom::Any,
            '\\' => Atom::Lit(chars.next()?),
            '$' if chars.peek().is_none() => {
                toks.push(Tok::End);
                break;
            }
            '[' | ']' | '(' | ')' | '|' | '{' | '}' | '^' | '$' | '*' | '+' | '?' => return None,
            c => Atom::Lit(c),
        };
        let tok = match chars.peek() {
            Some('*') => Tok::Star(atom),
            Some('+') => Tok::Plus(atom),
            Some('?') => Tok::Opt(atom),
            _ => Tok::One(atom),
        };
        if tok != Tok::One(atom) {
            chars.next();
        }
        toks.push(tok);
    }
    let text: Vec<char> = text.chars().collect();
    if anchored {
        return Some(match_here(&toks, &text));
    }
    Some((0..=text.len()).any(|i| match_here(&toks, &text[i..])))
}

fn match_here(toks: &[Tok], text: &[char]) -> bool {
    let atom_ok = |a: Atom, c: char| a == Atom::Any || a == Atom::Lit(c);
    let Some((first, rest)) = toks.split_first() else { return true };
    match *first {
        Tok::End => text.is_empty(),
        Tok::One(a) => text.first().is_some_and(|&c| atom_ok(a, c)) && match_here(rest, &text[1..]),
        Tok::Star(a) | Tok::Plus(a) => {
            let min = usize::from(matches!(first, Tok::Plus(_)));
            let run = text.iter().take_while(|&&c| atom_ok(a, c)).count();
            (min..=run).rev().any(|i| match_here(rest, &text[i..]))
        }
        Tok::Opt(a) => {
            (text.first().is_some_and(|&c| atom_ok(a, c)) && match_here(rest, &text[1..])) || match_here(rest, text)
        }
    }
}

/// moby's `FilterNetworks` for one network (the `type` and `dangling` values are checked first).
fn matches(f: &Filters, e: &Entry) -> bool {
    f.any("driver", |v| v == e.driver)
        && f.any("name", |v| filter_match(v, &e.name))
        && f.any("id", |v| filter_match(v, &e.id))
        && f.labels_match(&e.labels)
        && f.any("scope", |v| v == e.scope())
        && f.any("type", |v| (v == "builtin") == is_predefined(&e.name))
        && dangling_ok(f, e)
}

fn check_filter_values(f: &Filters) -> Result<(), ApiError> {
    if let Some(values) = f.get("dangling") {
        if values.len() > 1 {
            return Err(ApiError::bad_request("got more than one value for filter key \"dangling\""));
        }
        if !values.iter().all(|v| matches!(v.as_str(), "0" | "1" | "true" | "false")) {
            return Err(ApiError::bad_request("invalid value for filter 'dangling', must be \"true\" (or \"1\"), or \"false\" (or \"0\")"));
        }
    }
    for v in f.get("type").into_iter().flatten() {
        if v != "builtin" && v != "custom" {
            return Err(ApiError::bad_request(format!("invalid filter: 'type'='{v}'")));
        }
    }
    Ok(())
}

// ---- handlers ----

/// `GET /networks`.
pub async fn list(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    let f = Filters::parse(q.get("filters"), LIST_FILTERS)?;
    check_filter_values(&f)?;
    let mut all = entries(state, "")?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let out: Vec<Value> = all.iter().filter(|e| matches(&f, e)).map(|e| render(state, e, false, &[])).collect();
    Ok(http::json(StatusCode::OK, &out))
}

/// `dangling=true` (or `1`) keeps only unused custom networks, `dangling=false` the others.
fn dangling_ok(f: &Filters, e: &Entry) -> bool {
    match f.get("dangling") {
        None => true,
        Some(d) if d.contains("true") || d.contains("1") => !is_predefined(&e.name) && !e.in_use,
        Some(_) => is_predefined(&e.name) || e.in_use,
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `GET /networks/{id}` (`?verbose`, `?scope=local|swarm`).
pub async fn inspect(state: &ApiState, req: Request<Incoming>, term: &str) -> ApiResult {
    let q = Query::parse(&req);
    if let Some(v) = q.get("verbose").filter(|v| !v.is_empty()) {
        parse_go_bool(v).ok_or_else(|| ApiError::bad_request(format!("invalid value for verbose: {v}")))?;
    }
    let scope = q.get("scope").unwrap_or("");
    let all = match scope {
        "" | "local" | "swarm" => entries(state, scope)?,
        _ => Vec::new(),
    };
    let e = find(&all, term)?;
    let peers = match &e.kind {
        Kind::Swarm(n) => peers(n, &state.swarm.nodes().unwrap_or_default(), &state.swarm.tasks().unwrap_or_default()),
        Kind::Local => Vec::new(),
    };
    Ok(http::json(StatusCode::OK, &render(state, e, true, &peers)))
}

/// `network.CreateRequest` (API 1.24–1.50).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateRequest {
    #[serde(deserialize_with = "nullable")]
    name: String,
    #[serde(deserialize_with = "nullable")]
    driver: String,
    #[serde(deserialize_with = "nullable")]
    scope: String,
    #[serde(rename = "EnableIPv4")]
    enable_ipv4: Option<bool>,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: Option<bool>,
    #[serde(rename = "IPAM")]
    ipam: Option<CreateIpam>,
    #[serde(deserialize_with = "nullable")]
    internal: bool,
    #[serde(deserialize_with = "nullable")]
    attachable: bool,
    #[serde(deserialize_with = "nullable")]
    ingress: bool,
    #[serde(deserialize_with = "nullable")]
    config_only: bool,
    config_from: Option<ConfigReference>,
    #[serde(deserialize_with = "nullable")]
    options: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    labels: BTreeMap<String, String>,
    /// Deprecated since 1.44; names are always unique here.
    #[allow(dead_code)]
    check_duplicate: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateIpam {
    #[serde(deserialize_with = "nullable")]
    driver: String,
    #[serde(deserialize_with = "nullable")]
    config: Vec<CreateIpamConfig>,
    #[serde(deserialize_with = "nullable")]
    options: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateIpamConfig {
    #[serde(deserialize_with = "nullable")]
    subnet: String,
    #[serde(rename = "IPRange", deserialize_with = "nullable")]
    ip_range: String,
    #[serde(deserialize_with = "nullable")]
    gateway: String,
    #[serde(rename = "AuxiliaryAddresses", deserialize_with = "nullable")]
    aux_addresses: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ConfigReference {
    #[serde(deserialize_with = "nullable")]
    network: String,
}

/// moby's `BasicNetworkCreateToGRPC`, refusing what shoal's overlay does not implement.
fn to_swarm_spec(body: CreateRequest) -> Result<NetworkSpec, ApiError> {
    let name = &body.name;
    if body.config_only {
        return Err(ApiError::bad_request(format!("network {name}: config-only networks (--config-only) are not supported by shoal")));
    }
    if body.enable_ipv4 == Some(false) {
        return Err(ApiError::bad_request(format!("network {name}: IPv4 cannot be disabled: shoal overlay networks are IPv4-only")));
    }
    let ipam_options = match body.ipam {
        None => None,
        Some(ipam) => {
            if ipam.config.iter().any(|c| !c.aux_addresses.is_empty()) {
                return Err(ApiError::bad_request(format!("network {name}: --aux-address is not supported by shoal")));
            }
            Some(IpamOptions {
                driver: Driver { name: if ipam.driver.is_empty() { "default".into() } else { ipam.driver }, options: ipam.options },
                configs: ipam
                    .config
                    .into_iter()
                    .map(|c| IpamConfig { subnet: c.subnet, range: c.ip_range, gateway: c.gateway })
                    .collect(),
            })
        }
    };
    Ok(NetworkSpec {
        name: body.name,
        labels: body.labels,
        driver_configuration: Some(Driver { name: body.driver, options: body.options }),
        ipv6_enabled: body.enable_ipv6.unwrap_or(false),
        internal: body.internal,
        attachable: body.attachable,
        ingress: body.ingress,
        ipam_options,
        config_from: body.config_from.map(|c| json!({ "Network": c.network })),
        scope: "swarm".into(),
    })
}

/// `POST /networks/create`: overlay networks on a manager; the local networks are the
/// predefined ones only. Order of checks as moby's `postNetworkCreate`/`createNetwork`.
pub async fn create(state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let body: CreateRequest = http::read_json(req.into_body()).await?;
    let (swarm_networks, _) = swarm_state(state)?;
    if swarm_networks.iter().any(|n| n.spec.name == body.name) {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("network with name {} already exists", body.name)));
    }
    if is_predefined(&body.name) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, format!("operation is not permitted on predefined {} network ", body.name)));
    }
    let manager = state.swarm.store().is_ok();
    let driver = if body.driver.is_empty() { "bridge" } else { body.driver.as_str() };
    if driver == OVERLAY_DRIVER && !manager {
        return Err(ApiError::new(StatusCode::FORBIDDEN, NOT_MANAGER));
    }
    if driver != OVERLAY_DRIVER && !(manager && body.scope == "swarm") {
        return Err(ApiError::bad_request(LOCAL_UNSUPPORTED));
    }
    let spec = to_swarm_spec(body)?;
    let id = state.swarm.create_network(spec).await?;
    Ok(http::json(StatusCode::CREATED, &json!({"Id": id, "Warning": ""})))
}

/// `DELETE /networks/{id}`.
pub async fn remove(state: &ApiState, term: &str) -> ApiResult {
    let all = entries(state, "")?;
    let e = find(&all, term)?;
    match &e.kind {
        Kind::Local => Err(ApiError::new(StatusCode::FORBIDDEN, format!("{} is a pre-defined network and cannot be removed", e.name))),
        Kind::Swarm(n) => {
            state.swarm.remove_network(&n.id).await?;
            Ok(http::empty(StatusCode::NO_CONTENT))
        }
    }
}

/// `POST /networks/prune`: only unused local custom networks are pruned (swarm networks never
/// are), and shoal has none.
pub async fn prune(_state: &ApiState, req: Request<Incoming>) -> ApiResult {
    let q = Query::parse(&req);
    Filters::parse(q.get("filters"), &["label", "label!", "until"])?;
    Ok(http::json(StatusCode::OK, &json!({"NetworksDeleted": []})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ConnectRequest {
    #[serde(deserialize_with = "nullable")]
    container: String,
}

/// `POST /networks/{id}/connect|disconnect`: the network and container are resolved (Docker's
/// 404s), then refused: a container's network is chosen when it is created.
pub async fn connect(state: &ApiState, req: Request<Incoming>, term: &str, connect: bool) -> ApiResult {
    let body: ConnectRequest = http::read_json(req.into_body()).await?;
    let all = entries(state, "")?;
    let network = find(&all, term)?;
    let container = state.engine.inspect(&body.container)?;
    let verb = if connect { "connect" } else { "disconnect" };
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "cannot {verb} container {} {} network {}: shoal does not support docker network {verb}; choose the network when creating the container (--network bridge, host or none)",
            container.name,
            if connect { "to" } else { "from" },
            network.name
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, swarm: bool) -> Entry {
        Entry {
            id: if swarm { format!("{name}id0000000000000000000000")[..25].to_string() } else { local_id("/var/lib/shoal", name) },
            name: name.into(),
            driver: if swarm { "overlay".into() } else { name.into() },
            labels: Labels::new(),
            in_use: !swarm,
            kind: if swarm { Kind::Swarm(Box::default()) } else { Kind::Local },
        }
    }

    #[test]
    fn local_ids_are_stable_hex_per_daemon() {
        let a = local_id("/var/lib/shoal", "bridge");
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(a, local_id("/var/lib/shoal", "bridge"));
        assert_ne!(a, local_id("/var/lib/shoal", "host"));
        assert_ne!(a, local_id("/tmp/other", "bridge"));
    }

    #[test]
    fn lookups_follow_moby() {
        let all = vec![entry("bridge", false), entry("host", false), entry("ingress", true), entry("backend", true)];
        assert_eq!(find(&all, "ingress").unwrap().name, "ingress");
        assert_eq!(find(&all, &all[3].id).unwrap().name, "backend");
        assert_eq!(find(&all, &all[3].id[..5]).unwrap().name, "backend");
        let e = find(&all, "nope").err().unwrap();
        assert_eq!((e.status, e.message.as_str()), (StatusCode::NOT_FOUND, "network nope not found"));
        let dup = vec![entry("x", true), entry("x", true)];
        assert!(find(&dup, "x").err().unwrap().message.contains("is ambiguous (2 matches found based on name)"));
    }

    #[test]
    fn filters_match_like_moby() {
        let f = |json: &str| Filters::parse(Some(json), LIST_FILTERS).unwrap();
        let ingress = entry("ingress", true);
        let bridge = entry("bridge", false);
        assert!(matches(&f(r#"{"driver":{"overlay":true}}"#), &ingress));
        assert!(!matches(&f(r#"{"driver":{"overlay":true}}"#), &bridge));
        assert!(matches(&f(r#"{"scope":["swarm"]}"#), &ingress));
        assert!(matches(&f(r#"{"type":["builtin"]}"#), &bridge));
        assert!(!matches(&f(r#"{"type":["builtin"]}"#), &ingress));
        assert!(matches(&f(r#"{"type":["custom"]}"#), &ingress));
        assert!(matches(&f(r#"{"name":["gre"]}"#), &ingress), "name is an unanchored regexp");
        assert!(matches(&f(r#"{"name":["^ing.*s$"]}"#), &ingress));
        assert!(!matches(&f(r#"{"name":["^gress"]}"#), &ingress));
        assert!(matches(&f(r#"{"id":["ingressid"]}"#), &ingress));
        assert!(check_filter_values(&f(r#"{"type":["other"]}"#)).unwrap_err().message.contains("invalid filter: 'type'='other'"));
        assert!(check_filter_values(&f(r#"{"dangling":["maybe"]}"#)).is_err());
        assert!(Filters::parse(Some(r#"{"nope":["x"]}"#), LIST_FILTERS).is_err());
        let dangling = f(r#"{"dangling":["true"]}"#);
        assert!(dangling_ok(&dangling, &ingress) && !dangling_ok(&dangling, &bridge));
    }

    #[test]
    fn mini_regex() {
        assert_eq!(go_regex_match("a.c", "xxabcx"), Some(true));
        assert_eq!(go_regex_match("^a+b?c$", "aaac"), Some(true));
        assert_eq!(go_regex_match("^a+b?c$", "aaacd"), Some(false));
        assert_eq!(go_regex_match("x\\.y", "x.y"), Some(true));
        assert_eq!(go_regex_match("x\\.y", "xzy"), Some(false));
        assert_eq!(go_regex_match("[ab]", "a"), None);
        assert!(filter_match("[ab]", "x[ab]y"), "unsupported syntax falls back to a substring");
    }

    #[test]
    fn create_requests_become_swarm_specs() {
        let body: CreateRequest = serde_json::from_str(
            r#"{"Name":"backend","Driver":"overlay","Scope":"","EnableIPv4":null,"IPAM":{"Driver":"default","Config":[{"Subnet":"10.9.0.0/24","Gateway":"10.9.0.254"}],"Options":null},
                "Internal":true,"Attachable":true,"Ingress":false,"ConfigOnly":false,"ConfigFrom":null,"Options":{"com.docker.network.driver.mtu":"1400"},"Labels":{"a":"b"}}"#,
        )
        .unwrap();
        let spec = to_swarm_spec(body).unwrap();
        assert_eq!(spec.name, "backend");
        assert!(spec.internal && spec.attachable && !spec.ingress);
        assert_eq!(spec.labels.get("a").map(String::as_str), Some("b"));
        let d = spec.driver_configuration.unwrap();
        assert_eq!((d.name.as_str(), d.options.len()), ("overlay", 1));
        let ipam = spec.ipam_options.unwrap();
        assert_eq!(ipam.driver.name, "default");
        assert_eq!((ipam.configs[0].subnet.as_str(), ipam.configs[0].gateway.as_str()), ("10.9.0.0/24", "10.9.0.254"));
        let body: CreateRequest = serde_json::from_str(r#"{"Name":"x","Driver":"overlay","ConfigOnly":true}"#).unwrap();
        assert!(to_swarm_spec(body).unwrap_err().message.contains("config-only"));
        let body: CreateRequest = serde_json::from_str(r#"{"Name":"x","IPAM":{"Config":[{"Subnet":"10.1.0.0/24","AuxiliaryAddresses":{"a":"10.1.0.5"}}]}}"#).unwrap();
        assert!(to_swarm_spec(body).unwrap_err().message.contains("--aux-address"));
    }

    #[test]
    fn swarm_networks_render_in_the_inspect_shape() {
        let mut n = shoal_swarm::networks::ingress_network().unwrap();
        n.spec.labels.insert("k".into(), "v".into());
        let e = Entry { id: n.id.clone(), name: n.spec.name.clone(), driver: "overlay".into(), labels: n.spec.labels.clone(), in_use: false, kind: Kind::Swarm(Box::new(n)) };
        let Kind::Swarm(net) = &e.kind else { unreachable!() };
        let mut node = Node { id: "n1".into(), ..Default::default() };
        node.description.hostname = "mgr".into();
        node.status.addr = "192.0.2.1".into();
        node.attachments.push(shoal_types::EndpointVirtualIp { network_id: net.id.clone(), addr: "10.0.0.2/24".into() });
        let peers = peers(net, &[node, Node::default()], &[]);
        let mut v = base(&e);
        render_swarm(net, true, &peers, &mut v);
        assert_eq!(v["Name"], "ingress");
        assert_eq!(v["Id"].as_str().unwrap().len(), 25);
        assert_eq!(v["Scope"], "swarm");
        assert_eq!(v["Driver"], "overlay");
        assert_eq!(v["Ingress"], true);
        assert_eq!(v["EnableIPv4"], true);
        assert_eq!(v["IPAM"], json!({"Driver": "default", "Options": null, "Config": [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]}));
        assert_eq!(v["Options"], json!({"com.docker.network.driver.overlay.vxlanid_list": "4096"}));
        assert_eq!(v["Labels"], json!({"k": "v"}));
        assert_eq!(v["ConfigFrom"], json!({"Network": ""}));
        assert_eq!(v["Peers"], json!([{"Name": "mgr", "IP": "192.0.2.1"}]));
        assert!(v["Created"].as_str().unwrap().ends_with('Z'));
    }
}

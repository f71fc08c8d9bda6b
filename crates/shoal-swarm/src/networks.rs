//! Swarm-scoped networks (swarmkit's `controlapi/network.go` and the network parts of moby's
//! `daemon/cluster`): the ingress network made at `swarm init`, create/remove of overlay
//! networks, and resolving a service's network attachments to network IDs.
//!
//! Decisions are pure functions over stored objects (unit-tested without a store); the `Swarm`
//! methods run them inside one store transaction, so two concurrent creates cannot both take a
//! name or a subnet, and a network cannot be removed while a service is being attached to it.

use shoal_manager::netalloc::{self, NetAllocError};
use shoal_types::{
    Driver, IpamConfig, IpamOptions, Network, NetworkSpec, PublishMode, Service, ServiceSpec, Task, TaskState, INGRESS_NAME,
    INGRESS_SUBNET, OVERLAY_DRIVER, VXLAN_ID_OPTION,
};
use tracing::info;

use crate::control::{lookup, validate_name};
use crate::error::{Result, SwarmError};
use crate::managers::ControlOp;
use crate::Swarm;

/// The label swarmkit reserves for its predefined networks.
pub const PREDEFINED_LABEL: &str = "com.docker.swarm.predefined";
/// The default IPAM driver's name.
pub const DEFAULT_IPAM: &str = "default";

/// The ingress network `swarm init` creates (Docker's defaults: overlay, 10.0.0.0/24), allocated.
pub fn ingress_network() -> Result<Network> {
    let spec = NetworkSpec {
        name: INGRESS_NAME.into(),
        driver_configuration: Some(Driver { name: OVERLAY_DRIVER.into(), ..Default::default() }),
        ingress: true,
        scope: "swarm".into(),
        ipam_options: Some(IpamOptions {
            driver: Driver { name: DEFAULT_IPAM.into(), ..Default::default() },
            configs: vec![IpamConfig { subnet: INGRESS_SUBNET.into(), ..Default::default() }],
        }),
        ..Default::default()
    };
    plan_network(shoal_types::new_id(), spec, &[])
}

/// swarmkit's `validateNetworkSpec`, restricted to what shoal implements: the overlay driver,
/// one IPv4 pool from the default IPAM driver, no config-only networks, no encryption.
pub fn validate_network_spec(spec: &NetworkSpec) -> Result<()> {
    if spec.name.is_empty() {
        return Err(SwarmError::Invalid("meta: name must be provided".into()));
    }
    validate_name(&spec.name)?;
    if spec.attachable && spec.ingress {
        return Err(SwarmError::Invalid("ingress network cannot be attachable".into()));
    }
    if spec.labels.contains_key(PREDEFINED_LABEL) {
        return Err(SwarmError::PermissionDenied(format!(
            "label {PREDEFINED_LABEL} is for internally created predefined networks and cannot be applied by users"
        )));
    }
    let driver = spec.driver_configuration.as_ref();
    let driver_name = driver.map(|d| d.name.as_str()).unwrap_or("");
    if !driver_name.is_empty() && driver_name != OVERLAY_DRIVER {
        return Err(SwarmError::Invalid(format!(
            "network driver {driver_name:?} is not supported for swarm-scoped networks: shoal supports only the overlay driver"
        )));
    }
    if let Some(d) = driver {
        if d.options.contains_key("encrypted") {
            return Err(SwarmError::Invalid("encrypted overlay networks (--opt encrypted) are not supported by shoal".into()));
        }
        if d.options.contains_key(VXLAN_ID_OPTION) {
            return Err(SwarmError::Invalid(format!(
                "option {VXLAN_ID_OPTION} cannot be set: the manager allocates the VXLAN ID"
            )));
        }
    }
    if spec.ipv6_enabled {
        return Err(SwarmError::Invalid(format!("network {}: IPv6 is not supported on overlay networks by shoal", spec.name)));
    }
    if spec.config_from.as_ref().is_some_and(|v| !v.is_null() && v.get("Network").and_then(|n| n.as_str()).is_none_or(|n| !n.is_empty())) {
        return Err(SwarmError::Invalid(format!("network {}: --config-from is not supported by shoal", spec.name)));
    }
    if let Some(ipam) = &spec.ipam_options {
        if !ipam.driver.name.is_empty() && ipam.driver.name != DEFAULT_IPAM {
            return Err(SwarmError::Invalid(format!("ipam driver {:?} is not supported: use the default IPAM driver", ipam.driver.name)));
        }
        if ipam.configs.len() > 1 {
            return Err(SwarmError::Invalid(format!(
                "network {}: only one IPAM pool (--subnet) per network is supported, got {}",
                spec.name,
                ipam.configs.len()
            )));
        }
        for c in &ipam.configs {
            validate_ipam_config(c)?;
        }
    }
    Ok(())
}

/// swarmkit's `validateIPAMConfiguration` (same texts), plus shoal's limits.
fn validate_ipam_config(c: &IpamConfig) -> Result<()> {
    if c.subnet.is_empty() {
        if !c.gateway.is_empty() || !c.range.is_empty() {
            return Err(SwarmError::Invalid("ipam configuration: a gateway or range needs a subnet".into()));
        }
        return Ok(());
    }
    let (net, len) = netalloc::parse_cidr(&c.subnet)
        .map_err(|_| SwarmError::Invalid(format!("ipam configuration: invalid subnet {}", c.subnet)))?;
    let contains = |ip: std::net::Ipv4Addr| {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
        u32::from(ip) & mask == u32::from(net)
    };
    if !c.range.is_empty() {
        let ip = c.range.split('/').next().and_then(|s| s.parse().ok());
        match ip {
            None => return Err(SwarmError::Invalid(format!("ipam configuration: invalid range {}", c.range))),
            Some(ip) if !contains(ip) => {
                return Err(SwarmError::Invalid(format!("ipam configuration: subnet {} does not contain range {}", c.subnet, c.range)))
            }
            Some(_) => {
                return Err(SwarmError::Invalid(format!("ipam configuration: range {}: --ip-range is not supported by shoal", c.range)))
            }
        }
    }
    if !c.gateway.is_empty() {
        match c.gateway.parse() {
            Err(_) => return Err(SwarmError::Invalid(format!("ipam configuration: invalid gateway {}", c.gateway))),
            Ok(ip) if !contains(ip) => {
                return Err(SwarmError::Invalid(format!("ipam configuration: subnet {} does not contain gateway {}", c.subnet, c.gateway)))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The stored network for `spec`: validated, its VXLAN ID and pool allocated against `existing`
/// (the user's `--opt`s kept next to the VXLAN ID in `DriverState.Options`).
pub fn plan_network(id: String, mut spec: NetworkSpec, existing: &[Network]) -> Result<Network> {
    validate_network_spec(&spec)?;
    spec.scope = "swarm".into();
    let driver = spec.driver_configuration.get_or_insert_with(Driver::default);
    if driver.name.is_empty() {
        driver.name = OVERLAY_DRIVER.into();
    }
    let user_options = driver.options.clone();
    let (subnet, gateway) = spec
        .ipam_options
        .as_ref()
        .and_then(|i| i.configs.first())
        .map(|c| (c.subnet.clone(), c.gateway.clone()))
        .unwrap_or_default();
    if let Some(ipam) = spec.ipam_options.as_mut() {
        if ipam.driver.name.is_empty() {
            ipam.driver.name = DEFAULT_IPAM.into();
        }
    }
    let mut network = Network { id, spec, ..Default::default() };
    netalloc::allocate_network(&mut network, existing, &subnet, &gateway).map_err(alloc_error)?;
    for (k, v) in user_options {
        network.driver_state.options.entry(k).or_insert(v);
    }
    if let (Some(stored), Some(asked)) = (network.ipam_options.as_mut(), network.spec.ipam_options.as_ref()) {
        stored.driver.options = asked.driver.options.clone();
    }
    Ok(network)
}

fn alloc_error(e: NetAllocError) -> SwarmError {
    match e {
        NetAllocError::PoolExhausted | NetAllocError::NetworkFull(_) => SwarmError::FailedPrecondition(e.to_string()),
        other => SwarmError::Invalid(other.to_string()),
    }
}

/// Why a network cannot be removed now (swarmkit's `removeNetwork`/`removeIngressNetwork`).
pub fn check_removable(network: &Network, services: &[Service], tasks: &[Task]) -> Result<()> {
    if network.spec.labels.get(PREDEFINED_LABEL).is_some_and(|v| v == "true") {
        return Err(SwarmError::FailedPrecondition(format!(
            "network {} ({}) is a swarm predefined network and cannot be removed",
            network.id, network.spec.name
        )));
    }
    if network.spec.ingress {
        if let Some(s) = services.iter().find(|s| needs_ingress(&s.spec)) {
            return Err(SwarmError::FailedPrecondition(format!(
                "ingress network cannot be removed because service {} depends on it",
                s.id
            )));
        }
        return Ok(());
    }
    if let Some(s) = services.iter().find(|s| references(&s.spec, &network.id)) {
        return Err(SwarmError::FailedPrecondition(format!("network {} is in use by service {}", network.id, s.id)));
    }
    let live = |t: &&Task| t.desired_state <= TaskState::Running && t.status.state <= TaskState::Running;
    if let Some(t) = tasks.iter().filter(live).find(|t| t.spec.networks.iter().any(|n| n.target == network.id)) {
        return Err(SwarmError::FailedPrecondition(format!("network {} is in use by task {}", network.id, t.id)));
    }
    Ok(())
}

/// swarmkit's `IsIngressNetworkNeeded`: the service publishes a port through the routing mesh.
fn needs_ingress(spec: &ServiceSpec) -> bool {
    spec.ports().iter().any(|p| p.publish_mode == PublishMode::Ingress)
}

/// swarmkit's service-by-network index: `TaskTemplate.Networks`, else the deprecated `Networks`.
fn references(spec: &ServiceSpec, network_id: &str) -> bool {
    spec.network_attachments().iter().any(|a| a.target == network_id)
}

/// Resolves every network attachment of a service spec (`TaskTemplate.Networks` and the
/// deprecated `Networks`) by full ID, name or unique ID prefix to the network's ID, as moby's
/// `populateNetworkID` does; refuses the ingress network (swarmkit's `validateNetworks`).
pub fn resolve_attachments(spec: &mut ServiceSpec, networks: &[Network]) -> Result<()> {
    for attachment in spec.task_template.networks.iter_mut().chain(spec.networks.iter_mut()) {
        if attachment.target.is_empty() {
            return Err(SwarmError::Invalid("network attachment: target must be provided".into()));
        }
        let network = lookup("network", networks.to_vec(), &attachment.target, |n| &n.id, |n| &n.spec.name)?;
        if network.spec.ingress {
            return Err(SwarmError::Invalid(format!(
                "Service cannot be explicitly attached to the ingress network {:?}",
                network.spec.name
            )));
        }
        attachment.target = network.id;
    }
    Ok(())
}

impl Swarm {
    /// Every swarm-scoped network (managers only).
    pub fn networks(&self) -> Result<Vec<Network>> {
        Ok(self.store()?.view().list::<Network>())
    }

    /// The swarm networks this node takes part in, from its network map: ingress and the
    /// overlays its containers are attached to — what a worker lists, as Docker's workers do.
    /// Empty outside a swarm or before the first map arrived.
    pub fn node_networks(&self) -> Vec<Network> {
        let Some(map) = self.active().and_then(|a| a.agent.network_map()) else { return Vec::new() };
        let attached: std::collections::BTreeSet<String> = self
            .engine()
            .list()
            .into_iter()
            .flat_map(|c| c.config.host.overlays.into_iter().map(|o| o.network_id))
            .collect();
        map.networks.iter().filter(|n| n.ingress || attached.contains(&n.id)).map(|n| n.to_network()).collect()
    }

    /// A swarm network by full ID, exact name or unique ID prefix.
    pub fn find_network(&self, reference: &str) -> Result<Network> {
        lookup("network", self.networks()?, reference, |n| &n.id, |n| &n.spec.name)
    }

    /// Resolves a service spec's network attachments to network IDs (see
    /// [`resolve_attachments`]).
    pub(crate) fn resolve_service_networks(&self, spec: &mut ServiceSpec) -> Result<()> {
        if spec.task_template.networks.is_empty() && spec.networks.is_empty() {
            return Ok(());
        }
        resolve_attachments(spec, &self.networks()?)
    }

    /// `POST /networks/create` for an overlay network: returns the new network's ID. Names are
    /// unique among swarm networks (Docker's 409 text); there is at most one ingress network.
    pub async fn create_network(&self, spec: NetworkSpec) -> Result<String> {
        self.store()?;
        validate_network_spec(&spec)?;
        let id = shoal_types::new_id();
        self.write::<()>(ControlOp::CreateNetwork { id: id.clone(), spec }).await?;
        Ok(id)
    }

    /// [`Swarm::create_network`] on the leader (the spec was validated by the first manager).
    pub(crate) async fn commit_create_network(&self, id: String, spec: NetworkSpec) -> Result<()> {
        let store = self.store()?;
        let network_id = id.clone();
        let name = spec.name.clone();
        let outcome = store
            .update(move |tx| {
                let existing = tx.list::<Network>();
                if existing.iter().any(|n| n.spec.name == spec.name) {
                    return Ok(Err(SwarmError::Conflict(format!("network with name {} already exists", spec.name))));
                }
                if spec.ingress {
                    if let Some(i) = existing.iter().find(|n| n.spec.ingress) {
                        return Ok(Err(SwarmError::AlreadyExists(format!("ingress network ({}) is already present", i.id))));
                    }
                }
                match plan_network(network_id, spec, &existing) {
                    Ok(network) => {
                        let summary = (network.vni(), network.pool().map(|(s, g)| (s.to_string(), g.to_string())));
                        tx.create(network)?;
                        Ok(Ok(summary))
                    }
                    Err(e) => Ok(Err(e)),
                }
            })
            .await??;
        let (vni, pool) = outcome;
        let (subnet, gateway) = pool.unwrap_or_default();
        info!(network = %name, id = %id, vni = ?vni, subnet = %subnet, gateway = %gateway, "network created");
        Ok(())
    }

    /// `DELETE /networks/{id}` for a swarm network; refused while a service (or a live task)
    /// uses it, and for the ingress network while a service publishes ingress ports.
    pub async fn remove_network(&self, reference: &str) -> Result<()> {
        let network = self.find_network(reference)?;
        self.write(ControlOp::RemoveNetwork { id: network.id, reference: reference.to_string() }).await
    }

    /// [`Swarm::remove_network`] on the leader.
    pub(crate) async fn commit_remove_network(&self, id: String, reference: String) -> Result<()> {
        let store = self.store()?;
        let removed = id.clone();
        let name = store
            .update(move |tx| {
                let Some(network) = tx.get::<Network>(&id) else {
                    return Ok(Err(SwarmError::NotFound { kind: "network", reference }));
                };
                if let Err(e) = check_removable(&network, &tx.list::<Service>(), &tx.list::<Task>()) {
                    return Ok(Err(e));
                }
                tx.delete::<Network>(&id)?;
                Ok(Ok(network.spec.name))
            })
            .await??;
        info!(network = %name, id = %removed, "network removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::NetworkAttachmentConfig;

    fn spec(json: &str) -> NetworkSpec {
        serde_json::from_str(json).unwrap()
    }

    fn planned(id: &str, json: &str, existing: &[Network]) -> Result<Network> {
        plan_network(id.into(), spec(json), existing)
    }

    #[test]
    fn ingress_is_dockers_default() {
        let n = ingress_network().unwrap();
        assert_eq!(n.id.len(), 25);
        assert_eq!(n.spec.name, "ingress");
        assert!(n.spec.ingress && !n.spec.attachable);
        assert_eq!(n.spec.scope, "swarm");
        assert_eq!(n.spec.driver_configuration.as_ref().unwrap().name, "overlay");
        assert_eq!(n.pool(), Some(("10.0.0.0/24", "10.0.0.1")));
        assert_eq!(n.vni(), Some(4096));
        assert_eq!(n.driver_state.name, "overlay");
        assert_eq!(n.ipam_options.as_ref().unwrap().driver.name, "default");
    }

    #[test]
    fn plans_allocate_and_keep_user_options() {
        let ingress = ingress_network().unwrap();
        let n = planned("a", r#"{"Name":"backend","DriverConfiguration":{"Name":"overlay","Options":{"com.docker.network.driver.mtu":"1400"}},"Attachable":true}"#, std::slice::from_ref(&ingress)).unwrap();
        assert_eq!(n.pool(), Some(("10.0.1.0/24", "10.0.1.1")));
        assert_eq!(n.vni(), Some(4097));
        assert_eq!(n.driver_state.options.get("com.docker.network.driver.mtu").map(String::as_str), Some("1400"));
        let n = planned("b", r#"{"Name":"db","IPAMOptions":{"Driver":{},"Configs":[{"Subnet":"192.168.7.0/24","Gateway":"192.168.7.254"}]}}"#, &[ingress.clone(), n]).unwrap();
        assert_eq!(n.pool(), Some(("192.168.7.0/24", "192.168.7.254")));
        assert_eq!(n.spec.driver_configuration.as_ref().unwrap().name, "overlay", "the default driver is overlay");
        let e = planned("c", r#"{"Name":"x","IPAMOptions":{"Configs":[{"Subnet":"10.0.0.128/25"}]}}"#, &[ingress]).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("subnet 10.0.0.128/25 overlaps with network ingress (10.0.0.0/24)"), "{e}");
    }

    #[test]
    fn validation_uses_swarmkit_texts() {
        let bad = |json: &str| validate_network_spec(&spec(json)).unwrap_err().to_string();
        assert!(bad(r#"{"Name":""}"#).contains("meta: name must be provided"));
        assert!(bad(r#"{"Name":"-x"}"#).contains("name must be valid as a DNS name component"));
        assert!(bad(r#"{"Name":"i","Ingress":true,"Attachable":true}"#).contains("ingress network cannot be attachable"));
        assert!(bad(r#"{"Name":"b","DriverConfiguration":{"Name":"bridge"}}"#).contains("shoal supports only the overlay driver"));
        assert!(bad(r#"{"Name":"s","DriverConfiguration":{"Name":"overlay","Options":{"encrypted":""}}}"#).contains("encrypted"));
        assert!(bad(r#"{"Name":"s","IPAMOptions":{"Configs":[{"Subnet":"10.9.0.0/33"}]}}"#).contains("ipam configuration: invalid subnet 10.9.0.0/33"));
        assert!(bad(r#"{"Name":"s","IPAMOptions":{"Configs":[{"Subnet":"10.9.0.0/24","Gateway":"10.8.0.1"}]}}"#)
            .contains("ipam configuration: subnet 10.9.0.0/24 does not contain gateway 10.8.0.1"));
        assert!(bad(r#"{"Name":"s","IPAMOptions":{"Configs":[{"Subnet":"10.9.0.0/24"},{"Subnet":"10.10.0.0/24"}]}}"#).contains("only one IPAM pool"));
        assert!(bad(r#"{"Name":"s","IPAMOptions":{"Driver":{"Name":"dhcp"}}}"#).contains("ipam driver \"dhcp\" is not supported"));
        let e = validate_network_spec(&spec(r#"{"Name":"s","Labels":{"com.docker.swarm.predefined":"true"}}"#)).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Forbidden);
        assert!(validate_network_spec(&spec(r#"{"Name":"ok_net-1","ConfigFrom":{"Network":""}}"#)).is_ok());
    }

    fn service_on(id: &str, targets: &[&str]) -> Service {
        let mut s = Service { id: id.into(), ..Default::default() };
        s.spec.name = id.into();
        s.spec.task_template.networks =
            targets.iter().map(|t| NetworkAttachmentConfig { target: t.to_string(), ..Default::default() }).collect();
        s
    }

    #[test]
    fn removal_is_refused_while_in_use() {
        let ingress = ingress_network().unwrap();
        let net = planned("netid", r#"{"Name":"backend"}"#, std::slice::from_ref(&ingress)).unwrap();
        let web = service_on("websvc", &["netid"]);
        let e = check_removable(&net, std::slice::from_ref(&web), &[]).unwrap_err();
        assert_eq!(e.to_string(), "rpc error: code = FailedPrecondition desc = network netid is in use by service websvc");
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(check_removable(&net, &[service_on("other", &["x"])], &[]).is_ok());
        let mut task = Task { id: "t1".into(), ..Default::default() };
        task.spec.networks = web.spec.task_template.networks.clone();
        task.status.state = TaskState::Running;
        task.desired_state = TaskState::Running;
        assert!(check_removable(&net, &[], std::slice::from_ref(&task)).unwrap_err().to_string().contains("in use by task t1"));
        task.status.state = TaskState::Complete;
        assert!(check_removable(&net, &[], &[task]).is_ok());
        // ingress: only services publishing ingress ports hold it
        assert!(check_removable(&ingress, std::slice::from_ref(&web), &[]).is_ok());
        let mut published = service_on("pubsvc", &[]);
        published.spec.endpoint_spec = Some(serde_json::from_str(r#"{"Ports":[{"TargetPort":80,"PublishedPort":8080}]}"#).unwrap());
        let e = check_removable(&ingress, &[published], &[]).unwrap_err();
        assert!(e.to_string().contains("ingress network cannot be removed because service pubsvc depends on it"), "{e}");
    }

    #[test]
    fn attachments_resolve_to_ids() {
        let ingress = ingress_network().unwrap();
        let backend = planned("abcdef0123456789abcdef012", r#"{"Name":"backend"}"#, std::slice::from_ref(&ingress)).unwrap();
        let nets = vec![ingress.clone(), backend.clone()];
        let mut spec = service_on("s", &["backend"]).spec;
        resolve_attachments(&mut spec, &nets).unwrap();
        assert_eq!(spec.task_template.networks[0].target, backend.id);
        let mut spec = service_on("s", &["abcdef"]).spec;
        resolve_attachments(&mut spec, &nets).unwrap();
        assert_eq!(spec.task_template.networks[0].target, backend.id);
        let mut spec = service_on("s", &["nope"]).spec;
        let e = resolve_attachments(&mut spec, &nets).unwrap_err();
        assert_eq!((e.kind(), e.to_string()), (crate::ErrorKind::NotFound, "network nope not found".to_string()));
        let mut spec = service_on("s", &["ingress"]).spec;
        let e = resolve_attachments(&mut spec, &nets).unwrap_err();
        assert!(e.to_string().contains("Service cannot be explicitly attached to the ingress network \"ingress\""), "{e}");
        // the deprecated location is resolved as well
        let mut spec = ServiceSpec::default();
        spec.networks.push(NetworkAttachmentConfig { target: "backend".into(), ..Default::default() });
        resolve_attachments(&mut spec, &nets).unwrap();
        assert_eq!(spec.networks[0].target, backend.id);
    }
}

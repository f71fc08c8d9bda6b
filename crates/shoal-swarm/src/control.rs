//! The control API: reads and validated, versioned writes of cluster objects (swarmkit's
//! controlapi). Reads come from this manager's replica. A write is checked here as far as it
//! can be (specs, names, images), then runs on the leader as a [`ControlOp`] (`managers.rs`):
//! the `commit_*` methods, each one store transaction that re-checks what it read.

use chrono::Utc;

use shoal_types::{
    Cluster, Node, NodeRole, NodeState, PortConfig, PublishMode, ResolutionMode, Service, ServiceMode, ServiceSpec, ServiceStatus,
    SwarmSpec, Task, TaskState, UpdateState, UpdateStatus,
};

use tracing::info;

use crate::ca;
use crate::error::{Result, SwarmError};
use crate::managers::ControlOp;
use crate::Swarm;

/// Finds an object by full ID, exact name, or unique ID prefix (moby's lookup rules).
pub(crate) fn lookup<T: Clone>(kind: &'static str, items: Vec<T>, reference: &str, id: impl Fn(&T) -> &str, name: impl Fn(&T) -> &str) -> Result<T> {
    if let Some(found) = items.iter().find(|i| id(i) == reference) {
        return Ok(found.clone());
    }
    let by_name: Vec<&T> = items.iter().filter(|i| name(i) == reference).collect();
    if by_name.len() == 1 {
        return Ok(by_name[0].clone());
    }
    if by_name.len() > 1 {
        return Err(SwarmError::Ambiguous { kind, reference: reference.to_string(), count: by_name.len() });
    }
    let by_prefix: Vec<&T> = items.iter().filter(|i| !reference.is_empty() && id(i).starts_with(reference)).collect();
    match by_prefix.len() {
        1 => Ok(by_prefix[0].clone()),
        0 => Err(SwarmError::NotFound { kind, reference: reference.to_string() }),
        n => Err(SwarmError::Ambiguous { kind, reference: reference.to_string(), count: n }),
    }
}

/// swarmkit: names must be valid DNS name components, at most 63 characters.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SwarmError::Invalid(format!("name must be valid as a DNS name component: {name:?}")))
    }
}

const MAX_REPLICAS: u64 = 100_000;

/// Checks a service spec the way swarmkit's `validateServiceSpec` does.
pub fn validate_service_spec(spec: &ServiceSpec) -> Result<()> {
    validate_name(&spec.name)?;
    let task = &spec.task_template;
    let image = task.container_spec.image.trim();
    if image.is_empty() {
        return Err(SwarmError::Invalid("ContainerSpec: image reference must be provided".into()));
    }
    if image.contains(char::is_whitespace) || image.starts_with(['/', ':', '@']) || image.chars().any(|c| c.is_ascii_uppercase() && !image.contains('@') && !image.contains(':')) {
        return Err(SwarmError::Invalid(format!("ContainerSpec: {image:?} is not a valid repository/tag")));
    }
    if let Some(res) = &task.resources {
        for (what, limits) in [("limits", res.limits.as_ref().map(|l| (l.nano_cpus, l.memory_bytes))), ("reservations", res.reservations.as_ref().map(|r| (r.nano_cpus, r.memory_bytes)))] {
            if let Some((cpus, mem)) = limits {
                if cpus != 0 && cpus < 1_000_000 {
                    return Err(SwarmError::Invalid(format!("invalid cpu value {}: Must be at least 0.001 ({what})", cpus as f64 / 1e9)));
                }
                if mem != 0 && mem < 4 * 1024 * 1024 {
                    return Err(SwarmError::Invalid(format!("invalid memory value {mem}: Must be at least 4MiB ({what})")));
                }
            }
        }
    }
    if let Some(rp) = &task.restart_policy {
        if rp.delay.is_some_and(|d| d < 0) {
            return Err(SwarmError::Invalid("TaskSpec: restart-delay cannot be negative".into()));
        }
        if rp.window.is_some_and(|w| w < 0) {
            return Err(SwarmError::Invalid("TaskSpec: restart-window cannot be negative".into()));
        }
    }
    if let Some(gp) = task.container_spec.stop_grace_period {
        if gp < 0 {
            return Err(SwarmError::Invalid("ContainerSpec: stop-grace-period cannot be negative".into()));
        }
    }
    if let Some(p) = &task.placement {
        shoal_manager::constraint::validate_constraints(&p.constraints).map_err(SwarmError::Invalid)?;
    }
    for (what, cfg) in [("update", &spec.update_config), ("rollback", &spec.rollback_config)] {
        if let Some(c) = cfg {
            if c.delay < 0 {
                return Err(SwarmError::Invalid(format!("TaskSpec: {what}-delay cannot be negative")));
            }
            if c.monitor < 0 {
                return Err(SwarmError::Invalid(format!("TaskSpec: {what}-monitor cannot be negative")));
            }
            if !(0.0..=1.0).contains(&c.max_failure_ratio) {
                return Err(SwarmError::Invalid(format!("TaskSpec: {what}-maxfailureratio cannot be less than 0 or bigger than 1")));
            }
        }
    }
    match &spec.mode {
        ServiceMode::Replicated { replicas } if *replicas > MAX_REPLICAS => {
            return Err(SwarmError::Invalid(format!("replicas must be at most {MAX_REPLICAS}, got {replicas}")));
        }
        ServiceMode::ReplicatedJob { max_concurrent, total_completions } => {
            if *total_completions > MAX_REPLICAS || *max_concurrent > MAX_REPLICAS {
                return Err(SwarmError::Invalid(format!("job completions and concurrency must be at most {MAX_REPLICAS}")));
            }
            if spec.update_config.is_some() {
                return Err(SwarmError::Invalid("jobs may not have an update config".into()));
            }
        }
        ServiceMode::GlobalJob if spec.update_config.is_some() => {
            return Err(SwarmError::Invalid("jobs may not have an update config".into()));
        }
        _ => {}
    }
    validate_endpoint(spec)?;
    Ok(())
}

fn validate_endpoint(spec: &ServiceSpec) -> Result<()> {
    let Some(ep) = &spec.endpoint_spec else { return Ok(()) };
    let mut seen = std::collections::HashSet::new();
    for p in &ep.ports {
        if p.target_port == 0 || p.target_port > 65535 {
            return Err(SwarmError::Invalid(format!("EndpointSpec: invalid target port {}", p.target_port)));
        }
        if p.published_port > 65535 {
            return Err(SwarmError::Invalid(format!("EndpointSpec: invalid published port {}", p.published_port)));
        }
        if p.publish_mode == PublishMode::Ingress && ep.mode == ResolutionMode::Dnsrr {
            return Err(SwarmError::Invalid("EndpointSpec: port published with ingress mode can't be used with dnsrr mode".into()));
        }
        if p.published_port != 0 && !seen.insert((p.published_port, p.protocol.as_str(), p.publish_mode.as_str())) {
            return Err(SwarmError::Invalid("EndpointSpec: duplicate published ports provided".into()));
        }
    }
    Ok(())
}

/// The `ServiceStatus` counts `service ls` shows.
pub fn service_status(service: &Service, tasks: &[Task], nodes: &[Node]) -> ServiceStatus {
    let mine: Vec<&Task> = tasks.iter().filter(|t| t.service_id == service.id).collect();
    let node_up = |id: &str| nodes.iter().any(|n| n.id == id && n.status.state != NodeState::Down);
    let running = mine
        .iter()
        .filter(|t| t.status.state == TaskState::Running && t.desired_state <= TaskState::Running && node_up(&t.node_id))
        .count() as u64;
    let completed = mine.iter().filter(|t| t.status.state == TaskState::Complete).count() as u64;
    let desired = match &service.spec.mode {
        ServiceMode::Replicated { replicas } => *replicas,
        ServiceMode::ReplicatedJob { max_concurrent, total_completions } => (*max_concurrent).min(total_completions.saturating_sub(completed)),
        ServiceMode::Global | ServiceMode::GlobalJob => {
            mine.iter().filter(|t| t.desired_state == TaskState::Running).count() as u64
        }
    };
    ServiceStatus { running_tasks: running, desired_tasks: desired, completed_tasks: completed }
}

impl Swarm {
    // ---- cluster ----

    pub fn cluster(&self) -> Result<Cluster> {
        let store = self.store()?;
        store.view().list::<Cluster>().into_iter().next().map(|c| c.public()).ok_or_else(|| SwarmError::Internal("the cluster object is missing".into()))
    }

    pub fn unlock_key(&self) -> Result<String> {
        let store = self.store()?;
        let cluster = store.view().list::<Cluster>().into_iter().next().ok_or_else(|| SwarmError::Internal("the cluster object is missing".into()))?;
        // The key is only reported when autolock is on, as dockerd does.
        if !cluster.spec.encryption_config.auto_lock_managers {
            return Ok(String::new());
        }
        Ok(cluster.store_only.map(|s| s.unlock_key).unwrap_or_default())
    }

    /// `POST /swarm/update`: the new spec, token/unlock-key rotation, and the CA: a changed
    /// `CAConfig.ForceRotate` or a `SigningCACert`/`SigningCAKey` pair starts a root rotation
    /// (see `ca.rs`); `NodeCertExpiry` applies to certificates issued from now on, and nodes
    /// whose certificates are longer renew (see `certs.rs`). The signing CA cert and key are
    /// never stored in the spec.
    pub async fn update_cluster(&self, version: u64, spec: SwarmSpec, rotate_worker: bool, rotate_manager: bool, rotate_unlock: bool) -> Result<()> {
        self.store()?;
        self.write(ControlOp::UpdateCluster { version, spec, rotate_worker, rotate_manager, rotate_unlock }).await
    }

    /// [`Swarm::update_cluster`] on the leader.
    pub(crate) async fn commit_update_cluster(&self, version: u64, mut spec: SwarmSpec, rotate_worker: bool, rotate_manager: bool, rotate_unlock: bool) -> Result<()> {
        let store = self.store()?;
        if !spec.name.is_empty() && spec.name != "default" {
            return Err(SwarmError::Invalid("modification of cluster name is not allowed".into()));
        }
        if spec.ca_config.node_cert_expiry != 0 && spec.ca_config.node_cert_expiry < 3600 * 1_000_000_000 {
            return Err(SwarmError::Invalid("minimum certificate expiry time is: 1h0m0s".into()));
        }
        if spec.dispatcher.heartbeat_period < 0 {
            return Err(SwarmError::Invalid("heartbeat period must be positive".into()));
        }
        // The CA part is decided on the cluster as the caller saw it (`version`); the write
        // below fails if it changed meanwhile.
        let current = store.view().list::<Cluster>().into_iter().next().ok_or_else(|| SwarmError::Internal("the cluster object is missing".into()))?;
        if current.meta.version.index != version {
            return Err(SwarmError::OutOfSequence);
        }
        let request = ca::rotation_request(&current, &spec.ca_config)?;
        let target = match &request {
            ca::RotationRequest::Generate => Some(ca::generate_root_ca()?),
            ca::RotationRequest::To { cert_pem, key_pem } => {
                Some(shoal_rpc::RootCa::from_pem(cert_pem, key_pem).map_err(|e| SwarmError::Invalid(format!("invalid signing CA: {e}")))?)
            }
            ca::RotationRequest::Keep | ca::RotationRequest::Abort => None,
        };
        if let Some(target) = &target {
            // Fail here, with the reason, if the new root cannot be cross-signed.
            ca::start_rotation(&mut current.clone(), target)?;
            info!(force_rotate = spec.ca_config.force_rotate, given = matches!(request, ca::RotationRequest::To { .. }), "starting a root CA rotation");
        } else if request == ca::RotationRequest::Abort {
            info!("aborting the root CA rotation: the current root was asked for");
        }
        spec.ca_config.signing_ca_cert.clear();
        spec.ca_config.signing_ca_key.clear();
        let force_rotate = spec.ca_config.force_rotate;
        let ca_failed = |e: SwarmError| shoal_store::StoreError::Internal(e.to_string());
        store
            .update(move |tx| {
                let mut cluster = tx.list::<Cluster>().into_iter().next().ok_or_else(|| shoal_store::StoreError::Internal("no cluster".into()))?;
                if cluster.meta.version.index != version {
                    return Err(shoal_store::StoreError::SequenceConflict);
                }
                let name = cluster.spec.name.clone();
                cluster.spec = spec.merged_with_defaults();
                cluster.spec.name = name;
                match (&request, &target) {
                    (_, Some(target)) => ca::start_rotation(&mut cluster, target).map_err(ca_failed)?,
                    (ca::RotationRequest::Abort, None) => ca::abort_rotation(&mut cluster).map_err(ca_failed)?,
                    _ => {}
                }
                if let Some(s) = cluster.store_only.as_mut() {
                    s.last_forced_rotation = force_rotate;
                }
                let digest = cluster
                    .store_only
                    .as_ref()
                    .and_then(|s| ca::cert_digest(&s.root_ca_cert_pem).ok())
                    .unwrap_or_default();
                if rotate_worker {
                    cluster.join_tokens.worker = ca::new_join_token(&digest);
                }
                if rotate_manager {
                    cluster.join_tokens.manager = ca::new_join_token(&digest);
                }
                if rotate_unlock {
                    if let Some(s) = cluster.store_only.as_mut() {
                        s.unlock_key = shoal_types::unlock_key(&shoal_types::ids::new_unlock_secret());
                    }
                }
                tx.update(cluster)
            })
            .await?;
        Ok(())
    }

    // ---- nodes ----

    /// Every node; a manager's `ManagerStatus.Leader` says who leads as this manager sees it.
    pub fn nodes(&self) -> Result<Vec<Node>> {
        let store = self.store()?;
        let mut nodes = store.view().list::<Node>();
        crate::managers::overlay_leader(&mut nodes, store.raft_status().leader_addr());
        Ok(nodes)
    }

    pub fn find_node(&self, reference: &str) -> Result<Node> {
        let nodes = self.nodes()?;
        let self_id;
        let reference = if reference == "self" {
            self_id = self.node_id().unwrap_or_default();
            self_id.as_str()
        } else {
            reference
        };
        lookup("node", nodes, reference, |n| &n.id, |n| &n.description.hostname)
    }

    /// `POST /nodes/{id}/update` (also `docker node promote/demote`: the role in the spec).
    pub async fn update_node(&self, reference: &str, version: u64, spec: shoal_types::NodeSpec) -> Result<()> {
        let node = self.find_node(reference)?;
        self.write(ControlOp::UpdateNode { id: node.id, version, spec }).await
    }

    /// [`Swarm::update_node`] on the leader, with swarmkit's demotion checks: never the last
    /// manager, never a demotion that would leave the reachable managers short of a quorum.
    pub(crate) async fn commit_update_node(&self, id: String, version: u64, spec: shoal_types::NodeSpec) -> Result<()> {
        let store = self.store()?;
        let status = store.raft_status();
        let period = crate::dispatcher::heartbeat_period(store.view().list::<Cluster>().first());
        let reachable = crate::managers::voter_reachability(&status, (period * crate::dispatcher::GRACE_PERIODS).max(std::time::Duration::from_secs(2)));
        let members = status.members();
        let role = spec.role;
        store
            .update(move |tx| {
                let mut node = tx.get::<Node>(&id).ok_or_else(|| shoal_store::StoreError::NotFound { kind: "node".into(), id: id.clone() })?;
                if node.meta.version.index != version {
                    return Err(shoal_store::StoreError::SequenceConflict);
                }
                if node.spec.role == NodeRole::Manager && spec.role == NodeRole::Worker {
                    let managers = tx.list::<Node>().iter().filter(|n| n.spec.role == NodeRole::Manager).count();
                    if managers <= 1 {
                        return Err(shoal_store::StoreError::Invalid("attempting to demote the last manager of the swarm".into()));
                    }
                    let member = node.manager_status.as_ref().and_then(|ms| crate::managers::member_at(&members, &ms.addr));
                    if let Some(member) = member {
                        if !crate::managers::can_remove_member(&reachable, member) {
                            return Err(shoal_store::StoreError::Invalid("can't remove member from the raft: this would result in a loss of quorum".into()));
                        }
                    }
                }
                node.spec = spec;
                tx.update(node)
            })
            .await
            .map_err(|e| match e {
                shoal_store::StoreError::Invalid(m) => SwarmError::FailedPrecondition(m),
                other => other.into(),
            })?;
        info!(role = ?role, "node updated");
        Ok(())
    }

    /// `DELETE /nodes/{id}`: refused for a manager (it must be demoted first) and, without
    /// `force`, for a node that is not down.
    pub async fn remove_node(&self, reference: &str, force: bool) -> Result<()> {
        let node = self.find_node(reference)?;
        self.write(ControlOp::RemoveNode { id: node.id, force }).await
    }

    /// [`Swarm::remove_node`] on the leader.
    pub(crate) async fn commit_remove_node(&self, id: String, force: bool) -> Result<()> {
        let store = self.store()?;
        let node = store.view().get::<Node>(&id).ok_or_else(|| SwarmError::NotFound { kind: "node", reference: id.clone() })?;
        if node.spec.role == NodeRole::Manager || node.manager_status.is_some() {
            return Err(SwarmError::FailedPrecondition(format!(
                "node {} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal",
                node.id
            )));
        }
        if !force && node.status.state != NodeState::Down {
            return Err(SwarmError::FailedPrecondition(format!("node {} is not down and can't be removed", node.id)));
        }
        store.update(move |tx| tx.delete::<Node>(&id)).await?;
        Ok(())
    }

    // ---- services ----

    pub fn services(&self) -> Result<Vec<Service>> {
        Ok(self.store()?.view().list::<Service>())
    }

    pub fn find_service(&self, reference: &str) -> Result<Service> {
        lookup("service", self.services()?, reference, |s| &s.id, |s| &s.spec.name)
    }

    /// Makes sure the service's image exists on this node, pulling it if needed.
    async fn ensure_image(&self, image: &str) -> Result<()> {
        let images = self.engine().images().clone();
        let reference = image.to_string();
        let local = tokio::task::spawn_blocking(move || images.get(&reference)).await.map_err(|e| SwarmError::Internal(e.to_string()))?;
        if local.is_ok() {
            return Ok(());
        }
        let mut ignore = |_p: shoal_image::PullProgress| {};
        match self.engine().images().pull(image, &mut ignore).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == shoal_image::ErrorKind::InvalidInput => Err(SwarmError::Invalid(format!("ContainerSpec: {image:?} is not a valid repository/tag: {e}"))),
            Err(_) => Err(SwarmError::NotFound { kind: "image", reference: image.to_string() }),
        }
    }

    /// `POST /services/create`: returns the new service's ID.
    pub async fn create_service(&self, mut spec: ServiceSpec) -> Result<String> {
        self.store()?;
        if spec.name.is_empty() {
            spec.name = shoal_engine::random_name();
        }
        validate_service_spec(&spec)?;
        self.resolve_service_networks(&mut spec)?;
        let image = spec.task_template.container_spec.image.clone();
        self.ensure_image(&image).await?;
        let id = shoal_types::new_id();
        self.write::<()>(ControlOp::CreateService { id: id.clone(), spec }).await?;
        Ok(id)
    }

    /// [`Swarm::create_service`] on the leader: the spec was checked by the first manager.
    pub(crate) async fn commit_create_service(&self, service_id: String, spec: ServiceSpec) -> Result<()> {
        let store = self.store()?;
        store
            .update(move |tx| {
                let services = tx.list::<Service>();
                if services.iter().any(|s| s.spec.name == spec.name) {
                    return Err(shoal_store::StoreError::AlreadyExists { kind: "service".into(), id: spec.name.clone() });
                }
                shoal_manager::allocator::check_port_conflicts(&services, &spec, "").map_err(shoal_store::StoreError::Invalid)?;
                let mut service = Service { id: service_id.clone(), spec, ..Service::default() };
                service.endpoint = shoal_manager::allocator::allocate_endpoint(&service, &services)
                    .map_err(|e| shoal_store::StoreError::Invalid(e.to_string()))?;
                tx.create(service)
            })
            .await
            .map_err(|e| match e {
                shoal_store::StoreError::AlreadyExists { id, .. } => {
                    SwarmError::AlreadyExists(format!("name conflicts with an existing object: service {id} already exists"))
                }
                shoal_store::StoreError::Invalid(m) => SwarmError::Invalid(m),
                other => other.into(),
            })?;
        Ok(())
    }

    /// `POST /services/{id}/update` (with `rollback=previous` for a server-side rollback).
    pub async fn update_service(&self, reference: &str, version: u64, mut spec: ServiceSpec, rollback: bool) -> Result<()> {
        let current = self.find_service(reference)?;
        if !rollback {
            if spec.name != current.spec.name {
                return Err(SwarmError::Unimplemented("renaming services is not supported".into()));
            }
            if !spec.mode.same_kind(&current.spec.mode) {
                return Err(SwarmError::Unimplemented("service mode change is not allowed".into()));
            }
            validate_service_spec(&spec)?;
            self.resolve_service_networks(&mut spec)?;
            if spec.task_template.container_spec.image != current.spec.task_template.container_spec.image {
                self.ensure_image(&spec.task_template.container_spec.image).await?;
            }
        }
        self.write(ControlOp::UpdateService { id: current.id, version, spec, rollback }).await
    }

    /// [`Swarm::update_service`] on the leader.
    pub(crate) async fn commit_update_service(&self, id: String, version: u64, spec: ServiceSpec, rollback: bool) -> Result<()> {
        let store = self.store()?;
        store
            .update(move |tx| {
                let mut service = tx.get::<Service>(&id).ok_or_else(|| shoal_store::StoreError::NotFound { kind: "service".into(), id: id.clone() })?;
                if service.meta.version.index != version {
                    return Err(shoal_store::StoreError::SequenceConflict);
                }
                if rollback {
                    let Some(previous) = service.previous_spec.take() else {
                        return Err(shoal_store::StoreError::Invalid(format!("service {id} does not have a previous spec")));
                    };
                    let current_spec = std::mem::replace(&mut service.spec, previous);
                    service.previous_spec = Some(current_spec);
                    service.update_status = Some(UpdateStatus {
                        state: Some(UpdateState::RollbackStarted),
                        started_at: Some(Utc::now()),
                        completed_at: None,
                        message: "manually requested rollback".into(),
                    });
                } else {
                    service.previous_spec = Some(std::mem::replace(&mut service.spec, spec));
                    service.update_status = None;
                }
                let others: Vec<Service> = tx.list::<Service>().into_iter().filter(|s| s.id != id).collect();
                shoal_manager::allocator::check_port_conflicts(&others, &service.spec, &id).map_err(shoal_store::StoreError::Invalid)?;
                service.endpoint = shoal_manager::allocator::allocate_endpoint(&service, &others)
                    .map_err(|e| shoal_store::StoreError::Invalid(e.to_string()))?;
                tx.update(service)
            })
            .await
            .map_err(|e| match e {
                shoal_store::StoreError::Invalid(m) if m.contains("does not have a previous spec") => SwarmError::FailedPrecondition(m),
                shoal_store::StoreError::Invalid(m) => SwarmError::Invalid(m),
                other => other.into(),
            })
    }

    pub async fn remove_service(&self, reference: &str) -> Result<()> {
        let service = self.find_service(reference)?;
        self.write(ControlOp::RemoveService { id: service.id }).await
    }

    /// [`Swarm::remove_service`] on the leader.
    pub(crate) async fn commit_remove_service(&self, id: String) -> Result<()> {
        let store = self.store()?;
        store
            .update(move |tx| tx.delete::<Service>(&id))
            .await
            .map_err(|e| match e {
                shoal_store::StoreError::NotFound { id, .. } => SwarmError::NotFound { kind: "service", reference: id },
                other => other.into(),
            })?;
        Ok(())
    }

    // ---- tasks ----

    pub fn tasks(&self) -> Result<Vec<Task>> {
        Ok(self.store()?.view().list::<Task>())
    }

    pub fn get_task(&self, id: &str) -> Result<Task> {
        self.store()?.view().get::<Task>(id).ok_or_else(|| SwarmError::NotFound { kind: "task", reference: id.to_string() })
    }

    /// Whether a task runs its service's current spec (the `_up-to-date` filter).
    pub fn task_up_to_date(service: &Service, task: &Task, node: Option<&Node>) -> bool {
        !shoal_manager::orchestrator::is_task_dirty(service, task, node)
    }
}

/// Ports as `service ls` shows them: what the allocator filled in.
pub fn published_ports(service: &Service) -> &[PortConfig] {
    &service.endpoint.ports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> ServiceSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn rejects_bad_specs_like_swarmkit() {
        assert!(validate_service_spec(&spec(r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"nginx"}}}"#)).is_ok());
        let e = validate_service_spec(&spec(r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{}}}"#)).unwrap_err();
        assert!(e.to_string().contains("image reference must be provided"));
        assert!(validate_service_spec(&spec(r#"{"Name":"-bad","TaskTemplate":{"ContainerSpec":{"Image":"x"}}}"#)).is_err());
        let e = validate_service_spec(&spec(r#"{"Name":"w","TaskTemplate":{"ContainerSpec":{"Image":"x"},"Placement":{"Constraints":["node.role=worker"]}}}"#)).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        let e = validate_service_spec(&spec(r#"{"Name":"w","TaskTemplate":{"ContainerSpec":{"Image":"x"},"RestartPolicy":{"Delay":-1}}}"#)).unwrap_err();
        assert!(e.to_string().contains("restart-delay cannot be negative"));
        let e = validate_service_spec(&spec(r#"{"Name":"w","TaskTemplate":{"ContainerSpec":{"Image":"x"}},"Mode":{"Replicated":{"Replicas":100000000}}}"#)).unwrap_err();
        assert!(e.to_string().contains("replicas must be at most"));
        let e = validate_service_spec(&spec(r#"{"Name":"w","TaskTemplate":{"ContainerSpec":{"Image":"x"}},"EndpointSpec":{"Ports":[{"TargetPort":80,"PublishedPort":8001},{"TargetPort":81,"PublishedPort":8001}]}}"#)).unwrap_err();
        assert!(e.to_string().contains("duplicate published ports"));
        let e = validate_service_spec(&spec(r#"{"Name":"w","TaskTemplate":{"ContainerSpec":{"Image":"x"}},"EndpointSpec":{"Ports":[{"TargetPort":0,"PublishedPort":8001}]}}"#)).unwrap_err();
        assert!(e.to_string().contains("invalid target port"));
        let e = validate_service_spec(&spec(r#"{"Name":"w","TaskTemplate":{"ContainerSpec":{"Image":"x"}},"Mode":{"ReplicatedJob":{}},"UpdateConfig":{"Parallelism":1}}"#)).unwrap_err();
        assert!(e.to_string().contains("jobs may not have an update config"));
    }

    #[test]
    fn lookups_follow_moby() {
        let items = vec![("abc123".to_string(), "web".to_string()), ("abd456".to_string(), "db".to_string())];
        let get = |r: &str| lookup("service", items.clone(), r, |i| &i.0, |i| &i.1);
        assert_eq!(get("web").unwrap().0, "abc123");
        assert_eq!(get("abd").unwrap().1, "db");
        assert!(matches!(get("ab"), Err(SwarmError::Ambiguous { count: 2, .. })));
        assert!(matches!(get("zzz"), Err(SwarmError::NotFound { .. })));
    }
}

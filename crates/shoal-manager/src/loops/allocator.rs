//! The allocator loop: nodes' ingress addresses, service endpoints (published ports and VIPs),
//! tasks' overlay addresses, then NEW → PENDING.
//!
//! A task moves to PENDING ("pending task scheduling") once its service's endpoint is allocated
//! and it holds an address on every overlay network it joins. An allocation failure (a port
//! taken meanwhile, the dynamic range exhausted, a full or deleted network) leaves the tasks NEW
//! with the reason in `Status.Err`, instead of only in the logs as swarmkit does.

use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use shoal_store::{Action, StoreError, WriteTx};
use shoal_types::{EndpointVirtualIp, Network, NetworkAttachment, Node, Service, Task, TaskState, TaskStatus};

use super::{Ctx, Wake};
use crate::allocator::{allocate_endpoint, needs_allocation, task_networks, vip_networks};
use crate::netalloc::AddressBook;

#[derive(Default)]
struct Work {
    full: bool,
    services: BTreeSet<String>,
    tasks: BTreeSet<String>,
}

pub(crate) async fn run(mut ctx: Ctx) {
    let (_, mut rx) = ctx.store.watch();
    let mut work = Work { full: true, ..Default::default() };
    loop {
        if work.full || !work.services.is_empty() || !work.tasks.is_empty() {
            let w = std::mem::take(&mut work);
            if let Err(e) = ctx.write(|tx| allocate(tx, &w)).await {
                ctx.backoff(&e).await;
                work.full = true;
                continue;
            }
        }
        match ctx.next(&mut rx, None).await {
            Wake::Stop => return,
            Wake::Timer => {}
            Wake::Lagged => {
                rx = ctx.store.watch().1;
                work.full = true;
            }
            Wake::Commits(commits) => {
                for c in commits {
                    for ch in c.changes.iter().filter(|ch| ch.action != Action::Delete) {
                        if let Some(s) = ch.get::<Service>() {
                            // Allocate it, or let its waiting NEW tasks go on.
                            work.services.insert(s.id.clone());
                        } else if ch.get::<Network>().is_some() {
                            work.full = true;
                        } else if let Some(n) = ch.get::<Node>() {
                            if n.attachments.is_empty() {
                                work.full = true; // a new node: give it its ingress address
                            }
                        } else if let Some(t) = ch.get::<Task>() {
                            if t.status.state == TaskState::New {
                                work.tasks.insert(t.id.clone());
                            }
                        }
                    }
                }
            }
        }
    }
}

fn allocate(tx: &mut WriteTx, w: &Work) -> Result<(), StoreError> {
    let wall = Utc::now();
    let networks: HashMap<String, Network> = tx.list::<Network>().into_iter().map(|n| (n.id.clone(), n)).collect();
    let ingress_id = networks.values().find(|n| n.spec.ingress && n.pool().is_some()).map(|n| n.id.clone());
    let ingress_id = ingress_id.as_deref();
    let nodes = tx.list::<Node>();
    let mut services: HashMap<String, Service> = tx.list::<Service>().into_iter().map(|s| (s.id.clone(), s)).collect();
    let all_tasks = tx.list::<Task>();
    let net_list: Vec<Network> = networks.values().cloned().collect();
    let svc_list: Vec<Service> = services.values().cloned().collect();
    let mut book = AddressBook::from_state(&net_list, &nodes, &svc_list, &all_tasks);

    // Nodes: every node gets an address on the ingress network (the source of the traffic it
    // forwards to tasks on other nodes).
    if let Some(ingress) = ingress_id.and_then(|i| networks.get(i)) {
        for mut n in nodes.into_iter().filter(|n| !n.attachments.iter().any(|a| a.network_id == ingress.id)) {
            match book.allocate(ingress) {
                Ok(addr) => {
                    n.attachments.push(EndpointVirtualIp { network_id: ingress.id.clone(), addr });
                    tx.update(n)?;
                }
                Err(e) => tracing::warn!(target: "shoal_manager", node = %n.id, error = %e, "allocator: no ingress address for a node"),
            }
        }
    }

    let mut failed: HashMap<String, String> = HashMap::new();
    let mut ids: Vec<String> = services
        .values()
        .filter(|s| (w.full || w.services.contains(&s.id)) && needs_allocation(s, ingress_id))
        .map(|s| s.id.clone())
        .collect();
    ids.sort();
    for id in ids {
        let others: Vec<Service> = services.values().filter(|s| s.id != id).cloned().collect();
        let Some(mut svc) = services.get(&id).cloned() else { continue };
        let result = allocate_endpoint(&svc, &others).map_err(|e| e.to_string()).and_then(|mut ep| {
            // Keep the VIPs of networks still wanted, allocate the new ones.
            let wanted = vip_networks(&svc, ingress_id);
            let mut vips: Vec<EndpointVirtualIp> = Vec::new();
            for net_id in &wanted {
                if let Some(v) = svc.endpoint.virtual_ips.iter().find(|v| &v.network_id == net_id) {
                    vips.push(v.clone());
                    continue;
                }
                let net = networks.get(net_id).ok_or_else(|| format!("network {net_id} not found"))?;
                let addr = book.allocate(net).map_err(|e| e.to_string())?;
                vips.push(EndpointVirtualIp { network_id: net_id.clone(), addr });
            }
            ep.virtual_ips = vips;
            Ok(ep)
        });
        match result {
            Ok(ep) => {
                svc.endpoint = ep;
                tx.update(svc.clone())?;
                services.insert(id, svc);
            }
            Err(e) => {
                tracing::warn!(target: "shoal_manager", service = %id, error = %e, "allocator: service endpoint");
                failed.insert(id, e);
            }
        }
    }
    // Tasks: the ones named, plus every NEW task of a service handled here (or all on a full pass).
    let new_tasks: Vec<Task> = all_tasks
        .into_iter()
        .filter(|t| {
            t.status.state == TaskState::New
                && (w.full || w.tasks.contains(&t.id) || w.services.contains(&t.service_id))
        })
        .collect();
    for mut t in new_tasks {
        let Some(svc) = services.get(&t.service_id) else { continue };
        if let Some(err) = failed.get(&t.service_id) {
            let err = format!("allocation failed: {err}");
            if t.status.err != err {
                t.status.err = err;
                tx.update(t)?;
            }
            continue;
        }
        if needs_allocation(svc, ingress_id) {
            continue;
        }
        match task_attachments(&t, svc, ingress_id, &networks, &mut book) {
            Ok(attachments) => {
                t.networks_attachments = attachments;
                t.endpoint = Some(svc.endpoint.clone());
                t.status = TaskStatus::new(TaskState::Pending, wall);
            }
            Err(e) => {
                let err = format!("allocation failed: {e}");
                if t.status.err == err {
                    continue;
                }
                t.status.err = err;
            }
        }
        tx.update(t)?;
    }
    Ok(())
}

/// The task's overlay addresses: the ones it holds (a retried pass), or new ones.
fn task_attachments(
    t: &Task,
    svc: &Service,
    ingress_id: Option<&str>,
    networks: &HashMap<String, Network>,
    book: &mut AddressBook,
) -> Result<Vec<NetworkAttachment>, String> {
    let mut out = Vec::new();
    for net_id in task_networks(svc, ingress_id) {
        let net = networks.get(&net_id).ok_or_else(|| format!("network {net_id} not found"))?;
        if let Some(a) = t.networks_attachments.iter().find(|a| a.network.id == net_id && !a.addresses.is_empty()) {
            out.push(a.clone());
            continue;
        }
        let addr = book.allocate(net).map_err(|e| e.to_string())?;
        out.push(NetworkAttachment { network: net.clone(), addresses: vec![addr] });
    }
    Ok(out)
}

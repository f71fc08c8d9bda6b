//! Service discovery for this node's task containers on user overlay networks: the VIP rules in
//! each container's namespace ([`shoal_net::apply_vips`]) follow the network map, and the
//! embedded DNS server at 127.0.0.11 answers service names from it. Installed into the engine as
//! its [`NetnsHook`], so both are in place before a container's process starts.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use shoal_engine::{Engine, NetnsHook, OverlayAttachment, Status};
use shoal_net::dns::{DnsServer, Resolver};
use shoal_net::VipRule;
use shoal_types::NetworkMap;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::netmap;

/// The embedded DNS server's address inside containers.
pub const EMBEDDED_DNS: &str = "127.0.0.11";

struct Attached {
    netns: PathBuf,
    /// The user (non-ingress) overlay networks the container joins.
    networks: Vec<String>,
    rules: Vec<VipRule>,
}

pub(crate) struct Discovery {
    map: watch::Receiver<Option<NetworkMap>>,
    containers: Mutex<HashMap<String, Attached>>,
    dns: DnsServer,
    runtime: tokio::runtime::Handle,
}

/// The map's answers for the containers this node runs.
struct MapResolver {
    discovery: std::sync::Weak<Discovery>,
}

impl Resolver for MapResolver {
    fn resolve(&self, container_id: &str, name: &str) -> Option<Vec<Ipv4Addr>> {
        self.discovery.upgrade()?.resolve(container_id, name)
    }
}

impl Discovery {
    /// `runtime` serves the DNS sockets (the hook runs on blocking threads).
    pub(crate) fn new(map: watch::Receiver<Option<NetworkMap>>, runtime: tokio::runtime::Handle) -> Arc<Discovery> {
        let upstreams = DnsServer::upstreams_from_resolv_conf(Path::new("/etc/resolv.conf"));
        Arc::new_cyclic(|weak| Discovery {
            map,
            containers: Mutex::new(HashMap::new()),
            dns: DnsServer::new(Arc::new(MapResolver { discovery: weak.clone() }), upstreams),
            runtime,
        })
    }

    /// The embedded DNS answer for `name` asked by `container_id`.
    pub(crate) fn resolve(&self, container_id: &str, name: &str) -> Option<Vec<Ipv4Addr>> {
        let networks = self.lock().get(container_id)?.networks.clone();
        let map = self.map.borrow().clone()?;
        netmap::resolve(&map, &networks, name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attached>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn user_networks(map: &NetworkMap, overlays: &[OverlayAttachment]) -> Vec<String> {
        overlays
            .iter()
            .filter(|o| !map.networks.iter().any(|n| n.id == o.network_id && n.ingress))
            .map(|o| o.network_id.clone())
            .collect()
    }

    /// Re-applies the VIP rules whose services changed (blocking: nft runs in each namespace).
    pub(crate) fn refresh(&self) {
        let Some(map) = self.map.borrow().clone() else { return };
        let work: Vec<(String, PathBuf, Vec<VipRule>)> = self
            .lock()
            .iter()
            .filter_map(|(id, a)| {
                let rules = netmap::vip_rules(&map, &a.networks);
                (rules != a.rules).then(|| (id.clone(), a.netns.clone(), rules))
            })
            .collect();
        for (id, netns, rules) in work {
            match shoal_net::apply_vips(&netns, &rules) {
                Ok(()) => {
                    debug!(container = %id, vips = rules.len(), "service VIPs updated");
                    if let Some(a) = self.lock().get_mut(&id) {
                        a.rules = rules;
                    }
                }
                Err(e) => warn!(container = %id, error = %e, "updating service VIPs failed"),
            }
        }
    }

    /// Takes over running containers that joined user overlays before this agent started (a
    /// restarted daemon): their DNS server and VIP rules are set up again.
    pub(crate) fn adopt(&self, engine: &Engine) {
        for rec in engine.list() {
            if rec.config.host.overlays.is_empty() || rec.state.status != Status::Running || self.lock().contains_key(&rec.id) {
                continue;
            }
            let Ok(netns) = engine.netns_path(&rec.id) else { continue };
            if let Err(e) = self.netns_ready(&rec.id, &netns, &rec.config.host.overlays) {
                warn!(container = %rec.id, error = %e, "re-adopting service discovery failed");
            }
        }
    }
}

impl NetnsHook for Discovery {
    fn netns_ready(&self, container_id: &str, netns_path: &Path, overlays: &[OverlayAttachment]) -> Result<(), String> {
        let map = self.map.borrow().clone().unwrap_or_default();
        let networks = Self::user_networks(&map, overlays);
        if networks.is_empty() {
            return Ok(()); // ingress only: no service discovery (as with Docker)
        }
        let rules = netmap::vip_rules(&map, &networks);
        shoal_net::apply_vips(netns_path, &rules).map_err(|e| format!("setting up service VIPs: {e}"))?;
        self.lock().insert(container_id.to_string(), Attached { netns: netns_path.to_path_buf(), networks, rules });
        // Called on a blocking thread (never inside the runtime), so blocking on it is fine.
        if let Err(e) = self.runtime.block_on(self.dns.attach(container_id, netns_path)) {
            self.lock().remove(container_id);
            return Err(format!("starting the embedded DNS server: {e}"));
        }
        Ok(())
    }

    fn netns_gone(&self, container_id: &str) {
        if self.lock().remove(container_id).is_some() {
            self.dns.detach(container_id);
        }
    }
}

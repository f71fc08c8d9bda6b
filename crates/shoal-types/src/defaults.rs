//! swarmkit spec defaults (`api/defaults/service.go`, applied for `insertDefaults=true`).
use crate::node::NodeResources;
use crate::service::{EndpointSpec, ServiceSpec, UpdateConfig};
use crate::taskspec::{DnsConfig, Limit, ResourceRequirements, RestartCondition, RestartPolicy};
use crate::time::SECOND;

/// Default `StopGracePeriod` (10s).
pub const STOP_GRACE_PERIOD: i64 = 10 * SECOND;
/// Default restart delay (5s).
pub const RESTART_DELAY: i64 = 5 * SECOND;
/// Default update/rollback monitor period (5s).
pub const UPDATE_MONITOR: i64 = 5 * SECOND;

/// The spec with swarmkit's defaults filled into unset fields (`insertDefaults=true`):
/// StopGracePeriod 10s, DNSConfig {}, Resources {Limits {}, Reservations {}},
/// RestartPolicy {any, 5s delay, 0 attempts}, Placement {}, UpdateConfig/RollbackConfig
/// {Parallelism 1, pause, Monitor 5s, ratio 0, stop-first}, EndpointSpec {Mode vip}.
/// Fields already set are kept.
pub fn with_defaults(spec: &ServiceSpec) -> ServiceSpec {
    let mut s = spec.clone();
    let t = &mut s.task_template;
    let c = &mut t.container_spec;
    if c.stop_grace_period.is_none() {
        c.stop_grace_period = Some(STOP_GRACE_PERIOD);
    }
    if c.dns_config.is_none() {
        c.dns_config = Some(DnsConfig::default());
    }
    let r = t
        .resources
        .get_or_insert_with(ResourceRequirements::default);
    r.limits.get_or_insert_with(Limit::default);
    r.reservations.get_or_insert_with(NodeResources::default);
    let rp = t.restart_policy.get_or_insert_with(RestartPolicy::default);
    rp.condition.get_or_insert(RestartCondition::Any);
    rp.delay.get_or_insert(RESTART_DELAY);
    rp.max_attempts.get_or_insert(0);
    t.placement.get_or_insert_with(Default::default);
    for cfg in [&mut s.update_config, &mut s.rollback_config] {
        match cfg {
            None => *cfg = Some(UpdateConfig::default()),
            Some(u) => {
                if u.monitor == 0 {
                    u.monitor = UPDATE_MONITOR;
                }
            }
        }
    }
    s.endpoint_spec.get_or_insert_with(EndpointSpec::default);
    s
}

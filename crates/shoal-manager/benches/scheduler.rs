//! Scheduler throughput: 10,000 PENDING tasks (100 services × 100 replicas) placed on 1,000
//! in-memory nodes (10 zones; 900 workers, 100 managers) with a `node.role==worker` constraint,
//! a `spread=node.labels.zone` preference and a small CPU reservation. Target: ≤ 1 s.
//!
//! `cargo bench -p shoal-manager --bench scheduler` (plain timing loop, no criterion: it keeps the
//! dev-dependency tree small).

use std::time::{Duration, Instant};

use shoal_manager::scheduler::{schedule, NodeSet};
use shoal_types::{
    Node, NodeAvailability, NodeResources, NodeRole, NodeState, Placement, PlacementPreference, Platform,
    ResourceRequirements, SpreadOver, Task, TaskState, Version,
};

fn nodes() -> Vec<Node> {
    (0..1000)
        .map(|i| {
            let mut n = Node { id: format!("node{i:04}"), ..Default::default() };
            n.status.state = NodeState::Ready;
            n.spec.availability = NodeAvailability::Active;
            n.spec.role = if i % 10 == 0 { NodeRole::Manager } else { NodeRole::Worker };
            n.spec.labels.insert("zone".into(), format!("z{}", i % 10 + (i / 10) % 3));
            n.description.platform = Platform { architecture: "x86_64".into(), os: "linux".into() };
            n.description.resources = NodeResources { nano_cpus: 64_000_000_000, memory_bytes: 1 << 40, ..Default::default() };
            n
        })
        .collect()
}

fn tasks() -> Vec<Task> {
    let mut out = Vec::with_capacity(10_000);
    for s in 0..100 {
        for slot in 1..=100u64 {
            let mut t = Task {
                id: format!("task{s:03}{slot:04}"),
                service_id: format!("service{s:03}"),
                slot,
                spec_version: Some(Version::new(1)),
                ..Default::default()
            };
            t.status.state = TaskState::Pending;
            t.spec.placement = Some(Placement {
                constraints: vec!["node.role==worker".into()],
                preferences: vec![PlacementPreference {
                    spread: Some(SpreadOver { spread_descriptor: "node.labels.zone".into() }),
                }],
                ..Default::default()
            });
            t.spec.resources = Some(ResourceRequirements {
                reservations: Some(NodeResources { nano_cpus: 10_000_000, ..Default::default() }),
                ..Default::default()
            });
            out.push(t);
        }
    }
    out
}

fn main() {
    let nodes = nodes();
    let tasks = tasks();
    let runs = 5;
    let mut best = Duration::MAX;
    let mut total = Duration::ZERO;
    for _ in 0..runs {
        let mut set = NodeSet::from_state(&nodes, &[]);
        let start = Instant::now();
        let d = schedule(&mut set, &tasks);
        let el = start.elapsed();
        assert_eq!(d.len(), 10_000);
        assert!(d.iter().all(|x| x.result.is_ok()), "every task placed");
        assert!(set.iter().filter(|n| n.node.spec.role == NodeRole::Manager).all(|n| n.active_tasks == 0));
        best = best.min(el);
        total += el;
    }
    println!(
        "scheduler: 10000 tasks on 1000 nodes (constraint + spread + reservations): best {:.1} ms, mean {:.1} ms over {runs} runs (target <= 1000 ms)",
        best.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3 / runs as f64
    );
}

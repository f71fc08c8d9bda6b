//! The scheduler's decision logic (swarmkit `manager/scheduler/*.go`), pure and in memory.
//!
//! [`NodeSet`] is the scheduler's cache: per node its readiness and availability, the resources
//! left after reservations, the active tasks per service and in total, and recent task failures
//! per service. [`schedule`] places a batch of PENDING tasks:
//! - tasks with the same (service, spec version) form a group placed together;
//! - the filter pipeline (ready+active, reservations, constraints, platform, max replicas per
//!   node) decides which nodes may take a task, and explains refusals like swarmkit:
//!   `no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not available
//!   for new tasks)`;
//! - placement preferences (`spread=node.labels.X` / `engine.labels.X`) split the nodes into a
//!   decision tree whose branches get equal shares;
//! - within a branch nodes are ordered by: ≥ 5 recent failures of the service in 5 min last,
//!   then fewer tasks of the service, then fewer active tasks in total (then node ID, so the
//!   result is deterministic), and filled like swarmkit (level the nodes, then round robin).
//!
//! Global tasks arrive with `NodeID` preset: only the filters are checked on that node.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use shoal_types::{Node, NodeAvailability, NodeState, Platform, Task, TaskState};

use crate::constraint::{self, Constraint};

/// Nodes with this many recent failures of a service go last.
pub const MAX_FAILURES: usize = 5;
/// How long a failure counts as recent.
pub const MONITOR_FAILURES: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone)]
struct TaskEntry {
    service_id: String,
    active: bool,
    nano_cpus: i64,
    memory_bytes: i64,
}

impl TaskEntry {
    fn of(t: &Task) -> TaskEntry {
        let (nano_cpus, memory_bytes) = reservations(t);
        TaskEntry {
            service_id: t.service_id.clone(),
            active: t.desired_state <= TaskState::Running,
            nano_cpus,
            memory_bytes,
        }
    }
}

fn reservations(t: &Task) -> (i64, i64) {
    t.spec
        .resources
        .as_ref()
        .and_then(|r| r.reservations.as_ref())
        .map(|r| (r.nano_cpus, r.memory_bytes))
        .unwrap_or((0, 0))
}

/// What the scheduler knows about one node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Node,
    tasks: HashMap<String, TaskEntry>,
    /// Tasks on the node with desired state ≤ RUNNING.
    pub active_tasks: usize,
    /// Active tasks per service.
    pub active_by_service: HashMap<String, usize>,
    /// Node resources minus the reservations of its tasks.
    pub available_nano_cpus: i64,
    pub available_memory_bytes: i64,
    recent_failures: HashMap<String, Vec<Instant>>,
}

impl NodeInfo {
    pub fn new(node: Node) -> NodeInfo {
        let r = &node.description.resources;
        let (c, m) = (r.nano_cpus, r.memory_bytes);
        NodeInfo {
            node,
            tasks: HashMap::new(),
            active_tasks: 0,
            active_by_service: HashMap::new(),
            available_nano_cpus: c,
            available_memory_bytes: m,
            recent_failures: HashMap::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.node.id
    }

    /// Active tasks of `service_id` on this node.
    pub fn tasks_of_service(&self, service_id: &str) -> usize {
        self.active_by_service.get(service_id).copied().unwrap_or(0)
    }

    /// Number of tasks (active or not yet stopped) the node holds.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    fn add_entry(&mut self, id: &str, e: TaskEntry) {
        self.remove_entry(id);
        self.available_nano_cpus -= e.nano_cpus;
        self.available_memory_bytes -= e.memory_bytes;
        if e.active {
            self.active_tasks += 1;
            *self.active_by_service.entry(e.service_id.clone()).or_default() += 1;
        }
        self.tasks.insert(id.to_string(), e);
    }

    fn remove_entry(&mut self, id: &str) -> Option<TaskEntry> {
        let e = self.tasks.remove(id)?;
        self.available_nano_cpus += e.nano_cpus;
        self.available_memory_bytes += e.memory_bytes;
        if e.active {
            self.active_tasks -= 1;
            if let Some(c) = self.active_by_service.get_mut(&e.service_id) {
                *c -= 1;
                if *c == 0 {
                    self.active_by_service.remove(&e.service_id);
                }
            }
        }
        Some(e)
    }

    fn set_node(&mut self, node: Node) {
        let r = &node.description.resources;
        let (used_c, used_m) = self
            .tasks
            .values()
            .fold((0, 0), |(c, m), e| (c + e.nano_cpus, m + e.memory_bytes));
        self.available_nano_cpus = r.nano_cpus - used_c;
        self.available_memory_bytes = r.memory_bytes - used_m;
        self.node = node;
    }

    /// Record a failure of a task of `service_id` on this node at `now`.
    pub fn record_failure(&mut self, service_id: &str, now: Instant) {
        let v = self.recent_failures.entry(service_id.to_string()).or_default();
        v.retain(|t| now.saturating_duration_since(*t) < MONITOR_FAILURES);
        v.push(now);
    }

    /// Failures of `service_id` on this node within the last 5 minutes.
    pub fn recent_failures(&self, service_id: &str, now: Instant) -> usize {
        self.recent_failures
            .get(service_id)
            .map(|v| v.iter().filter(|t| now.saturating_duration_since(**t) < MONITOR_FAILURES).count())
            .unwrap_or(0)
    }
}

/// The scheduler's node cache.
#[derive(Debug, Clone, Default)]
pub struct NodeSet {
    nodes: HashMap<String, NodeInfo>,
    /// task id → node id, for tasks held by some node.
    task_node: HashMap<String, String>,
}

impl NodeSet {
    pub fn new() -> NodeSet {
        NodeSet::default()
    }

    /// Build from the store's nodes and tasks.
    pub fn from_state(nodes: &[Node], tasks: &[Task]) -> NodeSet {
        let mut s = NodeSet::new();
        for n in nodes {
            s.upsert_node(n.clone());
        }
        let now = Instant::now();
        for t in tasks {
            s.upsert_task(t, now);
        }
        s
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    pub fn get(&self, id: &str) -> Option<&NodeInfo> {
        self.nodes.get(id)
    }
    pub fn get_mut(&mut self, id: &str) -> Option<&mut NodeInfo> {
        self.nodes.get_mut(id)
    }
    pub fn iter(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    /// Add a node or replace its object (keeping its tasks).
    pub fn upsert_node(&mut self, node: Node) {
        match self.nodes.get_mut(&node.id) {
            Some(info) => info.set_node(node),
            None => {
                let id = node.id.clone();
                self.nodes.insert(id, NodeInfo::new(node));
            }
        }
    }

    pub fn remove_node(&mut self, id: &str) {
        if let Some(info) = self.nodes.remove(id) {
            for t in info.tasks.keys() {
                self.task_node.remove(t);
            }
        }
    }

    /// Track a task's current state: a task is held by its node while it is assigned and its
    /// observed state is ≤ RUNNING. A held task that moves to FAILED/REJECTED counts as a
    /// failure of its service on that node.
    pub fn upsert_task(&mut self, t: &Task, now: Instant) {
        let holds = !t.node_id.is_empty() && t.status.state <= TaskState::Running;
        if let Some(prev) = self.task_node.get(&t.id).cloned() {
            if !holds || prev != t.node_id {
                if let Some(info) = self.nodes.get_mut(&prev) {
                    info.remove_entry(&t.id);
                    if matches!(t.status.state, TaskState::Failed | TaskState::Rejected) {
                        info.record_failure(&t.service_id, now);
                    }
                }
                self.task_node.remove(&t.id);
            }
        }
        if holds {
            if let Some(info) = self.nodes.get_mut(&t.node_id) {
                info.add_entry(&t.id, TaskEntry::of(t));
                self.task_node.insert(t.id.clone(), t.node_id.clone());
            }
        }
    }

    /// True while some node holds the task.
    pub fn holds(&self, task_id: &str) -> bool {
        self.task_node.contains_key(task_id)
    }

    pub fn remove_task(&mut self, id: &str) {
        if let Some(n) = self.task_node.remove(id) {
            if let Some(info) = self.nodes.get_mut(&n) {
                info.remove_entry(id);
            }
        }
    }

    fn place(&mut self, node_id: &str, task_id: &str, e: TaskEntry) {
        if let Some(prev) = self.task_node.get(task_id).cloned() {
            if let Some(info) = self.nodes.get_mut(&prev) {
                info.remove_entry(task_id);
            }
        }
        if let Some(info) = self.nodes.get_mut(node_id) {
            info.add_entry(task_id, e);
            self.task_node.insert(task_id.to_string(), node_id.to_string());
        }
    }
}

/// The outcome for one task: `Ok(node id)` or `Err("no suitable node (…)")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub task_id: String,
    pub result: Result<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Ready = 0,
    Resources = 1,
    Constraints = 2,
    Platform = 3,
    MaxReplicas = 4,
}

const FILTERS: [Filter; 5] =
    [Filter::Ready, Filter::Resources, Filter::Constraints, Filter::Platform, Filter::MaxReplicas];

fn plural(n: usize) -> String {
    if n == 1 {
        "1 node".to_string()
    } else {
        format!("{n} nodes")
    }
}

impl Filter {
    fn explain(self, n: usize) -> String {
        match self {
            Filter::Ready => {
                if n == 1 {
                    "1 node not available for new tasks".to_string()
                } else {
                    format!("{n} nodes not available for new tasks")
                }
            }
            Filter::Resources => format!("insufficient resources on {}", plural(n)),
            Filter::Constraints => format!("scheduling constraints not satisfied on {}", plural(n)),
            Filter::Platform => format!("unsupported platform on {}", plural(n)),
            Filter::MaxReplicas => "max replicas per node limit exceed".to_string(),
        }
    }
}

/// The filter pipeline for one task (group).
pub struct Pipeline {
    service_id: String,
    nano_cpus: i64,
    memory_bytes: i64,
    /// `None` when the stored constraints do not parse: no node satisfies them.
    constraints: Option<Vec<Constraint>>,
    platforms: Vec<Platform>,
    max_replicas: u64,
    failures: [usize; 5],
}

fn norm_arch(a: &str) -> &str {
    match a {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn platform_ok(want: &Platform, node: &Platform) -> bool {
    (want.architecture.is_empty()
        || norm_arch(&want.architecture).eq_ignore_ascii_case(norm_arch(&node.architecture)))
        && (want.os.is_empty() || want.os.eq_ignore_ascii_case(&node.os))
}

impl Pipeline {
    pub fn new(t: &Task) -> Pipeline {
        let (nano_cpus, memory_bytes) = reservations(t);
        let placement = t.spec.placement.clone().unwrap_or_default();
        Pipeline {
            service_id: t.service_id.clone(),
            nano_cpus,
            memory_bytes,
            constraints: constraint::parse_all(&placement.constraints).ok(),
            platforms: placement.platforms,
            max_replicas: placement.max_replicas,
            failures: [0; 5],
        }
    }

    fn check(&self, n: &NodeInfo) -> Result<(), Filter> {
        if n.node.status.state != NodeState::Ready || n.node.spec.availability != NodeAvailability::Active {
            return Err(Filter::Ready);
        }
        if (self.nano_cpus > 0 && self.nano_cpus > n.available_nano_cpus)
            || (self.memory_bytes > 0 && self.memory_bytes > n.available_memory_bytes)
        {
            return Err(Filter::Resources);
        }
        match &self.constraints {
            Some(c) if constraint::node_matches(c, &n.node) => {}
            _ => return Err(Filter::Constraints),
        }
        if !self.platforms.is_empty()
            && !self.platforms.iter().any(|p| platform_ok(p, &n.node.description.platform))
        {
            return Err(Filter::Platform);
        }
        if self.max_replicas > 0 && n.tasks_of_service(&self.service_id) as u64 >= self.max_replicas {
            return Err(Filter::MaxReplicas);
        }
        Ok(())
    }

    /// Run the filters on `n`, counting the first one that fails.
    pub fn process(&mut self, n: &NodeInfo) -> bool {
        match self.check(n) {
            Ok(()) => true,
            Err(f) => {
                self.failures[f as usize] += 1;
                false
            }
        }
    }

    pub fn reset(&mut self) {
        self.failures = [0; 5];
    }

    /// swarmkit's explanation: failing filters, most failures first, `; `-separated.
    pub fn explain(&self) -> String {
        let mut entries: Vec<(Filter, usize)> =
            FILTERS.iter().map(|f| (*f, self.failures[*f as usize])).filter(|(_, n)| *n > 0).collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.1));
        entries.iter().map(|(f, n)| f.explain(*n)).collect::<Vec<_>>().join("; ")
    }

    /// `no suitable node (<explain>)`, or `no suitable node` when nothing was counted.
    pub fn no_suitable_node(&self) -> String {
        let e = self.explain();
        if e.is_empty() {
            "no suitable node".to_string()
        } else {
            format!("no suitable node ({e})")
        }
    }
}

/// Order of preference between two nodes for a task of `service_id` (Less = better).
fn node_cmp(a: &NodeInfo, b: &NodeInfo, service_id: &str, now: Instant) -> Ordering {
    let fa = a.recent_failures(service_id, now);
    let fb = b.recent_failures(service_id, now);
    if (fa >= MAX_FAILURES || fb >= MAX_FAILURES) && fa != fb {
        return fa.cmp(&fb);
    }
    a.tasks_of_service(service_id)
        .cmp(&b.tasks_of_service(service_id))
        .then(a.active_tasks.cmp(&b.active_tasks))
        .then_with(|| a.node.id.cmp(&b.node.id))
}

/// A level of the placement-preference decision tree.
#[derive(Debug, Default)]
struct Tree {
    /// Active tasks of the service on every node under this branch.
    tasks: usize,
    /// Leaf: the eligible nodes.
    nodes: Vec<String>,
    next: BTreeMap<String, Tree>,
}

fn spread_value(descriptor: &str, node: &Node) -> Option<String> {
    let lower = descriptor.to_ascii_lowercase();
    for (prefix, engine) in [("node.labels.", false), ("engine.labels.", true)] {
        if lower.starts_with(prefix) && descriptor.len() > prefix.len() {
            let key = &descriptor[prefix.len()..];
            let labels = if engine { &node.description.engine.labels } else { &node.spec.labels };
            return Some(labels.get(key).cloned().unwrap_or_default());
        }
    }
    None
}

/// Schedule `tasks` (PENDING tasks) onto `nodes` now. Placed tasks are added to `nodes`.
pub fn schedule(nodes: &mut NodeSet, tasks: &[Task]) -> Vec<Decision> {
    schedule_at(nodes, tasks, Instant::now())
}

/// [`schedule`] with an explicit clock (for the recent-failure heuristic).
pub fn schedule_at(nodes: &mut NodeSet, tasks: &[Task], now: Instant) -> Vec<Decision> {
    let mut out = Vec::with_capacity(tasks.len());
    let mut groups: BTreeMap<(String, u64), Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        if !t.node_id.is_empty() {
            out.push(schedule_preassigned(nodes, t));
        } else {
            let v = t.spec_version.map(|v| v.index).unwrap_or(0);
            groups.entry((t.service_id.clone(), v)).or_default().push(t);
        }
    }
    for (_, mut group) in groups {
        group.sort_by(|a, b| a.slot.cmp(&b.slot).then_with(|| a.id.cmp(&b.id)));
        schedule_group(nodes, &group, now, &mut out);
    }
    out
}

fn schedule_preassigned(nodes: &mut NodeSet, t: &Task) -> Decision {
    let mut p = Pipeline::new(t);
    let result = match nodes.get(&t.node_id) {
        None => Err("no suitable node (node not found)".to_string()),
        Some(info) => {
            if p.process(info) {
                Ok(t.node_id.clone())
            } else {
                Err(p.no_suitable_node())
            }
        }
    };
    if result.is_ok() {
        nodes.place(&t.node_id, &t.id, TaskEntry::of(t));
    }
    Decision { task_id: t.id.clone(), result }
}

fn schedule_group(nodes: &mut NodeSet, group: &[&Task], now: Instant, out: &mut Vec<Decision>) {
    let first = group[0];
    let service_id = first.service_id.clone();
    let mut pipeline = Pipeline::new(first);
    let prefs: Vec<String> = first
        .spec
        .placement
        .as_ref()
        .map(|p| {
            p.preferences
                .iter()
                .filter_map(|p| p.spread.as_ref().map(|s| s.spread_descriptor.clone()))
                .collect()
        })
        .unwrap_or_default();

    // Build the decision tree over every node; only eligible nodes become leaves' candidates.
    let mut root = Tree::default();
    let mut ids: Vec<&String> = nodes.nodes.keys().collect();
    ids.sort();
    for id in ids {
        let info = &nodes.nodes[id];
        let count = info.tasks_of_service(&service_id);
        let mut tree = &mut root;
        for d in &prefs {
            let Some(value) = spread_value(d, &info.node) else { continue };
            tree.tasks += count;
            tree = tree.next.entry(value).or_default();
        }
        tree.tasks += count;
        if pipeline.process(info) {
            tree.nodes.push(id.clone());
        }
    }

    let mut pending: Vec<&Task> = group.to_vec();
    let n = pending.len();
    let placed = schedule_subtree(nodes, &mut pipeline, n, &mut pending, &mut root, &service_id, now, out);
    debug_assert_eq!(placed + pending.len(), n);

    if !pending.is_empty() {
        // Explain against the current state (after what this batch placed).
        pipeline.reset();
        let mut ids: Vec<&String> = nodes.nodes.keys().collect();
        ids.sort();
        for id in ids {
            pipeline.process(&nodes.nodes[id]);
        }
        let err = pipeline.no_suitable_node();
        for t in pending {
            out.push(Decision { task_id: t.id.clone(), result: Err(err.clone()) });
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn schedule_subtree(
    nodes: &mut NodeSet,
    pipeline: &mut Pipeline,
    n: usize,
    pending: &mut Vec<&Task>,
    tree: &mut Tree,
    service_id: &str,
    now: Instant,
    out: &mut Vec<Decision>,
) -> usize {
    if tree.next.is_empty() {
        let mut leaf = std::mem::take(&mut tree.nodes);
        leaf.sort_by(|a, b| node_cmp(&nodes.nodes[a], &nodes.nodes[b], service_id, now));
        let placed = schedule_on_nodes(nodes, pipeline, n, pending, &leaf, service_id, now, out);
        tree.nodes = leaf;
        tree.tasks += placed;
        return placed;
    }
    let branches = tree.next.len();
    let mut scheduled = 0usize;
    let mut in_usable = tree.tasks;
    let mut no_room: Vec<bool> = vec![false; branches];
    let mut no_room_count = 0;
    while scheduled != n && no_room_count != branches {
        let usable = branches - no_room_count;
        let want_total = in_usable + n - scheduled;
        let per_branch = want_total / usable;
        let mut remainder = want_total % usable;
        let mut progress = false;
        for (i, sub) in tree.next.values_mut().enumerate() {
            if no_room[i] || scheduled == n {
                continue;
            }
            let sub_tasks = sub.tasks;
            if sub_tasks < per_branch || (sub_tasks == per_branch && remainder > 0) {
                let mut to_assign = per_branch - sub_tasks;
                if remainder > 0 {
                    to_assign += 1;
                }
                to_assign = to_assign.min(n - scheduled);
                let res = schedule_subtree(nodes, pipeline, to_assign, pending, sub, service_id, now, out);
                if res < to_assign {
                    no_room[i] = true;
                    no_room_count += 1;
                    in_usable -= sub_tasks;
                } else {
                    remainder = remainder.saturating_sub(1);
                }
                if res > 0 {
                    progress = true;
                }
                scheduled += res;
            }
        }
        if !progress && scheduled != n {
            // Every usable branch already holds at least its share: nothing left to balance.
            // Fall back to the branches with the fewest tasks, one task at a time.
            let mut order: Vec<usize> = (0..branches).filter(|i| !no_room[*i]).collect();
            let counts: Vec<usize> = tree.next.values().map(|s| s.tasks).collect();
            order.sort_by_key(|i| counts[*i]);
            let Some(&i) = order.first() else { break };
            let sub = tree.next.values_mut().nth(i).expect("branch index in range");
            let res = schedule_subtree(nodes, pipeline, 1, pending, sub, service_id, now, out);
            if res == 0 {
                no_room[i] = true;
                no_room_count += 1;
                in_usable -= counts[i];
            }
            scheduled += res;
        }
    }
    tree.tasks += scheduled;
    scheduled
}

#[allow(clippy::too_many_arguments)]
fn schedule_on_nodes(
    nodes: &mut NodeSet,
    pipeline: &mut Pipeline,
    n: usize,
    pending: &mut Vec<&Task>,
    list: &[String],
    service_id: &str,
    now: Instant,
    out: &mut Vec<Decision>,
) -> usize {
    let count = list.len();
    if count == 0 || n == 0 || pending.is_empty() {
        return 0;
    }
    let mut failed = vec![false; count];
    // Move `iter` to the next node that still passes the filters; false when none does.
    let mut advance = |iter: &mut usize, nodes: &NodeSet, pipeline: &mut Pipeline| -> bool {
        let orig = *iter;
        loop {
            let i = *iter % count;
            if !failed[i] {
                if pipeline.process(&nodes.nodes[&list[i]]) {
                    return true;
                }
                failed[i] = true;
            }
            *iter += 1;
            if *iter - orig == count {
                return false;
            }
        }
    };
    let mut iter = 0usize;
    let mut scheduled = 0usize;
    if !advance(&mut iter, nodes, pipeline) {
        return 0;
    }
    loop {
        let node_id = &list[iter % count];
        let t = pending.remove(0);
        nodes.place(node_id, &t.id, TaskEntry::of(t));
        out.push(Decision { task_id: t.id.clone(), result: Ok(node_id.clone()) });
        scheduled += 1;
        if scheduled == n || pending.is_empty() {
            return scheduled;
        }
        if iter + 1 < count {
            // First pass: level the nodes until they hold as many tasks of the service.
            let next = &nodes.nodes[&list[(iter + 1) % count]];
            if node_cmp(next, &nodes.nodes[node_id], service_id, now) == Ordering::Less {
                iter += 1;
            }
        } else {
            // Later passes: one task at a time to each node that still fits.
            iter += 1;
        }
        if !advance(&mut iter, nodes, pipeline) {
            return scheduled;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::{
        NodeResources, NodeRole, Placement, PlacementPreference, ResourceRequirements, SpreadOver,
        Version,
    };

    pub(crate) fn ready_node(id: &str) -> Node {
        let mut n = Node { id: id.into(), ..Default::default() };
        n.status.state = NodeState::Ready;
        n.spec.availability = NodeAvailability::Active;
        n.spec.role = NodeRole::Worker;
        n.description.hostname = format!("host-{id}");
        n.description.platform = Platform { architecture: "x86_64".into(), os: "linux".into() };
        n
    }

    fn task(id: &str, service: &str, slot: u64) -> Task {
        let mut t = Task { id: id.into(), service_id: service.into(), slot, ..Default::default() };
        t.status.state = TaskState::Pending;
        t.spec_version = Some(Version::new(1));
        t
    }

    fn with_constraints(mut t: Task, c: &[&str]) -> Task {
        t.spec.placement = Some(Placement { constraints: c.iter().map(|s| s.to_string()).collect(), ..Default::default() });
        t
    }

    fn placed(d: &[Decision]) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for x in d {
            if let Ok(n) = &x.result {
                *m.entry(n.clone()).or_default() += 1;
            }
        }
        m
    }

    #[test]
    fn spreads_evenly_and_prefers_emptier_nodes() {
        let mut set = NodeSet::from_state(&[ready_node("a"), ready_node("b"), ready_node("c")], &[]);
        // Node a already runs an unrelated task: it is the last choice on ties.
        let mut other = task("o1", "other", 1);
        other.node_id = "a".into();
        other.status.state = TaskState::Running;
        set.upsert_task(&other, Instant::now());
        let tasks: Vec<Task> = (1..=4).map(|i| task(&format!("t{i}"), "web", i)).collect();
        let d = schedule(&mut set, &tasks);
        assert!(d.iter().all(|x| x.result.is_ok()), "{d:?}");
        let m = placed(&d);
        // One each first (a last: it has more tasks in total), then round robin from b.
        assert_eq!((m["a"], m["b"], m["c"]), (1, 2, 1), "{m:?}");
        assert_eq!(set.get("b").unwrap().tasks_of_service("web"), 2);
    }

    #[test]
    fn service_count_beats_total_count() {
        let mut set = NodeSet::from_state(&[ready_node("a"), ready_node("b")], &[]);
        let mut existing = task("e1", "web", 1);
        existing.node_id = "b".into();
        existing.status.state = TaskState::Running;
        set.upsert_task(&existing, Instant::now());
        for i in 0..3 {
            let mut o = task(&format!("o{i}"), "other", i + 1);
            o.node_id = "a".into();
            o.status.state = TaskState::Running;
            set.upsert_task(&o, Instant::now());
        }
        let d = schedule(&mut set, &[task("t2", "web", 2)]);
        assert_eq!(d[0].result, Ok("a".to_string()));
    }

    #[test]
    fn constraint_explanation_singular_and_plural() {
        let mut set = NodeSet::from_state(&[ready_node("a")], &[]);
        let t = with_constraints(task("t1", "web", 1), &["node.role==manager"]);
        let d = schedule(&mut set, std::slice::from_ref(&t));
        assert_eq!(d[0].result, Err("no suitable node (scheduling constraints not satisfied on 1 node)".into()));
        let mut set = NodeSet::from_state(&[ready_node("a"), ready_node("b")], &[]);
        let d = schedule(&mut set, &[t]);
        assert_eq!(d[0].result, Err("no suitable node (scheduling constraints not satisfied on 2 nodes)".into()));
    }

    #[test]
    fn explanation_orders_by_failures() {
        let mut down = ready_node("d");
        down.status.state = NodeState::Down;
        let mut drained = ready_node("e");
        drained.spec.availability = NodeAvailability::Drain;
        let set_nodes = [ready_node("a"), ready_node("b"), ready_node("c"), down, drained];
        let mut set = NodeSet::from_state(&set_nodes, &[]);
        let t = with_constraints(task("t1", "web", 1), &["node.labels.zone==x"]);
        let d = schedule(&mut set, &[t]);
        assert_eq!(
            d[0].result,
            Err("no suitable node (scheduling constraints not satisfied on 3 nodes; 2 nodes not available for new tasks)".into())
        );
        let mut set = NodeSet::new();
        let d = schedule(&mut set, &[task("t1", "web", 1)]);
        assert_eq!(d[0].result, Err("no suitable node".into()));
    }

    #[test]
    fn resources_are_reserved() {
        let mut a = ready_node("a");
        a.description.resources = NodeResources { nano_cpus: 2_000_000_000, memory_bytes: 1 << 30, ..Default::default() };
        let mut set = NodeSet::from_state(&[a], &[]);
        let tasks: Vec<Task> = (1..=3)
            .map(|i| {
                let mut t = task(&format!("t{i}"), "web", i);
                t.spec.resources = Some(ResourceRequirements {
                    reservations: Some(NodeResources { nano_cpus: 1_000_000_000, ..Default::default() }),
                    ..Default::default()
                });
                t
            })
            .collect();
        let d = schedule(&mut set, &tasks);
        assert_eq!(d.iter().filter(|x| x.result.is_ok()).count(), 2);
        let err = d.iter().find(|x| x.result.is_err()).unwrap();
        assert_eq!(err.result, Err("no suitable node (insufficient resources on 1 node)".into()));
        assert_eq!(set.get("a").unwrap().available_nano_cpus, 0);
        // A task stopping frees its reservation.
        let mut t1 = tasks[0].clone();
        t1.node_id = "a".into();
        t1.status.state = TaskState::Complete;
        set.upsert_task(&t1, Instant::now());
        assert_eq!(set.get("a").unwrap().available_nano_cpus, 1_000_000_000);
    }

    #[test]
    fn max_replicas_and_platform() {
        let mut set = NodeSet::from_state(&[ready_node("a"), ready_node("b")], &[]);
        let tasks: Vec<Task> = (1..=3)
            .map(|i| {
                let mut t = task(&format!("t{i}"), "web", i);
                t.spec.placement = Some(Placement { max_replicas: 1, ..Default::default() });
                t
            })
            .collect();
        let d = schedule(&mut set, &tasks);
        assert_eq!(d.iter().filter(|x| x.result.is_ok()).count(), 2);
        assert!(d.iter().any(|x| x.result == Err("no suitable node (max replicas per node limit exceed)".into())));

        let mut set = NodeSet::from_state(&[ready_node("a")], &[]);
        let mut t = task("p1", "arm", 1);
        t.spec.placement = Some(Placement {
            platforms: vec![Platform { architecture: "arm64".into(), os: "linux".into() }],
            ..Default::default()
        });
        let d = schedule(&mut set, std::slice::from_ref(&t));
        assert_eq!(d[0].result, Err("no suitable node (unsupported platform on 1 node)".into()));
        t.spec.placement = Some(Placement {
            platforms: vec![Platform { architecture: "amd64".into(), os: "linux".into() }],
            ..Default::default()
        });
        let d = schedule(&mut set, &[t]);
        assert!(d[0].result.is_ok(), "x86_64 is amd64");
    }

    #[test]
    fn preassigned_tasks_only_check_filters() {
        let mut down = ready_node("b");
        down.status.state = NodeState::Down;
        let mut set = NodeSet::from_state(&[ready_node("a"), down], &[]);
        let mut t1 = task("g1", "glob", 0);
        t1.node_id = "a".into();
        let mut t2 = task("g2", "glob", 0);
        t2.node_id = "b".into();
        let d = schedule(&mut set, &[t1, t2]);
        assert_eq!(d[0].result, Ok("a".into()));
        assert_eq!(d[1].result, Err("no suitable node (1 node not available for new tasks)".into()));
    }

    #[test]
    fn spread_preference_balances_zones() {
        let mut nodes = Vec::new();
        for (id, zone) in [("a", "z1"), ("b", "z1"), ("c", "z1"), ("d", "z2"), ("e", "")] {
            let mut n = ready_node(id);
            if !zone.is_empty() {
                n.spec.labels.insert("zone".into(), zone.into());
            }
            nodes.push(n);
        }
        let mut set = NodeSet::from_state(&nodes, &[]);
        let tasks: Vec<Task> = (1..=6)
            .map(|i| {
                let mut t = task(&format!("t{i}"), "web", i);
                t.spec.placement = Some(Placement {
                    preferences: vec![PlacementPreference {
                        spread: Some(SpreadOver { spread_descriptor: "node.labels.zone".into() }),
                    }],
                    ..Default::default()
                });
                t
            })
            .collect();
        let d = schedule(&mut set, &tasks);
        assert!(d.iter().all(|x| x.result.is_ok()));
        let m = placed(&d);
        let z1 = m.get("a").copied().unwrap_or(0) + m.get("b").copied().unwrap_or(0) + m.get("c").copied().unwrap_or(0);
        assert_eq!(z1, 2, "{m:?}");
        assert_eq!(m["d"], 2, "{m:?}");
        assert_eq!(m["e"], 2, "missing label is its own branch: {m:?}");
    }

    #[test]
    fn faulty_nodes_go_last() {
        let mut set = NodeSet::from_state(&[ready_node("a"), ready_node("b")], &[]);
        let now = Instant::now();
        for _ in 0..MAX_FAILURES {
            set.get_mut("a").unwrap().record_failure("web", now);
        }
        let d = schedule_at(&mut set, &[task("t1", "web", 1)], now);
        assert_eq!(d[0].result, Ok("b".into()));
        // Once the failures are old, a is fine again (and wins the tie by ID).
        let later = now + MONITOR_FAILURES + Duration::from_secs(1);
        let mut set2 = set.clone();
        set2.remove_task("t1");
        let d = schedule_at(&mut set2, &[task("t2", "web", 2)], later);
        assert_eq!(d[0].result, Ok("a".into()));
    }

    #[test]
    fn failure_of_held_task_is_recorded() {
        let mut set = NodeSet::from_state(&[ready_node("a")], &[]);
        let mut t = task("t1", "web", 1);
        t.node_id = "a".into();
        t.status.state = TaskState::Running;
        let now = Instant::now();
        set.upsert_task(&t, now);
        assert_eq!(set.get("a").unwrap().tasks_of_service("web"), 1);
        t.status.state = TaskState::Failed;
        set.upsert_task(&t, now);
        assert_eq!(set.get("a").unwrap().tasks_of_service("web"), 0);
        assert_eq!(set.get("a").unwrap().recent_failures("web", now), 1);
    }

    #[test]
    fn many_tasks_round_robin_after_leveling() {
        let nodes: Vec<Node> = (0..3).map(|i| ready_node(&format!("n{i}"))).collect();
        let mut set = NodeSet::from_state(&nodes, &[]);
        let tasks: Vec<Task> = (1..=10).map(|i| task(&format!("t{i:02}"), "web", i)).collect();
        let d = schedule(&mut set, &tasks);
        let m = placed(&d);
        let mut counts: Vec<usize> = m.values().copied().collect();
        counts.sort();
        assert_eq!(counts, vec![3, 3, 4]);
    }
}

//! The pages, rendered from plain data ([`Snapshot`], engine records) so each can be tested
//! without a daemon. Every page has a live region (re-fetched as `?fragment=1` when the
//! cluster changes) and static parts (forms being filled in must not be replaced).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use chrono::{DateTime, Utc};

use shoal_types::{
    Network, Node, NodeAvailability, NodeRole, NodeState, Service, ServiceMode, Task, TaskState,
};

use crate::auth::Flash;
use crate::feed::EventEntry;
use crate::forms::{ports_text, ServiceForm};
use crate::html::{ago, csrf_field, esc, human_size, seg, short, table};

/// The cluster as this manager's replica shows it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub now: DateTime<Utc>,
    /// This manager's node ID.
    pub this_node: String,
    pub cluster_id: String,
    pub nodes: Vec<Node>,
    pub services: Vec<Service>,
    pub tasks: Vec<Task>,
    pub networks: Vec<Network>,
}

impl Snapshot {
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn node_name(&self, id: &str) -> String {
        self.node(id)
            .map(|n| n.display_name().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| short(id).to_string())
    }

    pub fn service(&self, id: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.id == id)
    }

    /// A task's `service.slot` name (the service's current name when known).
    pub fn task_name(&self, t: &Task) -> String {
        let service = self
            .service(&t.service_id)
            .map(|s| s.spec.name.as_str())
            .unwrap_or_else(|| t.service_name());
        shoal_types::task_display_name(service, t.slot, &t.node_id)
    }

    /// (running, desired) like `service ls`.
    pub fn replicas(&self, s: &Service) -> (u64, u64) {
        let st = shoal_swarm::control::service_status(s, &self.tasks, &self.nodes);
        (st.running_tasks, st.desired_tasks)
    }

    pub fn leader(&self) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.manager_status.as_ref().is_some_and(|m| m.leader))
    }
}

/// This node's engine, as the overview counts it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalCounts {
    pub containers: usize,
    pub running: usize,
    pub images: usize,
}

/// What every page's frame needs.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    pub csrf: String,
    pub flash: Option<Flash>,
    /// This manager's hostname (shown in the header).
    pub host: String,
    /// The live generation the page was rendered at: the browser's event stream starts from
    /// it, so a change between rendering and connecting still refreshes the page.
    pub generation: u64,
}

/// A rendered page: its title, which navigation entry it belongs to, the live region and what
/// comes before and after it.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub title: String,
    pub nav: &'static str,
    pub before: String,
    pub live: String,
    pub after: String,
}

const NAV: [(&str, &str, &str); 9] = [
    ("overview", "/", "Overview"),
    ("visualizer", "/visualizer", "Visualizer"),
    ("nodes", "/nodes", "Nodes"),
    ("services", "/services", "Services"),
    ("containers", "/containers", "Containers"),
    ("images", "/images", "Images"),
    ("networks", "/networks", "Networks"),
    ("events", "/events", "Events"),
    ("settings", "/settings", "Settings"),
];

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · shoal</title><link rel=\"stylesheet\" href=\"/static/dashboard.css\"><script src=\"/static/dashboard.js\" defer></script></head>",
        esc(title)
    )
}

/// The whole HTML document around a page; `path` is the page's own URL (for its fragment).
pub fn layout(ctx: &Ctx, page: &Page, path: &str) -> String {
    let mut out = head(&page.title);
    let _ = write!(out, "<body data-generation=\"{}\">", ctx.generation);
    out.push_str("<a class=\"skip\" href=\"#main\">Skip to content</a><header class=\"top\"><a class=\"brand\" href=\"/\">shoal</a>");
    let _ = write!(
        out,
        "<span class=\"host\">manager {}</span>",
        esc(&ctx.host)
    );
    out.push_str("<nav aria-label=\"Sections\"><ul>");
    for (key, href, label) in NAV {
        let current = if key == page.nav {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(out, "<li><a href=\"{href}\"{current}>{label}</a></li>");
    }
    out.push_str("</ul></nav>");
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/logout\" class=\"logout\">{}<button type=\"submit\">Log out</button></form></header>",
        csrf_field(&ctx.csrf)
    );
    let _ = write!(
        out,
        "<main id=\"main\" tabindex=\"-1\"><h1>{}</h1>",
        esc(&page.title)
    );
    if let Some(f) = &ctx.flash {
        let (class, role) = if f.error {
            ("flash error", "alert")
        } else {
            ("flash ok", "status")
        };
        let _ = write!(
            out,
            "<p class=\"{class}\" role=\"{role}\">{}</p>",
            esc(&f.text)
        );
    }
    out.push_str(&page.before);
    let sep = if path.contains('?') { '&' } else { '?' };
    let _ = write!(
        out,
        "<div class=\"live\" data-fragment=\"{}{sep}fragment=1\">{}</div>",
        esc(path),
        page.live
    );
    out.push_str(&page.after);
    let _ = write!(
        out,
        "<p class=\"conn\" id=\"conn\" role=\"status\" data-csrf=\"{}\"></p></main></body></html>",
        esc(&ctx.csrf)
    );
    out
}

/// The login page (the only page without a session).
pub fn login(error: Option<&str>, next: &str) -> String {
    let mut out = head("Log in");
    out.push_str("<body class=\"login\"><main id=\"main\"><h1>shoal</h1><p>Log in with the dashboard credential. On a manager, <code>shoal dashboard credentials</code> prints it (as root).</p>");
    if let Some(e) = error {
        let _ = write!(
            out,
            "<p class=\"flash error\" role=\"alert\" id=\"login-error\">{}</p>",
            esc(e)
        );
    }
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/login\" class=\"stack\"><input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label for=\"credential\">Credential</label><input id=\"credential\" name=\"credential\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
         <button type=\"submit\" id=\"login\">Log in</button></form></main></body></html>",
        esc(next)
    );
    out
}

/// A CSS class for a task state (its colour).
pub fn state_class(state: TaskState) -> &'static str {
    match state {
        TaskState::New | TaskState::Pending | TaskState::Assigned => "st-pending",
        TaskState::Accepted | TaskState::Preparing | TaskState::Ready | TaskState::Starting => {
            "st-starting"
        }
        TaskState::Running => "st-running",
        TaskState::Complete => "st-complete",
        TaskState::Failed | TaskState::Rejected | TaskState::Orphaned => "st-failed",
        _ => "st-shutdown",
    }
}

fn badge(text: &str, class: &str) -> String {
    format!("<span class=\"badge {}\">{}</span>", esc(class), esc(text))
}

fn node_status_badge(n: &Node) -> String {
    let class = match n.status.state {
        NodeState::Ready => "ok",
        NodeState::Down | NodeState::Disconnected => "bad",
        NodeState::Unknown => "warn",
    };
    badge(n.status.state.as_str(), class)
}

fn role_text(n: &Node) -> String {
    match &n.manager_status {
        Some(m) if m.leader => "manager (leader)".into(),
        Some(m) => format!("manager ({})", m.reachability.as_str()),
        None => n.spec.role.as_str().to_string(),
    }
}

fn ingress_addr(n: &Node) -> Option<&str> {
    n.attachments
        .first()
        .map(|a| a.addr.as_str())
        .filter(|a| !a.is_empty())
}

// ---- overview ----

pub fn overview(s: &Snapshot, local: LocalCounts) -> Page {
    let ready = s
        .nodes
        .iter()
        .filter(|n| n.status.state == NodeState::Ready)
        .count();
    let managers = s
        .nodes
        .iter()
        .filter(|n| n.manager_status.is_some())
        .count();
    let running = s
        .tasks
        .iter()
        .filter(|t| t.status.state == TaskState::Running)
        .count();
    let active = s
        .tasks
        .iter()
        .filter(|t| t.desired_state <= TaskState::Running)
        .count();
    let leader = s
        .leader()
        .map(|n| n.display_name().to_string())
        .unwrap_or_else(|| "none".into());
    let mut live = String::from("<div class=\"cards\">");
    let card = |out: &mut String,
                id: &str,
                label: &str,
                value: String,
                detail: String,
                href: &str| {
        let _ = write!(
            out,
            "<a class=\"card\" id=\"card-{id}\" href=\"{href}\"><span class=\"label\">{}</span><span class=\"value\">{}</span><span class=\"detail\">{}</span></a>",
            esc(label),
            esc(&value),
            esc(&detail)
        );
    };
    card(
        &mut live,
        "swarm",
        "Swarm",
        "active".into(),
        format!("cluster {}", short(&s.cluster_id)),
        "/visualizer",
    );
    card(
        &mut live,
        "leader",
        "Leader",
        leader,
        format!("{managers} manager(s)"),
        "/nodes",
    );
    card(
        &mut live,
        "nodes",
        "Nodes",
        s.nodes.len().to_string(),
        format!("{ready} ready"),
        "/nodes",
    );
    card(
        &mut live,
        "services",
        "Services",
        s.services.len().to_string(),
        String::new(),
        "/services",
    );
    card(
        &mut live,
        "tasks",
        "Tasks",
        running.to_string(),
        format!("running of {active} desired"),
        "/visualizer",
    );
    card(
        &mut live,
        "containers",
        "Containers",
        local.containers.to_string(),
        format!("{} running on this manager", local.running),
        "/containers",
    );
    card(
        &mut live,
        "images",
        "Images",
        local.images.to_string(),
        "on this manager".into(),
        "/images",
    );
    card(
        &mut live,
        "networks",
        "Networks",
        s.networks.len().to_string(),
        "swarm overlays".into(),
        "/networks",
    );
    live.push_str("</div>");
    let rows: Vec<Vec<String>> = s
        .services
        .iter()
        .map(|svc| {
            let (r, d) = s.replicas(svc);
            vec![
                format!(
                    "<a href=\"/services/{}\">{}</a>",
                    seg(&svc.id),
                    esc(&svc.spec.name)
                ),
                replicas_badge(r, d),
                esc(&svc.spec.task_template.container_spec.image),
            ]
        })
        .collect();
    live.push_str("<h2>Services</h2>");
    live.push_str(&table(
        "Services and their replicas",
        "services",
        &["Service", "Replicas", "Image"],
        &rows,
        "No services yet.",
    ));
    Page {
        title: "Overview".into(),
        nav: "overview",
        live,
        ..Page::default()
    }
}

fn replicas_badge(running: u64, desired: u64) -> String {
    let class = if running >= desired { "ok" } else { "warn" };
    badge(&format!("{running}/{desired}"), class)
}

// ---- visualizer ----

/// Tasks shown on the visualizer: those meant to run or still running.
fn visible(t: &Task) -> bool {
    t.desired_state <= TaskState::Running || t.status.state <= TaskState::Running
}

fn task_box(s: &Snapshot, t: &Task) -> String {
    let service = s
        .service(&t.service_id)
        .map(|x| x.spec.name.clone())
        .unwrap_or_default();
    let state = t.status.state.as_str();
    let moving = if t.desired_state > TaskState::Running && t.status.state <= TaskState::Running {
        format!(" → {}", t.desired_state.as_str())
    } else {
        String::new()
    };
    let image = s
        .service(&t.service_id)
        .map(|x| x.spec.task_template.container_spec.image.clone())
        .unwrap_or_default();
    format!(
        "<li class=\"task {}\" data-state=\"{}\" data-service=\"{}\" data-task=\"{}\"><a href=\"/services/{}\">{}</a><span class=\"state\">{}{}</span><span class=\"image\">{}</span></li>",
        state_class(t.status.state),
        esc(state),
        esc(&service),
        esc(&t.id),
        seg(&t.service_id),
        esc(&s.task_name(t)),
        esc(state),
        esc(&moving),
        esc(&image)
    )
}

pub fn visualizer(s: &Snapshot) -> Page {
    let mut by_node: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in s.tasks.iter().filter(|t| visible(t)) {
        by_node.entry(t.node_id.as_str()).or_default().push(t);
    }
    let mut live = String::from("<div class=\"viz\">");
    for n in sorted_nodes(s) {
        let mut tasks = by_node.remove(n.id.as_str()).unwrap_or_default();
        tasks.sort_by_key(|t| (s.task_name(t), t.id.clone()));
        let name = n.display_name();
        let _ = write!(
            live,
            "<section class=\"node-col avail-{}\" data-node=\"{}\" data-node-id=\"{}\" aria-label=\"node {}\"><header><h2>{}</h2><dl>\
             <dt>Role</dt><dd class=\"role\">{}</dd><dt>Availability</dt><dd class=\"availability\">{}</dd>\
             <dt>Status</dt><dd class=\"status\">{}</dd><dt>Address</dt><dd class=\"addr\">{}</dd>",
            esc(n.spec.availability.as_str()),
            esc(name),
            esc(&n.id),
            esc(name),
            esc(name),
            esc(&role_text(n)),
            esc(n.spec.availability.as_str()),
            node_status_badge(n),
            esc(&n.status.addr)
        );
        if let Some(addr) = ingress_addr(n) {
            let _ = write!(live, "<dt>Mesh</dt><dd class=\"mesh\">{}</dd>", esc(addr));
        }
        let _ = write!(
            live,
            "</dl></header><ul class=\"tasks\" aria-label=\"tasks on {}\">",
            esc(name)
        );
        for t in &tasks {
            live.push_str(&task_box(s, t));
        }
        if tasks.is_empty() {
            live.push_str("<li class=\"none\">no tasks</li>");
        }
        live.push_str("</ul></section>");
    }
    // Tasks not placed yet (no node, or a node that is gone).
    let rest: Vec<&Task> = by_node.into_values().flatten().collect();
    if !rest.is_empty() {
        live.push_str("<section class=\"node-col unassigned\" data-node=\"\" aria-label=\"tasks without a node\"><header><h2>Not placed</h2></header><ul class=\"tasks\">");
        for t in rest {
            live.push_str(&task_box(s, t));
        }
        live.push_str("</ul></section>");
    }
    live.push_str("</div>");
    let before = String::from(
        "<p class=\"legend\" aria-label=\"task colours\"><span class=\"task st-pending\">pending</span><span class=\"task st-starting\">starting</span>\
         <span class=\"task st-running\">running</span><span class=\"task st-complete\">complete</span><span class=\"task st-shutdown\">shutdown</span>\
         <span class=\"task st-failed\">failed</span></p>",
    );
    Page {
        title: "Cluster visualizer".into(),
        nav: "visualizer",
        before,
        live,
        ..Page::default()
    }
}

// ---- nodes ----

/// Managers first, then by name.
fn sorted_nodes(s: &Snapshot) -> Vec<&Node> {
    let mut nodes: Vec<&Node> = s.nodes.iter().collect();
    nodes.sort_by(|a, b| {
        (a.manager_status.is_none(), a.display_name(), &a.id).cmp(&(
            b.manager_status.is_none(),
            b.display_name(),
            &b.id,
        ))
    });
    nodes
}

pub fn nodes(s: &Snapshot, csrf: &str) -> Page {
    let rows: Vec<Vec<String>> = sorted_nodes(s)
        .into_iter()
        .map(|n| {
            let name = n.display_name();
            let mut avail = format!(
                "<form method=\"post\" action=\"/nodes/{}/availability\" class=\"inline seg\" data-node=\"{}\">{}",
                seg(&n.id),
                esc(name),
                csrf_field(csrf)
            );
            for a in [NodeAvailability::Active, NodeAvailability::Pause, NodeAvailability::Drain] {
                let pressed = n.spec.availability == a;
                let _ = write!(
                    avail,
                    "<button type=\"submit\" name=\"availability\" value=\"{0}\" aria-pressed=\"{1}\" aria-label=\"{0} {2}\">{0}</button>",
                    a.as_str(),
                    pressed,
                    esc(name)
                );
            }
            avail.push_str("</form>");
            let labels: String = n.spec.labels.iter().map(|(k, v)| if v.is_empty() { k.clone() } else { format!("{k}={v}") }).collect::<Vec<_>>().join("\n");
            let labels_form = format!(
                "<form method=\"post\" action=\"/nodes/{}/labels\" class=\"inline labels\">{}<label class=\"sr\" for=\"labels-{2}\">labels of {3}</label>\
                 <textarea id=\"labels-{2}\" name=\"labels\" rows=\"2\" placeholder=\"key=value\">{4}</textarea><button type=\"submit\">Save labels</button></form>",
                seg(&n.id),
                csrf_field(csrf),
                esc(&n.id),
                esc(name),
                esc(&labels)
            );
            let (role_value, role_label) = if n.spec.role == NodeRole::Manager { ("worker", "Demote") } else { ("manager", "Promote") };
            let role_form = format!(
                "<form method=\"post\" action=\"/nodes/{}/role\" class=\"inline\">{}<button type=\"submit\" name=\"role\" value=\"{role_value}\" aria-label=\"{role_label} {}\">{role_label}</button></form>",
                seg(&n.id),
                csrf_field(csrf),
                esc(name)
            );
            vec![
                format!("<strong>{}</strong><br><code>{}</code>", esc(name), esc(short(&n.id))),
                format!("{}<br>{}", esc(&role_text(n)), role_form),
                avail,
                node_status_badge(n),
                format!("{}{}", esc(&n.status.addr), ingress_addr(n).map(|a| format!("<br><small>mesh {}</small>", esc(a))).unwrap_or_default()),
                esc(&n.description.engine.engine_version),
                labels_form,
            ]
        })
        .collect();
    let live = table(
        "Nodes of the swarm",
        "nodes",
        &[
            "Node",
            "Role",
            "Availability",
            "Status",
            "Address",
            "Engine",
            "Labels",
        ],
        &rows,
        "No nodes.",
    );
    Page {
        title: "Nodes".into(),
        nav: "nodes",
        live,
        ..Page::default()
    }
}

// ---- services ----

pub fn services(s: &Snapshot, csrf: &str) -> Page {
    let mut list: Vec<&Service> = s.services.iter().collect();
    list.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|svc| {
            let (running, desired) = s.replicas(svc);
            let scale = match svc.spec.mode {
                ServiceMode::Replicated { replicas } => format!(
                    "<form method=\"post\" action=\"/services/{id}/scale\" class=\"inline\" data-service=\"{name}\">{csrf}<label class=\"sr\" for=\"scale-{eid}\">replicas of {name}</label>\
                     <input id=\"scale-{eid}\" name=\"replicas\" type=\"number\" min=\"0\" max=\"100000\" value=\"{replicas}\" inputmode=\"numeric\"><button type=\"submit\">Scale</button></form>",
                    id = seg(&svc.id),
                    name = esc(&svc.spec.name),
                    csrf = csrf_field(csrf),
                    eid = esc(&svc.id),
                ),
                _ => String::from("—"),
            };
            vec![
                format!("<a href=\"/services/{}\">{}</a>", seg(&svc.id), esc(&svc.spec.name)),
                esc(svc.spec.mode.name()),
                format!("<span class=\"replicas\" data-service=\"{}\">{}</span>", esc(&svc.spec.name), replicas_badge(running, desired)),
                esc(&svc.spec.task_template.container_spec.image),
                esc(&ports_text(&svc.endpoint.ports)),
                scale,
            ]
        })
        .collect();
    let live = table(
        "Services",
        "services",
        &["Name", "Mode", "Replicas", "Image", "Ports", "Scale"],
        &rows,
        "No services yet.",
    );
    let before =
        "<p><a class=\"button\" href=\"/services/new\" id=\"new-service\">Create a service</a></p>"
            .to_string();
    Page {
        title: "Services".into(),
        nav: "services",
        before,
        live,
        ..Page::default()
    }
}

/// The "create a service" form, filled with `form` and showing `error` if any.
pub fn new_service(csrf: &str, form: &ServiceForm, error: Option<&str>) -> Page {
    let mut before = String::new();
    if let Some(e) = error {
        let _ = write!(
            before,
            "<p class=\"flash error\" role=\"alert\" id=\"form-error\">{}</p>",
            esc(e)
        );
    }
    let field = |id: &str, label: &str, input: String, hint: &str| {
        format!(
            "<div class=\"field\"><label for=\"{id}\">{}</label>{input}{}</div>",
            esc(label),
            if hint.is_empty() {
                String::new()
            } else {
                format!("<small id=\"{id}-hint\">{}</small>", esc(hint))
            }
        )
    };
    let mode_sel = |m: &str| {
        if form.mode == m || (m == "replicated" && form.mode.is_empty()) {
            " selected"
        } else {
            ""
        }
    };
    let _ = write!(
        before,
        "<form method=\"post\" action=\"/services\" class=\"stack\" id=\"create-service\">{}{}{}{}{}{}{}{}<button type=\"submit\">Create service</button></form>",
        csrf_field(csrf),
        field("name", "Name", format!("<input id=\"name\" name=\"name\" value=\"{}\" autocomplete=\"off\" pattern=\"[A-Za-z0-9][A-Za-z0-9_-]*\">", esc(&form.name)), "letters, digits, - and _; empty picks a random name"),
        field("image", "Image", format!("<input id=\"image\" name=\"image\" value=\"{}\" required autocomplete=\"off\">", esc(&form.image)), "e.g. nginx or nginx:1.25"),
        field(
            "mode",
            "Mode",
            format!("<select id=\"mode\" name=\"mode\"><option value=\"replicated\"{}>replicated</option><option value=\"global\"{}>global</option></select>", mode_sel("replicated"), mode_sel("global")),
            ""
        ),
        field(
            "replicas",
            "Replicas",
            format!("<input id=\"replicas\" name=\"replicas\" type=\"number\" min=\"0\" max=\"100000\" value=\"{}\" inputmode=\"numeric\">", esc(if form.replicas.is_empty() { "1" } else { &form.replicas })),
            "replicated mode only"
        ),
        field("ports", "Published ports", format!("<input id=\"ports\" name=\"ports\" value=\"{}\" placeholder=\"8001:80\" autocomplete=\"off\">", esc(&form.ports)), "PUBLISHED:TARGET[/udp], separated by commas"),
        field("constraints", "Placement constraints", format!("<textarea id=\"constraints\" name=\"constraints\" rows=\"2\" placeholder=\"node.role==worker\">{}</textarea>", esc(&form.constraints)), "one per line"),
        field("env", "Environment", format!("<textarea id=\"env\" name=\"env\" rows=\"3\" placeholder=\"KEY=value\">{}</textarea>", esc(&form.env)), "KEY=value, one per line"),
    );
    Page {
        title: "Create a service".into(),
        nav: "services",
        before,
        ..Page::default()
    }
}

/// One service: its spec, actions, tasks (live) and live logs.
pub fn service(s: &Snapshot, svc: &Service, csrf: &str) -> Page {
    let (running, desired) = s.replicas(svc);
    let image = &svc.spec.task_template.container_spec.image;
    let constraints = svc
        .spec
        .task_template
        .placement
        .as_ref()
        .map(|p| p.constraints.join(", "))
        .unwrap_or_default();
    let mut live = String::new();
    let _ = write!(
        live,
        "<dl class=\"facts\"><dt>ID</dt><dd><code>{}</code></dd><dt>Mode</dt><dd>{}</dd><dt>Replicas</dt><dd id=\"replicas\">{}</dd><dt>Image</dt><dd>{}</dd>\
         <dt>Ports</dt><dd>{}</dd><dt>Constraints</dt><dd>{}</dd><dt>Env</dt><dd>{}</dd>",
        esc(&svc.id),
        esc(svc.spec.mode.name()),
        replicas_badge(running, desired),
        esc(image),
        esc(&ports_text(&svc.endpoint.ports)),
        esc(&constraints),
        esc(&svc.spec.task_template.container_spec.env.join(" "))
    );
    if let Some(u) = &svc.update_status {
        let _ = write!(
            live,
            "<dt>Update</dt><dd>{} {}</dd>",
            esc(u.state.map(|st| st.as_str()).unwrap_or("")),
            esc(&u.message)
        );
    }
    live.push_str("</dl><h2>Tasks</h2>");
    let mut tasks: Vec<&Task> = s.tasks.iter().filter(|t| t.service_id == svc.id).collect();
    tasks.sort_by(|a, b| {
        (a.slot, std::cmp::Reverse(a.meta.created_at))
            .cmp(&(b.slot, std::cmp::Reverse(b.meta.created_at)))
    });
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let err = if t.status.err.is_empty() {
                String::new()
            } else {
                format!("<span class=\"err\">{}</span>", esc(&t.status.err))
            };
            let container = t
                .status
                .container_status
                .as_ref()
                .map(|c| c.container_id.clone())
                .unwrap_or_default();
            let container_link = if container.is_empty() {
                String::new()
            } else if t.node_id == s.this_node {
                format!(
                    "<a href=\"/containers/{}\"><code>{}</code></a>",
                    seg(&container),
                    esc(short(&container))
                )
            } else {
                format!("<code>{}</code>", esc(short(&container)))
            };
            vec![
                format!(
                    "<a href=\"/tasks/{}\">{}</a><br><code>{}</code>",
                    seg(&t.id),
                    esc(&s.task_name(t)),
                    esc(short(&t.id))
                ),
                esc(&s.node_name(&t.node_id)),
                esc(t.desired_state.as_str()),
                format!(
                    "<span class=\"task-state {}\">{}</span> <small>{}</small>",
                    state_class(t.status.state),
                    esc(t.status.state.as_str()),
                    esc(&ago(t.status.timestamp, s.now))
                ),
                format!(
                    "{}{}",
                    esc(&t.status.message),
                    if err.is_empty() {
                        String::new()
                    } else {
                        format!("<br>{err}")
                    }
                ),
                container_link,
            ]
        })
        .collect();
    live.push_str(&table(
        "Tasks of the service",
        "tasks",
        &[
            "Task",
            "Node",
            "Desired",
            "State",
            "Message / error",
            "Container",
        ],
        &rows,
        "No tasks.",
    ));

    let id = seg(&svc.id);
    let mut after = String::from("<h2>Actions</h2><div class=\"actions\">");
    if let ServiceMode::Replicated { replicas } = svc.spec.mode {
        let _ = write!(
            after,
            "<form method=\"post\" action=\"/services/{id}/scale\" class=\"inline\">{}<label for=\"scale\">Replicas</label>\
             <input id=\"scale\" name=\"replicas\" type=\"number\" min=\"0\" max=\"100000\" value=\"{replicas}\" inputmode=\"numeric\"><button type=\"submit\">Scale</button></form>",
            csrf_field(csrf)
        );
    }
    let _ = write!(
        after,
        "<form method=\"post\" action=\"/services/{id}/image\" class=\"inline\">{}<label for=\"new-image\">Image</label>\
         <input id=\"new-image\" name=\"image\" value=\"{}\" required autocomplete=\"off\"><button type=\"submit\">Update image</button></form>",
        csrf_field(csrf),
        esc(image)
    );
    if svc.previous_spec.is_some() {
        let _ = write!(
            after,
            "<form method=\"post\" action=\"/services/{id}/rollback\" class=\"inline\">{}<button type=\"submit\">Roll back</button></form>",
            csrf_field(csrf)
        );
    }
    let _ = write!(
        after,
        "<form method=\"post\" action=\"/services/{id}/remove\" class=\"inline\" data-confirm=\"Remove service {}?\">{}<button type=\"submit\" class=\"danger\">Remove</button></form></div>",
        esc(&svc.spec.name),
        csrf_field(csrf)
    );
    let _ = write!(
        after,
        "<h2>Logs</h2><p class=\"note\">Live, from the service's tasks (as <code>docker service logs -f</code> shows them).</p>\
         <pre class=\"logs\" tabindex=\"0\" aria-label=\"logs of {}\" data-logs=\"/services/{id}/logs\"></pre>",
        esc(&svc.spec.name)
    );
    Page {
        title: format!("Service {}", svc.spec.name),
        nav: "services",
        live,
        after,
        ..Page::default()
    }
}

// ---- containers ----

pub fn containers(s: &Snapshot, local: &[shoal_engine::ContainerRecord]) -> Page {
    let this = s.node_name(&s.this_node);
    let mut live = format!("<h2>On this manager ({})</h2>", esc(&this));
    let mut list: Vec<&shoal_engine::ContainerRecord> = local.iter().collect();
    list.sort_by_key(|c| std::cmp::Reverse(c.created));
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let task = c
                .config
                .labels
                .get("com.docker.swarm.task.name")
                .cloned()
                .unwrap_or_default();
            vec![
                format!(
                    "<a href=\"/containers/{}\">{}</a><br><code>{}</code>",
                    seg(&c.id),
                    esc(c.name.trim_start_matches('/')),
                    esc(c.short_id())
                ),
                esc(&c.config.image_ref),
                format!(
                    "<span class=\"badge {}\">{}</span>",
                    if c.state.status.as_str() == "running" {
                        "ok"
                    } else {
                        "muted"
                    },
                    esc(c.state.status.as_str())
                ),
                esc(&task),
                esc(&ago(c.created, s.now)),
            ]
        })
        .collect();
    live.push_str(&table(
        "Containers on this manager",
        "containers",
        &["Container", "Image", "State", "Task", "Created"],
        &rows,
        "No containers on this manager.",
    ));
    let mut by_node: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
    for t in s
        .tasks
        .iter()
        .filter(|t| t.node_id != s.this_node && !t.node_id.is_empty())
    {
        if t.status
            .container_status
            .as_ref()
            .is_some_and(|c| !c.container_id.is_empty())
            && t.status.state <= TaskState::Running
        {
            by_node.entry(s.node_name(&t.node_id)).or_default().push(t);
        }
    }
    live.push_str("<h2>On other nodes</h2><p class=\"note\">The task containers each node reports; their logs and details are read from that node.</p>");
    if by_node.is_empty() {
        live.push_str("<p class=\"empty\">No task containers on other nodes.</p>");
    }
    for (node, tasks) in by_node {
        let rows: Vec<Vec<String>> = tasks
            .iter()
            .map(|t| {
                let cid = t
                    .status
                    .container_status
                    .as_ref()
                    .map(|c| c.container_id.clone())
                    .unwrap_or_default();
                vec![
                    format!(
                        "<a href=\"/tasks/{}\">{}</a><br><code>{}</code>",
                        seg(&t.id),
                        esc(&s.task_container_name(t)),
                        esc(short(&cid))
                    ),
                    esc(&s
                        .service(&t.service_id)
                        .map(|x| x.spec.task_template.container_spec.image.clone())
                        .unwrap_or_default()),
                    format!(
                        "<span class=\"task-state {}\">{}</span>",
                        state_class(t.status.state),
                        esc(t.status.state.as_str())
                    ),
                ]
            })
            .collect();
        let _ = write!(live, "<h3>{}</h3>", esc(&node));
        live.push_str(&table(
            &format!("Task containers on {node}"),
            "containers",
            &["Container", "Image", "State"],
            &rows,
            "",
        ));
    }
    Page {
        title: "Containers".into(),
        nav: "containers",
        live,
        ..Page::default()
    }
}

impl Snapshot {
    fn task_container_name(&self, t: &Task) -> String {
        format!("{}.{}", self.task_name(t), t.id)
    }
}

/// One local container: inspect (the engine's record) and live logs.
pub fn container(c: &shoal_engine::ContainerRecord, now: DateTime<Utc>) -> Page {
    let json = serde_json::to_string_pretty(c).unwrap_or_default();
    let name = c.name.trim_start_matches('/').to_string();
    let live = format!(
        "<dl class=\"facts\"><dt>ID</dt><dd><code>{}</code></dd><dt>Image</dt><dd>{}</dd><dt>State</dt><dd>{}</dd><dt>Created</dt><dd>{}</dd></dl>",
        esc(&c.id),
        esc(&c.config.image_ref),
        esc(c.state.status.as_str()),
        esc(&ago(c.created, now))
    );
    let after = format!(
        "<h2>Logs</h2><pre class=\"logs\" tabindex=\"0\" aria-label=\"logs of {}\" data-logs=\"/containers/{}/logs\"></pre>\
         <details><summary>Inspect</summary><pre class=\"inspect\" tabindex=\"0\">{}</pre></details>",
        esc(&name),
        seg(&c.id),
        esc(&json)
    );
    Page {
        title: format!("Container {name}"),
        nav: "containers",
        live,
        after,
        ..Page::default()
    }
}

/// One task, wherever it runs: its state, its container's live logs and the engine's record of
/// the container (`container`: `None` when not asked, as for a live refresh).
pub fn task(s: &Snapshot, t: &Task, container: Option<Result<serde_json::Value, String>>) -> Page {
    let name = s.task_name(t);
    let cid = t
        .status
        .container_status
        .as_ref()
        .map(|c| c.container_id.clone())
        .unwrap_or_default();
    let mut live = String::from("<dl class=\"facts\">");
    let service = match s.service(&t.service_id) {
        Some(svc) => format!(
            "<a href=\"/services/{}\">{}</a>",
            seg(&svc.id),
            esc(&svc.spec.name)
        ),
        None => esc(t.service_name()),
    };
    let state = format!(
        "<span class=\"task-state {}\">{}</span> <small>{}</small>",
        state_class(t.status.state),
        esc(t.status.state.as_str()),
        esc(&ago(t.status.timestamp, s.now))
    );
    for (term, value) in [
        ("ID", format!("<code>{}</code>", esc(&t.id))),
        ("Service", service),
        ("Node", esc(&s.node_name(&t.node_id))),
        ("Desired state", esc(t.desired_state.as_str())),
        ("State", state),
        ("Message", esc(&t.status.message)),
        ("Error", esc(&t.status.err)),
        ("Container", format!("<code>{}</code>", esc(&cid))),
    ] {
        if !value.is_empty() {
            let _ = write!(live, "<dt>{term}</dt><dd>{value}</dd>");
        }
    }
    live.push_str("</dl>");
    let mut after = format!(
        "<h2>Logs</h2><pre class=\"logs\" tabindex=\"0\" aria-label=\"logs of {}\" data-logs=\"/tasks/{}/logs\"></pre>",
        esc(&name),
        seg(&t.id)
    );
    match container {
        Some(Ok(v)) => {
            let _ = write!(
                after,
                "<details open><summary>Inspect the container</summary><pre class=\"inspect\" tabindex=\"0\">{}</pre></details>",
                esc(&serde_json::to_string_pretty(&v).unwrap_or_default())
            );
        }
        Some(Err(e)) => {
            let _ = write!(
                after,
                "<h2>Container</h2><p class=\"note\">{}</p>",
                esc(&e)
            );
        }
        None => {}
    }
    let _ = write!(
        after,
        "<details><summary>Inspect the task</summary><pre class=\"inspect\" tabindex=\"0\">{}</pre></details>",
        esc(&serde_json::to_string_pretty(t).unwrap_or_default())
    );
    Page {
        title: format!("Task {name}"),
        nav: "services",
        live,
        after,
        ..Page::default()
    }
}

// ---- images, networks, events, settings ----

pub fn images(
    list: &[shoal_image::ImageRecord],
    in_use: &HashMap<String, usize>,
    now: DateTime<Utc>,
) -> Page {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            let tags = if i.repo_tags.is_empty() {
                "&lt;none&gt;".to_string()
            } else {
                i.repo_tags
                    .iter()
                    .map(|t| esc(t))
                    .collect::<Vec<_>>()
                    .join("<br>")
            };
            let id = i.id.trim_start_matches("sha256:");
            vec![
                tags,
                format!("<code>{}</code>", esc(short(id))),
                esc(&human_size(i.size)),
                esc(&i.created.map(|c| ago(c, now)).unwrap_or_default()),
                in_use.get(&i.id).copied().unwrap_or(0).to_string(),
            ]
        })
        .collect();
    let live = table(
        "Images on this manager",
        "images",
        &["Tags", "ID", "Size", "Created", "Containers"],
        &rows,
        "No images on this manager.",
    );
    let before = "<p class=\"note\">Images on this manager. Every node keeps its own images; a service's image is pulled where its tasks run.</p>".to_string();
    Page {
        title: "Images".into(),
        nav: "images",
        before,
        live,
        ..Page::default()
    }
}

pub fn networks(s: &Snapshot) -> Page {
    let rows: Vec<Vec<String>> = s
        .networks
        .iter()
        .map(|n| {
            let subnet = n
                .ipam_options
                .as_ref()
                .and_then(|i| i.configs.first())
                .map(|c| c.subnet.clone())
                .unwrap_or_default();
            let vni = n
                .driver_state
                .options
                .get(shoal_types::VXLAN_ID_OPTION)
                .cloned()
                .unwrap_or_default();
            let users = s
                .services
                .iter()
                .filter(|svc| {
                    svc.endpoint
                        .virtual_ips
                        .iter()
                        .any(|v| v.network_id == n.id)
                        || svc
                            .spec
                            .task_template
                            .networks
                            .iter()
                            .any(|a| a.target == n.id)
                })
                .map(|svc| esc(&svc.spec.name))
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                format!(
                    "{}{}",
                    esc(&n.spec.name),
                    if n.spec.ingress {
                        " <span class=\"badge muted\">ingress</span>"
                    } else {
                        ""
                    }
                ),
                format!("<code>{}</code>", esc(short(&n.id))),
                esc(&n.driver_state.name),
                esc(&subnet),
                esc(&vni),
                users,
            ]
        })
        .collect();
    let mut live = table(
        "Swarm networks",
        "networks",
        &["Name", "ID", "Driver", "Subnet", "VXLAN ID", "Services"],
        &rows,
        "No swarm networks.",
    );
    let mesh: Vec<Vec<String>> = s
        .nodes
        .iter()
        .filter_map(|n| {
            ingress_addr(n).map(|a| vec![esc(n.display_name()), esc(&n.status.addr), esc(a)])
        })
        .collect();
    live.push_str("<h2>Routing mesh</h2>");
    live.push_str(&table(
        "Each node's address on the ingress network",
        "mesh",
        &["Node", "Address", "Ingress address"],
        &mesh,
        "The routing mesh has no node addresses yet.",
    ));
    Page {
        title: "Networks".into(),
        nav: "networks",
        live,
        ..Page::default()
    }
}

pub fn events(list: &[EventEntry], now: DateTime<Utc>) -> Page {
    let mut live = String::from("<ol class=\"events\" reversed>");
    for e in list.iter().rev() {
        let _ = write!(
            live,
            "<li class=\"ev ev-{}\"><time datetime=\"{}\">{}</time> <span class=\"kind\">{}</span> {}</li>",
            esc(e.kind),
            esc(&e.time.to_rfc3339()),
            esc(&ago(e.time, now)),
            esc(e.kind),
            esc(&e.text)
        );
    }
    live.push_str("</ol>");
    if list.is_empty() {
        live = "<p class=\"empty\">No events since this dashboard started.</p>".into();
    }
    let before = "<p class=\"note\">Changes to the cluster since this dashboard started on this manager, newest first.</p>".to_string();
    Page {
        title: "Events".into(),
        nav: "events",
        before,
        live,
        ..Page::default()
    }
}

pub fn settings(csrf: &str, error: Option<&str>) -> Page {
    let mut before = String::new();
    if let Some(e) = error {
        let _ = write!(
            before,
            "<p class=\"flash error\" role=\"alert\">{}</p>",
            esc(e)
        );
    }
    let _ = write!(
        before,
        "<h2>Change the dashboard credential</h2><p class=\"note\">For every manager. Other sessions end. At least {} characters.</p>\
         <form method=\"post\" action=\"/settings/credential\" class=\"stack\">{}\
         <label for=\"current\">Current credential</label><input id=\"current\" name=\"current\" type=\"password\" autocomplete=\"current-password\" required>\
         <label for=\"new\">New credential</label><input id=\"new\" name=\"new\" type=\"password\" autocomplete=\"new-password\" required minlength=\"{0}\">\
         <label for=\"confirm\">New credential again</label><input id=\"confirm\" name=\"confirm\" type=\"password\" autocomplete=\"new-password\" required minlength=\"{0}\">\
         <button type=\"submit\">Change credential</button></form>",
        shoal_swarm::dashboard::MIN_CREDENTIAL_LEN,
        csrf_field(csrf)
    );
    Page {
        title: "Settings".into(),
        nav: "settings",
        before,
        ..Page::default()
    }
}

/// A page for an error (not found, not available).
pub fn error_page(title: &str, message: &str) -> Page {
    Page {
        title: title.into(),
        nav: "",
        before: format!(
            "<p class=\"flash error\" role=\"alert\">{}</p>",
            esc(message)
        ),
        ..Page::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::{
        ContainerStatus, ManagerStatus, NodeSpec, NodeStatus, Reachability, ServiceSpec, TaskStatus,
    };

    fn node(id: &str, name: &str, manager: bool, availability: NodeAvailability) -> Node {
        let mut n = Node {
            id: id.into(),
            spec: NodeSpec {
                availability,
                role: if manager {
                    NodeRole::Manager
                } else {
                    NodeRole::Worker
                },
                ..NodeSpec::default()
            },
            status: NodeStatus {
                state: NodeState::Ready,
                message: String::new(),
                addr: format!("10.9.0.{}", id.len()),
            },
            ..Node::default()
        };
        n.description.hostname = name.into();
        if manager {
            n.manager_status = Some(ManagerStatus {
                leader: true,
                reachability: Reachability::Reachable,
                addr: "10.9.0.1:2377".into(),
            });
        }
        n
    }

    fn make_service(id: &str, name: &str, replicas: u64) -> Service {
        let mut spec = ServiceSpec {
            name: name.into(),
            mode: ServiceMode::Replicated { replicas },
            ..ServiceSpec::default()
        };
        spec.task_template.container_spec.image = "nginx:<1>".into();
        Service {
            id: id.into(),
            spec,
            ..Service::default()
        }
    }

    fn task(
        id: &str,
        service: &str,
        slot: u64,
        node: &str,
        state: TaskState,
        desired: TaskState,
    ) -> Task {
        Task {
            id: id.into(),
            service_id: service.into(),
            slot,
            node_id: node.into(),
            desired_state: desired,
            status: TaskStatus {
                state,
                err: if state == TaskState::Failed {
                    "exit <1>".into()
                } else {
                    String::new()
                },
                container_status: Some(ContainerStatus {
                    container_id: format!("c{id}0123456789"),
                    ..ContainerStatus::default()
                }),
                ..TaskStatus::default()
            },
            ..Task::default()
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            now: Utc::now(),
            this_node: "n1".into(),
            cluster_id: "cluster0123456789".into(),
            nodes: vec![
                node("n1", "manager-1", true, NodeAvailability::Active),
                node("n22", "worker-<2>", false, NodeAvailability::Active),
                node("n333", "worker-3", false, NodeAvailability::Drain),
            ],
            services: vec![make_service("s1", "web", 2), make_service("s2", "db", 1)],
            tasks: vec![
                task("t1", "s1", 1, "n1", TaskState::Running, TaskState::Running),
                task("t2", "s1", 2, "n22", TaskState::Running, TaskState::Running),
                task("t3", "s2", 1, "n22", TaskState::Failed, TaskState::Shutdown),
                task(
                    "t4",
                    "s2",
                    1,
                    "n333",
                    TaskState::Shutdown,
                    TaskState::Shutdown,
                ),
                task("t5", "s2", 1, "", TaskState::Pending, TaskState::Running),
            ],
            networks: Vec::new(),
        }
    }

    #[test]
    fn overview_counts_the_cluster() {
        let p = overview(
            &snapshot(),
            LocalCounts {
                containers: 4,
                running: 3,
                images: 2,
            },
        );
        assert!(p.live.contains("id=\"card-nodes\""));
        assert!(
            p.live
                .contains("<span class=\"value\">3</span><span class=\"detail\">3 ready</span>"),
            "{}",
            p.live
        );
        assert!(p.live.contains("manager-1"), "the leader is named");
        assert!(
            p.live.contains(
                "<span class=\"value\">2</span><span class=\"detail\">running of 3 desired</span>"
            ),
            "{}",
            p.live
        );
        assert!(p
            .live
            .contains("4</span><span class=\"detail\">3 running on this manager"));
        assert!(p.live.contains("nginx:&lt;1&gt;"), "escaped image");
    }

    #[test]
    fn visualizer_has_a_column_per_node_and_a_box_per_live_task() {
        let s = snapshot();
        let p = visualizer(&s);
        assert_eq!(
            p.live.matches("class=\"node-col").count(),
            4,
            "three nodes and the not-placed column"
        );
        assert!(
            p.live.contains("data-node=\"worker-&lt;2&gt;\""),
            "names are escaped"
        );
        assert_eq!(p.live.matches("data-state=\"running\"").count(), 2);
        assert!(
            p.live.contains("data-state=\"pending\""),
            "the unplaced task shows"
        );
        assert!(
            !p.live.contains("data-task=\"t3\"") && !p.live.contains("data-task=\"t4\""),
            "finished tasks are not shown"
        );
        assert!(p.live.contains("avail-drain"));
        assert!(p.live.contains("<dd class=\"availability\">drain</dd>"));
        assert!(p.live.contains("manager (leader)"));
        // Manager first.
        assert!(p.live.find("manager-1").unwrap() < p.live.find("worker-3").unwrap());
    }

    #[test]
    fn nodes_page_offers_availability_labels_and_roles() {
        let p = nodes(&snapshot(), "CSRF<tok>");
        assert_eq!(
            p.live
                .matches("name=\"csrf\" value=\"CSRF&lt;tok&gt;\"")
                .count(),
            9,
            "three forms per node carry the token"
        );
        assert!(p.live.contains("value=\"drain\" aria-pressed=\"true\""));
        assert!(p.live.contains(">Promote</button>") && p.live.contains(">Demote</button>"));
        assert!(p.live.contains("action=\"/nodes/n22/availability\""));
    }

    #[test]
    fn services_page_scales_inline_and_links_to_create() {
        let p = services(&snapshot(), "tok");
        assert!(p.before.contains("href=\"/services/new\""));
        assert!(p.live.contains("action=\"/services/s1/scale\""));
        assert!(p.live.contains("id=\"scale-s1\""), "{}", p.live);
        assert!(!p.live.contains("{2}"));
        assert!(p
            .live
            .contains("name=\"replicas\" type=\"number\" min=\"0\" max=\"100000\" value=\"2\""));
        assert!(p.live.contains("2/2"), "web runs 2 of 2: {}", p.live);
        assert!(p.live.contains("0/1"), "db runs 0 of 1");
    }

    #[test]
    fn service_page_shows_tasks_errors_and_actions() {
        let s = snapshot();
        let db = s.services[1].clone();
        let p = service(&s, &db, "tok");
        assert!(
            p.live.contains("exit &lt;1&gt;"),
            "task errors show, escaped"
        );
        assert!(p.after.contains("/services/s2/image") && p.after.contains("/services/s2/remove"));
        assert!(
            !p.after.contains("rollback"),
            "no previous spec, no rollback"
        );
        assert!(p.after.contains("data-logs=\"/services/s2/logs\""));
        let mut updated = db.clone();
        updated.previous_spec = Some(db.spec.clone());
        assert!(service(&s, &updated, "tok")
            .after
            .contains("/services/s2/rollback"));
        let web = service(&s, &s.services[0], "tok");
        assert!(
            web.live.contains("href=\"/containers/ct10123456789\""),
            "local containers link to their page: {}",
            web.live
        );
    }

    #[test]
    fn create_form_keeps_values_and_shows_errors() {
        let form = ServiceForm {
            name: "w\"x".into(),
            image: "nginx".into(),
            replicas: "3".into(),
            env: "A=<b>".into(),
            ..ServiceForm::default()
        };
        let p = new_service("tok", &form, Some("bad <thing>"));
        assert!(p.before.contains("bad &lt;thing&gt;"));
        assert!(p.before.contains("value=\"w&quot;x\""));
        assert!(p.before.contains(">A=&lt;b&gt;</textarea>"));
        assert!(p.before.contains("value=\"3\""));
    }

    #[test]
    fn containers_images_networks_events_settings_render() {
        let s = snapshot();
        let p = containers(&s, &[]);
        assert!(p.live.contains("No containers on this manager."));
        assert!(p.live.contains("<h3>worker-&lt;2&gt;</h3>"), "{}", p.live);
        let i = images(&[], &HashMap::new(), s.now);
        assert!(i.live.contains("No images"));
        let n = networks(&s);
        assert!(n.live.contains("No swarm networks."));
        let e = events(
            &[EventEntry {
                time: s.now,
                kind: "service",
                text: "service <web> created".into(),
            }],
            s.now,
        );
        assert!(e.live.contains("service &lt;web&gt; created"));
        let st = settings("tok", Some("wrong"));
        assert!(
            st.before.contains("name=\"current\"") && st.before.contains("role=\"alert\">wrong")
        );
    }

    #[test]
    fn layout_marks_the_current_section_and_carries_the_fragment_url() {
        let ctx = Ctx {
            csrf: "tok".into(),
            flash: Some(Flash {
                error: true,
                text: "<oops>".into(),
            }),
            host: "m<1>".into(),
            generation: 42,
        };
        let page = visualizer(&snapshot());
        let html = layout(&ctx, &page, "/visualizer");
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("<a href=\"/visualizer\" aria-current=\"page\">Visualizer</a>"));
        assert!(html.contains("data-fragment=\"/visualizer?fragment=1\""));
        assert!(html.contains("role=\"alert\">&lt;oops&gt;</p>"));
        assert!(html.contains("manager m&lt;1&gt;"));
        assert!(html.contains("<body data-generation=\"42\">"));
        assert!(html.contains("name=\"viewport\""));
        assert!(
            !html.contains("<script>"),
            "no inline script (the CSP forbids it)"
        );
        let l = login(Some("wrong credential"), "/x\"y");
        assert!(l.contains("id=\"login-error\"") && l.contains("value=\"/x&quot;y\""));
    }
}

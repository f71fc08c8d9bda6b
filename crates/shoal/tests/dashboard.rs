//! The web dashboard end to end, in real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over the WebDriver protocol by the small client below) against a
//! three-node lab: a wrong credential is refused; after login the visualizer shows the three
//! nodes; a two-replica service created from the form shows two running boxes; scaling it to
//! four inline shows four; draining a node moves its boxes to the others; and the visualizer
//! follows a change made elsewhere without reloading. Screenshots go to
//! `target/test-artifacts/dashboard/`.
//!
//! chromedriver (and the Chromium it starts) runs in the lab's hub namespace, which is given an
//! address on the lab network so the browser reaches the manager's dashboard port; this test
//! talks to chromedriver from threads that enter that namespace. Both are killed by pid when the
//! test ends, also when it fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use shoal_testkit::{running_as_root, 
    ensure_packages, wait_until, workspace_root, Daemon, DaemonOpts, Lab, Netns, TestImage,
};

const DRIVER_PORT: u16 = 9515;
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn artifacts() -> PathBuf {
    let dir = workspace_root().join("target/test-artifacts/dashboard");
    std::fs::create_dir_all(&dir).expect("creating the artifacts dir");
    dir
}

/// One HTTP/1.1 request to chromedriver inside `netns`; the JSON answer.
fn driver_http(
    netns: &Netns,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let body = body.map(|b| b.to_string());
    let (method, path) = (method.to_string(), path.to_string());
    netns
        .run(move || -> Result<Value, String> {
            let mut s = TcpStream::connect(("127.0.0.1", DRIVER_PORT)).map_err(|e| format!("connecting to chromedriver: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(90))).map_err(|e| e.to_string())?;
            let payload = body.unwrap_or_default();
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{DRIVER_PORT}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                payload.len()
            );
            s.write_all(req.as_bytes()).map_err(|e| format!("sending to chromedriver: {e}"))?;
            // chromedriver keeps connections open: read the head, then Content-Length bytes
            // (or chunks up to the last one).
            let mut raw = Vec::new();
            let mut buf = [0u8; 16384];
            let (head, body) = loop {
                let n = s.read(&mut buf).map_err(|e| format!("reading from chromedriver: {e}"))?;
                if n == 0 {
                    return Err("chromedriver closed the connection early".into());
                }
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).into_owned();
                let Some((head, rest)) = text.split_once("\r\n\r\n") else { continue };
                let lower = head.to_ascii_lowercase();
                let length = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                match length {
                    Some(len) if rest.len() >= len => break (head.to_string(), rest[..len].to_string()),
                    Some(_) => continue,
                    None if lower.contains("transfer-encoding: chunked") && rest.ends_with("0\r\n\r\n") => {
                        break (head.to_string(), dechunk(rest))
                    }
                    None => {}
                }
            };
            let v: Value = serde_json::from_str(&body).map_err(|e| format!("chromedriver answer is not JSON ({e}): {body:.200}"))?;
            let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            if status != 200 {
                return Err(format!("{method} {path}: {status}: {}", v["value"]["message"].as_str().unwrap_or(&body)));
            }
            Ok(v["value"].clone())
        })
        .map_err(|e| format!("entering the hub namespace: {e}"))?
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// chromedriver + one Chromium session, both in the hub namespace; killed on drop.
struct Browser {
    netns: Netns,
    driver: Child,
    session: Option<String>,
    profile: PathBuf,
    shots: PathBuf,
}

impl Browser {
    fn start(netns: &Netns) -> Browser {
        let profile =
            std::env::temp_dir().join(format!("shoal-dashboard-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("creating the chromium profile dir");
        let log =
            std::fs::File::create(artifacts().join("chromedriver.log")).expect("chromedriver log");
        let driver = netns
            .command("/usr/bin/chromedriver")
            .arg(format!("--port={DRIVER_PORT}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("starting chromedriver");
        let mut b = Browser {
            netns: netns.clone(),
            driver,
            session: None,
            profile,
            shots: artifacts(),
        };
        let up = wait_until(Duration::from_secs(20), || {
            driver_http(&b.netns, "GET", "/status", None).is_ok_and(|v| v["ready"] == true)
        });
        assert!(up, "chromedriver did not come up");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-extensions", "--window-size=1280,1000", format!("--user-data-dir={}", b.profile.display()),
                ]
            }
        }}});
        let v = driver_http(&b.netns, "POST", "/session", Some(&caps))
            .expect("creating a chromium session");
        b.session = Some(v["sessionId"].as_str().expect("session id").to_string());
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let sid = self.session.as_deref().ok_or("no session")?;
        driver_http(
            &self.netns,
            method,
            &format!("/session/{sid}{path}"),
            body.as_ref(),
        )
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})))
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    fn url(&self) -> String {
        self.call("GET", "/url", None)
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    fn count(&self, css: &str) -> usize {
        self.script(
            "return document.querySelectorAll(arguments[0]).length",
            json!([css]),
        )
        .as_u64()
        .unwrap_or(0) as usize
    }

    fn text(&self, css: &str) -> String {
        self.script(
            "var e = document.querySelector(arguments[0]); return e ? e.textContent : ''",
            json!([css]),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// The element matching `css` (waits for it a while).
    fn find(&self, css: &str) -> String {
        let mut last = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            ) {
                Ok(v) => return v[ELEMENT].as_str().unwrap_or_default().to_string(),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("no element {css}: {last}");
    }

    /// Real keystrokes into the element (cleared first).
    fn type_into(&self, css: &str, text: &str) {
        let mut last = String::new();
        for _ in 0..5 {
            let el = self.find(css);
            let typed = self
                .call("POST", &format!("/element/{el}/clear"), Some(json!({})))
                .and_then(|_| {
                    self.call(
                        "POST",
                        &format!("/element/{el}/value"),
                        Some(json!({"text": text})),
                    )
                });
            match typed {
                Ok(_) => return,
                // The live region was replaced under us: find the new element.
                Err(e) if e.contains("stale element") => last = e,
                Err(e) => panic!("typing into {css}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("typing into {css}: {last}");
    }

    /// A real click (retried if the live region replaced the element meanwhile).
    fn click(&self, css: &str) {
        let mut last = String::new();
        for _ in 0..5 {
            let el = self.find(css);
            match self.call("POST", &format!("/element/{el}/click"), Some(json!({}))) {
                Ok(_) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("clicking {css}: {last}");
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Browser) -> bool) {
        let ok = wait_until(timeout, || f(self));
        if !ok {
            self.screenshot("failure");
            panic!(
                "timed out waiting for {what} (url {}); page text:\n{}",
                self.url(),
                self.text("main")
            );
        }
    }

    fn screenshot(&self, name: &str) {
        match self.call("GET", "/screenshot", None) {
            Ok(v) => {
                let png = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .unwrap_or_default();
                let path = self.shots.join(format!("{name}.png"));
                std::fs::write(&path, png)
                    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
                eprintln!("screenshot: {}", path.display());
            }
            Err(e) => eprintln!("screenshot {name} failed: {e}"),
        }
    }

    /// Emulates a phone-sized screen (Chromium's device metrics, through chromedriver's CDP
    /// passthrough; a window cannot be made that narrow).
    fn phone(&self, on: bool) {
        let (cmd, params) = if on {
            (
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": true}),
            )
        } else {
            ("Emulation.clearDeviceMetricsOverride", json!({}))
        };
        self.call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": cmd, "params": params})),
        )
        .expect("emulating a phone screen");
    }
}

/// Every process below `pid` (children first found, then theirs).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // pid (comm) state ppid …; comm may hold spaces, so read after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok());
            if let Some(ppid) = ppid {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, _) in parent_of.iter().filter(|(_, pp)| *pp == p) {
            out.push(*child);
            frontier.push(*child);
        }
    }
    out
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() && self.session.is_some() {
            self.screenshot("failure");
        }
        if let Some(sid) = self.session.take() {
            let _ = driver_http(&self.netns, "DELETE", &format!("/session/{sid}"), None);
        }
        // Chromium's processes (started by chromedriver), then chromedriver itself.
        for pid in descendants(self.driver.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn node_id(d: &Daemon) -> String {
    d.docker_ok(["info", "--format", "{{.Swarm.NodeID}}"])
        .trim()
        .to_string()
}

/// Running boxes of `service` in the visualizer (optionally in one node's column).
fn running_boxes(b: &Browser, service: &str, node: Option<&str>) -> usize {
    let col = node
        .map(|id| format!("section.node-col[data-node-id=\"{id}\"] "))
        .unwrap_or_default();
    b.count(&format!(
        "{col}li.task[data-service=\"{service}\"][data-state=\"running\"]"
    ))
}

fn credential(manager: &Daemon) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "dashboard",
            "credentials",
            "-H",
            &format!("unix://{}", manager.sock().display()),
        ])
        .output()
        .expect("running shoal dashboard credentials");
    assert!(
        out.status.success(),
        "shoal dashboard credentials: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(c.len(), 20, "a 20-character credential: {c:?}");
    c
}

#[test]
fn dashboard_in_chromium_on_a_three_node_lab() {
    if !running_as_root("dashboard tests") {
        return;
    }
    ensure_packages(&[
        "busybox-static",
        "nftables",
        "iproute2",
        "chromium",
        "chromium-driver",
    ]);
    let lab = Lab::new("shoal-dash", 3);
    let image = TestImage::whoami().docker_archive();
    let names = ["manager-1", "worker-1", "worker-2"];
    let nodes: Vec<Daemon> = (0..3)
        .map(|i| {
            let d = Daemon::start(
                DaemonOpts::new(env!("CARGO_BIN_EXE_shoal"), lab.node(i)).hostname(names[i]),
            );
            d.docker_ok(["load", "-i", image.to_str().unwrap()]);
            d
        })
        .collect();
    nodes[0].docker_ok([
        "swarm",
        "init",
        "--advertise-addr",
        &lab.addr(0).to_string(),
    ]);
    let token = nodes[0]
        .docker_ok(["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_string();
    for w in &nodes[1..] {
        w.docker_ok([
            "swarm",
            "join",
            "--token",
            &token,
            &format!("{}:2377", lab.addr(0)),
        ]);
    }
    let ready = wait_until(Duration::from_secs(20), || {
        nodes[0]
            .docker_ok(["node", "ls", "--format", "{{.Status}}"])
            .lines()
            .filter(|l| *l == "Ready")
            .count()
            == 3
    });
    assert!(ready, "node ls: {}", nodes[0].docker_ok(["node", "ls"]));
    let ids: Vec<String> = nodes.iter().map(node_id).collect();
    let secret = credential(&nodes[0]);
    // Workers serve no dashboard and keep no credential.
    let worker_cred = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "dashboard",
            "credentials",
            "-H",
            &format!("unix://{}", nodes[1].sock().display()),
        ])
        .output()
        .unwrap();
    assert!(
        !worker_cred.status.success(),
        "a worker has no dashboard credential"
    );

    // The browser lives in the hub namespace, with an address on the lab network.
    let hub = lab.hub();
    hub.ip(&[
        "addr",
        "add",
        &lab.subnet().replace(".0/24", ".254/24"),
        "dev",
        "br0",
    ]);
    let base = format!("http://{}:9000", lab.addr(0));
    let browser = Browser::start(hub);

    // 1. Login is required, and a wrong credential is refused.
    browser.goto(&format!("{base}/visualizer"));
    browser.wait_for("the login page", Duration::from_secs(10), |b| {
        b.url().contains("/login")
    });
    browser.type_into("#credential", "WRONG-CREDENTIAL-123");
    browser.click("#login");
    browser.wait_for("the refusal", Duration::from_secs(15), |b| {
        b.text("#login-error").contains("Wrong credential")
    });
    assert!(
        browser.url().contains("/login"),
        "still on the login page: {}",
        browser.url()
    );
    assert_eq!(browser.count("section.node-col"), 0);
    browser.screenshot("01-login-refused");

    // 2. The right credential, submitted from the keyboard (Enter), leads to the visualizer
    //    with the three nodes.
    browser.type_into("#credential", &format!("{secret}\u{E007}"));
    browser.wait_for("the visualizer after login", Duration::from_secs(15), |b| {
        b.url().ends_with("/visualizer")
    });
    browser.wait_for("three node columns", Duration::from_secs(15), |b| {
        b.count("section.node-col[data-node-id]:not([data-node-id=''])") == 3
    });
    for (id, name) in ids.iter().zip(names) {
        let col = format!("section.node-col[data-node-id=\"{id}\"]");
        assert_eq!(browser.count(&col), 1, "a column for {name}");
        assert_eq!(browser.text(&format!("{col} h2")), name);
        assert_eq!(browser.text(&format!("{col} .status")), "ready");
    }
    assert!(browser
        .text("section.node-col[data-node=\"manager-1\"] .role")
        .contains("leader"));
    browser.screenshot("02-visualizer-three-nodes");

    // 3. A two-replica service from the form: two running boxes.
    browser.goto(&format!("{base}/services/new"));
    browser.type_into("#name", "web");
    browser.type_into("#image", "whoami");
    browser.type_into("#replicas", "2");
    browser.type_into("#ports", "8080:80");
    browser.type_into("#env", "GREETING=hello");
    browser.screenshot("03-create-form");
    browser.click("#create-service button[type=submit]");
    browser.wait_for("the new service's page", Duration::from_secs(30), |b| {
        b.text("main h1") == "Service web"
    });
    assert!(
        browser.text("main .flash").contains("Service web created"),
        "flash: {}",
        browser.text("main")
    );
    let spec = nodes[0].docker_ok(["service", "inspect", "web", "--format", "{{.Spec.Mode.Replicated.Replicas}} {{.Spec.TaskTemplate.ContainerSpec.Image}} {{.Spec.TaskTemplate.ContainerSpec.Env}} {{range .Endpoint.Ports}}{{.PublishedPort}}:{{.TargetPort}}{{end}}"]);
    assert_eq!(
        spec.trim(),
        "2 whoami:latest [GREETING=hello] 8080:80",
        "the service as the CLI sees it"
    );
    browser.goto(&format!("{base}/visualizer"));
    browser.wait_for("two running web boxes", Duration::from_secs(60), |b| {
        running_boxes(b, "web", None) == 2
    });
    browser.screenshot("04-visualizer-two-replicas");

    // 4. Scale inline to four on the services page; the page follows without a reload.
    browser.goto(&format!("{base}/services"));
    browser.type_into("form[data-service=\"web\"] input[name=replicas]", "4");
    browser.click("form[data-service=\"web\"] button[type=submit]");
    browser.wait_for("the scale confirmation", Duration::from_secs(30), |b| {
        b.text("main .flash").contains("scaled to 4")
    });
    browser.wait_for(
        "4/4 replicas on the services page",
        Duration::from_secs(60),
        |b| b.text("span.replicas[data-service=\"web\"]").trim() == "4/4",
    );
    browser.goto(&format!("{base}/visualizer"));
    browser.wait_for("four running web boxes", Duration::from_secs(30), |b| {
        running_boxes(b, "web", None) == 4
    });
    browser.screenshot("05-visualizer-four-replicas");

    // 5. Drain a worker that runs some of them: its boxes move to the others.
    let drained = (1..3)
        .max_by_key(|i| running_boxes(&browser, "web", Some(&ids[*i])))
        .unwrap();
    assert!(
        running_boxes(&browser, "web", Some(&ids[drained])) > 0,
        "worker {drained} runs a web task"
    );
    browser.goto(&format!("{base}/nodes"));
    browser.click(&format!(
        "form[action=\"/nodes/{}/availability\"] button[value=drain]",
        ids[drained]
    ));
    browser.wait_for("the drain confirmation", Duration::from_secs(30), |b| {
        b.text("main .flash").contains("availability set to drain")
    });
    browser.screenshot("06-nodes-drained");
    browser.goto(&format!("{base}/visualizer"));
    browser.wait_for(
        "the drained node's boxes on the others",
        Duration::from_secs(60),
        |b| {
            b.count(&format!(
                "section.node-col[data-node-id=\"{}\"] li.task[data-service=\"web\"]",
                ids[drained]
            )) == 0
                && running_boxes(b, "web", None) == 4
        },
    );
    assert_eq!(
        browser.text(&format!(
            "section.node-col[data-node-id=\"{}\"] .availability",
            ids[drained]
        )),
        "drain"
    );
    browser.screenshot("07-visualizer-after-drain");

    // 6. Live: a change made with the docker CLI shows up without reloading the page.
    browser.script("window.__noReload = 'still here'; return null", json!([]));
    nodes[0].docker_ok(["service", "scale", "--detach", "web=5"]);
    browser.wait_for("a fifth box, live", Duration::from_secs(60), |b| {
        running_boxes(b, "web", None) == 5
    });
    assert_eq!(
        browser.script("return window.__noReload || ''", json!([])),
        json!("still here"),
        "the page was not reloaded"
    );
    let update = nodes[0].docker_ok([
        "service",
        "inspect",
        "web",
        "--format",
        "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
    ]);
    assert_eq!(
        update.trim(),
        "",
        "scaling with the CLI does not roll the dashboard-made service over"
    );
    assert_eq!(browser.text("#conn"), "Live");

    // 7. Phone width: the same page, one column.
    browser.phone(true);
    std::thread::sleep(Duration::from_millis(300));
    let columns = browser.script(
        "var c = document.querySelectorAll('section.node-col'); return c.length > 1 && c[0].getBoundingClientRect().left === c[1].getBoundingClientRect().left",
        json!([]),
    );
    assert_eq!(columns, json!(true), "node columns stack at phone width");
    let overflow = browser.script(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1",
        json!([]),
    );
    assert_eq!(
        overflow,
        json!(true),
        "no sideways scrolling at phone width"
    );
    browser.screenshot("08-visualizer-phone");
    browser.phone(false);

    // A service's tasks and live logs; a container's logs and inspect.
    let web_id = nodes[0]
        .docker_ok(["service", "inspect", "web", "--format", "{{.ID}}"])
        .trim()
        .to_string();
    browser.goto(&format!("{base}/services/{web_id}"));
    browser.wait_for("the service's tasks", Duration::from_secs(10), |b| {
        b.count("table.tasks tbody tr") >= 5
    });
    browser.wait_for("the service's logs", Duration::from_secs(30), |b| {
        b.text("pre.logs").contains("whoami: listening")
    });
    browser.screenshot("11-service-tasks-and-logs");
    browser.goto(&format!("{base}/containers"));
    browser.click("table.containers a[href^=\"/containers/\"]");
    browser.wait_for("a container's page", Duration::from_secs(10), |b| {
        b.text("main h1").starts_with("Container ")
    });
    browser.wait_for("the container's logs", Duration::from_secs(30), |b| {
        b.text("pre.logs").contains("whoami: listening")
    });
    assert!(
        browser
            .text("pre.inspect")
            .contains("com.docker.swarm.task.id"),
        "inspect shows the record"
    );
    // A container on another node: its logs and the engine's record come from that node.
    browser.goto(&format!("{base}/containers"));
    browser.click("table.containers a[href^=\"/tasks/\"]");
    browser.wait_for("a remote task's page", Duration::from_secs(10), |b| {
        b.text("main h1").starts_with("Task web.")
    });
    browser.wait_for("the remote container's logs", Duration::from_secs(30), |b| {
        b.text("pre.logs").contains("whoami: listening")
    });
    let remote_inspect = browser.text("details[open] pre.inspect");
    assert!(
        remote_inspect.contains("com.docker.swarm.task.id") && remote_inspect.contains("\"shim_pid\""),
        "the remote container's record: {remote_inspect:.300}"
    );
    browser.screenshot("12-remote-task-logs-and-inspect");

    // The other pages answer after login.
    for page in [
        "/",
        "/nodes",
        "/services",
        "/containers",
        "/images",
        "/networks",
        "/events",
        "/settings",
    ] {
        browser.goto(&format!("{base}{page}"));
        browser.wait_for(&format!("page {page}"), Duration::from_secs(10), |b| {
            b.count("main h1") == 1 && !b.text("main h1").contains("Not")
        });
    }
    assert!(browser
        .text("main")
        .contains("Change the dashboard credential"));
    browser.goto(&format!("{base}/events"));
    assert!(
        browser.text("ol.events").contains("service web created"),
        "events: {}",
        browser.text("main")
    );
    browser.screenshot("09-events");
    browser.goto(&format!("{base}/"));
    browser.screenshot("10-overview");
    drop(browser);

    for d in &nodes {
        d.docker_ok(["swarm", "leave", "--force"]);
    }
    check_artifacts(&artifacts());
}

fn check_artifacts(dir: &Path) {
    for name in [
        "01-login-refused",
        "02-visualizer-three-nodes",
        "04-visualizer-two-replicas",
        "05-visualizer-four-replicas",
        "07-visualizer-after-drain",
        "12-remote-task-logs-and-inspect",
    ] {
        let path = dir.join(format!("{name}.png"));
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(data.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
    }
}

//! The registry guard: Debian's `docker-registry` on 127.0.0.1:5000 inside a namespace.

use crate::http::http_request;
use crate::netns::Netns;
use crate::util::{ensure_packages, output_with_timeout, random_hex, tail_file, terminate_child, wait_until};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

/// A `docker-registry serve` process listening on `127.0.0.1:5000` in a namespace, with its
/// storage under `/tmp/shoal-registry-<random>/`. Drop kills it (by pid) and removes the dir.
pub struct Registry {
    netns: Netns,
    dir: PathBuf,
    child: Option<Child>,
}

impl Registry {
    /// Installs `docker-registry` and `skopeo` if needed, starts the registry and waits (≤15 s)
    /// until `GET /v2/` answers.
    pub fn start(netns: &Netns) -> Registry {
        ensure_packages(&["docker-registry", "skopeo"]);
        let dir = PathBuf::from(format!("/tmp/shoal-registry-{}", random_hex(3)));
        let mut r = Registry { netns: netns.clone(), dir, child: None };
        fs::create_dir_all(r.dir.join("data")).expect("mkdir registry dir");
        fs::create_dir_all(r.dir.join("tmp")).expect("mkdir registry tmp");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:5000\n",
            r.dir.join("data").display()
        );
        fs::write(r.dir.join("config.yml"), config).expect("write registry config");
        let log = fs::File::create(r.log_path()).expect("registry log");
        let child = netns
            .command("/usr/bin/docker-registry")
            .arg("serve")
            .arg(r.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        r.child = Some(child);
        let up = wait_until(Duration::from_secs(15), || {
            http_request(&r.netns, "GET", "http://127.0.0.1:5000/v2/").map(|x| x.status == 200).unwrap_or(false)
        });
        assert!(up, "docker-registry did not come up; log:\n{}", tail_file(&r.log_path(), 40));
        r
    }

    /// `127.0.0.1:5000` (reachable from the registry's namespace).
    pub fn addr(&self) -> &'static str {
        "127.0.0.1:5000"
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    /// Runs `skopeo` inside the registry's namespace (insecure policy, temp dir under ours).
    pub fn skopeo(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = self.netns.command("skopeo");
        cmd.arg("--insecure-policy").args(args).env("TMPDIR", self.dir.join("tmp"));
        output_with_timeout(cmd, Duration::from_secs(300)).expect("spawn skopeo")
    }

    fn skopeo_ok(&self, args: &[&str]) -> String {
        let out = self.skopeo(args);
        assert!(
            out.status.success(),
            "skopeo {args:?} failed:\n{}\n{}\nregistry log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail_file(&self.log_path(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Pushes a docker-archive tarball as `127.0.0.1:5000/<dest>` (e.g. `dest = "busybox:latest"`).
    pub fn push_archive(&self, archive: &Path, dest: &str) {
        let src = format!("docker-archive:{}", archive.display());
        let dst = format!("docker://127.0.0.1:5000/{dest}");
        self.skopeo_ok(&["copy", "--dest-tls-verify=false", &src, &dst]);
    }

    /// Pushes an OCI layout tarball as `127.0.0.1:5000/<dest>`.
    pub fn push_oci_archive(&self, archive: &Path, dest: &str) {
        let src = format!("oci-archive:{}", archive.display());
        let dst = format!("docker://127.0.0.1:5000/{dest}");
        self.skopeo_ok(&["copy", "--dest-tls-verify=false", &src, &dst]);
    }

    /// `skopeo inspect` of `127.0.0.1:5000/<name>` as JSON.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let r = format!("docker://127.0.0.1:5000/{name}");
        let out = self.skopeo_ok(&["inspect", "--tls-verify=false", &r]);
        serde_json::from_str(&out).expect("skopeo inspect json")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate_child(&mut c, Duration::from_secs(5));
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if self.dir.exists() {
                eprintln!("shoal-testkit: could not remove {}: {e}", self.dir.display());
            }
        }
    }
}

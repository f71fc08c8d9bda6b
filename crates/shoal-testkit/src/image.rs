//! Test images assembled from Debian packages, cached under `target/test-images/`.
//!
//! Layout (all under [`test_images_dir`]`/v1/`):
//! - `layers/<key>/{rootfs/, layer.tar, diff_id}`: one layer; `busybox-base` is shared by all
//!   three images, so its bytes (and digest) are identical in each.
//! - `images/<key>/{rootfs/, <archives>}`: the merged rootfs and archives written on demand.
//!
//! Every cache entry is built in a temp dir next to its final place and renamed into it, so two
//! test processes racing on a fresh checkout both end up with a complete entry.

use crate::archive::{write_docker_archive, write_layer_tar, write_oci_layout, Compression};
use crate::util::{ensure_packages, random_hex, run_ok, sha256_file, test_images_dir, tmp_sibling};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Bump when the content of cached images changes.
const CACHE_VERSION: &str = "v1";
/// Timestamp used in image configs and history.
pub(crate) const CREATED: &str = "2024-01-01T00:00:00Z";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One layer of a test image.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The layer's files, unpacked.
    pub rootfs: PathBuf,
    /// Uncompressed layer tar (deterministic: sorted, fixed mtime).
    pub tar: PathBuf,
    /// `sha256:<hex>` of `tar`.
    pub diff_id: String,
    /// Size of `tar` in bytes.
    pub size: u64,
    /// The history `created_by` text.
    pub created_by: String,
}

/// The `config` part of an image config.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: String,
    pub user: String,
    /// e.g. `"80/tcp"`.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

/// A test image: layers (base first), config, and its merged rootfs.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// Short name: "busybox", "nginx", "whoami".
    pub name: String,
    /// Cache directory of this image (archives are written here).
    pub dir: PathBuf,
    /// Merged root filesystem (all layers applied).
    pub rootfs: PathBuf,
    pub layers: Vec<Layer>,
    pub config: ImageConfig,
}

static BUSYBOX: OnceLock<TestImage> = OnceLock::new();
static NGINX: OnceLock<TestImage> = OnceLock::new();
static WHOAMI: OnceLock<TestImage> = OnceLock::new();
static BASE: OnceLock<Layer> = OnceLock::new();

fn cache_root() -> PathBuf {
    test_images_dir().join(CACHE_VERSION)
}

impl TestImage {
    /// busybox (from `busybox-static`): one layer, Cmd ["sh"].
    pub fn busybox() -> &'static TestImage {
        BUSYBOX.get_or_init(|| {
            let base = base_layer().clone();
            let config = ImageConfig {
                env: vec![PATH_ENV.into()],
                cmd: Some(vec!["sh".into()]),
                ..Default::default()
            };
            assemble("busybox", "busybox", vec![base], config)
        })
    }

    /// nginx (from Debian's `nginx`): busybox base layer + a layer with nginx and its libraries.
    pub fn nginx() -> &'static TestImage {
        NGINX.get_or_init(|| {
            let base = base_layer().clone();
            ensure_packages(&["nginx"]);
            let layer = build_layer("nginx", "COPY nginx /", populate_nginx);
            let config = ImageConfig {
                env: vec![PATH_ENV.into(), "NGINX_VERSION=1.22.1".into()],
                cmd: Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()]),
                exposed_ports: vec!["80/tcp".into()],
                stop_signal: Some("SIGQUIT".into()),
                labels: BTreeMap::from([(
                    "maintainer".to_string(),
                    "shoal-testkit".to_string(),
                )]),
                ..Default::default()
            };
            assemble("nginx", "nginx", vec![base, layer], config)
        })
    }

    /// whoami (this workspace's `whoami` crate, built static): busybox base + /whoami.
    pub fn whoami() -> &'static TestImage {
        WHOAMI.get_or_init(|| {
            let base = base_layer().clone();
            let bin = build_static_whoami();
            let hash = sha256_file(&bin).expect("hash whoami");
            let key = format!("whoami-{}", &hash[..12]);
            let layer = build_layer(&key, "COPY whoami /whoami", |root| {
                fs::copy(&bin, root.join("whoami")).expect("copy whoami");
                set_mode(&root.join("whoami"), 0o755);
            });
            let config = ImageConfig {
                env: vec![PATH_ENV.into()],
                entrypoint: Some(vec!["/whoami".into()]),
                exposed_ports: vec!["80/tcp".into()],
                ..Default::default()
            };
            assemble("whoami", &key, vec![base, layer], config)
        })
    }

    /// All three images.
    pub fn all() -> [&'static TestImage; 3] {
        [Self::busybox(), Self::nginx(), Self::whoami()]
    }

    /// The image config JSON (deterministic bytes; its sha256 is the image ID).
    pub fn config_json(&self) -> Vec<u8> {
        let c = &self.config;
        let mut cfg = serde_json::Map::new();
        cfg.insert("Env".into(), json!(c.env));
        if let Some(cmd) = &c.cmd {
            cfg.insert("Cmd".into(), json!(cmd));
        }
        if let Some(ep) = &c.entrypoint {
            cfg.insert("Entrypoint".into(), json!(ep));
        }
        cfg.insert("WorkingDir".into(), json!(c.working_dir));
        if !c.user.is_empty() {
            cfg.insert("User".into(), json!(c.user));
        }
        if !c.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, Value> =
                c.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect();
            cfg.insert("ExposedPorts".into(), Value::Object(ports));
        }
        cfg.insert("Labels".into(), json!(c.labels));
        if let Some(s) = &c.stop_signal {
            cfg.insert("StopSignal".into(), json!(s));
        }
        let history: Vec<Value> = self
            .layers
            .iter()
            .map(|l| json!({"created": CREATED, "created_by": l.created_by, "comment": "shoal-testkit"}))
            .chain(self.config_summary_history())
            .collect();
        let v = json!({
            "architecture": "amd64",
            "os": "linux",
            "created": CREATED,
            "config": Value::Object(cfg),
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids()},
            "history": history,
        });
        serde_json::to_vec(&v).expect("serialize config")
    }

    fn config_summary_history(&self) -> Vec<Value> {
        let c = &self.config;
        let what = if let Some(ep) = &c.entrypoint {
            format!("ENTRYPOINT {}", serde_json::to_string(ep).unwrap())
        } else {
            format!("CMD {}", serde_json::to_string(c.cmd.as_deref().unwrap_or(&[])).unwrap())
        };
        vec![json!({"created": CREATED, "created_by": what, "empty_layer": true})]
    }

    /// `sha256:<hex>` of the layers' uncompressed tars, base first.
    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// The image ID Docker reports: `sha256:<hex of config_json>`.
    pub fn id(&self) -> String {
        format!("sha256:{}", crate::util::sha256_hex(&self.config_json()))
    }

    /// `docker save`-style archive tagged `<name>:latest` (cached).
    pub fn docker_archive(&self) -> PathBuf {
        let out = self.dir.join("docker-archive.tar");
        self.cached(&out, |tmp| write_docker_archive(self, &format!("{}:latest", self.name), tmp))
    }

    /// OCI image layout tarball for `<name>:latest` with the given layer compression (cached).
    pub fn oci_archive(&self, compression: Compression) -> PathBuf {
        let out = self.dir.join(format!("oci-{}.tar", compression.name()));
        self.cached(&out, |tmp| write_oci_layout(self, &format!("{}:latest", self.name), compression, tmp))
    }

    /// The merged rootfs as one tar (for `docker import`), cached.
    pub fn rootfs_tar(&self) -> PathBuf {
        let out = self.dir.join("rootfs.tar");
        self.cached(&out, |tmp| write_layer_tar(&self.rootfs, tmp))
    }

    fn cached(&self, out: &Path, f: impl FnOnce(&Path) -> std::io::Result<()>) -> PathBuf {
        if !out.exists() {
            let tmp = tmp_sibling(out);
            if let Err(e) = f(&tmp) {
                let _ = fs::remove_file(&tmp);
                panic!("writing {}: {e}", out.display());
            }
            fs::rename(&tmp, out).expect("rename archive");
        }
        out.to_path_buf()
    }
}

/// Builds (or loads) the merged image dir.
fn assemble(name: &str, key: &str, layers: Vec<Layer>, config: ImageConfig) -> TestImage {
    let dir = cache_root().join("images").join(key);
    let rootfs = dir.join("rootfs");
    if !rootfs.exists() {
        let t0 = std::time::Instant::now();
        fs::create_dir_all(dir.parent().unwrap()).expect("mkdir images");
        let tmp = tmp_sibling(&dir);
        fs::create_dir_all(tmp.join("rootfs")).expect("mkdir tmp");
        for l in &layers {
            // cp -a merges directories and keeps modes, owners and symlinks.
            run_ok(Command::new("cp").arg("-a").arg(format!("{}/.", l.rootfs.display())).arg(tmp.join("rootfs")));
        }
        if fs::rename(&tmp, &dir).is_err() {
            // Someone else won the race (or a stale dir without rootfs exists).
            let _ = fs::remove_dir_all(&tmp);
            if !rootfs.exists() {
                let _ = fs::remove_dir_all(&dir);
                panic!("could not install image dir {}", dir.display());
            }
        }
        eprintln!("shoal-testkit: assembled image {name} in {:?}", t0.elapsed());
    }
    TestImage { name: name.into(), dir, rootfs, layers, config }
}

/// Builds (or loads) a cached layer; `populate` fills an empty rootfs dir.
fn build_layer(key: &str, created_by: &str, populate: impl FnOnce(&Path)) -> Layer {
    let dir = cache_root().join("layers").join(key);
    let load = |dir: &Path| -> Option<Layer> {
        let diff_id = fs::read_to_string(dir.join("diff_id")).ok()?;
        let tar = dir.join("layer.tar");
        let size = fs::metadata(&tar).ok()?.len();
        Some(Layer { rootfs: dir.join("rootfs"), tar, diff_id: diff_id.trim().into(), size, created_by: created_by.into() })
    };
    if let Some(l) = load(&dir) {
        return l;
    }
    let t0 = std::time::Instant::now();
    fs::create_dir_all(dir.parent().unwrap()).expect("mkdir layers");
    let tmp = dir.with_file_name(format!(".tmp-{key}-{}-{}", std::process::id(), random_hex(4)));
    let root = tmp.join("rootfs");
    fs::create_dir_all(&root).expect("mkdir layer rootfs");
    set_mode(&root, 0o755);
    populate(&root);
    write_layer_tar(&root, &tmp.join("layer.tar")).expect("write layer tar");
    let hex = sha256_file(&tmp.join("layer.tar")).expect("hash layer");
    fs::write(tmp.join("diff_id"), format!("sha256:{hex}")).expect("write diff_id");
    if fs::rename(&tmp, &dir).is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    let l = load(&dir).unwrap_or_else(|| panic!("layer {} missing after build", dir.display()));
    eprintln!("shoal-testkit: built layer {key} ({} bytes) in {:?}", l.size, t0.elapsed());
    l
}

fn base_layer() -> &'static Layer {
    BASE.get_or_init(|| {
        ensure_packages(&["busybox-static"]);
        build_layer("busybox-base", "ADD busybox-static rootfs /", populate_busybox)
    })
}

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn mkdir(root: &Path, rel: &str, mode: u32) -> PathBuf {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    set_mode(&p, mode);
    p
}

fn write_file(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    set_mode(&p, mode);
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";
const GROUP: &str = "root:x:0:
daemon:x:1:
www-data:x:33:
app:x:1000:
nogroup:x:65534:
";

fn populate_busybox(root: &Path) {
    for d in ["bin", "dev", "etc", "home", "proc", "sys", "usr", "var", "var/www"] {
        mkdir(root, d, 0o755);
    }
    mkdir(root, "root", 0o700);
    mkdir(root, "tmp", 0o1777);
    mkdir(root, "var/tmp", 0o1777);
    let home = mkdir(root, "home/app", 0o755);
    chown(&home, 1000, 1000);
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy /bin/busybox");
    set_mode(&root.join("bin/busybox"), 0o755);
    let list = run_ok(Command::new("/bin/busybox").arg("--list"));
    for name in list.lines().map(str::trim).filter(|n| !n.is_empty() && *n != "busybox") {
        symlink("busybox", root.join("bin").join(name)).expect("applet symlink");
    }
    write_file(root, "etc/passwd", PASSWD.as_bytes(), 0o644);
    write_file(root, "etc/group", GROUP.as_bytes(), 0o644);
    write_file(root, "etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o640);
}

const NGINX_CONF: &str = "user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log /dev/stderr notice;

events {
    worker_connections 256;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /dev/stdout;
    sendfile on;
    keepalive_timeout 65;

    server {
        listen 80;
        server_name localhost;
        root /usr/share/nginx/html;
        index index.html index.htm;
    }
}
";

/// nginx, every shared library `ldd` names (at the path ldd shows), config and html.
fn populate_nginx(root: &Path) {
    let copy_to = |src: &Path, rel: &str, mode: u32| {
        let dst = root.join(rel.trim_start_matches('/'));
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(src, &dst).unwrap_or_else(|e| panic!("copy {} -> {}: {e}", src.display(), dst.display()));
        set_mode(&dst, mode);
    };
    copy_to(Path::new("/usr/sbin/nginx"), "usr/sbin/nginx", 0o755);
    for lib in ldd_paths(Path::new("/usr/sbin/nginx")) {
        copy_to(Path::new(&lib), &lib, 0o755);
    }
    for d in ["etc", "lib", "lib64", "usr", "usr/lib", "usr/sbin", "usr/share", "var", "var/log", "var/lib", "var/lock"] {
        if root.join(d).exists() {
            set_mode(&root.join(d), 0o755);
        }
    }
    mkdir(root, "etc/nginx/conf.d", 0o755);
    write_file(root, "etc/nginx/nginx.conf", NGINX_CONF.as_bytes(), 0o644);
    copy_to(Path::new("/etc/nginx/mime.types"), "etc/nginx/mime.types", 0o644);
    mkdir(root, "usr/share/nginx/html", 0o755);
    let html = fs::read("/usr/share/nginx/html/index.html").unwrap_or_else(|_| {
        b"<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n<body>\n<h1>Welcome to nginx!</h1>\n</body>\n</html>\n".to_vec()
    });
    write_file(root, "usr/share/nginx/html/index.html", &html, 0o644);
    mkdir(root, "var/log/nginx", 0o755);
    symlink("/dev/stdout", root.join("var/log/nginx/access.log")).unwrap();
    symlink("/dev/stderr", root.join("var/log/nginx/error.log")).unwrap();
    mkdir(root, "var/lib/nginx", 0o755);
    mkdir(root, "var/cache/nginx", 0o755);
    mkdir(root, "var/lock", 0o755);
    mkdir(root, "run", 0o755);
    set_mode(&root.join("var/cache"), 0o755);
}

/// Absolute paths of the shared libraries (and loader) `ldd` lists for `bin`.
fn ldd_paths(bin: &Path) -> Vec<String> {
    let out = run_ok(Command::new("ldd").arg(bin));
    let mut v = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') && !v.iter().any(|p| p == path) {
            v.push(path.to_string());
        }
    }
    assert!(v.iter().any(|p| p.contains("ld-linux")), "no dynamic loader in ldd output:\n{out}");
    v
}

/// Builds the `whoami` crate as a static binary into `target/static` and returns its path.
fn build_static_whoami() -> PathBuf {
    let ws = crate::util::workspace_root();
    let target_dir = ws.join("target").join("static");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let t0 = std::time::Instant::now();
    let out = Command::new(cargo)
        .current_dir(&ws)
        .args(["build", "-p", "whoami", "--release", "--target", "x86_64-unknown-linux-gnu"])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .expect("spawn cargo build -p whoami");
    assert!(
        out.status.success(),
        "cargo build -p whoami (static) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = target_dir.join("x86_64-unknown-linux-gnu/release/whoami");
    assert!(is_static_elf(&bin), "{} is not statically linked", bin.display());
    eprintln!("shoal-testkit: static whoami ready in {:?}", t0.elapsed());
    bin
}

/// True when the ELF file has no PT_INTERP program header (no dynamic loader needed).
pub(crate) fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = fs::read(path) else { return false };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16le = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
    let phentsize = u16le(54);
    let phnum = u16le(56);
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > b.len() {
            return false;
        }
        if u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) == 3 {
            return false; // PT_INTERP
        }
    }
    true
}

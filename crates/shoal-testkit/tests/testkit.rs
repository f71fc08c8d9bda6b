//! Tests of the testkit itself: images and archives, namespaces, lab, registry, daemon guard.

use serde_json::Value;
use shoal_testkit::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Reads a tar into name -> bytes (regular files only) plus the list of entry names.
fn read_tar(path: &Path) -> (BTreeMap<String, Vec<u8>>, Vec<String>) {
    let mut ar = tar::Archive::new(fs::File::open(path).unwrap());
    let mut files = BTreeMap::new();
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        names.push(name.clone());
        if e.header().entry_type().is_file() {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            files.insert(name, v);
        }
    }
    (files, names)
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap()
}

fn check_docker_archive(img: &TestImage, path: &Path) {
    let (files, _) = read_tar(path);
    let manifest = json(&files["manifest.json"]);
    let m = &manifest[0];
    assert_eq!(m["RepoTags"][0], format!("{}:latest", img.name));
    let config_name = m["Config"].as_str().unwrap();
    let config = &files[config_name];
    assert_eq!(format!("{}.json", sha256_hex(config)), config_name, "config file named by its digest");
    assert_eq!(format!("sha256:{}", sha256_hex(config)), img.id());
    let cfg = json(config);
    assert_eq!(cfg["architecture"], "amd64");
    assert_eq!(cfg["os"], "linux");
    assert_eq!(cfg["rootfs"]["type"], "layers");
    let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(diff_ids, img.diff_ids());
    let non_empty = cfg["history"].as_array().unwrap().iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(non_empty, diff_ids.len(), "history entries match layers");
    let layers = m["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    for (l, d) in layers.iter().zip(&diff_ids) {
        let l = l.as_str().unwrap();
        assert!(l.ends_with("/layer.tar"));
        assert_eq!(format!("sha256:{}", sha256_hex(&files[l])), *d);
        let dir = l.trim_end_matches("/layer.tar");
        assert_eq!(files[&format!("{dir}/VERSION")], b"1.0");
        assert_eq!(json(&files[&format!("{dir}/json")])["id"], dir);
    }
    let repos = json(&files["repositories"]);
    let top = layers.last().unwrap().as_str().unwrap().trim_end_matches("/layer.tar");
    assert_eq!(repos[&img.name]["latest"], top);
}

fn check_oci(img: &TestImage, path: &Path, c: Compression) -> Vec<String> {
    let (files, _) = read_tar(path);
    assert_eq!(json(&files["oci-layout"])["imageLayoutVersion"], "1.0.0");
    for (name, data) in &files {
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            assert_eq!(sha256_hex(data), hex, "blob {name} named by its digest");
        }
    }
    let blob = |d: &str| &files[&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))];
    let index = json(&files["index.json"]);
    let desc = &index["manifests"][0];
    assert_eq!(desc["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(desc["annotations"]["io.containerd.image.name"], format!("docker.io/library/{}:latest", img.name));
    assert_eq!(desc["annotations"]["org.opencontainers.image.ref.name"], "latest");
    let mbytes = blob(desc["digest"].as_str().unwrap());
    assert_eq!(desc["size"].as_u64().unwrap() as usize, mbytes.len());
    let manifest = json(mbytes);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    let cfg = json(blob(manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(format!("sha256:{}", sha256_hex(blob(manifest["config"]["digest"].as_str().unwrap()))), img.id());
    let mut digests = Vec::new();
    for (i, l) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(l["mediaType"], c.media_type());
        let data = blob(l["digest"].as_str().unwrap());
        assert_eq!(l["size"].as_u64().unwrap() as usize, data.len());
        let raw = match c {
            Compression::None => data.clone(),
            Compression::Gzip => {
                let mut v = Vec::new();
                flate2::read::GzDecoder::new(&data[..]).read_to_end(&mut v).unwrap();
                v
            }
            Compression::Zstd => zstd::stream::decode_all(&data[..]).unwrap(),
        };
        assert_eq!(format!("sha256:{}", sha256_hex(&raw)), cfg["rootfs"]["diff_ids"][i], "diff_id = sha256 of uncompressed tar");
        digests.push(l["digest"].as_str().unwrap().to_string());
    }
    digests
}

#[test]
fn images_and_archives() {
    let t0 = Instant::now();
    let [busybox, nginx, whoami] = TestImage::all();
    eprintln!("images ready in {:?}", t0.elapsed());
    assert_eq!(busybox.layers.len(), 1);
    assert_eq!(nginx.layers.len(), 2);
    assert_eq!(whoami.layers.len(), 2);
    assert_eq!(busybox.layers[0].diff_id, nginx.layers[0].diff_id, "shared base layer");
    assert_eq!(busybox.layers[0].diff_id, whoami.layers[0].diff_id, "shared base layer");

    // Rootfs content.
    let bb = &busybox.rootfs;
    assert!(bb.join("bin/busybox").is_file());
    assert_eq!(fs::read_link(bb.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert!(fs::read_to_string(bb.join("etc/passwd")).unwrap().contains("app:x:1000:1000"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(bb.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
    let ng = &nginx.rootfs;
    for p in ["usr/sbin/nginx", "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6", "etc/nginx/mime.types", "bin/busybox"] {
        assert!(ng.join(p).exists(), "nginx rootfs lacks {p}");
    }
    assert!(fs::read_to_string(ng.join("usr/share/nginx/html/index.html")).unwrap().contains("Welcome to nginx!"));
    assert!(whoami.rootfs.join("whoami").is_file());
    let file = Command::new("file").arg(whoami.rootfs.join("whoami")).output().unwrap();
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(file.contains("static"), "whoami not static: {file}");
    let nginx_cfg = json(&nginx.config_json());
    assert_eq!(nginx_cfg["config"]["StopSignal"], "SIGQUIT");
    assert_eq!(nginx_cfg["config"]["Cmd"], serde_json::json!(["nginx", "-g", "daemon off;"]));
    assert!(nginx_cfg["config"]["ExposedPorts"]["80/tcp"].is_object());
    assert_eq!(json(&whoami.config_json())["config"]["Entrypoint"], serde_json::json!(["/whoami"]));

    // Archives.
    let t1 = Instant::now();
    let mut base_digests = BTreeMap::new();
    for img in [busybox, nginx, whoami] {
        check_docker_archive(img, &img.docker_archive());
        for c in Compression::ALL {
            let digests = check_oci(img, &img.oci_archive(c), c);
            base_digests.entry(c).or_insert_with(Vec::new).push(digests[0].clone());
        }
    }
    for (c, d) in &base_digests {
        assert!(d.iter().all(|x| x == &d[0]), "{c:?}: base layer blob differs between images: {d:?}");
    }
    eprintln!("archives ready in {:?}", t1.elapsed());

    // Writers are deterministic and honour the given names.
    let tmp = TempDir::new();
    write_docker_archive(busybox, "localhost:5000/bb:v1", &tmp.0.join("a.tar")).unwrap();
    write_docker_archive(busybox, "localhost:5000/bb:v1", &tmp.0.join("b.tar")).unwrap();
    assert_eq!(fs::read(tmp.0.join("a.tar")).unwrap(), fs::read(tmp.0.join("b.tar")).unwrap());
    let (files, _) = read_tar(&tmp.0.join("a.tar"));
    assert_eq!(json(&files["manifest.json"])[0]["RepoTags"][0], "localhost:5000/bb:v1");
    assert!(json(&files["repositories"])["localhost:5000/bb"]["v1"].is_string());
    write_oci_layout(nginx, "example.com/web:2", Compression::Gzip, &tmp.0.join("o.tar")).unwrap();
    let (files, _) = read_tar(&tmp.0.join("o.tar"));
    let idx = json(&files["index.json"]);
    assert_eq!(idx["manifests"][0]["annotations"]["io.containerd.image.name"], "example.com/web:2");
    assert_eq!(idx["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "2");
    let (_, names) = read_tar(&busybox.rootfs_tar());
    assert!(names.iter().any(|n| n == "bin/busybox"));
}

/// Runs the nginx image's rootfs (chroot, private mount + pid namespaces) in a netns and GETs it.
#[test]
fn nginx_rootfs_serves_in_netns() {
    let nginx = TestImage::nginx();
    let ns = Netns::new("tk-nginx");
    let root = nginx.rootfs.display().to_string();
    // Mounts happen in a private mount namespace and vanish with it; --kill-child plus the pid
    // namespace take nginx's master and workers down when we kill unshare.
    let script = format!(
        "mount --make-rprivate / && mount --rbind /dev {root}/dev && mount -t proc proc {root}/proc && exec chroot {root} nginx -g 'daemon off;'"
    );
    let mut child = ns
        .command("unshare")
        .args(["--mount", "--pid", "--fork", "--kill-child", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = ChildGuard(&mut child as *mut _);
    let mut body = String::new();
    let ok = wait_until(Duration::from_secs(10), || match http_get(&ns, "http://127.0.0.1:80/") {
        Ok(b) => {
            body = b;
            true
        }
        Err(_) => false,
    });
    assert!(ok, "nginx did not answer");
    assert!(body.contains("Welcome to nginx!"), "{body}");
}

/// Kills (by pid) and reaps a child on drop.
struct ChildGuard(*mut std::process::Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SAFETY: the pointer targets a Child on the test's stack that outlives the guard.
        let c = unsafe { &mut *self.0 };
        let _ = c.kill();
        let _ = c.wait();
    }
}

struct TempDir(PathBuf);
impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("shoal-testkit-{}", random_hex(4)));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn whoami_bin() -> PathBuf {
    TestImage::whoami().rootfs.join("whoami")
}

#[test]
fn whoami_in_netns() {
    let ns = Netns::new("tk-who");
    let path = ns.path().to_path_buf();
    assert!(path.exists());
    {
        let mut child = ns.command(whoami_bin()).args(["--port", "8080"]).stdout(Stdio::null()).spawn().unwrap();
        let _g = ChildGuard(&mut child as *mut _);
        assert!(wait_until(Duration::from_secs(10), || http_get(&ns, "http://127.0.0.1:8080/").is_ok()));
        let body = http_get(&ns, "http://127.0.0.1:8080/hello").unwrap();
        assert!(body.contains("Hostname: "), "{body}");
        assert!(body.contains("IP: 127.0.0.1\n"), "{body}");
        assert!(body.contains("RemoteAddr: 127.0.0.1:"), "{body}");
        assert!(body.contains("GET /hello HTTP/1.1\nHost: 127.0.0.1:8080\n"), "{body}");
        // The root namespace does not see it.
        assert!(std::net::TcpStream::connect("127.0.0.1:8080").is_err());
    }
    drop(ns);
    assert!(!path.exists(), "netns not removed");
}

#[test]
fn lab_nodes_reach_each_other() {
    let lab = Lab::new("tk-lab", 3);
    let names: Vec<PathBuf> = lab.nodes().iter().map(|n| n.path().to_path_buf()).chain([lab.hub().path().to_path_buf()]).collect();
    let mut child = lab.node(2).command(whoami_bin()).args(["--port", "8081"]).stdout(Stdio::null()).spawn().unwrap();
    let _g = ChildGuard(&mut child as *mut _);
    let url = format!("http://{}:8081/", lab.addr(2));
    assert!(wait_until(Duration::from_secs(10), || http_get(lab.node(0), &url).is_ok()), "node0 cannot reach node2");
    let body = http_get(lab.node(1), &url).unwrap();
    assert!(body.contains(&format!("IP: {}\n", lab.addr(2))), "{body}");
    assert!(body.contains(&format!("RemoteAddr: {}:", lab.addr(1))), "{body}");
    drop(_g);
    drop(lab);
    for p in names {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

#[test]
fn registry_push_and_inspect() {
    let ns = Netns::new("tk-reg");
    let reg = Registry::start(&ns);
    let dir = reg.dir().to_path_buf();
    let bb = TestImage::busybox();
    reg.push_archive(&bb.docker_archive(), "testkit/busybox:latest");
    let info = reg.inspect("testkit/busybox:latest");
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Layers"].as_array().unwrap().len(), 1);
    let nginx = TestImage::nginx();
    reg.push_oci_archive(&nginx.oci_archive(Compression::Zstd), "testkit/nginx:1");
    let cfg = reg.skopeo(&["inspect", "--config", "--tls-verify=false", "docker://127.0.0.1:5000/testkit/nginx:1"]);
    assert!(cfg.status.success(), "{}", String::from_utf8_lossy(&cfg.stderr));
    let cfg = json(&cfg.stdout);
    assert_eq!(cfg["rootfs"]["diff_ids"], serde_json::json!(nginx.diff_ids()));
    drop(reg);
    assert!(!dir.exists());
}

const FAKE_DAEMON: &str = r#"
import http.server, os, socketserver, subprocess, sys, hashlib
args = sys.argv[1:]
sock = args[args.index('-H') + 1][len('unix://'):]
data = args[args.index('--data-root') + 1]
xr = args[args.index('--exec-root') + 1]
cg = 'shoal-' + hashlib.sha256(data.encode()).hexdigest()[:8]
os.makedirs(xr + '/mnt', exist_ok=True)
if not os.path.ismount(xr + '/mnt'):
    subprocess.check_call(['mount', '-t', 'tmpfs', 'tmpfs', xr + '/mnt'])
    os.makedirs(xr + '/mnt/inner', exist_ok=True)
    subprocess.check_call(['mount', '-t', 'tmpfs', 'tmpfs', xr + '/mnt/inner'])
if not os.path.exists(xr + '/shim.pid'):
    # A "shim" naming the exec-root (child of the daemon) and a detached "container"
    # (reparented to init) that only its cgroup identifies.
    shim = subprocess.Popen(['/usr/bin/python3', '-c', 'import time; time.sleep(1002)', xr + '/shim'], start_new_session=True)
    open(xr + '/shim.pid', 'w').write(str(shim.pid))
    out = subprocess.check_output(['sh', '-c', 'sleep 1001 >/dev/null 2>&1 & echo $!'])
    pid = out.decode().strip()
    for ctl in ['pids', 'memory', 'unified']:
        d = '/sys/fs/cgroup/%s/%s/c1' % (ctl, cg)
        os.makedirs(d, exist_ok=True)
        open(d + '/cgroup.procs', 'w').write(pid)
    open(xr + '/ctr.pid', 'w').write(pid)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def reply(self, body):
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Api-Version', '1.45')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)
    def do_HEAD(self): self.reply(b'OK')
    def do_GET(self):
        self.reply(b'OK' if self.path.endswith('/_ping') else b'[]')
    def do_DELETE(self): self.reply(b'')
    def address_string(self): return 'unix'
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
if os.path.exists(sock):
    os.unlink(sock)
print('fake daemon up', flush=True)
S(sock, H).serve_forever()
"#;

fn alive(pid: i32) -> bool {
    // Zombies count as dead.
    fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

#[test]
fn daemon_guard_cleans_up_everything() {
    let tmp = TempDir::new();
    let exe = tmp.0.join("fake-shoal");
    fs::write(&exe, format!("#!/usr/bin/python3\n{FAKE_DAEMON}")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let ns = Netns::new("tk-d");
    let nspath = ns.path().to_path_buf();
    let mut d = Daemon::start(DaemonOpts::new(&exe, &ns).env("PYTHONDONTWRITEBYTECODE", "1"));
    drop(ns); // the daemon keeps the namespace alive
    assert!(nspath.exists());
    let dir = d.dir().to_path_buf();
    assert!(d.ping());
    assert_eq!(d.docker_ok(["ps", "-aq"]).trim(), "");
    let read_pid = |f: &str| fs::read_to_string(d.exec_root().join(f)).unwrap().trim().parse::<i32>().unwrap();
    let shim = read_pid("shim.pid");
    let ctr = read_pid("ctr.pid");
    assert!(alive(shim) && alive(ctr));
    // Daemon processes live in the namespace.
    let pid = d.pid().unwrap();
    assert_eq!(fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(), fs::read_link(&nspath).unwrap_or_else(|_| {
        // /run/netns/X is a bind mount, not a link: compare inodes instead.
        use std::os::unix::fs::MetadataExt;
        PathBuf::from(format!("net:[{}]", fs::metadata(&nspath).unwrap().ino()))
    }));
    // kill -9 leaves shim and container running; restart reuses the dirs.
    d.kill9();
    assert!(d.pid().is_none());
    assert!(alive(shim) && alive(ctr));
    d.restart();
    assert!(d.ping());
    assert!(d.log_tail().contains("fake daemon up"));
    let cg = d.cgroup_name();
    assert!(Path::new(&format!("/sys/fs/cgroup/pids/{cg}/c1")).exists());
    drop(d);
    assert!(wait_until(Duration::from_secs(5), || !alive(shim) && !alive(ctr)), "leftover processes");
    for ctl in ["pids", "memory", "unified"] {
        assert!(!Path::new(&format!("/sys/fs/cgroup/{ctl}/{cg}")).exists(), "cgroup {ctl}/{cg} left");
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.to_str().unwrap()), "mounts left");
    assert!(!dir.exists(), "dir left");
    assert!(!nspath.exists(), "netns left");
}

#[test]
fn daemon_start_failure_cleans_up() {
    let ns = Netns::new("tk-fail");
    let r = std::panic::catch_unwind(|| Daemon::start(DaemonOpts::new("/bin/false", &ns)));
    let err = r.err().expect("start must fail");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("exited during startup"), "{msg}");
}

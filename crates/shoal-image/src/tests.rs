//! Store-level tests: formats, hostile tarballs, crash safety, references, rmi, pulls.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::testutil::{compress, docker_archive, layer, oci_archive, Comp, TestImage, E};
use crate::{ErrorKind, ImageStore, ImportOptions, PullProgress};

struct Tmp(PathBuf);
impl Tmp {
    fn new() -> Tmp {
        let p = std::env::temp_dir().join(format!("shoal-image-test-{}", crate::fsutil::rand_hex(12)));
        fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn store() -> (Tmp, ImageStore) {
    let t = Tmp::new();
    let s = ImageStore::open(&t.0.join("image")).unwrap();
    (t, s)
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Nothing left behind: no images, layers, layer dirs, blobs, temp dirs, refs.
fn assert_empty(t: &Tmp, s: &ImageStore) {
    let root = t.0.join("image");
    assert!(s.list().is_empty());
    for d in ["images", "layers", "l", "tmp", "blobs/sha256"] {
        assert_eq!(count(&root.join(d)), 0, "{d} should be empty");
    }
}

fn base_layer() -> Vec<u8> {
    layer(&[E::Dir("bin"), E::FileMode("bin/sh", b"#!shell", 0o755, 0, 0), E::File("etc/os-release", b"shoal")])
}

#[test]
fn load_docker_archive_all_compressions_and_share_layers() {
    for comp in [Comp::Plain, Comp::Gzip, Comp::Zstd] {
        let (t, s) = store();
        let base = base_layer();
        let a = TestImage::new(vec![base.clone(), layer(&[E::File("a.txt", b"a")])], &["/bin/sh"]);
        let b = TestImage::new(vec![base.clone(), layer(&[E::File("b.txt", b"bb")])], &["/bin/b"]);
        let loaded = s.load(&docker_archive(&[(&a, vec!["busybox:latest"]), (&b, vec!["myorg/app:1"])], comp)[..]).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0].tags, vec!["busybox:latest"]);
        assert_eq!(loaded[0].id, a.id());
        // The base layer is stored once.
        assert_eq!(count(&t.0.join("image/l")), 3);
        let rec = s.get("busybox").unwrap();
        assert_eq!(rec.id, a.id());
        assert_eq!(rec.config.cmd, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(rec.config.working_dir, "/w");
        assert!(rec.config.exposed_ports.contains_key("80/tcp"));
        assert_eq!(rec.layers.len(), 2);
        assert_eq!(rec.size, 7 + 5 + 1);
        let paths = s.layer_paths(&a.id()).unwrap();
        assert!(paths[0].join("a.txt").exists(), "top-most first");
        assert!(paths[1].join("bin/sh").exists());
        assert_eq!(fs::metadata(paths[1].join("bin/sh")).unwrap().mode() & 0o7777, 0o755);
        assert!(paths[0].to_string_lossy().len() < t.0.to_string_lossy().len() + 30);
        assert_eq!(s.get("myorg/app:1").unwrap().repo_tags, vec!["myorg/app:1"]);
        // Removing one image keeps the shared base layer.
        let items = s.remove("myorg/app:1", false, &|_| false).unwrap();
        assert_eq!(items[0].untagged.as_deref(), Some("myorg/app:1"));
        assert_eq!(items[1].deleted.as_deref(), Some(b.id().as_str()));
        assert_eq!(items.len(), 3, "untag, image, top layer: {items:?}");
        assert!(paths[1].join("bin/sh").exists());
        s.remove("busybox", false, &|_| false).unwrap();
        assert_empty(&t, &s);
    }
}

#[test]
fn load_oci_layouts() {
    for (comp, multi) in [(Comp::Gzip, false), (Comp::Zstd, true), (Comp::Plain, true)] {
        let (t, s) = store();
        let img = TestImage::new(vec![base_layer()], &["sh"]);
        let ann = json!({"io.containerd.image.name": "127.0.0.1:5000/x/y:v1", "org.opencontainers.image.ref.name": "v1"});
        let loaded = s.load(&oci_archive(&img, comp, ann, multi, false)[..]).unwrap();
        assert_eq!(loaded[0].tags, vec!["127.0.0.1:5000/x/y:v1"]);
        assert_eq!(s.get("127.0.0.1:5000/x/y:v1").unwrap().id, img.id());
        drop(t);
    }
    // Only a tag in ref.name: loaded untagged.
    let (_t, s) = store();
    let img = TestImage::new(vec![base_layer()], &["sh"]);
    let loaded = s.load(&oci_archive(&img, Comp::Gzip, json!({"org.opencontainers.image.ref.name": "latest"}), false, false)[..]).unwrap();
    assert!(loaded[0].tags.is_empty());
    assert_eq!(loaded[0].id, img.id());
    // Docker 25+ save: both manifest.json and index.json, blobs/ paths.
    let (_t2, s2) = store();
    let ann = json!({"io.containerd.image.name": "docker.io/library/busybox:latest"});
    let loaded = s2.load(&oci_archive(&img, Comp::Plain, ann, false, true)[..]).unwrap();
    assert_eq!(loaded[0].tags, vec!["busybox:latest"]);
}

fn load_err(entries: &[E]) -> (Tmp, ImageStore, crate::ImageError) {
    let (t, s) = store();
    let img = TestImage::new(vec![layer(entries)], &["sh"]);
    let e = s.load(&docker_archive(&[(&img, vec!["evil:1"])], Comp::Gzip)[..]).unwrap_err();
    (t, s, e)
}

#[test]
fn hostile_parent_dir_rejected() {
    let (t, s, e) = load_err(&[E::File("../../escaped", b"x")]);
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("unsafe path"), "{e}");
    assert!(!t.0.join("escaped").exists() && !t.0.join("image/escaped").exists());
    assert_empty(&t, &s);
}

#[test]
fn hostile_symlink_then_write_through_it_rejected() {
    let outside = Tmp::new();
    let target = outside.0.to_string_lossy().into_owned();
    let (t, s, e) = load_err(&[E::Symlink("evil", &target), E::File("evil/pwned", b"x")]);
    assert!(e.to_string().contains("symlink"), "{e}");
    assert_eq!(count(&outside.0), 0);
    assert_empty(&t, &s);
    let (t, s, _e) = load_err(&[E::Symlink("up", "../../../../.."), E::File("up/tmp/pwned2", b"x")]);
    assert!(!Path::new("/tmp/pwned2").exists());
    assert_empty(&t, &s);
}

#[test]
fn hostile_hardlinks_rejected() {
    let (t, s, e) = load_err(&[E::Hardlink("h", "../../../../etc/passwd")]);
    assert!(e.to_string().contains("unsafe path"), "{e}");
    assert_empty(&t, &s);
    // Absolute targets are re-rooted into the layer, where /etc/passwd does not exist.
    let (t, s, e) = load_err(&[E::Hardlink("h", "/etc/passwd")]);
    assert!(e.to_string().contains("missing"), "{e}");
    assert_empty(&t, &s);
    // Through a symlinked directory.
    let (t, s, _e) = load_err(&[E::Symlink("s", "/etc"), E::Hardlink("h", "s/passwd")]);
    assert_empty(&t, &s);
}

#[test]
fn absolute_paths_whiteouts_devices_and_ownership() {
    let (_t, s) = store();
    let l = layer(&[
        E::File("/abs/file", b"abs"),
        E::Dir("d"),
        E::File("d/keep", b"k"),
        E::File("d/.wh..wh..opq", b""),
        E::File(".wh.gone", b""),
        E::FileMode("suid", b"s", 0o4755, 1000, 1001),
        E::Fifo("pipe"),
        E::Char("null", 1, 3),
        E::Symlink("link", "/etc/shadow"),
        E::Hardlink("hard", "/abs/file"),
    ]);
    let img = TestImage::new(vec![l], &["sh"]);
    s.load(&docker_archive(&[(&img, vec!["ok"])], Comp::Zstd)[..]).unwrap();
    let dir = &s.layer_paths("ok").unwrap()[0];
    assert_eq!(fs::read(dir.join("abs/file")).unwrap(), b"abs");
    let wh = fs::symlink_metadata(dir.join("gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(!dir.join(".wh.gone").exists() && !dir.join("d/.wh..wh..opq").exists());
    let mut buf = [0u8; 4];
    let c = std::ffi::CString::new(dir.join("d").to_string_lossy().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(n, 1);
    assert_eq!(buf[0], b'y');
    let m = fs::symlink_metadata(dir.join("suid")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()), (0o4755, 1000, 1001, 1_700_000_000));
    assert!(fs::symlink_metadata(dir.join("pipe")).unwrap().file_type().is_fifo());
    let n = fs::symlink_metadata(dir.join("null")).unwrap();
    assert!(n.file_type().is_char_device() && n.rdev() == libc::makedev(1, 3));
    assert_eq!(fs::read_link(dir.join("link")).unwrap(), Path::new("/etc/shadow"));
    assert_eq!(fs::metadata(dir.join("hard")).unwrap().ino(), fs::metadata(dir.join("abs/file")).unwrap().ino());
}

#[test]
fn truncated_and_corrupt_archives_leave_nothing() {
    let img = TestImage::new(vec![base_layer(), layer(&[E::File("big", &[7u8; 100_000])])], &["sh"]);
    for comp in [Comp::Plain, Comp::Gzip, Comp::Zstd] {
        let full = docker_archive(&[(&img, vec!["t:1"])], comp);
        for cut in [full.len() / 3, full.len() / 2, full.len() - 1500] {
            let (t, s) = store();
            assert!(s.load(&full[..cut]).is_err(), "cut at {cut} of {}", full.len());
            assert_empty(&t, &s);
        }
    }
    // A flipped byte inside the gzip layer.
    let l = compress(&base_layer(), Comp::Gzip);
    let mut bad = l.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let mut b = tar::Builder::new(Vec::new());
    let cfg = &img.config;
    let mut put = |p: &str, d: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(d.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, p, d).unwrap();
    };
    put("c.json", cfg);
    put("1/layer.tar", &bad);
    put("2/layer.tar", &img.layers[1]);
    put("manifest.json", br#"[{"Config":"c.json","RepoTags":["t:1"],"Layers":["1/layer.tar","2/layer.tar"]}]"#);
    let (t, s) = store();
    assert!(s.load(&b.into_inner().unwrap()[..]).is_err());
    assert_empty(&t, &s);
    // Garbage.
    let (t, s) = store();
    assert!(s.load(&b"definitely not a tarball"[..]).is_err());
    assert_empty(&t, &s);
}

#[test]
fn digest_mismatch_rejected() {
    let (t, s) = store();
    let mut img = TestImage::new(vec![base_layer(), layer(&[E::File("x", b"1")])], &["sh"]);
    // Second layer content differs from the diff id in the config.
    img.layers[1] = layer(&[E::File("x", b"2")]);
    let e = s.load(&docker_archive(&[(&img, vec!["m:1"])], Comp::Gzip)[..]).unwrap_err();
    assert!(matches!(e, crate::ImageError::DigestMismatch { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_empty(&t, &s);
}

#[test]
fn references_tags_and_rmi_semantics() {
    let (t, s) = store();
    let img = TestImage::new(vec![base_layer()], &["sh"]);
    let id = img.id();
    s.load(&docker_archive(&[(&img, vec!["busybox:latest"])], Comp::Plain)[..]).unwrap();
    for r in ["busybox", "busybox:latest", "docker.io/library/busybox", &id, &id[7..], &id[7..10], &format!("sha256:{}", &id[7..12])] {
        assert_eq!(s.get(r).unwrap().id, id, "{r}");
    }
    assert_eq!(s.get("nope").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.get("Busybox").unwrap_err().to_string(), "invalid reference format: repository name (library/Busybox) must be lowercase");
    assert_eq!(s.tag("busybox", "Bad:1").unwrap_err().kind(), ErrorKind::InvalidInput);
    s.tag("busybox", "127.0.0.1:5000/busybox").unwrap();
    s.tag(&id[7..15], "myorg/app:1").unwrap();
    let rec = s.get("myorg/app:1").unwrap();
    assert_eq!(rec.repo_tags, vec!["127.0.0.1:5000/busybox:latest", "busybox:latest", "myorg/app:1"]);
    // Delete by id with several repositories needs force.
    let e = s.remove(&id[7..19], false, &|_| false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains(&format!("unable to delete {} (must be forced) - image is referenced in multiple repositories", &id[7..19])), "{e}");
    // Removing a tag only untags.
    let items = s.remove("myorg/app:1", false, &|_| true).unwrap();
    assert_eq!(items, vec![crate::DeleteItem { untagged: Some("myorg/app:1".into()), deleted: None }]);
    s.remove("127.0.0.1:5000/busybox", false, &|_| false).unwrap();
    // Last reference while in use: conflict.
    let e = s.remove("busybox", false, &|i| i == id).unwrap_err();
    assert!(e.to_string().starts_with("conflict: unable to remove repository reference \"busybox\" (must force)"), "{e}");
    // History and persistence across reopen.
    let h = s.history("busybox").unwrap();
    assert_eq!(h[0].id, id);
    assert_eq!(h[0].tags, vec!["busybox:latest"]);
    assert_eq!(h[0].created_by, "step 0");
    let s2 = ImageStore::open(&t.0.join("image")).unwrap();
    assert_eq!(s2.get("busybox").unwrap().id, id);
    // Forced removal while in use: untagged but kept.
    let items = s2.remove("busybox", true, &|_| true).unwrap();
    assert!(items.iter().all(|i| i.deleted.is_none()));
    assert_eq!(s2.get(&id).unwrap().repo_tags.len(), 0);
    let items = s2.remove(&id, false, &|_| false).unwrap();
    assert_eq!(items[0].deleted.as_deref(), Some(id.as_str()));
    assert_empty(&t, &s2);
}

#[test]
fn import_with_changes() {
    let (_t, s) = store();
    let tarball = compress(&base_layer(), Comp::Gzip);
    let opts = ImportOptions {
        reference: Some("imported:v1".into()),
        message: Some("hello".into()),
        changes: vec![
            "CMD [\"/bin/sh\", \"-c\", \"echo hi\"]".into(),
            "ENV A=1 B=\"two words\"".into(),
            "WORKDIR /srv".into(),
            "ENTRYPOINT /bin/sh".into(),
            "EXPOSE 80 53/udp".into(),
            "LABEL k=v".into(),
            "USER nobody".into(),
        ],
        ..Default::default()
    };
    let rec = s.import(&tarball[..], opts).unwrap();
    assert_eq!(rec.repo_tags, vec!["imported:v1"]);
    assert_eq!(rec.config.cmd.as_deref(), Some(&["/bin/sh".to_string(), "-c".into(), "echo hi".into()][..]));
    assert_eq!(rec.config.entrypoint.as_deref(), Some(&["/bin/sh".to_string(), "-c".into(), "/bin/sh".into()][..]));
    assert_eq!(rec.config.env, vec!["A=1", "B=two words"]);
    assert_eq!(rec.config.working_dir, "/srv");
    assert_eq!(rec.config.user, "nobody");
    assert_eq!(rec.config.labels.get("k").map(String::as_str), Some("v"));
    assert!(rec.config.exposed_ports.contains_key("53/udp") && rec.config.exposed_ports.contains_key("80/tcp"));
    assert_eq!((rec.os.as_str(), rec.architecture.as_str(), rec.comment.as_str()), ("linux", "amd64", "hello"));
    assert_eq!(rec.layers, vec![crate::testutil::digest(&base_layer())]);
    assert!(s.layer_paths("imported:v1").unwrap()[0].join("bin/sh").exists());
    assert_eq!(s.history("imported:v1").unwrap()[0].comment, "hello");
    let e = s.import(&tarball[..], ImportOptions { changes: vec!["RUN rm -rf /".into()], ..Default::default() }).unwrap_err();
    assert_eq!(e.to_string(), "RUN is not a valid change command");
    assert!(s.import(&b""[..], ImportOptions::default()).is_err());
}

#[test]
fn open_cleans_interrupted_loads() {
    let (t, s) = store();
    let img = TestImage::new(vec![base_layer()], &["sh"]);
    s.load(&docker_archive(&[(&img, vec!["keep:1"])], Comp::Plain)[..]).unwrap();
    drop(s);
    let root = t.0.join("image");
    // Simulate kill -9 at various points: temp dirs, an orphan layer dir + record, an orphan blob,
    // a half-written metadata temp file.
    fs::create_dir_all(root.join("tmp/load-dead/f")).unwrap();
    fs::create_dir_all(root.join("l/0123456789ab/bin")).unwrap();
    let orphan = format!("sha256:{}", "ab".repeat(32));
    fs::write(
        root.join(format!("layers/{}.json", &orphan[7..])),
        serde_json::to_vec(&json!({"chain_id": orphan, "diff_id": orphan, "parent": null, "size": 0, "dir": "0123456789ab"})).unwrap(),
    )
    .unwrap();
    fs::write(root.join(format!("blobs/sha256/{}", "cd".repeat(32))), b"{}").unwrap();
    fs::write(root.join(".repositories.json.tmp-dead"), b"{").unwrap();
    let s = ImageStore::open(&root).unwrap();
    assert_eq!(count(&root.join("tmp")), 0);
    assert_eq!(count(&root.join("l")), 1);
    assert_eq!(count(&root.join("layers")), 1);
    assert_eq!(count(&root.join("blobs/sha256")), 1);
    assert!(!root.join(".repositories.json.tmp-dead").exists());
    assert_eq!(s.get("keep:1").unwrap().id, img.id());
}

#[test]
fn concurrent_loads_of_shared_layers() {
    let (t, s) = store();
    let base = base_layer();
    let archives: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            let img = TestImage::new(vec![base.clone(), layer(&[E::File("n", format!("{i}").as_bytes())])], &["sh"]);
            docker_archive(&[(&img, vec![format!("c:{i}").as_str()])], Comp::Gzip)
        })
        .collect();
    std::thread::scope(|sc| {
        for a in &archives {
            let s = s.clone();
            sc.spawn(move || s.load(&a[..]).unwrap());
        }
    });
    assert_eq!(s.list().len(), 4);
    assert_eq!(count(&t.0.join("image/l")), 5);
    assert_eq!(count(&t.0.join("image/tmp")), 0);
}

#[test]
fn store_and_pull_future_are_send_sync() {
    fn send_sync<T: Send + Sync + Clone>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<ImageStore>();
    let (_t, s) = store();
    let mut cb = |_p: PullProgress| {};
    let fut = s.pull("busybox", &mut cb);
    send(&fut);
}

#[test]
fn old_style_symlinked_layers_and_tags_reported_from_archive() {
    let (_t, s) = store();
    let base = base_layer();
    let img = TestImage::new(vec![base.clone(), base.clone()], &["sh"]);
    let mut b = tar::Builder::new(Vec::new());
    let put = |b: &mut tar::Builder<Vec<u8>>, p: &str, d: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(d.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, p, d).unwrap();
    };
    put(&mut b, "c.json", &img.config);
    put(&mut b, "aaa/layer.tar", &base);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "bbb/layer.tar", "../aaa/layer.tar").unwrap();
    put(&mut b, "manifest.json", br#"[{"Config":"c.json","RepoTags":null,"Layers":["aaa/layer.tar","bbb/layer.tar"]}]"#);
    let loaded = s.load(&b.into_inner().unwrap()[..]).unwrap();
    assert_eq!(loaded, vec![crate::LoadedImage { id: img.id(), tags: vec![] }]);
    assert_eq!(s.layer_paths(&img.id()).unwrap().len(), 2);
    // Escaping archive symlinks are refused.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "manifest.json", "../../../etc/passwd").unwrap();
    assert!(s.load(&b.into_inner().unwrap()[..]).is_err());
}

// ---- registry pull against a real docker-registry, pushed with skopeo ----

struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: Tmp,
}
impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry() -> Option<Registry> {
    if !Path::new("/usr/bin/docker-registry").exists() || which("skopeo").is_none() {
        println!("SKIP: docker-registry and/or skopeo not installed (apt-get install -y docker-registry skopeo)");
        return None;
    }
    let dir = Tmp::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = dir.0.join("config.yml");
    fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.0.join("data").display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let reg = Registry { child, port, _dir: dir };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(reg);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("registry did not start");
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(bin)).find(|p| p.exists())
}

fn skopeo_push(src: &str, dest: &str) {
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--insecure-policy", "--dest-tls-verify=false", src, dest])
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_local_registry() {
    let Some(reg) = start_registry() else { return };
    let work = Tmp::new();
    let base = base_layer();
    let img = TestImage::new(vec![base.clone(), layer(&[E::File("top", b"t")])], &["/bin/sh"]);
    let arch = work.0.join("img.tar");
    fs::write(&arch, docker_archive(&[(&img, vec!["x:1"])], Comp::Plain)).unwrap();
    skopeo_push(&format!("docker-archive:{}", arch.display()), &format!("docker://127.0.0.1:{}/test/busybox:latest", reg.port));
    // A multi-arch OCI index pushed as an oci-archive.
    let img2 = TestImage::new(vec![base.clone(), layer(&[E::File("two", b"2")])], &["two"]);
    let oci = work.0.join("oci.tar");
    fs::write(&oci, oci_archive(&img2, Comp::Zstd, json!({"org.opencontainers.image.ref.name": "v2"}), true, false)).unwrap();
    skopeo_push(&format!("oci-archive:{}", oci.display()), &format!("docker://127.0.0.1:{}/test/multi:v2", reg.port));

    let (t, s) = store();
    let mut events = Vec::new();
    let reference = format!("127.0.0.1:{}/test/busybox", reg.port);
    let rec = s.pull(&reference, &mut |p| events.push(p)).await.unwrap();
    assert_eq!(rec.id, img.id());
    assert_eq!(rec.repo_tags, vec![format!("{reference}:latest")]);
    assert_eq!(rec.repo_digests.len(), 1);
    assert!(rec.repo_digests[0].starts_with(&format!("{reference}@sha256:")));
    assert_eq!(rec.config.cmd, Some(vec!["/bin/sh".to_string()]));
    assert!(matches!(events[0], PullProgress::Resolving));
    assert_eq!(events.iter().filter(|e| matches!(e, PullProgress::LayerDone { .. })).count(), 2);
    assert!(matches!(events.last(), Some(PullProgress::Done)));
    assert!(s.layer_paths(&rec.id).unwrap()[0].join("top").exists());
    // Pull by digest works and re-uses everything.
    let mut events = Vec::new();
    let by_digest = rec.repo_digests[0].clone();
    assert_eq!(s.pull(&by_digest, &mut |p| events.push(p)).await.unwrap().id, img.id());
    assert_eq!(events.iter().filter(|e| matches!(e, PullProgress::LayerExists { .. })).count(), 2);
    // Multi-arch: picks amd64, shares the base layer.
    let mut events = Vec::new();
    let rec2 = s.pull(&format!("127.0.0.1:{}/test/multi:v2", reg.port), &mut |p| events.push(p)).await.unwrap();
    assert_eq!(rec2.id, img2.id());
    assert_eq!(events.iter().filter(|e| matches!(e, PullProgress::LayerExists { .. })).count(), 1);
    assert_eq!(count(&t.0.join("image/l")), 3);
    // Unknown tag: not found, nothing left behind.
    let e = s.pull(&format!("127.0.0.1:{}/test/busybox:nope", reg.port), &mut |_| {}).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(count(&t.0.join("image/tmp")), 0);
}

//! In-test image builders: layer tars (including hostile ones), docker-archive and OCI layouts.

use std::io::Write;

use serde_json::json;

use crate::unpack::sha256_hex;

#[derive(Clone, Copy, Debug)]
pub enum Comp {
    Plain,
    Gzip,
    Zstd,
}

pub enum E<'a> {
    File(&'a str, &'a [u8]),
    FileMode(&'a str, &'a [u8], u32, u64, u64),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
    Char(&'a str, u32, u32),
}

fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32, uid: u64, gid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(1_700_000_000);
    // Raw name bytes: tar's set_path refuses `..`, and hostile tests need it.
    let gnu = h.as_gnu_mut().expect("gnu header");
    let b = path.as_bytes();
    gnu.name[..b.len()].copy_from_slice(b);
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let gnu = h.as_gnu_mut().expect("gnu header");
    let b = target.as_bytes();
    gnu.linkname[..b.len()].copy_from_slice(b);
}

pub fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (mut h, data): (tar::Header, &[u8]) = match e {
            E::File(p, d) => (header(p, tar::EntryType::Regular, d.len() as u64, 0o644, 0, 0), d),
            E::FileMode(p, d, m, u, g) => (header(p, tar::EntryType::Regular, d.len() as u64, *m, *u, *g), d),
            E::Dir(p) => (header(p, tar::EntryType::Directory, 0, 0o755, 0, 0), &[]),
            E::Symlink(p, t) => {
                let mut h = header(p, tar::EntryType::Symlink, 0, 0o777, 0, 0);
                set_link(&mut h, t);
                (h, &[])
            }
            E::Hardlink(p, t) => {
                let mut h = header(p, tar::EntryType::Link, 0, 0o644, 0, 0);
                set_link(&mut h, t);
                (h, &[])
            }
            E::Fifo(p) => (header(p, tar::EntryType::Fifo, 0, 0o600, 0, 0), &[]),
            E::Char(p, ma, mi) => {
                let mut h = header(p, tar::EntryType::Char, 0, 0o666, 0, 0);
                h.set_device_major(*ma).expect("major");
                h.set_device_minor(*mi).expect("minor");
                (h, &[])
            }
        };
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("finish")
}

pub fn compress(data: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::Plain => data.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).expect("gz");
            e.finish().expect("gz")
        }
        Comp::Zstd => zstd::stream::encode_all(data, 1).expect("zstd"),
    }
}

pub fn digest(d: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(d))
}

pub struct TestImage {
    pub config: Vec<u8>,
    /// Uncompressed layer tars.
    pub layers: Vec<Vec<u8>>,
}

impl TestImage {
    pub fn new(layers: Vec<Vec<u8>>, cmd: &[&str]) -> TestImage {
        let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
        let history: Vec<_> = (0..layers.len()).map(|i| json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("step {i}")})).collect();
        let config = json!({
            "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "ExposedPorts": {"80/tcp": {}}, "Labels": {"a": "b"}, "WorkingDir": "/w"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        TestImage { config: serde_json::to_vec(&config).expect("json"), layers }
    }
    pub fn id(&self) -> String {
        digest(&self.config)
    }
}

fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).expect("append");
}

/// Classic `docker save` layout: `<hex>.json`, `<n>/layer.tar`, manifest.json.
pub fn docker_archive(images: &[(&TestImage, Vec<&str>)], comp: Comp) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut manifest = Vec::new();
    for (img, tags) in images {
        let cfg_name = format!("{}.json", &img.id()[7..]);
        add(&mut b, &cfg_name, &img.config);
        let mut layer_names = Vec::new();
        for l in &img.layers {
            let name = format!("{}/layer.tar", &digest(l)[7..]);
            add(&mut b, &name, &compress(l, comp));
            layer_names.push(name);
        }
        manifest.push(json!({"Config": cfg_name, "RepoTags": tags, "Layers": layer_names}));
    }
    add(&mut b, "manifest.json", &serde_json::to_vec(&manifest).expect("json"));
    b.into_inner().expect("finish")
}

/// OCI image layout. With `multi_arch`, the top-level entry is an index with arm64 + amd64.
pub fn oci_archive(img: &TestImage, comp: Comp, annotations: serde_json::Value, multi_arch: bool, docker_manifest: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let blob = |b: &mut tar::Builder<Vec<u8>>, data: &[u8]| -> String {
        let d = digest(data);
        add(b, &format!("blobs/sha256/{}", &d[7..]), data);
        d
    };
    let cfg_d = blob(&mut b, &img.config);
    let mut layers = Vec::new();
    let mut layer_paths = Vec::new();
    let mt = match comp {
        Comp::Plain => "application/vnd.oci.image.layer.v1.tar",
        Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    };
    for l in &img.layers {
        let data = compress(l, comp);
        let d = blob(&mut b, &data);
        layer_paths.push(format!("blobs/sha256/{}", &d[7..]));
        layers.push(json!({"mediaType": mt, "digest": d, "size": data.len()}));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d, "size": img.config.len()},
        "layers": layers,
    }))
    .expect("json");
    let man_d = blob(&mut b, &manifest);
    let top = if multi_arch {
        let other = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", "0".repeat(64)), "size": 2}, "layers": []}))
        .expect("json");
        let other_d = blob(&mut b, &other);
        let idx = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other_d, "size": other.len(), "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man_d, "size": manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}},
        ]}))
        .expect("json");
        let idx_d = blob(&mut b, &idx);
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": idx_d, "size": idx.len(), "annotations": annotations})
    } else {
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man_d, "size": manifest.len(), "annotations": annotations})
    };
    add(&mut b, "index.json", &serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [top]})).expect("json"));
    if docker_manifest {
        let tags: Vec<String> = annotations.get("io.containerd.image.name").and_then(|v| v.as_str()).map(|s| vec![s.to_string()]).unwrap_or_default();
        let m = json!([{"Config": format!("blobs/sha256/{}", &cfg_d[7..]), "RepoTags": tags, "Layers": layer_paths}]);
        add(&mut b, "manifest.json", &serde_json::to_vec(&m).expect("json"));
    }
    b.into_inner().expect("finish")
}

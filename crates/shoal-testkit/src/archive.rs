//! Archive writers: deterministic layer tars, `docker save` archives, OCI image layouts.

use crate::image::{TestImage, CREATED};
use crate::util::sha256_hex;
use serde_json::json;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// mtime of every tar entry we write (2024-01-01T00:00:00Z).
const MTIME: u64 = 1_704_067_200;

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Layer compression in an OCI layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    /// OCI media type of a layer with this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// "none", "gzip", "zstd".
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// Compresses `data` (deterministically: gzip header without mtime/name, zstd level 3).
    pub fn compress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Gzip => {
                let mut e = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
                e.write_all(data)?;
                e.finish()
            }
            Compression::Zstd => zstd::stream::encode_all(data, 3),
        }
    }
}

/// Docker's reference normalization: `busybox` -> `docker.io/library/busybox:latest`,
/// `foo/bar:1` -> `docker.io/foo/bar:1`, `localhost:5000/x` -> `localhost:5000/x:latest`.
pub fn normalize_ref(r: &str) -> String {
    let (name, tag) = split_tag(r);
    let first = name.split('/').next().unwrap_or("");
    let has_domain = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_domain {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{full}:{tag}")
}

/// Splits `repo[:tag]` into (repo, tag), defaulting the tag to `latest`.
fn split_tag(r: &str) -> (&str, &str) {
    let r = r.split('@').next().unwrap_or(r);
    match r.rfind(':') {
        Some(i) if !r[i..].contains('/') => (&r[..i], &r[i + 1..]),
        _ => (r, "latest"),
    }
}

fn header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes `dir`'s content as a deterministic layer tar: entries sorted by name, paths relative
/// without `./`, fixed mtime, owner/mode from the filesystem, symlinks kept, no xattrs.
pub fn write_layer_tar(dir: &Path, out: &Path) -> io::Result<()> {
    let f = io::BufWriter::new(fs::File::create(out)?);
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    append_tree(&mut b, dir, "")?;
    b.into_inner()?.flush()
}

fn append_tree<W: Write>(b: &mut tar::Builder<W>, dir: &Path, prefix: &str) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel = format!("{prefix}{}", name.to_string_lossy());
        let md = fs::symlink_metadata(&path)?;
        let mut h = header(0, md.mode() & 0o7777);
        h.set_uid(md.uid() as u64);
        h.set_gid(md.gid() as u64);
        let ft = md.file_type();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            b.append_data(&mut h, format!("{rel}/"), io::empty())?;
            append_tree(b, &path, &format!("{rel}/"))?;
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = fs::read_link(&path)?;
            b.append_link(&mut h, &rel, target)?;
        } else if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(md.len());
            b.append_data(&mut h, &rel, fs::File::open(&path)?)?;
        } else {
            return Err(io::Error::other(format!("unsupported file type in layer: {}", path.display())));
        }
    }
    Ok(())
}

fn add_bytes<W: Write>(b: &mut tar::Builder<W>, path: &str, data: &[u8]) -> io::Result<()> {
    let mut h = header(data.len() as u64, 0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data)
}

fn add_dir<W: Write>(b: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    let mut h = header(0, 0o755);
    h.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut h, format!("{}/", path.trim_end_matches('/')), io::empty())
}

fn add_file<W: Write>(b: &mut tar::Builder<W>, path: &str, src: &Path) -> io::Result<()> {
    let len = fs::metadata(src)?.len();
    let mut h = header(len, 0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, fs::File::open(src)?)
}

/// Writes the archive `docker save` (classic format) produces for `image` tagged `repo_tag`:
/// `manifest.json` (Config, RepoTags, Layers), `<config hex>.json`,
/// `<layer id>/{VERSION,json,layer.tar}` per layer and `repositories`.
pub fn write_docker_archive(image: &TestImage, repo_tag: &str, out: &Path) -> io::Result<()> {
    let (repo, tag) = split_tag(repo_tag);
    let repo_tag = format!("{repo}:{tag}");
    let config = image.config_json();
    let config_hex = sha256_hex(&config);
    let f = io::BufWriter::new(fs::File::create(out)?);
    let mut b = tar::Builder::new(f);

    // v1-compatible layer IDs: a chain over (parent id, diff_id), like docker's v1.CreateID.
    let mut parent = String::new();
    let mut layer_paths = Vec::new();
    let n = image.layers.len();
    for (i, layer) in image.layers.iter().enumerate() {
        let id = sha256_hex(format!("{parent}\n{}\n{}", layer.diff_id, if i + 1 == n { &config_hex } else { "" }).as_bytes());
        let mut v1 = json!({
            "id": id,
            "created": CREATED,
            "container_config": {"Cmd": null, "Env": null, "Image": ""},
            "os": "linux",
        });
        if !parent.is_empty() {
            v1["parent"] = json!(parent);
        }
        add_dir(&mut b, &id)?;
        add_bytes(&mut b, &format!("{id}/VERSION"), b"1.0")?;
        add_bytes(&mut b, &format!("{id}/json"), &serde_json::to_vec(&v1)?)?;
        add_file(&mut b, &format!("{id}/layer.tar"), &layer.tar)?;
        layer_paths.push(format!("{id}/layer.tar"));
        parent = id;
    }
    add_bytes(&mut b, &format!("{config_hex}.json"), &config)?;
    let manifest = json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [repo_tag],
        "Layers": layer_paths,
    }]);
    add_bytes(&mut b, "manifest.json", &serde_json::to_vec(&manifest)?)?;
    let repositories = json!({ repo: { tag: parent } });
    add_bytes(&mut b, "repositories", &serde_json::to_vec(&repositories)?)?;
    b.into_inner()?.flush()
}

/// Writes an OCI image layout tarball for `image`: `oci-layout`, `index.json` (one manifest,
/// annotated `io.containerd.image.name` = normalized ref and `org.opencontainers.image.ref.name`
/// = tag), and `blobs/sha256/*` (manifest, config, layers compressed as asked).
pub fn write_oci_layout(image: &TestImage, ref_name: &str, compression: Compression, out: &Path) -> io::Result<()> {
    let f = io::BufWriter::new(fs::File::create(out)?);
    let mut b = tar::Builder::new(f);
    add_bytes(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add_dir(&mut b, "blobs")?;
    add_dir(&mut b, "blobs/sha256")?;

    let mut layers = Vec::new();
    for layer in &image.layers {
        let (hex, size) = if compression == Compression::None {
            let hex = layer.diff_id.trim_start_matches("sha256:").to_string();
            add_file(&mut b, &format!("blobs/sha256/{hex}"), &layer.tar)?;
            (hex, layer.size)
        } else {
            let data = compression.compress(&fs::read(&layer.tar)?)?;
            let hex = sha256_hex(&data);
            add_bytes(&mut b, &format!("blobs/sha256/{hex}"), &data)?;
            (hex, data.len() as u64)
        };
        layers.push(json!({"mediaType": compression.media_type(), "digest": format!("sha256:{hex}"), "size": size}));
    }
    let config = image.config_json();
    let config_hex = sha256_hex(&config);
    add_bytes(&mut b, &format!("blobs/sha256/{config_hex}"), &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": format!("sha256:{config_hex}"), "size": config.len()},
        "layers": layers,
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_hex = sha256_hex(&manifest);
    add_bytes(&mut b, &format!("blobs/sha256/{manifest_hex}"), &manifest)?;
    let (_, tag) = split_tag(ref_name);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": format!("sha256:{manifest_hex}"),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": normalize_ref(ref_name),
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    add_bytes(&mut b, "index.json", &serde_json::to_vec(&index)?)?;
    b.into_inner()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        assert_eq!(normalize_ref("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize_ref("nginx:1.2"), "docker.io/library/nginx:1.2");
        assert_eq!(normalize_ref("foo/bar:x"), "docker.io/foo/bar:x");
        assert_eq!(normalize_ref("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(normalize_ref("127.0.0.1:5000/a:t"), "127.0.0.1:5000/a:t");
        assert_eq!(split_tag("localhost:5000/x"), ("localhost:5000/x", "latest"));
    }

    #[test]
    fn compression_is_deterministic() {
        let data = b"hello hello hello".repeat(100);
        for c in Compression::ALL {
            assert_eq!(c.compress(&data).unwrap(), c.compress(&data).unwrap());
        }
    }
}

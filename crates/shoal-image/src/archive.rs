//! `docker load`: docker-archive (`manifest.json`) and OCI image layout (`index.json`) tarballs.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::Deserialize;

use crate::error::{ImageError, IoCtx};
use crate::fsutil::TempDir;
use crate::reference::{self, is_digest};
use crate::store::{chain_ids, config_diff_ids, ImageStore};
use crate::unpack::{open_dir, open_root, sanitize, sha256_hex};
use crate::LoadedImage;

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The outer archive's files, extracted under a temp dir, plus its links (resolved lexically).
struct Extracted {
    dir: TempDir,
    links: HashMap<Vec<OsString>, Vec<OsString>>,
}

impl Extracted {
    fn files(&self) -> PathBuf {
        self.dir.path.join("f")
    }

    /// Path of the regular file that archive member `name` denotes (following archive links).
    fn resolve(&self, name: &str) -> Result<PathBuf, ImageError> {
        let mut comps = sanitize(Path::new(name), "archive")?;
        for _ in 0..32 {
            match self.links.get(&comps) {
                Some(t) => comps = t.clone(),
                None => {
                    let p = comps.iter().fold(self.files(), |p, c| p.join(c));
                    return match fs::symlink_metadata(&p) {
                        Ok(m) if m.is_file() => Ok(p),
                        _ => Err(ImageError::archive(format!("file {name} referenced by the manifest is missing"))),
                    };
                }
            }
        }
        Err(ImageError::archive(format!("too many levels of links resolving {name}")))
    }

    fn exists(&self, name: &str) -> bool {
        self.resolve(name).is_ok()
    }

    fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, ImageError> {
        let p = self.resolve(name)?;
        let mut data = Vec::new();
        File::open(&p).ctx(&p)?.take(limit + 1).read_to_end(&mut data).ctx(&p)?;
        if data.len() as u64 > limit {
            return Err(ImageError::archive(format!("{name} is too large")));
        }
        Ok(data)
    }

    /// Read a content-addressed blob and verify its digest.
    fn blob(&self, digest: &str, limit: u64) -> Result<Vec<u8>, ImageError> {
        let data = self.read(&blob_path(digest)?, limit)?;
        let actual = format!("sha256:{}", sha256_hex(&data));
        if actual != digest {
            return Err(ImageError::DigestMismatch { what: format!("blob {digest}"), expected: digest.into(), actual });
        }
        Ok(data)
    }
}

fn blob_path(digest: &str) -> Result<String, ImageError> {
    if !is_digest(digest) {
        return Err(ImageError::archive(format!("unsupported or invalid digest {digest}")));
    }
    Ok(format!("blobs/sha256/{}", &digest[7..]))
}

/// Lexically normalise `base/../target` style link targets; `None` if it escapes the archive.
fn normalise(base: &[OsString], target: &Path) -> Option<Vec<OsString>> {
    use std::path::Component;
    let mut out: Vec<OsString> = if target.is_absolute() { Vec::new() } else { base.to_vec() };
    for c in target.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                out.pop()?;
            }
            _ => {}
        }
    }
    Some(out)
}

fn extract(store: &ImageStore, tar: impl Read) -> Result<Extracted, ImageError> {
    let dir = TempDir::new(&store.tmp_dir(), "load")?;
    let files = dir.path.join("f");
    fs::create_dir(&files).ctx(&files)?;
    let root = open_root(&files)?;
    let mut links = HashMap::new();
    let mut archive = tar::Archive::new(tar);
    let bad = |e: std::io::Error| ImageError::archive(format!("truncated or corrupt image archive: {e}"));
    let mut buf = vec![0u8; 64 * 1024];
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let comps = sanitize(&raw, "archive")?;
        let Some((name, parent)) = comps.split_last() else { continue };
        let full = comps.iter().fold(files.clone(), |p, c| p.join(c));
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let pfd = open_dir(&root, parent, true, "archive", &full)?;
                let _ = nix::unistd::unlinkat(Some(pfd.as_raw_fd()), name.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
                let fd = nix::fcntl::openat(
                    Some(pfd.as_raw_fd()),
                    name.as_os_str(),
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .ctx(&full)?;
                // SAFETY: openat just returned this descriptor; the File takes sole ownership.
                let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                let expected = entry.size();
                let mut n: u64 = 0;
                loop {
                    let k = entry.read(&mut buf).map_err(bad)?;
                    if k == 0 {
                        break;
                    }
                    f.write_all(&buf[..k]).ctx(&full)?;
                    n += k as u64;
                }
                if n != expected {
                    return Err(ImageError::archive(format!(
                        "truncated image archive: {} has {n} of {expected} bytes",
                        raw.display()
                    )));
                }
            }
            tar::EntryType::Directory => {
                open_dir(&root, &comps, true, "archive", &full)?;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let Some(target) = entry.link_name().map_err(bad)? else { continue };
                let base: &[OsString] = if entry.header().entry_type() == tar::EntryType::Symlink { parent } else { &[] };
                match normalise(base, &target) {
                    Some(t) => {
                        links.insert(comps.clone(), t);
                    }
                    None => return Err(ImageError::UnsafePath { layer: "archive".into(), path: target.display().to_string() }),
                }
            }
            _ => {}
        }
    }
    Ok(Extracted { dir, links })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Deserialize, Clone)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST
}

/// Choose linux/amd64 from an index (or the only entry if there is exactly one).
pub(crate) fn pick_platform<'a>(manifests: &'a [Descriptor], what: &str) -> Result<&'a Descriptor, ImageError> {
    let wanted = |d: &&Descriptor| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64");
    if let Some(d) = manifests.iter().find(wanted) {
        return Ok(d);
    }
    let real: Vec<&Descriptor> = manifests
        .iter()
        .filter(|d| d.platform.as_ref().is_none_or(|p| p.architecture != "unknown"))
        .collect();
    match real.as_slice() {
        [only] if only.platform.is_none() => Ok(only),
        _ => Err(ImageError::InvalidInput(format!("{what}: no matching manifest for linux/amd64 in the manifest list entries"))),
    }
}

const META_LIMIT: u64 = 16 << 20;

fn parse_tag(t: &str) -> Result<String, ImageError> {
    let r = reference::parse(t)?;
    if r.digest.is_some() {
        return Err(ImageError::archive(format!("invalid tag {t} in archive")));
    }
    Ok(r.with_default_tag().full())
}

impl ImageStore {
    /// `docker load`. Auto-detects docker-archive (`manifest.json`) and OCI layout (`index.json`).
    pub fn load(&self, tar: impl Read) -> Result<Vec<LoadedImage>, ImageError> {
        let span = tracing::info_span!("image_load");
        let _g = span.enter();
        let ex = extract(self, tar)?;
        let ids = if ex.exists("manifest.json") {
            self.load_docker(&ex)?
        } else if ex.exists("index.json") {
            self.load_oci(&ex)?
        } else {
            return Err(ImageError::archive("no manifest.json or index.json found in the archive"));
        };
        let mut out: Vec<LoadedImage> = Vec::new();
        for (id, tags) in ids {
            let tags: Vec<String> = tags.iter().map(|t| reference::familiar(t)).collect();
            match out.iter_mut().find(|l| l.id == id) {
                Some(l) => l.tags.extend(tags),
                None => out.push(LoadedImage { id, tags }),
            }
        }
        tracing::info!(images = out.len(), "load finished");
        Ok(out)
    }

    fn load_docker(&self, ex: &Extracted) -> Result<Vec<(String, Vec<String>)>, ImageError> {
        let data = ex.read("manifest.json", META_LIMIT)?;
        let entries: Vec<DockerManifestEntry> =
            serde_json::from_slice(&data).map_err(|e| ImageError::archive(format!("manifest.json: {e}")))?;
        if entries.is_empty() {
            return Err(ImageError::archive("manifest.json lists no images"));
        }
        // Validate everything before touching the store.
        let mut plans = Vec::new();
        for e in &entries {
            let config_raw = ex.read(&e.config, META_LIMIT)?;
            if let Some(h) = e.config.strip_prefix("blobs/sha256/") {
                let actual = sha256_hex(&config_raw);
                if actual != h {
                    return Err(ImageError::DigestMismatch { what: format!("config {}", e.config), expected: h.into(), actual });
                }
            }
            let config: serde_json::Value =
                serde_json::from_slice(&config_raw).map_err(|err| ImageError::archive(format!("config {}: {err}", e.config)))?;
            let diff_ids = config_diff_ids(&config, &e.config)?;
            if diff_ids.len() != e.layers.len() {
                return Err(ImageError::archive(format!(
                    "config {} lists {} layers but manifest.json lists {}",
                    e.config,
                    diff_ids.len(),
                    e.layers.len()
                )));
            }
            let tags = e.repo_tags.clone().unwrap_or_default().iter().map(|t| parse_tag(t)).collect::<Result<Vec<_>, _>>()?;
            let layer_files = e.layers.iter().map(|l| ex.resolve(l)).collect::<Result<Vec<_>, _>>()?;
            plans.push((config_raw, diff_ids, tags, layer_files, e.layers.clone()));
        }
        let mut ids = Vec::new();
        for (config_raw, diff_ids, tags, layer_files, names) in plans {
            let chains = chain_ids(&diff_ids);
            let mut pins = self.new_pins();
            let mut new_layers = Vec::new();
            for (i, chain) in chains.iter().enumerate() {
                if self.pin_layer(&mut pins, chain) {
                    continue;
                }
                let f = File::open(&layer_files[i]).ctx(&layer_files[i])?;
                let blob = names[i].strip_prefix("blobs/sha256/").map(|h| format!("sha256:{h}"));
                new_layers.push(self.unpack_new_layer(f, chain, &diff_ids[i], blob.as_deref(), &names[i])?);
            }
            ids.push((self.commit_image(&config_raw, &chains, new_layers, &tags)?, tags));
        }
        Ok(ids)
    }

    fn load_oci(&self, ex: &Extracted) -> Result<Vec<(String, Vec<String>)>, ImageError> {
        let data = ex.read("index.json", META_LIMIT)?;
        let index: Index = serde_json::from_slice(&data).map_err(|e| ImageError::archive(format!("index.json: {e}")))?;
        if index.manifests.is_empty() {
            return Err(ImageError::archive("index.json lists no manifests"));
        }
        // Resolve every top-level entry to (image manifest, tag) before touching the store.
        let mut plans = Vec::new();
        for top in &index.manifests {
            let tag = top
                .annotations
                .get("io.containerd.image.name")
                .or_else(|| top.annotations.get("org.opencontainers.image.ref.name").filter(|n| n.contains('/') || n.contains(':')))
                .map(|n| parse_tag(n))
                .transpose()?;
            let mut desc = top.clone();
            let mut depth = 0;
            let manifest = loop {
                let raw = ex.blob(&desc.digest, META_LIMIT)?;
                let v: serde_json::Value =
                    serde_json::from_slice(&raw).map_err(|e| ImageError::archive(format!("manifest {}: {e}", desc.digest)))?;
                let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or(&desc.media_type).to_string();
                if is_index(&mt) || (v.get("manifests").is_some() && v.get("layers").is_none()) {
                    let idx: Index =
                        serde_json::from_slice(&raw).map_err(|e| ImageError::archive(format!("index {}: {e}", desc.digest)))?;
                    desc = pick_platform(&idx.manifests, &desc.digest)?.clone();
                    depth += 1;
                    if depth > 4 {
                        return Err(ImageError::archive("image indexes nested too deeply"));
                    }
                    continue;
                }
                let m: Manifest =
                    serde_json::from_slice(&raw).map_err(|e| ImageError::archive(format!("manifest {}: {e}", desc.digest)))?;
                break m;
            };
            let config_raw = ex.blob(&manifest.config.digest, META_LIMIT)?;
            let config: serde_json::Value = serde_json::from_slice(&config_raw)
                .map_err(|e| ImageError::archive(format!("config {}: {e}", manifest.config.digest)))?;
            let diff_ids = config_diff_ids(&config, &manifest.config.digest)?;
            if diff_ids.len() != manifest.layers.len() {
                return Err(ImageError::archive(format!(
                    "config {} lists {} layers but the manifest lists {}",
                    manifest.config.digest,
                    diff_ids.len(),
                    manifest.layers.len()
                )));
            }
            let files = manifest
                .layers
                .iter()
                .map(|l| blob_path(&l.digest).and_then(|p| ex.resolve(&p)))
                .collect::<Result<Vec<_>, _>>()?;
            plans.push((config_raw, diff_ids, tag, files, manifest.layers));
        }
        let mut ids = Vec::new();
        for (config_raw, diff_ids, tag, files, descs) in plans {
            let chains = chain_ids(&diff_ids);
            let mut pins = self.new_pins();
            let mut new_layers = Vec::new();
            for (i, chain) in chains.iter().enumerate() {
                if self.pin_layer(&mut pins, chain) {
                    continue;
                }
                let f = File::open(&files[i]).ctx(&files[i])?;
                new_layers.push(self.unpack_new_layer(f, chain, &diff_ids[i], Some(&descs[i].digest), &descs[i].digest)?);
            }
            let tags: Vec<String> = tag.into_iter().collect();
            ids.push((self.commit_image(&config_raw, &chains, new_layers, &tags)?, tags));
        }
        Ok(ids)
    }
}

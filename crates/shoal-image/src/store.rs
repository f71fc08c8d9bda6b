//! The store itself: in-memory index of the on-disk layout, atomic commits, references, rmi.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ImageError, IoCtx};
use crate::fsutil::{fsync_dir, syncfs, write_atomic, TempDir};
use crate::reference::{self, familiar, is_hex};
use crate::unpack::{sha256_hex, unpack_layer};
use crate::{DeleteItem, HistoryItem, ImageConfig, ImageRecord};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageMeta {
    pub id: String,
    /// Chain ids, bottom-most first.
    pub layers: Vec<String>,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LayerMeta {
    pub chain_id: String,
    pub diff_id: String,
    pub parent: Option<String>,
    pub size: u64,
    /// Directory name under `l/`.
    pub dir: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Repositories {
    refs: BTreeMap<String, String>,
}

struct StoredImage {
    meta: ImageMeta,
    config: serde_json::Value,
}

#[derive(Default)]
struct State {
    /// Full normalised reference (tag or digest form) -> image id.
    refs: BTreeMap<String, String>,
    images: BTreeMap<String, StoredImage>,
    layers: BTreeMap<String, LayerMeta>,
    /// Layers an in-flight load/pull relies on; never garbage-collected.
    pins: HashMap<String, usize>,
}

pub(crate) struct Inner {
    root: PathBuf,
    state: Mutex<State>,
}

/// The node-local image store. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct ImageStore {
    pub(crate) inner: Arc<Inner>,
}

/// A layer unpacked into a temp dir, waiting for [`ImageStore::commit_image`].
pub(crate) struct NewLayer {
    pub chain_id: String,
    pub diff_id: String,
    pub size: u64,
    pub dir: TempDir,
}

/// Layers pinned for the duration of one load/pull.
pub(crate) struct Pins {
    store: ImageStore,
    chains: Vec<String>,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let mut st = self.store.lock();
        for c in &self.chains {
            if let Some(n) = st.pins.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    st.pins.remove(c);
                }
            }
        }
    }
}

pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))),
        };
        out.push(next);
    }
    out
}

fn hex_of(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

fn short_id(id: &str) -> String {
    hex_of(id).chars().take(12).collect()
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ImageError> {
    let data = fs::read(path).ctx(path)?;
    serde_json::from_slice(&data)
        .map_err(|e| ImageError::Corrupt { path: path.display().to_string(), message: e.to_string() })
}

/// Diff ids from an image config (`rootfs.diff_ids`), validated.
pub(crate) fn config_diff_ids(config: &serde_json::Value, what: &str) -> Result<Vec<String>, ImageError> {
    let ids = config
        .pointer("/rootfs/diff_ids")
        .and_then(|v| v.as_array())
        .ok_or_else(|| ImageError::archive(format!("{what}: image config has no rootfs.diff_ids")))?;
    ids.iter()
        .map(|v| match v.as_str() {
            Some(s) if reference::is_digest(s) => Ok(s.to_string()),
            _ => Err(ImageError::archive(format!("{what}: invalid diff id {v}"))),
        })
        .collect()
}

fn str_list(v: Option<&serde_json::Value>) -> Option<Vec<String>> {
    v.and_then(|v| v.as_array()).map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
}

fn key_set(v: Option<&serde_json::Value>) -> BTreeMap<String, ()> {
    v.and_then(|v| v.as_object()).map(|o| o.keys().map(|k| (k.clone(), ())).collect()).unwrap_or_default()
}

pub(crate) fn parse_image_config(cfg: &serde_json::Value) -> ImageConfig {
    let c = cfg.get("config").cloned().unwrap_or(serde_json::Value::Null);
    let s = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    ImageConfig {
        env: str_list(c.get("Env")).unwrap_or_default(),
        cmd: str_list(c.get("Cmd")),
        entrypoint: str_list(c.get("Entrypoint")),
        working_dir: s("WorkingDir"),
        user: s("User"),
        exposed_ports: key_set(c.get("ExposedPorts")),
        labels: c
            .get("Labels")
            .and_then(|v| v.as_object())
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
            .unwrap_or_default(),
        volumes: key_set(c.get("Volumes")),
        stop_signal: c.get("StopSignal").and_then(|v| v.as_str()).map(String::from),
        healthcheck: c.get("Healthcheck").filter(|v| !v.is_null()).cloned(),
    }
}

fn parse_time(v: Option<&serde_json::Value>) -> Option<chrono::DateTime<chrono::Utc>> {
    v.and_then(|v| v.as_str())
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Repository part (`docker.io/library/busybox`) of a full tag or digest reference.
fn repo_of(full: &str) -> &str {
    if let Some((n, _)) = full.split_once('@') {
        return n;
    }
    let slash = full.rfind('/').map(|i| i + 1).unwrap_or(0);
    match full[slash..].rfind(':') {
        Some(i) => &full[..slash + i],
        None => full,
    }
}

impl ImageStore {
    /// Open (creating if needed) the store at `root` = `<data-root>/image`, wiping leftovers of
    /// interrupted loads and anything a crash left unreferenced.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for d in ["images", "blobs/sha256", "layers", "l", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).ctx(&p)?;
        }
        let tmp = root.join("tmp");
        for e in fs::read_dir(&tmp).ctx(&tmp)? {
            let p = e.ctx(&tmp)?.path();
            tracing::info!(path = %p.display(), "removing leftover of an interrupted load");
            let r = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            r.ctx(&p)?;
        }
        let mut st = State::default();
        // Layers.
        let ldir = root.join("layers");
        for e in fs::read_dir(&ldir).ctx(&ldir)? {
            let p = e.ctx(&ldir)?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') {
                fs::remove_file(&p).ctx(&p)?;
                continue;
            }
            let meta: LayerMeta = read_json(&p)?;
            if !root.join("l").join(&meta.dir).is_dir() {
                tracing::warn!(chain_id = %meta.chain_id, "layer directory missing; dropping layer record");
                fs::remove_file(&p).ctx(&p)?;
                continue;
            }
            st.layers.insert(meta.chain_id.clone(), meta);
        }
        // Images.
        let idir = root.join("images");
        for e in fs::read_dir(&idir).ctx(&idir)? {
            let p = e.ctx(&idir)?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') {
                fs::remove_file(&p).ctx(&p)?;
                continue;
            }
            let meta: ImageMeta = read_json(&p)?;
            let blob = root.join("blobs/sha256").join(hex_of(&meta.id));
            let ok_layers = meta.layers.iter().all(|c| st.layers.contains_key(c));
            let config = fs::read(&blob).ok().filter(|b| format!("sha256:{}", sha256_hex(b)) == meta.id);
            match (config, ok_layers) {
                (Some(bytes), true) => {
                    let config = serde_json::from_slice(&bytes).map_err(|e| ImageError::Corrupt {
                        path: blob.display().to_string(),
                        message: e.to_string(),
                    })?;
                    st.images.insert(meta.id.clone(), StoredImage { meta, config });
                }
                _ => {
                    tracing::warn!(image = %meta.id, "image config or layers missing; dropping image record");
                    fs::remove_file(&p).ctx(&p)?;
                }
            }
        }
        let rpath = root.join("repositories.json");
        if rpath.exists() {
            let repos: Repositories = read_json(&rpath)?;
            st.refs = repos.refs.into_iter().filter(|(_, id)| st.images.contains_key(id)).collect();
        }
        let store = ImageStore { inner: Arc::new(Inner { root: root.to_path_buf(), state: Mutex::new(st) }) };
        {
            let mut st = store.lock();
            store.gc_locked(&mut st)?;
            // Orphan layer dirs, config blobs and temp files from interrupted commits.
            let known: BTreeSet<String> = st.layers.values().map(|l| l.dir.clone()).collect();
            let l = root.join("l");
            for e in fs::read_dir(&l).ctx(&l)? {
                let e = e.ctx(&l)?;
                if !known.contains(&e.file_name().to_string_lossy().into_owned()) {
                    store.remove_tree(&e.path())?;
                }
            }
            let b = root.join("blobs/sha256");
            for e in fs::read_dir(&b).ctx(&b)? {
                let e = e.ctx(&b)?;
                let id = format!("sha256:{}", e.file_name().to_string_lossy());
                if !st.images.contains_key(&id) {
                    fs::remove_file(e.path()).ctx(e.path())?;
                }
            }
            for e in fs::read_dir(root).ctx(root)? {
                let e = e.ctx(root)?;
                if e.file_name().to_string_lossy().starts_with(".repositories.json.tmp") {
                    fs::remove_file(e.path()).ctx(e.path())?;
                }
            }
            tracing::info!(root = %root.display(), images = st.images.len(), layers = st.layers.len(), "image store opened");
        }
        Ok(store)
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join("tmp")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn new_pins(&self) -> Pins {
        Pins { store: self.clone(), chains: Vec::new() }
    }

    /// Pin `chain` against garbage collection; returns whether the layer is already stored.
    pub(crate) fn pin_layer(&self, pins: &mut Pins, chain: &str) -> bool {
        let mut st = self.lock();
        *st.pins.entry(chain.to_string()).or_insert(0) += 1;
        pins.chains.push(chain.to_string());
        st.layers.contains_key(chain)
    }

    /// Unpack one layer from `src` into a fresh temp dir, verifying its diff id (and blob digest).
    pub(crate) fn unpack_new_layer(
        &self,
        src: impl Read,
        chain_id: &str,
        diff_id: &str,
        blob_digest: Option<&str>,
        what: &str,
    ) -> Result<NewLayer, ImageError> {
        let dir = TempDir::new(&self.tmp_dir(), "layer")?;
        let span = tracing::debug_span!("unpack_layer", layer = what, diff_id);
        let _g = span.enter();
        let un = unpack_layer(src, &dir.path, what)?;
        if let Some(expected) = blob_digest {
            if un.blob_digest != expected {
                return Err(ImageError::DigestMismatch {
                    what: format!("layer blob {what}"),
                    expected: expected.to_string(),
                    actual: un.blob_digest,
                });
            }
        }
        if un.diff_id != diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("layer {what} (diff id)"),
                expected: diff_id.to_string(),
                actual: un.diff_id,
            });
        }
        tracing::debug!(layer = what, diff_id, size = un.size, "layer unpacked and verified");
        Ok(NewLayer { chain_id: chain_id.to_string(), diff_id: diff_id.to_string(), size: un.size, dir })
    }

    /// Install new layers, the config blob, the image record and `refs` (full references) atomically
    /// enough that a crash at any point leaves either nothing visible or the complete image.
    pub(crate) fn commit_image(
        &self,
        config_raw: &[u8],
        chains: &[String],
        new_layers: Vec<NewLayer>,
        refs: &[String],
    ) -> Result<String, ImageError> {
        let id = format!("sha256:{}", sha256_hex(config_raw));
        let config: serde_json::Value =
            serde_json::from_slice(config_raw).map_err(|e| ImageError::archive(format!("image config {id}: {e}")))?;
        let root = self.inner.root.clone();
        let mut st = self.lock();
        for nl in new_layers {
            if st.layers.contains_key(&nl.chain_id) {
                continue; // someone else committed it meanwhile; our temp copy is dropped
            }
            let hex = hex_of(&nl.chain_id);
            let mut len = 12;
            let dir_name = loop {
                let cand = &hex[..len.min(hex.len())];
                if !root.join("l").join(cand).exists() || len >= hex.len() {
                    break cand.to_string();
                }
                len += 4;
            };
            let parent = chains.iter().position(|c| *c == nl.chain_id).and_then(|i| i.checked_sub(1)).map(|i| chains[i].clone());
            syncfs(&nl.dir.path)?;
            let dest = root.join("l").join(&dir_name);
            fs::rename(&nl.dir.path, &dest).ctx(&dest)?;
            fsync_dir(&root.join("l"))?;
            let meta = LayerMeta { chain_id: nl.chain_id.clone(), diff_id: nl.diff_id.clone(), parent, size: nl.size, dir: dir_name };
            let data = serde_json::to_vec_pretty(&meta).map_err(|e| ImageError::archive(e.to_string()))?;
            write_atomic(&root.join("layers").join(format!("{hex}.json")), &data)?;
            tracing::info!(chain_id = %meta.chain_id, dir = %meta.dir, size = meta.size, "layer stored");
            st.layers.insert(meta.chain_id.clone(), meta);
        }
        let mut size = 0;
        for c in chains {
            match st.layers.get(c) {
                Some(l) => size += l.size,
                None => return Err(ImageError::Corrupt { path: c.clone(), message: "layer vanished during commit".into() }),
            }
        }
        if !st.images.contains_key(&id) {
            write_atomic(&root.join("blobs/sha256").join(hex_of(&id)), config_raw)?;
            let meta = ImageMeta { id: id.clone(), layers: chains.to_vec(), size };
            let data = serde_json::to_vec_pretty(&meta).map_err(|e| ImageError::archive(e.to_string()))?;
            write_atomic(&root.join("images").join(format!("{}.json", hex_of(&id))), &data)?;
            st.images.insert(id.clone(), StoredImage { meta, config });
            tracing::info!(image = %id, layers = chains.len(), size, "image stored");
        }
        if !refs.is_empty() {
            let mut new_refs = st.refs.clone();
            for r in refs {
                new_refs.insert(r.clone(), id.clone());
            }
            self.write_refs(&new_refs)?;
            st.refs = new_refs;
        }
        Ok(id)
    }

    fn write_refs(&self, refs: &BTreeMap<String, String>) -> Result<(), ImageError> {
        let repos = Repositories { refs: refs.clone() };
        let data = serde_json::to_vec_pretty(&repos).map_err(|e| ImageError::archive(e.to_string()))?;
        write_atomic(&self.inner.root.join("repositories.json"), &data)
    }

    fn remove_tree(&self, path: &Path) -> Result<(), ImageError> {
        // Move out of the way first so a crash mid-delete leaves only tmp/ garbage.
        let trash = self.tmp_dir().join(format!("rm-{}", crate::fsutil::rand_hex(16)));
        fs::rename(path, &trash).ctx(path)?;
        fs::remove_dir_all(&trash).ctx(&trash)
    }

    /// Delete layers no image references and no in-flight load pins. Returns their chain ids.
    fn gc_locked(&self, st: &mut State) -> Result<Vec<String>, ImageError> {
        let used: BTreeSet<&String> = st.images.values().flat_map(|i| i.meta.layers.iter()).collect();
        let dead: Vec<String> =
            st.layers.keys().filter(|c| !used.contains(c) && !st.pins.contains_key(*c)).cloned().collect();
        // Delete top-most first (children before parents) for tidy output.
        let mut dead_sorted = dead.clone();
        dead_sorted.sort_by_key(|c| std::cmp::Reverse(depth(&st.layers, c)));
        for c in &dead_sorted {
            if let Some(meta) = st.layers.remove(c) {
                let mp = self.inner.root.join("layers").join(format!("{}.json", hex_of(c)));
                fs::remove_file(&mp).ctx(&mp)?;
                let d = self.inner.root.join("l").join(&meta.dir);
                if d.exists() {
                    self.remove_tree(&d)?;
                }
                tracing::info!(chain_id = %c, "layer deleted");
            }
        }
        Ok(dead_sorted)
    }

    fn resolve_locked(st: &State, reference: &str) -> Result<(String, Option<String>), ImageError> {
        let not_found = || ImageError::NotFound(reference.to_string());
        let by_prefix = |prefix: &str| -> Result<(String, Option<String>), ImageError> {
            let mut it = st.images.keys().filter(|id| hex_of(id).starts_with(prefix));
            match (it.next(), it.next()) {
                (Some(id), None) => Ok((id.clone(), None)),
                (Some(_), Some(_)) => {
                    Err(ImageError::InvalidInput(format!("ambiguous image id prefix: {reference} matches several images")))
                }
                _ => Err(not_found()),
            }
        };
        if let Some(h) = reference.strip_prefix("sha256:") {
            if !is_hex(h) {
                return Err(ImageError::InvalidReference(format!("\"{reference}\" is not a valid image id")));
            }
            return by_prefix(h);
        }
        if reference.len() == 64 && is_hex(reference) {
            return by_prefix(reference);
        }
        match reference::parse(reference) {
            Ok(r) => {
                let full = r.with_default_tag().full();
                if let Some(id) = st.refs.get(&full) {
                    return Ok((id.clone(), Some(full)));
                }
                if is_hex(reference) {
                    return by_prefix(reference);
                }
                Err(not_found())
            }
            Err(e) => {
                if is_hex(reference) {
                    by_prefix(reference)
                } else {
                    Err(e)
                }
            }
        }
    }

    fn refs_of(st: &State, id: &str) -> Vec<String> {
        st.refs.iter().filter(|(_, v)| *v == id).map(|(k, _)| k.clone()).collect()
    }

    fn record_locked(st: &State, id: &str) -> Option<ImageRecord> {
        let img = st.images.get(id)?;
        let cfg = &img.config;
        let s = |k: &str| cfg.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        for r in Self::refs_of(st, id) {
            if r.contains('@') {
                repo_digests.push(familiar(&r));
            } else {
                repo_tags.push(familiar(&r));
            }
        }
        Some(ImageRecord {
            id: id.to_string(),
            repo_tags,
            repo_digests,
            parent: s("parent"),
            created: parse_time(cfg.get("created")),
            size: img.meta.size,
            config: parse_image_config(cfg),
            architecture: s("architecture"),
            os: s("os"),
            author: s("author"),
            comment: s("comment"),
            docker_version: s("docker_version"),
            layers: img.meta.layers.iter().filter_map(|c| st.layers.get(c).map(|l| l.diff_id.clone())).collect(),
            raw_config: cfg.clone(),
        })
    }

    /// Every image, newest first.
    pub fn list(&self) -> Vec<ImageRecord> {
        let st = self.lock();
        let mut out: Vec<ImageRecord> = st.images.keys().filter_map(|id| Self::record_locked(&st, id)).collect();
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        out
    }

    /// Resolve a name, tag, digest reference, full id or unique id prefix.
    pub fn get(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let st = self.lock();
        let (id, _) = Self::resolve_locked(&st, reference)?;
        Self::record_locked(&st, &id).ok_or_else(|| ImageError::NotFound(reference.to_string()))
    }

    /// `docker tag source target`.
    pub fn tag(&self, source: &str, target: &str) -> Result<(), ImageError> {
        let r = reference::parse(target)?;
        if r.digest.is_some() {
            return Err(ImageError::InvalidInput(format!("refusing to create a tag with a digest reference: {target}")));
        }
        let full = r.with_default_tag().full();
        let mut st = self.lock();
        let (id, _) = Self::resolve_locked(&st, source)?;
        let mut refs = st.refs.clone();
        refs.insert(full.clone(), id.clone());
        self.write_refs(&refs)?;
        st.refs = refs;
        tracing::info!(image = %id, tag = %full, "tagged");
        Ok(())
    }

    /// Internal: record for id.
    pub(crate) fn record(&self, id: &str) -> Result<ImageRecord, ImageError> {
        let st = self.lock();
        Self::record_locked(&st, id).ok_or_else(|| ImageError::NotFound(id.to_string()))
    }

    /// `docker rmi` semantics. `in_use(image id)` says whether a container uses the image.
    pub fn remove(&self, reference: &str, force: bool, in_use: &dyn Fn(&str) -> bool) -> Result<Vec<DeleteItem>, ImageError> {
        let mut st = self.lock();
        let (id, matched) = Self::resolve_locked(&st, reference)?;
        let short = short_id(&id);
        let untag = |r: &String| DeleteItem { untagged: Some(familiar(r)), deleted: None };
        let mut items = Vec::new();
        let mut refs = st.refs.clone();
        let mine = |refs: &BTreeMap<String, String>| -> Vec<String> {
            refs.iter().filter(|(_, v)| **v == id).map(|(k, _)| k.clone()).collect()
        };
        let used = in_use(&id);
        let mut removed_repo_ref = false;
        if let Some(full) = matched {
            if mine(&refs).len() == 1 && used && !force {
                return Err(ImageError::Conflict(format!(
                    "conflict: unable to remove repository reference \"{reference}\" (must force) - image {short} is being used by a container"
                )));
            }
            refs.remove(&full);
            items.push(untag(&full));
            let remaining = mine(&refs);
            let repo = repo_of(&full).to_string();
            if !full.contains('@')
                && !remaining.is_empty()
                && remaining.iter().all(|r| r.contains('@') && repo_of(r) == repo)
            {
                for r in &remaining {
                    refs.remove(r);
                    items.push(untag(r));
                }
            }
            if !mine(&refs).is_empty() {
                self.write_refs(&refs)?;
                st.refs = refs;
                return Ok(items);
            }
            removed_repo_ref = true;
        } else {
            if used && !force {
                return Err(ImageError::Conflict(format!(
                    "conflict: unable to delete {short} (must be forced) - image is being used by a container"
                )));
            }
            let all = mine(&refs);
            let tags = all.iter().filter(|r| !r.contains('@')).count();
            let repos: BTreeSet<&str> = all.iter().map(|r| repo_of(r)).collect();
            if tags <= 1 && repos.len() <= 1 {
                for r in &all {
                    refs.remove(r);
                    items.push(untag(r));
                }
            }
        }
        let remaining = mine(&refs);
        if !force && !removed_repo_ref && !remaining.is_empty() {
            return Err(ImageError::Conflict(format!(
                "conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories"
            )));
        }
        for r in &remaining {
            refs.remove(r);
            items.push(untag(r));
        }
        if refs != st.refs {
            self.write_refs(&refs)?;
            st.refs = refs;
        }
        if used {
            // Forced while a container uses it: untagged but kept, so the container's rootfs survives.
            tracing::info!(image = %id, "image in use; untagged but not deleted");
            return Ok(items);
        }
        let mp = self.inner.root.join("images").join(format!("{}.json", hex_of(&id)));
        fs::remove_file(&mp).ctx(&mp)?;
        fsync_dir(&self.inner.root.join("images"))?;
        st.images.remove(&id);
        let bp = self.inner.root.join("blobs/sha256").join(hex_of(&id));
        if let Err(e) = fs::remove_file(&bp) {
            tracing::warn!(path = %bp.display(), error = %e, "could not remove config blob");
        }
        items.push(DeleteItem { untagged: None, deleted: Some(id.clone()) });
        for c in self.gc_locked(&mut st)? {
            items.push(DeleteItem { untagged: None, deleted: Some(c) });
        }
        tracing::info!(image = %id, "image deleted");
        Ok(items)
    }

    /// `docker history`, newest first.
    pub fn history(&self, reference: &str) -> Result<Vec<HistoryItem>, ImageError> {
        let st = self.lock();
        let (id, _) = Self::resolve_locked(&st, reference)?;
        let rec = Self::record_locked(&st, &id).ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
        let img = st.images.get(&id).ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
        let sizes: Vec<u64> = img.meta.layers.iter().map(|c| st.layers.get(c).map(|l| l.size).unwrap_or(0)).collect();
        let created_default = rec.created.map(|t| t.timestamp()).unwrap_or(0);
        let mut out = Vec::new();
        let mut li = 0;
        let hist = img.config.get("history").and_then(|h| h.as_array()).cloned().unwrap_or_default();
        if hist.is_empty() {
            for s in &sizes {
                out.push(HistoryItem {
                    id: "<missing>".into(),
                    created: created_default,
                    created_by: String::new(),
                    tags: vec![],
                    size: *s,
                    comment: String::new(),
                });
            }
        } else {
            for h in &hist {
                let empty = h.get("empty_layer").and_then(|v| v.as_bool()).unwrap_or(false);
                let size = if empty {
                    0
                } else {
                    li += 1;
                    sizes.get(li - 1).copied().unwrap_or(0)
                };
                let g = |k: &str| h.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                out.push(HistoryItem {
                    id: "<missing>".into(),
                    created: parse_time(h.get("created")).map(|t| t.timestamp()).unwrap_or(created_default),
                    created_by: g("created_by"),
                    tags: vec![],
                    size,
                    comment: g("comment"),
                });
            }
        }
        out.reverse();
        if let Some(top) = out.first_mut() {
            top.id = id.clone();
            top.tags = rec.repo_tags.clone();
        }
        Ok(out)
    }

    /// Unpacked layer directories, TOP-MOST FIRST (overlayfs lowerdir order).
    pub fn layer_paths(&self, image_id: &str) -> Result<Vec<PathBuf>, ImageError> {
        let st = self.lock();
        let (id, _) = Self::resolve_locked(&st, image_id)?;
        let img = st.images.get(&id).ok_or_else(|| ImageError::NotFound(image_id.to_string()))?;
        img.meta
            .layers
            .iter()
            .rev()
            .map(|c| {
                st.layers
                    .get(c)
                    .map(|l| self.inner.root.join("l").join(&l.dir))
                    .ok_or_else(|| ImageError::Corrupt { path: c.clone(), message: "layer record missing".into() })
            })
            .collect()
    }
}

fn depth(layers: &BTreeMap<String, LayerMeta>, chain: &str) -> usize {
    let mut d = 0;
    let mut cur = layers.get(chain).and_then(|l| l.parent.clone());
    while let Some(p) = cur {
        d += 1;
        if d > 10_000 {
            break;
        }
        cur = layers.get(&p).and_then(|l| l.parent.clone());
    }
    d
}

//! `docker import`: a rootfs tarball becomes a one-layer image.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::{json, Map, Value};

use crate::error::ImageError;
use crate::fsutil::TempDir;
use crate::reference;
use crate::store::{ImageStore, NewLayer};
use crate::unpack::unpack_layer;
use crate::{ImageRecord, ImportOptions};

/// Split a Dockerfile-ish argument: JSON array form or shell form.
fn exec_or_shell(arg: &str) -> Result<Vec<String>, ImageError> {
    let t = arg.trim();
    if t.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Vec<String>>(t) {
            return Ok(v);
        }
    }
    if t.is_empty() {
        return Err(ImageError::InvalidInput("change requires at least one argument".into()));
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), t.into()])
}

/// Split `k=v k2="v 2"` pairs (quotes stripped); a lone `k v` (legacy form) is one pair.
fn kv_pairs(arg: &str, what: &str) -> Result<Vec<(String, String)>, ImageError> {
    let arg = arg.trim();
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"') | (None, '\'') => quote = Some(c),
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            (_, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err(ImageError::InvalidInput(format!("{what}: unterminated quote in {arg:?}")));
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    if words.is_empty() {
        return Err(ImageError::InvalidInput(format!("{what} requires at least one argument")));
    }
    if !words[0].contains('=') {
        // Legacy `ENV key value with spaces`.
        let (k, v) = arg.split_once(char::is_whitespace).unwrap_or((arg, ""));
        return Ok(vec![(k.to_string(), v.trim().to_string())]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(ImageError::InvalidInput(format!("{what} names can not be blank: {w}"))),
        })
        .collect()
}

fn obj<'a>(c: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let e = c.entry(key.to_string()).or_insert_with(|| Value::Object(Map::new()));
    if !e.is_object() {
        *e = Value::Object(Map::new());
    }
    match e {
        Value::Object(m) => m,
        _ => unreachable!("just replaced with an object"),
    }
}

/// Apply `--change` instructions to a container config object.
pub(crate) fn apply_changes(changes: &[String]) -> Result<Map<String, Value>, ImageError> {
    let mut c = Map::new();
    for change in changes {
        let line = change.trim();
        if line.is_empty() {
            continue;
        }
        let (instr, arg) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let arg = arg.trim();
        match instr.to_ascii_uppercase().as_str() {
            "CMD" => {
                c.insert("Cmd".into(), json!(exec_or_shell(arg)?));
            }
            "ENTRYPOINT" => {
                c.insert("Entrypoint".into(), json!(exec_or_shell(arg)?));
            }
            "ENV" => {
                let env = c.entry("Env").or_insert_with(|| json!([]));
                for (k, v) in kv_pairs(arg, "ENV")? {
                    if let Value::Array(a) = env {
                        a.retain(|e| e.as_str().and_then(|s| s.split_once('=')).is_none_or(|(ek, _)| ek != k));
                        a.push(json!(format!("{k}={v}")));
                    }
                }
            }
            "LABEL" => {
                let labels = obj(&mut c, "Labels");
                for (k, v) in kv_pairs(arg, "LABEL")? {
                    labels.insert(k, json!(v));
                }
            }
            "WORKDIR" if !arg.is_empty() => {
                c.insert("WorkingDir".into(), json!(arg));
            }
            "USER" if !arg.is_empty() => {
                c.insert("User".into(), json!(arg));
            }
            "STOPSIGNAL" if !arg.is_empty() => {
                c.insert("StopSignal".into(), json!(arg));
            }
            "EXPOSE" if !arg.is_empty() => {
                let ports = obj(&mut c, "ExposedPorts");
                for p in arg.split_whitespace() {
                    let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                    let proto = proto.to_ascii_lowercase();
                    let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'-');
                    if !valid(port) || !["tcp", "udp", "sctp"].contains(&proto.as_str()) {
                        return Err(ImageError::InvalidInput(format!("invalid port in EXPOSE: {p}")));
                    }
                    ports.insert(format!("{port}/{proto}"), json!({}));
                }
            }
            "VOLUME" if !arg.is_empty() => {
                let list = if arg.starts_with('[') {
                    serde_json::from_str::<Vec<String>>(arg)
                        .map_err(|_| ImageError::InvalidInput(format!("invalid VOLUME: {arg}")))?
                } else {
                    arg.split_whitespace().map(String::from).collect()
                };
                let vols = obj(&mut c, "Volumes");
                for v in list {
                    vols.insert(v, json!({}));
                }
            }
            "WORKDIR" | "USER" | "STOPSIGNAL" | "EXPOSE" | "VOLUME" => {
                return Err(ImageError::InvalidInput(format!("{instr} requires at least one argument")));
            }
            _ => return Err(ImageError::InvalidInput(format!("{instr} is not a valid change command"))),
        }
    }
    Ok(c)
}

impl ImageStore {
    /// `docker import`: `rootfs_tar` may be gzip, zstd or plain (detected by magic).
    pub fn import(&self, rootfs_tar: impl Read, opts: ImportOptions) -> Result<ImageRecord, ImageError> {
        let span = tracing::info_span!("image_import", reference = opts.reference.as_deref().unwrap_or(""));
        let _g = span.enter();
        let tag = opts
            .reference
            .as_deref()
            .filter(|r| !r.is_empty())
            .map(|r| {
                let p = reference::parse(r)?;
                if p.digest.is_some() {
                    return Err(ImageError::InvalidInput(format!("refusing to create a tag with a digest reference: {r}")));
                }
                Ok(p.with_default_tag().full())
            })
            .transpose()?;
        let container_config = apply_changes(&opts.changes)?;
        let dir = TempDir::new(&self.tmp_dir(), "import")?;
        let un = unpack_layer(rootfs_tar, &dir.path, "import")?;
        if un.tar_len == 0 {
            return Err(ImageError::InvalidInput("import: the rootfs archive is empty".into()));
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let comment = opts.message.clone().unwrap_or_default();
        let mut config = BTreeMap::new();
        config.insert("architecture", json!(opts.architecture.clone().filter(|a| !a.is_empty()).unwrap_or_else(|| "amd64".into())));
        config.insert("os", json!(opts.os.clone().filter(|o| !o.is_empty()).unwrap_or_else(|| "linux".into())));
        config.insert("created", json!(now));
        config.insert("comment", json!(comment));
        config.insert("config", Value::Object(container_config));
        config.insert(
            "history",
            json!([{ "created": now, "created_by": "", "comment": if comment.is_empty() { "Imported from -".to_string() } else { comment.clone() } }]),
        );
        config.insert("rootfs", json!({ "type": "layers", "diff_ids": [un.diff_id] }));
        let raw = serde_json::to_vec(&config).map_err(|e| ImageError::InvalidInput(e.to_string()))?;
        let chains = vec![un.diff_id.clone()];
        let mut pins = self.new_pins();
        let new_layers = if self.pin_layer(&mut pins, &un.diff_id) {
            Vec::new()
        } else {
            vec![NewLayer { chain_id: un.diff_id.clone(), diff_id: un.diff_id.clone(), size: un.size, dir }]
        };
        let refs: Vec<String> = tag.into_iter().collect();
        let id = self.commit_image(&raw, &chains, new_layers, &refs)?;
        tracing::info!(image = %id, "imported");
        self.record(&id)
    }
}

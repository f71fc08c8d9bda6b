//! Registry pulls over the OCI distribution protocol (v2 API) with a small hyper-based client.
//!
//! Plain HTTP for `localhost` and 127.0.0.0/8 / ::1 registries (Docker treats those as insecure by
//! default), HTTPS (rustls, ring) otherwise. Anonymous bearer-token auth, redirects (blob CDNs),
//! manifest lists / OCI indexes (linux/amd64 is picked), digest verification of every blob.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::archive::{is_index, pick_platform, Index, Manifest};
use crate::error::{ImageError, IoCtx};
use crate::fsutil::TempDir;
use crate::reference::{self, is_digest, Reference};
use crate::store::{chain_ids, config_diff_ids, ImageStore};
use crate::unpack::sha256_hex;
use crate::{ImageRecord, PullProgress};

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";
const META_LIMIT: usize = 16 << 20;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, Clone, PartialEq)]
struct Url {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

impl Url {
    fn parse(s: &str) -> Result<Url, ImageError> {
        let bad = || ImageError::InvalidInput(format!("invalid url: {s}"));
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let (h, p) = h.split_once(']').ok_or_else(bad)?;
            (format!("[{h}]"), p.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if https => 443,
            None => 80,
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Url { https, host, port, path })
    }

    fn origin(&self) -> String {
        format!("{}://{}:{}", if self.https { "https" } else { "http" }, self.host, self.port)
    }

    fn join(&self, location: &str) -> Result<Url, ImageError> {
        if location.starts_with("http://") || location.starts_with("https://") {
            Url::parse(location)
        } else if location.starts_with('/') {
            Ok(Url { path: location.to_string(), ..self.clone() })
        } else {
            Err(ImageError::InvalidInput(format!("unsupported redirect location: {location}")))
        }
    }
}

fn is_insecure_host(domain: &str) -> bool {
    let host = match domain.strip_prefix('[') {
        Some(r) => r.split(']').next().unwrap_or(""),
        None => domain.rsplit_once(':').map(|(h, _)| h).unwrap_or(domain),
    };
    host == "localhost"
        || host == "::1"
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

fn registry_base(domain: &str) -> String {
    if domain == reference::DEFAULT_DOMAIN {
        "https://registry-1.docker.io".into()
    } else if is_insecure_host(domain) {
        format!("http://{domain}")
    } else {
        format!("https://{domain}")
    }
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CFG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        use rustls::pki_types::pem::PemObject;
        for bundle in ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"] {
            if let Ok(iter) = rustls::pki_types::CertificateDer::pem_file_iter(bundle) {
                for cert in iter.flatten() {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
            Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
            Err(e) => {
                tracing::error!(error = %e, "rustls provider lacks safe protocol versions");
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map(|b| b.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
                    .unwrap_or_else(|_| unreachable!("ring supports TLS 1.3"))
            }
        };
        Arc::new(cfg)
    })
    .clone()
}

/// Parse `Bearer realm="..",service="..",scope=".."` into key/value pairs.
fn parse_challenge(h: &str) -> Option<(String, Vec<(String, String)>)> {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next().is_none() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n)
                        }
                    }
                    c => val.push(c),
                }
            }
        } else {
            val = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        params.push((key.trim().to_ascii_lowercase(), val));
    }
    Some((scheme.to_ascii_lowercase(), params))
}

fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Client {
    reference: String,
    base: Url,
    repo: String,
    token: Option<String>,
}

impl Client {
    fn err(&self, msg: impl Into<String>) -> ImageError {
        ImageError::Registry { reference: self.reference.clone(), message: msg.into() }
    }

    async fn send_once(&self, url: &Url, accept: Option<&str>, auth: Option<&str>) -> Result<Response<Incoming>, ImageError> {
        let addr = (url.host.trim_start_matches('[').trim_end_matches(']'), url.port);
        let tcp = TcpStream::connect(addr).await.map_err(|e| self.err(format!("connect {}: {e}", url.origin())))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if url.https {
            let name = rustls::pki_types::ServerName::try_from(url.host.trim_start_matches('[').trim_end_matches(']').to_string())
                .map_err(|e| self.err(format!("invalid tls server name {}: {e}", url.host)))?;
            let tls = tokio_rustls::TlsConnector::from(tls_config())
                .connect(name, tcp)
                .await
                .map_err(|e| self.err(format!("tls handshake with {}: {e}", url.origin())))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.err(format!("http handshake with {}: {e}", url.origin())))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "registry connection ended with error");
            }
        });
        let host_header = if (url.https && url.port == 443) || (!url.https && url.port == 80) {
            url.host.clone()
        } else {
            format!("{}:{}", url.host, url.port)
        };
        let mut req = Request::get(url.path.as_str())
            .header(hyper::header::HOST, host_header)
            .header(hyper::header::USER_AGENT, "shoal/0.1");
        if let Some(a) = accept {
            req = req.header(hyper::header::ACCEPT, a);
        }
        if let Some(t) = auth {
            req = req.header(hyper::header::AUTHORIZATION, t);
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| self.err(format!("building request: {e}")))?;
        sender.send_request(req).await.map_err(|e| self.err(format!("request {}{}: {e}", url.origin(), url.path)))
    }

    async fn fetch_token(&mut self, challenge: &str) -> Result<(), ImageError> {
        let Some((scheme, params)) = parse_challenge(challenge) else {
            return Err(self.err("unparseable WWW-Authenticate challenge"));
        };
        if scheme != "bearer" {
            return Err(self.err(format!("registry requires {scheme} authentication; credentials are not supported")));
        }
        let get = |k: &str| params.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or_else(|| self.err("bearer challenge without realm"))?;
        let scope = get("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repo));
        let mut q = format!("scope={}", pct(&scope));
        if let Some(s) = get("service") {
            q = format!("service={}&{q}", pct(&s));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url = Url::parse(&format!("{realm}{sep}{q}"))?;
        let resp = self.send_once(&url, None, None).await?;
        let status = resp.status();
        let body = collect(resp, META_LIMIT).await.map_err(|e| self.err(format!("token response: {e}")))?;
        if !status.is_success() {
            return Err(ImageError::RegistryStatus {
                url: realm,
                status: status.as_u16(),
                message: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| self.err(format!("token response: {e}")))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| self.err("token response without token"))?;
        self.token = Some(format!("Bearer {token}"));
        tracing::debug!(realm = %url.host, "obtained anonymous registry token");
        Ok(())
    }

    /// GET `path` (under /v2/<repo>/), handling auth and redirects; returns a 2xx response.
    async fn get(&mut self, path: &str, accept: Option<&str>) -> Result<Response<Incoming>, ImageError> {
        let mut url = Url { path: format!("/v2/{}/{path}", self.repo), ..self.base.clone() };
        let mut authed = false;
        for _ in 0..8 {
            let same_origin = url.origin() == self.base.origin();
            let auth = if same_origin { self.token.clone() } else { None };
            let resp = self.send_once(&url, accept, auth.as_deref()).await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && same_origin && !authed {
                let ch = resp
                    .headers()
                    .get(hyper::header::WWW_AUTHENTICATE)
                    .and_then(|h| h.to_str().ok())
                    .map(String::from)
                    .ok_or_else(|| self.err("401 without WWW-Authenticate"))?;
                self.fetch_token(&ch).await?;
                authed = true;
                continue;
            }
            if status.is_redirection() {
                let loc = resp
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|h| h.to_str().ok())
                    .ok_or_else(|| self.err("redirect without location"))?
                    .to_string();
                url = url.join(&loc)?;
                continue;
            }
            if !status.is_success() {
                let shown = format!("{}{}", url.origin(), url.path);
                let body = collect(resp, 64 * 1024).await.unwrap_or_default();
                let msg: String = String::from_utf8_lossy(&body).chars().take(300).collect();
                return Err(match status {
                    StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ImageError::RegistryStatus {
                        url: shown,
                        status: 404,
                        message: format!("pull access denied or manifest unknown for {}: {}", self.reference, msg.trim()),
                    },
                    s => ImageError::RegistryStatus { url: shown, status: s.as_u16(), message: msg.trim().to_string() },
                });
            }
            return Ok(resp);
        }
        Err(self.err("too many redirects"))
    }

    async fn get_verified(&mut self, path: &str, accept: Option<&str>, digest: Option<&str>) -> Result<(Vec<u8>, String), ImageError> {
        let resp = self.get(path, accept).await?;
        let ct = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let body = collect(resp, META_LIMIT).await.map_err(|e| self.err(format!("reading {path}: {e}")))?;
        if let Some(d) = digest {
            let actual = format!("sha256:{}", sha256_hex(&body));
            if actual != d {
                return Err(ImageError::DigestMismatch { what: path.to_string(), expected: d.to_string(), actual });
            }
        }
        Ok((body, ct))
    }
}

async fn collect(resp: Response<Incoming>, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
            if out.len() > limit {
                return Err("response too large".into());
            }
        }
    }
    Ok(out)
}

fn join_err(e: tokio::task::JoinError) -> ImageError {
    ImageError::Corrupt { path: "pull".into(), message: format!("background task failed: {e}") }
}

impl ImageStore {
    /// Pull `reference` from its registry (OCI distribution protocol).
    pub async fn pull(&self, reference: &str, progress: &mut (dyn FnMut(PullProgress) + Send)) -> Result<ImageRecord, ImageError> {
        use tracing::Instrument;
        let span = tracing::info_span!("image_pull", reference);
        self.pull_inner(reference, progress).instrument(span).await
    }

    async fn pull_inner(&self, reference: &str, progress: &mut (dyn FnMut(PullProgress) + Send)) -> Result<ImageRecord, ImageError> {
        let r: Reference = reference::parse(reference)?.with_default_tag();
        progress(PullProgress::Resolving);
        let base = Url::parse(&registry_base(&r.domain))?;
        let mut client = Client { reference: reference.to_string(), base, repo: r.path.clone(), token: None };
        let target = r.digest.clone().or_else(|| r.tag.clone()).unwrap_or_else(|| "latest".into());
        let (mut raw, mut ct) =
            client.get_verified(&format!("manifests/{target}"), Some(ACCEPT_MANIFESTS), r.digest.as_deref()).await?;
        let top_digest = format!("sha256:{}", sha256_hex(&raw));
        for _ in 0..4 {
            let v: serde_json::Value =
                serde_json::from_slice(&raw).map_err(|e| client.err(format!("invalid manifest: {e}")))?;
            let mt = v.get("mediaType").and_then(|m| m.as_str()).map(String::from).unwrap_or(ct.clone());
            if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
                return Err(client.err("schema 1 manifests are not supported"));
            }
            if !(is_index(&mt) || (v.get("manifests").is_some() && v.get("layers").is_none())) {
                break;
            }
            let idx: Index = serde_json::from_slice(&raw).map_err(|e| client.err(format!("invalid index: {e}")))?;
            let d = pick_platform(&idx.manifests, reference)?.digest.clone();
            if !is_digest(&d) {
                return Err(client.err(format!("unsupported digest {d}")));
            }
            (raw, ct) = client.get_verified(&format!("manifests/{d}"), Some(ACCEPT_MANIFESTS), Some(&d)).await?;
        }
        let manifest: Manifest = serde_json::from_slice(&raw).map_err(|e| client.err(format!("invalid image manifest: {e}")))?;
        if !is_digest(&manifest.config.digest) {
            return Err(client.err(format!("unsupported config digest {}", manifest.config.digest)));
        }
        let (config_raw, _) =
            client.get_verified(&format!("blobs/{}", manifest.config.digest), None, Some(&manifest.config.digest)).await?;
        let config: serde_json::Value =
            serde_json::from_slice(&config_raw).map_err(|e| client.err(format!("invalid image config: {e}")))?;
        let diff_ids = config_diff_ids(&config, &manifest.config.digest)?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(client.err(format!(
                "config lists {} layers but the manifest lists {}",
                diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        let mut pins = self.new_pins();
        let work = TempDir::new(&self.tmp_dir(), "pull")?;
        let mut new_layers = Vec::new();
        for (i, desc) in manifest.layers.iter().enumerate() {
            if !is_digest(&desc.digest) {
                return Err(client.err(format!("unsupported layer digest {}", desc.digest)));
            }
            let short: String = desc.digest[7..19].to_string();
            if self.pin_layer(&mut pins, &chains[i]) {
                progress(PullProgress::LayerExists { id: short });
                continue;
            }
            progress(PullProgress::LayerStart { id: short.clone(), size: desc.size });
            let path = work.path.join(&desc.digest[7..]);
            let resp = client.get(&format!("blobs/{}", desc.digest), None).await?;
            let mut body = resp.into_body();
            let mut file = File::create(&path).ctx(&path)?;
            let mut hasher = Sha256::new();
            let mut current: u64 = 0;
            let mut last_report: u64 = 0;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| client.err(format!("downloading {}: {e}", desc.digest)))?;
                if let Ok(data) = frame.into_data() {
                    hasher.update(&data);
                    file.write_all(&data).ctx(&path)?;
                    current += data.len() as u64;
                    if desc.size > 0 && current > desc.size {
                        return Err(client.err(format!("blob {} is larger than its descriptor says", desc.digest)));
                    }
                    if current - last_report >= 512 * 1024 {
                        last_report = current;
                        progress(PullProgress::LayerProgress { id: short.clone(), current, total: desc.size });
                    }
                }
            }
            file.sync_all().ctx(&path)?;
            drop(file);
            progress(PullProgress::LayerProgress { id: short.clone(), current, total: desc.size });
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if actual != desc.digest {
                return Err(ImageError::DigestMismatch { what: format!("layer blob {}", desc.digest), expected: desc.digest.clone(), actual });
            }
            let store = self.clone();
            let (chain, diff, digest) = (chains[i].clone(), diff_ids[i].clone(), desc.digest.clone());
            let layer = tokio::task::spawn_blocking(move || {
                let f = File::open(&path).ctx(&path)?;
                let res = store.unpack_new_layer(f, &chain, &diff, Some(&digest), &digest);
                let _ = std::fs::remove_file(&path);
                res
            })
            .await
            .map_err(join_err)??;
            new_layers.push(layer);
            progress(PullProgress::LayerDone { id: short });
        }
        let mut refs = vec![format!("{}@{}", r.name(), top_digest)];
        if r.digest.is_none() {
            refs.push(r.full());
        }
        let store = self.clone();
        let id = tokio::task::spawn_blocking(move || {
            let res = store.commit_image(&config_raw, &chains, new_layers, &refs);
            drop(pins);
            drop(work);
            res
        })
        .await
        .map_err(join_err)??;
        tracing::info!(image = %id, reference = %r.full(), digest = %top_digest, "pulled");
        progress(PullProgress::Digest(top_digest));
        progress(PullProgress::Done);
        self.record(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_challenges() {
        let u = Url::parse("http://127.0.0.1:5000/v2/").unwrap();
        assert_eq!((u.https, u.host.as_str(), u.port, u.path.as_str()), (false, "127.0.0.1", 5000, "/v2/"));
        let u = Url::parse("https://auth.docker.io/token?x=1").unwrap();
        assert_eq!((u.port, u.path.as_str()), (443, "/token?x=1"));
        assert!(is_insecure_host("127.0.0.1:5000") && is_insecure_host("localhost") && !is_insecure_host("ghcr.io"));
        let (s, p) =
            parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#)
                .unwrap();
        assert_eq!(s, "bearer");
        assert_eq!(p[2], ("scope".to_string(), "repository:a/b:pull,push".to_string()));
        assert_eq!(pct("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}

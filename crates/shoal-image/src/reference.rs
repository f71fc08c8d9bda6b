//! Docker image reference parsing and normalisation (`busybox` => `docker.io/library/busybox:latest`).

use crate::error::ImageError;

pub(crate) const DEFAULT_DOMAIN: &str = "docker.io";
pub(crate) const DEFAULT_TAG: &str = "latest";

/// A parsed, normalised reference: `domain/path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// `docker.io/library/busybox` (no tag/digest).
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// Familiar name: `busybox`, `myorg/app`, `127.0.0.1:5000/x`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            match self.path.strip_prefix("library/") {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.path.clone(),
            }
        } else {
            self.name()
        }
    }

    /// Full string with tag defaulted to `latest` when neither tag nor digest is given.
    pub fn with_default_tag(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    /// Full normalised form: `docker.io/library/busybox:latest` or `...@sha256:..`.
    pub fn full(&self) -> String {
        let mut s = self.name();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

/// Render a stored full reference (`docker.io/library/busybox:latest`) in familiar form.
pub(crate) fn familiar(full: &str) -> String {
    match parse(full) {
        Ok(r) => {
            let mut s = r.familiar_name();
            if let Some(t) = &r.tag {
                s.push(':');
                s.push_str(t);
            }
            if let Some(d) = &r.digest {
                s.push('@');
                s.push_str(d);
            }
            s
        }
        Err(_) => full.to_string(),
    }
}

pub(crate) fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Validates `sha256:<64 lower hex>`.
pub(crate) fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && is_hex(h))
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // separator run
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_domain(d: &str) -> bool {
    // host[:port], host = labels of [a-zA-Z0-9-] separated by '.', or [ipv6]
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => {
                if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                    return false;
                }
                (None, p.strip_prefix(':').map(Some).unwrap_or(if p.is_empty() { None } else { Some("x") }))
            }
            None => return false,
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(h) = host {
        if h.is_empty() {
            return false;
        }
        for label in h.split('.') {
            let lb = label.as_bytes();
            if lb.is_empty()
                || !lb.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                || lb[0] == b'-'
                || lb[lb.len() - 1] == b'-'
            {
                return false;
            }
        }
    }
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    // [\w][\w.-]{0,127}
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'_' || *x == b'.' || *x == b'-')
}

/// Parse and normalise a reference the way `reference.ParseNormalizedNamed` does.
pub(crate) fn parse(input: &str) -> Result<Reference, ImageError> {
    let bad = || ImageError::InvalidReference(format!("\"{input}\" is not a valid reference"));
    if input.is_empty() || input.len() > 512 {
        return Err(bad());
    }
    if input.len() == 64 && is_hex(input) {
        return Err(ImageError::InvalidReference(format!(
            "invalid repository name ({input}), cannot specify 64-byte hexadecimal strings"
        )));
    }
    let (rest, digest) = match input.split_once('@') {
        Some((r, d)) => {
            if !is_digest(d) {
                return Err(bad());
            }
            (r, Some(d.to_string()))
        }
        None => (input, None),
    };
    // The tag is after the last ':' that comes after the last '/'.
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let t = &rest[last_slash + i + 1..];
            if !valid_tag(t) {
                return Err(bad());
            }
            (&rest[..last_slash + i], Some(t.to_string()))
        }
        None => (rest, None),
    };
    if name.is_empty() {
        return Err(bad());
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, remainder))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first.to_string(), remainder.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" { DEFAULT_DOMAIN.to_string() } else { domain };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') { format!("library/{path}") } else { path };
    if !valid_domain(&domain) {
        return Err(bad());
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ImageError::InvalidReference(format!("repository name ({path}) must be lowercase")));
    }
    if path.is_empty() || !path.split('/').all(valid_component) || domain.len() + path.len() > 255 {
        return Err(bad());
    }
    Ok(Reference { domain, path, tag, digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = parse("busybox").unwrap().with_default_tag();
        assert_eq!(r.full(), "docker.io/library/busybox:latest");
        assert_eq!(familiar(&r.full()), "busybox:latest");
        let r = parse("127.0.0.1:5000/x:tag").unwrap();
        assert_eq!(r.full(), "127.0.0.1:5000/x:tag");
        assert_eq!(familiar(&r.full()), "127.0.0.1:5000/x:tag");
        let r = parse("myorg/app:1").unwrap();
        assert_eq!(r.full(), "docker.io/myorg/app:1");
        assert_eq!(familiar(&r.full()), "myorg/app:1");
        let r = parse("localhost/a/b").unwrap();
        assert_eq!(r.domain, "localhost");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.tag, None);
        let r = parse("[::1]:5000/foo:bar").unwrap();
        assert_eq!(r.domain, "[::1]:5000");
    }

    #[test]
    fn rejects_bad_references() {
        let e = parse("Busybox").unwrap_err();
        assert_eq!(e.to_string(), "invalid reference format: repository name (library/Busybox) must be lowercase");
        for bad in ["", "a:", ":x", "a b", "foo/../bar", "x@sha256:zz", "-a", "a//b", "a:-tag", &"a".repeat(64)] {
            assert!(parse(bad).is_err(), "{bad:?} should be invalid");
        }
    }
}

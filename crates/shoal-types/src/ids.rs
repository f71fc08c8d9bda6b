//! Swarm IDs, join tokens and unlock keys (swarmkit `identity/randomid.go`, `ca/config.go`,
//! `manager/encryption`).

use rand::RngCore;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Render a big-endian unsigned integer in lowercase base 36 without leading zeros
/// (`"0"` for zero), like Go's `big.Int.Text(36)`.
pub fn base36(bytes: &[u8]) -> String {
    // Repeated long division of the big-endian byte number by 36.
    let mut num: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut digits = Vec::new();
    while !num.is_empty() {
        let mut rem: u32 = 0;
        let mut out = Vec::with_capacity(num.len());
        for &b in &num {
            let cur = (rem << 8) | b as u32;
            let q = cur / 36;
            rem = cur % 36;
            if !(out.is_empty() && q == 0) {
                out.push(q as u8);
            }
        }
        digits.push(ALPHABET[rem as usize]);
        num = out;
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).expect("ascii")
}

fn pad_left(s: String, width: usize) -> String {
    if s.len() >= width {
        s
    } else {
        format!("{}{}", "0".repeat(width - s.len()), s)
    }
}

/// ID from 17 given bytes (high bit forced on), rendered base 36, first char dropped, 25 chars.
pub fn id_from_bytes(mut p: [u8; 17]) -> String {
    p[0] |= 0x80;
    let s = base36(&p);
    s[1..26].to_string()
}

/// A fresh swarm object ID: 25 chars of `[0-9a-z]` (swarmkit `identity.NewID`).
pub fn new_id() -> String {
    let mut p = [0u8; 17];
    rand::thread_rng().fill_bytes(&mut p);
    id_from_bytes(p)
}

/// True if `s` looks like a swarm object ID (25 chars of `[0-9a-z]`).
pub fn is_id(s: &str) -> bool {
    s.len() == 25
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// 16 random bytes for a join-token secret.
pub fn new_token_secret() -> [u8; 16] {
    let mut s = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut s);
    s
}

/// `SWMTKN-1-<sha256(root CA cert) base36, 0-padded to 50>-<secret base36, 0-padded to 25>`.
/// The caller computes the digest (this crate has no sha256).
pub fn join_token(ca_digest: &[u8; 32], secret: &[u8; 16]) -> String {
    format!(
        "SWMTKN-1-{}-{}",
        pad_left(base36(ca_digest), 50),
        pad_left(base36(secret), 25)
    )
}

/// Parsed pieces of a join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedJoinToken {
    /// Base-36 CA digest part (50 chars).
    pub ca_digest: String,
    /// Base-36 secret part (25 chars).
    pub secret: String,
}

/// Split a `SWMTKN-1-<digest>-<secret>` token; `None` if malformed.
pub fn parse_join_token(token: &str) -> Option<ParsedJoinToken> {
    let rest = token.strip_prefix("SWMTKN-1-")?;
    let (d, s) = rest.split_once('-')?;
    let ok = |x: &str, n: usize| {
        x.len() == n
            && x.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    if !ok(d, 50) || !ok(s, 25) {
        return None;
    }
    Some(ParsedJoinToken {
        ca_digest: d.into(),
        secret: s.into(),
    })
}

/// 32 random bytes for an unlock (KEK) key.
pub fn new_unlock_secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut s);
    s
}

/// Human-readable unlock key: `SWMKEY-1-` + unpadded standard base64 (swarmkit `HumanReadableKey`).
/// Empty secret → empty string.
pub fn unlock_key(secret: &[u8]) -> String {
    if secret.is_empty() {
        return String::new();
    }
    format!("SWMKEY-1-{}", base64_raw_std(secret))
}

/// Inverse of [`unlock_key`].
pub fn parse_unlock_key(key: &str) -> Option<Vec<u8>> {
    base64_decode(key.strip_prefix("SWMKEY-1-")?)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (Go `encoding/json` encoding of `[]byte`).
pub fn base64_std(data: &[u8]) -> String {
    let mut s = base64_raw_std(data);
    let pad = (4 - s.len() % 4) % 4;
    s.push_str(&"=".repeat(pad));
    s
}

/// Standard base64 without padding.
pub fn base64_raw_std(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Decode standard base64, padded or not. `None` on invalid input.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return None;
    }
    Some(out)
}

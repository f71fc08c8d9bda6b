//! Sessions, cookies, CSRF tokens and login throttling.
//!
//! A session is created by a successful login: a random 32-byte token (base64url) in an
//! `HttpOnly; SameSite=Strict` cookie, and a second random token for CSRF that every form
//! carries and every POST must echo. Sessions end after [`IDLE_TIMEOUT`] without a request, or
//! [`MAX_AGE`] after login, at logout, and (all of them) when the credential changes.
//! Sessions live in this manager's memory only: a login is per manager, and a restarted
//! daemon asks again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ring::rand::SecureRandom;

pub const COOKIE: &str = "shoal_session";
/// A session ends after this long without a request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// ... and this long after login in any case.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// At most this many sessions; the least recently used goes first.
const MAX_SESSIONS: usize = 1000;

/// A message shown once on the next page (after a redirect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub error: bool,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
    pub flash: Option<Flash>,
}

/// What a request's session lookup found.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub token: String,
    pub csrf: String,
    pub flash: Option<Flash>,
}

/// Random bytes as unpadded base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // The system RNG never fails on Linux; fall back to the thread RNG's bytes all the same.
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (Instant::now().elapsed().as_nanos() as u8).wrapping_add(i as u8);
        }
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Equality that takes the same time wherever the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The session cookie's value from a `Cookie` header.
pub fn cookie_token(header: Option<&str>) -> Option<String> {
    header?
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value for a new session.
pub fn session_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        MAX_AGE.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// This manager's sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session; returns its token.
    pub fn create(&self) -> String {
        self.create_at(Instant::now())
    }

    fn create_at(&self, now: Instant) -> String {
        let token = random_token();
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| alive(s, now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            token.clone(),
            Session {
                csrf: random_token(),
                created: now,
                last_seen: now,
                flash: None,
            },
        );
        token
    }

    /// The live session for `token` (its idle time restarts); an expired one is removed. The
    /// flash message is taken out.
    pub fn touch(&self, token: &str) -> Option<SessionView> {
        self.touch_at(token, Instant::now())
    }

    fn touch_at(&self, token: &str, now: Instant) -> Option<SessionView> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let session = map.get_mut(token)?;
        if !alive(session, now) {
            map.remove(token);
            return None;
        }
        session.last_seen = now;
        Some(SessionView {
            token: token.to_string(),
            csrf: session.csrf.clone(),
            flash: session.flash.take(),
        })
    }

    /// Whether `given` is the CSRF token of the live session `token`.
    pub fn check_csrf(&self, token: &str, given: &str) -> bool {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(token).is_some_and(|s| {
            alive(s, Instant::now()) && constant_time_eq(s.csrf.as_bytes(), given.as_bytes())
        })
    }

    /// Whether `token` names a live session (without extending it).
    pub fn is_alive(&self, token: &str) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .is_some_and(|s| alive(s, Instant::now()))
    }

    pub fn set_flash(&self, token: &str, flash: Flash) {
        if let Some(s) = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(token)
        {
            s.flash = Some(flash);
        }
    }

    pub fn remove(&self, token: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// Ends every session but `keep` (after a credential change).
    pub fn remove_others(&self, keep: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| k == keep);
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.saturating_duration_since(s.last_seen) < IDLE_TIMEOUT
        && now.saturating_duration_since(s.created) < MAX_AGE
}

/// Failed logins per client address: each failure in the last minutes makes the next attempt
/// from there wait longer (up to 5 s), so guessing is slow even before PBKDF2's cost.
#[derive(Debug, Default)]
pub struct Throttle {
    inner: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

const THROTTLE_WINDOW: Duration = Duration::from_secs(300);

impl Throttle {
    /// How long a login attempt from `ip` waits before it is checked.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&ip) {
            Some((n, at)) if at.elapsed() < THROTTLE_WINDOW => {
                Duration::from_millis((250 * u64::from(*n)).min(5000))
            }
            _ => Duration::ZERO,
        }
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, at)| at.elapsed() < THROTTLE_WINDOW);
        let e = map.entry(ip).or_insert((0, Instant::now()));
        e.0 = e.0.saturating_add(1);
        e.1 = Instant::now();
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn sessions_expire_when_idle_and_when_old() {
        let s = Sessions::default();
        let t0 = Instant::now();
        let tok = s.create_at(t0);
        assert!(s.touch_at(&tok, t0 + Duration::from_secs(60)).is_some());
        // Idle for less than the timeout, repeatedly: stays alive.
        let mut t = t0;
        for _ in 0..3 {
            t += IDLE_TIMEOUT - Duration::from_secs(1);
            assert!(s.touch_at(&tok, t).is_some());
        }
        // Idle past the timeout: gone, and stays gone.
        assert!(s.touch_at(&tok, t + IDLE_TIMEOUT).is_none());
        assert!(s.touch_at(&tok, t).is_none());
        // Old sessions end even when used.
        let tok = s.create_at(t0);
        let mut t = t0;
        while t < t0 + MAX_AGE - IDLE_TIMEOUT {
            t += IDLE_TIMEOUT / 2;
            assert!(s.touch_at(&tok, t).is_some());
        }
        assert!(s.touch_at(&tok, t0 + MAX_AGE).is_none());
        assert!(s.touch_at("unknown", t0).is_none());
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let s = Sessions::default();
        let a = s.create();
        let b = s.create();
        let csrf_a = s.touch(&a).unwrap().csrf;
        let csrf_b = s.touch(&b).unwrap().csrf;
        assert_ne!(csrf_a, csrf_b);
        assert!(s.check_csrf(&a, &csrf_a));
        assert!(!s.check_csrf(&a, &csrf_b));
        assert!(!s.check_csrf(&a, ""));
        assert!(!s.check_csrf("nope", &csrf_a));
        s.remove(&a);
        assert!(!s.check_csrf(&a, &csrf_a));
        s.remove_others(&b);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn flash_messages_show_once() {
        let s = Sessions::default();
        let a = s.create();
        s.set_flash(
            &a,
            Flash {
                error: true,
                text: "boom".into(),
            },
        );
        assert_eq!(
            s.touch(&a).unwrap().flash.map(|f| f.text),
            Some("boom".into())
        );
        assert!(s.touch(&a).unwrap().flash.is_none());
    }

    #[test]
    fn cookies_parse_and_are_strict() {
        assert_eq!(
            cookie_token(Some("a=b; shoal_session=tok123; c=d")),
            Some("tok123".into())
        );
        assert_eq!(cookie_token(Some("shoal_session=")), None);
        assert_eq!(cookie_token(None), None);
        let c = session_cookie("x");
        assert!(
            c.contains("HttpOnly")
                && c.contains("SameSite=Strict")
                && c.starts_with("shoal_session=x;")
        );
        assert!(
            constant_time_eq(b"abc", b"abc")
                && !constant_time_eq(b"abc", b"abd")
                && !constant_time_eq(b"abc", b"ab")
        );
    }

    #[test]
    fn failed_logins_slow_down_the_next_attempt() {
        let t = Throttle::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(t.delay(ip), Duration::ZERO);
        t.failed(ip);
        t.failed(ip);
        assert_eq!(t.delay(ip), Duration::from_millis(500));
        for _ in 0..100 {
            t.failed(ip);
        }
        assert_eq!(t.delay(ip), Duration::from_secs(5));
        t.succeeded(ip);
        assert_eq!(t.delay(ip), Duration::ZERO);
    }
}

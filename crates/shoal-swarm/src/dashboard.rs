//! What the web dashboard (crate `shoal-dashboard`) needs from the swarm and may not reach
//! itself: the dashboard credential kept with the cluster, a feed of committed changes, and
//! whether this node runs as a manager.
//!
//! The credential is created at `swarm init` (20 characters of base32, 100 random bits), stored
//! only as a PBKDF2-HMAC-SHA256 hash in the cluster's store-only secrets (replicated, so every
//! manager checks logins), and its plaintext is written to `<data-root>/swarm/dashboard-credential`
//! (mode 0600) on the manager that created it, for `shoal dashboard credentials`. A manager that
//! joined later, or a credential changed from the dashboard, has no plaintext file: a reset
//! (`shoal dashboard credentials --reset`) sets a new random one and writes the file there.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use rand::RngCore;
use tokio::sync::broadcast;

use shoal_types::{AnyObject, Cluster};

use crate::error::{Result, SwarmError};
use crate::managers::ControlOp;
use crate::Swarm;

/// The plaintext credential's file name under `<data-root>/swarm`.
pub const CREDENTIAL_FILE: &str = "dashboard-credential";
/// PBKDF2 rounds: ~50 ms per check on these machines, so guessing is slow and a login still quick.
const PBKDF2_ITERATIONS: u32 = 60_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
/// The shortest credential a user may choose.
pub const MIN_CREDENTIAL_LEN: usize = 12;

/// A new random credential: 20 characters of RFC 4648 base32 (100 bits).
pub fn new_credential() -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bytes = [0u8; 20];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect()
}

/// `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>` of `credential` with a fresh salt.
pub fn hash_credential(credential: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::thread_rng().fill_bytes(&mut salt);
    hash_with(credential, PBKDF2_ITERATIONS, &salt)
}

fn hash_with(credential: &str, iterations: u32, salt: &[u8]) -> String {
    let mut out = [0u8; HASH_LEN];
    let rounds = std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt,
        credential.as_bytes(),
        &mut out,
    );
    format!("pbkdf2-sha256${iterations}${}${}", hex(salt), hex(&out))
}

/// Whether `candidate` matches the stored hash (constant time in the hash comparison). A
/// malformed or empty stored value matches nothing.
pub fn verify_credential(stored: &str, candidate: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let [scheme, iterations, salt, hash] = parts.as_slice() else {
        return false;
    };
    if *scheme != "pbkdf2-sha256" {
        return false;
    }
    let (Some(iterations), Some(salt), Some(hash)) = (
        iterations
            .parse::<u32>()
            .ok()
            .and_then(std::num::NonZeroU32::new),
        unhex(salt),
        unhex(hash),
    ) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        candidate.as_bytes(),
        &hash,
    )
    .is_ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.is_empty() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What a store commit did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeAction {
    Create,
    Update,
    Delete,
}

/// One changed object (for a deletion, the object that was removed). A cluster object comes
/// without its store-only secrets.
#[derive(Debug, Clone)]
pub struct ObjectChange {
    pub action: ChangeAction,
    pub object: Arc<AnyObject>,
}

/// What [`ChangeFeed::next`] yields.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// The changes of one commit, in order.
    Changes {
        index: u64,
        changes: Vec<ObjectChange>,
    },
    /// The reader fell behind and missed commits: re-read what it shows.
    Missed(u64),
}

/// Every commit of this manager's replica from the moment it was created; ends when the store
/// stops (the node left the swarm or stopped being a manager).
pub struct ChangeFeed {
    rx: broadcast::Receiver<Arc<shoal_store::Commit>>,
}

impl ChangeFeed {
    pub async fn next(&mut self) -> Option<FeedItem> {
        match self.rx.recv().await {
            Ok(commit) => {
                let changes = commit
                    .changes
                    .iter()
                    .map(|c| ObjectChange {
                        action: match c.action {
                            shoal_store::Action::Create => ChangeAction::Create,
                            shoal_store::Action::Update => ChangeAction::Update,
                            shoal_store::Action::Delete => ChangeAction::Delete,
                        },
                        object: match c.object.as_ref() {
                            AnyObject::Cluster(cluster) => {
                                Arc::new(AnyObject::Cluster(cluster.public()))
                            }
                            _ => c.object.clone(),
                        },
                    })
                    .collect();
                Some(FeedItem::Changes {
                    index: commit.index,
                    changes,
                })
            }
            Err(broadcast::error::RecvError::Lagged(n)) => Some(FeedItem::Missed(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Swarm {
    /// The feed of committed changes of this manager's replica.
    pub fn changes(&self) -> Result<ChangeFeed> {
        let (_, rx) = self.store()?.watch();
        Ok(ChangeFeed { rx })
    }

    /// Whether this node runs as a manager now; changes when it joins, leaves, is promoted or
    /// demoted.
    pub fn manager_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.manager_tx.subscribe()
    }

    fn credential_path(&self) -> PathBuf {
        self.inner.dir.join(CREDENTIAL_FILE)
    }

    fn stored_credential_hash(&self) -> Result<String> {
        let store = self.store()?;
        let cluster = store
            .view()
            .list::<Cluster>()
            .into_iter()
            .next()
            .ok_or_else(|| SwarmError::Internal("the cluster object is missing".into()))?;
        Ok(cluster
            .store_only
            .map(|s| s.dashboard_credential)
            .unwrap_or_default())
    }

    /// Whether `candidate` is the dashboard credential (false when none is set). Slow on purpose
    /// (PBKDF2): runs on the blocking pool.
    pub async fn check_dashboard_credential(&self, candidate: &str) -> Result<bool> {
        let stored = self.stored_credential_hash()?;
        if stored.is_empty() {
            return Ok(false);
        }
        let candidate = candidate.to_string();
        tokio::task::spawn_blocking(move || verify_credential(&stored, &candidate))
            .await
            .map_err(|e| SwarmError::Internal(format!("checking the dashboard credential: {e}")))
    }

    /// Sets the dashboard credential to `credential` (at least [`MIN_CREDENTIAL_LEN`]
    /// characters) on the whole cluster. The plaintext file of this manager is removed: it no
    /// longer holds the credential.
    pub async fn set_dashboard_credential(&self, credential: &str) -> Result<()> {
        if credential.chars().count() < MIN_CREDENTIAL_LEN {
            return Err(SwarmError::BadRequest(format!(
                "the dashboard credential must have at least {MIN_CREDENTIAL_LEN} characters"
            )));
        }
        let credential = credential.to_string();
        let hash = tokio::task::spawn_blocking(move || hash_credential(&credential))
            .await
            .map_err(|e| SwarmError::Internal(format!("hashing the dashboard credential: {e}")))?;
        self.write::<()>(ControlOp::SetDashboardCredential { hash })
            .await?;
        match std::fs::remove_file(self.credential_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SwarmError::Internal(
                format!("removing {}: {e}", self.credential_path().display()),
            )),
            _ => Ok(()),
        }
    }

    /// A new random dashboard credential for the cluster, also written to this manager's
    /// plaintext file; returns it.
    pub async fn reset_dashboard_credential(&self) -> Result<String> {
        let credential = new_credential();
        self.set_dashboard_credential(&credential).await?;
        self.write_credential_file(&credential)?;
        Ok(credential)
    }

    /// The plaintext credential kept on this manager, if it still is the cluster's.
    pub async fn dashboard_credential(&self) -> Result<Option<String>> {
        let path = self.credential_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(SwarmError::Internal(format!(
                    "reading {}: {e}",
                    path.display()
                )))
            }
        };
        if self.check_dashboard_credential(&text).await? {
            Ok(Some(text))
        } else {
            Ok(None)
        }
    }

    /// Writes the plaintext credential file (0600, replaced atomically).
    pub(crate) fn write_credential_file(&self, credential: &str) -> Result<()> {
        let path = self.credential_path();
        let tmp = self.inner.dir.join(format!(".{CREDENTIAL_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(credential.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| SwarmError::Internal(format!("writing {}: {e}", path.display())))
    }

    /// [`Swarm::set_dashboard_credential`] on the leader.
    pub(crate) async fn commit_set_dashboard_credential(&self, hash: String) -> Result<()> {
        let store = self.store()?;
        store
            .update(move |tx| {
                let mut cluster = tx
                    .list::<Cluster>()
                    .into_iter()
                    .next()
                    .ok_or_else(|| shoal_store::StoreError::Internal("no cluster".into()))?;
                cluster
                    .store_only
                    .get_or_insert_with(Default::default)
                    .dashboard_credential = hash;
                tx.update(cluster)
            })
            .await?;
        tracing::info!("the dashboard credential was changed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_hash_and_verify() {
        let c = new_credential();
        assert_eq!(c.len(), 20);
        assert!(
            c.chars()
                .all(|ch| ch.is_ascii_uppercase() || ('2'..='7').contains(&ch)),
            "{c}"
        );
        assert_ne!(c, new_credential());
        let h = hash_with(&c, 1000, b"0123456789abcdef");
        assert!(h.starts_with("pbkdf2-sha256$1000$"), "{h}");
        assert!(!h.contains(&c));
        assert!(verify_credential(&h, &c));
        assert!(!verify_credential(&h, "wrong"));
        assert!(!verify_credential(&h, ""));
        assert!(!verify_credential("", &c));
        assert!(!verify_credential("pbkdf2-sha256$x$00$00", &c));
        assert!(!verify_credential("md5$1$00$00", &c));
        // Salted: the same credential hashes differently each time, and both verify.
        let (a, b) = (
            hash_credential("correct horse"),
            hash_credential("correct horse"),
        );
        assert_ne!(a, b);
        assert!(verify_credential(&a, "correct horse") && verify_credential(&b, "correct horse"));
    }
}

//! Docker's `-u` semantics ("", "name", "uid", "name:group", "uid:gid") resolved against the
//! container rootfs's `/etc/passwd` and `/etc/group`, read without leaving the rootfs.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::safepath::open_in_root;
use crate::RuntimeError;

/// The numeric identity a container process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from /etc/group membership when no group was given explicitly).
    pub additional_gids: Vec<u32>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Upper bound on how much of /etc/passwd or /etc/group we read from an untrusted rootfs.
const MAX_DB_SIZE: u64 = 16 << 20;

fn read_db(rootfs: &Path, path: &str) -> Result<Option<String>, RuntimeError> {
    match open_in_root(rootfs, path, 0) {
        Ok(f) => {
            let mut buf = Vec::new();
            f.take(MAX_DB_SIZE).read_to_end(&mut buf).map_err(|e| {
                RuntimeError::io("read", rootfs.join(path.trim_start_matches('/')), e)
            })?;
            Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::io(
            "open",
            rootfs.join(path.trim_start_matches('/')),
            e,
        )),
    }
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolves Docker's `--user` value inside `rootfs`.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<ResolvedUser, RuntimeError> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_db(rootfs, "/etc/passwd")?
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();

    // Defaults: root.
    let mut uid = 0u32;
    let mut gid = 0u32;
    let mut matched_name: Option<String> = None;

    if user_part.is_empty() {
        if let Some(e) = passwd.iter().find(|e| e.uid == 0) {
            gid = e.gid;
            matched_name = Some(e.name.clone());
        }
    } else if let Ok(num) = user_part.parse::<u32>() {
        uid = num;
        if let Some(e) = passwd.iter().find(|e| e.uid == num) {
            gid = e.gid;
            matched_name = Some(e.name.clone());
        }
    } else {
        match passwd.iter().find(|e| e.name == user_part) {
            Some(e) => {
                uid = e.uid;
                gid = e.gid;
                matched_name = Some(e.name.clone());
            }
            None => {
                return Err(RuntimeError::UserNotFound(format!(
                    "unable to find user {user_part}: no matching entries in passwd file"
                )))
            }
        }
    }

    let groups = read_db(rootfs, "/etc/group")?
        .map(|t| parse_group(&t))
        .unwrap_or_default();
    let mut additional_gids = Vec::new();
    match group_part {
        Some(g) if !g.is_empty() => {
            if let Ok(num) = g.parse::<u32>() {
                gid = num;
            } else {
                match groups.iter().find(|e| e.name == g) {
                    Some(e) => gid = e.gid,
                    None => {
                        return Err(RuntimeError::UserNotFound(format!(
                            "unable to find group {g}: no matching entries in group file"
                        )))
                    }
                }
            }
        }
        _ => {
            if let Some(name) = &matched_name {
                for g in groups
                    .iter()
                    .filter(|g| g.members.iter().any(|m| m == name))
                {
                    if !additional_gids.contains(&g.gid) {
                        additional_gids.push(g.gid);
                    }
                }
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "shoal-user-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nnobody:x:65534:65534::/:/bin/false\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken:line\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/group"),
            "root:x:0:\nwheel:x:10:root,alice\nalice:x:1000:\naudio:x:29:alice\nnogroup:x:65534:\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn resolves_docker_user_forms() {
        let r = rootfs();
        assert_eq!(
            resolve_user(&r, "").unwrap(),
            ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![10]
            }
        );
        assert_eq!(
            resolve_user(&r, "alice").unwrap(),
            ResolvedUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10, 29]
            }
        );
        assert_eq!(
            resolve_user(&r, "1000").unwrap(),
            ResolvedUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10, 29]
            }
        );
        // Unknown numeric uid: allowed, gid 0.
        assert_eq!(
            resolve_user(&r, "4242").unwrap(),
            ResolvedUser {
                uid: 4242,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            resolve_user(&r, "alice:audio").unwrap(),
            ResolvedUser {
                uid: 1000,
                gid: 29,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            resolve_user(&r, "7:8").unwrap(),
            ResolvedUser {
                uid: 7,
                gid: 8,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            resolve_user(&r, "nobody:nogroup").unwrap(),
            ResolvedUser {
                uid: 65534,
                gid: 65534,
                additional_gids: vec![]
            }
        );
        let err = resolve_user(&r, "bob").unwrap_err().to_string();
        assert_eq!(
            err,
            "unable to find user bob: no matching entries in passwd file"
        );
        let err = resolve_user(&r, "alice:nosuch").unwrap_err().to_string();
        assert_eq!(
            err,
            "unable to find group nosuch: no matching entries in group file"
        );
        let _ = std::fs::remove_dir_all(&r);
    }

    #[test]
    fn passwd_symlink_cannot_escape() {
        let r = rootfs();
        std::fs::remove_file(r.join("etc/passwd")).unwrap();
        // Points at the host passwd; must be resolved inside the rootfs (where it does not exist).
        std::os::unix::fs::symlink(
            "/../../../../../etc/shadow-does-not-exist",
            r.join("etc/passwd"),
        )
        .unwrap();
        assert_eq!(resolve_user(&r, "").unwrap().uid, 0);
        assert!(resolve_user(&r, "root").is_err());
        // Missing passwd entirely: numeric works, names fail.
        assert_eq!(resolve_user(&r, "5").unwrap().uid, 5);
        let _ = std::fs::remove_dir_all(&r);
    }
}

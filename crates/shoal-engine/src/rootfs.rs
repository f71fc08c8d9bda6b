//! A container's filesystem on the host: the overlayfs root over the image layers, and the
//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` files bind-mounted into it.

use std::fs;
use std::io::ErrorKind as IoKind;
use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{EngineError, Result};

/// The per-container directory layout under `<data-root>/containers/<id>`.
#[derive(Debug, Clone)]
pub struct ContainerDirs {
    pub root: PathBuf,
}

impl ContainerDirs {
    pub fn new(containers_root: &Path, id: &str) -> Self {
        ContainerDirs { root: containers_root.join(id) }
    }
    pub fn record(&self) -> PathBuf {
        self.root.join("container.json")
    }
    pub fn upper(&self) -> PathBuf {
        self.root.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.root.join("rootfs")
    }
    pub fn empty_lower(&self) -> PathBuf {
        self.root.join("empty")
    }
    pub fn hosts(&self) -> PathBuf {
        self.root.join("hosts")
    }
    pub fn hostname(&self) -> PathBuf {
        self.root.join("hostname")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.root.join("resolv.conf")
    }

    pub fn create(&self) -> Result<()> {
        for dir in [self.root.clone(), self.upper(), self.work(), self.rootfs()] {
            fs::create_dir_all(&dir).map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
        }
        Ok(())
    }
}

/// True if `target` is a mount point in this mount namespace.
pub fn is_mounted(target: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let wanted = target.to_string_lossy();
    info.lines().any(|line| line.split(' ').nth(4).is_some_and(|mp| unescape_mount_path(mp) == wanted))
}

fn unescape_mount_path(path: &str) -> String {
    path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Mounts the overlay root unless it is already mounted. `lowers` is top-most first.
pub fn mount_rootfs(dirs: &ContainerDirs, lowers: &[PathBuf]) -> Result<()> {
    let target = dirs.rootfs();
    if is_mounted(&target) {
        return Ok(());
    }
    let lowers: Vec<PathBuf> = if lowers.is_empty() {
        let empty = dirs.empty_lower();
        fs::create_dir_all(&empty).map_err(|e| EngineError::io(format!("creating {}", empty.display()), e))?;
        vec![empty]
    } else {
        lowers.to_vec()
    };
    let lower = lowers.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>().join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        dirs.upper().display(),
        dirs.work().display()
    );
    if data.len() >= 4000 {
        return Err(EngineError::Internal(format!(
            "overlay mount options for {} are too long ({} bytes, {} layers)",
            target.display(),
            data.len(),
            lowers.len()
        )));
    }
    mount(Some("overlay"), &target, Some("overlay"), MsFlags::empty(), Some(data.as_str()))
        .map_err(|e| EngineError::Internal(format!("mounting overlay at {}: {e}", target.display())))?;
    Ok(())
}

pub fn unmount_rootfs(dirs: &ContainerDirs) -> Result<()> {
    let target = dirs.rootfs();
    if !is_mounted(&target) {
        return Ok(());
    }
    match umount2(&target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => umount2(&target, MntFlags::MNT_DETACH)
            .map_err(|e| EngineError::Internal(format!("unmounting {}: {e}", target.display()))),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(EngineError::Internal(format!("unmounting {}: {e}", target.display()))),
    }
}

/// Joins `path` under `root`, resolving symlinks as if `root` were `/`, so the result never leaves
/// `root` (the rootfs is untrusted content). Missing trailing components are kept as they are.
pub fn resolve_in_root(root: &Path, path: &str) -> PathBuf {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<String> =
        path.split('/').filter(|c| !c.is_empty()).rev().map(|s| s.to_string()).collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = root.join(&resolved).join(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() && hops < 40 => {
                hops += 1;
                let Ok(target) = fs::read_link(&candidate) else {
                    resolved.push(&part);
                    continue;
                };
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for comp in target.components().rev() {
                    if let Component::Normal(c) = comp {
                        pending.push(c.to_string_lossy().into_owned());
                    } else if comp == Component::ParentDir {
                        pending.push("..".into());
                    }
                }
            }
            _ => resolved.push(&part),
        }
    }
    root.join(resolved)
}

/// Creates `dir` (and parents) inside the rootfs, safely.
pub fn ensure_dir_in_root(root: &Path, dir: &str) -> Result<()> {
    let mut current = String::new();
    for part in dir.split('/').filter(|c| !c.is_empty() && *c != ".") {
        current.push('/');
        current.push_str(part);
        let host = resolve_in_root(root, &current);
        match fs::create_dir(&host) {
            Ok(()) => {}
            Err(e) if e.kind() == IoKind::AlreadyExists => {}
            Err(e) => return Err(EngineError::io(format!("creating {} in the container", current), e)),
        }
    }
    Ok(())
}

/// The home directory of `uid` per the rootfs's `/etc/passwd` (Docker sets `HOME` from it).
pub fn home_dir(root: &Path, uid: u32) -> String {
    let passwd = fs::read_to_string(resolve_in_root(root, "/etc/passwd")).unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| if uid == 0 { "/root".into() } else { "/".into() })
}

/// Writes the container's `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`.
pub fn write_etc_files(
    dirs: &ContainerDirs,
    hostname: &str,
    domainname: &str,
    ip: Option<Ipv4Addr>,
    extra_hosts: &[String],
    dns: &[String],
    host_network: bool,
) -> Result<()> {
    let io = |p: &Path, e| EngineError::io(format!("writing {}", p.display()), e);
    fs::write(dirs.hostname(), format!("{hostname}\n")).map_err(|e| io(&dirs.hostname(), e))?;

    let mut hosts = if host_network {
        fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        String::from(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
             ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
        )
    };
    for entry in extra_hosts {
        if let Some((name, addr)) = entry.split_once(':') {
            hosts.push_str(&format!("{addr}\t{name}\n"));
        }
    }
    if let Some(ip) = ip {
        if domainname.is_empty() {
            hosts.push_str(&format!("{ip}\t{hostname}\n"));
        } else {
            hosts.push_str(&format!("{ip}\t{hostname}.{domainname} {hostname}\n"));
        }
    }
    fs::write(dirs.hosts(), hosts).map_err(|e| io(&dirs.hosts(), e))?;

    let resolv = render_resolv_conf(&fs::read_to_string("/etc/resolv.conf").unwrap_or_default(), dns);
    fs::write(dirs.resolv_conf(), resolv).map_err(|e| io(&dirs.resolv_conf(), e))?;
    Ok(())
}

/// Docker's rule: copy the host's resolv.conf minus loopback nameservers (they can't be reached
/// from the container's namespace); fall back to public resolvers if none is left.
pub fn render_resolv_conf(host: &str, dns: &[String]) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let trimmed = line.trim();
        if let Some(addr) = trimmed.strip_prefix("nameserver") {
            let addr = addr.trim();
            if !dns.is_empty() || addr.starts_with("127.") || addr == "::1" {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    for server in dns {
        out.push_str(&format!("nameserver {server}\n"));
        servers += 1;
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolve_stays_inside_root() {
        let root = std::env::temp_dir().join(format!("shoal-rootfs-{}", std::process::id()));
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/", root.join("escape")).unwrap();
        symlink("../../..", root.join("etc/up")).unwrap();
        assert_eq!(resolve_in_root(&root, "/escape/etc/passwd"), root.join("etc/passwd"));
        assert_eq!(resolve_in_root(&root, "/etc/up/x"), root.join("x"));
        assert_eq!(resolve_in_root(&root, "/../../etc"), root.join("etc"));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn resolv_conf_drops_loopback_servers() {
        let out = render_resolv_conf("nameserver 127.0.0.53\nsearch lan\n", &[]);
        assert!(out.contains("search lan"));
        assert!(!out.contains("127.0.0.53"));
        assert!(out.contains("nameserver 8.8.8.8"));
        let out = render_resolv_conf("nameserver 10.0.0.2\n", &[]);
        assert_eq!(out, "nameserver 10.0.0.2\n");
        let out = render_resolv_conf("nameserver 10.0.0.2\n", &["1.1.1.1".into()]);
        assert_eq!(out, "nameserver 1.1.1.1\n");
    }
}

//! Opening files inside an untrusted root filesystem without escaping it.
//!
//! The primary mechanism is `openat2(2)` with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`, which lets
//! the kernel resolve `..` and symlinks as if `root` were `/`. On kernels without `openat2`
//! (before 5.6) we fall back to a userspace resolver in the style of filepath-securejoin, which
//! resolves every component with `lstat` and treats symlink targets relative to `root`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

const MAX_SYMLINKS: usize = 255;

/// Opens `path` (interpreted relative to `root`, absolute or not) read-only, resolving every
/// symlink and `..` inside `root`. `extra_flags` may add e.g. `O_PATH`.
pub fn open_in_root(root: &Path, path: &str, extra_flags: i32) -> io::Result<File> {
    let root_fd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(root)?;
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let c_rel = std::ffi::CString::new(rel)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains nul byte"))?;
    /// `struct open_how` from linux/openat2.h.
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    // openat2 rejects O_PATH combined with anything but O_CLOEXEC/O_DIRECTORY/O_NOFOLLOW.
    let base = if extra_flags & libc::O_PATH != 0 {
        libc::O_CLOEXEC
    } else {
        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY
    };
    let how = OpenHow {
        flags: (base | extra_flags) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 is called with a valid directory fd we own, a nul-terminated path that
    // outlives the call, and a pointer/size pair describing a fully initialised `open_how`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_fd.as_raw_fd(),
            c_rel.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if ret >= 0 {
        let Ok(fd) = i32::try_from(ret) else {
            return Err(io::Error::other("openat2 returned an out-of-range fd"));
        };
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        return Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EPERM) => {
            // No openat2 (or blocked by a seccomp filter): resolve in userspace.
            let resolved = secure_join(root, path)?;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NOFOLLOW | extra_flags)
                .open(resolved)
        }
        _ => Err(err),
    }
}

/// Joins `unsafe_path` onto `root`, resolving symlinks as if `root` were the filesystem root.
/// The returned path never lies outside `root` (modulo concurrent modification of the tree).
pub fn secure_join(root: &Path, unsafe_path: &str) -> io::Result<PathBuf> {
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    // Pending components, processed from the back.
    let mut pending: Vec<std::ffi::OsString> = components_rev(Path::new(unsafe_path));
    let mut links = 0usize;
    while let Some(comp) = pending.pop() {
        if comp == ".." {
            resolved.pop();
            continue;
        }
        if comp == "." || comp.is_empty() {
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(resolved.iter());
        candidate.push(&comp);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::other("too many levels of symbolic links"));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                pending.extend(components_rev(&target));
            }
            _ => resolved.push(comp),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(resolved.iter());
    Ok(out)
}

fn components_rev(p: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    v.reverse();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn symlinks_stay_inside_root() {
        let dir = std::env::temp_dir().join(format!("shoal-safepath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("secret"), "inside").unwrap();
        // An absolute symlink pointing at the host's /etc/hostname must resolve inside root.
        std::os::unix::fs::symlink("/secret", dir.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../secret", dir.join("etc/up")).unwrap();
        let mut s = String::new();
        open_in_root(&dir, "/etc/passwd", 0)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "inside");
        s.clear();
        open_in_root(&dir, "etc/up", 0)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "inside");
        assert_eq!(
            secure_join(&dir, "/etc/passwd").unwrap(),
            dir.join("secret")
        );
        assert_eq!(secure_join(&dir, "/etc/up").unwrap(), dir.join("secret"));
        assert_eq!(secure_join(&dir, "/../../x").unwrap(), dir.join("x"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

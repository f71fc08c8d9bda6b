//! Safe layer unpacking: the security boundary between untrusted tarballs and the host.
//!
//! Every filesystem operation is relative to a directory file descriptor obtained by walking
//! the (sanitised) path one component at a time with `O_NOFOLLOW | O_DIRECTORY`, so no entry can
//! ever be created through a symlink, and `..` components are rejected outright.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use sha2::{Digest, Sha256};

use crate::error::{ImageError, IoCtx};

/// Compression detected from a blob's magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

pub(crate) fn detect(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A reader that hashes (sha256) and counts everything read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), count: 0 }
    }
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Result of unpacking one layer blob.
#[derive(Debug, Clone)]
pub(crate) struct Unpacked {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: String,
    /// sha256 of the blob as given (compressed or not).
    pub blob_digest: String,
    /// Sum of regular file sizes.
    pub size: u64,
    /// Length of the uncompressed tar stream.
    pub tar_len: u64,
}

/// Wrap `reader` in the decompressor chosen by its magic bytes.
pub(crate) fn decompress<'a, R: Read + 'a>(mut reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut head = Vec::with_capacity(4);
    (&mut reader).take(4).read_to_end(&mut head)?;
    let kind = detect(&head);
    let chained = io::Cursor::new(head).chain(reader);
    Ok(match kind {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(chained)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(chained)?),
        Compression::None => Box::new(chained),
    })
}

fn input_err(layer: &str, e: io::Error) -> ImageError {
    ImageError::archive(format!("layer {layer}: truncated or corrupt tar stream: {e}"))
}

/// Unpack a (possibly compressed) layer tar from `reader` into the empty directory `dest`.
/// `layer` names the input in error messages.
pub(crate) fn unpack_layer(reader: impl Read, dest: &Path, layer: &str) -> Result<Unpacked, ImageError> {
    let mut blob = HashingReader::new(reader);
    let (diff_id, size, tar_len) = {
        let decompressed = decompress(&mut blob).map_err(|e| input_err(layer, e))?;
        let mut plain = HashingReader::new(decompressed);
        let size = unpack_tar(&mut plain, dest, layer)?;
        // Hash the end-of-archive padding too: diff ids cover the whole stream.
        io::copy(&mut plain, &mut io::sink()).map_err(|e| input_err(layer, e))?;
        (plain.digest(), size, plain.count())
    };
    io::copy(&mut blob, &mut io::sink()).map_err(|e| input_err(layer, e))?;
    Ok(Unpacked { diff_id, blob_digest: blob.digest(), size, tar_len })
}

/// Turn a tar path into safe components: leading `/` stripped, `.` dropped, `..` rejected.
pub(crate) fn sanitize(path: &Path, layer: &str) -> Result<Vec<OsString>, ImageError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(ImageError::UnsafePath { layer: layer.to_string(), path: path.display().to_string() })
            }
            Component::Normal(n) => out.push(n.to_os_string()),
        }
    }
    Ok(out)
}

fn openat_owned(dir: &OwnedFd, name: &OsStr, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW, mode)?;
    // SAFETY: openat just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn open_root(dest: &Path) -> Result<OwnedFd, ImageError> {
    let fd = nix::fcntl::open(dest, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).ctx(dest)?;
    // SAFETY: open just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Walk `comps` below `root` without following symlinks, creating missing directories (0755)
/// when `create` is set. Any component that is a symlink or not a directory is an error.
pub(crate) fn open_dir(root: &OwnedFd, comps: &[OsString], create: bool, layer: &str, shown: &Path) -> Result<OwnedFd, ImageError> {
    let mut cur = root.try_clone().ctx(shown)?;
    for c in comps {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
        let next = match openat_owned(&cur, c, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                match nix::sys::stat::mkdirat(Some(cur.as_raw_fd()), c.as_os_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(ImageError::io(shown, e.into())),
                }
                openat_owned(&cur, c, flags, Mode::empty()).map_err(|e| unsafe_or_io(e, layer, shown))?
            }
            Err(e) => return Err(unsafe_or_io(e, layer, shown)),
        };
        cur = next;
    }
    Ok(cur)
}

fn unsafe_or_io(e: Errno, layer: &str, shown: &Path) -> ImageError {
    match e {
        Errno::ELOOP | Errno::ENOTDIR => ImageError::UnsafePath {
            layer: layer.to_string(),
            path: format!("{} (a parent component is a symlink or not a directory)", shown.display()),
        },
        Errno::ENOENT => ImageError::archive(format!("layer {layer}: {} refers to a missing path", shown.display())),
        e => ImageError::io(shown, e.into()),
    }
}

/// Remove whatever exists at `parent/name` unless it is a directory and `keep_dir` is set.
/// Returns true when an existing directory was kept.
fn clear_existing(parent: &OwnedFd, name: &OsStr, keep_dir: bool, full: &Path) -> Result<bool, ImageError> {
    match nix::sys::stat::fstatat(Some(parent.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(ImageError::io(full, e.into())),
        Ok(st) => {
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if is_dir && keep_dir {
                return Ok(true);
            }
            if is_dir {
                // All components of `full` were verified to be real directories, and
                // remove_dir_all never follows symlinks inside the tree.
                std::fs::remove_dir_all(full).ctx(full)?;
            } else {
                nix::unistd::unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir).ctx(full)?;
            }
            Ok(false)
        }
    }
}

fn set_opaque(dir: &OwnedFd, shown: &Path) -> Result<(), ImageError> {
    let name = c"trusted.overlay.opaque";
    let val = b"y";
    // SAFETY: `dir` is a valid open descriptor, `name` is NUL-terminated, and `val` is a valid
    // buffer of the given length for the duration of the call.
    let rc = unsafe { libc::fsetxattr(dir.as_raw_fd(), name.as_ptr(), val.as_ptr().cast(), val.len(), 0) };
    if rc != 0 {
        return Err(ImageError::io(shown, io::Error::last_os_error()));
    }
    Ok(())
}

fn ts(secs: u64) -> TimeSpec {
    TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0)
}

/// Unpack an uncompressed tar stream into `dest`. Returns the sum of regular file sizes.
pub(crate) fn unpack_tar(reader: impl Read, dest: &Path, layer: &str) -> Result<u64, ImageError> {
    let root = open_root(dest)?;
    let mut archive = tar::Archive::new(reader);
    let mut total: u64 = 0;
    let mut dir_times: Vec<(Vec<OsString>, u64)> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for entry in archive.entries().map_err(|e| input_err(layer, e))? {
        let mut entry = entry.map_err(|e| input_err(layer, e))?;
        let raw_path = entry.path().map_err(|e| input_err(layer, e))?.into_owned();
        let comps = sanitize(&raw_path, layer)?;
        let hdr = entry.header().clone();
        let etype = hdr.entry_type();
        let mode = hdr.mode().map_err(|e| input_err(layer, e))? & 0o7777;
        let uid = u32::try_from(hdr.uid().map_err(|e| input_err(layer, e))?).unwrap_or(0);
        let gid = u32::try_from(hdr.gid().map_err(|e| input_err(layer, e))?).unwrap_or(0);
        let mtime = hdr.mtime().unwrap_or(0);
        let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        let full: PathBuf = comps.iter().fold(dest.to_path_buf(), |p, c| p.join(c));

        let Some((name, parent_comps)) = comps.split_last() else {
            // The layer root itself ("./").
            if etype.is_dir() {
                nix::unistd::fchown(root.as_raw_fd(), uid, gid).ctx(dest)?;
                nix::sys::stat::fchmod(root.as_raw_fd(), Mode::from_bits_truncate(mode)).ctx(dest)?;
                dir_times.push((Vec::new(), mtime));
            }
            continue;
        };
        let name = name.as_os_str();
        let name_bytes = name.as_bytes();
        let parent_path = full.parent().unwrap_or(dest).to_path_buf();

        // OCI whiteouts.
        if let Some(target) = name_bytes.strip_prefix(b".wh.") {
            let parent = open_dir(&root, parent_comps, true, layer, &parent_path)?;
            if target == b".wh..opq" {
                set_opaque(&parent, &parent_path)?;
            } else if target.starts_with(b".wh.") {
                // Other AUFS metadata (.wh..wh.plnk etc.): ignore.
            } else if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
                return Err(ImageError::UnsafePath { layer: layer.to_string(), path: raw_path.display().to_string() });
            } else {
                let target = OsStr::from_bytes(target);
                let tfull = parent_path.join(target);
                clear_existing(&parent, target, false, &tfull)?;
                nix::sys::stat::mknodat(Some(parent.as_raw_fd()), target, SFlag::S_IFCHR, Mode::empty(), libc::makedev(0, 0))
                    .ctx(&tfull)?;
            }
            continue;
        }

        use tar::EntryType as E;
        match etype {
            E::Directory => {
                let parent = open_dir(&root, parent_comps, true, layer, &parent_path)?;
                let existed = clear_existing(&parent, name, true, &full)?;
                if !existed {
                    nix::sys::stat::mkdirat(Some(parent.as_raw_fd()), name, Mode::from_bits_truncate(0o700)).ctx(&full)?;
                }
                let dir = openat_owned(&parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
                    .map_err(|e| unsafe_or_io(e, layer, &full))?;
                nix::unistd::fchown(dir.as_raw_fd(), uid, gid).ctx(&full)?;
                nix::sys::stat::fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(mode)).ctx(&full)?;
                dir_times.push((comps.clone(), mtime));
            }
            E::Regular | E::Continuous | E::GNUSparse => {
                let parent = open_dir(&root, parent_comps, true, layer, &parent_path)?;
                clear_existing(&parent, name, false, &full)?;
                let fd = openat_owned(&parent, name, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, Mode::from_bits_truncate(0o600))
                    .map_err(|e| unsafe_or_io(e, layer, &full))?;
                let mut file = File::from(fd);
                let expected = entry.size();
                let mut written: u64 = 0;
                loop {
                    let n = entry.read(&mut buf).map_err(|e| input_err(layer, e))?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&buf[..n]).ctx(&full)?;
                    written += n as u64;
                }
                if written != expected {
                    return Err(ImageError::archive(format!(
                        "layer {layer}: truncated tar stream: {} has {written} of {expected} bytes",
                        raw_path.display()
                    )));
                }
                // chown before chmod: chown clears set-id bits.
                nix::unistd::fchown(file.as_raw_fd(), uid, gid).ctx(&full)?;
                nix::sys::stat::fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode)).ctx(&full)?;
                nix::sys::stat::futimens(file.as_fd().as_raw_fd(), &ts(mtime), &ts(mtime)).ctx(&full)?;
                total += written;
            }
            E::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| input_err(layer, e))?
                    .ok_or_else(|| ImageError::archive(format!("layer {layer}: symlink {} has no target", raw_path.display())))?
                    .into_owned();
                let parent = open_dir(&root, parent_comps, true, layer, &parent_path)?;
                clear_existing(&parent, name, false, &full)?;
                // The target is stored verbatim: it is never followed by us.
                nix::unistd::symlinkat(target.as_os_str(), Some(parent.as_raw_fd()), name).ctx(&full)?;
                nix::unistd::fchownat(Some(parent.as_raw_fd()), name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW).ctx(&full)?;
                nix::sys::stat::utimensat(Some(parent.as_raw_fd()), name, &ts(mtime), &ts(mtime), UtimensatFlags::NoFollowSymlink)
                    .ctx(&full)?;
            }
            E::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| input_err(layer, e))?
                    .ok_or_else(|| ImageError::archive(format!("layer {layer}: hard link {} has no target", raw_path.display())))?
                    .into_owned();
                let tcomps = sanitize(&target, layer)?;
                let Some((tname, tparent_comps)) = tcomps.split_last() else {
                    return Err(ImageError::UnsafePath { layer: layer.to_string(), path: target.display().to_string() });
                };
                if tcomps == comps {
                    continue;
                }
                let tfull: PathBuf = tcomps.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
                let tparent = open_dir(&root, tparent_comps, false, layer, &tfull)?;
                let parent = open_dir(&root, parent_comps, true, layer, &parent_path)?;
                clear_existing(&parent, name, false, &full)?;
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
                nix::unistd::linkat(Some(tparent.as_raw_fd()), tname.as_os_str(), Some(parent.as_raw_fd()), name, AtFlags::empty())
                    .map_err(|e| match e {
                        Errno::ENOENT | Errno::EPERM => ImageError::archive(format!(
                            "layer {layer}: hard link {} points to missing or invalid target {}",
                            raw_path.display(),
                            target.display()
                        )),
                        e => ImageError::io(&full, e.into()),
                    })?;
            }
            E::Char | E::Block | E::Fifo => {
                let kind = match etype {
                    E::Char => SFlag::S_IFCHR,
                    E::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = hdr.device_major().ok().flatten().unwrap_or(0);
                let minor = hdr.device_minor().ok().flatten().unwrap_or(0);
                let parent = open_dir(&root, parent_comps, true, layer, &parent_path)?;
                clear_existing(&parent, name, false, &full)?;
                nix::sys::stat::mknodat(Some(parent.as_raw_fd()), name, kind, Mode::from_bits_truncate(mode), libc::makedev(major, minor))
                    .ctx(&full)?;
                nix::unistd::fchownat(Some(parent.as_raw_fd()), name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW).ctx(&full)?;
                nix::sys::stat::fchmodat(Some(parent.as_raw_fd()), name, Mode::from_bits_truncate(mode), FchmodatFlags::FollowSymlink)
                    .ctx(&full)?;
                nix::sys::stat::utimensat(Some(parent.as_raw_fd()), name, &ts(mtime), &ts(mtime), UtimensatFlags::NoFollowSymlink)
                    .ctx(&full)?;
            }
            E::XGlobalHeader | E::XHeader | E::GNULongName | E::GNULongLink => {}
            other => {
                tracing::warn!(layer, path = %raw_path.display(), entry_type = ?other, "skipping unsupported tar entry type");
            }
        }
    }
    // Directory mtimes last: creating children changed them.
    for (comps, mtime) in dir_times.iter().rev() {
        let shown: PathBuf = comps.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
        if let Ok(dir) = open_dir(&root, comps, false, layer, &shown) {
            nix::sys::stat::futimens(dir.as_raw_fd(), &ts(*mtime), &ts(*mtime)).ctx(&shown)?;
        }
    }
    Ok(total)
}

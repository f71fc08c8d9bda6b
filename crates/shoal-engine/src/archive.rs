//! `docker cp`: stat, read and write paths inside a container.
//!
//! The file work happens in a re-executed `shoal archive-helper` process that `chroot`s into the
//! container's root (`/proc/<pid>/root` while it runs, so its mounts are seen; the mounted overlay
//! otherwise). Inside the chroot the kernel resolves every `..` and symlink within the container,
//! which makes the container's own (untrusted) symlinks harmless to the host.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::error::{EngineError, Result};
use crate::model::Status;
use crate::rootfs;
use crate::Engine;

/// The stat of a path in a container, as `X-Docker-Container-Path-Stat` carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathStat {
    pub name: String,
    pub size: i64,
    /// A Go `os.FileMode` (type bits high, permissions low), which is what the CLI decodes.
    pub mode: u32,
    pub mtime: DateTime<Utc>,
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

const EXIT_NOT_FOUND: i32 = 2;
const EXIT_INVALID: i32 = 3;

/// Converts a Unix `st_mode` to a Go `os.FileMode`.
pub fn go_file_mode(st_mode: u32) -> u32 {
    let mut mode = st_mode & 0o777;
    match st_mode & libc::S_IFMT {
        libc::S_IFDIR => mode |= 1 << 31,
        libc::S_IFLNK => mode |= 1 << 27,
        libc::S_IFBLK => mode |= 1 << 26,
        libc::S_IFCHR => mode |= (1 << 26) | (1 << 21),
        libc::S_IFIFO => mode |= 1 << 25,
        libc::S_IFSOCK => mode |= 1 << 24,
        _ => {}
    }
    if st_mode & libc::S_ISUID != 0 {
        mode |= 1 << 23;
    }
    if st_mode & libc::S_ISGID != 0 {
        mode |= 1 << 22;
    }
    if st_mode & libc::S_ISVTX != 0 {
        mode |= 1 << 20;
    }
    mode
}

/// Where the helper should chroot, and whether we mounted the rootfs for it.
struct ArchiveRoot {
    root: PathBuf,
    mounted_here: bool,
}

impl Engine {
    async fn archive_root(&self, reference: &str) -> Result<(String, ArchiveRoot)> {
        let c = self.find(reference)?;
        let rec = c.snapshot();
        if rec.state.status == Status::Running && rec.state.pid > 0 {
            return Ok((rec.id, ArchiveRoot { root: PathBuf::from(format!("/proc/{}/root", rec.state.pid)), mounted_here: false }));
        }
        let dirs = self.dirs(&rec.id);
        let was_mounted = rootfs::is_mounted(&dirs.rootfs());
        if !was_mounted {
            let layers = self.images().layer_paths(&rec.config.image_id)?;
            rootfs::mount_rootfs(&dirs, &layers)?;
        }
        Ok((rec.id, ArchiveRoot { root: dirs.rootfs(), mounted_here: !was_mounted }))
    }

    fn release_archive_root(&self, id: &str, root: &ArchiveRoot) {
        if root.mounted_here {
            if let Ok(c) = self.find(id) {
                if c.lock().state.status == Status::Running {
                    return;
                }
            }
            let _ = rootfs::unmount_rootfs(&self.dirs(id));
        }
    }

    fn helper(&self, root: &Path, op: &str, path: &str, flags: &[&str]) -> Command {
        let mut cmd = Command::new(&self.inner.cfg.self_exe);
        cmd.arg("archive-helper").arg(root).arg(op).arg(path).args(flags);
        cmd.kill_on_drop(true);
        cmd
    }

    /// `HEAD /containers/{id}/archive`.
    pub async fn archive_stat(&self, reference: &str, path: &str) -> Result<PathStat> {
        let (id, root) = self.archive_root(reference).await?;
        let result = async {
            let out = self
                .helper(&root.root, "stat", path, &[])
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| EngineError::io("running the archive helper", e))?;
            check_helper(out.status.code(), &out.stderr, &id, path)?;
            serde_json::from_slice(&out.stdout).map_err(|e| EngineError::Internal(format!("archive helper output: {e}")))
        }
        .await;
        self.release_archive_root(&id, &root);
        result
    }

    /// `GET /containers/{id}/archive`: the stat and a tar stream of the path.
    pub async fn archive_get(&self, reference: &str, path: &str) -> Result<(PathStat, ArchiveReader)> {
        let stat = self.archive_stat(reference, path).await?;
        let (id, root) = self.archive_root(reference).await?;
        let mut child = self
            .helper(&root.root, "get", path, &[])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| EngineError::io("running the archive helper", e))?;
        let stdout = child.stdout.take().ok_or_else(|| EngineError::Internal("archive helper has no stdout".into()))?;
        Ok((stat, ArchiveReader { engine: self.clone(), id, root: Some(root), child, stdout }))
    }

    /// `PUT /containers/{id}/archive`: extracts a tar stream into directory `path`.
    pub async fn archive_put<R: AsyncRead + Unpin>(&self, reference: &str, path: &str, no_overwrite_dir_non_dir: bool, copy_uid_gid: bool, mut body: R) -> Result<()> {
        let (id, root) = self.archive_root(reference).await?;
        let result = async {
            let mut flags = Vec::new();
            if no_overwrite_dir_non_dir {
                flags.push("--no-overwrite-dir-non-dir");
            }
            if copy_uid_gid {
                flags.push("--copy-uid-gid");
            }
            let mut child = self
                .helper(&root.root, "put", path, &flags)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| EngineError::io("running the archive helper", e))?;
            let mut stdin = child.stdin.take().ok_or_else(|| EngineError::Internal("archive helper has no stdin".into()))?;
            let copy = tokio::io::copy(&mut body, &mut stdin).await;
            let _ = stdin.shutdown().await;
            drop(stdin);
            let out = child.wait_with_output().await.map_err(|e| EngineError::io("waiting for the archive helper", e))?;
            check_helper(out.status.code(), &out.stderr, &id, path)?;
            copy.map_err(|e| EngineError::io("reading the archive upload", e))?;
            Ok(())
        }
        .await;
        self.release_archive_root(&id, &root);
        result
    }
}

/// The tar stream of `archive_get`; releases the temporary rootfs mount when finished.
pub struct ArchiveReader {
    engine: Engine,
    id: String,
    root: Option<ArchiveRoot>,
    child: Child,
    pub stdout: tokio::process::ChildStdout,
}

impl ArchiveReader {
    /// Call after the stream is consumed.
    pub async fn finish(mut self) {
        let _ = self.child.wait().await;
        if let Some(root) = self.root.take() {
            self.engine.release_archive_root(&self.id, &root);
        }
    }
}

fn check_helper(code: Option<i32>, stderr: &[u8], id: &str, path: &str) -> Result<()> {
    let msg = String::from_utf8_lossy(stderr).trim().to_string();
    match code {
        Some(0) => Ok(()),
        Some(EXIT_NOT_FOUND) => Err(EngineError::NotFound(format!("Could not find the file {path} in container {id}"))),
        Some(EXIT_INVALID) => Err(EngineError::Invalid(msg)),
        _ => Err(EngineError::Internal(if msg.is_empty() { "archive helper failed".into() } else { msg })),
    }
}

// ---- the helper process (single-threaded, chrooted) ----

/// Entry point of `shoal archive-helper <root> <stat|get|put> <path> [flags]`. Returns the exit code.
pub fn archive_helper_main(args: &[String]) -> i32 {
    let (Some(root), Some(op), Some(path)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: archive-helper <root> <stat|get|put> <path> [flags]");
        return 1;
    };
    let flags = &args[3..];
    if let Err(e) = nix::unistd::chroot(root.as_str()).and_then(|_| nix::unistd::chdir("/")) {
        eprintln!("entering the container root {root}: {e}");
        return 1;
    }
    let path = if path.is_empty() { "/".to_string() } else { path.clone() };
    let result = match op.as_str() {
        "stat" => helper_stat(&path).and_then(|s| {
            serde_json::to_writer(std::io::stdout(), &s).map_err(|e| (1, e.to_string()))
        }),
        "get" => helper_get(&path),
        "put" => helper_put(
            &path,
            flags.iter().any(|f| f == "--no-overwrite-dir-non-dir"),
            flags.iter().any(|f| f == "--copy-uid-gid"),
        ),
        other => Err((1, format!("unknown archive operation {other}"))),
    };
    match result {
        Ok(()) => 0,
        Err((code, msg)) => {
            eprintln!("{msg}");
            code
        }
    }
}

type HelperResult<T> = std::result::Result<T, (i32, String)>;

fn not_found(e: std::io::Error, path: &str) -> (i32, String) {
    if e.kind() == std::io::ErrorKind::NotFound {
        (EXIT_NOT_FOUND, format!("no such file or directory: {path}"))
    } else {
        (1, format!("{path}: {e}"))
    }
}

fn helper_stat(path: &str) -> HelperResult<PathStat> {
    // The final component is not followed (like lstat); a trailing "/." or "/" asks for the dir.
    let trimmed = path.trim_end_matches("/.");
    let meta = std::fs::symlink_metadata(if trimmed.is_empty() { "/" } else { trimmed }).map_err(|e| not_found(e, path))?;
    let link_target = if meta.file_type().is_symlink() {
        std::fs::read_link(trimmed).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default()
    } else {
        String::new()
    };
    let name = Path::new(trimmed).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into());
    Ok(PathStat {
        name,
        size: meta.size() as i64,
        mode: go_file_mode(meta.mode()),
        mtime: DateTime::from_timestamp(meta.mtime(), meta.mtime_nsec() as u32).unwrap_or_default(),
        link_target,
    })
}

fn helper_get(path: &str) -> HelperResult<()> {
    let trimmed = path.trim_end_matches('/');
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    let contents_only = path.ends_with("/.");
    let source = trimmed.trim_end_matches("/.");
    let source = if source.is_empty() { "/" } else { source };
    let meta = std::fs::symlink_metadata(source).map_err(|e| not_found(e, path))?;
    let stdout = std::io::stdout();
    let mut builder = tar::Builder::new(stdout.lock());
    builder.follow_symlinks(false);
    let base = Path::new(source).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| ".".into());
    let io_err = |e: std::io::Error| (1, format!("archiving {path}: {e}"));
    if meta.is_dir() {
        let name = if contents_only { ".".to_string() } else { base };
        builder.append_dir_all(&name, source).map_err(io_err)?;
    } else {
        builder.append_path_with_name(source, &base).map_err(io_err)?;
    }
    builder.into_inner().and_then(|mut w| w.flush()).map_err(io_err)?;
    Ok(())
}

fn helper_put(dir: &str, no_overwrite_dir_non_dir: bool, copy_uid_gid: bool) -> HelperResult<()> {
    let meta = std::fs::metadata(dir).map_err(|e| not_found(e, dir))?;
    if !meta.is_dir() {
        return Err((EXIT_INVALID, "extraction point is not a directory".into()));
    }
    let mut input = std::io::stdin().lock();
    let mut magic = [0u8; 6];
    let mut got = 0;
    while got < magic.len() {
        match input.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err((1, format!("reading the archive: {e}"))),
        }
    }
    let head = std::io::Cursor::new(magic[..got].to_vec());
    let chained = head.chain(input);
    let reader: Box<dyn Read> = if got >= 2 && magic[0] == 0x1f && magic[1] == 0x8b {
        Box::new(flate2::read::GzDecoder::new(chained))
    } else {
        Box::new(chained)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let entries = archive.entries().map_err(|e| (EXIT_INVALID, format!("reading the archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| (EXIT_INVALID, format!("reading the archive: {e}")))?;
        let rel = entry.path().map_err(|e| (EXIT_INVALID, format!("bad path in archive: {e}")))?.into_owned();
        let target = Path::new(dir).join(&rel);
        if no_overwrite_dir_non_dir {
            if let Ok(existing) = std::fs::symlink_metadata(&target) {
                let incoming_dir = entry.header().entry_type().is_dir();
                if existing.is_dir() && !incoming_dir {
                    return Err((EXIT_INVALID, format!("cannot overwrite directory \"{}\" with non-directory \"{}\"", target.display(), rel.display())));
                }
                if !existing.is_dir() && incoming_dir {
                    return Err((EXIT_INVALID, format!("cannot overwrite non-directory \"{}\" with directory \"{}\"", target.display(), rel.display())));
                }
            }
        }
        let uid = entry.header().uid().unwrap_or(0);
        let gid = entry.header().gid().unwrap_or(0);
        let unpacked = entry.unpack_in(dir).map_err(|e| (1, format!("extracting {}: {e}", rel.display())))?;
        if unpacked {
            let (uid, gid) = if copy_uid_gid { (uid as u32, gid as u32) } else { (0, 0) };
            let _ = std::os::unix::fs::lchown(&target, Some(uid), Some(gid));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_modes_match_the_cli() {
        assert_eq!(go_file_mode(libc::S_IFDIR | 0o755), 2147484141);
        assert_eq!(go_file_mode(libc::S_IFREG | 0o644), 420);
        assert_eq!(go_file_mode(libc::S_IFLNK | 0o777), (1 << 27) | 0o777);
    }
}

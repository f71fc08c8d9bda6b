//! Small durable-filesystem helpers: atomic writes, temp dirs that clean up after themselves.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::error::{ImageError, IoCtx};

pub(crate) fn rand_hex(n: usize) -> String {
    let mut b = vec![0u8; n.div_ceil(2)];
    rand::thread_rng().fill(&mut b[..]);
    let mut s = hex::encode(b);
    s.truncate(n);
    s
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir).and_then(|f| f.sync_all()).ctx(dir)
}

/// write temp + fsync + rename + fsync(dir): readers see the old or the new content, never a mix.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", rand_hex(8)));
    let res = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).ctx(&tmp)?;
        f.write_all(data).ctx(&tmp)?;
        f.sync_all().ctx(&tmp)?;
        fs::rename(&tmp, path).ctx(path)?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Flush a whole directory tree's filesystem (one syscall instead of an fsync per file).
pub(crate) fn syncfs(dir: &Path) -> Result<(), ImageError> {
    let f = File::open(dir).ctx(dir)?;
    nix::unistd::syncfs(f.as_raw_fd()).ctx(dir)
}

/// A directory removed (recursively) on drop unless it was renamed away first.
pub(crate) struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(parent: &Path, prefix: &str) -> Result<TempDir, ImageError> {
        let path = parent.join(format!("{prefix}-{}", rand_hex(16)));
        fs::create_dir(&path).ctx(&path)?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.path.exists() {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "failed to remove temp dir");
            }
        }
    }
}

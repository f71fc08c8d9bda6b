//! Small shared helpers: randomness, hashing, paths, packages, waiting, processes.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `n` random bytes from the kernel, hex encoded (2n chars).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    hex::encode(buf)
}

/// Lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Lowercase hex sha256 of a file's content.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// The cargo workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| here.to_path_buf())
}

/// Where test images are cached: `$SHOAL_TEST_IMAGES` or `<workspace>/target/test-images`.
pub fn test_images_dir() -> PathBuf {
    match std::env::var_os("SHOAL_TEST_IMAGES") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target").join("test-images"),
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes. Returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

static APT_LOCK: Mutex<()> = Mutex::new(());

/// Makes sure the Debian packages are installed: checks `dpkg -s` first, then runs
/// `apt-get install -y` for the missing ones (retrying once after `apt-get update`).
/// Services are not started when the host has a policy-rc.d (as Debian containers do).
/// Panics when installation fails.
pub fn ensure_packages(pkgs: &[&str]) {
    let _g = APT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return;
    }
    eprintln!("shoal-testkit: installing missing packages: apt-get install -y {}", missing.join(" "));
    let install = || {
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !install() {
        eprintln!("shoal-testkit: apt-get install failed; running apt-get update and retrying");
        let _ = Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300", "update"])
            .stdout(Stdio::null())
            .status();
        if !install() {
            panic!("shoal-testkit: could not install {missing:?}");
        }
    }
    for p in &missing {
        assert!(dpkg_installed(p), "package {p} still not installed");
    }
    eprintln!("shoal-testkit: installed {}", missing.join(" "));
}

/// Runs a command to completion, killing it (by its pid) after `timeout`.
pub(crate) fn output_with_timeout(mut cmd: Command, timeout: Duration) -> io::Result<Output> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = t1.join().unwrap_or_default();
    let mut stderr = t2.join().unwrap_or_default();
    if Instant::now() >= deadline {
        stderr.extend_from_slice(format!("\n[shoal-testkit: killed after {timeout:?}]\n").as_bytes());
    }
    Ok(Output { status, stdout, stderr })
}

/// Runs a command and panics with its output when it fails.
pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILLs and reaps the child.
pub(crate) fn terminate_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: signalling a pid we spawned and have not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if !wait_until(grace, || matches!(child.try_wait(), Ok(Some(_)))) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The last `n` lines of a text file (empty string if unreadable).
pub(crate) fn tail_file(path: &Path, n: usize) -> String {
    let data = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&data);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A unique temporary sibling of `path` (same directory, so rename is atomic).
pub(crate) fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".tmp-{name}-{}-{}", std::process::id(), random_hex(4)))
}

/// True when running as root; otherwise prints why `what` is skipped (root integration tests
/// skip themselves rather than fail for an unprivileged `cargo test`).
pub fn running_as_root(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("SKIP: {what} need root");
        false
    }
}

//! OCI `config.json` generation with Docker's defaults (moby `oci/defaults.go` and
//! `daemon/oci_linux.go`): namespaces, default mounts, capabilities, masked and read-only paths,
//! device cgroup rules and rlimits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use crate::user::ResolvedUser;
use crate::RuntimeError;

/// Everything needed to describe one container to the OCI runtime.
#[derive(Debug, Clone, Default)]
pub struct SpecInput {
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: ResolvedUser,
    pub tty: bool,
    pub hostname: String,
    /// Join this network namespace; `None` creates a new one.
    pub netns_path: Option<PathBuf>,
    pub mounts: Vec<MountSpec>,
    pub memory_limit: Option<i64>,
    pub memory_swap: Option<i64>,
    /// CPU quota = nano_cpus * period / 1e9 with period 100000.
    pub nano_cpus: Option<i64>,
    pub cpu_shares: Option<u64>,
    pub pids_limit: Option<i64>,
    pub cgroups_path: String,
    pub readonly_rootfs: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    /// `--init`: bind-mount this static init read-only at /sbin/docker-init and run it first.
    pub init_path: Option<PathBuf>,
    pub sysctls: BTreeMap<String, String>,
    pub oom_score_adj: Option<i32>,
    /// (name, soft, hard); name like "nofile" or "RLIMIT_NOFILE".
    pub rlimits: Vec<(String, u64, u64)>,
}

/// A mount requested by the engine (volume, bind, tmpfs, hosts/resolv.conf files...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: PathBuf,
    pub destination: String,
    pub kind: MountKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    Bind { readonly: bool },
    Tmpfs { options: Vec<String> },
}

/// Where `--init` puts the init binary inside the container.
pub const INIT_PATH_IN_CONTAINER: &str = "/sbin/docker-init";
/// PATH used when the container's environment has none (Docker's default).
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const CPU_PERIOD: u64 = 100_000;
const DEFAULT_NOFILE: u64 = 1_048_576;

/// Capability names (without the CAP_ prefix) with their numbers.
const ALL_CAPS: &[(&str, u32)] = &[
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("LINUX_IMMUTABLE", 9),
    ("NET_BIND_SERVICE", 10),
    ("NET_BROADCAST", 11),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("IPC_LOCK", 14),
    ("IPC_OWNER", 15),
    ("SYS_MODULE", 16),
    ("SYS_RAWIO", 17),
    ("SYS_CHROOT", 18),
    ("SYS_PTRACE", 19),
    ("SYS_PACCT", 20),
    ("SYS_ADMIN", 21),
    ("SYS_BOOT", 22),
    ("SYS_NICE", 23),
    ("SYS_RESOURCE", 24),
    ("SYS_TIME", 25),
    ("SYS_TTY_CONFIG", 26),
    ("MKNOD", 27),
    ("LEASE", 28),
    ("AUDIT_WRITE", 29),
    ("AUDIT_CONTROL", 30),
    ("SETFCAP", 31),
    ("MAC_OVERRIDE", 32),
    ("MAC_ADMIN", 33),
    ("SYSLOG", 34),
    ("WAKE_ALARM", 35),
    ("BLOCK_SUSPEND", 36),
    ("AUDIT_READ", 37),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

/// Docker's default capability set (moby `oci/caps/defaults.go`), with the CAP_ prefix.
pub fn default_capabilities() -> Vec<String> {
    [
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ]
    .iter()
    .map(|c| format!("CAP_{c}"))
    .collect()
}

/// Every capability the running kernel knows (bounded by /proc/sys/kernel/cap_last_cap).
pub fn all_capabilities() -> Vec<String> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    ALL_CAPS
        .iter()
        .filter(|(_, n)| *n <= last)
        .map(|(c, _)| format!("CAP_{c}"))
        .collect()
}

fn normalize_cap(name: &str) -> Result<String, RuntimeError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare == "ALL" {
        return Ok("ALL".into());
    }
    if ALL_CAPS.iter().any(|(c, _)| *c == bare) {
        Ok(format!("CAP_{bare}"))
    } else {
        Err(RuntimeError::InvalidInput(format!(
            "unknown capability: {name:?}"
        )))
    }
}

/// Docker's `TweakCapabilities`: start from the defaults (or everything when privileged), apply
/// drops then adds; "ALL" is accepted in both lists.
pub fn tweak_capabilities(
    cap_add: &[String],
    cap_drop: &[String],
    privileged: bool,
) -> Result<Vec<String>, RuntimeError> {
    if privileged {
        return Ok(all_capabilities());
    }
    let adds = cap_add
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<Vec<_>, _>>()?;
    let drops = cap_drop
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<Vec<_>, _>>()?;
    let mut caps: Vec<String> = if adds.iter().any(|c| c == "ALL") {
        all_capabilities()
    } else {
        default_capabilities()
    };
    if drops.iter().any(|c| c == "ALL") {
        caps.clear();
    } else {
        caps.retain(|c| !drops.contains(c));
    }
    if !adds.iter().any(|c| c == "ALL") {
        for a in adds {
            if !caps.contains(&a) {
                caps.push(a);
            }
        }
    } else if drops.iter().any(|c| c == "ALL") {
        // --cap-add ALL --cap-drop ALL: Docker keeps everything added explicitly, i.e. all.
        caps = all_capabilities();
    }
    Ok(caps)
}

fn rlimit_type(name: &str) -> Result<String, RuntimeError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("RLIMIT_") {
        upper
    } else {
        format!("RLIMIT_{upper}")
    };
    // Validate against oci-spec's list.
    serde_json::from_value::<oci_spec::runtime::PosixRlimitType>(Value::String(full.clone()))
        .map_err(|_| RuntimeError::InvalidInput(format!("unknown rlimit: {name:?}")))?;
    Ok(full)
}

/// Docker's rlimits: RLIMIT_NOFILE 1048576 unless overridden, plus the requested ones.
pub(crate) fn rlimits_json(rlimits: &[(String, u64, u64)]) -> Result<Vec<Value>, RuntimeError> {
    let nofile = default_nofile();
    let mut out: Vec<(String, u64, u64)> = vec![("RLIMIT_NOFILE".into(), nofile, nofile)];
    for (name, soft, hard) in rlimits {
        let typ = rlimit_type(name)?;
        if soft > hard {
            return Err(RuntimeError::InvalidInput(format!(
                "rlimit {name}: soft limit {soft} exceeds hard limit {hard}"
            )));
        }
        out.retain(|(t, _, _)| *t != typ);
        out.push((typ, *soft, *hard));
    }
    Ok(out
        .into_iter()
        .map(|(t, s, h)| json!({"type": t, "soft": s, "hard": h}))
        .collect())
}

/// Docker's default RLIMIT_NOFILE (1048576), clamped to our own hard limit when we lack
/// CAP_SYS_RESOURCE and so could not raise it (setrlimit would fail with EPERM).
fn default_nofile() -> u64 {
    const CAP_SYS_RESOURCE: u32 = 24;
    let has_sys_resource = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_none_or(|caps| caps & (1u64 << CAP_SYS_RESOURCE) != 0);
    if has_sys_resource {
        return DEFAULT_NOFILE;
    }
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((_soft, hard)) => DEFAULT_NOFILE.min(hard),
        Err(_) => DEFAULT_NOFILE,
    }
}

/// Adds PATH (and TERM for a tty) when missing, like Docker.
pub(crate) fn complete_env(env: &[String], tty: bool) -> Vec<String> {
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH_ENV.to_string());
    }
    if tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".to_string());
    }
    env
}

pub(crate) fn caps_json(caps: &[String]) -> Value {
    json!({ "bounding": caps, "effective": caps, "permitted": caps })
}

fn default_masked_paths() -> Vec<&'static str> {
    vec![
        "/proc/asound",
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ]
}

fn default_readonly_paths() -> Vec<&'static str> {
    vec![
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]
}

/// Device cgroup rules (moby `oci/defaults.go` + `daemon/oci_linux.go` WithDevices).
fn device_cgroup_rules(privileged: bool) -> Vec<Value> {
    if privileged {
        return vec![json!({"allow": true, "access": "rwm"})];
    }
    let mut v = vec![json!({"allow": false, "access": "rwm"})];
    // mknod for any char/block device
    v.push(json!({"allow": true, "type": "c", "access": "m"}));
    v.push(json!({"allow": true, "type": "b", "access": "m"}));
    for (maj, min) in [
        (1, 3),
        (1, 8),
        (1, 7),
        (5, 0),
        (1, 5),
        (1, 9),
        (5, 1),
        (5, 2),
        (10, 200),
    ] {
        v.push(json!({"allow": true, "type": "c", "major": maj, "minor": min, "access": "rwm"}));
    }
    v.push(json!({"allow": true, "type": "c", "major": 136, "access": "rwm"}));
    v
}

/// Host devices for a privileged container (top level of /dev, char and block nodes).
fn host_devices() -> Vec<Value> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let skip = [
        "console", "ptmx", "tty", "null", "zero", "full", "random", "urandom",
    ];
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/dev") else {
        return out;
    };
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if skip.contains(&name.as_str()) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(ent.path()) else {
            continue;
        };
        let ft = meta.file_type();
        let typ = if ft.is_char_device() {
            "c"
        } else if ft.is_block_device() {
            "b"
        } else {
            continue;
        };
        let rdev = meta.rdev();
        out.push(json!({
            "path": format!("/dev/{name}"),
            "type": typ,
            "major": libc::major(rdev),
            "minor": libc::minor(rdev),
            "fileMode": meta.mode() & 0o7777,
            "uid": meta.uid(),
            "gid": meta.gid(),
        }));
    }
    out
}

fn tmpfs_options(user: &[String]) -> Vec<String> {
    let mut opts: Vec<String> = vec!["nosuid".into(), "nodev".into(), "noexec".into()];
    for o in user {
        let opposite = match o.as_str() {
            "exec" => Some("noexec"),
            "suid" => Some("nosuid"),
            "dev" => Some("nodev"),
            "noexec" | "nosuid" | "nodev" => None,
            _ => None,
        };
        if let Some(opp) = opposite {
            opts.retain(|x| x != opp);
        }
        if !opts.contains(o) {
            opts.push(o.clone());
        }
    }
    opts
}

fn is_cgroup2_unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Builds the OCI spec for `input` (validated through oci-spec's types).
pub fn build_spec(input: &SpecInput) -> Result<Spec, RuntimeError> {
    if input.args.is_empty() {
        return Err(RuntimeError::InvalidInput("no command specified".into()));
    }
    if !input.rootfs.is_absolute() {
        return Err(RuntimeError::InvalidInput(format!(
            "rootfs {} must be an absolute path",
            input.rootfs.display()
        )));
    }
    let caps = tweak_capabilities(&input.cap_add, &input.cap_drop, input.privileged)?;
    let mut args = input.args.clone();
    if input.init_path.is_some() {
        let mut a = vec![INIT_PATH_IN_CONTAINER.to_string(), "--".to_string()];
        a.append(&mut args);
        args = a;
    }
    let cwd = if input.cwd.is_empty() {
        "/".to_string()
    } else {
        input.cwd.clone()
    };
    if !cwd.starts_with('/') {
        return Err(RuntimeError::InvalidInput(format!(
            "working directory {cwd:?} is not absolute"
        )));
    }

    let sys_opts: Vec<&str> = if input.privileged {
        vec!["nosuid", "noexec", "nodev"]
    } else {
        vec!["nosuid", "noexec", "nodev", "ro"]
    };
    let cg_opts: Vec<&str> = if input.privileged {
        vec!["nosuid", "noexec", "nodev"]
    } else {
        vec!["ro", "nosuid", "noexec", "nodev"]
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": cg_opts}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]}),
    ];
    // User mounts, parents before children (Docker sorts by path depth).
    let mut user_mounts: Vec<&MountSpec> = input.mounts.iter().collect();
    for m in &user_mounts {
        if !m.destination.starts_with('/') {
            return Err(RuntimeError::InvalidInput(format!(
                "mount destination {:?} is not absolute",
                m.destination
            )));
        }
    }
    user_mounts.sort_by_key(|m| Path::new(&m.destination).components().count());
    let default_dests = [
        "/proc",
        "/dev",
        "/dev/pts",
        "/sys",
        "/sys/fs/cgroup",
        "/dev/mqueue",
        "/dev/shm",
    ];
    for m in user_mounts {
        let dest = m.destination.trim_end_matches('/');
        let dest = if dest.is_empty() { "/" } else { dest };
        // A user mount replaces a default one at the same destination (e.g. --tmpfs /dev/shm).
        if default_dests.contains(&dest) {
            mounts.retain(|x| x["destination"] != dest);
        }
        match &m.kind {
            MountKind::Bind { readonly } => {
                let mut opts = vec!["rbind", "rprivate"];
                if *readonly {
                    opts.push("ro");
                }
                mounts.push(json!({"destination": dest, "type": "bind", "source": m.source, "options": opts}));
            }
            MountKind::Tmpfs { options } => {
                mounts.push(json!({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": tmpfs_options(options)}));
            }
        }
    }
    if let Some(init) = &input.init_path {
        mounts.push(json!({"destination": INIT_PATH_IN_CONTAINER, "type": "bind", "source": init, "options": ["bind", "ro"]}));
    }

    let mut namespaces = vec![json!({"type": "mount"})];
    match &input.netns_path {
        Some(p) => namespaces.push(json!({"type": "network", "path": p})),
        None => namespaces.push(json!({"type": "network"})),
    }
    namespaces.push(json!({"type": "uts"}));
    namespaces.push(json!({"type": "pid"}));
    namespaces.push(json!({"type": "ipc"}));
    if is_cgroup2_unified() {
        // Docker's default on cgroup v2 hosts is a private cgroup namespace.
        namespaces.push(json!({"type": "cgroup"}));
    }

    let mut resources = serde_json::Map::new();
    resources.insert(
        "devices".into(),
        Value::Array(device_cgroup_rules(input.privileged)),
    );
    let mut memory = serde_json::Map::new();
    if let Some(l) = input.memory_limit.filter(|l| *l > 0) {
        memory.insert("limit".into(), json!(l));
    }
    if let Some(s) = input.memory_swap.filter(|s| *s != 0) {
        memory.insert("swap".into(), json!(s));
    }
    if !memory.is_empty() {
        resources.insert("memory".into(), Value::Object(memory));
    }
    let mut cpu = serde_json::Map::new();
    if let Some(n) = input.nano_cpus.filter(|n| *n > 0) {
        let quota = (i128::from(n) * i128::from(CPU_PERIOD) / 1_000_000_000) as i64;
        cpu.insert("quota".into(), json!(quota.max(1000)));
        cpu.insert("period".into(), json!(CPU_PERIOD));
    }
    if let Some(s) = input.cpu_shares.filter(|s| *s > 0) {
        cpu.insert("shares".into(), json!(s));
    }
    if !cpu.is_empty() {
        resources.insert("cpu".into(), Value::Object(cpu));
    }
    if let Some(p) = input.pids_limit.filter(|p| *p != 0) {
        resources.insert("pids".into(), json!({"limit": p}));
    }

    let mut linux = json!({
        "namespaces": namespaces,
        "resources": Value::Object(resources),
        "cgroupsPath": input.cgroups_path,
        "sysctl": input.sysctls,
        "devices": if input.privileged { host_devices() } else { vec![] },
    });
    if !input.privileged {
        linux["maskedPaths"] = json!(default_masked_paths());
        linux["readonlyPaths"] = json!(default_readonly_paths());
    }

    let mut process = json!({
        "terminal": input.tty,
        "user": {
            "uid": input.user.uid,
            "gid": input.user.gid,
        },
        "args": args,
        "env": complete_env(&input.env, input.tty),
        "cwd": cwd,
        "capabilities": caps_json(&caps),
        "rlimits": rlimits_json(&input.rlimits)?,
        "noNewPrivileges": false,
    });
    if !input.user.additional_gids.is_empty() {
        process["user"]["additionalGids"] = json!(input.user.additional_gids);
    }
    if let Some(adj) = input.oom_score_adj {
        process["oomScoreAdj"] = json!(adj);
    }

    let spec = json!({
        "ociVersion": oci_spec::runtime::VERSION,
        "root": {"path": input.rootfs, "readonly": input.readonly_rootfs},
        "hostname": input.hostname,
        "mounts": mounts,
        "process": process,
        "linux": linux,
    });
    serde_json::from_value::<Spec>(spec).map_err(|e| RuntimeError::Spec(e.to_string()))
}

/// Writes `<bundle_dir>/config.json` for `input` (atomically, via a temp file + rename).
pub fn write_bundle(bundle_dir: &Path, input: &SpecInput) -> Result<(), RuntimeError> {
    let spec = build_spec(input)?;
    std::fs::create_dir_all(bundle_dir)
        .map_err(|e| RuntimeError::io("create bundle dir", bundle_dir, e))?;
    let data = serde_json::to_vec_pretty(&spec).map_err(|e| RuntimeError::Spec(e.to_string()))?;
    let tmp = bundle_dir.join(".config.json.tmp");
    let dst = bundle_dir.join("config.json");
    std::fs::write(&tmp, data).map_err(|e| RuntimeError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, &dst).map_err(|e| RuntimeError::io("rename", &dst, e))?;
    tracing::debug!(bundle = %bundle_dir.display(), "wrote oci bundle");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SpecInput {
        SpecInput {
            rootfs: "/tmp/rootfs".into(),
            args: vec!["echo".into(), "hi".into()],
            env: vec!["FOO=bar".into()],
            cwd: "/".into(),
            hostname: "abc".into(),
            cgroups_path: "/shoal-test/abc".into(),
            ..Default::default()
        }
    }

    fn to_json(s: &Spec) -> Value {
        serde_json::to_value(s).unwrap()
    }

    #[test]
    fn docker_defaults() {
        let v = to_json(&build_spec(&input()).unwrap());
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for n in ["pid", "ipc", "uts", "mount", "network"] {
            assert!(ns.contains(&n), "{n} missing");
        }
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/sys",
                "/sys/fs/cgroup",
                "/dev/mqueue",
                "/dev/shm"
            ]
        );
        let sys = &v["mounts"][3];
        assert!(sys["options"].as_array().unwrap().contains(&json!("ro")));
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(caps.len(), 14);
        assert!(caps.contains(&json!("CAP_NET_RAW")));
        assert!(v["process"]["capabilities"].get("ambient").is_none());
        assert!(v["process"]["capabilities"].get("inheritable").is_none());
        assert_eq!(v["process"]["noNewPrivileges"], json!(false));
        let n = default_nofile();
        assert_eq!(
            v["process"]["rlimits"][0],
            json!({"type": "RLIMIT_NOFILE", "soft": n, "hard": n})
        );
        assert!(v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().starts_with("PATH=")));
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/kcore")));
        assert!(v["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/sysrq-trigger")));
        let devs = v["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(devs[0]["allow"], json!(false));
        assert!(devs.iter().any(|d| d["major"] == json!(136)));
        assert_eq!(v["hostname"], json!("abc"));
        assert_eq!(v["linux"]["cgroupsPath"], json!("/shoal-test/abc"));
    }

    #[test]
    fn resources_mounts_init_netns() {
        let mut i = input();
        i.memory_limit = Some(64 << 20);
        i.memory_swap = Some(128 << 20);
        i.nano_cpus = Some(1_500_000_000);
        i.cpu_shares = Some(512);
        i.pids_limit = Some(20);
        i.readonly_rootfs = true;
        i.tty = true;
        i.init_path = Some("/usr/libexec/docker-init".into());
        i.netns_path = Some("/run/shoal/netns/abc".into());
        i.user = ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![10],
        };
        i.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        i.oom_score_adj = Some(100);
        i.rlimits = vec![("nofile".into(), 1024, 2048), ("nproc".into(), 10, 20)];
        i.mounts = vec![
            MountSpec {
                source: "/data/v/a".into(),
                destination: "/data/sub".into(),
                kind: MountKind::Bind { readonly: true },
            },
            MountSpec {
                source: "/data/v/b".into(),
                destination: "/data".into(),
                kind: MountKind::Bind { readonly: false },
            },
            MountSpec {
                source: "".into(),
                destination: "/run".into(),
                kind: MountKind::Tmpfs {
                    options: vec!["exec".into(), "size=1m".into()],
                },
            },
        ];
        let v = to_json(&build_spec(&i).unwrap());
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], json!(64 << 20));
        assert_eq!(r["memory"]["swap"], json!(128 << 20));
        assert_eq!(r["cpu"]["quota"], json!(150000));
        assert_eq!(r["cpu"]["period"], json!(100000));
        assert_eq!(r["cpu"]["shares"], json!(512));
        assert_eq!(r["pids"]["limit"], json!(20));
        assert_eq!(v["root"]["readonly"], json!(true));
        assert_eq!(v["process"]["terminal"], json!(true));
        assert!(v["process"]["env"]
            .as_array()
            .unwrap()
            .contains(&json!("TERM=xterm")));
        assert_eq!(
            v["process"]["args"],
            json!(["/sbin/docker-init", "--", "echo", "hi"])
        );
        assert_eq!(
            v["process"]["user"],
            json!({"uid": 1000, "gid": 1000, "additionalGids": [10]})
        );
        assert_eq!(v["process"]["oomScoreAdj"], json!(100));
        assert_eq!(v["linux"]["sysctl"]["net.ipv4.ip_forward"], json!("1"));
        let rl = v["process"]["rlimits"].as_array().unwrap();
        assert_eq!(rl.len(), 2);
        assert!(rl.contains(&json!({"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048})));
        let net = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap()
            .clone();
        assert_eq!(net["path"], json!("/run/shoal/netns/abc"));
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        let data = dests.iter().position(|d| *d == "/data").unwrap();
        let sub = dests.iter().position(|d| *d == "/data/sub").unwrap();
        assert!(data < sub);
        let init = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sbin/docker-init")
            .unwrap()
            .clone();
        assert_eq!(init["options"], json!(["bind", "ro"]));
        let run = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/run")
            .unwrap()
            .clone();
        assert_eq!(
            run["options"],
            json!(["nosuid", "nodev", "exec", "size=1m"])
        );
        let sub_m = &v["mounts"][sub];
        assert_eq!(sub_m["options"], json!(["rbind", "rprivate", "ro"]));
    }

    #[test]
    fn capabilities_add_drop() {
        let c = tweak_capabilities(
            &["sys_admin".into(), "CAP_NET_ADMIN".into()],
            &["cap_chown".into(), "Mknod".into()],
            false,
        )
        .unwrap();
        assert!(c.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_CHOWN".to_string()));
        assert!(!c.contains(&"CAP_MKNOD".to_string()));
        let c = tweak_capabilities(&["NET_ADMIN".into()], &["ALL".into()], false).unwrap();
        assert_eq!(c, vec!["CAP_NET_ADMIN".to_string()]);
        let c = tweak_capabilities(&["all".into()], &[], false).unwrap();
        assert!(c.len() >= 38);
        let c = tweak_capabilities(&["ALL".into()], &["sys_admin".into()], false).unwrap();
        assert!(!c.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()));
        let e = tweak_capabilities(&["NOPE".into()], &[], false).unwrap_err();
        assert!(matches!(e, RuntimeError::InvalidInput(_)));
        assert!(e.to_string().contains("NOPE"));
        let mut i = input();
        i.cap_add = vec!["bogus".into()];
        assert!(matches!(build_spec(&i), Err(RuntimeError::InvalidInput(_))));
    }

    #[test]
    fn privileged_and_validation() {
        let mut i = input();
        i.privileged = true;
        let v = to_json(&build_spec(&i).unwrap());
        assert!(v["linux"].get("maskedPaths").is_none());
        assert_eq!(
            v["linux"]["resources"]["devices"][0],
            json!({"allow": true, "access": "rwm"})
        );
        assert!(v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .contains(&json!("CAP_SYS_ADMIN")));
        let mut i = input();
        i.args.clear();
        assert!(build_spec(&i).is_err());
        let mut i = input();
        i.rlimits = vec![("bogus".into(), 1, 1)];
        assert!(build_spec(&i).is_err());
        let dir = std::env::temp_dir().join(format!("shoal-bundle-{}", std::process::id()));
        write_bundle(&dir, &input()).unwrap();
        let spec = Spec::load(dir.join("config.json")).unwrap();
        assert_eq!(spec.hostname().as_deref(), Some("abc"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `docker top` and `docker stats`: read from the container's cgroup and `/proc`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{EngineError, Result};
use crate::model::Status;
use crate::Engine;

#[derive(Debug, Clone)]
pub struct TopResult {
    pub titles: Vec<String>,
    pub processes: Vec<Vec<String>>,
}

/// One sample of a container's resource use.
#[derive(Debug, Clone, Default)]
pub struct StatsSample {
    pub read: Option<DateTime<Utc>>,
    pub cpu_total_ns: u64,
    pub system_cpu_ns: u64,
    pub online_cpus: u32,
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub memory_cache: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub net_rx_packets: u64,
    pub net_tx_packets: u64,
    pub blk_read: u64,
    pub blk_write: u64,
}

/// Cgroup directories of a container: v1 per controller, or the one v2 directory.
fn cgroup_dirs(cgroups_path: &str, controller: &str) -> Vec<PathBuf> {
    let rel = cgroups_path.trim_start_matches('/');
    let mut dirs = Vec::new();
    let v1 = PathBuf::from("/sys/fs/cgroup").join(controller).join(rel);
    if v1.exists() {
        dirs.push(v1);
    }
    for v2root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let v2 = PathBuf::from(v2root).join(rel);
        if v2.join("cgroup.controllers").exists() {
            dirs.push(v2);
        }
    }
    dirs
}

fn read_u64(path: PathBuf) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn container_pids(cgroups_path: &str) -> BTreeSet<i32> {
    let mut pids = BTreeSet::new();
    for controller in ["pids", "memory", "cpu,cpuacct", "freezer", "devices"] {
        for dir in cgroup_dirs(cgroups_path, controller) {
            collect_procs(&dir, &mut pids);
        }
        if !pids.is_empty() {
            break;
        }
    }
    pids
}

fn collect_procs(dir: &PathBuf, pids: &mut BTreeSet<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_procs(&e.path(), pids);
            }
        }
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn boot_time() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}

fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

fn ps_row(pid: i32, ticks: u64, btime: u64) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    let comm = stat.get(stat.find('(')? + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let ppid = fields.get(1)?.to_string();
    let tty_nr: i64 = fields.get(4)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid: u32 = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmd = if cmdline.is_empty() {
        format!("[{comm}]")
    } else {
        cmdline.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect::<Vec<_>>().join(" ")
    };
    let cpu_secs = (utime + stime) / ticks;
    let started = DateTime::from_timestamp((btime + start / ticks) as i64, 0).unwrap_or_default();
    let stime_text = if Utc::now().signed_duration_since(started).num_hours() < 24 {
        started.format("%H:%M").to_string()
    } else {
        started.format("%b%d").to_string()
    };
    Some(vec![
        user_name(uid),
        pid.to_string(),
        ppid,
        "0".into(),
        stime_text,
        if tty_nr == 0 { "?".into() } else { format!("pts/{}", tty_nr & 0xff) },
        format!("{:02}:{:02}:{:02}", cpu_secs / 3600, (cpu_secs / 60) % 60, cpu_secs % 60),
        cmd,
    ])
}

impl Engine {
    fn running_record(&self, reference: &str) -> Result<crate::ContainerRecord> {
        let rec = self.inspect(reference)?;
        if rec.state.status != Status::Running {
            return Err(EngineError::Conflict(format!("container {} is not running", rec.id)));
        }
        Ok(rec)
    }

    /// `docker top`: the container's processes in `ps -ef` columns.
    pub async fn top(&self, reference: &str) -> Result<TopResult> {
        let rec = self.running_record(reference)?;
        let cgroups_path = self.cgroups_path(&rec.id);
        let init = rec.state.pid;
        tokio::task::spawn_blocking(move || {
            let mut pids = container_pids(&cgroups_path);
            if pids.is_empty() && init > 0 {
                pids.insert(init);
            }
            let ticks = clock_ticks();
            let btime = boot_time();
            TopResult {
                titles: ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"].iter().map(|s| s.to_string()).collect(),
                processes: pids.into_iter().filter_map(|p| ps_row(p, ticks, btime)).collect(),
            }
        })
        .await
        .map_err(|e| EngineError::Internal(format!("top: {e}")))
    }

    /// One stats sample (a second sample taken `interval` later gives CPU percentages).
    pub async fn stats(&self, reference: &str) -> Result<StatsSample> {
        let rec = self.inspect(reference)?;
        if rec.state.status != Status::Running {
            return Ok(StatsSample { read: Some(Utc::now()), ..Default::default() });
        }
        let cgroups_path = self.cgroups_path(&rec.id);
        let pid = rec.state.pid;
        tokio::task::spawn_blocking(move || sample(&cgroups_path, pid))
            .await
            .map_err(|e| EngineError::Internal(format!("stats: {e}")))
    }

    pub async fn stats_pair(&self, reference: &str, interval: Duration) -> Result<(StatsSample, StatsSample)> {
        let first = self.stats(reference).await?;
        tokio::time::sleep(interval).await;
        let second = self.stats(reference).await?;
        Ok((first, second))
    }
}

fn sample(cgroups_path: &str, pid: i32) -> StatsSample {
    let mut s = StatsSample { read: Some(Utc::now()), ..Default::default() };
    s.online_cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    // System CPU time in ns from /proc/stat, as dockerd reports it.
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        if let Some(line) = stat.lines().next() {
            let total: u64 = line.split_whitespace().skip(1).take(7).filter_map(|v| v.parse::<u64>().ok()).sum();
            s.system_cpu_ns = total * (1_000_000_000 / clock_ticks());
        }
    }
    for dir in cgroup_dirs(cgroups_path, "cpu,cpuacct").into_iter().chain(cgroup_dirs(cgroups_path, "cpuacct")) {
        if let Some(v) = read_u64(dir.join("cpuacct.usage")) {
            s.cpu_total_ns = v;
        } else if let Ok(text) = std::fs::read_to_string(dir.join("cpu.stat")) {
            if let Some(us) = text.lines().find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse::<u64>().ok())) {
                s.cpu_total_ns = us * 1000;
            }
        }
    }
    for dir in cgroup_dirs(cgroups_path, "memory") {
        if let Some(v) = read_u64(dir.join("memory.usage_in_bytes")).or_else(|| read_u64(dir.join("memory.current"))) {
            s.memory_usage = v;
        }
        s.memory_limit = read_u64(dir.join("memory.limit_in_bytes"))
            .or_else(|| read_u64(dir.join("memory.max")))
            .unwrap_or(0);
        if let Ok(text) = std::fs::read_to_string(dir.join("memory.stat")) {
            s.memory_cache = text
                .lines()
                .find_map(|l| l.strip_prefix("total_inactive_file ").or_else(|| l.strip_prefix("inactive_file ")).and_then(|v| v.trim().parse().ok()))
                .unwrap_or(0);
        }
    }
    let host_mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:").and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())))
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    if s.memory_limit == 0 || s.memory_limit > host_mem {
        s.memory_limit = host_mem;
    }
    for dir in cgroup_dirs(cgroups_path, "pids") {
        s.pids_current = read_u64(dir.join("pids.current")).unwrap_or(0);
        s.pids_limit = read_u64(dir.join("pids.max")).unwrap_or(0);
    }
    for dir in cgroup_dirs(cgroups_path, "blkio") {
        if let Ok(text) = std::fs::read_to_string(dir.join("blkio.throttle.io_service_bytes")) {
            for l in text.lines() {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() == 3 {
                    let v: u64 = f[2].parse().unwrap_or(0);
                    match f[1] {
                        "Read" => s.blk_read += v,
                        "Write" => s.blk_write += v,
                        _ => {}
                    }
                }
            }
        }
    }
    if pid > 0 {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) {
            for l in text.lines().skip(2) {
                let Some((iface, rest)) = l.split_once(':') else { continue };
                if iface.trim() == "lo" {
                    continue;
                }
                let f: Vec<u64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
                if f.len() >= 10 {
                    s.net_rx_bytes += f[0];
                    s.net_rx_packets += f[1];
                    s.net_tx_bytes += f[8];
                    s.net_tx_packets += f[9];
                }
            }
        }
    }
    s
}

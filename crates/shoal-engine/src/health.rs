//! Healthchecks (moby `daemon/health.go`): the effective config (image default, container
//! override, `NONE`), Docker's state rules as pure functions, and the per-container probe loop
//! that runs each probe through the exec machinery.
//!
//! Rules: a probe that exits 0 makes the container `healthy` and resets the failing streak; a
//! failure counts unless the container is still `starting` and the probe began inside the start
//! period; `retries` consecutive counted failures make it `unhealthy`. Each status change emits
//! `health_status: <status>`. The loop runs only while the container runs; every start (and
//! re-adoption after a daemon restart) resets the status to `starting`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{debug, warn};

use crate::model::*;
use crate::{lock, Container, Engine, ExecConfig};

/// Longest probe output kept (longer output is cut and gets `...`).
pub const MAX_OUTPUT_LEN: usize = 4096;
/// Results kept in `State.Health.Log`.
pub const MAX_LOG_ENTRIES: usize = 5;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_START_PERIOD: Duration = Duration::ZERO;
pub const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_RETRIES: u32 = 3;
/// Docker's `container.MinimumDuration` for every healthcheck duration.
const MINIMUM_NS: i64 = 1_000_000;
/// How long a timed-out probe may take to go away after it was killed.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Whether `h` makes probes run (`CMD`/`CMD-SHELL` with a command; not `NONE` or empty).
pub fn is_active(h: &HealthConfig) -> bool {
    matches!(h.test.first().map(String::as_str), Some("CMD") | Some("CMD-SHELL")) && h.test.len() >= 2
}

/// Checks a client's healthcheck the way dockerd does (`validateHealthCheck`).
pub fn validate(h: &HealthConfig) -> Result<(), String> {
    for (ns, what) in [(h.interval, "Interval"), (h.timeout, "Timeout")] {
        if ns != 0 && ns < MINIMUM_NS {
            return Err(format!("{what} in Healthcheck cannot be less than 1ms"));
        }
    }
    if h.retries < 0 {
        return Err("Retries in Healthcheck cannot be negative".into());
    }
    for (ns, what) in [(h.start_period, "StartPeriod"), (h.start_interval, "StartInterval")] {
        if ns != 0 && ns < MINIMUM_NS {
            return Err(format!("{what} in Healthcheck cannot be less than 1ms"));
        }
    }
    Ok(())
}

/// The image config's `Healthcheck` (Docker's JSON keys) as a [`HealthConfig`].
pub fn from_image_json(v: &serde_json::Value) -> Option<HealthConfig> {
    let obj = v.as_object()?;
    let int = |k: &str| obj.get(k).and_then(|x| x.as_i64()).unwrap_or(0);
    let test = obj
        .get("Test")
        .and_then(|t| t.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    Some(HealthConfig {
        test,
        interval: int("Interval"),
        timeout: int("Timeout"),
        start_period: int("StartPeriod"),
        start_interval: int("StartInterval"),
        retries: int("Retries"),
    })
}

/// Docker's merge (`daemon/commit.go`): without a container healthcheck the image's applies;
/// otherwise every field the container left empty/zero comes from the image.
pub fn merge(container: Option<&HealthConfig>, image: Option<&serde_json::Value>) -> Option<HealthConfig> {
    let image = image.and_then(from_image_json);
    match (container, image) {
        (None, image) => image,
        (Some(c), None) => Some(c.clone()),
        (Some(c), Some(i)) => {
            let pick = |a: i64, b: i64| if a == 0 { b } else { a };
            Some(HealthConfig {
                test: if c.test.is_empty() { i.test } else { c.test.clone() },
                interval: pick(c.interval, i.interval),
                timeout: pick(c.timeout, i.timeout),
                start_period: pick(c.start_period, i.start_period),
                start_interval: pick(c.start_interval, i.start_interval),
                retries: pick(c.retries, i.retries),
            })
        }
    }
}

/// A healthcheck's durations and retries with Docker's defaults for zero values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub start_interval: Duration,
    pub retries: u32,
}

impl Timing {
    pub fn of(h: &HealthConfig) -> Timing {
        let d = |ns: i64, default: Duration| if ns <= 0 { default } else { Duration::from_nanos(ns as u64) };
        Timing {
            interval: d(h.interval, DEFAULT_INTERVAL),
            timeout: d(h.timeout, DEFAULT_TIMEOUT),
            start_period: d(h.start_period, DEFAULT_START_PERIOD),
            start_interval: d(h.start_interval, DEFAULT_START_INTERVAL),
            retries: if h.retries <= 0 { DEFAULT_RETRIES } else { h.retries.min(u32::MAX as i64) as u32 },
        }
    }

    /// The wait before the next probe (Docker's `getInterval`): the interval once the start
    /// period is over; inside it, the start interval while `starting`, never past its end.
    pub fn next_delay(&self, started_at: DateTime<Utc>, now: DateTime<Utc>, status: HealthStatus) -> Duration {
        let elapsed = (now - started_at).to_std().unwrap_or(Duration::ZERO);
        if elapsed >= self.start_period {
            return self.interval;
        }
        let remaining = self.start_period - elapsed;
        if remaining < self.interval {
            return remaining;
        }
        if status == HealthStatus::Starting {
            self.start_interval
        } else {
            self.interval
        }
    }
}

/// The health of a container that just started: `starting`, streak 0, earlier results kept.
pub fn reset(previous: Option<Health>) -> Health {
    let log = previous.map(|h| h.log).unwrap_or_default();
    Health { status: HealthStatus::Starting, failing_streak: 0, log }
}

/// Sets the health of a container that is (again) running: `starting` with an active
/// healthcheck, none without.
pub(crate) fn reset_for_start(rec: &mut ContainerRecord) {
    let active = rec.config.active_healthcheck().is_some();
    let previous = rec.state.health.take();
    rec.state.health = active.then(|| reset(previous));
}

/// Applies one probe result (Docker's `handleProbeResult`). Returns the new status if it changed.
pub fn apply_result(health: &mut Health, timing: &Timing, started_at: DateTime<Utc>, result: HealthResult) -> Option<HealthStatus> {
    let old = health.status;
    let exit_code = result.exit_code;
    let probe_start = result.start;
    health.log.push(result);
    if health.log.len() > MAX_LOG_ENTRIES {
        let excess = health.log.len() - MAX_LOG_ENTRIES;
        health.log.drain(..excess);
    }
    if exit_code == 0 {
        health.failing_streak = 0;
        health.status = HealthStatus::Healthy;
    } else {
        let in_start_period = health.status == HealthStatus::Starting
            && (probe_start - started_at).to_std().unwrap_or(Duration::ZERO) < timing.start_period;
        if !in_start_period {
            health.failing_streak = health.failing_streak.saturating_add(1);
            if health.failing_streak >= timing.retries {
                health.status = HealthStatus::Unhealthy;
            }
        }
    }
    (health.status != old).then_some(health.status)
}

/// Keeps at most [`MAX_OUTPUT_LEN`] bytes of probe output; `...` marks a cut.
#[derive(Debug, Default)]
pub(crate) struct LimitedOutput {
    buf: Vec<u8>,
    truncated: bool,
}

impl LimitedOutput {
    pub(crate) fn push(&mut self, data: &[u8]) {
        let keep = (MAX_OUTPUT_LEN - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..keep]);
        if keep < data.len() {
            self.truncated = true;
        }
    }

    pub(crate) fn text(&self) -> String {
        let mut out = String::from_utf8_lossy(&self.buf).into_owned();
        if self.truncated {
            out.push_str("...");
        }
        out
    }
}

/// Go's `time.Duration.String()` (`30s`, `500ms`, `1m30s`, `1.5s`).
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    let frac = |value: u128, unit: u128, suffix: &str| {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            format!("{whole}{suffix}")
        } else {
            let width = unit.ilog10() as usize;
            let digits = format!("{rest:0width$}");
            format!("{whole}.{}{suffix}", digits.trim_end_matches('0'))
        }
    };
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return frac(ns, 1_000, "µs");
    }
    if ns < 1_000_000_000 {
        return frac(ns, 1_000_000, "ms");
    }
    let total_secs = ns / 1_000_000_000;
    let sub = ns % 1_000_000_000;
    let (h, m, s) = (total_secs / 3600, (total_secs / 60) % 60, total_secs % 60);
    let secs = frac(s * 1_000_000_000 + sub, 1_000_000_000, "s");
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

impl Engine {
    /// Starts the probe loop of a running container with an active healthcheck (replacing an
    /// earlier loop). The caller has reset `state.health`.
    pub(crate) fn start_health_monitor(&self, c: &Arc<Container>) {
        self.stop_health_monitor(c);
        let (cfg, started_at) = {
            let rec = c.lock();
            (rec.config.active_healthcheck().cloned(), rec.state.started_at)
        };
        let (Some(cfg), Some(started_at)) = (cfg, started_at) else { return };
        let engine = self.clone();
        let container = c.clone();
        let handle = tokio::spawn(async move { engine.health_loop(container, cfg, started_at).await });
        *lock(&c.health_task) = Some(handle.abort_handle());
    }

    /// Stops the probe loop (a probe in flight is abandoned; it dies with the container).
    pub(crate) fn stop_health_monitor(&self, c: &Container) {
        if let Some(h) = lock(&c.health_task).take() {
            h.abort();
        }
    }

    async fn health_loop(self, c: Arc<Container>, cfg: HealthConfig, started_at: DateTime<Utc>) {
        let timing = Timing::of(&cfg);
        let id = c.lock().id.clone();
        loop {
            let status = c.lock().state.health.as_ref().map(|h| h.status).unwrap_or(HealthStatus::Starting);
            tokio::time::sleep(timing.next_delay(started_at, Utc::now(), status)).await;
            if !same_run(&c, started_at) {
                return;
            }
            let result = self.run_probe(&id, &cfg, timing.timeout).await;
            debug!(container = %id, exit_code = result.exit_code, "health check done");
            let (snapshot, changed) = {
                let mut rec = c.lock();
                if rec.state.status != Status::Running || rec.state.started_at != Some(started_at) {
                    return;
                }
                let health = rec.state.health.get_or_insert_with(|| reset(None));
                let changed = apply_result(health, &timing, started_at, result);
                (rec.clone(), changed)
            };
            if let Err(e) = self.persist(&c).await {
                warn!(container = %id, error = %e, "persisting the health state failed");
            }
            c.notify();
            if let Some(status) = changed {
                self.emit_container(&format!("health_status: {}", status.as_str()), &snapshot, &[]);
            }
        }
    }

    /// Runs one probe through exec with the timeout; a probe that cannot run, or runs too
    /// long (it is killed), is a failure with exit code -1, as in Docker.
    async fn run_probe(&self, id: &str, cfg: &HealthConfig, timeout: Duration) -> HealthResult {
        let start = Utc::now();
        let fail = |output: String| HealthResult { start, end: Utc::now(), exit_code: -1, output };
        let mut cmd: Vec<String> = cfg.test[1..].to_vec();
        if cfg.test[0] == "CMD-SHELL" {
            cmd.splice(0..0, ["/bin/sh".to_string(), "-c".to_string()]);
        }
        let exec_config = ExecConfig { cmd, attach_stdout: true, attach_stderr: true, ..ExecConfig::default() };
        let exec_id = match self.exec_create(id, exec_config).await {
            Ok(e) => e,
            Err(e) => return fail(e.to_string()),
        };
        let result = self.run_probe_exec(id, &exec_id, start, timeout).await;
        self.exec_forget(&exec_id);
        result
    }

    async fn run_probe_exec(&self, id: &str, exec_id: &str, start: DateTime<Utc>, timeout: Duration) -> HealthResult {
        let fail = |output: String| HealthResult { start, end: Utc::now(), exit_code: -1, output };
        let mut session = match self.exec_start(exec_id, false).await {
            Ok(Some(s)) => s,
            Ok(None) => return fail("health check exec did not attach".into()),
            Err(e) => return fail(e.to_string()),
        };
        let mut output = LimitedOutput::default();
        let finished = tokio::time::timeout(timeout, async {
            while let Some((_, data)) = session.output.recv().await {
                output.push(&data);
            }
        })
        .await
        .is_ok();
        if !finished {
            self.exec_kill(exec_id);
            let _ = tokio::time::timeout(KILL_GRACE, async { while session.output.recv().await.is_some() {} }).await;
            let out = output.text();
            let msg = if out.is_empty() {
                format!("Health check exceeded timeout ({})", go_duration(timeout))
            } else {
                format!("Health check exceeded timeout ({}): {out}", go_duration(timeout))
            };
            return fail(msg);
        }
        match self.exec_inspect(exec_id).ok().and_then(|v| v.exit_code) {
            Some(code) => HealthResult { start, end: Utc::now(), exit_code: code, output: output.text() },
            None => fail(format!("healthcheck for container {id} has no exit code")),
        }
    }
}

fn same_run(c: &Container, started_at: DateTime<Utc>) -> bool {
    let rec = c.lock();
    rec.state.status == Status::Running && rec.state.started_at == Some(started_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        "2025-01-01T00:00:00Z".parse().unwrap()
    }

    fn result(at_ms: i64, code: i64) -> HealthResult {
        let start = t0() + chrono::Duration::milliseconds(at_ms);
        HealthResult { start, end: start, exit_code: code, output: String::new() }
    }

    fn hc(test: &[&str]) -> HealthConfig {
        HealthConfig { test: test.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn defaults_like_dockerd() {
        let t = Timing::of(&hc(&["CMD", "true"]));
        assert_eq!(t.interval, Duration::from_secs(30));
        assert_eq!(t.timeout, Duration::from_secs(30));
        assert_eq!(t.start_period, Duration::ZERO);
        assert_eq!(t.start_interval, Duration::from_secs(5));
        assert_eq!(t.retries, 3);
    }

    #[test]
    fn retries_failures_make_unhealthy_and_success_heals() {
        let t = Timing { retries: 2, ..Timing::of(&hc(&["CMD", "x"])) };
        let mut h = reset(None);
        assert_eq!(apply_result(&mut h, &t, t0(), result(1000, 1)), None);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 1));
        assert_eq!(apply_result(&mut h, &t, t0(), result(2000, 1)), Some(HealthStatus::Unhealthy));
        assert_eq!(h.failing_streak, 2);
        assert_eq!(apply_result(&mut h, &t, t0(), result(3000, 1)), None);
        assert_eq!(h.failing_streak, 3);
        assert_eq!(apply_result(&mut h, &t, t0(), result(4000, 0)), Some(HealthStatus::Healthy));
        assert_eq!(h.failing_streak, 0);
        assert_eq!(apply_result(&mut h, &t, t0(), result(5000, 0)), None);
        // A single failure of a healthy container does not flip it.
        assert_eq!(apply_result(&mut h, &t, t0(), result(6000, 1)), None);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Healthy, 1));
        // Negative exit codes (timeouts, exec errors) are failures too.
        assert_eq!(apply_result(&mut h, &t, t0(), result(7000, -1)), Some(HealthStatus::Unhealthy));
    }

    #[test]
    fn start_period_failures_do_not_count_until_a_success() {
        let t = Timing { retries: 1, start_period: Duration::from_secs(10), ..Timing::of(&hc(&["CMD", "x"])) };
        let mut h = reset(None);
        for ms in [1000, 2000, 9999] {
            assert_eq!(apply_result(&mut h, &t, t0(), result(ms, 1)), None);
            assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 0));
        }
        // Past the start period failures count.
        assert_eq!(apply_result(&mut h, &t, t0(), result(10_000, 1)), Some(HealthStatus::Unhealthy));
        // Inside the start period, once healthy, failures count.
        let mut h = reset(None);
        assert_eq!(apply_result(&mut h, &t, t0(), result(1000, 0)), Some(HealthStatus::Healthy));
        assert_eq!(apply_result(&mut h, &t, t0(), result(2000, 1)), Some(HealthStatus::Unhealthy));
    }

    #[test]
    fn log_keeps_the_last_five_and_reset_keeps_it() {
        let t = Timing::of(&hc(&["CMD", "x"]));
        let mut h = reset(None);
        for i in 0..8 {
            apply_result(&mut h, &t, t0(), result(i * 1000, 0));
        }
        assert_eq!(h.log.len(), MAX_LOG_ENTRIES);
        assert_eq!(h.log[0].start, t0() + chrono::Duration::seconds(3));
        let r = reset(Some(h.clone()));
        assert_eq!((r.status, r.failing_streak, r.log.len()), (HealthStatus::Starting, 0, 5));
    }

    #[test]
    fn probe_schedule_follows_docker() {
        let t = Timing {
            interval: Duration::from_secs(30),
            start_period: Duration::from_secs(60),
            start_interval: Duration::from_secs(5),
            ..Timing::of(&hc(&["CMD", "x"]))
        };
        let at = |s: i64| t0() + chrono::Duration::seconds(s);
        assert_eq!(t.next_delay(t0(), at(0), HealthStatus::Starting), Duration::from_secs(5));
        assert_eq!(t.next_delay(t0(), at(0), HealthStatus::Healthy), Duration::from_secs(30));
        assert_eq!(t.next_delay(t0(), at(50), HealthStatus::Starting), Duration::from_secs(10));
        assert_eq!(t.next_delay(t0(), at(61), HealthStatus::Starting), Duration::from_secs(30));
        let plain = Timing::of(&HealthConfig { interval: 500_000_000, ..hc(&["CMD", "x"]) });
        assert_eq!(plain.next_delay(t0(), at(0), HealthStatus::Starting), Duration::from_millis(500));
    }

    #[test]
    fn image_default_container_override_and_none() {
        let image = serde_json::json!({"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 5_000_000_000i64, "Retries": 4});
        assert_eq!(merge(None, Some(&image)).unwrap().test, vec!["CMD-SHELL", "curl -f localhost"]);
        let c = HealthConfig { test: vec!["CMD".into(), "true".into()], interval: 1_000_000_000, ..Default::default() };
        let m = merge(Some(&c), Some(&image)).unwrap();
        assert_eq!((m.test[1].as_str(), m.interval, m.retries), ("true", 1_000_000_000, 4));
        // Only options (e.g. --health-interval): the image's test stays.
        let opts = HealthConfig { retries: 9, ..Default::default() };
        let m = merge(Some(&opts), Some(&image)).unwrap();
        assert_eq!((m.test[0].as_str(), m.retries, m.interval), ("CMD-SHELL", 9, 5_000_000_000));
        let none = merge(Some(&hc(&["NONE"])), Some(&image)).unwrap();
        assert!(!is_active(&none));
        assert!(merge(None, None).is_none());
        assert!(!is_active(&hc(&[])) && !is_active(&hc(&["CMD"])) && is_active(&hc(&["CMD-SHELL", "x"])));
    }

    #[test]
    fn validation_uses_dockers_texts() {
        assert!(validate(&hc(&["CMD", "x"])).is_ok());
        let bad = HealthConfig { interval: 500_000, ..Default::default() };
        assert_eq!(validate(&bad).unwrap_err(), "Interval in Healthcheck cannot be less than 1ms");
        let bad = HealthConfig { retries: -1, ..Default::default() };
        assert_eq!(validate(&bad).unwrap_err(), "Retries in Healthcheck cannot be negative");
        let bad = HealthConfig { start_interval: 1, ..Default::default() };
        assert_eq!(validate(&bad).unwrap_err(), "StartInterval in Healthcheck cannot be less than 1ms");
    }

    #[test]
    fn output_is_capped_and_durations_print_like_go() {
        let mut o = LimitedOutput::default();
        o.push(&[b'a'; 4000]);
        o.push(&[b'b'; 200]);
        let text = o.text();
        assert_eq!(text.len(), MAX_OUTPUT_LEN + 3);
        assert!(text.ends_with("bbb..."));
        assert_eq!(go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(7200)), "2h0m0s");
    }
}

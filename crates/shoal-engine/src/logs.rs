//! Reading a container's json-file log: `tail`, `since`/`until`, timestamps and `follow`.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::error::{EngineError, Result};
use crate::model::Status;
use crate::Engine;

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub stdout: bool,
    pub stderr: bool,
    pub follow: bool,
    /// `None` = all lines.
    pub tail: Option<usize>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// One log entry: stream 1 stdout, 2 stderr.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub stream: u8,
    pub time: DateTime<Utc>,
    pub line: Bytes,
}

#[derive(Deserialize)]
struct JsonLine {
    log: String,
    stream: String,
    time: DateTime<Utc>,
}

fn parse_line(line: &str) -> Option<LogRecord> {
    let parsed: JsonLine = serde_json::from_str(line).ok()?;
    let stream = if parsed.stream == "stderr" { 2 } else { 1 };
    Some(LogRecord { stream, time: parsed.time, line: Bytes::from(parsed.log.into_bytes()) })
}

fn wanted(rec: &LogRecord, opts: &LogOptions) -> bool {
    let stream_ok = (rec.stream == 1 && opts.stdout) || (rec.stream == 2 && opts.stderr);
    let since_ok = opts.since.is_none_or(|s| rec.time >= s);
    let until_ok = opts.until.is_none_or(|u| rec.time <= u);
    stream_ok && since_ok && until_ok
}

impl Engine {
    /// Streams a container's log entries. The channel closes at the end (or, with `follow`, when
    /// the container stops and its log is drained).
    pub async fn logs(&self, reference: &str, opts: LogOptions) -> Result<(bool, mpsc::Receiver<LogRecord>)> {
        if !opts.stdout && !opts.stderr {
            return Err(EngineError::Invalid("Bad parameters: you must choose at least one stream".into()));
        }
        let c = self.find(reference)?;
        let (path, tty) = {
            let rec = c.lock();
            (rec.log_path.clone(), rec.config.tty)
        };
        let (tx, rx) = mpsc::channel(256);
        let mut changes = c.changed.subscribe();
        let container = c.clone();
        tokio::spawn(async move {
            // Initial read (tail applies here only).
            let opts2 = opts.clone();
            let path2 = path.clone();
            let initial = tokio::task::spawn_blocking(move || read_all(&path2, &opts2)).await;
            let (records, mut offset) = match initial {
                Ok(Ok(v)) => v,
                _ => (Vec::new(), 0),
            };
            for rec in records {
                if tx.send(rec).await.is_err() {
                    return;
                }
            }
            if !opts.follow {
                return;
            }
            loop {
                let running = matches!(container.lock().state.status, Status::Running | Status::Restarting | Status::Created);
                let removed = *crate::lock(&container.removed);
                let opts2 = opts.clone();
                let path2 = path.clone();
                let more = tokio::task::spawn_blocking(move || read_from(&path2, offset, &opts2)).await;
                if let Ok(Ok((records, new_offset))) = more {
                    offset = new_offset;
                    for rec in records {
                        if tx.send(rec).await.is_err() {
                            return;
                        }
                    }
                }
                if !running || removed {
                    return;
                }
                if opts.until.is_some_and(|u| Utc::now() > u) {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = changes.changed() => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok((tty, rx))
    }
}

fn read_all(path: &str, opts: &LogOptions) -> Result<(Vec<LogRecord>, u64)> {
    let (mut records, offset) = read_from(path, 0, opts)?;
    if let Some(n) = opts.tail {
        let skip = records.len().saturating_sub(n);
        records.drain(..skip);
    }
    Ok((records, offset))
}

/// Reads complete lines from `offset`; returns them and the offset after the last complete line.
fn read_from(path: &str, offset: u64, opts: &LogOptions) -> Result<(Vec<LogRecord>, u64)> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(EngineError::io(format!("opening log {path}"), e)),
    };
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(offset)).map_err(|e| EngineError::io(format!("seeking log {path}"), e))?;
    let mut out = Vec::new();
    let mut pos = offset;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| EngineError::io(format!("reading log {path}"), e))?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        pos += n as u64;
        if let Some(rec) = parse_line(line.trim_end()) {
            if wanted(&rec, opts) {
                out.push(rec);
            }
        }
    }
    Ok((out, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_filters_and_tails() {
        let path = std::env::temp_dir().join(format!("shoal-log-{}.json", std::process::id()));
        let content = concat!(
            r#"{"log":"a\n","stream":"stdout","time":"2026-01-01T00:00:01Z"}"#, "\n",
            r#"{"log":"b\n","stream":"stderr","time":"2026-01-01T00:00:02Z"}"#, "\n",
            r#"{"log":"c\n","stream":"stdout","time":"2026-01-01T00:00:03Z"}"#, "\n",
            r#"{"log":"partial"#
        );
        std::fs::write(&path, content).unwrap();
        let p = path.to_str().unwrap();
        let all = LogOptions { stdout: true, stderr: true, ..Default::default() };
        let (recs, off) = read_all(p, &all).unwrap();
        assert_eq!(recs.len(), 3);
        assert!(off < content.len() as u64);
        let tail = LogOptions { tail: Some(1), ..all.clone() };
        assert_eq!(&read_all(p, &tail).unwrap().0[0].line[..], b"c\n");
        let only_err = LogOptions { stdout: false, stderr: true, ..Default::default() };
        assert_eq!(read_all(p, &only_err).unwrap().0.len(), 1);
        let since = LogOptions { since: Some("2026-01-01T00:00:02Z".parse().unwrap()), ..all };
        assert_eq!(read_all(p, &since).unwrap().0.len(), 2);
        std::fs::remove_file(&path).unwrap();
    }
}

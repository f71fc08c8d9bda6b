//! Docker json-file log lines and stdcopy frames (docs/CONTRACTS.md).

use std::io::Write;

/// Longest partial line buffered before it is written out anyway (Docker uses 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// Output stream of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// RFC3339Nano in UTC, e.g. `2026-11-24T10:00:00.123456789Z`.
pub fn now_rfc3339_nano() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Appends one stdcopy frame header + payload to `out`.
pub fn push_frame(out: &mut Vec<u8>, stream: Stream, payload: &[u8]) {
    // Frames carry at most u32::MAX bytes; split longer payloads.
    for chunk in payload.chunks(u32::MAX as usize) {
        out.push(stream as u8);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Serialises one json-file line (with trailing newline).
pub fn json_line(stream: Stream, log: &[u8], time: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        log: std::borrow::Cow<'a, str>,
        stream: &'a str,
        time: &'a str,
    }
    let l = Line {
        log: String::from_utf8_lossy(log),
        stream: stream.name(),
        time,
    };
    let mut v = serde_json::to_vec(&l).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Splits a stream into lines and writes them to a json-file log.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `data`; every complete line (and any partial line longer than [`MAX_LINE`]) is
    /// written to `w`.
    pub fn feed(&mut self, stream: Stream, data: &[u8], w: &mut impl Write) -> std::io::Result<()> {
        let time = now_rfc3339_nano();
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(pos + 1);
            if self.partial.is_empty() {
                w.write_all(&json_line(stream, line, &time))?;
            } else {
                self.partial.extend_from_slice(line);
                let full = std::mem::take(&mut self.partial);
                w.write_all(&json_line(stream, &full, &time))?;
            }
            rest = tail;
        }
        self.partial.extend_from_slice(rest);
        while self.partial.len() >= MAX_LINE {
            let chunk: Vec<u8> = self.partial.drain(..MAX_LINE).collect();
            w.write_all(&json_line(stream, &chunk, &time))?;
        }
        Ok(())
    }

    /// Writes out whatever partial line remains (at exit).
    pub fn flush(&mut self, stream: Stream, w: &mut impl Write) -> std::io::Result<()> {
        if !self.partial.is_empty() {
            let full = std::mem::take(&mut self.partial);
            w.write_all(&json_line(stream, &full, &now_rfc3339_nano()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_flushes_partial() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        s.feed(Stream::Stdout, b"hi\npar", &mut out).unwrap();
        s.feed(Stream::Stdout, b"tial\nend", &mut out).unwrap();
        s.flush(Stream::Stdout, &mut out).unwrap();
        let lines: Vec<serde_json::Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["log"], "hi\n");
        assert_eq!(lines[1]["log"], "partial\n");
        assert_eq!(lines[2]["log"], "end");
        assert_eq!(lines[0]["stream"], "stdout");
        let t = lines[0]["time"].as_str().unwrap();
        assert!(
            t.ends_with('Z') && t.len() == "2026-11-24T10:00:00.123456789Z".len(),
            "{t}"
        );
    }

    #[test]
    fn frame_format() {
        let mut v = Vec::new();
        push_frame(&mut v, Stream::Stderr, b"abc");
        assert_eq!(v, [2, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']);
    }
}

//! A minimal HTTP/1.1 client (Connection: close) used over TCP inside a namespace and over the
//! daemon's unix socket.

use crate::netns::Netns;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A response: status, headers (names lowercased) and the decoded body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request (`Connection: close`) over `stream` and reads the whole response.
pub(crate) fn roundtrip<S: Read + Write>(
    mut stream: S,
    method: &str,
    host: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> io::Result<HttpResponse> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: shoal-testkit\r\nConnection: close\r\n");
    if let Some((ctype, data)) = body {
        req.push_str(&format!("Content-Type: {ctype}\r\nContent-Length: {}\r\n", data.len()));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    if let Some((_, data)) = body {
        stream.write_all(data)?;
    }
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

pub(crate) fn parse_response(raw: &[u8], head: bool) -> io::Result<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head_text = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if head {
        Vec::new()
    } else if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse::<usize>().ok()) {
        rest[..len.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse { status, headers, body })
}

fn decode_chunked(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = data.windows(2).position(|w| w == b"\r\n").ok_or_else(|| bad("truncated chunk"))?;
        let size_text = String::from_utf8_lossy(&data[..nl]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        data = &data[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}

/// Splits `http://host[:port]/path` into (host header, connect address, path).
fn split_url(url: &str) -> io::Result<(String, String, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| bad("only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let addr = if has_port { authority.to_string() } else { format!("{authority}:80") };
    Ok((authority.to_string(), addr, path.to_string()))
}

/// Performs one HTTP request from inside `netns` (a thread that entered it; 10 s timeouts).
pub fn http_request(netns: &Netns, method: &str, url: &str) -> io::Result<HttpResponse> {
    let (host, addr, path) = split_url(url)?;
    netns.run(|| {
        let sa = std::net::ToSocketAddrs::to_socket_addrs(&addr)?.next().ok_or_else(|| bad("no address"))?;
        let s = TcpStream::connect_timeout(&sa, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        roundtrip(s, method, &host, &path, None)
    })?
}

/// GET `url` from inside `netns`; the body as text, or an error unless the status is 2xx.
pub fn http_get(netns: &Netns, url: &str) -> io::Result<String> {
    let r = http_request(netns, "GET", url)?;
    if !(200..300).contains(&r.status) {
        return Err(io::Error::other(format!("GET {url}: status {}: {}", r.status, r.text())));
    }
    Ok(r.text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_and_length() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n", false).unwrap();
        assert_eq!(r.body, b"abcde");
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\nContent-Length: 2\r\n\r\nnoXX", false).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"no"[..]));
        assert_eq!(split_url("http://127.0.0.1:5000/v2/").unwrap().1, "127.0.0.1:5000");
        assert_eq!(split_url("http://10.0.0.1").unwrap(), ("10.0.0.1".into(), "10.0.0.1:80".into(), "/".into()));
    }
}

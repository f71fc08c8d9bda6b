//! whoami: a tiny HTTP/1.1 server for shoal's test images, in the spirit of traefik/whoami.
//!
//! Every request is answered with a plain-text body naming the server's hostname, every
//! interface address it has, the caller's address, and then the request line and headers it
//! received. Built as a static binary (see shoal-testkit) so it runs in a scratch-like image.
//!
//! `whoami [--port N]` (default 80, or env `WHOAMI_PORT`). Listens on 0.0.0.0 and, when the
//! kernel has IPv6, on `::` (v6-only). One thread per connection; keep-alive with Content-Length.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::time::Duration;

/// One parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    method: String,
    target: String,
    version: String,
    /// Headers in the order received, names as sent.
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection stays open after this request.
    fn keep_alive(&self) -> bool {
        let conn = self.header("connection").map(|v| v.to_ascii_lowercase());
        match self.version.as_str() {
            "HTTP/1.0" => conn.as_deref() == Some("keep-alive"),
            _ => conn.as_deref() != Some("close"),
        }
    }
}

/// Renders the response body (the part tests look at).
fn render_body(hostname: &str, ips: &[IpAddr], remote: &SocketAddr, req: &Request) -> String {
    let mut s = String::new();
    s.push_str(&format!("Hostname: {hostname}\n"));
    for ip in ips {
        s.push_str(&format!("IP: {ip}\n"));
    }
    s.push_str(&format!("RemoteAddr: {remote}\n"));
    s.push_str(&format!("{} {} {}\n", req.method, req.target, req.version));
    for (k, v) in &req.headers {
        s.push_str(&format!("{k}: {v}\n"));
    }
    s
}

/// Renders a complete HTTP response for `body`.
fn render_response(status: &str, body: &str, keep_alive: bool, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Reads one request head. `Ok(None)` on a clean EOF before any byte.
fn read_request<R: BufRead>(r: &mut R) -> io::Result<Option<Request>> {
    let mut line = String::new();
    // Skip empty lines between requests (RFC 9112 allows leading CRLFs).
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim_end().is_empty() {
            break;
        }
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("HTTP/1.0").to_string();
    if method.is_empty() || target.is_empty() || !version.starts_with("HTTP/") {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad request line"));
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in headers"));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if headers.len() > 200 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too many headers"));
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Request { method, target, version, headers }))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::from("unknown");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Every address of every interface (getifaddrs), IPv4 first, in kernel order.
fn interface_ips() -> Vec<IpAddr> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills ifap with a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return v4;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur points into the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr non-null; family decides the concrete type.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                v4.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
            } else if family == libc::AF_INET6 {
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                v6.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: ifap came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    v4.extend(v6);
    v4
}

fn serve(stream: TcpStream) -> io::Result<()> {
    let remote = stream.peer_addr()?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader)? {
        // Discard a request body if one was sent.
        if let Some(len) = req.header("content-length").and_then(|v| v.parse::<u64>().ok()) {
            io::copy(&mut (&mut reader).take(len), &mut io::sink())?;
        }
        let keep_alive = req.keep_alive();
        let (status, body) = if req.target == "/health" {
            ("200 OK", String::from("OK\n"))
        } else {
            ("200 OK", render_body(&hostname(), &interface_ips(), &remote, &req))
        };
        writer.write_all(&render_response(status, &body, keep_alive, req.method == "HEAD"))?;
        writer.flush()?;
        if !keep_alive {
            break;
        }
    }
    Ok(())
}

/// A v6-only listener on [::]:port (so it can coexist with the 0.0.0.0 one).
fn listen_v6_only(port: u16) -> io::Result<TcpListener> {
    // SAFETY: plain socket syscalls on a fresh fd that we own until into TcpListener.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, (&one as *const libc::c_int).cast(), 4);
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), 4);
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = port.to_be();
        if libc::bind(fd, (&sa as *const libc::sockaddr_in6).cast(), std::mem::size_of::<libc::sockaddr_in6>() as u32) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::listen(fd, 128) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(listener)
    }
}

fn accept_loop(listener: TcpListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                std::thread::spawn(move || {
                    let _ = serve(s);
                });
            }
            Err(e) => {
                eprintln!("whoami: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) };
}

fn parse_port(args: &[String], env: Option<String>) -> Result<u16, String> {
    let mut port = match env {
        Some(v) if !v.is_empty() => v.parse::<u16>().map_err(|_| format!("bad WHOAMI_PORT {v:?}"))?,
        _ => 80,
    };
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let val = if a == "--port" || a == "-port" || a == "-p" {
            i += 1;
            args.get(i).cloned().ok_or_else(|| format!("{a} needs a value"))?
        } else if let Some(v) = a.strip_prefix("--port=").or_else(|| a.strip_prefix("-port=")) {
            v.to_string()
        } else if a == "--help" || a == "-h" {
            return Err(String::from("usage: whoami [--port N]"));
        } else {
            return Err(format!("unknown argument {a:?}; usage: whoami [--port N]"));
        };
        port = val.parse::<u16>().map_err(|_| format!("bad port {val:?}"))?;
        i += 1;
    }
    Ok(port)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = match parse_port(&args, std::env::var("WHOAMI_PORT").ok()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("whoami: {e}");
            std::process::exit(2);
        }
    };
    // As PID 1 in a container, SIGTERM/SIGINT would be ignored without a handler.
    // SAFETY: installing an async-signal-safe handler.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let v4 = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("whoami: listen 0.0.0.0:{port}: {e}");
            std::process::exit(1);
        }
    };
    let port = v4.local_addr().map(|a| a.port()).unwrap_or(port);
    match listen_v6_only(port) {
        Ok(l) => {
            std::thread::spawn(move || accept_loop(l));
            println!("whoami: listening on 0.0.0.0:{port} and [::]:{port}");
        }
        Err(_) => println!("whoami: listening on 0.0.0.0:{port}"),
    }
    accept_loop(v4);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Request {
        read_request(&mut io::Cursor::new(raw.as_bytes())).unwrap().unwrap()
    }

    #[test]
    fn renders_like_traefik_whoami() {
        let r = req("GET /foo?x=1 HTTP/1.1\r\nHost: example:8080\r\nUser-Agent: t\r\n\r\n");
        let ips = vec!["127.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "::1".parse().unwrap()];
        let body = render_body("box", &ips, &"10.0.0.1:5555".parse().unwrap(), &r);
        assert_eq!(
            body,
            "Hostname: box\nIP: 127.0.0.1\nIP: 10.0.0.2\nIP: ::1\nRemoteAddr: 10.0.0.1:5555\n\
             GET /foo?x=1 HTTP/1.1\nHost: example:8080\nUser-Agent: t\n"
        );
        let resp = String::from_utf8(render_response("200 OK", &body, true, false)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(resp.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(resp.contains("Connection: keep-alive\r\n"));
        assert!(resp.ends_with(&body));
        let head = String::from_utf8(render_response("200 OK", &body, false, true)).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Connection: close"));
    }

    #[test]
    fn keep_alive_rules_and_pipelining() {
        assert!(req("GET / HTTP/1.1\r\n\r\n").keep_alive());
        assert!(!req("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!req("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
        let mut c = io::Cursor::new(b"GET /a HTTP/1.1\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n".to_vec());
        assert_eq!(read_request(&mut c).unwrap().unwrap().target, "/a");
        assert_eq!(read_request(&mut c).unwrap().unwrap().target, "/b");
        assert!(read_request(&mut c).unwrap().is_none());
        assert!(read_request(&mut io::Cursor::new(b"garbage\r\n\r\n".to_vec())).is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port(&[], None), Ok(80));
        assert_eq!(parse_port(&[], Some("8080".into())), Ok(8080));
        assert_eq!(parse_port(&["--port".into(), "81".into()], Some("8080".into())), Ok(81));
        assert_eq!(parse_port(&["--port=82".into()], None), Ok(82));
        assert!(parse_port(&["--port".into()], None).is_err());
        assert!(parse_port(&["x".into()], None).is_err());
    }

    #[test]
    fn serves_over_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || accept_loop(l));
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
        assert!(out.contains("IP: 127.0.0.1\n"), "{out}");
        assert!(out.contains(&format!("RemoteAddr: {}\n", s.local_addr().unwrap())), "{out}");
        assert!(out.ends_with("OK\n"));
    }
}

//! Root integration test of the embedded DNS server: a "daemon" network namespace runs the
//! tokio runtime (its threads inherit the namespace) and a fake upstream nameserver on its own
//! 127.0.0.1; two "container" namespaces get the server attached at 127.0.0.11:53 and are queried
//! from threads inside them over UDP and TCP (and with busybox's nslookup when present). The
//! upstream is reachable only from the daemon namespace, so a forwarded answer proves that
//! forwarding leaves from there. Nothing in the root network namespace is touched; the
//! namespaces are deleted at the end, even on panic (Drop guard). No timing assertions:
//! timeouts only guard against hanging.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use shoal_net::dns::wire::{
    build_query, build_response, parse_message, parse_query, Message, RCODE_FORMERR, RCODE_NOERROR, RCODE_NXDOMAIN,
    RCODE_SERVFAIL, TYPE_A, TYPE_AAAA,
};
use shoal_net::{DnsServer, Resolver};

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(out.status.success(), "{:?} failed: {}", args, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_ok(args: &[&str]) -> bool {
    Command::new(args[0]).args(&args[1..]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root");
        return false;
    }
    if !sh_ok(&["ip", "-V"]) {
        eprintln!("skipping: needs ip");
        return false;
    }
    true
}

/// Deletes the namespaces on drop.
struct Cleanup {
    netns: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn ns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

fn enter(ns: &Path) {
    let f = File::open(ns).expect("open netns");
    setns(f, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Runs `f` on a fresh thread inside `ns`.
fn in_ns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .expect("netns thread panicked")
}

const DNS: &str = "127.0.0.11:53";

/// One UDP query to 127.0.0.11:53 from inside `ns`.
fn udp_ask_within(ns: &Path, msg: Vec<u8>, wait: Duration) -> Result<Message, String> {
    in_ns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.connect(DNS).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
        s.send(&msg).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 65535];
        let n = s.recv(&mut buf).map_err(|e| e.to_string())?;
        parse_message(&buf[..n]).map_err(|e| e.to_string())
    })
}

fn udp_ask(ns: &Path, name: &str, qtype: u16) -> Message {
    let id = rand::random::<u16>();
    let m = udp_ask_within(ns, build_query(id, name, qtype).unwrap(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("udp query {name} in {}: {e}", ns.display()));
    assert_eq!(m.header.id, id);
    assert!(m.header.is_response());
    m
}

/// One TCP query to 127.0.0.11:53 from inside `ns`.
fn tcp_ask_raw(ns: &Path, msg: Vec<u8>) -> Result<Message, String> {
    in_ns(ns, move || {
        let addr: SocketAddr = DNS.parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&msg);
        s.write_all(&framed).map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        parse_message(&buf).map_err(|e| e.to_string())
    })
}

fn tcp_ask(ns: &Path, name: &str, qtype: u16) -> Message {
    let id = rand::random::<u16>();
    let m = tcp_ask_raw(ns, build_query(id, name, qtype).unwrap())
        .unwrap_or_else(|e| panic!("tcp query {name} in {}: {e}", ns.display()));
    assert_eq!(m.header.id, id);
    m
}

fn ips(m: &Message) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = m.answers.iter().map(|r| r.ipv4().expect("A record")).collect();
    v.sort();
    v
}

/// Every container sees `web` and `tasks.web`, with per-container addresses.
struct TestResolver;

impl Resolver for TestResolver {
    fn resolve(&self, container_id: &str, name: &str) -> Option<Vec<Ipv4Addr>> {
        let net = if container_id == "ctr-a" { 1 } else { 2 };
        match name {
            "web" => Some(vec![Ipv4Addr::new(10, 0, net, 2)]),
            "tasks.web" => Some(vec![Ipv4Addr::new(10, 0, net, 3), Ipv4Addr::new(10, 0, net, 4)]),
            _ => None,
        }
    }
}

/// The fake upstream's answer: `ext.example` A → 192.0.2.7 (TTL 60), anything else NXDOMAIN.
fn upstream_answer(raw: &[u8]) -> Option<Vec<u8>> {
    let q = parse_query(raw).ok()?;
    let known = q.question.lookup_name().as_deref() == Some("ext.example");
    let (rcode, addrs) =
        if known { (RCODE_NOERROR, vec![Ipv4Addr::new(192, 0, 2, 7)]) } else { (RCODE_NXDOMAIN, vec![]) };
    let mut r = build_response(&q, rcode, &addrs, 60, 65535);
    r[2] &= !0x04; // clear AA: a relayed answer is told apart from a local one
    Some(r)
}

/// A fake upstream on 127.0.0.1:<port> (UDP and TCP, same port) of the calling thread's
/// namespace, served by detached threads (they die with the test process; their namespace is
/// deleted at the end). Counts the queries it answered.
fn fake_upstream(count: Arc<AtomicUsize>) -> SocketAddr {
    let (udp, tcp) = (0..20)
        .find_map(|_| {
            let u = UdpSocket::bind("127.0.0.1:0").ok()?;
            let t = TcpListener::bind(u.local_addr().ok()?).ok()?;
            Some((u, t))
        })
        .expect("bind fake upstream");
    let addr = udp.local_addr().unwrap();
    let c = count.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            if let Some(r) = upstream_answer(&buf[..n]) {
                c.fetch_add(1, Ordering::SeqCst);
                let _ = udp.send_to(&r, peer);
            }
        }
    });
    std::thread::spawn(move || {
        for mut s in tcp.incoming().flatten() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                continue;
            }
            let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if s.read_exact(&mut q).is_err() {
                continue;
            }
            if let Some(r) = upstream_answer(&q) {
                count.fetch_add(1, Ordering::SeqCst);
                let mut framed = (r.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&r);
                let _ = s.write_all(&framed);
            }
        }
    });
    addr
}

/// Waits (bounded) until 127.0.0.11:53 in `ns` no longer answers: detach closes the sockets
/// as soon as the runtime drops the aborted tasks.
fn assert_stops_answering(ns: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = build_query(1, "web", TYPE_A).unwrap();
        match udp_ask_within(ns, q, Duration::from_millis(300)) {
            Err(_) => break,
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(m) => panic!("still answered after detach: {m:?}"),
        }
    }
    let err = tcp_ask_raw(ns, build_query(2, "web", TYPE_A).unwrap()).expect_err("tcp still answered after detach");
    assert!(err.contains("refused"), "tcp after detach: {err}");
}

fn lo_is_up(ns: &str) -> bool {
    sh(&["ip", "-n", ns, "-o", "link", "show", "dev", "lo"]).contains(",UP")
}

#[test]
fn dns_end_to_end() {
    if !can_run() {
        return;
    }
    let tag = format!("{}-{:04x}", std::process::id(), rand::random::<u16>());
    let (daemon, ca, cb) = (format!("shtdns-d-{tag}"), format!("shtdns-a-{tag}"), format!("shtdns-b-{tag}"));
    let _cleanup = Cleanup { netns: vec![daemon.clone(), ca.clone(), cb.clone()] };
    for ns in [&daemon, &ca, &cb] {
        sh(&["ip", "netns", "add", ns]);
    }
    sh(&["ip", "-n", &daemon, "link", "set", "dev", "lo", "up"]);
    assert!(!lo_is_up(&ca), "a fresh namespace has lo down");

    let (dpath, apath, bpath) = (ns_path(&daemon), ns_path(&ca), ns_path(&cb));
    let result = std::thread::spawn(move || {
        enter(&dpath);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

        // ---- server without upstreams, attached to container a ----
        let local_only = DnsServer::new(Arc::new(TestResolver), vec![]);
        rt.block_on(local_only.attach("ctr-a", &apath)).expect("attach a");
        assert!(lo_is_up(&ca), "attach brings lo up");
        assert_eq!(local_only.attached(), ["ctr-a"]);

        let m = udp_ask(&apath, "web", TYPE_A);
        assert_eq!((m.header.rcode(), ips(&m)), (RCODE_NOERROR, vec![Ipv4Addr::new(10, 0, 1, 2)]));
        assert_eq!(m.answers[0].ttl, 600);
        let m = udp_ask(&apath, "TASKS.Web.", TYPE_A);
        assert_eq!(ips(&m), [Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 4)]);
        let m = tcp_ask(&apath, "tasks.web", TYPE_A);
        assert_eq!(ips(&m), [Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 4)]);
        let m = udp_ask(&apath, "web", TYPE_AAAA);
        assert_eq!((m.header.rcode(), m.answers.len()), (RCODE_NOERROR, 0));
        // unknown and no upstream: SERVFAIL, over both transports
        assert_eq!(udp_ask(&apath, "nope.example", TYPE_A).header.rcode(), RCODE_SERVFAIL);
        assert_eq!(tcp_ask(&apath, "nope", TYPE_A).header.rcode(), RCODE_SERVFAIL);
        // malformed with a header: FORMERR
        let mut bad = build_query(77, "web", TYPE_A).unwrap();
        bad.truncate(15);
        let m = udp_ask_within(&apath, bad, Duration::from_secs(5)).expect("formerr");
        assert_eq!((m.header.id, m.header.rcode()), (77, RCODE_FORMERR));

        // a stock client
        if sh_ok(&["busybox", "--help"]) && sh_ok(&["nsenter", "--version"]) {
            let p = apath.display().to_string();
            let net = format!("--net={p}");
            let out = Command::new("timeout")
                .args(["20", "nsenter", &net, "busybox", "nslookup", "-type=a", "web", "127.0.0.11"])
                .output()
                .expect("run busybox nslookup");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("10.0.1.2"), "busybox nslookup: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        } else {
            eprintln!("busybox or nsenter missing: skipping the stock client check");
        }

        // re-attach replaces (idempotent)
        rt.block_on(local_only.attach("ctr-a", &apath)).expect("re-attach a");
        rt.block_on(local_only.attach("ctr-a", &apath)).expect("re-attach a again");
        assert_eq!(local_only.attached(), ["ctr-a"]);
        assert_eq!(ips(&udp_ask(&apath, "web", TYPE_A)), [Ipv4Addr::new(10, 0, 1, 2)]);

        // ---- server with a fake upstream in the daemon namespace, attached to container b ----
        let count = Arc::new(AtomicUsize::new(0));
        let upstream = fake_upstream(count.clone());
        let forwarding = DnsServer::new(Arc::new(TestResolver), vec![upstream]);
        rt.block_on(forwarding.attach("ctr-b", &bpath)).expect("attach b");
        // the resolver's per-container view
        assert_eq!(ips(&udp_ask(&bpath, "web", TYPE_A)), [Ipv4Addr::new(10, 0, 2, 2)]);
        let m = udp_ask(&bpath, "ext.example", TYPE_A);
        assert_eq!((m.header.rcode(), m.header.authoritative()), (RCODE_NOERROR, false));
        assert_eq!(ips(&m), [Ipv4Addr::new(192, 0, 2, 7)]);
        assert_eq!(m.answers[0].ttl, 60, "relayed as the upstream sent it");
        assert_eq!(udp_ask(&bpath, "nope.example", TYPE_A).header.rcode(), RCODE_NXDOMAIN);
        let m = tcp_ask(&bpath, "ext.example", TYPE_A);
        assert_eq!(ips(&m), [Ipv4Addr::new(192, 0, 2, 7)]);
        assert_eq!(tcp_ask(&bpath, "nope", TYPE_A).header.rcode(), RCODE_NXDOMAIN);
        assert_eq!(count.load(Ordering::SeqCst), 4, "the upstream saw exactly the forwarded queries");
        // container a's server is unaffected
        assert_eq!(ips(&udp_ask(&apath, "web", TYPE_A)), [Ipv4Addr::new(10, 0, 1, 2)]);

        // ---- detach ----
        local_only.detach("ctr-a");
        assert!(local_only.attached().is_empty());
        assert_stops_answering(&apath);
        assert_eq!(ips(&udp_ask(&bpath, "web", TYPE_A)), [Ipv4Addr::new(10, 0, 2, 2)], "b still served");
        // attach again after detach works
        rt.block_on(local_only.attach("ctr-a", &apath)).expect("attach a after detach");
        assert_eq!(ips(&tcp_ask(&apath, "web", TYPE_A)), [Ipv4Addr::new(10, 0, 1, 2)]);
        local_only.detach("ctr-a");
        forwarding.detach("ctr-b");
        assert_stops_answering(&apath);
        assert_stops_answering(&bpath);
        drop(rt);
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

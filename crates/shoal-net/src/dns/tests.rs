//! Unit tests of the DNS codec and of the server's answering, forwarding and serving logic
//! (sockets on 127.0.0.1 of the current namespace; the namespace part is in tests/dns_root.rs).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::wire::*;
use super::*;

// ---------------------------------------------------------------------------------------------
// helpers

/// `web` → 10.0.1.2, `tasks.web` → 10.0.1.3..=10.0.1.5, `empty` → known without addresses;
/// container "other" sees nothing. Records every (container, name) it is asked.
#[derive(Default)]
struct FakeResolver {
    calls: Mutex<Vec<(String, String)>>,
}

impl Resolver for FakeResolver {
    fn resolve(&self, container_id: &str, name: &str) -> Option<Vec<Ipv4Addr>> {
        self.calls.lock().unwrap().push((container_id.to_string(), name.to_string()));
        if container_id == "other" {
            return None;
        }
        match name {
            "web" => Some(vec![Ipv4Addr::new(10, 0, 1, 2)]),
            "tasks.web" => Some((3..=5).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect()),
            "empty" => Some(vec![]),
            "many" => Some((0..200u8).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect()),
            _ => None,
        }
    }
}

fn shared_with(upstreams: Vec<SocketAddr>) -> (Arc<Shared>, Arc<FakeResolver>) {
    let r = Arc::new(FakeResolver::default());
    let s = Shared {
        resolver: r.clone(),
        upstreams,
        udp_timeout: Duration::from_millis(300),
        tcp_timeout: Duration::from_millis(600),
        rotation: AtomicUsize::new(0),
    };
    (Arc::new(s), r)
}

fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    build_query(id, name, qtype).unwrap()
}

/// Appends an OPT record (udp size, version) to a query built by [`build_query`].
fn with_opt(mut q: Vec<u8>, udp_len: u16, version: u8) -> Vec<u8> {
    q[11] += 1; // arcount
    q.push(0);
    q.extend_from_slice(&TYPE_OPT.to_be_bytes());
    q.extend_from_slice(&udp_len.to_be_bytes());
    q.extend_from_slice(&[0, version, 0, 0]);
    q.extend_from_slice(&[0, 0]);
    q
}

fn reply_of(o: Outcome) -> Message {
    match o {
        Outcome::Reply(r) => parse_message(&r).expect("reply parses"),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn ips(m: &Message) -> Vec<Ipv4Addr> {
    m.answers.iter().map(|r| r.ipv4().expect("A record")).collect()
}

fn reason(e: NetError) -> &'static str {
    match e {
        NetError::DnsMessage { reason, .. } => reason,
        other => panic!("expected a dns message error, got {other}"),
    }
}

/// A tiny LCG (Knuth's MMIX constants) so the random tests need no crate and are reproducible.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn below(&mut self, n: usize) -> usize {
        self.next() as usize % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// codec: golden bytes

const GOLDEN_QUERY: [u8; 21] = [
    0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header: RD, 1 question
    0x03, b'w', b'e', b'b', 0x00, // web.
    0x00, 0x01, 0x00, 0x01, // A IN
];

const GOLDEN_RESPONSE: [u8; 37] = [
    0x12, 0x34, 0x85, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, // QR AA RD RA, 1 q, 1 an
    0x03, b'w', b'e', b'b', 0x00, 0x00, 0x01, 0x00, 0x01, // question
    0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, // pointer to the question, A IN
    0x00, 0x00, 0x02, 0x58, // TTL 600
    0x00, 0x04, 10, 0, 1, 2, // rdata
];

#[test]
fn golden_query_bytes() {
    assert_eq!(query(0x1234, "web", TYPE_A), GOLDEN_QUERY);
    assert_eq!(query(0x1234, "web.", TYPE_A), GOLDEN_QUERY);
    let q = parse_query(&GOLDEN_QUERY).unwrap();
    assert_eq!(q.header.id, 0x1234);
    assert!(q.header.recursion_desired() && !q.header.is_response());
    assert_eq!(q.question, Question { labels: vec![b"web".to_vec()], qtype: TYPE_A, qclass: CLASS_IN });
    assert_eq!(q.edns, None);
    assert_eq!(q.max_udp_len(), 512);
}

#[test]
fn golden_response_bytes() {
    let q = parse_query(&GOLDEN_QUERY).unwrap();
    let r = build_response(&q, RCODE_NOERROR, &[Ipv4Addr::new(10, 0, 1, 2)], 600, 512);
    assert_eq!(r, GOLDEN_RESPONSE);
    let m = parse_message(&r).unwrap();
    assert!(m.header.is_response() && m.header.authoritative() && m.header.recursion_available());
    assert!(!m.header.truncated());
    assert_eq!(m.header.rcode(), RCODE_NOERROR);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].labels, vec![b"web".to_vec()], "the pointer resolves to the question name");
    assert_eq!((m.answers[0].ttl, m.answers[0].class), (600, CLASS_IN));
    assert_eq!(ips(&m), [Ipv4Addr::new(10, 0, 1, 2)]);
}

#[test]
fn error_response_bytes() {
    let h = Header::parse(&GOLDEN_QUERY).unwrap();
    let r = build_error(&h, RCODE_FORMERR);
    assert_eq!(r, [0x12, 0x34, 0x81, 0x81, 0, 0, 0, 0, 0, 0, 0, 0]);
    // the opcode is echoed
    let mut q = GOLDEN_QUERY;
    q[2] |= 2 << 3;
    let r = build_error(&Header::parse(&q).unwrap(), RCODE_NOTIMP);
    assert_eq!(&r[2..4], &[0x91, 0x84]);
}

#[test]
fn question_case_is_echoed_and_lookup_is_lower_case() {
    let q = parse_query(&query(7, "WeB.Example", TYPE_A)).unwrap();
    assert_eq!(q.question.lookup_name().as_deref(), Some("web.example"));
    let r = build_response(&q, RCODE_NOERROR, &[], 600, 512);
    assert_eq!(&r[12..r.len() - 4], b"\x03WeB\x07Example\x00");
}

#[test]
fn lookup_name_refuses_odd_bytes() {
    let q =
        |labels: Vec<&[u8]>| Question { labels: labels.into_iter().map(<[u8]>::to_vec).collect(), qtype: 1, qclass: 1 };
    assert_eq!(q(vec![]).lookup_name(), None, "root");
    assert_eq!(q(vec![b"a.b"]).lookup_name(), None, "dot inside a label");
    assert_eq!(q(vec![b"a b"]).lookup_name(), None);
    assert_eq!(q(vec![b"a\x00"]).lookup_name(), None);
    assert_eq!(q(vec![b"caf\xc3\xa9"]).lookup_name(), None);
    assert_eq!(q(vec![b"My_Svc-1", b"NET"]).lookup_name().as_deref(), Some("my_svc-1.net"));
    assert_eq!(display_name(&q(vec![b"a.b", b"c\x01"]).labels), "a\\046b.c\\001");
}

#[test]
fn encode_name_limits() {
    assert_eq!(encode_name("").unwrap(), Vec::<Vec<u8>>::new());
    assert_eq!(encode_name(".").unwrap(), Vec::<Vec<u8>>::new());
    assert!(matches!(encode_name("a..b"), Err(NetError::InvalidDnsName { reason: "empty label", .. })));
    assert!(matches!(encode_name(".a"), Err(NetError::InvalidDnsName { .. })));
    let l63 = "a".repeat(63);
    assert!(encode_name(&l63).is_ok());
    let err = encode_name(&"a".repeat(64)).unwrap_err();
    assert!(err.to_string().contains("label longer than 63"), "{err}");
    // 3 × (1 + 63) + (1 + 61) + 1 = 255: the longest name
    let longest = format!("{l63}.{l63}.{l63}.{}", "b".repeat(61));
    let labels = encode_name(&longest).unwrap();
    let q = build_query(1, &longest, TYPE_A).unwrap();
    assert_eq!(parse_query(&q).unwrap().question.labels, labels);
    let too_long = format!("{l63}.{l63}.{l63}.{}", "b".repeat(62));
    assert!(encode_name(&too_long).unwrap_err().to_string().contains("longer than 255"));
}

// ---------------------------------------------------------------------------------------------
// codec: malformed input

#[test]
fn short_and_truncated_messages() {
    assert!(Header::parse(&GOLDEN_QUERY[..11]).is_none());
    assert_eq!(reason(parse_message(&GOLDEN_QUERY[..11]).unwrap_err()), "message shorter than the 12-byte header");
    // every proper prefix of the query that still has a header fails cleanly
    for n in 12..GOLDEN_QUERY.len() {
        let e = parse_query(&GOLDEN_QUERY[..n]).unwrap_err();
        assert!(matches!(e, NetError::DnsMessage { .. }), "prefix {n}: {e}");
    }
    for n in 12..GOLDEN_RESPONSE.len() {
        assert!(parse_message(&GOLDEN_RESPONSE[..n]).is_err(), "prefix {n}");
    }
    assert_eq!(reason(parse_message(&GOLDEN_QUERY[..14]).unwrap_err()), "message ends inside a label");
    assert_eq!(reason(parse_message(&GOLDEN_QUERY[..17]).unwrap_err()), "message ends inside a 16-bit field");
    // header + label length only
    assert_eq!(reason(parse_message(&GOLDEN_QUERY[..12]).unwrap_err()), "message ends inside a name");
    // record data longer than the message
    let mut r = GOLDEN_RESPONSE.to_vec();
    r[32] = 5;
    assert_eq!(reason(parse_message(&r).unwrap_err()), "record data runs past the end of the message");
    // an answer count with no answers
    let mut q = GOLDEN_QUERY.to_vec();
    q[7] = 1;
    assert!(parse_message(&q).is_err());
}

#[test]
fn trailing_bytes_are_ignored() {
    let mut q = GOLDEN_QUERY.to_vec();
    q.extend_from_slice(b"junk");
    assert_eq!(parse_query(&q).unwrap().question.labels, vec![b"web".to_vec()]);
}

fn header_with(qdcount: u16, ancount: u16) -> Vec<u8> {
    let mut b = vec![0xab, 0xcd, 0x01, 0x00];
    for c in [qdcount, ancount, 0, 0] {
        b.extend_from_slice(&c.to_be_bytes());
    }
    b
}

#[test]
fn reserved_label_types_and_long_labels() {
    for first in [0x40u8, 0x80, 0x7f, 0xbf] {
        let mut b = header_with(1, 0);
        b.extend_from_slice(&[first, b'a', 0, 0, 1, 0, 1]);
        assert_eq!(reason(parse_message(&b).unwrap_err()), "reserved label type", "{first:#x}");
    }
}

#[test]
fn names_longer_than_255_are_refused() {
    let mut b = header_with(1, 0);
    for _ in 0..5 {
        b.push(63);
        b.extend_from_slice(&[b'x'; 63]);
    }
    b.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(reason(parse_message(&b).unwrap_err()), "name longer than 255 bytes");
    // the limit also holds across compression pointers: 4 × 63 + pointer back to 3 × 63
    let mut b = header_with(2, 0);
    for _ in 0..3 {
        b.push(63);
        b.extend_from_slice(&[b'x'; 63]);
    }
    b.extend_from_slice(&[0, 0, 1, 0, 1]); // first question: 193 bytes, fine
    b.extend_from_slice(&[63]);
    b.extend_from_slice(&[b'y'; 63]);
    b.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // second: 64 + 193 = 257
    assert_eq!(reason(parse_message(&b).unwrap_err()), "name longer than 255 bytes");
}

#[test]
fn compression_pointers() {
    // A valid response whose answer points at the question, then a second name pointing into
    // the middle of the first ("example" of "web.example").
    let mut b = header_with(1, 2);
    b[2] = 0x81;
    b.extend_from_slice(b"\x03web\x07example\x00\x00\x01\x00\x01");
    b.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4]);
    b.extend_from_slice(b"\x03api\xc0\x10\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x05\x06\x07\x08");
    let m = parse_message(&b).unwrap();
    assert_eq!(display_name(&m.answers[0].labels), "web.example");
    assert_eq!(display_name(&m.answers[1].labels), "api.example");
    assert_eq!(m.answers[1].ipv4(), Some(Ipv4Addr::new(5, 6, 7, 8)));
}

#[test]
fn pointer_loops_and_forward_pointers_are_refused() {
    // pointer to itself
    let mut b = header_with(1, 0);
    b.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(reason(parse_message(&b).unwrap_err()), "compression pointer does not point backwards");
    // pointer forward
    let mut b = header_with(1, 0);
    b.extend_from_slice(&[0xc0, 14, 0, 0, 1, 0, 1]);
    assert_eq!(reason(parse_message(&b).unwrap_err()), "compression pointer does not point backwards");
    // a loop through a label: offset 12 "\x01a", then at 14 a pointer back to 12
    let mut b = header_with(1, 0);
    b.extend_from_slice(&[1, b'a', 0xc0, 12, 0, 1, 0, 1]);
    let e = reason(parse_message(&b).unwrap_err());
    assert!(e == "name longer than 255 bytes" || e.contains("loop"), "{e}");
    // pointer cut off
    let mut b = header_with(1, 0);
    b.push(0xc0);
    assert_eq!(reason(parse_message(&b).unwrap_err()), "message ends inside a compression pointer");
    // too many pointers: a chain of 65 pointers each pointing at the previous one, via read_name
    let mut b = header_with(0, 0);
    b.push(0); // offset 12: root
    for i in 0..=MAX_POINTERS {
        let target = if i == 0 { 12 } else { 13 + 2 * (i - 1) };
        b.extend_from_slice(&[0xc0, target as u8]);
    }
    let last = b.len() - 2;
    assert_eq!(reason(read_name(&b, last).unwrap_err()), "too many compression pointers (loop)");
    // 64 pointers are fine
    let (labels, end) = read_name(&b, last - 2).unwrap();
    assert!(labels.is_empty());
    assert_eq!(end, last);
}

#[test]
fn query_shape_is_checked() {
    let mut none = GOLDEN_QUERY.to_vec();
    none[5] = 0;
    assert_eq!(reason(parse_query(&none[..12]).unwrap_err()), "expected exactly one question");
    let mut two = GOLDEN_QUERY.to_vec();
    two[5] = 2;
    two.extend_from_slice(&GOLDEN_QUERY[12..]);
    assert_eq!(reason(parse_query(&two).unwrap_err()), "expected exactly one question");
    assert_eq!(reason(parse_query(&GOLDEN_RESPONSE).unwrap_err()), "message is a response, not a query");
}

#[test]
fn edns_opt_parsing() {
    let q = parse_query(&with_opt(query(1, "web", TYPE_A), 1232, 0)).unwrap();
    assert_eq!(q.edns, Some(Edns { udp_len: 1232, version: 0 }));
    assert_eq!(q.max_udp_len(), 1232);
    assert_eq!(parse_query(&with_opt(query(1, "web", TYPE_A), 100, 0)).unwrap().max_udp_len(), 512);
    assert_eq!(parse_query(&with_opt(query(1, "web", TYPE_A), 65000, 0)).unwrap().max_udp_len(), 4096);
    let two = with_opt(with_opt(query(1, "web", TYPE_A), 1232, 0), 1232, 0);
    assert_eq!(reason(parse_query(&two).unwrap_err()), "more than one opt record");
    let mut named = query(1, "web", TYPE_A);
    named[11] = 1;
    named.extend_from_slice(&[0xc0, 12, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(reason(parse_query(&named).unwrap_err()), "opt record not owned by the root");
}

#[test]
fn response_with_opt_and_extended_rcode() {
    let q = parse_query(&with_opt(query(9, "web", TYPE_A), 1232, 1)).unwrap();
    let r = build_response(&q, RCODE_BADVERS, &[], 0, 1232);
    let m = parse_message(&r).unwrap();
    assert_eq!(m.header.rcode(), 0);
    assert_eq!(m.additional.len(), 1);
    let opt = &m.additional[0];
    assert_eq!((opt.rtype, opt.class, opt.ttl >> 24), (TYPE_OPT, EDNS_UDP_LEN, 1));
    assert!(!m.header.authoritative());
}

#[test]
fn truncation_sets_tc_and_keeps_whole_records() {
    let addrs: Vec<Ipv4Addr> = (0..100u8).map(|i| Ipv4Addr::new(10, 0, 2, i)).collect();
    let plain = parse_query(&query(1, "web", TYPE_A)).unwrap();
    let r = build_response(&plain, RCODE_NOERROR, &addrs, 600, plain.max_udp_len());
    assert!(r.len() <= 512, "{}", r.len());
    let m = parse_message(&r).unwrap();
    assert!(m.header.truncated());
    assert_eq!(m.answers.len(), (512 - 12 - 9) / 16);
    assert_eq!(ips(&m), addrs[..m.answers.len()]);
    // with EDNS they all fit, and the OPT record is accounted for
    let edns = parse_query(&with_opt(query(1, "web", TYPE_A), 4096, 0)).unwrap();
    let m = parse_message(&build_response(&edns, RCODE_NOERROR, &addrs, 600, edns.max_udp_len())).unwrap();
    assert!(!m.header.truncated());
    assert_eq!(m.answers.len(), 100);
    assert_eq!(m.additional.len(), 1);
    // an exact fit is not truncated; one more is
    let n = (512 - 12 - 9) / 16;
    let m = parse_message(&build_response(&plain, RCODE_NOERROR, &addrs[..n], 600, 512)).unwrap();
    assert!(!m.header.truncated());
    let m = parse_message(&build_response(&plain, RCODE_NOERROR, &addrs[..n + 1], 600, 512)).unwrap();
    assert!(m.header.truncated());
    // TCP caps at 65535 bytes
    let lots: Vec<Ipv4Addr> = (0..5000u32).map(|i| Ipv4Addr::from(0x0a00_0000 + i)).collect();
    let r = build_response(&plain, RCODE_NOERROR, &lots, 600, MAX_TCP_LEN);
    assert!(r.len() <= MAX_TCP_LEN);
    let m = parse_message(&r).unwrap();
    assert!(m.header.truncated());
    assert_eq!(m.answers.len(), (MAX_TCP_LEN - 21) / 16);
}

// ---------------------------------------------------------------------------------------------
// codec: random input never panics

#[test]
fn random_bytes_never_panic() {
    let (shared, _) = shared_with(vec!["192.0.2.1:53".parse().unwrap()]);
    let mut rng = Lcg(0x5eed);
    for i in 0..30_000 {
        let len = rng.below(if i % 3 == 0 { 40 } else { 600 });
        let mut buf = rng.bytes(len);
        if i % 2 == 0 && buf.len() >= 12 {
            // plausible headers reach deeper into the parser
            buf[2] &= 0x01;
            buf[4] = 0;
            buf[5] = (rng.below(3)) as u8;
            for b in &mut buf[6..12] {
                *b = if rng.below(4) == 0 { 1 } else { 0 };
            }
        }
        check_no_panic(&shared, &buf);
    }
}

#[test]
fn mutated_messages_never_panic() {
    let (shared, _) = shared_with(vec![]);
    let seeds = [
        GOLDEN_QUERY.to_vec(),
        GOLDEN_RESPONSE.to_vec(),
        with_opt(query(3, "tasks.web", TYPE_A), 1232, 0),
        query(4, &format!("{}.b", "a".repeat(63)), TYPE_AAAA),
    ];
    let mut rng = Lcg(42);
    for i in 0..30_000 {
        let mut buf = seeds[i % seeds.len()].clone();
        for _ in 0..=rng.below(4) {
            match rng.below(4) {
                0 | 1 => {
                    let at = rng.below(buf.len());
                    buf[at] = rng.next() as u8;
                }
                2 => {
                    let at = rng.below(buf.len());
                    buf[at] = [0xc0, 0x00, 0x3f, 0x40, 0xff][rng.below(5)];
                }
                _ => buf.truncate(rng.below(buf.len() + 1)),
            }
            if buf.is_empty() {
                break;
            }
        }
        check_no_panic(&shared, &buf);
    }
}

fn check_no_panic(shared: &Shared, buf: &[u8]) {
    let _ = parse_message(buf);
    let _ = parse_head(buf);
    if let Ok(q) = parse_query(buf) {
        let r = build_response(&q, RCODE_NOERROR, &[Ipv4Addr::LOCALHOST], 600, q.max_udp_len());
        parse_message(&r).expect("our own response parses");
        let _ = q.question.lookup_name();
    }
    for t in [Transport::Udp, Transport::Tcp] {
        match shared.handle("c1", buf, t) {
            Outcome::Reply(r) => {
                let h = Header::parse(&r).expect("reply has a header");
                assert!(h.is_response());
                assert_eq!(h.id, Header::parse(buf).unwrap().id);
                if t == Transport::Udp {
                    assert!(r.len() <= EDNS_UDP_LEN as usize);
                }
            }
            Outcome::Drop => assert!(buf.len() < 12 || buf[2] & 0x80 != 0),
            Outcome::Forward(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// answering

#[test]
fn known_names_are_answered() {
    let (shared, resolver) = shared_with(vec![]);
    let m = reply_of(shared.handle("c1", &query(0x77, "web", TYPE_A), Transport::Udp));
    assert_eq!(m.header.id, 0x77);
    assert_eq!(m.header.rcode(), RCODE_NOERROR);
    assert!(m.header.recursion_desired() && m.header.recursion_available() && m.header.authoritative());
    assert_eq!(ips(&m), [Ipv4Addr::new(10, 0, 1, 2)]);
    assert_eq!(m.answers[0].ttl, TTL);
    assert_eq!(display_name(&m.questions[0].labels), "web");
    // case-insensitive, trailing dot
    let m = reply_of(shared.handle("c1", &query(1, "WEB.", TYPE_A), Transport::Tcp));
    assert_eq!(ips(&m), [Ipv4Addr::new(10, 0, 1, 2)]);
    assert_eq!(display_name(&m.questions[0].labels), "WEB");
    let calls = resolver.calls.lock().unwrap().clone();
    assert_eq!(calls, [("c1".to_string(), "web".to_string()), ("c1".to_string(), "web".to_string())]);
    // ANY is answered like A
    assert_eq!(ips(&reply_of(shared.handle("c1", &query(1, "web", TYPE_ANY), Transport::Udp))).len(), 1);
}

#[test]
fn known_names_without_a_records() {
    let (shared, _) = shared_with(vec!["192.0.2.1:53".parse().unwrap()]);
    for qtype in [TYPE_AAAA, 15 /* MX */, 16 /* TXT */, TYPE_CNAME] {
        let m = reply_of(shared.handle("c1", &query(1, "web", qtype), Transport::Udp));
        assert_eq!(m.header.rcode(), RCODE_NOERROR, "qtype {qtype}");
        assert!(m.answers.is_empty());
        assert_eq!(m.questions[0].qtype, qtype);
    }
    let m = reply_of(shared.handle("c1", &query(1, "empty", TYPE_A), Transport::Udp));
    assert_eq!((m.header.rcode(), m.answers.len()), (RCODE_NOERROR, 0));
}

#[test]
fn multiple_answers_rotate() {
    let (shared, _) = shared_with(vec![]);
    let mut firsts = BTreeSet::new();
    for i in 0..3 {
        let got = ips(&reply_of(shared.handle("c1", &query(i, "tasks.web", TYPE_A), Transport::Udp)));
        assert_eq!(got.iter().copied().collect::<BTreeSet<_>>().len(), 3);
        // a rotation, so the cyclic order is kept
        let pos = got.iter().position(|ip| *ip == Ipv4Addr::new(10, 0, 1, 3)).unwrap();
        assert_eq!(got[(pos + 1) % 3], Ipv4Addr::new(10, 0, 1, 4));
        firsts.insert(got[0]);
    }
    assert_eq!(firsts.len(), 3, "each query starts with another address");
}

#[test]
fn many_answers_truncate_over_udp_but_not_tcp() {
    let (shared, _) = shared_with(vec![]);
    let m = reply_of(shared.handle("c1", &query(1, "many", TYPE_A), Transport::Udp));
    assert!(m.header.truncated());
    assert_eq!(m.answers.len(), (512 - 22) / 16);
    let m = reply_of(shared.handle("c1", &with_opt(query(1, "many", TYPE_A), 4096, 0), Transport::Udp));
    assert!(!m.header.truncated());
    assert_eq!(m.answers.len(), 200);
    let m = reply_of(shared.handle("c1", &query(1, "many", TYPE_A), Transport::Tcp));
    assert!(!m.header.truncated());
    assert_eq!(m.answers.len(), 200);
}

#[test]
fn unknown_names_are_forwarded_or_servfail() {
    let (none, resolver) = shared_with(vec![]);
    let m = reply_of(none.handle("c1", &query(5, "example.com", TYPE_A), Transport::Udp));
    assert_eq!(m.header.rcode(), RCODE_SERVFAIL);
    assert!(!m.header.authoritative());
    assert_eq!(display_name(&m.questions[0].labels), "example.com");
    // the container's view matters
    let m = reply_of(none.handle("other", &query(5, "web", TYPE_A), Transport::Udp));
    assert_eq!(m.header.rcode(), RCODE_SERVFAIL);
    assert_eq!(resolver.calls.lock().unwrap().last().unwrap(), &("other".to_string(), "web".to_string()));

    let (some, _) = shared_with(vec!["192.0.2.1:53".parse().unwrap()]);
    assert!(matches!(some.handle("c1", &query(5, "example.com", TYPE_A), Transport::Udp), Outcome::Forward(_)));
    assert!(matches!(some.handle("c1", &query(5, "", TYPE_A), Transport::Udp), Outcome::Forward(_)), "root");
    // another class is never ours
    let mut chaos = query(5, "web", TYPE_A);
    let n = chaos.len();
    chaos[n - 1] = 3;
    assert!(matches!(some.handle("c1", &chaos, Transport::Udp), Outcome::Forward(_)));
    // nor a name with bytes no service name has
    let mut odd = query(5, "web", TYPE_A);
    odd[13] = b' ';
    assert!(matches!(some.handle("c1", &odd, Transport::Udp), Outcome::Forward(_)));
}

#[test]
fn malformed_and_unsupported_queries() {
    let (shared, _) = shared_with(vec![]);
    assert_eq!(shared.handle("c1", &GOLDEN_QUERY[..11], Transport::Udp), Outcome::Drop);
    assert_eq!(shared.handle("c1", &GOLDEN_RESPONSE, Transport::Udp), Outcome::Drop);
    let formerr = |buf: &[u8]| {
        let m = reply_of(shared.handle("c1", buf, Transport::Udp));
        (m.header.id, m.header.rcode(), m.questions.len())
    };
    assert_eq!(formerr(&GOLDEN_QUERY[..15]), (0x1234, RCODE_FORMERR, 0));
    let mut two = GOLDEN_QUERY.to_vec();
    two[5] = 2;
    two.extend_from_slice(&GOLDEN_QUERY[12..]);
    assert_eq!(formerr(&two), (0x1234, RCODE_FORMERR, 0));
    let mut loop_ = header_with(1, 0);
    loop_.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(formerr(&loop_), (0xabcd, RCODE_FORMERR, 0));
    let mut notify = GOLDEN_QUERY.to_vec();
    notify[2] = 4 << 3;
    assert_eq!(formerr(&notify), (0x1234, RCODE_NOTIMP, 0));
    let m = reply_of(shared.handle("c1", &with_opt(query(8, "web", TYPE_A), 1232, 1), Transport::Udp));
    assert_eq!((m.header.rcode(), m.additional[0].ttl >> 24), (0, 1), "badvers");
    // EDNS queries get an OPT back
    let m = reply_of(shared.handle("c1", &with_opt(query(8, "web", TYPE_A), 1232, 0), Transport::Udp));
    assert_eq!(m.additional.len(), 1);
    assert_eq!(m.additional[0].rtype, TYPE_OPT);
}

#[test]
fn resolv_conf_parsing() {
    let text = "# generated\n\
                search example.com\n\
                nameserver 127.0.0.53\n\
                nameserver 10.0.0.2\n\
                nameserver   192.0.2.1   # trailing\n\
                ;nameserver 192.0.2.9\n\
                nameserver ::1\n\
                nameserver 2001:db8::1\n\
                nameserver fe80::1%eth0\n\
                nameserver 10.0.0.2\n\
                nameserver\n\
                nameserver bogus\n\
                nameserver 0.0.0.0\n\
                options ndots:2\n";
    let got = parse_resolv_conf(text);
    let want: Vec<SocketAddr> =
        ["10.0.0.2:53", "192.0.2.1:53", "[2001:db8::1]:53"].iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(got, want);
    let missing = DnsServer::upstreams_from_resolv_conf(Path::new("/nonexistent/resolv.conf"));
    assert!(missing.is_empty());
}

#[tokio::test]
async fn attach_refuses_bad_input_without_side_effects() {
    let server = DnsServer::new(Arc::new(FakeResolver::default()), vec![]);
    let e = server.attach("../x", Path::new("/nonexistent")).await.unwrap_err();
    assert!(matches!(e, NetError::InvalidContainerId(_)), "{e}");
    let e = server.attach("c1", Path::new("/nonexistent/netns/c1")).await.unwrap_err();
    assert!(e.to_string().contains("/nonexistent/netns/c1"), "{e}");
    assert!(server.attached().is_empty());
    server.detach("c1"); // unknown: ignored
}

// ---------------------------------------------------------------------------------------------
// serving and forwarding over real sockets on 127.0.0.1 (no namespaces)

/// A fake upstream: answers each UDP query with the datagrams `answer(query)` (none = silent).
async fn fake_udp_upstream(answer: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else { return };
            for r in answer(&buf[..n]) {
                let _ = sock.send_to(&r, peer).await;
            }
        }
    });
    (addr, task)
}

/// An upstream answer to `raw`: `rcode`, and for A queries of "ext.example" 192.0.2.7.
fn upstream_answer(raw: &[u8], rcode: u16) -> Vec<u8> {
    let q = parse_query(raw).unwrap();
    let addrs = if q.question.lookup_name().as_deref() == Some("ext.example") && rcode == RCODE_NOERROR {
        vec![Ipv4Addr::new(192, 0, 2, 7)]
    } else {
        vec![]
    };
    let mut r = build_response(&q, rcode, &addrs, 60, MAX_TCP_LEN);
    r[2] &= !0x04; // not authoritative: tell it apart from a local answer
    r
}

async fn udp_ask(server: SocketAddr, msg: &[u8]) -> Option<Message> {
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.send_to(msg, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf)).await.ok()?.ok()?;
    Some(parse_message(&buf[..n]).unwrap())
}

async fn udp_server(shared: Arc<Shared>) -> (SocketAddr, JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    (addr, tokio::spawn(serve_udp(sock, shared, Arc::from("c1"))))
}

#[tokio::test]
async fn udp_serving_and_forwarding() {
    let (upstream, up_task) = fake_udp_upstream(|q| vec![upstream_answer(q, RCODE_NXDOMAIN)]).await;
    let (shared, _) = shared_with(vec![upstream]);
    let (addr, server) = udp_server(shared).await;

    let m = udp_ask(addr, &query(1, "web", TYPE_A)).await.expect("local answer");
    assert_eq!(ips(&m), [Ipv4Addr::new(10, 0, 1, 2)]);
    let m = udp_ask(addr, &query(2, "nope.example", TYPE_A)).await.expect("forwarded answer");
    assert_eq!((m.header.id, m.header.rcode(), m.header.authoritative()), (2, RCODE_NXDOMAIN, false));
    // malformed with a header: FORMERR; without: nothing
    let m = udp_ask(addr, &GOLDEN_QUERY[..14]).await.expect("formerr");
    assert_eq!(m.header.rcode(), RCODE_FORMERR);
    assert!(tokio::time::timeout(Duration::from_millis(200), udp_ask(addr, &[1, 2, 3])).await.is_err());
    // concurrent forwards do not block local answers, and each gets its own answer
    let mut asks = Vec::new();
    for i in 0..20u16 {
        let name = if i % 2 == 0 { "web".to_string() } else { format!("n{i}.example") };
        asks.push(tokio::spawn(async move { (i, udp_ask(addr, &query(100 + i, &name, TYPE_A)).await) }));
    }
    for a in asks {
        let (i, m) = a.await.unwrap();
        let m = m.expect("answer");
        assert_eq!(m.header.id, 100 + i);
        let want = if i % 2 == 0 { RCODE_NOERROR } else { RCODE_NXDOMAIN };
        assert_eq!(m.header.rcode(), want);
    }
    server.abort();
    up_task.abort();
}

#[tokio::test]
async fn forwarding_fails_over_between_upstreams() {
    let (silent, t1) = fake_udp_upstream(|_| vec![]).await;
    let (failing, t2) = fake_udp_upstream(|q| vec![upstream_answer(q, RCODE_SERVFAIL)]).await;
    // answers first with a wrong id and a wrong question (ignored), then properly
    let (good, t3) = fake_udp_upstream(|q| {
        let mut wrong_id = upstream_answer(q, RCODE_NOERROR);
        wrong_id[0] ^= 0xff;
        let mut wrong_name = q.to_vec();
        wrong_name[13] ^= 0x01;
        let wrong_name = upstream_answer(&wrong_name, RCODE_NOERROR);
        vec![wrong_id, wrong_name, upstream_answer(q, RCODE_NOERROR)]
    })
    .await;
    let (shared, _) = shared_with(vec![silent, failing, good]);
    let q = query(3, "ext.example", TYPE_A);
    let Outcome::Forward(parsed) = shared.handle("c1", &q, Transport::Udp) else { panic!("not forwarded") };
    let r = shared.forward("c1", &parsed, &q, Transport::Udp).await;
    let m = parse_message(&r).unwrap();
    assert_eq!((m.header.id, m.header.rcode()), (3, RCODE_NOERROR));
    assert_eq!(ips(&m), [Ipv4Addr::new(192, 0, 2, 7)]);

    // only failing upstreams: the last failure is relayed; only silent ones: SERVFAIL
    let (shared, _) = shared_with(vec![silent, failing]);
    let m = parse_message(&shared.forward("c1", &parsed, &q, Transport::Udp).await).unwrap();
    assert_eq!((m.header.id, m.header.rcode()), (3, RCODE_SERVFAIL));
    let (shared, _) = shared_with(vec![silent]);
    let m = parse_message(&shared.forward("c1", &parsed, &q, Transport::Udp).await).unwrap();
    assert_eq!((m.header.id, m.header.rcode(), m.questions.len()), (3, RCODE_SERVFAIL, 1));
    // a closed port (ICMP refused on the connected socket) fails fast
    let closed = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let (shared, _) = shared_with(vec![closed, good]);
    let m = parse_message(&shared.forward("c1", &parsed, &q, Transport::Udp).await).unwrap();
    assert_eq!(m.header.rcode(), RCODE_NOERROR);
    for t in [t1, t2, t3] {
        t.abort();
    }
}

#[tokio::test]
async fn mismatched_upstream_datagrams_are_ignored() {
    let (bad, t) = fake_udp_upstream(|q| {
        let mut r = upstream_answer(q, RCODE_NOERROR);
        r[0] ^= 0xff; // wrong id
        vec![r]
    })
    .await;
    let (shared, _) = shared_with(vec![bad]);
    let q = query(4, "ext.example", TYPE_A);
    let Outcome::Forward(parsed) = shared.handle("c1", &q, Transport::Udp) else { panic!("not forwarded") };
    let m = parse_message(&shared.forward("c1", &parsed, &q, Transport::Udp).await).unwrap();
    assert_eq!(m.header.rcode(), RCODE_SERVFAIL, "a wrong-id answer is never relayed");
    t.abort();
    let parsed = parse_query(&q).unwrap();
    let mut other = upstream_answer(&query(4, "other.example", TYPE_A), RCODE_NOERROR);
    assert!(!response_matches(&parsed, &other));
    other = upstream_answer(&query(4, "EXT.example", TYPE_A), RCODE_NOERROR);
    assert!(response_matches(&parsed, &other), "case-insensitive");
    assert!(!response_matches(&parsed, &q), "a query is not a response");
    assert!(response_matches(&parsed, &build_error(&parsed.header, RCODE_FORMERR)), "no question echoed");
}

async fn tcp_ask(stream: &mut TcpStream, msg: &[u8]) -> Message {
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read_u16()).await.unwrap().unwrap();
    let mut buf = vec![0u8; usize::from(n)];
    stream.read_exact(&mut buf).await.unwrap();
    parse_message(&buf).unwrap()
}

#[tokio::test]
async fn tcp_serving_and_forwarding() {
    // a TCP upstream answering NOERROR (ext.example → 192.0.2.7)
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    let up_task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = up.accept().await else { return };
            tokio::spawn(async move {
                while let Ok(n) = s.read_u16().await {
                    let mut q = vec![0u8; usize::from(n)];
                    if s.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    let r = upstream_answer(&q, RCODE_NOERROR);
                    let mut framed = (r.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&r);
                    let _ = s.write_all(&framed).await;
                }
            });
        }
    });
    let (shared, _) = shared_with(vec![up_addr]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_tcp(listener, shared, Arc::from("c1")));

    let mut s = TcpStream::connect(addr).await.unwrap();
    // several queries on one connection, local, forwarded, and large
    assert_eq!(ips(&tcp_ask(&mut s, &query(1, "web", TYPE_A)).await), [Ipv4Addr::new(10, 0, 1, 2)]);
    let m = tcp_ask(&mut s, &query(2, "ext.example", TYPE_A)).await;
    assert_eq!((m.header.id, m.header.authoritative()), (2, false));
    assert_eq!(ips(&m), [Ipv4Addr::new(192, 0, 2, 7)]);
    let m = tcp_ask(&mut s, &query(3, "many", TYPE_A)).await;
    assert_eq!((m.answers.len(), m.header.truncated()), (200, false));
    // FORMERR keeps the connection; a headerless message closes it
    assert_eq!(tcp_ask(&mut s, &GOLDEN_QUERY[..14]).await.header.rcode(), RCODE_FORMERR);
    s.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(n, 0, "closed without an answer");

    // a dead TCP upstream: SERVFAIL
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (shared, _) = shared_with(vec![dead]);
    let q = query(9, "ext.example", TYPE_A);
    let Outcome::Forward(parsed) = shared.handle("c1", &q, Transport::Tcp) else { panic!("not forwarded") };
    let m = parse_message(&shared.forward("c1", &parsed, &q, Transport::Tcp).await).unwrap();
    assert_eq!((m.header.id, m.header.rcode()), (9, RCODE_SERVFAIL));
    server.abort();
    up_task.abort();
}

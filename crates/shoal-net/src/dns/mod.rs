//! The embedded DNS server: Docker's service discovery at `127.0.0.11:53` inside containers
//! attached to user overlay networks.
//!
//! **Owns:** one UDP socket and one TCP listener on `127.0.0.11:53` per attached container,
//! bound inside that container's network namespace (a dedicated thread `setns`es in, brings `lo`
//! up if it is down, binds, and hands the fds back; sockets keep the namespace they were created in),
//! and the tasks serving them on the caller's tokio runtime. **Does not know:** services, tasks,
//! networks: every name goes to the caller's [`Resolver`], which answers for the container that
//! asked.
//!
//! **Answers** (Docker's behaviour): a name the resolver knows gets its `A` records (TTL
//! [`TTL`]), rotated per query when there are several so clients spread; `AAAA` and every other
//! type for a known name get NOERROR with no answers (overlays are IPv4-only); `Some(vec![])`
//! is a known name without addresses (NOERROR, empty). Names are matched lower-case without the
//! trailing dot. A name the resolver does not know (`None`) is forwarded as received to the
//! upstream nameservers, in order, from the namespace of the runtime's threads (the daemon's,
//! where the host's resolvers are reachable), never from the container's: UDP queries over UDP
//! with [`UDP_FORWARD_TIMEOUT`] per upstream, TCP queries over TCP with [`TCP_FORWARD_TIMEOUT`].
//! The first upstream answer that is not SERVFAIL/REFUSED is relayed byte for byte; a truncated
//! UDP answer is relayed with its TC bit, so the client retries over TCP, which we forward over
//! TCP. No upstream, or none answering: SERVFAIL. Malformed queries: dropped if even the header
//! is missing (or QR is set), FORMERR otherwise (also for more than one question); opcodes other
//! than QUERY get NOTIMP; an EDNS version above 0 gets BADVERS. Local UDP answers respect 512
//! bytes or the client's EDNS size (at most 4096): answers that do not fit are left out and TC
//! is set.
//!
//! **Limits:** at most [`MAX_INFLIGHT`] forwarded UDP queries and [`MAX_TCP_CONNS`] TCP
//! connections per container (more get SERVFAIL / are closed); idle TCP connections are closed
//! after 10 s. The resolver is called on a runtime thread and must not block.
//!
//! **Lifetime:** the sockets hold a reference to the container's namespace, so call
//! [`DnsServer::detach`] when the container's network goes away. `detach` aborts the serving
//! tasks; the sockets close as soon as the runtime drops them (at once on an idle runtime).
//! Re-attaching waits for the previous sockets to be closed before binding again. Attach and
//! detach of one container must not race each other (the caller serialises per container).
//!
//! The server binds `:53` directly (no DNAT to a random port as Docker does), so a container
//! process that binds port 53 on `0.0.0.0` or `127.0.0.11` itself conflicts with it.

pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

use crate::bridge::validate_container_id;
use crate::error::NetError;
use crate::ops::{in_netns_path, run};
use wire::{
    build_error, build_response, parse_head, parse_query, Header, Query, CLASS_ANY, CLASS_IN, EDNS_UDP_LEN,
    MAX_TCP_LEN, RCODE_BADVERS, RCODE_FORMERR, RCODE_NOERROR, RCODE_NOTIMP, RCODE_REFUSED, RCODE_SERVFAIL, TYPE_A,
    TYPE_ANY,
};

/// The address containers query (`nameserver 127.0.0.11` in their resolv.conf).
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
pub const DNS_PORT: u16 = 53;
/// TTL of local answers (Docker's).
pub const TTL: u32 = 600;
/// How long one upstream gets to answer a forwarded UDP query.
pub const UDP_FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one upstream gets for a whole forwarded TCP exchange (connect included).
pub const TCP_FORWARD_TIMEOUT: Duration = Duration::from_secs(4);
/// Forwarded UDP queries in flight per container.
pub const MAX_INFLIGHT: usize = 256;
/// Open TCP connections per container.
pub const MAX_TCP_CONNS: usize = 64;
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Queries longer than this over UDP are cut by the receive and answered FORMERR.
const UDP_RECV_LEN: usize = EDNS_UDP_LEN as usize;
/// The largest DNS message (any transport).
const MAX_MESSAGE_LEN: usize = 65535;

/// The data behind the server, supplied by the caller.
pub trait Resolver: Send + Sync + 'static {
    /// Addresses for `name` (lower-case, no trailing dot) as seen by container `container_id`;
    /// None = not ours (forward).
    fn resolve(&self, container_id: &str, name: &str) -> Option<Vec<Ipv4Addr>>;
}

/// Over which transport a query came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// What to do with one received message.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Not answerable (no header, or a response): say nothing.
    Drop,
    Reply(Vec<u8>),
    /// Not ours: forward the raw message upstream.
    Forward(Query),
}

/// What the serving tasks share: the answering logic, independent of sockets and namespaces.
struct Shared {
    resolver: Arc<dyn Resolver>,
    upstreams: Vec<SocketAddr>,
    udp_timeout: Duration,
    tcp_timeout: Duration,
    rotation: AtomicUsize,
}

impl Shared {
    /// Decides locally what to do with `msg` from `container`.
    fn handle(&self, container: &str, msg: &[u8], transport: Transport) -> Outcome {
        let Some(header) = Header::parse(msg) else {
            tracing::trace!(container, len = msg.len(), "dropping dns message shorter than a header");
            return Outcome::Drop;
        };
        if header.is_response() {
            tracing::trace!(container, id = header.id, "dropping dns response sent to the server");
            return Outcome::Drop;
        }
        if header.opcode() != 0 {
            return Outcome::Reply(build_error(&header, RCODE_NOTIMP));
        }
        let query = match parse_query(msg) {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!(container, id = header.id, error = %e, "malformed dns query");
                return Outcome::Reply(build_error(&header, RCODE_FORMERR));
            }
        };
        let max_len = match transport {
            Transport::Udp => query.max_udp_len(),
            Transport::Tcp => MAX_TCP_LEN,
        };
        if query.edns.is_some_and(|e| e.version > 0) {
            return Outcome::Reply(build_response(&query, RCODE_BADVERS, &[], 0, max_len));
        }
        let q = &query.question;
        let name = if matches!(q.qclass, CLASS_IN | CLASS_ANY) { q.lookup_name() } else { None };
        let found = name.as_deref().and_then(|n| self.resolver.resolve(container, n));
        match found {
            Some(mut addrs) => {
                if !matches!(q.qtype, TYPE_A | TYPE_ANY) {
                    addrs.clear();
                }
                if addrs.len() > 1 {
                    let k = self.rotation.fetch_add(1, Ordering::Relaxed) % addrs.len();
                    addrs.rotate_left(k);
                }
                tracing::trace!(
                    container,
                    name = name.as_deref(),
                    qtype = q.qtype,
                    answers = addrs.len(),
                    "dns answer"
                );
                Outcome::Reply(build_response(&query, RCODE_NOERROR, &addrs, TTL, max_len))
            }
            None if self.upstreams.is_empty() => {
                tracing::trace!(container, name = %wire::display_name(&q.labels), "no upstream nameserver: servfail");
                Outcome::Reply(build_response(&query, RCODE_SERVFAIL, &[], 0, max_len))
            }
            None => Outcome::Forward(query),
        }
    }

    /// Forwards `raw` (the query `query`) to the upstreams in order over `transport`; returns
    /// the answer to relay (SERVFAIL if none came).
    async fn forward(&self, container: &str, query: &Query, raw: &[u8], transport: Transport) -> Vec<u8> {
        let mut fallback = None;
        for &up in &self.upstreams {
            let r = match transport {
                Transport::Udp => timeout(self.udp_timeout, udp_exchange(up, query, raw)).await,
                Transport::Tcp => timeout(self.tcp_timeout, tcp_exchange(up, query, raw)).await,
            };
            match r {
                Ok(Ok(resp)) => {
                    let rcode = Header::parse(&resp).map(|h| h.rcode()).unwrap_or(RCODE_SERVFAIL);
                    if rcode == RCODE_SERVFAIL || rcode == RCODE_REFUSED {
                        tracing::debug!(container, upstream = %up, rcode, "upstream failed the query, trying the next");
                        fallback = Some(resp);
                        continue;
                    }
                    return resp;
                }
                Ok(Err(e)) => tracing::debug!(container, upstream = %up, ?transport, error = %e, "dns forward failed"),
                Err(_) => tracing::debug!(container, upstream = %up, ?transport, "dns forward timed out"),
            }
        }
        fallback.unwrap_or_else(|| {
            let max_len = match transport {
                Transport::Udp => query.max_udp_len(),
                Transport::Tcp => MAX_TCP_LEN,
            };
            build_response(query, RCODE_SERVFAIL, &[], 0, max_len)
        })
    }
}

/// Whether `resp` is an answer to `query`: same ID, QR set, and the same question if it echoes
/// one (names compared case-insensitively).
fn response_matches(query: &Query, resp: &[u8]) -> bool {
    let Ok((header, questions, _)) = parse_head(resp) else {
        return false;
    };
    if header.id != query.header.id || !header.is_response() {
        return false;
    }
    match questions.first() {
        None => true,
        Some(q) => {
            let want = &query.question;
            q.qtype == want.qtype
                && q.qclass == want.qclass
                && q.labels.len() == want.labels.len()
                && q.labels.iter().zip(&want.labels).all(|(a, b)| a.eq_ignore_ascii_case(b))
        }
    }
}

async fn udp_exchange(upstream: SocketAddr, query: &Query, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr =
        if upstream.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(upstream).await?;
    sock.send(raw).await?;
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    loop {
        let n = sock.recv(&mut buf).await?;
        if response_matches(query, &buf[..n]) {
            buf.truncate(n);
            return Ok(buf);
        }
        tracing::trace!(upstream = %upstream, len = n, "ignoring a datagram that does not answer the query");
    }
}

async fn tcp_exchange(upstream: SocketAddr, query: &Query, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let len = u16::try_from(raw.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query longer than 65535 bytes"))?;
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(raw.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(raw);
    stream.write_all(&framed).await?;
    let n = usize::from(stream.read_u16().await?);
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).await?;
    if !response_matches(query, &buf) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "upstream answer does not match the query"));
    }
    Ok(buf)
}

async fn send_udp(sock: &UdpSocket, container: &str, reply: &[u8], peer: SocketAddr) {
    if let Err(e) = sock.send_to(reply, peer).await {
        tracing::debug!(container, peer = %peer, error = %e, "send dns reply");
    }
}

/// Serves one container's UDP socket until the task is aborted. Only this task holds the socket
/// (forwards run as children that return their reply), so aborting it closes the socket.
async fn serve_udp(sock: UdpSocket, shared: Arc<Shared>, container: Arc<str>) {
    let mut buf = vec![0u8; UDP_RECV_LEN];
    let mut inflight: JoinSet<(Vec<u8>, SocketAddr)> = JoinSet::new();
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, peer)) => {
                    let msg = &buf[..n];
                    match shared.handle(&container, msg, Transport::Udp) {
                        Outcome::Drop => {}
                        Outcome::Reply(reply) => send_udp(&sock, &container, &reply, peer).await,
                        Outcome::Forward(query) if inflight.len() >= MAX_INFLIGHT => {
                            tracing::warn!(container = %container, limit = MAX_INFLIGHT, "too many forwarded dns queries in flight: servfail");
                            let reply = build_response(&query, RCODE_SERVFAIL, &[], 0, query.max_udp_len());
                            send_udp(&sock, &container, &reply, peer).await;
                        }
                        Outcome::Forward(query) => {
                            let (shared, container, raw) = (shared.clone(), container.clone(), msg.to_vec());
                            inflight.spawn(async move {
                                (shared.forward(&container, &query, &raw, Transport::Udp).await, peer)
                            });
                        }
                    }
                }
                Err(e) => {
                    // Nothing a peer sends makes recv fail persistently; back off anyway so an
                    // unexpected error cannot spin.
                    tracing::debug!(container = %container, error = %e, "dns udp receive");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                if let Ok((reply, peer)) = done {
                    send_udp(&sock, &container, &reply, peer).await;
                }
            }
        }
    }
}

/// Serves one container's TCP listener until the task is aborted (which also aborts every
/// connection).
async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, container: Arc<str>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) if conns.len() < MAX_TCP_CONNS => {
                    conns.spawn(serve_conn(stream, peer, shared.clone(), container.clone()));
                }
                Ok((_, peer)) => {
                    tracing::warn!(container = %container, peer = %peer, limit = MAX_TCP_CONNS, "too many dns tcp connections: closing");
                }
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning.
                    tracing::debug!(container = %container, error = %e, "dns tcp accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One TCP connection: length-prefixed queries answered in order until EOF, an idle timeout or
/// a message that cannot be answered at all.
async fn serve_conn(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, container: Arc<str>) {
    loop {
        let len = match timeout(TCP_IDLE_TIMEOUT, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        let mut msg = vec![0u8; len];
        if !matches!(timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut msg)).await, Ok(Ok(_))) {
            return;
        }
        let reply = match shared.handle(&container, &msg, Transport::Tcp) {
            Outcome::Drop => return,
            Outcome::Reply(reply) => reply,
            Outcome::Forward(query) => shared.forward(&container, &query, &msg, Transport::Tcp).await,
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            tracing::debug!(container = %container, len = reply.len(), "dns reply too long for tcp");
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&reply);
        if !matches!(timeout(TCP_IDLE_TIMEOUT, stream.write_all(&framed)).await, Ok(Ok(()))) {
            tracing::debug!(container = %container, peer = %peer, "dns tcp write failed or timed out");
            return;
        }
    }
}

/// The serving tasks of one attached container.
struct Attachment {
    netns: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl Attachment {
    fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Aborts the tasks and waits until they (and so their sockets) are gone.
    async fn stop(self) {
        self.abort();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    attached: Mutex<HashMap<String, Attachment>>,
    /// Serialises `attach` (stop old, bind, insert) so two attaches cannot interleave.
    attach_lock: tokio::sync::Mutex<()>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Attachment>> {
        self.attached.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for a in self.lock().values() {
            a.abort();
        }
    }
}

/// The embedded DNS server of one daemon. Cheap to clone (an `Arc` inside); dropping the last
/// clone stops serving every container.
#[derive(Clone)]
pub struct DnsServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("upstreams", &self.inner.shared.upstreams)
            .field("attached", &self.attached())
            .finish()
    }
}

impl DnsServer {
    /// A server answering from `resolver` and forwarding everything else to `upstreams` (tried
    /// in order; loopback addresses are allowed here and are reached in the daemon's namespace).
    pub fn new(resolver: Arc<dyn Resolver>, upstreams: Vec<SocketAddr>) -> DnsServer {
        Self::with_timeouts(resolver, upstreams, UDP_FORWARD_TIMEOUT, TCP_FORWARD_TIMEOUT)
    }

    pub(crate) fn with_timeouts(
        resolver: Arc<dyn Resolver>,
        upstreams: Vec<SocketAddr>,
        udp_timeout: Duration,
        tcp_timeout: Duration,
    ) -> DnsServer {
        let shared = Shared { resolver, upstreams, udp_timeout, tcp_timeout, rotation: AtomicUsize::new(0) };
        DnsServer {
            inner: Arc::new(Inner {
                shared: Arc::new(shared),
                attached: Mutex::new(HashMap::new()),
                attach_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The `nameserver` addresses of a resolv.conf (port 53), in order, without duplicates,
    /// skipping loopback ones (like Docker) and link-local IPv6 ones with a zone. An unreadable
    /// file gives an empty list (logged).
    pub fn upstreams_from_resolv_conf(path: &Path) -> Vec<SocketAddr> {
        match std::fs::read_to_string(path) {
            Ok(text) => parse_resolv_conf(&text),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read resolv.conf: no upstream nameservers");
                Vec::new()
            }
        }
    }

    /// Binds `127.0.0.11:53` (UDP and TCP) inside the network namespace at `netns_path`
    /// (bringing `lo` up there if it is down) and serves it on the current tokio runtime until
    /// [`DnsServer::detach`]. Attaching an attached container replaces its sockets (the old ones
    /// are closed first).
    pub async fn attach(&self, container_id: &str, netns_path: &Path) -> Result<(), NetError> {
        validate_container_id(container_id)?;
        let _serial = self.inner.attach_lock.lock().await;
        let old = self.inner.lock().remove(container_id);
        if let Some(old) = old {
            tracing::debug!(container = container_id, netns = %old.netns.display(), "dns re-attach: closing old sockets");
            old.stop().await;
        }
        let path = netns_path.to_path_buf();
        let (udp, tcp) = tokio::task::spawn_blocking(move || in_netns_path(&path, || bind_sockets(&path)))
            .await
            .map_err(|e| NetError::Internal(format!("dns bind task for {}: {e}", netns_path.display())))??;
        let where_ = || format!("netns {}", netns_path.display());
        let udp = UdpSocket::from_std(udp).map_err(|e| NetError::io("register dns udp socket of", where_(), e))?;
        let tcp = TcpListener::from_std(tcp).map_err(|e| NetError::io("register dns tcp listener of", where_(), e))?;
        let container: Arc<str> = Arc::from(container_id);
        let shared = &self.inner.shared;
        let tasks = vec![
            tokio::spawn(serve_udp(udp, shared.clone(), container.clone())),
            tokio::spawn(serve_tcp(tcp, shared.clone(), container)),
        ];
        let replaced =
            self.inner.lock().insert(container_id.to_string(), Attachment { netns: netns_path.to_path_buf(), tasks });
        if let Some(r) = replaced {
            // Only if the caller raced an attach with a detach+attach; never leave tasks behind.
            r.abort();
        }
        tracing::info!(container = container_id, netns = %netns_path.display(), "dns server attached");
        Ok(())
    }

    /// Stops serving `container_id` and closes its sockets. Unknown ids are ignored.
    pub fn detach(&self, container_id: &str) {
        let removed = self.inner.lock().remove(container_id);
        if let Some(a) = removed {
            a.abort();
            tracing::info!(container = container_id, netns = %a.netns.display(), "dns server detached");
        }
    }

    /// The attached container ids, sorted.
    pub fn attached(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.lock().keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// See [`DnsServer::upstreams_from_resolv_conf`].
fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        let Ok(ip) = word.parse::<std::net::IpAddr>() else {
            tracing::debug!(nameserver = word, "skipping resolv.conf nameserver that is not a plain ip address");
            continue;
        };
        if ip.is_loopback() || ip.is_unspecified() {
            continue;
        }
        let addr = SocketAddr::new(ip, DNS_PORT);
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// Whether `lo` of the calling thread's namespace is up.
fn lo_is_up() -> Result<bool, NetError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| NetError::sys("list interfaces for", "lo", e))?;
    Ok(addrs.into_iter().any(|a| a.interface_name == "lo" && a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)))
}

/// Runs inside the container's namespace: makes sure `lo` is up (a fresh namespace has it down,
/// and binding 127.0.0.11 succeeds even then, but nothing would reach it), then binds the UDP
/// socket and the TCP listener.
fn bind_sockets(netns: &Path) -> Result<(std::net::UdpSocket, std::net::TcpListener), NetError> {
    let addr = SocketAddr::from((DNS_ADDR, DNS_PORT));
    let where_ = || format!("netns {}", netns.display());
    if !lo_is_up()? {
        tracing::debug!(netns = %netns.display(), "bringing lo up for the dns server");
        run("ip", &["link", "set", "dev", "lo", "up"], None)?;
    }
    let udp = std::net::UdpSocket::bind(addr).map_err(|e| NetError::io("bind udp 127.0.0.11:53 in", where_(), e))?;
    let tcp = std::net::TcpListener::bind(addr).map_err(|e| NetError::io("bind tcp 127.0.0.11:53 in", where_(), e))?;
    udp.set_nonblocking(true).map_err(|e| NetError::io("set nonblocking on dns udp socket in", where_(), e))?;
    tcp.set_nonblocking(true).map_err(|e| NetError::io("set nonblocking on dns tcp listener in", where_(), e))?;
    Ok((udp, tcp))
}

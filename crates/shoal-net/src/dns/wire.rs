//! The DNS message codec (the subset of RFC 1035 / RFC 6891 the embedded server needs).
//!
//! Parsing never trusts the input: every read is bounds-checked, labels longer than 63 bytes and
//! the reserved label types (`0x40`, `0x80`) are refused, names are limited to 255 bytes on the
//! wire, and compression pointers must point strictly backwards and are followed at most
//! [`MAX_POINTERS`] times, so a pointer loop is an error, never a hang. Every failure is a
//! [`NetError::DnsMessage`] naming the byte offset.
//!
//! Building: [`build_response`] echoes the question with its original letter case (resolvers
//! that randomise case check it), points every answer's owner name at the question (`0xC00C`),
//! and drops answers that do not fit the transport's limit, setting TC.

use std::net::Ipv4Addr;

use crate::error::NetError;

/// Length of the fixed message header.
pub const HEADER_LEN: usize = 12;
/// Longest label (RFC 1035 2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest name on the wire, length bytes and the root label included.
pub const MAX_NAME_LEN: usize = 255;
/// How many compression pointers one name may follow.
pub const MAX_POINTERS: usize = 64;
/// Largest UDP response to a client that did not advertise EDNS.
pub const PLAIN_UDP_LEN: usize = 512;
/// The UDP payload size we advertise and the most we honour from a client's EDNS OPT.
pub const EDNS_UDP_LEN: u16 = 4096;
/// Largest message over TCP (the 2-byte length prefix).
pub const MAX_TCP_LEN: usize = 65535;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

pub const RCODE_NOERROR: u16 = 0;
pub const RCODE_FORMERR: u16 = 1;
pub const RCODE_SERVFAIL: u16 = 2;
pub const RCODE_NXDOMAIN: u16 = 3;
pub const RCODE_NOTIMP: u16 = 4;
pub const RCODE_REFUSED: u16 = 5;
/// Extended rcode (needs an OPT record): unsupported EDNS version.
pub const RCODE_BADVERS: u16 = 16;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;

fn malformed(offset: usize, reason: &'static str) -> NetError {
    NetError::DnsMessage { offset, reason }
}

fn u16_at(buf: &[u8], pos: usize) -> Result<u16, NetError> {
    match buf.get(pos..pos + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(malformed(pos, "message ends inside a 16-bit field")),
    }
}

fn u32_at(buf: &[u8], pos: usize) -> Result<u32, NetError> {
    match buf.get(pos..pos + 4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(malformed(pos, "message ends inside a 32-bit field")),
    }
}

/// The fixed 12-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    /// QR, opcode, AA, TC, RD, RA, Z, AD, CD and rcode, as on the wire.
    pub flags: u16,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

impl Header {
    /// The header of `buf`, or `None` if it is shorter than 12 bytes.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let h = buf.get(..HEADER_LEN)?;
        let at = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Some(Header { id: at(0), flags: at(2), qdcount: at(4), ancount: at(6), nscount: at(8), arcount: at(10) })
    }

    /// Whether this is a response (QR set).
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_QR != 0
    }

    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }

    /// Whether the answer was truncated (TC).
    pub fn truncated(&self) -> bool {
        self.flags & FLAG_TC != 0
    }

    /// Whether recursion is desired (RD).
    pub fn recursion_desired(&self) -> bool {
        self.flags & FLAG_RD != 0
    }

    pub fn authoritative(&self) -> bool {
        self.flags & FLAG_AA != 0
    }

    pub fn recursion_available(&self) -> bool {
        self.flags & FLAG_RA != 0
    }

    /// The 4-bit header rcode (without an OPT record's extension).
    pub fn rcode(&self) -> u16 {
        self.flags & 0xf
    }

    fn write(&self, out: &mut Vec<u8>) {
        for v in [self.id, self.flags, self.qdcount, self.ancount, self.nscount, self.arcount] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// Flags of a reply to a query with these flags: QR, the query's opcode and RD, RA, `rcode`.
    fn reply_flags(&self, authoritative: bool, rcode: u16) -> u16 {
        let mut f = FLAG_QR | (self.flags & (0x7800 | FLAG_RD)) | FLAG_RA | (rcode & 0xf);
        if authoritative {
            f |= FLAG_AA;
        }
        f
    }
}

/// A domain name as a list of raw labels (original case, root label not included).
pub type Labels = Vec<Vec<u8>>;

/// Reads the (possibly compressed) name starting at `pos`; returns it and the offset just past
/// it in its original place.
pub(crate) fn read_name(buf: &[u8], start: usize) -> Result<(Labels, usize), NetError> {
    let mut labels = Vec::new();
    let mut pos = start;
    let mut end = None;
    let mut wire_len = 1; // the root label
    let mut jumps = 0;
    loop {
        let Some(&len) = buf.get(pos) else {
            return Err(malformed(pos, "message ends inside a name"));
        };
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((labels, end.unwrap_or(pos + 1)));
            }
            0x00 => {
                let l = usize::from(len);
                wire_len += 1 + l;
                if wire_len > MAX_NAME_LEN {
                    return Err(malformed(pos, "name longer than 255 bytes"));
                }
                let Some(label) = buf.get(pos + 1..pos + 1 + l) else {
                    return Err(malformed(pos, "message ends inside a label"));
                };
                labels.push(label.to_vec());
                pos += 1 + l;
            }
            0xc0 => {
                let Some(&low) = buf.get(pos + 1) else {
                    return Err(malformed(pos, "message ends inside a compression pointer"));
                };
                let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                if target >= pos {
                    return Err(malformed(pos, "compression pointer does not point backwards"));
                }
                jumps += 1;
                if jumps > MAX_POINTERS {
                    return Err(malformed(pos, "too many compression pointers (loop)"));
                }
                end.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(malformed(pos, "reserved label type")),
        }
    }
}

/// Appends `labels` uncompressed. The caller guarantees the limits (they come from a parse or
/// from [`encode_name`]).
fn write_labels(labels: &[Vec<u8>], out: &mut Vec<u8>) {
    for l in labels {
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
}

/// Splits a dotted name (trailing dot optional; `""` and `"."` are the root) into labels,
/// checking the RFC 1035 limits.
pub fn encode_name(name: &str) -> Result<Labels, NetError> {
    let invalid = |reason| NetError::InvalidDnsName { name: name.to_string(), reason };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let mut labels = Vec::new();
    let mut wire_len = 1;
    for l in trimmed.split('.') {
        if l.is_empty() {
            return Err(invalid("empty label"));
        }
        if l.len() > MAX_LABEL_LEN {
            return Err(invalid("label longer than 63 bytes"));
        }
        wire_len += 1 + l.len();
        labels.push(l.as_bytes().to_vec());
    }
    if wire_len > MAX_NAME_LEN {
        return Err(invalid("name longer than 255 bytes"));
    }
    Ok(labels)
}

/// Dotted presentation of `labels` for logs (no trailing dot; non-printable bytes escaped).
pub fn display_name(labels: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        for &b in l {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                s.push(char::from(b));
            } else {
                s.push_str(&format!("\\{b:03}"));
            }
        }
    }
    s
}

/// One entry of the question section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Labels in their original case.
    pub labels: Labels,
    pub qtype: u16,
    pub qclass: u16,
}

impl Question {
    /// The name as a [`crate::dns::Resolver`] sees it: lower-case ASCII, dot-separated, no
    /// trailing dot. `None` for the root and for labels with bytes no service name can contain
    /// (dots, spaces, control or non-ASCII bytes): those are never ours.
    pub fn lookup_name(&self) -> Option<String> {
        if self.labels.is_empty() {
            return None;
        }
        let mut s = String::new();
        for (i, l) in self.labels.iter().enumerate() {
            if i > 0 {
                s.push('.');
            }
            for &b in l {
                if !b.is_ascii_graphic() || b == b'.' {
                    return None;
                }
                s.push(char::from(b.to_ascii_lowercase()));
            }
        }
        Some(s)
    }

    fn write(&self, out: &mut Vec<u8>) {
        write_labels(&self.labels, out);
        out.extend_from_slice(&self.qtype.to_be_bytes());
        out.extend_from_slice(&self.qclass.to_be_bytes());
    }
}

/// A resource record; `data` is the raw RDATA (names inside it are not decompressed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub labels: Labels,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub data: Vec<u8>,
}

impl Record {
    /// The address of an `A` record with 4 bytes of data.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        match (self.rtype, self.data.as_slice()) {
            (TYPE_A, [a, b, c, d]) => Some(Ipv4Addr::new(*a, *b, *c, *d)),
            _ => None,
        }
    }
}

/// A whole parsed message. Bytes after the last counted record are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

fn read_record(buf: &[u8], pos: usize) -> Result<(Record, usize), NetError> {
    let (labels, p) = read_name(buf, pos)?;
    let rtype = u16_at(buf, p)?;
    let class = u16_at(buf, p + 2)?;
    let ttl = u32_at(buf, p + 4)?;
    let rdlen = usize::from(u16_at(buf, p + 8)?);
    let start = p + 10;
    let Some(data) = buf.get(start..start + rdlen) else {
        return Err(malformed(start, "record data runs past the end of the message"));
    };
    Ok((Record { labels, rtype, class, ttl, data: data.to_vec() }, start + rdlen))
}

/// Parses the header and the question section only; returns them and the offset after the
/// questions. Enough to match a (possibly truncated) response to its query.
pub fn parse_head(buf: &[u8]) -> Result<(Header, Vec<Question>, usize), NetError> {
    let header = Header::parse(buf).ok_or_else(|| malformed(buf.len(), "message shorter than the 12-byte header"))?;
    let mut pos = HEADER_LEN;
    // No preallocation from the counts: they come from the wire. Every entry consumes at least
    // 5 bytes, so the loops are bounded by the message length.
    let mut questions = Vec::new();
    for _ in 0..header.qdcount {
        let (labels, p) = read_name(buf, pos)?;
        let qtype = u16_at(buf, p)?;
        let qclass = u16_at(buf, p + 2)?;
        questions.push(Question { labels, qtype, qclass });
        pos = p + 4;
    }
    Ok((header, questions, pos))
}

/// Parses a whole message (query or response).
pub fn parse_message(buf: &[u8]) -> Result<Message, NetError> {
    let (header, questions, mut pos) = parse_head(buf)?;
    let mut sections: [Vec<Record>; 3] = Default::default();
    for (section, count) in sections.iter_mut().zip([header.ancount, header.nscount, header.arcount]) {
        for _ in 0..count {
            let (rec, p) = read_record(buf, pos)?;
            section.push(rec);
            pos = p;
        }
    }
    let [answers, authority, additional] = sections;
    Ok(Message { header, questions, answers, authority, additional })
}

/// What a client's OPT record asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_len: u16,
    pub version: u8,
}

/// A query the server can act on: one question, QR clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub header: Header,
    pub question: Question,
    pub edns: Option<Edns>,
}

impl Query {
    /// The largest UDP response this client accepts: 512, or its EDNS size (at most
    /// [`EDNS_UDP_LEN`]).
    pub fn max_udp_len(&self) -> usize {
        match self.edns {
            Some(e) => usize::from(e.udp_len.clamp(PLAIN_UDP_LEN as u16, EDNS_UDP_LEN)),
            None => PLAIN_UDP_LEN,
        }
    }
}

/// Parses a query: a message with QR clear, exactly one question, and at most one OPT record
/// (owned by the root) in the additional section.
pub fn parse_query(buf: &[u8]) -> Result<Query, NetError> {
    let msg = parse_message(buf)?;
    if msg.header.is_response() {
        return Err(malformed(2, "message is a response, not a query"));
    }
    if msg.header.qdcount != 1 {
        return Err(malformed(4, "expected exactly one question"));
    }
    let mut edns = None;
    for rec in msg.additional.iter().filter(|r| r.rtype == TYPE_OPT) {
        if edns.is_some() {
            return Err(malformed(HEADER_LEN, "more than one opt record"));
        }
        if !rec.labels.is_empty() {
            return Err(malformed(HEADER_LEN, "opt record not owned by the root"));
        }
        edns = Some(Edns { udp_len: rec.class, version: (rec.ttl >> 16) as u8 });
    }
    let question =
        msg.questions.into_iter().next().ok_or_else(|| malformed(HEADER_LEN, "expected exactly one question"))?;
    Ok(Query { header: msg.header, question, edns })
}

/// A query for `name` (RD set, no EDNS).
pub fn build_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, NetError> {
    let labels = encode_name(name)?;
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    Header { id, flags: FLAG_RD, qdcount: 1, ancount: 0, nscount: 0, arcount: 0 }.write(&mut out);
    Question { labels, qtype, qclass: CLASS_IN }.write(&mut out);
    Ok(out)
}

const ANSWER_A_LEN: usize = 16;
const OPT_LEN: usize = 11;

/// A response to `query`: the question echoed, one `A` record per address (owner name = pointer
/// to the question, `ttl`), RA set, AA set for NOERROR, and an OPT record if the query had one. `rcode` may be
/// an extended rcode (> 15) only if the query had EDNS. Answers that would make the message
/// longer than `max_len` are left out and TC is set.
pub fn build_response(query: &Query, rcode: u16, addrs: &[Ipv4Addr], ttl: u32, max_len: usize) -> Vec<u8> {
    let mut question = Vec::with_capacity(MAX_NAME_LEN + 4);
    query.question.write(&mut question);
    let opt_len = if query.edns.is_some() { OPT_LEN } else { 0 };
    let fixed = HEADER_LEN + question.len() + opt_len;
    let room = max_len.saturating_sub(fixed) / ANSWER_A_LEN;
    let n = addrs.len().min(room).min(usize::from(u16::MAX));
    let mut flags = query.header.reply_flags(rcode == RCODE_NOERROR, rcode);
    if n < addrs.len() {
        flags |= FLAG_TC;
    }
    let header = Header {
        id: query.header.id,
        flags,
        qdcount: 1,
        ancount: n as u16,
        nscount: 0,
        arcount: u16::from(query.edns.is_some()),
    };
    let mut out = Vec::with_capacity(fixed + n * ANSWER_A_LEN);
    header.write(&mut out);
    out.extend_from_slice(&question);
    for ip in &addrs[..n] {
        out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    if query.edns.is_some() {
        out.push(0); // root owner
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&EDNS_UDP_LEN.to_be_bytes());
        // TTL field: extended rcode (upper 8 of 12 bits), version 0, no flags.
        out.extend_from_slice(&(u32::from(rcode >> 4) << 24).to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
    }
    out
}

/// A bare error response (no question echoed) to a query whose header parsed but whose body did
/// not, or which we do not implement.
pub fn build_error(header: &Header, rcode: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    Header { id: header.id, flags: header.reply_flags(false, rcode), qdcount: 0, ancount: 0, nscount: 0, arcount: 0 }
        .write(&mut out);
    out
}

//! A small synchronous rtnetlink client for the hot path of container networking (veth pairs,
//! addresses, routes): one socket per namespace and call, no `ip` process per step. Each
//! process spawn cost ~2 ms of CPU and its own scheduling; starting 30 task containers at once
//! spent more time in `ip` than in the kernel work it asked for.
//!
//! A socket belongs to the network namespace of the thread that opened it, so callers open it
//! on a thread inside the namespace they mean (see [`crate::ops::in_netns`]).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::NetError;

/// The veth pair [`Rtnl::add_veth`] creates.
#[derive(Debug, Clone)]
pub(crate) struct VethPair<'a> {
    pub host_name: &'a str,
    pub bridge_index: u32,
    pub mtu: u32,
    pub peer_name: &'a str,
    pub peer_mac: [u8; 6],
    /// The namespace the peer is created in.
    pub peer_netns: BorrowedFd<'a>,
}

pub(crate) struct Rtnl {
    socket: Socket,
    seq: u32,
}

fn nl_err(what: impl std::fmt::Display, e: std::io::Error) -> NetError {
    NetError::io("netlink", what, e)
}

impl Rtnl {
    /// A route socket in the calling thread's network namespace.
    pub(crate) fn open() -> Result<Rtnl, NetError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| nl_err("open route socket", e))?;
        socket.bind_auto().map_err(|e| nl_err("bind route socket", e))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(|e| nl_err("connect route socket", e))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement (or answer, for gets). `what` names
    /// the operation in errors.
    fn call(&mut self, what: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| nl_err(what, e))?;
        let mut answers = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(|e| nl_err(what, e))?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| NetError::Internal(format!("netlink answer to {what}: {e}")))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(NetError::Internal(format!("netlink answer to {what}: empty message")));
                }
                offset += len;
                if msg.header.sequence_number != self.seq {
                    continue; // a late answer to an earlier request
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(answers),
                        Some(_) => return Err(NetError::io("netlink", what, e.to_io())),
                    },
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    _ => {}
                }
            }
        }
    }

    /// The index of link `name`; `Ok(None)` when there is none.
    pub(crate) fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.call(&format!("get link {name}"), RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(answers) => Ok(answers.into_iter().find_map(|a| match a {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(NetError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn existing_link(&mut self, name: &str) -> Result<u32, NetError> {
        self.link_index(name)?.ok_or_else(|| {
            NetError::io("netlink", format!("find link {name}"), std::io::Error::from_raw_os_error(libc::ENODEV))
        })
    }

    /// Creates a veth pair: the host end up, in the bridge, in hairpin mode (so a container
    /// reaches its own published port through a host address); the peer, with its MAC and MTU,
    /// created directly inside `peer_netns` (left down: the container side configures it).
    pub(crate) fn add_veth(&mut self, pair: &VethPair<'_>) -> Result<(), NetError> {
        let mut peer = LinkMessage::default();
        peer.attributes = vec![
            LinkAttribute::IfName(pair.peer_name.to_string()),
            LinkAttribute::Mtu(pair.mtu),
            LinkAttribute::Address(pair.peer_mac.to_vec()),
            LinkAttribute::NetNsFd(pair.peer_netns.as_raw_fd()),
        ];
        let mut host = LinkMessage::default();
        host.header.flags = LinkFlags::Up;
        host.header.change_mask = LinkFlags::Up;
        host.attributes = vec![
            LinkAttribute::IfName(pair.host_name.to_string()),
            LinkAttribute::Mtu(pair.mtu),
            LinkAttribute::Controller(pair.bridge_index),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth), LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer)))]),
        ];
        let what = format!("create veth {}", pair.host_name);
        self.call(&what, RouteNetlinkMessage::NewLink(host), NLM_F_CREATE | NLM_F_EXCL)?;
        let index = self.existing_link(pair.host_name)?;
        let mut port = LinkMessage::default();
        port.header.index = index;
        port.attributes = vec![LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(true)])),
        ])];
        self.call(&format!("set hairpin on {}", pair.host_name), RouteNetlinkMessage::NewLink(port), 0)?;
        Ok(())
    }

    /// Deletes link `name`; a missing link is not an error.
    pub(crate) fn delete_link(&mut self, name: &str) -> Result<(), NetError> {
        let Some(index) = self.link_index(name)? else { return Ok(()) };
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.call(&format!("delete link {name}"), RouteNetlinkMessage::DelLink(msg), 0) {
            Err(NetError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    pub(crate) fn set_up(&mut self, index: u32) -> Result<(), NetError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.call(&format!("set link {index} up"), RouteNetlinkMessage::NewLink(msg), 0).map(|_| ())
    }

    /// `ip addr add ip/prefix dev <index>`.
    pub(crate) fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<(), NetError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes = vec![AddressAttribute::Local(ip.into()), AddressAttribute::Address(ip.into())];
        self.call(&format!("add address {ip}/{prefix_len}"), RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(|_| ())
    }

    /// `ip route add default via gateway dev <index>`.
    pub(crate) fn add_default_route(&mut self, gateway: Ipv4Addr, index: u32) -> Result<(), NetError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gateway)), RouteAttribute::Oif(index)];
        self.call(&format!("add default route via {gateway}"), RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(|_| ())
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub(crate) fn parse_mac(mac: &str) -> Result<[u8; 6], NetError> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in out.iter_mut() {
        let part = parts.next().ok_or_else(|| NetError::Internal(format!("bad mac address {mac:?}")))?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| NetError::Internal(format!("bad mac address {mac:?}")))?;
    }
    if parts.next().is_some() {
        return Err(NetError::Internal(format!("bad mac address {mac:?}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("02:42:ac:11:00:02").unwrap(), [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        assert!(parse_mac("02:42:ac:11:00").is_err());
        assert!(parse_mac("02:42:ac:11:00:02:03").is_err());
        assert!(parse_mac("zz:42:ac:11:00:02").is_err());
    }
}

//! Unit tests of the mesh reconcile against a recording fake (no root needed), and of the
//! rendered nft text.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::*;
use crate::ErrorKind;

#[derive(Default)]
struct Log {
    calls: Vec<String>,
    scripts: Vec<String>,
    /// Returned by list_overlays.
    existing: Vec<u32>,
    /// Returned by read_forwarding.
    kernel_fwd: Forwarding,
    /// Bridges that exist in the fake kernel (ensure reports "created" for the others).
    devices: std::collections::BTreeSet<String>,
    /// Fail this many update_forwarding calls.
    fail_fwd: usize,
    fail_nft: bool,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Log>>);

impl Fake {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap().calls)
    }
    fn push(&self, s: String) {
        self.0.lock().unwrap().calls.push(s);
    }
}

fn fmt_changes(c: &ForwardingChanges) -> String {
    let mut parts = vec![format!("fwd {}/{}", c.bridge, c.vxlan)];
    parts.extend(c.fdb_del.iter().map(|(m, d)| format!("-fdb {m} {d}")));
    parts.extend(c.fdb_add.iter().map(|(m, d)| format!("+fdb {m} {d}")));
    parts.extend(c.neigh_del.iter().map(|i| format!("-neigh {i}")));
    parts.extend(c.neigh_set.iter().map(|(i, m)| format!("+neigh {i} {m}")));
    parts.join(" | ")
}

impl MeshOps for Fake {
    fn list_overlays(&self, prefix: &str) -> Result<Vec<u32>, NetError> {
        self.push(format!("list {prefix}"));
        Ok(self.0.lock().unwrap().existing.clone())
    }
    fn ensure_overlay(&self, s: &OverlaySpec) -> Result<EnsureOutcome, NetError> {
        self.push(format!(
            "ensure {} {} {} local={} net={} host={:?} mtu={} ingress={}",
            s.vni, s.bridge, s.vxlan, s.local, s.subnet, s.host_ip, s.mtu, s.ingress
        ));
        let created = self.0.lock().unwrap().devices.insert(s.bridge.clone());
        Ok(EnsureOutcome { bridge_created: created, vxlan_created: created })
    }
    fn read_forwarding(&self, s: &OverlaySpec) -> Result<Forwarding, NetError> {
        self.push(format!("read {}", s.vni));
        Ok(self.0.lock().unwrap().kernel_fwd.clone())
    }
    fn update_forwarding(&self, c: &ForwardingChanges) -> Result<(), NetError> {
        self.push(fmt_changes(c));
        let mut l = self.0.lock().unwrap();
        if l.fail_fwd > 0 {
            l.fail_fwd -= 1;
            return Err(NetError::Command {
                cmd: "bridge -batch -".into(),
                status: "1".into(),
                stderr: "No such file".into(),
            });
        }
        Ok(())
    }
    fn delete_overlay(&self, bridge: &str, vxlan: &str) -> Result<(), NetError> {
        self.push(format!("delete {bridge} {vxlan}"));
        self.0.lock().unwrap().devices.remove(bridge);
        Ok(())
    }
    fn apply_ruleset(&self, script: &str) -> Result<(), NetError> {
        let mut l = self.0.lock().unwrap();
        let kind = if script.contains('{') { "replace" } else { "delete" };
        l.calls.push(format!("nft {kind}"));
        if l.fail_nft {
            return Err(NetError::Command { cmd: "nft -f -".into(), status: "1".into(), stderr: "boom".into() });
        }
        l.scripts.push(script.to_string());
        Ok(())
    }
    fn attach(&self, a: &AttachSpec) -> Result<(), NetError> {
        self.push(format!(
            "attach {} {} {} {}/{} {} mtu={} via {}",
            a.netns_path.display(),
            a.ifname,
            a.host_veth,
            a.ip,
            a.prefix_len,
            a.mac,
            a.mtu,
            a.bridge
        ));
        Ok(())
    }
    fn detach(&self, netns_path: &Path, ifname: &str, host_veth: Option<&str>) -> Result<(), NetError> {
        self.push(format!("detach {} {ifname} {host_veth:?}", netns_path.display()));
        Ok(())
    }
    fn teardown(&self, prefix: &str, table: &str) -> Result<(), NetError> {
        self.push(format!("teardown {prefix} {table}"));
        self.0.lock().unwrap().devices.clear();
        Ok(())
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn mesh() -> (Mesh, Fake) {
    let f = Fake::default();
    let m = Mesh::with_ops(MeshConfig::default(), Box::new(f.clone())).unwrap();
    assert_eq!(f.take(), vec!["list shov"]);
    (m, f)
}

/// Node 10.98.0.1: ingress overlay 4096 (host 10.0.0.2) with peer 10.98.0.2 (host 10.0.0.3,
/// task 10.0.0.11), and overlay 4097 without a host address, peer 10.98.0.3 (task 10.1.0.5).
fn state() -> MeshState {
    MeshState {
        underlay: ip("10.98.0.1"),
        overlays: vec![
            OverlayNet {
                vni: 4096,
                subnet: "10.0.0.0/24".parse().unwrap(),
                host_ip: Some(ip("10.0.0.2")),
                peers: vec![MeshPeer { underlay: ip("10.98.0.2"), endpoints: vec![ip("10.0.0.3"), ip("10.0.0.11")] }],
            },
            OverlayNet {
                vni: 4097,
                subnet: "10.1.0.0/24".parse().unwrap(),
                host_ip: None,
                peers: vec![MeshPeer { underlay: ip("10.98.0.3"), endpoints: vec![ip("10.1.0.5")] }],
            },
        ],
        ingress_vni: Some(4096),
        ingress: vec![IngressPort {
            proto: Proto::Tcp,
            published: 8001,
            target: 80,
            backends: vec![ip("10.0.0.10"), ip("10.0.0.11")],
            local: vec![],
        }],
    }
}

#[test]
fn is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Mesh>();
}

#[test]
fn first_apply_programs_everything_then_nothing() {
    let (m, f) = mesh();
    m.apply(&state()).unwrap();
    assert_eq!(
        f.take(),
        vec![
            "ensure 4096 shov4096 shovx4096 local=10.98.0.1 net=10.0.0.0/24 host=Some(10.0.0.2) mtu=1450 ingress=true",
            "fwd shov4096/shovx4096 | +fdb 00:00:00:00:00:00 10.98.0.2 | +fdb 02:42:0a:00:00:03 10.98.0.2 | +fdb 02:42:0a:00:00:0b 10.98.0.2 \
             | +neigh 10.0.0.3 02:42:0a:00:00:03 | +neigh 10.0.0.11 02:42:0a:00:00:0b",
            "ensure 4097 shov4097 shovx4097 local=10.98.0.1 net=10.1.0.0/24 host=None mtu=1450 ingress=false",
            "fwd shov4097/shovx4097 | +fdb 00:00:00:00:00:00 10.98.0.3 | +fdb 02:42:0a:01:00:05 10.98.0.3",
            "nft replace",
        ]
    );
    // same state: no kernel work at all
    m.apply(&state()).unwrap();
    m.apply(&state()).unwrap();
    assert_eq!(f.take(), Vec::<String>::new());
}

#[test]
fn reconcile_emits_only_the_diff() {
    let (m, f) = mesh();
    m.apply(&state()).unwrap();
    f.take();
    // 4096: task 10.0.0.11 moves to a new peer 10.98.0.4, a task 10.0.0.12 appears on 10.98.0.2
    let mut st = state();
    st.overlays[0].peers = vec![
        MeshPeer { underlay: ip("10.98.0.2"), endpoints: vec![ip("10.0.0.3"), ip("10.0.0.12")] },
        MeshPeer { underlay: ip("10.98.0.4"), endpoints: vec![ip("10.0.0.11")] },
    ];
    m.apply(&st).unwrap();
    assert_eq!(
        f.take(),
        vec![
            "fwd shov4096/shovx4096 | -fdb 02:42:0a:00:00:0b 10.98.0.2 | +fdb 00:00:00:00:00:00 10.98.0.4 \
             | +fdb 02:42:0a:00:00:0b 10.98.0.4 | +fdb 02:42:0a:00:00:0c 10.98.0.2 | +neigh 10.0.0.12 02:42:0a:00:00:0c"
        ]
    );
    // only the backends change: only the table
    st.ingress[0].backends = vec![ip("10.0.0.11")];
    m.apply(&st).unwrap();
    assert_eq!(f.take(), vec!["nft replace"]);
    let last = f.0.lock().unwrap().scripts.last().cloned().unwrap();
    assert!(last.contains("    tcp dport 8001 dnat to 10.0.0.11:80\n"), "{last}");
    // peer 10.98.0.4 leaves
    st.overlays[0].peers.truncate(1);
    m.apply(&st).unwrap();
    assert_eq!(
        f.take(),
        vec!["fwd shov4096/shovx4096 | -fdb 00:00:00:00:00:00 10.98.0.4 | -fdb 02:42:0a:00:00:0b 10.98.0.4 | -neigh 10.0.0.11"]
    );
    // the host address goes away: bridge re-ensured, neighbours removed, ingress off
    st.overlays[0].host_ip = None;
    m.apply(&st).unwrap();
    assert_eq!(
        f.take(),
        vec![
            "ensure 4096 shov4096 shovx4096 local=10.98.0.1 net=10.0.0.0/24 host=None mtu=1450 ingress=false",
            "fwd shov4096/shovx4096 | -neigh 10.0.0.3 | -neigh 10.0.0.12",
            "nft replace",
        ]
    );
    let last = f.0.lock().unwrap().scripts.last().cloned().unwrap();
    assert!(!last.contains("nat") && last.contains("iifname \"shov4096\" accept"), "{last}");
}

#[test]
fn removing_overlays_removes_devices_veths_and_table() {
    let (m, f) = mesh();
    m.apply(&state()).unwrap();
    let ns = PathBuf::from("/run/netns/c1");
    m.attach(&ns, 4097, ip("10.1.0.7"), "eth2").unwrap();
    m.attach(&ns, 4096, ip("10.0.0.10"), "eth1").unwrap();
    f.take();
    let mut st = state();
    st.overlays.remove(1);
    m.apply(&st).unwrap();
    let v = names::veth("shov", 4097, ip("10.1.0.7"));
    assert_eq!(
        f.take(),
        vec![
            format!("detach /run/netns/c1 eth2 Some({v:?})"),
            "delete shov4097 shovx4097".into(),
            "nft replace".into()
        ]
    );
    assert_eq!(m.attach(&ns, 4097, ip("10.1.0.8"), "eth3").unwrap_err().kind(), ErrorKind::InvalidInput);
    // nothing left: the table goes too
    st.overlays.clear();
    m.apply(&st).unwrap();
    let v = names::veth("shov", 4096, ip("10.0.0.10"));
    assert_eq!(
        f.take(),
        vec![format!("detach /run/netns/c1 eth1 Some({v:?})"), "delete shov4096 shovx4096".into(), "nft delete".into()]
    );
    assert_eq!(f.0.lock().unwrap().scripts.last().unwrap(), "table ip shoal_mesh\ndelete table ip shoal_mesh\n");
    m.apply(&st).unwrap();
    assert_eq!(f.take(), Vec::<String>::new());
    // teardown
    m.teardown().unwrap();
    assert_eq!(f.take(), vec!["teardown shov shoal_mesh"]);
}

#[test]
fn first_apply_of_empty_state_removes_a_leftover_table() {
    let (m, f) = mesh();
    let st = MeshState { underlay: ip("10.98.0.1"), overlays: vec![], ingress_vni: None, ingress: vec![] };
    m.apply(&st).unwrap();
    assert_eq!(f.take(), vec!["nft delete"]);
    m.apply(&st).unwrap();
    assert_eq!(f.take(), Vec::<String>::new());
}

#[test]
fn adopts_existing_devices() {
    let f = Fake::default();
    {
        let mut l = f.0.lock().unwrap();
        l.existing = vec![4096, 5000];
        l.devices = ["shov4096".to_string(), "shov5000".to_string()].into();
        // what a previous run left: a stale peer 10.98.0.9, a still wanted flood entry
        l.kernel_fwd.fdb.insert((ZERO_MAC.into(), ip("10.98.0.2")));
        l.kernel_fwd.fdb.insert((ZERO_MAC.into(), ip("10.98.0.9")));
        l.kernel_fwd.fdb.insert(("02:42:0a:00:00:0b".into(), ip("10.98.0.2")));
        l.kernel_fwd.neigh.insert(ip("10.0.0.9"), "02:42:0a:00:00:09".into());
    }
    let m = Mesh::with_ops(MeshConfig::default(), Box::new(f.clone())).unwrap();
    let mut st = state();
    st.overlays.truncate(1);
    m.apply(&st).unwrap();
    assert_eq!(
        f.take(),
        vec![
            "list shov",
            "delete shov5000 shovx5000",
            "ensure 4096 shov4096 shovx4096 local=10.98.0.1 net=10.0.0.0/24 host=Some(10.0.0.2) mtu=1450 ingress=true",
            "read 4096",
            "fwd shov4096/shovx4096 | -fdb 00:00:00:00:00:00 10.98.0.9 | +fdb 02:42:0a:00:00:03 10.98.0.2 \
             | -neigh 10.0.0.9 | +neigh 10.0.0.3 02:42:0a:00:00:03 | +neigh 10.0.0.11 02:42:0a:00:00:0b",
            "nft replace",
        ]
    );
}

#[test]
fn failed_forwarding_update_rereads_and_retries() {
    let (m, f) = mesh();
    let mut st = state();
    st.overlays.truncate(1);
    m.apply(&st).unwrap();
    f.take();
    st.overlays[0].peers[0].endpoints.push(ip("10.0.0.12"));
    // one failure: re-read (the fake kernel is empty) and retry with the full diff
    f.0.lock().unwrap().fail_fwd = 1;
    m.apply(&st).unwrap();
    let calls = f.take();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[1], "read 4096");
    assert!(calls[2].contains("+fdb 00:00:00:00:00:00 10.98.0.2"), "{calls:?}");
    // two failures: error; the next apply re-reads first
    st.overlays[0].peers[0].endpoints.push(ip("10.0.0.13"));
    f.0.lock().unwrap().fail_fwd = 2;
    let e = m.apply(&st).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal);
    f.take();
    m.apply(&st).unwrap();
    let calls = f.take();
    assert_eq!(calls[0], "read 4096");
    assert_eq!(calls.len(), 2, "{calls:?}");
}

#[test]
fn failed_nft_is_retried_next_time() {
    let (m, f) = mesh();
    f.0.lock().unwrap().fail_nft = true;
    assert!(m.apply(&state()).is_err());
    f.0.lock().unwrap().fail_nft = false;
    f.take();
    m.apply(&state()).unwrap();
    assert_eq!(f.take(), vec!["nft replace"]);
}

#[test]
fn attach_and_detach() {
    let (m, f) = mesh();
    let ns = Path::new("/run/netns/c1");
    let e = m.attach(ns, 4096, ip("10.0.0.10"), "eth1").unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(
        e.to_string(),
        "overlay vni 4096 is not known to this node's mesh (apply a state that contains it first)"
    );
    m.apply(&state()).unwrap();
    f.take();
    m.attach(ns, 4096, ip("10.0.0.10"), "eth1").unwrap();
    let v = names::veth("shov", 4096, ip("10.0.0.10"));
    assert_eq!(
        f.take(),
        vec![format!("attach /run/netns/c1 eth1 {v} 10.0.0.10/24 02:42:0a:00:00:0a mtu=1450 via shov4096")]
    );
    assert_eq!(m.attach(ns, 4096, ip("10.0.0.20"), "eth1").unwrap_err().kind(), ErrorKind::Conflict);
    assert_eq!(m.attach(ns, 4096, ip("10.0.0.2"), "eth2").unwrap_err().kind(), ErrorKind::Conflict);
    for (ipa, ifn, path) in [
        ("10.0.1.5", "eth2", "/run/netns/c1"),
        ("10.0.0.255", "eth2", "/run/netns/c1"),
        ("10.0.0.21", "lo", "/run/netns/c1"),
        ("10.0.0.21", "eth 2", "/run/netns/c1"),
        ("10.0.0.21", "eth2", "relative/ns"),
    ] {
        assert_eq!(
            m.attach(Path::new(path), 4096, ip(ipa), ifn).unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{ipa} {ifn}"
        );
    }
    assert_eq!(f.take(), Vec::<String>::new());
    m.detach(ns, "eth1").unwrap();
    m.detach(ns, "eth9").unwrap();
    assert_eq!(
        f.take(),
        vec![format!("detach /run/netns/c1 eth1 Some({v:?})"), "detach /run/netns/c1 eth9 None".into()]
    );
}

#[test]
fn invalid_states_are_rejected_before_any_side_effect() {
    let (m, f) = mesh();
    let mut cases: Vec<(MeshState, &str)> = Vec::new();
    let mut s = state();
    s.overlays[1].vni = 4096;
    cases.push((s, "invalid mesh state overlay vni 4096: listed twice"));
    let mut s = state();
    s.overlays[0].vni = 0;
    cases.push((s, "invalid mesh state overlay vni 0: vni must be 1-16777215"));
    let mut s = state();
    s.overlays[0].host_ip = Some(ip("10.9.0.2"));
    cases.push((s, "invalid mesh state overlay 4096 host_ip: 10.9.0.2 is not in subnet 10.0.0.0/24"));
    let mut s = state();
    s.overlays[0].peers[0].underlay = ip("10.98.0.1");
    cases.push((s, "invalid mesh state overlay 4096 peer 10.98.0.1: is this node's own underlay address"));
    let mut s = state();
    s.overlays[0].peers.push(MeshPeer { underlay: ip("10.98.0.7"), endpoints: vec![ip("10.0.0.11")] });
    cases.push((s, "invalid mesh state overlay 4096 endpoint 10.0.0.11: claimed by peers 10.98.0.2 and 10.98.0.7"));
    let mut s = state();
    s.overlays[0].peers[0].endpoints.push(ip("10.0.0.2"));
    cases.push((s, "invalid mesh state overlay 4096 peer 10.98.0.2 endpoint 10.0.0.2: is this node's own host_ip"));
    let mut s = state();
    s.ingress.push(IngressPort { proto: Proto::Udp, published: 4789, target: 53, backends: vec![], local: vec![] });
    cases.push((s, "invalid mesh state ingress port 4789/udp: udp 4789 carries the overlays (vxlan)"));
    let mut s = state();
    s.ingress.push(s.ingress[0].clone());
    cases.push((s, "invalid mesh state ingress port 8001/tcp: listed twice"));
    let mut s = state();
    s.ingress[0].backends.push(ip("10.1.0.5"));
    cases.push((s, "invalid mesh state ingress port 8001/tcp backend: 10.1.0.5 is not in subnet 10.0.0.0/24"));
    let mut s = state();
    s.underlay = ip("0.0.0.0");
    cases.push((s, "invalid mesh state underlay: 0.0.0.0 is not a usable unicast address"));
    for (s, msg) in cases {
        let e = m.apply(&s).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), msg);
    }
    assert_eq!(f.take(), Vec::<String>::new());
}

#[test]
fn ingress_needs_a_host_address() {
    let (m, f) = mesh();
    let mut st = state();
    st.overlays[0].host_ip = None;
    m.apply(&st).unwrap();
    let calls = f.take();
    assert!(calls[0].ends_with("ingress=false"), "{calls:?}");
    let script = f.0.lock().unwrap().scripts[0].clone();
    assert!(!script.contains("chain ingress"), "{script}");
}

#[test]
fn config_validation() {
    let bad = [
        MeshConfig { prefix: "".into(), ..Default::default() },
        MeshConfig { prefix: "toolong".into(), ..Default::default() },
        MeshConfig { prefix: "Shov".into(), ..Default::default() },
        MeshConfig { prefix: "1ov".into(), ..Default::default() },
        MeshConfig { table: "x;flush ruleset".into(), ..Default::default() },
        MeshConfig { mtu: 100, ..Default::default() },
    ];
    for c in bad {
        let e = Mesh::with_ops(c.clone(), Box::new(Fake::default())).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{c:?}");
    }
}

fn render(ports: &[IngressPort]) -> String {
    render_mesh_ruleset(&MeshRuleInput {
        table: "shoal_mesh",
        bridges: &["shov4096".to_string(), "shov4097".to_string()],
        ingress_bridge: Some("shov4096"),
        ports,
    })
}

const HEAD: &str = "table ip shoal_mesh\ndelete table ip shoal_mesh\ntable ip shoal_mesh {\n";
const TAIL: &str = r#"  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    fib daddr type local jump ingress
  }
  chain output {
    type nat hook output priority -100; policy accept;
    fib daddr type local jump ingress
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    oifname "shov4096" ct status dnat masquerade
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname "shov4096" accept
    oifname "shov4096" accept
    iifname "shov4097" accept
    oifname "shov4097" accept
  }
}
"#;

#[test]
fn render_zero_one_three_backends_tcp_and_udp() {
    let b3 = vec![ip("10.0.0.10"), ip("10.0.0.11"), ip("10.0.0.12")];
    let ports = vec![
        IngressPort { proto: Proto::Udp, published: 5353, target: 53, backends: b3.clone(), local: vec![] },
        IngressPort { proto: Proto::Tcp, published: 8003, target: 80, backends: b3, local: vec![] },
        IngressPort { proto: Proto::Tcp, published: 8001, target: 80, backends: vec![], local: vec![] },
        IngressPort { proto: Proto::Udp, published: 5300, target: 53, backends: vec![], local: vec![] },
        IngressPort { proto: Proto::Udp, published: 5301, target: 53, backends: vec![ip("10.0.0.10")], local: vec![] },
        IngressPort { proto: Proto::Tcp, published: 8002, target: 8080, backends: vec![ip("10.0.0.11")], local: vec![] },
    ];
    let want = format!(
        "{HEAD}  chain ingress {{
    tcp dport 8001 reject with tcp reset
    tcp dport 8002 dnat to 10.0.0.11:8080
    tcp dport 8003 dnat to numgen inc mod 3 map {{ 0 : 10.0.0.10, 1 : 10.0.0.11, 2 : 10.0.0.12 }} : 80
    udp dport 5300 reject
    udp dport 5301 dnat to 10.0.0.10:53
    udp dport 5353 dnat to numgen inc mod 3 map {{ 0 : 10.0.0.10, 1 : 10.0.0.11, 2 : 10.0.0.12 }} : 53
  }}
{TAIL}"
    );
    assert_eq!(render(&ports), want);
}

#[test]
fn render_prefers_local_tasks_without_source_nat() {
    let p = IngressPort {
        proto: Proto::Tcp,
        published: 8001,
        target: 80,
        backends: vec![ip("10.0.0.10"), ip("10.0.0.11")],
        local: vec![ip("172.17.0.2"), ip("172.17.0.3")],
    };
    let text = render(std::slice::from_ref(&p));
    assert!(text.contains("tcp dport 8001 dnat to numgen inc mod 2 map { 0 : 172.17.0.2, 1 : 172.17.0.3 } : 80"), "{text}");
    assert!(!text.contains("10.0.0.10"), "remote tasks are only the fallback: {text}");
}

#[test]
fn render_without_ports_and_without_ingress() {
    assert_eq!(render(&[]), format!("{HEAD}  chain ingress {{\n  }}\n{TAIL}"));
    let got = render_mesh_ruleset(&MeshRuleInput {
        table: "t",
        bridges: &["shov7".to_string()],
        ingress_bridge: None,
        ports: &[IngressPort { proto: Proto::Tcp, published: 1, target: 1, backends: vec![], local: vec![] }],
    });
    assert_eq!(
        got,
        "table ip t\ndelete table ip t\ntable ip t {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n\
         \x20   iifname \"shov7\" accept\n    oifname \"shov7\" accept\n  }\n}\n"
    );
    assert_eq!(render_mesh_delete("t"), "table ip t\ndelete table ip t\n");
}

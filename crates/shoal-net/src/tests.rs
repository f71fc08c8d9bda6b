//! Unit tests of BridgeNetwork against a fake NetOps (no root needed).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::*;

#[derive(Default)]
struct Log {
    calls: Vec<String>,
    scripts: Vec<String>,
    fail_nft: bool,
    veth_taken_once: bool,
    bound: Vec<u16>,
}

#[derive(Clone, Default)]
struct FakeOps(Arc<Mutex<Log>>);

impl NetOps for FakeOps {
    fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<(), NetError> {
        self.0.lock().unwrap().calls.push(format!("bridge {} {}/{}", spec.bridge, spec.gateway, spec.prefix_len));
        Ok(())
    }
    fn apply_ruleset(&self, script: &str) -> Result<(), NetError> {
        let mut l = self.0.lock().unwrap();
        if l.fail_nft {
            return Err(NetError::Command { cmd: "nft -f -".into(), status: "exit status: 1".into(), stderr: "boom".into() });
        }
        l.scripts.push(script.to_string());
        Ok(())
    }
    fn port_in_use(&self, _proto: Proto, port: u16) -> bool {
        self.0.lock().unwrap().bound.contains(&port)
    }
    fn create_endpoint(&self, spec: &EndpointSpec) -> Result<(), NetError> {
        let mut l = self.0.lock().unwrap();
        if l.veth_taken_once {
            l.veth_taken_once = false;
            return Err(NetError::Command { cmd: "ip link add".into(), status: "2".into(), stderr: "RTNETLINK answers: File exists".into() });
        }
        l.calls.push(format!("create {} {} {} {}", spec.netns_path.display(), spec.ip, spec.mac, spec.host_veth));
        Ok(())
    }
    fn remove_endpoint(&self, netns_path: &Path, host_veth: Option<&str>) -> Result<(), NetError> {
        self.0.lock().unwrap().calls.push(format!("remove {} {:?}", netns_path.display(), host_veth));
        Ok(())
    }
    fn remove_netns_file(&self, netns_path: &Path) -> Result<(), NetError> {
        self.0.lock().unwrap().calls.push(format!("rmfile {}", netns_path.display()));
        Ok(())
    }
    fn teardown(&self, _spec: &BridgeSpec, table: &str) -> Result<(), NetError> {
        self.0.lock().unwrap().calls.push(format!("teardown {table}"));
        Ok(())
    }
}

fn cfg() -> BridgeConfig {
    BridgeConfig { netns_dir: PathBuf::from("/nonexistent-shoal-test/netns"), ..Default::default() }
}

fn net() -> (BridgeNetwork, FakeOps) {
    let ops = FakeOps::default();
    (BridgeNetwork::with_ops(cfg(), Box::new(ops.clone())).unwrap(), ops)
}

fn tcp(host_port: Option<u16>, container_port: u16) -> PortSpec {
    PortSpec { host_ip: None, host_port, container_port, proto: Proto::Tcp }
}

#[test]
fn is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<BridgeNetwork>();
}

#[test]
fn setup_creates_bridge_and_loads_table() {
    let (_n, ops) = net();
    let l = ops.0.lock().unwrap();
    assert_eq!(l.calls, vec!["bridge shoal0 172.17.0.1/16".to_string()]);
    assert_eq!(l.scripts.len(), 1);
    assert!(l.scripts[0].starts_with("table ip shoal\ndelete table ip shoal\n"));
}

#[test]
fn config_validation() {
    let bad = [
        BridgeConfig { bridge: "way-too-long-bridge-name".into(), ..cfg() },
        BridgeConfig { bridge: "a b".into(), ..cfg() },
        BridgeConfig { nft_table: "x;flush ruleset".into(), ..cfg() },
        BridgeConfig { mtu: 10, ..cfg() },
        BridgeConfig { netns_dir: "relative".into(), ..cfg() },
        BridgeConfig { gateway: Ipv4Addr::new(10, 0, 0, 1), ..cfg() },
    ];
    for c in bad {
        let e = BridgeNetwork::with_ops(c.clone(), Box::new(FakeOps::default())).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{c:?}: {e}");
    }
}

#[test]
fn endpoint_lifecycle() {
    let (n, ops) = net();
    let ip = n.allocate_ip(None).unwrap();
    assert_eq!(ip, Ipv4Addr::new(172, 17, 0, 2));
    let ep = n.create_endpoint("abc123", ip).unwrap();
    assert_eq!(ep.netns_path, PathBuf::from("/nonexistent-shoal-test/netns/abc123"));
    assert_eq!(ep.mac, "02:42:ac:11:00:02");
    assert_eq!(ep.prefix_len, 16);
    assert_eq!(ep.gateway, Ipv4Addr::new(172, 17, 0, 1));
    assert!(ep.host_veth.starts_with("veth") && ep.host_veth.len() == 11);
    assert!(ep.host_veth[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(n.create_endpoint("abc123", ip).unwrap_err().kind(), ErrorKind::Conflict);
    n.remove_endpoint("abc123").unwrap();
    n.remove_endpoint("abc123").unwrap();
    let l = ops.0.lock().unwrap();
    assert!(l.calls.contains(&format!("remove /nonexistent-shoal-test/netns/abc123 Some({:?})", ep.host_veth)));
    assert!(l.calls.contains(&"remove /nonexistent-shoal-test/netns/abc123 None".to_string()));
}

#[test]
fn endpoint_retries_taken_veth_name_and_rejects_bad_input() {
    let (n, ops) = net();
    ops.0.lock().unwrap().veth_taken_once = true;
    n.create_endpoint("c1", Ipv4Addr::new(172, 17, 0, 5)).unwrap();
    for bad in ["", "..", "a/b", "x y"] {
        assert_eq!(n.create_endpoint(bad, Ipv4Addr::new(172, 17, 0, 6)).unwrap_err().kind(), ErrorKind::InvalidInput);
    }
    for bad_ip in [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(172, 17, 0, 1)] {
        assert_eq!(n.create_endpoint("c2", bad_ip).unwrap_err().kind(), ErrorKind::InvalidInput);
    }
}

#[test]
fn publish_conflict_and_unpublish() {
    let (n, ops) = net();
    let a = Ipv4Addr::new(172, 17, 0, 2);
    let b = Ipv4Addr::new(172, 17, 0, 3);
    let got = n.publish("a", a, &[tcp(Some(8080), 80)]).unwrap();
    assert_eq!(got.len(), 1);
    assert!(ops.0.lock().unwrap().scripts.last().unwrap().contains("tcp dport 8080 dnat to 172.17.0.2:80"));
    let e = n.publish("b", b, &[tcp(Some(8080), 80)]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(e.to_string(), "Bind for 0.0.0.0:8080 failed: port is already allocated");
    // ephemeral skips a bound port
    ops.0.lock().unwrap().bound.push(EPHEMERAL_FIRST);
    let eph = n.publish("b", b, &[tcp(None, 80)]).unwrap();
    assert_eq!(eph[0].host_port, EPHEMERAL_FIRST + 1);
    let script = ops.0.lock().unwrap().scripts.last().unwrap().clone();
    assert!(script.contains(&format!("tcp dport {} dnat to 172.17.0.3:80", EPHEMERAL_FIRST + 1)));
    n.unpublish("a").unwrap();
    let script = ops.0.lock().unwrap().scripts.last().unwrap().clone();
    assert!(!script.contains("8080"));
    // now free for b
    n.publish("b", b, &[tcp(Some(8080), 80)]).unwrap();
    assert_eq!(n.published("b").len(), 2);
    let before = ops.0.lock().unwrap().scripts.len();
    n.unpublish("nobody").unwrap();
    assert_eq!(ops.0.lock().unwrap().scripts.len(), before, "no-op unpublish must not reload nft");
}

#[test]
fn failed_apply_rolls_back() {
    let (n, ops) = net();
    ops.0.lock().unwrap().fail_nft = true;
    let e = n.publish("a", Ipv4Addr::new(172, 17, 0, 2), &[tcp(Some(8080), 80)]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal);
    assert!(n.published("a").is_empty());
    ops.0.lock().unwrap().fail_nft = false;
    n.publish("b", Ipv4Addr::new(172, 17, 0, 3), &[tcp(Some(8080), 80)]).unwrap();
}

#[test]
fn restore_reregisters_ip_and_ports() {
    let (n, ops) = net();
    let ip = Ipv4Addr::new(172, 17, 0, 7);
    let pp = PublishedPort { host_ip: "0.0.0.0".parse().unwrap(), host_port: 8080, container_port: 80, proto: Proto::Tcp };
    n.restore("a", ip, std::slice::from_ref(&pp)).unwrap();
    n.restore("a", ip, std::slice::from_ref(&pp)).unwrap();
    assert_eq!(n.allocate_ip(Some(ip)).unwrap_err().kind(), ErrorKind::Conflict);
    assert!(ops.0.lock().unwrap().scripts.last().unwrap().contains("tcp dport 8080 dnat to 172.17.0.7:80"));
    assert_eq!(n.publish("b", Ipv4Addr::new(172, 17, 0, 8), &[tcp(Some(8080), 80)]).unwrap_err().kind(), ErrorKind::Conflict);
    n.release_ip(ip);
    assert_eq!(n.allocate_ip(Some(ip)).unwrap(), ip);
}

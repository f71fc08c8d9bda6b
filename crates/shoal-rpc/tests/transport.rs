//! End-to-end tests of the mTLS transport on 127.0.0.1 with ephemeral ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shoal_rpc::pki::{digest_base36, DEFAULT_NODE_CERT_VALIDITY};
use shoal_rpc::server::{self, CA_PATH};
use shoal_rpc::{
    client, require, tls, NodeIdentity, NodeKey, Peer, Role, RootCa, RpcBody, RpcClient, RpcError,
    RpcServer, Status,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

struct Node {
    id: String,
    cert_pem: String,
    key_pem: String,
}

fn issue(ca: &RootCa, cluster: &str, role: Role) -> Node {
    let key = NodeKey::generate().unwrap();
    let id = shoal_types::ids::new_id();
    let cert_pem = ca
        .issue(
            &key.csr_pem,
            &id,
            role,
            cluster,
            &["127.0.0.1".parse().unwrap()],
            DEFAULT_NODE_CERT_VALIDITY,
        )
        .unwrap();
    Node {
        id,
        cert_pem,
        key_pem: key.key_pem,
    }
}

struct Cluster {
    ca: RootCa,
    manager: Node,
    worker: Node,
    server: RpcServer,
    client_gone: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Seq {
    seq: u32,
}

#[derive(Debug, Deserialize)]
struct StreamReq {
    count: u32,
    /// "end": drop the sender after `count`; "hold": keep the stream open.
    then: String,
}

async fn route(
    ca_pem: Arc<String>,
    gone: mpsc::Sender<()>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<RpcBody>, Status> {
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, CA_PATH) => Ok(server::root_ca_response(&ca_pem)),
        (Method::POST, "/v1/worker") => {
            let id = require(&peer, Role::Worker)?;
            let body: Value = server::read_json(req).await?;
            server::ok(
                &json!({"node": id.node_id, "role": id.role, "peer": peer.addr.to_string(), "body": body}),
            )
        }
        (Method::POST, "/v1/manager") => {
            let id = require(&peer, Role::Manager)?;
            server::ok(&json!({"node": id.node_id}))
        }
        (Method::POST, "/v1/bytes") => {
            require(&peer, Role::Manager)?;
            let mut body = server::read_bytes(req, 16).await?.to_vec();
            body.reverse();
            server::ok_bytes(body)
        }
        (Method::POST, "/v1/slow") => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            server::ok(&json!({}))
        }
        (Method::POST, "/v1/stream") => {
            require(&peer, Role::Worker)?;
            let sreq: StreamReq = server::read_json(req).await?;
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                for seq in 0..sreq.count {
                    if tx.send(Seq { seq }).await.is_err() {
                        let _ = gone.send(()).await;
                        return;
                    }
                }
                if sreq.then == "hold" {
                    tx.closed().await;
                    let _ = gone.send(()).await;
                }
            });
            Ok(server::ndjson(rx))
        }
        _ => Err(Status::not_found("no such route")),
    }
}

async fn start_server(ca: &RootCa, manager: &Node) -> (RpcServer, mpsc::Receiver<()>) {
    let config = tls::server_config(ca.cert_pem(), &manager.cert_pem, &manager.key_pem).unwrap();
    let ca_pem = Arc::new(ca.cert_pem().to_string());
    let (gone_tx, gone_rx) = mpsc::channel(8);
    let server = RpcServer::bind("127.0.0.1:0".parse().unwrap(), config, move |peer, req| {
        route(ca_pem.clone(), gone_tx.clone(), peer, req)
    })
    .await
    .unwrap();
    (server, gone_rx)
}

async fn cluster() -> Cluster {
    let ca = RootCa::generate().unwrap();
    let cluster_id = shoal_types::ids::new_id();
    let manager = issue(&ca, &cluster_id, Role::Manager);
    let worker = issue(&ca, &cluster_id, Role::Worker);
    let (server, gone) = start_server(&ca, &manager).await;
    Cluster {
        ca,
        manager,
        worker,
        server,
        client_gone: tokio::sync::Mutex::new(gone),
    }
}

impl Cluster {
    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
    fn client(&self, node: &Node) -> RpcClient {
        RpcClient::new(
            self.addr(),
            tls::client_config(self.ca.cert_pem(), &node.cert_pem, &node.key_pem).unwrap(),
        )
    }
}

#[tokio::test]
async fn workers_reach_worker_routes_only_and_managers_reach_both() {
    let c = cluster().await;
    let worker = c.client(&c.worker);
    let v: Value = worker
        .call_json("/v1/worker", &json!({"hello": 1}))
        .await
        .unwrap();
    assert_eq!(v["node"], c.worker.id);
    assert_eq!(v["role"], "worker");
    assert_eq!(v["body"], json!({"hello": 1}));

    let err = worker
        .call_json::<_, Value>("/v1/manager", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(
        err.to_string().contains("managers only") && err.to_string().contains(&c.worker.id),
        "{err}"
    );

    let manager = c.client(&c.manager);
    let v: Value = manager.call_json("/v1/manager", &json!({})).await.unwrap();
    assert_eq!(v["node"], c.manager.id);
    let v: Value = manager.call_json("/v1/worker", &json!(null)).await.unwrap();
    assert_eq!(v["role"], "manager");

    let err = manager
        .call_json::<_, Value>("/v1/nope", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
}

#[tokio::test]
async fn idle_connections_are_reused() {
    let c = cluster().await;
    let worker = c.client(&c.worker);
    let a: Value = worker.call_json("/v1/worker", &json!(1)).await.unwrap();
    let b: Value = worker.call_json("/v1/worker", &json!(2)).await.unwrap();
    assert_eq!(
        a["peer"], b["peer"],
        "the second call reused the first connection"
    );
}

#[tokio::test]
async fn anonymous_clients_get_the_ca_and_401_elsewhere() {
    let c = cluster().await;
    let anon = RpcClient::new(
        c.addr(),
        tls::anonymous_client_config(c.ca.cert_pem()).unwrap(),
    );
    let resp: server::RootCaResponse = anon.get_json(CA_PATH).await.unwrap();
    assert_eq!(resp.certificate, c.ca.cert_pem());
    for path in ["/v1/worker", "/v1/manager", "/v1/stream"] {
        let err = anon
            .call_json::<_, Value>(path, &json!({"count": 1, "then": "end"}))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(401), "{path}: {err}");
        assert!(
            err.to_string().contains("requires a node certificate"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn certificates_from_another_ca_are_refused() {
    let c = cluster().await;
    let other_ca = RootCa::generate().unwrap();
    let intruder = issue(&other_ca, "other", Role::Manager);

    // A client cert from another CA: the server refuses the handshake, no handler runs.
    let client = RpcClient::new(
        c.addr(),
        tls::client_config(c.ca.cert_pem(), &intruder.cert_pem, &intruder.key_pem).unwrap(),
    );
    let err = client
        .call_json::<_, Value>("/v1/worker", &json!({}))
        .await
        .unwrap_err();
    // TLS 1.3: the client's handshake is done before the server checks its certificate, so the
    // refusal arrives as the server's alert on the first request.
    assert!(
        matches!(
            &err,
            RpcError::Connect { .. } | RpcError::Disconnected { .. }
        ) && err.to_string().contains("alert"),
        "{err:?}"
    );
    let err = client.get_json::<Value>(CA_PATH).await.unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::Connect { .. } | RpcError::Disconnected { .. }
        ),
        "{err:?}"
    );

    // A client that trusts another CA refuses our manager.
    let client = RpcClient::new(
        c.addr(),
        tls::anonymous_client_config(other_ca.cert_pem()).unwrap(),
    );
    let err = client.get_json::<Value>(CA_PATH).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Connect { message, .. } if message.contains("tls")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_worker_certificate_cannot_serve_as_a_manager() {
    let c = cluster().await;
    // A worker (valid cert of this cluster) listening as if it were a manager.
    let (fake, _gone) = start_server(&c.ca, &c.worker).await;
    let client = RpcClient::new(
        fake.local_addr(),
        tls::client_config(c.ca.cert_pem(), &c.worker.cert_pem, &c.worker.key_pem).unwrap(),
    );
    let err = client.get_json::<Value>(CA_PATH).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Connect { message, .. } if message.contains("tls")),
        "{err:?}"
    );
}

#[tokio::test]
async fn plaintext_http_gets_no_http_response() {
    let c = cluster().await;
    let mut tcp = tokio::net::TcpStream::connect(c.addr()).await.unwrap();
    tcp.write_all(b"GET /v1/ca HTTP/1.1\r\nHost: swarm-manager\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got))
        .await
        .expect("server closes the connection")
        .ok();
    assert!(
        !got.starts_with(b"HTTP/"),
        "plaintext got an HTTP answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        got.is_empty() || got[0] == 0x15,
        "expected nothing or a TLS alert record, got {got:02x?}"
    );
    // The server is still fine afterwards.
    let _: Value = c
        .client(&c.worker)
        .call_json("/v1/worker", &json!({}))
        .await
        .unwrap();
}

#[tokio::test]
async fn bootstrap_checks_the_ca_against_the_join_token() {
    let c = cluster().await;
    let secret = shoal_types::ids::new_token_secret();
    let token = shoal_types::join_token(&c.ca.digest(), &secret);
    let (ca_pem, client) = client::bootstrap(c.addr(), &token).await.unwrap();
    assert_eq!(ca_pem, c.ca.cert_pem());
    // The second connection verifies the manager against that CA and carries no identity.
    let again: server::RootCaResponse = client.get_json(CA_PATH).await.unwrap();
    assert_eq!(again.certificate, ca_pem);
    assert_eq!(
        client
            .call_json::<_, Value>("/v1/worker", &json!({}))
            .await
            .unwrap_err()
            .status(),
        Some(401)
    );

    // A token for another cluster's CA: the manager we reached is not the one the token names.
    let other = RootCa::generate().unwrap();
    let foreign = shoal_types::join_token(&other.digest(), &secret);
    let err = client::bootstrap(c.addr(), &foreign).await.unwrap_err();
    let expected = digest_base36(&other.digest());
    assert_eq!(
        err.to_string(),
        format!("remote CA does not match fingerprint. Expected: {expected}")
    );
    assert!(matches!(err, RpcError::CaMismatch { .. }));

    assert!(client::bootstrap(c.addr(), "SWMTKN-1-nope").await.is_err());
}

#[tokio::test]
async fn ndjson_streams_arrive_in_order_and_end_cleanly() {
    let c = cluster().await;
    let worker = c.client(&c.worker);
    let mut rx = worker
        .stream_ndjson::<_, Seq>("/v1/stream", &json!({"count": 500, "then": "end"}))
        .await
        .unwrap();
    for want in 0..500 {
        assert_eq!(rx.recv().await.unwrap().unwrap(), Seq { seq: want });
    }
    assert!(
        rx.recv().await.is_none(),
        "a clean end closes the channel without an error"
    );

    // Refusals arrive before any stream.
    let anon = RpcClient::new(
        c.addr(),
        tls::anonymous_client_config(c.ca.cert_pem()).unwrap(),
    );
    let err = anon
        .stream_ndjson::<_, Seq>("/v1/stream", &json!({"count": 1, "then": "end"}))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
}

#[tokio::test]
async fn the_client_notices_when_the_server_drops_a_stream() {
    let c = cluster().await;
    let worker = c.client(&c.worker);
    let mut rx = worker
        .stream_ndjson::<_, Seq>("/v1/stream", &json!({"count": 3, "then": "hold"}))
        .await
        .unwrap();
    for want in 0..3 {
        assert_eq!(rx.recv().await.unwrap().unwrap(), Seq { seq: want });
    }
    let Cluster { server, .. } = c;
    server.shutdown();
    let last = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the client notices");
    assert!(
        matches!(last, Some(Err(RpcError::Disconnected { .. }))),
        "{last:?}"
    );
    assert!(rx.recv().await.is_none());
}

#[tokio::test]
async fn the_server_notices_when_the_client_drops_a_stream() {
    let c = cluster().await;
    let worker = c.client(&c.worker);
    let mut rx = worker
        .stream_ndjson::<_, Seq>("/v1/stream", &json!({"count": 2, "then": "hold"}))
        .await
        .unwrap();
    assert_eq!(rx.recv().await.unwrap().unwrap(), Seq { seq: 0 });
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), c.client_gone.lock().await.recv())
        .await
        .expect("the server's sender sees the client go")
        .unwrap();
}

#[tokio::test]
async fn calls_time_out() {
    let c = cluster().await;
    let worker = c
        .client(&c.worker)
        .with_timeouts(Duration::from_secs(5), Duration::from_millis(300));
    let err = worker
        .call_json::<_, Value>("/v1/slow", &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Timeout(_)), "{err:?}");

    // Nothing listens: connect fails fast.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let client = RpcClient::new(addr, tls::anonymous_client_config(c.ca.cert_pem()).unwrap());
    let err = client.get_json::<Value>(CA_PATH).await.unwrap_err();
    assert!(matches!(err, RpcError::Connect { .. }), "{err:?}");
}

#[test]
fn identities_read_from_issued_certs() {
    let ca = RootCa::generate().unwrap();
    let cluster = shoal_types::ids::new_id();
    let m = issue(&ca, &cluster, Role::Manager);
    let w = issue(&ca, &cluster, Role::Worker);
    let mid = NodeIdentity::from_pem(&m.cert_pem).unwrap();
    let wid = NodeIdentity::from_pem(&w.cert_pem).unwrap();
    assert_eq!(
        (mid.node_id, mid.role, mid.cluster_id.as_str()),
        (m.id, Role::Manager, cluster.as_str())
    );
    assert_eq!(
        (wid.node_id.clone(), wid.role, wid.cluster_id.as_str()),
        (w.id, Role::Worker, cluster.as_str())
    );
    let renew = wid.renew_at();
    assert!(renew > std::time::SystemTime::now() + Duration::from_secs(44 * 86400));
    assert!(renew < std::time::SystemTime::now() + Duration::from_secs(73 * 86400));
}

#[tokio::test]
async fn opaque_bytes_round_trip_with_a_size_limit() {
    let c = cluster().await;
    let manager = c.client(&c.manager);
    let answer = manager.call_bytes("/v1/bytes", vec![0, 1, 2, 255]).await.unwrap();
    assert_eq!(answer.as_ref(), &[255, 2, 1, 0]);
    let err = manager.call_bytes("/v1/bytes", vec![7; 17]).await.unwrap_err();
    assert_eq!(err.status(), Some(413), "{err}");
    let err = c.client(&c.worker).call_bytes("/v1/bytes", vec![1]).await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    // A client for another address keeps the identity (and fails to connect there).
    let other = manager.for_addr("127.0.0.1:1".parse().unwrap());
    assert_eq!(other.addr().port(), 1);
    let err = other.call_bytes("/v1/bytes", vec![1]).await.unwrap_err();
    assert!(matches!(err, RpcError::Connect { .. }), "{err}");
    let same = manager.for_addr(c.addr());
    assert_eq!(same.call_bytes("/v1/bytes", vec![1, 2]).await.unwrap().as_ref(), &[2, 1]);
}

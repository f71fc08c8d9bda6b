//! Node certificates end to end, on a manager and a worker in the namespaces of a testkit `Lab`,
//! driven by the stock docker CLI: `swarm update --cert-expiry` (Docker's minimum and its error
//! text, `docker info`, every node renewing onto the shorter validity), `docker swarm ca`
//! (print, and `--rotate` waiting for convergence), the join tokens' new digest, the worker's
//! certificate files moving to the new root, and the worker working with its renewed identity
//! after a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{running_as_root, ensure_packages, wait_until, Daemon, DaemonOpts, Lab, TestImage};

fn certs_dir(d: &Daemon) -> PathBuf {
    d.data_root().join("swarm").join("certificates")
}

/// `openssl <args>` succeeded.
fn openssl(args: &[&str]) -> bool {
    Command::new("openssl").args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

/// The node certificate in `dir` is still valid `secs` from now.
fn valid_for(dir: &Path, secs: u64) -> bool {
    let cert = dir.join("node.crt");
    openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-checkend", &secs.to_string()])
}

/// The node certificate in `dir` verifies against `ca_file` alone (no intermediates).
fn signed_by(dir: &Path, ca_file: &Path) -> bool {
    let cert = dir.join("node.crt");
    openssl(&["verify", "-CAfile", ca_file.to_str().unwrap(), cert.to_str().unwrap()])
}

/// The last PEM certificate in a command's output.
fn last_pem(out: &str) -> String {
    let start = out.rfind("-----BEGIN CERTIFICATE-----").unwrap_or_else(|| panic!("no certificate in: {out}"));
    let end = out[start..].find("-----END CERTIFICATE-----").map(|e| start + e + "-----END CERTIFICATE-----".len()).expect("end of PEM");
    out[start..end].to_string()
}

/// `docker info --format` on the cluster part (`ClusterInfo`) of `/info`.
fn cluster(d: &Daemon, format: &str) -> String {
    d.docker_ok(["info", "--format", format]).trim().to_string()
}

fn node_tls(d: &Daemon, node: &str, field: &str) -> String {
    d.docker_ok(["node", "inspect", node, "--format", &format!("{{{{json .Description.TLSInfo.{field}}}}}")]).trim().to_string()
}

fn all_ready(manager: &Daemon, n: usize) -> bool {
    let ls = manager.docker_ok(["node", "ls", "--format", "{{.Status}}"]);
    let lines: Vec<&str> = ls.lines().collect();
    lines.len() == n && lines.iter().all(|l| *l == "Ready")
}

/// `SWMTKN-1-<digest>-<secret>` → (digest, secret).
fn token_parts(token: &str) -> (String, String) {
    let rest = token.trim().strip_prefix("SWMTKN-1-").expect("a v1 join token");
    let (digest, secret) = rest.split_once('-').expect("digest-secret");
    (digest.to_string(), secret.to_string())
}

#[test]
fn cert_expiry_renewal_and_root_rotation() {
    if !running_as_root("certificate tests") {
        return;
    }
    ensure_packages(&["busybox-static", "nftables", "iproute2", "openssl"]);
    let lab = Lab::new("shoal-crt", 2);
    let busybox = TestImage::busybox().docker_archive();
    let mut nodes: Vec<Daemon> = (0..2)
        .map(|i| {
            let d = Daemon::start(DaemonOpts::new(env!("CARGO_BIN_EXE_shoal"), lab.node(i)));
            d.docker_ok(["load", "-i", busybox.to_str().unwrap()]);
            d
        })
        .collect();
    let manager_addr = format!("{}:2377", lab.addr(0));
    let m = &nodes[0];
    m.docker_ok(["swarm", "init", "--advertise-addr", &lab.addr(0).to_string()]);
    m.docker_ok(["swarm", "update", "--dispatcher-heartbeat", "1s"]);
    let token = m.docker_ok(["swarm", "join-token", "-q", "worker"]).trim().to_string();
    nodes[1].docker_ok(["swarm", "join", "--token", &token, &manager_addr]);
    let m = &nodes[0];
    let worker = nodes[1].docker_ok(["info", "--format", "{{.Swarm.NodeID}}"]).trim().to_string();
    assert!(wait_until(Duration::from_secs(20), || all_ready(m, 2)), "node ls: {}", m.docker_ok(["node", "ls"]));
    let (mdir, wdir) = (certs_dir(&nodes[0]), certs_dir(&nodes[1]));

    // Every node reports who issued its certificate; the cluster says which issuer it wants.
    let want_key = cluster(m, "{{json .Swarm.Cluster.TLSInfo.CertIssuerPublicKey}}");
    assert!(want_key.len() > 10, "cluster TLSInfo: {}", cluster(m, "{{json .Swarm.Cluster.TLSInfo}}"));
    assert!(
        wait_until(Duration::from_secs(20), || node_tls(m, &worker, "CertIssuerPublicKey") == want_key
            && node_tls(m, "self", "CertIssuerPublicKey") == want_key),
        "worker TLSInfo: {}",
        node_tls(m, &worker, "CertIssuerPublicKey")
    );

    // --cert-expiry: Docker's minimum, `docker info`, and nodes renewing onto the shorter expiry.
    assert!(valid_for(&wdir, 30 * 24 * 3600) && valid_for(&mdir, 30 * 24 * 3600), "90-day certificates at first");
    m.docker_fails(&["swarm", "update", "--cert-expiry", "30m"], "minimum certificate expiry time is: 1h0m0s");
    m.docker_ok(["swarm", "update", "--cert-expiry", "2h"]);
    let info = m.docker_ok(["info"]);
    assert!(info.contains("Expiry Duration: 2 hours"), "{info}");
    assert_eq!(cluster(m, "{{.Swarm.Cluster.Spec.CAConfig.NodeCertExpiry}}"), "2h0m0s");
    let renewed = wait_until(Duration::from_secs(30), || {
        !valid_for(&wdir, 3 * 3600) && valid_for(&wdir, 3600) && !valid_for(&mdir, 3 * 3600) && valid_for(&mdir, 3600)
    });
    assert!(renewed, "certificates not renewed to 2 h:\nworker log:\n{}", nodes[1].log_tail());

    // `docker swarm ca` prints the trust root.
    let m = &nodes[0];
    let old_ca = m.docker_ok(["swarm", "ca"]).trim().to_string();
    assert!(old_ca.starts_with("-----BEGIN CERTIFICATE-----"), "{old_ca}");
    assert_eq!(old_ca, cluster(m, "{{.Swarm.Cluster.TLSInfo.TrustRoot}}"));
    assert_eq!(cluster(m, "{{.Swarm.Cluster.RootRotationInProgress}}"), "false");
    let tmp = nodes[0].dir().join("test-ca");
    std::fs::create_dir_all(&tmp).unwrap();
    let old_ca_file = tmp.join("old.pem");
    std::fs::write(&old_ca_file, format!("{old_ca}\n")).unwrap();
    assert!(signed_by(&wdir, &old_ca_file), "the worker's certificate is from the first root");
    let (old_digest, old_secret) = token_parts(&m.docker_ok(["swarm", "join-token", "-q", "worker"]));
    let (old_mdigest, _) = token_parts(&m.docker_ok(["swarm", "join-token", "-q", "manager"]));
    assert_eq!(old_digest, old_mdigest);

    // `docker swarm ca --rotate` waits until every node moved, then prints the new root.
    let out = m.docker_ok(["swarm", "ca", "--rotate"]);
    eprintln!("docker swarm ca --rotate:\n{out}");
    let new_ca = last_pem(&out);
    assert_ne!(new_ca, old_ca, "{out}");
    assert_eq!(new_ca, cluster(m, "{{.Swarm.Cluster.TLSInfo.TrustRoot}}"));
    assert_eq!(cluster(m, "{{.Swarm.Cluster.RootRotationInProgress}}"), "false");
    assert!(m.docker_ok(["info"]).contains("Root Rotation In Progress: false"));
    assert_eq!(m.docker_ok(["swarm", "ca"]).trim(), new_ca);
    assert!(wait_until(Duration::from_secs(20), || all_ready(m, 2)), "node ls: {}", m.docker_ok(["node", "ls"]));
    let want_key = cluster(m, "{{json .Swarm.Cluster.TLSInfo.CertIssuerPublicKey}}");
    assert_eq!(node_tls(m, &worker, "CertIssuerPublicKey"), want_key);
    assert_eq!(node_tls(m, &worker, "TrustRoot"), cluster(m, "{{json .Swarm.Cluster.TLSInfo.TrustRoot}}"));

    // Both join tokens carry the new root's digest.
    let (digest, secret) = token_parts(&m.docker_ok(["swarm", "join-token", "-q", "worker"]));
    let (mdigest, _) = token_parts(&m.docker_ok(["swarm", "join-token", "-q", "manager"]));
    assert_ne!(digest, old_digest);
    assert_eq!(digest, mdigest);
    assert_ne!(secret, old_secret);

    // On the worker's disk: the new root only, and a certificate it alone vouches for, still
    // with the 2 h expiry.
    let new_ca_file = tmp.join("new.pem");
    std::fs::write(&new_ca_file, format!("{new_ca}\n")).unwrap();
    let worker_ca = std::fs::read_to_string(wdir.join("ca.crt")).unwrap();
    assert_eq!(worker_ca.trim(), new_ca, "the worker's trust roots");
    assert!(signed_by(&wdir, &new_ca_file), "the worker's certificate is from the new root");
    assert!(!signed_by(&wdir, &old_ca_file), "the worker's certificate is no longer from the old root");
    assert!(signed_by(&mdir, &new_ca_file), "the manager's certificate is from the new root");
    assert!(!valid_for(&wdir, 3 * 3600), "renewed certificates keep the 2 h expiry");

    // The worker restarts with its renewed identity from disk and still works: a service's task
    // runs there and its status reaches the manager.
    nodes[1].restart();
    let m = &nodes[0];
    assert!(wait_until(Duration::from_secs(20), || all_ready(m, 2)), "worker did not come back: {}", nodes[1].log_tail());
    m.docker_ok(["service", "create", "-d", "--name", "after", "--constraint", "node.role==worker", "busybox", "sleep", "1000"]);
    let running = wait_until(Duration::from_secs(40), || {
        m.docker_ok(["service", "ps", "after", "--filter", "desired-state=running", "--format", "{{.Node}} {{.CurrentState}}"])
            .lines()
            .any(|l| l.contains("Running"))
    });
    assert!(running, "service ps: {}\nworker log:\n{}", m.docker_ok(["service", "ps", "after"]), nodes[1].log_tail());
    let on_worker = nodes[1].docker_ok(["ps", "--filter", "label=com.docker.swarm.service.name=after", "--format", "{{.Names}}"]);
    assert_eq!(on_worker.lines().filter(|l| !l.trim().is_empty()).count(), 1, "{on_worker}");

    // Rotating to an operator's CA (made by openssl: UTF8String names, a SEC1 EC key).
    let (ops_crt, ops_key, cnf) = (tmp.join("ops.crt"), tmp.join("ops.key"), tmp.join("ops.cnf"));
    std::fs::write(
        &cnf,
        "[req]\ndistinguished_name = dn\nx509_extensions = v3\n[dn]\n[v3]\nbasicConstraints = critical,CA:TRUE\n\
         keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n",
    )
    .unwrap();
    assert!(openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ops_key.to_str().unwrap()]));
    assert!(openssl(&[
        "req", "-x509", "-new", "-key", ops_key.to_str().unwrap(), "-subj", "/O=Example Ops/CN=ops root", "-days", "3650",
        "-config", cnf.to_str().unwrap(), "-out", ops_crt.to_str().unwrap(),
    ]));
    let m = &nodes[0];
    m.docker_fails(
        &["swarm", "ca", "--rotate", "--ca-key", ops_key.to_str().unwrap()],
        "if a signing CA key is provided, the signing CA cert must also be provided",
    );
    let out = m.docker_ok(["swarm", "ca", "--rotate", "--ca-cert", ops_crt.to_str().unwrap(), "--ca-key", ops_key.to_str().unwrap()]);
    let ops_ca = std::fs::read_to_string(&ops_crt).unwrap();
    assert_eq!(last_pem(&out), ops_ca.trim(), "{out}");
    assert!(wait_until(Duration::from_secs(20), || all_ready(m, 2)), "node ls: {}", m.docker_ok(["node", "ls"]));
    assert!(signed_by(&wdir, &ops_crt) && signed_by(&mdir, &ops_crt), "node certificates from the operator's CA");
    assert_eq!(std::fs::read_to_string(wdir.join("ca.crt")).unwrap().trim(), ops_ca.trim());
    assert_eq!(
        nodes[1].docker_ok(["ps", "--filter", "label=com.docker.swarm.service.name=after", "--format", "{{.Names}}"]).lines().count(),
        1,
        "the task kept running"
    );
}

//! The cluster's root certificate authority, the join tokens derived from it, issuing node
//! certificates, and root rotation (`docker swarm ca --rotate`).
//!
//! The root CA ([`shoal_rpc::RootCa`]: ECDSA P-256, CN `swarm-ca`, 20 years, like swarmkit) is
//! created at `swarm init` and kept in the store with the cluster (`Cluster.store_only`) so any
//! manager can sign after a failover. Join tokens carry the SHA-256 digest of the root
//! certificate so a joining node checks it is talking to the right cluster before trusting it.
//!
//! Root rotation (swarmkit `ca/reconciler.go`, simplified) is a small state machine over the
//! cluster object, pure functions here, driven by `control.rs` (start, abort) and the manager's
//! certificate loop in `certs.rs` (finish):
//!
//! - **Idle**: node certificates are issued by the root; `TLSInfo` names the root as trust root
//!   and issuer.
//! - **Start** (`CAConfig.ForceRotate` changed → a new generated root; `SigningCACert` +
//!   `SigningCAKey` naming another CA → that CA): the new root is stored in
//!   `store_only.root_rotation` together with its certificate cross-signed by the current root,
//!   `RootRotationInProgress` becomes true and `TLSInfo`'s issuer becomes the new root (the
//!   trust root stays the old one). From now on node certificates are issued by the new root and
//!   sent with the cross-signed certificate, so they verify against either root: nodes that have
//!   not moved yet (trusting only the old root) and nodes that have (trusting both) all accept
//!   each other. Nodes learn of the rotation when they next ask for the certificate policy,
//!   trust both roots and renew.
//!   Starting again while rotating replaces the target; naming the current root aborts.
//! - **Finish**: once every node that is not Down reports (in `Description.TLSInfo`) a
//!   certificate from the new issuer, the new root becomes the root, the old one is dropped
//!   from every trust store, `RootRotationInProgress` is false and both join tokens are
//!   regenerated (new digest, new secrets). A node that was Down keeps a certificate only the
//!   old root vouches for: managers no longer accept it, so it has to leave and join again,
//!   as in Docker.

use std::time::Duration;

use shoal_rpc::pki::{cert_pems, DEFAULT_NODE_CERT_VALIDITY, MIN_NODE_CERT_VALIDITY};
use shoal_rpc::{Role, RootCa};
use shoal_types::{CaConfig, Cluster, JoinTokens, Node, NodeState, RootRotation, TlsInfo};

use crate::error::{Result, SwarmError};

pub fn generate_root_ca() -> Result<RootCa> {
    RootCa::generate().map_err(|e| SwarmError::Internal(format!("generating the root CA: {e}")))
}

fn secrets(cluster: &Cluster) -> Result<&shoal_types::ClusterSecrets> {
    cluster
        .store_only
        .as_ref()
        .ok_or_else(|| SwarmError::Internal("the cluster has no root CA".into()))
}

/// The root CA kept in the cluster object.
pub fn load_root_ca(cluster: &shoal_types::Cluster) -> Result<RootCa> {
    let secrets = secrets(cluster)?;
    RootCa::from_pem(&secrets.root_ca_cert_pem, &secrets.root_ca_key_pem)
        .map_err(|e| SwarmError::Internal(format!("loading the root CA: {e}")))
}

/// The CA being rotated to, if a rotation is in progress.
fn rotation_target(cluster: &Cluster) -> Result<Option<(RootCa, &RootRotation)>> {
    let Some(rotation) = secrets(cluster)?.root_rotation.as_ref() else { return Ok(None) };
    let ca = RootCa::from_pem(&rotation.ca_cert_pem, &rotation.ca_key_pem)
        .map_err(|e| SwarmError::Internal(format!("loading the CA being rotated to: {e}")))?;
    Ok(Some((ca, rotation)))
}

/// The SHA-256 of the DER inside a PEM certificate.
pub fn cert_digest(cert_pem: &str) -> Result<[u8; 32]> {
    shoal_rpc::pki::cert_digest(cert_pem)
        .map_err(|e| SwarmError::Internal(format!("the stored root CA certificate is not valid: {e}")))
}

/// A new join token for this CA.
pub fn new_join_token(digest: &[u8; 32]) -> String {
    shoal_types::join_token(digest, &shoal_types::ids::new_token_secret())
}

/// Every root a node should trust now: the root, and during a rotation also the new root.
pub(crate) fn trust_bundle(cluster: &Cluster) -> Result<String> {
    let mut bundle = load_root_ca(cluster)?.cert_pem().to_string();
    if let Some((target, _)) = rotation_target(cluster)? {
        bundle.push_str(target.cert_pem());
    }
    Ok(bundle)
}

/// The cluster's `TLSInfo` (`GET /swarm`, `/info`): the trust root, and the issuer node
/// certificates should have (the new root during a rotation). The same shape every node
/// reports in its `Description.TLSInfo`; `docker swarm ca --rotate` waits until they match.
pub(crate) fn desired_tls_info(cluster: &Cluster) -> Result<TlsInfo> {
    let root = load_root_ca(cluster)?;
    let issuer = match rotation_target(cluster)? {
        Some((target, _)) => target.issuer_info(),
        None => root.issuer_info(),
    };
    Ok(issuer.tls_info(root.cert_pem()))
}

/// How long new node certificates are valid: `CAConfig.NodeCertExpiry` (90 days when unset,
/// never below the 1 h minimum).
pub(crate) fn node_cert_validity(cluster: &Cluster) -> Duration {
    let ns = cluster.spec.ca_config.node_cert_expiry;
    if ns <= 0 {
        return DEFAULT_NODE_CERT_VALIDITY;
    }
    Duration::from_nanos(ns as u64).max(MIN_NODE_CERT_VALIDITY)
}

/// A node certificate chain for the key in `csr_pem`: issued by the current signing CA (the
/// root, or the new root during a rotation, then followed by its cross-signed certificate),
/// valid for [`node_cert_validity`]. A CSR that cannot be used is [`SwarmError::BadRequest`].
pub(crate) fn issue_node_cert(cluster: &Cluster, csr_pem: &str, node_id: &str, role: Role, ips: &[std::net::IpAddr]) -> Result<String> {
    let validity = node_cert_validity(cluster);
    let (ca, intermediates) = match rotation_target(cluster)? {
        Some((target, rotation)) => (target, rotation.cross_signed_pem.clone()),
        None => (load_root_ca(cluster)?, String::new()),
    };
    let leaf = ca
        .issue(csr_pem, node_id, role, &cluster.id, ips, validity)
        .map_err(|e| SwarmError::BadRequest(format!("issuing a certificate for node {node_id}: {e}")))?;
    Ok(leaf + &intermediates)
}

/// What a cluster update's `CAConfig` asks of the root CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RotationRequest {
    /// Nothing changes.
    Keep,
    /// Stop the rotation in progress and stay with the current root.
    Abort,
    /// Rotate to a newly generated root.
    Generate,
    /// Rotate to the given CA (certificate normalised, key as given).
    To { cert_pem: String, key_pem: String },
}

/// A CA certificate to rotate to must be valid for at least this long (swarmkit
/// `minRootExpiration`).
const MIN_ROOT_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Decide what `config` (a cluster update's `CAConfig`) asks for, given the cluster's CA
/// state (swarmkit `controlapi/ca_rotation.go` `validateCAConfig`, without external CAs):
/// - a key without a certificate is refused; a certificate without its key would need an
///   external CA, which shoal does not support; a given certificate must be one certificate
///   valid for at least a year;
/// - no CA given: a `ForceRotate` differing from the last rotation's value rotates to a new
///   generated root, else nothing changes;
/// - a given CA equal to the current root aborts a rotation in progress, one equal to the
///   rotation target changes nothing, any other starts a rotation to it.
pub(crate) fn rotation_request(cluster: &Cluster, config: &CaConfig) -> Result<RotationRequest> {
    let secrets = secrets(cluster)?;
    let (cert, key) = (config.signing_ca_cert.trim(), config.signing_ca_key.trim());
    if !key.is_empty() && cert.is_empty() {
        return Err(SwarmError::Invalid("if a signing CA key is provided, the signing CA cert must also be provided".into()));
    }
    let given = if cert.is_empty() {
        None
    } else {
        if key.is_empty() {
            return Err(SwarmError::Invalid(
                "the signing CA cert needs its key: rotating to an external CA is not supported".into(),
            ));
        }
        let mut certs = cert_pems(cert).map_err(|_| SwarmError::Invalid("could not parse the desired CA certificate".into()))?;
        if certs.len() != 1 {
            return Err(SwarmError::Invalid("the desired CA certificate cannot contain multiple certificates".into()));
        }
        let cert = certs.remove(0);
        let not_after = shoal_rpc::pki::cert_not_after(&cert).map_err(|_| SwarmError::Invalid("could not parse the desired CA certificate".into()))?;
        if not_after < std::time::SystemTime::now() + MIN_ROOT_EXPIRY {
            return Err(SwarmError::Invalid("CA certificate expires too soon".into()));
        }
        Some((cert, key.to_string()))
    };
    let current = cert_pems(&secrets.root_ca_cert_pem).map_err(|e| SwarmError::Internal(e.to_string()))?.remove(0);
    let target = match &secrets.root_rotation {
        Some(r) => Some(cert_pems(&r.ca_cert_pem).map_err(|e| SwarmError::Internal(e.to_string()))?.remove(0)),
        None => None,
    };
    let rotating = target.is_some();
    Ok(match given {
        Some((cert, _)) if cert == current => {
            if rotating {
                RotationRequest::Abort
            } else {
                RotationRequest::Keep
            }
        }
        Some((cert, _)) if Some(&cert) == target.as_ref() => RotationRequest::Keep,
        Some((cert_pem, key_pem)) => RotationRequest::To { cert_pem, key_pem },
        None if config.force_rotate != secrets.last_forced_rotation => RotationRequest::Generate,
        None => RotationRequest::Keep,
    })
}

/// Start rotating to `new` (replacing a rotation in progress): store it with its certificate
/// cross-signed by the current root, and update `RootRotationInProgress` and `TLSInfo`.
pub(crate) fn start_rotation(cluster: &mut Cluster, new: &RootCa) -> Result<()> {
    let root = load_root_ca(cluster)?;
    let cross_signed_pem = root
        .cross_sign(new)
        .map_err(|e| SwarmError::Invalid(format!("the signing CA cannot be used: {e}")))?;
    let secrets = cluster.store_only.as_mut().ok_or_else(|| SwarmError::Internal("the cluster has no root CA".into()))?;
    secrets.root_rotation = Some(RootRotation {
        ca_cert_pem: new.cert_pem().to_string(),
        ca_key_pem: new.key_pem().to_string(),
        cross_signed_pem,
    });
    cluster.root_rotation_in_progress = true;
    cluster.tls_info = desired_tls_info(cluster)?;
    Ok(())
}

/// Stop the rotation in progress; the current root stays.
pub(crate) fn abort_rotation(cluster: &mut Cluster) -> Result<()> {
    if let Some(secrets) = cluster.store_only.as_mut() {
        secrets.root_rotation = None;
    }
    cluster.root_rotation_in_progress = false;
    cluster.tls_info = desired_tls_info(cluster)?;
    Ok(())
}

/// Whether every node that is not Down reports a certificate from `want`'s issuer.
pub(crate) fn all_on_issuer(nodes: &[Node], want: &TlsInfo) -> bool {
    nodes.iter().filter(|n| n.status.state != NodeState::Down).all(|n| {
        let have = &n.description.tls_info;
        have.cert_issuer_subject == want.cert_issuer_subject && have.cert_issuer_public_key == want.cert_issuer_public_key
    })
}

/// Whether the rotation in progress can finish: every node that is not Down has moved to the
/// new root's certificates.
pub(crate) fn rotation_converged(cluster: &Cluster, nodes: &[Node]) -> bool {
    let rotating = cluster.store_only.as_ref().is_some_and(|s| s.root_rotation.is_some());
    rotating && desired_tls_info(cluster).is_ok_and(|want| all_on_issuer(nodes, &want))
}

/// Finish the rotation: the new root becomes the root, the old one is forgotten, both join
/// tokens are regenerated for the new digest. Without a rotation in progress, nothing changes.
pub(crate) fn finish_rotation(cluster: &mut Cluster) -> Result<()> {
    let Some((new, _)) = rotation_target(cluster)? else { return Ok(()) };
    let secrets = cluster.store_only.as_mut().ok_or_else(|| SwarmError::Internal("the cluster has no root CA".into()))?;
    secrets.root_rotation = None;
    secrets.root_ca_cert_pem = new.cert_pem().to_string();
    secrets.root_ca_key_pem = new.key_pem().to_string();
    cluster.join_tokens = JoinTokens { worker: new_join_token(&new.digest()), manager: new_join_token(&new.digest()) };
    cluster.root_rotation_in_progress = false;
    cluster.tls_info = desired_tls_info(cluster)?;
    Ok(())
}

/// The role a node's certificate must have, given the role of the certificate it has now:
/// manager when its Node both wants to be a manager (`Spec.Role`, set by `docker node promote`
/// or a manager join) and is one (`ManagerStatus`, set by the leader when it admits the
/// manager); worker once the leader has taken its `ManagerStatus` away (a finished demotion);
/// unchanged while a demotion is under way (`Spec.Role` worker, `ManagerStatus` still there).
/// So a renewal raises a worker only after a promotion and lowers a manager only after the
/// leader demoted it.
pub(crate) fn renewal_role(cert_role: Role, node: &Node) -> Role {
    match (&node.manager_status, node.spec.role) {
        (None, _) => Role::Worker,
        (Some(_), shoal_types::NodeRole::Manager) => Role::Manager,
        (Some(_), shoal_types::NodeRole::Worker) => cert_role,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_rpc::{IssuerInfo, NodeIdentity, NodeKey};
    use shoal_types::{ClusterSecrets, ManagerStatus, NodeRole, NodeSpec, NodeStatus};

    fn cluster_with(root: &RootCa) -> Cluster {
        let mut c = Cluster {
            id: shoal_types::new_id(),
            join_tokens: JoinTokens { worker: new_join_token(&root.digest()), manager: new_join_token(&root.digest()) },
            store_only: Some(ClusterSecrets {
                root_ca_cert_pem: root.cert_pem().to_string(),
                root_ca_key_pem: root.key_pem().to_string(),
                ..ClusterSecrets::default()
            }),
            ..Cluster::default()
        };
        c.tls_info = desired_tls_info(&c).unwrap();
        c
    }

    fn config(force_rotate: u64, cert: &str, key: &str) -> CaConfig {
        CaConfig { force_rotate, signing_ca_cert: cert.into(), signing_ca_key: key.into(), ..CaConfig::default() }
    }

    fn node(state: NodeState, tls_info: TlsInfo) -> Node {
        let mut n = Node { id: shoal_types::new_id(), status: NodeStatus { state, ..NodeStatus::default() }, ..Node::default() };
        n.description.tls_info = tls_info;
        n
    }

    fn issued_by(cluster: &Cluster) -> TlsInfo {
        let key = NodeKey::generate().unwrap();
        let chain = issue_node_cert(cluster, &key.csr_pem, "n1", Role::Worker, &[]).unwrap();
        IssuerInfo::of_chain(&chain, &trust_bundle(cluster).unwrap()).unwrap().tls_info(&cluster.tls_info.trust_root)
    }

    #[test]
    fn rotation_requests_follow_swarmkit() {
        let root = generate_root_ca().unwrap();
        let other = generate_root_ca().unwrap();
        let mut c = cluster_with(&root);
        use RotationRequest::*;
        assert_eq!(rotation_request(&c, &config(0, "", "")).unwrap(), Keep);
        assert_eq!(rotation_request(&c, &config(1, "", "")).unwrap(), Generate);
        let err = rotation_request(&c, &config(0, "", other.key_pem())).unwrap_err();
        assert_eq!(err.to_string(), "rpc error: code = InvalidArgument desc = if a signing CA key is provided, the signing CA cert must also be provided");
        assert!(matches!(rotation_request(&c, &config(0, other.cert_pem(), "")), Err(SwarmError::Invalid(_))));
        assert!(matches!(rotation_request(&c, &config(0, "junk", "junk")), Err(SwarmError::Invalid(_))));
        let two = format!("{}{}", other.cert_pem(), root.cert_pem());
        let err = rotation_request(&c, &config(0, &two, other.key_pem())).unwrap_err();
        assert!(err.to_string().ends_with("the desired CA certificate cannot contain multiple certificates"), "{err}");
        let short = {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.not_after = (std::time::SystemTime::now() + Duration::from_secs(30 * 24 * 3600)).into();
            (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
        };
        let err = rotation_request(&c, &config(0, &short.0, &short.1)).unwrap_err();
        assert!(err.to_string().ends_with("CA certificate expires too soon"), "{err}");
        // The current root (in any PEM layout) changes nothing.
        let crlf = root.cert_pem().replace('\n', "\r\n");
        assert_eq!(rotation_request(&c, &config(0, &crlf, root.key_pem())).unwrap(), Keep);
        assert_eq!(
            rotation_request(&c, &config(0, other.cert_pem(), other.key_pem())).unwrap(),
            To { cert_pem: other.cert_pem().to_string(), key_pem: other.key_pem().trim().to_string() }
        );
        // While rotating to `other`: asking for it again changes nothing, the old root aborts,
        // a new force starts over.
        start_rotation(&mut c, &other).unwrap();
        assert_eq!(rotation_request(&c, &config(0, other.cert_pem(), other.key_pem())).unwrap(), Keep);
        assert_eq!(rotation_request(&c, &config(0, root.cert_pem(), root.key_pem())).unwrap(), Abort);
        assert_eq!(rotation_request(&c, &config(0, "", "")).unwrap(), Keep);
        assert_eq!(rotation_request(&c, &config(7, other.cert_pem(), other.key_pem())).unwrap(), Keep, "a given CA wins over ForceRotate");
        c.store_only.as_mut().unwrap().last_forced_rotation = 3;
        assert_eq!(rotation_request(&c, &config(3, "", "")).unwrap(), Keep);
        assert_eq!(rotation_request(&c, &config(4, "", "")).unwrap(), Generate);
    }

    #[test]
    fn a_rotation_moves_issuing_then_trust_and_regenerates_the_tokens() {
        let old = generate_root_ca().unwrap();
        let new = generate_root_ca().unwrap();
        let mut c = cluster_with(&old);
        let old_tokens = c.join_tokens.clone();
        let before = c.tls_info.clone();
        assert_eq!(before, old.issuer_info().tls_info(old.cert_pem()));
        assert_eq!(issued_by(&c), before);
        assert!(!rotation_converged(&c, &[node(NodeState::Ready, before.clone())]), "nothing to converge when idle");

        start_rotation(&mut c, &new).unwrap();
        assert!(c.root_rotation_in_progress);
        // Trust stays with the old root; issuing moves to the new one.
        assert_eq!(c.tls_info, new.issuer_info().tls_info(old.cert_pem()));
        assert_eq!(trust_bundle(&c).unwrap(), format!("{}{}", old.cert_pem(), new.cert_pem()));
        assert_eq!(issued_by(&c), c.tls_info);
        let key = NodeKey::generate().unwrap();
        let chain = issue_node_cert(&c, &key.csr_pem, "n1", Role::Worker, &[]).unwrap();
        assert_eq!(shoal_rpc::pki::cert_pems(&chain).unwrap().len(), 2, "leaf + cross-signed root");
        assert_eq!(c.join_tokens, old_tokens, "tokens change when the rotation finishes");

        // Ready nodes still on the old issuer hold it; down nodes do not.
        let moved = node(NodeState::Ready, c.tls_info.clone());
        let down = node(NodeState::Down, before.clone());
        assert!(!rotation_converged(&c, &[moved.clone(), node(NodeState::Ready, before.clone())]));
        assert!(!rotation_converged(&c, &[moved.clone(), node(NodeState::Unknown, TlsInfo::default())]));
        assert!(rotation_converged(&c, &[moved.clone(), down.clone()]));

        finish_rotation(&mut c).unwrap();
        assert!(!c.root_rotation_in_progress);
        assert!(c.store_only.as_ref().unwrap().root_rotation.is_none());
        assert_eq!(load_root_ca(&c).unwrap().cert_pem(), new.cert_pem());
        assert_eq!(c.tls_info, new.issuer_info().tls_info(new.cert_pem()));
        assert_eq!(trust_bundle(&c).unwrap(), new.cert_pem());
        for (token, old_token) in [(&c.join_tokens.worker, &old_tokens.worker), (&c.join_tokens.manager, &old_tokens.manager)] {
            assert_ne!(token, old_token);
            shoal_rpc::verify_ca_digest(new.cert_pem(), shoal_rpc::pki::token_ca_digest(token).unwrap()).unwrap();
        }
        // Nodes that moved keep a certificate of the right issuer: no second renewal.
        assert_eq!(moved.description.tls_info.cert_issuer_public_key, c.tls_info.cert_issuer_public_key);
        // Issued now: directly by the new root.
        let chain = issue_node_cert(&c, &key.csr_pem, "n1", Role::Worker, &[]).unwrap();
        assert_eq!(shoal_rpc::pki::cert_pems(&chain).unwrap().len(), 1);
        finish_rotation(&mut c).unwrap(); // idle: nothing happens
        assert_eq!(load_root_ca(&c).unwrap().cert_pem(), new.cert_pem());
    }

    #[test]
    fn an_aborted_rotation_goes_back_to_the_old_root() {
        let old = generate_root_ca().unwrap();
        let mut c = cluster_with(&old);
        let before = c.clone();
        start_rotation(&mut c, &generate_root_ca().unwrap()).unwrap();
        // Starting over replaces the target.
        let second = generate_root_ca().unwrap();
        start_rotation(&mut c, &second).unwrap();
        assert_eq!(c.tls_info, second.issuer_info().tls_info(old.cert_pem()));
        abort_rotation(&mut c).unwrap();
        assert_eq!(c.tls_info, before.tls_info);
        assert_eq!(c.store_only, before.store_only);
        assert!(!c.root_rotation_in_progress);
        assert_eq!(c.join_tokens, before.join_tokens);
    }

    #[test]
    fn renewal_follows_the_nodes_role() {
        let manager = Node {
            spec: NodeSpec { role: NodeRole::Manager, ..NodeSpec::default() },
            manager_status: Some(ManagerStatus::default()),
            ..Node::default()
        };
        let promoted_only_in_spec = Node { spec: NodeSpec { role: NodeRole::Manager, ..NodeSpec::default() }, ..Node::default() };
        let worker = Node::default();
        assert_eq!(renewal_role(Role::Manager, &manager), Role::Manager);
        assert_eq!(renewal_role(Role::Worker, &manager), Role::Manager, "a promoted (admitted) worker renews as a manager");
        assert_eq!(renewal_role(Role::Worker, &promoted_only_in_spec), Role::Worker, "not yet admitted: still a worker");
        assert_eq!(renewal_role(Role::Manager, &worker), Role::Worker, "a demoted manager renews as a worker");
        let demoting = Node { spec: NodeSpec::default(), ..manager.clone() };
        assert_eq!(renewal_role(Role::Manager, &demoting), Role::Manager, "demotion under way: unchanged");
        assert_eq!(renewal_role(Role::Worker, &demoting), Role::Worker);

        // And what is issued is what the role says, whatever the CSR asked for.
        let c = cluster_with(&generate_root_ca().unwrap());
        let key = NodeKey::generate().unwrap();
        let chain = issue_node_cert(&c, &key.csr_pem, "n1", renewal_role(Role::Manager, &worker), &[]).unwrap();
        let id = NodeIdentity::from_pem(&chain).unwrap();
        assert_eq!((id.role, id.node_id.as_str(), id.cluster_id.as_str()), (Role::Worker, "n1", c.id.as_str()));
    }

    #[test]
    fn node_certificates_follow_the_expiry_policy() {
        let mut c = cluster_with(&generate_root_ca().unwrap());
        assert_eq!(node_cert_validity(&c), Duration::from_secs(90 * 24 * 3600));
        c.spec.ca_config.node_cert_expiry = 2 * 3600 * 1_000_000_000;
        assert_eq!(node_cert_validity(&c), Duration::from_secs(7200));
        let key = NodeKey::generate().unwrap();
        let id = NodeIdentity::from_pem(&issue_node_cert(&c, &key.csr_pem, "n1", Role::Worker, &[]).unwrap()).unwrap();
        let validity = id.not_after.duration_since(id.not_before).unwrap();
        assert_eq!(validity.as_secs() / 60, (7200 + 3600) / 60, "2 h, backdated 1 h");
        c.spec.ca_config.node_cert_expiry = 0;
        assert_eq!(node_cert_validity(&c), Duration::from_secs(90 * 24 * 3600));
        c.spec.ca_config.node_cert_expiry = 1;
        assert_eq!(node_cert_validity(&c), Duration::from_secs(3600));
        assert!(matches!(issue_node_cert(&c, "not a csr", "n1", Role::Worker, &[]), Err(SwarmError::BadRequest(_))));
    }

    #[test]
    fn tokens_carry_the_ca_digest() {
        let ca = generate_root_ca().unwrap();
        assert_eq!(cert_digest(ca.cert_pem()).unwrap(), ca.digest());
        let token = new_join_token(&ca.digest());
        assert!(token.starts_with("SWMTKN-1-"));
        assert!(shoal_types::ids::parse_join_token(&token).is_some());
        // The joining side checks the CA against the token with shoal-rpc's encoding.
        let digest = shoal_rpc::pki::token_ca_digest(&token).unwrap();
        shoal_rpc::verify_ca_digest(ca.cert_pem(), digest).unwrap();
        assert_ne!(token, new_join_token(&ca.digest()), "each token has its own secret");
    }
}

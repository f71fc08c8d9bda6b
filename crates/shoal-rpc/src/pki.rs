//! The cluster PKI (swarmkit `ca/`): the root CA, node keys and CSRs, issuing node certificates
//! (the CA decides the subject), reading a node's identity back from its certificate, checking a
//! CA against the digest in a join token, comparing join-token secrets, and renewal timing.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{Rng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::error::{Result, RpcError};

/// CN of the root CA (swarmkit `DefaultRootCN`).
pub const ROOT_CN: &str = "swarm-ca";
/// OU of a manager's certificate.
pub const MANAGER_OU: &str = "swarm-manager";
/// OU of a worker's certificate.
pub const WORKER_OU: &str = "swarm-worker";
/// The DNS name every manager certificate carries and every client verifies, so a manager's
/// address can change without breaking verification.
pub const MANAGER_SERVER_NAME: &str = "swarm-manager";
/// Root CA validity: 20 years (`630720000s`).
pub const ROOT_CA_VALIDITY: Duration = Duration::from_secs(630_720_000);
/// Default node certificate validity: 90 days (`DefaultNodeCertExpiration = 2160h`).
pub const DEFAULT_NODE_CERT_VALIDITY: Duration = Duration::from_secs(2160 * 3600);
/// Shortest node certificate validity the CA issues (swarmkit `MinNodeCertExpiration`).
pub const MIN_NODE_CERT_VALIDITY: Duration = Duration::from_secs(3600);
/// Certificates are backdated by this much to tolerate clock skew.
pub const BACKDATE: Duration = Duration::from_secs(3600);

fn pki<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> RpcError + '_ {
    move |e| RpcError::Pki(format!("{what}: {e}"))
}

/// A node's role as carried in its certificate's OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    /// The certificate OU for this role.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Manager => MANAGER_OU,
            Role::Worker => WORKER_OU,
        }
    }

    /// The role for a certificate OU, if it is one of ours.
    pub fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            MANAGER_OU => Some(Role::Manager),
            WORKER_OU => Some(Role::Worker),
            _ => None,
        }
    }
}

/// The first certificate in a PEM string, as DER.
pub fn cert_der_from_pem(cert_pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(pki("parsing a PEM certificate"))
}

/// SHA-256 of a certificate's DER.
pub fn cert_digest(cert_pem: &str) -> Result<[u8; 32]> {
    Ok(Sha256::digest(cert_der_from_pem(cert_pem)?.as_ref()).into())
}

/// A certificate's digest the way a join token carries it: base 36, zero-padded to 50 chars.
pub fn digest_base36(digest: &[u8; 32]) -> String {
    format!("{:0>50}", shoal_types::ids::base36(digest))
}

/// The CA digest part of a `SWMTKN-1-<digest>-<secret>` join token, if it is well formed.
pub fn token_ca_digest(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("SWMTKN-1-")?;
    let (digest, secret) = rest.split_once('-')?;
    let ok = |x: &str, n: usize| {
        x.len() == n
            && x.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    (ok(digest, 50) && ok(secret, 25)).then_some(digest)
}

/// Check a CA certificate against the 50-char base-36 digest from a join token. Nothing is
/// trusted on first use: a mismatch is an error naming the expected digest.
pub fn verify_ca_digest(ca_pem: &str, token_digest_base36: &str) -> Result<()> {
    let actual = digest_base36(&cert_digest(ca_pem)?);
    if tokens_match(&actual, token_digest_base36) {
        Ok(())
    } else {
        Err(RpcError::CaMismatch {
            expected: token_digest_base36.to_string(),
        })
    }
}

/// Compare two join tokens (or their secrets) in constant time. Both sides are hashed first, so
/// neither the content nor the length of the expected value leaks through timing.
pub fn tokens_match(a: &str, b: &str) -> bool {
    let da = Sha256::digest(a.as_bytes());
    let db = Sha256::digest(b.as_bytes());
    let diff = da
        .iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// When to renew a certificate valid from `issued` to `not_after`: a random point between 50%
/// and 80% of its validity (swarmkit `CertLowerRotationRange`/`CertUpperRotationRange`), so a
/// cluster's renewals do not all arrive at once. An already-expired or inverted range gives
/// `issued`.
pub fn renew_at(not_after: SystemTime, issued: SystemTime) -> SystemTime {
    let Ok(validity) = not_after.duration_since(issued) else {
        return issued;
    };
    let fraction: f64 = rand::thread_rng().gen_range(0.5..=0.8);
    issued + validity.mul_f64(fraction)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x01; // positive, no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn check_name(what: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(RpcError::Pki(format!(
            "invalid {what} {value:?}: want 1-64 characters of [A-Za-z0-9._-]"
        )))
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns(name: &str) -> Result<SanType> {
    Ok(SanType::DnsName(
        name.try_into().map_err(pki("building a DNS SAN"))?,
    ))
}

/// The cluster's root certificate authority.
pub struct RootCa {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    not_after: SystemTime,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("digest", &digest_base36(&self.digest()))
            .finish_non_exhaustive()
    }
}

impl RootCa {
    /// A new self-signed root: ECDSA P-256, CN `swarm-ca`, valid 20 years, backdated 1 h.
    pub fn generate() -> Result<RootCa> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(pki("generating the root CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, ROOT_CN);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ROOT_CA_VALIDITY).into();
        let cert = params
            .self_signed(&key)
            .map_err(pki("signing the root CA"))?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Load a root CA from its certificate and PKCS#8 key. The certificate must be a CA
    /// certificate and the key must be its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa> {
        let cert_der = cert_der_from_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(pki("parsing the root CA key"))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(pki("parsing the root CA certificate"))?;
        if !x509.is_ca() {
            return Err(RpcError::Pki(
                "the root CA certificate is not a CA certificate".into(),
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(RpcError::Pki(
                "the root CA key does not belong to the root CA certificate".into(),
            ));
        }
        let not_after = asn1_time(&x509.validity().not_after);
        Ok(RootCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            cert_der,
            key,
            not_after,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PKCS#8 PEM), for storing it with the cluster.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the certificate's DER (the digest a join token carries).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.cert_der.as_ref()).into()
    }

    /// Sign a node certificate for the key in `csr_pem`. The CA decides the whole subject — CN =
    /// `node_id`, OU = the role, O = `cluster_id` — and the SANs; whatever the CSR asks for
    /// (subject, SANs, extensions) is ignored, only its public key is used and its signature
    /// checked. Managers get the SANs `swarm-manager`, `swarm-ca`, the node ID and
    /// `advertise_ips`; workers `swarm-worker` and the node ID. Valid for `validity` (at least
    /// 1 h, never past the CA), backdated 1 h. Both server and client auth, so a manager's cert
    /// serves and dials.
    pub fn issue(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        cluster_id: &str,
        advertise_ips: &[IpAddr],
        validity: Duration,
    ) -> Result<String> {
        check_name("node ID", node_id)?;
        check_name("cluster ID", cluster_id)?;
        if validity < MIN_NODE_CERT_VALIDITY {
            return Err(RpcError::Pki(format!(
                "node certificate validity {validity:?} is below the minimum of {MIN_NODE_CERT_VALIDITY:?}"
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(pki("invalid certificate signing request"))?;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, cluster_id);
        dn.push(DnType::OrganizationalUnitName, role.ou());
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        let mut sans = match role {
            Role::Manager => vec![dns(MANAGER_SERVER_NAME)?, dns(ROOT_CN)?],
            Role::Worker => vec![dns(WORKER_OU)?],
        };
        if is_dns_label(node_id) {
            sans.push(dns(node_id)?);
        }
        if role == Role::Manager {
            sans.extend(advertise_ips.iter().map(|ip| SanType::IpAddress(*ip)));
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + validity).min(self.not_after).into();

        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)
            .map_err(pki("loading the root CA as issuer"))?;
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(pki("signing the node certificate"))?;
        Ok(cert.pem())
    }
}

/// A node's fresh private key and the CSR to send to the CA.
#[derive(Clone)]
pub struct NodeKey {
    /// PKCS#8 PEM of an ECDSA P-256 key; never leaves the node.
    pub key_pem: String,
    /// PEM CSR for that key. Its subject is empty: the CA decides the subject.
    pub csr_pem: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    pub fn generate() -> Result<NodeKey> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(pki("generating a node key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(pki("building a CSR"))?;
        let csr_pem = csr.pem().map_err(pki("encoding a CSR"))?;
        Ok(NodeKey {
            key_pem: key.serialize_pem(),
            csr_pem,
        })
    }
}

/// Who a node certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// CN.
    pub node_id: String,
    /// From the OU.
    pub role: Role,
    /// O.
    pub cluster_id: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

fn asn1_time(t: &x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

impl NodeIdentity {
    pub fn from_pem(cert_pem: &str) -> Result<NodeIdentity> {
        Self::from_der(cert_der_from_pem(cert_pem)?.as_ref())
    }

    /// Read CN/OU/O and validity from a node certificate. Does not verify the chain: use it on
    /// certificates rustls has verified, or on this node's own certificate.
    pub fn from_der(der: &[u8]) -> Result<NodeIdentity> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(pki("parsing a node certificate"))?;
        let subject = cert.subject();
        let one = |mut it: Box<
            dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>> + '_,
        >,
                   what: &str| {
            let first = it
                .next()
                .ok_or_else(|| RpcError::Pki(format!("node certificate has no {what}")))?;
            if it.next().is_some() {
                return Err(RpcError::Pki(format!(
                    "node certificate has more than one {what}"
                )));
            }
            first
                .as_str()
                .map(str::to_string)
                .map_err(pki("reading a certificate name"))
        };
        let node_id = one(Box::new(subject.iter_common_name()), "CN")?;
        let ou = one(Box::new(subject.iter_organizational_unit()), "OU")?;
        let cluster_id = one(Box::new(subject.iter_organization()), "O")?;
        let role = Role::from_ou(&ou)
            .ok_or_else(|| RpcError::Pki(format!("unknown node role (OU) {ou:?}")))?;
        Ok(NodeIdentity {
            node_id,
            role,
            cluster_id,
            not_before: asn1_time(&cert.validity().not_before),
            not_after: asn1_time(&cert.validity().not_after),
        })
    }

    /// When this certificate should be renewed (see [`renew_at`]).
    pub fn renew_at(&self) -> SystemTime {
        renew_at(self.not_after, self.not_before + BACKDATE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sans_of(pem: &str) -> Vec<String> {
        use x509_parser::extensions::GeneralName;
        let der = cert_der_from_pem(pem).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        let Some(ext) = x.subject_alternative_name().unwrap() else {
            return vec![];
        };
        ext.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
                }
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn csr_asking_for_admin() -> (String, String) {
        // A CSR whose subject and SANs try to claim a manager identity in another cluster.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec![
            "swarm-manager".to_string(),
            "evil.example".to_string(),
        ])
        .unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "root");
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, MANAGER_OU);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "other-cluster");
        let csr = params.serialize_request(&key).unwrap();
        (key.serialize_pem(), csr.pem().unwrap())
    }

    #[test]
    fn root_ca_round_trips_and_matches_shoal_types_token_encoding() {
        let ca = RootCa::generate().unwrap();
        let again = RootCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.digest(), ca.digest());
        let id = NodeIdentity::from_pem(ca.cert_pem());
        assert!(id.is_err(), "the root has no OU/O");

        let token = shoal_types::join_token(&ca.digest(), &shoal_types::ids::new_token_secret());
        let digest = token_ca_digest(&token).unwrap();
        assert_eq!(digest, digest_base36(&ca.digest()));
        assert_eq!(
            digest,
            format!("{:0>50}", shoal_types::ids::base36(&ca.digest()))
        );
        verify_ca_digest(ca.cert_pem(), digest).unwrap();

        let other = RootCa::generate().unwrap();
        let err = verify_ca_digest(other.cert_pem(), digest).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("remote CA does not match fingerprint. Expected: {digest}")
        );

        // A key that is not the CA's is refused.
        assert!(RootCa::from_pem(ca.cert_pem(), other.key_pem()).is_err());
    }

    #[test]
    fn issued_certs_carry_the_identity_the_ca_chose() {
        let ca = RootCa::generate().unwrap();
        let cluster = shoal_types::ids::new_id();
        let (manager_id, worker_id) = (shoal_types::ids::new_id(), shoal_types::ids::new_id());

        let (_key, csr) = csr_asking_for_admin();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let pem = ca
            .issue(
                &csr,
                &worker_id,
                Role::Worker,
                &cluster,
                &[ip],
                DEFAULT_NODE_CERT_VALIDITY,
            )
            .unwrap();
        let id = NodeIdentity::from_pem(&pem).unwrap();
        assert_eq!(
            (id.node_id.as_str(), id.role, id.cluster_id.as_str()),
            (worker_id.as_str(), Role::Worker, cluster.as_str())
        );
        // Nothing from the CSR survives: no swarm-manager SAN, no CN root, no other cluster.
        let der = cert_der_from_pem(&pem).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = sans_of(&pem);
        assert_eq!(sans, vec!["swarm-worker".to_string(), worker_id.clone()]);
        assert!(
            !sans
                .iter()
                .any(|s| s.contains("swarm-manager") || s.contains("evil")),
            "{sans:?}"
        );
        assert!(
            !sans.iter().any(|s| s.contains("10.0.0.7")),
            "workers get no IP SANs: {sans:?}"
        );
        assert!(
            !x.subject().to_string().contains("root")
                && !x.subject().to_string().contains("other-cluster")
        );
        assert_eq!(x.issuer().to_string(), "CN=swarm-ca");
        assert!(!x.is_ca());
        // 90 days, backdated an hour.
        let validity = id.not_after.duration_since(id.not_before).unwrap();
        assert_eq!(
            validity.as_secs() / 60,
            (DEFAULT_NODE_CERT_VALIDITY + BACKDATE).as_secs() / 60
        );
        assert!(id.not_before < SystemTime::now() - Duration::from_secs(3500));

        let key = NodeKey::generate().unwrap();
        let pem = ca
            .issue(
                &key.csr_pem,
                &manager_id,
                Role::Manager,
                &cluster,
                &[ip],
                Duration::from_secs(7200),
            )
            .unwrap();
        let id = NodeIdentity::from_pem(&pem).unwrap();
        assert_eq!(
            (id.node_id.as_str(), id.role, id.cluster_id.as_str()),
            (manager_id.as_str(), Role::Manager, cluster.as_str())
        );
        assert_eq!(
            sans_of(&pem),
            vec![
                "swarm-manager".to_string(),
                "swarm-ca".into(),
                manager_id.clone(),
                "10.0.0.7".into()
            ]
        );

        assert!(ca
            .issue(
                &key.csr_pem,
                &manager_id,
                Role::Manager,
                &cluster,
                &[],
                Duration::from_secs(60)
            )
            .is_err());
        assert!(ca
            .issue(
                &key.csr_pem,
                "bad id,O=x",
                Role::Manager,
                &cluster,
                &[],
                DEFAULT_NODE_CERT_VALIDITY
            )
            .is_err());
        assert!(ca
            .issue(
                "not a csr",
                &manager_id,
                Role::Manager,
                &cluster,
                &[],
                DEFAULT_NODE_CERT_VALIDITY
            )
            .is_err());
    }

    #[test]
    fn token_comparison_and_renewal_window() {
        assert!(tokens_match("SWMTKN-1-abc-def", "SWMTKN-1-abc-def"));
        assert!(!tokens_match("SWMTKN-1-abc-def", "SWMTKN-1-abc-deg"));
        assert!(!tokens_match("SWMTKN-1-abc-def", "SWMTKN-1-abc-de"));
        assert!(!tokens_match("", "x"));

        let issued = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_after = issued + Duration::from_secs(1000);
        for _ in 0..200 {
            let at = renew_at(not_after, issued)
                .duration_since(issued)
                .unwrap()
                .as_secs_f64();
            assert!((500.0..=800.0).contains(&at), "{at}");
        }
        assert_eq!(renew_at(issued, not_after), not_after);
        assert!(token_ca_digest("SWMTKN-1-short-x").is_none());
    }
}

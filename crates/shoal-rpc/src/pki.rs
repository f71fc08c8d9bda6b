//! The cluster PKI (swarmkit `ca/`): the root CA, node keys and CSRs, issuing node certificates
//! (the CA decides the subject), reading a node's identity back from its certificate, checking a
//! CA against the digest in a join token, comparing join-token secrets, renewal timing, and the
//! pieces of a root rotation: cross-signing a new root with the current one (so certificates the
//! new root issues chain to both) and the issuer of a certificate chain (`TLSInfo`).

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rand::{Rng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
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

/// A certificate's DER as PEM, the way this crate writes every certificate: 64-column base64
/// lines, `\n` line ends, a trailing newline (what rcgen writes too). Comparing PEM strings is
/// then comparing certificates.
pub fn pem_encode_cert(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Every certificate in a PEM bundle, each re-encoded by [`pem_encode_cert`]. An input with
/// no certificate is an error.
pub fn cert_pems(bundle: &str) -> Result<Vec<String>> {
    let certs = CertificateDer::pem_slice_iter(bundle.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(pki("parsing a PEM certificate bundle"))?;
    if certs.is_empty() {
        return Err(RpcError::Pki("no certificate in the PEM input".into()));
    }
    Ok(certs.iter().map(|c| pem_encode_cert(c.as_ref())).collect())
}

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(value.len(), &mut out);
    out.extend_from_slice(value);
    out
}

/// A private key PEM as PKCS#8, the form the CA code signs with: PKCS#8 (`PRIVATE KEY`) is
/// kept; a SEC1 EC key (`EC PRIVATE KEY`, what `openssl ecparam -genkey` writes) on P-256 or
/// P-384 is wrapped into PKCS#8. Other formats are refused.
pub fn pkcs8_key_pem(key_pem: &str) -> Result<String> {
    use rustls::pki_types::PrivateKeyDer;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pki("parsing a private key"))?;
    let sec1 = match key {
        PrivateKeyDer::Pkcs8(_) => return Ok(key_pem.to_string()),
        PrivateKeyDer::Sec1(sec1) => sec1,
        _ => {
            return Err(RpcError::Pki(
                "unsupported private key format: use a PKCS#8 or an EC (SEC1) key".into(),
            ))
        }
    };
    const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    for curve in [P256, P384] {
        let mut alg = der_tlv(0x06, EC_PUBLIC_KEY);
        alg.extend(der_tlv(0x06, curve));
        let mut info = der_tlv(0x02, &[0]);
        info.extend(der_tlv(0x30, &alg));
        info.extend(der_tlv(0x04, sec1.secret_sec1_der()));
        let der = der_tlv(0x30, &info);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        if KeyPair::from_pem(&pem).is_ok() {
            return Ok(pem);
        }
    }
    Err(RpcError::Pki(
        "unsupported EC private key: only P-256 and P-384 keys are supported".into(),
    ))
}

/// Whether the first certificate of `cert_pem` is for the private key in `key_pem`.
pub fn cert_matches_key(cert_pem: &str, key_pem: &str) -> Result<bool> {
    let der = cert_der_from_pem(cert_pem)?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(&der).map_err(pki("parsing a certificate"))?;
    let key = KeyPair::from_pem(key_pem).map_err(pki("parsing a private key"))?;
    Ok(x509.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

/// When the first certificate of `cert_pem` expires.
pub fn cert_not_after(cert_pem: &str) -> Result<SystemTime> {
    let der = cert_der_from_pem(cert_pem)?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(&der).map_err(pki("parsing a certificate"))?;
    Ok(asn1_time(&x509.validity().not_after))
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

/// Lower and upper bound of the point in a certificate's validity at which it is renewed
/// (swarmkit `CertLowerRotationRange`/`CertUpperRotationRange`).
pub const RENEW_RANGE: (f64, f64) = (0.5, 0.8);

/// A random renewal point in [`RENEW_RANGE`]; pick one per certificate, so a cluster's renewals
/// do not all arrive at once.
pub fn renew_fraction() -> f64 {
    rand::thread_rng().gen_range(RENEW_RANGE.0..=RENEW_RANGE.1)
}

/// When to renew a certificate valid from `issued` to `not_after`, at `fraction` of its
/// validity (clamped to [`RENEW_RANGE`]). An inverted range gives `issued`.
pub fn renew_at_fraction(not_after: SystemTime, issued: SystemTime, fraction: f64) -> SystemTime {
    let Ok(validity) = not_after.duration_since(issued) else {
        return issued;
    };
    let fraction = if fraction.is_nan() {
        RENEW_RANGE.0
    } else {
        fraction.clamp(RENEW_RANGE.0, RENEW_RANGE.1)
    };
    issued + validity.mul_f64(fraction)
}

/// When to renew a certificate valid from `issued` to `not_after`: a random point between 50%
/// and 80% of its validity (see [`renew_fraction`]). An already-expired or inverted range gives
/// `issued`.
pub fn renew_at(not_after: SystemTime, issued: SystemTime) -> SystemTime {
    renew_at_fraction(not_after, issued, renew_fraction())
}

/// Who issued a certificate, the way Docker's `TLSInfo` names it: the issuer's subject and its
/// public key (SubjectPublicKeyInfo), both as DER.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IssuerInfo {
    pub subject: Vec<u8>,
    pub public_key: Vec<u8>,
}

impl IssuerInfo {
    /// Docker's `TLSInfo` for a node trusting `trust_root` whose certificate this issued
    /// (`CertIssuerSubject`/`CertIssuerPublicKey` base64, like Go's `[]byte`).
    pub fn tls_info(&self, trust_root: &str) -> shoal_types::TlsInfo {
        let b64 = base64::engine::general_purpose::STANDARD;
        shoal_types::TlsInfo {
            trust_root: trust_root.to_string(),
            cert_issuer_subject: b64.encode(&self.subject),
            cert_issuer_public_key: b64.encode(&self.public_key),
        }
    }

    /// The issuer of the first (leaf) certificate of `chain_pem`: its issuer name, and the key of
    /// the certificate that issued it, looked up among the rest of the chain and then the
    /// `anchors_pem` bundle by subject and key identifier. No signature is checked: use it on
    /// this node's own chain, or on chains TLS verified.
    pub fn of_chain(chain_pem: &str, anchors_pem: &str) -> Result<IssuerInfo> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(pki("parsing a certificate chain"))?;
        let anchors = CertificateDer::pem_slice_iter(anchors_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(pki("parsing the trust roots"))?;
        let leaf = chain
            .first()
            .ok_or_else(|| RpcError::Pki("no certificate in the chain".into()))?;
        let (_, leaf) =
            x509_parser::parse_x509_certificate(leaf).map_err(pki("parsing a certificate"))?;
        let issuer = leaf.issuer().as_raw();
        let aki = authority_key_id(&leaf);
        for candidate in chain.iter().skip(1).chain(anchors.iter()) {
            let Ok((_, c)) = x509_parser::parse_x509_certificate(candidate) else {
                continue;
            };
            if c.subject().as_raw() != issuer {
                continue;
            }
            if let (Some(aki), Some(ski)) = (&aki, subject_key_id(&c)) {
                if *aki != ski {
                    continue;
                }
            }
            return Ok(IssuerInfo {
                subject: issuer.to_vec(),
                public_key: c.public_key().raw.to_vec(),
            });
        }
        Err(RpcError::Pki(
            "the certificate's issuer is neither in its chain nor among the trust roots".into(),
        ))
    }
}

fn subject_key_id(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

fn authority_key_id(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

/// An X.509 name as an rcgen name with the same attributes, order and string types, so it
/// encodes to the same DER (checked by the callers). Multi-valued RDNs, repeated attribute
/// types and unusual string types are refused.
fn dn_of(name: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let unsupported =
        |why: &str| RpcError::Pki(format!("unsupported CA certificate subject: {why}"));
    let mut dn = DistinguishedName::new();
    let mut seen = Vec::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(unsupported("a multi-valued or empty name component"));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| unsupported("an attribute type that is not an OID"))?
            .collect();
        let ty = DnType::from_oid(&oid);
        if seen.contains(&ty) {
            return Err(unsupported("a repeated attribute type"));
        }
        seen.push(ty.clone());
        let value = attr.attr_value();
        let text = std::str::from_utf8(value.data).map_err(|_| unsupported("a non-UTF-8 value"))?;
        let value = match value.header.tag() {
            Tag::PrintableString => DnValue::PrintableString(
                text.try_into()
                    .map_err(|_| unsupported("an invalid PrintableString"))?,
            ),
            Tag::Ia5String => DnValue::Ia5String(
                text.try_into()
                    .map_err(|_| unsupported("an invalid IA5String"))?,
            ),
            Tag::Utf8String => DnValue::Utf8String(text.to_string()),
            _ => {
                return Err(unsupported(
                    "a string type other than UTF8, Printable or IA5",
                ))
            }
        };
        dn.push(ty, value);
    }
    Ok(dn)
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
    /// DER of the certificate's subject name and SubjectPublicKeyInfo.
    subject_der: Vec<u8>,
    spki_der: Vec<u8>,
    /// The certificate's subject key identifier, if it has one.
    key_id: Option<Vec<u8>>,
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

    /// Load a root CA from its certificate and key (PKCS#8, or SEC1 EC: see
    /// [`pkcs8_key_pem`]). The certificate must be a CA certificate and the key must be its key. The certificate PEM is normalised
    /// ([`pem_encode_cert`]); only the first certificate of a bundle is used.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa> {
        let cert_der = cert_der_from_pem(cert_pem)?;
        let key_pem = &pkcs8_key_pem(key_pem)?;
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
        if not_after <= SystemTime::now() {
            return Err(RpcError::Pki("the root CA certificate has expired".into()));
        }
        let subject_der = x509.subject().as_raw().to_vec();
        let spki_der = x509.public_key().raw.to_vec();
        let key_id = subject_key_id(&x509);
        Ok(RootCa {
            cert_pem: pem_encode_cert(cert_der.as_ref()),
            key_pem: key_pem.to_string(),
            cert_der,
            key,
            not_after,
            subject_der,
            spki_der,
            key_id,
        })
    }

    /// Who certificates issued by this CA name as their issuer (its subject and key).
    pub fn issuer_info(&self) -> IssuerInfo {
        IssuerInfo {
            subject: self.subject_der.clone(),
            public_key: self.spki_der.clone(),
        }
    }

    /// `new`'s certificate signed by this CA: the same subject, key and key identifier as
    /// `new`'s root certificate, issued by this one (swarmkit's cross-signed intermediate). A
    /// node certificate issued by `new` and sent with this intermediate verifies against both
    /// roots, so nodes can move to `new` one at a time while everyone still trusts this root.
    /// Valid as long as both roots are.
    pub fn cross_sign(&self, new: &RootCa) -> Result<String> {
        let (_, x509) = x509_parser::parse_x509_certificate(&new.cert_der)
            .map_err(pki("parsing the new root CA certificate"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn_of(x509.subject())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        if let Some(id) = &new.key_id {
            params.key_identifier_method = KeyIdMethod::PreSpecified(id.clone());
        }
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = (SystemTime::now() - BACKDATE).into();
        params.not_after = new.not_after.min(self.not_after).into();
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)
            .map_err(pki("loading the current root CA as issuer"))?;
        let cert = params
            .signed_by(&new.key, &issuer)
            .map_err(pki("cross-signing the new root CA"))?;
        let (_, x) = x509_parser::parse_x509_certificate(cert.der())
            .map_err(pki("parsing the cross-signed certificate"))?;
        if x.subject().as_raw() != new.subject_der.as_slice()
            || x.issuer().as_raw() != self.subject_der.as_slice()
        {
            return Err(RpcError::Pki(
                "unsupported CA certificate subject: it does not encode back to the same name"
                    .into(),
            ));
        }
        Ok(pem_encode_cert(cert.der()))
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
        // The issuer name is re-encoded by rcgen: it must come out as the CA's subject, byte
        // for byte, or no verifier would chain the certificate to this CA.
        let (_, x) = x509_parser::parse_x509_certificate(cert.der())
            .map_err(pki("parsing the issued certificate"))?;
        if x.issuer().as_raw() != self.subject_der.as_slice() {
            return Err(RpcError::Pki(
                "unsupported CA certificate subject: it does not encode back to the same name"
                    .into(),
            ));
        }
        Ok(pem_encode_cert(cert.der()))
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

    fn verify_both_ways(anchors: &[&RootCa], chain: &str) -> std::result::Result<(), String> {
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        for a in anchors {
            roots.add(a.cert_der().clone()).unwrap();
        }
        let roots = std::sync::Arc::new(roots);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        let provider = crate::tls::provider();
        let now = rustls::pki_types::UnixTime::now();
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap()
        .verify_client_cert(&certs[0], &certs[1..], now)
        .map_err(|e| format!("as a client: {e}"))?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap()
            .verify_server_cert(
                &certs[0],
                &certs[1..],
                &rustls::pki_types::ServerName::try_from(MANAGER_SERVER_NAME).unwrap(),
                &[],
                now,
            )
            .map_err(|e| format!("as a server: {e}"))?;
        Ok(())
    }

    fn manager_cert(ca: &RootCa) -> String {
        let key = NodeKey::generate().unwrap();
        ca.issue(
            &key.csr_pem,
            &shoal_types::ids::new_id(),
            Role::Manager,
            "cluster",
            &[],
            DEFAULT_NODE_CERT_VALIDITY,
        )
        .unwrap()
    }

    #[test]
    fn pem_encoding_matches_rcgen_and_bundles_split() {
        let ca = RootCa::generate().unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "x");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(pem_encode_cert(cert.der()), cert.pem());
        let bundle = format!("{}\r\n{}", ca.cert_pem(), cert.pem().replace('\n', "\r\n"));
        assert_eq!(
            cert_pems(&bundle).unwrap(),
            vec![ca.cert_pem().to_string(), cert.pem()]
        );
        assert!(cert_pems("nothing").is_err());
        // from_pem normalises line ends.
        let crlf = RootCa::from_pem(&ca.cert_pem().replace('\n', "\r\n"), ca.key_pem()).unwrap();
        assert_eq!(crlf.cert_pem(), ca.cert_pem());
    }

    #[test]
    fn cross_signed_chains_verify_against_the_old_and_the_new_root() {
        let old = RootCa::generate().unwrap();
        let new = RootCa::generate().unwrap();
        let cross = old.cross_sign(&new).unwrap();

        // Before the rotation: a node certificate of the old root.
        let before = manager_cert(&old);
        verify_both_ways(&[&old], &before).unwrap();
        assert!(verify_both_ways(&[&new], &before).is_err());
        assert_eq!(
            IssuerInfo::of_chain(&before, old.cert_pem()).unwrap(),
            old.issuer_info()
        );

        // During: issued by the new root, sent with the cross-signed certificate. Every node
        // verifies it whichever root it trusts.
        let during = format!("{}{cross}", manager_cert(&new));
        verify_both_ways(&[&old], &during).unwrap();
        verify_both_ways(&[&new], &during).unwrap();
        verify_both_ways(&[&old, &new], &during).unwrap();
        assert_eq!(
            IssuerInfo::of_chain(&during, old.cert_pem()).unwrap(),
            new.issuer_info()
        );
        // Without the intermediate, a node trusting only the old root refuses it.
        let leaf_only = cert_pems(&during).unwrap().remove(0);
        assert!(verify_both_ways(&[&old], &leaf_only).is_err());

        // After: directly from the new root; the issuer is found among the trust roots even
        // though both roots have the same subject (by key identifier).
        let after = manager_cert(&new);
        verify_both_ways(&[&new], &after).unwrap();
        assert!(verify_both_ways(&[&old], &after).is_err());
        let bundle = format!("{}{}", old.cert_pem(), new.cert_pem());
        assert_eq!(
            IssuerInfo::of_chain(&after, &bundle).unwrap(),
            new.issuer_info()
        );
        assert_eq!(
            IssuerInfo::of_chain(&before, &bundle).unwrap(),
            old.issuer_info()
        );
        assert!(IssuerInfo::of_chain(&after, old.cert_pem()).is_err());

        // Same subject, other key: Docker's CLI tells the roots apart by the public key.
        assert_eq!(old.issuer_info().subject, new.issuer_info().subject);
        assert_ne!(old.issuer_info().public_key, new.issuer_info().public_key);
        let info = new.issuer_info().tls_info(old.cert_pem());
        assert_eq!(info.trust_root, old.cert_pem());
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(
            b64.decode(&info.cert_issuer_public_key).unwrap(),
            new.issuer_info().public_key
        );
    }

    #[test]
    fn a_given_ca_with_another_subject_can_be_rotated_to() {
        // An operator's CA (`swarm ca --rotate --ca-cert --ca-key`): PrintableString names,
        // several attributes.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::OrganizationName,
            DnValue::PrintableString("Example Corp".try_into().unwrap()),
        );
        params
            .distinguished_name
            .push(DnType::CommonName, "ops root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let given = RootCa::from_pem(&cert.pem(), &key.serialize_pem()).unwrap();
        let old = RootCa::generate().unwrap();
        let cross = old.cross_sign(&given).unwrap();
        let during = format!("{}{cross}", manager_cert(&given));
        verify_both_ways(&[&old], &during).unwrap();
        verify_both_ways(&[&given], &during).unwrap();
        assert_eq!(
            IssuerInfo::of_chain(&during, old.cert_pem()).unwrap(),
            given.issuer_info()
        );
        // And back.
        let back = given.cross_sign(&old).unwrap();
        verify_both_ways(&[&given], &format!("{}{back}", manager_cert(&old))).unwrap();

        let node_key = NodeKey::generate().unwrap();
        let node_cert = old
            .issue(
                &node_key.csr_pem,
                "n1",
                Role::Worker,
                "c1",
                &[],
                DEFAULT_NODE_CERT_VALIDITY,
            )
            .unwrap();
        assert!(cert_matches_key(&node_cert, &node_key.key_pem).unwrap());
        assert!(!cert_matches_key(&node_cert, &NodeKey::generate().unwrap().key_pem).unwrap());

        // A certificate that is not a CA, or a key that is not its key, is refused.
        let leaf = manager_cert(&old);
        assert!(RootCa::from_pem(&leaf, old.key_pem()).is_err());
        assert!(RootCa::from_pem(given.cert_pem(), old.key_pem()).is_err());
    }

    #[test]
    fn sec1_ec_keys_are_accepted_as_pkcs8() {
        use rustls::pki_types::PrivateKeyDer;
        let ca = RootCa::generate().unwrap();
        // The SEC1 key inside the PKCS#8 one, as `openssl ecparam -genkey` would write it.
        let der = PrivateKeyDer::from_pem_slice(ca.key_pem().as_bytes()).unwrap();
        let PrivateKeyDer::Pkcs8(p8) = der else {
            panic!()
        };
        let (_, info) = x509_parser::der_parser::parse_der(p8.secret_pkcs8_der()).unwrap();
        let inner = info.as_sequence().unwrap()[2].as_slice().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
        let sec1 = format!("-----BEGIN EC PRIVATE KEY-----\n{b64}\n-----END EC PRIVATE KEY-----\n");
        let again = RootCa::from_pem(ca.cert_pem(), &sec1).unwrap();
        assert_eq!(again.digest(), ca.digest());
        assert!(again.key_pem().contains("BEGIN PRIVATE KEY"));
        assert_eq!(pkcs8_key_pem(ca.key_pem()).unwrap(), ca.key_pem());
        assert!(pkcs8_key_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"
        )
        .is_err());
    }

    #[test]
    fn renewal_points_stay_in_the_window() {
        let issued = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_after = issued + Duration::from_secs(1000);
        let at = |f: f64| {
            renew_at_fraction(not_after, issued, f)
                .duration_since(issued)
                .unwrap()
        };
        assert_eq!(at(0.6), Duration::from_secs(600));
        assert_eq!(at(0.0), Duration::from_secs(500));
        assert_eq!(at(1.0), Duration::from_secs(800));
        assert_eq!(at(f64::NAN), Duration::from_secs(500));
        for _ in 0..200 {
            let f = renew_fraction();
            assert!((0.5..=0.8).contains(&f), "{f}");
        }
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

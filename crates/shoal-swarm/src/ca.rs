//! The cluster's root certificate authority and the join tokens derived from it.
//!
//! The root CA is created at `swarm init` (ECDSA P-256, CN `swarm-ca`, 20 years, like swarmkit)
//! and kept in the store with the cluster so any manager can sign after a failover. Join tokens
//! carry the SHA-256 digest of the root certificate so a joining node can check it is talking to
//! the right cluster before trusting it (issue 4 uses this for mutual TLS).

use sha2::{Digest, Sha256};

use crate::error::{Result, SwarmError};

/// A freshly generated root CA.
pub struct RootCa {
    pub cert_pem: String,
    pub key_pem: String,
    pub digest: [u8; 32],
}

pub fn generate_root_ca() -> Result<RootCa> {
    let internal = |e: rcgen::Error| SwarmError::Internal(format!("generating the root CA: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(internal)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(internal)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "swarm-ca");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(630_720_000)).into();
    let cert = params.self_signed(&key).map_err(internal)?;
    let digest: [u8; 32] = Sha256::digest(cert.der().as_ref()).into();
    Ok(RootCa { cert_pem: cert.pem(), key_pem: key.serialize_pem(), digest })
}

/// The SHA-256 of the DER inside a PEM certificate.
pub fn cert_digest(cert_pem: &str) -> Result<[u8; 32]> {
    let body: String = cert_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = shoal_types::ids::base64_decode(&body)
        .ok_or_else(|| SwarmError::Internal("the stored root CA certificate is not valid PEM".into()))?;
    Ok(Sha256::digest(&der).into())
}

/// A new join token for this CA.
pub fn new_join_token(digest: &[u8; 32]) -> String {
    shoal_types::join_token(digest, &shoal_types::ids::new_token_secret())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_ca_digest() {
        let ca = generate_root_ca().unwrap();
        assert_eq!(cert_digest(&ca.cert_pem).unwrap(), ca.digest);
        let token = new_join_token(&ca.digest);
        assert!(token.starts_with("SWMTKN-1-"));
        let parsed = shoal_types::ids::parse_join_token(&token).unwrap();
        let again = new_join_token(&ca.digest);
        assert_ne!(token, again, "each token has its own secret");
        let _ = parsed;
    }
}

//! The cluster's root certificate authority and the join tokens derived from it.
//!
//! The root CA ([`shoal_rpc::RootCa`]: ECDSA P-256, CN `swarm-ca`, 20 years, like swarmkit) is
//! created at `swarm init` and kept in the store with the cluster (`Cluster.store_only`) so any
//! manager can sign after a failover. Join tokens carry the SHA-256 digest of the root
//! certificate so a joining node checks it is talking to the right cluster before trusting it.

use shoal_rpc::RootCa;

use crate::error::{Result, SwarmError};

pub fn generate_root_ca() -> Result<RootCa> {
    RootCa::generate().map_err(|e| SwarmError::Internal(format!("generating the root CA: {e}")))
}

/// The root CA kept in the cluster object.
pub fn load_root_ca(cluster: &shoal_types::Cluster) -> Result<RootCa> {
    let secrets = cluster
        .store_only
        .as_ref()
        .ok_or_else(|| SwarmError::Internal("the cluster has no root CA".into()))?;
    RootCa::from_pem(&secrets.root_ca_cert_pem, &secrets.root_ca_key_pem)
        .map_err(|e| SwarmError::Internal(format!("loading the root CA: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;

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

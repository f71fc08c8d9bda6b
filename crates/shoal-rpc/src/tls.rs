//! rustls configurations for node-to-node TLS, always with the `ring` provider passed in
//! explicitly (no process-wide default provider is assumed or installed). TLS 1.3 and 1.2 only;
//! rustls offers only ECDHE with AES-GCM or ChaCha20-Poly1305, matching swarmkit.
//!
//! - [`server_config`]: a manager's listener. Presents the manager's node certificate chain,
//!   verifies client certificates against the cluster root CA bundle (every certificate in the
//!   CA PEM is a trust anchor: two during a root rotation), but also admits clients without a
//!   certificate (a joining node has none yet); routes decide with [`crate::require`].
//! - [`client_config`]: a node with a certificate (chain). Trusts only the cluster CA bundle and
//!   checks that the server's certificate carries the DNS name `swarm-manager` (every manager
//!   cert has it, so a manager's IP may change).
//! - [`anonymous_client_config`]: the same trust, without a client certificate (the join call).
//! - `insecure_bootstrap_config` (crate-private): accepts any server certificate; used only by
//!   [`crate::client::fetch_root_ca`] to download the CA, which is then checked against the join
//!   token digest before anything trusts it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The rustls config types the functions here build (re-exported so users need no rustls).
pub use rustls::{ClientConfig, ServerConfig};

use crate::error::{Result, RpcError};

/// The ALPN protocol both sides offer.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The crypto provider used everywhere in this crate: rustls' `ring` provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn tls<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> RpcError + '_ {
    move |e| RpcError::TlsConfig(format!("{what}: {e}"))
}

/// Every certificate of the `ca_pem` bundle as a trust anchor (during a root rotation a node
/// trusts the old and the new root).
fn roots(ca_pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(tls("parsing the cluster root CA bundle"))?;
    if certs.is_empty() {
        return Err(RpcError::TlsConfig(
            "no certificate in the cluster root CA bundle".into(),
        ));
    }
    for cert in certs {
        roots.add(cert).map_err(tls("adding the cluster root CA"))?;
    }
    Ok(roots)
}

fn chain_and_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(tls("parsing the node certificate"))?;
    if chain.is_empty() {
        return Err(RpcError::TlsConfig(
            "no certificate in the node certificate PEM".into(),
        ));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(tls("parsing the node key"))?;
    Ok((chain, key))
}

/// A manager's server config (see the module docs).
pub fn server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(tls("building the client certificate verifier"))?;
    let (chain, key) = chain_and_key(cert_pem, key_pem)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(tls("choosing TLS versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls("loading the node certificate"))?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

fn client_builder(
    roots_or_any: Option<RootCertStore>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(tls("choosing TLS versions"))?;
    Ok(match roots_or_any {
        Some(roots) => builder.with_root_certificates(roots),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { provider })),
    })
}

fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Arc::new(config)
}

/// A node's client config: presents its certificate, trusts only the cluster CA.
pub fn client_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ClientConfig>> {
    let (chain, key) = chain_and_key(cert_pem, key_pem)?;
    let config = client_builder(Some(roots(ca_pem)?))?
        .with_client_auth_cert(chain, key)
        .map_err(tls("loading the node certificate"))?;
    Ok(finish(config))
}

/// A client config without a client certificate that trusts only the cluster CA: for a
/// joining node's join call, after the CA has been checked against the join token.
pub fn anonymous_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>> {
    Ok(finish(
        client_builder(Some(roots(ca_pem)?))?.with_no_client_auth(),
    ))
}

/// Accepts any server certificate (signatures in the handshake are still checked, so the peer
/// holds the key of the certificate it sent). Only for downloading the root CA, whose digest is
/// then checked against the join token.
pub(crate) fn insecure_bootstrap_config() -> Result<Arc<ClientConfig>> {
    Ok(finish(client_builder(None)?.with_no_client_auth()))
}

#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

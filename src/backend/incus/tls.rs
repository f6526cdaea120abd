//! TLS for a remote Incus: TLS 1.3 only (1.2 with `INCUS_INSECURE_TLS=1`),
//! ECDHE suites only, lxgate's client certificate, and the server verified
//! against a pinned certificate or a CA.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, SignatureScheme};
use sha2::{Digest, Sha256};

/// The crypto provider, restricted to forward-secret AEAD suites (every
/// TLS 1.3 suite is; for 1.2 only ECDHE with AES-GCM or ChaCha20-Poly1305).
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.cipher_suites.retain(|s| match s {
        rustls::SupportedCipherSuite::Tls13(_) => true,
        rustls::SupportedCipherSuite::Tls12(s) => {
            let name = format!("{:?}", s.common.suite);
            name.starts_with("TLS_ECDHE_") && (name.contains("_GCM_") || name.contains("CHACHA20"))
        }
    });
    Arc::new(p)
}

/// SHA-256 of a DER certificate, lowercase hex, as `incus config trust list` shows it.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

pub fn read_cert(path: &Path) -> Result<CertificateDer<'static>, String> {
    CertificateDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// What the server certificate is checked against.
#[derive(Debug)]
enum Check {
    /// Exactly this certificate (Incus servers are usually self-signed, so
    /// the certificate itself is what is trusted).
    Pinned(Vec<u8>),
    /// Trust on first use, for `lxgate remote trust`: any certificate is
    /// accepted and recorded so its fingerprint can be compared and pinned.
    Record(Mutex<Option<Vec<u8>>>),
}

/// Verifies the server certificate by `Check`; the handshake signatures are
/// verified by the crypto provider in every case.
#[derive(Debug)]
pub struct CertVerifier {
    check: Check,
    provider: Arc<CryptoProvider>,
}

impl CertVerifier {
    /// A verifier that accepts and records whatever certificate it is shown.
    pub fn recording() -> Arc<Self> {
        Arc::new(Self {
            check: Check::Record(Mutex::new(None)),
            provider: provider(),
        })
    }

    /// The certificate a recording verifier saw.
    pub fn seen(&self) -> Option<Vec<u8>> {
        match &self.check {
            Check::Record(seen) => seen.lock().expect("verifier lock").clone(),
            Check::Pinned(_) => None,
        }
    }
}

impl ServerCertVerifier for CertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match &self.check {
            Check::Pinned(der) if end_entity.as_ref() == der.as_slice() => {
                Ok(ServerCertVerified::assertion())
            }
            Check::Pinned(_) => Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            Check::Record(seen) => {
                *seen.lock().expect("verifier lock") = Some(end_entity.to_vec());
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
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
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
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

/// How the server is verified.
pub enum ServerTrust {
    Pinned(CertificateDer<'static>),
    Ca(Vec<CertificateDer<'static>>),
    FirstUse(Arc<CertVerifier>),
}

/// Builds the client configuration for a remote Incus.
pub fn client_config(
    trust: ServerTrust,
    client_cert: CertificateDer<'static>,
    client_key: PrivateKeyDer<'static>,
    allow_tls12: bool,
) -> Result<ClientConfig, String> {
    let provider = provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match trust {
        ServerTrust::Pinned(der) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CertVerifier {
                check: Check::Pinned(der.to_vec()),
                provider,
            })),
        ServerTrust::FirstUse(recorder) => builder
            .dangerous()
            .with_custom_certificate_verifier(recorder),
        ServerTrust::Ca(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("INCUS_TRUSTED_CA_PATH: {e}"))?;
            }
            builder.with_root_certificates(roots)
        }
    };
    let mut config = builder
        .with_client_auth_cert(vec![client_cert], client_key)
        .map_err(|e| format!("client certificate: {e}"))?;
    // HTTP/1.1: Incus's operation websockets are upgraded HTTP/1.1 requests.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forward_secret_aead_suites_remain() {
        let p = provider();
        assert!(!p.cipher_suites.is_empty());
        for s in &p.cipher_suites {
            let name = format!("{:?}", s.suite());
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name}"
            );
        }
    }
}

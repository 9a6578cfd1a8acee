//! TLS client configurations (rustls with ring): one that verifies servers
//! against the system's trusted roots, and one for `sslverify=off` that
//! accepts any certificate (still checking the handshake's signatures).

use qimg_driver_util::tls::{self as util, AcceptAnyCertificate};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use std::sync::{Arc, OnceLock};
use thiserror::Error;

/// Why a TLS connection could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TlsError {
    /// The system has no trusted root certificates to verify against.
    #[error(
        "server certificate verification failed: no trusted root certificates found on this system"
    )]
    NoRoots,
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Setup(String),
    /// The server's certificate is not trusted or not for this host.
    #[error("server certificate verification failed: {0}")]
    Certificate(String),
    /// Any other handshake or record-layer failure.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The host cannot be a TLS server name.
    #[error("URL rejected: bad TLS server name '{0}'")]
    Name(String),
}

impl From<&rustls::Error> for TlsError {
    fn from(e: &rustls::Error) -> Self {
        match e {
            rustls::Error::InvalidCertificate(cert) => TlsError::Certificate(describe(cert)),
            other => TlsError::Handshake(other.to_string()),
        }
    }
}

/// Words for why a certificate was refused; rustls prints its common
/// reasons as enum names.
fn describe(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => {
            "certificate issuer is not trusted (unknown authority or self-signed)".into()
        }
        CertificateError::Expired => "certificate has expired".into(),
        CertificateError::NotValidYet => "certificate is not valid yet".into(),
        CertificateError::NotValidForName => "certificate is not valid for this host name".into(),
        CertificateError::Revoked => "certificate is revoked".into(),
        CertificateError::BadSignature => "certificate has a bad signature".into(),
        CertificateError::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            "self-signed certificate (a CA certificate used by the server)".into()
        }
        other => other.to_string(),
    }
}

/// The shared client configuration: verifying (`sslverify=on`) or not.
pub fn config(verify: bool) -> Result<Arc<ClientConfig>, TlsError> {
    static VERIFYING: OnceLock<Result<Arc<ClientConfig>, TlsError>> = OnceLock::new();
    static TRUSTING: OnceLock<Result<Arc<ClientConfig>, TlsError>> = OnceLock::new();
    if verify {
        VERIFYING
            .get_or_init(|| with_roots(system_roots()?))
            .clone()
    } else {
        TRUSTING.get_or_init(trusting).clone()
    }
}

/// A verifying configuration that trusts `roots`.
pub fn with_roots(roots: RootCertStore) -> Result<Arc<ClientConfig>, TlsError> {
    let config = builder()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(finish(config))
}

/// The configuration that accepts every certificate.
fn trusting() -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = AcceptAnyCertificate(util::provider());
    let config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(finish(config))
}

/// A builder with ring and rustls' default protocol versions.
fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    util::builder().map_err(|e| TlsError::Setup(e.to_string()))
}

/// Offers HTTP/1.1 through ALPN.
fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The system's trusted roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` or the
/// distribution's bundle), as curl uses them.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(roots)
}

/// The TLS name of `host`: an IP address or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::Name(host.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build() {
        assert!(config(false).is_ok());
        // The machine's roots may be missing; either way no panic.
        let _ = config(true);
        assert!(with_roots(RootCertStore::empty()).is_ok());
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("example.com"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("bad name!").is_err());
    }

    #[test]
    fn certificate_errors_are_told_apart() {
        let bad = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(
            TlsError::from(&bad).to_string(),
            "server certificate verification failed: certificate issuer is not trusted \
             (unknown authority or self-signed)"
        );
        let other = rustls::Error::DecryptError;
        assert!(matches!(TlsError::from(&other), TlsError::Handshake(_)));
    }
}

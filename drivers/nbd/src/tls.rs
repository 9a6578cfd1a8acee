//! TLS for `tls-creds`: the credentials of a `tls-creds-x509` object,
//! which the host loads from the object's directory and passes with the
//! node's secrets, as a rustls client configuration; and the name the
//! server's certificate must carry (qemu's rule: `tls-hostname`, else the
//! TCP host; a Unix socket needs `tls-hostname` unless `verify-peer=off`).

use crate::error::{NbdError, Result};
use crate::options::Server;
use qimg_driver_util::tls::{builder, provider, AcceptAnyCertificate};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use serde_json::Value;
use std::sync::Arc;

/// A `tls-creds-x509` object as the host passes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// `client` or `server`.
    pub endpoint: String,
    /// Whether the server's certificate is verified.
    pub verify_peer: bool,
    /// `ca-cert.pem`.
    pub ca_cert: String,
    /// `client-cert.pem` and `client-key.pem`, if the directory has them.
    pub client: Option<(String, String)>,
}

impl Credentials {
    /// The object's JSON: `{"qom-type": "tls-creds-x509", "endpoint":
    /// ..., "verify-peer": bool, "ca-cert": PEM, "client-cert": PEM,
    /// "client-key": PEM}` (the last two optional).
    pub fn from_json(id: &str, value: &Value) -> Result<Credentials> {
        let bad = || NbdError::Tls(format!("Invalid TLS credentials with id '{id}'"));
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        if text("qom-type").as_deref() != Some("tls-creds-x509") {
            return Err(NbdError::Unsupported(format!(
                "TLS credentials '{id}' are not x509 credentials, which this qimg build needs"
            )));
        }
        let client = match (text("client-cert"), text("client-key")) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(bad()),
        };
        Ok(Credentials {
            endpoint: text("endpoint").ok_or_else(bad)?,
            verify_peer: value
                .get("verify-peer")
                .and_then(Value::as_bool)
                .ok_or_else(bad)?,
            ca_cert: text("ca-cert").ok_or_else(bad)?,
            client,
        })
    }
}

/// What a connection needs to start TLS.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The client configuration.
    pub config: Arc<ClientConfig>,
    /// The name sent to the server and checked in its certificate, or
    /// why there is none to check (qemu fails the handshake with it).
    pub name: std::result::Result<ServerName<'static>, String>,
    /// The name as given, for messages.
    pub hostname: String,
}

/// The TLS setup for `creds` towards `server`, checking `hostname` (or
/// the TCP host) in its certificate.
pub fn client(creds: &Credentials, server: &Server, hostname: Option<&str>) -> Result<Tls> {
    if creds.endpoint != "client" {
        return Err(NbdError::Tls(
            "Expected TLS credentials for a client endpoint".into(),
        ));
    }
    let hostname = match (hostname, server) {
        (Some(name), _) => Some(name),
        (None, Server::Inet { host, .. }) => Some(host.as_str()),
        (None, Server::Unix { .. }) => None,
    };
    let setup = |e: rustls::Error| NbdError::Tls(format!("TLS setup failed: {e}"));
    let verifier: Arc<dyn ServerCertVerifier> = if creds.verify_peer {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(creds.ca_cert.as_bytes()) {
            let cert =
                cert.map_err(|e| NbdError::Tls(format!("Unable to import CA certificate: {e}")))?;
            roots.add(cert).map_err(setup)?;
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| NbdError::Tls(format!("TLS setup failed: {e}")))?
    } else {
        Arc::new(AcceptAnyCertificate(provider()))
    };
    let config = builder()
        .map_err(setup)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &creds.client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| NbdError::Tls(format!("Unable to import client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| NbdError::Tls(format!("Unable to import client key: {e}")))?;
            config.with_client_auth_cert(chain, key).map_err(setup)?
        }
        None => config.with_no_client_auth(),
    };
    let name = match hostname {
        Some(name) => ServerName::try_from(name.to_string())
            .map_err(|_| format!("Certificate does not match the hostname {name}")),
        None => Err("No hostname for certificate validation".to_string()),
    };
    // Unverified, any name will do: it is only sent.
    let name = match name {
        Err(_) if !creds.verify_peer => Ok(ServerName::try_from("localhost").expect("a DNS name")),
        name => name,
    };
    Ok(Tls {
        config: Arc::new(config),
        name,
        hostname: hostname.unwrap_or_default().to_string(),
    })
}

/// qemu's words for a failed handshake with `hostname`.
pub fn handshake_error(e: &rustls::Error, hostname: &str) -> NbdError {
    use CertificateError as C;
    let text = match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("Certificate does not match the hostname {hostname}")
            }
            C::UnknownIssuer => "The certificate hasn't got a known issuer".into(),
            C::Expired | C::ExpiredContext { .. } => "The certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "The certificate is not yet activated".into()
            }
            C::Revoked => "The certificate has been revoked".into(),
            _ => "The certificate is not trusted".into(),
        },
        other => format!("TLS handshake failed: {other}"),
    };
    NbdError::Tls(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A self-signed CA certificate (made with openssl for these tests).
    const CA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBoDCCAUWgAwIBAgIUZz8pErs/YTufWqTLnzhfrK93ehUwCgYIKoZIzj0EAwIw\n\
HDEaMBgGA1UEAwwRcWltZyB1bml0IHRlc3QgQ0EwIBcNMjYxMjA1MDkyNjQxWhgP\n\
MjEyNjExMTEwOTI2NDFaMBwxGjAYBgNVBAMMEXFpbWcgdW5pdCB0ZXN0IENBMFkw\n\
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAERNnkNMhodA8xuNIkWpy8LZy3tikzYkiv\n\
gfnue/jsjv5+iuDXKyMxK7LjpKKiqa4j0z6JC7w0fcveSU9YZ+Ggg6NjMGEwHQYD\n\
VR0OBBYEFGItyfa5IFHoiYBtBIBqHsy2eaRXMB8GA1UdIwQYMBaAFGItyfa5IFHo\n\
iYBtBIBqHsy2eaRXMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgIEMAoG\n\
CCqGSM49BAMCA0kAMEYCIQCA2V/q5OWKtcn3062Ez3vQVFAn6JMdOmi+/rThSMGS\n\
WgIhAPCcFV9AFL2sJpToGxywRjm+Q035xBT4SQ/vW1QPi4Ps\n\
-----END CERTIFICATE-----\n\
";

    fn creds(verify_peer: bool) -> Credentials {
        Credentials {
            endpoint: "client".into(),
            verify_peer,
            ca_cert: CA.into(),
            client: None,
        }
    }

    #[test]
    fn the_name_checked_is_qemus() {
        let unix = Server::Unix { path: "s".into() };
        let inet = Server::Inet {
            host: "127.0.0.1".into(),
            port: "10809".into(),
        };
        // Verifying over a Unix socket needs tls-hostname.
        let tls = client(&creds(true), &unix, None).unwrap();
        assert_eq!(
            tls.name.unwrap_err(),
            "No hostname for certificate validation"
        );
        assert!(client(&creds(true), &unix, Some("localhost"))
            .unwrap()
            .name
            .is_ok());
        assert!(client(&creds(false), &unix, None).unwrap().name.is_ok());
        let tls = client(&creds(true), &inet, None).unwrap();
        assert_eq!(tls.hostname, "127.0.0.1");
        let mut server = creds(true);
        server.endpoint = "server".into();
        assert_eq!(
            client(&server, &inet, None).unwrap_err().to_string(),
            "Expected TLS credentials for a client endpoint"
        );
    }

    #[test]
    fn credentials_come_as_the_host_passes_them() {
        let value = json!({"qom-type": "tls-creds-x509", "endpoint": "client",
            "verify-peer": false, "ca-cert": CA});
        assert_eq!(Credentials::from_json("t", &value).unwrap(), creds(false));
        let half = json!({"qom-type": "tls-creds-x509", "endpoint": "client",
            "verify-peer": true, "ca-cert": "CA", "client-cert": "C"});
        assert!(Credentials::from_json("t", &half).is_err());
        let psk = json!({"qom-type": "tls-creds-psk"});
        assert!(Credentials::from_json("t", &psk).is_err());
    }
}

//! TLS for both kinds of connection (replication and regular SQL), with
//! libpq's `sslmode` semantics:
//!
//! | sslmode | TLS | certificate chain checked | host name checked |
//! |---------|-----|---------------------------|-------------------|
//! | disable | no | - | - |
//! | allow, prefer | if the server offers it | no | no |
//! | require | yes | only if a root certificate is configured (as libpq) | no |
//! | verify-ca | yes | yes | no |
//! | verify-full | yes | yes | yes |
//!
//! Root certificates come from `sslrootcert`, else `~/.postgresql/root.crt`
//! (libpq's default). A client certificate is used when `sslcert` and
//! `sslkey` are both set. rustls with the `ring` provider; no OpenSSL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::pg::conninfo::{ConnInfo, SslMode};

/// TLS configuration and handshake errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No root certificate for a verifying mode.
    #[error(
        "sslmode={mode} requires a root certificate: set sslrootcert=<file> in the connection string or create {default}"
    )]
    MissingRootCert {
        /// The configured mode.
        mode: SslMode,
        /// libpq's default location.
        default: String,
    },
    /// A certificate or key file could not be read or parsed.
    #[error("cannot load {what} from {path}: {reason}")]
    BadFile {
        /// Which file (root certificate, client certificate, client key).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The host is not a valid DNS name or IP address for TLS.
    #[error("invalid host name for TLS: {0:?}")]
    BadServerName(String),
    /// The TLS handshake failed (e.g. certificate not trusted, name mismatch).
    #[error("TLS handshake with {endpoint} failed: {source}")]
    Handshake {
        /// `host:port`.
        endpoint: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Whether a connection must fail rather than fall back to plain text.
pub fn requires_tls(mode: SslMode) -> bool {
    matches!(mode, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
}

/// The rustls configuration for `info`, or `None` when TLS is not attempted
/// (`sslmode=disable`, or a unix socket).
pub fn client_config(info: &ConnInfo) -> Result<Option<ClientConfig>, TlsError> {
    if info.ssl_mode == SslMode::Disable {
        return Ok(None);
    }
    Ok(Some(build_config(info)?))
}

/// The rustls configuration for `info`, built even for `sslmode=disable`
/// (tokio-postgres wants a connector; with `disable` it never uses it).
pub fn build_config(info: &ConnInfo) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let roots = load_roots(info)?;
    let verifier: Arc<dyn ServerCertVerifier> = match (info.ssl_mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?
        }
        (SslMode::VerifyCa | SslMode::Require, Some(roots)) => Arc::new(ChainOnlyVerifier {
            inner: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?,
        }),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(TlsError::MissingRootCert {
                mode: info.ssl_mode,
                default: default_root_cert().display().to_string(),
            });
        }
        _ => Arc::new(NoVerifier { algorithms: provider.signature_verification_algorithms }),
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let config = match (&info.ssl_cert, &info.ssl_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad_file("client certificate", cert, e))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| bad_file("client key", key, e))?;
            builder.with_client_auth_cert(certs, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// The TLS server name for `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::BadServerName(host.to_owned()))
}

fn default_root_cert() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".postgresql").join("root.crt")
}

/// Root certificates from `sslrootcert` (must exist) or libpq's default
/// location (used only if present).
fn load_roots(info: &ConnInfo) -> Result<Option<RootCertStore>, TlsError> {
    let path = match &info.ssl_root_cert {
        Some(path) => path.clone(),
        None => {
            let default = default_root_cert();
            if !default.is_file() {
                return Ok(None);
            }
            default
        }
    };
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad_file("root certificate", &path, e))?;
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(bad_file("root certificate", &path, "no usable certificate in file"));
    }
    Ok(Some(store))
}

fn bad_file(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::BadFile { what, path: path.to_owned(), reason: reason.to_string() }
}

/// `verify-ca`: the chain must lead to a trusted root; the name may differ.
#[derive(Debug)]
struct ChainOnlyVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(ok) => Ok(ok),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer` / `require` without a root certificate: encryption without
/// authentication of the server, exactly as libpq does. Handshake signatures
/// are still checked so the session keys belong to the presented certificate.
#[derive(Debug)]
struct NoVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

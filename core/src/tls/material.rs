//! The trust anchor and own identity, loaded from PEM files (or memory),
//! the project's one crypto provider, and the pre-flight check of our own
//! certificate.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::role::peer_identity;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} holds no {what} in PEM form")]
    Empty { what: &'static str, path: PathBuf },
    #[error("{path}: not a valid PEM {what}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("certificate {path} {reason}")]
    OwnCertificate { path: PathBuf, reason: String },
    #[error("invalid address '{address}': {reason}")]
    Address { address: String, reason: String },
}

/// The certificate files one component uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The loaded trust anchor and own identity.
#[derive(Debug)]
pub struct TlsMaterial {
    pub(super) roots: Arc<RootCertStore>,
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: PrivateKeyDer<'static>,
}

impl TlsMaterial {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let ca = read_certs(&files.ca, "CA certificate")?;
        let chain = read_certs(&files.cert, "certificate")?;
        let key = read_key(&files.key)?;
        Self::from_parts(ca, chain, key, &files.ca)
    }

    /// From PEM text held in memory (tests, benchmarks).
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let mem = PathBuf::from("(memory)");
        let ca = parse_certs(ca_pem.as_bytes(), "CA certificate", &mem)?;
        let chain = parse_certs(cert_pem.as_bytes(), "certificate", &mem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "private key",
            path: mem.clone(),
            reason: e.to_string(),
        })?;
        Self::from_parts(ca, chain, key, &mem)
    }

    fn from_parts(
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        ca_path: &Path,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| TlsError::Pem {
                what: "CA certificate",
                path: ca_path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        Ok(TlsMaterial {
            roots: Arc::new(roots),
            chain,
            key,
        })
    }

    /// Checks our own certificate the way a peer will: chains to the CA we
    /// were given, and is valid now. Catches the common mistakes (an expired
    /// certificate, a certificate from another CA) before a handshake turns
    /// them into an opaque refusal.
    pub fn check_own_certificate(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let Some((leaf, intermediates)) = self.chain.split_first() else {
            return Err(TlsError::Empty {
                what: "certificate",
                path: files.cert.clone(),
            });
        };
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), crypto_provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let now = UnixTime::now();
        match verifier.verify_client_cert(leaf, intermediates, now) {
            Ok(_) => Ok(()),
            Err(rustls::Error::InvalidCertificate(e)) => {
                let until = not_after(leaf).unwrap_or_default();
                let reason = match e {
                    rustls::CertificateError::Expired
                    | rustls::CertificateError::ExpiredContext { .. } => {
                        format!(
                            "has expired (valid until {until}); issue a new one with `fleetctl certs issue`"
                        )
                    }
                    rustls::CertificateError::NotValidYet
                    | rustls::CertificateError::NotValidYetContext { .. } => {
                        "is not valid yet (check the clock)".to_string()
                    }
                    rustls::CertificateError::UnknownIssuer => {
                        format!("is not signed by the fleet CA in {}", files.ca.display())
                    }
                    other => format!("is not acceptable: {other}"),
                };
                Err(TlsError::OwnCertificate {
                    path: files.cert.clone(),
                    reason,
                })
            }
            Err(other) => Err(TlsError::OwnCertificate {
                path: files.cert.clone(),
                reason: other.to_string(),
            }),
        }
    }

    /// The role and name in our own certificate.
    pub fn own_identity(&self) -> Option<crate::role::PeerIdentity> {
        self.chain.first().and_then(|c| peer_identity(c).ok())
    }
}

/// The one crypto provider of the project.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs [`crypto_provider`] as the process default (for libraries that ask
/// for it). Called once from each `main`; a second call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate's end of validity, for the message that says it expired.
fn not_after(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.to_string())
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    parse_certs(&bytes, what, path)
}

fn parse_certs(
    bytes: &[u8],
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what: "private key",
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

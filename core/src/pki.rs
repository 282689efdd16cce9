//! The fleet's own certificate authority: `fleetctl certs init` and
//! `fleetctl certs issue`. ECDSA P-256 keys, written 0600.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::role::Role;

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "a fleet CA already exists in {0}; use it, or pass --force to replace it (every certificate it issued stops working)"
    )]
    CaExists(PathBuf),
    #[error("no fleet CA in {0}: run `fleetctl certs init --dir {0}` first")]
    NoCa(PathBuf),
    #[error("{0} already exists; pass --force to overwrite it")]
    CertExists(PathBuf),
    #[error(
        "invalid certificate name '{0}': use 1-64 letters, digits, '.', '-' or '_', not starting with '.'"
    )]
    InvalidName(String),
    #[error("invalid subject alternative name '{san}': {reason}")]
    InvalidSan { san: String, reason: String },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("validity must be at least one day, got {0}")]
    InvalidValidity(i64),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Validity window of an issued certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From a minute ago (clock skew) for `days` days.
    pub fn days_from_now(days: i64) -> Result<Self, PkiError> {
        if days < 1 {
            return Err(PkiError::InvalidValidity(days));
        }
        let now = OffsetDateTime::now_utc();
        Ok(Validity {
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::days(days),
        })
    }
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub role: Role,
    pub name: String,
    /// Extra DNS names or IP addresses (the name itself is added as a DNS
    /// name when it is a valid one).
    pub sans: Vec<String>,
    pub validity: Validity,
}

/// Paths written by an issue.
#[derive(Debug, Clone)]
pub struct IssuedPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates a new fleet CA in `dir` (ca.pem, ca.key 0600).
pub fn init_ca(dir: &Path, force: bool) -> Result<PathBuf, PkiError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if !force && (cert_path.exists() || key_path.exists()) {
        return Err(PkiError::CaExists(dir.to_path_buf()));
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "fleet CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "fleet");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::days(3650);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_secret(&key_path, key.serialize_pem().as_bytes())?;
    write_public(&cert_path, cert.pem().as_bytes())?;
    Ok(cert_path)
}

/// Issues a leaf certificate signed by the CA in `ca_dir`, written to
/// `out_dir/NAME.pem` and `out_dir/NAME.key` (0600).
pub fn issue(
    ca_dir: &Path,
    out_dir: &Path,
    request: &IssueRequest,
    force: bool,
) -> Result<IssuedPaths, PkiError> {
    validate_name(&request.name)?;
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    if !ca_cert_path.exists() || !ca_key_path.exists() {
        return Err(PkiError::NoCa(ca_dir.to_path_buf()));
    }
    let cert_path = out_dir.join(format!("{}.pem", request.name));
    let key_path = out_dir.join(format!("{}.key", request.name));
    if !force && (cert_path.exists() || key_path.exists()) {
        return Err(PkiError::CertExists(cert_path));
    }
    let ca_pem = fs::read_to_string(&ca_cert_path).map_err(io_err(&ca_cert_path))?;
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
    let issuer = load_issuer(&ca_pem, &ca_key_pem)?;

    let (cert_pem, key_pem) = issue_pem(&issuer, request)?;
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    write_secret(&key_path, key_pem.as_bytes())?;
    write_public(&cert_path, cert_pem.as_bytes())?;
    Ok(IssuedPaths {
        cert: cert_path,
        key: key_path,
    })
}

/// A CA able to sign.
pub type CaIssuer = Issuer<'static, KeyPair>;

/// A CA from its certificate and key in PEM form.
pub fn load_issuer(ca_pem: &str, ca_key_pem: &str) -> Result<CaIssuer, PkiError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    Ok(Issuer::from_ca_cert_pem(ca_pem, ca_key)?)
}

/// Issues a leaf certificate in memory: (certificate PEM, key PEM).
pub fn issue_pem(issuer: &CaIssuer, request: &IssueRequest) -> Result<(String, String), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, request.name.clone());
    params
        .distinguished_name
        .push(DnType::OrganizationName, "fleet");
    let mut sans = vec![SanType::URI(request.role.uri().try_into()?)];
    if is_dns_name(&request.name) {
        sans.push(SanType::DnsName(request.name.clone().try_into()?));
    }
    for san in &request.sans {
        sans.push(parse_san(san)?);
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = request.validity.not_before;
    params.not_after = request.validity.not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A throwaway CA in memory, for tests and benchmarks that need "another CA".
pub fn ephemeral_ca() -> Result<(String, CaIssuer), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "ephemeral CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

fn validate_name(name: &str) -> Result<(), PkiError> {
    if crate::is_valid_name(name) {
        Ok(())
    } else {
        Err(PkiError::InvalidName(name.to_string()))
    }
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.parse::<IpAddr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn parse_san(san: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = san.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if is_dns_name(san) {
        return san
            .to_string()
            .try_into()
            .map(SanType::DnsName)
            .map_err(|e: rcgen::Error| PkiError::InvalidSan {
                san: san.to_string(),
                reason: e.to_string(),
            });
    }
    Err(PkiError::InvalidSan {
        san: san.to_string(),
        reason: "expected a DNS name or an IP address".into(),
    })
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    // Create with 0600 from the start: never a moment where the key is readable.
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    fs::write(path, bytes).map_err(io_err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::peer_identity;

    #[test]
    fn issued_certificate_carries_role_and_name_and_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), false).unwrap();
        let request = IssueRequest {
            role: Role::Viewer,
            name: "alice".into(),
            sans: vec!["127.0.0.1".into(), "alice.example".into()],
            validity: Validity::days_from_now(30).unwrap(),
        };
        let paths = issue(dir.path(), dir.path(), &request, false).unwrap();
        let mode = fs::metadata(&paths.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let ca_key_mode = fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(ca_key_mode, 0o600);
        let pem = fs::read_to_string(&paths.cert).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c)
            .unwrap();
        let identity = peer_identity(&der).unwrap();
        assert_eq!(identity.name, "alice");
        assert_eq!(identity.role, Role::Viewer);
    }

    #[test]
    fn refuses_to_overwrite_ca_and_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), false).unwrap();
        assert!(matches!(
            init_ca(dir.path(), false),
            Err(PkiError::CaExists(_))
        ));
        let request = IssueRequest {
            role: Role::Operator,
            name: "../evil".into(),
            sans: vec![],
            validity: Validity::days_from_now(1).unwrap(),
        };
        assert!(matches!(
            issue(dir.path(), dir.path(), &request, false),
            Err(PkiError::InvalidName(_))
        ));
        let request = IssueRequest {
            name: "ok".into(),
            sans: vec!["not a name!".into()],
            ..request
        };
        assert!(matches!(
            issue(dir.path(), dir.path(), &request, false),
            Err(PkiError::InvalidSan { .. })
        ));
    }
}

//! A throwaway fleet CA with every certificate the tests need, including
//! the ones that must be refused.

use std::path::{Path, PathBuf};

use fleet_core::pki::{self, IssueRequest, Validity};
use fleet_core::role::Role;
use fleet_core::tls::TlsFiles;
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};

pub struct TestPki {
    dir: TempDir,
}

impl TestPki {
    /// A CA and: controller, agent, operator "alice", viewer "bob",
    /// "mallory" (operator, but from another CA) and "old" (an expired operator).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        pki::init_ca(dir.path(), false).expect("CA");
        let pki = TestPki { dir };
        pki.issue(Role::Controller, "controller", &["127.0.0.1", "localhost"]);
        pki.issue(Role::Agent, "agent", &["127.0.0.1", "localhost"]);
        pki.issue(Role::Operator, "alice", &[]);
        pki.issue(Role::Viewer, "bob", &[]);
        pki.issue_from_other_ca(Role::Operator, "mallory");
        pki.issue_expired(Role::Operator, "old");
        pki
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join(pki::CA_CERT_FILE)
    }

    pub fn issue(&self, role: Role, name: &str, sans: &[&str]) -> TlsFiles {
        let request = IssueRequest {
            role,
            name: name.to_string(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            validity: Validity::days_from_now(1).expect("validity"),
        };
        pki::issue(self.dir.path(), self.dir.path(), &request, true).expect("issue");
        self.files(name)
    }

    /// The files of a certificate issued earlier under `name`.
    pub fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            ca: self.ca(),
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        }
    }

    fn write_pair(&self, name: &str, cert: &str, key: &str) {
        std::fs::write(self.dir.path().join(format!("{name}.pem")), cert).expect("write");
        std::fs::write(self.dir.path().join(format!("{name}.key")), key).expect("write");
    }

    fn issue_from_other_ca(&self, role: Role, name: &str) {
        let (_, issuer) = pki::ephemeral_ca().expect("other CA");
        let request = IssueRequest {
            role,
            name: name.to_string(),
            sans: vec!["127.0.0.1".into()],
            validity: Validity::days_from_now(1).expect("validity"),
        };
        let (cert, key) = pki::issue_pem(&issuer, &request).expect("issue");
        self.write_pair(name, &cert, &key);
    }

    fn issue_expired(&self, role: Role, name: &str) {
        let ca_key =
            std::fs::read_to_string(self.dir.path().join(pki::CA_KEY_FILE)).expect("ca key");
        let ca_pem = std::fs::read_to_string(self.ca()).expect("ca");
        let key = rcgen_issuer(&ca_pem, &ca_key);
        let now = OffsetDateTime::now_utc();
        let request = IssueRequest {
            role,
            name: name.to_string(),
            sans: vec!["127.0.0.1".into()],
            validity: Validity {
                not_before: now - Duration::days(10),
                not_after: now - Duration::days(1),
            },
        };
        let (cert, key) = pki::issue_pem(&key, &request).expect("issue");
        self.write_pair(name, &cert, &key);
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn rcgen_issuer(ca_pem: &str, ca_key: &str) -> pki::CaIssuer {
    pki::load_issuer(ca_pem, ca_key).expect("load CA")
}

//! Roles live in certificates, as a SAN URI `fleet://role/<role>`; the name
//! is the certificate's common name. Nothing else (no header, no token) can
//! claim a role.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

pub const ROLE_URI_PREFIX: &str = "fleet://role/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The fleet controller: the only client an agent accepts.
    Controller,
    /// A host agent: the only server a controller talks to.
    Agent,
    /// A person or automation that may change the fleet.
    Operator,
    /// A person or automation that may only read.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Controller, Role::Agent, Role::Operator, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown role '{0}': expected one of controller, agent, operator, viewer")]
pub struct UnknownRole(String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// Who is on the other end of a verified TLS connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerIdentity {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error("certificate '{name}' carries no fleet role (no SAN URI {ROLE_URI_PREFIX}<role>)")]
    NoRole { name: String },
    #[error("certificate '{name}' carries more than one fleet role")]
    SeveralRoles { name: String },
    #[error("certificate '{name}' carries an unknown fleet role '{role}'")]
    UnknownRole { name: String, role: String },
}

/// Reads the fleet identity (common name and role SAN) from a DER certificate.
/// Call only on certificates whose chain has already been verified.
pub fn peer_identity(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("(no common name)")
        .to_string();
    let mut roles = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general_name in &san.value.general_names {
            if let GeneralName::URI(uri) = general_name
                && let Some(role) = uri.strip_prefix(ROLE_URI_PREFIX)
            {
                roles.push(role.to_string());
            }
        }
    }
    match roles.as_slice() {
        [] => Err(IdentityError::NoRole { name }),
        [role] => match role.parse() {
            Ok(role) => Ok(PeerIdentity { name, role }),
            Err(_) => Err(IdentityError::UnknownRole {
                name,
                role: role.clone(),
            }),
        },
        _ => Err(IdentityError::SeveralRoles { name }),
    }
}

//! What a verified certificate says about its holder: the name it is issued to, its
//! role, when it expires and its fingerprint.
//!
//! **Roles.** A certificate's role is written as a subject alternative name of type
//! URI, `raft://role/<role>` (see [`ROLE_URI_PREFIX`]). The cluster CA decides it when
//! it issues the certificate, so a holder cannot change it:
//!
//! | certificate                                   | role                 |
//! |-----------------------------------------------|----------------------|
//! | names a node (`node-<id>.raft`)               | [`CertRole::Node`]   |
//! | carries `raft://role/admin`                   | [`CertRole::Admin`]  |
//! | anything else (`raft://role/client`, no role, an unknown role) | [`CertRole::Client`] |
//!
//! An unknown role gets the least rights, so a typo never grants more. What each role
//! may do is the server's decision (raft-server's security model).

use rustls_pki_types::CertificateDer;
use std::fmt;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Subject alternative names of type URI that start with this carry a role.
pub const ROLE_URI_PREFIX: &str = "raft://role/";

/// What a certificate entitles its holder to, as issued by the cluster CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertRole {
    /// An application: reads and writes keys.
    Client,
    /// An operator: everything a client may do, and cluster administration.
    Admin,
    /// A cluster node (its certificate names `node-<id>.raft`).
    Node,
}

impl CertRole {
    /// The role's name, as written in the URI.
    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::Client => "client",
            CertRole::Admin => "admin",
            CertRole::Node => "node",
        }
    }

    /// The subject alternative name URI that gives a certificate this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a certificate says, read once from its DER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name (empty if it has none).
    pub common_name: String,
    /// Who holds it: its first DNS name (`client-<name>.raft`, `node-<id>.raft`), or,
    /// without one, the whole subject. Two certificates the CA issued to the same name
    /// are the same principal (a renewed certificate keeps its holder's sessions).
    pub principal: String,
    /// Its role.
    pub role: CertRole,
    /// The end of its validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// The SHA-256 of the whole certificate (DER), as revocation lists name it.
    pub sha256: [u8; 32],
}

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable certificate: {0}")]
pub struct CertParseError(String);

impl CertInfo {
    /// Reads a DER certificate (already verified against the CA: this does not
    /// verify anything).
    pub fn parse(der: &CertificateDer<'_>) -> Result<CertInfo, CertParseError> {
        let (_, cert) =
            X509Certificate::from_der(der.as_ref()).map_err(|e| CertParseError(e.to_string()))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("")
            .to_string();
        let mut dns = Vec::new();
        let mut role = None;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| CertParseError(e.to_string()))?;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::URI(u) => {
                    if let Some(r) = u.strip_prefix(ROLE_URI_PREFIX) {
                        // Several role URIs: the least of them counts.
                        let r = if r == "admin" {
                            CertRole::Admin
                        } else {
                            CertRole::Client
                        };
                        role = Some(match role {
                            Some(CertRole::Client) => CertRole::Client,
                            _ => r,
                        });
                    }
                }
                _ => {}
            }
        }
        let is_node = dns
            .iter()
            .any(|d| d.starts_with("node-") && d.ends_with(".raft"));
        let role = if is_node {
            CertRole::Node
        } else {
            role.unwrap_or(CertRole::Client)
        };
        let principal = dns
            .first()
            .cloned()
            .unwrap_or_else(|| cert.subject().to_string());
        let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        Ok(CertInfo {
            common_name,
            principal,
            role,
            not_after: cert.validity().not_after.timestamp(),
            sha256,
        })
    }

    /// The fingerprint as lowercase hex (how `raft-server certs` prints it and a
    /// deny-list names it).
    pub fn fingerprint(&self) -> String {
        hex(&self.sha256)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The verified client certificate of a QUIC connection, if it has one.
pub fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?
        .first()
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls;
    use raft_proto::NodeId;
    use rustls_pki_types::pem::PemObject;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM")
    }

    #[test]
    fn roles_come_from_the_role_uri_and_node_names() {
        let ca = tls::generate_ca().expect("CA");
        let admin = tls::issue_client(&ca, "ops", CertRole::Admin).expect("admin");
        let client = tls::issue_client(&ca, "app", CertRole::Client).expect("client");
        let node = tls::issue_node(&ca, NodeId(3)).expect("node");
        let a = CertInfo::parse(&der(&admin.cert)).expect("parse");
        assert_eq!(a.role, CertRole::Admin);
        assert_eq!(a.principal, "client-ops.raft");
        assert_eq!(a.common_name, "client-ops.raft");
        let c = CertInfo::parse(&der(&client.cert)).expect("parse");
        assert_eq!(c.role, CertRole::Client);
        assert_ne!(c.sha256, a.sha256);
        let n = CertInfo::parse(&der(&node.cert)).expect("parse");
        assert_eq!(n.role, CertRole::Node);
        assert_eq!(n.principal, "node-3.raft");
        assert_eq!(a.fingerprint().len(), 64);
        assert!(a.not_after > 0);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(CertInfo::parse(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
    }
}

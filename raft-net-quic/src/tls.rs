//! Certificates and TLS settings.
//!
//! Every node and client holds a certificate signed by the cluster CA. A node's
//! certificate is valid for the DNS name `node-<id>.raft` (and `server.raft`, the name
//! clients check); a client's for `client-<name>.raft`. A dialer checks that the node it
//! reached is the one it meant (through the server name); an acceptor checks that the
//! id a peer claims in its hello is the one its certificate names. Only the `ring`
//! crypto provider is used, and it is passed explicitly everywhere.

use crate::cert::CertRole;
use raft_proto::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ALPN of node-to-node connections.
pub const ALPN_RAFT: &[u8] = b"raft/1";
/// The ALPN of client connections.
pub const ALPN_CLIENT: &[u8] = b"raft-client/1";
/// The name every node's certificate carries for clients.
pub const SERVER_NAME: &str = "server.raft";

/// The DNS name a node's certificate must carry.
pub fn node_name(id: NodeId) -> String {
    format!("node-{}.raft", id.0)
}

/// Why certificates or keys could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{what} {path}: {detail}")]
    File {
        /// What the file should hold ("CA certificate", "certificate", "private key").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        detail: String,
    },
    /// The certificate, key and CA do not fit together (rustls refused them).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("TLS client verification: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Generating a certificate failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A CA, or a node's or client's certificate, with its key, in PEM.
#[derive(Clone, Debug)]
pub struct PemPair {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "raft cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Generates a new cluster CA.
pub fn generate_ca() -> Result<PemPair, TlsError> {
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn issue(
    ca: &PemPair,
    names: Vec<String>,
    tune: impl FnOnce(&mut CertificateParams),
) -> Result<PemPair, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let common_name = names.first().cloned().unwrap_or_default();
    let mut params = CertificateParams::new(names)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    tune(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Issues node `id`'s certificate from `ca`, valid for `node-<id>.raft` and
/// `server.raft`.
pub fn issue_node(ca: &PemPair, id: NodeId) -> Result<PemPair, TlsError> {
    issue(ca, vec![node_name(id), SERVER_NAME.to_string()], |_| {})
}

/// Issues a client certificate from `ca`, valid for `client-<name>.raft`, with `role`
/// (a `raft://role/<role>` URI; see [`crate::cert`]). [`CertRole::Node`] is not a
/// client role: it is issued as [`CertRole::Client`].
pub fn issue_client(ca: &PemPair, name: &str, role: CertRole) -> Result<PemPair, TlsError> {
    let role = match role {
        CertRole::Node => CertRole::Client,
        r => r,
    };
    issue(ca, vec![format!("client-{name}.raft")], |p| {
        if let Ok(uri) = role.uri().try_into() {
            p.subject_alt_names.push(SanType::URI(uri));
        }
    })
}

/// Issues node `id`'s certificate with a validity window (for tests of expiry).
pub fn issue_node_valid(
    ca: &PemPair,
    id: NodeId,
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
) -> Result<PemPair, TlsError> {
    issue(ca, vec![node_name(id), SERVER_NAME.to_string()], |p| {
        p.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    })
}

/// What a node or client presents and trusts.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The cluster CA.
    pub ca: Vec<CertificateDer<'static>>,
    /// The certificate chain presented.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl Identity {
    /// From PEM text (as produced by the generators).
    pub fn from_pem(ca: &str, pair: &PemPair) -> Result<Identity, TlsError> {
        let parse_err = |what: &'static str, detail: String| TlsError::File {
            what,
            path: PathBuf::from("<memory>"),
            detail,
        };
        let ca = CertificateDer::pem_slice_iter(ca.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| parse_err("CA certificate", e.to_string()))?;
        let chain = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| parse_err("certificate", e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes())
            .map_err(|e| parse_err("private key", e.to_string()))?;
        Ok(Identity {
            ca,
            chain,
            key: Arc::new(key),
        })
    }

    /// From PEM files, with errors that name the file and the problem.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let certs = |what: &'static str,
                     path: &Path|
         -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let err = |detail: String| TlsError::File {
                what,
                path: path.to_path_buf(),
                detail,
            };
            let all = CertificateDer::pem_file_iter(path)
                .map_err(|e| {
                    err(format!(
                        "cannot read it ({e}); check the path and permissions"
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(format!("is not valid PEM ({e})")))?;
            if all.is_empty() {
                return Err(err(
                    "holds no certificate (expected a -----BEGIN CERTIFICATE----- block)".into(),
                ));
            }
            Ok(all)
        };
        let ca = certs("CA certificate", ca)?;
        let chain = certs("certificate", cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
            what: "private key",
            path: key.to_path_buf(),
            detail: format!("cannot be used ({e}); expected a PEM private key"),
        })?;
        Ok(Identity {
            ca,
            chain,
            key: Arc::new(key),
        })
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone())?;
        }
        Ok(roots)
    }
}

/// The one crypto provider used: `ring`.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS server side of an endpoint: requires a client certificate from the CA;
/// offers `alpns`; TLS 1.3 only.
pub fn server_config(id: &Identity, alpns: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(id.roots()?), provider.clone())
            .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    config.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}

/// The TLS dialing side: trusts the CA, presents its certificate, speaks `alpn`; TLS 1.3
/// only. (The server name to check is given per connection.)
pub fn client_config(id: &Identity, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(id.roots()?)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Whether `cert` (already verified against the CA during the handshake) names node
/// `id`.
pub fn names_node(cert: &CertificateDer<'_>, id: NodeId) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_name(id)) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Writes a PEM pair to `<dir>/<stem>.crt` and `<dir>/<stem>.key`.
pub fn write_pem(dir: &Path, stem: &str, pair: &PemPair) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, &pair.cert)?;
    write_private(&key, pair.key.as_bytes())?;
    Ok((cert, key))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

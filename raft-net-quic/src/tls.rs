//! Certificates and TLS settings.
//!
//! Every node and client holds a certificate signed by the cluster CA. A node's
//! certificate is valid for the DNS name `node-<id>.raft` (and `server.raft`, the name
//! clients check); a client's for `client-<name>.raft`. A dialer checks that the node it
//! reached is the one it meant (through the server name); an acceptor checks that the
//! id a peer claims in its hello is the one its certificate names. Only the `ring`
//! crypto provider is used, and it is passed explicitly everywhere.

use crate::cert::CertRole;
use crate::revocation::{DenyList, DenyListError, DenyingClientVerifier, DenyingServerVerifier};
use raft_proto::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// A private key file may be read by others than its owner.
    #[error(
        "private key {path} has mode {mode:04o}: it is readable by group or others; make it private to its owner with `chmod 600 {path}`"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// An identity's own certificate is not one its holder can use (see
    /// [`Identity::verify_own`]).
    #[error("{0}")]
    Unusable(String),
    /// The deny-list cannot be used.
    #[error("deny-list {path}: {source}")]
    DenyList {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: DenyListError,
    },
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

/// Days a node's certificate is valid by default.
pub const NODE_VALIDITY_DAYS: u32 = 365;
/// Days a client's (or an administrator's) certificate is valid by default.
pub const CLIENT_VALIDITY_DAYS: u32 = 365;
/// Days the cluster CA is valid by default.
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// How far before its issue a certificate's validity starts, so that a node whose
/// clock is a little behind the issuer's accepts it at once.
pub const BACKDATE: Duration = Duration::from_secs(3600);

/// When a certificate is valid: from `not_before` to `not_after`, in seconds since the
/// Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// The first second it is valid.
    pub not_before: u64,
    /// The last second it is valid.
    pub not_after: u64,
}

impl Validity {
    /// From [`BACKDATE`] before now until `days` days from now.
    pub fn days(days: u32) -> Validity {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Validity {
            not_before: now.saturating_sub(BACKDATE.as_secs()),
            not_after: now.saturating_add(u64::from(days) * 86_400),
        }
    }

    /// From `not_before` to `not_after`, seconds since the Unix epoch (for tests of
    /// expiry, e.g. a window that ended yesterday).
    pub fn from_unix(not_before: u64, not_after: u64) -> Validity {
        Validity {
            not_before,
            not_after,
        }
    }

    fn apply(self, params: &mut CertificateParams) {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + Duration::from_secs(self.not_before);
        params.not_after = epoch + Duration::from_secs(self.not_after);
    }
}

/// Generates a new cluster CA, valid for [`CA_VALIDITY_DAYS`].
pub fn generate_ca() -> Result<PemPair, TlsError> {
    generate_ca_valid(Validity::days(CA_VALIDITY_DAYS))
}

/// Generates a new cluster CA valid for `validity`.
pub fn generate_ca_valid(validity: Validity) -> Result<PemPair, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    validity.apply(&mut params);
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn issue(
    ca: &PemPair,
    names: Vec<String>,
    validity: Validity,
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
    validity.apply(&mut params);
    tune(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Issues node `id`'s certificate from `ca`, valid for `node-<id>.raft` and
/// `server.raft`, for [`NODE_VALIDITY_DAYS`].
pub fn issue_node(ca: &PemPair, id: NodeId) -> Result<PemPair, TlsError> {
    issue_node_valid(ca, id, Validity::days(NODE_VALIDITY_DAYS))
}

/// Issues node `id`'s certificate from `ca`, valid for `validity`.
pub fn issue_node_valid(ca: &PemPair, id: NodeId, validity: Validity) -> Result<PemPair, TlsError> {
    issue(
        ca,
        vec![node_name(id), SERVER_NAME.to_string()],
        validity,
        |_| {},
    )
}

/// Issues a client certificate from `ca`, valid for `client-<name>.raft`, with `role`
/// (a `raft://role/<role>` URI; see [`crate::cert`]), for [`CLIENT_VALIDITY_DAYS`].
/// [`CertRole::Node`] is not a client role: it is issued as [`CertRole::Client`].
pub fn issue_client(ca: &PemPair, name: &str, role: CertRole) -> Result<PemPair, TlsError> {
    issue_client_valid(ca, name, role, Validity::days(CLIENT_VALIDITY_DAYS))
}

/// Issues a client certificate as [`issue_client`] does, valid for `validity`.
pub fn issue_client_valid(
    ca: &PemPair,
    name: &str,
    role: CertRole,
    validity: Validity,
) -> Result<PemPair, TlsError> {
    let role = match role {
        CertRole::Node => CertRole::Client,
        r => r,
    };
    issue(ca, vec![format!("client-{name}.raft")], validity, |p| {
        if let Ok(uri) = role.uri().try_into() {
            p.subject_alt_names.push(SanType::URI(uri));
        }
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
    /// Certificates refused even though the CA signed them (empty unless set with
    /// [`Identity::with_deny_list`]).
    pub deny: Arc<DenyList>,
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
            deny: Arc::new(DenyList::empty()),
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
            deny: Arc::new(DenyList::empty()),
        })
    }

    /// The same identity, refusing the certificates `deny` lists at every handshake.
    pub fn with_deny_list(mut self, deny: DenyList) -> Identity {
        self.deny = Arc::new(deny);
        self
    }

    /// Checks the identity's own certificate as its peers will: its private key
    /// belongs to it, it chains to a CA of the identity's bundle, is valid now, is not
    /// on its deny-list and, for `node`, names that node. Catches a rotation gone wrong (a certificate from another CA,
    /// an expired one, another node's) before it is used.
    pub fn verify_own(&self, node: Option<NodeId>) -> Result<(), TlsError> {
        let Some((end_entity, intermediates)) = self.chain.split_first() else {
            return Err(TlsError::Unusable("the certificate chain is empty".into()));
        };
        rustls::sign::CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider())
            .map_err(|e| {
                TlsError::Unusable(format!(
                    "the private key does not belong to it ({e}); install the key issued with it"
                ))
            })?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider())
                .build()?;
        verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map_err(|e| {
                TlsError::Unusable(format!(
                    "it does not verify against the CA bundle ({e}); issue it from a CA in the bundle, within its validity"
                ))
            })?;
        if self.deny.denies(end_entity) {
            return Err(TlsError::Unusable(
                "it is on the deny-list (revoked)".into(),
            ));
        }
        if let Some(id) = node
            && !names_node(end_entity, id)
        {
            return Err(TlsError::Unusable(format!(
                "it does not name {} (issue node {id}'s own certificate)",
                node_name(id)
            )));
        }
        Ok(())
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

/// The TLS server side of an endpoint: requires a client certificate from the CA that
/// the identity's deny-list does not list; offers `alpns`; TLS 1.3 only.
pub fn server_config(id: &Identity, alpns: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let webpki =
        WebPkiClientVerifier::builder_with_provider(Arc::new(id.roots()?), provider.clone())
            .build()?;
    let verifier = Arc::new(DenyingClientVerifier::new(webpki, id.deny.clone()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    config.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}

/// The TLS dialing side: trusts the CA (except what the identity's deny-list lists),
/// presents its certificate, speaks `alpn`; TLS 1.3 only. (The server name to check is
/// given per connection.)
pub fn client_config(id: &Identity, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let webpki =
        WebPkiServerVerifier::builder_with_provider(Arc::new(id.roots()?), provider.clone())
            .build()?;
    let verifier = Arc::new(DenyingServerVerifier::new(webpki, id.deny.clone()));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
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

/// Refuses a private key file that its group or others may read or write (as ssh
/// does): the error names the file and the `chmod` that fixes it. Always `Ok` off
/// Unix.
pub fn check_key_permissions(path: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| TlsError::File {
            what: "private key",
            path: path.to_path_buf(),
            detail: format!("cannot read it ({e}); check the path and permissions"),
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Reads a deny-list file (see [`crate::revocation`]).
pub fn load_deny_list(path: &Path) -> Result<DenyList, TlsError> {
    DenyList::load(path).map_err(|source| TlsError::DenyList {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a PEM pair to `<dir>/<stem>.crt` and `<dir>/<stem>.key` (mode 0600 on
/// Unix). Each file is replaced atomically (written to `<file>.tmp`, synced, renamed
/// over it), so a node reloading its files never reads half of one; the key is
/// replaced first, then the certificate.
pub fn write_pem(dir: &Path, stem: &str, pair: &PemPair) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    replace_file(&key, pair.key.as_bytes(), true)?;
    replace_file(&cert, pair.cert.as_bytes(), false)?;
    Ok((cert, key))
}

fn replace_file(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // The rename itself must survive a power cut, or a node could start with the old
    // file after the new one was reported written.
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::CertInfo;

    fn info(pem: &str) -> CertInfo {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
        CertInfo::parse(&der).expect("parse")
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    /// `days` from now, give or take a minute (the test's own run time).
    fn about_days_from_now(not_after: i64, days: i64) -> bool {
        (not_after - (now() + days * 86_400)).abs() < 60
    }

    #[test]
    fn certificates_expire_one_year_after_issue_and_the_ca_after_ten() {
        let ca = generate_ca().expect("CA");
        let node = issue_node(&ca, NodeId(1)).expect("node");
        let client = issue_client(&ca, "app", CertRole::Client).expect("client");
        let admin = issue_client(&ca, "ops", CertRole::Admin).expect("admin");
        assert!(about_days_from_now(info(&ca.cert).not_after, 3650));
        for pem in [&node.cert, &client.cert, &admin.cert] {
            let not_after = info(pem).not_after;
            assert!(about_days_from_now(not_after, 365), "{not_after}");
        }
        let short = issue_node_valid(&ca, NodeId(2), Validity::days(7)).expect("node");
        assert!(about_days_from_now(info(&short.cert).not_after, 7));
        let ca2 = generate_ca_valid(Validity::days(30)).expect("CA");
        assert!(about_days_from_now(info(&ca2.cert).not_after, 30));
    }

    #[test]
    fn a_fresh_certificate_is_accepted_by_a_clock_a_little_behind() {
        let ca = generate_ca().expect("CA");
        let v = Validity::days(1);
        assert_eq!(v.not_before + BACKDATE.as_secs() + 86_400, v.not_after);
        let node = Identity::from_pem(&ca.cert, &issue_node(&ca, NodeId(1)).expect("node"))
            .expect("identity");
        let behind = UnixTime::since_unix_epoch(Duration::from_secs(now() as u64 - 600));
        assert!(handshake_at(&node, &node, NodeId(1), behind).is_ok());
    }

    /// Runs a TLS handshake in memory between a dialer and an acceptor; returns the
    /// first error either side reports.
    fn handshake(dialer: &Identity, acceptor: &Identity, target: NodeId) -> Result<(), String> {
        handshake_at(
            dialer,
            acceptor,
            target,
            UnixTime::since_unix_epoch(Duration::from_secs(now() as u64)),
        )
    }

    fn handshake_at(
        dialer: &Identity,
        acceptor: &Identity,
        target: NodeId,
        at: UnixTime,
    ) -> Result<(), String> {
        #[derive(Debug)]
        struct Clock(UnixTime);
        impl rustls::time_provider::TimeProvider for Clock {
            fn current_time(&self) -> Option<UnixTime> {
                Some(self.0)
            }
        }
        let mut client_cfg = client_config(dialer, ALPN_RAFT).map_err(|e| e.to_string())?;
        client_cfg.time_provider = Arc::new(Clock(at));
        let mut server_cfg = server_config(acceptor, &[ALPN_RAFT]).map_err(|e| e.to_string())?;
        server_cfg.time_provider = Arc::new(Clock(at));
        let name = ServerName::try_from(node_name(target)).map_err(|e| e.to_string())?;
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_cfg), name).map_err(|e| e.to_string())?;
        let mut server =
            rustls::ServerConnection::new(Arc::new(server_cfg)).map_err(|e| e.to_string())?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).map_err(|e| e.to_string())?;
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).map_err(|e| e.to_string())?;
            }
            server
                .process_new_packets()
                .map_err(|e| format!("acceptor: {e}"))?;
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).map_err(|e| e.to_string())?;
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).map_err(|e| e.to_string())?;
            }
            client
                .process_new_packets()
                .map_err(|e| format!("dialer: {e}"))?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err("the handshake did not finish".into())
    }

    fn fingerprint(id: &Identity) -> String {
        CertInfo::parse(&id.chain[0]).expect("parse").fingerprint()
    }

    #[test]
    fn the_deny_list_refuses_a_revoked_dialer_and_a_revoked_acceptor() {
        let ca = generate_ca().expect("CA");
        let node = |id: u64| {
            Identity::from_pem(&ca.cert, &issue_node(&ca, NodeId(id)).expect("node"))
                .expect("identity")
        };
        let (one, two) = (node(1), node(2));
        assert_eq!(handshake(&one, &two, NodeId(2)), Ok(()));
        let deny = |revoked: &Identity| {
            DenyList::parse(&format!("# revoked\n{}\n", fingerprint(revoked))).expect("list")
        };
        // The acceptor lists the dialer: the client-certificate verifier refuses it.
        let two_denying_one = two.clone().with_deny_list(deny(&one));
        let e = handshake(&one, &two_denying_one, NodeId(2)).expect_err("refused");
        assert!(e.starts_with("acceptor:") && e.contains("Revoked"), "{e}");
        // The dialer lists the acceptor: the server-certificate verifier refuses it.
        let one_denying_two = one.clone().with_deny_list(deny(&two));
        let e = handshake(&one_denying_two, &two, NodeId(2)).expect_err("refused");
        assert!(e.starts_with("dialer:") && e.contains("Revoked"), "{e}");
        // Others are untouched; webpki still checks names and dates first.
        let three = node(3);
        assert_eq!(handshake(&three, &two_denying_one, NodeId(2)), Ok(()));
        let e = handshake(&one_denying_two, &two, NodeId(3)).expect_err("wrong name");
        assert!(!e.contains("Revoked"), "{e}");
    }

    #[test]
    fn an_expired_certificate_is_refused_for_having_expired() {
        let ca = generate_ca().expect("CA");
        let expired = Identity::from_pem(
            &ca.cert,
            &issue_client_valid(
                &ca,
                "old",
                CertRole::Client,
                Validity::from_unix(1_577_836_800, 1_609_459_200),
            )
            .expect("client"),
        )
        .expect("identity");
        let node = Identity::from_pem(&ca.cert, &issue_node(&ca, NodeId(1)).expect("node"))
            .expect("identity");
        let e = handshake(&expired, &node, NodeId(1)).expect_err("refused");
        assert!(
            e.starts_with("acceptor:") && e.contains("certificate expired"),
            "{e}"
        );
    }

    #[test]
    fn verify_own_catches_a_rotation_gone_wrong() {
        let ca = generate_ca().expect("CA");
        let other_ca = generate_ca().expect("CA");
        let id = |ca_pem: &str, pair: PemPair| Identity::from_pem(ca_pem, &pair).expect("identity");
        let good_pair = issue_node(&ca, NodeId(1)).expect("node");
        let good = id(&ca.cert, good_pair.clone());
        good.verify_own(Some(NodeId(1)))
            .expect("a node's own certificate");
        let cases = [
            (
                id(&ca.cert, issue_node(&other_ca, NodeId(1)).expect("node")),
                "does not verify",
            ),
            (
                id(
                    &ca.cert,
                    issue_node_valid(
                        &ca,
                        NodeId(1),
                        Validity::from_unix(1_577_836_800, 1_609_459_200),
                    )
                    .expect("node"),
                ),
                "does not verify",
            ),
            (
                id(&ca.cert, issue_node(&ca, NodeId(2)).expect("node")),
                "node-1.raft",
            ),
            (
                id(
                    &ca.cert,
                    PemPair {
                        cert: good_pair.cert.clone(),
                        key: issue_node(&ca, NodeId(1)).expect("node").key,
                    },
                ),
                "private key does not belong",
            ),
            (
                good.clone()
                    .with_deny_list(DenyList::parse(&fingerprint(&good)).expect("list")),
                "deny-list",
            ),
        ];
        for (identity, expected) in cases {
            let e = identity
                .verify_own(Some(NodeId(1)))
                .expect_err("refused")
                .to_string();
            assert!(e.contains(expected), "{e} (expected {expected:?})");
        }
        let bundle = format!("{}{}", other_ca.cert, ca.cert);
        id(&bundle, issue_node(&ca, NodeId(1)).expect("node"))
            .verify_own(Some(NodeId(1)))
            .expect("a bundle: any of its CAs");
    }

    #[cfg(unix)]
    #[test]
    fn write_pem_replaces_files_whole_and_keys_private() {
        use std::os::unix::fs::PermissionsExt;
        let ca = generate_ca().expect("CA");
        let dir = std::env::temp_dir().join(format!("raft-tls-write-{}", std::process::id()));
        let first = issue_node(&ca, NodeId(1)).expect("node");
        let (cert, key) = write_pem(&dir, "node1", &first).expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let second = issue_node(&ca, NodeId(1)).expect("node");
        write_pem(&dir, "node1", &second).expect("write again");
        assert_eq!(std::fs::read_to_string(&cert).expect("read"), second.cert);
        assert_eq!(std::fs::read_to_string(&key).expect("read"), second.key);
        let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a replaced key is private again");
        assert!(!dir.join("node1.key.tmp").exists() && !dir.join("node1.crt.tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_key_readable_by_others_is_refused_with_the_chmod_that_fixes_it() {
        use std::os::unix::fs::PermissionsExt;
        let ca = generate_ca().expect("CA");
        let dir = std::env::temp_dir().join(format!("raft-tls-key-mode-{}", std::process::id()));
        let (_, key) =
            write_pem(&dir, "node1", &issue_node(&ca, NodeId(1)).expect("node")).expect("write");
        check_key_permissions(&key).expect("written 0600");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = check_key_permissions(&key)
                .expect_err("refused")
                .to_string();
            assert!(
                e.contains(&format!("chmod 600 {}", key.display()))
                    && e.contains(&format!("{mode:04o}")),
                "{e}"
            );
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        check_key_permissions(&key).expect("0400 is private");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

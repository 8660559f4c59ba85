//! The node's TLS material: its certificate, private key, CA bundle and deny-list.
//!
//! - **Loaded** at start by [`load`]: the key must be private to its owner (Unix: no
//!   group or other permission bits, as ssh demands), and the certificate must verify
//!   against the bundle and name this node.
//! - **Reloaded** by [`Certificates::reload`]: `raft-server run` calls it on SIGHUP, and
//!   [`Certificates::watch`] calls it when a file's modification time, size or inode
//!   changes. New handshakes, accepting and dialing, use the new material;
//!   connections already up stay up (a revoked peer's is closed). A reload that fails
//!   (an unreadable file, a key that does not match the certificate, a certificate
//!   from a CA not in the bundle) keeps the old material and logs an error; it is
//!   tried again when a file changes again or on the next SIGHUP.
//! - **Watched for expiry**: [`Expiry`] gives the seconds left on the node's
//!   certificate and on the CA bundle (its first certificate to expire), shown in
//!   `/metrics` as `raft_certificate_expiry_seconds{cert="node"|"ca"}`; a warning is
//!   logged at start, at each reload and once a day while less than
//!   [`EXPIRY_WARNING`] remains.

use crate::config::ServerConfig;
use raft_net_quic::tls;
use raft_net_quic::{CertInfo, Identity, QuicError, QuicTransport, TlsError};
use raft_proto::NodeId;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Less than this left on a certificate is logged as a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// How long a change to the files must be left alone before they are read.
const SETTLE: Duration = Duration::from_millis(500);

/// How often the expiry warning is repeated while it applies.
const WARNING_EVERY: Duration = Duration::from_secs(86_400);

/// Where a node's TLS material lives (from its configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// The CA bundle.
    pub ca: PathBuf,
    /// The node's certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The deny-list, if any.
    pub deny_list: Option<PathBuf>,
}

impl CertFiles {
    /// The files `config` names.
    pub fn of(config: &ServerConfig) -> CertFiles {
        CertFiles {
            ca: config.ca.clone(),
            cert: config.cert.clone(),
            key: config.key.clone(),
            deny_list: config.deny_list.clone(),
        }
    }

    fn all(&self) -> Vec<&Path> {
        let mut all = vec![self.ca.as_path(), self.cert.as_path(), self.key.as_path()];
        all.extend(self.deny_list.as_deref());
        all
    }
}

/// Why the node's TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertFilesError {
    /// A file cannot be read, parsed or used (named in the error), or the key is
    /// readable by others.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The certificate does not fit: another CA's, expired, revoked or another node's.
    #[error("certificate {path} (key {}) cannot be used by node {node}: {source}", key.display())]
    Unusable {
        /// The certificate file.
        path: PathBuf,
        /// Its key file.
        key: PathBuf,
        /// This node.
        node: NodeId,
        /// Why.
        #[source]
        source: Box<TlsError>,
    },
    /// A certificate cannot be read as X.509.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: raft_net_quic::cert::CertParseError,
    },
}

/// Why a reload did not take effect (the old material stays in use).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The files.
    #[error(transparent)]
    Files(#[from] CertFilesError),
    /// The transport refused the material.
    #[error(transparent)]
    Transport(#[from] QuicError),
}

/// When the node's certificate and its CA bundle expire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// The node's certificate's end of validity, seconds since the Unix epoch.
    pub node_not_after: i64,
    /// The end of validity of the CA bundle's first certificate to expire.
    pub ca_not_after: i64,
}

impl Expiry {
    /// Seconds left (negative once expired) on `("node", ...)` and `("ca", ...)` at
    /// `now` (seconds since the Unix epoch).
    pub fn seconds_left(&self, now: i64) -> [(&'static str, i64); 2] {
        [
            ("node", self.node_not_after - now),
            ("ca", self.ca_not_after - now),
        ]
    }

    /// Logs a warning for each certificate with less than [`EXPIRY_WARNING`] left;
    /// returns how many it warned about.
    pub fn warn_if_close(&self, node: NodeId, files: &CertFiles) -> usize {
        let mut warned = 0;
        for ((which, left), path) in self
            .seconds_left(unix_now())
            .into_iter()
            .zip([&files.cert, &files.ca])
        {
            if left < EXPIRY_WARNING.as_secs() as i64 {
                warned += 1;
                let days = left.div_euclid(86_400);
                if left < 0 {
                    tracing::error!(%node, cert = which, file = %path.display(), days_ago = -days, "the {which} certificate has EXPIRED: peers and clients refuse it; issue a new one and reload (SIGHUP)");
                } else {
                    tracing::warn!(%node, cert = which, file = %path.display(), days_left = days, seconds_left = left, "the {which} certificate expires in less than 30 days: issue a new one and reload (SIGHUP)");
                }
            }
        }
        warned
    }
}

/// What [`load`] read.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Certificate, key, CA bundle and deny-list, for the transport.
    pub identity: Identity,
    /// The node's certificate.
    pub node: CertInfo,
    /// When it and the CA bundle expire.
    pub expiry: Expiry,
    /// The files as they were just before they were read.
    stamps: Vec<Stamp>,
}

/// Reads and checks node `node`'s TLS material: the files parse, the key is private
/// to its owner, the certificate matches the key, chains to the bundle, is valid now,
/// is not revoked and names the node.
pub fn load(files: &CertFiles, node: NodeId) -> Result<Loaded, CertFilesError> {
    let stamps = stamps(files);
    let identity = Identity::load(&files.ca, &files.cert, &files.key)?;
    tls::check_key_permissions(&files.key)?;
    let identity = match &files.deny_list {
        Some(path) => identity.with_deny_list(tls::load_deny_list(path)?),
        None => identity,
    };
    identity
        .verify_own(Some(node))
        .map_err(|source| CertFilesError::Unusable {
            path: files.cert.clone(),
            key: files.key.clone(),
            node,
            source: Box::new(source),
        })?;
    let parse = |path: &Path, der| {
        CertInfo::parse(der).map_err(|source| CertFilesError::Parse {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut ca_not_after = i64::MAX;
    for der in &identity.ca {
        ca_not_after = ca_not_after.min(parse(&files.ca, der)?.not_after);
    }
    let first = identity
        .chain
        .first()
        .ok_or_else(|| CertFilesError::Unusable {
            path: files.cert.clone(),
            key: files.key.clone(),
            node,
            source: Box::new(TlsError::Unusable("the certificate chain is empty".into())),
        })?;
    let info = parse(&files.cert, first)?;
    Ok(Loaded {
        expiry: Expiry {
            node_not_after: info.not_after,
            ca_not_after,
        },
        node: info,
        identity,
        stamps,
    })
}

/// What a file looked like when last read: modification time, size, inode.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamps(files: &CertFiles) -> Vec<Stamp> {
    files
        .all()
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let inode = 0;
            Some((m.modified().ok()?, m.len(), inode))
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A running node's TLS material and its reloads.
pub struct Certificates {
    node: NodeId,
    files: CertFiles,
    transport: Arc<QuicTransport>,
    /// The expiry of what is in use.
    expiry: Mutex<Expiry>,
    /// The files as they were when last read (taken before reading, so a write
    /// during a read is seen as a change next time).
    stamps: Mutex<Vec<Stamp>>,
    /// Serialises reloads (SIGHUP and the watcher).
    reloading: Mutex<()>,
}

impl Certificates {
    /// Tracks `loaded` (read from `files` by [`load`], given to `transport` at its
    /// start) and warns if it expires soon.
    pub fn new(
        node: NodeId,
        files: CertFiles,
        loaded: &Loaded,
        transport: Arc<QuicTransport>,
    ) -> Certificates {
        loaded.expiry.warn_if_close(node, &files);
        Certificates {
            node,
            files,
            transport,
            expiry: Mutex::new(loaded.expiry),
            stamps: Mutex::new(loaded.stamps.clone()),
            reloading: Mutex::new(()),
        }
    }

    /// When what is in use expires.
    pub fn expiry(&self) -> Expiry {
        *lock(&self.expiry)
    }

    /// Reads the files again and hands them to the transport; on any error keeps
    /// what is in use, logs the error and returns it. `why` goes into the log.
    pub fn reload(&self, why: &str) -> Result<(), ReloadError> {
        let _one_at_a_time = lock(&self.reloading);
        // Taken before reading: a file written during the read is a change next time.
        // A failed reload is not retried until a file changes again (or SIGHUP).
        *lock(&self.stamps) = stamps(&self.files);
        let result = load(&self.files, self.node)
            .map_err(ReloadError::from)
            .and_then(|loaded| {
                self.transport.reload(&loaded.identity)?;
                Ok(loaded)
            });
        match result {
            Ok(loaded) => {
                *lock(&self.expiry) = loaded.expiry;
                let left = loaded.expiry.seconds_left(unix_now());
                tracing::info!(
                    node = %self.node,
                    why,
                    fingerprint = %loaded.node.fingerprint(),
                    node_expires_in_days = left[0].1 / 86_400,
                    ca_expires_in_days = left[1].1 / 86_400,
                    revoked = loaded.identity.deny.len(),
                    "reloaded the certificate, key, CA bundle and deny-list; new connections use them"
                );
                loaded.expiry.warn_if_close(self.node, &self.files);
                Ok(())
            }
            Err(e) => {
                tracing::error!(node = %self.node, why, error = %e, "certificate reload failed; still using the previous certificate, key, CA bundle and deny-list");
                Err(e)
            }
        }
    }

    /// Every `every`: reloads when a file changed; once a day, repeats the expiry
    /// warning if it applies. Runs until dropped.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut warned = Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let now = stamps(&self.files);
            let changed = *lock(&self.stamps) != now;
            if changed {
                // Let a rotation that writes several files finish (a new certificate
                // with the old key would fail to load, and be retried).
                tokio::time::sleep(SETTLE).await;
                let _ = self.reload("a certificate file changed");
            }
            if warned.elapsed() >= WARNING_EVERY {
                warned = Instant::now();
                self.expiry().warn_if_close(self.node, &self.files);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_net_quic::tls::{PemPair, Validity};

    struct Setup {
        dir: tempfile::TempDir,
        ca: PemPair,
        files: CertFiles,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca = tls::generate_ca().unwrap_or_else(|e| panic!("{e}"));
        tls::write_pem(dir.path(), "ca", &ca).unwrap_or_else(|e| panic!("{e}"));
        let node = tls::issue_node(&ca, NodeId(1)).unwrap_or_else(|e| panic!("{e}"));
        let (cert, key) =
            tls::write_pem(dir.path(), "node1", &node).unwrap_or_else(|e| panic!("{e}"));
        let files = CertFiles {
            ca: dir.path().join("ca.crt"),
            cert,
            key,
            deny_list: None,
        };
        Setup { dir, ca, files }
    }

    #[test]
    fn the_expiry_is_the_node_certificate_s_and_the_bundle_s_earliest() {
        let s = setup();
        let loaded = load(&s.files, NodeId(1)).unwrap_or_else(|e| panic!("{e}"));
        let left = loaded.expiry.seconds_left(unix_now());
        assert_eq!(left[0].0, "node");
        assert!((left[0].1 - 365 * 86_400).abs() < 60, "{left:?}");
        assert!((left[1].1 - 3650 * 86_400).abs() < 60, "{left:?}");
        assert_eq!(loaded.expiry.warn_if_close(NodeId(1), &s.files), 0);
        // A bundle with a CA that expires in 10 days: that one counts, and warns.
        let soon = tls::generate_ca_valid(Validity::days(10)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&s.files.ca, format!("{}{}", s.ca.cert, soon.cert))
            .unwrap_or_else(|e| panic!("{e}"));
        let loaded = load(&s.files, NodeId(1)).unwrap_or_else(|e| panic!("{e}"));
        let left = loaded.expiry.seconds_left(unix_now());
        assert!((left[1].1 - 10 * 86_400).abs() < 60, "{left:?}");
        assert_eq!(loaded.expiry.warn_if_close(NodeId(1), &s.files), 1);
    }

    #[test]
    fn a_bad_deny_list_or_a_foreign_certificate_is_refused_naming_the_file() {
        let s = setup();
        let deny = s.dir.path().join("revoked.txt");
        std::fs::write(&deny, "# revoked\nnot-a-fingerprint\n").unwrap_or_else(|e| panic!("{e}"));
        let mut files = s.files.clone();
        files.deny_list = Some(deny.clone());
        let e = load(&files, NodeId(1))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("revoked.txt") && e.contains("line 2"), "{e}");
        let e = load(&s.files, NodeId(2))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("node1.crt") && e.contains("node-2.raft"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_key_readable_by_others_is_refused_with_the_chmod_hint() {
        use std::os::unix::fs::PermissionsExt;
        let s = setup();
        std::fs::set_permissions(&s.files.key, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = load(&s.files, NodeId(1))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains(&format!("chmod 600 {}", s.files.key.display())),
            "{e}"
        );
    }
}

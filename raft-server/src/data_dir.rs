//! Whose data a data directory holds: a node id and a cluster (named by its CA), in
//! `<data_dir>/IDENTITY`, written on the first start and checked on every later one.
//! Starting node 1 on node 2's directory, or on a directory of another cluster, would
//! mix two logs; it is refused before anything is opened.
//!
//! **Permissions.** [`create_private`] creates the data directory and its `log` and
//! `sm` subdirectories with mode 0700 (as etcd does), whatever the umask. A directory
//! that already exists is never changed: if its group or others have any permission
//! on it, the node logs a warning naming it and the `chmod 700` that fixes it, and
//! starts (an operator may have widened it on purpose, e.g. for a backup group; the
//! files inside are created 0600 by LMDB).

use raft_proto::NodeId;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file's name in the data directory.
pub const FILE: &str = "IDENTITY";

/// What the file records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirIdentity {
    /// The node whose data this is.
    pub node: u64,
    /// SHA-256 of the cluster CA certificate (DER), in hex.
    pub ca_sha256: String,
}

/// Why a data directory cannot be used by this node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// It holds another node's data.
    #[error(
        "{dir} holds node {stored}'s data, but this configuration is node {configured}: point data_dir at node {configured}'s own directory (or an empty one to join as a new node)"
    )]
    OtherNode {
        /// The directory.
        dir: PathBuf,
        /// The node it belongs to.
        stored: u64,
        /// The node configured.
        configured: u64,
    },
    /// It holds data of a cluster with another CA.
    #[error(
        "{dir} holds data of another cluster (CA SHA-256 {stored}…), but this configuration's CA is {configured}…: use that cluster's CA and certificates, or an empty data directory; if the CA was replaced on purpose, delete {dir}/IDENTITY"
    )]
    OtherCluster {
        /// The directory.
        dir: PathBuf,
        /// The start of the recorded fingerprint.
        stored: String,
        /// The start of the configured CA's fingerprint.
        configured: String,
    },
    /// The file cannot be read, parsed or written.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// The subdirectories the server creates in a data directory.
pub const SUBDIRS: [&str; 2] = ["log", "sm"];

/// Creates `dir` (and missing parents) and its [`SUBDIRS`] with mode 0700; warns
/// about each of them that exists with wider permissions. Returns the directories
/// that are open to group or others.
pub fn create_private(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut wide = Vec::new();
    for d in std::iter::once(dir.to_path_buf()).chain(SUBDIRS.iter().map(|s| dir.join(s))) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&d)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&d)?.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %d.display(),
                    mode = %format!("{mode:04o}"),
                    "the data directory is open to group or others (it holds every key and value); make it private with `chmod 700 {}`",
                    d.display()
                );
                wide.push(d);
            }
        }
    }
    Ok(wide)
}

/// The hex SHA-256 of the first CA certificate.
pub fn ca_fingerprint(ca: &[CertificateDer<'_>]) -> String {
    let der = ca.first().map_or(&[][..], |c| c.as_ref());
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that `dir` belongs to node `node` of the cluster whose CA is `ca`, recording
/// it if the directory has no identity yet.
pub fn check(dir: &Path, node: NodeId, ca: &[CertificateDer<'_>]) -> Result<(), DataDirError> {
    let path = dir.join(FILE);
    let mine = DirIdentity {
        node: node.0,
        ca_sha256: ca_fingerprint(ca),
    };
    let file_err = |detail: String| DataDirError::File {
        path: path.clone(),
        detail,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored: DirIdentity = toml::from_str(&text).map_err(|e| {
                file_err(format!(
                    "unreadable ({e}); it records which node and cluster this directory belongs to"
                ))
            })?;
            if stored.node != mine.node {
                return Err(DataDirError::OtherNode {
                    dir: dir.to_path_buf(),
                    stored: stored.node,
                    configured: mine.node,
                });
            }
            if stored.ca_sha256 != mine.ca_sha256 {
                let short = |s: &str| s.chars().take(16).collect::<String>();
                return Err(DataDirError::OtherCluster {
                    dir: dir.to_path_buf(),
                    stored: short(&stored.ca_sha256),
                    configured: short(&mine.ca_sha256),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = toml::to_string(&mine).map_err(|e| file_err(e.to_string()))?;
            let tmp = dir.join(format!("{FILE}.tmp"));
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(text.as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(dir)?.sync_all()
            };
            write().map_err(|e| file_err(format!("cannot be written: {e}")))
        }
        Err(e) => Err(file_err(format!("cannot be read: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(n: u8) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(vec![n; 32])]
    }

    #[test]
    fn a_directory_is_claimed_once_then_only_its_node_and_cluster_may_use_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        check(dir.path(), NodeId(2), &ca(1)).unwrap_or_else(|e| panic!("{e}"));
        check(dir.path(), NodeId(2), &ca(1)).unwrap_or_else(|e| panic!("{e}"));
        let other_node = check(dir.path(), NodeId(1), &ca(1));
        assert!(
            matches!(
                &other_node,
                Err(DataDirError::OtherNode {
                    stored: 2,
                    configured: 1,
                    ..
                })
            ),
            "{other_node:?}"
        );
        let msg = other_node.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("holds node 2's data") && msg.contains("configuration is node 1"));
        let other_cluster = check(dir.path(), NodeId(2), &ca(9));
        let msg = other_cluster
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("another cluster") && msg.contains("IDENTITY"),
            "{msg}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn data_directories_are_created_0700_and_a_wider_one_is_reported_not_changed() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = root.path().join("a/node1");
        let wide = create_private(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(wide.is_empty(), "{wide:?}");
        for d in [dir.clone(), dir.join("log"), dir.join("sm")] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        let wide = create_private(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(wide, vec![dir.clone()]);
        assert_eq!(mode(&dir), 0o755, "an existing directory is left as it is");
    }

    #[test]
    fn a_damaged_identity_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join(FILE), "node = \"two\"\n").unwrap_or_else(|e| panic!("{e}"));
        let e = check(dir.path(), NodeId(2), &ca(1))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("IDENTITY") && e.contains("unreadable"), "{e}");
    }
}

//! Certificates for a cluster, and the files of a local development cluster.

use crate::config::ServerConfig;
use raft_net_quic::tls::{self, PemPair, Validity};
use raft_net_quic::{CertInfo, CertRole};
use raft_proto::NodeId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertsError {
    /// Generation failed.
    #[error(transparent)]
    Tls(#[from] raft_net_quic::TlsError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How long issued certificates are valid, in days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidityDays {
    /// Node, client and administrator certificates (default
    /// [`tls::NODE_VALIDITY_DAYS`], one year).
    pub days: u32,
    /// A new CA (default [`tls::CA_VALIDITY_DAYS`], ten years); an existing CA is
    /// kept as it is.
    pub ca_days: u32,
}

impl Default for ValidityDays {
    fn default() -> Self {
        ValidityDays {
            days: tls::NODE_VALIDITY_DAYS,
            ca_days: tls::CA_VALIDITY_DAYS,
        }
    }
}

/// Loads the CA in `dir` (`ca.crt`, `ca.key`), or creates one valid for ten years;
/// returns it and whether it is new.
pub fn load_or_create_ca(dir: &Path) -> Result<(PemPair, bool), CertsError> {
    load_or_create_ca_valid(dir, tls::CA_VALIDITY_DAYS)
}

/// Loads the CA in `dir`, or creates one valid for `ca_days` days.
pub fn load_or_create_ca_valid(dir: &Path, ca_days: u32) -> Result<(PemPair, bool), CertsError> {
    let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if cert.exists() && key.exists() {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CertsError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        return Ok((
            PemPair {
                cert: read(&cert)?,
                key: read(&key)?,
            },
            false,
        ));
    }
    let ca = tls::generate_ca_valid(Validity::days(ca_days))?;
    tls::write_pem(dir, "ca", &ca).map_err(|source| CertsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok((ca, true))
}

/// Issues and writes `node<id>.crt`/`.key` for each node and `client-<name>.crt`/`.key`
/// for each client, with its role, signed by the CA in `dir` (created if absent), with
/// the default validity. Returns the files written.
pub fn make_certs(
    dir: &Path,
    nodes: &[u64],
    clients: &[(String, CertRole)],
) -> Result<Vec<PathBuf>, CertsError> {
    make_certs_valid(dir, nodes, clients, ValidityDays::default())
}

/// [`make_certs`] with the validity given.
pub fn make_certs_valid(
    dir: &Path,
    nodes: &[u64],
    clients: &[(String, CertRole)],
    validity: ValidityDays,
) -> Result<Vec<PathBuf>, CertsError> {
    let (ca, new) = load_or_create_ca_valid(dir, validity.ca_days)?;
    let valid = Validity::days(validity.days);
    let io = |source| CertsError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut written = Vec::new();
    if new {
        written.push(dir.join("ca.crt"));
        written.push(dir.join("ca.key"));
    }
    for &id in nodes {
        let (c, k) = tls::write_pem(
            dir,
            &format!("node{id}"),
            &tls::issue_node_valid(&ca, NodeId(id), valid)?,
        )
        .map_err(io)?;
        written.extend([c, k]);
    }
    for (name, role) in clients {
        let (c, k) = tls::write_pem(
            dir,
            &format!("client-{name}"),
            &tls::issue_client_valid(&ca, name, *role, valid)?,
        )
        .map_err(io)?;
        written.extend([c, k]);
    }
    Ok(written)
}

/// What the (first) certificate in `path` says, if it can be read.
pub fn describe(path: &Path) -> Option<CertInfo> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path).ok()?;
    CertInfo::parse(&der).ok()
}

/// The role of the certificate in `path`, if it can be read.
fn role_of(path: &Path) -> Option<CertRole> {
    describe(path).map(|i| i.role)
}

/// How a CLI client reaches a cluster: node addresses and its certificate. `dev`
/// writes one to `raft-dev/client.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// Node addresses (`host:port`).
    pub nodes: Vec<String>,
    /// The cluster CA.
    pub ca: PathBuf,
    /// The client's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// The files of a local cluster of `n` nodes under `dir`, listening from `base_port`.
pub struct DevLayout {
    /// The root (`raft-dev`).
    pub dir: PathBuf,
    /// Each node's configuration.
    pub nodes: Vec<ServerConfig>,
    /// The client file.
    pub client: ClientFile,
}

impl DevLayout {
    /// Plans the layout (nothing written).
    pub fn new(dir: &Path, n: u64, base_port: u16, metrics_base_port: u16) -> DevLayout {
        let certs = dir.join("certs");
        let addr = |i: u64| format!("127.0.0.1:{}", u64::from(base_port) + i - 1);
        let nodes: Vec<ServerConfig> = (1..=n)
            .map(|id| {
                let mut c =
                    ServerConfig::new(id, &addr(id), &dir.join(format!("node{id}")), &certs);
                c.peers = (1..=n)
                    .filter(|&p| p != id)
                    .map(|p| format!("{p}={}", addr(p)))
                    .collect();
                c.metrics = Some(format!(
                    "127.0.0.1:{}",
                    u64::from(metrics_base_port) + id - 1
                ));
                c
            })
            .collect();
        let client = ClientFile {
            nodes: (1..=n).map(addr).collect(),
            ca: certs.join("ca.crt"),
            cert: certs.join("client-dev.crt"),
            key: certs.join("client-dev.key"),
        };
        DevLayout {
            dir: dir.to_path_buf(),
            nodes,
            client,
        }
    }

    /// Writes certificates (once) and the configuration files; returns each node's
    /// config path.
    pub fn write(&self) -> Result<Vec<PathBuf>, CertsError> {
        let certs = self.dir.join("certs");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CertsError::Io { path, source }
        };
        std::fs::create_dir_all(&certs).map_err(io(&certs))?;
        let ids: Vec<u64> = self.nodes.iter().map(|c| c.id).collect();
        let missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !certs.join(format!("node{id}.crt")).exists())
            .collect();
        // The CLI's certificate is an administrator's, so the whole tour works (one
        // written before roles existed is issued again).
        let clients = if role_of(&self.client.cert) == Some(CertRole::Admin) {
            vec![]
        } else {
            vec![("dev".to_string(), CertRole::Admin)]
        };
        make_certs(&certs, &missing, &clients)?;
        let mut paths = Vec::new();
        for c in &self.nodes {
            let path = self.dir.join(format!("node{}.toml", c.id));
            std::fs::write(&path, c.to_toml()).map_err(io(&path))?;
            paths.push(path);
        }
        let path = self.dir.join("client.toml");
        std::fs::write(&path, toml::to_string(&self.client).unwrap_or_default())
            .map_err(io(&path))?;
        Ok(paths)
    }
}

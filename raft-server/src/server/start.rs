//! Start-up: the data directory and its stores, the QUIC endpoint, the Raft node, and
//! the server's tasks.

use super::connection::Connections;
use super::metered::{MeteredLog, MeteredMachine};
use super::{Server, Shared, now_ms};
use crate::budget::ByteBudget;
use crate::certificates::{self, CertFiles, Certificates};
use crate::config::{ConfigError, Validated};
use crate::kv::Kv;
use crate::metrics::{self, Exposition, ServerMetrics};
use crate::proto::FrameLimits;
use raft_core::Config;
use raft_core::node::{Environment, Node, NodeOptions};
use raft_core::rt::tokio::TokioRuntime;
use raft_net_quic::{ClientLimits, QuicConfig, QuicError, QuicTransport, Started};
use raft_proto::{Membership, NodeRecord};
use raft_storage_lmdb::{EnvConfig, LmdbError, LmdbLogStore, LmdbStateMachine, SmConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Certificates.
    #[error(transparent)]
    Tls(#[from] raft_net_quic::TlsError),
    /// The node's certificate, key, CA bundle or deny-list.
    #[error(transparent)]
    Certificates(#[from] certificates::CertFilesError),
    /// The network (address in use, ...).
    #[error(transparent)]
    Network(#[from] QuicError),
    /// The stores in the data directory.
    #[error("data directory: {0}")]
    Storage(#[from] LmdbError),
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data directory belongs to another node or cluster.
    #[error(transparent)]
    DataDirIdentity(#[from] crate::data_dir::DataDirError),
    /// The Raft node refused the stored state.
    #[error("raft: {0}")]
    Node(#[from] raft_core::node::StartError),
    /// The metrics endpoint.
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not called inside a tokio runtime.
    #[error("the server must be started inside a tokio runtime")]
    NoRuntime,
}

impl Server {
    /// Opens the data directory, binds the address and starts the node. Must be called
    /// inside a tokio runtime.
    pub async fn start(config: Validated) -> Result<Server, StartError> {
        let c = &config.config;
        let rt = TokioRuntime::current().ok_or(StartError::NoRuntime)?;
        let quinn_rt = raft_net_quic::tokio_runtime().ok_or(StartError::NoRuntime)?;
        let cert_files = CertFiles::of(c);
        let loaded = certificates::load(&cert_files, config.id)?;
        let identity = loaded.identity.clone();
        crate::data_dir::create_private(&c.data_dir).map_err(|source| StartError::DataDir {
            path: c.data_dir.clone(),
            source,
        })?;
        crate::data_dir::check(&c.data_dir, config.id, &identity.ca)?;
        let cluster = crate::data_dir::ca_fingerprint(&identity.ca);
        let log = LmdbLogStore::open(c.data_dir.join("log"), EnvConfig::default())?;
        let sm = LmdbStateMachine::open(c.data_dir.join("sm"), Kv, SmConfig::default())?;
        // The configuration's peers first; the membership's records (learned once the
        // node runs) take precedence.
        let mut addresses = config.peers.clone();
        addresses.insert(config.id, config.listen);
        let mut quic = QuicConfig::new(config.id, config.listen, BTreeMap::new(), identity);
        quic.accept_clients = true;
        quic.client_limits = ClientLimits {
            max_bidi_streams: u32::try_from(c.max_streams_per_connection).unwrap_or(u32::MAX),
            max_uni_streams: ClientLimits::default().max_uni_streams,
            receive_window: u32::try_from(c.client_receive_window_bytes).unwrap_or(u32::MAX),
        };
        // A joining node also admits members its configuration does not list (added
        // after it was written); they are the ones that contact it.
        quic.admit_unknown_peers = c.join;
        let Started {
            transport,
            incoming,
            clients,
        } = QuicTransport::start(quic, quinn_rt)?;
        for (&id, &addr) in &addresses {
            transport.add_peer(id, addr);
        }
        let certs = Arc::new(Certificates::new(
            config.id,
            cert_files,
            &loaded,
            transport.clone(),
        ));
        let metrics = Arc::new(ServerMetrics::default());
        let mut raft = Config::new(config.id);
        raft.election_ticks = c.election_ticks;
        raft.heartbeat_ticks = c.heartbeat_ticks;
        if c.lease_reads {
            raft.read_mode = raft_core::ReadMode::LeaseBased {
                clock_drift_ticks: c.lease_clock_drift_ticks,
            };
        }
        raft.snapshot_entries = c.snapshot_entries;
        raft.snapshot_keep_entries = (c.snapshot_entries / 4).max(100);
        raft.rng_seed ^= now_ms().wrapping_mul(0x2545_F491_4F6C_DD1D);
        let mut options = if c.join {
            NodeOptions::joining()
        } else {
            // The founding configuration records every founder's address (its own
            // only when it is one the others can dial, not 0.0.0.0).
            let mut founders = Membership::voters_with(
                config
                    .peers
                    .iter()
                    .map(|(&id, addr)| (id, NodeRecord::new(addr.to_string()))),
            );
            founders.voters.insert(config.id);
            if !config.listen.ip().is_unspecified() {
                founders
                    .nodes
                    .insert(config.id, NodeRecord::new(config.listen.to_string()));
            }
            NodeOptions::new(founders)
        };
        options.tick = c.tick();
        let env = Environment {
            log: Arc::new(MeteredLog {
                inner: log,
                metrics: metrics.clone(),
            }),
            state_machine: Arc::new(MeteredMachine {
                inner: sm.clone(),
                metrics: metrics.clone(),
            }),
            transport: transport.clone(),
            incoming,
            runtime: Arc::new(rt),
        };
        let node = Node::start(raft, options, env).await?;
        let shared = Arc::new(Shared {
            id: config.id,
            in_flight: Semaphore::new(
                usize::try_from(c.max_in_flight)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS),
            ),
            limits: FrameLimits {
                max: c.request_frame_limit(),
                timeout: Duration::from_millis(c.frame_timeout_ms),
                budget: ByteBudget::new(c.max_request_bytes_in_flight),
            },
            connections: std::sync::Mutex::new(Connections::default()),
            config: config.clone(),
            node,
            sm,
            transport,
            metrics,
            addresses: RwLock::new(addresses),
            certs: certs.clone(),
            cluster,
            saves: Semaphore::new(1),
        });
        let mut tasks = Vec::new();
        if let Some(mut clients) = clients {
            let s = shared.clone();
            tasks.push(tokio::spawn(async move {
                use futures::StreamExt;
                while let Some(conn) = clients.next().await {
                    tokio::spawn(s.clone().serve_connection(conn));
                }
            }));
        }
        tasks.push(tokio::spawn(shared.clone().follow_membership()));
        tasks.push(tokio::spawn(shared.clone().count_leader_changes()));
        tasks.push(tokio::spawn(shared.clone().count_sessions()));
        tasks.push(tokio::spawn(
            certs.watch(Duration::from_secs(c.cert_check_secs)),
        ));
        if let Some(addr) = config.metrics {
            let source: Arc<dyn Exposition> = shared.clone();
            let task = metrics::serve(addr, source)
                .await
                .map_err(|source| StartError::Metrics { addr, source })?;
            tasks.push(task);
        }
        tracing::info!(node = %config.id, listen = %config.listen, data = %c.data_dir.display(), "server started");
        Ok(Server { shared, tasks })
    }
}

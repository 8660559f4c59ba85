//! One KV server node: LMDB stores, the QUIC transport (peers and clients on one UDP
//! port), the Raft `Node`, the client request handler, address bookkeeping, metrics.
//!
//! One file per job, all on the state the node's tasks share (`Shared`):
//!
//! - `start`: opening the stores, binding the address, starting the node and tasks;
//! - `metered`: the log store and state machine wrapped to be timed and counted;
//! - `connection`: client connections, their limits, streams and lanes;
//! - `handler`: one client request (writes, reads, sizes, who may do what);
//! - `admin`: membership, leadership, snapshots and the status;
//! - `snapshot_save`: streaming a snapshot out for a backup;
//! - `address_book`: the peers' addresses, from the configuration and the
//!   membership's node records;
//! - `gauges`: leader changes and open sessions, kept current in the background;
//! - `exposition`: the Prometheus page and the health check.

mod address_book;
mod admin;
mod connection;
mod exposition;
mod gauges;
mod handler;
mod metered;
mod snapshot_save;
mod start;

pub use start::StartError;

use crate::certificates::{self, Certificates};
use crate::config::Validated;
use crate::kv::Kv;
use crate::metrics::ServerMetrics;
use crate::proto::FrameLimits;
use connection::Connections;
use raft_core::node::{FatalError, Node, NodeState};
use raft_net_quic::{CertInfo, QuicTransport};
use raft_proto::NodeId;
use raft_storage_lmdb::LmdbStateMachine;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The most keys one scan returns.
pub const MAX_SCAN: u32 = 10_000;

/// What the server's tasks share: the node, its stores and transport, the limits and
/// the address book. Its methods are spread over this module's files, one job each.
struct Shared {
    id: NodeId,
    config: Validated,
    node: Node,
    sm: LmdbStateMachine<Kv>,
    transport: Arc<QuicTransport>,
    metrics: Arc<ServerMetrics>,
    /// Client requests in progress (`max_in_flight`).
    in_flight: Semaphore,
    /// How request frames are read: size, time and the node's byte budget
    /// (`max_request_bytes_in_flight`).
    limits: FrameLimits,
    /// Client connections open, in all and per identity.
    connections: std::sync::Mutex<Connections>,
    /// Every address known: the config's peers, then what the log recorded.
    addresses: RwLock<BTreeMap<NodeId, SocketAddr>>,
    /// The TLS material in use, its reloads and its expiry.
    certs: Arc<Certificates>,
    /// The cluster's id in backups: the hex SHA-256 of the CA certificate the data
    /// directory's `IDENTITY` was checked against.
    cluster: String,
    /// Snapshot saves in progress (one at a time).
    saves: Semaphore,
}

/// Who sent a request: read from the connection's verified certificate.
struct Caller {
    info: CertInfo,
    /// The sessions it may use (see [`crate::kv::owner_of`]).
    owner: [u8; 32],
}

/// The QUIC application close code of a connection refused because a connection
/// limit was reached (the reason says which).
pub const CLOSE_BUSY: u32 = 2;

/// A running server node.
pub struct Server {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Server {
    /// The Raft node.
    pub fn node(&self) -> &Node {
        &self.shared.node
    }

    /// Reads the certificate, key, CA bundle and deny-list again and uses them for new
    /// connections (`raft-server run` calls this on SIGHUP). On error the previous
    /// material stays in use; the error is logged and returned.
    pub fn reload_certificates(&self) -> Result<(), certificates::ReloadError> {
        self.shared.certs.reload("reload requested (SIGHUP)")
    }

    /// The address peers and clients reach this node at.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.transport.local_addr()
    }

    /// Stops serving: the node finishes its write in progress and stops, connections
    /// close. Storage is left consistent.
    pub async fn shutdown(self) {
        tracing::info!(node = %self.shared.id, "shutting down");
        self.shared.node.shutdown().await;
        self.shared.transport.close();
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Waits until the node stops by itself (a storage failure); returns the reason.
    pub async fn stopped(&self) -> Option<FatalError> {
        let mut w = self.shared.node.metrics();
        match w
            .wait_for(|m| m.state != NodeState::Running)
            .await
            .map(|m| m.state)
        {
            Some(NodeState::Stopped(reason)) => reason,
            _ => None,
        }
    }
}

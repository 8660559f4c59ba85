//! One KV server node: LMDB stores, the QUIC transport (peers and clients on one UDP
//! port), the Raft `Node`, the client request handler, address bookkeeping, metrics.

use crate::budget::{ByteBudget, Held, Reservation};
use crate::certificates::{self, CertFiles, Certificates};
use crate::config::{ConfigError, Validated};
use crate::kv::{self, Body, Kv, KvCommand};
use crate::metrics::{self, Exposition, Health, NodeSample, ServerMetrics};
use crate::proto::{
    self, AdminOp, Consistency, FrameError, FrameLimits, REQUEST_OVERHEAD, ReadOp, Request,
    Response, SaveFrame, SaveHeader, ServerError, Status, Tagged, WriteResult,
};
use raft_core::node::{
    Environment, LogStore, MachineState, Metrics, Node, NodeOptions, NodeState, SnapshotTask,
    StateMachine, StorageError, StoredLog,
};
use raft_core::rt::tokio::TokioRuntime;
use raft_core::{ConfChange, Config, Persist, ProposeError, ReadError, Role};
use raft_net_quic::{
    CertInfo, CertRole, ClientLimits, QuicConfig, QuicError, QuicTransport, Started,
};
use raft_proto::{Bytes, Entry, LogId, Membership, NodeId, SnapshotMeta};
use raft_storage_lmdb::{EnvConfig, LmdbError, LmdbLogStore, LmdbStateMachine, SmConfig};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Requests of one lane in progress at once.
const LANE_IN_FLIGHT: usize = 1024;
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The most keys one scan returns.
pub const MAX_SCAN: u32 = 10_000;

/// How long a snapshot save waits for the leader to confirm the node is up to date;
/// past it the save goes on with what the node applied, marked unconfirmed.
const SAVE_BARRIER_WAIT: Duration = Duration::from_secs(5);

/// How long a snapshot save waits for a snapshot that covers what was applied.
const SAVE_SNAPSHOT_WAIT: Duration = Duration::from_secs(300);

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

/// The log store, timed.
struct MeteredLog {
    inner: LmdbLogStore,
    metrics: Arc<ServerMetrics>,
}

#[async_trait::async_trait]
impl LogStore for MeteredLog {
    async fn load(&self) -> Result<StoredLog, StorageError> {
        self.inner.load().await
    }

    async fn write(&self, batch: &Persist) -> Result<(), StorageError> {
        let started = Instant::now();
        let r = self.inner.write(batch).await;
        self.metrics
            .log_write_seconds
            .observe_duration(started.elapsed());
        self.metrics
            .log_batch_entries
            .observe(batch.entries.len() as f64);
        r
    }

    async fn purge(&self, up_to: LogId, base: &SnapshotMeta) -> Result<(), StorageError> {
        self.inner.purge(up_to, base).await
    }

    async fn reset(&self, base: &SnapshotMeta) -> Result<(), StorageError> {
        self.inner.reset(base).await
    }
}

/// The state machine, counted.
struct MeteredMachine {
    inner: LmdbStateMachine<Kv>,
    metrics: Arc<ServerMetrics>,
}

#[async_trait::async_trait]
impl StateMachine for MeteredMachine {
    async fn state(&self) -> Result<MachineState, StorageError> {
        self.inner.state().await
    }

    async fn apply(&self, entries: &[Entry]) -> Result<Vec<Bytes>, StorageError> {
        self.metrics
            .apply_batch_entries
            .observe(entries.len() as f64);
        self.inner.apply(entries).await
    }

    fn begin_snapshot(&self, meta: SnapshotMeta) -> SnapshotTask {
        let task = self.inner.begin_snapshot(meta);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let started = Instant::now();
            let r = task.await;
            if r.is_ok() {
                metrics.snapshots.inc();
                metrics.snapshot_seconds.observe_duration(started.elapsed());
            }
            r
        })
    }

    async fn read_snapshot(
        &self,
        id: u64,
        offset: u64,
        len: usize,
    ) -> Result<Option<(Bytes, bool)>, StorageError> {
        self.inner.read_snapshot(id, offset, len).await
    }

    async fn receive_snapshot(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError> {
        self.inner.receive_snapshot(meta, offset, data).await
    }

    async fn install_snapshot(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        self.inner.install_snapshot(meta).await?;
        self.metrics.snapshots_installed.inc();
        tracing::info!(last = ?meta.last_log_id, "installed a snapshot from the leader");
        Ok(())
    }
}

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
    /// The sessions it may use (see [`kv::owner_of`]).
    owner: [u8; 32],
}

/// Client connections open on a node.
#[derive(Default)]
struct Connections {
    total: u64,
    per_client: HashMap<String, u64>,
}

/// A client connection's place in [`Connections`], given back when dropped.
struct ConnectionSlot {
    shared: Arc<Shared>,
    principal: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_client.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_client.remove(&self.principal);
            }
        }
    }
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
        let mut addresses = config.peers.clone();
        addresses.insert(config.id, config.listen);
        for (id, addr) in sm.read(kv::addresses)? {
            match crate::config::resolve(&addr) {
                Ok(a) => {
                    addresses.insert(id, a);
                }
                Err(e) => {
                    tracing::warn!(node = %id, addr, error = %e, "a recorded address does not resolve")
                }
            }
        }
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
            let mut members: Vec<NodeId> = config.peers.keys().copied().collect();
            members.push(config.id);
            NodeOptions::new(Membership::voters(members))
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
        tasks.push(tokio::spawn(shared.clone().housekeeping()));
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
    pub async fn stopped(&self) -> Option<String> {
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

impl Shared {
    fn addr_of(&self, id: NodeId) -> Option<String> {
        self.addresses
            .read()
            .ok()?
            .get(&id)
            .map(ToString::to_string)
    }

    fn not_leader(&self, leader: Option<NodeId>) -> ServerError {
        let leader = leader.filter(|&l| l != self.id);
        ServerError::NotLeader {
            leader,
            addr: leader.and_then(|l| self.addr_of(l)),
        }
    }

    /// Takes a place for a connection of `principal`, or says which limit is reached.
    fn admit(self: &Arc<Self>, principal: &str) -> Result<ConnectionSlot, String> {
        let c = &self.config.config;
        let mut conns = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if conns.total >= c.max_client_connections {
            return Err(format!(
                "busy: {} client connections are open on this node (max_client_connections)",
                conns.total
            ));
        }
        let mine = conns.per_client.get(principal).copied().unwrap_or(0);
        if mine >= c.max_connections_per_client {
            return Err(format!(
                "busy: {mine} connections of {principal} are open on this node (max_connections_per_client)"
            ));
        }
        conns.total += 1;
        conns.per_client.insert(principal.to_string(), mine + 1);
        Ok(ConnectionSlot {
            shared: self.clone(),
            principal: principal.to_string(),
        })
    }

    async fn serve_connection(self: Arc<Self>, conn: quinn::Connection) {
        let remote = conn.remote_address();
        let info = match raft_net_quic::cert::peer_certificate(&conn).map(|c| CertInfo::parse(&c)) {
            Some(Ok(info)) => info,
            Some(Err(e)) => {
                tracing::warn!(node = %self.id, %remote, error = %e, "closing a client connection: its certificate is unreadable");
                conn.close(1u32.into(), b"unreadable certificate");
                return;
            }
            None => {
                conn.close(1u32.into(), b"no client certificate");
                return;
            }
        };
        let _slot = match self.admit(&info.principal) {
            Ok(slot) => slot,
            Err(reason) => {
                tracing::debug!(node = %self.id, %remote, client = %info.principal, reason, "refused a client connection");
                self.metrics.connections_refused.inc();
                conn.close(CLOSE_BUSY.into(), reason.as_bytes());
                return;
            }
        };
        tracing::debug!(node = %self.id, %remote, client = %info.principal, role = %info.role, "client connected");
        let caller = Arc::new(Caller {
            owner: kv::owner_of(&info.principal),
            info,
        });
        while let Ok((send, recv)) = conn.accept_bi().await {
            tokio::spawn(self.clone().serve_stream(caller.clone(), send, recv));
        }
    }

    /// A stream is a lane (it opens with [`proto::LANE_PREAMBLE`]) or carries one
    /// request; either way its first bytes must come within the frame timeout.
    async fn serve_stream(
        self: Arc<Self>,
        caller: Arc<Caller>,
        send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let mut first = [0u8; 4];
        if !matches!(
            tokio::time::timeout_at(deadline, recv.read_exact(&mut first)).await,
            Ok(Ok(()))
        ) {
            let _ = recv.stop(1u32.into());
            return;
        }
        if first == proto::LANE_PREAMBLE[..4] {
            let mut rest = [0u8; 4];
            let read = tokio::time::timeout_at(deadline, recv.read_exact(&mut rest)).await;
            if matches!(read, Ok(Ok(()))) && rest == proto::LANE_PREAMBLE[4..] {
                self.serve_lane(caller, send, recv).await;
            } else {
                let _ = recv.stop(1u32.into());
            }
            return;
        }
        self.serve_one(caller, send, recv, first, deadline).await;
    }

    /// One request on its own stream, whose length prefix `len` was read; the whole
    /// frame must be in by `deadline`.
    async fn serve_one(
        self: Arc<Self>,
        caller: Arc<Caller>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        len: [u8; 4],
        deadline: tokio::time::Instant,
    ) {
        let read = proto::read_request(&mut recv, &self.limits, Some(len), Some(deadline), false);
        let response = match read.await {
            Err(e) => {
                let _ = recv.stop(1u32.into());
                Response::Error(self.frame_refused(&caller, e))
            }
            Ok((body, reservation)) => {
                let mut held = Held::request(reservation);
                match proto::decode::<Request>(&body) {
                    Err(e) => {
                        Response::Error(ServerError::Invalid(format!("undecodable request: {e}")))
                    }
                    Ok(Request::Admin(AdminOp::SaveSnapshot)) => {
                        drop(held);
                        return self.serve_save(&caller, send).await;
                    }
                    Ok(request) => self.answer(&caller, request, &mut held).await,
                }
            }
        };
        match proto::encode(&response) {
            Ok(frame) => {
                let write = tokio::time::timeout(self.limits.timeout, send.write_all(&frame));
                if matches!(write.await, Ok(Ok(()))) {
                    let _ = send.finish();
                }
            }
            Err(e) => tracing::error!(node = %self.id, error = %e, "cannot encode a response"),
        }
    }

    /// What a client hears about a request frame that was not read, and the log line.
    fn frame_refused(&self, caller: &Caller, e: FrameError) -> ServerError {
        tracing::debug!(node = %self.id, client = %caller.info.principal, error = %e, "refused a request frame");
        match e {
            FrameError::Busy { .. } => {
                self.metrics.requests_busy.inc();
                ServerError::Busy(e.to_string())
            }
            FrameError::TooLarge { len, limit, .. } => ServerError::TooLarge {
                what: "request".into(),
                size: len,
                limit,
            },
            other => ServerError::Invalid(other.to_string()),
        }
    }

    /// A lane: requests are read by a task of their own and answered as they complete,
    /// the answers ready at the same time written together. At most
    /// [`LANE_IN_FLIGHT`] requests of a lane are in progress; beyond that the lane is
    /// not read (QUIC's flow control then holds the client back). Every request holds
    /// its bytes of the node's budget until its answer is written; one that finds the
    /// budget spent is answered busy. A frame over the size limit, one that takes
    /// longer than the frame timeout, or answers the client does not read for that
    /// long, close the lane.
    async fn serve_lane(
        self: Arc<Self>,
        caller: Arc<Caller>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        enum Item {
            Request(Tagged<Request>, Reservation),
            Refused(Tagged<Response>),
        }
        let (requests, mut incoming) = tokio::sync::mpsc::channel::<Item>(LANE_IN_FLIGHT);
        let reader_shared = self.clone();
        let reader_caller = caller.clone();
        let reader = tokio::spawn(async move {
            let (server, caller) = (reader_shared, reader_caller);
            loop {
                let item = match proto::read_request(&mut recv, &server.limits, None, None, true)
                    .await
                {
                    Ok((body, reservation)) => match proto::decode::<Tagged<Request>>(&body) {
                        Ok(request) => Item::Request(request, reservation),
                        Err(e) => {
                            tracing::debug!(node = %server.id, client = %caller.info.principal, error = %e, "closing a lane: undecodable request");
                            let _ = recv.stop(1u32.into());
                            return;
                        }
                    },
                    Err(
                        e @ (FrameError::Busy { tag: Some(id), .. }
                        | FrameError::TooLarge { tag: Some(id), .. }),
                    ) => Item::Refused(Tagged {
                        id,
                        body: Response::Error(server.frame_refused(&caller, e)),
                    }),
                    Err(FrameError::Finished) => return,
                    Err(e) => {
                        let _ = server.frame_refused(&caller, e);
                        let _ = recv.stop(1u32.into());
                        return;
                    }
                };
                if requests.send(item).await.is_err() {
                    return;
                }
            }
        });
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut out = Vec::new();
        let mut held: Vec<Held> = Vec::new();
        let mut open = true;
        loop {
            tokio::select! {
                item = incoming.recv(), if open && pending.len() < LANE_IN_FLIGHT => match item {
                    Some(Item::Request(Tagged { id, body }, reservation)) => {
                        let server = self.clone();
                        let caller = caller.clone();
                        pending.push(async move {
                            let mut held = Held::request(reservation);
                            let body = server.answer(&caller, body, &mut held).await;
                            (Tagged { id, body }, held)
                        }.boxed());
                    }
                    Some(Item::Refused(answer)) => {
                        pending.push(async move { (answer, Held::default()) }.boxed());
                    }
                    None => open = false,
                },
                Some((answer, h)) = pending.next(), if !pending.is_empty() => {
                    self.encode_answer(&answer, &mut out);
                    held.push(h);
                    while let Some(Some((answer, h))) = pending.next().now_or_never() {
                        self.encode_answer(&answer, &mut out);
                        held.push(h);
                    }
                    let write = tokio::time::timeout(self.limits.timeout, send.write_all(&out));
                    if !matches!(write.await, Ok(Ok(()))) {
                        break;
                    }
                    out.clear();
                    held.clear();
                }
                else => break,
            }
            if !open && pending.is_empty() {
                break;
            }
        }
        reader.abort();
        let _ = send.finish();
    }

    fn encode_answer(&self, answer: &Tagged<Response>, out: &mut Vec<u8>) {
        if let Err(e) = proto::encode_into(answer, out) {
            tracing::error!(node = %self.id, error = %e, "cannot encode a response");
            let failed = Tagged {
                id: answer.id,
                body: Response::Error(ServerError::Failed(format!(
                    "cannot encode the response: {e}"
                ))),
            };
            let _ = proto::encode_into(&failed, out);
        }
    }

    /// Handles a request within the request timeout, and counts it. Bytes the answer
    /// holds (a value read) go into `held`, given back once it is written.
    async fn answer(&self, caller: &Caller, request: Request, held: &mut Held) -> Response {
        let started = Instant::now();
        let m = &self.metrics;
        let Ok(_permit) = self.in_flight.try_acquire() else {
            m.requests_busy.inc();
            m.requests_failed.inc();
            return Response::Error(ServerError::Busy(format!(
                "{} requests in flight on this node",
                self.config.config.max_in_flight
            )));
        };
        let timeout = Duration::from_millis(self.config.config.request_timeout_ms);
        let response = match tokio::time::timeout(timeout, self.handle(caller, request, held)).await
        {
            Ok(r) => r,
            Err(_) => Response::Error(ServerError::Unknown(format!(
                "no outcome within {timeout:?} on the server"
            ))),
        };
        m.request_seconds.observe_duration(started.elapsed());
        if matches!(response, Response::Error(_)) {
            m.requests_failed.inc()
        } else {
            m.requests_ok.inc()
        }
        response
    }

    async fn handle(&self, caller: &Caller, request: Request, held: &mut Held) -> Response {
        let result = match request {
            Request::Register => {
                let c = &self.config.config;
                self.propose(Body::RegisterOwned {
                    ttl_ms: c.session_ttl_secs.saturating_mul(1000),
                    owner: caller.owner,
                    max_sessions: c.max_sessions,
                })
                .await
            }
            Request::Write { session, op } => match self.check_sizes(&op) {
                Err(e) => Err(e),
                Ok(()) => match session {
                    Some(session) => {
                        self.propose(Body::OwnedWrite {
                            owner: caller.owner,
                            session,
                            op,
                        })
                        .await
                    }
                    None => self.propose(Body::Write { session, op }).await,
                },
            },
            Request::Read { op, consistency } => self.read(op, consistency, held).await,
            Request::Admin(op) => match self.authorize(caller, &op) {
                Ok(()) => self.admin(op).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(Response::Written(w)) => match w.result {
                WriteResult::Refused(e) => {
                    if let ServerError::SessionNotOwned(id) = e {
                        tracing::warn!(node = %self.id, client = %caller.info.principal, session = id, "refused a write in another client's session");
                    }
                    Response::Error(e)
                }
                _ => Response::Written(w),
            },
            Ok(r) => r,
            Err(e) => Response::Error(e),
        }
    }

    /// Whether `caller` may carry out `op`: a status is anyone's; everything else
    /// changes the cluster and needs the admin role.
    fn authorize(&self, caller: &Caller, op: &AdminOp) -> Result<(), ServerError> {
        if matches!(op, AdminOp::Status) || caller.info.role == CertRole::Admin {
            return Ok(());
        }
        tracing::warn!(node = %self.id, client = %caller.info.principal, role = %caller.info.role, ?op, "refused an admin operation");
        Err(ServerError::Forbidden(format!(
            "this operation needs the admin role; certificate CN={} has role {}",
            caller.info.common_name, caller.info.role
        )))
    }

    fn check_sizes(&self, op: &proto::WriteOp) -> Result<(), ServerError> {
        let c = &self.config.config;
        let too_large = |what: &str, size: usize, limit: u64| {
            (size as u64 > limit).then(|| ServerError::TooLarge {
                what: what.into(),
                size: size as u64,
                limit,
            })
        };
        if let Some(e) = too_large("key", op.key().len(), c.max_key_bytes) {
            return Err(e);
        }
        let value = match op {
            proto::WriteOp::Put { value, .. } | proto::WriteOp::Append { value, .. } => value.len(),
            proto::WriteOp::Cas { expected, new, .. } => expected
                .as_ref()
                .map_or(0, |v| v.len())
                .max(new.as_ref().map_or(0, |v| v.len())),
            proto::WriteOp::Delete { .. } => 0,
        };
        too_large("value", value, c.max_value_bytes).map_or(Ok(()), Err)
    }

    /// Proposes a command and decodes the state machine's response.
    async fn propose(&self, body: Body) -> Result<Response, ServerError> {
        let command = KvCommand {
            time_ms: now_ms(),
            body,
        };
        let bytes = command
            .encode()
            .map_err(|e| ServerError::Invalid(format!("cannot encode the command: {e}")))?;
        self.metrics.proposals.inc();
        let out = self.shared_node().propose(bytes).await;
        let out = match out {
            Ok(raw) => proto::decode::<Response>(&raw).map_err(|e| {
                ServerError::Unknown(format!("the state machine's response is undecodable: {e}"))
            }),
            Err(ProposeError::NotLeader(n)) | Err(ProposeError::Dropped(n)) => {
                Err(self.not_leader(n.leader_hint))
            }
            Err(ProposeError::TransferInProgress { to }) => Err(self.not_leader(Some(to))),
            // Not applied; this leader is handing over: the client retries elsewhere.
            Err(ProposeError::StateLost) => Err(self.not_leader(None)),
            // Not appended: back-pressure, the client retries after a backoff.
            Err(e @ (ProposeError::Busy { .. } | ProposeError::Overloaded { .. })) => {
                Err(ServerError::Busy(e.to_string()))
            }
            Err(ProposeError::Indeterminate) => Err(ServerError::Unknown(
                "a snapshot replaced the log while the write was in flight".into(),
            )),
            Err(ProposeError::Stopped) => Err(ServerError::Unknown(
                "the node stopped while the write was in flight".into(),
            )),
            Err(e) => Err(ServerError::Unknown(e.to_string())),
        };
        if out.is_err() {
            self.metrics.proposal_failures.inc();
        }
        out
    }

    fn shared_node(&self) -> &Node {
        &self.node
    }

    async fn read(
        &self,
        op: ReadOp,
        consistency: Consistency,
        held: &mut Held,
    ) -> Result<Response, ServerError> {
        if consistency == Consistency::Linearizable {
            match self.node.read().await {
                Ok(_) => {}
                Err(ReadError::NotLeader(n)) => return Err(self.not_leader(n.leader_hint)),
                Err(e @ ReadError::Overloaded { .. }) => {
                    return Err(ServerError::Busy(e.to_string()));
                }
                Err(e) => return Err(ServerError::Failed(e.to_string())),
            }
        } else if self.node.metrics().with(|m| m.state_lost) {
            // A local read of a lost state would see an old or empty store.
            return Err(ServerError::Busy(
                "this node lost its state machine's state and waits for a snapshot from the leader; read from another node".into(),
            ));
        }
        let (start, end, limit) = match op {
            // A point read from LMDB's map takes microseconds: here, not on another
            // thread (a hand-off costs more than the read).
            ReadOp::Get { key } => {
                let value = self
                    .sm
                    .read(|view| kv::get(view.txn, view.data, &key))
                    .map_err(|e| ServerError::Failed(format!("read failed: {e}")))?;
                let size = value.as_ref().map_or(0, |v| v.len() as u64);
                if size > REQUEST_OVERHEAD {
                    held.answer = Some(self.limits.budget.try_reserve(size).ok_or_else(|| {
                        self.metrics.requests_busy.inc();
                        ServerError::Busy(format!(
                            "this node holds {} bytes of requests and answers in flight; a value of {size} bytes must wait",
                            self.limits.budget.limit()
                        ))
                    })?);
                }
                return Ok(Response::Value {
                    value: value.map(Bytes::from),
                });
            }
            ReadOp::Scan { start, end, limit } => (start, end, limit),
        };
        // The answer is at most what the budget holds for it: 64 KiB to half a frame.
        let room = self
            .limits
            .budget
            .reserve_up_to(64 << 10, (proto::MAX_FRAME / 2) as u64)
            .ok_or_else(|| {
                self.metrics.requests_busy.inc();
                ServerError::Busy(format!(
                    "this node holds {} bytes of requests and answers in flight; a scan must wait",
                    self.limits.budget.limit()
                ))
            })?;
        let max_bytes = usize::try_from(room.bytes()).unwrap_or(usize::MAX);
        // A scan may walk thousands of keys: on the blocking pool.
        let sm = self.sm.clone();
        let read = tokio::task::spawn_blocking(move || {
            sm.read(|view| {
                let (mut items, mut more) =
                    kv::scan(view, &start, end.as_deref(), limit.min(MAX_SCAN) as usize)?;
                // Keep the answer within one frame and the bytes reserved for it.
                let mut size = 0;
                if let Some(cut) = items.iter().position(|(k, v)| {
                    size += k.len() + v.len() + 16;
                    size > max_bytes
                }) {
                    items.truncate(cut.max(1));
                    more = true;
                }
                Ok(Response::Scanned { items, more })
            })
        })
        .await;
        match read {
            Ok(Ok(r)) => {
                // Hold what the answer takes, not what it might have.
                let mut room = room;
                if let Response::Scanned { items, .. } = &r {
                    room.shrink_to(
                        items
                            .iter()
                            .map(|(k, v)| (k.len() + v.len() + 16) as u64)
                            .sum(),
                    );
                }
                held.answer = Some(room);
                Ok(r)
            }
            Ok(Err(e)) => Err(ServerError::Failed(format!("read failed: {e}"))),
            Err(e) => Err(ServerError::Failed(format!("read task failed: {e}"))),
        }
    }

    async fn admin(&self, op: AdminOp) -> Result<Response, ServerError> {
        let membership_err = |e: raft_core::MembershipError| match e {
            raft_core::MembershipError::NotLeader(n) => self.not_leader(n.leader_hint),
            other => ServerError::Failed(other.to_string()),
        };
        match op {
            AdminOp::Status => Ok(Response::Status(self.status())),
            AdminOp::AddLearner { id, addr } => {
                let resolved = crate::config::resolve(&addr)
                    .map_err(|e| ServerError::Invalid(format!("address {addr:?}: {e}")))?;
                if id.0 == 0 {
                    return Err(ServerError::Invalid("node id 0 is not allowed".into()));
                }
                // Record the address first, so every node can reach the learner.
                match self
                    .propose(Body::SetAddress {
                        id,
                        addr: resolved.to_string(),
                    })
                    .await?
                {
                    Response::Done => {}
                    other => {
                        return Err(ServerError::Failed(format!(
                            "recording the address: {other:?}"
                        )));
                    }
                }
                self.learn_address(id, resolved);
                self.node.add_learner(id).await.map_err(membership_err)?;
                Ok(Response::Done)
            }
            AdminOp::Promote { id } => {
                self.node
                    .change_membership(ConfChange::Promote(id))
                    .await
                    .map_err(membership_err)?;
                Ok(Response::Done)
            }
            AdminOp::Remove { id } => {
                self.node
                    .change_membership(ConfChange::Remove(id))
                    .await
                    .map_err(membership_err)?;
                Ok(Response::Done)
            }
            AdminOp::TransferLeader { to } => match self.node.transfer_leader(to).await {
                Ok(()) => Ok(Response::Done),
                Err(raft_core::TransferError::NotLeader(n)) => Err(self.not_leader(n.leader_hint)),
                Err(e) => Err(ServerError::Failed(e.to_string())),
            },
            AdminOp::SaveSnapshot => Err(ServerError::Invalid(
                "a snapshot save needs a stream of its own (send it as the only request of a stream, as `raft-server snapshot save` does)".into(),
            )),
            AdminOp::Snapshot => {
                if self.node.trigger_snapshot().await {
                    Ok(Response::Done)
                } else {
                    Err(ServerError::Failed(
                        "no snapshot started: one is being built, or nothing new to cover".into(),
                    ))
                }
            }
        }
    }

    /// A snapshot save ([`AdminOp::SaveSnapshot`]) on its own stream: streams the
    /// node's newest snapshot as [`SaveFrame`]s, or one error frame.
    async fn serve_save(&self, caller: &Caller, mut send: quinn::SendStream) {
        let started = Instant::now();
        match self.save_snapshot(caller, &mut send).await {
            Ok(header) => {
                tracing::info!(node = %self.id, client = %caller.info.principal, snapshot = ?header.meta.last_log_id, bytes = header.size, confirmed = header.confirmed, elapsed = ?started.elapsed(), "streamed a snapshot for a backup");
            }
            Err(e) => {
                tracing::warn!(node = %self.id, client = %caller.info.principal, error = %e, "a snapshot save failed");
                let _ = self.send_save(&mut send, &SaveFrame::Error(e)).await;
            }
        }
        let _ = send.finish();
    }

    /// Makes sure a snapshot covers every write acknowledged before now (a ReadIndex
    /// round, then a snapshot at or after what is applied), and streams it. The
    /// snapshot is a file the state machine wrote from one read transaction: a
    /// point-in-time view, whatever is applied meanwhile.
    async fn save_snapshot(
        &self,
        caller: &Caller,
        send: &mut quinn::SendStream,
    ) -> Result<SaveHeader, ServerError> {
        self.authorize(caller, &AdminOp::SaveSnapshot)?;
        let Ok(_permit) = self.saves.try_acquire() else {
            return Err(ServerError::Busy(
                "a snapshot save is already in progress on this node".into(),
            ));
        };
        let taken_at_ms = now_ms();
        let read_index = match tokio::time::timeout(SAVE_BARRIER_WAIT, self.node.read()).await {
            Ok(Ok(index)) => Some(index),
            Ok(Err(e)) => {
                tracing::warn!(node = %self.id, error = %e, "a snapshot save could not confirm with the leader that this node is up to date; saving what it applied");
                None
            }
            Err(_) => {
                tracing::warn!(node = %self.id, "a snapshot save got no confirmation from the leader within {SAVE_BARRIER_WAIT:?}; saving what this node applied");
                None
            }
        };
        let confirmed = read_index.is_some();
        let (applied, lost) = self.node.metrics().with(|m| (m.applied, m.state_lost));
        // Every write acknowledged before the request is at or below the read index,
        // and applied here once the read returned.
        let floor = read_index.map_or(applied, |r| r.max(applied));
        if lost {
            return Err(ServerError::Failed(
                "this node lost its state machine's state and waits for a snapshot from the leader; save from another node".into(),
            ));
        }
        let failed =
            |what: &str, e: &dyn std::fmt::Display| ServerError::Failed(format!("{what}: {e}"));
        let deadline = Instant::now() + SAVE_SNAPSHOT_WAIT;
        let meta = loop {
            let state = self
                .sm
                .state()
                .await
                .map_err(|e| failed("reading the state machine", &e))?;
            if let Some(s) = state
                .snapshot
                .filter(|s| s.id != 0 && s.last_log_id.index >= floor)
            {
                break s;
            }
            if Instant::now() >= deadline {
                return Err(ServerError::Failed(format!(
                    "no snapshot covering index {} was built within {SAVE_SNAPSHOT_WAIT:?}",
                    floor.0
                )));
            }
            // False while one is being built: the next round asks again.
            let _ = self.node.trigger_snapshot().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let pruned = || {
            ServerError::Failed(format!(
                "snapshot {:x} was replaced by newer ones during the transfer; retry",
                meta.id
            ))
        };
        let size = self
            .sm
            .snapshot_size(meta.id)
            .map_err(|e| failed("reading the snapshot's metadata", &e))?
            .ok_or_else(pruned)?;
        let header = SaveHeader {
            cluster: self.cluster.clone(),
            node: self.id,
            taken_at_ms,
            confirmed,
            meta: meta.clone(),
            size,
        };
        self.send_save(send, &SaveFrame::Header(header.clone()))
            .await?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut offset = 0u64;
        loop {
            let (bytes, last) = self
                .sm
                .read_snapshot(meta.id, offset, proto::SAVE_CHUNK)
                .await
                .map_err(|e| failed("reading the snapshot", &e))?
                .ok_or_else(pruned)?;
            if bytes.is_empty() && !last {
                return Err(ServerError::Failed(format!(
                    "the snapshot file ended at {offset} bytes of {size}"
                )));
            }
            digest.update(&bytes);
            offset += bytes.len() as u64;
            if !bytes.is_empty() {
                self.send_save(send, &SaveFrame::Chunk(bytes)).await?;
            }
            if last {
                break;
            }
        }
        if offset != size {
            return Err(ServerError::Failed(format!(
                "the snapshot file holds {offset} bytes, its metadata says {size}"
            )));
        }
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.finish().as_ref());
        self.send_save(send, &SaveFrame::End { size, sha256 })
            .await?;
        Ok(header)
    }

    /// Writes one frame of a snapshot save, within the frame timeout.
    async fn send_save(
        &self,
        send: &mut quinn::SendStream,
        frame: &SaveFrame,
    ) -> Result<(), ServerError> {
        let bytes = proto::encode(frame)
            .map_err(|e| ServerError::Failed(format!("cannot encode a frame: {e}")))?;
        match tokio::time::timeout(self.limits.timeout, send.write_all(&bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Unknown(format!("the client went away: {e}"))),
            Err(_) => Err(ServerError::Unknown(format!(
                "the client read nothing for {:?}",
                self.limits.timeout
            ))),
        }
    }

    fn learn_address(&self, id: NodeId, addr: SocketAddr) {
        if id == self.id {
            return;
        }
        let changed = match self.addresses.write() {
            Ok(mut a) => a.insert(id, addr) != Some(addr),
            Err(_) => false,
        };
        if changed {
            tracing::info!(node = %self.id, peer = %id, %addr, "learned a peer address");
            self.transport.add_peer(id, addr);
        }
    }

    fn status(&self) -> Status {
        let m: Metrics = self.node.metrics().get();
        let addr = |id: NodeId| self.addr_of(id).unwrap_or_else(|| "?".into());
        Status {
            id: self.id,
            role: role_name(&m),
            term: m.term.0,
            leader: m.leader,
            committed: m.committed.0,
            applied: m.applied.0,
            last_index: m.last_log_id.index.0,
            snapshot: m.snapshot.index.0,
            voters: m
                .membership
                .voters
                .iter()
                .map(|&id| (id, addr(id)))
                .collect(),
            learners: m
                .membership
                .learners
                .iter()
                .map(|&id| (id, addr(id)))
                .collect(),
            replication: m.replication.iter().map(|(&id, &i)| (id, i.0)).collect(),
        }
    }

    /// Every half second: learn addresses recorded in the log; as leader, record the
    /// addresses of members that have none yet; count leader changes and sessions.
    async fn housekeeping(self: Arc<Self>) {
        let mut last_leader = None;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let m = self.node.metrics().get();
            if m.state != NodeState::Running {
                return;
            }
            if m.leader != last_leader {
                if m.leader.is_some() {
                    self.metrics.leader_changes.inc();
                }
                last_leader = m.leader;
            }
            let sm = self.sm.clone();
            let read = tokio::task::spawn_blocking(move || {
                sm.read(|v| Ok((kv::addresses(v)?, kv::session_count(v)?)))
            })
            .await;
            let Ok(Ok((recorded, sessions))) = read else {
                continue;
            };
            self.metrics.sessions.set(sessions);
            for (id, addr) in &recorded {
                if let Ok(a) = crate::config::resolve(addr) {
                    self.learn_address(*id, a);
                }
            }
            if m.role == Role::Leader {
                let members = m.membership.voters.iter().chain(&m.membership.learners);
                for &id in members {
                    if recorded.iter().any(|(r, _)| *r == id) {
                        continue;
                    }
                    let known = self.addresses.read().ok().and_then(|a| a.get(&id).copied());
                    if let Some(addr) = known {
                        let _ = self
                            .propose(Body::SetAddress {
                                id,
                                addr: addr.to_string(),
                            })
                            .await;
                    }
                }
            }
        }
    }
}

fn role_name(m: &Metrics) -> String {
    if m.role == Role::Follower && m.membership.learners.contains(&m.id) {
        return "Learner".into();
    }
    if let NodeState::Stopped(reason) = &m.state {
        return format!("Stopped ({})", reason.as_deref().unwrap_or("shut down"));
    }
    format!("{:?}", m.role)
}

impl Exposition for Shared {
    fn metrics(&self) -> Result<String, std::fmt::Error> {
        let open = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .total;
        self.metrics.client_connections.set(open);
        self.metrics
            .request_bytes_in_flight
            .set(self.limits.budget.used());
        self.metrics.encode(NodeSample {
            node: self.node.metrics().get(),
            peers: self.transport.stats(),
            incoming_dropped: self.transport.dropped_incoming(),
            certificate_expiry: self
                .certs
                .expiry()
                .seconds_left(certificates::unix_now())
                .to_vec(),
        })
    }

    fn health(&self) -> Health {
        let m = self.node.metrics().get();
        Health {
            id: self.id.0,
            running: m.state == NodeState::Running,
            role: role_name(&m),
            term: m.term.0,
            leader: m.leader.map(|l| l.0),
            applied: m.applied.0,
        }
    }
}

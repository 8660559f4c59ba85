//! [`QuicTransport`]: raft messages between nodes over QUIC.

use crate::frame::{FrameDecoder, put_frame};
use crate::tls::{self, ALPN_CLIENT, ALPN_RAFT, Identity, TlsError};
use futures::channel::mpsc;
use futures::stream::BoxStream;
use futures::task::AtomicWaker;
use futures::{FutureExt, StreamExt};
use raft_core::node::Transport;
use raft_proto::{Envelope, Message, NodeId};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Bytes written per `write_all`: frames are batched up to this much.
const BATCH_BYTES: usize = 64 << 10;
const HELLO_MAGIC: &[u8; 8] = b"RAFTHELO";

/// How long a silent connection lives; keep-alives go out at a quarter of it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(IDLE_TIMEOUT / 4));
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// The transport settings of a connection that is not from a known peer.
fn client_transport_config(limits: ClientLimits) -> quinn::TransportConfig {
    let mut t = transport_config();
    t.max_concurrent_bidi_streams(limits.max_bidi_streams.into())
        .max_concurrent_uni_streams(limits.max_uni_streams.into())
        .receive_window(limits.receive_window.into())
        .stream_receive_window((limits.receive_window / 2).into());
    t
}

/// How a node's transport is set up.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// This node.
    pub id: NodeId,
    /// The UDP address to listen on.
    pub listen: SocketAddr,
    /// The other nodes and where they listen (more can be added with
    /// [`QuicTransport::add_peer`]).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The node's certificate, key, the cluster CA and the deny-list, at start (see
    /// [`QuicTransport::reload`] for later ones).
    pub identity: Identity,
    /// The largest frame accepted on read (a bigger one closes the stream).
    pub max_frame: usize,
    /// Messages queued per peer before the oldest is dropped.
    pub queue_messages: usize,
    /// Bytes queued per peer before the oldest message is dropped.
    pub queue_bytes: usize,
    /// Snapshot chunks queued per peer before the oldest is dropped.
    pub snapshot_queue_messages: usize,
    /// Incoming messages buffered for the node before more are dropped.
    pub incoming_capacity: usize,
    /// Reconnection backoff: the first delay, doubling up to the second (with jitter).
    pub reconnect: (Duration, Duration),
    /// Accept client connections (ALPN `raft-client/1`) on the same endpoint.
    pub accept_clients: bool,
    /// Accept a node that is not in `peers` when its certificate names the id it
    /// claims, and talk to it at the address it connected from (its listen address:
    /// the endpoint dials from the socket it listens on). For a node joining a
    /// cluster whose members it does not know yet.
    pub admit_unknown_peers: bool,
    /// Handshakes from addresses that are not known peers in progress at once, at
    /// most (default 32). Beyond that a new connection is refused at once (QUIC's
    /// CONNECTION_REFUSED, no TLS work), so a crowd of clients reconnecting under load
    /// cannot spend the node's CPU on handshakes it cannot finish in time; peers are
    /// never refused.
    pub max_client_handshakes: usize,
    /// What a connection from an address that is not a known peer may use (a client,
    /// or a node joining): QUIC stream and flow-control limits. Peers keep quinn's
    /// defaults, which a snapshot stream needs.
    pub client_limits: ClientLimits,
}

/// QUIC limits of a connection from an address that is not a known peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Bidirectional streams open at once (MAX_STREAMS). A joining node's hello and a
    /// client's lane take one each.
    pub max_bidi_streams: u32,
    /// Unidirectional streams open at once (a joining node's raft and snapshot
    /// streams).
    pub max_uni_streams: u32,
    /// Bytes the other side may send before the node reads them, on the whole
    /// connection; each stream may hold up to half of it.
    pub receive_window: u32,
}

impl Default for ClientLimits {
    /// 16 bidirectional and 4 unidirectional streams, 256 KiB buffered per connection.
    fn default() -> Self {
        ClientLimits {
            max_bidi_streams: 16,
            max_uni_streams: 4,
            receive_window: 256 << 10,
        }
    }
}

impl QuicConfig {
    /// Defaults: 16 MiB frames, 4096 messages / 64 MiB queued per peer, 16 snapshot
    /// chunks, reconnect after 50 ms doubling to 2 s, no client endpoint, only the
    /// listed peers admitted.
    pub fn new(
        id: NodeId,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
        identity: Identity,
    ) -> QuicConfig {
        QuicConfig {
            id,
            listen,
            peers,
            identity,
            max_frame: 16 << 20,
            queue_messages: 4096,
            queue_bytes: 64 << 20,
            snapshot_queue_messages: 16,
            incoming_capacity: 65_536,
            reconnect: (Duration::from_millis(50), Duration::from_secs(2)),
            accept_clients: false,
            admit_unknown_peers: false,
            max_client_handshakes: 32,
            client_limits: ClientLimits::default(),
        }
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// Certificates or keys.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket (address in use, ...).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// quinn refused the TLS configuration.
    #[error("QUIC TLS setup: {0}")]
    Crypto(String),
    /// The node's certificate is not one this side trusts (another cluster's CA, or
    /// not a node's): retrying will not help.
    #[error(
        "connect to {addr}: its certificate is not trusted ({detail}); check that the CA file is this cluster's CA"
    )]
    Untrusted {
        /// Where.
        addr: SocketAddr,
        /// The TLS error.
        detail: String,
    },
    /// Connecting failed.
    #[error("connect to {addr}: {detail}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        detail: String,
    },
}

/// What [`QuicTransport::start`] returns.
pub struct Started {
    /// The transport, for the node to send with.
    pub transport: Arc<QuicTransport>,
    /// Messages from peers, for the node to receive.
    pub incoming: BoxStream<'static, (NodeId, Message)>,
    /// Client connections (when `accept_clients`), already authenticated.
    pub clients: Option<mpsc::Receiver<quinn::Connection>>,
}

/// A transport's view of one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer.
    pub id: NodeId,
    /// A connection is up and greeted.
    pub connected: bool,
    /// Messages dropped because its queue was full.
    pub dropped: u64,
    /// Frames written to it.
    pub sent_frames: u64,
    /// Messages waiting.
    pub queued: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wakes every waiter when something changes.
#[derive(Default)]
struct Signal {
    version: AtomicU64,
    wakers: Mutex<Vec<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        for w in lock(&self.wakers).drain(..) {
            w.wake();
        }
    }

    fn changed_since(&self, seen: u64) -> impl Future<Output = ()> + '_ {
        futures::future::poll_fn(move |cx| {
            if self.version.load(Ordering::SeqCst) != seen {
                return Poll::Ready(());
            }
            lock(&self.wakers).push(cx.waker().clone());
            if self.version.load(Ordering::SeqCst) != seen {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// A bounded queue of encoded frames for one stream to one peer.
struct Lane {
    queue: Mutex<(VecDeque<Vec<u8>>, usize)>,
    waker: AtomicWaker,
    max_messages: usize,
    max_bytes: usize,
}

impl Lane {
    fn new(max_messages: usize, max_bytes: usize) -> Lane {
        Lane {
            queue: Mutex::new((VecDeque::new(), 0)),
            waker: AtomicWaker::new(),
            max_messages,
            max_bytes,
        }
    }

    /// Queues a frame, dropping the oldest while over the limits; returns the drops.
    fn push(&self, frame: Vec<u8>) -> u64 {
        let mut dropped = 0;
        {
            let mut q = lock(&self.queue);
            q.1 += frame.len();
            q.0.push_back(frame);
            while q.0.len() > 1 && (q.0.len() > self.max_messages || q.1 > self.max_bytes) {
                if let Some(old) = q.0.pop_front() {
                    q.1 -= old.len();
                    dropped += 1;
                }
            }
        }
        self.waker.wake();
        dropped
    }

    /// Waits for frames and takes up to `BATCH_BYTES` of them (at least one) as one
    /// length-prefixed buffer, with the number of frames.
    async fn take_batch(&self) -> (Vec<u8>, u64) {
        futures::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            let mut q = lock(&self.queue);
            if q.0.is_empty() {
                return Poll::Pending;
            }
            let mut out = Vec::with_capacity(BATCH_BYTES.min(q.1 + 4 * q.0.len()));
            let mut n = 0;
            while let Some(front) = q.0.front() {
                if n > 0 && out.len() + front.len() + 4 > BATCH_BYTES {
                    break;
                }
                let f = q.0.pop_front().unwrap_or_default();
                q.1 -= f.len();
                put_frame(&mut out, &f);
                n += 1;
            }
            Poll::Ready((out, n))
        })
        .await
    }

    fn len(&self) -> usize {
        lock(&self.queue).0.len()
    }
}

struct Peer {
    id: NodeId,
    addr: Mutex<SocketAddr>,
    raft: Lane,
    snapshot: Lane,
    conn: Mutex<Option<quinn::Connection>>,
    conn_changed: Signal,
    dropped: AtomicU64,
    sent_frames: AtomicU64,
    removed: AtomicBool,
}

impl Peer {
    fn connection(&self) -> Option<quinn::Connection> {
        lock(&self.conn)
            .clone()
            .filter(|c| c.close_reason().is_none())
    }

    fn install(&self, conn: quinn::Connection) {
        if let Some(old) = lock(&self.conn).replace(conn) {
            old.close(0u32.into(), b"replaced");
        }
        self.conn_changed.notify();
    }
}

struct Inner {
    id: NodeId,
    config: QuicConfig,
    endpoint: quinn::Endpoint,
    runtime: Arc<dyn quinn::Runtime>,
    /// How to dial peers; replaced by [`QuicTransport::reload`].
    client_config: Mutex<quinn::ClientConfig>,
    /// The server side for connections that are not from a known peer (the limits of
    /// `config.client_limits`); replaced by [`QuicTransport::reload`].
    client_server_config: Mutex<Arc<quinn::ServerConfig>>,
    peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
    incoming: mpsc::Sender<(NodeId, Message)>,
    clients: Option<mpsc::Sender<quinn::Connection>>,
    dropped_incoming: AtomicU64,
    /// Handshakes of non-peers in progress (see `max_client_handshakes`).
    client_handshakes: AtomicUsize,
    closed: AtomicBool,
    jitter: AtomicU64,
}

/// Raft messages over QUIC with mutual TLS. One connection per pair of nodes (dialed by
/// the lower id, redialed with jittered backoff), greeted with an application hello
/// before use; on it, one long-lived stream per direction for votes, heartbeats and
/// appends, and another for snapshot chunks, so a large snapshot never delays a
/// heartbeat.
pub struct QuicTransport {
    inner: Arc<Inner>,
}

impl QuicTransport {
    /// Binds the endpoint and starts connecting to peers. Tasks run on `runtime`.
    pub fn start(
        config: QuicConfig,
        runtime: Arc<dyn quinn::Runtime>,
    ) -> Result<Started, QuicError> {
        let (server, client_server, client_config) = endpoint_configs(
            &config.identity,
            config.accept_clients,
            config.client_limits,
        )?;
        let socket =
            std::net::UdpSocket::bind(config.listen).map_err(|source| QuicError::Bind {
                addr: config.listen,
                source,
            })?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime.clone(),
        )
        .map_err(|source| QuicError::Bind {
            addr: config.listen,
            source,
        })?;
        let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_capacity);
        let (clients_tx, clients_rx) = if config.accept_clients {
            let (tx, rx) = mpsc::channel(1024);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let inner = Arc::new(Inner {
            id: config.id,
            endpoint,
            runtime,
            client_config: Mutex::new(client_config),
            client_server_config: Mutex::new(Arc::new(client_server)),
            peers: Mutex::new(HashMap::new()),
            incoming: incoming_tx,
            clients: clients_tx,
            dropped_incoming: AtomicU64::new(0),
            client_handshakes: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            jitter: AtomicU64::new(config.id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            config,
        });
        for (&id, &addr) in &inner.config.peers {
            Inner::add_peer(&inner, id, addr);
        }
        let acceptor = inner.clone();
        inner
            .runtime
            .spawn(Box::pin(async move { acceptor.accept_loop().await }));
        Ok(Started {
            transport: Arc::new(QuicTransport { inner }),
            incoming: incoming_rx.boxed(),
            clients: clients_rx,
        })
    }

    /// Uses `identity` (certificate, key, CA bundle, deny-list) for every handshake
    /// from now on, accepting and dialing: certificates can be rotated and revoked
    /// without a restart. Connections already up stay up (TLS does not look at them
    /// again), except a peer's whose certificate `identity`'s deny-list lists: that
    /// one is closed, and its redial is refused. If `identity` cannot be used (a key
    /// that does not match its certificate, an empty CA bundle), this returns the
    /// error and changes nothing.
    pub fn reload(&self, identity: &Identity) -> Result<(), QuicError> {
        let (server, client_server, client) = endpoint_configs(
            identity,
            self.inner.config.accept_clients,
            self.inner.config.client_limits,
        )?;
        self.inner.endpoint.set_server_config(Some(server));
        *lock(&self.inner.client_server_config) = Arc::new(client_server);
        *lock(&self.inner.client_config) = client;
        let peers: Vec<Arc<Peer>> = lock(&self.inner.peers).values().cloned().collect();
        for peer in peers {
            let Some(conn) = peer.connection() else {
                continue;
            };
            if let Some(cert) = crate::cert::peer_certificate(&conn)
                && identity.deny.denies(&cert)
            {
                tracing::warn!(node = %self.inner.id, peer = %peer.id, "closing the connection of a peer whose certificate is revoked");
                conn.close(1u32.into(), b"certificate revoked");
            }
        }
        Ok(())
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Starts talking to a new peer (after a membership change).
    pub fn add_peer(&self, id: NodeId, addr: SocketAddr) {
        Inner::add_peer(&self.inner, id, addr);
    }

    /// Stops talking to a peer.
    pub fn remove_peer(&self, id: NodeId) {
        if let Some(p) = lock(&self.inner.peers).remove(&id) {
            p.removed.store(true, Ordering::SeqCst);
            if let Some(c) = lock(&p.conn).take() {
                c.close(0u32.into(), b"removed");
            }
            p.conn_changed.notify();
            p.raft.waker.wake();
            p.snapshot.waker.wake();
        }
    }

    /// Per-peer counters.
    pub fn stats(&self) -> Vec<PeerStats> {
        let peers = lock(&self.inner.peers);
        let mut out: Vec<PeerStats> = peers
            .values()
            .map(|p| PeerStats {
                id: p.id,
                connected: p.connection().is_some(),
                dropped: p.dropped.load(Ordering::Relaxed),
                sent_frames: p.sent_frames.load(Ordering::Relaxed),
                queued: p.raft.len() + p.snapshot.len(),
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    /// Incoming messages dropped because the node did not keep up.
    pub fn dropped_incoming(&self) -> u64 {
        self.inner.dropped_incoming.load(Ordering::Relaxed)
    }

    /// Closes every connection and stops the endpoint.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.endpoint.close(0u32.into(), b"shutdown");
        for p in lock(&self.inner.peers).values() {
            p.conn_changed.notify();
            p.raft.waker.wake();
            p.snapshot.waker.wake();
        }
    }

    fn enqueue(&self, to: NodeId, message: Message, snapshot: bool) {
        let Some(peer) = lock(&self.inner.peers).get(&to).cloned() else {
            tracing::debug!(node = %self.inner.id, %to, "no address for this peer; message dropped");
            return;
        };
        let mut frame = Vec::new();
        let env = Envelope {
            from: self.inner.id,
            to,
            message,
        };
        if let Err(e) = env.encode_into(&mut frame) {
            tracing::error!(node = %self.inner.id, %to, error = %e, "cannot encode a message; dropped");
            return;
        }
        let lane = if snapshot { &peer.snapshot } else { &peer.raft };
        let dropped = lane.push(frame);
        if dropped > 0 {
            peer.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.close();
    }
}

impl Transport for QuicTransport {
    fn send(&self, to: NodeId, message: Message) {
        self.enqueue(to, message, false);
    }

    fn send_snapshot(&self, to: NodeId, message: Message) {
        self.enqueue(to, message, true);
    }
}

/// A timer future on the quinn runtime.
fn sleep(runtime: &Arc<dyn quinn::Runtime>, d: Duration) -> impl Future<Output = ()> + use<> {
    let mut timer = runtime.new_timer(Instant::now() + d);
    futures::future::poll_fn(move |cx: &mut Context<'_>| timer.as_mut().poll(cx))
}

impl Inner {
    fn add_peer(this: &Arc<Inner>, id: NodeId, addr: SocketAddr) {
        if id == this.id {
            return;
        }
        let peer = {
            let mut peers = lock(&this.peers);
            if let Some(p) = peers.get(&id) {
                *lock(&p.addr) = addr;
                return;
            }
            let c = &this.config;
            let peer = Arc::new(Peer {
                id,
                addr: Mutex::new(addr),
                raft: Lane::new(c.queue_messages, c.queue_bytes),
                snapshot: Lane::new(c.snapshot_queue_messages, usize::MAX),
                conn: Mutex::new(None),
                conn_changed: Signal::default(),
                dropped: AtomicU64::new(0),
                sent_frames: AtomicU64::new(0),
                removed: AtomicBool::new(false),
            });
            peers.insert(id, peer.clone());
            peer
        };
        for snapshot in [false, true] {
            let (inner, peer) = (this.clone(), peer.clone());
            this.runtime
                .spawn(Box::pin(async move { inner.writer(peer, snapshot).await }));
        }
        if this.id < id {
            let (inner, peer) = (this.clone(), peer);
            this.runtime
                .spawn(Box::pin(async move { inner.dial_loop(peer).await }));
        }
    }

    fn done(&self, peer: &Peer) -> bool {
        self.closed.load(Ordering::SeqCst) || peer.removed.load(Ordering::SeqCst)
    }

    fn jitter(&self, max: Duration) -> Duration {
        let mut x = self.jitter.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter.store(x, Ordering::Relaxed);
        max.mul_f64((x % 1000) as f64 / 1000.0)
    }

    /// Keeps a connection to `peer` up: dial, greet, wait for it to close, back off,
    /// dial again.
    async fn dial_loop(self: Arc<Self>, peer: Arc<Peer>) {
        let (first, max) = self.config.reconnect;
        let mut backoff = first;
        let mut failures = 0u32;
        while !self.done(&peer) {
            let addr = *lock(&peer.addr);
            match self.dial(peer.id, addr).await {
                Ok(conn) => {
                    if failures > 0 {
                        tracing::info!(node = %self.id, peer = %peer.id, %addr, "connected again");
                    }
                    failures = 0;
                    backoff = first;
                    peer.install(conn.clone());
                    self.spawn_readers(peer.id, conn.clone());
                    let reason = conn.closed().await;
                    tracing::debug!(node = %self.id, peer = %peer.id, %reason, "connection closed");
                }
                Err(e) => {
                    failures += 1;
                    // Log the first failure and then every 20th, not every retry.
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(node = %self.id, peer = %peer.id, %addr, error = %e, failures, "cannot connect; retrying");
                    }
                }
            }
            if self.done(&peer) {
                return;
            }
            sleep(&self.runtime, backoff / 2 + self.jitter(backoff)).await;
            backoff = (backoff * 2).min(max);
        }
    }

    async fn dial(&self, id: NodeId, addr: SocketAddr) -> Result<quinn::Connection, QuicError> {
        let err = |detail: String| QuicError::Connect { addr, detail };
        let connecting = self
            .endpoint
            .connect_with(lock(&self.client_config).clone(), addr, &tls::node_name(id))
            .map_err(|e| err(e.to_string()))?;
        let conn = connecting.await.map_err(|e| err(e.to_string()))?;
        // The hello: with TLS 1.3 the peer's verdict on our certificate only shows
        // once a stream is used, so nothing counts as connected before the answer.
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| err(e.to_string()))?;
        let mut hello = HELLO_MAGIC.to_vec();
        hello.extend_from_slice(&self.id.0.to_le_bytes());
        send.write_all(&hello)
            .await
            .map_err(|e| err(format!("hello: {e}")))?;
        let _ = send.finish();
        let mut answer = [0u8; 16];
        recv.read_exact(&mut answer)
            .await
            .map_err(|e| err(format!("the peer refused us: {e}")))?;
        if &answer[..8] != HELLO_MAGIC || answer[8..] != id.0.to_le_bytes() {
            conn.close(1u32.into(), b"wrong hello");
            return Err(err("the peer answered with another identity".into()));
        }
        Ok(conn)
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let remote = incoming.remote_address();
            let from_peer = lock(&self.peers).values().any(|p| *lock(&p.addr) == remote);
            if !from_peer {
                let busy = self.client_handshakes.fetch_add(1, Ordering::SeqCst);
                if busy >= self.config.max_client_handshakes {
                    self.client_handshakes.fetch_sub(1, Ordering::SeqCst);
                    tracing::debug!(node = %self.id, %remote, busy, "refused a connection: too many handshakes in progress");
                    incoming.refuse();
                    continue;
                }
            }
            let inner = self.clone();
            let connecting = if from_peer {
                incoming.accept()
            } else {
                incoming.accept_with(lock(&self.client_server_config).clone())
            };
            self.runtime.spawn(Box::pin(async move {
                let handshake = match connecting {
                    Ok(connecting) => connecting.await,
                    Err(e) => Err(e),
                };
                if !from_peer {
                    inner.client_handshakes.fetch_sub(1, Ordering::SeqCst);
                }
                match handshake {
                    Ok(conn) => inner.on_connection(conn).await,
                    // The other side gave up (a client's own timeout): not a refusal.
                    Err(e) if abandoned(&e) => {
                        tracing::debug!(node = %inner.id, %remote, error = %e, "a connection was abandoned during its handshake")
                    }
                    Err(e) => tracing::warn!(node = %inner.id, %remote, error = %e, "refused a connection (TLS handshake failed)"),
                }
            }));
        }
    }

    async fn on_connection(self: Arc<Self>, conn: quinn::Connection) {
        let remote = conn.remote_address();
        let alpn = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol);
        match alpn.as_deref() {
            Some(p) if p == ALPN_RAFT => {}
            Some(p) if p == ALPN_CLIENT => {
                if let Some(mut clients) = self.clients.clone()
                    && clients.try_send(conn.clone()).is_err()
                {
                    conn.close(2u32.into(), b"busy");
                }
                return;
            }
            _ => {
                conn.close(1u32.into(), b"unknown protocol");
                return;
            }
        }
        let peer = match self.greet(&conn).await {
            Ok(peer) => peer,
            Err(reason) => {
                tracing::warn!(node = %self.id, %remote, reason, "refused a peer");
                conn.close(1u32.into(), reason.as_bytes());
                return;
            }
        };
        tracing::debug!(node = %self.id, peer = %peer.id, %remote, "peer connected");
        peer.install(conn.clone());
        self.spawn_readers(peer.id, conn);
    }

    /// Answers a dialer's hello, if the id it claims is the one its certificate names.
    async fn greet(self: &Arc<Self>, conn: &quinn::Connection) -> Result<Arc<Peer>, String> {
        let accept = conn.accept_bi();
        let timeout = sleep(&self.runtime, Duration::from_secs(5));
        let (mut send, mut recv) = futures::select! {
            r = accept.fuse() => r.map_err(|e| format!("no hello: {e}"))?,
            _ = timeout.fuse() => return Err("no hello within 5 s".into()),
        };
        let mut hello = [0u8; 16];
        recv.read_exact(&mut hello)
            .await
            .map_err(|e| format!("bad hello: {e}"))?;
        if &hello[..8] != HELLO_MAGIC {
            return Err("not a raft hello".into());
        }
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&hello[8..]);
        let claimed = NodeId(u64::from_le_bytes(raw));
        let certs = conn
            .peer_identity()
            .and_then(|i| {
                i.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .ok_or("no client certificate")?;
        let cert = certs.first().ok_or("an empty certificate chain")?;
        if !tls::names_node(cert, claimed) {
            return Err(format!(
                "claims to be node {claimed}, but its certificate is not node {claimed}'s"
            ));
        }
        let known = lock(&self.peers).get(&claimed).cloned();
        let peer = match known {
            Some(peer) => peer,
            None if self.config.admit_unknown_peers && claimed != self.id => {
                let addr = conn.remote_address();
                tracing::info!(node = %self.id, peer = %claimed, %addr, "admitted a node that is not in the peer list");
                Inner::add_peer(self, claimed, addr);
                lock(&self.peers)
                    .get(&claimed)
                    .cloned()
                    .ok_or_else(|| format!("node {claimed} was removed while connecting"))?
            }
            None => return Err(format!("node {claimed} is not a known peer")),
        };
        let mut answer = HELLO_MAGIC.to_vec();
        answer.extend_from_slice(&self.id.0.to_le_bytes());
        send.write_all(&answer)
            .await
            .map_err(|e| format!("answering the hello: {e}"))?;
        let _ = send.finish();
        Ok(peer)
    }

    fn spawn_readers(self: &Arc<Self>, peer: NodeId, conn: quinn::Connection) {
        let inner = self.clone();
        self.runtime.spawn(Box::pin(async move {
            while let Ok(recv) = conn.accept_uni().await {
                let reader = inner.clone();
                inner.runtime.spawn(Box::pin(
                    async move { reader.read_stream(peer, recv).await },
                ));
            }
        }));
    }

    /// Reads frames from one stream of `peer` into the node's incoming queue.
    async fn read_stream(self: Arc<Self>, peer: NodeId, mut recv: quinn::RecvStream) {
        // The writer opens each stream with its kind: 0 raft, 1 snapshot. Both carry
        // the same frames; the byte only tells the two apart in traces.
        let mut kind = [0u8; 1];
        if recv.read_exact(&mut kind).await.is_err() {
            return;
        }
        if kind[0] > 1 {
            tracing::error!(node = %self.id, %peer, kind = kind[0], "unknown stream kind; closing the stream");
            let _ = recv.stop(3u32.into());
            return;
        }
        let mut decoder = FrameDecoder::new(self.config.max_frame);
        let mut tx = self.incoming.clone();
        loop {
            let chunk = match recv.read_chunk(BATCH_BYTES, true).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    if let Err(e) = decoder.finish() {
                        tracing::warn!(node = %self.id, %peer, error = %e, "stream ended inside a frame");
                    }
                    return;
                }
                Err(_) => return, // the connection went away; the dialer redials
            };
            decoder.push(&chunk.bytes);
            loop {
                let frame = match decoder.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(node = %self.id, %peer, error = %e, "bad frame; closing the stream");
                        let _ = recv.stop(3u32.into());
                        return;
                    }
                };
                let env = match Envelope::decode(frame) {
                    Ok(env) => env,
                    Err(e) => {
                        tracing::error!(node = %self.id, %peer, error = %e, "undecodable frame; closing the stream");
                        let _ = recv.stop(3u32.into());
                        return;
                    }
                };
                if env.from != peer || env.to != self.id {
                    tracing::error!(node = %self.id, %peer, from = %env.from, to = %env.to, "a peer sent a message under another identity; closing the stream");
                    let _ = recv.stop(4u32.into());
                    return;
                }
                if tx.try_send((peer, env.message)).is_err() {
                    self.dropped_incoming.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Writes one lane of `peer` to its stream, reopening it on every new connection.
    async fn writer(self: Arc<Self>, peer: Arc<Peer>, snapshot: bool) {
        let lane = if snapshot { &peer.snapshot } else { &peer.raft };
        while !self.done(&peer) {
            let seen = peer.conn_changed.version.load(Ordering::SeqCst);
            let Some(conn) = peer.connection() else {
                peer.conn_changed.changed_since(seen).await;
                continue;
            };
            let mut send = match conn.open_uni().await {
                Ok(s) => s,
                Err(_) => {
                    peer.conn_changed.changed_since(seen).await;
                    continue;
                }
            };
            // quinn sends the higher priority stream's data first: votes, heartbeats
            // and appends overtake snapshot bytes already queued on the connection.
            let _ = send.set_priority(if snapshot { 0 } else { 1 });
            if send.write_all(&[u8::from(snapshot)]).await.is_err() {
                continue;
            }
            loop {
                let batch = futures::select! {
                    b = lane.take_batch().fuse() => b,
                    _ = peer.conn_changed.changed_since(seen).fuse() => break,
                };
                let (bytes, frames) = batch;
                if send.write_all(&bytes).await.is_err() {
                    break; // lost with the connection: Raft resends what matters
                }
                peer.sent_frames.fetch_add(frames, Ordering::Relaxed);
                if self.done(&peer) {
                    return;
                }
            }
        }
    }
}

/// The endpoint's TLS settings for `identity`: accepting (ALPN `raft/1`, and
/// `raft-client/1` with `accept_clients`) and dialing peers.
fn endpoint_configs(
    identity: &Identity,
    accept_clients: bool,
    client_limits: ClientLimits,
) -> Result<
    (
        quinn::ServerConfig,
        quinn::ServerConfig,
        quinn::ClientConfig,
    ),
    QuicError,
> {
    let mut alpns: Vec<&[u8]> = vec![ALPN_RAFT];
    if accept_clients {
        alpns.push(ALPN_CLIENT);
    }
    let server_tls = tls::server_config(identity, &alpns)?;
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .map_err(|e| QuicError::Crypto(e.to_string()))?;
    let server_crypto = Arc::new(server_crypto);
    let mut server = quinn::ServerConfig::with_crypto(server_crypto.clone());
    server.transport_config(Arc::new(transport_config()));
    // The same TLS (certificate, CA bundle, deny-list), with a client's limits.
    let mut client_server = quinn::ServerConfig::with_crypto(server_crypto);
    client_server.transport_config(Arc::new(client_transport_config(client_limits)));
    let client_tls = tls::client_config(identity, ALPN_RAFT)?;
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
        .map_err(|e| QuicError::Crypto(e.to_string()))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
    // A peer that dies without closing is noticed within IDLE_TIMEOUT (a restarted
    // one at once, through QUIC's stateless reset), then redialed.
    let transport_config = Arc::new(transport_config());
    client_config.transport_config(transport_config.clone());
    Ok((server, client_server, client_config))
}

/// Whether a handshake ended because the other side gave up on it (it closed the
/// connection as an application, or went silent), rather than because it was refused.
fn abandoned(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::TimedOut => true,
        quinn::ConnectionError::ConnectionClosed(c) => {
            c.error_code == quinn::TransportErrorCode::APPLICATION_ERROR
        }
        _ => false,
    }
}

/// A client's connection to a node (ALPN `raft-client/1`), with the endpoint it uses.
pub struct ClientConnection {
    /// The connection; open a bidirectional stream per request.
    pub connection: quinn::Connection,
    /// Keeps the client's endpoint alive.
    pub endpoint: quinn::Endpoint,
}

/// Connects a client to the node at `addr`, presenting the client's certificate and
/// checking the node's against the cluster CA.
pub async fn connect_client(
    identity: &Identity,
    addr: SocketAddr,
    runtime: Arc<dyn quinn::Runtime>,
) -> Result<ClientConnection, QuicError> {
    connect_client_within(identity, addr, runtime, None).await
}

/// [`connect_client`], giving up when the node has not answered the first handshake
/// flight within `first_answer`. A live node answers that flight at once, before any
/// certificate check (even a loaded one: it is a few packets, not a request), while a
/// dead one, or a port nothing listens on, never answers: QUIC has no refusal to
/// wait for, so without this a dead endpoint costs a whole handshake timeout.
pub async fn connect_client_within(
    identity: &Identity,
    addr: SocketAddr,
    runtime: Arc<dyn quinn::Runtime>,
    first_answer: Option<Duration>,
) -> Result<ClientConnection, QuicError> {
    let tls = tls::client_config(identity, ALPN_CLIENT)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| QuicError::Crypto(e.to_string()))?;
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|_| QuicError::Connect {
        addr,
        detail: "bind address".into(),
    })?;
    let socket =
        std::net::UdpSocket::bind(bind).map_err(|source| QuicError::Bind { addr: bind, source })?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        runtime.clone(),
    )
    .map_err(|source| QuicError::Bind { addr: bind, source })?;
    let err = |detail: String| QuicError::Connect { addr, detail };
    let connecting = endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            addr,
            tls::SERVER_NAME,
        )
        .map_err(|e| err(e.to_string()))?;
    let mut connecting = connecting;
    if let Some(limit) = first_answer {
        let answered = {
            let first = connecting.handshake_data();
            let timer = sleep(&runtime, limit);
            futures::select! {
                r = first.fuse() => Some(r),
                _ = timer.fuse() => None,
            }
        };
        match answered {
            Some(Ok(_)) => {}
            Some(Err(quinn::ConnectionError::TransportError(t)))
                if (0x100..0x200).contains(&u64::from(t.code)) =>
            {
                return Err(QuicError::Untrusted {
                    addr,
                    detail: t.to_string(),
                });
            }
            Some(Err(e)) => return Err(err(e.to_string())),
            None => {
                return Err(err(format!(
                    "no answer within {limit:?} (nothing listens there, or it is unreachable)"
                )));
            }
        }
    }
    let connection = connecting.await.map_err(|e| match e {
        // A TLS failure on this side: the node's certificate did not verify.
        quinn::ConnectionError::TransportError(t)
            if (0x100..0x200).contains(&u64::from(t.code)) =>
        {
            QuicError::Untrusted {
                addr,
                detail: t.to_string(),
            }
        }
        other => err(other.to_string()),
    })?;
    Ok(ClientConnection {
        connection,
        endpoint,
    })
}

/// quinn's tokio runtime bound to a tokio runtime handle (feature `tokio`), so that
/// transports can be started and peers added from any thread, not only from inside the
/// tokio runtime.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub struct TokioHandle(pub tokio::runtime::Handle);

#[cfg(feature = "tokio")]
impl quinn::Runtime for TokioHandle {
    fn new_timer(&self, i: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        let _entered = self.0.enter();
        quinn::TokioRuntime.new_timer(i)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.0.spawn(future);
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        let _entered = self.0.enter();
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// quinn on the tokio runtime this is called from (feature `tokio`); `None` outside
/// one.
#[cfg(feature = "tokio")]
pub fn tokio_runtime() -> Option<Arc<dyn quinn::Runtime>> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    Some(Arc::new(TokioHandle(handle)))
}

/// A future that completes after `d` on `runtime` (for callers that hold only a quinn
/// runtime).
pub fn delay(
    runtime: &Arc<dyn quinn::Runtime>,
    d: Duration,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(sleep(runtime, d))
}

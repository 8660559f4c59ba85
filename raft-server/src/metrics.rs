//! Prometheus metrics and the health endpoint, on `prometheus-client` and hyper.
//!
//! `GET /metrics` answers the Prometheus text format (version 0.0.4); `GET /health`
//! answers 200 with a one-line JSON [`Health`] while the node runs and 503 once it has
//! stopped. `HEAD` works on both; other methods get 405 with an `Allow` header, other
//! paths 404.
//!
//! The endpoint is **unauthenticated and unencrypted**: anyone who reaches it reads
//! the node's role, term, indexes and peer statistics. Bind it (`metrics = "host:port"`
//! in the config) to localhost or a private interface, never to a public one.
//!
//! Bounds, so that a client cannot tie the endpoint up:
//! - a request head must arrive within [`HEADER_READ_TIMEOUT`] (a client that sends
//!   half a request line and stops is dropped), and a whole connection lasts at most
//!   [`CONNECTION_DEADLINE`];
//! - at most [`MAX_CONNECTIONS`] connections are served at once; a connection beyond
//!   that is closed as soon as it is accepted;
//! - one request per connection (no keep-alive);
//! - a failed `accept` (e.g. out of file descriptors) is logged and followed by a
//!   short pause, so the loop does not spin.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use raft_core::Role;
use raft_core::node::{Metrics, NodeState};
use raft_net_quic::PeerStats;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// How long a client may take to send a whole request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a connection stays open, request and response included.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// Connections served at once; one more is closed as soon as it is accepted.
pub const MAX_CONNECTIONS: usize = 64;

/// The pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Bytes buffered per connection for the request head (hyper's minimum).
const MAX_BUF_SIZE: usize = 8192;

/// Buckets for latencies, in seconds: 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Buckets for counts (batch sizes).
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// A monotonically increasing count, exposed as `<name>_total`.
#[derive(Debug, Clone, Default)]
pub struct Counter(prometheus_client::metrics::counter::Counter);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A distribution over fixed buckets (upper bounds, ascending).
#[derive(Debug, Clone)]
pub struct Histogram(prometheus_client::metrics::histogram::Histogram);

impl Histogram {
    /// A histogram over `bounds`.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram(prometheus_client::metrics::histogram::Histogram::new(
            bounds.iter().copied(),
        ))
    }

    /// Records a value (seconds, or a count).
    pub fn observe(&self, value: f64) {
        self.0.observe(value);
    }

    /// Records a duration.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }
}

/// What the server counts itself; the rest is read from the node when encoding
/// (see [`NodeSample`]).
#[derive(Debug)]
pub struct ServerMetrics {
    /// Proposals handed to the node.
    pub proposals: Counter,
    /// Proposals that failed (not leader, dropped, unknown outcome).
    pub proposal_failures: Counter,
    /// Client requests served, by outcome.
    pub requests_ok: Counter,
    /// Client requests that failed.
    pub requests_failed: Counter,
    /// Client requests refused because a bound was reached (in flight, bytes).
    pub requests_busy: Counter,
    /// Client connections closed after their handshake because a connection limit
    /// was reached.
    pub connections_refused: Counter,
    /// Leader changes this node observed.
    pub leader_changes: Counter,
    /// Snapshots built here.
    pub snapshots: Counter,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: Counter,
    /// Duration of snapshot builds.
    pub snapshot_seconds: Histogram,
    /// Duration of durable log writes (the fsync latency).
    pub log_write_seconds: Histogram,
    /// Entries per log write.
    pub log_batch_entries: Histogram,
    /// Entries per state machine apply.
    pub apply_batch_entries: Histogram,
    /// Client request latency.
    pub request_seconds: Histogram,
    /// Open client sessions (refreshed periodically).
    pub sessions: Gauge<u64, AtomicU64>,
    /// Client connections open (set when the page is encoded).
    pub client_connections: Gauge<u64, AtomicU64>,
    /// Bytes of client requests and read answers held (set when the page is encoded).
    pub request_bytes_in_flight: Gauge<u64, AtomicU64>,
    /// The series above, registered once under their exposed names.
    registry: Registry,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        let m = ServerMetrics {
            proposals: Counter::default(),
            proposal_failures: Counter::default(),
            requests_ok: Counter::default(),
            requests_failed: Counter::default(),
            requests_busy: Counter::default(),
            connections_refused: Counter::default(),
            leader_changes: Counter::default(),
            snapshots: Counter::default(),
            snapshots_installed: Counter::default(),
            snapshot_seconds: Histogram::new(LATENCY_BUCKETS),
            log_write_seconds: Histogram::new(LATENCY_BUCKETS),
            log_batch_entries: Histogram::new(SIZE_BUCKETS),
            apply_batch_entries: Histogram::new(SIZE_BUCKETS),
            request_seconds: Histogram::new(LATENCY_BUCKETS),
            sessions: Gauge::default(),
            client_connections: Gauge::default(),
            request_bytes_in_flight: Gauge::default(),
            registry: Registry::default(),
        };
        m.registered()
    }
}

impl ServerMetrics {
    /// Registers every series. Counters are named without `_total` and help texts
    /// without a final period: the registry appends both.
    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        let counters = [
            (
                "raft_proposals",
                "Proposals handed to the Raft node",
                &self.proposals,
            ),
            (
                "raft_proposal_failures",
                "Proposals that failed or whose outcome is unknown",
                &self.proposal_failures,
            ),
            (
                "raft_client_requests_ok",
                "Client requests answered with success",
                &self.requests_ok,
            ),
            (
                "raft_client_requests_failed",
                "Client requests answered with an error",
                &self.requests_failed,
            ),
            (
                "raft_client_requests_busy",
                "Client requests refused as busy: too many in flight, or the byte budget spent",
                &self.requests_busy,
            ),
            (
                "raft_client_connections_refused",
                "Client connections closed because a connection limit was reached",
                &self.connections_refused,
            ),
            (
                "raft_leader_changes",
                "Leader changes seen by this node",
                &self.leader_changes,
            ),
            (
                "raft_snapshots",
                "Snapshots built by this node",
                &self.snapshots,
            ),
            (
                "raft_snapshots_installed",
                "Snapshots received from a leader and installed",
                &self.snapshots_installed,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.0.clone());
        }
        r.register(
            "raft_client_sessions",
            "Open exactly-once client sessions",
            self.sessions.clone(),
        );
        r.register(
            "raft_client_connections",
            "Client connections open on this node",
            self.client_connections.clone(),
        );
        r.register(
            "raft_client_request_bytes_in_flight",
            "Bytes of client requests and read answers this node holds (max_request_bytes_in_flight bounds it)",
            self.request_bytes_in_flight.clone(),
        );
        let histograms = [
            (
                "raft_snapshot_seconds",
                "Time to build a snapshot",
                &self.snapshot_seconds,
            ),
            (
                "raft_log_write_seconds",
                "Durable log write (fsync) latency",
                &self.log_write_seconds,
            ),
            (
                "raft_log_batch_entries",
                "Entries per durable log write",
                &self.log_batch_entries,
            ),
            (
                "raft_apply_batch_entries",
                "Entries per state machine apply",
                &self.apply_batch_entries,
            ),
            (
                "raft_client_request_seconds",
                "Client request latency",
                &self.request_seconds,
            ),
        ];
        for (name, help, histogram) in histograms {
            r.register(name, help, histogram.0.clone());
        }
        self
    }

    /// The `/metrics` page: `node`'s series, then this server's own.
    pub fn encode(&self, node: NodeSample) -> Result<String, std::fmt::Error> {
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(node));
        let mut out = String::new();
        prometheus_text::encode(&mut out, &scrape)?;
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// What the node and its transport report at the moment of a scrape.
#[derive(Debug)]
pub struct NodeSample {
    /// The node's published state.
    pub node: Metrics,
    /// The transport's view of each peer.
    pub peers: Vec<PeerStats>,
    /// Incoming messages the transport dropped because the node fell behind.
    pub incoming_dropped: u64,
    /// Seconds until each certificate expires (negative: expired), by `cert` label.
    pub certificate_expiry: Vec<(&'static str, i64)>,
}

impl Collector for NodeSample {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = &self.node;
        let gauges = [
            (
                "raft_is_leader",
                "1 if this node is the leader.",
                u64::from(m.role == Role::Leader),
            ),
            ("raft_term", "The node's current term.", m.term.0),
            (
                "raft_leader_id",
                "The leader this node knows (0: none).",
                m.leader.map_or(0, |l| l.0),
            ),
            (
                "raft_last_log_index",
                "The last log index.",
                m.last_log_id.index.0,
            ),
            ("raft_commit_index", "The commit index.", m.committed.0),
            ("raft_applied_index", "The applied index.", m.applied.0),
            (
                "raft_snapshot_index",
                "The newest snapshot's last index.",
                m.snapshot.index.0,
            ),
            (
                "raft_state_lost",
                "1 while the state machine's state is lost (a damaged snapshot) and the node waits for a snapshot from the leader.",
                u64::from(m.state_lost),
            ),
            (
                "raft_voters",
                "Voters in the configuration.",
                m.membership.voters.len() as u64,
            ),
            (
                "raft_learners",
                "Learners in the configuration.",
                m.membership.learners.len() as u64,
            ),
            (
                "raft_running",
                "1 while the node runs.",
                u64::from(m.state == NodeState::Running),
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let matched: Vec<(u64, u64)> = m.replication.iter().map(|(id, i)| (id.0, i.0)).collect();
        per_peer(
            &mut encoder,
            "raft_follower_match_index",
            "On a leader: each follower's match index.",
            MetricType::Gauge,
            &matched,
        )?;
        let peer = |f: fn(&PeerStats) -> u64| -> Vec<(u64, u64)> {
            self.peers.iter().map(|p| (p.id.0, f(p))).collect()
        };
        per_peer(
            &mut encoder,
            "raft_peer_connected",
            "1 if the connection to the peer is up.",
            MetricType::Gauge,
            &peer(|p| u64::from(p.connected)),
        )?;
        per_peer(
            &mut encoder,
            "raft_peer_dropped",
            "Messages to the peer dropped because its queue was full.",
            MetricType::Counter,
            &peer(|p| p.dropped),
        )?;
        per_peer(
            &mut encoder,
            "raft_peer_sent_frames",
            "Frames written to the peer.",
            MetricType::Counter,
            &peer(|p| p.sent_frames),
        )?;
        per_peer(
            &mut encoder,
            "raft_peer_queued",
            "Messages queued for the peer.",
            MetricType::Gauge,
            &peer(|p| p.queued as u64),
        )?;
        let c = ConstCounter::new(self.incoming_dropped);
        c.encode(encoder.encode_descriptor(
            "raft_incoming_dropped",
            "Incoming messages dropped because the node fell behind.",
            None,
            c.metric_type(),
        )?)?;
        if !self.certificate_expiry.is_empty() {
            let mut family = encoder.encode_descriptor(
                "raft_certificate_expiry_seconds",
                "Seconds until a certificate expires (negative: expired). cert=node: this node's; cert=ca: the CA bundle's first to expire.",
                None,
                MetricType::Gauge,
            )?;
            for &(cert, left) in &self.certificate_expiry {
                ConstGauge::new(left).encode(family.encode_family(&[("cert", cert)])?)?;
            }
        }
        Ok(())
    }
}

/// One series per peer, labelled `peer="<id>"`; nothing at all when there is no peer
/// (no `# HELP` line without a sample). Counter names get `_total` from the encoder.
fn per_peer(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    values: &[(u64, u64)],
) -> Result<(), std::fmt::Error> {
    if values.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for &(id, value) in values {
        let labels = [("peer", id)];
        let series = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(series)?,
            _ => ConstGauge::new(value).encode(series)?,
        }
    }
    Ok(())
}

/// The `/health` answer, serialised as one line of JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// The node's id.
    pub id: u64,
    /// Whether the node runs: the status is 200 if so, 503 if not.
    pub running: bool,
    /// Its role: `Leader`, `Follower`, `Candidate`, `Learner` or `Stopped (why)`.
    pub role: String,
    /// Its term.
    pub term: u64,
    /// The leader it knows (`null`: none).
    pub leader: Option<u64>,
    /// What its state machine has applied.
    pub applied: u64,
}

/// What the HTTP endpoint serves.
pub trait Exposition: Send + Sync + 'static {
    /// The text of `/metrics` (Prometheus text format 0.0.4).
    fn metrics(&self) -> Result<String, std::fmt::Error>;
    /// The status `/health` reports.
    fn health(&self) -> Health;
}

/// Serves `/metrics` and `/health` on `addr` until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    source: Arc<dyn Exposition>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(accept_loop(listener, source)))
}

/// Accepts connections, at most [`MAX_CONNECTIONS`] served at once.
async fn accept_loop(listener: TcpListener, source: Arc<dyn Exposition>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint: accept failed; pausing");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, limit = MAX_CONNECTIONS, "metrics endpoint: connection limit reached; closing the new connection");
            drop(stream);
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, source).await;
            drop(slot);
        });
    }
}

/// Serves one request on `stream`, within the header timeout and the deadline.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, source: Arc<dyn Exposition>) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = respond(source.as_ref(), &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_BUF_SIZE)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%peer, %error, "metrics endpoint: connection failed"),
        Err(_) => tracing::debug!(%peer, "metrics endpoint: connection deadline passed"),
    }
}

/// The answer to one request.
fn respond(source: &dyn Exposition, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path != "/metrics" && path != "/health" {
        return plain(StatusCode::NOT_FOUND, "try /metrics or /health\n");
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if path == "/metrics" {
        return match source.metrics() {
            Ok(text) => with_type(
                Response::new(Full::new(Bytes::from(text))),
                prometheus_text::CONTENT_TYPE,
            ),
            Err(_) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not encode the metrics\n",
            ),
        };
    }
    let health = source.health();
    let Ok(mut body) = serde_json::to_vec(&health) else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not encode the health\n",
        );
    };
    body.push(b'\n');
    let mut response = with_type(
        Response::new(Full::new(Bytes::from(body))),
        "application/json",
    );
    if !health.running {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    response
}

/// A plain-text answer with `status`.
fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = with_type(
        Response::new(Full::new(Bytes::from_static(text.as_bytes()))),
        "text/plain; charset=utf-8",
    );
    *response.status_mut() = status;
    response
}

/// `response` with its `content-type` set.
fn with_type(
    mut response: Response<Full<Bytes>>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::node::Metrics;
    use raft_proto::{LogId, LogIndex, Membership, NodeId, Term};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PAGE: &str =
        "# HELP raft_term The node's current term.\n# TYPE raft_term gauge\nraft_term 7\n";

    /// A node whose page is [`PAGE`] and whose health is switched by `running`.
    struct Fake {
        running: AtomicBool,
    }

    impl Exposition for Fake {
        fn metrics(&self) -> Result<String, std::fmt::Error> {
            Ok(PAGE.to_string())
        }

        fn health(&self) -> Health {
            let running = self.running.load(Ordering::Relaxed);
            Health {
                id: 2,
                running,
                role: if running {
                    "Follower"
                } else {
                    "Stopped (shut down)"
                }
                .to_string(),
                term: 7,
                leader: running.then_some(3),
                applied: 12,
            }
        }
    }

    /// The endpoint on a free port of 127.0.0.1, serving `fake`.
    async fn start(fake: Arc<Fake>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        (addr, tokio::spawn(accept_loop(listener, fake)))
    }

    fn fake() -> Arc<Fake> {
        Arc::new(Fake {
            running: AtomicBool::new(true),
        })
    }

    /// An answer: status code, head (lower-cased), body.
    struct Answer {
        status: u16,
        head: String,
        body: String,
    }

    fn parse(raw: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status code");
        Answer {
            status,
            head: head.to_lowercase(),
            body: body.to_string(),
        }
    }

    /// Sends `parts` (pausing 200 ms between them) and reads the answer to its end.
    async fn exchange(addr: SocketAddr, parts: &[&str]) -> Answer {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            s.write_all(part.as_bytes()).await.expect("send");
        }
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut raw))
            .await
            .expect("an answer within 3 s")
            .expect("read");
        parse(&raw)
    }

    async fn get(addr: SocketAddr, path: &str) -> Answer {
        exchange(addr, &[&format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")]).await
    }

    /// Reads until the server closes `s` (EOF or reset); what it sent, and when it closed.
    async fn until_closed(s: &mut TcpStream, limit: Duration) -> Option<(Vec<u8>, Instant)> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let read = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(limit, read).await.ok()?;
        Some((got, Instant::now()))
    }

    #[tokio::test]
    async fn metrics_and_health_answer_as_before() {
        let fake = fake();
        let (addr, task) = start(fake.clone()).await;

        let m = get(addr, "/metrics").await;
        assert_eq!(m.status, 200);
        assert!(
            m.head.contains("content-type: text/plain; version=0.0.4"),
            "{}",
            m.head
        );
        assert_eq!(m.body, PAGE);

        let h = get(addr, "/health").await;
        assert_eq!(h.status, 200);
        assert!(
            h.head.contains("content-type: application/json"),
            "{}",
            h.head
        );
        let json: serde_json::Value = serde_json::from_str(&h.body).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({"id": 2, "running": true, "role": "Follower", "term": 7, "leader": 3, "applied": 12})
        );

        // HEAD: the head alone. A request that arrives in pieces is read whole.
        let head = exchange(addr, &["HEAD /metrics HTTP/1.0\r\n\r\n"]).await;
        assert_eq!((head.status, head.body.as_str()), (200, ""));
        let split = exchange(addr, &["GET /met", "rics HTTP/1.1\r\nHost: x\r\n", "\r\n"]).await;
        assert_eq!((split.status, split.body.as_str()), (200, PAGE));
        assert_eq!(get(addr, "/nothing").await.status, 404);

        fake.running.store(false, Ordering::Relaxed);
        let stopped = get(addr, "/health").await;
        assert_eq!(stopped.status, 503);
        let json: serde_json::Value = serde_json::from_str(&stopped.body).expect("JSON");
        assert_eq!(json["running"], false);
        assert_eq!(json["leader"], serde_json::Value::Null);
        task.abort();
    }

    #[tokio::test]
    async fn other_methods_get_405_with_allow() {
        let (addr, task) = start(fake()).await;
        let post = exchange(
            addr,
            &["POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"],
        )
        .await;
        assert_eq!(post.status, 405, "{}", post.head);
        assert!(post.head.contains("allow: get, head"), "{}", post.head);
        let delete = exchange(addr, &["DELETE /health HTTP/1.0\r\n\r\n"]).await;
        assert_eq!(delete.status, 405, "{}", delete.head);
        task.abort();
    }

    #[tokio::test]
    async fn a_slow_client_is_dropped_while_others_are_served() {
        let (addr, task) = start(fake()).await;
        let started = Instant::now();
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /metr").await.expect("send");

        // Meanwhile another client is served at once.
        let other = get(addr, "/metrics").await;
        assert_eq!(other.status, 200);
        assert!(started.elapsed() < Duration::from_secs(2));

        let (got, closed) = until_closed(&mut slow, HEADER_READ_TIMEOUT + Duration::from_secs(3))
            .await
            .expect("the slow client is disconnected");
        let waited = closed - started;
        assert!(
            got.is_empty(),
            "half a request is not answered: {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            waited >= HEADER_READ_TIMEOUT - Duration::from_millis(500)
                && waited <= HEADER_READ_TIMEOUT + Duration::from_secs(2),
            "disconnected after {waited:?}"
        );
        task.abort();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_until_some_close() {
        let (addr, task) = start(fake()).await;
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // Let the server accept them all (in order) before the next one arrives.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut extra = TcpStream::connect(addr).await.expect("connect");
        let _ = extra.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await;
        let (got, _) = until_closed(&mut extra, Duration::from_secs(1))
            .await
            .expect("the connection over the cap is closed at once");
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));

        drop(idle);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await;
            let answer = until_closed(&mut s, Duration::from_secs(1)).await;
            if let Some((raw, _)) = answer.filter(|(raw, _)| !raw.is_empty()) {
                assert_eq!(parse(&raw).status, 200);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not served again after the idle connections closed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
    }

    /// The page keeps every series name, label and value format the scripts and
    /// tests read (`raft_leader_changes_total 1`, `raft_snapshots_total`, ...).
    #[test]
    fn the_page_keeps_the_exposed_names() {
        let server = ServerMetrics::default();
        server.leader_changes.inc();
        server.log_write_seconds.observe(0.003);
        server.sessions.set(4);
        let node = NodeSample {
            node: Metrics {
                id: NodeId(1),
                state: NodeState::Running,
                role: Role::Leader,
                term: Term(3),
                leader: Some(NodeId(1)),
                last_log_id: LogId {
                    term: Term(3),
                    index: LogIndex(9),
                },
                committed: LogIndex(9),
                applied: LogIndex(8),
                snapshot: LogId::default(),
                membership: Membership::voters([NodeId(1), NodeId(2)]),
                replication: BTreeMap::from([(NodeId(2), LogIndex(7))]),
                state_lost: false,
            },
            peers: vec![PeerStats {
                id: NodeId(2),
                connected: true,
                dropped: 0,
                sent_frames: 5,
                queued: 1,
            }],
            incoming_dropped: 0,
            certificate_expiry: vec![("node", 86_400), ("ca", -5)],
        };
        let page = server.encode(node).expect("encode");
        let lines: Vec<&str> = page.lines().collect();
        for expected in [
            "raft_is_leader 1",
            "raft_term 3",
            "raft_leader_id 1",
            "raft_last_log_index 9",
            "raft_commit_index 9",
            "raft_applied_index 8",
            "raft_snapshot_index 0",
            "raft_state_lost 0",
            "raft_voters 2",
            "raft_learners 0",
            "raft_running 1",
            "raft_follower_match_index{peer=\"2\"} 7",
            "raft_peer_connected{peer=\"2\"} 1",
            "raft_peer_dropped_total{peer=\"2\"} 0",
            "raft_peer_sent_frames_total{peer=\"2\"} 5",
            "raft_peer_queued{peer=\"2\"} 1",
            "raft_incoming_dropped_total 0",
            "raft_certificate_expiry_seconds{cert=\"node\"} 86400",
            "raft_certificate_expiry_seconds{cert=\"ca\"} -5",
            "raft_proposals_total 0",
            "raft_proposal_failures_total 0",
            "raft_client_requests_ok_total 0",
            "raft_client_requests_failed_total 0",
            "raft_leader_changes_total 1",
            "raft_snapshots_total 0",
            "raft_snapshots_installed_total 0",
            "raft_client_sessions 4",
            "# TYPE raft_leader_changes_total counter",
            "# HELP raft_leader_changes_total Leader changes seen by this node.",
            "raft_log_write_seconds_bucket{le=\"0.0025\"} 0",
            "raft_log_write_seconds_bucket{le=\"0.005\"} 1",
            "raft_log_write_seconds_bucket{le=\"+Inf\"} 1",
            "raft_log_write_seconds_count 1",
        ] {
            assert!(lines.contains(&expected), "no line {expected:?} in\n{page}");
        }
        for histogram in [
            "raft_snapshot_seconds",
            "raft_log_write_seconds",
            "raft_log_batch_entries",
            "raft_apply_batch_entries",
            "raft_client_request_seconds",
        ] {
            let buckets = page
                .lines()
                .filter(|l| l.starts_with(&format!("{histogram}_bucket{{le=")))
                .count();
            let bounds = if histogram.ends_with("_entries") {
                SIZE_BUCKETS.len()
            } else {
                LATENCY_BUCKETS.len()
            };
            assert_eq!(buckets, bounds + 1, "{histogram}'s buckets in\n{page}");
            assert!(page.contains(&format!("\n{histogram}_sum ")));
        }
        assert!(!page.contains("# EOF"), "{page}");
        assert!(
            !page.contains(".."),
            "a help text ends in two periods:\n{page}"
        );
    }
}

//! Prometheus metrics and the health endpoint, over a minimal HTTP/1.1 server.
//!
//! `GET /metrics` answers the text exposition format; `GET /health` answers 200 with
//! a one-line JSON status while the node runs and 503 once it has stopped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution over fixed buckets (upper bounds, ascending).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Buckets for latencies, in seconds: 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Buckets for counts (batch sizes).
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

impl Histogram {
    /// A histogram over `bounds`.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records a value (seconds, or a count).
    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    /// Records a duration.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// What the server counts itself; the rest is read from the node when rendering.
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
    pub sessions: AtomicU64,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics {
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
            sessions: AtomicU64::new(0),
        }
    }
}

/// One line of a gauge or counter.
pub(crate) fn sample(
    out: &mut String,
    kind: &str,
    name: &str,
    help: &str,
    labels: &str,
    value: f64,
) {
    if !out.contains(&format!("# TYPE {name} ")) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    let _ = writeln!(out, "{name}{labels} {value}");
}

impl ServerMetrics {
    /// Renders this server's own series.
    pub fn render(&self, out: &mut String) {
        let c = |out: &mut String, name: &str, help: &str, v: &Counter| {
            sample(out, "counter", name, help, "", v.get() as f64)
        };
        c(
            out,
            "raft_proposals_total",
            "Proposals handed to the Raft node.",
            &self.proposals,
        );
        c(
            out,
            "raft_proposal_failures_total",
            "Proposals that failed or whose outcome is unknown.",
            &self.proposal_failures,
        );
        c(
            out,
            "raft_client_requests_ok_total",
            "Client requests answered with success.",
            &self.requests_ok,
        );
        c(
            out,
            "raft_client_requests_failed_total",
            "Client requests answered with an error.",
            &self.requests_failed,
        );
        c(
            out,
            "raft_client_requests_busy_total",
            "Client requests refused as busy: too many in flight, or the byte budget spent.",
            &self.requests_busy,
        );
        c(
            out,
            "raft_client_connections_refused_total",
            "Client connections closed because a connection limit was reached.",
            &self.connections_refused,
        );
        c(
            out,
            "raft_leader_changes_total",
            "Leader changes seen by this node.",
            &self.leader_changes,
        );
        c(
            out,
            "raft_snapshots_total",
            "Snapshots built by this node.",
            &self.snapshots,
        );
        c(
            out,
            "raft_snapshots_installed_total",
            "Snapshots received from a leader and installed.",
            &self.snapshots_installed,
        );
        sample(
            out,
            "gauge",
            "raft_client_sessions",
            "Open exactly-once client sessions.",
            "",
            self.sessions.load(Ordering::Relaxed) as f64,
        );
        self.snapshot_seconds
            .render(out, "raft_snapshot_seconds", "Time to build a snapshot.");
        self.log_write_seconds.render(
            out,
            "raft_log_write_seconds",
            "Durable log write (fsync) latency.",
        );
        self.log_batch_entries.render(
            out,
            "raft_log_batch_entries",
            "Entries per durable log write.",
        );
        self.apply_batch_entries.render(
            out,
            "raft_apply_batch_entries",
            "Entries per state machine apply.",
        );
        self.request_seconds.render(
            out,
            "raft_client_request_seconds",
            "Client request latency.",
        );
    }
}

/// What the HTTP endpoint serves.
pub trait Exposition: Send + Sync + 'static {
    /// The text of `/metrics`.
    fn metrics(&self) -> String;
    /// `/health`: whether the node runs, and a one-line JSON status.
    fn health(&self) -> (bool, String);
}

/// Serves `/metrics` and `/health` on `addr` until the returned task is dropped.
pub async fn serve(
    addr: SocketAddr,
    source: Arc<dyn Exposition>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let source = source.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let read =
                    tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
                let Ok(Ok(n)) = read else { return };
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let (status, content_type, body) = match path {
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", source.metrics()),
                    "/health" => {
                        let (ok, body) = source.health();
                        (
                            if ok {
                                "200 OK"
                            } else {
                                "503 Service Unavailable"
                            },
                            "application/json",
                            body,
                        )
                    }
                    _ => (
                        "404 Not Found",
                        "text/plain",
                        "try /metrics or /health\n".to_string(),
                    ),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    }))
}

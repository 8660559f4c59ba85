//! `raft-server bench`: a closed-loop load generator against a running cluster.
//!
//! The model is the one of `etcd-bench` (the tool we compare against), so the two can
//! be run with the same parameters:
//!
//! - `clients` client tasks; each keeps `depth` requests in flight (1: send, await the
//!   answer, send the next). Latency is measured per request on the client, from
//!   sending to the answer, retries included.
//! - `conns` connections (0: one per client). Client task *i* uses connection
//!   *i % conns*; each connection is a [`Client`] with its own exactly-once session,
//!   which finds the leader and follows it.
//! - Bounded: the measured phase stops after `total` operations or `duration`,
//!   whichever comes first; `warmup_ops` operations run first and are not recorded.
//! - Keys are `k` followed by the zero-padded index (`key_size` bytes), uniform over
//!   `key_space`; values are `value_size` fixed pseudo-random lowercase letters.

use crate::client::{Client, ClientOptions};
use crate::proto::Consistency;
use hdrhistogram::Histogram;
use raft_net_quic::Identity;
use raft_proto::Bytes;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What each operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `put(key, value)`, key uniform over the key space.
    Put,
    /// `get(key)`, linearizable unless `stale`.
    Get,
    /// `read_pct` percent gets, the rest puts.
    Mixed,
    /// A compare-and-swap that always succeeds: `cas(key, value -> value)` after a
    /// populate (a write through the log that reads first).
    Cas,
    /// Puts every key of the key space once (`total` ignored): run it before `get`.
    Populate,
}

impl Workload {
    /// Its name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
            Workload::Cas => "cas",
            Workload::Populate => "populate",
        }
    }
}

/// The parameters of a run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// What to do.
    pub workload: Workload,
    /// Client tasks.
    pub clients: usize,
    /// Requests in flight per client task.
    pub depth: usize,
    /// Connections (and sessions); 0 = one per client.
    pub conns: usize,
    /// Key length in bytes (at least the digits of the key space, plus one).
    pub key_size: usize,
    /// Value length in bytes.
    pub value_size: usize,
    /// Distinct keys.
    pub key_space: u64,
    /// Percentage of reads in `Mixed`.
    pub read_pct: u32,
    /// Reads served locally by the node that answers, without ReadIndex.
    pub stale: bool,
    /// Operations in the measured phase.
    pub total: u64,
    /// Longest measured phase.
    pub duration: Duration,
    /// Unrecorded operations first.
    pub warmup_ops: u64,
    /// A request that takes longer (retries included) counts as an error.
    pub request_timeout: Duration,
    /// Seed of the key sequence.
    pub seed: u64,
    /// A label copied into the results.
    pub label: Option<String>,
    /// Processes (the servers) whose CPU time to report.
    pub server_pids: Vec<u32>,
    /// Draw a progress bar on standard error.
    pub progress: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            workload: Workload::Put,
            clients: 16,
            depth: 1,
            conns: 0,
            key_size: 16,
            value_size: 128,
            key_space: 100_000,
            read_pct: 90,
            stale: false,
            total: 100_000,
            duration: Duration::from_secs(30),
            warmup_ops: 2_000,
            request_timeout: Duration::from_secs(10),
            seed: 1,
            label: None,
            server_pids: Vec::new(),
            progress: false,
        }
    }
}

/// Latencies in microseconds, from 1 µs to 100 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .expect("constant bounds: 1 µs to 100 s at 3 significant digits")
}

/// What one loop saw.
struct LoopResult {
    all: Histogram<u64>,
    reads: Histogram<u64>,
    writes: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct BenchReport {
    /// The run's parameters and results as one JSON object.
    pub json: Value,
    /// A human-readable summary (several lines).
    pub text: String,
}

/// The key with index `i`: `k` and the zero-padded index, `size` bytes.
fn key(i: u64, size: usize) -> Bytes {
    let digits = size.saturating_sub(1).max(1);
    Bytes::from(format!("k{i:0digits$}"))
}

/// xorshift64*: a fast, seedable sequence (quality is plenty for picking keys).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The shared state of one phase.
struct Phase {
    issued: AtomicU64,
    done: AtomicU64,
    limit: u64,
    deadline: Instant,
    stop: AtomicBool,
}

impl Phase {
    /// Claims the next operation's slot, if the phase is not over.
    fn claim(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return None;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        (n < self.limit).then_some(n)
    }
}

/// One operation; returns whether it was a read, and its error if it failed.
async fn one_op(
    client: &Client,
    o: &BenchOptions,
    value: &Bytes,
    rng: &mut Rng,
    slot: u64,
) -> (bool, Result<(), String>) {
    let k = |rng: &mut Rng| key(rng.next() % o.key_space.max(1), o.key_size);
    let consistency = if o.stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    };
    let is_read = match o.workload {
        Workload::Get => true,
        Workload::Mixed => rng.next() % 100 < u64::from(o.read_pct),
        _ => false,
    };
    let r = if is_read {
        client.get_with(k(rng), consistency).await.map(drop)
    } else {
        match o.workload {
            Workload::Populate => client.put(key(slot, o.key_size), value.clone()).await,
            Workload::Cas => {
                client
                    .cas(k(rng), Some(value.clone()), Some(value.clone()))
                    .await
            }
            _ => client.put(k(rng), value.clone()).await,
        }
        .map(drop)
    };
    (is_read, r.map_err(|e| e.to_string()))
}

async fn run_loop(
    client: Client,
    o: Arc<BenchOptions>,
    phase: Arc<Phase>,
    value: Bytes,
    seed: u64,
    record: bool,
) -> LoopResult {
    let mut rng = Rng::new(seed);
    let mut out = LoopResult {
        all: histogram(),
        reads: histogram(),
        writes: histogram(),
        ok: 0,
        errors: 0,
        first_error: None,
    };
    while let Some(slot) = phase.claim() {
        let started = Instant::now();
        let (is_read, result) = one_op(&client, &o, &value, &mut rng, slot).await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        phase.done.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                out.ok += 1;
                if record {
                    let _ = out.all.record(micros);
                    let _ = if is_read {
                        out.reads.record(micros)
                    } else {
                        out.writes.record(micros)
                    };
                }
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    out
}

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat` (Linux; `None`
/// elsewhere or if it is gone). `/proc` counts in USER_HZ, 100 per second on Linux.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Runs one phase with every loop; returns the loops' results and the wall time.
async fn phase(
    clients: &[Client],
    o: &Arc<BenchOptions>,
    limit: u64,
    record: bool,
    value: &Bytes,
    progress_label: Option<&str>,
) -> (Vec<LoopResult>, Duration, bool) {
    let started = Instant::now();
    let phase = Arc::new(Phase {
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        limit,
        deadline: started + o.duration,
        stop: AtomicBool::new(false),
    });
    let loops = o.clients * o.depth.max(1);
    let handles: Vec<_> = (0..loops)
        .map(|i| {
            let client = clients[(i / o.depth.max(1)) % clients.len()].clone();
            let seed = o
                .seed
                .wrapping_add(i as u64)
                .wrapping_add(u64::from(record) << 32);
            tokio::spawn(run_loop(
                client,
                o.clone(),
                phase.clone(),
                value.clone(),
                seed,
                record,
            ))
        })
        .collect();
    let progress = progress_label.map(|label| {
        let (phase, label) = (phase.clone(), label.to_string());
        let duration = o.duration;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let done = phase.done.load(Ordering::Relaxed);
                let elapsed = started.elapsed();
                let fraction = (done as f64 / limit as f64)
                    .max(elapsed.as_secs_f64() / duration.as_secs_f64())
                    .min(1.0);
                let filled = (fraction * 30.0) as usize;
                eprint!(
                    "\r{label} [{}{}] {:>3.0}% {done} ops, {:.0} ops/s   ",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    fraction * 100.0,
                    done as f64 / elapsed.as_secs_f64().max(1e-9)
                );
            }
        })
    });
    let mut results = Vec::with_capacity(loops);
    for h in handles {
        match h.await {
            Ok(r) => results.push(r),
            Err(e) => results.push(LoopResult {
                all: histogram(),
                reads: histogram(),
                writes: histogram(),
                ok: 0,
                errors: 1,
                first_error: Some(format!("a client task failed: {e}")),
            }),
        }
    }
    let elapsed = started.elapsed();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let by_time = Instant::now() >= phase.deadline && phase.issued.load(Ordering::Relaxed) < limit;
    (results, elapsed, by_time)
}

fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let ms = |v: u64| v as f64 / 1000.0;
    json!({
        "count": h.len(),
        "mean_ms": h.mean() / 1000.0,
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// Runs the benchmark against the nodes at `addrs`.
pub async fn run(
    addrs: Vec<SocketAddr>,
    identity: Identity,
    o: BenchOptions,
) -> Result<BenchReport, String> {
    if o.clients == 0 || o.depth == 0 {
        return Err("--clients and --depth must be at least 1".into());
    }
    if o.key_space == 0 {
        return Err("--key-space must be at least 1".into());
    }
    let digits = (o.key_space - 1).max(1).to_string().len();
    if o.key_size < digits + 1 {
        return Err(format!(
            "--key-size {} cannot hold {} keys: it needs at least {} bytes",
            o.key_size,
            o.key_space,
            digits + 1
        ));
    }
    if o.read_pct > 100 {
        return Err("--read-pct is a percentage (0-100)".into());
    }
    let conns = if o.conns == 0 { o.clients } else { o.conns };
    let options = ClientOptions {
        timeout: o.request_timeout,
        ..ClientOptions::default()
    };
    let clients = (0..conns)
        .map(|_| Client::new(addrs.clone(), identity.clone(), options.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mut rng = Rng::new(o.seed ^ 0x5EED);
    let value = Bytes::from(
        (0..o.value_size)
            .map(|_| b'a' + (rng.next() % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let o = Arc::new(o);
    let populate = o.workload == Workload::Populate;
    // Open every connection and session before measuring.
    for c in &clients {
        c.session_id()
            .await
            .map_err(|e| format!("cannot open a session: {e}"))?;
    }
    if !populate && o.warmup_ops > 0 {
        let label = o.progress.then_some("warm-up");
        let (results, _, _) = phase(&clients, &o, o.warmup_ops, false, &value, label).await;
        let errors: u64 = results.iter().map(|r| r.errors).sum();
        if errors == o.warmup_ops {
            let first = results.into_iter().find_map(|r| r.first_error);
            return Err(format!(
                "every warm-up operation failed; the first: {}",
                first.unwrap_or_default()
            ));
        }
    }
    let limit = if populate { o.key_space } else { o.total };
    let pids: Vec<String> = o.server_pids.iter().map(u32::to_string).collect();
    let cpu_before: Vec<Option<f64>> = pids.iter().map(|p| cpu_seconds(p)).collect();
    let self_before = cpu_seconds("self");
    let label = o.progress.then_some(o.workload.name());
    let (results, elapsed, by_time) = phase(&clients, &o, limit, true, &value, label).await;
    let self_cpu = cpu_seconds("self").zip(self_before).map(|(a, b)| a - b);
    let servers_cpu: Option<f64> = if pids.is_empty() {
        None
    } else {
        pids.iter()
            .zip(&cpu_before)
            .map(|(p, before)| cpu_seconds(p).zip(*before).map(|(a, b)| a - b))
            .sum()
    };

    let (mut all, mut reads, mut writes) = (histogram(), histogram(), histogram());
    let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
    for r in results {
        let _ = all.add(&r.all);
        let _ = reads.add(&r.reads);
        let _ = writes.add(&r.writes);
        ok += r.ok;
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ops_per_s = ok as f64 / secs;
    let reads_kind = if o.stale { "stale" } else { "linearizable" };
    let json = json!({
        "label": o.label,
        "system": "raft-server",
        "workload": o.workload.name(),
        "reads": reads_kind,
        "read_pct": o.read_pct,
        "clients": o.clients,
        "depth": o.depth,
        "conns": conns,
        "endpoints": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "key_size": o.key_size,
        "val_size": o.value_size,
        "key_space": o.key_space,
        "total_requested": limit,
        "ok": ok,
        "errors": errors,
        "first_error": first_error,
        "elapsed_s": secs,
        "stopped_by": if by_time { "time" } else { "ops" },
        "ops_per_s": ops_per_s,
        "mb_per_s": ops_per_s * (o.key_size + o.value_size) as f64 / 1e6,
        "latency": summary(&all),
        "read_latency": summary(&reads),
        "write_latency": summary(&writes),
        "cpu": {
            "bench_cpu_s": self_cpu,
            "bench_pct_of_one_core": self_cpu.map(|c| 100.0 * c / secs),
            "servers_cpu_s": servers_cpu,
            "servers_pct_of_one_core": servers_cpu.map(|c| 100.0 * c / secs),
        },
    });
    let mut text = format!(
        "workload {}{}, {} clients x depth {} over {conns} connections, keys {} B over {}, values {} B\n",
        o.workload.name(),
        match o.workload {
            Workload::Get => format!(" ({reads_kind})"),
            Workload::Mixed => format!(" ({}% {reads_kind} reads)", o.read_pct),
            _ => String::new(),
        },
        o.clients,
        o.depth,
        o.key_size,
        o.key_space,
        o.value_size
    );
    text.push_str(&format!(
        "{ok} ok, {errors} errors in {secs:.2} s: {ops_per_s:.0} ops/s ({:.2} MB/s of keys and values), stopped by {}\n",
        ops_per_s * (o.key_size + o.value_size) as f64 / 1e6,
        if by_time { "time" } else { "op count" }
    ));
    for (name, h) in [("all", &all), ("reads", &reads), ("writes", &writes)] {
        if h.is_empty() || (name != "all" && o.workload != Workload::Mixed) {
            continue;
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        text.push_str(&format!(
            "latency {name:<6} ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}\n",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0,
            h.mean() / 1000.0
        ));
    }
    if let Some(c) = self_cpu {
        text.push_str(&format!(
            "cpu: bench {c:.2} s ({:.0}% of a core)",
            100.0 * c / secs
        ));
        if let Some(s) = servers_cpu {
            text.push_str(&format!(
                ", servers {s:.2} s ({:.0}% of a core)",
                100.0 * s / secs
            ));
        }
        text.push('\n');
    }
    if let Some(e) = json["first_error"].as_str() {
        text.push_str(&format!("first error: {e}\n"));
    }
    Ok(BenchReport { json, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size_and_order() {
        assert_eq!(&*key(42, 16), b"k000000000000042");
        assert_eq!(key(99_999, 16).len(), 16);
        assert!(key(9, 8) < key(10, 8), "zero padding keeps numeric order");
    }

    #[test]
    fn the_key_sequence_is_seeded() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..5).map(|_| r.next()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..5).map(|_| r.next()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
    }
}

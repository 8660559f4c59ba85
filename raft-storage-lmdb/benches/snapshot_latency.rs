//! Write latency while a copy-on-write snapshot streams, versus without one.
//!
//! One measured operation is one [`StateMachine::apply`] of a single entry
//! `put <key> <value>` overwriting a random existing key: one write transaction. The
//! whole procedure below runs once per durability mode, each in a fresh directory:
//! first as the default `SmConfig` commits ([`ApplyDurability::Deferred`]: no flush
//! per apply, as the server runs; the log is what is durable), then with a durable
//! commit per apply ([`ApplyDurability::Synced`]). `SNAPSHOT_BENCH_MODES=deferred` (or
//! `synced`) runs one of them. Between two applies the bench sleeps (1 ms by default),
//! so the measurement spans the snapshot rather than racing it.
//!
//! [`ApplyDurability::Deferred`]: raft_storage_lmdb::ApplyDurability::Deferred
//! [`ApplyDurability::Synced`]: raft_storage_lmdb::ApplyDurability::Synced
//!
//! Procedure, in a temporary directory on the real disk (`$TMPDIR`, which must not be a
//! tmpfs):
//! 1. populate an `LmdbStateMachine<Kv>` with `SNAPSHOT_BENCH_KEYS` keys (262,144) of
//!    `SNAPSHOT_BENCH_VALUE` bytes (1024), applied in batches of 1024 (≥ 256 MiB);
//! 2. phase A: `SNAPSHOT_BENCH_APPLIES` (2,000) applies with no snapshot;
//! 3. phase B: `begin_snapshot` at the applied log id, its task driven on its own
//!    thread, and applies meanwhile; when a snapshot finishes before the phase has
//!    measured `SNAPSHOT_BENCH_APPLIES` applies that overlapped a snapshot, the next
//!    one begins at once. The phase ends when the last snapshot does, so the window
//!    covers every snapshot whole. Only applies that overlapped a snapshot count in B;
//! 4. phase A2: phase A again, to show how far the baseline drifted;
//! 5. phase I (interleaved, because this machine's disk is noisy and phases A and B
//!    run seconds apart): rounds of one snapshot with applies during it (I+), then
//!    as many applies without one (I-), until each side has `SNAPSHOT_BENCH_APPLIES`.
//!
//! Prints, per mode, a table and one JSON line (on stdout; its `durability` says the
//! mode), with p50/p99/max of each phase, the ratios p99(B)/p99(A) and
//! p99(I+)/p99(I-), each snapshot's duration and file size, and the LMDB file size
//! before and after phase B (the read transaction of a snapshot keeps later commits
//! from reusing freed pages, so the file grows). `SNAPSHOT_BENCH_SLEEP_US` sets the
//! pause between applies; `SNAPSHOT_BENCH_UNPACED=1` writes the snapshot file as fast
//! as possible with one sync at the end (the default `SmConfig` paces it: writeback
//! every 256 KiB, at most 100 MiB/s). `scripts/bench-all.py` runs it with the
//! defaults and reads the JSON lines.

#![allow(clippy::print_stdout)]

mod common;

use common::{Kv, entry, key, put_command};
use futures::executor::block_on;
use raft_core::node::StateMachine;
use raft_proto::{Entry, LogId, Membership, NodeId, SnapshotMeta};
use raft_storage_lmdb::{ApplyDurability, LmdbStateMachine, SmConfig};
use std::fmt::Write as _;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const POPULATE_BATCH: u64 = 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// One measured apply: when it started (since the bench began) and how long it took.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    took: Duration,
}

/// A snapshot of phase B: when it began and ended (since the bench began), and its
/// file's size.
struct Snap {
    begin: Duration,
    end: Duration,
    bytes: u64,
    disk_after: u64,
}

struct Stats {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// Nearest-rank percentiles.
fn stats(samples: impl Iterator<Item = Duration>) -> Stats {
    let mut v: Vec<Duration> = samples.collect();
    assert!(!v.is_empty(), "no samples");
    v.sort_unstable();
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Stats {
        n: v.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        max: v[v.len() - 1],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

struct Bench {
    sm: LmdbStateMachine<Kv>,
    t0: Instant,
    applied: LogId,
    keys: u64,
    value: usize,
    sleep: Duration,
    rng: u64,
}

impl Bench {
    fn next_entry(&mut self, command_key: &str, salt: u64) -> Entry {
        let index = self.applied.index.0 + 1;
        entry(index, put_command(command_key, self.value, salt))
    }

    /// One single-entry apply overwriting a random existing key, timed.
    fn one(&mut self) -> Sample {
        // xorshift64: a cheap, deterministic choice of key.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let k = key(self.rng % self.keys);
        let e = self.next_entry(&k, self.rng);
        let log_id = e.log_id;
        let start = Instant::now();
        block_on(self.sm.apply(std::slice::from_ref(&e))).expect("apply");
        let took = start.elapsed();
        self.applied = log_id;
        Sample {
            at: start - self.t0,
            took,
        }
    }

    fn phase(&mut self, n: u64) -> Vec<Sample> {
        (0..n)
            .map(|_| {
                let s = self.one();
                std::thread::sleep(self.sleep);
                s
            })
            .collect()
    }

    fn begin(&self) -> (Duration, mpsc::Receiver<(SnapshotMeta, Duration)>) {
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            membership: Membership::voters([NodeId(1)]),
            id: 0,
        };
        let (tx, rx) = mpsc::channel();
        let t0 = self.t0;
        let begin = t0.elapsed();
        let task = self.sm.begin_snapshot(meta);
        std::thread::spawn(move || {
            let meta = block_on(task).expect("the snapshot");
            let _ = tx.send((meta, t0.elapsed()));
        });
        (begin, rx)
    }

    /// Begins a snapshot and applies until it has finished: every apply made, and
    /// the snapshot.
    fn one_snapshot(&mut self) -> (Vec<Sample>, Snap) {
        let mut samples = Vec::new();
        let (begin, rx) = self.begin();
        loop {
            samples.push(self.one());
            let done = match rx.try_recv() {
                Ok(done) => Some(done),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => panic!("the snapshot thread died"),
            };
            if let Some((meta, end)) = done {
                let path = self
                    .sm
                    .dir()
                    .join("snapshots")
                    .join(format!("{:016x}.snap", meta.id));
                let bytes = std::fs::metadata(&path)
                    .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
                    .len();
                let disk_after = self.sm.disk_size().expect("disk size");
                let snap = Snap {
                    begin,
                    end,
                    bytes,
                    disk_after,
                };
                return (samples, snap);
            }
            std::thread::sleep(self.sleep);
        }
    }

    /// Phase B: applies while snapshots run back to back, until `n` applies overlapped
    /// one and the last snapshot has finished.
    fn during_snapshots(&mut self, n: u64) -> (Vec<Sample>, Vec<Snap>) {
        let mut samples = Vec::new();
        let mut snaps = Vec::new();
        loop {
            let (s, snap) = self.one_snapshot();
            samples.extend(s);
            snaps.push(snap);
            if samples.iter().filter(|s| overlaps(s, &snaps)).count() as u64 >= n {
                return (samples, snaps);
            }
            std::thread::sleep(self.sleep);
        }
    }

    /// Phase I: rounds of one snapshot with applies during it, then as many applies
    /// without one, until each side has `n`: both sides see the same disk weather.
    fn interleaved(&mut self, n: u64) -> (Vec<Sample>, Vec<Sample>, Vec<Snap>) {
        let (mut without, mut during, mut snaps) = (Vec::new(), Vec::new(), Vec::new());
        while (without.len() as u64) < n || (during.len() as u64) < n {
            std::thread::sleep(self.sleep);
            let (s, snap) = self.one_snapshot();
            let round: Vec<Sample> = s
                .into_iter()
                .filter(|s| overlaps(s, std::slice::from_ref(&snap)))
                .collect();
            snaps.push(snap);
            std::thread::sleep(self.sleep);
            without.extend(self.phase(round.len().max(1) as u64));
            during.extend(round);
        }
        (without, during, snaps)
    }
}

/// Whether an apply ran (at least partly) while one of `snaps` did.
fn overlaps(s: &Sample, snaps: &[Snap]) -> bool {
    snaps
        .iter()
        .any(|p| s.at < p.end && s.at + s.took > p.begin)
}

/// The durability modes to measure: `SNAPSHOT_BENCH_MODES` (a comma-separated list of
/// `deferred` and `synced`; default both, the server's default first).
/// `SNAPSHOT_BENCH_SYNCED=1` (the older switch) means `synced` alone.
fn modes() -> Vec<ApplyDurability> {
    if std::env::var_os("SNAPSHOT_BENCH_SYNCED").is_some() {
        return vec![ApplyDurability::Synced];
    }
    let list = std::env::var("SNAPSHOT_BENCH_MODES").unwrap_or_else(|_| "deferred,synced".into());
    list.split(',')
        .map(|m| match m.trim() {
            "deferred" => ApplyDurability::Deferred,
            "synced" => ApplyDurability::Synced,
            other => panic!("SNAPSHOT_BENCH_MODES: {other:?} is neither deferred nor synced"),
        })
        .collect()
}

fn main() {
    let keys = env_u64("SNAPSHOT_BENCH_KEYS", 262_144);
    let value = env_u64("SNAPSHOT_BENCH_VALUE", 1024) as usize;
    let applies = env_u64("SNAPSHOT_BENCH_APPLIES", 2_000);
    let sleep = Duration::from_micros(env_u64("SNAPSHOT_BENCH_SLEEP_US", 1_000));
    for (i, durability) in modes().into_iter().enumerate() {
        if i > 0 {
            println!();
        }
        run(durability, keys, value, applies, sleep);
    }
}

/// The whole procedure (module doc) for one durability mode, in a fresh directory.
fn run(durability: ApplyDurability, keys: u64, value: usize, applies: u64, sleep: Duration) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = SmConfig::default();
    if std::env::var_os("SNAPSHOT_BENCH_UNPACED").is_some() {
        // The snapshot file written as fast as possible, synced once at the end.
        config.snapshot_sync_bytes = u64::MAX;
        config.snapshot_write_rate = None;
    }
    config.apply_durability = durability;
    let sm = LmdbStateMachine::open(dir.path(), Kv, config).expect("open the state machine");
    let mut bench = Bench {
        sm,
        t0: Instant::now(),
        applied: LogId::ZERO,
        keys,
        value,
        sleep,
        rng: 0x2545_f491_4f6c_dd1d,
    };
    println!(
        "snapshot_latency: {keys} keys x {value} B, {applies} applies per phase, {} us between applies, applies {durability:?}, in {}",
        sleep.as_micros(),
        dir.path().display()
    );

    // 1. Populate.
    let started = Instant::now();
    let mut n = 0u64;
    while n < keys {
        let batch: Vec<Entry> = (n..(n + POPULATE_BATCH).min(keys))
            .map(|i| {
                let index = bench.applied.index.0 + 1 + (i - n);
                entry(index, put_command(&key(i), value, i))
            })
            .collect();
        block_on(bench.sm.apply(&batch)).expect("populate");
        bench.applied = batch.last().expect("a non-empty batch").log_id;
        n += batch.len() as u64;
    }
    let populate = started.elapsed();
    let disk_populated = bench.sm.disk_size().expect("disk size");
    println!(
        "populated {:.1} MiB of values in {:.2} s ({:.1} MiB/s); LMDB file {:.1} MiB",
        mib(keys * value as u64),
        populate.as_secs_f64(),
        mib(keys * value as u64) / populate.as_secs_f64(),
        mib(disk_populated)
    );

    // 2. Phase A.
    let a = bench.phase(applies);
    let disk_before = bench.sm.disk_size().expect("disk size");

    // 3. Phase B.
    let (b_all, snaps) = bench.during_snapshots(applies);
    let disk_after = bench.sm.disk_size().expect("disk size");
    let b: Vec<Sample> = b_all
        .iter()
        .copied()
        .filter(|s| overlaps(s, &snaps))
        .collect();

    // 4. Phase A2.
    let a2 = bench.phase(applies);
    let disk_end = bench.sm.disk_size().expect("disk size");

    // 5. Phase I: interleaved.
    let (i_without, i_during, i_snaps) = bench.interleaved(applies);

    let sa = stats(a.iter().map(|s| s.took));
    let si_without = stats(i_without.iter().map(|s| s.took));
    let si_during = stats(i_during.iter().map(|s| s.took));
    let ratio_i = si_during.p99.as_secs_f64() / si_without.p99.as_secs_f64();
    let i_secs = stats(i_snaps.iter().map(|s| s.end - s.begin));
    let sb = stats(b.iter().map(|s| s.took));
    let sb_all = stats(b_all.iter().map(|s| s.took));
    let sa2 = stats(a2.iter().map(|s| s.took));
    let ratio = sb.p99.as_secs_f64() / sa.p99.as_secs_f64();

    println!();
    println!(
        "{:<34} {:>6} {:>9} {:>9} {:>9}",
        "phase", "n", "p50 ms", "p99 ms", "max ms"
    );
    for (name, s) in [
        ("A  no snapshot", &sa),
        ("B  during a snapshot", &sb),
        ("B' whole phase B", &sb_all),
        ("A2 no snapshot, after", &sa2),
        ("I- interleaved, no snapshot", &si_without),
        ("I+ interleaved, during a snapshot", &si_during),
    ] {
        println!(
            "{name:<34} {:>6} {:>9.3} {:>9.3} {:>9.3}",
            s.n,
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
    }
    println!(
        "p99(B)/p99(A) = {ratio:.2} (target <= 1.5: {})",
        if ratio <= 1.5 { "met" } else { "MISSED" }
    );
    println!(
        "p99(B)/p99(A2) = {:.2}",
        sb.p99.as_secs_f64() / sa2.p99.as_secs_f64()
    );
    println!(
        "p99(I+)/p99(I-) = {ratio_i:.2} over {} interleaved rounds (snapshot secs: median {:.2}, max {:.2})",
        i_snaps.len(),
        i_secs.p50.as_secs_f64(),
        i_secs.max.as_secs_f64()
    );
    println!();
    println!(
        "{:<10} {:>10} {:>12} {:>10} {:>16}",
        "snapshot", "secs", "file MiB", "MiB/s", "LMDB after MiB"
    );
    for (i, s) in snaps.iter().enumerate() {
        let secs = (s.end - s.begin).as_secs_f64();
        println!(
            "{:<10} {:>10.2} {:>12.1} {:>10.1} {:>16.1}",
            i + 1,
            secs,
            mib(s.bytes),
            mib(s.bytes) / secs,
            mib(s.disk_after)
        );
    }
    println!(
        "the window covered every snapshot whole: phase B ran {} applies, {} of them during a snapshot",
        b_all.len(),
        b.len()
    );
    println!(
        "LMDB file: {:.1} MiB after populating, {:.1} MiB before phase B, {:.1} MiB after (+{:.1} MiB), {:.1} MiB after A2",
        mib(disk_populated),
        mib(disk_before),
        mib(disk_after),
        mib(disk_after.saturating_sub(disk_before)),
        mib(disk_end)
    );
    // Where the slowest applies of B fell, relative to their snapshot.
    let mut slow = b.clone();
    slow.sort_by_key(|s| std::cmp::Reverse(s.took));
    println!("slowest applies during snapshots (offset from the snapshot's begin / end):");
    for s in slow.iter().take(8) {
        if let Some(p) = snaps
            .iter()
            .find(|p| s.at < p.end && s.at + s.took > p.begin)
        {
            println!(
                "  {:>8.3} ms  at +{:.3} s / {:+.3} s",
                ms(s.took),
                (s.at.as_secs_f64() - p.begin.as_secs_f64()),
                (s.at.as_secs_f64() - p.end.as_secs_f64())
            );
        }
    }

    let phase_json = |s: &Stats| {
        format!(
            "{{\"n\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
            s.n,
            s.p50.as_micros(),
            s.p99.as_micros(),
            s.max.as_micros()
        )
    };
    let mut snaps_json = String::new();
    for (i, s) in snaps.iter().enumerate() {
        let _ = write!(
            snaps_json,
            "{}{{\"secs\":{:.3},\"bytes\":{},\"lmdb_bytes_after\":{}}}",
            if i == 0 { "" } else { "," },
            (s.end - s.begin).as_secs_f64(),
            s.bytes,
            s.disk_after
        );
    }
    println!(
        "{{\"bench\":\"snapshot_latency\",\"durability\":\"{durability:?}\",\"keys\":{keys},\"value_bytes\":{value},\"applies\":{applies},\"sleep_us\":{},\"populate_secs\":{:.3},\"a\":{},\"b\":{},\"b_whole_phase\":{},\"a2\":{},\"p99_ratio\":{ratio:.3},\"target_met\":{},\"snapshots\":[{snaps_json}],\"lmdb_bytes_populated\":{disk_populated},\"lmdb_bytes_before\":{disk_before},\"lmdb_bytes_after\":{disk_after},\"lmdb_bytes_end\":{disk_end},\"interleaved\":{{\"rounds\":{},\"without\":{},\"during\":{},\"p99_ratio\":{ratio_i:.3},\"snapshot_secs_median\":{:.3}}}}}",
        sleep.as_micros(),
        populate.as_secs_f64(),
        phase_json(&sa),
        phase_json(&sb),
        phase_json(&sb_all),
        phase_json(&sa2),
        ratio <= 1.5,
        i_snaps.len(),
        phase_json(&si_without),
        phase_json(&si_during),
        i_secs.p50.as_secs_f64()
    );
}

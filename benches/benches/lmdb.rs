//! The cost of the LMDB stores on a real disk (a temporary directory under `$TMPDIR`,
//! which must not be a tmpfs: the log's durable write is what is measured).
//!
//! - `append/batch=N`: one iteration is one [`LogStore::write`] of N entries with
//!   128-byte command payloads, continuing the log: one record appended to the
//!   write-ahead log and one `fdatasync` (LMDB is updated without a flush and
//!   checkpointed, as `LmdbLogStore` always does). Throughput is entries per second;
//!   the time per iteration is the durable-write latency. The log is purged off the clock whenever it
//!   passes 64k entries, so it never grows without bound.
//! - `read/range=1024`: one iteration is one [`LmdbLogStore::entries`]`(from, from + 1024)`
//!   on a log of 131,072 entries of 128 bytes (every record's checksum verified), at a
//!   different `from` each time. Throughput is entries per second.
//! - `apply/puts=1024`: one iteration is one [`StateMachine::apply`] of 1024 entries,
//!   each `put <16-byte key> <128-byte value>` with a key never used before (scattered
//!   over the key space), into an [`LmdbStateMachine`] with the `Kv` machine of the
//!   tests, with `SmConfig::default()`: one write transaction committed without a
//!   flush (`ApplyDurability::Deferred`, the server's default; the log is what is
//!   durable). Throughput is puts per second. The state machine grows for the bench's duration.
//!
//! The async store methods are driven with `futures::executor::block_on`. The `Kv`
//! machine and `entry` are `raft_storage_lmdb::testing`'s.

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use futures::executor::block_on;
use raft_core::Persist;
use raft_core::node::{LogStore, StateMachine};
use raft_proto::{Bytes, Entry, LogId, LogIndex, Membership, NodeId, SnapshotMeta, Term};
use raft_storage_lmdb::testing::{TextKv as Kv, entry};
use raft_storage_lmdb::{EnvConfig, LmdbLogStore, LmdbStateMachine, SmConfig};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Purge the appended log off the clock once it holds this many entries.
const PURGE_AT: u64 = 65_536;
/// Entries in the log that `read` reads from.
const READ_LOG: u64 = 131_072;
const PAYLOAD: usize = 128;

fn entries(first: u64, n: u64, payload: &Bytes) -> Vec<Entry> {
    (first..first + n)
        .map(|i| entry(i, payload.clone()))
        .collect()
}

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    // Every iteration is a few milliseconds of fsync: flat sampling keeps the run
    // inside its measurement time.
    group
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
}

fn append(c: &mut Criterion) {
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let mut group = c.benchmark_group("append");
    configure(&mut group);
    for batch in [1u64, 64, 1024] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = LmdbLogStore::open(dir.path(), EnvConfig::default()).expect("open the log");
        // The first index to append, and the first still in the log.
        let (mut next, mut first) = (1u64, 1u64);
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("batch={batch}")),
            &batch,
            |b, &batch| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        if next - first >= PURGE_AT {
                            let last = LogId::new(Term(1), LogIndex(next - 1));
                            let base = SnapshotMeta {
                                last_log_id: last,
                                membership: Membership::voters([NodeId(1)]),
                                id: 1,
                            };
                            block_on(store.purge(last, &base)).expect("purge");
                            first = next;
                        }
                        let write = Persist {
                            entries: entries(next, batch, &payload),
                            ..Persist::default()
                        };
                        let start = Instant::now();
                        block_on(store.write(&write)).expect("append");
                        total += start.elapsed();
                        next += batch;
                    }
                    total
                });
            },
        );
    }
    group.finish();
}

/// A log of `READ_LOG` entries of `PAYLOAD` bytes, in a new temporary directory.
fn filled_log() -> (tempfile::TempDir, LmdbLogStore) {
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = LmdbLogStore::open(dir.path(), EnvConfig::default()).expect("open the log");
    for first in (1..=READ_LOG).step_by(4096) {
        let write = Persist {
            entries: entries(first, 4096, &payload),
            ..Persist::default()
        };
        block_on(store.write(&write)).expect("fill the log");
    }
    (dir, store)
}

fn read(c: &mut Criterion) {
    const RANGE: u64 = 1024;
    // Filled by the bench when it runs, not when a filter skips it.
    let mut log: Option<(tempfile::TempDir, LmdbLogStore)> = None;
    let mut group = c.benchmark_group("read");
    configure(&mut group);
    group.throughput(Throughput::Elements(RANGE));
    // Ranges start at pseudo-random indexes over the whole log.
    let mut n = 0u64;
    group.bench_with_input(
        BenchmarkId::from_parameter(format!("range={RANGE}")),
        &RANGE,
        |b, &range| {
            let (_dir, store) = log.get_or_insert_with(filled_log);
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let from = 1 + n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % (READ_LOG - range + 1);
                    let start = Instant::now();
                    let got = block_on(store.entries(LogIndex(from), LogIndex(from + range)))
                        .expect("read the log");
                    total += start.elapsed();
                    assert_eq!(got.len() as u64, range, "a whole range");
                    black_box(got);
                }
                total
            });
        },
    );
    group.finish();
}

fn apply(c: &mut Criterion) {
    const PUTS: u64 = 1024;
    const KEY: usize = 16;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sm = LmdbStateMachine::open(dir.path(), Kv, SmConfig::default())
        .expect("open the state machine");
    let mut next = 1u64;
    let mut group = c.benchmark_group("apply");
    configure(&mut group);
    group.throughput(Throughput::Elements(PUTS));
    group.bench_with_input(
        BenchmarkId::from_parameter(format!("puts={PUTS}")),
        &PUTS,
        |b, &puts| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch: Vec<Entry> = (next..next + puts)
                        .map(|i| {
                            let k = key(i);
                            debug_assert_eq!(k.len(), KEY);
                            entry(i, put_command(&k, PAYLOAD, i))
                        })
                        .collect();
                    let start = Instant::now();
                    let out = block_on(sm.apply(&batch)).expect("apply");
                    total += start.elapsed();
                    black_box(out);
                    next += puts;
                }
                total
            });
        },
    );
    group.finish();
    if next == 1 {
        // A filter skipped the bench.
        return;
    }
    let size = sm.disk_size().expect("the state machine's size");
    eprintln!(
        "apply: the state machine ended with {} keys, {:.1} MiB on disk",
        next - 1,
        size as f64 / f64::from(1 << 20)
    );
}

/// The suite of this layer.
pub(crate) fn suite(c: &mut Criterion) {
    append(c);
    read(c);
    apply(c);
}

/// A 16-byte key (lowercase hex) for `n`, scattered over the key space so that
/// consecutive `n` land on different pages (a random-insert workload, not an append).
fn key(n: u64) -> String {
    format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// `put <key> <value>` with a printable value of exactly `len` bytes.
fn put_command(key: &str, value_len: usize, salt: u64) -> Bytes {
    let mut c = Vec::with_capacity(5 + key.len() + value_len);
    c.extend_from_slice(b"put ");
    c.extend_from_slice(key.as_bytes());
    c.push(b' ');
    c.extend((0..value_len as u64).map(|i| b'a' + ((i + salt) % 26) as u8));
    Bytes::from(c)
}

//! The workspace's criterion benchmarks: one binary, one suite module per layer.
//! Each module's doc says what one iteration of each of its benches is.
//!
//! | layer   | module    | bench ids                                                  |
//! |---------|-----------|------------------------------------------------------------|
//! | `proto` | [`proto`] | `proto/encode/{append_64x128B,heartbeat}`, `proto/decode/…` |
//! | `core`  | [`core`]  | `commit/batch/{1,64}`                                      |
//! | `node`  | [`node`]  | `propose/clients/{1,64,256,4096}`                          |
//! | `lmdb`  | [`lmdb`]  | `append/batch={1,64,1024}`, `read/range=1024`, `apply/puts=1024` |
//! | `quic`  | [`quic`]  | `frames/append_128B`, `round_trip/heartbeat`, `snapshot/64MiB` |
//!
//! The ids of the suites that were moved here (core, node, lmdb, quic) are the ids
//! they had in their own crates' bench binaries, so earlier results stay comparable.
//!
//! - `cargo bench -p benches` runs every suite (so does `cargo bench` at the workspace
//!   root, together with the custom measurements `raft-net-quic/benches/rtt.rs` and
//!   `raft-storage-lmdb/benches/snapshot_latency.rs`).
//! - `cargo bench -p benches -- quic`: a filter that is exactly a layer name runs that
//!   suite alone (the other suites do not even set up). Any other filter is
//!   criterion's regular expression on the bench ids: `-- '^commit/'`,
//!   `-- 'append/batch=64'`, `-- round_trip`.
//! - The HTML report is `target/criterion/report/index.html` (under
//!   `$CARGO_TARGET_DIR` if set), plotted with plotters when gnuplot is not installed.
//! - `cargo test -p benches --benches` runs each bench once, as a smoke test.
//! - `scripts/bench-all.py run` runs every bench here one at a time, plus the custom
//!   measurements, and writes each figure with the load average and the other
//!   processes' CPU beside it; the README's per-layer tables come from its recorded
//!   run, and `scripts/bench-all.py check` compares a fresh run with that one.

use criterion::{BenchmarkFilter, Criterion};

mod core;
mod lmdb;
mod node;
mod proto;
mod quic;

/// A layer's suite: adds its groups to the run.
type Suite = fn(&mut Criterion);

/// Every suite, by layer name, in the order they run.
const SUITES: [(&str, Suite); 5] = [
    ("proto", proto::suite),
    ("core", self::core::suite),
    ("node", node::suite),
    ("lmdb", lmdb::suite),
    ("quic", quic::suite),
];

/// Criterion's options that take a value: the word after one is not the filter.
const OPTIONS_WITH_VALUE: &[&str] = &[
    "-c",
    "--color",
    "-s",
    "--save-baseline",
    "-b",
    "--baseline",
    "--baseline-lenient",
    "--format",
    "--profile-time",
    "--load-baseline",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--plotting-backend",
    "--output-format",
];

/// The positional argument (criterion's FILTER), if any.
fn filter_arg() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if OPTIONS_WITH_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let layer = filter_arg().filter(|f| SUITES.iter().any(|(name, _)| name == f));
    if layer.is_some() {
        // A layer name is not a pattern of its bench ids: the whole suite runs.
        criterion = criterion.with_benchmark_filter(BenchmarkFilter::AcceptAll);
    }
    for (name, suite) in SUITES {
        if layer.as_deref().is_none_or(|layer| layer == name) {
            suite(&mut criterion);
        }
    }
    criterion.final_summary();
}

//! Many seeds on several threads.
//!
//! Each seed runs whole on one thread, on its own world and its own RNG, so its run is
//! the same whatever the number of threads and whichever thread takes it: threads only
//! decide when a seed runs, never what it does. Seeds are handed out by an atomic
//! counter, and reports come back to the calling thread in the order they finish.

use crate::{SeedReport, SimOptions, run_seed};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;

/// Stack for each seed's thread: as much as the main thread gets, so a seed behaves
/// the same on any thread.
const SEED_THREAD_STACK_BYTES: usize = 8 << 20;

/// The default number of threads: one per core.
pub fn default_jobs() -> NonZeroUsize {
    thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Runs every seed of `seeds` on `jobs` threads, with the options `options(seed)`,
/// and hands each report to `on_report` on the calling thread as soon as its seed
/// finishes (so in the order seeds finish, which varies from run to run with more than
/// one job; each report does not).
pub fn run_seeds(
    seeds: Range<u64>,
    jobs: NonZeroUsize,
    options: impl Fn(u64) -> SimOptions + Sync,
    mut on_report: impl FnMut(SeedReport),
) {
    let count = seeds.end.saturating_sub(seeds.start);
    let next = AtomicU64::new(0);
    let threads = jobs.get().min(usize::try_from(count).unwrap_or(usize::MAX));
    let (tx, rx) = mpsc::channel::<SeedReport>();
    thread::scope(|scope| {
        for t in 0..threads {
            let tx = tx.clone();
            let (next, options) = (&next, &options);
            let worker = move || {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= count {
                        return;
                    }
                    let report = run_seed(&options(seeds.start + k));
                    if tx.send(report).is_err() {
                        return;
                    }
                }
            };
            thread::Builder::new()
                .name(format!("seeds-{t}"))
                .stack_size(SEED_THREAD_STACK_BYTES)
                .spawn_scoped(scope, worker)
                .unwrap_or_else(|e| panic!("cannot start seed thread {t}: {e}"));
        }
        drop(tx);
        for report in rx {
            on_report(report);
        }
    });
}

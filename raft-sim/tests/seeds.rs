//! The simulator in CI: a fixed sample of seeds covering every fault kind, the seeds
//! that once found bugs, determinism (also across threads), and the per-seed budget.

use raft_sim::{LeaseMode, Nemeses, SimOptions, run_seed, run_seeds};
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::Duration;

fn run(seed: u64) -> raft_sim::SeedReport {
    run_seed(&SimOptions {
        seed,
        ..SimOptions::default()
    })
}

#[test]
fn a_sample_of_seeds_passes_and_covers_every_fault() {
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let mut lossy = 0;
    let mut failures = Vec::new();
    for seed in 0..120 {
        let r = run(seed);
        if let Some(why) = &r.failure {
            failures.push(format!("seed {seed}: {why}"));
        }
        for (k, v) in &r.stats.faults_by_kind {
            *faults.entry(k).or_default() += v;
        }
        lossy += u64::from(r.profile.loss > 0.0 && r.profile.duplicate > 0.0);
        assert!(
            r.stats.ops >= 200 && r.stats.faults >= 10,
            "seed {seed} is too small: {:?}",
            r.stats
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
    for kind in [
        "partition",
        "one-way partition",
        "isolate leader",
        "crash",
        "pause",
        "clock skew",
        "torn write",
        "snapshot built",
        "snapshot installed",
        "add learner",
        "promote learner",
        "remove a node",
        "remove the leader",
        "snapshot lost (struck)",
        "restart with state lost",
        "targeted: vote crash armed",
        "targeted: crash",
        "targeted: stale votes",
        "targeted: clock jump",
        "targeted: deaf node",
        "targeted: figure 8 second leader",
        "targeted: figure 8 old entry on a quorum",
    ] {
        assert!(
            faults.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} fault in the sample: {faults:?}"
        );
    }
    assert!(lossy > 0, "no seed with both loss and duplication");
}

#[test]
fn the_base_nemeses_inject_no_targeted_fault() {
    for seed in 0..20 {
        let r = run_seed(&SimOptions {
            seed,
            nemeses: Nemeses::Base,
            ..SimOptions::default()
        });
        assert!(r.failure.is_none(), "seed {seed}: {:?}", r.failure);
        let targeted: Vec<_> = r
            .stats
            .faults_by_kind
            .keys()
            .filter(|k| k.starts_with("targeted"))
            .collect();
        assert!(targeted.is_empty(), "seed {seed}: {targeted:?}");
    }
}

#[test]
fn a_seed_replays_exactly() {
    let opts = SimOptions {
        seed: 42,
        verbose: true,
        ..SimOptions::default()
    };
    let (a, b) = (run_seed(&opts), run_seed(&opts));
    assert!(!a.trace.is_empty());
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.digest, b.digest);
}

/// Each seed's digest, running `seeds` on `jobs` threads.
fn digests(seeds: std::ops::Range<u64>, jobs: usize) -> BTreeMap<u64, (u64, u64)> {
    let mut out = BTreeMap::new();
    let jobs = NonZeroUsize::new(jobs).expect("jobs > 0");
    run_seeds(
        seeds,
        jobs,
        |seed| SimOptions {
            seed,
            ..SimOptions::default()
        },
        |r| {
            assert!(r.failure.is_none(), "seed {}: {:?}", r.seed, r.failure);
            let old = out.insert(r.seed, (r.digest, r.stats.events));
            assert!(old.is_none(), "seed {} reported twice", r.seed);
        },
    );
    out
}

#[test]
fn seeds_run_the_same_on_one_thread_or_several() {
    // The digest covers the statistics, every node's log, applied index and state
    // machine, the client history and the failure: a seed whose run depended on the
    // number of threads or on which thread took it would differ here.
    let seeds = 20..28;
    let one = digests(seeds.clone(), 1);
    let two = digests(seeds.clone(), 2);
    let three = digests(seeds.clone(), 3);
    assert_eq!(one.len(), 8, "every seed reported once: {one:?}");
    assert_eq!(one, two, "jobs=1 vs jobs=2");
    assert_eq!(one, three, "jobs=1 vs jobs=3");
    for seed in seeds {
        let alone = run(seed);
        assert_eq!(
            (alone.digest, alone.stats.events),
            one[&seed],
            "seed {seed}"
        );
    }
    let distinct: std::collections::BTreeSet<u64> = one.values().map(|(d, _)| *d).collect();
    assert_eq!(
        distinct.len(),
        one.len(),
        "digests tell seeds apart: {one:?}"
    );
}

#[test]
fn a_seed_over_its_event_budget_fails_with_its_replay_command() {
    let opts = SimOptions {
        seed: 3,
        max_events: Some(100),
        ..SimOptions::default()
    };
    let r = run_seed(&opts);
    let why = r.failure.expect("a budget of 100 events fails the seed");
    assert!(
        why.contains("Per-seed budget") && why.contains("more than 100 events"),
        "{why}"
    );
    assert_eq!(r.stats.events, 101);
    assert_eq!(
        opts.replay_command(),
        "cargo run --release -p raft-sim -- --seed 3 --verbose --max-events 100"
    );
    // The event budget is exact: the failure replays.
    assert_eq!(run_seed(&opts).digest, r.digest);
}

#[test]
fn a_seed_over_its_wall_clock_budget_fails() {
    let r = run_seed(&SimOptions {
        seed: 3,
        max_wall: Some(Duration::ZERO),
        ..SimOptions::default()
    });
    let why = r.failure.expect("a budget of no time fails the seed");
    assert!(
        why.contains("Per-seed budget")
            && why.contains("wall-clock")
            && why.contains("--max-events"),
        "{why}"
    );
}

#[test]
fn regression_seeds() {
    // 149: a rejected vote request restarted the election timer, so a stale node with
    // a fast clock (PreVote off) kept the cluster leaderless forever.
    // 346, 652, 1046: the Leader Completeness checker required entries by their own
    // term instead of the term they were committed in. (The simulator has grown since;
    // these seeds no longer replay those schedules, and the core bug is pinned by a
    // scenario test, but they stay as ordinary seeds that once mattered.)
    for seed in [149, 346, 652, 1046] {
        let r = run(seed);
        assert!(r.failure.is_none(), "seed {seed}: {:?}", r.failure);
    }
}

#[test]
fn lease_reads_within_the_clock_bound_stay_linearizable() {
    // Lease reads (ReadMode::LeaseBased) on every seed, clocks within the configured
    // drift bound: every seed passes every checker, linearizability included.
    for seed in 0..60 {
        let r = run_seed(&SimOptions {
            seed,
            lease: LeaseMode::Always,
            ..SimOptions::default()
        });
        assert!(r.failure.is_none(), "seed {seed}: {:?}", r.failure);
        assert!(r.profile.lease.is_some());
    }
}

#[test]
fn lease_reads_beyond_the_clock_bound_are_caught_serving_stale_values() {
    // The same, but the leader's clock runs 4-8x slow while it is cut off: its lease
    // outlives its voters' patience, a new leader takes writes, and the old one serves
    // stale reads. The linearizability checker must catch that: the bound is what
    // makes lease reads safe. (Seeds are deterministic; this range holds several.)
    let mut stale = Vec::new();
    for seed in 0..400 {
        let r = run_seed(&SimOptions {
            seed,
            lease: LeaseMode::BeyondBound,
            ..SimOptions::default()
        });
        if let Some(why) = r.failure {
            assert!(
                why.contains("Linearizability"),
                "seed {seed} failed for another reason: {why}"
            );
            stale.push(seed);
        }
    }
    assert!(
        !stale.is_empty(),
        "no stale read caught in 400 seeds beyond the bound"
    );
    eprintln!("stale reads caught beyond the bound in seeds {stale:?}");
}

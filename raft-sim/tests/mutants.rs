//! Extra seeds for mutation testing (raft-core/MUTANTS.md): `RAFT_SIM_MUTANT_SEEDS=N`
//! runs seeds 1000..1000+N, beyond the sample in `seeds.rs`, every one of which must
//! pass every checker. Unset (as in CI) it runs nothing.

use raft_sim::{SimOptions, default_jobs, run_seeds};

#[test]
fn mutant_seeds_pass() {
    let count: u64 = match std::env::var("RAFT_SIM_MUTANT_SEEDS") {
        Ok(n) => n.parse().expect("RAFT_SIM_MUTANT_SEEDS is a number"),
        Err(_) => return,
    };
    let mut failures = Vec::new();
    run_seeds(
        1000..1000 + count,
        default_jobs(),
        |seed| SimOptions {
            seed,
            ..SimOptions::default()
        },
        |r| {
            if let Some(why) = r.failure {
                failures.push(format!("seed {}: {why}", r.seed));
            }
        },
    );
    failures.sort();
    assert!(failures.is_empty(), "{failures:#?}");
}

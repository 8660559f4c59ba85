//! `raft-sim`: run seeds of the deterministic cluster simulation.
//!
//! ```text
//! raft-sim --seeds N [--start S] [--nodes K] [--ops M]   run seeds S..S+N
//! raft-sim --seed X [--verbose] [--nodes K] [--ops M]     replay one seed
//! ```

#![allow(clippy::print_stdout)]
// Wall-clock time is only used to report the simulator's own speed.
#![allow(clippy::disallowed_methods)]

use raft_sim::{SimOptions, run_seed};
use std::process::ExitCode;
use std::time::Instant;

struct Args {
    start: u64,
    seeds: u64,
    single: Option<u64>,
    nodes: Option<u64>,
    ops: Option<u64>,
    lin_budget: Option<u64>,
    verbose: bool,
    lease: raft_sim::LeaseMode,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        start: 0,
        seeds: 1,
        single: None,
        nodes: None,
        ops: None,
        lin_budget: None,
        verbose: false,
        lease: raft_sim::LeaseMode::Drawn,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{name}: '{v}' is not a number"))
        };
        match flag.as_str() {
            "--seeds" => args.seeds = value("--seeds")?,
            "--start" => args.start = value("--start")?,
            "--seed" => args.single = Some(value("--seed")?),
            "--nodes" => {
                let n = value("--nodes")?;
                if !(3..=7).contains(&n) {
                    return Err(format!("--nodes {n}: the simulator runs 3 to 7 nodes"));
                }
                args.nodes = Some(n);
            }
            "--ops" => args.ops = Some(value("--ops")?),
            "--lin-budget" => args.lin_budget = Some(value("--lin-budget")?),
            "--verbose" | "-v" => args.verbose = true,
            "--lease" => args.lease = raft_sim::LeaseMode::Always,
            "--lease-beyond-bound" => args.lease = raft_sim::LeaseMode::BeyondBound,
            "--help" | "-h" => {
                return Err("usage: raft-sim --seeds N [--start S] [--nodes K] [--ops M] [--lease | --lease-beyond-bound] | --seed X [--verbose]".into());
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    Ok(args)
}

fn replay_command(seed: u64, args: &Args) -> String {
    let mut cmd = format!("cargo run --release -p raft-sim -- --seed {seed} --verbose");
    if let Some(n) = args.nodes {
        cmd.push_str(&format!(" --nodes {n}"));
    }
    if let Some(o) = args.ops {
        cmd.push_str(&format!(" --ops {o}"));
    }
    match args.lease {
        raft_sim::LeaseMode::Drawn => {}
        raft_sim::LeaseMode::Always => cmd.push_str(" --lease"),
        raft_sim::LeaseMode::BeyondBound => cmd.push_str(" --lease-beyond-bound"),
    }
    cmd
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // A panic inside a seed is reported as that seed's failure; keep the default
    // hook's noise out of the summary.
    std::panic::set_hook(Box::new(|_| {}));
    let seeds: Vec<u64> = match args.single {
        Some(s) => vec![s],
        None => (args.start..args.start.saturating_add(args.seeds)).collect(),
    };
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, 0u64);
    let (mut ops, mut events, mut faults) = (0u64, 0u64, 0u64);
    let (mut ok, mut failed_ops, mut unknown) = (0u64, 0u64, 0u64);
    let mut worst_leader_after_heal = (0.0f64, 0u64);
    let mut kinds: std::collections::BTreeMap<&str, u64> = Default::default();
    for &seed in &seeds {
        let opts = SimOptions {
            seed,
            nodes: args.nodes,
            verbose: args.verbose,
            ops: args.ops,
            lin_budget: args.lin_budget,
            lease: args.lease,
        };
        let report = run_seed(&opts);
        ops += report.stats.ops;
        events += report.stats.events;
        faults += report.stats.faults;
        ok += report.stats.ops_ok;
        failed_ops += report.stats.ops_failed;
        unknown += report.stats.ops_unknown;
        for (k, v) in &report.stats.faults_by_kind {
            *kinds.entry(k).or_default() += v;
        }
        if let Some(t) = report.stats.leader_after_heal_us {
            let timeouts = t as f64 / report.profile.election_us() as f64;
            if timeouts > worst_leader_after_heal.0 {
                worst_leader_after_heal = (timeouts, seed);
            }
        }
        if args.single.is_some() {
            for line in &report.trace {
                println!("{line}");
            }
            if args.verbose {
                println!("history (as checked):");
                for op in &report.history {
                    println!("  {op:?}");
                }
            }
            println!("profile: {:?}", report.profile);
            println!("stats: {:?}", report.stats);
        }
        match report.failure {
            None => passed += 1,
            Some(why) => {
                failed += 1;
                println!("seed {seed} FAILED ({} nodes): {why}", report.profile.nodes);
                println!("    replay: {}", replay_command(seed, &args));
            }
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "{} seeds in {secs:.1}s: {ops} client ops ({:.0} ops/s), {events} events ({:.0}/s), {faults} fault events",
        seeds.len(),
        ops as f64 / secs,
        events as f64 / secs,
    );
    println!("client ops: {ok} ok, {failed_ops} definitely failed, {unknown} of unknown outcome");
    let kinds: Vec<String> = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("events: {}", kinds.join(", "));
    println!(
        "slowest stable leader after healing: {:.1} election timeouts (seed {})",
        worst_leader_after_heal.0, worst_leader_after_heal.1
    );
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! `raft-sim`: run seeds of the deterministic cluster simulation.
//!
//! ```text
//! raft-sim --seeds N [--start S] [--jobs J] [--nodes K] [--ops M]   run seeds S..S+N
//! raft-sim --seed X [--verbose] [--nodes K] [--ops M]                 replay one seed
//! ```

#![allow(clippy::print_stdout)]
// Wall-clock time is only used to report the simulator's own speed.
#![allow(clippy::disallowed_methods)]

use clap::Parser;
use raft_sim::{
    DEFAULT_LIN_BUDGET, DEFAULT_MAX_EVENTS, DEFAULT_MAX_WALL, LeaseMode, Nemeses, SeedReport,
    SimOptions, default_jobs, run_seeds,
};
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Deterministic simulation of a raft-core cluster: 3 to 7 nodes on virtual time,
/// under message loss, partitions, crashes, torn writes, pauses, clock skew,
/// membership changes and snapshots, with the safety checkers after every event,
/// liveness after healing and linearizability of the client history at the end.
///
/// Each seed draws its own cluster and fault profile and replays exactly. A failing
/// seed prints the command that replays it with its event trace.
#[derive(Parser, Debug)]
#[command(name = "raft-sim", version, max_term_width = 100)]
struct Cli {
    /// Run this many seeds, starting at --start.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seeds: u64,

    /// The first seed to run with --seeds.
    #[arg(long, value_name = "S", default_value_t = 0)]
    start: u64,

    /// Replay one seed, printing its event trace, profile and statistics (and its
    /// checked client history with --verbose).
    #[arg(long, value_name = "X", conflicts_with_all = ["seeds", "start"])]
    seed: Option<u64>,

    /// Seeds to run at once, one per thread. Every seed's run is the same whatever
    /// the number of jobs. [default: all cores]
    #[arg(short, long, value_name = "J")]
    jobs: Option<NonZeroUsize>,

    /// Cluster size (3 to 7) for every seed, instead of the size the seed draws.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(3..=7))]
    nodes: Option<u64>,

    /// Client operations each seed invokes, instead of its profile's number.
    #[arg(long, value_name = "M")]
    ops: Option<u64>,

    /// Search steps per key the linearizability check may take before it calls the
    /// history inconclusive (a failure).
    #[arg(long, value_name = "STEPS", default_value_t = DEFAULT_LIN_BUDGET)]
    lin_budget: u64,

    /// Keep each seed's event trace and client history; with --seed, print them.
    #[arg(short, long)]
    verbose: bool,

    /// Lease reads (ReadMode::LeaseBased) on every seed, clocks within the drift bound.
    #[arg(long, overrides_with = "lease_beyond_bound")]
    lease: bool,

    /// Lease reads on every seed, with a cut-off leader's clock slowed beyond the
    /// drift bound: stale reads that the linearizability check must catch.
    #[arg(long, overrides_with = "lease")]
    lease_beyond_bound: bool,

    /// The most events one seed may process; a seed that needs more (an event or
    /// message storm) fails, with its replay command.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_EVENTS)]
    max_events: u64,

    /// The most wall-clock time one seed may take, in milliseconds; a seed that takes
    /// longer fails, with its replay command.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_MAX_WALL.as_millis() as u64)]
    max_wall_ms: u64,

    /// Carry out the state machine's jobs (applies, snapshot captures, installs) at
    /// once, in the driver's order, instead of later and interleaved as the shipped
    /// driver's apply task does.
    #[arg(long)]
    in_order: bool,

    /// Which nemeses run: `all` (the random faults and the targeted ones, with their
    /// checks: vote crash, stale votes, deaf node, Figure 8), `checks` (the random
    /// faults with the targeted ones' checks only), or `base` (the random faults alone,
    /// exactly as before the targeted ones existed).
    #[arg(long, value_name = "SET", default_value = "all", value_parser = ["all", "checks", "base"])]
    nemeses: String,
}

impl Cli {
    /// The options of one seed. Budgets at their defaults are left out, so that replay
    /// commands stay short.
    fn options(&self, seed: u64) -> SimOptions {
        let lease = if self.lease_beyond_bound {
            LeaseMode::BeyondBound
        } else if self.lease {
            LeaseMode::Always
        } else {
            LeaseMode::Drawn
        };
        let max_wall = Duration::from_millis(self.max_wall_ms);
        SimOptions {
            seed,
            nodes: self.nodes,
            verbose: self.verbose,
            ops: self.ops,
            lin_budget: (self.lin_budget != DEFAULT_LIN_BUDGET).then_some(self.lin_budget),
            lease,
            max_events: (self.max_events != DEFAULT_MAX_EVENTS).then_some(self.max_events),
            max_wall: (max_wall != DEFAULT_MAX_WALL).then_some(max_wall),
            in_order: self.in_order,
            nemeses: match self.nemeses.as_str() {
                "base" => Nemeses::Base,
                "checks" => Nemeses::Checks,
                _ => Nemeses::All,
            },
        }
    }
}

/// What the seeds did, added up.
#[derive(Default)]
struct Summary {
    seeds: u64,
    failed: Vec<u64>,
    ops: u64,
    events: u64,
    faults: u64,
    ops_ok: u64,
    ops_failed: u64,
    ops_unknown: u64,
    kinds: BTreeMap<&'static str, u64>,
    /// Election timeouts from healing to a stable leader, and the seed (the smallest
    /// seed on ties, so the line does not depend on the order seeds finish).
    worst_leader_after_heal: (f64, u64),
    /// Wall time, events and seed of the slowest seed.
    slowest: Option<(Duration, u64, u64)>,
    /// Events and seed of the seed with the most events.
    most_events: (u64, u64),
    /// Wall time of all seeds added up (more than the run's time with several jobs).
    seed_time: Duration,
}

impl Summary {
    fn add(&mut self, r: &SeedReport) {
        let s = &r.stats;
        self.seeds += 1;
        self.ops += s.ops;
        self.events += s.events;
        self.faults += s.faults;
        self.ops_ok += s.ops_ok;
        self.ops_failed += s.ops_failed;
        self.ops_unknown += s.ops_unknown;
        for (k, v) in &s.faults_by_kind {
            *self.kinds.entry(k).or_default() += v;
        }
        if let Some(t) = s.leader_after_heal_us {
            let timeouts = t as f64 / r.profile.election_us() as f64;
            let (worst, seed) = self.worst_leader_after_heal;
            if timeouts > worst || (timeouts == worst && r.seed < seed) {
                self.worst_leader_after_heal = (timeouts, r.seed);
            }
        }
        if self.slowest.is_none_or(|(wall, _, _)| r.wall > wall) {
            self.slowest = Some((r.wall, s.events, r.seed));
        }
        let (most, seed) = self.most_events;
        if s.events > most || (s.events == most && r.seed < seed) {
            self.most_events = (s.events, r.seed);
        }
        self.seed_time += r.wall;
        if r.failure.is_some() {
            self.failed.push(r.seed);
        }
    }

    fn print(&mut self, jobs: NonZeroUsize, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-9);
        println!(
            "{} seeds in {secs:.1}s with {jobs} {} ({:.1}s in seeds): {} client ops ({:.0} ops/s), {} events ({:.0}/s), {} fault events",
            self.seeds,
            if jobs.get() == 1 { "job" } else { "jobs" },
            self.seed_time.as_secs_f64(),
            self.ops,
            self.ops as f64 / secs,
            self.events,
            self.events as f64 / secs,
            self.faults,
        );
        println!(
            "client ops: {} ok, {} definitely failed, {} of unknown outcome",
            self.ops_ok, self.ops_failed, self.ops_unknown
        );
        let kinds: Vec<String> = self.kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("events: {}", kinds.join(", "));
        println!(
            "slowest stable leader after healing: {:.1} election timeouts (seed {})",
            self.worst_leader_after_heal.0, self.worst_leader_after_heal.1
        );
        println!(
            "most events: seed {} ({} events)",
            self.most_events.1, self.most_events.0
        );
        self.failed.sort_unstable();
        if !self.failed.is_empty() {
            println!("failed seeds: {:?}", self.failed);
        }
        let slowest = self.slowest.map_or(String::new(), |(wall, events, seed)| {
            format!(
                "; slowest seed {seed}: {:.2}s, {events} events",
                wall.as_secs_f64()
            )
        });
        println!(
            "{} passed, {} failed{slowest}",
            self.seeds - self.failed.len() as u64,
            self.failed.len()
        );
    }
}

fn print_failure(r: &SeedReport, opts: &SimOptions) {
    if let Some(why) = &r.failure {
        println!("seed {} FAILED ({} nodes): {why}", r.seed, r.profile.nodes);
        println!("    replay: {}", opts.replay_command());
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A panic inside a seed is reported as that seed's failure; keep the default
    // hook's noise out of the summary.
    std::panic::set_hook(Box::new(|_| {}));
    let jobs = cli.jobs.unwrap_or_else(default_jobs);
    let (seeds, jobs) = match cli.seed {
        Some(s) => (s..s.saturating_add(1), NonZeroUsize::MIN),
        None => (cli.start..cli.start.saturating_add(cli.seeds), jobs),
    };
    let started = Instant::now();
    let mut summary = Summary::default();
    run_seeds(
        seeds,
        jobs,
        |seed| cli.options(seed),
        |report| {
            if cli.seed.is_some() {
                for line in &report.trace {
                    println!("{line}");
                }
                if cli.verbose {
                    println!("history (as checked):");
                    for op in &report.history {
                        println!("  {op:?}");
                    }
                }
                println!("profile: {:?}", report.profile);
                println!("stats: {:?}", report.stats);
                println!("digest: {:016x}", report.digest);
            }
            print_failure(&report, &cli.options(report.seed));
            summary.add(&report);
        },
    );
    summary.print(jobs, started.elapsed());
    if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

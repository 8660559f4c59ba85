//! What a run is asked to do, and the command that replays it.

use super::Nemeses;
use crate::profile::LeaseMode;
use std::fmt::Write as _;
use std::time::Duration;

/// How to run one seed.
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// The seed: everything in the run follows from it.
    pub seed: u64,
    /// Cluster size; drawn from the seed when `None`.
    pub nodes: Option<u64>,
    /// Keep an event trace to print.
    pub verbose: bool,
    /// Client operations to invoke; the profile's default when `None`.
    pub ops: Option<u64>,
    /// Search steps per key for the linearizability check; a default when `None`.
    pub lin_budget: Option<u64>,
    /// Lease reads: as the seed draws, always, or always and beyond the clock bound.
    pub lease: LeaseMode,
    /// The most events the seed may process; [`DEFAULT_MAX_EVENTS`] when `None`.
    /// Exceeding it is a failure (an event or message storm), and replays exactly.
    pub max_events: Option<u64>,
    /// The most wall-clock time the seed may take; [`DEFAULT_MAX_WALL`] when `None`.
    /// Exceeding it is a failure. Unlike everything else in a run, this depends on
    /// the machine: it is a guard against a stalled CI run, set far above what any
    /// seed needs, and a seed that exceeds it is replayed with `--max-events` to
    /// make the failure exact.
    pub max_wall: Option<Duration>,
    /// Carry out the state machine's jobs at once, in the driver's order, instead of
    /// later and interleaved as `Node`'s apply task does (the model before the
    /// simulator ran that concurrency; for comparing what each finds).
    pub in_order: bool,
    /// The random nemesis with the targeted ones (the default), with only their
    /// checks, or alone.
    pub nemeses: Nemeses,
}

/// Search steps per key the linearizability check may take by default.
pub const DEFAULT_LIN_BUDGET: u64 = 20_000_000;

/// Events a seed may process by default: about 15 times the most any seed needed
/// when it was set (seeds 0..10,000 in release: at most 134,377 events, seed 6,662;
/// the mean is about 14,600). A storm this long takes a few seconds.
pub const DEFAULT_MAX_EVENTS: u64 = 2_000_000;

/// Wall-clock time a seed may take by default: a backstop for what the event budget
/// does not count (a slow final linearizability check, a slow event). When it was set,
/// the slowest of seeds 0..10,000 took 0.35 to 1.01 s in six runs on a shared
/// two-core machine at load averages of 7 to 11 (a different seed each time, each
/// taking at most 0.09 s when replayed alone: that time is the machine's load, not the
/// seed's work), so 30 s leaves room for a CI machine far busier than that.
pub const DEFAULT_MAX_WALL: Duration = Duration::from_secs(30);

impl SimOptions {
    /// The event budget in force.
    pub fn max_events(&self) -> u64 {
        self.max_events.unwrap_or(DEFAULT_MAX_EVENTS)
    }

    /// The wall-clock budget in force.
    pub fn max_wall(&self) -> Duration {
        self.max_wall.unwrap_or(DEFAULT_MAX_WALL)
    }

    /// The command that replays this seed with its event trace: every option that
    /// changes the run is passed on (the seed draws the rest).
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo run --release -p raft-sim -- --seed {} --verbose",
            self.seed
        );
        if let Some(n) = self.nodes {
            let _ = write!(cmd, " --nodes {n}");
        }
        if let Some(o) = self.ops {
            let _ = write!(cmd, " --ops {o}");
        }
        if let Some(b) = self.lin_budget {
            let _ = write!(cmd, " --lin-budget {b}");
        }
        match self.lease {
            LeaseMode::Drawn => {}
            LeaseMode::Always => cmd.push_str(" --lease"),
            LeaseMode::BeyondBound => cmd.push_str(" --lease-beyond-bound"),
        }
        if let Some(e) = self.max_events {
            let _ = write!(cmd, " --max-events {e}");
        }
        if self.in_order {
            cmd.push_str(" --in-order");
        }
        match self.nemeses {
            Nemeses::All => {}
            Nemeses::Checks => cmd.push_str(" --nemeses checks"),
            Nemeses::Base => cmd.push_str(" --nemeses base"),
        }
        if let Some(w) = self.max_wall {
            let _ = write!(cmd, " --max-wall-ms {}", w.as_millis());
        }
        cmd
    }
}

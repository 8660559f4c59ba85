//! Swarm testing: each seed draws its own fault profile, so some seeds run on a clean
//! network and others under heavy loss, partitions and crashes.

use crate::rng::SimRng;

/// Times are in microseconds of virtual time.
pub const MS: u64 = 1_000;

/// What one seed's run looks like.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Number of servers (3 to 7). The first `voters` start as the cluster; the rest
    /// are spares that membership changes may add.
    pub nodes: u64,
    /// Voters the cluster starts with.
    pub voters: u64,
    /// Virtual microseconds per tick, before skew.
    pub tick_us: u64,
    /// Election timeout in ticks.
    pub election_ticks: u32,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// Per-node tick-rate skew: each node's tick interval is scaled by a factor drawn
    /// from `[1 - skew, 1 + skew]`.
    pub skew: f64,
    /// One-way network delay range.
    pub delay_us: (u64, u64),
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Disk write latency range.
    pub disk_us: (u64, u64),
    /// Probability that a crash tears the write in flight (part of it lands).
    pub torn_write: f64,
    /// Fault kinds enabled for this seed.
    pub faults: Vec<FaultKind>,
    /// Mean virtual time between fault events.
    pub fault_interval_us: u64,
    /// How long a fault lasts (range).
    pub fault_duration_us: (u64, u64),
    /// Fault events in the fault phase; the phase ends once the last one has run its
    /// course.
    pub fault_events: u64,
    /// Expected length of the fault phase (used to pace the clients).
    pub fault_phase_us: u64,
    /// Number of clients.
    pub clients: u64,
    /// Number of distinct keys.
    pub keys: u64,
    /// Client operations to invoke (at least).
    pub ops: u64,
    /// A client gives up an attempt after this long without an answer.
    pub client_timeout_us: u64,
    /// The most entries per AppendEntries (small values split a new leader's old
    /// entries from its blank entry, which opens the Figure 8 window).
    pub max_entries_per_append: usize,
    /// The most appends in flight per follower.
    pub max_inflight_appends: usize,
    /// Snapshot every this many applied entries (0: only when the nemesis asks).
    pub snapshot_entries: u64,
    /// ... or every this many applied payload bytes (0: no size trigger).
    pub snapshot_bytes: u64,
    /// Entries kept behind a snapshot.
    pub snapshot_keep_entries: u64,
    /// Bytes per snapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Snapshot chunks in flight per follower.
    pub snapshot_chunks_in_flight: usize,
    /// A learner is promoted only within this many entries of the leader.
    pub promote_lag_entries: u64,
    /// Use PreVote.
    pub pre_vote: bool,
    /// Use CheckQuorum.
    pub check_quorum: bool,
    /// Serve linearizable reads from a lease (needs CheckQuorum), with this bound.
    pub lease: Option<Lease>,
    /// How long the state machine takes per job (an apply batch, a snapshot capture,
    /// a received chunk, an install), as a range: its jobs complete this much later,
    /// interleaved with the driver's other work, as `Node`'s apply task does. `None`
    /// (`--in-order`): every job is done at once, in the driver's order.
    pub apply_us: Option<(u64, u64)>,
}

/// A lease-read seed: how far clock rates may differ, and the margin that covers it.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The largest ratio between two nodes' tick lengths the seed's clocks keep to.
    pub max_rate_ratio: f64,
    /// The margin configured: `ceil(election_ticks * (1 - 1 / max_rate_ratio)) + 2`.
    pub clock_drift_ticks: u32,
    /// Clock faults break the bound (a test that lease reads then go stale).
    pub beyond_bound: bool,
}

/// Clock-fault tick-length factors inside the lease bound.
pub const LEASE_CLOCK_FACTORS: [f64; 2] = [0.9, 1.1];
/// Clock-fault tick-length factors otherwise.
pub const CLOCK_FACTORS: [f64; 4] = [0.25, 0.5, 2.0, 4.0];
/// Clock-fault factors beyond the lease bound, slowing a leader's clock.
pub const SLOW_CLOCK_FACTORS: [f64; 2] = [4.0, 8.0];

/// Whether a seed uses lease reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeaseMode {
    /// As drawn from the seed (about a quarter of the seeds with CheckQuorum).
    #[default]
    Drawn,
    /// Every seed, with CheckQuorum, clocks within the bound.
    Always,
    /// Every seed, with CheckQuorum, and clock faults far beyond the bound.
    BeyondBound,
}

/// A kind of fault the nemesis can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// Split the nodes into two groups that cannot talk.
    Partition,
    /// One node can send to the others but not receive from them (or the reverse).
    OneWay,
    /// Isolate a minority that contains the current leader.
    IsolateLeader,
    /// Crash a node (possibly the leader) and restart it later.
    Crash,
    /// Ask the leader for a membership change: add a spare as a learner, promote a
    /// learner, or remove a node (possibly the leader itself).
    Membership,
    /// Ask a node for a snapshot now, at whatever point it has applied to.
    Snapshot,
    /// Crash the next node that wins an election, within a few heartbeats of winning,
    /// so leaders die with half-replicated logs (the breeding ground of Figure 8).
    LeaderChurn,
    /// Pause a node (no ticks, no messages) for a while, often past an election timeout.
    Pause,
    /// A node's clock runs fast or slow for a while.
    ClockSkew,
    /// Crash a node whose newest snapshot then turns out lost or damaged at restart
    /// (its data gone; its metadata readable or not), as a bad disk would leave it.
    /// Only strikes where the rest of the cluster still holds what that snapshot
    /// covered: losing it everywhere is data loss no algorithm can undo.
    SnapshotDamage,
}

impl FaultKind {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::OneWay => "one-way partition",
            FaultKind::IsolateLeader => "isolate leader",
            FaultKind::Crash => "crash",
            FaultKind::Membership => "membership change",
            FaultKind::Snapshot => "snapshot",
            FaultKind::LeaderChurn => "leader churn",
            FaultKind::Pause => "pause",
            FaultKind::ClockSkew => "clock skew",
            FaultKind::SnapshotDamage => "snapshot damaged at restart",
        }
    }

    /// Every fault kind.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Partition,
        FaultKind::OneWay,
        FaultKind::IsolateLeader,
        FaultKind::Crash,
        FaultKind::Membership,
        FaultKind::Snapshot,
        FaultKind::LeaderChurn,
        FaultKind::Pause,
        FaultKind::ClockSkew,
        FaultKind::SnapshotDamage,
    ];
}

impl Profile {
    /// Draws a profile for `seed`; `nodes` overrides the number of servers.
    pub fn draw(rng: &mut SimRng, nodes: Option<u64>, lease_mode: LeaseMode) -> Profile {
        let nodes = nodes.unwrap_or_else(|| rng.pick(&[3, 3, 4, 4, 5, 5, 6, 7]));
        // Some seeds start with every server voting; most keep spares to add later.
        let voters = if rng.chance(0.4) {
            nodes
        } else {
            rng.range(3, nodes + 1)
        };
        let mut election_ticks = rng.pick(&[10u32, 10, 15, 20]);
        let heartbeat_ticks = rng.pick(&[1u32, 2, 3]);
        let tick_us = 10 * MS;
        let loss = rng.pick(&[0.0, 0.0, 0.01, 0.05, 0.15, 0.3]);
        let duplicate = rng.pick(&[0.0, 0.0, 0.01, 0.05]);
        let delay_us = rng.pick(&[(100, 1_000), (200, 5_000), (1_000, 30 * MS), (100, 80 * MS)]);
        let check_quorum = !rng.chance(0.1);
        let lease = match lease_mode {
            LeaseMode::Drawn => check_quorum && rng.chance(0.3),
            LeaseMode::Always | LeaseMode::BeyondBound => true,
        };
        let check_quorum = check_quorum || lease;
        // Lease seeds keep their clocks within a known band.
        let skew = if lease {
            rng.pick(&[0.0, 0.05, 0.1])
        } else {
            rng.pick(&[0.0, 0.05, 0.2, 0.4])
        };
        let mut faults: Vec<FaultKind> = FaultKind::ALL
            .iter()
            .copied()
            .filter(|_| rng.chance(0.6))
            .collect();
        if faults.is_empty() {
            faults.push(rng.pick(&FaultKind::ALL));
        }
        if lease_mode == LeaseMode::BeyondBound {
            // The faults that make a lease outlive its leadership.
            faults = vec![
                FaultKind::ClockSkew,
                FaultKind::IsolateLeader,
                FaultKind::Partition,
            ];
        }
        let disk_us = rng.pick(&[(50, 300), (200, 2_000), (1_000, 20 * MS)]);
        // Raft's timing requirement (§5.6): broadcast time << election timeout. Keep
        // the slowest vote round trip (request, vote write, answer) under a third of
        // the fastest node's election timeout; outside that envelope Raft promises
        // safety but not liveness.
        let round_trip = 2 * delay_us.1 + disk_us.1;
        let fastest_tick = (tick_us as f64 * (1.0 - skew)).max(1.0);
        let needed = (3.0 * round_trip as f64 / fastest_tick).ceil() as u32;
        election_ticks = election_ticks.max(needed);
        let election_us = u64::from(election_ticks) * tick_us;
        Profile {
            nodes,
            voters,
            tick_us,
            election_ticks,
            heartbeat_ticks,
            skew,
            delay_us,
            loss,
            duplicate,
            disk_us,
            torn_write: rng.pick(&[0.0, 0.5]),
            faults,
            fault_interval_us: rng.range(election_us / 2, 3 * election_us),
            fault_duration_us: (election_us / 2, rng.range(2 * election_us, 8 * election_us)),
            fault_events: 25,
            fault_phase_us: 0, // set below
            clients: rng.range(3, 9),
            keys: rng.pick(&[3, 5, 10, 20]),
            ops: 250,
            client_timeout_us: 3 * election_us,
            max_entries_per_append: rng.pick(&[1, 2, 8, 64]),
            max_inflight_appends: rng.pick(&[1, 4, 16]),
            snapshot_entries: rng.pick(&[0, 10, 25, 60, 200]),
            snapshot_bytes: rng.pick(&[0, 0, 400, 2_000]),
            snapshot_keep_entries: rng.pick(&[0, 3, 20]),
            snapshot_chunk_bytes: rng.pick(&[64, 256, 4096]),
            snapshot_chunks_in_flight: rng.pick(&[1, 2, 4]),
            promote_lag_entries: rng.pick(&[5, 50]),
            pre_vote: !rng.chance(0.1),
            check_quorum,
            lease: lease.then(|| {
                let (slow, fast) = (LEASE_CLOCK_FACTORS[1], LEASE_CLOCK_FACTORS[0]);
                let ratio = ((1.0 + skew) * slow) / ((1.0 - skew) * fast);
                let margin = (f64::from(election_ticks) * (1.0 - 1.0 / ratio)).ceil() as u32 + 2;
                Lease {
                    max_rate_ratio: ratio,
                    clock_drift_ticks: margin.min(election_ticks - 1),
                    beyond_bound: lease_mode == LeaseMode::BeyondBound,
                }
            }),
            // Drawn last, so that the draws before it are those of earlier versions.
            apply_us: Some(rng.pick(&[(0, 50), (20, 500), (200, 5 * MS)])),
        }
        .with_fault_phase()
    }

    fn with_fault_phase(mut self) -> Profile {
        self.fault_phase_us = self.fault_interval_us * self.fault_events;
        self
    }

    /// One election timeout in virtual time (the minimum).
    pub fn election_us(&self) -> u64 {
        u64::from(self.election_ticks) * self.tick_us
    }
}

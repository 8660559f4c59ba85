//! Static configuration of one [`Raft`](crate::Raft) node.

use raft_proto::NodeId;

/// How one node behaves. Times are in logical ticks: the driver calls
/// [`Raft::tick`](crate::Raft::tick) at a fixed interval (e.g. every 10 ms).
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// The minimum election timeout, in ticks. A follower that hears nothing from a
    /// leader for a random time in `[election_ticks, 2 * election_ticks)` campaigns.
    pub election_ticks: u32,
    /// Ticks between leader heartbeats; must be below `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Run a PreVote round before incrementing the term (dissertation §9.6), so a node
    /// that cannot win never disrupts the cluster.
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an election
    /// timeout, and voters ignore elections while they hear from a live leader
    /// (dissertation §6.2 and §4.2.3).
    pub check_quorum: bool,
    /// How a leader confirms that it still leads before serving a linearizable read.
    pub read_mode: ReadMode,
    /// The most entries one AppendEntries carries.
    pub max_entries_per_append: usize,
    /// The most payload bytes one AppendEntries carries (at least one entry is always
    /// sent, whatever its size).
    pub max_append_bytes: usize,
    /// The most AppendEntries in flight to one follower in the pipelined state.
    pub max_inflight_appends: usize,
    /// The most payload bytes in flight to one follower in the pipelined state.
    pub max_inflight_bytes: usize,
    /// A leader refuses proposals ([`ProposeError::Busy`](crate::ProposeError::Busy))
    /// while the entries it has not committed yet hold this many payload bytes (0: no
    /// limit), so that overload turns into back-pressure instead of a growing log and
    /// latency (etcd's MaxUncommittedEntriesSize). A proposal is always accepted when
    /// nothing is uncommitted, whatever its size.
    pub max_uncommitted_bytes: u64,
    /// Ask the state machine for a snapshot once this many entries were applied since
    /// the last one (0: never on its own; [`Raft::trigger_snapshot`](crate::Raft::trigger_snapshot) still works).
    pub snapshot_entries: u64,
    /// ... or once this many payload bytes were applied since the last one (0: no
    /// size trigger).
    pub snapshot_bytes: u64,
    /// Entries the snapshot covers that stay in the log after compaction, so a
    /// slightly slow follower still catches up from the log instead of a snapshot.
    pub snapshot_keep_entries: u64,
    /// Bytes per InstallSnapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Snapshot chunks in flight to one follower.
    pub max_snapshot_chunks_in_flight: usize,
    /// A learner is promoted to voter only when its log is within this many entries of
    /// the leader's.
    pub promote_lag_entries: u64,
    /// Seed of the node's random number generator (election timeouts). Give every node
    /// a different seed; the simulator derives them from its own seed.
    pub rng_seed: u64,
}

impl Config {
    /// A configuration with the defaults: 10 election ticks, heartbeat every tick,
    /// PreVote and CheckQuorum on.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            read_mode: ReadMode::ReadIndex,
            max_entries_per_append: 1024,
            max_append_bytes: 1 << 20,
            max_inflight_appends: 64,
            max_inflight_bytes: 32 << 20,
            max_uncommitted_bytes: 64 << 20,
            snapshot_entries: 10_000,
            snapshot_bytes: 64 << 20,
            snapshot_keep_entries: 1_000,
            snapshot_chunk_bytes: 1 << 20,
            max_snapshot_chunks_in_flight: 4,
            promote_lag_entries: 1_000,
            rng_seed: id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED,
        }
    }

    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.election_ticks < 2 {
            return Err(ConfigError::ElectionTicksTooSmall(self.election_ticks));
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err(ConfigError::HeartbeatNotBelowElection {
                heartbeat_ticks: self.heartbeat_ticks,
                election_ticks: self.election_ticks,
            });
        }
        if self.max_entries_per_append == 0 {
            return Err(ConfigError::Zero("max_entries_per_append"));
        }
        if self.max_append_bytes == 0 {
            return Err(ConfigError::Zero("max_append_bytes"));
        }
        if self.max_inflight_appends == 0 {
            return Err(ConfigError::Zero("max_inflight_appends"));
        }
        if self.max_inflight_bytes == 0 {
            return Err(ConfigError::Zero("max_inflight_bytes"));
        }
        if let ReadMode::LeaseBased { clock_drift_ticks } = self.read_mode {
            if !self.check_quorum {
                return Err(ConfigError::LeaseWithoutCheckQuorum);
            }
            if clock_drift_ticks < 2 || clock_drift_ticks >= self.election_ticks {
                return Err(ConfigError::LeaseDriftTooLarge {
                    clock_drift_ticks,
                    election_ticks: self.election_ticks,
                });
            }
        }
        if self.snapshot_chunk_bytes == 0 {
            return Err(ConfigError::Zero("snapshot_chunk_bytes"));
        }
        if self.max_snapshot_chunks_in_flight == 0 {
            return Err(ConfigError::Zero("max_snapshot_chunks_in_flight"));
        }
        Ok(())
    }
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `election_ticks` must be at least 2.
    #[error("election_ticks is {0}; it must be at least 2")]
    ElectionTicksTooSmall(u32),
    /// `heartbeat_ticks` must be positive and below `election_ticks`.
    #[error(
        "heartbeat_ticks is {heartbeat_ticks} and election_ticks is {election_ticks}; \
         heartbeats must come more often than elections (0 < heartbeat_ticks < election_ticks)"
    )]
    HeartbeatNotBelowElection {
        /// The configured heartbeat interval.
        heartbeat_ticks: u32,
        /// The configured election timeout.
        election_ticks: u32,
    },
    /// A limit that must be positive is zero.
    #[error("{0} is 0; it must be at least 1")]
    Zero(&'static str),
    /// Lease reads are safe only when voters ignore elections while they hear from a
    /// leader.
    #[error("read_mode LeaseBased needs check_quorum")]
    LeaseWithoutCheckQuorum,
    /// The clock-drift bound leaves no lease, or no room for the ticks' granularity.
    #[error(
        "clock_drift_ticks is {clock_drift_ticks} and election_ticks is {election_ticks}; it must be at least 2 (ticks are whole: a lease and a voter's timer each start within a tick) and leave a lease (election_ticks - clock_drift_ticks > 0)"
    )]
    LeaseDriftTooLarge {
        /// The configured bound.
        clock_drift_ticks: u32,
        /// The election timeout.
        election_ticks: u32,
    },
}

/// How a leader confirms it still leads before it serves a linearizable read
/// (dissertation §6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// One round of heartbeats to a quorum per batch of reads (§6.4): safe whatever
    /// the clocks do. The default.
    ReadIndex,
    /// The leader serves reads without a round while its lease holds (§6.4.1): for
    /// `election_ticks - clock_drift_ticks` of its ticks after sending the newest
    /// heartbeat round a quorum acknowledged. That quorum's voters ignore other
    /// candidates for `election_ticks` of *their* ticks after receiving it
    /// (CheckQuorum), so no other leader exists before then, provided no voter's
    /// clock runs faster than the leader's by more than the bound: with tick rates
    /// that differ by a factor of at most `r`, choose
    /// `clock_drift_ticks >= election_ticks * (1 - 1/r) + 2` (the 2 ticks: both the
    /// lease and a voter's timer start somewhere within a tick). A leadership transfer, or a
    /// stall the driver could not catch up on ([`Raft::time_skipped`](crate::Raft::time_skipped)),
    /// ends the lease. Needs `check_quorum`.
    LeaseBased {
        /// The margin, in ticks, taken off the election timeout for clock drift.
        clock_drift_ticks: u32,
    },
}

//! Safety checkers, one file per property. The simulator calls them after every event
//! (and at the actions they watch); each keeps just enough state to check its property
//! incrementally, so checking costs O(1) amortized per event.

mod acked_writes;
mod committed;
mod election_safety;
mod leader_append_only;
mod leader_completeness;
mod log_matching;
mod membership;
mod monotonic;
mod snapshot_state;
mod state_machine_safety;

pub use acked_writes::AckedWrites;
pub use committed::CommittedLog;
pub use election_safety::ElectionSafety;
pub use leader_append_only::LeaderAppendOnly;
pub use leader_completeness::LeaderCompleteness;
pub use log_matching::LogMatching;
pub use membership::MembershipSafety;
pub use monotonic::Monotonic;
pub use snapshot_state::SnapshotStates;
pub use state_machine_safety::StateMachineSafety;

use core::fmt;

/// A broken safety property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The property's name, as in the paper.
    pub property: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated: {}", self.property, self.detail)
    }
}

/// The result of one check.
pub type Check = Result<(), Violation>;

pub(crate) fn violation(property: &'static str, detail: String) -> Check {
    Err(Violation { property, detail })
}

/// Every checker the simulator runs.
#[derive(Debug, Default)]
pub struct Checkers {
    /// At most one leader per term.
    pub election_safety: ElectionSafety,
    /// A leader never overwrites or deletes its own entries.
    pub leader_append_only: LeaderAppendOnly,
    /// Same index and term implies the same prefix.
    pub log_matching: LogMatching,
    /// The committed log (shared by the checkers below).
    pub committed: CommittedLog,
    /// Leaders hold every committed entry.
    pub leader_completeness: LeaderCompleteness,
    /// Every server applies the same entry at each index.
    pub state_machine_safety: StateMachineSafety,
    /// Commit and applied indexes never move back within one incarnation.
    pub monotonic: Monotonic,
    /// Acknowledged writes stay committed and durable.
    pub acked_writes: AckedWrites,
    /// Snapshots hold the state of the log prefix they replace.
    pub snapshot_states: SnapshotStates,
    /// One configuration change at a time.
    pub membership: MembershipSafety,
}

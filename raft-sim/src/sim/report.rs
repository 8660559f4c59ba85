//! What a run reports.

use crate::linearizability::Operation;
use crate::profile::Profile;

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Client operations invoked.
    pub ops: u64,
    /// ... that returned a result.
    pub ops_ok: u64,
    /// ... that definitely failed.
    pub ops_failed: u64,
    /// ... whose outcome is unknown.
    pub ops_unknown: u64,
    /// Fault events injected.
    pub faults: u64,
    /// Fault events per kind (crashes that tore a write are counted apart).
    pub faults_by_kind: std::collections::BTreeMap<&'static str, u64>,
    /// Terms that had a leader.
    pub terms_with_leader: u64,
    /// Writes acknowledged to clients.
    pub acked_writes: u64,
    /// Virtual time simulated, in microseconds.
    pub virtual_us: u64,
    /// Virtual time from healing until a leader every node follows.
    pub leader_after_heal_us: Option<u64>,
    /// Virtual time from healing until a stable leader, caught-up nodes and every
    /// client operation finished.
    pub converged_after_heal_us: u64,
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// The profile drawn for it.
    pub profile: Profile,
    /// What happened.
    pub stats: Stats,
    /// Why it failed, if it did.
    pub failure: Option<String>,
    /// The event trace (with `verbose`).
    pub trace: Vec<String>,
    /// The client history, as checked for linearizability (with `verbose`).
    pub history: Vec<Operation>,
}

//! What a run is asked to do.

use crate::profile::LeaseMode;

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
}

/// Search steps per key the linearizability check may take by default.
pub const DEFAULT_LIN_BUDGET: u64 = 20_000_000;

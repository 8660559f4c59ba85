//! Deterministic simulation of a `raft-core` cluster.
//!
//! A whole cluster runs on one thread on virtual time, driven by one `u64` seed: the
//! seed picks the cluster size and a fault profile (swarm testing), and every delay,
//! loss, partition, crash and client operation after that. After every event the
//! checkers in [`checkers`] verify the paper's safety properties; after the faults stop
//! the cluster must elect a stable leader and finish every client operation; at the
//! end the client history must be linearizable ([`linearizability`]).
//! [`run_seeds`] runs many seeds on several threads; each seed's run is the same on any
//! number of them, and each seed has a budget of events and wall-clock time.
//!
//! ```
//! let report = raft_sim::run_seed(&raft_sim::SimOptions { seed: 7, ..Default::default() });
//! assert!(report.failure.is_none(), "{:?}", report.failure);
//! ```

pub mod checkers;
pub mod client;
pub mod kv;
pub mod linearizability;
pub mod net;
pub mod node;
pub mod profile;
pub mod rng;
pub mod runner;
mod sim;

pub use profile::LeaseMode;
pub use runner::{default_jobs, run_seeds};
pub use sim::{
    DEFAULT_LIN_BUDGET, DEFAULT_MAX_EVENTS, DEFAULT_MAX_WALL, Nemeses, SeedReport, SimOptions,
    Stats, run_seed,
};

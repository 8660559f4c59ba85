//! What a run reports, and the digest that pins it down.

use super::World;
use crate::linearizability::Operation;
use crate::profile::Profile;
use std::hash::{Hash, Hasher};
use std::time::Duration;

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
    /// A hash of what the run did: its statistics, every node's log, applied index and
    /// state machine, the client history and the failure. Equal seeds and options give
    /// equal digests, whatever else runs at the same time.
    pub digest: u64,
    /// Wall-clock time the seed took (the only part of a report that depends on the
    /// machine).
    pub wall: Duration,
}

/// FNV-1a, 64-bit: a digest that does not depend on the process or the Rust release.
struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.write(&word.to_le_bytes());
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The digest of a run that failed before it started.
pub(super) fn digest_of_failure(failure: &str) -> u64 {
    let mut h = Fnv(0xCBF2_9CE4_8422_2325);
    Some(failure).hash(&mut h);
    h.finish()
}

impl World {
    /// The run's digest (see [`SeedReport::digest`]).
    pub(super) fn digest(&self, failure: Option<&str>) -> u64 {
        let mut h = Fnv(0xCBF2_9CE4_8422_2325);
        let s = &self.stats;
        for word in [
            self.now,
            s.events,
            s.ops,
            s.ops_ok,
            s.ops_failed,
            s.ops_unknown,
            s.faults,
        ] {
            h.write_u64(word);
        }
        for node in &self.nodes {
            node.disk.purged.hash(&mut h);
            for e in &node.disk.entries {
                e.log_id.hash(&mut h);
            }
            node.applied.0.hash(&mut h);
            h.write(&node.kv.encode());
        }
        for op in &self.history {
            h.write(format!("{op:?}").as_bytes());
        }
        failure.hash(&mut h);
        h.finish()
    }
}

//! Snapshots hold the state the log prefix produces: every state machine that applied
//! exactly up to index `i` (by applying entries, or by building or installing a
//! snapshot at `i`) has the same state. Checked by hashing the state machine's bytes
//! whenever a snapshot is built or installed.

use super::{Check, violation};
use raft_proto::LogIndex;
use std::collections::HashMap;

/// State hashes by applied index.
#[derive(Debug, Default)]
pub struct SnapshotStates {
    hashes: HashMap<LogIndex, u64>,
    installed: u64,
}

impl SnapshotStates {
    /// `node` built a snapshot of its state at `index`.
    pub fn built(&mut self, node: usize, index: LogIndex, state: &[u8]) -> Check {
        self.compare("built", node, index, state)
    }

    /// `node` installed a snapshot of the state at `index`.
    pub fn installed(&mut self, node: usize, index: LogIndex, state: &[u8]) -> Check {
        self.installed += 1;
        self.compare("installed", node, index, state)
    }

    /// Snapshots installed from a leader so far.
    pub fn installs(&self) -> u64 {
        self.installed
    }

    fn compare(&mut self, what: &str, node: usize, index: LogIndex, state: &[u8]) -> Check {
        let hash = fnv(state);
        let known = *self.hashes.entry(index).or_insert(hash);
        if known != hash {
            return violation(
                "Snapshot state",
                format!(
                    "node {node} {what} a snapshot at {index:?} whose state differs from another node's at that index"
                ),
            );
        }
        Ok(())
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

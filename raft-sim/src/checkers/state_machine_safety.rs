//! State Machine Safety (paper Figure 3): if a server has applied a log entry at a given
//! index to its state machine, no other server will ever apply a different log entry
//! for the same index. Checked against the committed log: every applied entry must be
//! the committed one, and each server applies indexes in order without gaps.

use super::{Check, CommittedLog, violation};
use raft_proto::{Entry, LogIndex};

/// Stateless: the committed log is the reference.
#[derive(Debug, Default)]
pub struct StateMachineSafety {
    applied_entries: u64,
}

impl StateMachineSafety {
    /// Checks one entry `node` is applying, after `previous`.
    pub fn apply(
        &mut self,
        node: usize,
        previous: LogIndex,
        entry: &Entry,
        committed: &CommittedLog,
    ) -> Check {
        self.applied_entries += 1;
        if entry.log_id.index != previous.next() {
            return violation(
                "State Machine Safety",
                format!(
                    "node {node} applies {:?} right after index {previous:?}",
                    entry.log_id
                ),
            );
        }
        match committed.get(entry.log_id.index) {
            Some(id) if id == entry.log_id => Ok(()),
            Some(id) => violation(
                "State Machine Safety",
                format!(
                    "node {node} applies {:?} but {id:?} is committed at that index",
                    entry.log_id
                ),
            ),
            None => violation(
                "State Machine Safety",
                format!(
                    "node {node} applies {:?} before any node reports it committed",
                    entry.log_id
                ),
            ),
        }
    }

    /// Entries applied across all nodes.
    pub fn applied_entries(&self) -> u64 {
        self.applied_entries
    }
}

//! Commit and applied indexes never move backwards on a running node (a restart starts
//! a new incarnation, whose volatile indexes begin again at the snapshot).

use super::violation;
use raft_core::Raft;
use raft_proto::LogIndex;

/// The last commit and applied index seen per node.
#[derive(Debug, Default)]
pub struct Monotonic {
    last: Vec<(LogIndex, LogIndex)>,
}

impl Monotonic {
    /// Starts a new incarnation of `node`.
    pub fn restart(&mut self, node: usize, raft: &Raft) {
        if self.last.len() <= node {
            self.last.resize(node + 1, (LogIndex::ZERO, LogIndex::ZERO));
        }
        self.last[node] = (raft.log().committed(), raft.log().applied());
    }

    /// Checks `node` after an event; returns its previous commit index.
    pub fn observe(&mut self, node: usize, raft: &Raft) -> Result<LogIndex, super::Violation> {
        let (commit, applied) = (raft.log().committed(), raft.log().applied());
        let (last_commit, last_applied) = self.last[node];
        if commit < last_commit || applied < last_applied {
            violation(
                "Monotonic indexes",
                format!(
                    "node {node}: commit {last_commit:?} -> {commit:?}, applied {last_applied:?} -> {applied:?}"
                ),
            )?;
        }
        self.last[node] = (commit, applied);
        Ok(last_commit)
    }
}

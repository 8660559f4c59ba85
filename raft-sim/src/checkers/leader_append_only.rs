//! Leader Append-Only (paper Figure 3): a leader never overwrites or deletes entries
//! in its log; it only appends new entries.

use super::{Check, violation};
use raft_core::{Raft, Role};
use raft_proto::{LogId, NodeId, Term};
use std::collections::HashMap;

/// The last entry each node had while leading its current term.
#[derive(Debug, Default)]
pub struct LeaderAppendOnly {
    seen: HashMap<NodeId, (Term, LogId)>,
}

impl LeaderAppendOnly {
    /// Checks `raft` after an event on it.
    pub fn observe(&mut self, raft: &Raft) -> Check {
        if raft.role() != Role::Leader {
            self.seen.remove(&raft.id());
            return Ok(());
        }
        let log = raft.log();
        let last = log.last_log_id();
        if let Some(&(term, before)) = self.seen.get(&raft.id())
            && term == raft.term()
        {
            let still_there =
                before.index < log.first_index() || log.term(before.index) == Some(before.term);
            if last.index < before.index || !still_there {
                return violation(
                    "Leader Append-Only",
                    format!(
                        "leader {} of term {term} had {before:?}, now its log ends at {last:?}",
                        raft.id()
                    ),
                );
            }
        }
        self.seen.insert(raft.id(), (raft.term(), last));
        Ok(())
    }

    /// Forgets a crashed node (a restarted node is not the same leader).
    pub fn forget(&mut self, node: NodeId) {
        self.seen.remove(&node);
    }
}

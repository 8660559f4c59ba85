//! Election Safety (paper Figure 3): at most one leader can be elected in a given term.

use super::{Check, violation};
use raft_core::{Raft, Role};
use raft_proto::{NodeId, Term};
use std::collections::HashMap;

/// Remembers who led each term.
#[derive(Debug, Default)]
pub struct ElectionSafety {
    leaders: HashMap<Term, NodeId>,
}

impl ElectionSafety {
    /// Checks `raft` after an event on it.
    pub fn observe(&mut self, raft: &Raft) -> Check {
        if raft.role() != Role::Leader {
            return Ok(());
        }
        let leader = *self.leaders.entry(raft.term()).or_insert(raft.id());
        if leader != raft.id() {
            return violation(
                "Election Safety",
                format!(
                    "nodes {leader} and {} both led term {}",
                    raft.id(),
                    raft.term()
                ),
            );
        }
        Ok(())
    }

    /// How many terms had a leader.
    pub fn terms_with_leader(&self) -> usize {
        self.leaders.len()
    }
}

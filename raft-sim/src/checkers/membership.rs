//! Membership change rules (dissertation §4.1): a leader appends a new configuration
//! only when the previous one is committed. (Whether a learner's vote counts is the
//! candidate's business: it tallies voters of its own configuration only, which
//! Election Safety and the durable-commit check cover.)

use super::{Check, violation};
use raft_core::{Persist, Raft, Role};
use raft_proto::{EntryPayload, LogIndex, NodeId, Term};
use std::collections::HashMap;

/// The last configuration entry each leader appended in its term.
#[derive(Debug, Default)]
pub struct MembershipSafety {
    last_config: HashMap<NodeId, (Term, LogIndex)>,
    changes: u64,
}

impl MembershipSafety {
    /// A write `raft` asked for; on a leader, configuration entries in it are checked.
    pub fn persist(&mut self, raft: &Raft, p: &Persist) -> Check {
        if raft.role() != Role::Leader {
            return Ok(());
        }
        for e in &p.entries {
            if !matches!(e.payload, EntryPayload::Membership(_)) {
                continue;
            }
            self.changes += 1;
            let key = raft.id();
            if let Some(&(term, previous)) = self.last_config.get(&key)
                && term == raft.term()
                && previous > raft.log().committed()
            {
                return violation(
                    "One membership change at a time",
                    format!(
                        "leader {key} appends configuration {:?} while its previous one at {previous:?} is uncommitted (commit {:?})",
                        e.log_id,
                        raft.log().committed()
                    ),
                );
            }
            self.last_config.insert(key, (raft.term(), e.log_id.index));
        }
        Ok(())
    }

    /// Configuration entries appended by leaders.
    pub fn changes(&self) -> u64 {
        self.changes
    }
}

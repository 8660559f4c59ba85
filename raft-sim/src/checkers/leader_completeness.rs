//! Leader Completeness (paper Figure 3): if a log entry is committed in a given term,
//! then that entry will be present in the logs of the leaders for all higher-numbered
//! terms. Checked as: every leader holds every entry committed so far in a term up to
//! its own, verified with a cursor per leader so each entry is checked once per
//! leadership. (A deposed leader that has not heard of its successor yet may lack what
//! the successor committed: that is allowed.)

use super::{Check, CommittedLog, violation};
use raft_core::{Raft, Role};
use raft_proto::{LogIndex, NodeId, Term};
use std::collections::HashMap;

/// How far each current leader's log has been verified.
#[derive(Debug, Default)]
pub struct LeaderCompleteness {
    verified: HashMap<NodeId, (Term, LogIndex)>,
}

impl LeaderCompleteness {
    /// Checks a node after an event on it.
    pub fn observe(&mut self, raft: &Raft, committed: &CommittedLog) -> Check {
        if raft.role() != Role::Leader {
            self.verified.remove(&raft.id());
            return Ok(());
        }
        let entry = self
            .verified
            .entry(raft.id())
            .or_insert((raft.term(), LogIndex::ZERO));
        if entry.0 != raft.term() {
            *entry = (raft.term(), LogIndex::ZERO);
        }
        let log = raft.log();
        let mut i = entry.1.next().max(log.first_index());
        while i <= committed.last_index() {
            let Some((id, commit_term)) = committed.get_with_term(i) else {
                break;
            };
            if commit_term <= raft.term() && log.term(i) != Some(id.term) {
                return violation(
                    "Leader Completeness",
                    format!(
                        "leader {} of term {} lacks entry {id:?} committed in term {commit_term} (has term {:?})",
                        raft.id(),
                        raft.term(),
                        log.term(i)
                    ),
                );
            }
            i = i.next();
        }
        entry.1 = committed.last_index();
        Ok(())
    }

    /// Forgets a crashed node.
    pub fn forget(&mut self, node: NodeId) {
        self.verified.remove(&node);
    }
}

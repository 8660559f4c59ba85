//! The committed log as the cluster has revealed it: whenever a node's commit index
//! moves, the entries it now calls committed are recorded. Two nodes calling different
//! entries committed at one index is a safety failure, and so is an entry called
//! committed before a majority of voters hold it durably.

use super::{Check, violation};
use crate::node::SimNode;
use raft_core::Raft;
use raft_proto::{LogId, LogIndex, Term};

/// `ids[i - 1]` is the entry committed at index `i`, with the term in which it was
/// committed (the term of the leader whose commit index first covered it; not the
/// entry's own term, which may be older: §5.4.2).
#[derive(Debug, Default)]
pub struct CommittedLog {
    ids: Vec<(LogId, Term)>,
}

impl CommittedLog {
    /// The highest committed index seen anywhere.
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.ids.len() as u64)
    }

    /// The entry committed at `index`, if known.
    pub fn get(&self, index: LogIndex) -> Option<LogId> {
        self.get_with_term(index).map(|(id, _)| id)
    }

    /// The entry committed at `index` and the term it was committed in, if known.
    pub fn get_with_term(&self, index: LogIndex) -> Option<(LogId, Term)> {
        let i = index.0.checked_sub(1)?;
        self.ids.get(usize::try_from(i).ok()?).copied()
    }

    /// Records what `raft` now considers committed, from `from` (exclusive) on.
    pub fn observe(&mut self, raft: &Raft, from: LogIndex, nodes: &[SimNode]) -> Check {
        let log = raft.log();
        let to = log.committed();
        let mut i = from.next().max(log.first_index());
        while i <= to {
            let Some(term) = log.term(i) else { break };
            let id = LogId::new(term, i);
            match self.get(i) {
                Some(known) if known != id => {
                    return violation(
                        "State Machine Safety",
                        format!(
                            "node {} commits {id:?} where {known:?} was committed",
                            raft.id()
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    if i != self.last_index().next() {
                        // A node committed beyond the known prefix without the entries
                        // between being observed: record what it holds.
                        for j in self.last_index().next().0..i.0 {
                            let Some(t) = log.term(LogIndex(j)) else {
                                return violation(
                                    "Committed log",
                                    format!("node {} commits past a gap at {j}", raft.id()),
                                );
                            };
                            self.ids.push((LogId::new(t, LogIndex(j)), raft.term()));
                        }
                    }
                    // Commitment means a quorum of the committing node's configuration
                    // stores the entry durably.
                    let config = raft.membership();
                    let durable = nodes
                        .iter()
                        .filter(|n| config.is_voter(n.id) && n.disk.holds(id))
                        .count();
                    if durable < config.quorum() {
                        return violation(
                            "Durable commit",
                            format!(
                                "node {} commits {id:?} while only {durable} of its {} voters hold it durably",
                                raft.id(),
                                config.voters.len()
                            ),
                        );
                    }
                    self.ids.push((id, raft.term()));
                }
            }
            i = i.next();
        }
        Ok(())
    }
}

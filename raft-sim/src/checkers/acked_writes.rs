//! No acknowledged write is lost: a write the client saw succeed is committed, stays
//! durable on a majority of voters through crashes and truncations, and is in every
//! node's log once the cluster has healed.

use super::{Check, CommittedLog, violation};
use crate::node::SimNode;
use raft_proto::{LogId, Membership};

/// The entries of acknowledged writes.
#[derive(Debug, Default)]
pub struct AckedWrites {
    acked: Vec<LogId>,
}

impl AckedWrites {
    /// A client saw the write in entry `id` succeed.
    pub fn ack(&mut self, id: LogId, committed: &CommittedLog) -> Check {
        if committed.get(id.index) != Some(id) {
            return violation(
                "Acknowledged write committed",
                format!(
                    "a client was told {id:?} succeeded, but the committed entry there is {:?}",
                    committed.get(id.index)
                ),
            );
        }
        self.acked.push(id);
        Ok(())
    }

    /// After anything that can shrink a disk (crash, truncation): every acknowledged
    /// write is still durable on enough voters of `config` that every quorum of it
    /// includes a holder (so any future leader has it).
    pub fn check_durable(&self, nodes: &[SimNode], config: &Membership) -> Check {
        let voters = config.voters.len();
        if voters == 0 {
            return Ok(());
        }
        let needed = voters + 1 - config.quorum();
        for &id in &self.acked {
            let holders = nodes
                .iter()
                .filter(|n| config.is_voter(n.id) && n.disk.holds(id))
                .count();
            if holders < needed {
                return violation(
                    "No acknowledged write lost",
                    format!(
                        "acknowledged write {id:?} is durable on only {holders} of {voters} voters (every quorum needs one)"
                    ),
                );
            }
        }
        Ok(())
    }

    /// After healing: every running member of `config` holds every acknowledged write.
    pub fn check_everywhere(&self, nodes: &[SimNode], config: &Membership) -> Check {
        for n in nodes.iter().filter(|n| config.contains(n.id)) {
            let Some(raft) = &n.raft else { continue };
            for &id in &self.acked {
                let log = raft.log();
                let held = id.index < log.first_index() || log.term(id.index) == Some(id.term);
                if !held {
                    return violation(
                        "No acknowledged write lost",
                        format!(
                            "after healing, node {} lacks acknowledged write {id:?}",
                            n.id
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// How many writes were acknowledged.
    pub fn count(&self) -> usize {
        self.acked.len()
    }
}

//! Membership change, one server at a time (dissertation §4.1), with learners.
//!
//! Why single-server changes and not joint consensus (paper §6): every change we need
//! (add a learner, promote it, remove a node) moves one server, and with one server at
//! a time any majority of the old configuration overlaps any majority of the new one,
//! so no intermediate joint configuration, no second entry and no double quorum
//! counting are needed. Two rules keep it safe: a leader changes the configuration only
//! after committing an entry of its own term (the fix in the dissertation's errata, so
//! that a leader cannot build on an uncommitted configuration of an earlier term), and
//! only one change is uncommitted at a time. A configuration takes effect on each
//! server as soon as it is in its log (§4.1), and is rolled back if the entry is
//! truncated.
//!
//! Learners (§4.2.1) receive the log but never vote and are never counted in a
//! quorum; a learner is promoted only when it has caught up to within
//! `promote_lag_entries` of the leader. A removed leader keeps leading until the change
//! commits, without counting itself, then hands over with TimeoutNow and steps down
//! (§4.2.2).

use crate::progress::Progress;
use crate::raft::{Raft, RoleState};
use raft_proto::{EntryPayload, LogId, Membership, Message, NodeId, NodeRecord, TimeoutNow};

/// One change of the cluster's membership.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConfChange {
    /// Add a node as a learner, with its record (how to reach it): it receives the
    /// log but does not vote. Every node learns the record from the log.
    AddLearner(NodeId, NodeRecord),
    /// Make a caught-up learner a voter.
    Promote(NodeId),
    /// Remove a voter (the leader included) or a learner, and its record.
    Remove(NodeId),
    /// Replace a member's record (it moved to another address). Changes no vote, but
    /// is a configuration change like the others: one at a time.
    SetNode(NodeId, NodeRecord),
}

/// Why [`Raft::change_membership`] refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// Only the leader changes the membership.
    #[error(transparent)]
    NotLeader(#[from] crate::NotLeader),
    /// An earlier change has not committed yet; retry once it has.
    #[error("membership change {pending} is still in progress; one change at a time")]
    InProgress {
        /// The uncommitted configuration entry.
        pending: LogId,
    },
    /// The leader has not committed an entry of its own term yet; retry shortly.
    #[error("the new leader has not committed an entry of its term yet; retry shortly")]
    LeaderNotReady,
    /// A leadership transfer is in progress.
    #[error("leadership transfer to node {0} in progress; retry after it")]
    TransferInProgress(NodeId),
    /// The node is already a member.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// The node is not a member.
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    /// Only learners can be promoted.
    #[error("node {0} is not a learner")]
    NotALearner(NodeId),
    /// The learner is too far behind to vote yet.
    #[error(
        "learner {id} is {lag} entries behind (promotion needs at most {max}); retry once it caught up"
    )]
    LearnerBehind {
        /// The learner.
        id: NodeId,
        /// How many entries it lacks.
        lag: u64,
        /// The allowed lag.
        max: u64,
    },
    /// The change would leave no voter.
    #[error("removing node {0} would leave the cluster without voters")]
    LastVoter(NodeId),
    /// A new leader overwrote the configuration entry before it committed: the change
    /// did not happen.
    #[error("the change was dropped by a leader change and did not happen")]
    Dropped,
    /// A snapshot replaced this node's log before it learned whether the change
    /// committed; check the membership.
    #[error("the change's outcome is unknown here: a snapshot replaced the log")]
    Indeterminate,
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
}

impl Raft {
    /// Appends a configuration entry making `change`, and returns its id. It takes
    /// effect at once (on every node as soon as it is in its log) and is done when an
    /// [`Action::Apply`](crate::Action::Apply) carries that entry.
    pub fn change_membership(&mut self, change: ConfChange) -> Result<LogId, MembershipError> {
        let result = self.try_change_membership(change);
        self.check_invariants();
        result
    }

    fn try_change_membership(&mut self, change: ConfChange) -> Result<LogId, MembershipError> {
        let RoleState::Leader(l) = &self.role else {
            return Err(self.not_leader().into());
        };
        if let Some(t) = l.transfer {
            return Err(MembershipError::TransferInProgress(t.to));
        }
        let committed = self.log.committed();
        if self.log.term(committed) != Some(self.hard_state.term) || self.log.state_lost() {
            return Err(MembershipError::LeaderNotReady);
        }
        let (pending, _) = self.log.latest_membership();
        if pending.index > committed {
            return Err(MembershipError::InProgress { pending });
        }
        let mut next = self.membership.clone();
        match &change {
            ConfChange::AddLearner(id, node) => {
                let id = *id;
                if next.contains(id) {
                    return Err(MembershipError::AlreadyMember(id));
                }
                next.learners.insert(id);
                next.nodes.insert(id, node.clone());
            }
            ConfChange::Promote(id) => {
                let id = *id;
                if !next.learners.contains(&id) {
                    return Err(if next.voters.contains(&id) {
                        MembershipError::AlreadyMember(id)
                    } else {
                        MembershipError::NotALearner(id)
                    });
                }
                let matched = l
                    .progress
                    .get(&id)
                    .map_or(Default::default(), |p| p.match_index);
                let lag = self.log.last_index().distance_from(matched);
                let max = self.config.promote_lag_entries;
                if lag > max {
                    return Err(MembershipError::LearnerBehind { id, lag, max });
                }
                next.learners.remove(&id);
                next.voters.insert(id);
            }
            ConfChange::Remove(id) => {
                let id = *id;
                if !next.contains(id) {
                    return Err(MembershipError::NotAMember(id));
                }
                if next.voters.len() == 1 && next.voters.contains(&id) {
                    return Err(MembershipError::LastVoter(id));
                }
                next.voters.remove(&id);
                next.learners.remove(&id);
                next.nodes.remove(&id);
            }
            ConfChange::SetNode(id, node) => {
                let id = *id;
                if !next.contains(id) {
                    return Err(MembershipError::NotAMember(id));
                }
                next.nodes.insert(id, node.clone());
            }
        }
        tracing::info!(node = %self.id, ?change, "membership change");
        let log_id = self.append_as_leader(EntryPayload::Membership(next.clone()));
        self.set_membership(next);
        Ok(log_id)
    }

    /// Puts a configuration in effect on this node; on a leader, progress follows it.
    pub(crate) fn set_membership(&mut self, membership: Membership) {
        let next = self.log.last_index().next();
        if let RoleState::Leader(l) = &mut self.role {
            l.progress.retain(|id, _| membership.contains(*id));
            for m in membership.members().filter(|&m| m != self.id) {
                l.progress.entry(m).or_insert_with(|| Progress::new(next));
            }
            if l.transfer.is_some_and(|t| !membership.is_voter(t.to)) {
                l.transfer = None;
            }
        }
        self.membership = membership;
    }

    /// After the leader's commit index moved: a leader that the committed
    /// configuration removed hands leadership to its most up-to-date voter and steps
    /// down (dissertation §4.2.2).
    pub(crate) fn maybe_step_down_removed(&mut self) {
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        if self.membership.is_voter(self.id)
            || self.log.latest_membership().0.index > self.log.committed()
        {
            return;
        }
        let successor = self
            .membership
            .voters
            .iter()
            .filter_map(|v| l.progress.get(v).map(|p| (p.match_index, *v)))
            .max()
            .filter(|(matched, _)| *matched == self.log.last_index())
            .map(|(_, v)| v);
        let term = self.hard_state.term;
        tracing::info!(node = %self.id, ?successor, "removed from the configuration; stepping down");
        if let Some(to) = successor {
            self.send(to, Message::TimeoutNow(TimeoutNow { term }));
        }
        self.become_follower(term, None);
    }
}

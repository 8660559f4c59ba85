//! Leadership transfer (dissertation §3.10): the leader brings the target's log up to
//! date, then tells it to campaign at once with TimeoutNow. Proposals pause meanwhile;
//! the transfer is abandoned after an election timeout.

use crate::error::TransferError;
use crate::raft::{Raft, RoleState, Transfer};
use raft_proto::{Message, NodeId, TimeoutNow};

impl Raft {
    /// Hands leadership to `to`. Returns once the transfer has started; it completes
    /// when `to` wins an election, and is abandoned after an election timeout.
    /// Transferring to this node itself is a no-op.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        if !matches!(self.role, RoleState::Leader(_)) {
            return Err(self.not_leader().into());
        }
        if to == self.id {
            return Ok(());
        }
        if !self.membership.is_voter(to) {
            return Err(TransferError::NotAVoter(to));
        }
        if let RoleState::Leader(l) = &mut self.role {
            tracing::info!(node = %self.id, %to, "leadership transfer started");
            l.transfer = Some(Transfer { to, elapsed: 0 });
        }
        self.maybe_send_timeout_now(to);
        self.check_invariants();
        Ok(())
    }

    /// Sends TimeoutNow to the transfer target once its log matches the leader's.
    pub(crate) fn maybe_send_timeout_now(&mut self, peer: NodeId) {
        let last = self.log.last_index();
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        let caught_up = l.transfer.is_some_and(|t| t.to == peer)
            && l.progress
                .get(&peer)
                .is_some_and(|pr| pr.match_index == last);
        if caught_up {
            let term = self.hard_state.term;
            if let RoleState::Leader(l) = &mut self.role {
                // The target's election bypasses the voters' lease: no lease reads
                // for the rest of this term.
                l.lease_void = true;
            }
            self.send(peer, Message::TimeoutNow(TimeoutNow { term }));
        }
    }
}

impl Raft {
    /// A leader whose state machine lost its state cannot apply, answer clients or send
    /// snapshots: it hands leadership to the most up-to-date voter that still has its
    /// state (the transfer waits for that voter to catch up), and tries again after
    /// each abandoned attempt. That voter then sends it a snapshot.
    pub(crate) fn hand_over_if_state_lost(&mut self) {
        if !self.log.state_lost() {
            return;
        }
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        if l.transfer.is_some() {
            return;
        }
        let target = self
            .membership
            .voters
            .iter()
            .filter(|&&v| v != self.id)
            .filter_map(|&v| {
                let pr = l.progress.get(&v)?;
                (!pr.state_lost).then_some((pr.match_index, v))
            })
            .max();
        let Some((_, to)) = target else {
            tracing::debug!(node = %self.id, "this leader lost its state and no other voter can take over yet");
            return;
        };
        tracing::info!(node = %self.id, %to, "this leader's state machine lost its state: handing leadership over");
        if let RoleState::Leader(l) = &mut self.role {
            l.transfer = Some(Transfer { to, elapsed: 0 });
        }
        self.maybe_send_timeout_now(to);
    }
}

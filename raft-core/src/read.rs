//! Linearizable reads with ReadIndex (dissertation §6.4).
//!
//! The leader records its commit index as the read index, confirms with one round of
//! heartbeats that it still leads, and releases the read once the state machine has
//! applied up to the read index. Rounds: every append carries the leader's current
//! `round`; a read registered while no new round is open opens round `r + 1`, which the
//! next flush sends to every follower. A read of round `r` is confirmed when a quorum
//! of voters has acknowledged an append of round `r` or later: such appends left the
//! leader after the read arrived, so the quorum still recognised it as leader then.

use crate::action::Action;
use crate::config::ReadMode;
use crate::error::{NotLeader, ReadError};
use crate::raft::{LeaderState, Raft, RoleState};
use raft_proto::{
    LogIndex, Message, NodeId, ReadId, ReadIndexRequest, ReadIndexResponse, ReadIndexResult,
};
use std::collections::VecDeque;

/// Who asked for a read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReadOrigin {
    /// This node's driver.
    Local(ReadId),
    /// A follower that forwarded its client's read.
    Remote { from: NodeId, id: ReadId },
}

#[derive(Debug)]
pub(crate) struct PendingRead {
    round: u64,
    index: LogIndex,
    origin: ReadOrigin,
}

/// The leader's reads in flight.
#[derive(Debug, Default)]
pub(crate) struct ReadState {
    /// Reads that arrived before the leader committed an entry of its term: until
    /// then it does not know the commit index (§6.4 step 1).
    awaiting_commit: Vec<ReadOrigin>,
    /// Reads waiting for a quorum to acknowledge their round, in round order.
    awaiting_quorum: VecDeque<PendingRead>,
    /// A round was opened for reads and has not been sent yet.
    pub(crate) round_open: bool,
}

impl Raft {
    pub(crate) fn start_read(&mut self, id: ReadId) -> Result<(), ReadError> {
        if matches!(self.role, RoleState::Leader(_)) {
            self.leader_read(ReadOrigin::Local(id));
            return Ok(());
        }
        match self.leader {
            Some(leader) => {
                self.send(leader, Message::ReadIndexRequest(ReadIndexRequest { id }));
                Ok(())
            }
            None => Err(self.not_leader().into()),
        }
    }

    pub(crate) fn handle_read_request(&mut self, from: NodeId, m: ReadIndexRequest) {
        if matches!(self.role, RoleState::Leader(_)) {
            self.leader_read(ReadOrigin::Remote { from, id: m.id });
        } else {
            let leader_hint = self.not_leader().leader_hint;
            self.send(
                from,
                Message::ReadIndexResponse(ReadIndexResponse {
                    id: m.id,
                    result: ReadIndexResult::NotLeader { leader_hint },
                }),
            );
        }
    }

    pub(crate) fn handle_read_response(&mut self, m: ReadIndexResponse) {
        match m.result {
            ReadIndexResult::Ready { index } => {
                self.ready_reads.push((index, m.id));
                self.release_ready_reads();
            }
            ReadIndexResult::NotLeader { leader_hint } => self.push_action(Action::ReadFailed {
                id: m.id,
                error: ReadError::NotLeader(NotLeader { leader_hint }),
            }),
        }
    }

    fn leader_read(&mut self, origin: ReadOrigin) {
        let committed = self.log.committed();
        let in_term = self.log.term(committed) == Some(self.hard_state.term);
        let solo = self.membership.voters.len() == 1 && self.is_voter();
        let lease = in_term && self.lease_valid();
        let election_ticks = self.config.election_ticks;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if !in_term {
            l.reads.awaiting_commit.push(origin);
            return;
        }
        if solo || lease {
            self.read_confirmed(origin, committed);
            return;
        }
        if !l.reads.round_open {
            l.open_round(election_ticks);
            l.reads.round_open = true;
            l.heartbeat_due = true;
        }
        l.reads.awaiting_quorum.push_back(PendingRead {
            round: l.round,
            index: committed,
            origin,
        });
    }

    /// Called when the leader's commit index moves: followers hear of it at the next
    /// flush (an empty append for those with nothing new), and reads held until the
    /// leader's first commit in its term can now be registered.
    pub(crate) fn on_leader_commit(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        l.heartbeat_due = true;
        if !l.reads.awaiting_commit.is_empty() {
            let waiting = std::mem::take(&mut l.reads.awaiting_commit);
            for origin in waiting {
                self.leader_read(origin);
            }
        }
        self.maybe_step_down_removed();
    }

    /// The highest round a quorum of voters has acknowledged (the leader counts as
    /// acknowledging every round).
    fn quorum_round(&self, l: &LeaderState) -> Option<u64> {
        let mut rounds: Vec<u64> = self
            .membership
            .voters
            .iter()
            .map(|&v| {
                if v == self.id {
                    u64::MAX
                } else {
                    l.progress.get(&v).map_or(0, |p| p.acked_round)
                }
            })
            .collect();
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        rounds
            .get(self.membership.quorum().checked_sub(1)?)
            .copied()
    }

    /// Whether the read lease holds now (see [`ReadMode::LeaseBased`]): the newest
    /// round a quorum acknowledged was opened less than `election_ticks -
    /// clock_drift_ticks` of this leader's ticks ago, and nothing voided it.
    pub(crate) fn lease_valid(&self) -> bool {
        let ReadMode::LeaseBased { clock_drift_ticks } = self.config.read_mode else {
            return false;
        };
        let RoleState::Leader(l) = &self.role else {
            return false;
        };
        if l.lease_void || l.transfer.is_some() {
            return false;
        }
        let Some(quorum_round) = self.quorum_round(l) else {
            return false;
        };
        // The newest recorded round at or below it: messages of that round (and so
        // the acknowledged ones, of a later round or the same) left at or after it.
        let opened = l
            .round_opened
            .iter()
            .rev()
            .find(|&&(r, _)| r <= quorum_round && r >= l.lease_from_round)
            .map(|&(_, t)| t);
        let lease = u64::from(self.config.election_ticks.saturating_sub(clock_drift_ticks));
        opened.is_some_and(|t| l.ticks < t + lease)
    }

    /// Releases every read whose round a quorum of voters has acknowledged.
    pub(crate) fn confirm_reads(&mut self) {
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        if l.reads.awaiting_quorum.is_empty() {
            return;
        }
        let Some(quorum_round) = self.quorum_round(l) else {
            return;
        };
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let mut confirmed = Vec::new();
        while l
            .reads
            .awaiting_quorum
            .front()
            .is_some_and(|r| r.round <= quorum_round)
        {
            confirmed.extend(l.reads.awaiting_quorum.pop_front());
        }
        for r in confirmed {
            self.read_confirmed(r.origin, r.index);
        }
    }

    fn read_confirmed(&mut self, origin: ReadOrigin, index: LogIndex) {
        match origin {
            ReadOrigin::Local(id) => {
                self.ready_reads.push((index, id));
                self.release_ready_reads();
            }
            ReadOrigin::Remote { from, id } => self.send(
                from,
                Message::ReadIndexResponse(ReadIndexResponse {
                    id,
                    result: ReadIndexResult::Ready { index },
                }),
            ),
        }
    }

    /// Emits `ReadReady` for confirmed reads whose index the state machine reached.
    pub(crate) fn release_ready_reads(&mut self) {
        // A lost state serves nothing: reads wait for the snapshot that restores it.
        if self.ready_reads.is_empty() || self.log.state_lost() {
            return;
        }
        let applied = self.log.applied();
        let mut reads = std::mem::take(&mut self.ready_reads);
        reads.retain(|&(index, id)| {
            let ready = index <= applied;
            if ready {
                self.push_action(Action::ReadReady { id, index });
            }
            !ready
        });
        self.ready_reads = reads;
    }

    /// Fails every read a former leader had not confirmed.
    pub(crate) fn fail_leader_reads(&mut self, reads: &mut ReadState, hint: NotLeader) {
        let pending = reads
            .awaiting_commit
            .drain(..)
            .chain(reads.awaiting_quorum.drain(..).map(|r| r.origin));
        for origin in pending.collect::<Vec<_>>() {
            match origin {
                ReadOrigin::Local(id) => self.push_action(Action::ReadFailed {
                    id,
                    error: hint.into(),
                }),
                ReadOrigin::Remote { from, id } => self.send(
                    from,
                    Message::ReadIndexResponse(ReadIndexResponse {
                        id,
                        result: ReadIndexResult::NotLeader {
                            leader_hint: hint.leader_hint,
                        },
                    }),
                ),
            }
        }
    }
}

impl LeaderState {
    /// Opens a new heartbeat round at the current tick, and forgets rounds too old to
    /// grant a lease.
    pub(crate) fn open_round(&mut self, election_ticks: u32) {
        self.round += 1;
        self.round_opened.push_back((self.round, self.ticks));
        while self
            .round_opened
            .front()
            .is_some_and(|&(_, t)| t + u64::from(election_ticks) < self.ticks)
        {
            self.round_opened.pop_front();
        }
    }
}

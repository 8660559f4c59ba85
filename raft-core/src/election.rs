//! Leader election (paper §5.2, §5.4.1), PreVote (dissertation §9.6) and the leader's
//! periodic duties: heartbeats and CheckQuorum (dissertation §6.2).

use crate::raft::{Raft, RoleState, Votes};
use raft_proto::{Message, NodeId, VoteRequest, VoteResponse};

/// The outcome of counting votes.
enum Tally {
    Won,
    Lost,
    Pending,
}

impl Raft {
    /// A follower's or candidate's clock: campaign when the election timeout expires.
    pub(crate) fn tick_election(&mut self) {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.randomized_timeout() && self.is_voter() {
            self.campaign(false);
        }
    }

    /// A leader's clock: heartbeats every `heartbeat_ticks`, CheckQuorum every
    /// `election_ticks`, and the leadership-transfer deadline.
    pub(crate) fn tick_leader(&mut self) {
        let (heartbeat_ticks, election_ticks) =
            (self.config.heartbeat_ticks, self.config.election_ticks);
        self.election_elapsed += 1;
        let check_now = self.election_elapsed >= election_ticks;
        if check_now {
            self.election_elapsed = 0;
        }
        let lease = matches!(self.config.read_mode, crate::ReadMode::LeaseBased { .. });
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        l.ticks += 1;
        l.heartbeat_elapsed += 1;
        if l.heartbeat_elapsed >= heartbeat_ticks {
            l.heartbeat_elapsed = 0;
            l.heartbeat_due = true;
            if lease {
                // Every heartbeat opens a round: its acknowledgements renew the lease.
                l.open_round(election_ticks);
            }
            for pr in l.progress.values_mut() {
                pr.on_heartbeat();
            }
            self.snapshot_heartbeat();
        }
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if let Some(t) = &mut l.transfer {
            t.elapsed += 1;
            if t.elapsed >= election_ticks {
                tracing::info!(node = %self.id, to = %t.to, "leadership transfer timed out; aborted");
                l.transfer = None;
            }
        }
        if check_now && self.config.check_quorum {
            let active = self.count_voters(|raft, id| {
                id == raft.id || raft.progress(id).is_some_and(|pr| pr.recent_active)
            });
            if let RoleState::Leader(l) = &mut self.role {
                for pr in l.progress.values_mut() {
                    pr.recent_active = false;
                }
            }
            if active < self.membership.quorum() {
                tracing::info!(node = %self.id, term = %self.hard_state.term, "no quorum heard within an election timeout; stepping down");
                let term = self.hard_state.term;
                self.become_follower(term, None);
            }
        }
    }

    /// Counts the voters for which `pred` holds.
    pub(crate) fn count_voters(&self, pred: impl Fn(&Raft, NodeId) -> bool) -> usize {
        self.membership
            .voters
            .iter()
            .filter(|&&v| pred(self, v))
            .count()
    }

    /// Starts an election: a PreVote round first when configured, unless a leadership
    /// transfer asked for an immediate election.
    pub(crate) fn campaign(&mut self, transfer: bool) {
        let pre_vote = self.config.pre_vote && !transfer;
        self.start_election(pre_vote, transfer);
    }

    fn start_election(&mut self, pre_vote: bool, transfer: bool) {
        if pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate();
        }
        // Paper §5.2: "it votes for itself and issues RequestVote RPCs in parallel".
        let me = self.id;
        self.record_vote(me, true);
        if let Tally::Won = self.tally() {
            self.on_election_won();
            return;
        }
        let request = VoteRequest {
            term: if pre_vote {
                self.hard_state.term.next()
            } else {
                self.hard_state.term
            },
            last_log_id: self.log.last_log_id(),
            pre_vote,
            transfer,
        };
        let voters: Vec<NodeId> = self
            .membership
            .voters
            .iter()
            .copied()
            .filter(|&v| v != me)
            .collect();
        for v in voters {
            self.send(v, Message::VoteRequest(request.clone()));
        }
    }

    fn record_vote(&mut self, from: NodeId, granted: bool) {
        if let RoleState::PreCandidate(votes) | RoleState::Candidate(votes) = &mut self.role {
            votes.granted.remove(&from);
            votes.rejected.remove(&from);
            if granted {
                votes.granted.insert(from);
            } else {
                votes.rejected.insert(from);
            }
        }
    }

    fn tally(&self) -> Tally {
        let (RoleState::PreCandidate(Votes { granted, rejected })
        | RoleState::Candidate(Votes { granted, rejected })) = &self.role
        else {
            return Tally::Pending;
        };
        let quorum = self.membership.quorum();
        let count = |set: &std::collections::BTreeSet<NodeId>| {
            set.iter().filter(|&&v| self.membership.is_voter(v)).count()
        };
        if count(granted) >= quorum {
            Tally::Won
        } else if count(rejected) >= quorum {
            Tally::Lost
        } else {
            Tally::Pending
        }
    }

    fn on_election_won(&mut self) {
        match self.role {
            RoleState::PreCandidate(_) => self.start_election(false, false),
            RoleState::Candidate(_) => self.become_leader(),
            _ => {}
        }
    }

    /// RequestVote receiver (paper Figure 2, §5.4.1); the term was already reconciled.
    pub(crate) fn handle_vote_request(&mut self, from: NodeId, m: VoteRequest) {
        let hs = self.hard_state;
        // One vote per term, first come first served (§5.2); a pre-vote for a later
        // term promises nothing and so can always be granted.
        let can_vote = hs.voted_for == Some(from)
            || (hs.voted_for.is_none() && self.leader.is_none())
            || (m.pre_vote && m.term > hs.term);
        // Dissertation §4.1: "servers process incoming RPC requests without consulting
        // their current configurations". A server whose newest (perhaps uncommitted)
        // configuration leaves it out must still vote: the candidate's configuration
        // may count it, and only a new leader can truncate the stale entry. A
        // learner's vote is simply not counted: candidates tally voters of their own
        // configuration only.
        let granted = can_vote && self.log.is_up_to_date(m.last_log_id);
        if granted && !m.pre_vote {
            self.hard_state.voted_for = Some(from);
            self.reset_election_timer();
            // Persist before answering: the Send below is queued after this write.
            self.persist_hard_state();
        }
        tracing::debug!(node = %self.id, %from, granted, pre_vote = m.pre_vote, "answered vote request");
        let term = if granted && m.pre_vote {
            m.term
        } else {
            self.hard_state.term
        };
        self.send(
            from,
            Message::VoteResponse(VoteResponse {
                term,
                granted,
                pre_vote: m.pre_vote,
            }),
        );
    }

    /// Counts a vote for this node's election.
    pub(crate) fn handle_vote_response(&mut self, from: NodeId, m: VoteResponse) {
        let expected_term = match self.role {
            RoleState::PreCandidate(_) if m.pre_vote => {
                if m.granted {
                    self.hard_state.term.next()
                } else {
                    m.term
                }
            }
            RoleState::Candidate(_) if !m.pre_vote => self.hard_state.term,
            _ => return,
        };
        if m.term != expected_term {
            return;
        }
        self.record_vote(from, m.granted);
        match self.tally() {
            Tally::Won => self.on_election_won(),
            Tally::Lost => {
                let term = self.hard_state.term;
                self.become_follower(term, None);
            }
            Tally::Pending => {}
        }
    }

    /// TimeoutNow from the leader: campaign at once, bypassing PreVote and the
    /// followers' leader lease (dissertation §3.10).
    pub(crate) fn handle_timeout_now(&mut self, from: NodeId) {
        if self.leader != Some(from) || !self.is_voter() {
            return;
        }
        if matches!(self.role, RoleState::Leader(_)) {
            return;
        }
        tracing::info!(node = %self.id, %from, "TimeoutNow: campaigning for leadership transfer");
        self.campaign(true);
    }
}

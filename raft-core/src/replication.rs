//! Log replication (paper §5.3) and commitment (§5.4.2).

use crate::action::Persist;
use crate::progress::ProgressState;
use crate::raft::{Raft, RoleState};
use raft_proto::{
    AppendEntries, AppendResponse, AppendResult, ConflictHint, EntryPayload, LogId, LogIndex,
    Message, NodeId,
};

impl Raft {
    /// Sends what each follower is due (entries within its window, a heartbeat, or the
    /// start of a snapshot), then queues the leader's own write of the new entries.
    pub(crate) fn flush_leader(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let heartbeat = std::mem::take(&mut l.heartbeat_due);
        // Every follower hears the current round in this flush (see `ReadState`).
        l.reads.round_open = false;
        let (last, purged, cfg) = (self.log.last_index(), self.log.purged().index, &self.config);
        let due = heartbeat
            || l.progress.values().any(|pr| {
                let sendable = pr.next_index <= last
                    && !pr.is_paused(cfg.max_inflight_appends, cfg.max_inflight_bytes);
                // The entries it needs were just compacted away: its snapshot starts
                // now, not at the next heartbeat.
                let compacted_past = pr.next_index <= purged && pr.state != ProgressState::Snapshot;
                sendable || compacted_past
            });
        if due {
            let peers: Vec<NodeId> = l.progress.keys().copied().collect();
            for peer in peers {
                self.send_append(peer, heartbeat);
            }
        }
        // After the sends: the driver may write while the appends are on the wire.
        self.queue_unqueued_entries();
    }

    /// Sends `peer` the next batch of entries if its window allows, else (when
    /// `heartbeat`) an empty append that carries the commit index and the round.
    fn send_append(&mut self, peer: NodeId, heartbeat: bool) {
        if self.needs_snapshot(peer) {
            // The entries it needs were compacted away: stream the snapshot, and keep
            // heartbeating so the follower knows its leader meanwhile.
            if heartbeat {
                self.send_heartbeat_at(peer, self.log.purged());
            }
            self.pump_snapshot(peer);
            return;
        }
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let Some(pr) = l.progress.get_mut(&peer) else {
            return;
        };
        let paused = pr.is_paused(
            self.config.max_inflight_appends,
            self.config.max_inflight_bytes,
        );
        let has_new = pr.next_index <= self.log.last_index();
        if !heartbeat && (paused || !has_new) {
            return;
        }
        let entries = if has_new && !paused {
            self.log.slice(
                pr.next_index,
                self.config.max_entries_per_append,
                self.config.max_append_bytes,
            )
        } else {
            Vec::new()
        };
        let prev_index = pr.next_index.prev();
        let Some(prev_term) = self.log.term(prev_index) else {
            return;
        };
        let last = entries.last().map_or(prev_index, |e| e.log_id.index);
        let bytes = entries.iter().map(|e| e.payload_len()).sum();
        pr.on_sent(last, bytes, entries.len());
        let message = Message::AppendEntries(AppendEntries {
            term: self.hard_state.term,
            prev_log_id: LogId::new(prev_term, prev_index),
            entries,
            leader_commit: self.log.committed(),
            round: l.round,
        });
        self.send(peer, message);
    }

    /// An empty append checking `prev`: it carries the commit index and the round.
    fn send_heartbeat_at(&mut self, peer: NodeId, prev: LogId) {
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        let message = Message::AppendEntries(AppendEntries {
            term: self.hard_state.term,
            prev_log_id: prev,
            entries: Vec::new(),
            leader_commit: self.log.committed(),
            round: l.round,
        });
        self.send(peer, message);
    }

    /// AppendEntries receiver (paper Figure 2); the term was already reconciled, so
    /// `from` leads this term.
    pub(crate) fn handle_append(&mut self, from: NodeId, m: AppendEntries) {
        if !Self::well_formed(&m) {
            tracing::warn!(node = %self.id, %from, prev = ?m.prev_log_id, "dropping a malformed AppendEntries");
            return;
        }
        if matches!(self.role, RoleState::Leader(_)) {
            // Two leaders in one term would break Election Safety (§5.2): a peer is
            // misbehaving. Keep our log untouched.
            tracing::error!(node = %self.id, %from, term = %self.hard_state.term, "AppendEntries from another leader of my term; ignored");
            return;
        }
        if !matches!(self.role, RoleState::Follower) || self.leader != Some(from) {
            // A candidate that hears from the term's leader steps down (§5.2).
            let term = self.hard_state.term;
            self.become_follower(term, Some(from));
        }
        self.election_elapsed = 0;
        let result = self.append_from_leader(&m);
        self.send(
            from,
            Message::AppendResponse(AppendResponse {
                term: self.hard_state.term,
                round: m.round,
                result,
            }),
        );
    }

    /// Rejects appends no honest leader sends: entries that are not contiguous after
    /// `prev_log_id`, or whose terms go down or exceed the leader's term.
    fn well_formed(m: &AppendEntries) -> bool {
        let mut prev = m.prev_log_id;
        for e in &m.entries {
            if e.log_id.index != prev.index.next()
                || e.log_id.term < prev.term
                || e.log_id.term > m.term
            {
                return false;
            }
            prev = e.log_id;
        }
        prev.index.0 < u64::MAX
    }

    fn append_from_leader(&mut self, m: &AppendEntries) -> AppendResult {
        let snapshot = self.log.snapshot().last_log_id;
        // Entries at or below the snapshot are committed, hence identical to the
        // leader's: skip them and check consistency at the snapshot instead.
        let (prev, skip) = if m.prev_log_id.index < snapshot.index {
            let skip = snapshot.index.distance_from(m.prev_log_id.index);
            if skip as usize > m.entries.len() {
                let match_index = m.prev_log_id.index.plus(m.entries.len() as u64);
                return AppendResult::Success { match_index };
            }
            (snapshot, skip as usize)
        } else {
            (m.prev_log_id, 0)
        };
        if !self.log.matches(prev) {
            return AppendResult::Conflict {
                rejected: prev.index,
                hint: self.conflict_hint(prev.index),
            };
        }
        let entries = &m.entries[skip..];
        // Truncate only at a real conflict: a duplicate or reordered append must never
        // remove entries that follow it (§5.3).
        let new_from = entries
            .iter()
            .position(|e| !self.log.matches(e.log_id))
            .unwrap_or(entries.len());
        let mut persist = Persist::default();
        if let Some(first_new) = entries.get(new_from) {
            let index = first_new.log_id.index;
            if index <= self.log.last_index() {
                tracing::debug!(node = %self.id, %index, "truncating a conflicting suffix");
                self.log.truncate_from(index);
                persist.truncate_from = Some(index);
            }
            let mut membership_changed = persist.truncate_from.is_some();
            for e in &entries[new_from..] {
                membership_changed |= matches!(e.payload, EntryPayload::Membership(_));
                self.log.append(e.clone());
            }
            persist.entries = entries[new_from..].to_vec();
            self.log.mark_queued();
            if membership_changed {
                self.membership = self.log.latest_membership().1.clone();
            }
            // Persist before acknowledging: the response is queued after this write.
            self.push_persist(persist);
        }
        let match_index = prev.index.plus(entries.len() as u64);
        self.log.commit_to(m.leader_commit.min(match_index));
        AppendResult::Success { match_index }
    }

    /// The fast back-off hint for a failed consistency check at `rejected` (§5.3,
    /// "the follower can include the term of the conflicting entry and the first index
    /// it stores for that term").
    fn conflict_hint(&self, rejected: LogIndex) -> ConflictHint {
        match self.log.term(rejected) {
            Some(term) => ConflictHint::Term {
                term,
                first_index: self.log.first_index_of_term_at(rejected),
            },
            None => ConflictHint::LastIndex(self.log.last_index()),
        }
    }

    /// The leader's side of an append answer: advance or back off the follower's
    /// progress, count the round for reads, and commit what a quorum holds.
    pub(crate) fn handle_append_response(&mut self, from: NodeId, m: AppendResponse) {
        let last = self.log.last_index();
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let Some(pr) = l.progress.get_mut(&from) else {
            return;
        };
        pr.acked_round = pr.acked_round.max(m.round.min(l.round));
        match m.result {
            AppendResult::Success { match_index } => {
                if match_index > last {
                    tracing::warn!(node = %self.id, %from, %match_index, "follower claims entries I never sent; ignored");
                    return;
                }
                if pr.on_success(match_index) {
                    self.maybe_commit();
                }
                self.maybe_send_timeout_now(from);
            }
            AppendResult::Conflict { rejected, hint } => {
                let next = match hint {
                    ConflictHint::LastIndex(index) => index.next(),
                    ConflictHint::Term { term, first_index } => self
                        .log
                        .last_index_of_term(term, rejected)
                        .map_or(first_index, LogIndex::next),
                };
                let RoleState::Leader(l) = &mut self.role else {
                    return;
                };
                let Some(pr) = l.progress.get_mut(&from) else {
                    return;
                };
                if pr.on_reject(rejected, next) {
                    tracing::debug!(node = %self.id, %from, %rejected, next = %pr.next_index, "follower rejected append; probing");
                }
            }
        }
        self.confirm_reads();
    }

    /// Paper §5.4.2: commit the highest index a quorum of voters holds, but only when
    /// that entry is from the current term; earlier entries then commit with it. The
    /// leader counts itself only for what its own storage has made durable.
    pub(crate) fn maybe_commit(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let mut matched = std::mem::take(&mut l.scratch);
        matched.clear();
        for &v in &self.membership.voters {
            if v == self.id {
                matched.push(self.log.persisted());
            } else if let Some(pr) = l.progress.get(&v) {
                matched.push(pr.match_index);
            } else {
                matched.push(LogIndex::ZERO);
            }
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = matched
            .get(self.membership.quorum() - 1)
            .copied()
            .unwrap_or_default();
        l.scratch = matched;
        let committed = self.log.committed();
        if quorum_index > committed && self.log.term(quorum_index) == Some(self.hard_state.term) {
            let newly: u64 = self
                .log
                .entries()
                .rev()
                .take_while(|e| e.log_id.index > committed)
                .filter(|e| e.log_id.index <= quorum_index)
                .map(|e| e.payload_len() as u64)
                .sum();
            if let RoleState::Leader(l) = &mut self.role {
                l.uncommitted_bytes = l.uncommitted_bytes.saturating_sub(newly);
            }
            self.log.commit_to(quorum_index);
            self.on_leader_commit();
        }
    }
}

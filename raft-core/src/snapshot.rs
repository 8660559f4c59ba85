//! Snapshots and log compaction (paper §7): building a snapshot and compacting the
//! log behind it, streaming a snapshot to a follower in chunks, and installing one.
//!
//! Transfer protocol: the leader asks its driver for chunks
//! ([`Action::ReadSnapshotChunk`]) and sends each as an `InstallSnapshot` message; at
//! most `max_snapshot_chunks_in_flight` chunks are outstanding. The follower stores
//! only the chunk at the offset it expects and always answers with how far it got, so
//! a lost chunk costs a resend from the follower's offset, not from zero. The leader
//! rewinds to that offset after two answers that did not advance it (a later chunk
//! arrived instead of the expected one) or after an election timeout without progress
//! (the answer itself was lost); it never rewinds while the transfer is advancing.
//! A follower that already holds a partial copy of the same snapshot (same `id`) tells
//! a new leader its offset, so a transfer survives a leader change.

use crate::action::Action;
use crate::progress::ProgressState;
use crate::raft::{Raft, RoleState};
use raft_proto::{
    Bytes, InstallSnapshot, InstallSnapshotResponse, LogId, LogIndex, Message, NodeId,
    SnapshotMeta, SnapshotOutcome, SnapshotRequest,
};

/// A snapshot this node is receiving.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub(crate) meta: SnapshotMeta,
    /// Bytes `[0, next_offset)` are stored.
    pub(crate) next_offset: u64,
}

impl Raft {
    // ------------------------------------------------------------ building

    /// Asks the state machine for a snapshot of everything applied, unless one is
    /// being built or nothing was applied since the last. Returns whether it asked.
    pub fn trigger_snapshot(&mut self) -> bool {
        let asked = self.request_snapshot();
        self.check_invariants();
        asked
    }

    /// Asks for a snapshot once enough entries were applied since the last one.
    pub(crate) fn maybe_request_snapshot(&mut self) {
        let (every, bytes) = (self.config.snapshot_entries, self.config.snapshot_bytes);
        let since = self
            .log
            .applied()
            .distance_from(self.log.snapshot().last_log_id.index);
        if (every > 0 && since >= every) || (bytes > 0 && self.bytes_since_snapshot >= bytes) {
            self.request_snapshot();
        }
    }

    pub(crate) fn request_snapshot(&mut self) -> bool {
        // The snapshot covers everything handed out for applying: in action order, the
        // state machine has applied all of it when it reaches this request.
        let upto = self.log.apply_queued();
        let current = self.log.snapshot().last_log_id.index;
        // A snapshot whose data is gone is replaced even at the same index.
        let newer = upto > current || (upto == current && !self.log.snapshot_servable());
        if self.snapshot_building.is_some() || self.log.state_lost() || !newer {
            return false;
        }
        let Some(term) = self.log.term(upto) else {
            return false;
        };
        let membership = self.log.membership_at(upto).1.clone();
        let meta = SnapshotMeta {
            last_log_id: LogId::new(term, upto),
            membership,
            id: 0,
        };
        self.snapshot_building = Some(upto);
        self.bytes_since_snapshot = 0;
        tracing::debug!(node = %self.id, up_to = ?meta.last_log_id, "asking the state machine for a snapshot");
        self.push_action(Action::BuildSnapshot { meta });
        true
    }

    /// The state machine built the snapshot asked for with [`Action::BuildSnapshot`]
    /// and made it durable (`Some`), or failed to (`None`; it will be asked again).
    /// The log is then compacted behind it, keeping `snapshot_keep_entries` entries.
    /// A snapshot older than the current one (the build finished after a newer one
    /// was installed; see [`Action::BuildSnapshot`]) is ignored.
    pub fn snapshot_built(&mut self, meta: Option<SnapshotMeta>) {
        self.snapshot_building = None;
        if let Some(meta) = meta {
            let index = meta.last_log_id.index;
            if self.log.set_snapshot(meta) {
                let keep = self.config.snapshot_keep_entries;
                let to = LogIndex(index.0.saturating_sub(keep));
                let before = self.log.purged();
                let purged = self.log.compact(to);
                if purged != before {
                    let base = self.log.snapshot().clone();
                    self.push_action(Action::PurgeLog {
                        up_to: purged,
                        base,
                    });
                }
            }
        }
        self.check_invariants();
    }

    // ------------------------------------------------------------ leader side

    /// Moves `peer` to the snapshot state when the entries it needs are gone.
    /// Returns whether the peer is (now) receiving a snapshot.
    pub(crate) fn needs_snapshot(&mut self, peer: NodeId) -> bool {
        let purged = self.log.purged().index;
        let RoleState::Leader(l) = &mut self.role else {
            return false;
        };
        let Some(pr) = l.progress.get_mut(&peer) else {
            return false;
        };
        if pr.state == ProgressState::Snapshot {
            return true;
        }
        if pr.next_index > purged {
            return false;
        }
        if !self.log.snapshot_servable() {
            // Its data is gone: build a new one first; the follower waits meanwhile.
            self.request_snapshot();
            return true;
        }
        let meta = self.log.snapshot().clone();
        tracing::debug!(node = %self.id, %peer, snapshot = ?meta.last_log_id, "follower needs a snapshot");
        pr.become_snapshot(meta, false);
        true
    }

    /// A follower lost its state machine's state and needs a snapshot reaching at
    /// least `min_index`: send our snapshot if it does, else build one that does.
    pub(crate) fn handle_snapshot_request(&mut self, from: NodeId, m: SnapshotRequest) {
        let snapshot = self.log.snapshot().clone();
        let usable = self.log.snapshot_servable() && snapshot.last_log_id.index >= m.min_index;
        let lost_here = self.log.state_lost();
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let Some(pr) = l.progress.get_mut(&from) else {
            return;
        };
        pr.state_lost = true;
        if lost_here {
            tracing::debug!(node = %self.id, %from, "a follower asks for a snapshot, but this node lost its own state");
            return;
        }
        if pr.state == ProgressState::Snapshot {
            return;
        }
        if usable {
            tracing::info!(node = %self.id, %from, snapshot = ?snapshot.last_log_id, "follower lost its state; sending it a snapshot");
            pr.become_snapshot(snapshot, true);
            self.pump_snapshot(from);
        } else if self.log.apply_queued() >= m.min_index {
            // It asks again later and then finds this one.
            self.request_snapshot();
        }
    }

    /// Requests chunk reads for `peer` up to the in-flight limit.
    pub(crate) fn pump_snapshot(&mut self, peer: NodeId) {
        let (chunk, limit) = (
            self.config.snapshot_chunk_bytes,
            self.config.max_snapshot_chunks_in_flight,
        );
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let Some(t) = l
            .progress
            .get_mut(&peer)
            .and_then(|pr| pr.snapshot.as_mut())
        else {
            return;
        };
        let mut reads = Vec::new();
        while t.in_flight(chunk) < limit && !t.all_requested() {
            reads.push(Action::ReadSnapshotChunk {
                to: peer,
                meta: t.meta.clone(),
                offset: t.next,
                len: chunk,
            });
            t.next += chunk as u64;
        }
        for r in reads {
            self.push_action(r);
        }
    }

    /// The driver read a chunk asked for with [`Action::ReadSnapshotChunk`]: `data`
    /// holds the bytes at `offset` and `last` says whether they end the snapshot, or
    /// `data` is `None` when that snapshot is gone (a newer one replaced it; the
    /// transfer restarts with the newest).
    pub fn snapshot_chunk_read(
        &mut self,
        to: NodeId,
        snapshot_id: u64,
        offset: u64,
        data: Option<Bytes>,
        last: bool,
    ) {
        self.on_chunk_read(to, snapshot_id, offset, data, last);
        self.check_invariants();
    }

    fn on_chunk_read(
        &mut self,
        to: NodeId,
        snapshot_id: u64,
        offset: u64,
        data: Option<Bytes>,
        last: bool,
    ) {
        let term = self.hard_state.term;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let Some(pr) = l.progress.get_mut(&to) else {
            return;
        };
        let Some(t) = pr.snapshot.as_mut().filter(|t| t.meta.id == snapshot_id) else {
            return;
        };
        let Some(data) = data else {
            tracing::info!(node = %self.id, %to, "snapshot being sent is gone; restarting with the newest");
            pr.become_probe();
            if snapshot_id == self.log.snapshot().id {
                // Our own newest snapshot's data is gone (damaged or deleted).
                tracing::warn!(node = %self.id, snapshot = ?self.log.snapshot().last_log_id, "the newest snapshot cannot be read; building a new one");
                self.log.snapshot_unservable();
                self.request_snapshot();
            }
            return;
        };
        // Reads requested past the end before the size was known come back empty: the
        // last real chunk carries `done` already (an empty snapshot is one empty chunk
        // at offset 0).
        let past_end = t
            .size
            .is_some_and(|size| offset > size || (offset == size && size > 0));
        if past_end || offset >= t.next {
            return; // past the end, or requested before a rewind
        }
        if last {
            t.size = Some(offset + data.len() as u64);
        }
        let message = Message::InstallSnapshot(InstallSnapshot {
            term,
            meta: t.meta.clone(),
            offset,
            data,
            done: last,
        });
        self.send(to, message);
    }

    /// The follower's answer to a chunk.
    pub(crate) fn handle_snapshot_response(&mut self, from: NodeId, m: InstallSnapshotResponse) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let Some(pr) = l.progress.get_mut(&from) else {
            return;
        };
        let Some(t) = pr
            .snapshot
            .as_mut()
            .filter(|t| t.meta.id == m.snapshot_id && t.meta.last_log_id == m.snapshot)
        else {
            return;
        };
        match m.outcome {
            SnapshotOutcome::Installed { .. } => {
                let index = t.meta.last_log_id.index;
                tracing::debug!(node = %self.id, %from, %index, "follower installed the snapshot");
                pr.on_snapshot_installed(index);
                self.maybe_commit();
                self.maybe_send_timeout_now(from);
            }
            SnapshotOutcome::Received { next_offset } => {
                if next_offset > t.acked {
                    t.acked = next_offset;
                    t.next = t.next.max(next_offset);
                    t.stuck_answers = 0;
                    t.idle_heartbeats = 0;
                } else if next_offset < t.acked {
                    // The follower lost what it had (it restarted): its offset is the
                    // truth, start again from there.
                    tracing::debug!(node = %self.id, %from, next_offset, "follower lost part of the snapshot; resending");
                    t.acked = next_offset;
                    t.rewind();
                } else {
                    t.stuck_answers += 1;
                    // A later chunk arrived while this one is missing: resend from the
                    // follower's offset (twice in a row, so plain reordering is not
                    // mistaken for loss).
                    if t.stuck_answers >= 2 && t.next > t.acked {
                        t.rewind();
                    }
                }
                self.pump_snapshot(from);
            }
        }
    }

    /// On every heartbeat: a transfer with no progress for an election timeout has
    /// lost its chunks or their answers; resend from the follower's offset.
    pub(crate) fn snapshot_heartbeat(&mut self) {
        let patience = self.config.election_ticks / self.config.heartbeat_ticks.max(1);
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let mut stalled = Vec::new();
        for (&peer, pr) in &mut l.progress {
            if let Some(t) = pr.snapshot.as_mut() {
                t.idle_heartbeats += 1;
                if t.idle_heartbeats > patience {
                    t.rewind();
                    stalled.push(peer);
                }
            }
        }
        for peer in stalled {
            self.pump_snapshot(peer);
        }
    }

    // ------------------------------------------------------------ follower side

    /// While the state is lost: ask the leader for a snapshot once per election
    /// timeout (a lost request or answer costs one timeout).
    pub(crate) fn tick_snapshot_request(&mut self) {
        if !self.log.state_lost() {
            return;
        }
        self.snapshot_request_elapsed = self.snapshot_request_elapsed.saturating_add(1);
        let (Some(leader), RoleState::Follower) = (self.leader, &self.role) else {
            return;
        };
        if self.snapshot_request_elapsed < self.config.election_ticks {
            return;
        }
        self.snapshot_request_elapsed = 0;
        let message = Message::SnapshotRequest(SnapshotRequest {
            term: self.hard_state.term,
            min_index: self.log.snapshot().last_log_id.index,
        });
        tracing::debug!(node = %self.id, %leader, "asking the leader for a snapshot to rebuild the lost state");
        self.send(leader, message);
    }

    /// InstallSnapshot receiver; the term was already reconciled, so `from` leads.
    pub(crate) fn handle_install_snapshot(&mut self, from: NodeId, m: InstallSnapshot) {
        if matches!(self.role, RoleState::Leader(_)) {
            tracing::error!(node = %self.id, %from, "InstallSnapshot from another leader of my term; ignored");
            return;
        }
        if !matches!(self.role, RoleState::Follower) || self.leader != Some(from) {
            let term = self.hard_state.term;
            self.become_follower(term, Some(from));
        }
        self.election_elapsed = 0;
        let outcome = self.receive_chunk(&m);
        let reply = InstallSnapshotResponse {
            term: self.hard_state.term,
            snapshot_id: m.meta.id,
            snapshot: m.meta.last_log_id,
            outcome,
        };
        self.send(from, Message::InstallSnapshotResponse(reply));
    }

    fn receive_chunk(&mut self, m: &InstallSnapshot) -> SnapshotOutcome {
        let last = m.meta.last_log_id;
        self.snapshot_request_elapsed = 0;
        // A node whose state is lost needs a snapshot its log continues, even one its
        // commit index covers, but none older than where its log's base claims to be
        // (its applied index, which never goes back): it is declined like a covered
        // one. (One older than its log's start would also cost it entries it
        // acknowledged.)
        let covered = if self.log.state_lost() {
            last.index < self.log.snapshot().last_log_id.index
        } else {
            last.index <= self.log.committed()
        };
        if covered {
            // Everything it covers is already here: acknowledge and ignore it.
            self.incoming = None;
            return SnapshotOutcome::Installed {
                last_index: self.log.last_index(),
            };
        }
        let expected = match &self.incoming {
            Some(inc) if inc.meta.id == m.meta.id && inc.meta.last_log_id == last => {
                inc.next_offset
            }
            _ => 0,
        };
        if m.offset != expected {
            return SnapshotOutcome::Received {
                next_offset: expected,
            };
        }
        if expected == 0 {
            self.incoming = Some(Incoming {
                meta: m.meta.clone(),
                next_offset: 0,
            });
        }
        if !m.data.is_empty() || m.offset == 0 {
            self.push_action(Action::WriteSnapshotChunk {
                meta: m.meta.clone(),
                offset: m.offset,
                data: m.data.clone(),
            });
        }
        let next_offset = m.offset + m.data.len() as u64;
        if let Some(inc) = &mut self.incoming {
            inc.next_offset = next_offset;
        }
        if !m.done {
            return SnapshotOutcome::Received { next_offset };
        }
        self.incoming = None;
        self.install(m.meta.clone());
        SnapshotOutcome::Installed {
            last_index: self.log.last_index(),
        }
    }

    fn install(&mut self, meta: SnapshotMeta) {
        tracing::info!(node = %self.id, snapshot = ?meta.last_log_id, "installing a snapshot");
        let discard_log = self.log.install_snapshot(meta.clone());
        self.membership = self.log.latest_membership().1.clone();
        self.push_action(Action::InstallSnapshot { meta, discard_log });
        self.release_ready_reads();
    }
}

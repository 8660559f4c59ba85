//! What the core asks its driver to do.

use crate::error::ReadError;
use raft_proto::{Bytes, Entry, HardState, LogId, LogIndex, Message, NodeId, ReadId, SnapshotMeta};
use std::collections::VecDeque;

/// One thing the driver must carry out, in the order [`Raft::poll_action`](crate::Raft::poll_action)
/// (crate::Raft::poll_action) returns them.
///
/// # The ordering contract
///
/// **Carrying out actions strictly in order is always correct.** In particular:
///
/// - a [`Action::Persist`] must be durable before any action queued after it is carried
///   out. The core places a vote grant or an append acknowledgement after the
///   `Persist` it depends on, so "persist before you answer" (paper Figure 2) holds;
/// - a leader's appends to its followers are queued *before* the `Persist` of the same
///   entries, so a driver may send them while its own write is in flight (paper
///   §10.2.1); the leader counts itself toward a quorum only after
///   [`Raft::persisted`](crate::Raft::persisted) acknowledges the write;
/// - [`Action::Apply`] carries only committed entries, in log order, each exactly once.
///   The state machine takes its jobs (applies, snapshot captures, received chunks,
///   installs) in the order given, but later actions need not wait for an apply: the
///   core learns of it through [`Raft::applied`](crate::Raft::applied), and answers a
///   read ([`Action::ReadReady`]) only after the state machine applied its index.
/// - [`Action::InstallSnapshot`] replaces the state machine and the stored log prefix;
///   it must be durable before later actions (the answer to the leader follows it).
/// - [`Action::BuildSnapshot`] and [`Action::ReadSnapshotChunk`] may finish in the
///   background; later actions need not wait for them (taking the snapshot must not
///   stop applies: the state machine captures its state as of this point in the
///   action order, e.g. with a copy-on-write read transaction).
///
/// A driver may overlap work as long as it keeps these dependencies: everything up to
/// the first `Persist` can go at once, and the `Send`s after a `Persist` wait for it.
/// It may also keep feeding inputs while a write is in flight (queueing the actions
/// they produce behind it; [`Action::enqueue`] merges the writes among them), and
/// send a leader's appends and heartbeats ([`Message::AppendEntries`]) ahead of the
/// actions that wait, as long as no `Persist` with a `hard_state` is in flight or
/// waiting: they depend on nothing else queued (the leader counts itself only after
/// `persisted`), so a slow disk does not silence the leader.
///
/// The same contract as code: [`Action::schedule`] classes each action (at once, a
/// storage step, a state machine job, background), [`Action::may_go_ahead`] says what
/// may pass a write, and [`ContractCheck`](crate::ContractCheck) checks a driver
/// against both (the shipped driver in debug builds, and the simulator on every node).
///
/// Writes queued between two polls are merged where that is safe: consecutive ones,
/// and ones separated only by the answers that depend on the first (a follower that
/// received several appends writes them with one sync, then answers them all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `message` to `to`. Delivery may fail, duplicate or reorder; Raft copes.
    Send {
        /// The receiver.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Make this batch durable (one write: group commit), then, if it holds entries,
    /// call [`Raft::persisted`](crate::Raft::persisted) with the last entry's id.
    Persist(Persist),
    /// Apply these committed entries to the state machine, in order, then call
    /// [`Raft::applied`](crate::Raft::applied) with the last index (acknowledgements
    /// may be batched).
    Apply(Vec<Entry>),
    /// The linearizable read `id` may now be served from the state machine: it has
    /// applied everything up to the read index `index`.
    ReadReady {
        /// The caller's id for the read.
        id: ReadId,
        /// The read index.
        index: LogIndex,
    },
    /// The read `id` cannot be confirmed (leadership was lost); retry elsewhere.
    ReadFailed {
        /// The caller's id for the read.
        id: ReadId,
        /// Why.
        error: ReadError,
    },
    /// Build a snapshot of the state machine as of `meta.last_log_id` (everything
    /// applied so far, in action order), make it durable, give it a fresh `meta.id`,
    /// then call [`Raft::snapshot_built`](crate::Raft::snapshot_built). May run in the
    /// background while applies go on.
    ///
    /// **A build that finishes after a newer snapshot was installed** (an
    /// [`Action::InstallSnapshot`] carried out while it ran) is the older snapshot:
    /// the store must keep the newest by last log id as its snapshot (it may keep the
    /// older file as a previous one, or delete it), and `snapshot_built` ignores a
    /// snapshot older than the core's (no compaction follows it). Publishing it in
    /// place of the newer one would leave a snapshot behind a log already purged past
    /// it, and the node could not restart.
    BuildSnapshot {
        /// What the snapshot covers; the state machine fills in `id`.
        meta: SnapshotMeta,
    },
    /// Entries up to and including `up_to` are covered by the durable snapshot `base`
    /// and may be removed from storage (remember `up_to` as the last purged id, and
    /// `base`'s last id and configuration as what the log continues).
    PurgeLog {
        /// The last entry to remove.
        up_to: LogId,
        /// The snapshot that covers them.
        base: SnapshotMeta,
    },
    /// Read up to `len` bytes at `offset` of the snapshot `meta.id` (for follower `to`)
    /// and hand them to [`Raft::snapshot_chunk_read`](crate::Raft::snapshot_chunk_read).
    /// May finish in the background.
    ReadSnapshotChunk {
        /// The follower the chunk is for.
        to: NodeId,
        /// The snapshot.
        meta: SnapshotMeta,
        /// Where to read.
        offset: u64,
        /// How much to read at most.
        len: usize,
    },
    /// Store bytes `[offset, offset + data.len())` of an incoming snapshot. Offset 0
    /// starts a new incoming snapshot and drops any other partial one.
    WriteSnapshotChunk {
        /// The snapshot being received.
        meta: SnapshotMeta,
        /// Where the bytes go.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// The incoming snapshot `meta` is complete: install it atomically as the state
    /// machine's state and the stored snapshot, and remove stored entries up to its
    /// last entry (all of them when `discard_log`). Durable before later actions.
    InstallSnapshot {
        /// The snapshot.
        meta: SnapshotMeta,
        /// The log did not hold the snapshot's last entry: drop every stored entry.
        discard_log: bool,
    },
}

impl Action {
    /// Whether this action may be carried out ahead of `waiting`, the actions queued
    /// behind a storage step in flight: only a leader's append or heartbeat, and only
    /// while no new term or vote is being written (`writing_hard_state`: the step in
    /// flight is a `Persist` with a `hard_state`) or waits in `waiting`.
    pub fn may_go_ahead(&self, writing_hard_state: bool, waiting: &VecDeque<Action>) -> bool {
        matches!(
            self,
            Action::Send {
                message: Message::AppendEntries(_),
                ..
            }
        ) && !writing_hard_state
            && !waiting
                .iter()
                .any(|a| matches!(a, Action::Persist(p) if p.hard_state.is_some()))
    }

    /// Appends `action` to `queue`, a queue carried out in order (the core's own, or a
    /// driver's actions waiting behind a write in flight).
    ///
    /// A [`Action::Persist`] merges with the last queued `Persist` when nothing but
    /// answers (append and vote responses) follows that one, so writes with nothing
    /// between them cost one sync, and a follower that received several appends
    /// meanwhile writes them all with one sync: the answers queued in between then wait
    /// for the merged write, which only delays them (an answer sent later than it could
    /// be is still true). A write that truncates merges only with a `Persist` at the
    /// very tail: an answer must never go out after the entries it acknowledges were
    /// replaced.
    pub fn enqueue(queue: &mut VecDeque<Action>, action: Action) {
        let Action::Persist(persist) = action else {
            queue.push_back(action);
            return;
        };
        let mut target = None;
        for (i, queued) in queue.iter().enumerate().rev() {
            match queued {
                Action::Persist(_) => {
                    target = Some(i);
                    break;
                }
                Action::Send {
                    message: Message::AppendResponse(_) | Message::VoteResponse(_),
                    ..
                } if persist.truncate_from.is_none() => {}
                _ => break,
            }
        }
        match target.and_then(|i| queue.get_mut(i)) {
            Some(Action::Persist(last)) => last.merge(persist),
            _ => queue.push_back(Action::Persist(persist)),
        }
    }
}

/// One durable write: the hard state and log changes that must land together.
///
/// Apply in this order: remove the entries from `truncate_from` on (if set), append
/// `entries`, store `hard_state` (if set); make it all durable with one sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persist {
    /// The new term and vote, if they changed.
    pub hard_state: Option<HardState>,
    /// Remove every stored entry with this index or later before appending.
    pub truncate_from: Option<LogIndex>,
    /// Entries to append after the (possibly truncated) end of the stored log.
    pub entries: Vec<Entry>,
}

impl Persist {
    /// Folds a later write into this one so both land in one sync, with the same
    /// effect as applying `self` then `later`.
    pub(crate) fn merge(&mut self, later: Persist) {
        if let Some(hs) = later.hard_state {
            self.hard_state = Some(hs);
        }
        if let Some(t) = later.truncate_from {
            self.entries.retain(|e| e.log_id.index < t);
            self.truncate_from = Some(self.truncate_from.map_or(t, |t0| t0.min(t)));
        }
        self.entries.extend(later.entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_proto::{EntryPayload, LogId, Term};

    fn e(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(Term(term), LogIndex(index)),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn merge_keeps_the_effect_of_two_writes_in_order() {
        let mut a = Persist {
            hard_state: None,
            truncate_from: None,
            entries: vec![e(1, 5), e(1, 6), e(1, 7)],
        };
        a.merge(Persist {
            hard_state: Some(HardState {
                term: Term(2),
                voted_for: None,
            }),
            truncate_from: Some(LogIndex(6)),
            entries: vec![e(2, 6)],
        });
        assert_eq!(a.entries, vec![e(1, 5), e(2, 6)]);
        assert_eq!(a.truncate_from, Some(LogIndex(6)));
        assert_eq!(a.hard_state.map(|h| h.term), Some(Term(2)));
        a.merge(Persist {
            hard_state: None,
            truncate_from: Some(LogIndex(4)),
            entries: vec![e(3, 4)],
        });
        assert_eq!(a.entries, vec![e(3, 4)]);
        assert_eq!(a.truncate_from, Some(LogIndex(4)));
    }
}

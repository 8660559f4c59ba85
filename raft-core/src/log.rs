//! [`RaftLog`]: the in-memory log after the last snapshot, with its commit, persist and
//! apply cursors.
//!
//! The core keeps every entry after the last compaction in memory (like etcd raft's
//! unstable log plus `MemoryStorage`); snapshots and compaction bound it. Storage only
//! ever receives writes, and is read back once, at start-up.

use raft_proto::{Entry, EntryPayload, LogId, LogIndex, Membership, SnapshotMeta, Term};
use std::collections::VecDeque;

/// The replicated log of one node.
///
/// Invariants (checked by `RaftLog::check`):
/// - `entries[i].log_id.index == purged.index + 1 + i` (contiguous);
/// - terms never decrease along the log, and the first entry's term is at least the
///   purged entry's term;
/// - `purged index <= snapshot index <= apply_queued`, and
///   `applied <= apply_queued <= committed <= last`
///   (a configurable tail of entries the snapshot covers may stay, so slightly slow
///   followers catch up from the log);
/// - `persisted <= last index` and `queued <= last index`;
/// - while the state is lost, nothing is handed out for applying:
///   `applied == apply_queued == snapshot index`, and the snapshot is not servable
///   (`id == 0`).
#[derive(Debug)]
pub struct RaftLog {
    /// The newest durable snapshot: it covers every entry up to its last log id.
    snapshot: SnapshotMeta,
    /// The last entry removed from the front of the log; entries start right after it.
    purged: LogId,
    entries: VecDeque<Entry>,
    /// Highest index known committed.
    committed: LogIndex,
    /// Highest index known durable on this node (acknowledged by `persisted`).
    persisted: LogIndex,
    /// Highest index already handed to the driver in a `Persist` action.
    queued: LogIndex,
    /// Highest index already handed to the driver in an `Apply` action.
    apply_queued: LogIndex,
    /// Highest index the state machine acknowledged as applied.
    applied: LogIndex,
    /// The state machine does not hold the state this log continues (see
    /// [`Restore::state_lost`](crate::Restore::state_lost)); cleared by installing a
    /// snapshot.
    state_lost: bool,
}

impl RaftLog {
    /// A log restored from storage: `entries` follow `purged` and are durable.
    pub(crate) fn restore(
        snapshot: SnapshotMeta,
        purged: LogId,
        entries: Vec<Entry>,
        applied: LogIndex,
        state_lost: bool,
    ) -> Self {
        let last = entries.last().map_or(purged.index, |e| e.log_id.index);
        let log = RaftLog {
            snapshot,
            purged,
            entries: entries.into(),
            committed: applied,
            persisted: last,
            queued: last,
            apply_queued: applied,
            applied,
            state_lost,
        };
        log.check();
        log
    }

    /// The snapshot the log starts after.
    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// Whether the state machine lacks the state this log continues: nothing is
    /// applied until a snapshot is installed.
    pub fn state_lost(&self) -> bool {
        self.state_lost
    }

    /// Whether the snapshot's data can be sent to a follower (its `id` is known).
    pub fn snapshot_servable(&self) -> bool {
        self.snapshot.id != 0
    }

    /// The snapshot's data turned out to be gone: it is never sent again, and a new
    /// one may replace it at the same index.
    pub(crate) fn snapshot_unservable(&mut self) {
        self.snapshot.id = 0;
    }

    /// The last entry removed from the front of the log.
    pub fn purged(&self) -> LogId {
        self.purged
    }

    /// The first index held as an entry (one past the purged prefix).
    pub fn first_index(&self) -> LogIndex {
        self.purged.index.next()
    }

    /// The last entry's id (the purged entry's when the log is empty).
    pub fn last_log_id(&self) -> LogId {
        self.entries.back().map_or(self.purged, |e| e.log_id)
    }

    /// The last entry's index.
    pub fn last_index(&self) -> LogIndex {
        self.last_log_id().index
    }

    /// The highest index known committed.
    pub fn committed(&self) -> LogIndex {
        self.committed
    }

    /// The highest index the state machine has acknowledged as applied.
    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// The highest index handed to the state machine in an `Apply` action.
    pub fn apply_queued(&self) -> LogIndex {
        self.apply_queued
    }

    /// The highest index known durable on this node.
    pub fn persisted(&self) -> LogIndex {
        self.persisted
    }

    /// The term of the entry at `index`, if this log knows it (the purged entry
    /// included).
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.purged.index {
            return Some(self.purged.term);
        }
        self.entry(index).map(|e| e.log_id.term)
    }

    /// The entry at `index`, if it is held (not compacted, not beyond the end).
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let offset = self.offset(index)?;
        self.entries.get(offset)
    }

    /// The entries held, in order.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Whether the log holds an entry with exactly this id (or it is the snapshot's).
    pub fn matches(&self, id: LogId) -> bool {
        self.term(id.index) == Some(id.term)
    }

    /// Paper §5.4.1: a candidate's log is at least as up-to-date as ours when its last
    /// term is later, or the terms are equal and its log is at least as long.
    pub fn is_up_to_date(&self, candidate_last: LogId) -> bool {
        candidate_last >= self.last_log_id()
    }

    fn offset(&self, index: LogIndex) -> Option<usize> {
        let first = self.first_index();
        if index < first {
            return None;
        }
        usize::try_from(index.0 - first.0).ok()
    }

    /// Up to `max_entries` entries from `from` on, stopping before `max_bytes` of
    /// payload is exceeded (at least one entry when any exists).
    pub(crate) fn slice(&self, from: LogIndex, max_entries: usize, max_bytes: usize) -> Vec<Entry> {
        let Some(start) = self.offset(from) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in self.entries.range(start.min(self.entries.len())..) {
            bytes += e.payload_len();
            if out.len() == max_entries || (!out.is_empty() && bytes > max_bytes) {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    /// Appends one entry at the end.
    pub(crate) fn append(&mut self, entry: Entry) {
        let last = self.last_log_id();
        assert!(
            entry.log_id.index == last.index.next() && entry.log_id.term >= last.term,
            "append of {:?} does not follow the last entry {last:?}",
            entry.log_id
        );
        self.entries.push_back(entry);
    }

    /// Removes every entry from `index` on. Committed entries are never removed.
    pub(crate) fn truncate_from(&mut self, index: LogIndex) {
        assert!(
            index > self.committed,
            "truncation at {index:?} would remove committed entries (commit {:?})",
            self.committed
        );
        if let Some(offset) = self.offset(index) {
            self.entries.truncate(offset);
        }
        let last = self.last_index();
        self.persisted = self.persisted.min(last);
        self.queued = self.queued.min(last);
    }

    /// The first index of the run of entries with the same term as `index`, searching
    /// back no further than the first held entry. `index` must be held.
    pub(crate) fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term(index) else {
            return index;
        };
        let mut i = index;
        while i > self.first_index() && self.term(i.prev()) == Some(term) {
            i = i.prev();
        }
        i
    }

    /// The last index at or below `at_most` whose entry has `term`, if any.
    pub(crate) fn last_index_of_term(&self, term: Term, at_most: LogIndex) -> Option<LogIndex> {
        // Terms never decrease along the log, so a binary search finds the boundary.
        let end = self
            .offset(at_most.next())
            .map_or(0, |o| o.min(self.entries.len()));
        let pos = self
            .entries
            .partition_point(|e| e.log_id.term <= term)
            .min(end);
        if pos > 0 {
            let e = &self.entries[pos - 1];
            if e.log_id.term == term {
                return Some(e.log_id.index);
            }
        } else if self.purged.term == term && at_most >= self.purged.index {
            return Some(self.purged.index);
        }
        None
    }

    /// Raises the commit index to `index` (never lowers it).
    pub(crate) fn commit_to(&mut self, index: LogIndex) -> bool {
        if index <= self.committed {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit {index:?} beyond last index {:?}",
            self.last_index()
        );
        self.committed = index;
        true
    }

    /// The entries not yet handed to the driver for persisting; marks them handed.
    pub(crate) fn take_unqueued(&mut self) -> Vec<Entry> {
        let from = self.queued.next();
        let Some(start) = self.offset(from) else {
            return Vec::new();
        };
        let out: Vec<Entry> = self
            .entries
            .range(start.min(self.entries.len())..)
            .cloned()
            .collect();
        self.queued = self.last_index();
        out
    }

    /// Whether entries exist that were not yet handed out for persisting.
    pub(crate) fn has_unqueued(&self) -> bool {
        self.queued < self.last_index()
    }

    /// Marks every entry up to the end as handed to the driver (the caller queued
    /// them itself).
    pub(crate) fn mark_queued(&mut self) {
        self.queued = self.last_index();
    }

    /// Committed entries not yet handed to the state machine; marks them handed.
    pub(crate) fn take_committed_unapplied(&mut self, max_entries: usize) -> Vec<Entry> {
        if self.state_lost || self.apply_queued >= self.committed {
            return Vec::new();
        }
        let Some(start) = self.offset(self.apply_queued.next()) else {
            return Vec::new();
        };
        let count = usize::try_from(self.committed.0 - self.apply_queued.0)
            .unwrap_or(usize::MAX)
            .min(max_entries);
        let out: Vec<Entry> = self.entries.range(start..start + count).cloned().collect();
        self.apply_queued = self.apply_queued.plus(out.len() as u64);
        out
    }

    /// Records the storage acknowledgement that entries up to `id` are durable.
    /// Ignored when `id` no longer names an entry of this log (it was truncated).
    pub(crate) fn persisted_to(&mut self, id: LogId) -> bool {
        if id.index <= self.persisted || !self.matches(id) {
            return false;
        }
        self.persisted = id.index;
        true
    }

    /// Records the state machine's acknowledgement that entries up to `index` are
    /// applied.
    pub(crate) fn applied_to(&mut self, index: LogIndex) {
        assert!(
            index <= self.apply_queued,
            "applied({index:?}) acknowledges entries never handed out (handed out up to {:?})",
            self.apply_queued
        );
        self.applied = self.applied.max(index);
    }

    /// The newest membership in the log, or the snapshot's, with the id of the entry
    /// that carries it. Entries the snapshot covers (a kept tail) are older than the
    /// snapshot's own membership and are skipped.
    pub(crate) fn latest_membership(&self) -> (LogId, &Membership) {
        self.membership_at(self.last_index())
    }

    /// The membership in effect at `index` (at or after the snapshot).
    pub(crate) fn membership_at(&self, index: LogIndex) -> (LogId, &Membership) {
        let snap = self.snapshot.last_log_id;
        for e in self.entries.iter().rev() {
            if e.log_id.index <= snap.index {
                break;
            }
            if e.log_id.index > index {
                continue;
            }
            if let EntryPayload::Membership(m) = &e.payload {
                return (e.log_id, m);
            }
        }
        (snap, &self.snapshot.membership)
    }

    /// Records a snapshot the state machine built and made durable. Older snapshots
    /// than the current one are ignored (one at the same index replaces a snapshot
    /// that is not servable). Returns whether it was taken.
    pub(crate) fn set_snapshot(&mut self, meta: SnapshotMeta) -> bool {
        let index = meta.last_log_id.index;
        let current = self.snapshot.last_log_id.index;
        if index < current || (index == current && self.snapshot_servable()) {
            return false;
        }
        assert!(
            index <= self.apply_queued && self.matches(meta.last_log_id),
            "snapshot {:?} is not an entry of this log handed out for applying (up to {:?})",
            meta.last_log_id,
            self.apply_queued
        );
        self.snapshot = meta;
        true
    }

    /// Removes every entry up to `index` (which the snapshot must cover). Returns the
    /// id of the new purged entry.
    pub(crate) fn compact(&mut self, index: LogIndex) -> LogId {
        assert!(
            index <= self.snapshot.last_log_id.index,
            "compaction to {index:?} beyond the snapshot {:?}",
            self.snapshot.last_log_id
        );
        if index <= self.purged.index {
            return self.purged;
        }
        let Some(term) = self.term(index) else {
            return self.purged;
        };
        let count = index.distance_from(self.purged.index) as usize;
        self.entries.drain(..count.min(self.entries.len()));
        self.purged = LogId::new(term, index);
        self.persisted = self.persisted.max(index);
        self.queued = self.queued.max(index);
        self.purged
    }

    /// Replaces the log's prefix up to the snapshot's last entry with the snapshot
    /// (paper §7): when this log holds that entry, the entries after it are kept,
    /// otherwise the whole log is discarded. Everything the snapshot covers counts as
    /// committed, applied and durable. Returns whether the log was discarded.
    pub(crate) fn install_snapshot(&mut self, meta: SnapshotMeta) -> bool {
        let last = meta.last_log_id;
        let keep = self.matches(last) && last.index >= self.purged.index;
        if keep {
            let count = last.index.distance_from(self.purged.index) as usize;
            self.entries.drain(..count.min(self.entries.len()));
        } else {
            self.entries.clear();
        }
        self.purged = last;
        self.snapshot = meta;
        let end = self.last_index();
        self.committed = self.committed.max(last.index).min(end);
        self.apply_queued = self.apply_queued.max(last.index);
        self.applied = self.applied.max(last.index);
        self.state_lost = false;
        self.persisted = self.persisted.clamp(last.index, end);
        self.queued = self.queued.clamp(last.index, end);
        !keep
    }

    /// Checks the invariants listed on the type; panics with context on a violation.
    pub(crate) fn check(&self) {
        let purged = self.purged;
        let snap = self.snapshot.last_log_id.index;
        if let (Some(first), Some(last)) = (self.entries.front(), self.entries.back()) {
            assert_eq!(
                first.log_id.index,
                purged.index.next(),
                "log does not start after its purged prefix"
            );
            assert!(
                first.log_id.term >= purged.term,
                "first entry's term is below the purged entry's"
            );
            assert_eq!(
                last.log_id.index.0 - first.log_id.index.0 + 1,
                self.entries.len() as u64,
                "log is not contiguous"
            );
        }
        let last = self.last_index();
        assert!(
            purged.index <= snap
                && snap <= self.apply_queued
                && self.applied <= self.apply_queued
                && self.apply_queued <= self.committed
                && self.committed <= last,
            "log cursors out of order: purged {:?} snapshot {snap:?} applied {:?} apply_queued {:?} committed {:?} last {:?}",
            purged.index,
            self.applied,
            self.apply_queued,
            self.committed,
            last
        );
        assert!(
            self.persisted <= last && self.queued <= last,
            "persist cursors beyond the log end"
        );
        if self.state_lost {
            assert!(
                self.applied == snap && self.apply_queued == snap && !self.snapshot_servable(),
                "state lost but entries handed out for applying (applied {:?}, apply_queued {:?}, snapshot {snap:?} id {:x})",
                self.applied,
                self.apply_queued,
                self.snapshot.id
            );
        }
    }
}

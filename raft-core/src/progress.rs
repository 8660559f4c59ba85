//! The leader's view of one follower's log (dissertation §3.5 "nextIndex/matchIndex",
//! with etcd raft's probe/replicate flow control).

use raft_proto::{LogIndex, SnapshotMeta};
use std::collections::VecDeque;

/// How the leader is currently sending to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches: it sends one
    /// AppendEntries at a time and waits for the answer (or the next heartbeat).
    Probe,
    /// The follower's log matches up to `match_index`: the leader streams appends
    /// without waiting, up to the in-flight limits.
    Replicate,
    /// The entries the follower needs were compacted away: the leader streams it a
    /// snapshot in chunks (paper §7) and sends only heartbeats meanwhile.
    Snapshot,
}

/// A snapshot transfer to one follower.
///
/// Invariant: `acked <= next`, and when `size` is known, `acked <= size`.
#[derive(Clone, Debug)]
pub struct SnapshotSend {
    /// The snapshot being sent.
    pub meta: SnapshotMeta,
    /// The follower holds bytes `[0, acked)`.
    pub acked: u64,
    /// The next offset to request from storage.
    pub next: u64,
    /// The snapshot's size, once its last chunk has been read.
    pub size: Option<u64>,
    /// Answers in a row that did not move `acked` (a lost chunk shows up this way).
    pub(crate) stuck_answers: u32,
    /// Heartbeats since `acked` last moved (a lost answer shows up this way).
    pub(crate) idle_heartbeats: u32,
    /// The follower asked for it because its state machine lost its state: its log
    /// may match ours, so successful appends do not end the transfer.
    pub(crate) for_lost_state: bool,
}

impl SnapshotSend {
    fn new(meta: SnapshotMeta, for_lost_state: bool) -> SnapshotSend {
        SnapshotSend {
            meta,
            acked: 0,
            next: 0,
            size: None,
            stuck_answers: 0,
            idle_heartbeats: 0,
            for_lost_state,
        }
    }

    /// Chunks requested or sent and not yet acknowledged.
    pub(crate) fn in_flight(&self, chunk: usize) -> usize {
        self.next
            .saturating_sub(self.acked)
            .div_ceil(chunk.max(1) as u64) as usize
    }

    /// Whether every byte has been requested; for an empty snapshot, its one empty
    /// chunk at offset 0 (so a rewind after that chunk was lost asks for it again).
    pub(crate) fn all_requested(&self) -> bool {
        self.size.is_some_and(|size| self.next >= size.max(1))
    }

    /// Sends again from what the follower acknowledged.
    pub(crate) fn rewind(&mut self) {
        self.next = self.acked;
        self.stuck_answers = 0;
        self.idle_heartbeats = 0;
    }
}

/// Replication progress of one follower.
///
/// Invariants: `match_index < next_index`; in `Probe` no append is tracked in flight;
/// every in-flight append ends after `match_index` and before `next_index`.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to match the leader's log.
    pub match_index: LogIndex,
    /// The next index to send.
    pub next_index: LogIndex,
    /// How the leader sends to this follower.
    pub state: ProgressState,
    /// In `Probe`: an append was sent and no answer or heartbeat has come since.
    pub(crate) probe_sent: bool,
    /// In `Replicate`: the last index and payload bytes of each append in flight.
    pub(crate) inflight: VecDeque<(LogIndex, usize)>,
    pub(crate) inflight_bytes: usize,
    /// The follower answered since the last CheckQuorum round.
    pub(crate) recent_active: bool,
    /// The highest heartbeat round the follower has acknowledged in this term.
    pub(crate) acked_round: u64,
    /// In `Snapshot`: the transfer.
    pub snapshot: Option<SnapshotSend>,
    /// The follower said its state machine lost its state (until it installs a
    /// snapshot): it stores entries but cannot serve as leader.
    pub state_lost: bool,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex::ZERO,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            recent_active: false,
            acked_round: 0,
            snapshot: None,
            state_lost: false,
        }
    }

    /// Whether no new append may be sent now.
    pub(crate) fn is_paused(&self, max_inflight: usize, max_inflight_bytes: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => {
                self.inflight.len() >= max_inflight || self.inflight_bytes >= max_inflight_bytes
            }
            ProgressState::Snapshot => true,
        }
    }

    /// Records that an append ending at `last` (holding `bytes` of payload) was sent.
    pub(crate) fn on_sent(&mut self, last: LogIndex, bytes: usize, entries: usize) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
            ProgressState::Replicate => {
                if entries > 0 {
                    debug_assert!(last >= self.next_index);
                    self.next_index = last.next();
                    self.inflight.push_back((last, bytes));
                    self.inflight_bytes += bytes;
                }
            }
        }
    }

    /// Records a successful append up to `index`. Returns whether `match_index` moved.
    pub(crate) fn on_success(&mut self, index: LogIndex) -> bool {
        let moved = index > self.match_index;
        if moved {
            self.match_index = index;
        }
        self.next_index = self.next_index.max(index.next());
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
        let rebuilding = self.snapshot.as_ref().is_some_and(|t| t.for_lost_state);
        if self.state != ProgressState::Replicate && !rebuilding {
            self.become_replicate();
        }
        moved
    }

    /// Handles a failed consistency check for the append whose `prev_log_id.index`
    /// was `rejected`; `next` is where the leader should look next. Returns false when
    /// the rejection is stale (answers an append the leader has moved past).
    pub(crate) fn on_reject(&mut self, rejected: LogIndex, next: LogIndex) -> bool {
        match self.state {
            // Heartbeats to a follower receiving a snapshot are expected to fail.
            ProgressState::Snapshot => false,
            ProgressState::Replicate if rejected <= self.match_index => false,
            ProgressState::Probe if rejected.next() != self.next_index => false,
            _ => {
                let low = self.match_index.next();
                let next = next.clamp(low, rejected.max(low));
                self.become_probe();
                self.next_index = next;
                true
            }
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.snapshot = None;
        self.next_index = self.match_index.next();
    }

    fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.probe_sent = false;
        self.snapshot = None;
        self.next_index = self.match_index.next();
    }

    /// Starts streaming `meta` to the follower (`for_lost_state`: because it asked
    /// for one to rebuild its state, not because it lacks entries).
    pub(crate) fn become_snapshot(&mut self, meta: SnapshotMeta, for_lost_state: bool) {
        self.state = ProgressState::Snapshot;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.snapshot = Some(SnapshotSend::new(meta, for_lost_state));
    }

    /// The follower installed (or already had) a snapshot ending at `index`.
    pub(crate) fn on_snapshot_installed(&mut self, index: LogIndex) {
        self.match_index = self.match_index.max(index);
        self.state_lost = false;
        self.become_replicate();
    }

    /// Allows one more probe (called on every heartbeat).
    pub(crate) fn on_heartbeat(&mut self) {
        self.probe_sent = false;
    }

    pub(crate) fn check(&self) {
        assert!(
            self.match_index < self.next_index,
            "progress match {:?} not below next {:?}",
            self.match_index,
            self.next_index
        );
        if self.state == ProgressState::Probe {
            assert!(
                self.inflight.is_empty(),
                "probe state with appends in flight"
            );
        }
        for &(last, _) in &self.inflight {
            assert!(
                last > self.match_index && last < self.next_index,
                "stale in-flight append"
            );
        }
    }
}

//! What a [`Node`](super::Node) needs from its environment: durable log storage, the
//! user's state machine, a network, and an async runtime. Each trait is object-safe;
//! the node holds them as `Arc<dyn ...>`.

use crate::action::Persist;
use futures::future::BoxFuture;
use raft_proto::{Bytes, Entry, HardState, LogId, Message, NodeId, SnapshotMeta};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A storage operation failed. The node stops: it never continues past a write it
/// cannot confirm.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {source}")]
pub struct StorageError {
    /// What was being done, e.g. "append to the log".
    pub operation: &'static str,
    /// Why it failed.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StorageError {
    /// A storage error for `operation`.
    pub fn new(
        operation: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StorageError {
            operation,
            source: source.into(),
        }
    }
}

/// What a [`LogStore`] holds, read back at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredLog {
    /// The last durable term and vote.
    pub hard_state: HardState,
    /// The last entry purged from the front ([`LogId::ZERO`] if none).
    pub purged: LogId,
    /// Every stored entry after `purged`, in order.
    pub entries: Vec<Entry>,
    /// The snapshot the log continues, as the last purge or reset recorded it (its
    /// last id and configuration): the node knows its configuration from it even when
    /// the state machine's snapshot is lost. `None` before the first purge.
    pub base: Option<SnapshotMeta>,
}

/// Durable storage of the Raft log and the hard state.
///
/// The state machine, not the log store, owns snapshots and their metadata: they must
/// change atomically with the state they describe.
#[async_trait::async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Reads back everything stored. Called once, before the node starts.
    ///
    /// To ensure correctness:
    /// - return exactly what earlier completed writes made durable, in order;
    /// - entries must be contiguous and follow `purged`.
    async fn load(&self) -> Result<StoredLog, StorageError>;

    /// Makes `batch` durable in one write (group commit): remove the entries from
    /// `truncate_from` on, append `entries`, store `hard_state`.
    ///
    /// To ensure correctness:
    /// - return only when the whole batch is durable (fsync, or your documented
    ///   weaker guarantee); the node acknowledges votes and appends right after;
    /// - apply the batch all or nothing: after a crash, either none of it or all of it
    ///   is visible;
    /// - never reorder batches: a later call sees the effects of earlier ones.
    async fn write(&self, batch: &Persist) -> Result<(), StorageError>;

    /// Removes every entry up to and including `up_to`, remembers `up_to` as the last
    /// purged id and `base` as [`StoredLog::base`]. Everything removed is covered by
    /// the durable snapshot `base`.
    ///
    /// To ensure correctness:
    /// - never remove an entry after `up_to`;
    /// - store `up_to` and `base` together with the removal (one transaction);
    /// - need not be synced at once, but must never become visible before the
    ///   writes that preceded it.
    async fn purge(&self, up_to: LogId, base: &SnapshotMeta) -> Result<(), StorageError>;

    /// Removes every entry; the log now starts after `base.last_log_id` (the last
    /// purged id), and `base` becomes [`StoredLog::base`]: a received snapshot replaced
    /// the whole log.
    ///
    /// To ensure correctness: durable before returning (the node answers the leader
    /// right after).
    async fn reset(&self, base: &SnapshotMeta) -> Result<(), StorageError>;
}

/// What a [`StateMachine`] reports at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineState {
    /// The last entry whose effects are durable in the state machine.
    pub applied: LogId,
    /// The newest durable snapshot whose data is intact, if any (at or behind
    /// `applied`: the state builds on it).
    pub snapshot: Option<SnapshotMeta>,
}

/// Writes a snapshot captured by [`StateMachine::begin_snapshot`] to durable storage and
/// returns its metadata (with a fresh `id`).
pub type SnapshotTask = BoxFuture<'static, Result<SnapshotMeta, StorageError>>;

/// The user's replicated state machine.
///
/// Methods take `&self`: applying, building a snapshot in the background and serving
/// snapshot chunks happen concurrently, so implementations synchronise inside.
#[async_trait::async_trait]
pub trait StateMachine: Send + Sync + 'static {
    /// The durable applied entry and snapshot, read once at start-up.
    ///
    /// To ensure correctness:
    /// - report what a crash left, never more;
    /// - never refuse to start because a snapshot file is damaged: report the newest
    ///   intact one, or none; when the state does not reach the log's start, the node
    ///   keeps its log and vote and gets the state from a leader's snapshot (see
    ///   [`Restore::plan`](crate::Restore::plan)).
    async fn state(&self) -> Result<MachineState, StorageError>;

    /// Applies committed entries, in order, and returns one response per entry (empty
    /// for blank and membership entries).
    ///
    /// To ensure correctness:
    /// - apply deterministically: every node applies the same entries in the same
    ///   order and must reach the same state;
    /// - record the applied log id atomically with the effects, so a crash never
    ///   applies an entry twice or loses one reported applied (responses go to
    ///   clients as soon as this returns);
    /// - return exactly `entries.len()` responses.
    async fn apply(&self, entries: &[Entry]) -> Result<Vec<Bytes>, StorageError>;

    /// Captures the state as of everything applied so far (`meta.last_log_id`) and
    /// returns a task that writes it out. Called between applies, in order; the task
    /// runs in the background while applies go on.
    ///
    /// To ensure correctness:
    /// - the capture is a point-in-time view (copy-on-write, a read transaction, a
    ///   clone): later applies must not change what the task writes;
    /// - the task makes the snapshot durable before it completes, and gives it an id
    ///   that no other snapshot's bytes share.
    fn begin_snapshot(&self, meta: SnapshotMeta) -> SnapshotTask;

    /// Reads up to `len` bytes at `offset` of the durable snapshot `id`; returns the
    /// bytes and whether they end the snapshot, or `None` if that snapshot is gone.
    ///
    /// To ensure correctness: serve the same bytes for the same id every time.
    async fn read_snapshot(
        &self,
        id: u64,
        offset: u64,
        len: usize,
    ) -> Result<Option<(Bytes, bool)>, StorageError>;

    /// Stores bytes `[offset, offset + data.len())` of an incoming snapshot. Offset 0
    /// starts a new incoming snapshot and drops any other partial one.
    ///
    /// To ensure correctness: chunks arrive in order; a partial snapshot never
    /// becomes the state.
    async fn receive_snapshot(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError>;

    /// Replaces the state with the received snapshot `meta`, atomically and durably,
    /// and records `meta.last_log_id` as applied.
    ///
    /// To ensure correctness: after a crash at any point, the state is either the old
    /// one or the whole new one; verify the received bytes before switching.
    async fn install_snapshot(&self, meta: &SnapshotMeta) -> Result<(), StorageError>;
}

/// Sends messages to peers. Receiving is a stream handed to
/// [`Node::start`](super::Node::start).
pub trait Transport: Send + Sync + 'static {
    /// Queues `message` for `to` without waiting.
    ///
    /// To ensure correctness: dropping, duplicating or reordering messages is allowed
    /// (Raft retries), blocking the caller is not; bound the memory a slow or dead peer
    /// can take.
    fn send(&self, to: NodeId, message: Message);

    /// Queues an `InstallSnapshot` chunk (or its answer) for `to` on a path of its own,
    /// so snapshot bytes never delay heartbeats. By default the same as `send`.
    fn send_snapshot(&self, to: NodeId, message: Message) {
        self.send(to, message);
    }
}

/// The async runtime the node runs on: spawn, sleep, now. Nothing else.
pub trait Runtime: Send + Sync + 'static {
    /// Runs `future` to completion in the background.
    fn spawn(&self, future: BoxFuture<'static, ()>);

    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;

    /// The current time (monotonic).
    fn now(&self) -> Instant;
}

impl<R: Runtime + ?Sized> Runtime for Arc<R> {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        (**self).spawn(future)
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        (**self).sleep(duration)
    }
    fn now(&self) -> Instant {
        (**self).now()
    }
}

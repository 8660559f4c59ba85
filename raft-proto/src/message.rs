//! The RPCs between Raft nodes: one enum variant per message kind.

use crate::{Bytes, Entry, LogId, LogIndex, NodeId, ReadId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

/// A message from one Raft node to another. The sender's id travels beside the message
/// (in an [`Envelope`](crate::Envelope), or bound to the connection by the transport).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// RequestVote (paper §5.2), or a PreVote probe (dissertation §9.6).
    VoteRequest(VoteRequest),
    /// The answer to a [`Message::VoteRequest`].
    VoteResponse(VoteResponse),
    /// AppendEntries (paper §5.3): replication, and a heartbeat when `entries` is empty.
    AppendEntries(AppendEntries),
    /// The answer to a [`Message::AppendEntries`].
    AppendResponse(AppendResponse),
    /// One chunk of a snapshot (paper §7).
    InstallSnapshot(InstallSnapshot),
    /// The answer to a [`Message::InstallSnapshot`].
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// Leadership transfer: start an election now (dissertation §3.10).
    TimeoutNow(TimeoutNow),
    /// A follower asks the leader for a read index on behalf of a client (§6.4).
    ReadIndexRequest(ReadIndexRequest),
    /// The leader's answer to a [`Message::ReadIndexRequest`].
    ReadIndexResponse(ReadIndexResponse),
    /// A follower whose state machine lost its state asks the leader for a snapshot
    /// (added after the other variants, so their encoding is unchanged).
    SnapshotRequest(SnapshotRequest),
}

impl Message {
    /// The sender's term; every message carries one except a forwarded read request.
    pub fn term(&self) -> Option<Term> {
        match self {
            Message::VoteRequest(m) => Some(m.term),
            Message::VoteResponse(m) => Some(m.term),
            Message::AppendEntries(m) => Some(m.term),
            Message::AppendResponse(m) => Some(m.term),
            Message::InstallSnapshot(m) => Some(m.term),
            Message::InstallSnapshotResponse(m) => Some(m.term),
            Message::TimeoutNow(m) => Some(m.term),
            Message::SnapshotRequest(m) => Some(m.term),
            Message::ReadIndexRequest(_) | Message::ReadIndexResponse(_) => None,
        }
    }

    /// A short name of the message kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::VoteRequest(m) if m.pre_vote => "PreVoteRequest",
            Message::VoteRequest(_) => "VoteRequest",
            Message::VoteResponse(m) if m.pre_vote => "PreVoteResponse",
            Message::VoteResponse(_) => "VoteResponse",
            Message::AppendEntries(_) => "AppendEntries",
            Message::AppendResponse(_) => "AppendResponse",
            Message::InstallSnapshot(_) => "InstallSnapshot",
            Message::InstallSnapshotResponse(_) => "InstallSnapshotResponse",
            Message::TimeoutNow(_) => "TimeoutNow",
            Message::ReadIndexRequest(_) => "ReadIndexRequest",
            Message::ReadIndexResponse(_) => "ReadIndexResponse",
            Message::SnapshotRequest(_) => "SnapshotRequest",
        }
    }
}

/// RequestVote, or a PreVote probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    /// The candidate's term; for a pre-vote, the term it would campaign in.
    pub term: Term,
    /// The candidate's last log entry, for the up-to-date check (paper §5.4.1).
    pub last_log_id: LogId,
    /// A PreVote probe: granting it changes no state on the receiver.
    pub pre_vote: bool,
    /// The election was started by a leadership transfer (TimeoutNow), so receivers
    /// must not ignore it because they heard from a leader recently.
    pub transfer: bool,
}

/// The answer to a [`VoteRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteResponse {
    /// For a granted pre-vote, the term of the request; otherwise the voter's term.
    pub term: Term,
    /// Whether the vote (or pre-vote) is granted.
    pub granted: bool,
    /// Answers a pre-vote.
    pub pre_vote: bool,
}

/// AppendEntries: the leader's replication and heartbeat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntries {
    /// The leader's term.
    pub term: Term,
    /// The entry immediately before `entries`, for the consistency check (paper §5.3).
    pub prev_log_id: LogId,
    /// Entries to append; empty for a heartbeat.
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub leader_commit: LogIndex,
    /// The leader's heartbeat round; echoed in the response so the leader can tell
    /// which of its rounds a quorum has acknowledged (ReadIndex, CheckQuorum).
    pub round: u64,
}

/// The answer to an [`AppendEntries`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    /// The follower's term.
    pub term: Term,
    /// The `round` of the request this answers.
    pub round: u64,
    /// Success, or a rejection with a hint.
    pub result: AppendResult,
}

/// The outcome of an [`AppendEntries`] on the follower.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResult {
    /// The follower's log matches the leader's up to and including `match_index`.
    Success {
        /// The last index known to match: `prev_log_id.index + entries.len()`.
        match_index: LogIndex,
    },
    /// The consistency check failed at `rejected` (the request's `prev_log_id.index`).
    Conflict {
        /// The `prev_log_id.index` of the rejected request, so stale rejections can be
        /// recognised.
        rejected: LogIndex,
        /// Where the leader should look next.
        hint: ConflictHint,
    },
}

/// The follower's hint for a fast back-off after a failed consistency check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConflictHint {
    /// The follower has an entry at `rejected` but from `term`; `first_index` is the
    /// first index the follower holds with that term.
    Term {
        /// The term the follower has at the rejected index.
        term: Term,
        /// The follower's first index with that term.
        first_index: LogIndex,
    },
    /// The follower's log ends before the rejected index.
    LastIndex(LogIndex),
}

/// One chunk of a snapshot (paper §7). Chunks of one snapshot may arrive out of
/// order or twice; the receiver writes only the chunk at the offset it expects and
/// always answers with how far it got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshot {
    /// The leader's term.
    pub term: Term,
    /// What the snapshot covers; `meta.id` identifies its bytes.
    pub meta: SnapshotMeta,
    /// Byte offset of `data` in the snapshot.
    pub offset: u64,
    /// The chunk's bytes.
    pub data: Bytes,
    /// This chunk ends the snapshot.
    pub done: bool,
}

/// The answer to an [`InstallSnapshot`] chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotResponse {
    /// The follower's term.
    pub term: Term,
    /// The `meta.id` of the snapshot this answers.
    pub snapshot_id: u64,
    /// The `meta.last_log_id` of the snapshot this answers.
    pub snapshot: LogId,
    /// How far the follower got.
    pub outcome: SnapshotOutcome,
}

/// How far a follower got with a snapshot transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotOutcome {
    /// Bytes `[0, next_offset)` are stored; send from `next_offset` on.
    Received {
        /// The first byte the follower still needs.
        next_offset: u64,
    },
    /// The snapshot is installed, or the follower already had everything it covers;
    /// the follower's log now ends at `last_index`.
    Installed {
        /// The follower's last log index.
        last_index: LogIndex,
    },
}

/// Leadership transfer: the receiver starts an election at once (dissertation §3.10).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutNow {
    /// The leader's term.
    pub term: Term,
}

/// A follower forwards a linearizable read to the leader (dissertation §6.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexRequest {
    /// The follower's id for the read; echoed in the response.
    pub id: ReadId,
}

/// The leader's answer to a [`ReadIndexRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexResponse {
    /// The id from the request.
    pub id: ReadId,
    /// The read index, or why there is none.
    pub result: ReadIndexResult,
}

/// The outcome of a forwarded read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadIndexResult {
    /// The read may be served once the follower has applied up to `index`.
    Ready {
        /// The read index.
        index: LogIndex,
    },
    /// The receiver is not (or no longer) the leader.
    NotLeader {
        /// Who the receiver believes leads, if anyone.
        leader_hint: Option<NodeId>,
    },
}

/// A follower's state machine lost its state (its snapshot was damaged and could not be
/// rebuilt) while its log and vote are intact: it keeps voting and storing entries, and
/// asks the leader for a snapshot to rebuild the state from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// The follower's term.
    pub term: Term,
    /// The snapshot must reach at least this index: the follower's log starts at or
    /// before it, and its state never goes back past it.
    pub min_index: LogIndex,
}

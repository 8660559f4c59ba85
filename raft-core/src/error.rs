//! One error enum per operation. Not being the leader is an ordinary answer, returned
//! as a value with a hint of who leads.

use raft_proto::{LogIndex, NodeId, Term};

/// This node is not the leader; `leader_hint` is who it believes leads, if anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not the leader (leader hint: {leader_hint:?})")]
pub struct NotLeader {
    /// The leader this node last heard from in its current term, if any.
    pub leader_hint: Option<NodeId>,
}

/// Why [`Raft::propose`](crate::Raft::propose) refused a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// Only the leader accepts proposals; retry at `leader_hint`.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// Leadership is being transferred to `to`; proposals pause until it ends.
    #[error("leadership transfer to node {to} in progress; retry shortly")]
    TransferInProgress {
        /// The transfer's target.
        to: NodeId,
    },
    /// The leader holds [`Config::max_uncommitted_bytes`](crate::Config::max_uncommitted_bytes)
    /// of uncommitted entries: the command was not appended. Retry after a short
    /// backoff.
    #[error("busy: {uncommitted_bytes} bytes of entries are not committed yet; retry shortly")]
    Busy {
        /// Payload bytes not yet committed.
        uncommitted_bytes: u64,
    },
    /// The node's queue of commands waiting for its driver is full
    /// ([`NodeOptions::max_queued_commands`](crate::node::NodeOptions::max_queued_commands)):
    /// the command was not taken. Retry after a short backoff.
    #[error("overloaded: {queued} commands are waiting for the node; retry shortly")]
    Overloaded {
        /// Commands waiting.
        queued: usize,
    },
    /// This node leads but its state machine lost its state (a damaged snapshot): it
    /// cannot apply commands, and hands leadership to another voter as soon as one
    /// has caught up. Retry shortly, at another node.
    #[error(
        "this leader's state machine lost its state and waits for a snapshot; it is handing leadership over: retry shortly"
    )]
    StateLost,
    /// A new leader overwrote the entry before it committed: the command did not take
    /// effect. Retry at the hint.
    #[error("the command was dropped by a leader change and did not take effect ({0})")]
    Dropped(NotLeader),
    /// A snapshot replaced this node's log before it learned the entry's fate: the
    /// command may or may not have taken effect (retry with the same session id).
    #[error("the command's outcome is unknown: a snapshot replaced the log")]
    Indeterminate,
    /// The node stopped (shut down, or a storage failure) before the command was done.
    /// The command may still take effect (its entry may already be on other nodes):
    /// its outcome is unknown.
    #[error("the node has stopped; the command's outcome is unknown")]
    Stopped,
}

/// Why [`Raft::read_index`](crate::Raft::read_index) could not start a read, or why a
/// started read failed ([`Action::ReadFailed`](crate::Action::ReadFailed)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No leader is known, or leadership was lost before the read was confirmed.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// The node stopped before the read was confirmed.
    #[error("the node has stopped")]
    Stopped,
    /// The node's queue of commands is full (see
    /// [`ProposeError::Overloaded`]); retry after a short backoff.
    #[error("overloaded: {queued} commands are waiting for the node; retry shortly")]
    Overloaded {
        /// Commands waiting.
        queued: usize,
    },
}

/// Why [`Raft::transfer_leader`](crate::Raft::transfer_leader) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// Only the leader can transfer leadership.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// The target is not a voter of the current configuration.
    #[error("node {0} is not a voter; only voters can lead")]
    NotAVoter(NodeId),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
}

/// Why [`Raft::new`](crate::Raft::new) refused the restored state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::ConfigError),
    /// Restored entries do not follow each other (or the snapshot) without a gap.
    #[error("restored log is not contiguous: expected index {expected}, found {found}")]
    LogGap {
        /// The index that should have come next.
        expected: LogIndex,
        /// The index found.
        found: LogIndex,
    },
    /// Restored entries' terms decrease somewhere.
    #[error("restored log has decreasing terms at index {index}")]
    TermsDecrease {
        /// Where the term goes down.
        index: LogIndex,
    },
    /// The hard state's term is older than the log's last term.
    #[error("hard state term {hard_state} is older than the last log term {log}")]
    TermBehindLog {
        /// The hard state's term.
        hard_state: Term,
        /// The last entry's term.
        log: Term,
    },
    /// The state machine claims to have applied entries the log does not hold.
    #[error("applied index {applied} is beyond the last log index {last}")]
    AppliedBeyondLog {
        /// The state machine's applied index.
        applied: LogIndex,
        /// The log's last index.
        last: LogIndex,
    },
    /// The state machine is behind the snapshot the log starts after, so the entries
    /// it still needs are gone; install the snapshot into the state machine first.
    #[error("applied index {applied} is behind the snapshot index {snapshot}")]
    AppliedBehindSnapshot {
        /// The state machine's applied index.
        applied: LogIndex,
        /// The last index the snapshot covers.
        snapshot: LogIndex,
    },
    /// The snapshot's last entry is not where the restored log says it is.
    #[error(
        "the snapshot ends at {snapshot:?}, which the restored log (purged up to {purged:?}, last index {last}) does not hold"
    )]
    SnapshotNotInLog {
        /// The snapshot's last entry.
        snapshot: raft_proto::LogId,
        /// The last purged entry.
        purged: raft_proto::LogId,
        /// The last restored index.
        last: LogIndex,
    },
}

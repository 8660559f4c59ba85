//! Simulated clients: each has one operation in flight, retries it (with the same
//! sequence number) against other nodes, and records invoke/return in the history.

use crate::linearizability::{KvOp, KvOutput};
use raft_proto::{LogId, NodeId};
use std::collections::HashMap;

/// A node's answer to one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The operation took effect (writes: in entry `log_id`) with this output.
    Ok {
        /// The result.
        output: KvOutput,
        /// The entry whose application produced it (writes only).
        log_id: Option<LogId>,
    },
    /// The node does not lead; try `hint`.
    NotLeader(Option<NodeId>),
    /// This attempt definitely did not take effect; try again.
    Retry,
}

/// The operation a client is working on.
#[derive(Clone, Copy, Debug)]
pub struct Current {
    /// Index into the history.
    pub op: usize,
    /// The attempt number (each retry is a new attempt of the same operation).
    pub attempt: u32,
    /// Attempts that timed out (for the backoff).
    pub timeouts: u32,
    /// Some attempt may have taken effect (it timed out after reaching a node).
    pub maybe_applied: bool,
    /// The node the current attempt went to.
    pub target: usize,
}

/// One client.
#[derive(Debug, Default)]
pub struct Client {
    /// Sequence number of the current (or last) operation.
    pub seq: u64,
    /// The operation in flight.
    pub current: Option<Current>,
    /// Where the client thinks the leader is.
    pub leader_guess: Option<usize>,
    /// The last value read per key, used as the expected value of a compare-and-set.
    pub last_read: HashMap<u64, Option<Vec<u64>>>,
    /// This client's writes whose outcome is unknown and whose window is still open:
    /// they may yet take effect until a later write of this client is applied.
    pub open_unknown: Vec<usize>,
}

/// Whether an operation changes the store.
pub fn is_write(op: &KvOp) -> bool {
    !matches!(op, KvOp::Get)
}

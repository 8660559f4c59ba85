//! Log entries, cluster membership and persistent state.

use crate::{Bytes, LogId, NodeId, Term};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's term and index.
    pub log_id: LogId,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// The number of payload bytes, used for batching and flow-control limits.
    pub fn payload_len(&self) -> usize {
        match &self.payload {
            EntryPayload::Blank => 0,
            EntryPayload::Command(b) => b.len(),
            // A rough size: membership entries are rare and small.
            EntryPayload::Membership(m) => {
                8 * (m.voters.len() + m.learners.len())
                    + m.nodes.values().map(|n| 8 + n.address.len()).sum::<usize>()
            }
        }
    }
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// The no-op a new leader appends at the start of its term (paper §8), so that it
    /// can commit entries of earlier terms and serve reads.
    Blank,
    /// An opaque command for the user's state machine.
    Command(Bytes),
    /// A new cluster configuration; it takes effect on a node as soon as the node
    /// appends it to its log (paper §6).
    Membership(Membership),
}

/// A cluster configuration: who votes, who only receives the log, and how to reach
/// them.
///
/// Invariants: `voters` and `learners` are disjoint, `voters` is non-empty in any
/// configuration a cluster runs with, and every key of `nodes` is a voter or a
/// learner (a removed member's record goes with it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// Members whose votes and acknowledgements count toward quorums.
    pub voters: BTreeSet<NodeId>,
    /// Non-voting members (learners): they receive the log but never vote and are
    /// never counted in a quorum.
    pub learners: BTreeSet<NodeId>,
    /// What the cluster records about its members (an address), replicated with the
    /// configuration itself, so every node learns it from the log. A member without a
    /// record is reached some other way (a static peer list, or a transport that needs
    /// no address).
    pub nodes: BTreeMap<NodeId, NodeRecord>,
}

/// What a configuration records about one member: how to reach it (openraft's node
/// record, etcd's `ConfChange` context).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Where the other members reach it, in the transport's terms (for raft-server,
    /// `host:port` of its QUIC endpoint). Empty when the transport needs none.
    pub address: String,
}

impl NodeRecord {
    /// A record holding `address`.
    pub fn new(address: impl Into<String>) -> NodeRecord {
        NodeRecord {
            address: address.into(),
        }
    }
}

impl Membership {
    /// A configuration of voters only.
    pub fn voters(ids: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: ids.into_iter().collect(),
            learners: BTreeSet::new(),
            nodes: BTreeMap::new(),
        }
    }

    /// A configuration of voters with their records.
    pub fn voters_with(nodes: impl IntoIterator<Item = (NodeId, NodeRecord)>) -> Membership {
        let nodes: BTreeMap<NodeId, NodeRecord> = nodes.into_iter().collect();
        Membership {
            voters: nodes.keys().copied().collect(),
            learners: BTreeSet::new(),
            nodes,
        }
    }

    /// The record of member `id`, if the configuration has one.
    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    /// Whether `id` is a voter.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// The number of voters that makes a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// The state a node must persist before it answers a vote (paper Figure 2: "updated on
/// stable storage before responding to RPCs").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub voted_for: Option<NodeId>,
}

/// Describes the log prefix a snapshot replaces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last entry the snapshot covers.
    pub last_log_id: LogId,
    /// The membership in effect at `last_log_id`.
    pub membership: Membership,
    /// Identifies the snapshot's bytes: two snapshots with the same id are the same
    /// byte stream, so a transfer may resume where another left off. Chosen by the
    /// state machine that builds it (0 is the empty bootstrap snapshot).
    pub id: u64,
}

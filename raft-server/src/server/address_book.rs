//! The address book: every peer's address, from the configuration's peers at start-up
//! and from the membership's node records (replicated with each configuration entry)
//! as the node learns them.

use super::Shared;
use raft_core::node::NodeState;
use raft_proto::{NodeId, NodeRecord};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long the follower of the node's metrics waits after a change before it looks
/// again: metrics change with every commit under load, memberships rarely.
pub(super) const SETTLE: Duration = Duration::from_millis(50);

impl Shared {
    pub(super) fn addr_of(&self, id: NodeId) -> Option<String> {
        self.addresses
            .read()
            .ok()?
            .get(&id)
            .map(ToString::to_string)
    }

    pub(super) fn learn_address(&self, id: NodeId, addr: SocketAddr) {
        if id == self.id {
            return;
        }
        let changed = match self.addresses.write() {
            Ok(mut a) => a.insert(id, addr) != Some(addr),
            Err(_) => false,
        };
        if changed {
            tracing::info!(node = %self.id, peer = %id, %addr, "learned a peer address");
            self.transport.add_peer(id, addr);
        }
    }

    /// Learns the addresses in `records` (a membership's node records).
    fn learn_records(&self, records: &BTreeMap<NodeId, NodeRecord>) {
        for (&id, record) in records {
            match crate::config::resolve(&record.address) {
                Ok(addr) => self.learn_address(id, addr),
                Err(e) => {
                    tracing::warn!(node = %self.id, peer = %id, address = record.address, error = %e, "a member's recorded address does not resolve")
                }
            }
        }
    }

    /// Follows the node's membership: the records of every configuration the node
    /// takes on (as soon as its entry is in the log, or a snapshot brings it) go into
    /// the address book. Ends when the node stops.
    pub(super) async fn follow_membership(self: Arc<Self>) {
        let mut metrics = self.node.metrics();
        let mut known = BTreeMap::new();
        loop {
            let (running, changed) =
                metrics.with(|m| (m.state == NodeState::Running, m.membership.nodes != known));
            if !running {
                return;
            }
            if changed {
                known = metrics.with(|m| m.membership.nodes.clone());
                self.learn_records(&known);
            }
            if metrics.changed().await.is_none() {
                return;
            }
            tokio::time::sleep(SETTLE).await;
        }
    }
}

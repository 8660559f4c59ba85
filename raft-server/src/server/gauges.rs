//! Gauges kept current in the background: leader changes (counted as the node's
//! metrics change) and open sessions (read from the state machine twice a second).

use super::Shared;
use crate::kv;
use raft_core::node::NodeState;
use std::sync::Arc;
use std::time::Duration;

impl Shared {
    /// Counts every change to a known leader, looking at most every 50 ms (metrics
    /// change with every commit under load). Ends when the node stops.
    pub(super) async fn count_leader_changes(self: Arc<Self>) {
        let mut metrics = self.node.metrics();
        let mut last = None;
        loop {
            let (running, leader) = metrics.with(|m| (m.state == NodeState::Running, m.leader));
            if !running {
                return;
            }
            if leader != last {
                if leader.is_some() {
                    self.metrics.leader_changes.inc();
                }
                last = leader;
            }
            if metrics.changed().await.is_none() {
                return;
            }
            tokio::time::sleep(super::address_book::SETTLE).await;
        }
    }

    /// Every half second: the number of open sessions. Ends when the node stops.
    pub(super) async fn count_sessions(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if self.node.metrics().with(|m| m.state != NodeState::Running) {
                return;
            }
            let sm = self.sm.clone();
            let read = tokio::task::spawn_blocking(move || sm.read(kv::session_count)).await;
            if let Ok(Ok(sessions)) = read {
                self.metrics.sessions.set(sessions);
            }
        }
    }
}

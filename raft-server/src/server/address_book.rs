//! The address book: every peer's address, from the configuration and from what the
//! log recorded; and the half-second housekeeping that keeps it (and a few gauges)
//! current.

use super::Shared;
use crate::kv::{self, Body};
use raft_core::Role;
use raft_core::node::NodeState;
use raft_proto::NodeId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

    /// Every half second: learn addresses recorded in the log; as leader, record the
    /// addresses of members that have none yet; count leader changes and sessions.
    pub(super) async fn housekeeping(self: Arc<Self>) {
        let mut last_leader = None;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let m = self.node.metrics().get();
            if m.state != NodeState::Running {
                return;
            }
            if m.leader != last_leader {
                if m.leader.is_some() {
                    self.metrics.leader_changes.inc();
                }
                last_leader = m.leader;
            }
            let sm = self.sm.clone();
            let read = tokio::task::spawn_blocking(move || {
                sm.read(|v| Ok((kv::addresses(v)?, kv::session_count(v)?)))
            })
            .await;
            let Ok(Ok((recorded, sessions))) = read else {
                continue;
            };
            self.metrics.sessions.set(sessions);
            for (id, addr) in &recorded {
                if let Ok(a) = crate::config::resolve(addr) {
                    self.learn_address(*id, a);
                }
            }
            if m.role == Role::Leader {
                let members = m.membership.voters.iter().chain(&m.membership.learners);
                for &id in members {
                    if recorded.iter().any(|(r, _)| *r == id) {
                        continue;
                    }
                    let known = self.addresses.read().ok().and_then(|a| a.get(&id).copied());
                    if let Some(addr) = known {
                        let _ = self
                            .propose(Body::SetAddress {
                                id,
                                addr: addr.to_string(),
                            })
                            .await;
                    }
                }
            }
        }
    }
}

//! Admin requests: membership changes, leadership transfer, snapshots on demand, and
//! the node's status.

use super::Shared;
use super::exposition::role_name;
use crate::proto::{AdminOp, Response, ServerError, Status};
use raft_core::ConfChange;
use raft_core::node::Metrics;
use raft_proto::{NodeId, NodeRecord};

impl Shared {
    pub(super) async fn admin(&self, op: AdminOp) -> Result<Response, ServerError> {
        let membership_err = |e: raft_core::MembershipError| match e {
            raft_core::MembershipError::NotLeader(n) => self.not_leader(n.leader_hint),
            other => ServerError::Failed(other.to_string()),
        };
        match op {
            AdminOp::Status => Ok(Response::Status(self.status())),
            AdminOp::AddLearner { id, addr } => {
                let resolved = resolve(&addr)?;
                if id.0 == 0 {
                    return Err(ServerError::Invalid("node id 0 is not allowed".into()));
                }
                // The address is part of the configuration entry: every node learns
                // it from its log, with the membership itself.
                self.learn_address(id, resolved);
                self.node
                    .add_learner(id, NodeRecord::new(resolved.to_string()))
                    .await
                    .map_err(membership_err)?;
                Ok(Response::Done)
            }
            AdminOp::MoveNode { id, addr } => {
                let resolved = resolve(&addr)?;
                self.node
                    .change_membership(ConfChange::SetNode(
                        id,
                        NodeRecord::new(resolved.to_string()),
                    ))
                    .await
                    .map_err(membership_err)?;
                Ok(Response::Done)
            }
            AdminOp::Promote { id } => {
                self.node
                    .change_membership(ConfChange::Promote(id))
                    .await
                    .map_err(membership_err)?;
                Ok(Response::Done)
            }
            AdminOp::Remove { id } => {
                self.node
                    .change_membership(ConfChange::Remove(id))
                    .await
                    .map_err(membership_err)?;
                Ok(Response::Done)
            }
            AdminOp::TransferLeader { to } => match self.node.transfer_leader(to).await {
                Ok(()) => Ok(Response::Done),
                Err(raft_core::TransferError::NotLeader(n)) => Err(self.not_leader(n.leader_hint)),
                Err(e) => Err(ServerError::Failed(e.to_string())),
            },
            AdminOp::SaveSnapshot => Err(ServerError::Invalid(
                "a snapshot save needs a stream of its own (send it as the only request of a stream, as `raft-server snapshot save` does)".into(),
            )),
            AdminOp::Snapshot => {
                if self.node.trigger_snapshot().await {
                    Ok(Response::Done)
                } else {
                    Err(ServerError::Failed(
                        "no snapshot started: one is being built, or nothing new to cover".into(),
                    ))
                }
            }
        }
    }

    fn status(&self) -> Status {
        let m: Metrics = self.node.metrics().get();
        let addr = |id: NodeId| self.addr_of(id).unwrap_or_else(|| "?".into());
        Status {
            id: self.id,
            role: role_name(&m),
            term: m.term.0,
            leader: m.leader,
            committed: m.committed.0,
            applied: m.applied.0,
            last_index: m.last_log_id.index.0,
            snapshot: m.snapshot.index.0,
            voters: m
                .membership
                .voters
                .iter()
                .map(|&id| (id, addr(id)))
                .collect(),
            learners: m
                .membership
                .learners
                .iter()
                .map(|&id| (id, addr(id)))
                .collect(),
            replication: m.replication.iter().map(|(&id, &i)| (id, i.0)).collect(),
        }
    }
}

/// An address from an admin request, resolved, or why it is refused.
fn resolve(addr: &str) -> Result<std::net::SocketAddr, ServerError> {
    crate::config::resolve(addr).map_err(|e| ServerError::Invalid(format!("address {addr:?}: {e}")))
}

//! What the node shows the metrics endpoint: the Prometheus page (see
//! [`crate::metrics`] for the rendering) and the health check.

use super::Shared;
use crate::certificates;
use crate::metrics::{Exposition, Health, NodeSample};
use raft_core::Role;
use raft_core::node::{Metrics, NodeState};

pub(super) fn role_name(m: &Metrics) -> String {
    if m.role == Role::Follower && m.membership.learners.contains(&m.id) {
        return "Learner".into();
    }
    if let NodeState::Stopped(reason) = &m.state {
        return match reason {
            Some(reason) => format!("Stopped ({reason})"),
            None => "Stopped (shut down)".to_string(),
        };
    }
    format!("{:?}", m.role)
}

impl Exposition for Shared {
    fn metrics(&self) -> Result<String, std::fmt::Error> {
        let open = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .total;
        self.metrics.client_connections.set(open);
        self.metrics
            .request_bytes_in_flight
            .set(self.limits.budget.used());
        self.metrics.encode(NodeSample {
            node: self.node.metrics().get(),
            peers: self.transport.stats(),
            incoming_dropped: self.transport.dropped_incoming(),
            certificate_expiry: self
                .certs
                .expiry()
                .seconds_left(certificates::unix_now())
                .to_vec(),
        })
    }

    fn health(&self) -> Health {
        let m = self.node.metrics().get();
        Health {
            id: self.id.0,
            running: m.state == NodeState::Running,
            role: role_name(&m),
            term: m.term.0,
            leader: m.leader.map(|l| l.0),
            applied: m.applied.0,
        }
    }
}

//! Healing and liveness: when the faults stop, the cluster must elect a leader every
//! node follows, catch every node up and finish every client operation within a bound.

use crate::checkers::Check;
use crate::node::SimNode;
use raft_core::Raft;
use raft_proto::Membership;
use std::fmt::Write as _;

use super::{Event, Phase, World};

impl World {
    pub(super) fn heal(&mut self) -> Check {
        self.log(|| "heal: faults stop".to_string());
        self.net.heal_all();
        self.targeted_heal();
        self.net.loss = 0.0;
        self.net.duplicate = 0.0;
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            n.tick_us = n.base_tick_us;
            n.paused_until = n.paused_until.min(self.now);
            n.crash_trap = None;
            self.churn_armed = false;
            if n.raft.is_none() {
                self.start_node(i)?;
            }
        }
        let election = self.profile.election_us();
        // Operations still to run (those in flight too), at the pace the configured
        // pipeline allows: `entries x in-flight` per round trip (send, write, answer,
        // plus a heartbeat for reads), with a factor of four of slack.
        let p = &self.profile;
        let remaining = p.ops.saturating_sub(self.stats.ops) + p.clients;
        let round_trip = 2 * p.delay_us.1 + p.disk_us.1 + p.tick_us * u64::from(p.heartbeat_ticks);
        let per_round =
            ((p.max_entries_per_append * p.max_inflight_appends) as u64).clamp(1, p.clients.max(1));
        let deadline = self.now
            + 20 * election
            + 2 * p.client_timeout_us
            + 4 * remaining.div_ceil(per_round) * round_trip;
        self.phase = Phase::Liveness {
            since: self.now,
            deadline,
        };
        for c in 0..self.clients.len() {
            if self.clients[c].current.is_none() {
                self.schedule(0, Event::ClientNext { client: c });
            }
        }
        Ok(())
    }

    /// The liveness goal: one leader that every node follows, every node caught up to
    /// its commit index, and every client operation finished.
    pub(super) fn converged(&self) -> bool {
        if self.stats.ops < self.profile.ops || self.clients.iter().any(|c| c.current.is_some()) {
            return false;
        }
        let Some(leader) = self.stable_leader() else {
            return false;
        };
        let (commit, config) = (leader.log().committed(), leader.membership());
        self.members(config).all(|n| {
            n.raft
                .as_ref()
                .is_some_and(|r| r.log().committed() == commit && r.log().applied() == commit)
        })
    }

    /// The leader, when every member of its configuration runs, shares its term and
    /// follows it. (Removed servers and spares never added hear from no one.)
    pub(super) fn stable_leader(&self) -> Option<&Raft> {
        let l = self.current_leader()?;
        let leader = self.nodes[l].raft.as_ref()?;
        let term = leader.term();
        let all_follow = self.members(leader.membership()).all(|n| {
            n.raft
                .as_ref()
                .is_some_and(|r| r.term() == term && r.status().leader == Some(leader.id()))
        });
        all_follow.then_some(leader)
    }

    pub(super) fn members<'a>(
        &'a self,
        config: &'a Membership,
    ) -> impl Iterator<Item = &'a SimNode> + 'a {
        self.nodes.iter().filter(move |n| config.contains(n.id))
    }

    pub(super) fn liveness_report(&self, since: u64) -> String {
        let mut s = format!("not converged {}us after healing: ", self.now - since);
        let pending = self.clients.iter().filter(|c| c.current.is_some()).count();
        let _ = write!(
            s,
            "{pending} client operations pending, {} of {} invoked; ",
            self.stats.ops, self.profile.ops
        );
        for n in &self.nodes {
            match &n.raft {
                Some(r) => {
                    let st = r.status();
                    let _ = write!(
                        s,
                        "[node {} {:?} term {} leader {:?} last {:?} commit {} applied {} voters {:?}{}] ",
                        st.id,
                        st.role,
                        st.term,
                        st.leader,
                        st.last_log_id,
                        st.committed,
                        st.applied,
                        r.membership().voters,
                        if st.state_lost { " STATE LOST" } else { "" }
                    );
                }
                None => {
                    let _ = write!(s, "[node {} down] ", n.id);
                }
            }
        }
        s
    }
}

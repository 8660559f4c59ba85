//! The nemesis: one fault at a time during the fault phase (partitions, one-way cuts,
//! leader isolation, crashes, pauses, clock skew, membership changes, snapshots and
//! snapshot damage), each undone after its duration.

use crate::checkers::Check;
use crate::node::CrashTrap;
use crate::profile::{CLOCK_FACTORS, FaultKind, LEASE_CLOCK_FACTORS, SLOW_CLOCK_FACTORS};
use raft_core::{ConfChange, Raft};
use raft_proto::{LogIndex, Membership, NodeId, NodeRecord};

use super::{Event, Phase, Undo, World};

impl World {
    pub(super) fn nemesis(&mut self) -> Check {
        if self.phase != Phase::Faults {
            return Ok(());
        }
        self.stats.faults += 1;
        if !self.targeted_fault()? {
            self.random_fault()?;
        }
        let (mean, jitter) = (
            self.profile.fault_interval_us,
            self.rng.range(0, self.profile.fault_interval_us),
        );
        if self.stats.faults < self.profile.fault_events {
            self.schedule(mean / 2 + jitter, Event::Nemesis);
        } else {
            // Let the last fault run its course, then heal.
            let hi = self.profile.fault_duration_us.1;
            self.schedule(hi, Event::Heal);
        }
        Ok(())
    }

    /// One fault of the kinds the seed's profile enabled.
    fn random_fault(&mut self) -> Check {
        let kind = self.rng.pick(&self.profile.faults.clone());
        *self.stats.faults_by_kind.entry(kind.name()).or_default() += 1;
        let n = self.nodes.len();
        let (lo, hi) = self.profile.fault_duration_us;
        let duration = self.rng.range(lo, hi);
        match kind {
            FaultKind::Partition => {
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    let j = self.rng.range(0, i as u64 + 1) as usize;
                    order.swap(i, j);
                }
                let cut = self.rng.range(1, n as u64) as usize;
                let (a, b) = order.split_at(cut);
                self.cut_groups(a.to_vec(), b.to_vec(), duration, true);
            }
            FaultKind::OneWay => {
                let x = self.rng.range(0, n as u64) as usize;
                let others: Vec<usize> = (0..n).filter(|&o| o != x).collect();
                let inbound = self.rng.chance(0.5);
                let links: Vec<(usize, usize)> = others
                    .iter()
                    .map(|&o| if inbound { (o, x) } else { (x, o) })
                    .collect();
                self.log(|| {
                    format!(
                        "one-way cut of node {x} ({})",
                        if inbound {
                            "cannot receive"
                        } else {
                            "cannot send"
                        }
                    )
                });
                self.cut_links(links, duration);
            }
            FaultKind::IsolateLeader => {
                let leader = self
                    .current_leader()
                    .unwrap_or_else(|| self.rng.range(0, n as u64) as usize);
                let minority = (n - 1) / 2;
                let extra = self.rng.range(0, minority as u64) as usize;
                let mut group = vec![leader];
                let mut others: Vec<usize> = (0..n).filter(|&o| o != leader).collect();
                for _ in 0..extra {
                    let k = self.rng.range(0, others.len() as u64) as usize;
                    group.push(others.swap_remove(k));
                }
                self.cut_groups(group, others, duration, true);
            }
            FaultKind::Crash => {
                let count = if self.rng.chance(0.15) {
                    self.rng.range(1, n as u64 + 1) as usize
                } else {
                    1
                };
                for k in 0..count {
                    let node = match self.current_leader() {
                        Some(l) if k == 0 && self.rng.chance(0.5) => l,
                        _ => self.rng.range(0, n as u64) as usize,
                    };
                    if self.rng.chance(0.6) {
                        // Crash in the middle of a write: where unsynced state matters.
                        let trap = if self.rng.chance(0.5) {
                            CrashTrap::VoteWrite
                        } else {
                            CrashTrap::AnyWrite
                        };
                        self.log(|| format!("arm crash of node {node} at its next {trap:?}"));
                        self.nodes[node].crash_trap = Some(trap);
                        continue;
                    }
                    self.crash(node)?;
                    let down = self.rng.range(lo / 2, hi);
                    self.schedule(down, Event::Restart { node });
                }
            }
            FaultKind::LeaderChurn => self.churn_armed = true,
            FaultKind::Membership => self.membership_change()?,
            FaultKind::Snapshot => {
                let node = self.rng.range(0, n as u64) as usize;
                if let Some(raft) = &mut self.nodes[node].raft
                    && raft.trigger_snapshot()
                {
                    self.log(|| format!("snapshot asked of node {node}"));
                }
                self.drive(node)?;
                self.check_node(node)?;
            }
            FaultKind::Pause => {
                let node = match self.current_leader() {
                    Some(l) if self.rng.chance(0.5) => l,
                    _ => self.rng.range(0, n as u64) as usize,
                };
                self.log(|| format!("pause node {node} for {duration}us"));
                self.nodes[node].paused_until = self.now + duration;
            }
            FaultKind::SnapshotDamage => {
                let candidates: Vec<usize> =
                    (0..n).filter(|&i| self.snapshot_loss_is_safe(i)).collect();
                if candidates.is_empty() {
                    self.log(|| {
                        "no node can lose its snapshot while the others hold what it covers"
                            .to_string()
                    });
                } else {
                    let node = self.rng.pick(&candidates);
                    self.crash(node)?;
                    self.nodes[node].disk.lose_newest_snapshot();
                    *self
                        .stats
                        .faults_by_kind
                        .entry("snapshot lost (struck)")
                        .or_default() += 1;
                    self.log(|| format!("node {node} crashed; its newest snapshot is lost"));
                    self.check_acked_durable()?;
                    let down = self.rng.range(lo / 2, hi);
                    self.schedule(down, Event::Restart { node });
                }
            }
            FaultKind::ClockSkew => {
                let beyond = self.profile.lease.as_ref().is_some_and(|l| l.beyond_bound);
                let mut node = self.rng.range(0, n as u64) as usize;
                let factors: &[f64] = match &self.profile.lease {
                    // Beyond the bound, the harmful direction: a leader whose clock
                    // runs slow keeps its lease after its voters stopped honouring it.
                    Some(_) if beyond => {
                        if let Some(l) = self.current_leader() {
                            node = l;
                        }
                        &SLOW_CLOCK_FACTORS
                    }
                    Some(_) => &LEASE_CLOCK_FACTORS,
                    None => &CLOCK_FACTORS,
                };
                let factor = self.rng.pick(factors);
                let base = self.nodes[node].base_tick_us;
                self.nodes[node].tick_us = ((base as f64) * factor).max(1.0) as u64;
                self.log(|| format!("clock of node {node} runs at {factor}x tick length"));
                self.schedule(duration, Event::Undo(Undo::Clock { node }));
                if beyond {
                    // ...and cut off from the others, who elect a new leader while its
                    // clock says its lease still holds.
                    let others: Vec<usize> = (0..n).filter(|&o| o != node).collect();
                    self.cut_groups(vec![node], others, duration, true);
                }
            }
        }
        Ok(())
    }

    pub(super) fn cut_groups(
        &mut self,
        a: Vec<usize>,
        b: Vec<usize>,
        duration: u64,
        both_ways: bool,
    ) {
        let mut links = Vec::new();
        for &x in &a {
            for &y in &b {
                links.push((x, y));
                if both_ways {
                    links.push((y, x));
                }
            }
        }
        self.log(|| format!("partition {a:?} | {b:?}"));
        self.cut_links(links, duration);
    }

    pub(super) fn cut_links(&mut self, links: Vec<(usize, usize)>, duration: u64) {
        for &(x, y) in &links {
            self.net.set_link(x, y, false);
        }
        self.schedule(duration, Event::Undo(Undo::Links(links)));
    }

    pub(super) fn undo(&mut self, undo: Undo) {
        if self.phase != Phase::Faults {
            return;
        }
        match undo {
            Undo::Links(links) => {
                for (x, y) in links {
                    self.net.set_link(x, y, true);
                }
            }
            Undo::Clock { node } => self.nodes[node].tick_us = self.nodes[node].base_tick_us,
        }
    }

    /// Whether node `i` may lose its newest snapshot: it has one, and every committed
    /// entry that only that snapshot held on its disk is durable on enough other voters
    /// that every quorum still includes a holder, in every configuration that may
    /// still be in force (an uncommitted change may yet be rolled back).
    pub(super) fn snapshot_loss_is_safe(&self, i: usize) -> bool {
        let disk = &self.nodes[i].disk;
        if disk.snapshot.last_log_id.index == LogIndex::ZERO {
            return false;
        }
        let base = disk
            .older
            .as_ref()
            .map_or(LogIndex::ZERO, |(o, _)| o.last_log_id.index);
        let mut configs: Vec<&Membership> = self
            .nodes
            .iter()
            .map(|n| n.disk.latest_membership())
            .chain(
                self.nodes
                    .iter()
                    .filter_map(|n| n.raft.as_ref().map(Raft::membership)),
            )
            .filter(|m| !m.voters.is_empty())
            .collect();
        configs.dedup();
        let id = self.nodes[i].id;
        // One lost state at a time: a node whose state is lost recovers from a leader
        // with state, which must be able to bring it the entries its log lacks.
        let other_lost = self.nodes.iter().any(|n| {
            n.id != id
                && configs.iter().any(|c| c.is_voter(n.id))
                && n.disk.snapshot.last_log_id.index < n.disk.purged.index
        });
        if other_lost {
            return false;
        }
        (base.0 + 1..=disk.purged.index.0).all(|k| {
            let Some(c) = self.checkers.committed.get(LogIndex(k)) else {
                return false;
            };
            configs.iter().all(|config| {
                let needed = config.voters.len() + 1 - config.quorum();
                let holders = self
                    .nodes
                    .iter()
                    .filter(|n| n.id != id && config.is_voter(n.id) && n.disk.holds(c))
                    .count();
                holders >= needed
            })
        })
    }

    /// Asks the leader for a random membership change; refusals (a change in
    /// progress, a learner still behind, ...) are part of the test.
    pub(super) fn membership_change(&mut self) -> Check {
        let Some(l) = self.current_leader() else {
            return Ok(());
        };
        let Some(raft) = &self.nodes[l].raft else {
            return Ok(());
        };
        let config = raft.membership().clone();
        let spares: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&i| !self.ever_member[i])
            .map(|i| self.nodes[i].id)
            .collect();
        let learners: Vec<NodeId> = config.learners.iter().copied().collect();
        let removable: Vec<NodeId> = config
            .members()
            .filter(|m| !config.is_voter(*m) || config.voters.len() > 2)
            .collect();
        // A node's record is its address; a moved node gets a new one.
        let record = |id: NodeId, now: u64| NodeRecord::new(format!("n{}@{now}", id.0));
        let mut options = Vec::new();
        if let Some(&s) = spares.first() {
            options.push(ConfChange::AddLearner(s, record(s, self.now)));
        }
        if let Some(&m) = config.voters.iter().next() {
            options.push(ConfChange::SetNode(m, record(m, self.now)));
        }
        for &id in &learners {
            options.push(ConfChange::Promote(id));
        }
        if !removable.is_empty() {
            options.push(ConfChange::Remove(self.rng.pick(&removable)));
        }
        if options.is_empty() {
            return Ok(());
        }
        // Operators promote the learners they add: prefer that when there is one.
        let change = if !learners.is_empty() && self.rng.chance(0.6) {
            ConfChange::Promote(self.rng.pick(&learners))
        } else if !spares.is_empty() && self.rng.chance(0.5) {
            ConfChange::AddLearner(spares[0], record(spares[0], self.now))
        } else {
            options[self.rng.range(0, options.len() as u64) as usize].clone()
        };
        let result = self.nodes[l]
            .raft
            .as_mut()
            .map(|r| r.change_membership(change.clone()));
        self.log(|| format!("membership change {change:?} at node {l}: {result:?}"));
        if let Some(Ok(_)) = result {
            let leader = self.nodes[l].id;
            let what = match change {
                ConfChange::AddLearner(..) => "add learner",
                ConfChange::Promote(_) => "promote learner",
                ConfChange::Remove(id) if id == leader => "remove the leader",
                ConfChange::Remove(_) => "remove a node",
                ConfChange::SetNode(..) => "move a node",
            };
            *self.stats.faults_by_kind.entry(what).or_default() += 1;
            if let ConfChange::AddLearner(id, _) = change
                && let Some(i) = self.index_of(id)
            {
                self.ever_member[i] = true;
            }
        }
        self.drive(l)?;
        self.check_node(l)
    }
}

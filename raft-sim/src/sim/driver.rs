//! The simulated driver: each node's actions carried out on its simulated disk,
//! network and state machine as the shipped `Node` driver does, by the same
//! [`Schedule`] of each action: writes in flight with the sends that may go ahead of
//! them, the state machine's jobs (applies, snapshot captures, received chunks,
//! installs) done one at a time in order but later, interleaved with everything else,
//! as `Node`'s apply task does, and snapshot chunk reads that finish in any order. The
//! [`ContractCheck`] watches every action, and every per-node checker runs after each
//! event.

use crate::checkers::{Check, violation};
use crate::client::Reply;
use crate::kv::ClientCommand;
use crate::linearizability::KvOutput;
use crate::node::CrashTrap;
use raft_core::{Action, Config, ContractCheck, Raft, ReadError, Restore, Role, Schedule};
use raft_proto::{Bytes, Entry, EntryPayload, Membership, Message, NodeId, ReadId, SnapshotMeta};

use super::{Event, World};

impl World {
    /// The configuration to check durability against: the newest one on the most
    /// up-to-date disk, crashed servers included, which is what any future leader's
    /// election will use (a removed server with a stale log and an old configuration
    /// cannot win: every voter of the newer configurations has a longer log).
    pub(super) fn current_config(&self) -> Membership {
        self.nodes
            .iter()
            .max_by_key(|n| {
                (
                    n.disk.last_log_id(),
                    !n.disk.latest_membership().voters.is_empty(),
                )
            })
            .map(|n| n.disk.latest_membership().clone())
            .unwrap_or_default()
    }

    pub(super) fn check_acked_durable(&self) -> Check {
        let config = self.current_config();
        self.checkers
            .acked_writes
            .check_durable(&self.nodes, &config)
            .map_err(|mut v| {
                let holders: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        let st = n
                            .raft
                            .as_ref()
                            .map(|r| (r.log().committed(), r.membership().voters.clone()));
                        format!(
                            "{}: disk snap {:?} purged {:?}..{:?} {st:?}",
                            n.id,
                            n.disk.snapshot.last_log_id,
                            n.disk.purged,
                            n.disk.entries.last().map(|e| e.log_id)
                        )
                    })
                    .collect();
                v.detail.push_str(&format!(
                    "; checked against voters {:?}; nodes: {holders:?}",
                    config.voters
                ));
                v
            })
    }

    pub(super) fn config(&mut self, node: usize) -> Config {
        let mut c = Config::new(self.nodes[node].id);
        c.election_ticks = self.profile.election_ticks;
        c.heartbeat_ticks = self.profile.heartbeat_ticks;
        c.pre_vote = self.profile.pre_vote;
        c.check_quorum = self.profile.check_quorum;
        if let Some(lease) = &self.profile.lease {
            c.read_mode = raft_core::ReadMode::LeaseBased {
                clock_drift_ticks: lease.clock_drift_ticks,
            };
        }
        c.max_entries_per_append = self.profile.max_entries_per_append;
        c.max_inflight_appends = self.profile.max_inflight_appends;
        c.snapshot_entries = self.profile.snapshot_entries;
        c.snapshot_bytes = self.profile.snapshot_bytes;
        c.snapshot_keep_entries = self.profile.snapshot_keep_entries;
        c.snapshot_chunk_bytes = self.profile.snapshot_chunk_bytes;
        c.max_snapshot_chunks_in_flight = self.profile.snapshot_chunks_in_flight;
        c.promote_lag_entries = self.profile.promote_lag_entries;
        c.rng_seed = self.rng.next_u64();
        c
    }

    pub(super) fn start_node(&mut self, node: usize) -> Check {
        let config = self.config(node);
        // The same reconciliation of log and state machine as `Node::start`.
        let plan = Restore::plan(self.nodes[node].disk.stored(), None);
        if let Some(base) = &plan.reset_log {
            self.nodes[node].disk.reset(base);
        }
        for note in &plan.notes {
            self.log(|| format!("node {node} at restart: {note}"));
        }
        let applied = plan.restore.applied;
        if plan.restore.state_lost {
            *self
                .stats
                .faults_by_kind
                .entry("restart with state lost")
                .or_default() += 1;
        }
        let raft = match Raft::new(config, plan.restore) {
            Ok(raft) => raft,
            Err(e) => {
                return violation(
                    "Restart",
                    format!("node {node} cannot restart from its disk: {e}"),
                );
            }
        };
        self.checkers.monotonic.restart(node, &raft);
        let n = &mut self.nodes[node];
        self.checkers
            .log_matching
            .restart(node, n.disk.purged, &n.disk.entries);
        // The state machine comes back from the durable snapshot.
        n.kv = if n.disk.snapshot_data.is_empty() {
            crate::kv::KvStore::default()
        } else {
            match crate::kv::KvStore::decode(&n.disk.snapshot_data) {
                Some(kv) => kv,
                None => {
                    return violation(
                        "Restart",
                        format!("node {node}'s stored snapshot is corrupt"),
                    );
                }
            }
        };
        // With the state lost, nothing is applied until a snapshot is installed.
        n.applied = applied;
        n.contract = ContractCheck::new(applied);
        n.raft = Some(raft);
        let inc = n.incarnation;
        let first_tick = self.rng.range(1, self.nodes[node].tick_us);
        self.nodes[node].next_tick_at = self.now + first_tick;
        self.schedule(first_tick, Event::Tick { node, inc });
        self.drive(node)?;
        self.check_node(node)
    }

    pub(super) fn restart(&mut self, node: usize) -> Check {
        if self.nodes[node].raft.is_some() {
            return Ok(());
        }
        self.log(|| format!("restart node {node}"));
        self.start_node(node)
    }

    pub(super) fn crash(&mut self, node: usize) -> Check {
        if self.nodes[node].raft.is_none() {
            return Ok(());
        }
        let torn = self.rng.chance(self.profile.torn_write);
        if torn && self.nodes[node].disk.in_flight.is_some() {
            *self.stats.faults_by_kind.entry("torn write").or_default() += 1;
        }
        let id = self.nodes[node].id;
        let in_flight = self.nodes[node].disk.in_flight.as_ref().map(|p| {
            let ids = p
                .entries
                .first()
                .zip(p.entries.last())
                .map(|(a, b)| (a.log_id, b.log_id));
            format!(
                "hard state {:?}, truncate from {:?}, entries {ids:?}",
                p.hard_state, p.truncate_from
            )
        });
        self.log(|| {
            format!("crash node {node} (torn write: {torn}; write in flight: {in_flight:?})")
        });
        if self.nodes[node].purging.is_some() && self.rng.chance(0.5) {
            // The purge in flight landed before the crash.
            if let Some((up_to, base)) = self.nodes[node].purging.take() {
                self.nodes[node].disk.purge(up_to, &base);
            }
        }
        let mut rng = self.rng.fork();
        self.nodes[node].crash(torn.then_some(&mut rng));
        self.check_votes_durable(node)?;
        self.checkers.leader_append_only.forget(id);
        self.checkers.leader_completeness.forget(id);
        self.check_acked_durable()
    }

    /// Carries out the node's actions in order; stops behind a write in flight.
    pub(super) fn drive(&mut self, i: usize) -> Check {
        loop {
            let node = &mut self.nodes[i];
            let Some(raft) = node.raft.as_mut() else {
                return Ok(());
            };
            let mut ahead = Vec::new();
            while let Some(action) = raft.poll_action() {
                node.contract.polled(&action);
                // The mirrors follow the core's log as the actions leave it.
                match &action {
                    Action::Persist(p) => {
                        self.checkers.log_matching.persist(i, p)?;
                        self.checkers.membership.persist(raft, p)?;
                    }
                    Action::PurgeLog { up_to, .. } => self.checkers.log_matching.purge(i, *up_to),
                    Action::InstallSnapshot { meta, discard_log } => {
                        self.checkers
                            .log_matching
                            .install(i, meta.last_log_id, *discard_log)?;
                    }
                    _ => {}
                }
                // As the shipped driver does: a leader's appends and heartbeats go
                // ahead of actions waiting behind a write, unless a new term or vote
                // is being written (see `Action`'s ordering contract).
                let in_flight = node.disk.in_flight.as_ref();
                let blocked = in_flight.is_some()
                    || node.installing
                    || node.purging.is_some()
                    || !node.queue.is_empty();
                let writing_hard_state = in_flight.is_some_and(|p| p.hard_state.is_some());
                if blocked && action.may_go_ahead(writing_hard_state, &node.queue) {
                    ahead.push(action);
                } else {
                    Action::enqueue(&mut node.queue, action);
                }
            }
            for action in ahead {
                self.contract_started(i, &action)?;
                // Only sends may go ahead.
                if let Action::Send { to, message } = action {
                    self.send(i, to, message);
                }
            }
            let node = &mut self.nodes[i];
            if node.disk.in_flight.is_some() || node.installing || node.purging.is_some() {
                return Ok(());
            }
            let Some(action) = node.queue.pop_front() else {
                return Ok(());
            };
            self.contract_started(i, &action)?;
            if action.schedule().is_state_machine_job() {
                if let Action::Apply(_) = action {
                    // The core hands out only what it considers committed: record that.
                    self.observe_commit(i)?;
                }
                self.hand_to_state_machine(i, action)?;
                continue;
            }
            match action {
                Action::Send { to, message } => self.send(i, to, message),
                Action::Persist(p) => {
                    let latency = self
                        .rng
                        .range(self.profile.disk_us.0, self.profile.disk_us.1);
                    let node = &mut self.nodes[i];
                    let inc = node.incarnation;
                    let strike = match node.crash_trap {
                        Some(CrashTrap::AnyWrite) => true,
                        Some(CrashTrap::VoteWrite) => {
                            p.hard_state.is_some_and(|h| h.voted_for.is_some())
                        }
                        None => false,
                    };
                    node.disk.in_flight = Some(p);
                    if strike {
                        node.crash_trap = None;
                        let at = self.rng.range(0, latency);
                        self.schedule(at, Event::CrashNow { node: i, inc });
                    }
                    self.schedule(latency, Event::DiskDone { node: i, inc });
                }
                Action::ReadReady { id, .. } => self.read_ready(i, id),
                Action::ReadFailed { id, error } => {
                    let ReadError::NotLeader(nl) = error else {
                        continue;
                    };
                    if let Some(r) = self.nodes[i].reads.remove(&id) {
                        self.reply(r.client, r.seq, r.attempt, Reply::NotLeader(nl.leader_hint));
                    }
                }
                Action::PurgeLog { up_to, base } => {
                    // A storage step like a write: later actions wait for it, and a
                    // crash meanwhile may or may not see it land.
                    let latency = self
                        .rng
                        .range(self.profile.disk_us.0, self.profile.disk_us.1);
                    let node = &mut self.nodes[i];
                    node.purging = Some((up_to, base));
                    let inc = node.incarnation;
                    self.schedule(latency, Event::DiskDone { node: i, inc });
                }
                Action::ReadSnapshotChunk {
                    to,
                    meta,
                    offset,
                    len,
                } => {
                    let disk = &self.nodes[i].disk;
                    let (data, last) = if disk.snapshot.id == meta.id {
                        let bytes = disk.snapshot_data.as_slice();
                        let start = usize::try_from(offset)
                            .unwrap_or(usize::MAX)
                            .min(bytes.len());
                        let end = start.saturating_add(len).min(bytes.len());
                        (Some(Bytes::from(&bytes[start..end])), end == bytes.len())
                    } else {
                        (None, false)
                    };
                    let inc = self.nodes[i].incarnation;
                    // Each read runs on its own: they may finish in any order.
                    let latency = self
                        .rng
                        .range(self.profile.disk_us.0, self.profile.disk_us.1);
                    self.schedule(
                        latency,
                        Event::ChunkRead {
                            node: i,
                            inc,
                            to,
                            id: meta.id,
                            offset,
                            data,
                            last,
                        },
                    );
                }
                Action::Apply(_)
                | Action::BuildSnapshot { .. }
                | Action::WriteSnapshotChunk { .. }
                | Action::InstallSnapshot { .. } => {
                    unreachable!("state machine jobs are handed over above")
                }
            }
        }
    }

    /// Tells node `i`'s contract check that `action` starts; a breach is a violation.
    fn contract_started(&mut self, i: usize, action: &Action) -> Check {
        match self.nodes[i].contract.started(action) {
            Ok(()) => Ok(()),
            Err(e) => violation("Ordering contract", format!("node {i}: {e}")),
        }
    }

    /// Hands a job to node `i`'s state machine: done later, after the jobs before it
    /// (or at once with `--in-order`). The driver waits for an install.
    fn hand_to_state_machine(&mut self, i: usize, job: Action) -> Check {
        if job.schedule() == Schedule::StateMachineThenWait {
            self.nodes[i].installing = true;
        }
        self.nodes[i].jobs.push_back(job);
        match self.profile.apply_us {
            None => {
                while let Some(job) = self.nodes[i].jobs.pop_front() {
                    self.run_job(i, job)?;
                }
                Ok(())
            }
            Some(_) => {
                self.schedule_state_machine(i);
                Ok(())
            }
        }
    }

    fn schedule_state_machine(&mut self, i: usize) {
        let Some((lo, hi)) = self.profile.apply_us else {
            return;
        };
        let node = &mut self.nodes[i];
        if node.job_scheduled || node.jobs.is_empty() {
            return;
        }
        node.job_scheduled = true;
        let inc = node.incarnation;
        let latency = self.rng.range(lo, hi + 1);
        self.schedule(latency, Event::StateMachineStep { node: i, inc });
    }

    /// Node `i`'s state machine finishes its next job: an apply takes every apply
    /// queued behind it along (one batch, as `Node`'s apply task gathers them).
    pub(super) fn state_machine_step(&mut self, i: usize, inc: u64) -> Check {
        let node = &mut self.nodes[i];
        if node.incarnation != inc {
            return Ok(());
        }
        node.job_scheduled = false;
        let Some(job) = node.jobs.pop_front() else {
            return Ok(());
        };
        let job = match job {
            Action::Apply(mut entries) => {
                while let Some(Action::Apply(more)) = node.jobs.front_mut() {
                    entries.append(more);
                    node.jobs.pop_front();
                }
                Action::Apply(entries)
            }
            other => other,
        };
        self.run_job(i, job)?;
        self.schedule_state_machine(i);
        self.drive(i)?;
        self.check_node(i)
    }

    /// Carries out one of the state machine's jobs.
    fn run_job(&mut self, i: usize, job: Action) -> Check {
        match job {
            Action::Apply(entries) => self.apply(i, entries),
            Action::BuildSnapshot { meta } => self.build_snapshot(i, meta),
            Action::WriteSnapshotChunk { meta, offset, data } => {
                let node = &mut self.nodes[i];
                if offset == 0 {
                    node.incoming = Some((meta.id, Vec::new()));
                }
                match &mut node.incoming {
                    Some((id, buf)) if *id == meta.id && buf.len() as u64 == offset => {
                        buf.extend_from_slice(&data);
                        Ok(())
                    }
                    other => {
                        let have = other.as_ref().map(|(id, buf)| (*id, buf.len()));
                        violation(
                            "Snapshot transfer",
                            format!(
                                "node {i} is told to store snapshot {} at {offset} but holds {have:?}",
                                meta.id
                            ),
                        )
                    }
                }
            }
            Action::InstallSnapshot { meta, discard_log } => {
                let index = meta.last_log_id.index;
                self.install_snapshot(i, meta, discard_log)?;
                let node = &mut self.nodes[i];
                node.installing = false;
                node.contract.finished(Some(index));
                Ok(())
            }
            other => violation(
                "Ordering contract",
                format!("node {i}'s state machine is handed {other:?}"),
            ),
        }
    }

    /// Snapshots the store as of this point in the action order; it becomes durable
    /// after a disk write.
    pub(super) fn build_snapshot(&mut self, i: usize, mut meta: SnapshotMeta) -> Check {
        let index = meta.last_log_id.index;
        let node = &mut self.nodes[i];
        if node.applied != index {
            return violation(
                "Snapshot point",
                format!(
                    "node {i} is asked for a snapshot at {index:?} with {:?} applied",
                    node.applied
                ),
            );
        }
        node.snapshots_built += 1;
        meta.id = ((i as u64 + 1) << 40) | node.snapshots_built;
        let data = Bytes::from(node.kv.encode());
        self.checkers.snapshot_states.built(i, index, &data)?;
        node.building = Some((meta, data));
        let inc = node.incarnation;
        let latency = self
            .rng
            .range(self.profile.disk_us.0, self.profile.disk_us.1);
        self.schedule(latency, Event::SnapshotBuilt { node: i, inc });
        Ok(())
    }

    pub(super) fn snapshot_built(&mut self, i: usize, inc: u64) -> Check {
        let node = &mut self.nodes[i];
        if node.incarnation != inc {
            return Ok(());
        }
        let Some((meta, data)) = node.building.take() else {
            return Ok(());
        };
        node.disk.store_snapshot(meta.clone(), data);
        if let Some(raft) = &mut node.raft {
            raft.snapshot_built(Some(meta));
        }
        *self
            .stats
            .faults_by_kind
            .entry("snapshot built")
            .or_default() += 1;
        self.drive(i)?;
        self.check_node(i)
    }

    pub(super) fn install_snapshot(
        &mut self,
        i: usize,
        meta: SnapshotMeta,
        discard_log: bool,
    ) -> Check {
        let index = meta.last_log_id.index;
        let node = &mut self.nodes[i];
        let data = match node.incoming.take() {
            Some((id, data)) if id == meta.id => data,
            other => {
                return violation(
                    "Snapshot transfer",
                    format!(
                        "node {i} installs snapshot {} but received {:?}",
                        meta.id,
                        other.map(|(id, d)| (id, d.len()))
                    ),
                );
            }
        };
        let Some(kv) = crate::kv::KvStore::decode(&data) else {
            return violation(
                "Snapshot transfer",
                format!("node {i} received a corrupt snapshot {}", meta.id),
            );
        };
        self.checkers.snapshot_states.installed(i, index, &data)?;
        *self
            .stats
            .faults_by_kind
            .entry("snapshot installed")
            .or_default() += 1;
        let node = &mut self.nodes[i];
        node.kv = kv;
        node.applied = index;
        // Writes proposed here that the snapshot covers will never be applied here; their
        // clients time out (the outcome is unknown to them: the snapshot may hold them).
        node.writes.retain(|&at, _| at > index);
        node.disk.install(meta, Bytes::from(data), discard_log);
        Ok(())
    }

    pub(super) fn send(&mut self, from: usize, to: NodeId, mut msg: Message) {
        let Some(to) = self.index_of(to) else { return };
        if self.targeted_send(from, to, &mut msg) {
            return;
        }
        let [first, second] = self.net.deliveries(from, to);
        if let Some(d) = second {
            self.schedule(
                d,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
        if let Some(d) = first {
            self.schedule(d, Event::Deliver { from, to, msg });
        }
    }

    pub(super) fn index_of(&self, id: NodeId) -> Option<usize> {
        let i = usize::try_from(id.0.checked_sub(1)?).ok()?;
        (i < self.nodes.len()).then_some(i)
    }

    pub(super) fn disk_done(&mut self, node: usize, inc: u64) -> Check {
        let n = &mut self.nodes[node];
        if n.incarnation != inc {
            return Ok(());
        }
        if let Some((up_to, base)) = n.purging.take() {
            n.disk.purge(up_to, &base);
            n.contract.finished(None);
            self.drive(node)?;
            return self.check_node(node);
        }
        let Some(p) = n.disk.in_flight.take() else {
            return Ok(());
        };
        n.disk.write(&p);
        n.contract.finished(None);
        if let (Some(last), Some(raft)) = (p.entries.last(), n.raft.as_mut()) {
            raft.persisted(last.log_id);
        }
        if p.truncate_from.is_some() {
            self.check_acked_durable()?;
        }
        self.drive(node)?;
        self.check_node(node)
    }

    pub(super) fn apply(&mut self, i: usize, entries: Vec<Entry>) -> Check {
        // The core hands out only what it considers committed: record that first.
        self.observe_commit(i)?;
        let mut last = None;
        for e in entries {
            let previous = self.nodes[i].applied;
            self.checkers
                .state_machine_safety
                .apply(i, previous, &e, &self.checkers.committed)?;
            self.nodes[i].applied = e.log_id.index;
            last = Some(e.log_id.index);
            let output = match &e.payload {
                EntryPayload::Command(bytes) => {
                    let Some(cmd) = self.decode(bytes) else {
                        return violation(
                            "Command integrity",
                            format!("node {i} applies an undecodable command at {:?}", e.log_id),
                        );
                    };
                    self.nodes[i].kv.apply(&cmd)
                }
                EntryPayload::Blank | EntryPayload::Membership(_) => None,
            };
            if let Some(w) = self.nodes[i].writes.remove(&e.log_id.index) {
                let reply = match output {
                    Some(output) if w.log_id == e.log_id => Reply::Ok {
                        output,
                        log_id: Some(e.log_id),
                    },
                    _ => Reply::Retry,
                };
                self.reply(w.client, w.seq, w.attempt, reply);
            }
        }
        let node = &mut self.nodes[i];
        if let (Some(last), Some(raft)) = (last, node.raft.as_mut()) {
            node.contract.applied(last);
            raft.applied(last);
        }
        Ok(())
    }

    pub(super) fn decode(&self, bytes: &Bytes) -> Option<ClientCommand> {
        let raw: [u8; 8] = bytes.as_slice().try_into().ok()?;
        let op = usize::try_from(u64::from_le_bytes(raw)).ok()?;
        self.commands.get(op).cloned()
    }

    pub(super) fn read_ready(&mut self, i: usize, id: ReadId) {
        let Some(r) = self.nodes[i].reads.remove(&id) else {
            return;
        };
        let value = self.nodes[i].kv.get(r.key);
        self.reply(
            r.client,
            r.seq,
            r.attempt,
            Reply::Ok {
                output: KvOutput::Value(value),
                log_id: None,
            },
        );
    }

    pub(super) fn observe_commit(&mut self, i: usize) -> Check {
        let Some(raft) = &self.nodes[i].raft else {
            return Ok(());
        };
        let before = self.checkers.monotonic.observe(i, raft)?;
        self.checkers.committed.observe(raft, before, &self.nodes)
    }

    /// Every per-node checker, after an event on node `i`.
    pub(super) fn check_node(&mut self, i: usize) -> Check {
        self.observe_commit(i)?;
        let Some(raft) = &self.nodes[i].raft else {
            return Ok(());
        };
        raft.check_invariants_now();
        if raft.role() == Role::Leader && self.led_term[i] != Some(raft.term()) {
            self.led_term[i] = Some(raft.term());
            if std::mem::take(&mut self.churn_armed) {
                let inc = self.nodes[i].incarnation;
                let heartbeat = self.profile.tick_us * u64::from(self.profile.heartbeat_ticks);
                let at = self.rng.range(0, 3 * heartbeat);
                self.log(|| format!("leader churn: node {i} will crash {at}us into its term"));
                self.schedule(at, Event::CrashNow { node: i, inc });
            }
        }
        let Some(raft) = &self.nodes[i].raft else {
            return Ok(());
        };
        self.checkers.log_matching.verify(i, raft)?;
        self.checkers.election_safety.observe(raft)?;
        self.checkers.leader_append_only.observe(raft)?;
        self.checkers
            .leader_completeness
            .observe(raft, &self.checkers.committed)
    }
}

//! A small in-memory multi-node network for scenario tests: each node's actions are
//! carried out strictly in order against an in-memory disk, messages wait in a queue
//! until delivered, and links can be cut (isolate / cut / heal). Applies, snapshot
//! builds and chunk reads can be held to finish later, as the shipped driver's
//! background work does, and every action goes through the ordering contract's check.

#![allow(dead_code, unreachable_pub)]

use raft_core::{
    Action, Config, ContractCheck, Persist, Plan, Raft, ReadError, Restore, Role, Stored,
};
use raft_proto::{
    Bytes, Entry, EntryPayload, HardState, LogId, LogIndex, Membership, Message, NodeId, ReadId,
    SnapshotMeta, Term, decode_frame, encode_frame,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub fn n(id: u64) -> NodeId {
    NodeId(id)
}

/// What a node's storage holds.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
    /// The snapshot's bytes: the encoded list of commands applied up to it.
    pub snapshot_data: Vec<u8>,
    pub purged: LogId,
    pub entries: Vec<Entry>,
}

impl Disk {
    pub fn write(&mut self, p: &Persist) {
        if let Some(t) = p.truncate_from {
            self.entries.retain(|e| e.log_id.index < t);
        }
        if let Some(first) = p.entries.first() {
            let expected = self
                .entries
                .last()
                .map_or(self.purged.index, |e| e.log_id.index)
                .next();
            assert_eq!(
                first.log_id.index, expected,
                "persist leaves a gap in the stored log"
            );
        }
        self.entries.extend(p.entries.iter().cloned());
        if let Some(h) = p.hard_state {
            assert!(h.term >= self.hard_state.term, "stored term goes backwards");
            self.hard_state = h;
        }
    }

    /// Stores a snapshot that became durable. The newest by last log id stays: a build
    /// that finishes after a newer snapshot was installed is older, and a store keeps
    /// (or drops) it as an older one, never in place of the newer (see
    /// `Action::BuildSnapshot`).
    pub fn store_snapshot(&mut self, meta: SnapshotMeta, data: Vec<u8>) {
        if meta.last_log_id.index >= self.snapshot.last_log_id.index {
            self.snapshot = meta;
            self.snapshot_data = data;
        }
    }

    pub fn purge(&mut self, up_to: LogId) {
        self.entries.retain(|e| e.log_id.index > up_to.index);
        self.purged = up_to;
    }

    pub fn terms(&self) -> Vec<u64> {
        self.entries.iter().map(|e| e.log_id.term.0).collect()
    }
}

pub struct TestNode {
    pub raft: Raft,
    pub config: Config,
    pub disk: Disk,
    /// Entries handed to the state machine by `Apply`, in order (this incarnation).
    pub applied: Vec<Entry>,
    /// The state machine: every command applied, in order (a snapshot restores it).
    pub state: Vec<Vec<u8>>,
    pub reads_ready: Vec<(ReadId, LogIndex)>,
    pub reads_failed: Vec<(ReadId, ReadError)>,
    /// When false, the node's disk is "slow": a `Persist` and every action after it
    /// wait in `stalled` until `release_disk`.
    pub disk_fast: bool,
    pub stalled: VecDeque<Action>,
    /// A snapshot being received: its id and the bytes so far.
    pub incoming: Option<(u64, Vec<u8>)>,
    /// Snapshots built, and snapshots installed from a leader.
    pub snapshots_built: usize,
    pub snapshots_installed: usize,
    /// When true, snapshot chunk reads wait in `chunk_reads` until `read_chunks`.
    pub slow_chunk_reads: bool,
    pub chunk_reads: VecDeque<Action>,
    /// When true, snapshot builds run "in the background": each captures the state
    /// when asked (as a copy-on-write read transaction does) and finishes only at
    /// `finish_builds`.
    pub slow_snapshot_builds: bool,
    pub builds: VecDeque<(SnapshotMeta, Vec<u8>)>,
    /// When true, applies run "in the background": they wait in `applies` until
    /// `finish_applies`, while the node goes on (as `Node`'s apply task lags behind
    /// its driver).
    pub slow_applies: bool,
    pub applies: VecDeque<Vec<Entry>>,
    /// The state each answered read saw: (read, index, commands applied then).
    pub reads_seen: Vec<(ReadId, LogIndex, usize)>,
    /// The ordering contract, checked on every action this node carries out.
    pub contract: ContractCheck,
}

impl TestNode {
    pub fn new(config: Config, restore: Restore) -> TestNode {
        Self::with_disk(
            config,
            Disk {
                hard_state: restore.hard_state,
                snapshot: restore.snapshot.clone(),
                snapshot_data: Vec::new(),
                purged: restore.purged,
                entries: restore.entries.clone(),
            },
        )
    }

    /// A node that starts from `disk`, as after a restart.
    pub fn with_disk(config: Config, disk: Disk) -> TestNode {
        let restore = Restore {
            hard_state: disk.hard_state,
            snapshot: disk.snapshot.clone(),
            purged: disk.purged,
            entries: disk.entries.clone(),
            applied: disk.snapshot.last_log_id.index,
            state_lost: false,
        };
        let state = if disk.snapshot_data.is_empty() {
            Vec::new()
        } else {
            decode_frame(&disk.snapshot_data).expect("a snapshot this test wrote")
        };
        Self::from_restore(config, disk, restore, state)
    }

    fn from_restore(config: Config, disk: Disk, restore: Restore, state: Vec<Vec<u8>>) -> TestNode {
        let contract = ContractCheck::new(restore.applied);
        TestNode {
            raft: Raft::new(config.clone(), restore).expect("valid test node"),
            config,
            disk,
            applied: Vec::new(),
            state,
            reads_ready: Vec::new(),
            reads_failed: Vec::new(),
            disk_fast: true,
            stalled: VecDeque::new(),
            incoming: None,
            snapshots_built: 0,
            snapshots_installed: 0,
            slow_chunk_reads: false,
            chunk_reads: VecDeque::new(),
            slow_snapshot_builds: false,
            builds: VecDeque::new(),
            slow_applies: false,
            applies: VecDeque::new(),
            reads_seen: Vec::new(),
            contract,
        }
    }

    pub fn commands(&self) -> Vec<Vec<u8>> {
        self.state.clone()
    }

    /// Applies `entries` to the state and tells the core.
    fn apply(&mut self, entries: Vec<Entry>) {
        let last = entries.last().map(|e| e.log_id.index);
        for e in &entries {
            if let EntryPayload::Command(c) = &e.payload {
                self.state.push(c.to_vec());
            }
        }
        self.applied.extend(entries);
        if let Some(last) = last {
            self.contract.applied(last);
            self.raft.applied(last);
        }
    }
}

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, TestNode>,
    /// Messages sent and not yet delivered, in send order.
    pub in_flight: VecDeque<(NodeId, NodeId, Message)>,
    /// Links that drop everything: (from, to).
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// Every message delivered, in order.
    pub delivered: Vec<(NodeId, NodeId, Message)>,
    /// Drops every message for which it returns true.
    pub drop_if: Option<fn(NodeId, NodeId, &Message) -> bool>,
}

impl Cluster {
    /// `size` voters with ids 1..=size and default configuration.
    pub fn new(size: u64) -> Cluster {
        Cluster::new_with(size, |_| {})
    }

    /// `size` voters; `tune` adjusts each node's configuration.
    pub fn new_with(size: u64, tune: impl Fn(&mut Config)) -> Cluster {
        let logs = vec![Vec::new(); size as usize];
        Cluster::with_logs(&logs, tune)
    }

    /// One voter per element of `logs`; node i+1 starts with a log whose entries have
    /// the given terms (and a hard state at its last term).
    pub fn with_logs(logs: &[Vec<u64>], tune: impl Fn(&mut Config)) -> Cluster {
        let ids: Vec<NodeId> = (1..=logs.len() as u64).map(NodeId).collect();
        let membership = Membership::voters(ids.iter().copied());
        let mut nodes = BTreeMap::new();
        for (i, terms) in logs.iter().enumerate() {
            let id = ids[i];
            let mut config = Config::new(id);
            tune(&mut config);
            let mut restore = Restore::bootstrap(membership.clone());
            restore.entries = terms
                .iter()
                .enumerate()
                .map(|(k, &t)| Entry {
                    log_id: LogId::new(Term(t), LogIndex(k as u64 + 1)),
                    payload: EntryPayload::Command(Bytes::from(format!("t{t}i{}", k + 1).as_str())),
                })
                .collect();
            restore.hard_state.term = Term(terms.last().copied().unwrap_or(0));
            nodes.insert(id, TestNode::new(config, restore));
        }
        Cluster {
            nodes,
            in_flight: VecDeque::new(),
            blocked: BTreeSet::new(),
            delivered: Vec::new(),
            drop_if: None,
        }
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn node(&self, id: NodeId) -> &TestNode {
        &self.nodes[&id]
    }

    pub fn raft(&self, id: NodeId) -> &Raft {
        &self.nodes[&id].raft
    }

    pub fn raft_mut(&mut self, id: NodeId) -> &mut Raft {
        &mut self.nodes.get_mut(&id).expect("node exists").raft
    }

    pub fn role(&self, id: NodeId) -> Role {
        self.raft(id).role()
    }

    pub fn term(&self, id: NodeId) -> Term {
        self.raft(id).term()
    }

    /// The leader with the highest term, if any node is leader.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.raft.role() == Role::Leader)
            .max_by_key(|n| n.raft.term())
            .map(|n| n.raft.id())
    }

    /// Carries out `id`'s queued actions in order.
    pub fn process(&mut self, id: NodeId) {
        loop {
            let node = self.nodes.get_mut(&id).expect("node exists");
            let action = if !node.stalled.is_empty() && node.disk_fast {
                node.stalled.pop_front()
            } else {
                let polled = node.raft.poll_action();
                if let Some(a) = &polled {
                    node.contract.polled(a);
                }
                polled
            };
            let Some(action) = action else { break };
            if !node.disk_fast && (!node.stalled.is_empty() || matches!(action, Action::Persist(_)))
            {
                node.stalled.push_back(action);
                continue;
            }
            if let Err(e) = node.contract.started(&action) {
                panic!("node {id}: {e}");
            }
            self.carry_out(id, action);
        }
    }

    fn carry_out(&mut self, id: NodeId, action: Action) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        match action {
            Action::Send { to, message } => {
                if !self.blocked.contains(&(id, to)) {
                    self.in_flight.push_back((id, to, message));
                }
            }
            Action::Persist(p) => {
                node.disk.write(&p);
                node.contract.finished(None);
                if let Some(last) = p.entries.last() {
                    node.raft.persisted(last.log_id);
                }
            }
            Action::Apply(entries) if node.slow_applies => node.applies.push_back(entries),
            Action::Apply(entries) => node.apply(entries),
            Action::ReadReady { id, index } => {
                node.reads_ready.push((id, index));
                node.reads_seen.push((id, index, node.state.len()));
            }
            Action::ReadFailed { id, error } => node.reads_failed.push((id, error)),
            Action::BuildSnapshot { mut meta } => {
                assert!(
                    node.applies.is_empty(),
                    "this harness captures snapshots from the applied state: finish held applies first"
                );
                node.snapshots_built += 1;
                meta.id = (id.0 << 32) | node.snapshots_built as u64;
                let data = encode_frame(&node.state).expect("encodable");
                if node.slow_snapshot_builds {
                    node.builds.push_back((meta, data));
                } else {
                    node.disk.store_snapshot(meta.clone(), data);
                    node.raft.snapshot_built(Some(meta));
                }
            }
            Action::PurgeLog { up_to, .. } => {
                node.disk.purge(up_to);
                node.contract.finished(None);
            }
            Action::ReadSnapshotChunk { .. } if node.slow_chunk_reads => {
                node.chunk_reads.push_back(action);
            }
            Action::ReadSnapshotChunk {
                to,
                meta,
                offset,
                len,
            } => {
                if node.disk.snapshot.id != meta.id {
                    node.raft
                        .snapshot_chunk_read(to, meta.id, offset, None, false);
                    return;
                }
                let data = &node.disk.snapshot_data;
                let start = (offset as usize).min(data.len());
                let end = (start + len).min(data.len());
                let chunk = Bytes::from(&data[start..end]);
                node.raft
                    .snapshot_chunk_read(to, meta.id, offset, Some(chunk), end == data.len());
            }
            Action::WriteSnapshotChunk { meta, offset, data } => {
                if offset == 0 {
                    node.incoming = Some((meta.id, Vec::new()));
                }
                let (incoming_id, buf) = node.incoming.as_mut().expect("a snapshot being received");
                assert_eq!(*incoming_id, meta.id, "chunk of another snapshot");
                assert_eq!(buf.len() as u64, offset, "chunk out of order");
                buf.extend_from_slice(&data);
            }
            Action::InstallSnapshot { meta, discard_log } => {
                let (incoming_id, data) = node.incoming.take().expect("a received snapshot");
                assert_eq!(incoming_id, meta.id);
                // An empty snapshot holds an empty state (as in `with_disk`).
                node.state = if data.is_empty() {
                    Vec::new()
                } else {
                    decode_frame(&data).expect("a snapshot this test wrote")
                };
                node.disk.snapshot_data = data;
                node.disk.snapshot = meta.clone();
                if discard_log {
                    node.disk.entries.clear();
                }
                node.disk.purge(meta.last_log_id);
                node.snapshots_installed += 1;
                node.contract.finished(Some(meta.last_log_id.index));
            }
        }
    }

    pub fn process_all(&mut self) {
        for id in self.ids() {
            self.process(id);
        }
    }

    /// Delivers the oldest message in flight (dropping it if its link is cut).
    pub fn deliver_one(&mut self) -> bool {
        let Some((from, to, msg)) = self.in_flight.pop_front() else {
            return false;
        };
        if self.blocked.contains(&(from, to))
            || !self.nodes.contains_key(&to)
            || self.drop_if.is_some_and(|f| f(from, to, &msg))
        {
            return true;
        }
        self.delivered.push((from, to, msg.clone()));
        self.raft_mut(to).step(from, msg);
        self.process(to);
        true
    }

    /// Carries out all actions and delivers all messages until nothing moves.
    pub fn settle(&mut self) {
        self.process_all();
        let mut steps = 0;
        while self.deliver_one() {
            steps += 1;
            assert!(steps < 1_000_000, "cluster does not settle");
        }
        self.process_all();
    }

    /// Takes every message in flight without delivering it.
    pub fn take_in_flight(&mut self) -> Vec<(NodeId, NodeId, Message)> {
        self.process_all();
        self.in_flight.drain(..).collect()
    }

    /// Puts a message on the wire.
    pub fn inject(&mut self, from: NodeId, to: NodeId, msg: Message) {
        self.in_flight.push_back((from, to, msg));
    }

    /// Steps a message into `to` directly and carries out its actions.
    pub fn step(&mut self, from: NodeId, to: NodeId, msg: Message) {
        self.raft_mut(to).step(from, msg);
        self.process(to);
    }

    /// One tick on one node, then settle.
    pub fn tick(&mut self, id: NodeId) {
        self.raft_mut(id).tick();
        self.settle();
    }

    /// One tick on every node, then settle.
    pub fn tick_all(&mut self) {
        for id in self.ids() {
            self.raft_mut(id).tick();
        }
        self.settle();
    }

    pub fn ticks(&mut self, count: u32) {
        for _ in 0..count {
            self.tick_all();
        }
    }

    /// Makes `id` leader by ticking only it until it wins (the others stay quiet).
    pub fn elect(&mut self, id: NodeId) {
        let limit = 4 * self.raft(id).config().election_ticks;
        for _ in 0..limit {
            self.tick(id);
            if self.role(id) == Role::Leader {
                self.settle();
                return;
            }
        }
        panic!("node {id} did not win an election");
    }

    /// Proposes on `id` and settles.
    pub fn propose(&mut self, id: NodeId, data: &str) -> LogId {
        let log_id = self
            .raft_mut(id)
            .propose(Bytes::from(data))
            .expect("proposal accepted");
        self.settle();
        log_id
    }

    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.blocked.insert((id, other));
                self.blocked.insert((other, id));
            }
        }
    }

    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.blocked.insert((a, b));
        self.blocked.insert((b, a));
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Restarts `id` from its disk: volatile state (and the in-memory state machine)
    /// is lost; the state machine comes back from the snapshot.
    pub fn restart(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("node exists");
        self.nodes
            .insert(id, TestNode::with_disk(node.config, node.disk));
        self.in_flight.retain(|(_, to, _)| *to != id);
    }

    /// Restarts `id` from a disk that holds only a snapshot at `base` (snapshot id 7,
    /// bytes `data`: an encoded state, or nothing for an empty one), then `entries`,
    /// with the stored term `term` and no vote; the snapshot's configuration is every
    /// node of the cluster.
    pub fn restart_from_snapshot(
        &mut self,
        id: NodeId,
        term: u64,
        base: LogId,
        data: Vec<u8>,
        entries: Vec<Entry>,
    ) {
        let config = self.node(id).config.clone();
        let disk = Disk {
            hard_state: HardState {
                term: Term(term),
                voted_for: None,
            },
            snapshot: SnapshotMeta {
                last_log_id: base,
                membership: Membership::voters(self.ids()),
                id: 7,
            },
            snapshot_data: data,
            purged: base,
            entries,
        };
        self.nodes.insert(id, TestNode::with_disk(config, disk));
        self.in_flight.retain(|(_, to, _)| *to != id);
    }

    /// Restarts `id` as after a power cut that destroyed its snapshot file: the state
    /// machine comes back empty, while the log, the hard state and the log store's
    /// record of the snapshot the log continues survive. Returns how it resumed.
    pub fn restart_with_snapshot_lost(&mut self, id: NodeId) -> Plan {
        let node = self.nodes.remove(&id).expect("node exists");
        let mut disk = node.disk;
        let plan = Restore::plan(
            Stored {
                hard_state: disk.hard_state,
                purged: disk.purged,
                entries: disk.entries.clone(),
                log_base: Some(disk.snapshot.clone()),
                applied: LogId::ZERO,
                snapshot: None,
            },
            None,
        );
        disk.snapshot = plan.restore.snapshot.clone();
        disk.snapshot_data = Vec::new();
        self.nodes.insert(
            id,
            TestNode::from_restore(node.config, disk, plan.restore.clone(), Vec::new()),
        );
        self.in_flight.retain(|(_, to, _)| *to != id);
        plan
    }

    /// Starts a brand-new node `id` that belongs to no configuration yet (it joins
    /// when the leader adds it).
    pub fn add_node(&mut self, id: NodeId, tune: impl Fn(&mut Config)) {
        let mut config = Config::new(id);
        tune(&mut config);
        self.nodes
            .insert(id, TestNode::new(config, Restore::default()));
    }

    /// Completes up to `count` of `id`'s waiting snapshot chunk reads.
    pub fn read_chunks(&mut self, id: NodeId, count: usize) {
        for _ in 0..count {
            let node = self.nodes.get_mut(&id).expect("node exists");
            let Some(read) = node.chunk_reads.pop_front() else {
                break;
            };
            node.slow_chunk_reads = false;
            self.carry_out(id, read);
            self.nodes
                .get_mut(&id)
                .expect("node exists")
                .slow_chunk_reads = true;
        }
        self.process(id);
    }

    /// Finishes `id`'s snapshot builds held by `slow_snapshot_builds`, oldest first.
    pub fn finish_builds(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        while let Some((meta, data)) = node.builds.pop_front() {
            node.disk.store_snapshot(meta.clone(), data);
            node.raft.snapshot_built(Some(meta));
        }
        self.process(id);
    }

    /// Finishes `id`'s applies held by `slow_applies`, in order.
    pub fn finish_applies(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        while let Some(entries) = node.applies.pop_front() {
            node.apply(entries);
        }
        self.process(id);
    }

    pub fn slow_disk(&mut self, id: NodeId) {
        self.nodes.get_mut(&id).expect("node exists").disk_fast = false;
    }

    pub fn release_disk(&mut self, id: NodeId) {
        self.nodes.get_mut(&id).expect("node exists").disk_fast = true;
        self.process(id);
    }

    /// Commands applied on `id`, as strings.
    pub fn applied_commands(&self, id: NodeId) -> Vec<String> {
        self.node(id)
            .commands()
            .into_iter()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .collect()
    }
}

/// Drains a node's actions without carrying them out.
pub fn drain(raft: &mut Raft) -> Vec<Action> {
    std::iter::from_fn(|| raft.poll_action()).collect()
}

/// The messages among `actions`, with their receivers.
pub fn sends(actions: &[Action]) -> Vec<(NodeId, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, message } => Some((*to, message.clone())),
            _ => None,
        })
        .collect()
}

impl Cluster {
    /// Like `settle`, but drops every AppendEntries (elections complete, replication
    /// does not).
    pub fn settle_without_appends(&mut self) {
        self.process_all();
        while let Some((from, to, m)) = self.in_flight.pop_front() {
            if matches!(m, Message::AppendEntries(_)) || self.blocked.contains(&(from, to)) {
                continue;
            }
            self.step(from, to, m);
        }
    }
}

//! The world: nodes, network, clients and nemesis on one virtual clock, driven by one
//! seed. [`run_seed`] runs a safety phase under faults, then a liveness phase on a
//! healed network, then checks the client history for linearizability.

use crate::checkers::{Check, Checkers, Violation, violation};
use crate::client::{Client, Current, Reply, is_write};
use crate::kv::ClientCommand;
use crate::linearizability::{self, CheckResult, KvOp, KvOutput, Operation, Outcome};
use crate::net::Network;
use crate::node::{CrashTrap, PendingRead, PendingWrite, SimNode};
use crate::profile::{
    CLOCK_FACTORS, FaultKind, LEASE_CLOCK_FACTORS, LeaseMode, MS, Profile, SLOW_CLOCK_FACTORS,
};
use crate::rng::SimRng;
use raft_core::{Action, ConfChange, Config, ProposeError, Raft, ReadError, Restore, Role};
use raft_proto::{
    Bytes, Entry, EntryPayload, LogId, LogIndex, Membership, Message, NodeId, NodeRecord, ReadId,
    SnapshotMeta,
};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt::Write as _;

/// How to run one seed.
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// The seed: everything in the run follows from it.
    pub seed: u64,
    /// Cluster size; drawn from the seed when `None`.
    pub nodes: Option<u64>,
    /// Keep an event trace to print.
    pub verbose: bool,
    /// Client operations to invoke; the profile's default when `None`.
    pub ops: Option<u64>,
    /// Search steps per key for the linearizability check; a default when `None`.
    pub lin_budget: Option<u64>,
    /// Lease reads: as the seed draws, always, or always and beyond the clock bound.
    pub lease: LeaseMode,
}

/// Overdue ticks delivered at once after a pause (as the Node driver does).
const MAX_CATCH_UP_TICKS: u32 = 100;

/// After healing, a leader every node follows must appear within this many (minimum)
/// election timeouts.
const LEADER_BOUND_ELECTIONS: u64 = 10;

/// Search steps per key the linearizability check may take by default.
pub const DEFAULT_LIN_BUDGET: u64 = 20_000_000;

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Client operations invoked.
    pub ops: u64,
    /// ... that returned a result.
    pub ops_ok: u64,
    /// ... that definitely failed.
    pub ops_failed: u64,
    /// ... whose outcome is unknown.
    pub ops_unknown: u64,
    /// Fault events injected.
    pub faults: u64,
    /// Fault events per kind (crashes that tore a write are counted apart).
    pub faults_by_kind: std::collections::BTreeMap<&'static str, u64>,
    /// Terms that had a leader.
    pub terms_with_leader: u64,
    /// Writes acknowledged to clients.
    pub acked_writes: u64,
    /// Virtual time simulated, in microseconds.
    pub virtual_us: u64,
    /// Virtual time from healing until a leader every node follows.
    pub leader_after_heal_us: Option<u64>,
    /// Virtual time from healing until a stable leader, caught-up nodes and every
    /// client operation finished.
    pub converged_after_heal_us: u64,
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// The profile drawn for it.
    pub profile: Profile,
    /// What happened.
    pub stats: Stats,
    /// Why it failed, if it did.
    pub failure: Option<String>,
    /// The event trace (with `verbose`).
    pub trace: Vec<String>,
    /// The client history, as checked for linearizability (with `verbose`).
    pub history: Vec<Operation>,
}

#[derive(Clone, Debug)]
enum Event {
    Tick {
        node: usize,
        inc: u64,
    },
    Deliver {
        from: usize,
        to: usize,
        msg: Message,
    },
    DiskDone {
        node: usize,
        inc: u64,
    },
    ClientArrive {
        node: usize,
        client: usize,
        seq: u64,
        attempt: u32,
    },
    ClientReply {
        client: usize,
        seq: u64,
        attempt: u32,
        reply: Reply,
    },
    ClientTimeout {
        client: usize,
        seq: u64,
        attempt: u32,
    },
    ClientNext {
        client: usize,
    },
    Nemesis,
    Undo(Undo),
    Restart {
        node: usize,
    },
    CrashNow {
        node: usize,
        inc: u64,
    },
    SnapshotBuilt {
        node: usize,
        inc: u64,
    },
    ChunkRead {
        node: usize,
        inc: u64,
        to: NodeId,
        id: u64,
        offset: u64,
        data: Option<Bytes>,
        last: bool,
    },
    Heal,
}

#[derive(Clone, Debug)]
enum Undo {
    Links(Vec<(usize, usize)>),
    Clock { node: usize },
}

impl Event {
    /// The node an event happens on, for pausing.
    fn node(&self) -> Option<usize> {
        match self {
            Event::Tick { node, .. }
            | Event::DiskDone { node, .. }
            | Event::SnapshotBuilt { node, .. }
            | Event::ChunkRead { node, .. }
            | Event::ClientArrive { node, .. } => Some(*node),
            Event::Deliver { to, .. } => Some(*to),
            _ => None,
        }
    }
}

struct Scheduled {
    time: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: the earliest event is the greatest.
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Faults,
    Liveness { since: u64, deadline: u64 },
}

/// Per-operation bookkeeping beside the history.
#[derive(Clone, Copy, Debug, Default)]
struct OpState {
    done: bool,
    failed: bool,
}

struct World {
    profile: Profile,
    rng: SimRng,
    now: u64,
    next_seq: u64,
    events: BinaryHeap<Scheduled>,
    nodes: Vec<SimNode>,
    net: Network,
    /// Servers that ever belonged to a configuration (ids are never reused: a removed
    /// server is never added again).
    ever_member: Vec<bool>,
    clients: Vec<Client>,
    history: Vec<Operation>,
    commands: Vec<ClientCommand>,
    op_state: Vec<OpState>,
    next_value: u64,
    checkers: Checkers,
    phase: Phase,
    stats: Stats,
    trace: Option<Vec<String>>,
    /// A client gives up an operation (outcome unknown) after trying this long.
    give_up_us: u64,
    lin_budget: u64,
    /// Crash the next node that becomes leader (leader churn).
    churn_armed: bool,
    /// Per node: the term in which it was last seen leading.
    led_term: Vec<Option<raft_proto::Term>>,
}

/// Runs one seed and reports what happened.
pub fn run_seed(opts: &SimOptions) -> SeedReport {
    let mut rng = SimRng::new(opts.seed);
    let mut profile = Profile::draw(&mut rng, opts.nodes, opts.lease);
    if let Some(ops) = opts.ops {
        profile.ops = ops;
    }
    let mut world = World::new(profile.clone(), rng, opts.verbose);
    world.lin_budget = opts.lin_budget.unwrap_or(DEFAULT_LIN_BUDGET);
    world.give_up_us = 20 * world.profile.election_us();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run()));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(v)) => Some(v.to_string()),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "panic".to_string());
            Some(format!("panic at t={}us: {msg}", world.now))
        }
    };
    world.stats.virtual_us = world.now;
    world.stats.terms_with_leader = world.checkers.election_safety.terms_with_leader() as u64;
    world.stats.acked_writes = world.checkers.acked_writes.count() as u64;
    SeedReport {
        seed: opts.seed,
        profile,
        stats: world.stats.clone(),
        failure,
        trace: world.trace.take().unwrap_or_default(),
        history: if opts.verbose {
            world.checked_history()
        } else {
            Vec::new()
        },
    }
}

impl World {
    fn new(profile: Profile, mut rng: SimRng, verbose: bool) -> World {
        let n = profile.nodes as usize;
        let ids: Vec<NodeId> = (1..=profile.nodes).map(NodeId).collect();
        let founders = profile.voters as usize;
        let membership = Membership::voters(ids[..founders].iter().copied());
        let snapshot = SnapshotMeta {
            last_log_id: LogId::ZERO,
            membership,
            id: 0,
        };
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let skew = 1.0 + (rng.unit() * 2.0 - 1.0) * profile.skew;
                let tick_us = ((profile.tick_us as f64) * skew).max(1.0) as u64;
                // Spares start empty and belong to no configuration until added.
                let start = if i < founders {
                    snapshot.clone()
                } else {
                    SnapshotMeta::default()
                };
                SimNode::new(id, start, tick_us)
            })
            .collect();
        let ever_member = (0..n).map(|i| i < founders).collect();
        let net = Network::new(
            n,
            profile.delay_us,
            profile.loss,
            profile.duplicate,
            rng.fork(),
        );
        let clients = (0..profile.clients).map(|_| Client::default()).collect();
        let mut world = World {
            profile,
            rng,
            now: 0,
            next_seq: 0,
            events: BinaryHeap::new(),
            nodes,
            net,
            ever_member,
            clients,
            history: Vec::new(),
            commands: Vec::new(),
            op_state: Vec::new(),
            next_value: 1,
            checkers: Checkers::default(),
            phase: Phase::Faults,
            stats: Stats::default(),
            trace: verbose.then(Vec::new),
            give_up_us: 0,
            lin_budget: DEFAULT_LIN_BUDGET,
            churn_armed: false,
            led_term: vec![None; n],
        };
        for i in 0..n {
            world
                .start_node(i)
                .unwrap_or_else(|v| panic!("node {i} cannot start: {v}"));
        }
        for c in 0..world.clients.len() {
            let at = world.think_time();
            world.schedule(at, Event::ClientNext { client: c });
        }
        let first = world.rng.range(0, world.profile.fault_interval_us);
        world.schedule(first, Event::Nemesis);
        world
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.events.push(Scheduled {
            time: self.now + delay,
            seq,
            event,
        });
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            let text = line();
            trace.push(format!("{:>10} {text}", self.now));
        }
    }

    /// The configuration to check durability against: the newest one on the most
    /// up-to-date disk, crashed servers included, which is what any future leader's
    /// election will use (a removed server with a stale log and an old configuration
    /// cannot win: every voter of the newer configurations has a longer log).
    fn current_config(&self) -> Membership {
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

    fn check_acked_durable(&self) -> Check {
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

    // ------------------------------------------------------------ main loop

    fn run(&mut self) -> Check {
        let hard_limit = self.profile.fault_phase_us * 20 + 600_000 * MS;
        while let Some(Scheduled { time, event, .. }) = self.events.pop() {
            if let Some(node) = event.node() {
                let paused_until = self.nodes[node].paused_until;
                if paused_until > time {
                    self.now = time;
                    self.schedule(paused_until - time, event);
                    continue;
                }
            }
            self.now = time;
            self.stats.events += 1;
            if self.trace.is_some() {
                let e = format!("{event:?}");
                self.log(|| e);
            }
            self.dispatch(event)?;
            if let Phase::Liveness { since, deadline } = self.phase {
                if self.stats.leader_after_heal_us.is_none() {
                    if self.stable_leader().is_some() {
                        self.stats.leader_after_heal_us = Some(self.now - since);
                    } else if self.now - since > LEADER_BOUND_ELECTIONS * self.profile.election_us()
                    {
                        return violation(
                            "Liveness",
                            format!(
                                "no leader followed by every node within {LEADER_BOUND_ELECTIONS} election timeouts of healing; {}",
                                self.liveness_report(since)
                            ),
                        );
                    }
                }
                if self.converged() {
                    self.stats.converged_after_heal_us = self.now - since;
                    return self.finish();
                }
                if self.now > deadline {
                    return violation("Liveness", self.liveness_report(since));
                }
            }
            if self.now > hard_limit {
                return violation("Liveness", "the run exceeded its time limit".to_string());
            }
        }
        violation("Liveness", "the event queue ran dry".to_string())
    }

    fn dispatch(&mut self, event: Event) -> Check {
        match event {
            Event::Tick { node, inc } => {
                if self.nodes[node].incarnation != inc || self.nodes[node].raft.is_none() {
                    return Ok(());
                }
                // As the Node driver: every tick due is delivered (after a pause, up
                // to MAX_CATCH_UP_TICKS at once; the rest dropped and the core told).
                let now = self.now;
                let n = &mut self.nodes[node];
                if let Some(raft) = &mut n.raft {
                    let mut ticks = 0;
                    while n.next_tick_at <= now && ticks < MAX_CATCH_UP_TICKS {
                        raft.tick();
                        n.next_tick_at += n.tick_us;
                        ticks += 1;
                    }
                    if n.next_tick_at <= now {
                        n.next_tick_at = now + n.tick_us;
                        raft.time_skipped();
                    }
                }
                let next = n.next_tick_at - now;
                self.schedule(next, Event::Tick { node, inc });
                self.drive(node)?;
                self.check_node(node)
            }
            Event::Deliver { from, to, msg } => {
                let from_id = self.nodes[from].id;
                let Some(raft) = &mut self.nodes[to].raft else {
                    return Ok(());
                };
                raft.step(from_id, msg);
                self.drive(to)?;
                self.check_node(to)
            }
            Event::DiskDone { node, inc } => self.disk_done(node, inc),
            Event::ClientArrive {
                node,
                client,
                seq,
                attempt,
            } => self.client_arrive(node, client, seq, attempt),
            Event::ClientReply {
                client,
                seq,
                attempt,
                reply,
            } => self.client_reply(client, seq, attempt, reply),
            Event::ClientTimeout {
                client,
                seq,
                attempt,
            } => {
                self.client_timeout(client, seq, attempt);
                Ok(())
            }
            Event::ClientNext { client } => {
                self.client_next(client);
                Ok(())
            }
            Event::Nemesis => self.nemesis(),
            Event::Undo(undo) => {
                self.undo(undo);
                Ok(())
            }
            Event::Restart { node } => self.restart(node),
            Event::SnapshotBuilt { node, inc } => self.snapshot_built(node, inc),
            Event::ChunkRead {
                node,
                inc,
                to,
                id,
                offset,
                data,
                last,
            } => {
                if self.nodes[node].incarnation != inc {
                    return Ok(());
                }
                if let Some(raft) = &mut self.nodes[node].raft {
                    raft.snapshot_chunk_read(to, id, offset, data, last);
                }
                self.drive(node)?;
                self.check_node(node)
            }
            Event::CrashNow { node, inc } => {
                if self.phase != Phase::Faults || self.nodes[node].incarnation != inc {
                    return Ok(());
                }
                *self
                    .stats
                    .faults_by_kind
                    .entry("crash mid-write")
                    .or_default() += 1;
                self.crash(node)?;
                let (lo, hi) = self.profile.fault_duration_us;
                let down = self.rng.range(lo / 4, hi);
                self.schedule(down, Event::Restart { node });
                Ok(())
            }
            Event::Heal => self.heal(),
        }
    }

    // ------------------------------------------------------------ nodes

    fn config(&mut self, node: usize) -> Config {
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

    fn start_node(&mut self, node: usize) -> Check {
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
        n.raft = Some(raft);
        let inc = n.incarnation;
        let first_tick = self.rng.range(1, self.nodes[node].tick_us);
        self.nodes[node].next_tick_at = self.now + first_tick;
        self.schedule(first_tick, Event::Tick { node, inc });
        self.drive(node)?;
        self.check_node(node)
    }

    fn restart(&mut self, node: usize) -> Check {
        if self.nodes[node].raft.is_some() {
            return Ok(());
        }
        self.log(|| format!("restart node {node}"));
        self.start_node(node)
    }

    fn crash(&mut self, node: usize) -> Check {
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
        let mut rng = self.rng.fork();
        self.nodes[node].crash(torn.then_some(&mut rng));
        self.checkers.leader_append_only.forget(id);
        self.checkers.leader_completeness.forget(id);
        self.check_acked_durable()
    }

    /// Carries out the node's actions in order; stops behind a write in flight.
    fn drive(&mut self, i: usize) -> Check {
        loop {
            let node = &mut self.nodes[i];
            let Some(raft) = node.raft.as_mut() else {
                return Ok(());
            };
            let mut ahead = Vec::new();
            while let Some(action) = raft.poll_action() {
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
                let blocked = in_flight.is_some() || !node.queue.is_empty();
                let writing_hard_state = in_flight.is_some_and(|p| p.hard_state.is_some());
                if blocked
                    && action.may_go_ahead(writing_hard_state, &node.queue)
                    && let Action::Send { to, message } = action
                {
                    ahead.push((to, message));
                } else {
                    Action::enqueue(&mut node.queue, action);
                }
            }
            for (to, message) in ahead {
                self.send(i, to, message);
            }
            let node = &mut self.nodes[i];
            if node.disk.in_flight.is_some() {
                return Ok(());
            }
            let Some(action) = node.queue.pop_front() else {
                return Ok(());
            };
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
                Action::Apply(entries) => self.apply(i, entries)?,
                Action::ReadReady { id, .. } => self.read_ready(i, id),
                Action::ReadFailed { id, error } => {
                    let ReadError::NotLeader(nl) = error else {
                        continue;
                    };
                    if let Some(r) = self.nodes[i].reads.remove(&id) {
                        self.reply(r.client, r.seq, r.attempt, Reply::NotLeader(nl.leader_hint));
                    }
                }
                Action::BuildSnapshot { meta } => self.build_snapshot(i, meta)?,
                Action::PurgeLog { up_to, base } => self.nodes[i].disk.purge(up_to, &base),
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
                    let latency = self.profile.disk_us.0;
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
                Action::WriteSnapshotChunk { meta, offset, data } => {
                    let node = &mut self.nodes[i];
                    if offset == 0 {
                        node.incoming = Some((meta.id, Vec::new()));
                    }
                    match &mut node.incoming {
                        Some((id, buf)) if *id == meta.id && buf.len() as u64 == offset => {
                            buf.extend_from_slice(&data);
                        }
                        other => {
                            let have = other.as_ref().map(|(id, buf)| (*id, buf.len()));
                            return violation(
                                "Snapshot transfer",
                                format!(
                                    "node {i} is told to store snapshot {} at {offset} but holds {have:?}",
                                    meta.id
                                ),
                            );
                        }
                    }
                }
                Action::InstallSnapshot { meta, discard_log } => {
                    self.install_snapshot(i, meta, discard_log)?
                }
            }
        }
    }

    /// Snapshots the store as of this point in the action order; it becomes durable
    /// after a disk write.
    fn build_snapshot(&mut self, i: usize, mut meta: SnapshotMeta) -> Check {
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

    fn snapshot_built(&mut self, i: usize, inc: u64) -> Check {
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

    fn install_snapshot(&mut self, i: usize, meta: SnapshotMeta, discard_log: bool) -> Check {
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

    fn send(&mut self, from: usize, to: NodeId, msg: Message) {
        let Some(to) = self.index_of(to) else { return };
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

    fn index_of(&self, id: NodeId) -> Option<usize> {
        let i = usize::try_from(id.0.checked_sub(1)?).ok()?;
        (i < self.nodes.len()).then_some(i)
    }

    fn disk_done(&mut self, node: usize, inc: u64) -> Check {
        let n = &mut self.nodes[node];
        if n.incarnation != inc {
            return Ok(());
        }
        let Some(p) = n.disk.in_flight.take() else {
            return Ok(());
        };
        n.disk.write(&p);
        if let (Some(last), Some(raft)) = (p.entries.last(), n.raft.as_mut()) {
            raft.persisted(last.log_id);
        }
        if p.truncate_from.is_some() {
            self.check_acked_durable()?;
        }
        self.drive(node)?;
        self.check_node(node)
    }

    fn apply(&mut self, i: usize, entries: Vec<Entry>) -> Check {
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
        if let (Some(last), Some(raft)) = (last, self.nodes[i].raft.as_mut()) {
            raft.applied(last);
        }
        Ok(())
    }

    fn decode(&self, bytes: &Bytes) -> Option<ClientCommand> {
        let raw: [u8; 8] = bytes.as_slice().try_into().ok()?;
        let op = usize::try_from(u64::from_le_bytes(raw)).ok()?;
        self.commands.get(op).cloned()
    }

    fn read_ready(&mut self, i: usize, id: ReadId) {
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

    fn observe_commit(&mut self, i: usize) -> Check {
        let Some(raft) = &self.nodes[i].raft else {
            return Ok(());
        };
        let before = self.checkers.monotonic.observe(i, raft)?;
        self.checkers.committed.observe(raft, before, &self.nodes)
    }

    /// Every per-node checker, after an event on node `i`.
    fn check_node(&mut self, i: usize) -> Check {
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

    // ------------------------------------------------------------ clients

    fn think_time(&mut self) -> u64 {
        match self.phase {
            Phase::Faults => {
                let mean = self.profile.fault_phase_us * self.profile.clients
                    / self.profile.ops.max(1)
                    * 4
                    / 5;
                self.rng.range(0, 2 * mean.max(1))
            }
            Phase::Liveness { .. } => self.rng.range(0, MS),
        }
    }

    fn client_next(&mut self, c: usize) {
        if self.clients[c].current.is_some() || self.stats.ops >= self.profile.ops {
            return;
        }
        let key = self.rng.range(0, self.profile.keys);
        let value = self.next_value;
        let roll = self.rng.range(0, 100);
        let op = match roll {
            0..35 => KvOp::Get,
            35..60 => {
                self.next_value += 1;
                KvOp::Put { value }
            }
            60..80 => {
                self.next_value += 1;
                KvOp::Append { value }
            }
            80..95 => {
                self.next_value += 1;
                let expected = self.clients[c].last_read.get(&key).cloned().unwrap_or(None);
                KvOp::Cas {
                    expected,
                    new: value,
                }
            }
            _ => KvOp::Delete,
        };
        let client = &mut self.clients[c];
        client.seq += 1;
        let seq = client.seq;
        let op_index = self.history.len();
        self.history.push(Operation {
            client: c as u64,
            key,
            op: op.clone(),
            invoke: self.now,
            outcome: Outcome::Unknown,
        });
        self.commands.push(ClientCommand {
            client: c as u64,
            seq,
            key,
            op,
        });
        self.op_state.push(OpState::default());
        self.stats.ops += 1;
        let target = match client.leader_guess {
            Some(t) => t,
            None => self.rng.range(0, self.nodes.len() as u64) as usize,
        };
        self.clients[c].current = Some(Current {
            op: op_index,
            attempt: 0,
            timeouts: 0,
            maybe_applied: false,
            target,
        });
        self.send_attempt(c);
    }

    fn send_attempt(&mut self, c: usize) {
        if let Some(cur) = self.clients[c].current {
            self.schedule_attempt(c, cur.target, cur.attempt, 0);
        }
    }

    /// Sends attempt `attempt` of client `c`'s operation to `target` after `delay`, and
    /// arms its timeout.
    fn schedule_attempt(&mut self, c: usize, target: usize, attempt: u32, delay: u64) {
        let seq = self.clients[c].seq;
        if let Some(d) = self.net.client_delay() {
            let arrive = Event::ClientArrive {
                node: target,
                client: c,
                seq,
                attempt,
            };
            self.schedule(delay + d, arrive);
        }
        let timeout = self.profile.client_timeout_us + delay;
        self.schedule(
            timeout,
            Event::ClientTimeout {
                client: c,
                seq,
                attempt,
            },
        );
    }

    /// Retries the current operation at `target` (a new attempt, same sequence number).
    fn retry(&mut self, c: usize, target: usize, delay: u64) {
        let Some(cur) = &mut self.clients[c].current else {
            return;
        };
        cur.attempt += 1;
        cur.target = target;
        let attempt = cur.attempt;
        let trying_for = self.now - self.history[cur.op].invoke;
        if trying_for > self.give_up_us && self.phase == Phase::Faults {
            self.finish_op(c, None);
            return;
        }
        self.schedule_attempt(c, target, attempt, delay);
    }

    fn client_arrive(&mut self, i: usize, c: usize, seq: u64, attempt: u32) -> Check {
        if !self.nodes[i].is_up(self.now) || self.clients[c].seq != seq {
            return Ok(());
        }
        let Some(cur) = self.clients[c].current else {
            return Ok(());
        };
        let cmd = self.commands[cur.op].clone();
        let node = &mut self.nodes[i];
        let Some(raft) = node.raft.as_mut() else {
            return Ok(());
        };
        let already_proposed = node
            .writes
            .values_mut()
            .find(|w| w.client == c && w.seq == seq && w.log_id.term == raft.term());
        let reply = if let Some(pending) = already_proposed.filter(|_| raft.role() == Role::Leader)
        {
            // This leader already has the operation in its log for this term: answer
            // the new attempt when that entry applies instead of appending a copy (a
            // retry storm would otherwise grow the log faster than it commits).
            pending.attempt = attempt;
            None
        } else if is_write(&cmd.op) {
            match raft.propose(Bytes::from((cur.op as u64).to_le_bytes().to_vec())) {
                Ok(log_id) => {
                    let old = node.writes.insert(
                        log_id.index,
                        PendingWrite {
                            log_id,
                            client: c,
                            seq,
                            attempt,
                        },
                    );
                    // An older proposal at this index was overwritten: it never applies.
                    old.map(|w| (w.client, w.seq, w.attempt, Reply::Retry))
                }
                Err(ProposeError::NotLeader(nl)) => {
                    Some((c, seq, attempt, Reply::NotLeader(nl.leader_hint)))
                }
                Err(_) => Some((c, seq, attempt, Reply::Retry)),
            }
        } else {
            let id = ReadId(node.next_read);
            node.next_read += 1;
            match raft.read_index(id) {
                Ok(()) => {
                    node.reads.insert(
                        id,
                        PendingRead {
                            client: c,
                            seq,
                            attempt,
                            key: cmd.key,
                        },
                    );
                    None
                }
                Err(ReadError::NotLeader(nl)) => {
                    Some((c, seq, attempt, Reply::NotLeader(nl.leader_hint)))
                }
                Err(_) => Some((c, seq, attempt, Reply::Retry)),
            }
        };
        if let Some((rc, rs, ra, r)) = reply {
            self.reply(rc, rs, ra, r);
        }
        self.drive(i)?;
        self.check_node(i)
    }

    fn reply(&mut self, c: usize, seq: u64, attempt: u32, reply: Reply) {
        if let Some(d) = self.net.client_delay() {
            self.schedule(
                d,
                Event::ClientReply {
                    client: c,
                    seq,
                    attempt,
                    reply,
                },
            );
        }
    }

    fn client_reply(&mut self, c: usize, seq: u64, attempt: u32, reply: Reply) -> Check {
        let client = &self.clients[c];
        let Some(cur) = client.current else {
            return Ok(());
        };
        if client.seq != seq {
            return Ok(());
        }
        match reply {
            Reply::Ok { output, log_id } => {
                if let Some(id) = log_id {
                    self.checkers
                        .acked_writes
                        .ack(id, &self.checkers.committed)?;
                }
                self.finish_op(c, Some(output));
            }
            // Only the answer to the current attempt redirects the client.
            Reply::NotLeader(hint) if attempt == cur.attempt => {
                let target = hint
                    .and_then(|h| self.index_of(h))
                    .filter(|&t| t != cur.target);
                let target = target.unwrap_or_else(|| self.other_node(cur.target));
                self.clients[c].leader_guess = hint.and_then(|h| self.index_of(h));
                let backoff = if hint.is_some() {
                    0
                } else {
                    self.rng.range(MS, 20 * MS)
                };
                self.retry(c, target, backoff);
            }
            Reply::Retry if attempt == cur.attempt => {
                let backoff = self.rng.range(MS, 20 * MS);
                self.retry(c, cur.target, backoff);
            }
            _ => {}
        }
        Ok(())
    }

    fn other_node(&mut self, not: usize) -> usize {
        let n = self.nodes.len() as u64;
        (not + 1 + self.rng.range(0, n - 1) as usize) % n as usize
    }

    fn client_timeout(&mut self, c: usize, seq: u64, attempt: u32) {
        let client = &mut self.clients[c];
        let Some(cur) = &mut client.current else {
            return;
        };
        if client.seq != seq || cur.attempt != attempt {
            return;
        }
        // The attempt may have reached a node and taken effect.
        cur.maybe_applied = true;
        cur.timeouts += 1;
        client.leader_guess = None;
        let (target, timeouts) = (cur.target, cur.timeouts);
        let other = self.other_node(target);
        // Exponential backoff with jitter: a congested cluster is not fed more retries.
        let cap = (10 * MS) << timeouts.min(6);
        let backoff = self.rng.range(0, cap);
        self.retry(c, other, backoff);
    }

    /// Ends the current operation: with its output, or (`None`) given up.
    fn finish_op(&mut self, c: usize, output: Option<KvOutput>) {
        let Some(cur) = self.clients[c].current.take() else {
            return;
        };
        let op = &mut self.history[cur.op];
        match output {
            Some(output) => {
                if let (KvOp::Get, KvOutput::Value(v)) = (&op.op, &output) {
                    self.clients[c].last_read.insert(op.key, v.clone());
                }
                let write = is_write(&op.op);
                op.outcome = Outcome::Ok {
                    ret: self.now,
                    output,
                };
                self.stats.ops_ok += 1;
                if write {
                    // Sessions: this write was applied, so the state machine now ignores
                    // every older sequence number of this client. Its earlier writes of
                    // unknown outcome took effect before now, or never will.
                    for earlier in std::mem::take(&mut self.clients[c].open_unknown) {
                        self.history[earlier].outcome = Outcome::MaybeBefore { ret: self.now };
                    }
                }
            }
            None if cur.maybe_applied && is_write(&op.op) => {
                self.stats.ops_unknown += 1;
                self.clients[c].open_unknown.push(cur.op);
            }
            None => {
                self.op_state[cur.op].failed = true;
                self.stats.ops_failed += 1;
            }
        }
        self.op_state[cur.op].done = true;
        let think = self.think_time();
        self.schedule(think, Event::ClientNext { client: c });
    }

    // ------------------------------------------------------------ nemesis

    fn nemesis(&mut self) -> Check {
        if self.phase != Phase::Faults {
            return Ok(());
        }
        self.stats.faults += 1;
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
        let (mean, jitter) = (
            self.profile.fault_interval_us,
            self.rng.range(0, self.profile.fault_interval_us),
        );
        if self.stats.faults < self.profile.fault_events {
            self.schedule(mean / 2 + jitter, Event::Nemesis);
        } else {
            // Let the last fault run its course, then heal.
            self.schedule(hi, Event::Heal);
        }
        Ok(())
    }

    fn cut_groups(&mut self, a: Vec<usize>, b: Vec<usize>, duration: u64, both_ways: bool) {
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

    fn cut_links(&mut self, links: Vec<(usize, usize)>, duration: u64) {
        for &(x, y) in &links {
            self.net.set_link(x, y, false);
        }
        self.schedule(duration, Event::Undo(Undo::Links(links)));
    }

    fn undo(&mut self, undo: Undo) {
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
    fn snapshot_loss_is_safe(&self, i: usize) -> bool {
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

    fn current_leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                n.raft
                    .as_ref()
                    .filter(|r| r.role() == Role::Leader)
                    .map(|r| (r.term(), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    // ------------------------------------------------------------ liveness

    fn heal(&mut self) -> Check {
        self.log(|| "heal: faults stop".to_string());
        self.net.heal_all();
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
    fn converged(&self) -> bool {
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
    fn stable_leader(&self) -> Option<&Raft> {
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

    fn members<'a>(&'a self, config: &'a Membership) -> impl Iterator<Item = &'a SimNode> + 'a {
        self.nodes.iter().filter(move |n| config.contains(n.id))
    }

    /// Asks the leader for a random membership change; refusals (a change in
    /// progress, a learner still behind, ...) are part of the test.
    fn membership_change(&mut self) -> Check {
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

    fn liveness_report(&self, since: u64) -> String {
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

    /// The history the linearizability check sees: definitely failed operations and
    /// reads of unknown outcome (which have no effect) are left out.
    fn checked_history(&self) -> Vec<Operation> {
        self.history
            .iter()
            .zip(&self.op_state)
            .filter(|(op, st)| {
                let read_without_answer =
                    op.op == KvOp::Get && !matches!(op.outcome, Outcome::Ok { .. });
                !(st.failed || read_without_answer)
            })
            .map(|(op, _)| op.clone())
            .collect()
    }

    fn finish(&mut self) -> Check {
        let config = self
            .stable_leader()
            .map(|l| l.membership().clone())
            .unwrap_or_default();
        self.checkers
            .acked_writes
            .check_everywhere(&self.nodes, &config)?;
        let history = self.checked_history();
        match linearizability::check(&history, self.lin_budget) {
            CheckResult::Linearizable => Ok(()),
            CheckResult::NotLinearizable { key, ops, detail } => {
                let mut text = format!("key {key}: {detail}; operations:");
                for &i in ops.iter().take(40) {
                    let _ = write!(text, "\n    {:?}", history[i]);
                }
                Err(Violation {
                    property: "Linearizability",
                    detail: text,
                })
            }
            CheckResult::Inconclusive {
                key,
                steps,
                memo_bytes,
            } => {
                let on_key: Vec<&Operation> = history.iter().filter(|op| op.key == key).collect();
                let unknown = on_key
                    .iter()
                    .filter(|op| op.outcome == Outcome::Unknown)
                    .count();
                let bounded = on_key
                    .iter()
                    .filter(|op| matches!(op.outcome, Outcome::MaybeBefore { .. }))
                    .count();
                Err(Violation {
                    property: "Linearizability (inconclusive)",
                    detail: format!(
                        "the search for key {key} ({} operations, {unknown} of unknown outcome, {bounded} \
                         that took effect before a known time or never) gave up after {steps} \
                         steps, its memo at {memo_bytes} bytes: neither pass nor fail",
                        on_key.len()
                    ),
                })
            }
        }
    }
}

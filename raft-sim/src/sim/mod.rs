//! The world: nodes, network, clients and nemesis on one virtual clock, driven by one
//! seed. [`run_seed`] runs a safety phase under faults, then a liveness phase on a
//! healed network, then checks the client history for linearizability.
//!
//! This file holds the world's state, its event queue and the main loop that
//! dispatches each event; the jobs the events lead to live beside it:
//!
//! - `options` and `report`: what a run is asked to do and what it reports;
//! - `driver`: each node's actions carried out on its simulated disk, network and
//!   state machine, as the shipped `Node` driver does, with the checkers after each;
//! - `clients`: the clients that invoke, retry and record operations;
//! - `nemesis`: the faults (partitions, crashes, pauses, clock skew, membership
//!   changes, snapshot damage) and their undoing;
//! - `targeted`: the targeted nemeses (issue 19: faults aimed at bug classes the
//!   random ones find rarely) and the checks that go with them;
//! - `liveness`: healing, and what the cluster must reach afterwards;
//! - `final_check`: the end-of-run checks (acknowledged writes, linearizability).

mod clients;
mod driver;
mod final_check;
mod liveness;
mod nemesis;
mod options;
mod report;
mod targeted;

pub use options::{DEFAULT_LIN_BUDGET, DEFAULT_MAX_EVENTS, DEFAULT_MAX_WALL, SimOptions};
pub use report::{SeedReport, Stats};
pub use targeted::Nemeses;

use crate::checkers::{Check, Checkers, Violation, violation};
use crate::client::{Client, Reply};
use crate::kv::ClientCommand;
use crate::linearizability::Operation;
use crate::net::Network;
use crate::node::SimNode;
use crate::profile::{MS, Profile};
use crate::rng::SimRng;
use raft_core::Role;
use raft_proto::{Bytes, LogId, Membership, Message, NodeId, SnapshotMeta};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Overdue ticks delivered at once after a pause (as the Node driver does).
const MAX_CATCH_UP_TICKS: u32 = 100;

/// After healing, a leader every node follows must appear within this many (minimum)
/// election timeouts.
const LEADER_BOUND_ELECTIONS: u64 = 10;

/// The wall clock is read once per this many events (reading it costs more than most
/// events).
const WALL_CHECK_EVENTS: u64 = 256;

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
    /// The state machine finishes its next job.
    StateMachineStep {
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
    Targeted(targeted::TargetedEvent),
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
            | Event::StateMachineStep { node, .. }
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
    /// The per-seed budget: events, and wall-clock time since `started`.
    max_events: u64,
    max_wall: Duration,
    started: Instant,
    /// The targeted nemeses' state and checks; `None` with `Nemeses::Base`.
    targeted: Option<Box<targeted::Targeted>>,
}

/// Runs one seed and reports what happened.
pub fn run_seed(opts: &SimOptions) -> SeedReport {
    let started = Instant::now();
    let mut rng = SimRng::new(opts.seed);
    let mut profile = Profile::draw(&mut rng, opts.nodes, opts.lease);
    if let Some(ops) = opts.ops {
        profile.ops = ops;
    }
    if opts.in_order {
        profile.apply_us = None;
    }
    // Starting the nodes runs their first actions through the checkers, which may panic.
    let setup = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        World::new(profile.clone(), rng, opts.verbose, opts.nemeses)
    }));
    let mut world = match setup {
        Ok(world) => world,
        Err(panic) => {
            let failure = format!(
                "panic while starting the cluster: {}",
                panic_message(&*panic)
            );
            return SeedReport {
                seed: opts.seed,
                profile,
                stats: Stats::default(),
                trace: Vec::new(),
                history: Vec::new(),
                digest: report::digest_of_failure(&failure),
                failure: Some(failure),
                wall: started.elapsed(),
            };
        }
    };
    world.lin_budget = opts.lin_budget.unwrap_or(DEFAULT_LIN_BUDGET);
    world.give_up_us = 20 * world.profile.election_us();
    (world.max_events, world.max_wall, world.started) =
        (opts.max_events(), opts.max_wall(), started);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run()));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(v)) => Some(v.to_string()),
        Err(panic) => Some(format!(
            "panic at t={}us: {}",
            world.now,
            panic_message(&*panic)
        )),
    };
    // The event loop stops a seed that runs out of time; this also counts the final
    // checks (the linearizability search has its own step budget).
    let wall = started.elapsed();
    let failure = failure
        .or_else(|| (wall > world.max_wall).then(|| world.wall_budget_exceeded(wall).to_string()));
    world.stats.virtual_us = world.now;
    world.stats.terms_with_leader = world.checkers.election_safety.terms_with_leader() as u64;
    world.stats.acked_writes = world.checkers.acked_writes.count() as u64;
    SeedReport {
        seed: opts.seed,
        profile,
        stats: world.stats.clone(),
        trace: world.trace.take().unwrap_or_default(),
        history: if opts.verbose {
            world.checked_history()
        } else {
            Vec::new()
        },
        digest: world.digest(failure.as_deref()),
        failure,
        wall,
    }
}

/// The message a panic carried.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "panic".to_string())
}

impl World {
    fn new(profile: Profile, mut rng: SimRng, verbose: bool, nemeses: targeted::Nemeses) -> World {
        let beyond_bound = profile.lease.as_ref().is_some_and(|l| l.beyond_bound);
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
            max_events: DEFAULT_MAX_EVENTS,
            max_wall: DEFAULT_MAX_WALL,
            started: Instant::now(),
            // Beyond the lease bound the fault kinds are the three that make a lease
            // outlive its leadership; targeted faults would only dilute them.
            targeted: (nemeses != targeted::Nemeses::Base).then(|| {
                Box::new(targeted::Targeted::new(
                    n,
                    nemeses == targeted::Nemeses::All && !beyond_bound,
                ))
            }),
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
            self.check_budget()?;
            if self.trace.is_some() {
                let e = format!("{event:?}");
                self.log(|| e);
            }
            self.dispatch(event)?;
            self.targeted_after_event()?;
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

    /// Fails the seed once it has used up its event or wall-clock budget: a storm of
    /// events must end as a failure with a replay command, not stall the run.
    fn check_budget(&self) -> Check {
        let events = self.stats.events;
        if events > self.max_events {
            return Err(Violation {
                property: "Per-seed budget",
                detail: format!(
                    "more than {} events by t={}us ({} client operations invoked, {} faults): \
                     an event or message storm",
                    self.max_events, self.now, self.stats.ops, self.stats.faults
                ),
            });
        }
        if events.is_multiple_of(WALL_CHECK_EVENTS) {
            let wall = self.started.elapsed();
            if wall > self.max_wall {
                return Err(self.wall_budget_exceeded(wall));
            }
        }
        Ok(())
    }

    fn wall_budget_exceeded(&self, wall: Duration) -> Violation {
        Violation {
            property: "Per-seed budget",
            detail: format!(
                "{} ms of wall-clock time, over the budget of {} ms, after {} events (t={}us); \
                 the time depends on the machine, the events do not: replay with \
                 --max-events {} to fail at the same point",
                wall.as_millis(),
                self.max_wall.as_millis(),
                self.stats.events,
                self.now,
                self.stats.events
            ),
        }
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
                let pre_vote = self.pre_vote_before(to, &msg);
                let Some(raft) = &mut self.nodes[to].raft else {
                    return Ok(());
                };
                raft.step(from_id, msg);
                self.pre_vote_after(from, to, pre_vote)?;
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
            Event::StateMachineStep { node, inc } => self.state_machine_step(node, inc),
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
            Event::Targeted(e) => self.targeted_event(e),
        }
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
}

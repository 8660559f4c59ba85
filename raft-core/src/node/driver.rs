//! The driver task: feeds inputs to the `Raft` and carries out its actions in order.

use super::apply::{ApplyTask, Job, Waiter};
use super::event::{Event, FatalError};
use super::watch::Publisher;
use super::{ChangeReply, Command, Environment, Metrics, NodeState, ProposeReply};
use crate::action::Action;
use crate::config::ReadMode;
use crate::error::{NotLeader, ProposeError, ReadError};
use crate::membership::MembershipError;
use crate::raft::{Raft, Role};
use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use raft_proto::{EntryPayload, LogId, LogIndex, Message, NodeId, ReadId};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Inputs taken per source per wake-up, so no source starves the others.
const BATCH: usize = 4096;

/// Overdue ticks delivered at once after a stall; the rest are dropped.
const MAX_CATCH_UP_TICKS: u32 = 100;

pub(crate) fn spawn(
    raft: Raft,
    tick: Duration,
    env: Environment,
    commands: mpsc::UnboundedReceiver<Command>,
    queued: Arc<AtomicUsize>,
    metrics: Publisher<Metrics>,
) {
    let (events_tx, events) = mpsc::unbounded();
    let apply_tx = ApplyTask::spawn(
        env.state_machine.clone(),
        env.runtime.clone(),
        events_tx.clone(),
    );
    let next_tick = env.runtime.now() + tick;
    let runtime = env.runtime.clone();
    let machine_applied = raft.status().applied;
    let driver = Driver {
        raft,
        env_log: env.log,
        state_machine: env.state_machine,
        transport: env.transport,
        runtime: env.runtime,
        commands,
        queued,
        incoming: Some(env.incoming),
        events,
        events_tx,
        apply_tx,
        tick,
        next_tick,
        timer: None,
        proposals: BTreeMap::new(),
        changes: BTreeMap::new(),
        reads: HashMap::new(),
        next_read: 0,
        metrics,
        shutdown: None,
        fatal: None,
        blocked: None,
        blocked_on_hard_state: false,
        waiting: VecDeque::new(),
        machine_applied,
        #[cfg(debug_assertions)]
        contract: crate::contract::ContractCheck::new(machine_applied),
    };
    runtime.spawn(driver.run().boxed());
}

pub(crate) struct Driver {
    raft: Raft,
    env_log: Arc<dyn super::LogStore>,
    state_machine: Arc<dyn super::StateMachine>,
    transport: Arc<dyn super::Transport>,
    runtime: Arc<dyn super::Runtime>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Proposals and reads sent by `Node` handles and not yet taken here.
    queued: Arc<AtomicUsize>,
    incoming: Option<BoxStream<'static, (NodeId, Message)>>,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
    apply_tx: mpsc::UnboundedSender<Job>,
    tick: Duration,
    next_tick: Instant,
    timer: Option<BoxFuture<'static, ()>>,
    /// Proposals waiting for their entry to be applied, by index.
    proposals: BTreeMap<LogIndex, (LogId, ProposeReply)>,
    /// Membership changes waiting for their entry to be applied, by index.
    changes: BTreeMap<LogIndex, (LogId, ChangeReply)>,
    reads: HashMap<ReadId, oneshot::Sender<Result<LogIndex, ReadError>>>,
    next_read: u64,
    metrics: Publisher<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    fatal: Option<FatalError>,
    /// The storage step in flight (a log write, a purge, a snapshot install): the
    /// actions in `waiting` are carried out after it.
    blocked: Option<Pending>,
    /// The step in flight writes a new term or vote.
    blocked_on_hard_state: bool,
    /// Actions taken from the core while a storage step is in flight, in order.
    waiting: VecDeque<Action>,
    /// What the state machine has applied, as its task reported. The core counts a
    /// snapshot as applied when it asks for the install; the metrics wait for the
    /// install itself, as they promise "what its state machine has applied".
    machine_applied: LogIndex,
    /// Debug builds check every action against the ordering contract.
    #[cfg(debug_assertions)]
    contract: crate::contract::ContractCheck,
}

/// A storage step the driver waits for before it carries out later actions.
type Pending = BoxFuture<'static, Result<Done, FatalError>>;

/// What a finished storage step tells the driver.
enum Done {
    /// A log write finished; the last entry it held, if any.
    Written(Option<LogId>),
    /// The log was purged behind a snapshot.
    Purged,
    /// A snapshot was installed and the log fixed behind it, up to this index.
    Installed(LogIndex),
}

impl Driver {
    async fn run(mut self) {
        loop {
            self.carry_out();
            if self.fatal.is_some() || self.shutdown.is_some() {
                break;
            }
            self.publish(NodeState::Running);
            futures::future::poll_fn(|cx| self.poll_inputs(cx)).await;
        }
        // A clean stop carries out what is queued first, as a node without a driver
        // task would have: writes finish, answers go out.
        while self.fatal.is_none() {
            let Some(step) = self.blocked.take() else {
                break;
            };
            let done = step.await;
            self.finished(done);
            self.carry_out();
        }
        self.stop().await;
    }

    /// Takes every input that is ready; pending only if none is.
    ///
    /// The order matters after a stall (a long write, a starved CPU). By default the
    /// messages that queued up meanwhile are taken before the overdue ticks, so a
    /// follower reads its leader's heartbeats before its election timer fires, and a
    /// leader its followers' answers before CheckQuorum. With lease reads the clock is
    /// caught up first instead: a read must never be checked against a lease measured
    /// on a clock that is behind.
    fn poll_inputs(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let lease = matches!(self.raft.config().read_mode, ReadMode::LeaseBased { .. });
        let mut ready = false;
        if let Some(step) = &mut self.blocked
            && let Poll::Ready(done) = step.poll_unpin(cx)
        {
            self.blocked = None;
            self.finished(done);
            ready = true;
        }
        if lease {
            ready |= self.poll_timer(cx);
        }
        for _ in 0..BATCH {
            match self.events.poll_next_unpin(cx) {
                Poll::Ready(Some(event)) => {
                    ready = true;
                    self.on_event(event);
                }
                _ => break,
            }
        }
        if let Some(incoming) = &mut self.incoming {
            for _ in 0..BATCH {
                match incoming.poll_next_unpin(cx) {
                    Poll::Ready(Some((from, message))) => {
                        ready = true;
                        self.raft.step(from, message);
                    }
                    Poll::Ready(None) => {
                        tracing::warn!(node = %self.raft.id(), "the transport closed its incoming stream");
                        self.incoming = None;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        // Commands wait while a storage step is in flight: they queue in the channel
        // (bounded by `max_queued_commands`, beyond which callers are refused) and go
        // into the next write together. Messages and ticks are still taken.
        let commands = if self.blocked.is_none() { BATCH } else { 0 };
        for _ in 0..commands {
            match self.commands.poll_next_unpin(cx) {
                Poll::Ready(Some(command)) => {
                    ready = true;
                    self.on_command(command);
                }
                Poll::Ready(None) => {
                    // Every handle is gone: nobody can use or stop this node but us.
                    let (tx, _) = oneshot::channel();
                    self.shutdown = Some(tx);
                    return Poll::Ready(());
                }
                Poll::Pending => break,
            }
        }
        if !lease {
            ready |= self.poll_timer(cx);
        }
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Delivers the ticks that are due: after a stall, up to `MAX_CATCH_UP_TICKS` at
    /// once; beyond that the rest are dropped and the core told (its lease is void).
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let timer = self.timer.get_or_insert_with(|| {
            let now = self.runtime.now();
            self.runtime
                .sleep(self.next_tick.saturating_duration_since(now))
        });
        if timer.poll_unpin(cx).is_pending() {
            return false;
        }
        self.timer = None;
        let now = self.runtime.now();
        let mut ticks = 0;
        while self.next_tick <= now && ticks < MAX_CATCH_UP_TICKS {
            self.raft.tick();
            self.next_tick += self.tick;
            ticks += 1;
        }
        if self.next_tick <= now {
            self.next_tick = now + self.tick;
            self.raft.time_skipped();
        }
        true
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Applied(index) => {
                self.machine_applied = index;
                #[cfg(debug_assertions)]
                self.contract.applied(index);
                self.raft.applied(index);
            }
            Event::SnapshotBuilt(meta) => self.raft.snapshot_built(meta),
            Event::ChunkRead {
                to,
                id,
                offset,
                data,
                last,
            } => self.raft.snapshot_chunk_read(to, id, offset, data, last),
            Event::Fatal(e) => self.fatal = Some(e),
        }
    }

    fn on_command(&mut self, command: Command) {
        if matches!(command, Command::Propose(..) | Command::Read(_)) {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        match command {
            Command::Propose(data, reply) => match self.raft.propose(data) {
                Ok(id) => {
                    self.proposals.insert(id.index, (id, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Read(reply) => {
                let id = ReadId(self.next_read);
                self.next_read += 1;
                match self.raft.read_index(id) {
                    Ok(()) => {
                        self.reads.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Change(change, reply) => match self.raft.change_membership(change) {
                Ok(id) => {
                    self.changes.insert(id.index, (id, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Transfer(to, reply) => {
                let _ = reply.send(self.raft.transfer_leader(to));
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(self.raft.trigger_snapshot());
            }
            Command::Shutdown(reply) => self.shutdown = Some(reply),
        }
    }

    /// Carries out the core's actions in order, without waiting: a storage step (log
    /// write, purge, snapshot install) is started and the actions after it wait in
    /// `waiting` until it finishes, while the driver goes on taking inputs. A leader's
    /// appends and heartbeats go ahead of the waiting actions when the contract allows
    /// (see [`Action`]), so a slow disk does not silence the leader and cost it its
    /// followers.
    fn carry_out(&mut self) {
        loop {
            if self.fatal.is_some() {
                // Nothing more: an answer queued behind a failed write must not go out.
                return;
            }
            while self.blocked.is_none() && self.fatal.is_none() {
                let Some(action) = self.waiting.pop_front() else {
                    break;
                };
                self.execute(action);
            }
            let Some(action) = self.raft.poll_action() else {
                return;
            };
            #[cfg(debug_assertions)]
            self.contract.polled(&action);
            if (self.blocked.is_none() && self.waiting.is_empty())
                || action.may_go_ahead(self.blocked_on_hard_state, &self.waiting)
            {
                self.execute(action);
            } else {
                Action::enqueue(&mut self.waiting, action);
            }
        }
    }

    /// The storage step in flight finished.
    fn finished(&mut self, done: Result<Done, FatalError>) {
        self.blocked_on_hard_state = false;
        #[cfg(debug_assertions)]
        if let Ok(done) = &done {
            self.contract.finished(match done {
                Done::Installed(index) => Some(*index),
                Done::Written(_) | Done::Purged => None,
            });
        }
        match done {
            Ok(Done::Written(Some(last))) => self.raft.persisted(last),
            Ok(Done::Written(None) | Done::Purged) => {}
            Ok(Done::Installed(index)) => {
                self.machine_applied = index;
                self.drop_covered_waiters(index);
            }
            Err(e) => {
                tracing::error!(node = %self.raft.id(), error = %e, "storage failed; stopping the node");
                self.fatal = Some(e);
            }
        }
    }

    /// Carries out one action; a storage step becomes `blocked`.
    fn execute(&mut self, action: Action) {
        #[cfg(debug_assertions)]
        if let Err(e) = self.contract.started(&action) {
            panic!("node {}: {e}", self.raft.id());
        }
        match action {
            Action::Send { to, message } => {
                if matches!(
                    message,
                    Message::InstallSnapshot(_) | Message::InstallSnapshotResponse(_)
                ) {
                    self.transport.send_snapshot(to, message);
                } else {
                    self.transport.send(to, message);
                }
            }
            Action::Persist(batch) => {
                let log = self.env_log.clone();
                let last = batch.entries.last().map(|e| e.log_id);
                self.blocked_on_hard_state = batch.hard_state.is_some();
                self.blocked = Some(
                    async move {
                        log.write(&batch)
                            .await
                            .map(|()| Done::Written(last))
                            .map_err(|e| FatalError::Log(Arc::new(e)))
                    }
                    .boxed(),
                );
            }
            Action::Apply(entries) => {
                let waiters = self.waiters_for(&entries);
                self.hand_to_apply(Job::Apply { entries, waiters });
            }
            Action::ReadReady { id, index } => {
                if let Some(reply) = self.reads.remove(&id) {
                    let _ = reply.send(Ok(index));
                }
            }
            Action::ReadFailed { id, error } => {
                if let Some(reply) = self.reads.remove(&id) {
                    let _ = reply.send(Err(error));
                }
            }
            Action::BuildSnapshot { meta } => self.hand_to_apply(Job::BuildSnapshot(meta)),
            Action::PurgeLog { up_to, base } => {
                let log = self.env_log.clone();
                self.blocked = Some(
                    async move {
                        log.purge(up_to, &base)
                            .await
                            .map(|()| Done::Purged)
                            .map_err(|e| FatalError::Log(Arc::new(e)))
                    }
                    .boxed(),
                );
            }
            Action::ReadSnapshotChunk {
                to,
                meta,
                offset,
                len,
            } => {
                let (sm, events) = (self.state_machine.clone(), self.events_tx.clone());
                self.runtime.spawn(
                    async move {
                        let event = match sm.read_snapshot(meta.id, offset, len).await {
                            Ok(Some((data, last))) => Event::ChunkRead {
                                to,
                                id: meta.id,
                                offset,
                                data: Some(data),
                                last,
                            },
                            Ok(None) => Event::ChunkRead {
                                to,
                                id: meta.id,
                                offset,
                                data: None,
                                last: false,
                            },
                            Err(e) => Event::Fatal(FatalError::ReadSnapshot(Arc::new(e))),
                        };
                        let _ = events.unbounded_send(event);
                    }
                    .boxed(),
                );
            }
            Action::WriteSnapshotChunk { meta, offset, data } => {
                self.hand_to_apply(Job::Receive { meta, offset, data })
            }
            Action::InstallSnapshot { meta, discard_log } => {
                // In order and durable before anything after it: the apply task
                // installs, then the log is fixed.
                let (done, installed) = oneshot::channel();
                let last = meta.last_log_id;
                self.hand_to_apply(Job::Install {
                    meta: meta.clone(),
                    done,
                });
                let log = self.env_log.clone();
                self.blocked = Some(
                    async move {
                        match installed.await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return Err(FatalError::InstallSnapshot(Arc::new(e))),
                            Err(_) => return Err(FatalError::ApplyTaskStopped),
                        }
                        let fixed = if discard_log {
                            log.reset(&meta).await
                        } else {
                            log.purge(last, &meta).await
                        };
                        fixed.map_err(|e| FatalError::Log(Arc::new(e)))?;
                        Ok(Done::Installed(last.index))
                    }
                    .boxed(),
                );
            }
        }
    }

    fn publish(&self, state: NodeState) {
        let mut metrics = metrics_of(&self.raft, state);
        metrics.applied = metrics.applied.min(self.machine_applied);
        self.metrics.publish(metrics);
    }

    fn hand_to_apply(&mut self, job: Job) {
        if self.apply_tx.unbounded_send(job).is_err() {
            self.fatal = Some(FatalError::ApplyTaskStopped);
        }
    }

    /// Matches the entries about to be applied with the clients waiting for them. A
    /// waiter whose index now holds a different entry lost it to a new leader: that
    /// command did not take effect.
    fn waiters_for(&mut self, entries: &[raft_proto::Entry]) -> Vec<Waiter> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Vec::new();
        };
        let (first, last) = (first.log_id.index, last.log_id.index);
        let hint = self.hint();
        let mut waiters = Vec::new();
        let later = self.proposals.split_off(&last.next());
        for (index, (id, reply)) in std::mem::replace(&mut self.proposals, later) {
            match entries.get(index.distance_from(first) as usize) {
                Some(e) if index >= first && e.log_id == id => {
                    waiters.push(Waiter::Propose(index, reply))
                }
                Some(_) if index >= first => {
                    let _ = reply.send(Err(ProposeError::Dropped(hint)));
                }
                _ => {
                    let _ = reply.send(Err(ProposeError::Indeterminate));
                }
            }
        }
        let later = self.changes.split_off(&last.next());
        for (index, (id, reply)) in std::mem::replace(&mut self.changes, later) {
            match entries.get(index.distance_from(first) as usize) {
                Some(e)
                    if index >= first
                        && e.log_id == id
                        && matches!(e.payload, EntryPayload::Membership(_)) =>
                {
                    waiters.push(Waiter::Change(id, reply))
                }
                Some(_) if index >= first => {
                    let _ = reply.send(Err(MembershipError::Dropped));
                }
                _ => {
                    let _ = reply.send(Err(MembershipError::Indeterminate));
                }
            }
        }
        waiters
    }

    /// After a snapshot replaced the log up to `index`, waiters at or below it cannot
    /// learn whether their entry was in it.
    fn drop_covered_waiters(&mut self, index: LogIndex) {
        let later = self.proposals.split_off(&index.next());
        for (_, (_, reply)) in std::mem::replace(&mut self.proposals, later) {
            let _ = reply.send(Err(ProposeError::Indeterminate));
        }
        let later = self.changes.split_off(&index.next());
        for (_, (_, reply)) in std::mem::replace(&mut self.changes, later) {
            let _ = reply.send(Err(MembershipError::Indeterminate));
        }
    }

    fn hint(&self) -> NotLeader {
        self.raft.not_leader()
    }

    async fn stop(mut self) {
        let reason = self.fatal.take();
        // Let the apply task finish what it has, so storage ends consistent.
        let (done, drained) = oneshot::channel();
        if self.apply_tx.unbounded_send(Job::Stop(done)).is_ok() {
            let _ = drained.await;
        }
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            let _ = reply.send(Err(ProposeError::Stopped));
        }
        for (_, (_, reply)) in std::mem::take(&mut self.changes) {
            let _ = reply.send(Err(MembershipError::Stopped));
        }
        for (_, reply) in self.reads.drain() {
            let _ = reply.send(Err(ReadError::Stopped));
        }
        self.publish(NodeState::Stopped(reason));
        if let Some(reply) = self.shutdown.take() {
            let _ = reply.send(());
        }
        tracing::info!(node = %self.raft.id(), "stopped");
    }
}

pub(crate) fn metrics_of(raft: &Raft, state: NodeState) -> Metrics {
    let status = raft.status();
    let replication = if status.role == Role::Leader {
        raft.membership()
            .members()
            .filter_map(|m| raft.progress(m).map(|p| (m, p.match_index)))
            .collect()
    } else {
        BTreeMap::new()
    };
    Metrics {
        id: status.id,
        state,
        role: status.role,
        term: status.term,
        leader: status.leader,
        last_log_id: status.last_log_id,
        committed: status.committed,
        applied: status.applied,
        snapshot: raft.log().snapshot().last_log_id,
        membership: raft.membership().clone(),
        replication,
        state_lost: status.state_lost,
    }
}

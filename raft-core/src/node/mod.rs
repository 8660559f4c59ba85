//! The async `Node`: a [`Raft`] driven over a [`LogStore`], a
//! [`StateMachine`], a [`Transport`] and a [`Runtime`].
//!
//! One driver task owns the `Raft`. Each time it wakes it takes everything queued
//! (client commands, messages, storage and state-machine completions, clock ticks),
//! feeds it to the core, and carries out the resulting actions in order: sends go to
//! the transport at once; a log write, purge or snapshot install is started, and the
//! actions after it wait until it finishes while the driver keeps taking messages and
//! ticks (a leader's appends and heartbeats go ahead, so a slow disk does not cost it
//! its followers; commands wait in their channel and are batched into the next
//! write); applies and snapshot builds go, in order, to an apply task that answers
//! clients. A storage error stops the node.
//!
//! Implementing the traits: see the [guide](crate::guide) (what each must guarantee,
//! the conformance suites, and examples with a state machine of your own).
//!
//! ```no_run
//! # async fn demo(env: raft_core::node::Environment) -> Result<(), Box<dyn std::error::Error>> {
//! use raft_core::node::{Node, NodeOptions};
//! use raft_core::Config;
//! use raft_proto::{Membership, NodeId};
//!
//! let options = NodeOptions::new(Membership::voters([NodeId(1), NodeId(2), NodeId(3)]));
//! let node = Node::start(Config::new(NodeId(1)), options, env).await?;
//! let response = node.propose("set x 1".into()).await?; // committed and applied
//! node.read().await?; // the state machine now reflects every write acknowledged so far
//! node.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod apply;
mod driver;
mod event;
mod traits;
mod watch;

pub use event::FatalError;
pub use traits::{
    LogStore, MachineState, Runtime, SnapshotTask, StateMachine, StorageError, StoredLog, Transport,
};
pub use watch::Watch;

use crate::Config;
use crate::error::{NotLeader, ProposeError, ReadError, TransferError};
use crate::membership::{ConfChange, MembershipError};
use crate::raft::{Raft, Role};
use crate::restore::{Restore, Stored};
use futures::channel::{mpsc, oneshot};
use futures::stream::BoxStream;
use raft_proto::{Bytes, LogId, LogIndex, Membership, Message, NodeId, Term};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Everything a node runs on.
pub struct Environment {
    /// Durable log storage.
    pub log: Arc<dyn LogStore>,
    /// The replicated state machine.
    pub state_machine: Arc<dyn StateMachine>,
    /// Outgoing messages.
    pub transport: Arc<dyn Transport>,
    /// Incoming messages, with their senders.
    pub incoming: BoxStream<'static, (NodeId, Message)>,
    /// Spawn, sleep, now.
    pub runtime: Arc<dyn Runtime>,
}

/// How a node runs, beyond the core's [`Config`].
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Wall-clock length of one logical tick (default 10 ms, so the default 10-tick
    /// election timeout is 100–200 ms).
    pub tick: Duration,
    /// The founding members, used when the node starts with empty storage (`None`
    /// for a node that will be added to an existing cluster). Every founder must be
    /// given the same set.
    pub initial_members: Option<Membership>,
    /// Proposals and reads waiting for the driver, at most (default 65,536): beyond
    /// this they are refused at once (`Overloaded`) instead of queueing without bound
    /// while the driver is behind (a stalled disk, a starved CPU).
    pub max_queued_commands: usize,
}

impl NodeOptions {
    /// Options for a founding member of a cluster of `members`.
    pub fn new(members: Membership) -> NodeOptions {
        NodeOptions {
            tick: Duration::from_millis(10),
            initial_members: Some(members),
            max_queued_commands: 1 << 16,
        }
    }

    /// Options for a node that joins an existing cluster later.
    pub fn joining() -> NodeOptions {
        NodeOptions {
            tick: Duration::from_millis(10),
            initial_members: None,
            max_queued_commands: 1 << 16,
        }
    }
}

/// Whether the node runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Running.
    Running,
    /// Stopped by `shutdown` (`None`), or by the failure given.
    Stopped(Option<FatalError>),
}

/// A node's externally visible state, published on every change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metrics {
    /// The node's id.
    pub id: NodeId,
    /// Running or stopped.
    pub state: NodeState,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// The leader it follows, if known.
    pub leader: Option<NodeId>,
    /// Its last log entry.
    pub last_log_id: LogId,
    /// Its commit index.
    pub committed: LogIndex,
    /// What its state machine has applied.
    pub applied: LogIndex,
    /// Its newest snapshot's last entry.
    pub snapshot: LogId,
    /// The configuration in effect.
    pub membership: Membership,
    /// On a leader: each follower's match index (its lag is `last_log_id.index` minus
    /// this).
    pub replication: BTreeMap<NodeId, LogIndex>,
    /// The state machine lost its state and waits for a snapshot from a leader: it
    /// applies nothing and serves no linearizable read meanwhile (a local, stale read
    /// would see an old or empty state).
    pub state_lost: bool,
}

/// Why [`Node::start`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Reading the stores failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The stored state is not a valid Raft state.
    #[error("stored state is invalid: {0}")]
    Invalid(#[from] crate::InitError),
}

pub(crate) type ProposeReply = oneshot::Sender<Result<Bytes, ProposeError>>;
pub(crate) type ChangeReply = oneshot::Sender<Result<LogId, MembershipError>>;

pub(crate) enum Command {
    Propose(Bytes, ProposeReply),
    Read(oneshot::Sender<Result<LogIndex, ReadError>>),
    Change(ConfChange, ChangeReply),
    Transfer(NodeId, oneshot::Sender<Result<(), TransferError>>),
    Snapshot(oneshot::Sender<bool>),
    Shutdown(oneshot::Sender<()>),
}

/// A running Raft node. Cheap to clone; every clone talks to the same driver task.
#[derive(Clone)]
pub struct Node {
    id: NodeId,
    commands: mpsc::UnboundedSender<Command>,
    /// Proposals and reads sent and not yet taken by the driver.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    metrics: Watch<Metrics>,
}

impl Node {
    /// Reads the stores back, reconciles them ([`Restore::plan`]: a cut between a
    /// snapshot install and the log's reset, a damaged snapshot), and starts the driver.
    pub async fn start(
        config: Config,
        options: NodeOptions,
        env: Environment,
    ) -> Result<Node, StartError> {
        let stored = env.log.load().await?;
        let machine = env.state_machine.state().await?;
        let plan = Restore::plan(
            Stored {
                hard_state: stored.hard_state,
                purged: stored.purged,
                entries: stored.entries,
                log_base: stored.base,
                applied: machine.applied,
                snapshot: machine.snapshot,
            },
            options.initial_members.as_ref(),
        );
        for note in &plan.notes {
            tracing::warn!(node = %config.id, "{note}");
        }
        if let Some(base) = &plan.reset_log {
            env.log.reset(base).await?;
        }
        let raft = Raft::new(config, plan.restore)?;
        let id = raft.id();
        let (commands_tx, commands) = mpsc::unbounded();
        let (publisher, metrics) = watch::channel(driver::metrics_of(&raft, NodeState::Running));
        let queued = Arc::new(AtomicUsize::new(0));
        driver::spawn(raft, options.tick, env, commands, queued.clone(), publisher);
        Ok(Node {
            id,
            commands: commands_tx,
            queued,
            max_queued: options.max_queued_commands.max(1),
            metrics,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Replicates `command`; returns the state machine's response once the command is
    /// committed and applied here.
    pub async fn propose(&self, command: Bytes) -> Result<Bytes, ProposeError> {
        if let Err(queued) = self.take_queue_slot() {
            return Err(ProposeError::Overloaded { queued });
        }
        let (tx, rx) = oneshot::channel();
        self.send(Command::Propose(command, tx));
        rx.await.unwrap_or(Err(ProposeError::Stopped))
    }

    /// A linearizable read barrier (ReadIndex, dissertation §6.4): once it returns, the
    /// local state machine reflects every write acknowledged before the call, so a read
    /// from it is linearizable. Works on followers (the leader is asked for the index).
    pub async fn read(&self) -> Result<LogIndex, ReadError> {
        if let Err(queued) = self.take_queue_slot() {
            return Err(ReadError::Overloaded { queued });
        }
        let (tx, rx) = oneshot::channel();
        self.send(Command::Read(tx));
        rx.await.unwrap_or(Err(ReadError::Stopped))
    }

    /// Counts a proposal or read into the queue, or says how full it is.
    fn take_queue_slot(&self) -> Result<(), usize> {
        let queued = self.queued.fetch_add(1, Ordering::Relaxed);
        if queued >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(queued);
        }
        Ok(())
    }

    /// Changes the membership; returns once the configuration entry is committed and
    /// applied here.
    pub async fn change_membership(&self, change: ConfChange) -> Result<LogId, MembershipError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Change(change, tx));
        rx.await.unwrap_or(Err(MembershipError::Stopped))
    }

    /// Adds `id` as a learner with its record (how the others reach it; see
    /// [`change_membership`](Node::change_membership)).
    pub async fn add_learner(
        &self,
        id: NodeId,
        node: raft_proto::NodeRecord,
    ) -> Result<LogId, MembershipError> {
        self.change_membership(ConfChange::AddLearner(id, node))
            .await
    }

    /// Starts a leadership transfer to `to`; returns once it started.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), TransferError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Transfer(to, tx));
        rx.await.unwrap_or(Err(TransferError::Stopped))
    }

    /// Asks the state machine for a snapshot now; false if one is being built or there
    /// is nothing new to cover.
    pub async fn trigger_snapshot(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Snapshot(tx));
        rx.await.unwrap_or(false)
    }

    /// The node's metrics, updated as they change.
    pub fn metrics(&self) -> Watch<Metrics> {
        self.metrics.clone()
    }

    /// Stops the node: no new work is accepted, the write in progress completes, the
    /// apply task drains, and waiters get `Stopped`. Storage is left consistent.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Shutdown(tx));
        let _ = rx.await;
    }

    fn send(&self, command: Command) {
        // If the driver is gone the reply sender is dropped with the command, and the
        // caller sees `Stopped`.
        let _ = self.commands.unbounded_send(command);
    }
}

/// The leader of the metrics, convenience for tests and clients: waits until this node
/// knows a leader.
impl Node {
    /// Waits until this node knows a leader, and returns it (`None` if it stops).
    pub async fn leader(&self) -> Option<NodeId> {
        self.metrics()
            .wait_for(|m| m.leader.is_some() || m.state != NodeState::Running)
            .await?
            .leader
    }

    /// The hint to give a client that asked the wrong node.
    pub fn not_leader(&self) -> NotLeader {
        NotLeader {
            leader_hint: self.metrics.get().leader.filter(|&l| l != self.id),
        }
    }
}

//! The Raft consensus algorithm as a deterministic, sans-IO state machine, and an async
//! [`Node`](node::Node) that drives it over storage, state-machine and transport traits
//! on any runtime.
//!
//! # The async node
//!
//! ```no_run
//! # async fn demo(env: raft_core::node::Environment) -> Result<(), Box<dyn std::error::Error>> {
//! use raft_core::node::{Node, NodeOptions};
//! use raft_core::Config;
//! use raft_proto::{Membership, NodeId};
//!
//! // `env`: your LogStore, StateMachine, Transport (+ its incoming stream) and Runtime;
//! // `raft_core::testing` has in-memory ones (see examples/cluster.rs).
//! let members = Membership::voters([NodeId(1), NodeId(2), NodeId(3)]);
//! let node = Node::start(Config::new(NodeId(1)), NodeOptions::new(members), env).await?;
//! let response = node.propose("put x 1".into()).await?; // committed and applied
//! node.read().await?; // linearizable: the state machine is now up to date
//! # Ok(())
//! # }
//! ```
//!
//! To bring your own storage, state machine or network, read the [`guide`]
//! ("Implementing LogStore / StateMachine / Transport"): what each trait must
//! guarantee, the conformance suites, and two examples of a user's own state machine,
//! one in memory (`examples/ledger.rs`) and one on LMDB and QUIC.
//!
//! # The sans-IO core
//!
//! [`Raft`] holds one node's state. It never reads a clock, never does I/O and never
//! spawns: time comes in as [`Raft::tick`], messages as [`Raft::step`], client work as
//! [`Raft::propose`] and [`Raft::read_index`], and everything the node needs done comes
//! out as [`Action`]s. The same code runs under the deterministic simulator and under
//! a real async driver.
//!
//! # The main loop
//!
//! ```no_run
//! # use raft_core::{Action, Raft};
//! # fn io(raft: &mut Raft, sm: &mut dyn FnMut(&str)) {
//! # let (persist, send, apply, serve) = (|_| (), |_, _| (), |_| (), |_, _| ());
//! // After every input (tick, step, propose, read_index, persisted, applied, ...):
//! while let Some(action) = raft.poll_action() {
//!     match action {
//!         Action::Send { to, message } => send(to, message),
//!         Action::Persist(batch) => {
//!             let last = batch.entries.last().map(|e| e.log_id);
//!             persist(batch); // durable (fsync) before the next action
//!             if let Some(last) = last {
//!                 raft.persisted(last);
//!             }
//!         }
//!         Action::Apply(entries) => {
//!             let last = entries.last().map(|e| e.log_id.index);
//!             apply(entries);
//!             if let Some(last) = last {
//!                 raft.applied(last);
//!             }
//!         }
//!         Action::ReadReady { id, index } => serve(id, index),
//!         Action::ReadFailed { .. } => { /* tell the reader to retry */ }
//!         // Snapshots: build one in the background, then `raft.snapshot_built(..)`;
//!         // drop purged entries; serve and store chunks; install a received one.
//!         Action::BuildSnapshot { .. } => sm("build"),
//!         Action::PurgeLog { .. } => sm("purge"),
//!         Action::ReadSnapshotChunk { .. } => sm("read chunk, then raft.snapshot_chunk_read(..)"),
//!         Action::WriteSnapshotChunk { .. } => sm("store chunk"),
//!         Action::InstallSnapshot { .. } => sm("install"),
//!     }
//! }
//! # }
//! ```
//!
//! What is implemented (paper and dissertation sections): elections with randomized
//! timeouts and the up-to-date rule (§5.2, §5.4.1); PreVote (§9.6) and CheckQuorum with
//! the leader lease on votes (§6.2, §4.2.3); AppendEntries with the consistency check,
//! conflict truncation and a fast back-off hint (§5.3); pipelined replication with
//! per-follower flow control; commitment by counting current-term replicas (§5.4.2)
//! with a blank entry per term (§8); ReadIndex reads, forwarded by followers (§6.4);
//! leadership transfer (§3.10); snapshots with log compaction and chunked, resumable
//! InstallSnapshot (§7); membership change one server at a time with learners (§4.1,
//! §4.2).

mod action;
mod config;
pub mod contract;
mod election;
mod error;
pub mod guide;
mod log;
mod membership;
pub mod node;
mod progress;
mod raft;
mod read;
mod replication;
mod restore;
mod rng;
pub mod rt;
mod snapshot;
#[cfg(feature = "testing")]
pub mod testing;
mod transfer;

pub use action::{Action, Persist};
pub use config::{Config, ConfigError, ReadMode};
pub use contract::{ContractCheck, ContractViolation, Schedule};
pub use error::{InitError, NotLeader, ProposeError, ReadError, TransferError};
pub use log::RaftLog;
pub use membership::{ConfChange, MembershipError};
pub use progress::{Progress, ProgressState, SnapshotSend};
pub use raft::{Raft, Role, Status};
pub use raft_proto;
pub use restore::{Plan, Restore, Stored};

/// The README's example, compiled and run by `cargo test --doc`.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

//! # Implementing LogStore / StateMachine / Transport
//!
//! A [`Node`](crate::node::Node) runs on four traits of [`node`](crate::node), handed to
//! it in an [`Environment`](crate::node::Environment). This page says what each must
//! guarantee, in what order the node calls it, how to test an implementation, and
//! which examples to copy from. The method docs of each trait, under "To ensure
//! correctness", are the reference; this page puts them together.
//!
//! | trait | you provide | ready-made |
//! |---|---|---|
//! | [`LogStore`](crate::node::LogStore) | the durable log and hard state (term, vote) | `raft_storage_lmdb::LmdbLogStore`; `raft_core::testing::MemLogStore` (feature `testing`) |
//! | [`StateMachine`](crate::node::StateMachine) | your application's state, its snapshots | `raft_storage_lmdb::LmdbStateMachine<M>` around your `raft_storage_lmdb::Machine`; `raft_core::testing::MemStateMachine` (a text KV) |
//! | [`Transport`](crate::node::Transport) + the incoming stream | messages between nodes | `raft_net_quic::QuicTransport`; `raft_core::testing::Router` (in process) |
//! | [`Runtime`](crate::node::Runtime) | spawn, sleep, now | [`rt::tokio::TokioRuntime`](crate::rt) (feature `tokio`); `raft_core::testing::ThreadPoolRuntime` |
//!
//! Every method takes `&self`: the node calls them from its driver task, its apply task
//! and background tasks at once, so implementations synchronise inside. An error
//! ([`StorageError`](crate::node::StorageError)) from a log write, an apply, a snapshot
//! read, receive or install stops the node
//! ([`NodeState::Stopped`](crate::node::NodeState::Stopped) with the
//! [`FatalError`](crate::node::FatalError)): it never continues past a write it cannot
//! confirm. Only a failed snapshot *build* is retried instead.
//!
//! ## The order of calls, and why durability comes first
//!
//! The node drives the sans-IO [`Raft`](crate::Raft) and carries out its
//! [`Action`](crate::Action)s under the ordering contract documented on `Action`
//! ("The ordering contract"): a log write must be durable before anything queued after
//! it happens, because the answers after it (a vote granted, an append acknowledged)
//! promise the peer that the data survives a crash (paper, Figure 2: persist before you
//! answer). So the node waits for [`LogStore::write`](crate::node::LogStore::write)
//! to return before it sends those answers; a store that returns before its data is
//! durable breaks Raft's safety, not just its own. If you drive `Raft` yourself
//! instead of using `Node`, that contract is yours to keep:
//! [`Action::schedule`](crate::Action::schedule) says how each action may be carried
//! out, and
//! [`ContractCheck`](crate::ContractCheck) checks a driver against it (run it in your
//! tests, as `Node` does in debug builds and the simulator on every node).
//!
//! At start-up, [`Node::start`](crate::node::Node::start) calls
//! [`LogStore::load`](crate::node::LogStore::load) and
//! [`StateMachine::state`](crate::node::StateMachine::state) once and reconciles them
//! ([`Restore::plan`](crate::Restore::plan)); it may call
//! [`LogStore::reset`](crate::node::LogStore::reset) to finish what a crash cut short.
//!
//! ## LogStore
//!
//! - `write(batch)`: truncate from `batch.truncate_from`, append `batch.entries`, store
//!   `batch.hard_state`, all in **one atomic write that is durable when it returns**
//!   (fsync, or a weaker guarantee you document). Batches never reorder: a later call
//!   sees the earlier ones. Refuse a write that would leave a gap in the log.
//! - `load()`: exactly what completed writes made durable, in order, contiguous after
//!   `purged`, with the `base` snapshot metadata of the last purge or reset.
//! - `purge(up_to, base)`: drop the entries up to `up_to` (a snapshot covers them) and
//!   record `up_to` and `base` in the same transaction. It need not be synced at once,
//!   but must never become visible before the writes before it.
//! - `reset(base)`: drop every entry (a received snapshot replaced the log), record
//!   `base`; durable before it returns, as the node answers the leader right after.
//!
//! The state machine, not the log store, owns snapshots: they change atomically with
//! the state they describe.
//!
//! ## StateMachine
//!
//! - `apply(entries)`: committed entries, in log order, each once. Apply
//!   **deterministically** (the same entries give the same state and the same
//!   responses on every node, so a refusal is a response, not an error), record the
//!   applied log id **atomically with the effects** (a crash must neither apply an
//!   entry twice nor lose one reported applied: responses go to clients as soon as
//!   this returns), and return exactly one response per entry (empty for blank and
//!   membership entries). An `Err` is for a broken disk, not a bad command.
//! - `state()`: the applied id and the newest intact durable snapshot, as a crash left
//!   them, never more. A damaged snapshot is not a reason to refuse to start: report an
//!   older one or none, and the node gets the state from a leader.
//! - `begin_snapshot(meta)`: called between applies. Capture a **point-in-time view**
//!   now (a clone, a copy-on-write structure, a read transaction) and return a task
//!   that writes it out and makes it durable in the background while applies go on;
//!   give it an id that no other snapshot's bytes share, other nodes' included (a
//!   receiver matches chunks by id; the in-memory machine mixes in a per-node salt).
//! - `read_snapshot(id, offset, len)`: the same bytes for the same id every time;
//!   `None` once that snapshot is gone (the leader then starts over with a newer one).
//! - `receive_snapshot(meta, offset, data)`: chunks arrive in order; offset 0 starts a
//!   new incoming snapshot and drops any other partial one. A partial snapshot never
//!   becomes the state.
//! - `install_snapshot(meta)`: verify the received bytes, then replace the state and
//!   record `meta.last_log_id` as applied, atomically and durably: after a crash at any
//!   point the state is the old one or the whole new one. Only after it returns does
//!   the node reset its log behind the snapshot.
//!
//! On LMDB, implement `raft_storage_lmdb::Machine` instead (one method, `apply`, inside
//! the batch's write transaction): `LmdbStateMachine` records the applied id in the same
//! transaction and does every snapshot method for you.
//!
//! ## Transport
//!
//! - `send(to, message)` queues and returns at once: **never block** the caller (it is
//!   the driver). Dropping, duplicating and reordering messages are all allowed, since
//!   Raft retries; bound the memory a slow or dead peer can take (drop rather than
//!   queue without limit).
//! - `send_snapshot(to, message)` carries `InstallSnapshot` chunks and their answers on
//!   a path of their own, so snapshot bytes never delay heartbeats (by default it is
//!   `send`).
//! - Receiving is the stream `Environment::incoming` of `(sender, message)` pairs. The
//!   node believes the sender id: take it from an authenticated source
//!   (`raft_net_quic` takes it from the peer's certificate), not from the message.
//! - Addresses: a transport that needs them can read them from the configuration, where
//!   each member has a [`NodeRecord`](raft_proto::NodeRecord)
//!   ([`Membership::nodes`](raft_proto::Membership::nodes); given to
//!   [`Node::add_learner`](crate::node::Node::add_learner)), replicated with the
//!   configuration change itself.
//!
//! ## Runtime
//!
//! `spawn` a future to completion in the background, `sleep` for a duration, `now` a
//! monotonic instant. Nothing else: the node never assumes a particular executor.
//!
//! ## Testing an implementation: the conformance suites
//!
//! With feature `testing`, `raft_core::testing::suite` holds the suites every storage
//! implementation must pass; they panic with the first requirement broken, like a test:
//!
//! - `suite::log_store(fresh, reopen)`: `fresh()` makes an empty store, `reopen(store)`
//!   closes it and opens the same storage again (a restart). It checks that writes
//!   survive a restart, that a truncation and an append in one batch replace a
//!   conflicting suffix, that purge and reset keep `purged` and `base`, and that a
//!   write leaving a gap is refused and changes nothing.
//! - `suite::state_machine(fresh, commands)`: `fresh(salt)` makes an empty machine,
//!   `commands` are at least 8 valid commands whose responses reveal the state. It
//!   checks one response per entry, determinism, that a snapshot holds the state at
//!   the moment it was begun even while applies go on, unique snapshot ids, chunked
//!   streaming (a chunk at the wrong offset is refused) and install.
//!
//! The in-memory implementations run them in `raft-core/tests/conformance.rs`, the LMDB
//! ones in `raft-storage-lmdb/tests/log_store.rs` and `tests/state_machine.rs`. There
//! is no suite for transports: `raft-net-quic/tests/node.rs` runs three nodes over
//! QUIC, and a transport of yours can be tried the same way.
//!
//! ## Examples to copy from
//!
//! - `raft-core/examples/ledger.rs` (`cargo run -p quorum-raft-core --example ledger
//!   --features testing`): a bank-transfer ledger implementing `StateMachine` itself
//!   (apply, and building, serving, receiving and installing snapshots), checked with
//!   `suite::state_machine`, then run by three in-memory nodes: transfers, a refused
//!   overdraft, and a cut-off follower catching up from a snapshot.
//! - `raft-server/examples/ledger_quic.rs` (`cargo run -p quorum-raft-server --example
//!   ledger_quic`): the same ledger as a `raft_storage_lmdb::Machine` on
//!   `LmdbLogStore` and `LmdbStateMachine`, three nodes talking over QUIC with mutual
//!   TLS (certificates made at start-up), and a follower restarted from its
//!   directories.
//! - `raft-core/examples/cluster.rs`: the shortest `Node` set-up, on the in-memory
//!   key-value machine.

//! Durable Raft storage on LMDB (heed): a [`LmdbLogStore`] for the log and hard state,
//! and an [`LmdbStateMachine`] toolkit for the replicated state, with copy-on-write
//! snapshots.
//!
//! # Durability: every file is durable before anything refers to it
//!
//! A power cut keeps only what reached the disk, and POSIX promises nothing about a new
//! name until its directory is synced. So each file below is written in full, synced,
//! given its final name, and its directory synced, before any other file or any
//! answer to a peer depends on it; directories are synced into their parents when
//! created (`tests/durability_order.rs` checks this on the system calls).
//!
//! | file | written by | becomes durable |
//! |---|---|---|
//! | `log/data.mdb` | [`write`](raft_core::node::LogStore::write) | one LMDB commit with data and meta pages flushed, before `write` returns (the node answers votes and appends after it) |
//! | `log/data.mdb`: `purged`, `base` | [`purge`](raft_core::node::LogStore::purge) / [`reset`](raft_core::node::LogStore::reset) | with the removal, in one transaction; `reset` before it returns |
//! | `sm/state-N/data.mdb` | applies | per [`ApplyDurability`]; always before a snapshot counts as built |
//! | `sm/DIRTY` | open, with deferred applies | tmp, sync, rename, sync `sm/` (holds the boot id and the directory's identity) |
//! | `sm/snapshots/<id>.snap` (built) | the snapshot thread | written paced to `<id>.tmp`, synced, renamed, `snapshots/` synced |
//! | `sm/snapshots/<id>.snap` (received) | install | `incoming/<id>.part` synced, renamed, `snapshots/` synced |
//! | `sm/snapshots/<id>.meta` | after its `.snap` is durable | `<id>.meta.tmp`, synced, renamed, `snapshots/` synced |
//! | `sm/state-N/` (installed or rebuilt) | install / rebuild | built, LMDB synced, the directory and `sm/` synced |
//! | `sm/CURRENT` | after `state-N/` and the snapshot's `.meta` are durable | `CURRENT.tmp`, synced, renamed, `sm/` synced |
//!
//! Only after an install returns does the node reset its log behind the snapshot. At
//! start-up nothing a file holds is fatal: a damaged snapshot is set aside (its files
//! renamed `*.damaged`, with an error in the log), the state is rebuilt from an older
//! intact snapshot when it must be, and when no intact snapshot reaches the log's
//! start the node keeps its log and vote and gets the state from its leader
//! (`raft_core::Restore::plan`).
//!
//! **Backups.** A copy of a running node's directory (`cp -r`) is not consistent: pages
//! being written may be torn. The state machine detects such a copy (its `DIRTY` mark
//! names another directory) and rebuilds its state from the newest snapshot, but the
//! log has no such guard. Copy a data directory only while the node is stopped.

mod common;
mod dirty;
mod durable;
mod log_store;
mod snapshot_file;
mod snapshots;
mod state_machine;
#[cfg(feature = "testing")]
pub mod testing;
mod wal;
mod worker;

pub use common::{EnvConfig, FORMAT_VERSION, LmdbError};
pub use log_store::LmdbLogStore;
pub use snapshot_file::{
    SnapshotWriter, Table as SnapshotTable, for_each_record as read_snapshot_records,
};
pub use state_machine::{
    ApplyContext, ApplyDurability, Db, LmdbStateMachine, Machine, SmConfig, View,
};
pub use worker::WorkerGone;

/// The LMDB bindings in this crate's public API: [`ApplyContext::txn`] and
/// [`View::txn`] are heed transactions, and a [`Machine`] works with heed's types.
/// Use this re-export, not your own `heed` dependency, so the versions always match.
pub use heed;

/// Checks a snapshot file's bytes the way an install does, without installing (for
/// tools and the fuzzer): the trailer's CRC32C over every byte before it, then the
/// header and every record's framing up to the end record, with nothing after it.
/// Returns the file's size.
///
/// An install then writes each record to LMDB, which can still refuse one this does
/// not look at (a key over LMDB's size limit, say); that is an error too, never a
/// partly installed state.
pub fn check_snapshot_bytes(bytes: &[u8]) -> Result<u64, LmdbError> {
    snapshot_file::verify_bytes(bytes)
}

/// The README's example, compiled and run by `cargo test --doc`.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

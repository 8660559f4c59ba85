//! Durable Raft storage on LMDB (heed): a [`LmdbLogStore`] for the log and hard state,
//! and an [`LmdbStateMachine`] toolkit for the replicated state, with copy-on-write
//! snapshots.

mod common;
mod log_store;
mod snapshot_file;
mod state_machine;
#[cfg(feature = "testing")]
pub mod testing;
mod worker;

pub use common::{EnvConfig, FORMAT_VERSION, LmdbError};
pub use log_store::LmdbLogStore;
pub use state_machine::{
    ApplyContext, ApplyDurability, Db, LmdbStateMachine, Machine, SmConfig, View,
};
pub use worker::WorkerGone;

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

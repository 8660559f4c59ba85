//! Durable Raft storage on LMDB (heed): a [`LmdbLogStore`] for the log and hard state,
//! and an [`LmdbStateMachine`] toolkit for the replicated state, with copy-on-write
//! snapshots.

mod common;
mod log_store;
mod snapshot_file;
mod state_machine;
mod worker;

pub use common::{EnvConfig, FORMAT_VERSION, LmdbError};
pub use log_store::LmdbLogStore;
pub use state_machine::{
    ApplyContext, ApplyDurability, Db, LmdbStateMachine, Machine, SmConfig, View,
};
pub use worker::WorkerGone;

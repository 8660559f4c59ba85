//! The storage conformance suites, run against the in-memory implementations (the
//! LMDB implementations run the same suites in their crate).

use raft_core::node::{LogStore, StateMachine};
use raft_core::testing::{MemLogStore, MemStateMachine, kv_command, suite};
use std::sync::Arc;

#[test]
fn the_in_memory_log_store_conforms() {
    futures::executor::block_on(suite::log_store(
        || Arc::new(MemLogStore::new()) as Arc<dyn LogStore>,
        // In memory, a restart reopens the same object.
        |store| store,
    ));
}

#[test]
fn the_in_memory_state_machine_conforms() {
    let commands: Vec<_> = ["a", "b", "a", "c", "b", "a", "d", "a", "c", "b"]
        .iter()
        .enumerate()
        .map(|(i, k)| kv_command("append", k, &i.to_string()))
        .collect();
    futures::executor::block_on(suite::state_machine(
        |salt| Arc::new(MemStateMachine::new(salt)) as Arc<dyn StateMachine>,
        &commands,
    ));
}

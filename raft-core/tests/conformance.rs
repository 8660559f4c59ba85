//! The storage conformance suites, run against the in-memory implementations (the
//! LMDB implementations run the same suites in their crate).

#![allow(clippy::unwrap_used)]

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

/// A crash between the state machine's snapshot install and the log cleanup leaves a
/// log that does not hold the snapshot's last entry: `Node::start` resets the log to
/// start after the snapshot instead of refusing to start.
#[test]
fn start_repairs_a_log_left_behind_by_an_install() {
    use raft_core::Persist;
    use raft_core::node::{Environment, Node, NodeOptions};
    use raft_core::testing::{Router, ThreadPoolRuntime};
    use raft_proto::{
        Bytes, Entry, EntryPayload, LogId, LogIndex, Membership, NodeId, SnapshotMeta, Term,
    };

    futures::executor::block_on(async {
        // The state machine installed a snapshot ending at (3, 50)...
        let donor = MemStateMachine::new(9);
        let entries: Vec<Entry> = (1..=50)
            .map(|i| Entry {
                log_id: LogId::new(Term(3), LogIndex(i)),
                payload: EntryPayload::Command(kv_command("put", "k", &i.to_string())),
            })
            .collect();
        donor.apply(&entries).await.unwrap();
        let meta = SnapshotMeta {
            last_log_id: LogId::new(Term(3), LogIndex(50)),
            membership: Membership::voters([NodeId(1)]),
            id: 0,
        };
        let meta = donor.begin_snapshot(meta).await.unwrap();
        let (data, _) = donor
            .read_snapshot(meta.id, 0, 1 << 20)
            .await
            .unwrap()
            .unwrap();
        let sm = MemStateMachine::new(1);
        sm.receive_snapshot(&meta, 0, data).await.unwrap();
        sm.install_snapshot(&meta).await.unwrap();
        // ...but the log still holds an old, conflicting history.
        let log = MemLogStore::new();
        let old: Vec<Entry> = (1..=10)
            .map(|i| Entry {
                log_id: LogId::new(Term(1), LogIndex(i)),
                payload: EntryPayload::Command(Bytes::from("old")),
            })
            .collect();
        // (It adopted the leader's term 3 before receiving the snapshot.)
        let hard_state = Some(raft_proto::HardState {
            term: Term(3),
            voted_for: None,
        });
        log.write(&Persist {
            entries: old,
            hard_state,
            truncate_from: None,
        })
        .await
        .unwrap();

        let (transport, incoming) = Router::new().register(NodeId(1));
        let env = Environment {
            log: Arc::new(log.clone()),
            state_machine: Arc::new(sm.clone()),
            transport,
            incoming,
            runtime: Arc::new(ThreadPoolRuntime::new(1).unwrap()),
        };
        let node = Node::start(
            raft_core::Config::new(NodeId(1)),
            NodeOptions::new(Membership::voters([NodeId(1)])),
            env,
        )
        .await
        .unwrap();
        let stored = log.snapshot();
        assert!(
            stored.entries.iter().all(|e| e.log_id.index > LogIndex(50)),
            "the old log is gone"
        );
        assert_eq!(
            stored.purged, meta.last_log_id,
            "the log starts after the snapshot"
        );
        assert_eq!(sm.get("k").as_deref(), Some("50"));
        node.shutdown().await;
    });
}

//! Conformance suites: every [`LogStore`] and [`StateMachine`] implementation must pass
//! them (the in-memory ones here, the LMDB ones in their crate). They panic with a
//! description of the first broken requirement.

// A test suite reports failures by panicking, like any test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::action::Persist;
use crate::node::{LogStore, StateMachine};
use raft_proto::{
    Bytes, Entry, EntryPayload, HardState, LogId, LogIndex, Membership, NodeId, SnapshotMeta, Term,
};
use std::sync::Arc;

fn entry(term: u64, index: u64, payload: &str) -> Entry {
    Entry {
        log_id: LogId::new(Term(term), LogIndex(index)),
        payload: EntryPayload::Command(Bytes::from(payload)),
    }
}

fn ids(entries: &[Entry]) -> Vec<(u64, u64)> {
    entries
        .iter()
        .map(|e| (e.log_id.term.0, e.log_id.index.0))
        .collect()
}

fn append(entries: Vec<Entry>) -> Persist {
    Persist {
        entries,
        ..Persist::default()
    }
}

/// Runs every `LogStore` requirement. `fresh` makes an empty store; `reopen` closes a
/// store and opens the same storage again (a restart).
pub async fn log_store(
    fresh: impl Fn() -> Arc<dyn LogStore>,
    reopen: impl Fn(Arc<dyn LogStore>) -> Arc<dyn LogStore>,
) {
    // An empty store loads empty.
    let store = fresh();
    let loaded = store.load().await.expect("load an empty store");
    assert_eq!(
        loaded.hard_state,
        HardState::default(),
        "empty store: hard state"
    );
    assert_eq!(loaded.purged, LogId::ZERO, "empty store: purged");
    assert!(loaded.entries.is_empty(), "empty store: entries");

    // A write with entries and a hard state is durable, and survives a restart.
    let hs = HardState {
        term: Term(2),
        voted_for: Some(NodeId(3)),
    };
    let batch = Persist {
        hard_state: Some(hs),
        truncate_from: None,
        entries: vec![entry(1, 1, "a"), entry(1, 2, "b"), entry(2, 3, "c")],
    };
    store.write(&batch).await.expect("write a batch");
    let store = reopen(store);
    let loaded = store.load().await.expect("load after a restart");
    assert_eq!(loaded.hard_state, hs, "the hard state survives a restart");
    assert_eq!(
        ids(&loaded.entries),
        vec![(1, 1), (1, 2), (2, 3)],
        "entries survive a restart"
    );
    assert_eq!(
        loaded.entries[1].payload,
        EntryPayload::Command(Bytes::from("b")),
        "payloads survive"
    );

    // Truncation and append in one batch replace a conflicting suffix.
    let batch = Persist {
        hard_state: Some(HardState {
            term: Term(3),
            voted_for: None,
        }),
        truncate_from: Some(LogIndex(2)),
        entries: vec![entry(3, 2, "B"), entry(3, 3, "C"), entry(3, 4, "D")],
    };
    store.write(&batch).await.expect("truncate and append");
    let loaded = store.load().await.expect("load");
    assert_eq!(
        ids(&loaded.entries),
        vec![(1, 1), (3, 2), (3, 3), (3, 4)],
        "suffix replaced"
    );
    assert_eq!(loaded.hard_state.term, Term(3));

    // Purging a prefix remembers the purged id and the snapshot it continues; later
    // appends continue after it.
    assert_eq!(loaded.base, None, "no base before the first purge");
    let base = SnapshotMeta {
        last_log_id: LogId::new(Term(3), LogIndex(3)),
        membership: Membership::voters([NodeId(1), NodeId(2), NodeId(3)]),
        id: 7,
    };
    store
        .purge(LogId::new(Term(3), LogIndex(2)), &base)
        .await
        .expect("purge");
    let store = reopen(store);
    let loaded = store.load().await.expect("load after purge");
    assert_eq!(
        loaded.purged,
        LogId::new(Term(3), LogIndex(2)),
        "the purged id survives a restart"
    );
    assert_eq!(loaded.base.as_ref(), Some(&base), "so does the base");
    assert_eq!(
        ids(&loaded.entries),
        vec![(3, 3), (3, 4)],
        "purged entries are gone"
    );
    store
        .write(&append(vec![entry(3, 5, "e")]))
        .await
        .expect("append after purge");
    assert_eq!(
        ids(&store.load().await.expect("load").entries),
        vec![(3, 3), (3, 4), (3, 5)]
    );

    // A write that would leave a gap is refused, and changes nothing.
    assert!(
        store
            .write(&append(vec![entry(3, 9, "gap")]))
            .await
            .is_err(),
        "a gap is refused"
    );
    assert_eq!(
        store.load().await.expect("load").entries.len(),
        3,
        "a refused write changes nothing"
    );

    // Reset drops everything after a snapshot replaced the log.
    let installed = SnapshotMeta {
        last_log_id: LogId::new(Term(4), LogIndex(40)),
        membership: Membership::voters([NodeId(1), NodeId(2)]),
        id: 9,
    };
    store.reset(&installed).await.expect("reset");
    let store = reopen(store);
    let loaded = store.load().await.expect("load after reset");
    assert!(loaded.entries.is_empty(), "reset removes every entry");
    assert_eq!(loaded.purged, LogId::new(Term(4), LogIndex(40)));
    assert_eq!(loaded.base.as_ref(), Some(&installed));
    assert_eq!(
        loaded.hard_state.term,
        Term(3),
        "reset keeps the hard state"
    );
    store
        .write(&append(vec![entry(4, 41, "f")]))
        .await
        .expect("append after reset");
    assert_eq!(
        ids(&store.load().await.expect("load").entries),
        vec![(4, 41)]
    );
}

/// Runs every `StateMachine` requirement. `fresh(salt)` makes an empty machine (salt
/// distinguishes machines); `commands` are valid commands for it whose responses
/// reveal its state (at least 8). Two machines that answer the same commands alike
/// are taken to hold the same state.
pub async fn state_machine(fresh: impl Fn(u64) -> Arc<dyn StateMachine>, commands: &[Bytes]) {
    assert!(commands.len() >= 8, "the suite needs at least 8 commands");
    let log: Vec<Entry> = std::iter::once(Entry {
        log_id: LogId::new(Term(1), LogIndex(1)),
        payload: EntryPayload::Blank,
    })
    .chain(commands.iter().enumerate().map(|(i, c)| Entry {
        log_id: LogId::new(Term(1), LogIndex(i as u64 + 2)),
        payload: EntryPayload::Command(c.clone()),
    }))
    .collect();
    let half = log.len() / 2;

    // A fresh machine has applied nothing.
    let a = fresh(1);
    let state = a.state().await.expect("state of a fresh machine");
    assert_eq!(state.applied, LogId::ZERO, "fresh: applied");
    assert!(state.snapshot.is_none(), "fresh: no snapshot");

    // One response per entry; the applied id follows.
    let first = a.apply(&log[..half]).await.expect("apply");
    assert_eq!(first.len(), half, "one response per entry");
    assert!(first[0].is_empty(), "a blank entry has an empty response");
    assert_eq!(
        a.state().await.expect("state").applied,
        log[half - 1].log_id,
        "applied follows apply"
    );

    // Determinism: another machine applying the same entries answers alike.
    let b = fresh(2);
    assert_eq!(
        b.apply(&log[..half]).await.expect("apply"),
        first,
        "apply is deterministic"
    );

    // A snapshot captures the state when it is begun, even if applies go on before
    // it is written: a machine installed from it, given the rest of the log, answers
    // like a machine that applied the whole log.
    let meta = SnapshotMeta {
        last_log_id: log[half - 1].log_id,
        membership: Membership::voters([NodeId(1)]),
        id: 0,
    };
    let task = a.begin_snapshot(meta.clone());
    a.apply(&log[half..])
        .await
        .expect("apply during a snapshot");
    let built = task.await.expect("build the snapshot");
    assert_eq!(
        built.last_log_id, meta.last_log_id,
        "the snapshot covers what it was asked for"
    );
    assert_ne!(built.id, 0, "a built snapshot gets an id");
    assert!(
        a.read_snapshot(u64::MAX, 0, 10)
            .await
            .expect("read")
            .is_none(),
        "an unknown snapshot id reads as gone"
    );
    let d = fresh(4);
    transfer(&*a, &*d, &built, 1 << 20).await;
    d.install_snapshot(&built).await.expect("install");
    let state = d.state().await.expect("state after install");
    assert_eq!(
        state.applied, built.last_log_id,
        "install records the applied id"
    );
    assert_eq!(
        state.snapshot.map(|s| s.id),
        Some(built.id),
        "install records the snapshot"
    );
    assert_eq!(
        d.apply(&log[half..]).await.expect("apply the rest"),
        b.apply(&log[half..]).await.expect("apply the rest"),
        "the snapshot holds the state at its start, not later"
    );

    // A second snapshot gets another id; streamed in small chunks (some out of order
    // refused) to a fresh machine, it reproduces the state.
    let second = a
        .begin_snapshot(SnapshotMeta {
            last_log_id: log[log.len() - 1].log_id,
            ..meta
        })
        .await
        .expect("build");
    assert_ne!(second.id, built.id, "snapshot ids are unique");
    let c = fresh(3);
    transfer(&*a, &*c, &second, 7).await;
    assert!(
        c.receive_snapshot(&second, 1 << 40, Bytes::from("x"))
            .await
            .is_err(),
        "a chunk at the wrong offset is refused"
    );
    c.install_snapshot(&second).await.expect("install");
    let more: Vec<Entry> = commands
        .iter()
        .enumerate()
        .map(|(i, cmd)| Entry {
            log_id: LogId::new(Term(2), LogIndex((log.len() + 1 + i) as u64)),
            payload: EntryPayload::Command(cmd.clone()),
        })
        .collect();
    assert_eq!(
        c.apply(&more).await.expect("apply after install"),
        a.apply(&more).await.expect("apply"),
        "a machine installed from a snapshot answers like the original"
    );
}

/// Streams snapshot `meta` from `from` to `to` in chunks of `len` bytes.
async fn transfer(from: &dyn StateMachine, to: &dyn StateMachine, meta: &SnapshotMeta, len: usize) {
    let mut offset = 0u64;
    for _ in 0..10_000_000 {
        let Some((data, last)) = from
            .read_snapshot(meta.id, offset, len)
            .await
            .expect("read a chunk")
        else {
            panic!("snapshot {} is gone while it is the newest", meta.id);
        };
        to.receive_snapshot(meta, offset, data.clone())
            .await
            .expect("receive a chunk");
        offset += data.len() as u64;
        if last {
            return;
        }
    }
    panic!("the snapshot never ends");
}

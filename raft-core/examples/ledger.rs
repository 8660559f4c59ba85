//! Your own state machine on `raft-core`: a bank-transfer ledger replicated by three
//! in-memory `Node`s in one process.
//!
//! `LedgerMachine` implements [`StateMachine`] itself (apply, snapshot build, read,
//! receive and install); the log store, the network and the runtime are the in-memory
//! ones of `raft_core::testing`. The example first runs the `StateMachine`
//! conformance suite on the machine, then opens accounts, moves money, has an
//! overdraft refused (the refusal is the command's response, the same on every node),
//! then cuts a follower off, snapshots and compacts the leader's log behind it, and
//! lets the follower catch up from the snapshot. Every step is asserted; it exits 0 in
//! a fraction of a second (and fails after 20 s if something hangs).
//!
//! `cargo run -p quorum-raft-core --example ledger --features testing`
//!
//! The same ledger on LMDB and QUIC is `raft-server/examples/ledger_quic.rs`.

#![allow(clippy::print_stdout)]

use futures::FutureExt;
use futures::future::Either;
use raft_core::Config;
use raft_core::node::{
    Environment, MachineState, Node, NodeOptions, Runtime, SnapshotTask, StateMachine, StorageError,
};
use raft_core::testing::{MemLogStore, Router, ThreadPoolRuntime, suite};
use raft_proto::{Bytes, Entry, EntryPayload, LogId, LogIndex, Membership, NodeId, SnapshotMeta};
use std::collections::BTreeMap;
use std::error::Error;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

// ------------------------------------------------------------------ the application

/// The application: accounts and their balances. It knows nothing of Raft.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Ledger {
    balances: BTreeMap<String, u64>,
}

impl Ledger {
    /// Runs one command and returns its response. Deterministic: the response and the
    /// new state depend only on the command and the state, so every replica that
    /// applies the same commands in the same order agrees, refusals included.
    ///
    /// Commands: `open NAME`, `deposit NAME AMOUNT`, `transfer FROM TO AMOUNT`.
    fn execute(&mut self, command: &str) -> String {
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["open", name] => {
                if self.balances.contains_key(*name) {
                    return format!("refused: {name} already has an account");
                }
                self.balances.insert(name.to_string(), 0);
                format!("opened {name}")
            }
            ["deposit", name, amount] => {
                let Ok(amount) = amount.parse::<u64>() else {
                    return format!("refused: {amount:?} is not an amount");
                };
                let Some(balance) = self.balances.get_mut(*name) else {
                    return format!("refused: {name} has no account");
                };
                let Some(new) = balance.checked_add(amount) else {
                    return format!("refused: {name}'s balance would overflow");
                };
                *balance = new;
                format!("{name} has {new}")
            }
            ["transfer", from, to, amount] => self.transfer(from, to, amount),
            _ => format!("refused: unknown command {command:?}"),
        }
    }

    fn transfer(&mut self, from: &str, to: &str, amount: &str) -> String {
        let Ok(amount) = amount.parse::<u64>() else {
            return format!("refused: {amount:?} is not an amount");
        };
        if from == to {
            return "refused: a transfer needs two accounts".to_string();
        }
        let (Some(&have), Some(&theirs)) = (self.balances.get(from), self.balances.get(to)) else {
            return format!("refused: {from} or {to} has no account");
        };
        if have < amount {
            return format!("refused: {from} has {have}, cannot send {amount}");
        }
        let Some(theirs) = theirs.checked_add(amount) else {
            return format!("refused: {to}'s balance would overflow");
        };
        self.balances.insert(from.to_string(), have - amount);
        self.balances.insert(to.to_string(), theirs);
        format!("{from} has {}, {to} has {theirs}", have - amount)
    }

    fn total(&self) -> u64 {
        self.balances.values().sum()
    }

    /// The snapshot format: a header line `ledger N`, then N lines `NAME BALANCE`.
    fn encode(&self) -> Vec<u8> {
        let mut out = format!("ledger {}\n", self.balances.len());
        for (name, balance) in &self.balances {
            out.push_str(&format!("{name} {balance}\n"));
        }
        out.into_bytes()
    }

    /// Parses and checks [`encode`](Ledger::encode)'s output; `None` if it is not one
    /// whole snapshot (truncated, damaged).
    fn decode(bytes: &[u8]) -> Option<Ledger> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        let count: usize = lines.next()?.strip_prefix("ledger ")?.parse().ok()?;
        let mut balances = BTreeMap::new();
        for line in lines {
            let (name, balance) = line.split_once(' ')?;
            balances.insert(name.to_string(), balance.parse().ok()?);
        }
        (balances.len() == count && text.ends_with('\n')).then_some(Ledger { balances })
    }
}

// ---------------------------------------------------------- the Raft state machine

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct MachineInner {
    ledger: Ledger,
    /// The last entry applied: recorded together with its effects (one lock here;
    /// one transaction on a disk).
    applied: LogId,
    /// The newest snapshot that is "durable" (in memory for this example) and its bytes.
    snapshot: Option<(SnapshotMeta, Bytes)>,
    /// A snapshot being received: its id and the bytes so far.
    incoming: Option<(u64, Vec<u8>)>,
    snapshots_built: u64,
}

/// The ledger as a Raft [`StateMachine`]. Clones share the state, so the example can
/// look at the balances of a machine it gave to a node.
#[derive(Clone)]
struct LedgerMachine {
    inner: Arc<Mutex<MachineInner>>,
    /// Keeps this machine's snapshot ids apart from the other machines'.
    node: NodeId,
}

impl LedgerMachine {
    fn new(node: NodeId) -> LedgerMachine {
        LedgerMachine {
            inner: Arc::default(),
            node,
        }
    }

    fn ledger(&self) -> Ledger {
        lock(&self.inner).ledger.clone()
    }
}

#[async_trait::async_trait]
impl StateMachine for LedgerMachine {
    async fn state(&self) -> Result<MachineState, StorageError> {
        let m = lock(&self.inner);
        Ok(MachineState {
            applied: m.applied,
            snapshot: m.snapshot.as_ref().map(|(meta, _)| meta.clone()),
        })
    }

    async fn apply(&self, entries: &[Entry]) -> Result<Vec<Bytes>, StorageError> {
        let mut m = lock(&self.inner);
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.log_id.index <= m.applied.index {
                // The node never does this; a machine that would apply twice must stop.
                let error = format!("entry {} is at or before {}", entry.log_id, m.applied);
                return Err(StorageError::new("apply", error));
            }
            let response = match &entry.payload {
                EntryPayload::Command(command) => {
                    let command = String::from_utf8_lossy(command);
                    Bytes::from(m.ledger.execute(&command))
                }
                // Blank entries (one per new leader) and membership changes: no effect.
                EntryPayload::Blank | EntryPayload::Membership(_) => Bytes::new(),
            };
            responses.push(response);
            m.applied = entry.log_id;
        }
        Ok(responses)
    }

    fn begin_snapshot(&self, mut meta: SnapshotMeta) -> SnapshotTask {
        // The capture, between two applies: the bytes as of `meta.last_log_id`. Applies
        // that come after cannot change them.
        let (bytes, id) = {
            let mut m = lock(&self.inner);
            m.snapshots_built += 1;
            (m.ledger.encode(), (self.node.0 << 32) | m.snapshots_built)
        };
        let inner = self.inner.clone();
        async move {
            // A real machine writes and syncs a file here, in the background.
            meta.id = id;
            let mut m = lock(&inner);
            let newer = m
                .snapshot
                .as_ref()
                .is_none_or(|(s, _)| s.last_log_id < meta.last_log_id);
            if newer {
                m.snapshot = Some((meta.clone(), Bytes::from(bytes)));
            }
            Ok(meta)
        }
        .boxed()
    }

    async fn read_snapshot(
        &self,
        id: u64,
        offset: u64,
        len: usize,
    ) -> Result<Option<(Bytes, bool)>, StorageError> {
        let m = lock(&self.inner);
        let Some((_, bytes)) = m.snapshot.as_ref().filter(|(meta, _)| meta.id == id) else {
            return Ok(None); // pruned or never built: the leader starts over
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(len).min(bytes.len());
        Ok(Some((Bytes::from(&bytes[start..end]), end == bytes.len())))
    }

    async fn receive_snapshot(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let mut m = lock(&self.inner);
        if offset == 0 {
            m.incoming = Some((meta.id, Vec::new()));
        }
        match &mut m.incoming {
            Some((id, buf)) if *id == meta.id && buf.len() as u64 == offset => {
                buf.extend_from_slice(&data);
                Ok(())
            }
            _ => Err(StorageError::new(
                "receive a snapshot",
                format!("chunk at {offset} of snapshot {} out of order", meta.id),
            )),
        }
    }

    async fn install_snapshot(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let mut m = lock(&self.inner);
        let bytes = match m.incoming.take() {
            Some((id, bytes)) if id == meta.id => bytes,
            _ => {
                let error = format!("snapshot {} was not received", meta.id);
                return Err(StorageError::new("install a snapshot", error));
            }
        };
        // Verify before switching: a damaged snapshot never becomes the state.
        let Some(ledger) = Ledger::decode(&bytes) else {
            let error = format!("snapshot {} is not a whole ledger", meta.id);
            return Err(StorageError::new("install a snapshot", error));
        };
        m.ledger = ledger;
        m.applied = meta.last_log_id;
        m.snapshot = Some((meta.clone(), Bytes::from(bytes)));
        Ok(())
    }
}

// ------------------------------------------------------------------------ the cluster

struct Member {
    node: Node,
    machine: LedgerMachine,
    log: MemLogStore,
}

async fn start(ids: [NodeId; 3], router: &Router, runtime: Arc<dyn Runtime>) -> Vec<Member> {
    let mut members = Vec::new();
    for id in ids {
        let (transport, incoming) = router.register(id);
        let machine = LedgerMachine::new(id);
        let log = MemLogStore::new();
        let env = Environment {
            log: Arc::new(log.clone()),
            state_machine: Arc::new(machine.clone()),
            transport,
            incoming,
            runtime: runtime.clone(),
        };
        let mut config = Config::new(id);
        config.snapshot_entries = 0; // snapshots only when asked, below
        config.snapshot_keep_entries = 0; // and the log is compacted right behind them
        config.snapshot_chunk_bytes = 16; // several chunks, to show them streamed
        let node = Node::start(config, NodeOptions::new(Membership::voters(ids)), env)
            .await
            .unwrap_or_else(|e| panic!("node {id} did not start: {e}"));
        members.push(Member { node, machine, log });
    }
    members
}

/// Proposes `command` on `leader` and returns the ledger's response.
async fn propose(leader: &Node, command: &str) -> String {
    let response = leader
        .propose(Bytes::from(command))
        .await
        .unwrap_or_else(|e| panic!("{command:?} was not committed: {e}"));
    String::from_utf8_lossy(&response).into_owned()
}

/// [`propose`], and prints the command with its response.
async fn submit(leader: &Node, command: &str) -> String {
    let response = propose(leader, command).await;
    println!("  {command:<28} -> {response}");
    response
}

/// Waits until every node has applied up to the leader's last entry, then returns their
/// ledgers. (A linearizable `read()` on each would do as well, but also needs a leader
/// reachable from every node.)
async fn ledgers(members: &[Member], leader: &Node) -> Vec<Ledger> {
    let last = leader.metrics().get().last_log_id.index;
    for m in members {
        let applied = m.node.metrics().wait_for(|s| s.applied >= last).await;
        assert!(applied.is_some(), "node {} stopped", m.node.id());
    }
    members.iter().map(|m| m.machine.ledger()).collect()
}

/// Runs the conformance suite every `StateMachine` must pass (it panics on the first
/// requirement broken): determinism, snapshots captured at their start, streamed and
/// installed. The commands' responses reveal the balances.
async fn check_conformance() {
    let commands = [
        "open a",
        "open b",
        "deposit a 10",
        "transfer a b 3",
        "deposit b 1",
        "transfer b a 2",
        "transfer a b 20", // refused: a has 9
        "deposit a 5",
        "transfer b a 1",
        "open a", // refused: a exists
    ]
    .map(Bytes::from);
    let fresh = |salt| Arc::new(LedgerMachine::new(NodeId(salt))) as Arc<dyn StateMachine>;
    suite::state_machine(fresh, &commands).await;
    println!("LedgerMachine passes raft_core::testing::suite::state_machine");
}

async fn run(runtime: Arc<dyn Runtime>) {
    check_conformance().await;
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let router = Router::new();
    let members = start(ids, &router, runtime.clone()).await;
    let leader_id = members[0].node.leader().await.expect("a leader");
    let leader = &members[(leader_id.0 - 1) as usize].node;
    println!("node {leader_id} leads");

    println!("accounts and transfers, proposed on the leader:");
    for name in ["alice", "bob", "carol"] {
        assert_eq!(
            submit(leader, &format!("open {name}")).await,
            format!("opened {name}")
        );
    }
    assert_eq!(submit(leader, "deposit alice 100").await, "alice has 100");
    assert_eq!(
        submit(leader, "transfer alice bob 30").await,
        "alice has 70, bob has 30"
    );
    assert_eq!(
        submit(leader, "transfer bob carol 10").await,
        "bob has 20, carol has 10"
    );

    println!("an overdraft, refused the same way on every node:");
    let refused = submit(leader, "transfer carol alice 50").await;
    assert_eq!(refused, "refused: carol has 10, cannot send 50");

    let expected: BTreeMap<String, u64> = [("alice", 70), ("bob", 20), ("carol", 10)]
        .map(|(n, b)| (n.to_string(), b))
        .into();
    for (id, ledger) in ids.iter().zip(ledgers(&members, leader).await) {
        println!("  node {id}: {:?}", ledger.balances);
        assert_eq!(ledger.balances, expected, "node {id}'s balances");
    }

    // A follower misses a stretch of transfers; the leader snapshots and drops the log
    // behind the snapshot, so the follower can only catch up by installing it.
    let lagging = ids
        .into_iter()
        .find(|&id| id != leader_id)
        .expect("a follower");
    let lagging_member = &members[(lagging.0 - 1) as usize];
    println!("node {lagging} is cut off; 20 transfers between alice and bob go ahead without it");
    router.isolate(lagging);
    let lagging_applied = lagging_member.node.metrics().get().applied;
    for round in 0..10 {
        let a = propose(leader, "transfer alice bob 1").await;
        let b = propose(leader, "transfer bob alice 2").await;
        assert_eq!(
            a,
            format!("alice has {}, bob has {}", 69 + round, 21 - round)
        );
        assert_eq!(
            b,
            format!("bob has {}, alice has {}", 19 - round, 71 + round)
        );
    }
    assert!(
        leader.trigger_snapshot().await,
        "the leader starts a snapshot"
    );
    let snapshot = leader
        .metrics()
        .wait_for(|m| m.snapshot.index > lagging_applied.max(LogIndex(20)))
        .await
        .expect("the leader snapshots")
        .snapshot;
    // The log is purged right after the snapshot is built: wait for it.
    let leader_log = &members[(leader_id.0 - 1) as usize].log;
    while leader_log.snapshot().purged.index < snapshot.index {
        runtime.sleep(Duration::from_millis(5)).await;
    }
    println!(
        "node {leader_id} snapshotted up to {snapshot} and purged its log up to there; node {lagging} has applied only {lagging_applied}"
    );

    router.heal();
    let caught_up = lagging_member
        .node
        .metrics()
        .wait_for(|m| m.snapshot.index >= snapshot.index)
        .await
        .expect("the lagging node installs the snapshot");
    println!(
        "node {lagging} is back and installed snapshot {}",
        caught_up.snapshot
    );
    assert_eq!(submit(leader, "deposit carol 5").await, "carol has 15");
    let all = ledgers(&members, leader).await;
    for (id, ledger) in ids.iter().zip(&all) {
        println!("  node {id}: {:?}", ledger.balances);
        assert_eq!(ledger, &all[0], "node {id} agrees with node 1");
    }
    assert_eq!(all[0].balances["alice"], 80);
    assert_eq!(all[0].total(), 105, "money is neither made nor lost");

    for m in &members {
        m.node.shutdown().await;
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let runtime: Arc<dyn Runtime> = Arc::new(ThreadPoolRuntime::new(2)?);
    let deadline = runtime.sleep(Duration::from_secs(20));
    let work = Box::pin(run(runtime.clone()));
    match futures::executor::block_on(futures::future::select(work, deadline)) {
        Either::Left(((), _)) => Ok(()),
        Either::Right(_) => Err("the example did not finish within 20 s".into()),
    }
}

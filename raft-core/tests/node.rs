//! The async `Node` on two runtimes (tokio and the `futures` thread pool), over the
//! in-memory stores and the in-process router. Every scenario runs on both.

#![allow(clippy::unwrap_used)]

use futures::FutureExt;
use raft_core::node::{
    Environment, FatalError, MachineState, Metrics, Node, NodeOptions, NodeState, Runtime,
    SnapshotTask, StateMachine, StorageError,
};
use raft_core::rt::tokio::TokioRuntime;
use raft_core::testing::{MemLogStore, MemStateMachine, Router, ThreadPoolRuntime, kv_command};
use raft_core::{Config, NotLeader, ProposeError, Role};
use raft_proto::{Bytes, Entry, LogIndex, Membership, NodeId, SnapshotMeta};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Runs `scenario` once on tokio and once on the `futures` thread pool.
macro_rules! on_both_runtimes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tokio() {
                let rt = std::sync::Arc::new(super::TokioRuntime::current().unwrap());
                super::$name(rt).await;
            }

            #[test]
            fn thread_pool() {
                let rt = std::sync::Arc::new(super::ThreadPoolRuntime::new(2).unwrap());
                futures::executor::block_on(super::$name(rt));
            }
        }
    )*};
}

on_both_runtimes!(
    three_nodes_elect_and_replicate,
    a_follower_answers_not_leader_with_the_leaders_id,
    leader_crash_with_proposals_in_flight,
    a_lagging_follower_catches_up,
    shutdown_and_restart_from_the_same_storage,
    linearizable_read_after_a_leader_change,
    a_far_behind_follower_catches_up_by_snapshot,
    five_nodes_survive_two_failures,
    a_failing_disk_stops_the_node_with_a_clear_error,
    a_failing_state_machine_stops_the_node_with_what_it_was_doing,
    a_node_whose_snapshot_was_lost_starts_and_gets_the_state_back,
);

const PATIENCE: Duration = Duration::from_secs(20);

/// Fails the test if `fut` takes longer than `PATIENCE`.
async fn within<T>(rt: &Arc<dyn Runtime>, what: &str, fut: impl Future<Output = T>) -> T {
    futures::select! {
        v = fut.fuse() => v,
        _ = rt.sleep(PATIENCE).fuse() => panic!("timed out waiting for {what}"),
    }
}

struct Cluster {
    rt: Arc<dyn Runtime>,
    router: Router,
    members: Membership,
    tune: fn(&mut Config),
    nodes: BTreeMap<NodeId, Node>,
    logs: BTreeMap<NodeId, MemLogStore>,
    machines: BTreeMap<NodeId, MemStateMachine>,
}

impl Cluster {
    async fn start(rt: Arc<dyn Runtime>, size: u64, tune: fn(&mut Config)) -> Cluster {
        let members = Membership::voters((1..=size).map(NodeId));
        let mut c = Cluster {
            rt,
            router: Router::new(),
            members,
            tune,
            nodes: BTreeMap::new(),
            logs: BTreeMap::new(),
            machines: BTreeMap::new(),
        };
        for id in 1..=size {
            c.start_node(NodeId(id)).await;
        }
        c
    }

    /// Starts (or restarts) `id` over its stores.
    async fn start_node(&mut self, id: NodeId) {
        let log = self.logs.entry(id).or_default().clone();
        let sm = self
            .machines
            .entry(id)
            .or_insert_with(|| MemStateMachine::new(id.0))
            .clone();
        let (transport, incoming) = self.router.register(id);
        let mut config = Config::new(id);
        config.rng_seed = id.0 * 7919;
        (self.tune)(&mut config);
        let mut options = NodeOptions::new(self.members.clone());
        options.tick = Duration::from_millis(5);
        let env = Environment {
            log: Arc::new(log),
            state_machine: Arc::new(sm),
            transport,
            incoming,
            runtime: self.rt.clone(),
        };
        let node = Node::start(config, options, env).await.unwrap();
        self.nodes.insert(id, node);
    }

    /// Stops `id` and disconnects it (its stores survive).
    async fn stop_node(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.remove(&id) {
            self.router.unregister(id);
            node.shutdown().await;
        }
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    /// Waits until the running nodes agree on one leader that leads their term.
    async fn leader(&self) -> NodeId {
        self.leader_other_than(None).await
    }

    /// Waits until the running nodes agree on one leader other than `not`.
    async fn leader_other_than(&self, not: Option<NodeId>) -> NodeId {
        within(&self.rt, "a leader", async {
            loop {
                let ms: Vec<Metrics> = self.nodes.values().map(|n| n.metrics().get()).collect();
                if let Some(l) = ms
                    .iter()
                    .find(|m| m.role == Role::Leader && Some(m.id) != not)
                    && ms
                        .iter()
                        .all(|m| m.term == l.term && m.leader == Some(l.id))
                {
                    return l.id;
                }
                self.rt.sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Waits until every running node's state machine has applied `index`.
    async fn applied_everywhere(&self, index: raft_proto::LogIndex) {
        for node in self.nodes.values() {
            let mut w = node.metrics();
            within(
                &self.rt,
                "apply everywhere",
                w.wait_for(|m| m.applied >= index),
            )
            .await;
        }
    }

    /// What `id`'s state machine has applied (after a successful proposal on the leader,
    /// at least that proposal).
    fn applied(&self, id: NodeId) -> raft_proto::LogIndex {
        self.machines[&id].applied().index
    }

    async fn put(&self, on: NodeId, key: &str, value: &str) -> Result<(), ProposeError> {
        within(
            &self.rt,
            "a proposal",
            self.node(on).propose(kv_command("put", key, value)),
        )
        .await
        .map(|_| ())
    }

    async fn shutdown(self) {
        for node in self.nodes.values() {
            node.shutdown().await;
        }
    }
}

fn defaults(_: &mut Config) {}

async fn three_nodes_elect_and_replicate(rt: Arc<dyn Runtime>) {
    let c = Cluster::start(rt, 3, defaults).await;
    let leader = c.leader().await;
    for i in 0..20 {
        c.put(leader, &format!("k{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    let applied = c.applied(leader);
    c.applied_everywhere(applied).await;
    for sm in c.machines.values() {
        assert_eq!(sm.get("k19").as_deref(), Some("v19"));
        assert_eq!(sm.dump().len(), 20);
    }
    c.shutdown().await;
}

async fn a_follower_answers_not_leader_with_the_leaders_id(rt: Arc<dyn Runtime>) {
    let c = Cluster::start(rt, 3, defaults).await;
    let leader = c.leader().await;
    let follower = c.nodes.keys().copied().find(|&id| id != leader).unwrap();
    let err = c.put(follower, "x", "1").await.unwrap_err();
    assert_eq!(
        err,
        ProposeError::NotLeader(NotLeader {
            leader_hint: Some(leader)
        })
    );
    c.shutdown().await;
}

async fn leader_crash_with_proposals_in_flight(rt: Arc<dyn Runtime>) {
    let mut c = Cluster::start(rt, 3, defaults).await;
    let old = c.leader().await;
    let node = c.node(old).clone();
    // Twenty proposals in flight, then the leader goes away.
    let inflight: Vec<_> = (0..20)
        .map(|i| {
            let node = node.clone();
            async move { node.propose(kv_command("put", &format!("p{i}"), "x")).await }
        })
        .collect();
    let results = futures::future::join_all(inflight.into_iter().map(|f| f.boxed()));
    let stop = c.stop_node(old);
    let (results, ()) = futures::join!(results, stop);
    for r in &results {
        assert!(
            matches!(
                r,
                Ok(_)
                    | Err(ProposeError::Stopped
                        | ProposeError::Dropped(_)
                        | ProposeError::Indeterminate)
            ),
            "unexpected result {r:?}"
        );
    }
    let new = c.leader().await;
    assert_ne!(new, old);
    c.put(new, "after", "crash").await.unwrap();
    // Every acknowledged proposal survived the crash.
    for (i, r) in results.iter().enumerate() {
        if r.is_ok() {
            assert_eq!(
                c.machines[&new].get(&format!("p{i}")).as_deref(),
                Some("x"),
                "acknowledged p{i} lost"
            );
        }
    }
    // The old leader comes back and catches up.
    c.start_node(old).await;
    let applied = c.applied(new);
    c.applied_everywhere(applied).await;
    assert_eq!(c.machines[&old].dump(), c.machines[&new].dump());
    c.shutdown().await;
}

async fn a_lagging_follower_catches_up(rt: Arc<dyn Runtime>) {
    let c = Cluster::start(rt, 3, defaults).await;
    let leader = c.leader().await;
    let follower = c.nodes.keys().copied().find(|&id| id != leader).unwrap();
    // The other two still make a majority.
    c.router.isolate(follower);
    for i in 0..50 {
        c.put(leader, &format!("k{i}"), "v").await.unwrap();
    }
    assert!(
        c.machines[&follower].dump().len() < 50,
        "the follower is behind"
    );
    c.router.heal();
    let applied = c.applied(leader);
    c.applied_everywhere(applied).await;
    assert_eq!(c.machines[&follower].dump().len(), 50);
    c.shutdown().await;
}

async fn shutdown_and_restart_from_the_same_storage(rt: Arc<dyn Runtime>) {
    let mut c = Cluster::start(rt, 3, defaults).await;
    let leader = c.leader().await;
    for i in 0..10 {
        c.put(leader, &format!("k{i}"), "v").await.unwrap();
    }
    let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
    for &id in &ids {
        c.stop_node(id).await;
    }
    for &id in &ids {
        c.start_node(id).await;
    }
    let leader = c.leader().await;
    c.put(leader, "after", "restart").await.unwrap();
    let applied = c.applied(leader);
    c.applied_everywhere(applied).await;
    for sm in c.machines.values() {
        assert_eq!(sm.dump().len(), 11, "nothing lost, nothing applied twice");
    }
    c.shutdown().await;
}

async fn linearizable_read_after_a_leader_change(rt: Arc<dyn Runtime>) {
    let c = Cluster::start(rt, 3, defaults).await;
    let old = c.leader().await;
    c.put(old, "x", "1").await.unwrap();
    let next = c.nodes.keys().copied().find(|&id| id != old).unwrap();
    within(&c.rt, "a transfer", c.node(old).transfer_leader(next))
        .await
        .unwrap();
    let new = c.leader_other_than(Some(old)).await;
    c.put(new, "x", "2").await.unwrap();
    // A read barrier on every node, then the local state machine: the last write shows.
    for (&id, node) in &c.nodes {
        within(&c.rt, "a read", node.read()).await.unwrap();
        assert_eq!(
            c.machines[&id].get("x").as_deref(),
            Some("2"),
            "stale read on node {id}"
        );
    }
    c.shutdown().await;
}

fn small_snapshots(config: &mut Config) {
    config.snapshot_entries = 10;
    config.snapshot_keep_entries = 2;
    config.snapshot_chunk_bytes = 64;
}

async fn a_far_behind_follower_catches_up_by_snapshot(rt: Arc<dyn Runtime>) {
    let mut c = Cluster::start(rt, 3, small_snapshots).await;
    let leader = c.leader().await;
    let follower = c.nodes.keys().copied().find(|&id| id != leader).unwrap();
    c.stop_node(follower).await;
    for i in 0..60 {
        c.put(leader, &format!("k{i}"), &"v".repeat(20))
            .await
            .unwrap();
    }
    let m = c.node(leader).metrics().get();
    assert!(
        m.snapshot.index.0 >= 50,
        "the leader took snapshots: {:?}",
        m.snapshot
    );
    c.start_node(follower).await;
    c.applied_everywhere(c.applied(leader)).await;
    assert_eq!(c.machines[&follower].dump(), c.machines[&leader].dump());
    assert!(
        c.node(follower).metrics().get().snapshot.index.0 >= 50,
        "installed a snapshot"
    );
    c.shutdown().await;
}

async fn five_nodes_survive_two_failures(rt: Arc<dyn Runtime>) {
    let mut c = Cluster::start(rt, 5, defaults).await;
    let leader = c.leader().await;
    c.put(leader, "a", "1").await.unwrap();
    let down: Vec<NodeId> = c
        .nodes
        .keys()
        .copied()
        .filter(|&id| id != leader)
        .take(2)
        .collect();
    for &id in &down {
        c.stop_node(id).await;
    }
    c.put(leader, "b", "2").await.unwrap();
    c.stop_node(leader).await;
    // Two of five are left: no majority, no progress.
    let survivors: Vec<NodeId> = c.nodes.keys().copied().collect();
    assert_eq!(survivors.len(), 2);
    for &id in &down {
        c.start_node(id).await;
    }
    let new = c.leader().await;
    c.put(new, "c", "3").await.unwrap();
    assert_eq!(c.machines[&new].get("b").as_deref(), Some("2"));
    assert!(
        c.nodes
            .values()
            .all(|n| n.metrics().get().state == NodeState::Running)
    );
    c.shutdown().await;
}

async fn a_failing_disk_stops_the_node_with_a_clear_error(rt: Arc<dyn Runtime>) {
    let c = Cluster::start(rt, 3, defaults).await;
    let leader = c.leader().await;
    c.put(leader, "before", "1").await.unwrap();
    c.logs[&leader].set_failing(true);
    let err = c.put(leader, "during", "2").await.unwrap_err();
    assert_eq!(err, ProposeError::Stopped);
    let mut w = c.node(leader).metrics();
    let stopped = within(
        &c.rt,
        "the node to stop",
        w.wait_for(|m| m.state != NodeState::Running),
    )
    .await
    .unwrap();
    let NodeState::Stopped(Some(reason)) = stopped.state else {
        panic!("no reason given: {:?}", stopped.state)
    };
    assert!(matches!(reason, FatalError::Log(_)), "{reason:?}");
    let operation = reason.storage().map(|e| e.operation);
    assert_eq!(operation, Some("write to the log"), "{reason}");
    assert!(reason.to_string().contains("write to the log"), "{reason}");
    // The others elect a new leader and keep what was acknowledged.
    let rest: Vec<NodeId> = c.nodes.keys().copied().filter(|&id| id != leader).collect();
    let new = within(&c.rt, "a new leader", async {
        loop {
            if let Some(l) = rest
                .iter()
                .find(|&&id| c.node(id).metrics().get().role == Role::Leader)
            {
                return *l;
            }
            c.rt.sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    c.put(new, "after", "3").await.unwrap();
    assert_eq!(c.machines[&new].get("before").as_deref(), Some("1"));
    c.shutdown().await;
}

/// Issue 14: a node restarts over its log with its snapshot gone (an empty state
/// machine, as after a damaged snapshot file): `Node::start` does not refuse, the node
/// reports its state lost, applies and serves nothing, and gets the state back from
/// the leader's snapshot.
/// A state machine whose applies fail once `failing` is set, and wait while `open` is
/// false (its apply task then lags behind the driver, as a slow state machine's does).
struct ControlledApply {
    inner: MemStateMachine,
    failing: Arc<AtomicBool>,
    open: Arc<AtomicBool>,
    rt: Arc<dyn Runtime>,
}

impl ControlledApply {
    fn new(inner: MemStateMachine, rt: Arc<dyn Runtime>) -> ControlledApply {
        ControlledApply {
            inner,
            failing: Arc::new(AtomicBool::new(false)),
            open: Arc::new(AtomicBool::new(true)),
            rt,
        }
    }
}

#[async_trait::async_trait]
impl StateMachine for ControlledApply {
    async fn state(&self) -> Result<MachineState, StorageError> {
        self.inner.state().await
    }

    async fn apply(&self, entries: &[Entry]) -> Result<Vec<Bytes>, StorageError> {
        while !self.open.load(Ordering::SeqCst) {
            self.rt.sleep(Duration::from_millis(2)).await;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(StorageError::new(
                "apply to the state machine",
                "injected failure",
            ));
        }
        self.inner.apply(entries).await
    }

    fn begin_snapshot(&self, meta: SnapshotMeta) -> SnapshotTask {
        self.inner.begin_snapshot(meta)
    }

    async fn read_snapshot(
        &self,
        id: u64,
        offset: u64,
        len: usize,
    ) -> Result<Option<(Bytes, bool)>, StorageError> {
        self.inner.read_snapshot(id, offset, len).await
    }

    async fn receive_snapshot(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError> {
        self.inner.receive_snapshot(meta, offset, data).await
    }

    async fn install_snapshot(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        self.inner.install_snapshot(meta).await
    }
}

/// A failed apply stops the node, and its state says the apply failed (not the log).
async fn a_failing_state_machine_stops_the_node_with_what_it_was_doing(rt: Arc<dyn Runtime>) {
    let id = NodeId(1);
    let machine = ControlledApply::new(MemStateMachine::new(1), rt.clone());
    let failing = machine.failing.clone();
    let router = Router::new();
    let (transport, incoming) = router.register(id);
    let env = Environment {
        log: Arc::new(MemLogStore::new()),
        state_machine: Arc::new(machine),
        transport,
        incoming,
        runtime: rt.clone(),
    };
    let mut options = NodeOptions::new(Membership::voters([id]));
    options.tick = Duration::from_millis(5);
    let node = Node::start(Config::new(id), options, env).await.unwrap();
    within(&rt, "a leader", node.leader()).await;
    let put = |v: &'static str| node.propose(kv_command("put", "k", v));
    within(&rt, "a write", put("1")).await.unwrap();
    failing.store(true, Ordering::SeqCst);
    let err = within(&rt, "a failed write", put("2")).await.unwrap_err();
    assert_eq!(err, ProposeError::Stopped);
    let mut w = node.metrics();
    let stopped = within(
        &rt,
        "the node to stop",
        w.wait_for(|m| m.state != NodeState::Running),
    )
    .await
    .unwrap();
    let NodeState::Stopped(Some(reason)) = stopped.state else {
        panic!("no reason given: {:?}", stopped.state)
    };
    assert!(matches!(reason, FatalError::Apply(_)), "{reason:?}");
    let operation = reason.storage().map(|e| e.operation);
    assert_eq!(operation, Some("apply to the state machine"), "{reason}");
    assert!(reason.to_string().contains("injected failure"), "{reason}");
    node.shutdown().await;
}

async fn a_node_whose_snapshot_was_lost_starts_and_gets_the_state_back(rt: Arc<dyn Runtime>) {
    let mut c = Cluster::start(rt, 3, small_snapshots).await;
    let leader = c.leader().await;
    for i in 0..40 {
        c.put(leader, &format!("k{i}"), "v").await.unwrap();
    }
    c.applied_everywhere(c.applied(leader)).await;
    let follower = c.nodes.keys().copied().find(|&id| id != leader).unwrap();
    c.stop_node(follower).await;
    assert!(
        c.logs[&follower].snapshot().purged.index.0 > 0,
        "its log was compacted behind a snapshot"
    );
    c.machines
        .insert(follower, MemStateMachine::new(follower.0 + 100));
    c.start_node(follower).await;
    // The first published metrics are those of the restored core.
    assert!(
        c.node(follower).metrics().get().state_lost || c.applied(follower).0 > 0,
        "it started knowing its state was lost"
    );
    c.put(leader, "after", "1").await.unwrap();
    c.applied_everywhere(c.applied(leader)).await;
    let m = c.node(follower).metrics().get();
    assert!(!m.state_lost, "the state is back: {m:?}");
    assert_eq!(c.machines[&follower].dump(), c.machines[&leader].dump());
    c.shutdown().await;
}

/// A log store whose writes wait until released: the driver stalls on it (tokio only).
struct HeldLog {
    inner: MemLogStore,
    open: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl raft_core::node::LogStore for HeldLog {
    async fn load(&self) -> Result<raft_core::node::StoredLog, raft_core::node::StorageError> {
        self.inner.load().await
    }
    async fn write(&self, batch: &raft_core::Persist) -> Result<(), raft_core::node::StorageError> {
        while !self.open.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.inner.write(batch).await
    }
    async fn purge(
        &self,
        up_to: raft_proto::LogId,
        base: &raft_proto::SnapshotMeta,
    ) -> Result<(), raft_core::node::StorageError> {
        self.inner.purge(up_to, base).await
    }
    async fn reset(
        &self,
        base: &raft_proto::SnapshotMeta,
    ) -> Result<(), raft_core::node::StorageError> {
        self.inner.reset(base).await
    }
}

/// Back-pressure: while the driver is stuck (its disk holds every write), proposals
/// and reads beyond `max_queued_commands` are refused at once, and taken again once
/// it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_refuses_commands_beyond_its_queue_then_takes_them_again() {
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime::current().unwrap());
    let router = Router::new();
    let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let id = NodeId(1);
    let (transport, incoming) = router.register(id);
    let mut options = NodeOptions::new(Membership::voters([id]));
    options.max_queued_commands = 8;
    options.tick = Duration::from_millis(5);
    let env = Environment {
        log: Arc::new(HeldLog {
            inner: MemLogStore::new(),
            open: open.clone(),
        }),
        state_machine: Arc::new(MemStateMachine::new(1)),
        transport,
        incoming,
        runtime: rt.clone(),
    };
    let node = Node::start(Config::new(id), options, env).await.unwrap();
    within(&rt, "a leader", node.leader()).await;
    node.propose(kv_command("put", "a", "1")).await.unwrap();
    // Hold the disk: the next write blocks the driver, and commands pile up.
    open.store(false, std::sync::atomic::Ordering::SeqCst);
    let first = tokio::spawn({
        let node = node.clone();
        async move { node.propose(kv_command("put", "b", "2")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut waiting = Vec::new();
    for i in 0..8 {
        let node = node.clone();
        waiting.push(tokio::spawn(async move {
            node.propose(kv_command("put", &format!("k{i}"), "v")).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = node.propose(kv_command("put", "late", "x")).await;
    assert!(
        matches!(refused, Err(ProposeError::Overloaded { .. })),
        "{refused:?}"
    );
    assert!(matches!(
        node.read().await,
        Err(raft_core::ReadError::Overloaded { .. })
    ));
    // Released: everything queued completes, and new commands are taken again.
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    first.await.unwrap().unwrap();
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    node.propose(kv_command("put", "after", "y")).await.unwrap();
    node.read().await.unwrap();
    node.shutdown().await;
}

/// Issue 15 (§5.2, leader churn under load): a leader whose own log write stalls for
/// many election timeouts keeps its followers. Its heartbeats and appends go out while
/// the write is in flight (§10.2.1: the leader writes its log in parallel with
/// replication), so nobody starts an election; the stalled proposal completes once
/// the disk comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_stalls_keeps_heartbeating_and_its_followers() {
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime::current().unwrap());
    let router = Router::new();
    let members = Membership::voters((1..=3).map(NodeId));
    let mut nodes = BTreeMap::new();
    let mut disks = BTreeMap::new();
    for id in (1..=3).map(NodeId) {
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (transport, incoming) = router.register(id);
        let mut options = NodeOptions::new(members.clone());
        options.tick = Duration::from_millis(5);
        let mut config = Config::new(id);
        config.rng_seed = id.0 * 7919;
        let env = Environment {
            log: Arc::new(HeldLog {
                inner: MemLogStore::new(),
                open: open.clone(),
            }),
            state_machine: Arc::new(MemStateMachine::new(id.0)),
            transport,
            incoming,
            runtime: rt.clone(),
        };
        nodes.insert(id, Node::start(config, options, env).await.unwrap());
        disks.insert(id, open);
    }
    let leader = within(&rt, "a leader", nodes[&NodeId(1)].leader())
        .await
        .unwrap();
    nodes[&leader]
        .propose(kv_command("put", "a", "1"))
        .await
        .unwrap();
    let term = nodes[&leader].metrics().get().term;
    // The leader's disk holds its next write for 1 s: 10-20 election timeouts.
    disks[&leader].store(false, std::sync::atomic::Ordering::SeqCst);
    let stalled = tokio::spawn({
        let node = nodes[&leader].clone();
        async move { node.propose(kv_command("put", "b", "2")).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (id, node) in &nodes {
        let m = node.metrics().get();
        assert_eq!(
            (m.term, m.leader),
            (term, Some(leader)),
            "node {id} kept the leader while its disk stalled: {m:?}"
        );
    }
    disks[&leader].store(true, std::sync::atomic::Ordering::SeqCst);
    within(&rt, "the stalled proposal", stalled)
        .await
        .unwrap()
        .unwrap();
    nodes[&leader]
        .propose(kv_command("put", "c", "3"))
        .await
        .unwrap();
    assert_eq!(nodes[&leader].metrics().get().term, term);
    for node in nodes.values() {
        node.shutdown().await;
    }
}

/// Dissertation §6.4 step 4 on the shipped driver, whose apply task runs behind it: a
/// read waits for the state machine to apply the read index, not for the commit. A
/// write is committed but its apply held; a read issued then returns only once the
/// apply is let through, and the state machine then holds the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dissertation_6_4_a_read_waits_for_the_apply_task_not_the_commit() {
    let rt: Arc<dyn Runtime> = Arc::new(TokioRuntime::current().unwrap());
    let router = Router::new();
    let id = NodeId(1);
    let (transport, incoming) = router.register(id);
    let machine = MemStateMachine::new(1);
    let controlled = ControlledApply::new(machine.clone(), rt.clone());
    let open = controlled.open.clone();
    let mut options = NodeOptions::new(Membership::voters([id]));
    options.tick = Duration::from_millis(5);
    let env = Environment {
        log: Arc::new(MemLogStore::new()),
        state_machine: Arc::new(controlled),
        transport,
        incoming,
        runtime: rt.clone(),
    };
    let node = Node::start(Config::new(id), options, env).await.unwrap();
    within(&rt, "a leader", node.leader()).await;
    within(&rt, "a write", node.propose(kv_command("put", "a", "1")))
        .await
        .unwrap();
    // Settled: everything committed is applied, and the metrics say so.
    let mut w = node.metrics();
    let settled = within(
        &rt,
        "the apply",
        w.wait_for(|m| m.applied == m.committed && m.applied > LogIndex::ZERO),
    )
    .await
    .unwrap();
    open.store(false, Ordering::SeqCst);
    let held = tokio::spawn({
        let node = node.clone();
        async move { node.propose(kv_command("put", "b", "2")).await }
    });
    within(
        &rt,
        "the commit",
        w.wait_for(|m| m.committed > settled.committed),
    )
    .await;
    let read = tokio::spawn({
        let node = node.clone();
        async move { node.read().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !read.is_finished(),
        "a read returned with the write committed but not applied"
    );
    assert_eq!(machine.get("b"), None, "the apply is still held");
    open.store(true, Ordering::SeqCst);
    within(&rt, "the read", read).await.unwrap().unwrap();
    assert_eq!(
        machine.get("b").as_deref(),
        Some("2"),
        "the read saw the write"
    );
    within(&rt, "the held write", held).await.unwrap().unwrap();
    node.shutdown().await;
}

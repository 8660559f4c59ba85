//! Three `Node`s on LMDB stores: replication, snapshot catch-up through LMDB snapshot
//! files, and a whole-cluster restart from disk.

#![allow(clippy::unwrap_used)]

use raft_core::node::{Environment, Node, NodeOptions, Runtime};
use raft_core::testing::{Router, ThreadPoolRuntime, kv_command};
use raft_core::{Config, Role};
use raft_proto::{Membership, NodeId};
use raft_storage_lmdb::testing::TextKv as Kv;
use raft_storage_lmdb::{EnvConfig, LmdbLogStore, LmdbStateMachine, SmConfig};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

struct Cluster {
    rt: Arc<dyn Runtime>,
    router: Router,
    root: PathBuf,
    nodes: BTreeMap<NodeId, (Node, LmdbStateMachine<Kv>)>,
}

impl Cluster {
    async fn start_node(&mut self, id: NodeId) {
        let dir = self.root.join(format!("node{}", id.0));
        // A node restarting in this process reopens directories its previous self may
        // still be closing.
        let (log, sm) = loop {
            let log = LmdbLogStore::open(dir.join("log"), EnvConfig::default());
            let sm = LmdbStateMachine::open(dir.join("sm"), Kv, SmConfig::default());
            match (log, sm) {
                (Ok(l), Ok(s)) => break (l, s),
                _ => self.rt.sleep(Duration::from_millis(20)).await,
            }
        };
        let (transport, incoming) = self.router.register(id);
        let mut config = Config::new(id);
        config.snapshot_entries = 20;
        config.snapshot_keep_entries = 5;
        config.snapshot_chunk_bytes = 1024;
        let mut options = NodeOptions::new(Membership::voters([NodeId(1), NodeId(2), NodeId(3)]));
        options.tick = Duration::from_millis(5);
        let env = Environment {
            log: Arc::new(log),
            state_machine: Arc::new(sm.clone()),
            transport,
            incoming,
            runtime: self.rt.clone(),
        };
        let node = Node::start(config, options, env).await.unwrap();
        self.nodes.insert(id, (node, sm));
    }

    async fn stop_node(&mut self, id: NodeId) {
        if let Some((node, _)) = self.nodes.remove(&id) {
            self.router.unregister(id);
            node.shutdown().await;
        }
    }

    async fn leader(&self) -> NodeId {
        for _ in 0..4000 {
            if let Some((&id, _)) = self
                .nodes
                .iter()
                .find(|(_, (n, _))| n.metrics().get().role == Role::Leader)
            {
                return id;
            }
            self.rt.sleep(Duration::from_millis(5)).await;
        }
        panic!("no leader");
    }

    fn value(&self, id: NodeId, key: &str) -> Option<String> {
        let (_, sm) = &self.nodes[&id];
        sm.read(|v| {
            Ok(v.data
                .get(v.txn, key.as_bytes())?
                .map(|b| String::from_utf8_lossy(b).into_owned()))
        })
        .unwrap()
    }

    /// Waits until every node applied everything the leader holds. (Not the leader's
    /// `applied` metric: a proposal is answered by the apply task before the driver
    /// publishes the new applied index, so that can lag the write just answered.)
    async fn converge(&self, leader: NodeId) {
        let target = self.nodes[&leader].0.metrics().get().last_log_id.index;
        for (node, _) in self.nodes.values() {
            let mut w = node.metrics();
            if w.wait_for(|m| m.applied >= target).await.is_none() {
                panic!("a node stopped before applying index {target}");
            }
        }
    }
}

#[test]
fn a_cluster_on_lmdb_replicates_snapshots_and_restarts() {
    let root = tempfile::tempdir().unwrap();
    let rt: Arc<dyn Runtime> = Arc::new(ThreadPoolRuntime::new(2).unwrap());
    let mut c = Cluster {
        rt,
        router: Router::new(),
        root: root.path().to_path_buf(),
        nodes: BTreeMap::new(),
    };
    futures::executor::block_on(async {
        for id in 1..=3 {
            c.start_node(NodeId(id)).await;
        }
        let leader = c.leader().await;
        let lagging = c.nodes.keys().copied().find(|&id| id != leader).unwrap();
        c.stop_node(lagging).await;
        for i in 0..120 {
            let node = &c.nodes[&leader].0;
            node.propose(kv_command("put", &format!("k{i}"), &format!("v{i}")))
                .await
                .unwrap();
        }
        let m = c.nodes[&leader].0.metrics().get();
        assert!(
            m.snapshot.index.0 >= 100,
            "the leader snapshotted and compacted: {:?}",
            m.snapshot
        );
        // The lagging node restarts from its disk and catches up by snapshot.
        c.start_node(lagging).await;
        c.converge(leader).await;
        assert!(
            c.nodes[&lagging].0.metrics().get().snapshot.index.0 >= 100,
            "it installed a snapshot"
        );
        assert_eq!(c.value(lagging, "k119").as_deref(), Some("v119"));
        assert_eq!(c.value(lagging, "k0").as_deref(), Some("v0"));
        // The whole cluster restarts from disk and carries on.
        for id in 1..=3 {
            c.stop_node(NodeId(id)).await;
        }
        for id in 1..=3 {
            c.start_node(NodeId(id)).await;
        }
        let leader = c.leader().await;
        c.nodes[&leader]
            .0
            .propose(kv_command("put", "after", "restart"))
            .await
            .unwrap();
        c.converge(leader).await;
        for id in 1..=3 {
            assert_eq!(
                c.value(NodeId(id), "k57").as_deref(),
                Some("v57"),
                "node {id}"
            );
            assert_eq!(
                c.value(NodeId(id), "after").as_deref(),
                Some("restart"),
                "node {id}"
            );
        }
        for id in 1..=3 {
            c.stop_node(NodeId(id)).await;
        }
    });
}

//! Three `raft_core::node::Node`s talking over QUIC with mutual TLS on 127.0.0.1:
//! election, replication, a leader killed and restarted on its address, and a snapshot
//! sent over the snapshot stream to a node that fell behind.

#![allow(clippy::unwrap_used)]

mod support;

use raft_core::node::{Environment, Metrics, Node, NodeOptions, Runtime};
use raft_core::rt::tokio::TokioRuntime;
use raft_core::testing::{MemLogStore, MemStateMachine, kv_command};
use raft_core::{Config, Role};
use raft_net_quic::{QuicConfig, QuicTransport, Started};
use raft_proto::{LogIndex, Membership, NodeId};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::{Pki, localhost};

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

struct Member {
    node: Node,
    transport: Arc<QuicTransport>,
    log: MemLogStore,
    sm: MemStateMachine,
}

struct Cluster {
    pki: Pki,
    rt: Arc<dyn Runtime>,
    addrs: BTreeMap<NodeId, SocketAddr>,
    members: BTreeMap<NodeId, Member>,
    stopped: BTreeMap<NodeId, (MemLogStore, MemStateMachine)>,
}

impl Cluster {
    async fn start() -> Cluster {
        let mut c = Cluster {
            pki: Pki::new(),
            rt: Arc::new(TokioRuntime::current().unwrap()),
            addrs: BTreeMap::new(),
            members: BTreeMap::new(),
            stopped: BTreeMap::new(),
        };
        // Reserve three addresses first, so every node knows all of them at start.
        let sockets: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind(localhost()).unwrap())
            .collect();
        for (i, s) in sockets.iter().enumerate() {
            c.addrs
                .insert(NodeId(i as u64 + 1), s.local_addr().unwrap());
        }
        drop(sockets);
        for id in 1..=3 {
            c.start_node(NodeId(id), MemLogStore::new(), MemStateMachine::new(id))
                .await;
        }
        c
    }

    async fn start_node(&mut self, id: NodeId, log: MemLogStore, sm: MemStateMachine) {
        let mut config =
            QuicConfig::new(id, self.addrs[&id], self.addrs.clone(), self.pki.node(id.0));
        config.reconnect = (Duration::from_millis(20), Duration::from_millis(200));
        let Started {
            transport,
            incoming,
            ..
        } = loop {
            // A restarted node's port is free once its old endpoint has let go.
            match QuicTransport::start(config.clone(), raft_net_quic::tokio_runtime().unwrap()) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let mut raft = Config::new(id);
        raft.snapshot_entries = 50;
        raft.snapshot_keep_entries = 10;
        raft.snapshot_chunk_bytes = 512;
        let mut options = NodeOptions::new(Membership::voters([NodeId(1), NodeId(2), NodeId(3)]));
        options.tick = Duration::from_millis(10);
        let env = Environment {
            log: Arc::new(log.clone()),
            state_machine: Arc::new(sm.clone()),
            transport: transport.clone(),
            incoming,
            runtime: self.rt.clone(),
        };
        let node = Node::start(raft, options, env).await.unwrap();
        self.members.insert(
            id,
            Member {
                node,
                transport,
                log,
                sm,
            },
        );
    }

    async fn stop_node(&mut self, id: NodeId) {
        let m = self.members.remove(&id).unwrap();
        m.node.shutdown().await;
        m.transport.close();
        self.stopped.insert(id, (m.log, m.sm));
    }

    async fn restart_node(&mut self, id: NodeId) {
        let (log, sm) = self.stopped.remove(&id).unwrap();
        self.start_node(id, log, sm).await;
    }

    async fn leader(&self, not: Option<NodeId>) -> NodeId {
        within("a leader", async {
            loop {
                let ms: Vec<Metrics> = self
                    .members
                    .values()
                    .map(|m| m.node.metrics().get())
                    .collect();
                if let Some(l) = ms
                    .iter()
                    .find(|m| m.role == Role::Leader && Some(m.id) != not)
                    && ms
                        .iter()
                        .all(|m| m.term == l.term && m.leader == Some(l.id))
                {
                    return l.id;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    async fn put(&self, on: NodeId, key: &str, value: &str) {
        within(
            "a proposal",
            self.members[&on]
                .node
                .propose(kv_command("put", key, value)),
        )
        .await
        .unwrap();
    }

    async fn applied_everywhere(&self, index: LogIndex) {
        for m in self.members.values() {
            let mut w = m.node.metrics();
            within("apply everywhere", w.wait_for(|x| x.applied >= index)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_quic_elects_replicates_and_survives_a_leader_restart() {
    let mut c = Cluster::start().await;
    let leader = c.leader(None).await;
    for i in 0..20 {
        c.put(leader, &format!("a{i}"), &format!("{i}")).await;
    }
    // Kill the leader; the other two elect a new one over their own connection.
    c.stop_node(leader).await;
    let new_leader = c.leader(Some(leader)).await;
    // Enough entries that the new leader snapshots and compacts past everything the
    // old leader has: it can only catch up by InstallSnapshot on the snapshot stream.
    for i in 0..150 {
        c.put(new_leader, &format!("b{i}"), &format!("{i}")).await;
    }
    let snap = c.members[&new_leader].node.metrics().get().snapshot;
    assert!(
        snap.index.0 > 100,
        "the new leader compacted its log: {snap:?}"
    );
    c.restart_node(leader).await;
    // Everything the leader holds (its `applied` metric may lag the put just answered).
    let last = c.members[&new_leader]
        .node
        .metrics()
        .get()
        .last_log_id
        .index;
    c.applied_everywhere(last).await;
    let back = &c.members[&leader];
    assert!(
        back.node.metrics().get().snapshot.index >= snap.index,
        "the restarted node installed a snapshot"
    );
    assert_eq!(back.sm.get("b149").as_deref(), Some("149"));
    assert_eq!(back.sm.get("a0").as_deref(), Some("0"));
    assert_eq!(back.sm.dump(), c.members[&new_leader].sm.dump());
    let stats = c.members[&new_leader].transport.stats();
    assert!(stats.iter().all(|s| s.connected), "{stats:?}");
    for m in c.members.values() {
        m.node.shutdown().await;
        m.transport.close();
    }
}

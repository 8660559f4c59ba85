//! The async `Node` end to end, in process.
//!
//! One iteration of `propose/clients/N` (N = 1, 64, 256, 4096) is one operation: an
//! empty command proposed to the leader of a 3-node cluster (in-memory log and state
//! machine, in-process transport, tokio with 2 worker threads) and its response
//! returned to the proposer after the leader applied it. N proposers run concurrently,
//! each with one request in flight; throughput is operations per second. (The workload
//! of openraft's `benchmarks/minimal`.) The cluster is started once, before the first
//! of these benches that runs, and shared by all of them.

use criterion::{BenchmarkId, Criterion, Throughput};
use raft_core::Config;
use raft_core::node::{Environment, Node, NodeOptions, Runtime};
use raft_core::rt::tokio::TokioRuntime;
use raft_core::testing::{MemLogStore, MemStateMachine, Router};
use raft_proto::{Bytes, Membership, NodeId};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cluster(rt: &tokio::runtime::Runtime) -> (Vec<Node>, Node) {
    rt.block_on(async {
        let runtime: Arc<dyn Runtime> = Arc::new(TokioRuntime::current().expect("in tokio"));
        let router = Router::new();
        let ids = [NodeId(1), NodeId(2), NodeId(3)];
        let mut nodes = Vec::new();
        for id in ids {
            let (transport, incoming) = router.register(id);
            let env = Environment {
                log: Arc::new(MemLogStore::new()),
                state_machine: Arc::new(MemStateMachine::new(id.0)),
                transport,
                incoming,
                runtime: runtime.clone(),
            };
            let node = Node::start(
                Config::new(id),
                NodeOptions::new(Membership::voters(ids)),
                env,
            )
            .await
            .expect("start");
            nodes.push(node);
        }
        let leader = nodes[0].leader().await.expect("a leader");
        let leader = nodes[(leader.0 - 1) as usize].clone();
        // Wait until the leader has committed its first entry and accepts writes.
        while leader.propose(Bytes::new()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (nodes, leader)
    })
}

fn propose(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("tokio");
    // Started by the first bench that runs (a filter may skip them all).
    let mut started: Option<(Vec<Node>, Node)> = None;
    let mut group = c.benchmark_group("propose");
    group.throughput(Throughput::Elements(1));
    for clients in [1usize, 64, 256, 4096] {
        group.bench_with_input(
            BenchmarkId::new("clients", clients),
            &clients,
            |b, &clients| {
                let leader = started.get_or_insert_with(|| cluster(&rt)).1.clone();
                b.iter_custom(|iters| {
                    let per_client = iters.div_ceil(clients as u64);
                    let leader = leader.clone();
                    rt.block_on(async move {
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..clients)
                            .map(|_| {
                                let leader = leader.clone();
                                tokio::spawn(async move {
                                    for _ in 0..per_client {
                                        leader.propose(Bytes::new()).await.expect("committed");
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.expect("proposer");
                        }
                        // Scale to exactly `iters` operations.
                        start
                            .elapsed()
                            .mul_f64(iters as f64 / (per_client * clients as u64) as f64)
                    })
                });
            },
        );
    }
    group.finish();
    if let Some((nodes, _)) = started {
        rt.block_on(async {
            for n in &nodes {
                n.shutdown().await;
            }
        });
    }
}

/// The suite of this layer.
pub(crate) fn suite(c: &mut Criterion) {
    propose(c);
}

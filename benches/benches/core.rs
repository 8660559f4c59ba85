//! The pure cost of the sans-IO state machine (raft-core's `Raft`, no I/O).
//!
//! One iteration of `commit/batch/N` (N = 1, 64): the leader of a 3-node in-memory cluster takes N
//! proposals of 128 bytes, and the cluster is driven (messages passed by function call,
//! persists acknowledged at once, applies acknowledged at once) until all N entries
//! are committed and applied on all three nodes. Throughput is reported per entry.

use criterion::{BenchmarkId, Criterion, Throughput};
use raft_core::{Action, Config, Raft, Restore, Role};
use raft_proto::{Bytes, LogIndex, Membership, Message, NodeId};
use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

struct Cluster {
    nodes: Vec<Raft>,
    wire: VecDeque<(NodeId, NodeId, Message)>,
    applied: Vec<LogIndex>,
}

impl Cluster {
    fn new() -> Cluster {
        let ids = [NodeId(1), NodeId(2), NodeId(3)];
        let nodes = ids
            .iter()
            .map(|&id| {
                let restore = Restore::bootstrap(Membership::voters(ids));
                let mut config = Config::new(id);
                // This bench measures replication; snapshots have their own.
                config.snapshot_entries = 0;
                Raft::new(config, restore).expect("valid config")
            })
            .collect();
        let mut c = Cluster {
            nodes,
            wire: VecDeque::new(),
            applied: vec![LogIndex(0); 3],
        };
        while c.nodes[0].role() != Role::Leader {
            c.nodes[0].tick();
            c.drive();
        }
        c
    }

    fn pump(&mut self, i: usize) {
        let raft = &mut self.nodes[i];
        let from = raft.id();
        while let Some(action) = raft.poll_action() {
            match action {
                Action::Send { to, message } => self.wire.push_back((from, to, message)),
                Action::Persist(p) => {
                    if let Some(last) = p.entries.last() {
                        raft.persisted(last.log_id);
                    }
                }
                Action::Apply(entries) => {
                    if let Some(last) = entries.last() {
                        self.applied[i] = last.log_id.index;
                        raft.applied(last.log_id.index);
                    }
                    black_box(entries);
                }
                _ => {}
            }
        }
    }

    fn drive(&mut self) {
        loop {
            for i in 0..self.nodes.len() {
                self.pump(i);
            }
            let Some((from, to, msg)) = self.wire.pop_front() else {
                break;
            };
            let i = (to.0 - 1) as usize;
            self.nodes[i].step(from, msg);
        }
    }

    /// Proposes `batch` commands and drives until all nodes applied them.
    fn commit_batch(&mut self, batch: usize, payload: &Bytes) {
        let mut last = LogIndex(0);
        for _ in 0..batch {
            last = self.nodes[0]
                .propose(payload.clone())
                .expect("leader")
                .index;
        }
        self.drive();
        assert!(
            self.applied.iter().all(|&a| a >= last),
            "not applied everywhere"
        );
    }
}

fn commit(c: &mut Criterion) {
    let payload = Bytes::from(vec![7u8; 128]);
    let mut group = c.benchmark_group("commit");
    for batch in [1usize, 64] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut cluster = Cluster::new();
                let mut entries = 0usize;
                for _ in 0..iters {
                    // Without compaction the log grows: start over now and then, off
                    // the clock.
                    if entries > 200_000 {
                        cluster = Cluster::new();
                        entries = 0;
                    }
                    let start = Instant::now();
                    cluster.commit_batch(batch, &payload);
                    total += start.elapsed();
                    entries += batch;
                }
                total
            });
        });
    }
    group.finish();
}

/// The suite of this layer.
pub(crate) fn suite(c: &mut Criterion) {
    commit(c);
}

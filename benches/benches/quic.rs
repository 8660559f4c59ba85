//! What the QUIC transport costs on loopback, two `QuicTransport`s in one process.
//!
//! - `frames/append_128B`: one iteration is one `AppendEntries` carrying one 128-byte
//!   command, sent from node 1 to node 2 and decoded there (encode, queue, batch,
//!   encrypt, UDP, decrypt, decode). Measured as the time from the first send of a
//!   burst until node 2 has received all of it; the queue is made large enough that
//!   nothing is dropped (checked).
//! - `round_trip/heartbeat`: node 1 sends a heartbeat, node 2 echoes it back, node 1
//!   receives the echo: one iteration is one full round trip, one message in flight.
//!   Criterion's median is the p50; `raft-net-quic/benches/rtt.rs` prints the p99.
//! - `snapshot/64MiB`: one iteration streams 64 MiB of `InstallSnapshot` chunks
//!   (1 MiB each, at most 4 queued, like a leader) on the snapshot stream, until node 2
//!   has received all of it. Throughput is bytes per second.
//!
//! Each group connects its own pair of transports (on a tokio runtime with 2 worker
//! threads) before its bench first runs; the connection is warm when measuring starts.

#![allow(clippy::unwrap_used)]

use criterion::{Criterion, Throughput};
use futures::StreamExt;
use futures::stream::BoxStream;
use raft_core::node::Transport;
use raft_net_quic::tls;
use raft_net_quic::{Identity, QuicConfig, QuicTransport, Started};
use raft_proto::{
    AppendEntries, Bytes, Entry, EntryPayload, InstallSnapshot, LogId, LogIndex, Message, NodeId,
    SnapshotMeta, Term,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Pair {
    one: Arc<QuicTransport>,
    two: Arc<QuicTransport>,
    one_in: BoxStream<'static, (NodeId, Message)>,
    two_in: BoxStream<'static, (NodeId, Message)>,
}

async fn pair() -> Pair {
    let ca = tls::generate_ca().unwrap();
    let start = |id: u64| {
        let identity =
            Identity::from_pem(&ca.cert, &tls::issue_node(&ca, NodeId(id)).unwrap()).unwrap();
        let mut c = QuicConfig::new(
            NodeId(id),
            "127.0.0.1:0".parse().unwrap(),
            BTreeMap::new(),
            identity,
        );
        c.queue_messages = 1 << 20;
        c.queue_bytes = 1 << 30;
        c.incoming_capacity = 1 << 20;
        QuicTransport::start(c, raft_net_quic::tokio_runtime().unwrap()).unwrap()
    };
    let Started {
        transport: one,
        incoming: one_in,
        ..
    } = start(1);
    let Started {
        transport: two,
        incoming: two_in,
        ..
    } = start(2);
    one.add_peer(NodeId(2), two.local_addr().unwrap());
    two.add_peer(NodeId(1), one.local_addr().unwrap());
    let mut p = Pair {
        one,
        two,
        one_in,
        two_in,
    };
    // Warm the connection up.
    loop {
        p.one.send(NodeId(2), heartbeat(0));
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), p.two_in.next()).await
        {
            break;
        }
    }
    p
}

/// The next message; a lost one fails the bench instead of hanging it.
async fn next(incoming: &mut BoxStream<'static, (NodeId, Message)>) -> Message {
    match tokio::time::timeout(Duration::from_secs(10), incoming.next()).await {
        Ok(Some((_, m))) => m,
        _ => panic!("a message was lost: the bench would measure nothing"),
    }
}

fn heartbeat(round: u64) -> Message {
    Message::AppendEntries(AppendEntries {
        term: Term(1),
        prev_log_id: LogId::default(),
        entries: Vec::new(),
        leader_commit: LogIndex(0),
        round,
    })
}

fn append_128(i: u64) -> Message {
    Message::AppendEntries(AppendEntries {
        term: Term(1),
        prev_log_id: LogId {
            term: Term(1),
            index: LogIndex(i),
        },
        entries: vec![Entry {
            log_id: LogId {
                term: Term(1),
                index: LogIndex(i + 1),
            },
            payload: EntryPayload::Command(Bytes::from(vec![7u8; 128])),
        }],
        leader_commit: LogIndex(i),
        round: i,
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn frames(c: &mut Criterion) {
    let rt = runtime();
    let mut pair_started = None;
    let mut g = c.benchmark_group("frames");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("append_128B", |b| {
        let p = pair_started.get_or_insert_with(|| rt.block_on(pair()));
        b.iter_custom(|iters| {
            rt.block_on(async {
                // At most WINDOW frames in flight, so that no queue overflows however
                // many iterations criterion asks for.
                const WINDOW: u64 = 65_536;
                let started = Instant::now();
                let (mut sent, mut received) = (0, 0);
                while received < iters {
                    while sent < iters && sent - received < WINDOW {
                        p.one.send(NodeId(2), append_128(sent));
                        sent += 1;
                    }
                    next(&mut p.two_in).await;
                    received += 1;
                }
                started.elapsed()
            })
        })
    });
    g.finish();
    if let Some(p) = pair_started {
        assert_eq!(
            p.one.stats()[0].dropped,
            0,
            "nothing dropped: the bench measured every frame"
        );
        assert_eq!(p.two.dropped_incoming(), 0);
    }
}

fn round_trip(c: &mut Criterion) {
    let rt = runtime();
    let mut pair_started = None;
    let mut g = c.benchmark_group("round_trip");
    g.bench_function("heartbeat", |b| {
        let p = pair_started.get_or_insert_with(|| rt.block_on(pair()));
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for i in 0..iters {
                    p.one.send(NodeId(2), heartbeat(i));
                    let m = next(&mut p.two_in).await;
                    p.two.send(NodeId(1), m);
                    next(&mut p.one_in).await;
                }
                started.elapsed()
            })
        })
    });
    g.finish();
}

fn snapshot(c: &mut Criterion) {
    const TOTAL: u64 = 64 << 20;
    const CHUNK: u64 = 1 << 20;
    let rt = runtime();
    let mut pair_started = None;
    let mut g = c.benchmark_group("snapshot");
    g.throughput(Throughput::Bytes(TOTAL));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    let data = Bytes::from(vec![3u8; CHUNK as usize]);
    g.bench_function("64MiB", |b| {
        let p = pair_started.get_or_insert_with(|| rt.block_on(pair()));
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let sender = p.one.clone();
                    let data = data.clone();
                    let send = tokio::spawn(async move {
                        let mut offset = 0;
                        while offset < TOTAL {
                            if sender.stats()[0].queued < 4 {
                                let meta = SnapshotMeta {
                                    id: 1,
                                    ..Default::default()
                                };
                                let done = offset + CHUNK == TOTAL;
                                let m = InstallSnapshot {
                                    term: Term(1),
                                    meta,
                                    offset,
                                    data: data.clone(),
                                    done,
                                };
                                sender.send_snapshot(NodeId(2), Message::InstallSnapshot(m));
                                offset += CHUNK;
                            } else {
                                tokio::time::sleep(Duration::from_micros(100)).await;
                            }
                        }
                    });
                    let mut received = 0;
                    while received < TOTAL {
                        if let Message::InstallSnapshot(m) = next(&mut p.two_in).await {
                            received += m.data.len() as u64;
                        }
                    }
                    send.await.unwrap();
                }
                started.elapsed()
            })
        })
    });
    g.finish();
}

/// The suite of this layer.
pub(crate) fn suite(c: &mut Criterion) {
    frames(c);
    round_trip(c);
    snapshot(c);
}

//! Round-trip latency percentiles over QUIC on loopback: node 1 sends a heartbeat,
//! node 2 echoes it, node 1 receives the echo; one message in flight. Criterion
//! reports means and medians, not tails, so this prints p50/p90/p99/p99.9/max of
//! `RTT_SAMPLES` (default 20,000) round trips after 2,000 warm-up ones, as a line for
//! people and as one JSON line (nanoseconds) for `scripts/bench-all.py`.
//!
//! Run: `cargo bench -p quorum-raft-net-quic --bench rtt`.

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::disallowed_methods)]

use futures::StreamExt;
use raft_core::node::Transport;
use raft_net_quic::tls;
use raft_net_quic::{Identity, QuicConfig, QuicTransport, Started};
use raft_proto::{AppendEntries, LogId, LogIndex, Message, NodeId, Term};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn heartbeat(round: u64) -> Message {
    Message::AppendEntries(AppendEntries {
        term: Term(1),
        prev_log_id: LogId::default(),
        entries: Vec::new(),
        leader_commit: LogIndex(0),
        round,
    })
}

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let samples: usize = std::env::var("RTT_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rtts = rt.block_on(async {
        let ca = tls::generate_ca().unwrap();
        let start = |id: u64| {
            let identity =
                Identity::from_pem(&ca.cert, &tls::issue_node(&ca, NodeId(id)).unwrap()).unwrap();
            let c = QuicConfig::new(
                NodeId(id),
                "127.0.0.1:0".parse().unwrap(),
                BTreeMap::new(),
                identity,
            );
            QuicTransport::start(c, raft_net_quic::tokio_runtime().unwrap()).unwrap()
        };
        let Started {
            transport: one,
            incoming: mut one_in,
            ..
        } = start(1);
        let Started {
            transport: two,
            incoming: mut two_in,
            ..
        } = start(2);
        one.add_peer(NodeId(2), two.local_addr().unwrap());
        two.add_peer(NodeId(1), one.local_addr().unwrap());
        // The echo runs as its own task, like a node's event loop would.
        let echo = two.clone();
        tokio::spawn(async move {
            while let Some((from, m)) = two_in.next().await {
                echo.send(from, m);
            }
        });
        let mut rtts = Vec::with_capacity(samples);
        let mut round = 0;
        while rtts.len() < samples {
            round += 1;
            let started = Instant::now();
            one.send(NodeId(2), heartbeat(round));
            // Before the connection is up the first messages wait or are lost; an echo
            // of an earlier round is skipped.
            loop {
                match tokio::time::timeout(Duration::from_secs(1), one_in.next()).await {
                    Ok(Some((_, Message::AppendEntries(a)))) if a.round == round => {
                        if round > 2000 {
                            rtts.push(started.elapsed());
                        }
                        break;
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }
        rtts
    });
    rtts.sort();
    let at = |q: f64| rtts[((rtts.len() as f64 * q) as usize).min(rtts.len() - 1)];
    println!(
        "round trip over QUIC on loopback, {} samples: p50 {:?}  p90 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        rtts.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        rtts[rtts.len() - 1]
    );
    // For scripts (`scripts/bench-all.py`): the same figures in nanoseconds.
    println!(
        "{{\"bench\":\"rtt\",\"samples\":{},\"p50_ns\":{},\"p90_ns\":{},\"p99_ns\":{},\"p999_ns\":{},\"max_ns\":{}}}",
        rtts.len(),
        at(0.50).as_nanos(),
        at(0.90).as_nanos(),
        at(0.99).as_nanos(),
        at(0.999).as_nanos(),
        rtts[rtts.len() - 1].as_nanos()
    );
}

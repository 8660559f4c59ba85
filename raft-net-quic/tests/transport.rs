//! `QuicTransport` on 127.0.0.1: delivery, reconnection, the identity checks of mutual
//! TLS, hostile frames, and heartbeats that keep flowing while a snapshot streams.

#![allow(clippy::unwrap_used)]

mod support;

use raft_core::node::Transport;
use raft_net_quic::frame::put_frame;
use raft_net_quic::tls;
use raft_net_quic::{Identity, PeerStats};
use raft_proto::{Bytes, Envelope, InstallSnapshot, Message, NodeId, SnapshotMeta, Term};
use std::time::{Duration, Instant};
use support::*;

const QUIET: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_messages_both_ways() {
    let pki = Pki::new();
    let mut peers: Vec<Peer> = (1..=3)
        .map(|id| Peer::start(id, localhost(), pki.node(id)))
        .collect();
    introduce(&peers.iter().collect::<Vec<_>>());
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                let round = (from * 10 + to) as u64;
                let (a, b) = if from < to {
                    let (l, r) = peers.split_at_mut(to);
                    (&l[from], &mut r[0])
                } else {
                    let (l, r) = peers.split_at_mut(from);
                    (&r[0], &mut l[to])
                };
                assert!(deliver(a, b, round).await, "{} -> {}", a.id, b.id);
            }
        }
    }
    // In order on one stream: 1,000 messages arrive as sent.
    let (l, r) = peers.split_at_mut(1);
    for round in 1000..2000 {
        l[0].transport.send(NodeId(2), heartbeat(round));
    }
    let mut next = 1000;
    while next < 2000 {
        let (from, m) = r[0]
            .recv(Duration::from_secs(5))
            .await
            .expect("all 1,000 arrive");
        if from == NodeId(1) && round_of(&m).unwrap() >= 1000 {
            assert_eq!(round_of(&m), Some(next), "in order");
            next += 1;
        }
    }
    let stats = l[0].transport.stats();
    assert!(
        stats.iter().all(|s| s.connected && s.dropped == 0),
        "{stats:?}"
    );
}

/// A peer that is killed and started again on the same address is reconnected, both
/// when the dialer (lower id) restarts and when the acceptor does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_peer_reconnects() {
    let pki = Pki::new();
    let mut one = Peer::start(1, localhost(), pki.node(1));
    let mut two = Peer::start(2, localhost(), pki.node(2));
    introduce(&[&one, &two]);
    assert!(deliver(&one, &mut two, 1).await);

    // The acceptor (node 2) dies and comes back on its address.
    let addr2 = two.addr;
    two.transport.close();
    drop(two);
    let mut two = loop {
        // The UDP port is free again once the old endpoint's tasks let go of it.
        match Peer::try_start(2, addr2, pki.node(2), |_| {}) {
            Ok(p) => break p,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    two.transport.add_peer(NodeId(1), one.addr);
    let started = Instant::now();
    assert!(deliver(&one, &mut two, 2).await, "node 1 redials node 2");
    assert!(deliver(&two, &mut one, 3).await, "and node 2 can answer");
    eprintln!(
        "acceptor restart: reconnected within {:?}",
        started.elapsed()
    );

    // The dialer (node 1) dies and comes back.
    let addr1 = one.addr;
    one.transport.close();
    drop(one);
    let mut one = loop {
        match Peer::try_start(1, addr1, pki.node(1), |_| {}) {
            Ok(p) => break p,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    one.transport.add_peer(NodeId(2), two.addr);
    assert!(
        deliver(&two, &mut one, 4).await,
        "node 2 takes the new connection"
    );
    assert!(deliver(&one, &mut two, 5).await);
}

/// A joining node (admitting unknown peers) learns a member that dials it and can
/// answer on that connection; a node that does not admit them refuses the same dial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_admits_a_member_it_did_not_know_and_others_refuse_it() {
    let pki = Pki::new();
    let mut one = Peer::start(1, localhost(), pki.node(1));
    let mut joiner = Peer::start_with(5, localhost(), pki.node(5), |c| {
        c.admit_unknown_peers = true;
    });
    one.transport.add_peer(NodeId(5), joiner.addr);
    assert!(
        deliver(&one, &mut joiner, 1).await,
        "node 1 reaches the joiner"
    );
    assert!(
        deliver(&joiner, &mut one, 2).await,
        "the joiner answers a member it was never told about"
    );
    let known: Vec<NodeId> = joiner.transport.stats().iter().map(|s| s.id).collect();
    assert_eq!(known, vec![NodeId(1)]);

    let mut closed = Peer::start(6, localhost(), pki.node(6));
    one.transport.add_peer(NodeId(6), closed.addr);
    let until = Instant::now() + QUIET;
    while Instant::now() < until {
        one.transport.send(NodeId(6), heartbeat(3));
        if let Some((from, m)) = closed.recv(Duration::from_millis(20)).await {
            panic!("a node that admits only its peers got {m:?} from {from}");
        }
    }
}

/// Sets up a genuine node 2 that expects node 1 at `intruder`'s address, lets the
/// intruder (claiming to be node 1, dialing because 1 < 2) try to send, and checks that
/// nothing gets through.
async fn refused(pki: &Pki, intruder_identity: Identity, also_known: &[u64]) {
    let mut two = Peer::start(2, localhost(), pki.node(2));
    let intruder = Peer::start(1, localhost(), intruder_identity);
    two.transport.add_peer(NodeId(1), intruder.addr);
    for &id in also_known {
        two.transport.add_peer(NodeId(id), localhost());
    }
    intruder.transport.add_peer(NodeId(2), two.addr);
    let until = Instant::now() + QUIET;
    while Instant::now() < until {
        intruder.transport.send(NodeId(2), heartbeat(7));
        if let Some((from, m)) = two.recv(Duration::from_millis(20)).await {
            panic!("an intruder got {m:?} through as {from}");
        }
    }
    let s: Vec<PeerStats> = intruder.transport.stats();
    assert!(
        !s[0].connected,
        "the intruder never counts as connected: {s:?}"
    );
    assert_eq!(s[0].sent_frames, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    // It trusts the real CA (so it accepts node 2) but presents a certificate that
    // another CA issued for node 1.
    let mut id = other.node(1);
    id.ca = pki.node(1).ca;
    refused(&pki, id, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_node_is_refused() {
    let pki = Pki::new();
    // A valid certificate for node 3, claiming to be node 1.
    refused(&pki, pki.node(3), &[3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_cannot_speak_as_a_node() {
    let pki = Pki::new();
    refused(&pki, pki.client("alice"), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let pki = Pki::new();
    let expired = tls::issue_node_valid(
        &pki.ca,
        NodeId(1),
        // 2020-01-01 to 2021-01-01.
        tls::Validity::from_unix(1_577_836_800, 1_609_459_200),
    )
    .unwrap();
    refused(
        &pki,
        Identity::from_pem(&pki.ca.cert, &expired).unwrap(),
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_certificate_is_refused() {
    let pki = Pki::new();
    let mut two = Peer::start(2, localhost(), pki.node(2));
    two.transport.add_peer(NodeId(1), localhost());
    let raw = RawPeer::dial(&pki.node(1), false, two.addr, 2).await;
    // With TLS 1.3 the client may finish its side before the server's verdict; the
    // verdict shows on the first stream.
    if let Ok(raw) = raw {
        assert!(
            raw.hello(1).await.is_err(),
            "the hello of a peer without a certificate is refused"
        );
    }
    assert!(two.recv(Duration::from_millis(300)).await.is_none());
}

/// The dialer checks the node it reaches: a valid node 3 listening where node 2 should
/// be gets nothing from node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_at_the_wrong_address_is_refused_by_the_dialer() {
    let pki = Pki::new();
    let one = Peer::start(1, localhost(), pki.node(1));
    let mut three = Peer::start(3, localhost(), pki.node(3));
    three.transport.add_peer(NodeId(1), one.addr);
    one.transport.add_peer(NodeId(2), three.addr);
    let until = Instant::now() + QUIET;
    while Instant::now() < until {
        one.transport.send(NodeId(2), heartbeat(9));
        assert!(three.recv(Duration::from_millis(20)).await.is_none());
    }
    assert!(!one.transport.stats()[0].connected);
}

/// A genuine node 1 cannot put words in node 3's mouth: a message whose `from` is not
/// the connection's authenticated node closes that stream, and the rest still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_sender_is_dropped() {
    let pki = Pki::new();
    let mut two = Peer::start(2, localhost(), pki.node(2));
    two.transport.add_peer(NodeId(1), localhost());
    two.transport.add_peer(NodeId(3), localhost());
    let raw = RawPeer::dial(&pki.node(1), true, two.addr, 2)
        .await
        .unwrap();
    raw.hello(1).await.unwrap();
    let frame = |from: u64, round: u64| {
        let mut f = Vec::new();
        Envelope {
            from: NodeId(from),
            to: NodeId(2),
            message: heartbeat(round),
        }
        .encode_into(&mut f)
        .unwrap();
        let mut out = Vec::new();
        put_frame(&mut out, &f);
        out
    };
    let mut forged = frame(3, 1);
    forged.extend(frame(1, 2)); // after the forgery: never read
    raw.stream(&forged).await;
    assert!(
        two.recv(QUIET).await.is_none(),
        "nothing from the forged stream"
    );
    raw.stream(&frame(1, 3)).await;
    let (from, m) = two.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!((from, round_of(&m)), (NodeId(1), Some(3)));
}

/// Oversized, truncated and undecodable frames close their stream; the node keeps
/// running and the next stream is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_close_only_their_stream() {
    let pki = Pki::new();
    let mut two = Peer::start_with(2, localhost(), pki.node(2), |c| c.max_frame = 1 << 20);
    two.transport.add_peer(NodeId(1), localhost());
    let raw = RawPeer::dial(&pki.node(1), true, two.addr, 2)
        .await
        .unwrap();
    raw.hello(1).await.unwrap();
    // A 4 GiB length prefix: refused before any allocation.
    raw.stream(&u32::MAX.to_le_bytes()).await;
    raw.stream(&u32::MAX.to_be_bytes()).await;
    // Random garbage.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let garbage: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    raw.stream(&garbage).await;
    // A frame whose body is not a message.
    let mut bad = Vec::new();
    put_frame(&mut bad, b"not postcard at all");
    raw.stream(&bad).await;
    // A truncated frame.
    let mut f = Vec::new();
    Envelope {
        from: NodeId(1),
        to: NodeId(2),
        message: heartbeat(1),
    }
    .encode_into(&mut f)
    .unwrap();
    let mut truncated = Vec::new();
    put_frame(&mut truncated, &f);
    truncated.truncate(truncated.len() - 3);
    raw.stream(&truncated).await;
    // An unknown stream kind.
    let mut s = raw.conn.open_uni().await.unwrap();
    let _ = s.write_all(&[9, 1, 2, 3]).await;
    let _ = s.finish();
    assert!(two.recv(QUIET).await.is_none());
    // And a good one.
    let mut good = Vec::new();
    let mut body = Vec::new();
    Envelope {
        from: NodeId(1),
        to: NodeId(2),
        message: heartbeat(42),
    }
    .encode_into(&mut body)
    .unwrap();
    put_frame(&mut good, &body);
    raw.stream(&good).await;
    let (from, m) = two.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!((from, round_of(&m)), (NodeId(1), Some(42)));
}

/// A peer that never reads: the sender's queue stays bounded and counts what it drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_costs_bounded_memory() {
    let pki = Pki::new();
    let one = Peer::start_with(1, localhost(), pki.node(1), |c| {
        c.queue_messages = 100;
        c.queue_bytes = 1 << 20;
    });
    // Nobody listens there.
    one.transport
        .add_peer(NodeId(2), "127.0.0.1:9".parse().unwrap());
    for round in 0..10_000 {
        one.transport.send(NodeId(2), heartbeat(round));
    }
    let s = &one.transport.stats()[0];
    assert!(s.queued <= 100, "{s:?}");
    assert_eq!(s.dropped, 10_000 - s.queued as u64, "{s:?}");
}

fn chunk(offset: u64, data: Bytes, done: bool) -> Message {
    Message::InstallSnapshot(InstallSnapshot {
        term: Term(1),
        meta: SnapshotMeta {
            id: 7,
            ..Default::default()
        },
        offset,
        data,
        done,
    })
}

/// Heartbeats every millisecond from node 1 to node 2 for `for_how_long`, while
/// `during` runs; the longest gap between arrivals at node 2.
async fn longest_heartbeat_gap(
    one: &Peer,
    two: &mut Peer,
    snapshot: Option<u64>,
) -> (Duration, u64, Duration) {
    let sender = one.transport.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let beats = tokio::spawn(async move {
        let mut round = 1_000_000;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            sender.send(NodeId(2), heartbeat(round));
            round += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let total = snapshot.unwrap_or(0);
    let chunk_size = 1u64 << 20;
    let sender = one.transport.clone();
    let chunks = tokio::spawn(async move {
        // Like the leader: a few chunks in flight, more as the queue drains.
        let mut offset = 0;
        while offset < total {
            if sender.stats()[0].queued < 4 {
                let n = chunk_size.min(total - offset);
                let data = Bytes::from(vec![(offset / chunk_size) as u8; n as usize]);
                sender.send_snapshot(NodeId(2), chunk(offset, data, offset + n == total));
                offset += n;
            } else {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    });
    let started = Instant::now();
    let mut last_beat: Option<Instant> = None;
    let mut gap = Duration::ZERO;
    let mut received = 0u64;
    let window = if snapshot.is_some() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(1)
    };
    loop {
        let Some((_, m)) = two.recv(Duration::from_secs(5)).await else {
            break;
        };
        let now = Instant::now();
        match m {
            Message::AppendEntries(_) => {
                if let Some(prev) = last_beat {
                    gap = gap.max(now - prev);
                }
                last_beat = Some(now);
            }
            Message::InstallSnapshot(c) => {
                assert_eq!(c.offset, received, "chunks arrive in order, none lost");
                assert!(c.data.iter().all(|&b| b == (c.offset / chunk_size) as u8));
                received += c.data.len() as u64;
            }
            _ => {}
        }
        let done = match snapshot {
            Some(total) => received == total,
            None => started.elapsed() >= window,
        };
        if done || started.elapsed() > window {
            break;
        }
    }
    let elapsed = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = beats.await;
    let _ = chunks.await;
    (gap, received, elapsed)
}

/// The reason for QUIC: a 64 MiB snapshot streams on its own stream of the same
/// connection while heartbeats keep arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_flowing_while_a_64_mib_snapshot_streams() {
    let pki = Pki::new();
    let one = Peer::start(1, localhost(), pki.node(1));
    let mut two = Peer::start(2, localhost(), pki.node(2));
    introduce(&[&one, &two]);
    assert!(deliver(&one, &mut two, 1).await);
    let (quiet_gap, _, _) = longest_heartbeat_gap(&one, &mut two, None).await;
    let total = 64u64 << 20;
    let (gap, received, elapsed) = longest_heartbeat_gap(&one, &mut two, Some(total)).await;
    assert_eq!(received, total, "the whole snapshot arrived");
    eprintln!(
        "64 MiB snapshot in {elapsed:?} ({:.0} MB/s); longest heartbeat gap {gap:?} during it, {quiet_gap:?} without",
        total as f64 / elapsed.as_secs_f64() / 1e6
    );
    // For `scripts/bench-all.py`, which runs this test in release as a measurement.
    eprintln!(
        "{{\"bench\":\"heartbeat_gap\",\"snapshot_bytes\":{total},\"snapshot_ns\":{},\"gap_ns\":{},\"quiet_gap_ns\":{}}}",
        elapsed.as_nanos(),
        gap.as_nanos(),
        quiet_gap.as_nanos()
    );
    // The election timeout is 100-200 ms by default; a heartbeat gap near it would
    // start elections during every snapshot transfer.
    assert!(
        gap < Duration::from_millis(100),
        "longest heartbeat gap {gap:?}"
    );
}

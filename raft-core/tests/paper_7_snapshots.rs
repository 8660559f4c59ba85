//! Paper §7 (log compaction and InstallSnapshot).

mod support;

use raft_core::{Action, Config, ProgressState, Role};
use raft_proto::{
    AppendResult, Bytes, InstallSnapshot, InstallSnapshotResponse, LogId, LogIndex, Membership,
    Message, SnapshotMeta, SnapshotOutcome, Term, VoteRequest,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use support::{Cluster, drain, n, sends};

/// Snapshots every 5 applied entries, 2 entries kept, 16-byte chunks, 2 in flight.
fn small_snapshots(c: &mut Config) {
    c.snapshot_entries = 5;
    c.snapshot_keep_entries = 2;
    c.snapshot_chunk_bytes = 16;
    c.max_snapshot_chunks_in_flight = 2;
}

fn propose_many(c: &mut Cluster, count: usize) {
    for i in 0..count {
        c.propose(n(1), &format!("cmd-{i:03}"));
    }
}

#[test]
fn paper_7_a_snapshot_is_taken_once_enough_entries_are_applied() {
    // "Each server takes snapshots independently, covering just the committed entries
    // in its log."
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    propose_many(&mut c, 6);
    c.ticks(1);
    for id in c.ids() {
        let node = c.node(id);
        let snap = node.raft.log().snapshot().last_log_id.index;
        assert!(node.snapshots_built >= 1, "node {id} built no snapshot");
        assert!(
            snap >= LogIndex(5) && snap <= node.raft.log().applied(),
            "node {id}: snapshot at {snap:?}"
        );
    }
}

#[test]
fn paper_7_the_snapshot_is_taken_when_exactly_snapshot_entries_were_applied() {
    // With `snapshot_entries = 5`: the blank entry and three commands make four
    // applied entries, no snapshot; the fourth command makes five, and the snapshot
    // covers exactly them.
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    propose_many(&mut c, 3);
    assert_eq!(c.raft(n(1)).log().applied(), LogIndex(4));
    assert_eq!(c.node(n(1)).snapshots_built, 0, "4 entries applied");
    c.propose(n(1), "cmd-fifth");
    assert_eq!(c.node(n(1)).snapshots_built, 1, "5 entries applied");
    assert_eq!(c.raft(n(1)).log().snapshot().last_log_id.index, LogIndex(5));
}

#[test]
fn paper_7_an_operators_snapshot_request_asks_only_when_there_is_something_new() {
    // `trigger_snapshot` (the admin's "snapshot now") says whether it asked the state
    // machine for a snapshot: not while one is being built, and not when nothing was
    // applied since the last one. Automatic snapshots are off (both triggers 0), so
    // every snapshot here is the operator's.
    let mut c = Cluster::new_with(3, |cfg| {
        cfg.snapshot_entries = 0;
        cfg.snapshot_bytes = 0;
    });
    c.elect(n(1));
    propose_many(&mut c, 3);
    c.nodes.get_mut(&n(1)).expect("node 1").slow_snapshot_builds = true;
    assert!(c.raft_mut(n(1)).trigger_snapshot(), "4 entries applied");
    c.process(n(1));
    assert_eq!(c.node(n(1)).builds.len(), 1, "a build started");
    assert!(!c.raft_mut(n(1)).trigger_snapshot(), "a build is running");
    c.finish_builds(n(1));
    assert_eq!(c.raft(n(1)).log().snapshot().last_log_id.index, LogIndex(4));
    assert!(
        !c.raft_mut(n(1)).trigger_snapshot(),
        "nothing applied since"
    );
    c.process(n(1));
    assert!(c.node(n(1)).builds.is_empty(), "no build was asked for");
    c.propose(n(1), "cmd-new");
    assert!(
        c.raft_mut(n(1)).trigger_snapshot(),
        "one entry applied since"
    );
}

#[test]
fn paper_7_a_snapshot_is_taken_once_the_log_grows_past_a_size() {
    // The size trigger: 3 commands of 100 bytes pass a 250-byte threshold.
    let mut c = Cluster::new_with(3, |cfg| {
        cfg.snapshot_entries = 0;
        cfg.snapshot_bytes = 250;
    });
    c.elect(n(1));
    for _ in 0..2 {
        c.propose(n(1), &"x".repeat(100));
    }
    assert_eq!(c.node(n(1)).snapshots_built, 0, "200 bytes: not yet");
    c.propose(n(1), &"x".repeat(100));
    assert_eq!(c.node(n(1)).snapshots_built, 1, "300 bytes: a snapshot");
}

#[test]
fn paper_7_the_log_is_compacted_only_behind_a_durable_snapshot_keeping_a_tail() {
    // "Once a server completes writing a snapshot, it may delete all log entries up
    // through the last included index", here keeping a configurable tail.
    let mut c = Cluster::new_with(1, small_snapshots);
    c.elect(n(1));
    let raft = c.raft_mut(n(1));
    let mut built = None;
    for i in 0..5 {
        raft.propose(Bytes::from(format!("c{i}").as_str()))
            .expect("leader");
        while let Some(a) = raft.poll_action() {
            match a {
                Action::Persist(p) => {
                    if let Some(last) = p.entries.last() {
                        raft.persisted(last.log_id);
                    }
                }
                Action::Apply(e) => raft.applied(e.last().expect("entries").log_id.index),
                Action::BuildSnapshot { meta } => built = Some(meta),
                Action::PurgeLog { .. } => panic!("purged before the snapshot is durable"),
                _ => {}
            }
        }
    }
    let mut meta = built.expect("a snapshot was asked for");
    assert_eq!(raft.log().purged(), LogId::ZERO, "nothing compacted yet");
    meta.id = 7;
    let index = meta.last_log_id.index;
    raft.snapshot_built(Some(meta.clone()));
    let purge = drain(raft).into_iter().find_map(|a| match a {
        Action::PurgeLog { up_to, base } => {
            assert_eq!(
                base, meta,
                "the log store records the snapshot it continues"
            );
            Some(up_to)
        }
        _ => None,
    });
    assert_eq!(
        purge.map(|p| p.index),
        Some(LogIndex(index.0 - 2)),
        "two entries kept"
    );
    assert_eq!(raft.log().first_index(), LogIndex(index.0 - 1));
}

#[test]
fn paper_7_a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    // "The leader uses a new RPC called InstallSnapshot to send snapshots to followers
    // that are too far behind."
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    c.isolate(n(3));
    propose_many(&mut c, 30);
    assert!(
        c.raft(n(1)).log().first_index() > LogIndex(2),
        "the leader compacted"
    );
    c.heal();
    c.ticks(20);
    let (leader, follower) = (c.node(n(1)), c.node(n(3)));
    assert!(follower.snapshots_installed >= 1);
    assert_eq!(follower.state, leader.state, "same state machine");
    assert_eq!(
        follower.raft.log().last_log_id(),
        leader.raft.log().last_log_id()
    );
    let chunks = c
        .delivered
        .iter()
        .filter(|(_, to, m)| *to == n(3) && matches!(m, Message::InstallSnapshot(_)))
        .count();
    assert!(chunks > 2, "the snapshot travelled in chunks ({chunks})");
}

#[test]
fn paper_7_a_follower_the_compaction_passes_gets_the_snapshot_at_once() {
    // Node 3 is cut off, and the leader is probing it from index 1. The moment the
    // leader compacts its log past that index, node 3 can only be brought up to date
    // by a snapshot: the transfer starts in the same step (its first chunk is read),
    // not at the next heartbeat.
    let mut c = Cluster::new_with(3, small_snapshots);
    c.isolate(n(3));
    c.elect(n(1));
    let mut proposed = 0;
    loop {
        c.propose(n(1), &format!("cmd-{proposed:03}"));
        proposed += 1;
        assert!(proposed <= 10, "no compaction after {proposed} entries");
        let pr = c.raft(n(1)).progress(n(3)).expect("node 3's progress");
        if c.raft(n(1)).log().purged().index >= pr.next_index {
            assert_eq!(
                pr.state,
                ProgressState::Snapshot,
                "after {proposed} entries"
            );
            break;
        }
        assert_eq!(pr.state, ProgressState::Probe);
    }
    assert!(
        c.raft(n(1))
            .progress(n(3))
            .and_then(|pr| pr.snapshot.as_ref())
            .is_some_and(|t| t.next > 0),
        "the leader asked its disk for the first chunk"
    );
}

#[test]
fn paper_7_a_slightly_slow_follower_catches_up_from_the_kept_tail() {
    // The kept tail lets a follower that missed a few entries catch up from the log.
    let mut c = Cluster::new_with(3, |c| {
        small_snapshots(c);
        c.snapshot_keep_entries = 50;
    });
    c.elect(n(1));
    c.isolate(n(3));
    propose_many(&mut c, 12);
    assert!(c.raft(n(1)).log().snapshot().last_log_id.index >= LogIndex(5));
    c.heal();
    c.ticks(5);
    assert_eq!(c.node(n(3)).snapshots_installed, 0);
    assert_eq!(c.node(n(3)).state, c.node(n(1)).state);
}

static CHUNKS_SEEN: AtomicUsize = AtomicUsize::new(0);

#[test]
fn paper_7_a_lost_chunk_is_resent_from_the_followers_offset_not_from_zero() {
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    c.isolate(n(3));
    propose_many(&mut c, 30);
    c.heal();
    // Lose the second chunk sent to node 3, once.
    c.drop_if = Some(|_, to, m| {
        to == n(3)
            && matches!(m, Message::InstallSnapshot(_))
            && CHUNKS_SEEN.fetch_add(1, Ordering::SeqCst) == 1
    });
    c.ticks(40);
    assert!(CHUNKS_SEEN.load(Ordering::SeqCst) > 2);
    assert!(
        c.node(n(3)).snapshots_installed >= 1,
        "the transfer completed"
    );
    let from_zero = c
        .delivered
        .iter()
        .filter(|(_, to, m)| {
            *to == n(3) && matches!(m, Message::InstallSnapshot(s) if s.offset == 0)
        })
        .count();
    assert_eq!(
        from_zero,
        c.node(n(3)).snapshots_installed,
        "never restarted from zero"
    );
    assert_eq!(c.node(n(3)).state, c.node(n(1)).state);
}

#[test]
fn paper_7_a_follower_that_restarts_mid_transfer_gets_the_rest_from_its_new_offset() {
    // The follower's partial snapshot is volatile: after a restart it asks for offset
    // 0 again, below what the leader saw acknowledged; the leader must follow it down
    // rather than resend forever from the old offset (found by raft-sim, seed 8901).
    let mut c = Cluster::new_with(3, |c| {
        small_snapshots(c);
        c.snapshot_chunk_bytes = 8;
        c.max_snapshot_chunks_in_flight = 1;
    });
    c.elect(n(1));
    c.isolate(n(3));
    propose_many(&mut c, 30);
    c.heal();
    c.nodes.get_mut(&n(1)).expect("node 1").slow_chunk_reads = true;
    for _ in 0..6 {
        c.raft_mut(n(1)).tick();
        c.read_chunks(n(1), 1);
        c.settle();
    }
    assert!(
        c.raft(n(1))
            .progress(n(3))
            .and_then(|p| p.snapshot.as_ref())
            .is_some_and(|t| t.acked > 0),
        "part of the snapshot arrived"
    );
    c.restart(n(3));
    for _ in 0..200 {
        c.raft_mut(n(1)).tick();
        c.raft_mut(n(3)).tick();
        c.read_chunks(n(1), 1);
        c.settle();
        if c.node(n(3)).snapshots_installed > 0 {
            break;
        }
    }
    assert_eq!(c.node(n(3)).snapshots_installed, 1);
    assert_eq!(c.node(n(3)).state, c.node(n(1)).state);
}

#[test]
fn paper_7_chunks_in_flight_are_bounded() {
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    c.isolate(n(3));
    propose_many(&mut c, 30);
    c.heal();
    // Step message by message and look at the wire after each delivery.
    let mut max_in_flight = 0;
    for _ in 0..50 {
        c.raft_mut(n(1)).tick();
        c.process(n(1));
        while c.deliver_one() {
            let chunks = c
                .in_flight
                .iter()
                .filter(|(_, to, m)| *to == n(3) && matches!(m, Message::InstallSnapshot(_)))
                .count();
            max_in_flight = max_in_flight.max(chunks);
        }
        if c.node(n(3)).snapshots_installed > 0 {
            break;
        }
    }
    assert!(c.node(n(3)).snapshots_installed > 0);
    assert!(
        (1..=2).contains(&max_in_flight),
        "{max_in_flight} chunks in flight"
    );
}

#[test]
fn paper_7_each_chunk_is_read_once_and_nothing_past_the_end() {
    // The leader reads a snapshot chunk by chunk from its disk, two chunks ahead of the
    // follower's acknowledgements. Once it has read the last chunk it knows the size,
    // and later acknowledgements (which open the window again) ask for nothing more:
    // on a lossless network each chunk is read exactly once.
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    c.isolate(n(3));
    propose_many(&mut c, 30);
    c.heal();
    c.in_flight.clear();
    c.nodes.get_mut(&n(1)).expect("node 1").slow_chunk_reads = true;
    let mut offsets = Vec::new();
    for _ in 0..40 {
        c.raft_mut(n(1)).tick();
        c.process(n(1));
        loop {
            // Every read the leader asked for completes before the next delivery.
            while let Some(Action::ReadSnapshotChunk { offset, .. }) =
                c.node(n(1)).chunk_reads.front()
            {
                offsets.push(*offset);
                c.read_chunks(n(1), 1);
            }
            if !c.deliver_one() {
                break;
            }
        }
        if c.node(n(3)).snapshots_installed > 0 {
            break;
        }
    }
    assert_eq!(c.node(n(3)).snapshots_installed, 1);
    let size = c.node(n(1)).disk.snapshot_data.len() as u64;
    let chunk = c.raft(n(1)).config().snapshot_chunk_bytes as u64;
    assert!(
        size > 3 * chunk,
        "a snapshot of {size} bytes spans several windows"
    );
    let expected: Vec<u64> = (0..size.div_ceil(chunk)).map(|k| k * chunk).collect();
    assert_eq!(offsets, expected, "chunk reads for a {size}-byte snapshot");
}

#[test]
fn paper_7_reads_past_the_end_are_not_sent() {
    // With a window wider than the whole snapshot, the leader asks for chunks past its
    // end before it knows the size; those reads come back empty and are dropped: the
    // follower receives each chunk once, the last one marked done, and nothing after.
    let mut c = Cluster::new_with(3, |cfg| {
        small_snapshots(cfg);
        cfg.snapshot_chunk_bytes = 64;
        cfg.max_snapshot_chunks_in_flight = 8;
    });
    c.elect(n(1));
    c.isolate(n(3));
    propose_many(&mut c, 30);
    c.heal();
    c.ticks(5);
    assert_eq!(c.node(n(3)).snapshots_installed, 1);
    let size = c.node(n(1)).disk.snapshot_data.len() as u64;
    assert!(
        (129..=256).contains(&size),
        "a {size}-byte snapshot: 3 or 4 chunks"
    );
    let count = size.div_ceil(64);
    let expected: Vec<(u64, bool)> = (0..count).map(|k| (k * 64, k + 1 == count)).collect();
    assert_eq!(
        chunks_to_node_3(&c),
        expected,
        "chunks of a {size}-byte snapshot"
    );
}

/// Nodes 1 and 2 restart from a snapshot at (term 3, index 5) whose bytes are `data`
/// (an encoded state, or nothing); node 3 is new, so their leader must send it that
/// snapshot.
fn cluster_where_node_3_needs_a_snapshot_of(data: Vec<u8>, tune: impl Fn(&mut Config)) -> Cluster {
    let mut c = Cluster::new_with(3, tune);
    let base = LogId::new(Term(3), LogIndex(5));
    for id in [n(1), n(2)] {
        c.restart_from_snapshot(id, 3, base, data.clone(), Vec::new());
    }
    c
}

/// The (offset, done) of every snapshot chunk node 1 sent node 3 that arrived.
fn chunks_to_node_3(c: &Cluster) -> Vec<(u64, bool)> {
    c.delivered
        .iter()
        .filter_map(|(from, to, m)| match m {
            Message::InstallSnapshot(s) if (*from, *to) == (n(1), n(3)) => Some((s.offset, s.done)),
            _ => None,
        })
        .collect()
}

#[test]
fn paper_7_a_read_at_the_exact_end_is_not_sent() {
    // A snapshot of exactly one chunk, four chunks in flight: the reads at one, two and
    // three chunk lengths were asked for before the size was known and come back
    // empty; the one at the exact end is dropped like those beyond it.
    let data = raft_proto::encode_frame(&vec![b"the whole state".to_vec()]).expect("encodable");
    let size = data.len();
    let mut c = cluster_where_node_3_needs_a_snapshot_of(data, |cfg| {
        cfg.snapshot_chunk_bytes = size;
        cfg.max_snapshot_chunks_in_flight = 4;
    });
    c.elect(n(1));
    assert_eq!(c.node(n(3)).snapshots_installed, 1);
    assert_eq!(chunks_to_node_3(&c), vec![(0, true)]);
}

static EMPTY_CHUNKS_SEEN: AtomicUsize = AtomicUsize::new(0);

#[test]
fn paper_7_an_empty_snapshots_lost_chunk_is_resent() {
    // A snapshot may be empty (a state machine with no state): it is sent as one empty
    // chunk at offset 0, marked done. When that chunk is lost, the leader sends it
    // again once the transfer stalls, as it would any other chunk.
    let mut c = cluster_where_node_3_needs_a_snapshot_of(Vec::new(), |_| {});
    c.drop_if = Some(|_, to, m| {
        to == n(3)
            && matches!(m, Message::InstallSnapshot(_))
            && EMPTY_CHUNKS_SEEN.fetch_add(1, Ordering::SeqCst) == 0
    });
    c.elect(n(1));
    let election = c.raft(n(1)).config().election_ticks;
    for _ in 0..4 * election {
        c.tick(n(1));
        if c.node(n(3)).snapshots_installed > 0 {
            break;
        }
    }
    assert_eq!(EMPTY_CHUNKS_SEEN.load(Ordering::SeqCst), 2, "sent twice");
    assert_eq!(c.node(n(3)).snapshots_installed, 1);
    assert_eq!(
        c.raft(n(3)).log().snapshot().last_log_id,
        LogId::new(Term(3), LogIndex(5))
    );
}

#[test]
fn paper_7_the_leader_resends_after_the_second_answer_that_does_not_advance() {
    // "twice in a row, so plain reordering is not mistaken for loss": one answer that
    // does not move the follower's offset changes nothing; the second rewinds the
    // transfer to that offset, and the chunk there is read again.
    let mut c = leader_about_to_stream_a_snapshot_to_node_3();
    c.nodes.get_mut(&n(1)).expect("node 1").slow_chunk_reads = true;
    for _ in 0..20 {
        if !c.node(n(1)).chunk_reads.is_empty() {
            break;
        }
        c.tick(n(1));
    }
    let t = c
        .raft(n(1))
        .progress(n(3))
        .and_then(|pr| pr.snapshot.clone())
        .expect("a transfer to node 3");
    let offsets = |c: &Cluster| -> Vec<u64> {
        c.node(n(1))
            .chunk_reads
            .iter()
            .filter_map(|a| match a {
                Action::ReadSnapshotChunk { offset, .. } => Some(*offset),
                _ => None,
            })
            .collect()
    };
    assert_eq!(offsets(&c), vec![0], "the first chunk is being read");
    let term = c.term(n(1));
    let stuck = Message::InstallSnapshotResponse(InstallSnapshotResponse {
        term,
        snapshot_id: t.meta.id,
        snapshot: t.meta.last_log_id,
        outcome: SnapshotOutcome::Received { next_offset: 0 },
    });
    c.step(n(3), n(1), stuck.clone());
    assert_eq!(
        offsets(&c),
        vec![0],
        "one answer at offset 0: no resend yet"
    );
    c.step(n(3), n(1), stuck);
    assert_eq!(offsets(&c), vec![0, 0], "the second: chunk 0 is read again");
}

#[test]
fn paper_7_a_transfer_without_progress_rewinds_after_an_election_timeout() {
    // Every answer from node 3 is lost, so the transfer makes no progress: the leader
    // sends from the follower's last known offset again once more than an election
    // timeout has passed, at the first heartbeat after it (heartbeats every 2 ticks,
    // elections after 10: the chunk at offset 0 is read again 12 ticks later).
    let mut c = Cluster::new_with(3, |cfg| {
        small_snapshots(cfg);
        cfg.heartbeat_ticks = 2;
        cfg.snapshot_chunk_bytes = 4;
        cfg.max_snapshot_chunks_in_flight = 1;
    });
    c.elect(n(1));
    c.isolate(n(3));
    propose_many(&mut c, 40);
    c.heal();
    c.in_flight.clear();
    c.drop_if = Some(|from, _, m| from == n(3) && matches!(m, Message::InstallSnapshotResponse(_)));
    c.nodes.get_mut(&n(1)).expect("node 1").slow_chunk_reads = true;
    let mut reads_at_zero = Vec::new();
    for tick in 1..=80u32 {
        c.tick(n(1));
        while let Some(Action::ReadSnapshotChunk { offset, .. }) = c.node(n(1)).chunk_reads.front()
        {
            if *offset == 0 {
                reads_at_zero.push(tick);
            }
            c.read_chunks(n(1), 1);
            c.settle();
        }
        if reads_at_zero.len() == 2 {
            break;
        }
    }
    let (election, heartbeat) = (10, 2);
    let [first, second] = reads_at_zero[..] else {
        panic!("chunk 0 read at ticks {reads_at_zero:?}");
    };
    assert!(
        (election + 1..=election + heartbeat).contains(&(second - first)),
        "chunk 0 read again {} ticks after the first time",
        second - first
    );
}

#[test]
fn paper_7_a_follower_learns_its_leader_from_an_install_snapshot() {
    // A follower that voted in a term but has not heard from its leader yet takes the
    // sender of an InstallSnapshot of that term as its leader (as it would the sender
    // of an AppendEntries): it then redirects clients there.
    let mut c = Cluster::new(3);
    c.raft_mut(n(2)).step(
        n(1),
        Message::VoteRequest(VoteRequest {
            term: Term(1),
            last_log_id: LogId::ZERO,
            pre_vote: false,
            transfer: false,
        }),
    );
    c.process(n(2));
    assert_eq!(c.raft(n(2)).status().leader, None);
    c.step(n(1), n(2), chunk(1, (1, 100), 9, 0, b"abcd", false));
    assert_eq!(c.role(n(2)), Role::Follower);
    assert_eq!(c.raft(n(2)).status().leader, Some(n(1)));
}

#[test]
fn paper_7_an_answer_about_another_snapshot_is_ignored() {
    // An answer counts only for the transfer it answers: same snapshot id and same
    // last log id. A late answer about an earlier snapshot rebuilt at the same index
    // (its data was lost; the new one has a new id) must not move the new transfer.
    let mut c = leader_about_to_stream_a_snapshot_to_node_3();
    c.nodes.get_mut(&n(1)).expect("node 1").slow_chunk_reads = true;
    c.tick_all();
    let t = c
        .raft(n(1))
        .progress(n(3))
        .and_then(|pr| pr.snapshot.clone())
        .expect("a transfer to node 3");
    assert_eq!(t.acked, 0);
    let term = c.term(n(1));
    c.step(
        n(3),
        n(1),
        Message::InstallSnapshotResponse(InstallSnapshotResponse {
            term,
            snapshot_id: t.meta.id + 1,
            snapshot: t.meta.last_log_id,
            outcome: SnapshotOutcome::Received { next_offset: 12 },
        }),
    );
    let acked = c
        .raft(n(1))
        .progress(n(3))
        .and_then(|pr| pr.snapshot.as_ref())
        .map(|t| t.acked);
    assert_eq!(acked, Some(0));
}

/// Node 1 leads with 40 entries compacted away behind node 3, which rejoins with
/// nothing in flight: the snapshot to it goes 4 bytes a chunk, one chunk at a time.
fn leader_about_to_stream_a_snapshot_to_node_3() -> Cluster {
    let mut c = Cluster::new_with(3, |c| {
        small_snapshots(c);
        c.snapshot_chunk_bytes = 4;
        c.max_snapshot_chunks_in_flight = 1;
    });
    c.elect(n(1));
    c.isolate(n(3));
    propose_many(&mut c, 40);
    c.heal();
    c.in_flight.clear();
    c
}

#[test]
fn paper_7_heartbeats_keep_flowing_while_a_snapshot_streams() {
    // A snapshot to one follower never holds up the others: count, in ticks, the
    // longest gap between AppendEntries the leader sends to node 2 while node 3 is in
    // the snapshot state.
    let mut c = leader_about_to_stream_a_snapshot_to_node_3();
    // The leader's disk reads one chunk per tick.
    c.nodes.get_mut(&n(1)).expect("node 1").slow_chunk_reads = true;
    let (mut gap, mut longest, mut streaming_ticks) = (0u32, 0u32, 0u32);
    for _ in 0..400 {
        c.raft_mut(n(1)).tick();
        c.raft_mut(n(2)).tick();
        c.raft_mut(n(3)).tick();
        c.read_chunks(n(1), 1);
        c.process_all();
        let streaming = c
            .raft(n(1))
            .progress(n(3))
            .is_some_and(|p| p.state == ProgressState::Snapshot);
        let to_2 = c
            .in_flight
            .iter()
            .any(|(_, to, m)| *to == n(2) && matches!(m, Message::AppendEntries(_)));
        c.settle();
        if streaming {
            streaming_ticks += 1;
            gap = if to_2 { 0 } else { gap + 1 };
            longest = longest.max(gap);
        } else if streaming_ticks > 0 {
            break;
        }
    }
    let chunks = c
        .delivered
        .iter()
        .filter(|(_, to, m)| *to == n(3) && matches!(m, Message::InstallSnapshot(_)))
        .count();
    eprintln!(
        "snapshot to node 3: {chunks} chunks over {streaming_ticks} ticks; \
         longest gap between appends to node 2: {longest} ticks"
    );
    assert!(
        streaming_ticks > 5,
        "the snapshot streamed over {streaming_ticks} ticks"
    );
    assert_eq!(
        longest, 0,
        "node 2 missed a heartbeat while node 3 received the snapshot"
    );
    assert_eq!(
        c.leader(),
        Some(n(1)),
        "no election: node 3 heard heartbeats too"
    );
}

#[test]
fn paper_7_a_follower_waiting_for_a_stalled_snapshot_still_hears_heartbeats() {
    // The leader's disk has not read the next chunk for node 3, so the transfer stalls;
    // the leader still heartbeats node 3 (an empty append at its snapshot's last index),
    // so node 3 keeps its leader and never campaigns.
    let mut c = leader_about_to_stream_a_snapshot_to_node_3();
    c.nodes.get_mut(&n(1)).expect("node 1").slow_chunk_reads = true;
    for t in 0..60 {
        c.tick_all();
        assert_eq!(c.role(n(3)), Role::Follower, "tick {t}");
        assert_eq!(c.raft(n(3)).status().leader, Some(n(1)), "tick {t}");
    }
    assert!(
        c.raft(n(1))
            .progress(n(3))
            .is_some_and(|p| p.state == ProgressState::Snapshot),
        "the transfer is still waiting for its chunk"
    );
}

#[test]
fn paper_7_a_late_append_from_behind_the_followers_snapshot_is_acknowledged() {
    // Entries at or below a snapshot are committed, hence identical to the leader's: a
    // late duplicate of an old append, reaching back behind the follower's snapshot
    // and compacted log, is acknowledged, not answered with a conflict (which would
    // send the leader probing backwards).
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    propose_many(&mut c, 2);
    let old = c
        .delivered
        .iter()
        .rev()
        .find_map(|(from, to, m)| match m {
            Message::AppendEntries(a) if (*from, *to) == (n(1), n(2)) && !a.entries.is_empty() => {
                Some(a.clone())
            }
            _ => None,
        })
        .expect("an append with entries");
    propose_many(&mut c, 20);
    c.ticks(1);
    assert!(old.prev_log_id.index < c.raft(n(2)).log().purged().index);
    c.raft_mut(n(2)).step(n(1), Message::AppendEntries(old));
    let out = sends(&drain(c.raft_mut(n(2))));
    assert!(
        matches!(
            out.as_slice(),
            [(_, Message::AppendResponse(r))] if matches!(r.result, AppendResult::Success { .. })
        ),
        "{out:?}"
    );
}

fn chunk(term: u64, last: (u64, u64), id: u64, offset: u64, data: &[u8], done: bool) -> Message {
    Message::InstallSnapshot(InstallSnapshot {
        term: Term(term),
        meta: SnapshotMeta {
            last_log_id: LogId::new(Term(last.0), LogIndex(last.1)),
            membership: Membership::voters([n(1), n(2), n(3)]),
            id,
        },
        offset,
        data: Bytes::from(data),
        done,
    })
}

fn outcome(out: &[(raft_proto::NodeId, Message)]) -> SnapshotOutcome {
    match out.last() {
        Some((_, Message::InstallSnapshotResponse(r))) => r.outcome,
        other => panic!("no snapshot answer: {other:?}"),
    }
}

#[test]
fn paper_7_a_snapshot_older_than_the_followers_state_is_acknowledged_and_ignored() {
    // "If instead the follower receives a snapshot that describes a prefix of its log
    // ... entries covered by the snapshot are deleted but entries following the
    // snapshot are still valid": one it already has entirely is simply acknowledged.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    propose_many(&mut c, 6);
    c.ticks(1);
    let committed = c.raft(n(2)).log().committed();
    let term = c.term(n(1)).0;
    c.raft_mut(n(2))
        .step(n(1), chunk(term, (1, 3), 99, 0, b"old", true));
    let actions = drain(c.raft_mut(n(2)));
    assert!(!actions.iter().any(|a| matches!(
        a,
        Action::WriteSnapshotChunk { .. } | Action::InstallSnapshot { .. }
    )));
    assert_eq!(
        outcome(&sends(&actions)),
        SnapshotOutcome::Installed {
            last_index: committed
        }
    );
}

#[test]
fn paper_7_install_keeps_a_matching_suffix_and_discards_a_conflicting_log() {
    // "If the follower receives a snapshot that describes a prefix of its log, then log
    // entries covered by the snapshot are deleted but entries following the snapshot
    // are still valid and must be retained." Otherwise "the follower discards its
    // entire log; it is all superseded by the snapshot."
    let mut c = Cluster::with_logs(&[vec![], vec![1, 1, 1, 1], vec![1, 2, 2, 2]], |_| {});
    for (id, expect_last, discarded) in [(n(2), LogIndex(4), false), (n(3), LogIndex(2), true)] {
        c.raft_mut(id).step(n(1), chunk(3, (1, 2), 5, 0, b"", true));
        let actions = drain(c.raft_mut(id));
        let install = actions.iter().find_map(|a| match a {
            Action::InstallSnapshot { discard_log, .. } => Some(*discard_log),
            _ => None,
        });
        assert_eq!(install, Some(discarded), "node {id}");
        assert_eq!(c.raft(id).log().last_index(), expect_last, "node {id}");
        assert_eq!(
            outcome(&sends(&actions)),
            SnapshotOutcome::Installed {
                last_index: expect_last
            }
        );
        assert_eq!(c.raft(id).log().committed(), LogIndex(2));
    }
}

#[test]
fn paper_7_a_partial_transfer_resumes_with_a_new_leader() {
    // Chunks of the same snapshot (same id) from a new leader continue where the old
    // leader's transfer stopped, instead of starting over.
    let mut c = Cluster::new(3);
    c.raft_mut(n(3))
        .step(n(1), chunk(1, (1, 40), 77, 0, b"0123456789", false));
    c.raft_mut(n(3))
        .step(n(1), chunk(1, (1, 40), 77, 10, b"abcdefghij", false));
    drain(c.raft_mut(n(3)));
    // Node 2 now leads term 2 and starts the same snapshot from offset 0.
    c.raft_mut(n(3))
        .step(n(2), chunk(2, (1, 40), 77, 0, b"0123456789", false));
    let actions = drain(c.raft_mut(n(3)));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::WriteSnapshotChunk { .. })),
        "nothing rewritten"
    );
    assert_eq!(
        outcome(&sends(&actions)),
        SnapshotOutcome::Received { next_offset: 20 }
    );
    // A different snapshot starts over.
    c.raft_mut(n(3))
        .step(n(2), chunk(2, (2, 50), 78, 0, b"xy", false));
    let actions = drain(c.raft_mut(n(3)));
    assert_eq!(
        outcome(&sends(&actions)),
        SnapshotOutcome::Received { next_offset: 2 }
    );
}

#[test]
fn paper_7_a_restart_resumes_from_the_snapshot_and_the_kept_log() {
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    propose_many(&mut c, 12);
    c.ticks(2);
    let before = c.node(n(2)).state.clone();
    let log_before = c.raft(n(2)).log().last_log_id();
    assert!(
        c.node(n(2)).disk.purged.index > LogIndex(0),
        "node 2 compacted its stored log"
    );
    c.restart(n(2));
    assert_eq!(c.raft(n(2)).log().last_log_id(), log_before);
    c.ticks(2);
    assert_eq!(
        c.node(n(2)).state,
        before,
        "snapshot + re-applied tail = the same state"
    );
}

#[test]
fn paper_7_a_snapshot_build_that_finishes_after_a_newer_install_is_ignored() {
    // A follower starts building a snapshot in the background, falls behind the
    // leader's compacted log, installs the leader's newer snapshot, and only then does
    // its own build finish. The older snapshot must not replace the newer one: the
    // core keeps the installed snapshot and purges nothing for the old one, the store
    // keeps the newest by index, and the node restarts from it.
    let mut c = Cluster::new_with(3, |cfg| {
        cfg.snapshot_entries = 5;
        cfg.snapshot_keep_entries = 0;
    });
    c.elect(n(1));
    c.nodes.get_mut(&n(3)).expect("node 3").slow_snapshot_builds = true;
    propose_many(&mut c, 5);
    c.settle();
    let building = c.node(n(3)).builds.front().map(|(m, _)| m.last_log_id);
    let Some(building) = building else {
        panic!("node 3 was not asked for a snapshot");
    };
    assert_eq!(c.raft(n(3)).log().snapshot().last_log_id.index, LogIndex(0));

    c.isolate(n(3));
    propose_many(&mut c, 12);
    c.settle();
    c.heal();
    c.ticks(3);
    c.settle();
    let installed = c.raft(n(3)).log().snapshot().last_log_id;
    assert!(
        c.node(n(3)).snapshots_installed >= 1 && installed.index > building.index,
        "node 3 should have installed a snapshot newer than its build at {building:?}; it has {installed:?}"
    );
    let purged = c.raft(n(3)).log().purged();

    c.finish_builds(n(3));
    assert_eq!(c.raft(n(3)).log().snapshot().last_log_id, installed);
    assert_eq!(c.raft(n(3)).log().purged(), purged);
    assert_eq!(c.node(n(3)).disk.snapshot.last_log_id, installed);

    c.restart(n(3));
    c.ticks(3);
    c.settle();
    assert_eq!(
        c.applied_commands(n(3)).last(),
        c.applied_commands(n(1)).last()
    );
    assert_eq!(c.node(n(3)).state, c.node(n(1)).state);
}

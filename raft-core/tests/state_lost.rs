//! A node whose snapshot was lost to a storage fault (issue 14): "a node never refuses
//! to start while its log or vote still matters". Raft assumes stable storage (paper
//! §5.1, Figure 2: currentTerm, votedFor and log[] are "updated on stable storage
//! before responding to RPCs"); a snapshot is only a compaction of the state machine
//! (§7). So losing a snapshot must cost the node its state machine, never its log or
//! its vote: it keeps voting and acknowledging entries, applies nothing, serves no
//! read, and gets the state back from a leader's InstallSnapshot (§7).

mod support;

use raft_core::{Action, Config, ProposeError, Role};
use raft_proto::{LogIndex, Message, ReadId};
use support::{Cluster, n};

/// Snapshots every 5 applied entries, 2 entries kept, small chunks.
fn small_snapshots(c: &mut Config) {
    c.snapshot_entries = 5;
    c.snapshot_keep_entries = 2;
    c.snapshot_chunk_bytes = 16;
    c.max_snapshot_chunks_in_flight = 2;
}

fn propose_many(c: &mut Cluster, leader: u64, from: usize, count: usize) {
    for i in from..from + count {
        c.propose(n(leader), &format!("cmd-{i:03}"));
    }
}

fn requests_sent(c: &Cluster, from: u64) -> usize {
    c.delivered
        .iter()
        .filter(|(f, _, m)| *f == n(from) && matches!(m, Message::SnapshotRequest(_)))
        .count()
}

#[test]
fn a_follower_that_lost_its_snapshot_keeps_acknowledging_and_gets_the_state_from_the_leader() {
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    propose_many(&mut c, 1, 0, 12);
    assert!(
        c.raft(n(3)).log().purged().index > LogIndex::ZERO,
        "compacted"
    );

    let plan = c.restart_with_snapshot_lost(n(3));
    assert!(plan.restore.state_lost, "{:?}", plan.notes);
    assert!(c.raft(n(3)).status().state_lost);
    assert_eq!(
        c.raft(n(3)).membership(),
        c.raft(n(1)).membership(),
        "the configuration comes from the log store's record of its base"
    );

    // With node 2 cut off, only node 3 can make a write durable on a majority: it must
    // still acknowledge entries, though it cannot apply them.
    c.cut(n(1), n(2));
    let id = c
        .raft_mut(n(1))
        .propose("after-the-fault".into())
        .expect("leader");
    c.settle();
    assert!(
        c.raft(n(1)).log().committed() >= id.index,
        "node 3's acknowledgement makes the write committed"
    );
    assert!(
        c.node(n(3)).applied.is_empty(),
        "nothing applied while lost"
    );

    // Within an election timeout it asks for a snapshot, installs it, and catches up.
    c.ticks(2 * small_config().election_ticks);
    c.settle();
    assert!(requests_sent(&c, 3) >= 1, "node 3 asked for a snapshot");
    assert!(!c.raft(n(3)).status().state_lost, "the state is back");
    assert_eq!(c.node(n(3)).snapshots_installed, 1);
    assert_eq!(c.applied_commands(n(3)), c.applied_commands(n(1)));
    assert_eq!(c.raft(n(3)).log().applied(), c.raft(n(1)).log().applied());
}

#[test]
fn a_node_that_lost_its_state_asks_for_a_snapshot_once_per_election_timeout() {
    // Its requests go out at a steady pace while no snapshot arrives (here every chunk
    // to it is lost): one per election timeout, neither more often nor less.
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    propose_many(&mut c, 1, 0, 12);
    c.restart_with_snapshot_lost(n(3));
    c.drop_if = Some(|_, to, m| to == n(3) && matches!(m, Message::InstallSnapshot(_)));
    let election = small_config().election_ticks;
    let mut asked_at = Vec::new();
    for tick in 1..=4 * election {
        let before = requests_sent(&c, 3);
        c.tick_all();
        if requests_sent(&c, 3) > before {
            asked_at.push(tick);
        }
    }
    assert!(c.raft(n(3)).status().state_lost);
    // The first request goes out as soon as it knows a leader (at start-up it has
    // waited long enough), then one every election timeout.
    assert!(asked_at.len() >= 3, "requests at ticks {asked_at:?}");
    assert!(
        asked_at.windows(2).all(|w| w[1] - w[0] == election),
        "requests at ticks {asked_at:?}"
    );
}

fn small_config() -> Config {
    let mut c = Config::new(n(1));
    small_snapshots(&mut c);
    c
}

#[test]
fn a_node_that_lost_its_state_serves_no_read_until_its_snapshot_arrives() {
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    // The blank entry and 9 commands: node 3's last snapshot covers the whole
    // committed log, so the read index equals the index its lost state stood for.
    propose_many(&mut c, 1, 0, 9);
    let plan = c.restart_with_snapshot_lost(n(3));
    assert_eq!(
        plan.restore.snapshot.last_log_id.index,
        c.raft(n(1)).log().committed(),
        "the read index will be the lost node's base"
    );
    // Node 3 learns its leader, then asks for a read while its state is gone; the
    // leader confirms the read index, but the read waits for the state.
    c.ticks(1);
    c.settle();
    c.raft_mut(n(3))
        .read_index(ReadId(7))
        .expect("follows a leader");
    c.drop_if = Some(|_, _, m| matches!(m, Message::SnapshotRequest(_)));
    c.settle();
    assert!(
        c.node(n(3)).reads_ready.is_empty(),
        "a read served from a lost state would be stale"
    );
    c.drop_if = None;
    c.ticks(2 * small_config().election_ticks);
    c.settle();
    assert!(!c.raft(n(3)).status().state_lost);
    assert_eq!(
        c.node(n(3))
            .reads_ready
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        vec![ReadId(7)],
        "the read is served once the snapshot is installed"
    );
}

#[test]
fn a_leader_that_lost_its_state_refuses_writes_and_hands_leadership_to_a_voter_with_state() {
    // The scenario: the node that lost its snapshot holds the only copy of the
    // newest entries among the live nodes (node 3 is down), so the others cannot win
    // without its vote, and it must be able to lead, then hand over.
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    propose_many(&mut c, 1, 0, 12);
    c.isolate(n(3));
    propose_many(&mut c, 1, 12, 3);
    c.cut(n(1), n(2));
    c.raft_mut(n(1))
        .propose("only-on-1".into())
        .expect("leader");
    c.settle();
    c.restart_with_snapshot_lost(n(1));
    c.heal();
    c.isolate(n(3));
    let mut refused = None;
    for _ in 0..10 * small_config().election_ticks {
        c.tick_all();
        c.settle();
        if c.role(n(1)) == Role::Leader && refused.is_none() {
            refused = Some(c.raft_mut(n(1)).propose("refused".into()));
        }
        if c.leader().is_some_and(|l| l != n(1)) && !c.raft(n(1)).status().state_lost {
            break;
        }
    }
    assert!(
        matches!(
            refused,
            Some(Err(
                ProposeError::StateLost | ProposeError::TransferInProgress { .. }
            ))
        ),
        "node 1 led and refused writes it cannot apply: {refused:?}"
    );
    assert_eq!(
        c.leader(),
        Some(n(2)),
        "leadership moved to the node with state"
    );
    assert!(
        !c.raft(n(1)).status().state_lost,
        "node 1 got its state back"
    );
    c.heal();
    propose_many(&mut c, 2, 100, 3);
    c.ticks(4 * small_config().election_ticks);
    c.settle();
    for id in [1, 3] {
        assert_eq!(
            c.applied_commands(n(id)),
            c.applied_commands(n(2)),
            "node {id}"
        );
    }
    assert!(
        c.applied_commands(n(2))
            .iter()
            .any(|cmd| cmd == "only-on-1"),
        "the entry only the lost node held survived"
    );
}

#[test]
fn a_lost_state_declines_a_snapshot_older_than_its_base() {
    // A snapshot older than where the log's base says the state was would take the
    // node's applied index backwards (and, older than its log's start, cost it
    // entries it acknowledged): the node declines it and keeps asking.
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    propose_many(&mut c, 1, 0, 12);
    let old = c.raft(n(1)).log().snapshot().clone();
    propose_many(&mut c, 1, 12, 12);
    let plan = c.restart_with_snapshot_lost(n(3));
    let base = plan.restore.snapshot.last_log_id;
    assert!(old.last_log_id.index < base.index);
    c.ticks(1);
    c.settle();
    let term = c.term(n(1));
    c.step(
        n(1),
        n(3),
        Message::InstallSnapshot(raft_proto::InstallSnapshot {
            term,
            meta: old,
            offset: 0,
            data: raft_proto::Bytes::new(),
            done: true,
        }),
    );
    assert!(
        c.raft(n(3)).status().state_lost,
        "the old snapshot is not installed"
    );
    assert_eq!(c.raft(n(3)).log().purged().index, plan.restore.purged.index);
}

#[test]
fn a_snapshot_whose_file_is_gone_is_rebuilt_before_it_is_sent() {
    // The leader's newest snapshot cannot be read (its file was lost): a follower that
    // needs one gets a fresh snapshot instead of a transfer that never completes.
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    c.isolate(n(3));
    propose_many(&mut c, 1, 0, 12);
    let built_before = c.node(n(1)).snapshots_built;
    // The file is gone: reads of it return nothing.
    c.nodes.get_mut(&n(1)).expect("node").disk.snapshot.id ^= 0xdead;
    c.heal();
    c.ticks(4 * small_config().election_ticks);
    c.settle();
    assert!(
        c.node(n(1)).snapshots_built > built_before,
        "a new snapshot was built"
    );
    assert_eq!(c.node(n(3)).snapshots_installed, 1);
    assert_eq!(c.applied_commands(n(3)), c.applied_commands(n(1)));
}

#[test]
fn a_snapshot_whose_file_is_gone_is_not_read_again_while_it_is_rebuilt() {
    // Once a read finds the leader's newest snapshot file gone, that snapshot is never
    // offered again: the follower waits for the rebuild instead of the leader retrying
    // the lost file at every heartbeat.
    let mut c = Cluster::new_with(3, small_snapshots);
    c.elect(n(1));
    c.isolate(n(3));
    // The blank entry and 9 commands: the snapshot is at the last applied index, so
    // the rebuild is at the same index and must replace it.
    propose_many(&mut c, 1, 0, 9);
    let gone = c.raft(n(1)).log().snapshot().id;
    assert_eq!(
        c.raft(n(1)).log().snapshot().last_log_id.index,
        c.raft(n(1)).log().applied()
    );
    let leader = c.nodes.get_mut(&n(1)).expect("node");
    leader.disk.snapshot.id ^= 0xdead;
    leader.slow_snapshot_builds = true;
    leader.slow_chunk_reads = true;
    c.heal();
    // Transfers of the lost file started (each reads from offset 0).
    let mut reads_of_gone = 0;
    for _ in 0..30 {
        c.tick_all();
        let queued = &c.node(n(1)).chunk_reads;
        reads_of_gone += queued
            .iter()
            .filter(|a| matches!(a, Action::ReadSnapshotChunk { meta, offset: 0, .. } if meta.id == gone))
            .count();
        let count = queued.len();
        c.read_chunks(n(1), count);
        c.settle();
    }
    assert_eq!(reads_of_gone, 1, "the lost file was tried once");
    c.finish_builds(n(1));
    c.nodes.get_mut(&n(1)).expect("node").slow_chunk_reads = false;
    c.ticks(20);
    assert_eq!(c.node(n(3)).snapshots_installed, 1);
}

//! Paper §5.3 (log replication), §5.4.2 (committing entries from previous terms), §5.5
//! (crashes) and §8 (the blank entry), plus the leader's batching and flow control.

mod support;

use raft_core::{Action, Config, ProgressState, ProposeError, Role};
use raft_proto::{
    AppendEntries, AppendResponse, AppendResult, Bytes, ConflictHint, Entry, EntryPayload, LogId,
    LogIndex, Message, NodeId, Term,
};
use support::{Cluster, drain, n, sends};

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(Term(term), LogIndex(index)),
        payload: EntryPayload::Command(Bytes::from("x")),
    }
}

fn append(term: u64, prev: (u64, u64), entries: &[(u64, u64)], commit: u64) -> Message {
    Message::AppendEntries(AppendEntries {
        term: Term(term),
        prev_log_id: LogId::new(Term(prev.0), LogIndex(prev.1)),
        entries: entries.iter().map(|&(t, i)| entry(t, i)).collect(),
        leader_commit: LogIndex(commit),
        round: 0,
    })
}

fn only_response(c: &mut Cluster, id: NodeId) -> AppendResult {
    let out = sends(&drain(c.raft_mut(id)));
    match out.as_slice() {
        [(_, Message::AppendResponse(r))] => r.result.clone(),
        other => panic!("expected one AppendResponse, got {other:?}"),
    }
}

/// A follower's answer in `term`: the append whose prev index was `rejected` failed
/// its consistency check, with `hint`.
fn conflict(term: Term, rejected: LogIndex, hint: ConflictHint) -> Message {
    Message::AppendResponse(AppendResponse {
        term,
        round: 0,
        result: AppendResult::Conflict { rejected, hint },
    })
}

/// Node 1 leads and node 2, cut off, misses four commands. Returns the leader's term,
/// its last index and node 2's match index.
fn node_2_misses_four_commands() -> (Cluster, Term, LogIndex, LogIndex) {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.isolate(n(2));
    for i in 0..4 {
        c.propose(n(1), &format!("c{i}"));
    }
    let term = c.term(n(1));
    let last = c.raft(n(1)).log().last_index();
    let matched = c.raft(n(1)).progress(n(2)).expect("progress").match_index;
    (c, term, last, matched)
}

fn terms(c: &Cluster, id: NodeId) -> Vec<u64> {
    c.raft(id)
        .log()
        .entries()
        .map(|e| e.log_id.term.0)
        .collect()
}

#[test]
fn paper_5_3_leader_appends_a_command_and_replicates_it() {
    // "The leader appends the command to its log as a new entry, then issues
    // AppendEntries RPCs in parallel to each of the other servers to replicate the
    // entry. When the entry has been safely replicated, the leader applies the entry to
    // its state machine."
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let id = c.propose(n(1), "x");
    assert_eq!(c.raft(n(1)).log().committed(), id.index);
    assert_eq!(c.applied_commands(n(1)), vec!["x"]);
    for f in [n(2), n(3)] {
        assert_eq!(c.raft(f).log().last_log_id(), id);
    }
}

#[test]
fn paper_5_3_entry_commits_once_a_majority_stores_it() {
    // "A log entry is committed once the leader that created the entry has replicated
    // it on a majority of the servers."
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.isolate(n(3));
    let id = c.propose(n(1), "x");
    assert_eq!(c.raft(n(1)).log().committed(), id.index);
    assert!(c.raft(n(3)).log().last_index() < id.index);
}

#[test]
fn paper_5_3_entry_does_not_commit_without_a_majority() {
    let mut c = Cluster::new(5);
    c.elect(n(1));
    for id in [n(3), n(4), n(5)] {
        c.isolate(id);
    }
    let before = c.raft(n(1)).log().committed();
    let id = c.propose(n(1), "x");
    assert_eq!(
        c.raft(n(2)).log().last_log_id(),
        id,
        "the entry was replicated"
    );
    assert_eq!(
        c.raft(n(1)).log().committed(),
        before,
        "2 of 5 is no majority"
    );
    assert!(c.applied_commands(n(1)).is_empty());
}

#[test]
fn paper_5_3_followers_apply_entries_once_they_learn_they_are_committed() {
    // "The leader keeps track of the highest index it knows to be committed, and it
    // includes that index in future AppendEntries RPCs (including heartbeats) so that the
    // other servers eventually find out. Once a follower learns that a log entry is
    // committed, it applies the entry to its local state machine (in log order)."
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.propose(n(1), "a");
    c.propose(n(1), "b");
    c.ticks(2);
    for id in c.ids() {
        assert_eq!(c.applied_commands(id), vec!["a", "b"], "node {id}");
    }
}

#[test]
fn paper_5_3_consistency_check_rejects_a_missing_previous_entry() {
    // "If the follower does not find an entry in its log with the same index and term,
    // then it refuses the new entries."
    let mut c = Cluster::with_logs(&[vec![], vec![1], vec![]], |_| {});
    c.raft_mut(n(2)).step(n(1), append(2, (1, 3), &[(2, 4)], 0));
    assert_eq!(
        only_response(&mut c, n(2)),
        AppendResult::Conflict {
            rejected: LogIndex(3),
            hint: ConflictHint::LastIndex(LogIndex(1))
        }
    );
    assert_eq!(terms(&c, n(2)), vec![1]);
}

#[test]
fn paper_5_3_consistency_check_rejects_a_term_mismatch_with_a_hint() {
    // "When rejecting an AppendEntries request, the follower can include the term of the
    // conflicting entry and the first index it stores for that term."
    let mut c = Cluster::with_logs(&[vec![], vec![1, 2, 2, 2], vec![]], |_| {});
    c.raft_mut(n(2)).step(n(1), append(3, (3, 4), &[], 0));
    assert_eq!(
        only_response(&mut c, n(2)),
        AppendResult::Conflict {
            rejected: LogIndex(4),
            hint: ConflictHint::Term {
                term: Term(2),
                first_index: LogIndex(2)
            }
        }
    );
}

#[test]
fn paper_5_3_the_leader_backs_off_to_its_last_entry_of_the_conflicting_term() {
    // With the hint (term 2, first index 3), "the leader can decrement nextIndex to
    // bypass all of the conflicting entries in that term": it holds term 2 up to index
    // 3, so its next probe checks index 3 rather than the follower's first index of the
    // term or the start of the log.
    let mut c = Cluster::with_logs(&[vec![1, 1, 2, 3], vec![1, 1, 2, 2, 2], vec![]], |_| {});
    c.elect(n(1));
    let probes: Vec<u64> = c
        .delivered
        .iter()
        .filter_map(|(from, to, m)| match m {
            Message::AppendEntries(a) if (*from, *to) == (n(1), n(2)) => {
                Some(a.prev_log_id.index.0)
            }
            _ => None,
        })
        .collect();
    assert_eq!(probes[..2], [4, 3], "{probes:?}");
    assert_eq!(terms(&c, n(2)), terms(&c, n(1)));
}

/// Node 1 leads in term 5 over a log that starts after a snapshot at (term 3, index
/// 5) and holds two term-4 entries (6 and 7) before its blank entry (8). Node 3 is cut
/// off, so the leader probes it at index 8 (prev 7) and waits for its answer.
fn leader_whose_log_starts_after_a_term_3_snapshot() -> Cluster {
    let mut c = Cluster::new(3);
    let base = LogId::new(Term(3), LogIndex(5));
    for id in c.ids() {
        c.restart_from_snapshot(id, 4, base, Vec::new(), vec![entry(4, 6), entry(4, 7)]);
    }
    c.isolate(n(3));
    c.elect(n(1));
    assert_eq!(c.raft(n(1)).log().purged(), base);
    let probe = c.raft(n(1)).progress(n(3)).expect("node 3's progress");
    assert_eq!(
        (probe.state, probe.next_index),
        (ProgressState::Probe, LogIndex(8))
    );
    c
}

/// Node 3 rejects the probe at prev 7: its entry there has `term`, whose first index
/// in its log is `first_index`.
fn reject_prev_7(c: &mut Cluster, term: u64, first_index: u64) {
    let hint = ConflictHint::Term {
        term: Term(term),
        first_index: LogIndex(first_index),
    };
    c.step(n(3), n(1), conflict(Term(5), LogIndex(7), hint));
}

#[test]
fn paper_5_3_the_back_off_counts_the_snapshots_last_entry_as_the_leaders_last_of_its_term() {
    // The leader's last entry of the hint's term may be its snapshot's last entry.
    // Node 3 holds term 3 from index 2 through 7 (an old leader's uncommitted tail):
    // the leader's last term-3 entry is its snapshot's (index 5), so it probes next at
    // index 6 (prev 5, which matches), instead of going back to the follower's first
    // index of term 3, behind its snapshot, and sending the whole snapshot.
    let mut c = leader_whose_log_starts_after_a_term_3_snapshot();
    reject_prev_7(&mut c, 3, 2);
    let pr = c.raft(n(1)).progress(n(3)).expect("node 3's progress");
    assert_eq!(
        (pr.state, pr.next_index),
        (ProgressState::Probe, LogIndex(6))
    );
}

#[test]
fn paper_5_3_a_conflict_in_a_term_the_leader_never_held_goes_behind_its_snapshot() {
    // Node 3 holds term 2 from index 2 through 7: it conflicts with the leader's
    // snapshot itself. The leader holds no entry of term 2 (its snapshot's last entry
    // is of term 3), so it goes back to the follower's first index of term 2, behind
    // its snapshot, and the next heartbeat starts the snapshot, without a probe at
    // index 6 that could only fail again.
    let mut c = leader_whose_log_starts_after_a_term_3_snapshot();
    reject_prev_7(&mut c, 2, 2);
    let pr = c.raft(n(1)).progress(n(3)).expect("node 3's progress");
    assert_eq!(pr.state, ProgressState::Snapshot);
}

#[test]
fn paper_5_3_the_hint_gives_the_first_index_stored_for_the_term() {
    // "the first index it stores for that term": after compaction that is the first
    // entry held, not the snapshot's last index before it.
    let mut c = Cluster::new_with(3, |c| {
        c.snapshot_entries = 5;
        c.snapshot_keep_entries = 2;
    });
    c.elect(n(1));
    for i in 0..12 {
        c.propose(n(1), &format!("c{i}"));
    }
    let log = c.raft(n(2)).log();
    let (first, last, term) = (log.first_index(), log.last_log_id(), log.last_log_id().term);
    assert!(log.purged().index > LogIndex(0) && log.purged().term == term);
    // A leader of a later term checks the last index with another term.
    let next = term.next().0;
    c.raft_mut(n(2))
        .step(n(3), append(next, (next, last.index.0), &[], 0));
    assert_eq!(
        only_response(&mut c, n(2)),
        AppendResult::Conflict {
            rejected: last.index,
            hint: ConflictHint::Term {
                term,
                first_index: first
            }
        }
    );
}

#[test]
fn paper_5_3_conflicting_suffix_is_deleted_and_replaced() {
    // "If an existing entry conflicts with a new one (same index but different terms),
    // delete the existing entry and all that follow it."
    let mut c = Cluster::with_logs(&[vec![], vec![1, 1, 2, 2], vec![]], |_| {});
    c.raft_mut(n(2)).step(n(1), append(3, (1, 2), &[(3, 3)], 0));
    let actions = drain(c.raft_mut(n(2)));
    // The new term, the truncation and the append land in one durable write.
    let Action::Persist(p) = &actions[0] else {
        panic!("expected a persist, got {actions:?}")
    };
    assert_eq!(p.hard_state.map(|h| h.term), Some(Term(3)));
    assert_eq!(p.truncate_from, Some(LogIndex(3)));
    assert_eq!(p.entries.len(), 1);
    assert_eq!(terms(&c, n(2)), vec![1, 1, 3]);
    assert!(matches!(
        &actions[1],
        Action::Send {
            message: Message::AppendResponse(AppendResponse {
                result: AppendResult::Success {
                    match_index: LogIndex(3)
                },
                ..
            }),
            ..
        }
    ));
}

#[test]
fn paper_5_3_a_malformed_append_is_dropped_unanswered() {
    // Figure 2's receiver assumes entries that follow prevLogIndex one by one, with
    // terms that never go down and never exceed the leader's term: an append that
    // breaks any one of these comes from no honest leader, and is neither stored nor
    // answered.
    for (what, m) in [
        ("a gap after prev", append(1, (0, 0), &[(1, 2)], 0)),
        ("terms going down", append(2, (0, 0), &[(2, 1), (1, 2)], 0)),
        ("a term above the leader's", append(1, (0, 0), &[(2, 1)], 0)),
        ("no index left after it", append(1, (1, u64::MAX), &[], 0)),
    ] {
        let mut c = Cluster::new(3);
        c.raft_mut(n(2)).step(n(1), m);
        let answers = sends(&drain(c.raft_mut(n(2))))
            .into_iter()
            .filter(|(_, m)| matches!(m, Message::AppendResponse(_)))
            .count();
        assert_eq!(answers, 0, "{what}: answered");
        assert_eq!(
            c.raft(n(2)).log().last_index(),
            LogIndex(0),
            "{what}: stored"
        );
    }
}

#[test]
fn paper_5_3_a_stale_append_never_truncates_matching_entries() {
    // Only a *conflicting* entry is deleted: a delayed AppendEntries whose entries the
    // follower already holds must not cut off what follows them.
    let mut c = Cluster::with_logs(&[vec![], vec![1, 1, 1, 1], vec![]], |_| {});
    c.raft_mut(n(2)).step(n(1), append(1, (1, 1), &[(1, 2)], 0));
    assert_eq!(
        only_response(&mut c, n(2)),
        AppendResult::Success {
            match_index: LogIndex(2)
        }
    );
    assert_eq!(terms(&c, n(2)), vec![1, 1, 1, 1]);
}

#[test]
fn paper_5_3_commit_index_on_a_follower_never_passes_what_it_verified() {
    // "If leaderCommit > commitIndex, set commitIndex = min(leaderCommit, index of last
    // new entry)": entries after the verified prefix may still be overwritten.
    let mut c = Cluster::with_logs(&[vec![], vec![1, 1, 1, 1], vec![]], |_| {});
    c.raft_mut(n(2)).step(n(1), append(2, (1, 2), &[], 10));
    assert_eq!(c.raft(n(2)).log().committed(), LogIndex(2));
}

#[test]
fn paper_5_3_figure_7_leader_brings_every_follower_into_agreement() {
    // Figure 7: followers missing entries (a, b), with extra uncommitted entries (c, d),
    // or both (e, f). "The leader handles inconsistencies by forcing the followers' logs
    // to duplicate its own."
    let leader = vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let mut c = Cluster::with_logs(
        &[
            leader.clone(),
            vec![1, 1, 1, 4, 4, 5, 5, 6, 6],
            vec![1, 1, 1, 4],
            vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
            vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
            vec![1, 1, 1, 4, 4, 4, 4],
            vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
        ],
        |_| {},
    );
    c.elect(n(1));
    let term = c.term(n(1)).0;
    c.ticks(3);
    let mut expected = leader;
    expected.push(term);
    for id in c.ids() {
        assert_eq!(terms(&c, id), expected, "node {id}");
    }
}

#[test]
fn paper_5_3_leader_never_overwrites_its_own_log() {
    // Leader Append-Only: "a leader never overwrites or deletes entries in its own log";
    // its uncommitted entry from an earlier term is replicated, not dropped.
    let mut c = Cluster::with_logs(&[vec![1, 2], vec![1], vec![1]], |_| {});
    c.elect(n(1));
    let term = c.term(n(1)).0;
    c.ticks(2);
    for id in c.ids() {
        assert_eq!(terms(&c, id), vec![1, 2, term], "node {id}");
    }
}

#[test]
fn paper_5_4_2_figure_8_an_old_term_entry_is_not_committed_by_counting_replicas() {
    // "Raft never commits log entries from previous terms by counting replicas. Only log
    // entries from the leader's current term are committed by counting replicas."
    // Figure 8 (c): S1, leader of term 4, has the term-2 entry at index 2 on S1, S2, S3
    // (a majority), yet it must not commit it.
    let mut c = Cluster::with_logs(
        &[vec![1, 2], vec![1, 2], vec![1], vec![1], vec![1, 3]],
        |_| {},
    );
    for id in [n(2), n(3), n(4), n(5)] {
        c.cut(n(1), id);
    }
    // S5 (last entry from term 3) would refuse S1; S1 wins with S2, S3 (and S4's
    // pre-vote), delivered by hand so no follower answers an append.
    let mut ticks = 0;
    while c.role(n(1)) != Role::Candidate {
        ticks += 1;
        assert!(ticks < 100, "node 1 never became a candidate");
        c.raft_mut(n(1)).tick();
        drain(c.raft_mut(n(1)));
        if c.role(n(1)) == Role::PreCandidate {
            for v in [n(2), n(3), n(4)] {
                let t = c.term(n(1)).next();
                c.raft_mut(n(1)).step(
                    v,
                    Message::VoteResponse(raft_proto::VoteResponse {
                        term: t,
                        granted: true,
                        pre_vote: true,
                    }),
                );
            }
        }
    }
    let term = c.term(n(1));
    for v in [n(2), n(3)] {
        c.raft_mut(n(1)).step(
            v,
            Message::VoteResponse(raft_proto::VoteResponse {
                term,
                granted: true,
                pre_vote: false,
            }),
        );
    }
    assert_eq!(c.role(n(1)), Role::Leader);
    c.process(n(1)); // the blank entry (term, 3) is persisted on S1
    assert_eq!(c.raft(n(1)).log().persisted(), LogIndex(3));
    let ack = |index| {
        Message::AppendResponse(AppendResponse {
            term,
            round: 0,
            result: AppendResult::Success {
                match_index: LogIndex(index),
            },
        })
    };
    c.step(n(2), n(1), ack(2));
    c.step(n(3), n(1), ack(2));
    assert_eq!(
        c.raft(n(1)).log().committed(),
        LogIndex(0),
        "index 2 is on a majority but from term 2"
    );
    // "Once an entry from the current term has been committed in this way, then all prior
    // entries are committed indirectly."
    c.step(n(2), n(1), ack(3));
    assert_eq!(
        c.raft(n(1)).log().committed(),
        LogIndex(0),
        "index 3 is on 2 of 5"
    );
    c.step(n(3), n(1), ack(3));
    assert_eq!(c.raft(n(1)).log().committed(), LogIndex(3));
    assert_eq!(c.node(n(1)).applied.len(), 3);
}

#[test]
fn paper_5_4_2_leader_counts_itself_only_once_its_own_write_is_durable() {
    // §10.2.1 lets the leader write its log in parallel with replication, but an entry
    // counts as stored on the leader only when the leader's write has finished.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.isolate(n(3));
    c.slow_disk(n(1));
    let id = c.raft_mut(n(1)).propose(Bytes::from("x")).expect("leader");
    c.settle();
    assert_eq!(
        c.raft(n(2)).log().last_log_id(),
        id,
        "sent while the leader's write is in flight"
    );
    assert!(
        c.raft(n(1)).log().committed() < id.index,
        "one durable copy of three is not a majority"
    );
    c.release_disk(n(1));
    assert_eq!(c.raft(n(1)).log().committed(), id.index);
}

#[test]
fn paper_8_leader_commits_a_blank_entry_at_the_start_of_its_term() {
    // §8: "each leader commit a blank no-op entry into the log at the start of its term."
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let last = c
        .raft(n(1))
        .log()
        .entries()
        .last()
        .cloned()
        .expect("an entry");
    assert_eq!(last.payload, EntryPayload::Blank);
    assert_eq!(last.log_id.term, c.term(n(1)));
    assert_eq!(c.raft(n(1)).log().committed(), last.log_id.index);
}

#[test]
fn paper_5_5_restart_keeps_term_vote_and_log_and_catches_up() {
    // Figure 2 "Persistent state on all servers"; §5.5: "If a follower or candidate
    // crashes ... Raft just retries indefinitely; if the crashed server restarts, then
    // the RPC will complete successfully."
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.propose(n(1), "a");
    c.ticks(1);
    let before = c.raft(n(2)).status();
    c.restart(n(2));
    let after = c.raft(n(2)).status();
    assert_eq!(
        (after.term, after.voted_for, after.last_log_id),
        (before.term, before.voted_for, before.last_log_id)
    );
    assert_eq!(after.role, Role::Follower);
    c.isolate(n(3));
    c.propose(n(1), "b");
    c.ticks(1);
    assert_eq!(
        c.applied_commands(n(2)),
        vec!["a", "b"],
        "re-applied from the log after the restart"
    );
}

#[test]
fn replication_proposals_between_polls_share_one_append_and_one_persist() {
    // Batching: commands proposed together travel in one AppendEntries per follower and
    // land in one durable write, and the sends come before the leader's own write.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.ticks(1);
    for i in 0..5 {
        c.raft_mut(n(1))
            .propose(Bytes::from(format!("c{i}").as_str()))
            .expect("leader");
    }
    let actions = drain(c.raft_mut(n(1)));
    let appends: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                message: Message::AppendEntries(m),
                ..
            } => Some(m.entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(appends, vec![5, 5]);
    let persists: Vec<usize> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Persist(p) => Some(p.entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(persists, vec![5]);
    assert!(
        matches!(actions.last(), Some(Action::Persist(_))),
        "sends first, then the leader's write"
    );
}

/// Flow control at its smallest: two appends in flight per follower, one entry each.
fn window_of_two(c: &mut Config) {
    c.max_inflight_appends = 2;
    c.max_entries_per_append = 1;
}

#[test]
fn replication_pipeline_stops_at_the_in_flight_limit() {
    let mut c = Cluster::new_with(3, window_of_two);
    c.elect(n(1));
    c.ticks(1);
    assert!(
        c.raft(n(1))
            .progress(n(2))
            .is_some_and(|p| p.state == raft_core::ProgressState::Replicate)
    );
    for i in 0..5 {
        c.raft_mut(n(1))
            .propose(Bytes::from(format!("c{i}").as_str()))
            .expect("leader");
        c.process(n(1));
    }
    let to_2 = c
        .take_in_flight()
        .into_iter()
        .filter(|(_, to, _)| *to == n(2))
        .count();
    assert_eq!(
        to_2, 2,
        "two appends in flight, the rest wait for acknowledgements"
    );
    // Acknowledgements open the window again and everything arrives.
    c.ticks(5);
    assert_eq!(
        c.raft(n(2)).log().last_index(),
        c.raft(n(1)).log().last_index()
    );
}

#[test]
fn replication_a_follower_at_its_in_flight_limit_gets_nothing_but_empty_heartbeats() {
    // Flow control: the answers of nodes 2, 4 and 5 are lost, so their windows stay
    // full after two appends, and nothing commits. Node 3 keeps answering, which makes
    // the leader flush again; node 2 must get nothing from those flushes, and the
    // heartbeat it then gets carries no entries (only the commit index and the round).
    let mut c = Cluster::new_with(5, window_of_two);
    c.elect(n(1));
    c.ticks(1);
    for id in [2, 4, 5] {
        c.blocked.insert((n(id), n(1)));
    }
    let appends_to_2 = |c: &Cluster| -> Vec<usize> {
        c.delivered
            .iter()
            .filter_map(|(from, to, m)| match m {
                Message::AppendEntries(a) if (*from, *to) == (n(1), n(2)) => Some(a.entries.len()),
                _ => None,
            })
            .collect()
    };
    let before = appends_to_2(&c).len();
    for i in 0..5 {
        c.raft_mut(n(1))
            .propose(Bytes::from(format!("c{i}").as_str()))
            .expect("leader");
        c.settle();
    }
    assert_eq!(
        c.raft(n(3)).log().last_index(),
        c.raft(n(1)).log().last_index()
    );
    assert_eq!(
        appends_to_2(&c)[before..],
        [1, 1],
        "the window, then nothing"
    );
    c.tick(n(1));
    assert_eq!(
        appends_to_2(&c)[before..],
        [1, 1, 0],
        "the heartbeat carries no entries"
    );
}

#[test]
fn replication_acknowledged_bytes_reopen_the_byte_window() {
    // The in-flight limit in bytes counts only appends not yet acknowledged: each
    // acknowledgement gives its bytes back, so a steady trickle of small commands
    // keeps flowing however many bytes it adds up to.
    let mut c = Cluster::new_with(3, |c| {
        c.max_inflight_bytes = 10;
        c.max_entries_per_append = 1;
    });
    c.elect(n(1));
    c.ticks(1);
    for i in 0..10 {
        c.propose(n(1), &format!("c{i:03}"));
        for id in [n(2), n(3)] {
            assert_eq!(
                c.raft(id).log().last_index(),
                c.raft(n(1)).log().last_index(),
                "command {i} reached node {id} without waiting for a heartbeat"
            );
        }
    }
}

#[test]
fn replication_stale_rejections_change_nothing() {
    // Answers arrive late and twice: a rejection of an append the leader has since
    // moved past must not reset the follower's progress.
    use raft_core::ProgressState::{Probe, Replicate};
    let (mut c, term, last, matched) = node_2_misses_four_commands();
    let (last, matched) = (last.0, matched.0);
    assert!(matched + 4 <= last);
    let reject = |rejected: u64, follower_last: u64| {
        let hint = ConflictHint::LastIndex(LogIndex(follower_last));
        conflict(term, LogIndex(rejected), hint)
    };
    let progress = |c: &Cluster| {
        let p = c.raft(n(1)).progress(n(2)).expect("progress");
        (p.state, p.next_index.0)
    };
    // Replicating: a rejection at or below what node 2 is known to hold is stale.
    c.step(n(2), n(1), reject(matched, matched));
    assert_eq!(progress(&c), (Replicate, last + 1));
    // A fresh rejection starts probing after node 2's last entry.
    c.step(n(2), n(1), reject(last, matched));
    assert_eq!(progress(&c), (Probe, matched + 1));
    // Probing: a rejection of anything but the current probe is stale.
    c.step(n(2), n(1), reject(last - 1, last - 2));
    assert_eq!(progress(&c), (Probe, matched + 1));
}

#[test]
fn replication_a_lost_probe_is_resent_with_entries_at_the_next_heartbeat() {
    // Probing sends one append at a time and waits; when that append is lost, the
    // next heartbeat allows another probe, carrying entries, rather than only an empty
    // append that would cost one more round trip.
    let (mut c, term, last, matched) = node_2_misses_four_commands();
    // Node 2 rejects, and the probe that follows is lost.
    c.step(
        n(2),
        n(1),
        conflict(term, last, ConflictHint::LastIndex(matched)),
    );
    c.settle();
    c.heal();
    let before = c.delivered.len();
    c.tick(n(1));
    let first_to_2 = c.delivered[before..]
        .iter()
        .find_map(|(from, to, m)| match m {
            Message::AppendEntries(a) if (*from, *to) == (n(1), n(2)) => Some(a.entries.len()),
            _ => None,
        });
    assert!(first_to_2.is_some_and(|len| len > 0), "{first_to_2:?}");
    assert_eq!(c.raft(n(2)).log().last_index(), last);
}

#[test]
fn replication_an_append_stops_before_max_append_bytes() {
    // Appends carry up to `max_append_bytes` of payload (and at least one entry): with
    // 16 bytes and 8-byte commands, two commands per append, not one and not all five.
    let mut c = Cluster::new_with(3, |c| c.max_append_bytes = 16);
    c.elect(n(1));
    c.ticks(1);
    for i in 0..5 {
        c.raft_mut(n(1))
            .propose(Bytes::from(format!("command{i}").as_str()))
            .expect("leader");
    }
    c.process(n(1));
    let sizes: Vec<usize> = c
        .take_in_flight()
        .into_iter()
        .filter_map(|(_, to, m)| match m {
            Message::AppendEntries(a) if to == n(2) => Some(a.entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes[0], 2, "{sizes:?}");
}

#[test]
fn replication_lost_append_is_detected_and_resent() {
    // Raft "retries AppendEntries RPCs indefinitely": a dropped append in the pipelined
    // state is noticed at the next heartbeat (the follower rejects) and resent.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.ticks(1);
    c.raft_mut(n(1))
        .propose(Bytes::from("lost"))
        .expect("leader");
    let kept: Vec<_> = c
        .take_in_flight()
        .into_iter()
        .filter(|(_, to, _)| *to != n(2))
        .collect();
    for (f, t, m) in kept {
        c.inject(f, t, m);
    }
    c.settle();
    c.raft_mut(n(1))
        .propose(Bytes::from("after"))
        .expect("leader");
    c.settle();
    c.ticks(3);
    assert_eq!(c.applied_commands(n(2)), vec!["lost", "after"]);
}

/// The kinds of the actions, for order checks: `P<entries>[T]` for a persist (`T`:
/// it truncates), `A<match>` for an append answer, `-` for anything else.
fn shape(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Persist(p) => format!(
                "P{}{}",
                p.entries.len(),
                if p.truncate_from.is_some() { "T" } else { "" }
            ),
            Action::Send {
                message:
                    Message::AppendResponse(AppendResponse {
                        result: AppendResult::Success { match_index },
                        ..
                    }),
                ..
            } => format!("A{}", match_index.0),
            _ => "-".into(),
        })
        .collect()
}

#[test]
fn replication_a_follower_writes_the_appends_received_between_polls_with_one_sync() {
    // Group commit on the follower (dissertation §10.2.1): appends that arrive while
    // the driver is busy share one durable write; each answer still follows the write
    // that holds what it acknowledges.
    let mut c = Cluster::with_logs(&[vec![], vec![1], vec![]], |_| {});
    let f = c.raft_mut(n(2));
    f.step(n(1), append(1, (1, 1), &[(1, 2)], 0));
    f.step(n(1), append(1, (1, 2), &[(1, 3), (1, 4)], 0));
    f.step(n(1), append(1, (1, 4), &[(1, 5)], 0));
    assert_eq!(shape(&drain(f)), vec!["P4", "A2", "A4", "A5"]);
}

#[test]
fn paper_5_3_an_answer_never_follows_the_truncation_of_what_it_acknowledges() {
    // "If an existing entry conflicts with a new one, delete the existing entry and all
    // that follow it": a truncating write must not be merged before an answer that
    // acknowledges the entries it deletes (that answer must be carried out first).
    let mut c = Cluster::with_logs(&[vec![], vec![1], vec![]], |_| {});
    let f = c.raft_mut(n(2));
    f.step(n(1), append(1, (1, 1), &[(1, 2), (1, 3)], 0));
    f.step(n(3), append(2, (1, 1), &[(2, 2)], 0));
    let actions = drain(f);
    let s = shape(&actions);
    assert_eq!(s.first().map(String::as_str), Some("P2"), "{s:?}");
    assert_eq!(s.get(1).map(String::as_str), Some("A3"), "{s:?}");
    assert!(
        s.iter().skip(2).any(|a| a == "P1T"),
        "the truncating write comes after the answer: {s:?}"
    );
    assert_eq!(terms(&c, n(2)), vec![1, 2]);
}

#[test]
fn a_leader_refuses_proposals_beyond_its_uncommitted_bytes_then_accepts_again() {
    // Back-pressure (etcd's MaxUncommittedEntriesSize): while followers cannot commit,
    // the leader stops appending at `max_uncommitted_bytes` instead of growing its log.
    let mut c = Cluster::new_with(3, |cfg| cfg.max_uncommitted_bytes = 1000);
    c.elect(n(1));
    c.isolate(n(2));
    c.isolate(n(3));
    let command = "x".repeat(300);
    let mut accepted = 0;
    let refused = loop {
        match c.raft_mut(n(1)).propose(command.as_str().into()) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 10, "never refused");
    };
    assert_eq!(accepted, 3, "300-byte commands: 3 fit under 1000 bytes");
    assert!(
        matches!(
            refused,
            ProposeError::Busy {
                uncommitted_bytes: 900
            }
        ),
        "{refused:?}"
    );
    c.heal();
    c.ticks(2);
    c.settle();
    assert!(
        c.raft_mut(n(1)).propose(command.as_str().into()).is_ok(),
        "committed: room again"
    );
    // A command larger than the limit is accepted when nothing is uncommitted.
    c.settle();
    c.ticks(2);
    assert!(
        c.raft_mut(n(1))
            .propose("y".repeat(5000).as_str().into())
            .is_ok()
    );
}

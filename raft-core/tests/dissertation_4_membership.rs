//! Dissertation chapter 4 (cluster membership changes), one server at a time, with
//! learners.

mod support;

use raft_core::{ConfChange, Config, MembershipError, NotLeader, Role};
use raft_proto::{
    AppendEntries, Bytes, Entry, EntryPayload, LogId, LogIndex, Membership, Message, NodeRecord,
    VoteRequest,
};
use support::{Cluster, drain, n, sends};

fn no_tune(_: &mut Config) {}

/// Node `id`'s record: where the others reach it.
fn record(id: u64) -> NodeRecord {
    NodeRecord::new(format!("10.0.0.{id}:7000"))
}

/// A 3-node cluster led by node 1, with node 4 started but not yet a member.
fn with_spare_node() -> Cluster {
    let mut c = Cluster::new(3);
    c.add_node(n(4), no_tune);
    c.elect(n(1));
    c
}

fn change(c: &mut Cluster, change: ConfChange) -> Result<LogId, MembershipError> {
    let r = c.raft_mut(n(1)).change_membership(change);
    c.settle();
    r
}

#[test]
fn dissertation_4_2_1_a_learner_gets_the_log_but_never_votes_nor_counts() {
    // §4.2.1: new servers join as non-voting members; "the leader replicates log entries
    // to them, but they are not yet counted towards majorities".
    let mut c = with_spare_node();
    change(&mut c, ConfChange::AddLearner(n(4), record(4))).expect("added");
    c.propose(n(1), "x");
    c.ticks(2);
    assert_eq!(
        c.applied_commands(n(4)),
        vec!["x"],
        "the learner receives the log"
    );
    // Not counted: with both voters away, leader + learner commit nothing.
    c.isolate(n(2));
    c.isolate(n(3));
    let id = c.raft_mut(n(1)).propose(Bytes::from("y")).expect("leader");
    c.ticks(3);
    assert_eq!(
        c.raft(n(4)).log().last_log_id(),
        id,
        "the learner stores it"
    );
    assert!(
        c.raft(n(1)).log().committed() < id.index,
        "but it does not count"
    );
    // Its vote is never counted: node 2, isolated with only the learner, cannot win
    // whatever the learner answers, and the learner never campaigns itself.
    c.heal();
    c.isolate(n(1));
    c.isolate(n(3));
    c.cut(n(4), n(1));
    c.blocked.remove(&(n(2), n(4)));
    c.blocked.remove(&(n(4), n(2)));
    for _ in 0..100 {
        c.tick(n(2));
        c.tick(n(4));
    }
    assert_ne!(
        c.role(n(2)),
        Role::Leader,
        "a learner's vote made a majority"
    );
    c.isolate(n(4));
    for _ in 0..100 {
        c.tick(n(4));
    }
    assert_eq!(c.role(n(4)), Role::Follower);
}

#[test]
fn dissertation_4_2_1_a_learner_is_promoted_only_once_caught_up() {
    let mut c = Cluster::new_with(3, |cfg| cfg.promote_lag_entries = 2);
    c.add_node(n(4), |cfg| cfg.promote_lag_entries = 2);
    c.elect(n(1));
    change(&mut c, ConfChange::AddLearner(n(4), record(4))).expect("added");
    c.isolate(n(4));
    for i in 0..5 {
        c.propose(n(1), &format!("c{i}"));
    }
    let err = c
        .raft_mut(n(1))
        .change_membership(ConfChange::Promote(n(4)));
    assert!(
        matches!(err, Err(MembershipError::LearnerBehind { lag, max: 2, .. }) if lag >= 5),
        "{err:?}"
    );
    c.heal();
    c.ticks(3);
    change(&mut c, ConfChange::Promote(n(4))).expect("caught up now");
    assert!(c.raft(n(1)).membership().is_voter(n(4)));
    // Now it counts: with nodes 2 and 3 away, nodes 1 and 4 are 2 of 4 (no majority),
    // but with node 3 back, 1 + 3 + 4 commit.
    c.isolate(n(2));
    let id = c.raft_mut(n(1)).propose(Bytes::from("z")).expect("leader");
    c.ticks(3);
    assert_eq!(c.raft(n(1)).log().committed(), id.index);
}

#[test]
fn dissertation_4_2_1_a_learner_exactly_at_the_lag_limit_is_promoted() {
    // "Caught up" means at most `promote_lag_entries` behind, the limit included: with
    // a limit of 0, a learner holding every entry is promoted.
    let mut c = Cluster::new_with(3, |cfg| cfg.promote_lag_entries = 0);
    c.add_node(n(4), |cfg| cfg.promote_lag_entries = 0);
    c.elect(n(1));
    change(&mut c, ConfChange::AddLearner(n(4), record(4))).expect("added");
    c.ticks(3);
    assert_eq!(
        c.raft(n(4)).log().last_index(),
        c.raft(n(1)).log().last_index()
    );
    change(&mut c, ConfChange::Promote(n(4))).expect("nothing behind");
    assert!(c.raft(n(1)).membership().is_voter(n(4)));
}

#[test]
fn dissertation_4_1_a_configuration_takes_effect_when_appended() {
    // §4.1: "a server always uses the latest configuration in its log, regardless of
    // whether the entry is committed."
    let mut c = with_spare_node();
    c.isolate(n(2));
    c.isolate(n(3));
    let id = c
        .raft_mut(n(1))
        .change_membership(ConfChange::AddLearner(n(4), record(4)))
        .expect("appended");
    assert!(
        c.raft(n(1)).membership().learners.contains(&n(4)),
        "in effect on the leader at once"
    );
    assert!(
        c.raft(n(1)).progress(n(4)).is_some(),
        "and the leader replicates to it"
    );
    c.heal();
    c.isolate(n(3));
    // Deliver only the leader's appends to node 2, so it stores the entry uncommitted.
    let msgs = c.take_in_flight();
    for (f, t, m) in msgs {
        c.inject(f, t, m);
    }
    c.tick(n(1));
    assert!(c.raft(n(2)).log().last_index() >= id.index);
    assert!(
        c.raft(n(2)).membership().learners.contains(&n(4)),
        "in effect on a follower once stored"
    );
}

#[test]
fn dissertation_4_1_an_uncommitted_configuration_is_rolled_back_with_its_entry() {
    // The flip side of "takes effect when appended": a follower that loses the entry to
    // a truncation goes back to the configuration before it.
    let mut c = with_spare_node();
    let term = c.term(n(1));
    let last = c.raft(n(1)).log().last_log_id();
    let learner = Membership {
        voters: [n(1), n(2), n(3)].into(),
        learners: [n(4)].into(),
        nodes: [(n(4), record(4))].into(),
    };
    c.raft_mut(n(2)).step(
        n(1),
        Message::AppendEntries(AppendEntries {
            term,
            prev_log_id: last,
            entries: vec![Entry {
                log_id: LogId::new(term, last.index.next()),
                payload: EntryPayload::Membership(learner),
            }],
            leader_commit: last.index,
            round: 0,
        }),
    );
    assert!(c.raft(n(2)).membership().learners.contains(&n(4)));
    let next = term.next();
    c.raft_mut(n(2)).step(
        n(3),
        Message::AppendEntries(AppendEntries {
            term: next,
            prev_log_id: last,
            entries: vec![Entry {
                log_id: LogId::new(next, last.index.next()),
                payload: EntryPayload::Blank,
            }],
            leader_commit: last.index,
            round: 0,
        }),
    );
    assert!(
        !c.raft(n(2)).membership().contains(n(4)),
        "rolled back with the truncated entry"
    );
}

#[test]
fn dissertation_4_1_one_change_at_a_time() {
    // §4.1: "a leader does not begin a new configuration change until the previous
    // one has been committed".
    let mut c = with_spare_node();
    c.isolate(n(2));
    c.isolate(n(3));
    let pending = c
        .raft_mut(n(1))
        .change_membership(ConfChange::AddLearner(n(4), record(4)))
        .expect("first");
    assert_eq!(
        c.raft_mut(n(1)).change_membership(ConfChange::Remove(n(3))),
        Err(MembershipError::InProgress { pending })
    );
    c.heal();
    c.ticks(2);
    change(&mut c, ConfChange::Remove(n(3))).expect("the first one committed");
}

#[test]
fn dissertation_4_1_a_new_leader_first_commits_an_entry_of_its_term() {
    // The errata to §4.1: a leader must commit an entry in its term before changing
    // the configuration, or two single-server changes from different terms could
    // produce disjoint majorities.
    let mut c = with_spare_node();
    c.isolate(n(1));
    // Node 3's lease on node 1 must expire before it votes: tick both, bounded.
    // Appends are dropped, so the winner cannot commit its blank entry yet.
    let mut leader = None;
    for _ in 0..200 {
        c.raft_mut(n(2)).tick();
        c.raft_mut(n(3)).tick();
        c.settle_without_appends();
        leader = [n(2), n(3)]
            .into_iter()
            .find(|&id| c.role(id) == Role::Leader);
        if leader.is_some() {
            break;
        }
    }
    let leader = leader.expect("node 2 or 3 wins");
    assert_eq!(
        c.raft_mut(leader)
            .change_membership(ConfChange::AddLearner(n(4), record(4))),
        Err(MembershipError::LeaderNotReady)
    );
    c.tick(leader);
    assert!(
        c.raft_mut(leader)
            .change_membership(ConfChange::AddLearner(n(4), record(4)))
            .is_ok()
    );
}

#[test]
fn dissertation_4_2_2_a_removed_leader_steps_down_once_the_change_commits() {
    // §4.2.2: the leader "steps down once the Cnew entry is committed"; until then it
    // manages the cluster without counting itself.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.isolate(n(3));
    let id = c
        .raft_mut(n(1))
        .change_membership(ConfChange::Remove(n(1)))
        .expect("appended");
    assert_eq!(
        c.role(n(1)),
        Role::Leader,
        "still leading until the change commits"
    );
    c.process_all();
    let (from, to, m) = c
        .take_in_flight()
        .into_iter()
        .find(|(_, to, _)| *to == n(2))
        .expect("append to 2");
    c.step(from, to, m);
    c.settle();
    // Voters are now {2, 3}: node 2 alone is not a majority, so the entry is pending.
    assert!(c.raft(n(1)).log().committed() < id.index);
    assert_eq!(c.role(n(1)), Role::Leader);
    c.heal();
    c.ticks(3);
    assert_ne!(c.role(n(1)), Role::Leader, "stepped down after the commit");
    let leader = c.leader().expect("a successor took over");
    assert!(leader == n(2) || leader == n(3));
    assert!(!c.raft(leader).membership().contains(n(1)));
    c.propose(leader, "after");
    // The removed node never campaigns again.
    c.isolate(n(1));
    for _ in 0..60 {
        c.tick(n(1));
    }
    assert_eq!(c.role(n(1)), Role::Follower);
}

#[test]
fn dissertation_4_2_2_an_earlier_commit_does_not_end_a_removed_leaders_term_early() {
    // §4.2.2: the removed leader steps down once the Cnew entry is committed, not when
    // an entry before it commits while Cnew is still pending.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let x = c.raft_mut(n(1)).propose(Bytes::from("x")).expect("leader");
    c.process(n(1));
    let cnew = c
        .raft_mut(n(1))
        .change_membership(ConfChange::Remove(n(1)))
        .expect("appended");
    assert_eq!((x.index, cnew.index), (LogIndex(2), LogIndex(3)));
    // The followers get "x" (index 2) but nothing at or after index 3 for now.
    c.drop_if = Some(|_, _, m| {
        matches!(m, Message::AppendEntries(a)
            if a.prev_log_id.index >= LogIndex(3) || a.entries.iter().any(|e| e.log_id.index >= LogIndex(3)))
    });
    c.settle();
    assert_eq!(c.raft(n(1)).log().committed(), x.index);
    assert_eq!(c.role(n(1)), Role::Leader, "Cnew is not committed yet");
    c.drop_if = None;
    c.ticks(2);
    assert!(c.raft(n(1)).log().committed() >= cnew.index);
    assert_ne!(
        c.role(n(1)),
        Role::Leader,
        "Cnew committed: it stepped down"
    );
}

#[test]
fn dissertation_4_1_removing_a_follower_shrinks_the_quorum() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    change(&mut c, ConfChange::Remove(n(3))).expect("removed");
    c.isolate(n(3));
    let id = c.propose(n(1), "two of two");
    assert_eq!(c.raft(n(1)).log().committed(), id.index);
    assert!(
        c.raft(n(1)).progress(n(3)).is_none(),
        "no longer replicated to"
    );
}

#[test]
fn dissertation_4_1_invalid_changes_are_refused_with_a_reason() {
    let mut c = with_spare_node();
    let r = |c: &mut Cluster, ch| c.raft_mut(n(1)).change_membership(ch);
    assert_eq!(
        r(&mut c, ConfChange::AddLearner(n(2), record(2))),
        Err(MembershipError::AlreadyMember(n(2)))
    );
    assert_eq!(
        r(&mut c, ConfChange::Remove(n(9))),
        Err(MembershipError::NotAMember(n(9)))
    );
    assert_eq!(
        r(&mut c, ConfChange::Promote(n(9))),
        Err(MembershipError::NotALearner(n(9)))
    );
    assert_eq!(
        r(&mut c, ConfChange::Promote(n(2))),
        Err(MembershipError::AlreadyMember(n(2)))
    );
    assert_eq!(
        c.raft_mut(n(2))
            .change_membership(ConfChange::AddLearner(n(4), record(4))),
        Err(MembershipError::NotLeader(NotLeader {
            leader_hint: Some(n(1))
        }))
    );
    let mut solo = Cluster::new(1);
    solo.elect(n(1));
    assert_eq!(
        solo.raft_mut(n(1))
            .change_membership(ConfChange::Remove(n(1))),
        Err(MembershipError::LastVoter(n(1)))
    );
}

#[test]
fn dissertation_4_2_1_a_new_node_catches_up_by_snapshot_then_leads() {
    let tune = |c: &mut Config| {
        c.snapshot_entries = 5;
        c.snapshot_keep_entries = 1;
        c.snapshot_chunk_bytes = 32;
    };
    let mut c = Cluster::new_with(3, tune);
    c.add_node(n(4), tune);
    c.elect(n(1));
    for i in 0..20 {
        c.propose(n(1), &format!("c{i}"));
    }
    assert!(c.raft(n(1)).log().first_index() > LogIndex(1), "compacted");
    change(&mut c, ConfChange::AddLearner(n(4), record(4))).expect("added");
    c.ticks(5);
    assert!(
        c.node(n(4)).snapshots_installed >= 1,
        "caught up by snapshot"
    );
    assert_eq!(c.node(n(4)).state, c.node(n(1)).state);
    change(&mut c, ConfChange::Promote(n(4))).expect("promoted");
    c.raft_mut(n(1)).transfer_leader(n(4)).expect("transfer");
    c.ticks(3);
    assert_eq!(c.leader(), Some(n(4)));
    assert!(c.raft(n(4)).membership().is_voter(n(4)));
}

#[test]
fn dissertation_4_1_servers_vote_without_consulting_their_own_configuration() {
    // §4.1: "servers process incoming RPC requests without consulting their current
    // configurations." Node 2 holds an uncommitted entry removing itself; a candidate
    // whose configuration still counts node 2 needs its vote, and only a new leader
    // can truncate that entry, so refusing would deadlock the cluster (found by
    // raft-sim, seed 8054).
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let term = c.term(n(1));
    let last = c.raft(n(1)).log().last_log_id();
    let without_2 = Membership::voters([n(1), n(3)]);
    c.raft_mut(n(2)).step(
        n(1),
        Message::AppendEntries(AppendEntries {
            term,
            prev_log_id: last,
            entries: vec![Entry {
                log_id: LogId::new(term, last.index.next()),
                payload: EntryPayload::Membership(without_2),
            }],
            leader_commit: last.index,
            round: 0,
        }),
    );
    drain(c.raft_mut(n(2)));
    assert!(!c.raft(n(2)).membership().is_voter(n(2)));
    // The leader is gone: node 2's lease on it runs out (not a voter, it never
    // campaigns itself).
    for _ in 0..30 {
        c.raft_mut(n(2)).tick();
    }
    assert!(drain(c.raft_mut(n(2))).is_empty());
    // Node 3 campaigns in a later term with a log that ends where node 2's does.
    c.raft_mut(n(2)).step(
        n(3),
        Message::VoteRequest(VoteRequest {
            term: term.next(),
            last_log_id: LogId::new(term, last.index.next()),
            pre_vote: false,
            transfer: false,
        }),
    );
    let answer = sends(&drain(c.raft_mut(n(2))));
    assert!(
        matches!(&answer[0].1, Message::VoteResponse(r) if r.granted),
        "{answer:?}"
    );
}

#[test]
fn dissertation_4_a_members_record_travels_with_its_configuration_and_leaves_with_it() {
    // A node's record (its address) is part of the configuration that adds it, so
    // every node learns it from the log (with the configuration, as soon as the entry
    // is appended); a SetNode change replaces it; removing the node removes it.
    let mut c = with_spare_node();
    change(&mut c, ConfChange::AddLearner(n(4), record(4))).expect("added");
    for id in c.ids() {
        assert_eq!(
            c.raft(id).membership().node(n(4)),
            Some(&record(4)),
            "node {id}"
        );
    }
    let moved = NodeRecord::new("10.0.1.4:7000");
    change(&mut c, ConfChange::SetNode(n(4), moved.clone())).expect("moved");
    for id in c.ids() {
        assert_eq!(
            c.raft(id).membership().node(n(4)),
            Some(&moved),
            "node {id}"
        );
        assert!(c.raft(id).membership().is_voter(n(1)), "node {id}");
    }
    assert_eq!(
        change(&mut c, ConfChange::SetNode(n(9), record(9))),
        Err(MembershipError::NotAMember(n(9)))
    );
    change(&mut c, ConfChange::Remove(n(4))).expect("removed");
    for id in c.ids().into_iter().filter(|&id| id != n(4)) {
        assert_eq!(c.raft(id).membership().node(n(4)), None, "node {id}");
    }
}

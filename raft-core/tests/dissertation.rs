//! Dissertation §3.10 (leadership transfer), §4.2.3 (disruptive servers), §6.2 (routing
//! requests to the leader, CheckQuorum), §6.4 (ReadIndex) and §9.6 (PreVote).

mod support;

use raft_core::{NotLeader, ProposeError, ReadError, Role, TransferError};
use raft_proto::{
    Bytes, LogId, LogIndex, Message, ReadId, Term, TimeoutNow, VoteRequest, VoteResponse,
};
use support::{Cluster, drain, n, sends};

#[test]
fn dissertation_9_6_pre_vote_does_not_increment_the_term() {
    // "In the PreVote algorithm, a candidate only increments its term if it first learns
    // from a majority of the cluster that they would be willing to grant the candidate
    // their votes."
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let term = c.term(n(3));
    c.isolate(n(3));
    c.ticks(100);
    assert_eq!(c.term(n(3)), term, "an isolated node never wins a pre-vote");
    assert_eq!(c.role(n(3)), Role::PreCandidate);
}

#[test]
fn dissertation_9_6_a_rejoining_node_does_not_disrupt_the_leader() {
    // §9.6: a server rejoining after a partition must not force the leader to step down.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let term = c.term(n(1));
    c.isolate(n(3));
    c.ticks(100);
    c.heal();
    c.ticks(30);
    assert_eq!(c.leader(), Some(n(1)));
    for id in c.ids() {
        assert_eq!(c.term(id), term, "node {id}");
    }
}

#[test]
fn dissertation_9_6_without_pre_vote_a_rejoining_node_forces_an_election() {
    // The problem PreVote solves: the partitioned server's term grows, and when it
    // returns its higher term makes the leader step down.
    let mut c = Cluster::new_with(3, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    c.elect(n(1));
    let term = c.term(n(1));
    c.isolate(n(3));
    c.ticks(100);
    assert!(c.term(n(3)) > term.next());
    c.heal();
    c.ticks(60);
    assert!(c.term(n(1)) > term, "the old leader was deposed");
}

#[test]
fn dissertation_9_6_pre_vote_is_refused_to_a_stale_log() {
    // A pre-vote is granted only when the candidate's log is up to date (§5.4.1) and the
    // voter has not heard from a leader within the election timeout.
    let mut c = Cluster::with_logs(&[vec![1, 1], vec![1, 1], vec![1]], |_| {});
    c.raft_mut(n(1)).step(
        n(3),
        Message::VoteRequest(VoteRequest {
            term: Term(2),
            last_log_id: LogId::new(Term(1), LogIndex(1)),
            pre_vote: true,
            transfer: false,
        }),
    );
    let out = sends(&drain(c.raft_mut(n(1))));
    assert!(matches!(&out[0].1, Message::VoteResponse(r) if r.pre_vote && !r.granted));
    assert_eq!(c.term(n(1)), Term(1), "a pre-vote changes no state");
    assert_eq!(c.raft(n(1)).status().voted_for, None);
}

#[test]
fn dissertation_9_6_pre_vote_for_the_voters_own_term_needs_a_vote_it_could_give() {
    // A pre-vote asks whether the voter "would be willing to grant the candidate" its
    // vote. For a later term it promises nothing and may always be granted; for the
    // voter's current term it may not, once the voter has voted for someone else or
    // follows a leader in that term: the real vote would be refused.
    let pre_vote = |term, last_log_id| {
        Message::VoteRequest(VoteRequest {
            term: Term(term),
            last_log_id,
            pre_vote: true,
            transfer: false,
        })
    };
    let answers = |c: &mut Cluster, id| -> Vec<(u64, bool)> {
        sends(&drain(c.raft_mut(id)))
            .into_iter()
            .filter_map(|(to, m)| match m {
                Message::VoteResponse(r) if r.pre_vote => Some((to.0, r.granted)),
                _ => None,
            })
            .collect()
    };
    // Node 3 voted for node 1 in term 1.
    let mut c = Cluster::new(3);
    c.raft_mut(n(3)).step(
        n(1),
        Message::VoteRequest(VoteRequest {
            term: Term(1),
            last_log_id: LogId::ZERO,
            pre_vote: false,
            transfer: false,
        }),
    );
    drain(c.raft_mut(n(3)));
    c.raft_mut(n(3)).step(n(2), pre_vote(1, LogId::ZERO));
    c.raft_mut(n(3)).step(n(1), pre_vote(1, LogId::ZERO));
    assert_eq!(
        answers(&mut c, n(3)),
        vec![(2, false), (1, true)],
        "only the candidate it voted for gets a pre-vote for term 1"
    );
    // Node 3 follows node 1, leader of the current term; node 2's log is as long.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let term = c.term(n(3));
    let last = c.raft(n(2)).log().last_log_id();
    assert_eq!(last, c.raft(n(3)).log().last_log_id());
    c.raft_mut(n(3)).step(n(2), pre_vote(term.0, last));
    assert_eq!(answers(&mut c, n(3)), vec![(2, false)]);
    assert_eq!(c.term(n(3)), term);
}

#[test]
fn dissertation_9_6_a_pre_candidate_counts_only_pre_vote_answers() {
    // The pre-vote round is tallied from pre-vote answers alone: refusals of a real
    // vote in the same term (late answers to an earlier election) are not refusals of
    // the pre-vote, and do not end the round.
    let mut c = Cluster::new(3);
    for _ in 0..100 {
        c.raft_mut(n(1)).tick();
        if c.role(n(1)) != Role::Follower {
            break;
        }
    }
    assert_eq!(c.role(n(1)), Role::PreCandidate);
    let term = c.term(n(1));
    for from in [n(2), n(3)] {
        c.raft_mut(n(1)).step(
            from,
            Message::VoteResponse(VoteResponse {
                term,
                granted: false,
                pre_vote: false,
            }),
        );
    }
    assert_eq!(c.role(n(1)), Role::PreCandidate);
    assert_eq!(c.term(n(1)), term);
}

#[test]
fn dissertation_6_2_check_quorum_isolated_leader_steps_down() {
    // §6.2: "a leader steps down if an election timeout elapses without a successful
    // round of heartbeats to a majority of its cluster."
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.isolate(n(1));
    c.ticks(21);
    assert_eq!(c.role(n(1)), Role::Follower);
}

#[test]
fn dissertation_6_2_check_quorum_leader_with_a_quorum_stays() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.isolate(n(3));
    c.ticks(100);
    assert_eq!(c.role(n(1)), Role::Leader);
}

#[test]
fn dissertation_6_2_check_quorum_counts_any_message_from_a_follower() {
    // §6.2 asks for "a successful round of heartbeats"; under load a follower's append
    // answers can be late while other messages from it get through. Any message of the
    // term shows the follower is alive: here followers' append answers are all lost,
    // but they keep forwarding reads, and the leader stays.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let term = c.term(n(1));
    c.drop_if = Some(|_, to, m| to == n(1) && matches!(m, Message::AppendResponse(_)));
    for round in 0..10 {
        for f in [2, 3] {
            c.raft_mut(n(f))
                .read_index(ReadId(round * 10 + f))
                .expect("follows a leader");
        }
        c.ticks(3);
    }
    assert_eq!(
        (c.role(n(1)), c.term(n(1))),
        (Role::Leader, term),
        "the forwarded reads kept it leading, without an election"
    );
    c.isolate(n(2));
    c.isolate(n(3));
    c.ticks(25);
    assert_ne!(c.role(n(1)), Role::Leader, "silence still deposes it");
}

#[test]
fn dissertation_4_2_3_votes_are_ignored_while_a_leader_is_heard() {
    // §4.2.3: "if a server receives a RequestVote request within the minimum election
    // timeout of hearing from a current leader, it does not update its term or grant
    // its vote."
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let term = c.term(n(2));
    c.raft_mut(n(2)).step(
        n(3),
        Message::VoteRequest(VoteRequest {
            term: term.next(),
            last_log_id: LogId::new(Term(99), LogIndex(99)),
            pre_vote: false,
            transfer: false,
        }),
    );
    assert!(drain(c.raft_mut(n(2))).is_empty(), "no answer, no write");
    assert_eq!(c.term(n(2)), term);
}

#[test]
fn dissertation_6_2_non_leaders_answer_with_a_leader_hint() {
    // §6.2: "If a client contacts a follower, the follower rejects the request and
    // supplies information about the most recent leader it has heard from."
    let mut c = Cluster::new(3);
    assert_eq!(
        c.raft_mut(n(2)).propose(Bytes::from("x")),
        Err(ProposeError::NotLeader(NotLeader { leader_hint: None }))
    );
    assert_eq!(
        c.raft_mut(n(2)).read_index(ReadId(1)),
        Err(ReadError::NotLeader(NotLeader { leader_hint: None }))
    );
    c.elect(n(1));
    assert_eq!(
        c.raft_mut(n(2)).propose(Bytes::from("x")),
        Err(ProposeError::NotLeader(NotLeader {
            leader_hint: Some(n(1))
        }))
    );
    assert_eq!(
        c.raft_mut(n(2)).transfer_leader(n(3)),
        Err(TransferError::NotLeader(NotLeader {
            leader_hint: Some(n(1))
        }))
    );
}

#[test]
fn dissertation_6_4_read_index_needs_a_quorum_round() {
    // §6.4 step 3: "The leader needs to make sure it hasn't been superseded ... it issues
    // a new round of heartbeats and waits for their acknowledgments from a majority."
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.raft_mut(n(1)).read_index(ReadId(7)).expect("leader");
    c.process(n(1));
    assert!(
        c.node(n(1)).reads_ready.is_empty(),
        "not before the heartbeat round"
    );
    let heartbeats = c.take_in_flight();
    assert_eq!(heartbeats.len(), 2, "one heartbeat per follower");
    // One follower's acknowledgement plus the leader itself is a majority of three.
    for (from, to, m) in heartbeats.into_iter().filter(|(_, to, _)| *to == n(2)) {
        c.inject(from, to, m);
    }
    c.settle();
    let commit = c.raft(n(1)).log().committed();
    assert_eq!(c.node(n(1)).reads_ready, vec![(ReadId(7), commit)]);
}

#[test]
fn dissertation_6_4_a_read_waits_for_the_state_machine_to_apply_its_index() {
    // §6.4 step 4: "The leader waits for its state machine to advance at least as far
    // as the readIndex." Committed is not enough: the shipped driver applies on its
    // own task, behind the core, so a read released at commit (or when the entries
    // are handed out for applying) would serve a state without the write.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.nodes.get_mut(&n(1)).expect("leader").slow_applies = true;
    let write = c.propose(n(1), "x=1");
    c.settle();
    assert!(
        c.raft(n(1)).log().committed() >= write.index,
        "the write is committed"
    );
    assert!(c.applied_commands(n(1)).is_empty(), "but not applied yet");
    c.raft_mut(n(1)).read_index(ReadId(7)).expect("leader");
    c.settle();
    assert!(
        c.node(n(1)).reads_ready.is_empty(),
        "the read must wait for the apply, whatever the commit index says"
    );
    c.finish_applies(n(1));
    c.settle();
    let seen = &c.node(n(1)).reads_seen;
    assert_eq!(seen.len(), 1, "released once the state machine caught up");
    let (id, index, applied_then) = seen[0];
    assert_eq!(id, ReadId(7));
    assert!(index >= write.index);
    assert_eq!(applied_then, 1, "the read saw the write");
}

#[test]
fn dissertation_6_4_reads_in_one_round_share_one_heartbeat() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    for id in 1..=10 {
        c.raft_mut(n(1)).read_index(ReadId(id)).expect("leader");
    }
    assert_eq!(
        c.take_in_flight().len(),
        2,
        "ten reads, one heartbeat per follower"
    );
}

#[test]
fn dissertation_6_4_read_waits_for_the_leaders_first_commit() {
    // §6.4 step 1: "If the leader has not yet marked an entry from its current term
    // committed, it waits until it has done so."
    let mut c = Cluster::new(3);
    for _ in 0..100 {
        if c.role(n(1)) == Role::Leader {
            break;
        }
        c.raft_mut(n(1)).tick();
        c.settle_without_appends();
    }
    assert_eq!(c.role(n(1)), Role::Leader, "node 1 won an election");
    assert!(c.raft(n(1)).log().committed() < c.raft(n(1)).log().last_index());
    c.raft_mut(n(1)).read_index(ReadId(1)).expect("leader");
    c.process(n(1));
    assert!(c.node(n(1)).reads_ready.is_empty());
    c.tick(n(1)); // the heartbeat re-sends the blank entry the followers missed
    let blank = c.raft(n(1)).log().last_index();
    assert_eq!(c.node(n(1)).reads_ready, vec![(ReadId(1), blank)]);
}

#[test]
fn dissertation_6_4_follower_read_waits_until_it_has_applied_the_read_index() {
    // §6.4.1: a follower asks the leader for the read index, then "waits until its state
    // machine has advanced at least as far as the readIndex".
    let mut c = Cluster::new(3);
    c.elect(n(1));
    // Node 2 misses every empty append (commit notices and heartbeat rounds), so it
    // stores "x" but does not learn that it is committed.
    c.drop_if = Some(|_, to, m| {
        to == n(2) && matches!(m, Message::AppendEntries(a) if a.entries.is_empty())
    });
    c.propose(n(1), "x");
    let index = c.raft(n(1)).log().committed();
    assert_eq!(c.raft(n(2)).log().last_index(), index);
    assert!(c.raft(n(2)).log().applied() < index);
    c.raft_mut(n(2))
        .read_index(ReadId(5))
        .expect("a leader is known");
    // The leader's heartbeat round for the read is lost on the way to node 2 too, so
    // node 2 learns the read index before it learns that index is committed.
    c.settle();
    assert!(
        c.node(n(2)).reads_ready.is_empty(),
        "read index {index:?} known but not yet applied"
    );
    c.drop_if = None;
    c.ticks(1);
    assert_eq!(c.node(n(2)).reads_ready, vec![(ReadId(5), index)]);
    assert_eq!(c.applied_commands(n(2)), vec!["x"]);
}

#[test]
fn dissertation_6_4_isolated_leader_cannot_serve_a_read() {
    // A deposed leader must not answer reads: without a quorum round, a newer leader
    // may have committed writes it does not know.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.isolate(n(1));
    c.raft_mut(n(1))
        .read_index(ReadId(9))
        .expect("still believes it leads");
    c.ticks(25);
    assert!(c.node(n(1)).reads_ready.is_empty());
    assert_eq!(
        c.node(n(1)).reads_failed,
        vec![(
            ReadId(9),
            ReadError::NotLeader(NotLeader { leader_hint: None })
        )]
    );
}

#[test]
fn dissertation_3_10_transfer_to_an_up_to_date_follower() {
    // §3.10: "The prior leader sends a TimeoutNow request to the target server ... the
    // target server will start a new election", and wins it.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let term = c.term(n(1));
    c.raft_mut(n(1)).transfer_leader(n(2)).expect("leader");
    c.settle();
    assert_eq!(c.leader(), Some(n(2)));
    assert_eq!(c.term(n(2)), term.next());
    assert_eq!(c.role(n(1)), Role::Follower);
}

#[test]
fn dissertation_3_10_transfer_bypasses_the_leader_lease() {
    // The transfer's election carries a flag, so voters that just heard from the old
    // leader still take part (§4.2.3 makes this exception).
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.ticks(1);
    c.raft_mut(n(1)).transfer_leader(n(3)).expect("leader");
    c.settle();
    assert_eq!(c.leader(), Some(n(3)));
}

#[test]
fn dissertation_3_10_transfer_first_catches_the_target_up() {
    // "The prior leader ... sends it entries until its log matches."
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.isolate(n(3));
    for i in 0..5 {
        c.propose(n(1), &format!("c{i}"));
    }
    c.heal();
    c.raft_mut(n(1)).transfer_leader(n(3)).expect("leader");
    c.process(n(1));
    assert!(
        !c.in_flight
            .iter()
            .any(|(_, _, m)| matches!(m, Message::TimeoutNow(_))),
        "no TimeoutNow before the target is caught up"
    );
    c.ticks(3);
    assert_eq!(c.leader(), Some(n(3)));
    c.ticks(2);
    assert_eq!(c.applied_commands(n(3)), vec!["c0", "c1", "c2", "c3", "c4"]);
}

#[test]
fn dissertation_3_10_proposals_pause_during_a_transfer() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.isolate(n(3));
    c.propose(n(1), "behind");
    c.raft_mut(n(1)).transfer_leader(n(3)).expect("leader");
    assert_eq!(
        c.raft_mut(n(1)).propose(Bytes::from("x")),
        Err(ProposeError::TransferInProgress { to: n(3) })
    );
}

#[test]
fn dissertation_3_10_transfer_is_abandoned_after_an_election_timeout() {
    // "If the transfer does not complete within about an election timeout, the prior
    // leader aborts the transfer and resumes accepting client requests."
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.isolate(n(3));
    c.propose(n(1), "behind");
    c.raft_mut(n(1)).transfer_leader(n(3)).expect("leader");
    c.ticks(10);
    assert_eq!(c.leader(), Some(n(1)));
    assert!(c.raft_mut(n(1)).propose(Bytes::from("x")).is_ok());
}

#[test]
fn dissertation_3_10_only_the_leader_can_send_timeout_now() {
    // §3.10: the prior *leader* sends TimeoutNow. From anyone else (a confused or
    // stale peer) it must not make a follower skip PreVote and the leader lease and
    // depose the live leader.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let term = c.term(n(2));
    c.step(n(3), n(2), Message::TimeoutNow(TimeoutNow { term }));
    assert_eq!(c.role(n(2)), Role::Follower);
    assert_eq!(c.term(n(2)), term);
    assert_eq!(c.leader(), Some(n(1)));
}

#[test]
fn dissertation_3_10_transfer_target_must_vote() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    assert_eq!(
        c.raft_mut(n(1)).transfer_leader(n(9)),
        Err(TransferError::NotAVoter(n(9)))
    );
}

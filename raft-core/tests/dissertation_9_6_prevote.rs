//! Dissertation §9.6, "Preventing disruptions when a server rejoins the cluster": in
//! the PreVote phase "a candidate only increments its term if it first learns from a
//! majority of the cluster that they would be willing to grant the candidate their
//! votes". A pre-vote promises nothing: granting one must change nothing on the voter
//! (its term, its vote, its role), or the voters of a pre-vote round that never wins
//! carry a higher term back to the cluster and depose its leader, the disruption
//! PreVote exists to prevent.

mod support;

use raft_core::Role;
use raft_proto::{Message, VoteRequest};
use support::{Cluster, drain, n, sends};

#[test]
fn dissertation_9_6_granting_a_pre_vote_changes_no_state() {
    let mut c = Cluster::new(3);
    let before = (c.raft(n(1)).hard_state(), c.role(n(1)));
    let last_log_id = c.raft(n(3)).log().last_log_id();
    let term = c.term(n(3)).next();
    c.raft_mut(n(1)).step(
        n(3),
        Message::VoteRequest(VoteRequest {
            term,
            last_log_id,
            pre_vote: true,
            transfer: false,
        }),
    );
    let out = sends(&drain(c.raft_mut(n(1))));
    assert!(
        matches!(&out[..], [(to, Message::VoteResponse(r))] if *to == n(3) && r.pre_vote && r.granted),
        "the pre-vote is granted: {out:?}"
    );
    let after = (c.raft(n(1)).hard_state(), c.role(n(1)));
    assert_eq!(after, before, "a granted pre-vote changes no state");
}

#[test]
fn dissertation_9_6_a_minority_that_grants_itself_pre_votes_does_not_depose_the_leader() {
    // Nodes 4 and 5 lose the leader and grant each other's pre-votes, but two of five
    // never win the round: their terms must not move, and when the partition heals
    // the leader keeps its term.
    let mut c = Cluster::new(5);
    c.elect(n(1));
    let term = c.term(n(1));
    for a in [1, 2, 3] {
        for b in [4, 5] {
            c.cut(n(a), n(b));
        }
    }
    c.ticks(100);
    for id in [4, 5] {
        assert_eq!(c.role(n(id)), Role::PreCandidate, "node {id}");
        assert_eq!(
            c.term(n(id)),
            term,
            "node {id}: its pre-votes moved no term"
        );
    }
    c.heal();
    c.ticks(30);
    assert_eq!(c.leader(), Some(n(1)), "the leader was not deposed");
    for id in c.ids() {
        assert_eq!(c.term(id), term, "node {id}");
    }
}

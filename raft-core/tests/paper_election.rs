//! Paper §5.1, §5.2 and §5.4.1: terms, roles and leader election.

mod support;

use raft_core::{Action, Role};
use raft_proto::{
    AppendEntries, AppendResponse, AppendResult, Bytes, HardState, InstallSnapshot, LogId,
    LogIndex, Membership, Message, SnapshotMeta, Term, VoteRequest, VoteResponse,
};
use support::{Cluster, drain, n, sends};

fn no_pre_vote(c: &mut raft_core::Config) {
    c.pre_vote = false;
}

fn vote_request(term: u64, last_term: u64, last_index: u64) -> Message {
    Message::VoteRequest(VoteRequest {
        term: Term(term),
        last_log_id: LogId::new(Term(last_term), LogIndex(last_index)),
        pre_vote: false,
        transfer: false,
    })
}

fn heartbeat(term: u64) -> Message {
    Message::AppendEntries(AppendEntries {
        term: Term(term),
        prev_log_id: LogId::ZERO,
        entries: vec![],
        leader_commit: LogIndex(0),
        round: 0,
    })
}

/// Ticks one node until it leaves the follower role, carrying out only its own actions.
fn tick_until_campaign(c: &mut Cluster, id: raft_proto::NodeId) -> u32 {
    for t in 1..=100 {
        c.raft_mut(id).tick();
        if c.role(id) != Role::Follower {
            return t;
        }
    }
    panic!("node {id} never campaigned");
}

#[test]
fn paper_5_1_servers_start_as_followers() {
    // "When servers start up, they begin as followers."
    let c = Cluster::new(3);
    for id in c.ids() {
        assert_eq!(c.role(id), Role::Follower);
        assert_eq!(c.term(id), Term(0));
        assert_eq!(c.raft(id).status().leader, None);
    }
}

#[test]
fn paper_5_1_follower_adopts_a_larger_term() {
    // "If one server's current term is smaller than the other's, then it updates its
    // current term to the larger value."
    let mut c = Cluster::new(3);
    c.raft_mut(n(2)).step(n(1), heartbeat(5));
    let actions = drain(c.raft_mut(n(2)));
    assert_eq!(c.term(n(2)), Term(5));
    assert_eq!(c.raft(n(2)).status().leader, Some(n(1)));
    // The new term is persisted before the answer goes out.
    assert!(
        matches!(&actions[0], Action::Persist(p) if p.hard_state == Some(HardState { term: Term(5), voted_for: None }))
    );
    assert!(
        matches!(&actions[1], Action::Send { message: Message::AppendResponse(r), .. } if r.term == Term(5))
    );
}

#[test]
fn paper_5_1_candidate_reverts_to_follower_on_a_larger_term() {
    // "If a candidate or leader discovers that its term is out of date, it immediately
    // reverts to follower state."
    let mut c = Cluster::new_with(3, no_pre_vote);
    tick_until_campaign(&mut c, n(1));
    assert_eq!(c.role(n(1)), Role::Candidate);
    c.step(n(2), n(1), heartbeat(7));
    assert_eq!(c.role(n(1)), Role::Follower);
    assert_eq!(c.term(n(1)), Term(7));
}

#[test]
fn paper_5_1_leader_reverts_to_follower_on_a_larger_term() {
    // "If a candidate or leader discovers that its term is out of date, it immediately
    // reverts to follower state."
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let term = c.term(n(1));
    c.step(
        n(2),
        n(1),
        Message::AppendResponse(AppendResponse {
            term: term.next(),
            round: 0,
            result: AppendResult::Success {
                match_index: LogIndex(0),
            },
        }),
    );
    assert_eq!(c.role(n(1)), Role::Follower);
    assert_eq!(c.term(n(1)), term.next());
}

#[test]
fn paper_5_1_request_with_stale_term_is_rejected() {
    // "If a server receives a request with a stale term number, it rejects the request."
    let mut c = Cluster::with_logs(&[vec![1, 3], vec![], vec![]], |_| {});
    c.raft_mut(n(1)).step(n(2), vote_request(2, 9, 9));
    c.raft_mut(n(1)).step(n(3), heartbeat(1));
    let out = sends(&drain(c.raft_mut(n(1))));
    assert_eq!(c.term(n(1)), Term(3));
    assert_eq!(c.raft(n(1)).status().voted_for, None);
    assert!(
        matches!(&out[0], (to, Message::VoteResponse(VoteResponse { term: Term(3), granted: false, .. })) if *to == n(2))
    );
    assert!(
        matches!(&out[1], (to, Message::AppendResponse(AppendResponse { term: Term(3), .. })) if *to == n(3))
    );
    assert_eq!(
        c.raft(n(1)).log().last_index(),
        LogIndex(2),
        "the stale append changed nothing"
    );
}

#[test]
fn paper_5_2_follower_campaigns_after_election_timeout() {
    // "If a follower receives no communication over a period of time called the election
    // timeout, then it ... begins an election": "a follower increments its current term
    // and transitions to candidate state. It then votes for itself and issues
    // RequestVote RPCs in parallel to each of the other servers."
    let mut c = Cluster::new_with(3, no_pre_vote);
    tick_until_campaign(&mut c, n(1));
    let actions = drain(c.raft_mut(n(1)));
    assert_eq!(c.role(n(1)), Role::Candidate);
    assert_eq!(c.term(n(1)), Term(1));
    assert!(
        matches!(&actions[0], Action::Persist(p) if p.hard_state == Some(HardState { term: Term(1), voted_for: Some(n(1)) }))
    );
    let mut to: Vec<_> = sends(&actions)
        .into_iter()
        .map(|(to, m)| {
            assert!(matches!(
                m,
                Message::VoteRequest(VoteRequest {
                    term: Term(1),
                    pre_vote: false,
                    ..
                })
            ));
            to
        })
        .collect();
    to.sort();
    assert_eq!(to, vec![n(2), n(3)]);
}

#[test]
fn paper_5_2_election_timeouts_are_randomized() {
    // "Raft uses randomized election timeouts ... chosen randomly from a fixed interval."
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..40u64 {
        let mut c = Cluster::new_with(3, |cfg| {
            cfg.pre_vote = false;
            cfg.rng_seed = seed;
        });
        let t = tick_until_campaign(&mut c, n(1));
        assert!(
            (10..20).contains(&t),
            "timeout {t} outside [election_ticks, 2 * election_ticks)"
        );
        seen.insert(t);
    }
    assert!(seen.len() >= 5, "timeouts are not spread: {seen:?}");
}

/// A chunk of a snapshot at index 100 that node 1 sends in `term`.
fn snapshot_chunk(term: u64, offset: u64) -> Message {
    Message::InstallSnapshot(InstallSnapshot {
        term: Term(term),
        meta: SnapshotMeta {
            last_log_id: LogId::new(Term(term), LogIndex(100)),
            membership: Membership::voters([n(1), n(2), n(3)]),
            id: 9,
        },
        offset,
        data: Bytes::from("abcd"),
        done: false,
    })
}

#[test]
fn paper_5_2_a_follower_draws_its_timeout_when_it_starts_following_not_per_message() {
    // The randomized timeout is drawn when a server starts following a leader (or
    // starts an election), as in raft-rs and etcd raft. Appends and snapshot chunks
    // reset the election timer but draw nothing: how long a follower waits once its
    // leader falls silent does not depend on how many messages it heard before.
    let wait_after = |count: u64, message: fn(u64, u64) -> Message| {
        let mut c = Cluster::new(3);
        c.elect(n(1));
        let term = c.term(n(1)).0;
        for k in 0..count {
            c.raft_mut(n(2)).step(n(1), message(term, k));
            drain(c.raft_mut(n(2)));
        }
        tick_until_campaign(&mut c, n(2))
    };
    let counts = [1, 2, 5, 13];
    let after_appends: Vec<u32> = counts
        .iter()
        .map(|&k| wait_after(k, |term, _| heartbeat(term)))
        .collect();
    let after_chunks: Vec<u32> = counts
        .iter()
        .map(|&k| wait_after(k, |term, k| snapshot_chunk(term, 4 * k)))
        .collect();
    assert!(
        after_appends
            .iter()
            .chain(&after_chunks)
            .all(|&w| w == after_appends[0]),
        "ticks to campaign after 1, 2, 5 and 13 appends: {after_appends:?}, chunks: {after_chunks:?}"
    );
}

#[test]
fn paper_5_2_candidate_with_a_majority_becomes_leader() {
    // "A candidate wins an election if it receives votes from a majority of the servers
    // in the full cluster for the same term."
    let mut c = Cluster::new_with(5, no_pre_vote);
    c.isolate(n(4));
    c.isolate(n(5));
    c.elect(n(1));
    assert_eq!(c.role(n(1)), Role::Leader);
    assert_eq!(c.term(n(1)), Term(1));
    for id in [n(2), n(3)] {
        assert_eq!(c.raft(id).status().leader, Some(n(1)));
    }
}

#[test]
fn paper_5_2_candidate_without_a_majority_starts_a_new_election() {
    // "If many followers become candidates at the same time ... each candidate will time
    // out and start a new election by incrementing its term."
    let mut c = Cluster::new_with(5, no_pre_vote);
    for id in [n(3), n(4), n(5)] {
        c.isolate(id);
    }
    tick_until_campaign(&mut c, n(1));
    c.settle();
    assert_eq!(
        c.role(n(1)),
        Role::Candidate,
        "2 of 5 votes is not a majority"
    );
    assert_eq!(c.term(n(1)), Term(1));
    tick_until_campaign_again(&mut c);
    assert_eq!(c.role(n(1)), Role::Candidate);
    assert_eq!(c.term(n(1)), Term(2));
}

fn tick_until_campaign_again(c: &mut Cluster) {
    let before = c.term(n(1));
    for _ in 0..40 {
        c.tick(n(1));
        if c.term(n(1)) > before {
            return;
        }
    }
    panic!("no new election");
}

#[test]
fn paper_5_2_at_most_one_vote_per_term_first_come_first_served() {
    // "Each server will vote for at most one candidate in a given term, on a
    // first-come-first-served basis."
    let mut c = Cluster::new(3);
    c.raft_mut(n(3)).step(n(1), vote_request(1, 0, 0));
    c.raft_mut(n(3)).step(n(2), vote_request(1, 0, 0));
    c.raft_mut(n(3)).step(n(1), vote_request(1, 0, 0));
    let granted: Vec<_> = sends(&drain(c.raft_mut(n(3))))
        .into_iter()
        .map(|(to, m)| match m {
            Message::VoteResponse(r) => (to, r.granted),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(granted, vec![(n(1), true), (n(2), false), (n(1), true)]);
    assert_eq!(c.raft(n(3)).status().voted_for, Some(n(1)));
}

#[test]
fn paper_5_2_vote_is_persisted_before_it_is_granted() {
    // Figure 2: currentTerm and votedFor are "updated on stable storage before
    // responding to RPCs".
    let mut c = Cluster::new(3);
    c.raft_mut(n(2)).step(n(1), vote_request(1, 0, 0));
    let actions = drain(c.raft_mut(n(2)));
    let persist = actions.iter().position(
        |a| matches!(a, Action::Persist(p) if p.hard_state.and_then(|h| h.voted_for) == Some(n(1))),
    );
    let grant = actions.iter().position(
        |a| matches!(a, Action::Send { message: Message::VoteResponse(r), .. } if r.granted),
    );
    assert!(persist.expect("vote persisted") < grant.expect("vote granted"));
}

#[test]
fn paper_5_2_candidate_steps_down_for_a_leader_of_its_term() {
    // "If the leader's term ... is at least as large as the candidate's current term,
    // then the candidate recognizes the leader as legitimate and returns to follower
    // state."
    let mut c = Cluster::new_with(3, no_pre_vote);
    tick_until_campaign(&mut c, n(1));
    let term = c.term(n(1));
    c.step(n(2), n(1), heartbeat(term.0));
    assert_eq!(c.role(n(1)), Role::Follower);
    assert_eq!(c.raft(n(1)).status().leader, Some(n(2)));
    assert_eq!(c.term(n(1)), term);
}

#[test]
fn paper_5_2_heartbeats_keep_followers_from_campaigning() {
    // "Leaders send periodic heartbeats ... to all followers in order to maintain their
    // authority."
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let term = c.term(n(1));
    c.ticks(200);
    assert_eq!(c.leader(), Some(n(1)));
    for id in c.ids() {
        assert_eq!(c.term(id), term, "no election happened");
    }
}

#[test]
fn paper_5_2_split_vote_is_resolved_by_a_later_election() {
    // "Votes could be split so that no candidate obtains a majority ... Raft uses
    // randomized election timeouts to ensure that split votes are rare and that they
    // are resolved quickly."
    let mut c = Cluster::new_with(4, no_pre_vote);
    tick_until_campaign(&mut c, n(1));
    tick_until_campaign(&mut c, n(2));
    // Node 3 hears node 1 first, node 4 hears node 2 first.
    let mut msgs = c.take_in_flight();
    msgs.sort_by_key(|(from, to, _)| match (from.0, to.0) {
        (1, 3) | (2, 4) => 0,
        _ => 1,
    });
    for (from, to, m) in msgs {
        c.inject(from, to, m);
    }
    c.settle();
    assert_eq!(c.leader(), None, "the vote is split 2-2");
    for _ in 0..100 {
        c.tick_all();
        if c.leader().is_some() {
            break;
        }
    }
    let leader = c.leader().expect("a later election resolves the split");
    assert!(c.term(leader) >= Term(2));
}

#[test]
fn paper_5_4_1_vote_denied_to_a_candidate_with_an_older_last_term() {
    // "If the logs have last entries with different terms, then the log with the later
    // term is more up-to-date."
    let mut c = Cluster::with_logs(&[vec![], vec![1, 1, 2], vec![]], |_| {});
    c.raft_mut(n(2)).step(n(1), vote_request(3, 1, 5));
    let out = sends(&drain(c.raft_mut(n(2))));
    assert!(matches!(&out[0].1, Message::VoteResponse(r) if !r.granted));
}

#[test]
fn paper_5_4_1_vote_denied_to_a_candidate_with_a_shorter_log() {
    // "If the logs end with the same term, then whichever log is longer is more
    // up-to-date."
    let mut c = Cluster::with_logs(&[vec![], vec![1, 1, 2, 2], vec![]], |_| {});
    c.raft_mut(n(2)).step(n(1), vote_request(3, 2, 3));
    c.raft_mut(n(2)).step(n(3), vote_request(3, 2, 4));
    let out = sends(&drain(c.raft_mut(n(2))));
    let answers: Vec<_> = out
        .iter()
        .filter_map(|(to, m)| match m {
            Message::VoteResponse(r) => Some((*to, r.granted)),
            _ => None,
        })
        .collect();
    assert_eq!(answers, vec![(n(1), false), (n(3), true)]);
}

#[test]
fn paper_5_4_1_candidate_with_a_stale_log_cannot_win() {
    // "A candidate must contact a majority of the cluster in order to be elected, which
    // means that every committed entry must be present in at least one of those servers."
    let mut c = Cluster::with_logs(&[vec![1, 2], vec![1, 2], vec![1]], no_pre_vote);
    for _ in 0..3 {
        tick_until_campaign(&mut c, n(3));
        c.settle();
        assert_ne!(c.role(n(3)), Role::Leader);
    }
    c.elect(n(1));
    assert_eq!(c.leader(), Some(n(1)));
}

#[test]
fn paper_5_2_a_rejected_candidate_does_not_hold_back_other_timers() {
    // Figure 2: a follower converts to candidate "if election timeout elapses without
    // receiving AppendEntries RPC from current leader or granting vote to candidate".
    // A vote request that is *rejected* (stale log) must not restart the timer, even
    // though its newer term is adopted; otherwise a stale node that keeps timing out
    // first would keep every up-to-date node from ever campaigning (found by raft-sim,
    // seed 149: PreVote off, the stale node's clock 40% fast).
    let mut c = Cluster::with_logs(&[vec![1, 1], vec![1, 1], vec![1]], no_pre_vote);
    tick_until_campaign(&mut c, n(3));
    let elapsed_before = 5;
    for _ in 0..elapsed_before {
        c.raft_mut(n(1)).tick();
    }
    c.settle();
    assert_eq!(c.term(n(1)), c.term(n(3)), "node 1 adopted the newer term");
    assert_eq!(
        c.raft(n(1)).status().voted_for,
        None,
        "but refused the vote"
    );
    // Node 1 campaigns within its original timeout window: the request did not reset it.
    let mut ticks = elapsed_before;
    while c.role(n(1)) == Role::Follower {
        c.raft_mut(n(1)).tick();
        ticks += 1;
        assert!(
            ticks < 20,
            "node 1's timer was reset by a rejected vote request"
        );
    }
}

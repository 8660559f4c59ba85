//! Dissertation §6.4.1, "Using clocks to reduce messaging for read-only queries": "the
//! leader would use the normal heartbeat mechanism to maintain a lease. Once the
//! leader's heartbeats were acknowledged by a majority of the cluster, it would extend
//! its lease to start + election timeout / clock drift bound, since the followers
//! shouldn't time out before then." (`ReadMode::LeaseBased`.)

mod support;

use raft_core::{Config, ConfigError, ReadMode, Role};
use raft_proto::{Message, ReadId};
use support::{Cluster, n};

fn lease(c: &mut Config) {
    c.read_mode = ReadMode::LeaseBased {
        clock_drift_ticks: 3,
    };
}

/// Node 1 has just been elected.
fn elected() -> Cluster {
    let mut c = Cluster::new_with(3, lease);
    // With leases, a node that just started ignores elections for an election
    // timeout (it may have acknowledged a lease before a crash): let that pass.
    for id in [2, 3] {
        c.isolate(n(id));
        for _ in 0..10 {
            c.tick(n(id));
        }
    }
    c.heal();
    c.elect(n(1));
    c
}

/// Node 1 leads, and a heartbeat round has been acknowledged by a quorum.
fn leading() -> Cluster {
    let mut c = elected();
    c.propose(n(1), "x");
    c.ticks(1);
    c.settle();
    c
}

fn rounds_sent(c: &Cluster) -> usize {
    c.in_flight
        .iter()
        .filter(|(from, _, m)| *from == n(1) && matches!(m, Message::AppendEntries(_)))
        .count()
}

#[test]
fn dissertation_6_4_1_a_leader_in_its_lease_serves_a_read_without_a_round() {
    let mut c = leading();
    c.raft_mut(n(1)).read_index(ReadId(1)).expect("leader");
    c.process(n(1));
    assert_eq!(
        c.node(n(1))
            .reads_ready
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        vec![ReadId(1)],
        "served at once"
    );
    assert_eq!(rounds_sent(&c), 0, "no heartbeat round for it");
}

#[test]
fn dissertation_6_4_1_the_lease_ends_when_no_quorum_acknowledges_in_time() {
    // election 10 ticks - drift 3: 7 ticks after the last acknowledged round.
    let mut c = leading();
    c.isolate(n(2));
    c.isolate(n(3));
    for _ in 0..8 {
        c.tick(n(1));
    }
    c.raft_mut(n(1))
        .read_index(ReadId(2))
        .expect("still leader");
    c.process(n(1));
    assert!(
        c.node(n(1)).reads_ready.is_empty(),
        "past its lease, the leader must confirm with a quorum"
    );
    assert_eq!(c.role(n(1)), Role::Leader);
}

#[test]
fn dissertation_6_4_1_a_leadership_transfer_ends_the_lease() {
    // TimeoutNow lets its target's election bypass the voters' lease (§3.10).
    let mut c = leading();
    c.isolate(n(2));
    c.raft_mut(n(1)).transfer_leader(n(3)).expect("leader");
    c.process(n(1));
    c.raft_mut(n(1)).read_index(ReadId(3)).expect("leader");
    c.process(n(1));
    assert!(
        c.node(n(1)).reads_ready.is_empty(),
        "no lease during a transfer"
    );
}

#[test]
fn dissertation_6_4_1_a_clock_that_skipped_ends_the_lease() {
    let mut c = leading();
    c.raft_mut(n(1)).time_skipped();
    c.raft_mut(n(1)).read_index(ReadId(4)).expect("leader");
    c.process(n(1));
    assert!(
        c.node(n(1)).reads_ready.is_empty(),
        "rounds sent before the skip grant no lease"
    );
    // A new round acknowledged after the skip renews it.
    c.settle();
    c.ticks(1);
    c.settle();
    c.raft_mut(n(1)).read_index(ReadId(5)).expect("leader");
    c.process(n(1));
    assert!(c.node(n(1)).reads_ready.iter().any(|r| r.0 == ReadId(5)));
}

#[test]
fn dissertation_6_4_1_a_restarted_voter_ignores_elections_for_an_election_timeout() {
    // Before it crashed, a voter may have acknowledged the round a leader's lease
    // rests on; after a restart it must not help elect another leader before that
    // lease can have ended.
    let mut c = leading();
    c.restart(n(2));
    let term = c.term(n(2));
    let request = Message::VoteRequest(raft_proto::VoteRequest {
        term: term.next(),
        last_log_id: c.raft(n(1)).log().last_log_id(),
        pre_vote: false,
        transfer: false,
    });
    c.raft_mut(n(2)).step(n(3), request.clone());
    assert_eq!(c.term(n(2)), term, "the vote request is ignored");
    c.isolate(n(2));
    for _ in 0..10 {
        c.tick(n(2));
    }
    c.raft_mut(n(2)).step(n(3), request);
    assert_eq!(
        c.term(n(2)),
        term.next(),
        "after an election timeout it votes"
    );
}

#[test]
fn lease_reads_need_check_quorum_and_a_drift_margin() {
    let mut c = Config::new(n(1));
    lease(&mut c);
    c.check_quorum = false;
    assert_eq!(c.validate(), Err(ConfigError::LeaseWithoutCheckQuorum));
    c.check_quorum = true;
    for bad in [0, 1, 10, 11] {
        c.read_mode = ReadMode::LeaseBased {
            clock_drift_ticks: bad,
        };
        assert!(
            matches!(c.validate(), Err(ConfigError::LeaseDriftTooLarge { .. })),
            "drift {bad}"
        );
    }
}

#[test]
fn dissertation_6_4_1_a_timeout_now_sent_voids_the_lease_for_the_rest_of_the_term() {
    // The transfer is abandoned, but its TimeoutNow may still arrive late and start an
    // election that bypasses the voters' lease: no lease reads in this term anymore.
    let mut c = leading();
    c.drop_if = Some(|_, _, m| matches!(m, Message::TimeoutNow(_)));
    c.raft_mut(n(1)).transfer_leader(n(3)).expect("leader");
    c.settle();
    for _ in 0..12 {
        c.tick_all();
        c.settle();
    }
    assert_eq!(c.role(n(1)), Role::Leader, "the transfer was abandoned");
    c.raft_mut(n(1)).read_index(ReadId(6)).expect("leader");
    c.process(n(1));
    assert!(
        c.node(n(1)).reads_ready.iter().all(|r| r.0 != ReadId(6)),
        "not served from a lease"
    );
    c.settle();
    assert!(
        c.node(n(1)).reads_ready.iter().any(|r| r.0 == ReadId(6)),
        "served after a round"
    );
}

#[test]
fn dissertation_6_4_1_the_lease_lasts_exactly_election_timeout_minus_drift() {
    // "start + election timeout / clock drift bound": the lease runs from when the
    // acknowledged round was *sent*, for election 10 - drift 3 = 7 of the leader's
    // ticks, and not one tick more.
    let mut c = leading();
    // Void the old lease, then renew it with a round opened now, at tick t.
    c.raft_mut(n(1)).time_skipped();
    c.raft_mut(n(1)).read_index(ReadId(100)).expect("leader");
    c.settle();
    assert!(c.node(n(1)).reads_ready.iter().any(|r| r.0 == ReadId(100)));
    c.isolate(n(2));
    c.isolate(n(3));
    let mut served = Vec::new();
    for k in 1..=8 {
        c.tick(n(1));
        let id = ReadId(100 + k);
        c.raft_mut(n(1)).read_index(id).expect("still leader");
        c.process(n(1));
        if c.node(n(1)).reads_ready.iter().any(|r| r.0 == id) {
            served.push(k);
        }
    }
    assert_eq!(
        served,
        vec![1, 2, 3, 4, 5, 6],
        "ticks t+1..t+6 are in the lease"
    );
    assert_eq!(c.role(n(1)), Role::Leader);
}

#[test]
fn dissertation_6_4_1_a_round_sent_at_the_start_of_the_term_grants_a_full_lease() {
    // A read right after the election opens a round at the leader's tick 0; once a
    // quorum acknowledges it, the lease runs its full 7 ticks from then, while the
    // heartbeat rounds after it go unanswered.
    let mut c = elected();
    c.raft_mut(n(1)).read_index(ReadId(200)).expect("leader");
    c.settle();
    assert!(c.node(n(1)).reads_ready.iter().any(|r| r.0 == ReadId(200)));
    c.isolate(n(2));
    c.isolate(n(3));
    for k in 1..=6 {
        c.tick(n(1));
        let id = ReadId(200 + k);
        c.raft_mut(n(1)).read_index(id).expect("still leader");
        c.process(n(1));
        assert!(
            c.node(n(1)).reads_ready.iter().any(|r| r.0 == id),
            "tick {k} is within the lease"
        );
    }
}

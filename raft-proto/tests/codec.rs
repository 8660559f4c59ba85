//! Property tests of the frame codec: every message round-trips, and no byte string
//! makes the decoder panic.

use proptest::prelude::*;
use raft_proto::*;

fn node() -> impl Strategy<Value = NodeId> {
    (0u64..10).prop_map(NodeId)
}

fn term() -> impl Strategy<Value = Term> {
    prop_oneof![Just(0u64), any::<u64>(), 0u64..100].prop_map(Term)
}

fn index() -> impl Strategy<Value = LogIndex> {
    prop_oneof![Just(0u64), any::<u64>(), 0u64..1000].prop_map(LogIndex)
}

fn log_id() -> impl Strategy<Value = LogId> {
    (term(), index()).prop_map(|(t, i)| LogId::new(t, i))
}

fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn membership() -> impl Strategy<Value = Membership> {
    (
        proptest::collection::btree_set(node(), 0..7),
        proptest::collection::btree_set(node(), 0..3),
        proptest::collection::btree_map(
            node(),
            (0u32..70000).prop_map(|p| format!("10.0.0.1:{p}")),
            0..4,
        ),
    )
        .prop_map(|(voters, learners, nodes)| Membership {
            voters,
            learners,
            nodes: nodes
                .into_iter()
                .map(|(id, address)| (id, NodeRecord { address }))
                .collect(),
        })
}

fn entry() -> impl Strategy<Value = Entry> {
    let payload = prop_oneof![
        Just(EntryPayload::Blank),
        bytes().prop_map(EntryPayload::Command),
        membership().prop_map(EntryPayload::Membership),
    ];
    (log_id(), payload).prop_map(|(log_id, payload)| Entry { log_id, payload })
}

fn hint() -> impl Strategy<Value = ConflictHint> {
    prop_oneof![
        (term(), index()).prop_map(|(term, first_index)| ConflictHint::Term { term, first_index }),
        index().prop_map(ConflictHint::LastIndex),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (term(), log_id(), any::<bool>(), any::<bool>()).prop_map(
            |(term, last_log_id, pre_vote, transfer)| {
                Message::VoteRequest(VoteRequest {
                    term,
                    last_log_id,
                    pre_vote,
                    transfer,
                })
            }
        ),
        (term(), any::<bool>(), any::<bool>()).prop_map(|(term, granted, pre_vote)| {
            Message::VoteResponse(VoteResponse {
                term,
                granted,
                pre_vote,
            })
        }),
        (
            term(),
            log_id(),
            proptest::collection::vec(entry(), 0..5),
            index(),
            any::<u64>()
        )
            .prop_map(|(term, prev_log_id, entries, leader_commit, round)| {
                Message::AppendEntries(AppendEntries {
                    term,
                    prev_log_id,
                    entries,
                    leader_commit,
                    round,
                })
            }),
        (term(), any::<u64>(), index(), prop::option::of(hint())).prop_map(
            |(term, round, i, h)| {
                let result = match h {
                    None => AppendResult::Success { match_index: i },
                    Some(hint) => AppendResult::Conflict { rejected: i, hint },
                };
                Message::AppendResponse(AppendResponse {
                    term,
                    round,
                    result,
                })
            }
        ),
        (
            term(),
            log_id(),
            membership(),
            any::<u64>(),
            bytes(),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(|(term, last_log_id, membership, offset, data, done, id)| {
                Message::InstallSnapshot(InstallSnapshot {
                    term,
                    meta: SnapshotMeta {
                        last_log_id,
                        membership,
                        id,
                    },
                    offset,
                    data,
                    done,
                })
            }),
        (term(), log_id(), any::<u64>(), any::<bool>(), any::<u64>()).prop_map(
            |(term, snapshot, n, installed, snapshot_id)| {
                let outcome = if installed {
                    SnapshotOutcome::Installed {
                        last_index: LogIndex(n),
                    }
                } else {
                    SnapshotOutcome::Received { next_offset: n }
                };
                Message::InstallSnapshotResponse(InstallSnapshotResponse {
                    term,
                    snapshot_id,
                    snapshot,
                    outcome,
                })
            }
        ),
        term().prop_map(|term| Message::TimeoutNow(TimeoutNow { term })),
        (term(), index()).prop_map(|(term, min_index)| {
            Message::SnapshotRequest(SnapshotRequest { term, min_index })
        }),
        any::<u64>().prop_map(|id| Message::ReadIndexRequest(ReadIndexRequest { id: ReadId(id) })),
        (
            any::<u64>(),
            index(),
            prop::option::of(prop::option::of(node()))
        )
            .prop_map(|(id, index, nl)| {
                let result = match nl {
                    None => ReadIndexResult::Ready { index },
                    Some(leader_hint) => ReadIndexResult::NotLeader { leader_hint },
                };
                Message::ReadIndexResponse(ReadIndexResponse {
                    id: ReadId(id),
                    result,
                })
            }),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (node(), node(), message()).prop_map(|(from, to, message)| Envelope { from, to, message })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_round_trips(env in envelope()) {
        let frame = env.encode().expect("encodable");
        prop_assert_eq!(frame[0], FORMAT_VERSION);
        prop_assert_eq!(Envelope::decode(&frame).expect("decodable"), env);
    }

    #[test]
    fn entries_and_hard_state_round_trip(e in entry(), t in term(), v in prop::option::of(node())) {
        prop_assert_eq!(decode_frame::<Entry>(&encode_frame(&e).expect("encodable")).expect("decodable"), e);
        let hs = HardState { term: t, voted_for: v };
        prop_assert_eq!(decode_frame::<HardState>(&encode_frame(&hs).expect("encodable")).expect("decodable"), hs);
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes);
        let mut versioned = vec![FORMAT_VERSION];
        versioned.extend_from_slice(&bytes);
        let _ = Envelope::decode(&versioned);
    }

    #[test]
    fn a_corrupted_frame_is_an_error_or_another_valid_message(env in envelope(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut frame = env.encode().expect("encodable");
        let i = pos.index(frame.len());
        frame[i] = byte;
        // Either a typed error or some message: never a panic, never a huge allocation.
        let _ = Envelope::decode(&frame);
    }

    #[test]
    fn every_truncation_is_an_error(env in envelope()) {
        let frame = env.encode().expect("encodable");
        for len in 0..frame.len() {
            prop_assert!(Envelope::decode(&frame[..len]).is_err(), "prefix of {} bytes decoded", len);
        }
    }
}

#[test]
fn unknown_version_is_a_typed_error() {
    let env = Envelope {
        from: NodeId(1),
        to: NodeId(2),
        message: Message::TimeoutNow(TimeoutNow { term: Term(3) }),
    };
    let mut frame = env.encode().expect("encodable");
    frame[0] = FORMAT_VERSION + 1;
    assert_eq!(
        Envelope::decode(&frame),
        Err(DecodeError::UnsupportedVersion {
            found: FORMAT_VERSION + 1
        })
    );
    assert_eq!(Envelope::decode(&[]), Err(DecodeError::Empty));
}

#[test]
fn trailing_bytes_are_an_error() {
    let env = Envelope {
        from: NodeId(1),
        to: NodeId(2),
        message: Message::TimeoutNow(TimeoutNow { term: Term(3) }),
    };
    let mut frame = env.encode().expect("encodable");
    frame.push(0);
    assert_eq!(Envelope::decode(&frame), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn a_huge_length_prefix_does_not_allocate_unboundedly() {
    // An AppendEntries claiming 2^62 entries in a tiny frame must fail fast.
    let env = Envelope {
        from: NodeId(1),
        to: NodeId(2),
        message: Message::AppendEntries(AppendEntries {
            term: Term(1),
            prev_log_id: LogId::ZERO,
            entries: vec![],
            leader_commit: LogIndex(0),
            round: 0,
        }),
    };
    let mut frame = env.encode().expect("encodable");
    // The entries length is the varint after from, to, variant, term, prev term/index.
    let len_pos = frame.len() - 3;
    assert_eq!(frame[len_pos], 0, "layout changed; update the test");
    frame.splice(
        len_pos..=len_pos,
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f],
    );
    assert!(Envelope::decode(&frame).is_err());
}

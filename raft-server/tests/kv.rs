//! The KV state machine on its own: exactly-once sessions (dissertation §6.3) with
//! deterministic expiry, every write operation, long keys and ordered scans.

#![allow(clippy::unwrap_used)]

use futures::executor::block_on;
use raft_core::node::StateMachine;
use raft_proto::{Bytes, Entry, EntryPayload, LogId, LogIndex, Term};
use raft_server::kv::{self, Body, Kv, KvCommand};
use raft_server::proto::{Response, ServerError, SessionRef, WriteOp, WriteResult, Written};
use raft_storage_lmdb::{LmdbStateMachine, SmConfig};

struct Machine {
    sm: LmdbStateMachine<Kv>,
    index: u64,
    _dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let sm = LmdbStateMachine::open(dir.path(), Kv, SmConfig::default()).unwrap();
        Machine {
            sm,
            index: 0,
            _dir: dir,
        }
    }

    fn apply_raw(&mut self, command: Bytes) -> Response {
        self.index += 1;
        let entry = Entry {
            log_id: LogId::new(Term(1), LogIndex(self.index)),
            payload: EntryPayload::Command(command),
        };
        let out = block_on(self.sm.apply(&[entry])).unwrap();
        raft_proto::decode_frame(&out[0]).unwrap()
    }

    fn apply(&mut self, time_ms: u64, body: Body) -> Response {
        self.apply_raw(KvCommand { time_ms, body }.encode().unwrap())
    }

    fn register(&mut self, time_ms: u64, ttl_ms: u64) -> u64 {
        match self.apply(time_ms, Body::Register { ttl_ms }) {
            Response::Registered { client_id } => client_id,
            other => panic!("{other:?}"),
        }
    }

    fn write(&mut self, time_ms: u64, session: Option<(u64, u64, u64)>, op: WriteOp) -> Response {
        let session = session.map(|(client_id, seq, acked_below)| SessionRef {
            client_id,
            seq,
            acked_below,
        });
        self.apply(time_ms, Body::Write { session, op })
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.sm.read(|v| kv::get(v.txn, v.data, key)).unwrap()
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> (Vec<Vec<u8>>, bool) {
        let (items, more) = self.sm.read(|v| kv::scan(v, start, end, limit)).unwrap();
        (items.into_iter().map(|(k, _)| k.to_vec()).collect(), more)
    }
}

fn append(key: &str, value: &str) -> WriteOp {
    WriteOp::Append {
        key: Bytes::from(key),
        value: Bytes::from(value),
    }
}

fn written(r: &Response) -> &Written {
    match r {
        Response::Written(w) => w,
        other => panic!("not a write: {other:?}"),
    }
}

/// §6.3: a retried request (same client id and number) gets its first response and is
/// applied once, even when other requests came in between.
#[test]
fn dissertation_6_3_a_retried_request_is_applied_once() {
    let mut m = Machine::new();
    let id = m.register(1000, 60_000);
    let first = m.write(1001, Some((id, 1, 1)), append("k", "x"));
    let other = m.write(1002, Some((id, 2, 1)), append("k", "y"));
    let retry = m.write(1003, Some((id, 1, 1)), append("k", "x"));
    assert_eq!(first, retry, "the retry answers with the first response");
    assert_eq!(written(&first).index, written(&retry).index);
    assert_ne!(written(&first).index, written(&other).index);
    assert_eq!(
        m.get(b"k").as_deref(),
        Some(&b"xy"[..]),
        "applied once each"
    );
}

/// The client's acknowledgement lets the state machine forget responses; a request
/// below it is refused rather than applied again.
#[test]
fn acknowledged_responses_are_forgotten_and_their_requests_refused() {
    let mut m = Machine::new();
    let id = m.register(0, 60_000);
    m.write(1, Some((id, 1, 1)), append("k", "a"));
    m.write(2, Some((id, 2, 2)), append("k", "b"));
    match written(&m.write(3, Some((id, 1, 2)), append("k", "a"))).result {
        WriteResult::Refused(ServerError::Invalid(_)) => {}
        ref other => panic!("{other:?}"),
    }
    assert_eq!(m.get(b"k").as_deref(), Some(&b"ab"[..]));
}

/// §6.3: a late copy of an applied request, carrying its own (older) acknowledgement
/// point, arrives after the client acknowledged it and its response was dropped (a
/// packet delayed in a partition, an entry in a deposed leader's log). The session
/// remembers the highest acknowledgement seen and refuses the copy: applied once.
#[test]
fn dissertation_6_3_a_late_copy_of_an_acknowledged_request_is_not_applied_again() {
    let mut m = Machine::new();
    let id = m.register(0, 60_000);
    m.write(1, Some((id, 1, 1)), append("k", "a"));
    // The client's next request acknowledges request 1: its response is dropped.
    m.write(2, Some((id, 2, 2)), append("k", "b"));
    // The late copy of request 1 as it was first sent: (seq 1, acked below 1).
    match written(&m.write(3, Some((id, 1, 1)), append("k", "a"))).result {
        WriteResult::Refused(ServerError::Invalid(ref e)) => {
            assert!(e.contains("already acknowledged"), "{e}")
        }
        ref other => panic!("the late copy was not refused: {other:?}"),
    }
    assert_eq!(m.get(b"k").as_deref(), Some(&b"ab"[..]), "applied once");
}

/// Sessions expire by the time in the entries, not by any node's clock: the same
/// entries expire the same sessions on every replica. Time never runs backwards.
#[test]
fn dissertation_6_3_sessions_expire_by_log_time() {
    let mut m = Machine::new();
    let id = m.register(10_000, 1_000);
    let kept = m.register(10_000, 100_000);
    assert!(matches!(
        written(&m.write(10_900, Some((id, 1, 1)), append("k", "a"))).result,
        WriteResult::Appended { .. }
    ));
    // 1 s after its last request: gone, with an error that says so.
    m.apply(11_950, Body::Tick);
    match written(&m.write(11_960, Some((id, 2, 2)), append("k", "b"))).result {
        WriteResult::Refused(ServerError::SessionExpired(x)) => assert_eq!(x, id),
        ref other => panic!("{other:?}"),
    }
    // An entry stamped earlier (a new leader with a slower clock) does not bring it back.
    match written(&m.write(10_000, Some((id, 2, 2)), append("k", "b"))).result {
        WriteResult::Refused(ServerError::SessionExpired(_)) => {}
        ref other => panic!("{other:?}"),
    }
    assert!(matches!(
        written(&m.write(12_000, Some((kept, 1, 1)), append("k", "c"))).result,
        WriteResult::Appended { .. }
    ));
    assert_eq!(m.get(b"k").as_deref(), Some(&b"ac"[..]));
    let sessions = m.sm.read(kv::session_count).unwrap();
    assert_eq!(sessions, 1);
}

#[test]
fn put_delete_cas_append_return_what_they_did() {
    let mut m = Machine::new();
    let b = |s: &str| Some(Bytes::from(s));
    let put = |k: &str, v: &str| WriteOp::Put {
        key: Bytes::from(k),
        value: Bytes::from(v),
    };
    assert_eq!(
        written(&m.write(0, None, put("a", "1"))).result,
        WriteResult::Previous(None)
    );
    assert_eq!(
        written(&m.write(0, None, put("a", "2"))).result,
        WriteResult::Previous(b("1"))
    );
    let cas = |expected: Option<Bytes>, new: Option<Bytes>| WriteOp::Cas {
        key: Bytes::from("a"),
        expected,
        new,
    };
    assert_eq!(
        written(&m.write(0, None, cas(b("1"), b("3")))).result,
        WriteResult::Cas {
            swapped: false,
            current: b("2")
        }
    );
    assert_eq!(
        written(&m.write(0, None, cas(b("2"), b("3")))).result,
        WriteResult::Cas {
            swapped: true,
            current: b("3")
        }
    );
    assert_eq!(
        written(&m.write(0, None, cas(None, b("x")))).result,
        WriteResult::Cas {
            swapped: false,
            current: b("3")
        }
    );
    assert_eq!(
        written(&m.write(0, None, cas(b("3"), None))).result,
        WriteResult::Cas {
            swapped: true,
            current: None
        }
    );
    assert_eq!(m.get(b"a"), None);
    assert_eq!(
        written(&m.write(0, None, cas(None, b("4")))).result,
        WriteResult::Cas {
            swapped: true,
            current: b("4")
        }
    );
    assert_eq!(
        written(&m.write(0, None, append("a", "56"))).result,
        WriteResult::Appended { len: 3 }
    );
    let del = WriteOp::Delete {
        key: Bytes::from("a"),
    };
    assert_eq!(
        written(&m.write(0, None, del.clone())).result,
        WriteResult::Previous(b("456"))
    );
    assert_eq!(
        written(&m.write(0, None, del)).result,
        WriteResult::Previous(None)
    );
    let w = m.write(0, None, append("n", "1"));
    assert_eq!(
        written(&w).index,
        m.index,
        "every write reports the index it committed at"
    );
}

/// A command no replica can decode is answered with an error on every replica alike;
/// it changes nothing and does not stop the node.
#[test]
fn an_undecodable_command_is_an_error_answer_not_a_crash() {
    let mut m = Machine::new();
    match m.apply_raw(Bytes::from(&b"\x01garbage"[..])) {
        Response::Error(ServerError::Invalid(_)) => {}
        other => panic!("{other:?}"),
    }
    m.write(0, None, append("k", "v"));
    assert_eq!(m.get(b"k").as_deref(), Some(&b"v"[..]));
}

/// Keys longer than LMDB's limit (511 bytes) are stored by prefix and hash; they read
/// back, and scans return every key in byte order, long keys sharing a prefix included.
#[test]
fn keys_up_to_4_kib_are_stored_and_scanned_in_order() {
    let mut m = Machine::new();
    let base = "p".repeat(kv::INLINE_KEY);
    let mut keys: Vec<Vec<u8>> = vec![
        b"a".to_vec(),
        base.clone().into_bytes(),
        format!("{base}a").into_bytes(),
        format!("{base}b").into_bytes(),
        format!("{base}ab").into_bytes(),
        format!("{base}{}", "z".repeat(4096 - kv::INLINE_KEY)).into_bytes(),
        format!("{base}c{}", "q".repeat(1000)).into_bytes(),
        format!("{}q", "p".repeat(kv::INLINE_KEY - 1)).into_bytes(),
        b"zz".to_vec(),
    ];
    for (i, k) in keys.iter().enumerate() {
        let op = WriteOp::Put {
            key: Bytes::from(k.clone()),
            value: Bytes::from(format!("v{i}")),
        };
        m.write(0, None, op);
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(m.get(k), Some(format!("v{i}").into_bytes()), "key {i}");
    }
    keys.sort();
    let (all, more) = m.scan(b"", None, 100);
    assert_eq!(all, keys, "byte order");
    assert!(!more);
    // Bounds that are long keys themselves.
    let (mid, _) = m.scan(&keys[2], Some(&keys[6]), 100);
    assert_eq!(mid, keys[2..6].to_vec());
    // Limits cut within a run of long keys and report more.
    let (first3, more) = m.scan(&keys[1], None, 3);
    assert_eq!(first3, keys[1..4].to_vec());
    assert!(more);
    // Deleting a long key removes only it.
    m.write(
        0,
        None,
        WriteOp::Delete {
            key: Bytes::from(keys[3].clone()),
        },
    );
    assert_eq!(m.get(&keys[3]), None);
    assert_eq!(m.scan(b"", None, 100).0.len(), keys.len() - 1);
}

fn owned_register(m: &mut Machine, time_ms: u64, owner: &str, max_sessions: u64) -> u64 {
    let body = Body::RegisterOwned {
        ttl_ms: 60_000,
        owner: kv::owner_of(owner),
        max_sessions,
    };
    match m.apply(time_ms, body) {
        Response::Registered { client_id } => client_id,
        other => panic!("{other:?}"),
    }
}

fn owned_write(
    m: &mut Machine,
    time_ms: u64,
    owner: &str,
    session: (u64, u64),
    op: WriteOp,
) -> Response {
    m.apply(
        time_ms,
        Body::OwnedWrite {
            owner: kv::owner_of(owner),
            session: SessionRef {
                client_id: session.0,
                seq: session.1,
                acked_below: 0,
            },
            op,
        },
    )
}

fn session_count(m: &Machine) -> u64 {
    m.sm.read(kv::session_count).unwrap()
}

/// Security model: a session belongs to the certificate name that registered it. A
/// thief using the victim's session and next sequence number is refused and nothing is
/// applied, so the victim's own request with that number is applied (not answered
/// from a cache the thief filled).
#[test]
fn a_session_is_refused_to_another_client_and_nothing_is_applied() {
    let mut m = Machine::new();
    let victim = owned_register(&mut m, 1_000, "client-victim.raft", 100);
    let w = owned_write(
        &mut m,
        1_001,
        "client-victim.raft",
        (victim, 1),
        append("k", "a"),
    );
    assert_eq!(written(&w).result, WriteResult::Appended { len: 1 });
    let stolen = owned_write(
        &mut m,
        1_002,
        "client-thief.raft",
        (victim, 2),
        append("k", "THIEF"),
    );
    match written(&stolen).result {
        WriteResult::Refused(ServerError::SessionNotOwned(id)) => assert_eq!(id, victim),
        ref other => panic!("the thief's write was not refused: {other:?}"),
    }
    assert_eq!(m.get(b"k"), Some(b"a".to_vec()), "nothing applied");
    let own = owned_write(
        &mut m,
        1_003,
        "client-victim.raft",
        (victim, 2),
        append("k", "b"),
    );
    assert_eq!(
        written(&own).result,
        WriteResult::Appended { len: 2 },
        "the victim's request with that number is applied, not answered from a cache"
    );
    assert_eq!(m.get(b"k"), Some(b"ab".to_vec()));
}

/// A session opened before owners existed (`Register`) is claimed by its first owned
/// write; another name is refused from then on.
#[test]
fn a_legacy_session_is_claimed_by_its_first_owned_write() {
    let mut m = Machine::new();
    let id = m.register(1_000, 60_000);
    let first = owned_write(&mut m, 1_001, "client-a.raft", (id, 1), append("k", "a"));
    assert_eq!(written(&first).result, WriteResult::Appended { len: 1 });
    let other = owned_write(&mut m, 1_002, "client-b.raft", (id, 2), append("k", "b"));
    assert!(matches!(
        written(&other).result,
        WriteResult::Refused(ServerError::SessionNotOwned(_))
    ));
}

/// Security model: sessions are capped; registering one more expires the one idle
/// longest, and the count is kept without scanning the table.
#[test]
fn registering_beyond_the_cap_expires_the_session_idle_longest() {
    let mut m = Machine::new();
    let a = owned_register(&mut m, 1_000, "client-a.raft", 2);
    let b = owned_register(&mut m, 1_001, "client-b.raft", 2);
    // `a` is used again, so `b` is the one idle longest.
    let w = owned_write(&mut m, 1_002, "client-a.raft", (a, 1), append("k", "a"));
    assert_eq!(written(&w).result, WriteResult::Appended { len: 1 });
    assert_eq!(session_count(&m), 2);
    let c = owned_register(&mut m, 1_003, "client-c.raft", 2);
    assert_eq!(session_count(&m), 2, "the cap holds");
    let on_b = owned_write(&mut m, 1_004, "client-b.raft", (b, 1), append("b", "x"));
    assert_eq!(
        written(&on_b).result,
        WriteResult::Refused(ServerError::SessionExpired(b)),
        "b was expired"
    );
    for (owner, id) in [("client-a.raft", a), ("client-c.raft", c)] {
        let w = owned_write(&mut m, 1_005, owner, (id, 7), append("z", "1"));
        assert!(matches!(written(&w).result, WriteResult::Appended { .. }));
    }
    // Expiry by time counts sessions out too.
    m.apply(200_000, Body::Tick);
    assert_eq!(session_count(&m), 0, "both expired by log time");
}

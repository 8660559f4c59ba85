//! Writes the seed corpus under `fuzz/corpus/<target>/`: small valid inputs made by
//! the real encoders (envelopes, client frames, `ServerConfig::to_toml`, and snapshot
//! files written by an `LmdbStateMachine` running the server's KV machine).
//!
//! ```text
//! cd fuzz && cargo run --example gen_corpus [-- OUT_DIR]
//! ```
//!
//! Output is deterministic except for the snapshot files (their random ids are not in
//! the file, but nothing else promises byte-identical files across versions).

use raft_core::node::StateMachine;
use raft_net_quic::frame::put_frame;
use raft_proto::{
    AppendEntries, AppendResponse, AppendResult, Bytes, ConflictHint, Entry, EntryPayload,
    Envelope, InstallSnapshot, InstallSnapshotResponse, LogId, LogIndex, Membership, Message,
    NodeId, NodeRecord, ReadId, ReadIndexRequest, ReadIndexResponse, ReadIndexResult, SnapshotMeta,
    SnapshotOutcome, SnapshotRequest, Term, TimeoutNow, VoteRequest, VoteResponse,
};
use raft_server::ServerConfig;
use raft_server::kv::{Body, Kv, KvCommand};
use raft_server::proto::{
    AdminOp, Consistency, ReadOp, Request, Response, ServerError, SessionRef, Status, WriteOp,
    WriteResult, Written,
};
use raft_storage_lmdb::{LmdbStateMachine, SmConfig};
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let out = std::env::args_os().nth(1).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"),
        PathBuf::from,
    );
    let mut total = 0;
    total += write_all(&out.join("proto_frame"), proto_frames()?)?;
    total += write_all(&out.join("client_protocol"), client_frames()?)?;
    total += write_all(&out.join("config"), configs()?)?;
    total += write_all(&out.join("snapshot_file"), snapshot_files()?)?;
    eprintln!("wrote {total} bytes of seeds under {}", out.display());
    Ok(())
}

fn write_all(dir: &Path, seeds: Vec<(String, Vec<u8>)>) -> Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut total = 0;
    for (name, bytes) in seeds {
        total += bytes.len();
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(total)
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(Term(term), LogIndex(index))
}

fn envelopes() -> Vec<(&'static str, Message)> {
    let meta = SnapshotMeta {
        last_log_id: log_id(3, 120),
        membership: Membership {
            voters: [NodeId(1), NodeId(2), NodeId(3)].into(),
            learners: [NodeId(4)].into(),
            nodes: [(NodeId(4), NodeRecord::new("127.0.0.1:7004"))].into(),
        },
        id: 0x5eed_0001,
    };
    vec![
        (
            "vote_request",
            Message::VoteRequest(VoteRequest {
                term: Term(4),
                last_log_id: log_id(3, 120),
                pre_vote: false,
                transfer: false,
            }),
        ),
        (
            "pre_vote_request_transfer",
            Message::VoteRequest(VoteRequest {
                term: Term(5),
                last_log_id: log_id(4, 7),
                pre_vote: true,
                transfer: true,
            }),
        ),
        (
            "vote_response",
            Message::VoteResponse(VoteResponse {
                term: Term(4),
                granted: true,
                pre_vote: false,
            }),
        ),
        (
            "append_entries",
            Message::AppendEntries(AppendEntries {
                term: Term(3),
                prev_log_id: log_id(3, 117),
                entries: vec![
                    Entry {
                        log_id: log_id(3, 118),
                        payload: EntryPayload::Blank,
                    },
                    Entry {
                        log_id: log_id(3, 119),
                        payload: EntryPayload::Command(Bytes::from(&b"put k v"[..])),
                    },
                    Entry {
                        log_id: log_id(3, 120),
                        payload: EntryPayload::Membership(meta.membership.clone()),
                    },
                ],
                leader_commit: LogIndex(117),
                round: 42,
            }),
        ),
        (
            "append_entries_heartbeat",
            Message::AppendEntries(AppendEntries {
                term: Term(3),
                prev_log_id: log_id(3, 120),
                entries: Vec::new(),
                leader_commit: LogIndex(120),
                round: 43,
            }),
        ),
        (
            "append_response_success",
            Message::AppendResponse(AppendResponse {
                term: Term(3),
                round: 42,
                result: AppendResult::Success {
                    match_index: LogIndex(120),
                },
            }),
        ),
        (
            "append_response_conflict_term",
            Message::AppendResponse(AppendResponse {
                term: Term(3),
                round: 40,
                result: AppendResult::Conflict {
                    rejected: LogIndex(100),
                    hint: ConflictHint::Term {
                        term: Term(2),
                        first_index: LogIndex(90),
                    },
                },
            }),
        ),
        (
            "append_response_conflict_last",
            Message::AppendResponse(AppendResponse {
                term: Term(3),
                round: 41,
                result: AppendResult::Conflict {
                    rejected: LogIndex(100),
                    hint: ConflictHint::LastIndex(LogIndex(60)),
                },
            }),
        ),
        (
            "install_snapshot",
            Message::InstallSnapshot(InstallSnapshot {
                term: Term(3),
                meta: meta.clone(),
                offset: 0,
                data: Bytes::from(&b"RAFTSNAP\x01\x00\x00\x00"[..]),
                done: false,
            }),
        ),
        (
            "install_snapshot_response_received",
            Message::InstallSnapshotResponse(InstallSnapshotResponse {
                term: Term(3),
                snapshot_id: meta.id,
                snapshot: meta.last_log_id,
                outcome: SnapshotOutcome::Received { next_offset: 12 },
            }),
        ),
        (
            "install_snapshot_response_installed",
            Message::InstallSnapshotResponse(InstallSnapshotResponse {
                term: Term(3),
                snapshot_id: meta.id,
                snapshot: meta.last_log_id,
                outcome: SnapshotOutcome::Installed {
                    last_index: LogIndex(120),
                },
            }),
        ),
        (
            "timeout_now",
            Message::TimeoutNow(TimeoutNow { term: Term(7) }),
        ),
        (
            "snapshot_request",
            Message::SnapshotRequest(SnapshotRequest {
                term: Term(7),
                min_index: LogIndex(1500),
            }),
        ),
        (
            "read_index_request",
            Message::ReadIndexRequest(ReadIndexRequest { id: ReadId(9) }),
        ),
        (
            "read_index_response_ready",
            Message::ReadIndexResponse(ReadIndexResponse {
                id: ReadId(9),
                result: ReadIndexResult::Ready {
                    index: LogIndex(120),
                },
            }),
        ),
        (
            "read_index_response_not_leader",
            Message::ReadIndexResponse(ReadIndexResponse {
                id: ReadId(9),
                result: ReadIndexResult::NotLeader {
                    leader_hint: Some(NodeId(2)),
                },
            }),
        ),
    ]
}

/// One frame per message kind, plus two length-prefixed streams of frames as the
/// transport writes them (for the `FrameDecoder` half of the target).
fn proto_frames() -> Result<Vec<(String, Vec<u8>)>> {
    let mut seeds = Vec::new();
    let mut stream = Vec::new();
    for (i, (name, message)) in envelopes().into_iter().enumerate() {
        let env = Envelope {
            from: NodeId(1 + i as u64 % 3),
            to: NodeId(2),
            message,
        };
        let frame = env.encode()?;
        put_frame(&mut stream, &frame);
        seeds.push((name.to_string(), frame));
    }
    let mut short = Vec::new();
    for frame in [&seeds[11].1, &seeds[0].1] {
        put_frame(&mut short, frame);
    }
    seeds.push(("stream_two_frames".into(), short));
    seeds.push(("stream_every_kind".into(), stream));
    Ok(seeds)
}

fn b(s: &str) -> Bytes {
    Bytes::from(s)
}

/// Frame bodies (what `proto::decode` reads, without the length prefix).
fn client_frames() -> Result<Vec<(String, Vec<u8>)>> {
    let session = Some(SessionRef {
        client_id: 17,
        seq: 5,
        acked_below: 4,
    });
    let requests = [
        ("req_register", Request::Register),
        (
            "req_put_session",
            Request::Write {
                session,
                op: WriteOp::Put {
                    key: b("key"),
                    value: b("value"),
                },
            },
        ),
        (
            "req_delete",
            Request::Write {
                session: None,
                op: WriteOp::Delete { key: b("key") },
            },
        ),
        (
            "req_cas",
            Request::Write {
                session,
                op: WriteOp::Cas {
                    key: b("key"),
                    expected: Some(b("old")),
                    new: None,
                },
            },
        ),
        (
            "req_append",
            Request::Write {
                session,
                op: WriteOp::Append {
                    key: b("log"),
                    value: b("+1"),
                },
            },
        ),
        (
            "req_get",
            Request::Read {
                op: ReadOp::Get { key: b("key") },
                consistency: Consistency::Linearizable,
            },
        ),
        (
            "req_scan_stale",
            Request::Read {
                op: ReadOp::Scan {
                    start: b("a"),
                    end: Some(b("m")),
                    limit: 100,
                },
                consistency: Consistency::Stale,
            },
        ),
        ("req_status", Request::Admin(AdminOp::Status)),
        (
            "req_add_learner",
            Request::Admin(AdminOp::AddLearner {
                id: NodeId(4),
                addr: "127.0.0.1:7104".into(),
            }),
        ),
        (
            "req_promote",
            Request::Admin(AdminOp::Promote { id: NodeId(4) }),
        ),
        (
            "req_remove",
            Request::Admin(AdminOp::Remove { id: NodeId(3) }),
        ),
        (
            "req_transfer",
            Request::Admin(AdminOp::TransferLeader { to: NodeId(2) }),
        ),
        ("req_snapshot", Request::Admin(AdminOp::Snapshot)),
        (
            "req_move_node",
            Request::Admin(AdminOp::MoveNode {
                id: NodeId(2),
                addr: "127.0.0.1:7112".into(),
            }),
        ),
    ];
    let responses = [
        ("resp_registered", Response::Registered { client_id: 17 }),
        (
            "resp_written_previous",
            Response::Written(Written {
                index: 120,
                result: WriteResult::Previous(Some(b("old"))),
            }),
        ),
        (
            "resp_written_cas",
            Response::Written(Written {
                index: 121,
                result: WriteResult::Cas {
                    swapped: true,
                    current: Some(b("new")),
                },
            }),
        ),
        (
            "resp_written_appended",
            Response::Written(Written {
                index: 122,
                result: WriteResult::Appended { len: 9 },
            }),
        ),
        (
            "resp_written_refused",
            Response::Written(Written {
                index: 123,
                result: WriteResult::Refused(ServerError::SessionExpired(17)),
            }),
        ),
        (
            "resp_value",
            Response::Value {
                value: Some(b("v")),
            },
        ),
        (
            "resp_scanned",
            Response::Scanned {
                items: vec![(b("a"), b("1")), (b("b"), b("2"))],
                more: true,
            },
        ),
        (
            "resp_status",
            Response::Status(Status {
                id: NodeId(1),
                role: "Leader".into(),
                term: 3,
                leader: Some(NodeId(1)),
                committed: 120,
                applied: 120,
                last_index: 121,
                snapshot: 100,
                voters: vec![
                    (NodeId(1), "127.0.0.1:7101".into()),
                    (NodeId(2), "127.0.0.1:7102".into()),
                ],
                learners: vec![(NodeId(4), "127.0.0.1:7104".into())],
                replication: vec![(NodeId(2), 119)],
            }),
        ),
        ("resp_done", Response::Done),
        (
            "resp_not_leader",
            Response::Error(ServerError::NotLeader {
                leader: Some(NodeId(2)),
                addr: Some("127.0.0.1:7102".into()),
            }),
        ),
        (
            "resp_too_large",
            Response::Error(ServerError::TooLarge {
                what: "key".into(),
                size: 5000,
                limit: 4096,
            }),
        ),
        (
            "resp_busy",
            Response::Error(ServerError::Busy("8192 writes in flight".into())),
        ),
    ];
    let body = |frame: Vec<u8>| frame[4..].to_vec();
    let mut seeds = Vec::new();
    for (name, r) in requests {
        seeds.push((name.to_string(), body(raft_server::proto::encode(&r)?)));
    }
    for (name, r) in responses {
        seeds.push((name.to_string(), body(raft_server::proto::encode(&r)?)));
    }
    Ok(seeds)
}

fn configs() -> Result<Vec<(String, Vec<u8>)>> {
    let minimal = ServerConfig::new(
        1,
        "127.0.0.1:7101",
        Path::new("data/node1"),
        Path::new("certs"),
    );
    let mut founding = ServerConfig::new(
        1,
        "127.0.0.1:7101",
        Path::new("raft-dev/node1"),
        Path::new("raft-dev/certs"),
    );
    founding.peers = vec!["2=127.0.0.1:7102".into(), "3=[::1]:7103".into()];
    founding.metrics = Some("127.0.0.1:9101".into());
    let mut joining = ServerConfig::new(
        4,
        "10.0.0.4:7101",
        Path::new("/var/lib/raft"),
        Path::new("/etc/raft"),
    );
    joining.peers = vec!["1=10.0.0.1:7101".into()];
    joining.join = true;
    joining.max_value_bytes = 4 << 20;
    joining.snapshot_entries = 1000;
    Ok(vec![
        ("minimal.toml".into(), minimal.to_toml().into_bytes()),
        ("founding.toml".into(), founding.to_toml().into_bytes()),
        ("joining.toml".into(), joining.to_toml().into_bytes()),
    ])
}

/// Snapshot files written by the server's state machine: one of an empty state, one
/// after sessions, writes and a node address.
fn snapshot_files() -> Result<Vec<(String, Vec<u8>)>> {
    let dir = tempfile::tempdir()?;
    let sm = LmdbStateMachine::open(dir.path(), Kv, SmConfig::default())?;
    futures::executor::block_on(async {
        let empty = snapshot(&sm, LogId::ZERO).await?;
        let commands = [
            Body::Register { ttl_ms: 60_000 },
            Body::Write {
                session: Some(SessionRef {
                    client_id: 1,
                    seq: 1,
                    acked_below: 1,
                }),
                op: WriteOp::Put {
                    key: b("key"),
                    value: b("value"),
                },
            },
            Body::Write {
                session: None,
                op: WriteOp::Append {
                    key: b("log"),
                    value: b("abc"),
                },
            },
        ];
        let entries = commands
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                let index = i as u64 + 1;
                let command = KvCommand {
                    time_ms: 1_700_000_000_000 + index,
                    body,
                };
                Ok(Entry {
                    log_id: log_id(1, index),
                    payload: EntryPayload::Command(command.encode()?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let last = entries.last().map(|e| e.log_id).ok_or("no entries")?;
        sm.apply(&entries).await?;
        let small = snapshot(&sm, last).await?;
        Ok(vec![
            ("empty.snap".into(), empty),
            ("kv_sessions.snap".into(), small),
        ])
    })
}

async fn snapshot(sm: &LmdbStateMachine<Kv>, at: LogId) -> Result<Vec<u8>> {
    let meta = sm
        .begin_snapshot(SnapshotMeta {
            last_log_id: at,
            membership: Membership::voters([NodeId(1)]),
            id: 0,
        })
        .await?;
    let mut file = Vec::new();
    loop {
        let (chunk, done) = sm
            .read_snapshot(meta.id, file.len() as u64, 64 << 10)
            .await?
            .ok_or("the snapshot is gone")?;
        file.extend_from_slice(&chunk);
        if done {
            break;
        }
    }
    raft_storage_lmdb::check_snapshot_bytes(&file)?;
    Ok(file)
}

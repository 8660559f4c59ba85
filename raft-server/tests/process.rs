//! Process-level tests: real `raft-server` processes on 127.0.0.1, driven through the
//! CLI, the client library and the raw client protocol. Each test names the scenario
//! it checks; the clusters run one at a time (see `support::serial`).

#![allow(clippy::print_stderr)]

mod support;

use raft_proto::Bytes;
use raft_server::proto::{Consistency, Request, Response, SessionRef, WriteOp, WriteResult};
use raft_server::{Client, ClientError, ClientOptions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{TestCluster, run_cli, serial};

const LEADER_WAIT: Duration = Duration::from_secs(20);

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every key with `prefix`, page by page.
async fn scan_all(
    client: &Client,
    prefix: &str,
    consistency: Consistency,
) -> Result<BTreeMap<String, String>, ClientError> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a non-empty prefix") += 1;
    let end = Bytes::from(end);
    let mut start = Bytes::from(prefix.to_string());
    let mut out = BTreeMap::new();
    loop {
        let (items, more) = client
            .scan(start.clone(), Some(end.clone()), 10_000, consistency)
            .await?;
        for (k, v) in &items {
            out.insert(
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            );
        }
        match items.last() {
            Some((k, _)) if more => {
                let mut next = k.to_vec();
                next.push(0);
                start = Bytes::from(next);
            }
            _ => return Ok(out),
        }
    }
}

/// What one writer saw: acknowledged writes, definite failures, unknown outcomes.
type WriterResult = (Vec<(String, String)>, u64, u64);

/// `clients` tasks each writing its own keys `{prefix}{task}-{n}` one at a time until
/// `stop`; returns what was acknowledged and how many writes failed with a definite
/// error or an unknown outcome.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<WriterResult>>,
    acked: Arc<AtomicU64>,
}

impl Load {
    fn start(client: &Client, prefix: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|t| {
                let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let (mut ok, mut failed, mut unknown) = (Vec::new(), 0, 0);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let (k, v) = (format!("{prefix}{t:03}-{n:06}"), format!("v{n}"));
                        n += 1;
                        match client.put(k.clone(), v.clone()).await {
                            Ok(_) => {
                                ok.push((k, v));
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) if e.outcome_unknown() => unknown += 1,
                            Err(_) => failed += 1,
                        }
                    }
                    (ok, failed, unknown)
                })
            })
            .collect();
        Load { stop, tasks, acked }
    }

    /// Waits until `more` further writes are acknowledged (or `limit` passes).
    async fn progress(&self, more: u64, limit: Duration) -> Duration {
        let started = Instant::now();
        let target = self.acked.load(Ordering::Relaxed) + more;
        while self.acked.load(Ordering::Relaxed) < target {
            assert!(
                started.elapsed() < limit,
                "writes stalled: {} of {target} acknowledged after {limit:?}",
                self.acked.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    async fn finish(self) -> (BTreeMap<String, String>, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut acked, mut failed, mut unknown) = (BTreeMap::new(), 0, 0);
        for t in self.tasks {
            let (ok, f, u) = t.await.expect("a writer task");
            acked.extend(ok);
            failed += f;
            unknown += u;
        }
        (acked, failed, unknown)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_through_the_cli_and_the_library_and_keep_data_across_restarts() {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, |_| {});
    let client = cluster.client(Duration::from_secs(20));
    let leader = cluster.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;

    let out = cluster.cli(&["kv", "put", "greeting", "hello"]);
    assert!(out.status.success(), "kv put: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("OK (committed at index "),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        client.get("greeting").await.expect("get"),
        Some(Bytes::from("hello")),
        "the library reads what the CLI wrote"
    );

    let w = client.put("planet", "earth").await.expect("put");
    assert!(w.index > 0);
    let out = cluster.cli(&["kv", "get", "planet"]);
    assert!(out.status.success(), "kv get: {}", stderr(&out));
    assert_eq!(stdout(&out), "earth\n");

    let out = cluster.cli(&["kv", "append", "planet", "!"]);
    assert!(out.status.success(), "kv append: {}", stderr(&out));
    let out = cluster.cli(&[
        "kv",
        "cas",
        "planet",
        "--expected",
        "earth!",
        "--new",
        "mars",
    ]);
    assert!(out.status.success(), "kv cas: {}", stderr(&out));
    let out = cluster.cli(&[
        "kv",
        "cas",
        "planet",
        "--expected",
        "earth",
        "--new",
        "venus",
    ]);
    assert!(!out.status.success(), "a failed compare must exit non-zero");
    assert!(stderr(&out).contains("not swapped"), "{}", stderr(&out));
    let out = cluster.cli(&["kv", "scan", "--prefix", "pla"]);
    assert_eq!(stdout(&out), "planet\tmars\n");
    let out = cluster.cli(&["kv", "get", "nothing-here"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not set"), "{}", stderr(&out));

    let out = cluster.cli(&["cluster", "status"]);
    assert!(out.status.success(), "cluster status: {}", stderr(&out));
    let status = stdout(&out);
    assert_eq!(status.matches(" Leader ").count(), 1, "{status}");
    assert_eq!(status.matches(" Follower ").count(), 2, "{status}");
    assert!(status.contains("voters: 1@"), "{status}");
    eprintln!("{status}");

    // A clean stop of every node, then a restart: the data is on disk.
    for id in 1..=3 {
        cluster.stop(id);
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let client = cluster.client(Duration::from_secs(20));
    let after = cluster.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;
    eprintln!("leader before the restart: {leader}, after: {after}");
    assert_eq!(
        client.get("greeting").await.expect("get"),
        Some(Bytes::from("hello"))
    );
    assert_eq!(
        client.get("planet").await.expect("get"),
        Some(Bytes::from("mars"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_a_write_load_a_new_leader_takes_over_and_the_old_one_catches_up() {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, |_| {});
    let client = cluster.client(Duration::from_secs(30));
    let old = cluster.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;

    let load = Load::start(&client, "w", 16);
    load.progress(500, Duration::from_secs(30)).await;
    let killed_at = Instant::now();
    cluster.kill9(old);
    let others = cluster.running_except(old);
    let new = cluster.wait_leader(&client, &others, LEADER_WAIT).await;
    assert_ne!(new, old, "the killed node cannot lead");
    let elected = killed_at.elapsed();
    load.progress(200, Duration::from_secs(30)).await;
    eprintln!(
        "node {old} killed; node {new} leads {elected:?} later; 200 more writes acknowledged {:?} after the kill",
        killed_at.elapsed()
    );

    cluster.spawn(old);
    load.progress(500, Duration::from_secs(30)).await;
    let (acked, failed, unknown) = load.finish().await;
    eprintln!(
        "{} writes acknowledged, {failed} failed, {unknown} of unknown outcome",
        acked.len()
    );
    assert!(acked.len() >= 1200);

    // Every acknowledged write is there, read linearizably through the leader...
    let all = scan_all(&client, "w", Consistency::Linearizable)
        .await
        .expect("scan");
    for (k, v) in &acked {
        assert_eq!(all.get(k), Some(v), "acknowledged write {k}={v} is missing");
    }
    // ...and the restarted node catches up to the same state.
    let leader_status = cluster
        .status(&client, new)
        .await
        .expect("the leader's status");
    let caught_up = cluster
        .wait_applied(
            &client,
            old,
            leader_status.committed,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(caught_up.leader.map(|l| l.0), Some(new));
    let local = Client::new(
        vec![cluster.addr(old)],
        cluster.identity(),
        ClientOptions::default(),
    )
    .expect("client");
    let there = scan_all(&local, "w", Consistency::Stale)
        .await
        .expect("stale scan");
    assert_eq!(
        there, all,
        "the restarted node's state machine equals the leader's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_during_100k_writes_catches_up_by_snapshot() {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, |c| c.snapshot_entries = 5_000);
    let client = cluster.client(Duration::from_secs(30));
    let leader = cluster.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;
    let down = cluster.running_except(leader)[0];
    cluster.kill9(down);

    const WRITES: u64 = 100_000;
    const TASKS: u64 = 64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut i = t;
                while i < WRITES {
                    client
                        .put(format!("s{i:06}"), format!("{i}"))
                        .await
                        .unwrap_or_else(|e| panic!("write {i}: {e}"));
                    i += TASKS;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a writer");
    }
    let took = started.elapsed();
    eprintln!(
        "{WRITES} writes by {TASKS} clients in {took:?} ({:.0}/s) with node {down} down",
        WRITES as f64 / took.as_secs_f64()
    );
    let leader_status = cluster.status(&client, leader).await.expect("status");
    assert!(
        cluster.metric(leader, "raft_snapshots_total") >= 1.0,
        "the leader compacted its log"
    );

    cluster.spawn(down);
    let caught_up = cluster
        .wait_applied(
            &client,
            down,
            leader_status.committed,
            Duration::from_secs(60),
        )
        .await;
    assert!(
        cluster.metric(down, "raft_snapshots_installed_total") >= 1.0,
        "node {down} caught up by installing a snapshot; its log:\n{}",
        cluster.log_tail(down, 20)
    );
    assert!(
        cluster
            .log(down)
            .contains("installed a snapshot from the leader")
    );
    assert!(caught_up.snapshot > 0);

    let local = Client::new(
        vec![cluster.addr(down)],
        cluster.identity(),
        ClientOptions::default(),
    )
    .expect("client");
    let there = scan_all(&local, "s", Consistency::Stale)
        .await
        .expect("stale scan");
    assert_eq!(
        there.len() as u64,
        WRITES,
        "every write reached node {down}"
    );
    for (k, v) in &there {
        assert_eq!(k[1..].parse::<u64>().ok(), v.parse().ok(), "{k}={v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dissertation_4_a_fourth_node_joins_as_a_learner_is_promoted_and_another_is_removed() {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, |_| {});
    let client = cluster.client(Duration::from_secs(30));
    let leader = cluster.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;
    for i in 0..200 {
        client.put(format!("m{i:03}"), "x").await.expect("put");
    }

    let addr4 = cluster.add_joining_node(4);
    let out = cluster.cli(&["cluster", "add-learner", "4", &addr4]);
    assert!(out.status.success(), "add-learner: {}", stderr(&out));
    let committed = cluster
        .status(&client, leader)
        .await
        .expect("status")
        .committed;
    let s4 = cluster
        .wait_applied(&client, 4, committed, Duration::from_secs(30))
        .await;
    assert_eq!(s4.role, "Learner", "{s4:?}");

    let out = cluster.cli(&["cluster", "promote", "4"]);
    assert!(out.status.success(), "promote: {}", stderr(&out));
    let removed = cluster.running_except(leader)[0];
    let out = cluster.cli(&["cluster", "remove", &removed.to_string()]);
    assert!(out.status.success(), "remove: {}", stderr(&out));

    let status = cluster.status(&client, leader).await.expect("status");
    let mut voters: Vec<u64> = status.voters.iter().map(|(id, _)| id.0).collect();
    voters.sort_unstable();
    let mut expected: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&i| i != removed).collect();
    expected.sort_unstable();
    assert_eq!(voters, expected, "{status:?}");
    assert!(status.learners.is_empty(), "{status:?}");
    cluster.kill9(removed);

    // Node 4 is a real voter now: with the third voter down, the leader and node 4
    // still form a majority and commit.
    let third = expected
        .iter()
        .copied()
        .find(|&i| i != leader && i != 4)
        .expect("a third voter");
    cluster.kill9(third);
    let w = client
        .put("after", "membership")
        .await
        .expect("a write needs node 4's vote");
    cluster
        .wait_applied(&client, 4, w.index, Duration::from_secs(10))
        .await;
    let out = cluster.cli(&["cluster", "status"]);
    eprintln!("{}", stdout(&out));
}

/// One raw write in session (`client_id`, `seq`) sent to `node`.
async fn raw_append(
    client: &Client,
    node: std::net::SocketAddr,
    client_id: u64,
    seq: u64,
) -> Result<Response, ClientError> {
    client
        .request_once(
            node,
            &Request::Write {
                session: Some(SessionRef {
                    client_id,
                    seq,
                    acked_below: seq,
                }),
                op: WriteOp::Append {
                    key: Bytes::from("counter"),
                    value: Bytes::from("+"),
                },
            },
        )
        .await
}

async fn counter(client: &Client) -> usize {
    client
        .get("counter")
        .await
        .expect("get")
        .map_or(0, |v| v.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dissertation_6_3_a_write_whose_answer_was_lost_is_retried_across_a_leader_kill_and_applied_once()
 {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, |_| {});
    let client = cluster.client(Duration::from_secs(30));
    let first = cluster.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;
    let client_id = match client
        .request_once(cluster.addr(first), &Request::Register)
        .await
        .expect("register")
    {
        Response::Registered { client_id } => client_id,
        other => panic!("{other:?}"),
    };

    // 1. The leader applies append #1 and answers; the client never sees the answer
    //    (we drop it) and the leader dies. The retry goes to the new leader.
    let lost = raw_append(&client, cluster.addr(first), client_id, 1)
        .await
        .expect("the first attempt");
    let Response::Written(original) = lost else {
        panic!("{lost:?}")
    };
    cluster.kill9(first);
    let second = cluster
        .wait_leader(&client, &cluster.running_except(first), LEADER_WAIT)
        .await;
    let retried = raw_append(&client, cluster.addr(second), client_id, 1)
        .await
        .expect("the retry");
    let Response::Written(again) = retried else {
        panic!("{retried:?}")
    };
    assert_eq!(again, original, "the retry gets the original answer");
    assert_eq!(counter(&client).await, 1, "append #1 was applied once");

    // 2. The answer is lost because the leader dies while the write is in flight:
    //    the outcome is unknown until the retry, which applies it at most once.
    cluster.spawn(first);
    let committed = cluster
        .status(&client, second)
        .await
        .expect("status")
        .committed;
    cluster
        .wait_applied(&client, first, committed, Duration::from_secs(30))
        .await;
    let in_flight = {
        let (client, addr) = (client.clone(), cluster.addr(second));
        tokio::spawn(async move { raw_append(&client, addr, client_id, 2).await })
    };
    tokio::time::sleep(Duration::from_millis(3)).await;
    cluster.kill9(second);
    eprintln!("in-flight attempt: {:?}", in_flight.await.expect("task"));
    let third = cluster
        .wait_leader(&client, &cluster.running_except(second), LEADER_WAIT)
        .await;
    for attempt in 0..2 {
        let r = raw_append(&client, cluster.addr(third), client_id, 2)
            .await
            .expect("the retry");
        let Response::Written(w) = r else {
            panic!("{r:?}")
        };
        assert!(
            matches!(w.result, WriteResult::Appended { .. }),
            "attempt {attempt}: {w:?}"
        );
    }
    assert_eq!(counter(&client).await, 2, "append #2 was applied once");

    // 3. The library does the same by itself: appends through a leader kill, each
    //    retried with its own sequence number until it is answered.
    cluster.spawn(second);
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut done = 0;
            for _ in 0..150 {
                client.append("counter", "+").await.expect("append");
                done += 1;
            }
            done
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let leader = cluster.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;
    cluster.kill9(leader);
    let done = load.await.expect("the appends");
    assert_eq!(
        counter(&client).await,
        2 + done,
        "{done} appends acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_certificate_from_another_ca_is_refused() {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, |_| {});
    let client = cluster.client(Duration::from_secs(20));
    cluster.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;
    let dir = cluster.dir.path();
    let out = run_cli(
        &["certs", "--out", "other", "--clients", "intruder"],
        dir,
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "certs: {out:?}");
    let nodes: Vec<String> = (1..=3).map(|i| cluster.addr(i).to_string()).collect();
    let started = Instant::now();
    let out = run_cli(
        &[
            "kv",
            "--nodes",
            &nodes.join(","),
            "--ca",
            "certs/ca.crt",
            "--cert",
            "other/client-intruder.crt",
            "--key",
            "other/client-intruder.key",
            "--timeout",
            "3",
            "put",
            "intruder",
            "was here",
        ],
        dir,
        Duration::from_secs(30),
    );
    eprintln!(
        "refused in {:?}: {}",
        started.elapsed(),
        stderr(&out).trim()
    );
    assert!(!out.status.success(), "the intruder's put must fail");
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(15));

    let identity = raft_net_quic::Identity::load(
        &dir.join("certs/ca.crt"),
        &dir.join("other/client-intruder.crt"),
        &dir.join("other/client-intruder.key"),
    )
    .expect("the intruder's identity loads");
    let intruder = Client::new(
        (1..=3).map(|i| cluster.addr(i)).collect(),
        identity,
        ClientOptions {
            timeout: Duration::from_secs(3),
            ..ClientOptions::default()
        },
    )
    .expect("client");
    let r = intruder.put("intruder", "again").await;
    assert!(
        matches!(r, Err(ClientError::CertificateRefused { .. })),
        "{r:?}"
    );

    // The other way round: a client whose CA file is another cluster's fails at once,
    // naming the fix, instead of retrying until its timeout.
    let lost = raft_server::Client::new(
        (1..=3).map(|i| cluster.addr(i)).collect(),
        raft_net_quic::Identity::load(
            &dir.join("other/ca.crt"),
            &dir.join("certs/client-test.crt"),
            &dir.join("certs/client-test.key"),
        )
        .expect("identity"),
        ClientOptions {
            timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        },
    )
    .expect("client");
    let started = Instant::now();
    let r = lost.put("lost", "client").await;
    eprintln!("untrusted after {:?}: {r:?}", started.elapsed());
    match &r {
        Err(e @ ClientError::UntrustedNode { .. }) => {
            assert!(e.to_string().contains("must be the cluster's CA"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "at once, not after retries"
    );

    assert_eq!(client.get("intruder").await.expect("get"), None);
    let logs: String = (1..=3).map(|id| cluster.log(id)).collect();
    assert!(
        logs.contains("refused a connection (TLS handshake failed)")
            && logs.contains("BadSignature"),
        "the nodes log why they refused the client:\n{logs}"
    );
}

/// The client protocol's lane: the calls of one client (and its clones) share one
/// stream; answers come back by id, out of order when they complete out of order; a
/// lane that sends garbage is closed without harming the connection's other streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_share_one_lane_and_a_garbled_lane_closes_alone() {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, |_| {});
    let client = cluster.client(Duration::from_secs(20));
    let leader = cluster.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;
    // 400 writes and reads at once through clones of one client: one connection, one
    // lane, every answer to its own call.
    let mut calls = Vec::new();
    for i in 0..200u32 {
        let c = client.clone();
        calls.push(tokio::spawn(async move {
            c.put(format!("lane-{i}"), format!("v{i}"))
                .await
                .map(|_| ())
        }));
    }
    for call in calls {
        call.await.expect("task").expect("put");
    }
    let mut reads = Vec::new();
    for i in 0..200u32 {
        let c = client.clone();
        reads.push(tokio::spawn(async move {
            (i, c.get(format!("lane-{i}")).await)
        }));
    }
    for read in reads {
        let (i, got) = read.await.expect("task");
        assert_eq!(
            got.expect("get"),
            Some(Bytes::from(format!("v{i}"))),
            "the answer to lane-{i} went to its caller"
        );
    }
    // A lane preamble followed by garbage: that stream is closed, the connection and
    // its other streams go on.
    let rt = raft_net_quic::tokio_runtime().expect("inside tokio");
    let conn = raft_net_quic::connect_client(&cluster.identity(), cluster.addr(leader), rt)
        .await
        .expect("connect");
    let (mut send, mut recv) = conn.connection.open_bi().await.expect("stream");
    let mut garbage = raft_server::proto::LANE_PREAMBLE.to_vec();
    garbage.extend_from_slice(&5u32.to_le_bytes());
    garbage.extend_from_slice(b"\x01\xff\xff\xff\xff");
    send.write_all(&garbage).await.expect("write");
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), recv.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Err(_)) | Ok(Ok(None))),
        "the garbled lane is closed: {closed:?}"
    );
    let (mut send, mut recv) = conn.connection.open_bi().await.expect("another stream");
    let frame = raft_server::proto::encode(&Request::Read {
        op: raft_server::proto::ReadOp::Get {
            key: Bytes::from("lane-7"),
        },
        consistency: Consistency::Linearizable,
    })
    .expect("encode");
    send.write_all(&frame).await.expect("write");
    let _ = send.finish();
    let body = raft_server::proto::read_frame(&mut recv)
        .await
        .expect("answer");
    let answer: Response = raft_server::proto::decode(&body).expect("decode");
    assert_eq!(
        answer,
        Response::Value {
            value: Some(Bytes::from("v7"))
        },
        "the connection still serves"
    );
}

//! The fault suite: five real `raft-server` processes in their own network namespaces,
//! clients appending and reading while a nemesis breaks things, then the whole history
//! checked for linearizability (raft-sim's checker) and every acknowledged write looked
//! up after healing. Needs root (network namespaces, iptables, mount); run by
//! `.ci/run` as
//!
//! ```sh
//! cargo test -p quorum-raft-server --test faults -- --ignored --test-threads=1 --nocapture
//! ```
//!
//! Without root the tests say so loudly and pass (outside CI) or fail (with `CI` set).
//! A failure keeps the directory with the history, the nemesis schedule and the
//! server logs, and prints its path.

#![allow(clippy::print_stderr)]

#[path = "support/netns.rs"]
mod netns;
mod support;

use netns::{NODES, NetCluster, cut, drop_from, heal, setup_network, teardown_network, wait_for};
use raft_proto::{Bytes, NodeId};
use raft_server::proto::Consistency;
use raft_server::{Client, ClientError, ClientOptions};
use raft_sim::linearizability::{CheckResult, KvOp, KvOutput, Operation, Outcome, check};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEYS: u64 = 5;
const WORKERS: u64 = 6;

/// Whether to run: root, or a loud skip (a failure in CI).
fn may_run(name: &str) -> bool {
    if netns::is_root() {
        return true;
    }
    let msg = format!(
        "!!!! SKIPPED {name}: the fault suite needs root (network namespaces, iptables, mount) !!!!"
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: this must run)");
    }
    eprintln!("{msg}");
    false
}

/// Appended values are written as `hex,` tokens; a value reads back as their list.
fn parse_appends(v: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(v)
        .split(',')
        .filter(|t| !t.is_empty())
        .filter_map(|t| u64::from_str_radix(t, 16).ok())
        .collect()
}

struct History {
    started: Instant,
    ops: Mutex<Vec<Operation>>,
    acked: Mutex<BTreeMap<u64, BTreeSet<u64>>>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl History {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
    fn count(&self, what: &'static str) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(what)
            .or_default() += 1;
    }
}

/// One client: appends (unique values) and linearizable gets on a few keys.
async fn worker(
    id: u64,
    addrs: Vec<std::net::SocketAddr>,
    identity: raft_net_quic::Identity,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    next_value: Arc<AtomicU64>,
) {
    let options = ClientOptions {
        timeout: Duration::from_secs(4),
        attempt_timeout: Duration::from_millis(1500),
        backoff: (Duration::from_millis(20), Duration::from_millis(300)),
        ..ClientOptions::default()
    };
    let Ok(client) = Client::new(addrs, identity, options) else {
        return;
    };
    let mut rng = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while !stop.load(Ordering::Relaxed) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let key = rng % KEYS;
        let key_bytes = Bytes::from(format!("key{key}"));
        let invoke = history.now();
        if rng % 10 < 6 {
            let value = next_value.fetch_add(1, Ordering::Relaxed);
            let r = client
                .append(key_bytes, Bytes::from(format!("{value:x},")))
                .await;
            let outcome = match &r {
                Ok(_) => {
                    history.count("append ok");
                    history
                        .acked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(key)
                        .or_default()
                        .insert(value);
                    Some(Outcome::Ok {
                        ret: history.now(),
                        output: KvOutput::Unit,
                    })
                }
                Err(e) if e.outcome_unknown() => {
                    history.count("append unknown");
                    Some(Outcome::Unknown)
                }
                Err(_) => {
                    history.count("append failed");
                    None
                }
            };
            if let Some(outcome) = outcome {
                history
                    .ops
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Operation {
                        client: id,
                        key,
                        op: KvOp::Append { value },
                        invoke,
                        outcome,
                    });
            }
        } else {
            match client.get_with(key_bytes, Consistency::Linearizable).await {
                Ok(v) => {
                    history.count("get ok");
                    let output = KvOutput::Value(v.map(|v| parse_appends(&v)));
                    history
                        .ops
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Operation {
                            client: id,
                            key,
                            op: KvOp::Get,
                            invoke,
                            outcome: Outcome::Ok {
                                ret: history.now(),
                                output,
                            },
                        });
                }
                Err(_) => history.count("get failed"),
            }
        }
    }
}

/// The current leader, as the nodes that answer see it.
async fn leader(client: &Client, cluster: &NetCluster, among: &[u64]) -> Option<u64> {
    let mut seen = BTreeMap::<u64, usize>::new();
    for &id in among {
        if let Ok(s) = client.status_of(cluster.addr(id)).await
            && s.role == "Leader"
        {
            *seen.entry(s.id.0).or_default() += 1;
        }
    }
    seen.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id)
}

/// What a nemesis does, step by step, logged for replay.
struct Schedule {
    started: Instant,
    text: String,
}

impl Schedule {
    fn log(&mut self, what: impl AsRef<str>) {
        let line = format!(
            "{:>8.3}s  {}",
            self.started.elapsed().as_secs_f64(),
            what.as_ref()
        );
        eprintln!("nemesis: {line}");
        self.text.push_str(&line);
        self.text.push('\n');
    }
}

type Nemesis = for<'a> fn(
    &'a mut NetCluster,
    &'a Client,
    &'a mut Schedule,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), String>> + 'a>,
>;

/// Runs `nemesis` while clients work, heals, checks. Panics with the kept directory on a
/// violation.
fn run_nemesis(
    name: &str,
    small_disk: Option<u64>,
    faketime: Option<(u64, &str)>,
    nemesis: Nemesis,
) {
    run_nemesis_with(name, small_disk, faketime, small_snapshots, nemesis);
}

fn small_snapshots(c: &mut raft_server::ServerConfig) {
    c.snapshot_entries = 2_000;
}

/// Linearizable reads served from the leader's lease (`lease_reads`).
fn lease_reads(c: &mut raft_server::ServerConfig) {
    small_snapshots(c);
    c.lease_reads = true;
}

/// [`run_nemesis`] on nodes whose configuration `tweak` changes.
fn run_nemesis_with(
    name: &str,
    small_disk: Option<u64>,
    faketime: Option<(u64, &str)>,
    tweak: fn(&mut raft_server::ServerConfig),
    nemesis: Nemesis,
) {
    if !may_run(name) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async move {
        let _serial = support::serial().await;
        setup_network(NODES).unwrap_or_else(|e| panic!("set-up: {e}"));
        let mut cluster = NetCluster::create(NODES, small_disk, faketime, tweak)
            .unwrap_or_else(|e| panic!("{e}"));
        for id in 1..=NODES {
            cluster.start(id).unwrap_or_else(|e| panic!("{e}"));
        }
        let identity = raft_net_quic::Identity::load(
            &cluster.dir.join("certs/ca.crt"),
            &cluster.dir.join("certs/client-test.crt"),
            &cluster.dir.join("certs/client-test.key"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let addrs: Vec<_> = (1..=NODES).map(|i| cluster.addr(i)).collect();
        let admin = Client::new(
            addrs.clone(),
            identity.clone(),
            ClientOptions {
                timeout: Duration::from_secs(10),
                attempt_timeout: Duration::from_secs(2),
                ..ClientOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let all: Vec<u64> = (1..=NODES).collect();
        let up = wait_for(Duration::from_secs(30), async || leader(&admin, &cluster, &all).await.is_some()).await;
        assert!(up, "no leader at the start:\n{}", cluster.log_tails(20));

        let history = Arc::new(History {
            started: Instant::now(),
            ops: Mutex::new(Vec::new()),
            acked: Mutex::new(BTreeMap::new()),
            counts: Mutex::new(BTreeMap::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let next_value = Arc::new(AtomicU64::new(1));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                tokio::spawn(worker(
                    w,
                    addrs.clone(),
                    identity.clone(),
                    history.clone(),
                    stop.clone(),
                    next_value.clone(),
                ))
            })
            .collect();
        let mut schedule = Schedule {
            started: Instant::now(),
            text: String::new(),
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let outcome = nemesis(&mut cluster, &admin, &mut schedule).await;
        schedule.log("heal: every rule removed, every node running");
        let _ = heal(NODES);
        for id in 1..=NODES {
            let _ = cluster.signal(id, "-CONT");
            let _ = cluster.start(id);
        }
        if let Some((_, disk)) = &cluster.disk {
            let _ = disk.free();
        }
        // Clients keep going on the healed cluster, then stop.
        let healed = wait_for(Duration::from_secs(30), async || leader(&admin, &cluster, &all).await.is_some()).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            let _ = w.await;
        }

        // Every acknowledged append is there exactly once, on a linearizable read.
        let mut lost = Vec::new();
        let mut twice = Vec::new();
        for key in 0..KEYS {
            let value = admin
                .get(format!("key{key}"))
                .await
                .unwrap_or_else(|e| panic!("final read of key{key}: {e}"));
            let values = value.map(|v| parse_appends(&v)).unwrap_or_default();
            let mut seen = BTreeSet::new();
            for v in &values {
                if !seen.insert(*v) {
                    twice.push((key, *v));
                }
            }
            for v in history.acked.lock().unwrap_or_else(|e| e.into_inner()).get(&key).into_iter().flatten() {
                if !seen.contains(v) {
                    lost.push((key, *v));
                }
            }
        }
        let ops = history.ops.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let verdict = check(&ops, raft_sim::DEFAULT_LIN_BUDGET);
        let counts = history.counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        eprintln!(
            "{name}: {} operations checked ({counts:?}); linearizability: {verdict:?}; acknowledged appends lost: {}, applied twice: {}",
            ops.len(),
            lost.len(),
            twice.len()
        );
        let failed = outcome.is_err()
            || !healed
            || lost.len() + twice.len() > 0
            || !matches!(verdict, CheckResult::Linearizable);
        if failed {
            let dir = cluster.keep();
            let mut text = String::new();
            for op in &ops {
                let _ = writeln!(text, "{op:?}");
            }
            let _ = std::fs::write(dir.join("history.txt"), text);
            let _ = std::fs::write(dir.join("schedule.txt"), &schedule.text);
            panic!(
                "{name} failed: nemesis {outcome:?}, healed {healed}, lost {lost:?}, twice {twice:?}, verdict {verdict:?}\nhistory, schedule and logs kept in {}\n{}",
                dir.display(),
                cluster.log_tails(15)
            );
        }
        assert!(
            counts.get("append ok").copied().unwrap_or(0) > 50,
            "the clients made progress: {counts:?}"
        );
        drop(cluster);
        teardown_network();
    });
}

fn boxed<'a>(
    f: impl std::future::Future<Output = Result<(), String>> + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + 'a>> {
    Box::pin(f)
}

async fn current_leader(c: &NetCluster, admin: &Client) -> Result<u64, String> {
    let all: Vec<u64> = (1..=NODES).collect();
    for _ in 0..100 {
        if let Some(l) = leader(admin, c, &all).await {
            return Ok(l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("no leader".into())
}

const PHASE: Duration = Duration::from_secs(6);

/// Round `round`: SIGSTOP the current leader for `pause`, SIGCONT it, wait `after`.
async fn pause_leader(
    c: &NetCluster,
    admin: &Client,
    s: &mut Schedule,
    round: u32,
    pause: Duration,
    after: Duration,
) -> Result<(), String> {
    let l = current_leader(c, admin).await?;
    s.log(format!(
        "round {round}: SIGSTOP leader {l} for {} s",
        pause.as_secs()
    ));
    c.signal(l, "-STOP")?;
    tokio::time::sleep(pause).await;
    s.log(format!("SIGCONT {l}"));
    c.signal(l, "-CONT")?;
    tokio::time::sleep(after).await;
    Ok(())
}

/// Round `round`: cut the current leader off from every other node for `PHASE`, heal,
/// wait 2 s.
async fn isolate_leader(
    c: &NetCluster,
    admin: &Client,
    s: &mut Schedule,
    round: u32,
) -> Result<(), String> {
    let l = current_leader(c, admin).await?;
    s.log(format!(
        "round {round}: isolate leader {l} from every other node"
    ));
    for other in (1..=NODES).filter(|&o| o != l) {
        cut(l, other)?;
    }
    tokio::time::sleep(PHASE).await;
    s.log("heal");
    heal(NODES)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn faults_partition_isolating_the_leader() {
    run_nemesis("isolate the leader", None, None, |c, admin, s| {
        boxed(async move {
            for round in 0..3 {
                isolate_leader(c, admin, s, round).await?;
            }
            Ok(())
        })
    });
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn faults_partition_2_3_and_a_bridge() {
    run_nemesis("split 2|3, then a bridge", None, None, |_c, _admin, s| {
        boxed(async move {
            for (round, (a, b)) in [(vec![1, 2], vec![3, 4, 5]), (vec![4, 5], vec![1, 2, 3])]
                .into_iter()
                .enumerate()
            {
                s.log(format!("round {round}: split {a:?} | {b:?}"));
                for &x in &a {
                    for &y in &b {
                        cut(x, y)?;
                    }
                }
                tokio::time::sleep(PHASE).await;
                heal(NODES)?;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            s.log("bridge: 3 sees {1,2} and {4,5}, which do not see each other");
            for x in [1, 2] {
                for y in [4, 5] {
                    cut(x, y)?;
                }
            }
            tokio::time::sleep(PHASE * 2).await;
            Ok(())
        })
    });
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn faults_one_way_partition_of_the_leader() {
    run_nemesis(
        "one-way: the leader sends but cannot receive",
        None,
        None,
        |c, admin, s| {
            boxed(async move {
                for round in 0..2 {
                    let l = current_leader(c, admin).await?;
                    s.log(format!(
                        "round {round}: leader {l} receives nothing from the other nodes"
                    ));
                    for other in (1..=NODES).filter(|&o| o != l) {
                        drop_from(l, other)?;
                    }
                    tokio::time::sleep(PHASE).await;
                    heal(NODES)?;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Ok(())
            })
        },
    );
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn faults_kill_9_random_nodes_the_leader_and_a_majority() {
    run_nemesis(
        "kill -9 (random, leader, majority)",
        None,
        None,
        |c, admin, s| {
            boxed(async move {
                for (round, victim) in [2u64, 4].into_iter().enumerate() {
                    s.log(format!(
                        "round {round}: kill -9 node {victim}, restart after a while"
                    ));
                    c.crash_and_restart(victim, Duration::from_secs(3), Duration::from_secs(3))
                        .await?;
                }
                for round in 0..2 {
                    let l = current_leader(c, admin).await?;
                    s.log(format!("leader round {round}: kill -9 leader {l}"));
                    c.crash_and_restart(l, Duration::from_secs(3), Duration::from_secs(3))
                        .await?;
                }
                s.log("kill -9 a majority at once: 1, 3, 5");
                for v in [1, 3, 5] {
                    c.kill9(v);
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
                s.log("restart them");
                for v in [1, 3, 5] {
                    c.start(v)?;
                }
                tokio::time::sleep(Duration::from_secs(4)).await;
                Ok(())
            })
        },
    );
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn faults_pause_the_leader_past_the_election_timeout() {
    run_nemesis("SIGSTOP the leader", None, None, |c, admin, s| {
        boxed(async move {
            for round in 0..3 {
                let (pause, after) = (Duration::from_secs(4), Duration::from_secs(3));
                pause_leader(c, admin, s, round, pause, after).await?;
            }
            Ok(())
        })
    });
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn faults_lease_reads_while_the_leader_is_paused_or_isolated() {
    // Lease reads' two classic hazards, on real processes: a leader paused (SIGSTOP)
    // past the election timeout resumes believing its lease, and a leader cut off keeps
    // serving from it while the others elect a new one. Its clock is caught up before
    // any read (or its lease voided when the stall was too long to catch up on), and
    // the lease is shorter than the voters' patience: the history stays linearizable.
    run_nemesis_with(
        "lease reads: SIGSTOP and isolate the leader",
        None,
        None,
        lease_reads,
        |c, admin, s| {
            boxed(async move {
                for round in 0..2 {
                    let (pause, after) = (Duration::from_secs(3), Duration::from_secs(2));
                    pause_leader(c, admin, s, round, pause, after).await?;
                    isolate_leader(c, admin, s, round).await?;
                }
                Ok(())
            })
        },
    );
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn faults_clock_running_fast_on_one_node() {
    // Node 3's clocks (wall and monotonic) run at 3x: its timers fire early, it calls
    // elections sooner; PreVote and CheckQuorum keep it from disrupting, and its
    // clock never decides a session's expiry (that time comes from the leader's log).
    run_nemesis(
        "clock rate x3 on node 3",
        None,
        Some((3, "+0 x3")),
        |c, admin, s| {
            boxed(async move {
                for round in 0..2 {
                    let l = current_leader(c, admin).await?;
                    s.log(format!("round {round}: leader is {l}; kill -9 it to force an election with the fast clock around"));
                    c.crash_and_restart(l, Duration::from_secs(4), Duration::from_secs(3))
                        .await?;
                }
                Ok(())
            })
        },
    );
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn faults_full_disk_on_one_node_then_space_returns() {
    run_nemesis("full disk on node 2", Some(2), None, |c, admin, s| {
        boxed(async move {
            s.log("fill node 2's disk");
            if let Some((_, disk)) = &c.disk {
                disk.fill()?;
            }
            tokio::time::sleep(Duration::from_secs(8)).await;
            let log = std::fs::read_to_string(&c.nodes[&2].log_path).unwrap_or_default();
            let full: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("disk full") || l.contains("No space"))
                .collect();
            s.log(format!(
                "node 2 reported a full disk {} times; first: {:?}",
                full.len(),
                full.first()
            ));
            if full.is_empty() {
                return Err("node 2 never noticed its full disk: the nemesis did not bite".into());
            }
            let l = current_leader(c, admin).await?;
            s.log(format!(
                "the cluster goes on without node 2 (leader {l}); give the space back"
            ));
            if let Some((_, disk)) = &c.disk {
                disk.free()?;
            }
            // Node 2 waited instead of dying: it catches up once space is back.
            let target = admin
                .status_of(c.addr(l))
                .await
                .map_err(|e| e.to_string())?
                .committed;
            for _ in 0..150 {
                if let Ok(st) = admin.status_of(c.addr(2)).await
                    && st.applied >= target
                {
                    s.log(format!(
                        "node 2 applied {} (leader had committed {target})",
                        st.applied
                    ));
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(format!(
                "node 2 did not catch up to {target} after space returned"
            ))
        })
    });
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn faults_membership_changes_during_a_partition() {
    run_nemesis(
        "remove and re-add during partitions",
        None,
        None,
        |c, admin, s| {
            boxed(async move {
                let l = current_leader(c, admin).await?;
                let victim = (1..=NODES).find(|&n| n != l).unwrap_or(1);
                let far = (1..=NODES)
                    .rev()
                    .find(|&n| n != l && n != victim)
                    .unwrap_or(5);
                s.log(format!(
                    "cut node {far} off, then remove node {victim} (leader {l})"
                ));
                for other in (1..=NODES).filter(|&o| o != far) {
                    cut(far, other)?;
                }
                admin
                    .remove(NodeId(victim))
                    .await
                    .map_err(|e| format!("remove {victim}: {e}"))?;
                tokio::time::sleep(PHASE).await;
                s.log("heal");
                heal(NODES)?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                s.log(format!(
                    "split {{{l}}} from two others while adding {victim} back as a learner"
                ));
                c.kill9(victim);
                // A removed node's data must not be reused: it comes back empty.
                let data = c.dir.join(format!("node{victim}"));
                let _ = std::fs::remove_dir_all(&data);
                let cfg = c.nodes[&victim].config_path.clone();
                let text = std::fs::read_to_string(&cfg).map_err(|e| e.to_string())?;
                std::fs::write(&cfg, text.replace("join = false", "join = true"))
                    .map_err(|e| e.to_string())?;
                c.start(victim)?;
                let addr = c.addr(victim).to_string();
                let mut added = false;
                for _ in 0..20 {
                    match admin.add_learner(NodeId(victim), &addr).await {
                        Ok(()) => {
                            added = true;
                            break;
                        }
                        Err(e) => {
                            s.log(format!("add-learner {victim}: {e}; retrying"));
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
                if !added {
                    return Err(format!("node {victim} could not be added back"));
                }
                tokio::time::sleep(Duration::from_secs(4)).await;
                for _ in 0..20 {
                    match admin.promote(NodeId(victim)).await {
                        Ok(()) => {
                            s.log(format!("node {victim} promoted"));
                            return Ok(());
                        }
                        Err(ClientError::Refused(e)) => {
                            s.log(format!("promote {victim}: {e}; retrying"));
                        }
                        Err(e) => s.log(format!("promote {victim}: {e}; retrying")),
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(format!("node {victim} was never promoted"))
            })
        },
    );
}

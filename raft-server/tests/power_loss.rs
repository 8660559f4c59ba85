//! The power-loss suite (issue 14): a node must restart with every acknowledged write
//! after a power cut, and never brick itself.
//!
//! `kill -9` alone never tests `fsync` (the OS page cache survives it), so each run
//! builds a 3-node cluster of real `raft-server` processes on 127.0.0.1 where node B
//! (2) keeps its data on ext4 on a loop device (see `support/power.rs`). A (1) leads,
//! C (3) is stopped with SIGSTOP, so every acknowledged write needs B's log. Under a
//! load of concurrent clients (a unique key `k<n>` and a unique value per write), B's
//! power is cut: its disk frozen, the process killed, the image copied. Then A is lost
//! for good (killed, its data deleted), C resumes, and B restarts from the copy, with a
//! new boot id as after a reboot. B and C (2 of 3) must serve every acknowledged
//! write, with no value that no client wrote.
//!
//! Scenarios, one test each (names say what they check): cuts during steady writes,
//! during B's own snapshot build, shortly after B installed a snapshot from the
//! leader, inside delayed metadata `fsync`s (an `LD_PRELOAD` shim), and one restart
//! with the same boot id. The teeth: the same harness with a shim that turns every
//! `fsync` into a no-op on B must see acknowledged writes lost (or B not starting).
//! The last test prints the table of every run. Needs root (loop devices, mount,
//! `unshare`, `chattr`) and gcc; run by `.ci/run` as
//!
//! ```sh
//! cargo test -p quorum-raft-server --test power_loss -- --ignored --test-threads=1 --nocapture
//! ```
//!
//! Without root the tests say so loudly and pass (outside CI) or fail (with `CI` set).
//! A failed run keeps its directory (the image as it was at the cut, `b-cut.img`; the
//! one B restarted from, `b-restart.img`; every node's log per life) and prints its
//! path (`PL_KEEP=1` keeps every run's). Run directories go under `/var/tmp` (or
//! `PL_DIR`). `PL_SEED=<n>` fixes the random choices (cut moments, values).

#![allow(clippy::print_stderr)]

#[path = "support/netns.rs"]
mod netns;
#[path = "support/power.rs"]
mod power;
mod support;

use power::{B, Cut, Launch, PowerCluster};
use raft_proto::{Bytes, NodeId};
use raft_server::proto::{AdminOp, Consistency, Request};
use raft_server::{Client, ClientError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const A: u64 = 1;
const C: u64 = 3;
/// B's disk: a sparse image (only what is written takes space).
const DISK_MB: u64 = 512;
/// Concurrent writers, each with its own client (and session).
const WRITERS: u64 = 6;
/// How long B has, after its restart, to answer and to elect a leader with C.
const RESTART_WAIT: Duration = Duration::from_secs(20);
/// How long the shim of scenario 4 delays a metadata `fsync` on B: longer than
/// ext4's journal commit interval (5 s), so that a commit falls inside.
const META_DELAY: Duration = Duration::from_millis(6_000);
/// B's log lines from the first this-many seconds of its restart are recorded.
const STARTUP_WINDOW: Duration = Duration::from_secs(4);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether to run: root with the tools, or a loud skip (a failure in CI).
fn may_run(name: &str) -> bool {
    let msg = if !netns::is_root() {
        format!(
            "!!!! SKIPPED {name}: the power-loss suite needs root (loop devices, mount, unshare, chattr) !!!!"
        )
    } else {
        let missing: Vec<&str> = [
            "losetup",
            "blockdev",
            "unshare",
            "mkfs.ext4",
            "chattr",
            "gcc",
            "cmp",
        ]
        .into_iter()
        .filter(|t| netns::sh("sh", &["-c", &format!("command -v {t}")]).is_err())
        .collect();
        if missing.is_empty() {
            return true;
        }
        // As root, missing tools are a set-up error, not a reason to skip.
        panic!(
            "{name}: missing tools {missing:?} (apt-get install util-linux e2fsprogs diffutils gcc)"
        );
    };
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: this must run)");
    }
    eprintln!("{msg}");
    false
}

/// xorshift64*: the random choices of a run, reproducible from its seed.
struct Rng(u64);

impl Rng {
    /// Spreads a seed (splitmix64), so that close seeds give unrelated sequences.
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[lo, hi)` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

fn base_seed() -> u64 {
    std::env::var("PL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Cut at a random moment 3-8 s into steady writes.
    Steady,
    /// Cut while B builds its own snapshot (a 10 MiB state, small `snapshot_entries`).
    OwnSnapshot,
    /// Cut 0.2-2 s after B installed a snapshot sent by the leader.
    AfterInstall,
    /// Cut inside a delayed `fsync` of a `.meta`/`CURRENT`/`DIRTY` file on B, once
    /// the filesystem's journal committed (so the new file's entry is on disk).
    MetaFsync,
    /// Steady writes with snapshots, B restarted with the same boot id.
    SameBootId,
    /// Steady writes with every `fsync` on B a no-op: must be caught.
    Teeth,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "1 steady writes",
            Scenario::OwnSnapshot => "2 B's own snapshot",
            Scenario::AfterInstall => "3 after install",
            Scenario::MetaFsync => "4 meta fsync",
            Scenario::SameBootId => "5 same boot id",
            Scenario::Teeth => "teeth: no-op fsync",
        }
    }

    fn snapshot_entries(self) -> u64 {
        match self {
            Scenario::Steady | Scenario::Teeth => 20_000,
            Scenario::OwnSnapshot | Scenario::AfterInstall | Scenario::SameBootId => 1_500,
            Scenario::MetaFsync => 800,
        }
    }

    /// B's own `snapshot_entries`: in scenario 3 B builds no snapshot of its own, so
    /// that the one it received stays its newest until the cut.
    fn b_snapshot_entries(self) -> u64 {
        match self {
            Scenario::AfterInstall => 1_000_000,
            s => s.snapshot_entries(),
        }
    }

    fn new_boot_id(self) -> bool {
        self != Scenario::SameBootId
    }
}

/// Every write the clients attempted, and which were acknowledged.
#[derive(Default)]
struct History {
    attempted: Mutex<BTreeMap<String, String>>,
    acked: Mutex<BTreeMap<String, String>>,
    /// Writes the server answered with a definite "did not take effect".
    refused: Mutex<BTreeSet<String>>,
    unknown: AtomicU64,
}

/// The load: `WRITERS` clients writing `k<n>` = `v<n>-<random>[-<padding>]`.
struct Load {
    stop: Arc<AtomicBool>,
    pad: Arc<AtomicUsize>,
    history: Arc<History>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &PowerCluster, seed: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let pad = Arc::new(AtomicUsize::new(0));
        let history = Arc::new(History::default());
        let next = Arc::new(AtomicU64::new(1));
        let tasks = (0..WRITERS)
            .map(|w| {
                let client = cluster.client(
                    &[A, B, C],
                    Duration::from_secs(3),
                    Duration::from_millis(1500),
                );
                let (stop, pad, history, next) =
                    (stop.clone(), pad.clone(), history.clone(), next.clone());
                let mut rng = Rng::new(seed ^ (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let key = format!("k{n}");
                        let mut value = format!("v{n}-{:016x}", rng.next());
                        let p = pad.load(Ordering::Relaxed);
                        if p > 0 {
                            value.push('-');
                            value.extend(std::iter::repeat_n('p', p));
                        }
                        lock(&history.attempted).insert(key.clone(), value.clone());
                        match client.put(key.clone(), value.clone()).await {
                            Ok(_) => {
                                lock(&history.acked).insert(key, value);
                            }
                            Err(e) if e.outcome_unknown() => {
                                history.unknown.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                lock(&history.refused).insert(key);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            pad,
            history,
            tasks,
        }
    }

    fn acked(&self) -> usize {
        lock(&self.history.acked).len()
    }

    /// Stops issuing writes; a write in flight may still be acknowledged (A may hold
    /// B's acknowledgement of it) for `grace`, then the writers are dropped.
    async fn finish(self, grace: Duration) -> Arc<History> {
        self.stop.store(true, Ordering::Relaxed);
        let started = Instant::now();
        for t in &self.tasks {
            while !t.is_finished() && started.elapsed() < grace {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.history
    }
}

/// Every key with prefix `k`, page by page.
async fn scan_all(client: &Client) -> Result<BTreeMap<String, String>, ClientError> {
    let end = Bytes::from("l");
    let mut start = Bytes::from("k");
    let mut out = BTreeMap::new();
    loop {
        let (items, more) = client
            .scan(
                start.clone(),
                Some(end.clone()),
                10_000,
                Consistency::Linearizable,
            )
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

/// One run's line in the table.
#[derive(Clone, Debug)]
struct Row {
    run: usize,
    scenario: &'static str,
    seed: u64,
    cut: String,
    acked: usize,
    lost: Option<usize>,
    never_written: Option<usize>,
    /// Whether B started again after the cut (`None`: the run did not get that far).
    b_started: Option<bool>,
    notable: Vec<String>,
    /// Why the run failed (empty: it passed).
    problems: Vec<String>,
    /// Other observations (freeze, boot id, ...).
    notes: Vec<String>,
    kept: Option<PathBuf>,
    secs: f64,
}

impl Row {
    /// The harness itself did not work (set-up, the freeze, the boot id).
    fn harness_failed(&self) -> bool {
        self.problems
            .iter()
            .any(|p| p.starts_with("set-up") || p.contains("freeze") || p.contains("boot id"))
    }

    /// The harness saw damage: what the teeth must show.
    fn damage_seen(&self) -> bool {
        self.b_started == Some(false)
            || self.lost.is_some_and(|l| l > 0)
            || self.never_written.is_some_and(|n| n > 0)
    }
}

static TABLE: Mutex<Vec<Row>> = Mutex::new(Vec::new());
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// A log line without its timestamp, its target's module path and the run
/// directory, shortened to `max` characters.
fn short(line: &str, max: usize) -> String {
    let mut l = line.trim();
    // "2025-01-01T00:00:00.000000Z  WARN raft_storage_lmdb::state_machine: message"
    if let Some((ts, rest)) = l.split_once("Z ")
        && ts.len() > 18
        && ts.as_bytes()[4] == b'-'
    {
        l = rest.trim_start();
    }
    let mut out = String::new();
    if let Some((level, rest)) = l.split_once(' ')
        && matches!(level, "WARN" | "ERROR" | "INFO")
        && let Some((target, msg)) = rest.split_once(": ")
        && target.contains("::")
        && !target.contains(' ')
    {
        out.push_str(level);
        out.push(' ');
        out.push_str(msg);
    } else {
        out.push_str(l);
    }
    // "/tmp/raft-power-loss-XXXXXX/b-mnt/data/" -> "<B>/"
    while let Some(at) = out.find(power::PREFIX) {
        let start = out[..at]
            .rfind(|c: char| c.is_whitespace() || c == '=')
            .map_or(0, |i| i + 1);
        let end = out[at..]
            .find("/data/")
            .map(|i| at + i + "/data/".len())
            .or_else(|| out[at..].find(char::is_whitespace).map(|i| at + i))
            .unwrap_or(out.len());
        out.replace_range(start..end, "<B>/");
    }
    if out.chars().count() > max {
        format!("{}...", out.chars().take(max).collect::<String>())
    } else {
        out
    }
}

/// Warnings and errors of B's start-up, except the transport's about peers' stale
/// connections (A is gone).
fn notable(line: &str) -> bool {
    if line.contains("raft_net_quic") {
        return false;
    }
    line.contains(" WARN ")
        || line.contains(" ERROR ")
        || line.starts_with("error")
        || line.contains("rebuilt")
        || line.contains("panicked")
}

/// Polls `f` every `every` for at most `limit`.
async fn poll<T>(limit: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Asks node `id` (and no other) to take a snapshot now.
async fn snapshot_on(cluster: &PowerCluster, client: &Client, id: u64) {
    let _ = client
        .request_once(cluster.addr(id), &Request::Admin(AdminOp::Snapshot))
        .await;
}

/// A snapshot file B is building (`snapshots/<id>.tmp`), if any.
fn b_building(cluster: &PowerCluster) -> Option<String> {
    let dir = cluster.b_mountpoint().join("data/sm/snapshots");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.ends_with(".tmp").then_some(name)
    })
}

/// The shims, compiled once per test into a temporary directory.
struct Shims {
    _dir: tempfile::TempDir,
    noop: PathBuf,
    delay: PathBuf,
}

fn build_shims() -> Shims {
    let dir = tempfile::Builder::new()
        .prefix("raft-power-loss-shims-")
        .tempdir_in(power::base_dir())
        .unwrap_or_else(|e| panic!("a directory for the shims: {e}"));
    let noop = power::build_shim("noop_fsync", dir.path())
        .unwrap_or_else(|e| panic!("compile the no-op fsync shim: {e}"));
    let delay = power::build_shim("delay_meta_fsync", dir.path())
        .unwrap_or_else(|e| panic!("compile the delayed metadata fsync shim: {e}"));
    Shims {
        _dir: dir,
        noop,
        delay,
    }
}

/// Runs the scenario up to B's restart and the final check; returns its row.
async fn run_once(scenario: Scenario, seed: u64, shims: &Shims) -> Row {
    let run = RUNS.fetch_add(1, Ordering::Relaxed) + 1;
    let started = Instant::now();
    let mut row = Row {
        run,
        scenario: scenario.name(),
        seed,
        cut: String::new(),
        acked: 0,
        lost: None,
        never_written: None,
        b_started: None,
        notable: Vec::new(),
        problems: Vec::new(),
        notes: Vec::new(),
        kept: None,
        secs: 0.0,
    };
    eprintln!("\n==== run {run}: {} (seed {seed}) ====", scenario.name());
    let mut cluster = match PowerCluster::create(DISK_MB, &|c| {
        c.snapshot_entries = if c.id == B {
            scenario.b_snapshot_entries()
        } else {
            scenario.snapshot_entries()
        };
    }) {
        Ok(c) => c,
        Err(e) => {
            row.problems.push(format!("set-up: {e}"));
            return row;
        }
    };
    if let Err(e) = drive(scenario, seed, shims, &mut cluster, &mut row).await {
        row.problems.push(e);
    }
    row.secs = started.elapsed().as_secs_f64();
    let failed = if scenario == Scenario::Teeth {
        !row.damage_seen() || row.harness_failed()
    } else {
        !row.problems.is_empty()
    };
    if failed || std::env::var_os("PL_KEEP").is_some() {
        let dir = cluster.keep();
        row.kept = Some(dir.clone());
        let _ = std::fs::write(dir.join("run.txt"), format!("{row:#?}\n"));
    }
    drop(cluster);
    print_run(&row);
    lock(&TABLE).push(row.clone());
    row
}

/// The body of a run: every step that can fail returns its reason.
async fn drive(
    scenario: Scenario,
    seed: u64,
    shims: &Shims,
    cluster: &mut PowerCluster,
    row: &mut Row,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let marker = cluster.dir.join("shim-marker.log");
    let armed = cluster.dir.join("shim-armed");
    let b_launch = match scenario {
        Scenario::MetaFsync => Launch {
            preload: Some(shims.delay.clone()),
            env: vec![
                ("PL_SHIM_MARKER".into(), marker.display().to_string()),
                (
                    "PL_SHIM_DELAY_MS".into(),
                    META_DELAY.as_millis().to_string(),
                ),
                ("PL_SHIM_ARMED".into(), armed.display().to_string()),
            ],
            ..Launch::default()
        },
        _ => Launch::default(),
    };
    for id in [A, B, C] {
        let launch = if id == B {
            b_launch.clone()
        } else {
            Launch::default()
        };
        cluster.spawn(id, &launch)?;
    }
    let admin = cluster.client(&[A, B, C], Duration::from_secs(10), Duration::from_secs(2));
    let leader = cluster
        .wait_leader(&admin, &[A, B, C], Duration::from_secs(30))
        .await
        .ok_or("no leader among the three nodes within 30 s")?;
    if leader != A {
        // A leads: B and C are followers (best effort; the checks hold either way).
        for _ in 0..5 {
            if admin.transfer_leader(NodeId(A)).await.is_ok()
                && cluster
                    .wait_leader(&admin, &[A, B, C], Duration::from_secs(5))
                    .await
                    == Some(A)
            {
                break;
            }
        }
    }
    // Everyone has applied the start-up entries before C is frozen.
    let commit = cluster
        .status(&admin, A)
        .await
        .map(|s| s.committed)
        .unwrap_or(0);
    for id in [B, C] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while cluster
            .status(&admin, id)
            .await
            .is_none_or(|s| s.applied < commit)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if scenario == Scenario::Teeth {
        // B's first life made its files durable (identity, markers); its second one
        // runs with every fsync a no-op: what it acknowledges from now on is only in
        // the page cache.
        cluster.stop(B);
        cluster.spawn(
            B,
            &Launch {
                preload: Some(shims.noop.clone()),
                ..Launch::default()
            },
        )?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while cluster
            .status(&admin, B)
            .await
            .is_none_or(|s| s.applied < commit || s.leader.is_none())
        {
            if Instant::now() > deadline {
                return Err("B did not come back with the no-op fsync shim within 15 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let load = match scenario {
        Scenario::AfterInstall => {
            let load = Load::start(cluster, rng.next());
            row.cut = cut_after_install(cluster, &admin, &load, &mut rng).await?;
            load
        }
        _ => {
            cluster.signal(C, "-STOP")?;
            let load = Load::start(cluster, rng.next());
            row.cut = match scenario {
                Scenario::OwnSnapshot => {
                    cut_during_own_snapshot(cluster, &admin, &load, &mut rng).await
                }
                Scenario::MetaFsync => {
                    std::fs::write(&armed, b"").map_err(|e| format!("arm the shim: {e}"))?;
                    cut_inside_meta_fsync(cluster, &admin, &marker, &mut rng).await
                }
                _ => {
                    let at = rng.millis(3_000, 8_000);
                    tokio::time::sleep(at).await;
                    format!("{:.2}s into the load", at.as_secs_f64())
                }
            };
            load
        }
    };
    // The cut itself.
    let cut: Cut = cluster.cut_power()?;
    let leader_at_cut = cluster.status(&admin, A).await.and_then(|s| s.leader);
    let history = load.finish(Duration::from_millis(2500)).await;
    row.acked = lock(&history.acked).len();
    row.notes.push(format!(
        "leader seen by A right after the cut {:?}; {} attempted, {} unknown, {} refused; image copied {} ms after the cut",
        leader_at_cut.map(|l| l.0),
        lock(&history.attempted).len(),
        history.unknown.load(Ordering::Relaxed),
        lock(&history.refused).len(),
        cut.copied_after.as_millis()
    ));
    if !cut.frozen || !cut.held {
        row.problems.push(format!(
            "the disk freeze did not hold (frozen {}, image unchanged after unmount {}): the copy may hold writes from after the cut",
            cut.frozen, cut.held
        ));
    }

    // A is lost for good; C resumes; B reboots from what reached its disk.
    cluster.kill9(A);
    let a_data = cluster.nodes[&A].config.data_dir.clone();
    std::fs::remove_dir_all(&a_data).map_err(|e| format!("delete A's data: {e}"))?;
    cluster.restore_b_disk()?;
    let boot_id = power::new_uuid();
    let mut launch = Launch::default();
    if scenario.new_boot_id() {
        let file = cluster.dir.join("b-boot-id");
        std::fs::write(&file, format!("{boot_id}\n")).map_err(|e| format!("boot id: {e}"))?;
        launch.boot_id_file = Some(file);
    }
    cluster.signal(C, "-CONT")?;
    cluster.spawn(B, &launch)?;
    let spawned = Instant::now();
    let reader = cluster.client(&[B, C], Duration::from_secs(30), Duration::from_secs(3));
    // Started: it answers; or it exits (refused to start).
    let mut exit = None;
    let mut answered = false;
    while spawned.elapsed() < RESTART_WAIT {
        if let Some(status) = cluster.exited(B) {
            exit = Some(status);
            break;
        }
        if cluster.status(&reader, B).await.is_some() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    row.b_started = Some(answered);
    let mut leader_after = None;
    if answered {
        leader_after = cluster.wait_leader(&reader, &[B, C], RESTART_WAIT).await;
    }
    if let Some(rest) = STARTUP_WINDOW.checked_sub(spawned.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let lines = cluster.log_lines(B);
    row.notable = lines
        .iter()
        .filter(|l| notable(l))
        .map(|l| short(l, 200))
        .collect();
    if let Some(status) = exit.or_else(|| cluster.exited(B)) {
        row.b_started = Some(false);
        row.problems.push(format!(
            "B exited after its restart ({status}); its last lines:\n      {}",
            lines
                .iter()
                .rev()
                .take(4)
                .rev()
                .map(|l| short(l, 300))
                .collect::<Vec<_>>()
                .join("\n      ")
        ));
        return Ok(());
    }
    if !answered {
        row.problems.push(format!(
            "B did not answer within {RESTART_WAIT:?} of its restart"
        ));
        return Ok(());
    }
    // The state machine writes the boot id it read into its DIRTY file at start
    // (a line `boot <id>`, then the directory's identity).
    let dirty = cluster.b_mountpoint().join("data/sm/DIRTY");
    let seen = std::fs::read_to_string(&dirty)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("boot ").map(str::to_string))
        .unwrap_or_default();
    let expected = if scenario.new_boot_id() {
        boot_id
    } else {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    if seen.trim() == expected {
        row.notes.push(format!(
            "B read the {} boot id",
            if scenario.new_boot_id() {
                "new"
            } else {
                "machine's (same)"
            }
        ));
    } else {
        row.problems.push(format!(
            "B did not read the expected boot id {expected}: its DIRTY file holds {:?}",
            seen.trim()
        ));
    }
    let Some(leader_after) = leader_after else {
        row.problems
            .push(format!("B and C elected no leader within {RESTART_WAIT:?}"));
        return Ok(());
    };
    row.notes
        .push(format!("leader after the restart: {leader_after}"));
    let read = match scan_all(&reader).await {
        Ok(r) => r,
        Err(e) => {
            row.problems.push(format!(
                "the final linearizable scan through B and C failed: {e}"
            ));
            return Ok(());
        }
    };
    let attempted = lock(&history.attempted);
    let acked = lock(&history.acked);
    let refused = lock(&history.refused);
    let lost: Vec<(&String, &String, Option<&String>)> = acked
        .iter()
        .filter(|(k, v)| read.get(*k) != Some(*v))
        .map(|(k, v)| (k, v, read.get(k)))
        .collect();
    let never: Vec<(&String, &String)> = read
        .iter()
        .filter(|(k, v)| attempted.get(*k) != Some(*v))
        .collect();
    let refused_present: Vec<&String> = refused.iter().filter(|k| read.contains_key(*k)).collect();
    row.lost = Some(lost.len());
    row.never_written = Some(never.len());
    if !lost.is_empty() {
        row.problems.push(format!(
            "{} of {} acknowledged writes lost; the first: {:?}",
            lost.len(),
            acked.len(),
            lost.iter()
                .take(3)
                .map(|(k, v, got)| format!(
                    "{k}={} read {:?}",
                    short(v, 30),
                    got.map(|g| short(g, 30))
                ))
                .collect::<Vec<_>>()
        ));
    }
    if !never.is_empty() {
        row.problems.push(format!(
            "{} values read that no client wrote; the first: {:?}",
            never.len(),
            never
                .iter()
                .take(3)
                .map(|(k, v)| format!("{k}={}", short(v, 30)))
                .collect::<Vec<_>>()
        ));
    }
    if !refused_present.is_empty() {
        row.problems.push(format!(
            "{} writes answered \"did not take effect\" are present: {:?}",
            refused_present.len(),
            refused_present.iter().take(3).collect::<Vec<_>>()
        ));
    }
    if cluster.exited(B).is_some() {
        row.problems
            .push("B exited after serving the final read".into());
    }
    Ok(())
}

/// Scenario 2: a 10 MiB state (so that a snapshot takes a while to write), B builds
/// snapshots every 1,500 entries; cut while a `.tmp` snapshot file of B's exists.
async fn cut_during_own_snapshot(
    cluster: &PowerCluster,
    admin: &Client,
    load: &Load,
    rng: &mut Rng,
) -> String {
    // 640 writes of 16 KiB first: the state every snapshot writes.
    load.pad.store(16 << 10, Ordering::Relaxed);
    let _ = poll(Duration::from_secs(30), Duration::from_millis(50), || {
        (load.acked() >= 640).then_some(())
    })
    .await;
    load.pad.store(0, Ordering::Relaxed);
    tokio::time::sleep(rng.millis(2_000, 4_000)).await;
    let started = Instant::now();
    let mut asked = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Some(name) = poll(
            Duration::from_millis(1500),
            Duration::from_millis(2),
            || b_building(cluster),
        )
        .await
        {
            let seen = Instant::now();
            tokio::time::sleep(rng.millis(0, 80)).await;
            let still = b_building(cluster).is_some_and(|n| n == name);
            return format!(
                "{} ms after B began a snapshot file ({})",
                seen.elapsed().as_millis(),
                if still {
                    "still writing it"
                } else {
                    "it was done"
                }
            );
        }
        if asked.elapsed() >= Duration::from_millis(1500) {
            snapshot_on(cluster, admin, B).await;
            asked = Instant::now();
        }
    }
    "no snapshot build of B seen in 10 s: cut anyway".into()
}

/// Scenario 3: B is stopped while A and C write past a snapshot that compacts B's
/// place in the log, resumes and catches up by installing the leader's snapshot; C is
/// then stopped (B is needed again) and B's power is cut 0.2-2 s after the install.
async fn cut_after_install(
    cluster: &mut PowerCluster,
    admin: &Client,
    load: &Load,
    rng: &mut Rng,
) -> Result<String, String> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b_last = cluster
        .status(admin, B)
        .await
        .map(|s| s.last_index)
        .ok_or("B did not answer before its pause")?;
    let installed_before = cluster
        .metric(B, "raft_snapshots_installed_total")
        .unwrap_or(0.0);
    cluster.signal(B, "-STOP")?;
    // The leader's snapshot must be past B's log and its kept tail (a quarter).
    let keep = (Scenario::AfterInstall.snapshot_entries() / 4).max(100);
    let target = b_last + keep + 300;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut snap = 0;
        for id in [A, C] {
            if let Some(s) = cluster.status(admin, id).await
                && s.role == "Leader"
            {
                snap = s.snapshot;
            }
        }
        if snap > target {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the leader's snapshot did not pass index {target} within 40 s (at {snap}; {} writes acknowledged)",
                load.acked()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.signal(B, "-CONT")?;
    let installed = poll(Duration::from_secs(20), Duration::from_millis(20), || {
        cluster
            .metric(B, "raft_snapshots_installed_total")
            .filter(|&n| n > installed_before)
    })
    .await;
    let at = Instant::now();
    cluster.signal(C, "-STOP")?;
    if installed.is_none() {
        return Err("B did not install a snapshot within 20 s of resuming".into());
    }
    let wait = rng.millis(200, 2_000);
    tokio::time::sleep(wait).await;
    Ok(format!(
        "{:.2}s after B installed the leader's snapshot",
        at.elapsed().as_secs_f64()
    ))
}

/// Committed transactions of the journal of B's filesystem.
fn journal_commits(cluster: &PowerCluster) -> Option<u64> {
    let dev = cluster
        .disk
        .as_ref()?
        .dev()?
        .trim_start_matches("/dev/")
        .to_string();
    let info = std::fs::read_to_string(format!("/proc/fs/jbd2/{dev}-8/info")).ok()?;
    info.split_whitespace().next()?.parse().ok()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Scenario 4: B runs with the shim that delays the `fsync` of metadata files (by
/// `META_DELAY`, longer than ext4's 5 s journal commit interval) and notes each
/// delay. A `.meta` file is written at the end of every snapshot B builds (every 800
/// entries): once its delay began, wait for the journal to commit (B's filesystem now
/// records the new file, whose data has not been synced), then cut.
async fn cut_inside_meta_fsync(
    cluster: &PowerCluster,
    admin: &Client,
    marker: &Path,
    rng: &mut Rng,
) -> String {
    tokio::time::sleep(rng.millis(2_000, 4_000)).await;
    let seen_before = std::fs::read_to_string(marker).unwrap_or_default().len();
    let started = Instant::now();
    let mut asked = Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        let text = std::fs::read_to_string(marker).unwrap_or_default();
        let fresh = text.get(seen_before..).unwrap_or("");
        if let Some(line) = fresh.lines().find(|l| l.contains(".meta")) {
            // "<unix ms> <delay ms> <path>"
            let mut f = line.splitn(3, ' ');
            let began: u64 = f.next().and_then(|t| t.parse().ok()).unwrap_or(0);
            let file = f
                .nth(1)
                .and_then(|p| p.rsplit('/').next())
                .unwrap_or("?")
                .to_string();
            let commits = journal_commits(cluster);
            // Leave the last 300 ms of the delay: the cut must land inside it.
            let latest = began + META_DELAY.as_millis() as u64 - 300;
            let mut committed = false;
            while unix_ms() < latest {
                if let (Some(before), Some(now)) = (commits, journal_commits(cluster))
                    && now > before
                {
                    committed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(rng.millis(0, 30)).await;
            eprintln!("cut inside the delayed fsync of {file}");
            return format!(
                "{} ms into a delayed .meta fsync, {}",
                unix_ms().saturating_sub(began),
                if committed {
                    "after a journal commit"
                } else {
                    "no journal commit seen"
                }
            );
        }
        if asked.elapsed() >= Duration::from_millis(1500) {
            snapshot_on(cluster, admin, B).await;
            asked = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    "no delayed .meta fsync seen in 12 s: cut anyway".into()
}

fn print_run(row: &Row) {
    let verdict = if row.scenario == Scenario::Teeth.name() {
        if row.damage_seen() && !row.harness_failed() {
            "damage caught (as the teeth require)"
        } else {
            "NOT CAUGHT"
        }
    } else if row.problems.is_empty() {
        "passed"
    } else {
        "FAILED"
    };
    eprintln!(
        "run {} ({}, seed {}): {verdict} in {:.1}s; cut {}; acknowledged {}, lost {}, never written {}, B started {}",
        row.run,
        row.scenario,
        row.seed,
        row.secs,
        row.cut,
        row.acked,
        opt(row.lost),
        opt(row.never_written),
        yes_no(row.b_started)
    );
    for n in &row.notes {
        eprintln!("  note: {n}");
    }
    for l in &row.notable {
        eprintln!("  B start-up: {l}");
    }
    for p in &row.problems {
        eprintln!("  problem: {p}");
    }
    if let Some(k) = &row.kept {
        eprintln!("  kept: {}", k.display());
    }
}

fn opt(n: Option<usize>) -> String {
    n.map_or_else(|| "n/a".into(), |n| n.to_string())
}

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let header = format!(
        "{:>3}  {:<18}  {:<62}  {:>6}  {:>5}  {:>5}  {:<4}  {}\n",
        "run",
        "scenario",
        "cut moment",
        "acked",
        "lost",
        "never",
        "B up",
        "B's notable start-up lines"
    );
    out.push_str(&header);
    out.push_str(&format!("{}\n", "-".repeat(header.len().min(160))));
    for r in rows {
        let mut lines = r.notable.iter().map(|l| short(l, 120));
        out.push_str(&format!(
            "{:>3}  {:<18}  {:<62}  {:>6}  {:>5}  {:>5}  {:<4}  {}\n",
            r.run,
            r.scenario,
            short(&r.cut, 62),
            r.acked,
            opt(r.lost),
            opt(r.never_written),
            yes_no(r.b_started),
            lines.next().unwrap_or_else(|| "-".into())
        ));
        for l in lines {
            out.push_str(&format!("{:>114}{l}\n", ""));
        }
    }
    out
}

/// Runs `scenario` `runs` times (one cluster at a time) and fails, after all of them,
/// if any run failed.
fn run_scenario(test: &str, scenario: Scenario, runs: usize) {
    if !may_run(test) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("a runtime: {e}"));
    let rows = rt.block_on(async {
        let _serial = support::serial().await;
        power::teardown_leftovers();
        let shims = build_shims();
        let base = base_seed();
        let mut rows = Vec::new();
        for i in 0..runs {
            let seed = base.wrapping_add(i as u64 * 0x1000_0001) | 1;
            rows.push(run_once(scenario, seed, &shims).await);
        }
        rows
    });
    eprintln!("\n{test}:\n{}", table(&rows));
    if scenario == Scenario::Teeth {
        let caught = rows.iter().filter(|r| r.damage_seen()).count();
        let harness: Vec<&Vec<String>> = rows
            .iter()
            .filter(|r| r.harness_failed())
            .map(|r| &r.problems)
            .collect();
        assert!(
            harness.is_empty(),
            "{test}: the harness itself failed: {harness:?}"
        );
        assert!(
            caught == rows.len(),
            "{test}: with every fsync on B a no-op, {} of {} runs lost nothing and B restarted fine: the suite has no teeth",
            rows.len() - caught,
            rows.len()
        );
        return;
    }
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.problems.is_empty())
        .map(|r| {
            format!(
                "run {} (seed {}): {}; kept in {}",
                r.run,
                r.seed,
                r.problems.join("; "),
                r.kept
                    .as_ref()
                    .map_or("?".into(), |k| k.display().to_string())
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{test}: {} of {} runs failed:\n{}",
        failed.len(),
        rows.len(),
        failed.join("\n")
    );
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn power_loss_0_a_frozen_image_receives_no_write_after_the_freeze() {
    if !may_run("power_loss_0") {
        return;
    }
    power::teardown_leftovers();
    let dir = tempfile::Builder::new()
        .prefix(power::PREFIX)
        .tempdir_in(power::base_dir())
        .unwrap_or_else(|e| panic!("temporary directory: {e}"));
    // Writes and syncs a file of marker bytes; whether the sync reported success.
    let write_synced = |path: &Path, mark: &str| -> bool {
        use std::io::Write;
        let body = mark.repeat(4096);
        std::fs::File::create(path)
            .and_then(|mut f| {
                f.write_all(body.as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::File::open(path.parent().unwrap_or(path))?.sync_all())
            .is_ok()
    };
    let in_image = |image: &Path, mark: &str| -> bool {
        netns::sh(
            "grep",
            &["-q", "-a", "-F", mark, &image.display().to_string()],
        )
        .is_ok()
    };
    let mut report = Vec::new();
    for method in ["blockdev --setro", "chattr +i"] {
        let image = dir.path().join("probe.img");
        power::Disk::format(&image, 64).unwrap_or_else(|e| panic!("{e}"));
        let mnt = dir.path().join("probe-mnt");
        let mut disk = power::Disk::attach(&image, &mnt).unwrap_or_else(|e| panic!("{e}"));
        let before = format!("BEFORE-{}-", power::new_uuid());
        let after = format!("AFTER-{}-", power::new_uuid());
        assert!(
            write_synced(&mnt.join("before"), &before),
            "a synced write before the freeze"
        );
        match method {
            "blockdev --setro" => disk.set_read_only(),
            _ => disk.freeze(),
        }
        .unwrap_or_else(|e| panic!("{method}: {e}"));
        let sync_ok = write_synced(&mnt.join("after"), &after);
        disk.release().unwrap_or_else(|e| panic!("release: {e}"));
        drop(disk);
        let (b, a) = (in_image(&image, &before), in_image(&image, &after));
        let _ = std::fs::remove_file(&image);
        report.push((method, b, sync_ok, a));
        eprintln!(
            "freeze by {method}: the write synced before it is on the image: {b}; the fsync after it reported {}; the write after it reached the image: {a}",
            if sync_ok { "success" } else { "an error" }
        );
    }
    let chattr = report.iter().find(|r| r.0 == "chattr +i").copied();
    assert!(
        matches!(chattr, Some((_, true, _, false))),
        "chattr +i on the image must freeze the disk (the suite cuts power with it): {report:?}"
    );
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn power_loss_1_cut_during_steady_writes_loses_no_acknowledged_write() {
    run_scenario("power_loss_1 (steady writes)", Scenario::Steady, 3);
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn power_loss_2_cut_while_b_builds_its_own_snapshot_loses_nothing_and_b_restarts() {
    run_scenario("power_loss_2 (B's own snapshot)", Scenario::OwnSnapshot, 3);
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn power_loss_3_cut_shortly_after_b_installed_a_leader_snapshot_b_restarts_with_everything() {
    run_scenario(
        "power_loss_3 (after installing a snapshot)",
        Scenario::AfterInstall,
        3,
    );
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn power_loss_4_cut_inside_a_metadata_fsync_does_not_brick_b() {
    run_scenario(
        "power_loss_4 (inside a .meta fsync)",
        Scenario::MetaFsync,
        3,
    );
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn power_loss_5_restart_with_the_same_boot_id_loses_no_acknowledged_write() {
    run_scenario("power_loss_5 (same boot id)", Scenario::SameBootId, 1);
}

#[test]
#[ignore = "needs root; run by .ci/run"]
fn power_loss_6_teeth_with_fsync_a_no_op_on_b_the_suite_sees_the_loss() {
    run_scenario("power_loss_6 (teeth)", Scenario::Teeth, 1);
}

/// Last by name: the table of every run of this process.
#[test]
#[ignore = "needs root; run by .ci/run"]
fn power_loss_9_table_of_every_run() {
    let rows = lock(&TABLE).clone();
    if rows.is_empty() {
        eprintln!("power-loss suite: no runs in this process");
        return;
    }
    let failed = rows.iter().filter(|r| !r.problems.is_empty()).count();
    eprintln!(
        "\n==== power-loss suite: {} runs, {} with problems (the teeth run must have them) ====\n{}",
        rows.len(),
        failed,
        table(&rows)
    );
    let mut by: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in &rows {
        let e = by.entry(r.scenario).or_default();
        e.0 += 1;
        if !r.problems.is_empty() {
            e.1 += 1;
        }
    }
    for (s, (n, f)) in by {
        eprintln!("  {s:<20} {f} of {n} runs with problems");
    }
}

//! Backups: `raft-server snapshot save` from a running cluster under writes, and
//! `snapshot restore` into a new cluster; damaged files and missing roles refused.

#![allow(clippy::print_stderr)]

mod support;

use futures::StreamExt;
use raft_proto::Bytes;
use raft_server::Client;
use raft_server::proto::Consistency;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{TestCluster, run_cli, serial};

const LEADER_WAIT: Duration = Duration::from_secs(20);
const CLI_LIMIT: Duration = Duration::from_secs(300);

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn key(i: u64) -> String {
    format!("key-{i:07}")
}

/// A value of about 100 bytes naming its key and version.
fn value(i: u64, version: u64) -> String {
    format!("{i}/{version}/{}", "x".repeat(90))
}

/// `raft-server ARGS` on a blocking thread (the test's runtime keeps serving the
/// writers); returns the output and how long it took.
async fn cli(args: Vec<String>, cwd: PathBuf) -> (Output, Duration) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_cli(&args, &cwd, CLI_LIMIT);
        (out, started.elapsed())
    })
    .await
    .expect("the CLI thread")
}

fn save_args(file: &Path, client_file: &Path) -> Vec<String> {
    vec![
        "snapshot".into(),
        "save".into(),
        file.display().to_string(),
        "--client-config".into(),
        client_file.display().to_string(),
    ]
}

/// Every key and value, page by page (linearizable).
async fn read_all(client: &Client) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut start = Bytes::from(Vec::new());
    loop {
        let (items, more) = client
            .scan(start.clone(), None, 10_000, Consistency::Linearizable)
            .await
            .expect("scan");
        let Some((last, _)) = items.last() else {
            break;
        };
        let mut next = last.to_vec();
        next.push(0);
        start = Bytes::from(next);
        for (k, v) in items {
            out.insert(
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
        if !more {
            break;
        }
    }
    out
}

/// Acknowledged writes: key -> (index, value) of each.
type History = Arc<Mutex<BTreeMap<String, Vec<(u64, String)>>>>;

fn record(history: &History, k: String, index: u64, v: String) {
    history
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(k)
        .or_default()
        .push((index, v));
}

/// Issue 17: "save from a 3-node cluster holding 100k keys while writes continue;
/// restore into a new 3-node cluster; every key equal at the snapshot's index."
///
/// Every acknowledged write is recorded with its commit index. The snapshot's index
/// `I` (from the file's header) must be at or after every write acknowledged before
/// the save began, and the restored cluster must hold, for every key, the value of its
/// last write at or before `I`, and no key first written after `I`. The new cluster
/// has its own CA and ports: it must elect a leader among the new nodes and list their
/// addresses, not the old cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_busy_cluster_restores_into_a_new_cluster_at_its_index() {
    let _serial = serial().await;
    const KEYS: u64 = 100_000;
    let old = TestCluster::start(3, |_| {});
    let client = old.client(Duration::from_secs(30));
    old.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;
    let history: History = Arc::default();

    let loading = Instant::now();
    let mut puts = futures::stream::iter(0..KEYS)
        .map(|i| {
            let client = client.clone();
            async move {
                let w = client.put(key(i), value(i, 0)).await;
                (i, w)
            }
        })
        .buffer_unordered(256);
    while let Some((i, w)) = puts.next().await {
        let w = w.unwrap_or_else(|e| panic!("put {}: {e}", key(i)));
        record(&history, key(i), w.index, value(i, 0));
    }
    drop(puts);
    eprintln!(
        "loaded {KEYS} keys in {:.1} s",
        loading.elapsed().as_secs_f64()
    );

    // Writers go on through the save: overwrites of old keys and new keys.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (client, history, stop) = (client.clone(), history.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Writer w overwrites keys = w (mod 4) and adds keys of its own.
                let i = if n.is_multiple_of(2) {
                    (n * 4 + w) % KEYS
                } else {
                    KEYS + n * 4 + w
                };
                let v = value(i, n);
                let written = client.put(key(i), v.clone()).await;
                let done =
                    written.unwrap_or_else(|e| panic!("put {} during the save: {e}", key(i)));
                record(&history, key(i), done.index, v);
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Kept apart from the old cluster's directory, which goes with it.
    let backups = tempfile::tempdir().expect("a directory for the backup");
    let file = backups.path().join("backup.rbk");
    let acked_before = history
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .flat_map(|w| w.iter().map(|(i, _)| *i))
        .max()
        .unwrap_or(0);
    let (out, save_time) = cli(
        save_args(&file, &old.client_file),
        old.dir.path().to_path_buf(),
    )
    .await;
    assert!(out.status.success(), "save: {out:?}");
    eprintln!("{}", stdout(&out));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut during = 0;
    for w in writers {
        during += w.await.expect("a writer");
    }

    let verified = raft_server::backup::verify(&file).expect("the backup verifies");
    let index = verified.header.meta.last_log_id.index.0;
    assert!(verified.header.confirmed, "{:?}", verified.header);
    assert!(
        index >= acked_before,
        "the snapshot at index {index} misses writes acknowledged before the save (up to {acked_before})"
    );
    let history = history
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let after = history
        .values()
        .flatten()
        .filter(|(i, _)| *i > index)
        .count();
    assert!(after > 0, "no write landed after the snapshot's index");
    let expected: BTreeMap<String, String> = history
        .iter()
        .filter_map(|(k, writes)| {
            writes
                .iter()
                .filter(|(i, _)| *i <= index)
                .max_by_key(|(i, _)| *i)
                .map(|(_, v)| (k.clone(), v.clone()))
        })
        .collect();
    assert!(expected.len() as u64 >= KEYS);
    let file_bytes = verified.file_bytes;
    drop(client);
    drop(old);

    // A new cluster (its own CA and ports) from the file: three restores.
    let mut new = TestCluster::configure(3, |_| {});
    let mut restore_times = Vec::new();
    for id in 1..=3u64 {
        let config = new.nodes[&id].config_path.display().to_string();
        let (out, took) = cli(
            vec![
                "snapshot".into(),
                "restore".into(),
                file.display().to_string(),
                "--config".into(),
                config,
            ],
            new.dir.path().to_path_buf(),
        )
        .await;
        assert!(out.status.success(), "restore {id}: {out:?}");
        // The old cluster's addresses live in its membership's records, which a
        // restore does not carry over: the new voters come from --config.
        assert!(
            stdout(&out).contains(" records\n") && stdout(&out).contains("voters: 1,2,3"),
            "{}",
            stdout(&out)
        );
        restore_times.push(took);
    }
    for id in 1..=3 {
        new.spawn(id);
    }
    let client = new.client(Duration::from_secs(30));
    new.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;
    let status = client.status_of(new.addr(1)).await.expect("status");
    assert!(
        status.applied >= index && status.snapshot >= index,
        "{status:?}"
    );
    let listed: Vec<(u64, String)> = status
        .voters
        .iter()
        .map(|(id, a)| (id.0, a.clone()))
        .collect();
    let configured: Vec<(u64, String)> = (1..=3).map(|id| (id, new.addr(id).to_string())).collect();
    assert_eq!(
        listed, configured,
        "the new cluster lists the old addresses"
    );
    // The new cluster takes writes (a quorum of the new nodes).
    let w = client.put("after-restore", "yes").await.expect("a write");
    assert!(w.index > index);

    let reading = Instant::now();
    let mut got = read_all(&client).await;
    assert_eq!(got.remove("after-restore").as_deref(), Some("yes"));
    let read_time = reading.elapsed();
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<&String> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    let wrong: Vec<(&String, &String, &String)> = expected
        .iter()
        .filter_map(|(k, v)| got.get(k).filter(|g| *g != v).map(|g| (k, v, g)))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && wrong.is_empty(),
        "at index {index}: missing {missing:?}, extra {extra:?}, wrong (key, expected, got) {wrong:?}"
    );
    assert_eq!(got.len(), expected.len());
    eprintln!(
        "BACKUP_FIGURES keys {} at index {index} (writes during the save {during}, {after} after its index); file {file_bytes} bytes ({:.1} MiB); save {:.2} s; restores {}; full read of the new cluster {:.1} s",
        expected.len(),
        file_bytes as f64 / (1 << 20) as f64,
        save_time.as_secs_f64(),
        restore_times
            .iter()
            .map(|t| format!("{:.2} s", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        read_time.as_secs_f64()
    );
}

/// A restore refuses a file with a flipped byte, a truncated file and a file of
/// another format version, each with the reason, and writes nothing; it refuses a
/// data directory that is not empty. A save needs the admin role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_is_refused_with_the_reason_and_a_save_needs_the_admin_role() {
    let _serial = serial().await;
    let old = TestCluster::start(3, |_| {});
    let client = old.client(Duration::from_secs(30));
    old.wait_leader(&client, &[1, 2, 3], LEADER_WAIT).await;
    for i in 0..200 {
        client.put(key(i), value(i, 0)).await.expect("a put");
    }
    let dir = old.dir.path().to_path_buf();

    // A client-role certificate may not save.
    let app = dir.join("client-app.toml");
    let certs = dir.join("certs");
    std::fs::write(
        &app,
        format!(
            "nodes = [{:?}]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            old.addr(1).to_string(),
            certs.join("ca.crt"),
            certs.join("client-app.crt"),
            certs.join("client-app.key")
        ),
    )
    .expect("write the app's client file");
    let refused = dir.join("refused.rbk");
    let (out, _) = cli(save_args(&refused, &app), dir.clone()).await;
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr(&out).contains("admin role"), "{}", stderr(&out));
    assert!(!refused.exists() && !dir.join("refused.rbk.part").exists());

    let file = dir.join("good.rbk");
    let (out, _) = cli(save_args(&file, &old.client_file), dir.clone()).await;
    assert!(out.status.success(), "save: {out:?}");
    assert!(!dir.join("good.rbk.part").exists());
    let good = std::fs::read(&file).expect("read the backup");
    let (out, _) = cli(
        vec![
            "snapshot".into(),
            "status".into(),
            file.display().to_string(),
        ],
        dir.clone(),
    )
    .await;
    assert!(
        out.status.success() && stdout(&out).contains("intact"),
        "{out:?}"
    );

    let restore = |name: &str, bytes: Option<&[u8]>| {
        let path = dir.join(format!("{name}.rbk"));
        if let Some(bytes) = bytes {
            std::fs::write(&path, bytes).expect("write a test file");
        }
        let data = dir.join(format!("restored-{name}"));
        let args = vec![
            "snapshot".into(),
            "restore".into(),
            path.display().to_string(),
            "--id".into(),
            "1".into(),
            "--data".into(),
            data.display().to_string(),
            "--peer".into(),
            "2=127.0.0.1:1".into(),
            "--peer".into(),
            "3=127.0.0.1:2".into(),
        ];
        (args, data)
    };

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let mut version = good.clone();
    version[8] = 2;
    let cases: [(&str, Vec<u8>, &[&str]); 4] = [
        ("flipped", flipped, &["damaged", "SHA-256"]),
        (
            "truncated",
            good[..good.len() - 1000].to_vec(),
            &["truncated"],
        ),
        ("cut-header", good[..10].to_vec(), &["truncated"]),
        ("version", version, &["format version 2", "reads version 1"]),
    ];
    for (name, bytes, words) in cases {
        let (args, data) = restore(name, Some(&bytes));
        let (out, _) = cli(args, dir.clone()).await;
        let err = stderr(&out);
        assert!(!out.status.success(), "{name}: {out:?}");
        for w in words {
            assert!(err.contains(w), "{name}: {err:?} does not say {w:?}");
        }
        assert!(
            !data.exists(),
            "{name}: a refused restore created {}",
            data.display()
        );
    }

    // A non-empty directory is refused; an intact file restores.
    let (args, data) = restore("good", None);
    std::fs::create_dir_all(&data).expect("a directory");
    std::fs::write(data.join("something"), b"x").expect("a file");
    let (out, _) = cli(args.clone(), dir.clone()).await;
    assert!(
        !out.status.success() && stderr(&out).contains("not empty"),
        "{out:?}"
    );
    std::fs::remove_file(data.join("something")).expect("empty it");
    let (out, _) = cli(args, dir.clone()).await;
    assert!(out.status.success(), "{out:?}");
    assert!(data.join("sm").exists() && data.join("log").exists());
}

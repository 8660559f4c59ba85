//! The LMDB state machine against the conformance suite, with a small key-value
//! application, plus restart and reads.

#![allow(clippy::unwrap_used)]

use raft_core::node::StateMachine;
use raft_core::testing::{kv_command, suite};
use raft_proto::{Bytes, Entry, LogId, LogIndex, Term};
use raft_storage_lmdb::testing::{TextKv as Kv, entry};
use raft_storage_lmdb::{LmdbStateMachine, SmConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[test]
fn the_lmdb_state_machine_conforms() {
    let root = tempfile::tempdir().unwrap();
    let n = AtomicU64::new(0);
    let commands: Vec<_> = ["a", "b", "a", "c", "b", "a", "d", "a", "c", "b"]
        .iter()
        .enumerate()
        .map(|(i, k)| kv_command("append", k, &i.to_string()))
        .collect();
    let path = root.path().to_path_buf();
    futures::executor::block_on(suite::state_machine(
        move |_| {
            let dir = path.join(format!("sm{}", n.fetch_add(1, Ordering::Relaxed)));
            Arc::new(LmdbStateMachine::open(dir, Kv, SmConfig::default()).unwrap())
                as Arc<dyn StateMachine>
        },
        &commands,
    ));
}

#[test]
fn applied_state_and_data_survive_a_restart_together() {
    let dir = tempfile::tempdir().unwrap();
    {
        let sm = LmdbStateMachine::open(dir.path(), Kv, SmConfig::default()).unwrap();
        let out = futures::executor::block_on(sm.apply(&[
            entry(1, kv_command("put", "x", "1")),
            entry(2, kv_command("append", "x", "2")),
        ]))
        .unwrap();
        assert_eq!(out[1], Bytes::from("12"));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    let sm = LmdbStateMachine::open(dir.path(), Kv, SmConfig::default()).unwrap();
    let state = futures::executor::block_on(sm.state()).unwrap();
    assert_eq!(state.applied, LogId::new(Term(1), LogIndex(2)));
    let value = sm
        .read(|v| Ok(v.data.get(v.txn, b"x")?.map(<[u8]>::to_vec)))
        .unwrap();
    assert_eq!(value.as_deref(), Some(&b"12"[..]));
    // Re-applying an applied entry is refused, not applied twice.
    assert!(
        futures::executor::block_on(sm.apply(&[entry(2, kv_command("append", "x", "2"))])).is_err()
    );
}

#[test]
fn an_install_cut_short_before_the_switch_leaves_the_old_state() {
    // A crash during an install leaves a half-built state directory and a partial
    // incoming file, with CURRENT still naming the old state: reopening keeps the old
    // state and removes the leftovers.
    let dir = tempfile::tempdir().unwrap();
    {
        let sm = LmdbStateMachine::open(dir.path(), Kv, SmConfig::default()).unwrap();
        futures::executor::block_on(sm.apply(&[entry(1, kv_command("put", "x", "old"))])).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    std::fs::create_dir_all(dir.path().join("state-000002")).unwrap();
    std::fs::write(
        dir.path().join("state-000002").join("data.mdb"),
        b"half-built",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("incoming").join("00000000000000ab.part"),
        b"partial",
    )
    .unwrap();
    std::fs::write(dir.path().join("CURRENT.tmp"), b"state-000002").unwrap();
    let sm = LmdbStateMachine::open(dir.path(), Kv, SmConfig::default()).unwrap();
    let value = sm
        .read(|v| Ok(v.data.get(v.txn, b"x")?.map(<[u8]>::to_vec)))
        .unwrap();
    assert_eq!(value.as_deref(), Some(&b"old"[..]), "the old state is live");
    assert!(
        !dir.path().join("state-000002").exists(),
        "the half-built state is gone"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("incoming"))
            .unwrap()
            .count(),
        0,
        "the partial download is gone"
    );
}

/// Snapshots beyond `keep_snapshots` stop being served at once; the first pruned file
/// is kept as the spare the next snapshot overwrites (no allocation, no discard), any
/// further one is released in the background; every snapshot still reads back whole.
#[test]
fn old_snapshots_are_pruned_and_their_space_recycled() {
    use raft_proto::{Membership, NodeId, SnapshotMeta};
    let dir = tempfile::tempdir().unwrap();
    let sm = LmdbStateMachine::open(dir.path(), Kv, SmConfig::default()).unwrap();
    let value = "v".repeat(1000);
    let mut ids = Vec::new();
    futures::executor::block_on(async {
        for round in 0..5u64 {
            let entries: Vec<Entry> = (0..200)
                .map(|i| {
                    let index = round * 200 + i + 1;
                    entry(
                        index,
                        kv_command("put", &format!("k{i}"), &format!("{round}{value}")),
                    )
                })
                .collect();
            sm.apply(&entries).await.unwrap();
            let meta = SnapshotMeta {
                last_log_id: LogId::new(Term(1), LogIndex((round + 1) * 200)),
                membership: Membership::voters([NodeId(1)]),
                id: 0,
            };
            let built = sm.begin_snapshot(meta).await.unwrap();
            ids.push(built.id);
            // The newest snapshot reads back whole, ending in its checksum.
            let mut offset = 0;
            loop {
                let (bytes, done) = sm
                    .read_snapshot(built.id, offset, 64 << 10)
                    .await
                    .unwrap()
                    .unwrap();
                offset += bytes.len() as u64;
                if done {
                    break;
                }
            }
            assert!(offset > 200_000, "{offset}");
        }
        // Only the newest two are served.
        for (n, id) in ids.iter().enumerate() {
            let served = sm.read_snapshot(*id, 0, 16).await.unwrap().is_some();
            assert_eq!(served, n >= 3, "snapshot {n} (id {id:x})");
        }
        let state = sm.state().await.unwrap();
        assert_eq!(state.snapshot.map(|s| s.id), ids.last().copied());
    });
    // Files: two snapshots with their metadata, at most one spare, and nothing else
    // once the background deletion is done.
    let snapshots = dir.path().join("snapshots");
    let mut names: Vec<String> = Vec::new();
    for _ in 0..100 {
        names = std::fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if !names.iter().any(|n| n.ends_with(".del")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    names.sort();
    let snaps = names.iter().filter(|n| n.ends_with(".snap")).count();
    let metas = names.iter().filter(|n| n.ends_with(".meta")).count();
    assert_eq!((snaps, metas), (2, 2), "{names:?}");
    assert!(names.iter().any(|n| n == "spare"), "{names:?}");
    assert_eq!(names.len(), 5, "{names:?}");
}

/// Copies a directory tree (an image of the disk at one moment).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn config_on_boot(boot: &str) -> SmConfig {
    SmConfig {
        boot_id_for_tests: Some(boot.into()),
        ..SmConfig::default()
    }
}

fn x_and_applied(sm: &LmdbStateMachine<Kv>) -> (Option<Vec<u8>>, u64) {
    let x = sm
        .read(|v| Ok(v.data.get(v.txn, b"x")?.map(<[u8]>::to_vec)))
        .unwrap();
    let applied = futures::executor::block_on(sm.state()).unwrap().applied;
    (x, applied.index.0)
}

/// The child of the crash tests below (this binary, run with `SM_CHILD_DIR` set): it
/// applies x = a, b, c and snapshots at 3, applies d, e and snapshots at 5, applies f
/// (not flushed: deferred applies), says it is ready and waits to be killed.
#[test]
fn sm_crash_child() {
    use std::io::Write;
    let Ok(dir) = std::env::var("SM_CHILD_DIR") else {
        return;
    };
    let sm = LmdbStateMachine::open(&dir, Kv, config_on_boot("boot-1")).unwrap();
    futures::executor::block_on(async {
        sm.apply(&[
            entry(1, kv_command("put", "x", "a")),
            entry(2, kv_command("append", "x", "b")),
            entry(3, kv_command("append", "x", "c")),
        ])
        .await
        .unwrap();
        sm.begin_snapshot(meta_at(3)).await.unwrap();
        sm.apply(&[
            entry(4, kv_command("append", "x", "d")),
            entry(5, kv_command("append", "x", "e")),
        ])
        .await
        .unwrap();
        sm.begin_snapshot(meta_at(5)).await.unwrap();
        sm.apply(&[entry(6, kv_command("append", "x", "f"))])
            .await
            .unwrap();
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nSM-CHILD-READY").unwrap();
    out.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(60));
}

fn meta_at(index: u64) -> raft_proto::SnapshotMeta {
    raft_proto::SnapshotMeta {
        last_log_id: LogId::new(Term(1), LogIndex(index)),
        membership: raft_proto::Membership::voters([raft_proto::NodeId(1)]),
        id: 0,
    }
}

/// Runs the child in `dir` and kills it (SIGKILL) once it has applied 1-6: the page
/// cache keeps what it wrote, as after a real process crash.
fn crash_child_in(dir: &std::path::Path) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sm_crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SM_CHILD_DIR", dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let ready = out
        .lines()
        .map_while(Result::ok)
        .any(|l| l.ends_with("SM-CHILD-READY"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ready, "the child never got ready");
    assert!(
        dir.join("DIRTY").exists(),
        "applies pending: the mark stays"
    );
}

#[test]
fn deferred_applies_survive_a_process_crash_and_are_rebuilt_from_a_snapshot_after_an_os_crash() {
    let root = tempfile::tempdir().unwrap();
    // The same boot (only the process died): the OS kept every page; nothing is lost.
    let crashed = root.path().join("process-crash");
    crash_child_in(&crashed);
    let after = LmdbStateMachine::open(&crashed, Kv, config_on_boot("boot-1")).unwrap();
    assert_eq!(x_and_applied(&after), (Some(b"abcdef".to_vec()), 6));
    // A clean close flushes and drops the mark: another boot then trusts the state.
    drop(after);
    assert!(!crashed.join("DIRTY").exists());
    let reopened = LmdbStateMachine::open(&crashed, Kv, config_on_boot("boot-2")).unwrap();
    assert_eq!(x_and_applied(&reopened), (Some(b"abcdef".to_vec()), 6));

    // Another boot (an OS crash or power cut): the state is not trusted; the newest
    // snapshot (index 5) is, and the node would apply the log from 6 again.
    let rebooted = root.path().join("os-crash");
    crash_child_in(&rebooted);
    let after = LmdbStateMachine::open(&rebooted, Kv, config_on_boot("boot-2")).unwrap();
    assert_eq!(x_and_applied(&after), (Some(b"abcde".to_vec()), 5));
    let again =
        futures::executor::block_on(after.apply(&[entry(6, kv_command("append", "x", "f"))]))
            .unwrap();
    assert_eq!(again[0], Bytes::from("abcdef"));
}

/// Issue 14, finding 5: a copy of a running node's directory (`cp -r`, same boot) is
/// not the directory whose pages the OS kept: it may be torn, so it is rebuilt from
/// the newest snapshot instead of trusted.
#[test]
fn a_copy_of_a_dirty_directory_on_the_same_boot_is_rebuilt_not_trusted() {
    let root = tempfile::tempdir().unwrap();
    let live = root.path().join("live");
    crash_child_in(&live);
    let copy = root.path().join("copy");
    copy_tree(&live, &copy);
    let from_copy = LmdbStateMachine::open(&copy, Kv, config_on_boot("boot-1")).unwrap();
    assert_eq!(x_and_applied(&from_copy), (Some(b"abcde".to_vec()), 5));
    let original = LmdbStateMachine::open(&live, Kv, config_on_boot("boot-1")).unwrap();
    assert_eq!(x_and_applied(&original), (Some(b"abcdef".to_vec()), 6));
}

/// The files of the snapshot at `index` in a state machine directory.
fn snapshot_files(dir: &std::path::Path, index: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let snaps = dir.join("snapshots");
    for entry in std::fs::read_dir(&snaps).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "meta") && read_meta_index(&path) == Some(index) {
            return (path.with_extension("snap"), path);
        }
    }
    panic!("no snapshot at {index} in {}", snaps.display());
}

/// The last index a `.meta` file records (decoded the way the store writes it:
/// CRC32C, then the version byte and the postcard record).
fn read_meta_index(path: &std::path::Path) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Record {
        meta: raft_proto::SnapshotMeta,
        #[allow(dead_code)]
        size: u64,
        #[allow(dead_code)]
        crc: u32,
    }
    let raw = std::fs::read(path).ok()?;
    let record: Record = raft_proto::decode_frame(raw.get(4..)?).ok()?;
    Some(record.meta.last_log_id.index.0)
}

fn state_of(sm: &LmdbStateMachine<Kv>) -> raft_core::node::MachineState {
    futures::executor::block_on(sm.state()).unwrap()
}

fn set_aside_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".damaged"))
        .count()
}

/// Issue 14, findings 2 and 3: an empty `.meta` (a cut inside a metadata write) is set
/// aside at start-up, not fatal; the older snapshot is reported.
#[test]
fn an_empty_meta_file_is_set_aside_at_start_up_not_fatal() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("sm");
    crash_child_in(&dir);
    let (_, meta) = snapshot_files(&dir, 5);
    std::fs::write(&meta, b"").unwrap();
    let sm = LmdbStateMachine::open(&dir, Kv, config_on_boot("boot-1")).unwrap();
    let state = state_of(&sm);
    assert_eq!(state.applied.index, LogIndex(6));
    assert_eq!(
        state.snapshot.map(|m| m.last_log_id.index),
        Some(LogIndex(3))
    );
    assert!(set_aside_files(&dir) >= 1);
}

/// Issue 14, findings 1 and 3: a 0-byte `.snap` (a received snapshot a cut undid) is
/// set aside at start-up, not fatal; the state is kept and the older snapshot reported.
#[test]
fn a_zero_byte_snapshot_is_reported_damaged_and_the_state_kept() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("sm");
    crash_child_in(&dir);
    let (snap, _) = snapshot_files(&dir, 5);
    std::fs::write(&snap, b"").unwrap();
    let sm = LmdbStateMachine::open(&dir, Kv, config_on_boot("boot-1")).unwrap();
    assert_eq!(x_and_applied(&sm), (Some(b"abcdef".to_vec()), 6));
    let state = state_of(&sm);
    assert_eq!(
        state.snapshot.map(|m| m.last_log_id.index),
        Some(LogIndex(3))
    );
}

/// Issue 14, finding 3: after a power cut the state is rebuilt from a snapshot; when the
/// newest one fails its checksum, the older one is used.
#[test]
fn after_a_power_cut_a_damaged_newest_snapshot_falls_back_to_an_older_one() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("sm");
    crash_child_in(&dir);
    let (snap, _) = snapshot_files(&dir, 5);
    let mut bytes = std::fs::read(&snap).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&snap, &bytes).unwrap();
    let sm = LmdbStateMachine::open(&dir, Kv, config_on_boot("boot-2")).unwrap();
    assert_eq!(x_and_applied(&sm), (Some(b"abc".to_vec()), 3));
    assert_eq!(
        state_of(&sm).snapshot.map(|m| m.last_log_id.index),
        Some(LogIndex(3))
    );
    assert!(set_aside_files(&dir) >= 1, "the damaged one is set aside");
}

/// Issue 14, finding 3: with every snapshot damaged after a power cut, the state starts
/// empty (the node then gets it from its leader, or replays its log when it reaches
/// back to the beginning).
#[test]
fn after_a_power_cut_with_every_snapshot_damaged_the_state_starts_empty() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("sm");
    crash_child_in(&dir);
    for index in [3, 5] {
        let (snap, _) = snapshot_files(&dir, index);
        std::fs::write(&snap, b"").unwrap();
    }
    let sm = LmdbStateMachine::open(&dir, Kv, config_on_boot("boot-2")).unwrap();
    assert_eq!(x_and_applied(&sm), (None, 0));
    let state = state_of(&sm);
    assert_eq!(state.snapshot, None);
}

/// A cut between an install's metadata and its `CURRENT` switch leaves a published
/// snapshot newer than the state: the next open rebuilds the state from it.
#[test]
fn a_published_snapshot_newer_than_the_state_is_rebuilt_at_open() {
    let root = tempfile::tempdir().unwrap();
    let source = root.path().join("source");
    crash_child_in(&source);
    let target = root.path().join("target");
    {
        let sm = LmdbStateMachine::open(&target, Kv, SmConfig::default()).unwrap();
        futures::executor::block_on(sm.apply(&[entry(1, kv_command("put", "x", "old"))])).unwrap();
    }
    let (snap, meta) = snapshot_files(&source, 5);
    for file in [&snap, &meta] {
        std::fs::copy(
            file,
            target.join("snapshots").join(file.file_name().unwrap()),
        )
        .unwrap();
    }
    let sm = LmdbStateMachine::open(&target, Kv, SmConfig::default()).unwrap();
    assert_eq!(x_and_applied(&sm), (Some(b"abcde".to_vec()), 5));
}

#[test]
fn a_truncated_or_damaged_snapshot_is_refused_and_the_state_kept() {
    use raft_proto::{Membership, NodeId, SnapshotMeta};
    let root = tempfile::tempdir().unwrap();
    // A real snapshot from one state machine...
    let source = LmdbStateMachine::open(root.path().join("a"), Kv, SmConfig::default()).unwrap();
    let meta = futures::executor::block_on(async {
        source
            .apply(&[entry(1, kv_command("put", "x", "from-a"))])
            .await
            .unwrap();
        source
            .begin_snapshot(SnapshotMeta {
                last_log_id: LogId::new(Term(1), LogIndex(1)),
                membership: Membership::voters([NodeId(1)]),
                id: 0,
            })
            .await
            .unwrap()
    });
    let (bytes, done) = futures::executor::block_on(source.read_snapshot(meta.id, 0, 1 << 20))
        .unwrap()
        .unwrap();
    assert!(done);
    // ...received by another, cut short or with a flipped byte: the install fails with
    // an error, and the receiver keeps its own state.
    let target = LmdbStateMachine::open(root.path().join("b"), Kv, SmConfig::default()).unwrap();
    futures::executor::block_on(target.apply(&[entry(1, kv_command("put", "x", "mine"))])).unwrap();
    let mut flipped = bytes.to_vec();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    for (what, data) in [
        ("truncated", bytes[..bytes.len() - 7].to_vec()),
        ("flipped", flipped),
        ("empty", Vec::new()),
    ] {
        futures::executor::block_on(async {
            target
                .receive_snapshot(&meta, 0, Bytes::from(data))
                .await
                .unwrap();
            let r = target.install_snapshot(&meta).await;
            assert!(r.is_err(), "a {what} snapshot was installed");
            eprintln!(
                "{what}: {}",
                r.err().map(|e| e.to_string()).unwrap_or_default()
            );
        });
        let x = target
            .read(|v| Ok(v.data.get(v.txn, b"x")?.map(<[u8]>::to_vec)))
            .unwrap();
        assert_eq!(x.as_deref(), Some(&b"mine"[..]), "after a {what} snapshot");
    }
}

#[test]
fn a_snapshot_build_that_finishes_after_a_newer_install_stays_the_older_snapshot() {
    // Paper §7 with a background build: a build at 25 is still writing (slowed down
    // here) when a snapshot at 31 from the leader is installed. When the build finishes
    // it is published as the *older* snapshot: the newest (by last log id) stays 31,
    // after a restart too, and a rebuild from the snapshots uses 31.
    let root = tempfile::tempdir().unwrap();
    let source =
        LmdbStateMachine::open(root.path().join("leader"), Kv, SmConfig::default()).unwrap();
    let entries: Vec<_> = (1..=31)
        .map(|i| entry(i, kv_command("append", "x", &format!("{i},"))))
        .collect();
    let meta31 = futures::executor::block_on(async {
        source.apply(&entries).await.unwrap();
        source.begin_snapshot(meta_at(31)).await.unwrap()
    });
    let (bytes31, done) = futures::executor::block_on(source.read_snapshot(meta31.id, 0, 1 << 20))
        .unwrap()
        .unwrap();
    assert!(done);

    let dir = root.path().join("follower");
    let slow = SmConfig {
        snapshot_write_rate: Some(64 << 10),
        snapshot_sync_bytes: 64 << 10,
        ..SmConfig::default()
    };
    let sm = LmdbStateMachine::open(&dir, Kv, slow).unwrap();
    let big = "y".repeat(8 << 10);
    let mut mine: Vec<_> = (1..=24)
        .map(|i| entry(i, kv_command("put", &format!("big{i}"), &big)))
        .collect();
    mine.push(entry(25, kv_command("put", "x", "from-25")));
    futures::executor::block_on(sm.apply(&mine)).unwrap();
    let started = std::time::Instant::now();
    let build = sm.begin_snapshot(meta_at(25));
    futures::executor::block_on(async {
        sm.receive_snapshot(&meta31, 0, bytes31.clone())
            .await
            .unwrap();
        sm.install_snapshot(&meta31).await.unwrap();
    });
    let installed_after = started.elapsed();
    let built = futures::executor::block_on(build).unwrap();
    let built_after = started.elapsed();
    // ~200 KiB at 64 KiB/s: the build takes seconds, the install milliseconds.
    assert!(
        built_after > installed_after + std::time::Duration::from_millis(500),
        "the build (done after {built_after:?}) should finish well after the install ({installed_after:?})"
    );
    assert_eq!(built.last_log_id.index, LogIndex(25));
    let expected: String = (1..=31).map(|i| format!("{i},")).collect();
    let check = |sm: &LmdbStateMachine<Kv>, what: &str| {
        let state = state_of(sm);
        assert_eq!(state.applied.index, LogIndex(31), "{what}");
        assert_eq!(
            state.snapshot.map(|s| s.last_log_id.index),
            Some(LogIndex(31)),
            "{what}: the newest snapshot"
        );
        let (x, _) = x_and_applied(sm);
        assert_eq!(x.as_deref(), Some(expected.as_bytes()), "{what}");
    };
    check(&sm, "after the build finished");
    drop(sm);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let sm = LmdbStateMachine::open(&dir, Kv, SmConfig::default()).unwrap();
    check(&sm, "after a restart");
    drop(sm);
    std::thread::sleep(std::time::Duration::from_millis(50));
    // Only the snapshots: the state is rebuilt from the newest, 31.
    let rebuilt = root.path().join("rebuilt");
    std::fs::create_dir_all(&rebuilt).unwrap();
    std::fs::rename(dir.join("snapshots"), rebuilt.join("snapshots")).unwrap();
    let sm = LmdbStateMachine::open(&rebuilt, Kv, SmConfig::default()).unwrap();
    check(&sm, "rebuilt from the snapshots");
}

//! A full disk stops writes without corrupting anything, and they resume when space
//! returns. Needs root (it mounts a small tmpfs); skips loudly otherwise.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use raft_core::Persist;
use raft_core::node::LogStore;
use raft_proto::{Bytes, Entry, EntryPayload, LogId, LogIndex, Term};
use raft_storage_lmdb::{EnvConfig, LmdbLogStore};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap().keep();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs (needs root); the full-disk test did not run");
            return None;
        }
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // The store's thread closes its files just after the test body ends.
        for _ in 0..50 {
            let unmounted = Command::new("umount")
                .arg(&self.0)
                .stderr(std::process::Stdio::null())
                .status();
            if unmounted.is_ok_and(|s| s.success()) {
                let _ = std::fs::remove_dir_all(&self.0);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem with a file until writes fail; returns the file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0xAB; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

fn batch(from: u64, n: u64) -> Persist {
    let entries = (from..from + n)
        .map(|i| Entry {
            log_id: LogId::new(Term(1), LogIndex(i)),
            payload: EntryPayload::Command(Bytes::from(vec![i as u8; 4096])),
        })
        .collect();
    Persist {
        entries,
        ..Persist::default()
    }
}

/// Sizes that fit a 6 MiB tmpfs: 1 MiB WAL segments.
fn small_disk(config: EnvConfig) -> EnvConfig {
    EnvConfig {
        map_size: 64 << 20,
        wal_segment_bytes: 1 << 20,
        wal_checkpoint_bytes: 512 << 10,
        ..config
    }
}

#[test]
fn a_full_disk_pauses_writes_and_they_resume_when_space_returns() {
    let Some(fs) = Tmpfs::mount("6m") else { return };
    let dir = fs.0.join("log");
    let store = LmdbLogStore::open(&dir, small_disk(EnvConfig::default())).unwrap();
    futures::executor::block_on(store.write(&batch(1, 10))).unwrap();
    let filler = fill(&fs.0);
    // A write now waits for space instead of failing or corrupting anything.
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = store.clone();
    std::thread::spawn(move || {
        let r = futures::executor::block_on(writer.write(&batch(11, 300)));
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "the write did not wait for space"
    );
    std::fs::remove_file(&filler).unwrap();
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the write resumed after space returned");
    assert!(r.is_ok(), "{r:?}");
    let log = futures::executor::block_on(store.load()).unwrap();
    assert_eq!(
        log.entries.len(),
        310,
        "everything is there, intact (checksums verified)"
    );
}

#[test]
fn a_disk_that_stays_full_fails_the_write_with_a_clear_error() {
    let Some(fs) = Tmpfs::mount("6m") else { return };
    let dir = fs.0.join("log");
    let config = small_disk(EnvConfig {
        disk_full_patience: Duration::from_millis(300),
        ..EnvConfig::default()
    });
    let store = LmdbLogStore::open(&dir, config).unwrap();
    futures::executor::block_on(store.write(&batch(1, 10))).unwrap();
    let _filler = fill(&fs.0);
    let err = futures::executor::block_on(store.write(&batch(11, 300))).unwrap_err();
    let text = format!(
        "{err} / {:?}",
        std::error::Error::source(&err).map(ToString::to_string)
    );
    assert!(
        text.contains("No space left on device") || text.contains("space"),
        "{text}"
    );
    // Nothing half-written: once there is space again, the earlier entries are
    // intact and the failed batch is absent.
    std::fs::remove_file(&_filler).unwrap();
    let log = futures::executor::block_on(store.load()).unwrap();
    assert_eq!(log.entries.len(), 10);
}

/// The LMDB map holds the checkpointed log: when it cannot grow any more, the
/// checkpoint fails, the next operation says how to fix it, and nothing acknowledged
/// is lost (it is in the write-ahead log).
#[test]
fn a_full_map_grows_until_its_maximum_then_says_so_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = EnvConfig {
        map_size: 1 << 20,
        max_map_size: 4 << 20,
        ..EnvConfig::default()
    };
    let store = LmdbLogStore::open(dir.path(), config.clone()).unwrap();
    // 2 MiB of entries: more than the initial 1 MiB map, so it grows.
    futures::executor::block_on(store.write(&batch(1, 500))).unwrap();
    assert_eq!(
        futures::executor::block_on(store.load())
            .unwrap()
            .entries
            .len(),
        500
    );
    // 8 MiB more cannot fit in the 4 MiB maximum: the write is durable in the WAL,
    // and the checkpoint into LMDB says what to do.
    futures::executor::block_on(store.write(&batch(501, 2000))).unwrap();
    let err = futures::executor::block_on(store.load()).unwrap_err();
    let text = std::error::Error::source(&err)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(text.contains("raise max_map_size"), "{text}");
    drop(store);
    let bigger = EnvConfig {
        max_map_size: 64 << 20,
        ..config
    };
    let store = reopen(dir.path(), bigger);
    assert_eq!(
        futures::executor::block_on(store.load())
            .unwrap()
            .entries
            .len(),
        2500,
        "nothing acknowledged was lost"
    );
}

/// Opens the store once its threads from an earlier open have let go of it.
fn reopen(dir: &Path, config: EnvConfig) -> LmdbLogStore {
    for _ in 0..200 {
        match LmdbLogStore::open(dir, config.clone()) {
            Ok(s) => return s,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    panic!("cannot reopen {}", dir.display());
}

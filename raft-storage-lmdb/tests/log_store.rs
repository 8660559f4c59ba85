//! The LMDB log store against the conformance suite, plus what only a real disk has:
//! locking, format versions, corruption detection.

#![allow(clippy::unwrap_used)]

use raft_core::Persist;
use raft_core::node::LogStore;
use raft_core::testing::suite;
use raft_proto::{Bytes, Entry, EntryPayload, LogId, LogIndex, Term};
use raft_storage_lmdb::{EnvConfig, LmdbError, LmdbLogStore};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Opens `dir`, waiting (briefly) for a store just dropped to release it.
fn open_when_free(dir: &Path) -> LmdbLogStore {
    for _ in 0..500 {
        match LmdbLogStore::open(dir, EnvConfig::default()) {
            Ok(s) => return s,
            Err(LmdbError::Locked { .. } | LmdbError::Heed(heed::Error::EnvAlreadyOpened)) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    }
    panic!("{} stayed locked", dir.display());
}

#[test]
fn the_lmdb_log_store_conforms() {
    let root = tempfile::tempdir().unwrap();
    let dirs: Arc<Mutex<HashMap<usize, PathBuf>>> = Arc::default();
    let counter = Arc::new(Mutex::new(0));
    let (d1, d2, r) = (dirs.clone(), dirs.clone(), root.path().to_path_buf());
    futures::executor::block_on(suite::log_store(
        move || {
            let mut n = counter.lock().unwrap();
            *n += 1;
            let dir = r.join(format!("log{n}"));
            let store: Arc<dyn LogStore> =
                Arc::new(LmdbLogStore::open(&dir, EnvConfig::default()).unwrap());
            d1.lock()
                .unwrap()
                .insert(Arc::as_ptr(&store) as *const () as usize, dir);
            store
        },
        move |store| {
            let dir = d2
                .lock()
                .unwrap()
                .remove(&(Arc::as_ptr(&store) as *const () as usize))
                .unwrap();
            drop(store);
            let reopened: Arc<dyn LogStore> = Arc::new(open_when_free(&dir));
            d2.lock()
                .unwrap()
                .insert(Arc::as_ptr(&reopened) as *const () as usize, dir);
            reopened
        },
    ));
}

#[test]
fn a_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = LmdbLogStore::open(dir.path(), EnvConfig::default()).unwrap();
    match LmdbLogStore::open(dir.path(), EnvConfig::default()) {
        Err(e @ LmdbError::Locked { .. }) => {
            assert!(e.to_string().contains("in use by another process"))
        }
        other => panic!("a second open succeeded or failed oddly: {:?}", other.err()),
    }
}

fn entry(index: u64, payload: &[u8]) -> Entry {
    Entry {
        log_id: LogId::new(Term(1), LogIndex(index)),
        payload: EntryPayload::Command(Bytes::from(payload)),
    }
}

#[test]
fn a_corrupted_byte_is_detected_and_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let marker = b"PAYLOAD-MARKER-0123456789";
    {
        let store = LmdbLogStore::open(dir.path(), EnvConfig::default()).unwrap();
        let batch = Persist {
            entries: vec![entry(1, b"first"), entry(2, marker)],
            ..Persist::default()
        };
        futures::executor::block_on(store.write(&batch)).unwrap();
        // Into LMDB (a load checkpoints the write-ahead log).
        futures::executor::block_on(store.load()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    // Flip one byte of the second entry's payload in the data file.
    let file = dir.path().join("data.mdb");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the payload is on disk");
    bytes[at + 3] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();
    let store = open_when_free(dir.path());
    let err = futures::executor::block_on(store.load()).unwrap_err();
    let text = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(
        text.contains("corruption in log entry 2") && text.contains("checksum"),
        "{text}"
    );
    // The intact entry is still served.
    let first = futures::executor::block_on(store.entries(LogIndex(1), LogIndex(2))).unwrap();
    assert_eq!(first, vec![entry(1, b"first")]);
}

#[test]
fn a_newer_format_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    drop(LmdbLogStore::open(dir.path(), EnvConfig::default()).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    // Rewrite the stored format version as if a newer build had created the store.
    {
        let env = unsafe_open(dir.path());
        let wtxn = env.write_txn().unwrap();
        let meta = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
                let meta = opener
                    .create_database::<heed::types::Str, heed::types::Bytes>(wtxn, Some("meta"))?;
                Ok(heed::CommitOrAbort::<_, ()>::Commit(meta))
            })
            .unwrap()
            .unwrap_commit();
        let mut wtxn = env.write_txn().unwrap();
        meta.put(&mut wtxn, "format", &99u32.to_le_bytes()).unwrap();
        wtxn.commit().unwrap();
    }
    match LmdbLogStore::open(dir.path(), EnvConfig::default()) {
        Err(e @ LmdbError::NewerFormat { found: 99, .. }) => {
            assert!(e.to_string().contains("run a newer build"))
        }
        other => panic!("a newer format was accepted: {:?}", other.err()),
    }
}

#[allow(unsafe_code)]
fn unsafe_open(dir: &Path) -> heed::Env {
    let mut options = heed::EnvOpenOptions::new();
    options.max_dbs(4);
    // SAFETY: the store that used this directory is closed; nothing else maps it.
    unsafe { options.open(dir).unwrap() }
}

#[test]
fn a_log_file_with_damaged_headers_is_refused_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_when_free(dir.path());
        drop(store);
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    // LMDB keeps two meta pages at the start of data.mdb: damage both.
    let file = dir.path().join("data.mdb");
    let mut bytes = std::fs::read(&file).unwrap();
    for b in bytes.iter_mut().take(8192) {
        *b = 0xA5;
    }
    std::fs::write(&file, &bytes).unwrap();
    match LmdbLogStore::open(dir.path(), raft_storage_lmdb::EnvConfig::default()) {
        Ok(_) => panic!("a log whose headers are destroyed was opened"),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(
                msg.contains("data.mdb") && msg.contains("catches up from the others"),
                "{msg}"
            );
        }
    }
}

/// The child of the WAL damage tests (this binary with `WAL_CHILD_DIR` set): five
/// batches, each with a marked entry, then it waits to be killed, so nothing is
/// checkpointed on a clean close and the WAL alone holds them.
#[test]
fn wal_child_writer() {
    use std::io::Write;
    let Ok(dir) = std::env::var("WAL_CHILD_DIR") else {
        return;
    };
    let store = LmdbLogStore::open(&dir, EnvConfig::default()).unwrap();
    for b in 1..=5u64 {
        let batch = Persist {
            entries: vec![entry(
                b,
                format!("WAL-BATCH-{b}-{}", "p".repeat(64)).as_bytes(),
            )],
            ..Persist::default()
        };
        futures::executor::block_on(store.write(&batch)).unwrap();
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nWAL-CHILD-READY").unwrap();
    out.flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// Runs the child in `dir`, kills it, and flips a byte of batch `b`'s WAL record.
fn five_batches_then_flip(dir: &Path, b: u64) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "wal_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WAL_CHILD_DIR", dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let ready = out
        .lines()
        .map_while(Result::ok)
        .any(|l| l.ends_with("WAL-CHILD-READY"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ready, "the child never got ready");
    let segment = dir.join("wal").join(format!("{:016x}.wal", 0));
    let mut bytes = std::fs::read(&segment).unwrap();
    let marker = format!("WAL-BATCH-{b}-");
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("the record is in the WAL");
    bytes[at + marker.len() + 5] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
}

#[test]
fn a_damaged_wal_record_before_the_tail_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    five_batches_then_flip(dir.path(), 2);
    let err = LmdbLogStore::open(dir.path(), EnvConfig::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("corruption") && err.contains("later records are intact"),
        "{err}"
    );
}

#[test]
fn a_damaged_last_wal_record_is_a_torn_tail_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    five_batches_then_flip(dir.path(), 5);
    let store = LmdbLogStore::open(dir.path(), EnvConfig::default()).unwrap();
    let log = futures::executor::block_on(store.load()).unwrap();
    assert_eq!(
        log.entries
            .iter()
            .map(|e| e.log_id.index.0)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    // The log continues after the cut.
    let batch = Persist {
        entries: vec![entry(5, b"again")],
        ..Persist::default()
    };
    futures::executor::block_on(store.write(&batch)).unwrap();
}

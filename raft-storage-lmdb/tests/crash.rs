//! Crash consistency: a child process writes batches to an `LmdbLogStore` and reports
//! each one the store called durable; it is killed (SIGKILL) at random moments, many
//! times. After each kill the store must hold every reported batch, intact, and no
//! batch partly.
//!
//! The child is this test binary itself, run with `CRASH_CHILD_DIR` set.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use raft_core::Persist;
use raft_core::node::LogStore;
use raft_proto::{Bytes, Entry, EntryPayload, HardState, LogId, LogIndex, NodeId, Term};
use raft_storage_lmdb::{EnvConfig, LmdbError, LmdbLogStore};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Payload of entry `j` of batch `b` (of `n` entries): checkable after a crash.
fn payload(b: u64, j: u64, n: u64) -> Bytes {
    Bytes::from(format!("batch {b} entry {j} of {n} {}", "x".repeat(64)).as_str())
}

/// The child: append batches forever, print "durable <batch> <last index>" after each.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var("CRASH_CHILD_DIR") else {
        return;
    };
    let store = LmdbLogStore::open(&dir, EnvConfig::default()).unwrap();
    let loaded = futures::executor::block_on(store.load()).unwrap();
    let mut next = loaded.entries.last().map_or(1, |e| e.log_id.index.0 + 1);
    let mut batch = loaded.hard_state.term.0 + 1;
    let mut out = std::io::stdout().lock();
    loop {
        let n = 1 + (batch * 7919) % 40;
        let entries: Vec<Entry> = (0..n)
            .map(|j| Entry {
                log_id: LogId::new(Term(batch), LogIndex(next + j)),
                payload: EntryPayload::Command(payload(batch, j, n)),
            })
            .collect();
        let write = Persist {
            hard_state: Some(HardState {
                term: Term(batch),
                voted_for: Some(NodeId(batch)),
            }),
            truncate_from: None,
            entries,
        };
        futures::executor::block_on(store.write(&write)).unwrap();
        next += n;
        writeln!(out, "durable {batch} {}", next - 1).unwrap();
        out.flush().unwrap();
        batch += 1;
    }
}

fn open_when_free(dir: &Path) -> LmdbLogStore {
    for _ in 0..500 {
        match LmdbLogStore::open(dir, EnvConfig::default()) {
            Ok(s) => return s,
            Err(LmdbError::Locked { .. } | LmdbError::Heed(heed::Error::EnvAlreadyOpened)) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("reopen after a crash: {e}"),
        }
    }
    panic!("still locked");
}

#[test]
fn every_batch_reported_durable_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let me = std::env::current_exe().unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let (mut kills, mut checked_batches) = (0, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while kills < 40 && Instant::now() < deadline {
        let mut child = Command::new(&me)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("CRASH_CHILD_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it write a random number of batches, then kill it mid-stream.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait_for = 1 + rng % 60;
        let mut durable = (0u64, 0u64);
        for line in lines.by_ref() {
            let line = line.unwrap();
            if !line.starts_with("durable ") {
                continue; // the test harness's own output
            }
            let mut parts = line
                .split_whitespace()
                .skip(1)
                .map(|p| p.parse::<u64>().unwrap());
            durable = (parts.next().unwrap(), parts.next().unwrap());
            if durable.0 % 60 == wait_for % 60 || durable.0 > 10_000_000 {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        kills += 1;
        // Every reported batch is there and intact; no batch is partly there.
        let store = open_when_free(dir.path());
        let log = futures::executor::block_on(store.load()).unwrap();
        drop(store);
        let last = log.entries.last().map_or(0, |e| e.log_id.index.0);
        assert!(
            last >= durable.1,
            "kill {kills}: batch {} reported durable up to {}, log ends at {last}",
            durable.0,
            durable.1
        );
        let mut expected_index = 1;
        let mut i = 0;
        while i < log.entries.len() {
            let e = &log.entries[i];
            assert_eq!(e.log_id.index.0, expected_index, "kill {kills}: gap");
            let b = e.log_id.term.0;
            let n = 1 + (b * 7919) % 40;
            for j in 0..n {
                let e = log
                    .entries
                    .get(i + j as usize)
                    .unwrap_or_else(|| panic!("kill {kills}: batch {b} is partly there"));
                assert_eq!(
                    e.payload,
                    EntryPayload::Command(payload(b, j, n)),
                    "kill {kills}: entry damaged"
                );
                assert_eq!(e.log_id.term.0, b);
            }
            i += n as usize;
            expected_index += n;
            checked_batches += 1;
        }
        let last_batch = log.entries.last().map_or(0, |e| e.log_id.term.0);
        assert_eq!(
            log.hard_state.term.0, last_batch,
            "kill {kills}: the hard state went with its batch"
        );
    }
    assert!(kills >= 20, "only {kills} kills in the time allowed");
    println!("{kills} kills, {checked_batches} batches verified");
}

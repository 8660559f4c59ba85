//! Snapshot files, as a follower receives them from a leader before installing.
//!
//! Checks, for any bytes: `raft_storage_lmdb::check_snapshot_bytes` (the checks an
//! install runs: the CRC32C trailer, then every record) never panics, and accepts a
//! file only with the file's own size. The same bytes are checked a second time with
//! their last four bytes replaced by the right checksum, so mutations reach the
//! record walk instead of stopping at the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_storage_lmdb::check_snapshot_bytes;

fn check(bytes: &[u8]) {
    if let Ok(size) = check_snapshot_bytes(bytes) {
        assert_eq!(size, bytes.len() as u64, "accepted with the wrong size");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 4 {
        let mut sealed = data.to_vec();
        let body = data.len() - 4;
        let crc = crc32c::crc32c(&sealed[..body]);
        sealed[body..].copy_from_slice(&crc.to_le_bytes());
        check(&sealed);
    }
});

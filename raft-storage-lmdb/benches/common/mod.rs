//! What `snapshot_latency` uses: the tiny key-value machine of the tests
//! (`raft_storage_lmdb::testing`), and key and command builders.

use raft_proto::Bytes;
pub(crate) use raft_storage_lmdb::testing::{TextKv as Kv, entry};

/// A 16-byte key (lowercase hex) for `n`, scattered over the key space so that
/// consecutive `n` land on different pages (a random-insert workload, not an append).
pub(crate) fn key(n: u64) -> String {
    format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// `put <key> <value>` with a printable value of exactly `len` bytes.
pub(crate) fn put_command(key: &str, value_len: usize, salt: u64) -> Bytes {
    let mut c = Vec::with_capacity(5 + key.len() + value_len);
    c.extend_from_slice(b"put ");
    c.extend_from_slice(key.as_bytes());
    c.push(b' ');
    c.extend((0..value_len as u64).map(|i| b'a' + ((i + salt) % 26) as u8));
    Bytes::from(c)
}

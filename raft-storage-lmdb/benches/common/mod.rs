//! What `snapshot_latency` uses: the tiny key-value [`Machine`] of the tests, and
//! entry and command builders. The workspace's criterion suite has a copy
//! (`benches/benches/lmdb.rs`, in the `benches` crate).

use raft_proto::{Bytes, Entry, EntryPayload, LogId, LogIndex, Term};
use raft_storage_lmdb::{ApplyContext, LmdbError, Machine};

/// `put k v` (answers the old value), `append k v` (answers the new one), `get k`: the
/// machine of `tests/state_machine.rs`.
pub(crate) struct Kv;

impl Machine for Kv {
    fn apply(&self, cx: &mut ApplyContext<'_, '_>, command: &[u8]) -> Result<Bytes, LmdbError> {
        let text = String::from_utf8_lossy(command);
        let mut parts = text.splitn(3, ' ');
        let (op, key, value) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let old = cx
            .data
            .get(cx.txn, key.as_bytes())?
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        Ok(Bytes::from(match op {
            "put" => {
                cx.data.put(cx.txn, key.as_bytes(), value.as_bytes())?;
                old
            }
            "append" => {
                let mut new = old;
                new.extend_from_slice(value.as_bytes());
                cx.data.put(cx.txn, key.as_bytes(), &new)?;
                new
            }
            _ => old,
        }))
    }
}

/// A command entry at `index` of term 1.
pub(crate) fn entry(index: u64, command: Bytes) -> Entry {
    Entry {
        log_id: LogId::new(Term(1), LogIndex(index)),
        payload: EntryPayload::Command(command),
    }
}

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

//! For tests and benchmarks (feature `testing`): a tiny text key-value [`Machine`] and
//! an entry builder.

use crate::{ApplyContext, LmdbError, Machine};
use raft_proto::{Bytes, Entry, EntryPayload, LogId, LogIndex, Term};

/// Commands are text: `put k v` (answers the old value), `append k v` (answers the new
/// one), anything else reads `k` (answers its value). Pairs with
/// `raft_core::testing::kv_command`.
pub struct TextKv;

impl Machine for TextKv {
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
pub fn entry(index: u64, command: Bytes) -> Entry {
    Entry {
        log_id: LogId::new(Term(1), LogIndex(index)),
        payload: EntryPayload::Command(command),
    }
}

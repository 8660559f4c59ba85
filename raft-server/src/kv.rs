//! The replicated key-value state machine, on the LMDB toolkit.
//!
//! Every log entry is a [`KvCommand`]: the leader's wall-clock time when it proposed
//! the entry, and a body. Applying is deterministic: it depends only on the entries and
//! the state, never on the applying node's clock or configuration.
//!
//! **Sessions (dissertation §6.3).** `Register` opens a session whose id is the log
//! index of its entry. A write in a session carries `(client_id, seq, acked_below)`:
//! the state machine keeps the response of every request numbered `acked_below` or
//! more, so a retried request gets its first response and is applied once; responses
//! below `acked_below` are dropped. A session expires `ttl` after its last request, by
//! the time in the entries (the highest seen so far, so it never runs backwards).
//!
//! **Layout.** In the `data` table, a key of up to [`INLINE_KEY`] bytes is stored as
//! itself; a longer one (LMDB keys are at most 511 bytes) as its first
//! [`INLINE_KEY`] bytes followed by its SHA-256, with the whole key in the record. The
//! order of stored keys is the order of keys, except among long keys sharing their
//! first [`INLINE_KEY`] bytes, which scans sort. The `sessions` table holds the
//! cluster's bookkeeping under one-byte prefixes:
//!
//! ```text
//! c                      -> the clock: highest entry time, ms (u64 BE)
//! s <client_id>          -> session: last active ms, ttl ms
//! e <expires ms> <id>    -> (the expiry index)
//! r <client_id> <seq>    -> the response of a request not yet acknowledged
//! o <client_id>          -> the session's owner (SHA-256 of a certificate name)
//! n                      -> the number of open sessions (u64 BE; absent in a store
//!                           written before it existed: counted once, then kept)
//! m <node id>            -> a node's address
//! ```
//!
//! **Owners.** A session registered with `RegisterOwned` belongs to the certificate
//! name that registered it; an `OwnedWrite` from another name is refused with
//! [`ServerError::SessionNotOwned`] and changes nothing. Session ids are log indexes:
//! predictable, and that is harmless, because knowing one grants nothing. A session
//! opened by the older `Register` has no owner until its first `OwnedWrite`, which
//! claims it. At most `max_sessions` sessions are open; registering one more expires
//! the one that would expire first (the one idle longest, as every session of a
//! cluster has the same time to live).

use crate::proto::{Response, ServerError, SessionRef, WriteOp, WriteResult, Written};
use raft_proto::Bytes;
use raft_storage_lmdb::{ApplyContext, Db, LmdbError, Machine, View};
use serde::{Deserialize, Serialize};
use std::ops::Bound;

/// Keys up to this length are stored as themselves.
pub const INLINE_KEY: usize = 448;

/// The most responses a session keeps (requests in flight without acknowledgement);
/// a request beyond is refused, deterministically.
pub const MAX_CACHED_RESPONSES: u64 = 100_000;

/// The most sessions expired while applying one entry (the rest go with the next).
const EXPIRE_PER_ENTRY: usize = 1000;

/// One log entry of the KV server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCommand {
    /// The proposing leader's clock, ms since the Unix epoch.
    pub time_ms: u64,
    /// What to do.
    pub body: Body,
}

/// What a [`KvCommand`] does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Opens a session that expires `ttl_ms` after its last request.
    Register {
        /// The session's time to live.
        ttl_ms: u64,
    },
    /// A write, in a session or not.
    Write {
        /// The session.
        session: Option<SessionRef>,
        /// The write.
        op: WriteOp,
    },
    /// Only moves the clock (expires sessions); a leader may propose it when idle.
    Tick,
    /// Opens a session owned by the client identity `owner`; when `max_sessions` are
    /// open, the one idle longest is expired first. (Replaces `Register`, which is
    /// still applied from older logs.)
    RegisterOwned {
        /// The session's time to live.
        ttl_ms: u64,
        /// The SHA-256 of the registering certificate's principal (see [`owner_of`]).
        owner: [u8; 32],
        /// The most sessions kept (the proposing leader's setting).
        max_sessions: u64,
    },
    /// A write in a session, by the client identity `owner`: refused, and not applied,
    /// when the session belongs to another identity.
    OwnedWrite {
        /// The requester (see [`owner_of`]).
        owner: [u8; 32],
        /// The session.
        session: SessionRef,
        /// The write.
        op: WriteOp,
    },
}

/// The owner a session records: the SHA-256 of the certificate's principal (its name,
/// `client-<name>.raft`), so a renewed certificate keeps its holder's sessions and any
/// other certificate is refused.
pub fn owner_of(principal: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, principal.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

impl KvCommand {
    /// The command as log entry bytes.
    pub fn encode(&self) -> Result<Bytes, raft_proto::EncodeError> {
        raft_proto::encode_frame(self).map(Bytes::from)
    }
}

/// The KV [`Machine`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Kv;

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn sys_key(prefix: u8, parts: &[u64]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 8 * parts.len());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(&be(*p));
    }
    k
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(b)
}

#[derive(Serialize, Deserialize)]
struct SessionRecord {
    last_active_ms: u64,
    ttl_ms: u64,
    /// Responses kept (`r` keys of this session).
    cached: u64,
    /// The highest `acked_below` seen: every request numbered below it was answered
    /// and acknowledged, so a late copy of one (delayed in the network, or in a
    /// deposed leader's log) is refused rather than applied a second time after its
    /// cached response was dropped.
    acked_below: u64,
}

impl SessionRecord {
    fn expires(&self) -> u64 {
        self.last_active_ms.saturating_add(self.ttl_ms)
    }
}

fn encode_response(r: &Response) -> Result<Bytes, LmdbError> {
    raft_proto::encode_frame(r)
        .map(Bytes::from)
        .map_err(|e| LmdbError::Invalid(format!("encode a response: {e}")))
}

/// Where `key` is stored in the data table.
pub fn stored_key(key: &[u8]) -> Vec<u8> {
    if key.len() <= INLINE_KEY {
        return key.to_vec();
    }
    let mut k = key[..INLINE_KEY].to_vec();
    k.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, key).as_ref());
    k
}

/// A stored record: tag 0 then the value (the key is the stored key), or tag 1, the
/// key's length (u32 LE), the key, then the value.
fn encode_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    if key.len() <= INLINE_KEY {
        let mut r = Vec::with_capacity(1 + value.len());
        r.push(0);
        r.extend_from_slice(value);
        r
    } else {
        let mut r = Vec::with_capacity(5 + key.len() + value.len());
        r.push(1);
        r.extend_from_slice(&(key.len() as u32).to_le_bytes());
        r.extend_from_slice(key);
        r.extend_from_slice(value);
        r
    }
}

/// The (key, value) of a stored record.
fn decode_record<'a>(
    stored: &'a [u8],
    record: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), LmdbError> {
    let bad = || LmdbError::Invalid("a KV record is malformed".into());
    match record.split_first() {
        Some((0, value)) => Ok((stored, value)),
        Some((1, rest)) => {
            let (len, rest) = rest.split_at_checked(4).ok_or_else(bad)?;
            let len = u32::from_le_bytes(len.try_into().map_err(|_| bad())?) as usize;
            rest.split_at_checked(len).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// Reads `key` from the data table.
pub fn get(
    txn: &heed::RoTxn<'_, heed::WithoutTls>,
    data: Db,
    key: &[u8],
) -> Result<Option<Vec<u8>>, LmdbError> {
    let stored = stored_key(key);
    match data.get(txn, &stored)? {
        Some(record) => {
            let (k, v) = decode_record(&stored, record)?;
            // A SHA-256 collision is not expected; checked anyway.
            Ok((k == key).then(|| v.to_vec()))
        }
        None => Ok(None),
    }
}

/// Keys in `[start, end)` in key order, at most `limit`; and whether more were left.
pub fn scan(
    view: &View<'_>,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> Result<(Vec<(Bytes, Bytes)>, bool), LmdbError> {
    let from = start[..start.len().min(INLINE_KEY)].to_vec();
    let mut out: Vec<(Bytes, Bytes)> = Vec::new();
    // Long keys that share their first INLINE_KEY bytes are stored in hash order:
    // gather such a run, sort it, then emit.
    let mut run: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut run_prefix: Option<Vec<u8>> = None;
    let in_range = |k: &[u8]| k >= start && end.is_none_or(|e| k < e);
    let past_end = |k: &[u8]| end.is_some_and(|e| k >= e);
    // Emits a sorted batch; returns true when the scan is complete.
    let emit =
        |batch: &mut Vec<(Vec<u8>, Vec<u8>)>, out: &mut Vec<(Bytes, Bytes)>| -> Option<bool> {
            batch.sort();
            for (k, v) in batch.drain(..) {
                if past_end(&k) {
                    return Some(false);
                }
                if in_range(&k) {
                    if out.len() == limit {
                        return Some(true);
                    }
                    out.push((Bytes::from(k), Bytes::from(v)));
                }
            }
            None
        };
    // LMDB refuses an empty key, even as a bound.
    let lower = if from.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Included(&from[..])
    };
    let range = (lower, Bound::Unbounded);
    for item in view.data.range(view.txn, &range)? {
        let (stored, record) = item?;
        let (k, v) = decode_record(stored, record)?;
        let prefix = (k.len() > INLINE_KEY).then(|| k[..INLINE_KEY].to_vec());
        if prefix.is_none() || prefix != run_prefix {
            if let Some(more) = emit(&mut run, &mut out) {
                return Ok((out, more));
            }
            run_prefix = prefix;
        }
        run.push((k.to_vec(), v.to_vec()));
        if run_prefix.is_none()
            && let Some(more) = emit(&mut run, &mut out)
        {
            return Ok((out, more));
        }
    }
    let more = emit(&mut run, &mut out).unwrap_or(false);
    Ok((out, more))
}

/// The number of open sessions: one read (a store written before the count existed
/// is counted by a scan, until its first session opens or expires).
pub fn session_count(view: &View<'_>) -> Result<u64, LmdbError> {
    if let Some(n) = view.sessions.get(view.txn, b"n")? {
        return Ok(read_u64(n));
    }
    let mut n = 0;
    for item in view.sessions.prefix_iter(view.txn, b"s")? {
        item?;
        n += 1;
    }
    Ok(n)
}

impl Kv {
    fn clock(cx: &mut ApplyContext<'_, '_>, time_ms: u64) -> Result<u64, LmdbError> {
        let old = cx.sessions.get(cx.txn, b"c")?.map(read_u64).unwrap_or(0);
        let now = old.max(time_ms);
        if now != old {
            cx.sessions.put(cx.txn, b"c", &be(now))?;
        }
        Ok(now)
    }

    /// Drops sessions whose expiry is at or before `now`, with their responses.
    fn expire(cx: &mut ApplyContext<'_, '_>, now: u64) -> Result<(), LmdbError> {
        let mut due = Vec::new();
        for item in cx.sessions.prefix_iter(cx.txn, b"e")? {
            let (k, _) = item?;
            if k.len() != 17 || read_u64(&k[1..9]) > now || due.len() == EXPIRE_PER_ENTRY {
                break;
            }
            due.push((k.to_vec(), read_u64(&k[9..17])));
        }
        for (index_key, id) in due {
            cx.sessions.delete(cx.txn, &index_key)?;
            Self::close_session(cx, id)?;
        }
        Ok(())
    }

    /// Removes session `id` (its expiry index entry is the caller's), its owner and
    /// responses, and counts it out.
    fn close_session(cx: &mut ApplyContext<'_, '_>, id: u64) -> Result<(), LmdbError> {
        if cx.sessions.delete(cx.txn, &sys_key(b's', &[id]))?
            && let Some(n) = cx.sessions.get(cx.txn, b"n")?.map(read_u64)
        {
            cx.sessions.put(cx.txn, b"n", &be(n.saturating_sub(1)))?;
        }
        cx.sessions.delete(cx.txn, &sys_key(b'o', &[id]))?;
        Self::drop_responses(cx, id, u64::MAX)?;
        Ok(())
    }

    /// The number of open sessions, from the count (kept from now on if it was not).
    fn count_sessions(cx: &mut ApplyContext<'_, '_>) -> Result<u64, LmdbError> {
        if let Some(n) = cx.sessions.get(cx.txn, b"n")? {
            return Ok(read_u64(n));
        }
        let mut n = 0u64;
        for item in cx.sessions.prefix_iter(cx.txn, b"s")? {
            item?;
            n += 1;
        }
        cx.sessions.put(cx.txn, b"n", &be(n))?;
        Ok(n)
    }

    /// Opens session `id` (the log index of its entry), expiring the sessions that
    /// would expire first while `max_sessions` are open.
    fn open_session(
        cx: &mut ApplyContext<'_, '_>,
        now: u64,
        ttl_ms: u64,
        owner: Option<[u8; 32]>,
        max_sessions: u64,
    ) -> Result<u64, LmdbError> {
        let id = cx.log_id.index.0;
        let mut open = Self::count_sessions(cx)?;
        let mut evicted = 0;
        // A lowered limit is reached over several registrations, a bounded amount of
        // work per entry.
        while open >= max_sessions.max(1) && evicted < EXPIRE_PER_ENTRY {
            evicted += 1;
            let first = match cx.sessions.prefix_iter(cx.txn, b"e")?.next() {
                Some(item) => item?.0.to_vec(),
                None => break,
            };
            cx.sessions.delete(cx.txn, &first)?;
            if first.len() == 17 {
                Self::close_session(cx, read_u64(&first[9..17]))?;
            }
            open = Self::count_sessions(cx)?;
        }
        Self::put_session(
            cx,
            id,
            &SessionRecord {
                last_active_ms: now,
                ttl_ms,
                cached: 0,
                acked_below: 0,
            },
            None,
        )?;
        cx.sessions.put(cx.txn, b"n", &be(open + 1))?;
        if let Some(owner) = owner {
            cx.sessions.put(cx.txn, &sys_key(b'o', &[id]), &owner)?;
        }
        Ok(id)
    }

    /// Whether `owner` may use session `id`: it owns it, or the session has no owner
    /// yet (opened by `Register`) and is claimed now.
    fn check_owner(
        cx: &mut ApplyContext<'_, '_>,
        id: u64,
        owner: &[u8; 32],
    ) -> Result<bool, LmdbError> {
        let key = sys_key(b'o', &[id]);
        match cx.sessions.get(cx.txn, &key)? {
            Some(recorded) => Ok(recorded == owner.as_slice()),
            None => {
                if cx.sessions.get(cx.txn, &sys_key(b's', &[id]))?.is_some() {
                    cx.sessions.put(cx.txn, &key, owner)?;
                }
                Ok(true)
            }
        }
    }

    /// Drops the cached responses of session `id` numbered below `below`; returns how
    /// many.
    fn drop_responses(
        cx: &mut ApplyContext<'_, '_>,
        id: u64,
        below: u64,
    ) -> Result<u64, LmdbError> {
        let from = sys_key(b'r', &[id, 0]);
        let to = sys_key(b'r', &[id, below]);
        let range = (Bound::Included(&from[..]), Bound::Excluded(&to[..]));
        Ok(cx.sessions.delete_range(cx.txn, &range)? as u64)
    }

    fn session(cx: &mut ApplyContext<'_, '_>, id: u64) -> Result<Option<SessionRecord>, LmdbError> {
        match cx.sessions.get(cx.txn, &sys_key(b's', &[id]))? {
            Some(raw) => Ok(raft_proto::decode_frame(raw).ok()),
            None => Ok(None),
        }
    }

    fn put_session(
        cx: &mut ApplyContext<'_, '_>,
        id: u64,
        record: &SessionRecord,
        old_expiry: Option<u64>,
    ) -> Result<(), LmdbError> {
        if let Some(old) = old_expiry {
            cx.sessions.delete(cx.txn, &sys_key(b'e', &[old, id]))?;
        }
        let raw =
            raft_proto::encode_frame(record).map_err(|e| LmdbError::Invalid(e.to_string()))?;
        cx.sessions.put(cx.txn, &sys_key(b's', &[id]), &raw)?;
        cx.sessions
            .put(cx.txn, &sys_key(b'e', &[record.expires(), id]), &[])?;
        Ok(())
    }

    fn write(cx: &mut ApplyContext<'_, '_>, op: &WriteOp) -> Result<WriteResult, LmdbError> {
        let key = op.key();
        let stored = stored_key(key);
        let current = match cx.data.get(cx.txn, &stored)? {
            Some(record) => {
                let (k, v) = decode_record(&stored, record)?;
                (k == &key[..]).then(|| Bytes::from(v))
            }
            None => None,
        };
        let set = |cx: &mut ApplyContext<'_, '_>, value: Option<&[u8]>| -> Result<(), LmdbError> {
            match value {
                Some(v) => cx.data.put(cx.txn, &stored, &encode_record(key, v)),
                None => cx.data.delete(cx.txn, &stored).map(|_| ()),
            }
            .map_err(Into::into)
        };
        Ok(match op {
            WriteOp::Put { value, .. } => {
                set(cx, Some(value))?;
                WriteResult::Previous(current)
            }
            WriteOp::Delete { .. } => {
                if current.is_some() {
                    set(cx, None)?;
                }
                WriteResult::Previous(current)
            }
            WriteOp::Cas { expected, new, .. } => {
                if current == *expected {
                    set(cx, new.as_deref())?;
                    WriteResult::Cas {
                        swapped: true,
                        current: new.clone(),
                    }
                } else {
                    WriteResult::Cas {
                        swapped: false,
                        current,
                    }
                }
            }
            WriteOp::Append { value, .. } => {
                let mut v = current.map(|c| c.to_vec()).unwrap_or_default();
                v.extend_from_slice(value);
                set(cx, Some(&v))?;
                WriteResult::Appended {
                    len: v.len() as u64,
                }
            }
        })
    }

    fn write_in_session(
        cx: &mut ApplyContext<'_, '_>,
        now: u64,
        s: SessionRef,
        op: &WriteOp,
    ) -> Result<Response, LmdbError> {
        let Some(mut record) = Self::session(cx, s.client_id)? else {
            let expired = WriteResult::Refused(ServerError::SessionExpired(s.client_id));
            return Ok(Response::Written(Written {
                index: cx.log_id.index.0,
                result: expired,
            }));
        };
        let response_key = sys_key(b'r', &[s.client_id, s.seq]);
        if let Some(first) = cx.sessions.get(cx.txn, &response_key)? {
            // A retry of an applied request: its first response, nothing applied.
            return Ok(raft_proto::decode_frame(first).unwrap_or_else(|e| {
                Response::Error(ServerError::Failed(format!(
                    "a cached response is unreadable: {e}"
                )))
            }));
        }
        let index = cx.log_id.index.0;
        let refused = |e: ServerError| {
            Response::Written(Written {
                index,
                result: WriteResult::Refused(e),
            })
        };
        let acked_below = record.acked_below.max(s.acked_below);
        if s.seq < acked_below {
            let e = ServerError::Invalid(format!(
                "request {} was already acknowledged (acked below {acked_below})",
                s.seq
            ));
            return Ok(refused(e));
        }
        let old_expiry = record.expires();
        record.last_active_ms = now;
        record.acked_below = acked_below;
        record.cached =
            record
                .cached
                .saturating_sub(Self::drop_responses(cx, s.client_id, acked_below)?);
        let response = if record.cached >= MAX_CACHED_RESPONSES {
            refused(ServerError::Busy(format!(
                "session {} has {} unacknowledged requests",
                s.client_id, record.cached
            )))
        } else {
            let result = Self::write(cx, op)?;
            let response = Response::Written(Written { index, result });
            let raw = raft_proto::encode_frame(&response)
                .map_err(|e| LmdbError::Invalid(e.to_string()))?;
            cx.sessions.put(cx.txn, &response_key, &raw)?;
            record.cached += 1;
            response
        };
        Self::put_session(cx, s.client_id, &record, Some(old_expiry))?;
        Ok(response)
    }
}

impl Machine for Kv {
    fn apply(&self, cx: &mut ApplyContext<'_, '_>, command: &[u8]) -> Result<Bytes, LmdbError> {
        let command: KvCommand = match raft_proto::decode_frame(command) {
            Ok(c) => c,
            // Deterministic on every replica: the entry is skipped with an error.
            Err(e) => {
                return encode_response(&Response::Error(ServerError::Invalid(format!(
                    "undecodable command: {e}"
                ))));
            }
        };
        let now = Self::clock(cx, command.time_ms)?;
        Self::expire(cx, now)?;
        let response = match command.body {
            Body::Register { ttl_ms } => {
                let client_id = Self::open_session(cx, now, ttl_ms, None, u64::MAX)?;
                Response::Registered { client_id }
            }
            Body::RegisterOwned {
                ttl_ms,
                owner,
                max_sessions,
            } => {
                let client_id = Self::open_session(cx, now, ttl_ms, Some(owner), max_sessions)?;
                Response::Registered { client_id }
            }
            Body::OwnedWrite { owner, session, op } => {
                if Self::check_owner(cx, session.client_id, &owner)? {
                    Self::write_in_session(cx, now, session, &op)?
                } else {
                    Response::Written(Written {
                        index: cx.log_id.index.0,
                        result: WriteResult::Refused(ServerError::SessionNotOwned(
                            session.client_id,
                        )),
                    })
                }
            }
            Body::Write {
                session: Some(s),
                op,
            } => Self::write_in_session(cx, now, s, &op)?,
            Body::Write { session: None, op } => {
                let result = Self::write(cx, &op)?;
                Response::Written(Written {
                    index: cx.log_id.index.0,
                    result,
                })
            }
            Body::Tick => Response::Done,
        };
        encode_response(&response)
    }
}

//! In-memory storage: "durable" for as long as the objects live, so a node restarted
//! over the same objects resumes where it stopped.

use crate::action::Persist;
use crate::node::{LogStore, MachineState, SnapshotTask, StateMachine, StorageError, StoredLog};
use futures::FutureExt;
use raft_proto::{Bytes, Entry, EntryPayload, LogId, SnapshotMeta, decode_frame, encode_frame};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A [`LogStore`] in memory. Clones share the same log.
#[derive(Clone, Default)]
pub struct MemLogStore {
    log: Arc<Mutex<StoredLog>>,
    failing: Arc<AtomicBool>,
}

impl MemLogStore {
    /// An empty log.
    pub fn new() -> MemLogStore {
        MemLogStore::default()
    }

    /// Makes every later operation fail (a dead disk), or work again.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// A copy of what is stored.
    pub fn snapshot(&self) -> StoredLog {
        lock(&self.log).clone()
    }

    fn check(&self, operation: &'static str) -> Result<(), StorageError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StorageError::new(
                operation,
                "the in-memory disk is set to fail",
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl LogStore for MemLogStore {
    async fn load(&self) -> Result<StoredLog, StorageError> {
        self.check("load the log")?;
        Ok(lock(&self.log).clone())
    }

    async fn write(&self, batch: &Persist) -> Result<(), StorageError> {
        self.check("write to the log")?;
        let mut log = lock(&self.log);
        if let Some(t) = batch.truncate_from {
            log.entries.retain(|e| e.log_id.index < t);
        }
        if let Some(first) = batch.entries.first() {
            let expected = log
                .entries
                .last()
                .map_or(log.purged.index, |e| e.log_id.index)
                .next();
            if first.log_id.index != expected {
                return Err(StorageError::new(
                    "write to the log",
                    format!(
                        "entry {:?} would leave a gap after index {}",
                        first.log_id,
                        expected.prev()
                    ),
                ));
            }
        }
        log.entries.extend(batch.entries.iter().cloned());
        if let Some(hs) = batch.hard_state {
            log.hard_state = hs;
        }
        Ok(())
    }

    async fn purge(&self, up_to: LogId, base: &SnapshotMeta) -> Result<(), StorageError> {
        self.check("purge the log")?;
        let mut log = lock(&self.log);
        log.entries.retain(|e| e.log_id.index > up_to.index);
        if up_to.index > log.purged.index {
            log.purged = up_to;
            log.base = Some(base.clone());
        }
        Ok(())
    }

    async fn reset(&self, base: &SnapshotMeta) -> Result<(), StorageError> {
        self.check("reset the log")?;
        let mut log = lock(&self.log);
        log.entries.clear();
        log.purged = base.last_log_id;
        log.base = Some(base.clone());
        Ok(())
    }
}

/// A command for [`MemStateMachine`]: `put key value` (answers the previous value),
/// `append key value` (answers the new value) or `get key` (answers the value). An
/// empty command is a no-op.
pub fn kv_command(op: &str, key: &str, value: &str) -> Bytes {
    Bytes::from(format!("{op} {key} {value}").as_str())
}

#[derive(Default)]
struct Machine {
    applied: LogId,
    data: BTreeMap<String, String>,
    snapshot: Option<(SnapshotMeta, Bytes)>,
    incoming: Option<(u64, Vec<u8>)>,
    next_id: u64,
}

/// A key-value [`StateMachine`] in memory, for tests and examples. Clones share the
/// same state, so a node restarted over a clone resumes from it.
#[derive(Clone, Default)]
pub struct MemStateMachine {
    inner: Arc<Mutex<Machine>>,
    /// Distinguishes snapshot ids of different machines.
    salt: u64,
}

impl MemStateMachine {
    /// An empty store; `salt` keeps its snapshot ids apart from other machines'.
    pub fn new(salt: u64) -> MemStateMachine {
        MemStateMachine {
            inner: Arc::default(),
            salt,
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        lock(&self.inner).data.get(key).cloned()
    }

    /// The last applied entry.
    pub fn applied(&self) -> LogId {
        lock(&self.inner).applied
    }

    /// Every key and value.
    pub fn dump(&self) -> BTreeMap<String, String> {
        lock(&self.inner).data.clone()
    }

    fn execute(data: &mut BTreeMap<String, String>, command: &[u8]) -> Bytes {
        if command.is_empty() {
            return Bytes::new(); // a no-op, as benchmarks use
        }
        let text = String::from_utf8_lossy(command);
        let mut parts = text.splitn(3, ' ');
        let (op, key, value) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let out = match op {
            "put" => data
                .insert(key.to_string(), value.to_string())
                .unwrap_or_default(),
            "append" => {
                let v = data.entry(key.to_string()).or_default();
                v.push_str(value);
                v.clone()
            }
            "get" => data.get(key).cloned().unwrap_or_default(),
            _ => format!("unknown command {op:?}"),
        };
        Bytes::from(out.as_str())
    }
}

#[async_trait::async_trait]
impl StateMachine for MemStateMachine {
    async fn state(&self) -> Result<MachineState, StorageError> {
        let m = lock(&self.inner);
        Ok(MachineState {
            applied: m.applied,
            snapshot: m.snapshot.as_ref().map(|(meta, _)| meta.clone()),
        })
    }

    async fn apply(&self, entries: &[Entry]) -> Result<Vec<Bytes>, StorageError> {
        let mut m = lock(&self.inner);
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if e.log_id.index <= m.applied.index {
                return Err(StorageError::new(
                    "apply",
                    format!(
                        "entry {:?} is at or before the applied entry {:?}",
                        e.log_id, m.applied
                    ),
                ));
            }
            out.push(match &e.payload {
                EntryPayload::Command(c) => Self::execute(&mut m.data, c),
                EntryPayload::Blank | EntryPayload::Membership(_) => Bytes::new(),
            });
            m.applied = e.log_id;
        }
        Ok(out)
    }

    fn begin_snapshot(&self, mut meta: SnapshotMeta) -> SnapshotTask {
        // The capture: a clone of the data as of now (the copy-on-write of the poor).
        let (data, id) = {
            let mut m = lock(&self.inner);
            m.next_id += 1;
            let pairs: Vec<(String, String)> =
                m.data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            (pairs, (self.salt << 32) | m.next_id)
        };
        let inner = self.inner.clone();
        async move {
            let bytes =
                encode_frame(&data).map_err(|e| StorageError::new("encode a snapshot", e))?;
            meta.id = id;
            let mut m = lock(&inner);
            let newer = m
                .snapshot
                .as_ref()
                .is_none_or(|(s, _)| s.last_log_id < meta.last_log_id);
            if newer {
                m.snapshot = Some((meta.clone(), Bytes::from(bytes)));
            }
            Ok(meta)
        }
        .boxed()
    }

    async fn read_snapshot(
        &self,
        id: u64,
        offset: u64,
        len: usize,
    ) -> Result<Option<(Bytes, bool)>, StorageError> {
        let m = lock(&self.inner);
        let Some((meta, bytes)) = &m.snapshot else {
            return Ok(None);
        };
        if meta.id != id {
            return Ok(None);
        }
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(len).min(bytes.len());
        Ok(Some((Bytes::from(&bytes[start..end]), end == bytes.len())))
    }

    async fn receive_snapshot(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let mut m = lock(&self.inner);
        if offset == 0 {
            m.incoming = Some((meta.id, Vec::new()));
        }
        match &mut m.incoming {
            Some((id, buf)) if *id == meta.id && buf.len() as u64 == offset => {
                buf.extend_from_slice(&data);
                Ok(())
            }
            _ => Err(StorageError::new(
                "receive a snapshot",
                format!("chunk at {offset} of snapshot {} out of order", meta.id),
            )),
        }
    }

    async fn install_snapshot(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let mut m = lock(&self.inner);
        let bytes = match m.incoming.take() {
            Some((id, bytes)) if id == meta.id => bytes,
            _ => {
                return Err(StorageError::new(
                    "install a snapshot",
                    format!("snapshot {} was not received", meta.id),
                ));
            }
        };
        let pairs: Vec<(String, String)> =
            decode_frame(&bytes).map_err(|e| StorageError::new("install a snapshot", e))?;
        m.data = pairs.into_iter().collect();
        m.applied = meta.last_log_id;
        m.snapshot = Some((meta.clone(), Bytes::from(bytes)));
        Ok(())
    }
}

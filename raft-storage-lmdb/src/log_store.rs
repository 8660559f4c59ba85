//! [`LmdbLogStore`]: the Raft log and hard state: a write-ahead log (see `wal.rs`) in
//! front of LMDB.
//!
//! ```text
//! log/data.mdb            LMDB, the indexed store of record:
//!   entries               big-endian index → CRC32C + frame(Entry)
//!   meta                  format → u32; hard_state, purged (LogId), base (the
//!                         snapshot the log continues), wal (the checkpoint: where
//!                         replay starts) → CRC32C + frame
//! log/wal/<seq>.wal       the write-ahead log
//! ```
//!
//! **Writes**: each [`LogStore::write`] appends one WAL record (truncation, entries and
//! hard state together) and syncs it with one `fdatasync` into preallocated blocks:
//! one device flush, and the batch is all there or, cut short, dropped whole at
//! replay. Purges are WAL records too, not synced on their own (the next write's sync
//! covers them, in order); a reset is synced before it returns.
//!
//! **Checkpoints**: a background thread applies the WAL records to LMDB in batches,
//! with one durable LMDB commit that also records the WAL position reached, then
//! recycles the segments behind it. A write never waits for one.
//!
//! **Open** replays the records after the checkpoint into LMDB. Every record is
//! checksummed: a torn tail is cut, damage before the tail is a
//! [`LmdbError::Corruption`], never served.

use crate::common::{self, DirLock, EnvConfig, FORMAT_VERSION, LmdbError};
use crate::durable;
use crate::wal::{self, Position, Record, WalConfig};
use crate::worker::Worker;
use heed::byteorder::BigEndian;
use heed::types::{Bytes as RawBytes, Str, U64};
use heed::{CommitOrAbort, Database, Env, PutFlags, RoTxn, RwTxn, WithoutTls};
use raft_core::Persist;
use raft_core::node::{LogStore, StorageError, StoredLog};
use raft_proto::{Entry, HardState, LogId, LogIndex, SnapshotMeta, decode_frame, encode_frame};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

type Entries = Database<'static, U64<BigEndian>, RawBytes>;
type Meta = Database<'static, Str, RawBytes>;

/// What the writer and the index share.
struct Shared {
    dir: PathBuf,
    wal_dir: PathBuf,
    config: EnvConfig,
    /// Where the writer's next record goes: everything before it is in the WAL.
    written: Mutex<Position>,
    /// The last durable checkpoint: segments before its segment may be reused.
    checkpointed: Mutex<Position>,
    /// A checkpoint is queued or running.
    checkpointing: AtomicBool,
    /// Why the last checkpoint failed, if it did: the next write reports it.
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn written(&self) -> Position {
        *self.written.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn checkpointed(&self) -> Position {
        *self
            .checkpointed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// WAL bytes written since the last checkpoint (counting whole segments between).
    fn unchecked_bytes(&self, end: Position) -> u64 {
        let cp = self.checkpointed();
        let segment = self.wal_config().segment_bytes;
        if end.seq == cp.seq {
            end.offset.saturating_sub(cp.offset)
        } else {
            segment.saturating_sub(cp.offset)
                + (end.seq - cp.seq - 1).saturating_mul(segment)
                + end.offset
        }
    }
}

/// LMDB, owned by the index thread: checkpoints and reads.
struct Index {
    env: Env<WithoutTls>,
    entries: Entries,
    meta: Meta,
    shared: Arc<Shared>,
    _lock: DirLock,
}

/// The WAL's writer, owned by the writer thread.
struct Appender {
    writer: wal::Writer,
    shared: Arc<Shared>,
    index: Worker<Index>,
    prep: Worker<()>,
    /// The next segment is being prepared: its sequence number and the answer.
    next_ready: Option<(u64, std::sync::mpsc::Receiver<Result<(), String>>)>,
    /// The last index in the log, to refuse a write that would leave a gap.
    last: LogIndex,
}

/// A durable [`LogStore`]: a write-ahead log in front of LMDB (see the module docs).
#[derive(Clone)]
pub struct LmdbLogStore {
    writer: Worker<Appender>,
    index: Worker<Index>,
    dir: PathBuf,
}

impl LmdbLogStore {
    /// Opens (creating) the log in `dir` and replays its write-ahead log. Refuses a
    /// directory another process has open, one written by a newer format, and one
    /// whose write-ahead log is damaged before its tail.
    pub fn open(dir: impl AsRef<Path>, config: EnvConfig) -> Result<LmdbLogStore, LmdbError> {
        let dir = dir.as_ref().to_path_buf();
        let lock = DirLock::acquire(&dir)?;
        let env = common::open_env(&dir, &config, 4, common::EnvSync::Full)?;
        let wtxn = env.write_txn()?;
        let (entries, meta): (Entries, Meta) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
                let entries =
                    opener.create_database::<U64<BigEndian>, RawBytes>(wtxn, Some("entries"))?;
                let meta = opener.create_database::<Str, RawBytes>(wtxn, Some("meta"))?;
                Ok(CommitOrAbort::<_, ()>::Commit((entries, meta)))
            })?
            .unwrap_commit();
        check_format(&env, meta, &dir)?;
        let wal_dir = dir.join("wal");
        durable::create_dir(&wal_dir)?;
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            wal_dir: wal_dir.clone(),
            config,
            written: Mutex::new(Position::default()),
            checkpointed: Mutex::new(Position::default()),
            checkpointing: AtomicBool::new(false),
            failure: Mutex::new(None),
        });
        let mut index = Index {
            env,
            entries,
            meta,
            shared: shared.clone(),
            _lock: lock,
        };
        // Replay what the WAL holds past the last checkpoint.
        let from: Position = {
            let rtxn = index.env.read_txn()?;
            index.meta_value(&rtxn, "wal")?
        };
        let end = index.checkpoint_to(from, None)?;
        *shared
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = end;
        *shared
            .checkpointed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = end;
        let wal_config = shared.wal_config();
        if !wal::segment_path(&wal_dir, end.seq).exists() {
            wal::prepare_segment(&wal_dir, end.seq, wal_config, None)?;
        }
        let writer = wal::Writer::open(&wal_dir, wal_config, end)?;
        let last = {
            let rtxn = index.env.read_txn()?;
            match index.entries.last(&rtxn)? {
                Some((i, _)) => LogIndex(i),
                None => index.meta_value::<LogId>(&rtxn, "purged")?.index,
            }
        };
        let index = Worker::start("raft-log-index", index)
            .map_err(|e| LmdbError::io("start the log's index thread", e))?;
        let prep = Worker::start("raft-log-prep", ())
            .map_err(|e| LmdbError::io("start the log's segment thread", e))?;
        let appender = Appender {
            writer,
            shared,
            index: index.clone(),
            prep,
            next_ready: None,
            last,
        };
        let writer = Worker::start("raft-log-wal", appender)
            .map_err(|e| LmdbError::io("start the log's writer thread", e))?;
        Ok(LmdbLogStore { writer, index, dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the stored entries with indexes in `[from, to)`: fewer (a prefix) at the
    /// end of the log, none from the purged part. For tools and tests; a node reads
    /// its log once, with [`load`](LogStore::load).
    pub async fn entries(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.on_index("read the log", move |s| s.range(from, to))
            .await
    }

    async fn on_writer<R: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Appender) -> Result<R, LmdbError> + Send + 'static,
    ) -> Result<R, StorageError> {
        self.finish(operation, self.writer.call(operation, f).await)
    }

    async fn on_index<R: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Index) -> Result<R, LmdbError> + Send + 'static,
    ) -> Result<R, StorageError> {
        self.finish(operation, self.index.call(operation, f).await)
    }

    fn finish<R>(
        &self,
        operation: &'static str,
        r: Result<Result<R, LmdbError>, crate::WorkerGone>,
    ) -> Result<R, StorageError> {
        match r {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                tracing::error!(dir = %self.dir.display(), operation, error = %e, "log storage failed");
                Err(e.into_storage(operation))
            }
            Err(gone) => Err(StorageError::new(operation, gone)),
        }
    }
}

impl Shared {
    fn wal_config(&self) -> WalConfig {
        WalConfig {
            segment_bytes: self.config.wal_segment_bytes.max(4096),
        }
    }
}

/// Writes the format version into a new store, refuses a newer one.
pub(crate) fn check_format(env: &Env<WithoutTls>, meta: Meta, dir: &Path) -> Result<(), LmdbError> {
    let mut wtxn = env.write_txn()?;
    match meta.get(&wtxn, "format")? {
        Some(raw) => {
            let found = raw.try_into().map(u32::from_le_bytes).map_err(|_| {
                LmdbError::corrupt(format!("{}: format version", dir.display()), "not 4 bytes")
            })?;
            if found > FORMAT_VERSION {
                return Err(LmdbError::NewerFormat {
                    path: dir.to_path_buf(),
                    found,
                });
            }
            if found < FORMAT_VERSION {
                return Err(LmdbError::OlderFormat {
                    path: dir.to_path_buf(),
                    found,
                });
            }
        }
        None => meta.put(&mut wtxn, "format", &FORMAT_VERSION.to_le_bytes())?,
    }
    wtxn.commit()?;
    Ok(())
}

fn decode<T: DeserializeOwned>(record: &[u8], what: &dyn Fn() -> String) -> Result<T, LmdbError> {
    let frame = common::unseal(record, what)?;
    decode_frame(frame).map_err(|e| LmdbError::corrupt(what(), e.to_string()))
}

fn seal_value<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, LmdbError> {
    let frame =
        encode_frame(value).map_err(|e| LmdbError::Invalid(format!("cannot encode: {e}")))?;
    Ok(common::seal(&frame))
}

/// Retries `f` while the disk is full (with backoff, up to `disk_full_patience`).
fn waiting_out_a_full_disk<R>(
    shared: &Shared,
    what: &str,
    mut f: impl FnMut() -> Result<R, LmdbError>,
) -> Result<R, LmdbError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(10);
    loop {
        match f() {
            Err(e)
                if e.is_disk_full(&shared.dir)
                    && started.elapsed() < shared.config.disk_full_patience =>
            {
                tracing::error!(dir = %shared.dir.display(), what, error = %e, "disk full: waiting for space before writing again");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

impl Appender {
    /// Appends `record` to the WAL (synced when `sync`), then schedules a checkpoint
    /// and the next segment when due.
    fn append(&mut self, record: &Record, sync: bool) -> Result<(), LmdbError> {
        if let Some(failure) = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Err(LmdbError::Invalid(format!(
                "the log's checkpoint into LMDB failed: {failure}"
            )));
        }
        let shared = self.shared.clone();
        let end = waiting_out_a_full_disk(&shared, "append to the log", || {
            let next_ready = &mut self.next_ready;
            let mut next = |seq: u64| next_segment(&shared, next_ready, seq);
            self.writer.append(record, sync, &mut next)
        })?;
        *self
            .shared
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = end;
        let segment = self.shared.wal_config().segment_bytes;
        let checkpoint_due =
            self.shared.unchecked_bytes(end) >= self.shared.config.wal_checkpoint_bytes.max(1);
        if checkpoint_due && !self.shared.checkpointing.swap(true, Ordering::SeqCst) {
            self.index
                .post(|index: &mut Index| index.background_checkpoint());
        }
        if end.offset >= segment / 2 && self.next_ready.is_none() {
            self.next_ready = Some((
                end.seq + 1,
                request_segment(&self.shared, &self.prep, end.seq + 1),
            ));
        }
        Ok(())
    }

    fn write(&mut self, batch: &Persist) -> Result<(), LmdbError> {
        let mut last = self.last;
        if let Some(t) = batch.truncate_from {
            last = last.min(t.prev());
        }
        if let Some(first) = batch.entries.first() {
            let first = first.log_id.index;
            if first != last.next() {
                return Err(LmdbError::Invalid(format!(
                    "entry {first} would leave a gap after index {last}"
                )));
            }
            last = batch.entries.last().map_or(last, |e| e.log_id.index);
        }
        self.append(
            &Record::Write {
                truncate_from: batch.truncate_from,
                entries: batch.entries.clone(),
                hard_state: batch.hard_state,
            },
            true,
        )?;
        self.last = last;
        Ok(())
    }
}

impl Drop for Appender {
    /// A clean close checkpoints what the WAL holds, so the next open replays nothing
    /// (the index thread runs this before it stops).
    fn drop(&mut self) {
        self.index.post(|index: &mut Index| {
            if let Err(e) = index.checkpoint() {
                tracing::warn!(error = %e, "the log's last checkpoint failed; the next open replays its write-ahead log");
            }
        });
    }
}

/// Asks the segment thread to make segment `seq` ready, reusing a checkpointed one.
fn request_segment(
    shared: &Arc<Shared>,
    prep: &Worker<()>,
    seq: u64,
) -> std::sync::mpsc::Receiver<Result<(), String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let shared = shared.clone();
    let posted = prep.post(move |_| {
        let r = prepare(&shared, seq).map_err(|e| e.to_string());
        let _ = tx.send(r);
    });
    if !posted {
        tracing::error!("the log's segment thread has stopped");
    }
    rx
}

fn prepare(shared: &Shared, seq: u64) -> Result<(), LmdbError> {
    let checkpointed = shared.checkpointed().seq;
    let recycle = wal::segments_before(&shared.wal_dir, checkpointed)?
        .into_iter()
        .next();
    wal::prepare_segment(&shared.wal_dir, seq, shared.wal_config(), recycle)
}

/// Makes segment `seq` ready for the writer: waits for the preparation asked for
/// earlier, or prepares it now.
fn next_segment(
    shared: &Shared,
    next_ready: &mut Option<(u64, std::sync::mpsc::Receiver<Result<(), String>>)>,
    seq: u64,
) -> Result<(), LmdbError> {
    match next_ready.take() {
        Some((s, rx)) if s == seq => match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "preparing the next WAL segment failed; trying again");
                prepare(shared, seq)
            }
            Err(_) => prepare(shared, seq),
        },
        _ => prepare(shared, seq),
    }
}

impl Index {
    fn meta_value<T: DeserializeOwned + Default>(
        &self,
        txn: &RoTxn<'_, WithoutTls>,
        key: &'static str,
    ) -> Result<T, LmdbError> {
        match self.meta.get(txn, key)? {
            Some(raw) => decode(raw, &|| format!("log meta {key}")),
            None => Ok(T::default()),
        }
    }

    fn entry(&self, index: u64, raw: &[u8]) -> Result<Entry, LmdbError> {
        let e: Entry = decode(raw, &|| format!("log entry {index}"))?;
        if e.log_id.index != LogIndex(index) {
            return Err(LmdbError::corrupt(
                format!("log entry {index}"),
                format!("holds entry {:?}", e.log_id),
            ));
        }
        Ok(e)
    }

    /// A checkpoint the writer asked for; a failure is kept for the writer to report.
    fn background_checkpoint(&mut self) {
        let r = self.checkpoint();
        self.shared.checkpointing.store(false, Ordering::SeqCst);
        if let Err(e) = r {
            tracing::error!(dir = %self.shared.dir.display(), error = %e, "the log's checkpoint into LMDB failed");
            *self
                .shared
                .failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
        }
    }

    /// Applies every record the writer has appended to LMDB.
    fn checkpoint(&mut self) -> Result<(), LmdbError> {
        let from: Position = {
            let rtxn = self.env.read_txn()?;
            self.meta_value(&rtxn, "wal")?
        };
        let until = self.shared.written();
        if until == from {
            return Ok(());
        }
        let end = self.checkpoint_to(from, Some(until))?;
        *self
            .shared
            .checkpointed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = end;
        Ok(())
    }

    /// Replays the WAL from `from` (up to `until`) into LMDB, in one durable commit that
    /// records the position reached; returns it.
    fn checkpoint_to(
        &mut self,
        from: Position,
        until: Option<Position>,
    ) -> Result<Position, LmdbError> {
        let (records, end) = wal::replay(&self.shared.wal_dir, from, until)?;
        if records.is_empty() && end == from {
            return Ok(end);
        }
        let encoded = records
            .iter()
            .map(EncodedRecord::new)
            .collect::<Result<Vec<_>, LmdbError>>()?;
        let position = seal_value(&end)?;
        let shared = self.shared.clone();
        waiting_out_a_full_disk(&shared, "checkpoint the log", || {
            loop {
                let attempt = (|| {
                    let mut wtxn = self.env.write_txn()?;
                    for r in &encoded {
                        self.apply(&mut wtxn, r)?;
                    }
                    self.meta.put(&mut wtxn, "wal", &position)?;
                    wtxn.commit()?;
                    Ok(())
                })();
                match attempt {
                    Err(LmdbError::Heed(e)) if common::is_map_full(&e) => {
                        if !common::grow(&self.env, &shared.config)? {
                            return Err(LmdbError::MapFull {
                                path: self.env.path().to_path_buf(),
                                max: shared.config.max_map_size,
                            });
                        }
                    }
                    other => return other,
                }
            }
        })?;
        Ok(end)
    }

    fn apply(&self, wtxn: &mut RwTxn<'_>, r: &EncodedRecord) -> Result<(), LmdbError> {
        match r {
            EncodedRecord::Write {
                truncate_from,
                entries,
                hard_state,
            } => {
                if let Some(t) = truncate_from {
                    self.entries.delete_range(wtxn, &(t.0..))?;
                }
                if let Some(&(first, _)) = entries.first() {
                    // Replaying a record twice (a cut between the LMDB commit and the
                    // position it records cannot happen; a crash after it can) leaves
                    // the same log: what follows `first` is replaced.
                    self.entries.delete_range(wtxn, &(first..))?;
                }
                for (index, record) in entries {
                    self.entries
                        .put_with_flags(wtxn, PutFlags::APPEND, index, record)?;
                }
                if let Some(hs) = hard_state {
                    self.meta.put(wtxn, "hard_state", hs)?;
                }
            }
            EncodedRecord::Purge {
                up_to,
                record,
                base,
            } => {
                let current: LogId = {
                    match self.meta.get(wtxn, "purged")? {
                        Some(raw) => decode(raw, &|| "log meta purged".into())?,
                        None => LogId::ZERO,
                    }
                };
                if *up_to > current.index.0 {
                    self.entries.delete_range(wtxn, &(..=*up_to))?;
                    self.meta.put(wtxn, "purged", record)?;
                    self.meta.put(wtxn, "base", base)?;
                }
            }
            EncodedRecord::Reset { record, base } => {
                self.entries.clear(wtxn)?;
                self.meta.put(wtxn, "purged", record)?;
                self.meta.put(wtxn, "base", base)?;
            }
        }
        Ok(())
    }

    fn load(&mut self) -> Result<StoredLog, LmdbError> {
        self.checkpoint()?;
        let rtxn = self.env.read_txn()?;
        let hard_state: HardState = self.meta_value(&rtxn, "hard_state")?;
        let purged: LogId = self.meta_value(&rtxn, "purged")?;
        let base: Option<SnapshotMeta> = self.meta_value(&rtxn, "base")?;
        let mut entries = Vec::new();
        for item in self.entries.iter(&rtxn)? {
            let (index, raw) = item?;
            entries.push(self.entry(index, raw)?);
        }
        Ok(StoredLog {
            hard_state,
            purged,
            entries,
            base,
        })
    }

    fn range(&mut self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, LmdbError> {
        self.checkpoint()?;
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::new();
        for item in self.entries.range(&rtxn, &(from.0..to.0))? {
            let (index, raw) = item?;
            out.push(self.entry(index, raw)?);
        }
        Ok(out)
    }
}

/// A WAL record as LMDB stores it (each entry and meta value sealed).
enum EncodedRecord {
    Write {
        truncate_from: Option<LogIndex>,
        entries: Vec<(u64, Vec<u8>)>,
        hard_state: Option<Vec<u8>>,
    },
    Purge {
        up_to: u64,
        record: Vec<u8>,
        base: Vec<u8>,
    },
    Reset {
        record: Vec<u8>,
        base: Vec<u8>,
    },
}

impl EncodedRecord {
    fn new(r: &Record) -> Result<EncodedRecord, LmdbError> {
        Ok(match r {
            Record::Write {
                truncate_from,
                entries,
                hard_state,
            } => EncodedRecord::Write {
                truncate_from: *truncate_from,
                entries: entries
                    .iter()
                    .map(|e| Ok((e.log_id.index.0, seal_value(e)?)))
                    .collect::<Result<_, LmdbError>>()?,
                hard_state: hard_state.map(|h| seal_value(&h)).transpose()?,
            },
            Record::Purge { up_to, base } => EncodedRecord::Purge {
                up_to: up_to.index.0,
                record: seal_value(up_to)?,
                base: seal_value(&Some(base))?,
            },
            Record::Reset { base } => EncodedRecord::Reset {
                record: seal_value(&base.last_log_id)?,
                base: seal_value(&Some(base))?,
            },
        })
    }
}

#[async_trait::async_trait]
impl LogStore for LmdbLogStore {
    async fn load(&self) -> Result<StoredLog, StorageError> {
        self.on_index("load the log", |s| s.load()).await
    }

    async fn write(&self, batch: &Persist) -> Result<(), StorageError> {
        let batch = batch.clone();
        self.on_writer("write to the log", move |s| s.write(&batch))
            .await
    }

    async fn purge(&self, up_to: LogId, base: &SnapshotMeta) -> Result<(), StorageError> {
        let base = base.clone();
        self.on_writer("purge the log", move |s| {
            s.append(&Record::Purge { up_to, base }, false)
        })
        .await
    }

    async fn reset(&self, base: &SnapshotMeta) -> Result<(), StorageError> {
        let base = base.clone();
        self.on_writer("reset the log", move |s| {
            s.append(&Record::Reset { base: base.clone() }, true)?;
            s.last = base.last_log_id.index;
            Ok(())
        })
        .await
    }
}

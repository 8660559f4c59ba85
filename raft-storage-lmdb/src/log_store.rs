//! [`LmdbLogStore`]: the Raft log and hard state in LMDB.
//!
//! Layout (one environment, two databases):
//! - `entries`: big-endian index → CRC32C + frame(Entry), appended with `MDB_APPEND`;
//! - `meta`: `format` → u32, `hard_state` → CRC32C + frame(HardState),
//!   `purged` → CRC32C + frame(LogId), `base` → CRC32C + frame(SnapshotMeta) (the
//!   snapshot the log continues, recorded with each purge and reset).
//!
//! Each [`LogStore::write`] is one write transaction and one durable commit (LMDB
//! syncs data and meta pages on commit): truncation, appends and the hard state land
//! together or not at all. Every record is checksummed and verified on read; a
//! mismatch is a [`LmdbError::Corruption`], never served.

use crate::common::{self, DirLock, EnvConfig, FORMAT_VERSION, LmdbError};
use crate::worker::Worker;
use heed::byteorder::BigEndian;
use heed::types::{Bytes as RawBytes, Str, U64};
use heed::{CommitOrAbort, Database, Env, PutFlags, RoTxn, WithoutTls};
use raft_core::Persist;
use raft_core::node::{LogStore, StorageError, StoredLog};
use raft_proto::{Entry, HardState, LogId, LogIndex, SnapshotMeta, decode_frame, encode_frame};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Entries = Database<'static, U64<BigEndian>, RawBytes>;
type Meta = Database<'static, Str, RawBytes>;

struct State {
    env: Env<WithoutTls>,
    entries: Entries,
    meta: Meta,
    config: EnvConfig,
    _lock: DirLock,
}

/// A durable [`LogStore`] on LMDB. All LMDB work runs on one dedicated thread.
#[derive(Clone)]
pub struct LmdbLogStore {
    worker: Worker<State>,
    dir: PathBuf,
}

impl LmdbLogStore {
    /// Opens (creating) the log in `dir`. Refuses a directory another process has open
    /// or one written by a newer format.
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
        let state = State {
            env,
            entries,
            meta,
            config,
            _lock: lock,
        };
        let worker = Worker::start("raft-log-lmdb", state)
            .map_err(|e| LmdbError::io("start the log thread", e))?;
        Ok(LmdbLogStore { worker, dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn run<R: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut State) -> Result<R, LmdbError> + Send + 'static,
    ) -> Result<R, StorageError> {
        match self.worker.call(operation, f).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                tracing::error!(dir = %self.dir.display(), operation, error = %e, "log storage failed");
                Err(e.into_storage(operation))
            }
            Err(gone) => Err(StorageError::new(operation, gone)),
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

impl State {
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

    fn load(&self) -> Result<StoredLog, LmdbError> {
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

    fn range(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, LmdbError> {
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::new();
        for item in self.entries.range(&rtxn, &(from.0..to.0))? {
            let (index, raw) = item?;
            out.push(self.entry(index, raw)?);
        }
        Ok(out)
    }

    /// Runs a write transaction, growing the map when it is full and waiting out a
    /// full disk (with backoff, up to `disk_full_patience`): nothing half-written is
    /// ever visible, since a failed transaction is aborted whole.
    fn with_retries(
        &mut self,
        what: &str,
        f: &dyn Fn(&State) -> Result<(), LmdbError>,
    ) -> Result<(), LmdbError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(10);
        loop {
            match f(self) {
                Ok(()) => return Ok(()),
                Err(LmdbError::Heed(e)) if common::is_map_full(&e) => {
                    if !common::grow(&self.env, &self.config)? {
                        return Err(LmdbError::MapFull {
                            path: self.env.path().to_path_buf(),
                            max: self.config.max_map_size,
                        });
                    }
                }
                Err(e)
                    if e.is_disk_full(self.env.path())
                        && started.elapsed() < self.config.disk_full_patience =>
                {
                    tracing::error!(dir = %self.env.path().display(), what, error = %e, "disk full: waiting for space before writing again");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn write(&mut self, batch: &Persist) -> Result<(), LmdbError> {
        let records: Vec<(u64, Vec<u8>)> = batch
            .entries
            .iter()
            .map(|e| Ok((e.log_id.index.0, seal_value(e)?)))
            .collect::<Result<_, LmdbError>>()?;
        let hard_state = batch.hard_state.map(|h| seal_value(&h)).transpose()?;
        let truncate = batch.truncate_from;
        self.with_retries("append to the log", &|s: &State| {
            let mut wtxn = s.env.write_txn()?;
            if let Some(t) = truncate {
                s.entries.delete_range(&mut wtxn, &(t.0..))?;
            }
            if let Some(&(first, _)) = records.first() {
                let last = match s.entries.last(&wtxn)? {
                    Some((index, _)) => index,
                    None => s.meta_value::<LogId>(&wtxn, "purged")?.index.0,
                };
                if first != last + 1 {
                    return Err(LmdbError::Invalid(format!(
                        "entry {first} would leave a gap after index {last}"
                    )));
                }
            }
            for (index, record) in &records {
                s.entries
                    .put_with_flags(&mut wtxn, PutFlags::APPEND, index, record)?;
            }
            if let Some(hs) = &hard_state {
                s.meta.put(&mut wtxn, "hard_state", hs)?;
            }
            wtxn.commit()?;
            Ok(())
        })
    }

    fn purge(&mut self, up_to: LogId, base: &SnapshotMeta) -> Result<(), LmdbError> {
        let (record, base) = (seal_value(&up_to)?, seal_value(&Some(base))?);
        self.with_retries("purge the log", &|s: &State| {
            let mut wtxn = s.env.write_txn()?;
            let current: LogId = s.meta_value(&wtxn, "purged")?;
            if up_to.index > current.index {
                s.entries.delete_range(&mut wtxn, &(..=up_to.index.0))?;
                s.meta.put(&mut wtxn, "purged", &record)?;
                s.meta.put(&mut wtxn, "base", &base)?;
            }
            wtxn.commit()?;
            Ok(())
        })
    }

    fn reset(&mut self, base: &SnapshotMeta) -> Result<(), LmdbError> {
        let (record, base) = (seal_value(&base.last_log_id)?, seal_value(&Some(base))?);
        self.with_retries("reset the log", &|s: &State| {
            let mut wtxn = s.env.write_txn()?;
            s.entries.clear(&mut wtxn)?;
            s.meta.put(&mut wtxn, "purged", &record)?;
            s.meta.put(&mut wtxn, "base", &base)?;
            wtxn.commit()?;
            Ok(())
        })
    }
}

#[async_trait::async_trait]
impl LogStore for LmdbLogStore {
    async fn load(&self) -> Result<StoredLog, StorageError> {
        self.run("load the log", |s| s.load()).await
    }

    async fn write(&self, batch: &Persist) -> Result<(), StorageError> {
        let batch = batch.clone();
        self.run("write to the log", move |s| s.write(&batch)).await
    }

    async fn entries(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.run("read the log", move |s| s.range(from, to)).await
    }

    async fn purge(&self, up_to: LogId, base: &SnapshotMeta) -> Result<(), StorageError> {
        let base = base.clone();
        self.run("purge the log", move |s| s.purge(up_to, &base))
            .await
    }

    async fn reset(&self, base: &SnapshotMeta) -> Result<(), StorageError> {
        let base = base.clone();
        self.run("reset the log", move |s| s.reset(&base)).await
    }
}

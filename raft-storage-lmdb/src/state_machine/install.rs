//! Installing a received snapshot and rebuilding the state from one at start-up,
//! both streaming the file into a new state directory.

use super::state_dir::switch_to;
use super::*;

/// Record bytes per write transaction while a state is built from a snapshot file.
/// LMDB keeps a write transaction's dirty pages in memory until it commits, so one
/// transaction for a whole file would hold the whole state in RAM; the new
/// environment is private until the switch, so committing it in parts is safe.
pub(super) const BUILD_BATCH_BYTES: u64 = 16 << 20;

/// Why a state could not be built from a snapshot file.
pub(super) enum BuildError {
    /// The file cannot be used: unreadable, damaged, or failing its checksum.
    File(LmdbError),
    /// Writing the new state failed (a full disk, say); the file may be fine.
    Store(LmdbError),
}

impl BuildError {
    fn into_inner(self) -> LmdbError {
        match self {
            BuildError::File(e) | BuildError::Store(e) => e,
        }
    }
}

/// A state built from a snapshot file, on disk, not switched to yet.
pub(super) struct Built {
    next: Current,
    name: String,
    /// The file's size and checksum (its trailer).
    size: u64,
    crc: u32,
}

/// Builds the state of snapshot `meta` from its file at `path` in a new state
/// directory, streaming: records go to LMDB as they are read, in transactions of
/// [`BUILD_BATCH_BYTES`], and the file's checksum is checked when its end is reached,
/// before the applied log id is written. Memory stays within one batch and one record
/// whatever the file's size. On failure the new directory is removed.
pub(super) fn build_state(
    shared: &Shared,
    meta: &SnapshotMeta,
    path: &Path,
) -> Result<Built, BuildError> {
    let old = shared.current();
    let n: u64 = old.name.trim_start_matches("state-").parse().unwrap_or(0);
    let name = format!("state-{:06}", n + 1);
    let new_dir = shared.dir.join(&name);
    let _ = fs::remove_dir_all(&new_dir);
    match fill_state(shared, meta, path, &name) {
        Ok((next, size, crc)) => Ok(Built {
            next,
            name,
            size,
            crc,
        }),
        Err(e) => {
            let _ = fs::remove_dir_all(&new_dir);
            Err(e)
        }
    }
}

pub(super) fn fill_state(
    shared: &Shared,
    meta: &SnapshotMeta,
    path: &Path,
    name: &str,
) -> Result<(Current, u64, u32), BuildError> {
    let next = open_current(&shared.dir, name, &shared.config).map_err(BuildError::Store)?;
    let file = File::open(path)
        .map_err(|e| BuildError::File(LmdbError::io(format!("open {}", path.display()), e)))?;
    let mut sink = StateSink {
        state: &next,
        config: &shared.config.env,
        txn: None,
        pending: 0,
        last: [Vec::new(), Vec::new()],
        any: [false, false],
    };
    // The sink's own errors are kept apart from the file's: a full disk must not get
    // an intact snapshot set aside as damaged.
    let mut store_error = None;
    let read = snapshot_file::for_each_record(&file, |table, key, value| {
        sink.put(table, key, value).map_err(|e| {
            let text = e.to_string();
            store_error = Some(e);
            LmdbError::Invalid(text)
        })
    });
    if let Some(e) = store_error {
        return Err(BuildError::Store(e));
    }
    let size = read.map_err(BuildError::File)?;
    sink.finish(&meta.last_log_id).map_err(BuildError::Store)?;
    next.env
        .force_sync()
        .map_err(|e| BuildError::Store(e.into()))?;
    let mut trailer = [0u8; 4];
    file.read_exact_at(&mut trailer, size.saturating_sub(4))
        .map_err(|e| BuildError::File(LmdbError::io(format!("read {}", path.display()), e)))?;
    Ok((next, size, u32::from_le_bytes(trailer)))
}

/// Writes a snapshot's records into a new, private environment in batches.
pub(super) struct StateSink<'e> {
    state: &'e Current,
    config: &'e EnvConfig,
    txn: Option<RwTxn<'e>>,
    /// Record bytes in the open transaction.
    pending: u64,
    /// The greatest key written so far per table (data, sessions), for `MDB_APPEND`.
    last: [Vec<u8>; 2],
    any: [bool; 2],
}

impl<'e> StateSink<'e> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), LmdbError> {
        let size = (key.len() + value.len()) as u64;
        if self.pending > 0 && self.pending + size > BUILD_BATCH_BYTES {
            self.commit()?;
        }
        let (db, slot) = match table {
            Table::Data => (self.state.data, 0),
            Table::Sessions => (self.state.sessions, 1),
        };
        // Files are written in key order, so most records append: full pages, and
        // only the tree's right edge touched. Any other order still works.
        let append = !self.any[slot] || key > &self.last[slot][..];
        let txn = self.txn(size)?;
        let put = if append {
            db.put_with_flags(txn, heed::PutFlags::APPEND, key, value)
        } else {
            db.put(txn, key, value)
        };
        put.map_err(|e| self.failed(e))?;
        if append {
            self.last[slot].clear();
            self.last[slot].extend_from_slice(key);
            self.any[slot] = true;
        }
        self.pending += size;
        Ok(())
    }

    /// A full map (at its configured maximum: the growth between batches stopped) is
    /// said as such.
    fn failed(&self, e: heed::Error) -> LmdbError {
        if common::is_map_full(&e) {
            LmdbError::MapFull {
                path: self.state.env.path().to_path_buf(),
                max: self.config.max_map_size,
            }
        } else {
            e.into()
        }
    }

    /// The open transaction, or a new one after making room in the map for a batch
    /// (growing it between transactions; nothing else uses this environment yet).
    fn txn(&mut self, next_record: u64) -> Result<&mut RwTxn<'e>, LmdbError> {
        if self.txn.is_none() {
            const PAGE: u64 = 4096;
            let want = 4 * BUILD_BATCH_BYTES.max(next_record) + (1 << 20);
            loop {
                let info = self.state.env.info();
                let used = (info.last_page_number as u64 + 1) * PAGE;
                if (info.map_size as u64).saturating_sub(used) >= want
                    || !common::grow(&self.state.env, self.config)?
                {
                    break;
                }
            }
            self.txn = Some(self.state.env.write_txn()?);
        }
        self.txn
            .as_mut()
            .ok_or_else(|| LmdbError::Invalid("no write transaction".into()))
    }

    fn commit(&mut self) -> Result<(), LmdbError> {
        if let Some(txn) = self.txn.take() {
            txn.commit().map_err(|e| self.failed(e))?;
        }
        self.pending = 0;
        Ok(())
    }

    /// Records the applied log id with the last batch.
    fn finish(mut self, applied: &LogId) -> Result<(), LmdbError> {
        let meta = self.state.meta;
        let txn = self.txn(0)?;
        let sealed = sealed(applied)?;
        meta.put(txn, "applied", &sealed)
            .map_err(|e| self.failed(e))?;
        self.commit()
    }
}

/// Brings the state up to the newest intact snapshot when it must be: after an
/// untrusted stop (the state was discarded), or when a snapshot newer than the state
/// was published (a cut between an install's metadata and its switch). A snapshot
/// whose file cannot be read or fails its checksum is set aside and the next older one
/// is tried; a failure to write the new state (a full disk) is an error, and sets
/// nothing aside.
pub(super) fn recover(
    shared: &Shared,
    mut intact: Vec<SnapshotFileMeta>,
    trusted: bool,
) -> Result<(), LmdbError> {
    let applied = {
        let cur = shared.current();
        let txn = cur.env.read_txn()?;
        read_applied(&cur, &txn)?
    };
    let mut rebuilt = false;
    while let Some(newest) = intact.first() {
        if trusted && newest.meta.last_log_id.index <= applied.index {
            break;
        }
        let meta = newest.meta.clone();
        let path = shared.snapshots.file(meta.id, "snap");
        match build_state(shared, &meta, &path) {
            Ok(built) => {
                switch_to(shared, built.next, &built.name)?;
                tracing::warn!(dir = %shared.dir.display(), snapshot = ?meta.last_log_id, "rebuilt the state from the newest intact snapshot");
                rebuilt = true;
                break;
            }
            Err(BuildError::File(problem)) => {
                shared.snapshots.set_aside(
                    &[
                        &shared.snapshots.file(meta.id, "meta"),
                        &shared.snapshots.file(meta.id, "snap"),
                    ],
                    &problem.to_string(),
                )?;
                intact.remove(0);
            }
            Err(BuildError::Store(e)) => return Err(e),
        }
    }
    if !trusted && !rebuilt {
        tracing::error!(dir = %shared.dir.display(), "no intact snapshot to rebuild the state from: starting with an empty state; the node keeps its log and vote and gets the state from the leader's snapshot when its log does not reach back to the beginning");
    }
    Ok(())
}

/// Installs a received snapshot. Each file is durable before anything refers to it:
/// the new state is built from the received file (checked on the way) and synced in
/// its own directory; the received bytes are synced; the file is renamed into `snapshots/` and the directory synced; its
/// `.meta` is written atomically; then `CURRENT` switches to the new state. Only after
/// this returns does the node reset its log behind the snapshot.
pub(super) fn install(shared: &Shared, meta: &SnapshotMeta) -> Result<(), LmdbError> {
    let part = shared.incoming(meta.id);
    let built = build_state(shared, meta, &part).map_err(BuildError::into_inner)?;
    io(
        || format!("sync {}", part.display()),
        File::open(&part).and_then(|f| f.sync_all()),
    )?;
    // Keep the received file as our snapshot, so it can be served to others.
    let snap = shared.snapshots.file(meta.id, "snap");
    io(
        || "keep the received snapshot".to_string(),
        fs::rename(&part, &snap),
    )?;
    durable::sync_dir(shared.snapshots.path())?;
    shared.snapshots.write_meta(meta, built.size, built.crc)?;
    switch_to(shared, built.next, &built.name)?;
    shared.snapshots.prune(shared.config.keep_snapshots)?;
    tracing::info!(dir = %shared.dir.display(), snapshot = ?meta.last_log_id, "installed a snapshot");
    Ok(())
}

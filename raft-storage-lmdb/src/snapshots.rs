//! The state machine's `snapshots/` directory: which snapshots exist, their metadata
//! files, checking them at start-up, and pruning old ones.
//!
//! ```text
//! <id>.snap            a complete snapshot file (see snapshot_file)
//! <id>.meta            its metadata (what it covers, size, checksum): a snapshot
//!                      exists once its .meta does
//! <id>.tmp             a snapshot being written (removed at open)
//! <id>.meta.tmp        a .meta being written (removed at open)
//! <id>.del             a pruned snapshot being deleted a slice at a time
//! spare                a pruned snapshot's file, overwritten by the next snapshot
//! <id>.*.damaged       a snapshot found damaged at open, kept until the next open
//! ```
//!
//! Order of durability (see the crate docs): a `.snap` is synced, renamed into place
//! and its directory synced before its `.meta` is written (tmp, sync, rename, sync the
//! directory). So a `.meta` never names bytes that are not on disk.

use crate::common::{self, LmdbError};
use crate::durable;
use raft_proto::{SnapshotMeta, decode_frame, encode_frame};
use serde::{Deserialize, Serialize};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a `.meta` file records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotFileMeta {
    pub(crate) meta: SnapshotMeta,
    pub(crate) size: u64,
    pub(crate) crc: u32,
}

/// The `snapshots/` directory.
#[derive(Debug)]
pub(crate) struct SnapshotDir {
    path: PathBuf,
}

impl SnapshotDir {
    pub(crate) fn new(path: PathBuf) -> SnapshotDir {
        SnapshotDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The file of snapshot `id` with extension `ext` (`snap`, `meta`, `tmp`, `del`).
    pub(crate) fn file(&self, id: u64, ext: &str) -> PathBuf {
        self.path.join(format!("{id:016x}.{ext}"))
    }

    /// A pruned snapshot's file, kept to be overwritten by the next snapshot: writing
    /// over allocated blocks needs no allocation now and no freeing (and, on a
    /// filesystem mounted with `discard`, no discards) later.
    pub(crate) fn spare(&self) -> PathBuf {
        self.path.join("spare")
    }

    /// Records snapshot `meta`'s file (its size and checksum), atomically and durably:
    /// from then on the snapshot is listed and served. The `.snap` must already be
    /// durable under its final name.
    pub(crate) fn write_meta(
        &self,
        meta: &SnapshotMeta,
        size: u64,
        crc: u32,
    ) -> Result<(), LmdbError> {
        let record = SnapshotFileMeta {
            meta: meta.clone(),
            size,
            crc,
        };
        let frame = encode_frame(&record)
            .map_err(|e| LmdbError::Invalid(format!("cannot encode snapshot metadata: {e}")))?;
        durable::write_atomically(&self.file(meta.id, "meta"), &common::seal(&frame))
    }

    fn read_meta(path: &Path) -> Result<Option<SnapshotFileMeta>, LmdbError> {
        let raw = match fs::read(path) {
            Ok(raw) => raw,
            // Pruned while we listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LmdbError::io(format!("read {}", path.display()), e)),
        };
        let what = || path.display().to_string();
        let frame = common::unseal(&raw, &what)?;
        let meta = decode_frame(frame).map_err(|e| LmdbError::corrupt(what(), e.to_string()))?;
        Ok(Some(meta))
    }

    fn metas(&self) -> Result<Vec<PathBuf>, LmdbError> {
        let entries = fs::read_dir(&self.path)
            .map_err(|e| LmdbError::io(format!("list {}", self.path.display()), e))?;
        Ok(entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "meta"))
            .collect())
    }

    /// Every listed snapshot, newest first. A `.meta` that cannot be read is skipped
    /// with a warning (start-up has already moved damaged ones aside).
    pub(crate) fn list(&self) -> Result<Vec<SnapshotFileMeta>, LmdbError> {
        let mut out = Vec::new();
        for path in self.metas()? {
            match Self::read_meta(&path) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {}
                Err(e @ LmdbError::Corruption { .. }) => {
                    tracing::warn!(error = %e, "skipping a snapshot whose metadata cannot be read")
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|m| std::cmp::Reverse(m.meta.last_log_id));
        Ok(out)
    }

    /// At open: drops leftovers of earlier runs, then checks every snapshot (its
    /// metadata reads; its file exists with the recorded size) and moves damaged ones
    /// aside as `<name>.damaged`, with a log line saying what was wrong. Returns the
    /// intact ones, newest first (their checksums are verified when read whole).
    /// Never fails because of what a file holds: only when the directory cannot be
    /// read or changed.
    pub(crate) fn check_at_open(&self) -> Result<Vec<SnapshotFileMeta>, LmdbError> {
        let entries = fs::read_dir(&self.path)
            .map_err(|e| LmdbError::io(format!("list {}", self.path.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            // Leftovers: an unfinished snapshot or .meta, a half-deleted file, and the
            // damaged files set aside by the previous open.
            if name.ends_with(".tmp") || name.ends_with(".del") || name.ends_with(".damaged") {
                let _ = fs::remove_file(&path);
            }
        }
        let mut intact = Vec::new();
        for path in self.metas()? {
            let record = match Self::read_meta(&path) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(e @ LmdbError::Corruption { .. }) => {
                    let snap = path.with_extension("snap");
                    self.set_aside(&[&path, &snap], &e.to_string())?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let snap = self.file(record.meta.id, "snap");
            let problem = match fs::metadata(&snap) {
                Ok(m) if m.len() == record.size => None,
                Ok(m) => Some(format!(
                    "{} holds {} bytes, its metadata says {}",
                    snap.display(),
                    m.len(),
                    record.size
                )),
                Err(e) => Some(format!("{}: {e}", snap.display())),
            };
            match problem {
                None => intact.push(record),
                Some(problem) => self.set_aside(&[&path, &snap], &problem)?,
            }
        }
        intact.sort_by_key(|m| std::cmp::Reverse(m.meta.last_log_id));
        Ok(intact)
    }

    /// Moves a damaged snapshot's files aside (`<name>.damaged`) so nothing lists or
    /// serves them, and says so.
    pub(crate) fn set_aside(&self, files: &[&Path], problem: &str) -> Result<(), LmdbError> {
        let mut kept = Vec::new();
        for file in files {
            let mut to = file.as_os_str().to_owned();
            to.push(".damaged");
            match fs::rename(file, &to) {
                Ok(()) => kept.push(PathBuf::from(to).display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LmdbError::io(format!("set aside {}", file.display()), e)),
            }
        }
        durable::sync_dir(&self.path)?;
        tracing::error!(dir = %self.path.display(), problem, kept = ?kept, "a snapshot is damaged and will not be used; its files are kept until the next start for inspection");
        Ok(())
    }

    /// Drops all but the newest `keep` snapshots. Each one stops being listed at once
    /// (its `.meta` goes, and its `.snap` is renamed, so a reader opening it finds
    /// nothing). The first becomes the spare file the next snapshot overwrites; the
    /// bytes of any other are released in the background, a slice at a time.
    pub(crate) fn prune(&self, keep: usize) -> Result<(), LmdbError> {
        let mut doomed = Vec::new();
        for old in self.list()?.into_iter().skip(keep.max(1)) {
            let _ = fs::remove_file(self.file(old.meta.id, "meta"));
            let snap = self.file(old.meta.id, "snap");
            if !self.spare().exists() && fs::rename(&snap, self.spare()).is_ok() {
                continue;
            }
            let del = self.file(old.meta.id, "del");
            if fs::rename(&snap, &del).is_ok() {
                doomed.push(del);
            }
        }
        if !doomed.is_empty() {
            let spawned = std::thread::Builder::new()
                .name("raft-snapshot-prune".into())
                .spawn(move || doomed.iter().for_each(|p| remove_gradually(p)));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a thread to delete old snapshots; they stay until the next start");
            }
        }
        Ok(())
    }
}

/// Bytes released per step when deleting a snapshot file.
const DELETE_STEP: u64 = 8 << 20;
/// The pause between steps.
const DELETE_PAUSE: Duration = Duration::from_millis(5);

/// Deletes a (large) file by shrinking it a slice at a time, then unlinking it. One
/// `unlink` of a few hundred MiB frees every extent in one journal commit, which on a
/// filesystem mounted with `discard` stalled concurrent log commits for ~50 ms.
fn remove_gradually(path: &Path) {
    if let Ok(file) = OpenOptions::new().write(true).open(path) {
        let mut len = file.metadata().map(|m| m.len()).unwrap_or(0);
        while len > DELETE_STEP {
            len -= DELETE_STEP;
            if file.set_len(len).is_err() {
                break;
            }
            std::thread::sleep(DELETE_PAUSE);
        }
    }
    if let Err(e) = fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot delete an old snapshot");
    }
}

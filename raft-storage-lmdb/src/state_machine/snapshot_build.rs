//! Building a snapshot file from a read transaction, in the background.

use super::write_back::{SyncEvery, write_back_env};
use super::*;

/// Streams a read transaction into a snapshot file; runs on its own thread.
pub(super) fn write_snapshot(
    shared: &Shared,
    cur: &Current,
    txn: RoTxn<'static, WithoutTls>,
    meta: &SnapshotMeta,
    started: Instant,
) -> Result<(), LmdbError> {
    let tmp = shared.snapshots.file(meta.id, "tmp");
    let file = if fs::rename(shared.snapshots.spare(), &tmp).is_ok() {
        // Overwritten from the start; trimmed to size at the end.
        OpenOptions::new().write(true).open(&tmp)
    } else {
        File::create(&tmp)
    };
    let file = io(|| format!("create {}", tmp.display()), file)?;
    let mut w = SnapshotWriter::new(SyncEvery::new(file, &shared.config))?;
    let limit = shared.config.max_snapshot_duration;
    for (table, db) in [(Table::Data, cur.data), (Table::Sessions, cur.sessions)] {
        for (n, item) in db.iter(&txn)?.enumerate() {
            let (k, v) = item?;
            w.record(table, k, v)?;
            if n % 4096 == 0 && started.elapsed() > limit {
                return Err(LmdbError::Invalid(format!(
                    "the snapshot took over {limit:?}; abandoned to bound file growth"
                )));
            }
        }
    }
    drop(txn);
    let (file, size, crc) = w.finish()?;
    io(
        || format!("trim {}", tmp.display()),
        file.file.set_len(size),
    )?;
    io(|| format!("sync {}", tmp.display()), file.file.sync_all())?;
    io(
        || "publish the snapshot".to_string(),
        fs::rename(&tmp, shared.snapshots.file(meta.id, "snap")),
    )?;
    durable::sync_dir(shared.snapshots.path())?;
    shared.snapshots.write_meta(meta, size, crc)?;
    // Once this snapshot counts as built, the log is compacted behind it: every apply
    // up to it must be on disk first (applies may defer their meta page). The pages
    // go first, in slices, so that the flush itself has little left to do.
    write_back_env(cur.env.path());
    cur.env.force_sync()?;
    shared.snapshots.prune(shared.config.keep_snapshots)
}

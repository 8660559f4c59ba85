//! [`LmdbStateMachine`]: a [`StateMachine`] on LMDB for an application [`Machine`].
//!
//! Directory layout (its own environment, apart from the log, so a long snapshot read
//! never bloats the log file):
//!
//! ```text
//! LOCK                    held while open
//! CURRENT                 the name of the live state directory, switched by rename
//! DIRTY                   applies may be in the OS's cache only (see ApplyDurability)
//! state-000001/           the live LMDB environment: data, sessions, meta
//! snapshots/              snapshot files and their metadata (see snapshots.rs)
//! incoming/<id>.part      a snapshot being received
//! ```
//!
//! **Applies**: one write transaction per batch; the application's changes to `data`
//! and `sessions` and the applied log id commit together, so a crash never applies an
//! entry twice nor loses one reported applied.
//!
//! **Copy-on-write snapshots**: [`begin_snapshot`](StateMachine::begin_snapshot) opens a
//! read transaction (a point-in-time MVCC view that writers never block) and a
//! background thread streams it into a snapshot file while applies go on. The
//! trade-off: while that transaction lives, pages freed by later commits cannot be
//! reused, so the environment file grows with the write volume during the snapshot;
//! `max_snapshot_duration` bounds it (a snapshot taking longer is abandoned and asked
//! for again later).
//!
//! **Installing** a received snapshot: build a new environment from it in a new
//! directory, streaming (records go to LMDB in batches as they are read, and the
//! checksum is checked at the end, before the applied id is written: memory stays
//! within one batch whatever the snapshot's size), sync both, publish the file and its
//! metadata, then point `CURRENT` at the new state with an atomic rename. A crash at
//! any point leaves either the old state or the whole new one; a crash after the
//! metadata but before the switch leaves a snapshot newer than the state, and the next
//! open rebuilds the state from it.
//!
//! **Opening** never fails because a snapshot is damaged: damaged files are set aside,
//! the state is rebuilt from the newest intact snapshot when it must be, and when none
//! is left the state starts empty; [`StateMachine::state`] then reports what is known,
//! and the node fetches the state from its leader (see `raft_core::Restore::plan`).

use crate::common::{self, DirLock, EnvConfig, LmdbError};
use crate::dirty::{self, DIRTY};
use crate::durable;
use crate::log_store::check_format;
use crate::snapshot_file::{self, SnapshotWriter, Table};
use crate::snapshots::{SnapshotDir, SnapshotFileMeta};
use crate::worker::Worker;
use futures::FutureExt;
use heed::types::{Bytes as RawBytes, Str};
use heed::{CommitOrAbort, Database, Env, RoTxn, RwTxn, WithoutTls};
use raft_core::node::{MachineState, SnapshotTask, StateMachine, StorageError};
use raft_proto::{Bytes, Entry, EntryPayload, LogId, SnapshotMeta, decode_frame, encode_frame};
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

mod apply;
mod gate;
mod install;
mod snapshot_build;
mod state_dir;
mod write_back;

use apply::apply_batch;
use gate::Gate;
use install::{install, recover};
use snapshot_build::write_snapshot;
use state_dir::{Current, open_current, read_applied, write_current};
/// A key-value database of the state machine's environment.
pub type Db = Database<'static, RawBytes, RawBytes>;
type MetaDb = Database<'static, Str, RawBytes>;

/// The application logic of an LMDB state machine.
pub trait Machine: Send + Sync + 'static {
    /// Applies one command inside the batch's write transaction and returns the
    /// response. Must be deterministic: every replica applies the same commands in the
    /// same order and must reach the same state. An error stops the node.
    fn apply(&self, cx: &mut ApplyContext<'_, '_>, command: &[u8]) -> Result<Bytes, LmdbError>;
}

/// What [`Machine::apply`] works with.
pub struct ApplyContext<'a, 'e> {
    /// The batch's write transaction.
    pub txn: &'a mut RwTxn<'e>,
    /// The application's data.
    pub data: Db,
    /// Client sessions (for exactly-once writes), in the same transaction.
    pub sessions: Db,
    /// The entry being applied.
    pub log_id: LogId,
}

/// A read-only view for serving reads.
pub struct View<'t> {
    /// The read transaction.
    pub txn: &'t RoTxn<'t, WithoutTls>,
    /// The application's data.
    pub data: Db,
    /// Client sessions.
    pub sessions: Db,
}

/// Settings of an [`LmdbStateMachine`].
#[derive(Clone, Debug)]
pub struct SmConfig {
    /// Map sizes and full-disk behaviour.
    pub env: EnvConfig,
    /// A snapshot whose read transaction lives longer than this is abandoned.
    pub max_snapshot_duration: Duration,
    /// Snapshots kept on disk (the newest; older ones may be mid-transfer).
    pub keep_snapshots: usize,
    /// A snapshot file being written is written back to the disk every this many
    /// bytes (default 256 KiB), in small steps rather than one burst at the end that
    /// stalls the log's commits behind it.
    pub snapshot_sync_bytes: u64,
    /// The most bytes per second a snapshot file is written at (default 100 MiB/s;
    /// `None`: as fast as it can), leaving the disk to log commits meanwhile. With both
    /// defaults, write p99 during a 262 MiB snapshot stayed within 1.5x of p99 without
    /// one here; unpaced, it was 4-46x.
    pub snapshot_write_rate: Option<u64>,
    /// How applies reach the disk (default [`ApplyDurability::Deferred`]).
    pub apply_durability: ApplyDurability,
    /// Tests only (feature `testing`): the boot id to assume instead of the machine's
    /// (to play an OS crash without one).
    #[cfg(any(test, feature = "testing"))]
    pub boot_id_for_tests: Option<String>,
}

/// How the state machine's applies reach the disk. The log is always durable: what a
/// crash takes from the state machine, the node applies again from the log, and a
/// snapshot forces every apply to disk before it counts as built, so the log is never
/// compacted past what the state machine can recover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyDurability {
    /// Each apply is durable when it returns (LMDB's default: two flushes per batch).
    Synced,
    /// One flush per apply (`MDB_NOMETASYNC`): consistent after any crash; an OS crash
    /// may undo the last applied batch.
    MetaDeferred,
    /// No flush per apply (`MDB_NOSYNC`): the OS writes applies back in its own time,
    /// and a snapshot forces them. A process crash loses nothing (the pages are in the
    /// OS's cache). An OS crash may leave the environment inconsistent, so it is never
    /// trusted after one: while applies are pending, a `DIRTY` file holds the boot id,
    /// and an open that finds another boot id discards the state and rebuilds it from
    /// the newest snapshot file; the node then applies the log after it again. On
    /// this project's 2-core test machine this took a 3-node put from 1.3 to 0.95 ms
    /// and 64 clients from 9,400 to 13,100 puts/s.
    Deferred,
}

impl Default for SmConfig {
    fn default() -> Self {
        SmConfig {
            env: EnvConfig {
                map_size: 64 << 30,
                ..EnvConfig::default()
            },
            max_snapshot_duration: Duration::from_secs(600),
            keep_snapshots: 2,
            snapshot_sync_bytes: 256 << 10,
            snapshot_write_rate: Some(100 << 20),
            apply_durability: ApplyDurability::Deferred,
            #[cfg(any(test, feature = "testing"))]
            boot_id_for_tests: None,
        }
    }
}

struct Shared {
    dir: PathBuf,
    config: SmConfig,
    current: RwLock<Arc<Current>>,
    gate: Arc<Gate>,
    counter: AtomicU64,
    snapshots: SnapshotDir,
    _lock: DirLock,
}

/// This boot's id (Linux); `None` elsewhere, which makes every unclean stop count as
/// an OS crash.
fn machine_boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl Drop for Shared {
    /// A clean close: flush what the OS still holds, then drop the mark.
    fn drop(&mut self) {
        if self.config.apply_durability != ApplyDurability::Deferred {
            return;
        }
        let flushed = self.current().env.force_sync();
        match flushed {
            Ok(()) => {
                let _ = fs::remove_file(self.dir.join(DIRTY));
                let _ = durable::sync_dir(&self.dir);
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot flush the state machine at close; it will be rebuilt after an OS crash")
            }
        }
    }
}

impl Shared {
    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn incoming(&self, id: u64) -> PathBuf {
        self.dir.join("incoming").join(format!("{id:016x}.part"))
    }
}

/// A durable [`StateMachine`] on LMDB: applies run on a dedicated thread, snapshot
/// files are read and written on another.
pub struct LmdbStateMachine<M: Machine> {
    shared: Arc<Shared>,
    machine: Arc<M>,
    applier: Worker<()>,
    io: Worker<()>,
}

impl<M: Machine> Clone for LmdbStateMachine<M> {
    fn clone(&self) -> Self {
        LmdbStateMachine {
            shared: self.shared.clone(),
            machine: self.machine.clone(),
            applier: self.applier.clone(),
            io: self.io.clone(),
        }
    }
}

fn sealed<T: Serialize>(value: &T) -> Result<Vec<u8>, LmdbError> {
    let frame =
        encode_frame(value).map_err(|e| LmdbError::Invalid(format!("cannot encode: {e}")))?;
    Ok(common::seal(&frame))
}

fn io<T>(context: impl Fn() -> String, r: std::io::Result<T>) -> Result<T, LmdbError> {
    r.map_err(|e| LmdbError::io(context(), e))
}

impl<M: Machine> LmdbStateMachine<M> {
    /// Opens (creating) the state machine in `dir`: the live environment named by
    /// `CURRENT`, after removing what an interrupted install or snapshot left behind.
    /// The state is rebuilt from the newest intact snapshot when it cannot be trusted
    /// (see [`ApplyDurability::Deferred`]) or when a newer snapshot than the state was
    /// published; damaged snapshots are set aside, never fatal.
    pub fn open(
        dir: impl AsRef<Path>,
        machine: M,
        config: SmConfig,
    ) -> Result<LmdbStateMachine<M>, LmdbError> {
        let dir = dir.as_ref().to_path_buf();
        let lock = DirLock::acquire(&dir)?;
        for sub in ["snapshots", "incoming"] {
            durable::create_dir(&dir.join(sub))?;
        }
        #[cfg(any(test, feature = "testing"))]
        let boot = config.boot_id_for_tests.clone().or_else(machine_boot_id);
        #[cfg(not(any(test, feature = "testing")))]
        let boot = machine_boot_id();
        let trusted = dirty::trusted(&dir, boot.as_deref())?;
        if !trusted {
            tracing::warn!(dir = %dir.display(), "the state machine stopped with applies not yet on disk, and this is not the same boot and directory (an OS crash, a power cut, or a copy of a running node's directory): discarding the state; it is rebuilt from the newest intact snapshot and the node applies the log after it again");
            for entry in io(|| format!("list {}", dir.display()), fs::read_dir(&dir))?.flatten() {
                if entry.file_name().to_string_lossy().starts_with("state-") {
                    io(
                        || format!("remove {}", entry.path().display()),
                        fs::remove_dir_all(entry.path()),
                    )?;
                }
            }
            match fs::remove_file(dir.join("CURRENT")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(LmdbError::io("remove CURRENT", e));
                }
                _ => {}
            }
            durable::sync_dir(&dir)?;
        }
        let current_file = dir.join("CURRENT");
        let name = match fs::read_to_string(&current_file) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let name = "state-000001".to_string();
                write_current(&dir, &name)?;
                name
            }
            Err(e) => return Err(LmdbError::io(format!("read {}", current_file.display()), e)),
        };
        if !name.starts_with("state-") || name.contains('/') {
            return Err(LmdbError::corrupt(
                current_file.display().to_string(),
                format!("names {name:?}"),
            ));
        }
        // Leftovers of an install or a snapshot cut short.
        for entry in io(|| format!("list {}", dir.display()), fs::read_dir(&dir))?.flatten() {
            let file = entry.file_name().to_string_lossy().to_string();
            if file.starts_with("state-") && file != name {
                tracing::info!(dir = %dir.display(), stale = file, "removing an unfinished or replaced state directory");
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        for entry in io(
            || "list incoming".to_string(),
            fs::read_dir(dir.join("incoming")),
        )?
        .flatten()
        {
            let _ = fs::remove_file(entry.path());
        }
        let snapshots = SnapshotDir::new(dir.join("snapshots"));
        let found = snapshots.check_at_open()?;
        let current = open_current(&dir, &name, &config)?;
        let shared = Arc::new(Shared {
            dir,
            config,
            current: RwLock::new(Arc::new(current)),
            gate: Arc::new(Gate::default()),
            counter: AtomicU64::new(0),
            snapshots,
            _lock: lock,
        });
        recover(&shared, found, trusted)?;
        // From here on applies may be pending in the OS's cache: mark the directory
        // with this boot's id and the directory's identity (a clean close removes the
        // mark after a flush).
        if shared.config.apply_durability == ApplyDurability::Deferred {
            dirty::mark(&shared.dir, boot.as_deref())?;
        } else if shared.dir.join(DIRTY).exists() {
            shared.current().env.force_sync()?;
            io(
                || "remove DIRTY".to_string(),
                fs::remove_file(shared.dir.join(DIRTY)),
            )?;
            durable::sync_dir(&shared.dir)?;
        }
        let applier = Worker::start("raft-sm-apply", ())
            .map_err(|e| LmdbError::io("start the apply thread", e))?;
        let io_worker = Worker::start("raft-sm-io", ())
            .map_err(|e| LmdbError::io("start the snapshot I/O thread", e))?;
        Ok(LmdbStateMachine {
            shared,
            machine: Arc::new(machine),
            applier,
            io: io_worker,
        })
    }

    /// Runs `f` on a read-only view of the current state (for serving reads).
    pub fn read<R>(
        &self,
        f: impl FnOnce(&View<'_>) -> Result<R, LmdbError>,
    ) -> Result<R, LmdbError> {
        let _pass = self.shared.gate.enter();
        let cur = self.shared.current();
        let txn = cur.env.read_txn()?;
        f(&View {
            txn: &txn,
            data: cur.data,
            sessions: cur.sessions,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The size of snapshot `id`'s file, as its metadata records it; `None` if no such
    /// snapshot is listed (never built, or pruned). With
    /// [`read_snapshot`](StateMachine::read_snapshot) it lets a tool stream a snapshot
    /// out (a backup) knowing its length up front.
    pub fn snapshot_size(&self, id: u64) -> Result<Option<u64>, LmdbError> {
        Ok(self
            .shared
            .snapshots
            .list()?
            .into_iter()
            .find(|s| s.meta.id == id)
            .map(|s| s.size))
    }

    /// Bytes the live environment's file takes on disk.
    pub fn disk_size(&self) -> Result<u64, LmdbError> {
        Ok(self.shared.current().env.real_disk_size()?)
    }

    async fn on_applier<R: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Shared, &M) -> Result<R, LmdbError> + Send + 'static,
    ) -> Result<R, StorageError> {
        let (shared, machine) = (self.shared.clone(), self.machine.clone());
        finish(
            operation,
            self.applier
                .call(operation, move |_| f(&shared, &machine))
                .await,
        )
    }

    async fn on_io<R: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Shared) -> Result<R, LmdbError> + Send + 'static,
    ) -> Result<R, StorageError> {
        let shared = self.shared.clone();
        finish(
            operation,
            self.io.call(operation, move |_| f(&shared)).await,
        )
    }
}

fn finish<R>(
    operation: &'static str,
    r: Result<Result<R, LmdbError>, crate::WorkerGone>,
) -> Result<R, StorageError> {
    match r {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            tracing::error!(operation, error = %e, "state machine storage failed");
            Err(e.into_storage(operation))
        }
        Err(gone) => Err(StorageError::new(operation, gone)),
    }
}

#[async_trait::async_trait]
impl<M: Machine> StateMachine for LmdbStateMachine<M> {
    async fn state(&self) -> Result<MachineState, StorageError> {
        self.on_applier("read the state machine's state", |shared, _| {
            let cur = shared.current();
            let txn = cur.env.read_txn()?;
            let applied = read_applied(&cur, &txn)?;
            let snapshot = shared.snapshots.list()?.into_iter().next().map(|s| s.meta);
            Ok(MachineState { applied, snapshot })
        })
        .await
    }

    async fn apply(&self, entries: &[Entry]) -> Result<Vec<Bytes>, StorageError> {
        let entries = entries.to_vec();
        self.on_applier("apply", move |shared, machine| {
            apply_batch(shared, machine, &entries)
        })
        .await
    }

    fn begin_snapshot(&self, mut meta: SnapshotMeta) -> SnapshotTask {
        let shared = self.shared.clone();
        // The capture: a read transaction opened now, in action order.
        let pass = shared.gate.enter();
        let cur = shared.current();
        let started = Instant::now();
        let txn = match cur.env.clone().static_read_txn() {
            Ok(t) => t,
            Err(e) => {
                return futures::future::ready(Err(
                    LmdbError::from(e).into_storage("begin a snapshot")
                ))
                .boxed();
            }
        };
        match read_applied(&cur, &txn) {
            Ok(applied) if applied == meta.last_log_id => {}
            Ok(applied) => {
                let e = LmdbError::Invalid(format!(
                    "snapshot asked at {:?} but {applied:?} is applied",
                    meta.last_log_id
                ));
                return futures::future::ready(Err(e.into_storage("begin a snapshot"))).boxed();
            }
            Err(e) => {
                return futures::future::ready(Err(e.into_storage("begin a snapshot"))).boxed();
            }
        }
        let n = shared.counter.fetch_add(1, Ordering::Relaxed);
        meta.id = std::hash::RandomState::new().hash_one((n, started)) | 1;
        let (tx, rx) = futures::channel::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("raft-snapshot".into())
            .spawn(move || {
                let r = write_snapshot(&shared, &cur, txn, &meta, started).map(|()| meta);
                drop(pass);
                let _ = tx.send(r);
            });
        async move {
            spawned.map_err(|e| StorageError::new("begin a snapshot", e))?;
            match rx.await {
                Ok(Ok(meta)) => Ok(meta),
                Ok(Err(e)) => Err(e.into_storage("write a snapshot")),
                Err(_) => Err(StorageError::new(
                    "write a snapshot",
                    "the snapshot thread died",
                )),
            }
        }
        .boxed()
    }

    async fn read_snapshot(
        &self,
        id: u64,
        offset: u64,
        len: usize,
    ) -> Result<Option<(Bytes, bool)>, StorageError> {
        self.on_io("read a snapshot chunk", move |shared| {
            let path = shared.snapshots.file(id, "snap");
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(LmdbError::io(format!("open {}", path.display()), e)),
            };
            let size = io(|| format!("stat {}", path.display()), file.metadata())?.len();
            let start = offset.min(size);
            let n = usize::try_from((size - start).min(len as u64)).unwrap_or(len);
            let mut buf = vec![0; n];
            match file.read_exact_at(&mut buf, start) {
                Ok(()) => {}
                // Pruned (and being shrunk) between the open and the read.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(LmdbError::io(format!("read {}", path.display()), e)),
            }
            // A pruned file is renamed before it is shrunk or overwritten: if the name
            // still leads to the file read, the read came before any of that.
            let opened = io(|| format!("stat {}", path.display()), file.metadata())?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == opened.ino() && now.dev() == opened.dev() => {}
                _ => return Ok(None),
            }
            Ok(Some((Bytes::from(buf), start + n as u64 >= size)))
        })
        .await
    }

    async fn receive_snapshot(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let id = meta.id;
        self.on_io("receive a snapshot chunk", move |shared| {
            let path = shared.incoming(id);
            let mut file = if offset == 0 {
                for entry in fs::read_dir(path.parent().unwrap_or(&shared.dir))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let _ = fs::remove_file(entry.path());
                }
                io(|| format!("create {}", path.display()), File::create(&path))?
            } else {
                io(
                    || format!("open {}", path.display()),
                    OpenOptions::new().append(true).open(&path),
                )?
            };
            let len = io(|| format!("stat {}", path.display()), file.metadata())?.len();
            if len != offset {
                return Err(LmdbError::Invalid(format!(
                    "chunk at {offset} of snapshot {id:x}, but {len} bytes are stored"
                )));
            }
            io(
                || format!("write {}", path.display()),
                file.write_all(&data),
            )
        })
        .await
    }

    async fn install_snapshot(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let meta = meta.clone();
        self.on_applier("install a snapshot", move |shared, _| {
            // Readers may hold the old environment open; the switch waits for none.
            install(shared, &meta)
        })
        .await
    }
}

//! Pieces both stores share: errors, the checksummed record codec, the directory lock,
//! the format version, environment options and growth.

use heed::{Env, EnvOpenOptions, WithoutTls};
use raft_core::node::StorageError;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The on-disk format this build writes and reads.
///
/// History: 1, the first; 2, records hold frames of `raft_proto` format 2
/// (memberships with node records). A directory of another format is refused at open.
pub const FORMAT_VERSION: u32 = 2;

/// What can go wrong in these stores, beyond LMDB's own errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LmdbError {
    /// Stored bytes fail their checksum or do not decode: never served.
    #[error("corruption in {what}: {detail}")]
    Corruption {
        /// What was being read.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// The directory was written by an older version of this software, in a format
    /// this build does not read.
    #[error(
        "{path} holds format version {found}, older than this build's {FORMAT_VERSION}, which it cannot read; move the data directory away and start the node empty so that it catches up from the others, or run the build that wrote it"
    )]
    OlderFormat {
        /// The directory.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The directory was written by a newer version of this software.
    #[error(
        "{path} holds format version {found}, newer than this build's {FORMAT_VERSION}; run a newer build"
    )]
    NewerFormat {
        /// The directory.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// Another process (or another store in this one) has the directory open.
    #[error("{path} is in use by another process (its LOCK file is held); stop it first")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// The memory map reached its configured maximum.
    #[error("the LMDB map of {path} is full at its maximum of {max} bytes; raise max_map_size")]
    MapFull {
        /// The environment.
        path: PathBuf,
        /// The configured maximum.
        max: usize,
    },
    /// The store is in an inconsistent state that a write must not build on.
    #[error("{0}")]
    Invalid(String),
    /// An LMDB operation failed.
    #[error("LMDB: {0}")]
    Heed(#[from] heed::Error),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl LmdbError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> LmdbError {
        LmdbError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> LmdbError {
        LmdbError::Corruption {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// Whether the error is a full disk (or quota) under `dir`: worth waiting out.
    ///
    /// LMDB reports a page write that the disk cut short as `EIO`, not `ENOSPC` (seen
    /// on a full ext4: the apply failed with "Input/output error"), so an `EIO` counts
    /// as a full disk when the filesystem holding `dir` has (almost) no space left.
    pub(crate) fn is_disk_full(&self, dir: &Path) -> bool {
        let io = match self {
            LmdbError::Heed(heed::Error::Io(e)) | LmdbError::Io { source: e, .. } => e,
            _ => return false,
        };
        matches!(io.raw_os_error(), Some(28 /* ENOSPC */ | 122 /* EDQUOT */))
            || io.kind() == std::io::ErrorKind::StorageFull
            || (io.raw_os_error() == Some(5 /* EIO */)
                && free_bytes(dir).is_some_and(|free| free < 1 << 20))
    }

    pub(crate) fn into_storage(self, operation: &'static str) -> StorageError {
        StorageError::new(operation, self)
    }
}

/// Sizes and limits of an environment.
#[derive(Clone, Debug)]
pub struct EnvConfig {
    /// The memory map at open (address space only; the file grows as data does).
    pub map_size: usize,
    /// The map doubles when full, up to this size.
    pub max_map_size: usize,
    /// With a full disk, a write waits for space this long before failing (the node
    /// stops accepting writes meanwhile; nothing is lost or corrupted).
    pub disk_full_patience: Duration,
    /// The log store's write-ahead log: bytes per segment, zero-filled before use
    /// (default 32 MiB). Unused by the state machine.
    pub wal_segment_bytes: u64,
    /// The log store checkpoints its write-ahead log into LMDB after this many bytes
    /// (default 16 MiB). Unused by the state machine.
    pub wal_checkpoint_bytes: u64,
}

impl Default for EnvConfig {
    fn default() -> Self {
        EnvConfig {
            map_size: 1 << 30,
            max_map_size: 1 << 40,
            disk_full_patience: Duration::from_secs(600),
            wal_segment_bytes: 32 << 20,
            wal_checkpoint_bytes: 16 << 20,
        }
    }
}

/// An exclusive lock on a directory, held for the store's life (released on drop or
/// process exit).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, LmdbError> {
        crate::durable::create_dir(dir)?;
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LmdbError::io(format!("open {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(LmdbError::Locked {
                path: dir.to_path_buf(),
            }),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(LmdbError::io(format!("lock {}", path.display()), e))
            }
        }
    }
}

/// Bytes free for this process on the filesystem holding `dir` (`None` if unknown):
/// the smaller of what any user and what root may still use.
#[allow(unsafe_code)] // statvfs(3) through libc: see the SAFETY note.
#[allow(clippy::unnecessary_cast)] // the field types differ between platforms
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statvfs` is plain old data, valid when zeroed; the call gets a valid
    // NUL-terminated path and a valid pointer to it, and writes only into it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    let block = (st.f_frsize as u64).max(1);
    Some((st.f_bavail as u64).min(st.f_bfree as u64) * block)
}

/// How an environment's commits reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EnvSync {
    /// LMDB's default: a commit is durable when it returns (data pages flushed, then
    /// the meta page).
    Full,
    /// `MDB_NOMETASYNC`: a commit flushes its data pages but leaves its meta page to
    /// the next commit. Consistent after any crash; an OS crash may undo the last
    /// commit.
    NoMetaSync,
    /// `MDB_NOSYNC`: no flush; the OS writes the pages back, or `force_sync` does.
    /// Intact after a process crash; after an OS crash the environment must be
    /// treated as lost (the state machine rebuilds it from a snapshot).
    NoSync,
}

/// Opens (creating) an environment in `dir` with `dbs` named databases, and clears
/// reader slots left by dead processes.
#[allow(unsafe_code)] // heed's open is unsafe: see the SAFETY note.
pub(crate) fn open_env(
    dir: &Path,
    config: &EnvConfig,
    dbs: u32,
    sync: EnvSync,
) -> Result<Env<WithoutTls>, LmdbError> {
    crate::durable::create_dir(dir)?;
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options
        .map_size(round_to_page(config.map_size))
        .max_dbs(dbs);
    let flags = match sync {
        EnvSync::Full => None,
        EnvSync::NoMetaSync => Some(heed::EnvFlags::NO_META_SYNC),
        EnvSync::NoSync => Some(heed::EnvFlags::NO_SYNC),
    };
    if let Some(flags) = flags {
        // SAFETY: heed marks these flags unsafe because they trade durability:
        // NO_META_SYNC keeps the database consistent ("preserves the ACI but not the D
        // property", LMDB's documentation); NO_SYNC may leave it inconsistent after an
        // OS crash, which is why its only user (the state machine's deferred applies)
        // discards the environment after one and rebuilds it from a snapshot.
        unsafe {
            options.flags(flags);
        }
    }
    // SAFETY: each environment path is opened once per process (the directory lock
    // and distinct directories guarantee it), and no other code maps these files.
    let env = unsafe { options.open(dir) }.map_err(|e| match e {
        heed::Error::Mdb(heed::MdbError::Invalid | heed::MdbError::Corrupted) => {
            LmdbError::corrupt(
                dir.join("data.mdb").display().to_string(),
                format!(
                    "{e}: its headers are damaged; restore the directory from a backup, or move it \
                 away and start the node empty so that it catches up from the others"
                ),
            )
        }
        heed::Error::Mdb(heed::MdbError::VersionMismatch) => LmdbError::Invalid(format!(
            "{}: written by another LMDB version ({e})",
            dir.display()
        )),
        heed::Error::Io(io) => LmdbError::io(
            format!("open the LMDB environment in {}", dir.display()),
            io,
        ),
        other => LmdbError::from(other),
    })?;
    // LMDB creates data.mdb (and lock.mdb) on the first open: make their names durable
    // before any commit in them is counted on.
    crate::durable::sync_dir(dir)?;
    let stale = env.clear_stale_readers()?;
    if stale > 0 {
        tracing::info!(dir = %dir.display(), stale, "cleared stale LMDB reader slots");
    }
    Ok(env)
}

pub(crate) fn round_to_page(size: usize) -> usize {
    const PAGE: usize = 4096;
    size.div_ceil(PAGE).max(16) * PAGE
}

/// Doubles `env`'s map, up to `config.max_map_size`; `false` when already there.
///
/// Must be called with no transaction of this environment open in this process.
#[allow(unsafe_code)] // heed's resize is unsafe: see the SAFETY note.
pub(crate) fn grow(env: &Env<WithoutTls>, config: &EnvConfig) -> Result<bool, LmdbError> {
    let current = env.info().map_size;
    if current >= config.max_map_size {
        return Ok(false);
    }
    let next = round_to_page(current.saturating_mul(2).min(config.max_map_size));
    tracing::info!(dir = %env.path().display(), from = current, to = next, "growing the LMDB map");
    // SAFETY: callers hold no transaction of this environment (they run on its one
    // storage thread between transactions, and the environment is not shared).
    unsafe { env.resize(next)? };
    Ok(true)
}

/// Whether an LMDB error is a full map.
pub(crate) fn is_map_full(e: &heed::Error) -> bool {
    matches!(e, heed::Error::Mdb(heed::MdbError::MapFull))
}

/// A record: CRC32C of the frame, then the frame (version byte + postcard).
pub(crate) fn seal(frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.extend_from_slice(&crc32c::crc32c(frame).to_le_bytes());
    out.extend_from_slice(frame);
    out
}

/// The frame of a record, if its checksum holds.
pub(crate) fn unseal<'a>(
    record: &'a [u8],
    what: &dyn Fn() -> String,
) -> Result<&'a [u8], LmdbError> {
    let Some((crc, frame)) = record.split_first_chunk::<4>() else {
        return Err(LmdbError::corrupt(
            what(),
            format!("record of {} bytes is too short", record.len()),
        ));
    };
    let expected = u32::from_le_bytes(*crc);
    let actual = crc32c::crc32c(frame);
    if expected != actual {
        return Err(LmdbError::corrupt(
            what(),
            format!("checksum {actual:08x} does not match the stored {expected:08x}"),
        ));
    }
    Ok(frame)
}

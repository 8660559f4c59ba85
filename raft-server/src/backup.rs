//! Backups of a running cluster (`raft-server snapshot save`) and new clusters built
//! from them (`raft-server snapshot restore`), like etcd's `snapshot save` and
//! `etcdutl snapshot restore`.
//!
//! **What is saved.** [`save`] asks one node for [`AdminOp::SaveSnapshot`]
//! (admin role) on a stream of its own. The node first confirms with the leader that
//! it has applied every write acknowledged before the request (a ReadIndex round),
//! then makes sure it has a snapshot at or after that index (taking one if needed)
//! and streams that snapshot's file in [`SAVE_CHUNK`](crate::proto::SAVE_CHUNK)
//! frames. A snapshot file is written from one LMDB read transaction, a
//! point-in-time view that applies never change, so the backup is consistent while
//! writes go on; it never copies live database files. Without a reachable leader the
//! node saves what it has applied and the header says the save was not confirmed.
//!
//! **The file** (`FILE.part`, synced, renamed to `FILE`, directory synced; mode
//! 0600, as it holds every key and value):
//!
//! ```text
//! "RAFTBKUP" | version u32 LE (1) | header length u32 LE | header
//! snapshot   the node's snapshot file, as it sent it (size from the header)
//! trailer    SHA-256 of every byte before it (32 bytes)
//! header   = a versioned postcard frame of SaveHeader: the cluster id (the SHA-256
//!            of the cluster CA certificate), the node, the time, whether the leader
//!            confirmed it, the snapshot's last log id and membership, its size
//! ```
//!
//! **Restore** ([`restore`]) refuses a damaged file (wrong magic, unknown version,
//! truncated, checksum mismatch, a snapshot that does not parse) and a data directory
//! that is not empty, then builds a data directory from which a *new* cluster starts:
//!
//! - the state machine holds the snapshot's keys, values and client sessions, at the
//!   snapshot's last log id (so indexes continue from it);
//! - the old cluster's node addresses are not carried over: they live in its
//!   membership's node records, and the new membership has none; the new nodes reach
//!   each other by their configuration's peers;
//! - the membership is the restoring node and its `--peer`s (or its configuration's
//!   peers), all voters: every node of the new cluster must be restored from the same
//!   file with the same members; the old membership is ignored;
//! - the log is empty, starting after the snapshot, at the snapshot's term.
//!
//! The new cluster must not share addresses with the old one while both run: its nodes
//! would reach the old nodes by the addresses they are configured with.

use crate::proto::{self, AdminOp, Request, SaveFrame, SaveHeader, ServerError};
use raft_core::Persist;
use raft_core::node::{LogStore, StateMachine, StorageError};
use raft_net_quic::Identity;
use raft_proto::{Bytes, HardState, Membership, NodeId, SnapshotMeta};
use raft_storage_lmdb::{
    EnvConfig, LmdbError, LmdbLogStore, LmdbStateMachine, SmConfig, SnapshotWriter,
};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The first bytes of a backup file.
pub const MAGIC: &[u8; 8] = b"RAFTBKUP";
/// The backup file format this build writes and reads.
pub const VERSION: u32 = 1;
/// Magic, version and header length.
const PREFIX: u64 = 16;
/// The SHA-256 at the end.
const TRAILER: u64 = 32;
/// The largest header accepted (a membership of thousands of nodes fits).
const MAX_HEADER: u64 = 1 << 20;
/// How long a save waits for the node's first frame: the node may have to confirm
/// with the leader and build a snapshot first (the node gives up after 5 minutes).
const HEADER_WAIT: Duration = Duration::from_secs(330);

/// Why a save failed. The file is not written (a `.part` left behind is removed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SaveError {
    /// No node could be reached.
    #[error("no node could be reached: {0}")]
    Unreachable(String),
    /// The node refused or failed the save (the admin role is missing, a save is
    /// already running, no snapshot could be built, ...).
    #[error("the node refused the save: {0}")]
    Refused(ServerError),
    /// The node's stream broke off or did not follow the protocol.
    #[error("the transfer from {node} failed: {detail}")]
    Transfer {
        /// The node.
        node: SocketAddr,
        /// What went wrong.
        detail: String,
    },
    /// The file could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Why a backup file was refused or a restore failed. A failed restore removes what it
/// wrote in the data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The file is not a backup.
    #[error("{path} is not a raft-server backup (it does not start with {MAGIC:?})")]
    NotABackup {
        /// The file.
        path: PathBuf,
    },
    /// The file has a format version this build does not read.
    #[error(
        "{path} has backup format version {found}; this build reads version {VERSION} (use the build that wrote it, or the file is damaged)"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The file is shorter than it says it is.
    #[error(
        "{path} is truncated: it holds {len} bytes of at least {expected}; the backup is incomplete"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The length it should have (at least).
        expected: u64,
    },
    /// The file's contents do not match its checksum.
    #[error(
        "{path} is damaged: its contents do not match the SHA-256 it carries (computed {actual}, recorded {recorded})"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The SHA-256 of the contents, hex.
        actual: String,
        /// The SHA-256 the file records, hex.
        recorded: String,
    },
    /// The file's checksum matches but its contents do not parse.
    #[error("{path} is damaged: {detail}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The data directory holds something already.
    #[error(
        "{dir} is not empty: a restore builds a fresh data directory; give a new or empty directory"
    )]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// The new cluster's members are not usable.
    #[error("members of the new cluster: {0}")]
    Members(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    File {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Building the stores failed.
    #[error("building the data directory: {0}")]
    Storage(String),
}

impl From<StorageError> for RestoreError {
    fn from(e: StorageError) -> Self {
        RestoreError::Storage(e.to_string())
    }
}

impl From<LmdbError> for RestoreError {
    fn from(e: LmdbError) -> Self {
        RestoreError::Storage(e.to_string())
    }
}

/// What a save wrote.
#[derive(Clone, Debug)]
pub struct SaveReport {
    /// The snapshot's description (also the file's header).
    pub header: SaveHeader,
    /// The node it came from.
    pub node: SocketAddr,
    /// The file's size in bytes.
    pub file_bytes: u64,
    /// From the request to the file's rename.
    pub elapsed: Duration,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `.part` file being written, removed unless it was completed.
struct Part {
    path: PathBuf,
    done: bool,
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// `path` with `.part` appended to its name.
fn part_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Saves a consistent snapshot of the cluster into `path`: asks the first node of
/// `nodes` that can be reached, writes `path.part`, syncs it, renames it to `path` and
/// syncs the directory. `timeout` bounds each connection attempt and each wait for the
/// next frame once the transfer started. File writes block the calling thread (meant
/// for tools).
pub async fn save(
    nodes: &[SocketAddr],
    identity: &Identity,
    path: &Path,
    timeout: Duration,
) -> Result<SaveReport, SaveError> {
    let started = Instant::now();
    let runtime = raft_net_quic::tokio_runtime()
        .ok_or_else(|| SaveError::Unreachable("not inside a tokio runtime".into()))?;
    let mut failures = Vec::new();
    let mut connected = None;
    for &node in nodes {
        let attempt = raft_net_quic::connect_client(identity, node, runtime.clone());
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(c)) => {
                connected = Some((node, c));
                break;
            }
            Ok(Err(e)) => failures.push(format!("{node}: {e}")),
            Err(_) => failures.push(format!("{node}: no answer within {timeout:?}")),
        }
    }
    let Some((node, conn)) = connected else {
        return Err(SaveError::Unreachable(failures.join("; ")));
    };
    let transfer = |detail: String| SaveError::Transfer { node, detail };
    let (mut send, mut recv) = conn
        .connection
        .open_bi()
        .await
        .map_err(|e| transfer(e.to_string()))?;
    let request = proto::encode(&Request::Admin(AdminOp::SaveSnapshot))
        .map_err(|e| transfer(format!("cannot encode the request: {e}")))?;
    send.write_all(&request)
        .await
        .map_err(|e| transfer(e.to_string()))?;
    let _ = send.finish();
    let result = receive(&mut recv, path, timeout, node).await;
    conn.connection.close(0u32.into(), b"done");
    let (header, file_bytes) = result?;
    Ok(SaveReport {
        header,
        node,
        file_bytes,
        elapsed: started.elapsed(),
    })
}

/// Reads the next [`SaveFrame`] within `wait`.
async fn next_frame(recv: &mut quinn::RecvStream, wait: Duration) -> Result<SaveFrame, String> {
    let body = tokio::time::timeout(wait, proto::read_frame(recv))
        .await
        .map_err(|_| format!("nothing arrived within {wait:?}"))??;
    proto::decode::<SaveFrame>(&body).map_err(|e| format!("undecodable frame: {e}"))
}

/// Receives a save's frames into `path` (through `path.part`); returns the header
/// and the file's size.
async fn receive(
    recv: &mut quinn::RecvStream,
    path: &Path,
    timeout: Duration,
    node: SocketAddr,
) -> Result<(SaveHeader, u64), SaveError> {
    let transfer = |detail: String| SaveError::Transfer { node, detail };
    let header = match next_frame(recv, HEADER_WAIT).await.map_err(transfer)? {
        SaveFrame::Header(h) => h,
        SaveFrame::Error(e) => return Err(SaveError::Refused(e)),
        other => return Err(transfer(format!("expected a header, got {other:?}"))),
    };
    let mut part = Part {
        path: part_path(path),
        done: false,
    };
    let file_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SaveError::File { path: p, source }
    };
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&part.path).map_err(file_err(&part.path))?;
    let mut out = Sha256Writer::new(BufWriter::with_capacity(1 << 20, file));
    let encoded = raft_proto::encode_frame(&header)
        .map_err(|e| transfer(format!("cannot encode the header: {e}")))?;
    let header_len =
        u32::try_from(encoded.len()).map_err(|_| transfer("the header is over 4 GiB".into()))?;
    out.write_all(MAGIC).map_err(file_err(&part.path))?;
    out.write_all(&VERSION.to_le_bytes())
        .map_err(file_err(&part.path))?;
    out.write_all(&header_len.to_le_bytes())
        .map_err(file_err(&part.path))?;
    out.write_all(&encoded).map_err(file_err(&part.path))?;
    let mut data = ring::digest::Context::new(&ring::digest::SHA256);
    let mut received = 0u64;
    let (size, sha256) = loop {
        match next_frame(recv, timeout).await.map_err(transfer)? {
            SaveFrame::Chunk(bytes) => {
                received += bytes.len() as u64;
                if received > header.size {
                    return Err(transfer(format!(
                        "the node sent more than the {} bytes it announced",
                        header.size
                    )));
                }
                data.update(&bytes);
                out.write_all(&bytes).map_err(file_err(&part.path))?;
            }
            SaveFrame::End { size, sha256 } => break (size, sha256),
            SaveFrame::Error(e) => return Err(SaveError::Refused(e)),
            SaveFrame::Header(_) => return Err(transfer("a second header".into())),
        }
    };
    if size != received || size != header.size {
        return Err(transfer(format!(
            "received {received} bytes; the node announced {} and says it sent {size}",
            header.size
        )));
    }
    if data.finish().as_ref() != sha256 {
        return Err(transfer(
            "the bytes received do not match the SHA-256 the node computed".into(),
        ));
    }
    let (inner, digest) = out.finish();
    let mut file = inner.into_inner().map_err(|e| SaveError::File {
        path: part.path.clone(),
        source: e.into_error(),
    })?;
    file.write_all(digest.as_ref())
        .map_err(file_err(&part.path))?;
    file.sync_all().map_err(file_err(&part.path))?;
    let file_bytes = PREFIX + u64::from(header_len) + header.size + TRAILER;
    fs::rename(&part.path, path).map_err(file_err(path))?;
    part.done = true;
    sync_parent(path).map_err(file_err(path))?;
    Ok((header, file_bytes))
}

/// Syncs the directory holding `path`, so a rename into it is durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// A writer that computes the SHA-256 of what passes through.
struct Sha256Writer<W> {
    inner: W,
    digest: ring::digest::Context,
}

impl<W: Write> Sha256Writer<W> {
    fn new(inner: W) -> Self {
        Sha256Writer {
            inner,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    fn finish(self) -> (W, ring::digest::Digest) {
        (self.inner, self.digest.finish())
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A backup file that passed [`verify`].
#[derive(Clone, Debug)]
pub struct Verified {
    /// Its header.
    pub header: SaveHeader,
    /// Where the snapshot's bytes start in the file.
    pub data_offset: u64,
    /// The file's SHA-256 (its trailer).
    pub sha256: [u8; 32],
    /// The file's size.
    pub file_bytes: u64,
}

/// Checks a backup file without changing anything: its magic and version, its length
/// against its header, and the SHA-256 of its contents (read in 1 MiB pieces). The
/// snapshot inside is parsed only by [`restore`].
pub fn verify(path: &Path) -> Result<Verified, RestoreError> {
    let file_err = |source| RestoreError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(file_err)?;
    let len = file.metadata().map_err(file_err)?.len();
    let mut prefix = Vec::with_capacity(PREFIX as usize);
    (&mut file)
        .take(PREFIX)
        .read_to_end(&mut prefix)
        .map_err(file_err)?;
    let magic_len = prefix.len().min(MAGIC.len());
    if prefix[..magic_len] != MAGIC[..magic_len] || prefix.is_empty() {
        return Err(RestoreError::NotABackup {
            path: path.to_path_buf(),
        });
    }
    let truncated = |expected: u64| RestoreError::Truncated {
        path: path.to_path_buf(),
        len,
        expected,
    };
    let field = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(prefix.get(at..at + 4)?.try_into().ok()?))
    };
    let (Some(version), Some(header_len)) = (field(8), field(12)) else {
        // Only a version is needed to tell an unknown format from a cut one.
        if let Some(version) = field(8).filter(|&v| v != VERSION) {
            return Err(RestoreError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
            });
        }
        return Err(truncated(PREFIX + TRAILER));
    };
    if version != VERSION {
        return Err(RestoreError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let header_len = u64::from(header_len);
    if header_len > MAX_HEADER {
        return Err(RestoreError::Damaged {
            path: path.to_path_buf(),
            detail: format!("a header of {header_len} bytes is not plausible"),
        });
    }
    if len < PREFIX + header_len + TRAILER {
        return Err(truncated(PREFIX + header_len + TRAILER));
    }
    let mut header_bytes = Vec::with_capacity(header_len as usize);
    (&mut file)
        .take(header_len)
        .read_to_end(&mut header_bytes)
        .map_err(file_err)?;
    let header: Result<SaveHeader, _> = raft_proto::decode_frame(&header_bytes);
    // The checksum over everything before the trailer, streamed.
    file.seek(SeekFrom::Start(0)).map_err(file_err)?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    {
        let mut contents = (&mut file).take(len - TRAILER);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = contents.read(&mut buf).map_err(file_err)?;
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
        }
    }
    let mut recorded = [0u8; 32];
    file.seek(SeekFrom::Start(len - TRAILER))
        .map_err(file_err)?;
    file.read_exact(&mut recorded).map_err(file_err)?;
    let actual = digest.finish();
    let expected_len = header
        .as_ref()
        .ok()
        .map(|h| (PREFIX + header_len + TRAILER).saturating_add(h.size));
    if actual.as_ref() != recorded {
        if let Some(expected) = expected_len.filter(|&e| len < e) {
            return Err(truncated(expected));
        }
        return Err(RestoreError::Checksum {
            path: path.to_path_buf(),
            actual: hex(actual.as_ref()),
            recorded: hex(&recorded),
        });
    }
    let header = header.map_err(|e| RestoreError::Damaged {
        path: path.to_path_buf(),
        detail: format!("its header does not decode: {e}"),
    })?;
    if expected_len != Some(len) {
        return Err(RestoreError::Damaged {
            path: path.to_path_buf(),
            detail: format!(
                "it holds {len} bytes, its header says {}",
                expected_len.unwrap_or(0)
            ),
        });
    }
    Ok(Verified {
        header,
        data_offset: PREFIX + header_len,
        sha256: recorded,
        file_bytes: len,
    })
}

/// What [`restore`] builds.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The backup file.
    pub file: PathBuf,
    /// The node whose data directory this is.
    pub id: NodeId,
    /// The data directory to create (it must not exist or be empty).
    pub data_dir: PathBuf,
    /// The new cluster's voters; `id` is added if missing.
    pub members: BTreeSet<NodeId>,
}

/// What [`restore`] did.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// The backup's header.
    pub header: SaveHeader,
    /// The snapshot the new data directory starts from (its last log id, the new
    /// membership).
    pub meta: SnapshotMeta,
    /// Records of the backup's snapshot (keys, sessions, bookkeeping).
    pub records: u64,
    /// From the start to the end of the restore.
    pub elapsed: Duration,
}

/// Builds a fresh data directory for node `options.id` of a new cluster from a
/// backup file (see the module docs for what the new cluster holds). Refuses a damaged
/// file and a data directory that is not empty before writing anything; removes what
/// it wrote if it fails later.
pub async fn restore(options: &RestoreOptions) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let dir = &options.data_dir;
    if options.id.0 == 0 {
        return Err(RestoreError::Members("node id 0 is not allowed".into()));
    }
    let mut members = options.members.clone();
    members.insert(options.id);
    if members.contains(&NodeId(0)) {
        return Err(RestoreError::Members("node id 0 is not allowed".into()));
    }
    let existed = match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RestoreError::NotEmpty { dir: dir.clone() });
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(RestoreError::File {
                path: dir.clone(),
                source,
            });
        }
    };
    let verified = verify(&options.file)?;
    let result = build(options, &verified, members).await;
    if result.is_err() {
        // Leave the directory as it was found.
        if existed {
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let p = entry.path();
                    let _ = if p.is_dir() {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                }
            }
        } else {
            let _ = fs::remove_dir_all(dir);
        }
    }
    let (meta, records) = result?;
    Ok(RestoreReport {
        header: verified.header,
        meta,
        records,
        elapsed: started.elapsed(),
    })
}

/// The directory-building half of [`restore`]: the state machine from the rewritten
/// snapshot, then the log after it.
async fn build(
    options: &RestoreOptions,
    verified: &Verified,
    members: BTreeSet<NodeId>,
) -> Result<(SnapshotMeta, u64), RestoreError> {
    let dir = &options.data_dir;
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RestoreError::File { path, source }
    };
    crate::data_dir::create_private(dir).map_err(file_err(dir))?;
    // Every node restored from the same file with the same members gets the same
    // snapshot id, as the same bytes must.
    let mut seed = ring::digest::Context::new(&ring::digest::SHA256);
    seed.update(&verified.sha256);
    for m in &members {
        seed.update(&m.0.to_le_bytes());
    }
    let seed = seed.finish();
    let mut id = [0u8; 8];
    id.copy_from_slice(&seed.as_ref()[..8]);
    let meta = SnapshotMeta {
        last_log_id: verified.header.meta.last_log_id,
        membership: Membership::voters(members),
        id: u64::from_le_bytes(id) | 1,
    };
    // The snapshot, checked record by record, in a file of its own.
    let rewritten = dir.join("restore.snap.tmp");
    let records = rewrite(&options.file, verified, &rewritten)?;
    let sm = LmdbStateMachine::open(dir.join("sm"), crate::kv::Kv, SmConfig::default())?;
    let mut input = File::open(&rewritten).map_err(file_err(&rewritten))?;
    let mut offset = 0u64;
    loop {
        let mut chunk = Vec::with_capacity(proto::SAVE_CHUNK);
        let n = (&mut input)
            .take(proto::SAVE_CHUNK as u64)
            .read_to_end(&mut chunk)
            .map_err(file_err(&rewritten))?;
        if n == 0 {
            break;
        }
        sm.receive_snapshot(&meta, offset, Bytes::from(chunk))
            .await?;
        offset += n as u64;
    }
    drop(input);
    sm.install_snapshot(&meta).await?;
    drop(sm);
    fs::remove_file(&rewritten).map_err(file_err(&rewritten))?;
    let log = LmdbLogStore::open(dir.join("log"), EnvConfig::default())?;
    log.reset(&meta).await?;
    log.write(&Persist {
        hard_state: Some(HardState {
            term: meta.last_log_id.term,
            voted_for: None,
        }),
        ..Persist::default()
    })
    .await?;
    drop(log);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(file_err(dir))?;
    Ok((meta, records))
}

/// Copies the backup's snapshot into `to`, record by record, checking its framing and
/// CRC on the way, before anything is installed. Returns the number of records.
fn rewrite(file: &Path, verified: &Verified, to: &Path) -> Result<u64, RestoreError> {
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RestoreError::File { path, source }
    };
    let mut input = File::open(file).map_err(file_err(file))?;
    input
        .seek(SeekFrom::Start(verified.data_offset))
        .map_err(file_err(file))?;
    let out = File::create(to).map_err(file_err(to))?;
    let mut writer = SnapshotWriter::new(out)?;
    let mut records = 0u64;
    raft_storage_lmdb::read_snapshot_records(
        input.take(verified.header.size),
        |table, key, value| {
            records += 1;
            writer.record(table, key, value)
        },
    )
    .map_err(|e| match e {
        LmdbError::Corruption { detail, .. } => RestoreError::Damaged {
            path: file.to_path_buf(),
            detail: format!("the snapshot inside does not parse: {detail}"),
        },
        other => RestoreError::Storage(other.to_string()),
    })?;
    writer.finish()?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_proto::{LogId, LogIndex, Term};
    use raft_storage_lmdb::SnapshotTable;

    fn header(size: u64) -> SaveHeader {
        SaveHeader {
            cluster: "ab".repeat(32),
            node: NodeId(2),
            taken_at_ms: 1,
            confirmed: true,
            meta: SnapshotMeta {
                last_log_id: LogId::new(Term(3), LogIndex(40)),
                membership: Membership::voters([NodeId(1), NodeId(2), NodeId(3)]),
                id: 7,
            },
            size,
        }
    }

    /// A snapshot of two keys and the old cluster's address of node 2, as a backup
    /// file's bytes.
    fn backup_bytes() -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        for (table, k, v) in [
            (SnapshotTable::Data, &b"a"[..], &b"\x001"[..]),
            (SnapshotTable::Data, b"b", b"\x002"),
            (SnapshotTable::Sessions, b"n", &[0; 8]),
        ] {
            w.record(table, k, v).unwrap_or_else(|e| panic!("{e}"));
        }
        let (snapshot, size, _) = w.finish().unwrap_or_else(|e| panic!("{e}"));
        let encoded = raft_proto::encode_frame(&header(size)).unwrap_or_else(|e| panic!("{e}"));
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        out.extend_from_slice(&encoded);
        out.extend_from_slice(&snapshot);
        let digest = ring::digest::digest(&ring::digest::SHA256, &out);
        out.extend_from_slice(digest.as_ref());
        out
    }

    #[test]
    fn verify_accepts_an_intact_file_and_refuses_every_flipped_byte_and_every_cut() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("b.rbk");
        let bytes = backup_bytes();
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let v = verify(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.file_bytes, bytes.len() as u64);
        assert_eq!(v.header.meta.last_log_id.index, LogIndex(40));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            std::fs::write(&path, &bad).unwrap_or_else(|e| panic!("{e}"));
            assert!(verify(&path).is_err(), "a flipped byte at {i} was accepted");
        }
        for len in 0..bytes.len() {
            std::fs::write(&path, &bytes[..len]).unwrap_or_else(|e| panic!("{e}"));
            let e = verify(&path)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains("truncated") || (len == 0 && e.contains("not a raft-server backup")),
                "cut to {len}: {e:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_restore_keeps_the_data_and_sets_the_new_members_without_old_addresses() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("b.rbk");
        std::fs::write(&file, backup_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let data_dir = dir.path().join("node5");
        let options = RestoreOptions {
            file,
            id: NodeId(5),
            data_dir: data_dir.clone(),
            members: BTreeSet::from([NodeId(6), NodeId(7)]),
        };
        let report = restore(&options).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.records, 3);
        assert_eq!(
            report.meta.membership,
            Membership::voters([NodeId(5), NodeId(6), NodeId(7)])
        );
        assert_eq!(report.meta.last_log_id, LogId::new(Term(3), LogIndex(40)));
        let again = restore(&options).await.err().map(|e| e.to_string());
        assert!(again.is_some_and(|e| e.contains("not empty")));

        let sm = LmdbStateMachine::open(data_dir.join("sm"), crate::kv::Kv, SmConfig::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let state = sm.state().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(state.applied, report.meta.last_log_id);
        assert_eq!(state.snapshot.as_ref(), Some(&report.meta));
        let a = sm
            .read(|v| crate::kv::get(v.txn, v.data, b"a"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.as_deref(), Some(&b"1"[..]));
        assert!(
            report.meta.membership.nodes.is_empty(),
            "the old cluster's records came along: {:?}",
            report.meta.membership
        );
        drop(sm);
        // A dropped store's threads release its directory lock a moment later.
        let waited = std::time::Instant::now();
        let log = loop {
            match LmdbLogStore::open(data_dir.join("log"), EnvConfig::default()) {
                Err(LmdbError::Locked { .. }) if waited.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => break other.unwrap_or_else(|e| panic!("{e}")),
            }
        };
        let stored = log.load().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stored.purged, report.meta.last_log_id);
        assert_eq!(stored.hard_state.term, Term(3));
        assert!(stored.entries.is_empty());
    }
}

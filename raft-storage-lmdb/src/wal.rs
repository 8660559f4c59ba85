//! The log store's write-ahead log: the one place a log write waits for the disk.
//!
//! Every change to the log (a batch of appends with its truncation and hard state, a
//! purge, a reset) is a record appended to the active segment and synced with one
//! `fdatasync`. Segments are zero-filled and synced before they are used, so a write
//! overwrites blocks that are already allocated and written, and the sync has no
//! metadata to commit: one device flush per batch (LMDB's own commit needs two). LMDB
//! stays the indexed store of record: a checkpointer applies the records to it in
//! large batches with a full LMDB commit, off the write path, and then the segments
//! behind the checkpoint are recycled.
//!
//! ```text
//! wal/<seq:016x>.wal     segment: a 32-byte header, then records
//!   header               "RAFTWAL1" | seq u64 | first lsn u64 | crc32c u32 | 4 zero bytes
//!   record               lsn u64 | len u32 | crc32c u32 (over lsn, len, body) | body
//!   body                 the version byte + postcard of a `Record`
//! ```
//!
//! Records carry consecutive sequence numbers (LSN). Replay starts at the checkpoint
//! recorded in LMDB and stops at the first record that is not the next LSN with a good
//! checksum: a write cut short by a crash (a torn tail) is dropped there. A bad record
//! *followed* by a good one is not a torn write but damage to synced data: that is
//! reported as corruption, never silently cut. A recycled segment still holds old
//! records under an old header; its header names another sequence number, so replay
//! never reads them.

use crate::common::LmdbError;
use crate::durable;
use raft_proto::{Entry, HardState, LogIndex, SnapshotMeta, decode_frame, encode_frame};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"RAFTWAL1";
const HEADER: u64 = 32;
const RECORD_HEADER: u64 = 16;

/// One change to the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Record {
    /// `LogStore::write`: remove entries from `truncate_from` on, append `entries`,
    /// store `hard_state`.
    Write {
        truncate_from: Option<LogIndex>,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    },
    /// `LogStore::purge`.
    Purge {
        up_to: raft_proto::LogId,
        base: SnapshotMeta,
    },
    /// `LogStore::reset`.
    Reset { base: SnapshotMeta },
}

/// A place in the WAL: the next record goes to `offset` of segment `seq` with `lsn`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Position {
    pub(crate) seq: u64,
    pub(crate) offset: u64,
    pub(crate) lsn: u64,
}

/// Sizes of the WAL.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WalConfig {
    /// Bytes per segment (records never span two).
    pub(crate) segment_bytes: u64,
}

/// The path of segment `seq`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

fn header(seq: u64, first_lsn: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first LSN of a segment whose header is valid for `seq`.
fn read_header(file: &File, seq: u64) -> Option<u64> {
    let mut h = [0u8; HEADER as usize];
    file.read_exact_at(&mut h, 0).ok()?;
    let crc = u32::from_le_bytes(h[24..28].try_into().ok()?);
    let ok = &h[..8] == MAGIC
        && crc32c::crc32c(&h[..24]) == crc
        && u64::from_le_bytes(h[8..16].try_into().ok()?) == seq;
    let first = u64::from_le_bytes(h[16..24].try_into().ok()?);
    ok.then_some(first)
}

fn encode_record(lsn: u64, record: &Record) -> Result<Vec<u8>, LmdbError> {
    let body = encode_frame(record)
        .map_err(|e| LmdbError::Invalid(format!("cannot encode a WAL record: {e}")))?;
    let len = u32::try_from(body.len())
        .map_err(|_| LmdbError::Invalid("a WAL record over 4 GiB".into()))?;
    let mut out = Vec::with_capacity(RECORD_HEADER as usize + body.len());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), &body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// What a record at `offset` holds: `Ok(Some((record, next offset)))`, `Ok(None)` when
/// no valid record with `lsn` starts there.
fn read_record(
    file: &File,
    size: u64,
    offset: u64,
    lsn: u64,
) -> Result<Option<(Record, u64)>, LmdbError> {
    if offset + RECORD_HEADER > size {
        return Ok(None);
    }
    let mut h = [0u8; RECORD_HEADER as usize];
    file.read_exact_at(&mut h, offset)
        .map_err(|e| LmdbError::io("read the WAL", e))?;
    let (Ok(at), Ok(len), Ok(crc)) = (
        <[u8; 8]>::try_from(&h[..8]),
        <[u8; 4]>::try_from(&h[8..12]),
        <[u8; 4]>::try_from(&h[12..16]),
    ) else {
        return Ok(None);
    };
    let (at, len, crc) = (
        u64::from_le_bytes(at),
        u64::from(u32::from_le_bytes(len)),
        u32::from_le_bytes(crc),
    );
    let end = offset + RECORD_HEADER + len;
    if at != lsn || len == 0 || end > size {
        return Ok(None);
    }
    let mut body = vec![0u8; len as usize];
    file.read_exact_at(&mut body, offset + RECORD_HEADER)
        .map_err(|e| LmdbError::io("read the WAL", e))?;
    if crc32c::crc32c_append(crc32c::crc32c(&h[..12]), &body) != crc {
        return Ok(None);
    }
    match decode_frame::<Record>(&body) {
        Ok(record) => Ok(Some((record, end))),
        Err(_) => Ok(None),
    }
}

/// The segments in `dir`, by sequence number.
fn segments(dir: &Path) -> Result<Vec<u64>, LmdbError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)
        .map_err(|e| LmdbError::io(format!("list {}", dir.display()), e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(seq) = name
            .strip_suffix(".wal")
            .and_then(|s| u64::from_str_radix(s, 16).ok())
        {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads every record after `from`, in order, and the position after the last one;
/// with `until`, stops there (records the writer appended up to that point).
///
/// Stops at the first place that does not hold the next record: a torn tail. Fails
/// with [`LmdbError::Corruption`] when a record there is damaged but a later one is
/// intact (synced data was damaged, so cutting would lose acknowledged writes).
pub(crate) fn replay(
    dir: &Path,
    from: Position,
    until: Option<Position>,
) -> Result<(Vec<Record>, Position), LmdbError> {
    let mut records = Vec::new();
    let mut at = from;
    let available = segments(dir)?;
    loop {
        let path = segment_path(dir, at.seq);
        let Ok(file) = File::open(&path) else {
            break;
        };
        let size = file
            .metadata()
            .map_err(|e| LmdbError::io(format!("stat {}", path.display()), e))?
            .len();
        match read_header(&file, at.seq) {
            Some(first) if at.offset == 0 && first == at.lsn => at.offset = HEADER,
            Some(_) if at.offset >= HEADER => {}
            // Not (yet) written in this generation: the log ends before it.
            _ => break,
        }
        loop {
            if until.is_some_and(|u| at.lsn >= u.lsn) {
                return Ok((records, at));
            }
            match read_record(&file, size, at.offset, at.lsn)? {
                Some((record, next)) => {
                    records.push(record);
                    at.offset = next;
                    at.lsn += 1;
                }
                None => break,
            }
        }
        // The writer moves to the next segment when a record does not fit: a header
        // there with the next LSN continues the log.
        let next = at.seq + 1;
        let continues = File::open(segment_path(dir, next))
            .ok()
            .and_then(|f| read_header(&f, next))
            == Some(at.lsn);
        if !continues {
            check_no_later_record(&file, size, at, &available, dir)?;
            break;
        }
        at = Position {
            seq: next,
            offset: 0,
            lsn: at.lsn,
        };
    }
    Ok((records, at))
}

/// At the end of the log (`at`): a good record with a later LSN in this segment, or a
/// later segment whose header continues past `at.lsn`, means the end is damage, not a
/// torn write.
fn check_no_later_record(
    file: &File,
    size: u64,
    at: Position,
    available: &[u64],
    dir: &Path,
) -> Result<(), LmdbError> {
    let damaged = |detail: String| {
        Err(LmdbError::corrupt(
            segment_path(dir, at.seq).display().to_string(),
            format!(
                "{detail}: the WAL record {} at offset {} is damaged but later records are intact; restore this node's data directory from a backup, or move it away and start the node empty so that it catches up from the others",
                at.lsn, at.offset
            ),
        ))
    };
    // The record at `at` may be damaged in its body only: its header still says how
    // long it is, and the record after it would be intact.
    let mut h = [0u8; RECORD_HEADER as usize];
    if at.offset + RECORD_HEADER <= size
        && file.read_exact_at(&mut h, at.offset).is_ok()
        && h[..8] == at.lsn.to_le_bytes()
    {
        let len = u64::from(u32::from_le_bytes([h[8], h[9], h[10], h[11]]));
        if read_record(file, size, at.offset + RECORD_HEADER + len, at.lsn + 1)?.is_some() {
            return damaged("the next record is intact".into());
        }
    }
    for &seq in available.iter().filter(|&&s| s > at.seq) {
        let later = File::open(segment_path(dir, seq))
            .ok()
            .and_then(|f| read_header(&f, seq));
        if later.is_some_and(|first| first > at.lsn) {
            return damaged(format!("segment {seq:x} continues the log"));
        }
    }
    Ok(())
}

/// Creates segment `seq`, zero-filled and synced, its name synced into `dir`; reuses
/// `recycle` (a segment no longer needed) when given, whose blocks are already written.
pub(crate) fn prepare_segment(
    dir: &Path,
    seq: u64,
    config: WalConfig,
    recycle: Option<u64>,
) -> Result<(), LmdbError> {
    let path = segment_path(dir, seq);
    let clear_header = |path: &Path| -> Result<(), LmdbError> {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| LmdbError::io(format!("open {}", path.display()), e))?;
        f.write_all_at(&[0u8; HEADER as usize], 0)
            .and_then(|()| f.sync_data())
            .map_err(|e| LmdbError::io(format!("clear {}", path.display()), e))
    };
    if path.exists() {
        // Left from before a crash that cut the log short of it: its blocks are
        // written; only its header must not claim it.
        return clear_header(&path);
    }
    if let Some(old) = recycle {
        let from = segment_path(dir, old);
        if fs::rename(&from, &path).is_ok() {
            // The old header names the old sequence number, so it is unreadable as
            // `seq` anyway; clearing it makes that plain.
            clear_header(&path)?;
            return durable::sync_dir(dir);
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let what = || format!("prepare {}", tmp.display());
    let mut f = File::create(&tmp).map_err(|e| LmdbError::io(what(), e))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = config.segment_bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])
            .map_err(|e| LmdbError::io(what(), e))?;
        left -= n as u64;
    }
    f.sync_all().map_err(|e| LmdbError::io(what(), e))?;
    fs::rename(&tmp, &path).map_err(|e| LmdbError::io(what(), e))?;
    durable::sync_dir(dir)
}

/// The active segment, appended to by the log's writer thread.
pub(crate) struct Writer {
    dir: PathBuf,
    config: WalConfig,
    file: File,
    at: Position,
    /// The active segment's header is not written yet.
    fresh: bool,
}

impl Writer {
    /// Continues the log at `at` (where [`replay`] ended). The segment there must
    /// exist (see [`prepare_segment`]).
    pub(crate) fn open(dir: &Path, config: WalConfig, at: Position) -> Result<Writer, LmdbError> {
        let path = segment_path(dir, at.seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LmdbError::io(format!("open {}", path.display()), e))?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            config,
            file,
            at,
            fresh: at.offset == 0,
        })
    }

    /// Where the next record goes.
    #[cfg(test)]
    pub(crate) fn position(&self) -> Position {
        self.at
    }

    /// Whether `len` more bytes fit in the active segment.
    fn fits(&self, len: u64) -> bool {
        let start = if self.fresh { HEADER } else { self.at.offset };
        start + len <= self.config.segment_bytes
    }

    /// Appends `record` (synced when `sync`: durable when this returns). Returns the
    /// position after it. `next_segment` is called when the record does not fit and
    /// must make segment `seq + 1` ready (see [`prepare_segment`]).
    pub(crate) fn append(
        &mut self,
        record: &Record,
        sync: bool,
        next_segment: &mut dyn FnMut(u64) -> Result<(), LmdbError>,
    ) -> Result<Position, LmdbError> {
        let bytes = encode_record(self.at.lsn, record)?;
        // A record larger than a whole segment goes alone into a fresh one, which
        // grows past its preallocated size for it.
        let empty = self.fresh || self.at.offset <= HEADER;
        if !self.fits(bytes.len() as u64) && !empty {
            self.rotate(next_segment)?;
        }
        let mut out = Vec::new();
        let start = if self.fresh {
            out.extend_from_slice(&header(self.at.seq, self.at.lsn));
            0
        } else {
            self.at.offset
        };
        out.extend_from_slice(&bytes);
        let what = || format!("write {}", segment_path(&self.dir, self.at.seq).display());
        self.file
            .write_all_at(&out, start)
            .map_err(|e| LmdbError::io(what(), e))?;
        if sync {
            self.file
                .sync_data()
                .map_err(|e| LmdbError::io(what(), e))?;
        }
        self.fresh = false;
        self.at.offset = start + out.len() as u64;
        self.at.lsn += 1;
        Ok(self.at)
    }

    /// Makes earlier unsynced appends durable.
    pub(crate) fn sync(&self) -> Result<(), LmdbError> {
        self.file.sync_data().map_err(|e| {
            LmdbError::io(
                format!("sync {}", segment_path(&self.dir, self.at.seq).display()),
                e,
            )
        })
    }

    fn rotate(
        &mut self,
        next_segment: &mut dyn FnMut(u64) -> Result<(), LmdbError>,
    ) -> Result<(), LmdbError> {
        // Earlier unsynced appends (purges) stay ordered before the new segment's.
        self.sync()?;
        let seq = self.at.seq + 1;
        next_segment(seq)?;
        let path = segment_path(&self.dir, seq);
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LmdbError::io(format!("open {}", path.display()), e))?;
        self.at = Position {
            seq,
            offset: 0,
            lsn: self.at.lsn,
        };
        self.fresh = true;
        Ok(())
    }
}

/// Segments strictly before `seq` (all their records are checkpointed).
pub(crate) fn segments_before(dir: &Path, seq: u64) -> Result<Vec<u64>, LmdbError> {
    Ok(segments(dir)?.into_iter().filter(|&s| s < seq).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_proto::{Bytes, EntryPayload, LogId, Term};

    fn write(index: u64, size: usize) -> Record {
        Record::Write {
            truncate_from: None,
            entries: vec![Entry {
                log_id: LogId::new(Term(1), LogIndex(index)),
                payload: EntryPayload::Command(Bytes::from(vec![b'x'; size])),
            }],
            hard_state: None,
        }
    }

    fn fresh(dir: &Path, segment_bytes: u64) -> Writer {
        let config = WalConfig { segment_bytes };
        prepare_segment(dir, 0, config, None).unwrap_or_else(|e| panic!("{e}"));
        Writer::open(dir, config, Position::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn next(dir: &Path, segment_bytes: u64) -> impl FnMut(u64) -> Result<(), LmdbError> {
        let dir = dir.to_path_buf();
        move |seq| prepare_segment(&dir, seq, WalConfig { segment_bytes }, None)
    }

    #[test]
    fn records_replay_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut w = fresh(dir.path(), 4096);
        let mut prep = next(dir.path(), 4096);
        let written: Vec<Record> = (1..=40).map(|i| write(i, 300)).collect();
        for r in &written {
            w.append(r, true, &mut prep)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(w.position().seq >= 2, "rotated");
        let (read, end) =
            replay(dir.path(), Position::default(), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read, written);
        assert_eq!(end, w.position());
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_good_record() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut w = fresh(dir.path(), 1 << 20);
        let mut prep = next(dir.path(), 1 << 20);
        let mut ends = Vec::new();
        for i in 1..=5 {
            ends.push(
                w.append(&write(i, 100), true, &mut prep)
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        // Cut the last record short at every length: replay keeps the first four.
        let path = segment_path(dir.path(), 0);
        let good = fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let (start, end) = (ends[3].offset as usize, ends[4].offset as usize);
        for cut in start..end {
            if good[cut..end].iter().all(|&b| b == 0) {
                continue; // nothing lost: the record is whole
            }
            let mut torn = good.clone();
            torn[cut..end].fill(0);
            fs::write(&path, &torn).unwrap_or_else(|e| panic!("{e}"));
            let (read, at) = replay(dir.path(), Position::default(), None)
                .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!(read.len(), 4, "cut at {cut}");
            assert_eq!(at, ends[3]);
        }
    }

    #[test]
    fn a_damaged_record_followed_by_a_good_one_is_corruption_not_a_tail() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut w = fresh(dir.path(), 1 << 20);
        let mut prep = next(dir.path(), 1 << 20);
        let mut ends = Vec::new();
        for i in 1..=5 {
            ends.push(
                w.append(&write(i, 100), true, &mut prep)
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let path = segment_path(dir.path(), 0);
        let good = fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        // A flipped bit in the body of the third record.
        let mut flipped = good.clone();
        flipped[ends[1].offset as usize + 40] ^= 0x08;
        fs::write(&path, &flipped).unwrap_or_else(|e| panic!("{e}"));
        let e = replay(dir.path(), Position::default(), None)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("damaged") && e.contains("later records are intact")),
            "{e:?}"
        );
        // A flipped bit in the last record is a torn tail.
        let mut flipped = good;
        flipped[ends[3].offset as usize + 40] ^= 0x08;
        fs::write(&path, &flipped).unwrap_or_else(|e| panic!("{e}"));
        let (read, _) =
            replay(dir.path(), Position::default(), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.len(), 4);
    }

    #[test]
    fn a_recycled_segment_hides_its_old_records() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config = WalConfig {
            segment_bytes: 4096,
        };
        let mut w = fresh(dir.path(), 4096);
        let mut prep = next(dir.path(), 4096);
        for i in 1..=20 {
            w.append(&write(i, 300), true, &mut prep)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let end = w.position();
        // Segment 0 is checkpointed and recycled as the next one.
        prepare_segment(dir.path(), end.seq + 1, config, Some(0)).unwrap_or_else(|e| panic!("{e}"));
        let from = Position {
            seq: 1,
            offset: 0,
            lsn: 0,
        };
        let first_of_1 = File::open(segment_path(dir.path(), 1))
            .ok()
            .and_then(|f| read_header(&f, 1))
            .unwrap_or_else(|| panic!("segment 1 has a header"));
        let (read, at) = replay(
            dir.path(),
            Position {
                lsn: first_of_1,
                ..from
            },
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            at, end,
            "the recycled segment is not read as a continuation"
        );
        assert_eq!(read.len() as u64, end.lsn - first_of_1);
    }
}

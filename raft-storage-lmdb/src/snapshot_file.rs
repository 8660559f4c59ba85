//! The snapshot file: the state machine's databases as a stream of records, with a
//! checksum over the whole file.
//!
//! ```text
//! "RAFTSNAP" | version u32 LE
//! record*   : kind u8 (1 data, 2 sessions) | key len u32 LE | key | value len u32 LE | value
//! end       : kind 0
//! trailer   : CRC32C of every byte before it, u32 LE
//! ```

use crate::common::LmdbError;
use std::io::{BufReader, BufWriter, Read, Write};

const MAGIC: &[u8; 8] = b"RAFTSNAP";
const VERSION: u32 = 1;

/// Which database a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// The application's data.
    Data = 1,
    /// Client sessions and the application's bookkeeping.
    Sessions = 2,
}

/// Writes a snapshot file, computing its checksum on the way. Tools use it to write a
/// snapshot outside a state machine (a restore that rewrites records); the state
/// machine installs the result like any received snapshot.
pub struct SnapshotWriter<W: Write> {
    out: BufWriter<W>,
    crc: u32,
    written: u64,
}

impl<W: Write> SnapshotWriter<W> {
    /// Starts a file on `out` (its header is written at once).
    pub fn new(out: W) -> Result<Self, LmdbError> {
        let mut w = SnapshotWriter {
            out: BufWriter::with_capacity(1 << 20, out),
            crc: 0,
            written: 0,
        };
        w.put(MAGIC)?;
        w.put(&VERSION.to_le_bytes())?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), LmdbError> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.written += bytes.len() as u64;
        self.out
            .write_all(bytes)
            .map_err(|e| LmdbError::io("write a snapshot", e))
    }

    /// Appends a record of `table`.
    pub fn record(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), LmdbError> {
        let len = |b: &[u8]| {
            u32::try_from(b.len())
                .map_err(|_| LmdbError::Invalid("a key or value over 4 GiB".into()))
        };
        self.put(&[table as u8])?;
        self.put(&len(key)?.to_le_bytes())?;
        self.put(key)?;
        self.put(&len(value)?.to_le_bytes())?;
        self.put(value)
    }

    /// Ends the file; returns the writer, the size and the checksum.
    pub fn finish(mut self) -> Result<(W, u64, u32), LmdbError> {
        self.put(&[0])?;
        let crc = self.crc;
        self.out
            .write_all(&crc.to_le_bytes())
            .map_err(|e| LmdbError::io("write a snapshot", e))?;
        let size = self.written + 4;
        let inner = self
            .out
            .into_inner()
            .map_err(|e| LmdbError::io("write a snapshot", e.into_error()))?;
        Ok((inner, size, crc))
    }
}

/// Checks a whole snapshot file in memory: the trailer's CRC32C over every byte
/// before it, then every record's framing up to the end record; returns the size.
pub(crate) fn verify_bytes(all: &[u8]) -> Result<u64, LmdbError> {
    let Some((body, trailer)) = all.split_last_chunk::<4>() else {
        return Err(LmdbError::corrupt(
            "received snapshot",
            "shorter than its trailer",
        ));
    };
    let expected = u32::from_le_bytes(*trailer);
    let actual = crc32c::crc32c(body);
    if expected != actual {
        return Err(LmdbError::corrupt(
            "received snapshot",
            format!("checksum {actual:08x} does not match the trailer's {expected:08x}"),
        ));
    }
    records(body, |_, _, _| Ok(()))?;
    Ok(all.len() as u64)
}

/// Reads a snapshot file from `input` one record at a time and calls `f` for each;
/// checks the framing on the way and the trailer's CRC32C at the end, and that nothing
/// follows it. Returns the file's size. Memory stays within one record: a length is
/// never allocated before its bytes arrive.
///
/// `f` sees records before the checksum is checked: what it does is tentative until
/// this returns `Ok`.
pub fn for_each_record<R: Read>(
    input: R,
    mut f: impl FnMut(Table, &[u8], &[u8]) -> Result<(), LmdbError>,
) -> Result<u64, LmdbError> {
    /// Counts and checksums what passes through.
    struct Summing<R> {
        inner: R,
        crc: u32,
        read: u64,
    }
    impl<R: Read> Read for Summing<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
            self.read += n as u64;
            Ok(n)
        }
    }
    let bad = |what: String| LmdbError::corrupt("snapshot", what);
    let failed = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            bad("truncated: the file ends inside a record".into())
        } else {
            LmdbError::io("read a snapshot", e)
        }
    };
    let mut r = Summing {
        inner: BufReader::with_capacity(1 << 20, input),
        crc: 0,
        read: 0,
    };
    let mut head = [0u8; 12];
    r.read_exact(&mut head).map_err(failed)?;
    if &head[..8] != MAGIC {
        return Err(bad("bad magic".into()));
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if version != VERSION {
        return Err(bad(format!("unknown snapshot version {version}")));
    }
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let field = |r: &mut Summing<BufReader<R>>, out: &mut Vec<u8>| {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).map_err(failed)?;
        let len = u64::from(u32::from_le_bytes(len));
        out.clear();
        let got = r.by_ref().take(len).read_to_end(out).map_err(failed)?;
        if got as u64 != len {
            return Err(bad("truncated: the file ends inside a record".into()));
        }
        Ok(())
    };
    loop {
        let mut kind = [0u8; 1];
        r.read_exact(&mut kind).map_err(failed)?;
        let table = match kind[0] {
            0 => break,
            1 => Table::Data,
            2 => Table::Sessions,
            other => return Err(bad(format!("unknown record kind {other}"))),
        };
        field(&mut r, &mut key)?;
        field(&mut r, &mut value)?;
        f(table, &key, &value)?;
    }
    let expected = r.crc;
    let mut trailer = [0u8; 4];
    r.inner.read_exact(&mut trailer).map_err(failed)?;
    let actual = u32::from_le_bytes(trailer);
    if expected != actual {
        return Err(bad(format!(
            "checksum {expected:08x} does not match the trailer's {actual:08x}"
        )));
    }
    let mut more = [0u8; 1];
    match r.inner.read(&mut more) {
        Ok(0) => Ok(r.read + 4),
        Ok(_) => Err(bad("bytes after the trailer".into())),
        Err(e) => Err(LmdbError::io("read a snapshot", e)),
    }
}

/// Calls `f` for every record of a verified snapshot body (without the trailer).
pub(crate) fn records(
    body: &[u8],
    mut f: impl FnMut(Table, &[u8], &[u8]) -> Result<(), LmdbError>,
) -> Result<(), LmdbError> {
    let bad = |what: &str| LmdbError::corrupt("snapshot", what.to_string());
    if body.len() < 12 || &body[..8] != MAGIC {
        return Err(bad("bad magic"));
    }
    let version = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
    if version != VERSION {
        return Err(bad(&format!("unknown snapshot version {version}")));
    }
    let mut pos = 12;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], LmdbError> {
        let end = pos
            .checked_add(n)
            .filter(|&e| e <= body.len())
            .ok_or_else(|| bad("truncated record"))?;
        let s = &body[*pos..end];
        *pos = end;
        Ok(s)
    };
    loop {
        let kind = take(&mut pos, 1)?[0];
        let table = match kind {
            0 => break,
            1 => Table::Data,
            2 => Table::Sessions,
            other => return Err(bad(&format!("unknown record kind {other}"))),
        };
        let klen =
            u32::from_le_bytes(take(&mut pos, 4)?.try_into().map_err(|_| bad("length"))?) as usize;
        let key = take(&mut pos, klen)?;
        let vlen =
            u32::from_le_bytes(take(&mut pos, 4)?.try_into().map_err(|_| bad("length"))?) as usize;
        let value = take(&mut pos, vlen)?;
        f(table, key, value)?;
    }
    if pos != body.len() {
        return Err(bad("bytes after the end record"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_round_trips_and_any_flipped_bit_is_caught() {
        let mut w = SnapshotWriter::new(Vec::new()).expect("writer");
        w.record(Table::Data, b"k1", b"v1").expect("record");
        w.record(Table::Sessions, b"c", b"").expect("record");
        let (bytes, size, _) = w.finish().expect("finish");
        assert_eq!(size as usize, bytes.len());
        assert_eq!(verify_bytes(&bytes[..]).expect("valid"), size);
        let mut seen = Vec::new();
        records(&bytes[..bytes.len() - 4], |t, k, v| {
            seen.push((t, k.to_vec(), v.to_vec()));
            Ok(())
        })
        .expect("records");
        assert_eq!(
            seen,
            vec![
                (Table::Data, b"k1".to_vec(), b"v1".to_vec()),
                (Table::Sessions, b"c".to_vec(), vec![])
            ]
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                verify_bytes(&bad[..]).is_err(),
                "a flipped bit at {i} went unnoticed"
            );
        }
        assert!(
            verify_bytes(&bytes[..bytes.len() - 1]).is_err(),
            "a truncated file went unnoticed"
        );
    }

    #[test]
    fn the_streaming_reader_sees_every_record_and_refuses_any_damage() {
        let mut w = SnapshotWriter::new(Vec::new()).expect("writer");
        w.record(Table::Data, b"k1", b"v1").expect("record");
        w.record(Table::Sessions, b"m\0", &[9; 300])
            .expect("record");
        w.record(Table::Data, b"", b"").expect("record");
        let (bytes, size, _) = w.finish().expect("finish");
        let mut seen = Vec::new();
        let read = for_each_record(&bytes[..], |t, k, v| {
            seen.push((t, k.to_vec(), v.to_vec()));
            Ok(())
        })
        .expect("valid");
        assert_eq!(read, size);
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[1], (Table::Sessions, b"m\0".to_vec(), vec![9; 300]));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                for_each_record(&bad[..], |_, _, _| Ok(())).is_err(),
                "a flipped bit at {i} went unnoticed"
            );
        }
        for len in 0..bytes.len() {
            assert!(
                for_each_record(&bytes[..len], |_, _, _| Ok(())).is_err(),
                "a file cut to {len} bytes was accepted"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(for_each_record(&longer[..], |_, _, _| Ok(())).is_err());
    }

    /// `bytes` with its trailer replaced by the right checksum of the rest.
    fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
        let n = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn check_snapshot_bytes_accepts_a_whole_file_and_refuses_any_truncation() {
        let mut w = SnapshotWriter::new(Vec::new()).expect("writer");
        w.record(Table::Data, b"key", b"value").expect("record");
        w.record(Table::Sessions, b"s", &[7; 40]).expect("record");
        let (bytes, size, _) = w.finish().expect("finish");
        assert_eq!(crate::check_snapshot_bytes(&bytes).expect("valid"), size);
        let (empty, empty_size, _) = SnapshotWriter::new(Vec::new())
            .expect("writer")
            .finish()
            .expect("finish");
        assert_eq!(
            crate::check_snapshot_bytes(&empty).expect("valid"),
            empty_size
        );
        for len in 0..bytes.len() {
            assert!(
                crate::check_snapshot_bytes(&bytes[..len]).is_err(),
                "a file cut to {len} of {size} bytes was accepted"
            );
        }
        // Cut inside a record (or without its end record) but with a checksum that
        // matches: the record walk, not the checksum, refuses it.
        for cut in 12..bytes.len() - 4 {
            let mut short = bytes[..cut].to_vec();
            short.extend_from_slice(&[0; 4]);
            let err = crate::check_snapshot_bytes(&resealed(short)).expect_err("cut record");
            assert!(
                matches!(err, LmdbError::Corruption { .. }),
                "cut at {cut}: {err}"
            );
        }
        let mut extra = bytes[..bytes.len() - 4].to_vec();
        extra.extend_from_slice(&[0, 0, 0, 0, 0]);
        assert!(crate::check_snapshot_bytes(&resealed(extra)).is_err());
    }
}

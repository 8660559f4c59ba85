//! Paced write-back: snapshot bytes and environment pages reach the disk in slices,
//! so one final flush does not stall the log's commits.

use super::*;

/// A file writer that syncs every `snapshot_sync_bytes` and keeps under
/// `snapshot_write_rate`, so that a snapshot's bytes reach the disk as they are written
/// instead of in one burst at the end. (One final flush of a few hundred MiB stalled
/// concurrent log commits for ~70 ms here.)
pub(super) struct SyncEvery {
    pub(super) file: File,
    unsynced: u64,
    written: u64,
    started: Instant,
    sync_bytes: u64,
    rate: Option<u64>,
}

impl SyncEvery {
    pub(super) fn new(file: File, config: &SmConfig) -> SyncEvery {
        SyncEvery {
            file,
            unsynced: 0,
            written: 0,
            started: Instant::now(),
            sync_bytes: config.snapshot_sync_bytes.max(64 << 10),
            rate: config.snapshot_write_rate.filter(|&r| r > 0),
        }
    }
}

impl SyncEvery {
    /// Starts writing `len` bytes at `offset` back to the disk, and waits out the
    /// configured rate.
    fn write_back(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        start_writeback(&self.file, offset, len)?;
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.written as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        Ok(())
    }
}

impl Write for SyncEvery {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Never past the next writeback boundary, so each writeback is one slice.
        let room = usize::try_from(self.sync_bytes - self.unsynced).unwrap_or(usize::MAX);
        let n = self.file.write(&buf[..buf.len().min(room.max(1))])?;
        self.unsynced += n as u64;
        self.written += n as u64;
        if self.unsynced >= self.sync_bytes {
            let (offset, len) = (self.written - self.unsynced, self.unsynced);
            self.unsynced = 0;
            self.write_back(offset, len)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Starts the writeback of a file range without waiting for it and without a device
/// cache flush (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`): the bytes go to the
/// disk in steps, and the final `fsync` has little left to do. Elsewhere, `fdatasync`.
#[cfg(target_os = "linux")]
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    write_back_range(file, offset, len, false)
}

/// Linux `sync_file_range` on a range: starts its writeback (no device cache flush)
/// and, with `wait`, waits for it, before and after. A range beyond `i64` falls back
/// to `fdatasync`.
#[cfg(target_os = "linux")]
pub(super) fn write_back_range(
    file: &File,
    offset: u64,
    len: u64,
    wait: bool,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return file.sync_data();
    };
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: the descriptor is open for as long as `file` is borrowed, and
    // sync_file_range reads no memory of ours.
    #[allow(unsafe_code)]
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn start_writeback(file: &File, _offset: u64, _len: u64) -> std::io::Result<()> {
    file.sync_data()
}

/// Writes an environment's dirty pages back to the disk in 8 MiB slices, each waited
/// for, before the environment's flush. Without it, that one flush (tens of MiB of
/// pages copied while a snapshot held its read transaction) held the file system's
/// journal long enough to stall concurrent applies for 20-40 ms. Only a head start:
/// failures are left to the flush that follows, which reports them.
#[cfg(target_os = "linux")]
pub(super) fn write_back_env(dir: &Path) {
    const SLICE: u64 = 8 << 20;
    let Ok(file) = File::open(dir.join("data.mdb")) else {
        return;
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return;
    };
    let mut offset = 0;
    while offset < len && write_back_range(&file, offset, SLICE, true).is_ok() {
        offset += SLICE;
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn write_back_env(_dir: &Path) {}

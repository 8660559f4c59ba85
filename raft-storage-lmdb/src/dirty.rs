//! The `DIRTY` mark of a state machine whose applies are not synced
//! ([`ApplyDurability::Deferred`](crate::ApplyDurability::Deferred)).
//!
//! While applies may sit in the OS's page cache, the directory holds a `DIRTY` file
//! that names this boot and this directory:
//!
//! ```text
//! boot <the kernel's boot id>
//! dir <device>:<inode of the state machine's directory>
//! ```
//!
//! A process crash keeps the page cache, so after one the state is intact and may be
//! trusted: same boot, same directory. Anything else cannot be shown to be intact and
//! is rebuilt from a snapshot: another boot (an OS crash or power cut lost the cache),
//! another directory (a `cp` of a running node's directory: a torn copy of pages
//! being written), or a mark this build cannot read. A disk image rolled back while
//! the machine kept running keeps both and is not detected: take backups with the
//! node stopped, or from a snapshot file.

use crate::common::LmdbError;
use crate::durable;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The file's name.
pub(crate) const DIRTY: &str = "DIRTY";

/// The identity of `dir`: `device:inode`.
fn identity(dir: &Path) -> Result<String, LmdbError> {
    let m = fs::metadata(dir).map_err(|e| LmdbError::io(format!("stat {}", dir.display()), e))?;
    Ok(format!("{}:{}", m.dev(), m.ino()))
}

/// What the mark says for `boot` and `dir`.
fn contents(dir: &Path, boot: Option<&str>) -> Result<String, LmdbError> {
    Ok(format!(
        "boot {}\ndir {}\n",
        boot.unwrap_or("unknown"),
        identity(dir)?
    ))
}

/// Whether the state in `dir` can be trusted: no mark (a clean close), or a mark from
/// this very boot and directory (only the process died).
pub(crate) fn trusted(dir: &Path, boot: Option<&str>) -> Result<bool, LmdbError> {
    let path = dir.join(DIRTY);
    let written = match fs::read_to_string(&path) {
        Ok(written) => written,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(LmdbError::io(format!("read {}", path.display()), e)),
    };
    Ok(boot.is_some() && written == contents(dir, boot)?)
}

/// Marks `dir`: applies may be pending from now on.
pub(crate) fn mark(dir: &Path, boot: Option<&str>) -> Result<(), LmdbError> {
    durable::write_atomically(&dir.join(DIRTY), contents(dir, boot)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_boot_and_directory_is_trusted() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for d in [&a, &b] {
            fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(
            trusted(&a, Some("boot-1")).unwrap_or(false),
            "no mark: clean"
        );
        mark(&a, Some("boot-1")).unwrap_or_else(|e| panic!("{e}"));
        assert!(trusted(&a, Some("boot-1")).unwrap_or(false));
        assert!(!trusted(&a, Some("boot-2")).unwrap_or(true), "another boot");
        assert!(!trusted(&a, None).unwrap_or(true), "an unknown boot");
        fs::copy(a.join(DIRTY), b.join(DIRTY)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !trusted(&b, Some("boot-1")).unwrap_or(true),
            "a copy elsewhere"
        );
        fs::write(a.join(DIRTY), "boot-1").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !trusted(&a, Some("boot-1")).unwrap_or(true),
            "the old format"
        );
    }
}

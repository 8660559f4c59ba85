//! The three ways this crate makes a file-system change durable before anything refers
//! to it. POSIX promises nothing about a new name until its directory is synced, and
//! nothing about a file's bytes until the file is: relying on ext4's or XFS's journal
//! ordering instead is what left empty `.meta` files and 0-byte snapshots after power
//! cuts. See the crate docs for which file uses which.

use crate::common::LmdbError;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// Makes the names in `dir` (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LmdbError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| LmdbError::io(format!("sync directory {}", dir.display()), e))
}

/// Creates `dir` and any missing parents, durably: each directory this creates is
/// synced into its parent, and `dir`'s own entry is synced even when it existed (a
/// directory created by an earlier run that crashed before syncing its parent may
/// still be only in the page cache).
pub(crate) fn create_dir(dir: &Path) -> Result<(), LmdbError> {
    let mut missing = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d);
        p = d.parent();
    }
    fs::create_dir_all(dir).map_err(|e| LmdbError::io(format!("create {}", dir.display()), e))?;
    let mut parents: Vec<&Path> = missing.iter().filter_map(|d| d.parent()).collect();
    parents.extend(dir.parent());
    parents.sort();
    parents.dedup();
    for parent in parents.into_iter().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically and durably: write `<path>.tmp`, sync it,
/// rename it over `path`, sync the directory. After a crash at any point, `path` holds
/// the old bytes or the new ones, never a prefix. Files ending in `.tmp` are leftovers
/// that their owner removes at open.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), LmdbError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let what = || format!("write {}", tmp.display());
    let mut f = File::create(tmp).map_err(|e| LmdbError::io(what(), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| LmdbError::io(what(), e))?;
    fs::rename(tmp, path)
        .map_err(|e| LmdbError::io(format!("rename {} into place", tmp.display()), e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomically_replaces_the_whole_file_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("x.meta");
        write_atomically(&path, b"first").unwrap_or_else(|e| panic!("{e}"));
        write_atomically(&path, b"second").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fs::read(&path).ok().as_deref(), Some(&b"second"[..]));
        assert!(!dir.path().join("x.meta.tmp").exists());
    }

    #[test]
    fn create_dir_makes_every_missing_level() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let deep = dir.path().join("a/b/c");
        create_dir(&deep).unwrap_or_else(|e| panic!("{e}"));
        create_dir(&deep).unwrap_or_else(|e| panic!("{e}"));
        assert!(deep.is_dir());
    }
}

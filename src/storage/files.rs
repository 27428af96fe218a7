//! File helpers shared by the sled store and the engine's checkpoint files: one mapping of
//! I/O errors (a full disk is RESOURCE_EXHAUSTED), directory sizes, and the durable atomic
//! replacement of a small file (the way `CURRENT` and `MANIFEST` are switched).

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// An I/O error on `path` as the core reports it: a full disk is RESOURCE_EXHAUSTED.
pub fn io_error(what: &str, path: &Path, err: std::io::Error) -> Error {
    if err.kind() == std::io::ErrorKind::StorageFull {
        return Error::exhausted("storage", format!("the disk is full: {what} {}: {err}", path.display()));
    }
    Error::Storage(format!("{what} {}: {err}", path.display()))
}

/// Syncs a directory's entries, its error as the core reports it (`sync_dir_entries`).
pub fn sync_dir(dir: &Path) -> Result<()> {
    sync_dir_entries(dir).map_err(|e| io_error("cannot sync", dir, e))
}

/// Syncs a directory's entries. A file system that cannot sync a directory (EINVAL, as some
/// network and FUSE ones answer) is taken as one with nothing to sync, as PostgreSQL does.
pub fn sync_dir_entries(dir: &Path) -> std::io::Result<()> {
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        synced => synced,
    }
}

/// Bytes of every file under `path` (none when it does not exist).
pub fn dir_bytes(path: &Path) -> Result<u64> {
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(io_error("cannot list", path, err)),
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry.map_err(|e| io_error("cannot list", path, e))?;
        let meta = entry.metadata().map_err(|e| io_error("cannot stat", &entry.path(), e))?;
        total += if meta.is_dir() { dir_bytes(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

/// Writes `bytes` to `path` and syncs them.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::File::create(path).map_err(|e| io_error("cannot create", path, e))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| io_error("cannot write", path, e))
}

/// Replaces `dir/name` with `bytes` atomically and durably (a temporary file, fsync, rename,
/// fsync of the directory): after a crash the file holds the old bytes or the new ones.
pub fn replace_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let temporary = dir.join(format!("{name}.tmp"));
    write_durably(&temporary, bytes)?;
    std::fs::rename(&temporary, dir.join(name)).map_err(|e| io_error("cannot rename", &temporary, e))?;
    sync_dir(dir)
}

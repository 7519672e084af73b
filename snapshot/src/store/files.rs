//! File plumbing for the store: directories 0700, files 0600, durable atomic replacement
//! (write to a temp file, fsync, rename, fsync the directory), and `flock`.
//! Everything that touches the kernel directly lives here.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Creates `dir` and its missing parents with mode 0700.
pub fn mkdir_all(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, "create directory", e))
}

/// Opens a new file for writing with mode 0600; fails if it exists.
pub fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, "create", e))
}

/// A name for a temp file unique within this process and across processes.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}{}-{n}-{t:x}", std::process::id())
}

/// fsyncs a directory so that renames into it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "fsync directory", e))
}

/// Atomically replaces `dest` with `bytes`, durably: temp file in `tmp_dir` (same filesystem),
/// fsync, rename, fsync of `dest`'s directory.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_dir.join(unique_name(".atomic-"));
    let r = (|| {
        let mut f = create_new(&tmp)?;
        f.write_all(bytes)
            .map_err(|e| Error::io(&tmp, "write", e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, "fsync", e))?;
        fs::rename(&tmp, dest).map_err(|e| Error::io(dest, "rename into place", e))?;
        if let Some(dir) = dest.parent() {
            fsync_dir(dir)?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// Lock modes for [`flock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders.
    Shared,
    /// One holder.
    Exclusive,
}

/// Takes a `flock` on `file`. With `wait` false, returns Ok(false) when it is held elsewhere.
/// The lock belongs to the open file description and goes away when the process dies, which is
/// what makes a killed writer's or reader's claims expire by themselves.
pub fn flock(file: &File, path: &Path, mode: LockMode, wait: bool) -> Result<bool> {
    let mut op = match mode {
        LockMode::Shared => libc::LOCK_SH,
        LockMode::Exclusive => libc::LOCK_EX,
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !wait => return Ok(false),
            _ => return Err(Error::io(path, "flock", e)),
        }
    }
}

/// Opens (creating, 0600) a lock file and locks it.
pub fn lock_file(path: &Path, mode: LockMode) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, "open lock", e))?;
    flock(&f, path, mode, true)?;
    Ok(f)
}

/// Reads a whole file of untrusted bytes, refusing it before reading if it exceeds `limit`.
pub fn read_limited(path: &Path, what: &str, limit: u64) -> Result<Vec<u8>> {
    let mut f = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let len = f.metadata().map_err(|e| Error::io(path, "stat", e))?.len();
    if len > limit {
        return Err(Error::TooLarge {
            what: what.to_string(),
            size: len,
            limit,
        });
    }
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    (&mut f)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, "read", e))?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > limit {
        return Err(Error::TooLarge {
            what: what.to_string(),
            size: u64::try_from(buf.len()).unwrap_or(u64::MAX),
            limit,
        });
    }
    Ok(buf)
}

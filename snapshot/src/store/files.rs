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

/// Writes `parts`, one after the other, at `offset` of `file` with `pwritev`: as many parts per
/// call as the kernel takes (`UIO_MAXIOV`), short writes and EINTR resumed.
pub fn write_all_vectored_at(file: &File, parts: &[&[u8]], mut offset: u64) -> std::io::Result<()> {
    let max_iov = usize::try_from(libc::UIO_MAXIOV).unwrap_or(1024);
    let mut parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut first = 0;
    while first < parts.len() {
        let iov: Vec<std::io::IoSlice<'_>> = parts[first..parts.len().min(first + max_iov)]
            .iter()
            .map(|p| std::io::IoSlice::new(p))
            .collect();
        let off = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::other("offset beyond off_t"))?;
        let mut n = match nix::sys::uio::pwritev(file, &iov, off) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        offset += n as u64;
        // Skip what was written: whole parts, then the front of a part written in part.
        while n > 0 && first < parts.len() {
            let p = parts[first];
            if n >= p.len() {
                n -= p.len();
                first += 1;
            } else {
                parts[first] = &p[n..];
                n = 0;
            }
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_write_puts_every_part_in_order_past_iov_max() {
        let dir = tempfile::tempdir().unwrap();
        let f = create_new(&dir.path().join("v")).unwrap();
        // 3000 parts (over IOV_MAX), some empty, of varying lengths.
        let owned: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| vec![u8::try_from(i % 251).unwrap(); usize::try_from(i % 7).unwrap()])
            .collect();
        let parts: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        write_all_vectored_at(&f, &parts, 100).unwrap();
        let want: Vec<u8> = owned.concat();
        let back = fs::read(dir.path().join("v")).unwrap();
        assert_eq!(back.len(), 100 + want.len());
        assert!(back[..100].iter().all(|&b| b == 0) && back[100..] == want[..]);
    }
}

//! cgroupfs file I/O: every read, write, mkdir and rmdir of the cgroups module goes through
//! here, so that errors carry the path and value, and tests can see every write in order.
//!
//! cgroupfs files report size 0: contents are always read, never judged by metadata. Writes
//! never create files (a missing file means the kernel lacks the feature) and are one
//! `write(2)` each, as the kernel parses one value per call.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{Error, Result};

/// Writes `value` to `dir/file`.
pub fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    tracing::trace!(path = %path.display(), value, "cgroup write");
    #[cfg(test)]
    journal::record(&path, value);
    let res = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| retry_eintr(|| f.write(value.as_bytes())))
        .and_then(|n| {
            if n == value.len() {
                Ok(())
            } else {
                Err(io::Error::from(io::ErrorKind::WriteZero))
            }
        });
    res.map_err(|source| Error::Write {
        field: None,
        path,
        value: value.to_string(),
        source,
        hint: None,
    })
}

/// Reads `dir/file` whole.
pub fn read(dir: &Path, file: &str) -> Result<String> {
    let path = dir.join(file);
    fs::read_to_string(&path).map_err(|source| Error::Read { path, source })
}

/// Reads `dir/file`, `None` when it does not exist.
pub fn read_opt(dir: &Path, file: &str) -> Result<Option<String>> {
    match read(dir, file) {
        Ok(s) => Ok(Some(s)),
        Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `dir/file` exists.
pub fn exists(dir: &Path, file: &str) -> bool {
    dir.join(file).exists()
}

/// Reads a single number; `max` (no limit) reads as `u64::MAX`.
pub fn read_u64(dir: &Path, file: &str) -> Result<u64> {
    let s = read(dir, file)?;
    parse_u64(&dir.join(file), &s)
}

/// [`read_u64`], `None` when the file does not exist.
pub fn read_u64_opt(dir: &Path, file: &str) -> Result<Option<u64>> {
    match read_opt(dir, file)? {
        Some(s) => parse_u64(&dir.join(file), &s).map(Some),
        None => Ok(None),
    }
}

fn parse_u64(path: &Path, s: &str) -> Result<u64> {
    let t = s.trim();
    if t == "max" {
        return Ok(u64::MAX);
    }
    t.parse().map_err(|_| Error::Parse {
        path: path.to_path_buf(),
        content: s.to_string(),
        expected: "an unsigned integer or \"max\"",
    })
}

/// Parses a flat-keyed file (`key value` per line: memory.stat, cpu.stat, cgroup.events…),
/// skipping lines whose value is not a number.
pub fn flat_keyed(content: &str) -> BTreeMap<String, u64> {
    content
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// Reads a flat-keyed file; an absent file reads as empty.
pub fn read_flat_keyed(dir: &Path, file: &str) -> Result<BTreeMap<String, u64>> {
    Ok(read_opt(dir, file)?
        .map(|s| flat_keyed(&s))
        .unwrap_or_default())
}

/// Creates `path` and any missing parents.
pub fn mkdir_all(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|source| Error::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates `path` (its parent must exist); an existing directory is fine.
pub fn mkdir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(Error::CreateDir {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Moves `pid` into the cgroup `dir`.
pub fn add_pid(dir: &Path, pid: i32) -> Result<()> {
    if pid <= 0 {
        return Err(Error::Invalid {
            field: "pid".into(),
            value: pid.to_string(),
            reason: "a process id must be positive".into(),
        });
    }
    write(dir, "cgroup.procs", &pid.to_string()).map_err(|e| match e {
        Error::Write { path, source, .. } => Error::AddPid { pid, path, source },
        other => other,
    })
}

/// The pids in `dir/cgroup.procs` and in every descendant cgroup's (a missing `dir` has none).
pub fn pids_recursive(dir: &Path) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    collect_pids(dir, &mut out)?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<()> {
    let Some(procs) = read_opt(dir, "cgroup.procs")? else {
        return Ok(());
    };
    for line in procs.lines() {
        let pid = line.trim().parse().map_err(|_| Error::Parse {
            path: dir.join("cgroup.procs"),
            content: line.to_string(),
            expected: "one pid per line",
        })?;
        out.push(pid);
    }
    for sub in subdirs(dir)? {
        collect_pids(&sub, out)?;
    }
    Ok(())
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Removes the cgroup `dir` and its descendants, deepest first. A missing directory is fine;
/// EBUSY (a process still leaving, or the kernel still tearing down) is retried for ~0.6 s.
///
/// On cgroupfs, `rmdir` removes a cgroup with its control files. A directory on another
/// filesystem (a fake tree in tests) gets the same treatment: its plain files are removed
/// first, which is what the kernel does implicitly.
pub fn remove_cgroup(dir: &Path) -> Result<()> {
    for sub in subdirs(dir)? {
        remove_cgroup(&sub)?;
    }
    let mut delay = Duration::from_millis(10);
    let mut tries = 0;
    loop {
        let err = match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => e,
        };
        match err.raw_os_error() {
            Some(libc::ENOTEMPTY) if !is_cgroupfs(dir) && tries == 0 => {
                remove_plain_files(dir)?;
            }
            Some(libc::EBUSY) if tries < 6 => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            _ => {
                return Err(Error::RemoveDir {
                    path: dir.to_path_buf(),
                    source: err,
                })
            }
        }
        tries += 1;
    }
}

fn remove_plain_files(dir: &Path) -> Result<()> {
    let rd = fs::read_dir(dir).map_err(|source| Error::RemoveDir {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in rd.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            fs::remove_file(entry.path()).map_err(|source| Error::RemoveDir {
                path: entry.path(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Whether `path` lies on a cgroup (v1) or cgroup2 filesystem.
pub fn is_cgroupfs(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
    statfs(path).is_ok_and(|s| {
        s.filesystem_type() == CGROUP_SUPER_MAGIC || s.filesystem_type() == CGROUP2_SUPER_MAGIC
    })
}

/// Whether `path` lies on a cgroup2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
    statfs(path).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// A per-thread log of every write, for unit tests against a fake tree.
#[cfg(test)]
pub(crate) mod journal {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    thread_local! {
        static LOG: RefCell<Vec<(PathBuf, String)>> = const { RefCell::new(Vec::new()) };
    }

    pub(crate) fn record(path: &Path, value: &str) {
        LOG.with(|l| l.borrow_mut().push((path.to_path_buf(), value.to_string())));
    }

    /// Takes the writes made by this thread since the last call.
    pub(crate) fn take() -> Vec<(PathBuf, String)> {
        LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }
}

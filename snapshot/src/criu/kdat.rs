//! CRIU's kernel-feature cache where CRIU cannot keep it itself.
//!
//! Every CRIU run starts by probing the kernel (`kerndat`: iptables and ip runs, test
//! namespaces, ptrace probes; 30–70 ms here, most of a small restore). CRIU keeps the result
//! in `/run/criu.kdat` and reuses it, but only when /run is a tmpfs (criu/kerndat.c): the
//! cache must not outlive the kernel it describes, and a tmpfs is gone after a reboot. On a
//! host whose /run is on disk CRIU probes on every run, and cannot even be pointed elsewhere
//! (the path is compiled in; only unprivileged CRIU reads `$XDG_RUNTIME_DIR`).
//!
//! On such a host cryo keeps the file for CRIU, with CRIU's own rules:
//! - CRIU writes it: one `criu check` runs with cryo's cache directory bound over /run in a
//!   private mount namespace, probes and saves `criu.kdat` there. CRIU's own checks apply when
//!   it is read (size, a magic and a second magic that is the binary's build time: a cache of
//!   another CRIU build is refused and probed anew).
//! - It lives on a tmpfs (`/dev/shm/cryo-kdat`, root's, 0700), one directory per CRIU binary,
//!   so a reboot drops it as it drops a tmpfs /run.
//! - Each `criu swrk` sees it at `/run/criu.kdat` through a read-only bind in a private mount
//!   namespace, and sees everything else as before: the namespace is a copy of the caller's,
//!   and is used only where the bind propagates nowhere (the mount that holds /run is not
//!   shared) and the caller says the process tree has a mount namespace of its own (CRIU
//!   compares the tree's namespace with its own; see [`super::SpawnOptions::kdat_cache`]).
//!   The bind needs a mount point: an empty `/run/criu.kdat`, which any CRIU outside cryo takes
//!   for a stale cache and removes (then cryo's next run makes it again).
//!
//! Anything unexpected (a /run that is a tmpfs, a shared mount, a foreign directory, a failed
//! probe) leaves CRIU as it was: probing on every run.

use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::statfs::{statfs, TMPFS_MAGIC};

/// Where CRIU looks for its cache (`KDAT_RUNDIR "/criu.kdat"`, RUNDIR being /run).
const TARGET: &std::ffi::CStr = c"/run/criu.kdat";
/// The directory that holds the caches cryo keeps, one subdirectory per CRIU binary.
const HOME: &str = "/dev/shm/cryo-kdat";

/// A cache file CRIU wrote, ready to be shown to a `criu swrk` child at /run/criu.kdat.
#[derive(Debug)]
pub(crate) struct KdatCache {
    source: CString,
    /// The caller's mount namespace, to go back to when the bind fails.
    home_ns: OwnedFd,
}

impl KdatCache {
    /// The cache for the CRIU binary at `criu`, written by a probe run first if there is none
    /// yet; `None` where CRIU keeps its own or this host does not allow it (module doc).
    pub(crate) fn prepare(criu: &Path) -> Option<KdatCache> {
        let run = statfs("/run").ok()?;
        if run.filesystem_type() == TMPFS_MAGIC {
            return None; // CRIU caches by itself
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        if holder_is_shared(&mountinfo, Path::new("/run/criu.kdat")) {
            tracing::debug!("the mount that holds /run is shared: no CRIU kdat cache");
            return None;
        }
        let dir = binary_dir(criu)?;
        let file = dir.join("criu.kdat");
        if !file.exists() {
            let t0 = std::time::Instant::now();
            probe(criu, &dir);
            tracing::debug!(
                ms = t0.elapsed().as_secs_f64() * 1e3,
                written = file.exists(),
                "CRIU probed the kernel into cryo's kdat cache"
            );
        }
        let md = fs::symlink_metadata(&file).ok()?;
        if !md.is_file() || md.len() == 0 || md.uid() != 0 {
            return None;
        }
        mount_point()?;
        let home_ns = File::open("/proc/self/ns/mnt").ok()?.into();
        Some(KdatCache {
            source: CString::new(file.into_os_string().into_encoded_bytes()).ok()?,
            home_ns,
        })
    }

    /// In a child between fork and exec: moves into a private mount namespace where the cache
    /// is bound read-only at /run/criu.kdat, or stays where it is when that fails.
    ///
    /// Async-signal-safe: system calls only, on memory prepared before the fork.
    pub(crate) fn enter(&self) {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        // SAFETY: unshare, mount and setns with NUL-terminated strings and an fd that live in
        // `self`, prepared before the fork; no memory is allocated or freed.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return;
            }
            let (null, no_data) = (std::ptr::null(), std::ptr::null());
            let bound = libc::mount(
                self.source.as_ptr(),
                TARGET.as_ptr(),
                null,
                libc::MS_BIND,
                no_data,
            ) == 0;
            if !bound || libc::mount(null, TARGET.as_ptr(), null, flags, no_data) != 0 {
                libc::setns(self.home_ns.as_raw_fd(), libc::CLONE_NEWNS);
            }
        }
    }
}

/// Whether the mount under which `path` lies is in a peer group: a bind onto `path` would
/// then propagate out of a private namespace copy.
fn holder_is_shared(mountinfo: &str, path: &Path) -> bool {
    let mut best: Option<(usize, bool)> = None;
    for l in mountinfo.lines() {
        let Some((left, _)) = l.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = left.split(' ').collect();
        let Some(mp) = f.get(4) else { continue };
        if !path.starts_with(mp) {
            continue;
        }
        let shared = f.iter().skip(6).any(|o| o.starts_with("shared:"));
        // Later lines are mounted on top of earlier ones at the same point.
        if best.is_none_or(|(len, _)| mp.len() >= len) {
            best = Some((mp.len(), shared));
        }
    }
    best.is_none_or(|(_, shared)| shared)
}

/// `path` as a directory of root's that no one else can write, on a tmpfs; created if missing.
/// cryo's directory for the CRIU binary at `criu` (created): named by the binary's device,
/// inode, size and change time (to the nanosecond), so a replaced or rewritten binary gets a
/// new one.
fn binary_dir(criu: &Path) -> Option<PathBuf> {
    let dir = own_dir(Path::new(HOME))?;
    let bin = fs::metadata(criu).ok()?;
    own_dir(&dir.join(format!(
        "{:x}-{:x}-{:x}-{:x}.{:x}",
        bin.dev(),
        bin.ino(),
        bin.size(),
        bin.ctime(),
        bin.ctime_nsec()
    )))
}

/// What `criu --version` printed for the binary at `criu`, kept from an earlier run (running
/// it costs a fork and exec on every checkpoint and restore).
pub(crate) fn cached_version(criu: &Path) -> Option<String> {
    let file = binary_dir(criu)?.join("version");
    let md = fs::symlink_metadata(&file).ok()?;
    if !md.is_file() || md.uid() != 0 || md.len() > 4096 {
        return None;
    }
    fs::read_to_string(file).ok()
}

/// Keeps what `criu --version` printed for [`cached_version`] (best effort: temp file, rename).
pub(crate) fn keep_version(criu: &Path, text: &str) {
    let Some(dir) = binary_dir(criu) else { return };
    let tmp = dir.join(format!("version.{}", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    if written.is_ok() {
        let _ = fs::rename(&tmp, dir.join("version"));
    } else {
        let _ = fs::remove_file(&tmp);
    }
}

fn own_dir(path: &Path) -> Option<PathBuf> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    let md = fs::symlink_metadata(path).ok()?;
    let on_tmpfs = statfs(path).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC);
    (md.is_dir() && md.uid() == 0 && md.mode() & 0o022 == 0 && on_tmpfs).then(|| path.to_path_buf())
}

/// The empty regular file at /run/criu.kdat that the bind needs as its mount point.
fn mount_point() -> Option<()> {
    let path = Path::new("/run/criu.kdat");
    match fs::symlink_metadata(path) {
        Ok(md) => md.is_file().then_some(()),
        Err(_) => OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .ok()
            .map(drop),
    }
}

/// Runs `criu check` with `dir` bound over /run in a private mount namespace: CRIU probes the
/// kernel and, /run being a tmpfs there, saves `criu.kdat` into `dir`.
fn probe(criu: &Path, dir: &Path) {
    let Ok(dir_c) = CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return;
    };
    let mut cmd = Command::new(criu);
    cmd.args(["check", "--feature", "mnt_id"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: unshare and mount with NUL-terminated strings prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let (null, no_data) = (std::ptr::null(), std::ptr::null());
            let slave = libc::MS_REC | libc::MS_SLAVE;
            // Nothing of this namespace may reach the caller's: every mount a slave first.
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(null, c"/".as_ptr(), null, slave, no_data) != 0
                || libc::mount(
                    dir_c.as_ptr(),
                    c"/run".as_ptr(),
                    null,
                    libc::MS_BIND,
                    no_data,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _ = cmd.status();
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 27 0:5 / /dev rw,nosuid master:2 - devtmpfs devtmpfs rw
40 27 0:40 / /run/netns rw shared:7 - tmpfs tmpfs rw
";

    #[test]
    fn the_holder_of_a_path_is_its_longest_mount_prefix() {
        assert!(!holder_is_shared(MOUNTINFO, Path::new("/run/criu.kdat")));
        assert!(holder_is_shared(MOUNTINFO, Path::new("/run/netns/x")));
        let shared_root = MOUNTINFO.replace("rw,relatime - ext4", "rw,relatime shared:1 - ext4");
        assert!(holder_is_shared(&shared_root, Path::new("/run/criu.kdat")));
        // A mount stacked at the same point decides.
        let stacked = format!("{MOUNTINFO}50 27 0:50 / / rw shared:9 - tmpfs t rw\n");
        assert!(holder_is_shared(&stacked, Path::new("/run/criu.kdat")));
        assert!(holder_is_shared("", Path::new("/run/criu.kdat")));
    }
}

//! Container state on disk: `<root>/<id>/state.json`, the status derived from the live system,
//! and the per-container lock that serializes concurrent commands.
//!
//! The status is never stored: it is derived each time from the init process (alive? same
//! start time, so a recycled pid is not mistaken for it?), the exec fifo (present until
//! `start`) and the freezer. This module owns the file layout of the state dir; it does not
//! start or signal processes.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cgroups::CgroupState;
use crate::error::{Error, IoContext, Result, SysContext};

/// Default state root, like runc's /run/runc.
pub const DEFAULT_ROOT: &str = "/run/cryo";
/// Name of the fifo the container init blocks on until `start`.
pub const EXEC_FIFO: &str = "exec.fifo";
const STATE_FILE: &str = "state.json";
/// The cgroup a create or restore made, recorded as soon as it is (see `save_cgroup`).
const CGROUP_FILE: &str = "cgroup.json";

/// The OCI version cryo reports in `state`.
pub const OCI_VERSION: &str = "1.2.0";

/// A container's status, as the OCI runtime spec and runc name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created (state dir exists, init not ready).
    Creating,
    /// Created: init waits for `start`.
    Created,
    /// The user's process runs.
    Running,
    /// Frozen by `pause`.
    Paused,
    /// The init process has exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What cryo keeps about a container between commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    /// Container id.
    pub id: String,
    /// Host pid of the container's init (the user's process after start).
    pub pid: i32,
    /// Start time of `pid` (field 22 of /proc/PID/stat), to detect pid reuse.
    pub pid_start: u64,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Absolute rootfs path.
    pub rootfs: PathBuf,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Owner (empty for root, as runc prints it).
    #[serde(default)]
    pub owner: String,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// How to find the container's cgroup again.
    pub cgroup: Option<CgroupState>,
    /// The config the container was created from (hooks, exec defaults, namespaces).
    pub config: oci_spec::runtime::Spec,
}

/// The JSON `cryo state` prints: runc's layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OciState {
    /// OCI version.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Init pid (0 once stopped, as runc prints it).
    pub pid: i32,
    /// Status.
    pub status: Status,
    /// Bundle path.
    pub bundle: PathBuf,
    /// Rootfs path.
    pub rootfs: PathBuf,
    /// RFC 3339 creation time with nanoseconds.
    pub created: String,
    /// Owner.
    pub owner: String,
    /// Annotations, omitted when empty.
    #[serde(skip_serializing_if = "HashMap::is_empty", default)]
    pub annotations: HashMap<String, String>,
}

impl ContainerState {
    /// The runc-layout view of this state with the given live status.
    pub fn oci(&self, status: Status) -> OciState {
        OciState {
            oci_version: OCI_VERSION.to_string(),
            id: self.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            status,
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self
                .created
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            owner: self.owner.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

/// Checks a container id against runc's grammar (`^[\w+-\.]+$`), which also keeps it a
/// single path component.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

/// A container's directory under the state root, locked for the lifetime of this value
/// (except one opened only to read the state, without the lock).
#[derive(Debug)]
pub struct StateDir {
    id: String,
    path: PathBuf,
    /// `None` for a directory only looked at ([`StateDir::unlocked`]).
    _lock: Option<OwnedFd>,
}

fn lock_dir(path: &Path) -> Result<OwnedFd> {
    let f = fs::File::open(path).io_ctx(path)?;
    let fd: OwnedFd = f.into();
    // SAFETY: flock on an fd we own.
    let r = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) };
    nix::Error::result(r).sys_ctx(|| format!("locking {}", path.display()))?;
    Ok(fd)
}

impl StateDir {
    /// Creates the state dir of a new container; fails with `Exists` if the id is taken.
    ///
    /// The directory is born locked: made under a private name, locked, then renamed to the
    /// id (`RENAME_NOREPLACE`). No other command ever finds the id's directory unlocked
    /// without state.json unless its creator is gone, which is what `delete` relies on to
    /// remove what a killed create or restore left.
    pub fn create(root: &Path, id: &str) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        validate_id(id)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .io_ctx(root)?;
        let path = root.join(id);
        if path.exists() {
            return Err(Error::Exists(id.to_string()));
        }
        let tmp = loop {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = root.join(format!(".new-{}-{n}", std::process::id()));
            match fs::DirBuilder::new().mode(0o711).create(&tmp) {
                Ok(()) => break tmp,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&tmp, e)),
            }
        };
        let placed = lock_dir(&tmp).and_then(|lock| {
            nix::fcntl::renameat2(
                None,
                &tmp,
                None,
                &path,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
            .map(|()| lock)
            .map_err(|e| match e {
                nix::errno::Errno::EEXIST => Error::Exists(id.to_string()),
                e => Error::io(&path, e.into()),
            })
        });
        match placed {
            Ok(lock) => Ok(StateDir {
                id: id.to_string(),
                path,
                _lock: Some(lock),
            }),
            Err(e) => {
                let _ = fs::remove_dir(&tmp);
                Err(e)
            }
        }
    }

    /// [`StateDir::create`], then `f` in it (a create or restore); the directory is removed
    /// again when `f` fails.
    pub fn create_with<T>(
        root: &Path,
        id: &str,
        f: impl FnOnce(&StateDir) -> Result<T>,
    ) -> Result<T> {
        let dir = StateDir::create(root, id)?;
        f(&dir).inspect_err(|_| {
            let _ = dir.remove();
        })
    }

    /// Opens and locks the state dir of an existing container. The lock is taken on the
    /// directory the id names when it is granted: one removed while this waited (a delete)
    /// and perhaps made again (a create) is not mistaken for the current one.
    pub fn open(root: &Path, id: &str) -> Result<Self> {
        validate_id(id).map_err(|_| Error::NotFound(id.to_string()))?;
        let path = root.join(id);
        loop {
            let lock = match lock_dir(&path) {
                Ok(l) => l,
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::NotFound(id.to_string()))
                }
                Err(e) => return Err(e),
            };
            let locked = nix::sys::stat::fstat(lock.as_raw_fd())
                .sys_ctx(|| format!("stat {}", path.display()))?;
            match nix::sys::stat::stat(&path) {
                Ok(now) if (now.st_dev, now.st_ino) == (locked.st_dev, locked.st_ino) => {
                    return Ok(StateDir {
                        id: id.to_string(),
                        path,
                        _lock: Some(lock),
                    })
                }
                // Replaced while this waited: lock the one there now.
                Ok(_) => continue,
                Err(_) => return Err(Error::NotFound(id.to_string())),
            }
        }
    }

    /// The state dir of an existing container, not locked: for reading its state while
    /// another command holds the lock (a checkpoint, which may last as long as a lazy
    /// migration). state.json is replaced by rename, so what is read is whole.
    pub(crate) fn unlocked(root: &Path, id: &str) -> Result<Self> {
        validate_id(id).map_err(|_| Error::NotFound(id.to_string()))?;
        let path = root.join(id);
        if !path.join(STATE_FILE).exists() {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(StateDir {
            id: id.to_string(),
            path,
            _lock: None,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Path of the exec fifo.
    pub fn fifo_path(&self) -> PathBuf {
        self.path.join(EXEC_FIFO)
    }

    /// Reads state.json.
    pub fn load(&self) -> Result<ContainerState> {
        self.read_json(STATE_FILE)?
            .ok_or_else(|| Error::NotFound(self.id.clone()))
    }

    /// Records the cgroup a create or restore made (`record_cgroup` says when): if the command
    /// is killed before state.json exists, `delete` finds what to remove there.
    pub fn save_cgroup(&self, cgroup: &CgroupState) -> Result<()> {
        self.write_json(CGROUP_FILE, cgroup)
    }

    /// The cgroup recorded by [`StateDir::save_cgroup`], if any.
    pub fn load_cgroup(&self) -> Result<Option<CgroupState>> {
        self.read_json(CGROUP_FILE)
    }

    /// Writes state.json atomically (temp file + rename).
    pub fn save(&self, state: &ContainerState) -> Result<()> {
        self.write_json(STATE_FILE, state)
    }

    /// The JSON file `name` of this directory, `None` when there is none.
    fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let p = self.path.join(name);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&p, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::State {
                id: self.id.clone(),
                path: p,
                msg: e.to_string(),
            })
    }

    /// Writes `value` as the JSON file `name` of this directory: mode 0600, a temp file
    /// renamed over it, so that a reader finds the old content or the new, whole.
    fn write_json(&self, name: &str, value: &impl Serialize) -> Result<()> {
        let p = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        let bytes = serde_json::to_vec(value).map_err(|e| Error::State {
            id: self.id.clone(),
            path: p.clone(),
            msg: e.to_string(),
        })?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .io_ctx(&tmp)?;
        f.write_all(&bytes).io_ctx(&tmp)?;
        fs::rename(&tmp, &p).io_ctx(&p)
    }

    /// Removes the whole state dir. Mounts left below it (a restore's bind of the rootfs
    /// as CRIU's root, when the restoring process was killed) are detached first: removing
    /// through them would delete the container's rootfs.
    pub fn remove(self) -> Result<()> {
        detach_mounts_below(&self.path);
        match fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }
}

/// Detaches (MNT_DETACH) every mount at or below `dir`, deepest first.
fn detach_mounts_below(dir: &Path) {
    let Ok(abs) = fs::canonicalize(dir) else {
        return;
    };
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = crate::rootfs::mounts::parse_mountinfo(&text)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(&abs))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Lists the ids of every container under `root`.
pub fn list_ids(root: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(root, e)),
    };
    let mut ids = Vec::new();
    for entry in rd {
        let entry = entry.io_ctx(root)?;
        if entry.path().join(STATE_FILE).exists() {
            if let Some(name) = entry.file_name().to_str() {
                ids.push(name.to_string());
            }
        }
    }
    ids.sort();
    Ok(ids)
}

/// What /proc/PID/stat says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// State letter (R, S, D, Z, T, ...).
    pub state: char,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

/// Reads /proc/PID/stat; `None` if the process does not exist.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    // rest starts at field 3 (state); start time is field 22.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// True if `pid` is the process recorded with `start_time` and has not exited.
pub fn process_alive(pid: i32, start_time: u64) -> bool {
    match proc_stat(pid) {
        Some(st) => st.start_time == start_time && st.state != 'Z' && st.state != 'X',
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_runc_grammar() {
        for ok in ["a", "abc-1_2.3+4", "A"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "ä"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn own_process_is_alive_and_stat_parses() {
        let me = std::process::id() as i32;
        let st = proc_stat(me).unwrap();
        assert!(process_alive(me, st.start_time));
        assert!(!process_alive(me, st.start_time + 1));
    }

    #[test]
    fn create_twice_is_exists_and_unknown_is_not_found() {
        let root = tempfile::tempdir().unwrap();
        let d = StateDir::create(root.path(), "x").unwrap();
        drop(d);
        assert!(matches!(
            StateDir::create(root.path(), "x"),
            Err(Error::Exists(_))
        ));
        // Made under a private name and renamed: a refused create leaves nothing.
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x"]);
        assert!(matches!(
            StateDir::open(root.path(), "y"),
            Err(Error::NotFound(_))
        ));
    }
}

#[cfg(test)]
mod remove_tests {
    use super::*;

    #[test]
    fn removing_a_state_dir_never_deletes_through_a_mount_below_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: mounting needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let rootfs = t.path().join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::write(rootfs.join("bin/sh"), b"precious").unwrap();
        let root = t.path().join("state");
        let dir = StateDir::create(&root, "c1").unwrap();
        let bind = dir.path().join("criu-root");
        fs::create_dir(&bind).unwrap();
        nix::mount::mount(
            Some(&rootfs),
            &bind,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        dir.remove().unwrap();
        assert!(!root.join("c1").exists());
        assert_eq!(fs::read(rootfs.join("bin/sh")).unwrap(), b"precious");
    }
}

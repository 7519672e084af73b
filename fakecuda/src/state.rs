//! The per-process checkpoint state, shared between the CUDA process and whoever checkpoints
//! it: one text file per pid, `<dir>/<pid>.state`, read and written under `flock`.
//!
//! ```text
//! state=0                    RUNNING 0, LOCKED 1, CHECKPOINTED 2, FAILED 3
//! starttime=123456           /proc/<pid>/stat field 22: tells a live process from a reused pid
//! restore_tid=4242           the thread cuCheckpointProcessGetRestoreThreadId names
//! inflight_ms=0              GPU work a lock waits for; "never" = it never finishes
//! faults=checkpoint=2        FAKECUDA_FAULTS of the CUDA process
//! allocations=2              live device allocations
//! device_bytes=1060864       their mapped size
//! checkpoints=0              successful checkpoints so far
//! restores=0                 successful restores so far
//! ```
//!
//! The CUDA process creates the file when it creates its context (`cuDevicePrimaryCtxRetain`);
//! a pid without a file, or whose process has another start time, is unknown to the driver.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use crate::result::{self, CUresult};

pub const RUNNING: u32 = 0;
pub const LOCKED: u32 = 1;
pub const CHECKPOINTED: u32 = 2;
pub const FAILED: u32 = 3;

/// The directory holding every pid's files and the call log.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// `FAKECUDA_STATE_DIR`, else `$TMPDIR/fakecuda-<uid>`.
    pub fn from_env() -> StateDir {
        match std::env::var_os("FAKECUDA_STATE_DIR") {
            Some(d) if !d.is_empty() => StateDir(PathBuf::from(d)),
            _ => {
                // SAFETY: getuid has no preconditions.
                let uid = unsafe { libc::getuid() };
                StateDir(std::env::temp_dir().join(format!("fakecuda-{uid}")))
            }
        }
    }

    pub fn state_path(&self, pid: i32) -> PathBuf {
        self.0.join(format!("{pid}.state"))
    }

    /// The CUDA process's "device memory" (see [`crate::devmem`]).
    pub fn device_path(&self, pid: i32) -> PathBuf {
        self.0.join(format!("{pid}.dev"))
    }

    /// Where a checkpoint puts the device memory ("the process's host memory").
    pub fn host_path(&self, pid: i32) -> PathBuf {
        self.0.join(format!("{pid}.host"))
    }

    pub fn log_path(&self) -> PathBuf {
        self.0.join("calls.log")
    }
}

/// How an in-flight wait ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inflight {
    /// The work finishes after this many ms.
    Ms(u64),
    /// The work never finishes: every lock with a timeout times out.
    Never,
}

/// Faults injected into the checkpoint calls made on one process: `FAKECUDA_FAULTS`, a comma
/// list of `call=RESULT` where call is `lock`, `checkpoint`, `restore`, `unlock`, `state` or
/// `restore-tid`, and RESULT a CUresult name (`CUDA_ERROR_OUT_OF_MEMORY`, `out_of_memory`) or
/// number. `lock=timeout` is in-flight work that never finishes (the lock waits its timeout
/// and returns CUDA_ERROR_NOT_READY, the process staying RUNNING). A failing call changes no
/// state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults(pub String);

impl Faults {
    /// The result injected for `call`, if any.
    pub fn result_for(&self, call: &str) -> Option<CUresult> {
        self.entries()
            .find(|(c, v)| *c == call && *v != "timeout")
            .and_then(|(_, v)| result::parse(v))
    }

    /// Whether locks of this process time out.
    pub fn lock_times_out(&self) -> bool {
        self.entries().any(|(c, v)| c == "lock" && v == "timeout")
    }

    fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .split(',')
            .filter_map(|e| e.split_once('='))
            .map(|(c, v)| (c.trim(), v.trim()))
    }
}

/// One process's state as stored in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcState {
    pub state: u32,
    pub starttime: u64,
    pub restore_tid: i32,
    pub inflight: Inflight,
    pub faults: Faults,
    pub allocations: u64,
    pub device_bytes: u64,
    pub checkpoints: u64,
    pub restores: u64,
}

impl ProcState {
    pub fn serialize(&self) -> String {
        let inflight = match self.inflight {
            Inflight::Ms(ms) => ms.to_string(),
            Inflight::Never => "never".to_string(),
        };
        format!(
            "state={}\nstarttime={}\nrestore_tid={}\ninflight_ms={}\nfaults={}\nallocations={}\ndevice_bytes={}\ncheckpoints={}\nrestores={}\n",
            self.state,
            self.starttime,
            self.restore_tid,
            inflight,
            self.faults.0,
            self.allocations,
            self.device_bytes,
            self.checkpoints,
            self.restores
        )
    }

    /// Parses a state file; `None` when a field is missing or malformed.
    pub fn parse(text: &str) -> Option<ProcState> {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        };
        let num = |key: &str| field(key)?.trim().parse::<u64>().ok();
        let inflight = match field("inflight_ms")?.trim() {
            "never" => Inflight::Never,
            ms => Inflight::Ms(ms.parse().ok()?),
        };
        Some(ProcState {
            state: u32::try_from(num("state")?).ok()?,
            starttime: num("starttime")?,
            restore_tid: field("restore_tid")?.trim().parse().ok()?,
            inflight,
            faults: Faults(field("faults")?.trim().to_string()),
            allocations: num("allocations")?,
            device_bytes: num("device_bytes")?,
            checkpoints: num("checkpoints")?,
            restores: num("restores")?,
        })
    }
}

/// A process's start time (clock ticks since boot), `None` when there is no such process.
pub fn starttime(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces: fields are counted after its ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after ')'; starttime is field 22.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// A pid's state file, opened and held under an exclusive `flock` until dropped.
pub struct Locked {
    file: File,
    pub st: ProcState,
}

impl Locked {
    /// Opens `pid`'s state for a transition. `CUDA_ERROR_INVALID_VALUE` when the driver does
    /// not know the pid: no file, or a file left by an earlier process with that pid.
    pub fn open(dir: &StateDir, pid: i32) -> Result<Locked, CUresult> {
        let path = dir.state_path(pid);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|_| result::CUDA_ERROR_INVALID_VALUE)?;
        flock(&file, libc::LOCK_EX)?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|_| result::CUDA_ERROR_OPERATING_SYSTEM)?;
        let st = ProcState::parse(&text).ok_or(result::CUDA_ERROR_UNKNOWN)?;
        if starttime(pid) != Some(st.starttime) {
            return Err(result::CUDA_ERROR_INVALID_VALUE);
        }
        Ok(Locked { file, st })
    }

    /// Writes the (changed) state back.
    pub fn save(&mut self) -> Result<(), CUresult> {
        write_all_at_start(&mut self.file, self.st.serialize().as_bytes())
    }
}

/// Reads `pid`'s state under a shared lock (the CUDA process polling its own state).
pub fn read(dir: &StateDir, pid: i32) -> Option<ProcState> {
    let mut file = File::open(dir.state_path(pid)).ok()?;
    flock(&file, libc::LOCK_SH).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    ProcState::parse(&text)
}

/// Creates (or replaces) `pid`'s state: the CUDA process registering itself.
pub fn create(dir: &StateDir, pid: i32, st: &ProcState) -> Result<(), CUresult> {
    std::fs::create_dir_all(&dir.0).map_err(|_| result::CUDA_ERROR_OPERATING_SYSTEM)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.state_path(pid))
        .map_err(|_| result::CUDA_ERROR_OPERATING_SYSTEM)?;
    flock(&file, libc::LOCK_EX)?;
    write_all_at_start(&mut file, st.serialize().as_bytes())
}

/// Updates `pid`'s state in place with `f`, if the file exists.
pub fn update(dir: &StateDir, pid: i32, f: impl FnOnce(&mut ProcState)) -> Result<(), CUresult> {
    let mut locked = Locked::open(dir, pid)?;
    f(&mut locked.st);
    locked.save()
}

fn write_all_at_start(file: &mut File, bytes: &[u8]) -> Result<(), CUresult> {
    let os = |_| result::CUDA_ERROR_OPERATING_SYSTEM;
    file.set_len(0).map_err(os)?;
    file.seek(SeekFrom::Start(0)).map_err(os)?;
    file.write_all(bytes).map_err(os)
}

fn flock(file: &File, op: libc::c_int) -> Result<(), CUresult> {
    loop {
        // SAFETY: the fd is open for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Err(result::CUDA_ERROR_OPERATING_SYSTEM);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProcState {
        ProcState {
            state: LOCKED,
            starttime: 42,
            restore_tid: 7,
            inflight: Inflight::Never,
            faults: Faults("checkpoint=out_of_memory,lock=timeout".into()),
            allocations: 2,
            device_bytes: 8192,
            checkpoints: 1,
            restores: 0,
        }
    }

    #[test]
    fn state_round_trips_through_text() {
        let st = sample();
        assert_eq!(ProcState::parse(&st.serialize()), Some(st));
        assert_eq!(ProcState::parse("state=0\n"), None);
    }

    #[test]
    fn faults_name_calls_and_results() {
        let f = sample().faults;
        assert_eq!(
            f.result_for("checkpoint"),
            Some(result::CUDA_ERROR_OUT_OF_MEMORY)
        );
        assert_eq!(f.result_for("lock"), None);
        assert!(f.lock_times_out());
        assert_eq!(Faults::default().result_for("restore"), None);
        assert_eq!(
            Faults("restore=100".into()).result_for("restore"),
            Some(result::CUDA_ERROR_NO_DEVICE)
        );
    }

    #[test]
    fn own_starttime_is_readable_and_a_dead_pid_has_none() {
        assert!(starttime(crate::getpid()).is_some());
        assert_eq!(starttime(i32::MAX), None);
    }

    #[test]
    fn a_file_left_by_another_process_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let dir = StateDir(dir.path().to_path_buf());
        let me = crate::getpid();
        let mut st = sample();
        st.starttime = starttime(me).unwrap() + 1;
        create(&dir, me, &st).unwrap();
        assert_eq!(
            Locked::open(&dir, me).err(),
            Some(result::CUDA_ERROR_INVALID_VALUE)
        );
        st.starttime -= 1;
        create(&dir, me, &st).unwrap();
        let mut locked = Locked::open(&dir, me).unwrap();
        locked.st.state = RUNNING;
        locked.save().unwrap();
        drop(locked);
        assert_eq!(read(&dir, me).unwrap().state, RUNNING);
    }
}

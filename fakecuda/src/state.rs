//! The per-process checkpoint state. It lives in the CUDA process itself, in a memfd named
//! `fakecuda-state`, so that it travels with the process through a CRIU dump and restore (CRIU
//! dumps a memfd's contents and restores it under the same name and fd number), as the real
//! driver's state lives in the process's own libcuda:
//!
//! ```text
//! seq=12                     bumped by every write; the last line repeats it (see below)
//! state=0                    RUNNING 0, LOCKED 1, CHECKPOINTED 2, FAILED 3
//! nspid=3                    the process's pid in its own pid namespace (getpid())
//! restore_tid=5              the restore thread, as a tid of that namespace
//! wake_fd=7                  the write end of the restore thread's wake pipe
//! inflight_ms=0              GPU work a lock waits for; "never" = it never finishes
//! faults=checkpoint=2        FAKECUDA_FAULTS of the CUDA process
//! allocations=2              live device allocations
//! device_bytes=1060864       their mapped size
//! checkpoints=0              successful checkpoints so far
//! restores=0                 successful restores so far
//! request=none               what a caller asked the restore thread to do: checkpoint, restore
//! request_seq=0              numbers the requests ...
//! done_seq=0                 ... and the last one done,
//! done_result=0              with its CUresult
//! end=12                     = seq: the text is whole
//! ```
//!
//! padded with newlines to [`STATE_SIZE`] bytes and always written whole at offset 0.
//!
//! A caller (cryo, through the checkpoint calls) knows a process by the pid it sees, which may
//! be in another pid namespace (a container) than the process's own: it finds the memfd by its
//! name among `/proc/PID/fd/*`, opens it through that link (a file description of its own) and
//! checks that `nspid` is the last `NSpid` of `/proc/PID/status` (a forked child inherits the
//! memfd but is not the process that registered). A pid with no such memfd has no CUDA context.
//!
//! Writers take an exclusive `flock` (callers on their own file description; in the process,
//! the restore thread and the memory calls under a process-wide mutex as well, since they share
//! one). The process's blocked CUDA calls read the state without a lock, checking `seq` against
//! `end`: a process frozen by CRIU while it holds a file lock fails the dump, and a locked
//! process polls its state all the time.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::result::{self, CUresult};

pub const RUNNING: u32 = 0;
pub const LOCKED: u32 = 1;
pub const CHECKPOINTED: u32 = 2;
pub const FAILED: u32 = 3;

/// The name of the state memfd (`/proc/PID/fd/N` reads `/memfd:fakecuda-state (deleted)`).
pub const STATE_MEMFD: &str = "fakecuda-state";
/// The name of the device-memory memfd.
pub const DEVICE_MEMFD: &str = "fakecuda-dev";
/// The size of the state text, padding included: one page.
pub const STATE_SIZE: usize = 4096;

/// The directory of the call log and of the per-pid views tests read (see [`StateDir::views`]).
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

    /// A view of the process's state: a link to its state memfd.
    pub fn state_path(&self, pid: i32) -> PathBuf {
        self.0.join(format!("{pid}.state"))
    }

    /// A view of the process's "device memory": a link to its device memfd.
    pub fn device_path(&self, pid: i32) -> PathBuf {
        self.0.join(format!("{pid}.dev"))
    }

    /// Present while the process is checkpointed: where its device memory waits in its host
    /// memory (`addr=0x... bytes=N`).
    pub fn host_path(&self, pid: i32) -> PathBuf {
        self.0.join(format!("{pid}.host"))
    }

    pub fn log_path(&self) -> PathBuf {
        self.0.join("calls.log")
    }

    /// Makes `<pid>.state` and `<pid>.dev` links to the process's memfds, for tests that look
    /// at a CUDA process from its own pid namespace (the links name `/proc/<pid>/fd/N`). Best
    /// effort: a state directory that cannot be written (a container without it) has none.
    pub fn views(&self, pid: i32, state_fd: i32, device_fd: i32) {
        if std::fs::create_dir_all(&self.0).is_err() {
            return;
        }
        for (path, fd) in [
            (self.state_path(pid), state_fd),
            (self.device_path(pid), device_fd),
        ] {
            let _ = std::fs::remove_file(&path);
            let _ = std::os::unix::fs::symlink(format!("/proc/{pid}/fd/{fd}"), &path);
        }
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

/// What a caller asked the process's restore thread to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    None,
    Checkpoint,
    Restore,
}

impl Request {
    fn as_str(self) -> &'static str {
        match self {
            Request::None => "none",
            Request::Checkpoint => "checkpoint",
            Request::Restore => "restore",
        }
    }

    fn parse(s: &str) -> Option<Request> {
        Some(match s {
            "none" => Request::None,
            "checkpoint" => Request::Checkpoint,
            "restore" => Request::Restore,
            _ => return None,
        })
    }
}

/// One process's state as stored in its memfd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcState {
    pub seq: u64,
    pub state: u32,
    pub nspid: i32,
    pub restore_tid: i32,
    pub wake_fd: i32,
    pub inflight: Inflight,
    pub faults: Faults,
    pub allocations: u64,
    pub device_bytes: u64,
    pub checkpoints: u64,
    pub restores: u64,
    pub request: Request,
    pub request_seq: u64,
    pub done_seq: u64,
    pub done_result: CUresult,
}

impl ProcState {
    /// A RUNNING process with nothing allocated.
    pub fn new(
        nspid: i32,
        restore_tid: i32,
        wake_fd: i32,
        inflight: Inflight,
        faults: Faults,
    ) -> Self {
        ProcState {
            seq: 0,
            state: RUNNING,
            nspid,
            restore_tid,
            wake_fd,
            inflight,
            faults,
            allocations: 0,
            device_bytes: 0,
            checkpoints: 0,
            restores: 0,
            request: Request::None,
            request_seq: 0,
            done_seq: 0,
            done_result: result::CUDA_SUCCESS,
        }
    }

    /// The text, padded to [`STATE_SIZE`]; `None` if it does not fit (faults too long).
    pub fn serialize(&self) -> Option<Vec<u8>> {
        let inflight = match self.inflight {
            Inflight::Ms(ms) => ms.to_string(),
            Inflight::Never => "never".to_string(),
        };
        let text = format!(
            "seq={seq}\nstate={}\nnspid={}\nrestore_tid={}\nwake_fd={}\ninflight_ms={}\nfaults={}\n\
             allocations={}\ndevice_bytes={}\ncheckpoints={}\nrestores={}\nrequest={}\n\
             request_seq={}\ndone_seq={}\ndone_result={}\nend={seq}\n",
            self.state,
            self.nspid,
            self.restore_tid,
            self.wake_fd,
            inflight,
            self.faults.0,
            self.allocations,
            self.device_bytes,
            self.checkpoints,
            self.restores,
            self.request.as_str(),
            self.request_seq,
            self.done_seq,
            self.done_result,
            seq = self.seq,
        );
        let mut bytes = text.into_bytes();
        if bytes.len() > STATE_SIZE {
            return None;
        }
        bytes.resize(STATE_SIZE, b'\n');
        Some(bytes)
    }

    /// Parses a state text; `None` when a field is missing or malformed, or the text is not
    /// whole (`end` differs from `seq`: read while being written).
    pub fn parse(text: &str) -> Option<ProcState> {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
        };
        let num = |key: &str| field(key)?.parse::<u64>().ok();
        let int = |key: &str| field(key)?.parse::<i32>().ok();
        let inflight = match field("inflight_ms")? {
            "never" => Inflight::Never,
            ms => Inflight::Ms(ms.parse().ok()?),
        };
        let seq = num("seq")?;
        if num("end")? != seq {
            return None;
        }
        Some(ProcState {
            seq,
            state: u32::try_from(num("state")?).ok()?,
            nspid: int("nspid")?,
            restore_tid: int("restore_tid")?,
            wake_fd: int("wake_fd")?,
            inflight,
            faults: Faults(field("faults")?.to_string()),
            allocations: num("allocations")?,
            device_bytes: num("device_bytes")?,
            checkpoints: num("checkpoints")?,
            restores: num("restores")?,
            request: Request::parse(field("request")?)?,
            request_seq: num("request_seq")?,
            done_seq: num("done_seq")?,
            done_result: u32::try_from(num("done_result")?).ok()?,
        })
    }
}

/// Reads the state from `file` without a lock, retrying a text caught mid-write. `None` when
/// it cannot be read or never reads whole.
pub fn read_file(file: &File) -> Option<ProcState> {
    let mut buf = vec![0u8; STATE_SIZE];
    for attempt in 0..1000 {
        let n = file.read_at(&mut buf, 0).ok()?;
        if let Some(st) = std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(ProcState::parse)
        {
            return Some(st);
        }
        if attempt > 10 {
            std::thread::yield_now();
        }
    }
    None
}

/// Writes `st` whole, its `seq` bumped.
pub fn write_file(file: &File, st: &mut ProcState) -> Result<(), CUresult> {
    st.seq += 1;
    let bytes = st.serialize().ok_or(result::CUDA_ERROR_INVALID_VALUE)?;
    file.write_all_at(&bytes, 0)
        .map_err(|_| result::CUDA_ERROR_OPERATING_SYSTEM)
}

/// Takes `flock(op)` on `file`, retrying on EINTR.
pub fn flock(file: &File, op: libc::c_int) -> Result<(), CUresult> {
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

/// The last `NSpid` of `status` (a `/proc/PID/status` or `/proc/PID/task/TID/status` file):
/// the id in the task's own pid namespace. `None` if the task is gone.
pub fn ns_id(status: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(status).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The fd of `pid` that is a memfd named `name`, if any.
pub fn find_memfd(pid: i32, name: &str) -> Option<i32> {
    let want = format!("/memfd:{name}");
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    dir.flatten().find_map(|e| {
        let target = std::fs::read_link(e.path()).ok()?;
        let target = target.to_str()?;
        // "/memfd:NAME (deleted)": the name must match whole.
        let rest = target.strip_prefix(&want)?;
        (rest.is_empty() || rest.starts_with(' '))
            .then(|| e.file_name().to_str()?.parse().ok())
            .flatten()
    })
}

/// A CUDA process's state seen from a caller, held under an exclusive `flock` until dropped.
pub struct Locked {
    file: File,
    /// The pid as the caller names it.
    pub pid: i32,
    pub st: ProcState,
}

impl Locked {
    /// Opens `pid`'s state for a transition. `CUDA_ERROR_INVALID_VALUE` when the driver does
    /// not know the pid: no such process, no context in it, or a child that inherited it.
    pub fn open(pid: i32) -> Result<Locked, CUresult> {
        let file = open_state(pid)?;
        flock(&file, libc::LOCK_EX)?;
        let st = read_file(&file).ok_or(result::CUDA_ERROR_UNKNOWN)?;
        if ns_id(Path::new(&format!("/proc/{pid}/status"))) != Some(st.nspid) {
            return Err(result::CUDA_ERROR_INVALID_VALUE);
        }
        Ok(Locked { file, pid, st })
    }

    /// Writes the (changed) state back.
    pub fn save(&mut self) -> Result<(), CUresult> {
        write_file(&self.file, &mut self.st)
    }
}

/// Opens the state memfd of `pid` through /proc, a file description of the caller's own.
fn open_state(pid: i32) -> Result<File, CUresult> {
    let fd = find_memfd(pid, STATE_MEMFD).ok_or(result::CUDA_ERROR_INVALID_VALUE)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .map_err(|_| result::CUDA_ERROR_INVALID_VALUE)
}

/// Reads `pid`'s state under a shared lock (a caller that only looks).
pub fn read(pid: i32) -> Result<ProcState, CUresult> {
    let file = open_state(pid)?;
    flock(&file, libc::LOCK_SH)?;
    let st = read_file(&file).ok_or(result::CUDA_ERROR_UNKNOWN)?;
    if ns_id(Path::new(&format!("/proc/{pid}/status"))) != Some(st.nspid) {
        return Err(result::CUDA_ERROR_INVALID_VALUE);
    }
    Ok(st)
}

/// The thread of `pid` whose id in the process's namespace is `ns_tid`, as the caller names
/// it (the same number when both are in one pid namespace).
pub fn caller_tid(pid: i32, ns_tid: i32) -> Option<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.flatten().find_map(|t| {
        let tid: i32 = t.file_name().to_str()?.parse().ok()?;
        (ns_id(&t.path().join("status")) == Some(ns_tid)).then_some(tid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProcState {
        let mut st = ProcState::new(
            42,
            43,
            7,
            Inflight::Never,
            Faults("checkpoint=out_of_memory,lock=timeout".into()),
        );
        st.state = LOCKED;
        st.allocations = 2;
        st.device_bytes = 8192;
        st.checkpoints = 1;
        st.request = Request::Restore;
        st.request_seq = 3;
        st
    }

    #[test]
    fn state_round_trips_through_text_of_a_fixed_size() {
        let st = sample();
        let bytes = st.serialize().unwrap();
        assert_eq!(bytes.len(), STATE_SIZE);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert_eq!(ProcState::parse(text), Some(st));
        assert_eq!(ProcState::parse("state=0\n"), None);
        // A text caught mid-write (its head newer than its tail) is not whole.
        let torn = text.replace("end=0", "end=1");
        assert_eq!(ProcState::parse(&torn), None);
        let mut long = sample();
        long.faults = Faults("x".repeat(STATE_SIZE));
        assert_eq!(long.serialize(), None);
    }

    #[test]
    fn writes_bump_the_sequence() {
        let file = tempfile::tempfile().unwrap();
        let mut st = sample();
        write_file(&file, &mut st).unwrap();
        write_file(&file, &mut st).unwrap();
        let back = read_file(&file).unwrap();
        assert_eq!(back.seq, 2);
        assert_eq!(back, st);
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
    fn namespace_ids_of_this_process_are_its_own() {
        let me = crate::getpid();
        assert_eq!(ns_id(Path::new("/proc/self/status")), Some(me));
        assert_eq!(caller_tid(me, crate::gettid()), Some(crate::gettid()));
        assert_eq!(ns_id(Path::new("/proc/2147483647/status")), None);
    }

    #[test]
    fn a_process_without_the_memfd_is_unknown() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let unknown = Locked::open(pid).err();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(unknown, Some(result::CUDA_ERROR_INVALID_VALUE));
        assert_eq!(read(i32::MAX).err(), Some(result::CUDA_ERROR_INVALID_VALUE));
    }
}

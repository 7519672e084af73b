//! Restoring the CUDA processes of a stopped process tree: what comes after CRIU restored a
//! tree with `--leave-stopped`, before it is resumed.
//!
//! The driver's Restore is carried out by each process's restore thread
//! (`cuCheckpointProcessGetRestoreThreadId`), so that thread must run while every other thread
//! stays stopped: the process must not touch device memory before it is back. CRIU's own cuda
//! plugin does this at RESUME_DEVICES_LATE, with the tree still under its ptrace; cryo does it
//! once CRIU has let go and the tree sits in group-stop (SIGSTOP): each restore thread is
//! seized (ptrace), its signals blocked, and let run alone; after the Restores and Unlocks it is
//! interrupted, given back its signal mask and detached, and falls back into the group-stop.
//! The caller resumes the tree afterwards (SIGCONT), or leaves it stopped.
//!
//! ```text
//! wait: every thread 'T' | seize + block signals + PTRACE_CONT each restore thread
//!       | restore all | unlock all | PTRACE_INTERRUPT + old mask + detach each
//! ```
//!
//! Linux specifics relied on: PTRACE_SEIZE of a stopped thread re-traps it (a group-stop trap,
//! reported to waitpid), PTRACE_CONT runs a traced thread even while its thread group is
//! stopped, and PTRACE_DETACH puts it back into the group-stop that is still in effect.

use std::time::{Duration, Instant};

use super::checkpoint::{restore_all, restore_threads};
use super::driver::Driver;
use super::error::GpuError;
use super::ffi::GpuPair;

/// How long a restored tree may take to reach its group-stop after CRIU returns.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The state letter of a thread (`/proc/PID/task/TID/stat` field 3), `None` if it is gone.
fn thread_state(pid: i32, tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// The threads of `pid`.
fn threads(pid: i32) -> Result<Vec<i32>, GpuError> {
    let path = std::path::PathBuf::from(format!("/proc/{pid}/task"));
    let entries = std::fs::read_dir(&path).map_err(|source| GpuError::Proc {
        pid,
        path: path.clone(),
        source,
    })?;
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

/// Waits until every thread of every process in `pids` is stopped (`T`), up to `timeout`.
pub fn wait_stopped(pids: &[i32], timeout: Duration) -> Result<(), GpuError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut running = None;
        'all: for &pid in pids {
            for tid in threads(pid)? {
                match thread_state(pid, tid) {
                    Some('T') | None => {}
                    Some(state) => {
                        running = Some((pid, tid, state));
                        break 'all;
                    }
                }
            }
        }
        let Some((pid, tid, state)) = running else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(GpuError::NotStopped { pid, tid, state });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `ptrace(request, tid, addr, data)`.
///
/// # Safety
/// `addr` and `data` must be what `request` expects (null, or valid memory of its size).
unsafe fn ptrace(
    request: libc::c_uint,
    tid: i32,
    addr: *mut libc::c_void,
    data: *mut libc::c_void,
) -> std::io::Result<()> {
    // SAFETY: the caller's contract.
    let rc = unsafe { libc::ptrace(request, tid, addr, data) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Waits for the traced thread `tid` to stop (`__WALL`: it is a thread, maybe not our child).
fn wait_trapped(tid: i32, timeout: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let rc = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if rc == tid {
            if libc::WIFSTOPPED(status) {
                return Ok(());
            }
            return Err(std::io::Error::other(format!(
                "thread {tid} did not stop (wait status {status:#x})"
            )));
        }
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A restore thread let run under ptrace while its process stays stopped. Dropping it without
/// [`RunningThread::stop`] stops it all the same, ignoring errors.
struct RunningThread {
    pid: i32,
    tid: i32,
    /// Its signal mask before: given back at the end.
    mask: u64,
    stopped: bool,
}

impl RunningThread {
    fn err(&self, op: &'static str, source: std::io::Error) -> GpuError {
        GpuError::Ptrace {
            pid: self.pid,
            tid: self.tid,
            op,
            source,
        }
    }

    /// Seizes `tid` (a stopped thread) and lets it run with every signal blocked.
    fn start(pid: i32, tid: i32) -> Result<RunningThread, GpuError> {
        let mut t = RunningThread {
            pid,
            tid,
            mask: 0,
            stopped: true,
        };
        let null = std::ptr::null_mut();
        // SAFETY: PTRACE_SEIZE takes no address and options 0.
        unsafe { ptrace(libc::PTRACE_SEIZE, tid, null, null) }
            .map_err(|e| t.err("PTRACE_SEIZE", e))?;
        // From here on, dropping `t` detaches.
        t.stopped = false;
        // The seize re-traps the stopped thread; its trap is reported to waitpid.
        wait_trapped(tid, Duration::from_secs(5)).map_err(|e| t.err("waitpid", e))?;
        let size = std::mem::size_of::<u64>() as *mut libc::c_void;
        let mut mask = 0u64;
        // SAFETY: GETSIGMASK writes `size` (8) bytes at the pointer, a u64.
        unsafe {
            ptrace(
                libc::PTRACE_GETSIGMASK,
                tid,
                size,
                std::ptr::addr_of_mut!(mask).cast(),
            )
        }
        .map_err(|e| t.err("PTRACE_GETSIGMASK", e))?;
        t.mask = mask;
        let mut all = u64::MAX;
        // SAFETY: SETSIGMASK reads `size` (8) bytes at the pointer, a u64.
        unsafe {
            ptrace(
                libc::PTRACE_SETSIGMASK,
                tid,
                size,
                std::ptr::addr_of_mut!(all).cast(),
            )
        }
        .map_err(|e| t.err("PTRACE_SETSIGMASK", e))?;
        // SAFETY: PTRACE_CONT with no signal to deliver.
        unsafe { ptrace(libc::PTRACE_CONT, tid, null, null) }
            .map_err(|e| t.err("PTRACE_CONT", e))?;
        Ok(t)
    }

    /// Stops the thread again and detaches: it rejoins its process's group-stop.
    fn stop(mut self) -> Result<(), GpuError> {
        self.stopped = true;
        self.stop_inner()
    }

    fn stop_inner(&self) -> Result<(), GpuError> {
        let null = std::ptr::null_mut();
        // SAFETY: PTRACE_INTERRUPT takes no address or data.
        unsafe { ptrace(libc::PTRACE_INTERRUPT, self.tid, null, null) }
            .map_err(|e| self.err("PTRACE_INTERRUPT", e))?;
        wait_trapped(self.tid, Duration::from_secs(5)).map_err(|e| self.err("waitpid", e))?;
        let size = std::mem::size_of::<u64>() as *mut libc::c_void;
        let mut mask = self.mask;
        // SAFETY: SETSIGMASK reads `size` (8) bytes at the pointer, a u64.
        unsafe {
            ptrace(
                libc::PTRACE_SETSIGMASK,
                self.tid,
                size,
                std::ptr::addr_of_mut!(mask).cast(),
            )
        }
        .map_err(|e| self.err("PTRACE_SETSIGMASK", e))?;
        // SAFETY: PTRACE_DETACH with no signal to deliver.
        unsafe { ptrace(libc::PTRACE_DETACH, self.tid, null, null) }
            .map_err(|e| self.err("PTRACE_DETACH", e))
    }
}

impl Drop for RunningThread {
    fn drop(&mut self) {
        if !self.stopped {
            if let Err(e) = self.stop_inner() {
                tracing::warn!(error = %e, "letting go of a restore thread");
            }
        }
    }
}

/// Restores and unlocks the CUDA processes `pids` of a tree that sits in group-stop (CRIU's
/// `--leave-stopped`), letting only their restore threads run meanwhile; the tree is still
/// stopped afterwards. Waits up to `settle` for the tree to be stopped first.
pub fn restore_stopped(
    driver: &dyn Driver,
    pids: &[i32],
    gpu_pairs: &[GpuPair],
    settle: Duration,
) -> Result<(), GpuError> {
    if pids.is_empty() {
        return Ok(());
    }
    let start = Instant::now();
    wait_stopped(pids, settle)?;
    let tids = restore_threads(driver, pids)?;
    let mut running = Vec::with_capacity(tids.len());
    for &(pid, tid) in &tids {
        // A failure drops (and so stops again) the threads already running.
        running.push(RunningThread::start(pid, tid)?);
    }
    tracing::debug!(?tids, elapsed = ?start.elapsed(), "restore threads running");
    let restored = restore_all(driver, pids, gpu_pairs);
    let mut failures: Vec<GpuError> = running.into_iter().filter_map(|t| t.stop().err()).collect();
    restored?;
    if failures.is_empty() {
        tracing::debug!(?pids, elapsed = ?start.elapsed(), "stopped CUDA processes restored");
        Ok(())
    } else {
        Err(failures.swap_remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    #[test]
    fn a_stopped_process_is_seen_stopped_and_a_running_one_is_not() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let e = wait_stopped(&[pid], Duration::from_millis(20)).unwrap_err();
        assert!(
            matches!(e, GpuError::NotStopped { pid: p, state: 'S', .. } if p == pid),
            "{e}"
        );
        kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
        wait_stopped(&[pid], Duration::from_secs(5)).unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A thread of a stopped process runs under ptrace while its siblings stay stopped, and
    /// stops again when let go.
    #[test]
    fn one_thread_runs_while_its_process_stays_stopped() {
        // A shell whose only thread is the main one: `sleep 0.01` in a loop, each a child, so
        // the shell itself only runs between children: its children count says it ran.
        let mut child = Command::new("sh")
            .args(["-c", "while :; do sleep 0.01; done"])
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
        wait_stopped(&[pid], Duration::from_secs(5)).unwrap();
        let t = match RunningThread::start(pid, pid) {
            Ok(t) => t,
            Err(GpuError::Ptrace {
                op: "PTRACE_SEIZE",
                source,
                ..
            }) if source.raw_os_error() == Some(libc::EPERM) => {
                println!("skipped: ptrace is not allowed here: {source}");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Err(e) => panic!("{e}"),
        };
        std::thread::sleep(Duration::from_millis(20));
        assert_ne!(thread_state(pid, pid), Some('T'));
        t.stop().unwrap();
        wait_stopped(&[pid], Duration::from_secs(5)).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(thread_state(pid, pid), Some('T'));
        kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

//! The driver's checkpoint API (r570+, CUDA 12.8+): six calls that one process makes on
//! another, as a state machine kept in the target process ([`crate::state`]):
//!
//! ```text
//! RUNNING --Lock--> LOCKED --Checkpoint--> CHECKPOINTED --Restore--> LOCKED --Unlock--> RUNNING
//! ```
//!
//! - Lock waits for the process's in-flight work (`FAKECUDA_INFLIGHT_MS`) up to the timeout
//!   of its arguments (0: no timeout); past it the process stays RUNNING and the call returns
//!   `CUDA_ERROR_NOT_READY`. Work that never finishes (`FAKECUDA_FAULTS=lock=timeout`) with
//!   no timeout hangs for `FAKECUDA_HANG_LIMIT_MS` (30 s), then returns `CUDA_ERROR_TIMEOUT`.
//! - Checkpoint and Restore are carried out by the process's restore thread ([`crate::worker`]):
//!   Checkpoint moves the device memory into the process's host memory and scribbles over the
//!   device memory; Restore puts it back, and requires that the caller called `cuInit`. The
//!   caller asks and waits (`FAKECUDA_RESTORE_THREAD_TIMEOUT_MS`, 10 s, then
//!   `CUDA_ERROR_TIMEOUT` with no change: the restore thread did not run). GPU pairs in the
//!   restore arguments are read only when the driver version is 13000 or more (before that the
//!   fields are reserved), and must name known devices.
//! - A call in the wrong state returns `CUDA_ERROR_ILLEGAL_STATE`; a pid the driver does not
//!   know (no CUDA context, or gone) `CUDA_ERROR_INVALID_VALUE`; a fault injected with the
//!   process's `FAKECUDA_FAULTS` its result, with no state change.
//! - GetRestoreThreadId names the thread as the caller sees it (its pid namespace may differ
//!   from the process's).
//!
//! Every call appends a line to the call log ([`crate::calllog`]).

// The C API: each function's safety contract is cuda.h's (an argument pointer is null or
// points to the struct; an out-pointer is null or writable).
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_int;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use crate::api;
use crate::calllog;
use crate::result::{self as r, CUresult};
use crate::state::{self, Inflight, Locked, Request, StateDir};

/// `CUcheckpointLockArgs`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LockArgs {
    pub timeout_ms: u32,
    pub reserved0: u32,
    pub reserved1: [u64; 7],
}

/// `CUcheckpointGpuPair`: two CUuuids.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GpuPair {
    pub old_uuid: [u8; 16],
    pub new_uuid: [u8; 16],
}

/// `CUcheckpointRestoreArgs` of CUDA 13 (all reserved on 12.8/12.9).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RestoreArgs {
    pub gpu_pairs: *const GpuPair,
    pub gpu_pairs_count: u32,
    pub reserved0: u32,
    pub reserved1: [u64; 6],
}

const _: () = assert!(std::mem::size_of::<LockArgs>() == 64);
const _: () = assert!(std::mem::size_of::<RestoreArgs>() == 64);
const _: () = assert!(std::mem::size_of::<GpuPair>() == 32);

/// Runs one call and logs it.
fn logged(name: &str, pid: c_int, f: impl FnOnce(&mut String) -> CUresult) -> CUresult {
    let start = crate::now_ns();
    let mut detail = String::new();
    let code = f(&mut detail);
    calllog::append(&StateDir::from_env(), name, pid, code, start, &detail);
    code
}

/// Opens the pid's state for a transition from `from`, honouring an injected fault for `call`.
fn open_for(pid: c_int, call: &str, from: u32) -> Result<Locked, CUresult> {
    let locked = Locked::open(pid)?;
    if let Some(code) = locked.st.faults.result_for(call) {
        return Err(code);
    }
    if locked.st.state != from {
        return Err(r::CUDA_ERROR_ILLEGAL_STATE);
    }
    Ok(locked)
}

/// `FAKECUDA_HANG_LIMIT_MS`, default 30 s: how long "forever" lasts.
fn hang_limit_ms() -> u64 {
    env_ms("FAKECUDA_HANG_LIMIT_MS", 30_000)
}

fn env_ms(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn lock(pid: c_int, timeout_ms: u32) -> Result<(), CUresult> {
    // Take the in-flight figure, then wait without holding the state: the process's own calls
    // read it meanwhile.
    let inflight = {
        let locked = open_for(pid, "lock", state::RUNNING)?;
        if locked.st.faults.lock_times_out() {
            Inflight::Never
        } else {
            locked.st.inflight
        }
    };
    let timeout = u64::from(timeout_ms);
    match inflight {
        Inflight::Ms(ms) if timeout == 0 || ms <= timeout => crate::sleep_ms(ms),
        Inflight::Never if timeout == 0 => {
            // No timeout and work that never finishes: the real driver waits forever. The fake
            // gives up after the hang limit with a code of its own, so that a caller whose
            // timeout arrives as 0 (a wrong struct layout) fails a test instead of hanging it.
            crate::sleep_ms(hang_limit_ms());
            return Err(r::CUDA_ERROR_TIMEOUT);
        }
        _ => {
            crate::sleep_ms(timeout);
            return Err(r::CUDA_ERROR_NOT_READY);
        }
    }
    let mut locked = open_for(pid, "lock", state::RUNNING)?;
    locked.st.state = state::LOCKED;
    locked.save()
}

/// Asks the process's restore thread to carry out `request` (from state `from`), and waits
/// for it to be done.
fn by_restore_thread(pid: c_int, call: &str, from: u32, request: Request) -> Result<(), CUresult> {
    let (seq, wake_fd) = {
        let mut locked = open_for(pid, call, from)?;
        locked.st.request = request;
        locked.st.request_seq = locked.st.done_seq + 1;
        locked.save()?;
        (locked.st.request_seq, locked.st.wake_fd)
    };
    // A missed wake-up costs at most the thread's own 100 ms look.
    if let Ok(mut w) = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{wake_fd}"))
    {
        let _ = w.write(&[1]);
    }
    let deadline = Instant::now()
        + Duration::from_millis(env_ms("FAKECUDA_RESTORE_THREAD_TIMEOUT_MS", 10_000));
    let mut pause = Duration::from_micros(50);
    loop {
        let st = state::read(pid)?;
        if st.done_seq == seq {
            return match st.done_result {
                r::CUDA_SUCCESS => Ok(()),
                code => Err(code),
            };
        }
        if Instant::now() >= deadline {
            // Take the request back, unless the thread is at it (it holds the lock meanwhile,
            // so once this lock is ours it is done or never started).
            let mut locked = Locked::open(pid)?;
            if locked.st.done_seq == seq {
                continue;
            }
            locked.st.request = Request::None;
            locked.st.done_seq = seq;
            locked.st.done_result = r::CUDA_ERROR_TIMEOUT;
            locked.save()?;
            return Err(r::CUDA_ERROR_TIMEOUT);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

fn checkpoint(pid: c_int) -> Result<(), CUresult> {
    by_restore_thread(pid, "checkpoint", state::LOCKED, Request::Checkpoint)
}

/// Validates the GPU pairs of a restore; returns how many there were.
///
/// # Safety
/// `args` is null or points to a `RestoreArgs` whose `gpu_pairs` (when the count is non-zero)
/// points to that many pairs.
unsafe fn gpu_pairs(args: *const RestoreArgs) -> Result<u32, CUresult> {
    if args.is_null() || api::driver_version() < 13000 {
        return Ok(0);
    }
    // SAFETY: non-null, and a RestoreArgs by the caller's contract.
    let a = unsafe { *args };
    if a.gpu_pairs_count == 0 {
        return Ok(0);
    }
    if a.gpu_pairs.is_null() {
        return Err(r::CUDA_ERROR_INVALID_VALUE);
    }
    let count = usize::try_from(a.gpu_pairs_count).map_err(|_| r::CUDA_ERROR_INVALID_VALUE)?;
    // SAFETY: the caller's contract: `count` pairs at `gpu_pairs`.
    let pairs = unsafe { std::slice::from_raw_parts(a.gpu_pairs, count) };
    let known = |u: &[u8; 16]| (0..api::device_count()).any(|d| api::device_uuid(d) == *u);
    if pairs
        .iter()
        .all(|p| known(&p.old_uuid) && known(&p.new_uuid))
    {
        Ok(a.gpu_pairs_count)
    } else {
        Err(r::CUDA_ERROR_INVALID_VALUE)
    }
}

fn restore(pid: c_int) -> Result<(), CUresult> {
    by_restore_thread(pid, "restore", state::CHECKPOINTED, Request::Restore)
}

fn unlock(pid: c_int) -> Result<(), CUresult> {
    let mut locked = open_for(pid, "unlock", state::LOCKED)?;
    locked.st.state = state::RUNNING;
    locked.save()
}

fn result_of(res: Result<(), CUresult>) -> CUresult {
    res.err().unwrap_or(r::CUDA_SUCCESS)
}

#[no_mangle]
pub unsafe extern "C" fn cuCheckpointProcessLock(pid: c_int, args: *const LockArgs) -> CUresult {
    logged("cuCheckpointProcessLock", pid, |detail| {
        let timeout_ms = if args.is_null() {
            0
        } else {
            // SAFETY: non-null, and a LockArgs by the caller's contract.
            unsafe { (*args).timeout_ms }
        };
        *detail = format!("timeout_ms={timeout_ms}");
        result_of(lock(pid, timeout_ms))
    })
}

#[no_mangle]
pub extern "C" fn cuCheckpointProcessCheckpoint(pid: c_int, _args: *const [u64; 8]) -> CUresult {
    logged("cuCheckpointProcessCheckpoint", pid, |_| {
        result_of(checkpoint(pid))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCheckpointProcessRestore(
    pid: c_int,
    args: *const RestoreArgs,
) -> CUresult {
    logged("cuCheckpointProcessRestore", pid, |detail| {
        if !api::initialized() {
            return r::CUDA_ERROR_NOT_INITIALIZED;
        }
        // SAFETY: the caller's contract, passed on.
        let pairs = match unsafe { gpu_pairs(args) } {
            Ok(n) => n,
            Err(c) => {
                *detail = "gpu_pairs=invalid".into();
                return c;
            }
        };
        *detail = format!("gpu_pairs={pairs}");
        result_of(restore(pid))
    })
}

#[no_mangle]
pub extern "C" fn cuCheckpointProcessUnlock(pid: c_int, _args: *const [u64; 8]) -> CUresult {
    logged("cuCheckpointProcessUnlock", pid, |_| result_of(unlock(pid)))
}

#[no_mangle]
pub unsafe extern "C" fn cuCheckpointProcessGetState(pid: c_int, out: *mut u32) -> CUresult {
    logged("cuCheckpointProcessGetState", pid, |detail| {
        if out.is_null() {
            return r::CUDA_ERROR_INVALID_VALUE;
        }
        match state::read(pid) {
            Ok(st) => {
                if let Some(code) = st.faults.result_for("state") {
                    return code;
                }
                *detail = format!("state={}", st.state);
                // SAFETY: non-null, and a writable CUprocessState (a 32-bit enum) by contract.
                unsafe { out.write(st.state) };
                r::CUDA_SUCCESS
            }
            Err(c) => c,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCheckpointProcessGetRestoreThreadId(
    pid: c_int,
    tid: *mut c_int,
) -> CUresult {
    logged("cuCheckpointProcessGetRestoreThreadId", pid, |detail| {
        if tid.is_null() {
            return r::CUDA_ERROR_INVALID_VALUE;
        }
        match state::read(pid) {
            Ok(st) => {
                if let Some(code) = st.faults.result_for("restore-tid") {
                    return code;
                }
                let Some(t) = state::caller_tid(pid, st.restore_tid) else {
                    return r::CUDA_ERROR_INVALID_VALUE;
                };
                *detail = format!("tid={t}");
                // SAFETY: non-null, and a writable int by contract.
                unsafe { tid.write(t) };
                r::CUDA_SUCCESS
            }
            Err(c) => c,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devmem::RELEASED_BYTE;
    use crate::worker;

    fn state_of(pid: c_int) -> u32 {
        state::read(pid).unwrap().state
    }

    /// The whole state machine on this test process, registered once (one registration per
    /// process: every check is in this one test), with its restore thread at work.
    #[test]
    fn the_state_machine_on_a_registered_process() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir(tmp.path().to_path_buf());
        let reg = worker::register(&dir).unwrap();
        let pid = crate::getpid();
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7 % 251) as u8).collect();
        std::os::unix::fs::FileExt::write_all_at(&reg.device, &data, 0).unwrap();
        let device_view = dir.device_path(pid);
        assert_eq!(std::fs::read(&device_view).unwrap(), data);
        assert_eq!(
            state::caller_tid(pid, reg.restore_tid),
            Some(reg.restore_tid)
        );

        // The full cycle, and the calls refused on the way.
        assert_eq!(checkpoint(pid), Err(r::CUDA_ERROR_ILLEGAL_STATE));
        assert_eq!(unlock(pid), Err(r::CUDA_ERROR_ILLEGAL_STATE));
        lock(pid, 1000).unwrap();
        assert_eq!(state_of(pid), state::LOCKED);
        assert_eq!(lock(pid, 1000), Err(r::CUDA_ERROR_ILLEGAL_STATE));
        assert_eq!(restore(pid), Err(r::CUDA_ERROR_ILLEGAL_STATE));
        checkpoint(pid).unwrap();
        assert_eq!(state_of(pid), state::CHECKPOINTED);
        let released = std::fs::read(&device_view).unwrap();
        assert!(released.iter().all(|&b| b == RELEASED_BYTE));
        assert!(dir.host_path(pid).exists());
        assert_eq!(unlock(pid), Err(r::CUDA_ERROR_ILLEGAL_STATE));
        restore(pid).unwrap();
        assert_eq!(std::fs::read(&device_view).unwrap(), data);
        assert!(!dir.host_path(pid).exists());
        unlock(pid).unwrap();
        let st = state::read(pid).unwrap();
        assert_eq!(
            (st.state, st.checkpoints, st.restores),
            (state::RUNNING, 1, 1)
        );

        // Faults: a failing call changes nothing.
        let set_faults = |f: &str| {
            let mut l = Locked::open(pid).unwrap();
            l.st.faults = state::Faults(f.into());
            l.save().unwrap();
        };
        set_faults("checkpoint=out_of_memory,restore=100");
        lock(pid, 100).unwrap();
        assert_eq!(checkpoint(pid), Err(r::CUDA_ERROR_OUT_OF_MEMORY));
        assert_eq!(state_of(pid), state::LOCKED);
        assert_eq!(std::fs::read(&device_view).unwrap(), data);
        unlock(pid).unwrap();

        // Lock timeouts leave the process running.
        set_faults("lock=timeout");
        let t = Instant::now();
        assert_eq!(lock(pid, 50), Err(r::CUDA_ERROR_NOT_READY));
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(state_of(pid), state::RUNNING);
        set_faults("");
        {
            let mut l = Locked::open(pid).unwrap();
            l.st.inflight = Inflight::Ms(200);
            l.save().unwrap();
        }
        assert_eq!(lock(pid, 20), Err(r::CUDA_ERROR_NOT_READY));
        assert_eq!(state_of(pid), state::RUNNING);
        let t = Instant::now();
        lock(pid, 0).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert_eq!(state_of(pid), state::LOCKED);
        unlock(pid).unwrap();
    }

    #[test]
    fn an_unknown_pid_is_invalid() {
        assert_eq!(lock(i32::MAX, 10), Err(r::CUDA_ERROR_INVALID_VALUE));
        assert_eq!(unlock(i32::MAX), Err(r::CUDA_ERROR_INVALID_VALUE));
    }
}

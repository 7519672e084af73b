//! The driver's checkpoint API (r570+, CUDA 12.8+): six calls that one process makes on
//! another, as a per-pid state machine kept in [`crate::state`] files:
//!
//! ```text
//! RUNNING --Lock--> LOCKED --Checkpoint--> CHECKPOINTED --Restore--> LOCKED --Unlock--> RUNNING
//! ```
//!
//! - Lock waits for the process's in-flight work (`FAKECUDA_INFLIGHT_MS`) up to the timeout
//!   of its arguments (0: no timeout); past it the process stays RUNNING and the call returns
//!   `CUDA_ERROR_NOT_READY`. Work that never finishes (`FAKECUDA_FAULTS=lock=timeout`) with
//!   no timeout hangs for `FAKECUDA_HANG_LIMIT_MS` (30 s), then returns `CUDA_ERROR_TIMEOUT`.
//! - Checkpoint copies the process's device memory aside (`<pid>.host`) and scribbles over
//!   it ([`crate::devmem`]); Restore puts it back, and requires that the caller called
//!   `cuInit`. GPU pairs in the restore arguments are read only when the driver version is
//!   13000 or more (before that the fields are reserved), and must name known devices.
//! - A call in the wrong state returns `CUDA_ERROR_ILLEGAL_STATE`; a pid the driver does not
//!   know (no CUDA context, or gone) `CUDA_ERROR_INVALID_VALUE`; a fault injected with the
//!   process's `FAKECUDA_FAULTS` its result, with no state change.
//!
//! Every call appends a line to the call log ([`crate::calllog`]).

// The C API: each function's safety contract is cuda.h's (an argument pointer is null or
// points to the struct; an out-pointer is null or writable).
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_int;
use std::fs::OpenOptions;
use std::io::Write;

use crate::api;
use crate::calllog;
use crate::devmem::RELEASED_BYTE;
use crate::result::{self as r, CUresult};
use crate::state::{self, Inflight, Locked, StateDir};

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
fn logged(name: &str, pid: c_int, f: impl FnOnce(&StateDir, &mut String) -> CUresult) -> CUresult {
    let start = crate::now_ns();
    let dir = StateDir::from_env();
    let mut detail = String::new();
    let code = f(&dir, &mut detail);
    calllog::append(&dir, name, pid, code, start, &detail);
    code
}

/// Opens the pid's state for a transition from `from`, honouring an injected fault for `call`.
fn open_for(dir: &StateDir, pid: c_int, call: &str, from: u32) -> Result<Locked, CUresult> {
    let locked = Locked::open(dir, pid)?;
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
    std::env::var("FAKECUDA_HANG_LIMIT_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(30_000)
}

fn lock(dir: &StateDir, pid: c_int, timeout_ms: u32) -> Result<(), CUresult> {
    // Take the in-flight figure, then wait without holding the file: the process's own calls
    // read its state meanwhile.
    let inflight = {
        let locked = open_for(dir, pid, "lock", state::RUNNING)?;
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
    let mut locked = open_for(dir, pid, "lock", state::RUNNING)?;
    locked.st.state = state::LOCKED;
    locked.save()
}

fn checkpoint(dir: &StateDir, pid: c_int) -> Result<(), CUresult> {
    let mut locked = open_for(dir, pid, "checkpoint", state::LOCKED)?;
    let os = |_: std::io::Error| r::CUDA_ERROR_OPERATING_SYSTEM;
    let dev = dir.device_path(pid);
    std::fs::copy(&dev, dir.host_path(pid)).map_err(os)?;
    // Release the "GPU": what the process reads there now is garbage until a restore.
    let len = std::fs::metadata(&dev).map_err(os)?.len();
    let mut f = OpenOptions::new().write(true).open(&dev).map_err(os)?;
    let chunk = vec![RELEASED_BYTE; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64))
            .map_err(|_| r::CUDA_ERROR_OPERATING_SYSTEM)?;
        f.write_all(&chunk[..n]).map_err(os)?;
        left -= n as u64;
    }
    locked.st.state = state::CHECKPOINTED;
    locked.st.checkpoints += 1;
    locked.save()
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

fn restore(dir: &StateDir, pid: c_int) -> Result<(), CUresult> {
    let mut locked = open_for(dir, pid, "restore", state::CHECKPOINTED)?;
    let os = |_| r::CUDA_ERROR_OPERATING_SYSTEM;
    let host = dir.host_path(pid);
    let mut src = std::fs::File::open(&host).map_err(os)?;
    // Write in place: the process maps this file, replacing it would detach its mappings.
    let mut dst = OpenOptions::new()
        .write(true)
        .open(dir.device_path(pid))
        .map_err(os)?;
    std::io::copy(&mut src, &mut dst).map_err(os)?;
    std::fs::remove_file(&host).map_err(os)?;
    locked.st.state = state::LOCKED;
    locked.st.restores += 1;
    locked.save()
}

fn unlock(dir: &StateDir, pid: c_int) -> Result<(), CUresult> {
    let mut locked = open_for(dir, pid, "unlock", state::LOCKED)?;
    locked.st.state = state::RUNNING;
    locked.save()
}

fn result_of(res: Result<(), CUresult>) -> CUresult {
    res.err().unwrap_or(r::CUDA_SUCCESS)
}

#[no_mangle]
pub unsafe extern "C" fn cuCheckpointProcessLock(pid: c_int, args: *const LockArgs) -> CUresult {
    logged("cuCheckpointProcessLock", pid, |dir, detail| {
        let timeout_ms = if args.is_null() {
            0
        } else {
            // SAFETY: non-null, and a LockArgs by the caller's contract.
            unsafe { (*args).timeout_ms }
        };
        *detail = format!("timeout_ms={timeout_ms}");
        result_of(lock(dir, pid, timeout_ms))
    })
}

#[no_mangle]
pub extern "C" fn cuCheckpointProcessCheckpoint(pid: c_int, _args: *const [u64; 8]) -> CUresult {
    logged("cuCheckpointProcessCheckpoint", pid, |dir, _| {
        result_of(checkpoint(dir, pid))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCheckpointProcessRestore(
    pid: c_int,
    args: *const RestoreArgs,
) -> CUresult {
    logged("cuCheckpointProcessRestore", pid, |dir, detail| {
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
        result_of(restore(dir, pid))
    })
}

#[no_mangle]
pub extern "C" fn cuCheckpointProcessUnlock(pid: c_int, _args: *const [u64; 8]) -> CUresult {
    logged("cuCheckpointProcessUnlock", pid, |dir, _| {
        result_of(unlock(dir, pid))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCheckpointProcessGetState(pid: c_int, out: *mut u32) -> CUresult {
    logged("cuCheckpointProcessGetState", pid, |dir, detail| {
        if out.is_null() {
            return r::CUDA_ERROR_INVALID_VALUE;
        }
        match Locked::open(dir, pid) {
            Ok(l) => {
                if let Some(code) = l.st.faults.result_for("state") {
                    return code;
                }
                *detail = format!("state={}", l.st.state);
                // SAFETY: non-null, and a writable CUprocessState (a 32-bit enum) by contract.
                unsafe { out.write(l.st.state) };
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
    logged(
        "cuCheckpointProcessGetRestoreThreadId",
        pid,
        |dir, detail| {
            if tid.is_null() {
                return r::CUDA_ERROR_INVALID_VALUE;
            }
            match Locked::open(dir, pid) {
                Ok(l) => {
                    if let Some(code) = l.st.faults.result_for("restore-tid") {
                        return code;
                    }
                    *detail = format!("tid={}", l.st.restore_tid);
                    // SAFETY: non-null, and a writable int by contract.
                    unsafe { tid.write(l.st.restore_tid) };
                    r::CUDA_SUCCESS
                }
                Err(c) => c,
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Faults, ProcState};

    /// This test process registered as a CUDA process in a state dir of its own, with 3 pages
    /// of "device memory" holding `data`.
    fn registered(
        faults: &str,
        inflight: Inflight,
    ) -> (tempfile::TempDir, StateDir, c_int, Vec<u8>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir(tmp.path().to_path_buf());
        let pid = crate::getpid();
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.device_path(pid), &data).unwrap();
        let st = ProcState {
            state: state::RUNNING,
            starttime: state::starttime(pid).unwrap(),
            restore_tid: pid,
            inflight,
            faults: Faults(faults.into()),
            allocations: 1,
            device_bytes: data.len() as u64,
            checkpoints: 0,
            restores: 0,
        };
        state::create(&dir, pid, &st).unwrap();
        (tmp, dir, pid, data)
    }

    fn state_of(dir: &StateDir, pid: c_int) -> u32 {
        state::read(dir, pid).unwrap().state
    }

    #[test]
    fn full_cycle_moves_device_memory_out_and_back() {
        let (_tmp, dir, pid, data) = registered("", Inflight::Ms(0));
        assert_eq!(checkpoint(&dir, pid), Err(r::CUDA_ERROR_ILLEGAL_STATE));
        assert_eq!(unlock(&dir, pid), Err(r::CUDA_ERROR_ILLEGAL_STATE));
        lock(&dir, pid, 1000).unwrap();
        assert_eq!(state_of(&dir, pid), state::LOCKED);
        assert_eq!(lock(&dir, pid, 1000), Err(r::CUDA_ERROR_ILLEGAL_STATE));
        assert_eq!(restore(&dir, pid), Err(r::CUDA_ERROR_ILLEGAL_STATE));
        checkpoint(&dir, pid).unwrap();
        assert_eq!(state_of(&dir, pid), state::CHECKPOINTED);
        let released = std::fs::read(dir.device_path(pid)).unwrap();
        assert!(released.iter().all(|&b| b == RELEASED_BYTE));
        assert_eq!(std::fs::read(dir.host_path(pid)).unwrap(), data);
        assert_eq!(unlock(&dir, pid), Err(r::CUDA_ERROR_ILLEGAL_STATE));
        restore(&dir, pid).unwrap();
        assert_eq!(std::fs::read(dir.device_path(pid)).unwrap(), data);
        assert!(!dir.host_path(pid).exists());
        unlock(&dir, pid).unwrap();
        let st = state::read(&dir, pid).unwrap();
        assert_eq!(
            (st.state, st.checkpoints, st.restores),
            (state::RUNNING, 1, 1)
        );
    }

    #[test]
    fn lock_times_out_and_leaves_the_process_running() {
        let (_tmp, dir, pid, _) = registered("lock=timeout", Inflight::Ms(0));
        let t = std::time::Instant::now();
        assert_eq!(lock(&dir, pid, 50), Err(r::CUDA_ERROR_NOT_READY));
        assert!(t.elapsed() >= std::time::Duration::from_millis(50));
        assert_eq!(state_of(&dir, pid), state::RUNNING);

        let (_tmp, dir, pid, _) = registered("", Inflight::Ms(200));
        assert_eq!(lock(&dir, pid, 20), Err(r::CUDA_ERROR_NOT_READY));
        assert_eq!(state_of(&dir, pid), state::RUNNING);
        let t = std::time::Instant::now();
        lock(&dir, pid, 0).unwrap();
        assert!(t.elapsed() >= std::time::Duration::from_millis(200));
        assert_eq!(state_of(&dir, pid), state::LOCKED);
    }

    #[test]
    fn injected_faults_fail_the_call_without_a_transition() {
        let (_tmp, dir, pid, data) =
            registered("checkpoint=out_of_memory,restore=100", Inflight::Ms(0));
        lock(&dir, pid, 100).unwrap();
        assert_eq!(checkpoint(&dir, pid), Err(r::CUDA_ERROR_OUT_OF_MEMORY));
        assert_eq!(state_of(&dir, pid), state::LOCKED);
        assert_eq!(std::fs::read(dir.device_path(pid)).unwrap(), data);
        unlock(&dir, pid).unwrap();
    }

    #[test]
    fn an_unknown_pid_is_invalid() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir(tmp.path().to_path_buf());
        assert_eq!(lock(&dir, 1, 10), Err(r::CUDA_ERROR_INVALID_VALUE));
        assert_eq!(unlock(&dir, i32::MAX), Err(r::CUDA_ERROR_INVALID_VALUE));
    }
}

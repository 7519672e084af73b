//! A fake CUDA driver (`libcuda.so.1`) for testing cryo's GPU checkpoint without a GPU.
//!
//! It exports, with the real driver's names and C signatures, what cudarc needs for a context,
//! streams and events ([`api`]), device and pinned allocations and copies in both directions
//! ([`memory`]; "device" memory is host memory, a shared memfd mapping: [`devmem`]), and the six
//! calls of the driver's checkpoint API (`cuCheckpointProcess*`, [`checkpoint`]).
//!
//! The checkpoint API is called by one process (cryo) on another (the CUDA process). As with
//! the real driver, the state of a CUDA process lives in the process itself ([`state`]: a memfd
//! that callers open through `/proc/PID/fd`), and checkpoints and restores are carried out by
//! its restore thread ([`worker`]), which moves the device memory into the process's host
//! memory and back. So everything travels with the process through a CRIU dump and restore:
//! a restored process (a new host pid, a new start time, the same pid in its namespace) is
//! CHECKPOINTED, and a Restore on it brings its device memory back. The environment drives it:
//!
//! | variable | read by | meaning |
//! |---|---|---|
//! | `FAKECUDA_STATE_DIR` | both sides | where `calls.log` and the per-pid views (`<pid>.state`, `<pid>.dev`, `<pid>.host`) go (default `$TMPDIR/fakecuda-<uid>`) |
//! | `FAKECUDA_FAULTS` | the CUDA process, at context creation | `call=RESULT,...`: make a checkpoint call on this process fail (see [`state::Faults`]) |
//! | `FAKECUDA_INFLIGHT_MS` | the CUDA process, at context creation | GPU work in flight that a lock waits for (ms) |
//! | `FAKECUDA_DRIVER_VERSION` | any process | what `cuDriverGetVersion` answers (default 13000) |
//! | `FAKECUDA_HANG_LIMIT_MS` | the caller | how long a lock without timeout waits for work that never ends (default 30000) |
//! | `FAKECUDA_RESTORE_THREAD_TIMEOUT_MS` | the caller | how long Checkpoint and Restore wait for the process's restore thread (default 10000) |
//! | `FAKECUDA_DEVICE_COUNT` | any process | how many devices (default 1) |
//! | `FAKECUDA_COPY_GBPS` | the copying process | host↔device copy throughput in GB/s (default: memcpy speed) |
//! | `FAKECUDA_COPY_FAIL` | the copying process | `dtoh:N,htod:M`: the Nth copy device→host (Mth host→device) fails with `CUDA_ERROR_ILLEGAL_ADDRESS` |
//!
//! Every checkpoint call appends one line to `calls.log` ([`calllog`]), so tests can check
//! order, arguments and parallelism across processes.
//!
//! What it does not model: kernels, modules, memory pools, unified memory, peer access, and
//! a lock waiting for CUDA calls in progress (only for `FAKECUDA_INFLIGHT_MS`).

pub mod api;
pub mod calllog;
pub mod checkpoint;
pub mod devmem;
pub mod memory;
pub mod result;
pub mod state;
pub mod worker;

use std::time::Duration;

/// The monotonic clock in nanoseconds (CLOCK_MONOTONIC is system-wide, so times taken in
/// different processes compare).
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000_000 + nanos
}

/// The calling process's pid.
pub(crate) fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// The calling thread's id.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Sleeps for `ms` milliseconds.
pub(crate) fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

//! Checkpoint orchestration over the CUDA processes of one process tree (a container): the
//! steps CRIU's cuda plugin takes by spawning `cuda-checkpoint` per process and step, done
//! here in-process, one thread per process, with a barrier between steps:
//!
//! ```text
//! dump:    lock all (timeout) | checkpoint all      → CRIU dumps device memory as host memory
//! restore: (CRIU restores)    | restore all (pairs) | unlock all
//! ```
//!
//! Every process is locked before any is checkpointed, and restored before any is unlocked,
//! so no process runs GPU work while another's device memory is away (CUDA IPC shares device
//! memory between processes). On a failure every process this code changed is put back as it
//! was, RUNNING and unlocked: those checkpointed are restored, those locked unlocked, looked up
//! by their state in the driver (so a call that failed after changing the state is covered);
//! the error returned is the first failure in the order of the pids given, naming its pid.
//! A process the driver cannot put back (FAILED, or a failed restore) is reported in
//! [`GpuError::RollbackFailed`].
//!
//! This module does not find the processes ([`super::discover`]) nor freeze them (CRIU does,
//! and must let each one's restore thread run: [`restore_threads`]).

use std::time::{Duration, Instant};

use super::driver::Driver;
use super::error::GpuError;
use super::ffi::{GpuPair, ProcessState};

/// The lock timeout CRIU's cuda plugin uses by default.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `f` for every pid, one thread each, and returns the results in the order of `pids`.
fn parallel<T: Send>(pids: &[i32], f: impl Fn(i32) -> T + Sync) -> Vec<T> {
    if pids.len() <= 1 {
        return pids.iter().map(|&pid| f(pid)).collect();
    }
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = pids.iter().map(|&pid| s.spawn(move || f(pid))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Splits per-pid results into the pids that succeeded and the errors, in pid order.
fn split(pids: &[i32], results: Vec<Result<(), GpuError>>) -> (Vec<i32>, Vec<GpuError>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (&pid, r) in pids.iter().zip(results) {
        match r {
            Ok(()) => ok.push(pid),
            Err(e) => errors.push(e),
        }
    }
    (ok, errors)
}

/// The error to report: the first failure, with whatever the rollback could not fix.
fn report(mut errors: Vec<GpuError>, rollback: Vec<GpuError>) -> GpuError {
    for extra in errors.iter().skip(1) {
        tracing::warn!(error = %extra, "GPU checkpoint: further failure");
    }
    let cause = errors.swap_remove(0);
    if rollback.is_empty() {
        cause
    } else {
        GpuError::RollbackFailed {
            cause: Box::new(cause),
            failures: rollback,
        }
    }
}

/// Locks every process (RUNNING → LOCKED), in parallel, each waiting up to `timeout` for its
/// GPU work in flight. On any failure the processes locked here are unlocked again.
pub fn lock_all(driver: &dyn Driver, pids: &[i32], timeout: Duration) -> Result<(), GpuError> {
    let start = Instant::now();
    let (locked, errors) = split(pids, parallel(pids, |pid| driver.lock(pid, timeout)));
    if errors.is_empty() {
        tracing::debug!(?pids, elapsed = ?start.elapsed(), "GPU processes locked");
        return Ok(());
    }
    tracing::warn!(error = %errors[0], "GPU lock failed, unlocking {locked:?}");
    Err(report(errors, put_back(driver, &locked)))
}

/// Checkpoints every process (LOCKED → CHECKPOINTED), in parallel: their device memory moves
/// into their host memory. The processes must have been locked by [`lock_all`]; on any
/// failure every one of them is put back to RUNNING.
pub fn checkpoint_all(driver: &dyn Driver, pids: &[i32]) -> Result<(), GpuError> {
    let start = Instant::now();
    let (_, errors) = split(pids, parallel(pids, |pid| driver.checkpoint(pid)));
    if errors.is_empty() {
        tracing::debug!(?pids, elapsed = ?start.elapsed(), "GPU processes checkpointed");
        return Ok(());
    }
    tracing::warn!(error = %errors[0], "GPU checkpoint failed, putting {pids:?} back");
    Err(report(errors, put_back(driver, pids)))
}

/// [`lock_all`] then [`checkpoint_all`]: what comes before CRIU dumps the tree. On success
/// every process is CHECKPOINTED; on failure every one is back to RUNNING, as it was.
pub fn checkpoint(
    driver: &dyn Driver,
    pids: &[i32],
    lock_timeout: Duration,
) -> Result<(), GpuError> {
    lock_all(driver, pids, lock_timeout)?;
    checkpoint_all(driver, pids)
}

/// Restores every process (CHECKPOINTED → LOCKED) onto the GPUs `gpu_pairs` map to (empty:
/// the same ones), then unlocks them all (→ RUNNING), each step in parallel: what comes after
/// CRIU restored the tree, or after a dump that leaves the tree running (or failed).
///
/// The driver cannot undo a failed restore: such a process stays CHECKPOINTED and its error is
/// returned; the processes restored are unlocked all the same, so none is left locked.
pub fn restore_all(
    driver: &dyn Driver,
    pids: &[i32],
    gpu_pairs: &[GpuPair],
) -> Result<(), GpuError> {
    let start = Instant::now();
    let (restored, mut errors) = split(pids, parallel(pids, |pid| driver.restore(pid, gpu_pairs)));
    let (_, unlock_errors) = split(&restored, parallel(&restored, |pid| driver.unlock(pid)));
    errors.extend(unlock_errors);
    if errors.is_empty() {
        tracing::debug!(?pids, elapsed = ?start.elapsed(), "GPU processes restored");
        return Ok(());
    }
    Err(report(errors, Vec::new()))
}

/// The restore thread of each process (CRIU must let it run while the tree is frozen).
pub fn restore_threads(driver: &dyn Driver, pids: &[i32]) -> Result<Vec<(i32, i32)>, GpuError> {
    pids.iter()
        .map(|&pid| Ok((pid, driver.restore_thread(pid)?)))
        .collect()
}

/// Puts each process back to RUNNING from whatever state the driver reports: restores the
/// checkpointed ones (all before any unlock), then unlocks. Returns what could not be done.
fn put_back(driver: &dyn Driver, pids: &[i32]) -> Vec<GpuError> {
    let mut failures = Vec::new();
    let mut to_restore = Vec::new();
    let mut to_unlock = Vec::new();
    for (&pid, state) in pids.iter().zip(parallel(pids, |pid| driver.state(pid))) {
        match state {
            Ok(ProcessState::RUNNING) => {}
            Ok(ProcessState::LOCKED) => to_unlock.push(pid),
            Ok(ProcessState::CHECKPOINTED) => to_restore.push(pid),
            Ok(state) => failures.push(GpuError::Unrecoverable { pid, state }),
            Err(e) => failures.push(e),
        }
    }
    let (restored, errors) = split(
        &to_restore,
        parallel(&to_restore, |pid| driver.restore(pid, &[])),
    );
    failures.extend(errors);
    to_unlock.extend(restored);
    let (_, errors) = split(&to_unlock, parallel(&to_unlock, |pid| driver.unlock(pid)));
    failures.extend(errors);
    for f in &failures {
        tracing::error!(error = %f, "GPU rollback: process not put back");
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::ffi::CuResult;
    use crate::gpu::memory::MemoryDriver;

    const PIDS: [i32; 3] = [101, 102, 103];

    fn driver() -> MemoryDriver {
        let d = MemoryDriver::new();
        for pid in PIDS {
            d.add_process(pid);
        }
        d
    }

    fn states(d: &MemoryDriver) -> Vec<ProcessState> {
        PIDS.iter().map(|&p| d.state_of(p).unwrap()).collect()
    }

    /// The calls made for `pid`, by name, in order.
    fn calls_for(d: &MemoryDriver, pid: i32) -> Vec<&'static str> {
        d.calls()
            .into_iter()
            .filter(|c| c.pid == pid)
            .map(|c| c.call.trim_start_matches("cuCheckpointProcess"))
            .collect()
    }

    #[test]
    fn full_cycle_locks_all_before_checkpointing_any() {
        let d = driver();
        checkpoint(&d, &PIDS, DEFAULT_LOCK_TIMEOUT).unwrap();
        assert_eq!(states(&d), [ProcessState::CHECKPOINTED; 3]);
        let calls = d.calls();
        let last_lock = calls
            .iter()
            .rposition(|c| c.call.ends_with("Lock"))
            .unwrap();
        let first_ckpt = calls
            .iter()
            .position(|c| c.call.ends_with("Checkpoint"))
            .unwrap();
        assert!(last_lock < first_ckpt);

        restore_all(&d, &PIDS, &[]).unwrap();
        assert_eq!(states(&d), [ProcessState::RUNNING; 3]);
        let calls = d.calls();
        let last_restore = calls
            .iter()
            .rposition(|c| c.call.ends_with("Restore"))
            .unwrap();
        let first_unlock = calls
            .iter()
            .position(|c| c.call.ends_with("Unlock"))
            .unwrap();
        assert!(last_restore < first_unlock);
        for pid in PIDS {
            assert_eq!(
                calls_for(&d, pid),
                ["Lock", "Checkpoint", "Restore", "Unlock"]
            );
        }
    }

    #[test]
    fn lock_timeout_unlocks_the_others() {
        let d = driver();
        d.busy(102);
        let e = checkpoint(&d, &PIDS, Duration::from_millis(250)).unwrap_err();
        assert!(
            matches!(
                e,
                GpuError::LockTimeout {
                    pid: 102,
                    timeout_ms: 250
                }
            ),
            "{e}"
        );
        assert_eq!(states(&d), [ProcessState::RUNNING; 3]);
        assert_eq!(calls_for(&d, 101), ["Lock", "GetState", "Unlock"]);
        assert_eq!(calls_for(&d, 102), ["Lock"]);
        assert!(!d.calls().iter().any(|c| c.call.ends_with("Checkpoint")));
    }

    #[test]
    fn a_process_locked_by_someone_else_is_left_locked() {
        let d = driver();
        d.set_state(103, ProcessState::LOCKED);
        let e = lock_all(&d, &PIDS, DEFAULT_LOCK_TIMEOUT).unwrap_err();
        assert_eq!(e.pid(), Some(103));
        assert_eq!(e.result(), Some(CuResult::ILLEGAL_STATE));
        assert_eq!(
            states(&d),
            [
                ProcessState::RUNNING,
                ProcessState::RUNNING,
                ProcessState::LOCKED
            ]
        );
    }

    #[test]
    fn failed_checkpoint_restores_and_unlocks_the_others() {
        let d = driver();
        d.fail(
            102,
            "cuCheckpointProcessCheckpoint",
            CuResult::OUT_OF_MEMORY,
        );
        let e = checkpoint(&d, &PIDS, DEFAULT_LOCK_TIMEOUT).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cuCheckpointProcessCheckpoint(pid 102): CUDA_ERROR_OUT_OF_MEMORY (2)"
        );
        assert_eq!(states(&d), [ProcessState::RUNNING; 3]);
        for pid in [101, 103] {
            assert_eq!(
                calls_for(&d, pid),
                ["Lock", "Checkpoint", "GetState", "Restore", "Unlock"]
            );
        }
        assert_eq!(
            calls_for(&d, 102),
            ["Lock", "Checkpoint", "GetState", "Unlock"]
        );
    }

    #[test]
    fn the_first_failure_in_pid_order_is_reported() {
        let d = driver();
        d.fail(103, "cuCheckpointProcessCheckpoint", CuResult::UNKNOWN);
        d.fail(
            102,
            "cuCheckpointProcessCheckpoint",
            CuResult::OUT_OF_MEMORY,
        );
        let e = checkpoint(&d, &PIDS, DEFAULT_LOCK_TIMEOUT).unwrap_err();
        assert_eq!(e.pid(), Some(102));
        assert_eq!(states(&d), [ProcessState::RUNNING; 3]);
    }

    #[test]
    fn a_rollback_that_fails_says_which_process_is_left() {
        let d = driver();
        d.fail(
            102,
            "cuCheckpointProcessCheckpoint",
            CuResult::OUT_OF_MEMORY,
        );
        d.fail(101, "cuCheckpointProcessRestore", CuResult::NO_DEVICE);
        let e = checkpoint(&d, &PIDS, DEFAULT_LOCK_TIMEOUT).unwrap_err();
        let GpuError::RollbackFailed { cause, failures } = &e else {
            panic!("expected a rollback failure, got {e}");
        };
        assert_eq!(cause.pid(), Some(102));
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].pid(), Some(101));
        assert_eq!(e.pid(), Some(102));
        assert_eq!(
            states(&d),
            [
                ProcessState::CHECKPOINTED,
                ProcessState::RUNNING,
                ProcessState::RUNNING
            ]
        );
        assert!(e.to_string().contains(
            "putting the processes back failed too: cuCheckpointProcessRestore(pid 101): CUDA_ERROR_NO_DEVICE (100)"
        ));
    }

    #[test]
    fn a_failed_restore_is_reported_and_the_others_run() {
        let d = driver();
        checkpoint(&d, &PIDS, DEFAULT_LOCK_TIMEOUT).unwrap();
        d.fail(103, "cuCheckpointProcessRestore", CuResult::OUT_OF_MEMORY);
        let e = restore_all(&d, &PIDS, &[]).unwrap_err();
        assert_eq!(e.pid(), Some(103));
        assert_eq!(
            states(&d),
            [
                ProcessState::RUNNING,
                ProcessState::RUNNING,
                ProcessState::CHECKPOINTED
            ]
        );
    }

    #[test]
    fn unknown_pids_fail_without_touching_the_others() {
        let d = driver();
        let e = checkpoint(&d, &[101, 999], DEFAULT_LOCK_TIMEOUT).unwrap_err();
        assert_eq!(e.pid(), Some(999));
        assert_eq!(e.result(), Some(CuResult::INVALID_VALUE));
        assert_eq!(d.state_of(101), Some(ProcessState::RUNNING));
    }

    #[test]
    fn nothing_to_do_for_no_processes() {
        let d = MemoryDriver::new();
        checkpoint(&d, &[], DEFAULT_LOCK_TIMEOUT).unwrap();
        restore_all(&d, &[], &[]).unwrap();
        assert!(d.calls().is_empty());
    }

    #[test]
    fn restore_threads_are_asked_per_process() {
        let d = driver();
        assert_eq!(
            restore_threads(&d, &PIDS).unwrap(),
            [(101, 101), (102, 102), (103, 103)]
        );
    }
}

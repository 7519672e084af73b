//! [`MemoryDriver`]: the checkpoint API simulated in memory, for unit tests of whatever drives
//! it (the orchestration here, the runtime above). It follows the same state machine and
//! codes as the fake driver (`cryo-fakecuda`), without processes, files or waiting: a "busy"
//! process fails its lock at once with the timeout. The FFI edge itself is tested with the fake.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::driver::{self, Driver};
use super::error::GpuError;
use super::ffi::{CuResult, GpuPair, ProcessState, Uuid};

/// One call made on the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The driver function (`cuCheckpointProcessLock`, ...).
    pub call: &'static str,
    /// The process.
    pub pid: i32,
    /// What it returned.
    pub result: CuResult,
}

#[derive(Debug, Default)]
struct Proc {
    state: u32,
    busy: bool,
    faults: HashMap<&'static str, CuResult>,
}

#[derive(Debug, Default)]
struct Inner {
    procs: HashMap<i32, Proc>,
    calls: Vec<Call>,
    devices: Vec<Uuid>,
}

/// A simulated driver: processes added with [`MemoryDriver::add_process`] start RUNNING; any
/// other pid is unknown (`CUDA_ERROR_INVALID_VALUE`); a call in the wrong state returns
/// `CUDA_ERROR_ILLEGAL_STATE`; an injected fault fails its call with no state change.
#[derive(Debug)]
pub struct MemoryDriver {
    version: i32,
    inner: Mutex<Inner>,
}

impl Default for MemoryDriver {
    fn default() -> Self {
        MemoryDriver::new()
    }
}

impl MemoryDriver {
    /// A CUDA 13.0 driver with no processes.
    pub fn new() -> MemoryDriver {
        MemoryDriver::with_version(13000)
    }

    /// A driver reporting `version`, with one GPU ([`MemoryDriver::GPU0`]).
    pub fn with_version(version: i32) -> MemoryDriver {
        MemoryDriver {
            version,
            inner: Mutex::new(Inner {
                devices: vec![MemoryDriver::GPU0],
                ..Inner::default()
            }),
        }
    }

    /// The UUID of the one GPU a new driver has.
    pub const GPU0: Uuid = [0x6d, 0x65, 0x6d, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    /// Replaces the GPUs the driver sees.
    pub fn set_devices(&self, devices: &[Uuid]) {
        self.inner().devices = devices.to_vec();
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a test already panicked; its data is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a CUDA process, RUNNING.
    pub fn add_process(&self, pid: i32) {
        self.inner().procs.insert(pid, Proc::default());
    }

    /// Makes every `call` (`cuCheckpointProcessCheckpoint`, ...) on `pid` return `result`.
    pub fn fail(&self, pid: i32, call: &'static str, result: CuResult) {
        if let Some(p) = self.inner().procs.get_mut(&pid) {
            p.faults.insert(call, result);
        }
    }

    /// Gives `pid` GPU work that never finishes: its locks time out.
    pub fn busy(&self, pid: i32) {
        if let Some(p) = self.inner().procs.get_mut(&pid) {
            p.busy = true;
        }
    }

    /// Sets a process's state directly (one locked or checkpointed by someone else).
    pub fn set_state(&self, pid: i32, state: ProcessState) {
        if let Some(p) = self.inner().procs.get_mut(&pid) {
            p.state = state.0;
        }
    }

    /// A process's state, `None` if unknown.
    pub fn state_of(&self, pid: i32) -> Option<ProcessState> {
        self.inner().procs.get(&pid).map(|p| ProcessState(p.state))
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.inner().calls.clone()
    }

    /// Runs one transition `from` → `to` for `call` and records it.
    fn transition(
        &self,
        call: &'static str,
        pid: i32,
        from: ProcessState,
        to: ProcessState,
    ) -> u32 {
        let mut inner = self.inner();
        let result = match inner.procs.get_mut(&pid) {
            None => CuResult::INVALID_VALUE,
            Some(p) => {
                if let Some(r) = p.faults.get(call) {
                    *r
                } else if p.state != from.0 {
                    CuResult::ILLEGAL_STATE
                } else if call == "cuCheckpointProcessLock" && p.busy {
                    CuResult::NOT_READY
                } else {
                    p.state = to.0;
                    CuResult::SUCCESS
                }
            }
        };
        inner.calls.push(Call { call, pid, result });
        result.0
    }

    /// Answers a query on `pid` with `f` of its state, recording the call.
    fn query(&self, call: &'static str, pid: i32, f: impl FnOnce(u32) -> i64) -> (u32, i64) {
        let mut inner = self.inner();
        let (result, value) = match inner.procs.get(&pid) {
            None => (CuResult::INVALID_VALUE, 0),
            Some(p) => match p.faults.get(call) {
                Some(r) => (*r, 0),
                None => (CuResult::SUCCESS, f(p.state)),
            },
        };
        inner.calls.push(Call { call, pid, result });
        (result.0, value)
    }
}

impl Driver for MemoryDriver {
    fn version(&self) -> i32 {
        self.version
    }

    fn state(&self, pid: i32) -> Result<ProcessState, GpuError> {
        let (code, state) = self.query("cuCheckpointProcessGetState", pid, i64::from);
        driver::check("cuCheckpointProcessGetState", pid, code)?;
        Ok(ProcessState(u32::try_from(state).unwrap_or(u32::MAX)))
    }

    fn lock(&self, pid: i32, timeout: Duration) -> Result<(), GpuError> {
        let code = self.transition(
            "cuCheckpointProcessLock",
            pid,
            ProcessState::RUNNING,
            ProcessState::LOCKED,
        );
        driver::check_lock(pid, driver::timeout_ms(timeout), code)
    }

    fn checkpoint(&self, pid: i32) -> Result<(), GpuError> {
        let call = "cuCheckpointProcessCheckpoint";
        let code = self.transition(call, pid, ProcessState::LOCKED, ProcessState::CHECKPOINTED);
        driver::check(call, pid, code)
    }

    fn restore(&self, pid: i32, _gpu_pairs: &[GpuPair]) -> Result<(), GpuError> {
        let call = "cuCheckpointProcessRestore";
        let code = self.transition(call, pid, ProcessState::CHECKPOINTED, ProcessState::LOCKED);
        driver::check(call, pid, code)
    }

    fn unlock(&self, pid: i32) -> Result<(), GpuError> {
        let call = "cuCheckpointProcessUnlock";
        let code = self.transition(call, pid, ProcessState::LOCKED, ProcessState::RUNNING);
        driver::check(call, pid, code)
    }

    fn restore_thread(&self, pid: i32) -> Result<i32, GpuError> {
        let call = "cuCheckpointProcessGetRestoreThreadId";
        // The simulated restore thread is the main thread.
        let (code, _) = self.query(call, pid, |_| 0);
        driver::check(call, pid, code)?;
        Ok(pid)
    }

    fn devices(&self) -> Result<Vec<Uuid>, GpuError> {
        Ok(self.inner().devices.clone())
    }
}

//! Errors of GPU checkpointing. Each names the library, the call, the pid and the driver's
//! result involved, so that a message in a log says which process and which step.

use std::path::PathBuf;

use super::ffi::{CuResult, ProcessState};

/// What went wrong loading the CUDA driver or driving its checkpoint API.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No CUDA driver library could be loaded (no NVIDIA driver installed, or not on the
    /// library path), or the library is not a CUDA driver.
    #[error("no CUDA driver: {library}: {reason}")]
    NoDriver {
        /// The path or soname tried.
        library: String,
        /// The loader's message, or what was missing.
        reason: String,
    },
    /// The driver predates the checkpoint API (it needs r570+, CUDA 12.8+).
    #[error("{library}: the CUDA driver has no {symbol}: a driver without the checkpoint API (needs driver r570 or later, CUDA 12.8+)")]
    NoCheckpointApi {
        /// The library loaded.
        library: String,
        /// The first missing function.
        symbol: &'static str,
    },
    /// The driver lacks a function the device-buffer path calls (see
    /// `gpu::buffers::REQUIRED_SYMBOLS`).
    #[error("{library}: the CUDA driver has no {symbol}, which device-buffer snapshots call")]
    MissingFunction {
        /// The library cudarc loads.
        library: String,
        /// The first missing function.
        symbol: &'static str,
    },
    /// A CUDA call of the device-buffer path failed: a copy, an allocation, a stream.
    #[error("{what}: {result}")]
    Cuda {
        /// What was being done, with the buffer and offset involved.
        what: String,
        /// What the driver returned.
        result: CuResult,
    },
    /// A `--cuda-gpu-map` that cannot be applied here (see `gpu::devices::GpuMap`).
    #[error("GPU map: {reason}")]
    GpuMap {
        /// What is wrong, with the entry and the GPUs on each side.
        reason: String,
    },
    /// A driver-wide call (`cuInit`, `cuDriverGetVersion`) failed.
    #[error("{call}: {result}")]
    Driver {
        /// The function.
        call: &'static str,
        /// What it returned.
        result: CuResult,
    },
    /// A checkpoint call on one process failed.
    #[error("{call}(pid {pid}): {result}")]
    Call {
        /// The function (`cuCheckpointProcessCheckpoint`, ...).
        call: &'static str,
        /// The CUDA process.
        pid: i32,
        /// What the driver returned.
        result: CuResult,
    },
    /// The process did not reach a lockable point in time: GPU work still in flight.
    #[error("cuCheckpointProcessLock(pid {pid}): CUDA_ERROR_NOT_READY: still running GPU work after the {timeout_ms} ms lock timeout")]
    LockTimeout {
        /// The CUDA process.
        pid: i32,
        /// The timeout given to the driver.
        timeout_ms: u32,
    },
    /// The driver left a process in a state it cannot be brought back from (FAILED).
    #[error("pid {pid}: the CUDA driver reports it {state}: it cannot be put back to running")]
    Unrecoverable {
        /// The CUDA process.
        pid: i32,
        /// Its state.
        state: ProcessState,
    },
    /// Reading a process's `/proc` entries failed.
    #[error("{}: {source}", path.display())]
    Proc {
        /// The process.
        pid: i32,
        /// The file read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A restored process did not reach its stop (CRIU's `--leave-stopped`) in time.
    #[error("pid {pid}: thread {tid} is in state {state:?}, not stopped: the restored tree must be stopped before its CUDA processes are restored")]
    NotStopped {
        /// The CUDA process.
        pid: i32,
        /// The thread that still runs.
        tid: i32,
        /// Its state letter in /proc (`R`, `S`, ...).
        state: char,
    },
    /// Letting a restore thread run alone (ptrace) failed.
    #[error("pid {pid}: restore thread {tid}: {op}: {source}")]
    Ptrace {
        /// The CUDA process.
        pid: i32,
        /// Its restore thread.
        tid: i32,
        /// The ptrace request or wait that failed.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A step failed and putting the processes back failed too: some are not as they were.
    #[error("{cause}; putting the processes back failed too: {}", list(failures))]
    RollbackFailed {
        /// The failure that started the rollback.
        cause: Box<GpuError>,
        /// What failed while rolling back.
        failures: Vec<GpuError>,
    },
}

fn list(errors: &[GpuError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl GpuError {
    /// The pid of the process the error is about (for a rollback failure, the first cause's).
    pub fn pid(&self) -> Option<i32> {
        match self {
            GpuError::Call { pid, .. }
            | GpuError::LockTimeout { pid, .. }
            | GpuError::Unrecoverable { pid, .. }
            | GpuError::Proc { pid, .. }
            | GpuError::NotStopped { pid, .. }
            | GpuError::Ptrace { pid, .. } => Some(*pid),
            GpuError::RollbackFailed { cause, .. } => cause.pid(),
            _ => None,
        }
    }

    /// The driver's result behind the error, if the driver returned one.
    pub fn result(&self) -> Option<CuResult> {
        match self {
            GpuError::Driver { result, .. }
            | GpuError::Call { result, .. }
            | GpuError::Cuda { result, .. } => Some(*result),
            GpuError::LockTimeout { .. } => Some(CuResult::NOT_READY),
            GpuError::RollbackFailed { cause, .. } => cause.result(),
            _ => None,
        }
    }
}

//! The driver edge: the [`Driver`] trait (the checkpoint API, one call per method, per pid)
//! and [`LibCuda`], its implementation over the real `libcuda.so.1` loaded at run time.
//!
//! Nothing links against CUDA: a machine without the NVIDIA driver builds and runs cryo, and
//! only a GPU checkpoint says "no CUDA driver". The library is opened from a given path, or by
//! its soname `libcuda.so.1` through the loader's search path (as cudarc does), with
//! `RTLD_NODELETE`: once `cuInit` has run, the driver has threads of its own and must never be
//! unloaded. The first checkpoint call initializes the driver in this process (`cuInit(0)`),
//! as NVIDIA's `cuda-checkpoint` tool does; Restore requires it.
//!
//! Tests load the fake driver (the `cryo-fakecuda` crate) through this same code, so the
//! symbol resolution, the argument layouts and the calls are the real ones. Orchestration
//! logic is also tested over [`super::MemoryDriver`].

use std::ffi::c_int;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use libloading::os::unix::Library;

use super::error::GpuError;
use super::ffi::{self, CuResult, GpuPair, LockArgs, ProcessState};

/// The soname of the CUDA driver library.
pub const LIBCUDA: &str = "libcuda.so.1";

/// The driver's checkpoint API, as cryo uses it: each method is one driver call on one
/// process and returns its failure as a [`GpuError`] naming the call and the pid.
pub trait Driver: Send + Sync {
    /// The driver's CUDA version (`cuDriverGetVersion`: 12080 for 12.8).
    fn version(&self) -> i32;
    /// `cuCheckpointProcessGetState`.
    fn state(&self, pid: i32) -> Result<ProcessState, GpuError>;
    /// `cuCheckpointProcessLock`: RUNNING → LOCKED once in-flight work is done, waiting up to
    /// `timeout` ([`GpuError::LockTimeout`] past it, the process staying RUNNING).
    fn lock(&self, pid: i32, timeout: Duration) -> Result<(), GpuError>;
    /// `cuCheckpointProcessCheckpoint`: LOCKED → CHECKPOINTED, device memory moved into the
    /// process's host memory and the GPU released.
    fn checkpoint(&self, pid: i32) -> Result<(), GpuError>;
    /// `cuCheckpointProcessRestore`: CHECKPOINTED → LOCKED, onto the GPUs `gpu_pairs` map to
    /// (none: the same GPUs; pairs are passed only to CUDA 13+ drivers).
    fn restore(&self, pid: i32, gpu_pairs: &[GpuPair]) -> Result<(), GpuError>;
    /// `cuCheckpointProcessUnlock`: LOCKED → RUNNING.
    fn unlock(&self, pid: i32) -> Result<(), GpuError>;
    /// `cuCheckpointProcessGetRestoreThreadId`: the thread that must keep running while the
    /// process is frozen (CRIU lets it run during the checkpoint).
    fn restore_thread(&self, pid: i32) -> Result<i32, GpuError>;
    /// The UUIDs of the GPUs this driver sees, in ordinal order (`cuDeviceGetCount`,
    /// `cuDeviceGet`, `cuDeviceGetUuid_v2`): what a checkpoint records, and what a GPU map's
    /// new side names.
    fn devices(&self) -> Result<Vec<ffi::Uuid>, GpuError>;
}

/// The lock timeout as the driver takes it: milliseconds, at least 1 (0 means no timeout).
pub fn timeout_ms(timeout: Duration) -> u32 {
    u32::try_from(timeout.as_millis())
        .unwrap_or(u32::MAX)
        .max(1)
}

/// A per-process call's result as a `Result`.
pub fn check(call: &'static str, pid: i32, code: u32) -> Result<(), GpuError> {
    match CuResult(code) {
        CuResult::SUCCESS => Ok(()),
        result => Err(GpuError::Call { call, pid, result }),
    }
}

/// A lock's result: `CUDA_ERROR_NOT_READY` is the timeout.
pub fn check_lock(pid: i32, timeout_ms: u32, code: u32) -> Result<(), GpuError> {
    match CuResult(code) {
        CuResult::NOT_READY => Err(GpuError::LockTimeout { pid, timeout_ms }),
        _ => check("cuCheckpointProcessLock", pid, code),
    }
}

/// The functions resolved from the library.
#[derive(Clone, Copy)]
struct Fns {
    init: ffi::CuInit,
    lock: ffi::CuCheckpointProcessLock,
    checkpoint: ffi::CuCheckpointProcessCheckpoint,
    restore: ffi::CuCheckpointProcessRestore,
    unlock: ffi::CuCheckpointProcessUnlock,
    state: ffi::CuCheckpointProcessGetState,
    restore_tid: ffi::CuCheckpointProcessGetRestoreThreadId,
    /// The device queries (every driver has them; `None` only in a library that is not one).
    device_count: Option<ffi::CuDeviceGetCount>,
    device_get: Option<ffi::CuDeviceGet>,
    device_uuid: Option<ffi::CuDeviceGetUuid>,
}

/// The CUDA driver library, loaded at run time.
pub struct LibCuda {
    library: String,
    version: i32,
    fns: Fns,
    init: OnceLock<u32>,
    // Keeps the function pointers valid (and the library is opened RTLD_NODELETE anyway).
    _lib: Library,
}

impl std::fmt::Debug for LibCuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibCuda")
            .field("library", &self.library)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Resolves `name` from `lib` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the function's true C signature.
unsafe fn resolve<T: Copy>(lib: &Library, name: &str) -> Option<T> {
    // SAFETY: by this function's contract, `T` is the symbol's signature; the pointer is
    // copied out and used only while `lib` is alive (LibCuda owns both).
    unsafe { lib.get::<T>(name).ok().map(|s| *s) }
}

impl LibCuda {
    /// Loads the driver from `path`, or by its soname ([`LIBCUDA`]) when `None`.
    pub fn open(path: Option<&Path>) -> Result<LibCuda, GpuError> {
        let library = match path {
            Some(p) => p.display().to_string(),
            None => LIBCUDA.to_string(),
        };
        let flags = libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_NODELETE;
        // SAFETY: loading the CUDA driver runs its initializers, which have no requirements
        // on the caller; it is never unloaded (RTLD_NODELETE), so no finalizer runs early.
        let lib = unsafe {
            match path {
                Some(p) => Library::open(Some(p), flags),
                None => Library::open(Some(LIBCUDA), flags),
            }
        }
        .map_err(|e| GpuError::NoDriver {
            library: library.clone(),
            reason: e.to_string(),
        })?;
        let not_cuda = |symbol: &str| GpuError::NoDriver {
            library: library.clone(),
            reason: format!("no {symbol}: not a CUDA driver"),
        };
        // SAFETY: each type is the function's signature in cuda.h (see `ffi`).
        let init: ffi::CuInit =
            unsafe { resolve(&lib, "cuInit") }.ok_or_else(|| not_cuda("cuInit"))?;
        // SAFETY: as above.
        let get_version: ffi::CuDriverGetVersion = unsafe { resolve(&lib, "cuDriverGetVersion") }
            .ok_or_else(|| not_cuda("cuDriverGetVersion"))?;
        let missing = |symbol: &'static str| GpuError::NoCheckpointApi {
            library: library.clone(),
            symbol,
        };
        // SAFETY: the six types are the signatures in cuda.h (see `ffi`).
        let fns = unsafe {
            Fns {
                init,
                lock: resolve(&lib, "cuCheckpointProcessLock")
                    .ok_or_else(|| missing("cuCheckpointProcessLock"))?,
                checkpoint: resolve(&lib, "cuCheckpointProcessCheckpoint")
                    .ok_or_else(|| missing("cuCheckpointProcessCheckpoint"))?,
                restore: resolve(&lib, "cuCheckpointProcessRestore")
                    .ok_or_else(|| missing("cuCheckpointProcessRestore"))?,
                unlock: resolve(&lib, "cuCheckpointProcessUnlock")
                    .ok_or_else(|| missing("cuCheckpointProcessUnlock"))?,
                state: resolve(&lib, "cuCheckpointProcessGetState")
                    .ok_or_else(|| missing("cuCheckpointProcessGetState"))?,
                restore_tid: resolve(&lib, "cuCheckpointProcessGetRestoreThreadId")
                    .ok_or_else(|| missing("cuCheckpointProcessGetRestoreThreadId"))?,
                device_count: resolve(&lib, "cuDeviceGetCount"),
                device_get: resolve(&lib, "cuDeviceGet"),
                device_uuid: resolve(&lib, "cuDeviceGetUuid_v2")
                    .or_else(|| resolve(&lib, "cuDeviceGetUuid")),
            }
        };
        let mut version: c_int = 0;
        // SAFETY: `version` is a valid out-pointer; cuDriverGetVersion needs no cuInit.
        let code = unsafe { get_version(&mut version) };
        if code != 0 {
            return Err(GpuError::Driver {
                call: "cuDriverGetVersion",
                result: CuResult(code),
            });
        }
        tracing::debug!(%library, version, "CUDA driver loaded");
        Ok(LibCuda {
            library,
            version,
            fns,
            init: OnceLock::new(),
            _lib: lib,
        })
    }

    /// Loads the driver by its soname, as the real one is installed.
    pub fn open_default() -> Result<LibCuda, GpuError> {
        LibCuda::open(None)
    }

    /// The path or soname the driver was loaded from.
    pub fn library(&self) -> &str {
        &self.library
    }

    /// `cuInit(0)`, once per process.
    fn init(&self) -> Result<(), GpuError> {
        // SAFETY: cuInit takes flags only; 0 is the one value allowed.
        let code = *self.init.get_or_init(|| unsafe { (self.fns.init)(0) });
        match CuResult(code) {
            CuResult::SUCCESS => Ok(()),
            result => Err(GpuError::Driver {
                call: "cuInit",
                result,
            }),
        }
    }
}

impl Driver for LibCuda {
    fn version(&self) -> i32 {
        self.version
    }

    fn state(&self, pid: i32) -> Result<ProcessState, GpuError> {
        self.init()?;
        let mut state = 0u32;
        // SAFETY: `state` is a valid out-pointer for the 32-bit CUprocessState.
        let code = unsafe { (self.fns.state)(pid, &mut state) };
        check("cuCheckpointProcessGetState", pid, code)?;
        Ok(ProcessState(state))
    }

    fn lock(&self, pid: i32, timeout: Duration) -> Result<(), GpuError> {
        self.init()?;
        let ms = timeout_ms(timeout);
        let mut args = LockArgs {
            timeout_ms: ms,
            ..LockArgs::default()
        };
        // SAFETY: `args` is a valid LockArgs for the duration of the call.
        let code = unsafe { (self.fns.lock)(pid, &mut args) };
        check_lock(pid, ms, code)
    }

    fn checkpoint(&self, pid: i32) -> Result<(), GpuError> {
        self.init()?;
        let mut args = ffi::CheckpointArgs::default();
        // SAFETY: `args` is a valid, zeroed CheckpointArgs for the duration of the call.
        let code = unsafe { (self.fns.checkpoint)(pid, &mut args) };
        check("cuCheckpointProcessCheckpoint", pid, code)
    }

    fn restore(&self, pid: i32, gpu_pairs: &[GpuPair]) -> Result<(), GpuError> {
        self.init()?;
        let mut args = ffi::restore_args(self.version, gpu_pairs);
        // SAFETY: `args` is valid for the call, and its pair pointer (if any) points into
        // `gpu_pairs`, which outlives it.
        let code = unsafe { (self.fns.restore)(pid, &mut args) };
        check("cuCheckpointProcessRestore", pid, code)
    }

    fn unlock(&self, pid: i32) -> Result<(), GpuError> {
        self.init()?;
        let mut args = ffi::UnlockArgs::default();
        // SAFETY: `args` is a valid, zeroed UnlockArgs for the duration of the call.
        let code = unsafe { (self.fns.unlock)(pid, &mut args) };
        check("cuCheckpointProcessUnlock", pid, code)
    }

    fn restore_thread(&self, pid: i32) -> Result<i32, GpuError> {
        self.init()?;
        let mut tid: c_int = 0;
        // SAFETY: `tid` is a valid out-pointer.
        let code = unsafe { (self.fns.restore_tid)(pid, &mut tid) };
        check("cuCheckpointProcessGetRestoreThreadId", pid, code)?;
        Ok(tid)
    }

    fn devices(&self) -> Result<Vec<ffi::Uuid>, GpuError> {
        self.init()?;
        let missing = |symbol: &'static str| GpuError::MissingFunction {
            library: self.library.clone(),
            symbol,
        };
        let count_fn = self
            .fns
            .device_count
            .ok_or_else(|| missing("cuDeviceGetCount"))?;
        let get_fn = self.fns.device_get.ok_or_else(|| missing("cuDeviceGet"))?;
        let uuid_fn = self
            .fns
            .device_uuid
            .ok_or_else(|| missing("cuDeviceGetUuid_v2"))?;
        let driver = |call: &'static str, code: u32| match CuResult(code) {
            CuResult::SUCCESS => Ok(()),
            result => Err(GpuError::Driver { call, result }),
        };
        let mut count: c_int = 0;
        // SAFETY: `count` is a valid out-pointer.
        driver("cuDeviceGetCount", unsafe { count_fn(&mut count) })?;
        let mut out = Vec::new();
        for ordinal in 0..count {
            let mut dev: c_int = 0;
            // SAFETY: `dev` is a valid out-pointer; `ordinal` is below the count.
            driver("cuDeviceGet", unsafe { get_fn(&mut dev, ordinal) })?;
            let mut uuid: ffi::Uuid = [0; 16];
            // SAFETY: `uuid` is a valid 16-byte CUuuid out-pointer.
            driver("cuDeviceGetUuid_v2", unsafe { uuid_fn(&mut uuid, dev) })?;
            out.push(uuid);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_whole_milliseconds_never_zero() {
        assert_eq!(timeout_ms(Duration::from_secs(10)), 10_000);
        assert_eq!(timeout_ms(Duration::ZERO), 1);
        assert_eq!(timeout_ms(Duration::from_micros(1500)), 1);
        assert_eq!(timeout_ms(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn not_ready_from_a_lock_is_the_timeout() {
        let e = check_lock(42, 200, CuResult::NOT_READY.0).unwrap_err();
        assert!(matches!(
            e,
            GpuError::LockTimeout {
                pid: 42,
                timeout_ms: 200
            }
        ));
        assert_eq!(e.pid(), Some(42));
        let e = check_lock(42, 200, CuResult::ILLEGAL_STATE.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cuCheckpointProcessLock(pid 42): CUDA_ERROR_ILLEGAL_STATE (401)"
        );
        assert!(check("cuCheckpointProcessUnlock", 1, 0).is_ok());
    }

    #[test]
    fn a_missing_library_is_no_driver() {
        let e = LibCuda::open(Some(Path::new("/nonexistent/libcuda.so.1"))).unwrap_err();
        assert!(matches!(e, GpuError::NoDriver { .. }), "{e}");
        assert!(e
            .to_string()
            .starts_with("no CUDA driver: /nonexistent/libcuda.so.1: "));
    }

    #[test]
    fn a_library_that_is_not_cuda_is_no_driver() {
        let e = LibCuda::open(Some(Path::new("libm.so.6"))).unwrap_err();
        assert!(
            matches!(&e, GpuError::NoDriver { reason, .. } if reason.contains("no cuInit")),
            "{e}"
        );
    }
}

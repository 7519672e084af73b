//! The C side of the driver's checkpoint API, declared here rather than taken from cudarc
//! (which has the argument types but not the six functions): the 64-byte argument structs,
//! `CUresult` and `CUprocessState` as plain integers, and the function signatures.
//!
//! One declaration serves every driver: `RestoreArgs` is CUDA 13's layout, whose GPU-pair
//! fields are reserved zeros on 12.8/12.9 drivers; [`restore_args`] fills them only when the
//! driver says 13000 or more. States and results are read as `u32`, never straight into a Rust
//! enum: newer drivers add values (13.4: CHECKPOINTING 4, RESTORING 5).
//! The layouts are checked against cudarc's `driver::sys` in this module's tests.

use std::ffi::c_int;
use std::fmt;

/// A `CUresult`: 0 is success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CuResult(pub u32);

impl CuResult {
    pub const SUCCESS: CuResult = CuResult(0);
    pub const INVALID_VALUE: CuResult = CuResult(1);
    pub const OUT_OF_MEMORY: CuResult = CuResult(2);
    pub const NOT_INITIALIZED: CuResult = CuResult(3);
    pub const NO_DEVICE: CuResult = CuResult(100);
    pub const INVALID_DEVICE: CuResult = CuResult(101);
    pub const INVALID_CONTEXT: CuResult = CuResult(201);
    pub const OPERATING_SYSTEM: CuResult = CuResult(304);
    pub const INVALID_HANDLE: CuResult = CuResult(400);
    pub const ILLEGAL_STATE: CuResult = CuResult(401);
    pub const NOT_FOUND: CuResult = CuResult(500);
    pub const NOT_READY: CuResult = CuResult(600);
    pub const NOT_PERMITTED: CuResult = CuResult(800);
    pub const NOT_SUPPORTED: CuResult = CuResult(801);
    pub const TIMEOUT: CuResult = CuResult(909);
    pub const UNKNOWN: CuResult = CuResult(999);

    /// The code's name in cuda.h (`CUDA_ERROR_NOT_READY`), for the codes these calls return.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "CUDA_SUCCESS",
            1 => "CUDA_ERROR_INVALID_VALUE",
            2 => "CUDA_ERROR_OUT_OF_MEMORY",
            3 => "CUDA_ERROR_NOT_INITIALIZED",
            4 => "CUDA_ERROR_DEINITIALIZED",
            34 => "CUDA_ERROR_STUB_LIBRARY",
            46 => "CUDA_ERROR_DEVICE_UNAVAILABLE",
            100 => "CUDA_ERROR_NO_DEVICE",
            101 => "CUDA_ERROR_INVALID_DEVICE",
            201 => "CUDA_ERROR_INVALID_CONTEXT",
            214 => "CUDA_ERROR_ECC_UNCORRECTABLE",
            304 => "CUDA_ERROR_OPERATING_SYSTEM",
            400 => "CUDA_ERROR_INVALID_HANDLE",
            401 => "CUDA_ERROR_ILLEGAL_STATE",
            500 => "CUDA_ERROR_NOT_FOUND",
            600 => "CUDA_ERROR_NOT_READY",
            700 => "CUDA_ERROR_ILLEGAL_ADDRESS",
            800 => "CUDA_ERROR_NOT_PERMITTED",
            801 => "CUDA_ERROR_NOT_SUPPORTED",
            802 => "CUDA_ERROR_SYSTEM_NOT_READY",
            803 => "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
            909 => "CUDA_ERROR_TIMEOUT",
            999 => "CUDA_ERROR_UNKNOWN",
            _ => return None,
        })
    }
}

impl fmt::Display for CuResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.0),
            None => write!(f, "CUresult {}", self.0),
        }
    }
}

/// A `CUprocessState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessState(pub u32);

impl ProcessState {
    pub const RUNNING: ProcessState = ProcessState(0);
    pub const LOCKED: ProcessState = ProcessState(1);
    pub const CHECKPOINTED: ProcessState = ProcessState(2);
    pub const FAILED: ProcessState = ProcessState(3);
    /// CUDA 13.4 and later, while a checkpoint is in progress.
    pub const CHECKPOINTING: ProcessState = ProcessState(4);
    /// CUDA 13.4 and later, while a restore is in progress.
    pub const RESTORING: ProcessState = ProcessState(5);
}

impl fmt::Display for ProcessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("running"),
            1 => f.write_str("locked"),
            2 => f.write_str("checkpointed"),
            3 => f.write_str("failed"),
            4 => f.write_str("checkpointing"),
            5 => f.write_str("restoring"),
            n => write!(f, "state {n}"),
        }
    }
}

/// A GPU's UUID (`CUuuid`).
pub type Uuid = [u8; 16];

/// `CUcheckpointGpuPair`: restore what ran on GPU `old` onto GPU `new`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuPair {
    pub old_uuid: Uuid,
    pub new_uuid: Uuid,
}

/// `CUcheckpointLockArgs`. The field order matters: a swapped one gives a zero timeout
/// (wait forever) without any error.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LockArgs {
    pub timeout_ms: u32,
    pub reserved0: u32,
    pub reserved1: [u64; 7],
}

/// `CUcheckpointCheckpointArgs` (all reserved up to CUDA 13.3).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointArgs {
    pub reserved: [u64; 8],
}

/// `CUcheckpointUnlockArgs` (all reserved).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UnlockArgs {
    pub reserved: [u64; 8],
}

/// `CUcheckpointRestoreArgs` as CUDA 13 lays it out; on 12.8/12.9 the same 64 bytes are
/// reserved and must be zero.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RestoreArgs {
    pub gpu_pairs: *const GpuPair,
    pub gpu_pairs_count: u32,
    pub reserved0: u32,
    pub reserved1: [u64; 6],
}

const _: () = assert!(std::mem::size_of::<LockArgs>() == 64);
const _: () = assert!(std::mem::size_of::<CheckpointArgs>() == 64);
const _: () = assert!(std::mem::size_of::<UnlockArgs>() == 64);
const _: () = assert!(std::mem::size_of::<RestoreArgs>() == 64);
const _: () = assert!(std::mem::size_of::<GpuPair>() == 32);

/// The first driver version whose restore arguments carry GPU pairs.
pub const GPU_PAIRS_MIN_VERSION: i32 = 13000;

/// The restore arguments for a driver of `version`: `pairs` go in only from 13000 on (the
/// pointer must then outlive the call); before that every byte is zero.
pub fn restore_args(version: i32, pairs: &[GpuPair]) -> RestoreArgs {
    let mut args = RestoreArgs {
        gpu_pairs: std::ptr::null(),
        gpu_pairs_count: 0,
        reserved0: 0,
        reserved1: [0; 6],
    };
    if version >= GPU_PAIRS_MIN_VERSION && !pairs.is_empty() {
        args.gpu_pairs = pairs.as_ptr();
        args.gpu_pairs_count = u32::try_from(pairs.len()).unwrap_or(u32::MAX);
    }
    args
}

pub type CuInit = unsafe extern "C" fn(flags: u32) -> u32;
pub type CuDeviceGetCount = unsafe extern "C" fn(count: *mut c_int) -> u32;
pub type CuDeviceGet = unsafe extern "C" fn(device: *mut c_int, ordinal: c_int) -> u32;
pub type CuDeviceGetUuid = unsafe extern "C" fn(uuid: *mut Uuid, device: c_int) -> u32;
pub type CuDriverGetVersion = unsafe extern "C" fn(version: *mut c_int) -> u32;
pub type CuCheckpointProcessLock = unsafe extern "C" fn(pid: c_int, args: *mut LockArgs) -> u32;
pub type CuCheckpointProcessCheckpoint =
    unsafe extern "C" fn(pid: c_int, args: *mut CheckpointArgs) -> u32;
pub type CuCheckpointProcessRestore =
    unsafe extern "C" fn(pid: c_int, args: *mut RestoreArgs) -> u32;
pub type CuCheckpointProcessUnlock = unsafe extern "C" fn(pid: c_int, args: *mut UnlockArgs) -> u32;
pub type CuCheckpointProcessGetState = unsafe extern "C" fn(pid: c_int, state: *mut u32) -> u32;
pub type CuCheckpointProcessGetRestoreThreadId =
    unsafe extern "C" fn(pid: c_int, tid: *mut c_int) -> u32;

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use cudarc::driver::sys;

    use super::*;

    #[test]
    fn layouts_match_cudarc() {
        assert_eq!(
            size_of::<LockArgs>(),
            size_of::<sys::CUcheckpointLockArgs>()
        );
        assert_eq!(
            offset_of!(LockArgs, timeout_ms),
            offset_of!(sys::CUcheckpointLockArgs_st, timeoutMs)
        );
        assert_eq!(
            offset_of!(LockArgs, reserved0),
            offset_of!(sys::CUcheckpointLockArgs_st, reserved0)
        );
        assert_eq!(
            offset_of!(LockArgs, reserved1),
            offset_of!(sys::CUcheckpointLockArgs_st, reserved1)
        );
        assert_eq!(
            size_of::<CheckpointArgs>(),
            size_of::<sys::CUcheckpointCheckpointArgs>()
        );
        assert_eq!(
            size_of::<UnlockArgs>(),
            size_of::<sys::CUcheckpointUnlockArgs>()
        );
        // cudarc is built for 12.8 here, whose RestoreArgs is reserved[8]: same size; the
        // 13.x field offsets are CUDA 13's header (gpuPairs at 0, gpuPairsCount at 8).
        assert_eq!(
            size_of::<RestoreArgs>(),
            size_of::<sys::CUcheckpointRestoreArgs>()
        );
        assert_eq!(offset_of!(RestoreArgs, gpu_pairs), 0);
        assert_eq!(offset_of!(RestoreArgs, gpu_pairs_count), 8);
        assert_eq!(size_of::<GpuPair>(), 2 * size_of::<sys::CUuuid>());
        assert_eq!(size_of::<u32>(), size_of::<sys::CUprocessState>());
        assert_eq!(size_of::<u32>(), size_of::<sys::CUresult>());
    }

    #[test]
    fn known_codes_match_cudarc() {
        use sys::cudaError_enum as E;
        for (ours, theirs) in [
            (CuResult::INVALID_VALUE, E::CUDA_ERROR_INVALID_VALUE),
            (CuResult::NOT_INITIALIZED, E::CUDA_ERROR_NOT_INITIALIZED),
            (CuResult::ILLEGAL_STATE, E::CUDA_ERROR_ILLEGAL_STATE),
            (CuResult::NOT_FOUND, E::CUDA_ERROR_NOT_FOUND),
            (CuResult::NOT_READY, E::CUDA_ERROR_NOT_READY),
            (CuResult::NOT_SUPPORTED, E::CUDA_ERROR_NOT_SUPPORTED),
            (CuResult::OPERATING_SYSTEM, E::CUDA_ERROR_OPERATING_SYSTEM),
            (CuResult::UNKNOWN, E::CUDA_ERROR_UNKNOWN),
        ] {
            assert_eq!(ours.0, theirs as u32);
            assert_eq!(ours.name(), Some(format!("{theirs:?}").as_str()));
        }
        use sys::CUprocessState_enum as S;
        assert_eq!(ProcessState::LOCKED.0, S::CU_PROCESS_STATE_LOCKED as u32);
        assert_eq!(
            ProcessState::CHECKPOINTED.0,
            S::CU_PROCESS_STATE_CHECKPOINTED as u32
        );
        assert_eq!(ProcessState::FAILED.0, S::CU_PROCESS_STATE_FAILED as u32);
    }

    #[test]
    fn gpu_pairs_only_from_cuda_13() {
        let pairs = [GpuPair {
            old_uuid: [1; 16],
            new_uuid: [2; 16],
        }];
        let old = restore_args(12080, &pairs);
        assert!(old.gpu_pairs.is_null());
        assert_eq!(old.gpu_pairs_count, 0);
        let new = restore_args(13000, &pairs);
        assert_eq!(new.gpu_pairs, pairs.as_ptr());
        assert_eq!(new.gpu_pairs_count, 1);
        assert!(restore_args(13000, &[]).gpu_pairs.is_null());
    }

    #[test]
    fn names_and_states_print() {
        assert_eq!(
            CuResult::NOT_READY.to_string(),
            "CUDA_ERROR_NOT_READY (600)"
        );
        assert_eq!(CuResult(12345).to_string(), "CUresult 12345");
        assert_eq!(ProcessState(5).to_string(), "restoring");
        assert_eq!(ProcessState(9).to_string(), "state 9");
    }
}

//! The exports for initialization, the driver's version, error strings, devices, the primary
//! context, streams and events (memory is in [`crate::memory`]), and the process-wide state
//! they share: registration with the checkpoint state machine and the gate every call passes.
//!
//! Work runs synchronously on the calling thread, so streams and events are bare handles and
//! every "async" call has finished when it returns. The first `cuDevicePrimaryCtxRetain`
//! registers the process with the checkpoint state machine ([`crate::worker`]); from then on
//! every call first waits while the process is LOCKED or CHECKPOINTED, as the real driver
//! blocks a locked process's CUDA calls until it is unlocked.
//!
//! All functions follow cuda.h's contract: out-pointers are null or point to writable
//! storage of the type, device pointers come from `cuMemAlloc_v2`, host pointers cover the
//! byte count. A null out-pointer is answered with `CUDA_ERROR_INVALID_VALUE`, a device range
//! outside every allocation with `CUDA_ERROR_INVALID_VALUE`.

// The C API: each function's safety contract is cuda.h's, stated once above.
#![allow(clippy::missing_safety_doc)]

use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::calllog;
use crate::devmem::DevMem;
use crate::result::{self as r, CUresult};
use crate::state::{self, StateDir};
use crate::worker;

/// Opaque handle types (pointers in cuda.h).
pub type CUcontext = *mut c_void;
pub type CUstream = *mut c_void;
pub type CUevent = *mut c_void;
pub type CUdevice = c_int;
pub type CUdeviceptr = u64;

const ATTR_MAX_THREADS_PER_BLOCK: c_uint = 1;
const ATTR_WARP_SIZE: c_uint = 10;
const ATTR_MULTIPROCESSOR_COUNT: c_uint = 16;
const ATTR_CAN_MAP_HOST_MEMORY: c_uint = 19;
const ATTR_UNIFIED_ADDRESSING: c_uint = 41;
const ATTR_COMPUTE_CAPABILITY_MAJOR: c_uint = 75;
const ATTR_COMPUTE_CAPABILITY_MINOR: c_uint = 76;

/// What one fake device reports as its total memory.
pub(crate) const DEVICE_MEMORY: usize = 80 << 30;

static INITIALIZED: AtomicBool = AtomicBool::new(false);
/// The pid that registered (0: none yet); a forked child is not registered.
static REGISTERED_PID: AtomicI32 = AtomicI32::new(0);
static CTX_REFS: AtomicU32 = AtomicU32::new(0);
static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(1);
/// Its address is the primary context's handle.
static PRIMARY_CTX: u8 = 0;
static DEVICE: Mutex<Option<DevMem>> = Mutex::new(None);
/// This process's state memfd, once registered.
static STATE: Mutex<Option<Arc<File>>> = Mutex::new(None);
pub(crate) static PINNED: Mutex<Option<HashMap<usize, Layout>>> = Mutex::new(None);

/// Whether this process called `cuInit` (the real driver requires it of a Restore caller).
pub fn initialized() -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

/// `FAKECUDA_DRIVER_VERSION`, default 13000 (CUDA 13.0).
pub fn driver_version() -> c_int {
    std::env::var("FAKECUDA_DRIVER_VERSION")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(13000)
}

/// `FAKECUDA_DEVICE_COUNT`, default 1.
pub fn device_count() -> c_int {
    std::env::var("FAKECUDA_DEVICE_COUNT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1)
}

/// The UUID of device `ordinal`: `fa ce c0 da 00 .. 00 <ordinal>`.
pub fn device_uuid(ordinal: c_int) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[..4].copy_from_slice(&[0xfa, 0xce, 0xc0, 0xda]);
    u[12..].copy_from_slice(&ordinal.to_be_bytes());
    u
}

pub(crate) fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    // A panic cannot unwind out of an extern "C" fn (it aborts), so a poisoned lock only
    // means a panic in a test: the data is still consistent enough to go on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `v` through a C out-pointer.
///
/// # Safety
/// `p` is null or valid for writing a `T`.
pub(crate) unsafe fn put<T>(p: *mut T, v: T) -> CUresult {
    if p.is_null() {
        return r::CUDA_ERROR_INVALID_VALUE;
    }
    // SAFETY: non-null, and valid for writes by the caller's contract.
    unsafe { p.write(v) };
    r::CUDA_SUCCESS
}

pub(crate) fn code(res: Result<(), CUresult>) -> CUresult {
    match res {
        Ok(()) => r::CUDA_SUCCESS,
        Err(c) => c,
    }
}

fn new_handle() -> *mut c_void {
    // Distinct, non-null, never dereferenced.
    (NEXT_HANDLE.fetch_add(1, Ordering::Relaxed) << 4) as *mut c_void
}

fn check_device(dev: CUdevice) -> Result<(), CUresult> {
    if !initialized() {
        return Err(r::CUDA_ERROR_NOT_INITIALIZED);
    }
    if dev < 0 || dev >= device_count() {
        return Err(r::CUDA_ERROR_INVALID_DEVICE);
    }
    Ok(())
}

/// Waits while this process is LOCKED or CHECKPOINTED, as a locked process's CUDA calls block
/// in the real driver; FAILED fails every call. Reads the state without a lock (see
/// [`crate::state`]).
pub(crate) fn gate() -> Result<(), CUresult> {
    let pid = crate::getpid();
    if REGISTERED_PID.load(Ordering::SeqCst) != pid {
        return Ok(());
    }
    let Some(file) = lock(&STATE).clone() else {
        return Ok(());
    };
    loop {
        match state::read_file(&file).map(|s| s.state) {
            None | Some(state::RUNNING) => return Ok(()),
            Some(state::FAILED) => return Err(r::CUDA_ERROR_ILLEGAL_STATE),
            Some(_) => crate::sleep_ms(1),
        }
    }
}

/// Registers this process with the checkpoint state machine ([`crate::worker::register`]):
/// its state, its device memory and its restore thread.
fn register(device: &mut Option<DevMem>) -> Result<(), CUresult> {
    let pid = crate::getpid();
    if REGISTERED_PID.load(Ordering::SeqCst) == pid && device.is_some() {
        return Ok(());
    }
    let start = crate::now_ns();
    let dir = StateDir::from_env();
    let reg = worker::register(&dir)?;
    *device = Some(DevMem::new(reg.device));
    *lock(&STATE) = Some(reg.state);
    REGISTERED_PID.store(pid, Ordering::SeqCst);
    calllog::append(
        &dir,
        "cuDevicePrimaryCtxRetain",
        pid,
        r::CUDA_SUCCESS,
        start,
        "",
    );
    Ok(())
}

/// Records the device memory in use in this process's state.
pub(crate) fn publish_stats(device: &DevMem) {
    let (allocations, bytes) = device.stats();
    if let Some(file) = lock(&STATE).clone() {
        let _ = worker::update(&file, |st| {
            st.allocations = allocations;
            st.device_bytes = bytes;
        });
    }
}

pub(crate) fn with_device<T>(
    f: impl FnOnce(&mut DevMem) -> Result<T, CUresult>,
) -> Result<T, CUresult> {
    let mut guard = lock(&DEVICE);
    match guard.as_mut() {
        Some(d) => f(d),
        None => Err(r::CUDA_ERROR_INVALID_CONTEXT),
    }
}

pub(crate) fn check_range(dptr: CUdeviceptr, len: usize) -> Result<(), CUresult> {
    with_device(|d| {
        if d.contains(dptr, len) {
            Ok(())
        } else {
            Err(r::CUDA_ERROR_INVALID_VALUE)
        }
    })
}

// ---- initialization, version, errors ----

#[no_mangle]
pub extern "C" fn cuInit(flags: c_uint) -> CUresult {
    if flags != 0 {
        return r::CUDA_ERROR_INVALID_VALUE;
    }
    INITIALIZED.store(true, Ordering::SeqCst);
    r::CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CUresult {
    // SAFETY: cuda.h contract.
    unsafe { put(version, driver_version()) }
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(error: CUresult, out: *mut *const c_char) -> CUresult {
    match r::name(error) {
        // SAFETY: cuda.h contract; the string is static.
        Some(n) => unsafe { put(out, n.as_ptr()) },
        None => {
            // SAFETY: cuda.h contract.
            unsafe { put(out, std::ptr::null()) };
            r::CUDA_ERROR_INVALID_VALUE
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(error: CUresult, out: *mut *const c_char) -> CUresult {
    match r::description(error) {
        // SAFETY: cuda.h contract; the string is static.
        Some(n) => unsafe { put(out, n.as_ptr()) },
        None => {
            // SAFETY: cuda.h contract.
            unsafe { put(out, std::ptr::null()) };
            r::CUDA_ERROR_INVALID_VALUE
        }
    }
}

// ---- devices ----

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    if !initialized() {
        return r::CUDA_ERROR_NOT_INITIALIZED;
    }
    // SAFETY: cuda.h contract.
    unsafe { put(count, device_count()) }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    if let Err(c) = check_device(ordinal) {
        return c;
    }
    // SAFETY: cuda.h contract.
    unsafe { put(device, ordinal) }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    if let Err(c) = check_device(dev) {
        return c;
    }
    let text = format!("cryo fakecuda {dev}");
    let Ok(len) = usize::try_from(len) else {
        return r::CUDA_ERROR_INVALID_VALUE;
    };
    if name.is_null() || len == 0 {
        return r::CUDA_ERROR_INVALID_VALUE;
    }
    let n = text.len().min(len - 1);
    // SAFETY: cuda.h contract: `name` holds `len` bytes; n + 1 <= len.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr().cast::<c_char>(), name, n);
        name.add(n).write(0);
    }
    r::CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    if let Err(c) = check_device(dev) {
        return c;
    }
    // SAFETY: cuda.h contract.
    unsafe { put(bytes, DEVICE_MEMORY) }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    if let Err(c) = check_device(dev) {
        return c;
    }
    // SAFETY: cuda.h contract (CUuuid is 16 bytes).
    unsafe { put(uuid, device_uuid(dev)) }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuDeviceGetUuid(uuid, dev) }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    value: *mut c_int,
    attrib: c_uint,
    dev: CUdevice,
) -> CUresult {
    if let Err(c) = check_device(dev) {
        return c;
    }
    // Memory pools are reported as unsupported, so cudarc allocates with cuMemAlloc_v2.
    let v = match attrib {
        ATTR_MAX_THREADS_PER_BLOCK => 1024,
        ATTR_WARP_SIZE => 32,
        ATTR_MULTIPROCESSOR_COUNT => 1,
        ATTR_CAN_MAP_HOST_MEMORY | ATTR_UNIFIED_ADDRESSING => 1,
        ATTR_COMPUTE_CAPABILITY_MAJOR => 9,
        ATTR_COMPUTE_CAPABILITY_MINOR => 0,
        _ => 0,
    };
    // SAFETY: cuda.h contract.
    unsafe { put(value, v) }
}

// ---- contexts ----

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    if let Err(c) = check_device(dev) {
        return c;
    }
    if let Err(c) = register(&mut lock(&DEVICE)) {
        return c;
    }
    CTX_REFS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: cuda.h contract.
    unsafe { put(ctx, std::ptr::addr_of!(PRIMARY_CTX).cast_mut().cast()) }
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    if let Err(c) = check_device(dev) {
        return c;
    }
    // The process stays registered: its state outlives the context, as tests want to read it.
    match CTX_REFS.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
        Ok(_) => r::CUDA_SUCCESS,
        Err(_) => r::CUDA_ERROR_INVALID_CONTEXT,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut CUcontext) -> CUresult {
    if !initialized() {
        return r::CUDA_ERROR_NOT_INITIALIZED;
    }
    // One context per process, current on every thread once retained.
    let current = if CTX_REFS.load(Ordering::SeqCst) > 0 {
        std::ptr::addr_of!(PRIMARY_CTX).cast_mut().cast()
    } else {
        std::ptr::null_mut()
    };
    // SAFETY: cuda.h contract.
    unsafe { put(ctx, current) }
}

#[no_mangle]
pub extern "C" fn cuCtxSetCurrent(ctx: CUcontext) -> CUresult {
    if ctx.is_null() || ctx == std::ptr::addr_of!(PRIMARY_CTX).cast_mut().cast() {
        r::CUDA_SUCCESS
    } else {
        r::CUDA_ERROR_INVALID_CONTEXT
    }
}

#[no_mangle]
pub extern "C" fn cuCtxSynchronize() -> CUresult {
    code(gate())
}

// ---- streams and events ----

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut CUstream, _flags: c_uint) -> CUresult {
    if let Err(c) = gate() {
        return c;
    }
    // SAFETY: cuda.h contract.
    unsafe { put(stream, new_handle()) }
}

#[no_mangle]
pub extern "C" fn cuStreamDestroy_v2(_stream: CUstream) -> CUresult {
    r::CUDA_SUCCESS
}

#[no_mangle]
pub extern "C" fn cuStreamSynchronize(_stream: CUstream) -> CUresult {
    code(gate())
}

#[no_mangle]
pub extern "C" fn cuStreamWaitEvent(
    _stream: CUstream,
    _event: CUevent,
    _flags: c_uint,
) -> CUresult {
    code(gate())
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(event: *mut CUevent, _flags: c_uint) -> CUresult {
    if let Err(c) = gate() {
        return c;
    }
    // SAFETY: cuda.h contract.
    unsafe { put(event, new_handle()) }
}

#[no_mangle]
pub extern "C" fn cuEventRecord(_event: CUevent, _stream: CUstream) -> CUresult {
    code(gate())
}

#[no_mangle]
pub extern "C" fn cuEventSynchronize(_event: CUevent) -> CUresult {
    code(gate())
}

#[no_mangle]
pub extern "C" fn cuEventQuery(_event: CUevent) -> CUresult {
    r::CUDA_SUCCESS
}

#[no_mangle]
pub extern "C" fn cuEventDestroy_v2(_event: CUevent) -> CUresult {
    r::CUDA_SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_name_the_ordinal() {
        assert_eq!(device_uuid(0)[..4], [0xfa, 0xce, 0xc0, 0xda]);
        assert_ne!(device_uuid(0), device_uuid(1));
        assert_eq!(device_uuid(1)[15], 1);
    }

    #[test]
    fn error_names_come_back_through_the_c_api() {
        let mut p: *const c_char = std::ptr::null();
        // SAFETY: `p` is a valid out-pointer.
        assert_eq!(unsafe { cuGetErrorName(401, &mut p) }, r::CUDA_SUCCESS);
        // SAFETY: the fake returned a static NUL-terminated string.
        let name = unsafe { std::ffi::CStr::from_ptr(p) };
        assert_eq!(name.to_str().unwrap(), "CUDA_ERROR_ILLEGAL_STATE");
        // SAFETY: `p` is a valid out-pointer.
        let unknown = unsafe { cuGetErrorName(4242, &mut p) };
        assert_eq!(unknown, r::CUDA_ERROR_INVALID_VALUE);
        assert!(p.is_null());
    }
}

//! The CUDA edge of the device-buffer path: which driver library cudarc will load, checked
//! before cudarc touches it (cudarc panics on a missing library or function), the device
//! context, and the raw copies between device memory and staging slots.

use std::path::Path;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};
use libloading::Library;

use crate::gpu::ffi::CuResult;
use crate::gpu::GpuError;

/// What cudarc calls on the device-buffer path: the context, streams, events (cudarc tracks
/// buffers with events once a context has several streams), allocations, pinned host memory
/// and copies in both directions. A driver (or fake) missing one of these would make cudarc
/// panic mid-copy; it is refused up front instead.
pub const REQUIRED_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDeviceGet",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuDeviceGetAttribute",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamWaitEvent",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuEventDestroy_v2",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemHostAlloc",
    "cuMemFreeHost",
];

/// A cudarc error as the crate's error, saying what was being done.
pub(super) fn cuda_err(what: impl Into<String>) -> impl FnOnce(DriverError) -> GpuError {
    let what = what.into();
    move |e| GpuError::Cuda {
        what,
        result: CuResult(e.0 as u32),
    }
}

/// The library cudarc's loader picks (the first of its candidate names that loads, as it
/// tries them), and its name.
fn cudarc_library() -> Result<(Library, String), GpuError> {
    let names: Vec<String> = ["cuda", "nvcuda"]
        .iter()
        .flat_map(|l| cudarc::get_lib_name_candidates(l))
        .collect();
    let mut last = String::from("no candidate names");
    for name in &names {
        // SAFETY: loading the CUDA driver runs its initializers, which have no requirements on
        // the caller; cudarc loads the same library right after.
        match unsafe { Library::new(name) } {
            Ok(lib) => return Ok((lib, name.clone())),
            Err(e) => last = e.to_string(),
        }
    }
    Err(GpuError::NoDriver {
        library: names.first().cloned().unwrap_or_default(),
        reason: format!(
            "none of cudarc's names loads ({}): {last}",
            names.join(", ")
        ),
    })
}

/// The address of `name` in `lib`, if it exports it.
fn symbol(lib: &Library, name: &str) -> Option<usize> {
    // SAFETY: the symbol is only looked up, never called, through this pointer type.
    unsafe { lib.get::<*const u8>(name.as_bytes()) }
        .ok()
        .map(|s| *s as usize)
}

/// Opens CUDA device `ordinal` for the device-buffer path and returns its primary context.
///
/// With `library`, that driver file is loaded first and must be the one cudarc then finds by
/// its bare names (its soname `libcuda.so.1` on the library path, or already loaded): else
/// the error says which one cudarc would use. Without it, the driver is found as cudarc finds
/// it. Either way the library is checked for every function on [`REQUIRED_SYMBOLS`] before
/// cudarc touches it.
pub fn open_device(ordinal: usize, library: Option<&Path>) -> Result<Arc<CudaContext>, GpuError> {
    let named =
        match library {
            Some(path) => {
                let flags = libc::RTLD_NOW | libc::RTLD_GLOBAL | libc::RTLD_NODELETE;
                // SAFETY: as in `cudarc_library`; never unloaded (RTLD_NODELETE).
                let lib = unsafe { libloading::os::unix::Library::open(Some(path), flags) }
                    .map_err(|e| GpuError::NoDriver {
                        library: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                Some((Library::from(lib), path.display().to_string()))
            }
            None => None,
        };
    let (lib, name) = cudarc_library()?;
    if let Some(symbol) = REQUIRED_SYMBOLS.iter().find(|s| symbol(&lib, s).is_none()) {
        return Err(GpuError::MissingFunction {
            library: name,
            symbol,
        });
    }
    if let Some((wanted, path)) = &named {
        if symbol(wanted, "cuInit") != symbol(&lib, "cuInit") {
            return Err(GpuError::NoDriver {
                library: path.clone(),
                reason: format!(
                    "cudarc loads another driver by the name {name}: put {path}'s directory first on LD_LIBRARY_PATH, or name it libcuda.so.1"
                ),
            });
        }
    }
    CudaContext::new(ordinal).map_err(cuda_err(format!("CUDA device {ordinal}: open")))
}

/// Copies `dst.len()` bytes from device address `src` into `dst` (pinned host memory) on
/// `stream`, and waits for the copy.
///
/// # Safety
/// `src..src + dst.len()` must be device memory of `stream`'s context that stays allocated and
/// is not written during the call.
pub(super) unsafe fn copy_to_host(
    stream: &CudaStream,
    src: sys::CUdeviceptr,
    dst: &mut [u8],
) -> Result<(), DriverError> {
    // SAFETY: by the caller's contract for `src`; `dst` is borrowed until the stream is
    // synchronized below, so the copy never outlives it.
    unsafe { result::memcpy_dtoh_async(dst, src, stream.cu_stream()) }?;
    stream.synchronize()
}

/// Copies `src` (pinned host memory) to device address `dst` on `stream`, and waits for the
/// copy.
///
/// # Safety
/// `dst..dst + src.len()` must be device memory of `stream`'s context that stays allocated and
/// is not used by anything else during the call.
pub(super) unsafe fn copy_to_device(
    stream: &CudaStream,
    src: &[u8],
    dst: sys::CUdeviceptr,
) -> Result<(), DriverError> {
    // SAFETY: by the caller's contract for `dst`; `src` is borrowed until the stream is
    // synchronized below.
    unsafe { result::memcpy_htod_async(dst, src, stream.cu_stream()) }?;
    stream.synchronize()
}

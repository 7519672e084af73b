//! The memory exports: device allocations ([`crate::devmem`]), pinned host allocations,
//! memset and copies host→device, device→host and device→device. Copies run at once on the
//! calling thread ("async" ones included) after the gate ([`crate::api`]), and refuse a device
//! range that is not inside one live allocation with `CUDA_ERROR_INVALID_VALUE`.
//!
//! Host↔device copies follow a small model of the bus ([`CopyModel`]), from the environment:
//! `FAKECUDA_COPY_GBPS` caps their throughput (the copy then takes as long as a DMA of that
//! speed, sleeping rather than spinning, as a DMA leaves the CPU free), and
//! `FAKECUDA_COPY_FAIL=dtoh:N,htod:M` makes the Nth copy device→host (the Mth host→device)
//! fail with `CUDA_ERROR_ILLEGAL_ADDRESS` (a GPU fault mid-transfer).
//!
//! Pointer arguments follow cuda.h's contract, as in [`crate::api`].

// The C API: each function's safety contract is cuda.h's.
#![allow(clippy::missing_safety_doc)]

use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::{c_uint, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::api::{
    check_range, code, gate, lock, publish_stats, put, with_device, CUdeviceptr, CUstream,
    DEVICE_MEMORY, PINNED,
};
use crate::result::{self as r, CUresult};

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult {
    if let Err(c) = gate() {
        return c;
    }
    let res = with_device(|d| {
        let p = d.alloc(bytesize)?;
        publish_stats(d);
        Ok(p)
    });
    match res {
        // SAFETY: cuda.h contract.
        Ok(p) => unsafe { put(dptr, p) },
        Err(c) => c,
    }
}

#[no_mangle]
pub extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    if let Err(c) = gate() {
        return c;
    }
    code(with_device(|d| {
        d.free(dptr)?;
        publish_stats(d);
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    let used = with_device(|d| Ok(d.stats().1)).unwrap_or(0);
    let used = usize::try_from(used).unwrap_or(DEVICE_MEMORY);
    // SAFETY: cuda.h contract.
    let a = unsafe { put(free, DEVICE_MEMORY.saturating_sub(used)) };
    // SAFETY: cuda.h contract.
    let b = unsafe { put(total, DEVICE_MEMORY) };
    if a != r::CUDA_SUCCESS {
        a
    } else {
        b
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(
    pp: *mut *mut c_void,
    bytesize: usize,
    _flags: c_uint,
) -> CUresult {
    if let Err(c) = gate() {
        return c;
    }
    let Ok(layout) = Layout::from_size_align(bytesize.max(1), 4096) else {
        return r::CUDA_ERROR_INVALID_VALUE;
    };
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { std::alloc::alloc(layout) };
    if p.is_null() {
        return r::CUDA_ERROR_OUT_OF_MEMORY;
    }
    lock(&PINNED)
        .get_or_insert_with(HashMap::new)
        .insert(p as usize, layout);
    // SAFETY: cuda.h contract.
    unsafe { put(pp, p.cast()) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    let layout = lock(&PINNED).as_mut().and_then(|m| m.remove(&(p as usize)));
    match layout {
        Some(layout) => {
            // SAFETY: `p` was allocated by cuMemHostAlloc with this layout and is freed once
            // (it was still in the table).
            unsafe { std::alloc::dealloc(p.cast(), layout) };
            r::CUDA_SUCCESS
        }
        None => r::CUDA_ERROR_INVALID_VALUE,
    }
}

/// A host↔device copy's direction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    HtoD,
    DtoH,
}

/// The bus model of host↔device copies, read once per process.
struct CopyModel {
    /// Bytes per second; `None` for as fast as memcpy.
    rate: Option<f64>,
    /// The copies (direction, 1-based count) that fail.
    fail: Vec<(Dir, u64)>,
    counts: [AtomicU64; 2],
}

fn copy_model() -> &'static CopyModel {
    static MODEL: OnceLock<CopyModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let rate = std::env::var("FAKECUDA_COPY_GBPS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|g| *g > 0.0)
            .map(|g| g * 1e9);
        let fail = std::env::var("FAKECUDA_COPY_FAIL")
            .unwrap_or_default()
            .split(',')
            .filter_map(|f| {
                let (dir, n) = f.split_once(':')?;
                let dir = match dir {
                    "htod" => Dir::HtoD,
                    "dtoh" => Dir::DtoH,
                    _ => return None,
                };
                Some((dir, n.parse().ok()?))
            })
            .collect();
        CopyModel {
            rate,
            fail,
            counts: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    })
}

/// Runs one host↔device copy of `n` bytes under the bus model.
fn modelled_copy(dir: Dir, n: usize, copy: impl FnOnce()) -> CUresult {
    let model = copy_model();
    let count = model.counts[usize::from(dir == Dir::DtoH)].fetch_add(1, Ordering::Relaxed) + 1;
    if model.fail.contains(&(dir, count)) {
        return r::CUDA_ERROR_ILLEGAL_ADDRESS;
    }
    let start = Instant::now();
    copy();
    if let Some(rate) = model.rate {
        let want = Duration::from_secs_f64(n as f64 / rate);
        if let Some(left) = want.checked_sub(start.elapsed()) {
            std::thread::sleep(left);
        }
    }
    r::CUDA_SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
) -> CUresult {
    if let Err(c) = gate().and_then(|()| check_range(dst, n)) {
        return c;
    }
    if n > 0 && src.is_null() {
        return r::CUDA_ERROR_INVALID_VALUE;
    }
    modelled_copy(Dir::HtoD, n, || {
        // SAFETY: the device range is inside a live allocation (checked), the host range is
        // the caller's by the cuda.h contract; distinct memory.
        unsafe { std::ptr::copy_nonoverlapping(src.cast::<u8>(), dst as *mut u8, n) };
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) -> CUresult {
    if let Err(c) = gate().and_then(|()| check_range(src, n)) {
        return c;
    }
    if n > 0 && dst.is_null() {
        return r::CUDA_ERROR_INVALID_VALUE;
    }
    modelled_copy(Dir::DtoH, n, || {
        // SAFETY: as in cuMemcpyHtoD_v2, the other way.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.cast::<u8>(), n) };
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
    _stream: CUstream,
) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuMemcpyHtoD_v2(dst, src, n) }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    n: usize,
    _stream: CUstream,
) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuMemcpyDtoH_v2(dst, src, n) }
}

#[no_mangle]
pub extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    _stream: CUstream,
) -> CUresult {
    if let Err(c) = gate()
        .and_then(|()| check_range(dst, n))
        .and_then(|()| check_range(src, n))
    {
        return c;
    }
    // SAFETY: both ranges lie inside live allocations (checked); `copy` allows overlap.
    unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, n) };
    r::CUDA_SUCCESS
}

#[no_mangle]
pub extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, value: u8, n: usize) -> CUresult {
    if let Err(c) = gate().and_then(|()| check_range(dst, n)) {
        return c;
    }
    // SAFETY: the range lies inside a live allocation (checked).
    unsafe { std::ptr::write_bytes(dst as *mut u8, value, n) };
    r::CUDA_SUCCESS
}

#[no_mangle]
pub extern "C" fn cuMemsetD8Async(
    dst: CUdeviceptr,
    value: u8,
    n: usize,
    _stream: CUstream,
) -> CUresult {
    cuMemsetD8_v2(dst, value, n)
}

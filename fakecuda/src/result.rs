//! `CUresult` values the fake returns, their names (as `cuGetErrorName` gives them, and as the
//! call log and `FAKECUDA_FAULTS` spell them) and descriptions (`cuGetErrorString`).
//! Values are the driver's (cuda.h, the same in cudarc's `driver::sys`).

use std::ffi::CStr;

/// The driver's status code.
pub type CUresult = u32;

pub const CUDA_SUCCESS: CUresult = 0;
pub const CUDA_ERROR_INVALID_VALUE: CUresult = 1;
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
pub const CUDA_ERROR_NO_DEVICE: CUresult = 100;
pub const CUDA_ERROR_INVALID_DEVICE: CUresult = 101;
pub const CUDA_ERROR_INVALID_CONTEXT: CUresult = 201;
pub const CUDA_ERROR_OPERATING_SYSTEM: CUresult = 304;
pub const CUDA_ERROR_INVALID_HANDLE: CUresult = 400;
pub const CUDA_ERROR_ILLEGAL_STATE: CUresult = 401;
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;
pub const CUDA_ERROR_NOT_READY: CUresult = 600;
pub const CUDA_ERROR_ILLEGAL_ADDRESS: CUresult = 700;
pub const CUDA_ERROR_NOT_PERMITTED: CUresult = 800;
pub const CUDA_ERROR_NOT_SUPPORTED: CUresult = 801;
pub const CUDA_ERROR_TIMEOUT: CUresult = 909;
pub const CUDA_ERROR_UNKNOWN: CUresult = 999;

/// (value, name, description) of every code the fake knows.
const TABLE: &[(CUresult, &CStr, &CStr)] = &[
    (CUDA_SUCCESS, c"CUDA_SUCCESS", c"no error"),
    (
        CUDA_ERROR_INVALID_VALUE,
        c"CUDA_ERROR_INVALID_VALUE",
        c"invalid argument",
    ),
    (
        CUDA_ERROR_OUT_OF_MEMORY,
        c"CUDA_ERROR_OUT_OF_MEMORY",
        c"out of memory",
    ),
    (
        CUDA_ERROR_NOT_INITIALIZED,
        c"CUDA_ERROR_NOT_INITIALIZED",
        c"initialization error",
    ),
    (
        CUDA_ERROR_NO_DEVICE,
        c"CUDA_ERROR_NO_DEVICE",
        c"no CUDA-capable device is detected",
    ),
    (
        CUDA_ERROR_INVALID_DEVICE,
        c"CUDA_ERROR_INVALID_DEVICE",
        c"invalid device ordinal",
    ),
    (
        CUDA_ERROR_INVALID_CONTEXT,
        c"CUDA_ERROR_INVALID_CONTEXT",
        c"invalid device context",
    ),
    (
        CUDA_ERROR_OPERATING_SYSTEM,
        c"CUDA_ERROR_OPERATING_SYSTEM",
        c"OS call failed or operation not supported on this OS",
    ),
    (
        CUDA_ERROR_INVALID_HANDLE,
        c"CUDA_ERROR_INVALID_HANDLE",
        c"invalid resource handle",
    ),
    (
        CUDA_ERROR_ILLEGAL_STATE,
        c"CUDA_ERROR_ILLEGAL_STATE",
        c"the operation cannot be performed in the present state",
    ),
    (
        CUDA_ERROR_NOT_FOUND,
        c"CUDA_ERROR_NOT_FOUND",
        c"named symbol not found",
    ),
    (
        CUDA_ERROR_NOT_READY,
        c"CUDA_ERROR_NOT_READY",
        c"device not ready",
    ),
    (
        CUDA_ERROR_ILLEGAL_ADDRESS,
        c"CUDA_ERROR_ILLEGAL_ADDRESS",
        c"an illegal memory access was encountered",
    ),
    (
        CUDA_ERROR_NOT_PERMITTED,
        c"CUDA_ERROR_NOT_PERMITTED",
        c"operation not permitted",
    ),
    (
        CUDA_ERROR_NOT_SUPPORTED,
        c"CUDA_ERROR_NOT_SUPPORTED",
        c"operation not supported",
    ),
    (
        CUDA_ERROR_TIMEOUT,
        c"CUDA_ERROR_TIMEOUT",
        c"timeout occurred",
    ),
    (CUDA_ERROR_UNKNOWN, c"CUDA_ERROR_UNKNOWN", c"unknown error"),
];

/// The name of a code (`CUDA_ERROR_NOT_READY`), if the fake knows it.
pub fn name(code: CUresult) -> Option<&'static CStr> {
    TABLE.iter().find(|e| e.0 == code).map(|e| e.1)
}

/// The description of a code, if the fake knows it.
pub fn description(code: CUresult) -> Option<&'static CStr> {
    TABLE.iter().find(|e| e.0 == code).map(|e| e.2)
}

/// The name of a code for the call log: its name, or its number when unknown.
pub fn log_name(code: CUresult) -> String {
    match name(code) {
        Some(n) => n.to_string_lossy().into_owned(),
        None => code.to_string(),
    }
}

/// Parses a code given by name (`CUDA_ERROR_OUT_OF_MEMORY`, or without the `CUDA_ERROR_`
/// prefix, any case) or by number.
pub fn parse(s: &str) -> Option<CUresult> {
    let s = s.trim();
    if let Ok(n) = s.parse::<CUresult>() {
        return Some(n);
    }
    let upper = s.to_ascii_uppercase();
    TABLE.iter().find_map(|(code, name, _)| {
        let name = name.to_str().ok()?;
        (name == upper || name.strip_prefix("CUDA_ERROR_") == Some(upper.as_str())).then_some(*code)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers() {
        assert_eq!(parse("CUDA_ERROR_OUT_OF_MEMORY"), Some(2));
        assert_eq!(parse("out_of_memory"), Some(2));
        assert_eq!(parse("401"), Some(CUDA_ERROR_ILLEGAL_STATE));
        assert_eq!(parse("CUDA_SUCCESS"), Some(0));
        assert_eq!(parse("nonsense"), None);
        assert_eq!(log_name(600), "CUDA_ERROR_NOT_READY");
        assert_eq!(log_name(12345), "12345");
    }
}

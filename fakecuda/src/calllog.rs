//! The call log: `<state dir>/calls.log`, one line appended per checkpoint call (and per
//! context creation), written with a single `write` on an `O_APPEND` file so that lines from
//! concurrent threads and processes never interleave:
//!
//! ```text
//! <caller pid> <caller tid> <function> <target pid> <result name> <start ns> <end ns> <detail>
//! 4242 4250 cuCheckpointProcessLock 4300 CUDA_SUCCESS 1000 2000 timeout_ms=10000
//! ```
//!
//! Times are CLOCK_MONOTONIC nanoseconds (comparable across processes): two calls ran in
//! parallel when their [start, end] intervals overlap. `detail` is `-` or `key=value` pairs
//! read from the call's arguments (the lock timeout, the number of GPU pairs), which is how
//! tests see that the argument structs arrive with the right layout.

use std::fs::OpenOptions;
use std::io::Write;

use crate::result::{self, CUresult};
use crate::state::StateDir;

/// Appends one line; a log that cannot be written is ignored (the call's result stands).
pub fn append(
    dir: &StateDir,
    function: &str,
    target: i32,
    code: CUresult,
    start_ns: u64,
    detail: &str,
) {
    let line = format!(
        "{} {} {} {} {} {} {} {}\n",
        crate::getpid(),
        crate::gettid(),
        function,
        target,
        result::log_name(code),
        start_ns,
        crate::now_ns(),
        if detail.is_empty() { "-" } else { detail }
    );
    if std::fs::create_dir_all(&dir.0).is_err() {
        return;
    }
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log_path())
    {
        let _ = f.write_all(line.as_bytes());
    }
}

//! Finding which processes of a tree use CUDA, so that only those are locked and checkpointed.
//!
//! Two tests, cheapest first, and the same for the real driver and the fake:
//! 1. `/proc/PID/maps` must map a file named `libcuda.so*` (the real driver is
//!    `libcuda.so.<version>`, the fake a copy named `libcuda.so.1`). A process without it has no
//!    CUDA context and is skipped without asking the driver. Where maps cannot be read
//!    (permissions), the driver decides alone.
//! 2. `cuCheckpointProcessGetState` must succeed: loading libcuda is not enough, the process
//!    needs a context. For a process the driver does not know, the fake answers
//!    `CUDA_ERROR_INVALID_VALUE`; NVIDIA documents no code for it, and tools built on the real
//!    driver treat `CUDA_ERROR_INVALID_VALUE` and `CUDA_ERROR_NOT_INITIALIZED` alike, so both
//!    (and `CUDA_ERROR_NOT_FOUND`) mean "not a CUDA process" here; any other error is an error.
//!
//! Pass process ids (a cgroup's `cgroup.procs`, or [`process_tree`]), never thread ids: the
//! driver accepts a thread id for its process, so a thread would be checkpointed twice.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::PathBuf;

use super::driver::Driver;
use super::error::GpuError;
use super::ffi::{CuResult, ProcessState};

/// A process with a CUDA context, and its state in the driver (a process may already be
/// locked or checkpointed by someone else: the caller decides what to do with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaProcess {
    /// The process id.
    pub pid: i32,
    /// The driver's state for it.
    pub state: ProcessState,
}

/// Whether `pid` maps the CUDA driver: `Some(true)`/`Some(false)`, `None` when its maps cannot
/// be read (no permission). A process that is gone maps nothing.
pub fn maps_libcuda(pid: i32) -> Result<Option<bool>, GpuError> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            return Ok(Some(false))
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => return Ok(None),
        Err(source) => return Err(GpuError::Proc { pid, path, source }),
    };
    Ok(Some(text.lines().any(|line| {
        // The path is the sixth field; it may hold spaces (and " (deleted)").
        line.split_whitespace()
            .nth(5)
            .and_then(|p| p.rsplit('/').next())
            .is_some_and(|name| name.starts_with("libcuda.so"))
    })))
}

/// Whether a GetState failure means "no CUDA context in that process" (see the module doc).
fn not_a_cuda_process(e: &GpuError) -> bool {
    matches!(
        e,
        GpuError::Call { result, .. }
            if [CuResult::INVALID_VALUE, CuResult::NOT_INITIALIZED, CuResult::NOT_FOUND]
                .contains(result)
    )
}

/// The processes among `pids` that map the CUDA driver, or whose maps cannot be read: the
/// only ones worth asking a driver about. Needs no driver, so a tree without them costs no
/// library load.
pub fn candidates(pids: &[i32]) -> Result<Vec<i32>, GpuError> {
    let mut found = Vec::new();
    for &pid in pids {
        if maps_libcuda(pid)? != Some(false) {
            found.push(pid);
        }
    }
    Ok(found)
}

/// The CUDA processes among `pids`, in the same order.
pub fn cuda_processes(driver: &dyn Driver, pids: &[i32]) -> Result<Vec<CudaProcess>, GpuError> {
    let mut found = Vec::new();
    for pid in candidates(pids)? {
        match driver.state(pid) {
            Ok(state) => found.push(CudaProcess { pid, state }),
            Err(e) if not_a_cuda_process(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// `root` and all its descendants, from the parent pids in `/proc/*/stat`, sorted. Processes
/// that exit meanwhile are skipped.
pub fn process_tree(root: i32) -> Result<Vec<i32>, GpuError> {
    let proc_dir = PathBuf::from("/proc");
    let entries = std::fs::read_dir(&proc_dir).map_err(|source| GpuError::Proc {
        pid: root,
        path: proc_dir.clone(),
        source,
    })?;
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = parent(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while let Some(&pid) = tree.get(i) {
        if let Some(kids) = children.get(&pid) {
            tree.extend(kids);
        }
        i += 1;
    }
    tree.sort_unstable();
    Ok(tree)
}

/// A process's pid in its own pid namespace (the last `NSpid` of `/proc/PID/status`): what
/// CRIU restores it as. `None` if it is gone.
pub fn ns_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// A process's parent pid, `None` if it is gone.
fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name's closing parenthesis: state, ppid, ...
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::memory::MemoryDriver;

    #[test]
    fn this_test_does_not_map_libcuda_and_a_dead_pid_maps_nothing() {
        assert_eq!(
            maps_libcuda(i32::try_from(std::process::id()).unwrap()).unwrap(),
            Some(false)
        );
        assert_eq!(maps_libcuda(i32::MAX).unwrap(), Some(false));
    }

    #[test]
    fn processes_without_libcuda_are_not_asked_about() {
        let d = MemoryDriver::new();
        let me = i32::try_from(std::process::id()).unwrap();
        d.add_process(me);
        assert!(cuda_processes(&d, &[me]).unwrap().is_empty());
        assert!(d.calls().is_empty());
    }

    #[test]
    fn a_process_of_this_namespace_is_its_own_ns_pid() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert_eq!(ns_pid(me), Some(me));
        assert_eq!(ns_pid(i32::MAX), None);
        assert!(candidates(&[me, i32::MAX]).unwrap().is_empty());
    }

    #[test]
    fn the_tree_holds_the_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let tree = process_tree(me).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(tree.contains(&me));
        assert!(tree.contains(&(i32::try_from(child.id()).unwrap())));
        assert!(!tree.contains(&1) || me == 1);
    }
}

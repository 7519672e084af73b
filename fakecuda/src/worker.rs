//! The CUDA process's side of the checkpoint API: its registration (the state and device
//! memfds of [`crate::state`], a wake pipe) and its restore thread, which carries out the
//! checkpoints and restores that callers ask for, inside the process, as the real driver's
//! restore thread does.
//!
//! A checkpoint copies the device memory into the restore thread's own heap — the process's
//! host memory, which CRIU dumps like any other — and scribbles over the device memfd (the
//! GPU released); a restore writes it back and frees the copy. Because the work happens in the
//! process, a caller's Checkpoint or Restore completes only while the restore thread can run:
//! a process stopped by a signal or by CRIU must have that one thread let run (CRIU's cuda
//! plugin resumes it under ptrace), or the call times out (`FAKECUDA_RESTORE_THREAD_TIMEOUT_MS`,
//! default 10 s) with `CUDA_ERROR_TIMEOUT` and no change.
//!
//! Callers wake the thread by writing a byte into the pipe's write end (`wake_fd` in the state)
//! through `/proc/PID/fd/N`; the thread also looks every 100 ms on its own.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::devmem::RELEASED_BYTE;
use crate::result::{self as r, CUresult};
use crate::state::{self, Faults, Inflight, ProcState, Request, StateDir};

/// Serializes the process's own writers of its state (they share one file description, on
/// which `flock` does not exclude them from each other).
static WRITERS: Mutex<()> = Mutex::new(());

fn writers() -> MutexGuard<'static, ()> {
    WRITERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// What registration gives the rest of the library.
#[derive(Debug)]
pub struct Registered {
    /// The state memfd (the process's own file description).
    pub state: Arc<File>,
    /// The device-memory memfd, for [`crate::devmem::DevMem`].
    pub device: File,
    /// The restore thread.
    pub restore_tid: i32,
}

fn memfd(name: &std::ffi::CStr) -> Result<File, CUresult> {
    // SAFETY: `name` is NUL-terminated; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(r::CUDA_ERROR_OPERATING_SYSTEM);
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), CUresult> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(r::CUDA_ERROR_OPERATING_SYSTEM);
    }
    // SAFETY: two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Updates the process's own state under the writers' mutex and the file lock.
pub fn update(state: &File, f: impl FnOnce(&mut ProcState)) -> Result<(), CUresult> {
    let _w = writers();
    state::flock(state, libc::LOCK_EX)?;
    let res = match state::read_file(state) {
        Some(mut st) => {
            f(&mut st);
            state::write_file(state, &mut st)
        }
        None => Err(r::CUDA_ERROR_UNKNOWN),
    };
    let _ = state::flock(state, libc::LOCK_UN);
    res
}

/// Registers this process: its memfds, its restore thread and its state (RUNNING), with the
/// in-flight work and faults of its environment.
pub fn register(dir: &StateDir) -> Result<Registered, CUresult> {
    let state = Arc::new(memfd(c"fakecuda-state")?);
    let device = memfd(c"fakecuda-dev")?;
    let (wake_r, wake_w) = pipe()?;
    let wake_fd = wake_w.as_raw_fd();
    let worker = Worker {
        state: Arc::clone(&state),
        device: device
            .try_clone()
            .map_err(|_| r::CUDA_ERROR_OPERATING_SYSTEM)?,
        wake_r,
        // Kept open for as long as the thread lives: its number is in the state.
        _wake_w: wake_w,
        dir: dir.clone(),
        host: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("cuda-restore".into())
        .spawn(move || {
            let _ = tx.send(crate::gettid());
            worker.run();
        })
        .map_err(|_| r::CUDA_ERROR_OPERATING_SYSTEM)?;
    let restore_tid = rx.recv().map_err(|_| r::CUDA_ERROR_OPERATING_SYSTEM)?;
    let inflight = std::env::var("FAKECUDA_INFLIGHT_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut st = ProcState::new(
        crate::getpid(),
        restore_tid,
        wake_fd,
        Inflight::Ms(inflight),
        Faults(std::env::var("FAKECUDA_FAULTS").unwrap_or_default()),
    );
    {
        let _w = writers();
        state::write_file(&state, &mut st)?;
    }
    dir.views(crate::getpid(), state.as_raw_fd(), device.as_raw_fd());
    Ok(Registered {
        state,
        device,
        restore_tid,
    })
}

/// The restore thread's belongings.
struct Worker {
    state: Arc<File>,
    device: File,
    wake_r: OwnedFd,
    _wake_w: OwnedFd,
    dir: StateDir,
    /// The device memory while the process is checkpointed: host memory of this process.
    host: Option<Vec<u8>>,
}

impl Worker {
    fn run(mut self) {
        loop {
            self.wait_for_wake();
            if let Err(code) = self.serve() {
                // Nothing to report to: the caller times out. Keep serving.
                let _ = code;
            }
        }
    }

    /// Waits up to 100 ms for a byte in the wake pipe, and drains it.
    fn wait_for_wake(&self) {
        let mut pfd = libc::pollfd {
            fd: self.wake_r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n > 0 && pfd.revents & libc::POLLIN != 0 {
            let mut buf = [0u8; 64];
            // SAFETY: reads into a buffer of its own size; poll said data is there, so this
            // does not block (and a spurious wake-up only delays the next look).
            unsafe { libc::read(self.wake_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        }
    }

    /// Carries out a pending request, if any.
    fn serve(&mut self) -> Result<(), CUresult> {
        // Cheap look first: no lock while there is nothing to do.
        match state::read_file(&self.state) {
            Some(st) if st.request != Request::None && st.request_seq != st.done_seq => {}
            _ => return Ok(()),
        }
        let _w = writers();
        state::flock(&self.state, libc::LOCK_EX)?;
        let res = self.serve_locked();
        let _ = state::flock(&self.state, libc::LOCK_UN);
        res
    }

    fn serve_locked(&mut self) -> Result<(), CUresult> {
        let mut st = state::read_file(&self.state).ok_or(r::CUDA_ERROR_UNKNOWN)?;
        if st.request == Request::None || st.request_seq == st.done_seq {
            return Ok(());
        }
        let result = match st.request {
            Request::Checkpoint => self.checkpoint(&mut st),
            Request::Restore => self.restore(&mut st),
            Request::None => Ok(()),
        };
        st.done_seq = st.request_seq;
        st.done_result = result.err().unwrap_or(r::CUDA_SUCCESS);
        st.request = Request::None;
        state::write_file(&self.state, &mut st)
    }

    /// LOCKED → CHECKPOINTED: the device memory into this thread's heap, the "GPU" released.
    fn checkpoint(&mut self, st: &mut ProcState) -> Result<(), CUresult> {
        if st.state != state::LOCKED {
            return Err(r::CUDA_ERROR_ILLEGAL_STATE);
        }
        let os = |_| r::CUDA_ERROR_OPERATING_SYSTEM;
        let len = self.device.metadata().map_err(os)?.len();
        let len = usize::try_from(len).map_err(|_| r::CUDA_ERROR_OUT_OF_MEMORY)?;
        let mut host = vec![0u8; len];
        self.device.read_exact_at(&mut host, 0).map_err(os)?;
        let chunk = vec![RELEASED_BYTE; 1 << 20];
        let mut off = 0;
        while off < len {
            let n = chunk.len().min(len - off);
            self.device
                .write_all_at(&chunk[..n], off as u64)
                .map_err(os)?;
            off += n;
        }
        let marker = format!("addr={:#x} bytes={len}\n", host.as_ptr() as usize);
        self.host = Some(host);
        st.state = state::CHECKPOINTED;
        st.checkpoints += 1;
        let _ = std::fs::write(self.dir.host_path(crate::getpid()), marker);
        Ok(())
    }

    /// CHECKPOINTED → LOCKED: the device memory back from the heap.
    fn restore(&mut self, st: &mut ProcState) -> Result<(), CUresult> {
        if st.state != state::CHECKPOINTED {
            return Err(r::CUDA_ERROR_ILLEGAL_STATE);
        }
        let host = self.host.as_ref().ok_or(r::CUDA_ERROR_UNKNOWN)?;
        self.device
            .write_all_at(host, 0)
            .map_err(|_| r::CUDA_ERROR_OPERATING_SYSTEM)?;
        self.host = None;
        st.state = state::LOCKED;
        st.restores += 1;
        let _ = std::fs::remove_file(self.dir.host_path(crate::getpid()));
        Ok(())
    }
}

//! Child exits. The shim is a subreaper: container inits and exec processes become its
//! children when the runtime's intermediate processes exit, and it must reap them to learn
//! their exit status.
//!
//! The runtime also waits for children of its own (its stage-one process, hooks, CRIU) by pid.
//! A reaper that waited for any child could take their statuses, so runtime calls hold
//! [`Ops`] shared, and the reaper collects exits only while it holds it exclusively. A call
//! registers the pid it created before it lets go, so no exit of a task process is missed.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The lock between runtime calls (shared) and reaping (exclusive).
#[derive(Clone, Default)]
pub struct Ops(Arc<RwLock<()>>);

impl Ops {
    /// Held while a runtime call may start or wait for children.
    pub fn runtime_call(&self) -> RwLockReadGuard<'_, ()> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Blocks SIGCHLD in the calling thread, so that threads started afterwards inherit the mask
/// and only the reaper's `sigwait` takes it. Call before starting any thread.
pub fn block_sigchld() -> nix::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
}

/// The exit status containerd reports: the code, or 128 + the signal.
pub fn exit_code(status: WaitStatus) -> Option<(i32, u32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), u32::try_from(code).unwrap_or(255))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as u32)),
        _ => None,
    }
}

/// Starts the reaper thread: `on_exits` gets every batch of `(pid, status)`, outside the lock.
pub fn spawn(
    ops: Ops,
    on_exits: impl Fn(Vec<(i32, u32)>) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            let mut set = SigSet::empty();
            set.add(Signal::SIGCHLD);
            loop {
                if set.wait().is_err() {
                    continue;
                }
                let mut exits = Vec::new();
                {
                    let _all = ops.0.write().unwrap_or_else(|p| p.into_inner());
                    loop {
                        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                            Ok(st) => exits.extend(exit_code(st)),
                            Err(Errno::EINTR) => {}
                            Err(e) => {
                                tracing::error!("waitpid: {e}");
                                break;
                            }
                        }
                    }
                }
                if !exits.is_empty() {
                    on_exits(exits);
                }
            }
        })
}

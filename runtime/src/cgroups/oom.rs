//! OOM-kill notification for a container's memory cgroup: the v1 `cgroup.event_control`
//! eventfd on `memory.oom_control`, or the `oom_kill` counter of v2's `memory.events`
//! (watched with inotify). Used by the containerd shim's `/tasks/oom` event.

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::error::{Error, Result};
use super::{CgroupState, Mode, UNIFIED};

/// Blocks until the container's memory cgroup kills a process for lack of memory.
pub struct OomWatcher {
    dir: PathBuf,
    kind: Kind,
}

enum Kind {
    V1 {
        event: File,
        // Keeps the registration alive: the kernel drops it when this closes.
        _control: File,
    },
    V2 {
        inotify: Inotify,
        last: u64,
    },
}

fn read_err(path: &Path, source: std::io::Error) -> Error {
    Error::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn oom_kills(events: &Path) -> Result<u64> {
    let s = fs::read_to_string(events).map_err(|e| read_err(events, e))?;
    Ok(s.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

impl OomWatcher {
    /// A watcher of the memory cgroup in `state`; `None` when the container has none.
    pub fn new(state: &CgroupState) -> Result<Option<OomWatcher>> {
        match state.mode {
            Mode::V1 => {
                let Some(dir) = state.paths.get("memory") else {
                    return Ok(None);
                };
                let control_path = dir.join("memory.oom_control");
                let control = File::open(&control_path).map_err(|e| read_err(&control_path, e))?;
                // SAFETY: eventfd with flags only; it returns a new fd or -1.
                let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
                if efd < 0 {
                    return Err(read_err(dir, std::io::Error::last_os_error()));
                }
                // SAFETY: eventfd returned a fresh fd that nothing else owns.
                let event = File::from(unsafe { OwnedFd::from_raw_fd(efd) });
                let ctl = dir.join("cgroup.event_control");
                let line = format!("{} {}", event.as_raw_fd(), control.as_raw_fd());
                fs::write(&ctl, &line).map_err(|source| Error::Write {
                    field: None,
                    path: ctl.clone(),
                    value: line,
                    source,
                    hint: None,
                })?;
                Ok(Some(OomWatcher {
                    dir: dir.clone(),
                    kind: Kind::V1 {
                        event,
                        _control: control,
                    },
                }))
            }
            Mode::V2 => {
                let Some(dir) = state.paths.get(UNIFIED) else {
                    return Ok(None);
                };
                let events = dir.join("memory.events");
                if !events.exists() {
                    return Ok(None);
                }
                let inotify = Inotify::init(InitFlags::IN_CLOEXEC)
                    .map_err(|e| read_err(&events, e.into()))?;
                inotify
                    .add_watch(&events, AddWatchFlags::IN_MODIFY)
                    .map_err(|e| read_err(&events, e.into()))?;
                let last = oom_kills(&events)?;
                Ok(Some(OomWatcher {
                    dir: dir.clone(),
                    kind: Kind::V2 { inotify, last },
                }))
            }
        }
    }

    /// Waits for the next OOM kill: `Ok(true)` for one, `Ok(false)` once the cgroup is gone.
    pub fn wait(&mut self) -> Result<bool> {
        loop {
            match &mut self.kind {
                Kind::V1 { event, .. } => {
                    let mut buf = [0u8; 8];
                    event
                        .read_exact(&mut buf)
                        .map_err(|e| read_err(&self.dir, e))?;
                    // The kernel also signals when the cgroup is removed.
                    return Ok(self.dir.exists());
                }
                Kind::V2 { inotify, last } => {
                    let events = self.dir.join("memory.events");
                    let _ = inotify
                        .read_events()
                        .map_err(|e| read_err(&events, e.into()))?;
                    if !self.dir.exists() {
                        return Ok(false);
                    }
                    let now = oom_kills(&events)?;
                    if now > *last {
                        *last = now;
                        return Ok(true);
                    }
                }
            }
        }
    }
}

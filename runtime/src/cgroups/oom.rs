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
    /// OOM kills read but not yet reported (v1).
    pending: u64,
    /// The cgroup is gone (v1).
    gone: bool,
}

/// Reads an eventfd's count (blocking).
fn read_count(event: &mut File) -> std::io::Result<u64> {
    let mut buf = [0u8; 8];
    event.read_exact(&mut buf)?;
    Ok(u64::from_ne_bytes(buf))
}

/// An eventfd's count if it is signalled within `timeout`, else 0.
fn wait_count(event: &mut File, timeout: std::time::Duration) -> std::io::Result<u64> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut pfd = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&*event),
        nix::poll::PollFlags::POLLIN,
    )];
    match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)) {
        Ok(0) => Ok(0),
        Ok(_) => read_count(event),
        Err(e) => Err(e.into()),
    }
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
                    pending: 0,
                    gone: false,
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
                    pending: 0,
                    gone: false,
                }))
            }
        }
    }

    /// Waits for the next OOM kill: `Ok(true)` for one, `Ok(false)` once the cgroup is gone.
    pub fn wait(&mut self) -> Result<bool> {
        loop {
            match &mut self.kind {
                Kind::V1 { event, .. } => {
                    if self.pending > 0 {
                        self.pending -= 1;
                        return Ok(true);
                    }
                    if self.gone {
                        return Ok(false);
                    }
                    // The eventfd counts OOM notifications, plus one when the cgroup is
                    // removed; a watcher scheduled late reads both at once.
                    let n = read_count(event).map_err(|e| read_err(&self.dir, e))?;
                    if self.dir.exists() {
                        self.pending += n;
                        continue;
                    }
                    self.gone = true;
                    // Removed: the count holds the removal unless it is still on its way.
                    let late = wait_count(event, std::time::Duration::from_millis(100))
                        .map_err(|e| read_err(&self.dir, e))?;
                    self.pending += (n + late).saturating_sub(1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// An OOM kill and the cgroup's removal both happen before the watcher reads: it reports
    /// the kill, then the end (a watcher scheduled late must not lose the kill).
    #[test]
    fn a_late_watcher_still_sees_the_kill_before_the_removal() {
        let root = Path::new("/sys/fs/cgroup/memory");
        if !nix::unistd::geteuid().is_root() || !root.join("memory.oom_control").exists() {
            println!("skipped: needs root and a v1 memory hierarchy");
            return;
        }
        let dir = root.join(format!("cryo-oom-test-{}", std::process::id()));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("memory.limit_in_bytes"), "16777216").unwrap();
        let state = CgroupState {
            mode: Mode::V1,
            mounts: BTreeMap::from([("memory".to_string(), root.to_path_buf())]),
            paths: BTreeMap::from([("memory".to_string(), dir.clone())]),
        };
        let mut w = OomWatcher::new(&state).unwrap().unwrap();
        let script = format!(
            "echo $$ > {}/cgroup.procs; exec dd if=/dev/zero of=/dev/null bs=64M count=1",
            dir.display()
        );
        let st = std::process::Command::new("sh")
            .args(["-c", &script])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(st.code(), None, "dd was not killed: {st}");
        for _ in 0..100 {
            if fs::remove_dir(&dir).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(w.wait().unwrap(), "the OOM kill was lost");
        assert!(!w.wait().unwrap(), "the removal was not seen");
    }
}

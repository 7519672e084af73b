//! `cryo lazy-pages`: the lazy-pages server process of a lazy restore. `restore --lazy-pages`
//! starts it in its own session before CRIU runs; it outlives `restore -d` and exits when
//! every page of the restored container is in.
//!
//! It forks a watcher first. The server hands the watcher a duplicate of every userfaultfd it
//! takes on, and says `done` when every page is in. Should the server die or fail before
//! that, the duplicates keep the lazy ranges registered, so the container's faults wait
//! instead of reading zeros, and the watcher kills every process of the container's cgroup
//! and writes why into the state directory: a container never runs with missing memory.

use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cryo_snapshot::lazy::{self, ServeOptions};
use cryo_snapshot::Store;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// The file in the state directory that says why a lazily restored container was killed.
pub const ERROR_FILE: &str = "lazy-pages.error";
const DONE: &[u8] = b"done";

pub struct Args<'a> {
    pub store: &'a Path,
    pub snapshot: &'a str,
    pub socket: &'a Path,
    pub ready_fd: Option<i32>,
    pub report: Option<&'a Path>,
    pub kill_cgroup: Option<&'a Path>,
    pub state_dir: Option<&'a Path>,
}

pub fn run(a: &Args<'_>) -> Result<()> {
    // SAFETY: the parent handed this fd to us for exactly this use; nothing else owns it.
    let ready = a.ready_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let watcher = match a.kill_cgroup {
        Some(cg) => Some(spawn_watcher(
            cg.to_path_buf(),
            a.state_dir.map(Path::to_path_buf),
        )?),
        None => None,
    };
    let store = Store::open(a.store).with_context(|| format!("store {}", a.store.display()))?;
    let hook: Option<lazy::UffdHook> = watcher.as_ref().map(|w| {
        let sock = w.as_raw_fd();
        Box::new(move |fd: &OwnedFd| {
            let fds = [fd.as_raw_fd()];
            let _ = sendmsg::<()>(
                sock,
                &[IoSlice::new(b"fd")],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            );
        }) as lazy::UffdHook
    });
    let rep = lazy::run(
        &store,
        a.snapshot,
        a.socket,
        ServeOptions::default(),
        hook,
        move || {
            if let Some(fd) = ready {
                let mut f = std::fs::File::from(fd);
                f.write_all(b"1").map_err(|e| cryo_snapshot::Error::Lazy {
                    message: format!("ready fd: {e}"),
                })?;
            }
            Ok(())
        },
    )
    .with_context(|| format!("lazy restore of {}", a.snapshot))?;
    if let Some(w) = &watcher {
        let _ = sendmsg::<()>(
            w.as_raw_fd(),
            &[IoSlice::new(DONE)],
            &[],
            MsgFlags::empty(),
            None,
        );
    }
    if let Some(path) = a.report {
        let json = serde_json::json!({
            "snapshot": a.snapshot,
            "tasks": rep.tasks,
            "faults": rep.faults,
            "copied_bytes": rep.copied_bytes,
            "zero_bytes": rep.zero_bytes,
            "fill_ms": rep.fill_time.as_secs_f64() * 1e3,
            "working_set_pages": rep.working_set.len(),
            "peak_rss_kib": peak_rss_kib(),
        });
        // Written whole or not at all (temp file, rename): whoever waits for the report reads
        // it as soon as it exists. The container may be gone (and its state directory with
        // it): not an error.
        let tmp = path.with_extension("json.tmp");
        if std::fs::write(&tmp, serde_json::to_vec_pretty(&json)?).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
    Ok(())
}

/// Forks the watcher; returns the server's end of the socket to it.
fn spawn_watcher(cgroup: PathBuf, state_dir: Option<PathBuf>) -> Result<OwnedFd> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair for the lazy-pages watcher")?;
    // SAFETY: this process is single-threaded here (nothing has started a thread before the
    // server runs), so the child may run ordinary Rust code.
    match unsafe { nix::unistd::fork() }.context("fork the lazy-pages watcher")? {
        nix::unistd::ForkResult::Child => {
            drop(ours);
            let code = watch(theirs.as_raw_fd(), &cgroup, state_dir.as_deref());
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { .. } => Ok(ours),
    }
}

/// The watcher: holds the userfaultfds until `done`; on EOF first, kills the container.
fn watch(sock: RawFd, cgroup: &Path, state_dir: Option<&Path>) -> i32 {
    let mut held: Vec<OwnedFd> = Vec::new();
    loop {
        let mut buf = [0u8; 16];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(m) => {
                    let mut fds = Vec::new();
                    if let Ok(it) = m.cmsgs() {
                        for c in it {
                            if let ControlMessageOwned::ScmRights(v) = c {
                                fds.extend(v);
                            }
                        }
                    }
                    (m.bytes, fds)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => (0, Vec::new()),
            }
        };
        for fd in fds {
            // SAFETY: SCM_RIGHTS installed `fd` in this process.
            held.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        if n == 0 {
            break;
        }
        if &buf[..n] == DONE {
            return 0;
        }
    }
    // The server is gone before every page was in: no process of the container may go on.
    // The reason is written first, so whoever sees the container stopped can read it.
    if let Some(dir) = state_dir {
        let _ = std::fs::write(
            dir.join(ERROR_FILE),
            "the lazy-pages server exited before every page was in (see lazy-pages.log); \
             the container was killed\n",
        );
    }
    kill_cgroup(cgroup);
    drop(held);
    1
}

/// SIGKILLs every process of the cgroup until it is empty (5 s at most); returns how many
/// signals were sent.
fn kill_cgroup(dir: &Path) -> usize {
    let procs = dir.join("cgroup.procs");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut killed = 0;
    loop {
        let pids: Vec<i32> = std::fs::read_to_string(&procs)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return killed;
        }
        for pid in pids {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// This process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

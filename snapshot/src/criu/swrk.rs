//! One `criu swrk 3` session: CRIU runs as a child with one end of a `SOCK_SEQPACKET`
//! socketpair as fd 3; each message either way is one datagram of bare protobuf
//! ([`rpc::CriuReq`] out, [`rpc::CriuResp`] in). Between a request and its answer CRIU sends
//! NOTIFY messages that must each be answered (`notify_success`), some carrying an fd.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use prost::Message;

use super::{is_noise, log_excerpt, primary_error, rpc, Notification, Notify};
use crate::{Error, Result};

/// Largest datagram accepted from CRIU; its answers are a few hundred bytes.
const MAX_MESSAGE: usize = 1 << 20;

/// How to start `criu swrk`: which of the caller's fds CRIU gets, and which cgroups it joins
/// before it runs (a restored tree starts in CRIU's cgroups).
#[derive(Debug, Default)]
pub struct SpawnOptions<'a> {
    /// `(fd number in CRIU, the caller's fd)`. 0–2 replace CRIU's stdio (default /dev/null;
    /// a shell job needs the terminal); 3 is the RPC socket; 4 and up are for `inherit_fd`.
    pub fds: Vec<(RawFd, BorrowedFd<'a>)>,
    /// Files (cgroup v1 `tasks`, v2 `cgroup.procs`) into which CRIU writes `0` before exec.
    pub join_cgroups: Vec<PathBuf>,
    /// Let CRIU load its kernel-feature cache where it cannot keep one itself (see the
    /// `kdat` module): CRIU then runs in a private copy of the caller's mount namespace. Only
    /// for a process tree in a mount namespace of its own (CRIU takes a tree in a namespace
    /// other than its own for one whose mounts it dumps and restores), and only with the
    /// images named by path (`images_dir`, `images_dir_fd` -1) and no `work_dir_fd`: CRIU
    /// opens those fds as /proc/CALLER/fd/N, which are mounts of the caller's namespace, and
    /// mounting on them from another namespace fails (its cgroup yard in the work dir).
    pub kdat_cache: bool,
}

/// A running `criu swrk` child and the socket to it.
#[derive(Debug)]
pub struct Session {
    child: Child,
    sock: OwnedFd,
    /// CRIU's stderr, an anonymous memory file read once it exits: no reader thread, which
    /// would take a pid that a restored task may need.
    stderr: File,
}

impl Session {
    pub(crate) fn start(criu: &Path, spawn: &SpawnOptions<'_>) -> Result<Session> {
        // Everything the child does between fork and exec is prepared here: no allocation
        // after fork.
        let moves: Vec<(RawFd, RawFd)> = spawn
            .fds
            .iter()
            .map(|(target, fd)| (*target, fd.as_raw_fd()))
            .collect();
        if let Some((t, _)) = moves.iter().find(|(t, _)| *t == 3 || *t < 0) {
            return Err(Error::InvalidInput {
                object: "criu swrk".into(),
                reason: format!("fd {t} cannot be handed to CRIU (3 is its RPC socket)"),
            });
        }
        let joins: Vec<std::ffi::CString> = spawn
            .join_cgroups
            .iter()
            .map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::InvalidInput {
                object: "criu swrk".into(),
                reason: "a cgroup path holds a NUL byte".into(),
            })?;
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::io(criu, "socketpair", e.into()))?;
        let child_fd = theirs.as_raw_fd();
        let stderr = memfd_create(c"criu-stderr", MemFdCreateFlag::MFD_CLOEXEC)
            .map(File::from)
            .map_err(|e| Error::io(criu, "memfd_create", e.into()))?;
        let stderr_for_child = stderr.try_clone().map_err(|e| Error::io(criu, "dup", e))?;
        let kdat = spawn
            .kdat_cache
            .then(|| super::kdat::KdatCache::prepare(criu))
            .flatten();
        let mut cmd = Command::new(criu);
        cmd.args(["swrk", "3"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr_for_child));
        for (target, fd) in &spawn.fds {
            // Stdio the caller hands over replaces the /dev/null defaults above.
            let dup = || {
                fd.try_clone_to_owned()
                    .map_err(|e| Error::io(criu, "dup", e))
            };
            match target {
                0 => cmd.stdin(Stdio::from(dup()?)),
                1 => cmd.stdout(Stdio::from(dup()?)),
                2 => cmd.stderr(Stdio::from(dup()?)),
                _ => &mut cmd,
            };
        }
        // SAFETY: only async-signal-safe calls (open, write, close, dup2, fcntl; unshare, mount
        // and setns in `KdatCache::enter`) between fork and exec, on memory prepared before the
        // fork.
        unsafe {
            cmd.pre_exec(move || {
                for path in &joins {
                    // Joining through `tasks` while single-threaded (see cryo-runtime's
                    // cgroups): CRIU then restores the tree under these cgroups.
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                if let Some(k) = &kdat {
                    k.enter();
                }
                // Move the extra fds out of the way first so that no target overwrites a
                // source still to be moved, then into place.
                let mut high = [0; 64];
                for (i, (_, src)) in moves
                    .iter()
                    .enumerate()
                    .filter(|(_, (t, _))| *t > 3)
                    .take(64)
                {
                    high[i] = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 100);
                    if high[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if child_fd == 3 {
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(child_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for (i, (target, _)) in moves
                    .iter()
                    .enumerate()
                    .filter(|(_, (t, _))| *t > 3)
                    .take(64)
                {
                    if libc::dup2(high[i], *target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(criu, "spawn criu swrk", e))?;
        drop(theirs);
        Ok(Session {
            child,
            sock: ours,
            stderr,
        })
    }

    /// The pid of the `criu swrk` process.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// Sends one request.
    pub fn send(&self, req: &rpc::CriuReq) -> Result<()> {
        let buf = req.encode_to_vec();
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(&buf)],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| self.broken("send", e))?;
        Ok(())
    }

    /// Receives one message and the fd that came with it, if any. `None` when CRIU closed
    /// the socket (it exited).
    pub fn recv(&self) -> Result<Option<(rpc::CriuResp, Option<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let (len, fd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(|e| self.broken("receive", e))?;
            let mut fd = None;
            for c in msg.cmsgs().map_err(|e| self.broken("receive", e))? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for raw in fds {
                        // SAFETY: SCM_RIGHTS just installed `raw` in this process; nothing
                        // else owns it.
                        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                        fd.get_or_insert(owned);
                    }
                }
            }
            (msg.bytes, fd)
        };
        if len == 0 {
            return Ok(None);
        }
        let resp = rpc::CriuResp::decode(&buf[..len]).map_err(|e| Error::Criu {
            op: "rpc",
            message: format!("undecodable answer from criu ({len} bytes): {e}"),
            log: Vec::new(),
        })?;
        Ok(Some((resp, fd)))
    }

    /// Sends a request of type `ty` with `opts`, answers notifications through `notify` until
    /// the answer arrives, then waits for CRIU to exit. A failure carries CRIU's message and
    /// the error lines of its log (`opts.log_file` in the work dir, else the images dir).
    pub fn request(
        mut self,
        ty: rpc::CriuReqType,
        opts: rpc::CriuOpts,
        notify: &mut dyn Notify,
    ) -> Result<rpc::CriuResp> {
        let op = ty.as_str_name().to_ascii_lowercase();
        let log = log_path(&opts);
        let fail = |message: String| Error::Criu {
            op: "criu",
            message: format!("{op}: {message}"),
            log: log.as_deref().map(log_excerpt).unwrap_or_default(),
        };
        self.send(&rpc::CriuReq {
            r#type: ty as i32,
            opts: Some(opts),
            ..Default::default()
        })?;
        let resp = loop {
            let Some((resp, fd)) = self.recv()? else {
                let status = self.child.wait().ok();
                let stderr = self.take_stderr();
                return Err(fail(format!(
                    "criu exited ({}) before answering{}",
                    status.map_or("unknown status".into(), |s| s.to_string()),
                    if stderr.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", stderr.trim())
                    }
                )));
            };
            if resp.r#type() != rpc::CriuReqType::Notify {
                break resp;
            }
            let n = resp.notify.unwrap_or_default();
            let script = n.script.unwrap_or_default();
            let answer = notify.notify(Notification {
                script: &script,
                pid: n.pid,
                fd,
            });
            self.send(&rpc::CriuReq {
                r#type: rpc::CriuReqType::Notify as i32,
                notify_success: Some(answer.is_ok()),
                ..Default::default()
            })?;
            if let Err(e) = answer {
                // CRIU aborts on a failed notification and then answers the request with a
                // failure; keep reading so its cleanup (thawing, unlocking) runs to the end.
                tracing::warn!(script, error = %e, "criu notification refused");
            }
        };
        // CRIU exits after answering; its exit status adds nothing to the answer.
        let _ = self.child.wait();
        let stderr = self.take_stderr();
        if !resp.success {
            // CRIU's errmsg is its first error, which can be a harmless one (it cannot raise
            // RLIMIT_NOFILE without CAP_SYS_RESOURCE); the log's first real error says more.
            let mut msg = resp
                .cr_errmsg
                .clone()
                .filter(|m| !m.is_empty() && !is_noise(m))
                .or_else(|| log.as_deref().and_then(primary_error))
                .unwrap_or_else(|| "failed".into());
            if let Some(errno) = resp.cr_errno.filter(|&e| e != 0) {
                msg.push_str(&format!(" ({})", std::io::Error::from_raw_os_error(errno)));
            }
            if !stderr.trim().is_empty() {
                msg.push_str(&format!("; stderr: {}", stderr.trim()));
            }
            return Err(fail(msg));
        }
        if resp.r#type() != ty {
            return Err(fail(format!(
                "answer of type {:?} to a {:?} request",
                resp.r#type(),
                ty
            )));
        }
        Ok(resp)
    }

    fn take_stderr(&mut self) -> String {
        let mut out = String::new();
        let _ = self.stderr.seek(SeekFrom::Start(0));
        let _ = (&self.stderr).take(64 << 10).read_to_string(&mut out);
        out
    }

    fn broken(&self, what: &str, e: nix::Error) -> Error {
        Error::Criu {
            op: "rpc",
            message: format!(
                "{what} on the criu swrk socket (pid {}): {e}",
                self.child.id()
            ),
            log: Vec::new(),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A session dropped before its answer: closing the socket makes CRIU abort and exit.
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::socket::shutdown(
                self.sock.as_fd().as_raw_fd(),
                nix::sys::socket::Shutdown::Both,
            );
            let _ = self.child.wait();
        }
    }
}

/// Where CRIU writes its log for `opts`: `log_file` under the work dir (or the images dir).
fn log_path(opts: &rpc::CriuOpts) -> Option<PathBuf> {
    let file = opts.log_file.as_deref()?;
    let dir_fd = opts
        .work_dir_fd
        .filter(|&fd| fd >= 0)
        .or(Some(opts.images_dir_fd));
    let dir = match dir_fd {
        Some(fd) if fd >= 0 => std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?,
        _ => PathBuf::from(opts.images_dir.as_deref()?),
    };
    Some(dir.join(file))
}

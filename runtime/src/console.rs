//! Terminals: the init opens a pty inside the container's devpts, sends the master to the
//! `--console-socket` (SCM_RIGHTS, the pty path as payload, as runc does) and makes the slave
//! its controlling terminal and stdio.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::error::{Result, SysContext};

/// Opens a pty pair from the current /dev/ptmx: (master, slave path).
pub fn open_pty() -> Result<(OwnedFd, String)> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .sys_ctx(|| "opening /dev/ptmx".into())?;
    nix::pty::grantpt(&master).sys_ctx(|| "grantpt".into())?;
    nix::pty::unlockpt(&master).sys_ctx(|| "unlockpt".into())?;
    let name = nix::pty::ptsname_r(&master).sys_ctx(|| "ptsname".into())?;
    // SAFETY: into_raw_fd hands over ownership of a valid fd.
    let fd = unsafe {
        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(
            master,
        ))
    };
    Ok((fd, name))
}

/// Sends `fd` over the unix socket `sock` with `name` as the payload.
pub fn send_fd(sock: RawFd, name: &str, fd: RawFd) -> Result<()> {
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::empty(), None)
        .sys_ctx(|| "sending pty master to console socket".into())?;
    Ok(())
}

/// Makes the pty slave at `path` the controlling terminal and stdio, with an optional size.
pub fn become_terminal(path: &str, size: Option<(u16, u16)>) -> Result<()> {
    let slave = nix::fcntl::open(
        path,
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .sys_ctx(|| format!("opening {path}"))?;
    if let Some((rows, cols)) = size {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives for the call.
        let r = unsafe { libc::ioctl(slave, libc::TIOCSWINSZ, &ws) };
        nix::Error::result(r).sys_ctx(|| "setting console size".into())?;
    }
    for target in 0..3 {
        nix::unistd::dup2(slave, target).sys_ctx(|| format!("dup2 pty to fd {target}"))?;
    }
    // SAFETY: TIOCSCTTY takes an int argument; we are a session leader without a terminal.
    let r = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    nix::Error::result(r).sys_ctx(|| "TIOCSCTTY".into())?;
    if slave > 2 {
        let _ = nix::unistd::close(slave);
    }
    Ok(())
}

/// Connects to a console socket path (parent side).
pub fn connect(path: &std::path::Path) -> Result<OwnedFd> {
    let s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| crate::error::Error::io(path, e))?;
    let fd: OwnedFd = s.into();
    let _ = fd.as_raw_fd();
    Ok(fd)
}

//! The little networking a runtime does itself: the loopback interface of a container's new
//! network namespace is brought up (as runc does), and a fresh namespace can be made for a
//! restore. Everything else about networks (veth pairs, addresses, routes) is left to the
//! caller (CNI, podman's netavark, containerd's CRI), which hands cryo a namespace by path.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sched::CloneFlags;

use crate::error::{Error, Result};

fn os_err(what: &str) -> Error {
    Error::Other(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// A datagram socket for interface ioctls, and an ifreq naming `lo`.
fn lo_request(what: &str) -> Result<(OwnedFd, libc::ifreq)> {
    // SAFETY: socket() with constant arguments; the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err(&format!("{what}: socket")));
    }
    // SAFETY: socket returned a fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(os_err(&format!("{what}: SIOCGIFFLAGS")));
    }
    Ok((sock, req))
}

/// The flags of `lo` in the calling thread's network namespace.
pub fn loopback_flags() -> Result<libc::c_int> {
    let (_sock, req) = lo_request("reading lo's flags")?;
    // SAFETY: the flags member of the union is the one SIOCGIFFLAGS filled in.
    Ok(libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags }))
}

/// Brings `lo` up in the calling thread's network namespace.
pub fn loopback_up() -> Result<()> {
    let (sock, mut req) = lo_request("bringing lo up")?;
    #[allow(
        clippy::cast_possible_truncation,
        reason = "IFF_UP | IFF_RUNNING is 0x41, a short"
    )]
    let up = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: the flags member of the union is the one SIOCGIFFLAGS filled in.
    unsafe {
        req.ifr_ifru.ifru_flags |= up;
    }
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(os_err("bringing lo up: SIOCSIFFLAGS"));
    }
    Ok(())
}

/// A new network namespace with `lo` up, as a container gets at create: made by a short-lived
/// thread, so the calling process stays where it is.
pub fn new_namespace() -> Result<File> {
    std::thread::spawn(|| -> Result<File> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::Other(format!("unshare(CLONE_NEWNET): {e}")))?;
        loopback_up()?;
        File::open("/proc/thread-self/ns/net")
            .map_err(|e| Error::Other(format!("opening the new network namespace: {e}")))
    })
    .join()
    .map_err(|_| Error::Other("the network namespace thread panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_namespace_has_lo_up_and_leaves_ours_alone() {
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: needs root");
            return;
        }
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
        let ns = new_namespace().unwrap();
        let theirs = ns.metadata().unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(ours.ino(), theirs.ino());
        assert_eq!(
            std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino(),
            ours.ino()
        );
        let flags = std::thread::spawn(move || {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
            loopback_flags().unwrap()
        })
        .join()
        .unwrap();
        assert_ne!(flags & libc::IFF_UP, 0, "lo is down: flags {flags:#x}");
    }
}

//! The userfaultfd edge: the kernel ABI (linux/userfaultfd.h) and the four operations the
//! lazy-pages server needs — read an event, copy pages in, map zero pages, and (for tests)
//! open and register a userfaultfd of its own.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `UFFD_API`.
const UFFD_API: u64 = 0xAA;
const UFFDIO: u8 = 0xAA;

/// A missing page was touched.
pub const EVENT_PAGEFAULT: u8 = 0x12;
/// The process forked; the child's memory has its own userfaultfd (in the event).
pub const EVENT_FORK: u8 = 0x13;
/// `mremap` moved a range.
pub const EVENT_REMAP: u8 = 0x14;
/// `madvise(MADV_DONTNEED/REMOVE)` dropped a range.
pub const EVENT_REMOVE: u8 = 0x15;
/// `munmap` removed a range.
pub const EVENT_UNMAP: u8 = 0x16;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg` (32 bytes, packed in the kernel; every field here is naturally aligned).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    arg: [u64; 3],
}

nix::ioctl_readwrite!(uffdio_api, UFFDIO, 0x3F, UffdioApi);
nix::ioctl_readwrite!(uffdio_register, UFFDIO, 0x00, UffdioRegister);
nix::ioctl_readwrite!(uffdio_copy, UFFDIO, 0x03, UffdioCopy);
nix::ioctl_readwrite!(uffdio_zeropage, UFFDIO, 0x04, UffdioZeropage);

/// One event read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A fault at this address (not page aligned).
    PageFault {
        /// The faulting address.
        address: u64,
    },
    /// A fork: the child's userfaultfd was installed in this process as `fd`.
    Fork {
        /// The new fd.
        fd: i32,
    },
    /// `[from, from+len)` moved to `to`.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length.
        len: u64,
    },
    /// `[start, end)` was dropped (madvise or munmap): it reads as zeros or is gone.
    Remove {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
    /// An event this server does not know.
    Other(u8),
}

/// What a copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// All bytes are in.
    Done,
    /// Some page of the range was already present (filled by an earlier copy, or the
    /// process wrote it after a remove): copy the rest page by page.
    Exists,
    /// The range is no longer mapped (the process unmapped it).
    Gone,
    /// The process has exited.
    Dead,
    /// The address space is changing (a fork or remap event is not read yet), or only part
    /// of the range was copied: read the task's events, then retry.
    Again,
}

/// Reads one event; `None` when none is pending (the fd is non-blocking) or the fd is closed.
pub fn read_event(fd: &OwnedFd) -> std::io::Result<Option<Event>> {
    let mut msg = UffdMsg::default();
    let size = std::mem::size_of::<UffdMsg>();
    // SAFETY: reads at most `size` bytes into a plain-old-data struct of that size.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut msg as *mut UffdMsg).cast(), size) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(e),
        };
    }
    if n == 0 {
        return Ok(None);
    }
    if usize::try_from(n).unwrap_or(0) != size {
        return Err(std::io::Error::other(format!(
            "short uffd_msg read: {n} bytes"
        )));
    }
    Ok(Some(match msg.event {
        EVENT_PAGEFAULT => Event::PageFault {
            address: msg.arg[1],
        },
        EVENT_FORK => Event::Fork {
            fd: (msg.arg[0] & 0xffff_ffff) as i32,
        },
        EVENT_REMAP => Event::Remap {
            from: msg.arg[0],
            to: msg.arg[1],
            len: msg.arg[2],
        },
        EVENT_REMOVE | EVENT_UNMAP => Event::Remove {
            start: msg.arg[0],
            end: msg.arg[1],
        },
        e => Event::Other(e),
    }))
}

/// Copies `data` (whole pages) to `dst` in the faulting process and wakes its waiters.
pub fn copy(fd: &OwnedFd, dst: u64, data: &[u8]) -> std::io::Result<Copied> {
    let mut c = UffdioCopy {
        dst,
        src: data.as_ptr() as u64,
        len: data.len() as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: `c` is a valid uffdio_copy; `src..src+len` is `data`, alive for the call.
    let r = unsafe { uffdio_copy(fd.as_raw_fd(), &mut c) };
    outcome(r, c.copy, data.len())
}

/// Maps zero pages over `[dst, dst+len)` and wakes its waiters.
pub fn zeropage(fd: &OwnedFd, dst: u64, len: u64) -> std::io::Result<Copied> {
    let mut z = UffdioZeropage {
        range: UffdioRange { start: dst, len },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: `z` is a valid uffdio_zeropage.
    let r = unsafe { uffdio_zeropage(fd.as_raw_fd(), &mut z) };
    outcome(r, z.zeropage, usize::try_from(len).unwrap_or(usize::MAX))
}

fn outcome(r: nix::Result<i32>, done: i64, want: usize) -> std::io::Result<Copied> {
    match r {
        Ok(_) if usize::try_from(done).ok() == Some(want) => Ok(Copied::Done),
        Ok(_) => Ok(Copied::Again),
        Err(nix::errno::Errno::EEXIST) => Ok(Copied::Exists),
        Err(nix::errno::Errno::ENOENT) => Ok(Copied::Gone),
        Err(nix::errno::Errno::ESRCH) => Ok(Copied::Dead),
        Err(nix::errno::Errno::EAGAIN) => Ok(Copied::Again),
        Err(e) => Err(e.into()),
    }
}

/// Opens a userfaultfd of this process and registers `[start, start+len)` for missing-page
/// faults: the same state CRIU's restorer leaves a restored task in. Used by tests and
/// benchmarks of the server.
pub fn open_registered(start: u64, len: u64) -> std::io::Result<OwnedFd> {
    // SAFETY: userfaultfd(2) with flags only; returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let raw = i32::try_from(raw).map_err(|_| std::io::Error::other("fd out of range"))?;
    // SAFETY: the syscall returned a new fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: valid uffdio_api.
    unsafe { uffdio_api(fd.as_raw_fd(), &mut api) }?;
    let mut reg = UffdioRegister {
        range: UffdioRange { start, len },
        mode: 1, // UFFDIO_REGISTER_MODE_MISSING
        ioctls: 0,
    };
    // SAFETY: valid uffdio_register over a range this process mapped.
    unsafe { uffdio_register(fd.as_raw_fd(), &mut reg) }?;
    Ok(fd)
}

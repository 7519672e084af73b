//! The kernel edge for rootfs and namespace set-up: one `Syscall` trait, the Linux
//! implementation, and a recording implementation so mount logic is unit-tested without root.
//!
//! Only the calls whose order and arguments matter to the container's view of the world go
//! through here (mount, pivot_root, mknod, hostname, ...); plain file I/O does not.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

/// A result with a bare errno: callers add the context.
pub type SysResult<T> = std::result::Result<T, nix::Error>;

/// The system calls rootfs and namespace set-up need.
pub trait Syscall: Send + Sync {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()>;
    /// umount2(2).
    fn umount2(&self, target: &Path, flags: MntFlags) -> SysResult<()>;
    /// pivot_root(2).
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()>;
    /// chroot(2).
    fn chroot(&self, path: &Path) -> SysResult<()>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> SysResult<()>;
    /// fchdir(2) to an open directory.
    fn fchdir(&self, fd: RawFd) -> SysResult<()>;
    /// mknod(2).
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> SysResult<()>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> SysResult<()>;
    /// setdomainname(2).
    fn setdomainname(&self, name: &str) -> SysResult<()>;
    /// setns(2) on an open namespace file.
    fn setns(&self, fd: RawFd, nstype: nix::sched::CloneFlags) -> SysResult<()>;
    /// unshare(2).
    fn unshare(&self, flags: nix::sched::CloneFlags) -> SysResult<()>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> SysResult<()> {
        nix::mount::umount2(target, flags)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chroot(&self, path: &Path) -> SysResult<()> {
        nix::unistd::chroot(path)
    }

    fn chdir(&self, path: &Path) -> SysResult<()> {
        nix::unistd::chdir(path)
    }

    fn fchdir(&self, fd: RawFd) -> SysResult<()> {
        nix::unistd::fchdir(fd)
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> SysResult<()> {
        nix::sys::stat::mknod(path, kind, perm, dev)
    }

    fn sethostname(&self, name: &str) -> SysResult<()> {
        nix::unistd::sethostname(name)
    }

    fn setdomainname(&self, name: &str) -> SysResult<()> {
        let c = CString::new(name).map_err(|_| nix::Error::EINVAL)?;
        // SAFETY: c is a valid NUL-terminated buffer of the given length.
        let r = unsafe { libc::setdomainname(c.as_ptr(), c.as_bytes().len()) };
        nix::Error::result(r).map(drop)
    }

    fn setns(&self, fd: RawFd, nstype: nix::sched::CloneFlags) -> SysResult<()> {
        // SAFETY: the fd is owned by the caller for the duration of the call.
        let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        nix::sched::setns(bfd, nstype)
    }

    fn unshare(&self, flags: nix::sched::CloneFlags) -> SysResult<()> {
        nix::sched::unshare(flags)
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// mount(source, target, fstype, flags, data)
    Mount(
        Option<PathBuf>,
        PathBuf,
        Option<String>,
        MsFlags,
        Option<String>,
    ),
    /// umount2(target)
    Umount(PathBuf),
    /// pivot_root(new, old)
    PivotRoot(PathBuf, PathBuf),
    /// chroot(path)
    Chroot(PathBuf),
    /// chdir(path)
    Chdir(PathBuf),
    /// fchdir(fd)
    Fchdir,
    /// mknod(path, kind, perm, dev)
    Mknod(PathBuf, SFlag, u32, u64),
    /// sethostname(name)
    Hostname(String),
    /// setdomainname(name)
    Domainname(String),
    /// setns(type)
    Setns(nix::sched::CloneFlags),
    /// unshare(flags)
    Unshare(nix::sched::CloneFlags),
}

/// Records calls instead of making them; `fail_mount` makes mounts of one fstype fail.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    /// The calls, in order.
    pub calls: Mutex<Vec<Call>>,
    /// Mounts of this fstype fail with EPERM.
    pub fail_mount: Option<String>,
}

impl RecordingSyscall {
    fn push(&self, c: Call) {
        if let Ok(mut v) = self.calls.lock() {
            v.push(c);
        }
    }

    /// A copy of the calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()> {
        if fstype.is_some() && fstype == self.fail_mount.as_deref() {
            return Err(nix::Error::EPERM);
        }
        self.push(Call::Mount(
            source.map(Path::to_path_buf),
            target.to_path_buf(),
            fstype.map(str::to_string),
            flags,
            data.map(str::to_string),
        ));
        Ok(())
    }

    fn umount2(&self, target: &Path, _flags: MntFlags) -> SysResult<()> {
        self.push(Call::Umount(target.to_path_buf()));
        Ok(())
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()> {
        self.push(Call::PivotRoot(
            new_root.to_path_buf(),
            put_old.to_path_buf(),
        ));
        Ok(())
    }

    fn chroot(&self, path: &Path) -> SysResult<()> {
        self.push(Call::Chroot(path.to_path_buf()));
        Ok(())
    }

    fn chdir(&self, path: &Path) -> SysResult<()> {
        self.push(Call::Chdir(path.to_path_buf()));
        Ok(())
    }

    fn fchdir(&self, _fd: RawFd) -> SysResult<()> {
        self.push(Call::Fchdir);
        Ok(())
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> SysResult<()> {
        self.push(Call::Mknod(path.to_path_buf(), kind, perm.bits(), dev));
        Ok(())
    }

    fn sethostname(&self, name: &str) -> SysResult<()> {
        self.push(Call::Hostname(name.to_string()));
        Ok(())
    }

    fn setdomainname(&self, name: &str) -> SysResult<()> {
        self.push(Call::Domainname(name.to_string()));
        Ok(())
    }

    fn setns(&self, _fd: RawFd, nstype: nix::sched::CloneFlags) -> SysResult<()> {
        self.push(Call::Setns(nstype));
        Ok(())
    }

    fn unshare(&self, flags: nix::sched::CloneFlags) -> SysResult<()> {
        self.push(Call::Unshare(flags));
        Ok(())
    }
}

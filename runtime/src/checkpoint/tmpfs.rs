//! The container's tmpfs mounts (`/dev`, `/dev/shm`, `/run`, …), kept by cryo instead of CRIU.
//!
//! CRIU dumps a tmpfs by running `tar --create --gzip` on it and restores it with `tar
//! --extract --gzip`: two processes per mount and per direction, about 3 ms each on a 2-core
//! machine, which is 12 to 15 ms of every restore of a container with the usual four. cryo
//! marks the spec's tmpfs mounts external instead, writes their content itself while CRIU has
//! the tree frozen (at post-dump, so it is consistent with the dumped processes) into one
//! file per mount in the images, and at restore mounts a fresh tmpfs with the same options,
//! fills it, and hands it to CRIU as the mount's source, which CRIU binds in place.
//!
//! What is kept is what CRIU's `tar` keeps: directories, regular files (holes stay holes),
//! symbolic links, hard links, device nodes and fifos, with their permission bits, owner and
//! access and modification times. Sockets are left out (as `tar` does; CRIU re-binds the unix
//! sockets of the restored processes itself), and so are extended attributes (CRIU runs `tar`
//! without `--xattrs`). Mount points inside the tmpfs (`/dev/pts`, a bind of `/dev/null`) are
//! kept as empty directories or files for CRIU to mount on again, as `tar
//! --one-file-system` does.
//!
//! The content file (`tmpfs-N.cryo.img`):
//!
//! ```text
//! "CRYOTMPF" | version u32 LE = 1
//! entries, parents before children; the first is the root (empty path):
//!   kind u8 | path_len u32 | path (relative, '/'-separated) | mode u32 (permission bits)
//!   | uid u32 | gid u32 | atime_s i64 | atime_ns u32 | mtime_s i64 | mtime_ns u32 | then by kind:
//!   1 directory: -
//!   2 regular file: size u64 | segments u32 | (offset u64, len u64) per segment | the
//!     segments' bytes in order (everything outside a segment is a hole)
//!   3 symbolic link: len u32 | target
//!   4 character device, 5 block device: rdev u64
//!   6 fifo: -
//!   7 hard link: len u32 | path of an earlier regular file entry
//! kind 0 ends the file.
//! ```

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

const MAGIC: &[u8; 8] = b"CRYOTMPF";
const VERSION: u32 = 1;

const END: u8 = 0;
const DIR: u8 = 1;
const REG: u8 = 2;
const SYMLINK: u8 = 3;
const CHR: u8 = 4;
const BLK: u8 = 5;
const FIFO: u8 = 6;
const HARDLINK: u8 = 7;

/// Longest path or link target accepted from a content file (PATH_MAX).
const MAX_PATH: u32 = 4096;
/// Longest path (relative to the tmpfs) a content file gets, so that the restore's full path
/// (the state directory's, then this) stays within PATH_MAX.
const MAX_SAVED_PATH: usize = 3072;
/// Largest tmpfs (bytes in use at the checkpoint) that cryo keeps; larger ones are CRIU's.
const KEEP_MAX_BYTES: u64 = 1 << 20;
/// The mount flags a kept tmpfs may carry (anything else in `cryo.json` is refused).
const ALLOWED_FLAGS: u64 = libc::MS_RDONLY
    | libc::MS_NOSUID
    | libc::MS_NODEV
    | libc::MS_NOEXEC
    | libc::MS_NOATIME
    | libc::MS_NODIRATIME
    | libc::MS_RELATIME
    | libc::MS_STRICTATIME;

/// A tmpfs mount of the container that cryo keeps instead of CRIU (recorded in `cryo.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptTmpfs {
    /// The mount point in the container.
    pub path: String,
    /// The tmpfs's own options (`size=…,mode=…`), as the kernel showed them.
    pub data: String,
    /// The mount's flags (`MS_RDONLY`, `MS_NOSUID`, …).
    pub flags: u64,
    /// Its content file in the images.
    pub file: String,
}

/// The spec's tmpfs mounts that cryo keeps for the container whose init is `pid`: every
/// `tmpfs` mount of the spec (a masked directory aside), and the tmpfs that holds the cgroup
/// v1 hierarchies of a `cgroup` mount, that is, in the container's mount
/// namespace, exactly one tmpfs mounted at its destination from the root of its filesystem.
/// Anything else (a tmpfs stacked on another mount, one the container replaced) is left to
/// CRIU.
pub(super) fn kept(
    spec: &oci_spec::runtime::Spec,
    pid: i32,
    masked: &[String],
) -> Result<Vec<KeptTmpfs>> {
    let dests: Vec<String> = spec
        .mounts()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        // A cgroup v1 mount is a tmpfs holding a bind per hierarchy (`rootfs::mounts`).
        .filter(|m| {
            matches!(m.typ().as_deref(), Some("tmpfs" | "cgroup")) && !super::externals::is_bind(m)
        })
        .map(|m| m.destination().to_string_lossy().into_owned())
        .filter(|d| d != "/" && !masked.contains(d))
        .collect();
    // In a user namespace the container's tmpfs mounts belong to it; a tmpfs cryo mounts at
    // the restore would not. CRIU restores those itself.
    let userns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_deref())
        .unwrap_or(&[])
        .iter()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User);
    if dests.is_empty() || userns {
        return Ok(Vec::new());
    }
    let root_path = format!("/proc/{pid}/root");
    let root = File::open(&root_path).io_ctx(&root_path)?;
    let path = format!("/proc/{pid}/mountinfo");
    let mountinfo = std::fs::read_to_string(&path).io_ctx(&path)?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for d in dests {
        if !seen.insert(d.clone()) {
            continue;
        }
        let Some((data, flags)) = lone_tmpfs_at(&mountinfo, &d) else {
            continue;
        };
        // A kernel without openat2 (before 5.6, or a seccomp profile that refuses it) leaves
        // every tmpfs to CRIU; so does a tmpfs holding more than KEEP_MAX_BYTES: the pages
        // cryo fills at the restore are charged to cryo's memory cgroup, CRIU's tar runs in
        // the container's.
        let used = match open_in_root(&root, &d) {
            Ok(fd) => nix::sys::statfs::fstatfs(&fd).ok().map(|s| {
                let blocks = s.blocks().saturating_sub(s.blocks_free());
                blocks.saturating_mul(u64::try_from(s.block_size()).unwrap_or(4096))
            }),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                return Ok(Vec::new())
            }
            Err(_) => None,
        };
        if used.is_none_or(|u| u > KEEP_MAX_BYTES) {
            continue;
        }
        let file = format!("tmpfs-{}.cryo.img", out.len());
        out.push(KeptTmpfs {
            path: d,
            data,
            flags,
            file,
        });
    }
    Ok(out)
}

/// The tmpfs options and mount flags of the one mount at `mountpoint` in `mountinfo`, when
/// there is exactly one and it is a tmpfs mounted from its root.
fn lone_tmpfs_at(mountinfo: &str, mountpoint: &str) -> Option<(String, u64)> {
    use crate::rootfs::mounts::{lone_mount_at, parse_mountinfo};
    let mounts = parse_mountinfo(mountinfo);
    let m = lone_mount_at(&mounts, Path::new(mountpoint))
        .filter(|m| m.root == "/" && m.fstype == "tmpfs")?;
    let data = m
        .super_options
        .split(',')
        .filter(|o| !o.is_empty() && *o != "rw" && *o != "ro")
        .collect::<Vec<_>>()
        .join(",");
    let flags = m.options.split(',').fold(0u64, |flags, o| {
        flags
            | match o {
                "ro" => libc::MS_RDONLY,
                "nosuid" => libc::MS_NOSUID,
                "nodev" => libc::MS_NODEV,
                "noexec" => libc::MS_NOEXEC,
                "noatime" => libc::MS_NOATIME,
                "nodiratime" => libc::MS_NODIRATIME,
                "relatime" => libc::MS_RELATIME,
                "strictatime" => libc::MS_STRICTATIME,
                _ => 0,
            }
    });
    Some((data, flags))
}

fn sys_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::Other(format!("{what}: {e}"))
}

/// Opens `path` (absolute, in the container) below `root` as a directory, resolving every
/// component inside `root` (symlinks included) as the container would.
fn open_in_root(root: &File, path: &str) -> std::io::Result<OwnedFd> {
    let rel = CString::new(path.trim_start_matches('/'))
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    /// `struct open_how` of linux/openat2.h.
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: u64::try_from(libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC).unwrap_or(0),
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 reads the path and the open_how of the given size; the fd it returns
    // is owned by nobody else.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            rel.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: a fresh descriptor from openat2.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes the content of each kept tmpfs of the container whose init is `pid` into `images`.
/// The container must be frozen (CRIU's post-dump).
pub(super) fn save_all(pid: i32, kept: &[KeptTmpfs], images: &Path) -> Result<()> {
    if kept.is_empty() {
        return Ok(());
    }
    let root_path = format!("/proc/{pid}/root");
    let root = File::open(&root_path).io_ctx(&root_path)?;
    for k in kept {
        let dir = open_in_root(&root, &k.path).map_err(|e| {
            sys_err(
                format_args!("opening the tmpfs at {} of pid {pid}", k.path),
                e,
            )
        })?;
        let out = images.join(&k.file);
        save(dir, &k.path, &out)?;
    }
    Ok(())
}

fn stat_at(dir: RawFd, name: &CString) -> std::io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstatat writes one stat into `st`.
    let r = unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded and filled it.
    Ok(unsafe { st.assume_init() })
}

fn open_at(dir: RawFd, name: &CString, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: openat with a NUL-terminated name; the fd returned is owned by nobody else.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The common header of an entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: (i64, u32),
    mtime: (i64, u32),
}

impl Meta {
    fn of(st: &libc::stat) -> Meta {
        Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: (st.st_atime, u32::try_from(st.st_atime_nsec).unwrap_or(0)),
            mtime: (st.st_mtime, u32::try_from(st.st_mtime_nsec).unwrap_or(0)),
        }
    }
}

struct Writer<W: Write> {
    w: W,
}

impl<W: Write> Writer<W> {
    fn bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        let n = u32::try_from(b.len())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        self.w.write_all(&n.to_le_bytes())?;
        self.w.write_all(b)
    }

    fn entry(&mut self, kind: u8, path: &[u8], m: &Meta) -> std::io::Result<()> {
        self.w.write_all(&[kind])?;
        self.bytes(path)?;
        for v in [m.mode, m.uid, m.gid] {
            self.w.write_all(&v.to_le_bytes())?;
        }
        for (s, ns) in [m.atime, m.mtime] {
            self.w.write_all(&s.to_le_bytes())?;
            self.w.write_all(&ns.to_le_bytes())?;
        }
        Ok(())
    }
}

/// The data segments of the open regular file `fd` of `size` bytes (SEEK_DATA/SEEK_HOLE).
fn segments(fd: RawFd, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut at: u64 = 0;
    while at < size {
        let off = libc::off_t::try_from(at)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: lseek on an fd we own.
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (data, hole) = (
            u64::try_from(data).unwrap_or(0),
            u64::try_from(hole).unwrap_or(0).min(size),
        );
        if hole > data {
            out.push((data, hole - data));
        }
        at = hole.max(data + 1);
    }
    Ok(out)
}

/// The names in the open directory `dir`, `.` and `..` left out, sorted.
fn names_in(dir: &OwnedFd) -> nix::Result<Vec<CString>> {
    let dup = nix::unistd::dup(dir.as_raw_fd())?;
    let mut d = nix::dir::Dir::from_fd(dup)?;
    let mut names = Vec::new();
    for ent in d.iter() {
        let n = ent?.file_name().to_owned();
        if n.as_bytes() != b"." && n.as_bytes() != b".." {
            names.push(n);
        }
    }
    names.sort();
    Ok(names)
}

/// A directory being written: its fd, its path in the tmpfs and the names not written yet.
struct Frame {
    fd: OwnedFd,
    path: Vec<u8>,
    names: std::vec::IntoIter<CString>,
}

/// Writes the tree under the open directory `root` (the root of a tmpfs, `what` in errors)
/// into the content file `out`. Depth first, with an fd open per ancestor only.
pub fn save(root: OwnedFd, what: &str, out: &Path) -> Result<()> {
    let fail = |e: std::io::Error, at: &[u8]| {
        Error::Other(format!(
            "keeping the tmpfs at {what}: {}: {e}",
            Path::new(what).join(OsStr::from_bytes(at)).display()
        ))
    };
    let sfs = nix::sys::statfs::fstatfs(&root).map_err(|e| fail(e.into(), b""))?;
    if sfs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        return Err(Error::Other(format!(
            "keeping the tmpfs at {what}: it is no tmpfs any more"
        )));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .io_ctx(out)?;
    let mut w = Writer {
        w: BufWriter::with_capacity(1 << 20, file),
    };
    w.w.write_all(MAGIC).io_ctx(out)?;
    w.w.write_all(&VERSION.to_le_bytes()).io_ctx(out)?;
    let dot = CString::new(".").unwrap_or_default();
    let rst = stat_at(root.as_raw_fd(), &dot).map_err(|e| fail(e, b""))?;
    let dev = rst.st_dev;
    w.entry(DIR, b"", &Meta::of(&rst)).io_ctx(out)?;
    // Hard links: (inode) -> the path first written for it.
    let mut links: HashMap<u64, Vec<u8>> = HashMap::new();
    let names = names_in(&root).map_err(|e| fail(e.into(), b""))?;
    let mut stack = vec![Frame {
        fd: root,
        path: Vec::new(),
        names: names.into_iter(),
    }];
    let mut copy_buf = vec![0u8; 1 << 20];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.next() else {
            stack.pop();
            continue;
        };
        let dir = top.fd.as_raw_fd();
        let mut path = top.path.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name.to_bytes());
        if path.len() > MAX_SAVED_PATH {
            return Err(fail(
                std::io::Error::other(format!(
                    "a path of {} bytes (cryo keeps tmpfs paths up to {MAX_SAVED_PATH})",
                    path.len()
                )),
                &path,
            ));
        }
        let st = match stat_at(dir, &name) {
            Ok(st) => st,
            // Gone meanwhile (the tree is frozen, but not its kernel users): skip.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(fail(e, &path)),
        };
        let m = Meta::of(&st);
        let fmt = st.st_mode & libc::S_IFMT;
        if st.st_dev != dev {
            // A mount point: an empty directory or file to mount on again.
            let kind = if fmt == libc::S_IFDIR { DIR } else { REG };
            w.entry(kind, &path, &m).io_ctx(out)?;
            if kind == REG {
                w.w.write_all(&0u64.to_le_bytes()).io_ctx(out)?;
                w.w.write_all(&0u32.to_le_bytes()).io_ctx(out)?;
            }
            continue;
        }
        match fmt {
            libc::S_IFDIR => {
                w.entry(DIR, &path, &m).io_ctx(out)?;
                let fd = open_at(dir, &name, libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(|e| fail(e, &path))?;
                same_file(&fd, &st).map_err(|e| fail(e, &path))?;
                let names = names_in(&fd).map_err(|e| fail(e.into(), &path))?;
                stack.push(Frame {
                    fd,
                    path,
                    names: names.into_iter(),
                });
            }
            libc::S_IFREG => {
                if st.st_nlink > 1 {
                    if let Some(first) = links.get(&st.st_ino) {
                        w.entry(HARDLINK, &path, &m).io_ctx(out)?;
                        w.bytes(first).io_ctx(out)?;
                        continue;
                    }
                    links.insert(st.st_ino, path.clone());
                }
                // Non-blocking: a lease held by a frozen process must not stall the dump.
                let fd = open_at(
                    dir,
                    &name,
                    libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOATIME,
                )
                .map_err(|e| fail(e, &path))?;
                same_file(&fd, &st).map_err(|e| fail(e, &path))?;
                let size = u64::try_from(st.st_size).unwrap_or(0);
                let segs = segments(fd.as_raw_fd(), size).map_err(|e| fail(e, &path))?;
                w.entry(REG, &path, &m).io_ctx(out)?;
                w.w.write_all(&size.to_le_bytes()).io_ctx(out)?;
                let n = u32::try_from(segs.len())
                    .map_err(|_| fail(std::io::Error::from_raw_os_error(libc::EFBIG), &path))?;
                w.w.write_all(&n.to_le_bytes()).io_ctx(out)?;
                for (o, l) in &segs {
                    w.w.write_all(&o.to_le_bytes()).io_ctx(out)?;
                    w.w.write_all(&l.to_le_bytes()).io_ctx(out)?;
                }
                let f = File::from(fd);
                for (o, l) in &segs {
                    copy_range(&f, *o, *l, &mut w.w, &mut copy_buf).map_err(|e| fail(e, &path))?;
                }
            }
            libc::S_IFLNK => {
                let target = nix::fcntl::readlinkat(Some(dir), name.as_c_str())
                    .map_err(|e| fail(e.into(), &path))?;
                w.entry(SYMLINK, &path, &m).io_ctx(out)?;
                w.bytes(target.as_bytes()).io_ctx(out)?;
            }
            libc::S_IFCHR | libc::S_IFBLK => {
                w.entry(if fmt == libc::S_IFCHR { CHR } else { BLK }, &path, &m)
                    .io_ctx(out)?;
                w.w.write_all(&st.st_rdev.to_le_bytes()).io_ctx(out)?;
            }
            libc::S_IFIFO => w.entry(FIFO, &path, &m).io_ctx(out)?,
            // Sockets: CRIU binds the restored processes' sockets again itself.
            _ => {}
        }
    }
    w.w.write_all(&[END]).io_ctx(out)?;
    let file =
        w.w.into_inner()
            .map_err(|e| Error::io(out, e.into_error()))?;
    drop(file);
    Ok(())
}

/// Checks that the opened `fd` is the entry `st` described (nothing swapped in or mounted
/// over it between the stat and the open).
fn same_file(fd: &OwnedFd, st: &libc::stat) -> std::io::Result<()> {
    let now = nix::sys::stat::fstat(fd.as_raw_fd())?;
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
        return Err(std::io::Error::other("changed while it was being read"));
    }
    Ok(())
}

/// Copies `len` bytes at `offset` of `f` to `w`; a file that shrank meanwhile is padded with
/// zeros so the content file stays well formed.
fn copy_range(
    f: &File,
    offset: u64,
    len: u64,
    w: &mut impl Write,
    buf: &mut [u8],
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
        let got = f.read_at(&mut buf[..n], offset + done)?;
        if got == 0 {
            buf[..n].fill(0);
            w.write_all(&buf[..n])?;
            done += n as u64;
            continue;
        }
        w.write_all(&buf[..got])?;
        done += got as u64;
    }
    Ok(())
}

/// Reads a content file, with the entry being read for errors.
struct Reader<R: Read> {
    r: R,
    file: PathBuf,
    entry: usize,
}

impl<R: Read> Reader<R> {
    fn bad(&self, what: impl std::fmt::Display) -> Error {
        Error::Other(format!(
            "{}: entry {}: {what} (damaged tmpfs content file)",
            self.file.display(),
            self.entry
        ))
    }

    fn exact<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| self.bad(format_args!("truncated: {e}")))?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.exact()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.exact()?))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.exact()?))
    }

    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.u32()?;
        if n > MAX_PATH {
            return Err(self.bad(format_args!("a name of {n} bytes")));
        }
        let mut b = vec![0u8; usize::try_from(n).unwrap_or(0)];
        self.r
            .read_exact(&mut b)
            .map_err(|e| self.bad(format_args!("truncated: {e}")))?;
        Ok(b)
    }

    fn meta(&mut self) -> Result<Meta> {
        let (mode, uid, gid) = (self.u32()?, self.u32()?, self.u32()?);
        let atime = (self.i64()?, self.u32()?);
        let mtime = (self.i64()?, self.u32()?);
        if mode > 0o7777 {
            return Err(self.bad(format_args!("mode {mode:o}")));
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            atime,
            mtime,
        })
    }
}

/// Whether `p` is a relative path of plain components (no `.`, `..`, empty or NUL).
fn plain_path(p: &[u8]) -> bool {
    !p.is_empty()
        && !p.contains(&0)
        && p.split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

fn parent_of(p: &[u8]) -> &[u8] {
    p.iter()
        .rposition(|&b| b == b'/')
        .map_or(&p[..0], |i| &p[..i])
}

fn set_meta(path: &Path, m: &Meta, symlink: bool) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = if symlink {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    // SAFETY: plain syscalls on a NUL-terminated path.
    unsafe {
        if libc::fchownat(libc::AT_FDCWD, c.as_ptr(), m.uid, m.gid, flags) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // chown clears set-id bits: the mode goes after it. Links have no mode of their own.
        if !symlink && libc::fchmodat(libc::AT_FDCWD, c.as_ptr(), m.mode, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    set_times(&c, m, flags)
}

fn set_times(c: &CString, m: &Meta, flags: i32) -> std::io::Result<()> {
    let ts = |(s, ns): (i64, u32)| libc::timespec {
        tv_sec: s,
        tv_nsec: libc::c_long::from(ns.min(999_999_999)),
    };
    let times = [ts(m.atime), ts(m.mtime)];
    // SAFETY: utimensat reads two timespecs.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Recreates the tree of the content file `file` in the empty directory `target` (the root of
/// a fresh tmpfs). Every path is checked before use: an entry's parent must be a directory
/// made by an earlier entry, so no entry can reach outside `target`.
pub fn restore(file: &Path, target: &Path) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(file)
        .io_ctx(file)?;
    if !f.metadata().io_ctx(file)?.is_file() {
        return Err(Error::Other(format!(
            "{}: not a regular file (a tmpfs content file)",
            file.display()
        )));
    }
    let mut r = Reader {
        r: BufReader::with_capacity(1 << 20, f),
        file: file.to_path_buf(),
        entry: 0,
    };
    let magic: [u8; 8] = r.exact()?;
    if &magic != MAGIC {
        return Err(r.bad("not a tmpfs content file"));
    }
    let v = r.u32()?;
    if v != VERSION {
        return Err(r.bad(format_args!("version {v} (this build reads {VERSION})")));
    }
    let mut dirs: HashSet<Vec<u8>> = HashSet::new();
    let mut files: HashSet<Vec<u8>> = HashSet::new();
    let mut dir_meta: Vec<(PathBuf, Meta)> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let [kind] = r.exact::<1>()?;
        if kind == END {
            break;
        }
        let path = r.bytes()?;
        let m = r.meta()?;
        let first = r.entry == 0;
        if first != path.is_empty() || (first && kind != DIR) {
            return Err(r.bad("the first entry, and only it, must be the root directory"));
        }
        if !first && (!plain_path(&path) || !dirs.contains(parent_of(&path))) {
            return Err(r.bad(format_args!(
                "path {:?} is not below a directory of the file",
                String::from_utf8_lossy(&path)
            )));
        }
        if dirs.contains(&path) || files.contains(&path) {
            return Err(r.bad(format_args!(
                "path {:?} twice",
                String::from_utf8_lossy(&path)
            )));
        }
        let dest = target.join(OsStr::from_bytes(&path));
        let io = |e: std::io::Error| Error::io(&dest, e);
        match kind {
            DIR => {
                if !first {
                    std::fs::create_dir(&dest).map_err(io)?;
                }
                dirs.insert(path);
                dir_meta.push((dest, m));
            }
            REG => {
                let size = r.u64()?;
                let n = r.u32()?;
                let mut segs = Vec::new();
                let mut end = 0u64;
                for _ in 0..n {
                    let (o, l) = (r.u64()?, r.u64()?);
                    if o < end || o.checked_add(l).is_none_or(|e| e > size) {
                        return Err(r.bad("file segments out of order or past the size"));
                    }
                    end = o + l;
                    segs.push((o, l));
                }
                let out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&dest)
                    .map_err(io)?;
                out.set_len(size).map_err(io)?;
                for (o, l) in segs {
                    write_segment(&mut r, &out, o, l, &mut buf, &dest)?;
                }
                drop(out);
                set_meta(&dest, &m, false).map_err(io)?;
                files.insert(path);
            }
            SYMLINK => {
                let t = r.bytes()?;
                if t.is_empty() || t.contains(&0) {
                    return Err(r.bad("an empty symbolic link"));
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&t), &dest).map_err(io)?;
                set_meta(&dest, &m, true).map_err(io)?;
                files.insert(path);
            }
            CHR | BLK | FIFO => {
                let rdev = if kind == FIFO { 0 } else { r.u64()? };
                let fmt = match kind {
                    CHR => libc::S_IFCHR,
                    BLK => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let c = CString::new(dest.as_os_str().as_bytes())
                    .map_err(|_| r.bad("a NUL in a path"))?;
                // SAFETY: mknod on a NUL-terminated path.
                if unsafe { libc::mknod(c.as_ptr(), fmt | 0o600, rdev) } < 0 {
                    return Err(io(std::io::Error::last_os_error()));
                }
                set_meta(&dest, &m, false).map_err(io)?;
                files.insert(path);
            }
            HARDLINK => {
                let t = r.bytes()?;
                if !files.contains(&t) || !plain_path(&t) {
                    return Err(r.bad("a hard link to no earlier file"));
                }
                std::fs::hard_link(target.join(OsStr::from_bytes(&t)), &dest).map_err(io)?;
                files.insert(path);
            }
            k => return Err(r.bad(format_args!("unknown entry kind {k}"))),
        }
        r.entry += 1;
    }
    // Directories last, deepest first: creating their entries changed their times.
    for (dest, m) in dir_meta.iter().rev() {
        set_meta(dest, m, false).map_err(|e| Error::io(dest, e))?;
    }
    Ok(())
}

fn write_segment<R: Read>(
    r: &mut Reader<R>,
    out: &File,
    offset: u64,
    len: u64,
    buf: &mut [u8],
    dest: &Path,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
        r.r.read_exact(&mut buf[..n])
            .map_err(|e| r.bad(format_args!("truncated file data: {e}")))?;
        out.write_all_at(&buf[..n], offset + done)
            .map_err(|e| Error::io(dest, e))?;
        done += n as u64;
    }
    Ok(())
}

/// Fresh tmpfs mounts that stand in for mounts of a checkpoint (kept tmpfs mounts, masked
/// directories) while CRIU binds them into the container, each in a numbered directory under
/// one parent; unmounted and removed on drop.
pub(super) struct Mounted {
    parent: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Mounted {
    /// Mounts will go under `parent` (made on the first one).
    pub(super) fn under(parent: PathBuf) -> Mounted {
        Mounted {
            parent,
            mounts: Vec::new(),
        }
    }

    /// Mounts a tmpfs with `data` and `flags` in the next directory; `what` for errors.
    fn tmpfs(&mut self, data: &str, flags: MsFlags, what: &str) -> Result<PathBuf> {
        super::mkdir_0700(&self.parent)?;
        let path = super::absolute(&self.parent.join(self.mounts.len().to_string()))?;
        super::mkdir_0700(&path)?;
        let opts = (!data.is_empty()).then_some(data);
        nix::mount::mount(Some("tmpfs"), &path, Some("tmpfs"), flags, opts).map_err(|e| {
            Error::Other(format!(
                "mounting a tmpfs ({data}) for {what} on {}: {e}",
                path.display()
            ))
        })?;
        self.mounts.push(path.clone());
        Ok(path)
    }

    /// An empty read-only tmpfs like the masked directory `d`; its path. One tmpfs per
    /// masked directory, as at create: no two masks share a filesystem.
    pub(super) fn masked(&mut self, d: &super::MaskedDir) -> Result<String> {
        let data = format!("mode={:o},uid={},gid={}", d.mode, d.uid, d.gid);
        let what = format!("the masked {}", d.path);
        let path = self.tmpfs(&data, MsFlags::MS_RDONLY, &what)?;
        Ok(path.to_string_lossy().into_owned())
    }

    /// A tmpfs like `k`, filled from its content file in `images`; its path.
    pub(super) fn kept(&mut self, images: &Path, k: &KeptTmpfs) -> Result<String> {
        if k.flags & !ALLOWED_FLAGS != 0 {
            return Err(Error::Other(format!(
                "cryo.json: kept_tmpfs {}: mount flags {:#x} (only ro, nosuid, nodev, noexec and \
                 atime flags are allowed)",
                k.path, k.flags
            )));
        }
        let plain_name = k
            .file
            .strip_prefix("tmpfs-")
            .and_then(|r| r.strip_suffix(".cryo.img"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !plain_name || k.data.contains('\0') {
            return Err(Error::Other(format!(
                "cryo.json: kept_tmpfs {}: bad content file name {:?} or options",
                k.path, k.file
            )));
        }
        let flags = MsFlags::from_bits_truncate(k.flags);
        let path = self.tmpfs(&k.data, flags - MsFlags::MS_RDONLY, &k.path)?;
        restore(&images.join(&k.file), &path)?;
        if flags.contains(MsFlags::MS_RDONLY) {
            nix::mount::mount(
                None::<&str>,
                &path,
                None::<&str>,
                flags | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(|e| Error::Other(format!("remounting {} read-only: {e}", path.display())))?;
        }
        Ok(path.to_string_lossy().into_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for p in &self.mounts {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(p);
        }
        let _ = std::fs::remove_dir(&self.parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lone_tmpfs_from_its_root_is_kept() {
        let mi = "\
20 1 0:50 / / rw,relatime - overlay overlay rw
21 20 0:51 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755,inode64
22 21 0:52 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
23 20 0:53 / /run ro,nosuid - tmpfs tmpfs ro,mode=755
24 20 0:54 / /mnt rw - tmpfs tmpfs rw
25 24 0:55 / /mnt rw - tmpfs tmpfs rw
26 20 0:51 /x /data rw - tmpfs tmpfs rw
27 20 0:56 / /sys ro - sysfs sysfs ro
";
        assert_eq!(
            lone_tmpfs_at(mi, "/dev"),
            Some(("size=65536k,mode=755,inode64".into(), libc::MS_NOSUID))
        );
        assert_eq!(
            lone_tmpfs_at(mi, "/dev/shm"),
            Some((
                "size=65536k".into(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME
            ))
        );
        assert_eq!(
            lone_tmpfs_at(mi, "/run"),
            Some(("mode=755".into(), libc::MS_RDONLY | libc::MS_NOSUID))
        );
        assert_eq!(lone_tmpfs_at(mi, "/mnt"), None, "stacked");
        assert_eq!(lone_tmpfs_at(mi, "/data"), None, "not from its root");
        assert_eq!(lone_tmpfs_at(mi, "/sys"), None, "not a tmpfs");
        assert_eq!(lone_tmpfs_at(mi, "/nowhere"), None);
    }

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            println!("skipped: mounting a tmpfs needs root");
        }
        root
    }

    /// A tmpfs mounted on a fresh temporary directory, unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn new(data: &str) -> Tmpfs {
            let d = tempfile::tempdir().unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                d.path(),
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(data),
            )
            .unwrap();
            Tmpfs(d)
        }
        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    fn lstat(p: &Path) -> libc::stat {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        stat_at(libc::AT_FDCWD, &c).unwrap()
    }

    fn set_mtime(p: &Path, s: i64, ns: u32) {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        let m = Meta {
            mode: 0,
            uid: 0,
            gid: 0,
            atime: (s - 10, 0),
            mtime: (s, ns),
        };
        set_times(&c, &m, libc::AT_SYMLINK_NOFOLLOW).unwrap();
    }

    #[test]
    fn content_round_trips_through_a_fresh_tmpfs() {
        use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
        if !root() {
            return;
        }
        let src = Tmpfs::new("size=32m,mode=751");
        let s = src.path();
        std::fs::create_dir(s.join("a")).unwrap();
        std::fs::write(s.join("a/file"), b"hello").unwrap();
        std::fs::set_permissions(s.join("a/file"), std::fs::Permissions::from_mode(0o4640))
            .unwrap();
        std::os::unix::fs::chown(s.join("a/file"), Some(1000), Some(1001)).unwrap();
        std::fs::set_permissions(s.join("a/file"), std::fs::Permissions::from_mode(0o4640))
            .unwrap();
        std::fs::hard_link(s.join("a/file"), s.join("a/hl")).unwrap();
        let sparse = File::create(s.join("a/sparse")).unwrap();
        sparse.set_len(8 << 20).unwrap();
        sparse.write_all_at(&[7u8; 4096], 1 << 20).unwrap();
        sparse.write_all_at(&[9u8; 4096], 6 << 20).unwrap();
        drop(sparse);
        std::os::unix::fs::symlink("a/file", s.join("link")).unwrap();
        nix::unistd::mkfifo(
            &s.join("p"),
            nix::sys::stat::Mode::from_bits_truncate(0o620),
        )
        .unwrap();
        let null = CString::new(s.join("null").as_os_str().as_bytes()).unwrap();
        // SAFETY: mknod on a NUL-terminated path.
        let r = unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(r, 0);
        let _sock = std::os::unix::net::UnixListener::bind(s.join("sock")).unwrap();
        std::fs::create_dir(s.join("m")).unwrap();
        let inner = Tmpfs::new("size=1m");
        std::fs::write(inner.path().join("inside"), b"x").unwrap();
        nix::mount::mount(
            Some(inner.path()),
            &s.join("m"),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        set_mtime(&s.join("a/file"), 1_000_000_000, 500);
        set_mtime(&s.join("link"), 1_100_000_000, 0);
        set_mtime(&s.join("a"), 1_200_000_000, 7);

        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("t.cryo.img");
        let fd: OwnedFd = File::open(s).unwrap().into();
        save(fd, "/test", &file).unwrap();
        let _ = nix::mount::umount2(&s.join("m"), nix::mount::MntFlags::MNT_DETACH);

        let dst = Tmpfs::new("size=32m");
        restore(&file, dst.path()).unwrap();
        let d = dst.path();
        assert_eq!(lstat(d).st_mode & 0o7777, 0o751, "the root's mode");
        for p in ["a", "a/file", "link", "p", "null", "a/sparse"] {
            let (a, b) = (lstat(&s.join(p)), lstat(&d.join(p)));
            assert_eq!(a.st_mode, b.st_mode, "{p}: mode");
            assert_eq!((a.st_uid, a.st_gid), (b.st_uid, b.st_gid), "{p}: owner");
            assert_eq!(
                (a.st_mtime, a.st_mtime_nsec),
                (b.st_mtime, b.st_mtime_nsec),
                "{p}: mtime"
            );
            assert_eq!(a.st_rdev, b.st_rdev, "{p}: rdev");
        }
        assert_eq!(
            lstat(&d.join("a/file")).st_mode & 0o7777,
            0o4640,
            "set-uid kept after chown"
        );
        assert_eq!(std::fs::read(d.join("a/file")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_link(d.join("link")).unwrap(),
            Path::new("a/file")
        );
        let (f, h) = (
            d.join("a/file").metadata().unwrap(),
            d.join("a/hl").metadata().unwrap(),
        );
        assert_eq!(f.ino(), h.ino(), "hard links stay one file");
        assert_eq!(
            std::fs::read(d.join("a/sparse")).unwrap(),
            std::fs::read(s.join("a/sparse")).unwrap()
        );
        assert!(
            lstat(&d.join("a/sparse")).st_blocks * 512 <= 64 << 10,
            "holes stay holes"
        );
        assert!(d.join("m").is_dir(), "a mount point stays, empty");
        assert!(
            !d.join("m/inside").exists(),
            "another filesystem's content is not kept"
        );
        assert!(!d.join("sock").exists(), "sockets are left out");
    }

    fn header(out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
    }

    fn entry(out: &mut Vec<u8>, kind: u8, path: &[u8]) {
        out.push(kind);
        out.extend_from_slice(&u32::try_from(path.len()).unwrap().to_le_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(&[0u8; 12 + 24]);
    }

    #[test]
    fn damaged_content_files_are_refused_naming_file_and_entry() {
        // The good file's entries are owned by root: restoring it takes root.
        if !root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        let try_one = |name: &str, bytes: &[u8]| -> String {
            let _ = std::fs::remove_dir_all(&target);
            std::fs::create_dir(&target).unwrap();
            let f = dir.path().join(name);
            std::fs::write(&f, bytes).unwrap();
            let e = restore(&f, &target).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
            e
        };
        assert!(try_one("magic", b"NOTCRYO!\x01\0\0\0").contains("not a tmpfs content file"));
        let mut ok = Vec::new();
        header(&mut ok);
        entry(&mut ok, DIR, b"");
        entry(&mut ok, REG, b"f");
        ok.extend_from_slice(&5u64.to_le_bytes());
        ok.extend_from_slice(&1u32.to_le_bytes());
        ok.extend_from_slice(&0u64.to_le_bytes());
        ok.extend_from_slice(&5u64.to_le_bytes());
        ok.extend_from_slice(b"hello");
        ok.push(END);
        let _ = std::fs::remove_dir_all(&target);
        std::fs::create_dir(&target).unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, &ok).unwrap();
        restore(&good, &target).unwrap();
        assert_eq!(std::fs::read(target.join("f")).unwrap(), b"hello");
        let e = try_one("truncated", &ok[..ok.len() - 4]);
        assert!(e.contains("entry 1") && e.contains("truncated"), "{e}");

        let mut up = Vec::new();
        header(&mut up);
        entry(&mut up, DIR, b"");
        entry(&mut up, DIR, b"../escape");
        up.push(END);
        assert!(try_one("dotdot", &up).contains("entry 1"));
        assert!(
            !dir.path().join("escape").exists(),
            "nothing made outside the target"
        );

        let mut through = Vec::new();
        header(&mut through);
        entry(&mut through, DIR, b"");
        entry(&mut through, SYMLINK, b"l");
        through.extend_from_slice(&1u32.to_le_bytes());
        through.extend_from_slice(b"/");
        entry(&mut through, DIR, b"l/etc");
        through.push(END);
        assert!(try_one("through-a-link", &through).contains("entry 2"));

        let mut no_root = Vec::new();
        header(&mut no_root);
        entry(&mut no_root, DIR, b"a");
        no_root.push(END);
        assert!(try_one("no-root", &no_root).contains("root directory"));
    }

    #[test]
    fn paths_too_long_to_restore_are_refused_at_the_checkpoint() {
        if !root() {
            return;
        }
        let src = Tmpfs::new("size=1m");
        let name = "d".repeat(250);
        let mut p = src.path().to_path_buf();
        for _ in 0..13 {
            p.push(&name);
            std::fs::create_dir(&p).unwrap();
        }
        let out = tempfile::tempdir().unwrap();
        let fd: OwnedFd = File::open(src.path()).unwrap().into();
        let e = save(fd, "/tmp", &out.path().join("t.cryo.img"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/tmp/") && e.contains("bytes"), "{e}");
    }

    #[test]
    fn kept_mounts_from_cryo_json_are_checked_before_anything_is_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let k = |flags: u64, file: &str| KeptTmpfs {
            path: "/dev/shm".into(),
            data: "size=1m".into(),
            flags,
            file: file.into(),
        };
        let parent = dir.path().join("tmpfs");
        let mut m = Mounted::under(parent.clone());
        for (bad, what) in [
            (
                k(libc::MS_BIND | libc::MS_REC, "tmpfs-0.cryo.img"),
                "mount flags",
            ),
            (k(libc::MS_NOSUID, "../../etc/passwd"), "content file name"),
            (k(libc::MS_NOSUID, "/etc/passwd"), "content file name"),
            (k(libc::MS_NOSUID, "tmpfs-.cryo.img"), "content file name"),
        ] {
            let e = m.kept(dir.path(), &bad).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains("/dev/shm"), "{e}");
        }
        assert!(
            !parent.exists(),
            "nothing mounted or made for a refused entry"
        );
    }

    #[test]
    fn paths_must_be_plain() {
        assert!(plain_path(b"a/b"));
        assert!(!plain_path(b""));
        assert!(!plain_path(b"/a"));
        assert!(!plain_path(b"a/../b"));
        assert!(!plain_path(b"a/./b"));
        assert!(!plain_path(b"a//b"));
        assert!(!plain_path(b"a/"));
        assert_eq!(parent_of(b"a/b/c"), b"a/b");
        assert_eq!(parent_of(b"a"), b"");
    }
}

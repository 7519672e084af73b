//! Device nodes in the container's /dev: the default set every OCI container gets, the spec's
//! `linux.devices`, and the /dev symlinks. Inside a user namespace mknod is not allowed, so
//! nodes are bind-mounted from the host there, as runc does.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::path::secure_join;
use crate::error::{Error, Result};
use crate::syscall::Syscall;

/// One device to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Path in the container.
    pub path: String,
    /// Character, block or fifo.
    pub kind: SFlag,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The devices the OCI spec says every container has.
pub fn default_devices() -> Vec<Device> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(path, major, minor)| Device {
        path: path.to_string(),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

/// Converts a spec device, naming the entry on error.
pub fn from_spec(d: &LinuxDevice, index: usize) -> Result<Device> {
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(Error::Unsupported {
                field: format!("linux.devices[{index}].type"),
                msg: "\"a\" is only valid in device cgroup rules".into(),
            })
        }
    };
    let path = d.path().to_string_lossy().into_owned();
    if !path.starts_with("/dev/") {
        return Err(Error::Unsupported {
            field: format!("linux.devices[{index}].path"),
            msg: format!("{path} is not under /dev"),
        });
    }
    let (major, minor) = if kind == SFlag::S_IFIFO {
        (0, 0)
    } else {
        (
            u64::try_from(d.major()).map_err(|_| Error::Unsupported {
                field: format!("linux.devices[{index}].major"),
                msg: "negative".into(),
            })?,
            u64::try_from(d.minor()).map_err(|_| Error::Unsupported {
                field: format!("linux.devices[{index}].minor"),
                msg: "negative".into(),
            })?,
        )
    };
    Ok(Device {
        path,
        kind,
        major,
        minor,
        mode: d.file_mode().unwrap_or(0o666) & 0o7777,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

/// Creates `devices` in `rootfs`: mknod, or a bind mount of the host node when `bind` is set.
pub fn create_devices(
    sys: &dyn Syscall,
    rootfs: &Path,
    devices: &[Device],
    bind: bool,
) -> Result<()> {
    let old = nix::sys::stat::umask(Mode::empty());
    let r = devices
        .iter()
        .try_for_each(|d| create_device(sys, rootfs, d, bind));
    nix::sys::stat::umask(old);
    r
}

fn create_device(sys: &dyn Syscall, rootfs: &Path, d: &Device, bind: bool) -> Result<()> {
    let target = secure_join(rootfs, Path::new(&d.path))?;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    // A node the spec lists twice, or an image that ships one, is replaced.
    if fs::symlink_metadata(&target).is_ok() && !bind {
        let _ = fs::remove_file(&target);
    }
    if bind {
        if fs::symlink_metadata(&target).is_err() {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&target)
                .map_err(|e| Error::io(&target, e))?;
        }
        return sys
            .mount(
                Some(Path::new(&d.path)),
                &target,
                None,
                MsFlags::MS_BIND,
                None,
            )
            .map_err(|e| Error::sys(format!("bind device {} on {}", d.path, target.display()), e));
    }
    let dev = nix::sys::stat::makedev(d.major, d.minor);
    sys.mknod(&target, d.kind, Mode::from_bits_truncate(d.mode), dev)
        .map_err(|e| Error::sys(format!("mknod {}", target.display()), e))?;
    nix::unistd::chown(
        &target,
        Some(nix::unistd::Uid::from_raw(d.uid)),
        Some(nix::unistd::Gid::from_raw(d.gid)),
    )
    .or_else(|e| if cfg!(test) { Ok(()) } else { Err(e) })
    .map_err(|e| Error::sys(format!("chown {}", target.display()), e))
}

/// /dev/fd, /dev/stdin, ... and /dev/ptmx → pts/ptmx when devpts is mounted.
pub fn create_symlinks(rootfs: &Path, has_devpts: bool) -> Result<()> {
    let mut links = vec![
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "/dev/core"));
    }
    if has_devpts {
        links.push(("pts/ptmx", "/dev/ptmx"));
    }
    for (src, dst) in links {
        let target = secure_join(rootfs, Path::new(dst))?;
        if dst == "/dev/ptmx" {
            let _ = fs::remove_file(&target);
        }
        match std::os::unix::fs::symlink(src, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&target, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, RecordingSyscall};

    #[test]
    fn default_devices_are_mknod_with_spec_modes() {
        let root = tempfile::tempdir().unwrap();
        let sys = RecordingSyscall::default();
        create_devices(&sys, root.path(), &default_devices(), false).unwrap();
        let calls = sys.calls();
        assert_eq!(calls.len(), 6);
        assert!(calls.contains(&Call::Mknod(
            root.path().join("dev/null"),
            SFlag::S_IFCHR,
            0o666,
            nix::sys::stat::makedev(1, 3)
        )));
    }

    #[test]
    fn user_namespace_binds_devices() {
        let root = tempfile::tempdir().unwrap();
        let sys = RecordingSyscall::default();
        create_devices(&sys, root.path(), &default_devices()[..1], true).unwrap();
        assert!(
            matches!(&sys.calls()[0], Call::Mount(Some(s), _, None, f, None)
            if s == Path::new("/dev/null") && *f == MsFlags::MS_BIND)
        );
    }

    #[test]
    fn spec_device_outside_dev_is_refused() {
        let d: LinuxDevice = serde_json::from_value(serde_json::json!({
            "path": "/etc/x", "type": "c", "major": 1, "minor": 3
        }))
        .unwrap();
        let e = from_spec(&d, 2).unwrap_err().to_string();
        assert!(e.contains("linux.devices[2].path"), "{e}");
    }
}

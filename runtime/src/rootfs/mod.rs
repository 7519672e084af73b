//! The container's filesystem view: propagation, the rootfs bind, the spec's mounts, devices,
//! pivot_root, and the finishing touches done from inside (masked and read-only paths, a
//! read-only root). Runs in the container's mount namespace, in the init process, before the
//! user's process exists. Everything goes through [`Syscall`] so it is testable without root.

pub mod devices;
pub mod mounts;
pub mod path;

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use crate::error::{Error, Result};
use crate::syscall::Syscall;

/// Maps a propagation word (`rprivate`, `slave`, ...) to its flags.
pub fn propagation_flags(p: &str) -> Option<MsFlags> {
    Some(match p {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let what = what.into();
    move |e| Error::sys(what, e)
}

/// Everything before pivot_root: propagation, the rootfs as a mount point, the spec's mounts,
/// devices and /dev symlinks. `in_userns` selects bind-mounted devices over mknod.
pub fn prepare(
    sys_: &dyn Syscall,
    spec: &Spec,
    rootfs: &Path,
    bundle: &Path,
    in_userns: bool,
) -> Result<()> {
    let linux = spec.linux().as_ref();
    let prop = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .filter(|p| !p.is_empty())
        .and_then(propagation_flags)
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    sys_.mount(None, Path::new("/"), None, prop, None)
        .map_err(sys("setting rootfs propagation on /"))?;
    // pivot_root refuses a new root whose parent mount is shared; a private bind of the
    // rootfs onto itself makes it a mount point with a private parent.
    sys_.mount(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(sys(format!("bind mounting rootfs {}", rootfs.display())))?;
    sys_.mount(None, rootfs, None, MsFlags::MS_PRIVATE, None)
        .map_err(sys(format!("making rootfs {} private", rootfs.display())))?;

    let mut has_devpts = false;
    let mut dev_is_bind = false;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        mounts::mount_one(sys_, rootfs, bundle, m, i)?;
        let dest = m.destination();
        if dest == Path::new("/dev/pts") && m.typ().as_deref() == Some("devpts") {
            has_devpts = true;
        }
        if dest == Path::new("/dev")
            && mounts::parse_options(m.options().as_deref().unwrap_or(&[])).bind
        {
            dev_is_bind = true;
        }
    }
    if !dev_is_bind {
        let mut devs = devices::default_devices();
        for (i, d) in linux
            .and_then(|l| l.devices().as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let d = devices::from_spec(d, i)?;
            devs.retain(|x| x.path != d.path);
            devs.push(d);
        }
        devices::create_devices(sys_, rootfs, &devs, in_userns)?;
        devices::create_symlinks(rootfs, has_devpts)?;
    }
    Ok(())
}

/// Makes `rootfs` the root: pivot_root (old root detached), or MS_MOVE + chroot with
/// `no_pivot` (for rootfs on a ramfs/initramfs, where pivot_root is refused).
pub fn enter(sys_: &dyn Syscall, rootfs: &Path, no_pivot: bool) -> Result<()> {
    sys_.chdir(rootfs)
        .map_err(sys(format!("chdir {}", rootfs.display())))?;
    if no_pivot {
        sys_.mount(Some(rootfs), Path::new("/"), None, MsFlags::MS_MOVE, None)
            .map_err(sys("moving rootfs to /"))?;
        sys_.chroot(Path::new(".")).map_err(sys("chroot ."))?;
    } else {
        // pivot_root(".", ".") stacks the old root on top of the new one; unmount it lazily
        // after making it a slave so the unmount does not propagate to the host.
        let old_root = std::fs::File::open("/").map_err(|e| Error::io("/", e))?;
        sys_.pivot_root(Path::new("."), Path::new("."))
            .map_err(sys(format!("pivot_root {}", rootfs.display())))?;
        // The kernel leaves no guarantee that "." is the old root after pivot_root (here it
        // is the new one, and MS_SLAVE|MS_REC on it would turn the container's rshared
        // mounts private): step into the old root explicitly, as runc does.
        sys_.fchdir(old_root.as_raw_fd())
            .map_err(sys("fchdir to the old root"))?;
        drop(old_root);
        sys_.mount(
            None,
            Path::new("."),
            None,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None,
        )
        .map_err(sys("making old root a slave"))?;
        sys_.umount2(Path::new("."), MntFlags::MNT_DETACH)
            .map_err(sys("unmounting old root"))?;
    }
    sys_.chdir(Path::new("/")).map_err(sys("chdir /"))
}

/// After pivot: masked paths, read-only paths and a read-only root.
pub fn finalize(sys_: &dyn Syscall, spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new(p);
        match sys_.mount(
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ) {
            Ok(()) => {}
            Err(nix::Error::ENOENT) => continue,
            Err(e) => return Err(Error::sys(format!("linux.readonlyPaths: bind {p}"), e)),
        }
        let f = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | mounts::locked_flags(path);
        sys_.mount(None, path, None, f, None)
            .map_err(sys(format!("linux.readonlyPaths: remount {p} read-only")))?;
    }
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new(p);
        let r = match std::fs::metadata(path) {
            Err(_) => continue,
            Ok(md) if md.is_dir() => sys_.mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            ),
            Ok(_) => sys_.mount(
                Some(Path::new("/dev/null")),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            ),
        };
        match r {
            Ok(()) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(Error::sys(format!("linux.maskedPaths: mask {p}"), e)),
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        let root = Path::new("/");
        let f = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | mounts::locked_flags(root);
        sys_.mount(None, root, None, f, None)
            .map_err(sys("root.readonly: remounting / read-only"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, RecordingSyscall};

    #[test]
    fn pivot_detaches_the_old_root() {
        let sys = RecordingSyscall::default();
        enter(&sys, Path::new("/r"), false).unwrap();
        let c = sys.calls();
        assert_eq!(c[0], Call::Chdir("/r".into()));
        assert_eq!(c[1], Call::PivotRoot(".".into(), ".".into()));
        assert_eq!(c[2], Call::Fchdir);
        assert_eq!(c[4], Call::Umount(".".into()));
        assert_eq!(c[5], Call::Chdir("/".into()));
    }

    #[test]
    fn no_pivot_moves_and_chroots() {
        let sys = RecordingSyscall::default();
        enter(&sys, Path::new("/r"), true).unwrap();
        assert!(sys.calls().contains(&Call::Chroot(".".into())));
    }

    #[test]
    fn prepare_mounts_in_spec_order_and_makes_devices() {
        let root = tempfile::tempdir().unwrap();
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["newinstance"]}
            ],
            "linux": {"rootfsPropagation": "rprivate",
                      "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]}
        }))
        .unwrap();
        let sys = RecordingSyscall::default();
        prepare(&sys, &spec, root.path(), Path::new("/"), false).unwrap();
        let c = sys.calls();
        assert_eq!(
            c[0],
            Call::Mount(
                None,
                "/".into(),
                None,
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                None
            )
        );
        let fstypes: Vec<String> = c
            .iter()
            .filter_map(|x| match x {
                Call::Mount(_, _, Some(t), _, _) => Some(t.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(fstypes, vec!["proc", "tmpfs", "devpts"]);
        let mknods = c.iter().filter(|x| matches!(x, Call::Mknod(..))).count();
        assert_eq!(mknods, 7);
        assert_eq!(
            std::fs::read_link(root.path().join("dev/ptmx")).unwrap(),
            Path::new("pts/ptmx")
        );
    }
}

//! The spec's `mounts`: option parsing (runc's table of flags, propagation and data) and
//! performing one mount inside the rootfs: filesystems, bind mounts with remount flags, and the
//! cgroup filesystem (v1 hierarchies bound under a tmpfs, or cgroup2).

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::Mount;

use super::path::secure_join;
use crate::error::{Error, Result};
use crate::syscall::Syscall;

/// A mount's options split the way mount(2) wants them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount call.
    pub flags: MsFlags,
    /// Flags explicitly cleared (kept for remounts).
    pub clear: MsFlags,
    /// Propagation flags, applied in a separate call.
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific data (`mode=755,size=65536k`).
    pub data: String,
    /// `bind` or `rbind` was given.
    pub bind: bool,
}

/// Parses a mount's `options` list the way runc does; unknown words become fs data.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        clear: MsFlags::empty(),
        propagation: Vec::new(),
        data: String::new(),
        bind: false,
    };
    let mut data = Vec::new();
    for opt in options {
        let (set, clear): (MsFlags, MsFlags) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                o.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                o.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                if let Some(p) = super::propagation_flags(opt) {
                    o.propagation.push(p);
                }
                continue;
            }
            // Options runc accepts that have no mount(2) meaning here.
            "tmpcopyup" | "defaults" => continue,
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        o.flags |= set;
        o.flags &= !clear;
        o.clear |= clear;
    }
    o.data = data.join(",");
    o
}

/// Flags that a bind mount only takes through a remount.
fn remount_flags(flags: MsFlags) -> MsFlags {
    flags
        & (MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_NOATIME
            | MsFlags::MS_NODIRATIME
            | MsFlags::MS_RELATIME
            | MsFlags::MS_STRICTATIME)
}

fn mkdir_all(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| Error::io(p, e))
}

/// Creates the mount point: a directory, or an empty file when binding a non-directory.
fn create_target(target: &Path, as_file: bool) -> Result<()> {
    if as_file {
        if let Some(parent) = target.parent() {
            mkdir_all(parent)?;
        }
        if fs::symlink_metadata(target).is_err() {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(target)
                .map_err(|e| Error::io(target, e))?;
        }
        Ok(())
    } else {
        mkdir_all(target)
    }
}

fn sys_err(what: String) -> impl FnOnce(nix::Error) -> Error {
    move |e| Error::sys(what, e)
}

/// Performs one spec mount under `rootfs`. `bundle` resolves relative bind sources.
pub fn mount_one(
    sys: &dyn Syscall,
    rootfs: &Path,
    bundle: &Path,
    m: &Mount,
    index: usize,
) -> Result<()> {
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().as_deref().unwrap_or("");
    let dest = m.destination();
    let target = secure_join(rootfs, dest)?;
    let field = format!("mounts[{index}] ({})", dest.display());
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());

    if opts.bind || typ == "bind" {
        let src = m.source().as_ref().ok_or_else(|| Error::Unsupported {
            field: format!("{field}.source"),
            msg: "a bind mount needs a source".into(),
        })?;
        let src = if src.is_absolute() {
            src.clone()
        } else {
            bundle.join(src)
        };
        let md = fs::metadata(&src).map_err(|e| Error::Spec {
            path: PathBuf::from("config.json"),
            field: format!("{field}.source"),
            msg: format!("{}: {e}", src.display()),
        })?;
        create_target(&target, !md.is_dir())?;
        let mut flags = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        sys.mount(Some(&src), &target, None, flags, None)
            .map_err(sys_err(format!(
                "{field}: bind {} on {}",
                src.display(),
                target.display()
            )))?;
        let extra = remount_flags(opts.flags);
        if !extra.is_empty() {
            flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | locked_flags(&target);
            sys.mount(None, &target, None, flags, None)
                .map_err(sys_err(format!("{field}: remount {}", target.display())))?;
        }
    } else if typ == "cgroup" || typ == "cgroup2" {
        mount_cgroup(sys, &target, &opts, &field)?;
    } else {
        mkdir_all(&target)?;
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        let r = sys.mount(Some(&source), &target, Some(typ), opts.flags, data);
        match r {
            Ok(()) => {}
            // sysfs cannot be mounted without a private network namespace (or in a user
            // namespace): runc binds the host's /sys instead, read-only.
            Err(nix::Error::EPERM) if typ == "sysfs" => {
                sys.mount(
                    Some(Path::new("/sys")),
                    &target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )
                .map_err(sys_err(format!("{field}: bind /sys")))?;
                let f = MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | remount_flags(opts.flags)
                    | locked_flags(&target);
                sys.mount(None, &target, None, f, None)
                    .map_err(sys_err(format!("{field}: remount /sys")))?;
            }
            Err(e) => {
                return Err(Error::sys(
                    format!("{field}: mount {typ} on {}", target.display()),
                    e,
                ))
            }
        }
    }
    for p in &opts.propagation {
        sys.mount(None, &target, None, *p, None)
            .map_err(sys_err(format!("{field}: set propagation")))?;
    }
    Ok(())
}

/// Flags the kernel locks on a mount (from a less privileged user namespace) and refuses to
/// drop on remount: keep whatever the mount already has.
pub fn locked_flags(target: &Path) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(target) else {
        return MsFlags::empty();
    };
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (a, b) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(a) {
            out |= b;
        }
    }
    out
}

/// One line of /proc/self/mountinfo, the fields cryo needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Root of the mount within its filesystem.
    pub root: String,
    /// Mount point.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,relatime`).
    pub options: String,
    /// Filesystem type.
    pub fstype: String,
    /// Super block options (for cgroup v1: the controllers).
    pub super_options: String,
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some(MountInfo {
                root: unescape(pre.get(3)?),
                mount_point: PathBuf::from(unescape(pre.get(4)?)),
                options: (*pre.get(5)?).to_string(),
                fstype: (*post.first()?).to_string(),
                super_options: (*post.get(2).unwrap_or(&"")).to_string(),
            })
        })
        .collect()
}

/// The mount at `mountpoint`, when `mounts` holds exactly one there.
pub fn lone_mount_at<'a>(mounts: &'a [MountInfo], mountpoint: &Path) -> Option<&'a MountInfo> {
    let mut at = mounts.iter().filter(|m| m.mount_point == mountpoint);
    let first = at.next()?;
    at.next().is_none().then_some(first)
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path of a process's cgroup in the hierarchy of `controllers` (`cpu,cpuacct`, `""` for
/// v2), from the text of /proc/PID/cgroup.
fn own_cgroup_path(own: &str, controllers: &str) -> Option<String> {
    own.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let _id = it.next()?;
        let ctrls = it.next()?;
        let path = it.next()?;
        (ctrls == controllers).then(|| path.to_string())
    })
}

/// The cgroup v1 hierarchies among `mounts` (cgroup mounts under /sys/fs/cgroup).
pub fn v1_hierarchies(mounts: &[MountInfo]) -> Vec<&MountInfo> {
    mounts
        .iter()
        .filter(|m| m.fstype == "cgroup" && m.mount_point.starts_with("/sys/fs/cgroup"))
        .collect()
}

/// For each v1 hierarchy, the name of its directory under the container's /sys/fs/cgroup and
/// the host directory bound there: the process's own cgroup in that hierarchy (`own` is the
/// text of its /proc/PID/cgroup). Checkpoint and restore name these binds to CRIU.
pub fn v1_binds(hierarchies: &[&MountInfo], own: &str) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for m in hierarchies {
        let controllers: Vec<&str> = m
            .super_options
            .split(',')
            .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("release_agent"))
            .collect();
        let key = controllers.join(",");
        let Some(own) = own_cgroup_path(own, &key) else {
            continue;
        };
        // The hierarchy's mount may itself be rooted below /: strip that root.
        let rel = own
            .strip_prefix(m.root.trim_end_matches('/'))
            .unwrap_or(&own)
            .trim_start_matches('/')
            .to_string();
        let Some(name) = m.mount_point.file_name() else {
            continue;
        };
        out.push((PathBuf::from(name), m.mount_point.join(rel)));
    }
    out
}

/// Mounts the cgroup filesystem at `target` for the container. With cgroup v1 this is a tmpfs
/// holding one bind mount per hierarchy, each showing only the container's own cgroup (as
/// runc does); with cgroup v2, the unified hierarchy at the container's cgroup.
fn mount_cgroup(sys: &dyn Syscall, target: &Path, opts: &MountOptions, field: &str) -> Result<()> {
    mkdir_all(target)?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("/proc/self/mountinfo", e))?;
    let mounts = parse_mountinfo(&mountinfo);
    let own =
        fs::read_to_string("/proc/self/cgroup").map_err(|e| Error::io("/proc/self/cgroup", e))?;
    let flags = opts.flags & !MsFlags::MS_RDONLY;
    let v1 = v1_hierarchies(&mounts);
    if v1.is_empty() {
        // cgroup v2 only: bind the container's own cgroup directory.
        let path = own_cgroup_path(&own, "").unwrap_or_else(|| "/".into());
        let src = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        sys.mount(
            Some(&src),
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(sys_err(format!("{field}: bind {}", src.display())))?;
        let f = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | remount_flags(opts.flags)
            | locked_flags(target);
        return sys
            .mount(None, target, None, f, None)
            .map_err(sys_err(format!("{field}: remount cgroup")));
    }
    sys.mount(
        Some(Path::new("tmpfs")),
        target,
        Some("tmpfs"),
        flags,
        Some("mode=755"),
    )
    .map_err(sys_err(format!(
        "{field}: mount tmpfs on {}",
        target.display()
    )))?;
    for (name, src) in v1_binds(&v1, &own) {
        let name = name.as_os_str();
        let dst = target.join(name);
        mkdir_all(&dst)?;
        sys.mount(
            Some(&src),
            &dst,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(sys_err(format!("{field}: bind {}", src.display())))?;
        let f =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | remount_flags(opts.flags) | locked_flags(&dst);
        sys.mount(None, &dst, None, f, None)
            .map_err(sys_err(format!("{field}: remount {}", dst.display())))?;
        // A co-mounted hierarchy (cpu,cpuacct) is also reachable by each controller's name.
        let name = name.to_string_lossy();
        if name.contains(',') {
            for c in name.split(',') {
                let link = target.join(c.trim_start_matches("name="));
                if fs::symlink_metadata(&link).is_err() {
                    std::os::unix::fs::symlink(&*name, &link).map_err(|e| Error::io(&link, e))?;
                }
            }
        }
    }
    if opts.flags.contains(MsFlags::MS_RDONLY) {
        sys.mount(
            None,
            target,
            None,
            MsFlags::MS_REMOUNT | flags | MsFlags::MS_RDONLY,
            Some("mode=755"),
        )
        .map_err(sys_err(format!("{field}: remount ro {}", target.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, RecordingSyscall};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = parse_options(&s(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rprivate",
        ]));
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        let o = parse_options(&s(&["ro", "rw", "rbind"]));
        assert!(o.bind);
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
    }

    #[test]
    fn bind_mount_with_ro_is_bind_then_remount() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let m: Mount = serde_json::from_value(serde_json::json!({
            "destination": "/data", "type": "bind", "source": src.path(),
            "options": ["rbind", "ro", "nosuid"]
        }))
        .unwrap();
        let sys = RecordingSyscall::default();
        mount_one(&sys, root.path(), Path::new("/"), &m, 0).unwrap();
        let calls = sys.calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(matches!(&calls[0], Call::Mount(Some(s), t, None, f, None)
            if s == src.path() && t == &root.path().join("data") && *f == MsFlags::MS_BIND | MsFlags::MS_REC));
        match &calls[1] {
            Call::Mount(None, _, None, f, None) => {
                assert!(f.contains(
                    MsFlags::MS_REMOUNT
                        | MsFlags::MS_BIND
                        | MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                ))
            }
            c => panic!("{c:?}"),
        }
        assert!(root.path().join("data").is_dir());
    }

    #[test]
    fn bind_of_a_file_creates_a_file_target() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::NamedTempFile::new().unwrap();
        let m: Mount = serde_json::from_value(serde_json::json!({
            "destination": "/etc/resolv.conf", "type": "bind", "source": src.path(), "options": ["bind"]
        }))
        .unwrap();
        mount_one(
            &RecordingSyscall::default(),
            root.path(),
            Path::new("/"),
            &m,
            0,
        )
        .unwrap();
        assert!(root.path().join("etc/resolv.conf").is_file());
    }

    #[test]
    fn sysfs_falls_back_to_a_read_only_bind() {
        let root = tempfile::tempdir().unwrap();
        let m: Mount = serde_json::from_value(serde_json::json!({
            "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "ro"]
        }))
        .unwrap();
        let sys = RecordingSyscall {
            fail_mount: Some("sysfs".into()),
            ..Default::default()
        };
        mount_one(&sys, root.path(), Path::new("/"), &m, 0).unwrap();
        let calls = sys.calls();
        assert!(
            matches!(&calls[0], Call::Mount(Some(s), _, None, _, None) if s == Path::new("/sys"))
        );
    }

    #[test]
    fn mountinfo_parses_and_unescapes() {
        let t =
            "36 35 98:0 /mnt1 /mnt\\040x rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                 40 30 0:35 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        let m = parse_mountinfo(t);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt x"));
        assert_eq!(m[0].root, "/mnt1");
        assert_eq!(m[1].fstype, "cgroup");
        assert_eq!(m[1].super_options, "rw,cpu");
    }
}

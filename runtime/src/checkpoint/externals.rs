//! What of a container lies outside it, and how CRIU is told: bind mounts, masked files,
//! device nodes, the cgroup v1 binds, namespaces joined by path, stdio opened on the host.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::Path;

use cryo_snapshot::criu::rpc;
use oci_spec::runtime::{Mount, Spec};

use crate::error::{Error, IoContext, Result};

use super::{Descriptor, MaskedDir};

pub(super) fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// Mount ids visible in `pid`'s mount namespace.
pub(super) fn mount_ids(pid: i32) -> Result<HashSet<u64>> {
    let path = format!("/proc/{pid}/mountinfo");
    let text = fs::read_to_string(&path).io_ctx(&path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect())
}

/// The fdinfo fields `mnt_id` and `flags` (octal) of `pid`'s fd `fd`.
pub(super) fn fdinfo(pid: i32, fd: i32) -> Result<(u64, i32)> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let text = fs::read_to_string(&path).io_ctx(&path)?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let mnt = field("mnt_id:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let flags = field("flags:")
        .and_then(|v| i32::from_str_radix(&v, 8).ok())
        .unwrap_or(0);
    Ok((mnt, flags))
}

/// The init's stdio, with the files CRIU cannot reach in the container marked external.
pub(super) fn describe_stdio(pid: i32) -> Result<Vec<Descriptor>> {
    let mounts = mount_ids(pid)?;
    let mut out = Vec::new();
    for fd in 0..3 {
        let link = format!("/proc/{pid}/fd/{fd}");
        let Ok(target) = fs::read_link(&link) else {
            continue; // closed
        };
        let path = target.to_string_lossy().into_owned();
        let (mnt, flags) = fdinfo(pid, fd)?;
        let external = if path.starts_with('/') && !mounts.contains(&mnt) {
            let ino = fs::metadata(&link).io_ctx(&link)?;
            Some(format!(
                "file[{mnt:x}:{:x}]",
                std::os::unix::fs::MetadataExt::ino(&ino)
            ))
        } else {
            None
        };
        out.push(Descriptor {
            fd,
            path,
            external,
            flags,
        });
    }
    Ok(out)
}

/// `(destination, source)` of the mounts CRIU must treat as external: bind mounts (their
/// source is outside the container), masked files (binds of /dev/null), the masked
/// directories in `masked_dirs` (empty read-only tmpfs mounts, see [`masked_dirs`]; their
/// source here is empty: the restore mounts one) and `linux.devices`. At a dump, `pid` tells
/// masked files from other masked directories, which CRIU dumps itself; at a restore (`None`)
/// the file may not be stat-able and every other masked path is marked, an unused key.
pub(super) fn external_mounts(
    spec: &Spec,
    bundle: &Path,
    pid: Option<i32>,
    masked_dirs: &[MaskedDir],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in spec.mounts().as_deref().unwrap_or(&[]) {
        if !is_bind(m) {
            continue;
        }
        let dest = m.destination().to_string_lossy().into_owned();
        let src = m.source().clone().unwrap_or_default();
        let src = if src.is_relative() {
            bundle.join(src)
        } else {
            src
        };
        out.push((dest, src.to_string_lossy().into_owned()));
    }
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or(&[])
    {
        let is_dir = || {
            pid.is_some_and(|pid| {
                fs::metadata(format!("/proc/{pid}/root{p}")).is_ok_and(|m| m.is_dir())
            })
        };
        if masked_dirs.iter().any(|d| &d.path == p) {
            out.push((p.clone(), String::new()));
        } else if !is_dir() {
            out.push((p.clone(), "/dev/null".into()));
        }
    }
    for d in linux.and_then(|l| l.devices().as_deref()).unwrap_or(&[]) {
        let p = d.path().to_string_lossy().into_owned();
        out.push((p.clone(), p));
    }
    out
}

/// The masked paths of `spec` that are, in `pid`'s mount namespace, what `rootfs::finalize`
/// made of a masked directory and nothing else: exactly one mount at the path, a read-only
/// tmpfs, with an empty root directory. CRIU would dump each with a `tar` run and restore it
/// with another (about 6 ms each here); as externals they cost nothing, and the restore
/// mounts a fresh empty read-only tmpfs in their place, which is all they held. A masked
/// directory that was remounted, written to or stacked on is left to CRIU.
pub(super) fn masked_dirs(spec: &Spec, pid: i32) -> Result<Vec<MaskedDir>> {
    use std::os::unix::fs::MetadataExt;
    let masked = spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or(&[]);
    if masked.is_empty() {
        return Ok(Vec::new());
    }
    let path = format!("/proc/{pid}/mountinfo");
    let mountinfo = fs::read_to_string(&path).io_ctx(&path)?;
    Ok(masked
        .iter()
        .filter(|p| empty_ro_tmpfs_at(&mountinfo, p))
        .filter_map(|p| {
            let root = format!("/proc/{pid}/root{p}");
            let empty = fs::read_dir(&root).is_ok_and(|mut d| d.next().is_none());
            let md = fs::metadata(&root).ok().filter(|m| empty && m.is_dir())?;
            Some(MaskedDir {
                path: p.clone(),
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
            })
        })
        .collect())
}

/// Whether `mountinfo` holds exactly one mount at `mountpoint`, and it is a read-only tmpfs
/// mounted at the root of its filesystem.
fn empty_ro_tmpfs_at(mountinfo: &str, mountpoint: &str) -> bool {
    use crate::rootfs::mounts::{lone_mount_at, parse_mountinfo};
    lone_mount_at(&parse_mountinfo(mountinfo), Path::new(mountpoint)).is_some_and(|m| {
        m.root == "/" && m.fstype == "tmpfs" && m.options.split(',').any(|o| o == "ro")
    })
}

/// `(destination, host source)` of the binds that make up each `cgroup` mount of the spec
/// (see `rootfs::mounts::mount_cgroup`), for a container whose cgroups are those of `pid`:
/// CRIU cannot dump a bind of a cgroup subdirectory by itself and needs them named external.
pub(super) fn cgroup_binds(spec: &Spec, pid: i32) -> Result<Vec<(String, String)>> {
    use crate::rootfs::mounts::{parse_mountinfo, v1_binds, v1_hierarchies};
    let dests: Vec<&Path> = spec
        .mounts()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .filter(|m| matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2")))
        .map(|m| m.destination().as_path())
        .collect();
    if dests.is_empty() {
        return Ok(Vec::new());
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").io_ctx("/proc/self/mountinfo")?;
    let mounts = parse_mountinfo(&mountinfo);
    let own_path = format!("/proc/{pid}/cgroup");
    let own = fs::read_to_string(&own_path).io_ctx(&own_path)?;
    let v1 = v1_hierarchies(&mounts);
    let mut out = Vec::new();
    for dest in dests {
        if v1.is_empty() {
            let rel = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("/")
                .trim_start_matches('/');
            out.push((
                dest.to_string_lossy().into_owned(),
                Path::new("/sys/fs/cgroup")
                    .join(rel)
                    .to_string_lossy()
                    .into_owned(),
            ));
            continue;
        }
        for (name, src) in v1_binds(&v1, &own) {
            out.push((
                dest.join(name).to_string_lossy().into_owned(),
                src.to_string_lossy().into_owned(),
            ));
        }
    }
    Ok(out)
}

/// The key under which a container's own, bare network namespace is external to CRIU.
const BARE_NETNS_KEY: &str = "cryoBareNetNS";

/// Whether the container gets a network namespace of its own (one without a path).
fn creates_netns(spec: &Spec) -> bool {
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_deref())
        .unwrap_or(&[]);
    crate::namespaces::NamespacePlan::from_spec(list)
        .create
        .contains(&oci_spec::runtime::LinuxNamespaceType::Network)
}

/// Whether the container's network namespace is one cryo created and nothing can have
/// configured: new (no path), no hooks (CNI runs from hooks), no `net.*` sysctls, no
/// CAP_NET_ADMIN in the init's bounding set, and only `lo` in it. Such a namespace holds
/// nothing but what [`crate::net::new_namespace`] makes, so CRIU need not dump it: it costs
/// CRIU an `ip`/`iptables-save` run per table at a dump and an `ip`/`iptables-restore` run
/// per table at a restore (about 20 ms each way here).
fn bare_netns(spec: &Spec, pid: i32) -> bool {
    use oci_spec::runtime::Capability;
    let linux = spec.linux().as_ref();
    let own = creates_netns(spec);
    let hooks = spec.hooks().as_ref().is_some_and(|h| {
        [
            h.prestart(),
            h.create_runtime(),
            h.create_container(),
            h.start_container(),
            h.poststart(),
        ]
        .iter()
        .any(|v| v.as_ref().is_some_and(|v| !v.is_empty()))
    });
    let net_sysctls = linux
        .and_then(|l| l.sysctl().as_ref())
        .is_some_and(|m| m.keys().any(|k| k.starts_with("net.")));
    let net_admin = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().as_ref())
        .is_some_and(|b| b.contains(&Capability::NetAdmin));
    if !own || hooks || net_sysctls || net_admin {
        return false;
    }
    // /proc/PID/net/dev: two header lines, then one line per interface.
    fs::read_to_string(format!("/proc/{pid}/net/dev")).is_ok_and(|t| {
        let ifaces: Vec<&str> = t
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next().map(str::trim))
            .collect();
        ifaces == ["lo"]
    })
}

/// `--external net[INODE]:extRootNetNS` (and pid) for namespaces the container joined by path,
/// as runc does: CRIU leaves them alone and expects them back at restore. A bare network
/// namespace of the container's own ([`bare_netns`]) is external too, under its own key: the
/// restore makes a fresh one.
pub(super) fn external_namespaces(spec: &Spec, pid: i32) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if bare_netns(spec, pid) {
        let path = format!("/proc/{pid}/ns/net");
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).io_ctx(&path)?);
        out.push(format!("net[{ino}]:{BARE_NETNS_KEY}"));
    }
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_deref())
        .unwrap_or(&[])
    {
        let (Some(path), Some((name, key))) = (ns.path().as_ref(), ext_ns_key(ns.typ())) else {
            continue;
        };
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).io_ctx(path)?);
        out.push(format!("{name}[{ino}]:{key}"));
    }
    Ok(out)
}

pub(super) fn ext_ns_key(
    t: oci_spec::runtime::LinuxNamespaceType,
) -> Option<(&'static str, &'static str)> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    match t {
        T::Network => Some(("net", "extRootNetNS")),
        T::Pid => Some(("pid", "extRootPidNS")),
        _ => None,
    }
}

/// A namespace handed to CRIU as an inherited fd: its `extRoot*NS` key and the open file.
pub(super) type InheritedNs = (String, File);

/// At restore: net/pid namespaces given by path are handed to CRIU as inherited fds under
/// their `extRoot*NS` key; other namespaces given by path are joined (`join_ns`). When the
/// images hold no network devices (`netdev-*.img`; `netns-*.img` is written either way)
/// although the container has its own namespace, it was bare at the dump: a fresh one takes
/// its place.
pub(super) fn restore_namespaces(
    spec: &Spec,
    images: &File,
) -> Result<(Vec<rpc::JoinNamespace>, Vec<InheritedNs>)> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let mut join = Vec::new();
    let mut fds = Vec::new();
    if creates_netns(spec) {
        let dir = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(images));
        let dumped = fs::read_dir(&dir)
            .io_ctx(&dir)?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("netdev-"));
        if !dumped {
            fds.push((BARE_NETNS_KEY.to_string(), crate::net::new_namespace()?));
        }
    }
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_deref())
        .unwrap_or(&[])
    {
        let Some(path) = ns.path().as_ref() else {
            continue;
        };
        if let Some((_, key)) = ext_ns_key(ns.typ()) {
            fds.push((key.to_string(), File::open(path).io_ctx(path)?));
            continue;
        }
        let name = match ns.typ() {
            T::Ipc => "ipc",
            T::Uts => "uts",
            T::Mount => "mnt",
            T::User => "user",
            T::Time => "time",
            t => {
                return Err(Error::Unsupported {
                    field: "linux.namespaces".into(),
                    msg: format!("CRIU cannot restore into an existing {t:?} namespace"),
                })
            }
        };
        join.push(rpc::JoinNamespace {
            ns: name.into(),
            ns_file: path.to_string_lossy().into_owned(),
            extra_opt: None,
        });
    }
    Ok((join, fds))
}

/// CRIU's cgroup roots: where `pid` (CRIU, already moved into the container's cgroups) sits,
/// per hierarchy, from /proc/PID/cgroup.
pub(super) fn cgroup_roots(pid: i32) -> Result<Vec<rpc::CgroupRoot>> {
    let path = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&path).io_ctx(&path)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrl = it.next()?;
            let p = it.next()?;
            Some(rpc::CgroupRoot {
                ctrl: Some(ctrl.to_string()),
                path: p.to_string(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
104 90 0:47 / / ro,relatime master:1 - ext4 /dev/vda rw
106 104 0:51 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
116 106 0:52 / /proc/acpi ro,relatime - tmpfs tmpfs ro
117 106 0:53 / /proc/scsi rw,relatime - tmpfs tmpfs rw
118 104 0:54 / /mnt rw,relatime - tmpfs tmpfs rw
119 118 0:55 / /mnt ro,relatime - tmpfs tmpfs ro
120 106 0:6 /null /proc/kcore rw,nosuid - devtmpfs devtmpfs rw
121 104 0:56 /sub /srv ro,relatime - tmpfs tmpfs ro
";

    #[test]
    fn only_a_lone_read_only_tmpfs_root_counts_as_a_masked_directory() {
        assert!(empty_ro_tmpfs_at(MOUNTINFO, "/proc/acpi"));
        assert!(!empty_ro_tmpfs_at(MOUNTINFO, "/proc/scsi"), "remounted rw");
        assert!(
            !empty_ro_tmpfs_at(MOUNTINFO, "/mnt"),
            "stacked on another mount"
        );
        assert!(
            !empty_ro_tmpfs_at(MOUNTINFO, "/proc/kcore"),
            "a bind of a file"
        );
        assert!(
            !empty_ro_tmpfs_at(MOUNTINFO, "/srv"),
            "not the root of its tmpfs"
        );
        assert!(
            !empty_ro_tmpfs_at(MOUNTINFO, "/sys/firmware"),
            "not mounted"
        );
    }
}

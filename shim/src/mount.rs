//! The rootfs containerd hands over as mounts (an overlay of the image's snapshots, or a bind):
//! mounted onto `<bundle>/rootfs` at create and unmounted at delete.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use containerd_shim_protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Mount flags and the remaining data string of containerd's mount options, split the way
/// `mount(8)` does.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, false),
            "rw" => (MsFlags::MS_RDONLY, true),
            "bind" => (MsFlags::MS_BIND, false),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, false),
            "nosuid" => (MsFlags::MS_NOSUID, false),
            "suid" => (MsFlags::MS_NOSUID, true),
            "nodev" => (MsFlags::MS_NODEV, false),
            "dev" => (MsFlags::MS_NODEV, true),
            "noexec" => (MsFlags::MS_NOEXEC, false),
            "exec" => (MsFlags::MS_NOEXEC, true),
            "noatime" => (MsFlags::MS_NOATIME, false),
            "relatime" => (MsFlags::MS_RELATIME, false),
            "strictatime" => (MsFlags::MS_STRICTATIME, false),
            "sync" => (MsFlags::MS_SYNCHRONOUS, false),
            "remount" => (MsFlags::MS_REMOUNT, false),
            "defaults" | "async" => (MsFlags::empty(), false),
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        if clear {
            flags.remove(set);
        } else {
            flags.insert(set);
        }
    }
    (flags, data.join(","))
}

/// Mounts `mounts` in order onto `target` (created if missing).
pub fn mount_rootfs(mounts: &[Mount], target: &Path) -> Result<()> {
    if mounts.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    for (i, m) in mounts.iter().enumerate() {
        let (flags, data) = parse_options(&m.options);
        let fstype = (!m.type_.is_empty() && m.type_ != "bind").then_some(m.type_.as_str());
        let r = mount(
            Some(m.source.as_str()),
            target,
            fstype,
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        );
        if let Err(e) = r {
            for _ in 0..i {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(e).with_context(|| {
                format!(
                    "rootfs[{i}]: mounting {} ({}) on {} with {:?}",
                    m.source,
                    m.type_,
                    target.display(),
                    m.options
                )
            });
        }
        // A read-only bind needs a remount to take the flag.
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            let _ = mount(
                None::<&str>,
                target,
                None::<&str>,
                flags | MsFlags::MS_REMOUNT,
                None::<&str>,
            );
        }
    }
    Ok(())
}

/// Unmounts everything mounted on `target` (lazily: a process of the container may still
/// hold it while it dies). Missing or unmounted targets are fine.
pub fn unmount_rootfs(target: &Path) {
    while umount2(target, MntFlags::MNT_DETACH).is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_are_data() {
        let o: Vec<String> = ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&o);
        assert!(flags.is_empty());
        assert_eq!(data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2");
    }

    #[test]
    fn bind_flags() {
        let o: Vec<String> = ["rbind", "ro", "nosuid"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&o);
        assert_eq!(
            flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        );
        assert!(data.is_empty());
        let o: Vec<String> = ["ro", "rw"].iter().map(|s| s.to_string()).collect();
        assert!(parse_options(&o).0.is_empty());
    }
}

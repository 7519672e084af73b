//! v1 `cpuset`: cpus and mems, and the creation rule peculiar to it.
//!
//! A new v1 cpuset cgroup starts with empty `cpuset.cpus` and `cpuset.mems`, and adding a
//! task to it fails with ENOSPC until both are filled. As runc does, every level from the
//! mount point down to the container's cgroup is created if needed and, where empty,
//! inherits the two files from its parent (not explicitly from the root, which could clash
//! with `cpuset.cpu_exclusive`). The spec's own values are written later by `set`.

use std::path::{Component, Path};

use oci_spec::runtime::LinuxResources;

use crate::cgroups::error::{Result, WithField};
use crate::cgroups::{fs, Controller};

pub struct Cpuset;

const CPUS: &str = "cpuset.cpus";
const MEMS: &str = "cpuset.mems";

impl Controller for Cpuset {
    const NAME: &'static str = "cpuset";

    fn requested(r: &LinuxResources) -> Option<&'static str> {
        let c = r.cpu().as_ref()?;
        if c.cpus().as_ref().is_some_and(|s| !s.is_empty()) {
            Some("linux.resources.cpu.cpus")
        } else if c.mems().as_ref().is_some_and(|s| !s.is_empty()) {
            Some("linux.resources.cpu.mems")
        } else {
            None
        }
    }

    fn set(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(c) = r.cpu().as_ref() else {
            return Ok(());
        };
        if let Some(cpus) = c.cpus().as_ref().filter(|s| !s.is_empty()) {
            fs::write(dir, CPUS, cpus).field("linux.resources.cpu.cpus")?;
        }
        if let Some(mems) = c.mems().as_ref().filter(|s| !s.is_empty()) {
            fs::write(dir, MEMS, mems).field("linux.resources.cpu.mems")?;
        }
        Ok(())
    }
}

/// Creates `dir` and its missing ancestors below `mount`, filling empty cpus/mems from the
/// parent at each level. Without a known mount point, only `dir` itself is checked.
pub fn ensure(mount: Option<&Path>, dir: &Path) -> Result<()> {
    let rel = mount.and_then(|m| dir.strip_prefix(m).ok().map(|r| (m, r)));
    let Some((mount, rel)) = rel else {
        fs::mkdir_all(dir)?;
        return match dir.parent() {
            Some(parent) => copy_if_empty(parent, dir),
            None => Ok(()),
        };
    };
    let mut parent = mount.to_path_buf();
    for comp in rel.components() {
        let Component::Normal(name) = comp else {
            continue;
        };
        let cur = parent.join(name);
        fs::mkdir(&cur)?;
        copy_if_empty(&parent, &cur)?;
        parent = cur;
    }
    Ok(())
}

fn copy_if_empty(parent: &Path, cur: &Path) -> Result<()> {
    for file in [CPUS, MEMS] {
        let mine = fs::read(cur, file)?;
        if mine.trim().is_empty() {
            let theirs = fs::read(parent, file)?;
            fs::write(cur, file, theirs.trim())?;
        }
    }
    Ok(())
}

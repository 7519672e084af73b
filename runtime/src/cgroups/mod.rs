//! cgroups: a container's control groups, v1 and v2, behind one [`CgroupManager`] trait.
//!
//! Owns: finding the cgroup filesystems ([`create`] reads /proc/self/mountinfo and
//! /proc/self/cgroup), resolving `linux.cgroupsPath` the way runc does without systemd
//! (absolute: under each hierarchy's mount point; relative: under the calling process's own
//! cgroup, per controller on v1; absent: `/cryo/<id>`), creating and removing the cgroup
//! directories, moving processes in, writing `linux.resources`, freezing, listing pids and
//! reading stats. What a manager needs later (pause, update, ps, delete from another `cryo`
//! invocation) is its [`CgroupState`], which the container keeps in its state.json.
//!
//! Does not own: the systemd cgroup driver (`--systemd-cgroup` is accepted by the CLI but the
//! cgroupfs layout is always used), which resources a container gets (the spec), nor the
//! device nodes in /dev (rootfs).
//!
//! Layout: [`v1`] and [`v2`] are the two managers, each with one file per controller behind
//! the [`Controller`] trait; [`stats`] holds the stats types and the parsers both share;
//! [`devices`] the device rule list both enforce (v1 through `devices.allow`/`devices.deny`,
//! v2 through an eBPF `BPF_PROG_TYPE_CGROUP_DEVICE` program, see `v2/devices.rs`); [`layout`]
//! the mount and path discovery; [`fs`] the file I/O every write goes through.
//!
//! Hybrid hosts (v1 controllers mounted, an empty cgroup2 at /sys/fs/cgroup/unified) use the
//! v1 manager; the `name=systemd` and unified hierarchies are not joined.
//!
//! Limitations: device rules are applied as written (deny everything, then each rule in
//! order, then runc's default allow list), not diffed against the current list as runc does,
//! so an update that carries device rules briefly denies devices to running processes; when
//! `linux.resources.devices` is absent, devices are left alone (runc denies all but its
//! defaults). `memory.kernel` and `memory.kernelTCP` are ignored (deprecated by the kernel).
//! On v2, `memory.swappiness`, `memory.disableOOMKiller` and `blockIO.leafWeight` have no
//! equivalent and are ignored; realtime CPU limits are an error.

pub mod devices;
mod error;
pub mod fs;
pub mod layout;
pub mod oom;
pub mod stats;
pub mod v1;
pub mod v2;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod real_tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

pub use error::{Error, Result};
pub use layout::Mode;
pub use stats::Stats;

/// The state of a cgroup's freezer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FreezerState {
    /// Processes run.
    Thawed,
    /// Processes are stopped (v1 `FROZEN`, v2 `cgroup.events` `frozen 1`).
    Frozen,
}

/// Everything needed to rebuild a manager from a container's state.json.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CgroupState {
    /// Which manager: `v1` (also on hybrid hosts) or `v2`.
    pub mode: Mode,
    /// v1: controller name → mount point of its hierarchy; v2: `unified` → the cgroup2 mount.
    pub mounts: BTreeMap<String, PathBuf>,
    /// v1: controller name → the container's cgroup directory; v2: `unified` → its directory.
    pub paths: BTreeMap<String, PathBuf>,
}

/// The key of the single hierarchy in a v2 [`CgroupState`].
pub const UNIFIED: &str = "unified";

/// One container's cgroup(s).
pub trait CgroupManager: std::fmt::Debug + Send + Sync {
    /// Creates the cgroup(s) if needed and moves `pid` in (also used for an exec'd process).
    fn apply(&self, pid: i32) -> Result<()>;
    /// Creates the cgroup(s) without moving anyone in; [`Self::join_files`] then lets a
    /// process move itself.
    fn prepare(&self) -> Result<()>;
    /// The files into which a *single-threaded* process writes `0` to move itself into the
    /// cgroup(s), after [`Self::prepare`].
    ///
    /// On v1 these are the `tasks` files: the kernel moves only the calling thread then, and
    /// skips the global threadgroup lock whose write side waits for an RCU grace period
    /// (10–20 ms here on the first migration, the largest single cost of `create`). A
    /// single-threaded process is its whole thread group, so the result is the same as
    /// writing its pid to `cgroup.procs`.
    fn join_files(&self) -> Vec<PathBuf>;
    /// Writes `linux.resources` (at create and at update).
    fn set(&self, resources: &LinuxResources) -> Result<()>;
    /// Freezes or thaws, returning once the kernel reports the new state.
    fn freeze(&self, state: FreezerState) -> Result<()>;
    /// The freezer's current state (`Thawed` when the cgroup is gone or has no freezer).
    fn freezer_state(&self) -> Result<FreezerState>;
    /// Every pid in the cgroup and its descendants, sorted.
    fn pids(&self) -> Result<Vec<i32>>;
    /// Usage counters.
    fn stats(&self) -> Result<Stats>;
    /// Removes the cgroup directories (descendants first; a missing directory is fine).
    fn destroy(&self) -> Result<()>;
    /// What [`from_state`] needs to rebuild this manager.
    fn state(&self) -> CgroupState;
}

/// One controller's share of `linux.resources`: what it is asked, how to write it, its stats.
///
/// v1 and v2 each implement it once per controller; the managers dispatch on [`Self::NAME`]
/// (the v1 subsystem name, or the v2 name in `cgroup.controllers`).
pub trait Controller {
    /// The controller's name as the kernel spells it.
    const NAME: &'static str;
    /// The first resource field that needs this controller, `None` when nothing is asked of it.
    fn requested(r: &LinuxResources) -> Option<&'static str>;
    /// Writes this controller's limits into the cgroup directory `dir`.
    fn set(dir: &Path, r: &LinuxResources) -> Result<()>;
    /// Adds this controller's counters to `stats`.
    fn stats(_dir: &Path, _stats: &mut Stats) -> Result<()> {
        Ok(())
    }
}

/// Creates the manager for a container on this host: detects v1/v2/hybrid from
/// /proc/self/mountinfo and resolves `cgroups_path` (see the module docs). Nothing is created
/// on disk until [`CgroupManager::apply`].
pub fn create(cgroups_path: Option<&str>, container_id: &str) -> Result<Box<dyn CgroupManager>> {
    let layout = layout::Layout::from_proc()?;
    build(&layout, cgroups_path, container_id)
}

/// Like [`create`], for a cgroupfs tree at `root` (tests use a fake one in a tempdir): v1
/// expects one directory per controller (`root/memory`, `root/cpu`, …), v2 a cgroup2 tree.
/// The calling process counts as being in each hierarchy's root cgroup.
pub fn create_at(
    root: &Path,
    mode: Mode,
    cgroups_path: Option<&str>,
    container_id: &str,
) -> Result<Box<dyn CgroupManager>> {
    let layout = layout::Layout::at(root, mode);
    build(&layout, cgroups_path, container_id)
}

/// Rebuilds a manager from what [`CgroupManager::state`] returned.
pub fn from_state(state: &CgroupState) -> Result<Box<dyn CgroupManager>> {
    match state.mode {
        Mode::V1 => Ok(Box::new(v1::Manager::new(
            state.mounts.clone(),
            state.paths.clone(),
        ))),
        Mode::V2 => {
            let mount = state.mounts.get(UNIFIED);
            let path = state.paths.get(UNIFIED);
            match (mount, path) {
                (Some(m), Some(p)) => Ok(Box::new(v2::Manager::new(m.clone(), p.clone()))),
                _ => Err(Error::BadState {
                    reason: format!("a v2 cgroup state needs mounts.{UNIFIED} and paths.{UNIFIED}"),
                }),
            }
        }
    }
}

fn build(
    layout: &layout::Layout,
    cgroups_path: Option<&str>,
    container_id: &str,
) -> Result<Box<dyn CgroupManager>> {
    let paths = layout.resolve(cgroups_path, container_id)?;
    let mounts = layout.mount_points();
    from_state(&CgroupState {
        mode: layout.mode,
        mounts,
        paths,
    })
}

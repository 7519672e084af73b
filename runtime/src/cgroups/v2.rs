//! The cgroup v2 manager: one directory in the unified hierarchy, controllers in `v2/`.
//!
//! On creation, each ancestor from the mount point down enables in its
//! `cgroup.subtree_control` the controllers cryo uses (`cpu cpuset io memory pids hugetlb`)
//! that its `cgroup.controllers` offers, as runc does; one that cannot be enabled (a parent
//! with processes of its own, a controller held by a v1 hierarchy) is left off, and only a
//! resource that needs it fails, naming the controller. `cpuset` and `pids` have the same
//! files as on v1 and share v1's code; devices are an eBPF program (`v2/devices.rs`).

mod cpu;
mod devices;
mod freezer;
mod hugetlb;
mod io;
mod memory;

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::error::{Error, Result, WithField};
use super::layout::Mode;
use super::stats::Stats;
use super::v1::{cpuset::Cpuset, pids::Pids};
use super::{fs, CgroupManager, CgroupState, Controller, FreezerState, UNIFIED};

/// The controllers enabled down to a container's cgroup.
pub const CONTROLLERS: &[&str] = &["cpu", "cpuset", "io", "memory", "pids", "hugetlb"];

/// A container's v2 cgroup.
#[derive(Debug, Clone)]
pub struct Manager {
    mount: PathBuf,
    path: PathBuf,
}

impl Manager {
    /// A manager for the cgroup `path` in the cgroup2 hierarchy mounted at `mount`.
    pub fn new(mount: PathBuf, path: PathBuf) -> Manager {
        Manager { mount, path }
    }

    /// Creates each missing level below the mount, enabling controllers on the way down.
    fn create_path(&self) -> Result<()> {
        let rel = self
            .path
            .strip_prefix(&self.mount)
            .map_err(|_| Error::BadState {
                reason: format!(
                    "cgroup {} is not under the cgroup2 mount {}",
                    self.path.display(),
                    self.mount.display()
                ),
            })?;
        let mut cur = self.mount.clone();
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                continue;
            };
            enable_controllers(&cur)?;
            cur.push(name);
            fs::mkdir(&cur)?;
        }
        Ok(())
    }

    fn set_one<C: Controller>(&self, r: &LinuxResources, available: &[String]) -> Result<()> {
        let Some(field) = C::requested(r) else {
            return Ok(());
        };
        if !available.iter().any(|c| c == C::NAME) {
            return Err(Error::NotAvailable {
                field: field.into(),
                controller: C::NAME,
                reason: format!(
                    "is not enabled for {} (its cgroup.controllers: {:?})",
                    self.path.display(),
                    available.join(" ")
                ),
            });
        }
        C::set(&self.path, r)
    }

    fn stats_one<C: Controller>(&self, s: &mut Stats) -> Result<()> {
        C::stats(&self.path, s)
    }
}

/// Enables in `dir/cgroup.subtree_control` what `dir/cgroup.controllers` offers of
/// [`CONTROLLERS`]; all at once, else one by one, ignoring refusals.
fn enable_controllers(dir: &Path) -> Result<()> {
    let offered = controllers(dir, "cgroup.controllers")?;
    let enabled = controllers(dir, "cgroup.subtree_control")?;
    let missing: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| offered.iter().any(|o| o == *c) && !enabled.iter().any(|e| e == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if let Err(e) = fs::write(dir, "cgroup.subtree_control", &missing.join(" ")) {
        tracing::debug!(error = %e, "enabling controllers together failed; trying one by one");
        for c in &missing {
            if let Err(e) = fs::write(dir, "cgroup.subtree_control", c) {
                tracing::debug!(error = %e, "controller left disabled");
            }
        }
    }
    Ok(())
}

/// A space-separated controller list file; an absent one is empty.
fn controllers(dir: &Path, file: &str) -> Result<Vec<String>> {
    Ok(fs::read_opt(dir, file)?
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

impl CgroupManager for Manager {
    fn apply(&self, pid: i32) -> Result<()> {
        self.create_path()?;
        fs::add_pid(&self.path, pid)
    }

    fn prepare(&self) -> Result<()> {
        self.create_path()
    }

    fn join_files(&self) -> Vec<PathBuf> {
        vec![self.path.join("cgroup.procs")]
    }

    fn set(&self, r: &LinuxResources) -> Result<()> {
        if let Some(c) = r.cpu() {
            let rt = c.realtime_runtime().is_some_and(|v| v != 0)
                || c.realtime_period().is_some_and(|v| v != 0);
            if rt {
                return Err(Error::Unsupported {
                    field: "linux.resources.cpu.realtimeRuntime".into(),
                    reason: "cgroup v2 has no realtime CPU limits".into(),
                });
            }
        }
        if let Some(n) = r.network() {
            if n.class_id().is_some() || n.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
                return Err(Error::Unsupported {
                    field: "linux.resources.network".into(),
                    reason: "cgroup v2 has no net_cls or net_prio controller".into(),
                });
            }
        }
        if r.rdma().as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(Error::Unsupported {
                field: "linux.resources.rdma".into(),
                reason: "the rdma controller is not supported by cryo".into(),
            });
        }
        let available = controllers(&self.path, "cgroup.controllers")?;
        self.set_one::<Cpuset>(r, &available)?;
        self.set_one::<cpu::Cpu>(r, &available)?;
        self.set_one::<memory::Memory>(r, &available)?;
        self.set_one::<Pids>(r, &available)?;
        self.set_one::<io::Io>(r, &available)?;
        self.set_one::<hugetlb::Hugetlb>(r, &available)?;
        if let Some(devs) = r.devices() {
            devices::set(&self.path, devs)?;
        }
        set_unified(&self.path, r)
    }

    fn freeze(&self, state: FreezerState) -> Result<()> {
        freezer::freeze(&self.path, state)
    }

    fn freezer_state(&self) -> Result<FreezerState> {
        freezer::state(&self.path)
    }

    fn pids(&self) -> Result<Vec<i32>> {
        fs::pids_recursive(&self.path)
    }

    fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        self.stats_one::<cpu::Cpu>(&mut s)?;
        self.stats_one::<memory::Memory>(&mut s)?;
        self.stats_one::<Pids>(&mut s)?;
        self.stats_one::<io::Io>(&mut s)?;
        self.stats_one::<hugetlb::Hugetlb>(&mut s)?;
        Ok(s)
    }

    fn destroy(&self) -> Result<()> {
        fs::remove_cgroup(&self.path)
    }

    fn state(&self) -> CgroupState {
        CgroupState {
            mode: Mode::V2,
            mounts: [(UNIFIED.to_string(), self.mount.clone())].into(),
            paths: [(UNIFIED.to_string(), self.path.clone())].into(),
        }
    }
}

/// `linux.resources.unified`: raw `file: value` pairs, written as given, after everything
/// else (so they win, as in runc). Keys must name a file of this cgroup (`memory.high`).
fn set_unified(dir: &Path, r: &LinuxResources) -> Result<()> {
    let Some(u) = r.unified() else {
        return Ok(());
    };
    let mut keys: Vec<&String> = u.keys().collect();
    keys.sort();
    for k in keys {
        let field = format!("linux.resources.unified.{k:?}");
        let valid = k.contains('.')
            && !k.starts_with('.')
            && !k.contains('/')
            && !k.starts_with("cgroup.procs")
            && k != "cgroup.threads";
        if !valid {
            return Err(Error::Invalid {
                field,
                value: format!("{k:?}"),
                reason: "expected a control file name such as \"memory.high\"".into(),
            });
        }
        let v = u.get(k).map(String::as_str).unwrap_or_default();
        fs::write(dir, k, v).field(field)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

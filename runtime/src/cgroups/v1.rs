//! The cgroup v1 manager: one directory per controller hierarchy (co-mounted controllers
//! share one), each controller in its own file under `v1/`.
//!
//! A controller that is not mounted is skipped unless `linux.resources` asks something of
//! it, which is then an error naming the field and the controller.

// blkio, cpu, cpuset, hugetlb and pids are shared with v2 where the files or rules agree.
pub(crate) mod blkio;
pub(crate) mod cpu;
mod cpuacct;
pub(crate) mod cpuset;
mod devices;
mod freezer;
pub(crate) mod hugetlb;
mod memory;
mod net;
pub(crate) mod pids;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::error::{Error, Result};
use super::layout::Mode;
use super::stats::Stats;
use super::{fs, CgroupManager, CgroupState, Controller, FreezerState};

/// A container's v1 cgroups.
#[derive(Debug, Clone)]
pub struct Manager {
    mounts: BTreeMap<String, PathBuf>,
    paths: BTreeMap<String, PathBuf>,
}

impl Manager {
    /// A manager over `paths` (controller → cgroup directory) in hierarchies mounted at
    /// `mounts` (controller → mount point).
    pub fn new(mounts: BTreeMap<String, PathBuf>, paths: BTreeMap<String, PathBuf>) -> Manager {
        Manager { mounts, paths }
    }

    fn path(&self, controller: &str) -> Option<&Path> {
        self.paths.get(controller).map(PathBuf::as_path)
    }

    /// Each distinct directory once, with the controllers it serves.
    fn dirs(&self) -> Vec<(Vec<&str>, &Path)> {
        let mut out: Vec<(Vec<&str>, &Path)> = Vec::new();
        for (name, dir) in &self.paths {
            match out.iter_mut().find(|(_, d)| *d == dir.as_path()) {
                Some((names, _)) => names.push(name),
                None => out.push((vec![name], dir)),
            }
        }
        out
    }

    fn set_one<C: Controller>(&self, r: &LinuxResources) -> Result<()> {
        let Some(field) = C::requested(r) else {
            return Ok(());
        };
        match self.path(C::NAME) {
            Some(dir) => C::set(dir, r),
            None => Err(Error::NotAvailable {
                field: field.into(),
                controller: C::NAME,
                reason: "is not mounted".into(),
            }),
        }
    }

    fn stats_one<C: Controller>(&self, stats: &mut Stats) -> Result<()> {
        match self.path(C::NAME) {
            Some(dir) => C::stats(dir, stats),
            None => Ok(()),
        }
    }
}

impl CgroupManager for Manager {
    fn apply(&self, pid: i32) -> Result<()> {
        self.prepare()?;
        for (_, dir) in self.dirs() {
            fs::add_pid(dir, pid)?;
        }
        Ok(())
    }

    fn prepare(&self) -> Result<()> {
        for (names, dir) in self.dirs() {
            if names.contains(&cpuset::Cpuset::NAME) {
                let mount = self.mounts.get(cpuset::Cpuset::NAME).map(PathBuf::as_path);
                cpuset::ensure(mount, dir)?;
            } else {
                fs::mkdir_all(dir)?;
            }
        }
        Ok(())
    }

    fn join_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|(_, dir)| dir.join("tasks"))
            .collect()
    }

    fn set(&self, r: &LinuxResources) -> Result<()> {
        if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(Error::Unsupported {
                field: "linux.resources.unified".into(),
                reason: "needs cgroup v2, and this host uses cgroup v1".into(),
            });
        }
        if r.rdma().as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(Error::Unsupported {
                field: "linux.resources.rdma".into(),
                reason: "the rdma controller is not supported by cryo".into(),
            });
        }
        self.set_one::<cpuset::Cpuset>(r)?;
        self.set_one::<cpu::Cpu>(r)?;
        self.set_one::<memory::Memory>(r)?;
        self.set_one::<pids::Pids>(r)?;
        self.set_one::<blkio::Blkio>(r)?;
        self.set_one::<devices::Devices>(r)?;
        self.set_one::<hugetlb::Hugetlb>(r)?;
        self.set_one::<net::NetCls>(r)?;
        self.set_one::<net::NetPrio>(r)?;
        Ok(())
    }

    fn freeze(&self, state: FreezerState) -> Result<()> {
        match self.path("freezer") {
            Some(dir) => freezer::freeze(dir, state),
            None => Err(Error::NotAvailable {
                field: "pause/resume".into(),
                controller: "freezer",
                reason: "is not mounted".into(),
            }),
        }
    }

    fn freezer_state(&self) -> Result<FreezerState> {
        match self.path("freezer") {
            Some(dir) => freezer::state(dir),
            None => Ok(FreezerState::Thawed),
        }
    }

    fn pids(&self) -> Result<Vec<i32>> {
        let dir = ["pids", "freezer", "devices", "memory", "cpu"]
            .iter()
            .find_map(|c| self.path(c))
            .or_else(|| self.paths.values().next().map(PathBuf::as_path));
        match dir {
            Some(d) => fs::pids_recursive(d),
            None => Ok(Vec::new()),
        }
    }

    fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        self.stats_one::<cpu::Cpu>(&mut s)?;
        self.stats_one::<cpuacct::Cpuacct>(&mut s)?;
        self.stats_one::<memory::Memory>(&mut s)?;
        self.stats_one::<pids::Pids>(&mut s)?;
        self.stats_one::<blkio::Blkio>(&mut s)?;
        self.stats_one::<hugetlb::Hugetlb>(&mut s)?;
        Ok(s)
    }

    fn destroy(&self) -> Result<()> {
        let mut first_err = None;
        for (_, dir) in self.dirs() {
            if let Err(e) = fs::remove_cgroup(dir) {
                tracing::warn!(error = %e, "removing cgroup");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn state(&self) -> CgroupState {
        CgroupState {
            mode: Mode::V1,
            mounts: self.mounts.clone(),
            paths: self.paths.clone(),
        }
    }
}

#[cfg(test)]
mod tests;

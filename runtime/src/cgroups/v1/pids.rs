//! v1 `pids`: the process limit and count. The file format is the same on v2, so the v2
//! manager uses this controller as is.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::error::{Result, WithField};
use crate::cgroups::stats::Stats;
use crate::cgroups::{fs, Controller};

pub struct Pids;

impl Controller for Pids {
    const NAME: &'static str = "pids";

    fn requested(r: &LinuxResources) -> Option<&'static str> {
        r.pids().as_ref().map(|_| "linux.resources.pids.limit")
    }

    fn set(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(p) = r.pids().as_ref() else {
            return Ok(());
        };
        // The runtime spec: 0 or -1 mean no limit.
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".to_string()
        };
        fs::write(dir, "pids.max", &v).field("linux.resources.pids.limit")
    }

    fn stats(dir: &Path, s: &mut Stats) -> Result<()> {
        s.pids.current = fs::read_u64_opt(dir, "pids.current")?.unwrap_or(0);
        s.pids.limit = match fs::read_u64_opt(dir, "pids.max")? {
            Some(u64::MAX) | None => 0,
            Some(v) => v,
        };
        Ok(())
    }
}

//! v1 `cpuacct`: CPU time stats (nothing to set).

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::error::Result;
use crate::cgroups::stats::Stats;
use crate::cgroups::{fs, Controller};

pub struct Cpuacct;

impl Controller for Cpuacct {
    const NAME: &'static str = "cpuacct";

    fn requested(_r: &LinuxResources) -> Option<&'static str> {
        None
    }

    fn set(_dir: &Path, _r: &LinuxResources) -> Result<()> {
        Ok(())
    }

    fn stats(dir: &Path, s: &mut Stats) -> Result<()> {
        s.cpu.usage.total = fs::read_u64_opt(dir, "cpuacct.usage")?.unwrap_or(0);
        if let Some(per) = fs::read_opt(dir, "cpuacct.usage_percpu")? {
            s.cpu.usage.percpu = per
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
        }
        // cpuacct.stat counts USER_HZ ticks.
        let st = fs::read_flat_keyed(dir, "cpuacct.stat")?;
        let hz = clock_ticks();
        let ns = |k: &str| {
            st.get(k)
                .copied()
                .unwrap_or(0)
                .saturating_mul(1_000_000_000)
                / hz
        };
        s.cpu.usage.user = ns("user");
        s.cpu.usage.kernel = ns("system");
        Ok(())
    }
}

fn clock_ticks() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(v)) if v > 0 => u64::try_from(v).unwrap_or(100),
        _ => 100,
    }
}

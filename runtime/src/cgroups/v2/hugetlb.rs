//! v2 `hugetlb`: `hugetlb.<size>.max`; usage from `.current`, limit hits from `.events`.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::error::Result;
use crate::cgroups::stats::{hugetlb_sizes, HugetlbStats, Stats};
use crate::cgroups::v1::hugetlb::{requested, set_limits};
use crate::cgroups::{fs, Controller};

pub struct Hugetlb;

impl Controller for Hugetlb {
    const NAME: &'static str = "hugetlb";

    fn requested(r: &LinuxResources) -> Option<&'static str> {
        requested(r)
    }

    fn set(dir: &Path, r: &LinuxResources) -> Result<()> {
        set_limits(dir, r, "max")
    }

    fn stats(dir: &Path, s: &mut Stats) -> Result<()> {
        for size in hugetlb_sizes(dir, "max") {
            let st = HugetlbStats {
                usage: fs::read_u64_opt(dir, &format!("hugetlb.{size}.current"))?.unwrap_or(0),
                max: 0,
                failcnt: fs::read_flat_keyed(dir, &format!("hugetlb.{size}.events"))?
                    .get("max")
                    .copied()
                    .unwrap_or(0),
            };
            s.hugetlb.insert(size, st);
        }
        Ok(())
    }
}

//! v1 `hugetlb`: limits per huge page size; usage stats. Mounted only where the host set it
//! up (on a hybrid host the kernel may offer hugetlb to cgroup2 instead).

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::error::Result;
use crate::cgroups::stats::{hugetlb_sizes, HugetlbStats, Stats};
use crate::cgroups::{fs, Controller};

pub struct Hugetlb;

impl Controller for Hugetlb {
    const NAME: &'static str = "hugetlb";

    fn requested(r: &LinuxResources) -> Option<&'static str> {
        requested(r)
    }

    fn set(dir: &Path, r: &LinuxResources) -> Result<()> {
        set_limits(dir, r, "limit_in_bytes")
    }

    fn stats(dir: &Path, s: &mut Stats) -> Result<()> {
        for size in hugetlb_sizes(dir, "limit_in_bytes") {
            let f = |name: &str| fs::read_u64_opt(dir, &format!("hugetlb.{size}.{name}"));
            let st = HugetlbStats {
                usage: f("usage_in_bytes")?.unwrap_or(0),
                max: f("max_usage_in_bytes")?.unwrap_or(0),
                failcnt: f("failcnt")?.unwrap_or(0),
            };
            s.hugetlb.insert(size, st);
        }
        Ok(())
    }
}

pub(crate) fn requested(r: &LinuxResources) -> Option<&'static str> {
    r.hugepage_limits()
        .as_ref()
        .filter(|l| !l.is_empty())
        .map(|_| "linux.resources.hugepageLimits")
}

/// Writes each limit to `hugetlb.<size>.<suffix>` (v1 `limit_in_bytes`, v2 `max`).
pub(crate) fn set_limits(dir: &Path, r: &LinuxResources, suffix: &str) -> Result<()> {
    use crate::cgroups::error::{Error, WithField};
    use crate::cgroups::stats::hugetlb_page_size;
    for (i, l) in r.hugepage_limits().iter().flatten().enumerate() {
        let Some(size) = hugetlb_page_size(l.page_size()) else {
            return Err(Error::Invalid {
                field: format!("linux.resources.hugepageLimits[{i}].pageSize"),
                value: format!("{:?}", l.page_size()),
                reason: "expected a size with KB, MB or GB (\"2MB\", \"1GB\")".into(),
            });
        };
        let field = format!("linux.resources.hugepageLimits[{i}].limit");
        fs::write(
            dir,
            &format!("hugetlb.{size}.{suffix}"),
            &l.limit().to_string(),
        )
        .field(field)
        .map_err(|e| match e {
            Error::Write {
                field,
                path,
                value,
                source,
                hint: None,
            } if source.kind() == std::io::ErrorKind::NotFound => Error::Write {
                field,
                path,
                value,
                source,
                hint: Some(format!("this kernel has no {size} huge pages")),
            },
            other => other,
        })?;
    }
    Ok(())
}

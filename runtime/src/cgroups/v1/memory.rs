//! v1 `memory`: limit, memory+swap limit, soft limit (reservation), swappiness, OOM killer;
//! usage stats. `memory.kernel`/`kernelTCP` are ignored: kernels deprecated and then removed
//! kmem limits, and runc ignores them too.

use std::path::Path;

use oci_spec::runtime::{LinuxMemory, LinuxResources};

use crate::cgroups::error::{Error, Result, WithField};
use crate::cgroups::stats::{memory_entry, Stats};
use crate::cgroups::{fs, Controller};

pub struct Memory;

const LIMIT: &str = "memory.limit_in_bytes";
const MEMSW: &str = "memory.memsw.limit_in_bytes";
const USAGE: &str = "memory.usage_in_bytes";
const MAX_USAGE: &str = "memory.max_usage_in_bytes";

impl Controller for Memory {
    const NAME: &'static str = "memory";

    fn requested(r: &LinuxResources) -> Option<&'static str> {
        let m = r.memory().as_ref()?;
        let nz = |v: Option<i64>| v.is_some_and(|v| v != 0);
        if nz(m.limit()) {
            Some("linux.resources.memory.limit")
        } else if nz(m.reservation()) {
            Some("linux.resources.memory.reservation")
        } else if nz(m.swap()) {
            Some("linux.resources.memory.swap")
        } else if m.swappiness().is_some() {
            Some("linux.resources.memory.swappiness")
        } else if m.disable_oom_killer() == Some(true) {
            Some("linux.resources.memory.disableOOMKiller")
        } else {
            None
        }
    }

    fn set(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(m) = r.memory().as_ref() else {
            return Ok(());
        };
        set_limit_and_swap(dir, m)?;
        if let Some(v) = m.reservation().filter(|v| *v != 0) {
            check_bytes("linux.resources.memory.reservation", v)?;
            fs::write(dir, "memory.soft_limit_in_bytes", &v.to_string())
                .field("linux.resources.memory.reservation")?;
        }
        if m.disable_oom_killer() == Some(true) {
            fs::write(dir, "memory.oom_control", "1")
                .field("linux.resources.memory.disableOOMKiller")?;
        }
        if let Some(s) = m.swappiness() {
            if s > 100 {
                return Err(Error::Invalid {
                    field: "linux.resources.memory.swappiness".into(),
                    value: s.to_string(),
                    reason: "expected 0 to 100".into(),
                });
            }
            fs::write(dir, "memory.swappiness", &s.to_string())
                .field("linux.resources.memory.swappiness")?;
        }
        Ok(())
    }

    fn stats(dir: &Path, s: &mut Stats) -> Result<()> {
        let mem = &mut s.memory;
        mem.usage = memory_entry(dir, USAGE, LIMIT, Some(MAX_USAGE), Some("memory.failcnt"))?;
        mem.swap = memory_entry(
            dir,
            "memory.memsw.usage_in_bytes",
            MEMSW,
            Some("memory.memsw.max_usage_in_bytes"),
            Some("memory.memsw.failcnt"),
        )?;
        mem.kernel = memory_entry(
            dir,
            "memory.kmem.usage_in_bytes",
            "memory.kmem.limit_in_bytes",
            Some("memory.kmem.max_usage_in_bytes"),
            Some("memory.kmem.failcnt"),
        )?;
        mem.raw = fs::read_flat_keyed(dir, "memory.stat")?;
        mem.cache = mem
            .raw
            .get("total_cache")
            .or_else(|| mem.raw.get("cache"))
            .copied()
            .unwrap_or(0);
        Ok(())
    }
}

fn check_bytes(field: &str, v: i64) -> Result<()> {
    if v < -1 {
        return Err(Error::Invalid {
            field: field.into(),
            value: v.to_string(),
            reason: "expected a byte count or -1 for no limit".into(),
        });
    }
    Ok(())
}

/// The kernel wants memory.memsw >= memory.limit at every step, so the order of the two
/// writes depends on whether the limits go up or down (as runc orders them).
fn set_limit_and_swap(dir: &Path, m: &LinuxMemory) -> Result<()> {
    let limit = m.limit().filter(|v| *v != 0);
    let mut swap = m.swap().filter(|v| *v != 0);
    if let Some(l) = limit {
        check_bytes("linux.resources.memory.limit", l)?;
    }
    if let Some(s) = swap {
        check_bytes("linux.resources.memory.swap", s)?;
    }
    let has_swap = fs::exists(dir, MEMSW);
    if limit == Some(-1) && swap.is_none() && has_swap {
        // "No memory limit" with swap left out means no memory+swap limit either.
        swap = Some(-1);
    }
    if swap.is_some() && !has_swap {
        tracing::debug!(dir = %dir.display(), "no {MEMSW} (swap accounting off): ignoring linux.resources.memory.swap");
        swap = None;
    }
    if let (Some(l), Some(s)) = (limit, swap) {
        if l > 0 && s > 0 && s < l {
            return Err(Error::Invalid {
                field: "linux.resources.memory.swap".into(),
                value: s.to_string(),
                reason: format!("memory+swap must be at least the memory limit ({l})"),
            });
        }
        let current = fs::read_u64(dir, LIMIT)?;
        let raising = s == -1 || u64::try_from(s).is_ok_and(|s| current < s);
        if raising {
            write_swap(dir, s)?;
            write_limit(dir, l)?;
        } else {
            write_limit(dir, l)?;
            write_swap(dir, s)?;
        }
        return Ok(());
    }
    if let Some(l) = limit {
        write_limit(dir, l)?;
    }
    if let Some(s) = swap {
        write_swap(dir, s)?;
    }
    Ok(())
}

fn write_limit(dir: &Path, v: i64) -> Result<()> {
    match fs::write(dir, LIMIT, &v.to_string()) {
        Err(Error::Write {
            path,
            value,
            source,
            ..
        }) if source.raw_os_error() == Some(libc::EBUSY) => {
            // The kernel could not reclaim down to the new limit.
            let usage = fs::read_u64(dir, USAGE).unwrap_or(0);
            let peak = fs::read_u64(dir, MAX_USAGE).unwrap_or(0);
            Err(Error::Write {
                field: Some("linux.resources.memory.limit".into()),
                path,
                value,
                source,
                hint: Some(format!(
                    "below what the cgroup uses: current usage {usage}, peak {peak}"
                )),
            })
        }
        r => r.field("linux.resources.memory.limit"),
    }
}

fn write_swap(dir: &Path, v: i64) -> Result<()> {
    fs::write(dir, MEMSW, &v.to_string()).field("linux.resources.memory.swap")
}

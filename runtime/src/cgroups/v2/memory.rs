//! v2 `memory`: `memory.max`, `memory.low` (reservation), `memory.swap.max` (the spec's
//! memory+swap minus memory, as runc converts it); usage stats. `swappiness` and
//! `disableOOMKiller` have no v2 file and are ignored.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::error::{Error, Result, WithField};
use crate::cgroups::stats::{memory_entry, Stats};
use crate::cgroups::{fs, Controller};

pub struct Memory;

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
        } else {
            None
        }
    }

    fn set(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(m) = r.memory().as_ref() else {
            return Ok(());
        };
        if m.swappiness().is_some() || m.disable_oom_killer() == Some(true) {
            tracing::debug!("cgroup v2: ignoring memory.swappiness / memory.disableOOMKiller");
        }
        let limit = m.limit().unwrap_or(0);
        let swap = swap_max(limit, m.swap().unwrap_or(0))?;
        if let Some(sw) = swap {
            match fs::write(dir, "memory.swap.max", &sw) {
                // No swap accounting: "no swap" and "unlimited" both already hold.
                Err(e) if e.errno() == Some(libc::ENOENT) && (sw == "max" || sw == "0") => {}
                r => r.field("linux.resources.memory.swap")?,
            }
        }
        if let Some(v) = num(limit, "linux.resources.memory.limit")? {
            fs::write(dir, "memory.max", &v).field("linux.resources.memory.limit")?;
        }
        let res = m.reservation().unwrap_or(0);
        if let Some(v) = num(res, "linux.resources.memory.reservation")? {
            fs::write(dir, "memory.low", &v).field("linux.resources.memory.reservation")?;
        }
        Ok(())
    }

    fn stats(dir: &Path, s: &mut Stats) -> Result<()> {
        let mem = &mut s.memory;
        mem.usage = memory_entry(
            dir,
            "memory.current",
            "memory.max",
            Some("memory.peak"),
            None,
        )?;
        mem.usage.failcnt = fs::read_flat_keyed(dir, "memory.events")?
            .get("max")
            .copied()
            .unwrap_or(0);
        mem.swap = memory_entry(
            dir,
            "memory.swap.current",
            "memory.swap.max",
            Some("memory.swap.peak"),
            None,
        )?;
        mem.swap.failcnt = fs::read_flat_keyed(dir, "memory.swap.events")?
            .get("fail")
            .copied()
            .unwrap_or(0);
        mem.raw = fs::read_flat_keyed(dir, "memory.stat")?;
        mem.cache = mem.raw.get("file").copied().unwrap_or(0);
        Ok(())
    }
}

/// 0: leave alone; -1: `max`; else the number.
fn num(v: i64, field: &str) -> Result<Option<String>> {
    match v {
        0 => Ok(None),
        -1 => Ok(Some("max".into())),
        v if v > 0 => Ok(Some(v.to_string())),
        v => Err(Error::Invalid {
            field: field.into(),
            value: v.to_string(),
            reason: "expected a byte count or -1 for no limit".into(),
        }),
    }
}

/// The value of `memory.swap.max` for the spec's memory limit and memory+swap limit, as
/// runc's `ConvertMemorySwapToCgroupV2Value`; `None` leaves it alone.
pub fn swap_max(limit: i64, memsw: i64) -> Result<Option<String>> {
    let field = "linux.resources.memory.swap";
    let invalid = |reason: &str| Error::Invalid {
        field: field.into(),
        value: memsw.to_string(),
        reason: reason.into(),
    };
    match (limit, memsw) {
        // No memory limit and swap left out: no swap limit either.
        (-1, 0) => Ok(Some("max".into())),
        (_, 0) => Ok(None),
        (_, -1) => Ok(Some("max".into())),
        (_, s) if s < -1 => Err(invalid("expected a byte count or -1 for no limit")),
        (0 | -1, _) => Err(invalid("a memory+swap limit needs a memory limit")),
        (l, s) if s < l => Err(invalid(&format!(
            "memory+swap must be at least the memory limit ({l})"
        ))),
        (l, s) => Ok(Some((s - l).to_string())),
    }
}

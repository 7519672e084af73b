//! v1 `cpu`: CFS shares, quota/period/burst, idle, realtime runtime/period; throttling stats.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::error::{Error, Result, WithField};
use crate::cgroups::stats::Stats;
use crate::cgroups::{fs, Controller};

pub struct Cpu;

const SHARES: &str = "cpu.shares";
const QUOTA: &str = "cpu.cfs_quota_us";
const PERIOD: &str = "cpu.cfs_period_us";
const BURST: &str = "cpu.cfs_burst_us";
const IDLE: &str = "cpu.idle";
const RT_PERIOD: &str = "cpu.rt_period_us";
const RT_RUNTIME: &str = "cpu.rt_runtime_us";

impl Controller for Cpu {
    const NAME: &'static str = "cpu";

    fn requested(r: &LinuxResources) -> Option<&'static str> {
        let c = r.cpu().as_ref()?;
        let nz = |v: Option<i64>| v.is_some_and(|v| v != 0);
        let nzu = |v: Option<u64>| v.is_some_and(|v| v != 0);
        if nzu(c.shares()) {
            Some("linux.resources.cpu.shares")
        } else if nz(c.quota()) {
            Some("linux.resources.cpu.quota")
        } else if nzu(c.period()) {
            Some("linux.resources.cpu.period")
        } else if c.burst().is_some() {
            Some("linux.resources.cpu.burst")
        } else if c.idle().is_some() {
            Some("linux.resources.cpu.idle")
        } else if nz(c.realtime_runtime()) {
            Some("linux.resources.cpu.realtimeRuntime")
        } else if nzu(c.realtime_period()) {
            Some("linux.resources.cpu.realtimePeriod")
        } else {
            None
        }
    }

    fn set(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(c) = r.cpu().as_ref() else {
            return Ok(());
        };
        let quota = c.quota().filter(|q| *q != 0);
        let period = c.period().filter(|p| *p != 0);
        validate_quota_period(quota, period)?;

        if let Some(shares) = c.shares().filter(|s| *s != 0) {
            let field = "linux.resources.cpu.shares";
            fs::write(dir, SHARES, &shares.to_string()).field(field)?;
            // The kernel clamps out-of-range shares instead of refusing them.
            let got = fs::read_u64(dir, SHARES)?;
            if got != shares {
                return Err(Error::Invalid {
                    field: field.into(),
                    value: shares.to_string(),
                    reason: format!("the kernel clamped it to {got} (range: 2 to 262144)"),
                });
            }
        }
        let mut period_pending = None;
        if let Some(p) = period {
            match fs::write(dir, PERIOD, &p.to_string()) {
                Ok(()) => {}
                // Shrinking the period below what the current quota allows is refused until
                // the new quota is in: retry after writing it.
                Err(e) if e.errno() == Some(libc::EINVAL) && quota.is_some() => {
                    period_pending = Some(p);
                }
                Err(e) => return Err(e).field("linux.resources.cpu.period"),
            }
        }
        if let Some(q) = quota {
            fs::write(dir, QUOTA, &q.to_string()).field("linux.resources.cpu.quota")?;
            if let Some(p) = period_pending {
                fs::write(dir, PERIOD, &p.to_string()).field("linux.resources.cpu.period")?;
            }
        }
        if let Some(b) = c.burst() {
            fs::write(dir, BURST, &b.to_string()).field("linux.resources.cpu.burst")?;
        }
        if let Some(i) = c.idle() {
            fs::write(dir, IDLE, &i.to_string()).field("linux.resources.cpu.idle")?;
        }
        if let Some(p) = c.realtime_period().filter(|p| *p != 0) {
            fs::write(dir, RT_PERIOD, &p.to_string())
                .field("linux.resources.cpu.realtimePeriod")?;
        }
        if let Some(rt) = c.realtime_runtime().filter(|p| *p != 0) {
            fs::write(dir, RT_RUNTIME, &rt.to_string())
                .field("linux.resources.cpu.realtimeRuntime")?;
        }
        Ok(())
    }

    fn stats(dir: &Path, s: &mut Stats) -> Result<()> {
        let st = fs::read_flat_keyed(dir, "cpu.stat")?;
        let get = |k: &str| st.get(k).copied().unwrap_or(0);
        s.cpu.throttling.periods = get("nr_periods");
        s.cpu.throttling.throttled_periods = get("nr_throttled");
        s.cpu.throttling.throttled_time = get("throttled_time");
        Ok(())
    }
}

/// The kernel's CFS bounds: quota -1 (none) or at least 1000 µs; period 1000 µs to 1 s.
pub(crate) fn validate_quota_period(quota: Option<i64>, period: Option<u64>) -> Result<()> {
    if let Some(q) = quota {
        if q < -1 || (0..1000).contains(&q) {
            return Err(Error::Invalid {
                field: "linux.resources.cpu.quota".into(),
                value: q.to_string(),
                reason: "the kernel's minimum is 1000 µs (-1: no limit)".into(),
            });
        }
    }
    if let Some(p) = period {
        if !(1000..=1_000_000).contains(&p) {
            return Err(Error::Invalid {
                field: "linux.resources.cpu.period".into(),
                value: p.to_string(),
                reason: "the kernel accepts 1000 to 1000000 µs".into(),
            });
        }
    }
    Ok(())
}

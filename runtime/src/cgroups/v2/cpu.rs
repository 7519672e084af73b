//! v2 `cpu`: `cpu.weight` (from v1-style shares), `cpu.max` (quota and period),
//! `cpu.max.burst`, `cpu.idle`; usage and throttling stats from `cpu.stat`.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::error::{Result, WithField};
use crate::cgroups::stats::Stats;
use crate::cgroups::v1::cpu::validate_quota_period;
use crate::cgroups::{fs, Controller};

pub struct Cpu;

impl Controller for Cpu {
    const NAME: &'static str = "cpu";

    fn requested(r: &LinuxResources) -> Option<&'static str> {
        let c = r.cpu().as_ref()?;
        if c.shares().is_some_and(|v| v != 0) {
            Some("linux.resources.cpu.shares")
        } else if c.quota().is_some_and(|v| v != 0) {
            Some("linux.resources.cpu.quota")
        } else if c.period().is_some_and(|v| v != 0) {
            Some("linux.resources.cpu.period")
        } else if c.burst().is_some() {
            Some("linux.resources.cpu.burst")
        } else if c.idle().is_some() {
            Some("linux.resources.cpu.idle")
        } else {
            None
        }
    }

    fn set(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(c) = r.cpu().as_ref() else {
            return Ok(());
        };
        if let Some(s) = c.shares().filter(|v| *v != 0) {
            fs::write(dir, "cpu.weight", &shares_to_weight(s).to_string())
                .field("linux.resources.cpu.shares")?;
        }
        let quota = c.quota().filter(|v| *v != 0);
        let period = c.period().filter(|v| *v != 0);
        validate_quota_period(quota, period)?;
        if quota.is_some() || period.is_some() {
            let q = match quota {
                Some(q) if q > 0 => q.to_string(),
                Some(_) => "max".to_string(),
                // Only the period changes: keep the current quota.
                None => fs::read(dir, "cpu.max")?
                    .split_whitespace()
                    .next()
                    .unwrap_or("max")
                    .to_string(),
            };
            let v = match period {
                Some(p) => format!("{q} {p}"),
                None => q,
            };
            let field = if quota.is_some() {
                "linux.resources.cpu.quota"
            } else {
                "linux.resources.cpu.period"
            };
            fs::write(dir, "cpu.max", &v).field(field)?;
        }
        if let Some(b) = c.burst() {
            fs::write(dir, "cpu.max.burst", &b.to_string()).field("linux.resources.cpu.burst")?;
        }
        if let Some(i) = c.idle() {
            fs::write(dir, "cpu.idle", &i.to_string()).field("linux.resources.cpu.idle")?;
        }
        Ok(())
    }

    fn stats(dir: &Path, s: &mut Stats) -> Result<()> {
        let st = fs::read_flat_keyed(dir, "cpu.stat")?;
        let get = |k: &str| st.get(k).copied().unwrap_or(0);
        s.cpu.usage.total = get("usage_usec").saturating_mul(1000);
        s.cpu.usage.user = get("user_usec").saturating_mul(1000);
        s.cpu.usage.kernel = get("system_usec").saturating_mul(1000);
        s.cpu.throttling.periods = get("nr_periods");
        s.cpu.throttling.throttled_periods = get("nr_throttled");
        s.cpu.throttling.throttled_time = get("throttled_usec").saturating_mul(1000);
        Ok(())
    }
}

/// runc's linear map of v1 shares [2, 262144] onto v2 weights [1, 10000]; out-of-range
/// shares are clamped first, as the v1 kernel would.
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

//! Cgroup usage counters, in the JSON shape of runc's `events --stats` (`types.Stats`), and
//! the parsers the v1 and v2 controllers share to fill them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::error::Result;
use super::fs;

/// A cgroup's counters; serializes as runc's `events --stats` `data` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// CPU time and throttling.
    pub cpu: CpuStats,
    /// Memory usage and limits.
    pub memory: MemoryStats,
    /// Process count and limit.
    pub pids: PidsStats,
    /// Block I/O.
    pub blkio: BlkioStats,
    /// Huge pages per page size (`2MB`, `1GB`).
    pub hugetlb: BTreeMap<String, HugetlbStats>,
}

/// CPU counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    /// Time used.
    pub usage: CpuUsage,
    /// CFS bandwidth throttling.
    pub throttling: Throttling,
}

/// CPU time, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuUsage {
    /// Total CPU time.
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    /// Per CPU (v1 only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    /// In kernel mode.
    pub kernel: u64,
    /// In user mode.
    pub user: u64,
}

/// CFS bandwidth throttling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Throttling {
    /// Enforcement periods elapsed.
    #[serde(skip_serializing_if = "is_zero")]
    pub periods: u64,
    /// Periods in which the cgroup was throttled.
    #[serde(rename = "throttledPeriods", skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    /// Time throttled, in nanoseconds.
    #[serde(rename = "throttledTime", skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

/// Memory counters, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    /// Page cache.
    #[serde(skip_serializing_if = "is_zero")]
    pub cache: u64,
    /// Memory.
    pub usage: MemoryEntry,
    /// Memory + swap on v1, swap alone on v2.
    pub swap: MemoryEntry,
    /// Kernel memory (v1 only).
    pub kernel: MemoryEntry,
    /// memory.stat as the kernel wrote it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

/// Usage, limit, peak and limit hits of one kind of memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEntry {
    /// The limit; `u64::MAX` or the kernel's page-rounded maximum when unlimited.
    pub limit: u64,
    /// Current usage.
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    /// Peak usage.
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    /// How many times the limit was hit.
    pub failcnt: u64,
}

/// Process counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PidsStats {
    /// Processes (tasks) in the cgroup.
    #[serde(skip_serializing_if = "is_zero")]
    pub current: u64,
    /// The limit, 0 when unlimited.
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

/// Block I/O counters, per device and operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlkioStats {
    /// Bytes transferred.
    #[serde(
        rename = "ioServiceBytesRecursive",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    /// Operations.
    #[serde(rename = "ioServicedRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

/// One device's counter for one operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlkioEntry {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// `Read`, `Write`, `Sync`, `Async`, `Discard` or `Total`.
    pub op: String,
    /// The counter.
    pub value: u64,
}

/// Huge page counters for one page size, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HugetlbStats {
    /// Current usage.
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    /// Peak usage (v1 only).
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    /// Allocations refused by the limit.
    pub failcnt: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// v1 blkio files: `8:0 Read 4096` lines (and a `Total N` line, skipped).
pub fn parse_blkio_v1(content: &str) -> Vec<BlkioEntry> {
    content
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (major, minor) = parse_dev(it.next()?)?;
            let op = it.next()?.to_string();
            let value = it.next()?.parse().ok()?;
            Some(BlkioEntry {
                major,
                minor,
                op,
                value,
            })
        })
        .collect()
}

/// v2 io.stat: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0`, as runc maps it.
pub fn parse_io_stat(content: &str, into: &mut BlkioStats) {
    for line in content.lines() {
        let mut it = line.split_whitespace();
        let Some((major, minor)) = it.next().and_then(parse_dev) else {
            continue;
        };
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = v.parse() else { continue };
            let (list, op) = match k {
                "rbytes" => (&mut into.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut into.io_service_bytes_recursive, "Write"),
                "dbytes" => (&mut into.io_service_bytes_recursive, "Discard"),
                "rios" => (&mut into.io_serviced_recursive, "Read"),
                "wios" => (&mut into.io_serviced_recursive, "Write"),
                "dios" => (&mut into.io_serviced_recursive, "Discard"),
                _ => continue,
            };
            list.push(BlkioEntry {
                major,
                minor,
                op: op.to_string(),
                value,
            });
        }
    }
}

fn parse_dev(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A [`MemoryEntry`] from up to four files of `dir` (a missing file reads as 0).
pub fn memory_entry(
    dir: &Path,
    usage: &str,
    limit: &str,
    max: Option<&str>,
    failcnt: Option<&str>,
) -> Result<MemoryEntry> {
    let opt = |f: Option<&str>| -> Result<u64> {
        match f {
            Some(f) => Ok(fs::read_u64_opt(dir, f)?.unwrap_or(0)),
            None => Ok(0),
        }
    };
    Ok(MemoryEntry {
        usage: opt(Some(usage))?,
        limit: opt(Some(limit))?,
        max: opt(max)?,
        failcnt: opt(failcnt)?,
    })
}

/// The page sizes `dir` has hugetlb files for: `hugetlb.<size>.<suffix>`.
pub fn hugetlb_sizes(dir: &Path, suffix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let size = name.strip_prefix("hugetlb.")?.strip_suffix(suffix)?;
            let size = size.strip_suffix('.')?;
            (!size.contains('.')).then(|| size.to_string())
        })
        .collect();
    out.sort();
    out
}

/// A `linux.resources.hugepageLimits[].pageSize` as the kernel names it in file names
/// (`2MB`, `1GB`, `64KB`), or `None` when it is not one.
pub fn hugetlb_page_size(s: &str) -> Option<&str> {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'B']);
    let unit = &s[digits.len()..];
    let ok = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "KB" | "MB" | "GB");
    ok.then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkio_v1_lines() {
        let e = parse_blkio_v1("8:0 Read 4096\n8:0 Write 0\nTotal 4096\n");
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].major, e[0].minor, e[0].op.as_str(), e[0].value),
            (8, 0, "Read", 4096)
        );
    }

    #[test]
    fn io_stat_v2() {
        let mut b = BlkioStats::default();
        parse_io_stat(
            "254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
            &mut b,
        );
        assert_eq!(b.io_service_bytes_recursive.len(), 3);
        assert_eq!(b.io_service_bytes_recursive[1].op, "Write");
        assert_eq!(b.io_service_bytes_recursive[1].value, 20);
        assert_eq!(b.io_serviced_recursive[0].value, 1);
    }

    #[test]
    fn page_sizes() {
        assert_eq!(hugetlb_page_size("2MB"), Some("2MB"));
        assert_eq!(hugetlb_page_size("1GB"), Some("1GB"));
        assert_eq!(hugetlb_page_size("2M"), None);
        assert_eq!(hugetlb_page_size("../x"), None);
        assert_eq!(hugetlb_page_size("MB"), None);
    }

    #[test]
    fn serializes_like_runc() {
        let mut s = Stats::default();
        s.cpu.throttling.throttled_periods = 3;
        s.pids.current = 2;
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["cpu"]["throttling"]["throttledPeriods"], 3);
        assert_eq!(v["pids"]["current"], 2);
        assert_eq!(v["memory"]["usage"]["failcnt"], 0);
        assert!(v["pids"].get("limit").is_none());
    }
}

//! cgroup counters as containerd's `io.containerd.cgroups.v1.Metrics` (what `ctr task
//! metrics` and the CRI stats read).

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, HugetlbStat, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use cryo_runtime::cgroups::Stats;
use protobuf::MessageField;

/// The type URL containerd decodes the metrics by.
pub const METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";

fn entry(e: &cryo_runtime::cgroups::stats::MemoryEntry) -> MessageField<MemoryEntry> {
    MessageField::some(MemoryEntry {
        limit: e.limit,
        usage: e.usage,
        max: e.max,
        failcnt: e.failcnt,
        ..Default::default()
    })
}

/// `stats` in containerd's v1 metrics layout.
pub fn metrics(stats: &Stats) -> Metrics {
    let raw = |k: &str| stats.memory.raw.get(k).copied().unwrap_or(0);
    Metrics {
        pids: MessageField::some(PidsStat {
            current: stats.pids.current,
            limit: stats.pids.limit,
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: stats.cpu.usage.total,
                kernel: stats.cpu.usage.kernel,
                user: stats.cpu.usage.user,
                per_cpu: stats.cpu.usage.percpu.clone(),
                ..Default::default()
            }),
            throttling: MessageField::some(Throttle {
                periods: stats.cpu.throttling.periods,
                throttled_periods: stats.cpu.throttling.throttled_periods,
                throttled_time: stats.cpu.throttling.throttled_time,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            cache: stats.memory.cache,
            rss: raw("rss"),
            rss_huge: raw("rss_huge"),
            mapped_file: raw("mapped_file"),
            dirty: raw("dirty"),
            writeback: raw("writeback"),
            pg_pg_in: raw("pgpgin"),
            pg_pg_out: raw("pgpgout"),
            pg_fault: raw("pgfault"),
            pg_maj_fault: raw("pgmajfault"),
            inactive_anon: raw("inactive_anon"),
            active_anon: raw("active_anon"),
            inactive_file: raw("inactive_file"),
            active_file: raw("active_file"),
            unevictable: raw("unevictable"),
            hierarchical_memory_limit: raw("hierarchical_memory_limit"),
            hierarchical_swap_limit: raw("hierarchical_memsw_limit"),
            total_cache: raw("total_cache"),
            total_rss: raw("total_rss"),
            total_mapped_file: raw("total_mapped_file"),
            total_inactive_file: raw("total_inactive_file"),
            total_active_file: raw("total_active_file"),
            usage: entry(&stats.memory.usage),
            swap: entry(&stats.memory.swap),
            kernel: entry(&stats.memory.kernel),
            ..Default::default()
        }),
        hugetlb: stats
            .hugetlb
            .iter()
            .map(|(size, h)| HugetlbStat {
                usage: h.usage,
                max: h.max,
                failcnt: h.failcnt,
                pagesize: size.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_land_in_their_fields() {
        let mut s = Stats::default();
        s.pids.current = 3;
        s.memory.usage.usage = 4096;
        s.memory.raw.insert("rss".into(), 8192);
        s.cpu.usage.total = 77;
        let m = metrics(&s);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.rss, 8192);
        assert_eq!(m.cpu.usage.total, 77);
    }
}

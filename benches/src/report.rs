//! Results of a run: the machine it ran on, every sample, summaries and ratios; written as
//! JSON and as a markdown table into the results directory.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::stats::Summary;

/// Where and when a run happened.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// The CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// Total memory in MiB.
    pub mem_mib: u64,
    /// RFC 3339 time of the run.
    pub date: String,
}

impl Machine {
    /// Reads the current machine's description.
    pub fn current() -> Machine {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_default();
        let mem_mib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|r| r.trim().trim_end_matches(" kB").parse::<u64>().ok())
            })
            .unwrap_or(0)
            / 1024;
        Machine {
            kernel,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            mem_mib,
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

/// One row of a table: a system and the summary of one metric.
#[derive(Debug, Serialize)]
pub struct Row {
    /// System label, e.g. `crun 1.28`.
    pub system: String,
    /// Metric name, e.g. `total`.
    pub metric: String,
    /// Summary in milliseconds.
    pub summary: Summary,
    /// The subject's (cryo's) median for the same metric over this row's median: below 1.0,
    /// cryo is faster.
    pub ratio: Option<f64>,
}

/// Fills each row's ratio: `subject`'s median for the row's metric over the row's median.
pub fn add_ratios(rows: &mut [Row], subject: &str) {
    let subj: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r.system == subject)
        .map(|r| (r.metric.clone(), r.summary.median))
        .collect();
    for r in rows.iter_mut() {
        r.ratio = subj
            .iter()
            .find(|(m, _)| *m == r.metric)
            .map(|(_, med)| med / r.summary.median);
    }
}

/// The markdown table of `rows`, with the subject's ratio to each.
pub fn markdown(rows: &[Row], subject: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| system | metric | median ms | p10 | p90 | min | n | {subject} ÷ this (median) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let ratio = r
            .ratio
            .map(|x| format!("{x:.2}×"))
            .unwrap_or_else(|| "–".into());
        let m = &r.summary;
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            r.system, r.metric, m.median, m.p10, m.p90, m.min, m.n, ratio
        );
    }
    s
}

/// Writes `name.json` (pretty) and `name.md` into `dir`, creating it.
pub fn write(dir: &Path, name: &str, json: &impl Serialize, md: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let j = dir.join(format!("{name}.json"));
    std::fs::write(&j, serde_json::to_vec_pretty(json)?)
        .with_context(|| format!("writing {}", j.display()))?;
    let m = dir.join(format!("{name}.md"));
    std::fs::write(&m, md).with_context(|| format!("writing {}", m.display()))?;
    Ok(())
}

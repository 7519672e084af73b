//! cryo-bench: whole-command benchmarks of cryo against the references (runc, crun, and
//! later CRIU and containerd's runc shim), interleaved in one run on one machine.
//!
//! Every scenario runs warm-up rounds, then N rounds in which each system runs once, in an
//! order rotated every round, so machine noise is spread over all systems alike. Results go to
//! a results directory as JSON (machine, versions, date, every sample) and a markdown table.
//! The whole-command scenarios need root; the criterion micro-benchmarks (`cargo bench`) don't.

mod lifecycle;
mod report;
mod runtimes;
mod stats;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

use report::{Machine, Row};
use runtimes::Runtime;
use stats::Summary;

#[derive(Parser, Debug)]
#[command(
    name = "cryo-bench",
    version,
    about = "cryo's cold-start benchmark harness"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// create, start, wait and delete of a /bin/true busybox container, per runtime.
    Lifecycle {
        /// Measured rounds (each runs every runtime once).
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Unmeasured rounds first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Runtimes as KIND=PATH (repeatable); default: cryo beside this binary, Debian's runc
        /// and crun, and the newest ones in /var/cache/cryo/refs/bin.
        #[arg(long = "runtime")]
        runtimes: Vec<String>,
        /// Results directory.
        #[arg(long, default_value = "results/lifecycle")]
        out: PathBuf,
        /// Bundle directory to (re)build and use.
        #[arg(long, default_value = "/tmp/cryo-bench/bundle")]
        bundle: PathBuf,
    },
}

/// Prints progress lines on a terminal, nothing otherwise.
struct Progress {
    tty: bool,
    label: String,
    total: usize,
}

impl Progress {
    fn new(label: &str, total: usize) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            label: label.to_string(),
            total,
        }
    }
    fn tick(&self, done: usize) {
        if self.tty {
            let width = 30;
            let filled = width * done / self.total.max(1);
            eprint!(
                "\r{} [{}{}] {done}/{}",
                self.label,
                "#".repeat(filled),
                " ".repeat(width - filled),
                self.total
            );
            if done == self.total {
                eprintln!();
            }
        }
    }
}

#[derive(Serialize)]
struct LifecycleReport<'a> {
    scenario: &'static str,
    machine: Machine,
    runtimes: &'a [Runtime],
    warmup: usize,
    runs: usize,
    samples: Vec<(String, Vec<lifecycle::Sample>)>,
    rows: Vec<Row>,
}

fn repo_root() -> PathBuf {
    // The harness is run from the repository (scripts/demo) or as `cargo run -p cryo-bench`.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn lifecycle(
    runs: usize,
    warmup: usize,
    specs: &[String],
    out: &Path,
    bundle_dir: &Path,
) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lifecycle scenario runs real containers: run it as root");
    }
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let rts = if specs.is_empty() {
        runtimes::discover()?
    } else {
        specs
            .iter()
            .map(|s| runtimes::parse_spec(s))
            .collect::<Result<Vec<_>>>()?
    };
    let bundle = lifecycle::bundle(&repo_root(), bundle_dir)?;
    lifecycle::become_subreaper()?;
    let root = tempfile::Builder::new()
        .prefix("cryo-bench-")
        .tempdir()
        .context("creating a state root")?;
    let roots: Vec<PathBuf> = rts
        .iter()
        .enumerate()
        .map(|(i, _)| root.path().join(format!("rt{i}")))
        .collect();
    let names: Vec<&str> = rts.iter().map(|r| r.name.as_str()).collect();
    eprintln!(
        "cryo-bench lifecycle: {} ({warmup} warm-up + {runs} rounds, interleaved)",
        names.join(", ")
    );

    let mut samples: Vec<Vec<lifecycle::Sample>> = vec![Vec::new(); rts.len()];
    let progress = Progress::new("lifecycle", warmup + runs);
    for round in 0..warmup + runs {
        for k in 0..rts.len() {
            let i = (round + k) % rts.len();
            let id = format!("bench-{}-{round}", std::process::id());
            let s = lifecycle::once(&rts[i], &roots[i], &bundle, &id)
                .with_context(|| format!("round {round}, {}", rts[i].name))?;
            if round >= warmup {
                samples[i].push(s);
            }
        }
        progress.tick(round + 1);
    }

    let mut rows = Vec::new();
    for (rt, ss) in rts.iter().zip(&samples) {
        for (metric, f) in lifecycle::METRICS {
            let v: Vec<f64> = ss.iter().map(f).collect();
            if let Some(summary) = Summary::of(&v) {
                rows.push(Row {
                    system: rt.name.clone(),
                    metric: metric.into(),
                    summary,
                    ratio: None,
                });
            }
        }
    }
    rows.sort_by(|a, b| {
        (a.metric != "total")
            .cmp(&(b.metric != "total"))
            .then(a.metric.cmp(&b.metric))
    });
    let subject = rts
        .iter()
        .find(|r| r.kind == "cryo")
        .map(|r| r.name.clone())
        .unwrap_or_else(|| rts[0].name.clone());
    report::add_ratios(&mut rows, &subject);
    let md = report::markdown(&rows, &subject);
    print!("{md}");
    let rep = LifecycleReport {
        scenario: "lifecycle",
        machine: Machine::current(),
        runtimes: &rts,
        warmup,
        runs,
        samples: rts.iter().map(|r| r.name.clone()).zip(samples).collect(),
        rows,
    };
    report::write(out, "lifecycle", &rep, &md)?;
    eprintln!("cryo-bench: results in {}", out.display());
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Lifecycle {
            runs,
            warmup,
            runtimes,
            out,
            bundle,
        } => lifecycle(runs, warmup, &runtimes, &out, &bundle),
    }
}

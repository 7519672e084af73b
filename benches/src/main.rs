//! cryo-bench: whole-command benchmarks of cryo against the references (runc, crun, and
//! later CRIU and containerd's runc shim), interleaved in one run on one machine.
//!
//! Every scenario runs warm-up rounds, then N rounds in which each system runs once, in an
//! order rotated every round, so machine noise is spread over all systems alike. Results go to
//! a results directory as JSON (machine, versions, date, every sample) and a markdown table.
//! Scenarios: `lifecycle` (create/start/wait/delete of /bin/true), `checkpoint` (checkpoint
//! and restore-until-answer of a python workload, runc + CRIU against cryo), `shim`
//! (containerd's runc shim against cryo's, through one private containerd) and `store` (cryo's
//! snapshot store against the zstd and lz4 CLIs on one memory-like image) and `gpu`
//! (device-buffer snapshots against pinned copies over the same bus, on a GPU or the fake
//! driver).
//! The container scenarios need root; `store` and the criterion micro-benchmarks
//! (`cargo bench`) don't.

mod checkpoint;
mod containerd;
mod gpu;
mod lifecycle;
mod plot;
mod report;
mod runtimes;
mod shim;
mod stats;
mod store;
mod workload;

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
    /// checkpoint and restore (until the restored process answers) of a python workload
    /// container: runc + CRIU, cryo with an image directory, cryo with its snapshot store.
    Checkpoint {
        /// The workload's resident memory in MiB (a multiple of 4), mixed as --mix says.
        #[arg(long = "size-mib", default_value_t = 256)]
        size_mib: u64,
        /// Measured rounds (each runs every system once).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Unmeasured rounds first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// runc binaries to compare (repeatable; the first is the reference); default: the
        /// newest of Debian's and /var/cache/cryo/refs/bin's.
        #[arg(long)]
        runc: Vec<PathBuf>,
        /// Drop the page cache between checkpoint and restore (restore from disk).
        #[arg(long = "drop-caches")]
        drop_caches: bool,
        /// Results directory.
        #[arg(long, default_value = "results/checkpoint")]
        out: PathBuf,
        /// Working directory for the bundle, state, images and stores (on disk, not tmpfs).
        #[arg(long, default_value = "/var/tmp/cryo-bench/checkpoint")]
        work: PathBuf,
        /// `cryo checkpoint --compression` of the store systems: zstdN, lz4 or none.
        #[arg(long = "store-compression", default_value = "zstd3", value_parser = store::codec_arg)]
        store_compression: String,
        /// The workload's memory as R:Z:T shares of random, zero and text runs.
        #[arg(long, default_value = "2:1:1", value_parser = workload::mix_arg)]
        mix: String,
        /// The workload's threads (idle ones beyond the first).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
        threads: u32,
    },
    /// containerd's runc shim (io.containerd.runc.v2) against cryo's (io.containerd.cryo.v2)
    /// through one private containerd: `ctr run --rm`, shim memory, restore of a checkpoint,
    /// and a python model server's start until its first answer, cold and from a snapshot.
    Shim {
        /// Measured rounds (each runs every system once).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Unmeasured rounds first.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// The model server's resident memory in MiB (a multiple of 4).
        #[arg(long = "size-mib", default_value_t = 1024)]
        size_mib: u64,
        /// Detached containers per shim whose shim memory is measured.
        #[arg(long, default_value_t = 3)]
        containers: usize,
        /// Results directory.
        #[arg(long, default_value = "results/shim")]
        out: PathBuf,
        /// Working directory for containerd's root, the image and the snapshot store (on
        /// disk, not tmpfs).
        #[arg(long, default_value = "/var/tmp/cryo-bench/shim")]
        work: PathBuf,
        /// The containerd binary.
        #[arg(long, default_value = "/usr/bin/containerd")]
        containerd: PathBuf,
        /// Its ctr.
        #[arg(long, default_value = "/usr/bin/ctr")]
        ctr: PathBuf,
    },
    /// cryo's snapshot store against the `zstd -1 -T0` and `lz4 -1` CLIs on one raw
    /// memory-like image: write, output size, full read, random page fetch latency and a second
    /// snapshot of unchanged memory. Needs no root.
    Store {
        /// The image's size in MiB (½ random, ¼ zero, ¼ text pages).
        #[arg(long = "size-mib", default_value_t = 1024)]
        size_mib: u64,
        /// Measured rounds (each runs every system once).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Unmeasured rounds first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Directory for the image, the CLIs' outputs and the store (a scratch directory is
        /// made in it and removed); tmpfs, so that the codecs are measured, not the disk.
        #[arg(long, default_value = "/dev/shm/cryo-bench")]
        dir: PathBuf,
        /// Results directory.
        #[arg(long, default_value = "results/store")]
        out: PathBuf,
        /// The store's codec: zstdN (1–22), lz4 or none.
        #[arg(long, default_value = "zstd3", value_parser = store::codec_arg)]
        codec: String,
        /// The store's chunk size in KiB (a multiple of 4, at most 4096).
        #[arg(long = "chunk-kib", default_value_t = 64)]
        chunk_kib: usize,
        /// The batches the store receives the image in, in MiB (8: those of cryo checkpoint's
        /// page server).
        #[arg(long = "batch-mib", default_value_t = 8)]
        batch_mib: usize,
        /// The image: `synthetic` (DESIGN.md's workload, seed 1) or `python` (the memory of a
        /// live python3 whose heap of request records, floats, bytes and text is about
        /// --size-mib).
        #[arg(long, default_value = "synthetic", value_parser = ["synthetic", "python"])]
        image: String,
    },
    /// Device-buffer snapshots (cryo-snapshot's gpu::buffers): device memory saved into a
    /// store and loaded back, against pinned copies over the same bus in the same round. On
    /// the system's GPU, or on a fake driver (--libcuda) with a modelled bus. Needs no root.
    Gpu {
        /// Device memory in MiB, split into --buffers buffers.
        #[arg(long = "size-mib", default_value_t = 4096)]
        size_mib: u64,
        /// How many buffers (as a model's layers).
        #[arg(long, default_value_t = 8)]
        buffers: usize,
        /// Measured rounds.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Unmeasured rounds first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// A CUDA driver file to use instead of the system's, e.g. the fake
        /// (target/release/libfakecuda.so).
        #[arg(long)]
        libcuda: Option<PathBuf>,
        /// With a fake driver: the bus speed its copies model, in GB/s (25: about a PCIe 4.0
        /// x16 pinned copy).
        #[arg(long = "fake-gbps", default_value_t = 25.0)]
        fake_gbps: f64,
        /// Directory for the store (a scratch directory is made in it and removed).
        #[arg(long, default_value = "/dev/shm/cryo-bench")]
        dir: PathBuf,
        /// Results directory.
        #[arg(long, default_value = "results/gpu")]
        out: PathBuf,
        /// Staging slot size in MiB.
        #[arg(long = "slot-mib", default_value_t = 16)]
        slot_mib: usize,
        /// Staging slots.
        #[arg(long, default_value_t = 4)]
        slots: usize,
        /// Copy streams.
        #[arg(long, default_value_t = 2)]
        streams: usize,
        /// The store's codec: zstdN (1–22), lz4 or none.
        #[arg(long, default_value = "zstd3", value_parser = store::codec_arg)]
        codec: String,
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
    let panels = plot::panels(
        rep.rows
            .iter()
            .map(|r| (r.metric.as_str(), "ms", r.system.as_str(), &r.summary)),
        "cryo",
    );
    plot::write(
        out,
        "lifecycle",
        "container lifecycle of /bin/true",
        &panels,
    );
    eprintln!("cryo-bench: results in {}", out.display());
    Ok(())
}

#[derive(Serialize)]
struct CheckpointReport<'a> {
    scenario: &'static str,
    machine: Machine,
    size_mib: u64,
    warmup: usize,
    runs: usize,
    drop_caches: bool,
    /// The workload's R:Z:T mix and threads; the store systems' `--compression`.
    mix: &'a str,
    threads: u32,
    store_compression: &'a str,
    criu: Option<String>,
    reference: &'a str,
    systems: &'a [checkpoint::Outcome],
}

/// Options of the checkpoint scenario.
struct CheckpointOpts<'a> {
    size_mib: u64,
    runs: usize,
    warmup: usize,
    runc: &'a [PathBuf],
    drop_caches: bool,
    out: &'a Path,
    work: &'a Path,
    store_compression: &'a str,
    mix: &'a str,
    threads: u32,
}

fn checkpoint(o: &CheckpointOpts) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the checkpoint scenario runs real containers and CRIU: run it as root");
    }
    if o.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if o.size_mib == 0 || !o.size_mib.is_multiple_of(4) {
        bail!(
            "--size-mib must be a positive multiple of 4, got {}",
            o.size_mib
        );
    }
    let runcs = if o.runc.is_empty() {
        runtimes::newest("runc").into_iter().collect()
    } else {
        o.runc
            .iter()
            .map(|p| Runtime::probe("runc", p))
            .collect::<Result<Vec<_>>>()?
    };
    if runcs.is_empty() {
        eprintln!("cryo-bench: no runc found: measuring cryo alone");
    }
    let cryo = runtimes::cryo()?;
    let mut systems: Vec<checkpoint::System> = runcs
        .iter()
        .map(|r| checkpoint::System::new(r, checkpoint::Method::ImageDir))
        .collect();
    systems.push(checkpoint::System::new(&cryo, checkpoint::Method::ImageDir));
    systems.push(checkpoint::System::new(&cryo, checkpoint::Method::Store));
    systems.push(checkpoint::System::new(
        &cryo,
        checkpoint::Method::StoreLazy,
    ));

    if o.store_compression != "zstd3" {
        for s in systems
            .iter_mut()
            .filter(|s| s.method != checkpoint::Method::ImageDir)
        {
            s.name = format!("{} --compression {}", s.name, o.store_compression);
        }
    }
    let workload = workload::bundle(&repo_root(), o.work, o.size_mib, o.mix, o.threads)?;
    let scratch = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(o.work)
        .with_context(|| format!("creating a scratch directory in {}", o.work.display()))?;
    let roots: Vec<PathBuf> = (0..systems.len())
        .map(|k| scratch.path().join(format!("state{k}")))
        .collect();
    let bench = checkpoint::Bench {
        workload,
        scratch: scratch.path().to_path_buf(),
        drop_caches: o.drop_caches,
        timeout: std::time::Duration::from_secs(120),
        store_compression: o.store_compression.to_string(),
    };
    let names: Vec<&str> = systems.iter().map(|s| s.name.as_str()).collect();
    eprintln!(
        "cryo-bench checkpoint: {} MiB; {} ({} warm-up + {} rounds, interleaved)",
        o.size_mib,
        names.join(", "),
        o.warmup,
        o.runs
    );

    let mut outcomes: Vec<checkpoint::Outcome> = systems
        .into_iter()
        .map(|system| checkpoint::Outcome {
            system,
            failed: None,
            samples: Vec::new(),
            summary: None,
            ratios: None,
        })
        .collect();
    let progress = Progress::new("checkpoint", o.warmup + o.runs);
    let pid = std::process::id();
    for round in 0..o.warmup + o.runs {
        for k in 0..outcomes.len() {
            let i = (round + k) % outcomes.len();
            if outcomes[i].failed.is_some() {
                continue;
            }
            let tag = format!("{pid}-{round}-{i}");
            match bench.once(&outcomes[i].system, &roots[i], &tag) {
                Ok(s) if round >= o.warmup => outcomes[i].samples.push(s),
                Ok(_) => {}
                Err(e) => {
                    let msg = format!("{e:#}");
                    eprintln!(
                        "cryo-bench: {} failed in round {round}, left out from now on: {msg}",
                        outcomes[i].system.name
                    );
                    outcomes[i].failed = Some(msg);
                }
            }
        }
        progress.tick(round + 1);
    }

    let reference = 0;
    checkpoint::finish(&mut outcomes, reference);
    let ref_name = outcomes[reference].system.name.clone();
    let mix = if o.mix == "2:1:1" {
        "½ random, ¼ zero, ¼ text".to_string()
    } else {
        format!("random:zero:text runs {}", o.mix)
    };
    let threads = if o.threads > 1 {
        format!(", {} threads", o.threads)
    } else {
        String::new()
    };
    let md = format!(
        "Workload: {} MiB python ({mix}{threads}), its weights loaded from a file at a cold \
         start{}.\n\n{}",
        o.size_mib,
        if o.drop_caches {
            ", page cache dropped before each restore"
        } else {
            ""
        },
        checkpoint::markdown(&outcomes, &ref_name)
    );
    print!("{md}");
    let rep = CheckpointReport {
        scenario: "checkpoint",
        machine: Machine::current(),
        size_mib: o.size_mib,
        warmup: o.warmup,
        runs: o.runs,
        drop_caches: o.drop_caches,
        mix: o.mix,
        threads: o.threads,
        store_compression: o.store_compression,
        criu: checkpoint::criu_version(),
        reference: &ref_name,
        systems: &outcomes,
    };
    report::write(o.out, "checkpoint", &rep, &md)?;
    plot::write(
        o.out,
        "checkpoint",
        &format!("checkpoint and restore, {} MiB model server", o.size_mib),
        &checkpoint::panels(&outcomes),
    );
    eprintln!("cryo-bench: results in {}", o.out.display());
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|x| x.failed.is_some())
        .map(|x| x.system.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
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
        Scenario::Checkpoint {
            size_mib,
            runs,
            warmup,
            runc,
            drop_caches,
            out,
            work,
            store_compression,
            mix,
            threads,
        } => checkpoint(&CheckpointOpts {
            size_mib,
            runs,
            warmup,
            runc: &runc,
            drop_caches,
            out: &out,
            work: &work,
            store_compression: &store_compression,
            mix: &mix,
            threads,
        }),
        Scenario::Shim {
            runs,
            warmup,
            size_mib,
            containers,
            out,
            work,
            containerd,
            ctr,
        } => shim::run(&shim::Opts {
            runs,
            warmup,
            size_mib,
            containers,
            out,
            work,
            containerd,
            ctr,
        }),
        Scenario::Store {
            size_mib,
            runs,
            warmup,
            dir,
            out,
            codec,
            chunk_kib,
            batch_mib,
            image,
        } => store::run(&store::Opts {
            size_mib,
            runs,
            warmup,
            dir,
            out,
            codec,
            chunk_kib,
            batch_mib,
            python: image == "python",
        }),
        Scenario::Gpu {
            size_mib,
            buffers,
            runs,
            warmup,
            libcuda,
            fake_gbps,
            dir,
            out,
            slot_mib,
            slots,
            streams,
            codec,
        } => gpu::run(&gpu::Opts {
            size_mib,
            buffers,
            runs,
            warmup,
            libcuda,
            fake_gbps,
            dir,
            out,
            slot_mib,
            slots,
            streams,
            codec,
        }),
    }
}

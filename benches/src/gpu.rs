//! The `gpu` scenario: device-buffer snapshots (cryo_snapshot::gpu::buffers) of a set of
//! device buffers holding memory-like data (½ random, ¼ zero, ¼ text pages, as the other
//! scenarios' images), against the bus they cross: in each round, all buffers copied device →
//! host through one pinned staging buffer (the reference: what the pipeline's copies alone
//! could do), saved into a fresh store, copied host → device, and loaded back into the same
//! buffers. The pair order alternates between rounds. Reported per direction: throughput, its
//! share of the pinned copy's in the same round, and how well the pipeline's stages overlapped
//! (the slowest stage's busy time over the wall time).
//!
//! On a GPU it runs on the system's driver. Without one, `--libcuda` names a fake driver
//! (target/release/libfakecuda.so): this binary then runs itself again with that driver first
//! on the library path, as `libcuda.so.1`, and the fake's copies take the time a bus of
//! `--fake-gbps` would. The figures then measure the pipeline (compression, store, overlap)
//! against a modelled bus, and the report says so.
//!
//! What this module does not own: the pipelines (cryo-snapshot), the image generator
//! (cryo_snapshot::workload), the statistics, the report and chart files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cryo_snapshot::gpu::buffers::cudarc::driver::{
    CudaSlice, CudaStream, DevicePtr, DevicePtrMut, PinnedHostSlice,
};
use cryo_snapshot::gpu::buffers::{self, PipelineOptions, StageTimes};
use cryo_snapshot::workload::fill_memory_image;
use cryo_snapshot::{Store, WriterOptions};
use serde::Serialize;

use crate::checkpoint::disk_usage;
use crate::containerd::ms;
use crate::plot::{self, Bar, Panel};
use crate::report::{self, Machine};
use crate::stats::Summary;
use crate::store::parse_codec;
use crate::Progress;

/// Set in the environment of the re-run on a named driver: the driver file to check against.
const WORKER_ENV: &str = "CRYO_BENCH_GPU_LIBCUDA";
/// The seed of buffer i's contents is SEED + i.
const SEED: u64 = 11;
const SNAPSHOT: &str = "bench:gpu";

/// The scenario's options (the CLI's flags).
#[derive(Debug, Serialize)]
pub struct Opts {
    pub size_mib: u64,
    pub buffers: usize,
    pub runs: usize,
    pub warmup: usize,
    pub libcuda: Option<PathBuf>,
    pub fake_gbps: f64,
    pub dir: PathBuf,
    pub out: PathBuf,
    pub slot_mib: usize,
    pub slots: usize,
    pub streams: usize,
    /// As `store::codec_arg` leaves it: `zstdN`, `lz4` or `none`.
    pub codec: String,
}

/// One metric's samples and summary.
#[derive(Debug, Serialize)]
pub struct Metric {
    name: &'static str,
    unit: &'static str,
    samples: Vec<f64>,
    summary: Option<Summary>,
}

const M_DTOH: &str = "device→host, pinned copy (reference)";
const M_SAVE: &str = "save (commit included)";
const M_SAVE_SHARE: &str = "save ÷ pinned copy";
const M_SAVE_OVERLAP: &str = "save stage overlap";
const M_SAVE_COPY: &str = "save: copy stage busy";
const M_SAVE_STORE: &str = "save: store stage busy";
const M_COMMIT: &str = "save: commit";
const M_SIZE: &str = "snapshot size ÷ raw";
const M_HTOD: &str = "host→device, pinned copy (reference)";
const M_LOAD: &str = "load";
const M_LOAD_SHARE: &str = "load ÷ pinned copy";
const M_LOAD_OVERLAP: &str = "load stage overlap";
const M_LOAD_COPY: &str = "load: copy stage busy";
const M_LOAD_STORE: &str = "load: store stage busy";
const METRICS: [(&str, &str); 14] = [
    (M_DTOH, "GB/s"),
    (M_SAVE, "GB/s"),
    (M_SAVE_SHARE, "%"),
    (M_SAVE_OVERLAP, "slowest stage ÷ wall"),
    (M_SAVE_COPY, "ms"),
    (M_SAVE_STORE, "ms"),
    (M_COMMIT, "ms"),
    (M_SIZE, "%"),
    (M_HTOD, "GB/s"),
    (M_LOAD, "GB/s"),
    (M_LOAD_SHARE, "%"),
    (M_LOAD_OVERLAP, "slowest stage ÷ wall"),
    (M_LOAD_COPY, "ms"),
    (M_LOAD_STORE, "ms"),
];

fn check(o: &Opts) -> Result<()> {
    ensure!(o.runs > 0, "--runs must be at least 1");
    ensure!(o.buffers > 0, "--buffers must be at least 1");
    ensure!(
        o.size_mib >= o.buffers as u64 && o.size_mib <= 1 << 20,
        "--size-mib must be from --buffers ({}) to 1048576, got {}",
        o.buffers,
        o.size_mib
    );
    ensure!(
        o.slot_mib > 0 && o.slots > 0 && o.streams > 0,
        "--slot-mib, --slots and --streams must be at least 1"
    );
    ensure!(
        o.fake_gbps > 0.0,
        "--fake-gbps must be positive, got {}",
        o.fake_gbps
    );
    if let Some(lib) = &o.libcuda {
        ensure!(
            lib.is_file(),
            "--libcuda {}: no such file (cargo build --release -p cryo-fakecuda builds \
             target/release/libfakecuda.so)",
            lib.display()
        );
    }
    Ok(())
}

/// The scenario.
pub fn run(o: &Opts) -> Result<()> {
    check(o)?;
    match (&o.libcuda, std::env::var_os(WORKER_ENV)) {
        (Some(lib), None) => rerun_on(o, lib),
        (_, named) => measure(o, named.map(PathBuf::from).as_deref()),
    }
}

/// Runs this command again with `lib` first on the library path as `libcuda.so.1` (and
/// `libcuda.so`), where cudarc finds it.
fn rerun_on(o: &Opts, lib: &Path) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("cryo-bench-libcuda-")
        .tempdir()
        .context("creating a directory for the driver")?;
    let so = dir.path().join("libcuda.so.1");
    std::fs::copy(lib, &so).with_context(|| format!("copying {}", lib.display()))?;
    std::os::unix::fs::symlink("libcuda.so.1", dir.path().join("libcuda.so"))?;
    let mut path = dir.path().as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    let status = Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(WORKER_ENV, &so)
        .env("LD_LIBRARY_PATH", path)
        .env("FAKECUDA_STATE_DIR", dir.path())
        .env("FAKECUDA_COPY_GBPS", o.fake_gbps.to_string())
        .status()
        .context("running cryo-bench gpu on the named driver")?;
    if !status.success() {
        bail!("cryo-bench gpu on {}: {status}", lib.display());
    }
    Ok(())
}

/// Device buffers, the staging buffer of the reference copies, and the samples.
struct Bench<'a> {
    o: &'a Opts,
    stream: Arc<CudaStream>,
    bufs: Vec<CudaSlice<u8>>,
    names: Vec<String>,
    pinned: PinnedHostSlice<u8>,
    pipeline: PipelineOptions,
    store_dir: PathBuf,
    metrics: Vec<Metric>,
}

#[allow(clippy::cast_precision_loss, reason = "byte counts are far below 2^53")]
fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

impl Bench<'_> {
    fn push(&mut self, name: &str, v: f64) {
        if let Some(m) = self.metrics.iter_mut().find(|m| m.name == name) {
            m.samples.push(v);
        }
    }

    fn total(&self) -> u64 {
        self.bufs.iter().map(|b| b.len() as u64).sum()
    }

    /// Every buffer through the pinned staging buffer, piece by piece, one stream: the bus
    /// alone. `to_device` copies the staging buffer's bytes over the buffers, so it runs
    /// after a load has put their contents back (and a load follows it).
    fn pinned_copy(&mut self, to_device: bool) -> Result<Duration> {
        let slot = self.pinned.len();
        let t0 = Instant::now();
        let host = self.pinned.as_mut_slice()?;
        for b in &mut self.bufs {
            let mut at = 0;
            while at < b.len() {
                let n = slot.min(b.len() - at);
                if to_device {
                    self.stream
                        .memcpy_htod(&host[..n], &mut b.slice_mut(at..at + n))?;
                } else {
                    self.stream
                        .memcpy_dtoh(&b.slice(at..at + n), &mut host[..n])?;
                }
                self.stream.synchronize()?;
                at += n;
            }
        }
        Ok(t0.elapsed())
    }

    fn save(&self) -> Result<(buffers::SaveReport, Duration)> {
        if self.store_dir.exists() {
            std::fs::remove_dir_all(&self.store_dir)
                .with_context(|| format!("removing {}", self.store_dir.display()))?;
        }
        let store = Store::open(&self.store_dir)?;
        let list: Vec<(&str, &dyn DevicePtr<u8>)> = (self.names.iter())
            .zip(&self.bufs)
            .map(|(n, b)| (n.as_str(), b as &dyn DevicePtr<u8>))
            .collect();
        let t0 = Instant::now();
        let r = buffers::save(
            &store,
            Some(SNAPSHOT),
            &self.stream,
            &list,
            &self.pipeline,
            &|_| {},
        )?;
        Ok((r, t0.elapsed()))
    }

    fn load(&mut self) -> Result<(buffers::LoadReport, Duration)> {
        let reader = Store::open(&self.store_dir)?.reader(SNAPSHOT)?;
        let mut targets: Vec<(&str, &mut dyn DevicePtrMut<u8>)> = (self.names.iter())
            .zip(self.bufs.iter_mut())
            .map(|(n, b)| (n.as_str(), b as &mut dyn DevicePtrMut<u8>))
            .collect();
        let t0 = Instant::now();
        let r = buffers::load_into(&reader, &self.stream, &mut targets, &self.pipeline, &|_| {})?;
        Ok((r, t0.elapsed()))
    }

    /// Every buffer holds its seed's image again (after the first round's load).
    fn verify(&self) -> Result<()> {
        for (i, b) in self.bufs.iter().enumerate() {
            let got = self.stream.clone_dtoh(b)?;
            let mut want = vec![0u8; b.len()];
            fill_memory_image(&mut want, SEED + i as u64);
            if let Some(at) = got.iter().zip(&want).position(|(x, y)| x != y) {
                bail!(
                    "buffer {} differs after the load at byte {at}",
                    self.names[i]
                );
            }
        }
        Ok(())
    }

    fn stages(&mut self, overlap: &str, copy: &str, store: &str, s: &StageTimes) {
        self.push(overlap, s.overlap());
        self.push(copy, ms(s.copy));
        self.push(store, ms(s.store));
    }

    #[allow(clippy::cast_precision_loss, reason = "byte counts are far below 2^53")]
    fn round(&mut self, round: usize) -> Result<()> {
        let keep = round >= self.o.warmup;
        let total = self.total();
        // Device → host: the reference and the save, in an order that alternates.
        let (mut dtoh, mut saved) = (None, None);
        for step in 0..2 {
            if (step + round).is_multiple_of(2) {
                dtoh = Some(self.pinned_copy(false).context("pinned copy to the host")?);
            } else {
                saved = Some(self.save().context("save")?);
            }
        }
        let (Some(dtoh), Some((saved, save_wall))) = (dtoh, saved) else {
            bail!("a step did not run");
        };
        // Host → device: the reference first (it overwrites the buffers), then the load.
        let htod = self
            .pinned_copy(true)
            .context("pinned copy to the device")?;
        let (loaded, load_wall) = self.load().context("load")?;
        if round == 0 {
            self.verify()?;
        }
        if !keep {
            return Ok(());
        }
        let stored = disk_usage(&self.store_dir.join("packs"))?.1;
        let (d_ref, s_bw) = (gbps(total, dtoh), gbps(total, save_wall));
        self.push(M_DTOH, d_ref);
        self.push(M_SAVE, s_bw);
        self.push(M_SAVE_SHARE, 100.0 * s_bw / d_ref);
        self.stages(M_SAVE_OVERLAP, M_SAVE_COPY, M_SAVE_STORE, &saved.stages);
        self.push(M_COMMIT, ms(saved.commit));
        self.push(M_SIZE, 100.0 * stored as f64 / total as f64);
        let (h_ref, l_bw) = (gbps(total, htod), gbps(total, load_wall));
        self.push(M_HTOD, h_ref);
        self.push(M_LOAD, l_bw);
        self.push(M_LOAD_SHARE, 100.0 * l_bw / h_ref);
        self.stages(M_LOAD_OVERLAP, M_LOAD_COPY, M_LOAD_STORE, &loaded.stages);
        Ok(())
    }
}

fn markdown(metrics: &[Metric], legend: &str) -> String {
    let mut s = String::from(
        "| metric | unit | median | p10 | p90 | min | n |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for m in metrics {
        let Some(x) = &m.summary else { continue };
        let p = if m.unit == "GB/s" || m.unit.starts_with("slowest") {
            2
        } else {
            1
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.p$} | {:.p$} | {:.p$} | {:.p$} | {} |",
            m.name, m.unit, x.median, x.p10, x.p90, x.min, x.n
        );
    }
    let _ = writeln!(s, "\n{legend}");
    s
}

/// The chart: throughputs against the references, and the overlaps.
fn chart(metrics: &[Metric]) -> Vec<Panel> {
    let bars = |names: &[&str]| -> Vec<Bar> {
        (names.iter())
            .filter_map(|n| metrics.iter().find(|m| m.name == *n))
            .filter_map(|m| {
                Some(Bar {
                    label: m.name.to_string(),
                    summary: m.summary.clone()?,
                    highlight: !m.name.contains("reference"),
                })
            })
            .collect()
    };
    vec![
        Panel {
            title: "device memory → store and back".into(),
            unit: "GB/s".into(),
            bars: bars(&[M_DTOH, M_SAVE, M_HTOD, M_LOAD]),
        },
        Panel {
            title: "pipeline overlap (1.0: as fast as its slowest stage)".into(),
            unit: "slowest stage ÷ wall".into(),
            bars: bars(&[M_SAVE_OVERLAP, M_LOAD_OVERLAP]),
        },
    ]
}

#[derive(Serialize)]
struct GpuReport<'a> {
    scenario: &'static str,
    machine: Machine,
    /// The device's name and the driver library.
    device: &'a str,
    driver: &'a str,
    opts: &'a Opts,
    legend: &'a str,
    metrics: &'a [Metric],
}

/// Creates the buffers on the device named by `lib` (or the system's), runs the rounds and
/// writes the reports.
fn measure(o: &Opts, lib: Option<&Path>) -> Result<()> {
    let ctx = buffers::open_device(0, lib)?;
    let device = ctx.name()?;
    let driver = lib.map_or_else(
        || "the system's libcuda".to_string(),
        |l| l.display().to_string(),
    );
    let fake = device.contains("fakecuda");
    let stream = ctx.default_stream();
    let each = usize::try_from((o.size_mib << 20) / o.buffers as u64)? / 4096 * 4096;
    let mut host = vec![0u8; each];
    let mut bufs = Vec::with_capacity(o.buffers);
    for i in 0..o.buffers {
        fill_memory_image(&mut host, SEED + i as u64);
        bufs.push(stream.clone_htod(&host)?);
    }
    drop(host);
    std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("gpu-")
        .tempdir_in(&o.dir)
        .with_context(|| format!("creating a scratch directory in {}", o.dir.display()))?;
    let slot = o.slot_mib << 20;
    // SAFETY: the staging buffer is always written (by a copy) before it is read.
    let pinned = unsafe { ctx.alloc_pinned_with_flags::<u8>(slot, 0) }?;
    let mut b = Bench {
        o,
        stream,
        names: (0..o.buffers).map(|i| format!("layer{i}")).collect(),
        bufs,
        pinned,
        pipeline: PipelineOptions {
            slot_bytes: slot,
            slots: o.slots,
            streams: o.streams,
            writer: WriterOptions {
                codec: parse_codec(&o.codec).map_err(anyhow::Error::msg)?,
                ..WriterOptions::default()
            },
        },
        store_dir: scratch.path().join("store"),
        metrics: METRICS
            .iter()
            .map(|&(name, unit)| Metric {
                name,
                unit,
                samples: Vec::new(),
                summary: None,
            })
            .collect(),
    };
    let (size_mib, n, runs, warmup) = (o.size_mib, o.buffers, o.runs, o.warmup);
    eprintln!(
        "cryo-bench gpu: {size_mib} MiB in {n} buffers on {device} ({driver}); store in {}; \
         {warmup} warm-up + {runs} rounds",
        o.dir.display()
    );
    let progress = Progress::new("gpu", warmup + runs);
    for round in 0..warmup + runs {
        b.round(round).with_context(|| format!("round {round}"))?;
        progress.tick(round + 1);
    }
    let mut metrics = std::mem::take(&mut b.metrics);
    for m in &mut metrics {
        m.summary = Summary::of(&m.samples);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bus = if fake {
        format!(
            "the fake driver (cryo-fakecuda): device memory is host memory and each copy takes \
             as long as a {} GB/s bus would (FAKECUDA_COPY_GBPS), so these figures measure \
             cryo's pipeline against a modelled bus, not a GPU",
            o.fake_gbps
        )
    } else {
        format!("{device} through {driver}")
    };
    let legend = format!(
        "{size_mib} MiB of device memory in {n} buffers of memory-like data (½ random, ¼ zero, \
         ¼ text pages), on {bus}; {cpus} CPUs. Per round: every buffer copied device→host \
         through one pinned {} MiB buffer on one stream (the reference), saved into a fresh \
         store ({}, 64 KiB chunks, in {}), copied host→device the same way, and loaded back \
         into the same buffers (verified in the first round); the save and its reference \
         alternate in order. Pipeline: {} pinned slots of {} MiB, {} copy streams. Overlap is \
         the slower stage's busy time over the wall time (commit excluded): 1.0 means the \
         pipeline runs as fast as its slowest stage. {warmup} warm-up + {runs} measured rounds.",
        o.slot_mib,
        o.codec,
        o.dir.display(),
        o.slots,
        o.slot_mib,
        o.streams,
    );
    let md = markdown(&metrics, &legend);
    let rep = GpuReport {
        scenario: "gpu",
        machine: Machine::current(),
        device: &device,
        driver: &driver,
        opts: o,
        legend: &legend,
        metrics: &metrics,
    };
    report::write(&o.out, "gpu", &rep, &md)?;
    plot::write(
        &o.out,
        "gpu",
        "cryo-bench gpu: device-buffer snapshots",
        &chart(&metrics),
    );
    print!("{md}");
    eprintln!("results: {}", o.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_measured_metric() {
        let mut metrics: Vec<Metric> = METRICS
            .iter()
            .map(|&(name, unit)| Metric {
                name,
                unit,
                samples: vec![],
                summary: None,
            })
            .collect();
        metrics[0].summary = Summary::of(&[24.0, 25.0]);
        metrics[3].summary = Summary::of(&[0.91]);
        let md = markdown(&metrics, "legend");
        assert!(md.contains(&format!("| {M_DTOH} | GB/s | 24.50 |")), "{md}");
        assert!(
            md.contains(&format!(
                "| {M_SAVE_OVERLAP} | slowest stage ÷ wall | 0.91 |"
            )),
            "{md}"
        );
        assert_eq!(
            md.lines().filter(|l| l.starts_with("| ")).count(),
            3,
            "{md}"
        );
        let panels = chart(&metrics);
        assert_eq!(panels[0].bars.len(), 1);
        assert!(!panels[0].bars[0].highlight);
    }
}

//! The `store` scenario: cryo's snapshot store (cryo-snapshot's `Store`, in process) against
//! the `zstd -1 -T0` and `lz4 -1` CLIs on one raw memory-like image, in interleaved rounds: write
//! (compress into a file; write and commit a snapshot), output size, full read (`zstd -d` and
//! `lz4 -d` to /dev/null; the store's parallel read into a buffer), and for the store alone
//! random page fetch latency and what a second snapshot of unchanged memory adds. The harness's
//! port of snapshot/examples/store_vs_cli.rs, whose figures docs/BENCHMARKS.md records.
//!
//! It needs no root: everything happens in a scratch directory under `--dir` (tmpfs by
//! default, so that the figures are the codecs' and not the disk's), removed at the end. What
//! this module does not own: the image generator (cryo_snapshot::workload), the statistics
//! (stats.rs), the report and chart files (report.rs, plot.rs).

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cryo_snapshot::store::reader::DEFAULT_CACHE_CHUNKS;
use cryo_snapshot::workload::{fill_memory_image, zero_pages, PythonHeap, Rng};
use cryo_snapshot::{CodecPolicy, Store, WriterOptions, PAGE_SIZE};
use serde::Serialize;

use crate::checkpoint::disk_usage;
use crate::containerd::{ms, which};
use crate::report::{self, Machine};
use crate::stats::Summary;
use crate::Progress;

/// The image's seed (the example's, so that figures compare with docs/BENCHMARKS.md's).
const SEED: u64 = 1;
/// Random page fetches per round, and the seed that draws their pages.
const FETCHES: usize = 20_000;
const FETCH_SEED: u64 = 42;
/// The memory object the image is stored as, and the two snapshots' names.
const OBJECT: &str = "pid-1";
const FIRST: &str = "bench";
const SECOND: &str = "bench:second";

const M_WRITE: &str = "write";
const M_SIZE: &str = "output size";
const M_READ: &str = "full read";
const M_FETCH_MED: &str = "random page fetch, median";
const M_FETCH_P99: &str = "random page fetch, p99";
const M_SECOND: &str = "second snapshot of unchanged memory";
const M_SECOND_ADDS: &str = "second snapshot adds";
/// The metrics in table and chart order: name, unit, and whether the CLIs have it too.
const METRICS: [(&str, &str, bool); 7] = [
    (M_WRITE, "ms", true),
    (M_SIZE, "MiB", true),
    (M_READ, "ms", true),
    (M_FETCH_MED, "µs", false),
    (M_FETCH_P99, "µs", false),
    (M_SECOND, "ms", false),
    (M_SECOND_ADDS, "% of first", false),
];

/// The systems a round runs, in the order the first round starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Zstd,
    Lz4,
    Store,
}
const SYSTEMS: [System; 3] = [System::Zstd, System::Lz4, System::Store];

/// The scenario's options (the CLI's flags).
#[derive(Debug, Serialize)]
pub struct Opts {
    pub size_mib: u64,
    pub runs: usize,
    pub warmup: usize,
    pub dir: PathBuf,
    pub out: PathBuf,
    /// As `codec_arg` leaves it: `zstdN`, `lz4` or `none`.
    pub codec: String,
    pub chunk_kib: usize,
    pub batch_mib: usize,
    /// The image is a live python3's memory (`workload::PythonHeap`), not the synthetic one.
    pub python: bool,
}

/// `zstdN` (N in 1..=22), `lz4` or `none`.
pub fn parse_codec(s: &str) -> std::result::Result<CodecPolicy, String> {
    s.parse()
}

/// `--codec`'s parser: the codec's name, once `parse_codec` takes it.
pub fn codec_arg(s: &str) -> std::result::Result<String, String> {
    parse_codec(s).map(|_| s.to_string())
}

/// All samples of one metric for one system.
#[derive(Debug, Serialize)]
pub struct Series {
    metric: &'static str,
    unit: &'static str,
    system: System,
    label: String,
    samples: Vec<f64>,
}

/// One row of the table: a series and its summary.
#[derive(Debug, Serialize)]
pub struct StoreRow {
    #[serde(flatten)]
    s: Series,
    summary: Summary,
    /// This row's median over zstd's for the same metric: below 1.0, faster or smaller.
    vs_zstd: Option<f64>,
}

/// What every round shares: the files, the writer's settings, the samples so far.
struct Bench<'a> {
    o: &'a Opts,
    raw: PathBuf,
    store_dir: PathBuf,
    writer: WriterOptions,
    /// The store's full reads land here (allocated once: the CLIs write to /dev/null).
    buf: Vec<u8>,
    series: Vec<Series>,
}

/// Runs a reference CLI to its end; its time.
fn timed(mut cmd: Command) -> Result<Duration> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let t0 = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{cmd:?}: {}: {}", out.status, err.trim());
    }
    Ok(took)
}

/// Sum of the file lengths under the store's chunks and manifests (what its snapshots take).
fn store_bytes(store: &Path) -> Result<u64> {
    Ok(disk_usage(&store.join("packs"))?.1 + disk_usage(&store.join("manifests"))?.1)
}

/// Empty series of every metric and system, in table order.
fn all_series(store_label: &str) -> Vec<Series> {
    let mut all = Vec::new();
    for (metric, unit, clis) in METRICS {
        for system in SYSTEMS.into_iter().filter(|s| clis || *s == System::Store) {
            let label = match (system, metric == M_READ) {
                (System::Zstd, false) => "zstd -1 -T0",
                (System::Zstd, true) => "zstd -d",
                (System::Lz4, false) => "lz4 -1",
                (System::Lz4, true) => "lz4 -d",
                (System::Store, _) => store_label,
            };
            let (label, samples) = (label.to_string(), Vec::new());
            all.push(Series {
                metric,
                unit,
                system,
                label,
                samples,
            });
        }
    }
    all
}

/// The nearest-rank percentile `per_mille`/1000 of sorted latencies in µs (the example's).
fn pick_us(sorted: &[Duration], per_mille: usize) -> f64 {
    let i = sorted.len().saturating_sub(1) * per_mille / 1000;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

impl Bench<'_> {
    fn push(&mut self, metric: &str, sys: System, v: f64) {
        let mut all = self.series.iter_mut();
        if let Some(s) = all.find(|s| s.metric == metric && s.system == sys) {
            s.samples.push(v);
        }
    }

    /// A CLI's command, compressing the image into its file or that to /dev/null; the file.
    fn cli(&self, sys: System, decompress: bool) -> (Command, PathBuf) {
        let zstd = sys == System::Zstd;
        let (mut c, raw) = (Command::new(if zstd { "zstd" } else { "lz4" }), &self.raw);
        let packed = raw.with_extension(if zstd { "zst" } else { "lz4" });
        match (zstd, decompress) {
            (true, false) => c.args(["-1", "-T0", "-q", "-f", "-o"]).args([&packed, raw]),
            (true, true) => c.args(["-d", "-q", "-f", "-o", "/dev/null"]).arg(&packed),
            (false, false) => c.args(["-1", "-q", "-f"]).args([raw, &packed]),
            (false, true) => c.args(["-d", "-q", "-f"]).arg(&packed).arg("/dev/null"),
        };
        (c, packed)
    }

    /// Streams the image file into a snapshot in page-server-like batches, then commits; the
    /// time. As in `cryo checkpoint`'s page server, one thread reads the next batches (into a
    /// few reused buffers) while the writer compresses the current one.
    fn write_snapshot(&self, store: &Store, name: &str) -> Result<Duration> {
        /// Buffers in flight, as many as the page server's (snapshot/src/criu/pageserver.rs).
        const BUFFERS: usize = 4;
        let t0 = Instant::now();
        let mut f = std::fs::File::open(&self.raw)
            .with_context(|| format!("opening {}", self.raw.display()))?;
        let (len, batch) = (self.buf.len(), self.o.batch_mib << 20);
        let mut w = store.writer_with(self.writer)?;
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(BUFFERS);
        let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        for _ in 0..BUFFERS {
            free_tx.send(vec![0u8; batch])?;
        }
        std::thread::scope(|s| -> Result<()> {
            let reader = s.spawn(move || -> Result<()> {
                let mut at = 0;
                while at < len {
                    // The writer hung up: it failed, and says why.
                    let Ok(mut buf) = free_rx.recv() else {
                        return Ok(());
                    };
                    buf.resize(batch.min(len - at), 0);
                    f.read_exact(&mut buf).context("reading the image")?;
                    if full_tx.send((at, buf)).is_err() {
                        return Ok(());
                    }
                    at += batch;
                }
                Ok(())
            });
            let written = full_rx.iter().try_for_each(|(at, buf)| -> Result<()> {
                w.object(OBJECT)?.add_pages(u64::try_from(at)?, &buf)?;
                // The reader may be done and gone: then the buffer is not needed.
                let _ = free_tx.send(buf);
                Ok(())
            });
            // The reader may wait for a free buffer: without a writer, none comes.
            drop(full_rx);
            drop(free_tx);
            let read = reader
                .join()
                .map_err(|_| anyhow::anyhow!("the image reader panicked"))?;
            written.and(read)
        })?;
        w.commit(Some(name))?;
        Ok(t0.elapsed())
    }

    /// Compresses the image (the store: into a fresh store); the time and the output's bytes.
    fn write(&self, sys: System) -> Result<(Duration, u64)> {
        if sys != System::Store {
            let (cmd, packed) = self.cli(sys, false);
            return Ok((timed(cmd)?, disk_usage(&packed)?.1));
        }
        if self.store_dir.exists() {
            std::fs::remove_dir_all(&self.store_dir)
                .with_context(|| format!("removing {}", self.store_dir.display()))?;
        }
        let d = self.write_snapshot(&Store::open(&self.store_dir)?, FIRST)?;
        Ok((d, store_bytes(&self.store_dir)?))
    }

    /// Decompresses the whole image (the store: into `buf`, opening the reader included).
    fn read(&mut self, sys: System) -> Result<Duration> {
        if sys != System::Store {
            return timed(self.cli(sys, true).0);
        }
        let store = Store::open(&self.store_dir)?;
        let t0 = Instant::now();
        store.reader(FIRST)?.read_range(OBJECT, 0, &mut self.buf)?;
        Ok(t0.elapsed())
    }

    /// Page fetches through a fresh reader: their median and p99 in µs.
    fn fetch(&self) -> Result<(f64, f64)> {
        let r = Store::open(&self.store_dir)?.reader(FIRST)?;
        let mut rng = Rng::new(FETCH_SEED);
        let mut page = vec![0u8; usize::try_from(PAGE_SIZE)?];
        let pages = u64::try_from(self.buf.len())? / PAGE_SIZE;
        let mut lat = Vec::with_capacity(FETCHES);
        for _ in 0..FETCHES {
            let at = rng.below(pages) * PAGE_SIZE;
            let t0 = Instant::now();
            r.read_page(OBJECT, at, &mut page)?;
            lat.push(t0.elapsed());
        }
        lat.sort();
        Ok((pick_us(&lat, 500), pick_us(&lat, 990)))
    }

    /// A second snapshot of the unchanged image into the same store: its time, and the bytes
    /// it adds as % of the store's before it.
    #[allow(clippy::cast_precision_loss, reason = "byte counts are far below 2^53")]
    fn second(&self) -> Result<(Duration, f64)> {
        let before = store_bytes(&self.store_dir)?;
        let d = self.write_snapshot(&Store::open(&self.store_dir)?, SECOND)?;
        let added = store_bytes(&self.store_dir)?.saturating_sub(before);
        Ok((d, added as f64 * 100.0 / before.max(1) as f64))
    }

    /// One round: the writes, then the reads, each in the round's order; then the store's own
    /// metrics. The first round's read-back is checked against the image.
    #[allow(clippy::cast_precision_loss, reason = "byte counts are far below 2^53")]
    fn round(&mut self, round: usize) -> Result<()> {
        let keep = round >= self.o.warmup;
        let order: [System; 3] = std::array::from_fn(|k| SYSTEMS[(round + k) % SYSTEMS.len()]);
        for &sys in &order {
            let (d, bytes) = self.write(sys).with_context(|| format!("{sys:?} write"))?;
            if keep {
                self.push(M_WRITE, sys, ms(d));
                self.push(M_SIZE, sys, bytes as f64 / f64::from(1u32 << 20));
            }
        }
        for &sys in &order {
            let d = self.read(sys).with_context(|| format!("{sys:?} read"))?;
            if sys == System::Store && round == 0 && std::fs::read(&self.raw)? != self.buf {
                bail!("the store's read-back differs from the image");
            }
            if keep {
                self.push(M_READ, sys, ms(d));
            }
        }
        let (d, adds) = self.second().context("second snapshot")?;
        let (med, p99) = self.fetch().context("page fetch")?;
        if keep {
            self.push(M_SECOND, System::Store, ms(d));
            self.push(M_SECOND_ADDS, System::Store, adds);
            self.push(M_FETCH_MED, System::Store, med);
            self.push(M_FETCH_P99, System::Store, p99);
        }
        Ok(())
    }
}

/// The rows of the series that have samples, each with its ratio to zstd's median for the
/// same metric.
fn rows(series: Vec<Series>) -> Vec<StoreRow> {
    let mut rows: Vec<StoreRow> = (series.into_iter())
        .filter_map(|s| {
            Some(StoreRow {
                summary: Summary::of(&s.samples)?,
                s,
                vs_zstd: None,
            })
        })
        .collect();
    for i in 0..rows.len() {
        let z = median(&rows, rows[i].s.metric, System::Zstd);
        rows[i].vs_zstd = z.map(|z| rows[i].summary.median / z);
    }
    rows
}

fn median(rows: &[StoreRow], metric: &str, sys: System) -> Option<f64> {
    let r = rows
        .iter()
        .find(|r| r.s.metric == metric && r.s.system == sys);
    r.map(|r| r.summary.median)
}

/// The table, the store's ratios to each CLI, and the legend.
fn markdown(rows: &[StoreRow], legend: &str) -> String {
    let mut s = String::from(
        "| metric | system | median | p10 | p90 | min | n | ÷ zstd (median) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let m = &r.summary;
        let p = if r.s.unit.starts_with('%') { 3 } else { 1 };
        let ratio = match r.vs_zstd {
            Some(_) if r.s.system == System::Zstd => "ref".to_string(),
            Some(x) if r.s.metric == M_SIZE => format!("{x:.3}×"),
            Some(x) => format!("{x:.2}×"),
            None => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} ({}) | {} | {:.p$} | {:.p$} | {:.p$} | {:.p$} | {} | {ratio} |",
            r.s.metric, r.s.unit, r.s.label, m.median, m.p10, m.p90, m.min, m.n
        );
    }
    let mut stores = rows.iter().filter(|r| r.s.system == System::Store);
    let store = stores.next().map_or("cryo store", |r| r.s.label.as_str());
    for (cli, sys) in [("zstd", System::Zstd), ("lz4", System::Lz4)] {
        let ratio = |m| Some(median(rows, m, System::Store)? / median(rows, m, sys)?);
        let (Some(w), Some(z), Some(r)) = (ratio(M_WRITE), ratio(M_SIZE), ratio(M_READ)) else {
            continue;
        };
        let _ = writeln!(
            s,
            "\n{store} ÷ {cli}: write time {w:.2}× (throughput {:.2}×), output size {z:.3}×, \
             full read time {r:.2}× (throughput {:.2}×).",
            1.0 / w,
            1.0 / r
        );
    }
    let _ = writeln!(s, "\n{legend}");
    s
}

/// The version in what `bin -V` prints (`… v1.5.4, by …`), without the `v`.
fn cli_version(bin: &str) -> String {
    let out = Command::new(bin).arg("-V").stdin(Stdio::null()).output();
    out.ok()
        .and_then(|o| version_in(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_else(|| "unknown".into())
}

fn version_in(text: &str) -> Option<String> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix('v'))
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .map(|w| w.trim_end_matches(',').to_string())
}

#[derive(Serialize)]
struct StoreReport<'a> {
    scenario: &'static str,
    machine: Machine,
    /// zstd's and lz4's versions.
    versions: [&'a str; 2],
    opts: &'a Opts,
    /// What was measured, and how (the markdown's last paragraph).
    legend: &'a str,
    rows: &'a [StoreRow],
}

/// Refuses bad flags and a machine without the CLIs; the image's size in bytes.
fn check(o: &Opts) -> Result<usize> {
    ensure!(o.runs > 0, "--runs must be at least 1");
    ensure!(
        (1..=1 << 20).contains(&o.size_mib),
        "--size-mib must be from 1 to 1048576, got {}",
        o.size_mib
    );
    ensure!(o.batch_mib > 0, "--batch-mib must be at least 1");
    ensure!(
        (4..=4096).contains(&o.chunk_kib) && o.chunk_kib.is_multiple_of(4),
        "--chunk-kib must be a multiple of 4 from 4 to 4096, got {}",
        o.chunk_kib
    );
    if let Some(t) = ["zstd", "lz4"].into_iter().find(|t| which(t).is_none()) {
        bail!("{t} is not on PATH: the store scenario runs it (apt-get install zstd lz4)");
    }
    Ok(usize::try_from(o.size_mib << 20)?)
}

/// The scenario.
pub fn run(o: &Opts) -> Result<()> {
    let size = check(o)?;
    let codec = parse_codec(&o.codec).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("store-")
        .tempdir_in(&o.dir)
        .with_context(|| format!("creating a scratch directory in {}", o.dir.display()))?;
    let sp = scratch.path().to_path_buf();
    let raw = sp.join("image.raw");
    let (mut image, what) = if o.python {
        let heap = PythonHeap::start(o.size_mib).context("starting python3 for --image python")?;
        let image = heap.memory().context("reading python3's memory")?;
        let pages = image.len() / 4096;
        let zero = zero_pages(&image);
        let what = format!(
            "the memory of a live python3 (its private writable mappings, {} MiB, {:.0}% zero \
             pages; cryo_snapshot::workload::PYTHON_HEAP with a heap of about {} MiB)",
            image.len() >> 20,
            zero as f64 * 100.0 / pages.max(1) as f64,
            o.size_mib
        );
        (image, what)
    } else {
        let mut image = vec![0u8; size];
        fill_memory_image(&mut image, SEED);
        let what = format!(
            "{} MiB raw (seed {SEED}: ½ random pages, ¼ zero pages, ¼ text)",
            o.size_mib
        );
        (image, what)
    };
    std::fs::write(&raw, &image).with_context(|| format!("writing {}", raw.display()))?;
    // Reused as the store's read-back buffer: zeroed, so a page the read misses can't match.
    image.fill(0);
    let (zstd, lz4) = (cli_version("zstd"), cli_version("lz4"));
    let (size_mib, runs, warmup) = (o.size_mib, o.runs, o.warmup);
    let (chunk_kib, batch_mib) = (o.chunk_kib, o.batch_mib);
    let dir = o.dir.display();
    let store_label = format!("cryo store ({}, {chunk_kib} KiB chunks)", o.codec);
    let mut b = Bench {
        o,
        raw,
        store_dir: sp.join("store"),
        writer: WriterOptions {
            chunk_size: chunk_kib << 10,
            codec,
        },
        buf: image,
        series: all_series(&store_label),
    };
    eprintln!(
        "cryo-bench store: {size_mib} MiB image in {dir}; zstd {zstd}, lz4 {lz4}, {store_label}; \
         {warmup} warm-up + {runs} rounds, interleaved"
    );
    let progress = Progress::new("store", warmup + runs);
    for round in 0..warmup + runs {
        b.round(round).with_context(|| format!("round {round}"))?;
        progress.tick(round + 1);
    }

    let rows = rows(std::mem::take(&mut b.series));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let image_flag = if o.python { " --image python" } else { "" };
    let legend = format!(
        "`cryo-bench store --size-mib {size_mib} --runs {runs} --warmup {warmup} --codec {} \
         --chunk-kib {chunk_kib} --batch-mib {batch_mib} --dir {dir}{image_flag}`. Image: {what} \
         in {dir}; {cpus} CPUs; zstd \
         {zstd}, lz4 {lz4}. Write: the CLIs compress the image file into a file beside it; the \
         store reads it in {batch_mib} MiB batches (a thread reading ahead, as a page server) into a \
         fresh store there and commits (syncfs \
         included). Size: the compressed file; the store's chunks and manifests. Full read: the \
         CLIs decompress to /dev/null; the store opens a reader and reads the whole image into a \
         buffer, in parallel. Page fetch: {FETCHES} pages drawn uniformly (seed {FETCH_SEED}) \
         through a fresh reader ({DEFAULT_CACHE_CHUNKS} cached chunks), each round's median and \
         p99. Second snapshot: the unchanged image again into the same store; what it adds, as \
         % of the store's bytes before it.",
        o.codec
    );
    let md = markdown(&rows, &legend);
    print!("{md}");
    let rep = StoreReport {
        scenario: "store",
        machine: Machine::current(),
        versions: [&zstd, &lz4],
        opts: o,
        legend: &legend,
        rows: &rows,
    };
    report::write(&o.out, "store", &rep, &md)?;
    let panels = crate::plot::panels(
        (rows.iter()).map(|r| (r.s.metric, r.s.unit, r.s.label.as_str(), &r.summary)),
        "cryo",
    );
    let title = if o.python {
        "snapshot store and the zstd and lz4 CLIs, a python3 process's memory".to_string()
    } else {
        format!("snapshot store and the zstd and lz4 CLIs, {size_mib} MiB image")
    };
    crate::plot::write(&o.out, "store", &title, &panels);
    eprintln!("cryo-bench: results in {}", o.out.display());
    drop(b);
    scratch
        .close()
        .with_context(|| format!("removing {}", sp.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_and_versions_parse() {
        assert_eq!(parse_codec("zstd3"), Ok(CodecPolicy::Zstd(3)));
        assert_eq!(parse_codec("lz4"), Ok(CodecPolicy::Lz4));
        assert_eq!(codec_arg("none").as_deref(), Ok("none"));
        for bad in ["zstd", "zstd0", "zstd23", "gzip", ""] {
            assert!(parse_codec(bad).is_err(), "{bad}");
        }
        let z = "*** Zstandard CLI (64-bit) v1.5.4, by Yann Collet ***";
        assert_eq!(version_in(z).as_deref(), Some("1.5.4"));
        assert_eq!(version_in("no version here"), None);
    }

    #[test]
    fn rows_are_ordered_and_compared_with_zstd() {
        use System::{Lz4, Store, Zstd};
        let mut s = all_series("store");
        for (metric, system, v) in [
            (M_FETCH_MED, Store, &[40.0][..]),
            (M_READ, Store, &[270.0, 280.0]),
            (M_WRITE, Store, &[750.0]),
            (M_WRITE, Lz4, &[1100.0]),
            (M_WRITE, Zstd, &[1000.0]),
            (M_READ, Zstd, &[460.0, 440.0]),
            (M_READ, Lz4, &[600.0]),
            (M_SIZE, Zstd, &[300.0]),
            (M_SIZE, Lz4, &[330.0]),
            (M_SIZE, Store, &[297.0]),
        ] {
            let x = s
                .iter_mut()
                .find(|x| x.metric == metric && x.system == system);
            x.unwrap().samples = v.to_vec();
        }
        let r = rows(s);
        let got: Vec<(&str, System)> = r.iter().map(|r| (r.s.metric, r.s.system)).collect();
        let want = [M_WRITE, M_SIZE, M_READ]
            .into_iter()
            .flat_map(|m| SYSTEMS.map(|s| (m, s)));
        assert_eq!(got, want.chain([(M_FETCH_MED, Store)]).collect::<Vec<_>>());
        assert_eq!(
            (r[0].vs_zstd, r[2].vs_zstd, r[9].vs_zstd),
            (Some(1.0), Some(0.75), None)
        );
        let md = markdown(&r, "legend");
        for want in [
            "| write (ms) | zstd -1 -T0 | 1000.0 | 1000.0 | 1000.0 | 1000.0 | 1 | ref |",
            "| write (ms) | store | 750.0 | 750.0 | 750.0 | 750.0 | 1 | 0.75× |",
            "| output size (MiB) | store | 297.0 | 297.0 | 297.0 | 297.0 | 1 | 0.990× |",
            "| full read (ms) | lz4 -d | 600.0 |",
            "| random page fetch, median (µs) | store | 40.0 | 40.0 | 40.0 | 40.0 | 1 | – |",
            "store ÷ zstd: write time 0.75× (throughput 1.33×), output size 0.990×, full read \
             time 0.61× (throughput 1.64×).",
            "store ÷ lz4: write time 0.68×",
            "\nlegend\n",
        ] {
            assert!(md.contains(want), "{want}\n{md}");
        }
    }

    #[test]
    fn a_small_run_writes_its_reports() {
        if which("zstd").is_none() || which("lz4").is_none() {
            println!("skipped: zstd or lz4 is not on PATH");
            return;
        }
        for python in [false, true] {
            if python && which("python3").is_none() {
                println!("skipped --image python: python3 is not on PATH");
                continue;
            }
            let d = tempfile::tempdir().unwrap();
            let o = Opts {
                size_mib: 2,
                runs: 2,
                warmup: 1,
                dir: d.path().join("work"),
                out: d.path().join("out"),
                codec: "zstd3".into(),
                chunk_kib: 64,
                batch_mib: 1,
                python,
            };
            run(&o).unwrap();
            let json = std::fs::read(o.out.join("store.json")).unwrap();
            let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
            let rows = json["rows"].as_array().unwrap();
            assert_eq!(rows.len(), 13, "{json:#}");
            assert!(rows.iter().all(|r| r["summary"]["n"] == 2), "{json:#}");
            let md = std::fs::read_to_string(o.out.join("store.md")).unwrap();
            assert!(md.contains("÷ lz4: write time"), "{md}");
            assert_eq!(md.contains("a live python3"), python, "{md}");
            // The scratch directory is gone; the directory it was made in stays.
            assert_eq!(std::fs::read_dir(&o.dir).unwrap().count(), 0);
        }
    }
}

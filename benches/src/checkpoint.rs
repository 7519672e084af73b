//! The `checkpoint` scenario: checkpoint a running workload container and restore it until
//! the restored process answers, through runc + CRIU (image directory), cryo with an image
//! directory, and cryo with its snapshot store, interleaved in one run.
//!
//! One sample is one system's whole round: `run -d` the model server, wait for its answer,
//! `checkpoint` (timed), measure the images, `restore -d` (timed until the restored server
//! answers with the same memory checksum), then delete the container and the images. The
//! commands that start a container (`run -d`, `restore -d`) get /dev/null as stdio (a
//! container must never inherit a pipe, nor a host file CRIU cannot see from inside it);
//! every command logs to a `--log` file, and the others' stderr goes to a file; both are
//! quoted on failure. Image directories and stores live on disk, never on a tmpfs.

use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::runtimes::{Runtime, REFS_BIN};
use crate::stats::Summary;
use crate::workload::Workload;

/// How a system stores its checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// `--image-path DIR`: CRIU's images in a directory.
    ImageDir,
    /// `--store S --snapshot NAME`: cryo's snapshot store, eager restore.
    Store,
    /// The store, restored with `--lazy-pages` (cryo's userfaultfd server).
    StoreLazy,
}

/// One system under test: a runtime binary and a way of checkpointing.
#[derive(Clone, Debug, Serialize)]
pub struct System {
    /// Label in tables.
    pub name: String,
    /// The runtime binary.
    pub runtime: Runtime,
    /// Where the checkpoint goes.
    pub method: Method,
}

impl System {
    /// `runtime` checkpointing with `method`, labelled as such.
    pub fn new(runtime: &Runtime, method: Method) -> System {
        let name = match (runtime.kind.as_str(), method) {
            ("cryo", Method::ImageDir) => format!("{} (image dir)", runtime.name),
            ("cryo", Method::Store) => format!("{} (store)", runtime.name),
            ("cryo", Method::StoreLazy) => format!("{} (store, lazy)", runtime.name),
            (_, Method::ImageDir) => format!("{} + CRIU", runtime.name),
            (_, Method::Store | Method::StoreLazy) => format!("{} (store)", runtime.name),
        };
        System {
            name,
            runtime: runtime.clone(),
            method,
        }
    }
}

/// What one restore measured: the command's time, the time to the first answer, the memory
/// checksum, and for a lazy restore the server's fill time (ms) and peak RSS (bytes).
type RestoreTimes = (Duration, Duration, String, Option<(f64, u64)>);

/// One round of one system. Times in milliseconds, sizes in bytes.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Sample {
    /// `run -d` until the fresh server first answered (building its memory included).
    pub ready_ms: f64,
    /// `checkpoint` until it returned.
    pub checkpoint_ms: f64,
    /// syncfs of the images' filesystem right after the checkpoint: what making them durable
    /// still cost (the store fsyncs its own writes; CRIU's image directory does not).
    pub sync_ms: f64,
    /// `restore -d` until the command returned.
    pub restore_cmd_ms: f64,
    /// `restore -d` started until the restored server answered.
    pub restore_ms: f64,
    /// Lazy restores: `restore -d` started until the lazy-pages server had every page in
    /// (the command's time plus the server's `fill_ms`); 0 otherwise.
    pub all_in_ms: f64,
    /// Lazy restores: the lazy-pages server's peak resident memory, bytes; 0 otherwise.
    pub server_rss_bytes: u64,
    /// Disk usage (allocated blocks, like du) of the image directory or the store's chunks.
    pub size_bytes: u64,
    /// Sum of the file lengths there.
    pub apparent_bytes: u64,
}

/// What every round shares.
pub struct Bench {
    /// The workload's bundle and socket.
    pub workload: Workload,
    /// Where images, stores and logs of a round go (on disk, not tmpfs).
    pub scratch: PathBuf,
    /// Drop the page cache between checkpoint and restore (cold restore).
    pub drop_caches: bool,
    /// Longest wait for a server's answer.
    pub timeout: Duration,
    /// `checkpoint --compression` of the store systems (zstdN, lz4 or none).
    pub store_compression: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// PATH for the runtimes: the references' directory first, so runc finds the CRIU that
/// works on this kernel (Debian bookworm's criu 3.17 does not).
fn path_env() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{REFS_BIN}:{path}")
}

/// `criu --version` of the CRIU the runtimes find first on their PATH.
pub fn criu_version() -> Option<String> {
    let out = Command::new("criu")
        .env("PATH", path_env())
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
}

/// The interesting end of a runtime's log and stderr files: their error lines (CRIU's, quoted
/// by runc), else their last lines.
fn log_excerpt(files: &[&Path]) -> String {
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("rror"))
        .collect();
    let pick = if errors.is_empty() { &lines } else { &errors };
    pick[pick.len().saturating_sub(8)..].join("\n")
}

impl Bench {
    fn command(&self, sys: &System, root: &Path, log: &Path) -> Command {
        let mut c = Command::new(&sys.runtime.path);
        c.env("PATH", path_env())
            .arg("--root")
            .arg(root)
            .arg("--log")
            .arg(log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Runs a runtime command to its end; its time.
    fn run(&self, sys: &System, root: &Path, args: &[&str]) -> Result<Duration> {
        let log = self.scratch.join(format!("{}.log", args[0]));
        let err = self.scratch.join(format!("{}.stderr", args[0]));
        let _ = std::fs::remove_file(&log);
        let mut cmd = self.command(sys, root, &log);
        // `run -d` hands its stdio to the container: /dev/null there, a file otherwise.
        if args[0] != "run" {
            let f = File::create(&err).with_context(|| format!("creating {}", err.display()))?;
            cmd.stderr(f);
        }
        let t0 = Instant::now();
        let st = cmd
            .args(args)
            .status()
            .with_context(|| format!("running {}", sys.runtime.path.display()))?;
        let took = t0.elapsed();
        if !st.success() {
            bail!(
                "{} {}: {st}: {}",
                sys.runtime.name,
                args.join(" "),
                log_excerpt(&[&log, &err])
            );
        }
        Ok(took)
    }

    /// One round of `sys` under state root `root`; `tag` makes its names unique.
    pub fn once(&self, sys: &System, root: &Path, tag: &str) -> Result<Sample> {
        let id = format!("ck-{tag}");
        let rid = format!("ck-{tag}-r");
        let images = self.scratch.join(format!("images-{tag}"));
        let store = self.scratch.join(format!("store-{tag}"));
        let snapshot = format!("bench:{tag}");
        let _cleanup = Cleanup {
            bench: self,
            sys,
            root,
            ids: [id.clone(), rid.clone()],
            paths: [images.clone(), store.clone()],
        };
        let w = &self.workload;
        let bundle = w.bundle.to_str().context("bundle path is not UTF-8")?;
        let images_arg = images.to_str().context("scratch path is not UTF-8")?;
        let store_arg = store.to_str().context("scratch path is not UTF-8")?;

        // A server left over from an earlier round must not answer for this one.
        let _ = std::fs::remove_file(&w.socket);
        w.clear_error();
        let t0 = Instant::now();
        self.run(sys, root, &["run", "-d", "--bundle", bundle, &id])?;
        let (_, ready) = w
            .wait_answer(self.timeout, Duration::from_millis(10), || None)
            .with_context(|| format!("{}: the fresh container", sys.name))?;
        let before = w
            .ask(self.timeout)
            .with_context(|| format!("{}: the fresh container's checksum", sys.name))?;

        let ckpt: Vec<&str> = match sys.method {
            Method::ImageDir => vec!["checkpoint", "--image-path", images_arg, &id],
            Method::Store | Method::StoreLazy => vec![
                "checkpoint",
                "--compression",
                &self.store_compression,
                "--store",
                store_arg,
                "--snapshot",
                &snapshot,
                &id,
            ],
        };
        let checkpoint = self.run(sys, root, &ckpt)?;
        if w.answers() {
            bail!("{}: the checkpointed container still answers", sys.name);
        }
        let measured = match sys.method {
            Method::ImageDir => images.clone(),
            Method::Store | Method::StoreLazy => store.join("packs"),
        };
        let (size_bytes, apparent_bytes) = disk_usage(&measured)?;
        let sync = syncfs(&measured)?;
        if self.drop_caches {
            drop_caches()?;
        }

        let rst: Vec<&str> = match sys.method {
            Method::ImageDir => vec!["restore", "-d", "--image-path", images_arg],
            Method::Store => vec![
                "restore",
                "-d",
                "--store",
                store_arg,
                "--snapshot",
                &snapshot,
            ],
            Method::StoreLazy => vec![
                "restore",
                "-d",
                "--lazy-pages",
                "--store",
                store_arg,
                "--snapshot",
                &snapshot,
            ],
        };
        let (restore_cmd, restore, after, lazy) = self.restore(sys, root, &rst, bundle, &rid)?;
        if after != before {
            bail!(
                "{}: the restored server's memory differs: {after:?}, was {before:?}",
                sys.name
            );
        }
        Ok(Sample {
            ready_ms: ms(ready - t0),
            checkpoint_ms: ms(checkpoint),
            sync_ms: ms(sync),
            restore_cmd_ms: ms(restore_cmd),
            restore_ms: ms(restore),
            all_in_ms: lazy.map_or(0.0, |(fill, _)| ms(restore_cmd) + fill),
            server_rss_bytes: lazy.map_or(0, |(_, rss)| rss),
            size_bytes,
            apparent_bytes,
        })
    }

    /// Starts the restore and asks the server until it answers (the restored process may
    /// answer before the runtime's command has returned); the command's time, the time to
    /// the answer, and the answer.
    fn restore(
        &self,
        sys: &System,
        root: &Path,
        args: &[&str],
        bundle: &str,
        rid: &str,
    ) -> Result<RestoreTimes> {
        let log = self.scratch.join("restore.log");
        let _ = std::fs::remove_file(&log);
        let t0 = Instant::now();
        let mut child = self
            .command(sys, root, &log)
            .args(args)
            .args(["--bundle", bundle, rid])
            .spawn()
            .with_context(|| format!("running {}", sys.runtime.path.display()))?;
        let (tx, rx) = mpsc::channel::<(Instant, std::io::Result<ExitStatus>)>();
        let waiter = std::thread::spawn(move || {
            let st = child.wait();
            let _ = tx.send((Instant::now(), st));
        });
        let failure = |st: &std::io::Result<ExitStatus>| match st {
            Ok(s) if s.success() => None,
            Ok(s) => Some(anyhow!(
                "{} {} {rid}: {s}: {}",
                sys.runtime.name,
                args.join(" "),
                log_excerpt(&[&log])
            )),
            Err(e) => Some(anyhow!("waiting for {}: {e}", sys.runtime.name)),
        };
        let mut exited = None;
        let answered = self
            .workload
            .wait_answer(self.timeout, Duration::from_millis(1), || {
                if exited.is_none() {
                    exited = rx.try_recv().ok();
                }
                exited.as_ref().and_then(|(_, st)| failure(st))
            });
        let (done, st) = match exited {
            Some(x) => x,
            None => rx.recv_timeout(self.timeout).map_err(|_| {
                anyhow!(
                    "{}: restore still running after {:?}",
                    sys.name,
                    self.timeout
                )
            })?,
        };
        let _ = waiter.join();
        if let Some(e) = failure(&st) {
            return Err(e);
        }
        let (_, at) = answered.with_context(|| format!("{}: the restored container", sys.name))?;
        // A lazy restore: wait for its server's report (every page in) before the checksum,
        // which would otherwise pull every page in itself.
        let report = root.join(rid).join("lazy-pages.json");
        // (An eager restore from the store uses the server too, but has every page in by the
        // time its command returns.)
        let lazy = if sys.method == Method::StoreLazy {
            let deadline = Instant::now() + self.timeout;
            while !report.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let v: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&report)
                    .with_context(|| format!("{}: {}", sys.name, report.display()))?,
            )?;
            Some((
                v["fill_ms"].as_f64().unwrap_or(0.0),
                v["peak_rss_kib"].as_u64().unwrap_or(0) * 1024,
            ))
        } else {
            None
        };
        // Timed until the first answer; the checksum (which touches all memory) comes after.
        let answer = self
            .workload
            .ask(self.timeout)
            .with_context(|| format!("{}: the restored container's checksum", sys.name))?;
        Ok((done - t0, at - t0, answer, lazy))
    }
}

/// Deletes a round's containers and images however the round ended.
struct Cleanup<'a> {
    bench: &'a Bench,
    sys: &'a System,
    root: &'a Path,
    ids: [String; 2],
    paths: [PathBuf; 2],
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            // Missing containers are fine: the checkpoint already removed the original.
            let _ = self.bench.run(self.sys, self.root, &["delete", "-f", id]);
        }
        for p in &self.paths {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// (allocated bytes, file bytes) under `p`, like `du` and `du --apparent-size -b` over files.
pub fn disk_usage(p: &Path) -> Result<(u64, u64)> {
    let md = std::fs::symlink_metadata(p).with_context(|| format!("stat {}", p.display()))?;
    let mut blocks = md.blocks() * 512;
    let mut len = if md.is_file() { md.len() } else { 0 };
    if md.is_dir() {
        for e in std::fs::read_dir(p).with_context(|| format!("listing {}", p.display()))? {
            let (b, l) = disk_usage(&e?.path())?;
            blocks += b;
            len += l;
        }
    }
    Ok((blocks, len))
}

fn syncfs(p: &Path) -> Result<Duration> {
    let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let t0 = Instant::now();
    // SAFETY: syncfs takes a valid open fd and touches no memory of ours.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        bail!(
            "syncfs {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(t0.elapsed())
}

fn drop_caches() -> Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").context("writing /proc/sys/vm/drop_caches")
}

/// Summaries of one system's samples (milliseconds, or bytes for the sizes).
#[derive(Clone, Debug, Serialize)]
pub struct Summaries {
    /// `checkpoint` until it returned.
    pub checkpoint: Summary,
    /// `checkpoint` plus the syncfs after it.
    pub checkpoint_sync: Summary,
    /// `restore -d` started until the restored server answered.
    pub restore: Summary,
    /// `restore -d` until the command returned.
    pub restore_cmd: Summary,
    /// `run -d` until the fresh server answered.
    pub ready: Summary,
    /// Disk usage of the checkpoint.
    pub size_bytes: Summary,
    /// File bytes of the checkpoint.
    pub apparent_bytes: Summary,
    /// Lazy restores: until every page was in (0 otherwise).
    pub all_in: Summary,
    /// Lazy restores: the server's peak resident memory, bytes (0 otherwise).
    pub server_rss: Summary,
}

/// This system's medians over the reference's (runc + CRIU): below 1.0, this one is faster
/// or smaller.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Ratios {
    /// Checkpoint time.
    pub checkpoint: f64,
    /// Restore until the answer.
    pub restore: f64,
    /// Disk usage.
    pub size: f64,
}

/// Everything one system produced in a run.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// The system.
    pub system: System,
    /// The first error, after which the system was left out of later rounds.
    pub failed: Option<String>,
    /// Measured rounds that completed.
    pub samples: Vec<Sample>,
    /// Over `samples`; absent without any.
    pub summary: Option<Summaries>,
    /// Against the reference; absent for a system without samples or without a reference.
    pub ratios: Option<Ratios>,
}

#[allow(
    clippy::cast_precision_loss,
    reason = "sizes below 2^53 bytes are exact in f64"
)]
fn summarize(ss: &[Sample]) -> Option<Summaries> {
    let of = |f: fn(&Sample) -> f64| Summary::of(&ss.iter().map(f).collect::<Vec<_>>());
    Some(Summaries {
        checkpoint: of(|s| s.checkpoint_ms)?,
        checkpoint_sync: of(|s| s.checkpoint_ms + s.sync_ms)?,
        restore: of(|s| s.restore_ms)?,
        restore_cmd: of(|s| s.restore_cmd_ms)?,
        ready: of(|s| s.ready_ms)?,
        all_in: of(|s| s.all_in_ms)?,
        server_rss: of(|s| s.server_rss_bytes as f64)?,
        size_bytes: of(|s| s.size_bytes as f64)?,
        apparent_bytes: of(|s| s.apparent_bytes as f64)?,
    })
}

/// Summaries of every outcome, and ratios against the outcome at `reference`.
pub fn finish(outcomes: &mut [Outcome], reference: usize) {
    for o in outcomes.iter_mut() {
        o.summary = summarize(&o.samples);
    }
    let Some(r) = outcomes.get(reference).and_then(|o| o.summary.clone()) else {
        return;
    };
    for o in outcomes.iter_mut() {
        o.ratios = o.summary.as_ref().map(|s| Ratios {
            checkpoint: s.checkpoint.median / r.checkpoint.median,
            restore: s.restore.median / r.restore.median,
            size: s.size_bytes.median / r.size_bytes.median,
        });
    }
}

fn spread(s: &Summary) -> String {
    format!("{:.0} ({:.0}–{:.0})", s.median, s.p10, s.p90)
}

fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / f64::from(1u32 << 20))
}

/// Chart panels: cold start, checkpoint, restore to the first answer, size.
pub fn panels(outcomes: &[Outcome]) -> Vec<crate::plot::Panel> {
    type Pick = fn(&Summaries) -> Summary;
    let metrics: [(&str, &str, Pick); 5] = [
        ("cold start → first answer", "ms", |s| s.ready.clone()),
        ("checkpoint", "ms", |s| s.checkpoint.clone()),
        ("checkpoint + syncfs", "ms", |s| s.checkpoint_sync.clone()),
        ("restore → first answer", "ms", |s| s.restore.clone()),
        ("size on disk", "MiB", |s| {
            let mib = |b: f64| b / (1024.0 * 1024.0);
            let b = &s.size_bytes;
            Summary {
                n: b.n,
                median: mib(b.median),
                p10: mib(b.p10),
                p90: mib(b.p90),
                min: mib(b.min),
                max: mib(b.max),
            }
        }),
    ];
    metrics
        .iter()
        .map(|(title, unit, pick)| crate::plot::Panel {
            title: (*title).to_string(),
            unit: (*unit).to_string(),
            bars: outcomes
                .iter()
                .filter_map(|o| {
                    Some(crate::plot::Bar {
                        label: o.system.name.clone(),
                        summary: pick(o.summary.as_ref()?),
                        highlight: o.system.name.starts_with("cryo"),
                    })
                })
                .collect(),
        })
        .collect()
}

/// The markdown table: one row per system, ratios against `reference_name`.
pub fn markdown(outcomes: &[Outcome], reference_name: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| system | cold start → answer ms | checkpoint ms | checkpoint + syncfs ms | \
         restore → answer ms | image MiB (du) | image MiB (bytes) | checkpoint ÷ ref | \
         restore ÷ ref | size ÷ ref |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let name = &o.system.name;
        let Some(m) = &o.summary else {
            let why = o.failed.as_deref().unwrap_or("no samples");
            let why: String = why
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            let why = why.replace('|', "\\|");
            let _ = writeln!(
                s,
                "| {name} | failed: {why} | – | – | – | – | – | – | – | – |"
            );
            continue;
        };
        let x = |v: Option<f64>| v.map_or_else(|| "–".into(), |v| format!("{v:.2}×"));
        let r = o.ratios;
        let _ = writeln!(
            s,
            "| {name}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            if o.failed.is_some() {
                " (failed later)"
            } else {
                ""
            },
            spread(&m.ready),
            spread(&m.checkpoint),
            spread(&m.checkpoint_sync),
            spread(&m.restore),
            mib(m.size_bytes.median),
            mib(m.apparent_bytes.median),
            x(r.map(|r| r.checkpoint)),
            x(r.map(|r| r.restore)),
            x(r.map(|r| r.size)),
        );
    }
    for o in outcomes {
        if let Some(m) = o.summary.as_ref().filter(|m| m.all_in.median > 0.0) {
            let _ = writeln!(
                s,
                "\n{}: every page in {} ms after the restore started; lazy-pages server \
                 peak RSS {} MiB.",
                o.system.name,
                spread(&m.all_in),
                mib(m.server_rss.median),
            );
        }
    }
    let _ = writeln!(
        s,
        "\nMedians (p10–p90) over {} rounds; ref = {reference_name}{}.",
        outcomes.iter().map(|o| o.samples.len()).max().unwrap_or(0),
        if outcomes
            .iter()
            .any(|o| o.system.name == reference_name && o.summary.is_none())
        {
            " (failed: no ratios)"
        } else {
            ""
        }
    );
    s
}

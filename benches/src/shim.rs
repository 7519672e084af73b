//! The `shim` scenario: containerd's runc shim (`io.containerd.runc.v2`: Debian's
//! containerd-shim-runc-v2 driving Debian's runc) against cryo's (`io.containerd.cryo.v2`),
//! both through one private containerd (Debian's 1.6) that the scenario starts itself, with its
//! own root, state and sockets under a scratch directory. Rounds are interleaved as in the other
//! scenarios; each metric has its own warm-up and rounds:
//!
//! - `ctr run --rm … echo hi`, from spawning ctr to its exit;
//! - the serving shim's resident memory (VmRSS, and Pss) per detached `sleep` container;
//! - `ctr container restore --live` of a busybox counter until ctr returns, checkpointed once
//!   per runtime (containerd 1.6 refuses a second checkpoint of the same container id);
//! - examples/model-server.py from spawning `ctr run -d` to its first answer: cold through both
//!   shims, and through cryo's from a snapshot of its store (the `io.cryo.snapshot` annotation;
//!   lazy, then eager).
//!
//! Every speed figure includes containerd's and ctr's share on both sides of the ratio. What
//! this module does not own: the statistics (stats.rs), the model server's protocol
//! (workload.rs). A guard deletes the tasks and containers, stops containerd, unmounts what is
//! left under the scratch directory and removes the namespace's cgroups however the run ends,
//! SIGINT and SIGTERM included (they stop the run between two steps).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::checkpoint::disk_usage;
use crate::containerd::*;
use crate::report::{self, Machine};
use crate::runtimes::{self, REFS_BIN};
use crate::stats::Summary;
use crate::workload::Workload;
use crate::Progress;

const RUNC: &str = "io.containerd.runc.v2";
const CRYO: &str = "io.containerd.cryo.v2";
const RUNC_LABEL: &str = "runc shim";
const CRYO_LABEL: &str = "cryo shim";
/// The two shims, in the order a round starts from.
const SHIMS: [(&str, &str); 2] = [(RUNC, RUNC_LABEL), (CRYO, CRYO_LABEL)];
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done";
/// Debian's binaries the runc shim side uses (containerd looks the shim up on its PATH, the
/// shim looks up runc on its own).
const RUNC_SHIM_BIN: &str = "/usr/bin/containerd-shim-runc-v2";
const RUNC_BIN: &str = "/usr/sbin/runc";
const PYTHON: &str = "/usr/bin/python3";
/// Failed rounds after which a metric is given up.
const MAX_FAILED_ROUNDS: usize = 3;

const RUNC_COLD: &str = "runc shim, cold";
const CRYO_COLD: &str = "cryo shim, cold";
const CRYO_LAZY: &str = "cryo shim, snapshot (lazy)";
const CRYO_EAGER: &str = "cryo shim, snapshot (eager)";

const M_ECHO: &str = "`ctr run --rm` echo hi";
const M_RSS: &str = "shim VmRSS per container";
const M_PSS: &str = "shim Pss per container";
const M_RESTORE: &str = "`ctr c restore --live` counter";
const M_MODEL: &str = "model server start → first answer";

/// The scenario's options (the CLI's flags).
pub struct Opts {
    pub runs: usize,
    pub warmup: usize,
    pub size_mib: u64,
    pub containers: usize,
    pub out: PathBuf,
    pub work: PathBuf,
    pub containerd: PathBuf,
    pub ctr: PathBuf,
}

/// All samples of one metric for one system.
#[derive(Debug, Serialize)]
pub struct Series {
    metric: &'static str,
    unit: &'static str,
    system: String,
    samples: Vec<f64>,
}

/// One row of the table.
#[derive(Debug, Serialize)]
pub struct ShimRow {
    metric: &'static str,
    unit: &'static str,
    system: String,
    summary: Summary,
    /// This row's median over the runc shim's for the same metric: below 1.0, smaller or
    /// faster than the runc shim.
    vs_runc: Option<f64>,
}

/// A way to start the model server: runtime type, label, and the snapshot to start from
/// (its name and whether eagerly).
type ModelSystem<'s> = (&'static str, &'static str, Option<(&'s str, bool)>);

/// What a run shares: containerd, the scratch directory, the options.
struct Bench<'a> {
    c: Containerd,
    scratch: PathBuf,
    store: PathBuf,
    tag: String,
    o: &'a Opts,
    series: Vec<Series>,
    /// Facts for the notes under the table (name → value).
    facts: Vec<(String, String)>,
    skipped: Vec<String>,
    /// Rounds that failed and were left out: (metric, why).
    failed_rounds: Vec<(&'static str, String)>,
    /// CRIU 4.x is there: restores and snapshots can run.
    criu: bool,
}

impl Bench<'_> {
    fn push(&mut self, metric: &'static str, unit: &'static str, system: &str, v: f64) {
        match self
            .series
            .iter_mut()
            .find(|s| s.metric == metric && s.system == system)
        {
            Some(s) => s.samples.push(v),
            None => self.series.push(Series {
                metric,
                unit,
                system: system.to_string(),
                samples: vec![v],
            }),
        }
    }

    fn rounds(&self) -> usize {
        self.o.warmup + self.o.runs
    }

    /// Keeps a measured round's value; or notes why the round failed, removes what it left
    /// and goes on, giving the metric up after MAX_FAILED_ROUNDS.
    fn record(
        &mut self,
        (metric, unit): (&'static str, &'static str),
        label: &str,
        round: usize,
        r: Result<f64>,
    ) -> Result<()> {
        let e = match r {
            Ok(v) if round >= self.o.warmup => {
                self.push(metric, unit, label, v);
                return Ok(());
            }
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        interrupted()?;
        let msg = format!("{metric}, {label}, round {round}: {e:#}");
        eprintln!("\ncryo-bench shim: left out: {msg}");
        self.c.remove_all();
        self.failed_rounds.push((metric, msg));
        let n = self
            .failed_rounds
            .iter()
            .filter(|(m, _)| *m == metric)
            .count();
        if n >= MAX_FAILED_ROUNDS {
            bail!("{n} rounds failed, giving up");
        }
        Ok(())
    }

    /// `ctr run --rm … echo hi` through each shim.
    fn echo(&mut self) -> Result<()> {
        let progress = Progress::new("shim: echo hi", self.rounds());
        for round in 0..self.rounds() {
            for k in 0..SHIMS.len() {
                interrupted()?;
                let i = (round + k) % SHIMS.len();
                let (rt, label) = SHIMS[i];
                let id = format!("{}-echo{i}-{round}", self.tag);
                let r = self.c.run(rt, &["--rm"], &id, &["echo", "hi"]);
                let r = r.and_then(|d| {
                    if d.stdout != "hi\n" {
                        bail!("`ctr run --rm … echo hi` printed {:?}", d.stdout);
                    }
                    self.c.forget(&id);
                    Ok(ms(d.took))
                });
                self.record((M_ECHO, "ms"), label, round, r)?;
            }
            progress.tick(round + 1);
        }
        Ok(())
    }

    /// K detached `sleep` containers per shim, then the resident memory of each one's shim.
    fn memory(&mut self) -> Result<()> {
        let mut ids = Vec::new();
        for k in 0..self.o.containers {
            for j in 0..SHIMS.len() {
                interrupted()?;
                let i = (k + j) % SHIMS.len();
                let id = format!("{}-mem{i}-{k}", self.tag);
                let (rt, label) = SHIMS[i];
                self.c
                    .run(rt, &["-d"], &id, &["sleep", "1000"])
                    .context(label)?;
                ids.push((i, id));
            }
        }
        for (_, id) in &ids {
            self.c.wait_status(id, "RUNNING")?;
        }
        // Let the shims finish what starting a task set off (log copiers, event sends).
        std::thread::sleep(Duration::from_millis(500));
        let mut seen = Vec::new();
        #[allow(clippy::cast_precision_loss, reason = "KiB counts are far below 2^53")]
        for (i, id) in &ids {
            let label = SHIMS[*i].1;
            let pid = self
                .c
                .shim_pid(id)
                .with_context(|| format!("{label}: no shim process with -id {id}"))?;
            // Each container has a shim of its own here (no pod groups them): per container
            // is per shim.
            if seen.contains(&pid) {
                bail!("{label}: shim {pid} serves {id} and another container");
            }
            seen.push(pid);
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let rss = proc_kib(&proc.join("status"), "VmRSS:")?;
            let pss = proc_kib(&proc.join("smaps_rollup"), "Pss:")?;
            self.push(M_RSS, "KiB", label, rss as f64);
            self.push(M_PSS, "KiB", label, pss as f64);
        }
        for (_, id) in &ids {
            self.c.remove(id)?;
        }
        Ok(())
    }

    /// One checkpoint per shim, then `ctr container restore --live` timed, round after round.
    fn restore(&mut self) -> Result<()> {
        let mut refs = Vec::new();
        for (i, (rt, label)) in SHIMS.iter().enumerate() {
            interrupted()?;
            let id = format!("{}-ck{i}", self.tag);
            let reference = format!("localhost/{id}:checkpoint");
            self.c
                .run(rt, &["-d"], &id, &["sh", "-c", COUNTER])
                .context(*label)?;
            self.c.wait_status(&id, "RUNNING")?;
            std::thread::sleep(Duration::from_millis(300));
            let d = self
                .c
                .ctr(&["container", "checkpoint", "--task", &id, &reference])
                .context(label)?;
            self.facts.push((
                format!("{label}: `ctr c checkpoint --task` (once)"),
                format!("{:.0} ms", ms(d.took)),
            ));
            self.c.remove(&id)?;
            refs.push((id, reference));
        }
        let progress = Progress::new("shim: restore", self.rounds());
        for round in 0..self.rounds() {
            for k in 0..SHIMS.len() {
                interrupted()?;
                let i = (round + k) % SHIMS.len();
                let label = SHIMS[i].1;
                let (id, reference) = &refs[i];
                self.c.track(id);
                let r = self
                    .c
                    .ctr(&["container", "restore", "--live", id, reference])
                    .and_then(|d| {
                        self.c
                            .wait_status(id, "RUNNING")
                            .context("the restored task")?;
                        self.c.remove(id)?;
                        Ok(ms(d.took))
                    });
                self.record((M_RESTORE, "ms"), label, round, r)?;
            }
            progress.tick(round + 1);
        }
        Ok(())
    }

    /// `ctr run -d` of the model server (from the snapshot `NAME` if given, lazily unless
    /// `eager`) until it answers on its socket; the time and the memory checksum it answers.
    fn model_start(
        &self,
        rt: &str,
        id: &str,
        snapshot: Option<(&str, bool)>,
    ) -> Result<(f64, String)> {
        let sock_dir = self.scratch.join("sock").join(id);
        std::fs::create_dir_all(&sock_dir)
            .with_context(|| format!("creating {}", sock_dir.display()))?;
        let srv = self.scratch.join("srv");
        let annotation = snapshot.map(|(name, _)| format!("io.cryo.snapshot={name}"));
        let mut flags = vec!["-d"];
        if let Some(a) = &annotation {
            flags.extend(["--annotation", a]);
        }
        if let Some((_, true)) = snapshot {
            flags.extend(["--annotation", "io.cryo.snapshot.lazy=false"]);
        }
        let mounts = [
            "type=bind,src=/usr,dst=/usr,options=rbind:ro".to_string(),
            // Debian resolves libblas/liblapack (numpy) through /etc/alternatives.
            "type=bind,src=/etc/alternatives,dst=/etc/alternatives,options=rbind:ro".to_string(),
            format!("type=bind,src={},dst=/srv,options=rbind:ro", srv.display()),
            format!(
                "type=bind,src={},dst=/run/bench,options=rbind:rw",
                sock_dir.display()
            ),
        ];
        for m in &mounts {
            flags.extend(["--mount", m]);
        }
        let size = self.o.size_mib.to_string();
        // From a snapshot the args are ignored (the restored tree replaces them); the same
        // spec as the checkpointed container's, as a replica of a pod would have.
        let args = [
            PYTHON,
            "/srv/model-server.py",
            "/run/bench/model.sock",
            &size,
        ];
        let mut cmd = self.c.run_cmd(rt, &flags, id, &args);
        let w = Workload {
            // containerd makes the bundle; only the socket is ours.
            bundle: PathBuf::new(),
            socket: sock_dir.join("model.sock"),
            sock_dir,
        };
        let mut run = spawn(&mut cmd)?;
        let t0 = run.t0;
        let (_, at) = w
            .wait_answer(CMD_TIMEOUT, Duration::from_millis(2), || {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    return Some(anyhow!("interrupted"));
                }
                run.failure()
            })
            .map_err(|e| self.c.with_log(e))?;
        run.finish(CMD_TIMEOUT).map_err(|e| self.c.with_log(e))?;
        // Untimed: the checksum reads a sample of every 64 KiB of the server's memory.
        let sum = w
            .ask(CMD_TIMEOUT)
            .context("asking the server for its checksum")?;
        Ok((ms(at - t0), sum))
    }

    /// The model server cold through both shims and from a snapshot through cryo's.
    fn model(&mut self) -> Result<()> {
        let srv = self.scratch.join("srv");
        std::fs::create_dir_all(&srv)?;
        let script = crate::repo_root().join("examples/model-server.py");
        std::fs::copy(&script, srv.join("model-server.py"))
            .with_context(|| format!("copying {}", script.display()))?;
        let name = format!("{}-model", self.tag);
        let mut expected: Option<String> = None;
        let mut systems: Vec<ModelSystem> = vec![(RUNC, RUNC_COLD, None), (CRYO, CRYO_COLD, None)];
        if self.criu {
            let id = format!("{}-msrc", self.tag);
            let (_, sum) = self
                .model_start(CRYO, &id, None)
                .context("the snapshot's source")?;
            let cryo = std::env::current_exe()?.with_file_name("cryo");
            let d = exec(
                Command::new(&cryo)
                    .arg("checkpoint")
                    .arg("--store")
                    .arg(&self.store)
                    .args(["--leave-running", "--snapshot", &name, &id]),
            )?;
            self.c.remove(&id)?;
            let (du, _) = disk_usage(&self.store.join("packs"))?;
            #[allow(clippy::cast_precision_loss, reason = "sizes below 2^53 bytes")]
            let mib = du as f64 / f64::from(1u32 << 20);
            self.facts.push((
                "cryo snapshot (`cryo checkpoint --leave-running --snapshot`, once)".into(),
                format!("{:.0} ms, {mib:.0} MiB in the store (du)", ms(d.took)),
            ));
            expected = Some(sum);
            systems.push((CRYO, CRYO_LAZY, Some((name.as_str(), false))));
            systems.push((CRYO, CRYO_EAGER, Some((name.as_str(), true))));
        }
        let progress = Progress::new("shim: model server", self.rounds());
        for round in 0..self.rounds() {
            for k in 0..systems.len() {
                interrupted()?;
                let i = (round + k) % systems.len();
                let (rt, label, snap) = systems[i];
                let id = format!("{}-m{i}-{round}", self.tag);
                let r = self.model_start(rt, &id, snap).and_then(|(t, sum)| {
                    match &expected {
                        Some(e) if *e != sum => {
                            bail!("the server's memory checksum is {sum}, expected {e}")
                        }
                        Some(_) => {}
                        None => expected = Some(sum),
                    }
                    self.c.remove(&id)?;
                    Ok(t)
                });
                let _ = std::fs::remove_dir_all(self.scratch.join("sock").join(&id));
                self.record((M_MODEL, "ms"), label, round, r)?;
            }
            progress.tick(round + 1);
        }
        Ok(())
    }
}

/// The rows, each with its ratio to the runc shim's median for the same metric.
fn rows(series: &[Series]) -> Vec<ShimRow> {
    let mut rows: Vec<ShimRow> = series
        .iter()
        .filter_map(|s| {
            Some(ShimRow {
                metric: s.metric,
                unit: s.unit,
                system: s.system.clone(),
                summary: Summary::of(&s.samples)?,
                vs_runc: None,
            })
        })
        .collect();
    let refs: Vec<(&'static str, f64)> = rows
        .iter()
        .filter(|r| r.system.starts_with(RUNC_LABEL))
        .map(|r| (r.metric, r.summary.median))
        .collect();
    // Metric by metric; the runc shim first, then cryo's, cold before snapshots.
    let metrics = [M_ECHO, M_RSS, M_PSS, M_RESTORE, M_MODEL];
    let systems = [
        RUNC_LABEL, RUNC_COLD, CRYO_LABEL, CRYO_COLD, CRYO_LAZY, CRYO_EAGER,
    ];
    rows.sort_by_key(|r| {
        (
            metrics.iter().position(|m| *m == r.metric),
            systems.iter().position(|x| *x == r.system),
        )
    });
    for r in &mut rows {
        r.vs_runc = refs
            .iter()
            .find(|(m, _)| *m == r.metric)
            .map(|(_, med)| r.summary.median / med);
    }
    rows
}

fn markdown(
    rows: &[ShimRow],
    legend: &str,
    facts: &[(String, String)],
    skipped: &[String],
    problems: &[String],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| metric | system | median | p10 | p90 | min | n | ÷ runc shim (median) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let m = &r.summary;
        let p = if r.unit == "KiB" { 0 } else { 1 };
        let ratio = match r.vs_runc {
            Some(_) if r.system.starts_with(RUNC_LABEL) => "ref".to_string(),
            Some(x) => format!("{x:.2}×"),
            None => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} ({}) | {} | {:.p$} | {:.p$} | {:.p$} | {:.p$} | {} | {ratio} |",
            r.metric, r.unit, r.system, m.median, m.p10, m.p90, m.min, m.n
        );
    }
    let med = |system: &str| {
        rows.iter()
            .find(|r| r.metric == M_MODEL && r.system == system)
            .map(|r| r.summary.median)
    };
    if let Some(cold) = med(CRYO_COLD) {
        for snap in [CRYO_LAZY, CRYO_EAGER] {
            if let Some(v) = med(snap) {
                let _ = writeln!(s, "\n{snap} ÷ cryo shim, cold: {:.2}×.", v / cold);
            }
        }
    }
    let _ = writeln!(s, "\n{legend}");
    for (k, v) in facts {
        let _ = writeln!(s, "\n{k}: {v}.");
    }
    for x in skipped {
        let _ = writeln!(s, "\nSkipped: {x}.");
    }
    for x in problems {
        let first: String = x
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(400)
            .collect();
        let _ = writeln!(s, "\n{}.", first.replace('|', "\\|"));
    }
    s
}

#[derive(Serialize)]
struct Versions {
    containerd: String,
    runc_shim: String,
    runc: String,
    criu: Option<String>,
    cryo: String,
}

#[derive(Serialize)]
struct ShimReport<'a> {
    scenario: &'static str,
    machine: Machine,
    versions: &'a Versions,
    warmup: usize,
    runs: usize,
    size_mib: u64,
    containers: usize,
    rows: &'a [ShimRow],
    samples: &'a [Series],
    facts: &'a [(String, String)],
    skipped: &'a [String],
    failed: &'a [String],
    /// Rounds left out of the figures, and why.
    failed_rounds: &'a [String],
}

/// Refuses to start without root or without the tools the scenario drives.
fn preflight(o: &Opts) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the shim scenario runs containerd and real containers: run it as root");
    }
    if o.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if o.containers == 0 {
        bail!("--containers must be at least 1");
    }
    if o.size_mib == 0 || !o.size_mib.is_multiple_of(4) {
        bail!(
            "--size-mib must be a positive multiple of 4, got {}",
            o.size_mib
        );
    }
    let mut missing = Vec::new();
    for p in [&o.containerd, &o.ctr] {
        if !p.is_file() {
            missing.push(p.display().to_string());
        }
    }
    for p in [RUNC_SHIM_BIN, RUNC_BIN] {
        if !Path::new(p).is_file() {
            missing.push(p.to_string());
        }
    }
    for t in ["umoci", "tar"] {
        if which(t).is_none() {
            missing.push(format!("{t} (not on PATH)"));
        }
    }
    let exe = std::env::current_exe().context("locating cryo-bench")?;
    for b in ["containerd-shim-cryo-v2", "cryo"] {
        let p = exe.with_file_name(b);
        if !p.is_file() {
            missing.push(format!(
                "{} (cargo build --release -p cryo -p cryo-shim -p cryo-bench)",
                p.display()
            ));
        }
    }
    if !missing.is_empty() {
        bail!(
            "the shim scenario needs Debian's containerd, ctr, runc and containerd-shim-runc-v2, \
             umoci, and cryo's shim beside cryo-bench; missing: {}",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Builds the busybox OCI image (the python bundle's rootfs: busybox with /lib and /lib64
/// linked into /usr, so the host's /usr can be bound in) and imports it.
fn import_busybox(c: &Containerd, work: &Path, scratch: &Path) -> Result<()> {
    let bundle = work.join("image-bundle");
    let script = crate::repo_root().join("examples/python-bundle.sh");
    exec(Command::new(&script).arg(&bundle))?;
    let layout = scratch.join("oci");
    let image = format!("{}:latest", layout.display());
    let rootfs = bundle.join("rootfs");
    let rootfs = rootfs.to_string_lossy();
    let steps: [&[&str]; 4] = [
        &["init", "--layout", &layout.to_string_lossy()],
        &["new", "--image", &image],
        &["insert", "--image", &image, &rootfs, "/"],
        &["config", "--image", &image, "--config.cmd", "sh"],
    ];
    for s in steps {
        exec(Command::new("umoci").args(s))?;
    }
    let tar = scratch.join("busybox.tar");
    exec(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    )?;
    c.ctr(&[
        "image",
        "import",
        "--base-name",
        "localhost/busybox",
        &tar.to_string_lossy(),
    ])?;
    Ok(())
}

/// The scenario.
pub fn run<'o>(o: &'o Opts) -> Result<()> {
    preflight(o)?;
    let exe = std::env::current_exe().context("locating cryo-bench")?;
    let shim_dir = exe
        .parent()
        .context("cryo-bench has no directory")?
        .to_path_buf();
    let refs_criu = Path::new(REFS_BIN).join("criu");
    let criu = refs_criu.is_file();
    let versions = Versions {
        containerd: version_of(&o.containerd, &["--version"]),
        runc_shim: version_of(Path::new(RUNC_SHIM_BIN), &["-v"]),
        runc: version_of(Path::new(RUNC_BIN), &["--version"]),
        criu: criu.then(|| version_of(&refs_criu, &["--version"])),
        cryo: runtimes::cryo()?.version,
    };

    std::fs::create_dir_all(&o.work).with_context(|| format!("creating {}", o.work.display()))?;
    let work = o.work.canonicalize()?;
    let scratch = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&work)
        .with_context(|| format!("creating a scratch directory in {}", work.display()))?;
    let sp = scratch.path().to_path_buf();
    // Only CRIU from the references: their directory also holds newer runc and shims, which
    // must not stand in for Debian's.
    let bin = sp.join("bin");
    let store = sp.join("store");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&store)?;
    if criu {
        std::os::unix::fs::symlink(&refs_criu, bin.join("criu"))?;
    }
    let path = std::env::join_paths([
        shim_dir.as_path(),
        bin.as_path(),
        Path::new("/usr/sbin"),
        Path::new("/usr/bin"),
        Path::new("/sbin"),
        Path::new("/bin"),
    ])?;
    catch_signals();
    let pid = std::process::id();
    let ns = format!("cryo-bench-{pid}");
    let c = Containerd::start(
        &o.containerd,
        &o.ctr,
        &sp,
        &ns,
        &path,
        &[("CRYO_STORE", store.as_path())],
    )?;
    import_busybox(&c, &work, &sp)?;
    eprintln!(
        "cryo-bench shim: containerd {}: {RUNC} (runc {}) vs {CRYO} (cryo {}); {} warm-up + {} \
         rounds, {} MiB model server",
        versions.containerd, versions.runc, versions.cryo, o.warmup, o.runs, o.size_mib
    );

    let mut b = Bench {
        c,
        scratch: sp.clone(),
        store,
        tag: format!("sb{pid}"),
        o,
        series: Vec::new(),
        facts: Vec::new(),
        skipped: Vec::new(),
        failed_rounds: Vec::new(),
        criu,
    };
    let mut failed = Vec::new();
    let no_criu = format!(
        "{} is absent (scripts/refs installs CRIU 4.x)",
        refs_criu.display()
    );
    let python = Path::new(PYTHON).is_file();
    type Phase<'o> = fn(&mut Bench<'o>) -> Result<()>;
    let phases: [(&str, Phase<'o>, Option<String>); 4] = [
        ("echo hi", Bench::echo, None),
        ("shim memory", Bench::memory, None),
        (
            "restore",
            Bench::restore,
            (!criu).then(|| format!("restore through containerd: {no_criu}")),
        ),
        (
            "model server",
            Bench::model,
            (!python).then(|| format!("model server: {PYTHON} is absent")),
        ),
    ];
    if !criu && python {
        b.skipped.push(format!("snapshot-start: {no_criu}"));
    }
    for (name, phase, skip) in phases {
        if let Some(why) = skip {
            eprintln!("cryo-bench shim: skipped: {why}");
            b.skipped.push(why);
            continue;
        }
        if let Err(e) = phase(&mut b) {
            let msg = format!("{name}: {e:#}");
            eprintln!("cryo-bench shim: {msg}");
            failed.push(msg);
            b.c.remove_all();
            if INTERRUPTED.load(Ordering::SeqCst) {
                break;
            }
        }
    }

    let rows = rows(&b.series);
    let criu_v = versions.criu.as_deref().map(|v| format!(", CRIU {v}"));
    let legend = format!(
        "`cryo-bench shim --runs {} --warmup {} --size-mib {} --containers {}`. runc shim = \
         {RUNC} (Debian's containerd-shim-runc-v2 {}, runc {}{}); cryo shim = {CRYO} \
         (containerd-shim-cryo-v2 of cryo {}); one containerd {} for both. Times from \
         spawning ctr: containerd's and ctr's share is in both sides of every ratio. Model \
         server: {} MiB python (examples/model-server.py), host /usr bound in read-only.",
        o.runs,
        o.warmup,
        o.size_mib,
        o.containers,
        versions.runc_shim,
        versions.runc,
        criu_v.unwrap_or_default(),
        versions.cryo,
        versions.containerd,
        o.size_mib
    );
    let failed_rounds: Vec<String> = b.failed_rounds.iter().map(|(_, m)| m.clone()).collect();
    let problems: Vec<String> = failed
        .iter()
        .map(|f| format!("Failed: {f}"))
        .chain(failed_rounds.iter().map(|m| format!("Left out: {m}")))
        .collect();
    let md = markdown(&rows, &legend, &b.facts, &b.skipped, &problems);
    print!("{md}");
    let rep = ShimReport {
        scenario: "shim",
        machine: Machine::current(),
        versions: &versions,
        warmup: o.warmup,
        runs: o.runs,
        size_mib: o.size_mib,
        containers: o.containers,
        rows: &rows,
        samples: &b.series,
        facts: &b.facts,
        skipped: &b.skipped,
        failed: &failed,
        failed_rounds: &failed_rounds,
    };
    report::write(&o.out, "shim", &rep, &md)?;
    let panels = crate::plot::panels(
        rows.iter()
            .map(|r| (r.metric, r.unit, r.system.as_str(), &r.summary)),
        "cryo",
    );
    crate::plot::write(
        &o.out,
        "shim",
        "containerd: runc shim and cryo shim",
        &panels,
    );
    eprintln!("cryo-bench: results in {}", o.out.display());
    // containerd goes (and with it the scratch directory's mounts) before the directory.
    drop(b);
    drop(scratch);
    if !problems.is_empty() {
        bail!(
            "{} metric(s) failed, {} round(s) left out (see above)",
            failed.len(),
            failed_rounds.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(metric: &'static str, system: &str, samples: &[f64]) -> Series {
        Series {
            metric,
            unit: if metric == M_RSS { "KiB" } else { "ms" },
            system: system.into(),
            samples: samples.to_vec(),
        }
    }

    #[test]
    fn rows_are_ordered_and_compared_with_the_runc_shim() {
        let s = [
            series(M_MODEL, CRYO_LAZY, &[200.0]),
            series(M_MODEL, CRYO_COLD, &[1600.0]),
            series(M_RSS, CRYO_LABEL, &[8000.0, 8200.0]),
            series(M_MODEL, RUNC_COLD, &[2000.0]),
            series(M_RSS, RUNC_LABEL, &[13000.0, 13400.0]),
            series(M_ECHO, CRYO_LABEL, &[]),
        ];
        let r = rows(&s);
        let got: Vec<(&str, &str)> = r.iter().map(|r| (r.metric, r.system.as_str())).collect();
        assert_eq!(
            got,
            [
                (M_RSS, RUNC_LABEL),
                (M_RSS, CRYO_LABEL),
                (M_MODEL, RUNC_COLD),
                (M_MODEL, CRYO_COLD),
                (M_MODEL, CRYO_LAZY),
            ]
        );
        assert_eq!(r[0].vs_runc, Some(1.0));
        assert!((r[1].vs_runc.unwrap() - 8100.0 / 13200.0).abs() < 1e-9);
        assert_eq!(r[4].vs_runc, Some(0.1));
        let md = markdown(&r, "legend", &[], &["restore: no CRIU".into()], &[]);
        assert!(
            md.contains("| shim VmRSS per container (KiB) | runc shim | 13200 |"),
            "{md}"
        );
        assert!(md.contains("| 1 | ref |"), "{md}");
        assert!(md.contains("| 0.10× |"), "{md}");
        assert!(
            md.contains("cryo shim, snapshot (lazy) ÷ cryo shim, cold: 0.12×."),
            "{md}"
        );
        assert!(md.contains("Skipped: restore: no CRIU."), "{md}");
    }
}

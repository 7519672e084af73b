//! The `lifecycle` scenario: the full life of a `/bin/true` container (create, start, wait,
//! delete) through each runtime's CLI, interleaved so a noisy machine affects all alike.
//!
//! cryo-bench makes itself a child subreaper, so the container's init, orphaned when the
//! runtime's `create` exits, is reparented to it and its exit is observed with `waitpid`
//! directly, without polling the runtime's `state`.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::runtimes::Runtime;

/// Timings of one lifecycle, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Sample {
    /// `create` until it returned.
    pub create: f64,
    /// `start` until it returned.
    pub start: f64,
    /// From `start` returning to the container's exit being reaped.
    pub wait: f64,
    /// `delete` until it returned.
    pub delete: f64,
    /// The whole lifecycle.
    pub total: f64,
}

/// A named projection of a [`Sample`].
pub type Metric = (&'static str, fn(&Sample) -> f64);

/// Every metric of a sample, the whole lifecycle first.
pub const METRICS: [Metric; 5] = [
    ("total", |s| s.total),
    ("create", |s| s.create),
    ("start", |s| s.start),
    ("wait", |s| s.wait),
    ("delete", |s| s.delete),
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run_cmd(rt: &Runtime, root: &Path, args: &[&str]) -> Result<()> {
    // stderr goes to a file, not a pipe: the container inherits the runtime's stdio, and a
    // pipe would stay open (and `output()` blocked) for as long as the container lives.
    let mut err = tempfile::tempfile().context("creating a temporary file")?;
    let status = Command::new(&rt.path)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.try_clone()?)
        .status()
        .with_context(|| format!("running {}", rt.path.display()))?;
    if !status.success() {
        let mut msg = String::new();
        err.rewind()?;
        err.read_to_string(&mut msg)?;
        bail!("{} {}: {status}: {}", rt.name, args.join(" "), msg.trim());
    }
    Ok(())
}

/// Makes the calling process a child subreaper (see the module doc).
pub fn become_subreaper() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        bail!(
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn wait_pid(pid: i32) -> Result<()> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only into `status`.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            bail!("waitpid({pid}): {err}");
        }
    }
}

/// One create/start/wait/delete of the bundle under `rt`.
pub fn once(rt: &Runtime, root: &Path, bundle: &Path, id: &str) -> Result<Sample> {
    let pid_file = root.join(format!("{id}.pid"));
    let bundle = bundle.to_str().context("bundle path is not UTF-8")?;
    let pid_arg = pid_file.to_str().context("root path is not UTF-8")?;
    let t0 = Instant::now();
    run_cmd(
        rt,
        root,
        &["create", "--bundle", bundle, "--pid-file", pid_arg, id],
    )?;
    let t1 = Instant::now();
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("{}: reading {}", rt.name, pid_file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{}: pid file {}", rt.name, pid_file.display()))?;
    run_cmd(rt, root, &["start", id])?;
    let t2 = Instant::now();
    wait_pid(pid)?;
    let t3 = Instant::now();
    run_cmd(rt, root, &["delete", id])?;
    let t4 = Instant::now();
    let _ = std::fs::remove_file(&pid_file);
    Ok(Sample {
        create: ms(t1 - t0),
        start: ms(t2 - t1),
        wait: ms(t3 - t2),
        delete: ms(t4 - t3),
        total: ms(t4 - t0),
    })
}

/// Builds (or reuses) the busybox bundle running `/bin/true`.
pub fn bundle(repo: &Path, dir: &Path) -> Result<PathBuf> {
    let script = repo.join("examples/busybox-bundle.sh");
    let st = Command::new(&script)
        .arg(dir)
        .arg("/bin/true")
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !st.success() {
        bail!("{} failed", script.display());
    }
    Ok(dir.to_path_buf())
}

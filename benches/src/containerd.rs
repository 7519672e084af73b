//! A private containerd for the `shim` scenario, and the process plumbing around it: commands
//! with a timeout and their output, signals that stop a run between two steps, and the
//! clean-up of what containerd leaves (mounts under the scratch directory, the namespace's
//! cgroups).

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub(crate) const IMAGE: &str = "localhost/busybox:latest";

/// The longest any single command may take.
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub(crate) extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT, SIGTERM and SIGHUP into an error at the next step, so the guards clean up.
pub(crate) fn catch_signals() {
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { libc::signal(s, on_signal as *const () as libc::sighandler_t) };
    }
}

pub(crate) fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `PROGRAM ARGS…` for messages: the program's file name, without ctr's `-a SOCK -n NS`.
pub(crate) fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let mut s = program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    let skip = if args.first().is_some_and(|a| a == "-a") && args.get(2).is_some_and(|a| a == "-n")
    {
        4
    } else {
        0
    };
    for a in &args[skip.min(args.len())..] {
        s.push(' ');
        s.push_str(a);
    }
    s
}

pub(crate) fn read_all(f: &mut File) -> String {
    let mut s = String::new();
    let _ = f.rewind().and_then(|()| f.read_to_string(&mut s));
    s
}

type Ended = (Instant, std::io::Result<ExitStatus>);

/// A command in flight. Its stdio are files, never pipes (a detached container inherits
/// them); a thread reaps it, so its end is timed when `wait` returns, not at a polling tick.
pub(crate) struct Running {
    pub(crate) what: String,
    pub(crate) t0: Instant,
    pub(crate) pid: i32,
    pub(crate) rx: mpsc::Receiver<Ended>,
    pub(crate) ended: Option<Ended>,
    pub(crate) out: File,
    pub(crate) err: File,
}

/// A command that ended well: its time from spawn to exit, and its output.
pub(crate) struct Done {
    pub(crate) took: Duration,
    pub(crate) stdout: String,
}

pub(crate) fn spawn(cmd: &mut Command) -> Result<Running> {
    let out = tempfile::tempfile().context("creating a temporary file")?;
    let err = tempfile::tempfile().context("creating a temporary file")?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?);
    let what = describe(cmd);
    let t0 = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let st = child.wait();
        let _ = tx.send((Instant::now(), st));
    });
    Ok(Running {
        what,
        t0,
        pid,
        rx,
        ended: None,
        out,
        err,
    })
}

pub(crate) fn exec(cmd: &mut Command) -> Result<Done> {
    spawn(cmd)?.finish(CMD_TIMEOUT)
}

impl Running {
    pub(crate) fn failed(
        what: &str,
        st: &std::io::Result<ExitStatus>,
        out: &str,
        err: &str,
    ) -> Option<anyhow::Error> {
        match st {
            Ok(s) if s.success() => None,
            Ok(s) => {
                let text = if err.trim().is_empty() { out } else { err };
                Some(anyhow!("{what}: {s}: {}", text.trim()))
            }
            Err(e) => Some(anyhow!("waiting for {what}: {e}")),
        }
    }

    /// The error it ended with, if it has ended and failed; does not wait.
    pub(crate) fn failure(&mut self) -> Option<anyhow::Error> {
        if self.ended.is_none() {
            self.ended = self.rx.try_recv().ok();
        }
        let (_, st) = self.ended.as_ref()?;
        if st.as_ref().is_ok_and(ExitStatus::success) {
            return None;
        }
        let (out, err) = (read_all(&mut self.out), read_all(&mut self.err));
        Running::failed(&self.what, st, &out, &err)
    }

    /// Waits for its end (killing it after `timeout`); fails unless it exited 0.
    pub(crate) fn finish(mut self, timeout: Duration) -> Result<Done> {
        let (at, st) = match self.ended.take() {
            Some(x) => x,
            None => match self.rx.recv_timeout(timeout) {
                Ok(x) => x,
                Err(_) => {
                    // SAFETY: kill with a pid that the reaper thread has not reaped yet.
                    unsafe { libc::kill(self.pid, libc::SIGKILL) };
                    let _ = self.rx.recv();
                    bail!("{}: still running after {timeout:?}, killed", self.what);
                }
            },
        };
        let (out, err) = (read_all(&mut self.out), read_all(&mut self.err));
        if let Some(e) = Running::failed(&self.what, &st, &out, &err) {
            return Err(e);
        }
        Ok(Done {
            took: at - self.t0,
            stdout: out,
        })
    }
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The first word that starts with a digit in what `bin args` prints: its version.
pub(crate) fn version_of(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).stdin(Stdio::null()).output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Lazily unmounts every mount point under `dir`, deepest first.
pub(crate) fn unmount_under(dir: &Path) {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = mi
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p) else {
            continue;
        };
        // SAFETY: umount2 on a NUL-terminated path; a failure leaves the mount, nothing else.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Removes the cgroup `rel` (its `children` first) from every hierarchy (v1 and v2).
pub(crate) fn remove_cgroup(rel: &str, children: &[String]) {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut hierarchies: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    hierarchies.push(PathBuf::from("/sys/fs/cgroup"));
    for h in hierarchies {
        let d = h.join(rel.trim_start_matches('/'));
        if !d.is_dir() {
            continue;
        }
        // The last processes may take a moment to leave.
        for _ in 0..50 {
            for c in children {
                let _ = std::fs::remove_dir(d.join(c));
            }
            if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A private containerd and every container the run made in its namespace. Dropping it
/// deletes them, stops containerd, unmounts what is left under its directory and removes
/// the namespace's cgroups (ctr's default cgroup path is /NAMESPACE/ID).
pub(crate) struct Containerd {
    pub(crate) dir: PathBuf,
    pub(crate) child: Child,
    pub(crate) ctr: PathBuf,
    pub(crate) ns: String,
    /// Containers that may exist now.
    pub(crate) live: RefCell<Vec<String>>,
    /// Every container id used, for their cgroups.
    pub(crate) used: RefCell<Vec<String>>,
}

impl Containerd {
    /// Starts `bin` with root, state, sockets and config under `dir`, PATH `path` and the
    /// extra environment `env` (its shims inherit both); waits until ctr reaches it.
    pub(crate) fn start(
        bin: &Path,
        ctr: &Path,
        dir: &Path,
        ns: &str,
        path: &OsString,
        env: &[(&str, &Path)],
    ) -> Result<Containerd> {
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.nri.v1.nri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = dir.join("c.sock").display(),
            opt = dir.join("opt").display(),
        );
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config).with_context(|| format!("writing {}", cfg.display()))?;
        let log = File::create(dir.join("containerd.log")).context("creating containerd.log")?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .env("PATH", path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C on the terminal must leave it to the guard.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut c = Containerd {
            dir: dir.to_path_buf(),
            child,
            ctr: ctr.to_path_buf(),
            ns: ns.to_string(),
            live: RefCell::new(Vec::new()),
            used: RefCell::new(Vec::new()),
        };
        let t0 = Instant::now();
        loop {
            if dir.join("c.sock").exists() && c.ctr(&["version"]).is_ok() {
                return Ok(c);
            }
            if let Ok(Some(st)) = c.child.try_wait() {
                bail!("containerd exited ({st}):\n{}", c.log_tail());
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("containerd did not come up in 30 s:\n{}", c.log_tail());
            }
            interrupted()?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    pub(crate) fn fifo_dir(&self) -> String {
        self.dir.join("fifo").to_string_lossy().into_owned()
    }

    /// `ctr -a SOCK -n NS`.
    pub(crate) fn cmd(&self) -> Command {
        let mut c = Command::new(&self.ctr);
        c.arg("-a")
            .arg(self.dir.join("c.sock"))
            .args(["-n", &self.ns]);
        c
    }

    /// A ctr command to its end; on failure, with the end of containerd's log.
    pub(crate) fn ctr(&self, args: &[&str]) -> Result<Done> {
        exec(self.cmd().args(args)).map_err(|e| self.with_log(e))
    }

    /// `e`, then the end of containerd's log (where the shims' messages go too).
    pub(crate) fn with_log(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow!("{e:#}\ncontainerd's log, last lines:\n{}", self.log_tail())
    }

    /// `ctr run --fifo-dir F --runtime RT FLAGS… IMAGE ID ARGS…`, tracked for the cleanup.
    pub(crate) fn run_cmd(&self, rt: &str, flags: &[&str], id: &str, args: &[&str]) -> Command {
        self.track(id);
        let mut c = self.cmd();
        c.args(["run", "--fifo-dir", &self.fifo_dir(), "--runtime", rt])
            .args(flags)
            .args([IMAGE, id])
            .args(args);
        c
    }

    pub(crate) fn run(&self, rt: &str, flags: &[&str], id: &str, args: &[&str]) -> Result<Done> {
        exec(&mut self.run_cmd(rt, flags, id, args)).map_err(|e| self.with_log(e))
    }

    /// Notes a container about to be made, for the cleanup.
    pub(crate) fn track(&self, id: &str) {
        self.live.borrow_mut().push(id.to_string());
        self.used.borrow_mut().push(id.to_string());
    }

    /// Notes a container gone by itself (`ctr run --rm`).
    pub(crate) fn forget(&self, id: &str) {
        self.live.borrow_mut().retain(|x| x != id);
    }

    /// Kills and deletes the task of `id` and removes the container.
    pub(crate) fn remove(&self, id: &str) -> Result<()> {
        let mut last = None;
        for _ in 0..50 {
            // Absent when it never started or already went: the container rm says (its own
            // message only: containerd's log may say "not found" about anything).
            let _ = exec(self.cmd().args(["task", "delete", "-f", id]));
            match exec(self.cmd().args(["container", "rm", id])) {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) if format!("{e:#}").contains("not found") => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.forget(id);
        match last {
            Some(e) => Err(e.context(format!("removing container {id}"))),
            None => Ok(()),
        }
    }

    /// Removes every container that may still exist.
    pub(crate) fn remove_all(&self) {
        let ids = self.live.borrow().clone();
        for id in ids {
            if let Err(e) = self.remove(&id) {
                eprintln!("cryo-bench: {e:#}");
            }
        }
    }

    /// The STATUS column of `ctr task ls` for `id`.
    pub(crate) fn task_status(&self, id: &str) -> Result<Option<String>> {
        let out = self.ctr(&["task", "ls"])?.stdout;
        Ok(out.lines().find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.first() == Some(&id)).then(|| w.last().unwrap_or(&"").to_string())
        }))
    }

    pub(crate) fn wait_status(&self, id: &str, want: &str) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let st = self.task_status(id)?;
            if st.as_deref() == Some(want) {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("task {id}: {st:?} after 10 s, expected {want}");
            }
            interrupted()?;
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The serving shim of container `id` (not a `start` invocation).
    pub(crate) fn shim_pid(&self, id: &str) -> Option<i32> {
        let rd = std::fs::read_dir("/proc").ok()?;
        rd.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .collect();
            let shim = args
                .first()?
                .rsplit(|b| *b == b'/')
                .next()?
                .starts_with(b"containerd-shim");
            let has = |flag: &[u8], v: &str| {
                args.windows(2)
                    .any(|w| w[0] == flag && w[1] == v.as_bytes())
            };
            let serving = args.last() != Some(&&b"start"[..]);
            (shim && serving && has(b"-namespace", &self.ns) && has(b"-id", id)).then_some(pid)
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all();
        // SAFETY: kill on our own child's pid, which we have not reaped.
        unsafe {
            libc::kill(
                i32::try_from(self.child.id()).unwrap_or(i32::MAX),
                libc::SIGTERM,
            )
        };
        let t0 = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        unmount_under(&self.dir);
        remove_cgroup(&self.ns, &self.used.borrow());
    }
}

/// One `key:` line of a /proc file, in KiB.
pub(crate) fn proc_kib(path: &Path, key: &str) -> Result<u64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.trim().trim_end_matches(" kB").trim().parse().ok())
        .with_context(|| format!("{}: no {key} line", path.display()))
}

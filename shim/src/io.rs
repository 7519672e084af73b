//! A task process's stdio as containerd describes it: fifo paths (as `ctr` creates them),
//! `file://` and `binary://` log URIs, or a terminal.
//!
//! Output goes to the process directly (the fifo or file is its stdout, no copy through the
//! shim), so a chatty container costs the shim nothing. Input goes through a pipe fed from
//! the fifo so that `CloseIO` can end it. A terminal's master is copied to and from the fifos.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcStdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cryo_runtime::Stdio;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Where one output stream goes.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    None,
    Fifo(PathBuf),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

fn parse_target(s: &str) -> Result<Target> {
    if s.is_empty() {
        return Ok(Target::None);
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Ok(Target::Fifo(PathBuf::from(s)));
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        bail!("{s:?}: expected an absolute path after {scheme}://");
    }
    match scheme {
        "fifo" => Ok(Target::Fifo(PathBuf::from(path))),
        "file" => Ok(Target::File(PathBuf::from(path))),
        "binary" => {
            let mut args = Vec::new();
            for kv in query.split('&').filter(|kv| !kv.is_empty()) {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                args.push(k.to_string());
                if !v.is_empty() {
                    args.push(v.to_string());
                }
            }
            Ok(Target::Binary {
                path: PathBuf::from(path),
                args,
            })
        }
        other => bail!("{s:?}: unsupported scheme {other:?} (expected fifo, file or binary)"),
    }
}

/// The stdio of one process, from before it starts until it is deleted.
pub struct ProcessIo {
    /// What the runtime hands the process.
    pub stdio: Stdio,
    /// The pipe feeding stdin; `None` once closed.
    stdin: Arc<Mutex<Option<File>>>,
    /// A terminal's console socket until the master arrives, then the master.
    console: Option<Console>,
    /// Threads copying terminal output, joined before the exit is reported.
    output: Vec<JoinHandle<()>>,
    stdout: String,
    stdin_path: String,
}

enum Console {
    Waiting {
        listener: UnixListener,
        dir: tempfile::TempDir,
    },
    Master(File),
}

impl ProcessIo {
    /// Opens the streams named by a Create or Exec request.
    pub fn open(
        stdin: &str,
        stdout: &str,
        stderr: &str,
        terminal: bool,
        id: &str,
        namespace: &str,
    ) -> Result<ProcessIo> {
        let mut io = ProcessIo {
            stdio: Stdio::default(),
            stdin: Arc::new(Mutex::new(None)),
            console: None,
            output: Vec::new(),
            stdout: stdout.to_string(),
            stdin_path: stdin.to_string(),
        };
        if terminal {
            let dir = tempfile::Builder::new()
                .prefix(".cryo-shim-")
                .tempdir_in("/tmp")
                .context("creating the console socket directory")?;
            let path = dir.path().join("console.sock");
            let listener = UnixListener::bind(&path)
                .with_context(|| format!("binding console socket {}", path.display()))?;
            io.console = Some(Console::Waiting { listener, dir });
            return Ok(io);
        }
        if !stdin.is_empty() {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("stdin pipe")?;
            io.stdio.stdin = Some(Arc::new(r));
            *lock(&io.stdin) = Some(File::from(w));
            let fifo = PathBuf::from(stdin);
            let sink = io.stdin.clone();
            std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || copy_stdin(&fifo, &sink))
                .context("starting the stdin thread")?;
        }
        let out = parse_target(stdout).context("stdout")?;
        let err = parse_target(stderr).context("stderr")?;
        match (&out, &err) {
            (Target::Binary { path, args }, _) => {
                let (o, e) = start_logger(path, args, id, namespace)?;
                io.stdio.stdout = Some(Arc::new(o));
                io.stdio.stderr = Some(Arc::new(e));
            }
            (Target::File(p), Target::File(q)) if p == q => {
                let f = Arc::new(open_log_file(p)?);
                io.stdio.stdout = Some(f.clone());
                io.stdio.stderr = Some(f);
            }
            _ => {
                io.stdio.stdout = open_output(&out).context("stdout")?.map(Arc::new);
                io.stdio.stderr = open_output(&err).context("stderr")?.map(Arc::new);
            }
        }
        Ok(io)
    }

    /// The console socket the runtime sends a terminal's master to.
    pub fn console_socket(&self) -> Option<PathBuf> {
        match &self.console {
            Some(Console::Waiting { dir, .. }) => Some(dir.path().join("console.sock")),
            _ => None,
        }
    }

    /// After the runtime created the process: takes the terminal's master from the console
    /// socket and starts copying it to and from the fifos.
    pub fn attach_console(&mut self) -> Result<()> {
        let Some(Console::Waiting { listener, dir }) = self.console.take() else {
            return Ok(());
        };
        let master = receive_master(&listener)
            .with_context(|| format!("receiving the terminal from {}", dir.path().display()))?;
        drop(dir);
        if !self.stdin_path.is_empty() {
            let m = master.try_clone().context("dup of the terminal")?;
            let fifo = PathBuf::from(&self.stdin_path);
            let sink = Arc::new(Mutex::new(Some(m)));
            self.stdin = sink.clone();
            std::thread::Builder::new()
                .name("tty-in".into())
                .spawn(move || copy_stdin(&fifo, &sink))
                .context("starting the terminal input thread")?;
        }
        match parse_target(&self.stdout)? {
            Target::None => {}
            Target::Fifo(p) | Target::File(p) => {
                let mut out = open_fifo_or_file(&p)?;
                let mut m = master.try_clone().context("dup of the terminal")?;
                let h = std::thread::Builder::new()
                    .name("tty-out".into())
                    .spawn(move || {
                        // EIO once every slave fd is closed: the end of the output.
                        let _ = std::io::copy(&mut m, &mut out);
                    })
                    .context("starting the terminal output thread")?;
                self.output.push(h);
            }
            Target::Binary { .. } => bail!("a terminal cannot log to a binary:// URI"),
        }
        self.console = Some(Console::Master(master));
        Ok(())
    }

    /// `ResizePty`.
    pub fn resize(&self, width: u16, height: u16) -> Result<()> {
        let Some(Console::Master(m)) = &self.console else {
            bail!("the process has no terminal");
        };
        let ws = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
        let r = unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r < 0 {
            return Err(std::io::Error::last_os_error()).context("TIOCSWINSZ");
        }
        Ok(())
    }

    /// `CloseIO`: the process sees the end of its input.
    pub fn close_stdin(&self) {
        lock(&self.stdin).take();
    }

    /// Drops the shim's copies of the streams handed to the process, so that readers see
    /// EOF when the process is gone.
    pub fn release(&mut self) {
        self.stdio = Stdio::default();
    }

    /// Waits (up to `timeout`) until terminal output is copied out; a process whose
    /// children still hold the terminal does not hold up its exit event for longer.
    pub fn drain(&mut self, timeout: Duration) {
        let (tx, rx) = mpsc::channel();
        let handles = std::mem::take(&mut self.output);
        if handles.is_empty() {
            return;
        }
        std::thread::spawn(move || {
            for h in handles {
                let _ = h.join();
            }
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(timeout);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn copy_stdin(fifo: &Path, sink: &Mutex<Option<File>>) {
    // Blocks until the client opens its end, as the process would.
    let mut src = match File::open(fifo) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("opening stdin {}: {e}", fifo.display());
            lock(sink).take();
            return;
        }
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut guard = lock(sink);
        let Some(dst) = guard.as_mut() else { return };
        if dst.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    lock(sink).take();
}

/// How long Create and Exec wait for the client to open its end of an output fifo.
const READER_WAIT: Duration = Duration::from_secs(5);

/// A fifo opened for writing once its reader is there (O_RDWR, so that the process's writes
/// never fail while a client reconnects), or a regular file appended to.
fn open_fifo_or_file(p: &Path) -> Result<File> {
    open_output_fifo(p, READER_WAIT)
}

/// Clients open their reader before the request, but maybe in a thread that has yet to run:
/// containerd's fifo package opens in a goroutine, blocking until a writer comes. A reader
/// whose open starts after every writer is gone waits for the next writer forever, so a
/// process that exits quickly (an exec of `echo`, CRI's ExecSync) would leave its client
/// without EOF. Hence a probe first: a non-blocking write-only open succeeds once a reader
/// exists (one blocked in its open counts, and the probe completes that open), and it is
/// held until the process's own writer is open, so that the reader never sees zero writers
/// before the process has run. Without a reader in `wait`, it goes on as before.
fn open_output_fifo(p: &Path, wait: Duration) -> Result<File> {
    let is_fifo = std::fs::metadata(p).is_ok_and(|m| m.file_type().is_fifo());
    if !is_fifo && std::fs::metadata(p).is_ok_and(|m| m.is_file()) {
        return open_log_file(p).map(File::from);
    }
    let probe = if is_fifo {
        wait_for_reader(p, wait)
    } else {
        None
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
        .with_context(|| format!("opening {}", p.display()))?;
    drop(probe);
    Ok(f)
}

/// A write-only end of the fifo `p` once a reader has it open; None after `wait` without.
fn wait_for_reader(p: &Path, wait: Duration) -> Option<File> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        let probe = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(p);
        match probe {
            Ok(f) => return Some(f),
            // ENXIO: no reader yet.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && start.elapsed() < wait => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!(
                    "{}: no reader after {:?} ({e}); the client may miss the end of the output",
                    p.display(),
                    start.elapsed()
                );
                return None;
            }
        }
    }
}

fn open_output(t: &Target) -> Result<Option<OwnedFd>> {
    match t {
        Target::None => Ok(None),
        Target::Fifo(p) => open_fifo_or_file(p).map(|f| Some(OwnedFd::from(f))),
        Target::File(p) => open_log_file(p).map(Some),
        Target::Binary { .. } => Err(anyhow!("binary:// is only supported for stdout")),
    }
}

fn open_log_file(p: &Path) -> Result<OwnedFd> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
        .with_context(|| format!("opening log file {}", p.display()))?;
    Ok(f.into())
}

/// Starts a `binary://` logging driver as containerd specifies it: stdout and stderr pipes as
/// its fds 3 and 4, and fd 5 to close (or write to) once it is ready. Returns the write ends.
fn start_logger(path: &Path, args: &[String], id: &str, ns: &str) -> Result<(OwnedFd, OwnedFd)> {
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (out_r, out_w) = nix::unistd::pipe2(cloexec).context("logger pipe")?;
    let (err_r, err_w) = nix::unistd::pipe2(cloexec).context("logger pipe")?;
    let (ready_r, ready_w) = nix::unistd::pipe2(cloexec).context("logger pipe")?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", ns)
        .stdin(ProcStdio::null())
        .stdout(ProcStdio::null())
        .stderr(ProcStdio::null());
    // SAFETY: only dup2 (async-signal-safe) runs between fork and exec; dup2 clears
    // close-on-exec on the copies. The sources were made above and stay open until spawn.
    unsafe {
        cmd.pre_exec(move || {
            // The sources may sit at 3..5 themselves: move them out of the way first.
            let mut moved = [0; 3];
            for (i, fd) in fds.iter().enumerate() {
                moved[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                if moved[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (fd, target) in moved.iter().zip(3..) {
                if libc::dup2(*fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting logging binary {}", path.display()))?;
    drop(child);
    drop((out_r, err_r, ready_w));
    let mut ready = File::from(ready_r);
    let mut pfd = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(&ready),
        nix::poll::PollFlags::POLLIN,
    )];
    match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(10_000u16)) {
        Ok(0) => bail!(
            "logging binary {} did not get ready in 10 s",
            path.display()
        ),
        Ok(_) => {
            let mut b = [0u8; 1];
            let _ = ready.read(&mut b);
        }
        Err(e) => return Err(e).context("waiting for the logging binary"),
    }
    Ok((out_w, err_w))
}

/// Accepts the runtime's connection on the console socket and takes the master fd from it.
fn receive_master(listener: &UnixListener) -> Result<File> {
    let (conn, _) = listener.accept().context("accept")?;
    let mut name = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("recvmsg")?;
    for c in msg.cmsgs().context("control messages")? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: SCM_RIGHTS installed `fd` in this process; nothing else owns it.
                return Ok(unsafe { File::from_raw_fd(fd) });
            }
        }
    }
    bail!("the console socket message carried no fd")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("").unwrap(), Target::None);
        assert_eq!(
            parse_target("/run/fifo/x-stdout").unwrap(),
            Target::Fifo("/run/fifo/x-stdout".into())
        );
        assert_eq!(
            parse_target("file:///var/log/c.log").unwrap(),
            Target::File("/var/log/c.log".into())
        );
        assert_eq!(
            parse_target("binary:///usr/bin/logger?tag=web&json").unwrap(),
            Target::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["tag".into(), "web".into(), "json".into()],
            }
        );
        assert!(parse_target("http://x/y").is_err());
        assert!(parse_target("file://relative").is_err());
    }

    #[test]
    fn file_output_is_shared_and_appended() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("logs/c.log");
        let uri = format!("file://{}", p.display());
        let io = ProcessIo::open("", &uri, &uri, false, "c", "ns").unwrap();
        let out = io.stdio.stdout.as_ref().unwrap();
        let err = io.stdio.stderr.as_ref().unwrap();
        File::from(out.try_clone().unwrap())
            .write_all(b"out\n")
            .unwrap();
        File::from(err.try_clone().unwrap())
            .write_all(b"err\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "out\nerr\n");
    }

    /// The client's reader opens late, in a thread of its own (containerd's goroutine), and
    /// the process has written and exited by then: the reader still gets the output and EOF.
    #[test]
    fn a_late_reader_gets_the_output_and_its_end() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            // A blocking open, as containerd's fifo package does in its goroutine.
            let mut r = File::open(&path).unwrap();
            let mut out = String::new();
            r.read_to_string(&mut out).unwrap();
            let _ = tx.send(out);
        });
        let mut w = open_output_fifo(&fifo, Duration::from_secs(10)).unwrap();
        w.write_all(b"hi\n").unwrap();
        drop(w);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).as_deref(),
            Ok("hi\n"),
            "the reader never saw the end of the output"
        );
    }

    #[test]
    fn without_a_reader_the_output_opens_after_the_wait() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let start = Instant::now();
        let mut w = open_output_fifo(&fifo, Duration::from_millis(50)).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(50));
        w.write_all(b"buffered").unwrap();
    }

    #[test]
    fn stdin_ends_on_close() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("in");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let io = ProcessIo::open(fifo.to_str().unwrap(), "", "", false, "c", "ns").unwrap();
        let mut w = OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(b"hello").unwrap();
        let mut r = File::from(io.stdio.stdin.as_ref().unwrap().try_clone().unwrap());
        let mut buf = [0u8; 5];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        io.close_stdin();
        drop(io);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
}

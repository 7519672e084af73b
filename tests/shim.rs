//! containerd drives cryo's own shim, `containerd-shim-cryo-v2` (runtime type
//! `io.containerd.cryo.v2`), end to end: a private containerd (Debian's 1.6, and 2.x where the
//! newer references are installed) with its own root, state and sockets, a busybox image
//! imported with umoci, and `ctr` for every task call.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::clients::*;
use common::*;

const RUNTIME: &str = "io.containerd.cryo.v2";

/// The shim binary, built beside `cryo` by `cargo build --workspace` (scripts/test does).
fn shim_bin() -> PathBuf {
    let p = cryo_bin().with_file_name("containerd-shim-cryo-v2");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

struct Shimmed {
    c: Containerd,
    image: String,
    tag: String,
}

impl Shimmed {
    /// A containerd that finds the cryo shim (and `cryo` beside it) first on PATH, with the
    /// busybox image imported; `None` (after printing why) where a test cannot run.
    fn start(containerd: &Path, ctr: &Path, tag: &str) -> Option<Shimmed> {
        if !nix_is_root() {
            println!("skipped: needs root");
            return None;
        }
        if which("umoci").is_none() {
            println!("skipped: umoci is not installed (needed to build the image)");
            return None;
        }
        let shim = shim_bin();
        let ns = format!("cryo-shim-{}-{tag}", std::process::id());
        let c = Containerd::start(containerd, ctr, shim.parent(), &ns);
        let image = c.import_busybox();
        Some(Shimmed {
            c,
            image,
            tag: tag.to_string(),
        })
    }

    /// A container id unique to this test process and test: cryo's state root is shared.
    fn id(&self, name: &str) -> String {
        format!("{name}-{}-{}", self.tag, std::process::id())
    }

    /// `ctr run --runtime io.containerd.cryo.v2 [flags] IMAGE ID ARGS...`.
    fn run(&mut self, flags: &[&str], id: &str, args: &[&str]) -> Out {
        self.c.ids.push(id.to_string());
        let fifo = self.c.fifo_dir();
        let mut a = vec!["run", "--runtime", RUNTIME, "--fifo-dir", &fifo];
        a.extend(flags);
        a.extend([self.image.as_str(), id]);
        a.extend(args);
        self.c.ctr(&a)
    }

    fn ctr_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.c.ctr);
        cmd.arg("-a")
            .arg(self.c.dir.path().join("c.sock"))
            .args(["-n", &self.c.ns]);
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.c.ctr(args);
        assert_eq!(
            o.code,
            0,
            "ctr {args:?}: {o}\ncontainerd log:\n{}",
            self.c.log()
        );
        o.stdout
    }

    /// The task's line in `ctr task ls`.
    fn task_line(&self, id: &str) -> Option<String> {
        self.ok(&["task", "ls"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .map(String::from)
    }

    fn wait_task_status(&self, id: &str, want: &str) {
        let start = Instant::now();
        loop {
            let line = self.task_line(id);
            if line.as_deref().is_some_and(|l| l.contains(want)) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{id} never became {want}: {line:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ctr events` into `file` (in the containerd's directory) until killed.
    fn events(&self, file: &str) -> (std::process::Child, PathBuf) {
        let path = self.c.dir.path().join(file);
        let child = self
            .ctr_cmd()
            .arg("events")
            .stdout(std::fs::File::create(&path).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // ctr subscribes asynchronously: give it a moment before the events it must see.
        std::thread::sleep(Duration::from_millis(200));
        (child, path)
    }

    /// The serving shims of this containerd's namespace.
    fn shim_pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-cryo-v2"));
            if is_shim && args.windows(2).any(|w| w[1] == self.c.ns.as_bytes()) {
                out.push(pid);
            }
        }
        out
    }

    fn wait_no_shim(&self) {
        let start = Instant::now();
        while !self.shim_pids().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the shim outlived its last container: {:?}",
                self.shim_pids()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `cryo state ID` under cryo's default root: the shim's containers are the CLI's.
fn cryo_state(id: &str) -> Value {
    let o = Command::new(cryo_bin())
        .args(["state", id])
        .output()
        .unwrap();
    assert!(o.status.success(), "cryo state {id}: {o:?}");
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The whole task API through `ctr`: foreground run with output and exit code, stdin,
/// a log file, a detached task with exec, ps, pause/resume, metrics, kill, delete, and the
/// shim gone after the last container.
fn shim_flow(containerd: &Path, ctr: &Path, tag: &str) {
    let Some(mut s) = Shimmed::start(containerd, ctr, tag) else {
        return;
    };
    // containerd's event stream, before and after its restart below.
    let mut events = vec![s.events("events-1.txt")];

    let fg = s.id("fg");
    let o = s.run(
        &["--rm"],
        &fg,
        &["sh", "-c", "echo hi; echo oops >&2; exit 3"],
    );
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (3, "hi\n"),
        "{o}\n{}",
        s.c.log()
    );
    assert!(o.stderr.contains("oops"), "{o}");

    // stdin reaches the process and its end closes it.
    let cat = s.id("cat");
    s.c.ids.push(cat.clone());
    let fifo = s.c.fifo_dir();
    let mut child = s
        .ctr_cmd()
        .args(["run", "--rm", "--runtime", RUNTIME, "--fifo-dir", &fifo])
        .args([s.image.as_str(), &cat, "sh", "-c", "cat; echo end"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from stdin\nend\n",
        "{out:?}"
    );

    // A file:// log URI takes stdout and stderr.
    let logged = s.id("logged");
    let log = s.c.dir.path().join("logs/task.log");
    let uri = format!("file://{}", log.display());
    let o = s.run(
        &["--rm", "--log-uri", &uri],
        &logged,
        &["sh", "-c", "echo to-log; echo err-log >&2"],
    );
    assert_eq!(o.code, 0, "{o}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "to-log\nerr-log\n");

    // A binary:// logging driver gets the output through its fds 3 and 4.
    let logdir = s.c.dir.path().join("binlog");
    std::fs::create_dir_all(&logdir).unwrap();
    let logger = logdir.join("logger.sh");
    std::fs::write(
        &logger,
        format!(
            "#!/bin/sh\nexec 5>&-\ncat <&3 > {d}/out.log &\ncat <&4 > {d}/err.log\nwait\n",
            d = logdir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let binlogged = s.id("binlog");
    let uri = format!("binary://{}?tag=x", logger.display());
    let o = s.run(
        &["--rm", "--log-uri", &uri],
        &binlogged,
        &["sh", "-c", "echo bin-out; echo bin-err >&2"],
    );
    assert_eq!(o.code, 0, "{o}");
    let start = Instant::now();
    loop {
        let out = std::fs::read_to_string(logdir.join("out.log")).unwrap_or_default();
        let err = std::fs::read_to_string(logdir.join("err.log")).unwrap_or_default();
        if out == "bin-out\n" && err == "bin-err\n" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "logging binary got {out:?} / {err:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let bg = s.id("bg");
    let o = s.run(&["-d"], &bg, &["sleep", "1000"]);
    assert_eq!(o.code, 0, "{o}\n{}", s.c.log());
    s.wait_task_status(&bg, "RUNNING");
    let line = s.task_line(&bg).unwrap();
    let task_pid: i64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let st = cryo_state(&bg);
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["pid"].as_i64(), Some(task_pid));
    assert_eq!(s.shim_pids().len(), 1, "one shim per task");

    let o = s.c.ctr(&[
        "task",
        "exec",
        "--fifo-dir",
        &fifo,
        "--exec-id",
        "x1",
        &bg,
        "sh",
        "-c",
        "echo ex-$$; exit 4",
    ]);
    assert_eq!(o.code, 4, "{o}\n{}", s.c.log());
    assert!(o.stdout.starts_with("ex-"), "{o}");

    // containerd restarts: the shim keeps its task and containerd finds it again.
    s.c.restart();
    events.push(s.events("events-2.txt"));
    s.wait_task_status(&bg, "RUNNING");
    let o = s.c.ctr(&[
        "task",
        "exec",
        "--fifo-dir",
        &fifo,
        "--exec-id",
        "x2",
        &bg,
        "echo",
        "after-restart",
    ]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "after-restart\n"), "{o}");

    let ps = s.ok(&["task", "ps", &bg]);
    assert!(ps.contains(&task_pid.to_string()), "{ps}");

    s.ok(&["task", "pause", &bg]);
    s.wait_task_status(&bg, "PAUSED");
    assert_eq!(cryo_state(&bg)["status"], "paused");
    s.ok(&["task", "resume", &bg]);
    s.wait_task_status(&bg, "RUNNING");

    let metrics = s.ok(&["task", "metrics", &bg]);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pids.current") && l.contains('1')),
        "{metrics}"
    );

    // A bad request gets a clear error, and the shim keeps serving.
    let o =
        s.c.ctr(&["task", "exec", "--exec-id", "x1", &bg, "nonexistent-binary"]);
    assert_ne!(o.code, 0, "{o}");
    s.wait_task_status(&bg, "RUNNING");

    // sleep as pid 1 ignores SIGTERM: KILL it.
    s.ok(&["task", "kill", "-s", "KILL", &bg]);
    s.wait_task_status(&bg, "STOPPED");
    let o = s.c.ctr(&["task", "kill", &bg]);
    assert_ne!(o.code, 0, "killing a stopped task: {o}");
    s.ok(&["task", "delete", &bg]);
    s.ok(&["container", "rm", &bg]);
    assert!(s.ok(&["task", "ls", "-q"]).trim().is_empty());
    s.wait_no_shim();
    let o = Command::new(cryo_bin())
        .args(["state", &bg])
        .output()
        .unwrap();
    assert!(!o.status.success(), "cryo still has {bg}");

    // Every task event reached containerd, those after its restart included.
    let mut seen = String::new();
    for (mut child, path) in events {
        let _ = child.kill();
        let _ = child.wait();
        seen.push_str(&std::fs::read_to_string(path).unwrap_or_default());
    }
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(
            seen.lines().any(|l| l.contains(topic) && l.contains(&bg)),
            "no {topic} for {bg} in containerd's events:\n{seen}"
        );
    }
}

/// `ctr run -t`: the process gets a terminal, its output comes back through the shim.
fn shim_terminal(containerd: &Path, ctr: &Path, tag: &str) {
    let Some(mut s) = Shimmed::start(containerd, ctr, tag) else {
        return;
    };
    let id = s.id("tty");
    s.c.ids.push(id.clone());
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = || Stdio::from(pty.slave.try_clone().unwrap());
    let fifo = s.c.fifo_dir();
    let mut cmd = s.ctr_cmd();
    cmd.args([
        "run",
        "--rm",
        "-t",
        "--runtime",
        RUNTIME,
        "--fifo-dir",
        &fifo,
    ])
    .args([
        s.image.as_str(),
        &id,
        "sh",
        "-c",
        "tty; read x; echo got-$x; exit 5",
    ])
    .stdin(slave())
    .stdout(slave())
    .stderr(slave());
    // SAFETY: setsid in the child before exec, so that the pty can become its terminal.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        })
    };
    let mut child = cmd.spawn().unwrap();
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let fd = master.as_raw_fd();
    // SAFETY: fcntl on our own fd.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
    let mut out = Vec::new();
    let mut sent = false;
    let start = Instant::now();
    let status = loop {
        let mut buf = [0u8; 4096];
        match master.read(&mut buf) {
            Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
        if !sent && String::from_utf8_lossy(&out).contains("/dev/pts/") {
            master.write_all(b"ping\n").unwrap();
            sent = true;
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ctr run -t hung; output so far: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    // Whatever is still buffered.
    let mut buf = [0u8; 4096];
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status.code(), Some(5), "{text}");
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("got-ping"), "{text}");
}

/// A shell (the container's pid 1) that counts in memory every 50 ms and writes its count to
/// /tmp/count when asked (SIGUSR1). Not on every step: a checkpoint taken while the shell
/// holds the file open cannot be restored where the file is missing (a snapshot holds no
/// rootfs changes; `ctr container checkpoint` without `--rw` neither).
const COUNTER: &str =
    "trap 'echo $i > /tmp/count' USR1; i=0; while true; do i=$((i+1)); sleep 0.05; done";

/// Asks a COUNTER task for its count and prints it once the shell has written it (again and
/// again: a shell that has yet to set its trap ignores the signal, as a pid 1 does).
const READ_COUNT: &str = "rm -f /tmp/count; n=0; while [ ! -s /tmp/count ] && [ $n -lt 100 ]; \
    do kill -USR1 1; sleep 0.02; n=$((n+1)); done; cat /tmp/count 2>/dev/null; true";

/// The counter a COUNTER task has reached (read through an exec; a read that catches the
/// file being written is tried again).
fn count(s: &Shimmed, id: &str) -> u64 {
    let fifo = s.c.fifo_dir();
    let mut last = String::new();
    for i in 0..20 {
        let exec_id = format!("count-{i}");
        let out = s.ok(&[
            "task",
            "exec",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            &exec_id,
            id,
            "sh",
            "-c",
            READ_COUNT,
        ]);
        if let Ok(n) = out.trim().parse() {
            return n;
        }
        last = out;
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{id}: /tmp/count holds {last:?}")
}

/// Waits until the counter of `id` passes `floor`: the restored tree runs and keeps its state.
fn assert_counts_past(s: &Shimmed, id: &str, floor: u64) {
    let start = Instant::now();
    loop {
        let n = count(s, id);
        if n > floor {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{id}: counter stuck at {n} (checkpointed at {floor})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ctr container checkpoint --task` and `ctr container restore --live`: CRIU images through
/// containerd's content store, the restored task's counter going on from where it was.
fn shim_checkpoint_restore(containerd: &Path, ctr: &Path, tag: &str) {
    let Some(mut s) = Shimmed::start(containerd, ctr, tag) else {
        return;
    };
    let id = s.id("ck");
    let o = s.run(&["-d"], &id, &["sh", "-c", COUNTER]);
    assert_eq!(o.code, 0, "{o}");
    s.wait_task_status(&id, "RUNNING");
    assert_counts_past(&s, &id, 3);
    let image = format!("localhost/{id}:checkpoint");
    s.ok(&["container", "checkpoint", "--task", &id, &image]);
    // The checkpoint left the task running.
    s.wait_task_status(&id, "RUNNING");
    let at = count(&s, &id);
    s.ok(&["task", "kill", "-s", "KILL", &id]);
    s.wait_task_status(&id, "STOPPED");
    s.ok(&["task", "delete", &id]);
    s.ok(&["container", "rm", &id]);

    s.ok(&["container", "restore", "--live", &id, &image]);
    s.wait_task_status(&id, "RUNNING");
    assert_counts_past(&s, &id, at);
    s.ok(&["task", "kill", "-s", "KILL", &id]);
    s.wait_task_status(&id, "STOPPED");
    s.ok(&["task", "delete", &id]);
    s.ok(&["container", "rm", &id]);
    s.wait_no_shim();
}

/// The serverless path: a warmed-up task is checkpointed into the store by name while it
/// runs (`cryo checkpoint --snapshot`, on the shim's container), then three replicas start
/// from that snapshot through the `io.cryo.snapshot` annotation, lazily; a missing snapshot
/// is a clear error and the shim keeps serving.
fn shim_snapshot_start(containerd: &Path, ctr: &Path, tag: &str) {
    let store = tempfile::Builder::new()
        .prefix("cryo-shim-store-")
        .tempdir()
        .unwrap();
    if !nix_is_root() {
        println!("skipped: needs root");
        return;
    }
    let shim = shim_bin();
    let ns = format!("cryo-shim-{}-{tag}", std::process::id());
    let c = Containerd::start_with_env(
        containerd,
        ctr,
        shim.parent(),
        &ns,
        &[("CRYO_STORE", store.path())],
    );
    let image = c.import_busybox();
    let mut s = Shimmed {
        c,
        image,
        tag: tag.to_string(),
    };
    let warm = s.id("warm");
    let o = s.run(&["-d"], &warm, &["sh", "-c", COUNTER]);
    assert_eq!(o.code, 0, "{o}");
    assert_counts_past(&s, &warm, 3);
    let name = format!("warm-{}", std::process::id());
    let o = Command::new(cryo_bin())
        .args(["checkpoint", "--store"])
        .arg(store.path())
        .args(["--leave-running", "--snapshot", &name, &warm])
        .output()
        .unwrap();
    assert!(o.status.success(), "cryo checkpoint: {o:?}");
    let at = count(&s, &warm);
    s.wait_task_status(&warm, "RUNNING");

    let annotation = format!("io.cryo.snapshot={name}");
    let replicas: Vec<String> = (0..3).map(|i| s.id(&format!("replica{i}"))).collect();
    for r in &replicas {
        let o = s.run(&["-d", "--annotation", &annotation], r, &["sh"]);
        assert_eq!(o.code, 0, "{r}: {o}\n{}", s.c.log());
    }
    for r in &replicas {
        s.wait_task_status(r, "RUNNING");
        assert_counts_past(&s, r, at.saturating_sub(100).max(3));
        assert_eq!(cryo_state(r)["status"], "running");
    }
    assert_counts_past(&s, &warm, at);

    let missing = s.id("missing");
    let o = s.run(
        &["-d", "--annotation", "io.cryo.snapshot=no-such-snapshot"],
        &missing,
        &["sh"],
    );
    assert_ne!(o.code, 0, "{o}");
    assert!(o.stderr.contains("no-such-snapshot"), "{o}");
    for r in &replicas {
        s.wait_task_status(r, "RUNNING");
    }
}

/// A task killed by its memory limit produces `/tasks/oom` on containerd's event stream.
fn shim_oom(containerd: &Path, ctr: &Path, tag: &str) {
    let Some(mut s) = Shimmed::start(containerd, ctr, tag) else {
        return;
    };
    let (mut events, events_out) = s.events("events.txt");
    let id = s.id("oom");
    let o = s.run(
        &["--rm", "--memory-limit", "16777216"],
        &id,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=64M count=1; echo after-$?",
        ],
    );
    assert_eq!(o.code, 0, "{o}");
    assert!(o.stdout.contains("after-137"), "dd was not OOM-killed: {o}");
    let start = Instant::now();
    let seen = loop {
        let text = std::fs::read_to_string(&events_out).unwrap_or_default();
        if text.contains("/tasks/oom") || start.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = events.kill();
    let _ = events.wait();
    assert!(
        seen.lines()
            .any(|l| l.contains("/tasks/oom") && l.contains(&id)),
        "no /tasks/oom for {id}:\n{seen}"
    );
}

#[test]
fn containerd_1_6_through_the_cryo_shim() {
    if let Some((c, t)) = containerd_1_6() {
        shim_flow(&c, &t, "v1");
    }
}

#[test]
fn containerd_2_through_the_cryo_shim() {
    if let Some((c, t)) = containerd_2() {
        shim_flow(&c, &t, "v2");
    }
}

#[test]
fn terminal_through_the_cryo_shim() {
    if let Some((c, t)) = containerd_1_6() {
        shim_terminal(&c, &t, "tty");
    }
}

#[test]
fn oom_event_through_the_cryo_shim() {
    if let Some((c, t)) = containerd_1_6() {
        shim_oom(&c, &t, "oom");
    }
}

#[test]
fn checkpoint_and_restore_through_the_cryo_shim() {
    if let Some((c, t)) = containerd_1_6() {
        shim_checkpoint_restore(&c, &t, "ckpt");
    }
}

#[test]
fn snapshot_start_through_the_cryo_shim() {
    if let Some((c, t)) = containerd_1_6() {
        shim_snapshot_start(&c, &t, "snap");
    }
}

//! Real clients drive `cryo` as their OCI runtime: podman (`--runtime`), and containerd 1.6
//! (Debian's) and 2.1 (the newer reference, if present) through the runc shim with
//! `ctr run --runc-binary`. Each test starts its client with private storage, state and sockets
//! in a tempdir, and its guard kills, unmounts and removes whatever the client left.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any single client command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with stdout/stderr in files (a detached container inherits them: a pipe would
/// never close), killing it after CMD_TIMEOUT.
fn exec(cmd: &mut Command) -> Out {
    use std::io::{Read, Seek};
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > CMD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |f: &mut std::fs::File| {
        let mut s = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    };
    let o = Out {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: read(&mut out),
        stderr: read(&mut err),
    };
    assert!(status.is_some(), "{cmd:?} timed out\n{o}");
    o
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Lazily unmounts every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) {
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
        let c = std::ffi::CString::new(p).unwrap();
        // SAFETY: umount2 on a NUL-terminated path; failure is harmless here.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Removes the cgroup `rel` (and the given children first) from every hierarchy.
fn remove_cgroup(rel: &str, children: &[&str]) {
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

/// Asserts that `cryo --root ROOT state ID` sees a running container: proof that the client
/// went through cryo (runc's state.json is not cryo's).
fn assert_cryo_runs(root: &Path, id: &str) -> i64 {
    let o = exec(
        Command::new(cryo_bin())
            .arg("--root")
            .arg(root)
            .args(["state", id]),
    );
    assert_eq!(o.code, 0, "cryo state {id} under {}: {o}", root.display());
    let st: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(st["status"], "running", "{st}");
    st["pid"].as_i64().unwrap()
}

// ---------------------------------------------------------------------------------------------
// podman

struct Podman {
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl Podman {
    /// podman with storage, run root, tmpdir and events in the tempdir, cgroupfs, cryo.
    fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("--runtime")
            .arg(cryo_bin());
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        exec(self.cmd().args(args))
    }

    /// `podman run` flags: no network (netavark/CNI would leave a bridge and firewall rules),
    /// our own cgroup parent, rlimits within this machine's hard limits (podman's default
    /// nofile/nproc of 1048576 needs CAP_SYS_RESOURCE, which this root lacks: runc fails the
    /// same way), and the rootfs copy.
    fn run_flags(&self) -> Vec<String> {
        [
            "--network",
            "none",
            "--cgroup-parent",
            &self.cgroup_parent,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            "--rootfs",
            self.dir.path().join("rootfs").to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = exec(self.cmd().args(["rm", "-f", "-t", "0", "-a"]));
        unmount_under(self.dir.path());
        remove_cgroup(&self.cgroup_parent, &["conmon"]);
    }
}

#[test]
fn podman_runs_cryo() {
    skip_unless_root!();
    if which("podman").is_none() {
        println!("skipped: podman is not installed");
        return;
    }
    let rootfs = rootfs();
    let dir = tempfile::Builder::new()
        .prefix("cryo-podman-")
        .tempdir()
        .unwrap();
    // podman writes into the rootfs (/etc/hosts, /etc/resolv.conf, /run/.containerenv
    // targets): give it a copy.
    let st = Command::new("cp")
        .arg("-a")
        .arg(rootfs)
        .arg(dir.path().join("rootfs"))
        .status()
        .unwrap();
    assert!(st.success());
    let p = Podman {
        dir,
        cgroup_parent: format!("/cryo-test-podman-{}", std::process::id()),
    };
    let flags = p.run_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    // Foreground: output and exit code come through.
    let mut args = vec!["run", "--rm"];
    args.extend(&flags);
    args.extend(["/bin/sh", "-c", "echo hi; exit 3"]);
    let o = p.run(&args);
    assert_eq!((o.code, o.stdout.as_str()), (3, "hi\n"), "{o}");

    // Detached, then exec, stop, rm.
    let name = format!("cryo-{}", std::process::id());
    let mut args = vec!["run", "-d", "--name", &name];
    args.extend(&flags);
    args.extend(["sleep", "1000"]);
    let o = p.run(&args);
    assert_eq!(o.code, 0, "{o}");
    let id = o.stdout.trim().to_string();
    assert_eq!(id.len(), 64, "{o}");
    // podman passes no --root: cryo's default state root holds the container.
    assert_cryo_runs(Path::new("/run/cryo"), &id);

    let o = p.run(&["exec", &name, "sh", "-c", "echo in-$(hostname); exit 5"]);
    assert_eq!(o.code, 5, "{o}");
    assert_eq!(o.stdout, format!("in-{}\n", &id[..12]), "{o}");

    let o = p.run(&["stop", "-t", "1", &name]);
    assert_eq!(o.code, 0, "{o}");
    let o = p.run(&["ps", "-a", "--format", "{{.Status}}"]);
    assert!(o.stdout.starts_with("Exited"), "{o}");
    let o = p.run(&["rm", &name]);
    assert_eq!(o.code, 0, "{o}");
    let o = p.run(&["ps", "-a", "-q"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, ""), "{o}");
    // cryo's state is gone too.
    let o = exec(Command::new(cryo_bin()).args(["state", &id]));
    assert_eq!(o.code, 1, "{o}");
}

// ---------------------------------------------------------------------------------------------
// containerd

/// A private containerd: its own root, state, sockets and opt dir under a tempdir.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    ctr: PathBuf,
    ns: String,
    ids: Vec<String>,
}

impl Containerd {
    /// Starts `containerd` (with `bin_dir` first on PATH, so that it finds the shim beside it)
    /// and waits for its socket.
    fn start(containerd: &Path, ctr: &Path, bin_dir: Option<&Path>, ns: &str) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("cryo-ctrd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
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
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
            opt = d.join("opt").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let mut cmd = Command::new(containerd);
        cmd.arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(b) = bin_dir {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![b.to_path_buf()];
            paths.extend(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(paths).unwrap());
        }
        let child = cmd.spawn().unwrap();
        let c = Containerd {
            dir,
            child,
            ctr: ctr.to_path_buf(),
            ns: ns.to_string(),
            ids: Vec::new(),
        };
        let start = Instant::now();
        loop {
            if c.dir.path().join("c.sock").exists() && c.ctr(&["version"]).code == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "containerd did not come up:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Out {
        exec(
            Command::new(&self.ctr)
                .arg("-a")
                .arg(self.dir.path().join("c.sock"))
                .args(["-n", &self.ns])
                .args(args),
        )
    }

    fn fifo_dir(&self) -> String {
        self.dir.path().join("fifo").to_str().unwrap().to_string()
    }

    /// The `--root` the runc shim hands cryo (`--runc-root`, then the namespace).
    fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc-root")
    }

    /// `ctr run` with cryo as the runc binary.
    fn run(&mut self, flags: &[&str], image: &str, id: &str, args: &[&str]) -> Out {
        self.ids.push(id.to_string());
        let fifo = self.fifo_dir();
        let cryo = cryo_bin();
        let root = self.runc_root();
        let mut a = vec!["run", "--fifo-dir", &fifo];
        a.extend(["--runc-binary", cryo.to_str().unwrap()]);
        a.extend(["--runc-root", root.to_str().unwrap()]);
        a.extend(flags);
        a.extend([image, id]);
        a.extend(args);
        self.ctr(&a)
    }

    /// Builds a busybox OCI image with umoci and imports it; returns its name.
    fn import_busybox(&self) -> String {
        let d = self.dir.path();
        let layout = d.join("oci");
        let image = format!("{}:latest", layout.display());
        let steps: [Vec<&std::ffi::OsStr>; 4] = [
            vec!["init".as_ref(), "--layout".as_ref(), layout.as_os_str()],
            vec!["new".as_ref(), "--image".as_ref(), image.as_ref()],
            vec![
                "insert".as_ref(),
                "--image".as_ref(),
                image.as_ref(),
                rootfs().as_os_str(),
                "/".as_ref(),
            ],
            vec![
                "config".as_ref(),
                "--image".as_ref(),
                image.as_ref(),
                "--config.cmd".as_ref(),
                "sh".as_ref(),
            ],
        ];
        for s in steps {
            let o = exec(Command::new("umoci").args(&s));
            assert_eq!(o.code, 0, "umoci {s:?}: {o}");
        }
        let tar = d.join("busybox.tar");
        let o = exec(
            Command::new("tar")
                .arg("-C")
                .arg(&layout)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        );
        assert_eq!(o.code, 0, "tar: {o}");
        let o = self.ctr(&[
            "image",
            "import",
            "--base-name",
            "localhost/busybox",
            tar.to_str().unwrap(),
        ]);
        assert_eq!(o.code, 0, "ctr image import: {o}");
        "localhost/busybox:latest".to_string()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Whatever a failed test left: kill and delete its tasks, so the shims exit.
        for id in std::mem::take(&mut self.ids) {
            let _ = self.ctr(&["task", "kill", "-s", "KILL", &id]);
            for _ in 0..50 {
                if self.ctr(&["task", "delete", &id]).code == 0
                    || self.ctr(&["task", "ls", "-q"]).stdout.trim().is_empty()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.ctr(&["container", "rm", &id]);
        }
        // SAFETY: kill on our own child's pid.
        unsafe {
            libc::kill(
                i32::try_from(self.child.id()).unwrap_or(i32::MAX),
                libc::SIGTERM,
            )
        };
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        unmount_under(self.dir.path());
        // ctr's default cgroups path is /NAMESPACE/ID: the namespace's cgroup stays behind.
        remove_cgroup(&self.ns, &[]);
    }
}

/// The containerd flow: run in the foreground (output, exit code), run -d, exec, kill, delete.
fn containerd_flow(containerd: &Path, ctr: &Path, bin_dir: Option<&Path>, tag: &str) {
    if which("umoci").is_none() {
        println!("skipped: umoci is not installed (needed to build the image)");
        return;
    }
    let ns = format!("cryo-test-{}-{tag}", std::process::id());
    let mut c = Containerd::start(containerd, ctr, bin_dir, &ns);
    let image = c.import_busybox();

    let o = c.run(&["--rm"], &image, "fg", &["sh", "-c", "echo hi; exit 3"]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (3, "hi\n"),
        "{o}\ncontainerd log:\n{}",
        c.log()
    );

    let o = c.run(&["-d"], &image, "bg", &["sleep", "1000"]);
    assert_eq!(o.code, 0, "{o}\ncontainerd log:\n{}", c.log());
    let o = c.ctr(&["task", "ls"]);
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with("bg "))
        .unwrap_or_else(|| panic!("bg not in task ls: {o}"))
        .to_string();
    assert!(line.contains("RUNNING"), "{line}");
    let task_pid: i64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    // The shim ran cryo: cryo reads the state under the root the shim gave it.
    let pid = assert_cryo_runs(&c.runc_root().join(&ns), "bg");
    assert_eq!(pid, task_pid);

    let fifo = c.fifo_dir();
    let o = c.ctr(&[
        "task",
        "exec",
        "--fifo-dir",
        &fifo,
        "--exec-id",
        "x1",
        "bg",
        "sh",
        "-c",
        "echo ex-$$; exit 4",
    ]);
    assert_eq!(o.code, 4, "{o}\ncontainerd log:\n{}", c.log());
    assert!(o.stdout.starts_with("ex-"), "{o}");

    // sleep as pid 1 ignores SIGTERM (as with runc): KILL it.
    let o = c.ctr(&["task", "kill", "-s", "KILL", "bg"]);
    assert_eq!(o.code, 0, "{o}");
    let start = Instant::now();
    loop {
        let o = c.ctr(&["task", "ls"]);
        if o.stdout
            .lines()
            .any(|l| l.starts_with("bg ") && l.contains("STOPPED"))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never stopped: {o}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = c.ctr(&["task", "delete", "bg"]);
    assert_eq!(o.code, 0, "{o}");
    let o = c.ctr(&["container", "rm", "bg"]);
    assert_eq!(o.code, 0, "{o}");
    assert!(c.ctr(&["task", "ls", "-q"]).stdout.trim().is_empty());
    assert!(c.ctr(&["container", "ls", "-q"]).stdout.trim().is_empty());
    assert!(!c.runc_root().join(&ns).join("bg").exists());
}

#[test]
fn containerd_1_6_runs_cryo() {
    skip_unless_root!();
    let (Some(containerd), Some(ctr)) = (which("containerd"), which("ctr")) else {
        println!("skipped: containerd/ctr are not installed");
        return;
    };
    if which("containerd-shim-runc-v2").is_none() {
        println!("skipped: containerd-shim-runc-v2 is not installed");
        return;
    }
    containerd_flow(&containerd, &ctr, None, "v1");
}

#[test]
fn containerd_2_runs_cryo() {
    skip_unless_root!();
    let bin = Path::new("/var/cache/cryo/refs/bin");
    let need = ["containerd", "ctr", "containerd-shim-runc-v2"];
    if let Some(missing) = need.iter().find(|b| !bin.join(b).is_file()) {
        println!(
            "skipped: {} is absent (the newer references: see DESIGN.md)",
            bin.join(missing).display()
        );
        return;
    }
    containerd_flow(&bin.join("containerd"), &bin.join("ctr"), Some(bin), "v2");
}

//! Real clients with private state: a containerd with its own root, state and sockets, and the
//! helpers the client tests share (commands with a timeout, cleanup of mounts and cgroups).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// How long any single client command may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
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
pub fn exec(cmd: &mut Command) -> Out {
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

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Lazily unmounts every mount point under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
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
pub fn remove_cgroup(rel: &str, children: &[&str]) {
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
pub fn assert_cryo_runs(root: &Path, id: &str) -> i64 {
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
// containerd

/// A private containerd: its own root, state, sockets and opt dir under a tempdir.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub child: Child,
    /// How to start it again ([`Containerd::restart`]).
    command: Command,
    pub ctr: PathBuf,
    pub ns: String,
    pub ids: Vec<String>,
}

impl Containerd {
    /// Starts `containerd` (with `bin_dir` first on PATH, so that it finds the shim beside it)
    /// and waits for its socket.
    pub fn start(containerd: &Path, ctr: &Path, bin_dir: Option<&Path>, ns: &str) -> Containerd {
        Containerd::start_with_env(containerd, ctr, bin_dir, ns, &[])
    }

    /// [`Containerd::start`] with extra environment (its shims inherit it).
    pub fn start_with_env(
        containerd: &Path,
        ctr: &Path,
        bin_dir: Option<&Path>,
        ns: &str,
        env: &[(&str, &Path)],
    ) -> Containerd {
        Containerd::start_configured(containerd, ctr, bin_dir, ns, env, None)
    }

    /// A containerd with its CRI plugin on (`version = 2` config: containerd 1.6 and 1.7).
    /// `cri` gets the containerd's directory and returns the plugin's configuration (TOML
    /// tables under `[plugins."io.containerd.grpc.v1.cri"]`); CRI's gRPC service listens on
    /// the containerd's socket, its containers live in namespace `k8s.io`.
    pub fn start_cri(
        containerd: &Path,
        ctr: &Path,
        bin_dir: Option<&Path>,
        env: &[(&str, &Path)],
        cri: &dyn Fn(&Path) -> String,
    ) -> Containerd {
        Containerd::start_configured(containerd, ctr, bin_dir, "k8s.io", env, Some(cri))
    }

    fn start_configured(
        containerd: &Path,
        ctr: &Path,
        bin_dir: Option<&Path>,
        ns: &str,
        env: &[(&str, &Path)],
        cri: Option<&dyn Fn(&Path) -> String>,
    ) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("cryo-ctrd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let (disabled, cri_config) = match cri {
            Some(f) => (r#""io.containerd.nri.v1.nri""#, f(d)),
            None => (
                r#""io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.nri.v1.nri""#,
                String::new(),
            ),
        };
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [{disabled}]
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
{cri_config}"#,
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
            .stderr(log)
            .envs(env.iter().copied());
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
            command: cmd,
            ctr: ctr.to_path_buf(),
            ns: ns.to_string(),
            ids: Vec::new(),
        };
        c.wait_up();
        c
    }

    fn wait_up(&self) {
        let start = Instant::now();
        loop {
            if self.dir.path().join("c.sock").exists() && self.ctr(&["version"]).code == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "containerd did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops containerd (SIGTERM, as a service manager does) and starts it again on the same
    /// root, state and sockets: its shims keep running and it reconnects to them.
    pub fn restart(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe {
            libc::kill(
                i32::try_from(self.child.id()).unwrap_or(i32::MAX),
                libc::SIGTERM,
            )
        };
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.dir.path().join("c.sock"));
        self.child = self.command.spawn().unwrap();
        self.wait_up();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, args: &[&str]) -> Out {
        exec(
            Command::new(&self.ctr)
                .arg("-a")
                .arg(self.dir.path().join("c.sock"))
                .args(["-n", &self.ns])
                .args(args),
        )
    }

    pub fn fifo_dir(&self) -> String {
        self.dir.path().join("fifo").to_str().unwrap().to_string()
    }

    /// The `--root` the runc shim hands cryo (`--runc-root`, then the namespace).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc-root")
    }

    /// `ctr run` with cryo as the runc binary.
    pub fn run(&mut self, flags: &[&str], image: &str, id: &str, args: &[&str]) -> Out {
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
    pub fn import_busybox(&self) -> String {
        self.import_image("busybox", &["--config.cmd", "sh"])
    }

    /// Builds an OCI image `localhost/NAME:latest` of the busybox rootfs with umoci, `config`
    /// being `umoci config` flags (`--config.cmd sh`), and imports it; returns its name.
    pub fn import_image(&self, name: &str, config: &[&str]) -> String {
        let d = self.dir.path();
        let layout = d.join(format!("oci-{name}"));
        let image = format!("{}:latest", layout.display());
        let mut configure = vec!["config", "--image", &image];
        configure.extend(config);
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
            configure.iter().map(std::ffi::OsStr::new).collect(),
        ];
        for s in steps {
            let o = exec(Command::new("umoci").args(&s));
            assert_eq!(o.code, 0, "umoci {s:?}: {o}");
        }
        let tar = d.join(format!("{name}.tar"));
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
            &format!("localhost/{name}"),
            tar.to_str().unwrap(),
        ]);
        assert_eq!(o.code, 0, "ctr image import: {o}");
        format!("localhost/{name}:latest")
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

/// Debian's containerd and ctr (1.6) on PATH, or None after saying "skipped:".
pub fn containerd_1_6() -> Option<(PathBuf, PathBuf)> {
    match (which("containerd"), which("ctr")) {
        (Some(c), Some(t)) => Some((c, t)),
        _ => {
            println!("skipped: containerd/ctr are not installed");
            None
        }
    }
}

/// containerd 2.x and its ctr from the newer references (DESIGN.md; its CRI split into
/// `io.containerd.cri.v1.runtime` and `.images` migrates the `version = 2` configuration), or
/// None after saying "skipped:".
pub fn containerd_2() -> Option<(PathBuf, PathBuf)> {
    let bin = Path::new("/var/cache/cryo/refs/bin");
    for b in ["containerd", "ctr"] {
        if !bin.join(b).is_file() {
            println!(
                "skipped: {} is absent (the newer references: see DESIGN.md)",
                bin.join(b).display()
            );
            return None;
        }
    }
    Some((bin.join("containerd"), bin.join("ctr")))
}

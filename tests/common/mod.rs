//! Shared test harness: a busybox rootfs built once, per-test state roots and bundles, and a
//! thin wrapper over the `cryo` binary. Every test gets unique container ids and cgroup paths
//! so the suite runs in parallel.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub use serde_json::{json, Value};

pub mod clients;

/// Prints the skip line the suite summary collects, and tells the caller to return.
#[macro_export]
macro_rules! skip_unless_root {
    () => {
        if !nix_is_root() {
            println!("skipped: needs root");
            return;
        }
    };
}

pub fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn cryo_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cryo"))
}

/// A busybox rootfs shared by all tests (read-only in their configs).
pub fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("busybox-bundle");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/busybox-bundle.sh");
        let lock = dir.with_extension("lock");
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        let f = std::fs::File::create(&lock).unwrap();
        // SAFETY: flock on an fd we own; serializes test binaries building the same rootfs.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
        let st = Command::new(&script)
            .arg(&dir)
            .status()
            .expect("running examples/busybox-bundle.sh");
        assert!(st.success(), "busybox-bundle.sh failed");
        dir.join("rootfs")
    })
}

/// runc's default config with our busybox rootfs, `args` as the process.
pub fn base_config(args: &[&str]) -> Value {
    json!({
      "ociVersion": "1.0.2",
      "process": {
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {
          "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
          "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
          "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true
      },
      "root": {"path": rootfs(), "readonly": true},
      "hostname": "cryo",
      "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
      ],
      "linux": {
        "resources": {"devices": [{"allow": false, "access": "rwm"}]},
        "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
        "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
      }
    })
}

/// One test's world: a state root, a bundle dir, a unique id prefix.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub prefix: String,
}

impl Env {
    pub fn new(name: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("cryo-test-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("state");
        Env {
            root,
            dir,
            prefix: format!("{name}-{}", std::process::id()),
        }
    }

    /// A unique container id for this test.
    pub fn id(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }

    /// Writes `config` into a new bundle dir named `name`; returns its path.
    pub fn bundle(&self, name: &str, config: &Value) -> PathBuf {
        let b = self.dir.path().join(name);
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(
            b.join("config.json"),
            serde_json::to_vec_pretty(config).unwrap(),
        )
        .unwrap();
        b
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(cryo_bin());
        c.arg("--root").arg(&self.root);
        c
    }

    /// Runs cryo with `args`, capturing output. Output goes through files, not pipes: a
    /// container started by `create` or `run -d` inherits cryo's stdio (as with runc), and a
    /// pipe would stay open for as long as it lives.
    pub fn cryo(&self, args: &[&str]) -> Output {
        use std::io::{Read, Seek};
        let mut out = tempfile::tempfile().unwrap();
        let mut err = tempfile::tempfile().unwrap();
        let status = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap())
            .status()
            .unwrap();
        let read = |f: &mut std::fs::File| {
            let mut v = Vec::new();
            f.rewind().unwrap();
            f.read_to_end(&mut v).unwrap();
            v
        };
        Output {
            status,
            stdout: read(&mut out),
            stderr: read(&mut err),
        }
    }

    /// Runs cryo and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cryo(args);
        assert!(
            o.status.success(),
            "cryo {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `cryo run` of a bundle in the foreground: (exit code, stdout, stderr).
    pub fn run(&self, name: &str, config: &Value) -> (i32, String, String) {
        let b = self.bundle(name, config);
        let id = self.id(name);
        let o = self.cryo(&["run", "--bundle", b.to_str().unwrap(), &id]);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Runs `sh -c script` in a default container and returns stdout, asserting exit 0.
    pub fn sh(&self, name: &str, script: &str) -> String {
        let (code, out, err) = self.run(name, &base_config(&["sh", "-c", script]));
        assert_eq!(
            code, 0,
            "script failed: {script}\nstdout: {out}\nstderr: {err}"
        );
        out
    }

    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// Waits until the container's status is `want` (5 s at most).
    pub fn wait_status(&self, id: &str, want: &str) {
        for _ in 0..500 {
            if self.status(id) == want {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{id} never became {want}: {}", self.status(id));
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Leave nothing running: force-delete whatever this test left behind.
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.cmd().args(["delete", "--force", &id]).output();
            }
        }
    }
}

impl Env {
    /// `cryo run` of `config` in the foreground, asserting exit 0; returns stdout.
    pub fn run_ok(&self, name: &str, config: &Value) -> String {
        let (code, out, err) = self.run(name, config);
        assert_eq!(code, 0, "{name} failed\nstdout: {out}\nstderr: {err}");
        out
    }

    /// `cryo run -d` of `config`; returns (container id, init pid).
    pub fn detach(&self, name: &str, config: &Value) -> (String, i64) {
        let b = self.bundle(name, config);
        let id = self.id(name);
        self.ok(&["run", "-d", "--bundle", b.to_str().unwrap(), &id]);
        let pid = self.state(&id)["pid"].as_i64().unwrap();
        (id, pid)
    }

    /// `exec -d --pid-file` of `args` in container `id`; returns the pid from the pid file.
    pub fn exec_detached(&self, id: &str, args: &[&str]) -> i32 {
        let pidfile = self.dir.path().join(format!("exec-{}.pid", args.join("-")));
        let mut a = vec!["exec", "-d", "--pid-file", pidfile.to_str().unwrap(), id];
        a.extend_from_slice(args);
        self.ok(&a);
        std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Force-deletes a container and asserts it is gone.
    pub fn remove(&self, id: &str) {
        self.ok(&["delete", "--force", id]);
    }
}

/// `base_config` running `sh -c script`.
pub fn sh_config(script: &str) -> Value {
    base_config(&["sh", "-c", script])
}

/// A cgroupsPath unique to this test process and `name`.
pub fn cgroup_path(name: &str) -> String {
    format!("/cryo-test/{name}-{}", std::process::id())
}

/// Listens on a console socket and returns the pty master fd the runtime sends over
/// SCM_RIGHTS (runc's protocol: the pty's name as the data).
pub fn console_listener(path: &Path) -> std::thread::JoinHandle<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::net::UnixListener;

    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || -> OwnedFd {
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            std::os::fd::AsRawFd::as_raw_fd(&conn),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the fd was just received and nothing else owns it.
                return unsafe { OwnedFd::from_raw_fd(fds[0]) };
            }
        }
        panic!("no fd received on the console socket");
    })
}

/// Everything read from a pty master until the last slave closes, `\r\n` as `\n`.
pub fn read_pty(master: std::os::fd::OwnedFd) -> String {
    use std::io::Read;
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // EIO: the slave side closed once the process exited.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("reading the pty master: {e}"),
        }
    }
    String::from_utf8_lossy(&out).replace("\r\n", "\n")
}

impl Env {
    /// Like [`Env::cryo`], with `vars` added to cryo's environment.
    pub fn cryo_with_env(&self, args: &[&str], vars: &[(&str, &std::ffi::OsStr)]) -> Output {
        use std::io::{Read, Seek};
        let mut out = tempfile::tempfile().unwrap();
        let mut err = tempfile::tempfile().unwrap();
        let status = self
            .cmd()
            .args(args)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap())
            .status()
            .unwrap();
        let read = |f: &mut std::fs::File| {
            let mut v = Vec::new();
            f.rewind().unwrap();
            f.read_to_end(&mut v).unwrap();
            v
        };
        Output {
            status,
            stdout: read(&mut out),
            stderr: read(&mut err),
        }
    }
}

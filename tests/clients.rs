//! Real clients drive `cryo` as their OCI runtime: podman (`--runtime`), and containerd 1.6
//! (Debian's) and 2.1 (the newer reference, if present) through the runc shim with
//! `ctr run --runc-binary`. Each test starts its client with private storage, state and sockets
//! in a tempdir, and its guard kills, unmounts and removes whatever the client left.

mod common;

use common::clients::*;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

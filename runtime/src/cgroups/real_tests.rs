//! Tests against this host's real cgroup filesystems (as root; otherwise they print
//! `skipped:` and pass). Each test works under its own `cryo-test-<unique>` path and a
//! [`Guard`] kills its processes and removes its directories even when an assertion fails.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use oci_spec::runtime::LinuxResources;
use serde_json::json;

use super::layout::{Layout, Mode};
use super::{create, create_at, fs, FreezerState, UNIFIED};

fn resources(v: serde_json::Value) -> LinuxResources {
    serde_json::from_value(v).unwrap()
}

fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "cryo-test-{name}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Why these tests cannot run here, if they cannot.
fn skip_reason_v1() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    match Layout::from_proc() {
        Ok(l) if l.mode == Mode::V1 => None,
        Ok(_) => Some("this host uses cgroup v2".into()),
        Err(e) => Some(e.to_string()),
    }
}

/// Kills its children and removes its directories (deepest first) when dropped.
#[derive(Default)]
struct Guard {
    children: Vec<Child>,
    dirs: Vec<PathBuf>,
}

impl Guard {
    fn kill(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
        for d in self.dirs.iter().rev() {
            if let Err(e) = fs::remove_cgroup(d) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// A shell that waits for a line on stdin before running `script`, so it can be moved into
/// a cgroup first.
struct Shell {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

fn shell(guard: &mut Guard, script: &str) -> (i32, Shell) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("read _go; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let sh = Shell {
        stdin: child.stdin.take().unwrap(),
        stdout: BufReader::new(child.stdout.take().unwrap()),
    };
    guard.children.push(child);
    (pid, sh)
}

impl Shell {
    fn go(&mut self) {
        writeln!(self.stdin, "go").unwrap();
    }
    fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).unwrap();
        s.trim().to_string()
    }
}

fn sleep(guard: &mut Guard) -> i32 {
    let child = Command::new("sleep").arg("100").spawn().unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    guard.children.push(child);
    pid
}

const KMSG_PROBE: &str =
    "(exec 3</dev/null) && echo null-ok; (exec 3</dev/kmsg) 2>/dev/null && echo kmsg-ok || echo kmsg-denied";

/// Whether opening /dev/kmsg works outside any restriction (else the probe proves nothing).
fn kmsg_openable() -> bool {
    std::fs::File::open("/dev/kmsg").is_ok()
}

#[test]
fn v1_lifecycle() {
    if let Some(why) = skip_reason_v1() {
        println!("skipped: {why}");
        return;
    }
    let top = unique("v1");
    let m = create(Some(&format!("/{top}/inner")), "id").unwrap();
    let st = m.state();
    let mut guard = Guard::default();
    for mount in st.mounts.values() {
        guard.dirs.push(mount.join(&top));
    }
    let pid = sleep(&mut guard);
    m.apply(pid).unwrap();
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        proc_cgroup.contains(&format!(":memory:/{top}/inner")),
        "{proc_cgroup}"
    );
    assert!(
        proc_cgroup.contains(&format!(":cpuset:/{top}/inner")),
        "{proc_cgroup}"
    );

    let mem = st.paths["memory"].clone();
    let swap = mem.join("memory.memsw.limit_in_bytes").exists();
    let blkio = st
        .paths
        .get("blkio")
        .filter(|d| d.join("blkio.weight").exists() || d.join("blkio.bfq.weight").exists());
    let mut r = json!({
        "memory": {"limit": 67108864, "reservation": 33554432},
        "pids": {"limit": 50},
        "cpu": {"shares": 512, "quota": 20000, "period": 100000, "cpus": "0", "mems": "0"},
        "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}]
    });
    if swap {
        r["memory"]["swap"] = json!(134217728);
    }
    if blkio.is_some() {
        r["blockIO"] = json!({"weight": 200});
    }
    m.set(&resources(r)).unwrap();

    let read = |c: &str, f: &str| fs::read(&st.paths[c], f).unwrap().trim().to_string();
    assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(read("memory", "memory.soft_limit_in_bytes"), "33554432");
    if swap {
        assert_eq!(read("memory", "memory.memsw.limit_in_bytes"), "134217728");
    }
    assert_eq!(read("pids", "pids.max"), "50");
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "20000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(read("cpuset", "cpuset.cpus"), "0");
    assert_eq!(read("cpuset", "cpuset.mems"), "0");
    if let Some(d) = blkio {
        let f = if d.join("blkio.weight").exists() {
            "blkio.weight"
        } else {
            "blkio.bfq.weight"
        };
        assert!(read("blkio", f).contains("200"));
    }
    let list = read("devices", "devices.list");
    assert!(!list.contains("a *:* rwm"), "{list}");
    for rule in ["c 10:229 rw", "c 1:3 rwm", "c 136:* rwm", "b *:* m"] {
        assert!(list.lines().any(|l| l == rule), "{rule} not in {list}");
    }

    m.freeze(FreezerState::Frozen).unwrap();
    assert_eq!(read("freezer", "freezer.state"), "FROZEN");
    assert_eq!(m.freezer_state().unwrap(), FreezerState::Frozen);
    m.freeze(FreezerState::Thawed).unwrap();
    assert_eq!(read("freezer", "freezer.state"), "THAWED");
    assert_eq!(m.freezer_state().unwrap(), FreezerState::Thawed);

    assert_eq!(m.pids().unwrap(), [pid]);
    let s = m.stats().unwrap();
    assert_eq!(s.memory.usage.limit, 67_108_864);
    assert_eq!(s.pids.current, 1);
    assert_eq!(s.pids.limit, 50);

    // A value the kernel changes is an error naming the field.
    let e = m
        .set(&resources(json!({"cpu": {"shares": 1}})))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "linux.resources.cpu.shares: the kernel clamped it to 2 (range: 2 to 262144), found 1"
    );

    // The manager rebuilt from its state sees the same cgroup.
    let again = super::from_state(&st).unwrap();
    assert_eq!(again.pids().unwrap(), [pid]);

    guard.kill();
    m.destroy().unwrap();
    for p in st.paths.values() {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    m.destroy().unwrap();
}

#[test]
fn v1_devices_are_enforced() {
    if let Some(why) = skip_reason_v1() {
        println!("skipped: {why}");
        return;
    }
    if !kmsg_openable() {
        println!("skipped: /dev/kmsg cannot be opened here");
        return;
    }
    let top = unique("dev");
    let m = create(Some(&format!("/{top}")), "id").unwrap();
    let mut guard = Guard::default();
    guard.dirs.extend(m.state().paths.values().cloned());
    let (pid, mut sh) = shell(&mut guard, KMSG_PROBE);
    m.apply(pid).unwrap();
    m.set(&resources(
        json!({"devices": [{"allow": false, "access": "rwm"}]}),
    ))
    .unwrap();
    sh.go();
    assert_eq!(sh.line(), "null-ok");
    assert_eq!(sh.line(), "kmsg-denied");
    guard.kill();
    m.destroy().unwrap();
}

#[test]
fn v1_limit_below_usage_is_ebusy() {
    if let Some(why) = skip_reason_v1() {
        println!("skipped: {why}");
        return;
    }
    let swap = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    if swap.lines().count() > 1 {
        println!("skipped: swap is on, the kernel can always reclaim");
        return;
    }
    let top = unique("busy");
    let m = create(Some(&format!("/{top}")), "id").unwrap();
    let mut guard = Guard::default();
    guard.dirs.extend(m.state().paths.values().cloned());
    // ~8 MB of anonymous memory held in a shell variable.
    let (pid, mut sh) = shell(
        &mut guard,
        "x=$(head -c 8000000 /dev/zero | tr '\\0' a); echo ready; read _",
    );
    m.apply(pid).unwrap();
    sh.go();
    assert_eq!(sh.line(), "ready");
    let e = m
        .set(&resources(json!({"memory": {"limit": 1048576}})))
        .unwrap_err();
    let msg = e.to_string();
    let file = m.state().paths["memory"].join("memory.limit_in_bytes");
    assert!(
        msg.starts_with(&format!(
            "linux.resources.memory.limit: writing \"1048576\" to {}: Device or resource busy \
             (below what the cgroup uses: current usage ",
            file.display()
        )),
        "{msg}"
    );
    guard.kill();
    m.destroy().unwrap();
}

/// The first cgroup2 mount, if any.
fn cgroup2_mount() -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        post.starts_with("cgroup2 ")
            .then(|| pre.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })
}

#[test]
fn v2_lifecycle_on_the_real_cgroup2_mount() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: not root");
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        println!("skipped: no cgroup2 filesystem mounted");
        return;
    };
    if !mount.join("cgroup.procs").exists() {
        println!("skipped: {} is not a usable cgroup2 root", mount.display());
        return;
    }
    // Work below a private top cgroup treated as the root, so that the host's own
    // cgroup.subtree_control is never changed.
    let top = mount.join(unique("v2"));
    std::fs::create_dir(&top).unwrap();
    let mut guard = Guard::default();
    guard.dirs.push(top.clone());
    let m = create_at(&top, Mode::V2, Some("/ctr/leaf"), "id").unwrap();
    let leaf = m.state().paths[UNIFIED].clone();
    assert_eq!(leaf, top.join("ctr/leaf"));
    assert!(fs::is_cgroup2(&top));

    let pid = sleep(&mut guard);
    m.apply(pid).unwrap();
    assert_eq!(m.pids().unwrap(), [pid]);
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(proc_cgroup.contains("/ctr/leaf\n"), "{proc_cgroup}");

    if leaf.join("cgroup.freeze").exists() {
        m.freeze(FreezerState::Frozen).unwrap();
        assert!(fs::read(&leaf, "cgroup.events")
            .unwrap()
            .contains("frozen 1"));
        assert_eq!(m.freezer_state().unwrap(), FreezerState::Frozen);
        m.freeze(FreezerState::Thawed).unwrap();
        assert!(fs::read(&leaf, "cgroup.events")
            .unwrap()
            .contains("frozen 0"));
        assert_eq!(m.freezer_state().unwrap(), FreezerState::Thawed);
    } else {
        println!("skipped freeze: no cgroup.freeze (kernel < 5.2)");
    }
    let s = m.stats().unwrap();
    assert_eq!(
        s.pids,
        Default::default(),
        "no pids controller delegated here"
    );

    guard.kill();
    m.destroy().unwrap();
    assert!(!leaf.exists());
    assert!(!top.join("ctr").join("leaf").exists());
}

#[test]
fn v2_device_filter_is_enforced_and_replaced() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: not root");
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        println!("skipped: no cgroup2 filesystem mounted");
        return;
    };
    if !kmsg_openable() {
        println!("skipped: /dev/kmsg cannot be opened here");
        return;
    }
    let top = mount.join(unique("bpf"));
    std::fs::create_dir(&top).unwrap();
    let mut guard = Guard::default();
    guard.dirs.push(top.clone());
    let m = create_at(&top, Mode::V2, Some("/c"), "id").unwrap();
    let deny = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let allow_kmsg = json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"}
    ]});

    let (pid, mut sh) = shell(&mut guard, &format!("{KMSG_PROBE}; read _; {KMSG_PROBE}"));
    m.apply(pid).unwrap();
    m.set(&resources(deny)).unwrap();
    sh.go();
    assert_eq!(sh.line(), "null-ok");
    assert_eq!(sh.line(), "kmsg-denied");
    // An update replaces the filter (the old one must be gone, or it would still deny).
    m.set(&resources(allow_kmsg)).unwrap();
    sh.go();
    assert_eq!(sh.line(), "null-ok");
    assert_eq!(sh.line(), "kmsg-ok");
    guard.kill();
    m.destroy().unwrap();
    assert!(!Path::new(&top).join("c").exists());
}

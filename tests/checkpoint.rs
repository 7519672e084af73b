//! `cryo checkpoint` / `cryo restore` with the real CRIU: a container's process tree frozen
//! into an image directory and brought back (also twice, side by side), a failing dump that
//! leaves the container running and the older image intact, bad images refused. As root,
//! with CRIU >= 4.0 (scripts/setup installs one); skipped with a reason otherwise.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

macro_rules! skip_unless_criu {
    () => {
        skip_unless_root!();
        if let Err(e) = cryo_snapshot::criu::Criu::locate(None) {
            println!("skipped: {e}");
            return;
        }
    };
}

/// A shell that counts into /tmp/count (the container's tmpfs) every 20 ms, with a `sleep`
/// child, so the tree has two processes.
fn counter_config() -> Value {
    sh_config("sleep 1000 & i=0; while :; do i=$((i+1)); echo $i > /tmp/count; usleep 20000; done")
}

/// The counter with 4 MB of ballast in the shell's memory that stays the same between
/// checkpoints.
fn ballast_config() -> Value {
    sh_config(
        "big=$(head -c 3000000 /dev/urandom | base64); sleep 1000 & i=0; \
         while :; do i=$((i+1)); echo $i > /tmp/count; usleep 20000; done",
    )
}

fn count(pid: i64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/root/tmp/count"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_count_past(pid: i64, min: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = count(pid);
        if n > min {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "counter of {pid} stuck at {n}, wanted > {min}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the container whose init is `pid` has its `sleep 1000` child (seen from the host
/// through the init's children).
fn has_sleeper(pid: i64) -> bool {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children.split_whitespace().any(|c| {
        std::fs::read(format!("/proc/{c}/cmdline")).is_ok_and(|b| b == b"sleep\x001000\x00")
    })
}

fn pids(env: &Env, id: &str) -> Vec<i64> {
    let out = env.ok(&["ps", "--format", "json", id]);
    serde_json::from_str(&out).unwrap()
}

fn restore(env: &Env, images: &Path, bundle: &Path, id: &str) -> i64 {
    env.ok(&[
        "restore",
        "-d",
        "--image-path",
        images.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
        id,
    ]);
    assert_eq!(env.status(id), "running");
    env.state(id)["pid"].as_i64().unwrap()
}

#[test]
fn checkpoint_stops_the_container_and_restore_brings_the_tree_back() {
    skip_unless_criu!();
    let env = Env::new("ckpt");
    let (id, pid) = env.detach("c", &counter_config());
    let before = wait_count_past(pid, 5);
    assert!(has_sleeper(pid));
    let images = env.dir.path().join("images");
    env.ok(&["checkpoint", "--image-path", images.to_str().unwrap(), &id]);
    // As with runc, the checkpointed container is gone.
    let o = env.cryo(&["state", &id]);
    assert!(!o.status.success(), "{id} still exists after checkpoint");
    assert!(images.join("cryo.json").exists());
    assert!(images.join("inventory.img").exists());
    assert!(images.join("dump.log").exists());
    // The container's own network namespace held nothing but lo: CRIU was told it is
    // external (no device, address, route or iptables images), and the restore makes a fresh
    // one with lo up.
    let netdev = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("netdev-"));
    assert!(!netdev, "the bare network namespace was dumped");

    let bundle = env.dir.path().join("c");
    let rid = env.id("r");
    let rpid = restore(&env, &images, &bundle, &rid);
    let flags = env.ok(&["exec", &rid, "cat", "/sys/class/net/lo/flags"]);
    assert_eq!(flags.trim(), "0x9", "lo after the restore");
    assert_ne!(
        std::fs::read_link(format!("/proc/{rpid}/ns/net")).unwrap(),
        std::fs::read_link("/proc/self/ns/net").unwrap()
    );
    let after = wait_count_past(rpid, before);
    wait_count_past(rpid, after + 3);
    assert!(has_sleeper(rpid), "the sleep child is restored too");
    assert!(pids(&env, &rid).len() >= 2);
    // The restored container is a container like any other: exec, checkpoint again, delete.
    // The counter rewrites the file (truncate, then write): a read can land in between.
    let seen: u64 = (0..50)
        .find_map(|_| {
            let n = env
                .ok(&["exec", &rid, "cat", "/tmp/count"])
                .trim()
                .parse()
                .ok();
            if n.is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        })
        .expect("/tmp/count never read whole");
    assert!(seen > before);
    let again = env.dir.path().join("again");
    checkpoint_leave_running(&env, &again, &rid);
    let n = count(rpid);
    wait_count_past(rpid, n + 2);
    env.remove(&rid);
}

/// The mounts at `path` in `pid`'s mount namespace, top last: (fstype, per-mount options).
fn mounts_at(pid: i64, path: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let fstype = right.split(' ').next()?;
            (f[4] == path).then(|| (fstype.to_string(), f[5].to_string()))
        })
        .collect()
}

/// The `cryo.json` of the image directory `dir`.
fn meta(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("cryo.json")).unwrap()).unwrap()
}

/// Whether `path` in `pid`'s mount namespace is topped by an empty read-only tmpfs.
fn masked_dir(pid: i64, path: &str) -> bool {
    let top = mounts_at(pid, path).pop();
    let empty =
        std::fs::read_dir(format!("/proc/{pid}/root{path}")).is_ok_and(|mut d| d.next().is_none());
    empty && top.is_some_and(|(fs, opts)| fs == "tmpfs" && opts.split(',').any(|o| o == "ro"))
}

#[test]
fn masked_directories_are_empty_read_only_tmpfs_again_after_a_restore() {
    skip_unless_criu!();
    let env = Env::new("masked");
    // /mnt is a tmpfs of the spec, masked as well: two mounts at one path, which CRIU dumps
    // and restores itself; the lone masked directories are left out of the images.
    let mut config = counter_config();
    config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/mnt", "type": "tmpfs", "source": "tmpfs"}));
    config["linux"]["maskedPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/mnt"));
    let (id, pid) = env.detach("c", &config);
    wait_count_past(pid, 3);
    let lone: Vec<&str> = ["/proc/acpi", "/sys/firmware", "/proc/scsi"]
        .into_iter()
        .filter(|p| Path::new(p).is_dir())
        .collect();
    for p in lone.iter().chain(&["/mnt"]) {
        assert!(masked_dir(pid, p), "{p} before the checkpoint");
    }
    assert_eq!(mounts_at(pid, "/mnt").len(), 2);
    let images = env.dir.path().join("images");
    env.ok(&["checkpoint", "--image-path", images.to_str().unwrap(), &id]);
    let meta = meta(&images);
    let recorded: Vec<&str> = meta["masked_dirs"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d["path"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(recorded, lone, "cryo.json: masked_dirs");

    let proc_before: Vec<_> = std::fs::read_dir(rootfs().join("proc"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let bundle = env.dir.path().join("c");
    let rid = env.id("r");
    let rpid = restore(&env, &images, &bundle, &rid);
    wait_count_past(rpid, 3);
    for p in lone.iter().chain(&["/mnt"]) {
        assert!(masked_dir(rpid, p), "{p} after the restore");
        assert_eq!(
            mounts_at(rpid, p).len(),
            if *p == "/mnt" { 2 } else { 1 },
            "{p}"
        );
    }
    let o = env.cryo(&["exec", &rid, "mkdir", "/proc/acpi/x"]);
    assert!(
        !o.status.success(),
        "a masked directory is writable after the restore"
    );
    // The sources CRIU bound are gone from the host, and nothing was left in the rootfs.
    let state = env.root.join(&rid);
    assert!(
        !state.join("masked").exists(),
        "masked tmpfs sources left behind"
    );
    let proc_after: Vec<_> = std::fs::read_dir(rootfs().join("proc"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(proc_before, proc_after, "the restore wrote into the rootfs");
    env.remove(&rid);
}

#[test]
fn tmpfs_content_is_kept_by_cryo_and_comes_back_with_its_mount_options() {
    skip_unless_criu!();
    let env = Env::new("tmpfs");
    // Files in /dev/shm (a tmpfs of the spec, with its own options) and in /tmp, which the
    // counter keeps writing to.
    let config = sh_config(
        "mkdir -m 700 /dev/shm/d && echo secret > /dev/shm/d/f && chmod 640 /dev/shm/d/f && \
         ln -s d/f /dev/shm/l && mkfifo /tmp/p && dd if=/dev/zero of=/dev/shm/z bs=4096 \
         seek=100 count=1 2>/dev/null && \
         dd if=/dev/urandom of=/tmp/big bs=65536 count=32 2>/dev/null && md5sum /tmp/big > \
         /dev/shm/big.md5; sleep 1000 & i=0; while :; do i=$((i+1)); \
         echo $i > /tmp/count; usleep 20000; done",
    );
    let (id, pid) = env.detach("c", &config);
    wait_count_past(pid, 3);
    let shm_before = mounts_at(pid, "/dev/shm");
    let images = env.dir.path().join("images");
    env.ok(&["checkpoint", "--image-path", images.to_str().unwrap(), &id]);
    let meta = meta(&images);
    let kept: Vec<&str> = meta["kept_tmpfs"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d["path"].as_str()).collect())
        .unwrap_or_default();
    for p in ["/dev", "/dev/shm"] {
        assert!(kept.contains(&p), "{p} not kept by cryo: {kept:?}");
    }
    // /tmp holds 2 MiB: a tmpfs that large is left to CRIU's tar (cryo's fill would charge
    // its pages to cryo's cgroup, not the container's).
    assert!(!kept.contains(&"/tmp"), "{kept:?}");
    assert_eq!(
        meta["version"], 2,
        "a cryo.json naming kept tmpfs mounts is version 2"
    );
    let names: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.ends_with(".cryo.img")).count(),
        kept.len(),
        "one content file per kept tmpfs: {names:?}"
    );

    let bundle = env.dir.path().join("c");
    let rid = env.id("r");
    let rpid = restore(&env, &images, &bundle, &rid);
    wait_count_past(rpid, 3);
    let root = format!("/proc/{rpid}/root");
    assert_eq!(
        std::fs::read_to_string(format!("{root}/dev/shm/d/f")).unwrap(),
        "secret\n"
    );
    assert_eq!(
        std::fs::read_link(format!("{root}/dev/shm/l")).unwrap(),
        Path::new("d/f")
    );
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let d = std::fs::metadata(format!("{root}/dev/shm/d")).unwrap();
    assert_eq!(d.permissions().mode() & 0o7777, 0o700);
    let f = std::fs::metadata(format!("{root}/dev/shm/d/f")).unwrap();
    assert_eq!(f.permissions().mode() & 0o7777, 0o640);
    let z = std::fs::metadata(format!("{root}/dev/shm/z")).unwrap();
    assert_eq!(z.len(), 101 * 4096);
    assert!(
        z.blocks() * 512 <= 64 << 10,
        "the hole before the last page stays a hole"
    );
    let sum = std::fs::read_to_string(format!("{root}/dev/shm/big.md5")).unwrap();
    let o = env.cryo(&["exec", &rid, "md5sum", "/tmp/big"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        sum,
        "/tmp, restored by CRIU"
    );
    assert!(std::fs::symlink_metadata(format!("{root}/tmp/p"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        mounts_at(rpid, "/dev/shm"),
        shm_before,
        "/dev/shm's mount options"
    );
    // The processes still use /dev: the restored shell writes through /dev/null fine.
    let o = env.cryo(&[
        "exec",
        &rid,
        "sh",
        "-c",
        "echo x > /dev/null && cat /dev/shm/d/f",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        !env.root.join(&rid).join("tmpfs").exists(),
        "kept tmpfs sources left behind"
    );
    env.remove(&rid);
}

/// The path of `pid`'s cgroup in the v1 hierarchy `controller`.
fn v1_cgroup(pid: i64, controller: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, p) = (f.next()?, f.next()?, f.next()?);
            c.split(',').any(|x| x == controller).then(|| p.to_string())
        })
        .unwrap_or_default()
}

/// The pid of `init`'s `sleep 1000` child.
fn sleeper(init: i64) -> i64 {
    std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
        .unwrap()
        .split_whitespace()
        .filter_map(|c| c.parse::<i64>().ok())
        .find(|c| {
            std::fs::read(format!("/proc/{c}/cmdline")).is_ok_and(|b| b == b"sleep\x001000\x00")
        })
        .expect("the sleep child")
}

#[test]
fn a_restore_keeps_nested_cgroups_and_leaves_flat_ones_to_cryo() {
    skip_unless_criu!();
    let memory = Path::new("/sys/fs/cgroup/memory");
    if !memory.join("cgroup.procs").exists() {
        println!("skipped: no cgroup v1 memory hierarchy");
        return;
    }
    let env = Env::new("cgnest");
    let (id, pid) = env.detach("c", &counter_config());
    wait_count_past(pid, 3);
    let own = v1_cgroup(pid, "memory");
    // Every process in the container's own cgroups: the restore leaves cgroups to cryo.
    let flat = env.dir.path().join("flat");
    env.ok(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        flat.to_str().unwrap(),
        &id,
    ]);
    assert_eq!(meta(&flat)["cgroups_flat"], true);
    // The sleeper moved into a cgroup nested in the container's: CRIU restores that one.
    let sub = memory.join(own.trim_start_matches('/')).join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("cgroup.procs"), sleeper(pid).to_string()).unwrap();
    let nested = env.dir.path().join("nested");
    env.ok(&["checkpoint", "--image-path", nested.to_str().unwrap(), &id]);
    assert!(
        meta(&nested).get("cgroups_flat").is_none(),
        "{}",
        meta(&nested)
    );

    let bundle = env.dir.path().join("c");
    let rid = env.id("n");
    let rpid = restore(&env, &nested, &bundle, &rid);
    let new_own = v1_cgroup(rpid, "memory");
    assert_ne!(
        new_own, own,
        "the restored init is in its own container's cgroup"
    );
    assert_eq!(v1_cgroup(sleeper(rpid), "memory"), format!("{new_own}/sub"));
    env.remove(&rid);

    let fid = env.id("f");
    let fpid = restore(&env, &flat, &bundle, &fid);
    let f_own = v1_cgroup(fpid, "memory");
    assert!(f_own.ends_with(&fid), "{f_own}");
    assert_eq!(v1_cgroup(sleeper(fpid), "memory"), f_own);
    for c in ["memory", "pids", "freezer", "cpu"] {
        if Path::new("/sys/fs/cgroup")
            .join(c)
            .join("cgroup.procs")
            .exists()
        {
            assert!(
                v1_cgroup(fpid, c).ends_with(&fid),
                "{c}: {}",
                v1_cgroup(fpid, c)
            );
        }
    }
    wait_count_past(fpid, count(fpid) + 2);
    env.remove(&fid);
}

/// Whether CRIU can load a kernel-feature cache here: its own where /run is a tmpfs, else
/// cryo's, which needs the mount that holds /run to be unshared (snapshot's `criu::kdat`).
fn kdat_cache_possible() -> bool {
    let run_tmpfs = nix::sys::statfs::statfs("/run")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_shared = mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split(" - ").next().unwrap().split(' ').collect();
        f[4] == "/" && f[6..].iter().any(|o| o.starts_with("shared:"))
    });
    run_tmpfs || !root_shared
}

#[test]
fn criu_skips_its_kernel_probe_with_a_cached_kdat() {
    skip_unless_criu!();
    if !kdat_cache_possible() {
        println!("skipped: /run is no tmpfs and the root mount is shared: no kdat cache");
        return;
    }
    let env = Env::new("kdat");
    let (id, pid) = env.detach("c", &counter_config());
    wait_count_past(pid, 3);
    let images = env.dir.path().join("images");
    checkpoint_leave_running(&env, &images, &id);
    let bundle = env.dir.path().join("c");
    let rid = env.id("r");
    let rpid = restore(&env, &images, &bundle, &rid);
    wait_count_past(rpid, 3);
    // The dump had the cache at the latest after cryo's first probe; the restore loads it.
    let log = std::fs::read_to_string(images.join("restore.log")).unwrap();
    assert!(
        log.contains("Loaded kdat cache from /run/criu.kdat"),
        "restore.log: {}",
        log.lines().take(8).collect::<Vec<_>>().join("\n")
    );
    // The cache was shown to CRIU alone: nothing is mounted on the host's /run/criu.kdat.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains("/run/criu.kdat"), "{mountinfo}");
    for c in [&id, &rid] {
        env.remove(c);
    }
}

#[test]
fn one_image_restores_as_several_containers_side_by_side() {
    skip_unless_criu!();
    let env = Env::new("clone");
    let (id, pid) = env.detach("c", &counter_config());
    wait_count_past(pid, 3);
    let images = env.dir.path().join("images");
    checkpoint_leave_running(&env, &images, &id);
    let frozen = count(pid);
    let bundle = env.dir.path().join("c");
    let a = env.id("a");
    let b = env.id("b");
    let apid = restore(&env, &images, &bundle, &a);
    let bpid = restore(&env, &images, &bundle, &b);
    assert_ne!(apid, bpid);
    for p in [pid, apid, bpid] {
        wait_count_past(p, frozen + 3);
    }
    for c in [&id, &a, &b] {
        assert_eq!(env.status(c), "running");
        env.remove(c);
    }
}

/// The counter plus an established TCP connection inside the container's own network
/// namespace (CRIU refuses to dump it without --tcp-established).
fn tcp_config() -> Value {
    let mut c = sh_config(
        "ip link set lo up; sleep 1000 | nc -l -p 5000 >/dev/null & usleep 200000; \
         (while :; do echo x; sleep 1; done) | nc 127.0.0.1 5000 & \
         i=0; while :; do i=$((i+1)); echo $i > /tmp/count; usleep 20000; done",
    );
    for set in ["bounding", "effective", "permitted"] {
        c["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_NET_ADMIN"));
    }
    c
}

fn established(pid: i64) -> bool {
    // /proc/net/tcp{,6} of the container's netns: state 01 is ESTABLISHED.
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .map(|t| {
                t.lines()
                    .skip(1)
                    .any(|l| l.split_whitespace().nth(3) == Some("01"))
            })
            .unwrap_or(false)
    })
}

#[test]
fn failed_checkpoint_leaves_the_container_running_and_the_old_image_intact() {
    skip_unless_criu!();
    let env = Env::new("ckfail");
    let (id, pid) = env.detach("c", &counter_config());
    wait_count_past(pid, 2);
    let images = env.dir.path().join("images");
    checkpoint_leave_running(&env, &images, &id);
    let old_meta = std::fs::read(images.join("cryo.json")).unwrap();
    let old_files = std::fs::read_dir(&images).unwrap().count();
    env.remove(&id);

    let (id, pid) = env.detach("t", &tcp_config());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !established(pid) {
        assert!(Instant::now() < deadline, "no TCP connection came up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = env.cryo(&["checkpoint", "--image-path", images.to_str().unwrap(), &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "checkpoint of a TCP connection succeeded"
    );
    assert!(
        err.contains("tcp-established"),
        "the error names the cause: {err}"
    );
    assert!(err.contains("CRIU log"), "the log lines are shown: {err}");

    assert_eq!(env.status(&id), "running");
    let n = wait_count_past(pid, 0);
    wait_count_past(pid, n + 3);
    assert!(established(pid), "the connection survives the failed dump");
    assert_eq!(std::fs::read(images.join("cryo.json")).unwrap(), old_meta);
    assert_eq!(std::fs::read_dir(&images).unwrap().count(), old_files);
    let debris: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("cryo-"))
        .collect();
    assert!(debris.is_empty(), "staging left behind: {debris:?}");

    // With --tcp-established the same container checkpoints and comes back connected.
    let o = env.cryo(&[
        "checkpoint",
        "--tcp-established",
        "--image-path",
        images.to_str().unwrap(),
        &id,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() && err.contains("Can't get 1:16 opt") {
        // Kernels from 6.16 refuse SO_PASSCRED on TCP sockets, which CRIU <= 4.1.1 reads.
        println!("skipped: this CRIU cannot dump TCP sockets on this kernel: {err}");
        assert_eq!(env.status(&id), "running");
        return;
    }
    assert!(o.status.success(), "checkpoint --tcp-established: {err}");
    assert_ne!(std::fs::read(images.join("cryo.json")).unwrap(), old_meta);
    let bundle = env.dir.path().join("t");
    let rid = env.id("r");
    env.ok(&[
        "restore",
        "-d",
        "--tcp-established",
        "--image-path",
        images.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
        &rid,
    ]);
    let rpid = env.state(&rid)["pid"].as_i64().unwrap();
    let n = wait_count_past(rpid, 0);
    wait_count_past(rpid, n + 3);
    assert!(established(rpid), "the connection is restored");
    env.remove(&rid);
}

#[test]
fn restore_refuses_bad_images_and_taken_ids() {
    skip_unless_criu!();
    let env = Env::new("rsbad");
    let bundle = env.bundle("c", &counter_config());
    let empty = env.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let id = env.id("r");
    let o = env.cryo(&[
        "restore",
        "-d",
        "--image-path",
        empty.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
        &id,
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cryo.json"), "{err}");
    assert!(
        !env.cryo(&["state", &id]).status.success(),
        "no container left"
    );

    // An image whose CRIU files are damaged: CRIU's error, no container.
    let (cid, pid) = env.detach("c2", &counter_config());
    wait_count_past(pid, 1);
    let images = env.dir.path().join("images");
    checkpoint_leave_running(&env, &images, &cid);
    std::fs::write(images.join("pstree.img"), b"garbage").unwrap();
    let o = env.cryo(&[
        "restore",
        "-d",
        "--image-path",
        images.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
        &id,
    ]);
    assert!(!o.status.success());
    assert!(
        !env.cryo(&["state", &id]).status.success(),
        "no container left"
    );

    // A taken id.
    let o = env.cryo(&[
        "restore",
        "-d",
        "--image-path",
        images.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
        &cid,
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists"));
    assert_eq!(env.status(&cid), "running");
}

/// `checkpoint --leave-running --image-path IMAGES ID`, asserting success.
fn checkpoint_leave_running(env: &Env, images: &Path, id: &str) {
    env.ok(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        images.to_str().unwrap(),
        id,
    ]);
}

/// `checkpoint --store STORE --snapshot NAME ID` (with `--leave-running`), asserting success;
/// returns what it printed (the snapshot's ID).
fn checkpoint_into(env: &Env, store: &Path, name: &str, id: &str, leave_running: bool) -> String {
    let mut args = vec!["checkpoint"];
    if leave_running {
        args.push("--leave-running");
    }
    args.extend(["--store", store.to_str().unwrap(), "--snapshot", name, id]);
    env.ok(&args)
}

/// The counter with 64 MB of ballast: enough memory that a lazy restore is still filling a
/// moment after it returns, and a checkpoint takes a while.
fn big_ballast_config() -> Value {
    sh_config(
        "big=$(head -c 48000000 /dev/urandom | base64); i=0; \
         while :; do i=$((i+1)); echo $i > /tmp/count; usleep 20000; done",
    )
}

fn restore_snapshot(env: &Env, store: &Path, reference: &str, bundle: &Path, id: &str) -> Output {
    env.cryo(&[
        "restore",
        "-d",
        "--store",
        store.to_str().unwrap(),
        "--snapshot",
        reference,
        "--bundle",
        bundle.to_str().unwrap(),
        id,
    ])
}

#[test]
fn checkpoint_into_the_store_and_restore_replicas_from_it() {
    skip_unless_criu!();
    let env = Env::new("store");
    let store = env.dir.path().join("store");
    let (id, pid) = env.detach("c", &ballast_config());
    wait_count_past(pid, 3);
    let out = checkpoint_into(&env, &store, "counter:v1", &id, true);
    let sid = out.trim().to_string();
    assert!(
        sid.starts_with("sha256:"),
        "checkpoint prints the ID: {out}"
    );
    let frozen = count(pid);
    let ls = env.ok(&["snapshot", "--store", store.to_str().unwrap(), "ls"]);
    assert!(ls.contains("counter:v1"), "{ls}");
    let verify = env.cryo(&[
        "snapshot",
        "--store",
        store.to_str().unwrap(),
        "verify",
        &sid,
    ]);
    assert!(verify.status.success());
    // Nothing of the raw dump stays behind in the state directory.
    let state_dir = env.root.join(&id);
    assert!(!state_dir.join("dump").exists());
    assert!(!Path::new(&format!("/dev/shm/cryo/{id}.dump")).exists());

    // Three replicas of one snapshot, side by side, by name and by ID.
    let bundle = env.dir.path().join("c");
    let mut replicas = Vec::new();
    for (i, reference) in ["counter:v1", &sid, &sid[..19]].iter().enumerate() {
        let rid = env.id(&format!("r{i}"));
        let o = restore_snapshot(&env, &store, reference, &bundle, &rid);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let rpid = env.state(&rid)["pid"].as_i64().unwrap();
        assert!(
            !env.root.join(&rid).join("images").exists(),
            "images removed"
        );
        replicas.push((rid, rpid));
    }
    for (_, rpid) in &replicas {
        wait_count_past(*rpid, frozen + 3);
        assert!(has_sleeper(*rpid));
    }

    // A second checkpoint of the same container stores little that is new.
    let before = dir_bytes(&store.join("packs"));
    checkpoint_into(&env, &store, "counter:v2", &id, true);
    let added = dir_bytes(&store.join("packs")) - before;
    assert!(before > 2_000_000, "the ballast is stored: {before} bytes");
    assert!(
        added * 20 < before,
        "second snapshot added {added} of {before} bytes"
    );
    for (rid, _) in &replicas {
        env.remove(rid);
    }
}

#[test]
fn a_fast_uncompressed_checkpoint_is_compacted_later_and_still_restores() {
    skip_unless_criu!();
    let env = Env::new("compact");
    let store = env.dir.path().join("store");
    let store_arg = store.to_str().unwrap();
    let (id, pid) = env.detach("c", &ballast_config());
    wait_count_past(pid, 3);
    // --compression only applies to the store.
    let o = env.cryo(&["checkpoint", "--compression", "none", &id]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--snapshot"));
    let o = env.cryo(&[
        "checkpoint",
        "--compression",
        "zstd99",
        "--store",
        store_arg,
        "--snapshot",
        "x",
        &id,
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected zstd1"));

    env.ok(&[
        "checkpoint",
        "--compression",
        "none",
        "--store",
        store_arg,
        "--snapshot",
        "fast",
        &id,
    ]);
    let raw = dir_bytes(&store.join("packs"));
    let out = env.ok(&[
        "snapshot", "--store", store_arg, "compact", "fast", "--format", "json",
    ]);
    let rep: Value = serde_json::from_str(&out).unwrap();
    assert!(rep["rewritten"].as_u64().unwrap() > 0, "{rep}");
    let compacted = dir_bytes(&store.join("packs"));
    // The ballast is base64 text: zstd takes a quarter of it at least.
    assert!(compacted * 4 < raw * 3, "{raw} -> {compacted} bytes: {rep}");
    let verify = env.cryo(&["snapshot", "--store", store_arg, "verify", "fast"]);
    assert!(verify.status.success());

    let rid = env.id("r");
    let o = restore_snapshot(&env, &store, "fast", &env.dir.path().join("c"), &rid);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rpid = env.state(&rid)["pid"].as_i64().unwrap();
    wait_count_past(rpid, 4);
    assert!(has_sleeper(rpid));
    env.remove(&rid);
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut files = Vec::new();
    collect(dir, &mut files);
    files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}

#[test]
fn a_failed_ingest_thaws_the_container_and_a_corrupt_snapshot_is_refused() {
    skip_unless_criu!();
    let env = Env::new("ingest");
    let store = env.dir.path().join("store");
    let (id, pid) = env.detach("c", &counter_config());
    wait_count_past(pid, 2);
    // The name is refused at commit, after CRIU dumped: CRIU must resume the tree.
    let o = env.cryo(&[
        "checkpoint",
        "--store",
        store.to_str().unwrap(),
        "--snapshot",
        "Not A Name",
        &id,
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Not A Name"), "{err}");
    assert_eq!(env.status(&id), "running");
    let n = count(pid);
    wait_count_past(pid, n + 3);
    assert!(!env.root.join(&id).join("dump").exists(), "staging removed");
    assert!(
        !Path::new(&format!("/dev/shm/cryo/{id}.dump")).exists(),
        "staging removed"
    );

    let out = checkpoint_into(&env, &store, "c:v1", &id, false);
    assert!(out.starts_with("sha256:"));
    assert!(
        !env.cryo(&["state", &id]).status.success(),
        "checkpointed away"
    );
    // Flip one byte in every chunk: the restore is refused before any process exists.
    assert!(flip_chunks(&store, "c:v1", 0) > 0);
    let bundle = env.dir.path().join("c");
    let rid = env.id("r");
    let o = restore_snapshot(&env, &store, "c:v1", &bundle, &rid);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("chunk"), "the error names the chunk: {err}");
    assert!(!env.cryo(&["state", &rid]).status.success(), "no container");
    let o = restore_snapshot(&env, &store, "missing:v9", &bundle, &rid);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing:v9"));
}

/// Flips the middle byte of every chunk record of snapshot `reference` longer than `min_len`
/// bytes; how many.
fn flip_chunks(store: &Path, reference: &str, min_len: u64) -> usize {
    let store = cryo_snapshot::Store::open(store).unwrap();
    let m = store
        .load_manifest(&store.resolve(reference).unwrap())
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut flipped = 0;
    for e in m.extents.iter().filter(|e| seen.insert(e.chunk)) {
        let loc = store.locate_chunk(&e.chunk).unwrap().unwrap();
        if loc.len > min_len {
            let mut b = std::fs::read(&loc.path).unwrap();
            b[usize::try_from(loc.offset + loc.len / 2).unwrap()] ^= 0x40;
            std::fs::write(&loc.path, b).unwrap();
            flipped += 1;
        }
    }
    flipped
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            collect(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

/// Ballast whose checksum the container writes to /tmp/sum at start and, whenever /tmp/check
/// appears, again to /tmp/sum2: proof that restored memory is bit-identical.
fn checksum_config() -> Value {
    sh_config(
        "big=$(head -c 6000000 /dev/urandom | base64); echo \"$big\" | md5sum > /tmp/sum; \
         i=0; while :; do i=$((i+1)); echo $i > /tmp/count; \
         if [ -e /tmp/check ]; then echo \"$big\" | md5sum > /tmp/sum2.tmp; \
         mv /tmp/sum2.tmp /tmp/sum2; rm /tmp/check; fi; usleep 20000; done",
    )
}

fn read_root(pid: i64, path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/root{path}")).ok()
}

/// A running container of `checksum_config` (name "c"): its id and the checksum of its
/// memory, once it has counted past 2.
fn checksum_container(env: &Env) -> (String, String) {
    let (id, pid) = env.detach("c", &checksum_config());
    let sum = wait_file(pid, "/tmp/sum");
    wait_count_past(pid, 2);
    (id, sum)
}

fn wait_file(pid: i64, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = read_root(pid, path) {
            if !s.is_empty() {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "{path} never appeared in {pid}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn lazy_restore_runs_at_once_and_streams_memory_in_bit_identical() {
    skip_unless_criu!();
    let env = Env::new("lazy");
    let store = env.dir.path().join("store");
    let (id, sum) = checksum_container(&env);
    checkpoint_into(&env, &store, "lazy:v1", &id, false);
    let bundle = env.dir.path().join("c");
    for round in 0..2 {
        // The second restore has the first one's working set to prefetch.
        let rid = env.id(&format!("r{round}"));
        env.ok(&[
            "restore",
            "-d",
            "--lazy-pages",
            "--store",
            store.to_str().unwrap(),
            "--snapshot",
            "lazy:v1",
            "--bundle",
            bundle.to_str().unwrap(),
            &rid,
        ]);
        let rpid = env.state(&rid)["pid"].as_i64().unwrap();
        let n = wait_count_past(rpid, 0);
        wait_count_past(rpid, n + 2);
        std::fs::write(format!("/proc/{rpid}/root/tmp/check"), b"").unwrap();
        assert_eq!(wait_file(rpid, "/tmp/sum2"), sum, "restored memory differs");
        // The server exits once every page is in and says what it did.
        let report = env.root.join(&rid).join("lazy-pages.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !report.exists() {
            assert!(
                Instant::now() < deadline,
                "the lazy-pages server never finished"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert!(r["copied_bytes"].as_u64().unwrap() > 6_000_000, "{r}");
        assert!(r["tasks"].as_u64().unwrap() >= 1, "{r}");
        let n = count(rpid);
        wait_count_past(rpid, n + 2);
        env.remove(&rid);
    }
    let ws = env.ok(&[
        "snapshot",
        "--store",
        store.to_str().unwrap(),
        "inspect",
        "lazy:v1",
    ]);
    assert!(ws.to_lowercase().contains("working set"), "{ws}");
}

#[test]
fn a_lazy_restore_whose_server_dies_is_killed_not_left_with_missing_memory() {
    skip_unless_criu!();
    let env = Env::new("lazykill");
    let store = env.dir.path().join("store");
    // Enough memory that the server is still filling when it is killed.
    let (id, pid) = env.detach("c", &big_ballast_config());
    wait_count_past(pid, 2);
    checkpoint_into(&env, &store, "k:v1", &id, false);
    let bundle = env.dir.path().join("c");
    let rid = env.id("r");
    env.ok(&[
        "restore",
        "-d",
        "--lazy-pages",
        "--store",
        store.to_str().unwrap(),
        "--snapshot",
        "k:v1",
        "--bundle",
        bundle.to_str().unwrap(),
        &rid,
    ]);
    let state_dir = env.root.join(&rid);
    let daemon: i32 = std::fs::read_to_string(state_dir.join("lazy-pages.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) of the server this test's restore started.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    if state_dir.join("lazy-pages.json").exists() {
        println!("skipped: the server finished before it could be killed");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.status(&rid) != "stopped" {
        assert!(
            Instant::now() < deadline,
            "the container still runs after its lazy-pages server died"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let why = std::fs::read_to_string(state_dir.join("lazy-pages.error")).unwrap();
    assert!(why.contains("killed"), "{why}");
}

#[test]
fn killing_checkpoint_midway_leaves_the_container_running_and_no_snapshot() {
    skip_unless_criu!();
    let env = Env::new("ckkill");
    let store = env.dir.path().join("store");
    let (id, pid) = env.detach("c", &big_ballast_config());
    wait_count_past(pid, 2);
    for delay_ms in [50u64, 300, 700] {
        let mut child = env
            .cmd()
            .args([
                "checkpoint",
                "--store",
                store.to_str().unwrap(),
                "--snapshot",
                "k:v1",
                &id,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // CRIU (its child) finishes or aborts on its own; wait for it to let go.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let o = env.cryo(&["state", &id]);
            if !o.status.success() {
                // The dump completed before the kill: then the snapshot must be whole.
                let o = env.cryo(&[
                    "snapshot",
                    "--store",
                    store.to_str().unwrap(),
                    "verify",
                    "k:v1",
                ]);
                assert!(
                    o.status.success(),
                    "a checkpoint that stopped the container left no valid snapshot"
                );
                println!("checkpoint completed before the kill at {delay_ms} ms");
                return;
            }
            let st: Value = serde_json::from_slice(&o.stdout).unwrap();
            if st["status"] == "running" {
                let n = count(pid);
                std::thread::sleep(Duration::from_millis(100));
                if count(pid) > n {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "container {id} neither running nor checkpointed: {st}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let ls = env.cryo(&["snapshot", "--store", store.to_str().unwrap(), "ls"]);
        let ls = String::from_utf8_lossy(&ls.stdout);
        assert!(
            !ls.contains("k:v1")
                || env
                    .cryo(&[
                        "snapshot",
                        "--store",
                        store.to_str().unwrap(),
                        "verify",
                        "k:v1"
                    ])
                    .status
                    .success(),
            "{ls}"
        );
    }
    // The store's debris goes with gc, and a checkpoint still works afterwards.
    env.ok(&["snapshot", "--store", store.to_str().unwrap(), "gc"]);
    checkpoint_into(&env, &store, "k:v2", &id, true);
    env.ok(&[
        "snapshot",
        "--store",
        store.to_str().unwrap(),
        "verify",
        "k:v2",
    ]);
}

#[test]
fn restore_in_the_foreground_waits_and_returns_the_exit_code() {
    skip_unless_criu!();
    let env = Env::new("rsfg");
    let (id, pid) = env.detach(
        "c",
        &sh_config(
            "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo $i > /tmp/count; usleep 50000; done; \
             exit 3",
        ),
    );
    wait_count_past(pid, 2);
    let images = env.dir.path().join("images");
    env.ok(&["checkpoint", "--image-path", images.to_str().unwrap(), &id]);
    let bundle = env.dir.path().join("c");
    let rid = env.id("r");
    let pidfile = env.dir.path().join("restored.pid");
    let o = env.cryo(&[
        "restore",
        "--image-path",
        images.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
        "--pid-file",
        pidfile.to_str().unwrap(),
        &rid,
    ]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let written: i64 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(written > 0);
    assert!(
        !env.cryo(&["state", &rid]).status.success(),
        "a foreground restore deletes the container once it exits, as runc does"
    );
}

#[test]
fn an_eager_restore_from_a_damaged_snapshot_is_refused_and_nothing_runs() {
    skip_unless_criu!();
    let env = Env::new("rsdmg");
    let store = env.dir.path().join("store");
    let (id, pid) = env.detach("c", &ballast_config());
    wait_count_past(pid, 2);
    checkpoint_into(&env, &store, "d:v1", &id, false);
    // Damage the big chunks (the ballast, copied in by the lazy-pages server during an eager
    // restore from the store, after CRIU has created the stopped tree).
    assert!(flip_chunks(&store, "d:v1", 16 << 10) > 0);
    let bundle = env.dir.path().join("c");
    let rid = env.id("r");
    let o = restore_snapshot(&env, &store, "d:v1", &bundle, &rid);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a damaged snapshot was restored");
    assert!(err.contains("chunk"), "the error names the chunk: {err}");
    assert!(
        !env.cryo(&["state", &rid]).status.success(),
        "no container left"
    );
    let cg = std::fs::read_dir("/sys/fs/cgroup/freezer/cryo")
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy() == rid))
        .unwrap_or(false);
    assert!(!cg, "the restored tree's cgroup is gone");
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Held by the tests that need `fs.pipe-max-size` raised, one at a time: one putting the old
/// value back must not pull it from under another's CRIU.
static PIPE_MAX_SIZE_USERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `fs.pipe-max-size` raised for a while, put back when dropped.
struct PipeMaxSize {
    was: String,
    want: u64,
}

impl PipeMaxSize {
    const PATH: &'static str = "/proc/sys/fs/pipe-max-size";

    /// A guard when a pipe of `bytes` may not be made now (no CAP_SYS_RESOURCE, the limit
    /// below it); `None` when it may.
    fn at_least(bytes: u64) -> Option<PipeMaxSize> {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for both ends, closed below.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let ok = libc::fcntl(fds[0], libc::F_SETPIPE_SZ, i32::try_from(bytes).unwrap()) >= 0;
            libc::close(fds[0]);
            libc::close(fds[1]);
            if ok {
                return None;
            }
        }
        Some(PipeMaxSize {
            was: std::fs::read_to_string(Self::PATH).unwrap(),
            want: bytes,
        })
    }

    fn raise(&self) {
        std::fs::write(Self::PATH, self.want.to_string()).unwrap();
    }
}

impl Drop for PipeMaxSize {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.was.trim());
    }
}

/// One byte from `fd`, waiting at most `secs`; `None` at end of file or timeout.
fn read_byte(fd: i32, secs: i32) -> Option<u8> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; `b` outlives the read.
    unsafe {
        if libc::poll(&mut p, 1, secs * 1000) != 1 {
            return None;
        }
        let mut b = 0u8;
        (libc::read(fd, std::ptr::addr_of_mut!(b).cast(), 1) == 1).then_some(b)
    }
}

fn wait_exit(child: &mut std::process::Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `cryo ARGS(Some(FD))` (a `checkpoint --lazy-pages`) with FD the write end of a pipe,
/// as runc's `--status-fd`, and waits for the zero byte that says CRIU's page server listens.
fn lazy_checkpoint(
    env: &Env,
    args: &dyn Fn(Option<i32>) -> Vec<String>,
    stderr: &Path,
) -> std::process::Child {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors (not close-on-exec: inherited).
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (r, w) = (fds[0], fds[1]);
    let child = env
        .cmd()
        .args(args(Some(w)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    // SAFETY: our copies; the checkpoint has its own write end. Closed once each.
    unsafe { libc::close(w) };
    let ready = read_byte(r, 60);
    // SAFETY: the read end, ours, not used after.
    unsafe { libc::close(r) };
    assert_eq!(
        ready,
        Some(0),
        "no status byte: {}",
        std::fs::read_to_string(stderr).unwrap_or_default()
    );
    child
}

#[test]
fn lazy_migration_as_runc_does_it_with_criu_lazy_pages() {
    skip_unless_criu!();
    let criu = cryo_snapshot::criu::Criu::locate(None).unwrap();
    let env = Env::new("migrate");
    let (id, sum) = checksum_container(&env);
    let bundle = env.dir.path().join("c");
    let images = env.dir.path().join("images");
    let work = env.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let port = free_port().to_string();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let args = |status_fd: Option<i32>| {
        let mut a = vec!["checkpoint".to_string(), "--lazy-pages".into()];
        a.extend(["--page-server".into(), format!("127.0.0.1:{port}")]);
        if let Some(fd) = status_fd {
            a.extend(["--status-fd".into(), fd.to_string()]);
        }
        a.extend(["--image-path".into(), path(&images)]);
        a.extend(["--work-path".into(), path(&work), id.clone()]);
        a
    };
    // CRIU's lazy page server needs 4 MiB pipes: where this root lacks CAP_SYS_RESOURCE
    // (containers, this CI), beyond fs.pipe-max-size it may not, and cryo refuses before
    // freezing anything. The test then raises the limit for its own duration.
    let _serial = PIPE_MAX_SIZE_USERS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let _limit = PipeMaxSize::at_least(4 << 20).inspect(|guard| {
        let o = env.cryo(&args(None).iter().map(String::as_str).collect::<Vec<_>>());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("pipe-max-size"),
            "{err}"
        );
        assert_eq!(env.status(&id), "running");
        assert!(!images.exists());
        guard.raise();
        println!("raised fs.pipe-max-size for CRIU's lazy page server (no CAP_SYS_RESOURCE)");
    });
    let ckpt_err = env.dir.path().join("checkpoint.stderr");
    let mut ckpt = lazy_checkpoint(&env, &args, &ckpt_err);
    assert!(images.join("inventory.img").exists());
    assert_eq!(meta(&images)["lazy_migration"], true);
    // `restore -d [--lazy-pages] --image-path IMAGES --bundle BUNDLE ID`.
    let restore = |lazy: bool, rid: &str| {
        let (images, bundle) = (path(&images), path(&bundle));
        let mut a = vec!["restore", "-d"];
        a.extend(lazy.then_some("--lazy-pages"));
        a.extend(["--image-path", &images, "--bundle", &bundle, rid]);
        env.cryo(&a)
    };
    // The memory is not in the images: a restore that does not fetch it is refused, and so
    // is a lazy one with nothing to fetch it from; neither leaves a container behind.
    for (lazy, why) in [(false, "lazy migration"), (true, "no lazy-pages daemon")] {
        let o = restore(lazy, &env.id("x"));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why), "{err}");
    }
    assert!(
        env.ok(&["list", "-q"]).trim() == id,
        "only the original is left"
    );
    // The restoring side: CRIU's lazy-pages daemon listens in the image directory (CRIU's
    // work directory at the restore) and fetches from the page server.
    let mut daemon = std::process::Command::new(criu.path())
        .args(["lazy-pages", "--page-server", "--address", "127.0.0.1"])
        .args([
            "--port",
            &port,
            "-D",
            &path(&images),
            "-o",
            "lazy-pages.log",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = images.join("lazy-pages.socket");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "criu lazy-pages never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    let rid = env.id("r");
    let o = restore(true, &rid);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rpid = env.state(&rid)["pid"].as_i64().unwrap();
    let n = wait_count_past(rpid, 0);
    wait_count_past(rpid, n + 2);
    std::fs::write(format!("/proc/{rpid}/root/tmp/check"), b"").unwrap();
    assert_eq!(wait_file(rpid, "/tmp/sum2"), sum, "migrated memory differs");
    // Every page fetched: the checkpoint ends with its container gone, the daemon exits.
    let st = wait_exit(&mut ckpt, 60, "the lazy checkpoint");
    assert!(
        st.success(),
        "checkpoint: {st}: {}",
        std::fs::read_to_string(&ckpt_err).unwrap_or_default()
    );
    assert!(wait_exit(&mut daemon, 30, "criu lazy-pages").success());
    assert!(
        !env.cryo(&["state", &id]).status.success(),
        "the original is gone"
    );
    let n = count(rpid);
    wait_count_past(rpid, n + 2);
    env.remove(&rid);
}

#[test]
fn checkpoint_sends_the_pages_to_a_criu_page_server_as_runc_does() {
    skip_unless_criu!();
    let criu = cryo_snapshot::criu::Criu::locate(None).unwrap();
    let env = Env::new("ps");
    let (id, sum) = checksum_container(&env);
    let path = |p: &Path| p.to_str().unwrap().to_string();
    // The receiving side: `criu page-server` writes the pages into its own directory.
    let (images, received) = (env.dir.path().join("images"), env.dir.path().join("recv"));
    std::fs::create_dir_all(&received).unwrap();
    let port = free_port().to_string();
    let mut server = std::process::Command::new(criu.path())
        .args(["page-server", "-D", &path(&received), "--port", &port])
        .args(["-o", "page-server.log"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // It serves one dump and exits, so it is not probed: a checkpoint that finds it not
    // listening yet fails, leaves the container running, and is tried again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ps = format!("127.0.0.1:{port}");
    loop {
        let o = env.cryo(&[
            "checkpoint",
            "--page-server",
            &ps,
            "--image-path",
            &path(&images),
            &id,
        ]);
        if o.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(Instant::now() < deadline, "checkpoint: {err}");
        assert_eq!(env.status(&id), "running", "{err}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(wait_exit(&mut server, 30, "criu page-server").success());
    // The pages went to the server, the rest to the image directory.
    let has_pages = |d: &Path| {
        std::fs::read_dir(d).unwrap().any(|e| {
            let e = e.unwrap();
            e.file_name().to_string_lossy().starts_with("pages-")
                && e.metadata().unwrap().len() > 6_000_000
        })
    };
    assert!(has_pages(&received) && !has_pages(&images));
    for e in std::fs::read_dir(&images).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), received.join(e.file_name())).unwrap();
    }
    let rid = env.id("r");
    let rpid = restore(&env, &received, &env.dir.path().join("c"), &rid);
    let n = wait_count_past(rpid, 0);
    wait_count_past(rpid, n + 2);
    std::fs::write(format!("/proc/{rpid}/root/tmp/check"), b"").unwrap();
    assert_eq!(wait_file(rpid, "/tmp/sum2"), sum, "restored memory differs");
    env.remove(&rid);
}

#[test]
fn a_lazy_migration_nobody_takes_up_is_given_up_by_killing_its_criu_and_the_container_runs_on() {
    skip_unless_criu!();
    let env = Env::new("unmigrated");
    let (id, pid) = env.detach("c", &counter_config());
    wait_count_past(pid, 2);
    let _serial = PIPE_MAX_SIZE_USERS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let _limit = PipeMaxSize::at_least(4 << 20).inspect(PipeMaxSize::raise);
    let images = env.dir.path().join("images");
    let port = free_port();
    let args = |status_fd: Option<i32>| {
        let mut a = vec!["checkpoint".to_string(), "--lazy-pages".into()];
        a.extend(["--page-server".into(), format!("127.0.0.1:{port}")]);
        if let Some(fd) = status_fd {
            a.extend(["--status-fd".into(), fd.to_string()]);
        }
        a.extend(["--image-path".into(), images.to_string_lossy().into_owned()]);
        a.push(id.clone());
        a
    };
    let stderr = env.dir.path().join("checkpoint.stderr");
    let mut ckpt = lazy_checkpoint(&env, &args, &stderr);
    // Nobody fetches the pages: the tree waits, stopped by CRIU, and `state` still answers.
    let n = count(pid);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(pid), n, "the counter ran while its pages waited");
    assert_eq!(env.status(&id), "running");
    // Given up as with runc: the checkpoint's CRIU (its child) is killed, the kernel lets
    // the tasks CRIU held go, and the checkpoint fails saying so.
    let children = std::fs::read_to_string(format!("/proc/{}/task/{0}/children", ckpt.id()))
        .unwrap_or_default();
    let criu: Vec<i32> = children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    assert_eq!(criu.len(), 1, "the checkpoint's children: {children:?}");
    // SAFETY: kill(2) of the checkpoint's CRIU, found above.
    unsafe { libc::kill(criu[0], libc::SIGKILL) };
    let st = wait_exit(&mut ckpt, 30, "the given-up checkpoint");
    assert!(!st.success());
    assert!(
        std::fs::read_to_string(&stderr).unwrap().contains("criu"),
        "the error names CRIU"
    );
    wait_count_past(pid, n);
    assert_eq!(env.status(&id), "running");
    env.remove(&id);
}

//! cgroup v1 resources as the container and the host see them: memory, pids, cpu, cpuset,
//! blkio, devices; pause/resume through the freezer; `update`, `ps`, `events --stats`; and
//! no cgroup left behind after `delete`. Real containers, as root; each test its own
//! cgroupsPath.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Prints why and returns false unless this machine has the cgroup v1 `controller` mounted.
fn has_v1(controller: &str) -> bool {
    let p = Path::new("/sys/fs/cgroup").join(controller);
    if p.join("cgroup.procs").exists() && !p.join("cgroup.controllers").exists() {
        return true;
    }
    println!(
        "skipped: no cgroup v1 {controller} hierarchy at {}",
        p.display()
    );
    false
}

/// The host side of `file` in the container's cgroup of `controller`.
fn host_file(controller: &str, cg: &str, file: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(cg.trim_start_matches('/'))
        .join(file)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

/// A `sh -c script` config in its own cgroup with these resources.
fn cg_config(script: &str, cg: &str, resources: Value) -> Value {
    let mut c = sh_config(script);
    c["linux"]["cgroupsPath"] = json!(cg);
    let r = c["linux"]["resources"].as_object_mut().unwrap();
    for (k, v) in resources.as_object().unwrap() {
        r.insert(k.clone(), v.clone());
    }
    c
}

/// Every v1 hierarchy mounted under /sys/fs/cgroup (named ones included).
fn v1_hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

#[test]
fn memory_limit_is_seen_inside_and_outside() {
    skip_unless_root!();
    if !has_v1("memory") {
        return;
    }
    let env = Env::new("cg-mem");
    let cg = cgroup_path("mem");
    let c = cg_config(
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory/memory.soft_limit_in_bytes; sleep 1000",
        &cg,
        json!({"memory": {"limit": 64 << 20, "reservation": 32 << 20}}),
    );
    let (id, _) = env.detach("mem", &c);
    assert_eq!(
        read(&host_file("memory", &cg, "memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        read(&host_file("memory", &cg, "memory.soft_limit_in_bytes")),
        (32u64 << 20).to_string()
    );
    env.remove(&id);
    // Inside: the container's /sys/fs/cgroup/memory is its own cgroup.
    let c = cg_config(
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory/memory.soft_limit_in_bytes",
        &cgroup_path("mem-in"),
        json!({"memory": {"limit": 64 << 20, "reservation": 32 << 20}}),
    );
    assert_eq!(
        env.run_ok("mem-in", &c),
        format!("{}\n{}\n", 64u64 << 20, 32u64 << 20)
    );
}

#[test]
fn pids_limit_stops_forks() {
    skip_unless_root!();
    if !has_v1("pids") {
        return;
    }
    let env = Env::new("cg-pids");
    // The inner shell forks sleeps until the limit refuses one; the rest uses builtins only,
    // since at the limit no command can fork.
    let c = cg_config(
        "sh -c 'i=0; while :; do sleep 30 & i=$((i+1)); echo $i > /tmp/n; done' 2>/dev/null; \
         read n < /tmp/n; echo started $n; \
         read m < /sys/fs/cgroup/pids/pids.max; echo max $m",
        &cgroup_path("pids"),
        json!({"pids": {"limit": 10}}),
    );
    // 10 pids: the outer shell, the inner shell and 8 sleeps.
    assert_eq!(env.run_ok("pids", &c), "started 8\nmax 10\n");
}

#[test]
fn cpu_shares_and_quota() {
    skip_unless_root!();
    if !has_v1("cpu") {
        return;
    }
    let env = Env::new("cg-cpu");
    let c = cg_config(
        "cd /sys/fs/cgroup/cpu && cat cpu.shares cpu.cfs_quota_us cpu.cfs_period_us",
        &cgroup_path("cpu"),
        json!({"cpu": {"shares": 512, "quota": 25000, "period": 50000}}),
    );
    assert_eq!(env.run_ok("cpu", &c), "512\n25000\n50000\n");
}

#[test]
fn cpuset_pins_the_process() {
    skip_unless_root!();
    if !has_v1("cpuset") {
        return;
    }
    let env = Env::new("cg-cpuset");
    let ncpu = std::thread::available_parallelism().map_or(1, usize::from);
    let cpu = if ncpu > 1 { "1" } else { "0" };
    let c = cg_config(
        "cat /sys/fs/cgroup/cpuset/cpuset.cpus /sys/fs/cgroup/cpuset/cpuset.mems; \
         grep ^Cpus_allowed_list /proc/self/status",
        &cgroup_path("cpuset"),
        json!({"cpu": {"cpus": cpu, "mems": "0"}}),
    );
    assert_eq!(
        env.run_ok("cpuset", &c),
        format!("{cpu}\n0\nCpus_allowed_list:\t{cpu}\n")
    );
}

#[test]
fn blkio_weight() {
    skip_unless_root!();
    if !has_v1("blkio") {
        return;
    }
    // The weight file lives in child cgroups: look for it in one we make.
    let probe =
        Path::new("/sys/fs/cgroup/blkio").join(format!("cryo-probe-{}", std::process::id()));
    std::fs::create_dir_all(&probe).unwrap();
    let file = ["blkio.weight", "blkio.bfq.weight"]
        .into_iter()
        .find(|f| probe.join(f).exists());
    std::fs::remove_dir(&probe).unwrap();
    let Some(file) = file else {
        println!("skipped: no blkio.weight or blkio.bfq.weight (no CFQ/BFQ scheduler)");
        return;
    };
    let env = Env::new("cg-blkio");
    let cg = cgroup_path("blkio");
    let c = cg_config("sleep 1000", &cg, json!({"blockIO": {"weight": 300}}));
    let (id, _) = env.detach("blkio", &c);
    // blkio.bfq.weight reads "default 300".
    let got = read(&host_file("blkio", &cg, file));
    assert_eq!(got.split_whitespace().last(), Some("300"), "{file}: {got}");
    env.remove(&id);
}

#[test]
fn devices_cgroup_allows_only_listed_devices() {
    skip_unless_root!();
    if !has_v1("devices") {
        return;
    }
    let env = Env::new("cg-dev");
    let cg = cgroup_path("dev");
    // Major 240 has no driver: an allowed open fails with ENXIO, a denied one with EPERM.
    let mut c = cg_config(
        "for d in a b; do head -c 1 /dev/cryo-$d 2>&1 >/dev/null | sed 's/.*: //'; done; \
         echo x > /dev/null && echo null-ok; sleep 1000",
        &cg,
        json!({}),
    );
    c["linux"]["devices"] = json!([
        {"path": "/dev/cryo-a", "type": "c", "major": 240, "minor": 1, "fileMode": 0o666},
        {"path": "/dev/cryo-b", "type": "c", "major": 240, "minor": 2, "fileMode": 0o666}
    ]);
    c["linux"]["resources"]["devices"]
        .as_array_mut()
        .unwrap()
        .push(json!({"allow": true, "type": "c", "major": 240, "minor": 1, "access": "rw"}));
    let (id, _) = env.detach("dev", &c);
    let list = read(&host_file("devices", &cg, "devices.list"));
    let rules: Vec<&str> = list.lines().collect();
    assert!(rules.contains(&"c 240:1 rw"), "{list}");
    assert!(rules.contains(&"c 1:3 rwm"), "{list}");
    assert!(!rules.contains(&"a *:* rwm"), "{list}");
    assert!(!list.contains("240:2"), "{list}");
    env.remove(&id);

    c["process"]["args"] = json!([
        "sh",
        "-c",
        "for d in a b; do head -c 1 /dev/cryo-$d 2>&1 >/dev/null | sed 's/.*: //'; done; \
         echo x > /dev/null && echo null-ok"
    ]);
    c["linux"]["cgroupsPath"] = json!(cgroup_path("dev-run"));
    assert_eq!(
        env.run_ok("dev-run", &c),
        "No such device or address\nOperation not permitted\nnull-ok\n"
    );
}

#[test]
fn pause_and_resume_freeze_the_cgroup() {
    skip_unless_root!();
    if !has_v1("freezer") {
        return;
    }
    let env = Env::new("cg-freeze");
    let cg = cgroup_path("freeze");
    let (id, pid) = env.detach(
        "freeze",
        &cg_config("sleep 1000 & sleep 1000 & wait", &cg, json!({})),
    );
    let state = host_file("freezer", &cg, "freezer.state");
    assert_eq!(read(&state), "THAWED");
    env.ok(&["pause", &id]);
    assert_eq!(env.status(&id), "paused");
    assert_eq!(read(&state), "FROZEN");
    // A frozen task shows as stopped-in-kernel; signals wait for the thaw.
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(st.contains("State:\tD") || st.contains("State:\tS"), "{st}");
    // runc refuses to pause a paused container and to resume a running one.
    assert_eq!(env.cryo(&["pause", &id]).status.code(), Some(1));
    env.ok(&["resume", &id]);
    assert_eq!(env.status(&id), "running");
    assert_eq!(read(&state), "THAWED");
    assert_eq!(env.cryo(&["resume", &id]).status.code(), Some(1));
    env.remove(&id);
}

#[test]
fn update_changes_limits_of_a_running_container() {
    skip_unless_root!();
    if !has_v1("memory") || !has_v1("pids") || !has_v1("cpu") {
        return;
    }
    let env = Env::new("cg-update");
    let cg = cgroup_path("update");
    let (id, _) = env.detach(
        "update",
        &cg_config(
            "sleep 1000",
            &cg,
            json!({"memory": {"limit": 64 << 20}, "pids": {"limit": 50}}),
        ),
    );
    env.ok(&[
        "update",
        "--memory",
        &(128u64 << 20).to_string(),
        "--pids-limit",
        "70",
        "--cpu-shares",
        "256",
        &id,
    ]);
    assert_eq!(
        read(&host_file("memory", &cg, "memory.limit_in_bytes")),
        (128u64 << 20).to_string()
    );
    assert_eq!(read(&host_file("pids", &cg, "pids.max")), "70");
    assert_eq!(read(&host_file("cpu", &cg, "cpu.shares")), "256");
    // runc's -r FILE: a linux.resources JSON.
    let r = env.dir.path().join("resources.json");
    std::fs::write(
        &r,
        json!({"memory": {"limit": 96 << 20}, "pids": {"limit": 80}}).to_string(),
    )
    .unwrap();
    env.ok(&["update", "-r", r.to_str().unwrap(), &id]);
    assert_eq!(
        read(&host_file("memory", &cg, "memory.limit_in_bytes")),
        (96u64 << 20).to_string()
    );
    assert_eq!(read(&host_file("pids", &cg, "pids.max")), "80");
    env.remove(&id);
}

#[test]
fn ps_and_events_stats() {
    skip_unless_root!();
    if !has_v1("memory") || !has_v1("pids") {
        return;
    }
    let env = Env::new("cg-ps");
    let cg = cgroup_path("ps");
    let (id, pid) = env.detach(
        "ps",
        &cg_config(
            "sleep 1000 & sleep 1000 & wait",
            &cg,
            json!({"memory": {"limit": 64 << 20}}),
        ),
    );
    // Both sleeps have started once the cgroup holds three tasks.
    let procs = host_file("pids", &cg, "cgroup.procs");
    for _ in 0..500 {
        if read(&procs).lines().count() == 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let pids: Vec<i64> = serde_json::from_str(&env.ok(&["ps", "--format", "json", &id])).unwrap();
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert!(pids.contains(&pid));
    let table = env.ok(&["ps", &id]);
    assert!(table.starts_with("UID"), "{table}");
    let sleeps = table.lines().filter(|l| l.ends_with(" sleep 1000")).count();
    assert_eq!(sleeps, 2, "{table}");

    let ev: Value = serde_json::from_str(&env.ok(&["events", "--stats", &id])).unwrap();
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], id.as_str());
    assert_eq!(ev["data"]["pids"]["current"], 3);
    assert_eq!(ev["data"]["memory"]["usage"]["limit"], 64u64 << 20);
    assert!(ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0);
    assert!(ev["data"]["cpu"]["usage"]["total"].as_u64().unwrap() > 0);
    env.remove(&id);
}

#[test]
fn delete_leaves_no_cgroup_behind() {
    skip_unless_root!();
    let env = Env::new("cg-delete");
    let leftovers = |cg: &str| -> Vec<PathBuf> {
        v1_hierarchies()
            .into_iter()
            .map(|h| h.join(cg.trim_start_matches('/')))
            .filter(|p| p.exists())
            .collect()
    };
    // Detached, then killed and deleted.
    let cg = cgroup_path("del");
    let (id, _) = env.detach(
        "del",
        &cg_config(
            "sleep 1000",
            &cg,
            json!({"memory": {"limit": 64 << 20}, "pids": {"limit": 20}}),
        ),
    );
    assert!(!leftovers(&cg).is_empty(), "the container has no cgroup");
    env.ok(&["kill", &id, "KILL"]);
    env.wait_status(&id, "stopped");
    env.ok(&["delete", &id]);
    assert_eq!(leftovers(&cg), Vec::<PathBuf>::new());
    // Running, force-deleted.
    let cg = cgroup_path("del-force");
    let (id, _) = env.detach("del-force", &cg_config("sleep 1000 & wait", &cg, json!({})));
    env.ok(&["delete", "--force", &id]);
    assert_eq!(leftovers(&cg), Vec::<PathBuf>::new());
    // Foreground run, which deletes on exit.
    let cg = cgroup_path("del-run");
    env.run_ok("del-run", &cg_config("true", &cg, json!({})));
    assert_eq!(leftovers(&cg), Vec::<PathBuf>::new());
}

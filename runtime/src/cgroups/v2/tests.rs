//! v2 manager against a fake cgroup2 tree: subtree_control, conversions, every write.

use std::path::Path;
use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use serde_json::json;

use super::cpu::shares_to_weight;
use super::io::blkio_to_io_weight;
use super::memory::swap_max;
use crate::cgroups::fake::FakeV2;
use crate::cgroups::fs::journal;
use crate::cgroups::{create_at, from_state, CgroupManager, FreezerState, Mode, UNIFIED};

const ALL: &str = "cpuset cpu io memory hugetlb pids rdma misc";

fn resources(v: serde_json::Value) -> LinuxResources {
    serde_json::from_value(v).unwrap()
}

fn setup(offered: &str) -> (FakeV2, Box<dyn CgroupManager>) {
    let fake = FakeV2::new(offered);
    fake.mkdir("cryo/c1", offered);
    let m = create_at(fake.root(), Mode::V2, None, "c1").unwrap();
    journal::take();
    (fake, m)
}

fn writes(root: &Path) -> Vec<(String, String)> {
    journal::take()
        .into_iter()
        .map(|(p, v)| (p.strip_prefix(root).unwrap().display().to_string(), v))
        .collect()
}

fn w(p: &str, v: &str) -> (String, String) {
    (p.to_string(), v.to_string())
}

#[test]
fn apply_enables_controllers_from_the_root_down() {
    let (fake, m) = setup(ALL);
    // The root already delegates cpu: only the rest is enabled there.
    fake.write("", "cgroup.subtree_control", "cpu\n");
    m.apply(77).unwrap();
    assert_eq!(
        writes(fake.root()),
        [
            w(
                "cgroup.subtree_control",
                "+cpuset +io +memory +pids +hugetlb"
            ),
            w(
                "cryo/cgroup.subtree_control",
                "+cpu +cpuset +io +memory +pids +hugetlb"
            ),
            w("cryo/c1/cgroup.procs", "77"),
        ]
    );
    assert_eq!(fake.read("cryo/c1", "cgroup.procs"), "77");

    // Only what each level offers.
    let (fake, m) = setup("memory pids");
    m.apply(78).unwrap();
    assert_eq!(
        writes(fake.root())[0],
        w("cgroup.subtree_control", "+memory +pids")
    );
}

#[test]
fn set_converts_and_writes_every_file() {
    let (fake, m) = setup(ALL);
    fake.write("cryo/c1", "memory.high", "max\n");
    // oci-spec 0.7 spells the IOPS lists "throttle…IopsDevice" (the runtime spec: "IOPS").
    let r = resources(json!({
        "memory": {"limit": 268435456, "reservation": 134217728, "swap": 536870912, "swappiness": 10, "disableOOMKiller": true},
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
        "pids": {"limit": 100},
        "blockIO": {
            "weight": 300, "leafWeight": 200,
            "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteIopsDevice": [{"major": 8, "minor": 16, "rate": 300}]
        },
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
        "unified": {"memory.high": "200000000"}
    }));
    m.set(&r).unwrap();
    let c = |f: &str, v: &str| w(&format!("cryo/c1/{f}"), v);
    assert_eq!(
        writes(fake.root()),
        [
            c("cpuset.cpus", "0-1"),
            c("cpuset.mems", "0"),
            c("cpu.weight", "39"),
            c("cpu.max", "50000 100000"),
            c("memory.swap.max", "268435456"),
            c("memory.max", "268435456"),
            c("memory.low", "134217728"),
            c("pids.max", "100"),
            c("io.weight", "2930"),
            c("io.weight", "8:0 910"),
            c("io.max", "8:0 rbps=1048576"),
            c("io.max", "8:16 wiops=300"),
            c("hugetlb.2MB.max", "4194304"),
            c("memory.high", "200000000"),
        ]
    );
    assert_eq!(fake.read("cryo/c1", "memory.max"), "268435456");

    // Only the period: the current quota stays.
    fake.write("cryo/c1", "cpu.max", "20000 100000\n");
    m.set(&resources(json!({"cpu": {"period": 50000}})))
        .unwrap();
    assert_eq!(fake.read("cryo/c1", "cpu.max"), "20000 50000");
    m.set(&resources(
        json!({"cpu": {"quota": -1}, "memory": {"limit": -1}}),
    ))
    .unwrap();
    assert_eq!(fake.read("cryo/c1", "cpu.max"), "max");
    assert_eq!(fake.read("cryo/c1", "memory.max"), "max");
    assert_eq!(fake.read("cryo/c1", "memory.swap.max"), "max");
}

#[test]
fn bfq_weights_are_written_unconverted() {
    let (fake, m) = setup(ALL);
    fake.write("cryo/c1", "io.bfq.weight", "default 100\n");
    m.set(&resources(json!({"blockIO": {"weight": 300, "weightDevice": [{"major": 8, "minor": 0, "weight": 50}]}})))
        .unwrap();
    assert_eq!(
        writes(fake.root()),
        [
            w("cryo/c1/io.bfq.weight", "300"),
            w("cryo/c1/io.bfq.weight", "8:0 50")
        ]
    );
}

#[test]
fn conversions_match_runc() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(shares_to_weight(1), 1);
    assert_eq!(shares_to_weight(1_000_000), 10_000);
    assert_eq!(blkio_to_io_weight(10), 1);
    assert_eq!(blkio_to_io_weight(500), 4950);
    assert_eq!(blkio_to_io_weight(1000), 10_000);
    assert_eq!(swap_max(100, 0).unwrap(), None);
    assert_eq!(swap_max(-1, 0).unwrap().as_deref(), Some("max"));
    assert_eq!(swap_max(100, -1).unwrap().as_deref(), Some("max"));
    assert_eq!(swap_max(100, 100).unwrap().as_deref(), Some("0"));
    assert_eq!(swap_max(100, 300).unwrap().as_deref(), Some("200"));
    assert!(swap_max(0, 300)
        .unwrap_err()
        .to_string()
        .contains("needs a memory limit"));
    assert!(swap_max(300, 100).is_err());
}

#[test]
fn missing_swap_file_is_fine_for_max_and_zero_only() {
    let (fake, m) = setup(ALL);
    std::fs::remove_file(fake.root().join("cryo/c1/memory.swap.max")).unwrap();
    m.set(&resources(
        json!({"memory": {"limit": 1048576, "swap": 1048576}}),
    ))
    .unwrap();
    let e = m.set(&resources(
        json!({"memory": {"limit": 1048576, "swap": 2097152}}),
    ));
    let msg = e.unwrap_err().to_string();
    assert!(
        msg.starts_with("linux.resources.memory.swap: writing \"1048576\""),
        "{msg}"
    );
}

#[test]
fn errors_name_field_and_controller() {
    let (fake, m) = setup("memory pids");
    let e = m
        .set(&resources(json!({"cpu": {"shares": 512}})))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "linux.resources.cpu.shares: needs the cpu cgroup controller, which is not enabled \
             for {} (its cgroup.controllers: \"memory pids\")",
            fake.root().join("cryo/c1").display()
        )
    );
    let e = m
        .set(&resources(json!({"cpu": {"realtimeRuntime": 1000}})))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "linux.resources.cpu.realtimeRuntime: cgroup v2 has no realtime CPU limits"
    );
    let e = m
        .set(&resources(json!({"network": {"classID": 1}})))
        .unwrap_err();
    assert!(e.to_string().starts_with("linux.resources.network:"), "{e}");
    let e = m
        .set(&resources(json!({"unified": {"../escape": "1"}})))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("linux.resources.unified.\"../escape\""),
        "{e}"
    );
    let e = m
        .set(&resources(json!({"memory": {"reservation": -5}})))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "linux.resources.memory.reservation: expected a byte count or -1 for no limit, found -5"
    );
    // Not a cgroup2 directory: the device filter cannot be attached.
    let e = m.set(&resources(
        json!({"devices": [{"allow": false, "access": "rwm"}]}),
    ));
    let msg = e.unwrap_err().to_string();
    assert!(msg.starts_with("linux.resources.devices: "), "{msg}");
}

#[test]
fn freeze_waits_for_cgroup_events() {
    let (fake, m) = setup(ALL);
    let events = fake.root().join("cryo/c1/cgroup.events");
    // The "kernel" reports frozen a little later.
    let ev = events.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::write(ev, "populated 1\nfrozen 1\n").unwrap();
    });
    m.freeze(FreezerState::Frozen).unwrap();
    t.join().unwrap();
    assert_eq!(
        std::fs::read_to_string(&events).unwrap(),
        "populated 1\nfrozen 1\n"
    );
    assert_eq!(fake.read("cryo/c1", "cgroup.freeze"), "1");
    assert_eq!(m.freezer_state().unwrap(), FreezerState::Frozen);
    std::fs::write(&events, "populated 1\nfrozen 0\n").unwrap();
    m.freeze(FreezerState::Thawed).unwrap();
    assert_eq!(m.freezer_state().unwrap(), FreezerState::Thawed);
}

#[test]
fn pids_stats_destroy_state() {
    let (fake, m) = setup(ALL);
    let sub = fake.mkdir("cryo/c1/inner", ALL);
    fake.write("cryo/c1", "cgroup.procs", "5\n3\n");
    std::fs::write(sub.join("cgroup.procs"), "4\n").unwrap();
    assert_eq!(m.pids().unwrap(), [3, 4, 5]);

    let s = m.stats().unwrap();
    assert_eq!(s.cpu.usage.total, 2_000_000);
    assert_eq!(s.cpu.usage.user, 1_500_000);
    assert_eq!(s.cpu.usage.kernel, 500_000);
    assert_eq!(s.cpu.throttling.throttled_time, 30_000);
    assert_eq!(s.memory.usage.usage, 4096);
    assert_eq!(s.memory.usage.limit, u64::MAX);
    assert_eq!(s.memory.usage.max, 8192);
    assert_eq!(s.memory.usage.failcnt, 4);
    assert_eq!(s.memory.cache, 2048);
    assert_eq!(s.pids.current, 2);
    assert_eq!(s.blkio.io_service_bytes_recursive[0].value, 4096);
    assert!(s.hugetlb.contains_key("2MB"));

    let st = m.state();
    assert_eq!(st.mode, Mode::V2);
    assert_eq!(st.paths[UNIFIED], fake.root().join("cryo/c1"));
    let back: crate::cgroups::CgroupState =
        serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
    assert_eq!(from_state(&back).unwrap().state(), st);

    m.destroy().unwrap();
    assert!(!fake.root().join("cryo/c1").exists());
    assert!(fake.root().join("cryo").exists());
    m.destroy().unwrap();
    assert_eq!(m.freezer_state().unwrap(), FreezerState::Thawed);
    assert!(m.pids().unwrap().is_empty());
}

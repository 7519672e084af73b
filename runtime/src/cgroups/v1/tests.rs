//! v1 manager against a fake cgroupfs tree: every write, its order and its content.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use serde_json::json;

use crate::cgroups::fake::FakeV1;
use crate::cgroups::fs::journal;
use crate::cgroups::{create_at, from_state, CgroupManager, FreezerState, Mode};

const ALL: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "hugetlb",
    "net_cls", "net_prio",
];

fn resources(v: serde_json::Value) -> LinuxResources {
    serde_json::from_value(v).unwrap()
}

/// A fake tree with `controllers` and the container's cgroup `cryo/c1` in each.
fn setup(controllers: &[&str]) -> (FakeV1, Box<dyn CgroupManager>) {
    let fake = FakeV1::new(controllers);
    for c in controllers {
        fake.mkdir(c, "cryo/c1");
    }
    let m = create_at(fake.root(), Mode::V1, None, "c1").unwrap();
    journal::take();
    (fake, m)
}

/// The journal as (controller-relative path, value) pairs.
fn writes(root: &Path) -> Vec<(String, String)> {
    journal::take()
        .into_iter()
        .map(|(p, v)| (rel(root, &p), v))
        .collect()
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

fn w(p: &str, v: &str) -> (String, String) {
    (p.to_string(), v.to_string())
}

#[test]
fn apply_joins_every_hierarchy_and_fills_cpuset_parents() {
    let (fake, m) = setup(ALL);
    m.apply(4242).unwrap();
    let got = writes(fake.root());
    // cpuset: both new levels inherit cpus/mems from their parent before the task joins.
    let cpuset: Vec<_> = got
        .iter()
        .filter(|(p, _)| p.starts_with("cpuset/"))
        .cloned()
        .collect();
    assert_eq!(
        cpuset,
        [
            w("cpuset/cryo/cpuset.cpus", "0-3"),
            w("cpuset/cryo/cpuset.mems", "0"),
            w("cpuset/cryo/c1/cpuset.cpus", "0-3"),
            w("cpuset/cryo/c1/cpuset.mems", "0"),
            w("cpuset/cryo/c1/cgroup.procs", "4242"),
        ]
    );
    for c in ALL {
        assert!(
            got.contains(&w(&format!("{c}/cryo/c1/cgroup.procs"), "4242")),
            "{c}"
        );
        assert_eq!(fake.read(c, "cryo/c1", "cgroup.procs"), "4242");
    }
    assert_eq!(got.len(), ALL.len() + 4);
    assert!(m.apply(0).is_err());
}

#[test]
fn set_writes_every_controller_file() {
    let (fake, m) = setup(ALL);
    // oci-spec 0.7 spells the IOPS lists "throttle…IopsDevice" (the runtime spec: "IOPS").
    let r = resources(json!({
        "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}],
        "memory": {"limit": 268435456, "reservation": 134217728, "swap": 536870912, "kernel": 1000, "swappiness": 10, "disableOOMKiller": true},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "realtimeRuntime": 1000, "realtimePeriod": 1000000, "cpus": "0-1", "mems": "0"},
        "pids": {"limit": 100},
        "blockIO": {
            "weight": 300, "leafWeight": 200,
            "weightDevice": [{"major": 8, "minor": 0, "weight": 100, "leafWeight": 50}],
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
            "throttleWriteIopsDevice": [{"major": 8, "minor": 16, "rate": 300}]
        },
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
        "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]}
    }));
    m.set(&r).unwrap();
    let p = "cryo/c1";
    let mut expected = vec![
        w("cpuset/cryo/c1/cpuset.cpus", "0-1"),
        w("cpuset/cryo/c1/cpuset.mems", "0"),
        w("cpu/cryo/c1/cpu.shares", "512"),
        w("cpu/cryo/c1/cpu.cfs_period_us", "100000"),
        w("cpu/cryo/c1/cpu.cfs_quota_us", "50000"),
        w("cpu/cryo/c1/cpu.rt_period_us", "1000000"),
        w("cpu/cryo/c1/cpu.rt_runtime_us", "1000"),
        // The current limit (unlimited) is above the new memory+swap: memory goes first.
        w("memory/cryo/c1/memory.limit_in_bytes", "268435456"),
        w("memory/cryo/c1/memory.memsw.limit_in_bytes", "536870912"),
        w("memory/cryo/c1/memory.soft_limit_in_bytes", "134217728"),
        w("memory/cryo/c1/memory.oom_control", "1"),
        w("memory/cryo/c1/memory.swappiness", "10"),
        w("pids/cryo/c1/pids.max", "100"),
        w("blkio/cryo/c1/blkio.weight", "300"),
        w("blkio/cryo/c1/blkio.leaf_weight", "200"),
        w("blkio/cryo/c1/blkio.weight_device", "8:0 100"),
        w("blkio/cryo/c1/blkio.leaf_weight_device", "8:0 50"),
        w(
            "blkio/cryo/c1/blkio.throttle.read_bps_device",
            "8:0 1048576",
        ),
        w("blkio/cryo/c1/blkio.throttle.write_iops_device", "8:16 300"),
        w("devices/cryo/c1/devices.deny", "a"),
        w("devices/cryo/c1/devices.deny", "a"),
        w("devices/cryo/c1/devices.allow", "c 10:229 rw"),
    ];
    for d in crate::cgroups::devices::DEFAULT_ALLOWED {
        expected.push(w("devices/cryo/c1/devices.allow", &d.v1_string()));
    }
    expected.extend([
        w("hugetlb/cryo/c1/hugetlb.2MB.limit_in_bytes", "4194304"),
        w("net_cls/cryo/c1/net_cls.classid", "1048577"),
        w("net_prio/cryo/c1/net_prio.ifpriomap", "eth0 5"),
    ]);
    assert_eq!(writes(fake.root()), expected);
    // Single-write files hold the value.
    assert_eq!(fake.read("memory", p, "memory.limit_in_bytes"), "268435456");
    assert_eq!(fake.read("cpu", p, "cpu.cfs_quota_us"), "50000");
    assert_eq!(fake.read("pids", p, "pids.max"), "100");
    assert_eq!(fake.read("cpuset", p, "cpuset.cpus"), "0-1");
}

#[test]
fn memory_and_swap_order_follows_the_current_limit() {
    let (fake, m) = setup(&["memory"]);
    std::fs::write(
        fake.root().join("memory/cryo/c1/memory.limit_in_bytes"),
        "1000000\n",
    )
    .unwrap();
    m.set(&resources(
        json!({"memory": {"limit": 268435456, "swap": 536870912}}),
    ))
    .unwrap();
    assert_eq!(
        writes(fake.root()),
        [
            w("memory/cryo/c1/memory.memsw.limit_in_bytes", "536870912"),
            w("memory/cryo/c1/memory.limit_in_bytes", "268435456"),
        ]
    );
    // "No limit" with swap left out lifts the memory+swap limit first.
    m.set(&resources(json!({"memory": {"limit": -1}}))).unwrap();
    assert_eq!(
        writes(fake.root()),
        [
            w("memory/cryo/c1/memory.memsw.limit_in_bytes", "-1"),
            w("memory/cryo/c1/memory.limit_in_bytes", "-1"),
        ]
    );
    // Without swap accounting, swap is ignored.
    std::fs::remove_file(
        fake.root()
            .join("memory/cryo/c1/memory.memsw.limit_in_bytes"),
    )
    .unwrap();
    m.set(&resources(
        json!({"memory": {"limit": 1048576, "swap": 2097152}}),
    ))
    .unwrap();
    assert_eq!(
        writes(fake.root()),
        [w("memory/cryo/c1/memory.limit_in_bytes", "1048576")]
    );
}

#[test]
fn pids_limit_zero_or_negative_is_max() {
    let (fake, m) = setup(&["pids"]);
    for (limit, want) in [(-1, "max"), (0, "max"), (7, "7")] {
        m.set(&resources(json!({"pids": {"limit": limit}})))
            .unwrap();
        assert_eq!(fake.read("pids", "cryo/c1", "pids.max"), want);
    }
}

#[test]
fn cpu_period_only_and_quota_unlimited() {
    let (fake, m) = setup(&["cpu"]);
    m.set(&resources(json!({"cpu": {"quota": -1}}))).unwrap();
    m.set(&resources(json!({"cpu": {"period": 250000}})))
        .unwrap();
    assert_eq!(
        writes(fake.root()),
        [
            w("cpu/cryo/c1/cpu.cfs_quota_us", "-1"),
            w("cpu/cryo/c1/cpu.cfs_period_us", "250000")
        ]
    );
}

#[test]
fn invalid_values_name_the_field() {
    let (fake, m) = setup(&["cpu", "memory", "pids", "devices"]);
    let cases = [
        (
            json!({"cpu": {"quota": 500}}),
            "linux.resources.cpu.quota: the kernel's minimum is 1000 µs (-1: no limit), found 500",
        ),
        (
            json!({"cpu": {"period": 100}}),
            "linux.resources.cpu.period: the kernel accepts 1000 to 1000000 µs, found 100",
        ),
        (
            json!({"memory": {"swappiness": 101}}),
            "linux.resources.memory.swappiness: expected 0 to 100, found 101",
        ),
        (
            json!({"memory": {"limit": 2097152, "swap": 1048576}}),
            "linux.resources.memory.swap: memory+swap must be at least the memory limit (2097152), found 1048576",
        ),
        (
            json!({"memory": {"limit": -7}}),
            "linux.resources.memory.limit: expected a byte count or -1 for no limit, found -7",
        ),
        (
            json!({"devices": [{"allow": true, "type": "p", "access": "r"}]}),
            "linux.resources.devices[0].type: the devices cgroup has no rule type for FIFOs (use a, b, c or u), found \"p\"",
        ),
        (
            json!({"unified": {"memory.high": "1"}}),
            "linux.resources.unified: needs cgroup v2, and this host uses cgroup v1",
        ),
    ];
    for (r, msg) in cases {
        assert_eq!(m.set(&resources(r)).unwrap_err().to_string(), msg);
    }
    // Refused before anything was written.
    assert!(writes(fake.root()).is_empty());

    // A kernel refusal names the field, the value and the file.
    let dir = fake.root().join("pids/cryo/c1");
    std::fs::remove_file(dir.join("pids.max")).unwrap();
    let e = m
        .set(&resources(json!({"pids": {"limit": 100}})))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "linux.resources.pids.limit: writing \"100\" to {}: No such file or directory",
            dir.join("pids.max").display()
        )
    );
}

#[test]
fn unmounted_controllers_fail_only_when_asked() {
    let (_fake, m) = setup(&["cpu", "pids"]);
    m.set(&resources(
        json!({"pids": {"limit": 5}, "cpu": {"shares": 100}}),
    ))
    .unwrap();
    let e = m
        .set(&resources(json!({"memory": {"limit": 1048576}})))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "linux.resources.memory.limit: needs the memory cgroup controller, which is not mounted"
    );
    let e = m.set(&resources(
        json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}),
    ));
    assert!(e.unwrap_err().to_string().contains("hugetlb"));
    // Fields that need nothing (kernel memory, empty lists) do not need the controller.
    m.set(&resources(
        json!({"memory": {"kernel": 1}, "blockIO": {}, "hugepageLimits": []}),
    ))
    .unwrap();
    assert!(m
        .freeze(FreezerState::Frozen)
        .unwrap_err()
        .to_string()
        .contains("freezer"));
    assert_eq!(m.freezer_state().unwrap(), FreezerState::Thawed);
}

#[test]
fn blkio_falls_back_to_bfq_and_explains_a_missing_file() {
    let (fake, m) = setup(&["blkio"]);
    let dir = fake.root().join("blkio/cryo/c1");
    std::fs::remove_file(dir.join("blkio.weight")).unwrap();
    let e = m
        .set(&resources(json!({"blockIO": {"weight": 300}})))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "linux.resources.blockIO.weight: writing \"300\" to {}: No such file or directory \
             (this kernel's I/O scheduler does not offer it)",
            dir.join("blkio.bfq.weight").display()
        )
    );
    std::fs::write(dir.join("blkio.bfq.weight"), "100\n").unwrap();
    std::fs::write(dir.join("blkio.bfq.weight_device"), "").unwrap();
    m.set(&resources(json!({"blockIO": {"weight": 300, "weightDevice": [{"major": 8, "minor": 0, "weight": 20}]}})))
        .unwrap();
    let got = writes(fake.root());
    assert_eq!(
        got[1..],
        [
            w("blkio/cryo/c1/blkio.bfq.weight", "300"),
            w("blkio/cryo/c1/blkio.bfq.weight_device", "8:0 20")
        ]
    );
}

#[test]
fn hugetlb_page_sizes_are_checked() {
    let (_fake, m) = setup(&["hugetlb"]);
    let e = m.set(&resources(
        json!({"hugepageLimits": [{"pageSize": "../2MB", "limit": 1}]}),
    ));
    assert!(e
        .unwrap_err()
        .to_string()
        .starts_with("linux.resources.hugepageLimits[0].pageSize"));
    let e = m.set(&resources(
        json!({"hugepageLimits": [{"pageSize": "16GB", "limit": 1}]}),
    ));
    let msg = e.unwrap_err().to_string();
    assert!(
        msg.starts_with("linux.resources.hugepageLimits[0].limit: writing \"1\""),
        "{msg}"
    );
    assert!(
        msg.ends_with("(this kernel has no 16GB huge pages)"),
        "{msg}"
    );
}

#[test]
fn freeze_thaw_pids_stats() {
    let (fake, m) = setup(ALL);
    m.freeze(FreezerState::Frozen).unwrap();
    assert_eq!(fake.read("freezer", "cryo/c1", "freezer.state"), "FROZEN");
    assert_eq!(m.freezer_state().unwrap(), FreezerState::Frozen);
    m.freeze(FreezerState::Thawed).unwrap();
    assert_eq!(m.freezer_state().unwrap(), FreezerState::Thawed);

    let sub = fake.mkdir("pids", "cryo/c1/sub");
    std::fs::write(fake.root().join("pids/cryo/c1/cgroup.procs"), "30\n10\n").unwrap();
    std::fs::write(sub.join("cgroup.procs"), "20\n").unwrap();
    assert_eq!(m.pids().unwrap(), [10, 20, 30]);

    let s = m.stats().unwrap();
    assert_eq!(s.memory.usage.usage, 4_096_000);
    assert_eq!(s.memory.usage.max, 8_192_000);
    assert_eq!(s.memory.usage.failcnt, 2);
    assert_eq!(s.memory.usage.limit, 9_223_372_036_854_771_712);
    assert_eq!(s.memory.cache, 1500);
    assert_eq!(s.memory.raw["rss"], 2000);
    assert_eq!(s.cpu.usage.total, 123_456_789);
    assert_eq!(s.cpu.usage.percpu, [100_000_000, 23_456_789]);
    assert!(s.cpu.usage.user > s.cpu.usage.kernel && s.cpu.usage.kernel > 0);
    assert_eq!(s.cpu.throttling.throttled_periods, 3);
    assert_eq!(s.cpu.throttling.throttled_time, 5000);
    assert_eq!(s.pids.current, 3);
    assert_eq!(s.pids.limit, 0);
    assert_eq!(s.blkio.io_service_bytes_recursive.len(), 2);
    assert_eq!(s.hugetlb["2MB"].usage, 2_097_152);
    assert_eq!(s.hugetlb["2MB"].failcnt, 1);
    assert!(s.hugetlb.contains_key("1GB"));
}

#[test]
fn destroy_removes_every_dir_and_tolerates_missing_ones() {
    let (fake, m) = setup(ALL);
    fake.mkdir("memory", "cryo/c1/nested");
    m.destroy().unwrap();
    for c in ALL {
        assert!(!fake.root().join(c).join("cryo/c1").exists(), "{c}");
        assert!(
            fake.root().join(c).join("cryo").exists(),
            "parents stay, as in runc"
        );
    }
    m.destroy().unwrap();
}

#[test]
fn state_round_trips() {
    let (fake, m) = setup(&["memory", "cpu"]);
    let st = m.state();
    assert_eq!(st.mode, Mode::V1);
    assert_eq!(st.paths["memory"], fake.root().join("memory/cryo/c1"));
    assert_eq!(st.mounts["cpu"], fake.root().join("cpu"));
    let json = serde_json::to_string(&st).unwrap();
    assert!(json.contains("\"mode\":\"v1\""), "{json}");
    let back = serde_json::from_str(&json).unwrap();
    assert_eq!(st, back);
    let m2 = from_state(&back).unwrap();
    assert_eq!(m2.state(), st);
}

#[test]
fn cgroups_path_absolute_and_relative() {
    let fake = FakeV1::new(&["pids"]);
    let m = create_at(fake.root(), Mode::V1, Some("/a/b"), "id").unwrap();
    assert_eq!(m.state().paths["pids"], fake.root().join("pids/a/b"));
    let m = create_at(fake.root(), Mode::V1, Some("rel"), "id").unwrap();
    assert_eq!(
        m.state().paths["pids"],
        PathBuf::from(fake.root()).join("pids/rel")
    );
}

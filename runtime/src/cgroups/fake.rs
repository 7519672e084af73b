//! Test helpers: fake v1 and v2 cgroupfs trees in a tempdir, with the files the kernel
//! would create in each cgroup directory and their initial contents.

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A fake v1 tree: `root/<controller>/…`.
pub struct FakeV1 {
    pub dir: TempDir,
}

/// A fake v2 tree.
pub struct FakeV2 {
    pub dir: TempDir,
}

const V1_COMMON: &[(&str, &str)] = &[
    ("cgroup.procs", ""),
    ("tasks", ""),
    ("notify_on_release", "0\n"),
    ("cgroup.clone_children", "0\n"),
];

const UNLIMITED: &str = "9223372036854771712\n";

fn v1_files(controller: &str, is_root: bool) -> Vec<(String, String)> {
    let mut f: Vec<(&str, &str)> = match controller {
        "cpu" => vec![
            ("cpu.shares", "1024\n"),
            ("cpu.cfs_quota_us", "-1\n"),
            ("cpu.cfs_period_us", "100000\n"),
            ("cpu.cfs_burst_us", "0\n"),
            ("cpu.idle", "0\n"),
            ("cpu.rt_period_us", "1000000\n"),
            ("cpu.rt_runtime_us", "0\n"),
            (
                "cpu.stat",
                "nr_periods 10\nnr_throttled 3\nthrottled_time 5000\n",
            ),
        ],
        "cpuacct" => vec![
            ("cpuacct.usage", "123456789\n"),
            ("cpuacct.usage_percpu", "100000000 23456789 \n"),
            ("cpuacct.stat", "user 10\nsystem 5\n"),
        ],
        "cpuset" if is_root => vec![("cpuset.cpus", "0-3\n"), ("cpuset.mems", "0\n")],
        "cpuset" => vec![("cpuset.cpus", "\n"), ("cpuset.mems", "\n")],
        "memory" => vec![
            ("memory.limit_in_bytes", UNLIMITED),
            ("memory.memsw.limit_in_bytes", UNLIMITED),
            ("memory.soft_limit_in_bytes", UNLIMITED),
            ("memory.usage_in_bytes", "4096000\n"),
            ("memory.max_usage_in_bytes", "8192000\n"),
            ("memory.failcnt", "2\n"),
            ("memory.memsw.usage_in_bytes", "4096000\n"),
            ("memory.memsw.max_usage_in_bytes", "8192000\n"),
            ("memory.memsw.failcnt", "0\n"),
            ("memory.swappiness", "60\n"),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
            ),
            ("memory.stat", "cache 1000\nrss 2000\ntotal_cache 1500\n"),
        ],
        "pids" if is_root => vec![("pids.current", "100\n")],
        "pids" => vec![("pids.max", "max\n"), ("pids.current", "3\n")],
        "blkio" => vec![
            ("blkio.weight", "500\n"),
            ("blkio.weight_device", ""),
            ("blkio.leaf_weight", "500\n"),
            ("blkio.leaf_weight_device", ""),
            ("blkio.throttle.read_bps_device", ""),
            ("blkio.throttle.write_bps_device", ""),
            ("blkio.throttle.read_iops_device", ""),
            ("blkio.throttle.write_iops_device", ""),
            (
                "blkio.throttle.io_service_bytes_recursive",
                "8:0 Read 4096\n8:0 Write 8192\nTotal 12288\n",
            ),
            (
                "blkio.throttle.io_serviced_recursive",
                "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
            ),
        ],
        "devices" => vec![
            ("devices.allow", ""),
            ("devices.deny", ""),
            ("devices.list", "a *:* rwm\n"),
        ],
        "freezer" if is_root => vec![],
        "freezer" => vec![("freezer.state", "THAWED\n")],
        "hugetlb" => vec![
            ("hugetlb.2MB.limit_in_bytes", UNLIMITED),
            ("hugetlb.2MB.usage_in_bytes", "2097152\n"),
            ("hugetlb.2MB.max_usage_in_bytes", "4194304\n"),
            ("hugetlb.2MB.failcnt", "1\n"),
            ("hugetlb.1GB.limit_in_bytes", UNLIMITED),
            ("hugetlb.1GB.usage_in_bytes", "0\n"),
            ("hugetlb.1GB.max_usage_in_bytes", "0\n"),
            ("hugetlb.1GB.failcnt", "0\n"),
        ],
        "net_cls" => vec![("net_cls.classid", "0\n")],
        "net_prio" => vec![
            ("net_prio.ifpriomap", "lo 0\n"),
            ("net_prio.prioidx", "1\n"),
        ],
        _ => vec![],
    };
    f.extend_from_slice(V1_COMMON);
    f.into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn populate(dir: &Path, files: &[(String, String)]) {
    fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        fs::write(dir.join(name), content).unwrap();
    }
}

impl FakeV1 {
    /// A tree with the given controllers mounted.
    pub fn new(controllers: &[&str]) -> FakeV1 {
        let dir = tempfile::tempdir().unwrap();
        for c in controllers {
            populate(&dir.path().join(c), &v1_files(c, true));
        }
        FakeV1 { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Creates the cgroup `rel` in `controller`'s hierarchy, and every missing level above
    /// it, as mkdir on cgroupfs would.
    pub fn mkdir(&self, controller: &str, rel: &str) -> PathBuf {
        let mut cur = self.root().join(controller);
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            cur.push(part);
            if !cur.exists() {
                populate(&cur, &v1_files(controller, false));
            }
        }
        cur
    }

    /// The contents of `controller/rel/file`.
    pub fn read(&self, controller: &str, rel: &str, file: &str) -> String {
        fs::read_to_string(self.root().join(controller).join(rel).join(file)).unwrap()
    }
}

/// What a v2 cgroup holds when its parent enables every controller.
fn v2_files(is_root: bool, controllers: &str) -> Vec<(String, String)> {
    let mut f: Vec<(&str, &str)> = vec![
        ("cgroup.controllers", controllers),
        ("cgroup.subtree_control", ""),
        ("cgroup.procs", ""),
        ("cpu.stat", "usage_usec 2000\nuser_usec 1500\nsystem_usec 500\nnr_periods 7\nnr_throttled 2\nthrottled_usec 30\n"),
    ];
    if !is_root {
        f.extend_from_slice(&[
            ("cgroup.type", "domain\n"),
            ("cgroup.freeze", "0\n"),
            ("cgroup.events", "populated 0\nfrozen 0\n"),
            ("cpu.weight", "100\n"),
            ("cpu.max", "max 100000\n"),
            ("cpu.max.burst", "0\n"),
            ("cpu.idle", "0\n"),
            ("cpuset.cpus", "\n"),
            ("cpuset.mems", "\n"),
            ("memory.max", "max\n"),
            ("memory.low", "0\n"),
            ("memory.swap.max", "max\n"),
            ("memory.current", "4096\n"),
            ("memory.peak", "8192\n"),
            ("memory.swap.current", "0\n"),
            ("memory.events", "low 0\nhigh 0\nmax 4\noom 0\noom_kill 0\n"),
            ("memory.stat", "anon 1024\nfile 2048\n"),
            ("pids.max", "max\n"),
            ("pids.current", "2\n"),
            ("io.weight", "default 100\n"),
            ("io.max", ""),
            (
                "io.stat",
                "8:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
            ),
            ("hugetlb.2MB.max", "max\n"),
            ("hugetlb.2MB.current", "0\n"),
            ("hugetlb.2MB.events", "max 0\n"),
        ]);
    }
    f.into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

impl FakeV2 {
    /// A tree whose root offers `controllers` (space separated).
    pub fn new(controllers: &str) -> FakeV2 {
        let dir = tempfile::tempdir().unwrap();
        populate(dir.path(), &v2_files(true, controllers));
        FakeV2 { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Creates the cgroup `rel` and its missing ancestors, each offering `controllers`.
    pub fn mkdir(&self, rel: &str, controllers: &str) -> PathBuf {
        let mut cur = self.root().to_path_buf();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            cur.push(part);
            if !cur.exists() {
                populate(&cur, &v2_files(false, controllers));
            }
        }
        cur
    }

    pub fn read(&self, rel: &str, file: &str) -> String {
        fs::read_to_string(self.root().join(rel).join(file)).unwrap()
    }

    pub fn write(&self, rel: &str, file: &str, content: &str) {
        fs::write(self.root().join(rel).join(file), content).unwrap();
    }
}

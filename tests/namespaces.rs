//! Linux namespaces as the container sees them: pid, uts, ipc, net, user (with id mappings),
//! cgroup, and joining another container's namespaces by path. Real containers, as root.

mod common;

use common::*;

fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn proc_ns(pid: i64, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn pid_namespace_makes_the_process_pid_1() {
    skip_unless_root!();
    let env = Env::new("ns-pid");
    let out = env.sh("pid", "echo $$; ls -d /proc/[0-9]* | wc -l");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "{out}");
    // Only sh and ls (and maybe wc) exist in the new pid namespace.
    let n: u32 = lines[1].trim().parse().unwrap();
    assert!(n <= 3, "too many pids visible: {out}");
}

#[test]
fn uts_namespace_sets_the_hostname() {
    skip_unless_root!();
    let env = Env::new("ns-uts");
    let host_before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let mut c = sh_config("hostname; readlink /proc/self/ns/uts");
    c["hostname"] = json!("uts-test-host");
    let out = env.run_ok("uts", &c);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "uts-test-host");
    assert_ne!(lines[1], host_ns("uts"));
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_before,
        "the host's hostname changed"
    );
}

#[test]
fn ipc_and_network_namespaces_are_private() {
    skip_unless_root!();
    let env = Env::new("ns-ipcnet");
    let out = env.sh(
        "ipcnet",
        "readlink /proc/self/ns/ipc; readlink /proc/self/ns/net; \
         cat /sys/class/net/lo/flags; \
         tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ipc:["), "{out}");
    assert_ne!(lines[0], host_ns("ipc"));
    assert_ne!(lines[1], host_ns("net"));
    // lo is up (IFF_UP, 0x1), as runc leaves it.
    let flags = u32::from_str_radix(lines[2].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is down: {out}");
    assert_eq!(&lines[3..], ["lo"], "interfaces besides lo: {out}");
}

#[test]
fn without_namespaces_the_host_ones_are_shared() {
    skip_unless_root!();
    let env = Env::new("ns-shared");
    let mut c = sh_config("readlink /proc/self/ns/net; readlink /proc/self/ns/ipc");
    c["linux"]["namespaces"] = json!([{"type": "mount"}]);
    // Without a uts namespace runc refuses a hostname.
    c.as_object_mut().unwrap().remove("hostname");
    let out = env.run_ok("shared", &c);
    assert_eq!(out, format!("{}\n{}\n", host_ns("net"), host_ns("ipc")));
}

fn userns_config(script: &str) -> Value {
    let mut c = sh_config(script);
    let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
    ns.push(json!({"type": "user"}));
    c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    c
}

#[test]
fn user_namespace_maps_root_to_a_host_uid() {
    skip_unless_root!();
    let env = Env::new("ns-user");
    let out = env.run_ok(
        "user",
        &userns_config("id -u; cat /proc/self/uid_map /proc/self/gid_map; cat /bin/sh >/dev/null && echo readable"),
    );
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0"], "{out}");
    assert_eq!(lines[1], ["0", "100000", "65536"], "{out}");
    assert_eq!(lines[2], ["0", "100000", "65536"], "{out}");
    assert_eq!(lines[3], ["readable"], "{out}");

    // Seen from the host, the container's root is uid/gid 100000.
    let (id, pid) = env.detach("userd", &userns_config("sleep 1000"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<String> {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(String::from)
            .collect()
    };
    assert_eq!(field("Uid:"), ["100000"; 4], "{status}");
    assert_eq!(field("Gid:"), ["100000"; 4], "{status}");
    assert_ne!(proc_ns(pid, "user"), host_ns("user"));
    env.remove(&id);
}

#[test]
fn cgroup_namespace_roots_the_container_cgroups() {
    skip_unless_root!();
    let env = Env::new("ns-cgroup");
    let mut c = sh_config("cat /proc/self/cgroup; readlink /proc/self/ns/cgroup");
    c["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "cgroup"}));
    c["linux"]["cgroupsPath"] = json!(cgroup_path("cgns"));
    let out = env.run_ok("cgns", &c);
    let mut lines: Vec<&str> = out.lines().collect();
    let ns = lines.pop().unwrap();
    assert_ne!(ns, host_ns("cgroup"));
    assert!(!lines.is_empty());
    for l in lines {
        // hierarchy-id:controllers:path — every path is the namespace root.
        assert!(l.ends_with(":/"), "cgroup path not rooted: {l}\n{out}");
    }
}

#[test]
fn joins_another_containers_namespaces_by_path() {
    skip_unless_root!();
    let env = Env::new("ns-join");
    let mut a = sh_config("sleep 1000");
    a["hostname"] = json!("joined-host");
    let (ida, pid) = env.detach("a", &a);

    let mut b = sh_config(
        "hostname; readlink /proc/self/ns/uts; readlink /proc/self/ns/net; readlink /proc/self/ns/ipc",
    );
    b.as_object_mut().unwrap().remove("hostname");
    b["linux"]["namespaces"] = json!([
        {"type": "pid"},
        {"type": "mount"},
        {"type": "ipc"},
        {"type": "uts", "path": format!("/proc/{pid}/ns/uts")},
        {"type": "network", "path": format!("/proc/{pid}/ns/net")}
    ]);
    let out = env.run_ok("b", &b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "joined-host", "{out}");
    assert_eq!(lines[1], proc_ns(pid, "uts"));
    assert_eq!(lines[2], proc_ns(pid, "net"));
    // ipc was not joined: b has its own.
    assert_ne!(lines[3], proc_ns(pid, "ipc"));
    assert_eq!(env.status(&ida), "running");
    env.remove(&ida);
}

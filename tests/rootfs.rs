//! The container's filesystem: readonly root, masked and readonly paths, tmpfs and bind
//! mounts, mount propagation, /dev (default and spec devices), sysctls, hostname, cwd.
//! Real containers, as root.

mod common;

use common::*;

fn add_mount(c: &mut Value, m: Value) {
    c["mounts"].as_array_mut().unwrap().push(m);
}

#[test]
fn readonly_root_refuses_writes() {
    skip_unless_root!();
    let env = Env::new("rootfs-ro");
    let out = env.sh(
        "ro",
        "touch /newfile 2>/dev/null && echo root-writable || echo root-ro; \
         touch /tmp/ok && echo tmp-writable; \
         awk '$2 == \"/\" {print $4}' /proc/mounts | cut -d, -f1",
    );
    assert_eq!(out, "root-ro\ntmp-writable\nro\n");

    let mut c = sh_config("touch /etc/cryo-rw-probe && echo root-writable");
    c["root"]["readonly"] = json!(false);
    // A writable root over the shared rootfs would leave the file behind: use a private copy.
    let copy = env.dir.path().join("rootfs-copy");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(rootfs())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    c["root"]["path"] = json!(copy);
    assert_eq!(env.run_ok("rw", &c), "root-writable\n");
    assert!(copy.join("etc/cryo-rw-probe").exists());
}

#[test]
fn masked_paths_are_hidden() {
    skip_unless_root!();
    // The kernel here may lack some of runc's default masked files (/proc/kcore needs
    // CONFIG_PROC_KCORE): check those that exist.
    let files: Vec<&str> = [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
    ]
    .into_iter()
    .filter(|p| std::path::Path::new(p).exists())
    .collect();
    if files.is_empty() {
        println!("skipped: none of runc's masked /proc files exists on this kernel");
        return;
    }
    let env = Env::new("rootfs-mask");
    let script = format!(
        "for f in {}; do echo $f $(wc -c < $f) $(stat -c '%t,%T' $f); done; \
         ls -A /sys/firmware | wc -l; \
         touch /sys/firmware/x 2>/dev/null && echo firmware-writable || echo firmware-ro",
        files.join(" ")
    );
    let out = env.sh("mask", &script);
    // A masked file is /dev/null bind-mounted over it; a masked dir is an empty ro tmpfs.
    let mut want: Vec<String> = files.iter().map(|f| format!("{f} 0 1,3")).collect();
    want.push("0".into());
    want.push("firmware-ro".into());
    let got: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(got, want, "{out}");
}

#[test]
fn readonly_paths_refuse_writes() {
    skip_unless_root!();
    let env = Env::new("rootfs-ropath");
    let out = env.sh(
        "ropath",
        "echo other > /proc/sys/kernel/hostname 2>/dev/null && echo sys-writable || echo sys-ro; \
         cat /proc/sys/kernel/hostname; \
         awk '$2 ~ /^\\/proc\\/(sys|bus|fs|irq|sysrq-trigger)$/ {print $2, substr($4, 1, 2)}' /proc/mounts | sort",
    );
    // /proc/sysrq-trigger is skipped where the kernel lacks it.
    let mut want =
        "sys-ro\ncryo\n/proc/bus ro\n/proc/fs ro\n/proc/irq ro\n/proc/sys ro\n".to_string();
    if std::path::Path::new("/proc/sysrq-trigger").exists() {
        want.push_str("/proc/sysrq-trigger ro\n");
    }
    assert_eq!(out, want);
}

#[test]
fn tmpfs_mount_with_options() {
    skip_unless_root!();
    let env = Env::new("rootfs-tmpfs");
    let mut c = sh_config(
        "stat -c %a /data; echo hi > /data/f && cat /data/f; \
         awk '$2 == \"/data\" {print $3}' /proc/mounts; \
         grep -q ' /data .*size=1024k' /proc/mounts && echo sized; \
         grep -q ' /data .*noexec' /proc/mounts && echo noexec",
    );
    add_mount(
        &mut c,
        json!({"destination": "/data", "type": "tmpfs", "source": "tmpfs",
               "options": ["size=1m", "mode=700", "noexec"]}),
    );
    assert_eq!(env.run_ok("tmpfs", &c), "700\nhi\ntmpfs\nsized\nnoexec\n");
}

#[test]
fn bind_mounts_ro_and_rw() {
    skip_unless_root!();
    let env = Env::new("rootfs-bind");
    let host = env.dir.path().join("hostdir");
    std::fs::create_dir_all(host.join("sub")).unwrap();
    std::fs::write(host.join("hello.txt"), "from the host\n").unwrap();
    let rw = env.dir.path().join("rwdir");
    std::fs::create_dir_all(&rw).unwrap();
    let single = env.dir.path().join("single.txt");
    std::fs::write(&single, "one file\n").unwrap();

    let mut c = sh_config(
        "cat /mnt/ro/hello.txt; \
         echo x > /mnt/ro/new 2>/dev/null && echo ro-writable || echo ro-refused; \
         echo written > /mnt/rw/out && echo rw-ok; \
         cat /mnt/file.txt",
    );
    add_mount(
        &mut c,
        json!({"destination": "/mnt/ro", "type": "bind", "source": host, "options": ["rbind", "ro"]}),
    );
    add_mount(
        &mut c,
        json!({"destination": "/mnt/rw", "type": "bind", "source": rw, "options": ["bind", "rw"]}),
    );
    add_mount(
        &mut c,
        json!({"destination": "/mnt/file.txt", "type": "bind", "source": single, "options": ["bind", "ro"]}),
    );
    assert_eq!(
        env.run_ok("bind", &c),
        "from the host\nro-refused\nrw-ok\none file\n"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).unwrap(),
        "written\n"
    );
    assert!(!host.join("new").exists());
}

#[test]
fn mount_propagation_options() {
    skip_unless_root!();
    let env = Env::new("rootfs-prop");
    let a = env.dir.path().join("a");
    let b = env.dir.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    // mountinfo: the optional fields (between the mount options and "-") carry "shared:N".
    let mut c = sh_config(
        "for m in /mnt/private /mnt/shared; do \
           awk -v m=$m '$5 == m { s = \"private\"; for (i = 7; $i != \"-\"; i++) if ($i ~ /^shared:/) s = \"shared\"; print m, s }' /proc/self/mountinfo; \
         done",
    );
    c["linux"]["rootfsPropagation"] = json!("rprivate");
    add_mount(
        &mut c,
        json!({"destination": "/mnt/private", "type": "bind", "source": a, "options": ["rbind", "rprivate"]}),
    );
    add_mount(
        &mut c,
        json!({"destination": "/mnt/shared", "type": "bind", "source": b, "options": ["rbind", "rshared"]}),
    );
    assert_eq!(
        env.run_ok("prop", &c),
        "/mnt/private private\n/mnt/shared shared\n"
    );
}

#[test]
fn default_devices_exist() {
    skip_unless_root!();
    let env = Env::new("rootfs-dev");
    let out = env.sh(
        "dev",
        "for d in null zero full random urandom tty; do stat -c '%n %F %t,%T %a' /dev/$d; done; \
         for l in ptmx fd stdin stdout stderr; do echo /dev/$l $(readlink /dev/$l); done; \
         echo x > /dev/null && head -c 5 /dev/zero | wc -c; \
         echo x > /dev/full 2>/dev/null || echo full-is-full",
    );
    let want = "\
/dev/null character special file 1,3 666
/dev/zero character special file 1,5 666
/dev/full character special file 1,7 666
/dev/random character special file 1,8 666
/dev/urandom character special file 1,9 666
/dev/tty character special file 5,0 666
/dev/ptmx pts/ptmx
/dev/fd /proc/self/fd
/dev/stdin /proc/self/fd/0
/dev/stdout /proc/self/fd/1
/dev/stderr /proc/self/fd/2
5
full-is-full
";
    assert_eq!(out.replace("      ", "").replace('\t', ""), want);
}

#[test]
fn spec_devices_are_created_and_allowed() {
    skip_unless_root!();
    let env = Env::new("rootfs-specdev");
    let mut c = sh_config(
        "stat -c '%F %t,%T %a %u:%g' /dev/cryo-rnd /dev/cryo-blk; head -c 8 /dev/cryo-rnd | wc -c; \
         for d in allowed denied; do head -c 1 /dev/cryo-$d 2>&1 >/dev/null | sed 's/.*: //'; done",
    );
    // 240-254 is the experimental major range: no driver, so an allowed open fails with
    // ENXIO ("No such device or address") and a denied one with EPERM from the device cgroup.
    c["linux"]["devices"] = json!([
        {"path": "/dev/cryo-rnd", "type": "c", "major": 1, "minor": 9, "fileMode": 0o640, "uid": 0, "gid": 0},
        {"path": "/dev/cryo-blk", "type": "b", "major": 7, "minor": 200, "fileMode": 0o600},
        {"path": "/dev/cryo-allowed", "type": "c", "major": 240, "minor": 1, "fileMode": 0o666},
        {"path": "/dev/cryo-denied", "type": "c", "major": 240, "minor": 2, "fileMode": 0o666}
    ]);
    c["linux"]["resources"]["devices"]
        .as_array_mut()
        .unwrap()
        .push(json!({"allow": true, "type": "c", "major": 240, "minor": 1, "access": "rwm"}));
    c["linux"]["cgroupsPath"] = json!(cgroup_path("specdev"));
    let out = env.run_ok("specdev", &c);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "character special file 1,9 640 0:0",
            "block special file 7,c8 600 0:0",
            "8",
            "No such device or address",
            "Operation not permitted"
        ],
        "{out}"
    );
}

#[test]
fn sysctls_apply_in_the_container_only() {
    skip_unless_root!();
    let env = Env::new("rootfs-sysctl");
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let mut c = sh_config("cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/msgmax");
    c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.msgmax": "12345"});
    assert_eq!(env.run_ok("sysctl", &c), "1\n12345\n");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_before
    );
}

#[test]
fn hostname_and_domainname() {
    skip_unless_root!();
    let env = Env::new("rootfs-host");
    let mut c = sh_config("hostname; cat /proc/sys/kernel/domainname");
    c["hostname"] = json!("box-1");
    c["domainname"] = json!("example.test");
    assert_eq!(env.run_ok("host", &c), "box-1\nexample.test\n");
}

#[test]
fn cwd_is_the_process_working_directory() {
    skip_unless_root!();
    let env = Env::new("rootfs-cwd");
    let mut c = base_config(&["pwd"]);
    c["process"]["cwd"] = json!("/etc");
    assert_eq!(env.run_ok("etc", &c), "/etc\n");
    // A cwd missing from the rootfs is created (runc does the same), here inside a tmpfs.
    let mut c = base_config(&["pwd"]);
    c["process"]["cwd"] = json!("/tmp/work/dir");
    assert_eq!(env.run_ok("missing", &c), "/tmp/work/dir\n");
}

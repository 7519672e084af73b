//! The container process: user and groups, umask, env, rlimits, capabilities,
//! noNewPrivileges, oomScoreAdj, seccomp, and a terminal through --console-socket.
//! Real containers, as root.

mod common;

use common::*;

/// The value of `field` (e.g. "CapEff:") in /proc/self/status as printed by the container.
fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("{field} missing from\n{status}"))
        .trim()
}

/// The /proc/self/status hex mask of capability numbers.
fn cap_mask(caps: &[u32]) -> String {
    format!("{:016x}", caps.iter().fold(0u64, |m, c| m | (1u64 << c)))
}

const CAP_CHOWN: u32 = 0;
const CAP_KILL: u32 = 5;
const CAP_SETUID: u32 = 7;
const CAP_NET_BIND_SERVICE: u32 = 10;

#[test]
fn user_uid_gid_and_additional_gids() {
    skip_unless_root!();
    let env = Env::new("proc-user");
    let mut c = sh_config("id -u; id -g; grep -E '^(Uid|Gid|Groups):' /proc/self/status");
    c["process"]["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [10, 20]});
    let out = env.run_ok("user", &c);
    assert_eq!(status_field(&out, "Uid:"), "1000\t1000\t1000\t1000");
    assert_eq!(status_field(&out, "Gid:"), "1001\t1001\t1001\t1001");
    assert_eq!(status_field(&out, "Groups:"), "10 20");
    assert!(out.starts_with("1000\n1001\n"), "{out}");
}

#[test]
fn umask_defaults_to_0022_and_follows_the_spec() {
    skip_unless_root!();
    let env = Env::new("proc-umask");
    assert_eq!(env.sh("default", "umask"), "0022\n");
    let mut c = sh_config("umask; touch /tmp/f; stat -c %a /tmp/f");
    c["process"]["user"]["umask"] = json!(0o077);
    assert_eq!(env.run_ok("set", &c), "0077\n600\n");
}

#[test]
fn env_is_exactly_the_spec_plus_home() {
    skip_unless_root!();
    let env = Env::new("proc-env");
    // `env` itself, not a shell, so nothing is added on the way.
    let mut c = base_config(&["env"]);
    c["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz", "EMPTY="]);
    let out = env.run_ok("env", &c);
    let mut got: Vec<&str> = out.lines().collect();
    got.sort_unstable();
    // runc adds HOME (from the rootfs's /etc/passwd, "/" without an entry) when it is missing.
    assert_eq!(got, ["EMPTY=", "FOO=bar baz", "HOME=/root", "PATH=/bin"]);
}

#[test]
fn rlimits_apply() {
    skip_unless_root!();
    let env = Env::new("proc-rlimit");
    let mut c = sh_config("ulimit -Sn; ulimit -Hn; ulimit -Sc; ulimit -Hc");
    c["process"]["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 768},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
    ]);
    assert_eq!(env.run_ok("rlimit", &c), "512\n768\n0\n0\n");
}

#[test]
fn capabilities_of_root_match_the_spec() {
    skip_unless_root!();
    let env = Env::new("proc-caps");
    let caps = [
        "CAP_CHOWN",
        "CAP_KILL",
        "CAP_SETUID",
        "CAP_NET_BIND_SERVICE",
    ];
    let mut c = sh_config("grep ^Cap /proc/self/status");
    c["process"]["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps, "inheritable": ["CAP_KILL"]
    });
    let out = env.run_ok("root", &c);
    let want = cap_mask(&[CAP_CHOWN, CAP_KILL, CAP_SETUID, CAP_NET_BIND_SERVICE]);
    assert_eq!(status_field(&out, "CapBnd:"), want, "{out}");
    assert_eq!(status_field(&out, "CapPrm:"), want, "{out}");
    assert_eq!(status_field(&out, "CapEff:"), want, "{out}");
    assert_eq!(
        status_field(&out, "CapInh:"),
        cap_mask(&[CAP_KILL]),
        "{out}"
    );
    assert_eq!(status_field(&out, "CapAmb:"), cap_mask(&[]), "{out}");
}

#[test]
fn ambient_capabilities_survive_exec_as_non_root() {
    skip_unless_root!();
    let env = Env::new("proc-ambient");
    let mut c = sh_config("grep ^Cap /proc/self/status");
    c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    c["process"]["capabilities"] = json!({
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "inheritable": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"]
    });
    let out = env.run_ok("ambient", &c);
    // A non-root exec of a file without file capabilities keeps only the ambient set.
    let amb = cap_mask(&[CAP_NET_BIND_SERVICE]);
    assert_eq!(
        status_field(&out, "CapBnd:"),
        cap_mask(&[CAP_CHOWN, CAP_KILL, CAP_NET_BIND_SERVICE]),
        "{out}"
    );
    assert_eq!(
        status_field(&out, "CapInh:"),
        cap_mask(&[CAP_KILL, CAP_NET_BIND_SERVICE]),
        "{out}"
    );
    assert_eq!(status_field(&out, "CapAmb:"), amb, "{out}");
    assert_eq!(status_field(&out, "CapPrm:"), amb, "{out}");
    assert_eq!(status_field(&out, "CapEff:"), amb, "{out}");
}

#[test]
fn no_new_privileges_and_oom_score_adj() {
    skip_unless_root!();
    let env = Env::new("proc-nnp");
    let mut c = sh_config("grep ^NoNewPrivs /proc/self/status; cat /proc/self/oom_score_adj");
    c["process"]["oomScoreAdj"] = json!(500);
    assert_eq!(env.run_ok("on", &c), "NoNewPrivs:\t1\n500\n");
    c["process"]["noNewPrivileges"] = json!(false);
    c["process"]["oomScoreAdj"] = json!(700);
    assert_eq!(env.run_ok("off", &c), "NoNewPrivs:\t0\n700\n");
    // Lowering the score below the caller's needs CAP_SYS_RESOURCE (runc fails too without).
    if !has_cap_sys_resource() {
        println!("skipped: negative oomScoreAdj: this machine's root lacks CAP_SYS_RESOURCE");
        return;
    }
    c["process"]["oomScoreAdj"] = json!(-300);
    assert_eq!(env.run_ok("negative", &c), "NoNewPrivs:\t0\n-300\n");
}

fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = u64::from_str_radix(status_field(&status, "CapEff:"), 16).unwrap();
    eff & (1 << CAP_SYS_RESOURCE) != 0
}

#[test]
fn seccomp_rule_makes_mkdir_fail() {
    skip_unless_root!();
    let env = Env::new("proc-seccomp");
    let mut c = sh_config(
        "grep ^Seccomp: /proc/self/status; \
         mkdir /tmp/x 2>&1 | sed 's/.*: //'; \
         test -d /tmp/x && echo made || echo not-made; \
         touch /tmp/y && echo touch-ok",
    );
    c["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM}
        ]
    });
    assert_eq!(
        env.run_ok("seccomp", &c),
        "Seccomp:\t2\nOperation not permitted\nnot-made\ntouch-ok\n"
    );
}

#[test]
fn terminal_through_console_socket() {
    skip_unless_root!();
    let env = Env::new("proc-tty");
    let sock = env.dir.path().join("console.sock");
    let receiver = console_listener(&sock);
    let mut c = sh_config("tty; echo hi; test -t 0 && test -t 1 && echo both-ttys");
    c["process"]["terminal"] = json!(true);
    let b = env.bundle("tty", &c);
    let id = env.id("tty");
    env.ok(&[
        "run",
        "-d",
        "--console-socket",
        sock.to_str().unwrap(),
        "--bundle",
        b.to_str().unwrap(),
        &id,
    ]);
    let out = read_pty(receiver.join().unwrap());
    assert_eq!(out, "/dev/pts/0\nhi\nboth-ttys\n");
    env.wait_status(&id, "stopped");
    env.ok(&["delete", &id]);
}

#[test]
fn exec_with_a_terminal_and_detached() {
    skip_unless_root!();
    let env = Env::new("proc-exectty");
    let (id, _) = env.detach("e", &sh_config("sleep 1000"));
    let sock = env.dir.path().join("exec.sock");
    let receiver = console_listener(&sock);
    env.ok(&[
        "exec",
        "-t",
        "-d",
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
        "sh",
        "-c",
        "tty; test -t 0 && echo tty-in",
    ]);
    let out = read_pty(receiver.join().unwrap());
    assert!(
        out.starts_with("/dev/pts/") && out.ends_with("tty-in\n"),
        "{out:?}"
    );
    // exec -d returns at once; the process is in the container's cgroup meanwhile.
    let pid = env.exec_detached(&id, &["sleep", "1000"]);
    let ps: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(ps.contains(&pid), "{pid} not in {ps:?}");
    // kill --all reaches every process of the container, the exec'd one too.
    env.ok(&["kill", "--all", &id, "KILL"]);
    env.wait_status(&id, "stopped");
    for _ in 0..200 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        st.is_empty() || st.split(' ').nth(2) == Some("Z"),
        "exec'd process survived: {st}"
    );
    env.ok(&["delete", &id]);
}

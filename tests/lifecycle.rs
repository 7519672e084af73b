//! The runc lifecycle through the `cryo` CLI: create/start/state/kill/delete, run, exec, ps,
//! list, pause/resume, and runc's errors and exit codes. Real containers, as root.

mod common;

use common::*;

#[test]
fn create_start_kill_delete() {
    skip_unless_root!();
    let env = Env::new("lifecycle");
    let b = env.bundle("c", &base_config(&["sleep", "1000"]));
    let id = env.id("c");
    let pidfile = env.dir.path().join("pid");
    env.ok(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pidfile.to_str().unwrap(),
        &id,
    ]);
    let st = env.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["bundle"], b.to_str().unwrap());
    assert!(st["created"].as_str().unwrap().ends_with('Z'));
    let pid: i64 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(st["pid"].as_i64().unwrap(), pid);
    // Before start, the init has not exec'd the user's process.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_ne!(comm.trim(), "sleep");
    env.ok(&["start", &id]);
    assert_eq!(env.status(&id), "running");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "sleep");
    // runc: start of a running container fails with exit 1.
    let o = env.cryo(&["start", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not created"));
    // delete of a running container needs --force.
    let o = env.cryo(&["delete", &id]);
    assert_eq!(o.status.code(), Some(1));
    env.ok(&["kill", &id, "KILL"]);
    env.wait_status(&id, "stopped");
    assert_eq!(env.state(&id)["pid"], 0);
    env.ok(&["delete", &id]);
    let o = env.cryo(&["state", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

#[test]
fn run_propagates_exit_codes_and_signals() {
    skip_unless_root!();
    let env = Env::new("exitcode");
    let (code, _, _) = env.run("three", &base_config(&["sh", "-c", "exit 3"]));
    assert_eq!(code, 3);
    // Outside a pid namespace, so the shell is not pid 1 (which ignores unhandled signals).
    let mut c = base_config(&["sh", "-c", "kill -USR1 $$; sleep 5"]);
    c["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "uts"}]);
    let (code, _, _) = env.run("killed", &c);
    assert_eq!(code, 128 + libc::SIGUSR1);
    let (code, out, _) = env.run("hello", &base_config(&["echo", "hello"]));
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    // run removes the container afterwards.
    assert!(env.ok(&["list", "-q"]).trim().is_empty());
}

#[test]
fn run_detached_then_list_and_ps() {
    skip_unless_root!();
    let env = Env::new("detach");
    let b = env.bundle(
        "d",
        &base_config(&["sh", "-c", "sleep 1000 & sleep 1000 & wait"]),
    );
    let id = env.id("d");
    env.ok(&["run", "-d", "--bundle", b.to_str().unwrap(), &id]);
    assert_eq!(env.status(&id), "running");
    let list: Value = serde_json::from_str(&env.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert!(env.ok(&["list"]).contains(&id));
    // ps --format json lists every process of the container, from its cgroup.
    let mut pids: Vec<i64> = Vec::new();
    for _ in 0..100 {
        pids = serde_json::from_str(&env.ok(&["ps", "--format", "json", &id])).unwrap();
        if pids.len() >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(pids.len(), 3, "{pids:?}");
    let table = env.ok(&["ps", &id]);
    assert!(table.lines().next().unwrap().contains("PID"));
    assert_eq!(
        table
            .lines()
            .filter(|l| l.trim_end().ends_with("sleep 1000"))
            .count(),
        2,
        "{table}"
    );
    env.ok(&["delete", "--force", &id]);
    assert!(env.ok(&["list", "-q"]).trim().is_empty());
}

#[test]
fn errors_match_runc() {
    skip_unless_root!();
    let env = Env::new("errors");
    let b = env.bundle("e", &base_config(&["sleep", "100"]));
    let id = env.id("e");
    env.ok(&["create", "--bundle", b.to_str().unwrap(), &id]);
    let o = env.cryo(&["create", "--bundle", b.to_str().unwrap(), &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("container with id exists"));
    // The existing container is untouched by the failed create.
    assert_eq!(env.status(&id), "created");
    for args in [
        vec!["start", "nope"],
        vec!["kill", "nope"],
        vec!["delete", "nope"],
        vec!["state", "nope"],
        vec!["pause", "nope"],
    ] {
        let o = env.cryo(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("does not exist"),
            "{args:?}"
        );
    }
    // delete --force of a missing container is not an error (runc).
    env.ok(&["delete", "--force", "nope"]);
    let o = env.cryo(&["create", "--bundle", b.to_str().unwrap(), "bad/id"]);
    assert_eq!(o.status.code(), Some(1));
    // A created container can be deleted without --force, as runc allows.
    env.ok(&["delete", &id]);
}

#[test]
fn invalid_config_names_the_field() {
    skip_unless_root!();
    let env = Env::new("badcfg");
    let mut c = base_config(&["true"]);
    c["linux"]["resources"]["memory"] = json!({"limit": "1G"});
    let b = env.bundle("b", &c);
    let o = env.cryo(&["create", "--bundle", b.to_str().unwrap(), &env.id("b")]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("linux.resources.memory.limit"), "{err}");
    // Nothing is left behind by a refused create.
    assert!(env.ok(&["list", "-q"]).trim().is_empty());
    let mut c = base_config(&["no-such-binary"]);
    c["hostname"] = json!("x");
    let b = env.bundle("nobin", &c);
    let o = env.cryo(&["create", "--bundle", b.to_str().unwrap(), &env.id("nobin")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("executable file not found"));
    assert!(env.ok(&["list", "-q"]).trim().is_empty());
}

#[test]
fn log_file_gets_json_errors() {
    skip_unless_root!();
    let env = Env::new("log");
    let log = env.dir.path().join("log.json");
    let o = env
        .cmd()
        .args([
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "state",
            "missing",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let line = std::fs::read_to_string(&log).unwrap();
    let v: Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(v["level"], "error");
    assert!(v["msg"].as_str().unwrap().contains("does not exist"));
}

#[test]
fn exec_runs_in_the_container() {
    skip_unless_root!();
    let env = Env::new("exec");
    let mut c = base_config(&["sleep", "1000"]);
    c["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!("FROM=config"));
    let b = env.bundle("x", &c);
    let id = env.id("x");
    env.ok(&["run", "-d", "--bundle", b.to_str().unwrap(), &id]);
    let out = env.ok(&[
        "exec",
        "--env",
        "EXTRA=1",
        "--cwd",
        "/tmp",
        &id,
        "sh",
        "-c",
        "echo $FROM $EXTRA $(pwd) $(hostname); cat /proc/1/comm",
    ]);
    assert_eq!(out, "config 1 /tmp cryo\nsleep\n");
    let o = env.cryo(&["exec", &id, "sh", "-c", "exit 42"]);
    assert_eq!(o.status.code(), Some(42));
    let out = env.ok(&["exec", "--user", "1000:1000", &id, "id"]);
    assert!(out.starts_with("uid=1000 gid=1000"), "{out}");
    // process.json
    let p = json!({"args": ["sh", "-c", "echo from-json; id -u"], "cwd": "/", "user": {"uid": 7, "gid": 7},
                   "env": ["PATH=/bin"]});
    let pj = env.dir.path().join("process.json");
    std::fs::write(&pj, p.to_string()).unwrap();
    assert_eq!(
        env.ok(&["exec", "--process", pj.to_str().unwrap(), &id]),
        "from-json\n7\n"
    );
    // detached exec writes a pid file of a process inside the container's pid namespace.
    let pid = env.exec_detached(&id, &["sleep", "1000"]);
    let init = env.state(&id)["pid"].as_i64().unwrap();
    let ns = |p: i64| std::fs::read_link(format!("/proc/{p}/ns/pid")).unwrap();
    assert_eq!(ns(pid as i64), ns(init));
    // exec of a missing binary fails with a clear message.
    let o = env.cryo(&["exec", &id, "no-such-binary"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("executable file not found"));
    env.ok(&["delete", "--force", &id]);
    // exec into a stopped container is refused.
    let o = env.cryo(&["exec", &id, "true"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn concurrent_creates_of_one_id_yield_one_container() {
    skip_unless_root!();
    let env = Env::new("race");
    let b = env.bundle("r", &base_config(&["sleep", "100"]));
    let id = env.id("r");
    let handles: Vec<_> = (0..6)
        .map(|_| {
            // Not piped: the container inherits cryo's stdio and would hold a pipe open.
            use std::process::Stdio;
            env.cmd()
                .args(["create", "--bundle", b.to_str().unwrap(), &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let ok = handles
        .into_iter()
        .map(|mut h| h.wait().unwrap())
        .filter(|s| s.success())
        .count();
    assert_eq!(ok, 1);
    assert_eq!(env.status(&id), "created");
    // Concurrent commands on one container are serialized: kill and delete race cleanly.
    let a = env.cmd().args(["delete", "--force", &id]).spawn().unwrap();
    let b2 = env.cmd().args(["delete", "--force", &id]).spawn().unwrap();
    let (ra, rb) = (
        a.wait_with_output().unwrap(),
        b2.wait_with_output().unwrap(),
    );
    assert!(ra.status.success() && rb.status.success());
    assert!(env.ok(&["list", "-q"]).trim().is_empty());
}

#[test]
fn hooks_run_in_order_with_state() {
    skip_unless_root!();
    let env = Env::new("hooks");
    let out = env.dir.path().join("hooks.log");
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {name} $(cat | grep -o '\"status\":\"[a-z]*\"') >> {}", out.display())]});
    let mut c = base_config(&["true"]);
    c["hooks"] = json!({
        "prestart": [hook("prestart")],
        "createRuntime": [hook("createRuntime")],
        "poststart": [hook("poststart")],
        "poststop": [hook("poststop")]
    });
    let (code, _, err) = env.run("h", &c);
    assert_eq!(code, 0, "{err}");
    let log = std::fs::read_to_string(&out).unwrap();
    let names: Vec<&str> = log.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        ["prestart", "createRuntime", "poststart", "poststop"],
        "{log}"
    );
    assert!(log
        .lines()
        .next()
        .unwrap()
        .contains("\"status\":\"creating\""));
    // A failing createRuntime hook fails create and leaves nothing behind.
    let mut c = base_config(&["true"]);
    c["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]});
    let b = env.bundle("hf", &c);
    let o = env.cryo(&["create", "--bundle", b.to_str().unwrap(), &env.id("hf")]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("createRuntime hook"), "{err}");
    assert!(env.ok(&["list", "-q"]).trim().is_empty());
}

#[test]
fn spec_and_features() {
    skip_unless_root!();
    let env = Env::new("spec");
    let d = env.dir.path().join("specdir");
    std::fs::create_dir_all(&d).unwrap();
    env.ok(&["spec", "--bundle", d.to_str().unwrap()]);
    let v: Value = serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
    assert_eq!(v["root"]["path"], "rootfs");
    assert!(v["linux"]["namespaces"].as_array().unwrap().len() >= 5);
    // A second spec refuses to overwrite.
    assert_eq!(
        env.cryo(&["spec", "--bundle", d.to_str().unwrap()])
            .status
            .code(),
        Some(1)
    );
    let f: Value = serde_json::from_str(&env.ok(&["features"])).unwrap();
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("user")));
    assert_eq!(f["linux"]["seccomp"]["enabled"], true);
}

#[test]
fn init_binary_cannot_be_written_from_the_container() {
    skip_unless_root!();
    // CVE-2019-5736: the init the container sees as /proc/PID/exe is the cryo binary; it must
    // sit on a read-only mount (or be a sealed copy) so nothing can write through it.
    let env = Env::new("exe");
    let b = env.bundle("e", &base_config(&["true"]));
    let id = env.id("e");
    env.ok(&["create", "--bundle", b.to_str().unwrap(), &id]);
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    let exe = std::fs::File::open(format!("/proc/{pid}/exe")).unwrap();
    // SAFETY: fstatvfs writes into the zeroed struct we pass.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer.
    let rc = unsafe { libc::fstatvfs(std::os::fd::AsRawFd::as_raw_fd(&exe), &mut st) };
    assert_eq!(rc, 0);
    let sealed = std::fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap()
        .to_string_lossy()
        .starts_with("/memfd:");
    assert!(
        st.f_flag & libc::ST_RDONLY != 0 || sealed,
        "init binary is writable: flags {:#x}",
        st.f_flag
    );
    assert!(std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/exe"))
        .is_err());
    env.ok(&["delete", "--force", &id]);
    // The scratch mount point is gone from the state root.
    let left: Vec<_> = std::fs::read_dir(&env.root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn delete_removes_what_a_killed_create_or_restore_left_and_frees_the_id() {
    skip_unless_root!();
    let env = Env::new("aborted");
    let b = env.bundle("a", &base_config(&["sleep", "100"]));
    let mounted = |p: &std::path::Path| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&format!(" {} ", p.display()))
    };
    // What a restore killed after it mounted a kept tmpfs and before it wrote state.json
    // leaves: the container's directory, a mount below it, no state.json.
    let aborted = |id: &str| {
        let dir = env.root.join(id);
        let kept = dir.join("tmpfs-0");
        std::fs::create_dir_all(&kept).unwrap();
        let o = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&kept)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        std::fs::write(kept.join("f"), b"left behind").unwrap();
        (dir, kept)
    };
    let id = env.id("a");
    let (dir, kept) = aborted(&id);
    let o = env.cryo(&["create", "--bundle", b.to_str().unwrap(), &id]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("container with id exists"));
    // `delete` says the container does not exist (it never did), as runc does, and removes
    // the directory, detaching the mount first.
    let o = env.cryo(&["delete", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
    assert!(!dir.exists() && !mounted(&kept));
    // The id is free again.
    env.ok(&["create", "--bundle", b.to_str().unwrap(), &id]);
    assert_eq!(env.status(&id), "created");
    env.ok(&["delete", &id]);
    // With --force, the same clean-up is not an error.
    let id2 = env.id("f");
    let (dir2, kept2) = aborted(&id2);
    env.ok(&["delete", "--force", &id2]);
    assert!(!dir2.exists() && !mounted(&kept2));

    // A create killed for real while its createRuntime hook runs: its cgroup exists (the
    // container's init in it, until it sees its parent gone), state.json does not. delete
    // removes both.
    let hook_pid = env.dir.path().join("hook.pid");
    let mut c = base_config(&["sleep", "100"]);
    let cg = cgroup_path("aborted");
    c["linux"]["cgroupsPath"] = json!(cg);
    c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c",
        format!("echo $$ > {}.tmp; mv {0}.tmp {0}; exec sleep 1000", hook_pid.display())]}]});
    let b = env.bundle("k", &c);
    let id3 = env.id("k");
    let mut create = env
        .cmd()
        .args(["create", "--bundle", b.to_str().unwrap(), &id3])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !hook_pid.exists() {
        assert!(std::time::Instant::now() < deadline, "the hook never ran");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    create.kill().unwrap();
    create.wait().unwrap();
    let hook: i32 = std::fs::read_to_string(&hook_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) of the hook's sleep, which this test started.
    unsafe { libc::kill(hook, libc::SIGKILL) };
    let cg_dir = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(|h| std::path::PathBuf::from(format!("{h}{cg}")))
        .find(|p| p.exists())
        .expect("the killed create's cgroup");
    let dir3 = env.root.join(&id3);
    assert!(dir3.exists() && !dir3.join("state.json").exists());
    // A process left in that cgroup (a restore whose CRIU went on leaves the tree there):
    // moved into it in every hierarchy that has it.
    let mut stray = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap() {
        let procs = h
            .unwrap()
            .path()
            .join(cg.trim_start_matches('/'))
            .join("cgroup.procs");
        if procs.exists() {
            std::fs::write(&procs, stray.id().to_string()).unwrap();
        }
    }
    let unified = std::path::Path::new("/sys/fs/cgroup").join(cg.trim_start_matches('/'));
    if unified.join("cgroup.procs").exists() {
        std::fs::write(unified.join("cgroup.procs"), stray.id().to_string()).unwrap();
    }
    let o = env.cryo(&["delete", &id3]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
    assert!(!dir3.exists(), "state directory left");
    assert!(!cg_dir.exists(), "cgroup left: {}", cg_dir.display());
    let st = stray.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "the stray process was killed"
    );
}

//! Checkpoint/restore of a python process with what real services hold: several threads, a
//! 64 MiB heap (random, zero and text pages), a listening TCP socket, a listening unix socket
//! on an external bind mount, an open appended file there, and memory and pids limits. The
//! container is restored eagerly and lazily from the store; after each restore the unix
//! socket answers with a checksum of the heap equal to the one taken before the checkpoint,
//! the threads keep counting and the file keeps growing. As root, with CRIU and the host's
//! /usr/bin/python3; skipped with a reason otherwise.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const SERVER: &str = r#"
import hashlib, os, socket, threading, time
N = 64 << 20
buf = bytearray(os.urandom(N // 2)) + bytearray(N // 4) + bytearray(b"the quick brown fox jumps " * (N // 4 // 26 + 1))[: N // 4]
for i in range(N // 2, N // 2 + N // 4, 4096):
    buf[i] = 0
digest = hashlib.sha256(buf).hexdigest()
counts = [0, 0, 0]
def work(k):
    while True:
        counts[k] += 1
        time.sleep(0.01)
for k in range(3):
    threading.Thread(target=work, args=(k,), daemon=True).start()
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", 8080))
tcp.listen()
log = open("/srv/log", "a")
def tick():
    n = 0
    while True:
        n += 1
        log.write(f"{n}\n")
        log.flush()
        time.sleep(0.02)
threading.Thread(target=tick, daemon=True).start()
u = socket.socket(socket.AF_UNIX)
try:
    os.unlink("/srv/sock")
except FileNotFoundError:
    pass
u.bind("/srv/sock")
u.listen()
while True:
    c, _ = u.accept()
    c.recv(16)
    now = hashlib.sha256(buf).hexdigest()
    c.sendall(f"{now} {digest} {min(counts)} {tcp.getsockname()[1]}\n".encode())
    c.close()
"#;

macro_rules! skip_unless_ready {
    () => {
        skip_unless_root!();
        match cryo_snapshot::criu::Criu::locate(None) {
            Err(e) => {
                println!("skipped: {e}");
                return;
            }
            // Kernels from 6.16 refuse SO_PASSCRED on inet sockets, which CRIU < 4.2 reads.
            Ok(c)
                if c.version()
                    < cryo_snapshot::criu::Version {
                        major: 4,
                        minor: 2,
                        sublevel: 0,
                    } =>
            {
                println!(
                    "skipped: CRIU {} cannot dump inet sockets on new kernels (needs 4.2)",
                    c.version()
                );
                return;
            }
            Ok(_) => {}
        }
        if !Path::new("/usr/bin/python3").exists() {
            println!("skipped: no /usr/bin/python3 (scripts/setup installs it)");
            return;
        }
    };
}

/// The python bundle of examples/python-bundle.sh with /srv bound from `srv` and limits.
fn bundle(env: &Env, srv: &Path) -> PathBuf {
    let dir = env.dir.path().join("py");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python-bundle.sh");
    let st = std::process::Command::new(&script)
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "python-bundle.sh failed");
    let cfg_path = dir.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    // Set here, not through the script's ARGS: those travel one per line.
    cfg["process"]["args"] = json!(["/usr/bin/python3", "-c", SERVER]);
    cfg["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/srv", "type": "bind", "source": srv, "options": ["rbind", "rw"]
    }));
    cfg["linux"]["resources"] = json!({
        "memory": {"limit": 512u64 << 20},
        "pids": {"limit": 64}
    });
    cfg["linux"]["cgroupsPath"] = json!(cgroup_path(&format!("py-{}", env.prefix)));
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    dir
}

/// Asks the server; returns (checksum now, checksum at start, slowest thread's count).
fn ask(srv: &Path) -> (String, String, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = UnixStream::connect(srv.join("sock")) {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(b"sum\n").unwrap();
            let mut out = String::new();
            if s.read_to_string(&mut out).is_ok() && !out.is_empty() {
                let f: Vec<&str> = out.split_whitespace().collect();
                return (f[0].into(), f[1].into(), f[2].parse().unwrap());
            }
        }
        assert!(
            Instant::now() < deadline,
            "the python server never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_lines(srv: &Path) -> usize {
    std::fs::read_to_string(srv.join("log"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn check_alive(env: &Env, id: &str, srv: &Path, digest: &str) {
    let (now, start, c1) = ask(srv);
    assert_eq!(now, digest, "the heap differs after restore");
    assert_eq!(start, digest);
    let lines = log_lines(srv);
    std::thread::sleep(Duration::from_millis(300));
    let (_, _, c2) = ask(srv);
    assert!(c2 > c1, "the threads stopped: {c1} then {c2}");
    assert!(log_lines(srv) > lines, "the log file stopped growing");
    let pid = env.state(id)["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(threads >= 5, "threads: {threads}");
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    assert!(
        tcp.lines()
            .any(|l| l.contains(":1F90 ") && l.split_whitespace().nth(3) == Some("0A")),
        "no listening TCP socket on 8080:\n{tcp}"
    );
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mem = cg
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        .unwrap();
    let limit =
        std::fs::read_to_string(format!("/sys/fs/cgroup/memory{mem}/memory.limit_in_bytes"))
            .unwrap();
    assert_eq!(limit.trim(), (512u64 << 20).to_string());
}

#[test]
fn a_python_service_comes_back_eager_and_lazy_with_its_threads_sockets_and_files() {
    skip_unless_ready!();
    let env = Env::new("py");
    let srv = env.dir.path().join("srv");
    std::fs::create_dir(&srv).unwrap();
    let b = bundle(&env, &srv);
    let id = env.id("c");
    env.ok(&["run", "-d", "--bundle", b.to_str().unwrap(), &id]);
    let (digest, start, _) = ask(&srv);
    assert_eq!(digest, start);
    let store = env.dir.path().join("store");
    env.ok(&[
        "checkpoint",
        "--store",
        store.to_str().unwrap(),
        "--snapshot",
        "py:v1",
        &id,
    ]);
    for lazy in [false, true] {
        let rid = env.id(if lazy { "lazy" } else { "eager" });
        let mut args = vec!["restore", "-d"];
        if lazy {
            args.push("--lazy-pages");
        }
        args.extend([
            "--store",
            store.to_str().unwrap(),
            "--snapshot",
            "py:v1",
            "--bundle",
            b.to_str().unwrap(),
            &rid,
        ]);
        env.ok(&args);
        check_alive(&env, &rid, &srv, &digest);
        env.remove(&rid);
    }
}

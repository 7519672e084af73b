//! The CRIU driver against the real CRIU: a plain process (a python counter)
//! dumped and restored over `criu swrk`, its counter going on; failures carrying CRIU's log.
//! Needs root and CRIU >= 4.0 (scripts/setup installs one); skipped with a reason otherwise.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cryo_snapshot::criu::{rpc, Criu, Notification, Notify};

fn criu_or_skip() -> Option<Criu> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: CRIU needs root");
        return None;
    }
    match Criu::locate(None) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// A single-threaded python process, in its own session, that counts into `out` every 20 ms.
/// (A plain process keeps its host pids across a restore, so the test avoids children and
/// threads whose pids something else could take meanwhile; trees are tested in containers.)
fn spawn_counter(out: &Path) -> i32 {
    let script = format!(
        "import time\ni=0\nwhile True:\n    i+=1\n    open({:?},'w').write(str(i))\n    time.sleep(0.02)\n",
        out.display().to_string()
    );
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    // Reaped by the test through its pid (waitpid), not through `Child`.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap();
    i32::try_from(child.id()).unwrap()
}

fn read_counter(out: &Path) -> u64 {
    std::fs::read_to_string(out)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_counter_past(out: &Path, min: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = read_counter(out);
        if n > min {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "counter stuck at {n}, wanted > {min}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn alive(pid: i32) -> bool {
    // A zombie counts as gone: read its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn reap(pid: i32) {
    // SAFETY: plain syscalls on a pid this test owns.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

#[derive(Default)]
struct Recorder(Vec<(String, Option<i32>)>);

impl Notify for Recorder {
    fn notify(&mut self, n: Notification<'_>) -> Result<(), String> {
        self.0.push((n.script.to_string(), n.pid));
        Ok(())
    }
}

fn opts(images: &File, work: &File, log: &str) -> rpc::CriuOpts {
    rpc::CriuOpts {
        images_dir_fd: images.as_raw_fd(),
        work_dir_fd: Some(work.as_raw_fd()),
        log_file: Some(log.into()),
        log_level: Some(4),
        notify_scripts: Some(true),
        ..Default::default()
    }
}

#[test]
fn process_dumps_and_restores_with_its_counter_going_on() {
    let Some(criu) = criu_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let out = dir.path().join("count");
    let pid = spawn_counter(&out);
    let before = wait_counter_past(&out, 5);

    let images_fd = File::open(&images).unwrap();
    let work_fd = File::open(dir.path()).unwrap();
    let mut notes = Recorder::default();
    let dumped = criu.dump(
        rpc::CriuOpts {
            pid: Some(pid),
            ..opts(&images_fd, &work_fd, "dump.log")
        },
        &mut notes,
    );
    if let Err(e) = &dumped {
        reap(pid);
        panic!("dump: {e}\n{}", e.criu_log().join("\n"));
    }
    // CRIU killed the tree; reap our child so the pid is free for the restore.
    // SAFETY: waitpid on our own child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    assert!(!alive(pid));
    assert!(
        notes.0.iter().any(|(s, _)| s == "post-dump"),
        "notifications: {:?}",
        notes.0
    );
    assert!(images.join("inventory.img").exists());
    let frozen = read_counter(&out);
    assert!(frozen >= before);

    let mut notes = Recorder::default();
    let restored = criu.restore(
        rpc::CriuOpts {
            rst_sibling: Some(true),
            ..opts(&images_fd, &work_fd, "restore.log")
        },
        &mut notes,
    );
    let restored = match restored {
        Ok(p) => p,
        Err(e) => panic!("restore: {e}\n{}", e.criu_log().join("\n")),
    };
    assert_eq!(restored, pid, "CRIU restores the tree with its old pids");
    assert!(
        notes
            .0
            .iter()
            .any(|(s, p)| s == "post-restore" && *p == Some(pid)),
        "notifications: {:?}",
        notes.0
    );
    let after = wait_counter_past(&out, frozen + 3);
    assert!(alive(restored));
    reap(restored);
    assert!(after > frozen);
}

#[test]
fn failed_dump_names_the_cause_and_leaves_the_process_running() {
    let Some(criu) = criu_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("count");
    let pid = spawn_counter(&out);
    wait_counter_past(&out, 1);
    let images_fd = File::open(dir.path()).unwrap();
    // A refused notification aborts the dump; CRIU must thaw the tree it froze.
    struct Refuse;
    impl Notify for Refuse {
        fn notify(&mut self, n: Notification<'_>) -> Result<(), String> {
            if n.script == "post-dump" {
                Err("refused by the test".into())
            } else {
                Ok(())
            }
        }
    }
    let err = criu
        .dump(
            rpc::CriuOpts {
                pid: Some(pid),
                leave_running: Some(false),
                ..opts(&images_fd, &images_fd, "dump.log")
            },
            &mut Refuse,
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("dump"), "{msg}");
    assert!(!err.criu_log().is_empty(), "no log lines with: {msg}");
    let n = read_counter(&out);
    wait_counter_past(&out, n + 2);
    assert!(alive(pid), "the process must survive a failed dump");
    reap(pid);

    // A pid that does not exist: CRIU's answer, not a hang.
    let err = criu
        .dump(
            rpc::CriuOpts {
                pid: Some(i32::MAX - 1),
                ..opts(&images_fd, &images_fd, "dump2.log")
            },
            &mut (),
        )
        .unwrap_err();
    assert!(err.to_string().contains("dump"), "{err}");
}

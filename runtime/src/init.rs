//! `cryo init`: the process that becomes the container. It runs from a sealed copy of the
//! `cryo` binary (CVE-2019-5736), talks to the runtime over the sync [`Channel`], and goes
//! through two stages:
//!
//! ```text
//!  stage 1 (host pid ns)          stage 2 (container init; pid 1 of a new pid ns)
//!  setns(joined namespaces)
//!  unshare(user) ─ MapRequest ─►  runtime writes uid_map/gid_map ─ MapDone
//!  unshare(other new ns)
//!  fork ───────────────────────►  setsid, rootfs (mounts, devices), [RunHooks ◄─► HooksDone]
//!  ChildPid(pid), exit            pivot_root, console, masked/ro paths, hostname, sysctl,
//!                                 rlimits, lookup exe, drop privileges ─ Ready
//!                                 block on exec.fifo until `start`, startContainer hooks,
//!                                 seccomp, execve(user process)
//! ```
//!
//! For `exec` the same stages join every namespace of the running container and skip the
//! rootfs work and the fifo. The init is a fresh single-threaded process, so forking it is
//! safe; it never returns to the caller on success.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::error::{Error, Result, SysContext};
use crate::namespaces::{clone_flag, NamespacePlan};
use crate::process::{set_oom_score_adj, set_rlimits, Prepared};
use crate::syscall::{LinuxSyscall, Syscall};
use crate::{console, hooks, rootfs};

/// Environment variable carrying the sync channel's fd number.
pub const INIT_PIPE_ENV: &str = "_CRYO_INITPIPE";

/// What the runtime tells the init.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    /// Exec into a running container instead of creating one.
    pub exec: bool,
    /// The container's spec.
    pub spec: Spec,
    /// The process to run (the spec's for create, process.json for exec).
    pub process: Process,
    /// Absolute rootfs.
    pub rootfs: PathBuf,
    /// Absolute bundle (relative bind sources).
    pub bundle: PathBuf,
    /// Namespaces to join and create.
    pub plan: NamespacePlan,
    /// O_PATH fd of the exec fifo (create only).
    pub fifo_fd: Option<RawFd>,
    /// Connected console socket.
    pub console_fd: Option<RawFd>,
    /// Extra fds passed through from 3 on.
    pub preserve_fds: i32,
    /// MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
    /// Ask the runtime to run prestart/createRuntime hooks (and get the state for
    /// createContainer/startContainer hooks).
    pub want_hooks: bool,
    /// Files to write `0` into, first thing, to move the init into the container's cgroups
    /// (see [`crate::cgroups::CgroupManager::join_files`]; the init is single-threaded).
    pub cgroup_join: Vec<PathBuf>,
}

/// Messages on the sync channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Msg {
    /// runtime → init: what to do.
    Bootstrap(Box<InitConfig>),
    /// init → runtime: a new user namespace waits for its id maps.
    MapRequest,
    /// runtime → init: maps written.
    MapDone,
    /// init (stage 1) → runtime: host pid of stage 2.
    ChildPid(i32),
    /// init → runtime: run prestart and createRuntime hooks now.
    RunHooks,
    /// runtime → init: hooks done; the state JSON for the container's own hooks.
    HooksDone(String),
    /// init → runtime: set up, waiting for start (create) or about to execve (exec).
    Ready,
    /// init → runtime: set-up failed.
    Error(String),
}

fn expect(chan: &mut Channel, what: &str) -> Result<Msg> {
    chan.recv::<Msg>()?
        .ok_or_else(|| Error::Init(format!("runtime went away while waiting for {what}")))
}

/// Entry point of `cryo init`. Returns an exit code only on failure.
pub fn main() -> i32 {
    // The runtime may have blocked signals it forwards; the container starts with none.
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    let Some(fd) = std::env::var(INIT_PIPE_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
    else {
        eprintln!("cryo init: must be started by the cryo runtime ({INIT_PIPE_ENV} unset)");
        return 1;
    };
    std::env::remove_var(INIT_PIPE_ENV);
    // SAFETY: the runtime passed this fd for us alone.
    let mut chan = unsafe { Channel::from_raw_fd(fd) };
    let cfg = match chan.recv::<Msg>() {
        Ok(Some(Msg::Bootstrap(cfg))) => cfg,
        other => {
            eprintln!("cryo init: bad bootstrap message: {other:?}");
            return 1;
        }
    };
    let err = match stage1(&mut chan, &cfg) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = chan.send(&Msg::Error(err.to_string()));
    1
}

enum Never {}

fn stage1(chan: &mut Channel, cfg: &InitConfig) -> Result<Never> {
    let sys = LinuxSyscall;
    // Before any setns: the paths are the host's. The init has not started a thread, so
    // moving this thread moves the whole process.
    for f in &cfg.cgroup_join {
        std::fs::write(f, b"0")
            .map_err(|e| Error::Init(format!("joining cgroup {}: {e}", f.display())))?;
    }
    let fds: Vec<(LinuxNamespaceType, OwnedFd)> = cfg
        .plan
        .join
        .iter()
        .map(|(t, p)| {
            let fd = nix::fcntl::open(p, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                .sys_ctx(|| format!("linux.namespaces: opening {t} namespace {}", p.display()))?;
            // SAFETY: open returned a new fd that we own.
            Ok((*t, unsafe { OwnedFd::from_raw_fd(fd) }))
        })
        .collect::<Result<_>>()?;
    for (t, fd) in &fds {
        sys.setns(fd.as_raw_fd(), clone_flag(*t))
            .sys_ctx(|| format!("linux.namespaces: joining {t} namespace"))?;
    }
    drop(fds);
    if cfg.plan.new_user() {
        sys.unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
            .sys_ctx(|| "unshare(CLONE_NEWUSER)".into())?;
        chan.send(&Msg::MapRequest)?;
        match expect(chan, "id maps")? {
            Msg::MapDone => {}
            m => return Err(Error::Init(format!("unexpected message {m:?}"))),
        }
    }
    if cfg.plan.in_userns() {
        // Become root of the user namespace if the maps have one; the user's own ids are set
        // at the end.
        let _ = nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0));
        let _ = nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0));
    }
    let flags = cfg.plan.unshare_flags();
    if !flags.is_empty() {
        sys.unshare(flags)
            .sys_ctx(|| format!("unshare({flags:?})"))?;
    }
    if flags.contains(clone_flag(LinuxNamespaceType::Network)) {
        // As runc does: a new network namespace gets its loopback interface up.
        crate::net::loopback_up()?;
    }
    // Stage 2 must not talk on the channel before stage 1 has sent its pid (the runtime
    // needs it for everything that follows): it waits for EOF on this pipe, which comes when
    // stage 1 exits.
    let (gate_rd, gate_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).sys_ctx(|| "pipe2".into())?;
    // SAFETY: this process is single-threaded (a fresh exec of cryo that started no threads).
    match unsafe { nix::unistd::fork() }.sys_ctx(|| "fork".into())? {
        ForkResult::Parent { child } => {
            drop(gate_rd);
            let sent = chan.send(&Msg::ChildPid(child.as_raw()));
            drop(gate_wr);
            sent?;
            #[allow(
                clippy::exit,
                reason = "stage 1 ends here; stage 2 carries on as the init"
            )]
            std::process::exit(0)
        }
        ForkResult::Child => {
            drop(gate_wr);
            let mut byte = [0u8; 1];
            while let Err(nix::errno::Errno::EINTR) =
                nix::unistd::read(gate_rd.as_raw_fd(), &mut byte)
            {}
            drop(gate_rd);
            let e = match stage2(chan, cfg) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            if chan.send(&Msg::Error(e.to_string())).is_err() {
                // The runtime is gone (create returned): the container's stderr is all we have.
                eprintln!("cryo init: {e}");
            }
            #[allow(
                clippy::exit,
                reason = "the forked init must not return into stage 1's code"
            )]
            std::process::exit(127)
        }
    }
}

fn setgroups_allowed() -> bool {
    std::fs::read_to_string("/proc/self/setgroups")
        .map(|s| s.trim() != "deny")
        .unwrap_or(true)
}

fn stage2(chan: &mut Channel, cfg: &InitConfig) -> Result<Never> {
    let sys = LinuxSyscall;
    nix::unistd::setsid().sys_ctx(|| "setsid".into())?;
    let seccomp = cfg.spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    let terminal = cfg.process.terminal().unwrap_or(false);
    let console_size = cfg.process.console_size().map(|b| {
        (
            u16::try_from(b.height()).unwrap_or(u16::MAX),
            u16::try_from(b.width()).unwrap_or(u16::MAX),
        )
    });

    if cfg.exec {
        if terminal {
            setup_console(cfg, console_size)?;
        }
        set_rlimits(&cfg.process)?;
        set_oom_score_adj(&cfg.process)?;
        let mut prepared = Prepared::new(&cfg.process, seccomp, setgroups_allowed())?;
        prepared.drop_privileges()?;
        chan.send(&Msg::Ready)?;
        return Err(prepared.exec(cfg.preserve_fds));
    }

    let new_mnt = cfg.plan.create.contains(&LinuxNamespaceType::Mount);
    if new_mnt {
        rootfs::prepare(
            &sys,
            &cfg.spec,
            &cfg.rootfs,
            &cfg.bundle,
            cfg.plan.in_userns(),
        )?;
    }
    let mut state_json = String::new();
    if cfg.want_hooks {
        chan.send(&Msg::RunHooks)?;
        match expect(chan, "hooks")? {
            Msg::HooksDone(s) => state_json = s,
            m => return Err(Error::Init(format!("unexpected message {m:?}"))),
        }
    }
    let spec_hooks = cfg.spec.hooks().as_ref();
    if let Some(h) = spec_hooks.and_then(|h| h.create_container().as_ref()) {
        hooks::run("createContainer", h, state_json.as_bytes())?;
    }
    if new_mnt {
        rootfs::enter(&sys, &cfg.rootfs, cfg.no_pivot)?;
        // runc creates a missing process.cwd (before the root goes read-only).
        let cwd = cfg.process.cwd();
        if cwd.is_absolute() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(cwd)
                .map_err(|e| Error::io(cwd, e))?;
        }
    } else {
        return Err(Error::Unsupported {
            field: "linux.namespaces".into(),
            msg: "cryo needs a new mount namespace".into(),
        });
    }
    if terminal {
        setup_console(cfg, console_size)?;
    }
    // runc's order: sysctls before the read-only and masked paths (/proc/sys is one).
    for (k, v) in cfg
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().as_ref())
        .into_iter()
        .flatten()
    {
        let path = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&path, v).map_err(|e| Error::Spec {
            path: "config.json".into(),
            field: format!("linux.sysctl.{k}"),
            msg: format!("writing {v:?} to {}: {e}", path.display()),
        })?;
    }
    rootfs::finalize(&sys, &cfg.spec)?;
    let uts_new = cfg.plan.create.contains(&LinuxNamespaceType::Uts);
    if let Some(h) = cfg.spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        if uts_new
            || cfg
                .plan
                .join
                .iter()
                .any(|(t, _)| *t == LinuxNamespaceType::Uts)
        {
            sys.sethostname(h)
                .sys_ctx(|| format!("hostname: sethostname {h:?}"))?;
        }
    }
    if let Some(d) = cfg.spec.domainname().as_deref().filter(|h| !h.is_empty()) {
        sys.setdomainname(d)
            .sys_ctx(|| format!("domainname: setdomainname {d:?}"))?;
    }
    set_oom_score_adj(&cfg.process)?;
    set_rlimits(&cfg.process)?;
    let start_hooks = spec_hooks
        .and_then(|h| h.start_container().clone())
        .unwrap_or_default();
    let mut prepared = Prepared::new(&cfg.process, seccomp, setgroups_allowed())?;
    if start_hooks.is_empty() {
        prepared.drop_privileges()?;
    }
    chan.send(&Msg::Ready)?;

    // Block until `cryo start` opens the fifo for reading.
    let fifo = cfg
        .fifo_fd
        .ok_or_else(|| Error::Init("no exec fifo".into()))?;
    let path = format!("/proc/self/fd/{fifo}");
    let w = nix::fcntl::open(
        path.as_str(),
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys_ctx(|| format!("opening exec fifo {path}"))?;
    nix::unistd::write(
        // SAFETY: w was just opened and stays open for this call.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(w) },
        b"0",
    )
    .sys_ctx(|| "writing exec fifo".into())?;
    let _ = nix::unistd::close(w);
    let _ = nix::unistd::close(fifo);
    if !start_hooks.is_empty() {
        hooks::run("startContainer", &start_hooks, state_json.as_bytes())?;
        prepared.drop_privileges()?;
    }
    Err(prepared.exec(cfg.preserve_fds))
}

fn setup_console(cfg: &InitConfig, size: Option<(u16, u16)>) -> Result<()> {
    let sock = cfg.console_fd.ok_or_else(|| {
        Error::Init("process.terminal is set but no --console-socket was given".into())
    })?;
    let (master, name) = console::open_pty()?;
    console::send_fd(sock, &name, master.as_raw_fd())?;
    drop(master);
    let _ = nix::unistd::close(sock);
    console::become_terminal(&name, size)
}

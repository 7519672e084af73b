//! The container lifecycle as the runtime sees it from outside: create (spawn `cryo init`,
//! cgroups, id maps, hooks), start, state, kill, delete, exec, pause/resume, ps, list.
//! The CLI and the shim both call this; it owns no process-internal set-up (see `init`).

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{Process, Spec};

use crate::cgroups::{self, CgroupManager, FreezerState};
use crate::channel::Channel;
use crate::error::{Error, IoContext, Result, SysContext};
use crate::init::{InitConfig, Msg, INIT_PIPE_ENV};
use crate::namespaces::NamespacePlan;
use crate::state::{self, ContainerState, OciState, StateDir, Status};
use crate::{hooks, spec};

/// How to run `cryo init` in a way the container cannot overwrite (CVE-2019-5736: a process
/// in the container must never be able to write through /proc/PID/exe into the host's binary).
#[derive(Debug, Clone, Default)]
pub enum InitBinary {
    /// The running executable through a read-only bind mount that is opened and then
    /// detached at once (default; crun's and runc 1.1's "bindfd"): a write through the
    /// init's /proc/PID/exe fails with EROFS. Costs three syscalls instead of a copy of the
    /// binary; falls back to [`InitBinary::SealedMemfd`] where mounting is not allowed.
    #[default]
    ReadOnlyBind,
    /// A sealed memfd copy of the running executable.
    SealedMemfd,
    /// This path, trusted as read-only (e.g. a read-only bind of the binary).
    Path(PathBuf),
}

/// A runtime instance: a state root plus how to start init.
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
    /// Executable whose copy becomes the init (default: /proc/self/exe).
    pub exe: PathBuf,
    /// How the init binary is protected.
    pub init_binary: InitBinary,
}

/// Options of `create` / `run`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Bundle directory (default: current directory).
    pub bundle: PathBuf,
    /// Write the init pid here.
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master.
    pub console_socket: Option<PathBuf>,
    /// MS_MOVE + chroot instead of pivot_root.
    pub no_pivot: bool,
    /// Pass fds 3..3+N through to the container.
    pub preserve_fds: i32,
    /// The init's stdin, stdout and stderr (default: the caller's own).
    pub stdio: Stdio,
}

/// The standard streams of a container process: each one given replaces the caller's own,
/// which the process otherwise inherits (as runc's processes do). Embedders that serve many
/// containers from one process (the containerd shim) hand over fifos, files or pipes here.
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    /// Standard input.
    pub stdin: Option<Arc<OwnedFd>>,
    /// Standard output.
    pub stdout: Option<Arc<OwnedFd>>,
    /// Standard error.
    pub stderr: Option<Arc<OwnedFd>>,
}

impl Stdio {
    fn apply(&self, cmd: &mut Command) -> Result<()> {
        let dup = |fd: &Arc<OwnedFd>| {
            fd.try_clone()
                .map(std::process::Stdio::from)
                .map_err(|e| Error::Other(format!("duplicating a stdio fd: {e}")))
        };
        if let Some(fd) = &self.stdin {
            cmd.stdin(dup(fd)?);
        }
        if let Some(fd) = &self.stdout {
            cmd.stdout(dup(fd)?);
        }
        if let Some(fd) = &self.stderr {
            cmd.stderr(dup(fd)?);
        }
        Ok(())
    }
}

/// Options of `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Write the process pid here.
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master.
    pub console_socket: Option<PathBuf>,
    /// Pass fds 3..3+N through.
    pub preserve_fds: i32,
    /// The process's stdin, stdout and stderr (default: the caller's own).
    pub stdio: Stdio,
}

/// The absolute bundle directory (`bundle`, or the current directory when empty), its spec
/// and its absolute rootfs.
pub(crate) fn open_bundle(bundle: &Path) -> Result<(PathBuf, Spec, PathBuf)> {
    let bundle = if bundle.as_os_str().is_empty() {
        std::env::current_dir().io_ctx(".")?
    } else {
        fs::canonicalize(bundle).io_ctx(bundle)?
    };
    let (spec, rootfs) = spec::load_bundle(&bundle)?;
    Ok((bundle, spec, rootfs))
}

/// The manager of the cgroup(s) `spec` asks for container `id` (nothing created yet).
pub(crate) fn spec_cgroup(spec: &Spec, id: &str) -> Result<Box<dyn CgroupManager>> {
    let cg_path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    Ok(cgroups::create(cg_path.as_deref(), id)?)
}

/// Creates the container's cgroup(s) and writes `linux.resources`.
pub(crate) fn prepare_cgroup(cgroup: &dyn CgroupManager, spec: &Spec) -> Result<()> {
    cgroup.prepare()?;
    // Like runc and crun, the nodes of `linux.devices` get no implicit allow rule: the caller
    // lists them in `linux.resources.devices` (docker, podman and containerd do).
    let resources = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    cgroup.set(&resources)?;
    Ok(())
}

/// Records the cgroup a create or restore has just made in its state directory, if no
/// process is in it yet: what `delete` removes, with whatever runs in it, when the command is
/// killed before state.json exists. A `cgroupsPath` naming a cgroup that others already use
/// is not recorded, and left alone.
pub(crate) fn record_cgroup(dir: &StateDir, cgroup: &dyn CgroupManager) -> Result<()> {
    if cgroup.pids().is_ok_and(|p| p.is_empty()) {
        dir.save_cgroup(&cgroup.state())?;
    }
    Ok(())
}

/// SIGKILLs every process in `cg` until none is left (5 s at most), then removes it.
fn kill_all_and_destroy(cg: &dyn CgroupManager) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = cg.pids().unwrap_or_default();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(cg.destroy()?)
}

pub(crate) fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    // runc writes the pid file atomically: containerd reads it as soon as create returns.
    let tmp = path.with_extension("cryo-tmp");
    fs::write(&tmp, pid.to_string()).io_ctx(&tmp)?;
    fs::rename(&tmp, path).io_ctx(path)
}

/// A sealed, close-on-exec memfd holding a copy of `exe` (CVE-2019-5736: the container can
/// never write through /proc/PID/exe into the host's binary).
fn sealed_copy(exe: &Path) -> Result<OwnedFd> {
    let name = c"cryo";
    let fd = nix::sys::memfd::memfd_create(
        name,
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC
            | nix::sys::memfd::MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .sys_ctx(|| "memfd_create".into())?;
    let mut src = fs::File::open(exe).io_ctx(exe)?;
    let mut dst = fs::File::from(fd);
    std::io::copy(&mut src, &mut dst).io_ctx(exe)?;
    let fd: OwnedFd = dst.into();
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on an fd we own with an integer argument.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    nix::Error::result(r).sys_ctx(|| "sealing the init binary".into())?;
    Ok(fd)
}

/// `exe` opened through a read-only bind mount of it, already detached (see
/// [`InitBinary::ReadOnlyBind`]). The mount point is a scratch file in `dir`.
fn ro_bind(exe: &Path, dir: &Path) -> Result<OwnedFd> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let target = dir.join(format!(".cryo-exe-{}", std::process::id()));
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&target)
        .io_ctx(&target)?;
    let bound = mount(
        Some(exe),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .sys_ctx(|| format!("bind-mounting {} read-only", exe.display()));
    let fd = bound.and_then(|()| {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        let r = mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
            .sys_ctx(|| format!("remounting {} read-only", target.display()))
            .and_then(|()| {
                nix::fcntl::open(
                    &target,
                    nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .sys_ctx(|| format!("opening {}", target.display()))
            });
        // Detached now, the mount lives on only through the fd.
        let _ = umount2(&target, MntFlags::MNT_DETACH);
        r
    });
    let _ = fs::remove_file(&target);
    // SAFETY: open returned a new fd that we own.
    fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn clear_cloexec(fd: RawFd) -> Result<()> {
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .sys_ctx(|| format!("clearing close-on-exec on fd {fd}"))?;
    Ok(())
}

fn write_id_maps(pid: u32, spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    let fmt = |maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.into_iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let uid = fmt(linux.and_then(|l| l.uid_mappings().as_ref()));
    let gid = fmt(linux.and_then(|l| l.gid_mappings().as_ref()));
    let up = format!("/proc/{pid}/uid_map");
    fs::write(&up, &uid).map_err(|e| Error::Spec {
        path: "config.json".into(),
        field: "linux.uidMappings".into(),
        msg: format!("writing {up}: {e}"),
    })?;
    let gp = format!("/proc/{pid}/gid_map");
    fs::write(&gp, &gid).map_err(|e| Error::Spec {
        path: "config.json".into(),
        field: "linux.gidMappings".into(),
        msg: format!("writing {gp}: {e}"),
    })
}

/// The host uid and gid that container root maps to (0, 0 without mappings).
fn host_root_ids(spec: &Spec) -> (u32, u32) {
    let linux = spec.linux().as_ref();
    let root = |maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.into_iter()
            .flatten()
            .find(|m| m.container_id() == 0)
            .map_or(0, |m| m.host_id())
    };
    (
        root(linux.and_then(|l| l.uid_mappings().as_ref())),
        root(linux.and_then(|l| l.gid_mappings().as_ref())),
    )
}

/// Kills and reaps a half-created init.
fn abort_init(stage1: &mut Child, init_pid: Option<i32>) {
    let _ = stage1.kill();
    let _ = stage1.wait();
    if let Some(pid) = init_pid {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        // It may be our child (run makes us a subreaper) or not: reap if we can.
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}

impl Runtime {
    /// A runtime over the state root `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Runtime {
            root: root.into(),
            exe: PathBuf::from("/proc/self/exe"),
            init_binary: InitBinary::default(),
        }
    }

    /// The cryo binary to run helper commands (`cryo lazy-pages`) with: the init binary
    /// when it is given as a path, else [`Runtime::exe`].
    pub(crate) fn cryo_exe(&self) -> PathBuf {
        match &self.init_binary {
            InitBinary::Path(p) => p.clone(),
            _ => self.exe.clone(),
        }
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn init_command(&self) -> Result<(Command, Option<OwnedFd>)> {
        let fd = match &self.init_binary {
            InitBinary::Path(p) => {
                let mut cmd = Command::new(p);
                cmd.arg0("cryo");
                return Ok((cmd, None));
            }
            InitBinary::ReadOnlyBind => ro_bind(&self.exe, &self.root).or_else(|e| {
                tracing::debug!("read-only bind of the init binary: {e}; copying it instead");
                sealed_copy(&self.exe)
            })?,
            InitBinary::SealedMemfd => sealed_copy(&self.exe)?,
        };
        let mut cmd = Command::new(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        cmd.arg0("cryo");
        Ok((cmd, Some(fd)))
    }

    /// Spawns `cryo init` with the channel and the extra fds it needs inherited.
    fn spawn_init(&self, inherit: &[RawFd], stdio: &Stdio) -> Result<(Child, Channel)> {
        let (parent, child) = Channel::pair()?;
        let (mut cmd, _memfd) = self.init_command()?;
        stdio.apply(&mut cmd)?;
        for fd in inherit.iter().copied().chain([child.raw_fd()]) {
            clear_cloexec(fd)?;
        }
        cmd.arg("init")
            .env_clear()
            .env(INIT_PIPE_ENV, child.raw_fd().to_string());
        let proc_ = cmd
            .spawn()
            .map_err(|e| Error::Other(format!("starting cryo init: {e}")))?;
        drop(child);
        Ok((proc_, parent))
    }

    /// Drives the init through its messages until it reports Ready.
    #[allow(clippy::too_many_arguments)]
    fn handshake(
        &self,
        chan: &mut Channel,
        stage1: &mut Child,
        spec: &Spec,
        mut on_hooks: impl FnMut(i32) -> Result<String>,
    ) -> Result<i32> {
        let mut init_pid = None;
        loop {
            let msg = chan.recv::<Msg>();
            let msg = match msg {
                Ok(Some(m)) => m,
                Ok(None) => {
                    abort_init(stage1, init_pid);
                    return Err(Error::Init("init exited before it was ready".into()));
                }
                Err(e) => {
                    abort_init(stage1, init_pid);
                    return Err(e);
                }
            };
            let r: Result<()> = match msg {
                Msg::MapRequest => {
                    write_id_maps(stage1.id(), spec).and_then(|()| chan.send(&Msg::MapDone))
                }
                Msg::ChildPid(pid) => {
                    init_pid = Some(pid);
                    let _ = stage1.wait();
                    Ok(())
                }
                Msg::RunHooks => match init_pid {
                    Some(pid) => on_hooks(pid).and_then(|s| chan.send(&Msg::HooksDone(s))),
                    None => Err(Error::Init(
                        "hooks requested before the init pid was known".into(),
                    )),
                },
                Msg::Ready => {
                    return init_pid
                        .ok_or_else(|| Error::Init("ready before the init pid was known".into()))
                }
                Msg::Error(e) => Err(Error::Init(e)),
                m => Err(Error::Init(format!("unexpected message from init: {m:?}"))),
            };
            if let Err(e) = r {
                abort_init(stage1, init_pid);
                return Err(e);
            }
        }
    }

    /// `create`: sets the container up and leaves its init waiting for `start`. Returns the
    /// init's host pid.
    pub fn create(&self, id: &str, opts: &CreateOptions) -> Result<i32> {
        let dir = StateDir::create(&self.root, id)?;
        match self.create_in(&dir, opts) {
            Ok(pid) => Ok(pid),
            Err(e) => {
                let _ = dir.remove();
                Err(e)
            }
        }
    }

    fn create_in(&self, dir: &StateDir, opts: &CreateOptions) -> Result<i32> {
        let id = dir.id().to_string();
        let (bundle, spec, rootfs) = open_bundle(&opts.bundle)?;
        let linux = spec.linux().as_ref();
        let process = spec.process().clone().unwrap_or_default();
        let plan =
            NamespacePlan::from_spec(linux.and_then(|l| l.namespaces().as_deref()).unwrap_or(&[]));

        let fifo_path = dir.fifo_path();
        nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .sys_ctx(|| format!("mkfifo {}", fifo_path.display()))?;
        // Like runc: the init opens the fifo as container root, which in a user namespace is an
        // unprivileged host uid, so the mode must not lose its write bits to the umask and the
        // fifo belongs to the host ids that container root maps to.
        nix::sys::stat::fchmodat(
            None,
            &fifo_path,
            nix::sys::stat::Mode::from_bits_truncate(0o622),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .sys_ctx(|| format!("chmod {}", fifo_path.display()))?;
        let (root_uid, root_gid) = host_root_ids(&spec);
        nix::unistd::chown(
            &fifo_path,
            Some(nix::unistd::Uid::from_raw(root_uid)),
            Some(nix::unistd::Gid::from_raw(root_gid)),
        )
        .sys_ctx(|| format!("chown {}", fifo_path.display()))?;
        let fifo = nix::fcntl::open(
            &fifo_path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .sys_ctx(|| format!("opening {}", fifo_path.display()))?;
        // SAFETY: open returned a new fd that we own.
        let fifo = unsafe { OwnedFd::from_raw_fd(fifo) };
        let console = if process.terminal().unwrap_or(false) {
            let path = opts
                .console_socket
                .as_ref()
                .ok_or_else(|| Error::Unsupported {
                    field: "process.terminal".into(),
                    msg: "a terminal needs --console-socket".into(),
                })?;
            Some(crate::console::connect(path)?)
        } else {
            None
        };

        let cgroup = spec_cgroup(&spec, &id)?;
        let cleanup_cg = |cg: &dyn CgroupManager| {
            let _ = cg.destroy();
        };
        if let Err(e) = prepare_cgroup(cgroup.as_ref(), &spec)
            .and_then(|()| record_cgroup(dir, cgroup.as_ref()))
        {
            cleanup_cg(cgroup.as_ref());
            return Err(e);
        }
        let mut inherit = vec![fifo.as_raw_fd()];
        inherit.extend(console.as_ref().map(|c| c.as_raw_fd()));
        let (mut stage1, mut chan) = match self.spawn_init(&inherit, &opts.stdio) {
            Ok(x) => x,
            Err(e) => {
                cleanup_cg(cgroup.as_ref());
                return Err(e);
            }
        };
        let hooks = spec.hooks().as_ref();
        let want_hooks = hooks.is_some_and(|h| {
            h.prestart().as_ref().is_some_and(|v| !v.is_empty())
                || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
                || h.create_container().as_ref().is_some_and(|v| !v.is_empty())
                || h.start_container().as_ref().is_some_and(|v| !v.is_empty())
        });
        let cfg = InitConfig {
            exec: false,
            spec: spec.clone(),
            process,
            rootfs: rootfs.clone(),
            bundle: bundle.clone(),
            plan,
            fifo_fd: Some(fifo.as_raw_fd()),
            console_fd: console.as_ref().map(|c| c.as_raw_fd()),
            preserve_fds: opts.preserve_fds,
            no_pivot: opts.no_pivot,
            want_hooks,
            cgroup_join: cgroup.join_files(),
        };
        let created = chrono::Utc::now();
        let annotations = spec.annotations().clone().unwrap_or_default();
        let mk_state = |pid: i32| ContainerState {
            id: id.clone(),
            pid,
            pid_start: state::proc_stat(pid).map(|s| s.start_time).unwrap_or(0),
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            created,
            owner: String::new(),
            annotations: annotations.clone(),
            cgroup: Some(cgroup.state()),
            config: spec.clone(),
        };
        let on_hooks = |pid: i32| -> Result<String> {
            let st = mk_state(pid);
            let json = serde_json::to_string(&st.oci(Status::Creating)).unwrap_or_default();
            if let Some(h) = hooks {
                hooks::run(
                    "prestart",
                    h.prestart().as_deref().unwrap_or(&[]),
                    json.as_bytes(),
                )?;
                hooks::run(
                    "createRuntime",
                    h.create_runtime().as_deref().unwrap_or(&[]),
                    json.as_bytes(),
                )?;
            }
            Ok(json)
        };
        let pid = chan
            .send(&Msg::Bootstrap(Box::new(cfg)))
            .and_then(|()| self.handshake(&mut chan, &mut stage1, &spec, on_hooks));
        let pid = match pid {
            Ok(p) => p,
            Err(e) => {
                abort_init(&mut stage1, None);
                cleanup_cg(cgroup.as_ref());
                return Err(e);
            }
        };
        let st = mk_state(pid);
        let r = dir.save(&st).and_then(|()| match &opts.pid_file {
            Some(p) => write_pid_file(p, pid),
            None => Ok(()),
        });
        if let Err(e) = r {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            cleanup_cg(cgroup.as_ref());
            return Err(e);
        }
        Ok(pid)
    }

    /// Loads the state and derives the live status.
    pub fn load(&self, id: &str) -> Result<(StateDir, ContainerState, Status)> {
        let dir = StateDir::open(&self.root, id)?;
        let st = dir.load()?;
        let status = self.status_of(&dir, &st);
        Ok((dir, st, status))
    }

    /// Like [`Runtime::load`], without taking the container's lock: for commands that only
    /// read (state, list, ps, stats), which must not wait for a checkpoint to end.
    fn peek(&self, id: &str) -> Result<(StateDir, ContainerState, Status)> {
        let dir = StateDir::unlocked(&self.root, id)?;
        let st = dir.load()?;
        let status = self.status_of(&dir, &st);
        Ok((dir, st, status))
    }

    pub(crate) fn status_of(&self, dir: &StateDir, st: &ContainerState) -> Status {
        if !state::process_alive(st.pid, st.pid_start) {
            return Status::Stopped;
        }
        if dir.fifo_path().exists() {
            return Status::Created;
        }
        if let Some(cg) = st.cgroup.as_ref().and_then(|c| cgroups::from_state(c).ok()) {
            if matches!(cg.freezer_state(), Ok(FreezerState::Frozen)) {
                return Status::Paused;
            }
        }
        Status::Running
    }

    /// `state`: runc's JSON view.
    pub fn state(&self, id: &str) -> Result<OciState> {
        let (_dir, st, status) = self.peek(id)?;
        Ok(st.oci(status))
    }

    /// `start`: lets a created container's init exec the user's process.
    pub fn start(&self, id: &str) -> Result<()> {
        let (dir, st, status) = self.load(id)?;
        if status != Status::Created {
            return Err(Error::BadStatus {
                op: "start",
                id: id.into(),
                status: status.to_string(),
                hint: ": cannot start a container that is not created",
            });
        }
        let fifo = dir.fifo_path();
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .io_ctx(&fifo)?;
        let mut f = f;
        let mut buf = [0u8; 1];
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut spin = Duration::from_micros(20);
        loop {
            match f.read(&mut buf) {
                Ok(1) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Error::io(&fifo, e)),
            }
            if !state::process_alive(st.pid, st.pid_start) {
                // A short-lived process may have written its byte, exec'd and exited between
                // the read above and this check: the byte is what counts.
                if matches!(f.read(&mut buf), Ok(1)) {
                    break;
                }
                return Err(Error::Init(format!(
                    "container {id}: init exited before start"
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Init(format!(
                    "container {id}: init did not answer start"
                )));
            }
            std::thread::sleep(spin);
            spin = (spin * 2).min(Duration::from_millis(2));
        }
        fs::remove_file(&fifo).io_ctx(&fifo)?;
        if let Some(h) = st
            .config
            .hooks()
            .as_ref()
            .and_then(|h| h.poststart().as_ref())
        {
            let json = serde_json::to_vec(&st.oci(Status::Running)).unwrap_or_default();
            hooks::run("poststart", h, &json)?;
        }
        Ok(())
    }

    /// `kill`: sends `sig` to the init, or with `all` to every process of the container.
    pub fn kill(&self, id: &str, sig: Signal, all: bool) -> Result<()> {
        let (_dir, st, status) = self.load(id)?;
        if status == Status::Stopped && !all {
            return Err(Error::BadStatus {
                op: "kill",
                id: id.into(),
                status: status.to_string(),
                hint: ": container not running",
            });
        }
        if all {
            let cg = st.cgroup.as_ref().map(cgroups::from_state).transpose()?;
            if let Some(cg) = cg {
                for pid in cg.pids()? {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
                }
                return Ok(());
            }
        }
        nix::sys::signal::kill(Pid::from_raw(st.pid), sig)
            .sys_ctx(|| format!("kill {} {sig}", st.pid))
    }

    /// `delete`: removes a stopped container (created ones too, as runc does); `force` kills
    /// a running one first.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let dir = StateDir::open(&self.root, id)?;
        let st = match dir.load() {
            Ok(st) => st,
            // A create or restore killed before it wrote state.json left its directory (and,
            // for a restore, mounts below it): no container exists, and nothing else would
            // ever remove it or free the id. As runc does, remove it and say the container
            // does not exist. The directory's lock, held here, proves its creator is gone.
            // The cgroup it made goes too, with whatever runs in it (the init of a create,
            // the tasks of a restore whose CRIU went on).
            Err(Error::NotFound(_)) => {
                tracing::debug!(
                    id,
                    "removing the state directory of an aborted create or restore"
                );
                // A record that cannot be read (a kill mid-write) leaves the cgroup, not
                // the id taken.
                match dir
                    .load_cgroup()
                    .and_then(|c| c.map(|c| Ok(cgroups::from_state(&c)?)).transpose())
                {
                    Ok(Some(cg)) => {
                        let _ = cg.freeze(FreezerState::Thawed);
                        kill_all_and_destroy(cg.as_ref())?;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(id, "not removing the cgroup: {e}"),
                }
                dir.remove()?;
                return Err(Error::NotFound(id.to_string()));
            }
            Err(e) => return Err(e),
        };
        let status = self.status_of(&dir, &st);
        self.delete_loaded(dir, &st, status, force)
    }

    /// `delete` for a container already loaded (and its state directory locked) by the caller.
    pub(crate) fn delete_loaded(
        &self,
        dir: StateDir,
        st: &ContainerState,
        status: Status,
        force: bool,
    ) -> Result<()> {
        let id = dir.id().to_string();
        let id = id.as_str();
        match status {
            Status::Stopped | Status::Created => {}
            _ if force => {}
            s => {
                return Err(Error::BadStatus {
                    op: "delete",
                    id: id.into(),
                    status: s.to_string(),
                    hint: ": cannot delete a container that is not stopped (use --force)",
                })
            }
        }
        let cg = st.cgroup.as_ref().map(cgroups::from_state).transpose()?;
        if status != Status::Stopped {
            if let Some(cg) = &cg {
                if status == Status::Paused {
                    let _ = cg.freeze(FreezerState::Thawed);
                }
            }
            let _ = nix::sys::signal::kill(Pid::from_raw(st.pid), Signal::SIGKILL);
        }
        // Without a pid namespace, processes can outlive the init: kill what is left.
        if let Some(cg) = &cg {
            kill_all_and_destroy(cg.as_ref())?;
        }
        if let Some(h) = st
            .config
            .hooks()
            .as_ref()
            .and_then(|h| h.poststop().as_ref())
        {
            let json = serde_json::to_vec(&st.oci(Status::Stopped)).unwrap_or_default();
            if let Err(e) = hooks::run("poststop", h, &json) {
                tracing::warn!("{e}");
            }
        }
        dir.remove()
    }

    /// `pause` / `resume`.
    pub fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        let (_dir, st, status) = self.load(id)?;
        let (want, hint) = if paused {
            (Status::Running, ": container not running")
        } else {
            (Status::Paused, ": container not paused")
        };
        if status != want {
            return Err(Error::BadStatus {
                op: if paused { "pause" } else { "resume" },
                id: id.into(),
                status: status.to_string(),
                hint,
            });
        }
        let cg = st
            .cgroup
            .as_ref()
            .ok_or_else(|| Error::Other(format!("container {id} has no cgroup")))?;
        let cg = cgroups::from_state(cg)?;
        cg.freeze(if paused {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        })?;
        Ok(())
    }

    /// `ps`: the pids in the container's cgroup.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let (_dir, st, _status) = self.peek(id)?;
        match &st.cgroup {
            Some(c) => Ok(cgroups::from_state(c)?.pids()?),
            None => Ok(vec![st.pid]),
        }
    }

    /// `update -r`: new resource limits.
    pub fn update(&self, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let (_dir, st, status) = self.load(id)?;
        if status == Status::Stopped {
            return Err(Error::BadStatus {
                op: "update",
                id: id.into(),
                status: status.to_string(),
                hint: ": container not running",
            });
        }
        let c = st
            .cgroup
            .as_ref()
            .ok_or_else(|| Error::Other(format!("container {id} has no cgroup")))?;
        cgroups::from_state(c)?.set(resources)?;
        Ok(())
    }

    /// Cgroup statistics of a container.
    pub fn stats(&self, id: &str) -> Result<cgroups::Stats> {
        let (_dir, st, _status) = self.peek(id)?;
        let c = st
            .cgroup
            .as_ref()
            .ok_or_else(|| Error::Other(format!("container {id} has no cgroup")))?;
        Ok(cgroups::from_state(c)?.stats()?)
    }

    /// A watcher of the container's OOM kills (the shim's `/tasks/oom`); `None` when the
    /// container has no memory cgroup.
    pub fn oom_watcher(&self, id: &str) -> Result<Option<cgroups::oom::OomWatcher>> {
        let (_dir, st, _status) = self.load(id)?;
        match st.cgroup.as_ref() {
            Some(c) => Ok(cgroups::oom::OomWatcher::new(c)?),
            None => Ok(None),
        }
    }

    /// `list`: every container's state.
    pub fn list(&self) -> Result<Vec<OciState>> {
        let mut out = Vec::new();
        for id in state::list_ids(&self.root)? {
            match self.state(&id) {
                Ok(s) => out.push(s),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// `exec`: runs `process` inside the running container. Returns the process's host pid
    /// once it has exec'd.
    pub fn exec(&self, id: &str, process: Process, opts: &ExecOptions) -> Result<i32> {
        let (_dir, st, status) = self.load(id)?;
        if status != Status::Running && status != Status::Created {
            return Err(Error::BadStatus {
                op: "exec",
                id: id.into(),
                status: status.to_string(),
                hint: ": cannot exec in a stopped or paused container",
            });
        }
        let linux = st.config.linux().as_ref();
        let plan = NamespacePlan::for_exec(
            linux.and_then(|l| l.namespaces().as_deref()).unwrap_or(&[]),
            st.pid,
        );
        let console = if process.terminal().unwrap_or(false) {
            let path = opts
                .console_socket
                .as_ref()
                .ok_or_else(|| Error::Unsupported {
                    field: "process.terminal".into(),
                    msg: "a terminal needs --console-socket".into(),
                })?;
            Some(crate::console::connect(path)?)
        } else {
            None
        };
        let inherit: Vec<RawFd> = console.iter().map(|c| c.as_raw_fd()).collect();
        let cgroup_join = match &st.cgroup {
            Some(c) => cgroups::from_state(c)?.join_files(),
            None => Vec::new(),
        };
        let (mut stage1, mut chan) = self.spawn_init(&inherit, &opts.stdio)?;
        let cfg = InitConfig {
            exec: true,
            spec: st.config.clone(),
            process,
            rootfs: st.rootfs.clone(),
            bundle: st.bundle.clone(),
            plan,
            fifo_fd: None,
            console_fd: console.as_ref().map(|c| c.as_raw_fd()),
            preserve_fds: opts.preserve_fds,
            no_pivot: false,
            want_hooks: false,
            cgroup_join,
        };
        chan.send(&Msg::Bootstrap(Box::new(cfg)))?;
        let pid = self.handshake(&mut chan, &mut stage1, &st.config, |_| Ok(String::new()))?;
        // Ready was sent right before execve: EOF means it succeeded, a message means not.
        match chan.recv::<Msg>()? {
            None => {}
            Some(Msg::Error(e)) => return Err(Error::Init(e)),
            Some(m) => return Err(Error::Init(format!("unexpected message from init: {m:?}"))),
        }
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        Ok(pid)
    }
}

use std::os::unix::fs::OpenOptionsExt;

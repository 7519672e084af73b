//! The container lifecycle as the runtime sees it from outside: its types, then start, state,
//! kill, delete, pause/resume, ps, list, update, stats on containers that exist; `create` and
//! `exec`, which start processes, are in `container/spawn.rs`. The CLI and the shim both call
//! this; it owns no process-internal set-up (see `init`).

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
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

mod spawn;
pub(crate) use spawn::write_pid_file;

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
        crate::checkpoint::remove_shm_staging(dir.path(), id);
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
}

//! Starting processes in containers: `create`, which spawns the container's init (`cryo
//! init` from a binary the container cannot write to, its cgroups, id maps and hooks, and the
//! handshake up to the exec fifo), and `exec`, which starts a process in a running container
//! through the same init protocol. What is done to containers once they exist (start, kill,
//! delete, state, ...) is in `container.rs`; the process set-up inside the namespaces is in
//! `init`.

use super::*;

/// Writes `pid` into `path` (runc's `--pid-file`), by rename.
pub(crate) fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    // runc writes the pid file atomically: containerd reads it as soon as create returns.
    let tmp = path.with_extension("cryo-tmp");
    fs::write(&tmp, pid.to_string()).io_ctx(&tmp)?;
    fs::rename(&tmp, path).io_ctx(path)
}

/// The connection to the console socket for a process that wants a terminal; `None` for one
/// that does not.
fn console_of(process: &Process, socket: Option<&Path>) -> Result<Option<OwnedFd>> {
    if !process.terminal().unwrap_or(false) {
        return Ok(None);
    }
    let path = socket.ok_or_else(|| Error::Unsupported {
        field: "process.terminal".into(),
        msg: "a terminal needs --console-socket".into(),
    })?;
    Ok(Some(crate::console::connect(path)?))
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
        StateDir::create_with(&self.root, id, |dir| self.create_in(dir, opts))
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
        let console = console_of(&process, opts.console_socket.as_deref())?;

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
        let console = console_of(&process, opts.console_socket.as_deref())?;
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

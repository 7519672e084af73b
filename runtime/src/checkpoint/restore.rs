//! `restore`: a new container from a bundle and an image directory. An image with checkpointed
//! CUDA processes is restored stopped; their device memory goes back onto the GPU
//! ([`super::gpu`]) before the container resumes.

use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use cryo_snapshot::criu::{
    materialize, materialize_lazy, rpc, Criu, Notification, Notify, SpawnOptions,
};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use crate::cgroups::{self, CgroupManager};
use crate::error::{Error, IoContext, Result, SysContext};
use crate::state::{self, ContainerState, StateDir, Status};
use crate::{hooks, Runtime};

use super::externals::{cgroup_binds, cgroup_roots, external_mounts, restore_namespaces};
use super::tmpfs::Mounted;
use super::{
    absolute, base_opts, criu_err, image_dir, mkdir_0700, open_store, open_work_dir, Descriptor,
    ImageMeta, RestoreOptions, META_FILE, META_VERSION, META_VERSION_MIN,
};

/// Answers CRIU during a restore: runs the hooks when namespaces exist, learns the pid, hands
/// a pty master to the console socket.
struct RestoreNotify<'a> {
    spec: &'a Spec,
    state: &'a dyn Fn(i32) -> ContainerState,
    console_socket: Option<&'a Path>,
    pid: Option<i32>,
}

impl Notify for RestoreNotify<'_> {
    fn notify(&mut self, n: Notification<'_>) -> std::result::Result<(), String> {
        match n.script {
            "setup-namespaces" => {
                let Some(pid) = n.pid else { return Ok(()) };
                let Some(h) = self.spec.hooks().as_ref() else {
                    return Ok(());
                };
                let json = serde_json::to_vec(&(self.state)(pid).oci(Status::Creating))
                    .unwrap_or_default();
                hooks::run("prestart", h.prestart().as_deref().unwrap_or(&[]), &json)
                    .and_then(|()| {
                        hooks::run(
                            "createRuntime",
                            h.create_runtime().as_deref().unwrap_or(&[]),
                            &json,
                        )
                    })
                    .map_err(|e| e.to_string())
            }
            "post-restore" => {
                self.pid = n.pid;
                Ok(())
            }
            "orphan-pts-master" => {
                let (Some(fd), Some(path)) = (n.fd, self.console_socket) else {
                    return Err("a restored terminal needs --console-socket".into());
                };
                let sock = crate::console::connect(path).map_err(|e| e.to_string())?;
                crate::console::send_fd(sock.as_raw_fd(), "/dev/ptmx", fd.as_raw_fd())
                    .map_err(|e| e.to_string())
            }
            _ => Ok(()),
        }
    }
}

/// The lazy-pages server process: killed on drop unless [`LazyDaemon::keep`] was called.
struct LazyDaemon {
    child: Option<std::process::Child>,
}

impl LazyDaemon {
    /// Leaves the server running (the restore succeeded; it exits when every page is in).
    fn keep(&mut self) {
        self.child = None;
    }

    /// Whether the server has exited, waiting up to `limit` for it (after a failed restore:
    /// a server that failed first exits at once, after writing why to its log).
    fn exited_within(&mut self, limit: std::time::Duration) -> bool {
        let Some(c) = self.child.as_mut() else {
            return true;
        };
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Waits until the server exits, which it does once every page is in; an error (with
    /// its log) when it failed.
    fn wait_all_in(&mut self, state: &Path) -> Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        let st = c
            .wait()
            .map_err(|e| Error::Other(format!("waiting for the lazy-pages server: {e}")))?;
        if st.success() {
            return Ok(());
        }
        let log = fs::read_to_string(state.join("lazy-pages.log")).unwrap_or_default();
        Err(Error::Other(format!(
            "copying the snapshot's memory in failed ({st}): {}",
            log.trim()
        )))
    }
}

impl Drop for LazyDaemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Runtime {
    /// Starts `cryo lazy-pages` in its own session ([`StartingDaemon::listening`] waits until
    /// its socket listens). Its log and final report go to the container's state directory.
    fn spawn_lazy_daemon(
        &self,
        store: &Path,
        snapshot: &str,
        socket: &Path,
        state: &Path,
        cgroup: &dyn CgroupManager,
    ) -> Result<StartingDaemon> {
        use std::os::unix::process::CommandExt as _;
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .sys_ctx(|| "pipe for the lazy-pages server".into())?;
        let log_path = state.join("lazy-pages.log");
        let log = File::create(&log_path).io_ctx(&log_path)?;
        let mut cmd = std::process::Command::new(self.cryo_exe());
        cmd.arg("lazy-pages")
            .arg("--store")
            .arg(store)
            .arg("--snapshot")
            .arg(snapshot)
            .arg("--socket")
            .arg(socket)
            .arg("--ready-fd")
            .arg("3")
            .arg("--report")
            .arg(state.join("lazy-pages.json"))
            .arg("--state-dir")
            .arg(state);
        // Any one hierarchy lists every process of the container.
        let cg = cgroup.state();
        let kill_dir = ["freezer", "pids", "memory", cgroups::UNIFIED]
            .iter()
            .find_map(|k| cg.paths.get(*k))
            .or_else(|| cg.paths.values().next());
        if let Some(d) = kill_dir {
            cmd.arg("--kill-cgroup").arg(d);
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        let w = wr.as_raw_fd();
        // SAFETY: setsid, dup2 and fcntl are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                libc::setsid();
                if w == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0);
                } else if libc::dup2(w, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::Other(format!("starting cryo lazy-pages: {e}")))?;
        drop(wr);
        let pid_file = state.join("lazy-pages.pid");
        let _ = fs::write(&pid_file, child.id().to_string());
        Ok(StartingDaemon {
            guard: LazyDaemon { child: Some(child) },
            ready: File::from(rd),
            log_path,
            started: std::time::Instant::now(),
        })
    }
}

/// A lazy-pages server started and not yet listening: the restore materializes the images
/// meanwhile.
struct StartingDaemon {
    guard: LazyDaemon,
    ready: File,
    log_path: PathBuf,
    started: std::time::Instant,
}

impl StartingDaemon {
    /// Waits until the server listens (it writes one byte to its ready fd).
    fn listening(mut self) -> Result<LazyDaemon> {
        use std::io::Read as _;
        let mut byte = [0u8; 1];
        if self.ready.read(&mut byte).unwrap_or(0) != 1 {
            if let Some(c) = self.guard.child.as_mut() {
                let _ = c.wait();
            }
            self.guard.child = None;
            let log = fs::read_to_string(&self.log_path).unwrap_or_default();
            return Err(Error::Other(format!(
                "the lazy-pages server did not start: {}",
                log.trim()
            )));
        }
        tracing::debug!(
            ms = self.started.elapsed().as_secs_f64() * 1e3,
            "the lazy-pages server listens"
        );
        Ok(self.guard)
    }
}

/// Removes a materialized images directory on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Whether the container lives in a mount namespace other than this process's: a new one, or
/// one joined by path that is not this process's own.
fn has_mount_ns(spec: &Spec) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_deref())
        .unwrap_or(&[])
        .iter()
        .filter(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Mount)
        .any(|ns| match ns.path() {
            None => true,
            Some(p) => ino(p).is_some_and(|i| Some(i) != ino(Path::new("/proc/self/ns/mnt"))),
        })
}

/// Whether `dest` lies below the destination of a mount of `spec` that is not a bind (proc,
/// sysfs, a tmpfs): CRIU mounts that itself, with what was in it.
fn under_restored_mount(spec: &Spec, dest: &str) -> bool {
    let dest = Path::new(dest);
    spec.mounts().as_deref().unwrap_or(&[]).iter().any(|m| {
        !super::externals::is_bind(m)
            && m.destination() != Path::new("/")
            && dest != m.destination()
            && dest.starts_with(m.destination())
    })
}

/// Unmounts and removes the restore root on drop.
struct RootBind(PathBuf);

impl Drop for RootBind {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.0);
    }
}

impl Runtime {
    /// `restore`: creates container `id` from the bundle's config.json with the process tree
    /// in `opts.image_path`. Returns the restored init's host pid, a child of this process.
    pub fn restore(&self, id: &str, opts: &RestoreOptions) -> Result<i32> {
        StateDir::create_with(self.root(), id, |dir| self.restore_in(dir, opts))
    }

    fn restore_in(&self, dir: &StateDir, opts: &RestoreOptions) -> Result<i32> {
        // An eager restore from the store goes through the lazy-pages server too: CRIU restores
        // the tree stopped, the server copies every page in from the store (large copies,
        // no pages-*.img written and read back), then the tree resumes. The process never runs
        // before all its memory is in, as with a classic eager restore.
        let fill_then_resume = !opts.lazy && opts.snapshot.is_some();
        let asked = opts;
        let effective = RestoreOptions {
            lazy: opts.lazy || fill_then_resume,
            ..opts.clone()
        };
        let mut opts = &effective;
        let id = dir.id().to_string();
        let started = std::time::Instant::now();
        let phase = |what: &str| {
            tracing::debug!(
                at_ms = started.elapsed().as_secs_f64() * 1e3,
                "restore: {what}"
            );
        };
        let (bundle, spec, rootfs) = crate::container::open_bundle(&opts.bundle)?;
        let cgroup = crate::container::spec_cgroup(&spec, &id)?;
        // A snapshot from the store is written out as CRIU images in the state directory
        // (tmpfs under /run), every chunk verified before any process is created; the
        // reader's lease pins the snapshot against `gc` meanwhile. The lazy-pages server
        // starts first and opens the snapshot while the images are written.
        let mut starting = None;
        let (_materialized, images_path) = match &opts.snapshot {
            Some(reference) => {
                let store = open_store(opts.store.as_deref())?;
                let snapshot_err =
                    |e: cryo_snapshot::Error| Error::Other(format!("snapshot {reference}: {e}"));
                // Resolved once, so that the server and this process open the same snapshot,
                // and pinned until the restore is over: gc cannot remove it before the
                // server's own reader pins it. The server starts first and reads its
                // manifest and packs while this process reads them too, on the other core.
                let pin = store.pin(reference).map_err(snapshot_err)?;
                let snapshot = pin.id().to_string();
                let path = absolute(&dir.path().join("images"))?;
                mkdir_0700(&path)?;
                let guard = RemoveDir(path.clone());
                if opts.lazy {
                    let work_dir = opts.work_path.clone().unwrap_or_else(|| path.clone());
                    starting = Some(self.spawn_lazy_daemon(
                        store.root(),
                        &snapshot,
                        &absolute(&work_dir.join("lazy-pages.socket"))?,
                        &absolute(dir.path())?,
                        cgroup.as_ref(),
                    )?);
                    phase("lazy-pages server started");
                }
                let reader = store.reader(&snapshot).map_err(snapshot_err)?;
                phase("snapshot opened");
                let t0 = std::time::Instant::now();
                let m = if opts.lazy {
                    materialize_lazy(&reader, &path)
                } else {
                    materialize(&reader, &path)
                }
                .map_err(|e| Error::Other(format!("snapshot {reference}: {e}")))?;
                tracing::debug!(
                    ms = t0.elapsed().as_secs_f64() * 1e3,
                    page_bytes = m.page_bytes,
                    lazy_bytes = m.lazy_bytes,
                    "materialized the images"
                );
                (Some((guard, pin)), path)
            }
            None => {
                let path = image_dir(&opts.image_path)?;
                (None, path)
            }
        };
        let meta_path = images_path.join(META_FILE);
        let meta: ImageMeta = match fs::read(&meta_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Spec {
                path: meta_path.clone(),
                field: "(root)".into(),
                msg: e.to_string(),
            })?,
            Err(e) => {
                return Err(Error::Other(format!(
                    "{}: {e}: not a checkpoint taken by cryo",
                    meta_path.display()
                )))
            }
        };
        if !(META_VERSION_MIN..=META_VERSION).contains(&meta.version) {
            return Err(Error::Spec {
                path: meta_path,
                field: "version".into(),
                msg: format!(
                    "version {} (this build reads {META_VERSION_MIN} to {META_VERSION})",
                    meta.version
                ),
            });
        }
        if meta.lazy_migration && !asked.lazy {
            return Err(Error::Other(format!(
                "{}: dumped for lazy migration (checkpoint --lazy-pages), without its memory: \
                 restore it with --lazy-pages while `criu lazy-pages --page-server` fetches the \
                 pages from the checkpoint's page server",
                images_path.display()
            )));
        }
        // CUDA processes must get their device memory back before they run: CRIU leaves the
        // tree stopped, and only their restore threads run until it is back.
        let stopped = RestoreOptions {
            leave_stopped: asked.leave_stopped || fill_then_resume || meta.cuda.is_some(),
            ..effective.clone()
        };
        opts = &stopped;
        let resume = opts.leave_stopped && !asked.leave_stopped;
        let cuda_gpus = meta
            .cuda
            .as_ref()
            .map(|c| super::gpu::restore_driver(c, &opts.flags.gpu))
            .transpose()?;
        let criu = Criu::locate(opts.flags.criu.as_deref()).map_err(criu_err)?;
        let images = File::open(&images_path).io_ctx(&images_path)?;
        let work = open_work_dir(opts.work_path.as_deref())?;
        // The lazy-pages server listens in CRIU's work dir before CRIU starts; it outlives
        // this call when the restore succeeds, and is killed when it fails.
        phase("images ready");
        let mut daemon = match (opts.lazy, starting) {
            (false, _) => None,
            // runc's lazy migration: CRIU's own lazy-pages daemon, started by the caller in
            // CRIU's work directory, serves the pages from the checkpoint's page server.
            (true, None) => {
                let socket = opts
                    .work_path
                    .as_deref()
                    .unwrap_or(&images_path)
                    .join("lazy-pages.socket");
                if !socket.exists() {
                    return Err(Error::Other(format!(
                        "restore --lazy-pages: no lazy-pages daemon at {}: restore from the \
                         store with --snapshot, or start `criu lazy-pages --page-server \
                         --address ADDRESS --port PORT` on the images (lazy migration)",
                        socket.display()
                    )));
                }
                None
            }
            (true, Some(s)) => Some(s.listening()?),
        };

        phase("lazy-pages server listening");
        let r = self.restore_with(
            dir,
            opts,
            &criu,
            (&images, &images_path),
            work.as_ref(),
            &meta,
            &spec,
            &bundle,
            &rootfs,
            cgroup.as_ref(),
        );
        // A failing lazy-pages server (a damaged chunk) makes its watcher kill the container,
        // CRIU included when it is still restoring: the server's log says why.
        let r = match (r, daemon.as_mut()) {
            (Err(e), Some(d)) => {
                d.exited_within(std::time::Duration::from_millis(500));
                let log = fs::read_to_string(dir.path().join("lazy-pages.log")).unwrap_or_default();
                let log = log.trim();
                if log.is_empty() {
                    Err(e)
                } else {
                    Err(Error::Other(format!("{e}\nlazy-pages server: {log}")))
                }
            }
            (r, _) => r,
        };
        let r = match (r, daemon.as_mut()) {
            (Ok(pid), Some(d)) if fill_then_resume => {
                let t0 = std::time::Instant::now();
                d.wait_all_in(dir.path()).map(|()| {
                    tracing::debug!(
                        ms = t0.elapsed().as_secs_f64() * 1e3,
                        "every page in; resuming"
                    );
                    pid
                })
            }
            (r, _) => r,
        };
        let r = r.and_then(|pid| {
            if let (Some(cuda), Some(gpus)) = (&meta.cuda, &cuda_gpus) {
                let pids = cgroup.pids().unwrap_or_default();
                super::gpu::restore(gpus, cuda, &pids)?;
            }
            if resume {
                for p in cgroup.pids().unwrap_or_default() {
                    kill(Pid::from_raw(p), Signal::SIGCONT)
                        .sys_ctx(|| format!("resuming restored task {p}"))?;
                }
            }
            Ok(pid)
        });
        if r.is_ok() {
            if let Some(d) = daemon.as_mut() {
                d.keep();
            }
        }
        drop(daemon);
        if r.is_err() {
            for pid in cgroup.pids().unwrap_or_default() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = cgroup.destroy();
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn restore_with(
        &self,
        dir: &StateDir,
        opts: &RestoreOptions,
        criu: &Criu,
        (images, images_path): (&File, &Path),
        work: Option<&File>,
        meta: &ImageMeta,
        spec: &Spec,
        bundle: &Path,
        rootfs: &Path,
        cgroup: &dyn CgroupManager,
    ) -> Result<i32> {
        crate::container::prepare_cgroup(cgroup, spec)?;
        crate::container::record_cgroup(dir, cgroup)?;
        tracing::debug!("restore: cgroups prepared");

        // CRIU wants the root to be a mount point whose parent is not overmounted.
        let root = absolute(&dir.path().join("criu-root"))?;
        mkdir_0700(&root)?;
        mount(
            Some(rootfs),
            &root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .sys_ctx(|| format!("bind {} on {}", rootfs.display(), root.display()))?;
        let _root_guard = RootBind(root.clone());
        let mut masked = Mounted::under(dir.path().join("masked"));
        let mut kept = Mounted::under(dir.path().join("tmpfs"));
        let mut externals = external_mounts(spec, bundle, None, &meta.masked_dirs);
        let t_kept = std::time::Instant::now();
        for k in &meta.kept_tmpfs {
            let src = kept.kept(images_path, k)?;
            externals.push((k.path.clone(), src));
        }
        if !meta.kept_tmpfs.is_empty() {
            tracing::debug!(
                ms = t_kept.elapsed().as_secs_f64() * 1e3,
                mounts = meta.kept_tmpfs.len(),
                "filled the kept tmpfs mounts"
            );
        }
        for (dest, src) in &mut externals {
            if let Some(d) = meta.masked_dirs.iter().find(|d| &d.path == dest) {
                *src = masked.masked(d)?;
            }
            // A path under a mount CRIU restores itself (proc, sysfs, a tmpfs) exists there;
            // the rootfs below that mount needs no mount point.
            if !under_restored_mount(spec, dest) {
                make_mountpoint(&root, dest, Path::new(src))?;
            }
        }

        // The init's stdio: pipes and external files are handed to CRIU (fds 4 and up);
        // an external file is reopened as it was, else the caller's own fd takes its place.
        let mut held: Vec<OwnedFd> = Vec::new();
        let mut inherit = Vec::new();
        for d in &meta.descriptors {
            let Some(key) = d.inherit_key() else { continue };
            let given = match d.fd {
                0 => opts.stdio.stdin.as_ref(),
                1 => opts.stdio.stdout.as_ref(),
                2 => opts.stdio.stderr.as_ref(),
                _ => None,
            };
            if let Some(fd) = given {
                inherit.push(key.to_string());
                held.push(fd.try_clone().io_ctx(&d.path)?);
                continue;
            }
            let fd = match (&d.external, reopen(d)) {
                (Some(_), Some(f)) => f,
                _ => own_stdio(d.fd).ok_or_else(|| {
                    Error::Other(format!(
                        "restoring {}: fd {} of this process is closed",
                        d.path, d.fd
                    ))
                })?,
            };
            inherit.push(key.to_string());
            held.push(fd);
        }
        tracing::debug!("restore: mounts and stdio ready");
        let mut o = base_opts(images, work, "restore.log", &opts.flags);
        if meta.cuda.is_some() {
            o.config_file =
                super::gpu::criu_config(dir.path())?.map(|p| p.to_string_lossy().into_owned());
        }
        if opts.flags.cgroups_mode.is_none() && meta.cgroups_flat && meta.cuda.is_none() {
            o.manage_cgroups_mode = Some(super::CgroupsMode::Ignore.rpc() as i32);
        }
        o.rst_sibling = Some(true);
        o.lazy_pages = Some(opts.lazy);
        o.leave_stopped = Some(opts.leave_stopped);
        o.evasive_devices = Some(true);
        o.root = Some(root.to_string_lossy().into_owned());
        for (dest, src) in externals {
            o.ext_mnt.push(rpc::ExtMountMap {
                key: dest,
                val: src,
            });
        }
        let mut fds: Vec<(i32, BorrowedFd<'_>)> = Vec::new();
        let mut next_target = 4;
        for (key, fd) in inherit.into_iter().zip(&held) {
            o.inherit_fd.push(rpc::InheritFd {
                key,
                fd: next_target,
            });
            fds.push((next_target, fd.as_fd()));
            next_target += 1;
        }
        let stdio: Vec<BorrowedFd<'_>> = if opts.flags.shell_job {
            // SAFETY: fds 0-2 of this process stay open for the whole restore.
            (0..3)
                .map(|fd| unsafe { BorrowedFd::borrow_raw(fd) })
                .collect()
        } else {
            Vec::new()
        };
        fds.extend((0..3).zip(stdio));
        let (netns, ns_fds) = restore_namespaces(spec, images)?;
        o.join_ns.extend(netns);
        for (key, file) in &ns_fds {
            o.inherit_fd.push(rpc::InheritFd {
                key: key.clone(),
                fd: next_target,
            });
            fds.push((next_target, file.as_fd()));
            next_target += 1;
        }

        // CRIU may load its kernel-feature cache in a private mount namespace only for a
        // container in a mount namespace of its own, and with its images and work dir named
        // by path (see `SpawnOptions::kdat_cache`).
        let kdat_cache = has_mount_ns(spec) && work.is_none();
        if kdat_cache {
            o.images_dir_fd = -1;
            o.images_dir = Some(images_path.to_string_lossy().into_owned());
        }
        let session = criu
            .session_with(&SpawnOptions {
                fds,
                join_cgroups: cgroup.join_files(),
                kdat_cache,
            })
            .map_err(criu_err)?;
        tracing::debug!("restore: criu started");
        o.cg_root = cgroup_roots(session.pid())?;
        // CRIU runs in the container's cgroups already: its view is the restored tree's.
        for (dest, src) in cgroup_binds(spec, session.pid())? {
            o.ext_mnt.push(rpc::ExtMountMap {
                key: dest,
                val: src,
            });
        }

        let created = chrono::Utc::now();
        let mk_state = |pid: i32| ContainerState {
            id: dir.id().to_string(),
            pid,
            pid_start: state::proc_stat(pid).map(|s| s.start_time).unwrap_or(0),
            bundle: bundle.to_path_buf(),
            rootfs: rootfs.to_path_buf(),
            created,
            owner: String::new(),
            annotations: spec.annotations().clone().unwrap_or_default(),
            cgroup: Some(cgroup.state()),
            config: spec.clone(),
        };
        let mut notify = RestoreNotify {
            spec,
            state: &mk_state,
            console_socket: opts.console_socket.as_deref(),
            pid: None,
        };
        let t0 = std::time::Instant::now();
        let pid = criu.restore_in(session, o, &mut notify).map_err(criu_err);
        // The restored binds hold the masked and kept tmpfs mounts now: their sources can go.
        drop(masked);
        drop(kept);
        if meta.cuda.is_some() {
            let _ = fs::remove_file(dir.path().join("criu-gpu.conf"));
            let _ = fs::remove_dir_all(dir.path().join("criu-plugins"));
        }
        let pid = pid?;
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, pid, "criu restore");
        drop(held);
        let st = mk_state(pid);
        let r = dir.save(&st).and_then(|()| match &opts.pid_file {
            Some(p) => crate::container::write_pid_file(p, pid),
            None => Ok(()),
        });
        if let Err(e) = r {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            return Err(e);
        }
        Ok(pid)
    }
}

/// A duplicate of this process's own fd `fd` (0–2).
fn own_stdio(fd: i32) -> Option<OwnedFd> {
    // SAFETY: 0-2 are open for the life of the process (the CLI's stdio); only borrowed here.
    unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .ok()
}

/// Reopens an external stdio file as the init had it open (never creating or truncating).
fn reopen(d: &Descriptor) -> Option<OwnedFd> {
    if !d.path.starts_with('/') {
        return None;
    }
    let acc = d.flags & libc::O_ACCMODE;
    let mut o = OpenOptions::new();
    o.read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
        .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
        .custom_flags(d.flags & libc::O_APPEND);
    if d.flags & libc::O_APPEND != 0 {
        o.append(true);
    }
    o.open(&d.path).ok().map(OwnedFd::from)
}

/// Creates the mount point of an external mount in the restore root if it is missing, as a
/// directory or a file like its source.
fn make_mountpoint(root: &Path, dest: &str, src: &Path) -> Result<()> {
    let target = crate::rootfs::path::secure_join(root, Path::new(dest))?;
    if target.symlink_metadata().is_ok() {
        return Ok(());
    }
    if fs::metadata(src).is_ok_and(|m| m.is_dir()) {
        fs::create_dir_all(&target).io_ctx(&target)
    } else {
        if let Some(p) = target.parent() {
            fs::create_dir_all(p).io_ctx(p)?;
        }
        File::create(&target).io_ctx(&target).map(drop)
    }
}

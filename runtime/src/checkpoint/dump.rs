//! `checkpoint`: the dump into a staging directory, published at CRIU's post-dump (by rename
//! to `--image-path`, or by ingest into the snapshot store) while the tree is still frozen.
//! The container's CUDA processes are checkpointed by the driver first ([`super::gpu`]) and put
//! back after a dump that leaves the container running or fails.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cryo_snapshot::criu::{
    commit_received, rpc, Criu, Notification, Notify, PageServer, SpawnOptions,
};
use cryo_snapshot::WriterOptions;

use crate::cgroups::{self};
use crate::error::{Error, IoContext, Result};
use crate::state::{ContainerState, Status};
use crate::Runtime;

use super::externals::{
    cgroup_binds, describe_stdio, external_mounts, external_namespaces, masked_dirs,
};
use super::gpu::{self, CudaImage};
use super::tmpfs;
use super::{
    absolute, base_opts, criu_err, image_dir, mkdir_0700, open_store, open_work_dir, write_json,
    CheckpointOptions, ImageMeta, MaskedDir, DESCRIPTORS_FILE, META_FILE, META_VERSION,
    META_VERSION_KEPT_TMPFS, META_VERSION_MIN,
};

/// Moves `staging` to `target`, replacing an older image there only now that the new one is
/// complete.
fn publish(staging: &Path, target: &Path) -> Result<()> {
    match fs::rename(staging, target) {
        Ok(()) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
            let old = target.with_file_name(format!(
                ".{}.cryo-old-{}",
                target.file_name().unwrap_or_default().to_string_lossy(),
                std::process::id()
            ));
            fs::rename(target, &old).io_ctx(target)?;
            if let Err(e) = fs::rename(staging, target) {
                let _ = fs::rename(&old, target);
                return Err(Error::io(target, e));
            }
            let _ = fs::remove_dir_all(&old);
        }
        Err(e) => return Err(Error::io(target, e)),
    }
    if let Some(parent) = target.parent() {
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Publishes the images at CRIU's `post-dump` notification: the tree is still frozen then, so
/// a failure to publish makes CRIU thaw it and report the dump failed (the container keeps
/// running), and a success lets CRIU kill it (or resume it with `leave_running`).
/// Also passes CRIU's `status-ready` (its lazy-migration page server listens) on to the
/// caller's status fd, as runc's `--status-fd`.
struct PublishAtPostDump<'a> {
    publish: &'a mut dyn FnMut() -> Result<()>,
    published: bool,
    error: Option<Error>,
    status_fd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

impl Notify for PublishAtPostDump<'_> {
    fn notify(&mut self, n: Notification<'_>) -> std::result::Result<(), String> {
        if n.script == "status-ready" {
            // CRIU serves the pages even when post-dump failed: refusing here makes it stop
            // and thaw the tree instead of waiting, frozen, for a migration whose images
            // were never published.
            if !self.published {
                return Err("the images were not published: not serving their pages".into());
            }
            if let Some(fd) = self.status_fd.take() {
                nix::unistd::write(fd.as_ref(), &[0u8])
                    .map_err(|e| format!("writing to the status fd: {e}"))?;
            }
            return Ok(());
        }
        if n.script != "post-dump" || self.published {
            return Ok(());
        }
        match (self.publish)() {
            Ok(()) => {
                self.published = true;
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                self.error = Some(e);
                Err(msg)
            }
        }
    }
}

/// The pipe CRIU's lazy page server tees pages through: `PIPE_MAX_SIZE` pages (819), which
/// the kernel rounds up to 1024.
const CRIU_LAZY_PIPE_BYTES: i32 = 4 << 20;

/// Whether CRIU's lazy page server may size its pipe: beyond `fs.pipe-max-size` that needs
/// CAP_SYS_RESOURCE, and CRIU (4.2) does not check that it got it, so each page request would
/// fail (a splice into a descriptor it never opened) after the whole dump. A probe here,
/// with the rights CRIU inherits, before anything is frozen.
fn lazy_page_server_pipes() -> Result<()> {
    let (r, _w) = nix::unistd::pipe().map_err(|e| Error::Other(format!("pipe: {e}")))?;
    let set = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&r),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(CRIU_LAZY_PIPE_BYTES),
    );
    let Err(err) = set else {
        return Ok(());
    };
    let max = fs::read_to_string("/proc/sys/fs/pipe-max-size").unwrap_or_default();
    Err(Error::Other(format!(
        "checkpoint --lazy-pages: CRIU's lazy page server needs pipes of \
         {CRIU_LAZY_PIPE_BYTES} bytes, which this process may not make ({err}; \
         fs.pipe-max-size is {}, and beyond it CAP_SYS_RESOURCE is needed): every page \
         request would fail. Raise /proc/sys/fs/pipe-max-size to {CRIU_LAZY_PIPE_BYTES}",
        max.trim()
    )))
}

/// Where a store checkpoint's staging directory goes when the state directory is not on a
/// tmpfs.
const SHM_STAGING: &str = "/dev/shm/cryo";

/// The staging directory in /dev/shm of the container whose state directory is `state_dir`:
/// named by the id and a digest of the state directory's path, so that containers of one id
/// under two roots (two containerd namespaces) never share one.
fn shm_staging(state_dir: &Path, id: &str) -> std::path::PathBuf {
    // The path as the kernel resolves it: /var/run/cryo and /run/cryo are one directory.
    let state_dir = fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let digest = cryo_snapshot::ChunkDigest::of(state_dir.as_os_str().as_encoded_bytes());
    Path::new(SHM_STAGING).join(format!("{id}-{}.dump", &digest.hex()[..12]))
}

/// Why `dir` is not a directory only this user can enter: /dev/shm is writable by everyone,
/// and whoever made /dev/shm/cryo could swap the images a checkpoint stages there.
fn not_private(dir: &Path) -> Option<String> {
    let m = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) => return Some(e.to_string()),
    };
    let me = nix::unistd::geteuid().as_raw();
    if !m.file_type().is_dir() {
        Some("not a directory".into())
    } else if m.uid() != me {
        Some(format!("owned by uid {}, not {me}", m.uid()))
    } else if m.mode() & 0o077 != 0 {
        Some(format!("mode {:o} lets others in", m.mode() & 0o7777))
    } else {
        None
    }
}

/// Whether `p` is on a tmpfs.
fn on_tmpfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Where CRIU's raw images wait for ingest: `dump` in the state directory when that is on a
/// tmpfs, else a private directory in /dev/shm ([`shm_staging`]).
fn staging_dir(state_dir: &Path, id: &str) -> Result<std::path::PathBuf> {
    let state_dir = absolute(state_dir)?;
    if on_tmpfs(&state_dir) || !on_tmpfs(Path::new("/dev/shm")) {
        return Ok(state_dir.join("dump"));
    }
    mkdir_0700(Path::new(SHM_STAGING))?;
    if let Some(why) = not_private(Path::new(SHM_STAGING)) {
        tracing::warn!("{SHM_STAGING}: {why}; staging in the state directory instead");
        return Ok(state_dir.join("dump"));
    }
    Ok(shm_staging(&state_dir, id))
}

/// Removes what a checkpoint killed mid-dump left in /dev/shm for the container whose state
/// directory is `state_dir` (one in the state directory goes with it). The caller holds the
/// container's lock, so no checkpoint of it is running.
pub(crate) fn remove_shm_staging(state_dir: &Path, id: &str) {
    if let Ok(state_dir) = absolute(state_dir) {
        let path = shm_staging(&state_dir, id);
        match fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::debug!(path = %path.display(), "removed a killed checkpoint's images")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("{}: {e}", path.display()),
        }
    }
}

/// What a checkpoint produced.
#[derive(Debug, Clone, Default)]
pub struct CheckpointReport {
    /// The snapshot written into the store (with `CheckpointOptions::snapshot`).
    pub snapshot: Option<cryo_snapshot::SnapshotId>,
    /// What the store wrote (zero pages, new chunks, stored bytes).
    pub stats: Option<cryo_snapshot::WriteStats>,
    /// Bytes of memory pages CRIU dumped.
    pub page_bytes: u64,
}

impl Runtime {
    /// `checkpoint`: dumps the container's process tree into `opts.image_path`, or into the
    /// snapshot store under `opts.snapshot`. Without `leave_running` the container is gone
    /// afterwards (as with runc); on failure it keeps running, and an older image at the path
    /// or an older snapshot of the name is untouched.
    pub fn checkpoint(&self, id: &str, opts: &CheckpointOptions) -> Result<CheckpointReport> {
        // The state directory stays locked for the whole checkpoint: no concurrent delete.
        let (dir, st, status) = self.load(id)?;
        if !matches!(status, Status::Running | Status::Paused) {
            return Err(Error::BadStatus {
                op: "checkpoint",
                id: id.into(),
                status: status.to_string(),
                hint: ": only a running or paused container can be checkpointed",
            });
        }
        if opts.snapshot.is_some() && (opts.lazy_pages || opts.page_server.is_some()) {
            return Err(Error::Other(
                "checkpoint: --lazy-pages and --page-server send the memory to another CRIU; \
                 a snapshot keeps it in the store (restore it with --lazy-pages --snapshot)"
                    .into(),
            ));
        }
        if opts.lazy_pages && opts.page_server.is_none() {
            return Err(Error::Other(
                "checkpoint --lazy-pages needs --page-server ADDRESS:PORT: the port the \
                 restoring side's `criu lazy-pages --page-server` connects to"
                    .into(),
            ));
        }
        if opts.lazy_pages {
            lazy_page_server_pipes()?;
        }
        let criu = Criu::locate(opts.flags.criu.as_deref()).map_err(criu_err)?;
        let mut report = CheckpointReport::default();
        // A store checkpoint takes CRIU's pages through a page server, straight into the
        // store writer while CRIU dumps; the server's socket end for CRIU is duplicated here
        // until CRIU has it.
        let server: std::cell::RefCell<Option<PageServer>> = std::cell::RefCell::new(None);
        let mut ps_fd: Option<std::os::fd::OwnedFd> = None;
        let server_ref = &server;
        let (staging, mut publish): (_, Box<dyn FnMut() -> Result<()>>) = match &opts.snapshot {
            Some(name) => {
                let store = open_store(opts.store.as_deref())?;
                // CRIU's other images go to a tmpfs and leave it in the store. Never on the
                // store's disk: the store's commit syncs, which would write them out first.
                let staging = staging_dir(dir.path(), &st.id)?;
                let writer = store
                    .writer_with(WriterOptions {
                        codec: opts.compression,
                        ..WriterOptions::default()
                    })
                    .map_err(|e| Error::Other(format!("snapshot {name}: {e}")))?;
                let ps = PageServer::start(writer, criu.version().wide_page_server_header())
                    .map_err(|e| Error::Other(format!("snapshot {name}: {e}")))?;
                ps_fd = Some(
                    ps.criu_fd()
                        .try_clone_to_owned()
                        .map_err(|e| Error::Other(format!("page server socket: {e}")))?,
                );
                *server.borrow_mut() = Some(ps);
                let name = name.clone();
                let report = &mut report;
                let s2 = staging.clone();
                (
                    staging,
                    Box::new(move || {
                        let t0 = std::time::Instant::now();
                        let ps = server_ref.borrow_mut().take().ok_or_else(|| {
                            Error::Other(format!("snapshot {name}: published twice"))
                        })?;
                        let r = ps
                            .finish()
                            .and_then(|received| commit_received(received, &s2, Some(&name)))
                            .map_err(|e| Error::Other(format!("snapshot {name}: {e}")))?;
                        tracing::debug!(
                            ms = t0.elapsed().as_secs_f64() * 1e3,
                            page_bytes = r.page_bytes,
                            new_stored = r.stats.new_stored_bytes,
                            "committed the dump into the store"
                        );
                        report.snapshot = Some(r.id);
                        report.stats = Some(r.stats);
                        report.page_bytes = r.page_bytes;
                        let _ = fs::remove_dir_all(&s2);
                        Ok(())
                    }),
                )
            }
            None => {
                let target = image_dir(&opts.image_path)?;
                let parent = target.parent().ok_or_else(|| {
                    Error::Other(format!("--image-path {}: no parent", target.display()))
                })?;
                fs::create_dir_all(parent).io_ctx(parent)?;
                let staging = parent.join(format!(
                    ".{}.cryo-tmp-{}",
                    target.file_name().unwrap_or_default().to_string_lossy(),
                    std::process::id()
                ));
                let s2 = staging.clone();
                (staging, Box::new(move || publish(&s2, &target)))
            }
        };
        let _ = fs::remove_dir_all(&staging);
        mkdir_0700(&staging)?;
        // The spec's tmpfs mounts whose content cryo writes itself, while CRIU has the tree
        // frozen, right before the images are published (see `tmpfs`).
        let kept = masked_dirs(&st.config, st.pid).and_then(|masked| {
            let paths: Vec<String> = masked.iter().map(|d| d.path.clone()).collect();
            tmpfs::kept(&st.config, st.pid, &paths).map(|k| (masked, k))
        });
        let (masked, kept) = match kept {
            Ok(x) => x,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        // The device memory of the CUDA processes moves into their host memory, which CRIU
        // then dumps like any other; from here on, every way out puts them back.
        let cuda = match gpu::checkpoint(
            &container_pids(&st),
            status == Status::Paused,
            &opts.flags.gpu,
        ) {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let config = match &cuda {
            Some(_) => gpu::criu_config(dir.path()),
            None => Ok(None),
        };
        let (pid, kept_ref, staging_ref) = (st.pid, &kept, &staging);
        let mut save_then_publish = || -> Result<()> {
            let t0 = std::time::Instant::now();
            tmpfs::save_all(pid, kept_ref, staging_ref)?;
            tracing::debug!(
                ms = t0.elapsed().as_secs_f64() * 1e3,
                mounts = kept_ref.len(),
                "kept the tmpfs mounts"
            );
            publish()
        };
        let mut notify = PublishAtPostDump {
            publish: &mut save_then_publish,
            published: false,
            error: None,
            status_fd: opts.status_fd.clone(),
        };
        let t0 = std::time::Instant::now();
        let r = config.and_then(|config| {
            let image = cuda.as_ref().map(|c| c.image.clone());
            let ps = ps_fd.as_ref().map(std::os::fd::AsFd::as_fd);
            let mounts = (masked, kept.clone());
            self.dump_into(
                &criu,
                &st,
                &staging,
                opts,
                image,
                config,
                ps,
                mounts,
                &mut notify,
            )
        });
        // CRIU has its own copy (or is gone); a transfer that never finished ends with ours.
        drop(ps_fd);
        tracing::debug!(
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "criu dump (publish included)"
        );
        let r = match (r, notify.error.take()) {
            (_, Some(e)) => Err(e),
            // Without the post-dump notification the tree is no longer frozen: its tmpfs
            // content would not match the dump.
            (Ok(()), None) if !notify.published && !kept.is_empty() => Err(Error::Other(
                "CRIU did not send post-dump: the container's tmpfs mounts could not be kept"
                    .into(),
            )),
            (Ok(()), None) if !notify.published => (notify.publish)(),
            (r, None) => r,
        };
        drop(publish);
        if let Some(ps) = server.borrow_mut().take() {
            // The dump failed before its post-dump notification: stop the page server.
            let _ = ps.finish();
        }
        if cuda.is_some() {
            let _ = fs::remove_file(dir.path().join("criu-gpu.conf"));
            let _ = fs::remove_dir_all(dir.path().join("criu-plugins"));
        }
        // After a dump that failed (CRIU thawed the tree) or leaves it running, the CUDA
        // processes get their device memory back and run on.
        let r = match (&cuda, r) {
            (Some(c), Err(e)) => Err(match c.put_back() {
                Ok(()) => e,
                Err(p) => Error::Other(format!("{e}; and then: {p}")),
            }),
            (Some(c), Ok(())) if opts.leave_running => c
                .put_back()
                .map_err(|p| Error::Other(format!("the checkpoint is written, but {p}"))),
            (_, r) => r,
        };
        if let Err(e) = r {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        if !opts.leave_running {
            let status = self.status_of(&dir, &st);
            self.delete_loaded(dir, &st, status, true)?;
        }
        Ok(report)
    }

    #[allow(clippy::too_many_arguments)]
    fn dump_into(
        &self,
        criu: &Criu,
        st: &ContainerState,
        staging: &Path,
        opts: &CheckpointOptions,
        cuda: Option<CudaImage>,
        config_file: Option<std::path::PathBuf>,
        page_server: Option<std::os::fd::BorrowedFd<'_>>,
        (masked_dirs, kept_tmpfs): (Vec<MaskedDir>, Vec<tmpfs::KeptTmpfs>),
        notify: &mut dyn Notify,
    ) -> Result<()> {
        let descriptors = describe_stdio(st.pid)?;
        // The restore of CUDA processes moves their threads through CRIU's cgroup yard, which
        // CRIU's ignore mode does not build: those keep soft mode.
        let flat = cuda.is_none()
            && cgroups_flat(&container_pids(st), |text| {
                st.cgroup
                    .as_ref()
                    .is_some_and(|cg| in_own_cgroups(text, cg))
            });
        // The oldest version that says all of it: readers that do not know a field must not
        // restore images that depend on it.
        let meta = ImageMeta {
            version: if opts.lazy_pages {
                META_VERSION
            } else if kept_tmpfs.is_empty() {
                META_VERSION_MIN
            } else {
                META_VERSION_KEPT_TMPFS
            },
            id: st.id.clone(),
            criu: criu.version().to_string(),
            descriptors,
            cuda,
            masked_dirs,
            kept_tmpfs,
            cgroups_flat: flat,
            lazy_migration: opts.lazy_pages,
        };
        write_json(&staging.join(META_FILE), &meta)?;
        let paths: Vec<&str> = meta.descriptors.iter().map(|d| d.path.as_str()).collect();
        write_json(&staging.join(DESCRIPTORS_FILE), &paths)?;

        let images = File::open(staging).io_ctx(staging)?;
        let work = open_work_dir(opts.work_path.as_deref())?;
        let mut o = base_opts(&images, work.as_ref(), "dump.log", &opts.flags);
        o.pid = Some(st.pid);
        o.root = Some(st.rootfs.to_string_lossy().into_owned());
        o.leave_running = Some(opts.leave_running);
        o.config_file = config_file.map(|p| p.to_string_lossy().into_owned());
        if let Some(cg) = &st.cgroup {
            let freezer = cg
                .paths
                .get("freezer")
                .or_else(|| cg.paths.get(cgroups::UNIFIED));
            o.freeze_cgroup = freezer.map(|p| p.to_string_lossy().into_owned());
        }
        let mut externals =
            external_mounts(&st.config, &st.bundle, Some(st.pid), &meta.masked_dirs);
        externals.extend(cgroup_binds(&st.config, st.pid)?);
        externals.extend(
            meta.kept_tmpfs
                .iter()
                .map(|k| (k.path.clone(), String::new())),
        );
        for (dest, _) in externals {
            o.ext_mnt.push(rpc::ExtMountMap {
                key: dest.clone(),
                val: dest,
            });
        }
        o.external.extend(external_namespaces(&st.config, st.pid)?);
        o.external
            .extend(meta.descriptors.iter().filter_map(|d| d.external.clone()));
        // CRIU may load its kernel-feature cache in a private mount namespace only for a
        // container in a mount namespace of its own, and with its images and work dir named
        // by path (see `SpawnOptions::kdat_cache`).
        let ns = |pid: &str| fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| m.ino());
        let own_mntns = matches!((ns("self"), ns(&st.pid.to_string())), (Ok(a), Ok(b)) if a != b);
        let kdat_cache = own_mntns && work.is_none();
        if kdat_cache {
            o.images_dir_fd = -1;
            o.images_dir = Some(staging.to_string_lossy().into_owned());
        }
        // The page server's socket is CRIU's fd 4 (`ps.fd`: CRIU takes it as its own fd).
        const PS_FD: i32 = 4;
        if page_server.is_some() {
            o.ps = Some(rpc::CriuPageServerInfo {
                fd: Some(PS_FD),
                ..Default::default()
            });
        } else if let Some(ps) = &opts.page_server {
            // Migration: CRIU connects to a page server there, or with lazy pages listens
            // on its port itself.
            o.lazy_pages = Some(opts.lazy_pages);
            o.ps = Some(rpc::CriuPageServerInfo {
                address: Some(ps.address.clone()),
                port: Some(i32::from(ps.port)),
                ..Default::default()
            });
        }
        let session = criu
            .session_with(&SpawnOptions {
                kdat_cache,
                fds: page_server.map(|fd| (PS_FD, fd)).into_iter().collect(),
                ..Default::default()
            })
            .map_err(criu_err)?;
        criu.dump_in(session, o, notify).map_err(criu_err)?;
        Ok(())
    }
}

/// Whether every thread of the processes `pids` is in the same cgroups (their
/// /proc/PID/task/TID/cgroup say the same; a process or thread gone meanwhile is left out)
/// and those are the container's own (`own` of that text). Read before the dump: a thread
/// that moves to another cgroup between this and the freeze is restored into the container's
/// cgroups.
fn cgroups_flat(pids: &[i32], own: impl Fn(&str) -> bool) -> bool {
    let mut seen: Option<String> = None;
    for p in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(text) = fs::read_to_string(t.path().join("cgroup")) else {
                continue;
            };
            match &seen {
                Some(s) if *s != text => return false,
                Some(_) => {}
                None => seen = Some(text),
            }
        }
    }
    seen.is_some_and(|t| own(&t))
}

/// Whether the /proc/PID/cgroup `text` puts the process in the container's own cgroup of
/// every hierarchy cryo made one in (`cg`), not in one nested below it. Unsure is no.
fn in_own_cgroups(text: &str, cg: &cgroups::CgroupState) -> bool {
    cg.paths.iter().all(|(key, dir)| {
        let Some(rel) = cg
            .mounts
            .get(key)
            .and_then(|m| dir.strip_prefix(m).ok())
            .map(|r| format!("/{}", r.to_string_lossy()))
        else {
            return false;
        };
        text.lines().any(|l| {
            let mut f = l.splitn(3, ':');
            let (Some(_), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else {
                return false;
            };
            let hierarchy = match cg.mode {
                cgroups::Mode::V2 => ctrl.is_empty(),
                cgroups::Mode::V1 => ctrl.split(',').any(|c| c == key),
            };
            hierarchy && path == rel
        })
    })
}

/// Every process of the container: its cgroup's, else the init's tree.
fn container_pids(st: &ContainerState) -> Vec<i32> {
    let from_cgroup = st
        .cgroup
        .as_ref()
        .and_then(|cg| cgroups::from_state(cg).ok())
        .and_then(|m| m.pids().ok())
        .filter(|p| !p.is_empty());
    from_cgroup.unwrap_or_else(|| {
        cryo_snapshot::gpu::discover::process_tree(st.pid).unwrap_or_else(|_| vec![st.pid])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_staging_parent_others_can_enter_or_a_link_is_not_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mine = d.path().join("mine");
        mkdir_0700(&mine).unwrap();
        assert_eq!(not_private(&mine), None);
        fs::set_permissions(&mine, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(not_private(&mine).unwrap().contains("755"));
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&mine, &link).unwrap();
        assert_eq!(not_private(&link).as_deref(), Some("not a directory"));
        assert!(not_private(&d.path().join("none")).is_some());
    }

    #[test]
    fn staging_in_dev_shm_is_per_root_and_removed_with_the_container() {
        let roots = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        if on_tmpfs(roots[0].path()) || !on_tmpfs(Path::new("/dev/shm")) {
            println!("skipped: the temp directory is a tmpfs or /dev/shm is not: staging stays in the state directory");
            return;
        }
        let id = format!("stage-{}", std::process::id());
        let dirs: Vec<PathBuf> = roots.iter().map(|r| r.path().join(&id)).collect();
        for d in &dirs {
            fs::create_dir(d).unwrap();
        }
        let staged: Vec<PathBuf> = dirs.iter().map(|d| staging_dir(d, &id).unwrap()).collect();
        if let Some(why) = not_private(Path::new(SHM_STAGING)) {
            println!("skipped: {SHM_STAGING} is {why}: staging stays in the state directory");
            assert!(
                staged.iter().zip(&dirs).all(|(s, d)| s.starts_with(d)),
                "{staged:?}"
            );
            return;
        }
        assert!(
            staged.iter().all(|s| s.starts_with(SHM_STAGING)),
            "{staged:?}"
        );
        assert_ne!(
            staged[0], staged[1],
            "one id under two roots shares a staging directory"
        );
        for s in &staged {
            mkdir_0700(s).unwrap();
            fs::write(s.join("pages-1.img"), b"left by a killed checkpoint").unwrap();
        }
        remove_shm_staging(&dirs[0], &id);
        assert!(!staged[0].exists());
        assert!(
            staged[1].exists(),
            "the other root's container lost its staging"
        );
        remove_shm_staging(&dirs[1], &id);
        assert!(!staged[1].exists());
        // Nothing there is not an error.
        remove_shm_staging(&dirs[1], &id);
    }

    #[test]
    fn processes_of_one_cgroup_set_are_flat_and_gone_ones_are_left_out() {
        // Two single-threaded children of this process: other tests running in this one may
        // move their threads between cgroups meanwhile.
        let spawn = || {
            std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap()
        };
        let (mut a, mut b) = (spawn(), spawn());
        let (pa, pb) = (
            i32::try_from(a.id()).unwrap(),
            i32::try_from(b.id()).unwrap(),
        );
        let yes = |_: &str| true;
        assert!(
            cgroups_flat(&[pa, pb], yes),
            "siblings share their parent's cgroups"
        );
        assert!(
            cgroups_flat(&[pa, i32::MAX], yes),
            "a process gone is left out"
        );
        assert!(!cgroups_flat(&[], yes), "no process: nothing known");
        assert!(!cgroups_flat(&[i32::MAX], yes));
        assert!(
            !cgroups_flat(&[pa, pb], |_| false),
            "not the container's own"
        );
        for c in [&mut a, &mut b] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    #[test]
    fn only_the_containers_own_cgroups_count_as_its_own() {
        let mut cg = cgroups::CgroupState {
            mode: cgroups::Mode::V1,
            mounts: Default::default(),
            paths: Default::default(),
        };
        for (k, m) in [("memory", "memory"), ("cpu", "cpu,cpuacct")] {
            let m = Path::new("/sys/fs/cgroup").join(m);
            cg.paths.insert(k.into(), m.join("cryo/c1"));
            cg.mounts.insert(k.into(), m);
        }
        let own = "12:memory:/cryo/c1\n3:cpu,cpuacct:/cryo/c1\n1:name=systemd:/\n0::/\n";
        assert!(in_own_cgroups(own, &cg));
        let nested = "12:memory:/cryo/c1/init\n3:cpu,cpuacct:/cryo/c1\n0::/\n";
        assert!(!in_own_cgroups(nested, &cg));
        assert!(!in_own_cgroups("0::/\n", &cg), "a hierarchy missing");
        let v2 = cgroups::CgroupState {
            mode: cgroups::Mode::V2,
            mounts: [("unified".into(), "/sys/fs/cgroup".into())].into(),
            paths: [("unified".into(), "/sys/fs/cgroup/cryo/c1".into())].into(),
        };
        assert!(in_own_cgroups("0::/cryo/c1\n", &v2));
        assert!(!in_own_cgroups("0::/cryo/c1/leaf\n", &v2));
    }

    #[test]
    fn publish_replaces_an_old_image_only_when_the_new_one_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("img");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("old"), b"1").unwrap();
        let staging = dir.path().join(".img.tmp");
        fs::create_dir(&staging).unwrap();
        fs::write(staging.join("new"), b"2").unwrap();
        publish(&staging, &target).unwrap();
        assert!(target.join("new").exists());
        assert!(!target.join("old").exists());
        assert!(!staging.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no debris");
    }
}

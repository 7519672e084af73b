//! The subcommands: runc's set, same flags, same output, same exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use cryo_runtime::{CreateOptions, Runtime};
use nix::sys::signal::Signal;

use crate::Cli;

mod run;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a container (its process waits for `start`).
    Create {
        /// Container id.
        id: String,
        #[command(flatten)]
        opts: CreateArgs,
    },
    /// Start a created container.
    Start {
        /// Container id.
        id: String,
    },
    /// Print a container's state as JSON.
    State {
        /// Container id.
        id: String,
    },
    /// Send a signal to a container's init (default SIGTERM).
    Kill {
        /// Container id.
        id: String,
        /// Signal name or number.
        signal: Option<String>,
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
    },
    /// Delete a container.
    Delete {
        /// Container id.
        id: String,
        /// Kill it first if it runs.
        #[arg(short, long)]
        force: bool,
    },
    /// Create and start a container, wait for it (unless --detach) and delete it.
    Run {
        /// Container id.
        id: String,
        #[command(flatten)]
        opts: CreateArgs,
        /// Do not wait for the container.
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Run a process in a running container.
    Exec(run::ExecArgs),
    /// List the processes of a container.
    Ps {
        /// Container id.
        id: String,
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Arguments for ps(1) (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of a container.
    Pause {
        /// Container id.
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        /// Container id.
        id: String,
    },
    /// List containers.
    List {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Ids only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a default config.json.
    Spec {
        /// Bundle directory.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// A spec for a rootless container.
        #[arg(long)]
        rootless: bool,
        /// NVIDIA GPUs for the container: "all", or the first N. Adds the device nodes and
        /// binds the host's driver libraries and utilities read-only.
        #[arg(long)]
        gpus: Option<crate::gpus::Gpus>,
    },
    /// Print what this runtime supports (JSON).
    Features,
    /// Manage the snapshot store: ls, inspect, verify, rm, gc.
    Snapshot {
        /// Store directory (default: $CRYO_STORE, else /var/lib/cryo/store).
        #[arg(long)]
        store: Option<PathBuf>,
        #[command(subcommand)]
        command: crate::snapshot_cli::SnapshotCommand,
    },
    /// Update resource limits of a container.
    Update {
        /// Container id.
        id: String,
        /// A JSON file of linux.resources ("-" for stdin).
        #[arg(short = 'r', long)]
        resources: Option<PathBuf>,
        /// Memory limit in bytes.
        #[arg(long)]
        memory: Option<i64>,
        /// CPU shares.
        #[arg(long = "cpu-shares")]
        cpu_shares: Option<u64>,
        /// CFS quota in microseconds.
        #[arg(long = "cpu-quota")]
        cpu_quota: Option<i64>,
        /// CFS period in microseconds.
        #[arg(long = "cpu-period")]
        cpu_period: Option<u64>,
        /// CPUs allowed.
        #[arg(long = "cpuset-cpus")]
        cpuset_cpus: Option<String>,
        /// Memory nodes allowed.
        #[arg(long = "cpuset-mems")]
        cpuset_mems: Option<String>,
        /// Maximum number of pids.
        #[arg(long = "pids-limit")]
        pids_limit: Option<i64>,
    },
    /// Print container statistics (cgroup counters) as JSON events.
    Events {
        /// Container id.
        id: String,
        /// Print one stats event and exit.
        #[arg(long)]
        stats: bool,
        /// Interval between stats events.
        #[arg(long, default_value = "5s")]
        interval: String,
    },
    /// Checkpoint a running container with CRIU (runc's flags).
    Checkpoint {
        /// Container id.
        id: String,
        #[command(flatten)]
        images: ImageArgs,
        /// Leave the container running after the checkpoint.
        #[arg(long = "leave-running")]
        leave_running: bool,
        /// Lazy migration, as runc's: the memory stays in the frozen container and CRIU
        /// serves it on --page-server's port to the restoring side's `criu lazy-pages
        /// --page-server`; the checkpoint ends, and the container is gone, once every page is
        /// fetched. (cryo's own lazy restore needs none of this: `restore --lazy-pages
        /// --snapshot`.)
        #[arg(
            long = "lazy-pages",
            requires = "page_server",
            conflicts_with = "snapshot"
        )]
        lazy_pages: bool,
        /// ADDRESS:PORT of a `criu page-server` that receives the memory pages instead of the
        /// image directory; with --lazy-pages, the port CRIU listens on.
        #[arg(
            long = "page-server",
            value_name = "ADDRESS:PORT",
            conflicts_with = "snapshot"
        )]
        page_server: Option<cryo_runtime::PageServerAddr>,
        /// A descriptor that gets one zero byte once the --lazy-pages page server listens.
        #[arg(long = "status-fd", value_name = "FD")]
        status_fd: Option<i32>,
        /// Accepted for runc compatibility; pre-dumps need soft-dirty tracking.
        #[arg(long = "pre-dump")]
        pre_dump: bool,
        /// With --snapshot: how new chunks are compressed, zstdN (1-22), lz4 or none. The
        /// container stays frozen meanwhile: lz4 or none checkpoint faster, and `cryo snapshot
        /// compact` shrinks the snapshot afterwards.
        #[arg(
            long,
            value_name = "CODEC",
            default_value = "zstd3",
            requires = "snapshot"
        )]
        compression: cryo_snapshot::CodecPolicy,
        #[command(flatten)]
        criu: CriuArgs,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Restore a container from a checkpoint (runc's flags).
    Restore {
        /// Container id.
        id: String,
        #[command(flatten)]
        images: ImageArgs,
        /// Bundle directory (default: current directory).
        #[arg(short, long)]
        bundle: Option<PathBuf>,
        /// Do not wait for the restored container.
        #[arg(short, long)]
        detach: bool,
        /// Write the restored init's pid to this file.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Unix socket that receives the pty master of a restored terminal.
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Accepted for runc compatibility (CRIU restores the root itself).
        #[arg(long = "no-pivot")]
        no_pivot: bool,
        /// Accepted for runc compatibility.
        #[arg(long = "no-subreaper")]
        no_subreaper: bool,
        /// Lazy restore: the container runs at once while its memory streams in, with
        /// --snapshot from the store (cryo's own lazy-pages server); from an image directory
        /// of `checkpoint --lazy-pages`, from the `criu lazy-pages --page-server` daemon the
        /// caller started in the work directory (runc's lazy migration).
        #[arg(long = "lazy-pages")]
        lazy_pages: bool,
        #[command(flatten)]
        criu: CriuArgs,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Internal: the container's init.
    #[command(hide = true)]
    Init,
    /// Internal: the lazy-pages server of a lazy restore (started by `restore --lazy-pages`).
    #[command(hide = true, name = "lazy-pages")]
    LazyPages {
        /// Snapshot store.
        #[arg(long)]
        store: PathBuf,
        /// The snapshot (an ID).
        #[arg(long)]
        snapshot: String,
        /// The socket CRIU connects to (WORK_DIR/lazy-pages.socket).
        #[arg(long)]
        socket: PathBuf,
        /// Write one byte to this fd once the socket listens.
        #[arg(long = "ready-fd")]
        ready_fd: Option<i32>,
        /// Write the report (JSON) here when every page is in.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Kill every process of this cgroup directory if the server dies before every page
        /// is in.
        #[arg(long = "kill-cgroup")]
        kill_cgroup: Option<PathBuf>,
        /// The container's state directory (gets lazy-pages.error when the watcher kills it).
        #[arg(long = "state-dir")]
        state_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct CreateArgs {
    /// Bundle directory (default: current directory).
    #[arg(short, long)]
    bundle: Option<PathBuf>,
    /// Write the init pid to this file.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Do not use pivot_root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Pass N extra fds (3..3+N) to the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
}

/// Where checkpoint writes and restore reads: an image directory (runc's) or a snapshot of
/// the store.
#[derive(clap::Args, Debug, Clone)]
pub struct ImageArgs {
    /// Directory of the images (default: ./checkpoint).
    #[arg(long = "image-path", conflicts_with = "snapshot")]
    image_path: Option<PathBuf>,
    /// A snapshot of the store instead: checkpoint names it (and prints its ID), restore
    /// reads it (a name, sha256:HEX or a unique prefix).
    #[arg(long)]
    snapshot: Option<String>,
    /// Snapshot store (default: $CRYO_STORE, else /var/lib/cryo/store).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Directory for CRIU's log and work files (default: the image directory).
    #[arg(long = "work-path")]
    work_path: Option<PathBuf>,
}

impl ImageArgs {
    /// `--image-path` made absolute (empty: the runtime's default, ./checkpoint).
    fn image_path(&self) -> PathBuf {
        self.image_path
            .as_ref()
            .map(|p| absolute(p))
            .unwrap_or_default()
    }
}

/// The CRIU flags checkpoint and restore share with runc.
#[derive(clap::Args, Debug, Clone)]
pub struct CriuArgs {
    /// Allow open TCP connections.
    #[arg(long = "tcp-established")]
    tcp_established: bool,
    /// Allow external unix sockets.
    #[arg(long = "ext-unix-sk")]
    ext_unix_sk: bool,
    /// Allow shell jobs.
    #[arg(long = "shell-job")]
    shell_job: bool,
    /// Handle file locks.
    #[arg(long = "file-locks")]
    file_locks: bool,
    /// cgroups mode: soft, full, strict or ignore. Default: soft; at a restore, ignore when
    /// the checkpoint found all the container's processes in one set of cgroups (cryo has
    /// made and configured the container's cgroups already).
    #[arg(long = "manage-cgroups-mode")]
    manage_cgroups_mode: Option<String>,
    /// Namespaces to leave empty: network.
    #[arg(long = "empty-ns")]
    empty_ns: Vec<String>,
    /// Accepted for runc compatibility.
    #[arg(long = "auto-dedup")]
    auto_dedup: bool,
}

impl CriuArgs {
    /// The flags, with CRIU at `criu` (the global `--criu`; default: $CRYO_CRIU,
    /// /var/cache/cryo/refs/bin/criu, then PATH).
    fn flags(&self, criu: Option<&Path>) -> Result<cryo_runtime::CriuFlags> {
        let empty_ns = cryo_runtime::checkpoint::empty_ns_bits(&self.empty_ns)
            .map_err(|e| anyhow::anyhow!("--empty-ns: {e}"))?;
        Ok(cryo_runtime::CriuFlags {
            tcp_established: self.tcp_established,
            ext_unix_sk: self.ext_unix_sk,
            shell_job: self.shell_job,
            file_locks: self.file_locks,
            cgroups_mode: self
                .manage_cgroups_mode
                .as_deref()
                .map(str::parse)
                .transpose()?,
            empty_ns,
            criu: criu.map(absolute),
            gpu: Default::default(),
        })
    }
}

/// How checkpoint and restore drive the CUDA driver for the container's CUDA processes.
#[derive(clap::Args, Debug, Clone)]
pub struct GpuArgs {
    /// The CUDA driver library (default: $CRYO_LIBCUDA, else libcuda.so.1 through the
    /// loader's search path). Loaded only when a process of the container maps libcuda.
    #[arg(long)]
    libcuda: Option<PathBuf>,
    /// Checkpoint: how long to wait for a CUDA process's GPU work in flight before it can be
    /// locked, in ms (default: $CRYO_CUDA_LOCK_TIMEOUT_MS, else 10000).
    #[arg(long = "cuda-lock-timeout", value_name = "MS")]
    cuda_lock_timeout: Option<u64>,
    /// Restore: put the CUDA processes onto other GPUs, as OLD=NEW[,OLD=NEW...]; OLD is an
    /// index into the GPUs the image records (cryo.json's cuda.gpus) or a UUID, NEW this
    /// machine's GPU index or UUID (GPU-…, as nvidia-smi -L prints). Needs a CUDA 13 driver.
    /// Default: $CRYO_CUDA_GPU_MAP, else the same GPUs.
    #[arg(long = "cuda-gpu-map", value_name = "MAP")]
    cuda_gpu_map: Option<cryo_snapshot::gpu::GpuMap>,
}

impl GpuArgs {
    /// The GPU options: the flags over the environment's.
    fn options(&self) -> cryo_runtime::GpuOptions {
        let mut o = cryo_runtime::GpuOptions::from_env();
        if let Some(p) = &self.libcuda {
            o.libcuda = Some(absolute(p));
        }
        if let Some(ms) = self.cuda_lock_timeout {
            o.lock_timeout = std::time::Duration::from_millis(ms);
        }
        if let Some(m) = &self.cuda_gpu_map {
            o.gpu_map = m.clone();
        }
        o
    }
}

impl CreateArgs {
    fn options(&self) -> CreateOptions {
        CreateOptions {
            bundle: self.bundle.clone().unwrap_or_default(),
            pid_file: self.pid_file.as_ref().map(|p| absolute(p)),
            console_socket: self.console_socket.clone(),
            no_pivot: self.no_pivot,
            preserve_fds: self.preserve_fds + listen_fds(),
            ..Default::default()
        }
    }
}

/// systemd socket activation: LISTEN_FDS fds are passed through like runc does.
fn listen_fds() -> i32 {
    std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// runc's `--status-fd N`: descriptor N of this process, checked to be open for writing, as a
/// close-on-exec copy (CRIU does not inherit it). N itself is closed unless it is stdio, so
/// that the copy, closed when the checkpoint ends, is the last one.
fn status_fd_of(fd: i32) -> Result<std::sync::Arc<std::os::fd::OwnedFd>> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let err = |e: nix::Error| anyhow::anyhow!("checkpoint: --status-fd {fd}: {e}");
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(err)?;
    if OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE == OFlag::O_RDONLY {
        bail!("checkpoint: --status-fd {fd} is open for reading only");
    }
    let copy = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3)).map_err(err)?;
    if fd > 2 {
        let _ = nix::unistd::close(fd);
    }
    // SAFETY: `copy` was just made by F_DUPFD_CLOEXEC; nothing else owns it.
    Ok(std::sync::Arc::new(unsafe {
        std::os::fd::FromRawFd::from_raw_fd(copy)
    }))
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Parses SIGTERM, TERM or 15.
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).with_context(|| format!("invalid signal {s:?}"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| anyhow::anyhow!("invalid signal {s:?}"))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

pub fn run(cli: &Cli) -> Result<u8> {
    let rt = Runtime::new(&cli.root);
    match &cli.command {
        Command::Create { id, opts } => {
            rt.create(id, &opts.options())?;
        }
        Command::Start { id } => rt.start(id)?,
        Command::State { id } => print_json(&rt.state(id)?)?,
        Command::Kill { id, signal, all } => {
            let sig = parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?;
            rt.kill(id, sig, *all)?;
        }
        Command::Delete { id, force } => match rt.delete(id, *force) {
            // runc exits 0 for `delete --force` of a missing container.
            Err(cryo_runtime::Error::NotFound(_)) if *force => {}
            r => r?,
        },
        Command::Run {
            id,
            opts,
            detach,
            keep,
        } => return run::run(&rt, id, &opts.options(), *detach, *keep),
        Command::Exec(args) => return run::exec(&rt, args),
        Command::Checkpoint {
            id,
            images,
            leave_running,
            lazy_pages,
            page_server,
            status_fd,
            pre_dump,
            compression,
            criu,
            gpu,
        } => {
            if *pre_dump {
                bail!(
                    "checkpoint: --pre-dump is not supported yet (pre-dumps need soft-dirty \
                     page tracking)"
                );
            }
            let status_fd = status_fd.map(status_fd_of).transpose()?;
            let mut flags = criu.flags(cli.criu.as_deref())?;
            flags.gpu = gpu.options();
            let report = rt.checkpoint(
                id,
                &cryo_runtime::CheckpointOptions {
                    image_path: images.image_path(),
                    work_path: images.work_path.as_ref().map(|p| absolute(p)),
                    leave_running: *leave_running,
                    snapshot: images.snapshot.clone(),
                    store: images.store.as_ref().map(|p| absolute(p)),
                    compression: *compression,
                    lazy_pages: *lazy_pages,
                    page_server: page_server.clone(),
                    status_fd,
                    flags,
                },
            )?;
            if let Some(sid) = report.snapshot {
                println!("{sid}");
            }
        }
        Command::Restore {
            id,
            images,
            bundle,
            detach,
            pid_file,
            console_socket,
            no_pivot: _,
            no_subreaper: _,
            lazy_pages,
            criu,
            gpu,
        } => {
            let mut flags = criu.flags(cli.criu.as_deref())?;
            flags.gpu = gpu.options();
            let opts = cryo_runtime::RestoreOptions {
                image_path: images.image_path(),
                work_path: images.work_path.as_ref().map(|p| absolute(p)),
                snapshot: images.snapshot.clone(),
                lazy: *lazy_pages,
                leave_stopped: false,
                store: images.store.as_ref().map(|p| absolute(p)),
                bundle: bundle.clone().unwrap_or_default(),
                pid_file: pid_file.as_ref().map(|p| absolute(p)),
                console_socket: console_socket.clone(),
                flags,
                stdio: Default::default(),
            };
            return run::restore(&rt, id, &opts, *detach);
        }
        Command::Ps {
            id,
            format,
            ps_args,
        } => ps(&rt, id, format, ps_args)?,
        Command::Pause { id } => rt.set_paused(id, true)?,
        Command::Resume { id } => rt.set_paused(id, false)?,
        Command::List { format, quiet } => list(&rt, format, *quiet)?,
        Command::Spec {
            bundle,
            rootless,
            gpus,
        } => spec(bundle, *rootless, *gpus)?,
        Command::Features => print_json(&features())?,
        Command::Snapshot { store, command } => {
            let store = store
                .clone()
                .unwrap_or_else(cryo_snapshot::Store::default_path);
            let code = crate::snapshot_cli::run(command.clone(), &store)?;
            return Ok(u8::try_from(code).unwrap_or(1));
        }
        Command::Update {
            id,
            resources,
            memory,
            cpu_shares,
            cpu_quota,
            cpu_period,
            cpuset_cpus,
            cpuset_mems,
            pids_limit,
        } => {
            let mut r: serde_json::Value = match resources {
                Some(p) if p == Path::new("-") => {
                    serde_json::from_reader(std::io::stdin()).context("resources from stdin")?
                }
                Some(p) => serde_json::from_slice(
                    &std::fs::read(p).with_context(|| p.display().to_string())?,
                )
                .with_context(|| format!("{}: not a JSON linux.resources object", p.display()))?,
                None => serde_json::json!({}),
            };
            if let Some(m) = memory {
                r["memory"]["limit"] = (*m).into();
            }
            if let Some(v) = cpu_shares {
                r["cpu"]["shares"] = (*v).into();
            }
            if let Some(v) = cpu_quota {
                r["cpu"]["quota"] = (*v).into();
            }
            if let Some(v) = cpu_period {
                r["cpu"]["period"] = (*v).into();
            }
            if let Some(v) = cpuset_cpus {
                r["cpu"]["cpus"] = v.clone().into();
            }
            if let Some(v) = cpuset_mems {
                r["cpu"]["mems"] = v.clone().into();
            }
            if let Some(v) = pids_limit {
                r["pids"]["limit"] = (*v).into();
            }
            let bytes = serde_json::to_vec(&r)?;
            let res: oci_spec::runtime::LinuxResources =
                cryo_runtime::spec::parse_json(Path::new("resources"), &bytes)?;
            rt.update(id, &res)?;
        }
        Command::Events {
            id,
            stats,
            interval,
        } => {
            let every = parse_duration(interval)?;
            loop {
                let s = rt.stats(id)?;
                let ev = serde_json::json!({"type": "stats", "id": id, "data": s});
                println!("{ev}");
                if *stats {
                    break;
                }
                std::thread::sleep(every);
            }
        }
        Command::Init => bail!("cryo init must be started by the runtime"),
        Command::LazyPages {
            store,
            snapshot,
            socket,
            ready_fd,
            report,
            kill_cgroup,
            state_dir,
        } => crate::lazy_cli::run(&crate::lazy_cli::Args {
            store,
            snapshot,
            socket,
            ready_fd: *ready_fd,
            report: report.as_deref(),
            kill_cgroup: kill_cgroup.as_deref(),
            state_dir: state_dir.as_deref(),
        })?,
    }
    Ok(0)
}

fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}"))?;
    Ok(match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" | "" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n * 60),
        _ => bail!("invalid duration {s:?}"),
    })
}

fn ps(rt: &Runtime, id: &str, format: &str, ps_args: &[String]) -> Result<()> {
    let pids = rt.pids(id)?;
    match format {
        "json" => print_json(&pids),
        "table" => {
            let args: Vec<String> = if ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                ps_args.to_vec()
            };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("running ps")?;
            if !out.status.success() {
                bail!(
                    "ps {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default();
            let col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .context("ps output has no PID column")?;
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{header}")?;
            for l in lines {
                let pid: Option<i32> = l.split_whitespace().nth(col).and_then(|p| p.parse().ok());
                if pid.is_some_and(|p| pids.contains(&p)) {
                    writeln!(stdout, "{l}")?;
                }
            }
            Ok(())
        }
        f => bail!("invalid format option {f:?}: table or json"),
    }
}

fn list(rt: &Runtime, format: &str, quiet: bool) -> Result<()> {
    let all = rt.list()?;
    if quiet {
        for s in &all {
            println!("{}", s.id);
        }
        return Ok(());
    }
    match format {
        "json" => print_json(&all),
        "table" => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<12} {:<8} {:<10} {:<40} {:<31} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            )?;
            for s in &all {
                writeln!(
                    out,
                    "{:<12} {:<8} {:<10} {:<40} {:<31} {}",
                    s.id,
                    s.pid,
                    s.status,
                    s.bundle.display(),
                    s.created,
                    if s.owner.is_empty() { "root" } else { &s.owner }
                )?;
            }
            Ok(())
        }
        f => bail!("invalid format option {f:?}: table or json"),
    }
}

fn spec(bundle: &Path, rootless: bool, gpus: Option<crate::gpus::Gpus>) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("File {} exists. Remove it first", path.display());
    }
    let mut spec = oci_spec::runtime::Spec::default();
    if rootless {
        spec.set_linux(Some(oci_spec::runtime::Linux::rootless(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )));
    }
    let mut spec = serde_json::to_value(&spec)?;
    if let Some(g) = gpus {
        let a = crate::gpus::additions(&crate::gpus::Host::system(), g)?;
        crate::gpus::apply(&mut spec, &a);
    }
    let bytes = serde_json::to_vec_pretty(&spec)?;
    std::fs::write(&path, bytes).with_context(|| path.display().to_string())?;
    Ok(())
}

fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": cryo_runtime::state::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "mand",
            "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid",
            "private", "rbind", "relatime", "remount", "ro", "rprivate", "rshared", "rslave", "runbindable",
            "rw", "shared", "slave", "strictatime", "suid", "sync", "tmpcopyup", "unbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false}
        },
        "annotations": {"io.cryo.version": env!("CARGO_PKG_VERSION")}
    })
}

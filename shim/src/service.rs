//! The serving shim: containerd's task API (served as `containerd.task.v2.Task` and
//! `containerd.task.v3.Task`, wire-identical) over cryo-runtime in-process, with the
//! containers' processes as the shim's own (sub-reaped) children.
//!
//! Containers stay in memory only: when containerd restarts it reconnects to the same socket
//! and finds them; when the shim dies containerd runs `delete` ([`crate::bootstrap`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use containerd_shim_protos::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::events::task::*;
use containerd_shim_protos::shim::oci::{CheckpointOptions as RuncCheckpointOptions, Options};
use containerd_shim_protos::types::task::{ProcessInfo, Status};
use containerd_shim_protos::{create_task, Task};
use cryo_runtime::{CreateOptions, ExecOptions, Runtime};
use nix::sys::signal::Signal;
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::{Message, MessageField};
use ttrpc::{Code, TtrpcContext};

use crate::args::Args;
use crate::events::{Event, Publisher};
use crate::io::ProcessIo;
use crate::reaper::{self, Ops};
use crate::trim::Trimmed;
use crate::{mount, stats};

/// The file in a bundle where the shim keeps the runtime settings of its container, for
/// `delete` after the shim is gone.
const SETTINGS_FILE: &str = "cryo-shim.json";
/// How long an exit event waits for the process's terminal output to be copied out.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The exit status of a process that failed to start (runc's for an exec that failed).
const FAILED_START_STATUS: u32 = 255;

/// The current time as a protobuf timestamp.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

/// Runtime settings of one container: the runc-style options containerd passes at create
/// (`containerd.runc.v1.Options`: `Root`, `BinaryName`, `CriuPath`), with cryo's defaults.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// State root (default: cryo's, so that the `cryo` CLI sees the shim's containers).
    pub root: Option<PathBuf>,
    /// The `cryo` binary the containers' inits run.
    pub binary: Option<PathBuf>,
    /// CRIU.
    pub criu: Option<PathBuf>,
}

impl Settings {
    fn from_options(any: Option<&Any>) -> std::result::Result<Settings, String> {
        let Some(any) = any.filter(|a| !a.value.is_empty()) else {
            return Ok(Settings::default());
        };
        if any.type_url.ends_with("runtimeoptions.v1.Options") {
            // What containerd's CRI plugin sends for a runtime that is not runc: a path to a
            // config file of the runtime's own. cryo has none; its defaults apply.
            return Ok(Settings::default());
        }
        if !any.type_url.ends_with("containerd.runc.v1.Options") {
            return Err(format!(
                "options: expected containerd.runc.v1.Options, found {:?}",
                any.type_url
            ));
        }
        let o = Options::parse_from_bytes(&any.value)
            .map_err(|e| format!("options: decoding containerd.runc.v1.Options: {e}"))?;
        let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        Ok(Settings {
            root: path(&o.root),
            binary: path(&o.binary_name),
            criu: path(&o.criu_path),
        })
    }

    /// The settings `bundle` was created with, or the defaults.
    pub fn load(bundle: &Path) -> Settings {
        std::fs::read(bundle.join(SETTINGS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, bundle: &Path) -> Result<()> {
        let p = bundle.join(SETTINGS_FILE);
        let json = serde_json::to_vec(self)?;
        std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))
    }

    /// A runtime with these settings. The inits run the `cryo` binary: `binary`, else the
    /// one next to this shim, else the first on PATH.
    pub fn runtime(&self) -> Result<Runtime> {
        let root = self
            .root
            .clone()
            .unwrap_or_else(|| PathBuf::from(cryo_runtime::state::DEFAULT_ROOT));
        let mut rt = Runtime::new(root);
        rt.exe = match &self.binary {
            Some(b) => b.clone(),
            None => find_cryo().context(
                "cannot find the cryo binary: install it next to containerd-shim-cryo-v2 or \
                 on PATH, or set BinaryName in the runtime's options",
            )?,
        };
        Ok(rt)
    }
}

fn find_cryo() -> Option<PathBuf> {
    let beside = std::env::current_exe().ok()?.with_file_name("cryo");
    if beside.is_file() {
        return Some(beside);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("cryo"))
            .find(|p| p.is_file())
    })
}

type RpcResult<T> = ttrpc::Result<T>;

fn rpc_err(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

/// A runtime error as a ttrpc status, with the code containerd maps to its errdefs.
fn runtime_err(what: &str, e: cryo_runtime::Error) -> ttrpc::Error {
    let code = match &e {
        cryo_runtime::Error::NotFound(_) => Code::NOT_FOUND,
        cryo_runtime::Error::Exists(_) => Code::ALREADY_EXISTS,
        cryo_runtime::Error::InvalidId(_)
        | cryo_runtime::Error::Spec { .. }
        | cryo_runtime::Error::Unsupported { .. } => Code::INVALID_ARGUMENT,
        cryo_runtime::Error::BadStatus { .. } => Code::FAILED_PRECONDITION,
        _ => Code::UNKNOWN,
    };
    rpc_err(code, format!("{what}: {e}"))
}

/// Logs a request at debug level (the text form is built only when debug is on).
fn log_request(name: &str, req: &impl protobuf::MessageFull) {
    tracing::debug!(
        request = name,
        "{}",
        protobuf::text_format::print_to_string(req)
    );
}

/// A pid as the task API carries it (0 for none).
fn wire_pid(pid: i32) -> u32 {
    u32::try_from(pid).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The spec annotation that makes a container start from a snapshot of the store: its
/// value names the snapshot (a name, `sha256:HEX` or a unique prefix).
pub const SNAPSHOT_ANNOTATION: &str = "io.cryo.snapshot";
/// `"false"` restores the snapshot eagerly (every page in before the process runs); the
/// default is lazy (the process runs at once, memory streams in from the store).
pub const SNAPSHOT_LAZY_ANNOTATION: &str = "io.cryo.snapshot.lazy";
/// Where a restore puts the container's CUDA processes, as `cryo restore --cuda-gpu-map`
/// takes it (`OLD=NEW,...`: the GPUs the image records, by index or UUID, onto this machine's);
/// it wins over the shim's `CRYO_CUDA_GPU_MAP`. For orchestrators that place a restored pod on
/// other GPUs than the one it was checkpointed on.
pub const CUDA_GPU_MAP_ANNOTATION: &str = "io.cryo.cuda-gpu-map";
/// The image path (`ctr task checkpoint --image-path`) prefix that checkpoints into the store
/// under the name that follows, leaving the container running.
pub const SNAPSHOT_IMAGE_PREFIX: &str = "snapshot:";

/// The spec annotation with which containerd's CRI marks a pod's containers: `sandbox` for
/// the pod's sandbox ("pause") container, `container` for the workload's.
pub const CRI_CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// Where a restored container's process tree comes from.
#[derive(Debug, Clone)]
enum Restore {
    /// A CRIU image directory (`ctr container restore --live`).
    Image(PathBuf),
    /// A snapshot of the store (the annotation).
    Snapshot { name: String, lazy: bool },
}

/// The restore a Create asks for: a checkpoint directory, or the snapshot annotation of the
/// bundle's config.json. A pod's sandbox container never restores a snapshot: containerd
/// copies the pod's annotations (`pod_annotations`) into the sandbox's spec as into its
/// containers', and the snapshot is the workload's, not the pause process's.
fn restore_source(
    req: &CreateTaskRequest,
    bundle: &Path,
    spec: &serde_json::Value,
) -> RpcResult<Option<Restore>> {
    if !req.checkpoint.is_empty() {
        return Ok(Some(Restore::Image(PathBuf::from(&req.checkpoint))));
    }
    let config = bundle.join("config.json");
    let annotation = |k: &str| spec.get("annotations").and_then(|a| a.get(k)).cloned();
    let Some(name) = annotation(SNAPSHOT_ANNOTATION) else {
        return Ok(None);
    };
    if annotation(CRI_CONTAINER_TYPE_ANNOTATION)
        .as_ref()
        .and_then(|v| v.as_str())
        == Some("sandbox")
    {
        return Ok(None);
    }
    let bad = |what: String| {
        rpc_err(
            Code::INVALID_ARGUMENT,
            format!("{}: annotations: {what}", config.display()),
        )
    };
    let name = name
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad(format!("{SNAPSHOT_ANNOTATION}: expected a snapshot name")))?
        .to_string();
    let lazy = match annotation(SNAPSHOT_LAZY_ANNOTATION) {
        None => true,
        Some(v) => match v.as_str() {
            Some("true") => true,
            Some("false") => false,
            _ => {
                return Err(bad(format!(
                    "{SNAPSHOT_LAZY_ANNOTATION}: expected \"true\" or \"false\", found {v}"
                )))
            }
        },
    };
    Ok(Some(Restore::Snapshot { name, lazy }))
}

/// The GPU map of the spec's annotation, if it has one.
fn gpu_map_annotation(
    bundle: &Path,
    spec: &serde_json::Value,
) -> RpcResult<Option<cryo_runtime::GpuMap>> {
    let Some(v) = spec
        .get("annotations")
        .and_then(|a| a.get(CUDA_GPU_MAP_ANNOTATION))
    else {
        return Ok(None);
    };
    v.as_str()
        .ok_or_else(|| "expected a string".to_string())
        .and_then(str::parse)
        .map(Some)
        .map_err(|e| {
            rpc_err(
                Code::INVALID_ARGUMENT,
                format!(
                    "{}: annotations: {CUDA_GPU_MAP_ANNOTATION}: {e}",
                    bundle.join("config.json").display()
                ),
            )
        })
}

/// The bundle's config.json as JSON (null when unreadable: the runtime reports that).
fn bundle_spec(bundle: &Path) -> serde_json::Value {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Whether the spec gives the container a new pid namespace (one without a path).
fn has_own_pid_ns(spec: &serde_json::Value) -> bool {
    spec.pointer("/linux/namespaces")
        .and_then(|n| n.as_array())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.get("type").and_then(|t| t.as_str()) == Some("pid")
                    && !matches!(n.get("path").and_then(|p| p.as_str()), Some(p) if !p.is_empty())
            })
        })
}

/// One process of a task: the container's init or an exec process.
struct Proc {
    /// Empty for the init.
    exec_id: String,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    /// An exec process's spec until it starts.
    spec: Option<oci_spec::runtime::Process>,
    io: Mutex<ProcessIo>,
    state: Mutex<ProcState>,
    exited: Condvar,
}

#[derive(Default)]
struct ProcState {
    pid: i32,
    started: bool,
    exit: Option<(u32, Timestamp)>,
}

impl Proc {
    fn state(&self) -> MutexGuard<'_, ProcState> {
        lock(&self.state)
    }

    fn set_exit(&self, status: u32) -> Timestamp {
        let at = now();
        let mut st = self.state();
        if st.exit.is_none() {
            st.exit = Some((status, at.clone()));
        }
        self.exited.notify_all();
        st.exit.as_ref().map(|e| e.1.clone()).unwrap_or(at)
    }

    fn wait(&self) -> (u32, Timestamp) {
        let mut st = self.state();
        loop {
            if let Some(e) = &st.exit {
                return e.clone();
            }
            st = self.exited.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

struct Container {
    id: String,
    bundle: PathBuf,
    rt: Runtime,
    settings: Settings,
    /// What Start restores instead of starting a created container.
    restore: Option<Restore>,
    /// The GPU map of its annotation, for that restore.
    gpu_map: Option<cryo_runtime::GpuMap>,
    /// Whether the container has a pid namespace of its own (then its processes die with
    /// its init).
    own_pid_ns: bool,
    rootfs_mounted: bool,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
}

impl Container {
    fn process(&self, exec_id: &str) -> RpcResult<Arc<Proc>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            rpc_err(
                Code::NOT_FOUND,
                format!("container {}: no exec process {exec_id:?}", self.id),
            )
        })
    }
}

/// The task service.
pub struct Service {
    namespace: String,
    events: Publisher,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Task processes by host pid: `(container id, exec id)`.
    pids: Mutex<HashMap<i32, (String, String)>>,
    ops: Ops,
    shutdown: Mutex<mpsc::Sender<()>>,
}

impl Service {
    fn container(&self, id: &str) -> RpcResult<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| rpc_err(Code::NOT_FOUND, format!("container {id:?} not found")))
    }

    /// Reaped children: the task processes among them get their exit recorded and published.
    fn on_exits(&self, exits: Vec<(i32, u32)>) {
        for (pid, status) in exits {
            let Some((cid, eid)) = lock(&self.pids).remove(&pid) else {
                continue;
            };
            let Ok(c) = self.container(&cid) else {
                continue;
            };
            let Ok(p) = c.process(&eid) else { continue };
            if eid.is_empty() && !c.own_pid_ns {
                // Without a pid namespace of its own, the container's other processes outlive
                // its init: end them with it, as runc's shim does.
                let _ = c.rt.kill(&c.id, Signal::SIGKILL, true);
            }
            lock(&p.io).drain(DRAIN_TIMEOUT);
            let at = p.set_exit(status);
            tracing::debug!(container = %cid, exec = %eid, pid, status, "exited");
            self.events.publish(Event::Exit(TaskExit {
                container_id: cid.clone(),
                id: if eid.is_empty() { cid.clone() } else { eid },
                pid: wire_pid(pid),
                exit_status: status,
                exited_at: MessageField::some(at),
                ..Default::default()
            }));
        }
    }

    fn create_container(&self, req: &CreateTaskRequest) -> RpcResult<Arc<Container>> {
        let id = req.id.clone();
        if lock(&self.containers).contains_key(&id) {
            return Err(rpc_err(
                Code::ALREADY_EXISTS,
                format!("container {id:?} already exists"),
            ));
        }
        let settings = Settings::from_options(req.options.as_ref())
            .map_err(|e| rpc_err(Code::INVALID_ARGUMENT, format!("container {id}: {e}")))?;
        let bundle = PathBuf::from(&req.bundle);
        let rt = settings
            .runtime()
            .map_err(|e| rpc_err(Code::FAILED_PRECONDITION, format!("{e:#}")))?;
        settings
            .save(&bundle)
            .map_err(|e| rpc_err(Code::UNKNOWN, format!("container {id}: {e:#}")))?;
        let rootfs = bundle.join("rootfs");
        mount::mount_rootfs(&req.rootfs, &rootfs)
            .map_err(|e| rpc_err(Code::UNKNOWN, format!("container {id}: {e:#}")))?;
        let mounted = !req.rootfs.is_empty();
        let undo_mount = || {
            if mounted {
                mount::unmount_rootfs(&rootfs);
            }
        };
        let mut io = match ProcessIo::open(
            &req.stdin,
            &req.stdout,
            &req.stderr,
            req.terminal,
            &id,
            &self.namespace,
        ) {
            Ok(io) => io,
            Err(e) => {
                undo_mount();
                return Err(rpc_err(
                    Code::INVALID_ARGUMENT,
                    format!("container {id}: stdio: {e:#}"),
                ));
            }
        };
        let spec = bundle_spec(&bundle);
        let (restore, gpu_map) = match restore_source(req, &bundle, &spec)
            .and_then(|r| Ok((r, gpu_map_annotation(&bundle, &spec)?)))
        {
            Ok(r) => r,
            Err(e) => {
                undo_mount();
                return Err(e);
            }
        };
        let opts = CreateOptions {
            bundle: bundle.clone(),
            console_socket: io.console_socket(),
            stdio: io.stdio.clone(),
            ..Default::default()
        };
        // A restored container comes into being at Start, as runc's shim does it: its
        // process tree starts running as soon as it is restored.
        let pid = if restore.is_some() {
            0
        } else {
            let _call = self.ops.runtime_call();
            let pid = match rt.create(&id, &opts) {
                Ok(pid) => pid,
                Err(e) => {
                    undo_mount();
                    return Err(runtime_err(&format!("creating container {id}"), e));
                }
            };
            if let Err(e) = io.attach_console() {
                let _ = rt.delete(&id, true);
                undo_mount();
                return Err(rpc_err(Code::UNKNOWN, format!("container {id}: {e:#}")));
            }
            lock(&self.pids).insert(pid, (id.clone(), String::new()));
            io.release();
            pid
        };
        let init = Arc::new(Proc {
            exec_id: String::new(),
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            spec: None,
            io: Mutex::new(io),
            state: Mutex::new(ProcState {
                pid,
                ..Default::default()
            }),
            exited: Condvar::new(),
        });
        let c = Arc::new(Container {
            id: id.clone(),
            own_pid_ns: has_own_pid_ns(&spec),
            bundle,
            rt,
            settings,
            restore,
            gpu_map,
            rootfs_mounted: mounted,
            init,
            execs: Mutex::new(HashMap::new()),
        });
        lock(&self.containers).insert(id, c.clone());
        Ok(c)
    }

    /// Start of a restored container: CRIU brings its process tree back, with the streams
    /// of this task in place of the checkpointed ones.
    fn start_restore(&self, c: &Container, from: &Restore) -> RpcResult<i32> {
        let mut io = lock(&c.init.io);
        let mut opts = cryo_runtime::RestoreOptions {
            bundle: c.bundle.clone(),
            console_socket: io.console_socket(),
            stdio: io.stdio.clone(),
            ..Default::default()
        };
        opts.flags.criu = c.settings.criu.clone();
        opts.flags.gpu = cryo_runtime::GpuOptions::from_env();
        if let Some(m) = &c.gpu_map {
            opts.flags.gpu.gpu_map = m.clone();
        }
        match from {
            Restore::Image(dir) => opts.image_path = dir.clone(),
            Restore::Snapshot { name, lazy } => {
                opts.snapshot = Some(name.clone());
                opts.lazy = *lazy;
            }
        }
        let _call = self.ops.runtime_call();
        let pid = match c.rt.restore(&c.id, &opts) {
            Ok(pid) => pid,
            Err(e) => {
                io.release();
                io.close_stdin();
                return Err(runtime_err(&format!("restoring {}", c.id), e));
            }
        };
        lock(&self.pids).insert(pid, (c.id.clone(), String::new()));
        if let Err(e) = io.attach_console() {
            let _ = c.rt.kill(&c.id, Signal::SIGKILL, true);
            return Err(rpc_err(Code::UNKNOWN, format!("restoring {}: {e:#}", c.id)));
        }
        io.release();
        tracing::info!(container = %c.id, pid, source = ?from, "restored");
        Ok(pid)
    }

    fn start_exec(&self, c: &Container, p: &Proc) -> RpcResult<i32> {
        let spec = p.spec.clone().ok_or_else(|| {
            rpc_err(
                Code::FAILED_PRECONDITION,
                "exec process has no spec".to_string(),
            )
        })?;
        let mut io = lock(&p.io);
        let opts = ExecOptions {
            console_socket: io.console_socket(),
            stdio: io.stdio.clone(),
            ..Default::default()
        };
        let _call = self.ops.runtime_call();
        let pid = match c.rt.exec(&c.id, spec, &opts) {
            Ok(pid) => pid,
            Err(e) => {
                // The client waits for EOF on the streams it gave: let go of them.
                io.release();
                io.close_stdin();
                return Err(runtime_err(&format!("exec {} in {}", p.exec_id, c.id), e));
            }
        };
        lock(&self.pids).insert(pid, (c.id.clone(), p.exec_id.clone()));
        if let Err(e) = io.attach_console() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            return Err(rpc_err(Code::UNKNOWN, format!("exec {}: {e:#}", p.exec_id)));
        }
        io.release();
        Ok(pid)
    }

    /// Publishes `/tasks/oom` for every OOM kill in the container's memory cgroup, from a
    /// thread that ends when the cgroup is removed.
    fn watch_oom(&self, c: &Container) {
        let mut watcher = match c.rt.oom_watcher(&c.id) {
            Ok(Some(w)) => w,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(container = %c.id, "no OOM events: {e}");
                return;
            }
        };
        let events = self.events.clone();
        let id = c.id.clone();
        let spawned = std::thread::Builder::new()
            .name("oom".into())
            .spawn(move || {
                while let Ok(true) = watcher.wait() {
                    tracing::info!(container = %id, "OOM kill");
                    events.publish(Event::Oom(TaskOOM {
                        container_id: id.clone(),
                        ..Default::default()
                    }));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(container = %c.id, "no OOM events: {e}");
        }
    }

    fn remove_container(&self, c: &Container) {
        lock(&self.containers).remove(&c.id);
    }
}

fn exit_of(p: &Proc) -> (u32, MessageField<Timestamp>) {
    match &p.state().exit {
        Some((s, at)) => (*s, MessageField::some(at.clone())),
        None => (0, MessageField::none()),
    }
}

fn signal(n: u32) -> RpcResult<Signal> {
    i32::try_from(n)
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .ok_or_else(|| rpc_err(Code::INVALID_ARGUMENT, format!("signal {n}: not a signal")))
}

impl Task for Service {
    fn state(&self, _: &TtrpcContext, req: StateRequest) -> RpcResult<StateResponse> {
        log_request("state", &req);
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let (pid, started, exited) = {
            let st = p.state();
            (st.pid, st.started, st.exit.is_some())
        };
        let status = if exited {
            Status::STOPPED
        } else if !started {
            Status::CREATED
        } else if p.exec_id.is_empty()
            && c.rt
                .state(&c.id)
                .is_ok_and(|s| s.status == cryo_runtime::Status::Paused)
        {
            Status::PAUSED
        } else {
            Status::RUNNING
        };
        let (exit_status, exited_at) = exit_of(&p);
        Ok(StateResponse {
            id: req.id,
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: wire_pid(pid),
            status: status.into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit_status,
            exited_at,
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> RpcResult<CreateTaskResponse> {
        log_request("create", &req);
        let c = self.create_container(&req)?;
        if c.restore.is_none() {
            self.watch_oom(&c);
        }
        let pid = c.init.state().pid;
        tracing::info!(container = %c.id, pid, "created");
        self.events.publish(Event::Create(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            checkpoint: req.checkpoint.clone(),
            pid: wire_pid(pid),
            ..Default::default()
        }));
        Ok(CreateTaskResponse {
            pid: wire_pid(pid),
            ..Default::default()
        })
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> RpcResult<StartResponse> {
        log_request("start", &req);
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.state().started {
            return Err(rpc_err(
                Code::FAILED_PRECONDITION,
                format!("{} {:?} already started", c.id, req.exec_id),
            ));
        }
        let started = if let (true, Some(from)) = (req.exec_id.is_empty(), &c.restore) {
            self.start_restore(&c, from)
        } else if req.exec_id.is_empty() {
            let _call = self.ops.runtime_call();
            c.rt.start(&c.id)
                .map(|()| p.state().pid)
                .map_err(|e| runtime_err(&format!("starting {}", c.id), e))
        } else {
            self.start_exec(&c, &p)
        };
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                // Clients wait for the process before they start it (ctr does): a process
                // that never ran has exited, or they would wait forever.
                p.set_exit(FAILED_START_STATUS);
                return Err(e);
            }
        };
        {
            let mut st = p.state();
            st.pid = pid;
            st.started = true;
        }
        if req.exec_id.is_empty() {
            if c.restore.is_some() {
                self.watch_oom(&c);
            }
            self.events.publish(Event::Start(TaskStart {
                container_id: c.id.clone(),
                pid: wire_pid(pid),
                ..Default::default()
            }));
        } else {
            self.events.publish(Event::ExecStarted(TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: wire_pid(pid),
                ..Default::default()
            }));
        }
        Ok(StartResponse {
            pid: wire_pid(pid),
            ..Default::default()
        })
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> RpcResult<DeleteResponse> {
        log_request("delete", &req);
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let (pid, started, exited) = {
            let st = p.state();
            (st.pid, st.started, st.exit.is_some())
        };
        if started && !exited {
            return Err(rpc_err(
                Code::FAILED_PRECONDITION,
                format!(
                    "cannot delete {} {:?}: it is running (kill it first)",
                    c.id, req.exec_id
                ),
            ));
        }
        if !req.exec_id.is_empty() {
            lock(&c.execs).remove(&req.exec_id);
            let (exit_status, exited_at) = exit_of(&p);
            return Ok(DeleteResponse {
                pid: wire_pid(pid),
                exit_status,
                exited_at,
                ..Default::default()
            });
        }
        if !started {
            // A created container's init is killed by the delete: it gets its exit here.
            lock(&self.pids).remove(&pid);
            p.set_exit(128 + Signal::SIGKILL as u32);
        }
        {
            let _call = self.ops.runtime_call();
            match c.rt.delete(&c.id, true) {
                Ok(()) | Err(cryo_runtime::Error::NotFound(_)) => {}
                Err(e) => return Err(runtime_err(&format!("deleting {}", c.id), e)),
            }
        }
        if c.rootfs_mounted {
            mount::unmount_rootfs(&c.bundle.join("rootfs"));
        }
        // Exec processes that never started end with their container.
        for e in lock(&c.execs).values() {
            e.set_exit(128 + Signal::SIGKILL as u32);
        }
        self.remove_container(&c);
        let (exit_status, exited_at) = exit_of(&p);
        tracing::info!(container = %c.id, exit_status, "deleted");
        self.events.publish(Event::Delete(TaskDelete {
            container_id: c.id.clone(),
            pid: wire_pid(pid),
            exit_status,
            exited_at: exited_at.clone(),
            id: c.id.clone(),
            ..Default::default()
        }));
        Ok(DeleteResponse {
            pid: wire_pid(pid),
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> RpcResult<PidsResponse> {
        log_request("pids", &req);
        let c = self.container(&req.id)?;
        let pids =
            c.rt.pids(&c.id)
                .map_err(|e| runtime_err(&format!("pids of {}", c.id), e))?;
        let execs: HashMap<i32, String> = lock(&c.execs)
            .values()
            .map(|p| (p.state().pid, p.exec_id.clone()))
            .filter(|(pid, _)| *pid > 0)
            .collect();
        let processes = pids
            .into_iter()
            .map(|pid| {
                let info = execs.get(&pid).and_then(|exec_id| {
                    let d = containerd_shim_protos::shim::oci::ProcessDetails {
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    };
                    Some(Any {
                        type_url: "containerd.runc.v1.ProcessDetails".into(),
                        value: d.write_to_bytes().ok()?,
                        ..Default::default()
                    })
                });
                ProcessInfo {
                    pid: wire_pid(pid),
                    info: info.into(),
                    ..Default::default()
                }
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> RpcResult<Empty> {
        log_request("pause", &req);
        let c = self.container(&req.id)?;
        c.rt.set_paused(&c.id, true)
            .map_err(|e| runtime_err(&format!("pausing {}", c.id), e))?;
        self.events.publish(Event::Paused(TaskPaused {
            container_id: c.id.clone(),
            ..Default::default()
        }));
        Ok(Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> RpcResult<Empty> {
        log_request("resume", &req);
        let c = self.container(&req.id)?;
        c.rt.set_paused(&c.id, false)
            .map_err(|e| runtime_err(&format!("resuming {}", c.id), e))?;
        self.events.publish(Event::Resumed(TaskResumed {
            container_id: c.id.clone(),
            ..Default::default()
        }));
        Ok(Empty::new())
    }

    fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> RpcResult<Empty> {
        log_request("checkpoint", &req);
        let c = self.container(&req.id)?;
        let o = match req.options.as_ref().filter(|a| !a.value.is_empty()) {
            Some(a) => RuncCheckpointOptions::parse_from_bytes(&a.value).map_err(|e| {
                rpc_err(
                    Code::INVALID_ARGUMENT,
                    format!("checkpoint options ({}): {e}", a.type_url),
                )
            })?,
            None => RuncCheckpointOptions::default(),
        };
        let image = if o.image_path.is_empty() {
            req.path.clone()
        } else {
            o.image_path.clone()
        };
        if image.is_empty() {
            return Err(rpc_err(
                Code::INVALID_ARGUMENT,
                "checkpoint: no image path (path or options.image_path)".to_string(),
            ));
        }
        let cgroups_mode = if o.cgroups_mode.is_empty() {
            None
        } else {
            Some(
                o.cgroups_mode
                    .parse()
                    .map_err(|e| rpc_err(Code::INVALID_ARGUMENT, format!("checkpoint: {e}")))?,
            )
        };
        let empty_ns = cryo_runtime::checkpoint::empty_ns_bits(&o.empty_namespaces)
            .map_err(|e| rpc_err(Code::INVALID_ARGUMENT, format!("checkpoint: {e}")))?;
        let snapshot = image
            .strip_prefix(SNAPSHOT_IMAGE_PREFIX)
            .map(String::from)
            .filter(|n| !n.is_empty());
        let opts = cryo_runtime::CheckpointOptions {
            image_path: if snapshot.is_some() {
                PathBuf::new()
            } else {
                PathBuf::from(&image)
            },
            work_path: (!o.work_path.is_empty()).then(|| PathBuf::from(&o.work_path)),
            leave_running: !o.exit,
            snapshot,
            store: None,
            compression: Default::default(),
            lazy_pages: false,
            page_server: None,
            status_fd: None,
            flags: cryo_runtime::CriuFlags {
                tcp_established: o.open_tcp,
                ext_unix_sk: o.external_unix_sockets,
                shell_job: o.terminal,
                file_locks: o.file_locks,
                cgroups_mode,
                empty_ns,
                criu: c.settings.criu.clone(),
                gpu: cryo_runtime::GpuOptions::from_env(),
            },
        };
        {
            let _call = self.ops.runtime_call();
            c.rt.checkpoint(&c.id, &opts)
                .map_err(|e| runtime_err(&format!("checkpointing {}", c.id), e))?;
        }
        self.events.publish(Event::Checkpointed(TaskCheckpointed {
            container_id: c.id.clone(),
            checkpoint: image,
            ..Default::default()
        }));
        Ok(Empty::new())
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> RpcResult<Empty> {
        log_request("kill", &req);
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let sig = signal(req.signal)?;
        let (pid, exited) = {
            let st = p.state();
            (st.pid, st.exit.is_some())
        };
        if exited && !req.all {
            return Err(rpc_err(Code::NOT_FOUND, "process already finished"));
        }
        if req.exec_id.is_empty() {
            c.rt.kill(&c.id, sig, req.all)
                .map_err(|e| runtime_err(&format!("killing {}", c.id), e))?;
        } else {
            if pid <= 0 {
                return Err(rpc_err(
                    Code::FAILED_PRECONDITION,
                    format!("exec {} has not started", req.exec_id),
                ));
            }
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(|e| {
                rpc_err(
                    Code::UNKNOWN,
                    format!("kill {pid} (exec {}): {e}", req.exec_id),
                )
            })?;
        }
        Ok(Empty::new())
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> RpcResult<Empty> {
        log_request("exec", &req);
        let c = self.container(&req.id)?;
        if c.init.state().exit.is_some() {
            return Err(rpc_err(
                Code::FAILED_PRECONDITION,
                format!("container {} has stopped", c.id),
            ));
        }
        let spec: oci_spec::runtime::Process = match req.spec.as_ref() {
            Some(a) => serde_json::from_slice(&a.value).map_err(|e| {
                rpc_err(
                    Code::INVALID_ARGUMENT,
                    format!("exec {}: spec ({}): {e}", req.exec_id, a.type_url),
                )
            })?,
            None => {
                return Err(rpc_err(
                    Code::INVALID_ARGUMENT,
                    format!("exec {}: no process spec", req.exec_id),
                ))
            }
        };
        let mut execs = lock(&c.execs);
        if execs.contains_key(&req.exec_id) {
            return Err(rpc_err(
                Code::ALREADY_EXISTS,
                format!("exec {:?} already exists in {}", req.exec_id, c.id),
            ));
        }
        let io = ProcessIo::open(
            &req.stdin,
            &req.stdout,
            &req.stderr,
            req.terminal,
            &c.id,
            &self.namespace,
        )
        .map_err(|e| {
            rpc_err(
                Code::INVALID_ARGUMENT,
                format!("exec {}: stdio: {e:#}", req.exec_id),
            )
        })?;
        execs.insert(
            req.exec_id.clone(),
            Arc::new(Proc {
                exec_id: req.exec_id.clone(),
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                spec: Some(spec),
                io: Mutex::new(io),
                state: Mutex::new(ProcState::default()),
                exited: Condvar::new(),
            }),
        );
        drop(execs);
        self.events.publish(Event::ExecAdded(TaskExecAdded {
            container_id: c.id.clone(),
            exec_id: req.exec_id,
            ..Default::default()
        }));
        Ok(Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> RpcResult<Empty> {
        log_request("resize_pty", &req);
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let (w, h) = (
            u16::try_from(req.width).unwrap_or(u16::MAX),
            u16::try_from(req.height).unwrap_or(u16::MAX),
        );
        lock(&p.io)
            .resize(w, h)
            .map_err(|e| rpc_err(Code::FAILED_PRECONDITION, format!("resize: {e:#}")))?;
        Ok(Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> RpcResult<Empty> {
        log_request("close_io", &req);
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.stdin {
            lock(&p.io).close_stdin();
        }
        Ok(Empty::new())
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> RpcResult<Empty> {
        log_request("update", &req);
        let c = self.container(&req.id)?;
        let Some(a) = req.resources.as_ref() else {
            return Err(rpc_err(Code::INVALID_ARGUMENT, "update: no resources"));
        };
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&a.value)
            .map_err(|e| {
                rpc_err(
                    Code::INVALID_ARGUMENT,
                    format!("update: resources ({}): {e}", a.type_url),
                )
            })?;
        c.rt.update(&c.id, &resources)
            .map_err(|e| runtime_err(&format!("updating {}", c.id), e))?;
        Ok(Empty::new())
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> RpcResult<WaitResponse> {
        log_request("wait", &req);
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let (status, at) = p.wait();
        Ok(WaitResponse {
            exit_status: status,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> RpcResult<StatsResponse> {
        log_request("stats", &req);
        let c = self.container(&req.id)?;
        let s =
            c.rt.stats(&c.id)
                .map_err(|e| runtime_err(&format!("stats of {}", c.id), e))?;
        let value = stats::metrics(&s)
            .write_to_bytes()
            .map_err(|e| rpc_err(Code::INTERNAL, format!("encoding metrics: {e}")))?;
        Ok(StatsResponse {
            stats: MessageField::some(Any {
                type_url: stats::METRICS_TYPE.into(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> RpcResult<ConnectResponse> {
        log_request("connect", &req);
        let task_pid = self
            .container(&req.id)
            .map(|c| wire_pid(c.init.state().pid))
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: format!("cryo-shim {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, _req: ShutdownRequest) -> RpcResult<Empty> {
        if lock(&self.containers).is_empty() {
            let _ = lock(&self.shutdown).send(());
        }
        Ok(Empty::new())
    }
}

/// The task methods under both service names containerd uses: `containerd.task.v2.Task`
/// (containerd 1.6 and 1.7) and `containerd.task.v3.Task` (2.x, same messages), each giving
/// back the memory a request left behind ([`crate::trim`]).
fn task_methods(
    service: Arc<Service>,
) -> HashMap<String, Box<dyn ttrpc::MethodHandler + Send + Sync>> {
    let v2 = create_task(service.clone());
    let v3 = create_task(service).into_iter().map(|(k, v)| {
        (
            k.replacen("containerd.task.v2.", "containerd.task.v3.", 1),
            v,
        )
    });
    v2.into_iter()
        .chain(v3)
        .map(|(k, v)| {
            let trimmed: Box<dyn ttrpc::MethodHandler + Send + Sync> = Box::new(Trimmed(v));
            (k, trimmed)
        })
        .collect()
}

/// Logs through the `log` fifo containerd reads in the bundle (non-blocking: a containerd
/// that does not read loses lines, never stalls the shim).
fn init_logging(debug: bool) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("log")
        .or_else(|_| File::open("/dev/null"));
    let Ok(file) = file else { return };
    // A plain level, not an EnvFilter: its regex engine would stay resident in every shim.
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
}

/// Serves the task API on fd 3 (the socket `start` bound) until Shutdown with no containers.
pub fn serve(args: &Args) -> Result<()> {
    reaper::block_sigchld().context("blocking SIGCHLD")?;
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("becoming a subreaper");
    }
    // SAFETY: fcntl on fd 3 with integer arguments; containers must not inherit the socket.
    if unsafe { libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("fd 3: the shim is started by `start` with its socket as fd 3");
    }
    init_logging(args.debug);
    // Each thread would get a malloc arena of its own; the shim allocates little, and what
    // it keeps resident counts per container.
    // SAFETY: mallopt with integer arguments, before other threads exist.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let (tx, rx) = mpsc::channel();
    let ops = Ops::default();
    let service = Arc::new(Service {
        namespace: args.namespace.clone(),
        events: Publisher::new(std::env::var("TTRPC_ADDRESS").ok(), args.namespace.clone()),
        containers: Mutex::new(HashMap::new()),
        pids: Mutex::new(HashMap::new()),
        ops: ops.clone(),
        shutdown: Mutex::new(tx),
    });
    let s = service.clone();
    reaper::spawn(ops, move |exits| s.on_exits(exits)).context("starting the reaper")?;
    let mut server = ttrpc::Server::new()
        .add_listener(3)
        .context("serving fd 3")?
        .register_service(task_methods(service))
        .set_thread_count_default(2)
        .set_thread_count_max(256);
    server.start().context("starting the ttrpc server")?;
    tracing::info!(id = %args.id, namespace = %args.namespace, "serving");
    let _ = rx.recv();
    tracing::info!("shutting down: no containers left");
    if let Ok(addr) = std::fs::read_to_string("address") {
        if let Some(path) = addr.trim().strip_prefix("unix://") {
            let _ = std::fs::remove_file(path);
        }
    }
    // Let the Shutdown reply reach containerd, then go without waiting for requests that
    // block (a Wait of a process that is gone with its container).
    std::thread::sleep(Duration::from_millis(20));
    std::mem::forget(server);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn runc_options_set_root_binary_and_criu() {
        let o = Options {
            root: "/run/x".into(),
            binary_name: "/opt/cryo".into(),
            criu_path: "/opt/criu".into(),
            ..Default::default()
        };
        let a = any("containerd.runc.v1.Options", o.write_to_bytes().unwrap());
        let s = Settings::from_options(Some(&a)).unwrap();
        assert_eq!(s.root.as_deref(), Some(Path::new("/run/x")));
        assert_eq!(s.binary.as_deref(), Some(Path::new("/opt/cryo")));
        assert_eq!(s.criu.as_deref(), Some(Path::new("/opt/criu")));
        assert!(Settings::from_options(None).unwrap().root.is_none());
    }

    #[test]
    fn cri_options_fall_back_to_defaults_and_others_are_refused() {
        let a = any("runtimeoptions.v1.Options", vec![10, 1, b'x']);
        assert!(Settings::from_options(Some(&a)).unwrap().binary.is_none());
        let a = any("example.com/Other", vec![1]);
        let e = Settings::from_options(Some(&a)).unwrap_err();
        assert!(e.contains("example.com/Other"), "{e}");
    }

    fn bundle_with(annotations: serde_json::Value) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({ "annotations": annotations });
        std::fs::write(d.path().join("config.json"), spec.to_string()).unwrap();
        d
    }

    #[test]
    fn the_snapshot_annotation_asks_for_a_lazy_restore() {
        let req = CreateTaskRequest::default();
        let d = bundle_with(serde_json::json!({ SNAPSHOT_ANNOTATION: "model:warm" }));
        match restore_source(&req, d.path(), &bundle_spec(d.path())).unwrap() {
            Some(Restore::Snapshot { name, lazy }) => {
                assert_eq!(name, "model:warm");
                assert!(lazy);
            }
            other => panic!("{other:?}"),
        }
        let d = bundle_with(serde_json::json!({
            SNAPSHOT_ANNOTATION: "m", SNAPSHOT_LAZY_ANNOTATION: "false"
        }));
        assert!(matches!(
            restore_source(&req, d.path(), &bundle_spec(d.path())).unwrap(),
            Some(Restore::Snapshot { lazy: false, .. })
        ));
        let d = bundle_with(serde_json::json!({}));
        assert!(restore_source(&req, d.path(), &bundle_spec(d.path()))
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_pod_sandbox_cold_starts_and_its_containers_restore() {
        let req = CreateTaskRequest::default();
        let d = bundle_with(serde_json::json!({
            SNAPSHOT_ANNOTATION: "model:warm", CRI_CONTAINER_TYPE_ANNOTATION: "sandbox"
        }));
        assert!(restore_source(&req, d.path(), &bundle_spec(d.path()))
            .unwrap()
            .is_none());
        let d = bundle_with(serde_json::json!({
            SNAPSHOT_ANNOTATION: "model:warm", CRI_CONTAINER_TYPE_ANNOTATION: "container"
        }));
        assert!(matches!(
            restore_source(&req, d.path(), &bundle_spec(d.path())).unwrap(),
            Some(Restore::Snapshot { name, .. }) if name == "model:warm"
        ));
    }

    #[test]
    fn the_gpu_map_annotation_is_parsed_at_create() {
        let d = bundle_with(serde_json::json!({ CUDA_GPU_MAP_ANNOTATION: "0=1" }));
        let m = gpu_map_annotation(d.path(), &bundle_spec(d.path())).unwrap();
        assert_eq!(m, Some("0=1".parse().unwrap()));
        let d = bundle_with(serde_json::json!({}));
        assert_eq!(
            gpu_map_annotation(d.path(), &bundle_spec(d.path())).unwrap(),
            None
        );
        let d = bundle_with(serde_json::json!({ CUDA_GPU_MAP_ANNOTATION: "0" }));
        let e = gpu_map_annotation(d.path(), &bundle_spec(d.path()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("io.cryo.cuda-gpu-map") && e.contains("expected OLD=NEW"),
            "{e}"
        );
    }

    #[test]
    fn bad_annotations_name_the_key() {
        let req = CreateTaskRequest::default();
        let d = bundle_with(serde_json::json!({ SNAPSHOT_ANNOTATION: "" }));
        let e = restore_source(&req, d.path(), &bundle_spec(d.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(SNAPSHOT_ANNOTATION), "{e}");
        let d = bundle_with(serde_json::json!({
            SNAPSHOT_ANNOTATION: "m", SNAPSHOT_LAZY_ANNOTATION: "maybe"
        }));
        let e = restore_source(&req, d.path(), &bundle_spec(d.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(SNAPSHOT_LAZY_ANNOTATION), "{e}");
    }

    #[test]
    fn pid_namespaces() {
        let d = tempfile::tempdir().unwrap();
        let write = |ns: serde_json::Value| {
            let spec = serde_json::json!({ "linux": { "namespaces": ns } });
            std::fs::write(d.path().join("config.json"), spec.to_string()).unwrap();
        };
        write(serde_json::json!([{ "type": "pid" }, { "type": "mount" }]));
        assert!(has_own_pid_ns(&bundle_spec(d.path())));
        write(serde_json::json!([{ "type": "pid", "path": "/proc/1/ns/pid" }]));
        assert!(!has_own_pid_ns(&bundle_spec(d.path())));
        write(serde_json::json!([{ "type": "mount" }]));
        assert!(!has_own_pid_ns(&bundle_spec(d.path())));
    }

    #[test]
    fn a_checkpoint_directory_wins() {
        let req = CreateTaskRequest {
            checkpoint: "/tmp/ck".into(),
            ..Default::default()
        };
        let d = bundle_with(serde_json::json!({ SNAPSHOT_ANNOTATION: "m" }));
        assert!(matches!(
            restore_source(&req, d.path(), &bundle_spec(d.path())).unwrap(),
            Some(Restore::Image(p)) if p == Path::new("/tmp/ck")
        ));
    }
}

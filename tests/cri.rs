//! Kubernetes' path to cryo: kubelet → containerd's CRI plugin → `containerd-shim-cryo-v2`.
//! A private containerd (Debian's 1.6) with its CRI plugin on and a `cryo` runtime handler,
//! a sandbox ("pause") image built from the busybox rootfs whose entrypoint sleeps, and
//! host-network pods, so that no CNI is needed. The test speaks CRI v1 over containerd's
//! socket as kubelet does (the `k8s-cri` crate's client); it does not cover kubelet itself.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use common::clients::*;
use common::*;

/// The runtime handler pods ask for (a RuntimeClass's `handler`).
const HANDLER: &str = "cryo";
const SANDBOX_IMAGE: &str = "localhost/pause:latest";

/// The shim binary, built beside `cryo` by `cargo build --workspace` (scripts/test does).
fn shim_bin() -> PathBuf {
    let p = cryo_bin().with_file_name("containerd-shim-cryo-v2");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// containerd's CRI configuration: runc as the default handler (a node's usual setup; a
/// `runtimes` table without it fails the plugin) and the `cryo` handler with `io.cryo.*` annotations passed
/// through (pod and container), our sandbox image, CNI directories of its own (empty: pods
/// use the host network) and a streaming server on a free loopback port.
fn cri_config(dir: &Path) -> String {
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    format!(
        r#"[{cri}]
  sandbox_image = "{SANDBOX_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = {restrict_oom}
[{cri}.cni]
  bin_dir = "{cni}/bin"
  conf_dir = "{cni}/net.d"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.{HANDLER}]
  runtime_type = "io.containerd.cryo.v2"
  pod_annotations = ["io.cryo.*"]
  container_annotations = ["io.cryo.*"]
"#,
        cni = dir.join("cni").display(),
        restrict_oom = !has_cap_sys_resource(),
    )
}

/// Whether this process may lower oom_score_adj (CAP_SYS_RESOURCE). Without it, as in
/// some CI containers, sandboxes' -998 fails in the init (runc's too): containerd's
/// `restrict_oom_score_adj` keeps pods at containerd's own score there, as on a rootless node.
fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// A CRI v1 runtime client on containerd's socket, each call with a deadline.
struct Client {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Client {
    fn connect(sock: &Path) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let path = sock.to_path_buf();
        // The URI is a placeholder: the connector dials the unix socket.
        let channel = rt
            .block_on(
                tonic::transport::Endpoint::from_static("http://localhost").connect_with_connector(
                    tower::service_fn(move |_: tonic::transport::Uri| {
                        let path = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                        }
                    }),
                ),
            )
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", sock.display()));
        Client {
            rt,
            client: RuntimeServiceClient::new(channel),
        }
    }

    fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let fut = f(self.client.clone());
        // The timer needs the runtime: make it inside.
        match self
            .rt
            .block_on(async { tokio::time::timeout(CMD_TIMEOUT, fut).await })
        {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer to {what} in {CMD_TIMEOUT:?}"
            ))),
        }
    }
}

/// The namespaces kubelet asks for in a `hostNetwork: true` pod.
fn host_network() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

struct Kube {
    cri: Client,
    c: Containerd,
    busybox: String,
    tag: String,
    /// The pods' cgroup parent, removed at the end.
    cgroup_parent: String,
    /// Pods still to be removed (at the end, if the test failed first).
    pods: Vec<String>,
    /// Their containers' ids (cgroups under the parent).
    cgroups: Vec<String>,
}

impl Kube {
    /// A containerd with CRI on that finds the cryo shim (and `cryo` beside it) first on
    /// PATH, the busybox and sandbox images imported; `None` (after printing why) where a
    /// test cannot run.
    fn start(containerd: &Path, ctr: &Path, tag: &str, env: &[(&str, &Path)]) -> Option<Kube> {
        if !nix_is_root() {
            println!("skipped: needs root");
            return None;
        }
        if which("umoci").is_none() {
            println!("skipped: umoci is not installed (needed to build the images)");
            return None;
        }
        let shim = shim_bin();
        let c = Containerd::start_cri(containerd, ctr, shim.parent(), env, &cri_config);
        let busybox = c.import_busybox();
        // The pod's sandbox: a process that holds the pod's namespaces and waits to be killed.
        let pause = c.import_image(
            "pause",
            &["--config.entrypoint", "sleep", "--config.cmd", "2147483647"],
        );
        assert_eq!(pause, SANDBOX_IMAGE);
        let cri = Client::connect(&c.dir.path().join("c.sock"));
        Some(Kube {
            cri,
            c,
            busybox,
            tag: tag.to_string(),
            cgroup_parent: format!("/cryo-cri-{tag}-{}", std::process::id()),
            pods: Vec::new(),
            cgroups: Vec::new(),
        })
    }

    /// A new client after containerd restarted, once CRI answers (it recovers its pods
    /// from the shims first).
    fn reconnect(&mut self) {
        let start = Instant::now();
        loop {
            self.cri = Client::connect(&self.c.dir.path().join("c.sock"));
            let req = cri::VersionRequest::default();
            match self
                .cri
                .call("Version", |mut c| async move { c.version(req).await })
            {
                Ok(_) => return,
                Err(e) => assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "CRI did not come back: {e}\n{}",
                    self.c.log()
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn fail(&self, what: &str, e: tonic::Status) -> ! {
        panic!("CRI {what}: {e}\ncontainerd log:\n{}", self.c.log())
    }

    fn sandbox_config(&self, name: &str, annotations: &[(&str, &str)]) -> cri::PodSandboxConfig {
        let logs = self.c.dir.path().join("pods").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}-{}", self.tag),
                namespace: "default".to_string(),
                attempt: 0,
            }),
            // kubelet leaves it empty for host-network pods: they share the node's UTS
            // namespace, where a hostname cannot be set (runc and cryo refuse the spec).
            hostname: String::new(),
            log_directory: logs.to_str().unwrap().to_string(),
            annotations: owned(annotations),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with the `cryo` handler; returns the pod's id and config.
    fn run_pod(
        &mut self,
        name: &str,
        annotations: &[(&str, &str)],
    ) -> (String, cri::PodSandboxConfig) {
        let config = self.sandbox_config(name, annotations);
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: HANDLER.to_string(),
        };
        let id = self
            .cri
            .call("RunPodSandbox", |mut c| async move {
                c.run_pod_sandbox(req).await
            })
            .unwrap_or_else(|e| self.fail("RunPodSandbox", e))
            .pod_sandbox_id;
        self.pods.push(id.clone());
        self.cgroups.push(id.clone());
        (id, config)
    }

    /// A busybox container running `script` under `sh -c`, logging to NAME.log.
    fn container_config(
        &self,
        name: &str,
        script: &str,
        annotations: &[(&str, &str)],
    ) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.busybox.clone(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            annotations: owned(annotations),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// CreateContainer and StartContainer; returns the container's id.
    fn create_and_start(
        &mut self,
        pod: &str,
        sandbox: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        };
        let id = self
            .cri
            .call("CreateContainer", |mut c| async move {
                c.create_container(req).await
            })
            .unwrap_or_else(|e| self.fail("CreateContainer", e))
            .container_id;
        self.cgroups.push(id.clone());
        let req = cri::StartContainerRequest {
            container_id: id.clone(),
        };
        self.cri
            .call("StartContainer", |mut c| async move {
                c.start_container(req).await
            })
            .map(|_| id)
    }

    /// [`Kube::create_and_start`] of a [`Kube::container_config`].
    fn start_container(
        &mut self,
        pod: &str,
        sandbox: &cri::PodSandboxConfig,
        name: &str,
        script: &str,
        annotations: &[(&str, &str)],
    ) -> Result<String, tonic::Status> {
        let config = self.container_config(name, script, annotations);
        self.create_and_start(pod, sandbox, config)
    }

    fn remove_container(&self, id: &str) {
        let req = cri::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.cri
            .call("RemoveContainer", |mut c| async move {
                c.remove_container(req).await
            })
            .unwrap_or_else(|e| self.fail("RemoveContainer", e));
    }

    fn status(&self, id: &str) -> cri::ContainerStatus {
        let req = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.cri
            .call("ContainerStatus", |mut c| async move {
                c.container_status(req).await
            })
            .unwrap_or_else(|e| self.fail("ContainerStatus", e))
            .status
            .unwrap()
    }

    fn wait_state(&self, id: &str, want: cri::ContainerState) -> cri::ContainerStatus {
        let start = Instant::now();
        loop {
            let st = self.status(id);
            if st.state == want as i32 {
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{id} never became {want:?}: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exec_sync(&self, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
        let req = cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        };
        self.cri
            .call("ExecSync", |mut c| async move { c.exec_sync(req).await })
            .unwrap_or_else(|e| self.fail("ExecSync", e))
    }

    fn sandbox_state(&self, pod: &str) -> i32 {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_string(),
            verbose: false,
        };
        self.cri
            .call("PodSandboxStatus", |mut c| async move {
                c.pod_sandbox_status(req).await
            })
            .unwrap_or_else(|e| self.fail("PodSandboxStatus", e))
            .status
            .unwrap()
            .state
    }

    /// StopPodSandbox and RemovePodSandbox (its containers go with it).
    fn remove_pod(&mut self, pod: &str) {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        };
        self.cri
            .call("StopPodSandbox", |mut c| async move {
                c.stop_pod_sandbox(req).await
            })
            .unwrap_or_else(|e| self.fail("StopPodSandbox", e));
        assert_eq!(
            self.sandbox_state(pod),
            cri::PodSandboxState::SandboxNotready as i32
        );
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        };
        self.cri
            .call("RemovePodSandbox", |mut c| async move {
                c.remove_pod_sandbox(req).await
            })
            .unwrap_or_else(|e| self.fail("RemovePodSandbox", e));
        self.pods.retain(|p| p != pod);
    }

    /// The serving shims of this containerd (CRI's namespace is shared by every test's
    /// containerd: they differ in the address).
    fn shim_pids(&self) -> Vec<i32> {
        let address = self.c.dir.path().join("c.sock");
        let address = address.as_os_str().as_encoded_bytes();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-cryo-v2"));
            if is_shim
                && args
                    .windows(2)
                    .any(|w| w[0] == b"-address" && w[1] == address)
            {
                out.push(pid);
            }
        }
        out
    }

    fn wait_no_shim(&self) {
        let start = Instant::now();
        while !self.shim_pids().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the shim outlived its pod: {:?}",
                self.shim_pids()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the container's CRI log (`TIMESTAMP STREAM TAG LINE`) has a line `want`.
    fn wait_log(&self, path: &str, want: &str) {
        let start = Instant::now();
        loop {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            if log.lines().any(|l| l.splitn(4, ' ').nth(3) == Some(want)) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{path} has no line {want:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        // Whatever a failed test left: its pods, and with them their shims.
        for pod in std::mem::take(&mut self.pods) {
            let stop = cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            };
            let _ = self.cri.call("StopPodSandbox", |mut c| async move {
                c.stop_pod_sandbox(stop).await
            });
            let rm = cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            };
            let _ = self.cri.call("RemovePodSandbox", |mut c| async move {
                c.remove_pod_sandbox(rm).await
            });
        }
        let children: Vec<&str> = self.cgroups.iter().map(String::as_str).collect();
        remove_cgroup(&self.cgroup_parent, &children);
    }
}

fn owned(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `cryo state ID` under cryo's default root (the shim's): the pod went through cryo.
fn cryo_state(id: &str) -> Option<Value> {
    let o = Command::new(cryo_bin())
        .args(["state", id])
        .output()
        .unwrap();
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

fn cryo_status(id: &str) -> Option<String> {
    cryo_state(id).and_then(|st| st["status"].as_str().map(String::from))
}

/// The command line of a container's init, as cryo knows its pid, once it has executed
/// (as with runc, Start returns when the init was told to go, maybe before its execve).
fn init_cmdline(id: &str) -> String {
    let st = cryo_state(id).unwrap_or_else(|| panic!("cryo has no {id}"));
    let pid = st["pid"].as_i64().unwrap();
    let start = Instant::now();
    loop {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        // Empty while the execve replaces the image.
        let executed = !cmdline.is_empty() && !cmdline.starts_with("cryo init");
        if executed || start.elapsed() > Duration::from_secs(10) {
            return cmdline.trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The memory limit of a host process's cgroup (v1 `memory.limit_in_bytes`, v2 `memory.max`).
fn memory_limit(pid: i64) -> Option<i64> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let file = cgroups.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            Some(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
        } else if controllers.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        {
            Some(format!("/sys/fs/cgroup{path}/memory.max"))
        } else {
            None
        }
    })?;
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// A namespace of a host process (`readlink /proc/PID/ns/KIND`).
fn ns_of(pid: i64, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .to_string()
}

/// One pod through CRI as kubelet drives it: sandbox, container, status, exec, stats, stop
/// with the process's own exit code, removal; one shim for the pod, gone after it.
fn cri_flow(containerd: &Path, ctr: &Path, tag: &str) {
    let Some(mut k) = Kube::start(containerd, ctr, tag, &[]) else {
        return;
    };
    let t0 = Instant::now();
    let (pod, sandbox) = k.run_pod("web", &[]);
    assert_eq!(
        k.sandbox_state(&pod),
        cri::PodSandboxState::SandboxReady as i32
    );
    assert_eq!(
        cryo_status(&pod).as_deref(),
        Some("running"),
        "sandbox {pod}"
    );
    assert_eq!(init_cmdline(&pod), "sleep 2147483647");
    let sandbox_up = t0.elapsed();

    let script = "echo started; trap 'echo stopping; exit 7' TERM; \
                  while true; do sleep 0.1; done";
    let id = k
        .start_container(&pod, &sandbox, "main", script, &[])
        .unwrap_or_else(|e| k.fail("StartContainer", e));
    let st = k.wait_state(&id, cri::ContainerState::ContainerRunning);
    let container_up = t0.elapsed();
    assert_eq!(
        cryo_status(&id).as_deref(),
        Some("running"),
        "container {id}"
    );
    k.wait_log(&st.log_path, "started");

    // One shim serves the pod: sandbox and container are grouped by the sandbox id.
    assert_eq!(k.shim_pids().len(), 1, "one shim per pod");

    let r = k.exec_sync(&id, &["echo", "hi"]);
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stdout).as_ref()),
        (0, "hi\n"),
        "{r:?}"
    );
    let r = k.exec_sync(&id, &["sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stderr).as_ref()),
        (3, "oops\n"),
        "{r:?}"
    );
    // The container shares the sandbox's IPC namespace (the pod's), not its pid namespace.
    let sandbox_pid = cryo_state(&pod).unwrap()["pid"].as_i64().unwrap();
    let r = k.exec_sync(
        &id,
        &[
            "sh",
            "-c",
            "readlink /proc/self/ns/ipc; readlink /proc/self/ns/pid",
        ],
    );
    let out = String::from_utf8_lossy(&r.stdout).to_string();
    let ns: Vec<&str> = out.lines().collect();
    assert_eq!(ns.len(), 2, "{r:?}");
    assert_eq!(ns[0], ns_of(sandbox_pid, "ipc"));
    assert_ne!(ns[1], ns_of(sandbox_pid, "pid"));

    let req = cri::ContainerStatsRequest {
        container_id: id.clone(),
    };
    let stats = k
        .cri
        .call("ContainerStats", |mut c| async move {
            c.container_stats(req).await
        })
        .unwrap_or_else(|e| k.fail("ContainerStats", e))
        .stats
        .unwrap();
    let cpu = stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value;
    let memory = stats.memory.unwrap().working_set_bytes.unwrap().value;
    assert!(
        cpu > 0 && memory > 0,
        "cpu {cpu} ns, working set {memory} B"
    );

    let req = cri::ListContainersRequest {
        filter: Some(cri::ContainerFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        }),
    };
    let list = k
        .cri
        .call("ListContainers", |mut c| async move {
            c.list_containers(req).await
        })
        .unwrap_or_else(|e| k.fail("ListContainers", e))
        .containers;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].id, id);
    assert_eq!(list[0].state, cri::ContainerState::ContainerRunning as i32);

    // UpdateContainerResources (kubelet's in-place resize) reaches the container's cgroup.
    let limit = 96 << 20;
    let req = cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: limit,
            ..Default::default()
        }),
        ..Default::default()
    };
    k.cri
        .call("UpdateContainerResources", |mut c| async move {
            c.update_container_resources(req).await
        })
        .unwrap_or_else(|e| k.fail("UpdateContainerResources", e));
    let pid = cryo_state(&id).unwrap()["pid"].as_i64().unwrap();
    assert_eq!(memory_limit(pid), Some(limit));

    // containerd restarts (an upgrade, a crash): CRI finds the pod and its container again
    // through the shim, which kept them running.
    k.c.restart();
    k.reconnect();
    let st = k.wait_state(&id, cri::ContainerState::ContainerRunning);
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert_eq!(
        k.sandbox_state(&pod),
        cri::PodSandboxState::SandboxReady as i32
    );
    let r = k.exec_sync(&id, &["echo", "after-restart"]);
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stdout).as_ref()),
        (0, "after-restart\n"),
        "{r:?}"
    );
    assert_eq!(k.shim_pids().len(), 1, "one shim per pod");

    // StopContainer: SIGTERM, which the shell traps and exits on with its own code.
    let req = cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    };
    k.cri
        .call("StopContainer", |mut c| async move {
            c.stop_container(req).await
        })
        .unwrap_or_else(|e| k.fail("StopContainer", e));
    let st = k.wait_state(&id, cri::ContainerState::ContainerExited);
    assert_eq!(st.exit_code, 7, "{st:?}");
    k.wait_log(&st.log_path, "stopping");
    assert_eq!(k.shim_pids().len(), 1, "the sandbox still has its shim");

    k.remove_container(&id);
    assert_eq!(cryo_status(&id), None, "cryo still has {id}");

    // The pod's shim takes a new container after one is gone: a terminal this time (kubelet's
    // `tty: true`), whose output the shim copies from the pty into CRI's log.
    let mut config = k.container_config("tty", "tty; echo tty-done; exit 4", &[]);
    config.tty = true;
    let tty = k
        .create_and_start(&pod, &sandbox, config)
        .unwrap_or_else(|e| k.fail("StartContainer (tty)", e));
    let st = k.wait_state(&tty, cri::ContainerState::ContainerExited);
    assert_eq!(st.exit_code, 4, "{st:?}");
    k.wait_log(&st.log_path, "/dev/pts/0");
    k.wait_log(&st.log_path, "tty-done");
    assert_eq!(k.shim_pids().len(), 1, "one shim per pod");
    k.remove_container(&tty);

    k.remove_pod(&pod);
    k.wait_no_shim();
    assert_eq!(cryo_status(&pod), None, "cryo still has sandbox {pod}");

    // A sandbox that dies on its own: the shim's exit event makes the pod NOTREADY (kubelet
    // then recreates it), and the pod is removed as usual.
    let (doomed, _) = k.run_pod("doomed", &[]);
    let pid = cryo_state(&doomed).unwrap()["pid"].as_i64().unwrap();
    // SAFETY: kill on the sandbox's init, a process of this test's own pod.
    unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) };
    let start = Instant::now();
    while k.sandbox_state(&doomed) != cri::PodSandboxState::SandboxNotready as i32 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{doomed} still ready after its sandbox died"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    k.remove_pod(&doomed);
    k.wait_no_shim();
    println!(
        "CRI pod through cryo: sandbox ready in {sandbox_up:?}, container running in \
         {container_up:?}, whole flow {:?}",
        t0.elapsed()
    );
}

/// A busybox shell that counts on its stdout (CRI's log) every 50 ms. Not into a file: a
/// snapshot holds no rootfs changes, and a replica restored while the shell held the file
/// open would miss it.
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done";

/// The numbers a COUNTER container has logged, in order.
fn counts(k: &Kube, id: &str) -> Vec<u64> {
    let log = std::fs::read_to_string(k.status(id).log_path).unwrap_or_default();
    // `TIMESTAMP STREAM TAG LINE`; a last line without its newline may be partial.
    log.lines()
        .filter(|l| l.split(' ').nth(2) == Some("F"))
        .filter_map(|l| l.splitn(4, ' ').nth(3)?.parse().ok())
        .collect()
}

/// The counter a COUNTER container has reached (0 before its first line).
fn count(k: &Kube, id: &str) -> u64 {
    counts(k, id).last().copied().unwrap_or(0)
}

/// Waits until the counter of `id` passes `floor`.
fn assert_counts_past(k: &Kube, id: &str, floor: u64) {
    let start = Instant::now();
    loop {
        let n = count(k, id);
        if n > floor {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{id}: counter stuck at {n} (waiting for {floor})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A replica restored from a snapshot taken past `floor` goes on counting from there, in
/// its own log: its first number is past `floor`, not 1.
fn assert_resumed(k: &Kube, id: &str, floor: u64) {
    assert_counts_past(k, id, floor + 1);
    let first = counts(k, id)[0];
    assert!(
        first > floor,
        "{id} started over at {first} (snapshot past {floor})"
    );
}

/// The serverless path through Kubernetes: a warmed-up pod's container is snapshotted into
/// the store while it runs (`cryo checkpoint --snapshot`), then pods start from it, one
/// through a container annotation and one through a pod annotation (which containerd also
/// passes to the pod's sandbox: that must cold-start).
fn cri_snapshot_start(containerd: &Path, ctr: &Path, tag: &str) {
    if nix_is_root() {
        if let Err(e) = cryo_snapshot::criu::Criu::locate(None) {
            println!("skipped: {e}");
            return;
        }
    }
    let store = tempfile::Builder::new()
        .prefix("cryo-cri-store-")
        .tempdir()
        .unwrap();
    let Some(mut k) = Kube::start(containerd, ctr, tag, &[("CRYO_STORE", store.path())]) else {
        return;
    };
    let (warm_pod, warm_sandbox) = k.run_pod("warm", &[]);
    let warm = k
        .start_container(&warm_pod, &warm_sandbox, "counter", COUNTER, &[])
        .unwrap_or_else(|e| k.fail("StartContainer", e));
    k.wait_state(&warm, cri::ContainerState::ContainerRunning);
    assert_counts_past(&k, &warm, 3);
    let name = format!("cri-warm-{}", std::process::id());
    let t = Instant::now();
    let o = Command::new(cryo_bin())
        .args(["checkpoint", "--store"])
        .arg(store.path())
        .args(["--leave-running", "--snapshot", &name, &warm])
        .output()
        .unwrap();
    assert!(o.status.success(), "cryo checkpoint: {o:?}");
    let checkpoint = t.elapsed();
    let at = count(&k, &warm);
    k.wait_state(&warm, cri::ContainerState::ContainerRunning);

    let annotation = [("io.cryo.snapshot", name.as_str())];
    let (pod1, sandbox1) = k.run_pod("replica-c", &[]);
    let t = Instant::now();
    let r1 = k
        .start_container(&pod1, &sandbox1, "counter", "sh", &annotation)
        .unwrap_or_else(|e| k.fail("StartContainer (container annotation)", e));
    k.wait_state(&r1, cri::ContainerState::ContainerRunning);
    let restore = t.elapsed();
    assert_resumed(&k, &r1, 3);
    let r = k.exec_sync(&r1, &["echo", "hi"]);
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stdout).as_ref()),
        (0, "hi\n"),
        "ExecSync in a restored container: {r:?}"
    );

    let (pod2, sandbox2) = k.run_pod("replica-p", &annotation);
    assert_eq!(
        init_cmdline(&pod2),
        "sleep 2147483647",
        "the sandbox of a pod with the snapshot annotation"
    );
    let r2 = k
        .start_container(&pod2, &sandbox2, "counter", "sh", &[])
        .unwrap_or_else(|e| k.fail("StartContainer (pod annotation)", e));
    k.wait_state(&r2, cri::ContainerState::ContainerRunning);
    assert_resumed(&k, &r2, 3);
    assert_counts_past(&k, &warm, at);

    // A missing snapshot fails the start and names it; the pod's shim keeps serving.
    let missing = [("io.cryo.snapshot", "no-such-snapshot")];
    let e = k
        .start_container(&pod1, &sandbox1, "missing", "sh", &missing)
        .expect_err("a start from a missing snapshot");
    assert!(e.message().contains("no-such-snapshot"), "{e}");
    let now = count(&k, &r1);
    assert_counts_past(&k, &r1, now);

    for pod in [warm_pod, pod1, pod2] {
        k.remove_pod(&pod);
    }
    k.wait_no_shim();
    println!(
        "CRI snapshot-start: checkpoint {checkpoint:?}, StartContainer to RUNNING {restore:?}"
    );
}

#[test]
fn kubernetes_cri_pod_through_the_cryo_shim() {
    if let Some((c, t)) = containerd_1_6() {
        cri_flow(&c, &t, "flow");
    }
}

#[test]
fn kubernetes_cri_snapshot_start_through_the_cryo_shim() {
    if let Some((c, t)) = containerd_1_6() {
        cri_snapshot_start(&c, &t, "snap");
    }
}

#[test]
fn kubernetes_cri_pod_through_the_cryo_shim_containerd_2() {
    if let Some((c, t)) = containerd_2() {
        cri_flow(&c, &t, "flow2");
    }
}

#[test]
fn kubernetes_cri_snapshot_start_through_the_cryo_shim_containerd_2() {
    if let Some((c, t)) = containerd_2() {
        cri_snapshot_start(&c, &t, "snap2");
    }
}

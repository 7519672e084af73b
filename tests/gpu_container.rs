//! CUDA processes inside a cryo container, checkpointed and restored with the CLI through the
//! fake CUDA driver (the `cryo-fakecuda` crate): the driver steps come from cryo's own code
//! (`cryo checkpoint` / `cryo restore` load the fake with `--libcuda`), CRIU dumps and restores
//! the processes, and their "device" memory must come back bit-identical.
//!
//! The container runs two helper CUDA processes: this test binary, bound read-only at /helper
//! and re-executed with `CRYO_GPU_CONTAINER_HELPER` set, finding the fake as `libcuda.so.1`
//! through `LD_LIBRARY_PATH` (bound at /fakecuda) with cudarc. Each fills device buffers with a
//! pattern of its own and answers requests through files in /io (a read-write bind): a request
//! copies every buffer back from the device and returns its checksum, so a helper that is
//! locked answers only once unlocked. The rootfs is examples/python-bundle.sh's (busybox and
//! the host's /usr), which runs a dynamically linked binary.
//!
//! Needs root, CRIU, busybox-static and the fake built (`cargo build --workspace
//! --all-targets`: target/<profile>/libfakecuda.so); says "skipped:" otherwise. The real-GPU
//! variant is `#[ignore]`d: scripts/gpu-check runs it.

mod common;

use std::ffi::OsStr;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// The environment variable that turns this test binary into a helper CUDA process; its value
/// is the helper's name.
const HELPER_ENV: &str = "CRYO_GPU_CONTAINER_HELPER";

// ---- the helper CUDA process (inside the container) ----

/// Not a test of its own: this binary re-executed with `CRYO_GPU_CONTAINER_HELPER` set becomes
/// a CUDA process (see `run_helper`); without it this returns at once.
#[test]
fn helper_cuda_process() {
    let Ok(name) = std::env::var(HELPER_ENV) else {
        return;
    };
    let io = PathBuf::from(std::env::var("CRYO_GPU_IO").unwrap_or_else(|_| "/io".into()));
    if let Err(e) = run_helper(&name, &io) {
        write_atomic(&io.join(format!("{name}.ready")), &format!("error {e}\n"));
    }
}

/// The test pattern of a buffer: `len` bytes depending on `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)).to_le_bytes()[1])
        .collect()
}

fn checksum(parts: &[&[u8]]) -> u64 {
    // SipHash with fixed keys: the same in every process.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    for p in parts {
        h.write(p);
    }
    h.finish()
}

fn seed_of(name: &str) -> u64 {
    checksum(&[name.as_bytes()])
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Creates a context, a stream and three device buffers (pageable and pinned uploads, a
/// zeroed one: 4 MiB + 12 KiB + 5000 bytes), says `ready <pid> <checksum>` in
/// /io/NAME.ready, then answers each request file /io/NAME.req with /io/NAME.resp: `<request>
/// <checksum> verified`, or `corrupt ...` when a buffer differs from what was written.
fn run_helper(name: &str, io: &Path) -> Result<(), String> {
    use cudarc::driver::CudaContext;

    let err = |e: cudarc::driver::DriverError| format!("{e:?}");
    let seed = seed_of(name);
    let ctx = CudaContext::new(0).map_err(err)?;
    let stream = ctx.new_stream().map_err(err)?;
    let a_host = pattern(seed, (4 << 20) + 123);
    let a = stream.clone_htod(&a_host).map_err(err)?;
    let b_host = pattern(seed + 1, 3 * 4096);
    // SAFETY: the pinned buffer is written whole before it is read.
    let mut pinned = unsafe { ctx.alloc_pinned::<u8>(b_host.len()) }.map_err(err)?;
    pinned.as_mut_slice().map_err(err)?.copy_from_slice(&b_host);
    let b = stream.clone_htod(&pinned).map_err(err)?;
    let z = stream.alloc_zeros::<u8>(5000).map_err(err)?;
    stream.synchronize().map_err(err)?;
    let expected = checksum(&[&a_host, &b_host, &[0u8; 5000]]);
    let pid = std::process::id();
    write_atomic(
        &io.join(format!("{name}.ready")),
        &format!("ready {pid} {expected:016x}\n"),
    );
    let req = io.join(format!("{name}.req"));
    loop {
        let Ok(id) = std::fs::read_to_string(&req) else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let _ = std::fs::remove_file(&req);
        let a_back = stream.clone_dtoh(&a).map_err(err)?;
        let b_back = stream.clone_dtoh(&b).map_err(err)?;
        let z_back = stream.clone_dtoh(&z).map_err(err)?;
        stream.synchronize().map_err(err)?;
        let sum = checksum(&[&a_back, &b_back, &z_back]);
        let first_diff = |x: &[u8], y: &[u8]| x.iter().zip(y).position(|(p, q)| p != q);
        let verdict = if let Some(i) = first_diff(&a_back, &a_host) {
            format!("corrupt a at {i}: {:#x}", a_back[i])
        } else if let Some(i) = first_diff(&b_back, &b_host) {
            format!("corrupt b at {i}: {:#x}", b_back[i])
        } else if let Some(i) = z_back.iter().position(|&x| x != 0) {
            format!("corrupt z at {i}: {:#x}", z_back[i])
        } else {
            "verified".to_string()
        };
        write_atomic(
            &io.join(format!("{name}.resp")),
            &format!("{} {sum:016x} {verdict}\n", id.trim()),
        );
    }
}

// ---- the test side ----

macro_rules! skip_unless_ready {
    () => {{
        skip_unless_root!();
        if let Err(e) = cryo_snapshot::criu::Criu::locate(None) {
            println!("skipped: {e}");
            return;
        }
        let has_busybox = Path::new("/bin/busybox").exists()
            || std::process::Command::new("busybox")
                .arg("true")
                .status()
                .is_ok_and(|s| s.success());
        if !has_busybox {
            println!("skipped: no busybox (scripts/setup installs busybox-static)");
            return;
        }
        let Some(fake) = built_fake() else {
            println!(
                "skipped: the fake CUDA driver is not built (cargo build --workspace \
                 --all-targets builds target/<profile>/libfakecuda.so)"
            );
            return;
        };
        fake
    }};
}

/// The built fake library: `CRYO_FAKECUDA`, else target/<profile>/libfakecuda.so beside the
/// directory of this test binary (target/<profile>/deps).
fn built_fake() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CRYO_FAKECUDA") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("libfakecuda.so");
    path.exists().then_some(path)
}

/// One test's GPU world: the bundle, the helpers' /io, the fake (a copy named libcuda.so.1,
/// loaded by cryo with --libcuda and by the helpers through LD_LIBRARY_PATH) and the call log.
struct Gpu {
    env: Env,
    bundle: PathBuf,
    io: PathBuf,
    /// The fake as cryo loads it (None: the real driver).
    libcuda: Option<PathBuf>,
    /// FAKECUDA_STATE_DIR of cryo: its calls.log.
    state: PathBuf,
    /// (name, expected checksum, pid in the container) of each helper.
    helpers: Vec<(String, String, i32)>,
    next_request: std::sync::atomic::AtomicU32,
    /// cryo's debug log of the last checkpoint or restore.
    log: std::sync::Mutex<PathBuf>,
    /// How long `start` waits for the helpers to be ready.
    ready_timeout: Duration,
}

/// A helper to start: its name and environment assignments (`FAKECUDA_FAULTS=...`).
type HelperSpec<'a> = (&'a str, &'a [&'a str]);

impl Gpu {
    /// The bundle of `name` with helpers `specs` running the fake driver (`fake`), or the real
    /// driver with `fake` None (the host's driver bound in as `cryo spec --gpus all` does).
    fn new(name: &str, fake: Option<&Path>, specs: &[HelperSpec<'_>]) -> Gpu {
        let env = Env::new(name);
        let root = env.dir.path().to_path_buf();
        let bundle = root.join("bundle");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python-bundle.sh");
        let st = std::process::Command::new(&script)
            .arg(&bundle)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "python-bundle.sh failed");
        let io = root.join("io");
        let lib = root.join("fakecuda");
        let state = root.join("fakecuda-state");
        for d in [&io, &lib, &state] {
            std::fs::create_dir_all(d).unwrap();
        }
        let exe = std::env::current_exe().unwrap();
        let exe_dir = exe.parent().unwrap();
        let exe_name = exe.file_name().unwrap().to_str().unwrap();
        for d in ["helper", "fakecuda", "io"] {
            std::fs::create_dir_all(bundle.join("rootfs").join(d)).unwrap();
        }
        let cfg_path = bundle.join("config.json");
        let mut cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
        let mounts = cfg["mounts"].as_array_mut().unwrap();
        mounts.push(
            json!({"destination": "/helper", "type": "bind", "source": exe_dir,
            "options": ["rbind", "ro"]}),
        );
        mounts.push(json!({"destination": "/io", "type": "bind", "source": io,
            "options": ["rbind", "rw"]}));
        let libcuda = fake.map(|f| {
            // A copy, not a link: /proc/PID/maps names the file a link resolves to, and cryo
            // looks for libcuda.so* there.
            let copy = lib.join("libcuda.so.1");
            std::fs::copy(f, &copy).unwrap();
            std::os::unix::fs::symlink("libcuda.so.1", lib.join("libcuda.so")).unwrap();
            copy
        });
        let mut vars = vec![format!("{HELPER_ENV}=x")];
        if fake.is_some() {
            mounts.push(
                json!({"destination": "/fakecuda", "type": "bind", "source": lib,
                "options": ["rbind", "ro"]}),
            );
            vars.push("LD_LIBRARY_PATH=/fakecuda".into());
            vars.push("FAKECUDA_STATE_DIR=/tmp/fakecuda".into());
        } else {
            add_real_gpus(&env, &mut cfg);
        }
        let mut script = String::new();
        for (name, extra) in specs {
            script.push_str(&format!(
                "{HELPER_ENV}={name} {} /helper/{exe_name} helper_cuda_process --exact \
                 --nocapture --test-threads=1 -q >/dev/null 2>&1 & ",
                extra.join(" ")
            ));
        }
        script.push_str("wait");
        cfg["process"]["args"] = json!(["sh", "-c", script]);
        let envs = cfg["process"]["env"].as_array_mut().unwrap();
        envs.extend(vars.into_iter().map(Value::from));
        cfg["linux"]["cgroupsPath"] = json!(cgroup_path(&format!("gpu-{name}")));
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        Gpu {
            env,
            bundle,
            io,
            libcuda,
            state,
            helpers: specs
                .iter()
                .map(|(n, _)| (n.to_string(), String::new(), 0))
                .collect(),
            next_request: std::sync::atomic::AtomicU32::new(0),
            log: std::sync::Mutex::new(PathBuf::new()),
            ready_timeout: Duration::from_secs(30),
        }
    }

    /// `cryo ARGS` with the fake's call log in this test's directory.
    fn cryo(&self, args: &[&str]) -> std::process::Output {
        self.env.cryo_with_env(
            args,
            &[
                ("FAKECUDA_STATE_DIR", self.state.as_os_str()),
                ("FAKECUDA_RESTORE_THREAD_TIMEOUT_MS", OsStr::new("5000")),
            ],
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cryo(args);
        assert!(
            o.status.success(),
            "cryo {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `cryo ARGS` that must fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.cryo(args);
        assert!(!o.status.success(), "cryo {args:?} succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// The `--libcuda` flag for checkpoint and restore.
    fn libcuda_args(&self) -> Vec<String> {
        match &self.libcuda {
            Some(p) => vec!["--libcuda".into(), p.display().to_string()],
            None => Vec::new(),
        }
    }

    /// Starts the container and waits for every helper to be ready; returns its id.
    fn start(&mut self, id: &str) -> String {
        let id = self.env.id(id);
        self.ok(&["run", "-d", "--bundle", self.bundle.to_str().unwrap(), &id]);
        for h in &mut self.helpers {
            let path = self.io.join(format!("{}.ready", h.0));
            let deadline = Instant::now() + self.ready_timeout;
            let text = loop {
                if let Ok(t) = std::fs::read_to_string(&path) {
                    break t;
                }
                assert!(Instant::now() < deadline, "helper {} never got ready", h.0);
                std::thread::sleep(Duration::from_millis(10));
            };
            let f: Vec<&str> = text.split_whitespace().collect();
            assert_eq!(f[0], "ready", "helper {}: {text}", h.0);
            h.2 = f[1].parse().unwrap();
            h.1 = f[2].to_string();
        }
        id
    }

    /// Sends a request to helper `i`.
    fn request(&self, i: usize) -> u32 {
        let n = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        write_atomic(
            &self.io.join(format!("{}.req", self.helpers[i].0)),
            &n.to_string(),
        );
        n
    }

    /// The answer to request `n` of helper `i` within `timeout`: (checksum, verdict).
    fn answer(&self, i: usize, n: u32, timeout: Duration) -> Option<(String, String)> {
        let path = self.io.join(format!("{}.resp", self.helpers[i].0));
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(t) = std::fs::read_to_string(&path) {
                let mut f = t.trim().splitn(3, ' ');
                if f.next() == Some(n.to_string().as_str()) {
                    let sum = f.next().unwrap_or("").to_string();
                    return Some((sum, f.next().unwrap_or("").to_string()));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every helper reads its device memory back: the checksum it started with, verified.
    fn assert_intact(&self, when: &str) {
        let asked: Vec<u32> = (0..self.helpers.len()).map(|i| self.request(i)).collect();
        for (i, n) in asked.into_iter().enumerate() {
            let (sum, verdict) = self
                .answer(i, n, Duration::from_secs(20))
                .unwrap_or_else(|| panic!("{when}: helper {} did not answer", self.helpers[i].0));
            assert_eq!(verdict, "verified", "{when}: helper {}", self.helpers[i].0);
            assert_eq!(
                sum, self.helpers[i].1,
                "{when}: helper {}",
                self.helpers[i].0
            );
        }
    }

    /// The host pids of the helpers in container `id`, in helper order.
    fn host_pids(&self, id: &str) -> Vec<i32> {
        let pids: Vec<i32> =
            serde_json::from_str(&self.ok(&["ps", "--format", "json", id])).unwrap();
        self.helpers
            .iter()
            .map(|h| {
                *pids
                    .iter()
                    .find(|&&p| ns_pid(p) == Some(h.2))
                    .unwrap_or_else(|| panic!("helper {} not in {id}: {pids:?}", h.0))
            })
            .collect()
    }

    /// `call:result` of the checkpoint calls cryo made on `pid` (GetState left out).
    fn calls(&self, pid: i32) -> Vec<String> {
        let text = std::fs::read_to_string(self.state.join("calls.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let call = f.get(2)?.strip_prefix("cuCheckpointProcess")?;
                let result = f.get(4)?;
                (f.get(3)?.parse::<i32>().ok()? == pid && call != "GetState")
                    .then(|| format!("{call}:{result}"))
            })
            .collect()
    }

    /// The details the fake logged for `pid`'s Restore calls (`gpu_pairs=N`).
    fn restore_details(&self, pid: i32) -> Vec<String> {
        let text = std::fs::read_to_string(self.state.join("calls.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(2)? == &"cuCheckpointProcessRestore"
                    && f.get(3)?.parse::<i32>().ok()? == pid)
                    .then(|| f.get(7..).unwrap_or_default().join(" "))
            })
            .collect()
    }

    /// `--debug --log FILE` for the next call: its debug log goes to a file of its own (not
    /// to stderr, which the restored container's stdio must find as it was).
    fn debug_log_args(&self) -> Vec<String> {
        let n = self
            .next_request
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = self.env.dir.path().join(format!("cryo-{n}.log"));
        *self.log.lock().unwrap() = path.clone();
        vec!["--debug".into(), "--log".into(), path.display().to_string()]
    }

    /// The debug log of the last checkpoint or restore.
    fn last_log(&self) -> PathBuf {
        self.log.lock().unwrap().clone()
    }

    fn checkpoint(&self, id: &str, extra: &[&str]) -> std::process::Output {
        let mut args = self.debug_log_args();
        args.push("checkpoint".into());
        args.extend(self.libcuda_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(id.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cryo(&args)
    }

    fn restore(&self, id: &str, extra: &[&str]) -> std::process::Output {
        let mut args = self.debug_log_args();
        args.extend(["restore".to_string(), "-d".into()]);
        args.extend(self.libcuda_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend([
            "--bundle".into(),
            self.bundle.display().to_string(),
            id.to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cryo(&args)
    }
}

fn assert_ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn ns_pid(pid: i32) -> Option<i32> {
    cryo_snapshot::gpu::discover::ns_pid(pid)
}

/// The mounts and devices of `cryo spec --gpus all` added to `cfg` (the real-GPU variant).
fn add_real_gpus(env: &Env, cfg: &mut Value) {
    let dir = env.dir.path().join("gpus-spec");
    std::fs::create_dir_all(&dir).unwrap();
    env.ok(&["spec", "--gpus", "all", "--bundle", dir.to_str().unwrap()]);
    let spec: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let binds = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "bind")
        .cloned();
    cfg["mounts"].as_array_mut().unwrap().extend(binds);
    cfg["linux"]["devices"] = spec["linux"]["devices"].clone();
    let rules = spec["linux"]["resources"]["devices"]
        .as_array()
        .unwrap()
        .clone();
    cfg["linux"]["resources"]["devices"]
        .as_array_mut()
        .unwrap()
        .extend(rules.into_iter().filter(|r| r["allow"] == true));
}

/// Where the round trip's second checkpoint goes and how it is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    ImageDir,
    Store,
    StoreLazy,
}

/// Prints the lines about CUDA processes (the timings of their steps) of cryo's debug log.
fn print_cuda_lines(what: &str, log: &Path) {
    for l in std::fs::read_to_string(log).unwrap_or_default().lines() {
        if l.contains("CUDA") || l.contains("restore threads") {
            println!("{what}: {}", l.trim());
        }
    }
}

/// The checkpoint/restore round trip of a container with two CUDA processes: checkpoint with
/// --leave-running (both keep running, unlocked), checkpoint for good, restore: the device
/// memory is bit-identical.
fn round_trip(gpu: &mut Gpu, via: Via) {
    let id = gpu.start("c");
    gpu.assert_intact("before");
    let pids = gpu.host_pids(&id);
    let img1 = gpu.env.dir.path().join("img1");
    let t = Instant::now();
    let o = gpu.checkpoint(
        &id,
        &["--leave-running", "--image-path", img1.to_str().unwrap()],
    );
    assert_ok(&o, "checkpoint --leave-running");
    println!("checkpoint --leave-running: {:?}", t.elapsed());
    print_cuda_lines("checkpoint --leave-running", &gpu.last_log());
    assert_eq!(gpu.env.status(&id), "running");
    gpu.assert_intact("after checkpoint --leave-running");
    let meta: Value =
        serde_json::from_slice(&std::fs::read(img1.join("cryo.json")).unwrap()).unwrap();
    let mut recorded: Vec<i64> = meta["cuda"]["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    recorded.sort_unstable();
    let mut ns: Vec<i64> = gpu.helpers.iter().map(|h| i64::from(h.2)).collect();
    ns.sort_unstable();
    assert_eq!(recorded, ns, "{meta}");
    if gpu.libcuda.is_some() {
        // The fake's one GPU, as nvidia-smi would name it: what --cuda-gpu-map's OLD side
        // indexes.
        assert_eq!(
            meta["cuda"]["gpus"],
            serde_json::json!(["GPU-facec0da-0000-0000-0000-000000000000"]),
            "{meta}"
        );
        for &p in &pids {
            assert_eq!(
                gpu.calls(p),
                [
                    "Lock:CUDA_SUCCESS",
                    "Checkpoint:CUDA_SUCCESS",
                    "Restore:CUDA_SUCCESS",
                    "Unlock:CUDA_SUCCESS"
                ]
            );
        }
    }

    // Checkpoint for good: the container is gone.
    let store = gpu.env.dir.path().join("store");
    let img2 = gpu.env.dir.path().join("img2");
    let mut where_args = vec![];
    if via == Via::ImageDir {
        where_args.extend(["--image-path", img2.to_str().unwrap()]);
    } else {
        where_args.extend(["--store", store.to_str().unwrap(), "--snapshot", "gpu"]);
    }
    let t = Instant::now();
    let o = gpu.checkpoint(&id, &where_args);
    assert_ok(&o, "checkpoint");
    println!("checkpoint: {:?}", t.elapsed());
    print_cuda_lines("checkpoint", &gpu.last_log());
    assert!(!gpu.cryo(&["state", &id]).status.success());

    // Without a driver, the restore fails before anything runs, and leaves nothing behind.
    if gpu.libcuda.is_some() {
        let rid = gpu.env.id("nodriver");
        let mut args = vec!["restore", "-d", "--libcuda", "/nonexistent/libcuda.so.1"];
        args.extend(&where_args);
        args.extend(["--bundle", gpu.bundle.to_str().unwrap(), &rid]);
        let e = gpu.fails(&args);
        assert!(
            e.contains("holds checkpointed CUDA processes") && e.contains("no CUDA driver"),
            "{e}"
        );
        assert!(!gpu.cryo(&["state", &rid]).status.success());
    }

    // A GPU map that cannot apply here is refused before anything runs.
    if let Some(lib) = &gpu.libcuda {
        let rid = gpu.env.id("badmap");
        let lib = lib.display().to_string();
        let mut args = vec!["restore", "-d", "--libcuda", &lib, "--cuda-gpu-map", "0=3"];
        args.extend(&where_args);
        args.extend(["--bundle", gpu.bundle.to_str().unwrap(), &rid]);
        let e = gpu.fails(&args);
        assert!(
            e.contains("GPU map: new GPU 3: this machine has 1 GPU(s): GPU-facec0da-"),
            "{e}"
        );
        assert!(!gpu.cryo(&["state", &rid]).status.success());
    }

    let rid = gpu.env.id("r");
    if via == Via::StoreLazy {
        where_args.push("--lazy-pages");
    }
    // Through the image directory, onto "another" GPU: the map's pair reaches the driver.
    if via == Via::ImageDir && gpu.libcuda.is_some() {
        where_args.extend([
            "--cuda-gpu-map",
            "GPU-facec0da-0000-0000-0000-000000000000=0",
        ]);
    }
    let t = Instant::now();
    let o = gpu.restore(&rid, &where_args);
    assert_ok(&o, "restore");
    println!("restore: {:?}", t.elapsed());
    print_cuda_lines("restore", &gpu.last_log());
    assert_eq!(gpu.env.status(&rid), "running");
    gpu.assert_intact("after restore");
    let restored = gpu.host_pids(&rid);
    if gpu.libcuda.is_some() {
        let pairs = if via == Via::ImageDir { 1 } else { 0 };
        for &p in &restored {
            assert_eq!(
                gpu.calls(p),
                [
                    "GetRestoreThreadId:CUDA_SUCCESS",
                    "Restore:CUDA_SUCCESS",
                    "Unlock:CUDA_SUCCESS"
                ]
            );
            assert_eq!(gpu.restore_details(p), [format!("gpu_pairs={pairs}")]);
        }
    }
    gpu.env.remove(&rid);
}

#[test]
fn cuda_processes_round_trip_through_an_image_directory() {
    let fake = skip_unless_ready!();
    let mut gpu = Gpu::new("gpuimg", Some(&fake), &[("a", &[]), ("b", &[])]);
    round_trip(&mut gpu, Via::ImageDir);
}

#[test]
fn cuda_processes_round_trip_through_the_store() {
    let fake = skip_unless_ready!();
    let mut gpu = Gpu::new("gpustore", Some(&fake), &[("a", &[]), ("b", &[])]);
    round_trip(&mut gpu, Via::Store);
}

/// A lazy restore: the restore threads bring the device memory back while the rest of the
/// memory still streams in from the store.
#[test]
fn cuda_processes_round_trip_through_a_lazy_restore() {
    let fake = skip_unless_ready!();
    let mut gpu = Gpu::new("gpulazy", Some(&fake), &[("a", &[]), ("b", &[])]);
    round_trip(&mut gpu, Via::StoreLazy);
}

/// The images of a directory, by name, with their contents.
fn image_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_lock_timeout_leaves_the_container_running_and_the_old_image_intact() {
    let fake = skip_unless_ready!();
    // b has 400 ms of GPU work in flight whenever it is locked.
    let mut gpu = Gpu::new(
        "gpulock",
        Some(&fake),
        &[("a", &[]), ("b", &["FAKECUDA_INFLIGHT_MS=400"])],
    );
    let id = gpu.start("c");
    let pids = gpu.host_pids(&id);
    let img = gpu.env.dir.path().join("img");
    let img_arg = img.to_str().unwrap();
    // With the default timeout (10 s) the lock waits for b's work.
    assert_ok(
        &gpu.checkpoint(&id, &["--leave-running", "--image-path", img_arg]),
        "first checkpoint",
    );
    let before = image_files(&img);
    // With 100 ms, b is stuck past the timeout: nothing is checkpointed.
    let t = Instant::now();
    let o = gpu.checkpoint(
        &id,
        &[
            "--leave-running",
            "--cuda-lock-timeout",
            "100",
            "--image-path",
            img_arg,
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        e.contains(&format!(
            "cuCheckpointProcessLock(pid {}): CUDA_ERROR_NOT_READY: still running GPU work after the 100 ms lock timeout",
            pids[1]
        )) && e.contains("they are left running"),
        "{e}"
    );
    assert_eq!(gpu.env.status(&id), "running");
    gpu.assert_intact("after the lock timeout");
    assert_eq!(image_files(&img), before, "the old image changed");
    let debris: Vec<_> = std::fs::read_dir(gpu.env.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("cryo-tmp"))
        .collect();
    assert!(debris.is_empty(), "{debris:?}");
    // a was locked and unlocked again; b never got locked.
    assert_eq!(
        gpu.calls(pids[0])[4..],
        ["Lock:CUDA_SUCCESS", "Unlock:CUDA_SUCCESS"]
    );
    assert_eq!(gpu.calls(pids[1])[4..], ["Lock:CUDA_ERROR_NOT_READY"]);

    // The old image still restores, bit-identical.
    gpu.env.remove(&id);
    let rid = gpu.env.id("r");
    assert_ok(&gpu.restore(&rid, &["--image-path", img_arg]), "restore");
    gpu.assert_intact("after restoring the old image");
    gpu.env.remove(&rid);
}

#[test]
fn a_failed_driver_checkpoint_or_no_driver_leaves_everything_running() {
    let fake = skip_unless_ready!();
    let mut gpu = Gpu::new(
        "gpufail",
        Some(&fake),
        &[
            ("a", &[]),
            (
                "b",
                &["FAKECUDA_FAULTS=checkpoint=CUDA_ERROR_OUT_OF_MEMORY"],
            ),
        ],
    );
    let id = gpu.start("c");
    let pids = gpu.host_pids(&id);
    let img = gpu.env.dir.path().join("img");
    let img_arg = img.to_str().unwrap();

    // No driver: a clear error, nothing touched.
    let e = gpu.fails(&[
        "checkpoint",
        "--libcuda",
        "/nonexistent/libcuda.so.1",
        "--image-path",
        img_arg,
        &id,
    ]);
    assert!(
        e.contains("map the CUDA driver, but cryo cannot checkpoint them")
            && e.contains("no CUDA driver: /nonexistent/libcuda.so.1"),
        "{e}"
    );
    assert_eq!(gpu.env.status(&id), "running");
    assert!(gpu.calls(pids[0]).is_empty());

    // b's checkpoint fails: a, already checkpointed, is restored and unlocked.
    let o = gpu.checkpoint(&id, &["--image-path", img_arg]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains(&format!(
            "cuCheckpointProcessCheckpoint(pid {}): CUDA_ERROR_OUT_OF_MEMORY",
            pids[1]
        )),
        "{e}"
    );
    assert_eq!(gpu.env.status(&id), "running");
    assert!(!img.exists());
    gpu.assert_intact("after the failed checkpoint");
    assert_eq!(
        gpu.calls(pids[0]),
        [
            "Lock:CUDA_SUCCESS",
            "Checkpoint:CUDA_SUCCESS",
            "Restore:CUDA_SUCCESS",
            "Unlock:CUDA_SUCCESS"
        ]
    );
    assert_eq!(
        gpu.calls(pids[1]),
        [
            "Lock:CUDA_SUCCESS",
            "Checkpoint:CUDA_ERROR_OUT_OF_MEMORY",
            "Unlock:CUDA_SUCCESS"
        ]
    );
    gpu.env.remove(&id);
}

/// A locked CUDA process's calls wait: a request sent while the container is checkpointed
/// (CRIU dump included) is answered after the restore, from the restored process.
#[test]
fn a_call_blocked_at_checkpoint_time_completes_after_restore() {
    let fake = skip_unless_ready!();
    let mut gpu = Gpu::new(
        "gpublock",
        Some(&fake),
        &[("a", &["FAKECUDA_INFLIGHT_MS=300"])],
    );
    let id = gpu.start("c");
    let img = gpu.env.dir.path().join("img");
    let img_arg = img.to_str().unwrap().to_string();
    let checkpoint = std::thread::scope(|s| {
        let gpu = &gpu;
        let id = &id;
        let img_arg = &img_arg;
        let h = s.spawn(move || gpu.checkpoint(id, &["--image-path", img_arg]));
        // The lock waits 300 ms for a's work; ask once it is locked (or, on a slow machine,
        // still running, or already dumped): every way, the answer must come from an intact
        // device, after the restore at the latest.
        std::thread::sleep(Duration::from_millis(400));
        let n = gpu.request(0);
        (h.join().unwrap(), n)
    });
    let (o, n) = checkpoint;
    assert_ok(&o, "checkpoint");
    let early = gpu.answer(0, n, Duration::from_millis(10));
    let rid = gpu.env.id("r");
    assert_ok(&gpu.restore(&rid, &["--image-path", &img_arg]), "restore");
    let answer = early.or_else(|| gpu.answer(0, n, Duration::from_secs(20)));
    let (sum, verdict) = answer.expect("the blocked request was never answered");
    assert_eq!(verdict, "verified");
    assert_eq!(sum, gpu.helpers[0].1);
    gpu.assert_intact("after restore");
    gpu.env.remove(&rid);
}

/// A container without CUDA processes checkpoints as before: no driver is loaded (a driver
/// path that does not exist is never opened).
#[test]
fn a_cpu_container_needs_no_driver() {
    skip_unless_root!();
    if let Err(e) = cryo_snapshot::criu::Criu::locate(None) {
        println!("skipped: {e}");
        return;
    }
    let env = Env::new("gpunone");
    let (id, _) = env.detach("c", &sh_config("sleep 1000"));
    let img = env.dir.path().join("img");
    env.ok(&[
        "checkpoint",
        "--libcuda",
        "/nonexistent/libcuda.so.1",
        "--leave-running",
        "--image-path",
        img.to_str().unwrap(),
        &id,
    ]);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(img.join("cryo.json")).unwrap()).unwrap();
    assert!(meta.get("cuda").is_none(), "{meta}");
    env.remove(&id);
}

#[test]
fn spec_gpus_without_a_gpu_fails_clearly() {
    if Path::new("/dev/nvidiactl").exists() {
        println!("skipped: this machine has an NVIDIA GPU");
        return;
    }
    let env = Env::new("gpuspec");
    let o = env.cryo(&[
        "spec",
        "--gpus",
        "all",
        "--bundle",
        env.dir.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--gpus: no NVIDIA GPU"), "{e}");
    assert!(!env.dir.path().join("config.json").exists());
}

/// Returns from the test, saying why, unless it runs as root with CRIU and an NVIDIA GPU.
macro_rules! skip_unless_real_gpu {
    () => {
        skip_unless_root!();
        if let Err(e) = cryo_snapshot::criu::Criu::locate(None) {
            println!("skipped: {e}");
            return;
        }
        if !Path::new("/dev/nvidiactl").exists() {
            println!("skipped: no NVIDIA GPU (/dev/nvidiactl)");
            return;
        }
    };
}

/// The round trip on a real GPU: the helpers on the host's driver (bound in as `cryo spec
/// --gpus all` does), cryo on the same driver by its soname.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn real_gpu_container_round_trip() {
    skip_unless_real_gpu!();
    let mut gpu = Gpu::new("gpureal", None, &[("a", &[]), ("b", &[])]);
    round_trip(&mut gpu, Via::ImageDir);
}

/// The time from `since` until model helper 0 answers a new request, and its answer.
fn first_answer(gpu: &Gpu, since: Instant, what: &str) -> (Duration, String, String) {
    let n = gpu.request(0);
    let (sum, verdict) = gpu
        .answer(0, n, Duration::from_secs(600))
        .unwrap_or_else(|| panic!("{what}: the model did not answer"));
    (since.elapsed(), sum, verdict)
}

/// `cuda-checkpoint --toggle --pid PID` (NVIDIA's tool, where installed): its time.
fn cuda_checkpoint_toggle(tool: &Path, pid: i32) -> Duration {
    let t = Instant::now();
    let o = std::process::Command::new(tool)
        .args(["--toggle", "--pid", &pid.to_string()])
        .output()
        .unwrap();
    assert_ok(&o, "cuda-checkpoint --toggle");
    t.elapsed()
}

/// A PyTorch process holding `CRYO_GPU_TORCH_GIB` GiB (default 10) of weights on the GPU
/// (examples/torch-server.py, on the host's python and PyTorch) inside a cryo container:
/// checkpointed with --leave-running and for good into the store, restored from the image
/// directory and lazily from the store, its output bit-identical each time. Prints the cold
/// start and each restore until the first answer, and NVIDIA's `cuda-checkpoint` on the same
/// process where it is installed, as scripts/gpu-check collects them.
#[test]
#[ignore = "needs an NVIDIA GPU, the host's python with PyTorch: scripts/gpu-check runs it"]
fn real_gpu_pytorch_model_round_trip() {
    skip_unless_real_gpu!();
    let torch = std::process::Command::new("python3")
        .args(["-c", "import torch; assert torch.cuda.is_available()"])
        .output();
    if !torch.as_ref().is_ok_and(|o| o.status.success()) {
        println!("skipped: the host's python3 has no PyTorch with CUDA");
        return;
    }
    let gib: f64 = std::env::var("CRYO_GPU_TORCH_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);
    let mut gpu = Gpu::new("torch", None, &[("model", &[])]);
    gpu.ready_timeout = Duration::from_secs(600);
    // The model instead of the test binary: the host's python (python-bundle.sh binds /usr).
    let cfg_path = gpu.bundle.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    std::fs::create_dir_all(gpu.bundle.join("rootfs/examples")).unwrap();
    cfg["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/examples", "type": "bind", "source": examples,
        "options": ["rbind", "ro"]}),
    );
    cfg["process"]["args"] = json!([
        "python3",
        "/examples/torch-server.py",
        "model",
        "/io",
        gib.to_string()
    ]);
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();

    let t = Instant::now();
    let id = gpu.start("cold");
    let ready = t.elapsed();
    let (cold, sum, verdict) = first_answer(&gpu, t, "cold start");
    assert_eq!(verdict, "verified");
    println!("pytorch {gib} GiB: cold start to ready {ready:?}, to the first answer {cold:?}");

    if let Some(tool) = common::clients::which("cuda-checkpoint") {
        let pid = gpu.host_pids(&id)[0];
        let out = cuda_checkpoint_toggle(&tool, pid);
        let back = cuda_checkpoint_toggle(&tool, pid);
        let (_, s, v) = first_answer(&gpu, Instant::now(), "after cuda-checkpoint");
        assert_eq!((s.as_str(), v.as_str()), (sum.as_str(), "verified"));
        println!(
            "pytorch cuda-checkpoint --toggle: lock + checkpoint {out:?}, restore + unlock {back:?}"
        );
    } else {
        println!("pytorch cuda-checkpoint: not installed, no reference");
    }

    let img = gpu.env.dir.path().join("img");
    let t = Instant::now();
    let o = gpu.checkpoint(
        &id,
        &["--leave-running", "--image-path", img.to_str().unwrap()],
    );
    assert_ok(&o, "checkpoint --leave-running");
    println!(
        "pytorch checkpoint --leave-running (image dir): {:?}",
        t.elapsed()
    );
    print_cuda_lines("pytorch checkpoint --leave-running", &gpu.last_log());
    let (_, s, v) = first_answer(&gpu, Instant::now(), "after checkpoint --leave-running");
    assert_eq!((s.as_str(), v.as_str()), (sum.as_str(), "verified"));

    let store = gpu.env.dir.path().join("store");
    let t = Instant::now();
    let o = gpu.checkpoint(
        &id,
        &["--store", store.to_str().unwrap(), "--snapshot", "torch"],
    );
    assert_ok(&o, "checkpoint into the store");
    println!("pytorch checkpoint (store): {:?}", t.elapsed());

    for (name, args) in [
        ("image dir", vec!["--image-path", img.to_str().unwrap()]),
        (
            "store, lazy",
            vec![
                "--store",
                store.to_str().unwrap(),
                "--snapshot",
                "torch",
                "--lazy-pages",
            ],
        ),
    ] {
        let rid = gpu.env.id(if name == "image dir" { "ri" } else { "rl" });
        let t = Instant::now();
        let o = gpu.restore(&rid, &args);
        assert_ok(&o, name);
        let restored = t.elapsed();
        let (answered, s, v) = first_answer(&gpu, t, name);
        print_cuda_lines(&format!("pytorch restore ({name})"), &gpu.last_log());
        println!(
            "pytorch restore ({name}): returned after {restored:?}, first answer after \
             {answered:?} ({:.2}x the cold start's)",
            answered.as_secs_f64() / cold.as_secs_f64()
        );
        assert_eq!(
            (s.as_str(), v.as_str()),
            (sum.as_str(), "verified"),
            "{name}"
        );
        gpu.env.remove(&rid);
    }
}

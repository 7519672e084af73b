//! GPU checkpoint/restore through the fake CUDA driver (the `cryo-fakecuda` crate), loaded the
//! way the real one is: `LibCuda` opens a copy named `libcuda.so.1`, and helper "CUDA
//! processes" (this test binary re-executed, see `helper_cuda_process`) find it through
//! `LD_LIBRARY_PATH` with cudarc, create a context, stream and buffers, and wait for orders.
//! The fake keeps each process's checkpoint state in files under `FAKECUDA_STATE_DIR` and logs
//! every call to `calls.log`, which is how these tests see order and parallelism.
//!
//! The fake library is built by `cargo build --workspace --all-targets` (scripts/test does it
//! first) as target/<profile>/libfakecuda.so, or named by `CRYO_FAKECUDA`; without it every
//! test here says "skipped:" and returns.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cryo_snapshot::gpu::checkpoint::{self, DEFAULT_LOCK_TIMEOUT};
use cryo_snapshot::gpu::discover;
use cryo_snapshot::gpu::{CuResult, Driver, GpuError, GpuPair, LibCuda, ProcessState};

/// The environment variable that turns this test binary into a helper CUDA process.
const HELPER_ENV: &str = "CRYO_GPU_FAKE_HELPER";
/// What a helper prints before each reply, on stderr.
const MARK: &str = "helper: ";
/// How long a helper may take to answer (process start and cudarc set-up included).
const ANSWER: Duration = Duration::from_secs(20);

struct Fixture {
    /// The fake's state directory (per-pid files and calls.log).
    state: PathBuf,
    /// Holds libcuda.so.1 (a copy of the fake) and libcuda.so (a link to it).
    lib_dir: PathBuf,
    /// The fake as built.
    built: PathBuf,
    driver: LibCuda,
}

/// The built fake library: `CRYO_FAKECUDA`, else target/<profile>/libfakecuda.so next to the
/// directory of this test binary (target/<profile>/deps).
fn built_fake() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CRYO_FAKECUDA") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("libfakecuda.so");
    path.exists().then_some(path)
}

/// Removes the state directories of earlier runs whose test process is gone.
fn remove_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("gpu-fake-")) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn make_fixture() -> Option<Fixture> {
    let Some(built) = built_fake() else {
        eprintln!(
            "skipped: the fake CUDA driver is not built (cargo build --workspace --all-targets builds target/<profile>/libfakecuda.so)"
        );
        return None;
    };
    // Under target/tmp, or the system's temporary directory where the binary runs away from
    // the tree it was built in (a GPU machine running a build made beforehand).
    let dir_in = |tmp: PathBuf| {
        remove_stale(&tmp);
        let state = tmp.join(format!("gpu-fake-{}", std::process::id()));
        std::fs::create_dir_all(state.join("lib"))
            .ok()
            .map(|()| state)
    };
    let state = dir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
        .or_else(|| dir_in(std::env::temp_dir()))
        .expect("no writable directory for the fake driver's state");
    let lib_dir = state.join("lib");
    // A copy, not a link: /proc/PID/maps names the file a link resolves to, and discovery
    // looks for libcuda.so* there.
    std::fs::copy(&built, lib_dir.join("libcuda.so.1")).unwrap();
    std::os::unix::fs::symlink("libcuda.so.1", lib_dir.join("libcuda.so")).unwrap();
    // Set once, before anything in this process loads the fake (every test goes through this
    // OnceLock first); helpers get it in their own environment.
    std::env::set_var("FAKECUDA_STATE_DIR", &state);
    let driver = LibCuda::open(Some(&lib_dir.join("libcuda.so.1"))).unwrap();
    Some(Fixture {
        state,
        lib_dir,
        built,
        driver,
    })
}

fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    let fx = FIXTURE.get_or_init(make_fixture).as_ref();
    if fx.is_none() {
        eprintln!("skipped: no fake CUDA driver");
    }
    fx
}

fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).unwrap()
}

/// The test pattern of a buffer: `len` bytes depending on `seed`.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let i = u32::try_from(i).unwrap();
            (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)).to_le_bytes()[1]
        })
        .collect()
}

// ---- the helper CUDA process ----

/// Not a test of its own: this binary re-executed with `CRYO_GPU_FAKE_HELPER` set becomes a
/// CUDA process (see `run_helper`); without it this returns at once.
#[test]
fn helper_cuda_process() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    if let Err(e) = run_helper(&mode) {
        eprintln!("{MARK}error {e}");
    }
}

/// Modes: `hold` creates a context (cudarc, through libcuda on LD_LIBRARY_PATH), a stream, a
/// device buffer copied from pageable memory, one from pinned memory and a zeroed one, says
/// `ready`, then answers `verify` on stdin (`verified` or `corrupt ...`) until stdin closes;
/// `soname` opens the driver by its soname with `LibCuda::open_default`.
fn run_helper(mode: &str) -> Result<(), String> {
    use cudarc::driver::CudaContext;

    if mode.starts_with("buffers") || mode == "nodriver" {
        match run_buffers_helper(mode) {
            Ok(reply) => eprintln!("{MARK}{reply}"),
            Err(e) => eprintln!("{MARK}error {e}"),
        }
        return Ok(());
    }
    if mode == "soname" {
        let d = LibCuda::open_default().map_err(|e| e.to_string())?;
        eprintln!("{MARK}soname {} {}", d.library(), d.version());
        return Ok(());
    }
    let err = |e: cudarc::driver::DriverError| format!("{e:?}");
    let seed = std::process::id();
    let ctx = CudaContext::new(0).map_err(err)?;
    let stream = ctx.new_stream().map_err(err)?;
    let a_host = pattern(seed, (1 << 20) + 123);
    let a = stream.clone_htod(&a_host).map_err(err)?;
    let b_host = pattern(seed + 1, 3 * 4096);
    // SAFETY: the pinned buffer is written whole before it is read.
    let mut pinned = unsafe { ctx.alloc_pinned::<u8>(b_host.len()) }.map_err(err)?;
    pinned.as_mut_slice().map_err(err)?.copy_from_slice(&b_host);
    let b = stream.clone_htod(&pinned).map_err(err)?;
    let z = stream.alloc_zeros::<u8>(5000).map_err(err)?;
    stream.synchronize().map_err(err)?;
    eprintln!("{MARK}ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim() != "verify" {
            continue;
        }
        let a_back = stream.clone_dtoh(&a).map_err(err)?;
        // SAFETY: read only after the copy below fills it.
        let mut b_back = unsafe { ctx.alloc_pinned::<u8>(b_host.len()) }.map_err(err)?;
        stream.memcpy_dtoh(&b, &mut b_back).map_err(err)?;
        let z_back = stream.clone_dtoh(&z).map_err(err)?;
        stream.synchronize().map_err(err)?;
        let b_back = b_back.as_slice().map_err(err)?;
        let first_diff = |x: &[u8], y: &[u8]| x.iter().zip(y).position(|(p, q)| p != q);
        if let Some(i) = first_diff(&a_back, &a_host) {
            eprintln!("{MARK}corrupt a at {i}: {:#x}", a_back[i]);
        } else if let Some(i) = first_diff(b_back, &b_host) {
            eprintln!("{MARK}corrupt b at {i}: {:#x}", b_back[i]);
        } else if let Some(i) = z_back.iter().position(|&x| x != 0) {
            eprintln!("{MARK}corrupt z at {i}: {:#x}", z_back[i]);
        } else {
            eprintln!("{MARK}verified");
        }
    }
    Ok(())
}

// ---- device-buffer snapshots, in a helper process ----

/// The buffers the `buffers*` modes save: random-looking, all zero, repetitive, and a typed
/// one; none a whole number of pages.
struct HostBuffers {
    a: Vec<u8>,
    zeros: usize,
    c: Vec<u8>,
    weights: Vec<f32>,
}

fn host_buffers() -> HostBuffers {
    HostBuffers {
        a: pattern(7, (5 << 20) + 123),
        zeros: (3 << 20) + 5,
        c: (0..40_000u32).map(|i| (i % 7).to_le_bytes()[0]).collect(),
        weights: (0..=u16::MAX)
            .cycle()
            .take(300_001)
            .map(|i| f32::from(i) * 0.5)
            .collect(),
    }
}

/// Modes `buffers`, `buffers-errors` and `nodriver`: device-buffer snapshots
/// (`gpu::buffers`) through cudarc on the fake, into the store `CRYO_BUFFERS_STORE`; the
/// reply is `ok ...`, or what went wrong.
fn run_buffers_helper(mode: &str) -> Result<String, String> {
    use cryo_snapshot::gpu::buffers::cudarc::driver::{DevicePtr, DevicePtrMut};
    use cryo_snapshot::gpu::buffers::{self, PipelineOptions, Progress};
    use std::sync::Mutex;

    if mode == "nodriver" {
        return match buffers::open_device(0, None) {
            Ok(_) => Ok("skipped: a CUDA driver is installed on this machine".into()),
            Err(e @ GpuError::NoDriver { .. }) => Ok(format!("ok {e}")),
            Err(e) => Err(format!("not a NoDriver error: {e}")),
        };
    }
    let s = |e: cryo_snapshot::Error| e.to_string();
    let err = |e: cudarc::driver::DriverError| format!("{e:?}");
    let store = cryo_snapshot::Store::open(
        std::env::var("CRYO_BUFFERS_STORE").map_err(|e| format!("CRYO_BUFFERS_STORE: {e}"))?,
    )
    .map_err(s)?;
    let lib = std::env::var_os("CRYO_BUFFERS_LIBCUDA").map(PathBuf::from);
    let ctx = buffers::open_device(0, lib.as_deref()).map_err(|e| e.to_string())?;
    let stream = ctx.default_stream();
    let host = host_buffers();
    let a = stream.clone_htod(&host.a).map_err(err)?;
    let z = stream.alloc_zeros::<u8>(host.zeros).map_err(err)?;
    let c = stream.clone_htod(&host.c).map_err(err)?;
    let w = stream.clone_htod(&host.weights).map_err(err)?;
    // SAFETY: any bytes are valid u8s; the view covers exactly the f32s' bytes.
    let w_bytes = unsafe { w.transmute::<u8>(host.weights.len() * 4) }.ok_or("transmute")?;
    let list: [(&str, &dyn DevicePtr<u8>); 4] =
        [("a", &a), ("zeros", &z), ("c", &c), ("weights", &w_bytes)];
    let weights_bytes: Vec<u8> = host.weights.iter().flat_map(|f| f.to_le_bytes()).collect();
    let expected: [(&str, Vec<u8>); 4] = [
        ("a", host.a.clone()),
        ("zeros", vec![0; host.zeros]),
        ("c", host.c.clone()),
        ("weights", weights_bytes),
    ];
    let opts = PipelineOptions {
        slot_bytes: 1 << 20,
        slots: 3,
        streams: 2,
        ..PipelineOptions::default()
    };
    let quiet = |_: Progress| {};
    let same = |what: &str, got: &[u8], want: &[u8]| -> Result<(), String> {
        if got.len() != want.len() {
            return Err(format!(
                "{what}: {} bytes, expected {}",
                got.len(),
                want.len()
            ));
        }
        match got.iter().zip(want).position(|(x, y)| x != y) {
            Some(i) => Err(format!("{what}: differs at byte {i}")),
            None => Ok(()),
        }
    };
    let total: usize = expected.iter().map(|(_, b)| b.len()).sum();
    if mode == "buffers" {
        let seen = Mutex::new(Vec::new());
        let saved = buffers::save(&store, Some("bufs:v1"), &stream, &list, &opts, &|p| {
            seen.lock().unwrap().push(p);
        })
        .map_err(s)?;
        let seen = seen.into_inner().unwrap();
        let pieces: usize = expected
            .iter()
            .map(|(_, b)| b.len().div_ceil(1 << 20))
            .sum();
        if seen.len() != pieces
            || seen.windows(2).any(|p| p[1].done <= p[0].done)
            || seen.last().map(|p| (p.done, p.total)) != Some((total as u64, total as u64))
        {
            return Err(format!(
                "progress {seen:?}: expected {pieces} rising reports up to {total}"
            ));
        }
        if saved.bytes != total as u64 || saved.write.zero_bytes < host.zeros as u64 / 4096 * 4096 {
            return Err(format!(
                "saved {saved:?}: expected {total} bytes, the zero buffer as holes"
            ));
        }
        let reader = store.reader("bufs:v1").map_err(s)?;
        let (loaded, report) = buffers::load(&reader, &stream, &opts, &quiet).map_err(s)?;
        if report.bytes != total as u64 || loaded.len() != expected.len() {
            return Err(format!("loaded {} buffers, {report:?}", loaded.len()));
        }
        for ((name, slice), (want_name, want)) in loaded.iter().zip(&expected) {
            if name != want_name {
                return Err(format!("loaded {name} where {want_name} was saved"));
            }
            same(name, &stream.clone_dtoh(slice).map_err(err)?, want)?;
        }
        // Into a buffer of the caller's, a subset of the snapshot.
        let mut target = stream.alloc_zeros::<u8>(host.c.len()).map_err(err)?;
        buffers::load_into(
            &reader,
            &stream,
            &mut [("c", &mut target as &mut dyn DevicePtrMut<u8>)],
            &opts,
            &quiet,
        )
        .map_err(s)?;
        same(
            "c loaded into",
            &stream.clone_dtoh(&target).map_err(err)?,
            &host.c,
        )?;
        // Unchanged buffers saved again add no chunk.
        let again =
            buffers::save(&store, Some("bufs:v2"), &stream, &list, &opts, &quiet).map_err(s)?;
        if again.write.new_chunks != 0 {
            return Err(format!("the second save wrote {:?}", again.write));
        }
        return Ok(format!(
            "ok pieces={pieces} overlap={:.2}",
            saved.stages.overlap()
        ));
    }
    // "buffers-errors", with FAKECUDA_COPY_FAIL=dtoh:2,htod:6: the first save meets the fault
    // at its second copy; the sixth copy to the device is the second piece of the load below
    // (the four clone_htod above are the first four).
    let refused = |what: &str, r: Result<String, String>, wants: &[&str]| -> Result<(), String> {
        match r {
            Ok(ok) => Err(format!("{what}: succeeded ({ok})")),
            Err(e) if wants.iter().all(|w| e.contains(w)) => Ok(()),
            Err(e) => Err(format!("{what}: {e}: expected it to say {wants:?}")),
        }
    };
    let faulty = buffers::save(&store, Some("bufs:bad"), &stream, &list, &opts, &quiet);
    refused(
        "a save meeting a GPU fault",
        faulty.map(|r| r.id.to_string()).map_err(s),
        &["CUDA_ERROR_ILLEGAL_ADDRESS", "buffer \"a\"", "to the host"],
    )?;
    if store.resolve("bufs:bad").is_ok() {
        return Err("a failed save committed bufs:bad".into());
    }
    let saved =
        buffers::save(&store, Some("bufs:good"), &stream, &list, &opts, &quiet).map_err(s)?;
    let reader = store.reader("bufs:good").map_err(s)?;
    let faulty = buffers::load(&reader, &stream, &opts, &quiet);
    refused(
        "a load meeting a GPU fault",
        faulty
            .map(|(b, _)| format!("{} buffers", b.len()))
            .map_err(s),
        &["CUDA_ERROR_ILLEGAL_ADDRESS", "to the device"],
    )?;
    let dup: [(&str, &dyn DevicePtr<u8>); 2] = [("a", &a), ("a", &c)];
    refused(
        "a name given twice",
        buffers::save(&store, None, &stream, &dup, &opts, &quiet)
            .map(|r| r.id.to_string())
            .map_err(s),
        &["\"a\" named twice"],
    )?;
    let mut short = stream.alloc_zeros::<u8>(host.c.len() - 1).map_err(err)?;
    refused(
        "a target of the wrong length",
        buffers::load_into(
            &reader,
            &stream,
            &mut [("c", &mut short as &mut dyn DevicePtrMut<u8>)],
            &opts,
            &quiet,
        )
        .map(|r| format!("{r:?}"))
        .map_err(s),
        &["device buffer \"c\"", "39999", "40000"],
    )?;
    refused(
        "a name the snapshot lacks",
        buffers::load_into(
            &reader,
            &stream,
            &mut [("nope", &mut short as &mut dyn DevicePtrMut<u8>)],
            &opts,
            &quiet,
        )
        .map(|r| format!("{r:?}"))
        .map_err(s),
        &["nope", "holds no buffer of that name"],
    )?;
    let mut plain = store.writer().map_err(s)?;
    plain.add_blob("notes", b"no buffers here").map_err(s)?;
    plain.commit(Some("plain")).map_err(s)?;
    refused(
        "a snapshot without buffers",
        buffers::load(&store.reader("plain").map_err(s)?, &stream, &opts, &quiet)
            .map(|(b, _)| format!("{} buffers", b.len()))
            .map_err(s),
        &["gpu-buffers.json", "holds no device buffers"],
    )?;
    // A flipped byte in a chunk of buffer "a": refused, naming the chunk.
    let manifest = reader.manifest();
    let obj = manifest
        .object_index("gpu-buffer:a")
        .ok_or("no object for a")?;
    let extent = manifest.object_extents(obj)[1];
    let loc = store
        .locate_chunk(&extent.chunk)
        .map_err(s)?
        .ok_or("chunk in no pack")?;
    let mut bytes = std::fs::read(&loc.path).map_err(|e| e.to_string())?;
    let mid = usize::try_from(loc.offset + loc.len / 2).map_err(|e| e.to_string())?;
    bytes[mid] ^= 0x40;
    std::fs::write(&loc.path, bytes).map_err(|e| e.to_string())?;
    refused(
        "a corrupt chunk",
        buffers::load(
            &store.reader("bufs:good").map_err(s)?,
            &stream,
            &opts,
            &quiet,
        )
        .map(|(b, _)| format!("{} buffers", b.len()))
        .map_err(s),
        &[&extent.chunk.to_string()],
    )?;
    Ok(format!("ok {}", saved.id))
}

/// A helper process seen from the test.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every stderr line so far, for failure messages.
    seen: Vec<String>,
    pid: i32,
    /// The fake's state directory (none for the real driver).
    state: Option<PathBuf>,
    /// When it was started (CLOCK_MONOTONIC ns): older log lines with its pid are not its.
    started: u64,
}

impl Helper {
    /// Starts a helper on the fake driver in `mode` with `env` added, and waits for it to be
    /// ready (`hold`).
    fn spawn(fx: &Fixture, mode: &str, env: &[(&str, &str)]) -> Helper {
        let fake = [
            ("LD_LIBRARY_PATH", fx.lib_dir.as_os_str()),
            ("FAKECUDA_STATE_DIR", fx.state.as_os_str()),
        ];
        let env = env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(v)));
        Helper::start(mode, fake.into_iter().chain(env), Some(&fx.state))
    }

    /// Starts a helper on the real driver (found as the system finds it).
    fn spawn_real() -> Helper {
        Helper::start("hold", std::iter::empty(), None)
    }

    fn start<'a>(
        mode: &str,
        env: impl Iterator<Item = (&'a str, &'a std::ffi::OsStr)>,
        state: Option<&Path>,
    ) -> Helper {
        let started = now_ns();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "helper_cuda_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(HELPER_ENV, mode)
        .env_remove("FAKECUDA_FAULTS")
        .env_remove("FAKECUDA_INFLIGHT_MS")
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut h = Helper {
            pid: pid_of(&child),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            state: state.map(Path::to_path_buf),
            started,
        };
        if mode == "hold" {
            assert_eq!(h.answer(ANSWER), "ready", "{:?}", h.seen);
        }
        h
    }

    /// The next reply, or a panic with what the helper said when there is none in time.
    fn answer(&mut self, timeout: Duration) -> String {
        self.try_answer(timeout)
            .unwrap_or_else(|| panic!("helper {} did not answer: {:?}", self.pid, self.seen))
    }

    fn try_answer(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if let Some(reply) = line.strip_prefix(MARK) {
                return Some(reply.to_string());
            }
        }
    }

    fn ask_verify(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"verify\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Has the helper read back all its buffers and compare them with what it wrote.
    fn verify(&mut self) -> String {
        self.ask_verify();
        self.answer(ANSWER)
    }

    /// The fake's state file for this process (`key=value` lines).
    fn fake_state(&self) -> HashMap<String, String> {
        let dir = self.state.as_ref().unwrap();
        let text = std::fs::read_to_string(dir.join(format!("{}.state", self.pid))).unwrap();
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.state {
            for ext in ["state", "dev", "host"] {
                let _ = std::fs::remove_file(dir.join(format!("{}.{ext}", self.pid)));
            }
        }
    }
}

fn spawn_all(fx: &Fixture, envs: &[&[(&str, &str)]]) -> Vec<Helper> {
    // Started together, waited for together: each costs a process start and cudarc set-up.
    std::thread::scope(|s| {
        let handles: Vec<_> = envs
            .iter()
            .map(|env| s.spawn(move || Helper::spawn(fx, "hold", env)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn pids(helpers: &[Helper]) -> Vec<i32> {
    helpers.iter().map(|h| h.pid).collect()
}

fn states(fx: &Fixture, pids: &[i32]) -> Vec<ProcessState> {
    pids.iter().map(|&p| fx.driver.state(p).unwrap()).collect()
}

// ---- the call log ----

#[derive(Debug, Clone)]
struct Entry {
    call: String,
    target: i32,
    result: String,
    start: u64,
    end: u64,
    detail: String,
}

/// CLOCK_MONOTONIC in ns, the call log's clock.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap()
}

/// The checkpoint calls made on the helpers' pids since they started, in the order they
/// finished.
fn log_for<'a>(fx: &Fixture, helpers: impl IntoIterator<Item = &'a Helper>) -> Vec<Entry> {
    let helpers: Vec<&Helper> = helpers.into_iter().collect();
    let since = helpers.iter().map(|h| h.started).min().unwrap_or(0);
    let pids: Vec<i32> = helpers.iter().map(|h| h.pid).collect();
    let text = std::fs::read_to_string(fx.state.join("calls.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let [_caller, _tid, call, target, result, start, end, detail] = f[..] else {
                panic!("calls.log: malformed line {l:?}");
            };
            Some(Entry {
                call: call.strip_prefix("cuCheckpointProcess")?.to_string(),
                target: target.parse().ok()?,
                result: result.to_string(),
                start: start.parse().ok()?,
                end: end.parse().ok()?,
                detail: detail.to_string(),
            })
        })
        .filter(|e| pids.contains(&e.target) && e.start >= since)
        .collect()
}

/// `call:result` of each call on `pid`, leaving out GetState (asked by tests and rollback).
fn sequence(log: &[Entry], pid: i32) -> Vec<String> {
    log.iter()
        .filter(|e| e.target == pid && e.call != "GetState")
        .map(|e| format!("{}:{}", e.call, e.result))
        .collect()
}

fn calls<'a>(log: &'a [Entry], call: &'a str) -> impl Iterator<Item = &'a Entry> {
    log.iter().filter(move |e| e.call == call)
}

// ---- the tests ----

#[test]
fn cudarc_round_trip_through_the_fake() {
    let Some(fx) = fixture() else { return };
    let mut h = Helper::spawn(fx, "hold", &[]);
    assert_eq!(h.verify(), "verified");
    assert_eq!(fx.driver.state(h.pid).unwrap(), ProcessState::RUNNING);
    let st = h.fake_state();
    assert_eq!(st["allocations"], "3", "{st:?}");
}

#[test]
fn the_driver_is_found_by_its_soname() {
    let Some(fx) = fixture() else { return };
    let mut h = Helper::spawn(fx, "soname", &[]);
    assert_eq!(h.answer(ANSWER), "soname libcuda.so.1 13000");
}

#[test]
fn checkpoint_and_restore_round_trip_device_memory() {
    let Some(fx) = fixture() else { return };
    let mut helpers = spawn_all(fx, &[&[], &[]]);
    let pids = pids(&helpers);
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let me = i32::try_from(std::process::id()).unwrap();

    // Discovery: the helpers, not a plain process, not this one (which maps the fake but
    // has no CUDA context).
    let candidates = [pids[0], pid_of(&sleeper), me, pids[1]];
    let found = discover::cuda_processes(&fx.driver, &candidates).unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(
        found.iter().map(|p| (p.pid, p.state)).collect::<Vec<_>>(),
        [
            (pids[0], ProcessState::RUNNING),
            (pids[1], ProcessState::RUNNING)
        ]
    );
    assert_eq!(discover::maps_libcuda(me).unwrap(), Some(true));

    checkpoint::checkpoint(&fx.driver, &pids, Duration::from_secs(5)).unwrap();
    assert_eq!(states(fx, &pids), [ProcessState::CHECKPOINTED; 2]);
    // The device memory moved out: the fake's "GPU" holds its release pattern, the data waits
    // in the process's "host memory".
    for h in &helpers {
        let dev = std::fs::read(fx.state.join(format!("{}.dev", h.pid))).unwrap();
        assert!(dev.iter().all(|&b| b == 0xDB));
        assert!(fx.state.join(format!("{}.host", h.pid)).exists());
    }
    for (pid, tid) in checkpoint::restore_threads(&fx.driver, &pids).unwrap() {
        assert_ne!(tid, pid);
        assert!(Path::new(&format!("/proc/{pid}/task/{tid}")).exists());
    }
    // A checkpointed process's CUDA calls block until it is restored and unlocked.
    helpers[0].ask_verify();
    assert_eq!(helpers[0].try_answer(Duration::from_millis(200)), None);

    checkpoint::restore_all(&fx.driver, &pids, &[]).unwrap();
    assert_eq!(states(fx, &pids), [ProcessState::RUNNING; 2]);
    assert_eq!(helpers[0].answer(ANSWER), "verified");
    assert_eq!(helpers[1].verify(), "verified");
    let st = helpers[1].fake_state();
    assert_eq!(
        (st["checkpoints"].as_str(), st["restores"].as_str()),
        ("1", "1")
    );

    let log = log_for(fx, &helpers);
    for &pid in &pids {
        assert_eq!(
            sequence(&log, pid),
            [
                "Lock:CUDA_SUCCESS",
                "Checkpoint:CUDA_SUCCESS",
                "GetRestoreThreadId:CUDA_SUCCESS",
                "Restore:CUDA_SUCCESS",
                "Unlock:CUDA_SUCCESS"
            ]
        );
    }
    // The lock timeout arrived in the right field, no GPU pairs were passed.
    assert!(calls(&log, "Lock").all(|e| e.detail == "timeout_ms=5000"));
    assert!(calls(&log, "Restore").all(|e| e.detail == "gpu_pairs=0"));
    // Barriers: every lock done before any checkpoint, every restore before any unlock.
    let max_end = |c| calls(&log, c).map(|e| e.end).max().unwrap();
    let min_start = |c| calls(&log, c).map(|e| e.start).min().unwrap();
    assert!(max_end("Lock") <= min_start("Checkpoint"));
    assert!(max_end("Restore") <= min_start("Unlock"));
}

#[test]
fn locks_run_in_parallel() {
    let Some(fx) = fixture() else { return };
    let busy: &[(&str, &str)] = &[("FAKECUDA_INFLIGHT_MS", "300")];
    let mut helpers = spawn_all(fx, &[busy, busy, busy]);
    let pids = pids(&helpers);
    let start = Instant::now();
    checkpoint::lock_all(&fx.driver, &pids, Duration::from_secs(5)).unwrap();
    let took = start.elapsed();
    // One after the other would take 900 ms.
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(850), "{took:?}");
    let log = log_for(fx, &helpers);
    let locks: Vec<&Entry> = calls(&log, "Lock").collect();
    assert_eq!(locks.len(), 3);
    for a in &locks {
        assert_eq!(a.result, "CUDA_SUCCESS");
        for b in &locks {
            assert!(a.start < b.end, "lock intervals do not overlap: {locks:?}");
        }
    }
    checkpoint::checkpoint_all(&fx.driver, &pids).unwrap();
    checkpoint::restore_all(&fx.driver, &pids, &[]).unwrap();
    for h in &mut helpers {
        assert_eq!(h.verify(), "verified");
    }
}

#[test]
fn a_lock_timeout_puts_everyone_back() {
    let Some(fx) = fixture() else { return };
    let mut helpers = spawn_all(fx, &[&[], &[("FAKECUDA_FAULTS", "lock=timeout")], &[]]);
    let pids = pids(&helpers);
    let start = Instant::now();
    let e = checkpoint::checkpoint(&fx.driver, &pids, Duration::from_millis(200)).unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(
        matches!(e, GpuError::LockTimeout { pid, timeout_ms: 200 } if pid == pids[1]),
        "{e}"
    );
    assert!(e.to_string().contains(&format!("pid {}", pids[1])));
    assert_eq!(states(fx, &pids), [ProcessState::RUNNING; 3]);
    let log = log_for(fx, &helpers);
    assert_eq!(sequence(&log, pids[1]), ["Lock:CUDA_ERROR_NOT_READY"]);
    for pid in [pids[0], pids[2]] {
        assert_eq!(
            sequence(&log, pid),
            ["Lock:CUDA_SUCCESS", "Unlock:CUDA_SUCCESS"]
        );
    }
    assert_eq!(calls(&log, "Checkpoint").count(), 0);
    for h in &mut helpers {
        assert_eq!(h.verify(), "verified");
    }
}

#[test]
fn a_failed_checkpoint_rolls_back_the_others() {
    let Some(fx) = fixture() else { return };
    let fault: &[(&str, &str)] = &[("FAKECUDA_FAULTS", "checkpoint=CUDA_ERROR_OUT_OF_MEMORY")];
    let mut helpers = spawn_all(fx, &[&[], &[], fault]);
    let pids = pids(&helpers);
    let e = checkpoint::checkpoint(&fx.driver, &pids, DEFAULT_LOCK_TIMEOUT).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "cuCheckpointProcessCheckpoint(pid {}): CUDA_ERROR_OUT_OF_MEMORY (2)",
            pids[2]
        )
    );
    assert_eq!(states(fx, &pids), [ProcessState::RUNNING; 3]);
    let log = log_for(fx, &helpers);
    for pid in [pids[0], pids[1]] {
        assert_eq!(
            sequence(&log, pid),
            [
                "Lock:CUDA_SUCCESS",
                "Checkpoint:CUDA_SUCCESS",
                "Restore:CUDA_SUCCESS",
                "Unlock:CUDA_SUCCESS"
            ]
        );
    }
    assert_eq!(
        sequence(&log, pids[2]),
        [
            "Lock:CUDA_SUCCESS",
            "Checkpoint:CUDA_ERROR_OUT_OF_MEMORY",
            "Unlock:CUDA_SUCCESS"
        ]
    );
    // The two checkpointed ones got their device memory back, bit for bit.
    for h in &mut helpers {
        assert_eq!(h.verify(), "verified");
    }
}

#[test]
fn a_failed_restore_is_reported_and_the_others_run() {
    let Some(fx) = fixture() else { return };
    let fault: &[(&str, &str)] = &[("FAKECUDA_FAULTS", "restore=CUDA_ERROR_OUT_OF_MEMORY")];
    let mut helpers = spawn_all(fx, &[&[], fault]);
    let pids = pids(&helpers);
    checkpoint::checkpoint(&fx.driver, &pids, DEFAULT_LOCK_TIMEOUT).unwrap();
    let e = checkpoint::restore_all(&fx.driver, &pids, &[]).unwrap_err();
    assert_eq!(e.pid(), Some(pids[1]));
    assert_eq!(e.result(), Some(CuResult::OUT_OF_MEMORY));
    assert!(e.to_string().starts_with("cuCheckpointProcessRestore(pid "));
    assert_eq!(
        states(fx, &pids),
        [ProcessState::RUNNING, ProcessState::CHECKPOINTED]
    );
    assert_eq!(helpers[0].verify(), "verified");
}

#[test]
fn calls_in_the_wrong_state_are_refused() {
    let Some(fx) = fixture() else { return };
    let h = Helper::spawn(fx, "hold", &[]);
    let d = &fx.driver;
    let illegal = |r: Result<(), GpuError>| {
        let e = r.unwrap_err();
        assert_eq!(e.result(), Some(CuResult::ILLEGAL_STATE), "{e}");
        assert_eq!(e.pid(), Some(h.pid));
    };
    illegal(d.checkpoint(h.pid));
    illegal(d.unlock(h.pid));
    illegal(d.restore(h.pid, &[]));
    d.lock(h.pid, Duration::from_secs(1)).unwrap();
    illegal(d.lock(h.pid, Duration::from_secs(1)));
    illegal(d.restore(h.pid, &[]));
    d.unlock(h.pid).unwrap();
    assert_eq!(d.state(h.pid).unwrap(), ProcessState::RUNNING);
}

#[test]
fn pids_unknown_to_the_driver_are_errors_that_name_them() {
    let Some(fx) = fixture() else { return };
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = pid_of(&sleeper);
    let e = fx.driver.state(pid).unwrap_err();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(
        e.to_string(),
        format!("cuCheckpointProcessGetState(pid {pid}): CUDA_ERROR_INVALID_VALUE (1)")
    );
    let e = checkpoint::checkpoint(&fx.driver, &[pid], DEFAULT_LOCK_TIMEOUT).unwrap_err();
    assert_eq!(e.pid(), Some(pid));
    assert!(discover::cuda_processes(&fx.driver, &[pid])
        .unwrap()
        .is_empty());
}

#[test]
fn gpu_pairs_reach_the_driver() {
    let Some(fx) = fixture() else { return };
    let mut h = Helper::spawn(fx, "hold", &[]);
    let pids = [h.pid];
    // The fake's device 0 (its UUIDs are fa ce c0 da, zeros, then the ordinal).
    let gpu0 = [0xfa, 0xce, 0xc0, 0xda, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut gpu9 = gpu0;
    gpu9[15] = 9;
    checkpoint::checkpoint(&fx.driver, &pids, DEFAULT_LOCK_TIMEOUT).unwrap();
    let to_unknown = [GpuPair {
        old_uuid: gpu0,
        new_uuid: gpu9,
    }];
    let e = checkpoint::restore_all(&fx.driver, &pids, &to_unknown).unwrap_err();
    assert_eq!(e.result(), Some(CuResult::INVALID_VALUE));
    assert_eq!(fx.driver.state(h.pid).unwrap(), ProcessState::CHECKPOINTED);
    let same = [GpuPair {
        old_uuid: gpu0,
        new_uuid: gpu0,
    }];
    checkpoint::restore_all(&fx.driver, &pids, &same).unwrap();
    assert_eq!(h.verify(), "verified");
    let log = log_for(fx, [&h]);
    let details: Vec<&str> = calls(&log, "Restore").map(|e| e.detail.as_str()).collect();
    assert_eq!(details, ["gpu_pairs=invalid", "gpu_pairs=1"]);
}

/// A store for one test, under the fixture's state directory.
fn buffer_store(fx: &Fixture, name: &str) -> PathBuf {
    let dir = fx.state.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn spawn_buffers(fx: &Fixture, mode: &str, store: &Path, env: &[(&str, &str)]) -> Helper {
    let lib = fx.lib_dir.join("libcuda.so.1");
    let mut all = vec![
        ("CRYO_BUFFERS_STORE", store.to_str().unwrap()),
        ("CRYO_BUFFERS_LIBCUDA", lib.to_str().unwrap()),
    ];
    all.extend_from_slice(env);
    let owned: Vec<(String, String)> = all
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    let refs: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Helper::spawn(fx, mode, &refs)
}

#[test]
fn device_buffers_round_trip_through_the_store() {
    let Some(fx) = fixture() else { return };
    let dir = buffer_store(fx, "buffers-round-trip");
    let mut h = spawn_buffers(fx, "buffers", &dir, &[("FAKECUDA_COPY_GBPS", "2")]);
    let reply = h.answer(Duration::from_secs(180));
    assert!(reply.starts_with("ok "), "{reply}: {:?}", h.seen);
    // Seen from outside: two snapshots of the same chunks, each verified whole.
    let store = cryo_snapshot::Store::open(&dir).unwrap();
    for name in ["bufs:v1", "bufs:v2"] {
        let report = store.verify(name).unwrap();
        assert!(
            report.failures.is_empty() && report.chunks > 0,
            "{name}: {report:?}"
        );
    }
    let info = store.inspect("bufs:v1").unwrap();
    let objects: Vec<&str> = info.objects.iter().map(|o| o.name.as_str()).collect();
    assert!(objects.contains(&"gpu-buffer:weights"), "{objects:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn device_buffer_errors_name_what_is_wrong_and_commit_nothing() {
    let Some(fx) = fixture() else { return };
    let dir = buffer_store(fx, "buffers-errors");
    let mut h = spawn_buffers(
        fx,
        "buffers-errors",
        &dir,
        &[("FAKECUDA_COPY_FAIL", "dtoh:2,htod:6")],
    );
    let reply = h.answer(Duration::from_secs(180));
    assert!(reply.starts_with("ok "), "{reply}: {:?}", h.seen);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn device_buffers_without_a_driver_are_a_clear_error() {
    let Some(fx) = fixture() else { return };
    let empty = fx.state.join("no-libcuda");
    std::fs::create_dir_all(&empty).unwrap();
    let mut h = Helper::start(
        "nodriver",
        [("LD_LIBRARY_PATH", empty.as_os_str())].into_iter(),
        None,
    );
    let reply = h.answer(ANSWER);
    if let Some(why) = reply.strip_prefix("skipped: ") {
        eprintln!("skipped: {why}");
        return;
    }
    assert!(reply.starts_with("ok no CUDA driver"), "{reply}");
    assert!(reply.contains("none of cudarc's names loads"), "{reply}");
}

#[test]
fn no_driver_is_a_clear_error() {
    let e = LibCuda::open(Some(Path::new("/nonexistent/libcuda.so.1"))).unwrap_err();
    assert!(matches!(e, GpuError::NoDriver { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("no CUDA driver: /nonexistent/libcuda.so.1: "),
        "{e}"
    );
}

#[test]
fn a_driver_without_the_checkpoint_api_is_a_clear_error() {
    let Some(fx) = fixture() else { return };
    // A driver older than r570: the fake with its lock function renamed in the dynamic symbol
    // table, so that dlsym no longer finds it.
    let mut bytes = std::fs::read(&fx.built).unwrap();
    let (from, to) = (b"cuCheckpointProcessLock\0", b"cuCheckpointProcessLocX\0");
    let mut renamed = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(from.len()).position(|w| w == from) {
        bytes[i + at..i + at + to.len()].copy_from_slice(to);
        i += at + to.len();
        renamed += 1;
    }
    assert!(renamed > 0);
    let dir = fx.state.join("r550");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("libcuda.so.1");
    std::fs::write(&path, &bytes).unwrap();
    let e = LibCuda::open(Some(&path)).unwrap_err();
    assert!(
        matches!(
            e,
            GpuError::NoCheckpointApi {
                symbol: "cuCheckpointProcessLock",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("without the checkpoint API"), "{e}");
}

/// The same round trip on a real GPU (scripts/gpu-check runs ignored tests): two CUDA
/// processes found, checkpointed, restored and unlocked through the real driver, their
/// device memory bit-identical afterwards.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn real_gpu_checkpoint_round_trip() {
    // dlopen by soname returns a library already loaded under that soname: the fake, once the
    // fixture has loaded it into this process (it sets FAKECUDA_STATE_DIR when it does).
    if std::env::var_os("FAKECUDA_STATE_DIR").is_some() {
        eprintln!("skipped: the fake driver is loaded in this process (run with --ignored only)");
        return;
    }
    let driver = match LibCuda::open_default() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let mut helpers: Vec<Helper> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2).map(|_| s.spawn(Helper::spawn_real)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let pids = pids(&helpers);
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let plain = pid_of(&sleeper);
    let found = discover::cuda_processes(&driver, &[pids[0], plain, pids[1]]).unwrap();
    // What the real driver answers for a process without CUDA (the fake says INVALID_VALUE).
    eprintln!(
        "driver {} (CUDA {}): GetState of a plain process: {:?}",
        driver.library(),
        driver.version(),
        driver.state(plain).map_err(|e| e.to_string())
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(
        found.iter().map(|p| p.pid).collect::<Vec<_>>(),
        pids,
        "{found:?}"
    );
    let start = Instant::now();
    checkpoint::checkpoint(&driver, &pids, DEFAULT_LOCK_TIMEOUT).unwrap();
    eprintln!("lock + checkpoint: {:?}", start.elapsed());
    let states: Vec<_> = pids.iter().map(|&p| driver.state(p).unwrap()).collect();
    assert_eq!(states, [ProcessState::CHECKPOINTED; 2]);
    for (pid, tid) in checkpoint::restore_threads(&driver, &pids).unwrap() {
        assert!(Path::new(&format!("/proc/{pid}/task/{tid}")).exists());
    }
    let start = Instant::now();
    checkpoint::restore_all(&driver, &pids, &[]).unwrap();
    eprintln!("restore + unlock: {:?}", start.elapsed());
    for h in &mut helpers {
        assert_eq!(h.verify(), "verified");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver: scripts/gpu-check runs it"]
fn real_gpu_device_buffers_round_trip() {
    if buffer_helper_driver_missing() {
        eprintln!("skipped: no CUDA driver on this machine");
        return;
    }
    let dir = std::env::temp_dir().join(format!("gpu-buffers-real-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The helper finds the system's driver as cudarc does: no fake on its library path.
    let mut h = Helper::start(
        "buffers",
        [("CRYO_BUFFERS_STORE", dir.as_os_str())].into_iter(),
        None,
    );
    let reply = h.answer(Duration::from_secs(300));
    eprintln!("real GPU device buffers: {reply}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(reply.starts_with("ok "), "{reply}: {:?}", h.seen);
}

/// Whether a helper on the system's library path finds no CUDA driver.
fn buffer_helper_driver_missing() -> bool {
    let mut h = Helper::start("nodriver", std::iter::empty(), None);
    h.answer(ANSWER).starts_with("ok ")
}

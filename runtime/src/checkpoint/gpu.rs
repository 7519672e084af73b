//! CUDA processes in a container's checkpoint and restore (`cryo_snapshot::gpu` does the driver
//! calls; this module ties them to CRIU's dump and restore of a container):
//!
//! ```text
//! checkpoint: find (maps, then the driver) | lock + checkpoint all | CRIU dump
//!             | leave-running or a failed dump: restore + unlock all
//! restore:    CRIU restore, left stopped | restore + unlock all, restore threads alone
//!             running (ptrace) | SIGCONT
//! ```
//!
//! Finding costs no driver load: only when a process of the container maps `libcuda.so*` is
//! the driver opened (`CRYO_LIBCUDA` or [`GpuOptions::libcuda`], else the soname). An image
//! that holds checkpointed CUDA processes says so in `cryo.json` ([`CudaImage`]: their pids in
//! the container's pid namespace, which CRIU restores as they were).
//!
//! CRIU's own cuda plugin would take the same steps by spawning `cuda-checkpoint`: where it is
//! installed, CRIU is pointed at a plugin directory without it (`plugin_config`).
//!
//! Settings travel in [`crate::CriuFlags::gpu`]: the CLI fills them from its flags over the
//! environment's ([`GpuOptions::from_env`]), the shim from the environment.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cryo_snapshot::gpu::devices::{self, format_uuid, parse_uuid};
use cryo_snapshot::gpu::{self, Driver, GpuError, GpuMap, GpuPair, LibCuda, ProcessState, Uuid};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// How cryo drives the CUDA driver in a checkpoint or restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuOptions {
    /// The driver library (default: `libcuda.so.1` through the loader's search path).
    pub libcuda: Option<PathBuf>,
    /// How long a lock waits for a process's GPU work in flight.
    pub lock_timeout: Duration,
    /// Restore: which GPU each GPU of the image goes to (empty: the same GPUs).
    pub gpu_map: GpuMap,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            libcuda: None,
            lock_timeout: gpu::checkpoint::DEFAULT_LOCK_TIMEOUT,
            gpu_map: GpuMap::default(),
        }
    }
}

impl GpuOptions {
    /// `CRYO_LIBCUDA` (a path), `CRYO_CUDA_LOCK_TIMEOUT_MS` and `CRYO_CUDA_GPU_MAP` (as
    /// `--cuda-gpu-map`; one that does not parse is an error at restore), else the defaults.
    pub fn from_env() -> GpuOptions {
        let mut o = GpuOptions::default();
        if let Some(p) = std::env::var_os("CRYO_LIBCUDA").filter(|p| !p.is_empty()) {
            o.libcuda = Some(PathBuf::from(p));
        }
        if let Some(ms) = std::env::var("CRYO_CUDA_LOCK_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            o.lock_timeout = Duration::from_millis(ms);
        }
        if let Ok(map) = std::env::var("CRYO_CUDA_GPU_MAP") {
            match map.parse() {
                Ok(m) => o.gpu_map = m,
                Err(e) => tracing::warn!("CRYO_CUDA_GPU_MAP ignored: {e}"),
            }
        }
        o
    }

    fn open_driver(&self) -> std::result::Result<LibCuda, GpuError> {
        LibCuda::open(self.libcuda.as_deref())
    }
}

/// What `cryo.json` records of the CUDA processes whose device memory the image holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaImage {
    /// Their pids in the container's pid namespace (CRIU restores those).
    pub pids: Vec<i32>,
    /// `cuDriverGetVersion` of the driver that checkpointed them.
    pub driver_version: i32,
    /// The GPUs that driver saw, in ordinal order (`GPU-…` UUIDs): what `--cuda-gpu-map`'s
    /// old side names. Empty in images that predate the record, or when the driver could not
    /// list them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
}

impl CudaImage {
    /// The recorded GPUs as UUIDs (entries that do not parse are left out).
    fn gpu_uuids(&self) -> Vec<Uuid> {
        self.gpus.iter().filter_map(|g| parse_uuid(g)).collect()
    }
}

fn gpu_err(what: &str, e: GpuError) -> Error {
    Error::Other(format!("{what}: {e}"))
}

fn list(pids: &[i32]) -> String {
    pids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The CUDA processes of a container, locked and checkpointed before CRIU dumps it.
pub(super) struct Checkpointed {
    driver: LibCuda,
    /// Host pids.
    pids: Vec<i32>,
    /// For the image.
    pub image: CudaImage,
}

impl Checkpointed {
    /// Restores and unlocks them: after a dump that leaves the container running, or failed.
    pub fn put_back(&self) -> Result<()> {
        let t0 = Instant::now();
        gpu::checkpoint::restore_all(&self.driver, &self.pids, &[]).map_err(|e| {
            gpu_err(
                &format!("putting the CUDA processes ({}) back", list(&self.pids)),
                e,
            )
        })?;
        tracing::debug!(
            ms = t0.elapsed().as_secs_f64() * 1e3,
            pids = ?self.pids,
            "CUDA processes restored and unlocked"
        );
        Ok(())
    }
}

/// Finds the CUDA processes among `pids` (a container's) and locks and checkpoints them all;
/// `None` when there are none (then no driver was loaded). On any failure every process is as
/// it was, running and unlocked.
pub(super) fn checkpoint(
    pids: &[i32],
    paused: bool,
    o: &GpuOptions,
) -> Result<Option<Checkpointed>> {
    let t0 = Instant::now();
    let candidates =
        gpu::discover::candidates(pids).map_err(|e| gpu_err("looking for CUDA processes", e))?;
    tracing::debug!(
        us = t0.elapsed().as_secs_f64() * 1e6,
        processes = pids.len(),
        ?candidates,
        "CUDA discovery (maps)"
    );
    if candidates.is_empty() {
        return Ok(None);
    }
    let driver = o.open_driver().map_err(|e| {
        gpu_err(
            &format!(
                "processes {} map the CUDA driver, but cryo cannot checkpoint them",
                list(&candidates)
            ),
            e,
        )
    })?;
    let found = gpu::discover::cuda_processes(&driver, &candidates)
        .map_err(|e| gpu_err("looking for CUDA processes", e))?;
    if found.is_empty() {
        return Ok(None);
    }
    if let Some(p) = found.iter().find(|p| p.state != ProcessState::RUNNING) {
        return Err(Error::Other(format!(
            "CUDA process {} is {} (locked or checkpointed by someone else): cryo checkpoints \
             only running CUDA processes",
            p.pid, p.state
        )));
    }
    let pids: Vec<i32> = found.iter().map(|p| p.pid).collect();
    if paused {
        return Err(Error::Other(format!(
            "the container is paused and has CUDA processes ({}): their driver checkpoint needs \
             them running; resume the container first",
            list(&pids)
        )));
    }
    let ns_pids = pids
        .iter()
        .map(|&p| {
            gpu::discover::ns_pid(p)
                .ok_or_else(|| Error::Other(format!("CUDA process {p} is gone")))
        })
        .collect::<Result<Vec<_>>>()?;
    let t1 = Instant::now();
    gpu::checkpoint::checkpoint(&driver, &pids, o.lock_timeout).map_err(|e| {
        gpu_err(
            &format!(
                "checkpointing the CUDA processes ({}); they are left running",
                list(&pids)
            ),
            e,
        )
    })?;
    tracing::debug!(
        ms = t1.elapsed().as_secs_f64() * 1e3,
        ?pids,
        "CUDA processes locked and checkpointed"
    );
    // Recorded for a restore onto other GPUs; a driver that cannot list them still
    // checkpoints (the record is then empty).
    let gpus = match driver.devices() {
        Ok(d) => d.iter().map(format_uuid).collect(),
        Err(e) => {
            tracing::warn!("listing the GPUs for the image: {e}");
            Vec::new()
        }
    };
    Ok(Some(Checkpointed {
        image: CudaImage {
            pids: ns_pids,
            driver_version: driver.version(),
            gpus,
        },
        driver,
        pids,
    }))
}

/// The host pids of the processes among `pids` (the restored container's) whose pid in their
/// own namespace is in `ns_pids`, in the order of `ns_pids`.
fn host_pids(ns_pids: &[i32], pids: &[i32]) -> Result<Vec<i32>> {
    let known: Vec<(i32, i32)> = pids
        .iter()
        .filter_map(|&p| Some((gpu::discover::ns_pid(p)?, p)))
        .collect();
    ns_pids
        .iter()
        .map(|n| {
            known
                .iter()
                .find(|(ns, _)| ns == n)
                .map(|&(_, host)| host)
                .ok_or_else(|| {
                    Error::Other(format!(
                        "the image's CUDA process {n} is not among the restored processes"
                    ))
                })
        })
        .collect()
}

/// What restoring an image's CUDA processes needs: the driver, and the GPU pairs.
pub(super) struct RestoreGpus {
    driver: LibCuda,
    pairs: Vec<GpuPair>,
    /// Why a restore without a map may fail here: the image's GPUs this machine lacks.
    hint: Option<String>,
}

/// Opens the driver for restoring `image`'s CUDA processes and resolves `o.gpu_map` against
/// the image's GPUs and this machine's: before CRIU restores anything, so that a machine
/// without a driver, or a map that cannot apply, fails at once.
pub(super) fn restore_driver(image: &CudaImage, o: &GpuOptions) -> Result<RestoreGpus> {
    let what = || {
        format!(
            "the image holds checkpointed CUDA processes ({}), but cryo cannot restore them",
            list(&image.pids)
        )
    };
    let driver = o.open_driver().map_err(|e| gpu_err(&what(), e))?;
    let recorded = image.gpu_uuids();
    if o.gpu_map.is_empty() && recorded.is_empty() {
        return Ok(RestoreGpus {
            driver,
            pairs: Vec::new(),
            hint: None,
        });
    }
    let here = driver.devices().map_err(|e| gpu_err(&what(), e))?;
    let pairs = o
        .gpu_map
        .pairs(&recorded, &here, driver.version())
        .map_err(|e| gpu_err(&what(), e))?;
    let absent = devices::missing(&recorded, &here);
    let hint = (o.gpu_map.is_empty() && !absent.is_empty()).then(|| {
        format!(
            "the image was checkpointed on GPUs {}; this machine lacks {} (it has {}): \
             --cuda-gpu-map OLD=NEW restores onto others",
            devices::list(&recorded),
            devices::list(&absent),
            devices::list(&here)
        )
    });
    if let Some(h) = &hint {
        tracing::warn!("{h}");
    }
    Ok(RestoreGpus {
        driver,
        pairs,
        hint,
    })
}

/// Restores and unlocks the CUDA processes of `image` in a container CRIU restored stopped
/// (`pids`: its processes), letting only their restore threads run; it stays stopped.
pub(super) fn restore(gpus: &RestoreGpus, image: &CudaImage, pids: &[i32]) -> Result<()> {
    let t0 = Instant::now();
    let host = host_pids(&image.pids, pids)?;
    gpu::stopped::restore_stopped(
        &gpus.driver,
        &host,
        &gpus.pairs,
        gpu::stopped::SETTLE_TIMEOUT,
    )
    .map_err(|e| {
        let mut what = format!("restoring the CUDA processes ({})", list(&host));
        if let Some(h) = &gpus.hint {
            what = format!("{what} ({h})");
        }
        gpu_err(&what, e)
    })?;
    tracing::debug!(
        ms = t0.elapsed().as_secs_f64() * 1e3,
        pids = ?host,
        pairs = gpus.pairs.len(),
        "CUDA processes restored and unlocked"
    );
    Ok(())
}

/// CRIU's default plugin directory.
pub const CRIU_PLUGIN_DIR: &str = "/usr/lib/criu";
/// CRIU's cuda plugin, which would redo cryo's driver steps.
const CUDA_PLUGIN: &str = "cuda_plugin.so";

/// Where CRIU looks for plugins: `$CRIU_LIBS_DIR`, else [`CRIU_PLUGIN_DIR`].
fn plugin_dir() -> PathBuf {
    std::env::var_os("CRIU_LIBS_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CRIU_PLUGIN_DIR))
}

/// When `plugins` (CRIU's plugin directory) holds CRIU's cuda plugin: a configuration file for
/// CRIU (the RPC's `config_file`) under `work` that points CRIU at a directory of links to every
/// other plugin there, so that CRIU leaves CUDA processes to cryo. `None` when there is no such
/// plugin (CRIU 4.2.1 as packaged by Debian ships none).
pub(super) fn plugin_config(plugins: &Path, work: &Path) -> Result<Option<PathBuf>> {
    if !plugins.join(CUDA_PLUGIN).exists() {
        return Ok(None);
    }
    let dir = work.join("criu-plugins");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).io_ctx(&dir)?;
    for e in std::fs::read_dir(plugins).io_ctx(plugins)?.flatten() {
        let name = e.file_name();
        let is_plugin = name.to_str().is_some_and(|n| n.ends_with(".so"));
        if is_plugin && name != CUDA_PLUGIN {
            let link = dir.join(&name);
            std::os::unix::fs::symlink(e.path(), &link).io_ctx(&link)?;
        }
    }
    let conf = work.join("criu-gpu.conf");
    let dir_str = dir.to_str().filter(|s| !s.contains(char::is_whitespace));
    let Some(dir_str) = dir_str else {
        return Err(Error::Other(format!(
            "{}: CRIU's configuration cannot name a path with spaces",
            dir.display()
        )));
    };
    std::fs::write(&conf, format!("libdir {dir_str}\n")).io_ctx(&conf)?;
    tracing::debug!(conf = %conf.display(), "CRIU's cuda plugin left out");
    Ok(Some(conf))
}

/// [`plugin_config`] for CRIU's plugin directory.
pub(super) fn criu_config(work: &Path) -> Result<Option<PathBuf>> {
    plugin_config(&plugin_dir(), work)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_come_from_the_environment_unless_set() {
        // The variables are not set in tests: the defaults.
        let o = GpuOptions::from_env();
        if std::env::var_os("CRYO_LIBCUDA").is_none() {
            assert_eq!(o.libcuda, None);
        }
        assert_eq!(GpuOptions::default().lock_timeout, Duration::from_secs(10));
    }

    #[test]
    fn no_cuda_plugin_means_no_configuration() {
        let plugins = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        std::fs::write(plugins.path().join("amdgpu_plugin.so"), b"").unwrap();
        assert_eq!(plugin_config(plugins.path(), work.path()).unwrap(), None);
        assert_eq!(
            plugin_config(Path::new("/nonexistent"), work.path()).unwrap(),
            None
        );
    }

    #[test]
    fn the_cuda_plugin_is_left_out_and_the_others_kept() {
        let plugins = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        for p in ["cuda_plugin.so", "amdgpu_plugin.so", "README"] {
            std::fs::write(plugins.path().join(p), b"").unwrap();
        }
        let conf = plugin_config(plugins.path(), work.path()).unwrap().unwrap();
        let text = std::fs::read_to_string(&conf).unwrap();
        let dir = work.path().join("criu-plugins");
        assert_eq!(text, format!("libdir {}\n", dir.display()));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["amdgpu_plugin.so"]);
    }

    #[test]
    fn restored_pids_are_matched_by_their_namespace_pid() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert_eq!(host_pids(&[me], &[1, me]).unwrap(), [me]);
        let e = host_pids(&[me], &[]).unwrap_err().to_string();
        assert!(e.contains("not among the restored processes"), "{e}");
    }

    #[test]
    fn a_tree_without_cuda_loads_no_driver() {
        // This process maps no libcuda: nothing found, and no driver needed (a bogus library
        // path would fail to load).
        let o = GpuOptions {
            libcuda: Some(PathBuf::from("/nonexistent/libcuda.so.1")),
            ..GpuOptions::default()
        };
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(checkpoint(&[me], false, &o).unwrap().is_none());
    }

    #[test]
    fn the_image_record_is_optional_json() {
        let mut img = CudaImage {
            pids: vec![3, 4],
            driver_version: 13000,
            gpus: vec![],
        };
        let json = serde_json::to_string(&img).unwrap();
        assert_eq!(json, r#"{"pids":[3,4],"driver_version":13000}"#);
        // Images from before the GPU record read back with none.
        assert_eq!(serde_json::from_str::<CudaImage>(&json).unwrap(), img);
        img.gpus = vec![format_uuid(&[1; 16])];
        let json = serde_json::to_string(&img).unwrap();
        assert!(json.ends_with(r#""gpus":["GPU-01010101-0101-0101-0101-010101010101"]}"#));
        assert_eq!(img.gpu_uuids(), [[1; 16]]);
    }
}

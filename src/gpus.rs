//! `cryo spec --gpus all|N`: NVIDIA GPU access for a bundle, so that a CUDA program runs inside
//! with the host's driver and no toolkit of its own:
//!
//! - the device nodes `/dev/nvidiactl`, `/dev/nvidia-uvm`, `/dev/nvidia-uvm-tools`,
//!   `/dev/nvidia-modeset` (those present) and `/dev/nvidia0`.. (all, or the first N), each in
//!   `linux.devices` with an allow rule in `linux.resources.devices`;
//! - read-only binds, at the same paths, of the driver's user-space libraries (`libcuda.so*`,
//!   `libnvidia-*.so*`: from `ldconfig -p`, else the usual library directories) and utilities
//!   (`nvidia-smi`, ...).
//!
//! The libraries keep their host paths: a container whose loader searches the same multiarch
//! directory (Debian, Ubuntu) finds them; others need `LD_LIBRARY_PATH`. What the host is made
//! of is a [`Host`], so tests give a fake /dev and library directory.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Device nodes every CUDA process needs besides its GPUs' (those present are added).
const CONTROL_NODES: &[&str] = &[
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
];
/// The driver's utilities bound when present.
const UTILITIES: &[&str] = &[
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
];

/// Which GPUs: `all`, or the first N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gpus {
    All,
    Count(usize),
}

impl std::str::FromStr for Gpus {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Gpus> {
        match s {
            "all" => Ok(Gpus::All),
            n => match n.parse::<usize>() {
                Ok(0) | Err(_) => {
                    bail!("--gpus {s:?}: expected \"all\" or a number of GPUs (1 or more)")
                }
                Ok(n) => Ok(Gpus::Count(n)),
            },
        }
    }
}

/// Where the host keeps what a CUDA program needs.
#[derive(Debug, Clone)]
pub struct Host {
    /// The host's /dev (nodes are bound at `/dev/<name>` in the container).
    pub dev: PathBuf,
    /// Directories searched for the driver's libraries when `ldconfig` is not there.
    pub lib_dirs: Vec<PathBuf>,
    /// Directories searched for the utilities.
    pub bin_dirs: Vec<PathBuf>,
    /// The output of `ldconfig -p`, if any.
    pub ldconfig: Option<String>,
}

impl Host {
    /// This machine.
    pub fn system() -> Host {
        let ldconfig = ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"]
            .iter()
            .find_map(|l| std::process::Command::new(l).arg("-p").output().ok())
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        Host {
            dev: PathBuf::from("/dev"),
            lib_dirs: [
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib/aarch64-linux-gnu",
                "/usr/lib64",
                "/usr/lib",
                "/lib/x86_64-linux-gnu",
                "/lib64",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
            bin_dirs: ["/usr/bin", "/usr/local/bin", "/usr/sbin", "/bin"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            ldconfig,
        }
    }
}

/// A character device node to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its path in the container (`/dev/nvidia0`).
    pub path: String,
    pub major: u64,
    pub minor: u64,
}

/// What `--gpus` adds to a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Additions {
    pub nodes: Vec<Node>,
    /// Host paths bound read-only at the same paths.
    pub binds: Vec<PathBuf>,
}

/// The node `name` of the host's /dev, if it is a character device (through links).
fn node(host: &Host, name: &str) -> Result<Option<Node>> {
    let path = host.dev.join(name);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    };
    if !meta.file_type().is_char_device() {
        bail!("{}: not a character device", path.display());
    }
    let rdev = meta.rdev();
    Ok(Some(Node {
        path: format!("/dev/{name}"),
        major: nix::sys::stat::major(rdev),
        minor: nix::sys::stat::minor(rdev),
    }))
}

/// The GPU numbers present: `/dev/nvidia<N>`.
fn gpu_numbers(host: &Host) -> Result<Vec<u32>> {
    let rd = match std::fs::read_dir(&host.dev) {
        Ok(rd) => rd,
        Err(e) => return Err(e).with_context(|| host.dev.display().to_string()),
    };
    let mut numbers: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("nvidia")?.parse().ok())
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// Whether a library file name is one of the driver's.
fn is_driver_library(name: &str) -> bool {
    (name.starts_with("libcuda.so") || name.starts_with("libnvidia-")) && name.contains(".so")
}

/// The driver's libraries: from `ldconfig -p` (every name it lists, links included), else
/// from the library directories.
fn libraries(host: &Host) -> Vec<PathBuf> {
    let mut found = BTreeSet::new();
    if let Some(text) = &host.ldconfig {
        for line in text.lines() {
            let Some((name, path)) = line.trim().split_once(" => ") else {
                continue;
            };
            let name = name.split_whitespace().next().unwrap_or("");
            if is_driver_library(name) && Path::new(path).exists() {
                found.insert(PathBuf::from(path));
            }
        }
    }
    if found.is_empty() {
        for dir in &host.lib_dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_name().to_str().is_some_and(is_driver_library) {
                    found.insert(e.path());
                }
            }
        }
    }
    found.into_iter().collect()
}

/// What `--gpus` adds on `host`; an error when it has no NVIDIA GPU (or fewer than asked).
pub fn additions(host: &Host, gpus: Gpus) -> Result<Additions> {
    let numbers = gpu_numbers(host)?;
    if numbers.is_empty() {
        bail!(
            "--gpus: no NVIDIA GPU: {} has no nvidia<N> device nodes (is the NVIDIA driver \
             installed and loaded?)",
            host.dev.display()
        );
    }
    let chosen = match gpus {
        Gpus::All => numbers.clone(),
        Gpus::Count(n) if n <= numbers.len() => numbers[..n].to_vec(),
        Gpus::Count(n) => bail!(
            "--gpus {n}: this machine has {} NVIDIA GPU(s) ({})",
            numbers.len(),
            numbers
                .iter()
                .map(|g| format!("nvidia{g}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut nodes = Vec::new();
    for name in CONTROL_NODES {
        nodes.extend(node(host, name)?);
    }
    if !nodes.iter().any(|n| n.path == "/dev/nvidiactl") {
        bail!(
            "--gpus: {} has GPU nodes but no nvidiactl: the NVIDIA driver is not usable",
            host.dev.display()
        );
    }
    for g in chosen {
        nodes.extend(node(host, &format!("nvidia{g}"))?);
    }
    let libs = libraries(host);
    if !libs.iter().any(|l| {
        l.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libcuda.so"))
    }) {
        bail!("--gpus: the NVIDIA driver's libcuda.so is not installed (not in ldconfig's cache nor the library directories)");
    }
    let mut binds = libs;
    for u in UTILITIES {
        if let Some(p) = host.bin_dirs.iter().map(|d| d.join(u)).find(|p| p.exists()) {
            binds.push(p);
        }
    }
    Ok(Additions { nodes, binds })
}

/// Adds `a` to a spec (as JSON): nodes, their device cgroup rules, read-only binds.
pub fn apply(spec: &mut Value, a: &Additions) {
    let linux = &mut spec["linux"];
    if !linux.is_object() {
        *linux = json!({});
    }
    for n in &a.nodes {
        push(
            &mut linux["devices"],
            json!({"path": n.path, "type": "c", "major": n.major, "minor": n.minor,
                   "fileMode": 0o666, "uid": 0, "gid": 0}),
        );
        push(
            &mut linux["resources"]["devices"],
            json!({"allow": true, "type": "c", "major": n.major, "minor": n.minor, "access": "rwm"}),
        );
    }
    for b in &a.binds {
        push(
            &mut spec["mounts"],
            json!({"destination": b, "type": "bind", "source": b,
                   "options": ["bind", "ro", "nosuid", "nodev"]}),
        );
    }
}

fn push(list: &mut Value, v: Value) {
    if !list.is_array() {
        *list = json!([]);
    }
    if let Some(a) = list.as_array_mut() {
        a.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake host: /dev with GPU nodes that are links to real character devices (no mknod
    /// needed), a library directory and a bin directory.
    fn fake_host(gpus: u32, libs: &[&str]) -> (tempfile::TempDir, Host) {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("dev");
        let lib = t.path().join("lib");
        let bin = t.path().join("bin");
        for d in [&dev, &lib, &bin] {
            std::fs::create_dir(d).unwrap();
        }
        if gpus > 0 {
            symlink("/dev/null", dev.join("nvidiactl")).unwrap();
            symlink("/dev/zero", dev.join("nvidia-uvm")).unwrap();
        }
        for g in 0..gpus {
            symlink("/dev/full", dev.join(format!("nvidia{g}"))).unwrap();
        }
        std::fs::write(dev.join("null"), b"").unwrap();
        for l in libs {
            std::fs::write(lib.join(l), b"").unwrap();
        }
        std::fs::write(bin.join("nvidia-smi"), b"").unwrap();
        let host = Host {
            dev,
            lib_dirs: vec![lib],
            bin_dirs: vec![bin],
            ldconfig: None,
        };
        (t, host)
    }

    const LIBS: &[&str] = &[
        "libcuda.so.580.65",
        "libcuda.so.1",
        "libnvidia-ml.so.1",
        "libz.so.1",
    ];

    #[test]
    fn gpus_parse() {
        assert_eq!("all".parse::<Gpus>().unwrap(), Gpus::All);
        assert_eq!("2".parse::<Gpus>().unwrap(), Gpus::Count(2));
        assert!("0".parse::<Gpus>().is_err());
        assert!("some".parse::<Gpus>().is_err());
    }

    #[test]
    fn all_gpus_control_nodes_libraries_and_utilities() {
        let (_t, host) = fake_host(2, LIBS);
        let a = additions(&host, Gpus::All).unwrap();
        let paths: Vec<&str> = a.nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/dev/nvidiactl",
                "/dev/nvidia-uvm",
                "/dev/nvidia0",
                "/dev/nvidia1"
            ]
        );
        // /dev/null is 1:3, /dev/full 1:7.
        assert_eq!((a.nodes[0].major, a.nodes[0].minor), (1, 3));
        assert_eq!((a.nodes[2].major, a.nodes[2].minor), (1, 7));
        let names: Vec<&str> = a
            .binds
            .iter()
            .map(|b| b.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "libcuda.so.1",
                "libcuda.so.580.65",
                "libnvidia-ml.so.1",
                "nvidia-smi"
            ]
        );
    }

    #[test]
    fn a_count_takes_the_first_gpus_and_no_more_than_there_are() {
        let (_t, host) = fake_host(3, LIBS);
        let a = additions(&host, Gpus::Count(1)).unwrap();
        assert_eq!(a.nodes.last().unwrap().path, "/dev/nvidia0");
        assert_eq!(a.nodes.len(), 3);
        let e = additions(&host, Gpus::Count(4)).unwrap_err().to_string();
        assert!(
            e.contains("has 3 NVIDIA GPU(s) (nvidia0, nvidia1, nvidia2)"),
            "{e}"
        );
    }

    #[test]
    fn no_gpu_or_no_driver_library_is_a_clear_error() {
        let (_t, host) = fake_host(0, LIBS);
        let e = additions(&host, Gpus::All).unwrap_err().to_string();
        assert!(e.contains("no NVIDIA GPU"), "{e}");
        let (_t, host) = fake_host(1, &["libz.so.1"]);
        let e = additions(&host, Gpus::All).unwrap_err().to_string();
        assert!(e.contains("libcuda.so is not installed"), "{e}");
    }

    #[test]
    fn ldconfig_lists_the_libraries_when_it_is_there() {
        let (t, mut host) = fake_host(1, &[]);
        let real = t.path().join("elsewhere");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("libcuda.so.1"), b"").unwrap();
        host.ldconfig = Some(format!(
            "3 libs found in cache `/etc/ld.so.cache'\n\
             \tlibcuda.so.1 (libc6,x86-64) => {0}/libcuda.so.1\n\
             \tlibnvidia-gone.so.1 (libc6,x86-64) => {0}/libnvidia-gone.so.1\n\
             \tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1\n",
            real.display()
        ));
        let a = additions(&host, Gpus::All).unwrap();
        assert_eq!(a.binds[0], real.join("libcuda.so.1"));
        assert_eq!(a.binds.len(), 2, "{:?}", a.binds);
    }

    #[test]
    fn the_spec_gets_nodes_rules_and_read_only_binds() {
        let (_t, host) = fake_host(1, LIBS);
        let a = additions(&host, Gpus::All).unwrap();
        let mut spec = json!({"mounts": [{"destination": "/proc"}],
            "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}}});
        apply(&mut spec, &a);
        let devices = spec["linux"]["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 3);
        assert_eq!(devices[0]["path"], "/dev/nvidiactl");
        assert_eq!(devices[0]["type"], "c");
        let rules = spec["linux"]["resources"]["devices"].as_array().unwrap();
        // The deny-all rule first, then one allow per node.
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[0]["allow"], false);
        assert_eq!(rules[3]["allow"], true);
        assert_eq!(rules[3]["major"], 1);
        let mounts = spec["mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 1 + a.binds.len());
        assert!(mounts[1]["options"]
            .as_array()
            .unwrap()
            .contains(&json!("ro")));
        // The result is a spec oci-spec reads.
        let mut full = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
        apply(&mut full, &a);
        let _: oci_spec::runtime::Spec = serde_json::from_value(full).unwrap();
    }
}

//! Container checkpoint and restore: what runc's `checkpoint`/`restore` do, through cryo's
//! CRIU driver (`cryo_snapshot::criu`). This module turns a container (its spec, state,
//! cgroups, stdio) into CRIU options and back; CRIU itself dumps and restores the process tree.
//!
//! An image directory holds CRIU's images plus `cryo.json` (what cryo needs to restore: the
//! container's stdio, the CRIU version, its CUDA processes) and runc's `descriptors.json`. A dump is written into
//! a hidden staging directory beside the target and renamed into place only when CRIU
//! succeeded, so a failed checkpoint leaves the previous image intact and nothing
//! half-written visible; CRIU thaws the container on failure.

mod dump;
mod externals;
pub mod gpu;
mod restore;
mod tmpfs;

pub(crate) use dump::remove_shm_staging;
pub use dump::CheckpointReport;
pub use gpu::{CudaImage, GpuOptions};
pub use tmpfs::KeptTmpfs;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use cryo_snapshot::criu::rpc;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// The file in an image directory that holds [`ImageMeta`].
pub const META_FILE: &str = "cryo.json";
/// runc's list of the init's stdio paths, kept for tools that read it.
pub const DESCRIPTORS_FILE: &str = "descriptors.json";
/// `cryo.json`'s newest version, 3: written when the images are a lazy migration's, without
/// their memory (a cryo that reads at most version 2 would hand CRIU images without pages).
const META_VERSION: u32 = 3;
/// Version 2: the images name kept tmpfs mounts (a cryo from before them reads only version 1,
/// and would hand CRIU external mounts it cannot map). Images that need neither are version 1.
const META_VERSION_KEPT_TMPFS: u32 = 2;
/// The oldest `cryo.json` version this build reads.
const META_VERSION_MIN: u32 = 1;

/// How CRIU treats cgroups (runc's `--manage-cgroups-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupsMode {
    /// Restore properties only of cgroups CRIU creates (runc's default).
    #[default]
    Soft,
    /// Restore every property.
    Full,
    /// Like full, and fail when a cgroup exists with other properties.
    Strict,
    /// Leave cgroups alone.
    Ignore,
}

impl std::str::FromStr for CgroupsMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "soft" => Ok(CgroupsMode::Soft),
            "full" => Ok(CgroupsMode::Full),
            "strict" => Ok(CgroupsMode::Strict),
            "ignore" => Ok(CgroupsMode::Ignore),
            _ => Err(Error::Other(format!(
                "--manage-cgroups-mode {s:?}: expected soft, full, strict or ignore"
            ))),
        }
    }
}

impl CgroupsMode {
    fn rpc(self) -> rpc::CriuCgMode {
        match self {
            CgroupsMode::Soft => rpc::CriuCgMode::Soft,
            CgroupsMode::Full => rpc::CriuCgMode::Full,
            CgroupsMode::Strict => rpc::CriuCgMode::Strict,
            CgroupsMode::Ignore => rpc::CriuCgMode::Ignore,
        }
    }
}

/// The CLONE_NEW* bits of runc's `--empty-ns` names (only the network namespace, as runc).
pub fn empty_ns_bits(names: &[String]) -> Result<u32> {
    let mut bits = 0u32;
    for ns in names {
        match ns.as_str() {
            "network" | "net" => bits |= libc::CLONE_NEWNET as u32,
            other => {
                return Err(Error::Other(format!(
                    "empty namespace {other:?}: only \"network\" is supported"
                )))
            }
        }
    }
    Ok(bits)
}

/// The CRIU switches shared by checkpoint and restore (runc's flags of the same names).
#[derive(Debug, Clone, Default)]
pub struct CriuFlags {
    /// `--tcp-established`.
    pub tcp_established: bool,
    /// `--ext-unix-sk`.
    pub ext_unix_sk: bool,
    /// `--shell-job`.
    pub shell_job: bool,
    /// `--file-locks`.
    pub file_locks: bool,
    /// `--manage-cgroups-mode`. `None` (not asked for): soft at a checkpoint; at a restore,
    /// ignore when the checkpoint found every process of the container in one set of cgroups
    /// (`ImageMeta::cgroups_flat`), else soft. cryo creates and configures the restored
    /// container's cgroups from the spec and runs CRIU inside them before the restore, so
    /// the tasks CRIU forks are where soft mode would move them; only CRIU's cgroup yard,
    /// 20 to 50 ms of every restore here, is spared.
    pub cgroups_mode: Option<CgroupsMode>,
    /// `--empty-ns`: CLONE_NEW* bits of namespaces CRIU neither dumps nor restores.
    pub empty_ns: u32,
    /// The CRIU binary (default: see [`cryo_snapshot::criu::Criu::locate`]).
    pub criu: Option<PathBuf>,
    /// How the CUDA processes of the container are checkpointed and restored (the driver
    /// library, the lock timeout); unused for containers without any.
    pub gpu: GpuOptions,
}

/// `checkpoint` options.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// Where the images go (runc's `--image-path`, default `checkpoint`).
    pub image_path: PathBuf,
    /// Where CRIU's log and work files go (default: the image directory).
    pub work_path: Option<PathBuf>,
    /// Keep the container running after the dump.
    pub leave_running: bool,
    /// Checkpoint into the snapshot store under this name instead of `image_path`.
    pub snapshot: Option<String>,
    /// The store (default: `$CRYO_STORE`, else /var/lib/cryo/store).
    pub store: Option<PathBuf>,
    /// How the snapshot's new chunks are compressed (default zstd 3). The container stays
    /// frozen while they are: `none` or `lz4` checkpoint faster, and `Store::compact`
    /// (`cryo snapshot compact`) shrinks them later.
    pub compression: cryo_snapshot::CodecPolicy,
    /// runc's `--lazy-pages` (lazy migration): CRIU dumps everything but the private memory,
    /// which stays in the frozen container and is served from `page_server`'s port to a
    /// `criu lazy-pages --page-server` daemon on the restoring side, whose restore (`restore
    /// --lazy-pages` from these images) runs at once. The checkpoint returns, and the container
    /// is gone, once every page has been fetched. Needs `page_server`; not with `snapshot`.
    pub lazy_pages: bool,
    /// runc's `--page-server`: without `lazy_pages`, CRIU sends the memory pages to the
    /// `criu page-server` listening there instead of writing them into `image_path`; with it,
    /// CRIU listens on its port (every address) for the lazy-pages daemon.
    pub page_server: Option<PageServerAddr>,
    /// runc's `--status-fd`: a descriptor that gets one zero byte once the lazy-pages server
    /// listens (the images are published by then). Written once; the checkpoint's clone of
    /// it is dropped then.
    pub status_fd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// The shared switches.
    pub flags: CriuFlags,
}

/// A page server's `ADDRESS:PORT` (runc's `--page-server`): a host name or IPv4 address, or
/// an IPv6 address in brackets (`[::1]:27`), and a port from 1 to 65535.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageServerAddr {
    /// Host name or address, without brackets. CRIU connects to it without `lazy_pages`; with
    /// them it listens on the port of every IPv4 address and ignores this.
    pub address: String,
    /// TCP port.
    pub port: u16,
}

impl std::str::FromStr for PageServerAddr {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = |why: &str| format!("page server {s:?}: {why} (expected ADDRESS:PORT)");
        let (address, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let address = match address.strip_prefix('[') {
            Some(rest) => rest
                .strip_suffix(']')
                .filter(|a| !a.contains(['[', ']']))
                .ok_or_else(|| bad("an unclosed '['"))?,
            None if address.contains(':') => {
                return Err(bad("an IPv6 address goes in brackets, as [::1]:27"))
            }
            None => address,
        };
        if address.is_empty() || address.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad("no valid address"));
        }
        let port = Some(port)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
        Ok(PageServerAddr {
            address: address.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for PageServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.address.contains(':') {
            write!(f, "[{}]:{}", self.address, self.port)
        } else {
            write!(f, "{}:{}", self.address, self.port)
        }
    }
}

/// `restore` options.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The images (runc's `--image-path`).
    pub image_path: PathBuf,
    /// Where CRIU's log goes (default: the image directory).
    pub work_path: Option<PathBuf>,
    /// The bundle whose config.json describes the container (default: cwd).
    pub bundle: PathBuf,
    /// Write the restored init's pid here.
    pub pid_file: Option<PathBuf>,
    /// Receives the pty master of a container restored with a terminal.
    pub console_socket: Option<PathBuf>,
    /// Restore from this snapshot of the store (a name, `sha256:HEX` or a unique prefix)
    /// instead of `image_path`.
    pub snapshot: Option<String>,
    /// Lazy restore: the process runs at once and its private memory streams in. With
    /// `snapshot`, from the store through cryo's lazy-pages server (`cryo lazy-pages`);
    /// without, from the `criu lazy-pages --page-server` daemon the caller started in CRIU's
    /// work directory, for images of a [`CheckpointOptions::lazy_pages`] checkpoint (runc's
    /// lazy migration).
    pub lazy: bool,
    /// Leave the restored tree stopped (CRIU's `--leave-stopped`); resume it with SIGCONT.
    pub leave_stopped: bool,
    /// The store (default: `$CRYO_STORE`, else /var/lib/cryo/store).
    pub store: Option<PathBuf>,
    /// New stdin, stdout and stderr for the restored init, in place of what it had at the
    /// checkpoint (a server such as the containerd shim gives each restore fresh streams).
    /// Streams not given are reopened as they were (external files) or taken from the
    /// caller's own fds 0-2.
    pub stdio: crate::Stdio,
    /// The shared switches.
    pub flags: CriuFlags,
}

/// What cryo records beside CRIU's images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageMeta {
    /// Format version of this file.
    pub version: u32,
    /// The container checkpointed.
    pub id: String,
    /// The CRIU version that dumped it.
    pub criu: String,
    /// The init's stdio at checkpoint time.
    pub descriptors: Vec<Descriptor>,
    /// The CUDA processes whose device memory the driver checkpointed into their host memory
    /// before the dump: restore brings it back onto a GPU (absent: none; older cryo versions
    /// leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda: Option<CudaImage>,
    /// The masked directories CRIU was told are external instead of dumping them: each an
    /// empty read-only tmpfs, which the restore mounts afresh (absent: none; older cryo
    /// versions leave it out and CRIU restored them from its images).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_dirs: Vec<MaskedDir>,
    /// The tmpfs mounts of the spec whose content cryo wrote into the images itself instead
    /// of CRIU (absent: none; older cryo versions leave it out and CRIU restores them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_tmpfs: Vec<KeptTmpfs>,
    /// Whether every process of the container was in the same cgroups at the dump (absent:
    /// not known, as in images of older cryo versions), which lets a restore leave cgroups to
    /// cryo (see [`CriuFlags::cgroups_mode`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cgroups_flat: bool,
    /// Whether the private memory was left to a lazy-migration page server
    /// ([`CheckpointOptions::lazy_pages`]) instead of being written here: only a restore
    /// with `--lazy-pages` and a `criu lazy-pages` daemon can bring these images back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lazy_migration: bool,
}

/// A masked directory (`linux.maskedPaths`) as the checkpoint found it: an empty read-only
/// tmpfs at `path`, whose root had this mode and owner (host ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedDir {
    /// The path in the container.
    pub path: String,
    /// The permission bits of the tmpfs root.
    pub mode: u32,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

/// One stdio fd of the container's init.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Descriptor {
    /// 0, 1 or 2.
    pub fd: i32,
    /// What /proc/PID/fd/N pointed at (`/dev/null`, `pipe:[123]`, a host path).
    pub path: String,
    /// CRIU's key for a file outside the container's mounts (`file[MNT:INODE]`), dumped as
    /// external and handed back at restore.
    pub external: Option<String>,
    /// The open flags (fdinfo), to reopen an external file as it was.
    pub flags: i32,
}

impl Descriptor {
    /// The key under which CRIU knows this fd's file at restore, if it must be handed in.
    fn inherit_key(&self) -> Option<&str> {
        if self.path.starts_with("pipe:") {
            Some(&self.path)
        } else {
            self.external.as_deref()
        }
    }
}

fn criu_err(e: cryo_snapshot::Error) -> Error {
    let log = e.criu_log();
    if log.is_empty() {
        Error::Other(e.to_string())
    } else {
        Error::Other(format!("{e}\nCRIU log:\n  {}", log.join("\n  ")))
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir().io_ctx(".")?.join(p))
    }
}

/// `--image-path`, absolute, defaulting to runc's `checkpoint`.
fn image_dir(p: &Path) -> Result<PathBuf> {
    absolute(if p.as_os_str().is_empty() {
        Path::new("checkpoint")
    } else {
        p
    })
}

/// The store at `path`, else the default one.
fn open_store(path: Option<&Path>) -> Result<cryo_snapshot::Store> {
    match path {
        Some(p) => cryo_snapshot::Store::open(p),
        None => cryo_snapshot::Store::open_default(),
    }
    .map_err(|e| Error::Other(format!("snapshot store: {e}")))
}

/// `--work-path`, created if needed and opened for CRIU (`None`: CRIU uses the images dir).
fn open_work_dir(path: Option<&Path>) -> Result<Option<File>> {
    path.map(|w| {
        fs::create_dir_all(w).io_ctx(w)?;
        File::open(w).io_ctx(w)
    })
    .transpose()
}

fn mkdir_0700(p: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(p, e)),
    }
}

fn base_opts(images: &File, work: Option<&File>, log: &str, flags: &CriuFlags) -> rpc::CriuOpts {
    rpc::CriuOpts {
        images_dir_fd: images.as_raw_fd(),
        work_dir_fd: work.map(|w| w.as_raw_fd()),
        log_file: Some(log.into()),
        log_level: Some(4),
        notify_scripts: Some(true),
        manage_cgroups: Some(true),
        manage_cgroups_mode: Some(flags.cgroups_mode.unwrap_or_default().rpc() as i32),
        shell_job: Some(flags.shell_job),
        tcp_established: Some(flags.tcp_established),
        ext_unix_sk: Some(flags.ext_unix_sk),
        file_locks: Some(flags.file_locks),
        empty_ns: Some(flags.empty_ns),
        orphan_pts_master: Some(true),
        // CRIU's network lock (iptables rules in the container's netns, by spawning
        // iptables-restore: ~15 ms to lock and ~45 ms to unlock a restore here) exists to keep
        // packets away from TCP connections while they are in repair mode. Without
        // --tcp-established there are none: a dump refuses established connections, and a
        // listening socket only misses connections that arrive while the tree is frozen,
        // which the lock would drop too.
        network_lock: (!flags.tcp_established).then_some(rpc::CriuNetworkLockMethod::Skip as i32),
        ..Default::default()
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| Error::Other(e.to_string()))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .io_ctx(path)?;
    std::io::Write::write_all(&mut f, &bytes).io_ctx(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_mode_parses_runc_names() {
        assert_eq!("soft".parse::<CgroupsMode>().unwrap(), CgroupsMode::Soft);
        assert_eq!(
            "strict".parse::<CgroupsMode>().unwrap(),
            CgroupsMode::Strict
        );
        let e = "hard".parse::<CgroupsMode>().unwrap_err().to_string();
        assert!(e.contains("hard") && e.contains("soft"), "{e}");
    }

    #[test]
    fn image_meta_without_cuda_reads_and_writes_as_before() {
        let old = r#"{"version":1,"id":"c","criu":"4.2.1","descriptors":[]}"#;
        let meta: ImageMeta = serde_json::from_str(old).unwrap();
        assert_eq!(meta.cuda, None);
        assert_eq!(serde_json::to_string(&meta).unwrap(), old);
        let with = r#"{"version":1,"id":"c","criu":"4.2.1","descriptors":[],"cuda":{"pids":[2,3],"driver_version":13000}}"#;
        let meta: ImageMeta = serde_json::from_str(with).unwrap();
        assert_eq!(meta.cuda.as_ref().unwrap().pids, [2, 3]);
        assert_eq!(serde_json::to_string(&meta).unwrap(), with);
    }

    #[test]
    fn masked_dirs_are_recorded_only_when_there_are_some() {
        let with = r#"{"version":1,"id":"c","criu":"4.2.1","descriptors":[],"masked_dirs":[{"path":"/proc/acpi","mode":1023,"uid":0,"gid":0}]}"#;
        let meta: ImageMeta = serde_json::from_str(with).unwrap();
        assert_eq!(meta.masked_dirs[0].path, "/proc/acpi");
        assert_eq!(meta.masked_dirs[0].mode, 0o1777);
        assert_eq!(serde_json::to_string(&meta).unwrap(), with);
    }

    #[test]
    fn pipes_and_external_files_are_handed_back() {
        let d = |path: &str, ext: Option<&str>| Descriptor {
            fd: 1,
            path: path.into(),
            external: ext.map(String::from),
            flags: libc::O_WRONLY,
        };
        assert_eq!(d("pipe:[42]", None).inherit_key(), Some("pipe:[42]"));
        assert_eq!(
            d("/tmp/out", Some("file[1b:9]")).inherit_key(),
            Some("file[1b:9]")
        );
        assert_eq!(d("/dev/null", None).inherit_key(), None);
    }
}

#[cfg(test)]
mod page_server_addr_tests {
    use super::PageServerAddr;

    #[test]
    fn addresses_parse_as_runc_takes_them_and_print_back() {
        for (s, addr, port) in [
            ("127.0.0.1:27", "127.0.0.1", 27),
            ("0.0.0.0:65535", "0.0.0.0", 65535),
            ("node-b.example:1", "node-b.example", 1),
            ("[::1]:27277", "::1", 27277),
            ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
        ] {
            let p: PageServerAddr = s.parse().unwrap();
            assert_eq!((p.address.as_str(), p.port), (addr, port), "{s}");
            assert_eq!(p.to_string(), s);
        }
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        for (s, why) in [
            ("127.0.0.1", "no port"),
            (":27", "no valid address"),
            ("[]:27", "no valid address"),
            ("a b:27", "no valid address"),
            ("[::1:80", "unclosed"),
            ("[::1]]:80", "unclosed"),
            ("fe80::1:8080", "brackets"),
            ("host:", "port"),
            ("host:0", "port"),
            ("host:+80", "port"),
            ("host:65536", "port"),
        ] {
            let e = s.parse::<PageServerAddr>().unwrap_err();
            assert!(e.contains(why) && e.contains(s), "{s}: {e}");
        }
    }
}

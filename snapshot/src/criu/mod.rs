//! The CRIU driver: finds a CRIU binary new enough (>= 4.0) and drives it over its RPC
//! (`criu swrk`), dumping and restoring a process tree given its root pid.
//!
//! This module knows nothing of containers: the caller builds the [`rpc::CriuOpts`] (root,
//! external mounts, cgroup mode) and answers CRIU's notifications through a [`Notify`]
//! handler. The protocol ([`swrk`]) is one datagram of bare protobuf per message over a
//! `SOCK_SEQPACKET` socketpair; CRIU resolves the caller's fds (`images_dir_fd`, `work_dir_fd`)
//! through `/proc/<caller>/fd`, so they only need to stay open in this process.

pub mod images;
pub mod ingest;
mod kdat;
pub mod pageserver;
pub mod rpc;
mod swrk;

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub use ingest::{
    commit_received, ingest, materialize, materialize_lazy, IngestReport, MaterializeReport,
};
pub use pageserver::{PageServer, Received};
pub use swrk::{Session, SpawnOptions};

use crate::{Error, Result};

/// Where `scripts/setup` installs a CRIU that works on this project's machines (trixie's 4.1).
pub const REFS_CRIU: &str = "/var/cache/cryo/refs/bin/criu";

/// The oldest CRIU this driver speaks to (its RPC, pidfd store and lazy-pages protocol).
pub const MIN_VERSION: Version = Version {
    major: 4,
    minor: 0,
    sublevel: 0,
};

/// A CRIU version, as `criu --version` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Sublevel (0 when absent).
    pub sublevel: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.sublevel)
    }
}

impl Version {
    /// Parses the output of `criu --version` (`Version: 4.1.1`, maybe followed by `GitID: ...`).
    pub fn parse_output(out: &str) -> Option<Version> {
        let line = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Version:"))?;
        let mut parts = line.trim().split('.').map(|p| p.trim().parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next().unwrap_or(Ok(0)).ok()?;
        let sublevel = parts.next().unwrap_or(Ok(0)).ok()?;
        Some(Version {
            major,
            minor,
            sublevel,
        })
    }

    /// Whether CRIU's page-server header carries a 64-bit page count (4.2 and later: 32 bytes)
    /// instead of a 32-bit one (4.0 to 4.1: 24 bytes).
    pub fn wide_page_server_header(&self) -> bool {
        (self.major, self.minor) >= (4, 2)
    }
}

/// A CRIU binary that answered `--version` with a version this driver supports.
#[derive(Debug, Clone)]
pub struct Criu {
    path: PathBuf,
    version: Version,
}

impl Criu {
    /// Finds CRIU: `explicit` if given, else `$CRYO_CRIU`, else [`REFS_CRIU`] if it exists, else
    /// `criu` on `PATH`. Refuses a CRIU older than [`MIN_VERSION`] with an error that names it.
    pub fn locate(explicit: Option<&Path>) -> Result<Criu> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match std::env::var_os("CRYO_CRIU") {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ if Path::new(REFS_CRIU).exists() => PathBuf::from(REFS_CRIU),
                _ => find_on_path("criu").ok_or_else(|| Error::Criu {
                    op: "locate",
                    message: format!(
                        "no criu binary: not at {REFS_CRIU}, not on PATH, CRYO_CRIU unset \
                         (scripts/setup installs one)"
                    ),
                    log: Vec::new(),
                })?,
            },
        };
        Criu::at(path)
    }

    /// Uses the CRIU binary at `path`, after checking its version (what `--version` printed is
    /// kept per binary on a tmpfs, next to the kdat cache, for the next run).
    pub fn at(path: impl Into<PathBuf>) -> Result<Criu> {
        let path = path.into();
        let cached = kdat::cached_version(&path)
            .filter(|t| Version::parse_output(t).is_some_and(|v| v >= MIN_VERSION));
        let text = match cached {
            Some(t) => t,
            None => {
                let out = std::process::Command::new(&path)
                    .arg("--version")
                    .output()
                    .map_err(|e| Error::io(&path, "run --version", e))?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if out.status.success() && Version::parse_output(&text).is_some() {
                    kdat::keep_version(&path, &text);
                }
                text
            }
        };
        let version = Version::parse_output(&text).ok_or_else(|| Error::Criu {
            op: "version",
            message: format!(
                "{}: `--version` printed {:?}, expected `Version: X.Y[.Z]`",
                path.display(),
                text.trim()
            ),
            log: Vec::new(),
        })?;
        if version < MIN_VERSION {
            return Err(Error::Criu {
                op: "version",
                message: format!(
                    "{} is CRIU {version}; cryo needs {MIN_VERSION} or newer (scripts/setup \
                     installs one at {REFS_CRIU})",
                    path.display()
                ),
                log: Vec::new(),
            });
        }
        Ok(Criu { path, version })
    }

    /// The binary's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The binary's version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Starts a `criu swrk` session. Most callers want [`Criu::dump`] or [`Criu::restore`].
    pub fn session(&self) -> Result<Session> {
        Session::start(&self.path, &SpawnOptions::default())
    }

    /// Starts a `criu swrk` session with fds handed over and cgroups joined (a restore).
    pub fn session_with(&self, spawn: &SpawnOptions<'_>) -> Result<Session> {
        Session::start(&self.path, spawn)
    }

    /// Dumps the process tree described by `opts` (its `pid`, images and work dir fds),
    /// answering CRIU's notifications through `notify`. `log` names the log file in the work
    /// dir whose error lines are attached to a failure.
    pub fn dump(&self, opts: rpc::CriuOpts, notify: &mut dyn Notify) -> Result<DumpOutcome> {
        self.dump_in(self.session()?, opts, notify)
    }

    /// [`Criu::dump`] in a session started by [`Criu::session_with`].
    pub fn dump_in(
        &self,
        session: Session,
        opts: rpc::CriuOpts,
        notify: &mut dyn Notify,
    ) -> Result<DumpOutcome> {
        let resp = session.request(rpc::CriuReqType::Dump, opts, notify)?;
        Ok(DumpOutcome {
            restored: resp.dump.and_then(|d| d.restored).unwrap_or(false),
        })
    }

    /// Restores the process tree whose images `opts` names and returns the pid of its root
    /// task (with `rst_sibling`, a child of this process).
    pub fn restore(&self, opts: rpc::CriuOpts, notify: &mut dyn Notify) -> Result<i32> {
        self.restore_in(self.session()?, opts, notify)
    }

    /// [`Criu::restore`] in a session started by [`Criu::session_with`].
    pub fn restore_in(
        &self,
        session: Session,
        opts: rpc::CriuOpts,
        notify: &mut dyn Notify,
    ) -> Result<i32> {
        let resp = session.request(rpc::CriuReqType::Restore, opts, notify)?;
        resp.restore.map(|r| r.pid).ok_or_else(|| Error::Criu {
            op: "restore",
            message: "CRIU reported success without a pid".into(),
            log: Vec::new(),
        })
    }
}

/// What a dump reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpOutcome {
    /// CRIU's `restored` flag: the dump is an auto-dedup'd one that was restored in place.
    pub restored: bool,
}

/// One notification from CRIU (its "action scripts"): `script` is the phase name
/// (`pre-dump`, `post-dump`, `network-lock`, `setup-namespaces`, `post-restore`,
/// `orphan-pts-master`, `status-ready`, ...).
#[derive(Debug)]
pub struct Notification<'a> {
    /// The phase.
    pub script: &'a str,
    /// The pid CRIU attached (the restored root task at `setup-namespaces`/`post-restore`).
    pub pid: Option<i32>,
    /// A file descriptor passed with the message (the pty master at `orphan-pts-master`).
    pub fd: Option<OwnedFd>,
}

/// Answers CRIU's notifications. An `Err` makes CRIU abort the operation; the message is
/// reported with CRIU's error.
pub trait Notify {
    /// Handles one notification.
    fn notify(&mut self, n: Notification<'_>) -> std::result::Result<(), String>;
}

/// Accepts every notification.
impl Notify for () {
    fn notify(&mut self, _: Notification<'_>) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// The lines of a CRIU log worth showing a user: its `Error` lines (with a few lines before
/// the first), or its last lines when it has none. Empty when the log cannot be read.
pub fn log_excerpt(path: &Path) -> Vec<String> {
    const KEEP: usize = 12;
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    let errors: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| (l.contains("Error") || l.contains("error")) && !is_noise(l))
        .map(|(i, _)| i)
        .collect();
    let picked: Vec<&str> = match errors.first() {
        Some(&first) => {
            let start = first.saturating_sub(2);
            let mut v: Vec<&str> = lines[start..first].to_vec();
            v.extend(errors.iter().map(|&i| lines[i]));
            v
        }
        None => lines[lines.len().saturating_sub(KEEP)..].to_vec(),
    };
    let skip = picked.len().saturating_sub(KEEP);
    picked[skip..].iter().map(|l| l.to_string()).collect()
}

/// Errors CRIU logs that do not make an operation fail.
pub(crate) fn is_noise(line: &str) -> bool {
    line.contains("RLIMIT_NOFILE") || line.contains("cgroupd: recv req error")
}

/// The error line of a CRIU log that explains a failure: the first `Error` line that is not
/// noise nor the closing "... FAILED." line, without its timestamp.
pub fn primary_error(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text
        .lines()
        .find(|l| l.contains("Error") && !is_noise(l) && !l.contains("FAILED"))?;
    let start = line.find("Error").unwrap_or(0);
    Some(line[start..].trim().to_string())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parses_criu_output() {
        let v = Version::parse_output("Version: 4.1.1\n").unwrap();
        assert_eq!(v.to_string(), "4.1.1");
        let v = Version::parse_output("Version: 3.17\nGitID: v3.17-12\n").unwrap();
        assert_eq!((v.major, v.minor, v.sublevel), (3, 17, 0));
        assert!(v < MIN_VERSION);
        assert!(Version::parse_output("criu: unknown option").is_none());
        assert!(!Version::parse_output("Version: 4.1.1")
            .unwrap()
            .wide_page_server_header());
        assert!(Version::parse_output("Version: 4.2")
            .unwrap()
            .wide_page_server_header());
    }

    #[test]
    fn log_excerpt_prefers_error_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dump.log");
        let mut text = String::new();
        for i in 0..40 {
            text.push_str(&format!("(00.0{i}) line {i}\n"));
        }
        text.push_str("(00.1) Error (criu/cr-dump.c:1): Dumping FAILED.\n");
        std::fs::write(&log, text).unwrap();
        let ex = log_excerpt(&log);
        assert_eq!(ex.len(), 3, "{ex:?}");
        assert!(ex[2].contains("Dumping FAILED"));
        assert!(log_excerpt(&dir.path().join("missing.log")).is_empty());
    }

    #[test]
    fn too_old_criu_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("criu");
        std::fs::write(&fake, "#!/bin/sh\necho 'Version: 3.17'\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let err = Criu::at(&fake).unwrap_err().to_string();
        assert!(err.contains("3.17.0") && err.contains("4.0.0"), "{err}");
        assert!(err.contains(&fake.display().to_string()), "{err}");
    }

    #[test]
    fn the_version_is_kept_per_binary_and_a_rewritten_binary_is_asked_again() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("criu");
        let calls = dir.path().join("calls");
        let script = |v: &str| {
            format!(
                "#!/bin/sh\necho x >> {}\necho 'Version: {v}'\n",
                calls.display()
            )
        };
        let write = |text: String| {
            std::fs::write(&fake, text).unwrap();
            std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        };
        let asked = || {
            std::fs::read_to_string(&calls)
                .unwrap_or_default()
                .lines()
                .count()
        };
        write(script("4.1"));
        assert_eq!(Criu::at(&fake).unwrap().version().to_string(), "4.1.0");
        assert_eq!(Criu::at(&fake).unwrap().version().to_string(), "4.1.0");
        if kdat::cached_version(&fake).is_none() {
            eprintln!("skipped the cache half: no root-owned tmpfs at /dev/shm here");
            return;
        }
        assert_eq!(asked(), 1, "the second run used the kept version");
        write(script("4.2"));
        assert_eq!(Criu::at(&fake).unwrap().version().to_string(), "4.2.0");
        assert_eq!(asked(), 2);
    }
}

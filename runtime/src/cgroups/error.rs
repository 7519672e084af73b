//! The cgroups error type: every variant names the file, path, controller or resource field
//! involved, and OS errors read as the kernel's words ("Device or resource busy").

use std::io;
use std::path::{Path, PathBuf};

/// `Result` with a cgroups [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong with a cgroup, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a value to a cgroup file failed; `field` is the `linux.resources` field the
    /// value came from, when there is one.
    #[error("{}: writing {value:?} to {}: {}{}", field.as_deref().unwrap_or(file_name(path)), path.display(), os_text(source), hint_text(hint))]
    Write {
        field: Option<String>,
        path: PathBuf,
        value: String,
        source: io::Error,
        hint: Option<String>,
    },
    /// Reading a cgroup file failed.
    #[error("{}: reading {}: {}", file_name(path), path.display(), os_text(source))]
    Read { path: PathBuf, source: io::Error },
    /// A cgroup file held something unexpected.
    #[error("{}: expected {expected}, found {content:?}", path.display())]
    Parse {
        path: PathBuf,
        content: String,
        expected: &'static str,
    },
    /// Creating a cgroup directory failed.
    #[error("creating cgroup {}: {}", path.display(), os_text(source))]
    CreateDir { path: PathBuf, source: io::Error },
    /// Removing a cgroup directory failed (after retries on EBUSY).
    #[error("removing cgroup {}: {}", path.display(), os_text(source))]
    RemoveDir { path: PathBuf, source: io::Error },
    /// Moving a process into a cgroup failed.
    #[error("adding pid {pid} to {}: {}", path.display(), os_text(source))]
    AddPid {
        pid: i32,
        path: PathBuf,
        source: io::Error,
    },
    /// A resource value the kernel would refuse (or misread), caught before writing.
    #[error("{field}: {reason}, found {value}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
    /// A resource field needs a controller this host does not offer to the cgroup.
    #[error("{field}: needs the {controller} cgroup controller, which {reason}")]
    NotAvailable {
        field: String,
        controller: &'static str,
        reason: String,
    },
    /// A resource field this cgroup version cannot express.
    #[error("{field}: {reason}")]
    Unsupported { field: String, reason: String },
    /// No usable cgroup filesystem, or /proc/self/cgroup does not match the mounts.
    #[error("cgroups: {reason}")]
    Layout { reason: String },
    /// A saved [`super::CgroupState`] that cannot be used.
    #[error("cgroup state: {reason}")]
    BadState { reason: String },
    /// The freezer did not reach the requested state.
    #[error("{}: {reason}", path.display())]
    Freeze { path: PathBuf, reason: String },
    /// Loading or attaching the v2 device filter (eBPF) failed.
    #[error("linux.resources.devices: {op} for {}: {}{}", path.display(), os_text(source), hint_text(log))]
    Bpf {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
        log: Option<String>,
    },
}

impl Error {
    /// The OS error behind this error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Write { source, .. }
            | Error::Read { source, .. }
            | Error::CreateDir { source, .. }
            | Error::RemoveDir { source, .. }
            | Error::AddPid { source, .. }
            | Error::Bpf { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Attaches the `linux.resources` field a write came from.
pub(crate) trait WithField<T> {
    fn field(self, field: impl Into<String>) -> Result<T>;
}

impl<T> WithField<T> for Result<T> {
    fn field(self, f: impl Into<String>) -> Result<T> {
        self.map_err(|e| match e {
            Error::Write {
                field: None,
                path,
                value,
                source,
                hint,
            } => Error::Write {
                field: Some(f.into()),
                path,
                value,
                source,
                hint,
            },
            other => other,
        })
    }
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("cgroup")
}

/// "Device or resource busy", not "Device or resource busy (os error 16)".
fn os_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

fn hint_text(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
}

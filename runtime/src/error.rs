//! The crate's error type: one enum, each variant carrying the container id, path, field or
//! value involved, so a message says what was wanted, what was found and where.

use std::path::PathBuf;

/// Result alias for cryo-runtime.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in cryo-runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A container with this id already exists (runc: "container with id exists").
    #[error("container with id exists: {0}")]
    Exists(String),
    /// No container with this id.
    #[error("container \"{0}\" does not exist")]
    NotFound(String),
    /// The container id does not match runc's grammar.
    #[error("invalid container id {0:?}: only letters, digits, '_', '+', '-' and '.' are allowed")]
    InvalidId(String),
    /// An operation that the container's current status does not allow.
    #[error("{op}: container {id} is {status}{hint}")]
    BadStatus {
        /// what was asked
        op: &'static str,
        /// the container
        id: String,
        /// its status
        status: String,
        /// extra words
        hint: &'static str,
    },
    /// config.json (or process.json) could not be read or parsed.
    #[error("{path}: {field}: {msg}")]
    Spec {
        /// the file
        path: PathBuf,
        /// the field path, e.g. `linux.resources.memory.limit`
        field: String,
        /// what is wrong
        msg: String,
    },
    /// A field of the spec that cryo does not support.
    #[error("config.json: {field}: {msg}")]
    Unsupported {
        /// the field path
        field: String,
        /// why
        msg: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// what was attempted, with the path or value
        what: String,
        /// the errno
        source: nix::Error,
    },
    /// An I/O error on a file.
    #[error("{path}: {source}")]
    Io {
        /// the file
        path: PathBuf,
        /// the error
        source: std::io::Error,
    },
    /// The container's state file is unreadable or corrupt.
    #[error("state of container {id} ({path}): {msg}")]
    State {
        /// the container
        id: String,
        /// the state file
        path: PathBuf,
        /// what is wrong
        msg: String,
    },
    /// The container init reported an error while setting up the container.
    #[error("container init: {0}")]
    Init(String),
    /// A hook failed.
    #[error("{kind} hook {path}: {msg}")]
    Hook {
        /// prestart, createRuntime, ...
        kind: &'static str,
        /// the hook's executable
        path: PathBuf,
        /// what happened
        msg: String,
    },
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::Error),
    /// Anything else, with context already in the message.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// A failed system call, with what was being done.
    pub fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            what: what.into(),
            source,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Adds "what was being done" to nix results.
pub trait SysContext<T> {
    /// Wraps the errno with a description built lazily.
    fn sys_ctx<F: FnOnce() -> String>(self, what: F) -> Result<T>;
}

impl<T> SysContext<T> for std::result::Result<T, nix::Error> {
    fn sys_ctx<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.map_err(|e| Error::sys(what(), e))
    }
}

/// Adds the path to io results.
pub trait IoContext<T> {
    /// Wraps the io error with the path involved.
    fn io_ctx(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_ctx(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

//! The crate's one error type. Every variant names what it is about: the snapshot, the chunk,
//! the object, the path or the reference, so that a message read in a log says where to look.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation on a store path failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What was being done ("open", "rename", ...).
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A chunk record failed verification: bad header, failed decompression or wrong digest.
    #[error("snapshot {snapshot}: chunk {chunk}: {reason}")]
    CorruptChunk {
        /// The snapshot being read (`sha256:HEX`).
        snapshot: String,
        /// The chunk's digest (`blake3:HEX`).
        chunk: String,
        /// What was wrong.
        reason: String,
    },
    /// A chunk referenced by a manifest is not in the store.
    #[error("snapshot {snapshot}: chunk {chunk}: missing from the store ({})", path.display())]
    MissingChunk {
        /// The snapshot being read.
        snapshot: String,
        /// The chunk's digest.
        chunk: String,
        /// Where the chunk was expected.
        path: PathBuf,
    },
    /// A pack file is missing, or its header, index or a record could not be read.
    #[error("pack {}: {reason}", path.display())]
    BadPack {
        /// The pack file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A manifest could not be parsed or does not match its digest.
    #[error("snapshot {snapshot}: manifest: {reason}")]
    CorruptManifest {
        /// The snapshot whose manifest is bad.
        snapshot: String,
        /// What was wrong, with the field or offset.
        reason: String,
    },
    /// A manifest or working set of a format version this build does not read.
    #[error("snapshot {snapshot}: {what} format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        /// The snapshot involved.
        snapshot: String,
        /// "manifest" or "working set".
        what: &'static str,
        /// The version found in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// Untrusted bytes larger than the limit set for them, refused before parsing.
    #[error("{what}: {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was being read (with the snapshot or path).
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A working-set sidecar that cannot be parsed.
    #[error("snapshot {snapshot}: working set: {reason}")]
    CorruptWorkingSet {
        /// The snapshot the working set belongs to.
        snapshot: String,
        /// What was wrong.
        reason: String,
    },
    /// A snapshot reference that does not follow the grammar.
    #[error("reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What was expected.
        reason: String,
    },
    /// A registry reference (`HOST[:PORT]/REPO[:TAG|@sha256:...]`).
    #[error("reference {reference:?}: registry references are not supported yet")]
    RegistryReference {
        /// The reference as given.
        reference: String,
    },
    /// No name or snapshot matches the reference.
    #[error("reference {reference:?}: no such name or snapshot in the store")]
    NotFound {
        /// The reference as given.
        reference: String,
    },
    /// A hex prefix that matches more than one snapshot.
    #[error("reference {reference:?}: ambiguous prefix, matches {candidates:?}")]
    Ambiguous {
        /// The prefix as given.
        reference: String,
        /// The snapshots it matches.
        candidates: Vec<String>,
    },
    /// A page outside every region of an object.
    #[error("snapshot {snapshot}: object {object:?}: page {vaddr:#x} is not in the snapshot")]
    PageNotPresent {
        /// The snapshot read.
        snapshot: String,
        /// The object.
        object: String,
        /// The page's address.
        vaddr: u64,
    },
    /// An object name the snapshot does not have (or of the other kind).
    #[error("snapshot {snapshot}: no {kind} object {object:?}")]
    NoSuchObject {
        /// The snapshot read.
        snapshot: String,
        /// "memory" or "blob".
        kind: &'static str,
        /// The name asked for.
        object: String,
    },
    /// Input handed to the writer or reader that breaks its rules (alignment, overlap, names).
    #[error("object {object:?}: {reason}")]
    InvalidInput {
        /// The object (or blob, or name) involved.
        object: String,
        /// The rule broken.
        reason: String,
    },
    /// A device-buffer save or load that cannot be done as asked, or a snapshot's buffer index
    /// that is not as it should be (`gpu::buffers`).
    #[error("{context}: {reason}")]
    DeviceBuffers {
        /// The buffer (`device buffer "NAME"`), the index (`snapshot ID: gpu-buffers.json`) or
        /// the options involved.
        context: String,
        /// What is wrong.
        reason: String,
    },
    /// The snapshot is pinned by a reader (a restore in progress) and cannot be removed.
    #[error("snapshot {snapshot}: in use by a restore in progress (pid {pid})")]
    InUse {
        /// The snapshot.
        snapshot: String,
        /// The pid recorded by the reader, 0 if unknown.
        pid: u32,
    },
    /// CRIU could not be found or run, or refused an operation. `log` holds the error lines
    /// of CRIU's log (see [`crate::criu::log_excerpt`]); callers print them under the message.
    #[error("{op}: {message}")]
    Criu {
        /// What was being done ("locate", "version", "criu", "rpc", ...).
        op: &'static str,
        /// CRIU's own message (`cr_errmsg`, errno) or what went wrong talking to it.
        message: String,
        /// The relevant lines of CRIU's log.
        log: Vec<String>,
    },
    /// The lazy-pages server failed; the restored tasks cannot get their memory.
    #[error("lazy pages: {message}")]
    Lazy {
        /// What went wrong, with the task, object or address.
        message: String,
    },
    /// A GPU checkpoint step failed (the CUDA driver, or its absence).
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    /// The store directory has a layout this build does not know.
    #[error("{}: store layout {found:?} is not supported (this build uses {supported:?})", path.display())]
    UnsupportedStore {
        /// The store's layout file.
        path: PathBuf,
        /// What it says.
        found: String,
        /// What this build writes.
        supported: String,
    },
}

impl Error {
    /// The log lines attached to a CRIU failure (empty for every other error).
    pub fn criu_log(&self) -> &[String] {
        match self {
            Error::Criu { log, .. } => log,
            _ => &[],
        }
    }

    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }
}

//! cryo-runtime: an OCI bundle to a running container, and back.
//!
//! The library behind the `cryo` CLI (a drop-in for runc) and the containerd shim. Embedders
//! create a [`Runtime`] over a state root and call its lifecycle methods; the container's init
//! is always the `cryo` binary itself (`cryo init`, see [`init`]), so an embedder must be able
//! to point [`Runtime::exe`] at it (default: the running executable, which is right for the
//! CLI).
//!
//! Layout: [`spec`] loads and validates config.json; [`container`] is the lifecycle seen from
//! outside; [`init`] is the process that becomes the container ([`namespaces`], [`rootfs`],
//! [`process`], [`console`]); [`cgroups`] has one manager per cgroup version behind one trait;
//! [`state`] is the state dir; [`syscall`] is the kernel edge that tests fake.

pub mod cgroups;
pub mod channel;
pub mod checkpoint;
pub mod console;
pub mod container;
pub mod error;
pub mod hooks;
pub mod init;
pub mod namespaces;
pub mod net;
pub mod process;
pub mod rootfs;
pub mod spec;
pub mod state;
pub mod syscall;

pub use checkpoint::{
    CgroupsMode, CheckpointOptions, CriuFlags, GpuOptions, PageServerAddr, RestoreOptions,
};
pub use container::{CreateOptions, ExecOptions, InitBinary, Runtime, Stdio};
/// The `OLD=NEW` map a restore puts CUDA processes onto other GPUs with (`GpuOptions::gpu_map`).
pub use cryo_snapshot::gpu::GpuMap;
pub use error::{Error, Result};
pub use state::{OciState, Status};

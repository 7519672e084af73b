//! GPU checkpoint/restore through the CUDA driver's checkpoint API (driver r570+, CUDA 12.8+).
//!
//! Before CRIU dumps a process tree, its CUDA processes are locked and checkpointed: the driver
//! moves their device memory into their host memory and releases the GPU, so CRIU (and the
//! snapshot store) see it as ordinary memory. After CRIU restores the tree, they are restored
//! onto a GPU and unlocked. This module owns:
//!
//! - [`ffi`], the C declarations (argument structs, result and state codes, signatures);
//! - [`driver`], the [`Driver`] trait and [`LibCuda`], the driver loaded at run time;
//! - [`memory`], [`MemoryDriver`], a simulated driver for unit tests;
//! - [`discover`], which processes of a tree use CUDA;
//! - [`devices`], GPU UUIDs and the map that restores onto other GPUs;
//! - [`checkpoint`], the orchestration over many processes, in parallel, with rollback;
//! - [`stopped`], restoring the CUDA processes of a tree CRIU restored stopped, their restore
//!   threads let run alone under ptrace;
//! - [`buffers`], device-buffer snapshots for embedders: device buffers saved into the store
//!   and loaded back through cudarc, pipelined;
//! - [`error`], the module's error type [`GpuError`].
//!
//! It does not call CRIU, nor know containers (cryo-runtime ties the steps to CRIU's dump and
//! restore). The fake driver that tests load
//! through [`LibCuda`] is the `cryo-fakecuda` crate.
//!
//! ```no_run
//! use cryo_snapshot::gpu::{self, Driver, LibCuda};
//! # fn main() -> Result<(), gpu::GpuError> {
//! let driver = LibCuda::open_default()?;
//! let tree = gpu::discover::process_tree(4242)?;
//! let pids: Vec<i32> = gpu::discover::cuda_processes(&driver, &tree)?
//!     .iter()
//!     .map(|p| p.pid)
//!     .collect();
//! gpu::checkpoint::checkpoint(&driver, &pids, gpu::checkpoint::DEFAULT_LOCK_TIMEOUT)?;
//! // ... CRIU dumps the tree, then (leave-running, or later after CRIU restores it):
//! gpu::checkpoint::restore_all(&driver, &pids, &[])?;
//! # Ok(()) }
//! ```

pub mod buffers;
pub mod checkpoint;
pub mod devices;
pub mod discover;
pub mod driver;
pub mod error;
pub mod ffi;
pub mod memory;
pub mod stopped;

pub use devices::GpuMap;
pub use driver::{Driver, LibCuda};
pub use error::GpuError;
pub use ffi::{CuResult, GpuPair, ProcessState, Uuid};
pub use memory::MemoryDriver;

//! cryo-snapshot: cryo's snapshot engine. This crate owns the snapshot store (`store`):
//! content-addressed, zero-eliding, compressed, verified memory images with mutable names,
//! working-set sidecars and garbage collection (format: docs/FORMAT.md). It knows nothing of
//! containers; the CRIU driver (`criu`: dump and restore of a process tree over CRIU's RPC) and GPU checkpointing build on it.
//!
//! ```no_run
//! # fn main() -> cryo_snapshot::Result<()> {
//! let store = cryo_snapshot::Store::open("/tmp/store")?;
//! let mut w = store.writer()?;
//! w.object("pid-42")?.add_pages(0x7f00_0000_0000, &[1u8; 8192])?;
//! w.add_blob("core-42.img", b"...")?;
//! let id = w.commit(Some("model:v1"))?;
//! let r = store.reader("model:v1")?;
//! let mut page = [0u8; 4096];
//! r.read_page("pid-42", 0x7f00_0000_1000, &mut page)?;
//! # let _ = id; Ok(()) }
//! ```

pub mod criu;
pub mod error;
pub mod gpu;
pub mod lazy;
pub mod store;
pub mod workload;

pub use error::{Error, Result};
pub use store::chunk::{Codec, CodecPolicy};
pub use store::digest::{ChunkDigest, SnapshotId};
pub use store::gc::{GcReport, RemoveReport};
pub use store::inspect::{ObjectInfo, SnapshotInfo, SnapshotSummary};
pub use store::manifest::{ObjectKind, PAGE_SIZE};
pub use store::reader::{PageKind, Reader, VerifyReport};
pub use store::workingset::PageRef;
pub use store::writer::{ObjectWriter, WriteStats, Writer, WriterOptions};
pub use store::{SnapshotPin, Store};

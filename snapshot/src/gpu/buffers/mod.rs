//! Device-buffer snapshots for embedders: a set of CUDA device buffers (model weights, KV
//! caches, any state kept in device memory) saved into the snapshot store by name and loaded
//! back onto a device, through [cudarc] (re-exported here, so an embedder uses the same
//! version).
//!
//! Both directions are pipelines of two stages joined by a pool of pinned host staging slots,
//! so the device copies, the compression and the store I/O overlap:
//!
//! ```text
//! save:  device buffers ──copy streams (one thread each)──▶ [slot]·[slot]·[slot]·[slot]
//!                         ──writer: zero pages elided, chunks hashed and compressed in
//!                           parallel, new chunks written──▶ store ── commit (one syncfs)
//! load:  store ──reader: chunks verified and decompressed in parallel──▶ [slot]·[slot]·…
//!                ──copy streams (one thread each)──▶ device buffers
//! ```
//!
//! Each piece of a buffer (at most one slot, 16 MiB by default) goes through both stages; the
//! slots bound what is in flight, so memory use does not grow with the buffers. The first
//! error of either stage stops both, and nothing is committed (save) or returned (load).
//! Staging slots are pinned without `CU_MEMHOSTALLOC_WRITECOMBINED` (cudarc's default for
//! `alloc_pinned`), because the CPU reads them: reading write-combined memory is uncached.
//!
//! In the store each buffer is the memory object `gpu-buffer:NAME`, its bytes at address 0
//! (the last page zero padded), and the blob `gpu-buffers.json` indexes them (names and exact
//! lengths, [`BufferIndex`]). So zero pages are holes and an unchanged buffer deduplicates
//! against every earlier snapshot of the store, as any memory does; `cryo snapshot inspect`
//! and `verify` see the objects like any others.
//!
//! Typed buffers are saved through a byte view (`CudaSlice::transmute`). Copies use the raw
//! device addresses on streams of their own after synchronizing the context, not cudarc's
//! per-buffer event tracking (which would serialize the pieces of one buffer across streams).
//!
//! ```no_run
//! use cryo_snapshot::gpu::buffers::{self, cudarc::driver::DevicePtr, PipelineOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = buffers::open_device(0, None)?;
//! let stream = ctx.default_stream();
//! let weights = stream.clone_htod(&vec![1u8; 64 << 20])?;
//! let store = cryo_snapshot::Store::open("/var/lib/cryo/store")?;
//! let opts = PipelineOptions::default();
//! let saved = buffers::save(&store, Some("model:v1"), &stream,
//!     &[("weights", &weights as &dyn DevicePtr<u8>)], &opts, &|p| eprintln!("{}/{}", p.done, p.total))?;
//! let (loaded, report) = buffers::load(&store.reader("model:v1")?, &stream, &opts, &|_| {})?;
//! # let _ = (saved, loaded, report); Ok(()) }
//! ```

mod cuda;
mod pipeline;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use cudarc;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, PinnedHostSlice};
use serde::{Deserialize, Serialize};

use self::cuda::{copy_to_device, copy_to_host, cuda_err};
pub use self::cuda::{open_device, REQUIRED_SYMBOLS};
use self::pipeline::{pieces, Failure, Piece, Pool, Spans};
use crate::error::{Error, Result};
use crate::gpu::GpuError;
use crate::store::digest::SnapshotId;
use crate::store::manifest::PAGE_SIZE;
use crate::store::reader::Reader;
use crate::store::writer::{WriteStats, WriterOptions};
use crate::store::Store;

/// The blob that indexes a snapshot's device buffers.
pub const INDEX_BLOB: &str = "gpu-buffers.json";
/// The prefix of a buffer's memory object.
pub const OBJECT_PREFIX: &str = "gpu-buffer:";
/// The index format this build writes and reads.
pub const INDEX_VERSION: u32 = 1;
/// The largest index read (a few hundred bytes per buffer).
const INDEX_LIMIT: u64 = 64 << 20;

/// The buffers of a snapshot, in the order they were saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferIndex {
    /// [`INDEX_VERSION`].
    pub version: u32,
    /// The buffers.
    pub buffers: Vec<BufferMeta>,
}

/// One saved buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferMeta {
    /// The name it was saved under.
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
}

impl BufferMeta {
    /// Its memory object in the snapshot.
    pub fn object(&self) -> String {
        format!("{OBJECT_PREFIX}{}", self.name)
    }
}

/// How the pipelines run.
#[derive(Clone, Copy, Debug)]
pub struct PipelineOptions {
    /// Bytes per staging slot, a multiple of the page size (default 16 MiB): the piece of a
    /// buffer that one copy moves.
    pub slot_bytes: usize,
    /// Staging slots (default 4): how many pieces may be between the stages at once.
    pub slots: usize,
    /// Copy streams, one thread each (default 2).
    pub streams: usize,
    /// The store writer's chunk size and codec (save only; default zstd 3, 64 KiB chunks).
    pub writer: WriterOptions,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            slot_bytes: 16 << 20,
            slots: 4,
            streams: 2,
            writer: WriterOptions::default(),
        }
    }
}

impl PipelineOptions {
    fn check(&self) -> Result<()> {
        let page = usize::try_from(PAGE_SIZE).unwrap_or(4096);
        let bad = |reason: String| Err(invalid("pipeline options", reason));
        if self.slot_bytes == 0 || !self.slot_bytes.is_multiple_of(page) {
            return bad(format!(
                "slot_bytes {}: expected a positive multiple of {page}",
                self.slot_bytes
            ));
        }
        if self.slots == 0 || self.streams == 0 {
            return bad(format!(
                "slots {} and streams {}: expected at least one of each",
                self.slots, self.streams
            ));
        }
        Ok(())
    }
}

/// How far a pipeline has got, reported after each piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes through both stages.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// How long each stage of a pipeline was busy, against the whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageTimes {
    /// From the first piece to the last, commit excluded.
    pub wall: Duration,
    /// The device copies (the union of the copy streams' busy intervals).
    pub copy: Duration,
    /// The store stage: zero elision, hashing, compression and chunk writes (save), or reading,
    /// verifying and decompressing (load).
    pub store: Duration,
}

impl StageTimes {
    /// The busier stage's time: what a perfect pipeline would take.
    pub fn slowest(&self) -> Duration {
        self.copy.max(self.store)
    }

    /// How well the stages overlapped: the slowest stage's time over the wall time, 1.0 when
    /// the pipeline runs at the speed of its slowest stage, 0.5 when the stages take turns.
    pub fn overlap(&self) -> f64 {
        if self.wall.is_zero() {
            return 1.0;
        }
        self.slowest().as_secs_f64() / self.wall.as_secs_f64()
    }
}

/// What a save did.
#[derive(Clone, Copy, Debug)]
pub struct SaveReport {
    /// The committed snapshot.
    pub id: SnapshotId,
    /// Bytes of device memory saved.
    pub bytes: u64,
    /// The writer's figures: zero bytes, new chunks, bytes written.
    pub write: WriteStats,
    /// The pipeline's stages.
    pub stages: StageTimes,
    /// Making the snapshot durable (syncfs, manifest, name).
    pub commit: Duration,
}

/// A buffer [`load`] allocated and filled: its name and its device memory.
pub type LoadedBuffer = (String, CudaSlice<u8>);

/// What a load did.
#[derive(Clone, Copy, Debug)]
pub struct LoadReport {
    /// Bytes of device memory loaded.
    pub bytes: u64,
    /// The pipeline's stages.
    pub stages: StageTimes,
}

fn invalid(context: &str, reason: impl Into<String>) -> Error {
    Error::DeviceBuffers {
        context: context.to_string(),
        reason: reason.into(),
    }
}

/// How errors about one buffer name it.
fn buffer(name: &str) -> String {
    format!("device buffer {name:?}")
}

fn gpu(e: GpuError) -> Error {
    Error::Gpu(e)
}

/// Allocates the staging slots, pinned and readable by the CPU at full speed.
fn staging(stream: &Arc<CudaStream>, opts: &PipelineOptions) -> Result<Vec<PinnedHostSlice<u8>>> {
    (0..opts.slots)
        .map(|_| {
            // SAFETY: a slot is always filled (by a copy or a read) before its bytes are read.
            unsafe {
                stream
                    .context()
                    .alloc_pinned_with_flags::<u8>(opts.slot_bytes, 0)
            }
            .map_err(cuda_err(format!(
                "pinned staging slot of {} bytes",
                opts.slot_bytes
            )))
            .map_err(gpu)
        })
        .collect()
}

/// The copy streams, after the context's pending work (which may still write the buffers).
fn copy_streams(stream: &Arc<CudaStream>, opts: &PipelineOptions) -> Result<Vec<Arc<CudaStream>>> {
    let ctx = stream.context();
    ctx.synchronize()
        .map_err(cuda_err("synchronize the context before copying"))
        .map_err(gpu)?;
    (0..opts.streams)
        .map(|_| {
            ctx.new_stream()
                .map_err(cuda_err("create a copy stream"))
                .map_err(gpu)
        })
        .collect()
}

/// A slot's bytes. The slot's event is never recorded (copies go through raw addresses and
/// are waited for), so this does not block.
fn slot_bytes(slot: &mut PinnedHostSlice<u8>) -> Result<&mut [u8]> {
    slot.as_mut_slice()
        .map_err(cuda_err("staging slot"))
        .map_err(gpu)
}

/// Saves `buffers` (name, device memory) into `store` as one snapshot, named `name` if given,
/// and returns its ID with the pipeline's figures. The context's pending work is waited for
/// first. On error nothing is committed and every buffer is as it was.
pub fn save(
    store: &Store,
    name: Option<&str>,
    stream: &Arc<CudaStream>,
    buffers: &[(&str, &dyn DevicePtr<u8>)],
    opts: &PipelineOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<SaveReport> {
    opts.check()?;
    let index = BufferIndex {
        version: INDEX_VERSION,
        buffers: buffers
            .iter()
            .map(|(n, b)| BufferMeta {
                name: (*n).to_string(),
                len: b.len() as u64,
            })
            .collect(),
    };
    check_index(&index, "buffers to save")?;
    let index_json = serde_json::to_vec_pretty(&index)
        .map_err(|e| invalid(INDEX_BLOB, format!("encode: {e}")))?;
    let lens: Vec<u64> = index.buffers.iter().map(|b| b.len).collect();
    let work = pieces(&lens, opts.slot_bytes);
    let total: u64 = lens.iter().sum();
    let objects: Vec<String> = index.buffers.iter().map(BufferMeta::object).collect();

    let streams = copy_streams(stream, opts)?;
    // The device addresses, taken once on the caller's stream (nothing is pending on it now).
    let addrs: Vec<u64> = buffers
        .iter()
        .map(|(_, b)| b.device_ptr(stream).0)
        .collect();
    let pool = Pool::new(staging(stream, opts)?);
    let mut writer = store.writer_with(opts.writer)?;
    writer.add_blob(INDEX_BLOB, &index_json)?;

    let failure = Failure::new();
    let (copy_spans, store_spans) = (Spans::default(), Spans::default());
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        let (full_tx, full_rx) = mpsc::channel::<(Piece, PinnedHostSlice<u8>)>();
        for copy_stream in &streams {
            let full_tx = full_tx.clone();
            let (pool, failure, next, work, addrs, copy_spans, index) =
                (&pool, &failure, &next, &work, &addrs, &copy_spans, &index);
            s.spawn(move || {
                while let Some(mut slot) = pool.take() {
                    let Some(&piece) = work.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        pool.put(slot);
                        return;
                    };
                    let copied = slot_bytes(&mut slot).and_then(|bytes| {
                        let dst = &mut bytes[..piece.len];
                        let src = addrs[piece.buffer] + piece.offset;
                        copy_spans
                            .time(|| {
                                // SAFETY: `src` lies inside buffer `piece.buffer` (pieces
                                // never pass a buffer's length), which `buffers` borrows for
                                // the whole call; the context was synchronized, so nothing
                                // writes it meanwhile.
                                unsafe { copy_to_host(copy_stream, src, dst) }
                            })
                            .map_err(cuda_err(format!(
                                "buffer {:?}: copy {} bytes at offset {} to the host",
                                index.buffers[piece.buffer].name, piece.len, piece.offset
                            )))
                            .map_err(gpu)
                    });
                    match copied {
                        Ok(()) => {
                            if full_tx.send((piece, slot)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            failure.set(e);
                            pool.close();
                            return;
                        }
                    }
                }
            });
        }
        drop(full_tx);
        let mut done = 0u64;
        for (piece, mut slot) in full_rx {
            let stored = slot_bytes(&mut slot).and_then(|bytes| {
                let padded = piece.padded();
                bytes[piece.len..padded].fill(0);
                store_spans.time(|| {
                    writer
                        .object(&objects[piece.buffer])?
                        .add_pages(piece.offset, &bytes[..padded])
                })
            });
            if let Err(e) = stored {
                failure.set(e);
                pool.close();
                break;
            }
            pool.put(slot);
            done += piece.len as u64;
            progress(Progress { done, total });
        }
        pool.close();
    });
    if let Some(e) = failure.take() {
        return Err(e);
    }
    let wall = start.elapsed();
    let started = Instant::now();
    writer.flush()?;
    let write = writer.stats();
    let id = writer.commit(name)?;
    Ok(SaveReport {
        id,
        bytes: total,
        write,
        stages: StageTimes {
            wall,
            copy: copy_spans.busy(),
            store: store_spans.busy(),
        },
        commit: started.elapsed(),
    })
}

fn check_index(index: &BufferIndex, what: &str) -> Result<()> {
    let mut seen = HashSet::new();
    for b in &index.buffers {
        if b.name.is_empty() || b.name.len() > 1024 || b.name.contains('\0') {
            return Err(invalid(
                what,
                format!(
                    "buffer name {:?}: expected 1 to 1024 bytes without NUL",
                    b.name
                ),
            ));
        }
        if !seen.insert(b.name.as_str()) {
            return Err(invalid(what, format!("buffer {:?} named twice", b.name)));
        }
        if b.len == 0 {
            return Err(invalid(
                what,
                format!(
                    "buffer {:?} is empty: CUDA allocates no empty buffers",
                    b.name
                ),
            ));
        }
    }
    Ok(())
}

/// The buffer index of the snapshot `reader` reads.
pub fn index(reader: &Reader) -> Result<BufferIndex> {
    let what = format!("snapshot {}: {INDEX_BLOB}", reader.id());
    let size = reader
        .objects()
        .iter()
        .find(|o| o.name == INDEX_BLOB)
        .map(|o| o.size)
        .ok_or_else(|| invalid(&what, "missing: the snapshot holds no device buffers"))?;
    if size > INDEX_LIMIT {
        return Err(invalid(
            &what,
            format!("{size} bytes, more than the {INDEX_LIMIT} an index may have"),
        ));
    }
    let index: BufferIndex = serde_json::from_slice(&reader.read_blob(INDEX_BLOB)?)
        .map_err(|e| invalid(&what, e.to_string()))?;
    if index.version != INDEX_VERSION {
        return Err(Error::UnsupportedVersion {
            snapshot: reader.id().to_string(),
            what: "device-buffer index",
            found: index.version,
            supported: INDEX_VERSION,
        });
    }
    check_index(&index, &what)?;
    for b in &index.buffers {
        let size = reader
            .objects()
            .iter()
            .find(|o| o.name == b.object())
            .map(|o| o.size);
        if size != Some(b.len.next_multiple_of(PAGE_SIZE)) {
            return Err(invalid(
                &what,
                format!(
                    "buffer {:?} of {} bytes: its object {} holds {size:?} bytes",
                    b.name,
                    b.len,
                    b.object()
                ),
            ));
        }
    }
    Ok(index)
}

/// Loads every buffer of the snapshot `reader` reads into new device buffers on `stream`'s
/// context, in index order, with their names. Nothing is returned unless every byte was read,
/// verified and copied.
pub fn load(
    reader: &Reader,
    stream: &Arc<CudaStream>,
    opts: &PipelineOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(Vec<LoadedBuffer>, LoadReport)> {
    opts.check()?;
    let index = index(reader)?;
    let mut slices = index
        .buffers
        .iter()
        .map(|b| {
            let len = usize::try_from(b.len).map_err(|_| {
                invalid(
                    &buffer(&b.name),
                    format!("{} bytes do not fit this machine", b.len),
                )
            })?;
            // SAFETY: every byte is written by the pipeline before the slice is returned; on
            // error it is dropped unread.
            unsafe { stream.alloc::<u8>(len) }
                .map_err(cuda_err(format!(
                    "buffer {:?}: allocate {len} bytes",
                    b.name
                )))
                .map_err(gpu)
        })
        .collect::<Result<Vec<_>>>()?;
    let report = {
        let mut targets: Vec<(&str, &mut dyn DevicePtrMut<u8>)> = index
            .buffers
            .iter()
            .zip(slices.iter_mut())
            .map(|(b, s)| (b.name.as_str(), s as &mut dyn DevicePtrMut<u8>))
            .collect();
        fill(reader, &index, stream, &mut targets, opts, progress)?
    };
    let named = index
        .buffers
        .into_iter()
        .map(|b| b.name)
        .zip(slices)
        .collect();
    Ok((named, report))
}

/// Loads the named buffers of the snapshot `reader` reads into `targets` (name, device
/// memory of exactly the saved length), any subset of the snapshot's buffers. A name the
/// snapshot lacks or a length that differs is refused before anything is copied; on a later
/// error (a corrupt chunk, a failed copy) the targets' contents are unspecified.
pub fn load_into(
    reader: &Reader,
    stream: &Arc<CudaStream>,
    targets: &mut [(&str, &mut dyn DevicePtrMut<u8>)],
    opts: &PipelineOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<LoadReport> {
    opts.check()?;
    let index = index(reader)?;
    fill(reader, &index, stream, targets, opts, progress)
}

/// [`load_into`] with the snapshot's index read already.
fn fill(
    reader: &Reader,
    index: &BufferIndex,
    stream: &Arc<CudaStream>,
    targets: &mut [(&str, &mut dyn DevicePtrMut<u8>)],
    opts: &PipelineOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<LoadReport> {
    let mut metas = Vec::with_capacity(targets.len());
    for (name, target) in targets.iter() {
        let Some(meta) = index.buffers.iter().find(|b| b.name == *name) else {
            return Err(invalid(
                &buffer(name),
                format!("snapshot {} holds no buffer of that name", reader.id()),
            ));
        };
        if meta.len != target.len() as u64 {
            return Err(invalid(
                &buffer(name),
                format!(
                    "the target holds {} bytes, snapshot {} saved {}",
                    target.len(),
                    reader.id(),
                    meta.len
                ),
            ));
        }
        metas.push(meta.clone());
    }
    let lens: Vec<u64> = metas.iter().map(|b| b.len).collect();
    let work = pieces(&lens, opts.slot_bytes);
    let total: u64 = lens.iter().sum();
    let objects: Vec<String> = metas.iter().map(BufferMeta::object).collect();

    let streams = copy_streams(stream, opts)?;
    let addrs: Vec<u64> = targets
        .iter_mut()
        .map(|(_, t)| t.device_ptr_mut(stream).0)
        .collect();
    let pool = Pool::new(staging(stream, opts)?);
    let failure = Failure::new();
    let (copy_spans, store_spans) = (Spans::default(), Spans::default());
    let done = Mutex::new(0u64);
    let (full_tx, full_rx) = mpsc::channel::<(Piece, PinnedHostSlice<u8>)>();
    let full_rx = Mutex::new(full_rx);
    let start = Instant::now();
    std::thread::scope(|s| {
        for copy_stream in &streams {
            let (pool, failure, full_rx, addrs, metas, copy_spans, done) = (
                &pool,
                &failure,
                &full_rx,
                &addrs,
                &metas,
                &copy_spans,
                &done,
            );
            s.spawn(move || loop {
                let next = full_rx
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recv();
                let Ok((piece, mut slot)) = next else { return };
                let copied = slot_bytes(&mut slot).and_then(|bytes| {
                    let src = &bytes[..piece.len];
                    let dst = addrs[piece.buffer] + piece.offset;
                    copy_spans
                        .time(|| {
                            // SAFETY: `dst` lies inside target `piece.buffer` (pieces never
                            // pass its length), which `targets` borrows mutably for the whole
                            // call; pieces do not overlap.
                            unsafe { copy_to_device(copy_stream, src, dst) }
                        })
                        .map_err(cuda_err(format!(
                            "buffer {:?}: copy {} bytes at offset {} to the device",
                            metas[piece.buffer].name, piece.len, piece.offset
                        )))
                        .map_err(gpu)
                });
                if let Err(e) = copied {
                    failure.set(e);
                    pool.close();
                    return;
                }
                pool.put(slot);
                let mut done = done.lock().unwrap_or_else(PoisonError::into_inner);
                *done += piece.len as u64;
                progress(Progress { done: *done, total });
            });
        }
        for piece in &work {
            let Some(mut slot) = pool.take() else { break };
            let read = slot_bytes(&mut slot).and_then(|bytes| {
                store_spans.time(|| {
                    reader.read_range(
                        &objects[piece.buffer],
                        piece.offset,
                        &mut bytes[..piece.padded()],
                    )
                })
            });
            if let Err(e) = read {
                failure.set(e);
                pool.close();
                break;
            }
            if full_tx.send((*piece, slot)).is_err() {
                break;
            }
        }
        drop(full_tx);
    });
    if let Some(e) = failure.take() {
        return Err(e);
    }
    Ok(LoadReport {
        bytes: total,
        stages: StageTimes {
            wall: start.elapsed(),
            copy: copy_spans.busy(),
            store: store_spans.busy(),
        },
    })
}

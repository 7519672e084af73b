//! The writer: takes memory pages (streamed per memory object, in any number of batches) and
//! named blobs, cuts them into chunks, elides all-zero pages, stores each distinct chunk once,
//! and commits a manifest.
//!
//! Chunks are cut at addresses that are multiples of the chunk size (so unchanged memory at the
//! same address gives the same chunks in the next snapshot), at holes, and, for runs that will
//! be compressed, at the middle of the chunk window (a page fault decodes half as much). A
//! batch that ends inside a chunk window leaves its tail (at most one chunk) buffered until the
//! next batch of the same object continues it; nothing else of the image is kept in memory.
//!
//! Dedup: a writer reads every pack's index when it starts, and stores only chunks that no pack
//! holds and that it has not stored itself. New chunks go into one pack (store/pack.rs), built
//! in the writer's `tmp/w-*` directory by all compression threads at once.
//!
//! Durability and gc safety: the writer holds the store lock shared for its whole life, so
//! `gc` (exclusive) never runs while chunks that no manifest names yet are being written or
//! deduplicated against. `commit` finishes the pack (index, fsync), renames it into `packs/`,
//! then writes the manifest and the name (temp file, fsync, rename, fsync directory). A writer
//! killed at any point leaves a temp directory, or a pack that no manifest names; `gc`
//! removes both.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::Mutex;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::store::chunk::{self, CodecPolicy, MAX_CHUNK_RAW};
use crate::store::digest::{ChunkDigest, SnapshotId};
use crate::store::files::{self, LockMode};
use crate::store::manifest::{Extent, Manifest, Meta, ObjectKind, ObjectMeta, Region, PAGE_SIZE};
use crate::store::pack::{self, PackWriter};
use crate::store::{reference, Store};

/// Default chunk size: 64 KiB, small enough that one page fault costs one cheap decompression;
/// runs that are compressed are cut at half of it (docs/FORMAT.md, docs/BENCHMARKS.md "Snapshot
/// store").
pub const DEFAULT_CHUNK_SIZE: usize = 64 << 10;

/// How many bytes of chunk records one task of the writer's pool gathers before it appends
/// them to the pack in one write (one `pwrite` per chunk cost syscalls and contention on the
/// file's lock).
const GROUP_BYTES: u64 = 256 << 10;

/// Chunk records encoded by one task, waiting to be appended to the pack together.
type Pending<'a> = Vec<(ChunkDigest, usize, chunk::Record<'a>)>;

/// What one task of the writer's pool has done: extents, stats, and records not yet written.
#[derive(Default)]
struct Group<'a> {
    extents: Vec<Extent>,
    stats: WriteStats,
    pending: Pending<'a>,
    pending_bytes: u64,
}

impl Group<'_> {
    /// Appends the pending records to the pack.
    fn flush(&mut self, sink: &Sink) -> Result<()> {
        sink.pack.append_records(&self.pending)?;
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }
}

/// Writer settings.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// Chunk size: a multiple of the page size, at most 4 MiB.
    pub chunk_size: usize,
    /// Codec for compressible chunks.
    pub codec: CodecPolicy,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            codec: CodecPolicy::default(),
        }
    }
}

/// What a writer has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    /// Bytes handed to the writer (pages and blobs, zeros included).
    pub input_bytes: u64,
    /// Of those, bytes in all-zero pages (holes).
    pub zero_bytes: u64,
    /// Chunks referenced (with repeats).
    pub chunks: u64,
    /// Chunks that were not in the store yet and were written.
    pub new_chunks: u64,
    /// Raw bytes of the new chunks.
    pub new_raw_bytes: u64,
    /// Bytes of the new chunks' records in the pack (headers included).
    pub new_stored_bytes: u64,
}

impl WriteStats {
    fn add(&mut self, o: &WriteStats) {
        self.input_bytes += o.input_bytes;
        self.zero_bytes += o.zero_bytes;
        self.chunks += o.chunks;
        self.new_chunks += o.new_chunks;
        self.new_raw_bytes += o.new_raw_bytes;
        self.new_stored_bytes += o.new_stored_bytes;
    }
}

struct ObjState {
    name: String,
    kind: ObjectKind,
    /// start -> end, non-overlapping, adjacent ranges merged.
    regions: BTreeMap<u64, u64>,
    /// A batch tail inside one chunk window, waiting for the next batch.
    pending: Option<(u64, Vec<u8>)>,
}

/// Where chunks go: the store's packs (to dedup against) and the new pack.
struct Sink {
    /// Every chunk in the store's packs when the writer started: digest → index into `packs`.
    known: HashMap<ChunkDigest, u32>,
    packs: Vec<String>,
    /// This commit's pack.
    pack: PackWriter,
    pack_name: String,
    /// Chunks stored in `pack` (or being stored).
    written: Mutex<HashSet<ChunkDigest>>,
    codec: CodecPolicy,
}

/// An in-progress snapshot. Dropping it without [`Writer::commit`] abandons it.
pub struct Writer {
    store: Store,
    opts: WriterOptions,
    tmp: PathBuf,
    _lock: File,
    sink: Sink,
    objects: Vec<ObjState>,
    by_name: HashMap<String, u32>,
    extents: Vec<Extent>,
    stats: WriteStats,
    /// Set when adding failed: chunks may be marked stored whose records never reached the
    /// pack, so nothing more is taken and nothing is committed.
    failed: bool,
}

/// Handle for adding pages to one memory object.
pub struct ObjectWriter<'w> {
    writer: &'w mut Writer,
    object: u32,
}

impl ObjectWriter<'_> {
    /// Adds `bytes` (whole pages) at `vaddr` (page aligned). Pages may come in any order and in
    /// any number of calls, but each page at most once.
    pub fn add_pages(&mut self, vaddr: u64, bytes: &[u8]) -> Result<()> {
        self.writer.add(self.object, vaddr, bytes)
    }
}

/// Whether `b` is all zero bytes. Each 64-byte block is ORed together (vectorized) and the
/// scan stops at the first block with a bit set: non-zero memory costs one block, and only
/// zero pages are read whole. (A fold over the whole page without the early exit took 4–5% of
/// a store write, every page read to its end.)
pub(crate) fn is_zero(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(64);
    blocks.all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

impl Writer {
    pub(crate) fn new(store: Store, opts: WriterOptions) -> Result<Writer> {
        let cs = opts.chunk_size;
        if cs == 0 || !cs.is_multiple_of(4096) || cs > MAX_CHUNK_RAW.min(4 << 20) {
            return Err(Error::InvalidInput {
                object: "writer".into(),
                reason: format!("chunk size {cs}: expected a multiple of 4096 up to 4 MiB"),
            });
        }
        let lock = files::lock_file(&store.lock_path(), LockMode::Shared)?;
        let tmp = store.tmp_dir().join(files::unique_name("w-"));
        files::mkdir_all(&tmp)?;
        let (known, packs) = known_chunks(&store)?;
        let pack_name = pack::new_pack_name();
        let sink = Sink {
            known,
            packs,
            pack: PackWriter::create(tmp.join(&pack_name))?,
            pack_name,
            written: Mutex::new(HashSet::new()),
            codec: opts.codec,
        };
        Ok(Writer {
            store,
            opts,
            tmp,
            _lock: lock,
            sink,
            objects: Vec::new(),
            by_name: HashMap::new(),
            extents: Vec::new(),
            stats: WriteStats::default(),
            failed: false,
        })
    }

    /// What has been written so far.
    pub fn stats(&self) -> WriteStats {
        self.stats
    }

    fn object_index(&mut self, name: &str, kind: ObjectKind) -> Result<u32> {
        if name.is_empty() || name.len() > 4096 {
            return Err(Error::InvalidInput {
                object: name.to_string(),
                reason: "object names must be 1 to 4096 bytes".into(),
            });
        }
        if let Some(&i) = self.by_name.get(name) {
            let existing = self
                .objects
                .get(usize::try_from(i).unwrap_or(usize::MAX))
                .map_or(kind, |o| o.kind);
            if existing != kind || kind == ObjectKind::Blob {
                return Err(Error::InvalidInput {
                    object: name.to_string(),
                    reason: format!("already added as a {}", existing.as_str()),
                });
            }
            return Ok(i);
        }
        let i = u32::try_from(self.objects.len()).map_err(|_| Error::InvalidInput {
            object: name.to_string(),
            reason: "too many objects".into(),
        })?;
        self.objects.push(ObjState {
            name: name.to_string(),
            kind,
            regions: BTreeMap::new(),
            pending: None,
        });
        self.by_name.insert(name.to_string(), i);
        Ok(i)
    }

    /// The memory object called `name` (created on first use), to add pages to.
    pub fn object(&mut self, name: &str) -> Result<ObjectWriter<'_>> {
        let object = self.object_index(name, ObjectKind::Memory)?;
        Ok(ObjectWriter {
            writer: self,
            object,
        })
    }

    /// Adds a named blob (any length). Each name once.
    pub fn add_blob(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let object = self.object_index(name, ObjectKind::Blob)?;
        let len = bytes.len() as u64;
        self.objects[usize::try_from(object).unwrap_or(0)]
            .regions
            .insert(0, len);
        let cs = self.opts.chunk_size;
        let jobs: Vec<(u64, Cow<'_, [u8]>)> = bytes
            .chunks(cs)
            .enumerate()
            .map(|(i, c)| ((i * cs) as u64, Cow::Borrowed(c)))
            .collect();
        self.run_jobs(object, jobs)
    }

    fn add(&mut self, object: u32, vaddr: u64, bytes: &[u8]) -> Result<()> {
        let oi = usize::try_from(object).unwrap_or(usize::MAX);
        let name = self.objects[oi].name.clone();
        let invalid = |reason: String| Error::InvalidInput {
            object: name.clone(),
            reason,
        };
        if bytes.is_empty() {
            return Ok(());
        }
        let len = bytes.len() as u64;
        if !vaddr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(invalid(format!(
                "pages at {vaddr:#x} (+{len:#x}): address and length must be multiples of {PAGE_SIZE}"
            )));
        }
        let end = vaddr
            .checked_add(len)
            .ok_or_else(|| invalid(format!("pages at {vaddr:#x} (+{len:#x}) overflow")))?;
        // Record the region, refusing overlap, merging neighbours.
        let regions = &mut self.objects[oi].regions;
        let prev = regions.range(..=vaddr).next_back().map(|(&s, &e)| (s, e));
        let next = regions.range(vaddr..).next().map(|(&s, &e)| (s, e));
        if prev.is_some_and(|(_, e)| e > vaddr) || next.is_some_and(|(s, _)| s < end) {
            return Err(invalid(format!(
                "pages at {vaddr:#x}..{end:#x} overlap pages added before"
            )));
        }
        let mut start = vaddr;
        let mut stop = end;
        if let Some((s, e)) = prev.filter(|&(_, e)| e == vaddr) {
            regions.remove(&s);
            start = s;
            let _ = e;
        }
        if let Some((s, e)) = next.filter(|&(s, _)| s == end) {
            regions.remove(&s);
            stop = e;
        }
        regions.insert(start, stop);

        let cs = self.opts.chunk_size as u64;
        let boundary = |a: u64| (a / cs + 1) * cs;
        let mut jobs: Vec<(u64, Cow<'_, [u8]>)> = Vec::new();
        let mut pos = 0usize;
        if let Some((pstart, mut pbuf)) = self.objects[oi].pending.take() {
            let pend = pstart + pbuf.len() as u64;
            if pend == vaddr {
                let take =
                    usize::try_from((boundary(pstart) - vaddr).min(len)).unwrap_or(bytes.len());
                pbuf.extend_from_slice(&bytes[..take]);
                pos = take;
                if pstart + pbuf.len() as u64 == boundary(pstart) {
                    jobs.push((pstart, Cow::Owned(pbuf)));
                } else {
                    self.objects[oi].pending = Some((pstart, pbuf));
                }
            } else {
                jobs.push((pstart, Cow::Owned(pbuf)));
            }
        }
        while pos < bytes.len() {
            let a = vaddr + pos as u64;
            let n = usize::try_from((boundary(a) - a).min(end - a)).unwrap_or(bytes.len() - pos);
            let piece = &bytes[pos..pos + n];
            if a + n as u64 == boundary(a) {
                jobs.push((a, Cow::Borrowed(piece)));
            } else {
                self.objects[oi].pending = Some((a, piece.to_vec()));
            }
            pos += n;
        }
        self.run_jobs(object, jobs)
    }

    /// The error of a writer that failed before: it takes nothing more.
    fn refuse_if_failed(&self) -> Result<()> {
        if self.failed {
            return Err(Error::InvalidInput {
                object: "writer".into(),
                reason: "an earlier write failed, so chunks this snapshot names may be missing; \
                         start a new writer"
                    .into(),
            });
        }
        Ok(())
    }

    /// Chunks, hashes, compresses and stores the windows in parallel. On error the writer is
    /// done: records other tasks had encoded may be lost with the failing one's.
    fn run_jobs(&mut self, object: u32, jobs: Vec<(u64, Cow<'_, [u8]>)>) -> Result<()> {
        self.refuse_if_failed()?;
        let r = self.run_jobs_once(object, jobs);
        self.failed = r.is_err();
        r
    }

    fn run_jobs_once(&mut self, object: u32, jobs: Vec<(u64, Cow<'_, [u8]>)>) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let sink = &self.sink;
        let cs = self.opts.chunk_size;
        // Each task of the pool folds windows into its own group, whose records go to the
        // pack in one write whenever they reach GROUP_BYTES, and at the end.
        let results: Vec<Result<(Vec<Extent>, WriteStats)>> = jobs
            .par_iter()
            .fold(
                || Ok::<Group, Error>(Group::default()),
                |group: Result<Group>, (va, data)| {
                    let mut g = group?;
                    let (e, st) = window(sink, object, *va, data, cs, &mut g.pending)?;
                    g.extents.extend(e);
                    g.stats.add(&st);
                    g.pending_bytes += st.new_stored_bytes;
                    if g.pending_bytes >= GROUP_BYTES {
                        g.flush(sink)?;
                    }
                    Ok(g)
                },
            )
            .map(|group| {
                let mut g = group?;
                g.flush(sink)?;
                Ok((g.extents, g.stats))
            })
            .collect();
        for r in results {
            let (ext, st) = r?;
            self.extents.extend(ext);
            self.stats.add(&st);
        }
        Ok(())
    }

    /// Compresses and writes the pages still buffered, so that [`Writer::stats`] counts
    /// everything added so far. [`Writer::commit`] does it too.
    pub fn flush(&mut self) -> Result<()> {
        for i in 0..self.objects.len() {
            if let Some((start, buf)) = self.objects[i].pending.take() {
                let object = u32::try_from(i).unwrap_or(u32::MAX);
                self.run_jobs(object, vec![(start, Cow::Owned(buf))])?;
            }
        }
        Ok(())
    }

    /// Makes the snapshot durable and returns its ID; with `name`, points that name at it
    /// (moving the name if it exists; the snapshot it pointed at stays until `gc`).
    pub fn commit(mut self, name: Option<&str>) -> Result<SnapshotId> {
        if let Some(n) = name {
            reference::parse_name(n)?;
        }
        self.refuse_if_failed()?;
        self.flush()?;
        let t0 = std::time::Instant::now();
        let sink = &self.sink;
        let new_pack = if sink.pack.is_empty() {
            None
        } else {
            let path = sink.pack.finish()?;
            let dest = self.store.packs_dir().join(&sink.pack_name);
            fs::rename(path, &dest).map_err(|e| Error::io(&dest, "rename pack into place", e))?;
            files::fsync_dir(&self.store.packs_dir())?;
            Some(sink.pack_name.clone())
        };
        tracing::debug!(
            ms = t0.elapsed().as_secs_f64() * 1e3,
            new_stored = self.stats.new_stored_bytes,
            "store: pack finished and synced"
        );
        let mut packs = BTreeSet::new();
        for e in &self.extents {
            match sink.known.get(&e.chunk) {
                Some(&i) => {
                    packs.insert(sink.packs[usize::try_from(i).unwrap_or(0)].clone());
                }
                None => {
                    packs.insert(new_pack.clone().ok_or_else(|| Error::InvalidInput {
                        object: e.chunk.to_string(),
                        reason: "a chunk in no pack (writer bug)".into(),
                    })?);
                }
            }
        }
        let mut objects = Vec::with_capacity(self.objects.len());
        let mut regions = Vec::new();
        for (i, o) in self.objects.iter().enumerate() {
            let object = u32::try_from(i).unwrap_or(u32::MAX);
            let mut size = 0;
            for (&start, &end) in &o.regions {
                if end > start {
                    regions.push(Region {
                        object,
                        start,
                        len: end - start,
                    });
                    size += end - start;
                }
            }
            objects.push(ObjectMeta {
                name: o.name.clone(),
                kind: o.kind,
                size,
            });
        }
        self.extents.sort_by_key(|e| (e.object, e.vaddr));
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let manifest = Manifest {
            meta: Meta {
                created,
                page_size: PAGE_SIZE,
                chunk_size: self.opts.chunk_size as u64,
                objects,
                packs: packs.into_iter().collect(),
            },
            regions,
            extents: std::mem::take(&mut self.extents),
        };
        let bytes = manifest.encode()?;
        let id = SnapshotId::of_manifest(&bytes);
        let path = self.store.manifest_path(&id);
        if !path.exists() {
            files::write_atomic(&self.tmp, &path, &bytes)?;
        }
        if let Some(n) = name {
            self.store.tag(&id, n)?;
        }
        Ok(id)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// Where a run of non-zero pages at `[start, end)` (addresses, within one chunk window of
/// `chunk_size`) is cut into chunks: at the window's middle (`chunk_size / 2` rounded down to
/// a page) when its content will be compressed and the middle is inside the run, nowhere
/// otherwise. Returns the cut addresses, `end` last.
///
/// A page fault costs one chunk's decompression and hash, so compressed chunks are kept to
/// half the chunk size: a 32 KiB zstd frame decodes in half the time of a 64 KiB one and is
/// 2.5% larger (docs/BENCHMARKS.md, "Half-size compressed chunks"). Raw chunks (random
/// memory) cost a read and a hash and stay whole. The cut depends only on the content and
/// the address, so unchanged memory is cut, and deduplicated, the same way every time.
fn cuts(start: u64, end: u64, chunk_size: u64, compressed: bool) -> impl Iterator<Item = u64> {
    let middle = start / chunk_size * chunk_size + chunk_size / 2 / PAGE_SIZE * PAGE_SIZE;
    let inner = (compressed && start < middle && middle < end).then_some(middle);
    inner.into_iter().chain(std::iter::once(end))
}

/// Processes one chunk window: splits it at zero pages, stores each run of non-zero pages as
/// one chunk, or two when it is compressible and spans the window's middle ([`cuts`]).
fn window<'a>(
    sink: &Sink,
    object: u32,
    va: u64,
    data: &'a [u8],
    chunk_size: usize,
    pending: &mut Pending<'a>,
) -> Result<(Vec<Extent>, WriteStats)> {
    let mut stats = WriteStats {
        input_bytes: data.len() as u64,
        ..WriteStats::default()
    };
    let mut extents = Vec::new();
    let page = usize::try_from(PAGE_SIZE).unwrap_or(4096);
    let mut run_start: Option<usize> = None;
    let mut off = 0usize;
    let mut flush = |from: usize, to: usize, stats: &mut WriteStats| -> Result<()> {
        let compressed = chunk::will_compress(&data[from..to], sink.codec);
        let mut at = va + from as u64;
        for cut in cuts(at, va + to as u64, chunk_size as u64, compressed) {
            let lo = usize::try_from(at - va).unwrap_or(0);
            let hi = usize::try_from(cut - va).unwrap_or(data.len());
            let raw = &data[lo..hi];
            let (digest, new_stored) = sink.store(raw, compressed, pending)?;
            stats.chunks += 1;
            if let Some(n) = new_stored {
                stats.new_chunks += 1;
                stats.new_raw_bytes += raw.len() as u64;
                stats.new_stored_bytes += n;
            }
            extents.push(Extent {
                object,
                len: u32::try_from(raw.len()).unwrap_or(u32::MAX),
                vaddr: at,
                chunk: digest,
            });
            at = cut;
        }
        Ok(())
    };
    while off < data.len() {
        let end = (off + page).min(data.len());
        if is_zero(&data[off..end]) {
            stats.zero_bytes += (end - off) as u64;
            if let Some(s) = run_start.take() {
                flush(s, off, &mut stats)?;
            }
        } else if run_start.is_none() {
            run_start = Some(off);
        }
        off = end;
    }
    if let Some(s) = run_start {
        flush(s, data.len(), &mut stats)?;
    }
    Ok((extents, stats))
}

impl Sink {
    /// Encodes one chunk into `pending` unless the store or this writer has it. Returns its
    /// digest and, if it is new, the bytes of its record. `compress`: what
    /// [`chunk::will_compress`] said of the run `raw` was cut from.
    fn store<'a>(
        &self,
        raw: &'a [u8],
        compress: bool,
        pending: &mut Pending<'a>,
    ) -> Result<(ChunkDigest, Option<u64>)> {
        let digest = ChunkDigest::of(raw);
        if self.known.contains_key(&digest) {
            return Ok((digest, None));
        }
        let fresh = self
            .written
            .lock()
            .map(|mut w| w.insert(digest))
            .map_err(|_| Error::InvalidInput {
                object: "writer".into(),
                reason: "a compression thread panicked".into(),
            })?;
        if !fresh {
            return Ok((digest, None));
        }
        let record = chunk::encode_record(raw, self.codec, compress)?;
        let n = record.len() as u64;
        pending.push((digest, raw.len(), record));
        Ok((digest, Some(n)))
    }
}

/// Every chunk of the store's packs: digest → index into the returned pack names. A pack whose
/// index cannot be read is left out (with a warning): nothing will be deduplicated against it.
fn known_chunks(store: &Store) -> Result<(HashMap<ChunkDigest, u32>, Vec<String>)> {
    let dir = store.packs_dir();
    let mut known = HashMap::new();
    let mut names = Vec::new();
    for name in pack::list(&dir)? {
        match pack::Pack::open(&dir, &name) {
            Ok(p) => {
                let i = u32::try_from(names.len()).unwrap_or(u32::MAX);
                known.reserve(p.entries().len());
                for e in p.entries() {
                    known.entry(e.digest).or_insert(i);
                }
                names.push(name);
            }
            Err(e) => tracing::warn!("store: not deduplicating against a pack: {e}"),
        }
    }
    Ok((known, names))
}

#[cfg(test)]
mod tests {
    use super::{cuts, is_zero};

    #[test]
    fn compressed_runs_are_cut_once_at_the_window_middle_whatever_the_chunk_size() {
        let k = 4096u64;
        let c = |start, end, cs, compressed| cuts(start, end, cs, compressed).collect::<Vec<_>>();
        // 64 KiB windows: the middle is 32 KiB into each.
        assert_eq!(c(0, 16 * k, 16 * k, true), [8 * k, 16 * k]);
        assert_eq!(c(16 * k + 2 * k, 32 * k, 16 * k, true), [24 * k, 32 * k]);
        assert_eq!(c(0, 16 * k, 16 * k, false), [16 * k]);
        // A run that ends at or starts past the middle is not cut.
        assert_eq!(c(0, 8 * k, 16 * k, true), [8 * k]);
        assert_eq!(c(8 * k, 16 * k, 16 * k, true), [16 * k]);
        // Odd page counts: one cut, at the middle rounded down to a page.
        assert_eq!(c(0, 3 * k, 3 * k, true), [k, 3 * k]);
        assert_eq!(c(5 * k, 10 * k, 5 * k, true), [7 * k, 10 * k]);
        // One page per chunk: nothing to cut.
        assert_eq!(c(k, 2 * k, k, true), [2 * k]);
    }

    #[test]
    fn a_set_byte_anywhere_is_not_zero() {
        for len in [0, 1, 63, 64, 65, 4095, 4096, 4097] {
            let mut b = vec![0u8; len];
            assert!(is_zero(&b), "{len} zeros");
            for at in 0..len {
                b[at] = 0x80;
                assert!(!is_zero(&b), "byte {at} of {len}");
                b[at] = 0;
            }
        }
    }
}

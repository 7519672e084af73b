//! The reader: opens a snapshot (verified manifest, a lease that pins it against gc), serves
//! single pages with one chunk decompression through a small cache (the page-fault path), and
//! reads ranges, blobs or whole objects back in parallel. Every chunk is verified on every read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::store::chunk::ChunkCtx;
use crate::store::digest::{ChunkDigest, SnapshotId};
use crate::store::lease::SnapshotPin;
use crate::store::manifest::{Extent, Manifest, ObjectKind, ObjectMeta, PAGE_SIZE};
use crate::store::pack::{self, Pack};
use crate::store::workingset::{self, PageRef};
use crate::store::Store;

/// Decompressed chunks kept for the page-fault path (64 x 64 KiB = 4 MiB by default).
pub const DEFAULT_CACHE_CHUNKS: usize = 64;

/// What [`Reader::read_page`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// Data from a chunk.
    Data,
    /// A hole: the page was all zeros when written.
    Zero,
}

/// Tiny LRU of decompressed chunks; a linear scan over a few dozen entries costs less than a
/// hash map's upkeep at this size.
struct ChunkCache {
    cap: usize,
    tick: u64,
    entries: Vec<(ChunkDigest, Arc<Vec<u8>>, u64)>,
    /// The buffer of the last chunk evicted, when nobody else held it: the next miss decodes
    /// into it instead of allocating (and zeroing) a fresh one.
    spare: Option<Vec<u8>>,
}

impl ChunkCache {
    fn get(&mut self, d: &ChunkDigest) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.iter_mut().find(|e| e.0 == *d).map(|e| {
            e.2 = tick;
            Arc::clone(&e.1)
        })
    }

    fn put(&mut self, d: ChunkDigest, data: Arc<Vec<u8>>) {
        if self.cap == 0 {
            return;
        }
        self.tick += 1;
        if self.entries.len() < self.cap {
            self.entries.push((d, data, self.tick));
        } else if let Some(oldest) = self.entries.iter_mut().min_by_key(|e| e.2) {
            let (_, evicted, _) = std::mem::replace(oldest, (d, data, self.tick));
            self.spare = Arc::try_unwrap(evicted).ok();
        }
    }

    /// A buffer of `len` bytes to decode a chunk into. Its contents are stale: the decoder
    /// writes every byte, or zeroes it all on error.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = self.spare.take().unwrap_or_default();
        buf.resize(len, 0);
        buf
    }
}

/// Result of verifying a whole snapshot.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Distinct chunks checked.
    pub chunks: u64,
    /// Raw bytes checked.
    pub bytes: u64,
    /// One error per bad chunk (each names the snapshot and the chunk).
    pub failures: Vec<Error>,
}

/// An open snapshot.
pub struct Reader {
    store: Store,
    id: SnapshotId,
    id_str: String,
    manifest: Manifest,
    by_name: HashMap<String, u32>,
    /// The packs the manifest names, open, with their verified indexes.
    packs: Vec<Pack>,
    cache: Mutex<ChunkCache>,
    _pin: SnapshotPin,
}

impl Reader {
    /// Resolves `reference`, loads and verifies the manifest, and pins the snapshot.
    pub(crate) fn open(store: Store, reference: &str) -> Result<Reader> {
        // Pinned first (resolved and leased under the store lock): gc cannot remove the
        // snapshot, nor the packs it names, while its manifest and packs are opened.
        let pin = SnapshotPin::take(&store, reference)?;
        let id = *pin.id();
        let manifest = store.load_manifest(&id)?;
        let packs = pack::open_all(&store.packs_dir(), &manifest.meta.packs);
        let packs = packs.map_err(|e| match e {
            Error::BadPack { path, reason } => Error::BadPack {
                path,
                reason: format!("{reason} (snapshot {id} needs it)"),
            },
            e => e,
        })?;
        let by_name = manifest
            .meta
            .objects
            .iter()
            .enumerate()
            .filter_map(|(i, o)| u32::try_from(i).ok().map(|i| (o.name.clone(), i)))
            .collect();
        Ok(Reader {
            store,
            id,
            id_str: id.to_string(),
            manifest,
            by_name,
            packs,
            cache: Mutex::new(ChunkCache {
                cap: DEFAULT_CACHE_CHUNKS,
                tick: 0,
                entries: Vec::new(),
                spare: None,
            }),
            _pin: pin,
        })
    }

    /// Sets how many decompressed chunks the page cache keeps (0 disables it).
    pub fn set_cache_chunks(&mut self, n: usize) {
        if let Ok(mut c) = self.cache.lock() {
            c.cap = n;
            c.entries.truncate(n);
        }
    }

    /// The snapshot's ID.
    pub fn id(&self) -> SnapshotId {
        self.id
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The snapshot's objects.
    pub fn objects(&self) -> &[ObjectMeta] {
        &self.manifest.meta.objects
    }

    fn object(&self, name: &str, kind: ObjectKind) -> Result<u32> {
        self.by_name
            .get(name)
            .copied()
            .filter(|&i| {
                self.manifest
                    .meta
                    .objects
                    .get(usize::try_from(i).unwrap_or(usize::MAX))
                    .is_some_and(|o| o.kind == kind)
            })
            .ok_or_else(|| Error::NoSuchObject {
                snapshot: self.id_str.clone(),
                kind: kind.as_str(),
                object: name.to_string(),
            })
    }

    fn ctx<'a>(&'a self, digest: &'a ChunkDigest) -> ChunkCtx<'a> {
        ChunkCtx {
            snapshot: &self.id_str,
            digest,
        }
    }

    /// Reads and verifies one whole chunk into `out` (its raw length).
    fn read_chunk_into(&self, e: &Extent, out: &mut [u8]) -> Result<()> {
        let ctx = self.ctx(&e.chunk);
        match pack::find(&self.packs, &e.chunk) {
            Some((p, entry)) => p.read_chunk_into(&ctx, entry, out).map(|_| ()),
            None => {
                out.fill(0);
                Err(Error::MissingChunk {
                    snapshot: self.id_str.clone(),
                    chunk: e.chunk.to_string(),
                    path: self.store.packs_dir(),
                })
            }
        }
    }

    fn cached_chunk(&self, e: &Extent) -> Result<Arc<Vec<u8>>> {
        let len = usize::try_from(e.len).unwrap_or(0);
        // One lock for the lookup and, on a miss, the buffer to decode into.
        let mut buf = match self.cache.lock() {
            Ok(mut c) => match c.get(&e.chunk) {
                Some(hit) => return Ok(hit),
                None => c.buffer(len),
            },
            Err(_) => vec![0u8; len],
        };
        self.read_chunk_into(e, &mut buf)?;
        let buf = Arc::new(buf);
        if let Ok(mut c) = self.cache.lock() {
            c.put(e.chunk, Arc::clone(&buf));
        }
        Ok(buf)
    }

    fn extent_at(&self, obj: u32, addr: u64) -> Option<&Extent> {
        let exts = self.manifest.object_extents(obj);
        let i = exts.partition_point(|e| e.vaddr <= addr);
        i.checked_sub(1)
            .and_then(|i| exts.get(i))
            .filter(|e| addr < e.end())
    }

    fn in_regions(&self, obj: u32, start: u64, end: u64) -> bool {
        let regs = self.manifest.object_regions(obj);
        let i = regs.partition_point(|r| r.start <= start);
        i.checked_sub(1)
            .and_then(|i| regs.get(i))
            .is_some_and(|r| end <= r.start + r.len)
    }

    /// Page `vaddr` (page aligned) of memory object `object` into `out` (one page): one chunk
    /// decompression at most, cached. The page-fault path.
    pub fn read_page(&self, object: &str, vaddr: u64, out: &mut [u8]) -> Result<PageKind> {
        let obj = self.object(object, ObjectKind::Memory)?;
        self.read_page_at(obj, vaddr, out)
    }

    /// [`Reader::read_page`] by object index.
    pub fn read_page_at(&self, obj: u32, vaddr: u64, out: &mut [u8]) -> Result<PageKind> {
        let not_present = || Error::PageNotPresent {
            snapshot: self.id_str.clone(),
            object: self
                .manifest
                .meta
                .objects
                .get(usize::try_from(obj).unwrap_or(usize::MAX))
                .map_or_else(|| format!("#{obj}"), |o| o.name.clone()),
            vaddr,
        };
        if !vaddr.is_multiple_of(PAGE_SIZE) || out.len() as u64 != PAGE_SIZE {
            return Err(Error::InvalidInput {
                object: format!("page {vaddr:#x}"),
                reason: format!("expected a page-aligned address and a {PAGE_SIZE}-byte buffer"),
            });
        }
        if let Some(e) = self.extent_at(obj, vaddr) {
            let data = self.cached_chunk(e)?;
            let off = usize::try_from(vaddr - e.vaddr).map_err(|_| not_present())?;
            let src = data.get(off..off + out.len()).ok_or_else(not_present)?;
            out.copy_from_slice(src);
            return Ok(PageKind::Data);
        }
        if self.in_regions(obj, vaddr, vaddr + PAGE_SIZE) {
            out.fill(0);
            return Ok(PageKind::Zero);
        }
        Err(not_present())
    }

    /// Reads `[start, start + out.len())` of object `obj` in parallel, holes as zeros. The
    /// range must lie inside one region.
    fn read_range_at(&self, obj: u32, start: u64, out: &mut [u8]) -> Result<()> {
        let end = start + out.len() as u64;
        if !self.in_regions(obj, start, end) {
            return Err(Error::PageNotPresent {
                snapshot: self.id_str.clone(),
                object: self.manifest.meta.objects[usize::try_from(obj).unwrap_or(0)]
                    .name
                    .clone(),
                vaddr: start,
            });
        }
        let exts = self.manifest.object_extents(obj);
        let first = exts.partition_point(|e| e.end() <= start);
        enum Task<'a> {
            Zero(&'a mut [u8]),
            Whole(&'a Extent, &'a mut [u8]),
            Part(&'a Extent, usize, &'a mut [u8]),
        }
        let mut tasks = Vec::new();
        let mut rest = out;
        let mut at = start;
        for e in exts[first..].iter().take_while(|e| e.vaddr < end) {
            let s = e.vaddr.max(start);
            if s > at {
                let (z, r) = rest.split_at_mut(usize::try_from(s - at).unwrap_or(0));
                tasks.push(Task::Zero(z));
                rest = r;
            }
            let stop = e.end().min(end);
            let (d, r) = rest.split_at_mut(usize::try_from(stop - s).unwrap_or(0));
            rest = r;
            if s == e.vaddr && stop == e.end() {
                tasks.push(Task::Whole(e, d));
            } else {
                tasks.push(Task::Part(e, usize::try_from(s - e.vaddr).unwrap_or(0), d));
            }
            at = stop;
        }
        if !rest.is_empty() {
            tasks.push(Task::Zero(rest));
        }
        tasks.into_par_iter().try_for_each(|t| match t {
            Task::Zero(z) => {
                z.fill(0);
                Ok(())
            }
            Task::Whole(e, d) => self.read_chunk_into(e, d),
            Task::Part(e, off, d) => {
                let mut buf = vec![0u8; usize::try_from(e.len).unwrap_or(0)];
                self.read_chunk_into(e, &mut buf)?;
                let n = d.len();
                d.copy_from_slice(&buf[off..off + n]);
                Ok(())
            }
        })
    }

    /// Reads `[start, start + out.len())` of memory object `object` in parallel; holes read as
    /// zeros. The range must lie inside one region.
    pub fn read_range(&self, object: &str, start: u64, out: &mut [u8]) -> Result<()> {
        let obj = self.object(object, ObjectKind::Memory)?;
        self.read_range_at(obj, start, out)
    }

    /// A blob's bytes.
    pub fn read_blob(&self, name: &str) -> Result<Vec<u8>> {
        let obj = self.object(name, ObjectKind::Blob)?;
        let size = self.manifest.meta.objects[usize::try_from(obj).unwrap_or(0)].size;
        let mut out = vec![0u8; usize::try_from(size).unwrap_or(0)];
        if !out.is_empty() {
            self.read_range_at(obj, 0, &mut out)?;
        }
        Ok(out)
    }

    /// Every region of memory object `object` as (start address, bytes), read in parallel.
    pub fn read_object(&self, object: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        let obj = self.object(object, ObjectKind::Memory)?;
        let mut out = Vec::new();
        for r in self.manifest.object_regions(obj) {
            let mut buf = vec![0u8; usize::try_from(r.len).unwrap_or(0)];
            self.read_range_at(obj, r.start, &mut buf)?;
            out.push((r.start, buf));
        }
        Ok(out)
    }

    /// Reads and verifies every distinct chunk of the snapshot, in parallel.
    pub fn verify(&self) -> VerifyReport {
        let mut seen = std::collections::HashSet::new();
        let distinct: Vec<&Extent> = self
            .manifest
            .extents
            .iter()
            .filter(|e| seen.insert(e.chunk))
            .collect();
        let failures: Vec<Error> = distinct
            .par_iter()
            .filter_map(|e| {
                let mut buf = vec![0u8; usize::try_from(e.len).unwrap_or(0)];
                self.read_chunk_into(e, &mut buf).err()
            })
            .collect();
        VerifyReport {
            chunks: distinct.len() as u64,
            bytes: distinct.iter().map(|e| u64::from(e.len)).sum(),
            failures,
        }
    }

    /// The recorded working set, if any: (object, page) in the order they were touched.
    pub fn working_set(&self) -> Result<Option<Vec<PageRef>>> {
        workingset::load(&self.store, &self.id, &self.manifest)
    }

    /// Every data page of every memory object, working-set pages first (in their recorded
    /// order), then the rest in address order: the order a lazy restore should fetch in.
    pub fn page_order(&self) -> Result<Vec<PageRef>> {
        let ws = self.working_set()?.unwrap_or_default();
        let mut seen: std::collections::HashSet<PageRef> = std::collections::HashSet::new();
        let mut out = Vec::new();
        for p in ws {
            if self.extent_at(p.object, p.vaddr).is_some() && seen.insert(p) {
                out.push(p);
            }
        }
        for e in &self.manifest.extents {
            let kind = self.manifest.meta.objects[usize::try_from(e.object).unwrap_or(0)].kind;
            if kind != ObjectKind::Memory {
                continue;
            }
            let mut a = e.vaddr;
            while a < e.end() {
                let p = PageRef {
                    object: e.object,
                    vaddr: a,
                };
                if !seen.contains(&p) {
                    out.push(p);
                }
                a += PAGE_SIZE;
            }
        }
        Ok(out)
    }
}

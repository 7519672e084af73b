//! Pack files: the chunks a commit adds, back to back in one file, with a sorted index at its
//! end.
//!
//! ```text
//! packs/NAME                  NAME = 32 lower-case hex digits, random, kept for the pack's life
//! offset  size
//!      0     8  magic "CRYOPACK"                              PACK_MAGIC
//!      8     4  version u32 LE = 1                            PACK_VERSION
//!     12     4  reserved u32 = 0
//!     16     .  chunk records, each a chunk header (chunk.rs) and its payload
//!      I  48 × n  index, sorted by digest, no repeats:
//!                 digest [32] | offset u64 | len u32 (record: header + payload) | raw_len u32
//!    end-64  64  trailer: "CRYOPIDX" | n u64 | I u64 | reserved u64 = 0 | blake3 of the index [32]
//! ```
//!
//! One file per commit instead of one per chunk: creating, renaming and syncing tens of
//! thousands of small files cost most of a checkpoint's time (directory locks, inode
//! allocation). A pack is written in a writer's temp directory, records appended in parallel
//! at reserved offsets, then finished (index, trailer, fsync) and renamed into `packs/`.
//! `gc` and `compact` rewrite a pack under the same name (temp file, fsync, rename), so a
//! manifest that names the pack stays valid; a reader holds the file it opened, and reads its
//! index from that same file, so it never mixes two versions.
//!
//! Every index is verified when it is opened (checksum, bounds, order); every record on every
//! read (chunk.rs).

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::store::chunk::{self, ChunkCtx, Codec, CHUNK_HEADER_LEN, MAX_CHUNK_RAW};
use crate::store::digest::{self, ChunkDigest};
use crate::store::files;
use crate::store::manifest::{u32_at, u64_at};

/// Magic at the start of every pack.
pub const PACK_MAGIC: [u8; 8] = *b"CRYOPACK";
/// Magic at the start of a pack's trailer.
pub const PACK_INDEX_MAGIC: [u8; 8] = *b"CRYOPIDX";
/// The pack format version this build writes and reads.
pub const PACK_VERSION: u32 = 1;
/// Length of the pack header.
pub const PACK_HEADER_LEN: u64 = 16;
/// Length of one index entry.
pub const PACK_ENTRY_LEN: usize = 48;
/// Length of the trailer.
pub const PACK_TRAILER_LEN: u64 = 64;
/// Largest index accepted (entries), checked before the index is read: 4 TiB of 64 KiB chunks.
pub const MAX_PACK_ENTRIES: u64 = 1 << 26;
/// Bytes appended between two writeback kicks: the kernel writes a pack out while the rest is
/// still being compressed, so the final fsync waits for little.
const WRITEBACK_STEP: u64 = 32 << 20;

/// Whether `s` is a pack name: 32 lower-case hex digits.
pub fn is_pack_name(s: &str) -> bool {
    s.len() == 32 && digest::is_lower_hex(s)
}

/// A fresh pack name: 128 bits from the time, the process and a counter, hashed.
pub(crate) fn new_pack_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("{}-{nanos}", files::unique_name("p-"));
    blake3::hash(seed.as_bytes()).to_hex()[..32].to_string()
}

/// One chunk record of a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    /// The chunk (blake3 of its raw bytes).
    pub digest: ChunkDigest,
    /// Where its record starts in the pack.
    pub offset: u64,
    /// The record's length: chunk header and payload.
    pub len: u32,
    /// The chunk's raw length.
    pub raw_len: u32,
}

/// An open pack with its verified index.
#[derive(Debug)]
pub struct Pack {
    name: String,
    path: PathBuf,
    file: File,
    entries: Vec<PackEntry>,
    len: u64,
}

impl Pack {
    /// Opens `dir/name` and verifies its header, trailer and index.
    pub(crate) fn open(dir: &Path, name: &str) -> Result<Pack> {
        let path = dir.join(name);
        let bad = |reason: String| Error::BadPack {
            path: path.clone(),
            reason,
        };
        if !is_pack_name(name) {
            return Err(bad("not a pack name (32 lower-case hex digits)".into()));
        }
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad("missing from the store".into()))
            }
            Err(e) => return Err(Error::io(&path, "open pack", e)),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io(&path, "stat pack", e))?
            .len();
        if len < PACK_HEADER_LEN + PACK_TRAILER_LEN {
            return Err(bad(format!(
                "{len} bytes, shorter than a header and a trailer"
            )));
        }
        let read_at = |buf: &mut [u8], at: u64, what: &str| {
            file.read_exact_at(buf, at)
                .map_err(|e| bad(format!("reading the {what}: {e}")))
        };
        let mut header = [0u8; 16];
        read_at(&mut header, 0, "header")?;
        if header[0..8] != PACK_MAGIC {
            return Err(bad("bad magic (not a cryo pack)".into()));
        }
        let version = u32_at(&header, 8);
        if version != PACK_VERSION {
            return Err(bad(format!(
                "pack format version {version} is not supported (this build reads \
                 {PACK_VERSION})"
            )));
        }
        if u32_at(&header, 12) != 0 {
            return Err(bad("non-zero reserved header field".into()));
        }
        let mut trailer = [0u8; 64];
        read_at(&mut trailer, len - PACK_TRAILER_LEN, "trailer")?;
        if trailer[0..8] != PACK_INDEX_MAGIC {
            return Err(bad("bad trailer magic (truncated or not finished)".into()));
        }
        let n = u64_at(&trailer, 8);
        let index_at = u64_at(&trailer, 16);
        if u64_at(&trailer, 24) != 0 {
            return Err(bad("non-zero reserved trailer field".into()));
        }
        if n > MAX_PACK_ENTRIES {
            return Err(bad(format!(
                "{n} index entries, more than {MAX_PACK_ENTRIES}"
            )));
        }
        let index_len = n * PACK_ENTRY_LEN as u64;
        let fits = index_at
            .checked_add(index_len)
            .and_then(|e| e.checked_add(PACK_TRAILER_LEN));
        if index_at < PACK_HEADER_LEN || fits != Some(len) {
            return Err(bad(format!(
                "{len} bytes, but the trailer puts {n} index entries at offset {index_at}"
            )));
        }
        let mut index = vec![0u8; usize::try_from(index_len).unwrap_or(usize::MAX)];
        read_at(&mut index, index_at, "index")?;
        if blake3::hash(&index).as_bytes()[..] != trailer[32..64] {
            return Err(bad("index checksum mismatch".into()));
        }
        let mut entries: Vec<PackEntry> = Vec::with_capacity(index.len() / PACK_ENTRY_LEN);
        for (i, b) in index.chunks_exact(PACK_ENTRY_LEN).enumerate() {
            let mut d = [0u8; 32];
            d.copy_from_slice(&b[0..32]);
            let e = PackEntry {
                digest: ChunkDigest(d),
                offset: u64_at(b, 32),
                len: u32_at(b, 40),
                raw_len: u32_at(b, 44),
            };
            let sorted = entries.last().is_none_or(|p| p.digest < e.digest);
            let inside = e.offset >= PACK_HEADER_LEN
                && e.offset
                    .checked_add(u64::from(e.len))
                    .is_some_and(|end| end <= index_at);
            let lens = usize::try_from(e.len).is_ok_and(|l| l >= CHUNK_HEADER_LEN)
                && e.raw_len > 0
                && usize::try_from(e.raw_len).is_ok_and(|l| l <= MAX_CHUNK_RAW);
            if !sorted || !inside || !lens {
                return Err(bad(format!(
                    "index entry {i} ({}, offset {}, len {}, raw {}): unsorted, repeated, \
                     out of bounds or of impossible length",
                    e.digest, e.offset, e.len, e.raw_len
                )));
            }
            entries.push(e);
        }
        Ok(Pack {
            name: name.to_string(),
            path,
            file,
            entries,
            len,
        })
    }

    /// The pack's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pack's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// The index, sorted by digest.
    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    /// The entry of chunk `d`, if the pack holds it.
    pub fn find(&self, d: &ChunkDigest) -> Option<&PackEntry> {
        self.entries
            .binary_search_by(|e| e.digest.cmp(d))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Reads and verifies chunk `e` into `out` (its raw length).
    pub(crate) fn read_chunk_into(
        &self,
        ctx: &ChunkCtx<'_>,
        e: &PackEntry,
        out: &mut [u8],
    ) -> Result<Codec> {
        if usize::try_from(e.raw_len).ok() != Some(out.len()) {
            out.fill(0);
            return Err(ctx.corrupt(format!(
                "pack {} says {} raw bytes, the manifest {}",
                self.name,
                e.raw_len,
                out.len()
            )));
        }
        chunk::read_into(ctx, &self.file, e.offset, u64::from(e.len), out)
    }

    /// A record's bytes, unverified (`gc` and `compact` move records between packs; whoever
    /// decodes one verifies it).
    pub(crate) fn read_record(&self, e: &PackEntry) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; usize::try_from(e.len).unwrap_or(0)];
        self.file
            .read_exact_at(&mut buf, e.offset)
            .map_err(|err| Error::BadPack {
                path: self.path.clone(),
                reason: format!("reading the record of {} at {}: {err}", e.digest, e.offset),
            })?;
        Ok(buf)
    }
}

/// A pack being written. Records are appended from any number of threads: each reserves its
/// offset with one atomic add and writes there.
pub(crate) struct PackWriter {
    path: PathBuf,
    file: File,
    next: AtomicU64,
    kicked: AtomicU64,
    entries: Mutex<Vec<PackEntry>>,
}

impl PackWriter {
    /// Creates the pack file `path` (0600, must not exist) and writes its header.
    pub(crate) fn create(path: PathBuf) -> Result<PackWriter> {
        let file = files::create_new(&path)?;
        let mut header = [0u8; 16];
        header[0..8].copy_from_slice(&PACK_MAGIC);
        header[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
        file.write_all_at(&header, 0)
            .map_err(|e| Error::io(&path, "write pack header", e))?;
        Ok(PackWriter {
            path,
            file,
            next: AtomicU64::new(PACK_HEADER_LEN),
            kicked: AtomicU64::new(PACK_HEADER_LEN),
            entries: Mutex::new(Vec::new()),
        })
    }

    /// Appends one chunk record (chunk header and payload, from `chunk::encode`).
    pub(crate) fn append(&self, digest: ChunkDigest, raw_len: usize, record: &[u8]) -> Result<()> {
        let record = chunk::Record {
            head: Vec::new(),
            tail: vec![record],
            codec: chunk::Codec::None,
        };
        self.append_records(&[(digest, raw_len, record)])
    }

    /// Appends records side by side: one offset reservation, one vectored write, one lock of
    /// the index for all of them (the writer hands over a few hundred KiB at a time: one
    /// `pwrite` per chunk cost syscalls and contention on the file's lock).
    pub(crate) fn append_records(
        &self,
        recs: &[(ChunkDigest, usize, chunk::Record<'_>)],
    ) -> Result<()> {
        let mut entries = Vec::with_capacity(recs.len());
        let mut total = 0u64;
        for (digest, raw_len, r) in recs {
            let len = u32::try_from(r.len()).map_err(|_| Error::InvalidInput {
                object: digest.to_string(),
                reason: format!("a record of {} bytes does not fit a pack", r.len()),
            })?;
            entries.push(PackEntry {
                digest: *digest,
                offset: total,
                len,
                raw_len: u32::try_from(*raw_len).unwrap_or(u32::MAX),
            });
            total += u64::from(len);
        }
        if total == 0 {
            return Ok(());
        }
        let at = self.next.fetch_add(total, Ordering::Relaxed);
        let parts: Vec<&[u8]> = recs
            .iter()
            .flat_map(|(_, _, r)| std::iter::once(&r.head[..]).chain(r.tail.iter().copied()))
            .collect();
        files::write_all_vectored_at(&self.file, &parts, at)
            .map_err(|e| Error::io(&self.path, "write pack records", e))?;
        for e in &mut entries {
            e.offset += at;
        }
        self.entries
            .lock()
            .map_err(|_| Error::io(&self.path, "index", std::io::Error::other("poisoned")))?
            .extend(entries);
        self.kick_writeback(at + total);
        Ok(())
    }

    /// Starts writeback of the whole steps below `end` not started yet (non-blocking).
    fn kick_writeback(&self, end: u64) {
        let upto = end / WRITEBACK_STEP * WRITEBACK_STEP;
        let from = self.kicked.load(Ordering::Relaxed);
        if upto <= from
            || self
                .kicked
                .compare_exchange(from, upto, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // Records below `upto` may still be in flight in other threads; the kernel writes
        // what is dirty now and the final fsync catches the rest. Advisory: errors surface
        // at the fsync.
        let (Ok(off), Ok(n)) = (i64::try_from(from), i64::try_from(upto - from)) else {
            return;
        };
        // SAFETY: sync_file_range on an fd this writer owns; it reads no memory of ours.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    /// Whether no record was appended.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.lock().map_or(true, |e| e.is_empty())
    }

    /// Writes the index and trailer and fsyncs the file; its path. Two records of one digest
    /// keep the first. Nothing may be appended after.
    pub(crate) fn finish(&self) -> Result<&Path> {
        let mut entries = std::mem::take(
            &mut *self
                .entries
                .lock()
                .map_err(|_| Error::io(&self.path, "index", std::io::Error::other("poisoned")))?,
        );
        entries.sort_by(|a, b| a.digest.cmp(&b.digest).then(a.offset.cmp(&b.offset)));
        entries.dedup_by(|b, a| a.digest == b.digest);
        let index_at = self.next.load(Ordering::Relaxed);
        let mut tail = Vec::with_capacity(entries.len() * PACK_ENTRY_LEN + 64);
        for e in &entries {
            tail.extend_from_slice(&e.digest.0);
            tail.extend_from_slice(&e.offset.to_le_bytes());
            tail.extend_from_slice(&e.len.to_le_bytes());
            tail.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        let sum = blake3::hash(&tail);
        tail.extend_from_slice(&PACK_INDEX_MAGIC);
        tail.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        tail.extend_from_slice(&index_at.to_le_bytes());
        tail.extend_from_slice(&0u64.to_le_bytes());
        tail.extend_from_slice(sum.as_bytes());
        self.file
            .write_all_at(&tail, index_at)
            .map_err(|e| Error::io(&self.path, "write pack index", e))?;
        self.file
            .sync_all()
            .map_err(|e| Error::io(&self.path, "fsync pack", e))?;
        Ok(&self.path)
    }
}

/// What a rewrite did to one pack.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Rewritten {
    /// Records dropped.
    pub dropped: u64,
    /// Records replaced by another encoding.
    pub reencoded: u64,
    /// The file's bytes before and after (equal when nothing changed: then the file is kept).
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// What a rewrite does with one record.
pub(crate) enum Keep {
    /// Keep it as it is.
    Same,
    /// Keep the chunk with this record instead (same raw bytes, another encoding).
    Reencoded(Vec<u8>),
    /// Drop it.
    Drop,
}

/// Rewrites `pack` under its own name: `decide` sees every record (in parallel) and says what
/// becomes of it. The new file is written in `tmp`, fsynced and renamed over the old one; if
/// nothing changes the pack is left alone. A pack left with no record is removed.
pub(crate) fn rewrite(
    pack: &Pack,
    tmp: &Path,
    decide: impl Fn(&PackEntry, &[u8]) -> Result<Keep> + Sync,
) -> Result<Rewritten> {
    let mut out = Rewritten {
        bytes_before: pack.file_len(),
        ..Rewritten::default()
    };
    let t = tmp.join(files::unique_name("pack-"));
    let w = PackWriter::create(t.clone())?;
    let dropped = AtomicU64::new(0);
    let reencoded = AtomicU64::new(0);
    let r = pack.entries().par_iter().try_for_each(|e| {
        let record = pack.read_record(e)?;
        match decide(e, &record)? {
            Keep::Same => w.append(e.digest, e.raw_len as usize, &record),
            Keep::Reencoded(new) => {
                reencoded.fetch_add(1, Ordering::Relaxed);
                w.append(e.digest, e.raw_len as usize, &new)
            }
            Keep::Drop => {
                dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    });
    out.dropped = dropped.into_inner();
    out.reencoded = reencoded.into_inner();
    if let Err(e) = r {
        let _ = fs::remove_file(&t);
        return Err(e);
    }
    if out.dropped == 0 && out.reencoded == 0 {
        let _ = fs::remove_file(&t);
        out.bytes_after = out.bytes_before;
        return Ok(out);
    }
    let dir = pack.path().parent().unwrap_or(Path::new("."));
    if w.is_empty() {
        drop(w);
        let _ = fs::remove_file(&t);
        fs::remove_file(pack.path()).map_err(|e| Error::io(pack.path(), "remove pack", e))?;
        files::fsync_dir(dir)?;
        return Ok(out);
    }
    w.finish()?;
    out.bytes_after = fs::metadata(&t).map_or(0, |m| m.len());
    fs::rename(&t, pack.path()).map_err(|e| Error::io(pack.path(), "rename pack into place", e))?;
    files::fsync_dir(dir)?;
    Ok(out)
}

/// The names in `dir` that are pack names (anything else there is left alone).
pub(crate) fn list(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, "read directory", e))? {
        let entry = entry.map_err(|e| Error::io(dir, "read directory", e))?;
        if let Some(n) = entry.file_name().to_str().filter(|n| is_pack_name(n)) {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Opens the packs `names` of `dir`, each once.
pub(crate) fn open_all<'a>(
    dir: &Path,
    names: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<Pack>> {
    let mut seen = HashSet::new();
    names
        .into_iter()
        .filter(|n| seen.insert(n.as_str()))
        .map(|n| Pack::open(dir, n))
        .collect()
}

/// The first of `packs` holding `d`.
pub(crate) fn find<'p>(packs: &'p [Pack], d: &ChunkDigest) -> Option<(&'p Pack, &'p PackEntry)> {
    packs.iter().find_map(|p| p.find(d).map(|e| (p, e)))
}

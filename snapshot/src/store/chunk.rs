//! Chunk records: one compressed, content-addressed piece of memory or blob data, stored in a
//! pack (pack.rs) and found through its index by the blake3 of its uncompressed bytes.
//!
//! ```text
//! +--------+---------+-------+----------+---------+------------+---------------------+
//! | "CRYC" | ver u8  | codec | reserved | raw_len | stored_len | payload             |
//! | 4 B    | 1       | u8    | u16 = 0  | u32 LE  | u32 LE     | stored_len bytes    |
//! +--------+---------+-------+----------+---------+------------+---------------------+
//! ```
//!
//! This module owns encoding (codec choice, compression) and decoding with verification: every
//! decode checks the header, decompresses to exactly `raw_len` bytes and compares the blake3 of
//! the result with the digest the chunk is named by. It knows nothing of manifests or snapshots
//! beyond the snapshot ID it puts into its errors.

use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::store::digest::ChunkDigest;

/// Magic at the start of every chunk record.
pub const CHUNK_MAGIC: [u8; 4] = *b"CRYC";
/// Chunk record format version of chunks in codecs 0–2 (none, zstd, lz4).
pub const CHUNK_VERSION: u8 = 1;
/// Chunk record format version of [`Codec::Mixed`] chunks (version 1 readers refuse them).
pub const CHUNK_VERSION_MIXED: u8 = 2;
/// The page size [`Codec::Mixed`] classifies by.
const MIXED_PAGE: usize = 4096;
/// Size of the chunk record header.
pub const CHUNK_HEADER_LEN: usize = 16;
/// Largest raw chunk accepted (a limit checked before trusting a header's lengths).
pub const MAX_CHUNK_RAW: usize = 16 << 20;

/// How a chunk's payload is encoded. Recorded per chunk, in its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Stored as is (incompressible data).
    None,
    /// zstd frame.
    Zstd,
    /// lz4 block (lz4_flex, no size prefix).
    Lz4,
    /// Random-looking pages stored as is, the other pages as one zstd frame (see
    /// [`encode_mixed`]): memory interleaves both, and compressing random pages costs time
    /// for nothing.
    Mixed,
}

impl Codec {
    fn to_byte(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
            Codec::Lz4 => 2,
            Codec::Mixed => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Codec::None),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Lz4),
            3 => Some(Codec::Mixed),
            _ => None,
        }
    }
}

/// Which codec the writer uses for compressible chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecPolicy {
    /// zstd at the given level (incompressible chunks are stored as is).
    Zstd(i32),
    /// lz4 (incompressible chunks are stored as is).
    Lz4,
    /// Never compress.
    None,
}

impl Default for CodecPolicy {
    /// zstd level 3, chosen by measurement (docs/BENCHMARKS.md, "Snapshot store"): per chunk,
    /// level 1 and lz4 write faster but their output is 1.007x and 1.08x that of
    /// `zstd -1 -T0` on the whole image; level 3 stays under it.
    fn default() -> Self {
        CodecPolicy::Zstd(3)
    }
}

impl std::str::FromStr for CodecPolicy {
    type Err = String;

    /// `zstdN` (N from 1 to 22), `lz4` or `none`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "lz4" => Ok(CodecPolicy::Lz4),
            "none" => Ok(CodecPolicy::None),
            _ => s
                .strip_prefix("zstd")
                .and_then(|l| l.parse::<i32>().ok())
                .filter(|l| (1..=22).contains(l))
                .map(CodecPolicy::Zstd)
                .ok_or_else(|| format!("expected zstd1 … zstd22, lz4 or none, found {s:?}")),
        }
    }
}

impl std::fmt::Display for CodecPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecPolicy::Zstd(l) => write!(f, "zstd{l}"),
            CodecPolicy::Lz4 => f.write_str("lz4"),
            CodecPolicy::None => f.write_str("none"),
        }
    }
}

thread_local! {
    static ZSTD_C: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static ZSTD_D: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    /// The record being decoded ([`read_into`]): one buffer per thread, not one per read.
    static PAYLOAD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// A mixed chunk's pages to compress, gathered ([`encode_mixed`]).
    static PLAIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Estimated entropy of `raw` in bits per byte from a spread sample, to skip compressing
/// random data: compressing it costs as much as compressible data and saves nothing.
fn looks_incompressible(raw: &[u8]) -> bool {
    const WINDOW: usize = 256;
    const WINDOWS: usize = 16;
    if raw.len() < WINDOW * WINDOWS * 2 {
        return false;
    }
    let mut hist = [0u32; 256];
    let step = raw.len() / WINDOWS;
    for w in 0..WINDOWS {
        for &b in &raw[w * step..w * step + WINDOW] {
            hist[usize::from(b)] += 1;
        }
    }
    // 4096 samples over 256 symbols: uniform data has ~16 per bucket, and text or structured
    // data leaves most buckets empty. Count buckets that are hit: random data hits ~255.
    let used = hist.iter().filter(|&&c| c > 0).count();
    let max = hist.iter().copied().max().unwrap_or(0);
    used >= 250 && max <= 48
}

/// Whether [`encode`] with `policy` will try to compress `raw` (and so whether the writer
/// cuts it into half-size chunks): not with [`CodecPolicy::None`], not when it looks random.
pub(crate) fn will_compress(raw: &[u8], policy: CodecPolicy) -> bool {
    policy != CodecPolicy::None && !looks_incompressible(raw)
}

/// Whether one page looks random: four 256-byte windows spread over it each hit at least 120
/// distinct byte values (uniform random data hits ~161; text and structured data far fewer).
/// Four, not two: real heaps put random payloads and structures side by side in one page,
/// and a page with a structured middle compresses (docs/BENCHMARKS.md, "A real process").
fn page_looks_random(page: &[u8]) -> bool {
    const WINDOW: usize = 256;
    const WINDOWS: usize = 4;
    if page.len() < WINDOW * WINDOWS {
        return false;
    }
    let step = (page.len() - WINDOW) / (WINDOWS - 1);
    (0..WINDOWS).all(|w| {
        let mut seen = [0u64; 4];
        for &b in &page[w * step..w * step + WINDOW] {
            seen[usize::from(b >> 6)] |= 1 << (b & 63);
        }
        seen.iter().map(|s| s.count_ones()).sum::<u32>() >= 120
    })
}

fn zstd_compress(level: i32, raw: &[u8], out: &mut [u8]) -> Result<usize> {
    ZSTD_C
        .with(|c| -> std::io::Result<usize> {
            let mut slot = c.borrow_mut();
            let reuse = matches!(&*slot, Some((l, _)) if *l == level);
            if !reuse {
                *slot = Some((level, zstd::bulk::Compressor::new(level)?));
            }
            match slot.as_mut() {
                Some((_, comp)) => comp.compress_to_buffer(raw, out),
                None => Err(std::io::Error::other("zstd context missing")),
            }
        })
        .map_err(|e| Error::InvalidInput {
            object: "chunk".into(),
            reason: format!("zstd compression failed: {e}"),
        })
}

/// The [`Codec::Mixed`] payload of `raw`, when it has both random and other pages:
///
/// ```text
/// | bitmap: ceil(pages/8) B, bit i set = page i stored raw | zlen u32 LE |
/// | zstd frame of the other pages in order (zlen B) | the raw pages in order |
/// ```
///
/// Pages are 4 KiB; the last one may be shorter. The bitmap and the frame are appended to
/// `head`; the raw pages are returned as runs of `raw`, not copied.
fn encode_mixed<'a>(raw: &'a [u8], level: i32, head: &mut Vec<u8>) -> Result<Mixed<'a>> {
    let n_pages = raw.len().div_ceil(MIXED_PAGE);
    let mut bitmap = vec![0u8; n_pages.div_ceil(8)];
    let mut n_random = 0;
    for (i, p) in raw.chunks(MIXED_PAGE).enumerate() {
        if page_looks_random(p) {
            bitmap[i / 8] |= 1 << (i % 8);
            n_random += 1;
        }
    }
    if n_random == 0 {
        return Ok(Mixed::NoPageRandom);
    }
    if n_random == n_pages {
        return Ok(Mixed::EveryPageRandom);
    }
    let is_raw = |i: usize| bit(&bitmap, i);
    // Consecutive pages of one kind are one run: one copy into the frame's input, one slice.
    let mut runs: Vec<(bool, &'a [u8])> = Vec::new();
    let mut i = 0;
    while i < n_pages {
        let kind = is_raw(i);
        let mut j = i + 1;
        while j < n_pages && is_raw(j) == kind {
            j += 1;
        }
        runs.push((kind, &raw[i * MIXED_PAGE..(j * MIXED_PAGE).min(raw.len())]));
        i = j;
    }
    PLAIN.with(|plain| -> Result<()> {
        let mut plain = plain.borrow_mut();
        plain.clear();
        for (_, run) in runs.iter().filter(|(r, _)| !r) {
            plain.extend_from_slice(run);
        }
        head.extend_from_slice(&bitmap);
        head.extend_from_slice(&[0u8; 4]);
        let zstart = head.len();
        let bound = zstd::zstd_safe::compress_bound(plain.len());
        append_compressed(head, bound, |out| zstd_compress(level, &plain, out))?;
        let zlen32 = u32::try_from(head.len() - zstart).unwrap_or(u32::MAX);
        head[zstart - 4..zstart].copy_from_slice(&zlen32.to_le_bytes());
        Ok(())
    })?;
    Ok(Mixed::Payload(
        runs.into_iter()
            .filter(|(r, _)| *r)
            .map(|(_, run)| run)
            .collect(),
    ))
}

/// What [`encode_mixed`] made of a chunk.
enum Mixed<'a> {
    /// Both kinds of page: the [`Codec::Mixed`] payload, its raw pages still to follow.
    Payload(Vec<&'a [u8]>),
    /// Every page looks random: store it as is.
    EveryPageRandom,
    /// No page looks random: compress it whole.
    NoPageRandom,
}

/// An encoded chunk record, not yet in one piece: `head` (the chunk header, then what was
/// encoded), followed by `tail`, parts of the raw chunk stored as they are (all of a raw
/// chunk, a mixed chunk's random pages). Writing it from these parts saves copying the half
/// of memory that is stored raw.
pub(crate) struct Record<'a> {
    /// The chunk header and the encoded part of the payload.
    pub head: Vec<u8>,
    /// The rest of the payload, borrowed from the raw chunk.
    pub tail: Vec<&'a [u8]>,
    /// The payload's codec.
    pub codec: Codec,
}

impl Record<'_> {
    /// Length of the whole record.
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.tail.iter().map(|t| t.len()).sum::<usize>()
    }

    /// The record in one piece.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.head);
        for t in &self.tail {
            v.extend_from_slice(t);
        }
        v
    }
}

/// Encodes `raw` as a complete chunk record (header + payload) with `policy`.
pub fn encode(raw: &[u8], policy: CodecPolicy) -> Result<(Vec<u8>, Codec)> {
    let r = encode_record(raw, policy, will_compress(raw, policy))?;
    Ok((r.to_vec(), r.codec))
}

/// [`encode`] in parts, for a caller that already knows what [`will_compress`] says of `raw`
/// (or of the run it was cut from): the writer checks each run once, not each chunk again.
pub(crate) fn encode_record(raw: &[u8], policy: CodecPolicy, compress: bool) -> Result<Record<'_>> {
    let raw_len = u32::try_from(raw.len()).map_err(|_| Error::InvalidInput {
        object: "chunk".into(),
        reason: format!("chunk of {} bytes is too large", raw.len()),
    })?;
    let mut r = Record {
        head: vec![0u8; CHUNK_HEADER_LEN],
        tail: Vec::new(),
        codec: Codec::None,
    };
    r.codec = match policy {
        _ if !compress => Codec::None,
        CodecPolicy::Zstd(level) => match encode_mixed(raw, level, &mut r.head)? {
            Mixed::Payload(pages) => {
                r.tail = pages;
                Codec::Mixed
            }
            Mixed::EveryPageRandom => Codec::None,
            Mixed::NoPageRandom => {
                let bound = zstd::zstd_safe::compress_bound(raw.len());
                append_compressed(&mut r.head, bound, |out| zstd_compress(level, raw, out))?;
                Codec::Zstd
            }
        },
        CodecPolicy::Lz4 => {
            let bound = lz4_flex::block::get_maximum_output_size(raw.len());
            append_compressed(&mut r.head, bound, |out| {
                lz4_flex::block::compress_into(raw, out).map_err(|e| Error::InvalidInput {
                    object: "chunk".into(),
                    reason: format!("lz4 compression failed: {e}"),
                })
            })?;
            Codec::Lz4
        }
        CodecPolicy::None => Codec::None,
    };
    if r.codec != Codec::None && r.len() - CHUNK_HEADER_LEN >= raw.len() {
        r.codec = Codec::None;
    }
    if r.codec == Codec::None {
        r.head.truncate(CHUNK_HEADER_LEN);
        r.tail = vec![raw];
    }
    let stored_len = u32::try_from(r.len() - CHUNK_HEADER_LEN).unwrap_or(u32::MAX);
    let head = &mut r.head;
    head[0..4].copy_from_slice(&CHUNK_MAGIC);
    head[4] = if r.codec == Codec::Mixed {
        CHUNK_VERSION_MIXED
    } else {
        CHUNK_VERSION
    };
    head[5] = r.codec.to_byte();
    head[8..12].copy_from_slice(&raw_len.to_le_bytes());
    head[12..16].copy_from_slice(&stored_len.to_le_bytes());
    Ok(r)
}

/// Appends to `out` what `compress` writes into `bound` bytes of room (it returns how many).
fn append_compressed(
    out: &mut Vec<u8>,
    bound: usize,
    compress: impl FnOnce(&mut [u8]) -> Result<usize>,
) -> Result<()> {
    let at = out.len();
    out.resize(at + bound, 0);
    let n = compress(&mut out[at..])?;
    out.truncate(at + n);
    Ok(())
}

/// Whether bit `i` of `bitmap` is set (a mixed chunk's page map: the page is stored raw).
fn bit(bitmap: &[u8], i: usize) -> bool {
    bitmap[i / 8] & (1 << (i % 8)) != 0
}

/// A parsed chunk header.
#[derive(Clone, Copy, Debug)]
pub struct ChunkHeader {
    /// The payload's codec.
    pub codec: Codec,
    /// Uncompressed length.
    pub raw_len: usize,
    /// Payload length.
    pub stored_len: usize,
}

/// Context for errors: which snapshot and chunk a decode is for.
pub struct ChunkCtx<'a> {
    /// `sha256:HEX` of the snapshot being read.
    pub snapshot: &'a str,
    /// The chunk's digest (and name).
    pub digest: &'a ChunkDigest,
}

impl ChunkCtx<'_> {
    pub(crate) fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::CorruptChunk {
            snapshot: self.snapshot.to_string(),
            chunk: self.digest.to_string(),
            reason: reason.into(),
        }
    }
}

/// Parses and checks a chunk header against the length the manifest expects.
pub fn parse_header(
    ctx: &ChunkCtx<'_>,
    header: &[u8],
    expect_raw: usize,
    file_len: u64,
) -> Result<ChunkHeader> {
    if header.len() < CHUNK_HEADER_LEN || header[0..4] != CHUNK_MAGIC {
        return Err(ctx.corrupt("bad magic (not a chunk record)"));
    }
    if header[4] != CHUNK_VERSION && header[4] != CHUNK_VERSION_MIXED {
        return Err(ctx.corrupt(format!(
            "chunk format version {} is not supported (this build reads {CHUNK_VERSION} and \
             {CHUNK_VERSION_MIXED})",
            header[4]
        )));
    }
    let codec = Codec::from_byte(header[5])
        .ok_or_else(|| ctx.corrupt(format!("unknown codec {}", header[5])))?;
    if (codec == Codec::Mixed) != (header[4] == CHUNK_VERSION_MIXED) {
        return Err(ctx.corrupt(format!(
            "codec {} does not belong to chunk format version {}",
            header[5], header[4]
        )));
    }
    let raw_len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let stored_len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let raw_len = usize::try_from(raw_len).map_err(|_| ctx.corrupt("raw length overflows"))?;
    let stored_len =
        usize::try_from(stored_len).map_err(|_| ctx.corrupt("stored length overflows"))?;
    if raw_len != expect_raw {
        return Err(ctx.corrupt(format!(
            "header says {raw_len} raw bytes, the manifest {expect_raw}"
        )));
    }
    if raw_len > MAX_CHUNK_RAW || stored_len > MAX_CHUNK_RAW * 2 {
        return Err(ctx.corrupt(format!("lengths {raw_len}/{stored_len} exceed the limit")));
    }
    let want = u64::try_from(CHUNK_HEADER_LEN + stored_len).unwrap_or(u64::MAX);
    if file_len != want {
        return Err(ctx.corrupt(format!(
            "record is {file_len} bytes, header says {want} (truncated or extended)"
        )));
    }
    Ok(ChunkHeader {
        codec,
        raw_len,
        stored_len,
    })
}

/// Decodes a payload into `out` (exactly `raw_len` long) and verifies the digest. On any error
/// `out` is zeroed, so a caller that ignores the error still never sees wrong memory.
pub fn decode_into(
    ctx: &ChunkCtx<'_>,
    hdr: &ChunkHeader,
    payload: &[u8],
    out: &mut [u8],
) -> Result<()> {
    let r = decode_unchecked(ctx, hdr, payload, out).and_then(|()| {
        if ChunkDigest::of(out) == *ctx.digest {
            Ok(())
        } else {
            Err(ctx.corrupt("digest mismatch: the data does not hash to the chunk's name"))
        }
    });
    if r.is_err() {
        out.fill(0);
    }
    r
}

fn decode_unchecked(
    ctx: &ChunkCtx<'_>,
    hdr: &ChunkHeader,
    payload: &[u8],
    out: &mut [u8],
) -> Result<()> {
    if out.len() != hdr.raw_len || payload.len() != hdr.stored_len {
        return Err(ctx.corrupt("length mismatch"));
    }
    match hdr.codec {
        Codec::None => out.copy_from_slice(payload),
        Codec::Zstd => zstd_decompress(ctx, payload, out)?,
        Codec::Mixed => decode_mixed(ctx, payload, out)?,
        Codec::Lz4 => {
            let n = lz4_flex::block::decompress_into(payload, out)
                .map_err(|e| ctx.corrupt(format!("lz4: {e}")))?;
            if n != out.len() {
                return Err(ctx.corrupt(format!("lz4 produced {n} bytes, expected {}", out.len())));
            }
        }
    }
    Ok(())
}

fn zstd_decompress(ctx: &ChunkCtx<'_>, payload: &[u8], out: &mut [u8]) -> Result<()> {
    let n = ZSTD_D
        .with(|d| -> std::io::Result<usize> {
            let mut slot = d.borrow_mut();
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new()?);
            }
            match slot.as_mut() {
                Some(dec) => dec.decompress_to_buffer(payload, out),
                None => Err(std::io::Error::other("zstd context missing")),
            }
        })
        .map_err(|e| ctx.corrupt(format!("zstd: {e}")))?;
    if n != out.len() {
        return Err(ctx.corrupt(format!("zstd produced {n} bytes, expected {}", out.len())));
    }
    Ok(())
}

/// Inverse of [`encode_mixed`]: every length is checked against `out` before use.
fn decode_mixed(ctx: &ChunkCtx<'_>, payload: &[u8], out: &mut [u8]) -> Result<()> {
    let n_pages = out.len().div_ceil(MIXED_PAGE);
    let bm_len = n_pages.div_ceil(8);
    if payload.len() < bm_len + 4 {
        return Err(ctx.corrupt("mixed payload shorter than its page map"));
    }
    let (bitmap, rest) = payload.split_at(bm_len);
    let zlen = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let zlen = usize::try_from(zlen).map_err(|_| ctx.corrupt("zstd length overflows"))?;
    let rest = &rest[4..];
    if zlen > rest.len() {
        return Err(ctx.corrupt("mixed payload shorter than its zstd frame"));
    }
    let (frame, raw_pages) = rest.split_at(zlen);
    let is_raw = |i: usize| bit(bitmap, i);
    let out_len = out.len();
    let page_len = |i: usize| MIXED_PAGE.min(out_len - i * MIXED_PAGE);
    let plain_len: usize = (0..n_pages).filter(|&i| !is_raw(i)).map(page_len).sum();
    if raw_pages.len() != out_len - plain_len {
        return Err(ctx.corrupt(format!(
            "mixed payload has {} bytes of raw pages, its page map says {}",
            raw_pages.len(),
            out_len - plain_len
        )));
    }
    // The other pages are decompressed to the front of `out`, then every page is put in its
    // place from the last one down: a compressed page only ever moves up, over pages already
    // placed or over itself, so nothing is overwritten before it is moved.
    zstd_decompress(ctx, frame, &mut out[..plain_len])?;
    let mut plain_end = plain_len;
    let mut raw_end = raw_pages.len();
    for i in (0..n_pages).rev() {
        let (at, len) = (i * MIXED_PAGE, page_len(i));
        if is_raw(i) {
            out[at..at + len].copy_from_slice(&raw_pages[raw_end - len..raw_end]);
            raw_end -= len;
        } else {
            out.copy_within(plain_end - len..plain_end, at);
            plain_end -= len;
        }
    }
    Ok(())
}

/// Reads the chunk record of `record_len` bytes at `offset` of `file` (a pack) into `out` (its
/// raw length), verified.
pub fn read_into(
    ctx: &ChunkCtx<'_>,
    file: &fs::File,
    offset: u64,
    record_len: u64,
    out: &mut [u8],
) -> Result<Codec> {
    let mut header = [0u8; CHUNK_HEADER_LEN];
    let read_err = |e: std::io::Error| ctx.corrupt(format!("read failed at offset {offset}: {e}"));
    if let Err(e) = file.read_exact_at(&mut header, offset) {
        out.fill(0);
        return Err(read_err(e));
    }
    let hdr = match parse_header(ctx, &header, out.len(), record_len) {
        Ok(h) => h,
        Err(e) => {
            out.fill(0);
            return Err(e);
        }
    };
    let at = offset + CHUNK_HEADER_LEN as u64;
    if hdr.codec == Codec::None {
        // Read straight into the destination: no intermediate copy for raw chunks.
        let r = file
            .read_exact_at(out, at)
            .map_err(read_err)
            .and_then(|()| {
                if ChunkDigest::of(out) == *ctx.digest {
                    Ok(())
                } else {
                    Err(ctx.corrupt("digest mismatch: the data does not hash to the chunk's name"))
                }
            });
        if r.is_err() {
            out.fill(0);
        }
        return r.map(|()| Codec::None);
    }
    PAYLOAD.with(|scratch| {
        let mut payload = scratch.borrow_mut();
        payload.resize(hdr.stored_len, 0);
        if let Err(e) = file.read_exact_at(&mut payload, at) {
            out.fill(0);
            return Err(read_err(e));
        }
        decode_into(ctx, &hdr, &payload, out)
    })?;
    Ok(hdr.codec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_round_trip(raw: &[u8], policy: CodecPolicy) -> Codec {
        let (file, codec) = encode(raw, policy).unwrap();
        let digest = ChunkDigest::of(raw);
        let ctx = ChunkCtx {
            snapshot: "sha256:test",
            digest: &digest,
        };
        let hdr = parse_header(&ctx, &file, raw.len(), file.len() as u64).unwrap();
        let mut out = vec![0u8; raw.len()];
        decode_into(&ctx, &hdr, &file[CHUNK_HEADER_LEN..], &mut out).unwrap();
        assert_eq!(out, raw);
        codec
    }

    #[test]
    fn codecs_round_trip() {
        let text: Vec<u8> = b"hello world "
            .iter()
            .copied()
            .cycle()
            .take(65536)
            .collect();
        assert_eq!(ctx_round_trip(&text, CodecPolicy::Zstd(1)), Codec::Zstd);
        assert_eq!(ctx_round_trip(&text, CodecPolicy::Lz4), Codec::Lz4);
        assert_eq!(ctx_round_trip(&text, CodecPolicy::None), Codec::None);
        let mut x = 0x1234_5678_9abc_def0u64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[3]
            })
            .collect();
        assert!(looks_incompressible(&random));
        assert!(!looks_incompressible(&text));
        assert_eq!(ctx_round_trip(&random, CodecPolicy::Zstd(1)), Codec::None);
    }

    fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[3]
            })
            .collect()
    }

    /// Random and text pages interleaved, the last page short.
    fn mixed_chunk() -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..15 {
            if i % 3 == 0 {
                v.extend(random_bytes(4096, i + 1));
            } else {
                v.extend(b"page of text ".iter().copied().cycle().take(4096));
            }
        }
        v.extend(random_bytes(3000, 99));
        v
    }

    #[test]
    fn mixed_chunks_store_random_pages_raw() {
        let raw = mixed_chunk();
        assert_eq!(ctx_round_trip(&raw, CodecPolicy::Zstd(3)), Codec::Mixed);
        let (file, _) = encode(&raw, CodecPolicy::Zstd(3)).unwrap();
        assert_eq!(file[4], CHUNK_VERSION_MIXED);
        // 6 random pages (5 full, a short last one of 3000 bytes) stay raw; the text shrinks
        // to little.
        assert!(file.len() > 5 * 4096 + 3000, "{}", file.len());
        assert!(file.len() < 5 * 4096 + 3000 + 2048, "{}", file.len());
        assert!(page_looks_random(&random_bytes(4096, 5)));
        assert!(!page_looks_random(&[7u8; 4096]));
        // A mixed codec under version 1 is refused, as is a truncated mixed payload.
        let digest = ChunkDigest::of(&raw);
        let ctx = ChunkCtx {
            snapshot: "sha256:m",
            digest: &digest,
        };
        let mut v1 = file.clone();
        v1[4] = CHUNK_VERSION;
        let err = parse_header(&ctx, &v1, raw.len(), v1.len() as u64).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let hdr = parse_header(&ctx, &file, raw.len(), file.len() as u64).unwrap();
        let mut out = vec![0u8; raw.len()];
        let short = ChunkHeader {
            stored_len: 3,
            ..hdr
        };
        assert!(decode_into(
            &ctx,
            &short,
            &file[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + 3],
            &mut out
        )
        .is_err());
    }

    #[test]
    fn random_pages_too_short_to_sample_are_stored_raw_and_bad_page_maps_refused() {
        // Under 8 KiB the chunk-wide sample is not taken; the page check still finds every
        // page random and nothing is compressed.
        let random = random_bytes(4096 + 3000, 8);
        assert!(!looks_incompressible(&random));
        assert_eq!(ctx_round_trip(&random, CodecPolicy::Zstd(3)), Codec::None);
        // A mixed record whose raw pages are a page short, or a page long, is refused.
        let raw = mixed_chunk();
        let (file, _) = encode(&raw, CodecPolicy::Zstd(3)).unwrap();
        let digest = ChunkDigest::of(&raw);
        let ctx = ChunkCtx {
            snapshot: "sha256:p",
            digest: &digest,
        };
        let payload = &file[CHUNK_HEADER_LEN..];
        let mut long = payload.to_vec();
        long.extend_from_slice(&[0u8; 4096]);
        for bad in [&payload[..payload.len() - 4096], &long[..]] {
            let hdr = ChunkHeader {
                codec: Codec::Mixed,
                raw_len: raw.len(),
                stored_len: bad.len(),
            };
            let mut out = vec![1u8; raw.len()];
            let err = decode_into(&ctx, &hdr, bad, &mut out).unwrap_err();
            assert!(err.to_string().contains("raw pages"), "{err}");
            assert!(out.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn flipped_byte_is_an_error_naming_the_chunk() {
        let text: Vec<u8> = b"abcabcabd ".iter().copied().cycle().take(8192).collect();
        let mixed = mixed_chunk();
        for (text, policy) in [
            (&text, CodecPolicy::Zstd(3)),
            (&text, CodecPolicy::Lz4),
            (&text, CodecPolicy::None),
            (&mixed, CodecPolicy::Zstd(3)),
        ] {
            let (file, _) = encode(text, policy).unwrap();
            let digest = ChunkDigest::of(text);
            let ctx = ChunkCtx {
                snapshot: "sha256:s",
                digest: &digest,
            };
            for pos in [CHUNK_HEADER_LEN, file.len() / 2, file.len() - 1] {
                let mut bad = file.clone();
                bad[pos] ^= 0x40;
                let hdr = parse_header(&ctx, &bad, text.len(), bad.len() as u64).unwrap();
                let mut out = vec![1u8; text.len()];
                let err = decode_into(&ctx, &hdr, &bad[CHUNK_HEADER_LEN..], &mut out).unwrap_err();
                assert!(err.to_string().contains(&digest.hex()), "{err}");
                assert!(out.iter().all(|&b| b == 0));
            }
        }
    }
}

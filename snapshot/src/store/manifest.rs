//! The manifest: what a snapshot is made of. Its sha256 is the snapshot's ID.
//!
//! ```text
//! manifests/HEX               HEX = sha256 of the whole file = the snapshot ID
//! offset  size
//!      0     8  magic "CRYOSNAP"
//!      8     4  version u32 LE (MANIFEST_VERSION = 2)
//!     12     4  meta_len u32 LE
//!     16     8  n_regions u64 LE
//!     24     8  n_extents u64 LE
//!     32  meta_len  metadata, JSON (UTF-8): created, page_size, chunk_size, objects[], packs[]
//!      .   0..7  zero padding to a multiple of 8
//!      R  24 * n_regions   region:  object u32, reserved u32 = 0, start u64, len u64
//!      E  48 * n_extents   extent:  object u32, len u32, vaddr u64, chunk [32] (blake3 raw)
//!    end                  nothing may follow
//! ```
//!
//! Regions say which address ranges of an object exist (for a blob: `[0, size)`); extents are
//! the non-zero data inside them, each one chunk. A page in a region and in no extent is a
//! hole (zeros). Regions and extents are sorted by (object, address) and never overlap.
//!
//! This module owns encoding and parsing with validation (every field checked, a size limit
//! before anything is parsed); it does no I/O.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::chunk::MAX_CHUNK_RAW;
use crate::store::digest::ChunkDigest;

/// Magic at the start of every manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"CRYOSNAP";
/// The manifest format version this build writes and reads.
/// (2: chunks live in packs the metadata names; 1 named one file per chunk.)
pub const MANIFEST_VERSION: u32 = 2;
/// Fixed header length.
pub const MANIFEST_HEADER_LEN: usize = 32;
/// Largest manifest accepted (checked before reading the file).
pub const MAX_MANIFEST_LEN: u64 = 1 << 30;
/// Largest metadata section accepted.
pub const MAX_META_LEN: usize = 16 << 20;
/// Page size of memory objects.
pub const PAGE_SIZE: u64 = 4096;
const REGION_LEN: usize = 24;
const EXTENT_LEN: usize = 48;

/// What an object holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// Memory of a process or device, addressed by virtual address, page granular.
    Memory,
    /// A named byte string (a CRIU image file, metadata), addressed by offset.
    Blob,
}

impl ObjectKind {
    /// "memory" or "blob".
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Memory => "memory",
            ObjectKind::Blob => "blob",
        }
    }
}

/// One object's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Unique name within the snapshot ("pid-42", "core-42.img", "gpu:buf0").
    pub name: String,
    /// Memory or blob.
    pub kind: ObjectKind,
    /// Bytes covered by its regions (a blob's length).
    pub size: u64,
}

/// The JSON metadata section. Unknown fields are ignored (see FORMAT.md's compatibility rule).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Commit time, seconds since the Unix epoch.
    pub created: u64,
    /// Page size of memory objects (4096).
    pub page_size: u64,
    /// Chunk size the writer used (informational; extents carry their own lengths).
    pub chunk_size: u64,
    /// The objects, indexed by the `object` field of regions and extents.
    pub objects: Vec<ObjectMeta>,
    /// The packs (store/pack.rs) holding the extents' chunks, each name once, sorted.
    pub packs: Vec<String>,
}

/// An address range of an object that exists in the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Index into [`Meta::objects`].
    pub object: u32,
    /// First address (offset for blobs).
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Non-zero data: one chunk placed at an address of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Index into [`Meta::objects`].
    pub object: u32,
    /// Length in bytes (the chunk's raw length).
    pub len: u32,
    /// First address.
    pub vaddr: u64,
    /// The chunk holding the bytes.
    pub chunk: ChunkDigest,
}

impl Extent {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.vaddr + u64::from(self.len)
    }
}

/// A parsed manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Metadata.
    pub meta: Meta,
    /// Sorted by (object, start).
    pub regions: Vec<Region>,
    /// Sorted by (object, vaddr).
    pub extents: Vec<Extent>,
}

/// The little-endian u32 at `at` of `b` (in bounds: callers check lengths first).
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// The little-endian u64 at `at` of `b` (in bounds: callers check lengths first).
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

impl Manifest {
    /// Serializes the manifest; the caller hashes the result for the ID.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let meta = serde_json::to_vec(&self.meta).map_err(|e| Error::InvalidInput {
            object: "manifest".into(),
            reason: format!("metadata: {e}"),
        })?;
        let meta_len = u32::try_from(meta.len())
            .ok()
            .filter(|&l| usize::try_from(l).is_ok_and(|l| l <= MAX_META_LEN))
            .ok_or_else(|| Error::InvalidInput {
                object: "manifest".into(),
                reason: format!("metadata of {} bytes is too large", meta.len()),
            })?;
        let body = pad8(MANIFEST_HEADER_LEN + meta.len());
        let mut out = Vec::with_capacity(
            body + self.regions.len() * REGION_LEN + self.extents.len() * EXTENT_LEN,
        );
        out.extend_from_slice(&MANIFEST_MAGIC);
        out.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        out.extend_from_slice(&meta_len.to_le_bytes());
        out.extend_from_slice(&(self.regions.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.extents.len() as u64).to_le_bytes());
        out.extend_from_slice(&meta);
        out.resize(body, 0);
        for r in &self.regions {
            out.extend_from_slice(&r.object.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&r.start.to_le_bytes());
            out.extend_from_slice(&r.len.to_le_bytes());
        }
        for e in &self.extents {
            out.extend_from_slice(&e.object.to_le_bytes());
            out.extend_from_slice(&e.len.to_le_bytes());
            out.extend_from_slice(&e.vaddr.to_le_bytes());
            out.extend_from_slice(&e.chunk.0);
        }
        Ok(out)
    }

    /// Parses and validates untrusted manifest bytes. `snapshot` names it in errors.
    pub fn parse(snapshot: &str, b: &[u8]) -> Result<Manifest> {
        let bad = |reason: String| Error::CorruptManifest {
            snapshot: snapshot.to_string(),
            reason,
        };
        if u64::try_from(b.len()).map_or(true, |l| l > MAX_MANIFEST_LEN) {
            return Err(Error::TooLarge {
                what: format!("snapshot {snapshot}: manifest"),
                size: u64::try_from(b.len()).unwrap_or(u64::MAX),
                limit: MAX_MANIFEST_LEN,
            });
        }
        if b.len() < MANIFEST_HEADER_LEN {
            return Err(bad(format!("{} bytes, shorter than the header", b.len())));
        }
        if b[0..8] != MANIFEST_MAGIC {
            return Err(bad("bad magic (not a cryo manifest)".into()));
        }
        let version = u32_at(b, 8);
        if version != MANIFEST_VERSION {
            return Err(Error::UnsupportedVersion {
                snapshot: snapshot.to_string(),
                what: "manifest",
                found: version,
                supported: MANIFEST_VERSION,
            });
        }
        let meta_len = usize::try_from(u32_at(b, 12)).unwrap_or(usize::MAX);
        if meta_len > MAX_META_LEN {
            return Err(Error::TooLarge {
                what: format!("snapshot {snapshot}: manifest metadata"),
                size: u64::from(u32_at(b, 12)),
                limit: MAX_META_LEN as u64,
            });
        }
        let n_regions = usize::try_from(u64_at(b, 16)).unwrap_or(usize::MAX);
        let n_extents = usize::try_from(u64_at(b, 24)).unwrap_or(usize::MAX);
        let body = pad8(MANIFEST_HEADER_LEN + meta_len);
        let expect = n_regions
            .checked_mul(REGION_LEN)
            .and_then(|r| {
                n_extents
                    .checked_mul(EXTENT_LEN)
                    .and_then(|e| r.checked_add(e))
            })
            .and_then(|t| t.checked_add(body));
        if expect != Some(b.len()) {
            return Err(bad(format!(
                "{} bytes, but the header ({meta_len} bytes of metadata, {n_regions} regions, \
                 {n_extents} extents) needs {}",
                b.len(),
                expect.map_or("more than fits".to_string(), |e| e.to_string())
            )));
        }
        if b[MANIFEST_HEADER_LEN + meta_len..body]
            .iter()
            .any(|&x| x != 0)
        {
            return Err(bad("non-zero padding after the metadata".into()));
        }
        let meta: Meta =
            serde_json::from_slice(&b[MANIFEST_HEADER_LEN..MANIFEST_HEADER_LEN + meta_len])
                .map_err(|e| bad(format!("metadata: {e}")))?;
        if meta.page_size != PAGE_SIZE {
            return Err(bad(format!(
                "metadata: page_size: expected {PAGE_SIZE}, found {}",
                meta.page_size
            )));
        }
        for (i, p) in meta.packs.iter().enumerate() {
            if !crate::store::pack::is_pack_name(p) || (i > 0 && meta.packs[i - 1] >= *p) {
                return Err(bad(format!(
                    "metadata: packs: {p:?} is not a pack name, or out of order, or repeated"
                )));
            }
        }
        let n_objects = meta.objects.len();
        let mut names = std::collections::HashSet::new();
        for o in &meta.objects {
            if !names.insert(o.name.as_str()) {
                return Err(bad(format!(
                    "metadata: objects: name {:?} appears twice",
                    o.name
                )));
            }
        }
        let mut regions = Vec::with_capacity(n_regions);
        for i in 0..n_regions {
            let at = body + i * REGION_LEN;
            let r = Region {
                object: u32_at(b, at),
                start: u64_at(b, at + 8),
                len: u64_at(b, at + 16),
            };
            let obj = usize::try_from(r.object).unwrap_or(usize::MAX);
            let ok_obj = obj < n_objects;
            let end = r.start.checked_add(r.len);
            let ordered = regions.last().is_none_or(|p: &Region| {
                (p.object, p.start + p.len) <= (r.object, r.start) && p.object <= r.object
            });
            if !ok_obj || end.is_none() || r.len == 0 || u32_at(b, at + 4) != 0 || !ordered {
                return Err(bad(format!(
                    "region {i} (object {}, start {:#x}, len {:#x}): out of range, empty, \
                     unsorted or overlapping",
                    r.object, r.start, r.len
                )));
            }
            if meta.objects[obj].kind == ObjectKind::Memory
                && (!r.start.is_multiple_of(PAGE_SIZE) || !r.len.is_multiple_of(PAGE_SIZE))
            {
                return Err(bad(format!("region {i}: not page aligned")));
            }
            regions.push(r);
        }
        let ext_base = body + n_regions * REGION_LEN;
        let mut extents = Vec::with_capacity(n_extents);
        let mut ri = 0usize;
        for i in 0..n_extents {
            let at = ext_base + i * EXTENT_LEN;
            let mut chunk = [0u8; 32];
            chunk.copy_from_slice(&b[at + 16..at + 48]);
            let e = Extent {
                object: u32_at(b, at),
                len: u32_at(b, at + 4),
                vaddr: u64_at(b, at + 8),
                chunk: ChunkDigest(chunk),
            };
            let ordered = extents.last().is_none_or(|p: &Extent| {
                (p.object, p.end()) <= (e.object, e.vaddr) && p.object <= e.object
            });
            let len_ok = e.len > 0 && usize::try_from(e.len).is_ok_and(|l| l <= MAX_CHUNK_RAW);
            let end = e.vaddr.checked_add(u64::from(e.len));
            // Regions are sorted too: advance to the one that may contain this extent.
            while ri < regions.len()
                && (regions[ri].object, regions[ri].start + regions[ri].len) <= (e.object, e.vaddr)
            {
                ri += 1;
            }
            let inside = end.is_some_and(|end| {
                regions.get(ri).is_some_and(|r| {
                    r.object == e.object && r.start <= e.vaddr && end <= r.start + r.len
                })
            });
            if !ordered || !len_ok || !inside {
                return Err(bad(format!(
                    "extent {i} (object {}, vaddr {:#x}, len {}, chunk {}): empty, too long, \
                     unsorted, overlapping or outside every region",
                    e.object, e.vaddr, e.len, e.chunk
                )));
            }
            extents.push(e);
        }
        Ok(Manifest {
            meta,
            regions,
            extents,
        })
    }

    /// Index of the object called `name`.
    pub fn object_index(&self, name: &str) -> Option<u32> {
        self.meta
            .objects
            .iter()
            .position(|o| o.name == name)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// The extents of object `obj` (a contiguous, sorted slice).
    pub fn object_extents(&self, obj: u32) -> &[Extent] {
        let lo = self.extents.partition_point(|e| e.object < obj);
        let hi = self.extents.partition_point(|e| e.object <= obj);
        &self.extents[lo..hi]
    }

    /// The regions of object `obj` (a contiguous, sorted slice).
    pub fn object_regions(&self, obj: u32) -> &[Region] {
        let lo = self.regions.partition_point(|r| r.object < obj);
        let hi = self.regions.partition_point(|r| r.object <= obj);
        &self.regions[lo..hi]
    }

    /// Peeks at the version field of manifest bytes without validating anything else.
    pub fn peek_version(b: &[u8]) -> Option<u32> {
        (b.len() >= 12 && b[0..8] == MANIFEST_MAGIC).then(|| u32_at(b, 8))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample(n: u64) -> Manifest {
        let mut extents = Vec::new();
        for i in 0..n {
            extents.push(Extent {
                object: 0,
                len: 4096,
                vaddr: 0x1000 + i * 0x2000,
                chunk: ChunkDigest([u8::try_from(i % 256).unwrap(); 32]),
            });
        }
        Manifest {
            meta: Meta {
                created: 1,
                page_size: PAGE_SIZE,
                chunk_size: 65536,
                objects: vec![
                    ObjectMeta {
                        name: "pid-1".into(),
                        kind: ObjectKind::Memory,
                        size: 0x1000 + n * 0x2000,
                    },
                    ObjectMeta {
                        name: "core.img".into(),
                        kind: ObjectKind::Blob,
                        size: 10,
                    },
                ],
                packs: vec!["0123456789abcdef0123456789abcdef".into()],
            },
            regions: vec![
                Region {
                    object: 0,
                    start: 0x1000,
                    len: n * 0x2000,
                },
                Region {
                    object: 1,
                    start: 0,
                    len: 10,
                },
            ],
            extents,
        }
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut b = sample(3).encode().unwrap();
        b[8] = 9;
        let err = Manifest::parse("sha256:abc", &b).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedVersion { found: 9, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("sha256:abc"));
    }

    #[test]
    fn extent_outside_regions_is_refused() {
        let mut m = sample(2);
        m.extents[1].vaddr = 0x100_0000;
        let b = m.encode().unwrap();
        assert!(Manifest::parse("s", &b).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(n in 1u64..50) {
            let m = sample(n);
            let b = m.encode().unwrap();
            prop_assert_eq!(Manifest::parse("s", &b).unwrap(), m);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), flip in 0usize..4096) {
            let _ = Manifest::parse("s", &bytes);
            let mut b = sample(4).encode().unwrap();
            let at = flip % b.len();
            b[at] ^= 0x5a;
            let _ = Manifest::parse("s", &b);
            b.truncate(at);
            let _ = Manifest::parse("s", &b);
        }
    }
}

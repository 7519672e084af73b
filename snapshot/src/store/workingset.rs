//! Working-set sidecars: the ordered pages a restore touched first, recorded so that the next
//! restore fetches them first. Attached to a snapshot ID but not part of its manifest (so not
//! of its digest), and rewritable: each recording replaces the previous one atomically.
//!
//! ```text
//! workingsets/HEX             HEX = the snapshot ID
//! offset  size
//!      0     8  magic "CRYOWSET"
//!      8     4  version u32 LE (WORKING_SET_VERSION = 1)
//!     12     4  meta_len u32 LE
//!     16     8  n_pages u64 LE
//!     24  meta_len  JSON: {"snapshot": "sha256:HEX", "objects": [names]}
//!      .   0..7  zero padding to a multiple of 8
//!      P  16 * n_pages   page: object u32 (index into meta.objects), reserved u32 = 0, vaddr u64
//!    end    32  sha256 of everything before it (checksum)
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::store::digest::SnapshotId;
use crate::store::files;
use crate::store::manifest::{Manifest, ObjectKind, PAGE_SIZE};
use crate::store::Store;

/// Magic of a working-set file.
pub const WORKING_SET_MAGIC: [u8; 8] = *b"CRYOWSET";
/// Working-set format version.
pub const WORKING_SET_VERSION: u32 = 1;
/// Largest working-set file accepted.
pub const MAX_WORKING_SET_LEN: u64 = 256 << 20;

/// A page of a memory object, by object index in the snapshot's manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageRef {
    /// Index into the manifest's objects.
    pub object: u32,
    /// Page address.
    pub vaddr: u64,
}

#[derive(Serialize, Deserialize)]
struct WsMeta {
    snapshot: String,
    objects: Vec<String>,
}

fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Validates and writes the working set of `id` (replacing any previous one).
pub fn save(store: &Store, id: &SnapshotId, manifest: &Manifest, pages: &[PageRef]) -> Result<()> {
    for p in pages {
        let obj = manifest
            .meta
            .objects
            .get(usize::try_from(p.object).unwrap_or(usize::MAX));
        let ok = obj.is_some_and(|o| o.kind == ObjectKind::Memory)
            && p.vaddr.is_multiple_of(PAGE_SIZE)
            && manifest
                .object_regions(p.object)
                .iter()
                .any(|r| r.start <= p.vaddr && p.vaddr < r.start + r.len);
        if !ok {
            return Err(Error::InvalidInput {
                object: obj.map_or_else(|| format!("#{}", p.object), |o| o.name.clone()),
                reason: format!(
                    "working set page {:#x} is not a page of the snapshot {id}",
                    p.vaddr
                ),
            });
        }
    }
    let meta = WsMeta {
        snapshot: id.to_string(),
        objects: manifest
            .meta
            .objects
            .iter()
            .map(|o| o.name.clone())
            .collect(),
    };
    let meta = serde_json::to_vec(&meta).map_err(|e| Error::CorruptWorkingSet {
        snapshot: id.to_string(),
        reason: e.to_string(),
    })?;
    let meta_len = u32::try_from(meta.len()).map_err(|_| Error::CorruptWorkingSet {
        snapshot: id.to_string(),
        reason: "metadata too large".into(),
    })?;
    let body = pad8(24 + meta.len());
    let mut out = Vec::with_capacity(body + pages.len() * 16 + 32);
    out.extend_from_slice(&WORKING_SET_MAGIC);
    out.extend_from_slice(&WORKING_SET_VERSION.to_le_bytes());
    out.extend_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(&(pages.len() as u64).to_le_bytes());
    out.extend_from_slice(&meta);
    out.resize(body, 0);
    for p in pages {
        out.extend_from_slice(&p.object.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&p.vaddr.to_le_bytes());
    }
    let sum: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&sum);
    if out.len() as u64 > MAX_WORKING_SET_LEN {
        return Err(Error::TooLarge {
            what: format!("snapshot {id}: working set"),
            size: out.len() as u64,
            limit: MAX_WORKING_SET_LEN,
        });
    }
    files::write_atomic(&store.tmp_dir(), &store.working_set_path(id), &out)
}

/// Loads the working set of `id`, if one was recorded; pages are mapped to `manifest`'s object
/// indices.
pub fn load(store: &Store, id: &SnapshotId, manifest: &Manifest) -> Result<Option<Vec<PageRef>>> {
    let path = store.working_set_path(id);
    let b = match files::read_limited(
        &path,
        &format!("snapshot {id}: working set"),
        MAX_WORKING_SET_LEN,
    ) {
        Ok(b) => b,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    parse(id, manifest, &b).map(Some)
}

fn parse(id: &SnapshotId, manifest: &Manifest, b: &[u8]) -> Result<Vec<PageRef>> {
    let bad = |reason: String| Error::CorruptWorkingSet {
        snapshot: id.to_string(),
        reason,
    };
    if b.len() < 24 + 32 || b[0..8] != WORKING_SET_MAGIC {
        return Err(bad("bad magic or too short".into()));
    }
    let (body, sum) = b.split_at(b.len() - 32);
    let actual: [u8; 32] = Sha256::digest(body).into();
    if actual[..] != sum[..] {
        return Err(bad("checksum mismatch".into()));
    }
    let word = |at: usize| {
        let mut a = [0u8; 4];
        a.copy_from_slice(&body[at..at + 4]);
        u32::from_le_bytes(a)
    };
    let version = word(8);
    if version != WORKING_SET_VERSION {
        return Err(Error::UnsupportedVersion {
            snapshot: id.to_string(),
            what: "working set",
            found: version,
            supported: WORKING_SET_VERSION,
        });
    }
    let meta_len = usize::try_from(word(12)).unwrap_or(usize::MAX);
    let mut n = [0u8; 8];
    n.copy_from_slice(&body[16..24]);
    let n_pages = usize::try_from(u64::from_le_bytes(n)).unwrap_or(usize::MAX);
    let start = 24usize.checked_add(meta_len).map(pad8);
    let expect = start.and_then(|s| n_pages.checked_mul(16).and_then(|p| p.checked_add(s)));
    let (Some(start), Some(expect)) = (start, expect) else {
        return Err(bad("lengths overflow".into()));
    };
    if expect != body.len() {
        return Err(bad(format!(
            "{} bytes, the header needs {expect}",
            body.len()
        )));
    }
    let meta: WsMeta = serde_json::from_slice(&body[24..24 + meta_len])
        .map_err(|e| bad(format!("metadata: {e}")))?;
    if meta.snapshot != id.to_string() {
        return Err(bad(format!("belongs to {}", meta.snapshot)));
    }
    let map: Vec<Option<u32>> = meta
        .objects
        .iter()
        .map(|n| manifest.object_index(n))
        .collect();
    let mut out = Vec::with_capacity(n_pages);
    for i in 0..n_pages {
        let at = start + i * 16;
        let obj = usize::try_from(word(at)).unwrap_or(usize::MAX);
        let mut v = [0u8; 8];
        v.copy_from_slice(&body[at + 8..at + 16]);
        let object = map
            .get(obj)
            .copied()
            .flatten()
            .ok_or_else(|| bad(format!("page {i}: object {obj} is not in the snapshot")))?;
        out.push(PageRef {
            object,
            vaddr: u64::from_le_bytes(v),
        });
    }
    Ok(out)
}

impl Store {
    /// Records the working set of snapshot `id`: `(object name, page address)` in fetch order.
    pub fn set_working_set(&self, id: &SnapshotId, pages: &[(&str, u64)]) -> Result<()> {
        let manifest = self.load_manifest(id)?;
        let refs = pages
            .iter()
            .map(|(name, vaddr)| {
                manifest
                    .object_index(name)
                    .map(|object| PageRef {
                        object,
                        vaddr: *vaddr,
                    })
                    .ok_or_else(|| Error::NoSuchObject {
                        snapshot: id.to_string(),
                        kind: "memory",
                        object: (*name).to_string(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        save(self, id, &manifest, &refs)
    }

    /// The recorded working set of `id` as `(object name, page address)`, if any.
    pub fn working_set(&self, id: &SnapshotId) -> Result<Option<Vec<(String, u64)>>> {
        let manifest = self.load_manifest(id)?;
        Ok(load(self, id, &manifest)?.map(|pages| {
            pages
                .into_iter()
                .map(|p| {
                    let name = manifest.meta.objects[usize::try_from(p.object).unwrap_or(0)]
                        .name
                        .clone();
                    (name, p.vaddr)
                })
                .collect()
        }))
    }
}

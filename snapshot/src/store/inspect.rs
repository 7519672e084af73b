//! Read-only views of the store for `ls` and `inspect`: sizes, sharing and dedup ratios.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::error::Result;
use crate::store::digest::{ChunkDigest, SnapshotId};
use crate::store::manifest::{Manifest, ObjectKind};
use crate::store::pack::{self, Pack};
use crate::store::{workingset, Store};

/// One line of `ls`.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotSummary {
    /// The snapshot.
    pub id: SnapshotId,
    /// Names pointing at it (`NAME:TAG`).
    pub names: Vec<String>,
    /// Commit time (seconds since the epoch), 0 if the manifest is unreadable.
    pub created: u64,
    /// Objects (memory objects and blobs).
    pub objects: usize,
    /// Bytes covered by all objects (holes included).
    pub logical_bytes: u64,
    /// Non-zero bytes (holes excluded).
    pub data_bytes: u64,
    /// Why the manifest could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One object in `inspect`.
#[derive(Clone, Debug, Serialize)]
pub struct ObjectInfo {
    /// Its name.
    pub name: String,
    /// Memory or blob.
    pub kind: ObjectKind,
    /// Bytes covered by its regions.
    pub size: u64,
    /// Non-zero bytes.
    pub data_bytes: u64,
    /// Regions (address ranges).
    pub regions: usize,
    /// Extents (chunks referenced).
    pub extents: usize,
}

/// `inspect`: one snapshot in detail.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    /// The snapshot.
    pub id: SnapshotId,
    /// Names pointing at it.
    pub names: Vec<String>,
    /// Commit time (seconds since the epoch).
    pub created: u64,
    /// Manifest format version.
    pub format_version: u32,
    /// Chunk size used by the writer.
    pub chunk_size: u64,
    /// Its objects.
    pub objects: Vec<ObjectInfo>,
    /// Bytes covered by all objects (holes included).
    pub logical_bytes: u64,
    /// Non-zero bytes.
    pub data_bytes: u64,
    /// Chunk references (with repeats).
    pub chunks: usize,
    /// Distinct chunks.
    pub unique_chunks: usize,
    /// Raw bytes of the distinct chunks.
    pub unique_raw_bytes: u64,
    /// Bytes of the distinct chunk records on disk (what the snapshot costs with sharing).
    pub stored_bytes: u64,
    /// Of those, bytes in chunks no other snapshot references (what removing it frees).
    pub exclusive_stored_bytes: u64,
    /// Manifest size.
    pub manifest_bytes: u64,
    /// data_bytes / unique_raw_bytes: how much repeated data deduplication saved (1.0 = none).
    pub dedup_ratio: f64,
    /// unique_raw_bytes / stored_bytes.
    pub compression_ratio: f64,
    /// logical_bytes / stored_bytes: zero elision, dedup and compression together.
    pub total_ratio: f64,
    /// Pages in the recorded working set (0 if none).
    pub working_set_pages: usize,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        // Sizes are far below 2^52: the conversions are exact enough for a ratio.
        #[allow(clippy::cast_precision_loss)]
        let r = a as f64 / b as f64;
        r
    }
}

fn names_by_id(store: &Store) -> Result<HashMap<SnapshotId, Vec<String>>> {
    let mut map: HashMap<SnapshotId, Vec<String>> = HashMap::new();
    for (name, id) in store.names()? {
        map.entry(id).or_default().push(name.to_string());
    }
    Ok(map)
}

fn data_bytes(m: &Manifest) -> u64 {
    m.extents.iter().map(|e| u64::from(e.len)).sum()
}

impl Store {
    /// All snapshots with their names, newest first.
    pub fn list(&self) -> Result<Vec<SnapshotSummary>> {
        let names = names_by_id(self)?;
        let mut out: Vec<SnapshotSummary> = self
            .snapshots()?
            .into_iter()
            .map(|id| {
                let names = names.get(&id).cloned().unwrap_or_default();
                match self.load_manifest(&id) {
                    Ok(m) => SnapshotSummary {
                        id,
                        names,
                        created: m.meta.created,
                        objects: m.meta.objects.len(),
                        logical_bytes: m.meta.objects.iter().map(|o| o.size).sum(),
                        data_bytes: data_bytes(&m),
                        error: None,
                    },
                    Err(e) => SnapshotSummary {
                        id,
                        names,
                        created: 0,
                        objects: 0,
                        logical_bytes: 0,
                        data_bytes: 0,
                        error: Some(e.to_string()),
                    },
                }
            })
            .collect();
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Details of one snapshot: sizes, sharing with other snapshots, ratios.
    pub fn inspect(&self, reference: &str) -> Result<SnapshotInfo> {
        let id = self.resolve(reference)?;
        let m = self.load_manifest(&id)?;
        let mut objects: Vec<ObjectInfo> = m
            .meta
            .objects
            .iter()
            .map(|o| ObjectInfo {
                name: o.name.clone(),
                kind: o.kind,
                size: o.size,
                data_bytes: 0,
                regions: 0,
                extents: 0,
            })
            .collect();
        for r in &m.regions {
            if let Some(o) = objects.get_mut(usize::try_from(r.object).unwrap_or(usize::MAX)) {
                o.regions += 1;
            }
        }
        let mut unique: HashMap<ChunkDigest, u32> = HashMap::new();
        for e in &m.extents {
            if let Some(o) = objects.get_mut(usize::try_from(e.object).unwrap_or(usize::MAX)) {
                o.data_bytes += u64::from(e.len);
                o.extents += 1;
            }
            unique.insert(e.chunk, e.len);
        }
        let mut others: HashSet<ChunkDigest> = HashSet::new();
        for other in self.snapshots()? {
            if other != id {
                if let Ok(om) = self.load_manifest(&other) {
                    others.extend(om.extents.iter().map(|e| e.chunk));
                }
            }
        }
        // Informational: a pack that cannot be opened counts as empty (verify names it).
        let dir = self.packs_dir();
        let packs: Vec<Pack> = m
            .meta
            .packs
            .iter()
            .filter_map(|n| Pack::open(&dir, n).ok())
            .collect();
        let mut stored = 0u64;
        let mut exclusive = 0u64;
        for d in unique.keys() {
            let len = pack::find(&packs, d).map_or(0, |(_, e)| u64::from(e.len));
            stored += len;
            if !others.contains(d) {
                exclusive += len;
            }
        }
        let unique_raw: u64 = unique.values().map(|&l| u64::from(l)).sum();
        let logical: u64 = m.meta.objects.iter().map(|o| o.size).sum();
        let data = data_bytes(&m);
        let ws = workingset::load(self, &id, &m)
            .ok()
            .flatten()
            .map_or(0, |w| w.len());
        Ok(SnapshotInfo {
            id,
            names: self
                .names_of(&id)?
                .iter()
                .map(ToString::to_string)
                .collect(),
            created: m.meta.created,
            format_version: crate::store::manifest::MANIFEST_VERSION,
            chunk_size: m.meta.chunk_size,
            objects,
            logical_bytes: logical,
            data_bytes: data,
            chunks: m.extents.len(),
            unique_chunks: unique.len(),
            unique_raw_bytes: unique_raw,
            stored_bytes: stored,
            exclusive_stored_bytes: exclusive,
            manifest_bytes: std::fs::metadata(self.manifest_path(&id)).map_or(0, |md| md.len()),
            dedup_ratio: ratio(data, unique_raw),
            compression_ratio: ratio(unique_raw, stored),
            total_ratio: ratio(logical, stored),
            working_set_pages: ws,
        })
    }

    /// Verifies every chunk of a snapshot (see [`crate::Reader::verify`]).
    pub fn verify(&self, reference: &str) -> Result<crate::store::reader::VerifyReport> {
        Ok(self.reader(reference)?.verify())
    }
}

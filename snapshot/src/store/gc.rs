//! Removal and garbage collection.
//!
//! `remove` deletes a name, or a snapshot's manifest with every name pointing at it; chunks
//! stay until `gc`. `gc` runs under the store lock held exclusively (it waits for writers in
//! progress, whose chunks no manifest names yet) and keeps everything reachable from a name or
//! from a live reader's lease; it removes unnamed snapshots, writers' temp directories (debris
//! of killed writers), dead leases and orphan working sets, and the chunks no kept snapshot
//! references: a pack left with none is removed, a pack with at least a quarter of its bytes
//! dead is rewritten without them (under its own name, so manifests naming it stay valid).

use std::collections::HashSet;
use std::fs;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::digest::{self, ChunkDigest, SnapshotId};
use crate::store::files::{self, LockMode};
use crate::store::pack::{self, Keep, Pack};
use crate::store::reference::{self, Reference};
use crate::store::{lease, Store};

/// What `remove` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RemoveReport {
    /// Names removed.
    pub names: Vec<String>,
    /// The snapshot whose manifest was removed, if one was.
    pub snapshot: Option<SnapshotId>,
}

/// What `gc` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Snapshots kept (named or pinned by a reader).
    pub snapshots_kept: usize,
    /// Unnamed, unpinned snapshots removed.
    pub snapshots_removed: usize,
    /// Chunks removed.
    pub chunks_removed: u64,
    /// Packs removed (no chunk left).
    pub packs_removed: u64,
    /// Packs rewritten without their dead chunks.
    pub packs_rewritten: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Temp entries of writers that are gone.
    pub temp_removed: u64,
    /// Names whose snapshot no longer exists.
    pub dangling_names_removed: usize,
}

impl Store {
    /// Removes a name (`NAME[:TAG]`), or, given an ID or prefix, the snapshot and every name
    /// pointing at it. Refused while a reader holds the snapshot.
    pub fn remove(&self, target: &str) -> Result<RemoveReport> {
        if let Reference::Name { name, hex_prefix } = reference::parse(target)? {
            if self.untag(&name)? {
                return Ok(RemoveReport {
                    names: vec![name.to_string()],
                    snapshot: None,
                });
            }
            if hex_prefix.is_none() {
                return Err(Error::NotFound {
                    reference: target.to_string(),
                });
            }
        }
        let _lock = files::lock_file(&self.lock_path(), LockMode::Exclusive)?;
        let id = self.resolve(target)?;
        if let Some((_, pid)) = lease::live(self)?.into_iter().find(|(l, _)| *l == id) {
            return Err(Error::InUse {
                snapshot: id.to_string(),
                pid,
            });
        }
        let mut report = RemoveReport {
            names: Vec::new(),
            snapshot: Some(id),
        };
        for name in self.names_of(&id)? {
            if self.untag(&name)? {
                report.names.push(name.to_string());
            }
        }
        remove_snapshot_files(self, &id)?;
        Ok(report)
    }

    /// Collects garbage (see the module doc). Blocks while writers are in progress.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = files::lock_file(&self.lock_path(), LockMode::Exclusive)?;
        let mut report = GcReport::default();
        let existing: HashSet<SnapshotId> = self.snapshots()?.into_iter().collect();
        let mut live: HashSet<SnapshotId> = HashSet::new();
        for (name, id) in self.names()? {
            if existing.contains(&id) {
                live.insert(id);
            } else if self.untag(&name)? {
                report.dangling_names_removed += 1;
            }
        }
        live.extend(lease::live(self)?.into_iter().map(|(id, _)| id));
        let mut live_chunks: HashSet<ChunkDigest> = HashSet::new();
        for id in &existing {
            if live.contains(id) {
                // A live manifest that cannot be read stops gc: its chunks cannot be told apart.
                let m = self.load_manifest(id)?;
                live_chunks.extend(m.extents.iter().map(|e| e.chunk));
                report.snapshots_kept += 1;
            } else {
                remove_snapshot_files(self, id)?;
                report.snapshots_removed += 1;
            }
        }
        self.collect_packs(&live_chunks, &mut report)?;
        // With the lock held exclusively no writer is alive: every temp entry is debris.
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, "read directory", e))? {
            let path = entry
                .map_err(|e| Error::io(&tmp, "read directory", e))?
                .path();
            let r = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            r.map_err(|e| Error::io(&path, "remove temp", e))?;
            report.temp_removed += 1;
        }
        let ws = self.root().join("workingsets");
        if let Ok(entries) = fs::read_dir(&ws) {
            for entry in entries.flatten() {
                let keep = entry
                    .file_name()
                    .to_str()
                    .and_then(digest::from_hex32)
                    .is_some_and(|d| live.contains(&SnapshotId(d)));
                if !keep {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(report)
    }
}

impl Store {
    /// Removes or rewrites the packs with dead chunks (see the module doc). A pack whose index
    /// cannot be read stops gc: what it holds cannot be told apart.
    fn collect_packs(&self, live: &HashSet<ChunkDigest>, report: &mut GcReport) -> Result<()> {
        let dir = self.packs_dir();
        let tmp = self.tmp_dir();
        for name in pack::list(&dir)? {
            let p = Pack::open(&dir, &name)?;
            let total: u64 = p.entries().iter().map(|e| u64::from(e.len)).sum();
            let dead: u64 = p
                .entries()
                .iter()
                .filter(|e| !live.contains(&e.digest))
                .map(|e| u64::from(e.len))
                .sum();
            if dead == 0 || (dead < total && dead * 4 < total) {
                continue;
            }
            if dead == total {
                fs::remove_file(p.path()).map_err(|e| Error::io(p.path(), "remove pack", e))?;
                report.chunks_removed += p.entries().len() as u64;
                report.bytes_freed += p.file_len();
                report.packs_removed += 1;
                continue;
            }
            let r = pack::rewrite(&p, &tmp, |e, _| {
                Ok(if live.contains(&e.digest) {
                    Keep::Same
                } else {
                    Keep::Drop
                })
            })?;
            report.chunks_removed += r.dropped;
            report.bytes_freed += r.bytes_before.saturating_sub(r.bytes_after);
            if r.bytes_after == 0 {
                report.packs_removed += 1;
            } else {
                report.packs_rewritten += 1;
            }
        }
        Ok(())
    }
}

fn remove_snapshot_files(store: &Store, id: &SnapshotId) -> Result<()> {
    for path in [store.working_set_path(id), store.manifest_path(id)] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, "remove", e)),
        }
    }
    files::fsync_dir(&store.manifests_dir())
}

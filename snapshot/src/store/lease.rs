//! Leases: how a reader (a restore in progress) pins a snapshot against `gc` and `rm`.
//!
//! A lease is a file `leases/NAME` holding `sha256:HEX PID`, `flock`ed exclusively by its owner
//! for as long as the reader lives. The kernel drops the lock when the owner dies, so `gc` tells
//! a live lease (lock held elsewhere) from the debris of a killed one (lock free) without
//! trusting pids. Leases are created while the store lock is held shared and inspected while it
//! is held exclusively, so a lease never appears half-made to `gc`. [`SnapshotPin`] is the public face
//! of a lease: a snapshot resolved and pinned in one step.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::store::digest::SnapshotId;
use crate::store::files::{create_new, flock, lock_file, unique_name, LockMode};
use crate::store::Store;

/// A held lease; dropping it releases the pin.
#[derive(Debug)]
pub(crate) struct Lease {
    path: PathBuf,
    _file: File,
}

impl Lease {
    /// Pins `id`. The caller holds the store lock (shared).
    pub(crate) fn take(store: &Store, id: &SnapshotId) -> Result<Lease> {
        let path = store.leases_dir().join(unique_name("r-"));
        let mut file = create_new(&path)?;
        flock(&file, &path, LockMode::Exclusive, true)?;
        writeln!(file, "{id} {}", std::process::id())
            .map_err(|e| Error::io(&path, "write lease", e))?;
        Ok(Lease { path, _file: file })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A snapshot resolved and pinned against `gc` and `rm` for as long as this value lives
/// ([`Store::pin`]): what a caller holds between naming a snapshot and opening it, for
/// example while it hands the ID to another process that opens it too.
#[derive(Debug)]
pub struct SnapshotPin {
    id: SnapshotId,
    _lease: Lease,
}

impl SnapshotPin {
    /// Resolves `reference` and pins what it names, under the store lock (shared), so that
    /// `gc` cannot remove the snapshot between the two.
    pub(crate) fn take(store: &Store, reference: &str) -> Result<SnapshotPin> {
        let _lock = lock_file(&store.lock_path(), LockMode::Shared)?;
        let id = store.resolve(reference)?;
        let lease = Lease::take(store, &id)?;
        Ok(SnapshotPin { id, _lease: lease })
    }

    /// The pinned snapshot's ID.
    pub fn id(&self) -> &SnapshotId {
        &self.id
    }
}

/// The snapshots pinned by live leases, with the pid that holds each; removes dead leases.
/// The caller holds the store lock exclusively.
pub(crate) fn live(store: &Store) -> Result<Vec<(SnapshotId, u32)>> {
    let dir = store.leases_dir();
    let mut out = Vec::new();
    let entries = fs::read_dir(&dir).map_err(|e| Error::io(&dir, "read directory", e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| Error::io(&dir, "read directory", e))?
            .path();
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&path, "open lease", e)),
        };
        if flock(&f, &path, LockMode::Exclusive, false)? {
            // Nobody holds it: its reader is gone.
            let _ = fs::remove_file(&path);
            continue;
        }
        let mut text = String::new();
        (&mut f)
            .take(256)
            .read_to_string(&mut text)
            .map_err(|e| Error::io(&path, "read lease", e))?;
        let mut parts = text.split_whitespace();
        if let Some(Ok(id)) = parts.next().map(str::parse::<SnapshotId>) {
            let pid = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            out.push((id, pid));
        }
    }
    Ok(out)
}

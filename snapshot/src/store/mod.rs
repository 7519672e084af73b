//! The snapshot store: packs of content-addressed chunks, manifests named by their
//! sha256, mutable names pointing at manifests, and working-set sidecars (docs/FORMAT.md).
//!
//! ```text
//! STORE/                      0700 (default /var/lib/cryo/store, CRYO_STORE overrides)
//!   layout                    "cryo-store 2"
//!   lock                      flock: writers shared for their life, readers shared while
//!                             opening, gc and rm exclusive
//!   packs/NAME                packs of chunk records with their index (store/pack.rs)
//!   manifests/HEX             manifests (store/manifest.rs), HEX = the snapshot ID
//!   workingsets/HEX           working-set sidecars (store/workingset.rs)
//!   refs/NAME/:TAG            "sha256:HEX\n"; NAME may have slashes (nested directories)
//!   leases/*                  readers' pins (store/lease.rs)
//!   tmp/w-*/                  writers' temp dirs; debris after a crash, removed by gc
//! ```
//!
//! This module owns the layout, names and resolution; writing, reading, inspection and garbage
//! collection live in the sibling modules.

pub mod chunk;
pub mod compact;
pub mod digest;
mod files;
pub mod gc;
pub mod inspect;
mod lease;
pub use lease::SnapshotPin;
pub mod manifest;
pub mod pack;
pub mod reader;
pub mod reference;
pub mod workingset;
pub mod writer;

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use digest::{ChunkDigest, SnapshotId};
use manifest::{Manifest, MAX_MANIFEST_LEN};
use reference::{Name, Reference};

/// Where the store lives unless told otherwise.
pub const DEFAULT_STORE: &str = "/var/lib/cryo/store";
/// Environment variable that overrides [`DEFAULT_STORE`].
pub const STORE_ENV: &str = "CRYO_STORE";
/// Contents of the `layout` file.
pub const STORE_LAYOUT: &str = "cryo-store 2";

/// Where a chunk's record lies: `len` bytes (chunk header and payload) at `offset` of `path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The pack file.
    pub path: PathBuf,
    /// The record's first byte.
    pub offset: u64,
    /// The record's length.
    pub len: u64,
}

/// A snapshot store rooted at a directory. Cheap to clone; holds no open files.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// `$CRYO_STORE` if set and non-empty, else [`DEFAULT_STORE`].
    pub fn default_path() -> PathBuf {
        match std::env::var_os(STORE_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_STORE),
        }
    }

    /// Opens the store at [`Store::default_path`].
    pub fn open_default() -> Result<Store> {
        Store::open(Store::default_path())
    }

    /// Opens the store at `root`, creating it (0700) if needed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let store = Store { root: root.into() };
        let layout = store.root.join("layout");
        match fs::read_to_string(&layout) {
            Ok(text) if text.trim() == STORE_LAYOUT => return Ok(store),
            Ok(text) => {
                return Err(Error::UnsupportedStore {
                    path: layout,
                    found: text.trim().chars().take(64).collect(),
                    supported: STORE_LAYOUT.to_string(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&layout, "read", e)),
        }
        files::mkdir_all(&store.root)?;
        for sub in ["packs", "manifests", "workingsets", "refs", "leases", "tmp"] {
            files::mkdir_all(&store.root.join(sub))?;
        }
        // The layout file is written last: its presence means every directory exists.
        files::write_atomic(
            &store.tmp_dir(),
            &layout,
            format!("{STORE_LAYOUT}\n").as_bytes(),
        )?;
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn leases_dir(&self) -> PathBuf {
        self.root.join("leases")
    }

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    pub(crate) fn manifests_dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    pub(crate) fn refs_dir(&self) -> PathBuf {
        self.root.join("refs")
    }

    /// The directory of the packs.
    pub(crate) fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    /// Where chunk `d` is stored: the first pack holding it (every pack's index is read;
    /// meant for tools and tests, not for hot paths).
    pub fn locate_chunk(&self, d: &ChunkDigest) -> Result<Option<ChunkLocation>> {
        let dir = self.packs_dir();
        for name in pack::list(&dir)? {
            let p = pack::Pack::open(&dir, &name)?;
            if let Some(e) = p.find(d) {
                return Ok(Some(ChunkLocation {
                    path: p.path().to_path_buf(),
                    offset: e.offset,
                    len: u64::from(e.len),
                }));
            }
        }
        Ok(None)
    }

    /// The manifest of a snapshot.
    pub fn manifest_path(&self, id: &SnapshotId) -> PathBuf {
        self.manifests_dir().join(id.hex())
    }

    pub(crate) fn working_set_path(&self, id: &SnapshotId) -> PathBuf {
        self.root.join("workingsets").join(id.hex())
    }

    fn ref_path(&self, name: &Name) -> PathBuf {
        let mut p = self.refs_dir();
        for c in name.name.split('/') {
            p.push(c);
        }
        p.push(format!(":{}", name.tag));
        p
    }

    /// Reads and verifies a manifest: size limit, sha256 against the ID, then parsing.
    pub fn load_manifest(&self, id: &SnapshotId) -> Result<Manifest> {
        let path = self.manifest_path(id);
        let bytes =
            match files::read_limited(&path, &format!("snapshot {id}: manifest"), MAX_MANIFEST_LEN)
            {
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::NotFound {
                        reference: id.to_string(),
                    })
                }
                r => r?,
            };
        if SnapshotId::of_manifest(&bytes) != *id {
            return Err(Error::CorruptManifest {
                snapshot: id.to_string(),
                reason: "digest mismatch: the file does not hash to its name".into(),
            });
        }
        Manifest::parse(&id.to_string(), &bytes)
    }

    /// Every snapshot in the store (named or not), sorted by ID.
    pub fn snapshots(&self) -> Result<Vec<SnapshotId>> {
        let dir = self.manifests_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, "read directory", e))? {
            let entry = entry.map_err(|e| Error::io(&dir, "read directory", e))?;
            if let Some(bytes) = entry.file_name().to_str().and_then(digest::from_hex32) {
                out.push(SnapshotId(bytes));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every name and the snapshot it points at, sorted by name.
    pub fn names(&self) -> Result<Vec<(Name, SnapshotId)>> {
        let mut out = Vec::new();
        let root = self.refs_dir();
        let mut stack = vec![(root, String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, "read directory", e))? {
                let entry = entry.map_err(|e| Error::io(&dir, "read directory", e))?;
                let Some(file) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let path = entry.path();
                if let Some(tag) = file.strip_prefix(':') {
                    let Ok(text) = fs::read_to_string(&path) else {
                        continue;
                    };
                    if let Ok(id) = text.trim().parse::<SnapshotId>() {
                        out.push((
                            Name {
                                name: prefix.clone(),
                                tag: tag.to_string(),
                            },
                            id,
                        ));
                    }
                } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let sub = if prefix.is_empty() {
                        file
                    } else {
                        format!("{prefix}/{file}")
                    };
                    stack.push((path, sub));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The names pointing at `id`.
    pub fn names_of(&self, id: &SnapshotId) -> Result<Vec<Name>> {
        Ok(self
            .names()?
            .into_iter()
            .filter(|(_, i)| i == id)
            .map(|(n, _)| n)
            .collect())
    }

    /// Points `name` (`NAME[:TAG]`) at `id`, moving it if it exists. Durable and atomic.
    pub fn tag(&self, id: &SnapshotId, name: &str) -> Result<()> {
        let name = reference::parse_name(name)?;
        if !self.manifest_path(id).exists() {
            return Err(Error::NotFound {
                reference: id.to_string(),
            });
        }
        let path = self.ref_path(&name);
        if let Some(dir) = path.parent() {
            files::mkdir_all(dir)?;
        }
        files::write_atomic(&self.tmp_dir(), &path, format!("{id}\n").as_bytes())
    }

    /// Removes a name. Returns whether it existed.
    pub fn untag(&self, name: &Name) -> Result<bool> {
        let path = self.ref_path(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                // Empty parent directories of a slashed name are left for the next tag; harmless.
                if let Some(dir) = path.parent() {
                    files::fsync_dir(dir)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&path, "remove name", e)),
        }
    }

    /// Resolves a reference: a local name, `sha256:HEX`, or a unique hex prefix (with or
    /// without `sha256:`). Registry references are refused.
    pub fn resolve(&self, reference: &str) -> Result<SnapshotId> {
        let not_found = || Error::NotFound {
            reference: reference.to_string(),
        };
        match reference::parse(reference)? {
            Reference::Id(id) => {
                if self.manifest_path(&id).exists() {
                    Ok(id)
                } else {
                    Err(not_found())
                }
            }
            Reference::Prefix(p) => self.resolve_prefix(reference, &p),
            Reference::Name { name, hex_prefix } => {
                let path = self.ref_path(&name);
                match fs::read_to_string(&path) {
                    Ok(text) => {
                        text.trim()
                            .parse::<SnapshotId>()
                            .map_err(|_| Error::CorruptManifest {
                                snapshot: name.to_string(),
                                reason: format!("{}: not a snapshot ID", path.display()),
                            })
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => match hex_prefix {
                        Some(p) => self.resolve_prefix(reference, &p),
                        None => Err(not_found()),
                    },
                    Err(e) => Err(Error::io(&path, "read name", e)),
                }
            }
        }
    }

    fn resolve_prefix(&self, reference: &str, prefix: &str) -> Result<SnapshotId> {
        let matches: Vec<SnapshotId> = self
            .snapshots()?
            .into_iter()
            .filter(|id| id.hex().starts_with(prefix))
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(Error::NotFound {
                reference: reference.to_string(),
            }),
            many => Err(Error::Ambiguous {
                reference: reference.to_string(),
                candidates: many.iter().map(ToString::to_string).collect(),
            }),
        }
    }

    /// Starts a snapshot with default options.
    pub fn writer(&self) -> Result<writer::Writer> {
        writer::Writer::new(self.clone(), writer::WriterOptions::default())
    }

    /// Starts a snapshot with `opts`.
    pub fn writer_with(&self, opts: writer::WriterOptions) -> Result<writer::Writer> {
        writer::Writer::new(self.clone(), opts)
    }

    /// Resolves `reference` and pins the snapshot it names against `gc` and `rm` until the
    /// returned [`SnapshotPin`] is dropped; what a caller holds while the ID is in other hands (a
    /// restore handing it to its lazy-pages server) before a [`Store::reader`] pins it too.
    pub fn pin(&self, reference: &str) -> Result<SnapshotPin> {
        SnapshotPin::take(self, reference)
    }

    /// Opens a snapshot for reading by reference; the reader pins it against gc and rm.
    pub fn reader(&self, reference: &str) -> Result<reader::Reader> {
        reader::Reader::open(self.clone(), reference)
    }
}

#[cfg(test)]
mod tests;

//! CRIU images in and out of the store.
//!
//! [`ingest`] turns an images directory into a snapshot: the bytes of each `pages-K.img` become
//! a memory object named after the pagemap that describes them (`pagemap-1`, at the pages'
//! dump-time addresses, so that zero pages become holes and identical chunks are shared with
//! every other snapshot), and every other file, the pagemaps included, a blob of its own name.
//! [`materialize`] writes the directory back, bit-identical, for `criu restore`; it reads (and
//! so verifies) every chunk before it returns, so a damaged snapshot fails here, before any
//! process exists.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::images::{is_pagemap, pages_file_id, Pagemap, PE_LAZY, PE_PARENT, PE_PRESENT};
use crate::store::manifest::ObjectKind;
use crate::{Error, Reader, Result, SnapshotId, Store, WriteStats, WriterOptions};

/// CRIU's log of the dump, a blob of every snapshot of a checkpoint.
const DUMP_LOG: &str = "dump.log";
/// Largest piece read from the store at once while materializing a pages file.
const PIECE: usize = 16 << 20;

/// What [`ingest`] stored.
#[derive(Debug, Clone, Copy)]
pub struct IngestReport {
    /// The new snapshot.
    pub id: SnapshotId,
    /// Bytes of `pages-*.img` read.
    pub page_bytes: u64,
    /// Bytes of the other images.
    pub blob_bytes: u64,
    /// The writer's counters (zero pages, new chunks, stored bytes).
    pub stats: WriteStats,
}

/// The memory object holding the pages a pagemap describes: its file name without `.img`.
pub fn object_name(pagemap_file: &str) -> &str {
    pagemap_file.strip_suffix(".img").unwrap_or(pagemap_file)
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(path, op, e)
}

/// The regular files of `dir`, sorted.
fn file_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for e in fs::read_dir(dir).map_err(io(dir, "read_dir"))? {
        let e = e.map_err(io(dir, "read_dir"))?;
        if e.file_type().map_err(io(&e.path(), "stat"))?.is_file() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Commits a dump whose pages came through the page server (`received`), with the other
/// images in `dir`, as one snapshot named `name` if given: the same snapshot [`ingest`] makes
/// of a dump with its pagemaps and pages files (the pagemaps are the ones the page server
/// built, pages ids from 1).
pub fn commit_received(
    received: super::pageserver::Received,
    dir: &Path,
    name: Option<&str>,
) -> Result<IngestReport> {
    let super::pageserver::Received {
        writer: mut w,
        pagemaps,
        page_bytes,
    } = received;
    let mut blob_bytes = 0;
    for n in file_names(dir)? {
        if pages_file_id(&n).is_some() || is_pagemap(&n) {
            return Err(Error::InvalidInput {
                object: n,
                reason: "CRIU wrote memory images although its pages went to the page server"
                    .into(),
            });
        }
        let path = dir.join(&n);
        let bytes = fs::read(&path).map_err(io(&path, "read"))?;
        blob_bytes += bytes.len() as u64;
        w.add_blob(&n, &bytes)?;
    }
    for (n, pm) in &pagemaps {
        let bytes = pm.encode();
        blob_bytes += bytes.len() as u64;
        w.add_blob(n, &bytes)?;
    }
    commit(w, name, page_bytes, blob_bytes)
}

/// Commits what `w` holds as the snapshot of a dump (named `name` if given).
fn commit(
    mut w: crate::Writer,
    name: Option<&str>,
    page_bytes: u64,
    blob_bytes: u64,
) -> Result<IngestReport> {
    // Flushed first, so that the counters include everything.
    w.flush()?;
    let stats = w.stats();
    let id = w.commit(name)?;
    Ok(IngestReport {
        id,
        page_bytes,
        blob_bytes,
        stats,
    })
}

/// Stores the CRIU images in `dir` as one snapshot, named `name` if given.
pub fn ingest(
    store: &Store,
    dir: &Path,
    name: Option<&str>,
    opts: WriterOptions,
) -> Result<IngestReport> {
    let names = file_names(dir)?;
    let mut w = store.writer_with(opts)?;
    let mut used_pages = std::collections::BTreeSet::new();
    let mut page_bytes = 0;
    let mut blob_bytes = 0;
    for n in &names {
        if pages_file_id(n).is_some() {
            continue;
        }
        let path = dir.join(n);
        let bytes = fs::read(&path).map_err(io(&path, "read"))?;
        blob_bytes += bytes.len() as u64;
        if is_pagemap(n) {
            let pm = Pagemap::parse(n, &bytes)?;
            let pages_name = format!("pages-{}.img", pm.pages_id);
            page_bytes += add_pages(&mut w, dir, n, &pm, &pages_name)?;
            used_pages.insert(pages_name);
        }
        w.add_blob(n, &bytes)?;
    }
    if let Some(orphan) = names
        .iter()
        .find(|n| pages_file_id(n).is_some() && !used_pages.contains(*n))
    {
        return Err(Error::InvalidInput {
            object: orphan.clone(),
            reason: "no pagemap refers to this pages file".into(),
        });
    }
    commit(w, name, page_bytes, blob_bytes)
}

/// Adds the present pages of `pm` (from `dir/pages_name`) to memory object `pagemap`.
fn add_pages(
    w: &mut crate::Writer,
    dir: &Path,
    pagemap: &str,
    pm: &Pagemap,
    pages_name: &str,
) -> Result<u64> {
    let bad = |reason: String| Error::InvalidInput {
        object: pagemap.into(),
        reason,
    };
    let path = dir.join(pages_name);
    let file = File::open(&path).map_err(io(&path, "open"))?;
    let len = file.metadata().map_err(io(&path, "stat"))?.len();
    if len != pm.present_bytes() {
        return Err(bad(format!(
            "{pages_name} holds {len} bytes, the pagemap describes {}",
            pm.present_bytes()
        )));
    }
    let map = if len == 0 {
        None
    } else {
        // SAFETY: CRIU wrote this file and is done with it; nothing truncates it while it is
        // mapped (a concurrent truncation would only fault this process, never corrupt data
        // that reaches the store unverified: chunks are hashed after they are read).
        Some(unsafe { memmap2::Mmap::map(&file) }.map_err(io(&path, "mmap"))?)
    };
    let data: &[u8] = map.as_deref().unwrap_or(&[]);
    let mut obj = w.object(object_name(pagemap))?;
    let mut off = 0usize;
    for (i, e) in pm.entries.iter().enumerate() {
        let flags = e.pe_flags();
        if flags & PE_PARENT != 0 {
            return Err(bad(format!(
                "entry {i} ({:#x}) is in a parent image; pre-dump chains are not supported",
                e.vaddr
            )));
        }
        if flags & PE_PRESENT == 0 {
            if flags & PE_LAZY != 0 {
                return Err(bad(format!(
                    "entry {i} ({:#x}) is lazy with no pages: dump without --lazy-pages",
                    e.vaddr
                )));
            }
            continue;
        }
        let n = usize::try_from(e.len()).map_err(|_| bad(format!("entry {i} too large")))?;
        obj.add_pages(e.vaddr, &data[off..off + n])?;
        off += n;
    }
    Ok(len)
}

/// What [`materialize`] wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaterializeReport {
    /// Files written.
    pub files: usize,
    /// Bytes of `pages-*.img` written.
    pub page_bytes: u64,
    /// Bytes left to the lazy-pages server.
    pub lazy_bytes: u64,
}

/// Writes the images of the snapshot `reader` reads into `dir` (existing and empty), files 0600.
pub fn materialize(reader: &Reader, dir: &Path) -> Result<MaterializeReport> {
    materialize_with(reader, dir, false)
}

/// Like [`materialize`] for a lazy restore: in task pagemaps, the entries CRIU flagged lazy
/// lose `PE_PRESENT` and their pages stay out of `pages-*.img`; the lazy-pages server
/// ([`crate::lazy`]) serves them from the store. Only the eager pages are read here, and
/// CRIU's `dump.log` is left out (a restore does not read it).
pub fn materialize_lazy(reader: &Reader, dir: &Path) -> Result<MaterializeReport> {
    materialize_with(reader, dir, true)
}

fn materialize_with(reader: &Reader, dir: &Path, lazy: bool) -> Result<MaterializeReport> {
    let mut report = MaterializeReport::default();
    let blobs: Vec<String> = reader
        .objects()
        .iter()
        .filter(|o| o.kind == ObjectKind::Blob)
        .map(|o| o.name.clone())
        .collect();
    for name in blobs {
        // CRIU's log of the dump (megabytes at its log level) is kept for diagnosis; a
        // restore does not read it.
        if lazy && name == DUMP_LOG {
            continue;
        }
        if name.contains('/') || name.starts_with('.') {
            return Err(Error::CorruptManifest {
                snapshot: reader.id().to_string(),
                reason: format!("blob name {name:?} is not a plain file name"),
            });
        }
        let mut bytes = reader.read_blob(&name)?;
        let pagemap = if is_pagemap(&name) {
            let mut pm = Pagemap::parse(&name, &bytes)?;
            let full = pm.clone();
            if lazy && crate::lazy::task_pid(&name).is_some() {
                for e in &mut pm.entries {
                    if crate::lazy::is_lazy(e.pe_flags()) {
                        e.flags = Some(e.pe_flags() & !PE_PRESENT);
                        report.lazy_bytes += e.len();
                    }
                }
                bytes = pm.encode();
            }
            Some((full, pm))
        } else {
            None
        };
        let path = dir.join(&name);
        create(&path)?
            .write_all(&bytes)
            .map_err(io(&path, "write"))?;
        report.files += 1;
        let Some((full, pm)) = pagemap else { continue };
        let pages_path = dir.join(format!("pages-{}.img", pm.pages_id));
        let out = create(&pages_path)?;
        out.set_len(pm.present_bytes())
            .map_err(io(&pages_path, "truncate"))?;
        let object = object_name(&name);
        let mut buf = vec![0u8; PIECE];
        let mut at = 0u64;
        // `full` and `pm` list the same entries; only those still present are written.
        for (e, kept) in full.entries.iter().zip(&pm.entries) {
            if !e.present() || !kept.present() {
                continue;
            }
            let mut done = 0u64;
            while done < e.len() {
                let n = usize::try_from((e.len() - done).min(PIECE as u64)).unwrap_or(PIECE);
                reader.read_range(object, e.vaddr + done, &mut buf[..n])?;
                // Zero pages were stored as holes; writing them keeps pages-*.img complete
                // (CRIU restores every present page, file-backed ones included).
                out.write_all_at(&buf[..n], at)
                    .map_err(io(&pages_path, "write"))?;
                at += n as u64;
                done += n as u64;
            }
        }
        report.files += 1;
        report.page_bytes += at;
    }
    Ok(report)
}

fn create(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path, "create"))
}

#[cfg(test)]
mod tests {
    use super::super::images::PagemapEntry;
    use super::*;

    fn entry(vaddr: u64, nr_pages: u32, flags: u32) -> PagemapEntry {
        PagemapEntry {
            vaddr,
            nr_pages,
            in_parent: None,
            flags: Some(flags),
            nr_pages_wide: None,
        }
    }

    /// An images dir with two tasks: one with random, zero and text pages, one sharing pages
    /// with the first.
    fn images(dir: &Path) -> Vec<u8> {
        let mut pages = Vec::new();
        let mut x = 0x1234_5678_u64;
        for _ in 0..4096 * 3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pages.push(x.to_le_bytes()[0]);
        }
        pages.extend(std::iter::repeat_n(0u8, 4096 * 2));
        pages.extend(b"hello world ".iter().cycle().take(4096 * 3));
        let pm = Pagemap {
            pages_id: 1,
            entries: vec![
                entry(0x40_0000, 3, PE_PRESENT),
                entry(0x7f00_0000_0000, 5, PE_PRESENT),
            ],
        };
        fs::write(dir.join("pagemap-1.img"), pm.encode()).unwrap();
        fs::write(dir.join("pages-1.img"), &pages).unwrap();
        let pm2 = Pagemap {
            pages_id: 2,
            entries: vec![entry(0x40_0000, 3, PE_PRESENT)],
        };
        fs::write(dir.join("pagemap-7.img"), pm2.encode()).unwrap();
        fs::write(dir.join("pages-2.img"), &pages[..4096 * 3]).unwrap();
        fs::write(dir.join("core-1.img"), b"core").unwrap();
        fs::write(dir.join("inventory.img"), b"inv").unwrap();
        pages
    }

    fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn images_round_trip_bit_identical_with_holes_and_dedup() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        let pages = images(&src);
        let store = Store::open(t.path().join("store")).unwrap();
        let rep = ingest(&store, &src, Some("app:v1"), WriterOptions::default()).unwrap();
        assert_eq!(rep.page_bytes, 4096 * 11);
        assert_eq!(rep.stats.zero_bytes, 4096 * 2, "zero pages are holes");
        let reader = store.reader("app:v1").unwrap();
        let mut page = vec![0u8; 4096];
        reader
            .read_page("pagemap-1", 0x7f00_0000_0000 + 4 * 4096, &mut page)
            .unwrap();
        assert_eq!(page, pages[7 * 4096..8 * 4096]);
        let out = t.path().join("out");
        fs::create_dir(&out).unwrap();
        let m = materialize(&reader, &out).unwrap();
        assert_eq!(m.files, 6);
        assert_eq!(tree(&src), tree(&out));
        // A second ingest of the same images adds no chunk.
        let rep2 = ingest(&store, &src, Some("app:v2"), WriterOptions::default()).unwrap();
        assert_eq!(rep2.stats.new_chunks, 0);
    }

    #[test]
    fn inconsistent_images_are_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        images(&src);
        let store = Store::open(t.path().join("store")).unwrap();
        fs::write(src.join("pages-2.img"), vec![1u8; 4096]).unwrap();
        let e = ingest(&store, &src, None, WriterOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pagemap-7.img") && e.contains("pages-2.img"),
            "{e}"
        );
        fs::write(src.join("pages-2.img"), vec![1u8; 4096 * 3]).unwrap();
        fs::write(src.join("pages-9.img"), vec![1u8; 4096]).unwrap();
        let e = ingest(&store, &src, None, WriterOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("pages-9.img"), "{e}");
    }

    #[test]
    fn a_damaged_snapshot_fails_materialize() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        images(&src);
        let store = Store::open(t.path().join("store")).unwrap();
        ingest(&store, &src, Some("x"), WriterOptions::default()).unwrap();
        // Flip the last byte of every chunk record.
        let m = store.load_manifest(&store.resolve("x").unwrap()).unwrap();
        let mut done = std::collections::HashSet::new();
        let mut flipped = 0;
        for e in m.extents.iter().filter(|e| done.insert(e.chunk)) {
            let loc = store.locate_chunk(&e.chunk).unwrap().unwrap();
            let mut b = fs::read(&loc.path).unwrap();
            b[usize::try_from(loc.offset + loc.len - 1).unwrap()] ^= 0xff;
            fs::write(&loc.path, b).unwrap();
            flipped += 1;
        }
        assert!(flipped > 0);
        let out = t.path().join("out");
        fs::create_dir(&out).unwrap();
        let e = materialize(&store.reader("x").unwrap(), &out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chunk"), "{e}");
    }
}

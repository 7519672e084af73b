//! Store-level tests: round trips, holes, dedup, names, corruption, versions, gc, concurrency
//! and a writer killed with SIGKILL mid-commit.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::store::chunk::CodecPolicy;
use crate::store::manifest::PAGE_SIZE;
use crate::store::reader::PageKind;
use crate::workload::{memory_image, Rng};

const PG: usize = 4096;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    (dir, store)
}

fn pack_files(store: &Store) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = fs::read_dir(store.root().join("packs"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    out.sort();
    out
}

/// Chunks in the store's packs.
fn stored_chunks(store: &Store) -> usize {
    pack_files(store)
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            pack::Pack::open(&store.packs_dir(), name)
                .unwrap()
                .entries()
                .len()
        })
        .sum()
}

/// Writes `image` at `base` of object "pid-1" in batches of `batch` pages.
fn write_image(
    store: &Store,
    image: &[u8],
    base: u64,
    batch: usize,
    name: Option<&str>,
) -> SnapshotId {
    let mut w = store.writer().unwrap();
    for (i, piece) in image.chunks(batch * PG).enumerate() {
        w.object("pid-1")
            .unwrap()
            .add_pages(base + (i * batch * PG) as u64, piece)
            .unwrap();
    }
    w.add_blob("core.img", b"core image bytes").unwrap();
    w.commit(name).unwrap()
}

#[test]
fn round_trip_holes_and_pages() {
    let (_d, store) = store();
    let image = memory_image(40 * PG, 7);
    let base = 0x7f00_0000_0000u64;
    let id = write_image(&store, &image, base, 3, Some("app"));
    assert_eq!(store.resolve("app").unwrap(), id);
    assert_eq!(store.resolve("app:latest").unwrap(), id);
    assert_eq!(store.resolve(&id.to_string()).unwrap(), id);
    assert_eq!(store.resolve(&id.hex()[..8]).unwrap(), id);
    let r = store.reader("app").unwrap();
    let mut back = vec![1u8; image.len()];
    r.read_range("pid-1", base, &mut back).unwrap();
    assert!(back == image);
    let mut page = [0u8; PG];
    for p in 0..40 {
        let kind = r
            .read_page("pid-1", base + (p * PG) as u64, &mut page)
            .unwrap();
        let want = &image[p * PG..(p + 1) * PG];
        assert_eq!(&page[..], want);
        assert_eq!(kind == PageKind::Zero, want.iter().all(|&b| b == 0));
    }
    let err = r
        .read_page("pid-1", base + (40 * PG) as u64, &mut page)
        .unwrap_err();
    assert!(matches!(err, Error::PageNotPresent { .. }), "{err}");
    assert_eq!(r.read_blob("core.img").unwrap(), b"core image bytes");
    assert!(r.read_blob("pid-1").is_err());
    // Holes are not data: no extent covers a zero page.
    let zero_pages = image
        .chunks(PG)
        .filter(|p| p.iter().all(|&b| b == 0))
        .count();
    let data: u64 = r
        .manifest()
        .extents
        .iter()
        .filter(|e| e.object == 0)
        .map(|e| u64::from(e.len))
        .sum();
    assert_eq!(data, ((40 - zero_pages) * PG) as u64);
    assert!(r.verify().failures.is_empty());
}

#[test]
fn permissions_are_private() {
    let (_d, store) = store();
    write_image(&store, &memory_image(8 * PG, 1), 0, 8, Some("p"));
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(store.root()), 0o700);
    assert_eq!(mode(&store.root().join("packs")), 0o700);
    assert!(!pack_files(&store).is_empty());
    for f in pack_files(&store) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    for f in fs::read_dir(store.root().join("manifests")).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o600);
    }
}

#[test]
fn dedup_across_snapshots() {
    let (_d, store) = store();
    let image = memory_image(64 * PG, 3);
    let id1 = write_image(&store, &image, 0x10000, 5, Some("a"));
    let before = pack_files(&store);
    // Same memory in different batch sizes: chunks are cut at aligned addresses, so identical.
    let mut w = store.writer().unwrap();
    for (i, piece) in image.chunks(7 * PG).enumerate() {
        w.object("pid-1")
            .unwrap()
            .add_pages(0x10000 + (i * 7 * PG) as u64, piece)
            .unwrap();
    }
    w.add_blob("core.img", b"core image bytes").unwrap();
    let stats = w.stats();
    let id2 = w.commit(Some("b")).unwrap();
    assert_eq!(stats.new_chunks, 0, "{stats:?}");
    assert_eq!(pack_files(&store), before, "no new pack");
    let info = store.inspect("b").unwrap();
    assert_eq!(info.id, id2);
    if id1 != id2 {
        // Same memory in the same second gives the same manifest, hence the same ID.
        assert_eq!(info.exclusive_stored_bytes, 0);
    }
    // Within one snapshot, identical chunks are stored once.
    let mut w = store.writer().unwrap();
    let same = vec![0x5au8; 16 * PG];
    w.object("x").unwrap().add_pages(0, &same).unwrap();
    w.object("y").unwrap().add_pages(0, &same).unwrap();
    w.commit(Some("c")).unwrap();
    let info = store.inspect("c").unwrap();
    assert_eq!(info.unique_chunks, 1);
    assert!(info.dedup_ratio > 1.9, "{info:?}");
}

/// Text of `pages` pages, different for each `seed`.
fn text_pages(pages: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(pages * PG);
    while v.len() < pages * PG {
        v.extend_from_slice(
            format!(
                "INFO worker id={} ms={}\n",
                rng.below(1 << 20),
                rng.below(999)
            )
            .as_bytes(),
        );
    }
    v.truncate(pages * PG);
    v
}

#[test]
fn compressible_runs_are_cut_in_half_random_runs_stay_whole() {
    let (_d, store) = store();
    let cs = writer::DEFAULT_CHUNK_SIZE;
    let mut random = vec![0u8; cs];
    Rng::new(5).fill(&mut random);
    // Window 0: text; window 1: random; window 2: text from its third page on.
    let mut image = text_pages(16, 1);
    image.extend_from_slice(&random);
    image.extend_from_slice(&vec![0u8; 2 * PG]);
    image.extend_from_slice(&text_pages(14, 2));
    let lens = |store: &Store, policy: CodecPolicy| -> Vec<(u64, u32)> {
        let mut w = store
            .writer_with(writer::WriterOptions {
                codec: policy,
                ..Default::default()
            })
            .unwrap();
        w.object("m").unwrap().add_pages(0, &image).unwrap();
        let id = w.commit(None).unwrap();
        let r = store.reader(&id.to_string()).unwrap();
        let mut back = vec![1u8; image.len()];
        r.read_range("m", 0, &mut back).unwrap();
        assert!(back == image);
        r.manifest()
            .extents
            .iter()
            .map(|e| (e.vaddr, e.len))
            .collect()
    };
    let full = u32::try_from(cs).unwrap();
    let half = full / 2;
    let w2 = 2 * cs as u64;
    assert_eq!(
        lens(&store, CodecPolicy::default()),
        [
            (0, half),
            (cs as u64 / 2, half),
            (cs as u64, full),
            (w2 + 2 * PAGE_SIZE, half - 2 * 4096),
            (w2 + cs as u64 / 2, half),
        ]
    );
    // Nothing is compressed, nothing is cut.
    assert_eq!(
        lens(&store, CodecPolicy::None),
        [
            (0, full),
            (cs as u64, full),
            (w2 + 2 * PAGE_SIZE, full - 2 * 4096)
        ]
    );
    // The same memory again: the same cuts, nothing new stored.
    let mut w = store.writer().unwrap();
    w.object("m").unwrap().add_pages(0, &image).unwrap();
    assert_eq!(w.stats().new_chunks, 0, "{:?}", w.stats());
}

#[test]
fn names_move_and_old_snapshot_stays_until_gc() {
    let (_d, store) = store();
    let a = write_image(&store, &memory_image(8 * PG, 1), 0, 8, Some("m:v1"));
    let b = write_image(&store, &memory_image(8 * PG, 2), 0, 8, Some("m:v1"));
    assert_ne!(a, b);
    assert_eq!(store.resolve("m:v1").unwrap(), b);
    assert!(store
        .reader(&a.to_string())
        .unwrap()
        .verify()
        .failures
        .is_empty());
    let report = store.gc().unwrap();
    assert_eq!(report.snapshots_removed, 1);
    assert!(report.chunks_removed > 0);
    assert!(matches!(
        store.resolve(&a.to_string()),
        Err(Error::NotFound { .. })
    ));
    assert!(store.reader("m:v1").unwrap().verify().failures.is_empty());
    let e = store.resolve("registry.example.com/m:v1").unwrap_err();
    assert!(e
        .to_string()
        .contains("registry references are not supported yet"));
    // remove: a name, then a snapshot by ID.
    store.tag(&b, "other").unwrap();
    assert_eq!(store.remove("m:v1").unwrap().names, vec!["m:v1"]);
    let rep = store.remove(&b.hex()[..10]).unwrap();
    assert_eq!(rep.snapshot, Some(b));
    assert_eq!(rep.names, vec!["other:latest"]);
    let rep = store.gc().unwrap();
    assert!(rep.packs_removed > 0, "{rep:?}");
    assert!(pack_files(&store).is_empty());
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn reader_lease_pins_against_gc_and_rm() {
    let (_d, store) = store();
    let id = write_image(&store, &memory_image(8 * PG, 1), 0, 8, None);
    let r = store.reader(&id.to_string()).unwrap();
    assert!(matches!(
        store.remove(&id.to_string()),
        Err(Error::InUse { .. })
    ));
    let rep = store.gc().unwrap();
    assert_eq!(rep.snapshots_removed, 0);
    assert!(r.verify().failures.is_empty());
    drop(r);
    assert_eq!(store.gc().unwrap().snapshots_removed, 1);
}

#[test]
fn a_pin_keeps_what_a_name_resolved_to_while_the_name_moves_and_gc_runs() {
    let (_d, store) = store();
    let first = write_image(&store, &memory_image(8 * PG, 1), 0, 8, Some("p"));
    let pin = store.pin("p").unwrap();
    assert_eq!(*pin.id(), first);
    let second = write_image(&store, &memory_image(8 * PG, 2), 0, 8, Some("p"));
    assert_ne!(first, second);
    assert!(matches!(
        store.remove(&first.to_string()),
        Err(Error::InUse { .. })
    ));
    assert_eq!(store.gc().unwrap().snapshots_removed, 0);
    let r = store.reader(&first.to_string()).unwrap();
    assert!(r.verify().failures.is_empty());
    drop(r);
    drop(pin);
    assert_eq!(store.gc().unwrap().snapshots_removed, 1);
    assert!(matches!(
        store.reader(&first.to_string()),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(store.pin("absent"), Err(Error::NotFound { .. })));
}

#[test]
fn flipped_chunk_or_damaged_pack_is_an_error_naming_it() {
    let (_d, store) = store();
    let image = memory_image(32 * PG, 11);
    let id = write_image(&store, &image, 0, 32, Some("c"));
    let r = store.reader("c").unwrap();
    let ext = r.manifest().extents[0];
    let loc = store.locate_chunk(&ext.chunk).unwrap().unwrap();
    let path = loc.path.clone();
    let good = fs::read(&path).unwrap();
    let check = |what: &str| {
        let mut r = store.reader("c").unwrap();
        r.set_cache_chunks(0);
        let mut page = [7u8; PG];
        let err = r.read_page("pid-1", ext.vaddr, &mut page).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&ext.chunk.hex()) && msg.contains(&id.hex()),
            "{what}: {msg}"
        );
        assert!(
            page.iter().all(|&b| b == 7),
            "{what}: page untouched on error"
        );
        let mut buf = vec![0u8; image.len()];
        assert!(r.read_range("pid-1", 0, &mut buf).is_err(), "{what}");
        let rep = r.verify();
        assert_eq!(rep.failures.len(), 1, "{what}");
        assert!(rep.failures[0].to_string().contains(&ext.chunk.hex()));
    };
    let start = usize::try_from(loc.offset).unwrap();
    let len = usize::try_from(loc.len).unwrap();
    // Magic, version, codec, lengths, payload: every byte of the record is checked.
    for pos in [0, 4, 5, 9, 13, 16, len / 2, len - 1] {
        let mut bad = good.clone();
        bad[start + pos] ^= 1;
        fs::write(&path, &bad).unwrap();
        check(&format!("flip at {pos} of the record"));
    }
    // A damaged index, a truncated or missing pack: the snapshot does not open, and the
    // error names the pack.
    let pack_err = |what: &str| {
        let err = store.reader("c").err().unwrap();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::BadPack { .. }) && msg.contains(&path.display().to_string()),
            "{what}: {msg}"
        );
        msg
    };
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 80] ^= 1;
    fs::write(&path, &bad).unwrap();
    assert!(pack_err("index").contains("checksum"));
    fs::write(&path, &good[..good.len() - 1]).unwrap();
    pack_err("truncated");
    fs::remove_file(&path).unwrap();
    assert!(pack_err("missing").contains(&id.hex()));
    fs::write(&path, &good).unwrap();
    assert!(store.verify("c").unwrap().failures.is_empty());
    drop(r);
}

#[test]
fn gc_rewrites_a_pack_with_dead_chunks_and_keeps_the_live_ones() {
    let (_d, store) = store();
    // a: two halves; b: a's first half and new pages. Dropping a kills its second half.
    let first = memory_image(64 * PG, 21);
    let second = memory_image(64 * PG, 22);
    let mut w = store.writer().unwrap();
    w.object("pid-1").unwrap().add_pages(0, &first).unwrap();
    w.object("pid-1")
        .unwrap()
        .add_pages(first.len() as u64, &second)
        .unwrap();
    w.commit(Some("a")).unwrap();
    let mut w = store.writer().unwrap();
    w.object("pid-1").unwrap().add_pages(0, &first).unwrap();
    let mut third = vec![0u8; 16 * PG];
    Rng::new(23).fill(&mut third);
    w.object("other").unwrap().add_pages(0, &third).unwrap();
    w.commit(Some("b")).unwrap();
    let b = store.reader("b").unwrap();
    assert_eq!(b.manifest().meta.packs.len(), 2, "a's pack and its own");
    drop(b);
    let packs = pack_files(&store);
    let chunks_before = stored_chunks(&store);
    store.remove("a").unwrap();
    let rep = store.gc().unwrap();
    assert!(
        rep.packs_rewritten == 1 && rep.chunks_removed > 0 && rep.bytes_freed > 0,
        "{rep:?}"
    );
    assert_eq!(pack_files(&store), packs, "rewritten under the same name");
    assert_eq!(
        stored_chunks(&store),
        chunks_before - usize::try_from(rep.chunks_removed).unwrap()
    );
    let r = store.reader("b").unwrap();
    assert!(r.verify().failures.is_empty());
    let mut back = vec![0u8; first.len()];
    r.read_range("pid-1", 0, &mut back).unwrap();
    assert!(back == first);
    // Nothing more to collect.
    drop(r);
    let again = store.gc().unwrap();
    assert_eq!((again.chunks_removed, again.packs_removed), (0, 0));
}

#[test]
fn corrupt_or_unknown_manifest_version() {
    let (_d, store) = store();
    let id = write_image(&store, &memory_image(8 * PG, 1), 0, 8, Some("v"));
    let mut bytes = fs::read(store.manifest_path(&id)).unwrap();
    bytes[8] = 3;
    // A manifest of a future version, stored under its own digest.
    let id2 = SnapshotId::of_manifest(&bytes);
    fs::write(store.manifest_path(&id2), &bytes).unwrap();
    let err = store.reader(&id2.to_string()).err().unwrap();
    assert!(
        matches!(err, Error::UnsupportedVersion { found: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&id2.hex()));
    // A manifest whose bytes do not match its name.
    fs::write(store.manifest_path(&id), &bytes).unwrap();
    let err = store.reader("v").err().unwrap();
    assert!(matches!(err, Error::CorruptManifest { .. }), "{err}");
    // gc refuses to guess what a broken live manifest referenced.
    assert!(store.gc().is_err());
}

#[test]
fn working_set_sidecar() {
    let (_d, store) = store();
    let mut image = vec![9u8; 16 * PG];
    image[4 * PG..5 * PG].fill(0);
    let id = write_image(&store, &image, 0x1000, 16, Some("ws"));
    let before = store.resolve("ws").unwrap();
    store
        .set_working_set(
            &id,
            &[
                ("pid-1", 0x1000 + 9 * PAGE_SIZE),
                ("pid-1", 0x1000 + 2 * PAGE_SIZE),
            ],
        )
        .unwrap();
    assert_eq!(
        store.resolve("ws").unwrap(),
        before,
        "the ID does not change"
    );
    let r = store.reader("ws").unwrap();
    let order = r.page_order().unwrap();
    assert_eq!(order[0].vaddr, 0x1000 + 9 * PAGE_SIZE);
    assert_eq!(order[1].vaddr, 0x1000 + 2 * PAGE_SIZE);
    assert_eq!(order.len(), 15, "every data page once, holes excluded");
    store.set_working_set(&id, &[("pid-1", 0x1000)]).unwrap();
    assert_eq!(
        store.working_set(&id).unwrap().unwrap(),
        vec![("pid-1".to_string(), 0x1000)]
    );
    assert!(store
        .set_working_set(&id, &[("pid-1", 0x100_0000)])
        .is_err());
    assert!(r.verify().failures.is_empty());
}

#[test]
fn bad_input_is_refused() {
    let (_d, store) = store();
    let mut w = store.writer().unwrap();
    let mut o = w.object("p").unwrap();
    assert!(o.add_pages(1, &[0u8; PG]).is_err());
    assert!(o.add_pages(0, &[0u8; 100]).is_err());
    o.add_pages(0, &[1u8; 2 * PG]).unwrap();
    assert!(o.add_pages(PAGE_SIZE, &[1u8; PG]).is_err(), "overlap");
    w.add_blob("b", b"x").unwrap();
    assert!(w.add_blob("b", b"y").is_err());
    assert!(w.object("b").is_err());
    assert!(w.commit(Some("bad name!")).is_err());
}

#[test]
fn a_writer_that_failed_to_write_commits_nothing() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: mounting a full tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    fs::create_dir(&mnt).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(&mnt);
    let store = Store::open(mnt.join("store")).unwrap();
    let mut w = store.writer().unwrap();
    let mut random = vec![0u8; 4 << 20];
    Rng::new(9).fill(&mut random);
    let err = w.object("m").unwrap().add_pages(0, &random).unwrap_err();
    assert!(err.to_string().contains("pack"), "{err}");
    // Nothing more is taken, and nothing is committed.
    let more = w
        .object("m")
        .unwrap()
        .add_pages(8 << 20, &[1u8; PG])
        .unwrap_err();
    assert!(more.to_string().contains("earlier write failed"), "{more}");
    let commit = w.commit(Some("full")).unwrap_err();
    assert!(
        commit.to_string().contains("earlier write failed"),
        "{commit}"
    );
    assert!(store.resolve("full").is_err());
}

#[test]
fn concurrent_writers_and_gc() {
    let (_d, store) = store();
    let shared = memory_image(24 * PG, 5);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let store = store.clone();
            let shared = &shared;
            s.spawn(move || {
                for round in 0..3u64 {
                    let mut w = store.writer().unwrap();
                    w.object("shared").unwrap().add_pages(0, shared).unwrap();
                    let own = memory_image(8 * PG, 100 + t * 10 + round);
                    w.object("own").unwrap().add_pages(0, &own).unwrap();
                    w.commit(Some(&format!("w{t}"))).unwrap();
                }
            });
        }
        let store = store.clone();
        s.spawn(move || {
            for _ in 0..5 {
                store.gc().unwrap();
            }
        });
    });
    store.gc().unwrap();
    for t in 0..3 {
        let r = store.reader(&format!("w{t}")).unwrap();
        assert!(r.verify().failures.is_empty());
        let mut back = vec![0u8; shared.len()];
        r.read_range("shared", 0, &mut back).unwrap();
        assert!(back == shared);
    }
    assert_eq!(store.list().unwrap().len(), 3);
}

/// The child side of `sigkill_mid_commit`: writes forever into the store named by the env var.
#[test]
fn sigkill_child() {
    let Ok(dir) = std::env::var("CRYO_SNAPSHOT_KILL_CHILD") else {
        return;
    };
    let store = Store::open(dir).unwrap();
    let mut w = store.writer().unwrap();
    let mut rng = Rng::new(99);
    let mut buf = vec![0u8; 16 * PG];
    for i in 0u64.. {
        rng.fill(&mut buf);
        w.object("big")
            .unwrap()
            .add_pages(i * buf.len() as u64, &buf)
            .unwrap();
        if i == 8 {
            fs::write(store.root().join("..").join("child-started"), b"").unwrap();
        }
    }
}

#[test]
fn sigkill_mid_commit_leaves_store_readable_and_gc_cleans() {
    let (d, store) = store();
    let image = memory_image(16 * PG, 1);
    let id = write_image(&store, &image, 0, 16, Some("old"));
    let live_packs = pack_files(&store);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::sigkill_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CRYO_SNAPSHOT_KILL_CHILD", store.root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = d.path().join("child-started");
    let t0 = std::time::Instant::now();
    while !marker.exists() {
        assert!(t0.elapsed().as_secs() < 60, "child never started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(30));
    // SAFETY: kill takes a pid we spawned and a signal number; no memory is involved.
    let rc = unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGKILL) };
    assert_eq!(rc, 0);
    child.wait().unwrap();
    assert_eq!(
        pack_files(&store),
        live_packs,
        "no pack of the child's committed"
    );
    let debris_bytes: u64 = fs::read_dir(store.tmp_dir())
        .unwrap()
        .flat_map(|w| fs::read_dir(w.unwrap().path()).unwrap())
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        debris_bytes > 8 * 16 * PG as u64,
        "the child's half-written pack is left"
    );
    // Old snapshot reads fine.
    let r = store.reader("old").unwrap();
    let mut back = vec![0u8; image.len()];
    r.read_range("pid-1", 0, &mut back).unwrap();
    assert!(back == image);
    drop(r);
    let rep = store.gc().unwrap();
    assert!(rep.temp_removed > 0, "{rep:?}");
    assert_eq!(pack_files(&store), live_packs);
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    assert_eq!(store.resolve("old").unwrap(), id);
    assert!(store.verify("old").unwrap().failures.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any set of non-overlapping page batches, in any order, with zero pages among them,
    /// reads back exactly; pages outside them are refused.
    #[test]
    fn streamed_batches_round_trip(
        seed in any::<u64>(),
        batches in proptest::collection::vec((0u64..64, 1usize..24), 1..8),
        chunk_pages in 1usize..20,
    ) {
        let (_d, store) = store();
        let mut rng = Rng::new(seed);
        // Lay batches out without overlap: each at a distinct slot of 32 pages.
        let mut placed: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut slots: Vec<u64> = batches.iter().map(|b| b.0).collect();
        slots.sort_unstable();
        slots.dedup();
        for (i, slot) in slots.iter().enumerate() {
            let pages = batches[i % batches.len()].1;
            let mut data = vec![0u8; pages * PG];
            for p in 0..pages {
                if rng.below(3) != 0 {
                    let fill = u8::try_from(rng.below(4)).unwrap();
                    if fill == 0 { rng.fill(&mut data[p * PG..(p + 1) * PG]); }
                    else { data[p * PG..(p + 1) * PG].fill(fill); }
                }
            }
            placed.push((slot * 32 * PAGE_SIZE, data));
        }
        let opts = writer::WriterOptions { chunk_size: chunk_pages * PG, ..Default::default() };
        let mut w = store.writer_with(opts).unwrap();
        // Stream each batch in random pieces, batches in reverse order.
        for (addr, data) in placed.iter().rev() {
            let mut off = 0;
            while off < data.len() {
                let n = (usize::try_from(rng.below(5)).unwrap() + 1).min(data.len() / PG - off / PG) * PG;
                w.object("o").unwrap().add_pages(addr + off as u64, &data[off..off + n]).unwrap();
                off += n;
            }
        }
        let blob: Vec<u8> = (0..usize::try_from(rng.below(3 * PG as u64)).unwrap()).map(|i| u8::try_from(i % 7).unwrap()).collect();
        w.add_blob("blob", &blob).unwrap();
        let id = w.commit(None).unwrap();
        let r = store.reader(&id.to_string()).unwrap();
        let mut page = [0u8; PG];
        for (addr, data) in &placed {
            for p in 0..data.len() / PG {
                r.read_page("o", addr + (p * PG) as u64, &mut page).unwrap();
                prop_assert!(page[..] == data[p * PG..(p + 1) * PG]);
            }
            prop_assert!(r.read_page("o", addr + data.len() as u64, &mut page).is_err());
        }
        prop_assert!(r.read_page("o", 1 << 40, &mut page).is_err());
        prop_assert_eq!(r.read_blob("blob").unwrap(), blob);
        let objs = r.read_object("o").unwrap();
        let total: usize = objs.iter().map(|(_, b)| b.len()).sum();
        prop_assert_eq!(total, placed.iter().map(|(_, d)| d.len()).sum::<usize>());
        prop_assert!(r.verify().failures.is_empty());
    }
}

#[test]
fn a_store_of_another_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("layout"), "cryo-store 1\n").unwrap();
    fs::create_dir(dir.path().join("chunks")).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::UnsupportedStore { .. })
            && msg.contains("cryo-store 1")
            && msg.contains(STORE_LAYOUT),
        "{msg}"
    );
}

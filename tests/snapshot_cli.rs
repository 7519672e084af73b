//! `cryo snapshot ls|inspect|verify|rm|gc` over a store written with the cryo-snapshot
//! library: sizes, dedup, JSON output, a corrupt chunk named by `verify`, and gc reclaiming
//! what `rm` released. No root needed.

use std::path::Path;
use std::process::Command;

use cryo_snapshot::Store;
use serde_json::Value;

fn cryo(store: &Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_cryo"))
        .arg("snapshot")
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn json(store: &Path, args: &[&str]) -> Value {
    let (code, out, err) = cryo(store, args);
    assert_eq!(code, 0, "cryo snapshot {args:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

/// 1 MiB of pages: a quarter random-ish, a quarter zero, half repeating text.
fn image(seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; 1 << 20];
    let mut x = seed | 1;
    for b in &mut v[..1 << 18] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x.to_le_bytes()[0];
    }
    for (i, b) in v[1 << 19..].iter_mut().enumerate() {
        *b = b"cryo snapshot "[i % 14];
    }
    v
}

fn write(store: &Store, name: &str, data: &[u8]) {
    let mut w = store.writer().unwrap();
    w.object("pid-1")
        .unwrap()
        .add_pages(0x7f00_0000_0000, data)
        .unwrap();
    w.add_blob("core-1.img", b"registers").unwrap();
    w.commit(Some(name)).unwrap();
}

#[test]
fn ls_inspect_verify_rm_gc() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    write(&store, "app:v1", &image(7));
    let packs = walk(&root.join("packs"));
    write(&store, "app:v2", &image(7)); // same memory: shares every chunk
    assert_eq!(
        walk(&root.join("packs")),
        packs,
        "identical memory adds no chunk, so no pack"
    );

    // One snapshot with two names, or two (when the writes fell in different seconds, their
    // manifests' creation times differ) sharing every chunk.
    let ls = json(&root, &["ls", "--format", "json"]);
    let list = ls.as_array().unwrap();
    assert!(matches!(list.len(), 1 | 2), "{ls}");
    let (code, table, _) = cryo(&root, &["ls"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("app:v1") && table.contains("app:v2"),
        "{table}"
    );

    let info = json(&root, &["inspect", "app:v1", "--format", "json"]);
    assert_eq!(
        info["logical_bytes"].as_u64().unwrap(),
        (1 << 20) + 9,
        "pages + blob: {info}"
    );
    assert!(
        info["stored_bytes"].as_u64().unwrap() < 1 << 19,
        "zeros and text compress: {info}"
    );
    let (code, text, _) = cryo(&root, &["inspect", "app:v1"]);
    assert_eq!(code, 0);
    assert!(text.contains("dedup"), "{text}");

    write(&store, "other:v1", &image(9));
    let v = json(&root, &["verify", "other:v1", "--format", "json"]);
    assert_eq!(v["ok"], true, "{v}");

    // Flip a byte in one chunk only `other` uses: verify names it and exits 1.
    let other = json(&root, &["inspect", "other:v1", "--format", "json"]);
    let exclusive = other["exclusive_stored_bytes"].as_u64().unwrap();
    assert!(exclusive > 0, "{other}");
    let chunks_of = |name: &str| -> std::collections::BTreeSet<_> {
        let m = store.load_manifest(&store.resolve(name).unwrap()).unwrap();
        m.extents.iter().map(|e| e.chunk).collect()
    };
    let app = chunks_of("app:v1");
    let victim = *chunks_of("other:v1")
        .iter()
        .find(|d| !app.contains(d))
        .expect("a chunk used by other:v1 only");
    let loc = store.locate_chunk(&victim).unwrap().unwrap();
    let mut bytes = std::fs::read(&loc.path).unwrap();
    bytes[usize::try_from(loc.offset + loc.len / 2).unwrap()] ^= 0xff;
    std::fs::write(&loc.path, &bytes).unwrap();
    let (code, out, _) = cryo(&root, &["verify", "other:v1"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&victim.hex()[..12]),
        "verify must name the chunk {victim}: {out}"
    );
    let v = json(&root, &["verify", "app:v1", "--format", "json"]);
    assert_eq!(v["ok"], true, "{v}");

    // rm releases the names; gc removes the chunks only `other` used, never app's.
    let (code, _, err) = cryo(&root, &["rm", "other:v1"]);
    assert_eq!(code, 0, "{err}");
    let gc = json(&root, &["gc", "--format", "json"]);
    assert!(gc["chunks_removed"].as_u64().unwrap() > 0, "{gc}");
    assert!(
        store.locate_chunk(&victim).unwrap().is_none(),
        "gc left the unreferenced chunk: {gc}"
    );
    let v = json(&root, &["verify", "app:v2", "--format", "json"]);
    assert_eq!(v["ok"], true, "{v}");

    // Unknown names are errors that say what was asked.
    let (code, _, err) = cryo(&root, &["inspect", "nope:v9"]);
    assert_eq!(code, 1);
    assert!(err.contains("nope"), "{err}");
}

fn walk(dir: &Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.insert(p);
        }
    }
    out
}

//! Times the snapshot store against the reference CLIs on the same raw image, interleaved, in
//! one run: write (`zstd -1 -T0`, `lz4 -1`), full read (`zstd -d`, `lz4 -d`), single random page
//! fetch, and the cost of a second snapshot of unchanged memory. Prints median / p10 / p90 and
//! the ratios that docs/BENCHMARKS.md, "Snapshot store" records.
//!
//! cargo run --release -p cryo-snapshot --example store_vs_cli -- \
//!     [--size-mib 1024] [--reps 5] [--dir /dev/shm/cryo-bench] [--codec zstd1|zstd3|lz4] \
//!     [--chunk-kib 64] [--batch-mib 4]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cryo_snapshot::workload::{fill_memory_image, Rng};
use cryo_snapshot::{CodecPolicy, Store, WriterOptions};

struct Args {
    size_mib: usize,
    reps: usize,
    dir: PathBuf,
    codec: CodecPolicy,
    chunk_kib: usize,
    batch_mib: usize,
}

fn args() -> Args {
    let mut a = Args {
        size_mib: 1024,
        reps: 5,
        dir: PathBuf::from("/dev/shm/cryo-bench"),
        codec: CodecPolicy::Zstd(3),
        chunk_kib: 64,
        batch_mib: 4,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < v.len() {
        let val = &v[i + 1];
        match v[i].as_str() {
            "--size-mib" => a.size_mib = val.parse().unwrap_or(a.size_mib),
            "--reps" => a.reps = val.parse().unwrap_or(a.reps),
            "--dir" => a.dir = PathBuf::from(val),
            "--chunk-kib" => a.chunk_kib = val.parse().unwrap_or(a.chunk_kib),
            "--batch-mib" => a.batch_mib = val.parse().unwrap_or(a.batch_mib),
            "--codec" => {
                a.codec = match val.as_str() {
                    "lz4" => CodecPolicy::Lz4,
                    "none" => CodecPolicy::None,
                    s => CodecPolicy::Zstd(s.trim_start_matches("zstd").parse().unwrap_or(1)),
                }
            }
            other => eprintln!("ignoring {other}"),
        }
        i += 2;
    }
    a
}

fn run(cmd: &str, args: &[&str]) -> Duration {
    let t = Instant::now();
    let st = Command::new(cmd)
        .args(args)
        .status()
        .expect("spawn reference CLI");
    assert!(st.success(), "{cmd} {args:?} failed");
    t.elapsed()
}

fn stats(name: &str, v: &mut [Duration]) -> f64 {
    v.sort();
    let pick = |pct: usize| v[(v.len() - 1) * pct / 100].as_secs_f64() * 1e3;
    println!(
        "{name:<28} median {:>9.1} ms   p10 {:>9.1}   p90 {:>9.1}",
        pick(50),
        pick(10),
        pick(90)
    );
    pick(50)
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let md = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            if md.is_dir() {
                total += dir_bytes(&e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

/// Streams the image file into a snapshot in page-server-like batches (read into one reused
/// buffer, as a page server receives them), then commits.
fn write_snapshot(
    store: &Store,
    raw: &Path,
    opts: WriterOptions,
    batch: usize,
    name: &str,
) -> Duration {
    use std::io::Read;
    let t = Instant::now();
    let mut f = std::fs::File::open(raw).expect("open image");
    let mut buf = vec![0u8; batch];
    let mut w = store.writer_with(opts).expect("writer");
    let mut at = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]).expect("read image") {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        w.object("pid-1")
            .expect("object")
            .add_pages(at, &buf[..n])
            .expect("add_pages");
        at += n as u64;
    }
    w.commit(Some(name)).expect("commit");
    t.elapsed()
}

fn main() {
    let a = args();
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir).expect("create bench dir");
    let raw = a.dir.join("image.raw");
    let size = a.size_mib << 20;
    {
        let mut image = vec![0u8; size];
        fill_memory_image(&mut image, 1);
        std::fs::write(&raw, &image).expect("write image");
    }
    let raw_s = raw.to_str().expect("utf-8 path");
    let zst = a.dir.join("image.zst");
    let zst_s = zst.to_str().expect("utf-8 path");
    let lz4 = a.dir.join("image.lz4");
    let lz4_s = lz4.to_str().expect("utf-8 path");
    let opts = WriterOptions {
        chunk_size: a.chunk_kib << 10,
        codec: a.codec,
    };
    println!(
        "image {} MiB (seed 1: 1/2 random, 1/4 zero pages, 1/4 text), {} reps, dir {}, codec {:?}, chunk {} KiB, batches of {} MiB, {} CPUs",
        a.size_mib,
        a.reps,
        a.dir.display(),
        a.codec,
        a.chunk_kib,
        a.batch_mib,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let (mut zw, mut lw, mut sw, mut zr, mut lr, mut sr) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut out = vec![0u8; size];
    let mut store_bytes = 0;
    let store_dir = a.dir.join("store");
    for rep in 0..a.reps {
        zw.push(run("zstd", &["-1", "-T0", "-q", "-f", raw_s, "-o", zst_s]));
        lw.push(run("lz4", &["-1", "-q", "-f", raw_s, lz4_s]));
        let _ = std::fs::remove_dir_all(&store_dir);
        let store = Store::open(&store_dir).expect("store");
        // The image comes from the same tmpfs file the CLIs read.
        sw.push(write_snapshot(
            &store,
            &raw,
            opts,
            a.batch_mib << 20,
            "bench",
        ));
        store_bytes = dir_bytes(&store_dir.join("packs")) + dir_bytes(&store_dir.join("manifests"));
        zr.push(run("zstd", &["-d", "-q", "-f", zst_s, "-o", "/dev/null"]));
        lr.push(run("lz4", &["-d", "-q", "-f", lz4_s, "/dev/null"]));
        let t = Instant::now();
        let r = store.reader("bench").expect("reader");
        r.read_range("pid-1", 0, &mut out).expect("read");
        sr.push(t.elapsed());
        if rep == 0 {
            let image = std::fs::read(&raw).expect("read image");
            assert!(out == image, "read-back differs from the image");
        }
    }
    println!("-- write (raw image on tmpfs -> compressed output on tmpfs)");
    let zwm = stats("zstd -1 -T0", &mut zw);
    let lwm = stats("lz4 -1", &mut lw);
    let swm = stats("cryo store write+commit", &mut sw);
    println!("-- full read (output: /dev/null for the CLIs, a buffer for the store)");
    let zrm = stats("zstd -d", &mut zr);
    let lrm = stats("lz4 -d", &mut lr);
    let srm = stats("cryo store parallel read", &mut sr);
    let zsize = std::fs::metadata(&zst).map_or(0, |m| m.len());
    let lsize = std::fs::metadata(&lz4).map_or(0, |m| m.len());
    println!("-- sizes (bytes)");
    println!("raw {size}  zstd -1 {zsize}  lz4 -1 {lsize}  store (chunks+manifest) {store_bytes}");
    let store = Store::open(&store_dir).expect("store");
    // Second snapshot of unchanged memory.
    let before = dir_bytes(&store_dir.join("packs")) + dir_bytes(&store_dir.join("manifests"));
    let d2 = write_snapshot(&store, &raw, opts, a.batch_mib << 20, "bench:second");
    let after = dir_bytes(&store_dir.join("packs")) + dir_bytes(&store_dir.join("manifests"));
    // Random page fetch: fresh reader, pages drawn uniformly over the image.
    let r = store.reader("bench").expect("reader");
    let mut rng = Rng::new(42);
    let mut page = [0u8; 4096];
    let pages = (size / 4096) as u64;
    let mut lat = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let p = rng.below(pages) * 4096;
        let t = Instant::now();
        r.read_page("pid-1", p, &mut page).expect("page");
        lat.push(t.elapsed());
    }
    lat.sort();
    let us = |per_mille: usize| lat[(lat.len() - 1) * per_mille / 1000].as_secs_f64() * 1e6;
    println!("-- ratios");
    println!(
        "write throughput  store / zstd -1 -T0: {:.2}x   (store / lz4: {:.2}x)",
        zwm / swm,
        lwm / swm
    );
    println!(
        "output size       store / zstd -1:      {:.3}x   (store / lz4: {:.3}x)",
        store_bytes as f64 / zsize as f64,
        store_bytes as f64 / lsize as f64
    );
    println!(
        "full read         store / zstd -d:      {:.2}x   (store / lz4 -d: {:.2}x)",
        zrm / srm,
        lrm / srm
    );
    println!(
        "random page fetch (20000, 64-chunk cache): median {:.1} us  p99 {:.1} us  max {:.1} us",
        us(500),
        us(990),
        us(1000)
    );
    println!(
        "second snapshot of unchanged memory: {:.1} ms, adds {} bytes = {:.4}% of the first",
        d2.as_secs_f64() * 1e3,
        after - before,
        (after - before) as f64 * 100.0 / before as f64
    );
    let _ = std::fs::remove_dir_all(&a.dir);
}

//! Criterion micro-benchmarks of the store on the reference workload (workload.rs, seed 1):
//! write+commit, full parallel read, and single-page fetch (cold chunk and cached chunk); then
//! the same on a real process image, the memory of a live python3 with a 64 MiB heap
//! (workload::PythonHeap; skipped, saying so, without python3). Ratios against the zstd/lz4
//! CLIs come from `cryo-bench store` (`--image python` for the real process).
//!
//! cargo bench -p cryo-snapshot --bench store

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use cryo_snapshot::workload::{memory_image, PythonHeap, Rng};
use cryo_snapshot::{CodecPolicy, Store, WriterOptions};

const SIZE: usize = 64 << 20;
const BATCH: usize = 4 << 20;

fn write(store: &Store, image: &[u8], opts: WriterOptions, name: &str) {
    let mut w = store.writer_with(opts).expect("writer");
    for (i, piece) in image.chunks(BATCH).enumerate() {
        w.object("pid-1")
            .expect("object")
            .add_pages((i * BATCH) as u64, piece)
            .expect("add_pages");
    }
    w.commit(Some(name)).expect("commit");
}

/// A scratch directory for stores, on tmpfs where there is one.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cryo-bench-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir")
}

/// Group `name`: writing `image` with each codec, then reading it whole. Returns the store the
/// image was written to (default codec, snapshot "bench") for page fetches.
fn write_and_read(
    c: &mut Criterion,
    dir: &std::path::Path,
    name: &str,
    image: &[u8],
    codecs: &[(&str, CodecPolicy)],
) -> Store {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(image.len() as u64));
    g.sample_size(10);
    for &(label, codec) in codecs {
        let opts = WriterOptions {
            codec,
            ..WriterOptions::default()
        };
        g.bench_with_input(BenchmarkId::new("write", label), &opts, |b, opts| {
            b.iter(|| {
                let path = dir.join(format!("w-{label}"));
                let _ = std::fs::remove_dir_all(&path);
                let store = Store::open(&path).expect("store");
                write(&store, image, *opts, "bench");
            });
        });
    }
    let store = Store::open(dir.join("r")).expect("store");
    write(&store, image, WriterOptions::default(), "bench");
    let mut out = vec![0u8; image.len()];
    g.bench_function("read_full", |b| {
        b.iter(|| {
            let r = store.reader("bench").expect("reader");
            r.read_range("pid-1", 0, &mut out).expect("read");
        });
    });
    g.finish();
    store
}

/// Random single-page fetches from `store`'s "bench" snapshot of `len` bytes, through the page
/// cache (`cached`) or with it off.
fn fetch(g: &mut criterion::BenchmarkGroup<'_, WallTime>, store: &Store, len: usize, cached: bool) {
    let mut r = store.reader("bench").expect("reader");
    if !cached {
        r.set_cache_chunks(0);
    }
    let mut rng = Rng::new(7);
    let mut page = [0u8; 4096];
    let pages = (len / 4096) as u64;
    let name = if cached {
        "fetch_random_cached"
    } else {
        "fetch_random_uncached"
    };
    g.bench_function(name, |b| {
        b.iter(|| {
            r.read_page("pid-1", rng.below(pages) * 4096, &mut page)
                .expect("page")
        });
    });
}

fn benches(c: &mut Criterion) {
    let image = memory_image(SIZE, 1);
    let dir = scratch();
    let codecs = [
        ("zstd3", CodecPolicy::Zstd(3)),
        ("zstd1", CodecPolicy::Zstd(1)),
        ("lz4", CodecPolicy::Lz4),
    ];
    let store = write_and_read(c, dir.path(), "store", &image, &codecs);
    let mut g = c.benchmark_group("page");
    fetch(&mut g, &store, SIZE, true);
    fetch(&mut g, &store, SIZE, false);
    g.finish();
}

fn real_process(c: &mut Criterion) {
    let heap = match PythonHeap::start(64) {
        Ok(h) => h,
        Err(e) => {
            println!("store_python: skipped, no python3 (3.9 or later) to build a real heap ({e})");
            return;
        }
    };
    let image = heap.memory().expect("python3's memory");
    drop(heap);
    let dir = scratch();
    let codecs = [("zstd3", CodecPolicy::Zstd(3))];
    let store = write_and_read(c, dir.path(), "store_python", &image, &codecs);
    let mut g = c.benchmark_group("store_python");
    fetch(&mut g, &store, image.len(), false);
    g.finish();
}

criterion_group!(store_benches, benches, real_process);
criterion_main!(store_benches);

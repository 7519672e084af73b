//! Criterion micro-benchmarks of the lazy-pages server's fault path (lazy/daemon.rs) on the
//! reference workload (workload.rs, seed 1, 64 MiB): a mapping of this process registered on
//! a userfaultfd, as CRIU's restorer leaves a restored task, served from the store by
//! `serve_fds`:
//!
//! - `lazy/fill`: from registration until every page is in (the server's background fill,
//!   the engine of a lazy restore's "every page in" and of an eager restore from the store);
//! - `lazy/fault_then_fill`: the same with this thread touching 256 pages spread over the
//!   mapping meanwhile (faults served between fill copies).
//!
//! Needs userfaultfd (root, or vm.unprivileged_userfaultfd=1); says "skipped:" otherwise.
//!
//! cargo bench -p cryo-snapshot --bench lazy

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cryo_snapshot::lazy::uffd::open_registered;
use cryo_snapshot::lazy::{serve_fds, LazyPlan, ServeOptions, TaskPlan};
use cryo_snapshot::workload::memory_image;
use cryo_snapshot::Store;

const SIZE: usize = 64 << 20;
const PAGE: usize = 4096;
/// Where every round maps the restored memory: the address its pages have in the snapshot.
const BASE: u64 = 0x5a00_0000_0000;

/// A fresh private anonymous mapping of `len` bytes at `addr`.
fn map(addr: u64, len: usize) -> u64 {
    // SAFETY: a new private anonymous mapping at an address nothing else here uses
    // (MAP_FIXED_NOREPLACE fails rather than replace a mapping).
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap at {addr:#x}");
    p as u64
}

fn unmap(addr: u64, len: usize) {
    // SAFETY: `addr` is a mapping of `len` bytes made by `map` and no longer used.
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

/// One lazy restore of the image into a new mapping; `touch` pages are read meanwhile.
fn serve_once(store: &Store, touch: &[usize]) {
    let addr = map(BASE, SIZE);
    let uffd = open_registered(addr, SIZE as u64).expect("userfaultfd");
    let plan = LazyPlan {
        tasks: [(
            1,
            TaskPlan {
                object: "pid-1".into(),
                ranges: vec![(addr, addr + SIZE as u64)],
            },
        )]
        .into(),
    };
    let reader = store.reader("bench").expect("reader");
    let server = std::thread::spawn(move || {
        serve_fds(reader, plan, ServeOptions::default(), vec![(1, uffd)])
    });
    // SAFETY: the mapping is SIZE bytes long and stays mapped until `unmap` below.
    let mem = unsafe { std::slice::from_raw_parts(addr as *const u8, SIZE) };
    let mut sum = 0u8;
    for &p in touch {
        sum ^= std::hint::black_box(mem[p * PAGE]);
    }
    std::hint::black_box(sum);
    let report = server.join().expect("server").expect("serve");
    assert_eq!(report.copied_bytes + report.zero_bytes, SIZE as u64);
    unmap(addr, SIZE);
}

fn benches(c: &mut Criterion) {
    let probe = map(BASE, PAGE);
    let usable = open_registered(probe, PAGE as u64);
    unmap(probe, PAGE);
    if let Err(e) = usable {
        println!("skipped: userfaultfd unavailable here: {e}");
        return;
    }
    let image = memory_image(SIZE, 1);
    let dir = tempfile::Builder::new()
        .prefix("cryo-bench-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir");
    let store = Store::open(dir.path().join("store")).expect("store");
    let mut w = store.writer().expect("writer");
    w.object("pid-1")
        .expect("object")
        .add_pages(BASE, &image)
        .expect("add_pages");
    w.commit(Some("bench")).expect("commit");

    let mut g = c.benchmark_group("lazy");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(SIZE as u64));
    let pages = SIZE / PAGE;
    let spread: Vec<usize> = (0..256).map(|i| (i * 7919) % pages).collect();
    for (name, touch) in [("fill", &[][..]), ("fault_then_fill", &spread[..])] {
        g.bench_function(name, |b| {
            b.iter(|| serve_once(&store, touch));
        });
    }
    g.finish();
}

criterion_group!(lazy_benches, benches);
criterion_main!(lazy_benches);

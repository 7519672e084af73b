//! What one core of this machine does per second with the work a store checkpoint and an
//! eager restore are made of, on DESIGN.md's workload: compressing and decompressing its text
//! pages (zstd at the store's levels, lz4), hashing chunks (blake3, the chunk digest), and
//! putting pages into a process (`UFFDIO_COPY` as the lazy-pages server does, and a plain
//! copy into fresh pages for comparison). docs/BENCHMARKS.md derives the floor of a checkpoint
//! and of an eager restore on two cores from these rates. A second table gives zstd's ratio,
//! speed and per-frame decode time at the store's frame sizes and levels, on the text and on a
//! live python3's memory (`workload::PythonHeap`, MIB of heap).
//!
//!     cargo run --release -p cryo-snapshot --example rates [-- MIB]
//!
//! MIB (default 128) is how much text and how much random data each measurement runs over;
//! each figure is the best of three passes. `UFFDIO_COPY` needs root (or
//! vm.unprivileged_userfaultfd); without it that line says why it is missing.

use std::time::Instant;

use cryo_snapshot::lazy::uffd;
use cryo_snapshot::workload::{memory_image, PythonHeap, Rng};

const CHUNK: usize = 64 << 10;
const PIECE: usize = 256 << 10;

/// Best of three passes of `f` over `bytes` bytes, in MB/s.
fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
    let best = (0..3)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    bytes as f64 / best / 1e6
}

fn row(what: &str, mb_s: f64, note: &str) {
    println!("| {what} | {mb_s:.0} | {note} |");
}

/// A fresh private anonymous mapping of `len` bytes (unmapped when dropped).
struct Fresh(*mut libc::c_void, usize);

impl Fresh {
    fn new(len: usize) -> Fresh {
        // SAFETY: an anonymous private mapping, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        // Small pages, as a restored heap has them (no transparent huge pages here).
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
        Fresh(p, len)
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, not used after.
        unsafe { libc::munmap(self.0, self.1) };
    }
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map_or(128, |a| a.parse().expect("MIB: a number"));
    let len = mib << 20;
    // The workload's text pages: generate four times as much and keep the text.
    let image = memory_image(len * 4, 7);
    let mut text = Vec::with_capacity(len + CHUNK);
    for page in image.chunks(4096) {
        if page.iter().take(64).all(u8::is_ascii) && page.iter().any(|&b| b != 0) {
            text.extend_from_slice(page);
        }
    }
    drop(image);
    text.truncate(text.len().min(len) / CHUNK * CHUNK);
    let mut random = vec![0u8; len];
    Rng::new(7).fill(&mut random);

    println!(
        "{} MiB of the workload's text, {mib} MiB of random bytes, one core, best of 3\n",
        text.len() >> 20
    );
    println!("| work | MB/s | note |\n|---|---:|---|");
    for level in [1, 3] {
        let mut c = zstd::bulk::Compressor::new(level).expect("zstd");
        let mut out = 0;
        let r = rate(text.len(), || {
            out = text
                .chunks(CHUNK)
                .map(|ch| c.compress(ch).expect("zstd").len())
                .sum::<usize>();
        });
        let note = format!(
            "text, 64 KiB chunks; ratio {:.3}",
            out as f64 / text.len() as f64
        );
        row(&format!("zstd {level} compress"), r, &note);
    }
    let mut out = 0;
    let r = rate(text.len(), || {
        out = text
            .chunks(CHUNK)
            .map(|ch| lz4_flex::block::compress(ch).len())
            .sum::<usize>();
    });
    let note = format!("text; ratio {:.3}", out as f64 / text.len() as f64);
    row("lz4 compress", r, &note);

    let frames: Vec<Vec<u8>> = text
        .chunks(CHUNK)
        .map(|ch| zstd::bulk::compress(ch, 3).expect("zstd"))
        .collect();
    let mut d = zstd::bulk::Decompressor::new().expect("zstd");
    let mut buf = vec![0u8; CHUNK];
    let r = rate(text.len(), || {
        for f in &frames {
            d.decompress_to_buffer(f, &mut buf).expect("zstd -d");
        }
    });
    row("zstd 3 decompress", r, "text");
    let blocks: Vec<Vec<u8>> = text.chunks(CHUNK).map(lz4_flex::block::compress).collect();
    let r = rate(text.len(), || {
        for b in &blocks {
            lz4_flex::block::decompress_into(b, &mut buf).expect("lz4 -d");
        }
    });
    row("lz4 decompress", r, "text");

    let mut x = 0u8;
    let r = rate(random.len(), || {
        for ch in random.chunks(CHUNK) {
            x ^= blake3::hash(ch).as_bytes()[0];
        }
    });
    row(
        "blake3",
        r,
        &format!("64 KiB chunks (the chunk digest) {x:02x}"),
    );

    match uffd_copy_rate(&random) {
        Ok(r) => row(
            "UFFDIO_COPY into fresh pages",
            r,
            "256 KiB per ioctl, as the lazy-pages server fills",
        ),
        Err(e) => println!("| UFFDIO_COPY into fresh pages | – | not measured: {e} |"),
    }
    let r = rate(random.len(), || {
        let dst = Fresh::new(random.len());
        for (i, ch) in random.chunks(PIECE).enumerate() {
            // SAFETY: `dst` is `random.len()` bytes long; each piece lands inside it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    ch.as_ptr(),
                    dst.0.cast::<u8>().add(i * PIECE),
                    ch.len(),
                );
            }
        }
    });
    row("memcpy into fresh pages", r, "page faults included");

    // The store's frame sizes and levels, on the text and on a real process's memory.
    println!(
        "\n| zstd frames | ratio | compress MB/s | decode µs per frame |\n|---|---:|---:|---:|"
    );
    for (level, kib) in [(3, 64), (3, 32), (1, 32)] {
        frames_row("text", &text, level, kib);
    }
    match PythonHeap::start(u64::try_from(mib).unwrap_or(128)).and_then(|h| h.memory()) {
        Ok(heap) => {
            for level in [3, 1] {
                frames_row("python3 heap", &heap, level, 32);
            }
        }
        Err(e) => println!("| python3 heap | – | – | not measured: {e} |"),
    }
}

/// One row of the frames table: `data` cut into `kib` KiB frames at zstd `level`, best of
/// three passes each way.
fn frames_row(what: &str, data: &[u8], level: i32, kib: usize) {
    let pieces: Vec<&[u8]> = data.chunks(kib << 10).collect();
    let mut c = zstd::bulk::Compressor::new(level).expect("zstd");
    let mut out = 0;
    let compress = rate(data.len(), || {
        out = pieces
            .iter()
            .map(|p| c.compress(p).expect("zstd").len().min(p.len()))
            .sum::<usize>();
    });
    let encoded: Vec<Vec<u8>> = pieces
        .iter()
        .map(|p| zstd::bulk::compress(p, level).expect("zstd"))
        .collect();
    let mut d = zstd::bulk::Decompressor::new().expect("zstd");
    let mut buf = vec![0u8; kib << 10];
    let decode = rate(data.len(), || {
        for f in &encoded {
            d.decompress_to_buffer(f, &mut buf).expect("zstd -d");
        }
    });
    let per_frame = (kib << 10) as f64 / decode;
    println!(
        "| {what}, level {level}, {kib} KiB | {:.4} | {compress:.0} | {per_frame:.1} |",
        out as f64 / data.len() as f64
    );
}

/// `UFFDIO_COPY` of `src` into a fresh registered mapping, 256 KiB per call.
fn uffd_copy_rate(src: &[u8]) -> std::io::Result<f64> {
    let mut failed = None;
    let r = rate(src.len(), || {
        let dst = Fresh::new(src.len());
        let fd = match uffd::open_registered(dst.0 as u64, src.len() as u64) {
            Ok(fd) => fd,
            Err(e) => {
                failed = Some(e);
                return;
            }
        };
        for (i, ch) in src.chunks(PIECE).enumerate() {
            if let Err(e) = uffd::copy(&fd, dst.0 as u64 + (i * PIECE) as u64, ch) {
                failed = Some(e);
                return;
            }
        }
    });
    failed.map_or(Ok(r), Err)
}

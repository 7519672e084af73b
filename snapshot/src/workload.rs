//! A reproducible memory-like image for tests, benchmarks and the CLI comparison
//! (DESIGN.md's workload): runs of pages, by expectation ½ random bytes, ¼ all-zero pages and
//! ¼ repetitive text (templated log/repr lines with varying numbers), from a seed.

/// Seeded splitmix64; reproducible across platforms and releases.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        tail.copy_from_slice(&last[..tail.len()]);
    }
}

const PAGE: usize = 4096;
const WORDS: &[&str] = &[
    "request", "tensor", "layer", "token", "batch", "weight", "cache", "model", "python",
    "handler", "worker", "status", "object", "buffer", "string", "module",
];

fn text(rng: &mut Rng, out: &mut [u8]) {
    let mut line = String::with_capacity(128);
    let mut pos = 0;
    while pos < out.len() {
        line.clear();
        let w = |r: &mut Rng| WORDS[usize::try_from(r.below(WORDS.len() as u64)).unwrap_or(0)];
        match rng.below(4) {
            0 => line.push_str(&format!(
                "INFO {} id={} {}={} ms={}\n",
                w(rng),
                rng.below(1_000_000),
                w(rng),
                rng.below(10_000),
                rng.below(1000)
            )),
            1 => line.push_str(&format!(
                "{{'{}': {}, '{}': '{}'}}, ",
                w(rng),
                rng.below(100_000),
                w(rng),
                w(rng)
            )),
            2 => line.push_str(&format!(
                "<{}.{} object at 0x7f{:010x}>\n",
                w(rng),
                w(rng),
                rng.below(1 << 40)
            )),
            _ => line.push_str(&format!(
                "def {}_{}(self, {}): return self.{}\n",
                w(rng),
                rng.below(100),
                w(rng),
                w(rng)
            )),
        }
        let n = line.len().min(out.len() - pos);
        out[pos..pos + n].copy_from_slice(&line.as_bytes()[..n]);
        pos += n;
    }
}

/// Fills `buf` (a multiple of 4096 bytes) with the workload from `seed`.
pub fn fill_memory_image(buf: &mut [u8], seed: u64) {
    let mut rng = Rng::new(seed);
    let pages = buf.len() / PAGE;
    let mut p = 0;
    while p < pages {
        let kind = rng.below(4);
        let run = usize::try_from(1 + rng.below(64))
            .unwrap_or(1)
            .min(pages - p);
        let region = &mut buf[p * PAGE..(p + run) * PAGE];
        match kind {
            0 | 1 => rng.fill(region),
            2 => region.fill(0),
            _ => text(&mut rng, region),
        }
        p += run;
    }
    let tail = pages * PAGE;
    buf[tail..].fill(0);
}

/// A new image of `bytes` bytes (rounded down to pages) from `seed`.
pub fn memory_image(bytes: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; bytes / PAGE * PAGE];
    fill_memory_image(&mut v, seed);
    v
}

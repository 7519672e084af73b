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

/// The memory CRIU would dump of process `pid`: its private writable mappings (heap, stack,
/// anonymous memory, the data of its libraries), read through `/proc/PID/mem` and laid end to
/// end, each mapping's pages in address order. Mappings the kernel will not read (`[vvar]`)
/// are left out. The caller stops the process first if the image must be consistent.
pub fn process_memory(pid: u32) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut image = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !(perms.starts_with("rw") && perms.ends_with('p')) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let parse = |s: &str| u64::from_str_radix(s, 16).ok();
        let (Some(start), Some(end)) = (parse(start), parse(end)) else {
            continue;
        };
        let Ok(len) = usize::try_from(end.saturating_sub(start)) else {
            continue;
        };
        let at = image.len();
        image.resize(at + len, 0);
        if mem.read_exact_at(&mut image[at..], start).is_err() {
            image.truncate(at);
        }
    }
    Ok(image)
}

/// How many of `image`'s 4 KiB pages are all zero.
pub fn zero_pages(image: &[u8]) -> usize {
    image
        .chunks(PAGE)
        .filter(|p| p.iter().all(|&b| b == 0))
        .count()
}

/// A Python program that builds a heap of about `mib` MiB like a serving process's (dicts of
/// request records, strings, lists of floats, byte buffers, JSON text, imported modules),
/// from a fixed seed, prints `ready` and waits for its standard input to close.
pub const PYTHON_HEAP: &str = r#"
import sys, json, random, collections, decimal, email.parser, http.client, xml.dom.minidom
random.seed(1)
target = int(sys.argv[1]) << 20
words = ["request", "tensor", "layer", "token", "batch", "weight", "cache", "model",
         "handler", "worker", "status", "object", "buffer", "string", "module", "python"]
keep, size, i = [], 0, 0
while size < target:
    k = random.random()
    if k < 0.35:
        x = {"id": i, "name": random.choice(words) + str(i), "score": random.random(),
             "tags": [random.choice(words) for _ in range(3)], "ms": random.randrange(1000)}
        size += 600
    elif k < 0.55:
        x = [random.random() for _ in range(256)]
        size += 256 * 32 + 2100
    elif k < 0.7:
        x = random.randbytes(4096)
        size += 4130
    elif k < 0.85:
        x = json.dumps({random.choice(words): [random.randrange(10**6) for _ in range(40)]})
        size += len(x) + 50
    else:
        x = " ".join(random.choice(words) for _ in range(200))
        size += len(x) + 50
    keep.append(x)
    i += 1
print("ready", flush=True)
sys.stdin.read()
"#;

/// A live `python3` running [`PYTHON_HEAP`] for `mib` MiB, stopped once its heap is built:
/// the real process image of benchmarks. Killed when dropped.
pub struct PythonHeap {
    child: std::process::Child,
}

impl PythonHeap {
    /// Starts `python3` (from PATH, 3.9 or later, `PYTHONHASHSEED=0`) and waits until its heap
    /// is built.
    pub fn start(mib: u64) -> std::io::Result<PythonHeap> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new("python3")
            .args(["-c", PYTHON_HEAP, &mib.to_string()])
            .env("PYTHONHASHSEED", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        let ready = child.stdout.take().map(std::io::BufReader::new);
        let got = ready.map(|mut r| r.read_line(&mut line));
        let heap = PythonHeap { child };
        match got {
            Some(Ok(_)) if line.trim() == "ready" => Ok(heap),
            _ => Err(std::io::Error::other(format!(
                "python3 did not build its heap (it said {:?})",
                line.trim()
            ))),
        }
    }

    /// The process's ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its memory ([`process_memory`]).
    pub fn memory(&self) -> std::io::Result<Vec<u8>> {
        process_memory(self.pid())
    }
}

impl Drop for PythonHeap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_heap_is_read_whole_and_holds_its_data() {
        let heap = match PythonHeap::start(8) {
            Ok(h) => h,
            Err(e) => {
                println!("skipped: no python3 (3.9 or later) to build a real heap ({e})");
                return;
            }
        };
        let image = heap.memory().unwrap();
        assert!(image.len() >= 8 << 20, "{} bytes", image.len());
        assert!(image.len().is_multiple_of(PAGE));
        // The heap's words are in the image, and so are pages of other kinds.
        assert!(image.windows(7).any(|w| w == b"request"));
        assert!(zero_pages(&image) < image.len() / PAGE, "only zero pages");
    }
}

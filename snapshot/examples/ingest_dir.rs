//! Times `criu::ingest` of a CRIU images directory into a fresh store, and `materialize` back:
//!     cargo run --release -p cryo-snapshot --example ingest_dir -- IMAGES_DIR STORE_DIR
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (dir, store) = (&args[1], &args[2]);
    let store = cryo_snapshot::Store::open(store)?;
    let t = Instant::now();
    let r = cryo_snapshot::criu::ingest(
        &store,
        std::path::Path::new(dir),
        Some("bench:ingest"),
        cryo_snapshot::WriterOptions::default(),
    )?;
    let dt = t.elapsed();
    println!(
        "ingest: {:.0} ms for {} MiB of pages ({:.0} MiB/s); zero {} MiB, stored {} MiB",
        dt.as_secs_f64() * 1e3,
        r.page_bytes >> 20,
        (r.page_bytes as f64 / (1 << 20) as f64) / dt.as_secs_f64(),
        r.stats.zero_bytes >> 20,
        r.stats.new_stored_bytes >> 20
    );
    let out = tempfile::tempdir()?;
    let reader = store.reader("bench:ingest")?;
    let t = Instant::now();
    let m = cryo_snapshot::criu::materialize(&reader, out.path())?;
    println!(
        "materialize: {:.0} ms for {} MiB",
        t.elapsed().as_secs_f64() * 1e3,
        m.page_bytes >> 20
    );
    Ok(())
}

//! `cryo lazy-pages`: the lazy-pages server process of a lazy restore. `restore --lazy-pages`
//! starts it in its own session before CRIU runs; it outlives `restore -d` and exits when
//! every page of the restored container is in (or it fails, and the container is killed).

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result};
use cryo_snapshot::lazy::{self, ServeOptions};
use cryo_snapshot::Store;

pub fn run(
    store: &Path,
    snapshot: &str,
    socket: &Path,
    ready_fd: Option<i32>,
    report: Option<&Path>,
) -> Result<()> {
    let store = Store::open(store).with_context(|| format!("store {}", store.display()))?;
    // SAFETY: the parent handed this fd to us for exactly this use; nothing else owns it.
    let ready = ready_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let rep = lazy::run(
        &store,
        snapshot,
        socket,
        ServeOptions::default(),
        move || {
            if let Some(fd) = ready {
                let mut f = std::fs::File::from(fd);
                f.write_all(b"1").map_err(|e| cryo_snapshot::Error::Lazy {
                    message: format!("ready fd: {e}"),
                })?;
            }
            Ok(())
        },
    )
    .with_context(|| format!("lazy restore of {snapshot}"))?;
    if let Some(path) = report {
        let json = serde_json::json!({
            "snapshot": snapshot,
            "tasks": rep.tasks,
            "faults": rep.faults,
            "copied_bytes": rep.copied_bytes,
            "zero_bytes": rep.zero_bytes,
            "fill_ms": rep.fill_time.as_secs_f64() * 1e3,
            "working_set_pages": rep.working_set.len(),
        });
        // The container may be gone (and its state directory with it): not an error.
        let _ = std::fs::write(path, serde_json::to_vec_pretty(&json)?);
    }
    Ok(())
}

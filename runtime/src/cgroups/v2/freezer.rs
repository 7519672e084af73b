//! v2 freezing: `cgroup.freeze` (Linux 5.2+), completion read from `cgroup.events`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cgroups::error::{Error, Result};
use crate::cgroups::{fs, FreezerState};

/// How long a freeze may take before it is an error (tasks in uninterruptible sleep, e.g. on
/// a stuck NFS mount, delay it indefinitely).
const TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `cgroup.freeze` and waits until `cgroup.events` reports `frozen` accordingly.
pub fn freeze(dir: &Path, state: FreezerState) -> Result<()> {
    let want = match state {
        FreezerState::Frozen => 1,
        FreezerState::Thawed => 0,
    };
    if !fs::exists(dir, "cgroup.freeze") {
        if state == FreezerState::Thawed && !dir.exists() {
            return Ok(());
        }
        return Err(Error::Freeze {
            path: dir.join("cgroup.freeze"),
            reason: "missing: freezing on cgroup v2 needs Linux 5.2 or newer".into(),
        });
    }
    fs::write(dir, "cgroup.freeze", &want.to_string())?;
    let start = Instant::now();
    let mut nap = Duration::from_micros(100);
    loop {
        let events = fs::read_flat_keyed(dir, "cgroup.events")?;
        // Older kernels' cgroup.events lacks `frozen`: trust the write.
        match events.get("frozen") {
            None => return Ok(()),
            Some(&f) if f == want => return Ok(()),
            Some(_) => {}
        }
        if start.elapsed() > TIMEOUT {
            return Err(Error::Freeze {
                path: dir.join("cgroup.events"),
                reason: format!("still not \"frozen {want}\" after {} s", TIMEOUT.as_secs()),
            });
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(10));
    }
}

/// The requested state (`cgroup.freeze`); a missing cgroup reads as thawed.
pub fn state(dir: &Path) -> Result<FreezerState> {
    match fs::read_opt(dir, "cgroup.freeze")?
        .as_deref()
        .map(str::trim)
    {
        Some("1") => Ok(FreezerState::Frozen),
        Some("0") | None => Ok(FreezerState::Thawed),
        Some(other) => Err(Error::Parse {
            path: dir.join("cgroup.freeze"),
            content: other.to_string(),
            expected: "0 or 1",
        }),
    }
}

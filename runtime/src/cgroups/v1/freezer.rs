//! v1 `freezer`: FROZEN/THAWED through `freezer.state`, waiting out FREEZING.

use std::path::Path;
use std::time::Duration;

use crate::cgroups::error::{Error, Result};
use crate::cgroups::{fs, FreezerState};

const STATE: &str = "freezer.state";

/// Writes the state and returns once the kernel reports it.
///
/// A v1 freeze can stay FREEZING while tasks keep arriving (fork, exec joining the cgroup);
/// as runc does, the write is repeated, with an occasional thaw and pause, for a bounded
/// number of tries, and a cgroup that never freezes is thawed back before the error.
pub fn freeze(dir: &Path, state: FreezerState) -> Result<()> {
    if state == FreezerState::Thawed {
        fs::write(dir, STATE, "THAWED")?;
        return wait_thawed(dir);
    }
    for i in 0..1000 {
        if i % 50 == 49 {
            let _ = fs::write(dir, STATE, "THAWED");
            std::thread::sleep(Duration::from_millis(10));
        }
        fs::write(dir, STATE, "FROZEN")?;
        if i % 25 == 24 {
            std::thread::sleep(Duration::from_micros(10));
        }
        match fs::read(dir, STATE)?.trim() {
            "FREEZING" => continue,
            "FROZEN" => return Ok(()),
            other => {
                return Err(Error::Freeze {
                    path: dir.join(STATE),
                    reason: format!("reads {other:?} after writing \"FROZEN\""),
                })
            }
        }
    }
    let _ = fs::write(dir, STATE, "THAWED");
    Err(Error::Freeze {
        path: dir.join(STATE),
        reason: "still FREEZING after 1000 tries (processes keep arriving?); thawed it back".into(),
    })
}

fn wait_thawed(dir: &Path) -> Result<()> {
    for _ in 0..1000 {
        match fs::read(dir, STATE)?.trim() {
            "THAWED" => return Ok(()),
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    Err(Error::Freeze {
        path: dir.join(STATE),
        reason: "not THAWED after 1 s".into(),
    })
}

/// FROZEN and FREEZING read as frozen; a missing cgroup as thawed.
pub fn state(dir: &Path) -> Result<FreezerState> {
    match fs::read_opt(dir, STATE)? {
        Some(s) if s.trim() == "THAWED" => Ok(FreezerState::Thawed),
        Some(s) if matches!(s.trim(), "FROZEN" | "FREEZING") => Ok(FreezerState::Frozen),
        Some(s) => Err(Error::Parse {
            path: dir.join(STATE),
            content: s,
            expected: "THAWED, FREEZING or FROZEN",
        }),
        None => Ok(FreezerState::Thawed),
    }
}

//! The runtimes a scenario compares: cryo (the build beside cryo-bench), Debian's runc and
//! crun, and the newest runc and crun that `scripts/refs` put in /var/cache/cryo/refs/bin.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// One runtime binary under test.
#[derive(Clone, Debug, Serialize)]
pub struct Runtime {
    /// Label in tables, e.g. `crun 1.28`.
    pub name: String,
    /// The family: cryo, runc or crun.
    pub kind: String,
    /// The version it reports.
    pub version: String,
    /// Path of the binary.
    pub path: PathBuf,
}

/// The refs directory `scripts/refs` fills.
pub const REFS_BIN: &str = "/var/cache/cryo/refs/bin";

fn version_of(path: &Path) -> Result<String> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "runc version 1.1.5", "crun version 1.8.1", "cryo version 0.1.0".
    let first = text.lines().next().unwrap_or_default();
    match first
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
    {
        Some(v) if out.status.success() => Ok(v.to_string()),
        _ => bail!("{} --version printed {first:?}", path.display()),
    }
}

impl Runtime {
    /// Describes the binary at `path`, asking it its version.
    pub fn probe(kind: &str, path: &Path) -> Result<Runtime> {
        let version = version_of(path)?;
        Ok(Runtime {
            name: format!("{kind} {version}"),
            kind: kind.to_string(),
            version,
            path: path.to_path_buf(),
        })
    }
}

/// Parses `--runtime KIND=PATH`.
pub fn parse_spec(s: &str) -> Result<Runtime> {
    let (kind, path) = s
        .split_once('=')
        .with_context(|| format!("--runtime {s:?}: expected KIND=PATH"))?;
    Runtime::probe(kind, Path::new(path))
}

/// The cryo binary beside the running executable.
pub fn cryo() -> Result<Runtime> {
    let exe = std::env::current_exe().context("locating cryo-bench")?;
    let cryo = exe.with_file_name("cryo");
    if !cryo.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p cryo)",
            cryo.display()
        );
    }
    Runtime::probe("cryo", &cryo)
}

/// Orders versions such as `1.1.5` and `1.3.6+ds1` by their numeric parts.
fn version_key(v: &str) -> Vec<u64> {
    v.split(['.', '+', '-', '~'])
        .map_while(|p| p.parse().ok())
        .collect()
}

/// The newest of Debian's and the reference `kind` (runc or crun) found on this machine.
pub fn newest(kind: &str) -> Option<Runtime> {
    discover_refs()
        .into_iter()
        .filter(|r| r.kind == kind)
        .max_by(|a, b| version_key(&a.version).cmp(&version_key(&b.version)))
}

/// Every runc/crun found: Debian's and the newest references.
fn discover_refs() -> Vec<Runtime> {
    let mut out: Vec<Runtime> = Vec::new();
    let refs = Path::new(REFS_BIN);
    for (kind, debian) in [("crun", "/usr/bin/crun"), ("runc", "/usr/sbin/runc")] {
        for p in [PathBuf::from(debian), refs.join(kind)] {
            if p.exists() {
                match Runtime::probe(kind, &p) {
                    Ok(r) if !out.iter().any(|o| o.name == r.name) => out.push(r),
                    Ok(_) => {}
                    Err(e) => eprintln!("cryo-bench: skipping {}: {e:#}", p.display()),
                }
            }
        }
    }
    out
}

/// cryo beside the running executable, then every runc/crun found, newest references too.
pub fn discover() -> Result<Vec<Runtime>> {
    let mut out = vec![cryo()?];
    out.extend(discover_refs());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        assert!(version_key("1.3.6+ds1") > version_key("1.1.15"));
        assert!(version_key("1.28") > version_key("1.8.1"));
        assert_eq!(version_key("1.1.5"), vec![1, 1, 5]);
    }
}

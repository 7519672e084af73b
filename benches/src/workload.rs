//! The checkpoint scenario's workload (DESIGN.md's: ½ random, ¼ zero, ¼ text, all resident):
//! examples/model-server.py in the python bundle, loading its weights from a file (written
//! once per size and mix, kept for the next run) and answering on a unix socket that lives in
//! a host directory bind-mounted into the container, so the harness can ask it from outside.
//!
//! This module builds the bundle and asks the server; it knows nothing of runtimes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Where the socket directory is mounted inside the container.
const SOCK_DIR_IN_CONTAINER: &str = "/run/bench";
/// Where the weights directory is mounted inside the container (read-only).
const WEIGHTS_DIR_IN_CONTAINER: &str = "/srv/weights";
const SOCK_NAME: &str = "model.sock";
/// What the server writes beside its socket when it fails to start.
const ERR_NAME: &str = "model-server.err";

/// A built bundle and where to reach its server from the host.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The bundle directory (absolute: runc chdirs into it on restore).
    pub bundle: PathBuf,
    /// Host directory bind-mounted at `/run/bench`.
    pub sock_dir: PathBuf,
    /// The server's socket, seen from the host.
    pub socket: PathBuf,
}

/// `R:Z:T`: the shares of random, zero and text runs in the workload's memory.
pub fn mix_arg(s: &str) -> std::result::Result<String, String> {
    let w: Vec<u32> = s
        .split(':')
        .map(|x| x.parse::<u32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("{s:?}: expected R:Z:T, three integers: {e}"))?;
    if w.len() != 3 || w.iter().sum::<u32>() == 0 {
        return Err(format!(
            "{s:?}: expected R:Z:T, three integers, not all zero"
        ));
    }
    Ok(s.to_string())
}

/// Builds (or refreshes) the python bundle under `dir` running model-server.py over
/// `size_mib` MiB of memory mixed as `mix` (`R:Z:T`) with `threads` threads, and the host
/// socket directory beside it.
pub fn bundle(repo: &Path, dir: &Path, size_mib: u64, mix: &str, threads: u32) -> Result<Workload> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let bundle = dir.join("bundle");
    let sock_dir = dir.join("sock");
    let weights_dir = dir.join("weights");
    let weights = weights_file(repo, &weights_dir, size_mib, mix)?;
    let weights_in = format!(
        "{WEIGHTS_DIR_IN_CONTAINER}/{}",
        weights.file_name().unwrap_or_default().to_string_lossy()
    );
    let script = repo.join("examples/python-bundle.sh");
    let socket_in = format!("{SOCK_DIR_IN_CONTAINER}/{SOCK_NAME}");
    let st = Command::new(&script)
        .arg(&bundle)
        .args(["/usr/bin/python3", "/srv/model-server.py", &socket_in])
        .args([
            size_mib.to_string(),
            "1".into(),
            mix.to_string(),
            threads.to_string(),
            weights_in,
        ])
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !st.success() {
        bail!("{} failed: {st}", script.display());
    }
    let rootfs = bundle.join("rootfs");
    for d in [
        rootfs.join("srv/weights"),
        rootfs.join("run/bench"),
        sock_dir.clone(),
    ] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let src = repo.join("examples/model-server.py");
    std::fs::copy(&src, rootfs.join("srv/model-server.py"))
        .with_context(|| format!("copying {}", src.display()))?;

    let cfg_path = bundle.join("config.json");
    let mut cfg: Value = serde_json::from_slice(
        &std::fs::read(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?,
    )
    .with_context(|| format!("parsing {}", cfg_path.display()))?;
    let mounts = cfg["mounts"]
        .as_array_mut()
        .with_context(|| format!("{}: no mounts array", cfg_path.display()))?;
    mounts.push(json!({
        "destination": SOCK_DIR_IN_CONTAINER,
        "type": "bind",
        "source": sock_dir,
        "options": ["rbind", "rw"],
    }));
    mounts.push(json!({
        "destination": WEIGHTS_DIR_IN_CONTAINER,
        "type": "bind",
        "source": weights_dir,
        "options": ["rbind", "ro", "nosuid", "nodev"],
    }));
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    Ok(Workload {
        socket: sock_dir.join(SOCK_NAME),
        bundle,
        sock_dir,
    })
}

/// The weights file of `size_mib` MiB mixed as `mix` in `dir`: kept from an earlier run when
/// it has the right size, else written by model-server.py (other sizes' files are removed
/// first: an 8 GiB one is large).
fn weights_file(repo: &Path, dir: &Path, size_mib: u64, mix: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = format!("model-{size_mib}m-{}-seed1.bin", mix.replace(':', "-"));
    let path = dir.join(&name);
    let want = size_mib << 20;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == want) {
        return Ok(path);
    }
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        if p.file_name().is_some_and(|n| n != name.as_str()) {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    eprintln!(
        "cryo-bench: writing the model's weights ({size_mib} MiB) to {}",
        path.display()
    );
    let script = repo.join("examples/model-server.py");
    let st = Command::new("/usr/bin/python3")
        .arg(&script)
        .args(["--write-weights"])
        .arg(&path)
        .args([size_mib.to_string(), "1".into(), mix.to_string()])
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !st.success() {
        bail!("{} --write-weights: {st}", script.display());
    }
    Ok(path)
}

impl Workload {
    /// One request: the server's answer line (`ok <sha256 of sampled memory>`).
    pub fn ask(&self, timeout: Duration) -> std::io::Result<String> {
        self.request(b"sum\n", timeout)
    }

    /// A request that touches little of the server's memory (`ok pong`).
    pub fn ping(&self, timeout: Duration) -> std::io::Result<String> {
        self.request(b"ping\n", timeout)
    }

    fn request(&self, req: &[u8], timeout: Duration) -> std::io::Result<String> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(req)?;
        let mut buf = Vec::with_capacity(128);
        s.read_to_end(&mut buf)?;
        let line = String::from_utf8_lossy(&buf).trim().to_string();
        if !line.starts_with("ok ") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected answer {line:?}"),
            ));
        }
        Ok(line)
    }

    /// Pings every `poll` until the server answers, `failed` reports an error (checked
    /// between tries, e.g. a restore command that exited non-zero) or `timeout` passes.
    /// Returns when it answered; the caller asks for the checksum afterwards.
    pub fn wait_answer(
        &self,
        timeout: Duration,
        poll: Duration,
        mut failed: impl FnMut() -> Option<anyhow::Error>,
    ) -> Result<(String, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            // Connecting to a socket file nobody listens on fails at once (ECONNREFUSED);
            // the read timeout only bounds a server that accepted and then hung.
            if let Ok(a) = self.ping(Duration::from_secs(10)) {
                return Ok((a, Instant::now()));
            }
            if let Some(e) = failed() {
                return Err(e);
            }
            if Instant::now() >= deadline {
                let why = std::fs::read_to_string(self.sock_dir.join(ERR_NAME))
                    .map(|t| format!("; model-server.err: {}", t.trim()))
                    .unwrap_or_default();
                bail!(
                    "no answer on {} within {timeout:?}{why}",
                    self.socket.display()
                );
            }
            std::thread::sleep(poll);
        }
    }

    /// Whether something answers on the socket now.
    pub fn answers(&self) -> bool {
        self.ask(Duration::from_secs(1)).is_ok()
    }

    /// Removes what a failed server start left behind.
    pub fn clear_error(&self) {
        let _ = std::fs::remove_file(self.sock_dir.join(ERR_NAME));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_written_once_per_size_and_mix_and_hold_the_built_memory() {
        let numpy = Command::new("/usr/bin/python3")
            .args(["-c", "import numpy"])
            .status()
            .is_ok_and(|s| s.success());
        if !numpy {
            eprintln!(
                "skipped: /usr/bin/python3 with numpy is missing (scripts/setup installs it)"
            );
            return;
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = tempfile::tempdir().unwrap();
        let four = weights_file(&repo, dir.path(), 4, "2:1:1").unwrap();
        assert_eq!(std::fs::metadata(&four).unwrap().len(), 4 << 20);
        let written = std::fs::metadata(&four).unwrap().modified().unwrap();
        // Kept for the next run of the same size and mix.
        let again = weights_file(&repo, dir.path(), 4, "2:1:1").unwrap();
        assert_eq!(again, four);
        assert_eq!(
            std::fs::metadata(&four).unwrap().modified().unwrap(),
            written
        );
        // The file holds the memory the server would have built, not zeros.
        let bytes = std::fs::read(&four).unwrap();
        assert!(bytes[..1 << 20].iter().any(|&b| b != 0));
        let eight = weights_file(&repo, dir.path(), 8, "1:0:1").unwrap();
        assert_eq!(std::fs::metadata(&eight).unwrap().len(), 8 << 20);
        assert!(!four.exists(), "another size's file is removed");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}

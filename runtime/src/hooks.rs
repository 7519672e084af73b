//! OCI hooks: each runs with the container's state JSON on stdin, its own args and env, and
//! an optional timeout; a non-zero exit or a timeout fails the step that ran it (poststop
//! failures are only logged, as the spec says).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{Error, Result};

/// Runs `hooks` of `kind` in order with `state_json` on stdin.
pub fn run(kind: &'static str, hooks: &[Hook], state_json: &[u8]) -> Result<()> {
    for h in hooks {
        run_one(kind, h, state_json)?;
    }
    Ok(())
}

fn run_one(kind: &'static str, h: &Hook, state_json: &[u8]) -> Result<()> {
    let err = |msg: String| Error::Hook {
        kind,
        path: h.path().clone(),
        msg,
    };
    let args = h.args().clone().unwrap_or_default();
    let mut cmd = Command::new(h.path());
    if let Some(a0) = args.first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, a0);
    }
    cmd.args(args.iter().skip(1))
        .env_clear()
        .envs(h.env().iter().flatten().filter_map(|e| e.split_once('=')))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| err(format!("start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(state_json);
    }
    let deadline = h
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t.unsigned_abs()));
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if status.success() {
                    return Ok(());
                }
                let mut stderr = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut s, &mut stderr);
                }
                return Err(err(format!("{status}: {}", stderr.trim())));
            }
            Ok(None) => {}
            Err(e) => return Err(err(format!("wait: {e}"))),
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(format!(
                "timed out after {}s",
                h.timeout().unwrap_or(0)
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(v: serde_json::Value) -> Hook {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn hook_gets_state_on_stdin_and_failure_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let ok = hook(
            serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", out.display())]}),
        );
        run("prestart", &[ok], b"{\"id\":\"x\"}").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"id\":\"x\"}");
        let bad = hook(
            serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]}),
        );
        let e = run("createRuntime", &[bad], b"{}").unwrap_err().to_string();
        assert!(e.contains("createRuntime") && e.contains("nope"), "{e}");
        let slow =
            hook(serde_json::json!({"path": "/bin/sleep", "args": ["sleep", "5"], "timeout": 1}));
        let e = run("poststart", &[slow], b"{}").unwrap_err().to_string();
        assert!(e.contains("timed out"), "{e}");
    }
}

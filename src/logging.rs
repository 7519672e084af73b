//! runc-compatible logging: `--log FILE` and `--log-format text|json`. containerd's runc shim
//! and podman read the last `error` line of that file to explain a failure, so errors are
//! written there in logrus' shape (`{"level":"error","msg":"...","time":"..."}`) and also to
//! stderr.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Where and how to log.
#[derive(Debug, Clone)]
pub struct LogTarget {
    /// File to append to; stderr when absent.
    pub file: Option<PathBuf>,
    /// JSON lines instead of text.
    pub json: bool,
    /// Log debug lines too.
    pub debug: bool,
}

static TARGET: OnceLock<LogTarget> = OnceLock::new();

/// Installs the target once, at start-up. With `--debug`, the libraries' `tracing` events
/// (checkpoint and restore phases with their timings, the lazy-pages server) go there too.
pub fn init(t: LogTarget) {
    if t.debug {
        let builder = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false);
        let _ = match &t.file {
            Some(f) => match OpenOptions::new().create(true).append(true).open(f) {
                Ok(file) => builder.with_writer(std::sync::Mutex::new(file)).try_init(),
                Err(_) => builder.with_writer(std::io::stderr).try_init(),
            },
            None => builder.with_writer(std::io::stderr).try_init(),
        };
    }
    let _ = TARGET.set(t);
}

fn line(level: &str, msg: &str, json: bool) -> String {
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    if json {
        serde_json::json!({"level": level, "msg": msg, "time": time}).to_string() + "\n"
    } else {
        format!("time=\"{time}\" level={level} msg={msg:?}\n")
    }
}

/// Logs at `level` to the configured file (no-op without one, except errors, which always
/// reach stderr through [`error`]).
pub fn log(level: &str, msg: &str) {
    let Some(t) = TARGET.get() else { return };
    if level == "debug" && !t.debug {
        return;
    }
    match &t.file {
        Some(f) => {
            if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(f) {
                let _ = file.write_all(line(level, msg, t.json).as_bytes());
            }
        }
        None if level != "error" => {
            let _ = std::io::stderr().write_all(line(level, msg, t.json).as_bytes());
        }
        None => {}
    }
}

/// An error: to the log file and to stderr.
pub fn error(msg: &str) {
    log("error", msg);
    let _ = writeln!(std::io::stderr(), "cryo: {msg}");
}

/// A debug line (only with `--debug`).
pub fn debug(msg: &str) {
    log("debug", msg);
}

//! `cryo`: the OCI runtime CLI, a drop-in for runc. Thin: argument parsing and output
//! formatting here, everything else in cryo-runtime.

mod commands;
mod gpus;
mod lazy_cli;
mod logging;
mod snapshot_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// cryo: a container runtime built for cold start (runc-compatible CLI).
#[derive(Parser, Debug)]
#[command(name = "cryo", version, about, disable_help_subcommand = true)]
pub struct Cli {
    /// Root directory for container state (runc: --root).
    #[arg(long, global = true, default_value = cryo_runtime::state::DEFAULT_ROOT)]
    root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Debug logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for runc compatibility; cryo manages cgroupfs directly.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility (path of criu).
    #[arg(long, global = true)]
    criu: Option<PathBuf>,
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    // `cryo init` must not pay for argument parsing or touch anything else first.
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        let code = cryo_runtime::init::main();
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    logging::init(logging::LogTarget {
        file: cli.log.clone(),
        json: cli.log_format == "json",
        debug: cli.debug,
    });
    if cli.systemd_cgroup {
        logging::debug("--systemd-cgroup given: cryo uses the cgroupfs driver");
    }
    match commands::run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            logging::error(&format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

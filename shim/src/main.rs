//! `containerd-shim-cryo-v2`: containerd's shim v2 for cryo (runtime type
//! `io.containerd.cryo.v2`).
//!
//! containerd runs the binary three ways (../shared/DESIGN.md, "containerd shim"):
//! - `... start`: [`bootstrap::start`] binds the task socket, starts the long-lived shim
//!   process on it and prints its address;
//! - `... delete`: [`bootstrap::delete`] cleans up after a shim that died;
//! - without an action: the shim itself, serving the task API ([`service`]) with cryo-runtime
//!   in-process until its last container is gone.

mod args;
mod bootstrap;
mod events;
mod io;
mod mount;
mod reaper;
mod service;
mod stats;
mod trim;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

fn main() -> ExitCode {
    let args = match args::Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("containerd-shim-cryo-v2: {e}");
            return ExitCode::from(2);
        }
    };
    if args.version {
        println!(
            "containerd-shim-cryo-v2:\n  Version: {}",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let result = match args.action.as_deref() {
        Some("start") => bootstrap::start(&args).map(|addr| {
            // containerd reads the address from stdout, together with stderr: nothing else.
            print!("{addr}");
            let _ = std::io::stdout().flush();
        }),
        Some("delete") => bootstrap::delete(&args).and_then(|resp| {
            std::io::stdout()
                .write_all(&resp)
                .context("writing the delete response")
        }),
        Some(other) => Err(anyhow::anyhow!(
            "unknown action {other:?}: expected start, delete or none"
        )),
        None => service::serve(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Before the shim serves, stderr reaches containerd's log with the error; after,
            // serve() logs through tracing and only a failed start ends up here.
            eprintln!("containerd-shim-cryo-v2: {e:#}");
            ExitCode::FAILURE
        }
    }
}

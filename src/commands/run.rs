//! `run` and `exec`: the commands that wait for a container process. cryo becomes a child
//! subreaper so the process (a grandchild, once the init's first stage exits) is reparented
//! to it, forwards the signals it receives, and exits with the process's status (128+N for a
//! signal, as runc does).

use std::path::PathBuf;

use anyhow::{Context, Result};
use cryo_runtime::{CreateOptions, ExecOptions, RestoreOptions, Runtime};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// `exec` arguments, as runc has them.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Container id.
    id: String,
    /// Command and arguments (unless --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
    /// A process.json to run.
    #[arg(short, long)]
    process: Option<PathBuf>,
    /// Do not wait for the process.
    #[arg(short, long)]
    detach: bool,
    /// Allocate a terminal (needs --console-socket).
    #[arg(short, long)]
    tty: bool,
    /// Environment variables (KEY=VALUE).
    #[arg(short, long)]
    env: Vec<String>,
    /// Working directory.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// UID[:GID].
    #[arg(short, long)]
    user: Option<String>,
    /// Additional gids.
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    /// Add a capability.
    #[arg(short, long = "cap")]
    cap: Vec<String>,
    /// Set no_new_privs.
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    /// Write the process pid here.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Pass N extra fds through.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    /// Accepted for runc compatibility.
    #[arg(long = "process-label")]
    process_label: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long)]
    apparmor: Option<String>,
    /// Ignored: cgroup to join (cryo joins the container's).
    #[arg(long)]
    cgroup: Option<String>,
}

const FORWARDED: [Signal; 10] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGPIPE,
    Signal::SIGCHLD,
];

fn forwarded_set() -> SigSet {
    let mut s = SigSet::empty();
    for sig in FORWARDED {
        s.add(sig);
    }
    s
}

/// Becomes a subreaper and blocks the forwarded signals (the init unblocks them for itself).
fn prepare_wait() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("prctl(PR_SET_CHILD_SUBREAPER)")?;
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded_set()), None)
        .context("sigprocmask")?;
    Ok(())
}

fn exit_code(ws: WaitStatus) -> Option<u8> {
    match ws {
        WaitStatus::Exited(_, code) => Some(u8::try_from(code & 0xff).unwrap_or(1)),
        WaitStatus::Signaled(_, sig, _) => Some(u8::try_from(128 + sig as i32).unwrap_or(255)),
        _ => None,
    }
}

/// Waits for `pid`, forwarding signals, reaping other children; returns its exit code.
fn wait_forwarding(pid: i32) -> Result<u8> {
    let target = Pid::from_raw(pid);
    let set = forwarded_set();
    loop {
        // Reap everything that is done; the container's process may already be.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) => {
                    if ws.pid() == Some(target) {
                        if let Some(c) = exit_code(ws) {
                            return Ok(c);
                        }
                    }
                }
            }
        }
        let sig = set.wait().context("sigwait")?;
        if sig != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(target, sig);
        }
    }
}

/// `run`: create + start, then wait and delete unless detached.
pub fn run(rt: &Runtime, id: &str, opts: &CreateOptions, detach: bool, keep: bool) -> Result<u8> {
    if !detach {
        prepare_wait()?;
    }
    let pid = rt.create(id, opts)?;
    if let Err(e) = rt.start(id) {
        let _ = rt.delete(id, true);
        return Err(e.into());
    }
    if detach {
        return Ok(0);
    }
    let code = wait_forwarding(pid)?;
    if !keep {
        rt.delete(id, true)?;
    }
    Ok(code)
}

/// `restore`: like `run` for a checkpointed container: wait and delete unless detached.
pub fn restore(rt: &Runtime, id: &str, opts: &RestoreOptions, detach: bool) -> Result<u8> {
    if !detach {
        prepare_wait()?;
    }
    let pid = rt.restore(id, opts)?;
    if detach {
        return Ok(0);
    }
    let code = wait_forwarding(pid)?;
    rt.delete(id, true)?;
    Ok(code)
}

fn parse_user(u: &str) -> Result<(u32, Option<u32>)> {
    let (uid, gid) = match u.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (u, None),
    };
    let uid = uid
        .parse()
        .with_context(|| format!("--user {u:?}: uid must be numeric"))?;
    let gid = gid
        .map(|g| {
            g.parse()
                .with_context(|| format!("--user {u:?}: gid must be numeric"))
        })
        .transpose()?;
    Ok((uid, gid))
}

/// `exec`: builds the process from process.json or the container's own plus flags.
pub fn exec(rt: &Runtime, a: &ExecArgs) -> Result<u8> {
    let mut process = match &a.process {
        Some(p) => cryo_runtime::spec::load_process(p)?,
        None => {
            if a.args.is_empty() {
                anyhow::bail!("exec: arguments or --process are required");
            }
            let (_dir, st, _) = rt.load(&a.id)?;
            let mut p = st.config.process().clone().unwrap_or_default();
            p.set_args(Some(a.args.clone()));
            p.set_terminal(Some(a.tty));
            p.set_console_size(None);
            if let Some(c) = &a.cwd {
                p.set_cwd(c.clone());
            }
            let mut env = p.env().clone().unwrap_or_default();
            for e in &a.env {
                let key = e.split('=').next().unwrap_or_default();
                env.retain(|x| x.split('=').next() != Some(key));
                env.push(e.clone());
            }
            p.set_env(Some(env));
            if let Some(u) = &a.user {
                let (uid, gid) = parse_user(u)?;
                let mut user = p.user().clone();
                user.set_uid(uid);
                if let Some(g) = gid {
                    user.set_gid(g);
                }
                p.set_user(user);
            }
            if !a.additional_gids.is_empty() {
                let mut user = p.user().clone();
                user.set_additional_gids(Some(a.additional_gids.clone()));
                p.set_user(user);
            }
            if a.no_new_privs {
                p.set_no_new_privileges(Some(true));
            }
            if !a.cap.is_empty() {
                let mut caps = p.capabilities().clone().unwrap_or_default();
                for c in &a.cap {
                    let cap: oci_spec::runtime::Capability =
                        serde_json::from_value(serde_json::Value::String(c.clone()))
                            .with_context(|| format!("--cap {c:?}: unknown capability"))?;
                    let add = |s: Option<oci_spec::runtime::Capabilities>| {
                        let mut s = s.unwrap_or_default();
                        s.insert(cap);
                        Some(s)
                    };
                    caps.set_bounding(add(caps.bounding().clone()));
                    caps.set_effective(add(caps.effective().clone()));
                    caps.set_permitted(add(caps.permitted().clone()));
                }
                p.set_capabilities(Some(caps));
            }
            p
        }
    };
    if a.tty && a.process.is_none() {
        process.set_terminal(Some(true));
    }
    if !a.detach {
        prepare_wait()?;
    }
    let opts = ExecOptions {
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        preserve_fds: a.preserve_fds,
        ..Default::default()
    };
    let pid = rt.exec(&a.id, process, &opts)?;
    if a.detach {
        return Ok(0);
    }
    wait_forwarding(pid)
}

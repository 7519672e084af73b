//! The user's process, from inside the container: rlimits, user and groups, capabilities,
//! no_new_privs, seccomp, the working directory, the executable lookup and the final execve.
//! The order follows runc's finalizeNamespace and is what makes each step possible (the
//! bounding set must shrink while CAP_SETPCAP is still held; seccomp without no_new_privs must
//! load while CAP_SYS_ADMIN is still held).

pub mod caps;
pub mod seccomp;

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libseccomp::ScmpFilterContext;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{PosixRlimitType, Process};

use crate::error::{Error, Result, SysContext};

fn resource(t: PosixRlimitType) -> nix::sys::resource::Resource {
    use nix::sys::resource::Resource as R;
    match t {
        PosixRlimitType::RlimitCpu => R::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => R::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => R::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => R::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => R::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => R::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => R::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => R::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => R::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => R::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => R::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => R::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => R::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => R::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => R::RLIMIT_RTTIME,
    }
}

/// Applies `process.rlimits`.
pub fn set_rlimits(p: &Process) -> Result<()> {
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        nix::sys::resource::setrlimit(resource(r.typ()), r.soft(), r.hard())
            .sys_ctx(|| format!("process.rlimits[{i}]: setrlimit {}", r.typ()))?;
    }
    Ok(())
}

/// Writes `process.oomScoreAdj`.
pub fn set_oom_score_adj(p: &Process) -> Result<()> {
    if let Some(v) = p.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", v.to_string()).map_err(|e| Error::Spec {
            path: "config.json".into(),
            field: "process.oomScoreAdj".into(),
            msg: format!("writing {v} to /proc/self/oom_score_adj: {e}"),
        })?;
    }
    Ok(())
}

/// Everything needed for the last steps, computed while the process is still privileged.
pub struct Prepared {
    exe: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    caps: caps::CapSets,
    seccomp: Option<ScmpFilterContext>,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    umask: Option<u32>,
    no_new_privs: bool,
    cwd: PathBuf,
    setgroups_allowed: bool,
}

fn cstr(s: &str, field: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Unsupported {
        field: field.to_string(),
        msg: format!("{s:?} contains a NUL byte"),
    })
}

/// The home directory of `uid` in an /etc/passwd text, "/" when it has no entry (runc's default).
fn home_of(passwd: &str, uid: u32) -> &str {
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 6 && f[2].parse() == Ok(uid))
        .map_or("/", |f| f[5])
}

/// Finds `arg0` the way execvp would, with the container's PATH, from inside the container.
pub fn lookup(arg0: &str, env: &[String], cwd: &Path) -> Result<PathBuf> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
            .unwrap_or(false)
    };
    if arg0.contains('/') {
        let p = if arg0.starts_with('/') {
            PathBuf::from(arg0)
        } else {
            cwd.join(arg0)
        };
        return if is_exec(&p) {
            Ok(p)
        } else {
            Err(Error::Init(format!(
                "exec: {arg0:?}: no such executable file"
            )))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(arg0))
        .find(|p| is_exec(p))
        .ok_or_else(|| {
            Error::Init(format!(
                "exec: {arg0:?}: executable file not found in $PATH"
            ))
        })
}

impl Prepared {
    /// Resolves the executable and compiles seccomp; `seccomp` is the container's profile.
    pub fn new(
        p: &Process,
        seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
        setgroups_allowed: bool,
    ) -> Result<Self> {
        let args = p.args().clone().unwrap_or_default();
        let mut env = p.env().clone().unwrap_or_default();
        // runc sets HOME when the spec leaves it out: the user's home in the container's
        // /etc/passwd (we run inside the container's root here), or "/".
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            env.push(format!("HOME={}", home_of(&passwd, p.user().uid())));
        }
        let arg0 = args
            .first()
            .ok_or_else(|| Error::Init("process.args is empty".into()))?;
        let exe = lookup(arg0, &env, p.cwd())?;
        Ok(Prepared {
            exe: CString::new(exe.as_os_str().as_bytes())
                .map_err(|_| Error::Init("NUL in path".into()))?,
            argv: args
                .iter()
                .map(|a| cstr(a, "process.args"))
                .collect::<Result<_>>()?,
            envp: env
                .iter()
                .map(|a| cstr(a, "process.env"))
                .collect::<Result<_>>()?,
            caps: caps::CapSets::new(p.capabilities().as_ref()),
            seccomp: seccomp.map(seccomp::compile).transpose()?,
            uid: p.user().uid(),
            gid: p.user().gid(),
            groups: p.user().additional_gids().clone().unwrap_or_default(),
            umask: p.user().umask(),
            no_new_privs: p.no_new_privileges().unwrap_or(false),
            cwd: p.cwd().clone(),
            setgroups_allowed,
        })
    }

    /// Changes to the user and capabilities of the process (runc's finalizeNamespace). The
    /// seccomp filter is loaded first here when no_new_privs is off (it needs CAP_SYS_ADMIN).
    pub fn drop_privileges(&mut self) -> Result<()> {
        // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it before the
        // capabilities go (runc does the same, before finalizeNamespace).
        if !self.no_new_privs {
            if let Some(ctx) = self.seccomp.take() {
                seccomp::load(&ctx)?;
            }
        }
        if let Some(m) = self.umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
        }
        self.caps.apply_bounding()?;
        nix::sys::prctl::set_keepcaps(true).sys_ctx(|| "prctl(PR_SET_KEEPCAPS)".into())?;
        if self.setgroups_allowed {
            let groups: Vec<Gid> = self.groups.iter().map(|g| Gid::from_raw(*g)).collect();
            nix::unistd::setgroups(&groups)
                .sys_ctx(|| format!("process.user.additionalGids: setgroups {:?}", self.groups))?;
        }
        let gid = Gid::from_raw(self.gid);
        nix::unistd::setresgid(gid, gid, gid)
            .sys_ctx(|| format!("process.user.gid: setgid {}", self.gid))?;
        let uid = Uid::from_raw(self.uid);
        nix::unistd::setresuid(uid, uid, uid)
            .sys_ctx(|| format!("process.user.uid: setuid {}", self.uid))?;
        nix::sys::prctl::set_keepcaps(false).sys_ctx(|| "prctl(PR_SET_KEEPCAPS, 0)".into())?;
        self.caps.apply()?;
        if let Err(e) = nix::unistd::chdir(&self.cwd) {
            return Err(Error::sys(
                format!("process.cwd: chdir {}", self.cwd.display()),
                e,
            ));
        }
        // CVE-2024-21626: a cwd reached through a leaked host fd would show as unreachable.
        let cwd = nix::unistd::getcwd().sys_ctx(|| "getcwd".into())?;
        if !cwd.starts_with("/") || cwd.as_os_str().as_bytes().starts_with(b"(unreachable)") {
            return Err(Error::Init(format!(
                "process.cwd: {} is outside the container",
                cwd.display()
            )));
        }
        Ok(())
    }

    /// no_new_privs, the late seccomp filter, fds marked close-on-exec, then execve.
    /// Returns only on failure.
    pub fn exec(mut self, preserve_fds: i32) -> Error {
        if self.no_new_privs {
            if let Err(e) = nix::sys::prctl::set_no_new_privs() {
                return Error::sys("prctl(PR_SET_NO_NEW_PRIVS)", e);
            }
        }
        if let Some(ctx) = self.seccomp.take() {
            if let Err(e) = seccomp::load(&ctx) {
                return e;
            }
        }
        if let Err(e) = cloexec_from(3 + preserve_fds) {
            return e;
        }
        match nix::unistd::execve(&self.exe, &self.argv, &self.envp) {
            Err(e) => Error::sys(
                format!("exec {:?}", OsStr::from_bytes(self.exe.as_bytes())),
                e,
            ),
            Ok(never) => match never {},
        }
    }
}

/// Marks every fd from `first` up close-on-exec, so nothing of the runtime's leaks into the
/// container (CVE-2024-21626).
pub fn cloexec_from(first: i32) -> Result<()> {
    let dir = std::fs::read_dir("/proc/self/fd").map_err(|e| Error::io("/proc/self/fd", e))?;
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // The read_dir fd itself is gone by now: EBADF is fine.
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_comes_from_passwd_or_defaults_to_root_dir() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nbad line\nwww:x:33:33::/var/www:/bin/false\n";
        assert_eq!(home_of(passwd, 0), "/root");
        assert_eq!(home_of(passwd, 33), "/var/www");
        assert_eq!(home_of(passwd, 1000), "/");
    }

    #[test]
    fn lookup_uses_the_container_path() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(lookup("sh", &env, Path::new("/")).unwrap().ends_with("sh"));
        let e = lookup("no-such-binary-xyz", &env, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("executable file not found in $PATH"), "{e}");
        assert!(lookup("/bin/sh", &[], Path::new("/")).is_ok());
    }
}

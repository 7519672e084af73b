//! The short-lived invocations: `start` (bind the socket, start the serving shim, print the
//! address) and `delete` (clean up after a shim that is gone). Neither serves requests.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use containerd_shim_protos::shim::shim::DeleteResponse;
use protobuf::Message;
use sha2::{Digest, Sha256};

use crate::args::Args;
use crate::{mount, service};

/// Where containerd (1.6 to 2.x) and its shims keep task sockets.
const SOCKET_DIR: &str = "/run/containerd/s";
/// The spec annotation under which CRI groups the containers of one pod: they share a shim.
const SANDBOX_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The socket of the shim serving `group` in `namespace`, as containerd's own shims name it
/// (a hash, so the path stays within the 108 bytes of a unix address).
pub fn socket_path(address: &str, namespace: &str, group: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{address}/{namespace}/{group}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Path::new(SOCKET_DIR).join(hex)
}

/// The shim group of the bundle in the current directory: the pod's sandbox id, else the task.
fn group_of(bundle: &Path, id: &str) -> String {
    let config = bundle.join("config.json");
    fs::read(&config)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("annotations")?
                .get(SANDBOX_ANNOTATION)?
                .as_str()
                .map(String::from)
        })
        .unwrap_or_else(|| id.to_string())
}

/// `start`: returns the address containerd should connect to, starting a serving shim unless
/// one already serves this task's group.
pub fn start(args: &Args) -> Result<String> {
    if args.id.is_empty() || args.namespace.is_empty() {
        bail!("start needs -id and -namespace");
    }
    let bundle = std::env::current_dir().context("the bundle (current directory)")?;
    let group = group_of(&bundle, &args.id);
    let path = socket_path(&args.address, &args.namespace, &group);
    let address = format!("unix://{}", path.display());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(SOCKET_DIR)
        .with_context(|| format!("creating {SOCKET_DIR}"))?;
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(&path).is_ok() {
                // A shim of this group is alive: it serves this task too.
                write_address(&bundle, &address)?;
                return Ok(address);
            }
            fs::remove_file(&path).with_context(|| format!("removing stale {}", path.display()))?;
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("binding {}", path.display())),
    };
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    if let Err(e) = spawn_server(args, &bundle, &listener) {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    write_address(&bundle, &address)?;
    Ok(address)
}

fn write_address(bundle: &Path, address: &str) -> Result<()> {
    let file = bundle.join("address");
    let tmp = bundle.join(".address.tmp");
    fs::write(&tmp, address).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &file).with_context(|| format!("writing {}", file.display()))
}

/// Starts the serving shim: this binary without an action, in its own session, with the
/// listening socket as fd 3 and no stdio (containerd reads `start`'s output until EOF).
fn spawn_server(args: &Args, bundle: &Path, listener: &UnixListener) -> Result<()> {
    let exe = std::env::current_exe().context("locating the shim binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["-namespace", &args.namespace, "-id", &args.id])
        .args(["-address", &args.address])
        .args(["-publish-binary", &args.publish_binary])
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if args.debug {
        cmd.arg("-debug");
    }
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl, setsid) run.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 || libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the serving shim")?;
    // The shim outlives this process and is reaped by init once containerd lets go of it.
    drop(child);
    Ok(())
}

/// `delete`: force-deletes the task's container and unmounts its rootfs, for a shim that
/// died; returns the serialized `DeleteResponse` containerd expects on stdout.
pub fn delete(args: &Args) -> Result<Vec<u8>> {
    let bundle = match &args.bundle {
        Some(b) => PathBuf::from(b),
        None => std::env::current_dir().context("the bundle (current directory)")?,
    };
    let settings = service::Settings::load(&bundle);
    let rt = settings.runtime()?;
    match rt.delete(&args.id, true) {
        Ok(()) | Err(cryo_runtime::Error::NotFound(_)) => {}
        Err(e) => return Err(e).with_context(|| format!("deleting container {}", args.id)),
    }
    mount::unmount_rootfs(&bundle.join("rootfs"));
    let resp = DeleteResponse {
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: protobuf::MessageField::some(service::now()),
        ..Default::default()
    };
    resp.write_to_bytes()
        .context("encoding the delete response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_follow_containerd() {
        // As containerd's shim.SocketAddress: sha256 of "ADDRESS/NAMESPACE/ID".
        let p = socket_path("/run/containerd/containerd.sock", "default", "c1");
        assert!(p.starts_with(SOCKET_DIR));
        // echo -n /run/containerd/containerd.sock/default/c1 | sha256sum
        assert_eq!(
            p.file_name().unwrap().to_str().unwrap(),
            "d25aa4ef11a84e954e74a5bcff06557d0b6ea8d0c00243896f29826694bbd888"
        );
        assert_ne!(
            p,
            socket_path("/run/containerd/containerd.sock", "other", "c1")
        );
    }

    #[test]
    fn pods_share_a_group() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .unwrap();
        assert_eq!(group_of(d.path(), "c1"), "pod1");
        assert_eq!(group_of(Path::new("/nonexistent"), "c1"), "c1");
    }
}

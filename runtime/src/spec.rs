//! Loading and validating an OCI bundle's config.json (and exec's process.json).
//!
//! Parsing goes through `serde_path_to_error`, so a malformed field is reported with its full
//! JSON path (`process.capabilities.bounding[2]: unknown variant ...`). Validation then checks
//! the combinations runc refuses (a hostname without a UTS namespace, id mappings without a
//! user namespace, duplicate namespaces, ...). This module does not touch the system.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use crate::error::{Error, Result};

/// Upper bound for config.json / process.json: they are read whole, and a runaway file must
/// not exhaust memory.
const MAX_SPEC_BYTES: u64 = 16 << 20;

fn spec_err(path: &Path, field: impl Into<String>, msg: impl Into<String>) -> Error {
    Error::Spec {
        path: path.to_path_buf(),
        field: field.into(),
        msg: msg.into(),
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = Vec::new();
    f.take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > MAX_SPEC_BYTES {
        return Err(spec_err(
            path,
            "(file)",
            format!("larger than {MAX_SPEC_BYTES} bytes"),
        ));
    }
    Ok(buf)
}

/// Deserializes `T` from JSON bytes, naming the failing field path.
pub fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." {
            "(document)".to_string()
        } else {
            field
        };
        spec_err(path, field, e.into_inner().to_string())
    })
}

/// Loads `<bundle>/config.json`, validates it and resolves `root.path` against the bundle.
pub fn load_bundle(bundle: &Path) -> Result<(Spec, PathBuf)> {
    let path = bundle.join("config.json");
    let bytes = read_limited(&path)?;
    let spec: Spec = parse_json(&path, &bytes)?;
    validate(&spec, &path)?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .ok_or_else(|| spec_err(&path, "root", "missing"))?;
    let rootfs = if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    };
    let rootfs = std::fs::canonicalize(&rootfs)
        .map_err(|e| spec_err(&path, "root.path", format!("{}: {e}", rootfs.display())))?;
    if !rootfs.is_dir() {
        return Err(spec_err(
            &path,
            "root.path",
            format!("{} is not a directory", rootfs.display()),
        ));
    }
    Ok((spec, rootfs))
}

/// Loads an exec process.json.
pub fn load_process(path: &Path) -> Result<Process> {
    let bytes = read_limited(path)?;
    let process: Process = parse_json(path, &bytes)?;
    validate_process(&process, path, "")?;
    Ok(process)
}

/// Checks a parsed spec for the combinations a runtime must refuse.
pub fn validate(spec: &Spec, path: &Path) -> Result<()> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| spec_err(path, "process", "missing: a container needs a process"))?;
    validate_process(process, path, "process.")?;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| spec_err(path, "linux", "missing: cryo runs Linux containers"))?;

    let mut seen = HashSet::new();
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    for (i, ns) in namespaces.iter().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(spec_err(
                path,
                format!("linux.namespaces[{i}]"),
                format!("namespace {} listed twice", ns.typ()),
            ));
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(spec_err(
                    path,
                    format!("linux.namespaces[{i}].path"),
                    format!("{} is not an absolute path", p.display()),
                ));
            }
        }
    }
    let has = |t: LinuxNamespaceType| seen.contains(&t);
    let has_new = |t: LinuxNamespaceType| {
        namespaces
            .iter()
            .any(|n| n.typ() == t && n.path().is_none())
    };
    let maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if has_new(LinuxNamespaceType::User) {
        if !maps {
            return Err(spec_err(
                path,
                "linux.uidMappings",
                "a new user namespace needs uidMappings and gidMappings",
            ));
        }
    } else if maps && !has(LinuxNamespaceType::User) {
        return Err(spec_err(
            path,
            "linux.uidMappings",
            "id mappings are only valid with a user namespace",
        ));
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(spec_err(
            path,
            "hostname",
            "unable to set hostname without a private UTS namespace",
        ));
    }
    if spec.domainname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(spec_err(
            path,
            "domainname",
            "unable to set domainname without a private UTS namespace",
        ));
    }
    if let Some(sysctl) = linux.sysctl() {
        for key in sysctl.keys() {
            let needs = if key.starts_with("net.") {
                Some(LinuxNamespaceType::Network)
            } else if key.starts_with("fs.mqueue.")
                || matches!(
                    key.as_str(),
                    "kernel.msgmax"
                        | "kernel.msgmnb"
                        | "kernel.msgmni"
                        | "kernel.sem"
                        | "kernel.shmall"
                        | "kernel.shmmax"
                        | "kernel.shmmni"
                        | "kernel.shm_rmid_forced"
                )
            {
                Some(LinuxNamespaceType::Ipc)
            } else if key == "kernel.hostname" || key == "kernel.domainname" {
                Some(LinuxNamespaceType::Uts)
            } else {
                None
            };
            match needs {
                Some(t) if !has(t) => {
                    return Err(spec_err(
                        path,
                        format!("linux.sysctl.{key}"),
                        format!("setting it requires a private {t} namespace"),
                    ))
                }
                Some(_) => {}
                None => {
                    return Err(spec_err(
                        path,
                        format!("linux.sysctl.{key}"),
                        "not a namespaced sysctl: it would change the host",
                    ))
                }
            }
        }
    }
    if linux.intel_rdt().is_some() {
        return Err(spec_err(path, "linux.intelRdt", "not supported by cryo"));
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(spec_err(
                path,
                format!("mounts[{i}].destination"),
                format!("{} is not an absolute path", m.destination().display()),
            ));
        }
    }
    for (i, p) in linux.masked_paths().iter().flatten().enumerate() {
        if !p.starts_with('/') {
            return Err(spec_err(
                path,
                format!("linux.maskedPaths[{i}]"),
                "not an absolute path",
            ));
        }
    }
    for (i, p) in linux.readonly_paths().iter().flatten().enumerate() {
        if !p.starts_with('/') {
            return Err(spec_err(
                path,
                format!("linux.readonlyPaths[{i}]"),
                "not an absolute path",
            ));
        }
    }
    if let Some(p) = linux.rootfs_propagation() {
        if !p.is_empty() && crate::rootfs::propagation_flags(p).is_none() {
            return Err(spec_err(
                path,
                "linux.rootfsPropagation",
                format!("unknown propagation {p:?}"),
            ));
        }
    }
    Ok(())
}

fn validate_process(process: &Process, path: &Path, prefix: &str) -> Result<()> {
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(spec_err(
            path,
            format!("{prefix}args"),
            "missing: nothing to run",
        ));
    }
    if !process.cwd().is_absolute() {
        return Err(spec_err(
            path,
            format!("{prefix}cwd"),
            format!("{} is not an absolute path", process.cwd().display()),
        ));
    }
    let mut kinds = HashSet::new();
    for (i, r) in process.rlimits().iter().flatten().enumerate() {
        if !kinds.insert(r.typ().to_string()) {
            return Err(spec_err(
                path,
                format!("{prefix}rlimits[{i}]"),
                format!("{} listed twice", r.typ()),
            ));
        }
        if r.soft() > r.hard() {
            return Err(spec_err(
                path,
                format!("{prefix}rlimits[{i}]"),
                "soft limit above hard limit",
            ));
        }
    }
    for (i, e) in process.env().iter().flatten().enumerate() {
        if !e.contains('=') {
            return Err(spec_err(
                path,
                format!("{prefix}env[{i}]"),
                format!("{e:?} is not KEY=VALUE"),
            ));
        }
    }
    if process
        .apparmor_profile()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        return Err(spec_err(
            path,
            format!("{prefix}apparmorProfile"),
            "AppArmor is not enabled on this host",
        ));
    }
    if process
        .selinux_label()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        return Err(spec_err(
            path,
            format!("{prefix}selinuxLabel"),
            "SELinux is not enabled on this host",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    }

    fn check(v: serde_json::Value) -> Result<Spec> {
        let p = Path::new("config.json");
        let spec: Spec = parse_json(p, &serde_json::to_vec(&v).unwrap())?;
        validate(&spec, p)?;
        Ok(spec)
    }

    #[test]
    fn base_config_is_valid() {
        check(base()).unwrap();
    }

    #[test]
    fn wrong_type_names_the_field() {
        let mut v = base();
        v["linux"]["resources"] = serde_json::json!({"memory": {"limit": "1G"}});
        let e = check(v).unwrap_err().to_string();
        assert!(e.contains("linux.resources.memory.limit"), "{e}");
    }

    #[test]
    fn unknown_capability_names_the_entry() {
        let mut v = base();
        v["process"]["capabilities"] = serde_json::json!({"bounding": ["CAP_CHOWN", "CAP_NOPE"]});
        let e = check(v).unwrap_err().to_string();
        assert!(e.contains("process.capabilities.bounding"), "{e}");
    }

    #[test]
    fn hostname_needs_uts() {
        let mut v = base();
        v["hostname"] = "x".into();
        let e = check(v).unwrap_err().to_string();
        assert!(e.contains("hostname") && e.contains("UTS"), "{e}");
    }

    #[test]
    fn user_namespace_needs_mappings() {
        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "user"}]);
        let e = check(v).unwrap_err().to_string();
        assert!(e.contains("linux.uidMappings"), "{e}");
    }

    #[test]
    fn duplicate_namespace_is_refused() {
        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "pid"}]);
        let e = check(v).unwrap_err().to_string();
        assert!(e.contains("linux.namespaces[1]"), "{e}");
    }

    #[test]
    fn host_sysctl_is_refused() {
        let mut v = base();
        v["linux"]["sysctl"] = serde_json::json!({"vm.swappiness": "10"});
        let e = check(v).unwrap_err().to_string();
        assert!(e.contains("linux.sysctl.vm.swappiness"), "{e}");
        let mut v = base();
        v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
        let e = check(v).unwrap_err().to_string();
        assert!(e.contains("net namespace"), "{e}");
    }

    #[test]
    fn empty_args_and_relative_cwd_are_refused() {
        let mut v = base();
        v["process"]["args"] = serde_json::json!([]);
        assert!(check(v).unwrap_err().to_string().contains("process.args"));
        let mut v = base();
        v["process"]["cwd"] = "tmp".into();
        assert!(check(v).unwrap_err().to_string().contains("process.cwd"));
    }

    #[test]
    fn bad_rlimit_is_refused() {
        let mut v = base();
        v["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]);
        assert!(check(v)
            .unwrap_err()
            .to_string()
            .contains("process.rlimits[0]"));
    }
}

//! Resolving a container path inside the rootfs without ever leaving it: symlinks in the
//! rootfs are followed as if the rootfs were `/` (like filepath-securejoin), so a config or an
//! image cannot point a mount at a host path through `../` or an absolute symlink.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

const MAX_SYMLINKS: usize = 255;

/// Joins `unsafe_path` under `root`, resolving symlinks relative to `root`.
/// Missing trailing components are kept as they are (they will be created).
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf> {
    let mut pending: Vec<std::ffi::OsString> = components(unsafe_path);
    pending.reverse();
    let mut current = PathBuf::new(); // relative to root
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == OsStr::new("..") {
            current.pop();
            continue;
        }
        let candidate = current.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Error::Other(format!(
                        "{}: too many levels of symbolic links",
                        unsafe_path.display()
                    )));
                }
                let target = std::fs::read_link(&full).map_err(|e| Error::io(&full, e))?;
                if target.is_absolute() {
                    current = PathBuf::new();
                }
                let mut t = components(&target);
                t.reverse();
                pending.extend(t);
            }
            _ => current = candidate,
        }
    }
    Ok(root.join(current))
}

fn components(p: &Path) -> Vec<std::ffi::OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotdot_and_absolute_links_stay_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("a/up")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/abs/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/up/tmp")).unwrap(),
            root.join("tmp")
        );
        assert_eq!(
            secure_join(root, Path::new("a/b/new")).unwrap(),
            root.join("a/b/new")
        );
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("l2", d.path().join("l1")).unwrap();
        std::os::unix::fs::symlink("l1", d.path().join("l2")).unwrap();
        assert!(secure_join(d.path(), Path::new("/l1/x")).is_err());
    }
}

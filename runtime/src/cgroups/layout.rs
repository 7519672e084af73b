//! Where the cgroup hierarchies are and where a container's cgroup goes in each.
//!
//! Reads /proc/self/mountinfo (which filesystem is mounted where, and which v1 controllers
//! each hierarchy carries) and /proc/self/cgroup (the calling process's own cgroups, the base
//! of a relative `cgroupsPath`). Pure parsing functions take the file contents, so they are
//! tested on text.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::UNIFIED;

/// The v1 controllers cryo manages; other v1 hierarchies (`name=systemd`, perf_event, rdma)
/// are not joined.
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "hugetlb",
    "net_cls", "net_prio",
];

/// Which cgroup manager a host gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Legacy or hybrid: one hierarchy per v1 controller (or group of co-mounted ones).
    V1,
    /// Unified: one cgroup2 hierarchy.
    V2,
}

/// One mounted hierarchy: its mount point and the cgroup path mounted there (`/` on a host,
/// something deeper inside a container without a cgroup namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where the hierarchy is mounted.
    pub point: PathBuf,
    /// The cgroup shown at `point`.
    pub root: String,
}

/// The hierarchies one manager works with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// v1 or v2.
    pub mode: Mode,
    /// v1: controller → its hierarchy; v2: [`UNIFIED`] → the cgroup2 mount.
    pub mounts: BTreeMap<String, Mount>,
    /// The calling process's own cgroup per key of `mounts`.
    pub own: BTreeMap<String, String>,
}

impl Layout {
    /// This host's layout, from /proc/self/mountinfo and /proc/self/cgroup.
    pub fn from_proc() -> Result<Layout> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|source| Error::Read {
                path: PathBuf::from(p),
                source,
            })
        };
        let mountinfo = read("/proc/self/mountinfo")?;
        let own = read("/proc/self/cgroup")?;
        Layout::parse(&mountinfo, &own)
    }

    /// A layout from the contents of mountinfo and /proc/self/cgroup.
    pub fn parse(mountinfo: &str, proc_cgroup: &str) -> Result<Layout> {
        let mut v1 = BTreeMap::new();
        let mut v2: Option<Mount> = None;
        for line in mountinfo.lines() {
            let Some(m) = parse_mountinfo_line(line) else {
                continue;
            };
            match m.fstype.as_str() {
                "cgroup" => {
                    for opt in m.super_opts.split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            v1.entry(opt.to_string()).or_insert_with(|| Mount {
                                point: m.point.clone(),
                                root: m.root.clone(),
                            });
                        }
                    }
                }
                "cgroup2" => {
                    // Prefer the canonical mount point when there are several.
                    let canonical = m.point == Path::new("/sys/fs/cgroup");
                    if v2.is_none() || canonical {
                        v2 = Some(Mount {
                            point: m.point,
                            root: m.root,
                        });
                    }
                }
                _ => {}
            }
        }
        let own_all = parse_proc_cgroup(proc_cgroup);
        if !v1.is_empty() {
            let own = v1
                .keys()
                .map(|k| {
                    (
                        k.clone(),
                        own_all.get(k).cloned().unwrap_or_else(|| "/".into()),
                    )
                })
                .collect();
            return Ok(Layout {
                mode: Mode::V1,
                mounts: v1,
                own,
            });
        }
        let Some(m) = v2 else {
            return Err(Error::Layout {
                reason: "no cgroup or cgroup2 filesystem in /proc/self/mountinfo".into(),
            });
        };
        let own = own_all.get("").cloned().unwrap_or_else(|| "/".into());
        Ok(Layout {
            mode: Mode::V2,
            mounts: BTreeMap::from([(UNIFIED.to_string(), m)]),
            own: BTreeMap::from([(UNIFIED.to_string(), own)]),
        })
    }

    /// A layout for a cgroupfs tree at `root` (see [`super::create_at`]).
    pub fn at(root: &Path, mode: Mode) -> Layout {
        let mounts: BTreeMap<String, Mount> = match mode {
            Mode::V1 => V1_CONTROLLERS
                .iter()
                .filter(|c| root.join(c).is_dir())
                .map(|c| {
                    let m = Mount {
                        point: root.join(c),
                        root: "/".into(),
                    };
                    (c.to_string(), m)
                })
                .collect(),
            Mode::V2 => BTreeMap::from([(
                UNIFIED.to_string(),
                Mount {
                    point: root.to_path_buf(),
                    root: "/".into(),
                },
            )]),
        };
        let own = mounts
            .keys()
            .map(|k| (k.clone(), "/".to_string()))
            .collect();
        Layout { mode, mounts, own }
    }

    /// Mount points by key, as [`super::CgroupState::mounts`] keeps them.
    pub fn mount_points(&self) -> BTreeMap<String, PathBuf> {
        self.mounts
            .iter()
            .map(|(k, m)| (k.clone(), m.point.clone()))
            .collect()
    }

    /// The container's cgroup directory in each hierarchy, as runc's cgroupfs driver places it:
    /// an absolute `cgroups_path` under the mount point, a relative one under the caller's own
    /// cgroup, none (or empty) at `/cryo/<id>`. `..` never climbs above the mount point.
    pub fn resolve(
        &self,
        cgroups_path: Option<&str>,
        container_id: &str,
    ) -> Result<BTreeMap<String, PathBuf>> {
        let default = format!("/cryo/{container_id}");
        let inner = match cgroups_path {
            Some(p) if !p.is_empty() => p,
            _ => default.as_str(),
        };
        if inner.contains('\0') {
            return Err(Error::Invalid {
                field: "linux.cgroupsPath".into(),
                value: format!("{inner:?}"),
                reason: "a path cannot contain NUL".into(),
            });
        }
        let mut out = BTreeMap::new();
        for (key, mount) in &self.mounts {
            let base = if inner.starts_with('/') {
                String::new()
            } else {
                let own = self.own.get(key).map(String::as_str).unwrap_or("/");
                relative_to(own, &mount.root)
            };
            let rel = clean(&format!("{base}/{inner}"));
            if rel.is_empty() {
                return Err(Error::Invalid {
                    field: "linux.cgroupsPath".into(),
                    value: format!("{inner:?}"),
                    reason: format!("resolves to the root of the {key} hierarchy"),
                });
            }
            out.insert(key.clone(), mount.point.join(rel));
        }
        Ok(out)
    }
}

/// One parsed mountinfo line.
#[derive(Debug)]
struct MountLine {
    root: String,
    point: PathBuf,
    fstype: String,
    super_opts: String,
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse_mountinfo_line(line: &str) -> Option<MountLine> {
    let (pre, post) = line.split_once(" - ")?;
    let pre: Vec<&str> = pre.split(' ').collect();
    let post: Vec<&str> = post.split(' ').collect();
    Some(MountLine {
        root: unescape(pre.get(3)?),
        point: PathBuf::from(unescape(pre.get(4)?)),
        fstype: (*post.first()?).to_string(),
        super_opts: (*post.get(2)?).to_string(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// /proc/self/cgroup: `hierarchy-id:controllers:path`. Returns controller → path, with the
/// v2 entry (`0::/path`) under the empty key.
fn parse_proc_cgroup(content: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in content.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            out.insert(String::new(), path.to_string());
        } else {
            for c in ctrls.split(',') {
                out.insert(c.to_string(), path.to_string());
            }
        }
    }
    out
}

/// `own` seen from a mount whose root is `mount_root` (`/a/b` under `/a` is `b`).
fn relative_to(own: &str, mount_root: &str) -> String {
    let own = clean(own);
    let root = clean(mount_root);
    if root.is_empty() {
        return own;
    }
    match own.strip_prefix(&root) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            rest.trim_start_matches('/').to_string()
        }
        // The caller's cgroup is outside what is mounted: runc would join the two; so do we.
        _ => own,
    }
}

/// Lexically cleans a path into a relative one without `.`, `..` above the start, or
/// repeated slashes.
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or_default()),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
4:memory:/process_api/937f
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn hybrid_is_v1_without_systemd_or_unified() {
        let l = Layout::parse(HYBRID, HYBRID_SELF).unwrap();
        assert_eq!(l.mode, Mode::V1);
        let keys: Vec<_> = l.mounts.keys().cloned().collect();
        assert_eq!(keys, ["cpu", "cpuacct", "cpuset", "memory"]);
        assert_eq!(l.own["memory"], "/process_api/937f");
    }

    #[test]
    fn comounted_controllers_share_a_mount() {
        let mi = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let l = Layout::parse(mi, "2:cpu,cpuacct:/user.slice\n").unwrap();
        assert_eq!(
            l.mounts["cpu"].point,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(l.mounts["cpuacct"], l.mounts["cpu"]);
        let p = l.resolve(Some("x"), "id").unwrap();
        assert_eq!(
            p["cpuacct"],
            Path::new("/sys/fs/cgroup/cpu,cpuacct/user.slice/x")
        );
    }

    #[test]
    fn unified_only_is_v2() {
        let mi = "\
25 20 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
26 20 0:22 / /mnt/other\\040dir rw - cgroup2 cgroup2 rw
";
        let l = Layout::parse(mi, "0::/user.slice/session-1.scope\n").unwrap();
        assert_eq!(l.mode, Mode::V2);
        assert_eq!(l.mounts[UNIFIED].point, Path::new("/sys/fs/cgroup"));
        let p = l.resolve(Some("ctr"), "id").unwrap();
        assert_eq!(
            p[UNIFIED],
            Path::new("/sys/fs/cgroup/user.slice/session-1.scope/ctr")
        );
        assert_eq!(unescape("/mnt/other\\040dir"), "/mnt/other dir");
    }

    #[test]
    fn no_cgroupfs_is_an_error() {
        let e = Layout::parse("1 0 0:1 / / rw - ext4 /dev/sda rw\n", "").unwrap_err();
        assert!(e.to_string().contains("no cgroup"), "{e}");
    }

    #[test]
    fn paths_as_runc_places_them() {
        let l = Layout::parse(HYBRID, HYBRID_SELF).unwrap();
        let abs = l.resolve(Some("/a/b"), "id").unwrap();
        assert_eq!(abs["memory"], Path::new("/sys/fs/cgroup/memory/a/b"));
        let rel = l.resolve(Some("a/b"), "id").unwrap();
        assert_eq!(
            rel["memory"],
            Path::new("/sys/fs/cgroup/memory/process_api/937f/a/b")
        );
        assert_eq!(rel["cpu"], Path::new("/sys/fs/cgroup/cpu/a/b"));
        let none = l.resolve(None, "c1").unwrap();
        assert_eq!(none["cpuset"], Path::new("/sys/fs/cgroup/cpuset/cryo/c1"));
        let esc = l.resolve(Some("/../../etc"), "id").unwrap();
        assert_eq!(esc["cpu"], Path::new("/sys/fs/cgroup/cpu/etc"));
        assert!(l.resolve(Some("/.."), "id").is_err());
    }

    #[test]
    fn mount_root_inside_a_container() {
        // A container without a cgroup namespace sees its own cgroup mounted at the mount point.
        let mi = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let l = Layout::parse(mi, "4:memory:/docker/abc\n").unwrap();
        let p = l.resolve(Some("inner"), "id").unwrap();
        assert_eq!(p["memory"], Path::new("/sys/fs/cgroup/memory/inner"));
    }
}

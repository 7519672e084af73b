//! Namespace kinds: their clone flags, their /proc/PID/ns names, and the order in which they
//! are joined (user first, so the joiner holds capabilities over the others; mount last, so
//! the other namespace files are still opened through the host's /proc).

use nix::sched::CloneFlags;
use oci_spec::runtime::LinuxNamespaceType;
use serde::{Deserialize, Serialize};

/// The clone flag of a namespace kind.
pub fn clone_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        // CLONE_NEWTIME (0x80) is not in nix's CloneFlags.
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(0x80),
    }
}

/// The file name under /proc/PID/ns.
pub fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Sort key for joining: user first, mount last.
pub fn join_rank(t: LinuxNamespaceType) -> u8 {
    match t {
        LinuxNamespaceType::User => 0,
        LinuxNamespaceType::Mount => 9,
        _ => 5,
    }
}

/// What the init does with namespaces: join these (kind, path), then create those.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NamespacePlan {
    /// Existing namespaces to enter, in join order.
    pub join: Vec<(LinuxNamespaceType, std::path::PathBuf)>,
    /// New namespaces to create.
    pub create: Vec<LinuxNamespaceType>,
}

impl NamespacePlan {
    /// From the spec's namespace list: entries with a path are joined, others created.
    pub fn from_spec(list: &[oci_spec::runtime::LinuxNamespace]) -> Self {
        let mut plan = NamespacePlan::default();
        for ns in list {
            match ns.path() {
                Some(p) => plan.join.push((ns.typ(), p.clone())),
                None => plan.create.push(ns.typ()),
            }
        }
        plan.join.sort_by_key(|(t, _)| join_rank(*t));
        plan
    }

    /// For exec: join every namespace the container has, through its init's /proc entries.
    pub fn for_exec(list: &[oci_spec::runtime::LinuxNamespace], pid: i32) -> Self {
        let mut join: Vec<_> = list
            .iter()
            .map(|ns| {
                let p = std::path::PathBuf::from(format!("/proc/{pid}/ns/{}", proc_name(ns.typ())));
                (ns.typ(), p)
            })
            .collect();
        join.sort_by_key(|(t, _)| join_rank(*t));
        NamespacePlan {
            join,
            create: Vec::new(),
        }
    }

    /// True if a new user namespace is created.
    pub fn new_user(&self) -> bool {
        self.create.contains(&LinuxNamespaceType::User)
    }

    /// True if the process ends up in a user namespace other than the host's.
    pub fn in_userns(&self) -> bool {
        self.new_user()
            || self
                .join
                .iter()
                .any(|(t, _)| *t == LinuxNamespaceType::User)
    }

    /// Flags to unshare after the user namespace exists.
    pub fn unshare_flags(&self) -> CloneFlags {
        self.create
            .iter()
            .filter(|t| **t != LinuxNamespaceType::User)
            .fold(CloneFlags::empty(), |f, t| f | clone_flag(*t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_orders_user_first_mount_last() {
        let list: Vec<oci_spec::runtime::LinuxNamespace> =
            serde_json::from_value(serde_json::json!([
                {"type": "mount", "path": "/proc/1/ns/mnt"},
                {"type": "network", "path": "/proc/1/ns/net"},
                {"type": "user", "path": "/proc/1/ns/user"},
                {"type": "pid"}
            ]))
            .unwrap();
        let p = NamespacePlan::from_spec(&list);
        let kinds: Vec<_> = p.join.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            kinds,
            vec![
                LinuxNamespaceType::User,
                LinuxNamespaceType::Network,
                LinuxNamespaceType::Mount
            ]
        );
        assert_eq!(p.create, vec![LinuxNamespaceType::Pid]);
        assert_eq!(p.unshare_flags(), CloneFlags::CLONE_NEWPID);
        let e = NamespacePlan::for_exec(&list, 42);
        assert_eq!(e.join[0].1, std::path::PathBuf::from("/proc/42/ns/user"));
    }
}

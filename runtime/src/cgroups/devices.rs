//! The device access rules a container's cgroup enforces, shared by v1 (`devices.allow` /
//! `devices.deny`) and v2 (an eBPF program, `v2/devices.rs`).
//!
//! As runc does, the effective list is: deny everything, then `linux.resources.devices` in
//! order, then runc's default allow list (mknod of any device, /dev/null, zero, full, random,
//! urandom, tty, ptmx, pts/*, net/tun). Device nodes listed in `linux.devices` get no implicit
//! rule (runc and crun add none): the spec's `linux.resources.devices` must allow them.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::error::{Error, Result};

/// Device access bits, as both the v1 kernel files and the eBPF context spell them.
pub const ACC_MKNOD: u32 = 1;
/// Read.
pub const ACC_READ: u32 = 2;
/// Write.
pub const ACC_WRITE: u32 = 4;
/// All of them.
pub const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// Which devices a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every device, whatever the numbers and access (the kernel's `a`).
    All,
    /// Block devices.
    Block,
    /// Character devices.
    Char,
}

/// One normalized rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Allow or deny.
    pub allow: bool,
    /// Device type.
    pub kind: Kind,
    /// Major number, `None` for any.
    pub major: Option<u32>,
    /// Minor number, `None` for any.
    pub minor: Option<u32>,
    /// [`ACC_MKNOD`] | [`ACC_READ`] | [`ACC_WRITE`].
    pub access: u32,
}

impl Rule {
    const fn allow(kind: Kind, major: Option<u32>, minor: Option<u32>, access: u32) -> Rule {
        Rule {
            allow: true,
            kind,
            major,
            minor,
            access,
        }
    }

    /// The rule as `devices.allow`/`devices.deny` take it: `a`, `c 1:3 rwm`, `b *:* m`.
    pub fn v1_string(&self) -> String {
        let kind = match self.kind {
            Kind::All => return "a".into(),
            Kind::Block => 'b',
            Kind::Char => 'c',
        };
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        let mut acc = String::new();
        for (bit, c) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
            if self.access & bit != 0 {
                acc.push(c);
            }
        }
        format!("{kind} {}:{} {acc}", num(self.major), num(self.minor))
    }
}

/// runc's `AllowedDevices`, appended after the user's rules.
pub const DEFAULT_ALLOWED: &[Rule] = &[
    Rule::allow(Kind::Char, None, None, ACC_MKNOD),
    Rule::allow(Kind::Block, None, None, ACC_MKNOD),
    Rule::allow(Kind::Char, Some(1), Some(3), ACC_ALL), // /dev/null
    Rule::allow(Kind::Char, Some(1), Some(8), ACC_ALL), // /dev/random
    Rule::allow(Kind::Char, Some(1), Some(7), ACC_ALL), // /dev/full
    Rule::allow(Kind::Char, Some(5), Some(0), ACC_ALL), // /dev/tty
    Rule::allow(Kind::Char, Some(1), Some(5), ACC_ALL), // /dev/zero
    Rule::allow(Kind::Char, Some(1), Some(9), ACC_ALL), // /dev/urandom
    Rule::allow(Kind::Char, Some(136), None, ACC_ALL),  // /dev/pts/*
    Rule::allow(Kind::Char, Some(5), Some(2), ACC_ALL), // /dev/ptmx
    Rule::allow(Kind::Char, Some(10), Some(200), ACC_ALL), // /dev/net/tun
];

const DENY_ALL: Rule = Rule {
    allow: false,
    kind: Kind::All,
    major: None,
    minor: None,
    access: ACC_ALL,
};

/// The rules to enforce for `linux.resources.devices`, in order: deny all, the user's, runc's
/// defaults.
pub fn effective_rules(devices: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>> {
    let mut out = Vec::with_capacity(devices.len() + DEFAULT_ALLOWED.len() + 1);
    out.push(DENY_ALL);
    for (i, d) in devices.iter().enumerate() {
        out.push(normalize(i, d)?);
    }
    out.extend_from_slice(DEFAULT_ALLOWED);
    Ok(out)
}

fn normalize(i: usize, d: &LinuxDeviceCgroup) -> Result<Rule> {
    let field = |f: &str| format!("linux.resources.devices[{i}].{f}");
    let kind = match d.typ().unwrap_or_default() {
        LinuxDeviceType::A => Kind::All,
        LinuxDeviceType::B => Kind::Block,
        LinuxDeviceType::C | LinuxDeviceType::U => Kind::Char,
        LinuxDeviceType::P => {
            return Err(Error::Invalid {
                field: field("type"),
                value: "\"p\"".into(),
                reason: "the devices cgroup has no rule type for FIFOs (use a, b, c or u)".into(),
            })
        }
    };
    let num = |n: Option<i64>, name: &str| -> Result<Option<u32>> {
        match n {
            None | Some(-1) => Ok(None),
            Some(v) => u32::try_from(v).map(Some).map_err(|_| Error::Invalid {
                field: field(name),
                value: v.to_string(),
                reason: "expected a device number (0 to 4294967295) or -1 for any".into(),
            }),
        }
    };
    let major = num(d.major(), "major")?;
    let minor = num(d.minor(), "minor")?;
    let acc = d.access().as_deref().unwrap_or("");
    let mut access = 0;
    for c in acc.chars() {
        access |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => {
                return Err(Error::Invalid {
                    field: field("access"),
                    value: format!("{acc:?}"),
                    reason: "expected letters from \"rwm\"".into(),
                })
            }
        };
    }
    if access == 0 {
        access = ACC_ALL;
    }
    Ok(Rule {
        allow: d.allow(),
        kind,
        major,
        minor,
        access,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(
        allow: bool,
        typ: Option<LinuxDeviceType>,
        mm: Option<(i64, i64)>,
        acc: &str,
    ) -> LinuxDeviceCgroup {
        let mut d = LinuxDeviceCgroup::default();
        d.set_allow(allow);
        d.set_typ(typ);
        d.set_major(mm.map(|m| m.0));
        d.set_minor(mm.map(|m| m.1));
        d.set_access(Some(acc.into()));
        d
    }

    #[test]
    fn effective_list_is_deny_user_defaults() {
        let spec = [
            dev(false, None, None, "rwm"),
            dev(true, Some(LinuxDeviceType::C), Some((10, 229)), "rw"),
            dev(true, Some(LinuxDeviceType::U), Some((4, -1)), ""),
        ];
        let r = effective_rules(&spec).unwrap();
        let s: Vec<String> = r.iter().map(Rule::v1_string).collect();
        assert_eq!(s[0], "a");
        assert!(!r[0].allow);
        assert_eq!(s[1], "a");
        assert_eq!(s[2], "c 10:229 rw");
        assert_eq!(s[3], "c 4:* rwm");
        assert_eq!(s[4], "c *:* m");
        assert_eq!(s[5], "b *:* m");
        assert_eq!(s[6], "c 1:3 rwm");
        assert_eq!(s.len(), 1 + spec.len() + DEFAULT_ALLOWED.len());
    }

    #[test]
    fn bad_rules_name_the_field() {
        let e = effective_rules(&[dev(true, Some(LinuxDeviceType::C), Some((1, 3)), "rx")])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "linux.resources.devices[0].access: expected letters from \"rwm\", found \"rx\""
        );
        let e = effective_rules(&[
            dev(true, None, None, "r"),
            dev(true, Some(LinuxDeviceType::P), None, "r"),
        ])
        .unwrap_err();
        assert!(
            e.to_string().starts_with("linux.resources.devices[1].type"),
            "{e}"
        );
        let e = effective_rules(&[dev(true, Some(LinuxDeviceType::C), Some((-5, 0)), "r")])
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("linux.resources.devices[0].major"),
            "{e}"
        );
    }
}

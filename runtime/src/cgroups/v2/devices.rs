//! v2 devices: cgroup v2 has no devices controller; access is decided by an eBPF program of
//! type `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the cgroup (runc's `devicefilter`).
//!
//! The program is generated from the rule list of [`crate::cgroups::devices`]: the rules are
//! checked last to first and the first that matches decides (so a later rule overrides an
//! earlier one, as writing them one by one to v1 does); the list always starts with "deny
//! all", so nothing falls through. An allow rule matches an access that it fully covers, a
//! deny rule one it touches. A rule of type `a` matches every device and access.
//!
//! Attaching uses `BPF_F_ALLOW_MULTI`; programs attached earlier to the same cgroup (a
//! previous `set`) are detached after the new one is in, so there is no window without a
//! filter. A kernel without the bpf syscall (ENOSYS) gets a warning, once, and no filter.

use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Once;

use oci_spec::runtime::LinuxDeviceCgroup;

use crate::cgroups::devices::{effective_rules, Kind, Rule, ACC_ALL};
use crate::cgroups::error::{Error, Result};

/// Installs the filter for `linux.resources.devices` on the cgroup `dir`.
pub fn set(dir: &Path, devices: &[LinuxDeviceCgroup]) -> Result<()> {
    let rules = effective_rules(devices)?;
    let prog = program(&rules);
    let bpf_err = |op: &'static str| {
        move |source: std::io::Error| Error::Bpf {
            op,
            path: dir.to_path_buf(),
            source,
            log: None,
        }
    };
    let cg = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| bpf_err("opening the cgroup")(e.into()))?;
    // SAFETY: open returned a new fd that nothing else owns.
    let cg = unsafe { OwnedFd::from_raw_fd(cg) };
    let fd = match load(&prog) {
        Ok(fd) => fd,
        Err((source, _)) if source.raw_os_error() == Some(libc::ENOSYS) => {
            static WARN: Once = Once::new();
            WARN.call_once(|| {
                tracing::warn!(
                    "no bpf(2) in this kernel: device rules are not enforced on cgroup v2"
                );
            });
            return Ok(());
        }
        Err((source, log)) => {
            return Err(Error::Bpf {
                op: "loading the device filter",
                path: dir.to_path_buf(),
                source,
                log,
            })
        }
    };
    let (old, flags) = query(&cg).map_err(bpf_err("listing attached device filters"))?;
    let mut old_fds = Vec::with_capacity(old.len());
    for id in old {
        old_fds.push(prog_fd_by_id(id).map_err(bpf_err("opening an attached device filter"))?);
    }
    if !old_fds.is_empty() && flags & BPF_F_ALLOW_MULTI == 0 {
        // A single-program attachment (not ours) cannot coexist with a multi one.
        for old in &old_fds {
            detach(&cg, old).map_err(bpf_err("detaching the previous device filter"))?;
        }
        old_fds.clear();
    }
    attach(&cg, &fd).map_err(bpf_err("attaching the device filter"))?;
    for old in &old_fds {
        detach(&cg, old).map_err(bpf_err("detaching the previous device filter"))?;
    }
    Ok(())
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

// Opcodes: class | op | source.
const LDX_MEM_W: u8 = 0x01 | 0x60; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x04 | 0x50;
const ALU32_RSH_K: u8 = 0x04 | 0x70;
const ALU32_MOV_K: u8 = 0x04 | 0xb0;
const ALU32_MOV_X: u8 = 0x04 | 0xb0 | 0x08;
const JMP_JEQ_K: u8 = 0x05 | 0x10;
const JMP_JNE_K: u8 = 0x05 | 0x50;
const JMP_EXIT: u8 = 0x05 | 0x90;

// struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }:
// access_type = (access << 16) | type.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The filter for `rules` (last match wins; see the module docs).
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, R2, R1, 0, 0),
        insn(ALU32_AND_K, R2, 0, 0, 0xffff),
        insn(LDX_MEM_W, R3, R1, 0, 0),
        insn(ALU32_RSH_K, R3, 0, 0, 16),
        insn(LDX_MEM_W, R4, R1, 4, 0),
        insn(LDX_MEM_W, R5, R1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        // Jumps carry a placeholder offset of 0, patched to "past this block" below.
        let mut block = Vec::new();
        let all = rule.kind == Kind::All;
        if !all {
            let t = if rule.kind == Kind::Block {
                DEV_BLOCK
            } else {
                DEV_CHAR
            };
            block.push(insn(JMP_JNE_K, R2, 0, 0, t));
            if let Some(m) = rule.major {
                block.push(insn(JMP_JNE_K, R4, 0, 0, imm(m)));
            }
            if let Some(m) = rule.minor {
                block.push(insn(JMP_JNE_K, R5, 0, 0, imm(m)));
            }
            if rule.access != ACC_ALL {
                block.push(insn(ALU32_MOV_X, R1, R3, 0, 0));
                if rule.allow {
                    // Skip unless every requested bit is allowed.
                    let uncovered = i32::from(u8::try_from(!rule.access & ACC_ALL).unwrap_or(0));
                    block.push(insn(ALU32_AND_K, R1, 0, 0, uncovered));
                    block.push(insn(JMP_JNE_K, R1, 0, 0, 0));
                } else {
                    // Skip unless some requested bit is denied.
                    let denied = i32::from(u8::try_from(rule.access & ACC_ALL).unwrap_or(0));
                    block.push(insn(ALU32_AND_K, R1, 0, 0, denied));
                    block.push(insn(JMP_JEQ_K, R1, 0, 0, 0));
                }
            }
        }
        block.push(insn(ALU32_MOV_K, R0, 0, 0, i32::from(rule.allow)));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let n = block.len();
        for (k, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP_JNE_K || ins.code == JMP_JEQ_K {
                ins.off = i16::try_from(n - 1 - k).unwrap_or(i16::MAX);
            }
        }
        p.extend(block);
        if all {
            // The verifier rejects unreachable instructions: nothing may follow.
            return p;
        }
    }
    p.push(insn(ALU32_MOV_K, R0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

/// Device numbers are u32 in the context; the immediate is compared after sign extension
/// of a 32-bit value against a zero-extended register, so numbers must stay below 2^31
/// (real majors are < 4096, minors < 2^20).
fn imm(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

// bpf(2) commands, program and attach types, flags (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Calls bpf(2) with `attr`; returns its non-negative result.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i32> {
    // SAFETY: `attr` is a live, initialized #[repr(C)] prefix of `union bpf_attr` for `cmd`,
    // and its exact size is passed; the kernel zero-fills the fields beyond it. Pointers
    // inside it (instructions, license, log, id array) outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    i32::try_from(r).map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))
}

fn fd_u32(fd: &OwnedFd) -> u32 {
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: bpf(2) returned a new fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Loads the program; on failure, retries with the verifier log to explain why.
fn load(prog: &[Insn]) -> std::result::Result<OwnedFd, (std::io::Error, Option<String>)> {
    let license = b"Apache\0";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(prog.len()).unwrap_or(u32::MAX),
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    attr.prog_name[..11].copy_from_slice(b"cryo_device");
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(e)
            if e.raw_os_error() == Some(libc::ENOSYS) || e.raw_os_error() == Some(libc::EPERM) =>
        {
            Err((e, None))
        }
        Err(e) => {
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = u32::try_from(log.len()).unwrap_or(0);
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr).map(owned);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_string();
            Err((e, (!text.is_empty()).then(|| format!("verifier: {text}"))))
        }
    }
}

fn query(cg: &OwnedFd) -> std::io::Result<(Vec<u32>, u32)> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: fd_u32(cg),
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: u32::try_from(ids.len()).unwrap_or(0),
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    ids.truncate(usize::try_from(attr.prog_cnt).unwrap_or(0).min(64));
    Ok((ids, attr.attach_flags))
}

fn prog_fd_by_id(id: u32) -> std::io::Result<OwnedFd> {
    let mut attr = GetFdAttr {
        prog_id: id,
        ..Default::default()
    };
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned)
}

fn attach(cg: &OwnedFd, prog: &OwnedFd) -> std::io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: fd_u32(cg),
        attach_bpf_fd: fd_u32(prog),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

fn detach(cg: &OwnedFd, prog: &OwnedFd) -> std::io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: fd_u32(cg),
        attach_bpf_fd: fd_u32(prog),
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    bpf(BPF_PROG_DETACH, &mut attr).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::devices::{ACC_MKNOD, ACC_READ, ACC_WRITE};
    use oci_spec::runtime::LinuxDeviceType;

    /// Runs the subset of eBPF the generator emits on a device access.
    fn run(p: &[Insn], typ: i32, major: u32, minor: u32, access: u32) -> bool {
        let ctx = [(access << 16) | u32::try_from(typ).unwrap(), major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            let k = u64::from_ne_bytes(i64::from(i.imm).to_ne_bytes());
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads come from the context");
                    r[dst] = u64::from(ctx[usize::try_from(i.off).unwrap() / 4]);
                }
                ALU32_AND_K => r[dst] = (r[dst] & k) & 0xffff_ffff,
                ALU32_RSH_K => r[dst] = (r[dst] & 0xffff_ffff) >> k,
                ALU32_MOV_K => r[dst] = k & 0xffff_ffff,
                ALU32_MOV_X => r[dst] = r[src] & 0xffff_ffff,
                JMP_JNE_K | JMP_JEQ_K => {
                    let eq = r[dst] == k;
                    if eq == (i.code == JMP_JEQ_K) {
                        pc += usize::try_from(i.off).unwrap();
                    }
                }
                JMP_EXIT => return r[0] == 1,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn dev(allow: bool, t: LinuxDeviceType, mm: (i64, i64), acc: &str) -> LinuxDeviceCgroup {
        let mut d = LinuxDeviceCgroup::default();
        d.set_allow(allow);
        d.set_typ(Some(t));
        d.set_major(Some(mm.0));
        d.set_minor(Some(mm.1));
        d.set_access(Some(acc.into()));
        d
    }

    #[test]
    fn filter_follows_the_rules() {
        use LinuxDeviceType::{B, C};
        let rules = effective_rules(&[
            dev(true, C, (10, 229), "rw"),
            dev(true, B, (8, -1), "r"),
            // runc appends its defaults after the user's rules, so this deny loses to them.
            dev(false, C, (1, 5), "w"),
        ])
        .unwrap();
        let p = program(&rules);
        let (rd, wr, mk) = (ACC_READ, ACC_WRITE, ACC_MKNOD);
        assert!(
            run(&p, DEV_CHAR, 1, 3, rd | wr),
            "/dev/null allowed by default"
        );
        assert!(run(&p, DEV_CHAR, 10, 229, rd | wr));
        assert!(!run(&p, DEV_CHAR, 10, 230, rd), "only 10:229");
        assert!(run(&p, DEV_BLOCK, 8, 17, rd));
        assert!(!run(&p, DEV_BLOCK, 8, 17, rd | wr), "sda is read-only");
        assert!(!run(&p, DEV_CHAR, 1, 11, rd), "/dev/kmsg denied");
        assert!(
            run(&p, DEV_CHAR, 99, 1, mk),
            "mknod of anything (runc default)"
        );
        assert!(run(&p, DEV_CHAR, 136, 4, rd | wr), "pts");
        assert!(run(&p, DEV_CHAR, 1, 5, wr));
    }

    #[test]
    fn later_deny_overrides_earlier_allow() {
        let rules = [
            Rule {
                allow: false,
                kind: Kind::All,
                major: None,
                minor: None,
                access: ACC_ALL,
            },
            Rule {
                allow: true,
                kind: Kind::Char,
                major: Some(4),
                minor: None,
                access: ACC_ALL,
            },
            Rule {
                allow: false,
                kind: Kind::Char,
                major: Some(4),
                minor: Some(0),
                access: ACC_WRITE,
            },
        ];
        let p = program(&rules);
        assert!(run(&p, DEV_CHAR, 4, 1, ACC_READ | ACC_WRITE));
        assert!(run(&p, DEV_CHAR, 4, 0, ACC_READ));
        assert!(!run(&p, DEV_CHAR, 4, 0, ACC_READ | ACC_WRITE));
        assert!(!run(&p, DEV_BLOCK, 4, 0, ACC_READ));
    }

    #[test]
    fn allow_all_ends_the_program() {
        let rules = effective_rules(&[dev(true, LinuxDeviceType::A, (-1, -1), "rwm")]).unwrap();
        let p = program(&rules);
        assert!(run(&p, DEV_BLOCK, 8, 0, ACC_ALL));
        // Nothing after the unconditional exit of the newest "a" rule... except defaults,
        // which come later in the list and so are checked first.
        assert_eq!(p.last().map(|i| i.code), Some(JMP_EXIT));
    }
}

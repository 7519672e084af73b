//! Seccomp filters from `linux.seccomp`, compiled by libseccomp. Syscall names libseccomp does
//! not know on this architecture are skipped (runc does the same), so one profile serves
//! several kernels; a malformed rule is an error naming its index.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use crate::error::{Error, Result};

fn err(field: String, msg: impl std::fmt::Display) -> Error {
    Error::Unsupported {
        field,
        msg: msg.to_string(),
    }
}

fn action(a: LinuxSeccompAction, errno: Option<u32>, field: &str) -> Result<ScmpAction> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(
            i32::try_from(errno.unwrap_or(libc::EPERM as u32))
                .map_err(|_| err(field.to_string(), "errnoRet out of range"))?,
        ),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(
            u16::try_from(errno.unwrap_or(libc::EPERM as u32))
                .map_err(|_| err(field.to_string(), "errnoRet out of range"))?,
        ),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(err(
                field.to_string(),
                "SCMP_ACT_NOTIFY is not supported by cryo yet",
            ))
        }
    })
}

fn op(o: LinuxSeccompOperator, value_two: u64) -> ScmpCompareOp {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value_two),
    }
}

/// Compiles the filter (not loaded yet).
pub fn compile(s: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let lib = |field: &str| {
        let field = field.to_string();
        move |e: libseccomp::error::SeccompError| err(field, e)
    };
    let default = action(
        s.default_action(),
        s.default_errno_ret(),
        "linux.seccomp.defaultAction",
    )?;
    let mut ctx =
        ScmpFilterContext::new_filter(default).map_err(lib("linux.seccomp.defaultAction"))?;
    for (i, arch) in s.architectures().iter().flatten().enumerate() {
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let a: ScmpArch = name
            .parse()
            .map_err(|e| err(format!("linux.seccomp.architectures[{i}]"), e))?;
        ctx.add_arch(a)
            .map_err(lib(&format!("linux.seccomp.architectures[{i}]")))?;
    }
    for flag in s.flags().iter().flatten() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => ctx.set_ctl_log(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => ctx.set_ctl_ssb(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => ctx.set_ctl_tsync(true),
        }
        .map_err(lib("linux.seccomp.flags"))?;
    }
    // cryo sets no_new_privs itself, in the order the spec asks.
    ctx.set_ctl_nnp(false).map_err(lib("linux.seccomp"))?;
    for (i, rule) in s.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let act = action(rule.action(), rule.errno_ret(), &field)?;
        if act == default {
            continue; // libseccomp refuses rules equal to the default action
        }
        let args = rule.args().clone().unwrap_or_default();
        let conds: Vec<ScmpArgCompare> = args
            .iter()
            .map(|a| {
                u32::try_from(a.index())
                    .map(|idx| {
                        ScmpArgCompare::new(
                            idx,
                            op(a.op(), a.value()),
                            if a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                                a.value_two().unwrap_or(0)
                            } else {
                                a.value()
                            },
                        )
                    })
                    .map_err(|_| err(format!("{field}.args"), "index out of range"))
            })
            .collect::<Result<_>>()?;
        // libseccomp refuses two conditions on one argument in one rule: runc then adds one
        // rule per condition.
        let mut idx: Vec<usize> = args.iter().map(|a| a.index()).collect();
        idx.sort_unstable();
        let repeated = idx.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                tracing::debug!("{field}: syscall {name} unknown here, skipped");
                continue;
            };
            let r = if conds.is_empty() {
                ctx.add_rule(act, sc)
            } else if repeated {
                conds
                    .iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, sc, &[*c]))
            } else {
                ctx.add_rule_conditional(act, sc, &conds)
            };
            r.map_err(|e| err(format!("{field} ({name})"), e))?;
        }
    }
    Ok(ctx)
}

/// Loads a compiled filter into the calling thread.
pub fn load(ctx: &ScmpFilterContext) -> Result<()> {
    ctx.load()
        .map_err(|e| Error::Other(format!("loading seccomp filter: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_compiles_and_bad_action_names_rule() {
        let s: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["mkdirat", "no_such_syscall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
            ]
        }))
        .unwrap();
        compile(&s).unwrap();
        let s: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]
        }))
        .unwrap();
        let e = compile(&s).unwrap_err().to_string();
        assert!(e.contains("linux.seccomp.syscalls[0]"), "{e}");
    }
}

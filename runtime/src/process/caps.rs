//! Capabilities: the spec's five sets, applied in runc's order (bounding set dropped while
//! still privileged, then keep-caps across the uid change, then effective/permitted/
//! inheritable/ambient). Capabilities unknown to the running kernel are skipped, as runc does.

use std::collections::HashSet;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::LinuxCapabilities;

use crate::error::{Error, Result};

fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Converts a spec set into the kernel's, dropping what this kernel does not know.
pub fn convert(set: Option<&HashSet<oci_spec::runtime::Capability>>) -> CapsHashSet {
    let last = last_cap();
    set.into_iter()
        .flatten()
        .filter_map(|c| format!("CAP_{c}").parse::<Capability>().ok())
        .filter(|c| c.index() <= last)
        .collect()
}

/// The five sets, resolved.
#[derive(Debug, Clone, Default)]
pub struct CapSets {
    bounding: CapsHashSet,
    effective: CapsHashSet,
    permitted: CapsHashSet,
    inheritable: CapsHashSet,
    ambient: CapsHashSet,
}

impl CapSets {
    /// From the spec (`None`: no capabilities at all, as runc treats a missing section).
    pub fn new(c: Option<&LinuxCapabilities>) -> Self {
        match c {
            None => CapSets::default(),
            Some(c) => CapSets {
                bounding: convert(c.bounding().as_ref()),
                effective: convert(c.effective().as_ref()),
                permitted: convert(c.permitted().as_ref()),
                inheritable: convert(c.inheritable().as_ref()),
                ambient: convert(c.ambient().as_ref()),
            },
        }
    }

    /// Drops every capability outside the bounding set (needs CAP_SETPCAP: call first).
    pub fn apply_bounding(&self) -> Result<()> {
        let last = last_cap();
        for cap in caps::all() {
            if cap.index() > last || self.bounding.contains(&cap) {
                continue;
            }
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| Error::Other(format!("dropping {cap} from the bounding set: {e}")))?;
        }
        Ok(())
    }

    /// Sets effective, permitted, inheritable and ambient (after the uid change).
    pub fn apply(&self) -> Result<()> {
        // The kernel checks each capset against the current sets: shrink effective first
        // (it must stay within permitted), set inheritable while permitted is still full,
        // then shrink permitted.
        caps::set(None, CapSet::Effective, &self.effective)
            .map_err(|e| Error::Other(format!("setting effective capabilities: {e}")))?;
        caps::set(None, CapSet::Inheritable, &self.inheritable)
            .map_err(|e| Error::Other(format!("setting inheritable capabilities: {e}")))?;
        let permitted: CapsHashSet = self.permitted.union(&self.effective).copied().collect();
        caps::set(None, CapSet::Permitted, &permitted)
            .map_err(|e| Error::Other(format!("setting permitted capabilities: {e}")))?;
        // Ambient capabilities must also be permitted and inheritable; the kernel refuses
        // others, and runc ignores that failure per capability.
        caps::clear(None, CapSet::Ambient).ok();
        for cap in &self.ambient {
            if let Err(e) = caps::raise(None, CapSet::Ambient, *cap) {
                tracing::debug!("ambient capability {cap} not raised: {e}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_map_to_kernel_capabilities() {
        let set: HashSet<oci_spec::runtime::Capability> =
            serde_json::from_value(serde_json::json!([
                "CAP_CHOWN",
                "CAP_SYS_ADMIN",
                "CAP_NET_BIND_SERVICE",
                "CAP_AUDIT_WRITE"
            ]))
            .unwrap();
        let c = convert(Some(&set));
        assert!(c.contains(&Capability::CAP_CHOWN));
        assert!(c.contains(&Capability::CAP_SYS_ADMIN));
        assert!(c.contains(&Capability::CAP_NET_BIND_SERVICE));
        assert_eq!(c.len(), 4);
    }
}

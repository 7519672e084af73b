//! v1 `devices`: the rule list of [`crate::cgroups::devices`], written rule by rule to
//! `devices.deny` / `devices.allow`.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::devices::effective_rules;
use crate::cgroups::error::{Result, WithField};
use crate::cgroups::{fs, Controller};

pub struct Devices;

impl Controller for Devices {
    const NAME: &'static str = "devices";

    fn requested(r: &LinuxResources) -> Option<&'static str> {
        r.devices().as_ref().map(|_| "linux.resources.devices")
    }

    fn set(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(devs) = r.devices().as_ref() else {
            return Ok(());
        };
        let rules = effective_rules(devs)?;
        let user = 1..=devs.len();
        for (i, rule) in rules.iter().enumerate() {
            let file = if rule.allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            let field = if user.contains(&i) {
                format!("linux.resources.devices[{}]", i - 1)
            } else {
                "linux.resources.devices".to_string()
            };
            fs::write(dir, file, &rule.v1_string()).field(field)?;
        }
        Ok(())
    }
}

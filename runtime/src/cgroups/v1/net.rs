//! v1 `net_cls` (class id for traffic control) and `net_prio` (per-interface priority).

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::error::{Result, WithField};
use crate::cgroups::{fs, Controller};

pub struct NetCls;
pub struct NetPrio;

impl Controller for NetCls {
    const NAME: &'static str = "net_cls";

    fn requested(r: &LinuxResources) -> Option<&'static str> {
        r.network()
            .as_ref()?
            .class_id()
            .map(|_| "linux.resources.network.classID")
    }

    fn set(dir: &Path, r: &LinuxResources) -> Result<()> {
        if let Some(id) = r.network().as_ref().and_then(|n| n.class_id()) {
            fs::write(dir, "net_cls.classid", &id.to_string())
                .field("linux.resources.network.classID")?;
        }
        Ok(())
    }
}

impl Controller for NetPrio {
    const NAME: &'static str = "net_prio";

    fn requested(r: &LinuxResources) -> Option<&'static str> {
        r.network()
            .as_ref()?
            .priorities()
            .as_ref()
            .filter(|p| !p.is_empty())
            .map(|_| "linux.resources.network.priorities")
    }

    fn set(dir: &Path, r: &LinuxResources) -> Result<()> {
        let prios = r.network().as_ref().and_then(|n| n.priorities().as_ref());
        for (i, p) in prios.into_iter().flatten().enumerate() {
            fs::write(
                dir,
                "net_prio.ifpriomap",
                &format!("{} {}", p.name(), p.priority()),
            )
            .field(format!("linux.resources.network.priorities[{i}]"))?;
        }
        Ok(())
    }
}

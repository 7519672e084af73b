//! v1 `blkio`: proportional weights (CFQ's `blkio.weight` or BFQ's `blkio.bfq.weight`,
//! whichever the kernel has) and throttling; I/O stats.

use std::path::Path;

use oci_spec::runtime::{LinuxBlockIo, LinuxResources, LinuxThrottleDevice};

use crate::cgroups::error::{Error, Result, WithField};
use crate::cgroups::stats::{parse_blkio_v1, Stats};
use crate::cgroups::{fs, Controller};

pub struct Blkio;

impl Controller for Blkio {
    const NAME: &'static str = "blkio";

    fn requested(r: &LinuxResources) -> Option<&'static str> {
        requested(r.block_io().as_ref()?)
    }

    fn set(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(b) = r.block_io().as_ref() else {
            return Ok(());
        };
        let (weight, weight_device) = if fs::exists(dir, "blkio.weight") {
            ("blkio.weight", "blkio.weight_device")
        } else {
            ("blkio.bfq.weight", "blkio.bfq.weight_device")
        };
        if let Some(w) = b.weight().filter(|w| *w != 0) {
            write(
                dir,
                weight,
                &w.to_string(),
                "linux.resources.blockIO.weight",
            )?;
        }
        if let Some(w) = b.leaf_weight().filter(|w| *w != 0) {
            write(
                dir,
                "blkio.leaf_weight",
                &w.to_string(),
                "linux.resources.blockIO.leafWeight",
            )?;
        }
        for (i, d) in b.weight_device().iter().flatten().enumerate() {
            let field = format!("linux.resources.blockIO.weightDevice[{i}]");
            if let Some(w) = d.weight().filter(|w| *w != 0) {
                let v = format!("{}:{} {w}", d.major(), d.minor());
                write(dir, weight_device, &v, &format!("{field}.weight"))?;
            }
            if let Some(w) = d.leaf_weight().filter(|w| *w != 0) {
                let v = format!("{}:{} {w}", d.major(), d.minor());
                write(
                    dir,
                    "blkio.leaf_weight_device",
                    &v,
                    &format!("{field}.leafWeight"),
                )?;
            }
        }
        for (list, file, name) in throttles(b) {
            for (i, d) in list.iter().enumerate() {
                let v = format!("{}:{} {}", d.major(), d.minor(), d.rate());
                write(
                    dir,
                    file,
                    &v,
                    &format!("linux.resources.blockIO.{name}[{i}]"),
                )?;
            }
        }
        Ok(())
    }

    fn stats(dir: &Path, s: &mut Stats) -> Result<()> {
        // CFQ's counters when the kernel has them, else the throttling layer's (which count
        // every bio, whatever the scheduler).
        let pick = |cfq: &str, throttle: &str| -> Result<String> {
            match fs::read_opt(dir, cfq)? {
                Some(c) if !c.trim().is_empty() && !c.trim().starts_with("Total") => Ok(c),
                _ => Ok(fs::read_opt(dir, throttle)?.unwrap_or_default()),
            }
        };
        s.blkio.io_service_bytes_recursive = parse_blkio_v1(&pick(
            "blkio.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes_recursive",
        )?);
        s.blkio.io_serviced_recursive = parse_blkio_v1(&pick(
            "blkio.io_serviced_recursive",
            "blkio.throttle.io_serviced_recursive",
        )?);
        Ok(())
    }
}

/// The first blockIO field that asks for something (shared with v2's io controller).
pub(crate) fn requested(b: &LinuxBlockIo) -> Option<&'static str> {
    if b.weight().is_some_and(|w| w != 0) {
        return Some("linux.resources.blockIO.weight");
    }
    if b.leaf_weight().is_some_and(|w| w != 0) {
        return Some("linux.resources.blockIO.leafWeight");
    }
    if b.weight_device().as_ref().is_some_and(|v| !v.is_empty()) {
        return Some("linux.resources.blockIO.weightDevice");
    }
    throttles(b)
        .into_iter()
        .find(|(l, _, _)| !l.is_empty())
        .map(|(_, _, name)| match name {
            "throttleReadBpsDevice" => "linux.resources.blockIO.throttleReadBpsDevice",
            "throttleWriteBpsDevice" => "linux.resources.blockIO.throttleWriteBpsDevice",
            "throttleReadIOPSDevice" => "linux.resources.blockIO.throttleReadIOPSDevice",
            _ => "linux.resources.blockIO.throttleWriteIOPSDevice",
        })
}

fn l(v: &Option<Vec<LinuxThrottleDevice>>) -> &[LinuxThrottleDevice] {
    v.as_deref().unwrap_or(&[])
}

/// Each throttle list with its v1 file and spec name.
pub(crate) fn throttles(
    b: &LinuxBlockIo,
) -> [(&[LinuxThrottleDevice], &'static str, &'static str); 4] {
    [
        (
            l(b.throttle_read_bps_device()),
            "blkio.throttle.read_bps_device",
            "throttleReadBpsDevice",
        ),
        (
            l(b.throttle_write_bps_device()),
            "blkio.throttle.write_bps_device",
            "throttleWriteBpsDevice",
        ),
        (
            l(b.throttle_read_iops_device()),
            "blkio.throttle.read_iops_device",
            "throttleReadIOPSDevice",
        ),
        (
            l(b.throttle_write_iops_device()),
            "blkio.throttle.write_iops_device",
            "throttleWriteIOPSDevice",
        ),
    ]
}

fn write(dir: &Path, file: &str, value: &str, field: &str) -> Result<()> {
    fs::write(dir, file, value)
        .field(field)
        .map_err(|e| match e {
            Error::Write {
                field,
                path,
                value,
                source,
                hint: None,
            } if source.kind() == std::io::ErrorKind::NotFound => Error::Write {
                field,
                path,
                value,
                source,
                hint: Some("this kernel's I/O scheduler does not offer it".into()),
            },
            other => other,
        })
}

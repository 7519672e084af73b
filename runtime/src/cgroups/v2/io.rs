//! v2 `io`: weights (BFQ's `io.bfq.weight` when present, else `io.weight` converted from
//! the v1 range as runc does) and `io.max` throttling; stats from `io.stat`.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::error::{Result, WithField};
use crate::cgroups::stats::{parse_io_stat, Stats};
use crate::cgroups::v1::blkio::{requested, throttles};
use crate::cgroups::{fs, Controller};

pub struct Io;

impl Controller for Io {
    const NAME: &'static str = "io";

    fn requested(r: &LinuxResources) -> Option<&'static str> {
        requested(r.block_io().as_ref()?)
    }

    fn set(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(b) = r.block_io().as_ref() else {
            return Ok(());
        };
        let bfq = fs::exists(dir, "io.bfq.weight");
        if let Some(w) = b.weight().filter(|w| *w != 0) {
            let (file, v) = if bfq {
                ("io.bfq.weight", u64::from(w))
            } else {
                ("io.weight", blkio_to_io_weight(w))
            };
            fs::write(dir, file, &v.to_string()).field("linux.resources.blockIO.weight")?;
        }
        for (i, d) in b.weight_device().iter().flatten().enumerate() {
            let Some(w) = d.weight().filter(|w| *w != 0) else {
                continue;
            };
            let (file, v) = if bfq {
                ("io.bfq.weight", u64::from(w))
            } else {
                ("io.weight", blkio_to_io_weight(w))
            };
            fs::write(dir, file, &format!("{}:{} {v}", d.major(), d.minor()))
                .field(format!("linux.resources.blockIO.weightDevice[{i}].weight"))?;
        }
        let keys = ["rbps", "wbps", "riops", "wiops"];
        for ((list, _, name), key) in throttles(b).into_iter().zip(keys) {
            for (i, d) in list.iter().enumerate() {
                let v = format!("{}:{} {key}={}", d.major(), d.minor(), d.rate());
                fs::write(dir, "io.max", &v)
                    .field(format!("linux.resources.blockIO.{name}[{i}]"))?;
            }
        }
        Ok(())
    }

    fn stats(dir: &Path, s: &mut Stats) -> Result<()> {
        if let Some(st) = fs::read_opt(dir, "io.stat")? {
            parse_io_stat(&st, &mut s.blkio);
        }
        Ok(())
    }
}

/// runc's map of blkio weights [10, 1000] onto io.weight [1, 10000].
pub fn blkio_to_io_weight(w: u16) -> u64 {
    let w = u64::from(w.clamp(10, 1000));
    1 + (w - 10) * 9999 / 990
}

//! Which GPU is which across machines: UUIDs written as `nvidia-smi -L` writes them
//! (`GPU-8b0b5b1c-…`), and [`GpuMap`], the `OLD=NEW` map with which a restore puts CUDA
//! processes onto other GPUs than they were checkpointed on (the driver's GPU pairs, CUDA 13+).
//!
//! A checkpoint records the UUIDs of the GPUs its driver saw, in ordinal order; a map names an
//! old GPU by that record's index or by UUID, and a new one by this machine's ordinal or by
//! UUID. Every entry is checked against both lists before anything is restored.

use std::fmt;
use std::str::FromStr;

use super::error::GpuError;
use super::ffi::{GpuPair, Uuid, GPU_PAIRS_MIN_VERSION};

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as nvidia-smi writes a GPU's UUID.
pub fn format_uuid(u: &Uuid) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A UUID written as [`format_uuid`] writes it, with or without the `GPU-` prefix and the
/// dashes, in either case.
pub fn parse_uuid(s: &str) -> Option<Uuid> {
    let s = s.trim();
    let s = s
        .strip_prefix("GPU-")
        .or_else(|| s.strip_prefix("gpu-"))
        .unwrap_or(s);
    let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut u = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        u[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(u)
}

/// One side of a map entry: an index into a GPU list, or a UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuRef {
    /// The nth GPU (of the checkpoint's record for the old side, of this machine for the new).
    Index(usize),
    /// A GPU by UUID.
    Uuid(Uuid),
}

impl FromStr for GpuRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(i) = s.parse::<usize>() {
            return Ok(GpuRef::Index(i));
        }
        parse_uuid(s)
            .map(GpuRef::Uuid)
            .ok_or_else(|| format!("{s:?}: expected a GPU index or a UUID (GPU-xxxxxxxx-…)"))
    }
}

impl fmt::Display for GpuRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuRef::Index(i) => write!(f, "{i}"),
            GpuRef::Uuid(u) => f.write_str(&format_uuid(u)),
        }
    }
}

/// Where a restore puts what ran on which GPU: `OLD=NEW` entries, comma separated, as the
/// CLI's `--cuda-gpu-map` takes them (`0=1`, `GPU-…=GPU-…`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuMap(pub Vec<(GpuRef, GpuRef)>);

impl FromStr for GpuMap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut entries = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (old, new) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?}: expected OLD=NEW"))?;
            entries.push((old.parse()?, new.parse()?));
        }
        Ok(GpuMap(entries))
    }
}

impl GpuMap {
    /// Whether the map has no entry (the processes go back to the GPUs they were on).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The driver's pairs for this map: `recorded` are the GPUs the checkpoint's driver saw
    /// (ordinal order; empty for images that predate the record), `here` this machine's, and
    /// `version` its driver's. Every entry is checked; the first bad one is the error.
    pub fn pairs(
        &self,
        recorded: &[Uuid],
        here: &[Uuid],
        version: i32,
    ) -> Result<Vec<GpuPair>, GpuError> {
        let bad = |reason: String| Err(GpuError::GpuMap { reason });
        if self.is_empty() {
            return Ok(Vec::new());
        }
        if version < GPU_PAIRS_MIN_VERSION {
            return bad(format!(
                "restoring onto other GPUs needs a CUDA 13 driver; this one is CUDA {}.{}",
                version / 1000,
                version % 1000 / 10
            ));
        }
        let mut pairs: Vec<GpuPair> = Vec::with_capacity(self.0.len());
        for (old, new) in &self.0 {
            let old_uuid = match old {
                GpuRef::Index(i) => match recorded.get(*i) {
                    Some(u) => *u,
                    None if recorded.is_empty() => {
                        return bad(format!(
                            "old GPU {i}: the image records no GPUs; name them by UUID"
                        ))
                    }
                    None => {
                        return bad(format!(
                            "old GPU {i}: the image records {} GPU(s): {}",
                            recorded.len(),
                            list(recorded)
                        ))
                    }
                },
                GpuRef::Uuid(u) if recorded.is_empty() || recorded.contains(u) => *u,
                GpuRef::Uuid(u) => {
                    return bad(format!(
                        "old GPU {}: not among the image's GPUs: {}",
                        format_uuid(u),
                        list(recorded)
                    ))
                }
            };
            let new_uuid = match new {
                GpuRef::Index(i) => *here.get(*i).ok_or_else(|| GpuError::GpuMap {
                    reason: format!(
                        "new GPU {i}: this machine has {} GPU(s): {}",
                        here.len(),
                        list(here)
                    ),
                })?,
                GpuRef::Uuid(u) if here.contains(u) => *u,
                GpuRef::Uuid(u) => {
                    return bad(format!(
                        "new GPU {}: not on this machine, which has {}",
                        format_uuid(u),
                        list(here)
                    ))
                }
            };
            if pairs.iter().any(|p| p.old_uuid == old_uuid) {
                return bad(format!("old GPU {old} is mapped twice"));
            }
            pairs.push(GpuPair { old_uuid, new_uuid });
        }
        Ok(pairs)
    }
}

/// The GPUs of `recorded` that `here` lacks: where a restore without a map will fail.
pub fn missing(recorded: &[Uuid], here: &[Uuid]) -> Vec<Uuid> {
    recorded
        .iter()
        .filter(|u| !here.contains(u))
        .copied()
        .collect()
}

/// UUIDs for a message.
pub fn list(uuids: &[Uuid]) -> String {
    if uuids.is_empty() {
        return "none".into();
    }
    uuids.iter().map(format_uuid).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(n: u8) -> Uuid {
        let mut u = [0xab; 16];
        u[15] = n;
        u
    }

    #[test]
    fn uuids_round_trip_as_nvidia_smi_writes_them() {
        let u: Uuid = [
            0x8b, 0x0b, 0x5b, 0x1c, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23,
            0x45, 0x67,
        ];
        let s = format_uuid(&u);
        assert_eq!(s, "GPU-8b0b5b1c-1234-5678-9abc-def001234567");
        assert_eq!(parse_uuid(&s), Some(u));
        assert_eq!(parse_uuid("8B0B5B1C123456789ABCDEF001234567"), Some(u));
        assert_eq!(parse_uuid("GPU-8b0b5b1c"), None);
        assert_eq!(parse_uuid("GPU-zz0b5b1c-1234-5678-9abc-def001234567"), None);
    }

    #[test]
    fn maps_parse_indexes_and_uuids() {
        let m: GpuMap = format!("0=1, {}=2", format_uuid(&gpu(7))).parse().unwrap();
        assert_eq!(
            m.0,
            [
                (GpuRef::Index(0), GpuRef::Index(1)),
                (GpuRef::Uuid(gpu(7)), GpuRef::Index(2))
            ]
        );
        assert!("".parse::<GpuMap>().unwrap().is_empty());
        assert!("0"
            .parse::<GpuMap>()
            .unwrap_err()
            .contains("expected OLD=NEW"));
        assert!("0=x"
            .parse::<GpuMap>()
            .unwrap_err()
            .contains("GPU index or a UUID"));
    }

    #[test]
    fn pairs_resolve_against_both_machines() {
        let (recorded, here) = ([gpu(0), gpu(1)], [gpu(5), gpu(6)]);
        let m: GpuMap = format!("1=0,{}={}", format_uuid(&gpu(0)), format_uuid(&gpu(6)))
            .parse()
            .unwrap();
        let pairs = m.pairs(&recorded, &here, 13000).unwrap();
        assert_eq!(
            pairs,
            [
                GpuPair {
                    old_uuid: gpu(1),
                    new_uuid: gpu(5)
                },
                GpuPair {
                    old_uuid: gpu(0),
                    new_uuid: gpu(6)
                }
            ]
        );
        assert!(GpuMap::default()
            .pairs(&recorded, &here, 12080)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bad_maps_say_what_is_wrong() {
        let (recorded, here) = ([gpu(0)], [gpu(5)]);
        let err = |m: &str, recorded: &[Uuid], version| {
            m.parse::<GpuMap>()
                .unwrap()
                .pairs(recorded, &here, version)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err("0=0", &recorded, 12080).contains("needs a CUDA 13 driver; this one is CUDA 12.8")
        );
        assert!(err("2=0", &recorded, 13000).contains("old GPU 2: the image records 1 GPU(s)"));
        assert!(err("0=0", &[], 13000).contains("the image records no GPUs"));
        assert!(
            err("0=3", &recorded, 13000).contains("new GPU 3: this machine has 1 GPU(s): GPU-abab")
        );
        let other = format!("{}=0", format_uuid(&gpu(9)));
        assert!(err(&other, &recorded, 13000).contains("not among the image's GPUs"));
        let absent = format!("0={}", format_uuid(&gpu(9)));
        assert!(err(&absent, &recorded, 13000).contains("not on this machine"));
        assert!(err("0=0,0=0", &recorded, 13000).contains("mapped twice"));
        assert_eq!(missing(&[gpu(0), gpu(5)], &here), [gpu(0)]);
    }
}

//! Digests: [`SnapshotId`] (sha256 of a manifest, `sha256:HEX`) and [`ChunkDigest`] (blake3 of a
//! chunk's uncompressed bytes, `blake3:HEX`). Parsing and printing only; hashing happens where
//! the bytes are.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// Lower-case hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// Parses exactly 64 lower- or upper-case hex digits.
pub(crate) fn from_hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Whether `s` is non-empty and all lower-case hex.
pub(crate) fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// A snapshot's identity: the sha256 digest of its manifest file. Printed as `sha256:HEX`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(pub [u8; 32]);

impl SnapshotId {
    /// The ID of a manifest with these bytes.
    pub fn of_manifest(bytes: &[u8]) -> Self {
        SnapshotId(Sha256::digest(bytes).into())
    }

    /// The 64 hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        to_hex(&self.0)
    }

    /// The first 12 hex digits, as `ls` prints them.
    pub fn short(&self) -> String {
        let mut h = self.hex();
        h.truncate(12);
        h
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for SnapshotId {
    type Err = Error;

    /// Parses `sha256:HEX` (64 digits) or the bare 64 digits.
    fn from_str(s: &str) -> Result<Self, Error> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        from_hex32(&hex.to_ascii_lowercase())
            .map(SnapshotId)
            .ok_or_else(|| Error::InvalidReference {
                reference: s.to_string(),
                reason: "expected sha256: followed by 64 hex digits".to_string(),
            })
    }
}

impl serde::Serialize for SnapshotId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A chunk's identity: the blake3 digest of its uncompressed bytes. Printed as `blake3:HEX`;
/// pack indexes list chunks by it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkDigest(pub [u8; 32]);

impl ChunkDigest {
    /// The digest of `raw` (uncompressed) bytes.
    pub fn of(raw: &[u8]) -> Self {
        ChunkDigest(*blake3::hash(raw).as_bytes())
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> String {
        to_hex(&self.0)
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", self.hex())
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = SnapshotId::of_manifest(b"x");
        let parsed: SnapshotId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        let parsed: SnapshotId = id.hex().to_uppercase().parse().unwrap();
        assert_eq!(parsed, id);
        assert!("sha256:12".parse::<SnapshotId>().is_err());
        assert!(is_lower_hex("0af"));
        assert!(!is_lower_hex("0aF"));
    }
}

//! The reference grammar shared by every face of cryo (CLI flags, the shim's annotation, the
//! embedding API): a local `NAME[:TAG]`, `sha256:HEX` (full or a unique prefix), a bare hex
//! prefix, or a registry reference `HOST[:PORT]/REPO[:TAG|@sha256:...]`, recognised by its host
//! part and refused for now. Parsing only; resolution against a store is in `store/mod.rs`.

use std::fmt;

use crate::error::{Error, Result};
use crate::store::digest::{is_lower_hex, SnapshotId};

/// The tag used when a name has none.
pub const DEFAULT_TAG: &str = "latest";

/// A local snapshot name with its tag.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name {
    /// Slash-separated components, each `[A-Za-z0-9][A-Za-z0-9._-]*`.
    pub name: String,
    /// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    pub tag: String,
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// A parsed reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// `NAME[:TAG]`; `hex_prefix` is set when the text is also a possible bare hex prefix
    /// (tried when no such name exists).
    Name {
        /// The name.
        name: Name,
        /// The text as a hex prefix, if it is one (lower-case hex, 4+ digits, no tag).
        hex_prefix: Option<String>,
    },
    /// `sha256:` and 64 hex digits.
    Id(SnapshotId),
    /// `sha256:` and fewer than 64 hex digits.
    Prefix(String),
}

fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'))
}

fn tag_ok(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'))
}

/// Whether `s` is a registry reference: it has a digest (`@`) or its first slash-separated
/// part looks like a host (contains `.` or `:`, or is `localhost`).
pub fn is_registry(s: &str) -> bool {
    if s.contains('@') {
        return true;
    }
    match s.split_once('/') {
        Some((host, _)) => host.contains('.') || host.contains(':') || host == "localhost",
        None => false,
    }
}

/// Parses a name with an optional tag (no IDs, no registry).
pub fn parse_name(s: &str) -> Result<Name> {
    let invalid = |reason: &str| Error::InvalidReference {
        reference: s.to_string(),
        reason: reason.to_string(),
    };
    if is_registry(s) {
        return Err(Error::RegistryReference {
            reference: s.to_string(),
        });
    }
    let (name, tag) = match s.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (s, DEFAULT_TAG),
    };
    if name.len() > 255 || !name.split('/').all(component_ok) {
        return Err(invalid(
            "expected NAME[:TAG]: NAME is slash-separated parts of letters, digits, '.', '_', '-', \
             each starting with a letter or digit",
        ));
    }
    if !tag_ok(tag) {
        return Err(invalid(
            "expected NAME[:TAG]: TAG is up to 128 letters, digits, '.', '_', '-'",
        ));
    }
    Ok(Name {
        name: name.to_string(),
        tag: tag.to_string(),
    })
}

/// Parses any reference.
pub fn parse(s: &str) -> Result<Reference> {
    if s.is_empty() {
        return Err(Error::InvalidReference {
            reference: String::new(),
            reason: "empty reference".into(),
        });
    }
    if let Some(hex) = s.strip_prefix("sha256:") {
        let hex = hex.to_ascii_lowercase();
        if !is_lower_hex(&hex) || hex.len() > 64 {
            return Err(Error::InvalidReference {
                reference: s.to_string(),
                reason: "expected sha256: followed by 1 to 64 hex digits".into(),
            });
        }
        return Ok(if hex.len() == 64 {
            Reference::Id(s.parse()?)
        } else {
            Reference::Prefix(hex)
        });
    }
    let name = parse_name(s)?;
    let hex_prefix = (is_lower_hex(s) && s.len() >= 4 && s.len() <= 64).then(|| s.to_string());
    Ok(Reference::Name { name, hex_prefix })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn grammar() {
        let n = |s| match parse(s).unwrap() {
            Reference::Name { name, .. } => name.to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(n("model"), "model:latest");
        assert_eq!(n("team/model:v2"), "team/model:v2");
        assert_eq!(n("localhost:5000"), "localhost:5000");
        assert!(matches!(parse("sha256:abcd").unwrap(), Reference::Prefix(p) if p == "abcd"));
        let full = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(parse(&full).unwrap(), Reference::Id(_)));
        assert!(matches!(
            parse("deadbeef").unwrap(),
            Reference::Name {
                hex_prefix: Some(_),
                ..
            }
        ));
        for reg in [
            "registry.example.com/model:v1",
            "localhost:5000/model",
            "localhost/model",
            "model@sha256:abcd",
        ] {
            let e = parse(reg).unwrap_err();
            assert!(
                e.to_string()
                    .contains("registry references are not supported yet"),
                "{e}"
            );
        }
        for bad in [
            "",
            ":tag",
            "a//b",
            "-x",
            "a:b:c/",
            "x:",
            "../x",
            "sha256:xyz",
            "a b",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,80}") {
            let _ = parse(&s);
        }

        #[test]
        fn names_round_trip(name in "[a-z0-9][a-z0-9_-]{0,10}(/[a-z0-9][a-z0-9_-]{0,10}){0,2}", tag in "[a-z0-9][a-z0-9._-]{0,10}") {
            let s = format!("{name}:{tag}");
            let parsed = parse_name(&s).unwrap();
            prop_assert_eq!(parsed.to_string(), s);
        }
    }
}

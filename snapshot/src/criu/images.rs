//! The few CRIU image formats cryo reads and writes itself: `pagemap-*.img` (which pages of a
//! task or shmem segment are dumped, in the order their bytes sit in `pages-*.img`).
//!
//! A CRIU image is `u32 IMG_COMMON_MAGIC, u32 <image magic>`, then entries of `u32 size` +
//! protobuf (criu/images/*.proto), all little-endian. A pagemap holds one `pagemap_head`
//! (`pages_id`: the K of `pages-K.img`) and then `pagemap_entry`s; an entry flagged
//! `PE_PRESENT` owns the next `nr_pages` pages of the pages file. `pages-*.img` is raw.

use prost::Message;

use crate::{Error, Result};

/// The first word of every CRIU image but raw ones.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// The second word of a pagemap image (task and shmem alike).
pub const PAGEMAP_MAGIC: u32 = 0x5608_4025;
/// Pagemap flag: the pages are in the parent image (pre-dump chains).
pub const PE_PARENT: u32 = 1;
/// Pagemap flag: the pages are served lazily (userfaultfd), not restored eagerly.
pub const PE_LAZY: u32 = 2;
/// Pagemap flag: the pages are in this image's pages file.
pub const PE_PRESENT: u32 = 4;
/// CRIU's page size on x86-64.
pub const PAGE: u64 = 4096;
/// Largest pagemap accepted (entries are 10–20 bytes; a 64 GiB process has a few 100k).
const MAX_PAGEMAP: usize = 256 << 20;

#[derive(Clone, PartialEq, Message)]
struct PagemapHead {
    #[prost(uint32, required, tag = "1")]
    pages_id: u32,
}

/// One run of pages of a pagemap.
#[derive(Clone, PartialEq, Message)]
pub struct PagemapEntry {
    /// First page's address (dump-time, in the task).
    #[prost(uint64, required, tag = "1")]
    pub vaddr: u64,
    /// Number of pages as CRIU 4.0–4.1 write it (`compat_nr_pages` from 4.2 on, then 0).
    #[prost(uint32, required, tag = "2")]
    pub nr_pages: u32,
    /// Old-style "in parent" flag.
    #[prost(bool, optional, tag = "3")]
    pub in_parent: Option<bool>,
    /// `PE_*` flags.
    #[prost(uint32, optional, tag = "4")]
    pub flags: Option<u32>,
    /// Number of pages, 64-bit (CRIU 4.2 and later).
    #[prost(uint64, optional, tag = "5")]
    pub nr_pages_wide: Option<u64>,
}

impl PagemapEntry {
    /// The entry's `PE_*` flags (`in_parent` folded in).
    pub fn pe_flags(&self) -> u32 {
        self.flags.unwrap_or(0)
            | if self.in_parent == Some(true) {
                PE_PARENT
            } else {
                0
            }
    }

    /// Whether the entry's bytes are in the pages file.
    pub fn present(&self) -> bool {
        self.pe_flags() & PE_PRESENT != 0
    }

    /// The number of pages, whichever field carries it.
    pub fn pages(&self) -> u64 {
        self.nr_pages_wide.unwrap_or(u64::from(self.nr_pages))
    }

    /// The entry's length in bytes.
    pub fn len(&self) -> u64 {
        self.pages() * PAGE
    }

    /// Whether the entry covers no page.
    pub fn is_empty(&self) -> bool {
        self.pages() == 0
    }
}

/// A parsed `pagemap-*.img`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pagemap {
    /// The K of the `pages-K.img` holding the present pages.
    pub pages_id: u32,
    /// The runs, in pages-file order.
    pub entries: Vec<PagemapEntry>,
}

impl Pagemap {
    /// Parses a pagemap image; `file` names it in errors.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Pagemap> {
        let bad = |reason: String| Error::InvalidInput {
            object: file.into(),
            reason,
        };
        if bytes.len() > MAX_PAGEMAP {
            return Err(Error::TooLarge {
                what: file.into(),
                size: bytes.len() as u64,
                limit: MAX_PAGEMAP as u64,
            });
        }
        let word = |at: usize| -> Option<u32> {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if word(0) != Some(IMG_COMMON_MAGIC) || word(4) != Some(PAGEMAP_MAGIC) {
            return Err(bad(format!(
                "not a CRIU pagemap image (magic {:#x?} {:#x?})",
                word(0),
                word(4)
            )));
        }
        let mut at = 8;
        let mut next = || -> Result<Option<&[u8]>> {
            let Some(size) = word(at) else {
                return if at == bytes.len() {
                    Ok(None)
                } else {
                    Err(bad(format!("truncated entry header at offset {at}")))
                };
            };
            let size = size as usize;
            let body = bytes
                .get(at + 4..at + 4 + size)
                .ok_or_else(|| bad(format!("entry at offset {at} runs past the end")))?;
            at += 4 + size;
            Ok(Some(body))
        };
        let head = next()?.ok_or_else(|| bad("no pagemap_head".into()))?;
        let head = PagemapHead::decode(head).map_err(|e| bad(format!("pagemap_head: {e}")))?;
        let mut entries = Vec::new();
        while let Some(body) = next()? {
            let e = PagemapEntry::decode(body)
                .map_err(|e| bad(format!("pagemap_entry {}: {e}", entries.len())))?;
            if e.vaddr % PAGE != 0 {
                return Err(bad(format!(
                    "pagemap_entry {}: vaddr {:#x} is not page aligned",
                    entries.len(),
                    e.vaddr
                )));
            }
            entries.push(e);
        }
        Ok(Pagemap {
            pages_id: head.pages_id,
            entries,
        })
    }

    /// The image bytes CRIU reads.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.entries.len() * 20);
        out.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
        out.extend_from_slice(&PAGEMAP_MAGIC.to_le_bytes());
        let mut put = |m: &dyn Fn(&mut Vec<u8>), len: usize| {
            out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
            m(&mut out);
        };
        let head = PagemapHead {
            pages_id: self.pages_id,
        };
        put(&|o| head.encode_raw(o), head.encoded_len());
        for e in &self.entries {
            put(&|o| e.encode_raw(o), e.encoded_len());
        }
        out
    }

    /// Bytes of pages the pages file must hold.
    pub fn present_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.present())
            .map(PagemapEntry::len)
            .sum()
    }
}

/// The `K` of `pages-K.img` for a file name, if it is one.
pub fn pages_file_id(name: &str) -> Option<u32> {
    name.strip_prefix("pages-")?
        .strip_suffix(".img")?
        .parse()
        .ok()
}

/// Whether `name` is a pagemap image (`pagemap-N.img`, `pagemap-shmem-N.img`).
pub fn is_pagemap(name: &str) -> bool {
    name.starts_with("pagemap-") && name.ends_with(".img")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head of a pagemap CRIU 4.1.1 wrote here, byte for byte.
    const REAL: &[u8] = &[
        0x19, 0x43, 0x56, 0x54, 0x25, 0x40, 0x08, 0x56, 0x02, 0x00, 0x00, 0x00, 0x08, 0x01, 0x09,
        0x00, 0x00, 0x00, 0x08, 0x80, 0xa0, 0x80, 0x02, 0x10, 0x01, 0x20, 0x04,
    ];

    #[test]
    fn parses_what_criu_writes_and_writes_it_back_identically() {
        let pm = Pagemap::parse("pagemap-1.img", REAL).unwrap();
        assert_eq!(pm.pages_id, 1);
        assert_eq!(pm.entries.len(), 1);
        assert_eq!(pm.entries[0].vaddr, 0x40_1000);
        assert_eq!(pm.entries[0].nr_pages, 1);
        assert!(pm.entries[0].present());
        assert_eq!(pm.encode(), REAL);
    }

    /// An entry as CRIU 4.2.1 writes it: `compat_nr_pages` 0, the count in field 5.
    #[test]
    fn reads_the_wide_page_count_of_criu_4_2() {
        let bytes: &[u8] = &[
            0x19, 0x43, 0x56, 0x54, 0x25, 0x40, 0x08, 0x56, 0x02, 0x00, 0x00, 0x00, 0x08, 0x01,
            0x0b, 0x00, 0x00, 0x00, 0x08, 0x80, 0xa0, 0x80, 0x02, 0x10, 0x00, 0x20, 0x04, 0x28,
            0x01,
        ];
        let pm = Pagemap::parse("pagemap-1.img", bytes).unwrap();
        assert_eq!(pm.entries[0].pages(), 1);
        assert_eq!(pm.present_bytes(), 4096);
        assert_eq!(pm.encode(), bytes, "both counts survive a rewrite");
    }

    #[test]
    fn bad_pagemaps_name_the_file_and_the_problem() {
        let e = Pagemap::parse("pagemap-9.img", b"junkjunk")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pagemap-9.img") && e.contains("magic"), "{e}");
        let e = Pagemap::parse("pagemap-9.img", &REAL[..REAL.len() - 2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("past the end"), "{e}");
        let mut odd = Pagemap {
            pages_id: 3,
            entries: vec![PagemapEntry {
                vaddr: 0x1234,
                nr_pages: 1,
                in_parent: None,
                flags: Some(PE_PRESENT),
                nr_pages_wide: None,
            }],
        }
        .encode();
        let e = Pagemap::parse("p.img", &odd).unwrap_err().to_string();
        assert!(e.contains("aligned"), "{e}");
        odd.truncate(8);
        assert!(Pagemap::parse("p.img", &odd)
            .unwrap_err()
            .to_string()
            .contains("head"));
    }

    #[test]
    fn names() {
        assert_eq!(pages_file_id("pages-12.img"), Some(12));
        assert_eq!(pages_file_id("pagemap-12.img"), None);
        assert!(is_pagemap("pagemap-shmem-77.img"));
        assert!(!is_pagemap("pages-1.img"));
    }
}

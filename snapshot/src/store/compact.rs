//! `compact`: re-encodes a snapshot's chunks with a stronger codec, in place.
//!
//! A chunk is found by the blake3 of its raw bytes, whatever its codec, so its record can be
//! replaced by another encoding of the same bytes without touching any manifest. That lets a
//! checkpoint store its pages fast (`CodecPolicy::None` or `Lz4`: the container is frozen
//! meanwhile) and a later `compact` shrink them. Each chunk is read and verified, encoded with
//! the new policy, and kept only if that is smaller.
//!
//! Safety against everything else that touches the store:
//! - It holds the store lock shared, as a writer does, so `gc` waits for it.
//! - Each pack the snapshot names is rewritten under its own name (store/pack.rs): a new file
//!   in a temp directory of its own, fsynced, renamed over the old one. A crash leaves either
//!   pack in place, both valid, and temp files that `gc` removes.
//! - Readers and lazy-pages servers keep the file they opened, and verify what they read.
//! - Writers that deduplicated against the pack find every chunk still in it.

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::Result;
use crate::store::chunk::{self, ChunkCtx, Codec, CodecPolicy};
use crate::store::digest::ChunkDigest;
use crate::store::files::{self, LockMode};
use crate::store::pack::{self, Keep, Pack, PackEntry};
use crate::store::Store;

/// What `compact` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CompactReport {
    /// The snapshot (`sha256:HEX`).
    pub snapshot: String,
    /// Distinct chunks looked at.
    pub chunks: u64,
    /// Chunks replaced by a smaller encoding.
    pub rewritten: u64,
    /// Bytes of the snapshot's chunk records before.
    pub bytes_before: u64,
    /// And after.
    pub bytes_after: u64,
}

impl Store {
    /// Re-encodes the chunks of snapshot `reference` with `policy` where that makes them
    /// smaller (chunks shared with other snapshots shrink for them too).
    pub fn compact(&self, reference: &str, policy: CodecPolicy) -> Result<CompactReport> {
        let _lock = files::lock_file(&self.lock_path(), LockMode::Shared)?;
        let id = self.resolve(reference)?;
        let manifest = self.load_manifest(&id)?;
        let snapshot = id.to_string();
        let mine: HashMap<ChunkDigest, usize> = manifest
            .extents
            .iter()
            .map(|e| (e.chunk, usize::try_from(e.len).unwrap_or(usize::MAX)))
            .collect();
        let tmp = self.tmp_dir().join(files::unique_name("k-"));
        files::mkdir_all(&tmp)?;
        let before = AtomicU64::new(0);
        let after = AtomicU64::new(0);
        let rewritten = AtomicU64::new(0);
        let result = (|| -> Result<()> {
            let dir = self.packs_dir();
            for name in &manifest.meta.packs {
                let p = Pack::open(&dir, name)?;
                pack::rewrite(&p, &tmp, |e, record| {
                    let Some(&len) = mine.get(&e.digest) else {
                        return Ok(Keep::Same);
                    };
                    let keep = reencode(&snapshot, e, record, len, policy)?;
                    before.fetch_add(record.len() as u64, Ordering::Relaxed);
                    let n = match &keep {
                        Keep::Reencoded(new) => {
                            rewritten.fetch_add(1, Ordering::Relaxed);
                            new.len()
                        }
                        _ => record.len(),
                    };
                    after.fetch_add(n as u64, Ordering::Relaxed);
                    Ok(keep)
                })?;
            }
            Ok(())
        })();
        let _ = fs::remove_dir_all(&tmp);
        result?;
        Ok(CompactReport {
            snapshot,
            chunks: mine.len() as u64,
            rewritten: rewritten.into_inner(),
            bytes_before: before.into_inner(),
            bytes_after: after.into_inner(),
        })
    }
}

/// Verifies one chunk record and gives its `policy` encoding if that is smaller.
fn reencode(
    snapshot: &str,
    e: &PackEntry,
    record: &[u8],
    len: usize,
    policy: CodecPolicy,
) -> Result<Keep> {
    let ctx = ChunkCtx {
        snapshot,
        digest: &e.digest,
    };
    let before = record.len() as u64;
    // The header says whether it is encoded at least as strongly already (then it is left as
    // is); the payload is decoded and verified otherwise.
    let hdr = chunk::parse_header(&ctx, record, len, before)?;
    if encoded_as_strongly(hdr.codec, policy) {
        return Ok(Keep::Same);
    }
    let mut raw = vec![0u8; len];
    let payload = record.get(chunk::CHUNK_HEADER_LEN..).unwrap_or_default();
    chunk::decode_into(&ctx, &hdr, payload, &mut raw)?;
    let (new, codec) = chunk::encode(&raw, policy)?;
    if codec == Codec::None || codec == hdr.codec || new.len() as u64 >= before {
        return Ok(Keep::Same);
    }
    Ok(Keep::Reencoded(new))
}

/// Whether a chunk in `codec` is as small as `policy` would make it, or smaller.
fn encoded_as_strongly(codec: Codec, policy: CodecPolicy) -> bool {
    matches!(
        (codec, policy),
        (_, CodecPolicy::None) | (Codec::Zstd | Codec::Mixed, _) | (Codec::Lz4, CodecPolicy::Lz4)
    )
}

#[cfg(test)]
mod tests {
    use crate::store::writer::WriterOptions;
    use crate::workload::memory_image;
    use crate::{CodecPolicy, Store};

    #[test]
    fn compaction_shrinks_raw_chunks_and_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let image = memory_image(8 << 20, 3);
        let mut w = store
            .writer_with(WriterOptions {
                codec: CodecPolicy::None,
                ..WriterOptions::default()
            })
            .unwrap();
        w.object("pid-1").unwrap().add_pages(0, &image).unwrap();
        w.commit(Some("raw")).unwrap();
        let before = store.inspect("raw").unwrap();

        let r = store.compact("raw", CodecPolicy::Zstd(3)).unwrap();
        assert!(r.rewritten > 0 && r.rewritten <= r.chunks, "{r:?}");
        // Half the image is random (stays raw), a quarter zero (holes): the text quarter shrinks.
        assert!(r.bytes_after * 100 < r.bytes_before * 85, "{r:?}");
        let mut back = vec![0u8; image.len()];
        store
            .reader("raw")
            .unwrap()
            .read_range("pid-1", 0, &mut back)
            .unwrap();
        assert!(
            back == image,
            "the compacted snapshot reads back differently"
        );
        let v = store.verify("raw").unwrap();
        assert!(v.failures.is_empty(), "{v:?}");
        // The manifest did not change: same snapshot, same chunks.
        let after = store.inspect("raw").unwrap();
        assert_eq!(after.id, before.id);
        // Compacting again finds nothing to do; the temp directory is gone.
        let again = store.compact("raw", CodecPolicy::Zstd(3)).unwrap();
        assert_eq!((again.rewritten, again.bytes_before), (0, r.bytes_after));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_corrupt_chunk_stops_compaction_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store
            .writer_with(WriterOptions {
                codec: CodecPolicy::None,
                ..WriterOptions::default()
            })
            .unwrap();
        w.object("pid-1")
            .unwrap()
            .add_pages(0, &vec![7u8; 1 << 16])
            .unwrap();
        w.commit(Some("raw")).unwrap();
        let m = store.load_manifest(&store.resolve("raw").unwrap()).unwrap();
        let loc = store.locate_chunk(&m.extents[0].chunk).unwrap().unwrap();
        let mut bytes = std::fs::read(&loc.path).unwrap();
        let last = usize::try_from(loc.offset + loc.len - 1).unwrap();
        bytes[last] ^= 1;
        std::fs::write(&loc.path, bytes).unwrap();
        let e = store.compact("raw", CodecPolicy::Zstd(3)).unwrap_err();
        assert!(
            e.to_string().contains(&m.extents[0].chunk.to_string()),
            "{e}"
        );
    }
}

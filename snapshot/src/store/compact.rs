//! `compact`: re-encodes a snapshot's chunks with a stronger codec, in place.
//!
//! A chunk is named by the blake3 of its raw bytes, whatever its codec, so a chunk file can be
//! replaced by another encoding of the same bytes without touching any manifest. That lets a
//! checkpoint store its pages fast (`CodecPolicy::None` or `Lz4`: the container is frozen
//! meanwhile) and a later `compact` shrink them. Each chunk is read and verified, encoded with
//! the new policy, and kept only if that is smaller.
//!
//! Safety against everything else that touches the store:
//! - It holds the store lock shared, as a writer does, so `gc` waits for it.
//! - New encodings are written into a temp directory of its own, made durable with one
//!   `syncfs`, then renamed over the old files. A crash leaves either encoding in place, both
//!   valid, and temp files that `gc` removes.
//! - Readers and lazy-pages servers opened either file, and verify what they read.
//! - Writers that find the chunk present reuse it, whichever encoding it is in.

use std::fs;
use std::io::Write;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::chunk::{self, ChunkCtx, Codec, CodecPolicy};
use crate::store::digest::ChunkDigest;
use crate::store::files::{self, LockMode};
use crate::store::Store;

/// Raw bytes re-encoded between two renames: bounds the temp space a compaction holds.
const BATCH_RAW: u64 = 1 << 30;

/// What `compact` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CompactReport {
    /// The snapshot (`sha256:HEX`).
    pub snapshot: String,
    /// Distinct chunks looked at.
    pub chunks: u64,
    /// Chunks replaced by a smaller encoding.
    pub rewritten: u64,
    /// Bytes of the snapshot's chunk files before.
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
        let mut seen = std::collections::HashSet::new();
        let chunks: Vec<(ChunkDigest, usize)> = manifest
            .extents
            .iter()
            .filter(|e| seen.insert(e.chunk))
            .map(|e| (e.chunk, usize::try_from(e.len).unwrap_or(usize::MAX)))
            .collect();
        let tmp = self.tmp_dir().join(files::unique_name("k-"));
        files::mkdir_all(&tmp)?;
        let result = self.compact_chunks(&snapshot, &chunks, policy, &tmp);
        let _ = fs::remove_dir_all(&tmp);
        let mut report = result?;
        report.snapshot = snapshot;
        Ok(report)
    }

    fn compact_chunks(
        &self,
        snapshot: &str,
        chunks: &[(ChunkDigest, usize)],
        policy: CodecPolicy,
        tmp: &std::path::Path,
    ) -> Result<CompactReport> {
        let mut report = CompactReport {
            chunks: chunks.len() as u64,
            ..CompactReport::default()
        };
        let mut start = 0;
        while start < chunks.len() {
            let mut raw = 0u64;
            let mut end = start;
            while end < chunks.len() && (raw < BATCH_RAW || end == start) {
                raw += chunks[end].1 as u64;
                end += 1;
            }
            let done: Vec<Result<Reencoded>> = chunks[start..end]
                .par_iter()
                .map(|&(digest, len)| self.reencode(snapshot, digest, len, policy, tmp))
                .collect();
            let done = done.into_iter().collect::<Result<Vec<_>>>()?;
            if done.iter().any(|d| d.2.is_some()) {
                files::syncfs(tmp)?;
            }
            for (digest, before, new) in done {
                report.bytes_before += before;
                match new {
                    Some((path, after)) => {
                        let dest = self.chunk_path(&digest);
                        fs::rename(&path, &dest)
                            .map_err(|e| Error::io(&dest, "rename re-encoded chunk", e))?;
                        report.rewritten += 1;
                        report.bytes_after += after;
                    }
                    None => report.bytes_after += before,
                }
            }
            start = end;
        }
        Ok(report)
    }

    /// Reads and verifies one chunk; writes its `policy` encoding into `tmp` if smaller.
    fn reencode(
        &self,
        snapshot: &str,
        digest: ChunkDigest,
        len: usize,
        policy: CodecPolicy,
        tmp: &std::path::Path,
    ) -> Result<Reencoded> {
        let path = self.chunk_path(&digest);
        let ctx = ChunkCtx {
            snapshot,
            digest: &digest,
        };
        // One read of the file: its header says whether it is encoded at least as strongly
        // already (then it is left as is), its payload is decoded and verified otherwise.
        let old = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::MissingChunk {
                    snapshot: snapshot.to_string(),
                    chunk: digest.to_string(),
                    path,
                })
            }
            Err(e) => return Err(Error::io(&path, "read chunk", e)),
        };
        let before = old.len() as u64;
        let hdr = chunk::parse_header(&ctx, &old, len, before)?;
        if encoded_as_strongly(hdr.codec, policy) {
            return Ok((digest, before, None));
        }
        let mut raw = vec![0u8; len];
        let payload = old.get(chunk::CHUNK_HEADER_LEN..).unwrap_or_default();
        chunk::decode_into(&ctx, &hdr, payload, &mut raw)?;
        let (file, codec) = chunk::encode(&raw, policy)?;
        if codec == Codec::None || codec == hdr.codec || file.len() as u64 >= before {
            return Ok((digest, before, None));
        }
        let t = tmp.join(digest.hex());
        let mut f = files::create_new(&t)?;
        f.write_all(&file)
            .map_err(|e| Error::io(&t, "write chunk", e))?;
        Ok((digest, before, Some((t, file.len() as u64))))
    }
}

/// One chunk after `reencode`: its digest, its file's bytes, and its new encoding (a temp
/// file and its bytes) when that is smaller.
type Reencoded = (ChunkDigest, u64, Option<(std::path::PathBuf, u64)>);

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
        let path = store.chunk_path(&m.extents[0].chunk);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let e = store.compact("raw", CodecPolicy::Zstd(3)).unwrap_err();
        assert!(
            e.to_string().contains(&m.extents[0].chunk.to_string()),
            "{e}"
        );
    }
}

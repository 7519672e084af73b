//! `cryo snapshot ...`: the store's maintenance commands (ls, inspect, verify, rm, compact, gc) over
//! cryo-snapshot's library API. Thin: parsing and printing here, every operation in the crate.
//! Checkpointing into the store and restoring from it are `cryo checkpoint`/`restore`, not here.

use std::path::Path;

use anyhow::Context;
use cryo_snapshot::Store;

/// Output format of the snapshot commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document for programs.
    Json,
}

/// `cryo snapshot` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum SnapshotCommand {
    /// List snapshots with their names and sizes.
    Ls {
        /// table or json.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Show a snapshot's objects, sizes, sharing and dedup ratio.
    Inspect {
        /// NAME[:TAG], sha256:HEX or a unique hex prefix.
        reference: String,
        /// table or json.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Read and check every chunk of a snapshot; exits 1 if any is bad.
    Verify {
        /// NAME[:TAG], sha256:HEX or a unique hex prefix.
        reference: String,
        /// table or json.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Remove names; given an ID or prefix, remove the snapshot and every name pointing at it.
    /// Space is reclaimed by `gc`.
    Rm {
        /// NAME[:TAG], sha256:HEX or a unique hex prefix.
        #[arg(required = true)]
        references: Vec<String>,
        /// table or json.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Re-encode a snapshot's chunks with a stronger codec where that makes them smaller
    /// (after a fast `checkpoint --compression none|lz4`); safe while the store is in use.
    Compact {
        /// NAME[:TAG], sha256:HEX or a unique hex prefix.
        reference: String,
        /// zstdN (1-22), lz4 or none.
        #[arg(long, value_name = "CODEC", default_value = "zstd3")]
        codec: cryo_snapshot::CodecPolicy,
        /// table or json.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Remove unnamed snapshots, unreferenced chunks and what killed writers left; waits for
    /// writers in progress.
    Gc {
        /// table or json.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut whole = bytes;
    while whole >= 1024 && unit + 1 < UNITS.len() {
        whole /= 1024;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    // Display only: precision loss on huge values is irrelevant.
    #[allow(clippy::cast_precision_loss)]
    let v = bytes as f64 / (1u64 << (10 * unit)) as f64;
    format!("{v:.1} {}", UNITS[unit])
}

fn time(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::<chrono::Utc>::from_timestamp(s, 0))
        .map_or_else(
            || "-".to_string(),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs one snapshot command against the store at `store`; returns the exit code.
pub fn run(cmd: SnapshotCommand, store: &Path) -> anyhow::Result<i32> {
    let store = Store::open(store)
        .with_context(|| format!("opening the snapshot store {}", store.display()))?;
    match cmd {
        SnapshotCommand::Ls { format } => {
            let list = store.list()?;
            if format == OutputFormat::Json {
                print_json(&list)?;
                return Ok(0);
            }
            println!(
                "{:<14}{:<22}{:>12}{:>12}  NAMES",
                "ID", "CREATED", "SIZE", "DATA"
            );
            for s in list {
                let names = if s.names.is_empty() {
                    "<none>".to_string()
                } else {
                    s.names.join(",")
                };
                let created = s
                    .error
                    .as_ref()
                    .map_or_else(|| time(s.created), |_| "<unreadable>".into());
                println!(
                    "{:<14}{:<22}{:>12}{:>12}  {names}",
                    s.id.short(),
                    created,
                    human(s.logical_bytes),
                    human(s.data_bytes)
                );
            }
        }
        SnapshotCommand::Inspect { reference, format } => {
            let info = store.inspect(&reference)?;
            if format == OutputFormat::Json {
                print_json(&info)?;
                return Ok(0);
            }
            println!("ID:           {}", info.id);
            println!("Names:        {}", info.names.join(", "));
            println!("Created:      {}", time(info.created));
            println!(
                "Format:       version {}, chunk size {}",
                info.format_version,
                human(info.chunk_size)
            );
            println!(
                "Logical size: {} ({} non-zero)",
                human(info.logical_bytes),
                human(info.data_bytes)
            );
            println!(
                "Chunks:       {} referenced, {} distinct ({} raw)",
                info.chunks,
                info.unique_chunks,
                human(info.unique_raw_bytes)
            );
            println!(
                "Stored:       {} ({} exclusive to this snapshot), manifest {}",
                human(info.stored_bytes),
                human(info.exclusive_stored_bytes),
                human(info.manifest_bytes)
            );
            println!(
                "Ratios:       dedup {:.2}x, compression {:.2}x, total {:.2}x",
                info.dedup_ratio, info.compression_ratio, info.total_ratio
            );
            println!("Working set:  {} pages", info.working_set_pages);
            println!(
                "{:<8}{:>12}{:>12}{:>9}{:>9}  NAME",
                "KIND", "SIZE", "DATA", "REGIONS", "CHUNKS"
            );
            for o in &info.objects {
                println!(
                    "{:<8}{:>12}{:>12}{:>9}{:>9}  {}",
                    o.kind.as_str(),
                    human(o.size),
                    human(o.data_bytes),
                    o.regions,
                    o.extents,
                    o.name
                );
            }
        }
        SnapshotCommand::Verify { reference, format } => {
            let id = store.resolve(&reference)?;
            let report = store.verify(&id.to_string())?;
            let failures: Vec<String> = report.failures.iter().map(ToString::to_string).collect();
            if format == OutputFormat::Json {
                print_json(&serde_json::json!({
                    "id": id.to_string(),
                    "chunks": report.chunks,
                    "bytes": report.bytes,
                    "ok": failures.is_empty(),
                    "failures": failures,
                }))?;
            } else {
                for f in &failures {
                    println!("BAD  {f}");
                }
                println!(
                    "{id}: {} chunks ({}) checked, {} bad",
                    report.chunks,
                    human(report.bytes),
                    failures.len()
                );
            }
            return Ok(i32::from(!failures.is_empty()));
        }
        SnapshotCommand::Rm { references, format } => {
            let mut reports = Vec::new();
            for r in &references {
                reports.push(store.remove(r).with_context(|| format!("removing {r}"))?);
            }
            if format == OutputFormat::Json {
                print_json(&reports)?;
            } else {
                for rep in reports {
                    for n in &rep.names {
                        println!("Untagged: {n}");
                    }
                    if let Some(id) = rep.snapshot {
                        println!("Deleted: {id}");
                    }
                }
            }
        }
        SnapshotCommand::Compact {
            reference,
            codec,
            format,
        } => {
            let rep = store.compact(&reference, codec)?;
            if format == OutputFormat::Json {
                print_json(&rep)?;
            } else {
                println!(
                    "{}: {} of {} chunks re-encoded as {codec}: {} -> {}",
                    rep.snapshot,
                    rep.rewritten,
                    rep.chunks,
                    human(rep.bytes_before),
                    human(rep.bytes_after)
                );
            }
        }
        SnapshotCommand::Gc { format } => {
            let rep = store.gc()?;
            if format == OutputFormat::Json {
                print_json(&rep)?;
            } else {
                println!(
                    "kept {} snapshots; removed {} snapshots, {} chunks ({}), {} temp entries, {} dangling names",
                    rep.snapshots_kept,
                    rep.snapshots_removed,
                    rep.chunks_removed,
                    human(rep.bytes_freed),
                    rep.temp_removed,
                    rep.dangling_names_removed
                );
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_inspect_verify_rm_gc() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.writer().unwrap();
        w.object("pid-1")
            .unwrap()
            .add_pages(0, &[7u8; 8192])
            .unwrap();
        let id = w.commit(Some("app:v1")).unwrap();
        let fmts = [OutputFormat::Table, OutputFormat::Json];
        for format in fmts {
            assert_eq!(run(SnapshotCommand::Ls { format }, dir.path()).unwrap(), 0);
            let reference = "app:v1".to_string();
            assert_eq!(
                run(SnapshotCommand::Inspect { reference, format }, dir.path()).unwrap(),
                0
            );
            let reference = id.hex()[..8].to_string();
            assert_eq!(
                run(SnapshotCommand::Verify { reference, format }, dir.path()).unwrap(),
                0
            );
            let (reference, codec) = ("app:v1".to_string(), "zstd3".parse().unwrap());
            let compact = SnapshotCommand::Compact {
                reference,
                codec,
                format,
            };
            assert_eq!(run(compact, dir.path()).unwrap(), 0);
        }
        let references = vec!["app:v1".to_string()];
        let format = OutputFormat::Table;
        assert_eq!(
            run(SnapshotCommand::Rm { references, format }, dir.path()).unwrap(),
            0
        );
        assert_eq!(run(SnapshotCommand::Gc { format }, dir.path()).unwrap(), 0);
        assert!(store.list().unwrap().is_empty());
        let reference = "registry.example.com/app:v1".to_string();
        let err = run(SnapshotCommand::Inspect { reference, format }, dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("registry references are not supported yet"));
    }
}

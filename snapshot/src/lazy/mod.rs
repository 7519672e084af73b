//! Lazy restore: a restored process runs at once while its memory streams in from the store.
//!
//! CRIU restores the process tree with its lazy ranges (private anonymous memory, which CRIU
//! flags `PE_LAZY` at dump) registered on userfaultfds and hands those to cryo's server
//! ([`daemon`]), which answers faults from the store, fills the rest in the background and
//! records the working set for the next restore. [`plan`] reads which ranges are lazy from
//! the snapshot's pagemaps; `criu::ingest::materialize_lazy` writes the images CRIU restores
//! from, without those pages.

pub mod daemon;
pub mod uffd;

use std::collections::BTreeMap;

use crate::criu::images::{is_pagemap, Pagemap, PE_LAZY, PE_PRESENT};
use crate::criu::ingest::object_name;
use crate::store::manifest::ObjectKind;
use crate::{Reader, Result};

pub use daemon::{serve_fds, ServeOptions, ServeReport, Server, UffdHook};

/// The lazy ranges of one task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskPlan {
    /// The store object holding its pages (`pagemap-PID`).
    pub object: String,
    /// `[start, end)` ranges, one per lazy pagemap entry, in address order.
    pub ranges: Vec<(u64, u64)>,
}

/// Which pages of which task come lazily, by pid in the images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LazyPlan {
    /// Per task.
    pub tasks: BTreeMap<i32, TaskPlan>,
}

impl LazyPlan {
    /// Bytes served lazily.
    pub fn bytes(&self) -> u64 {
        self.tasks
            .values()
            .flat_map(|t| t.ranges.iter())
            .map(|(s, e)| e - s)
            .sum()
    }
}

/// The pid of a task pagemap (`pagemap-PID.img`); shmem pagemaps have none and are never lazy.
pub fn task_pid(pagemap_file: &str) -> Option<i32> {
    pagemap_file
        .strip_prefix("pagemap-")?
        .strip_suffix(".img")?
        .parse()
        .ok()
}

/// Whether an entry of a task pagemap is restored lazily.
pub fn is_lazy(flags: u32) -> bool {
    flags & PE_LAZY != 0 && flags & PE_PRESENT != 0
}

/// The lazy plan of a snapshot of CRIU images.
pub fn plan(reader: &Reader) -> Result<LazyPlan> {
    let mut out = LazyPlan::default();
    let names: Vec<String> = reader
        .objects()
        .iter()
        .filter(|o| o.kind == ObjectKind::Blob && is_pagemap(&o.name))
        .map(|o| o.name.clone())
        .collect();
    for name in names {
        let Some(pid) = task_pid(&name) else { continue };
        let pm = Pagemap::parse(&name, &reader.read_blob(&name)?)?;
        let ranges: Vec<(u64, u64)> = pm
            .entries
            .iter()
            .filter(|e| is_lazy(e.pe_flags()))
            .map(|e| (e.vaddr, e.vaddr + e.len()))
            .collect();
        if !ranges.is_empty() {
            out.tasks.insert(
                pid,
                TaskPlan {
                    object: object_name(&name).to_string(),
                    ranges,
                },
            );
        }
    }
    Ok(out)
}

/// Where the server reads pages: the store, or anything else that can say what is at an
/// address (tests). Shared by the threads that fill in parallel.
pub trait PageSource: Sync {
    /// Fills `out` with the bytes of `object` at `start` (inside one region; holes are zeros).
    fn read(&self, object: &str, start: u64, out: &mut [u8]) -> Result<()>;
    /// The recorded working set, pages to fill first.
    fn working_set(&self) -> Option<Vec<(String, u64)>> {
        None
    }
}

impl PageSource for Reader {
    fn read(&self, object: &str, start: u64, out: &mut [u8]) -> Result<()> {
        self.read_range(object, start, out)
    }

    fn working_set(&self) -> Option<Vec<(String, u64)>> {
        let pages = Reader::working_set(self).ok()??;
        let objects = self.objects();
        Some(
            pages
                .into_iter()
                .filter_map(|p| {
                    let o = objects.get(usize::try_from(p.object).ok()?)?;
                    Some((o.name.clone(), p.vaddr))
                })
                .collect(),
        )
    }
}

/// Serves the lazy restore of snapshot `reference` of `store` on `socket`: binds, calls
/// `ready` (the caller then starts `criu restore --lazy-pages`), serves until every page is
/// in, and records the faulted pages as the snapshot's working set for the next restore.
pub fn run(
    store: &crate::Store,
    reference: &str,
    socket: &std::path::Path,
    opts: ServeOptions,
    hook: Option<UffdHook>,
    ready: impl FnOnce() -> Result<()>,
) -> Result<ServeReport> {
    let reader = store.reader(reference)?;
    let id = reader.id();
    let plan = plan(&reader)?;
    let mut server = Server::bind(socket, reader, plan, opts)?;
    if let Some(h) = hook {
        server = server.on_uffd(h);
    }
    ready()?;
    let report = server.serve()?;
    if !report.working_set.is_empty() {
        let pages: Vec<(&str, u64)> = report
            .working_set
            .iter()
            .map(|(o, v)| (o.as_str(), *v))
            .collect();
        store.set_working_set(&id, &pages)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, WriterOptions};

    /// Maps `pages` anonymous pages and returns their address.
    fn map(pages: usize) -> u64 {
        // SAFETY: a fresh private anonymous mapping, never unmapped by the test.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * 4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p as u64
    }

    #[test]
    fn faults_are_served_from_the_store_and_everything_is_filled() {
        let pages = 600; // more than two fill windows, odd on purpose
        let addr = map(pages);
        let mut content = vec![0u8; pages * 4096];
        for (i, b) in content.iter_mut().enumerate() {
            // Every 7th page stays zero: a hole in the store.
            if (i / 4096) % 7 != 3 {
                *b = (i as u64).wrapping_mul(2_654_435_761).to_le_bytes()[1];
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.writer_with(WriterOptions::default()).unwrap();
        w.object("pagemap-1")
            .unwrap()
            .add_pages(addr, &content)
            .unwrap();
        w.commit(Some("lazy:t")).unwrap();
        let reader = store.reader("lazy:t").unwrap();
        let uffd = match uffd::open_registered(addr, (pages * 4096) as u64) {
            Ok(fd) => fd,
            Err(e) => {
                println!("skipped: userfaultfd unavailable here: {e}");
                return;
            }
        };
        let plan = LazyPlan {
            tasks: [(
                1,
                TaskPlan {
                    object: "pagemap-1".into(),
                    ranges: vec![(addr, addr + (pages * 4096) as u64)],
                },
            )]
            .into(),
        };
        let server = std::thread::spawn(move || {
            serve_fds(reader, plan, ServeOptions::default(), vec![(1, uffd)])
        });
        // Touch pages out of order while the server also fills in the background.
        // SAFETY: the mapping is `pages` pages long and stays mapped.
        let mem = unsafe { std::slice::from_raw_parts(addr as *const u8, pages * 4096) };
        for p in [599usize, 0, 300, 3, 17] {
            assert_eq!(
                mem[p * 4096..(p + 1) * 4096],
                content[p * 4096..(p + 1) * 4096]
            );
        }
        let report = server.join().unwrap().unwrap();
        assert_eq!(mem, &content[..], "every page is in and right");
        assert_eq!(
            report.copied_bytes + report.zero_bytes,
            (pages * 4096) as u64
        );
        assert!(report.faults <= 5, "faults: {}", report.faults);
        assert_eq!(report.tasks, 1);
    }

    #[test]
    fn a_task_without_lazy_pages_is_served_with_nothing_pending() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.writer_with(WriterOptions::default()).unwrap();
        w.add_blob("x", b"1").unwrap();
        w.commit(Some("lazy:e")).unwrap();
        let addr = map(1);
        let Ok(uffd) = uffd::open_registered(addr, 4096) else {
            println!("skipped: userfaultfd unavailable here");
            return;
        };
        let r = serve_fds(
            store.reader("lazy:e").unwrap(),
            LazyPlan::default(),
            ServeOptions::default(),
            vec![(42, uffd)],
        )
        .unwrap();
        assert_eq!((r.tasks, r.copied_bytes), (1, 0));
    }
}

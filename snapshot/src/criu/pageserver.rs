//! A page server for `criu dump`: CRIU sends the memory pages over a socket (`ps.fd` of the
//! RPC) instead of writing `pagemap-*.img` and `pages-*.img`, and they go straight into a
//! store writer while CRIU is still dumping. No raw copy of the memory is ever staged, and
//! compression runs while CRIU walks the tasks.
//!
//! The protocol (criu/page-xfer.c; ../shared/DESIGN.md has what was seen on the wire): a raw
//! host-order header per message, `{u32 cmd; u32 nr_pages; u64 vaddr; u64 dst_id}` up to CRIU
//! 4.1 and `{u32 cmd; u32 pad; u64 nr_pages; u64 vaddr; u64 dst_id}` from 4.2, with
//! `cmd = flags << 16 | code` and `dst_id = id << 8 | type` (1 a task, 2 a shmem segment).
//! Per pagemap CRIU sends OPEN2 (answered with one byte, `has_parent` = 0), then ADD_F headers
//! each followed by its pages; at the end FORCE_CLOSE, answered with an `i32` status once every
//! page is in the writer (not yet committed: the snapshot is committed with the other images
//! after CRIU's post-dump notification). A non-zero status, or this end closing, fails the
//! dump, and CRIU lets the tasks run on.
//!
//! Two threads: one speaks the protocol and reads pages into a small pool of buffers, the
//! other hands them to the writer (which compresses on every core), so reading the socket
//! never waits for compression to finish a batch.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::images::{Pagemap, PagemapEntry, PAGE, PE_LAZY, PE_PARENT, PE_PRESENT};
use crate::{Error, Result, Writer};

const PS_IOV_ADD: u32 = 1;
const PS_IOV_HOLE: u32 = 2;
const PS_IOV_OPEN: u32 = 3;
const PS_IOV_OPEN2: u32 = 4;
const PS_IOV_ADD_F: u32 = 6;
const PS_IOV_CLOSE: u32 = 0x1023;
const PS_IOV_FORCE_CLOSE: u32 = 0x1024;
const TYPE_TASK: u64 = 1;
const TYPE_SHMEM: u64 = 2;
/// Bytes read from the socket per batch handed to the writer.
const BATCH: usize = 8 << 20;
/// Batches in flight between the two threads.
const BUFFERS: usize = 4;
/// Socket buffer asked for (root may exceed `net.core.rmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// What the page server received: the writer holding every page (uncommitted), the pagemaps
/// CRIU would have written (`(file name, pagemap)`, pages ids from 1 in order of arrival), and
/// the bytes of pages.
pub struct Received {
    /// The writer, with every page added and flushed.
    pub writer: Writer,
    /// `pagemap-N.img` / `pagemap-shmem-N.img` and their contents.
    pub pagemaps: Vec<(String, Pagemap)>,
    /// Bytes of pages received.
    pub page_bytes: u64,
}

/// A page server running for one dump.
pub struct PageServer {
    criu_end: OwnedFd,
    protocol: JoinHandle<Result<Transferred>>,
    ingest: JoinHandle<Result<Writer>>,
}

/// The protocol thread's result: the pagemaps built and the bytes of pages received.
type Transferred = (Vec<(String, Pagemap)>, u64);

enum Msg {
    Pages {
        object: String,
        vaddr: u64,
        buf: Vec<u8>,
        len: usize,
    },
    Flush(SyncSender<Result<()>>),
}

fn err(message: impl Into<String>) -> Error {
    Error::InvalidInput {
        object: "criu page server".into(),
        reason: message.into(),
    }
}

impl PageServer {
    /// Starts serving into `writer`; `wide_header`: CRIU 4.2 or later (see the module doc).
    pub fn start(writer: Writer, wide_header: bool) -> Result<PageServer> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| err(format!("socketpair: {e}")))?;
        // Bigger buffers mean fewer wake-ups per GiB; best effort.
        let _ = nix::sys::socket::setsockopt(
            &ours,
            nix::sys::socket::sockopt::RcvBufForce,
            &SOCKET_BUFFER,
        );
        let _ = nix::sys::socket::setsockopt(
            &theirs,
            nix::sys::socket::sockopt::SndBufForce,
            &SOCKET_BUFFER,
        );
        let (tx, rx) = mpsc::sync_channel::<Msg>(BUFFERS);
        let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        for _ in 0..BUFFERS {
            let _ = free_tx.send(Vec::new());
        }
        let ingest = std::thread::Builder::new()
            .name("cryo-ps-ingest".into())
            .spawn(move || ingest(writer, rx, free_tx))
            .map_err(|e| err(format!("spawning a thread: {e}")))?;
        let sock = UnixStream::from(ours);
        let protocol = std::thread::Builder::new()
            .name("cryo-ps".into())
            .spawn(move || {
                let mut p = Protocol {
                    sock,
                    wide: wide_header,
                    tx,
                    free: free_rx,
                    objects: HashMap::new(),
                    pagemaps: Vec::new(),
                    page_bytes: 0,
                };
                let r = p.serve();
                // Closing our end tells a CRIU still sending that the dump failed.
                drop(p.sock);
                r.map(|()| (p.pagemaps, p.page_bytes))
            })
            .map_err(|e| err(format!("spawning a thread: {e}")))?;
        Ok(PageServer {
            criu_end: theirs,
            protocol,
            ingest,
        })
    }

    /// CRIU's end of the socket, to hand to `criu swrk` (and name in `ps.fd`).
    pub fn criu_fd(&self) -> BorrowedFd<'_> {
        self.criu_end.as_fd()
    }

    /// Waits for the end of the transfer (CRIU's FORCE_CLOSE, or CRIU gone) and returns
    /// what was received. Call it once CRIU's dump is past its memory (the post-dump
    /// notification), or after CRIU exited.
    pub fn finish(self) -> Result<Received> {
        drop(self.criu_end);
        let protocol = self
            .protocol
            .join()
            .map_err(|_| err("the protocol thread panicked"))?;
        let writer = self
            .ingest
            .join()
            .map_err(|_| err("the ingest thread panicked"))?;
        // The writer's error says more than the protocol's "the writer stopped".
        let writer = writer?;
        let (pagemaps, page_bytes) = protocol?;
        Ok(Received {
            writer,
            pagemaps,
            page_bytes,
        })
    }
}

fn ingest(mut writer: Writer, rx: Receiver<Msg>, free: SyncSender<Vec<u8>>) -> Result<Writer> {
    for msg in rx {
        match msg {
            Msg::Pages {
                object,
                vaddr,
                buf,
                len,
            } => {
                writer.object(&object)?.add_pages(vaddr, &buf[..len])?;
                let _ = free.send(buf);
            }
            Msg::Flush(reply) => {
                let r = writer.flush();
                let failed = r.is_err();
                let _ = reply.send(r);
                if failed {
                    return Err(err("the store writer failed (reported to CRIU)"));
                }
            }
        }
    }
    Ok(writer)
}

struct Protocol {
    sock: UnixStream,
    wide: bool,
    tx: SyncSender<Msg>,
    free: Receiver<Vec<u8>>,
    /// dst_id -> index into `pagemaps`.
    objects: HashMap<u64, usize>,
    pagemaps: Vec<(String, Pagemap)>,
    page_bytes: u64,
}

struct Header {
    code: u32,
    flags: u32,
    nr_pages: u64,
    vaddr: u64,
    dst_id: u64,
}

impl Protocol {
    /// Reads one header; `None` at a clean end of the stream.
    fn header(&mut self) -> Result<Option<Header>> {
        let mut b = [0u8; 32];
        let len = if self.wide { 32 } else { 24 };
        let mut got = 0;
        while got < len {
            match self.sock.read(&mut b[got..len]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(err("CRIU closed the socket inside a message header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(format!("reading from CRIU: {e}"))),
            }
        }
        let u32_at = |at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_ne_bytes(a)
        };
        let cmd = u32_at(0);
        let (nr_pages, rest) = if self.wide {
            (u64_at(8), 16)
        } else {
            (u64::from(u32_at(4)), 8)
        };
        Ok(Some(Header {
            code: cmd & 0xffff,
            flags: cmd >> 16,
            nr_pages,
            vaddr: u64_at(rest),
            dst_id: u64_at(rest + 8),
        }))
    }

    fn reply(&mut self, bytes: &[u8]) -> Result<()> {
        self.sock
            .write_all(bytes)
            .map_err(|e| err(format!("answering CRIU: {e}")))
    }

    fn serve(&mut self) -> Result<()> {
        loop {
            let Some(h) = self.header()? else {
                return Err(err(
                    "CRIU closed the socket before it finished sending pages",
                ));
            };
            match h.code {
                PS_IOV_OPEN | PS_IOV_OPEN2 => {
                    self.open(h.dst_id)?;
                    if h.code == PS_IOV_OPEN2 {
                        // No parent image: pre-dump chains are not supported.
                        self.reply(&[0])?;
                    }
                }
                PS_IOV_ADD | PS_IOV_ADD_F | PS_IOV_HOLE => {
                    let flags = match h.code {
                        PS_IOV_ADD => PE_PRESENT,
                        PS_IOV_HOLE if h.flags == 0 => PE_PARENT,
                        _ => h.flags,
                    };
                    self.add(&h, flags, h.code != PS_IOV_HOLE)?;
                }
                PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => {
                    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
                    let flushed = self
                        .tx
                        .send(Msg::Flush(reply_tx))
                        .ok()
                        .and_then(|()| reply_rx.recv().ok());
                    let status: i32 = if matches!(flushed, Some(Ok(()))) {
                        0
                    } else {
                        -1
                    };
                    self.reply(&status.to_ne_bytes())?;
                    return match flushed {
                        Some(Ok(())) => Ok(()),
                        Some(Err(e)) => Err(e),
                        None => Err(err("the store writer stopped")),
                    };
                }
                other => {
                    return Err(err(format!(
                        "unexpected page-server command {other:#x} (flags {:#x})",
                        h.flags
                    )))
                }
            }
        }
    }

    fn open(&mut self, dst_id: u64) -> Result<()> {
        let id = dst_id >> 8;
        let name = match dst_id & 0xff {
            TYPE_TASK => format!("pagemap-{id}.img"),
            TYPE_SHMEM => format!("pagemap-shmem-{id}.img"),
            t => return Err(err(format!("a pagemap of unknown type {t} (id {id})"))),
        };
        if self.objects.contains_key(&dst_id) {
            return Err(err(format!("{name} opened twice")));
        }
        let pages_id = u32::try_from(self.pagemaps.len() + 1).unwrap_or(u32::MAX);
        self.objects.insert(dst_id, self.pagemaps.len());
        self.pagemaps.push((
            name,
            Pagemap {
                pages_id,
                entries: Vec::new(),
            },
        ));
        Ok(())
    }

    fn add(&mut self, h: &Header, flags: u32, with_pages: bool) -> Result<()> {
        let Some(&i) = self.objects.get(&h.dst_id) else {
            return Err(err(format!(
                "pages for pagemap {:#x}, which was never opened",
                h.dst_id
            )));
        };
        let name = self.pagemaps[i].0.clone();
        let bad = |reason: String| Error::InvalidInput {
            object: name.clone(),
            reason,
        };
        if flags & PE_PARENT != 0 {
            return Err(bad(format!(
                "pages at {:#x} are in a parent image; pre-dump chains are not supported",
                h.vaddr
            )));
        }
        if flags & PE_PRESENT == 0 && flags & PE_LAZY != 0 {
            return Err(bad(format!(
                "pages at {:#x} are lazy with no data: dump without --lazy-pages",
                h.vaddr
            )));
        }
        if with_pages != (flags & PE_PRESENT != 0) {
            return Err(bad(format!(
                "pages at {:#x}: flags {flags:#x} do not match the command",
                h.vaddr
            )));
        }
        let len = h
            .nr_pages
            .checked_mul(PAGE)
            .filter(|_| h.vaddr.is_multiple_of(PAGE))
            .ok_or_else(|| bad(format!("{} pages at {:#x}", h.nr_pages, h.vaddr)))?;
        self.pagemaps[i].1.entries.push(PagemapEntry {
            vaddr: h.vaddr,
            nr_pages: u32::try_from(h.nr_pages).unwrap_or(0),
            in_parent: None,
            flags: Some(flags),
            nr_pages_wide: self.wide.then_some(h.nr_pages),
        });
        if !with_pages {
            return Ok(());
        }
        let object = super::ingest::object_name(&name).to_string();
        let mut done = 0u64;
        while done < len {
            let mut buf = self
                .free
                .recv()
                .map_err(|_| err("the store writer stopped"))?;
            let n = usize::try_from((len - done).min(BATCH as u64)).unwrap_or(BATCH);
            if buf.len() < n {
                buf.resize(BATCH.max(n), 0);
            }
            self.sock
                .read_exact(&mut buf[..n])
                .map_err(|e| bad(format!("reading pages at {:#x}: {e}", h.vaddr + done)))?;
            self.tx
                .send(Msg::Pages {
                    object: object.clone(),
                    vaddr: h.vaddr + done,
                    buf,
                    len: n,
                })
                .map_err(|_| err("the store writer stopped"))?;
            done += n as u64;
        }
        self.page_bytes += len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::criu::{commit_received, materialize};
    use crate::workload::memory_image;
    use crate::Store;

    fn header(wide: bool, cmd: u32, nr_pages: u64, vaddr: u64, dst_id: u64) -> Vec<u8> {
        let mut h = cmd.to_ne_bytes().to_vec();
        if wide {
            h.extend_from_slice(&0u32.to_ne_bytes());
            h.extend_from_slice(&nr_pages.to_ne_bytes());
        } else {
            h.extend_from_slice(&u32::try_from(nr_pages).unwrap().to_ne_bytes());
        }
        h.extend_from_slice(&vaddr.to_ne_bytes());
        h.extend_from_slice(&dst_id.to_ne_bytes());
        h
    }

    /// A stand-in for CRIU: its end of the page server's socket.
    fn criu_end(ps: &PageServer) -> UnixStream {
        UnixStream::from(ps.criu_fd().try_clone_to_owned().unwrap())
    }

    #[test]
    fn pages_sent_as_criu_sends_them_come_back_from_the_store() {
        for wide in [false, true] {
            let t = tempfile::tempdir().unwrap();
            let store = Store::open(t.path().join("store")).unwrap();
            let ps = PageServer::start(store.writer().unwrap(), wide).unwrap();
            let mut criu = criu_end(&ps);
            let task = (42 << 8) | TYPE_TASK;
            let shmem = (9 << 8) | TYPE_SHMEM;
            // A small entry, then one of 10 MiB: more than a batch, so it arrives in pieces.
            let small = memory_image(3 * 4096, 1);
            let big = memory_image(2560 * 4096, 2);
            let lazy = (PE_PRESENT | PE_LAZY) << 16;
            criu.write_all(&header(wide, PS_IOV_OPEN2, 0, 0, task))
                .unwrap();
            let mut has_parent = [9u8];
            criu.read_exact(&mut has_parent).unwrap();
            assert_eq!(has_parent, [0]);
            criu.write_all(&header(wide, lazy | PS_IOV_ADD_F, 3, 0x40_0000, task))
                .unwrap();
            criu.write_all(&small).unwrap();
            criu.write_all(&header(wide, PS_IOV_OPEN, 0, 0, shmem))
                .unwrap();
            criu.write_all(&header(wide, PS_IOV_ADD, 1, 0, shmem))
                .unwrap();
            criu.write_all(&small[..4096]).unwrap();
            criu.write_all(&header(
                wide,
                lazy | PS_IOV_ADD_F,
                2560,
                0x7f00_0000_0000,
                task,
            ))
            .unwrap();
            criu.write_all(&big).unwrap();
            criu.write_all(&header(wide, PS_IOV_FORCE_CLOSE, 0, 0, 0))
                .unwrap();
            let mut status = [1u8; 4];
            criu.read_exact(&mut status).unwrap();
            assert_eq!(i32::from_ne_bytes(status), 0);
            drop(criu);

            let received = ps.finish().unwrap();
            assert_eq!(received.page_bytes, (3 + 1 + 2560) * 4096);
            let names: Vec<&str> = received.pagemaps.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["pagemap-42.img", "pagemap-shmem-9.img"]);
            let images = t.path().join("images");
            fs::create_dir(&images).unwrap();
            fs::write(images.join("core-42.img"), b"core").unwrap();
            let rep = commit_received(received, &images, Some("x")).unwrap();
            assert_eq!(rep.page_bytes, (3 + 1 + 2560) * 4096);

            // Written back, the images are what CRIU's own page server would have written.
            let out = t.path().join("out");
            fs::create_dir(&out).unwrap();
            materialize(&store.reader("x").unwrap(), &out).unwrap();
            let pm = Pagemap::parse("p", &fs::read(out.join("pagemap-42.img")).unwrap()).unwrap();
            assert_eq!(pm.pages_id, 1);
            let got: Vec<(u64, u64, u32)> = pm
                .entries
                .iter()
                .map(|e| (e.vaddr, e.pages(), e.pe_flags()))
                .collect();
            assert_eq!(
                got,
                [
                    (0x40_0000, 3, PE_PRESENT | PE_LAZY),
                    (0x7f00_0000_0000, 2560, PE_PRESENT | PE_LAZY)
                ]
            );
            let pages = fs::read(out.join("pages-1.img")).unwrap();
            assert!(pages[..small.len()] == small[..] && pages[small.len()..] == big[..]);
            assert_eq!(
                fs::read(out.join("pages-2.img")).unwrap(),
                small[..4096].to_vec()
            );
            assert_eq!(fs::read(out.join("core-42.img")).unwrap(), b"core");
        }
    }

    #[test]
    fn what_cryo_cannot_store_fails_the_dump_and_names_it() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("store")).unwrap();
        let task = (7 << 8) | TYPE_TASK;
        let cases: [(&str, Vec<Vec<u8>>); 4] = [
            (
                "parent image",
                vec![
                    header(true, PS_IOV_OPEN2, 0, 0, task),
                    header(true, PS_IOV_HOLE, 4, 0x1000, task),
                ],
            ),
            (
                "never opened",
                vec![header(true, (PE_PRESENT << 16) | PS_IOV_ADD_F, 1, 0, task)],
            ),
            (
                "unexpected page-server command 0x7",
                vec![header(true, 7, 1, 0, 7)],
            ),
            (
                "before it finished",
                vec![header(true, PS_IOV_OPEN2, 0, 0, task)],
            ),
        ];
        for (want, msgs) in cases {
            let ps = PageServer::start(store.writer().unwrap(), true).unwrap();
            let mut criu = criu_end(&ps);
            for m in msgs {
                criu.write_all(&m).unwrap();
                if m[0..4] == PS_IOV_OPEN2.to_ne_bytes() {
                    let mut has_parent = [9u8];
                    criu.read_exact(&mut has_parent).unwrap();
                }
            }
            drop(criu);
            let e = ps.finish().err().unwrap().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        assert!(store.list().unwrap().is_empty(), "nothing committed");
    }
}

//! cryo's lazy-pages server: what `criu lazy-pages` does, reading pages straight from the
//! snapshot store.
//!
//! Protocol (criu/uffd.c): the server listens on `lazy-pages.socket` in CRIU's work dir;
//! `criu restore --lazy-pages` connects once and, for each restored task, sends its pid in the
//! images as an `i32` followed by one byte carrying the task's userfaultfd (SCM_RIGHTS); a
//! zombie sends `-pid` and no fd; `RSTF` (0x52535446) marks the end of the restore. Every
//! lazy range is registered for missing-page faults by CRIU's restorer.
//!
//! The server answers faults first (a window of pages around the fault, decompressed from one
//! chunk), records the order in which pages were first touched (the working set), and after
//! `RSTF` fills the remaining pages in the background — the snapshot's recorded working set
//! first, then in address order — in large copies between faults. It tracks fork, remap and
//! remove events, and returns when every lazy page of every live task is in.

use std::collections::BTreeMap;
use std::io::{IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use rayon::prelude::*;

use super::uffd::{self, Copied, Event};
use super::{LazyPlan, PageSource};
use crate::store::writer::is_zero;
use crate::{Error, Result};

/// The end-of-restore marker CRIU sends in place of a pid.
const RESTORE_FINISHED: i32 = 0x5253_5446;
const PAGE: u64 = 4096;
/// How long after a fault the background fill keeps its copies to a fault's window.
const FAULTING_GRACE: Duration = Duration::from_millis(20);
/// The piece of a longer copy that one thread reads and copies.
const COPY_PIECE: u64 = 256 << 10;

/// How the server copies.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Bytes copied around a fault (aligned window, clipped to the lazy range).
    pub fault_window: u64,
    /// Bytes per background copy.
    pub fill_window: u64,
    /// How long to wait for CRIU to connect.
    pub accept_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            fault_window: 256 << 10,
            fill_window: 4 << 20,
            accept_timeout: Duration::from_secs(60),
        }
    }
}

/// What a lazy restore took.
#[derive(Debug, Clone, Default)]
pub struct ServeReport {
    /// Tasks served (forks included).
    pub tasks: usize,
    /// Faults answered.
    pub faults: u64,
    /// Bytes copied in with data.
    pub copied_bytes: u64,
    /// Bytes mapped as zero pages.
    pub zero_bytes: u64,
    /// From the end of the restore (`RSTF`) until every page was in.
    pub fill_time: Duration,
    /// Pages in the order they were first faulted: `(object, address)`.
    pub working_set: Vec<(String, u64)>,
}

/// One task's userfaultfd and the lazy ranges not yet filled (`start -> end`; ranges never
/// span two pagemap entries, so each lies inside one region of the store object).
struct Task {
    uffd: OwnedFd,
    object: String,
    pending: BTreeMap<u64, u64>,
}

impl Task {
    /// The pending range holding `page`.
    fn range_of(&self, page: u64) -> Option<(u64, u64)> {
        let (&s, &e) = self.pending.range(..=page).next_back()?;
        (page < e).then_some((s, e))
    }

    /// Marks `[start, end)` filled (or gone).
    fn take(&mut self, start: u64, end: u64) {
        let overlapping: Vec<(u64, u64)> = self
            .pending
            .range(..end)
            .filter(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.pending.remove(&s);
            if s < start {
                self.pending.insert(s, start);
            }
            if e > end {
                self.pending.insert(end, e);
            }
        }
    }
}

/// Called with every userfaultfd the server takes on (from CRIU, or from a fork event).
pub type UffdHook = Box<dyn FnMut(&OwnedFd)>;

/// The server, bound and waiting for CRIU.
pub struct Server<S: PageSource> {
    listener: UnixListener,
    source: S,
    plan: LazyPlan,
    opts: ServeOptions,
    hook: Option<UffdHook>,
}

impl<S: PageSource> Server<S> {
    /// Binds `socket` (CRIU's `WORK_DIR/lazy-pages.socket`) for the tasks of `plan`.
    pub fn bind(socket: &Path, source: S, plan: LazyPlan, opts: ServeOptions) -> Result<Self> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).map_err(|e| Error::io(socket, "bind", e))?;
        Ok(Server {
            listener,
            source,
            plan,
            opts,
            hook: None,
        })
    }

    /// Calls `hook` with every userfaultfd taken on: a watcher that holds duplicates keeps the
    /// ranges registered (faults wait instead of reading zeros) should this server die, and
    /// can kill the restored tasks cleanly.
    pub fn on_uffd(mut self, hook: UffdHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Accepts CRIU's connection and serves until every lazy page is in.
    pub fn serve(self) -> Result<ServeReport> {
        let conn = accept_with_timeout(&self.listener, self.opts.accept_timeout)?;
        let mut state = State::new(self.source, self.plan, self.opts);
        state.hook = self.hook;
        state.run(Some(conn))
    }
}

/// Serves already-registered userfaultfds without CRIU (`(pid in the plan, uffd)`); the
/// restore counts as finished at once. Tests and benchmarks drive the fault path with it.
pub fn serve_fds<S: PageSource>(
    source: S,
    plan: LazyPlan,
    opts: ServeOptions,
    fds: Vec<(i32, OwnedFd)>,
) -> Result<ServeReport> {
    let mut state = State::new(source, plan, opts);
    for (pid, fd) in fds {
        state.add_task(pid, fd)?;
    }
    state.finished = true;
    state.started_fill = Some(Instant::now());
    state.run(None)
}

fn accept_with_timeout(l: &UnixListener, timeout: Duration) -> Result<UnixStream> {
    let fd = l.as_raw_fd();
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(lazy_err(format!(
                "CRIU did not connect within {} s",
                timeout.as_secs()
            )));
        }
        // SAFETY: `fd` is the listener's, alive for this call.
        let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let mut fds = [PollFd::new(bfd, PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis().min(1000)).unwrap_or(1000);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => return l.accept().map(|(s, _)| s).map_err(|e| lazy_io("accept", e)),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(lazy_io("poll", e.into())),
        }
    }
}

fn lazy_err(message: String) -> Error {
    Error::Lazy { message }
}

fn lazy_io(what: &str, e: std::io::Error) -> Error {
    lazy_err(format!("{what}: {e}"))
}

struct State<S: PageSource> {
    source: S,
    plan: LazyPlan,
    opts: ServeOptions,
    tasks: Vec<Task>,
    finished: bool,
    started_fill: Option<Instant>,
    /// The recorded working set, then the rest: where background fill looks next.
    fill_order: Vec<(String, u64)>,
    fill_cursor: usize,
    report: ServeReport,
    seen: std::collections::HashSet<(String, u64)>,
    buf: Vec<u8>,
    /// Faults to serve again: `(task, page)`.
    retry: Vec<(usize, u64)>,
    hook: Option<UffdHook>,
    /// When the last fault came: while the tasks fault, background copies stay small.
    last_fault: Option<Instant>,
}

impl<S: PageSource> State<S> {
    fn new(source: S, plan: LazyPlan, opts: ServeOptions) -> Self {
        let fill_order = source.working_set().unwrap_or_default();
        let cap = usize::try_from(opts.fill_window.max(opts.fault_window)).unwrap_or(4 << 20);
        State {
            source,
            plan,
            opts,
            tasks: Vec::new(),
            finished: false,
            started_fill: None,
            fill_order,
            fill_cursor: 0,
            report: ServeReport::default(),
            seen: Default::default(),
            buf: vec![0u8; cap],
            retry: Vec::new(),
            hook: None,
            last_fault: None,
        }
    }

    fn add_task(&mut self, pid: i32, uffd: OwnedFd) -> Result<()> {
        // A task with no lazy pages in the snapshot still sends its userfaultfd: nothing is
        // pending for it, and a fault there (none is expected) gets a zero page.
        let (object, pending) = match self.plan.tasks.get(&pid) {
            Some(plan) => (
                plan.object.clone(),
                plan.ranges.iter().map(|&(s, e)| (s, e)).collect(),
            ),
            None => (format!("pagemap-{pid}"), BTreeMap::new()),
        };
        if let Some(h) = self.hook.as_mut() {
            h(&uffd);
        }
        self.tasks.push(Task {
            uffd,
            object,
            pending,
        });
        self.report.tasks += 1;
        Ok(())
    }

    fn run(&mut self, mut conn: Option<UnixStream>) -> Result<ServeReport> {
        loop {
            if self.finished && self.tasks.iter().all(|t| t.pending.is_empty()) {
                break;
            }
            let timeout = if self.finished {
                0
            } else if !self.retry.is_empty() {
                1
            } else {
                200
            };
            let ready = self.poll_once(conn.as_ref(), timeout)?;
            if ready.conn {
                match self.read_control(conn.as_mut().map(|c| c as &mut UnixStream)) {
                    Ok(true) => {}
                    Ok(false) => conn = None,
                    Err(e) => return Err(e),
                }
            }
            for i in ready.tasks {
                self.drain_events(i)?;
            }
            if !self.retry.is_empty() {
                for i in 0..self.tasks.len() {
                    self.drain_events(i)?;
                }
                self.retry_faults()?;
            }
            self.tasks.retain(|t| t.uffd.as_raw_fd() >= 0);
            if self.finished {
                self.fill_some()?;
            }
        }
        if let Some(t0) = self.started_fill {
            self.report.fill_time = t0.elapsed();
        }
        Ok(std::mem::take(&mut self.report))
    }

    fn poll_once(&self, conn: Option<&UnixStream>, timeout_ms: u16) -> Result<Ready> {
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        if let Some(c) = conn {
            fds.push(PollFd::new(std::os::fd::AsFd::as_fd(c), PollFlags::POLLIN));
        }
        for t in &self.tasks {
            fds.push(PollFd::new(
                std::os::fd::AsFd::as_fd(&t.uffd),
                PollFlags::POLLIN,
            ));
        }
        match poll(&mut fds, PollTimeout::from(timeout_ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(lazy_io("poll", e.into())),
        }
        let hit = |f: &PollFd<'_>| {
            f.revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let off = usize::from(conn.is_some());
        Ok(Ready {
            conn: conn.is_some() && hit(&fds[0]),
            tasks: (0..self.tasks.len())
                .filter(|&i| hit(&fds[i + off]))
                .collect(),
        })
    }

    /// Reads one task announcement (or the end marker). `false` when CRIU closed the socket.
    fn read_control(&mut self, conn: Option<&mut UnixStream>) -> Result<bool> {
        let Some(c) = conn else { return Ok(false) };
        let mut word = [0u8; 4];
        match c.read_exact(&mut word) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                if !self.finished {
                    return Err(lazy_err(
                        "CRIU closed the lazy-pages socket before the restore finished".into(),
                    ));
                }
                return Ok(false);
            }
            Err(e) => return Err(lazy_io("read from CRIU", e)),
        }
        let pid = i32::from_ne_bytes(word);
        if pid == RESTORE_FINISHED {
            self.finished = true;
            self.started_fill = Some(Instant::now());
            return Ok(true);
        }
        if pid < 0 {
            return Ok(true); // a zombie: no memory
        }
        let fd = recv_fd(c.as_raw_fd())?;
        self.add_task(pid, fd)?;
        Ok(true)
    }

    fn drain_events(&mut self, i: usize) -> Result<()> {
        loop {
            let ev = match uffd::read_event(&self.tasks[i].uffd) {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBADF) => return Ok(()),
                Err(e) => return Err(lazy_io("read userfaultfd", e)),
            };
            tracing::trace!(task = i, ?ev, "userfaultfd event");
            match ev {
                Event::PageFault { address } => self.fault(i, address & !(PAGE - 1))?,
                Event::Fork { fd } => {
                    // SAFETY: the kernel installed `fd` in this process for the child.
                    let child = unsafe { OwnedFd::from_raw_fd(fd) };
                    if let Some(h) = self.hook.as_mut() {
                        h(&child);
                    }
                    let t = &self.tasks[i];
                    let copy = Task {
                        uffd: child,
                        object: t.object.clone(),
                        pending: t.pending.clone(),
                    };
                    self.tasks.push(copy);
                    self.report.tasks += 1;
                }
                Event::Remap { from, to, len } => {
                    let t = &mut self.tasks[i];
                    let moved: Vec<(u64, u64)> = t
                        .pending
                        .range(..from + len)
                        .filter(|(_, &e)| e > from)
                        .map(|(&s, &e)| (s.max(from), e.min(from + len)))
                        .collect();
                    t.take(from, from + len);
                    // A remapped range keeps its store addresses: track it by its new address
                    // in a task of its own reading from the old ones.
                    if !moved.is_empty() {
                        return Err(lazy_err(format!(
                            "mremap of {} lazy bytes at {from:#x} to {to:#x} is not supported yet",
                            moved.iter().map(|(s, e)| e - s).sum::<u64>()
                        )));
                    }
                }
                Event::Remove { start, end } => self.tasks[i].take(start, end),
                Event::Other(e) => {
                    return Err(lazy_err(format!("unknown userfaultfd event {e:#x}")))
                }
            }
        }
    }

    /// Answers a fault at `page` of task `i`.
    fn fault(&mut self, i: usize, page: u64) -> Result<()> {
        self.report.faults += 1;
        self.last_fault = Some(Instant::now());
        if self.tasks[i].range_of(page).is_some() {
            let key = (self.tasks[i].object.clone(), page);
            if self.seen.insert(key.clone()) {
                self.report.working_set.push(key);
            }
        }
        self.serve_page(i, page)
    }

    /// Maps `page` of task `i`: a window of its pending range from the store, or a zero page
    /// where nothing is pending (not lazy, or dropped by a remove). A copy the kernel refuses
    /// for now (`EAGAIN` while the task's address space changes, as during CRIU's restorer)
    /// is retried: the faulting thread waits until then.
    fn serve_page(&mut self, i: usize, page: u64) -> Result<()> {
        let Some((s, e)) = self.tasks[i].range_of(page) else {
            match uffd::zeropage(&self.tasks[i].uffd, page, PAGE)
                .map_err(|e| lazy_io("zeropage", e))?
            {
                Copied::Done => self.report.zero_bytes += PAGE,
                Copied::Again => self.retry.push((i, page)),
                Copied::Exists | Copied::Gone | Copied::Dead => {}
            }
            return Ok(());
        };
        let w = self.opts.fault_window;
        let start = (page / w * w).max(s);
        let end = (page / w * w + w).min(e);
        self.copy_range(i, start, end)
    }

    /// Copies `[start, end)` (inside one pending range) of task `i` from the store. A range
    /// longer than [`COPY_PIECE`] is read and copied in pieces on every core at once, so that
    /// decompressing one piece overlaps copying another into the task.
    fn copy_range(&mut self, i: usize, start: u64, end: u64) -> Result<()> {
        let len = usize::try_from(end - start).unwrap_or(0);
        let object = self.tasks[i].object.clone();
        let piece = usize::try_from(COPY_PIECE).unwrap_or(usize::MAX);
        if len <= piece {
            // A fault's window: on this thread, without waking the pool.
            self.source
                .read(&object, start, &mut self.buf[..len])
                .map_err(|e| lazy_err(format!("{object} at {start:#x}: {e}")))?;
            return self.copy_span(i, start, start, end);
        }
        let source = &self.source;
        let fd = &self.tasks[i].uffd;
        let results: Vec<(u64, u64, bool, Result<Copied>)> = self.buf[..len]
            .par_chunks_mut(piece)
            .enumerate()
            .map(|(k, data)| {
                let s = start + (k * piece) as u64;
                let e = s + data.len() as u64;
                let r = source
                    .read(&object, s, data)
                    .map_err(|err| lazy_err(format!("{object} at {s:#x}: {err}")));
                let zero = r.is_ok() && is_zero(data);
                let r = r.and_then(|()| {
                    if zero {
                        uffd::zeropage(fd, s, e - s)
                    } else {
                        uffd::copy(fd, s, data)
                    }
                    .map_err(|err| lazy_io("copy", err))
                });
                (s, e, zero, r)
            })
            .collect();
        for (s, e, zero, r) in results {
            self.settle(i, start, s, e, zero, r?)?;
        }
        Ok(())
    }

    /// Copies `[start, end)` of task `i` from `self.buf` (which holds the bytes from `base`).
    /// A pagemap entry may span several VMAs and one copy must stay inside one, and pages may
    /// be in already: when the kernel refuses the whole span (`ENOENT`, `EEXIST`, or `EAGAIN`
    /// mid-fork) it is halved until each page gets its own answer. Pages refused with
    /// `EAGAIN` stay pending and are retried once the task's events are read.
    fn copy_span(&mut self, i: usize, base: u64, start: u64, end: u64) -> Result<()> {
        let off = usize::try_from(start - base).unwrap_or(0);
        let len = usize::try_from(end - start).unwrap_or(0);
        let data = &self.buf[off..off + len];
        let zero = is_zero(data);
        let fd = &self.tasks[i].uffd;
        let r = if zero {
            uffd::zeropage(fd, start, end - start)
        } else {
            uffd::copy(fd, start, data)
        }
        .map_err(|e| lazy_io("copy", e))?;
        self.settle(i, base, start, end, zero, r)
    }

    /// Acts on the kernel's answer to a copy of `[start, end)` of task `i` (bytes in
    /// `self.buf` from `base`).
    fn settle(
        &mut self,
        i: usize,
        base: u64,
        start: u64,
        end: u64,
        zero: bool,
        r: Copied,
    ) -> Result<()> {
        tracing::trace!(task = i, start, end, zero, ?r, "copy");
        match r {
            Copied::Done => {
                self.count(zero, end - start);
                self.tasks[i].take(start, end);
            }
            Copied::Dead => self.tasks[i].pending.clear(),
            _ if end - start > PAGE => {
                let mid = start + (end - start) / PAGE / 2 * PAGE;
                self.copy_span(i, base, start, mid)?;
                self.copy_span(i, base, mid, end)?;
            }
            Copied::Exists | Copied::Gone => self.tasks[i].take(start, end),
            Copied::Again => self.retry.push((i, start)),
        }
        Ok(())
    }

    /// Serves again the faults whose copy the kernel refused with `EAGAIN`.
    fn retry_faults(&mut self) -> Result<()> {
        for (i, page) in std::mem::take(&mut self.retry) {
            if i < self.tasks.len() {
                self.serve_page(i, page)?;
            }
        }
        Ok(())
    }

    fn count(&mut self, zero: bool, n: u64) {
        if zero {
            self.report.zero_bytes += n;
        } else {
            self.report.copied_bytes += n;
        }
    }

    /// One background copy: the next recorded working-set page still pending, else the first
    /// pending range of the first task with any.
    fn fill_some(&mut self) -> Result<()> {
        while self.fill_cursor < self.fill_order.len() {
            let (obj, page) = self.fill_order[self.fill_cursor].clone();
            self.fill_cursor += 1;
            if let Some(i) = self.tasks.iter().position(|t| t.object == obj) {
                if let Some((s, e)) = self.tasks[i].range_of(page) {
                    let w = self.opts.fault_window;
                    let start = (page / w * w).max(s);
                    let end = (page / w * w + w).min(e);
                    return self.copy_range(i, start, end);
                }
            }
        }
        let Some(i) = self.tasks.iter().position(|t| !t.pending.is_empty()) else {
            return Ok(());
        };
        let (&s, &e) = self.tasks[i].pending.iter().next().unwrap_or((&0, &0));
        // A fault waits for the copy in progress: while the tasks are faulting (their first
        // request after a restore, say), copy a fault's window at a time, not a fill window.
        let faulting = self
            .last_fault
            .is_some_and(|t| t.elapsed() < FAULTING_GRACE);
        let window = if faulting {
            self.opts.fault_window
        } else {
            self.opts.fill_window
        };
        let end = e.min(s + window);
        self.copy_range(i, s, end)
    }
}

struct Ready {
    conn: bool,
    tasks: Vec<usize>,
}

/// Receives the one byte carrying a task's userfaultfd.
fn recv_fd(sock: RawFd) -> Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| lazy_io("receive userfaultfd", e.into()))?;
    for c in msg
        .cmsgs()
        .map_err(|e| lazy_io("receive userfaultfd", e.into()))?
    {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: SCM_RIGHTS installed `fd` in this process; we take ownership.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                // The server polls: the fd must not block reads.
                nix::fcntl::fcntl(
                    owned.as_raw_fd(),
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                )
                .map_err(|e| lazy_io("fcntl", e.into()))?;
                return Ok(owned);
            }
        }
    }
    Err(lazy_err("CRIU sent a task without its userfaultfd".into()))
}

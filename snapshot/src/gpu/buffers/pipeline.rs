//! The plumbing of the device-buffer pipelines: how buffers are cut into pieces, the pool of
//! staging slots that bounds what is in flight, the first failure that stops every stage, and
//! the busy time of each stage. Nothing here knows CUDA or the store.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::store::manifest::PAGE_SIZE;

/// One piece of one buffer: what one staging slot carries through the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Piece {
    /// Index of the buffer.
    pub buffer: usize,
    /// Offset in the buffer.
    pub offset: u64,
    /// Bytes of the buffer in this piece.
    pub len: usize,
}

impl Piece {
    /// The length rounded up to whole pages: the last piece of a buffer whose length is not a
    /// multiple of the page size is stored zero padded.
    pub fn padded(&self) -> usize {
        let page = usize::try_from(PAGE_SIZE).unwrap_or(4096);
        self.len.div_ceil(page) * page
    }
}

/// Cuts buffers of the given lengths into pieces of at most `slot` bytes, buffer by buffer.
pub(super) fn pieces(lens: &[u64], slot: usize) -> Vec<Piece> {
    let mut out = Vec::new();
    let step = slot as u64;
    for (buffer, &len) in lens.iter().enumerate() {
        let mut offset = 0;
        while offset < len {
            let n = step.min(len - offset);
            out.push(Piece {
                buffer,
                offset,
                len: usize::try_from(n).unwrap_or(slot),
            });
            offset += n;
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A stage that panicked poisons nothing the others rely on: the values are plain data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fixed set of staging slots. `take` blocks until one is free, or returns `None` once the
/// pool is closed (a stage failed, or the work is done), so no stage waits forever.
pub(super) struct Pool<T> {
    state: Mutex<(Vec<T>, bool)>,
    freed: Condvar,
}

impl<T> Pool<T> {
    pub fn new(items: Vec<T>) -> Pool<T> {
        Pool {
            state: Mutex::new((items, false)),
            freed: Condvar::new(),
        }
    }

    pub fn take(&self) -> Option<T> {
        let mut st = lock(&self.state);
        loop {
            if st.1 {
                return None;
            }
            if let Some(item) = st.0.pop() {
                return Some(item);
            }
            st = self.freed.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    pub fn put(&self, item: T) {
        lock(&self.state).0.push(item);
        self.freed.notify_one();
    }

    pub fn close(&self) {
        lock(&self.state).1 = true;
        self.freed.notify_all();
    }
}

/// The first error of any stage; later ones are consequences of stopping and are dropped.
pub(super) struct Failure<E>(Mutex<Option<E>>);

impl<E> Failure<E> {
    pub fn new() -> Failure<E> {
        Failure(Mutex::new(None))
    }

    pub fn set(&self, e: E) {
        lock(&self.0).get_or_insert(e);
    }

    pub fn take(self) -> Option<E> {
        self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

/// When a stage was busy: the intervals of its work, from any number of threads.
#[derive(Default)]
pub(super) struct Spans(Mutex<Vec<(Instant, Instant)>>);

impl Spans {
    /// Runs `f`, recording the time it took.
    pub fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = f();
        lock(&self.0).push((start, Instant::now()));
        r
    }

    /// The length of the union of the intervals: the time at least one thread of the stage
    /// was busy.
    pub fn busy(self) -> Duration {
        let mut v = self.0.into_inner().unwrap_or_else(PoisonError::into_inner);
        v.sort_unstable();
        let mut total = Duration::ZERO;
        let mut current: Option<(Instant, Instant)> = None;
        for (s, e) in v {
            match current {
                Some((cs, ce)) if s <= ce => current = Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    total += ce - cs;
                    current = Some((s, e));
                }
                None => current = Some((s, e)),
            }
        }
        if let Some((cs, ce)) = current {
            total += ce - cs;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn buffers_are_cut_into_slot_sized_pieces() {
        let p = pieces(&[10_000, 8192, 1], 4096);
        let got: Vec<(usize, u64, usize, usize)> = p
            .iter()
            .map(|p| (p.buffer, p.offset, p.len, p.padded()))
            .collect();
        assert_eq!(
            got,
            [
                (0, 0, 4096, 4096),
                (0, 4096, 4096, 4096),
                (0, 8192, 1808, 4096),
                (1, 0, 4096, 4096),
                (1, 4096, 4096, 4096),
                (2, 0, 1, 4096),
            ]
        );
        assert!(pieces(&[], 4096).is_empty());
    }

    #[test]
    fn a_closed_pool_wakes_its_waiters() {
        let pool = Arc::new(Pool::new(vec![1u8]));
        assert_eq!(pool.take(), Some(1));
        let waiter = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || pool.take())
        };
        std::thread::sleep(Duration::from_millis(20));
        pool.close();
        assert_eq!(waiter.join().unwrap(), None);
    }

    #[test]
    fn the_first_failure_is_kept() {
        let f = Failure::new();
        f.set("first");
        f.set("second");
        assert_eq!(f.take(), Some("first"));
    }

    #[test]
    fn overlapping_spans_count_once() {
        let s = Spans::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        lock(&s.0).extend([
            (t0, t0 + ms(10)),
            (t0 + ms(5), t0 + ms(15)),
            (t0 + ms(20), t0 + ms(30)),
        ]);
        assert_eq!(s.busy(), ms(25));
        assert_eq!(Spans::default().busy(), Duration::ZERO);
    }
}

//! Gives back the memory a task request leaves behind once it is answered, so that an idle
//! shim (what most shims are, most of the time) keeps no more than it needs resident.
//!
//! Two things stay resident after a request otherwise: the deepest pages of the handler
//! thread's stack (a container's Create takes a handler ~64 KiB down, the deepest page inside
//! serde_json, and ttrpc keeps its handler threads for the life of the connection), and free
//! chunks inside malloc's heap. glibc gives back the first only when a thread exits and the
//! second only at the heap's top. What this module does not own: which threads exist (ttrpc's
//! pool, the shim's own threads).

use std::cell::Cell;

use ttrpc::{MethodHandler, Request, TtrpcContext};

/// A task method that gives back memory after each request it handled.
pub struct Trimmed(pub Box<dyn MethodHandler + Send + Sync>);

impl MethodHandler for Trimmed {
    fn handler(&self, ctx: TtrpcContext, req: Request) -> ttrpc::Result<()> {
        // The handler has sent its response to ttrpc's writer thread before it returns: the
        // client does not wait for what follows.
        let r = self.0.handler(ctx, req);
        after_request();
        r
    }
}

/// Stack kept below the caller's frame: the calls made from here (madvise's libc wrapper)
/// and the x86-64 red zone fit many times over.
const STACK_MARGIN: usize = 8 * 1024;

thread_local! {
    /// The lowest usable address of this thread's stack (0: not looked up yet, or unknown).
    static STACK_LOW: Cell<usize> = const { Cell::new(0) };
}

/// Returns free heap memory and the unused part of this thread's stack to the kernel.
pub fn after_request() {
    // SAFETY: malloc_trim only walks malloc's own free lists, under its lock.
    unsafe { libc::malloc_trim(0) };
    trim_stack();
}

/// `madvise(MADV_DONTNEED)` on this thread's stack from its lowest page up to a margin below
/// the current frame: what glibc does for a thread that exits. The pages read as zeros if the
/// thread grows into them again.
fn trim_stack() {
    let low = STACK_LOW.with(|l| {
        if l.get() == 0 {
            l.set(stack_low().unwrap_or(usize::MAX));
        }
        l.get()
    });
    let here = 0u8;
    let sp = std::ptr::addr_of!(here) as usize;
    let page = page_size();
    let start = low.next_multiple_of(page);
    let end = sp.saturating_sub(STACK_MARGIN) & !(page - 1);
    if low == usize::MAX || end <= start {
        return;
    }
    // SAFETY: [start, end) lies inside this thread's stack mapping (between its lowest usable
    // address and a margin below the live frames), so nothing in it is in use: the stack grows
    // down and every frame that is live now sits above `sp`. MADV_DONTNEED on private
    // anonymous memory only drops those pages; touching them again faults in zeroed pages.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
}

/// The lowest usable address of the calling thread's stack (above its guard), from
/// `pthread_getattr_np`.
fn stack_low() -> Option<usize> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_getattr_np initialises `attr` for the calling thread when it returns 0.
    if unsafe { libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) } != 0 {
        return None;
    }
    let mut addr: *mut libc::c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: `attr` was initialised above; `addr` and `size` are valid out-pointers.
    let got = unsafe { libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) };
    // SAFETY: `attr` was initialised by pthread_getattr_np and is destroyed once.
    unsafe { libc::pthread_attr_destroy(attr.as_mut_ptr()) };
    (got == 0 && !addr.is_null()).then_some(addr as usize)
}

fn page_size() -> usize {
    // SAFETY: sysconf with a constant name has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n)
        .ok()
        .filter(|n| n.is_power_of_two())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Touches `depth` bytes of stack below the caller.
    #[inline(never)]
    fn deep(depth: usize) -> u8 {
        let mut buf = vec![0u8; 0];
        let mut frame = [0u8; 4096];
        std::hint::black_box(&mut frame);
        if depth > frame.len() {
            buf.push(deep(depth - frame.len()));
        }
        frame[0].wrapping_add(buf.first().copied().unwrap_or(0))
    }

    fn resident_kib_of_stack() -> u64 {
        let sp = {
            let here = 0u8;
            std::ptr::addr_of!(here) as usize
        };
        let smaps = std::fs::read_to_string("/proc/thread-self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        inside = a <= sp && sp < b;
                        continue;
                    }
                }
            }
            if inside {
                if let Some(v) = line.strip_prefix("Rss:") {
                    return v.trim().trim_end_matches(" kB").trim().parse().unwrap();
                }
            }
        }
        panic!("no mapping holds the stack pointer {sp:#x}");
    }

    #[test]
    fn a_deep_stack_is_given_back_and_usable_again() {
        std::thread::spawn(|| {
            deep(256 * 1024);
            let before = resident_kib_of_stack();
            assert!(before >= 256, "the stack had {before} KiB resident");
            trim_stack();
            let after = resident_kib_of_stack();
            assert!(
                after < 64,
                "{before} KiB resident before the trim, {after} after"
            );
            // Pages given back read as zeros and can be used again.
            deep(256 * 1024);
            trim_stack();
        })
        .join()
        .unwrap();
    }
}

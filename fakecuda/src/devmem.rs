//! "Device" memory of the CUDA process: pages of one memfd (`fakecuda-dev`), each allocation a
//! `MAP_SHARED` mapping of its own page-aligned range of it. A device pointer is the mapping's
//! address, so copies are plain `memcpy`s.
//!
//! Keeping device memory apart from the process's other memory is what makes a checkpoint
//! visible: the restore thread ([`crate::worker`]) copies it into host memory and scribbles
//! over it (the GPU released), and a restore writes it back. A process that reads its buffers
//! after a checkpoint without a restore sees the scribble, so tests can tell a round trip that
//! really went through restore. A memfd (not a file in a directory) travels with the process
//! through CRIU: its contents are dumped and restored with it.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;

use crate::result::{self, CUresult};

/// The byte a checkpoint leaves in released device memory.
pub const RELEASED_BYTE: u8 = 0xDB;

#[derive(Debug, Clone, Copy)]
struct Alloc {
    len: usize,
    map_len: usize,
    /// Where its pages are in the file.
    offset: libc::off_t,
}

/// The device memory of this process.
#[derive(Debug)]
pub struct DevMem {
    file: File,
    end: u64,
    allocs: BTreeMap<u64, Alloc>,
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(4096)
}

impl DevMem {
    /// Device memory in `file` (empty: the device memfd of [`crate::worker::register`]).
    pub fn new(file: File) -> DevMem {
        DevMem {
            file,
            end: 0,
            allocs: BTreeMap::new(),
        }
    }

    /// Allocates `size` bytes; the address is the device pointer.
    pub fn alloc(&mut self, size: usize) -> Result<u64, CUresult> {
        if size == 0 {
            return Err(result::CUDA_ERROR_INVALID_VALUE);
        }
        let page = page_size();
        let map_len = size
            .checked_next_multiple_of(page)
            .ok_or(result::CUDA_ERROR_OUT_OF_MEMORY)?;
        let offset = self.end;
        let end = offset
            .checked_add(u64::try_from(map_len).map_err(|_| result::CUDA_ERROR_OUT_OF_MEMORY)?)
            .ok_or(result::CUDA_ERROR_OUT_OF_MEMORY)?;
        self.file
            .set_len(end)
            .map_err(|_| result::CUDA_ERROR_OUT_OF_MEMORY)?;
        let off = libc::off_t::try_from(offset).map_err(|_| result::CUDA_ERROR_OUT_OF_MEMORY)?;
        // SAFETY: a fresh shared mapping of a range of our own file that set_len just made
        // exist; the kernel picks the address, so nothing existing is replaced.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                off,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(result::CUDA_ERROR_OUT_OF_MEMORY);
        }
        self.end = end;
        let dptr = addr as u64;
        self.allocs.insert(
            dptr,
            Alloc {
                len: size,
                map_len,
                offset: off,
            },
        );
        Ok(dptr)
    }

    /// Frees an allocation made by [`DevMem::alloc`]. Its file range is not reused, but its
    /// pages are given back (a hole punched), so freed device memory costs no host memory.
    pub fn free(&mut self, dptr: u64) -> Result<(), CUresult> {
        let a = self
            .allocs
            .remove(&dptr)
            .ok_or(result::CUDA_ERROR_INVALID_VALUE)?;
        // SAFETY: (dptr, map_len) is exactly a mapping made by `alloc` and not yet unmapped
        // (it was still in `allocs`).
        unsafe { libc::munmap(dptr as *mut libc::c_void, a.map_len) };
        let len = libc::off_t::try_from(a.map_len).unwrap_or(0);
        // SAFETY: fallocate on our own file descriptor; the range is no longer mapped. A
        // failure only leaves the pages allocated.
        unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                a.offset,
                len,
            )
        };
        Ok(())
    }

    /// Whether `[dptr, dptr + len)` lies inside one live allocation.
    pub fn contains(&self, dptr: u64, len: usize) -> bool {
        let Some((&start, a)) = self.allocs.range(..=dptr).next_back() else {
            return false;
        };
        let (Ok(len), Ok(alen)) = (u64::try_from(len), u64::try_from(a.len)) else {
            return false;
        };
        dptr.checked_add(len)
            .is_some_and(|end| end <= start.saturating_add(alen))
    }

    /// (live allocations, their mapped bytes).
    pub fn stats(&self) -> (u64, u64) {
        let bytes = self.allocs.values().map(|a| a.map_len as u64).sum();
        (self.allocs.len() as u64, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_file_pages_and_bounds_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dev");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let mut m = DevMem::new(file);
        assert_eq!(m.alloc(0), Err(result::CUDA_ERROR_INVALID_VALUE));
        let a = m.alloc(100).unwrap();
        let b = m.alloc(5000).unwrap();
        assert!(m.contains(a, 100));
        assert!(!m.contains(a, 101));
        assert!(m.contains(b + 4999, 1));
        assert!(!m.contains(b + 5000, 1));
        // SAFETY: `b` maps 5000 writable bytes.
        unsafe { std::ptr::write_bytes(b as *mut u8, 0x5a, 5000) };
        let page = page_size();
        let file = std::fs::read(&path).unwrap();
        assert_eq!(file.len(), page + 5000usize.next_multiple_of(page));
        assert_eq!(file[page], 0x5a);
        assert_eq!(file[page + 4999], 0x5a);
        assert_eq!(m.stats().0, 2);
        m.free(a).unwrap();
        assert!(!m.contains(a, 1));
        assert_eq!(m.free(a), Err(result::CUDA_ERROR_INVALID_VALUE));
        m.free(b).unwrap();
    }
}

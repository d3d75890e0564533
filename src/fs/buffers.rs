//! Per-thread pools of I/O buffers. A 1 MiB request needs a ciphertext and a plaintext
//! buffer; allocating them fresh costs a page fault per 4 KiB (large allocations are new
//! mappings, and the daemon locks its memory), which measured as more than half of the
//! daemon's time on cold sequential reads. Buffers go back to their thread's pool when
//! dropped; a pool keeps a few, each at most `KEEP_MAX` bytes, so memory stays bounded by
//! threads x `POOL_MAX` x `KEEP_MAX`.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers kept per thread.
const POOL_MAX: usize = 4;
/// Largest buffer kept (a 1 MiB write's ciphertext, with its chunk overhead, fits).
const KEEP_MAX: usize = 2 << 20;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A zeroed buffer of `len` bytes from this thread's pool.
pub fn zeroed(len: usize) -> Buffer {
    let mut v = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    v.clear();
    v.resize(len, 0);
    Buffer(v)
}

/// A byte buffer that returns to its thread's pool when dropped.
pub struct Buffer(Vec<u8>);

impl Buffer {
    /// Keeps `range` of the contents (moving it to the front).
    pub fn keep(&mut self, range: std::ops::Range<usize>) {
        self.0.truncate(range.end);
        self.0.drain(..range.start);
    }
}

impl Deref for Buffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() <= KEEP_MAX {
            // try_with: a buffer dropped while its thread exits is simply freed.
            let _ = POOL.try_with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(v);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_zeroed_and_reused() {
        let mut a = zeroed(1000);
        a.fill(7);
        let ptr = a.as_ptr();
        drop(a);
        let b = zeroed(900);
        assert_eq!(b.as_ptr(), ptr, "the same allocation is reused");
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(b.len(), 900);
        let mut c = zeroed(10);
        c.copy_from_slice(b"0123456789");
        c.keep(2..5);
        assert_eq!(&c[..], b"234");
    }
}

//! Scratch buffers kept between calls: a small pool per thread, so that a
//! kernel called again with the same shapes (every step of training, every
//! image of inference) reuses its buffers instead of asking the allocator
//! for fresh, zeroed pages each time.
//!
//! A buffer comes back with its old contents (initialized values, never
//! uninitialized memory): use it for data that is written before it is read.

use std::any::Any;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers a thread keeps at most; past that the smallest is dropped.
const KEEP: usize = 32;

thread_local! {
    /// Free buffers of this thread, each a `Vec<T>` for some `T`.
    static POOL: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` elements from this thread's pool (or new, zeroed, when
/// none of type `T` is large enough), handed back to the pool on drop.
/// The contents are whatever was there: write before reading.
pub struct Scratch<T: Copy + Default + 'static> {
    /// Every element initialized, possibly more than `len` of them: a
    /// buffer keeps the length it grew to, so that a later, longer request
    /// does not zero again what earlier ones already initialized (refilling
    /// the difference on every `take` was 3–5% of a train step in `memset`).
    buf: Vec<T>,
    /// Elements handed out.
    len: usize,
}

impl<T: Copy + Default + 'static> Scratch<T> {
    /// `len` elements of unspecified (but initialized) value.
    pub fn take(len: usize) -> Self {
        let found = POOL.with(|p| {
            let mut pool = p.borrow_mut();
            // The smallest buffer that is large enough, so big ones stay for big requests.
            let best = pool
                .iter()
                .enumerate()
                .filter_map(|(i, b)| b.downcast_ref::<Vec<T>>().map(|v| (i, v.capacity())))
                .filter(|&(_, cap)| cap >= len)
                .min_by_key(|&(_, cap)| cap)
                .map(|(i, _)| i);
            best.map(|i| pool.swap_remove(i))
        });
        let mut buf = found.and_then(|b| b.downcast::<Vec<T>>().ok()).map_or_else(Vec::new, |b| *b);
        if buf.len() < len {
            // Only what was never initialized: a first use, or a larger one.
            buf.resize(len, T::default());
        }
        Scratch { buf, len }
    }

    /// The buffer itself, for code that resizes it (it goes back to the pool
    /// at any size). It may be longer than asked for: grow it, never rely on
    /// its length being the `len` of [`Scratch::take`].
    pub fn vec_mut(&mut self) -> &mut Vec<T> {
        &mut self.buf
    }

    /// `len` zeros (from the pool when possible).
    pub fn zeroed(len: usize) -> Self {
        let mut s = Self::take(len);
        s.buf[..len].fill(T::default());
        s
    }
}

impl<T: Copy + Default + 'static> Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

impl<T: Copy + Default + 'static> DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[..self.len]
    }
}

impl<T: Copy + Default + 'static> Drop for Scratch<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() == 0 {
            return;
        }
        // `try_with`: a thread being torn down drops its buffers instead.
        let _ = POOL.try_with(|p| {
            let mut pool = p.borrow_mut();
            pool.push(Box::new(buf));
            if pool.len() > KEEP {
                let smallest = pool
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, b)| capacity_bytes(b.as_ref()))
                    .map(|(i, _)| i);
                if let Some(i) = smallest {
                    pool.swap_remove(i);
                }
            }
        });
    }
}

/// The capacity of a pooled `Vec<f32>` or `Vec<f64>` in bytes (others count as 0).
fn capacity_bytes(b: &dyn Any) -> usize {
    b.downcast_ref::<Vec<f32>>()
        .map(|v| v.capacity() * 4)
        .or_else(|| b.downcast_ref::<Vec<f64>>().map(|v| v.capacity() * 8))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized_as_asked() {
        let ptr = {
            let mut a = Scratch::<f32>::zeroed(1000);
            assert!(a.iter().all(|&v| v == 0.0));
            a[3] = 7.0;
            a.as_ptr()
        };
        // The same allocation comes back, with its contents, for a smaller request.
        let b = Scratch::<f32>::take(500);
        assert_eq!((b.as_ptr(), b.len(), b[3]), (ptr, 500, 7.0));
        // Zeroed means zeroed, and another type gets a buffer of its own.
        let c = Scratch::<f64>::zeroed(10);
        assert!(c.iter().all(|&v| v == 0.0));
        drop(b);
        let d = Scratch::<f32>::zeroed(2000);
        assert_eq!(d.len(), 2000);
        assert!(d.iter().all(|&v| v == 0.0));
    }

    /// A buffer lent short and then long again is not zeroed again: what
    /// was written past the short request is still there (no `memset` of
    /// memory that is already initialized).
    #[test]
    fn a_longer_request_does_not_zero_again() {
        let ptr = {
            let mut a = Scratch::<f32>::take(4096);
            a[4000] = 5.0;
            a.as_ptr()
        };
        drop(Scratch::<f32>::take(100));
        let b = Scratch::<f32>::take(4096);
        assert_eq!((b.as_ptr(), b.len(), b[4000]), (ptr, 4096, 5.0));
        let mut v = Scratch::<f32>::take(10);
        assert_eq!(v.len(), 10);
        assert!(v.vec_mut().len() >= 10);
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_buffers() {
        let many: Vec<_> = (1..=3 * KEEP).map(|i| Scratch::<f32>::take(i * 10)).collect();
        drop(many);
        POOL.with(|p| assert!(p.borrow().len() <= KEEP));
    }
}

//! Collective communication for data-parallel training: the [`Collective`]
//! trait (rank, size, sum across ranks, broadcast from rank 0), the
//! deterministic ring sum every implementation shares ([`ring_sum`], with its
//! naive twin [`ring_sum_reference`]), and [`LocalGroup`], a group of threads
//! in one process for tests and examples. The MPI implementation lives in
//! cnn-train behind its `distributed` feature; layers (BatchNorm's synced
//! statistics) only see this trait, so no crate below cnn-train knows MPI.
//!
//! # Why a ring of our own
//!
//! `MPI_Allreduce` may add the ranks' values in whatever order its algorithm
//! and the arrival of messages give; the MPI standard only recommends
//! repeatable results. [`ring_sum`] fixes the order: segment `k` of the
//! buffer is summed along the ring starting at rank `k`,
//! `((x_k + x_{k+1}) + x_{k+2}) + … + x_{k−1}` (ranks mod N), so a given
//! number of ranks always gives the same bits, on every rank. It is the
//! bandwidth-optimal algorithm too (reduce-scatter, then all-gather: each rank
//! sends 2·(N−1)/N of the buffer), the one docs/distributed.md models.

use std::fmt;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use crate::{Error, Float, Result};

/// A group of processes (ranks `0..size`) training one model together.
///
/// Every method is collective: every rank of the group must call it, in the
/// same order, with buffers of the same length, or the group waits forever
/// (MPI's rule). Implementations sum in a fixed order ([`ring_sum`]), so the
/// results are the same bits on every rank and in every run with this many ranks.
pub trait Collective: Send + Sync + fmt::Debug {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;

    /// Number of ranks in the group.
    fn size(&self) -> usize;

    /// Replaces `buf` on every rank by the element-wise sum over all ranks.
    ///
    /// # Errors
    /// [`Error::Distributed`] when the transport fails.
    fn sum_f32(&self, buf: &mut [f32]) -> Result<()>;

    /// As [`Collective::sum_f32`], in f64.
    ///
    /// # Errors
    /// As [`Collective::sum_f32`].
    fn sum_f64(&self, buf: &mut [f64]) -> Result<()>;

    /// Replaces `bytes` on every rank by rank 0's (any length).
    ///
    /// # Errors
    /// [`Error::Distributed`] when the transport fails.
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()>;
}

/// The group of one: a process training alone. Every collective is the
/// identity, so code written for a group runs unchanged (and bit for bit as
/// before) in a single process; `Trainer` runs this way when given no group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }

    fn sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }

    fn broadcast_bytes(&self, _bytes: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
}

/// [`Collective::sum_f32`] or [`Collective::sum_f64`] by element type (f64
/// buffers pass through a copy: they are the gradient checks', not the hot path's).
///
/// # Errors
/// As [`Collective::sum_f32`].
pub fn sum_across<T: Float>(group: &dyn Collective, buf: &mut [T]) -> Result<()> {
    if let Some(f) = T::as_f32_mut(buf) {
        return group.sum_f32(f);
    }
    let mut wide: Vec<f64> = buf.iter().map(|v| v.as_f64()).collect();
    group.sum_f64(&mut wide)?;
    buf.iter_mut().zip(wide).for_each(|(b, w)| *b = T::of(w));
    Ok(())
}

/// Rank 0's `Ok(bytes)` on every rank, or its error as an [`Error::Distributed`]
/// on every rank: how one rank reads a file for all (a checkpoint) without
/// leaving the others waiting when the read fails.
///
/// # Errors
/// The error of rank 0's `read` (on rank 0 itself, that error unchanged);
/// a transport failure.
pub fn broadcast_result(
    group: &dyn Collective,
    read: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    let mine = if group.rank() == 0 { Some(read()) } else { None };
    let mut wire = match &mine {
        Some(Ok(bytes)) => [&[1u8][..], bytes].concat(),
        Some(Err(e)) => [&[0u8][..], e.to_string().as_bytes()].concat(),
        None => Vec::new(),
    };
    group.broadcast_bytes(&mut wire)?;
    if let Some(result) = mine {
        return result;
    }
    match wire.split_first() {
        Some((1, bytes)) => Ok(bytes.to_vec()),
        Some((_, msg)) => {
            Err(Error::distributed(format!("rank 0 failed: {}", String::from_utf8_lossy(msg))))
        }
        None => Err(Error::distributed("rank 0 broadcast nothing")),
    }
}

/// Sends a slice to the next rank of a ring and fills another from the previous one.
pub type Exchange<'a, T> = dyn FnMut(&[T], &mut [T]) -> Result<()> + 'a;

/// The bounds of segment `k` of `len` values cut into `size` segments.
fn segment(len: usize, size: usize, k: usize) -> std::ops::Range<usize> {
    k * len / size..(k + 1) * len / size
}

/// The deterministic ring all-reduce (sum) on rank `rank` of `size`:
/// reduce-scatter then all-gather, `2·(size − 1)` exchanges of about
/// `len/size` values. `exchange(send, recv)` sends `send` to rank
/// `rank + 1` and fills `recv` from rank `rank − 1` (mod `size`); every rank
/// calls it the same number of times with matching lengths.
///
/// Segment `k` is summed in the order `x_k, x_{k+1}, …, x_{k−1}`; every rank
/// ends with the same bits ([`ring_sum_reference`] gives them from all inputs).
///
/// # Errors
/// Whatever `exchange` returns.
pub fn ring_sum<T: Float>(
    buf: &mut [T],
    rank: usize,
    size: usize,
    exchange: &mut Exchange<'_, T>,
) -> Result<()> {
    if size <= 1 {
        return Ok(());
    }
    let len = buf.len();
    let at = |k: usize| segment(len, size, k % size);
    let mut incoming = vec![T::zero(); len.div_ceil(size)];
    // Reduce-scatter: after step s, rank r holds segment r − s − 1 summed over
    // ranks r − s − 1 … r; after size − 1 steps, segment r + 1 complete.
    for s in 0..size - 1 {
        let (send, recv) = (at(rank + size - s), at(rank + 2 * size - s - 1));
        let recv_buf = &mut incoming[..recv.len()];
        exchange(&buf[send], recv_buf)?;
        for (b, &v) in buf[recv].iter_mut().zip(recv_buf.iter()) {
            // The partial sum so far, then this rank's value: the chain's order.
            *b = v + *b;
        }
    }
    // All-gather: pass the complete segments around the ring.
    for s in 0..size - 1 {
        let (send, recv) = (at(rank + 1 + size - s), at(rank + size - s));
        let recv_buf = &mut incoming[..recv.len()];
        exchange(&buf[send], recv_buf)?;
        buf[recv].copy_from_slice(recv_buf);
    }
    Ok(())
}

/// The naive twin of [`ring_sum`]: the sum of `inputs` (one buffer per rank)
/// with each segment added in the ring's order, computed in one place.
///
/// # Panics
/// When the buffers differ in length (a test helper's contract).
pub fn ring_sum_reference<T: Float>(inputs: &[Vec<T>]) -> Vec<T> {
    let size = inputs.len();
    let len = inputs.first().map_or(0, Vec::len);
    assert!(inputs.iter().all(|b| b.len() == len), "ring_sum_reference: unequal lengths");
    let mut out = vec![T::zero(); len];
    for k in 0..size {
        for i in segment(len, size, k) {
            let mut acc = inputs[k][i];
            for j in 1..size {
                acc += inputs[(k + j) % size][i];
            }
            out[i] = acc;
        }
    }
    out
}

/// One rank of a group of threads in one process: the same ring as MPI's
/// ranks run, over channels. For tests of distributed code (synced
/// BatchNorm, the data-parallel trainer) without MPI.
///
/// ```
/// use cnn_tensor::collective::{Collective, LocalGroup};
///
/// let sums: Vec<Vec<f64>> = std::thread::scope(|s| {
///     let handles: Vec<_> = LocalGroup::new(3)
///         .into_iter()
///         .map(|g| s.spawn(move || {
///             let mut buf = vec![g.rank() as f64 + 1.0; 4];
///             g.sum_f64(&mut buf).unwrap();
///             buf
///         }))
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// assert!(sums.iter().all(|b| b == &vec![6.0; 4]));
/// ```
pub struct LocalGroup {
    rank: usize,
    size: usize,
    to_next: Sender<Vec<u8>>,
    from_previous: Mutex<Receiver<Vec<u8>>>,
}

impl fmt::Debug for LocalGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalGroup {{ rank: {}, size: {} }}", self.rank, self.size)
    }
}

impl LocalGroup {
    /// The `size` ranks of a new group (at least one); hand one to each thread.
    pub fn new(size: usize) -> Vec<LocalGroup> {
        let size = size.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..size).map(|_| channel()).unzip();
        receivers
            .into_iter()
            .enumerate()
            .map(|(rank, rx)| LocalGroup {
                rank,
                size,
                // Rank r sends into rank r + 1's channel.
                to_next: senders[(rank + 1) % size].clone(),
                from_previous: Mutex::new(rx),
            })
            .collect()
    }

    fn send(&self, bytes: Vec<u8>) -> Result<()> {
        self.to_next.send(bytes).map_err(|_| {
            Error::distributed(format!("rank {} left the group", (self.rank + 1) % self.size))
        })
    }

    fn recv(&self) -> Result<Vec<u8>> {
        let rx = self.from_previous.lock().map_err(|_| Error::distributed("poisoned"))?;
        rx.recv().map_err(|_| {
            Error::distributed(format!(
                "rank {} left the group",
                (self.rank + self.size - 1) % self.size
            ))
        })
    }

    fn ring<T: Float>(&self, buf: &mut [T]) -> Result<()> {
        ring_sum(buf, self.rank, self.size, &mut |send, recv| {
            // f32 → f64 → f32 is exact, so one wire format serves both.
            self.send(send.iter().flat_map(|v| v.as_f64().to_le_bytes()).collect())?;
            let bytes = self.recv()?;
            if bytes.len() != 8 * recv.len() {
                return Err(Error::distributed(format!(
                    "expected {} values, got {}",
                    recv.len(),
                    bytes.len() / 8
                )));
            }
            for (r, b) in recv.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut le = [0u8; 8];
                le.copy_from_slice(b);
                *r = T::of(f64::from_le_bytes(le));
            }
            Ok(())
        })
    }
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.ring(buf)
    }

    fn sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.ring(buf)
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        // Along the ring: rank 0 sends, every other rank receives and passes it on.
        if self.rank != 0 {
            *bytes = self.recv()?;
        }
        if self.rank + 1 < self.size {
            self.send(bytes.clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<R: Send>(size: usize, f: impl Fn(LocalGroup) -> R + Sync) -> Vec<R> {
        std::thread::scope(|s| {
            let handles: Vec<_> =
                LocalGroup::new(size).into_iter().map(|g| s.spawn(|| f(g))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn inputs(size: usize, len: usize) -> Vec<Vec<f32>> {
        // Values of very different magnitudes, so the order of addition shows in the bits.
        (0..size)
            .map(|r| {
                (0..len)
                    .map(|i| ((r * 31 + i * 7) % 13) as f32 * 10f32.powi((r + i) as i32 % 9 - 4))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_ring_gives_its_reference_bits_on_every_rank() {
        for size in 1..=5 {
            for len in [0, 1, 2, 3, 7, 64, 101] {
                let data = inputs(size, len);
                let want = ring_sum_reference(&data);
                let got = run(size, |g| {
                    let mut buf = data[g.rank()].clone();
                    g.sum_f32(&mut buf).unwrap();
                    buf
                });
                for (r, buf) in got.iter().enumerate() {
                    let same = buf.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "size {size}, len {len}, rank {r}: {buf:?} vs {want:?}");
                }
                // And the reference is a sum.
                for i in 0..len {
                    let plain: f64 = data.iter().map(|b| f64::from(b[i])).sum();
                    assert!((f64::from(want[i]) - plain).abs() <= 1e-5 * plain.abs().max(1.0));
                }
            }
        }
    }

    #[test]
    fn broadcast_and_broadcast_result_reach_every_rank() {
        let got = run(3, |g| {
            let mut b = if g.rank() == 0 { b"rank zero".to_vec() } else { Vec::new() };
            g.broadcast_bytes(&mut b).unwrap();
            let ok = broadcast_result(&g, || Ok(vec![7, 8])).unwrap();
            let err = broadcast_result(&g, || Err(Error::config("read", "no such file")))
                .unwrap_err()
                .to_string();
            (b, ok, err)
        });
        for (r, (b, ok, err)) in got.into_iter().enumerate() {
            assert_eq!(b, b"rank zero");
            assert_eq!(ok, vec![7, 8]);
            let want = if r == 0 {
                "read: invalid setting: no such file".to_string()
            } else {
                "distributed: rank 0 failed: read: invalid setting: no such file".to_string()
            };
            assert_eq!(err, want);
        }
    }

    #[test]
    fn sum_across_widens_f64_without_loss() {
        let got = run(2, |g| {
            let mut buf = vec![0.1f64 + g.rank() as f64, 1e-300];
            sum_across(&g, &mut buf).unwrap();
            buf
        });
        assert_eq!(got[0], got[1]);
        assert_eq!(got[0], ring_sum_reference(&[vec![0.1, 1e-300], vec![1.1, 1e-300]]));
    }

    #[test]
    fn a_rank_that_left_is_an_error_not_a_hang() {
        let mut group = LocalGroup::new(2);
        drop(group.pop());
        let e = group[0].sum_f64(&mut [1.0, 2.0]).unwrap_err();
        assert_eq!(e.to_string(), "distributed: rank 1 left the group");
    }
}

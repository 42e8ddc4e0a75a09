//! [`Mpi`]: the ranks of `mpirun` (or `srun`) as a [`Collective`], through
//! the `mpi` crate (rsmpi) on the system's MPI library. Feature `distributed`.

use std::fmt;
use std::sync::Arc;
use std::thread::ThreadId;

use cnn_tensor::collective::{ring_sum, Collective};
use cnn_tensor::{Error, Result};
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::Root;

/// The world communicator of an MPI job, initialized by [`Mpi::init`] and
/// finalized when the last handle is dropped.
///
/// MPI is initialized at the `Funneled` threading level: only the thread
/// that called [`Mpi::init`] talks to MPI (the rayon workers compute, the
/// calling thread communicates between the two halves of a step). A call
/// from another thread is an [`Error::Distributed`], not undefined behaviour.
///
/// Sums run [`ring_sum`] over `MPI_Sendrecv` with the neighbours, so they
/// are the same bits on every rank and in every run with this many ranks;
/// broadcasts use `MPI_Bcast`. MPI's default error handler aborts the whole
/// job on a transport error, so no call here returns one from MPI itself.
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_size: usize,
    owner: ThreadId,
    // Last, so that MPI_Finalize runs after the communicator is gone.
    _universe: Universe,
}

// SAFETY: `SimpleCommunicator` holds MPI_COMM_WORLD's handle, which is only
// passed to MPI by the methods below, and every one of them first checks that
// it runs on the thread that initialized MPI (`Funneled`): other threads may
// hold and move the value, never use the handle.
unsafe impl Send for Mpi {}
// SAFETY: as for `Send`: shared references reach MPI only through the owner-thread check.
unsafe impl Sync for Mpi {}

impl fmt::Debug for Mpi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mpi {{ rank: {}, size: {} }}", self.rank, self.size)
    }
}

impl Mpi {
    /// Initializes MPI (once per process) on this thread.
    ///
    /// # Errors
    /// [`Error::Distributed`] when MPI was initialized already or cannot give
    /// the `Funneled` threading level.
    pub fn init() -> Result<Arc<Mpi>> {
        let (universe, level) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| Error::distributed("MPI is initialized already in this process"))?;
        if level < mpi::Threading::Funneled {
            return Err(Error::distributed(format!(
                "the MPI library gives threading level {level:?}, cnn needs Funneled"
            )));
        }
        let world = universe.world();
        let (rank, size) = (usize::try_from(world.rank()), usize::try_from(world.size()));
        let (Ok(rank), Ok(size)) = (rank, size) else {
            return Err(Error::distributed("MPI reported a negative rank or size"));
        };
        // The ranks that share this node's memory (MPI_Comm_split_type).
        let local_size = usize::try_from(world.split_shared(world.rank()).size()).unwrap_or(1);
        Ok(Arc::new(Mpi {
            world,
            rank,
            size,
            local_size,
            owner: std::thread::current().id(),
            _universe: universe,
        }))
    }

    /// How many ranks of the job run on this node (share its memory and cores).
    pub fn ranks_on_this_node(&self) -> usize {
        self.local_size.max(1)
    }

    /// Ends every rank of the job with `code` (`MPI_Abort`): what a rank does
    /// on an error, so that the others do not wait for it forever.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn on_owner(&self) -> Result<()> {
        if std::thread::current().id() != self.owner {
            return Err(Error::distributed(
                "MPI called from another thread than the one that initialized it",
            ));
        }
        Ok(())
    }

    fn sum<T: cnn_tensor::Float + Equivalence>(&self, buf: &mut [T]) -> Result<()> {
        self.on_owner()?;
        let next = self.world.process_at_rank(((self.rank + 1) % self.size) as i32);
        let previous = self.world.process_at_rank(((self.rank + self.size - 1) % self.size) as i32);
        ring_sum(buf, self.rank, self.size, &mut |send, recv| {
            check_count(send.len())?;
            mpi::point_to_point::send_receive_into(send, &next, recv, &previous);
            Ok(())
        })
    }
}

/// MPI counts are `int`s.
fn check_count(n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| {
        Error::distributed(format!("{n} values in one MPI message (at most 2^31 - 1)"))
    })
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.sum(buf)
    }

    fn sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.sum(buf)
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        self.on_owner()?;
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        let len = usize::try_from(len).map_err(|_| Error::distributed("broadcast too large"))?;
        check_count(len)?;
        bytes.resize(len, 0);
        root.broadcast_into(&mut bytes[..]);
        Ok(())
    }
}

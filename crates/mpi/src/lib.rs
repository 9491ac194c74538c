//! `xception-mpi`: the training loop's collective operations
//! ([`xception_train::distributed::Collective`]) over MPI, so that `mpirun -np N xception
//! train` (or `srun`) trains one model with N processes on one machine or many. MPI does
//! the transport, the rendezvous and the launch; this crate adds the order of summation
//! (rank order, so that every rank gets the same bits on every run) and a time limit on
//! every operation that could otherwise wait forever for a rank that hangs.
//!
//! All operations run on the thread that initialised MPI (`MPI_THREAD_FUNNELED`).

use std::time::{Duration, Instant};

use mpi::Threading;
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::request::{Request, Scope, scope};
use mpi::topology::{Communicator, SimpleCommunicator};
use xception_train::distributed::{Collective, CollectiveError};

/// Bytes per broadcast message: MPI counts are 32-bit.
const BROADCAST_CHUNK: usize = 1 << 28;

/// This process among the processes MPI launched together.
pub struct MpiWorld {
    // Finalises MPI when dropped.
    _universe: Universe,
    world: SimpleCommunicator,
    hosts: Vec<String>,
    local_rank: usize,
    timeout: Duration,
}

/// MPI could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `MPI_Init_thread` was already called, or failed.
    #[error("MPI could not be initialised")]
    Init,
    /// The MPI library gives less than `MPI_THREAD_FUNNELED`.
    #[error("the MPI library offers threading level {0:?}, and training needs MPI_THREAD_FUNNELED")]
    Threading(Threading),
}

impl MpiWorld {
    /// Initialises MPI and learns where every rank runs. `timeout` bounds every collective
    /// operation: a rank that waits longer for the others aborts the whole job, naming
    /// itself and the operation.
    pub fn init(timeout: Duration) -> Result<Self, StartError> {
        let (universe, threading) =
            mpi::initialize_with_threading(Threading::Funneled).ok_or(StartError::Init)?;
        if threading < Threading::Funneled {
            return Err(StartError::Threading(threading));
        }
        let world = universe.world();
        let local_rank = usize::try_from(world.split_shared(world.rank()).rank()).unwrap_or(0);
        let host = mpi::environment::processor_name().unwrap_or_else(|_| "?".into());
        let mut this = Self {
            _universe: universe,
            world,
            hosts: Vec::new(),
            local_rank,
            timeout,
        };
        let hosts = this
            .gather(host.as_bytes())
            .map_err(|_| StartError::Init)?
            .into_iter()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect();
        this.hosts = hosts;
        Ok(this)
    }

    /// This process's rank among the processes of its machine (to pick its GPU).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Makes a panic on this process end the whole job (after the usual panic message),
    /// rather than finalise MPI while the other ranks wait for this one.
    pub fn abort_on_panic(&self) {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            SimpleCommunicator::world().abort(101);
        }));
    }

    /// Ends the whole job now (`MPI_Abort`): every process of every machine stops, so no
    /// rank is left waiting for one that failed.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    /// Sums `values` over the ranks with `MPI_Allreduce`, in whatever order the library
    /// chooses: only to compare [`Collective::sum`] with (`xception bench --target allreduce`).
    pub fn sum_with_mpi_allreduce(&self, values: &mut [f32]) {
        let send = values.to_vec();
        scope(|scope| {
            let request = self.world.immediate_all_reduce_into(
                scope,
                &send[..],
                values,
                SystemOperation::sum(),
            );
            self.wait("MPI_Allreduce", request);
        });
    }

    /// Waits for `request`, testing it until it completes; past the time limit, says which
    /// operation on which rank waited too long and aborts the job.
    fn wait<'a, D: ?Sized, S: Scope<'a>>(&self, operation: &str, request: Request<'a, D, S>) {
        let deadline = Instant::now() + self.timeout;
        let mut request = request;
        let mut tests = 0u32;
        loop {
            match request.test() {
                Ok(_) => return,
                Err(pending) => request = pending,
            }
            tests = tests.saturating_add(1);
            if tests > 10_000 {
                // Past a few milliseconds the others are busy (rank 0 writing a checkpoint,
                // a slower device): stop competing for their cores.
                std::thread::sleep(Duration::from_micros(200));
                if Instant::now() > deadline {
                    eprintln!(
                        "error: {}: {operation} waited more than {} s for the other processes; one of them hangs or lost its connection. Aborting the job (resume with --resume auto).",
                        self.describe(self.rank()),
                        self.timeout.as_secs()
                    );
                    self.abort(3);
                }
            } else {
                std::thread::yield_now();
            }
        }
    }

    fn error(&self, operation: &str, reason: String) -> CollectiveError {
        CollectiveError {
            operation: operation.into(),
            place: self.describe(self.rank()),
            reason,
        }
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        usize::try_from(self.world.rank()).unwrap_or(0)
    }

    fn ranks(&self) -> usize {
        usize::try_from(self.world.size()).unwrap_or(1)
    }

    fn describe(&self, rank: usize) -> String {
        match self.hosts.get(rank) {
            Some(host) => format!("rank {rank} on {host}"),
            None => format!("rank {rank}"),
        }
    }

    /// A reduce-scatter by hand, then an all-gather: each rank receives its chunk from every
    /// rank (`MPI_Alltoall`), adds them in rank order, and every rank gathers the sums. The
    /// data moved per rank is `2 (N-1)/N` of the buffer, as a ring all-reduce moves, and the
    /// order of the additions is fixed, which `MPI_Allreduce` does not promise.
    fn sum(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
        let ranks = self.ranks();
        if ranks == 1 || values.is_empty() {
            return Ok(());
        }
        let chunk = values.len().div_ceil(ranks);
        if chunk * ranks > i32::MAX as usize {
            return Err(self.error(
                "sum",
                format!("{} values are too many for one message", values.len()),
            ));
        }
        let mut send = vec![0.0f32; chunk * ranks];
        send[..values.len()].copy_from_slice(values);
        let mut received = vec![0.0f32; chunk * ranks];
        scope(|scope| {
            let request = self
                .world
                .immediate_all_to_all_into(scope, &send[..], &mut received[..]);
            self.wait("the sum of gradients (all-to-all)", request);
        });
        let mut mine = received[..chunk].to_vec();
        for theirs in received.chunks_exact(chunk).skip(1) {
            for (sum, value) in mine.iter_mut().zip(theirs) {
                *sum += value;
            }
        }
        scope(|scope| {
            let request = self
                .world
                .immediate_all_gather_into(scope, &mine[..], &mut send[..]);
            self.wait("the sum of gradients (all-gather)", request);
        });
        values.copy_from_slice(&send[..values.len()]);
        Ok(())
    }

    fn broadcast(&self, bytes: &mut Vec<u8>) -> Result<(), CollectiveError> {
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        scope(|scope| {
            let request = root.immediate_broadcast_into(scope, &mut len);
            self.wait("the broadcast of the start state (length)", request);
        });
        let len = usize::try_from(len).map_err(|e| self.error("broadcast", e.to_string()))?;
        bytes.resize(len, 0);
        for part in bytes.chunks_mut(BROADCAST_CHUNK) {
            scope(|scope| {
                let request = root.immediate_broadcast_into(scope, part);
                self.wait("the broadcast of the start state", request);
            });
        }
        Ok(())
    }

    fn gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        let ranks = self.ranks();
        let len = bytes.len() as u64;
        let mut lens = vec![0u64; ranks];
        scope(|scope| {
            let request = self
                .world
                .immediate_all_gather_into(scope, &len, &mut lens[..]);
            self.wait("a check between the processes (lengths)", request);
        });
        let longest = lens.iter().copied().max().unwrap_or(0) as usize;
        if longest * ranks > i32::MAX as usize {
            return Err(self.error("gather", format!("{longest} bytes are too many")));
        }
        let mut padded = bytes.to_vec();
        padded.resize(longest, 0);
        let mut all = vec![0u8; longest * ranks];
        if longest > 0 {
            scope(|scope| {
                let request =
                    self.world
                        .immediate_all_gather_into(scope, &padded[..], &mut all[..]);
                self.wait("a check between the processes", request);
            });
        }
        Ok(lens
            .iter()
            .enumerate()
            .map(|(rank, len)| all[rank * longest..rank * longest + *len as usize].to_vec())
            .collect())
    }
}

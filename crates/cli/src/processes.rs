//! The processes a `xception train` runs with: alone, or as one rank of a job that `mpirun`
//! or `srun` launched (with the cargo feature `mpi`). A launcher is recognised by the
//! environment it gives its processes; a binary without the feature refuses to run as one of
//! several, rather than train copies that never meet.

use std::time::Duration;

use anyhow::Result;
use xception_train::TrainError;
use xception_train::distributed::{Collective, Solo};

/// Environment variables in which launchers give the number of processes: Open MPI's
/// `mpirun`, MPICH/Hydra and Slurm's PMI, and Slurm's `srun` itself.
const SIZE_VARIABLES: [&str; 4] = [
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "PMIX_SIZE",
    "SLURM_STEP_NUM_TASKS",
];

/// Where launchers give a process's rank among those of its machine.
const LOCAL_RANK_VARIABLES: [&str; 4] = [
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "PMI_LOCAL_RANK",
    "SLURM_LOCALID",
];

/// The processes a launcher started together, by the environment: `(count, variable)`
/// when more than one.
pub fn launched() -> Option<(usize, &'static str)> {
    SIZE_VARIABLES.iter().find_map(|name| {
        let count: usize = std::env::var(name).ok()?.trim().parse().ok()?;
        // Slurm sets the step's task count in a batch script too; only a job step (a number)
        // is a launch.
        if *name == "SLURM_STEP_NUM_TASKS"
            && std::env::var("SLURM_STEP_ID")
                .ok()
                .is_none_or(|id| id.parse::<u64>().is_err())
        {
            return None;
        }
        (count > 1).then_some((count, *name))
    })
}

/// This process's rank among those of its machine (0 when not launched): the GPU that
/// `--device wgpu:local` picks.
pub fn local_rank() -> usize {
    LOCAL_RANK_VARIABLES
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
        .unwrap_or(0)
}

/// This process and the others it trains with.
pub enum Processes {
    /// No launcher: one process.
    Alone,
    /// One rank of an MPI job.
    #[cfg(feature = "mpi")]
    Mpi(xception_mpi::MpiWorld),
}

impl Processes {
    /// Joins the job a launcher started, or stays alone. `timeout` bounds every exchange
    /// between the processes.
    pub fn join(timeout: Duration) -> Result<Self> {
        let Some((count, variable)) = launched() else {
            return Ok(Processes::Alone);
        };
        #[cfg(feature = "mpi")]
        {
            let world = xception_mpi::MpiWorld::init(timeout)?;
            // Fewer processes than the launcher started means MPI did not find the others
            // (`srun` without PMI support, another MPI library than the launcher's): each
            // would train its own copy into the same run directory.
            if world.ranks() != count {
                anyhow::bail!(
                    "the launcher started {count} processes ({variable}={count}) but MPI sees {}: is this binary linked against the MPI library of this mpirun (or, under srun, try --mpi=pmix)?",
                    world.ranks()
                );
            }
            world.abort_on_panic();
            Ok(Processes::Mpi(world))
        }
        #[cfg(not(feature = "mpi"))]
        {
            let _ = timeout;
            anyhow::bail!(
                "this process is one of {count} that a launcher started ({variable}={count}), but this xception was built without MPI: each would train a copy of its own. Build it with `cargo build --release -p xception-cli --features mpi`, or run it without mpirun/srun"
            )
        }
    }

    /// The collective operations of the training loop.
    pub fn collective(&self) -> &dyn Collective {
        match self {
            Processes::Alone => &Solo,
            #[cfg(feature = "mpi")]
            Processes::Mpi(world) => world,
        }
    }

    /// Sums `values` with the MPI library's own all-reduce (for the benchmark's comparison);
    /// false when alone.
    pub fn sum_with_mpi_allreduce(&self, values: &mut [f32]) -> bool {
        match self {
            Processes::Alone => {
                let _ = values;
                false
            }
            #[cfg(feature = "mpi")]
            Processes::Mpi(world) => {
                world.sum_with_mpi_allreduce(values);
                true
            }
        }
    }

    /// Whether this process prints the run's progress and results (rank 0).
    pub fn leads(&self) -> bool {
        self.collective().rank() == 0
    }

    /// Ends this process after `error`. Alone, the error is returned for `main` to print.
    /// In a job, rank 0 prints it, and the others too unless every rank stopped with the same
    /// error (`shared`); then a shared error ends each process normally, with status 1, and
    /// any other one aborts the whole job, so that no rank waits forever for this one.
    pub fn fail(self, error: anyhow::Error, shared: bool) -> anyhow::Error {
        match self {
            Processes::Alone => {
                let _ = shared;
                error
            }
            #[cfg(feature = "mpi")]
            Processes::Mpi(world) => {
                let rank = world.rank();
                if rank == 0 || !shared {
                    eprintln!(
                        "error ({}): {}",
                        world.describe(rank),
                        crate::error_chain(&error)
                    );
                }
                if !shared {
                    world.abort(1);
                }
                drop(world);
                std::process::exit(1)
            }
        }
    }
}

/// Whether `error` stopped every rank alike (see [`TrainError::same_on_every_rank`]).
pub fn shared(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<TrainError>()
        .is_some_and(TrainError::same_on_every_rank)
}

//! The training loop, in parts a newcomer finds by name:
//!
//! - [`train`] (here): open a run, then epochs of steps until done or stopped;
//! - `start`: the checkpoint a run resumes from (checked against the config), superseded
//!   checkpoints moved aside, model/EMA/optimizer restored or made fresh;
//! - `run`: the [`Run`] carried from step to step: opening it, one epoch of optimizer steps
//!   (forward and backward over the devices, accumulation, the guarded update, EMA), reading
//!   the step metrics back, checkpoints;
//! - `tally`: step metrics kept on the device and read every `logging.every_steps` steps;
//! - `epoch`: the end of an epoch (evaluation, best, curves, checkpoint);
//! - `data`: datasets, loaders and [`evaluate`].
//!
//! **When a non-finite step is caught.** Each step computes, on the device, whether its loss
//! and gradient norm are finite; the optimizer applies the step only where they are (the
//! weights keep their values otherwise, with nothing read back). The
//! host learns of it at the next read of the step metrics: every `logging.every_steps` steps,
//! before every checkpoint and at the end of each epoch. The run then stops with
//! [`TrainError::NonFiniteLoss`] naming the step; no checkpoint is written after that step,
//! so the newest checkpoint on disk holds the state of an earlier step. Steps between the bad
//! one and the read were computed but are never saved.

mod data;
mod epoch;
mod run;
mod start;
mod tally;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;
use xception_data::DataError;
use xception_model::ConfigError;

pub use data::{evaluate, loaders, open_split};
use run::Run;

use crate::checkpoint::{Best, CheckpointError};
use crate::config::{ConfigFileError, TrainConfig};
use crate::distributed::{Collective, Solo};
use crate::optim::StateError;
use crate::report::{EvalReport, Reporter};

/// Which checkpoint a run continues from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// The newest complete checkpoint of the run directory; a fresh start when there is none.
    Auto,
    /// This checkpoint directory.
    Dir(PathBuf),
}

/// How to run, besides the config.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where checkpoints, metrics and plots go.
    pub run_dir: PathBuf,
    /// Continue from a checkpoint.
    pub resume: Option<ResumeFrom>,
    /// Resume even when the config's recipe differs from the checkpoint's.
    pub force: bool,
    /// Stop with a checkpoint, as on Ctrl-C, once this many optimizer steps are taken.
    pub stop_at_step: Option<u64>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every epoch ran.
    Finished,
    /// Stopped early (Ctrl-C or `stop_at_step`) after writing a checkpoint.
    Interrupted,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// How it ended.
    pub outcome: Outcome,
    /// Optimizer steps taken in all.
    pub steps: u64,
    /// Epochs completed.
    pub epochs_done: u64,
    /// The last evaluation.
    pub last_eval: Option<EvalReport>,
    /// The best validation top-1 and its checkpoint.
    pub best: Option<Best>,
    /// The last checkpoint written.
    pub last_checkpoint: Option<PathBuf>,
    /// Seconds of this invocation.
    pub seconds: f64,
}

/// Why a run could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// `train` was given no device.
    #[error("no device to train on")]
    NoDevice,
    /// A device failed during a data-parallel step.
    #[error("{0}")]
    Device(String),
    /// The checkpoint's own config cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    /// The data cannot be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model config is invalid.
    #[error(transparent)]
    Model(#[from] ConfigError),
    /// A checkpoint cannot be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The optimizer state of a checkpoint does not fit.
    #[error("{file}: {cause}")]
    OptimizerState {
        /// The state file.
        file: PathBuf,
        /// What does not fit (in the message, so not also a `source()`).
        cause: StateError,
    },
    /// The config differs from the checkpoint's in fields that change results.
    #[error(
        "the config differs from the one checkpoint {checkpoint} was trained with:\n  {}\nresume with --force to continue with the new values",
        changes.join("\n  ")
    )]
    ConfigChanged {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// `field: old -> new` lines.
        changes: Vec<String>,
    },
    /// A fresh run would mix with an earlier run's checkpoints.
    #[error(
        "run directory {0} already holds checkpoints of an earlier run: continue it with --resume auto, or choose another --run-dir"
    )]
    RunDirInUse(PathBuf),
    /// The dataset's classes do not match the model.
    #[error("model.num_classes is {expected} but {root} has {found} classes")]
    ClassCount {
        /// `model.num_classes`.
        expected: usize,
        /// Classes found.
        found: usize,
        /// The training folder.
        root: PathBuf,
    },
    /// A step's loss or gradient norm stopped being a number.
    #[error(
        "the loss became {loss} (gradient norm {grad_norm}) at step {} (epoch {epoch}, lr {lr}); that step was not applied and the run stopped. {}",
        step + 1,
        match last_checkpoint {
            Some(path) => format!("The last good checkpoint is {}.", path.display()),
            None => "No checkpoint was written yet.".to_string(),
        }
    )]
    NonFiniteLoss {
        /// The step's mean loss.
        loss: f64,
        /// The step's global gradient norm.
        grad_norm: f64,
        /// Steps taken before.
        step: u64,
        /// Epoch (1-based).
        epoch: u64,
        /// The learning rate of the step.
        lr: f64,
        /// The newest checkpoint on disk.
        last_checkpoint: Option<PathBuf>,
    },
    /// `training.init_from` cannot be used.
    #[error("training.init_from {path}: {reason}")]
    InitFrom {
        /// The weights named.
        path: PathBuf,
        /// Why they cannot be used.
        reason: String,
    },
    /// The model was lost in an optimizer step that panicked.
    #[error("the model was lost in a failed optimizer step")]
    ModelLost,
    /// The processes of a distributed run do not agree (config, data, start state).
    #[error("{0}")]
    RanksDiffer(String),
    /// The start state rank 0 sent cannot be read on this rank.
    #[error("{0}")]
    StartState(String),
    /// Rank 0 could not start the run; every rank stops with its message.
    #[error("{0}")]
    Refused(String),
    /// An exchange between the processes failed.
    #[error(transparent)]
    Collective(#[from] crate::distributed::CollectiveError),
    /// A file of the run directory cannot be written.
    #[error("cannot write {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why (in the message, so not also a `source()`).
        cause: std::io::Error,
    },
}

impl TrainError {
    /// Whether every process of a distributed run stops with this same error at the same
    /// point (so one of them is enough to report it): refusals agreed before training and a
    /// step that was not finite (its metrics are summed over the processes).
    pub fn same_on_every_rank(&self) -> bool {
        matches!(
            self,
            TrainError::RanksDiffer(_) | TrainError::Refused(_) | TrainError::NonFiniteLoss { .. }
        )
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |cause| TrainError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Trains `config` on `devices` (plain devices; autodiff is added here): one device, or
/// several sharing each batch ([`DataParallel`](crate::parallel::DataParallel)), the first
/// holding the model, the optimizer and evaluation. `stop` is polled after every optimizer
/// step: when set, a checkpoint is written and the run returns [`Outcome::Interrupted`].
pub fn train(
    config: &TrainConfig,
    devices: &[Device],
    options: &RunOptions,
    reporter: &mut dyn Reporter,
    stop: &AtomicBool,
) -> Result<RunSummary, TrainError> {
    train_with(config, devices, &Solo, options, reporter, stop)
}

/// [`train`] as one process of `world` (distributed data-parallel): every process draws the
/// same global batches (`data.batch_size` x devices per process x processes images) and
/// takes its share; gradients, BatchNorm running statistics, step metrics and evaluation
/// counts are summed over the processes. Rank 0 reads the checkpoint it resumes from and
/// sends the start to the others; it alone writes checkpoints and metrics.
pub fn train_with(
    config: &TrainConfig,
    devices: &[Device],
    world: &dyn Collective,
    options: &RunOptions,
    reporter: &mut dyn Reporter,
    stop: &AtomicBool,
) -> Result<RunSummary, TrainError> {
    let mut run = Run::open(config, devices, world, options, reporter)?;
    let stop_requested = |step: u64| {
        stop.load(Ordering::SeqCst) || options.stop_at_step.is_some_and(|at| step >= at)
    };
    while run.state.epoch < run.plan.epochs {
        if let Some(outcome) = run.train_epoch(reporter, &stop_requested)? {
            return Ok(run.summary(outcome));
        }
        run.end_epoch(reporter)?;
        // Several processes stop only as they agreed at the epoch's last step; alone, a
        // request made during the evaluation counts too.
        let stopping = if world.ranks() > 1 {
            run.stop_agreed
        } else {
            stop_requested(run.state.step)
        };
        if stopping && run.state.epoch < run.plan.epochs {
            return Ok(run.summary(Outcome::Interrupted));
        }
    }
    Ok(run.summary(Outcome::Finished))
}

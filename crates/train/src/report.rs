//! What a training run tells its caller while it runs. The library decides what happened;
//! the caller (the CLI's progress bar or log lines, a test) decides how to show it.

use std::path::PathBuf;

use serde::Serialize;

/// The shape of a run, sent once before the first step.
#[derive(Debug, Clone, Serialize)]
pub struct RunStart {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The checkpoint resumed from, if any.
    pub resumed_from: Option<PathBuf>,
    /// Training images and classes.
    pub train_images: usize,
    /// Validation images.
    pub val_images: usize,
    /// Classes.
    pub classes: usize,
    /// Epochs in the run.
    pub epochs: u64,
    /// The epoch the run starts in (0-based).
    pub start_epoch: u64,
    /// Optimizer steps per epoch.
    pub steps_per_epoch: u64,
    /// Optimizer steps already taken.
    pub start_step: u64,
    /// Optimizer steps in the whole run.
    pub total_steps: u64,
    /// Images per optimizer step (batch size times accumulation).
    pub images_per_step: u64,
    /// The device, as Burn names it.
    pub device: String,
    /// Processes training together (1 unless launched by `mpirun`/`srun`).
    pub processes: usize,
}

/// One optimizer step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Epoch in progress (0-based).
    pub epoch: u64,
    /// Optimizer steps taken, this one included.
    pub step: u64,
    /// Steps of this epoch taken, this one included.
    pub step_in_epoch: u64,
    /// Steps in this epoch.
    pub steps_per_epoch: u64,
    /// The learning rate this step used.
    pub lr: f64,
    /// This step's mean loss.
    pub loss: f64,
    /// Mean loss over the epoch so far.
    pub running_loss: f64,
    /// Top-1 accuracy (percent) over the epoch so far.
    pub running_top1: f64,
    /// Top-5 accuracy (percent) over the epoch so far.
    pub running_top5: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Images per second of this step, data loading included.
    pub images_per_sec: f64,
    /// Fraction of this step's time spent waiting for the loader.
    pub data_wait: f64,
}

/// One pass over the validation set.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Epochs completed.
    pub epochs_done: u64,
    /// Optimizer steps taken.
    pub step: u64,
    /// The raw weights' loss, top-1 and top-5 (percent).
    pub raw: Scores,
    /// The averaged weights' scores, when averaging.
    pub ema: Option<Scores>,
    /// Seconds the evaluation took.
    pub seconds: f64,
}

/// Loss and accuracy of one evaluation.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scores {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent.
    pub top5: f64,
    /// Images evaluated.
    pub images: u64,
}

/// Receives a run's events; every method does nothing unless implemented.
pub trait Reporter {
    /// The run is about to take its first step.
    fn started(&mut self, _start: &RunStart) {}
    /// An optimizer step was taken.
    fn step(&mut self, _report: &StepReport) {}
    /// An evaluation is starting over `batches` batches.
    fn evaluating(&mut self, _batches: usize) {}
    /// One evaluation batch is done.
    fn evaluated_batch(&mut self) {}
    /// The validation set was evaluated.
    fn evaluated(&mut self, _report: &EvalReport) {}
    /// Anything else worth a line: checkpoints written, bad files skipped, data generated.
    fn note(&mut self, _message: &str) {}
}

/// A reporter that records nothing (for tests and library callers that only want the result).
#[derive(Debug, Default)]
pub struct Silent;

impl Reporter for Silent {}

//! `xception-train`: training Xception with the paper's recipes.
//!
//! The config schema ([`config`]), learning-rate schedules ([`schedule`]), the paper's SGD and
//! RMSprop ([`optim`]), Polyak averaging ([`ema`]), metrics ([`metrics`], [`record`],
//! [`plot`]), checkpoints ([`checkpoint`]) and the loop that ties them together with exact
//! resume ([`trainer`]), on one device or several ([`parallel`]), in one process or several ([`distributed`]). What the loop reports
//! while it runs goes through [`report`]; [`weights`] reads the weights a user names (a
//! checkpoint directory, or a weights file through the model crate) with their class names.
//! It chooses no backend: the binary does.

#![forbid(unsafe_code)]

mod by_path;
pub mod checkpoint;
pub mod config;
pub mod distributed;
pub mod ema;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod record;
pub mod report;
pub mod schedule;
pub mod trainer;
pub mod weights;

pub use config::{ConfigFileError, TrainConfig};
pub use ema::Ema;
pub use metrics::{ClassificationMeter, top_k_correct};
pub use report::{EvalReport, Reporter, RunStart, Scores, Silent, StepReport};
pub use schedule::{Decay, Interval, Schedule, ScheduleError};
pub use trainer::{
    Outcome, ResumeFrom, RunOptions, RunSummary, TrainError, evaluate, train, train_with,
};

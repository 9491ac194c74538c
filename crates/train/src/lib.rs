//! `xception-train`: training Xception with the paper's recipes.
//!
//! So far it holds the learning-rate schedules ([`schedule`]), Polyak averaging of the weights
//! ([`ema`]) and classification metrics ([`metrics`]); the config schema, optimizers,
//! checkpoints and the train and evaluate loops join them with the training issue.

pub mod ema;
pub mod metrics;
pub mod schedule;

pub use ema::Ema;
pub use metrics::{ClassificationMeter, top_k_correct};
pub use schedule::{Decay, Interval, Schedule, ScheduleError};

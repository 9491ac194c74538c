//! `xception-train`: training Xception with the paper's recipes.
//!
//! So far it holds the config schema ([`config`]), the learning-rate schedules
//! ([`schedule`]), Polyak averaging of the weights ([`ema`]) and classification metrics
//! ([`metrics`]); optimizers, checkpoints and the train and evaluate loops join them with the
//! training issue.

pub mod config;
pub mod ema;
pub mod metrics;
pub mod schedule;

pub use config::{ConfigFileError, TrainConfig};
pub use ema::Ema;
pub use metrics::{ClassificationMeter, top_k_correct};
pub use schedule::{Decay, Interval, Schedule, ScheduleError};

//! Learning-rate schedules, as functions of the number of samples seen.
//!
//! Counting samples rather than steps keeps a schedule the same when the batch size or the
//! gradient accumulation changes, and expresses both of the paper's recipes directly: the
//! ImageNet one decays every 2 epochs, the JFT one every 3,000,000 samples.

use serde::{Deserialize, Serialize};

/// A length of training, in epochs or in samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    /// A (possibly fractional) number of epochs.
    Epochs(f64),
    /// A number of training samples.
    Samples(u64),
}

impl Interval {
    /// The interval in samples, for epochs of `samples_per_epoch`.
    pub fn samples(self, samples_per_epoch: u64) -> f64 {
        match self {
            Self::Epochs(epochs) => epochs * samples_per_epoch as f64,
            Self::Samples(samples) => samples as f64,
        }
    }
}

/// How the learning rate falls after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Decay {
    /// The base rate throughout.
    Constant,
    /// Multiplied by `rate` after every full `every` (a staircase, as in the paper).
    Staircase {
        /// Factor applied at each step of the staircase (0.94 on ImageNet, 0.9 on JFT).
        rate: f64,
        /// Length of a stair.
        every: Interval,
    },
    /// Half a cosine from the base rate to `final_lr` over the training after warm-up.
    Cosine {
        /// The rate at the end of training.
        final_lr: f64,
    },
}

/// A learning-rate schedule: linear warm-up, then a decay. Fields left out of a config keep
/// the paper's ImageNet values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    /// The rate after warm-up (0.045 for the paper's ImageNet SGD).
    pub lr: f64,
    /// Linear warm-up from `warmup_start_lr` to `lr`; none when absent.
    pub warmup: Option<Interval>,
    /// Rate at the first sample of warm-up.
    pub warmup_start_lr: f64,
    /// The decay after (and counted from the start of training, as TensorFlow's
    /// `exponential_decay` counts, so warm-up does not shift the staircase).
    pub decay: Decay,
}

/// A schedule that cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// A field is out of range.
    #[error("schedule.{field}: {reason}")]
    Invalid {
        /// The field, under `schedule`.
        field: &'static str,
        /// What was expected.
        reason: String,
    },
}

impl Default for Schedule {
    fn default() -> Self {
        Self::paper_imagenet()
    }
}

fn invalid(field: &'static str, reason: String) -> Result<(), ScheduleError> {
    Err(ScheduleError::Invalid { field, reason })
}

fn check_interval(field: &'static str, interval: Interval) -> Result<(), ScheduleError> {
    match interval {
        Interval::Epochs(e) if !(e.is_finite() && e > 0.0) => invalid(
            field,
            format!("must be a positive number of epochs, got {e}"),
        ),
        Interval::Samples(0) => invalid(field, "must be at least 1 sample".to_string()),
        _ => Ok(()),
    }
}

impl Schedule {
    /// The paper's ImageNet schedule: 0.045, multiplied by 0.94 every 2 epochs.
    pub fn paper_imagenet() -> Self {
        Self {
            lr: 0.045,
            warmup: None,
            warmup_start_lr: 0.0,
            decay: Decay::Staircase {
                rate: 0.94,
                every: Interval::Epochs(2.0),
            },
        }
    }

    /// The paper's JFT schedule: 0.001, multiplied by 0.9 every 3,000,000 samples.
    pub fn paper_jft() -> Self {
        Self {
            lr: 0.001,
            warmup: None,
            warmup_start_lr: 0.0,
            decay: Decay::Staircase {
                rate: 0.9,
                every: Interval::Samples(3_000_000),
            },
        }
    }

    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return invalid("lr", format!("must be a positive number, got {}", self.lr));
        }
        if let Some(warmup) = self.warmup {
            check_interval("warmup", warmup)?;
        }
        if !(self.warmup_start_lr.is_finite() && self.warmup_start_lr >= 0.0) {
            let value = self.warmup_start_lr;
            return invalid("warmup_start_lr", format!("must be 0 or more, got {value}"));
        }
        match self.decay {
            Decay::Constant => Ok(()),
            Decay::Staircase { rate, every } => {
                if !(rate.is_finite() && rate > 0.0) {
                    return invalid("decay.rate", format!("must be positive, got {rate}"));
                }
                check_interval("decay.every", every)
            }
            Decay::Cosine { final_lr } => {
                if !(final_lr.is_finite() && (0.0..=self.lr).contains(&final_lr)) {
                    let reason = format!("must be in [0, lr], got {final_lr}");
                    return invalid("decay.final_lr", reason);
                }
                Ok(())
            }
        }
    }

    /// The rate for the sample after `samples_seen`, in epochs of `samples_per_epoch`, in a
    /// run of `total_samples` (used by cosine decay only).
    pub fn lr(&self, samples_seen: u64, samples_per_epoch: u64, total_samples: u64) -> f64 {
        let seen = samples_seen as f64;
        let warmup = self
            .warmup
            .map_or(0.0, |w| w.samples(samples_per_epoch.max(1)));
        if seen < warmup {
            let fraction = seen / warmup;
            return self.warmup_start_lr + (self.lr - self.warmup_start_lr) * fraction;
        }
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Staircase { rate, every } => {
                let stair = every.samples(samples_per_epoch.max(1));
                self.lr * rate.powf((seen / stair).floor())
            }
            Decay::Cosine { final_lr } => {
                let span = (total_samples as f64 - warmup).max(1.0);
                let progress = ((seen - warmup) / span).clamp(0.0, 1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                final_lr + (self.lr - final_lr) * cosine
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGENET_EPOCH: u64 = 1_281_167;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn paper_imagenet_steps_down_by_0_94_every_two_epochs() {
        let schedule = Schedule::paper_imagenet();
        assert_eq!(schedule.validate(), Ok(()));
        let at_epoch = |epochs: f64| {
            let samples = (epochs * IMAGENET_EPOCH as f64) as u64;
            schedule.lr(samples, IMAGENET_EPOCH, 0)
        };
        assert!(close(at_epoch(0.0), 0.045));
        assert!(close(at_epoch(1.99), 0.045));
        assert!(close(at_epoch(2.0), 0.045 * 0.94));
        assert!(close(at_epoch(5.5), 0.045 * 0.94 * 0.94));
        assert!(close(at_epoch(100.0), 0.045 * 0.94f64.powi(50)));
    }

    #[test]
    fn paper_jft_steps_down_by_0_9_every_three_million_samples() {
        let schedule = Schedule::paper_jft();
        assert!(close(schedule.lr(2_999_999, IMAGENET_EPOCH, 0), 0.001));
        assert!(close(schedule.lr(3_000_000, IMAGENET_EPOCH, 0), 0.0009));
        assert!(close(schedule.lr(9_500_000, 7, 0), 0.001 * 0.9f64.powi(3)));
    }

    #[test]
    fn warmup_rises_linearly_then_hands_over_to_the_decay() {
        let schedule = Schedule {
            lr: 0.1,
            warmup: Some(Interval::Samples(1000)),
            warmup_start_lr: 0.0,
            decay: Decay::Staircase {
                rate: 0.5,
                every: Interval::Samples(2000),
            },
        };
        assert!(close(schedule.lr(0, 100, 0), 0.0));
        assert!(close(schedule.lr(250, 100, 0), 0.025));
        assert!(close(schedule.lr(999, 100, 0), 0.0999));
        assert!(close(schedule.lr(1000, 100, 0), 0.1));
        assert!(
            close(schedule.lr(2000, 100, 0), 0.05),
            "the staircase counts from 0"
        );
    }

    #[test]
    fn cosine_falls_from_lr_to_final_lr_after_warmup() {
        let schedule = Schedule {
            lr: 1.0,
            warmup: Some(Interval::Epochs(1.0)),
            warmup_start_lr: 0.1,
            decay: Decay::Cosine { final_lr: 0.0 },
        };
        let (epoch, total) = (100, 1100);
        assert!(close(schedule.lr(0, epoch, total), 0.1));
        assert!(close(schedule.lr(100, epoch, total), 1.0));
        assert!(close(schedule.lr(600, epoch, total), 0.5));
        assert!(schedule.lr(1100, epoch, total).abs() < 1e-12);
        assert!(
            schedule.lr(5000, epoch, total).abs() < 1e-12,
            "stays at the end"
        );
    }

    #[test]
    fn constant_is_constant() {
        let schedule = Schedule {
            lr: 0.01,
            warmup: None,
            warmup_start_lr: 0.0,
            decay: Decay::Constant,
        };
        assert!(
            [0, 1, 10_000_000]
                .iter()
                .all(|&s| close(schedule.lr(s, 10, 0), 0.01))
        );
    }

    #[test]
    fn reads_from_toml_and_rejects_unknown_fields() {
        let schedule: Schedule = toml::from_str(
            "lr = 0.045\n[decay]\nkind = \"staircase\"\nrate = 0.94\nevery = { epochs = 2.0 }\n",
        )
        .expect("valid schedule");
        assert_eq!(schedule, Schedule::paper_imagenet());
        let jft: Schedule = toml::from_str(
            "lr = 0.001\n[decay]\nkind = \"staircase\"\nrate = 0.9\n\
             every = { samples = 3000000 }\n",
        )
        .expect("valid schedule");
        assert_eq!(jft, Schedule::paper_jft());
        let typo = toml::from_str::<Schedule>("lr = 0.1\nwarmpu = { epochs = 1.0 }\n")
            .expect_err("typo")
            .to_string();
        assert!(typo.contains("warmpu"), "{typo}");
        let decay_typo =
            toml::from_str::<Schedule>("lr = 0.1\n[decay]\nkind = \"cosine\"\nfinal = 0.0\n")
                .expect_err("typo")
                .to_string();
        assert!(decay_typo.contains("final"), "{decay_typo}");
    }

    #[test]
    fn validation_names_the_field() {
        let bad_rate = Schedule {
            decay: Decay::Staircase {
                rate: -1.0,
                every: Interval::Epochs(2.0),
            },
            ..Schedule::paper_imagenet()
        };
        let error = bad_rate.validate().expect_err("negative rate").to_string();
        assert!(error.contains("schedule.decay.rate"), "{error}");
        let bad_every = Schedule {
            decay: Decay::Staircase {
                rate: 0.9,
                every: Interval::Samples(0),
            },
            ..Schedule::paper_imagenet()
        };
        let error = bad_every.validate().expect_err("zero interval").to_string();
        assert!(error.contains("schedule.decay.every"), "{error}");
        let bad_lr = Schedule {
            lr: 0.0,
            ..Schedule::paper_imagenet()
        };
        assert!(
            bad_lr
                .validate()
                .expect_err("zero")
                .to_string()
                .contains("schedule.lr")
        );
    }
}

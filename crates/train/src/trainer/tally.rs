//! Step metrics kept on the device: each optimizer step leaves one small tensor (loss, loss
//! times images, top-1 and top-5 hits, gradient norm) and the run reads them all back in one
//! transfer every `logging.every_steps` steps, before every checkpoint and at the end of each
//! epoch. On a GPU a read waits for every queued kernel, so reading each step would stall the
//! queue; this way the device runs ahead of the host between reads.

use std::time::{Duration, Instant};

use burn::tensor::{Bool, Tensor};

/// Where each value sits in a step's tensor.
pub(super) mod slot {
    /// Sum over the step's batches of each batch's mean loss.
    pub const LOSS: usize = 0;
    /// The batch tally's four values ([`crate::metrics::batch_tally`]) start here.
    pub const TALLY: usize = 0;
    /// The global gradient norm before clipping.
    pub const NORM: usize = 4;
    /// Values per step.
    pub const LEN: usize = 5;
}

/// Whether a step's values (laid out by [`slot`]) are all finite, which they are exactly when
/// its loss and gradient norm are (the others are counts and the loss times an image count):
/// the one-element flag the optimizer applies the step under, computed on the device in
/// three operations (`x * 0` is 0 for a finite `x`, NaN otherwise).
pub(super) fn finite(values: &Tensor<1>) -> Tensor<1, Bool> {
    values.clone().mul_scalar(0.0).sum().equal_elem(0.0)
}

/// A step taken but not yet read back: what the host knows of it, and its device values.
pub(super) struct PendingStep {
    /// Epoch (0-based).
    pub epoch: u64,
    /// Optimizer steps taken, this one included.
    pub step: u64,
    /// Loader batches of the epoch consumed after this step.
    pub batch_in_epoch: u64,
    /// Training samples consumed after this step.
    pub samples: u64,
    /// The step's learning rate.
    pub lr: f64,
    /// Non-empty batches in the step.
    pub batches: u64,
    /// Images in the step.
    pub images: u64,
    /// `[slot::LEN]` values on the device.
    pub values: Tensor<1>,
}

/// A step read back.
pub(super) struct ReadStep {
    /// What the host knew.
    pub pending: PendingStep,
    /// Its values, as laid out by [`slot`].
    pub values: [f32; slot::LEN],
}

impl ReadStep {
    /// The mean of the step's batch losses.
    pub fn loss(&self) -> f64 {
        f64::from(self.values[slot::LOSS]) / self.pending.batches.max(1) as f64
    }

    /// The global gradient norm.
    pub fn grad_norm(&self) -> f64 {
        f64::from(self.values[slot::NORM])
    }

    /// Whether the step was applied: all its values were finite, the test [`finite`] made on
    /// the device (the optimizer skipped the step otherwise).
    pub fn finite(&self) -> bool {
        self.values.iter().all(|value| value.is_finite())
    }
}

/// The steps since the last read, and the time and images they took.
pub(super) struct Tally {
    pending: Vec<PendingStep>,
    since: Instant,
    waited: Duration,
    images: u64,
}

/// Throughput over the steps of one read, shared by their rows: a step's own duration is not
/// known when the device runs ahead of the host.
#[derive(Debug, Clone, Copy)]
pub(super) struct Throughput {
    /// Images per second, data loading included.
    pub images_per_sec: f64,
    /// Fraction of the time spent waiting for the loader.
    pub data_wait: f64,
}

impl Tally {
    pub fn new() -> Self {
        Self {
            pending: Vec::new(),
            since: Instant::now(),
            waited: Duration::ZERO,
            images: 0,
        }
    }

    /// Time spent waiting for the loader.
    pub fn waited(&mut self, time: Duration) {
        self.waited += time;
    }

    /// Records a step taken.
    pub fn push(&mut self, step: PendingStep) {
        self.images += step.images;
        self.pending.push(step);
    }

    /// Reads every pending step back (one transfer) and restarts the clock.
    pub fn read(&mut self) -> (Vec<ReadStep>, Throughput) {
        let seconds = self.since.elapsed().as_secs_f64().max(1e-9);
        let throughput = Throughput {
            images_per_sec: self.images as f64 / seconds,
            data_wait: (self.waited.as_secs_f64() / seconds).min(1.0),
        };
        let pending = std::mem::take(&mut self.pending);
        let values: Vec<f32> = if pending.is_empty() {
            Vec::new()
        } else {
            let tensors = pending.iter().map(|p| p.values.clone()).collect();
            Tensor::cat(tensors, 0).into_data().iter::<f32>().collect()
        };
        let read = pending
            .into_iter()
            .zip(values.chunks_exact(slot::LEN))
            .map(|(pending, values)| ReadStep {
                pending,
                values: values.try_into().unwrap_or([f32::NAN; slot::LEN]),
            })
            .collect();
        *self = Self::new();
        (read, throughput)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;

    fn values(loss: f32, norm: f32) -> Tensor<1> {
        Tensor::from_data(
            TensorData::new(vec![loss, loss * 4.0, 3.0, 4.0, norm], [slot::LEN]),
            &Device::flex(),
        )
    }

    fn read_back(values: Tensor<1>) -> ReadStep {
        let mut tally = Tally::new();
        tally.push(PendingStep {
            epoch: 0,
            step: 1,
            batch_in_epoch: 1,
            samples: 4,
            lr: 0.1,
            batches: 1,
            images: 4,
            values,
        });
        let (mut steps, _) = tally.read();
        steps.remove(0)
    }

    #[test]
    fn a_finite_loss_with_a_non_finite_gradient_norm_is_not_finite() {
        for (loss, norm, expected) in [
            (2.0, 1.5, true),
            (2.0, f32::NAN, false),
            (2.0, f32::INFINITY, false),
            (f32::NAN, 1.5, false),
            (f32::INFINITY, 1.5, false),
        ] {
            let flag = finite(&values(loss, norm)).int().into_scalar::<i64>() != 0;
            assert_eq!(flag, expected, "loss {loss}, norm {norm} on the device");
            assert_eq!(
                read_back(values(loss, norm)).finite(),
                expected,
                "loss {loss}, norm {norm} read back"
            );
        }
    }

    #[test]
    fn steps_are_read_back_in_order_with_their_values() {
        let mut tally = Tally::new();
        for step in 1..=3u64 {
            tally.push(PendingStep {
                epoch: 0,
                step,
                batch_in_epoch: step,
                samples: 4 * step,
                lr: 0.1,
                batches: 2,
                images: 4,
                values: values(step as f32, 0.5),
            });
        }
        let (steps, throughput) = tally.read();
        assert_eq!(steps.len(), 3);
        for (index, read) in steps.iter().enumerate() {
            assert_eq!(read.pending.step, index as u64 + 1);
            // Two batches: the step's loss is the mean of their losses.
            assert_eq!(read.loss(), (index + 1) as f64 / 2.0);
            assert_eq!(read.grad_norm(), 0.5);
        }
        assert!(throughput.images_per_sec > 0.0);
        assert!(tally.read().0.is_empty(), "a read empties the tally");
    }
}

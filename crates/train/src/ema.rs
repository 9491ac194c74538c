//! Polyak averaging: an exponential moving average of the weights, evaluated beside them.
//!
//! Every float parameter is averaged, BatchNorm running statistics included, as TensorFlow's
//! Inception training averages its trainable and moving-average variables and timm's
//! `ModelEmaV2` averages the whole state dict.

use burn::module::Module;

use crate::by_path;

/// An averaged copy of a model, kept on a plain (non-autodiff) device.
#[derive(Debug, Clone)]
pub struct Ema<M> {
    model: M,
    decay: f64,
    warmup: bool,
    updates: u64,
}

impl<M: Module> Ema<M> {
    /// Starts the average at `model`'s current weights.
    ///
    /// With `warmup`, the decay used at update `t` is `min(decay, (1 + t) / (10 + t))`, as
    /// TensorFlow's `ExponentialMovingAverage(num_updates=...)` does, so that early averages
    /// are not dominated by the random initialisation.
    pub fn new(model: &M, decay: f64, warmup: bool) -> Self {
        Self {
            model: model.valid(),
            decay,
            warmup,
            updates: 0,
        }
    }

    /// Resumes an average: `model` holds the averaged weights after `updates` updates.
    pub fn resume(model: M, decay: f64, warmup: bool, updates: u64) -> Self {
        Self {
            model: model.valid(),
            decay,
            warmup,
            updates,
        }
    }

    /// The averaged model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// Updates applied so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The decay the next update will use.
    pub fn next_decay(&self) -> f64 {
        if self.warmup {
            let t = self.updates as f64;
            self.decay.min((1.0 + t) / (10.0 + t))
        } else {
            self.decay
        }
    }

    /// `average = decay * average + (1 - decay) * current`, parameter by parameter.
    pub fn update(&mut self, current: &M) {
        let mut current = by_path::floats(current);
        let decay = self.next_decay();
        self.model = by_path::map_floats(self.model.clone(), |path, average| {
            match current.remove(path) {
                Some(current) => {
                    let current = current.to_device(&average.device());
                    average.mul_scalar(decay) + current.mul_scalar(1.0 - decay)
                }
                None => average,
            }
        });
        self.updates += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{ModuleMapper, Param};
    use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
    use burn::tensor::{Device, Tensor, Tolerance};

    #[derive(Module, Debug)]
    struct Tiny {
        linear: Linear,
        bn: BatchNorm,
    }

    fn tiny(device: &Device) -> Tiny {
        Tiny {
            linear: LinearConfig::new(3, 2).init(device),
            bn: BatchNormConfig::new(2).init(device),
        }
    }

    fn weight(model: &Tiny) -> Vec<f32> {
        model
            .linear
            .weight
            .val()
            .without_autodiff()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32")
    }

    #[test]
    fn averages_every_parameter_with_the_decay() {
        let device = Device::flex();
        let start = tiny(&device);
        let mut ema = Ema::new(&start, 0.9, false);
        let moved = start.clone().map(&mut Shift { by: 1.0 });
        ema.update(&moved);
        let expected: Vec<f32> = weight(&start).iter().map(|w| w + 0.1).collect();
        let actual = weight(ema.model());
        for (a, e) in actual.iter().zip(&expected) {
            assert!((a - e).abs() < 1e-6, "{actual:?} vs {expected:?}");
        }
        // Running statistics are averaged too: mean 0 -> 1 gives 0.1.
        let mean = ema.model().bn.running_mean.value();
        mean.into_data().assert_approx_eq::<f32>(
            &burn::tensor::TensorData::from([0.1f32, 0.1]),
            Tolerance::default(),
        );
        assert_eq!(ema.updates(), 1);
    }

    #[test]
    fn warmup_starts_with_small_decays() {
        let device = Device::flex();
        let mut ema = Ema::new(&tiny(&device), 0.9999, true);
        assert!((ema.next_decay() - 0.1).abs() < 1e-12);
        let model = tiny(&device);
        ema.update(&model);
        assert!((ema.next_decay() - 2.0 / 11.0).abs() < 1e-12);
        let late = Ema::resume(model, 0.9999, true, 1_000_000);
        assert!((late.next_decay() - 0.9999).abs() < 1e-12);
    }

    #[test]
    fn works_from_an_autodiff_model() {
        let device = Device::flex().autodiff();
        let model = tiny(&device);
        let mut ema = Ema::new(&model, 0.5, false);
        ema.update(&model);
        assert_eq!(weight(ema.model()), weight(&model));
        assert!(!ema.model().linear.weight.val().device().is_autodiff());
    }

    /// Adds a constant to every float parameter.
    struct Shift {
        by: f64,
    }

    impl ModuleMapper for Shift {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let by = self.by;
            param.map(|t| t.add_scalar(by))
        }
    }
}

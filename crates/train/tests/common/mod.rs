//! A narrow model and one plain-SGD step on any devices, shared by the multi-device and the
//! wgpu tests.
#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, TensorData};
use xception_data::HostBatch;
use xception_model::{ModelConfig, Network, XceptionConfig, interop};
use xception_train::config::OptimizerConfig;
use xception_train::optim::{GradientSum, Optimizer};
use xception_train::parallel::{DataParallel, combine};

pub const SIZE: usize = 71;

/// The paper's layout, narrow (width 1/8, one middle block): every kind of layer, few shapes.
pub fn model_config() -> ModelConfig {
    ModelConfig::Xception(XceptionConfig {
        num_classes: 4,
        input_size: SIZE,
        width: 0.125,
        middle_blocks: 1,
        dropout: 0.0,
        ..XceptionConfig::default()
    })
}

/// Weights drawn from `seed` on the flex device, by path.
pub fn initial_weights(seed: u64) -> BTreeMap<String, TensorData> {
    let flex = Device::flex();
    flex.seed(seed);
    interop::tensors_by_path(&Network::new(&model_config(), &flex).expect("model"))
}

/// Pseudo-random pixels in [-1, 1] for `images` images.
pub fn pixels(images: usize, salt: u64) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ salt;
    (0..images * 3 * SIZE * SIZE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

pub fn batch(images: Vec<f32>, labels: Vec<i64>) -> HostBatch {
    HostBatch {
        index: 0,
        samples: (0..labels.len()).collect(),
        files: labels.len(),
        positions: (0..labels.len()).collect(),
        images,
        labels,
        skipped: Vec::new(),
        size: SIZE,
    }
}

/// What one step computed: the batch's mean loss, its logits, and the weights (BatchNorm
/// statistics included) after the update.
pub struct StepResult {
    pub loss: f64,
    pub logits: Vec<f32>,
    pub weights: Weights,
}

/// One plain-SGD step (lr 1, no momentum or decay, so the change is the gradient) on
/// `devices`, from `weights`, BatchNorm in training mode.
pub fn step(
    devices: &[Device],
    weights: &BTreeMap<String, TensorData>,
    batch: HostBatch,
) -> StepResult {
    let parallel = DataParallel::new(devices, Default::default());
    let model = Network::new(&model_config(), parallel.main_device()).expect("model");
    let model = interop::assign(model, weights.clone()).expect("same shapes");
    let shares = parallel
        .forward_backward(&model, batch, false, |_| 7)
        .expect("forward and backward");
    let combined = combine(shares).expect("a non-empty batch");
    let loss = f64::from(combined.loss.into_scalar::<f32>());
    let logits: Vec<f32> = combined.logits.into_data().iter::<f32>().collect();
    let mut sum = GradientSum::default();
    sum.add_shares(&model, combined.grads);
    let grads = sum.finish(None, &devices[0]).grads;
    let mut optimizer = Optimizer::new(OptimizerConfig::Sgd {
        momentum: 0.0,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 0.0,
        decay_norm_and_bias: false,
    });
    let model = optimizer.step(model, grads, 1.0);
    StepResult {
        loss,
        logits,
        weights: Weights(interop::tensors_by_path(&model.valid())),
    }
}

/// A model's tensors by path.
pub struct Weights(pub BTreeMap<String, TensorData>);

impl Weights {
    /// The largest difference from `other`, relative to each tensor's largest magnitude
    /// (at least 1e-3), and where it is.
    pub fn max_relative_difference(&self, other: &Weights) -> (f64, String) {
        let mut worst = (0.0, String::new());
        for (path, a) in &self.0 {
            let b = &other.0[path];
            let (a, b): (Vec<f32>, Vec<f32>) = (a.iter().collect(), b.iter().collect());
            let scale = a.iter().fold(1e-3_f32, |m, v| m.max(v.abs()));
            let difference = a
                .iter()
                .zip(&b)
                .fold(0.0_f32, |m, (x, y)| m.max((x - y).abs()))
                / scale;
            if f64::from(difference) > worst.0 {
                worst = (f64::from(difference), path.clone());
            }
        }
        worst
    }
}

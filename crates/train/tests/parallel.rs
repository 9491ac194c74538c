//! Data-parallel steps: N devices with B images each make the same update as one device
//! with N*B images, where that holds mathematically. BatchNorm trains on per-device batch
//! statistics, so the test feeds each device the same images (the batch `[x0 x1 x0 x1]`
//! split into `[x0 x1]` twice): each device's batch mean and variance then equal the whole
//! batch's, and the gradient of the whole batch's mean loss is the mean of the devices'.
//! The devices are the two a CPU-only machine has: flex and ndarray.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, TensorData};
use xception_data::HostBatch;
use xception_model::{Xception, XceptionConfig, interop};
use xception_train::config::OptimizerConfig;
use xception_train::optim::{GradientSum, Optimizer};
use xception_train::parallel::DataParallel;

const SIZE: usize = 71;

fn model_config() -> XceptionConfig {
    XceptionConfig {
        num_classes: 4,
        input_size: SIZE,
        width: 0.125,
        middle_blocks: 1,
        dropout: 0.0,
        ..XceptionConfig::default()
    }
}

/// Pseudo-random pixels in [-1, 1] for `images` images.
fn pixels(images: usize, salt: u64) -> Vec<f32> {
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

fn batch(images: Vec<f32>, labels: Vec<i64>) -> HostBatch {
    HostBatch {
        index: 0,
        samples: (0..labels.len()).collect(),
        images,
        labels,
        skipped: Vec::new(),
        size: SIZE,
    }
}

/// One plain-SGD step (lr 1, no momentum or decay, so the change is the gradient) on
/// `devices`, from `weights`; returns the weights and BatchNorm statistics after it.
fn step(devices: &[Device], weights: &BTreeMap<String, TensorData>, batch: HostBatch) -> Weights {
    let parallel = DataParallel::new(devices);
    let model = Xception::new(&model_config(), parallel.main_device()).expect("model");
    let model = interop::assign(model, weights.clone()).expect("same shapes");
    let shares = parallel
        .forward_backward(&model, batch, false, |_| 7)
        .expect("forward and backward");
    let total: usize = shares.iter().map(|s| s.images).sum();
    let mut sum = GradientSum::default();
    sum.add_shares(
        &model,
        shares
            .into_iter()
            .map(|s| (s.grads, s.images as f64 / total as f64))
            .collect(),
    );
    let (grads, _) = sum.finish(None);
    let mut optimizer = Optimizer::new(OptimizerConfig::Sgd {
        momentum: 0.0,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 0.0,
        decay_norm_and_bias: false,
    });
    let model = optimizer.step(model, grads, 1.0);
    Weights(interop::tensors_by_path(&model.valid()))
}

struct Weights(BTreeMap<String, TensorData>);

impl Weights {
    /// The largest difference from `other`, relative to each tensor's largest magnitude.
    fn max_relative_difference(&self, other: &Weights) -> (f64, String) {
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

#[test]
fn two_devices_with_b_images_each_update_like_one_device_with_2b() {
    let flex = Device::flex();
    #[allow(deprecated)] // ndarray is deprecated upstream; we keep it for our users
    let ndarray = Device::ndarray();
    flex.seed(3);
    let weights = interop::tensors_by_path(&Xception::new(&model_config(), &flex).expect("model"));

    let (x0, x1) = (pixels(1, 1), pixels(1, 2));
    let twice: Vec<f32> = [&x0, &x1, &x0, &x1]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    let labels = vec![1, 3, 1, 3];
    let one = step(
        std::slice::from_ref(&flex),
        &weights,
        batch(twice.clone(), labels.clone()),
    );
    let two = step(
        &[flex.clone(), ndarray.clone()],
        &weights,
        batch(twice, labels),
    );
    let (difference, path) = one.max_relative_difference(&two);
    println!(
        "one device (4 images) vs two (2 each): max relative difference {difference:.2e} at {path}"
    );
    assert!(difference < 1e-4, "{path} differs by {difference:.2e}");

    // The weights did move (lr 1), and different images on the two devices give another
    // update (per-device BatchNorm statistics): the comparison above can fail.
    let start = Weights(weights.clone());
    assert!(one.max_relative_difference(&start).0 > 1e-2);
    let (x2, x3) = (pixels(1, 3), pixels(1, 4));
    let distinct: Vec<f32> = [&x0, &x1, &x2, &x3]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    let one = step(
        std::slice::from_ref(&flex),
        &weights,
        batch(distinct.clone(), vec![1, 3, 0, 2]),
    );
    let two = step(
        &[flex, ndarray],
        &weights,
        batch(distinct, vec![1, 3, 0, 2]),
    );
    let (difference, path) = one.max_relative_difference(&two);
    println!("distinct images: max relative difference {difference:.2e} at {path}");
    assert!(
        difference > 1e-3,
        "per-device statistics should show at {path}"
    );
}

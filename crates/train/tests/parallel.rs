//! Data-parallel steps: N devices with B images each make the same update as one device
//! with N*B images, where that holds mathematically. BatchNorm trains on per-device batch
//! statistics, so the test feeds each device the same images (the batch `[x0 x1 x0 x1]`
//! split into `[x0 x1]` twice): each device's batch mean and variance then equal the whole
//! batch's, and the gradient of the whole batch's mean loss is the mean of the devices'.
//! The devices are the two a CPU-only machine has: flex and ndarray.

use burn::module::Module;
use burn::tensor::{Device, TensorData};
use xception_model::{Network, interop};
use xception_train::parallel::DataParallel;

mod common;
use common::{Weights, batch, initial_weights, model_config, pixels, step};

/// The weights after one step on flex alone and on flex + ndarray (half the batch each).
fn one_and_two_devices(
    weights: &std::collections::BTreeMap<String, burn::tensor::TensorData>,
    images: Vec<f32>,
    labels: Vec<i64>,
) -> (common::StepResult, common::StepResult) {
    let flex = Device::flex();
    #[allow(deprecated)] // ndarray is deprecated upstream; we keep it for our users
    let ndarray = Device::ndarray();
    let one = step(
        std::slice::from_ref(&flex),
        weights,
        batch(images.clone(), labels.clone()),
    );
    let two = step(&[flex, ndarray], weights, batch(images, labels));
    (one, two)
}

/// The same loss and weights (BatchNorm statistics included) after both steps.
fn assert_same_step(one: &common::StepResult, two: &common::StepResult, what: &str) {
    let (difference, path) = one.weights.max_relative_difference(&two.weights);
    println!("{what}: max relative difference {difference:.2e} at {path}");
    assert!(
        difference < 1e-4,
        "{what}: {path} differs by {difference:.2e}"
    );
    assert!(
        (one.loss - two.loss).abs() < 1e-5,
        "{what}: loss {} vs {}",
        one.loss,
        two.loss
    );
}

#[test]
fn two_devices_with_b_images_each_update_like_one_device_with_2b() {
    let weights = initial_weights(3);

    let (x0, x1) = (pixels(1, 1), pixels(1, 2));
    let twice: Vec<f32> = [&x0, &x1, &x0, &x1]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    let (one, two) = one_and_two_devices(&weights, twice, vec![1, 3, 1, 3]);
    assert_same_step(&one, &two, "one device (4 images) vs two (2 each)");

    // The weights did move (lr 1), and different images on the two devices give another
    // update (per-device BatchNorm statistics): the comparison above can fail.
    let start = Weights(weights.clone());
    assert!(one.weights.max_relative_difference(&start).0 > 1e-2);
    let (x2, x3) = (pixels(1, 3), pixels(1, 4));
    let distinct: Vec<f32> = [&x0, &x1, &x2, &x3]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    let (one, two) = one_and_two_devices(&weights, distinct, vec![1, 3, 0, 2]);
    let (difference, path) = one.weights.max_relative_difference(&two.weights);
    println!("distinct images: max relative difference {difference:.2e} at {path}");
    assert!(
        difference > 1e-3,
        "per-device statistics should show at {path}"
    );
}

/// Uneven shares (5 images over 2 devices: 3 and 2, as when a batch lost an undecodable image)
/// are weighted by their images, 3/5 and 2/5. Five copies of one image give every device the
/// whole batch's BatchNorm statistics, so the update must be one device's; the labels differ
/// between the shares, so their gradients differ and equal weights (1/2 each) would show.
#[test]
fn uneven_shares_are_weighted_by_their_images() {
    let weights = initial_weights(5);
    let image = pixels(1, 9);
    let five: Vec<f32> = (0..5).flat_map(|_| image.iter().copied()).collect();
    let (one, two) = one_and_two_devices(&weights, five, vec![0, 0, 0, 3, 3]);
    assert_same_step(&one, &two, "one device (5 images) vs two (3 + 2)");
}

/// During `training.freeze_epochs` the frozen layers run in inference mode: their BatchNorm
/// running statistics are used and kept (in training mode every forward pass would move
/// them), and only the classifier gets gradients.
#[test]
fn frozen_layers_keep_their_batchnorm_statistics() {
    #[allow(deprecated)] // ndarray is deprecated upstream; we keep it for our users
    let three = [Device::flex(), Device::ndarray(), Device::flex()];
    frozen_step_keeps_statistics(&[Device::flex()]);
    frozen_step_keeps_statistics(&three);
}

fn frozen_step_keeps_statistics(devices: &[Device]) {
    // Statistics as a trained model has them: a mean of equal values computed in f32 would
    // give 0 and 1 back exactly, but not these.
    let mut weights = initial_weights(7);
    for (path, data) in weights.iter_mut() {
        if path.contains("running") {
            let values: Vec<f32> = (0..data.num_elements())
                .map(|i| 0.3 + ((i * 7919) % 1000) as f32 / 997.0)
                .collect();
            *data = TensorData::new(values, data.shape().to_vec());
        }
    }
    let parallel = DataParallel::new(devices, Default::default());
    let model = Network::new(&model_config(), parallel.main_device()).expect("model");
    let model = interop::assign(model, weights.clone()).expect("the same shapes");
    let shares = parallel
        .forward_backward(
            &model,
            batch(pixels(6, 3), vec![0, 1, 2, 3, 0, 1]),
            true,
            |_| 7,
        )
        .expect("a frozen step");
    let after = interop::tensors_by_path(&model.valid());
    let statistics: Vec<&String> = weights.keys().filter(|p| p.contains("running")).collect();
    assert!(!statistics.is_empty());
    for path in statistics {
        assert_eq!(weights[path], after[path], "{path} moved in a frozen step");
    }
    let learned: Vec<usize> = shares.iter().map(|share| share.grads.len()).collect();
    assert_eq!(
        learned,
        vec![2; devices.len()],
        "the classifier's weight and bias alone"
    );
}

/// Three devices, each with its own images: the BatchNorm running statistics after the step
/// are the mean of the three devices' (each as a one-device step on its share computes
/// them), summed in device order, and the same on every run. Burn's own averaging sums in
/// hash-map order, which moves the last bits from run to run with three or more devices.
#[test]
fn running_statistics_of_several_devices_are_their_mean_in_device_order() {
    let weights = initial_weights(4);
    #[allow(deprecated)] // ndarray is deprecated upstream; we keep it for our users
    let devices = [Device::flex(), Device::ndarray(), Device::flex()];
    let shares: Vec<(Vec<f32>, Vec<i64>)> = (0..3)
        .map(|d| (pixels(2, 20 + d as u64), vec![d, 3 - d]))
        .collect();
    let all_images: Vec<f32> = shares.iter().flat_map(|(x, _)| x.clone()).collect();
    let all_labels: Vec<i64> = shares.iter().flat_map(|(_, y)| y.clone()).collect();
    let together = || {
        step(
            &devices,
            &weights,
            batch(all_images.clone(), all_labels.clone()),
        )
    };
    let (first, second) = (together(), together());
    let alone: Vec<common::StepResult> = devices
        .iter()
        .zip(&shares)
        .map(|(device, (x, y))| {
            step(
                std::slice::from_ref(device),
                &weights,
                batch(x.clone(), y.clone()),
            )
        })
        .collect();
    let mut checked = 0;
    for (path, combined) in &first.weights.0 {
        if !path.ends_with("running_mean") && !path.ends_with("running_var") {
            continue;
        }
        let combined: Vec<f32> = combined.iter().collect();
        let again: Vec<f32> = second.weights.0[path].iter().collect();
        assert_eq!(combined, again, "{path} differs between two runs");
        let per_device: Vec<Vec<f32>> = alone
            .iter()
            .map(|result| result.weights.0[path].iter().collect())
            .collect();
        for (i, value) in combined.iter().enumerate() {
            let mean = (per_device[0][i] + per_device[1][i] + per_device[2][i]) / 3.0;
            assert!(
                (value - mean).abs() <= 1e-6 * mean.abs().max(1.0),
                "{path}[{i}]: {value} vs the devices' mean {mean}"
            );
        }
        checked += 1;
    }
    assert!(checked > 10, "{checked} running statistics");
}

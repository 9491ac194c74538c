//! Data-parallel steps: N devices with B images each make the same update as one device
//! with N*B images, where that holds mathematically. BatchNorm trains on per-device batch
//! statistics, so the test feeds each device the same images (the batch `[x0 x1 x0 x1]`
//! split into `[x0 x1]` twice): each device's batch mean and variance then equal the whole
//! batch's, and the gradient of the whole batch's mean loss is the mean of the devices'.
//! The devices are the two a CPU-only machine has: flex and ndarray.

use burn::tensor::Device;

mod common;
use common::{Weights, batch, initial_weights, pixels, step};

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
    let (difference, path) = one.weights.max_relative_difference(&two.weights);
    println!(
        "one device (4 images) vs two (2 each): max relative difference {difference:.2e} at {path}"
    );
    assert!(difference < 1e-4, "{path} differs by {difference:.2e}");
    assert!(
        (one.loss - two.loss).abs() < 1e-5,
        "{} vs {}",
        one.loss,
        two.loss
    );

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

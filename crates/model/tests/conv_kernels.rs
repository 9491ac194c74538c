//! The flex device's direct depthwise and 1x1 convolution gradients (our patch of burn-flex,
//! `vendor/burn-flex/PATCHES.md`) against Burn's reference backend, ndarray, which computes
//! them the generic way: forward values, input gradients and weight gradients, on odd
//! sizes, batch 1, channel counts off the SIMD width, strides 1 and 2 and TensorFlow's
//! 'same' padding (asymmetric for stride 2 on even sizes).

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor, TensorData};

/// Forward output and the gradients of a weighted sum of it, as host data.
fn run(
    device: &Device,
    x: &TensorData,
    weight: &TensorData,
    mix: &TensorData,
    options: &ConvOptions<2>,
) -> [Vec<f32>; 3] {
    let device = device.clone().autodiff();
    let x = Tensor::<4>::from_data(x.clone(), &device).require_grad();
    let weight = Tensor::<4>::from_data(weight.clone(), &device).require_grad();
    let y = conv2d(x.clone(), weight.clone(), None, options.clone());
    let mix = Tensor::<4>::from_data(mix.clone(), &device);
    let grads = (y.clone() * mix).sum().backward();
    let values = |t: Tensor<4>| t.into_data().iter::<f32>().collect::<Vec<f32>>();
    [
        values(y.inner()),
        values(x.grad(&grads).expect("input gradient")),
        values(weight.grad(&grads).expect("weight gradient")),
    ]
}

fn random(shape: [usize; 4], seed: u64) -> TensorData {
    let device = Device::flex();
    device.seed(seed);
    Tensor::<4>::random(shape, Distribution::Uniform(-1.0, 1.0), &device).into_data()
}

/// TensorFlow's 'same' padding for a 3x3 kernel: the extra row/column goes at the end.
fn same_padding(size: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + 3).saturating_sub(size);
    (total / 2, total - total / 2)
}

fn check(
    batch: usize,
    c_in: usize,
    c_out: usize,
    groups: usize,
    kernel: usize,
    size: (usize, usize),
    stride: usize,
) {
    let (h, w) = size;
    let mut options = ConvOptions::new([stride, stride], [0, 0], [1, 1], groups);
    if kernel == 3 {
        options.padding = [same_padding(h, stride), same_padding(w, stride)];
    }
    let x = random([batch, c_in, h, w], 1);
    let weight = random([c_out, c_in / groups, kernel, kernel], 2);
    let out_h = (h + options.padding[0].0 + options.padding[0].1 - kernel) / stride + 1;
    let out_w = (w + options.padding[1].0 + options.padding[1].1 - kernel) / stride + 1;
    let mix = random([batch, c_out, out_h, out_w], 3);
    let flex = run(&Device::flex(), &x, &weight, &mix, &options);
    #[allow(deprecated)] // ndarray is deprecated upstream; here it is the reference
    let reference = run(&Device::ndarray(), &x, &weight, &mix, &options);
    for (what, (ours, theirs)) in ["output", "input gradient", "weight gradient"]
        .iter()
        .zip(flex.iter().zip(&reference))
    {
        assert_eq!(ours.len(), theirs.len(), "{what}");
        let scale = theirs.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let worst = ours
            .iter()
            .zip(theirs)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 1e-5 * scale,
            "{what} of batch {batch}, {c_in}->{c_out} channels, groups {groups}, \
             {kernel}x{kernel}, {h}x{w}, stride {stride}: off by {worst:e} (scale {scale})"
        );
    }
}

#[test]
fn depthwise_gradients_match_the_reference() {
    for (batch, channels, size, stride) in [
        (1, 3, (5, 5), 1),
        (2, 13, (9, 7), 1),
        (1, 33, (19, 19), 1),
        (3, 17, (10, 10), 2),
        (2, 19, (11, 8), 2),
        (2, 8, (1, 1), 1),
    ] {
        check(batch, channels, channels, channels, 3, size, stride);
    }
}

#[test]
fn pointwise_gradients_match_the_reference() {
    for (batch, c_in, c_out, size) in [(1, 3, 5, (1, 1)), (2, 13, 7, (9, 7)), (3, 17, 33, (19, 19))]
    {
        check(batch, c_in, c_out, 1, 1, size, 1);
    }
}

#[test]
fn other_convolutions_keep_burns_gradients() {
    // A dense 3x3, a grouped (not depthwise) 3x3, and a strided 1x1 (the residual branches).
    check(2, 6, 4, 1, 3, (7, 7), 1);
    check(2, 6, 4, 2, 3, (8, 8), 2);
    check(2, 6, 10, 1, 1, (9, 9), 2);
}

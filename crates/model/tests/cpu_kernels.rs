//! The flex device's own CPU kernels (our patch of burn-flex, `vendor/burn-flex/PATCHES.md`)
//! against Burn's reference backend, ndarray, which computes them the generic way: the
//! depthwise, 1x1 and dense convolutions (forward values, input and weight gradients; flex
//! returns them channels-last), batch normalisation (output, batch statistics,
//! input/scale/shift gradients), max-pooling (values, gradients, ties), the average pool's
//! gradient (Inception V3's pools, padding counted or not), and a small chain of
//! these on channels-last activations; on odd sizes, batch 1, channel counts off the SIMD
//! width, strides 1 and 2 and TensorFlow's 'same' padding (asymmetric for stride 2 on even
//! sizes).

use burn::nn::PaddingConfig2d;
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::tensor::module::{batch_norm, batch_norm_train, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use burn_flex::ops::simd_variant;

/// Forward output (with a bias) and the gradients of a weighted sum of it, as host data.
fn run(
    device: &Device,
    x: &TensorData,
    [weight, bias, mix]: [&TensorData; 3],
    options: &ConvOptions<2>,
) -> [Vec<f32>; 3] {
    let device = device.clone().autodiff();
    let x = Tensor::<4>::from_data(x.clone(), &device).require_grad();
    let weight = Tensor::<4>::from_data(weight.clone(), &device).require_grad();
    let bias = Tensor::<1>::from_data(bias.clone(), &device);
    let y = conv2d(x.clone(), weight.clone(), Some(bias), options.clone());
    let mix = Tensor::<4>::from_data(mix.clone(), &device);
    let grads = (y.clone() * mix).sum().backward();
    let values = |t: Tensor<4>| t.into_data().iter::<f32>().collect::<Vec<f32>>();
    [
        values(y.inner()),
        values(x.grad(&grads).expect("input gradient")),
        values(weight.grad(&grads).expect("weight gradient")),
    ]
}

/// Uniform values in [-1, 1) from `seed` alone (SplitMix64), so that a failure reproduces:
/// Burn's generator is one per backend and process, shared by the tests running in parallel.
fn random<const D: usize>(shape: [usize; D], seed: u64) -> TensorData {
    let mut state = seed ^ 0x5eed_5eed_5eed_5eed;
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    TensorData::new(values, shape)
}

/// Largest difference between `ours` and `theirs`, and the largest magnitude in `theirs`
/// (at least 1).
fn difference(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), theirs.len());
    let scale = theirs.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let worst = ours
        .iter()
        .zip(theirs)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    (worst, scale)
}

/// Asserts that each of `ours` is within `tolerance` (relative to the reference's largest
/// magnitude) of the same-named one of `theirs`; `context` describes the case.
fn assert_close(
    names: &[&str],
    ours: &[Vec<f32>],
    theirs: &[Vec<f32>],
    tolerance: f32,
    context: &str,
) {
    for (what, (ours, theirs)) in names.iter().zip(ours.iter().zip(theirs)) {
        let (worst, scale) = difference(ours, theirs);
        assert!(
            worst <= tolerance * scale,
            "{context}: {what} off by {worst:e} (scale {scale})"
        );
    }
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
    check_options(batch, (c_in, c_out), kernel, size, options);
}

fn check_options(
    batch: usize,
    channels: (usize, usize),
    kernel: usize,
    size: (usize, usize),
    options: ConvOptions<2>,
) {
    check_kernel(batch, channels, [kernel, kernel], size, options, 1e-5);
}

/// A convolution with a `[kh, kw]` kernel against the reference within `tolerance`
/// (relative to the largest value).
fn check_kernel(
    batch: usize,
    (c_in, c_out): (usize, usize),
    [kh, kw]: [usize; 2],
    (h, w): (usize, usize),
    options: ConvOptions<2>,
    tolerance: f32,
) {
    let (groups, stride) = (options.groups, options.stride[0]);
    let x = random([batch, c_in, h, w], 1);
    let weight = random([c_out, c_in / groups, kh, kw], 2);
    let out_h = (h + options.padding[0].0 + options.padding[0].1 - kh) / stride + 1;
    let out_w = (w + options.padding[1].0 + options.padding[1].1 - kw) / stride + 1;
    let mix = random([batch, c_out, out_h, out_w], 3);
    let bias = random([c_out], 10);
    let flex = run(&Device::flex(), &x, [&weight, &bias, &mix], &options);
    #[allow(deprecated)] // ndarray is deprecated upstream; here it is the reference
    let reference = run(&Device::ndarray(), &x, [&weight, &bias, &mix], &options);
    assert_close(
        &["output", "input gradient", "weight gradient"],
        &flex,
        &reference,
        tolerance,
        &format!(
            "batch {batch}, {c_in}->{c_out} channels, groups {groups}, {kh}x{kw}, {h}x{w}, \
             stride {stride}, padding {:?}",
            options.padding
        ),
    );
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
        // Whole blocks of 64 channels, and whole blocks with a tail.
        (1, 64, (5, 5), 1),
        (1, 130, (7, 6), 1),
        (2, 70, (6, 5), 2),
    ] {
        check(batch, channels, channels, channels, 3, size, stride);
    }
}

#[test]
fn depthwise_kernels_and_paddings_beyond_xceptions_match_the_reference() {
    // Stride 1 with no padding, one-sided padding, a 5x5 kernel, a 2x2 kernel, a 1x1 map.
    for (batch, channels, kernel, size, padding) in [
        (2, 5, 3, (6, 9), [(0, 0), (0, 0)]),
        (1, 7, 3, (8, 5), [(0, 2), (2, 1)]),
        (2, 18, 5, (11, 12), [(2, 2), (2, 2)]),
        (3, 4, 2, (7, 7), [(0, 1), (1, 0)]),
        (1, 3, 3, (1, 1), [(1, 1), (1, 1)]),
    ] {
        let mut options = ConvOptions::new([1, 1], [0, 0], [1, 1], channels);
        options.padding = padding;
        check_options(batch, (channels, channels), kernel, size, options);
    }
}

#[test]
fn pointwise_gradients_match_the_reference() {
    // Small maps take the whole batch in one product; large ones (over 1600 positions) go
    // image by image, where batch 5 splits unevenly over threads in the weight gradient.
    for (batch, c_in, c_out, size) in [
        (1, 3, 5, (1, 1)),
        (2, 13, 7, (9, 7)),
        (3, 17, 33, (19, 19)),
        (5, 16, 9, (4, 6)),
        (5, 4, 6, (41, 43)),
        (1, 5, 3, (45, 40)),
    ] {
        check(batch, c_in, c_out, 1, 1, size, 1);
    }
}

#[test]
fn strided_pointwise_convolutions_match_the_reference() {
    // Xception's residual 1x1 convolutions: stride 2, odd and even sizes.
    for (batch, c_in, c_out, size) in [
        (2, 6, 10, (9, 9)),
        (1, 3, 17, (8, 11)),
        (3, 19, 7, (1, 2)),
        (5, 8, 8, (10, 10)),
        (2, 3, 5, (83, 81)),
    ] {
        check(batch, c_in, c_out, 1, 1, size, 2);
    }
}

/// A dense convolution with a `[kh, kw]` kernel, stride 1 and `padding`, against the
/// reference within `tolerance`.
fn check_dense(
    batch: usize,
    channels: (usize, usize),
    kernel: [usize; 2],
    size: (usize, usize),
    padding: [(usize, usize); 2],
    tolerance: f32,
) {
    let mut options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    options.padding = padding;
    check_kernel(batch, channels, kernel, size, options, tolerance);
}

#[test]
fn inception_v3s_dense_convolutions_match_the_reference() {
    // Its factorised 1x7 / 7x1 and 1x3 / 3x1 kernels, 5x5 and 3x3 'same', on batches whose
    // patches share one product (small maps) and on one too large for that (the 299x299
    // stem's 3x3 convolution: each image's patches fill the budget alone).
    for (batch, channels, kernel, size, padding) in [
        (3, (5, 7), [1, 7], (9, 9), [(0, 0), (3, 3)]),
        (2, (6, 4), [7, 1], (8, 10), [(3, 3), (0, 0)]),
        (5, (3, 9), [1, 3], (1, 1), [(0, 0), (1, 1)]),
        (4, (8, 3), [3, 1], (4, 3), [(1, 1), (0, 0)]),
        (3, (4, 6), [5, 5], (7, 7), [(2, 2), (2, 2)]),
        (2, (16, 5), [3, 3], (17, 17), [(0, 0), (0, 0)]),
    ] {
        check_dense(batch, channels, kernel, size, padding, 1e-5);
    }
    // The weight gradient sums 176,418 products per value: f32 sums of that length in
    // another order differ by about 1.5e-5 of their scale.
    check_dense(2, (32, 2), [3, 3], (299, 299), [(0, 0), (0, 0)], 5e-5);
}

#[test]
fn other_convolutions_keep_burns_gradients() {
    // A dense 3x3 and a grouped (not depthwise) 3x3.
    check(2, 6, 4, 1, 3, (7, 7), 1);
    check(2, 6, 4, 2, 3, (8, 8), 2);
}

/// Batch normalisation with the batch's statistics: output, mean, variance, and the
/// gradients of a weighted sum of the output with respect to input, scale and shift; then
/// the same input normalised with given statistics (inference).
fn run_batch_norm<const D: usize>(
    device: &Device,
    x: &TensorData,
    [gamma, beta, mix]: [&TensorData; 3],
) -> [Vec<f32>; 7] {
    let device = device.clone().autodiff();
    let x = Tensor::<D>::from_data(x.clone(), &device).require_grad();
    let gamma = Tensor::<1>::from_data(gamma.clone(), &device).require_grad();
    let beta = Tensor::<1>::from_data(beta.clone(), &device).require_grad();
    let result = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-3);
    let mix = Tensor::<D>::from_data(mix.clone(), &device);
    let grads = (result.output.clone() * mix).sum().backward();
    let inference = batch_norm(
        x.clone().inner(),
        gamma.clone().inner(),
        beta.clone().inner(),
        result.mean.clone().inner() * 0.5,
        result.variance.clone().inner() + 0.25,
        1e-3,
    );
    let values = |data: TensorData| data.iter::<f32>().collect::<Vec<f32>>();
    [
        values(result.output.inner().into_data()),
        values(result.mean.inner().into_data()),
        values(result.variance.inner().into_data()),
        values(x.grad(&grads).expect("input gradient").into_data()),
        values(gamma.grad(&grads).expect("scale gradient").into_data()),
        values(beta.grad(&grads).expect("shift gradient").into_data()),
        values(inference.into_data()),
    ]
}

fn check_batch_norm<const D: usize>(shape: [usize; D], offset: f32) {
    let channels = shape[1];
    // An offset makes the mean large against the spread: centring must not cancel it away.
    let x = {
        let values: Vec<f32> = random(shape, 4)
            .iter::<f32>()
            .map(|v| v * 3.0 + offset)
            .collect();
        TensorData::new(values, shape)
    };
    let (gamma, beta) = (random([channels], 5), random([channels], 6));
    let mix = random(shape, 7);
    let parameters = [&gamma, &beta, &mix];
    let flex = run_batch_norm::<D>(&Device::flex(), &x, parameters);
    #[allow(deprecated)] // ndarray is deprecated upstream; here it is the reference
    let reference = run_batch_norm::<D>(&Device::ndarray(), &x, parameters);
    let names = [
        "output",
        "mean",
        "variance",
        "input gradient",
        "scale gradient",
        "shift gradient",
        "inference output",
    ];
    assert_close(
        &names,
        &flex,
        &reference,
        2e-5,
        &format!("batch norm of {shape:?} with offset {offset}"),
    );
}

#[test]
fn batch_norm_matches_the_reference() {
    check_batch_norm([1, 3, 5, 5], 0.0);
    check_batch_norm([2, 17, 7, 9], 0.5);
    check_batch_norm([3, 33, 1, 1], -2.0);
    check_batch_norm([2, 5, 19, 19], 20.0);
    check_batch_norm([4, 19], 1.0);
    check_batch_norm([2, 3, 4, 5, 6], 0.0);
}

/// Max-pooling forward (with and without autodiff, which keeps the indices) and backward.
fn run_max_pool(
    device: &Device,
    x: &TensorData,
    mix: &TensorData,
    pool: &MaxPool2d,
) -> [Vec<f32>; 3] {
    let values = |data: TensorData| data.iter::<f32>().collect::<Vec<f32>>();
    let inference = pool.forward(Tensor::<4>::from_data(x.clone(), device));
    let device = device.clone().autodiff();
    let x = Tensor::<4>::from_data(x.clone(), &device).require_grad();
    let y = pool.forward(x.clone());
    let mix = Tensor::<4>::from_data(mix.clone(), &device);
    let grads = (y.clone() * mix).sum().backward();
    [
        values(inference.into_data()),
        values(y.inner().into_data()),
        values(x.grad(&grads).expect("input gradient").into_data()),
    ]
}

#[test]
fn max_pool_matches_the_reference() {
    // Xception's 3x3 stride-2 'same' pools (asymmetric on even sizes), a valid 2x2 one and
    // a padded 3x3 stride-1 one.
    let same = || {
        MaxPool2dConfig::new([3, 3])
            .with_strides([2, 2])
            .with_padding(PaddingConfig2d::Same)
            .init()
    };
    let cases = [
        (same(), [2, 5, 9, 9]),
        (same(), [1, 3, 8, 10]),
        (same(), [3, 17, 19, 19]),
        (same(), [2, 2, 1, 2]),
        (same(), [1, 128, 6, 6]),
        (same(), [2, 70, 9, 8]),
        (
            MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            [2, 3, 7, 6],
        ),
        (
            MaxPool2dConfig::new([3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            [1, 4, 5, 6],
        ),
    ];
    for (pool, shape) in cases {
        // Integers with ties, so that which of equal values wins is checked too.
        let x: Vec<f32> = random(shape, 8)
            .iter::<f32>()
            .map(|v| (v * 4.0).round())
            .collect();
        let x = TensorData::new(x, shape);
        let mix = random(
            pool.forward(Tensor::<4>::zeros(shape, &Device::flex()))
                .dims(),
            9,
        );
        let flex = run_max_pool(&Device::flex(), &x, &mix, &pool);
        #[allow(deprecated)] // ndarray is deprecated upstream; here it is the reference
        let reference = run_max_pool(&Device::ndarray(), &x, &mix, &pool);
        assert_close(
            &["inference output", "output", "input gradient"],
            &flex,
            &reference,
            1e-6,
            &format!("max-pool of {shape:?}"),
        );
    }
}

/// Average pooling forward and the gradient of a weighted sum of it.
fn run_avg_pool(
    device: &Device,
    x: &TensorData,
    mix: &TensorData,
    pool: &AvgPool2d,
) -> [Vec<f32>; 2] {
    let values = |data: TensorData| data.iter::<f32>().collect::<Vec<f32>>();
    let device = device.clone().autodiff();
    let x = Tensor::<4>::from_data(x.clone(), &device).require_grad();
    let y = pool.forward(x.clone());
    let mix = Tensor::<4>::from_data(mix.clone(), &device);
    let grads = (y.clone() * mix).sum().backward();
    [
        values(y.inner().into_data()),
        values(x.grad(&grads).expect("input gradient").into_data()),
    ]
}

#[test]
fn avg_pool_gradients_match_the_reference() {
    // Inception V3's 3x3 stride-1 pools without (Keras) and with (timm) the padding in the
    // mean, on maps down to 1x1; its auxiliary head's 5x5 stride-3 pool; strided and
    // non-square ones.
    let pool = |kernel: [usize; 2], stride: [usize; 2], pad: usize, include: bool| {
        AvgPool2dConfig::new(kernel)
            .with_strides(stride)
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_count_include_pad(include)
            .init()
    };
    let cases = [
        (pool([3, 3], [1, 1], 1, false), [2, 5, 9, 9]),
        (pool([3, 3], [1, 1], 1, false), [1, 3, 1, 1]),
        (pool([3, 3], [1, 1], 1, false), [2, 7, 8, 10]),
        (pool([3, 3], [1, 1], 1, true), [2, 5, 7, 6]),
        (pool([5, 5], [3, 3], 0, false), [2, 4, 17, 17]),
        (pool([3, 3], [2, 2], 0, false), [1, 3, 9, 8]),
        (pool([2, 3], [2, 1], 1, true), [2, 3, 7, 6]),
    ];
    for (pool, shape) in cases {
        let x = random(shape, 10);
        let mix = random(
            pool.forward(Tensor::<4>::zeros(shape, &Device::flex()))
                .dims(),
            11,
        );
        let flex = run_avg_pool(&Device::flex(), &x, &mix, &pool);
        #[allow(deprecated)] // ndarray is deprecated upstream; here it is the reference
        let reference = run_avg_pool(&Device::ndarray(), &x, &mix, &pool);
        assert_close(
            &["output", "input gradient"],
            &flex,
            &reference,
            1e-6,
            &format!("avg-pool of {shape:?}"),
        );
    }
}

/// A small Xception-like chain: 1x1 convolution, BatchNorm, ReLU, depthwise 3x3, 'same'
/// max-pool (asymmetric on even sizes), a strided 1x1 shortcut added, then `relu(y) + y`.
/// On flex every activation after the first convolution is channels-last, so this checks
/// BatchNorm, ReLU, padding, max-pooling, additions and gradient sums on that layout.
/// Returns the training output and gradients, then the inference output.
fn run_chain(device: &Device, x: &TensorData, parameters: [&TensorData; 6]) -> [Vec<f32>; 5] {
    let chain = |device: &Device, training: bool| {
        let tensor = |data: &TensorData| Tensor::<4>::from_data(data.clone(), device);
        let vector = |data: &TensorData| Tensor::<1>::from_data(data.clone(), device);
        let [pointwise, depthwise, shortcut, gamma, beta, _] = parameters;
        let (x, pointwise, depthwise) = (tensor(x), tensor(pointwise), tensor(depthwise));
        let (x, pointwise, depthwise) = if training {
            (
                x.require_grad(),
                pointwise.require_grad(),
                depthwise.require_grad(),
            )
        } else {
            (x, pointwise, depthwise)
        };
        let channels = pointwise.dims()[0];
        let unit = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let y = conv2d(x.clone(), pointwise.clone(), None, unit);
        let (gamma, beta) = (vector(gamma), vector(beta));
        let y = if training {
            batch_norm_train(y, gamma, beta, 1e-3).output
        } else {
            let mean = Tensor::<1>::zeros([channels], device) + 0.1;
            let variance = Tensor::<1>::ones([channels], device) * 2.0;
            batch_norm(y, gamma, beta, mean, variance, 1e-3)
        };
        let y = burn::tensor::activation::relu(y);
        let mut options = ConvOptions::new([1, 1], [1, 1], [1, 1], channels);
        options.padding = [(1, 1), (1, 1)];
        let y = conv2d(y, depthwise.clone(), None, options);
        let pool = MaxPool2dConfig::new([3, 3])
            .with_strides([2, 2])
            .with_padding(PaddingConfig2d::Same)
            .init();
        let strided = ConvOptions::new([2, 2], [0, 0], [1, 1], 1);
        let y = pool.forward(y) + conv2d(x.clone(), tensor(shortcut), None, strided);
        (
            burn::tensor::activation::relu(y.clone()) + y,
            [x, pointwise, depthwise],
        )
    };
    let values = |t: Tensor<4>| t.into_data().iter::<f32>().collect::<Vec<f32>>();
    let (inference, _) = chain(device, false);
    let autodiff = device.clone().autodiff();
    let (y, [x, pointwise, depthwise]) = chain(&autodiff, true);
    let mix = Tensor::<4>::from_data(parameters[5].clone(), &autodiff);
    let grads = (y.clone() * mix).sum().backward();
    [
        values(y.inner()),
        values(x.grad(&grads).expect("input gradient")),
        values(pointwise.grad(&grads).expect("1x1 weight gradient")),
        values(depthwise.grad(&grads).expect("depthwise weight gradient")),
        values(inference),
    ]
}

#[test]
fn channels_last_activations_match_the_reference() {
    for (batch, c_in, channels, (h, w)) in [
        (2, 5, 12, (8, 10)),
        (1, 3, 17, (9, 9)),
        (3, 4, 6, (6, 7)),
        (1, 3, 72, (6, 7)),
    ] {
        let x = random([batch, c_in, h, w], 11);
        let (out_h, out_w) = (h.div_ceil(2), w.div_ceil(2));
        let data = [
            random([channels, c_in, 1, 1], 12),
            random([channels, 1, 3, 3], 13),
            random([channels, c_in, 1, 1], 14),
            random([channels], 15),
            random([channels], 16),
            random([batch, channels, out_h, out_w], 17),
        ];
        let parameters = [&data[0], &data[1], &data[2], &data[3], &data[4], &data[5]];
        let flex = run_chain(&Device::flex(), &x, parameters);
        #[allow(deprecated)] // ndarray is deprecated upstream; here it is the reference
        let reference = run_chain(&Device::ndarray(), &x, parameters);
        let names = [
            "output",
            "input gradient",
            "1x1 weight gradient",
            "depthwise weight gradient",
            "inference output",
        ];
        assert_close(
            &names,
            &flex,
            &reference,
            2e-5,
            &format!("chain of [{batch}, {c_in}, {h}, {w}] -> {channels} channels"),
        );
    }
}

/// A folded network as `eval` and `predict` run it (with AVX-512: the fused convolutions and
/// max-pool + shortcut; in the narrower variants: the ops one by one and the max-pool's own
/// loop) against the network as trained, on the reference.
#[test]
fn folded_network_matches_the_reference() {
    use burn::module::Module;
    use xception_model::{Xception, XceptionConfig};
    let config = XceptionConfig {
        input_size: 71,
        width: 0.125,
        middle_blocks: 1,
        num_classes: 5,
        ..XceptionConfig::default()
    };
    #[allow(deprecated)] // ndarray is deprecated upstream; here it is the reference
    let reference_device = Device::ndarray();
    let model = Xception::new(&config, &reference_device).expect("a valid config");
    let images = random([2, 3, 71, 71], 21);
    let logits = |model: &Xception, device: &Device| -> Vec<f32> {
        let images = Tensor::<4>::from_data(images.clone(), device);
        model.forward(images).into_data().iter::<f32>().collect()
    };
    let flex = Device::flex();
    let folded = model.clone().valid().to_device(&flex).folded();
    let reference = logits(&model.valid(), &reference_device);
    assert_close(
        &["logits"],
        &[logits(&folded, &flex)],
        &[reference],
        1e-4,
        "folded network",
    );
}

/// The kernels' AVX2 and baseline variants, which the CPU's best variant hides on an
/// AVX-512 machine (CI's), against the reference too. Other tests running meanwhile may then
/// run a narrower variant: every variant must pass them.
#[test]
fn the_avx2_and_baseline_variants_match_the_reference() {
    for widest in [simd_variant::AVX2, simd_variant::BASELINE] {
        simd_variant::allow_up_to(widest);
        let before = simd_variant::calls(widest);
        depthwise_gradients_match_the_reference();
        depthwise_kernels_and_paddings_beyond_xceptions_match_the_reference();
        pointwise_gradients_match_the_reference();
        strided_pointwise_convolutions_match_the_reference();
        inception_v3s_dense_convolutions_match_the_reference();
        batch_norm_matches_the_reference();
        max_pool_matches_the_reference();
        channels_last_activations_match_the_reference();
        folded_network_matches_the_reference();
        if widest == simd_variant::BASELINE || has_avx2() {
            assert!(
                simd_variant::calls(widest) > before,
                "the kernels ran variant {widest}"
            );
        }
    }
    simd_variant::allow_up_to(simd_variant::AVX512);
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

//! Where a training step's time goes, by operation: each kind of operation Xception runs
//! (depthwise and 1x1 convolutions, BatchNorm, ReLU, max-pooling, the residual and entry
//! convolutions), timed alone on its real shapes, forward and backward, multiplied by how
//! often the model runs it.
//!
//!   cargo build --release --workspace --example op_times
//!   target/release/examples/op_times [flex|ndarray] [batch] [size] [repeats]
//!
//! (`cargo run` takes no `--workspace`, and building the model crate alone resolves Burn's
//! features differently and rebuilds it.)
//!
//! Run it with `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647` to time memory the way
//! the `xception` binary allocates it (its `keep_freed_memory`).
//!
//! The sum comes close to `xception bench --target train` (the optimizer, dropout, the
//! classifier and the additions are left out; each backward here starts from the gradient of
//! a sum, which the kernels first copy into their layout); it tells which kernel to speed up
//! next.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2dConfig;
use burn::tensor::activation::relu;
use burn::tensor::module::{batch_norm_train, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};

/// One kind of operation on one shape: `[channels_in, channels_out, size]` of its input.
#[derive(Clone, Copy)]
enum Op {
    Depthwise(usize, usize),
    Pointwise(usize, usize, usize),
    Residual(usize, usize, usize),
    Entry(usize, usize, usize, usize),
    BatchNorm(usize, usize),
    Relu(usize, usize),
    MaxPool(usize, usize),
}

impl Op {
    fn kind(self) -> &'static str {
        match self {
            Op::Depthwise(..) => "depthwise 3x3",
            Op::Pointwise(..) => "pointwise 1x1",
            Op::Residual(..) => "residual 1x1 stride 2",
            Op::Entry(..) => "entry 3x3 (dense)",
            Op::BatchNorm(..) => "batch norm",
            Op::Relu(..) => "relu",
            Op::MaxPool(..) => "max-pool 3x3 stride 2",
        }
    }

    /// The input and, for convolutions, the weight, random.
    fn inputs(self, batch: usize, device: &Device) -> (Tensor<4>, Option<Tensor<4>>) {
        let random = |shape: [usize; 4]| {
            Tensor::<4>::random(shape, Distribution::Uniform(-1.0, 1.0), device)
        };
        let activation = |shape: [usize; 4]| as_activation(random(shape));
        match self {
            Op::Depthwise(c, s) => (activation([batch, c, s, s]), Some(random([c, 1, 3, 3]))),
            Op::Pointwise(ci, co, s) | Op::Residual(ci, co, s) => {
                (activation([batch, ci, s, s]), Some(random([co, ci, 1, 1])))
            }
            // The first convolution reads the image batch as the data loader makes it.
            Op::Entry(ci, co, s, 2) => (random([batch, ci, s, s]), Some(random([co, ci, 3, 3]))),
            Op::Entry(ci, co, s, _) => {
                (activation([batch, ci, s, s]), Some(random([co, ci, 3, 3])))
            }
            Op::BatchNorm(c, s) | Op::Relu(c, s) | Op::MaxPool(c, s) => {
                (activation([batch, c, s, s]), None)
            }
        }
    }

    /// Forward output summed into a scalar; input and weight require their gradients.
    fn run(self, x: &Tensor<4>, weight: &Option<Tensor<4>>, device: &Device) -> Tensor<1> {
        let x = x.clone().require_grad();
        let weight = || {
            weight
                .clone()
                .expect("a convolution has a weight")
                .require_grad()
        };
        let y = match self {
            Op::Depthwise(c, _) => conv2d(
                x,
                weight(),
                None,
                ConvOptions::new([1, 1], [1, 1], [1, 1], c),
            ),
            Op::Pointwise(..) => conv2d(
                x,
                weight(),
                None,
                ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
            ),
            Op::Residual(..) => conv2d(
                x,
                weight(),
                None,
                ConvOptions::new([2, 2], [0, 0], [1, 1], 1),
            ),
            Op::Entry(_, _, _, stride) => conv2d(
                x,
                weight(),
                None,
                ConvOptions::new([stride, stride], [0, 0], [1, 1], 1),
            ),
            Op::BatchNorm(c, _) => {
                let gamma = Tensor::<1>::ones([c], device).require_grad();
                let beta = Tensor::<1>::zeros([c], device).require_grad();
                batch_norm_train(x, gamma, beta, 1e-3).output
            }
            Op::Relu(..) => relu(x),
            Op::MaxPool(..) => MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Same)
                .init()
                .forward(x),
        };
        y.sum()
    }
}

/// `x` in the layout the model's activations have: flex's convolutions return channels-last
/// tensors (NHWC memory), so `x` goes through a 1x1 identity convolution; on other devices
/// this is a plain copy.
fn as_activation(x: Tensor<4>) -> Tensor<4> {
    let channels = x.dims()[1];
    let identity = Tensor::<2>::eye(channels, &x.device()).reshape([channels, channels, 1, 1]);
    conv2d(
        x,
        identity,
        None,
        ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
    )
}

/// Xception's operations on `size`x`size` images with how many times one forward pass runs
/// each.
fn xception_ops(size: usize) -> Vec<(Op, usize)> {
    // Feature-map sizes: the two valid 3x3 convolutions (the first with stride 2), then
    // halved ('same' padding) by each entry block and the exit block.
    let conv1 = (size - 3) / 2 + 1;
    let conv2 = conv1 - 2;
    let [block2, block3, middle, exit] = {
        let half = |s: usize| s.div_ceil(2);
        let block2 = half(conv2);
        [
            block2,
            half(block2),
            half(half(block2)),
            half(half(half(block2))),
        ]
    };
    let mut ops = vec![
        (Op::Entry(3, 32, size, 2), 1),
        (Op::BatchNorm(32, conv1), 1),
        (Op::Relu(32, conv1), 1),
        (Op::Entry(32, 64, conv1, 1), 1),
        (Op::BatchNorm(64, conv2), 1),
        (Op::Relu(64, conv2), 1),
    ];
    // Entry blocks: (c_in, c_out, size): two separable convolutions, a residual, a pool.
    for (c_in, c_out, size) in [(64, 128, conv2), (128, 256, block2), (256, 728, block3)] {
        ops.extend([
            (Op::Relu(c_in, size), 1),
            (Op::Depthwise(c_in, size), 1),
            (Op::Pointwise(c_in, c_out, size), 1),
            (Op::BatchNorm(c_out, size), 2),
            (Op::Relu(c_out, size), 1),
            (Op::Depthwise(c_out, size), 1),
            (Op::Pointwise(c_out, c_out, size), 1),
            (Op::MaxPool(c_out, size), 1),
            (Op::Residual(c_in, c_out, size), 1),
            (Op::BatchNorm(c_out, size.div_ceil(2)), 1),
        ]);
    }
    // Middle flow: 8 blocks of 3 x (ReLU, depthwise, pointwise, BN) at 728 channels.
    ops.extend([
        (Op::Relu(728, middle), 24),
        (Op::Depthwise(728, middle), 24),
        (Op::Pointwise(728, 728, middle), 24),
        (Op::BatchNorm(728, middle), 24),
    ]);
    // Exit flow.
    ops.extend([
        (Op::Relu(728, middle), 2),
        (Op::Depthwise(728, middle), 2),
        (Op::Pointwise(728, 728, middle), 1),
        (Op::Pointwise(728, 1024, middle), 1),
        (Op::BatchNorm(728, middle), 1),
        (Op::BatchNorm(1024, middle), 1),
        (Op::MaxPool(1024, middle), 1),
        (Op::Residual(728, 1024, middle), 1),
        (Op::BatchNorm(1024, exit), 1),
        (Op::Depthwise(1024, exit), 1),
        (Op::Pointwise(1024, 1536, exit), 1),
        (Op::BatchNorm(1536, exit), 1),
        (Op::Relu(1536, exit), 1),
        (Op::Depthwise(1536, exit), 1),
        (Op::Pointwise(1536, 2048, exit), 1),
        (Op::BatchNorm(2048, exit), 1),
        (Op::Relu(2048, exit), 1),
    ]);
    ops
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    #[allow(deprecated)] // ndarray is deprecated upstream; users asked for it
    let device = match args.first().map(String::as_str) {
        None | Some("flex") => Device::flex(),
        Some("ndarray") => Device::ndarray(),
        Some(other) => {
            eprintln!("unknown device {other:?}: flex or ndarray");
            std::process::exit(2);
        }
    };
    let parse = |index: usize, default: usize| {
        args.get(index).map_or(default, |value| {
            value.parse().unwrap_or_else(|_| {
                eprintln!("not a number: {value:?}");
                std::process::exit(2)
            })
        })
    };
    let (batch, size, repeats) = (parse(1, 8), parse(2, 299), parse(3, 3).max(1));
    if size < 29 {
        eprintln!("size {size} is too small for Xception (at least 29)");
        std::process::exit(2);
    }
    let device = device.autodiff();
    // Per kind: (forward, backward) seconds for one training step.
    let mut totals: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (op, count) in xception_ops(size) {
        let (mut forward, mut both) = (Vec::new(), Vec::new());
        let (x, weight) = op.inputs(batch, &device);
        for round in 0..=repeats {
            let start = Instant::now();
            let y = op.run(&x, &weight, &device);
            let _ = y.clone().into_data();
            let forward_seconds = start.elapsed().as_secs_f64();
            let _ = y.backward();
            if round > 0 {
                forward.push(forward_seconds);
                both.push(start.elapsed().as_secs_f64());
            }
        }
        let (forward, both) = (median(forward), median(both));
        let total = totals.entry(op.kind()).or_default();
        total.0 += forward * count as f64;
        total.1 += (both - forward).max(0.0) * count as f64;
    }
    let sum: f64 = totals.values().map(|(f, b)| f + b).sum();
    println!("batch {batch}, {size}x{size}, seconds per training step (median of {repeats}):");
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>6}",
        "operation", "forward", "backward", "total", "share"
    );
    let mut rows: Vec<_> = totals.into_iter().collect();
    rows.sort_by(|a, b| (b.1.0 + b.1.1).total_cmp(&(a.1.0 + a.1.1)));
    for (kind, (forward, backward)) in rows {
        let total = forward + backward;
        println!(
            "{kind:<24} {forward:>9.3} {backward:>9.3} {total:>9.3} {:>5.1}%",
            100.0 * total / sum
        );
    }
    println!("{:<24} {:>9} {:>9} {sum:>9.3}", "all", "", "");
}

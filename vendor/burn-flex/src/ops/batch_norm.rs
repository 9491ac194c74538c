//! Batch normalisation in one or two passes per channel (xception-burn's patch, see
//! `PATCHES.md` at the crate root).
//!
//! Burn's default `batch_norm_train` and `batch_norm_train_backward` build the statistics
//! out of tensor operations: each transposes the activation to `[channels, rest]` (a full
//! copy, twice) and makes about ten elementwise passes over it. On a CPU those passes are
//! memory-bound and cost as much as the convolutions around them. Here, for f32 tensors,
//! every channel is one task (in parallel with rayon): the forward reads the activation
//! twice (mean, then the centred variance) and writes the output once; the backward reads
//! the activation and the output gradient twice (two sums, then the input gradient) and
//! writes once. Sums run in 16 f32 lanes per row and add up over rows in f64.
//!
//! Other float types return `None` and take Burn's default path (copied below, it is a
//! trait default upstream).

use alloc::vec;
use alloc::vec::Vec;

use burn_backend::ops::{BatchNormTrain, BatchNormTrainBackward, FloatTensorOps, ModuleOps};
use burn_backend::{DType, Scalar, TensorMetadata};
use burn_std::{Bytes, Shape};

use crate::{Flex, FlexTensor, Layout};

/// A contiguous f32 activation seen as `[batch, channels, spatial]`.
struct Planes {
    tensor: FlexTensor,
    batch: usize,
    channels: usize,
    spatial: usize,
}

impl Planes {
    fn new(tensor: &FlexTensor) -> Option<Self> {
        let shape = tensor.layout().shape();
        if tensor.dtype() != DType::F32 || shape.num_dims() < 2 {
            return None;
        }
        let (batch, channels) = (shape[0], shape[1]);
        let spatial = shape.iter().skip(2).product();
        Some(Self {
            tensor: tensor.to_contiguous(),
            batch,
            channels,
            spatial,
        })
    }

    fn data(&self) -> &[f32] {
        self.tensor.storage()
    }

    /// Elements per channel.
    fn count(&self) -> usize {
        self.batch * self.spatial
    }

    /// The `spatial`-long rows of channel `c`, one per batch item.
    fn rows<'a>(&self, data: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + use<'a> {
        let (channels, spatial) = (self.channels, self.spatial);
        (0..self.batch).map(move |n| {
            let start = (n * channels + c) * spatial;
            &data[start..start + spatial]
        })
    }
}

/// A `[channels]` f32 parameter or statistic, or `None` when it is not f32.
pub(crate) fn per_channel(tensor: &FlexTensor) -> Option<Vec<f32>> {
    (tensor.dtype() == DType::F32).then(|| tensor.to_contiguous().storage::<f32>().to_vec())
}

pub(crate) fn channel_tensor(values: Vec<f32>) -> FlexTensor {
    let shape = Shape::from(vec![values.len()]);
    FlexTensor::new(Bytes::from_elems(values), Layout::contiguous(shape), DType::F32)
}

/// Sum of `f(a[i], b[i])` over a row, in 16 lanes so that it vectorises.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    const LANES: usize = 16;
    let b = &b[..a.len()];
    let mut lanes = [0.0f32; LANES];
    let (a_chunks, a_tail) = a.as_chunks::<LANES>();
    let (b_chunks, b_tail) = b.as_chunks::<LANES>();
    for (a, b) in a_chunks.iter().zip(b_chunks) {
        for l in 0..LANES {
            lanes[l] += f(a[l], b[l]);
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(&a, &b)| f(a, b)).sum();
    lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail)
}

multiversion! {
    fn row_sum(a: &[f32]) -> f64 {
        lane_sum(a, a, |a, _| a)
    }
}

multiversion! {
    fn row_centred_squares(a: &[f32], mean: f32) -> f64 {
        lane_sum(a, a, |a, _| (a - mean) * (a - mean))
    }
}

multiversion! {
    fn row_dot_centred(g: &[f32], x: &[f32], mean: f32) -> f64 {
        lane_sum(g, x, |g, x| g * (x - mean))
    }
}

multiversion! {
    fn affine_row(out: &mut [f32], a: &[f32], scale: f32, a_offset: f32, shift: f32) {
        for (o, &a) in out.iter_mut().zip(a) {
            *o = scale * (a - a_offset) + shift;
        }
    }
}

multiversion! {
    fn affine2_row(out: &mut [f32], a: &[f32], b: &[f32], affine: Affine) {
        let Affine { scale, a_offset, b_scale, b_offset, shift } = affine;
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = scale * (a - a_offset) + b_scale * (b - b_offset) + shift;
        }
    }
}

/// Raw output pointer shared by the channel tasks, which write disjoint rows.
#[derive(Clone, Copy)]
struct Output(*mut f32);
// SAFETY: every task writes only the rows of its own channel.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

/// Runs `work(c)` for every channel, in parallel with rayon, collecting the results.
fn per_channel_tasks<T: Send>(channels: usize, work: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        (0..channels).into_par_iter().map(work).collect()
    }
    #[cfg(not(feature = "rayon"))]
    {
        (0..channels).map(work).collect()
    }
}

/// One channel's `out = scale * (a - a_offset) + b_scale * (b - b_offset) + shift`.
#[derive(Clone, Copy, Default)]
struct Affine {
    scale: f32,
    a_offset: f32,
    b_scale: f32,
    b_offset: f32,
    shift: f32,
}

/// `out = scale * (a - a_offset) + shift` per channel, plus `b_scale * (b - b_offset)` when
/// `second` (`b`) is given, into a new tensor shaped like `first` (`a`). Offsets are
/// subtracted before scaling so that a large mean does not cancel away the result.
fn write_affine(first: &Planes, shape: Shape, affine: &[Affine], second: Option<&Planes>) -> FlexTensor {
    let a_data = first.data();
    let b_data = second.map(Planes::data);
    let mut out = vec![0.0f32; a_data.len()];
    let out_ptr = Output(out.as_mut_ptr());
    let (channels, spatial) = (first.channels, first.spatial);
    per_channel_tasks(channels, |c| {
        let out_ptr = out_ptr;
        let coefficients = affine[c];
        for n in 0..first.batch {
            let start = (n * channels + c) * spatial;
            // SAFETY: rows of channel `c` are written by this task only, within `out`.
            let out_row = unsafe { core::slice::from_raw_parts_mut(out_ptr.0.add(start), spatial) };
            let a_row = &a_data[start..start + spatial];
            match b_data {
                Some(b_data) => {
                    affine2_row(out_row, a_row, &b_data[start..start + spatial], coefficients)
                }
                None => {
                    let Affine { scale, a_offset, shift, .. } = coefficients;
                    affine_row(out_row, a_row, scale, a_offset, shift)
                }
            }
        }
    });
    FlexTensor::new(Bytes::from_elems(out), Layout::contiguous(shape), DType::F32)
}

/// `gamma * (x - mean) / sqrt(variance + epsilon) + beta`, or `None` when not all f32.
pub fn batch_norm(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    mean: &FlexTensor,
    variance: &FlexTensor,
    epsilon: f64,
) -> Option<FlexTensor> {
    let planes = Planes::new(x)?;
    let (gamma, beta) = (per_channel(gamma)?, per_channel(beta)?);
    let (mean, variance) = (per_channel(mean)?, per_channel(variance)?);
    let affine: Vec<Affine> = (0..planes.channels)
        .map(|c| Affine {
            scale: (f64::from(gamma[c]) / (f64::from(variance[c]) + epsilon).sqrt()) as f32,
            a_offset: mean[c],
            shift: beta[c],
            ..Affine::default()
        })
        .collect();
    Some(write_affine(&planes, x.layout().shape().clone(), &affine, None))
}

/// Batch normalisation with the batch's own statistics (biased variance), or `None` when
/// not all f32.
pub fn batch_norm_train(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
) -> Option<BatchNormTrain<Flex>> {
    let planes = Planes::new(x)?;
    let (gamma, beta) = (per_channel(gamma)?, per_channel(beta)?);
    let data = planes.data();
    let count = planes.count() as f64;
    let statistics = per_channel_tasks(planes.channels, |c| {
        let sum: f64 = planes.rows(data, c).map(row_sum).sum();
        let mean = sum / count;
        let centred = mean as f32;
        let squares: f64 = planes
            .rows(data, c)
            .map(|row| row_centred_squares(row, centred))
            .sum();
        (mean, squares / count)
    });
    let affine: Vec<Affine> = statistics
        .iter()
        .enumerate()
        .map(|(c, &(mean, variance))| Affine {
            scale: (f64::from(gamma[c]) / (variance + epsilon).sqrt()) as f32,
            a_offset: mean as f32,
            shift: beta[c],
            ..Affine::default()
        })
        .collect();
    let output = write_affine(&planes, x.layout().shape().clone(), &affine, None);
    let (mean, variance): (Vec<f32>, Vec<f32>) =
        statistics.iter().map(|&(m, v)| (m as f32, v as f32)).unzip();
    Some(BatchNormTrain::new(output, channel_tensor(mean), channel_tensor(variance)))
}

/// Gradients of [batch_norm_train] with respect to the input, `gamma` and `beta`, or `None`
/// when not all f32.
pub fn batch_norm_train_backward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    mean: &FlexTensor,
    variance: &FlexTensor,
    epsilon: f64,
    output_grad: &FlexTensor,
) -> Option<BatchNormTrainBackward<Flex>> {
    let planes = Planes::new(x)?;
    let grads = Planes::new(output_grad)?;
    if grads.tensor.layout().shape() != planes.tensor.layout().shape() {
        return None;
    }
    let gamma = per_channel(gamma)?;
    let (mean, variance) = (per_channel(mean)?, per_channel(variance)?);
    let (x_data, g_data) = (planes.data(), grads.data());
    let count = planes.count() as f64;
    // Per channel: sum(dy) and sum(dy * (x - mean)).
    let sums = per_channel_tasks(planes.channels, |c| {
        let m = mean[c];
        planes
            .rows(x_data, c)
            .zip(grads.rows(g_data, c))
            .fold((0.0f64, 0.0f64), |(dy, dy_xc), (x_row, g_row)| {
                (
                    dy + row_sum(g_row),
                    dy_xc + row_dot_centred(g_row, x_row, m),
                )
            })
    });
    let mut gamma_grad = Vec::with_capacity(planes.channels);
    let mut beta_grad = Vec::with_capacity(planes.channels);
    // dx = k * (dy - mean(dy) - x_hat * mean(dy * x_hat)) with k = gamma / std and
    // x_hat = (x - mean) / std: dx = k * dy - k / std * mean(dy * x_hat) * (x - mean) - k * mean(dy).
    let affine: Vec<Affine> = sums
        .iter()
        .enumerate()
        .map(|(c, &(sum_dy, sum_dy_xc))| {
            let inv_std = 1.0 / (f64::from(variance[c]) + epsilon).sqrt();
            let k = f64::from(gamma[c]) * inv_std;
            let sum_dy_x_hat = sum_dy_xc * inv_std;
            gamma_grad.push(sum_dy_x_hat as f32);
            beta_grad.push(sum_dy as f32);
            Affine {
                scale: k as f32,
                a_offset: 0.0,
                b_scale: (-k * inv_std * sum_dy_x_hat / count) as f32,
                b_offset: mean[c],
                shift: (-k * sum_dy / count) as f32,
            }
        })
        .collect();
    let x_grad = write_affine(&grads, x.layout().shape().clone(), &affine, Some(&planes));
    Some(BatchNormTrainBackward::new(
        x_grad,
        channel_tensor(gamma_grad),
        channel_tensor(beta_grad),
    ))
}

// Burn 0.22.1's default `batch_norm`, `batch_norm_train` and `batch_norm_train_backward`
// (trait defaults of `ModuleOps`), for other float types.

fn per_channel_shape(rank: usize, channels: usize) -> Shape {
    let mut dims = vec![1; rank];
    dims[1] = channels;
    Shape::from(dims)
}

/// Burn's default `batch_norm`.
pub fn default_batch_norm(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: FlexTensor,
    variance: FlexTensor,
    epsilon: f64,
) -> FlexTensor {
    let shape = per_channel_shape(x.shape().num_dims(), x.shape()[1]);
    let gamma = Flex::float_reshape(gamma, shape.clone());
    let beta = Flex::float_reshape(beta, shape.clone());
    let mean = Flex::float_reshape(mean, shape.clone());
    let variance = Flex::float_reshape(variance, shape);
    let std = Flex::float_sqrt(Flex::float_add_scalar(variance, Scalar::Float(epsilon)));
    let normalized = Flex::float_div(Flex::float_sub(x, mean), std);
    Flex::float_add(Flex::float_mul(normalized, gamma), beta)
}

/// Burn's default `batch_norm_train`.
pub fn default_batch_norm_train(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> BatchNormTrain<Flex> {
    let shape = x.shape();
    let channels = shape[1];
    let flattened = Shape::new([channels, shape.num_elements() / channels]);
    let per_channel = per_channel_shape(shape.num_dims(), channels);
    let mean = Flex::float_mean_dim(
        Flex::float_reshape(Flex::float_swap_dims(x.clone(), 0, 1), flattened.clone()),
        1,
    );
    let mean = Flex::float_reshape(mean, per_channel);
    let centered = Flex::float_sub(x.clone(), mean.clone());
    let variance = Flex::float_mean_dim(
        Flex::float_reshape(
            Flex::float_swap_dims(Flex::float_mul(centered.clone(), centered), 0, 1),
            flattened,
        ),
        1,
    );
    let mean = Flex::float_reshape(mean, Shape::new([channels]));
    let variance = Flex::float_reshape(variance, Shape::new([channels]));
    let output = Flex::batch_norm(x, gamma, beta, mean.clone(), variance.clone(), epsilon);
    BatchNormTrain::new(output, mean, variance)
}

/// Burn's default `batch_norm_train_backward`.
pub fn default_batch_norm_train_backward(
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    variance: FlexTensor,
    epsilon: f64,
    output_grad: FlexTensor,
) -> BatchNormTrainBackward<Flex> {
    let shape = x.shape();
    let channels = shape[1];
    let flattened = Shape::new([channels, shape.num_elements() / channels]);
    let per_channel = per_channel_shape(shape.num_dims(), channels);
    let inv_std = Flex::float_reshape(
        Flex::float_recip(Flex::float_sqrt(Flex::float_add_scalar(
            variance,
            Scalar::Float(epsilon),
        ))),
        per_channel.clone(),
    );
    let normalized = Flex::float_mul(
        Flex::float_sub(x, Flex::float_reshape(mean, per_channel.clone())),
        inv_std.clone(),
    );
    let output_grad_flat = Flex::float_reshape(
        Flex::float_swap_dims(output_grad.clone(), 0, 1),
        flattened.clone(),
    );
    let normalized_grad_flat = Flex::float_reshape(
        Flex::float_swap_dims(
            Flex::float_mul(output_grad.clone(), normalized.clone()),
            0,
            1,
        ),
        flattened,
    );
    let beta_grad = Flex::float_sum_dim(output_grad_flat.clone(), 1);
    let gamma_grad = Flex::float_sum_dim(normalized_grad_flat.clone(), 1);
    let mean_grad = Flex::float_reshape(
        Flex::float_mean_dim(output_grad_flat, 1),
        per_channel.clone(),
    );
    let mean_normalized_grad = Flex::float_reshape(
        Flex::float_mean_dim(normalized_grad_flat, 1),
        per_channel.clone(),
    );
    let centred_grad = Flex::float_sub(output_grad, mean_grad);
    let projected = Flex::float_mul(normalized, mean_normalized_grad);
    let scale = Flex::float_mul(Flex::float_reshape(gamma, per_channel), inv_std);
    let x_grad = Flex::float_mul(scale, Flex::float_sub(centred_grad, projected));
    BatchNormTrainBackward::new(
        x_grad,
        Flex::float_reshape(gamma_grad, Shape::new([channels])),
        Flex::float_reshape(beta_grad, Shape::new([channels])),
    )
}

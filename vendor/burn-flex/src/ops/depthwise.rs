//! Stride-1 depthwise 2D convolutions, f32: forward, input gradient and weight gradient
//! (xception-burn's patch, see `PATCHES.md` at the crate root).
//!
//! Each (image, channel) plane is copied into a zero "canvas" with the padding around it,
//! whose rows are `out_w + kernel_w - 1` wide. On that canvas every kernel tap is a fixed
//! shift of one flat index, so a whole plane is one long loop (`out[p] = sum_t w_t *
//! canvas[p + shift_t]`, outputs in canvas-wide rows, the extra columns dropped) that
//! vectorises to full SIMD width, with no per-row edge cases, even on Xception's 19x19
//! planes. The input gradient is the same loop on the output gradient with the kernel
//! flipped; the weight gradient is one flat dot product per tap.
//!
//! Strided ones keep `conv_grad`'s and flex's paths.

use alloc::vec;
use alloc::vec::Vec;

use burn_backend::DType;
use burn_backend::ops::ConvOptions;
use burn_std::{Bytes, Shape};

use crate::{FlexTensor, Layout};

/// A stride-1 depthwise convolution's sizes, `[height, width]` pairs.
struct Depthwise {
    batch: usize,
    channels: usize,
    input: [usize; 2],
    output: [usize; 2],
    kernel: [usize; 2],
    pad_begin: [usize; 2],
}

impl Depthwise {
    fn new(x_shape: &Shape, w_shape: &Shape, options: &ConvOptions<2>) -> Option<Self> {
        if x_shape.num_dims() != 4 || w_shape.num_dims() != 4 {
            return None;
        }
        let channels = x_shape[1];
        let kernel = [w_shape[2], w_shape[3]];
        let depthwise = options.groups == channels
            && w_shape[0] == channels
            && w_shape[1] == 1
            && options.stride == [1, 1]
            && options.dilation == [1, 1]
            && kernel.iter().all(|&k| k > 0);
        let input = [x_shape[2], x_shape[3]];
        // Padding up to kernel - 1 on each side keeps the flipped kernel's canvas valid.
        let padding_fits = (0..2).all(|d| {
            let (begin, end) = options.padding[d];
            begin < kernel[d] && end < kernel[d] && input[d] + begin + end >= kernel[d]
        });
        if !depthwise || !padding_fits || channels == 0 || x_shape[0] == 0 {
            return None;
        }
        let output = [0, 1].map(|d| {
            let (begin, end) = options.padding[d];
            input[d] + begin + end + 1 - kernel[d]
        });
        Some(Self {
            batch: x_shape[0],
            channels,
            input,
            output,
            kernel,
            pad_begin: [options.padding[0].0, options.padding[1].0],
        })
    }

    fn canvas_width(&self, rows_out: [usize; 2]) -> usize {
        rows_out[1] + self.kernel[1] - 1
    }

    /// Flat canvas offsets of the kernel taps, row-major.
    fn shifts(&self, canvas_width: usize) -> Vec<usize> {
        let [kh, kw] = self.kernel;
        (0..kh)
            .flat_map(|a| (0..kw).map(move |b| a * canvas_width + b))
            .collect()
    }
}

/// `plane` (`size`) placed at `top_left` in a zero canvas for outputs of size `out`: rows
/// `out[1] + kernel[1] - 1` wide, `out[0] + kernel[0] - 1` of them, plus `kernel[1]` zeros
/// at the end so that the last row's shifted reads stay inside.
fn fill_canvas(
    canvas: &mut Vec<f32>,
    plane: &[f32],
    size: [usize; 2],
    top_left: [usize; 2],
    out: [usize; 2],
    kernel: [usize; 2],
) {
    let width = out[1] + kernel[1] - 1;
    let height = out[0] + kernel[0] - 1;
    canvas.clear();
    canvas.resize(height * width + kernel[1], 0.0);
    for (r, row) in plane.chunks_exact(size[1]).enumerate() {
        let start = (top_left[0] + r) * width + top_left[1];
        canvas[start..start + size[1]].copy_from_slice(row);
    }
}

multiversion! {
    /// `out[p] = sum_t weights[t] * canvas[p + shifts[t]]` for every `p` of `out`.
    fn shifted_sum(out: &mut [f32], canvas: &[f32], shifts: &[usize], weights: &[f32]) {
        let n = out.len();
        if shifts.len() == 9 {
            let tap = |t: usize| &canvas[shifts[t]..shifts[t] + n];
            let (s0, s1, s2, s3, s4) = (tap(0), tap(1), tap(2), tap(3), tap(4));
            let (s5, s6, s7, s8) = (tap(5), tap(6), tap(7), tap(8));
            let w = &weights[..9];
            for i in 0..n {
                out[i] = w[0] * s0[i]
                    + w[1] * s1[i]
                    + w[2] * s2[i]
                    + w[3] * s3[i]
                    + w[4] * s4[i]
                    + w[5] * s5[i]
                    + w[6] * s6[i]
                    + w[7] * s7[i]
                    + w[8] * s8[i];
            }
            return;
        }
        out.fill(0.0);
        for (&shift, &w) in shifts.iter().zip(weights) {
            for (o, &v) in out.iter_mut().zip(&canvas[shift..shift + n]) {
                *o += w * v;
            }
        }
    }
}

multiversion! {
    /// `sum_i a[i] * b[i]`, in 32 f32 lanes, returned as f64.
    fn dot(a: &[f32], b: &[f32]) -> f64 {
        const LANES: usize = 32;
        let b = &b[..a.len()];
        let mut lanes = [0.0f32; LANES];
        let (a_chunks, a_tail) = a.as_chunks::<LANES>();
        let (b_chunks, b_tail) = b.as_chunks::<LANES>();
        for (a, b) in a_chunks.iter().zip(b_chunks) {
            for l in 0..LANES {
                lanes[l] += a[l] * b[l];
            }
        }
        let tail: f32 = a_tail.iter().zip(b_tail).map(|(a, b)| a * b).sum();
        lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail)
    }
}

/// Runs `work(i, chunk, scratch)` for each `chunk_len`-long chunk of `out`, in parallel with
/// rayon, each thread reusing one scratch buffer.
fn for_each_plane(
    out: &mut [f32],
    chunk_len: usize,
    work: impl Fn(usize, &mut [f32], &mut Vec<f32>, &mut Vec<f32>) + Sync + Send,
) {
    if chunk_len == 0 {
        return;
    }
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk_len).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(canvas, wide), (i, chunk)| work(i, chunk, canvas, wide),
        );
    }
    #[cfg(not(feature = "rayon"))]
    {
        let (mut canvas, mut wide) = (Vec::new(), Vec::new());
        for (i, chunk) in out.chunks_mut(chunk_len).enumerate() {
            work(i, chunk, &mut canvas, &mut wide);
        }
    }
}

/// Correlates every plane of `source` (`source_size`, placed at `top_left`) with its
/// channel's `weights` (flipped when `flip`), giving planes of `out_size`.
fn correlate(
    geometry: &Depthwise,
    source: &[f32],
    source_size: [usize; 2],
    top_left: [usize; 2],
    out_size: [usize; 2],
    weights: &[f32],
    flip: bool,
) -> Vec<f32> {
    let (source_plane, out_plane) = (source_size[0] * source_size[1], out_size[0] * out_size[1]);
    let taps = geometry.kernel[0] * geometry.kernel[1];
    let width = geometry.canvas_width(out_size);
    let shifts = geometry.shifts(width);
    let channels = geometry.channels;
    let mut out = vec![0.0f32; geometry.batch * channels * out_plane];
    for_each_plane(&mut out, out_plane, |plane, out, canvas, wide| {
        let c = plane % channels;
        let mut w = weights[c * taps..(c + 1) * taps].to_vec();
        if flip {
            w.reverse();
        }
        let source = &source[plane * source_plane..(plane + 1) * source_plane];
        fill_canvas(canvas, source, source_size, top_left, out_size, geometry.kernel);
        wide.clear();
        wide.resize(out_size[0] * width, 0.0);
        shifted_sum(wide, canvas, &shifts, &w);
        for (row, wide_row) in out.chunks_exact_mut(out_size[1]).zip(wide.chunks_exact(width)) {
            row.copy_from_slice(&wide_row[..out_size[1]]);
        }
    });
    out
}

fn f32_data(tensor: &FlexTensor) -> Option<FlexTensor> {
    (tensor.dtype() == DType::F32).then(|| tensor.to_contiguous())
}

/// The forward pass of a stride-1 depthwise convolution, or `None` when it is not one.
pub fn forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let geometry = Depthwise::new(x.layout().shape(), weight.layout().shape(), options)?;
    let (x, weight) = (f32_data(x)?, f32_data(weight)?);
    let bias = match bias {
        Some(bias) => Some(f32_data(bias)?),
        None => None,
    };
    let mut out = correlate(
        &geometry,
        x.storage(),
        geometry.input,
        geometry.pad_begin,
        geometry.output,
        weight.storage(),
        false,
    );
    if let Some(bias) = bias {
        let bias: &[f32] = bias.storage();
        let plane = geometry.output[0] * geometry.output[1];
        for (i, values) in out.chunks_exact_mut(plane).enumerate() {
            let b = bias[i % geometry.channels];
            values.iter_mut().for_each(|v| *v += b);
        }
    }
    let [out_h, out_w] = geometry.output;
    let shape = Shape::from(vec![geometry.batch, geometry.channels, out_h, out_w]);
    Some(FlexTensor::new(Bytes::from_elems(out), Layout::contiguous(shape), DType::F32))
}

/// The input gradient of a stride-1 depthwise convolution (the output gradient correlated
/// with the flipped kernel), or `None` when it is not one.
pub fn x_backward(
    x_shape: &Shape,
    weight: &FlexTensor,
    output_grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let geometry = Depthwise::new(x_shape, weight.layout().shape(), options)?;
    if output_grad.layout().shape().dims::<4>() != [geometry.batch, geometry.channels, geometry.output[0], geometry.output[1]] {
        return None;
    }
    let (grad, weight) = (f32_data(output_grad)?, f32_data(weight)?);
    let top_left = [0, 1].map(|d| geometry.kernel[d] - 1 - geometry.pad_begin[d]);
    let dx = correlate(
        &geometry,
        grad.storage(),
        geometry.output,
        top_left,
        geometry.input,
        weight.storage(),
        true,
    );
    Some(FlexTensor::new(Bytes::from_elems(dx), Layout::contiguous(x_shape.clone()), DType::F32))
}

/// The weight gradient of a stride-1 depthwise convolution, or `None` when it is not one.
pub fn weight_backward(
    x: &FlexTensor,
    w_shape: &Shape,
    output_grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let geometry = Depthwise::new(x.layout().shape(), w_shape, options)?;
    let [out_h, out_w] = geometry.output;
    if output_grad.layout().shape().dims::<4>() != [geometry.batch, geometry.channels, out_h, out_w] {
        return None;
    }
    let (x, grad) = (f32_data(x)?, f32_data(output_grad)?);
    let (x_data, g_data): (&[f32], &[f32]) = (x.storage(), grad.storage());
    let taps = geometry.kernel[0] * geometry.kernel[1];
    let width = geometry.canvas_width(geometry.output);
    let shifts = geometry.shifts(width);
    let (in_plane, out_plane) = (geometry.input[0] * geometry.input[1], out_h * out_w);
    let (batch, channels) = (geometry.batch, geometry.channels);
    let mut dw = vec![0.0f32; channels * taps];
    // One task per channel: sum over the batch of each tap's flat dot product between the
    // output gradient (in canvas-wide rows, zero beyond out_w) and the shifted canvas.
    for_each_plane(&mut dw, taps, |c, dw_c, canvas, wide| {
        let mut sums = vec![0.0f64; taps];
        for n in 0..batch {
            let plane = n * channels + c;
            let xs = &x_data[plane * in_plane..(plane + 1) * in_plane];
            fill_canvas(canvas, xs, geometry.input, geometry.pad_begin, geometry.output, geometry.kernel);
            wide.clear();
            wide.resize(out_h * width, 0.0);
            let g = &g_data[plane * out_plane..(plane + 1) * out_plane];
            for (wide_row, g_row) in wide.chunks_exact_mut(width).zip(g.chunks_exact(out_w)) {
                wide_row[..out_w].copy_from_slice(g_row);
            }
            for (sum, &shift) in sums.iter_mut().zip(&shifts) {
                *sum += dot(wide, &canvas[shift..shift + wide.len()]);
            }
        }
        for (out, sum) in dw_c.iter_mut().zip(sums) {
            *out = sum as f32;
        }
    });
    Some(FlexTensor::new(Bytes::from_elems(dw), Layout::contiguous(w_shape.clone()), DType::F32))
}

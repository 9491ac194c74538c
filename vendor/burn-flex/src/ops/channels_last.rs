//! Channels-last f32 kernels for convolutions, BatchNorm and max-pooling (xception-burn's
//! patch, see `PATCHES.md` at the crate root).
//!
//! Flex keeps 4-D activations in NCHW order. On a CPU that order is slow for the small
//! feature maps of a network like Xception: a plane of its middle flow holds 19x19 values
//! at 299x299 pixels and 6x6 at 96x96, too few to vectorise along, and a 1x1 convolution
//! becomes one matrix product per image, packing the same weights again for each. Here the
//! activations are NCHW tensors whose memory is NHWC (strides `[h*w*c, 1, w*c, c]`,
//! PyTorch's `channels_last`): a 1x1 convolution is one product over the whole batch, the
//! dense convolution one im2col product per image, and depthwise convolutions, BatchNorm
//! and max-pooling run along the channels of each pixel.
//!
//! f32 2-D convolutions (1x1, depthwise with one filter per channel, dense with one group;
//! no dilation) return channels-last tensors and take any input layout, copying an input
//! that is not channels-last. BatchNorm and max-pooling take this path for channels-last
//! inputs and keep their layout; flex's element-wise operations keep it too (see
//! `Layout::is_dense_permutation`). Everything else sees an ordinary strided tensor.

use alloc::borrow::Cow;
use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;
use core::ops::Range;

use burn_backend::DType;
use burn_backend::ops::{BatchNormTrain, BatchNormTrainBackward, ConvOptions};
use burn_std::{Bytes, Shape};

use crate::ops::batch_norm::{channel_tensor, per_channel};
use crate::ops::conv_grad::{for_each_plane, gemm_f32, gemm_new_f32, threads, worth_parallel};
use crate::{Flex, FlexTensor, Layout};

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod fused;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub use fused::{PackedWeights, conv2d_bias_relu, separable_conv2d};

/// The fused convolutions (`fused.rs`) are x86-64 AVX-512 code: elsewhere there are no
/// packed weights, and the caller runs the ops one by one.
#[cfg(not(all(feature = "std", target_arch = "x86_64")))]
#[derive(Clone, Debug)]
pub struct PackedWeights(core::convert::Infallible);

#[cfg(not(all(feature = "std", target_arch = "x86_64")))]
impl PackedWeights {
    /// Always `None` here.
    pub fn new(_weights: &FlexTensor) -> Option<Self> {
        None
    }
}

/// Always `None` here (see [PackedWeights]).
#[cfg(not(all(feature = "std", target_arch = "x86_64")))]
pub fn separable_conv2d(
    _x: &FlexTensor,
    _relu_input: bool,
    _depthwise: &FlexTensor,
    _padding: [usize; 2],
    _pointwise: &PackedWeights,
    _bias: Option<&FlexTensor>,
    _residual: Option<&FlexTensor>,
) -> Option<FlexTensor> {
    None
}

/// Always `None` here (see [PackedWeights]).
#[cfg(not(all(feature = "std", target_arch = "x86_64")))]
pub fn conv2d_bias_relu(
    _x: &FlexTensor,
    _weights: &PackedWeights,
    _stride: [usize; 2],
    _padding: [(usize, usize); 2],
    _bias: Option<&FlexTensor>,
    _relu: bool,
) -> Option<FlexTensor> {
    None
}

// ---------------------------------------------------------------------------------------
// Layout

/// The most values (f32) of im2col patches a dense convolution holds at once: 32 MB.
const PATCH_BUDGET: usize = 8 << 20;
/// Rows (output pixels) a dense convolution's product should have, images grouped to reach
/// it where their maps are small.
const PRODUCT_ROWS: usize = 2048;

/// Strides of a channels-last tensor of logical shape `[n, c, h, w]`.
fn nhwc_strides([_, c, h, w]: [usize; 4]) -> Vec<isize> {
    vec![(h * w * c) as isize, 1, (w * c) as isize, c as isize]
}

/// Whether `layout` is a 4-D tensor stored channels-last from offset 0 (dimensions of size
/// one may have any stride).
pub fn is_channels_last(layout: &Layout) -> bool {
    let shape = layout.shape();
    if shape.num_dims() != 4 || layout.start_offset() != 0 {
        return false;
    }
    let expected = nhwc_strides(shape.dims::<4>());
    (0..4).all(|d| shape[d] == 1 || layout.strides()[d] == expected[d])
}

/// Whether `tensor` is an f32 channels-last tensor that is not also plain NCHW (the layouts
/// coincide when a tensor has one channel or one pixel).
fn takes_channels_last(tensor: &FlexTensor) -> bool {
    tensor.dtype() == DType::F32
        && is_channels_last(tensor.layout())
        && !tensor.layout().is_contiguous()
}

/// A channels-last f32 tensor of logical shape `dims` holding `data` in NHWC order.
fn channels_last_tensor(data: Vec<f32>, dims: [usize; 4]) -> FlexTensor {
    let layout = Layout::new(Shape::from(dims.to_vec()), nhwc_strides(dims), 0);
    FlexTensor::new(Bytes::from_elems(data), layout, DType::F32)
}

/// A vector of `len` values that `fill` writes, without zeroing the memory first: on these
/// memory-bound loops zeroing is one more pass over the output (and `calloc` cannot skip it
/// for the recycled memory the `xception` binary keeps).
///
/// # Safety
/// `fill` must write every element of the slice it is given.
unsafe fn written<T>(len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller guarantees that `fill` initialised all `len` values.
    unsafe { out.set_len(len) };
    out
}

/// A 4-D f32 tensor's elements in NHWC order: its storage when it is channels-last, a copy
/// otherwise.
fn nhwc_data(tensor: &FlexTensor) -> Cow<'_, [f32]> {
    let layout = tensor.layout();
    let dims = layout.shape().dims::<4>();
    let count: usize = dims.iter().product();
    let src: &[f32] = tensor.storage();
    if is_channels_last(layout) {
        return Cow::Borrowed(&src[..count]);
    }
    let [_, c, h, w] = dims;
    if count == 0 {
        return Cow::Owned(Vec::new());
    }
    let s: Vec<isize> = layout.strides().to_vec();
    let offset = layout.start_offset() as isize;
    // SAFETY: every pixel of every row is written.
    let out = unsafe {
        written(count, |out| {
            for_each_plane(out, w * c, |row, dst| {
                let (b, y) = ((row / h) as isize, (row % h) as isize);
                let base = offset + b * s[0] + y * s[2];
                for (x, pixel) in dst.chunks_exact_mut(c).enumerate() {
                    let at = base + x as isize * s[3];
                    for (ch, value) in pixel.iter_mut().enumerate() {
                        value.write(src[(at + ch as isize * s[1]) as usize]);
                    }
                }
            })
        })
    };
    Cow::Owned(out)
}

/// A contiguous f32 tensor's first `count` values, or `None` for another dtype.
fn f32_values(tensor: &FlexTensor, count: usize) -> Option<FlexTensor> {
    (tensor.dtype() == DType::F32 && tensor.layout().num_elements() == count)
        .then(|| tensor.to_contiguous())
}

/// Splits `0..len` into a few ranges per thread, runs `work` on each (in parallel with
/// rayon) and returns the results in order.
fn map_ranges<T: Send>(len: usize, work: impl Fn(Range<usize>) -> T + Sync + Send) -> Vec<T> {
    let parts = (threads() * 4).clamp(1, len.max(1));
    let ranges = (0..parts).map(|p| p * len / parts..(p + 1) * len / parts);
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        ranges.collect::<Vec<_>>().into_par_iter().map(work).collect()
    }
    #[cfg(not(feature = "rayon"))]
    {
        ranges.map(work).collect()
    }
}

/// Rows per parallel task for row-wise passes over `rows` rows: a few tasks per thread.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(threads() * 8).max(1)
}

// ---------------------------------------------------------------------------------------
// Vector loops (compiled for AVX-512, AVX2+FMA and the baseline; see `multiversion!`)

/// Channels per block of the per-pixel loops below: four AVX-512 vectors of independent
/// sums, held in registers across a kernel's taps (each tap read-modify-writing the output
/// in memory made the depthwise convolution bound by loads and stores).
const BLOCK: usize = 64;

/// Channel blocks of `0..c`: `(start, len)`, `len == BLOCK` but for the last.
fn channel_blocks(c: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..c).step_by(BLOCK).map(move |start| (start, BLOCK.min(c - start)))
}

/// `out[..n] = sum over taps t of pixels[t][start..][..n] * weights[t][start..][..n]`, for
/// `n <= 2 * BLOCK`. Inlined with `n` known, the sums stay in registers.
#[inline(always)]
fn weighted_sum_block(out: &mut [MaybeUninit<f32>], pixels: &[&[f32]], weights: &[&[f32]], start: usize, n: usize) {
    let mut acc = [0.0f32; 2 * BLOCK];
    let acc = &mut acc[..n];
    for (pixel, weight) in pixels.iter().zip(weights) {
        let (pixel, weight) = (&pixel[start..start + n], &weight[start..start + n]);
        for i in 0..n {
            acc[i] += pixel[i] * weight[i];
        }
    }
    for (o, &a) in out[..n].iter_mut().zip(acc.iter()) {
        o.write(a);
    }
}

multiversion! {
    /// One pixel of a depthwise convolution or of its input gradient: for each channel,
    /// `out = sum over taps t of pixels[t] * weights[t]` (the taps that fall inside the
    /// image, in kernel order).
    fn weighted_sum(out: &mut [MaybeUninit<f32>], pixels: &[&[f32]], weights: &[&[f32]]) {
        // Two blocks at a time while they last: eight chains of additions, enough to hide
        // their latency (one block's four chains wait on it).
        let pairs = out.len() / (2 * BLOCK) * (2 * BLOCK);
        for start in (0..pairs).step_by(2 * BLOCK) {
            weighted_sum_block(&mut out[start..start + 2 * BLOCK], pixels, weights, start, 2 * BLOCK);
        }
        for (start, n) in channel_blocks(out.len() - pairs) {
            let (start, out) = (pairs + start, &mut out[pairs + start..pairs + start + n]);
            if n == BLOCK {
                weighted_sum_block(out, pixels, weights, start, BLOCK);
                continue;
            }
            // The last block: whole vectors of 16 with `n` known, then what remains.
            let vectors = n / 16 * 16;
            for at in (0..vectors).step_by(16) {
                weighted_sum_block(&mut out[at..at + 16], pixels, weights, start + at, 16);
            }
            if vectors < n {
                weighted_sum_block(&mut out[vectors..], pixels, weights, start + vectors, n - vectors);
            }
        }
    }
}

/// `acc[..n] += sum over p < count of a[p * a_step + start..][..n] * b[p * b_step + start..][..n]`.
#[inline(always)]
fn dot_pixels_block(acc: &mut [f32], a: &[f32], a_step: usize, b: &[f32], b_step: usize, count: usize, start: usize, n: usize) {
    // Even and odd pixels in separate sums: eight chains of additions instead of four.
    let (mut even, mut odd) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
    let (even, odd) = (&mut even[..n], &mut odd[..n]);
    let pixel = |p: usize| {
        (
            &a[p * a_step + start..p * a_step + start + n],
            &b[p * b_step + start..p * b_step + start + n],
        )
    };
    for q in 0..count / 2 {
        let ((a0, b0), (a1, b1)) = (pixel(2 * q), pixel(2 * q + 1));
        for i in 0..n {
            even[i] += a0[i] * b0[i];
            odd[i] += a1[i] * b1[i];
        }
    }
    if count % 2 == 1 {
        let (a, b) = pixel(count - 1);
        for i in 0..n {
            even[i] += a[i] * b[i];
        }
    }
    for ((o, &e), &d) in acc[..n].iter_mut().zip(even.iter()).zip(odd.iter()) {
        *o += e + d;
    }
}

multiversion! {
    /// `acc += sum over p < count of a[p * a_step..][..c] * b[p * b_step..][..c]` with
    /// `c = acc.len()`: one tap's weight gradient along a row.
    fn dot_pixels(acc: &mut [f32], a: &[f32], a_step: usize, b: &[f32], b_step: usize, count: usize) {
        for (start, n) in channel_blocks(acc.len()) {
            let acc = &mut acc[start..start + n];
            if n == BLOCK {
                dot_pixels_block(acc, a, a_step, b, b_step, count, start, BLOCK);
            } else {
                dot_pixels_block(acc, a, a_step, b, b_step, count, start, n);
            }
        }
    }
}

multiversion! {
    /// `acc += a`.
    fn add_assign(acc: &mut [f32], a: &[f32]) {
        for (o, &a) in acc.iter_mut().zip(a) {
            *o += a;
        }
    }
}

multiversion! {
    /// `total += part`, widening to f64.
    fn add_wide(total: &mut [f64], part: &[f32]) {
        for (t, &p) in total.iter_mut().zip(part) {
            *t += f64::from(p);
        }
    }
}

multiversion! {
    /// `acc += (x - mean)^2`.
    fn add_centred_squares(acc: &mut [f32], x: &[f32], mean: &[f32]) {
        for ((o, &x), &m) in acc.iter_mut().zip(x).zip(mean) {
            *o += (x - m) * (x - m);
        }
    }
}

multiversion! {
    /// `sum_g += g` and `sum_g_xc += g * (x - mean)`.
    fn add_grad_sums(sum_g: &mut [f32], sum_g_xc: &mut [f32], g: &[f32], x: &[f32], mean: &[f32]) {
        let n = sum_g.len();
        let (sum_g_xc, g, x, mean) = (&mut sum_g_xc[..n], &g[..n], &x[..n], &mean[..n]);
        for i in 0..n {
            sum_g[i] += g[i];
            sum_g_xc[i] += g[i] * (x[i] - mean[i]);
        }
    }
}

multiversion! {
    /// `out = scale * (a - offset) + shift`, per channel.
    fn affine(out: &mut [MaybeUninit<f32>], a: &[f32], scale: &[f32], offset: &[f32], shift: &[f32]) {
        let n = out.len();
        let (a, scale, offset, shift) = (&a[..n], &scale[..n], &offset[..n], &shift[..n]);
        for i in 0..n {
            out[i].write(scale[i] * (a[i] - offset[i]) + shift[i]);
        }
    }
}

multiversion! {
    /// `out = a_scale * a + b_scale * (b - b_offset) + shift`, per channel.
    fn affine2(
        out: &mut [MaybeUninit<f32>],
        a: &[f32],
        b: &[f32],
        a_scale: &[f32],
        b_scale: &[f32],
        b_offset: &[f32],
        shift: &[f32],
    ) {
        let n = out.len();
        let (a, b) = (&a[..n], &b[..n]);
        let (a_scale, b_scale, b_offset, shift) = (&a_scale[..n], &b_scale[..n], &b_offset[..n], &shift[..n]);
        for i in 0..n {
            out[i].write(a_scale[i] * a[i] + b_scale[i] * (b[i] - b_offset[i]) + shift[i]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Convolutions

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 1x1, one group, no padding, any stride.
    Pointwise,
    /// One filter per channel (`groups == c_in == c_out`).
    Depthwise,
    /// One group, any kernel.
    Dense,
}

/// Dense weights `[c_out, c_in, taps]` as `[c_out, taps, c_in]`, the order of a patch.
fn patch_major(w: &[f32], c_out: usize, c_in: usize, taps: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; c_out * taps * c_in];
    for (o, dst) in out.chunks_exact_mut(taps * c_in).enumerate() {
        for t in 0..taps {
            for ci in 0..c_in {
                dst[t * c_in + ci] = w[(o * c_in + ci) * taps + t];
            }
        }
    }
    out
}

/// A 2-D convolution's geometry, for the kinds above without dilation.
#[derive(Clone, Copy)]
struct Conv {
    kind: Kind,
    batch: usize,
    c_in: usize,
    c_out: usize,
    in_hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    /// Padding before the first row and column (the end padding only shapes `out_hw`).
    pad: [usize; 2],
    out_hw: [usize; 2],
}

impl Conv {
    fn new(x_shape: &Shape, w_shape: &Shape, options: &ConvOptions<2>) -> Option<Self> {
        if x_shape.num_dims() != 4
            || w_shape.num_dims() != 4
            || options.dilation != [1, 1]
            || options.stride.contains(&0)
        {
            return None;
        }
        let [batch, c_in, h, w] = x_shape.dims::<4>();
        let [c_out, w_in, kh, kw] = w_shape.dims::<4>();
        let unpadded = options.padding == [(0, 0), (0, 0)];
        let kind = if options.groups == 1 && w_in == c_in {
            if [kh, kw] == [1, 1] && unpadded {
                Kind::Pointwise
            } else {
                Kind::Dense
            }
        } else if options.groups == c_in && c_out == c_in && w_in == 1 {
            Kind::Depthwise
        } else {
            return None;
        };
        let padded = [0, 1].map(|d| [h, w][d] + options.padding[d].0 + options.padding[d].1);
        if kh == 0 || kw == 0 || padded[0] < kh || padded[1] < kw || batch * c_in * c_out * h * w == 0 {
            return None;
        }
        Some(Self {
            kind,
            batch,
            c_in,
            c_out,
            in_hw: [h, w],
            kernel: [kh, kw],
            stride: options.stride,
            pad: [options.padding[0].0, options.padding[1].0],
            out_hw: [0, 1].map(|d| (padded[d] - [kh, kw][d]) / options.stride[d] + 1),
        })
    }

    fn in_dims(&self) -> [usize; 4] {
        [self.batch, self.c_in, self.in_hw[0], self.in_hw[1]]
    }

    fn out_dims(&self) -> [usize; 4] {
        [self.batch, self.c_out, self.out_hw[0], self.out_hw[1]]
    }

    fn out_pixels(&self) -> usize {
        self.out_hw[0] * self.out_hw[1]
    }

    fn in_pixels(&self) -> usize {
        self.in_hw[0] * self.in_hw[1]
    }

    fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// The input position that kernel tap `k` of output position `o` reads along axis `d`,
    /// or `None` in the padding.
    #[inline]
    fn input_at(&self, d: usize, o: usize, k: usize) -> Option<usize> {
        (o * self.stride[d] + k)
            .checked_sub(self.pad[d])
            .filter(|&i| i < self.in_hw[d])
    }

    /// The output positions whose kernel tap `k` reads an input position (not the padding)
    /// along axis `d`: `o * stride + k - pad` in `0..size`.
    fn out_range(&self, d: usize, k: usize) -> Range<usize> {
        let s = self.stride[d];
        let end = (self.in_hw[d] + self.pad[d]).saturating_sub(k).div_ceil(s).min(self.out_hw[d]);
        let start = self.pad[d].saturating_sub(k).div_ceil(s).min(end);
        start..end
    }

    /// The output position whose kernel tap `k` reads input position `i` along axis `d`.
    #[inline]
    fn output_at(&self, d: usize, i: usize, k: usize) -> Option<usize> {
        let p = (i + self.pad[d]).checked_sub(k)?;
        (p % self.stride[d] == 0 && p / self.stride[d] < self.out_hw[d]).then(|| p / self.stride[d])
    }

    // --- 1x1 -----------------------------------------------------------------------------

    /// The input at the positions the strides visit, `[batch, out_h, out_w, c_in]`.
    fn subsample<'a>(&self, x: &'a [f32]) -> Cow<'a, [f32]> {
        if self.stride == [1, 1] {
            return Cow::Borrowed(x);
        }
        let ([h, w], [oh, ow], c) = (self.in_hw, self.out_hw, self.c_in);
        // SAFETY: every pixel of every output row is written.
        let out = unsafe {
            written(self.batch * oh * ow * c, |out| {
                for_each_plane(out, ow * c, |row, dst| {
                    let (b, oy) = (row / oh, row % oh);
                    let src_row = (b * h + oy * self.stride[0]) * w * c;
                    for (ox, pixel) in dst.chunks_exact_mut(c).enumerate() {
                        let at = src_row + ox * self.stride[1] * c;
                        pixel.write_copy_of_slice(&x[at..at + c]);
                    }
                })
            })
        };
        Cow::Owned(out)
    }

    /// The reverse of [Self::subsample]: `sub` placed on a zero input-sized buffer.
    fn spread(&self, sub: Vec<f32>) -> Vec<f32> {
        if self.stride == [1, 1] {
            return sub;
        }
        let ([h, w], [oh, ow], c) = (self.in_hw, self.out_hw, self.c_in);
        let mut out = vec![0.0f32; self.batch * h * w * c];
        for_each_plane(&mut out, w * c, |row, dst| {
            let (b, y) = (row / h, row % h);
            if y % self.stride[0] != 0 {
                return;
            }
            let src_row = (b * oh + y / self.stride[0]) * ow * c;
            for ox in 0..ow {
                let at = ox * self.stride[1] * c;
                dst[at..at + c].copy_from_slice(&sub[src_row + ox * c..src_row + (ox + 1) * c]);
            }
        });
        out
    }

    /// `y[p, o] = sum_i x[p, i] * w[o, i]` over all (subsampled) pixels `p` of the batch.
    fn pointwise_forward(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        let x = self.subsample(x);
        let (rows, c_in, c_out) = (self.batch * self.out_pixels(), self.c_in, self.c_out);
        // SAFETY: x is [rows, c_in], w is [c_out, c_in] read transposed.
        unsafe {
            gemm_new_f32(
                [rows, c_out, c_in],
                (&x, c_in, 1),
                (w, 1, c_in),
                worth_parallel(rows, c_out, c_in),
            )
        }
    }

    fn pointwise_x_backward(&self, dy: &[f32], w: &[f32]) -> Vec<f32> {
        let (rows, c_in, c_out) = (self.batch * self.out_pixels(), self.c_in, self.c_out);
        // SAFETY: dy is [rows, c_out], w is [c_out, c_in].
        let dx = unsafe {
            gemm_new_f32(
                [rows, c_in, c_out],
                (dy, c_out, 1),
                (w, c_in, 1),
                worth_parallel(rows, c_in, c_out),
            )
        };
        self.spread(dx)
    }

    fn pointwise_weight_backward(&self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let x = self.subsample(x);
        let (rows, c_in, c_out) = (self.batch * self.out_pixels(), self.c_in, self.c_out);
        // SAFETY: dy is [rows, c_out] read transposed, x is [rows, c_in].
        unsafe {
            gemm_new_f32(
                [c_out, c_in, rows],
                (dy, 1, c_out),
                (&x, c_in, 1),
                worth_parallel(c_out, c_in, rows),
            )
        }
    }

    // --- depthwise -----------------------------------------------------------------------

    /// Depthwise weights `[c, 1, kh, kw]` as `[kh * kw, c]`, one row of channels per tap.
    fn tap_major(&self, w: &[f32]) -> Vec<f32> {
        let (c, taps) = (self.c_in, self.taps());
        (0..taps)
            .flat_map(|t| (0..c).map(move |ch| w[ch * taps + t]))
            .collect()
    }

    /// `y[o] = sum over taps t inside the image of x[at(o, t)] * w[t]`, per channel, one
    /// output pixel at a time.
    fn depthwise_forward(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        let taps = self.tap_major(w);
        let ([oh, ow], c) = (self.out_hw, self.c_in);
        // SAFETY: `weighted_sum` writes every channel of every output pixel.
        unsafe {
            written(self.batch * oh * ow * c, |out| {
                for_each_plane(out, ow * c, |row, dst| {
                    let mut taps_read = TapsRead::new(self);
                    for (ox, pixel_out) in dst.chunks_exact_mut(c).enumerate() {
                        let (pixels, weights) = taps_read.at(x, &taps, row * ow + ox);
                        weighted_sum(pixel_out, pixels, weights);
                    }
                })
            })
        }
    }

    /// `dx[i] = sum over taps t whose output reads i of dy[o(i, t)] * w[t]`, per channel, one
    /// input pixel at a time (a gather: no output is summed into twice).
    fn depthwise_x_backward(&self, dy: &[f32], w: &[f32]) -> Vec<f32> {
        let taps = self.tap_major(w);
        let ([h, w_in], [oh, ow], [kh, kw], c) = (self.in_hw, self.out_hw, self.kernel, self.c_in);
        // SAFETY: `weighted_sum` writes every channel of every input pixel.
        unsafe {
            written(self.batch * h * w_in * c, |dx| {
                for_each_plane(dx, w_in * c, |row, dst| {
                    let (b, iy) = (row / h, row % h);
                    let (mut pixels, mut weights) = (Vec::with_capacity(kh * kw), Vec::with_capacity(kh * kw));
                    for (ix, pixel_out) in dst.chunks_exact_mut(c).enumerate() {
                        pixels.clear();
                        weights.clear();
                        for i in 0..kh {
                            let Some(oy) = self.output_at(0, iy, i) else { continue };
                            for j in 0..kw {
                                let Some(ox) = self.output_at(1, ix, j) else { continue };
                                let at = ((b * oh + oy) * ow + ox) * c;
                                pixels.push(&dy[at..at + c]);
                                weights.push(&taps[(i * kw + j) * c..(i * kw + j + 1) * c]);
                            }
                        }
                        weighted_sum(pixel_out, &pixels, &weights);
                    }
                })
            })
        }
    }

    /// Per tap and channel, `sum dy * x` over the batch: f32 within an output row, f64
    /// across rows.
    fn depthwise_weight_backward(&self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let ([h, w_in], [oh, ow], [kh, kw], c) = (self.in_hw, self.out_hw, self.kernel, self.c_in);
        let taps = self.taps();
        let partials = map_ranges(self.batch * oh, |rows| {
            let mut total = vec![0.0f64; taps * c];
            let mut row_sums = vec![0.0f32; taps * c];
            for row in rows {
                let (b, oy) = (row / oh, row % oh);
                let dy_row = &dy[row * ow * c..(row + 1) * ow * c];
                row_sums.fill(0.0);
                for i in 0..kh {
                    let Some(iy) = self.input_at(0, oy, i) else { continue };
                    let x_row = &x[(b * h + iy) * w_in * c..(b * h + iy + 1) * w_in * c];
                    for j in 0..kw {
                        let acc = &mut row_sums[(i * kw + j) * c..(i * kw + j + 1) * c];
                        let cols = self.out_range(1, j);
                        if let Some(ix) = self.input_at(1, cols.start, j) {
                            let step = self.stride[1] * c;
                            dot_pixels(acc, &dy_row[cols.start * c..], c, &x_row[ix * c..], step, cols.len());
                        }
                    }
                }
                add_wide(&mut total, &row_sums);
            }
            total
        });
        let mut dw = vec![0.0f32; c * taps];
        for t in 0..taps {
            for ch in 0..c {
                dw[ch * taps + t] = partials.iter().map(|p| p[t * c + ch]).sum::<f64>() as f32;
            }
        }
        dw
    }

    // --- dense (im2col) ------------------------------------------------------------------

    /// Length of one im2col row: the kernel's taps, each with all input channels.
    fn patch_len(&self) -> usize {
        self.taps() * self.c_in
    }

    /// Dense weights `[c_out, c_in, kh, kw]` as `[c_out, kh, kw, c_in]`, the order of a patch.
    fn patch_major(&self, w: &[f32]) -> Vec<f32> {
        patch_major(w, self.c_out, self.c_in, self.taps())
    }

    /// The reverse of [Self::patch_major].
    fn from_patch_major(&self, w: &[f32]) -> Vec<f32> {
        let (c_in, taps) = (self.c_in, self.taps());
        let mut out = vec![0.0f32; self.c_out * taps * c_in];
        for (o, dst) in out.chunks_exact_mut(taps * c_in).enumerate() {
            for ci in 0..c_in {
                for t in 0..taps {
                    dst[ci * taps + t] = w[(o * taps + t) * c_in + ci];
                }
            }
        }
        out
    }

    /// One image's patches, `[out_h * out_w, kh * kw * c_in]`, zero in the padding.
    fn im2col(&self, image: &[f32], patches: &mut [f32]) {
        let ([_, w_in], [_, ow], [kh, kw], c) = (self.in_hw, self.out_hw, self.kernel, self.c_in);
        let k = self.patch_len();
        for_each_plane(patches, ow * k, |oy, dst| {
            for (ox, patch) in dst.chunks_exact_mut(k).enumerate() {
                for i in 0..kh {
                    for j in 0..kw {
                        let part = &mut patch[(i * kw + j) * c..(i * kw + j + 1) * c];
                        match (self.input_at(0, oy, i), self.input_at(1, ox, j)) {
                            (Some(iy), Some(ix)) => {
                                let at = (iy * w_in + ix) * c;
                                part.copy_from_slice(&image[at..at + c]);
                            }
                            _ => part.fill(0.0),
                        }
                    }
                }
            }
        });
    }

    /// Images whose patches go into one product: enough for [PRODUCT_ROWS] rows, within
    /// [PATCH_BUDGET] values (at least one image). On small maps (Inception V3's 17x17 and
    /// 8x8) one image's product has too few rows for gemm to reach its speed; on large ones
    /// more images would only take more memory.
    fn images_per_product(&self) -> usize {
        let pixels = self.out_pixels().max(1);
        let per_image = pixels * self.patch_len().max(1);
        let wanted = PRODUCT_ROWS.div_ceil(pixels);
        wanted.min(PATCH_BUDGET / per_image).clamp(1, self.batch.max(1))
    }

    /// The patches of images `first..first + count` into consecutive blocks of `patches`.
    fn im2col_images(&self, x: &[f32], first: usize, count: usize, patches: &mut [f32]) {
        let image_len = self.in_pixels() * self.c_in;
        let block = self.out_pixels() * self.patch_len();
        for i in 0..count {
            let image = &x[(first + i) * image_len..(first + i + 1) * image_len];
            self.im2col(image, &mut patches[i * block..(i + 1) * block]);
        }
    }

    fn dense_forward(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        let w = self.patch_major(w);
        let (pixels, k, c_out) = (self.out_pixels(), self.patch_len(), self.c_out);
        let group = self.images_per_product();
        let mut out = vec![0.0f32; self.batch * pixels * c_out];
        let mut patches = vec![0.0f32; group * pixels * k];
        for (chunk, dst) in out.chunks_mut(group * pixels * c_out).enumerate() {
            let rows = dst.len() / c_out;
            self.im2col_images(x, chunk * group, rows / pixels.max(1), &mut patches);
            // SAFETY: patches is [rows, k], w is [c_out, k] read transposed, dst is
            // [rows, c_out].
            unsafe {
                gemm_f32(
                    [rows, c_out, k],
                    dst,
                    c_out,
                    false,
                    (&patches[..rows * k], k, 1),
                    (&w, 1, k),
                    worth_parallel(rows, c_out, k),
                );
            }
        }
        out
    }

    fn dense_x_backward(&self, dy: &[f32], w: &[f32]) -> Vec<f32> {
        let w = self.patch_major(w);
        let ([_, w_in], [_, ow], [kh, kw], c) = (self.in_hw, self.out_hw, self.kernel, self.c_in);
        let (pixels, k, c_out) = (self.out_pixels(), self.patch_len(), self.c_out);
        let image_len = self.in_pixels() * c;
        let group = self.images_per_product();
        let mut dx = vec![0.0f32; self.batch * image_len];
        let mut patches = vec![0.0f32; group * pixels * k];
        for (chunk, dst) in dx.chunks_mut(group * image_len).enumerate() {
            let images = dst.len() / image_len.max(1);
            let (rows, first) = (images * pixels, chunk * group * pixels);
            // SAFETY: dy's rows are [rows, c_out], w is [c_out, k], patches is [rows, k].
            unsafe {
                gemm_f32(
                    [rows, k, c_out],
                    &mut patches[..rows * k],
                    k,
                    false,
                    (&dy[first * c_out..(first + rows) * c_out], c_out, 1),
                    (&w, k, 1),
                    worth_parallel(rows, k, c_out),
                );
            }
            // Each input row gathers the patch entries that read it.
            for (image, dst) in dst.chunks_exact_mut(image_len).enumerate() {
                let patches = &patches[image * pixels * k..(image + 1) * pixels * k];
                for_each_plane(dst, w_in * c, |iy, row| {
                    for i in 0..kh {
                        let Some(oy) = self.output_at(0, iy, i) else { continue };
                        for j in 0..kw {
                            for (ix, pixel) in row.chunks_exact_mut(c).enumerate() {
                                if let Some(ox) = self.output_at(1, ix, j) {
                                    let at = (oy * ow + ox) * k + (i * kw + j) * c;
                                    add_assign(pixel, &patches[at..at + c]);
                                }
                            }
                        }
                    }
                });
            }
        }
        dx
    }

    fn dense_weight_backward(&self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let (pixels, k, c_out) = (self.out_pixels(), self.patch_len(), self.c_out);
        let group = self.images_per_product();
        let mut dw = vec![0.0f32; c_out * k];
        let mut patches = vec![0.0f32; group * pixels * k];
        for (chunk, first) in (0..self.batch).step_by(group).enumerate() {
            let images = group.min(self.batch - first);
            let rows = images * pixels;
            self.im2col_images(x, first, images, &mut patches);
            let dy = &dy[first * pixels * c_out..(first * pixels + rows) * c_out];
            // SAFETY: dy is [rows, c_out] read transposed, patches is [rows, k], dw is
            // [c_out, k].
            unsafe {
                gemm_f32(
                    [c_out, k, rows],
                    &mut dw,
                    k,
                    chunk > 0,
                    (dy, 1, c_out),
                    (&patches[..rows * k], k, 1),
                    worth_parallel(c_out, k, rows),
                );
            }
        }
        self.from_patch_major(&dw)
    }
}

/// The input pixels and tap weights that one output pixel of a depthwise convolution reads
/// (the taps inside the image, in kernel order); the lists are reused from pixel to pixel.
struct TapsRead<'c, 'a> {
    conv: &'c Conv,
    pixels: Vec<&'a [f32]>,
    weights: Vec<&'a [f32]>,
}

impl<'c, 'a> TapsRead<'c, 'a> {
    fn new(conv: &'c Conv) -> Self {
        Self {
            conv,
            pixels: Vec::with_capacity(conv.taps()),
            weights: Vec::with_capacity(conv.taps()),
        }
    }

    /// Output pixel `q` (counted row-major over the batch) of input `x` (NHWC) with the
    /// weights `taps` ([Conv::tap_major]).
    fn at(&mut self, x: &'a [f32], taps: &'a [f32], q: usize) -> (&[&'a [f32]], &[&'a [f32]]) {
        let conv = self.conv;
        let ([h, w_in], [oh, ow], [kh, kw], c) = (conv.in_hw, conv.out_hw, conv.kernel, conv.c_in);
        let (b, oy, ox) = (q / (oh * ow), q / ow % oh, q % ow);
        self.pixels.clear();
        self.weights.clear();
        for i in 0..kh {
            let Some(iy) = conv.input_at(0, oy, i) else { continue };
            for j in 0..kw {
                let Some(ix) = conv.input_at(1, ox, j) else { continue };
                let at = ((b * h + iy) * w_in + ix) * c;
                self.pixels.push(&x[at..at + c]);
                self.weights.push(&taps[(i * kw + j) * c..(i * kw + j + 1) * c]);
            }
        }
        (&self.pixels, &self.weights)
    }
}

/// f32 2-D convolution in channels-last layout, or `None` for other dtypes and kinds.
pub fn conv2d(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    if x.dtype() != DType::F32 {
        return None;
    }
    let conv = Conv::new(x.layout().shape(), weight.layout().shape(), options)?;
    let weight = f32_values(weight, weight.layout().num_elements())?;
    let bias = match bias {
        Some(bias) => Some(f32_values(bias, conv.c_out)?),
        None => None,
    };
    let w = &weight.storage::<f32>()[..weight.layout().num_elements()];
    let x = nhwc_data(x);
    let mut out = match conv.kind {
        Kind::Pointwise => conv.pointwise_forward(&x, w),
        Kind::Depthwise => conv.depthwise_forward(&x, w),
        Kind::Dense => conv.dense_forward(&x, w),
    };
    if let Some(bias) = bias {
        // In parallel, 256 pixels a task: with BatchNorm folded into the convolutions
        // (inference), this pass replaces BatchNorm's, which is parallel too.
        let bias = &bias.storage::<f32>()[..conv.c_out];
        for_each_plane(&mut out, 256 * conv.c_out, |_, pixels| {
            for pixel in pixels.chunks_exact_mut(conv.c_out) {
                add_assign(pixel, bias);
            }
        });
    }
    Some(channels_last_tensor(out, conv.out_dims()))
}

/// The gradient of [conv2d] with respect to its input (channels-last), or `None`.
pub fn conv2d_x_backward(
    x_shape: &Shape,
    weight: &FlexTensor,
    output_grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let conv = Conv::new(x_shape, weight.layout().shape(), options)?;
    if output_grad.dtype() != DType::F32 || output_grad.layout().shape().dims::<4>() != conv.out_dims() {
        return None;
    }
    let weight = f32_values(weight, weight.layout().num_elements())?;
    let w = &weight.storage::<f32>()[..weight.layout().num_elements()];
    let dy = nhwc_data(output_grad);
    let dx = match conv.kind {
        Kind::Pointwise => conv.pointwise_x_backward(&dy, w),
        Kind::Depthwise => conv.depthwise_x_backward(&dy, w),
        Kind::Dense => conv.dense_x_backward(&dy, w),
    };
    Some(channels_last_tensor(dx, conv.in_dims()))
}

/// The gradient of [conv2d] with respect to its weight (contiguous), or `None`.
pub fn conv2d_weight_backward(
    x: &FlexTensor,
    w_shape: &Shape,
    output_grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let conv = Conv::new(x.layout().shape(), w_shape, options)?;
    if x.dtype() != DType::F32
        || output_grad.dtype() != DType::F32
        || output_grad.layout().shape().dims::<4>() != conv.out_dims()
    {
        return None;
    }
    let (x, dy) = (nhwc_data(x), nhwc_data(output_grad));
    let dw = match conv.kind {
        Kind::Pointwise => conv.pointwise_weight_backward(&x, &dy),
        Kind::Depthwise => conv.depthwise_weight_backward(&x, &dy),
        Kind::Dense => conv.dense_weight_backward(&x, &dy),
    };
    Some(FlexTensor::new(
        Bytes::from_elems(dw),
        Layout::contiguous(w_shape.clone()),
        DType::F32,
    ))
}

// ---------------------------------------------------------------------------------------
// BatchNorm

/// `N` per-channel sums over the rows of `[rows, c]` data: `add(blocks, row)` adds one row
/// into `N` f32 accumulators, which are added up in f64 every 64 rows.
fn channel_sums<const N: usize>(
    rows: usize,
    c: usize,
    add: impl Fn(&mut [Vec<f32>; N], usize) + Sync + Send,
) -> [Vec<f64>; N] {
    // Rows per f32 block (not the channel `BLOCK` of the per-pixel kernels).
    const ROWS: usize = 64;
    let partials = map_ranges(rows, |range| {
        let mut total: [Vec<f64>; N] = core::array::from_fn(|_| vec![0.0f64; c]);
        let mut block: [Vec<f32>; N] = core::array::from_fn(|_| vec![0.0f32; c]);
        let mut start = range.start;
        while start < range.end {
            let end = (start + ROWS).min(range.end);
            block.iter_mut().for_each(|b| b.fill(0.0));
            for row in start..end {
                add(&mut block, row);
            }
            for (t, b) in total.iter_mut().zip(&block) {
                add_wide(t, b);
            }
            start = end;
        }
        total
    });
    core::array::from_fn(|i| {
        (0..c)
            .map(|ch| partials.iter().map(|p| p[i][ch]).sum())
            .collect()
    })
}

/// `out[r, ch] = scale[ch] * (a[r, ch] - offset[ch]) + shift[ch]`, plus
/// `b_scale[ch] * (b[r, ch] - b_offset[ch])` when `b` is given, as a channels-last tensor.
struct Coefficients {
    scale: Vec<f32>,
    offset: Vec<f32>,
    shift: Vec<f32>,
    b_scale: Vec<f32>,
    b_offset: Vec<f32>,
}

fn write_affine(dims: [usize; 4], a: &[f32], b: Option<&[f32]>, k: &Coefficients) -> FlexTensor {
    let c = dims[1];
    let rows = a.len() / c;
    let chunk_rows = rows_per_task(rows);
    // SAFETY: `affine` and `affine2` write every value of each row (and `a` is whole rows).
    let out = unsafe {
        written(a.len(), |out| {
            for_each_plane(out, chunk_rows * c, |task, dst| {
                let start = task * chunk_rows * c;
                for (r, row) in dst.chunks_exact_mut(c).enumerate() {
                    let at = start + r * c;
                    let a_row = &a[at..at + c];
                    match b {
                        // a_scale * (a - 0) is written as affine2's a_scale * a (offset zero).
                        Some(b) => affine2(row, a_row, &b[at..at + c], &k.scale, &k.b_scale, &k.b_offset, &k.shift),
                        None => affine(row, a_row, &k.scale, &k.offset, &k.shift),
                    }
                }
            })
        })
    };
    channels_last_tensor(out, dims)
}

/// Inference BatchNorm of a channels-last f32 tensor, or `None`.
pub fn batch_norm(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    mean: &FlexTensor,
    variance: &FlexTensor,
    epsilon: f64,
) -> Option<FlexTensor> {
    if !takes_channels_last(x) {
        return None;
    }
    let (gamma, beta) = (per_channel(gamma)?, per_channel(beta)?);
    let (mean, variance) = (per_channel(mean)?, per_channel(variance)?);
    let scale = (0..gamma.len())
        .map(|c| (f64::from(gamma[c]) / (f64::from(variance[c]) + epsilon).sqrt()) as f32)
        .collect();
    let k = Coefficients {
        scale,
        offset: mean,
        shift: beta,
        b_scale: Vec::new(),
        b_offset: Vec::new(),
    };
    Some(write_affine(x.layout().shape().dims::<4>(), &nhwc_data(x), None, &k))
}

/// Training BatchNorm (batch statistics, biased variance) of a channels-last f32 tensor, or
/// `None`.
pub fn batch_norm_train(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
) -> Option<BatchNormTrain<Flex>> {
    if !takes_channels_last(x) {
        return None;
    }
    let (gamma, beta) = (per_channel(gamma)?, per_channel(beta)?);
    let dims = x.layout().shape().dims::<4>();
    let c = dims[1];
    let data = nhwc_data(x);
    let rows = data.len() / c;
    let count = rows as f64;
    let [sums] = channel_sums::<1>(rows, c, |[block], r| add_assign(block, &data[r * c..(r + 1) * c]));
    let mean: Vec<f32> = sums.iter().map(|&s| (s / count) as f32).collect();
    let [squares] = channel_sums::<1>(rows, c, |[block], r| {
        add_centred_squares(block, &data[r * c..(r + 1) * c], &mean)
    });
    let variance: Vec<f64> = squares.iter().map(|&s| s / count).collect();
    let k = Coefficients {
        scale: (0..c)
            .map(|ch| (f64::from(gamma[ch]) / (variance[ch] + epsilon).sqrt()) as f32)
            .collect(),
        offset: mean.clone(),
        shift: beta,
        b_scale: Vec::new(),
        b_offset: Vec::new(),
    };
    let output = write_affine(dims, &data, None, &k);
    let variance = variance.iter().map(|&v| v as f32).collect();
    Some(BatchNormTrain::new(output, channel_tensor(mean), channel_tensor(variance)))
}

/// Gradients of [batch_norm_train] with respect to the input (channels-last), `gamma` and
/// `beta`, or `None`.
pub fn batch_norm_train_backward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    mean: &FlexTensor,
    variance: &FlexTensor,
    epsilon: f64,
    output_grad: &FlexTensor,
) -> Option<BatchNormTrainBackward<Flex>> {
    if !takes_channels_last(x)
        || output_grad.dtype() != DType::F32
        || output_grad.layout().shape() != x.layout().shape()
    {
        return None;
    }
    let gamma = per_channel(gamma)?;
    let (mean, variance) = (per_channel(mean)?, per_channel(variance)?);
    let dims = x.layout().shape().dims::<4>();
    let c = dims[1];
    let (x_data, g_data) = (nhwc_data(x), nhwc_data(output_grad));
    let rows = x_data.len() / c;
    let count = rows as f64;
    let [sum_dy, sum_dy_xc] = channel_sums::<2>(rows, c, |[g_block, gx_block], r| {
        let at = r * c..(r + 1) * c;
        add_grad_sums(g_block, gx_block, &g_data[at.clone()], &x_data[at], &mean)
    });
    // dx = k * (dy - mean(dy) - x_hat * mean(dy * x_hat)) with k = gamma / std and
    // x_hat = (x - mean) / std: k * dy - k / std * mean(dy * x_hat) * (x - mean) - k * mean(dy).
    let mut k = Coefficients {
        scale: Vec::with_capacity(c),
        offset: Vec::new(),
        shift: Vec::with_capacity(c),
        b_scale: Vec::with_capacity(c),
        b_offset: mean,
    };
    let mut gamma_grad = Vec::with_capacity(c);
    for ch in 0..c {
        let inv_std = 1.0 / (f64::from(variance[ch]) + epsilon).sqrt();
        let scale = f64::from(gamma[ch]) * inv_std;
        let sum_dy_x_hat = sum_dy_xc[ch] * inv_std;
        gamma_grad.push(sum_dy_x_hat as f32);
        k.scale.push(scale as f32);
        k.b_scale.push((-scale * inv_std * sum_dy_x_hat / count) as f32);
        k.shift.push((-scale * sum_dy[ch] / count) as f32);
    }
    let beta_grad = sum_dy.iter().map(|&s| s as f32).collect();
    let x_grad = write_affine(dims, &g_data, Some(&x_data), &k);
    Some(BatchNormTrainBackward::new(
        x_grad,
        channel_tensor(gamma_grad),
        channel_tensor(beta_grad),
    ))
}

// ---------------------------------------------------------------------------------------
// Padding

/// Copies the NHWC images `src` (`[batch, src_h, src_w, c]`) into the NHWC images `out`
/// (`out_hw`, same batch and channels) with their top-left corner at `(top, left)`.
fn paste(out: &mut [f32], out_hw: [usize; 2], src: &[f32], [src_h, src_w]: [usize; 2], c: usize, [top, left]: [usize; 2]) {
    let [out_h, out_w] = out_hw;
    for_each_plane(out, out_w * c, |row, dst| {
        let (b, y) = (row / out_h, row % out_h);
        if (top..top + src_h).contains(&y) {
            let at = (b * src_h + y - top) * src_w * c;
            dst[left * c..(left + src_w) * c].copy_from_slice(&src[at..at + src_w * c]);
        }
    });
}

/// A channels-last f32 tensor padded along its height and width with `value`, still
/// channels-last; `None` for other tensors or when the batch or channels are padded.
pub fn pad(tensor: &FlexTensor, padding: &[(usize, usize)], value: f32) -> Option<FlexTensor> {
    if !takes_channels_last(tensor) || padding.len() != 4 || padding[..2] != [(0, 0), (0, 0)] {
        return None;
    }
    let [n, c, h, w] = tensor.layout().shape().dims::<4>();
    let ((top, bottom), (left, right)) = (padding[2], padding[3]);
    let (out_h, out_w) = (h + top + bottom, w + left + right);
    let x = nhwc_data(tensor);
    let mut out = vec![value; n * out_h * out_w * c];
    paste(&mut out, [out_h, out_w], &x, [h, w], c, [top, left]);
    Some(channels_last_tensor(out, [n, c, out_h, out_w]))
}

/// `tensor` with the window `slices` replaced by the channels-last `value`, as a
/// channels-last tensor; `None` unless `value` is channels-last f32 and the window spans
/// the whole batch and all channels with step 1. Burn's autodiff pads a max-pool's input
/// as a `slice_assign` into a new filled tensor (plain NCHW): the result follows `value`.
pub fn slice_assign(tensor: &FlexTensor, slices: &[burn_std::Slice], value: &FlexTensor) -> Option<FlexTensor> {
    if !takes_channels_last(value)
        || tensor.dtype() != DType::F32
        || tensor.layout().num_dims() != 4
        || slices.len() != 4
        || slices.iter().any(|s| s.step != 1)
    {
        return None;
    }
    let dims @ [n, c, h, w] = tensor.layout().shape().dims::<4>();
    let [_, _, value_h, value_w] = value.layout().shape().dims::<4>();
    let ranges: Vec<Range<usize>> = (0..4).map(|d| slices[d].to_range(dims[d])).collect();
    if ranges[0] != (0..n) || ranges[1] != (0..c) || ranges[2].len() != value_h || ranges[3].len() != value_w {
        return None;
    }
    let mut out = nhwc_data(tensor).into_owned();
    let corner = [ranges[2].start, ranges[3].start];
    paste(&mut out, [h, w], &nhwc_data(value), [value_h, value_w], c, corner);
    Some(channels_last_tensor(out, dims))
}

// ---------------------------------------------------------------------------------------
// Max-pooling

/// Max-pooling of a channels-last f32 tensor (no dilation or ceil mode), keeping its layout;
/// with `indices` (I64 or I32), each maximum's flat index within its input plane
/// (`y * w + x`, channels-last like the values). Flex's rules: the first maximum wins a tie, NaN wins over
/// numbers, and the last NaN's index is kept.
pub fn max_pool2d(
    x: &FlexTensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    ceil_mode: bool,
    indices: Option<DType>,
) -> Option<(FlexTensor, Option<FlexTensor>)> {
    let with_indices = indices.is_some();
    if !takes_channels_last(x)
        || indices.is_some_and(|dtype| dtype != DType::I64 && dtype != DType::I32)
        || dilation != [1, 1]
        || ceil_mode
        || kernel.contains(&0)
        || stride.contains(&0)
    {
        return None;
    }
    let dims @ [batch, c, h, w] = x.layout().shape().dims::<4>();
    if (0..2).any(|d| [h, w][d] + 2 * padding[d] < kernel[d] || padding[d] >= kernel[d]) {
        return None;
    }
    let out_hw = [0, 1].map(|d| ([h, w][d] + 2 * padding[d] - kernel[d]) / stride[d] + 1);
    let [oh, ow] = out_hw;
    let window = |d: usize, o: usize| {
        let start = (o * stride[d]).saturating_sub(padding[d]);
        let end = (o * stride[d] + kernel[d] - padding[d]).min([h, w][d]);
        start..end
    };
    let data = nhwc_data(x);
    let len = batch * oh * ow * c;
    // Positions fit in i32 (`h * w` values of one plane); Burn asks for I32 here, I64 is
    // widened afterwards.
    let (mut values, mut positions) = (Vec::<f32>::with_capacity(len), Vec::<i32>::with_capacity(if with_indices { len } else { 0 }));
    {
        let values = &mut values.spare_capacity_mut()[..len];
        let positions = &mut positions.spare_capacity_mut()[..if with_indices { len } else { 0 }];
        let pool_row = |row: usize, values: &mut [MaybeUninit<f32>], positions: &mut [MaybeUninit<i32>]| {
            let (b, oy) = (row / oh, row % oh);
            let (mut pixels, mut at) = (Vec::new(), Vec::new());
            for ox in 0..ow {
                pixels.clear();
                at.clear();
                for iy in window(0, oy) {
                    for ix in window(1, ox) {
                        let start = ((b * h + iy) * w + ix) * c;
                        pixels.push(&data[start..start + c]);
                        at.push((iy * w + ix) as i32);
                    }
                }
                let positions = if with_indices { &mut positions[ox * c..(ox + 1) * c] } else { &mut [] };
                max_pixel(&mut values[ox * c..(ox + 1) * c], positions, &pixels, &at);
            }
        };
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            if with_indices {
                values
                    .par_chunks_mut(ow * c)
                    .zip(positions.par_chunks_mut(ow * c))
                    .enumerate()
                    .for_each(|(row, (values, positions))| pool_row(row, values, positions));
            } else {
                values
                    .par_chunks_mut(ow * c)
                    .enumerate()
                    .for_each(|(row, values)| pool_row(row, values, &mut []));
            }
        }
        #[cfg(not(feature = "rayon"))]
        {
            for row in 0..batch * oh {
                let values = &mut values[row * ow * c..(row + 1) * ow * c];
                if with_indices {
                    pool_row(row, values, &mut positions[row * ow * c..(row + 1) * ow * c]);
                } else {
                    pool_row(row, values, &mut []);
                }
            }
        }
    }
    // SAFETY: `max_pixel` wrote every channel of every output pixel (and of its position when
    // asked for): each window holds at least one pixel (`padding < kernel` was checked).
    unsafe {
        values.set_len(len);
        positions.set_len(if with_indices { len } else { 0 });
    }
    let out_dims = [dims[0], c, oh, ow];
    let indices = indices.map(|dtype| {
        let layout = Layout::new(Shape::from(out_dims.to_vec()), nhwc_strides(out_dims), 0);
        let bytes = match dtype {
            DType::I32 => Bytes::from_elems(positions),
            _ => Bytes::from_elems(positions.into_iter().map(i64::from).collect::<Vec<_>>()),
        };
        FlexTensor::new(bytes, layout, dtype)
    });
    Some((channels_last_tensor(values, out_dims), indices))
}

/// Max-pooling of a channels-last f32 tensor (no dilation, no ceil mode) with `padding`
/// as (begin, end) pairs, plus `shortcut` (the pool's output shape), in one pass: Xception's
/// downsampling blocks add their residual branch to the pool's output, and TensorFlow's
/// 'same' padding is asymmetric on even sizes, which [max_pool2d] takes only as a padded
/// copy of the input. `None` where it does not apply.
pub fn max_pool2d_add(
    x: &FlexTensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [(usize, usize); 2],
    shortcut: &FlexTensor,
) -> Option<FlexTensor> {
    if !takes_channels_last(x)
        || shortcut.dtype() != DType::F32
        || shortcut.layout().shape().num_dims() != 4
        || kernel.contains(&0)
        || stride.contains(&0)
    {
        return None;
    }
    let [batch, c, h, w] = x.layout().shape().dims::<4>();
    let size = [h, w];
    // Every window must hold an input pixel.
    if (0..2).any(|d| size[d] == 0 || padding[d].0 >= kernel[d] || padding[d].1 >= kernel[d]) {
        return None;
    }
    let padded = [0, 1].map(|d| size[d] + padding[d].0 + padding[d].1);
    if (0..2).any(|d| padded[d] < kernel[d]) {
        return None;
    }
    let [oh, ow] = [0, 1].map(|d| (padded[d] - kernel[d]) / stride[d] + 1);
    let out_dims = [batch, c, oh, ow];
    if shortcut.layout().shape().dims::<4>() != out_dims {
        return None;
    }
    let window = |d: usize, o: usize| {
        let start = (o * stride[d]).saturating_sub(padding[d].0);
        let end = (o * stride[d] + kernel[d] - padding[d].0).min(size[d]);
        start..end
    };
    let (data, shortcut) = (nhwc_data(x), nhwc_data(shortcut));
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    let avx512 = fused::max_add_available();
    let fill = |out: &mut [MaybeUninit<f32>]| {
        for_each_plane(out, ow * c, |row, dst| {
            let (b, oy) = (row / oh, row % oh);
            let (mut pixels, mut at, mut pooled) = (Vec::new(), Vec::new(), Vec::new());
            for (ox, pixel_out) in dst.chunks_exact_mut(c).enumerate() {
                pixels.clear();
                for iy in window(0, oy) {
                    for ix in window(1, ox) {
                        let start = ((b * h + iy) * w + ix) * c;
                        pixels.push(&data[start..start + c]);
                    }
                }
                let q = (row * ow + ox) * c;
                #[cfg(all(feature = "std", target_arch = "x86_64"))]
                if avx512 {
                    fused::max_add(&pixels, &shortcut[q..q + c], pixel_out);
                    continue;
                }
                // The generic loop's positions (unused here) and row of sums.
                at.resize(pixels.len(), 0);
                pooled.resize(c, 0.0f32);
                // SAFETY: `MaybeUninit<f32>` has `f32`'s layout; `max_pixel` writes values.
                let uninit = unsafe { &mut *(pooled.as_mut_slice() as *mut [f32] as *mut [MaybeUninit<f32>]) };
                max_pixel(uninit, &mut [], &pixels, &at);
                add_assign(&mut pooled, &shortcut[q..q + c]);
                pixel_out.write_copy_of_slice(&pooled);
            }
        })
    };
    // SAFETY: every channel of every output pixel is written.
    let out = unsafe { written(batch * oh * ow * c, fill) };
    Some(channels_last_tensor(out, out_dims))
}

/// The maximum over `pixels` of channels `start..start + n`, and where it is: the first
/// pixel holding it (a NaN wins, as in Burn's reference).
#[inline(always)]
fn max_pixel_block(
    values: &mut [MaybeUninit<f32>],
    positions: &mut [MaybeUninit<i32>],
    pixels: &[&[f32]],
    at: &[i32],
    start: usize,
    n: usize,
) {
    let (mut best, mut best_at) = ([f32::NEG_INFINITY; BLOCK], [0i32; BLOCK]);
    let (best, best_at) = (&mut best[..n], &mut best_at[..n]);
    if let (Some(first), Some(&first_at)) = (pixels.first(), at.first()) {
        best.copy_from_slice(&first[start..start + n]);
        best_at.fill(first_at);
    }
    for (pixel, &position) in pixels.iter().zip(at).skip(1) {
        let pixel = &pixel[start..start + n];
        for i in 0..n {
            let v = pixel[i];
            let take = v > best[i] || v.is_nan();
            best[i] = if take { v } else { best[i] };
            best_at[i] = if take { position } else { best_at[i] };
        }
    }
    for (o, &v) in values[..n].iter_mut().zip(best.iter()) {
        o.write(v);
    }
    if !positions.is_empty() {
        for (o, &p) in positions[..n].iter_mut().zip(best_at.iter()) {
            o.write(p);
        }
    }
}

multiversion! {
    /// One output pixel of a max-pool: per channel, the maximum over the window's `pixels`
    /// into `values` and, unless `positions` is empty, the position (`at`) it came from.
    fn max_pixel(values: &mut [MaybeUninit<f32>], positions: &mut [MaybeUninit<i32>], pixels: &[&[f32]], at: &[i32]) {
        for (start, n) in channel_blocks(values.len()) {
            let positions = if positions.is_empty() { &mut [] } else { &mut positions[start..start + n] };
            let values = &mut values[start..start + n];
            if n == BLOCK {
                max_pixel_block(values, positions, pixels, at, start, BLOCK);
            } else {
                max_pixel_block(values, positions, pixels, at, start, n);
            }
        }
    }
}

/// The gradient of [max_pool2d] with respect to its channels-last input, from the indices
/// it returned; `None` when the tensors are not channels-last f32 / I64 or I32.
pub fn max_pool2d_backward(
    x: &FlexTensor,
    output_grad: &FlexTensor,
    indices: &FlexTensor,
) -> Option<FlexTensor> {
    if !takes_channels_last(x)
        || output_grad.dtype() != DType::F32
        || !matches!(indices.dtype(), DType::I64 | DType::I32)
        || !is_channels_last(indices.layout())
        || output_grad.layout().shape() != indices.layout().shape()
    {
        return None;
    }
    let dims @ [_, c, h, w] = x.layout().shape().dims::<4>();
    let [_, _, oh, ow] = output_grad.layout().shape().dims::<4>();
    let dy = nhwc_data(output_grad);
    let positions: Cow<'_, [i64]> = match indices.dtype() {
        DType::I64 => Cow::Borrowed(&indices.storage::<i64>()[..dy.len()]),
        _ => Cow::Owned(indices.storage::<i32>()[..dy.len()].iter().map(|&i| i64::from(i)).collect()),
    };
    let mut dx = vec![0.0f32; x.layout().num_elements()];
    let plane = h * w;
    for_each_plane(&mut dx, plane * c, |b, dst| {
        let start = b * oh * ow * c;
        let (dy, positions) = (&dy[start..start + oh * ow * c], &positions[start..start + oh * ow * c]);
        for (g, p) in dy.chunks_exact(c).zip(positions.chunks_exact(c)) {
            for ch in 0..c {
                let at = p[ch] as usize;
                if at < plane {
                    dst[at * c + ch] += g[ch];
                }
            }
        }
    });
    Some(channels_last_tensor(dx, dims))
}

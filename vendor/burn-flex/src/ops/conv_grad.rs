//! Direct gradients of the depthwise and pointwise (1x1) 2D convolutions, and the strided
//! 1x1 convolution's forward (xception-burn's patch, see `PATCHES.md` at the crate root).
//!
//! Burn's default `conv2d_weight_backward` computes a grouped convolution's weight gradient
//! with one convolution per group (one per channel for a depthwise convolution) and its
//! input gradient through a grouped transposed convolution; a 1x1 convolution's weight
//! gradient becomes a convolution whose kernel is the whole feature map. Here:
//!
//! - depthwise (`groups == channels_in == channels_out`, any kernel, stride and padding,
//!   dilation 1), f32: both gradients walk NCHW planes directly, the input gradient in
//!   parallel over (batch, channel) planes, the weight gradient over channels, with the
//!   per-row dot products in 8 lanes (vectorised) and the sums over rows in f64;
//! - pointwise (1x1, one group, no padding), f32: both gradients as gemm products read in
//!   place (`dW = sum_n G_n X_n^T`, summed per thread; `dX_n = W^T G_n`), strided ones
//!   (Xception's residual 1x1s) on the input's subsampled positions; other float types,
//!   stride 1 only, through flex's matmul.
//!
//! Anything else returns `None` and takes Burn's default path.

use alloc::vec;
use alloc::vec::Vec;

use burn_backend::ops::conv::{calculate_padding_out, pad_asymmetric_conv_input};
use burn_backend::ops::{ConvOptions, ConvTransposeOptions, FloatTensorOps, ModuleOps};
use burn_backend::{DType, TensorMetadata};
use burn_std::{Bytes, Shape, Slice};

use crate::{Flex, FlexTensor, Layout};

/// Whether `weight` makes a depthwise convolution this module computes directly.
fn is_depthwise(x_shape: &Shape, w_shape: &Shape, options: &ConvOptions<2>) -> bool {
    let channels = x_shape[1];
    options.groups == channels
        && channels > 1
        && w_shape[0] == channels
        && w_shape[1] == 1
        && options.dilation == [1, 1]
}

/// Output positions `o` (a range) whose input position `o * stride + k - pad` lies in
/// `[0, size_in)`.
fn valid_range(k: usize, pad: usize, stride: usize, size_in: usize, size_out: usize) -> (usize, usize) {
    let start = if k >= pad { 0 } else { (pad - k).div_ceil(stride) };
    let end = if k >= size_in + pad {
        0
    } else {
        (size_in + pad - k).div_ceil(stride)
    };
    (start.min(size_out), end.min(size_out).max(start.min(size_out)))
}

struct Geometry {
    batch: usize,
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    kernel_h: usize,
    kernel_w: usize,
    stride_h: usize,
    stride_w: usize,
    pad_h: usize,
    pad_w: usize,
}

impl Geometry {
    fn new(x_shape: &Shape, w_shape: &Shape, grad_shape: &Shape, options: &ConvOptions<2>) -> Self {
        let [pad_h, pad_w] = options.padding_begin();
        Self {
            batch: x_shape[0],
            channels: x_shape[1],
            in_h: x_shape[2],
            in_w: x_shape[3],
            out_h: grad_shape[2],
            out_w: grad_shape[3],
            kernel_h: w_shape[2],
            kernel_w: w_shape[3],
            stride_h: options.stride[0],
            stride_w: options.stride[1],
            pad_h,
            pad_w,
        }
    }

    fn rows(&self) -> Vec<(usize, usize)> {
        (0..self.kernel_h)
            .map(|kh| valid_range(kh, self.pad_h, self.stride_h, self.in_h, self.out_h))
            .collect()
    }

    fn cols(&self) -> Vec<(usize, usize)> {
        (0..self.kernel_w)
            .map(|kw| valid_range(kw, self.pad_w, self.stride_w, self.in_w, self.out_w))
            .collect()
    }
}

/// Sum of `a[i] * b[i * stride]`, in 8 lanes so that it vectorises for stride 1.
#[inline]
fn dot(a: &[f32], b: &[f32], stride: usize) -> f32 {
    if stride == 1 {
        let b = &b[..a.len()];
        let mut lanes = [0.0f32; 8];
        let chunks = a.len() / 8;
        for i in 0..chunks {
            for l in 0..8 {
                lanes[l] += a[i * 8 + l] * b[i * 8 + l];
            }
        }
        let mut sum = 0.0;
        for l in lanes {
            sum += l;
        }
        for i in chunks * 8..a.len() {
            sum += a[i] * b[i];
        }
        sum
    } else {
        a.iter().enumerate().map(|(i, v)| v * b[i * stride]).sum()
    }
}

/// `out[i * stride] += w * g[i]`.
#[inline]
fn axpy(out: &mut [f32], g: &[f32], w: f32, stride: usize) {
    if stride == 1 {
        for (o, v) in out[..g.len()].iter_mut().zip(g) {
            *o += w * v;
        }
    } else {
        for (i, v) in g.iter().enumerate() {
            out[i * stride] += w * v;
        }
    }
}

/// The input gradient of a depthwise convolution, or `None` when it is not one (or not f32).
pub fn depthwise_x_backward(
    x_shape: &Shape,
    weight: &FlexTensor,
    output_grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let w_shape = weight.layout().shape().clone();
    if !is_depthwise(x_shape, &w_shape, options)
        || weight.dtype() != DType::F32
        || output_grad.dtype() != DType::F32
    {
        return None;
    }
    let geometry = Geometry::new(x_shape, &w_shape, output_grad.layout().shape(), options);
    let weight = weight.to_contiguous();
    let grad = output_grad.to_contiguous();
    let (w_data, g_data): (&[f32], &[f32]) = (weight.storage(), grad.storage());
    let Geometry {
        batch,
        channels,
        in_h,
        in_w,
        out_h,
        out_w,
        kernel_h,
        kernel_w,
        stride_h,
        stride_w,
        pad_h,
        pad_w,
    } = geometry;
    let (rows, cols) = (geometry.rows(), geometry.cols());
    let (in_plane, out_plane, k_plane) = (in_h * in_w, out_h * out_w, kernel_h * kernel_w);
    let mut dx = vec![0.0f32; batch * channels * in_plane];

    let plane = |bc: usize, dx_plane: &mut [f32]| {
        let c = bc % channels;
        let g = &g_data[bc * out_plane..(bc + 1) * out_plane];
        let w = &w_data[c * k_plane..(c + 1) * k_plane];
        for kh in 0..kernel_h {
            let (oh_start, oh_end) = rows[kh];
            for oh in oh_start..oh_end {
                let ih = oh * stride_h + kh - pad_h;
                let g_row = &g[oh * out_w..(oh + 1) * out_w];
                let dx_row = &mut dx_plane[ih * in_w..(ih + 1) * in_w];
                for kw in 0..kernel_w {
                    let (ow_start, ow_end) = cols[kw];
                    if ow_start >= ow_end {
                        continue;
                    }
                    let iw_start = ow_start * stride_w + kw - pad_w;
                    axpy(
                        &mut dx_row[iw_start..],
                        &g_row[ow_start..ow_end],
                        w[kh * kernel_w + kw],
                        stride_w,
                    );
                }
            }
        }
    };
    for_each_plane(&mut dx, in_plane, plane);
    Some(FlexTensor::new(
        Bytes::from_elems(dx),
        Layout::contiguous(x_shape.clone()),
        DType::F32,
    ))
}

/// The weight gradient of a depthwise convolution, or `None` when it is not one (or not f32).
pub fn depthwise_weight_backward(
    x: &FlexTensor,
    w_shape: &Shape,
    output_grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let x_shape = x.layout().shape().clone();
    if !is_depthwise(&x_shape, w_shape, options)
        || x.dtype() != DType::F32
        || output_grad.dtype() != DType::F32
    {
        return None;
    }
    let geometry = Geometry::new(&x_shape, w_shape, output_grad.layout().shape(), options);
    let x = x.to_contiguous();
    let grad = output_grad.to_contiguous();
    let (x_data, g_data): (&[f32], &[f32]) = (x.storage(), grad.storage());
    let Geometry {
        batch,
        channels,
        in_h,
        in_w,
        out_h,
        out_w,
        kernel_h,
        kernel_w,
        stride_h,
        stride_w,
        pad_h,
        pad_w,
    } = geometry;
    let (rows, cols) = (geometry.rows(), geometry.cols());
    let (in_plane, out_plane, k_plane) = (in_h * in_w, out_h * out_w, kernel_h * kernel_w);
    let mut dw = vec![0.0f32; channels * k_plane];

    let channel = |c: usize, dw_c: &mut [f32]| {
        let mut sums = vec![0.0f64; k_plane];
        for n in 0..batch {
            let bc = n * channels + c;
            let xs = &x_data[bc * in_plane..(bc + 1) * in_plane];
            let g = &g_data[bc * out_plane..(bc + 1) * out_plane];
            for kh in 0..kernel_h {
                let (oh_start, oh_end) = rows[kh];
                for kw in 0..kernel_w {
                    let (ow_start, ow_end) = cols[kw];
                    if ow_start >= ow_end {
                        continue;
                    }
                    let iw_start = ow_start * stride_w + kw - pad_w;
                    let mut sum = 0.0f64;
                    for oh in oh_start..oh_end {
                        let ih = oh * stride_h + kh - pad_h;
                        let g_row = &g[oh * out_w + ow_start..oh * out_w + ow_end];
                        let x_row = &xs[ih * in_w + iw_start..(ih + 1) * in_w];
                        sum += f64::from(dot(g_row, x_row, stride_w));
                    }
                    sums[kh * kernel_w + kw] += sum;
                }
            }
        }
        for (out, sum) in dw_c.iter_mut().zip(sums) {
            *out = sum as f32;
        }
    };
    for_each_plane(&mut dw, k_plane, channel);
    Some(FlexTensor::new(
        Bytes::from_elems(dw),
        Layout::contiguous(w_shape.clone()),
        DType::F32,
    ))
}

/// Calls `work(i, chunk)` for each `chunk_len`-long chunk of `out`, in parallel with rayon.
fn for_each_plane(out: &mut [f32], chunk_len: usize, work: impl Fn(usize, &mut [f32]) + Sync) {
    if chunk_len == 0 {
        return;
    }
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(i, chunk)| work(i, chunk));
    }
    #[cfg(not(feature = "rayon"))]
    {
        for (i, chunk) in out.chunks_mut(chunk_len).enumerate() {
            work(i, chunk);
        }
    }
}

/// `dst (+)= lhs * rhs` for f32 matrices given by their first element and (row, column)
/// strides; `accumulate` adds to what `dst` holds instead of overwriting it.
///
/// # Safety
/// Every element the strides reach must lie inside the slices.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    dst_row_stride: usize,
    accumulate: bool,
    (lhs, lhs_row_stride, lhs_col_stride): (&[f32], usize, usize),
    (rhs, rhs_row_stride, rhs_col_stride): (&[f32], usize, usize),
    parallel: bool,
) {
    #[cfg(feature = "rayon")]
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    #[cfg(not(feature = "rayon"))]
    let parallelism = {
        let _ = parallel;
        gemm::Parallelism::None
    };
    // SAFETY: the caller guarantees the strides stay inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_col_stride as isize,
            lhs_row_stride as isize,
            rhs.as_ptr(),
            rhs_col_stride as isize,
            rhs_row_stride as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Whether a product of this size is worth splitting over threads (flex's own threshold).
fn worth_parallel(m: usize, n: usize, k: usize) -> bool {
    m.saturating_mul(n).saturating_mul(k) >= 192 * 192 * 192
}

fn threads() -> usize {
    #[cfg(feature = "rayon")]
    {
        rayon::current_num_threads().max(1)
    }
    #[cfg(not(feature = "rayon"))]
    {
        1
    }
}

/// A 1x1 convolution's geometry: `[batch, c_in, c_out]`, input `[h, w]`, output
/// `[out_h, out_w]` and strides, or `None` when it is not a 1x1 convolution with one group
/// and no padding.
struct Pointwise {
    batch: usize,
    c_in: usize,
    c_out: usize,
    in_hw: [usize; 2],
    out_hw: [usize; 2],
    stride: [usize; 2],
}

impl Pointwise {
    fn new(x_shape: &Shape, w_shape: &Shape, grad_shape: &Shape, options: &ConvOptions<2>) -> Option<Self> {
        let pointwise = w_shape[2] == 1
            && w_shape[3] == 1
            && options.groups == 1
            && options.padding == [(0, 0), (0, 0)]
            && options.stride.iter().all(|&s| s > 0);
        let geometry = Self {
            batch: x_shape[0],
            c_in: x_shape[1],
            c_out: w_shape[0],
            in_hw: [x_shape[2], x_shape[3]],
            out_hw: [grad_shape[2], grad_shape[3]],
            stride: options.stride,
        };
        let expected = [0, 1].map(|d| geometry.in_hw[d].saturating_sub(1) / geometry.stride[d] + 1);
        (pointwise && geometry.out_hw == expected && geometry.in_hw[0] * geometry.in_hw[1] > 0).then_some(geometry)
    }

    fn strided(&self) -> bool {
        self.stride != [1, 1]
    }

    fn out_plane(&self) -> usize {
        self.out_hw[0] * self.out_hw[1]
    }

    /// The input at the positions the strides visit, `[batch, c_in, out_h, out_w]`.
    fn subsample(&self, x: &[f32]) -> Vec<f32> {
        let ([in_h, in_w], [out_h, out_w], [stride_h, stride_w]) = (self.in_hw, self.out_hw, self.stride);
        let mut out = vec![0.0f32; self.batch * self.c_in * out_h * out_w];
        for_each_plane(&mut out, out_h * out_w, |plane, dst| {
            let src = &x[plane * in_h * in_w..(plane + 1) * in_h * in_w];
            for (oh, dst_row) in dst.chunks_mut(out_w).enumerate() {
                let src_row = &src[oh * stride_h * in_w..];
                for (ow, value) in dst_row.iter_mut().enumerate() {
                    *value = src_row[ow * stride_w];
                }
            }
        });
        out
    }

    /// The reverse of [Self::subsample]: `sub` spread over a zero input-sized buffer.
    fn spread(&self, sub: &[f32]) -> Vec<f32> {
        let ([in_h, in_w], [_, out_w], [stride_h, stride_w]) = (self.in_hw, self.out_hw, self.stride);
        let out_plane = self.out_plane();
        let mut out = vec![0.0f32; self.batch * self.c_in * in_h * in_w];
        for_each_plane(&mut out, in_h * in_w, |plane, dst| {
            let src = &sub[plane * out_plane..(plane + 1) * out_plane];
            for (oh, src_row) in src.chunks(out_w).enumerate() {
                let dst_row = &mut dst[oh * stride_h * in_w..];
                for (ow, &value) in src_row.iter().enumerate() {
                    dst_row[ow * stride_w] = value;
                }
            }
        });
        out
    }
}

/// A strided 1x1 convolution (one group, no padding, f32) as the plain 1x1 convolution of
/// the input's subsampled positions, which flex computes as one product per image; `None`
/// for anything else. (Flex's own path for it builds im2col columns.)
pub fn strided_pointwise_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let (x_shape, w_shape) = (x.layout().shape().clone(), weight.layout().shape().clone());
    let all_f32 = [Some(x), Some(weight), bias.as_ref()]
        .iter()
        .flatten()
        .all(|tensor| tensor.dtype() == DType::F32);
    if !all_f32 || x_shape.num_dims() != 4 || w_shape.num_dims() != 4 || options.stride == [1, 1] {
        return None;
    }
    let out_hw = [0, 1].map(|d| x_shape[d + 2].saturating_sub(1) / options.stride[d].max(1) + 1);
    let out_shape = Shape::from(vec![x_shape[0], w_shape[0], out_hw[0], out_hw[1]]);
    let geometry = Pointwise::new(&x_shape, &w_shape, &out_shape, options)?;
    if !geometry.strided() || w_shape[1] != x_shape[1] {
        return None;
    }
    let sub = geometry.subsample(x.to_contiguous().storage());
    let sub_shape = Shape::from(vec![x_shape[0], x_shape[1], out_hw[0], out_hw[1]]);
    let sub = FlexTensor::new(Bytes::from_elems(sub), Layout::contiguous(sub_shape), DType::F32);
    let plain = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    Some(Flex::conv2d(sub, weight.clone(), bias.clone(), plain))
}

/// The input gradient of a 1x1 convolution, `dX_n = W^T G_n` (spread over the strided
/// positions), or `None` when it is not one.
pub fn pointwise_x_backward(
    x_shape: &Shape,
    weight: &FlexTensor,
    output_grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let w_shape = weight.layout().shape().clone();
    let geometry = Pointwise::new(x_shape, &w_shape, output_grad.layout().shape(), options)?;
    if weight.dtype() != DType::F32 || output_grad.dtype() != DType::F32 {
        if geometry.strided() {
            return None;
        }
        // Other float types: the same product through flex's matmul.
        let [n, c_in, h, w] = [x_shape[0], x_shape[1], x_shape[2], x_shape[3]];
        let c_out = w_shape[0];
        let weight_t = Flex::float_reshape(weight.clone(), Shape::from(vec![1, c_out, c_in]));
        let weight_t = Flex::float_swap_dims(weight_t, 1, 2);
        let grad = Flex::float_reshape(output_grad.clone(), Shape::from(vec![n, c_out, h * w]));
        let dx = Flex::float_matmul(weight_t, grad);
        return Some(Flex::float_reshape(dx, x_shape.clone()));
    }
    let (weight, grad) = (weight.to_contiguous(), output_grad.to_contiguous());
    let (w_data, g_data): (&[f32], &[f32]) = (weight.storage(), grad.storage());
    let Pointwise { c_in, c_out, .. } = geometry;
    let out_plane = geometry.out_plane();
    let mut dx = vec![0.0f32; geometry.batch * c_in * out_plane];
    let parallel = worth_parallel(c_in, out_plane, c_out);
    for_each_plane(&mut dx, c_in * out_plane, |n, dx_n| {
        let g_n = &g_data[n * c_out * out_plane..(n + 1) * c_out * out_plane];
        // SAFETY: W^T is [c_in, c_out] with strides (1, c_in) over W's c_out * c_in values;
        // G_n is [c_out, out_plane] row-major; dX_n is [c_in, out_plane] row-major.
        unsafe {
            gemm_f32(
                [c_in, out_plane, c_out],
                dx_n,
                out_plane,
                false,
                (w_data, 1, c_in),
                (g_n, out_plane, 1),
                parallel,
            );
        }
    });
    if geometry.strided() {
        dx = geometry.spread(&dx);
    }
    Some(FlexTensor::new(
        Bytes::from_elems(dx),
        Layout::contiguous(x_shape.clone()),
        DType::F32,
    ))
}

/// The weight gradient of a 1x1 convolution, `dW = sum_n G_n X_n^T` (`X_n` at the strided
/// positions), or `None` when it is not one.
pub fn pointwise_weight_backward(
    x: &FlexTensor,
    w_shape: &Shape,
    output_grad: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<FlexTensor> {
    let x_shape = x.layout().shape().clone();
    let geometry = Pointwise::new(&x_shape, w_shape, output_grad.layout().shape(), options)?;
    if x.dtype() != DType::F32 || output_grad.dtype() != DType::F32 {
        if geometry.strided() {
            return None;
        }
        // Other float types: [C_out, N*HW] x [N*HW, C_in] through flex's matmul.
        let [n, c_in, h, w] = [x_shape[0], x_shape[1], x_shape[2], x_shape[3]];
        let c_out = w_shape[0];
        let grad = Flex::float_swap_dims(
            Flex::float_reshape(output_grad.clone(), Shape::from(vec![n, c_out, h * w])),
            0,
            1,
        );
        let grad = Flex::float_reshape(grad, Shape::from(vec![c_out, n * h * w]));
        let xs = Flex::float_swap_dims(
            Flex::float_reshape(x.clone(), Shape::from(vec![n, c_in, h * w])),
            0,
            1,
        );
        let xs = Flex::float_reshape(xs, Shape::from(vec![c_in, n * h * w]));
        let dw = Flex::float_matmul(grad, Flex::float_swap_dims(xs, 0, 1));
        return Some(Flex::float_reshape(dw, w_shape.clone()));
    }
    let (x, grad) = (x.to_contiguous(), output_grad.to_contiguous());
    let subsampled;
    let x_data: &[f32] = if geometry.strided() {
        subsampled = geometry.subsample(x.storage());
        &subsampled
    } else {
        x.storage()
    };
    let g_data: &[f32] = grad.storage();
    let Pointwise { batch, c_in, c_out, .. } = geometry;
    let out_plane = geometry.out_plane();
    // The batch in as many slices as threads, each summed into its own [c_out, c_in] (no
    // transposed copies of X or G), then the slices' sums added. With fewer images than
    // threads, each product is split over threads instead.
    let slices = batch.min(threads()).max(1);
    let per_slice = batch.div_ceil(slices);
    let parallel = slices < threads() && worth_parallel(c_out, c_in, out_plane);
    let mut partial = vec![0.0f32; slices * c_out * c_in];
    for_each_plane(&mut partial, c_out * c_in, |slice, dw| {
        for n in slice * per_slice..((slice + 1) * per_slice).min(batch) {
            let g_n = &g_data[n * c_out * out_plane..(n + 1) * c_out * out_plane];
            let x_n = &x_data[n * c_in * out_plane..(n + 1) * c_in * out_plane];
            // SAFETY: G_n is [c_out, out_plane] row-major; X_n^T is [out_plane, c_in] with
            // strides (1, out_plane) over X_n's c_in * out_plane values; dW is [c_out, c_in].
            unsafe {
                gemm_f32(
                    [c_out, c_in, out_plane],
                    dw,
                    c_in,
                    true,
                    (g_n, out_plane, 1),
                    (x_n, 1, out_plane),
                    parallel,
                );
            }
        }
    });
    let mut dw = partial[..c_out * c_in].to_vec();
    for other in partial.chunks(c_out * c_in).skip(1) {
        for (sum, value) in dw.iter_mut().zip(other) {
            *sum += value;
        }
    }
    Some(FlexTensor::new(
        Bytes::from_elems(dw),
        Layout::contiguous(w_shape.clone()),
        DType::F32,
    ))
}

// Burn 0.22.1's default `conv2d_x_backward` and `conv2d_weight_backward`
// (`burn_backend::ops::conv`, private there), for every other convolution.

/// Burn's default input gradient of a 2D convolution.
pub fn default_x_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    if options.is_asymmetric() {
        let input_shape = x.shape();
        let padding = options.padding;
        let (x, options) = pad_asymmetric_conv_input::<Flex, 2>(x, options);
        let grad = symmetric_x_backward(x, weight, output_grad, options);
        let mut ranges: Vec<Slice> = input_shape.iter().map(|&size| Slice::from(0..size)).collect();
        for (dim, (begin, _)) in padding.iter().enumerate() {
            ranges[dim + 2] = Slice::from(*begin..*begin + input_shape[dim + 2]);
        }
        return Flex::float_slice(grad, &ranges);
    }
    symmetric_x_backward(x, weight, output_grad, options)
}

fn symmetric_x_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    let [_, _, height_in, width_in] = x.shape().dims();
    let [_, _, height_out, width_out] = output_grad.shape().dims();
    let [_, _, kernel_1, kernel_2] = weight.shape().dims();
    let padding_out = [
        calculate_padding_out(
            kernel_1,
            options.stride[0],
            options.padding_begin()[0],
            options.dilation[0],
            height_in,
            height_out,
        ),
        calculate_padding_out(
            kernel_2,
            options.stride[1],
            options.padding_begin()[1],
            options.dilation[1],
            width_in,
            width_out,
        ),
    ];
    Flex::conv_transpose2d(
        output_grad,
        weight,
        None,
        ConvTransposeOptions::new(
            options.stride,
            options.padding_begin(),
            padding_out,
            options.dilation,
            options.groups,
        ),
    )
}

/// Burn's default weight gradient of a 2D convolution.
pub fn default_weight_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    let (x, options) = pad_asymmetric_conv_input::<Flex, 2>(x, options);
    let weight_shape = weight.shape();
    let plain = ConvOptions::new(options.dilation, options.padding_begin(), options.stride, 1);
    if options.groups == 1 {
        let x_swapped = Flex::float_swap_dims(x, 0, 1);
        let grad_swapped = Flex::float_swap_dims(output_grad, 0, 1);
        let mut grad = Flex::float_swap_dims(Flex::conv2d(x_swapped, grad_swapped, None, plain), 0, 1);
        if grad.shape() != weight_shape {
            let slices: Vec<Slice> = weight_shape.iter().map(|&size| Slice::from(0..size)).collect();
            grad = Flex::float_slice(grad, &slices);
        }
        return grad;
    }
    let [channels_out, increment_ci, kernel_1, kernel_2] = weight_shape.dims();
    let increment_co = channels_out / options.groups;
    let x_swapped = Flex::float_swap_dims(x, 0, 1);
    let grad_swapped = Flex::float_swap_dims(output_grad, 0, 1);
    let mut weight_grad = Flex::float_zeros(weight_shape, &crate::FlexDevice, weight.dtype().into());
    for g in 0..options.groups {
        let x = Flex::float_slice(
            x_swapped.clone(),
            &[Slice::from(g * increment_ci..(g + 1) * increment_ci)],
        );
        let grad = Flex::float_slice(
            grad_swapped.clone(),
            &[Slice::from(g * increment_co..(g + 1) * increment_co)],
        );
        let mut part = Flex::float_swap_dims(Flex::conv2d(x, grad, None, plain.clone()), 0, 1);
        let [_, _, k1, k2] = part.shape().dims();
        if k1 != kernel_1 || k2 != kernel_2 {
            part = Flex::float_slice(
                part,
                &[
                    Slice::from(0..increment_co),
                    Slice::from(0..increment_ci),
                    Slice::from(0..kernel_1),
                    Slice::from(0..kernel_2),
                ],
            );
        }
        weight_grad = Flex::float_slice_assign(
            weight_grad,
            &[
                Slice::from(g * increment_co..(g + 1) * increment_co),
                Slice::from(0..increment_ci),
                Slice::from(0..kernel_1),
                Slice::from(0..kernel_2),
            ],
            part,
        );
    }
    weight_grad
}

//! Convolution gradients that the channels-last kernels (`channels_last.rs`) do not cover,
//! and the helpers those kernels share (xception-burn's patch, see `PATCHES.md` at the crate
//! root): Burn 0.22.1's default `conv2d_x_backward` and `conv2d_weight_backward` (private in
//! `burn_backend::ops::conv`), a gemm call on strided f32 matrices, and a parallel loop
//! over equal chunks of a buffer.

use alloc::vec::Vec;

use burn_backend::ops::conv::{calculate_padding_out, pad_asymmetric_conv_input};
use burn_backend::ops::{ConvOptions, ConvTransposeOptions, FloatTensorOps, ModuleOps};
use burn_backend::TensorMetadata;
use burn_std::Slice;

use crate::{Flex, FlexTensor};

/// Calls `work(i, chunk)` for each `chunk_len`-long chunk of `out`, in parallel with rayon.
pub(crate) fn for_each_plane<T: Send>(out: &mut [T], chunk_len: usize, work: impl Fn(usize, &mut [T]) + Sync) {
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

/// gemm's threading: rayon's pool when `parallel` (and rayon is built in), else the caller's
/// thread.
fn parallelism(parallel: bool) -> gemm::Parallelism {
    #[cfg(feature = "rayon")]
    if parallel {
        return gemm::Parallelism::Rayon(0);
    }
    #[cfg(not(feature = "rayon"))]
    let _ = parallel;
    gemm::Parallelism::None
}

/// `dst (+)= lhs * rhs` for f32 matrices given by their first element and (row, column)
/// strides; `accumulate` adds to what `dst` holds instead of overwriting it.
///
/// # Safety
/// Every element the strides reach must lie inside the slices.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    dst_row_stride: usize,
    accumulate: bool,
    (lhs, lhs_row_stride, lhs_col_stride): (&[f32], usize, usize),
    (rhs, rhs_row_stride, rhs_col_stride): (&[f32], usize, usize),
    parallel: bool,
) {
    let parallelism = parallelism(parallel);
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

/// `lhs * rhs` as a new row-major `m x n` vector, for f32 matrices given as in [gemm_f32].
/// The vector is zeroed before gemm writes it: gemm 0.19 documents `dst := alpha x dst +
/// beta x lhs x rhs` and does not promise that `read_dst = false` leaves an uninitialised
/// destination unread, so handing it one would rely on undocumented behaviour
/// (PATCHES.md measures what the zeroing costs).
///
/// # Safety
/// Every element the strides reach must lie inside the slices.
pub(crate) unsafe fn gemm_new_f32(
    [m, n, k]: [usize; 3],
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    parallel: bool,
) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    // SAFETY: `out` is an initialised row-major `m x n` matrix (row stride `n`); the caller
    // guarantees the operands' strides.
    unsafe { gemm_f32([m, n, k], &mut out, n, false, lhs, rhs, parallel) };
    out
}

/// Whether a product of this size is worth splitting over threads (flex's own threshold).
pub(crate) fn worth_parallel(m: usize, n: usize, k: usize) -> bool {
    m.saturating_mul(n).saturating_mul(k) >= 192 * 192 * 192
}

pub(crate) fn threads() -> usize {
    #[cfg(feature = "rayon")]
    {
        rayon::current_num_threads().max(1)
    }
    #[cfg(not(feature = "rayon"))]
    {
        1
    }
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

//! The gradient of 2D average pooling of f32 tensors (xception-burn's patch, see
//! `PATCHES.md` at the crate root).
//!
//! Flex's general path walks every output's window twice per element (once to count its
//! valid positions, once to spread the gradient), with bounds checks per tap. A window's
//! divisor is a product of a row factor and a column factor (with or without the padding), so
//! the gradient is separable: each output's share is spread along its row window, then the
//! rows along the column window, with contiguous row additions. Inception V3's 3x3 stride-1
//! pools spent 8% of a training step in the general path.

use alloc::vec;
use alloc::vec::Vec;

use burn_backend::DType;
use burn_std::{Bytes, Shape};

use crate::{FlexTensor, Layout};

/// For each output position along one axis, the input range its window covers and its
/// divisor factor: the range's length, or with `count_include_pad` the window's length inside
/// the padded input (flex's `padded_len_avgpool`).
fn windows(
    input: usize,
    output: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    count_include_pad: bool,
) -> Vec<(usize, usize, usize)> {
    (0..output)
        .map(|o| {
            let start = (o * stride).saturating_sub(pad);
            let end = (o * stride + kernel).saturating_sub(pad).min(input).max(start);
            let factor = if count_include_pad {
                (input + 2 * pad).saturating_sub(o * stride).min(kernel)
            } else {
                end - start
            };
            (start, end, factor)
        })
        .collect()
}

/// The gradient of `x` for the output gradient `grad` of an average pool (no dilation);
/// `None` for anything but 4D f32 tensors.
pub fn avg_pool2d_backward(
    x: &FlexTensor,
    grad: &FlexTensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    count_include_pad: bool,
) -> Option<FlexTensor> {
    let (x_shape, grad_shape) = (x.layout().shape(), grad.layout().shape());
    if x.dtype() != DType::F32
        || grad.dtype() != DType::F32
        || x_shape.num_dims() != 4
        || grad_shape.num_dims() != 4
        || kernel.contains(&0)
        || stride.contains(&0)
    {
        return None;
    }
    let [batch, channels, in_h, in_w] = x_shape.dims::<4>();
    let [_, _, out_h, out_w] = grad_shape.dims::<4>();
    let rows = windows(in_h, out_h, kernel[0], stride[0], padding[0], count_include_pad);
    let cols = windows(in_w, out_w, kernel[1], stride[1], padding[1], count_include_pad);
    let grad = grad.to_contiguous();
    let grad_data: &[f32] = grad.storage();
    let (in_plane, out_plane) = (in_h * in_w, out_h * out_w);
    let planes = batch * channels;
    let mut output = vec![0f32; planes * in_plane];

    let plane_gradient = |plane: usize, out: &mut [f32], spread: &mut Vec<f32>| {
        let g = &grad_data[plane * out_plane..(plane + 1) * out_plane];
        // `spread[oh]`: the row of output oh, each share spread over its column window.
        spread.clear();
        spread.resize(out_h * in_w, 0.0);
        for (oh, &(_, _, row_factor)) in rows.iter().enumerate() {
            let target = &mut spread[oh * in_w..(oh + 1) * in_w];
            for (ow, &(w_start, w_end, col_factor)) in cols.iter().enumerate() {
                let share = g[oh * out_w + ow] / (row_factor * col_factor).max(1) as f32;
                for value in &mut target[w_start..w_end] {
                    *value += share;
                }
            }
        }
        for (oh, &(h_start, h_end, _)) in rows.iter().enumerate() {
            let source = &spread[oh * in_w..(oh + 1) * in_w];
            for ih in h_start..h_end {
                let target = &mut out[ih * in_w..(ih + 1) * in_w];
                for (t, s) in target.iter_mut().zip(source) {
                    *t += s;
                }
            }
        }
    };
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        output
            .par_chunks_mut(in_plane.max(1))
            .enumerate()
            .for_each_init(Vec::new, |spread, (plane, out)| {
                plane_gradient(plane, out, spread)
            });
    }
    #[cfg(not(feature = "rayon"))]
    {
        let mut spread = Vec::new();
        for (plane, out) in output.chunks_mut(in_plane.max(1)).enumerate() {
            plane_gradient(plane, out, &mut spread);
        }
    }
    Some(FlexTensor::new(
        Bytes::from_elems(output),
        Layout::contiguous(Shape::from(vec![batch, channels, in_h, in_w])),
        DType::F32,
    ))
}

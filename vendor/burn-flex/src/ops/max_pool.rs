//! 2D max-pooling of f32 tensors without dilation (xception-burn's patch, see
//! `PATCHES.md` at the crate root).
//!
//! Flex's general path computes each output's window bounds with divisions, per output
//! and per axis; here the bounds are computed once per output row and column. Results,
//! indices and NaN handling (NaN wins, last NaN's index) are flex's.

use alloc::vec;
use alloc::vec::Vec;

use burn_backend::DType;
use burn_std::{Bytes, Shape};

use crate::{FlexTensor, Layout};

/// For each output position along one axis, the input range its window covers.
fn windows(input: usize, output: usize, kernel: usize, stride: usize, pad: usize) -> Vec<(usize, usize)> {
    (0..output)
        .map(|o| {
            let start = (o * stride).saturating_sub(pad);
            let end = (o * stride + kernel).saturating_sub(pad).min(input);
            (start, end.max(start))
        })
        .collect()
}

/// Max-pooled values and, when `with_indices`, the flat index within its plane of each
/// maximum; `None` for anything but f32 without dilation or ceil mode.
pub fn max_pool2d(
    x: &FlexTensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    ceil_mode: bool,
    with_indices: bool,
) -> Option<(FlexTensor, Option<FlexTensor>)> {
    let shape = x.layout().shape();
    if x.dtype() != DType::F32
        || shape.num_dims() != 4
        || dilation != [1, 1]
        || ceil_mode
        || kernel.contains(&0)
        || stride.contains(&0)
    {
        return None;
    }
    let [batch, channels, in_h, in_w] = shape.dims::<4>();
    if (0..2).any(|d| [in_h, in_w][d] + 2 * padding[d] < kernel[d]) || in_h * in_w == 0 {
        return None;
    }
    let out_h = (in_h + 2 * padding[0] - kernel[0]) / stride[0] + 1;
    let out_w = (in_w + 2 * padding[1] - kernel[1]) / stride[1] + 1;
    let rows = windows(in_h, out_h, kernel[0], stride[0], padding[0]);
    let cols = windows(in_w, out_w, kernel[1], stride[1], padding[1]);
    let x = x.to_contiguous();
    let x_data: &[f32] = x.storage();
    let (in_plane, out_plane) = (in_h * in_w, out_h * out_w);
    let planes = batch * channels;
    let mut values = vec![f32::NEG_INFINITY; planes * out_plane];
    let mut indices = vec![-1i64; if with_indices { planes * out_plane } else { 0 }];

    let pool_plane = |plane: usize, values: &mut [f32], indices: &mut [i64]| {
        let xs = &x_data[plane * in_plane..(plane + 1) * in_plane];
        for (oh, &(h_start, h_end)) in rows.iter().enumerate() {
            for (ow, &(w_start, w_end)) in cols.iter().enumerate() {
                let mut best = f32::NEG_INFINITY;
                let mut best_index: i64 = -1;
                for ih in h_start..h_end {
                    let row = &xs[ih * in_w..(ih + 1) * in_w];
                    for iw in w_start..w_end {
                        let v = row[iw];
                        if best_index < 0 || v > best || v.is_nan() {
                            best = v;
                            best_index = (ih * in_w + iw) as i64;
                        }
                    }
                }
                values[oh * out_w + ow] = best;
                if let Some(index) = indices.get_mut(oh * out_w + ow) {
                    *index = best_index;
                }
            }
        }
    };
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        if with_indices {
            values
                .par_chunks_mut(out_plane)
                .zip(indices.par_chunks_mut(out_plane))
                .enumerate()
                .for_each(|(plane, (values, indices))| pool_plane(plane, values, indices));
        } else {
            values
                .par_chunks_mut(out_plane)
                .enumerate()
                .for_each(|(plane, values)| pool_plane(plane, values, &mut []));
        }
    }
    #[cfg(not(feature = "rayon"))]
    {
        for plane in 0..planes {
            let values = &mut values[plane * out_plane..(plane + 1) * out_plane];
            if with_indices {
                let indices = &mut indices[plane * out_plane..(plane + 1) * out_plane];
                pool_plane(plane, values, indices);
            } else {
                pool_plane(plane, values, &mut []);
            }
        }
    }
    let out_shape = Shape::from(vec![batch, channels, out_h, out_w]);
    let values = FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(out_shape.clone()),
        DType::F32,
    );
    let indices = with_indices.then(|| {
        FlexTensor::new(Bytes::from_elems(indices), Layout::contiguous(out_shape), DType::I64)
    });
    Some((values, indices))
}

//! A separable convolution for inference in one pass (xception-burn's patch): an optional
//! ReLU of the input, a depthwise convolution with stride one, a 1x1 convolution, its bias
//! and a residual added, over blocks of output pixels.
//!
//! Op by op, each of those steps is a pass over the whole activation in memory (the ReLU, the
//! depthwise output, gemm's packing of it, the zeroed product, the bias, the residual sum).
//! Here a block's depthwise output (at most `BLOCK_VALUES`) stays in the core's L2 cache, the
//! 1x1 weights are packed once per call into panels of 64 output channels, and an AVX-512
//! micro-kernel multiplies the block by each panel, adding bias and residual while the sums are
//! in registers. Other CPUs, dtypes and shapes get `None`, and the caller runs the ops one by
//! one.

use core::mem::MaybeUninit;

use burn_backend::DType;
use burn_backend::ops::ConvOptions;

use super::{Conv, Kind, TapsRead, channels_last_tensor, f32_values, nhwc_data, relu_weighted_sum, weighted_sum, written};
use crate::FlexTensor;
use crate::ops::conv_grad::{for_each_plane, threads};

/// Output pixels per micro-tile: 6 pixels by 4 vectors of 16 channels hold 24 of AVX-512's
/// 32 registers of sums.
const TILE_ROWS: usize = 6;
/// f32 lanes of an AVX-512 vector.
const LANES: usize = 16;
/// Output channels per panel of packed 1x1 weights.
const PANEL: usize = 4 * LANES;
/// The most depthwise outputs a block holds (320 KB): with a panel of weights (up to
/// 64 x 2048 x 4 bytes), within a core's L2 cache.
const BLOCK_VALUES: usize = 80 << 10;

/// `relu(x)` (with `relu_input`, else `x`) through a depthwise convolution (weights
/// `[c, 1, kh, kw]`, stride one, `padding` on both sides of each axis), then a 1x1
/// convolution (`[c_out, c, 1, 1]`) plus `bias`, plus `residual` (`[n, c_out, oh, ow]`): a
/// channels-last f32 tensor, or `None` where the fused kernel does not apply (another
/// dtype or shape, a CPU without AVX-512, a build without `std`).
pub fn separable_conv2d(
    x: &FlexTensor,
    relu_input: bool,
    depthwise: &FlexTensor,
    padding: [usize; 2],
    pointwise: &FlexTensor,
    bias: Option<&FlexTensor>,
    residual: Option<&FlexTensor>,
) -> Option<FlexTensor> {
    if !avx512::available() {
        return None;
    }
    let shapes = Shapes::new(x, depthwise, padding, pointwise, residual)?;
    fused(&shapes, x, relu_input, depthwise, pointwise, bias, residual)
}

/// The depthwise convolution and the 1x1 convolution's output channels, when the operands
/// fit the fused kernel.
struct Shapes {
    depthwise: Conv,
    c_out: usize,
}

impl Shapes {
    fn new(
        x: &FlexTensor,
        depthwise: &FlexTensor,
        padding: [usize; 2],
        pointwise: &FlexTensor,
        residual: Option<&FlexTensor>,
    ) -> Option<Self> {
        let operands = [Some(x), Some(depthwise), Some(pointwise), residual];
        if operands
            .iter()
            .flatten()
            .any(|t| t.dtype() != DType::F32 || t.layout().shape().num_dims() != 4)
        {
            return None;
        }
        let c = x.layout().shape()[1];
        if c == 0 {
            return None;
        }
        let conv = Conv::new(
            x.layout().shape(),
            depthwise.layout().shape(),
            &ConvOptions::new([1, 1], padding, [1, 1], c),
        )?;
        let [c_out, c_in, kh, kw] = pointwise.layout().shape().dims::<4>();
        if !matches!(conv.kind, Kind::Depthwise) || [c_in, kh, kw] != [c, 1, 1] || c_out == 0 {
            return None;
        }
        let out_dims = [conv.batch, c_out, conv.out_hw[0], conv.out_hw[1]];
        if residual.is_some_and(|r| r.layout().shape().dims::<4>() != out_dims) {
            return None;
        }
        Some(Self { depthwise: conv, c_out })
    }

    fn out_dims(&self) -> [usize; 4] {
        let [oh, ow] = self.depthwise.out_hw;
        [self.depthwise.batch, self.c_out, oh, ow]
    }
}

std::thread_local! {
    /// Each thread's depthwise output for the block it works on.
    static DEPTHWISE: core::cell::RefCell<alloc::vec::Vec<f32>> = const {
        core::cell::RefCell::new(alloc::vec::Vec::new())
    };
}

fn fused(
    shapes: &Shapes,
    x: &FlexTensor,
    relu_input: bool,
    depthwise: &FlexTensor,
    pointwise: &FlexTensor,
    bias: Option<&FlexTensor>,
    residual: Option<&FlexTensor>,
) -> Option<FlexTensor> {
    let (conv, c, c_out) = (&shapes.depthwise, shapes.depthwise.c_in, shapes.c_out);
    let depthwise = f32_values(depthwise, depthwise.layout().num_elements())?;
    let taps = conv.tap_major(&depthwise.storage::<f32>()[..depthwise.layout().num_elements()]);
    let pointwise = f32_values(pointwise, c_out * c)?;
    let panels = avx512::Panels::new(&pointwise.storage::<f32>()[..c_out * c], c_out, c);
    let mut padded_bias = alloc::vec![0.0f32; panels.padded_len()];
    if let Some(bias) = bias {
        let bias = f32_values(bias, c_out)?;
        padded_bias[..c_out].copy_from_slice(&bias.storage::<f32>()[..c_out]);
    }
    let x = nhwc_data(x);
    let residual = residual.map(nhwc_data);
    let rows = conv.batch * conv.out_pixels();
    let block = block_rows(rows, c);
    // SAFETY: each block's product writes every channel of each of its pixels.
    let out = unsafe {
        written(rows * c_out, |out| {
            for_each_plane(out, block * c_out, |i, dst| {
                let (first, n) = (i * block, dst.len() / c_out);
                DEPTHWISE.with_borrow_mut(|buffer| {
                    // Whole micro-tiles: the rows past `n` are read, never stored.
                    let len = n.next_multiple_of(TILE_ROWS) * c;
                    if buffer.len() < len {
                        buffer.resize(len, 0.0);
                    }
                    depthwise_rows(conv, &x, &taps, relu_input, first, &mut buffer[..n * c]);
                    let residual = residual.as_deref().map(|r| &r[first * c_out..(first + n) * c_out]);
                    panels.product(&buffer[..len], n, &padded_bias, residual, dst);
                })
            })
        })
    };
    Some(channels_last_tensor(out, shapes.out_dims()))
}

/// Output pixels per block: as many as `BLOCK_VALUES` allows, a multiple of the micro-tile,
/// and a few blocks per thread.
fn block_rows(rows: usize, c: usize) -> usize {
    let by_cache = BLOCK_VALUES / c;
    let by_threads = rows.div_ceil(threads() * 4);
    by_cache.min(by_threads).max(1).next_multiple_of(TILE_ROWS)
}

/// The depthwise convolution of output pixels `first..` (as many as `out` holds), of
/// `relu(x)` when `relu` is set.
fn depthwise_rows(conv: &Conv, x: &[f32], taps: &[f32], relu: bool, first: usize, out: &mut [f32]) {
    let mut taps_read = TapsRead::new(conv);
    for (q, pixel) in out.chunks_exact_mut(conv.c_in).enumerate() {
        // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the sums below write only
        // initialised values.
        let pixel = unsafe { &mut *(pixel as *mut [f32] as *mut [MaybeUninit<f32>]) };
        let (pixels, weights) = taps_read.at(x, taps, first + q);
        if relu {
            relu_weighted_sum(pixel, pixels, weights);
        } else {
            weighted_sum(pixel, pixels, weights);
        }
    }
}

mod avx512 {
    use alloc::vec;
    use alloc::vec::Vec;
    use core::arch::x86_64::*;
    use core::mem::MaybeUninit;

    use super::{LANES, PANEL, TILE_ROWS};
    use crate::ops::conv_grad::for_each_plane;
    use crate::ops::simd_variant;

    /// Whether the CPU has AVX-512F and the tests allow it.
    pub(super) fn available() -> bool {
        let available =
            simd_variant::allowed(simd_variant::AVX512) && std::is_x86_feature_detected!("avx512f");
        if available {
            simd_variant::record(simd_variant::AVX512);
        }
        available
    }

    /// 1x1 weights `[c_out, k]` packed as panels of `PANEL` output channels: panel `j`,
    /// input channel `i` holds `w[j * PANEL.., i]` in `PANEL` consecutive values (zero past
    /// `c_out`), the vectors the micro-kernel loads.
    pub(super) struct Panels {
        values: Vec<f32>,
        c_out: usize,
        k: usize,
    }

    impl Panels {
        pub(super) fn new(w: &[f32], c_out: usize, k: usize) -> Self {
            let mut values = vec![0.0f32; c_out.div_ceil(PANEL) * k * PANEL];
            for_each_plane(&mut values, k * PANEL, |j, panel| {
                for o in j * PANEL..c_out.min((j + 1) * PANEL) {
                    for (i, &value) in w[o * k..(o + 1) * k].iter().enumerate() {
                        panel[i * PANEL + o - j * PANEL] = value;
                    }
                }
            });
            Self { values, c_out, k }
        }

        /// Output channels rounded up to whole panels.
        pub(super) fn padded_len(&self) -> usize {
            self.c_out.div_ceil(PANEL) * PANEL
        }

        /// `out[p, o] = sum_i a[p, i] * w[o, i] + bias[o] (+ residual[p, o])` for the first
        /// `rows` rows of `a` (`[_, k]`, whole micro-tiles long), `bias` padded to
        /// [Self::padded_len].
        pub(super) fn product(
            &self,
            a: &[f32],
            rows: usize,
            bias: &[f32],
            residual: Option<&[f32]>,
            out: &mut [MaybeUninit<f32>],
        ) {
            let (k, c_out) = (self.k, self.c_out);
            assert!(a.len() >= rows.next_multiple_of(TILE_ROWS) * k, "a holds whole micro-tiles");
            assert_eq!(out.len(), rows * c_out);
            assert_eq!(bias.len(), self.padded_len());
            assert!(residual.is_none_or(|r| r.len() == rows * c_out));
            assert!(available());
            for j in 0..c_out.div_ceil(PANEL) {
                let cols = (c_out - j * PANEL).min(PANEL);
                for r in (0..rows).step_by(TILE_ROWS) {
                    let tile = Tile {
                        a: a[r * k..].as_ptr(),
                        k,
                        panel: self.values[j * k * PANEL..].as_ptr(),
                        bias: bias[j * PANEL..].as_ptr(),
                        residual: residual.map(|res| res[r * c_out + j * PANEL..].as_ptr()),
                        out: out[r * c_out + j * PANEL..].as_mut_ptr().cast::<f32>(),
                        stride: c_out,
                        rows: (rows - r).min(TILE_ROWS),
                        cols,
                    };
                    // SAFETY: AVX-512F is available; the asserts above keep the tile's
                    // reads (`TILE_ROWS` rows of `a`, `k` rows of the panel, `cols` values
                    // of `rows` rows of the residual) and writes inside the slices.
                    unsafe {
                        match cols.div_ceil(LANES) {
                            4 => micro_kernel::<4>(&tile),
                            3 => micro_kernel::<3>(&tile),
                            2 => micro_kernel::<2>(&tile),
                            _ => micro_kernel::<1>(&tile),
                        }
                    }
                }
            }
        }
    }

    /// One micro-tile: up to `TILE_ROWS` pixels by `cols` (at most `16 * V`) channels.
    struct Tile {
        /// `TILE_ROWS` rows of `k` depthwise outputs.
        a: *const f32,
        k: usize,
        /// `k` rows of `PANEL` weights.
        panel: *const f32,
        /// `PANEL` biases.
        bias: *const f32,
        /// `rows` rows of `cols` values, `stride` apart.
        residual: Option<*const f32>,
        /// `rows` rows of `cols` values, `stride` apart.
        out: *mut f32,
        stride: usize,
        rows: usize,
        cols: usize,
    }

    /// # Safety
    /// The CPU has AVX-512F, and `t`'s pointers reach what its fields say.
    #[target_feature(enable = "avx512f")]
    unsafe fn micro_kernel<const V: usize>(t: &Tile) {
        let mut acc = [[_mm512_setzero_ps(); V]; TILE_ROWS];
        for i in 0..t.k {
            let mut w = [_mm512_setzero_ps(); V];
            for (v, w) in w.iter_mut().enumerate() {
                // SAFETY: row `i` of the panel holds `PANEL >= 16 * V` values.
                *w = unsafe { _mm512_loadu_ps(t.panel.add(i * PANEL + v * LANES)) };
            }
            for (p, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `a` holds `TILE_ROWS` rows of `k` values.
                let a = _mm512_set1_ps(unsafe { *t.a.add(p * t.k + i) });
                for (acc, &w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_fmadd_ps(a, w, *acc);
                }
            }
        }
        for v in 0..V {
            let start = v * LANES;
            let mask: __mmask16 = if t.cols >= start + LANES {
                u16::MAX
            } else {
                (1u16 << (t.cols - start)) - 1
            };
            // SAFETY: the bias holds `PANEL` values.
            let bias = unsafe { _mm512_loadu_ps(t.bias.add(start)) };
            for (p, acc) in acc.iter().enumerate() {
                if p >= t.rows {
                    break;
                }
                let at = p * t.stride + start;
                let mut value = _mm512_add_ps(acc[v], bias);
                if let Some(residual) = t.residual {
                    // SAFETY: the mask keeps to the tile's `cols` values of row `p`.
                    value = _mm512_add_ps(value, unsafe { _mm512_maskz_loadu_ps(mask, residual.add(at)) });
                }
                // SAFETY: as the residual's read.
                unsafe { _mm512_mask_storeu_ps(t.out.add(at), mask, value) };
            }
        }
    }
}

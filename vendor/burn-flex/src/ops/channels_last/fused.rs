//! Convolutions for inference in one pass (xception-burn's patch): a separable convolution (an
//! optional ReLU of the input, a depthwise convolution with stride one, a 1x1 convolution, its
//! bias and a residual added) and a convolution with one group (its bias and an optional
//! ReLU), over blocks of output pixels.
//!
//! Op by op, each of those steps is a pass over the whole activation in memory (the ReLU, the
//! depthwise output or the im2col patches, gemm's packing of them, the zeroed product, the
//! bias, the residual sum, the ReLU). Here a block's depthwise outputs or patches (at most
//! `BLOCK_VALUES`) stay in the core's L2 cache, the weights come packed ([PackedWeights],
//! once per model) in panels of 64 output channels, and an AVX-512 micro-kernel multiplies
//! the block by each panel, adding bias and residual and applying the ReLU while the sums are
//! in registers. Other CPUs, dtypes and shapes get `None`, and the caller runs the ops one by
//! one.

use alloc::vec::Vec;
use core::cell::RefCell;

use burn_backend::DType;
use burn_backend::ops::ConvOptions;
use burn_std::Shape;
use burn_std::sync::Arc;

use super::{Conv, Kind, channels_last_tensor, f32_values, nhwc_data, patch_major, written};
use crate::FlexTensor;
use crate::ops::conv_grad::{for_each_plane, threads};

/// Output pixels per micro-tile: 6 pixels by 4 vectors of 16 channels hold 24 of AVX-512's
/// 32 registers of sums.
const TILE_ROWS: usize = 6;
/// f32 lanes of an AVX-512 vector.
const LANES: usize = 16;
/// Output channels per panel of packed weights.
const PANEL: usize = 4 * LANES;
/// The most depthwise outputs or patch values a block holds (320 KB): with a panel of
/// weights (up to 64 x 2048 x 4 bytes), within a core's L2 cache.
const BLOCK_VALUES: usize = 80 << 10;

/// `relu(x)` (with `relu_input`, else `x`) through a depthwise convolution (weights
/// `[c, 1, kh, kw]`, stride one, `padding` on both sides of each axis), then a 1x1
/// convolution (`pointwise`, `[c_out, c, 1, 1]`) plus `bias`, plus `residual` (`[n, c_out,
/// oh, ow]`): a channels-last f32 tensor, or `None` where the fused kernel does not apply
/// (another dtype or shape, a CPU without AVX-512, a build without `std`).
pub fn separable_conv2d(
    x: &FlexTensor,
    relu_input: bool,
    depthwise: &FlexTensor,
    padding: [usize; 2],
    pointwise: &PackedWeights,
    bias: Option<&FlexTensor>,
    residual: Option<&FlexTensor>,
) -> Option<FlexTensor> {
    if !avx512::available() || pointwise.kernel != [1, 1] {
        return None;
    }
    let shapes = Shapes::new(x, depthwise, padding, &pointwise.panels, residual)?;
    fused(&shapes, x, relu_input, depthwise, &pointwise.panels, bias, residual)
}

/// `x` through a convolution with one group (the packed `weights`, `stride`, `padding` as
/// (begin, end) pairs, no dilation), plus `bias`, then a ReLU with `relu`: a channels-last
/// f32 tensor, or `None` where the fused kernel does not apply (as [separable_conv2d]).
pub fn conv2d_bias_relu(
    x: &FlexTensor,
    weights: &PackedWeights,
    stride: [usize; 2],
    padding: [(usize, usize); 2],
    bias: Option<&FlexTensor>,
    relu: bool,
) -> Option<FlexTensor> {
    let panels = &weights.panels;
    if !avx512::available() || x.dtype() != DType::F32 || x.layout().shape().num_dims() != 4 || stride.contains(&0) {
        return None;
    }
    let c_in = x.layout().shape()[1];
    let [kh, kw] = weights.kernel;
    let options = ConvOptions::new_with_padding(stride, padding, [1, 1], 1);
    let conv = Conv::new(x.layout().shape(), &Shape::new([panels.c_out, c_in, kh, kw]), &options)?;
    if matches!(conv.kind, Kind::Depthwise) || panels.k != conv.taps() * c_in {
        return None;
    }
    let (k, c_out) = (panels.k, panels.c_out);
    let bias = padded_bias(panels, bias)?;
    let x = nhwc_data(x);
    let zeros = alloc::vec![0.0f32; c_in];
    let rows = conv.batch * conv.out_pixels();
    let block = block_rows(rows, k);
    let fill = |out: &mut [core::mem::MaybeUninit<f32>]| {
        for_each_plane(out, block * c_out, |i, dst| {
            let (first, n) = (i * block, dst.len() / c_out);
            BLOCK.with_borrow_mut(|(buffer, _)| {
                // Whole micro-tiles: the rows past `n` are read, never stored.
                let len = n.next_multiple_of(TILE_ROWS) * k;
                if buffer.len() < len {
                    buffer.resize(len, 0.0);
                }
                gather_patches(&conv, &x, &zeros, first, &mut buffer[..n * k]);
                panels.product(&buffer[..len], n, &bias, None, relu, dst);
            })
        })
    };
    // SAFETY: each block's product writes every channel of each of its pixels.
    let out = unsafe { written(rows * c_out, fill) };
    Some(channels_last_tensor(out, conv.out_dims()))
}

/// A convolution's weights (`[c_out, c_in, kh, kw]`, f32, one group) packed for [conv2d_bias_relu] and,
/// 1x1, for [separable_conv2d]: the packing is a pass over the weights, so a caller packs
/// once and reuses them for every batch. Holds no reference to the tensor: weights changed
/// later need packing again.
#[derive(Clone, Debug)]
pub struct PackedWeights {
    panels: Arc<avx512::Panels>,
    kernel: [usize; 2],
}

impl PackedWeights {
    /// The packed weights, or `None` for another dtype or shape, or where the fused kernels
    /// do not run (a CPU without AVX-512).
    pub fn new(weights: &FlexTensor) -> Option<Self> {
        let shape = weights.layout().shape();
        if !avx512::available() || weights.dtype() != DType::F32 || shape.num_dims() != 4 {
            return None;
        }
        let [c_out, c_in, kh, kw] = shape.dims::<4>();
        let k = c_in * kh * kw;
        if c_out == 0 || k == 0 {
            return None;
        }
        let values = f32_values(weights, c_out * k)?;
        // A pixel's patch is laid out tap by tap (as the gather writes it).
        let w = patch_major(&values.storage::<f32>()[..c_out * k], c_out, c_in, kh * kw);
        let panels = avx512::Panels::new(&w, c_out, k);
        Some(Self {
            panels: Arc::new(panels),
            kernel: [kh, kw],
        })
    }
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
        pointwise: &avx512::Panels,
        residual: Option<&FlexTensor>,
    ) -> Option<Self> {
        let operands = [Some(x), Some(depthwise), residual];
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
        let c_out = pointwise.c_out;
        if !matches!(conv.kind, Kind::Depthwise) || conv.kernel != [3, 3] || pointwise.k != c {
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

type BlockBuffers = (Vec<f32>, Vec<*const f32>);

std::thread_local! {
    /// Each thread's depthwise outputs or patches for the block it works on, and the
    /// depthwise taps' pointers.
    static BLOCK: RefCell<BlockBuffers> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `bias` (or zeros) padded to whole panels, as the micro-kernel reads it.
fn padded_bias(panels: &avx512::Panels, bias: Option<&FlexTensor>) -> Option<Vec<f32>> {
    let mut padded = alloc::vec![0.0f32; panels.padded_len()];
    if let Some(bias) = bias {
        let c_out = panels.c_out;
        let bias = f32_values(bias, c_out)?;
        padded[..c_out].copy_from_slice(&bias.storage::<f32>()[..c_out]);
    }
    Some(padded)
}

fn fused(
    shapes: &Shapes,
    x: &FlexTensor,
    relu_input: bool,
    depthwise: &FlexTensor,
    panels: &avx512::Panels,
    bias: Option<&FlexTensor>,
    residual: Option<&FlexTensor>,
) -> Option<FlexTensor> {
    let (conv, c, c_out) = (&shapes.depthwise, shapes.depthwise.c_in, shapes.c_out);
    let depthwise = f32_values(depthwise, depthwise.layout().num_elements())?;
    let taps = conv.tap_major(&depthwise.storage::<f32>()[..depthwise.layout().num_elements()]);
    let padded_bias = padded_bias(panels, bias)?;
    let x = nhwc_data(x);
    let zeros = alloc::vec![0.0f32; c];
    let residual = residual.map(nhwc_data);
    let rows = conv.batch * conv.out_pixels();
    let block = block_rows(rows, c);
    let fill = |out: &mut [core::mem::MaybeUninit<f32>]| {
        for_each_plane(out, block * c_out, |i, dst| {
            let (first, n) = (i * block, dst.len() / c_out);
            BLOCK.with_borrow_mut(|(buffer, pointers)| {
                // Whole micro-tiles: the rows past `n` are read, never stored.
                let len = n.next_multiple_of(TILE_ROWS) * c;
                if buffer.len() < len {
                    buffer.resize(len, 0.0);
                }
                tap_pointers(conv, &x, &zeros, first, n, pointers);
                // SAFETY: `pointers` point at `c` values of `x` or `zeros`, both alive.
                unsafe { avx512::depthwise(pointers, &taps, c, relu_input, &mut buffer[..n * c]) };
                let residual = residual.as_deref().map(|r| &r[first * c_out..(first + n) * c_out]);
                panels.product(&buffer[..len], n, &padded_bias, residual, false, dst);
            })
        })
    };
    // SAFETY: each block's product writes every channel of each of its pixels.
    let out = unsafe { written(rows * c_out, fill) };
    Some(channels_last_tensor(out, shapes.out_dims()))
}

/// Output pixels per block: as many as `BLOCK_VALUES` allows, a multiple of the micro-tile,
/// and a few blocks per thread.
fn block_rows(rows: usize, k: usize) -> usize {
    let by_cache = BLOCK_VALUES / k;
    let by_threads = rows.div_ceil(threads() * 4);
    by_cache.min(by_threads).max(1).next_multiple_of(TILE_ROWS)
}

/// Per output pixel `first..first + n`, where each of the 3x3 taps reads `x` (NHWC): an input
/// pixel's first value, or `zeros` (`c` values) for a tap in the padding, so that the kernel
/// sums nine taps everywhere without a branch.
fn tap_pointers(conv: &Conv, x: &[f32], zeros: &[f32], first: usize, n: usize, out: &mut Vec<*const f32>) {
    let ([h, w], c) = (conv.in_hw, conv.c_in);
    out.clear();
    for (b, oy, ox) in pixel_positions(conv, first).take(n) {
        let rows: [Option<usize>; 3] = core::array::from_fn(|i| conv.input_at(0, oy, i));
        let columns: [Option<usize>; 3] = core::array::from_fn(|j| conv.input_at(1, ox, j));
        for row in rows {
            for column in columns {
                out.push(match (row, column) {
                    (Some(iy), Some(ix)) => x[((b * h + iy) * w + ix) * c..][..c].as_ptr(),
                    _ => zeros.as_ptr(),
                });
            }
        }
    }
}

/// `(image, row, column)` of the output pixels from `first` on, in NHWC order.
fn pixel_positions(conv: &Conv, first: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let [oh, ow] = conv.out_hw;
    let start = (first / (oh * ow), first / ow % oh, first % ow);
    core::iter::successors(Some(start), move |&(b, oy, ox)| {
        Some(match (ox + 1 == ow, oy + 1 == oh) {
            (false, _) => (b, oy, ox + 1),
            (true, false) => (b, oy + 1, 0),
            (true, true) => (b + 1, 0, 0),
        })
    })
}

/// The patches of output pixels `first..` (as many as `out` holds), `conv.patch_len()`
/// values each, tap by tap: the input pixel (NHWC `x`) a tap reads, or `zeros` in the padding.
fn gather_patches(conv: &Conv, x: &[f32], zeros: &[f32], first: usize, out: &mut [f32]) {
    let ([h, w], [kh, kw], c) = (conv.in_hw, conv.kernel, conv.c_in);
    for ((b, oy, ox), patch) in pixel_positions(conv, first).zip(out.chunks_exact_mut(conv.patch_len())) {
        for i in 0..kh {
            let iy = conv.input_at(0, oy, i);
            // A kernel row inside the input: `kw` neighbouring pixels, one copy.
            if let (Some(iy), Some(ix), Some(_)) = (iy, conv.input_at(1, ox, 0), conv.input_at(1, ox, kw - 1)) {
                let start = ((b * h + iy) * w + ix) * c;
                patch[i * kw * c..][..kw * c].copy_from_slice(&x[start..start + kw * c]);
                continue;
            }
            for j in 0..kw {
                let pixel = match (iy, conv.input_at(1, ox, j)) {
                    (Some(iy), Some(ix)) => &x[((b * h + iy) * w + ix) * c..][..c],
                    _ => zeros,
                };
                patch[(i * kw + j) * c..][..c].copy_from_slice(pixel);
            }
        }
    }
}

/// Whether [max_add] runs here: AVX-512, and the tests allow it (`simd_variant`).
pub(super) fn max_add_available() -> bool {
    avx512::available()
}

/// `out = max over pixels + shortcut` per channel (a NaN wins, the last one, as in Burn's
/// max-pool), `pixels` not empty and every slice at least `out.len()` long, where
/// [max_add_available].
pub(super) fn max_add(pixels: &[&[f32]], shortcut: &[f32], out: &mut [core::mem::MaybeUninit<f32>]) {
    let c = out.len();
    assert!(!pixels.is_empty() && shortcut.len() >= c && pixels.iter().all(|p| p.len() >= c));
    // The CPU's feature, which the `target_feature` code needs (see `Panels::product`).
    assert!(std::is_x86_feature_detected!("avx512f"));
    // SAFETY: AVX-512F is available; the assert keeps the reads within the slices.
    unsafe { avx512::max_add(pixels, shortcut.as_ptr(), out.as_mut_ptr().cast(), c) };
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
        let available = simd_variant::allowed(simd_variant::AVX512) && std::is_x86_feature_detected!("avx512f");
        if available {
            simd_variant::record(simd_variant::AVX512);
        }
        available
    }

    /// 1x1 weights `[c_out, k]` packed as panels of `PANEL` output channels: panel `j`,
    /// input channel `i` holds `w[j * PANEL.., i]` in `PANEL` consecutive values (zero past
    /// `c_out`), the vectors the micro-kernel loads.
    #[derive(Debug)]
    pub(super) struct Panels {
        values: Vec<f32>,
        pub(super) c_out: usize,
        pub(super) k: usize,
    }

    impl Panels {
        pub(super) fn new(w: &[f32], c_out: usize, k: usize) -> Self {
            let mut values = vec![0.0f32; c_out.div_ceil(PANEL) * k * PANEL];
            for_each_plane(&mut values, k * PANEL, |j, panel| {
                // A transpose in chunks of 16 input channels: the 16 panel rows a chunk
                // writes (4 KB) stay in L1 while each output channel's 16 weights are read.
                let outputs = j * PANEL..c_out.min((j + 1) * PANEL);
                for start in (0..k).step_by(16) {
                    let end = (start + 16).min(k);
                    for o in outputs.clone() {
                        for (i, &value) in w[o * k + start..o * k + end].iter().enumerate() {
                            panel[(start + i) * PANEL + o - j * PANEL] = value;
                        }
                    }
                }
            });
            Self { values, c_out, k }
        }

        /// Output channels rounded up to whole panels.
        pub(super) fn padded_len(&self) -> usize {
            self.c_out.div_ceil(PANEL) * PANEL
        }

        /// `out[p, o] = sum_i a[p, i] * w[o, i] + bias[o] (+ residual[p, o])`, its ReLU with
        /// `relu`, for the first `rows` rows of `a` (`[_, k]`, whole micro-tiles long), `bias`
        /// padded to [Self::padded_len].
        pub(super) fn product(
            &self,
            a: &[f32],
            rows: usize,
            bias: &[f32],
            residual: Option<&[f32]>,
            relu: bool,
            out: &mut [MaybeUninit<f32>],
        ) {
            let (k, c_out) = (self.k, self.c_out);
            assert!(
                a.len() >= rows.next_multiple_of(TILE_ROWS) * k,
                "a holds whole micro-tiles"
            );
            assert_eq!(out.len(), rows * c_out);
            assert_eq!(bias.len(), self.padded_len());
            assert!(residual.is_none_or(|r| r.len() == rows * c_out));
            // The CPU's feature, which the `target_feature` code needs: not `available()`, which a
            // test narrowing the SIMD variants may turn off while a call is under way.
            assert!(std::is_x86_feature_detected!("avx512f"));
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
                        match (cols.div_ceil(LANES), relu) {
                            (4, false) => micro_kernel::<4, false>(&tile),
                            (3, false) => micro_kernel::<3, false>(&tile),
                            (2, false) => micro_kernel::<2, false>(&tile),
                            (_, false) => micro_kernel::<1, false>(&tile),
                            (4, true) => micro_kernel::<4, true>(&tile),
                            (3, true) => micro_kernel::<3, true>(&tile),
                            (2, true) => micro_kernel::<2, true>(&tile),
                            (_, true) => micro_kernel::<1, true>(&tile),
                        }
                    }
                }
            }
        }
    }

    /// The 3x3 depthwise convolution, of the input's ReLU with `relu`: for output pixel `q`,
    /// `out[q * c..][..c] = sum over taps t of pointers[9q + t][..c] * weights[t * c..][..c]`.
    ///
    /// # Safety
    /// Every pointer reaches `c` values.
    pub(super) unsafe fn depthwise(pointers: &[*const f32], weights: &[f32], c: usize, relu: bool, out: &mut [f32]) {
        let n = pointers.len() / 9;
        assert_eq!(pointers.len(), n * 9);
        assert_eq!(weights.len(), 9 * c);
        assert_eq!(out.len(), n * c);
        // The CPU's feature, which the `target_feature` code needs: not `available()`, which a
        // test narrowing the SIMD variants may turn off while a call is under way.
        assert!(std::is_x86_feature_detected!("avx512f"));
        // Two output pixels at a time (8 chains of FMAs, each tap's weights loaded once for
        // both), each walking its inputs' channels in order, which the prefetchers follow.
        let mut q = 0;
        while q < n {
            let pair = q + 2 <= n;
            // The taps that pixels `q + AHEAD` and the one after read and their left
            // neighbours do not (the kernel's right column): asked of the cache now, they
            // arrive while these pixels are summed (the layer before left them in L3 or memory).
            let ahead: [*const f32; 6] = core::array::from_fn(|k| {
                let pixel = (q + AHEAD + k / 3).min(n - 1);
                pointers[9 * pixel + 3 * (k % 3) + 2]
            });
            let (pointers, out) = (&pointers[9 * q..], out[q * c..].as_mut_ptr());
            // SAFETY: AVX-512F is available; the caller vouches for the pointers, the asserts
            // for `weights` and `out` (rows `q` and `q + 1` when `pair`).
            unsafe {
                match (relu, pair) {
                    (true, true) => pixels::<true, 2>(pointers, &ahead, weights, c, out),
                    (true, false) => pixels::<true, 1>(pointers, &ahead, weights, c, out),
                    (false, true) => pixels::<false, 2>(pointers, &ahead, weights, c, out),
                    (false, false) => pixels::<false, 1>(pointers, &ahead, weights, c, out),
                }
            }
            q += if pair { 2 } else { 1 };
        }
    }

    /// Output pixels between those summed and those whose input is prefetched.
    const AHEAD: usize = 4;

    /// The lanes of channels `start..c` in a vector.
    #[inline]
    fn lane_mask(start: usize, c: usize) -> __mmask16 {
        if c - start >= LANES {
            u16::MAX
        } else {
            (1u16 << (c - start)) - 1
        }
    }

    /// `P` output pixels (their taps' pointers first in `pointers`, rows `c` apart from
    /// `out`): every channel, 64 at a time, then the rest; prefetching the channels of
    /// `ahead` as it goes.
    ///
    /// # Safety
    /// On a CPU with AVX-512F; `9 * P` pointers and `ahead` that reach `c` values, `weights`
    /// 9 rows of `c`, `P` rows of `c` at `out`.
    #[target_feature(enable = "avx512f")]
    unsafe fn pixels<const RELU: bool, const P: usize>(
        pointers: &[*const f32],
        ahead: &[*const f32; 6],
        weights: &[f32],
        c: usize,
        out: *mut f32,
    ) {
        let taps: [[*const f32; 9]; P] = core::array::from_fn(|p| core::array::from_fn(|t| pointers[9 * p + t]));
        let weights = weights.as_ptr();
        let full = c / PANEL * PANEL;
        // SAFETY (every call): the channels `start..` and the masks keep to `c` values.
        for start in (0..full).step_by(PANEL) {
            unsafe { channels::<RELU, P, 4>(&taps, ahead, weights, c, start, [u16::MAX; 4], out) };
        }
        if full < c {
            let masks = |v: usize| lane_mask((full + v * LANES).min(c), c);
            unsafe {
                match (c - full).div_ceil(LANES) {
                    4 => channels::<RELU, P, 4>(&taps, ahead, weights, c, full, core::array::from_fn(masks), out),
                    3 => channels::<RELU, P, 3>(&taps, ahead, weights, c, full, core::array::from_fn(masks), out),
                    2 => channels::<RELU, P, 2>(&taps, ahead, weights, c, full, core::array::from_fn(masks), out),
                    _ => channels::<RELU, P, 1>(&taps, ahead, weights, c, full, core::array::from_fn(masks), out),
                }
            }
        }
    }

    /// `V` vectors of channels from `start` (lanes `masks`) of `P` output pixels.
    ///
    /// # Safety
    /// As [pixels], for the masked lanes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn channels<const RELU: bool, const P: usize, const V: usize>(
        taps: &[[*const f32; 9]; P],
        ahead: &[*const f32; 6],
        weights: *const f32,
        c: usize,
        start: usize,
        masks: [__mmask16; V],
        out: *mut f32,
    ) {
        for &pixel in ahead {
            for v in 0..V {
                // SAFETY: channel `start + 16v` of a pixel of `c` values; a prefetch reads
                // nothing into the program.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(pixel.add(start + v * LANES).cast()) };
            }
        }
        let zero = _mm512_setzero_ps();
        let mut acc = [[zero; V]; P];
        for t in 0..9 {
            let mut w = [zero; V];
            for (v, w) in w.iter_mut().enumerate() {
                // SAFETY: the caller's contract.
                *w = unsafe { _mm512_maskz_loadu_ps(masks[v], weights.add(t * c + start + v * LANES)) };
            }
            for (acc, taps) in acc.iter_mut().zip(taps) {
                for (v, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: the caller's contract.
                    let mut x = unsafe { _mm512_maskz_loadu_ps(masks[v], taps[t].add(start + v * LANES)) };
                    if RELU {
                        // MAXPS returns its second operand for a NaN: a NaN stays, as in Burn.
                        x = _mm512_max_ps(zero, x);
                    }
                    *acc = _mm512_fmadd_ps(x, w[v], *acc);
                }
            }
        }
        for (p, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                // SAFETY: the caller's contract.
                unsafe { _mm512_mask_storeu_ps(out.add(p * c + start + v * LANES), masks[v], acc) };
            }
        }
    }

    /// See [super::max_add].
    ///
    /// # Safety
    /// On a CPU with AVX-512F; `pixels` and `shortcut` reach `c` values, `out` takes `c`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_add(pixels: &[&[f32]], shortcut: *const f32, out: *mut f32, c: usize) {
        let full = c / PANEL * PANEL;
        // SAFETY (every call): the channels `start..` and the masks keep to `c` values.
        for start in (0..full).step_by(PANEL) {
            unsafe { max_add_channels::<4>(pixels, shortcut, out, start, [u16::MAX; 4]) };
        }
        if full < c {
            let masks = |v: usize| lane_mask((full + v * LANES).min(c), c);
            unsafe {
                match (c - full).div_ceil(LANES) {
                    4 => max_add_channels::<4>(pixels, shortcut, out, full, core::array::from_fn(masks)),
                    3 => max_add_channels::<3>(pixels, shortcut, out, full, core::array::from_fn(masks)),
                    2 => max_add_channels::<2>(pixels, shortcut, out, full, core::array::from_fn(masks)),
                    _ => max_add_channels::<1>(pixels, shortcut, out, full, core::array::from_fn(masks)),
                }
            }
        }
    }

    /// [max_add] for `V` vectors of channels from `start` (lanes `masks`).
    ///
    /// # Safety
    /// As [max_add], for the masked lanes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn max_add_channels<const V: usize>(
        pixels: &[&[f32]],
        shortcut: *const f32,
        out: *mut f32,
        start: usize,
        masks: [__mmask16; V],
    ) {
        let load = |pixel: *const f32, v: usize| {
            // SAFETY: the caller's contract.
            unsafe { _mm512_maskz_loadu_ps(masks[v], pixel.add(start + v * LANES)) }
        };
        let mut best: [__m512; V] = core::array::from_fn(|v| load(pixels[0].as_ptr(), v));
        for pixel in &pixels[1..] {
            for (v, best) in best.iter_mut().enumerate() {
                let x = load(pixel.as_ptr(), v);
                // MAXPS returns its second operand when either is a NaN: a NaN kept so far
                // stays; a new one replaces it, as Burn's `v > best || v.is_nan()`.
                *best = _mm512_mask_mov_ps(_mm512_max_ps(x, *best), _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), x);
            }
        }
        for (v, best) in best.iter().enumerate() {
            let sum = _mm512_add_ps(*best, load(shortcut, v));
            // SAFETY: the caller's contract.
            unsafe { _mm512_mask_storeu_ps(out.add(start + v * LANES), masks[v], sum) };
        }
    }

    /// One micro-tile: up to `TILE_ROWS` pixels by `cols` (at most `16 * V`) channels.
    struct Tile {
        /// `TILE_ROWS` rows of `k` depthwise outputs or patch values.
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

    /// The tile's sums plus bias and residual, their ReLU with `RELU`.
    ///
    /// # Safety
    /// The CPU has AVX-512F, and `t`'s pointers reach what its fields say.
    #[target_feature(enable = "avx512f")]
    unsafe fn micro_kernel<const V: usize, const RELU: bool>(t: &Tile) {
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
                if RELU {
                    // MAXPS returns its second operand for a NaN: a NaN stays, as in Burn.
                    value = _mm512_max_ps(_mm512_setzero_ps(), value);
                }
                // SAFETY: as the residual's read.
                unsafe { _mm512_mask_storeu_ps(t.out.add(at), mask, value) };
            }
        }
    }
}

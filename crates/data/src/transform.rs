//! Crops, resizing and normalisation, written straight into a batch's `[3, S, S]` slot.
//!
//! Resizing is separable and antialiased: Pillow's bilinear filter, whose support widens with
//! the scale when it shrinks. It reads only the crop's rows and columns of the decoded image
//! and writes normalised floats, so no intermediate image is ever copied.

use std::ops::Deref;

use image::{ImageBuffer, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::decode::{JpegRegion, decode};
use crate::rng::Rng;

/// Inception's random crop: area fraction and aspect-ratio ranges, plus a horizontal flip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomResizedCrop {
    /// Range of the crop's area as a fraction of the image's (Inception: 0.05 to 1).
    pub area: (f64, f64),
    /// Range of the crop's width / height (Inception: 3/4 to 4/3), sampled log-uniformly.
    pub aspect: (f64, f64),
    /// Probability of a horizontal flip.
    pub flip: f64,
}

impl Default for RandomResizedCrop {
    fn default() -> Self {
        // TF-slim's inception_preprocessing: area_range (0.05, 1.0), aspect (0.75, 1.33).
        Self {
            area: (0.05, 1.0),
            aspect: (3.0 / 4.0, 4.0 / 3.0),
            flip: 0.5,
        }
    }
}

/// A crop box in pixels of the decoded image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
}

impl RandomResizedCrop {
    /// Checks the ranges, naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let (a0, a1) = self.area;
        if !(a0 > 0.0 && a0 <= a1 && a1 <= 1.0) {
            return Err(format!(
                "area range must satisfy 0 < min <= max <= 1, got {:?}",
                self.area
            ));
        }
        let (r0, r1) = self.aspect;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(format!(
                "aspect range must satisfy 0 < min <= max, got {:?}",
                self.aspect
            ));
        }
        if !(0.0..=1.0).contains(&self.flip) {
            return Err(format!("flip must be a probability, got {}", self.flip));
        }
        Ok(())
    }

    /// Samples a crop of a `width` x `height` image (torchvision's algorithm; after ten misses
    /// the whole image, as TensorFlow falls back).
    pub fn sample(&self, width: u32, height: u32, rng: &mut Rng) -> CropBox {
        let (w, h) = (f64::from(width), f64::from(height));
        let area = w * h;
        let (log_r0, log_r1) = (self.aspect.0.ln(), self.aspect.1.ln());
        for _ in 0..10 {
            let target = area * rng.range(self.area.0, self.area.1);
            let ratio = rng.range(log_r0, log_r1).exp();
            let cw = (target * ratio).sqrt().round();
            let ch = (target / ratio).sqrt().round();
            if cw >= 1.0 && ch >= 1.0 && cw <= w && ch <= h {
                let x = rng.below((w - cw) as usize + 1) as f64;
                let y = rng.below((h - ch) as usize + 1) as f64;
                return CropBox {
                    x,
                    y,
                    width: cw,
                    height: ch,
                };
            }
        }
        CropBox {
            x: 0.0,
            y: 0.0,
            width: w,
            height: h,
        }
    }
}

/// The fraction of each side that Inception's evaluation keeps (`central_crop(0.875)`).
pub const INCEPTION_CROP_PCT: f64 = 0.875;

/// TensorFlow's `central_crop`: the central `fraction` of each side (not a square).
pub fn central_crop(width: u32, height: u32, fraction: f64) -> CropBox {
    let side = |size: u32| {
        let size = f64::from(size);
        let start = ((size - size * fraction) / 2.0).floor().max(0.0);
        (start, size - 2.0 * start)
    };
    let (x, cw) = side(width);
    let (y, ch) = side(height);
    CropBox {
        x,
        y,
        width: cw,
        height: ch,
    }
}

/// What happens to a decoded image before it enters a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Random resized crop and flip, for training.
    Train {
        /// Output side.
        size: u32,
        /// The crop distribution.
        crop: RandomResizedCrop,
    },
    /// Central crop then resize, for evaluation (deterministic).
    Eval {
        /// Output side.
        size: u32,
        /// Fraction of each side kept (0.875 as in Inception's evaluation; 1 keeps all).
        crop_pct: f64,
    },
}

impl Transform {
    /// Output side in pixels.
    pub fn size(&self) -> u32 {
        match self {
            Self::Train { size, .. } | Self::Eval { size, .. } => *size,
        }
    }

    /// Writes the transformed `image` into `out` (`[3, size, size]`, values `x / 127.5 - 1`).
    pub fn apply(&self, image: &RgbImage, rng: &mut Rng, out: &mut [f32]) {
        let (width, height) = image.dimensions();
        let (crop, flip) = self.plan(width, height, rng);
        let size = self.size() as usize;
        resize_into(image, crop, (size, size), flip, out);
    }

    /// Decodes an encoded image (any format [`decode`] takes) and writes it transformed into
    /// `out`, as [`Transform::apply`] would: the same pixels from the same draws of `rng`.
    /// Of a JPEG photograph, only the rows down to the crop's last and the columns it reads
    /// are decoded. The error is the reason the file is bad.
    pub fn apply_encoded(
        &self,
        bytes: &[u8],
        rng: &mut Rng,
        out: &mut [f32],
    ) -> Result<(), String> {
        let Some(jpeg) = JpegRegion::new(bytes) else {
            self.apply(&decode(bytes)?, rng, out);
            return Ok(());
        };
        let jpeg = jpeg?;
        let (width, height) = jpeg.dimensions();
        let (crop, flip) = self.plan(width as u32, height as u32, rng);
        let size = self.size() as usize;
        let taps = CropTaps::new((width, height), crop, (size, size));
        DECODED.with_borrow_mut(|pixels| {
            jpeg.decode_into(taps.columns.span(), taps.rows.span().end, pixels)?;
            taps.resize(pixels, width, flip, out);
            Ok(())
        })
    }

    /// The crop and flip for a `width` x `height` image (training draws them from `rng`).
    fn plan(&self, width: u32, height: u32, rng: &mut Rng) -> (CropBox, bool) {
        match self {
            Self::Train { crop, .. } => {
                let crop_box = crop.sample(width, height, rng);
                (crop_box, rng.chance(crop.flip))
            }
            Self::Eval { crop_pct, .. } => (central_crop(width, height, *crop_pct), false),
        }
    }
}

thread_local! {
    /// Each loader thread's decoded image, reused: a fresh buffer per image costs page faults.
    static DECODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Pillow's antialiased bilinear taps of one axis, every output position with the same
/// number of weights (zero-padded at the ends), so that the inner loops have a fixed length.
struct AxisTaps {
    /// First input index of each output position.
    starts: Vec<usize>,
    /// `len` weights per output position.
    weights: Vec<f32>,
    len: usize,
}

impl AxisTaps {
    /// The taps of `out` positions over `[offset, offset + length)` of an axis of `input`
    /// pixels.
    fn new(input: usize, offset: f64, length: f64, out: usize) -> Self {
        // Each position's trimmed run: (first input index, where in `flat`, how many).
        let scale = length / out as f64;
        let mut runs = Vec::with_capacity(out);
        let mut flat = Vec::new();
        for i in 0..out {
            let at = flat.len();
            let start = pillow_taps(input, offset, scale, i, &mut flat);
            runs.push((start, at, flat.len() - at));
        }
        let len = runs.iter().map(|run| run.2).max().unwrap_or(0).max(1);
        let mut starts = Vec::with_capacity(out);
        let mut weights = vec![0f32; out * len];
        for (i, &(start, at, count)) in runs.iter().enumerate() {
            // Near the image's end the padded run starts earlier, so that it stays inside;
            // `len` never exceeds `input`, since every trimmed run lies inside the axis.
            let padded_start = start.min(input.saturating_sub(len));
            let to = i * len + (start - padded_start);
            for (dst, &w) in weights[to..to + count]
                .iter_mut()
                .zip(&flat[at..at + count])
            {
                *dst = w as f32;
            }
            starts.push(padded_start);
        }
        Self {
            starts,
            weights,
            len,
        }
    }

    fn weights(&self, i: usize) -> &[f32] {
        &self.weights[i * self.len..(i + 1) * self.len]
    }

    /// The input range that the taps read.
    fn span(&self) -> std::ops::Range<usize> {
        let first = self.starts.iter().copied().min().unwrap_or(0);
        let last = self
            .starts
            .iter()
            .copied()
            .max()
            .map_or(0, |s| s + self.len);
        first..last
    }
}

/// Appends output position `i`'s normalised weights to `weights`, zero weights trimmed at
/// both ends, and returns the input index of the first (Pillow's filter: a triangle whose
/// radius is the scale when shrinking).
fn pillow_taps(input: usize, offset: f64, scale: f64, i: usize, weights: &mut Vec<f64>) -> usize {
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // the triangle filter's radius is 1 at scale 1
    let center = offset + (i as f64 + 0.5) * scale;
    let start = ((center - support + 0.5).floor().max(0.0)) as usize;
    let end = ((center + support + 0.5).floor() as usize).min(input);
    let at = weights.len();
    weights.extend((start..end).map(|x| {
        let t = ((x as f64 - center + 0.5) / filter_scale).abs();
        (1.0 - t).max(0.0)
    }));
    let run = &mut weights[at..];
    let total: f64 = run.iter().sum();
    if total > 0.0 {
        run.iter_mut().for_each(|w| *w /= total);
    }
    let first = run.iter().position(|&w| w != 0.0).unwrap_or(0);
    let last = run
        .iter()
        .rposition(|&w| w != 0.0)
        .map_or(0, |p| p + 1)
        .max(first);
    weights.truncate(at + last);
    weights.drain(at..at + first);
    start + first
}

/// Resizes `crop` of `image` to `(out_w, out_h)`, optionally mirrored, into `out` as planar
/// RGB normalised to `[-1, 1]`.
pub fn resize_into<Pixels: Deref<Target = [u8]>>(
    image: &ImageBuffer<Rgb<u8>, Pixels>,
    crop: CropBox,
    (out_w, out_h): (usize, usize),
    flip: bool,
    out: &mut [f32],
) {
    let (width, height) = (image.width() as usize, image.height() as usize);
    CropTaps::new((width, height), crop, (out_w, out_h)).resize(image.as_raw(), width, flip, out);
}

/// The filter taps of one crop's resize, along both axes.
struct CropTaps {
    columns: AxisTaps,
    rows: AxisTaps,
}

impl CropTaps {
    fn new((width, height): (usize, usize), crop: CropBox, (out_w, out_h): (usize, usize)) -> Self {
        Self {
            columns: AxisTaps::new(width, crop.x, crop.width, out_w),
            rows: AxisTaps::new(height, crop.y, crop.height, out_h),
        }
    }

    /// Resizes RGB8 `image` (`width` pixels a row; only the rows and columns that the taps
    /// span are read) into `out`, planar and normalised, mirrored if `flip`.
    fn resize(&self, image: &[u8], width: usize, flip: bool, out: &mut [f32]) {
        assert_eq!(
            out.len(),
            3 * self.out_w() * self.out_h(),
            "output slot has the wrong size"
        );
        assert!(
            image.len() >= self.rows.span().end * width * 3,
            "the image is shorter than the crop's rows"
        );
        // Per-thread buffers: a fresh megabyte per image costs page faults and clearing.
        SCRATCH.with_borrow_mut(|scratch| {
            pulp::Arch::new().dispatch(Passes {
                image,
                width,
                taps: self,
                flip,
                out,
                scratch,
            })
        });
    }

    fn out_w(&self) -> usize {
        self.columns.starts.len()
    }

    fn out_h(&self) -> usize {
        self.rows.starts.len()
    }
}

/// The two passes of [`resize_into`], run compiled for the widest SIMD the CPU has (AVX2, or
/// AVX-512 where the build enables pulp's `x86-v4`, as the binary does through gemm; picked
/// at run time): the crate builds for baseline x86-64, where they vectorise to SSE2 only.
/// Every path adds the same products in the same order (no fused multiply-adds), so the
/// output does not depend on the CPU.
struct Passes<'a> {
    image: &'a [u8],
    width: usize,
    taps: &'a CropTaps,
    flip: bool,
    out: &'a mut [f32],
    scratch: &'a mut Scratch,
}

impl pulp::WithSimd for Passes<'_> {
    type Output = ();

    // Inlined, with what it calls, into pulp's function for each instruction set.
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(mut self, _simd: S) {
        self.horizontal();
        self.vertical();
    }
}

impl Passes<'_> {
    /// Filters each row the vertical pass reads into `scratch.horizontal`: `[rows, out_w, 3]`
    /// plus one value, since each pixel is stored as four lanes.
    #[inline(always)]
    fn horizontal(&mut self) {
        let CropTaps { columns, rows } = self.taps;
        let (row_span, column_span) = (rows.span(), columns.span());
        let Scratch {
            pixels, horizontal, ..
        } = &mut *self.scratch;
        let line_len = self.taps.out_w() * 3;
        grow(horizontal, row_span.len() * line_len + 1);
        grow(pixels, column_span.len());
        let row_bytes = self.width * 3;
        for (r, y) in row_span.enumerate() {
            let line = &self.image[y * row_bytes..(y + 1) * row_bytes];
            for (dst, px) in pixels
                .iter_mut()
                .zip(line[column_span.start * 3..column_span.end * 3].chunks_exact(3))
            {
                *dst = [f32::from(px[0]), f32::from(px[1]), f32::from(px[2]), 0.0];
            }
            let dst = &mut horizontal[r * line_len..(r + 1) * line_len + 1];
            horizontal_pass(pixels, columns, column_span.start, dst);
        }
    }

    /// The vertical pass, normalisation and flip, into the planar output.
    #[inline(always)]
    fn vertical(self) {
        let (rows, out_w, out_h) = (&self.taps.rows, self.taps.out_w(), self.taps.out_h());
        let first_row = rows.span().start;
        let Scratch {
            horizontal,
            accumulator,
            ..
        } = self.scratch;
        let line_len = out_w * 3;
        let plane = out_w * out_h;
        let (red_plane, rest) = self.out.split_at_mut(plane);
        let (green_plane, blue_plane) = rest.split_at_mut(plane);
        grow(accumulator, line_len);
        let accumulator = &mut accumulator[..line_len];
        for j in 0..out_h {
            let line = |k: usize| {
                let r = rows.starts[j] + k - first_row;
                &horizontal[r * line_len..(r + 1) * line_len]
            };
            let weights = rows.weights(j);
            for (a, &s) in accumulator.iter_mut().zip(line(0)) {
                *a = s * weights[0];
            }
            for (k, &w) in weights.iter().enumerate().skip(1) {
                for (a, &s) in accumulator.iter_mut().zip(line(k)) {
                    *a += s * w;
                }
            }
            accumulator.iter_mut().for_each(|a| *a = *a / 127.5 - 1.0);
            let row = j * out_w..(j + 1) * out_w;
            let planes = [
                &mut red_plane[row.clone()],
                &mut green_plane[row.clone()],
                &mut blue_plane[row],
            ];
            split_channels(accumulator, planes, self.flip);
        }
    }
}

/// Interleaved RGB values into three planes' rows, mirrored if `flip`.
#[inline(always)]
fn split_channels(pixels: &[f32], [red, green, blue]: [&mut [f32]; 3], flip: bool) {
    let planes = red.iter_mut().zip(green.iter_mut()).zip(blue.iter_mut());
    let write = |((r, g), b): ((&mut f32, &mut f32), &mut f32), px: &[f32]| {
        (*r, *g, *b) = (px[0], px[1], px[2]);
    };
    if flip {
        planes
            .rev()
            .zip(pixels.chunks_exact(3))
            .for_each(|(dst, px)| write(dst, px));
    } else {
        planes
            .zip(pixels.chunks_exact(3))
            .for_each(|(dst, px)| write(dst, px));
    }
}

/// One row of the horizontal pass: `pixels` (four lanes each, from input column `first`)
/// filtered into `dst`'s `[out_w, 3]` values. Each pixel is stored as four lanes, the fourth
/// overwritten by the next pixel's red, hence `dst`'s one extra value.
#[inline(always)]
fn horizontal_pass(pixels: &[[f32; 4]], columns: &AxisTaps, first: usize, dst: &mut [f32]) {
    for (i, &start) in columns.starts.iter().enumerate() {
        let mut sum = [0f32; 4];
        let source = &pixels[start - first..start - first + columns.len];
        for (px, &w) in source.iter().zip(columns.weights(i)) {
            for lane in 0..4 {
                sum[lane] += px[lane] * w;
            }
        }
        dst[i * 3..i * 3 + 4].copy_from_slice(&sum);
    }
}

/// Lengthens `buffer` to at least `len` without clearing what it holds: every value the
/// passes read was written first in the same call.
fn grow<T: Copy + Default>(buffer: &mut Vec<T>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, T::default());
    }
}

#[derive(Default)]
struct Scratch {
    /// One input row's crop columns as four-lane floats.
    pixels: Vec<[f32; 4]>,
    /// The horizontal pass's rows.
    horizontal: Vec<f32>,
    /// One output row of the vertical pass.
    accumulator: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> RgbImage {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        image::open(&path).expect("fixture").into_rgb8()
    }

    /// Planar normalised floats back to 0..255 interleaved values.
    fn to_pixels(planar: &[f32], w: usize, h: usize) -> Vec<f32> {
        let plane = w * h;
        (0..plane)
            .flat_map(|p| (0..3).map(move |c| (planar[c * plane + p] + 1.0) * 127.5))
            .collect()
    }

    fn max_difference_to_pillow(reference: &str, crop: CropBox) -> f32 {
        let source = fixture("resize_source.png");
        let expected = fixture(reference);
        let (w, h) = (expected.width() as usize, expected.height() as usize);
        let mut out = vec![0f32; 3 * w * h];
        resize_into(&source, crop, (w, h), false, &mut out);
        to_pixels(&out, w, h)
            .iter()
            .zip(expected.as_raw())
            .map(|(a, &b)| (a - f32::from(b)).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn antialiased_shrink_matches_pillow() {
        let crop = CropBox {
            x: 5.0,
            y: 3.0,
            width: 51.0,
            height: 41.0,
        };
        // Pillow rounds to 8 bits between its two passes; we keep floats.
        let difference = max_difference_to_pillow("resize_down.png", crop);
        assert!(difference <= 1.5, "max difference {difference}");
    }

    #[test]
    fn enlargement_matches_pillow() {
        let crop = CropBox {
            x: 10.0,
            y: 8.0,
            width: 20.0,
            height: 16.0,
        };
        let difference = max_difference_to_pillow("resize_up.png", crop);
        assert!(difference <= 1.5, "max difference {difference}");
    }

    #[test]
    fn padded_taps_weigh_the_same_pixels_as_pillows() {
        // Whole axes, crops touching the far edge (where a padded run must start earlier),
        // enlargements, and axes shorter than the filter.
        let cases = [
            (500, 0.0, 500.0, 299),
            (375, 23.0, 352.0, 299),
            (40, 30.0, 10.0, 25),
            (7, 0.0, 7.0, 3),
            (1, 0.0, 1.0, 4),
        ];
        for (input, offset, length, out) in cases {
            let taps = AxisTaps::new(input, offset, length, out);
            assert!(taps.span().end <= input, "{input}: reads past the axis");
            for i in 0..out {
                let mut weights = Vec::new();
                let start = pillow_taps(input, offset, length / out as f64, i, &mut weights);
                let mut expected = vec![0f32; input];
                for (k, &w) in weights.iter().enumerate() {
                    expected[start + k] = w as f32;
                }
                let mut got = vec![0f32; input];
                for (k, &w) in taps.weights(i).iter().enumerate() {
                    got[taps.starts[i] + k] += w;
                }
                assert_eq!(got, expected, "axis {input}, output {i}");
            }
        }
    }

    #[test]
    fn same_size_passes_through_unresampled_and_normalises() {
        let source = fixture("resize_source.png");
        let (w, h) = (source.width() as usize, source.height() as usize);
        let mut out = vec![0f32; 3 * w * h];
        let whole = central_crop(source.width(), source.height(), 1.0);
        resize_into(&source, whole, (w, h), false, &mut out);
        // Exactly x / 127.5 - 1 of every source pixel: no filtering happened.
        let plane = w * h;
        let raw = source.as_raw();
        for p in 0..plane {
            for c in 0..3 {
                assert_eq!(out[c * plane + p], f32::from(raw[p * 3 + c]) / 127.5 - 1.0);
            }
        }
        assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn flip_mirrors_columns() {
        let image = RgbImage::from_fn(4, 2, |x, _| Rgb([x as u8 * 50, 0, 0]));
        let whole = central_crop(4, 2, 1.0);
        let (mut plain, mut mirrored) = (vec![0f32; 24], vec![0f32; 24]);
        resize_into(&image, whole, (4, 2), false, &mut plain);
        resize_into(&image, whole, (4, 2), true, &mut mirrored);
        assert_eq!(
            plain[..4],
            [mirrored[3], mirrored[2], mirrored[1], mirrored[0]]
        );
    }

    #[test]
    fn central_crop_follows_tensorflow() {
        // 500x375 at 0.875: start = floor((500 - 437.5) / 2) = 31, width 438.
        let crop = central_crop(500, 375, 0.875);
        assert_eq!((crop.x, crop.width), (31.0, 438.0));
        assert_eq!((crop.y, crop.height), (23.0, 329.0));
        assert_eq!(central_crop(299, 299, 1.0).width, 299.0);
    }

    #[test]
    fn random_crops_respect_the_ranges() {
        let crop = RandomResizedCrop::default();
        assert_eq!(crop.validate(), Ok(()));
        let mut rng = Rng::new(3);
        let (w, h) = (500u32, 375u32);
        let mut fallbacks = 0;
        for _ in 0..2000 {
            let b = crop.sample(w, h, &mut rng);
            assert!(b.x >= 0.0 && b.y >= 0.0);
            assert!(b.x + b.width <= 500.0 && b.y + b.height <= 375.0);
            let area = b.width * b.height / (500.0 * 375.0);
            if area == 1.0 {
                fallbacks += 1;
                continue;
            }
            assert!((0.045..=1.0).contains(&area), "{area}");
            let ratio = b.width / b.height;
            assert!((0.70..=1.40).contains(&ratio), "{ratio}");
        }
        assert!(fallbacks < 200, "{fallbacks}");
        let bad = RandomResizedCrop {
            area: (0.5, 0.1),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn transforms_are_deterministic_given_the_rng() {
        let source = fixture("resize_source.png");
        let transform = Transform::Train {
            size: 16,
            crop: RandomResizedCrop::default(),
        };
        let run = |key| {
            let mut out = vec![0f32; 3 * 16 * 16];
            transform.apply(&source, &mut Rng::new(key), &mut out);
            out
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    /// Every byte of this thread's decoding buffer set to `value`, so that a pixel the
    /// partial decode should have written but did not cannot pass for a right one.
    fn poison_decoding_buffer(value: u8) {
        DECODED.with_borrow_mut(|pixels| pixels.fill(value));
    }

    #[test]
    fn decoding_only_what_the_crop_reads_gives_the_whole_decodes_output() {
        let transforms = [
            Transform::Train {
                size: 29,
                crop: RandomResizedCrop::default(),
            },
            // Enlarging: small crops of these ~100 px images read narrow tap runs.
            Transform::Train {
                size: 150,
                crop: RandomResizedCrop {
                    area: (0.01, 0.3),
                    ..RandomResizedCrop::default()
                },
            },
            Transform::Eval {
                size: 40,
                crop_pct: INCEPTION_CROP_PCT,
            },
        ];
        // Chroma subsampling 4:2:0, 4:2:2, 4:4:4, restart markers, a tall odd size (all
        // decoded in part), progressive (decoded whole), grayscale and CMYK (through `image`).
        for name in [
            "jpeg/s420.jpg",
            "jpeg/s422.jpg",
            "jpeg/s444.jpg",
            "jpeg/restart.jpg",
            "jpeg/tall.jpg",
            "jpeg/progressive.jpg",
            "jpeg/gray.jpg",
            "cmyk.jpg",
        ] {
            let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
            let bytes = std::fs::read(&path).expect("fixture");
            let whole = decode(&bytes).expect("fixture decodes");
            for transform in &transforms {
                let slot = 3 * (transform.size() as usize).pow(2);
                for seed in 0..25 {
                    let mut expected = vec![0f32; slot];
                    transform.apply(&whole, &mut Rng::new(seed), &mut expected);
                    let mut got = vec![0f32; slot];
                    poison_decoding_buffer(seed as u8 * 37);
                    transform
                        .apply_encoded(&bytes, &mut Rng::new(seed), &mut got)
                        .expect("decodes");
                    assert!(
                        expected
                            .iter()
                            .zip(&got)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{name}, {transform:?}, seed {seed}: the partial decode differs"
                    );
                }
            }
        }
    }

    #[test]
    fn a_jpeg_s_bad_headers_and_other_bad_files_are_reasons() {
        let transform = Transform::Eval {
            size: 8,
            crop_pct: 1.0,
        };
        let mut out = vec![0f32; 3 * 8 * 8];
        let mut rng = Rng::new(0);
        let path = format!(
            "{}/tests/fixtures/jpeg/s420.jpg",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).expect("fixture");
        for broken in [&bytes[..4], &bytes[..200], &[][..], &b"not an image"[..]] {
            let reason = transform
                .apply_encoded(broken, &mut rng, &mut out)
                .expect_err("a broken file is a reason");
            assert!(!reason.is_empty());
        }
    }
}

//! Crops, resizing and normalisation, written straight into a batch's `[3, S, S]` slot.
//!
//! Resizing is separable and antialiased: Pillow's bilinear filter, whose support widens with
//! the scale when it shrinks. It reads only the crop's rows and columns of the decoded image
//! and writes normalised floats, so no intermediate image is ever copied.

use image::RgbImage;
use serde::{Deserialize, Serialize};

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
        let (crop, flip) = match self {
            Self::Train { crop, .. } => {
                let crop_box = crop.sample(width, height, rng);
                (crop_box, rng.chance(crop.flip))
            }
            Self::Eval { crop_pct, .. } => (central_crop(width, height, *crop_pct), false),
        };
        let size = self.size() as usize;
        resize_into(image, crop, (size, size), flip, out);
    }
}

/// Filter taps of one output position: the first input index and the normalised weights.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

/// Pillow's antialiased bilinear taps for `out` positions over `[offset, offset + length)` of
/// an axis of `input` pixels.
fn taps(input: usize, offset: f64, length: f64, out: usize) -> Vec<Taps> {
    let scale = length / out as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // the triangle filter's radius is 1 at scale 1
    (0..out)
        .map(|i| {
            let center = offset + (i as f64 + 0.5) * scale;
            let start = ((center - support + 0.5).floor().max(0.0)) as usize;
            let end = ((center + support + 0.5).floor() as usize).min(input);
            let mut weights: Vec<f64> = (start..end)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filter_scale).abs();
                    (1.0 - t).max(0.0)
                })
                .collect();
            let total: f64 = weights.iter().sum();
            if total > 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            // Trim zero taps at both ends so the inner loops stay short.
            let first = weights.iter().position(|&w| w != 0.0).unwrap_or(0);
            let last = weights.iter().rposition(|&w| w != 0.0).map_or(0, |p| p + 1);
            let last = last.max(first);
            Taps {
                start: start + first,
                weights: weights[first..last].iter().map(|&w| w as f32).collect(),
            }
        })
        .collect()
}

/// Resizes `crop` of `image` to `(out_w, out_h)`, optionally mirrored, into `out` as planar
/// RGB normalised to `[-1, 1]`.
pub fn resize_into(
    image: &RgbImage,
    crop: CropBox,
    (out_w, out_h): (usize, usize),
    flip: bool,
    out: &mut [f32],
) {
    assert_eq!(
        out.len(),
        3 * out_w * out_h,
        "output slot has the wrong size"
    );
    let (width, height) = (image.width() as usize, image.height() as usize);
    let columns = taps(width, crop.x, crop.width, out_w);
    let rows = taps(height, crop.y, crop.height, out_h);
    let row_min = rows.iter().map(|t| t.start).min().unwrap_or(0);
    let row_max = rows
        .iter()
        .map(|t| t.start + t.weights.len())
        .max()
        .unwrap_or(0);
    let pixels = image.as_raw();
    let stride = width * 3;

    // Both passes reuse per-thread buffers: a fresh megabyte per image costs page faults.
    SCRATCH.with_borrow_mut(|(horizontal, accumulator)| {
        // Horizontal pass over only the rows the vertical pass reads: [rows, out_w, 3].
        horizontal.clear();
        horizontal.resize((row_max - row_min) * out_w * 3, 0.0);
        for (r, y) in (row_min..row_max).enumerate() {
            let line = &pixels[y * stride..(y + 1) * stride];
            let dst = &mut horizontal[r * out_w * 3..(r + 1) * out_w * 3];
            for (i, tap) in columns.iter().enumerate() {
                let (mut red, mut green, mut blue) = (0f32, 0f32, 0f32);
                let src = &line[tap.start * 3..(tap.start + tap.weights.len()) * 3];
                for (px, &w) in src.chunks_exact(3).zip(&tap.weights) {
                    red += f32::from(px[0]) * w;
                    green += f32::from(px[1]) * w;
                    blue += f32::from(px[2]) * w;
                }
                dst[i * 3] = red;
                dst[i * 3 + 1] = green;
                dst[i * 3 + 2] = blue;
            }
        }

        // Vertical pass, normalisation and flip, into planar output.
        let plane = out_w * out_h;
        let (red_plane, rest) = out.split_at_mut(plane);
        let (green_plane, blue_plane) = rest.split_at_mut(plane);
        accumulator.resize(out_w * 3, 0.0);
        for (j, tap) in rows.iter().enumerate() {
            accumulator.fill(0.0);
            for (k, &w) in tap.weights.iter().enumerate() {
                let r = tap.start + k - row_min;
                let src = &horizontal[r * out_w * 3..(r + 1) * out_w * 3];
                for (a, &s) in accumulator.iter_mut().zip(src) {
                    *a += s * w;
                }
            }
            let row = j * out_w;
            for i in 0..out_w {
                let x = if flip { out_w - 1 - i } else { i };
                let a = &accumulator[i * 3..i * 3 + 3];
                red_plane[row + x] = a[0] / 127.5 - 1.0;
                green_plane[row + x] = a[1] / 127.5 - 1.0;
                blue_plane[row + x] = a[2] / 127.5 - 1.0;
            }
        }
    });
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

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
}

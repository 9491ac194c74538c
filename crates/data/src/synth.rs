//! A procedurally generated, learnable dataset written as real JPEG files in the ImageNet
//! folder layout (`train/<class>/*.jpg`, `val/<class>/*.jpg`). Classes differ by shape,
//! colour and texture; sizes, positions, scales, rotations and backgrounds vary as photos
//! do. Deterministic by seed: each image's randomness comes from (seed, split, class, index).

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use image::RgbImage;
use image::codecs::jpeg::JpegEncoder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, io_error};
use crate::rng::{Rng, derive};

/// What `xception data synth` generates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthOptions {
    /// Number of classes (1 to 1000).
    pub classes: usize,
    /// Training images per class.
    pub train_per_class: usize,
    /// Validation images per class.
    pub val_per_class: usize,
    /// Typical image side in pixels; each image's sides vary from 0.8x to 1.25x of it.
    pub size: u32,
    /// Seed of everything random.
    pub seed: u64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            classes: 10,
            train_per_class: 100,
            val_per_class: 20,
            size: 96,
            seed: 0,
        }
    }
}

const SHAPES: [&str; 10] = [
    "disc", "square", "triangle", "ring", "cross", "diamond", "hstripes", "vstripes", "checker",
    "dots",
];
const COLOURS: [(&str, [f32; 3]); 10] = [
    ("red", [220.0, 40.0, 40.0]),
    ("green", [40.0, 190.0, 60.0]),
    ("blue", [40.0, 80.0, 230.0]),
    ("yellow", [235.0, 215.0, 40.0]),
    ("magenta", [210.0, 50.0, 200.0]),
    ("cyan", [40.0, 210.0, 220.0]),
    ("orange", [245.0, 140.0, 30.0]),
    ("purple", [120.0, 50.0, 170.0]),
    ("white", [235.0, 235.0, 235.0]),
    ("brown", [130.0, 80.0, 40.0]),
];

/// The shape and colour of class `class`; the first ten classes differ in both.
fn class_look(class: usize) -> (usize, usize) {
    let shape = class % SHAPES.len();
    let colour = (class + class / SHAPES.len() * 3) % COLOURS.len();
    (shape, colour)
}

/// The folder name of class `class`, e.g. `003-yellow-ring`.
pub fn class_name(class: usize) -> String {
    let (shape, colour) = class_look(class);
    format!("{class:03}-{}-{}", COLOURS[colour].0, SHAPES[shape])
}

/// Whether object coordinates `(u, v)` (unit square centred on 0, radius about 1) are
/// inside shape `shape`.
fn inside(shape: usize, u: f32, v: f32) -> bool {
    let r = (u * u + v * v).sqrt();
    match shape {
        0 => r < 1.0,
        1 => u.abs() < 0.85 && v.abs() < 0.85,
        2 => v < 0.8 && v > -0.9 + 1.7 * u.abs(),
        3 => r < 1.0 && r > 0.6,
        4 => (u.abs() < 0.3 && v.abs() < 1.0) || (v.abs() < 0.3 && u.abs() < 1.0),
        5 => u.abs() + v.abs() < 1.0,
        6 => r < 1.0 && ((v + 1.0) * 3.0).floor() as i32 % 2 == 0,
        7 => r < 1.0 && ((u + 1.0) * 3.0).floor() as i32 % 2 == 0,
        8 => {
            u.abs() < 0.9
                && v.abs() < 0.9
                && (((u + 1.0) * 2.5).floor() as i32 + ((v + 1.0) * 2.5).floor() as i32) % 2 == 0
        }
        _ => {
            let (fu, fv) = ((u + 1.0) * 2.0, (v + 1.0) * 2.0);
            let (du, dv) = (fu - fu.floor() - 0.5, fv - fv.floor() - 0.5);
            r < 1.05 && du * du + dv * dv < 0.09
        }
    }
}

/// Renders one image of class `class` with randomness `rng`.
pub fn render(class: usize, nominal: u32, rng: &mut Rng) -> RgbImage {
    let side = |rng: &mut Rng| ((f64::from(nominal) * rng.range(0.8, 1.25)).round() as u32).max(8);
    let (width, height) = (side(rng), side(rng));
    let (shape, colour) = class_look(class);
    let base = COLOURS[colour].1;
    let tint: [f32; 3] = std::array::from_fn(|_| rng.range(-25.0, 25.0) as f32);
    let colour: [f32; 3] = std::array::from_fn(|c| (base[c] + tint[c]).clamp(0.0, 255.0));
    let background_a: [f32; 3] = std::array::from_fn(|_| rng.range(20.0, 140.0) as f32);
    let background_b: [f32; 3] = std::array::from_fn(|_| rng.range(20.0, 140.0) as f32);
    let gradient_angle = rng.range(0.0, std::f64::consts::TAU) as f32;
    let (gx, gy) = (gradient_angle.cos(), gradient_angle.sin());
    let min_side = width.min(height) as f32;
    let radius = min_side * rng.range(0.22, 0.42) as f32;
    let cx = rng.range(f64::from(radius), f64::from(width as f32 - radius)) as f32;
    let cy = rng.range(f64::from(radius), f64::from(height as f32 - radius)) as f32;
    let angle = rng.range(-0.5, 0.5) as f32;
    let (cos, sin) = (angle.cos(), angle.sin());
    let noise_amplitude = rng.range(4.0, 20.0) as f32;
    let mut noise = Rng::new(rng.next_u64());
    RgbImage::from_fn(width, height, |x, y| {
        let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
        let t = ((px / width as f32 - 0.5) * gx + (py / height as f32 - 0.5) * gy + 0.5)
            .clamp(0.0, 1.0);
        let (dx, dy) = ((px - cx) / radius, (py - cy) / radius);
        let (u, v) = (dx * cos + dy * sin, -dx * sin + dy * cos);
        let object = inside(shape, u, v);
        let grain = (noise.uniform() as f32 - 0.5) * 2.0 * noise_amplitude;
        image::Rgb(std::array::from_fn(|c| {
            let value = if object {
                colour[c] * (1.0 - 0.15 * v)
            } else {
                background_a[c] * (1.0 - t) + background_b[c] * t
            };
            (value + grain).clamp(0.0, 255.0) as u8
        }))
    })
}

fn write_jpeg(image: &RgbImage, path: &Path) -> Result<(), DataError> {
    let file = fs::File::create(path).map_err(io_error(path))?;
    let mut encoder = JpegEncoder::new_with_quality(BufWriter::new(file), 90);
    encoder.encode_image(image).map_err(|e| DataError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes the dataset under `out` (`train/` and `val/`), returning the number of files.
/// Refuses to write into a folder that already holds a `train/` or `val/` folder, so a
/// user's data is never overwritten.
pub fn generate(out: &Path, options: &SynthOptions) -> Result<usize, DataError> {
    if options.classes == 0 || options.classes > 1000 {
        return Err(DataError::InvalidSetting {
            field: "classes",
            reason: format!("must be in 1..=1000, got {}", options.classes),
        });
    }
    if options.size < 8 {
        return Err(DataError::InvalidSetting {
            field: "size",
            reason: format!("must be at least 8 pixels, got {}", options.size),
        });
    }
    for split in ["train", "val"] {
        let existing = out.join(split);
        if existing.exists() {
            return Err(DataError::Write {
                path: existing,
                reason: "already exists; choose an empty or new folder".to_string(),
            });
        }
    }
    let mut jobs: Vec<(PathBuf, usize, u64)> = Vec::new();
    for (split_index, (split, per_class)) in [
        ("train", options.train_per_class),
        ("val", options.val_per_class),
    ]
    .into_iter()
    .enumerate()
    {
        for class in 0..options.classes {
            let folder = out.join(split).join(class_name(class));
            fs::create_dir_all(&folder).map_err(io_error(&folder))?;
            for index in 0..per_class {
                let key = derive(&[options.seed, split_index as u64, class as u64, index as u64]);
                jobs.push((folder.join(format!("{index:05}.jpg")), class, key));
            }
        }
    }
    jobs.par_iter().try_for_each(|(path, class, key)| {
        let image = render(*class, options.size, &mut Rng::new(*key));
        write_jpeg(&image, path)
    })?;
    let manifest = out.join("synth.json");
    let json = serde_json::to_string_pretty(options).unwrap_or_default();
    fs::write(&manifest, json).map_err(io_error(&manifest))?;
    Ok(jobs.len())
}

/// Amplitude of the fine grain of [`generate_photos`], chosen so that its 500x375 JPEGs
/// weigh about what ImageNet's do (110 KB on average: 140 GB over 1.28 M files).
const GRAIN: f32 = 32.0;

/// Writes `count` photo-like JPEGs of exactly `width` x `height` (ImageNet's average is about
/// 500x375) into `out`, for throughput benchmarks.
pub fn generate_photos(
    out: &Path,
    count: usize,
    (width, height): (u32, u32),
    seed: u64,
) -> Result<Vec<PathBuf>, DataError> {
    fs::create_dir_all(out).map_err(io_error(out))?;
    let paths: Vec<PathBuf> = (0..count)
        .map(|i| out.join(format!("photo_{i:05}.jpg")))
        .collect();
    paths.par_iter().enumerate().try_for_each(|(i, path)| {
        let mut rng = Rng::new(derive(&[seed, 0xbe9c, i as u64]));
        let scene = render(i % 10, width.max(height), &mut rng);
        let photo = image::imageops::resize(&scene, width, height, image::imageops::Triangle);
        // Fine grain everywhere: photos carry detail that JPEG must encode.
        let mut grain = Rng::new(rng.next_u64());
        let photo = RgbImage::from_fn(width, height, |x, y| {
            let p = photo.get_pixel(x, y);
            image::Rgb(std::array::from_fn(|c| {
                let g = (grain.uniform() as f32 - 0.5) * GRAIN;
                (f32::from(p[c]) + g).clamp(0.0, 255.0) as u8
            }))
        });
        write_jpeg(&photo, path)
    })?;
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{DatasetOptions, Split, open};

    #[test]
    fn generates_the_imagenet_layout_deterministically() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SynthOptions {
            classes: 3,
            train_per_class: 4,
            val_per_class: 2,
            size: 32,
            seed: 5,
        };
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        assert_eq!(generate(&a, &options).expect("generates"), 18);
        generate(&b, &options).expect("generates");
        let file = "train/001-green-square/00003.jpg";
        let bytes_a = fs::read(a.join(file)).expect("exists");
        assert_eq!(bytes_a, fs::read(b.join(file)).expect("exists"));
        assert!(bytes_a.starts_with(&[0xff, 0xd8]), "a real JPEG");

        let train = open(&a, Split::Train, &DatasetOptions::default()).expect("opens");
        assert_eq!(train.len(), 12);
        assert_eq!(train.classes.len(), 3);
        assert_eq!(train.classes[2].id, "002-blue-triangle");
        let val = open(&a, Split::Val, &DatasetOptions::default()).expect("opens");
        assert_eq!(val.class_counts(), vec![2, 2, 2]);
    }

    #[test]
    fn refuses_to_overwrite_and_rejects_bad_options() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SynthOptions {
            classes: 1,
            train_per_class: 1,
            val_per_class: 1,
            size: 16,
            seed: 0,
        };
        generate(dir.path(), &options).expect("first time");
        assert!(generate(dir.path(), &options).is_err());
        let zero = SynthOptions {
            classes: 0,
            ..options
        };
        assert!(generate(&dir.path().join("x"), &zero).is_err());
    }

    #[test]
    fn sizes_vary_and_classes_look_different() {
        let sizes: std::collections::HashSet<_> = (0..8)
            .map(|i| render(0, 64, &mut Rng::new(i)).dimensions())
            .collect();
        assert!(sizes.len() > 4, "{sizes:?}");
        let names: std::collections::HashSet<_> = (0..100).map(class_name).collect();
        assert_eq!(names.len(), 100);
        let looks: std::collections::HashSet<_> = (0..100).map(class_look).collect();
        assert_eq!(looks.len(), 100, "every class has its own shape and colour");
    }
}

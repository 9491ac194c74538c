//! The learning-curves PNG of a run (`curves.png`): loss on the left, top-1 on the right,
//! against epochs; training per step (thin), validation per evaluation (raw weights red,
//! EMA weights green). Drawn with the `image` crate and a built-in 5x7 font, so no plotting
//! or font dependency joins the build.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::record::MetricsRow;

const PANEL_W: u32 = 480;
const PANEL_H: u32 = 340;
const MARGIN_L: u32 = 48;
const MARGIN_R: u32 = 12;
const MARGIN_T: u32 = 24;
const MARGIN_B: u32 = 30;
/// Training points kept; beyond it every other point is dropped (long runs stay small).
const MAX_TRAIN_POINTS: usize = 4000;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const TRAIN: Rgb<u8> = Rgb([90, 120, 200]);
const VAL: Rgb<u8> = Rgb([210, 50, 40]);
const EMA: Rgb<u8> = Rgb([30, 150, 60]);

/// The series of a run's curves, built from its metrics rows.
#[derive(Debug, Clone, Default)]
pub struct Curves {
    train_loss: Vec<(f64, f64)>,
    train_top1: Vec<(f64, f64)>,
    val_loss: Vec<(f64, f64)>,
    val_top1: Vec<(f64, f64)>,
    ema_loss: Vec<(f64, f64)>,
    ema_top1: Vec<(f64, f64)>,
    stride: usize,
    seen: usize,
}

impl Curves {
    /// Curves holding `rows`.
    pub fn from_rows(rows: &[MetricsRow]) -> Self {
        let mut curves = Self {
            stride: 1,
            ..Default::default()
        };
        for row in rows {
            curves.add(row);
        }
        curves
    }

    /// Adds one metrics row.
    pub fn add(&mut self, row: &MetricsRow) {
        let x = row.epoch;
        if row.kind == "train" {
            self.seen += 1;
            if !self.seen.is_multiple_of(self.stride.max(1)) {
                return;
            }
            self.train_loss.push((x, row.loss));
            self.train_top1.push((x, row.top1));
            if self.train_loss.len() > MAX_TRAIN_POINTS {
                self.stride = self.stride.max(1) * 2;
                for series in [&mut self.train_loss, &mut self.train_top1] {
                    *series = series.iter().copied().step_by(2).collect();
                }
            }
        } else {
            self.val_loss.push((x, row.loss));
            self.val_top1.push((x, row.top1));
            if let (Some(loss), Some(top1)) = (row.ema_loss, row.ema_top1) {
                self.ema_loss.push((x, loss));
                self.ema_top1.push((x, top1));
            }
        }
    }

    /// Draws the curves into a PNG at `path` (written to a temporary file, then renamed).
    pub fn draw(&self, path: &Path) -> std::io::Result<()> {
        let mut image = RgbImage::from_pixel(2 * PANEL_W, PANEL_H, WHITE);
        let x_max = self
            .train_loss
            .iter()
            .chain(&self.val_loss)
            .map(|p| p.0)
            .fold(1.0_f64, f64::max);
        // Loss on a log10 scale: early validation losses can be thousands of times the
        // final ones (BatchNorm's running statistics lag the weights at first).
        let log_loss = |series: &[(f64, f64)]| -> Vec<(f64, f64)> {
            series
                .iter()
                .filter(|p| p.1.is_finite() && p.1 > 0.0)
                .map(|&(x, y)| (x, y.log10()))
                .collect()
        };
        let (train_loss, val_loss, ema_loss) = (
            log_loss(&self.train_loss),
            log_loss(&self.val_loss),
            log_loss(&self.ema_loss),
        );
        let (low, high) = train_loss
            .iter()
            .chain(&val_loss)
            .chain(&ema_loss)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.1), hi.max(p.1))
            });
        let (low, high) = if low.is_finite() {
            (low.floor(), high.ceil().max(low.floor() + 1.0))
        } else {
            (-1.0, 1.0)
        };
        panel(
            &mut image,
            (0, "LOSS", true),
            (low, high),
            x_max,
            &[
                (&train_loss, TRAIN, false),
                (&val_loss, VAL, true),
                (&ema_loss, EMA, true),
            ],
        );
        panel(
            &mut image,
            (PANEL_W, "TOP-1 %", false),
            (0.0, 100.0),
            x_max,
            &[
                (&self.train_top1, TRAIN, false),
                (&self.val_top1, VAL, true),
                (&self.ema_top1, EMA, true),
            ],
        );
        let legend_y = PANEL_H - 12;
        let mut x = PANEL_W + MARGIN_L;
        for (label, colour) in [("TRAIN", TRAIN), ("VAL", VAL), ("EMA VAL", EMA)] {
            fill(&mut image, x, legend_y + 2, 10, 3, colour);
            text(&mut image, x + 14, legend_y, label, AXIS);
            x += 14 + 6 * label.len() as u32 + 16;
        }
        let temp = path.with_extension("png.tmp");
        image
            .save_with_format(&temp, image::ImageFormat::Png)
            .map_err(std::io::Error::other)?;
        std::fs::rename(&temp, path)
    }
}

type Series<'a> = (&'a [(f64, f64)], Rgb<u8>, bool);

/// Draws one panel at `left` titled `title`; with `log_scale`, the y values are log10 and
/// the labels show their powers of ten.
fn panel(
    image: &mut RgbImage,
    (left, title, log_scale): (u32, &str, bool),
    (y_min, y_max): (f64, f64),
    x_max: f64,
    series: &[Series<'_>],
) {
    let (x0, y0) = (left + MARGIN_L, MARGIN_T);
    let (w, h) = (PANEL_W - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B);
    let to_px = |x: f64, y: f64| {
        let px = f64::from(x0) + x / x_max * f64::from(w);
        let py = f64::from(y0 + h) - (y - y_min) / (y_max - y_min) * f64::from(h);
        (px, py)
    };
    // Grid and labels: one line per decade on the log scale, five lines otherwise.
    let lines = if log_scale {
        ((y_max - y_min).round() as i32).max(1)
    } else {
        4
    };
    for i in 0..=lines {
        let value = y_min + (y_max - y_min) * f64::from(i) / f64::from(lines);
        let (_, py) = to_px(0.0, value);
        fill(image, x0, py as u32, w, 1, GRID);
        let label = if log_scale {
            let real = 10f64.powf(value);
            let decimals = (-value.round()).max(0.0) as usize;
            format!("{real:.decimals$}")
        } else {
            format!("{value:.0}")
        };
        let width = 6 * label.len() as u32;
        text(
            image,
            x0.saturating_sub(width + 4),
            (py as u32).saturating_sub(3),
            &label,
            AXIS,
        );
    }
    let tick_every = nice_step(x_max / 8.0);
    let mut tick = 0.0;
    while tick <= x_max + 1e-9 {
        let (px, _) = to_px(tick, y_min);
        fill(image, px as u32, y0 + h, 1, 4, AXIS);
        let label = if tick_every >= 1.0 {
            format!("{tick:.0}")
        } else {
            format!("{tick:.1}")
        };
        text(
            image,
            (px as u32).saturating_sub(3 * label.len() as u32),
            y0 + h + 7,
            &label,
            AXIS,
        );
        tick += tick_every;
    }
    fill(image, x0, y0, 1, h, AXIS);
    fill(image, x0, y0 + h, w, 1, AXIS);
    text(image, x0, 8, title, AXIS);
    text(image, x0 + w - 30, 8, "EPOCH", AXIS);
    for (points, colour, marked) in series {
        for pair in points.windows(2) {
            let (a, b) = (to_px(pair[0].0, pair[0].1), to_px(pair[1].0, pair[1].1));
            line(image, a, b, *colour);
        }
        if *marked {
            for &(x, y) in points.iter() {
                let (px, py) = to_px(x, y);
                fill(
                    image,
                    (px as u32).saturating_sub(2),
                    (py as u32).saturating_sub(2),
                    5,
                    5,
                    *colour,
                );
            }
        }
    }
}

fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-3);
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn put(image: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < image.width() && (y as u32) < image.height() {
        image.put_pixel(x as u32, y as u32, colour);
    }
}

fn fill(image: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, colour: Rgb<u8>) {
    for dy in 0..h {
        for dx in 0..w {
            put(image, i64::from(x + dx), i64::from(y + dy), colour);
        }
    }
}

fn line(image: &mut RgbImage, (ax, ay): (f64, f64), (bx, by): (f64, f64), colour: Rgb<u8>) {
    if !(ax.is_finite() && ay.is_finite() && bx.is_finite() && by.is_finite()) {
        return;
    }
    let steps = (bx - ax).abs().max((by - ay).abs()).ceil().max(1.0) as usize;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let x = (ax + (bx - ax) * t).round() as i64;
        let y = (ay + (by - ay) * t).round() as i64;
        put(image, x, y, colour);
    }
}

/// Draws `s` in a 5x7 font (the characters the plot uses); others are left blank.
fn text(image: &mut RgbImage, x: u32, y: u32, s: &str, colour: Rgb<u8>) {
    for (i, c) in s.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        for (row, bits) in rows.iter().enumerate() {
            for col in 0..5 {
                if bits & (0b10000 >> col) != 0 {
                    put(
                        image,
                        i64::from(x) + 6 * i as i64 + col,
                        i64::from(y) + row as i64,
                        colour,
                    );
                }
            }
        }
    }
}

fn glyph(c: char) -> Option<[u8; 7]> {
    Some(match c {
        '0' => [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
        '1' => [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
        '2' => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
        '3' => [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
        '4' => [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
        '5' => [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
        '6' => [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
        '7' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
        '9' => [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
        '.' => [0, 0, 0, 0, 0, 0x0c, 0x0c],
        '-' => [0, 0, 0, 0x1f, 0, 0, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        'A' => [0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'C' => [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e],
        'E' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f],
        'H' => [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'I' => [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f],
        'M' => [0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'P' => [0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10],
        'R' => [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11],
        'S' => [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e],
        'T' => [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04],
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_with_the_series_colours() {
        let mut rows = Vec::new();
        for step in 1..=20u64 {
            rows.push(MetricsRow {
                kind: "train".into(),
                epoch: step as f64 / 10.0,
                step,
                loss: 2.0 / step as f64,
                top1: 5.0 * step as f64,
                ..Default::default()
            });
        }
        rows.push(MetricsRow {
            kind: "val".into(),
            epoch: 2.0,
            step: 20,
            loss: 0.5,
            top1: 80.0,
            ema_loss: Some(0.4),
            ema_top1: Some(85.0),
            ..Default::default()
        });
        let curves = Curves::from_rows(&rows);
        let dir = tempfile::tempdir().expect("temp");
        let path = dir.path().join("curves.png");
        curves.draw(&path).expect("draw");
        let image = image::open(&path).expect("a PNG").to_rgb8();
        assert_eq!(image.dimensions(), (2 * PANEL_W, PANEL_H));
        let count = |colour: Rgb<u8>| image.pixels().filter(|p| **p == colour).count();
        assert!(count(TRAIN) > 100, "train line drawn");
        assert!(count(VAL) >= 25, "val markers drawn");
        assert!(count(EMA) >= 25, "ema markers drawn");
    }

    #[test]
    fn long_runs_keep_a_bounded_number_of_points() {
        let mut curves = Curves::from_rows(&[]);
        for step in 1..=(3 * MAX_TRAIN_POINTS as u64) {
            curves.add(&MetricsRow {
                kind: "train".into(),
                epoch: step as f64,
                step,
                ..Default::default()
            });
        }
        assert!(curves.train_loss.len() <= MAX_TRAIN_POINTS);
        assert!(curves.train_loss.len() > MAX_TRAIN_POINTS / 4);
    }
}

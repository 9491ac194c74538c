//! `xception data check`: decode every file and report what a training run would meet.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use crate::dataset::{Dataset, Layout, Split};
use crate::decode::decode_file;
use crate::loader::BadFile;

/// Files and size statistics of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassReport {
    /// Folder name or WordNet id.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Files indexed.
    pub files: usize,
    /// Files that decoded.
    pub readable: usize,
}

/// Minimum, mean and maximum of a quantity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    /// Smallest value.
    pub min: u32,
    /// Mean value.
    pub mean: f64,
    /// Largest value.
    pub max: u32,
}

impl Stats {
    fn of(values: &[u32]) -> Option<Self> {
        Some(Self {
            min: *values.iter().min()?,
            mean: values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64,
            max: *values.iter().max()?,
        })
    }
}

/// Everything `check` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    /// The dataset's folder.
    pub root: String,
    /// Which split.
    pub split: Split,
    /// The layout found.
    pub layout: Layout,
    /// Files indexed.
    pub files: usize,
    /// Files that decoded.
    pub readable: usize,
    /// Per-class counts.
    pub classes: Vec<ClassReport>,
    /// Widths of the readable images.
    pub width: Option<Stats>,
    /// Heights of the readable images.
    pub height: Option<Stats>,
    /// Every file that failed, with its reason.
    pub bad_files: Vec<BadFile>,
}

impl CheckReport {
    /// Why the dataset cannot be trained on, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.readable == 0 {
            return Some(format!("no readable image among {} files", self.files));
        }
        let unreadable: Vec<&str> = self
            .classes
            .iter()
            .filter(|c| c.readable == 0)
            .map(|c| c.id.as_str())
            .collect();
        if !unreadable.is_empty() && unreadable.len() < self.classes.len() {
            let shown = unreadable
                .iter()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
                .join(", ");
            return Some(format!("classes with no readable image: {shown}"));
        }
        None
    }
}

/// Decodes every file of `dataset` in parallel, calling `progress(done, total)` as it goes.
pub fn check(dataset: &Dataset, progress: &(dyn Fn(usize, usize) + Sync)) -> CheckReport {
    let total = dataset.len();
    let done = AtomicUsize::new(0);
    let outcomes: Vec<Result<(u32, u32), String>> = (0..total)
        .into_par_iter()
        .map(|index| {
            let outcome = decode_file(&dataset.path(index)).map(|image| image.dimensions());
            let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
            if finished.is_multiple_of(64) || finished == total {
                progress(finished, total);
            }
            outcome
        })
        .collect();
    let mut classes: Vec<ClassReport> = dataset
        .classes
        .iter()
        .map(|c| ClassReport {
            id: c.id.clone(),
            name: c.name.clone(),
            files: 0,
            readable: 0,
        })
        .collect();
    let (mut widths, mut heights, mut bad_files) = (Vec::new(), Vec::new(), Vec::new());
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let class = &mut classes[dataset.label(index)];
        class.files += 1;
        match outcome {
            Ok((w, h)) => {
                class.readable += 1;
                widths.push(w);
                heights.push(h);
            }
            Err(reason) => bad_files.push(BadFile {
                path: dataset.path(index),
                reason,
            }),
        }
    }
    CheckReport {
        root: dataset.root.display().to_string(),
        split: dataset.split,
        layout: dataset.layout,
        files: total,
        readable: widths.len(),
        classes,
        width: Stats::of(&widths),
        height: Stats::of(&heights),
        bad_files,
    }
}

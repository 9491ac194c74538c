//! `xception data synth` and `xception data check`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use xception_data::synth::{SynthOptions, generate};
use xception_data::{CheckReport, DatasetOptions, Layout, Split, check, open};

/// Writes a synthetic dataset and says what it wrote.
pub fn synth(out: &Path, options: &SynthOptions) -> Result<()> {
    let started = Instant::now();
    let files = generate(out, options)
        .with_context(|| format!("cannot generate a dataset in {}", out.display()))?;
    println!(
        "wrote {files} JPEG files ({} classes, {} train + {} val per class) to {} in {:.1} s",
        options.classes,
        options.train_per_class,
        options.val_per_class,
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn progress_bar(total: usize, label: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    let style =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} files, {per_sec}, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_string());
    bar
}

/// Decodes every file of the split(s) and reports; fails when the dataset is unusable.
pub fn run_check(root: &Path, layout: Layout, split: Option<Split>, json: bool) -> Result<()> {
    let options = DatasetOptions {
        layout,
        ..DatasetOptions::default()
    };
    let splits = match split {
        Some(split) => vec![split],
        None if root.join("train").is_dir() || root.join("val").is_dir() => {
            [Split::Train, Split::Val]
                .into_iter()
                .filter(|s| root.join(split_folder(*s)).is_dir())
                .collect()
        }
        None => vec![Split::Val],
    };
    let mut reports = Vec::new();
    for split in splits {
        let dataset = open(root, split, &options)
            .with_context(|| format!("cannot index {}", root.display()))?;
        let bar = progress_bar(dataset.len(), split_folder(split));
        let report = check(&dataset, &|done, _| bar.set_position(done as u64));
        bar.finish_and_clear();
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            print!("{}", render(report));
        }
    }
    for report in &reports {
        if let Some(problem) = report.problem() {
            bail!(
                "{} ({:?} split) is unusable: {problem}",
                report.root,
                report.split
            );
        }
    }
    Ok(())
}

fn split_folder(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Val => "val",
    }
}

fn render(report: &CheckReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({} split, {:?} layout): {} files, {} readable, {} bad, {} classes",
        report.root,
        split_folder(report.split),
        report.layout,
        report.files,
        report.readable,
        report.bad_files.len(),
        report.classes.len()
    );
    if let (Some(w), Some(h)) = (report.width, report.height) {
        let _ = writeln!(
            out,
            "  image width {}..{} (mean {:.0}), height {}..{} (mean {:.0})",
            w.min, w.max, w.mean, h.min, h.max, h.mean
        );
    }
    let counts: Vec<usize> = report.classes.iter().map(|c| c.readable).collect();
    if let (Some(min), Some(max)) = (counts.iter().min(), counts.iter().max()) {
        let _ = writeln!(out, "  readable images per class: {min}..{max}");
    }
    if report.classes.len() <= 20 {
        for class in &report.classes {
            let _ = writeln!(
                out,
                "    {:<24} {:>7} files {:>7} readable  {}",
                class.id, class.files, class.readable, class.name
            );
        }
    }
    for bad in &report.bad_files {
        let _ = writeln!(out, "  bad file {}: {}", bad.path.display(), bad.reason);
    }
    out
}

//! `xception export`, `import`, `eval` and `predict`: weights files in and out, and using them.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::{Tensor, TensorData, activation::softmax};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use xception_data::decode::read_file;
use xception_data::rng::Rng;
use xception_data::{ClassInfo, DatasetOptions, Layout, Loader, LoaderConfig, Split, Transform};
use xception_model::interop::Format;
use xception_train::report::Reporter;
use xception_train::weights::{self, ExportFormat, ExportSummary};
use xception_train::{Scores, evaluate};

use crate::device::DeviceChoice;

fn print_export(summary: &ExportSummary, json: bool) -> Result<()> {
    for note in &summary.notes {
        eprintln!("{note}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    println!(
        "wrote {} tensors to {}",
        summary.tensors,
        summary.out.display()
    );
    if let Some(source) = summary.metadata.get(xception_model::weights::META_SOURCE) {
        println!("source: {source}");
    }
    Ok(())
}

/// `xception export W --format F --out FILE [--ema]`.
pub fn export(
    checkpoint: &Path,
    format: ExportFormat,
    out: &Path,
    ema: bool,
    json: bool,
) -> Result<()> {
    let summary =
        weights::export_weights(checkpoint, ema, format, out, &burn::tensor::Device::flex())?;
    print_export(&summary, json)?;
    if format == ExportFormat::Safetensors && !json {
        if summary.timm_loadable {
            println!(
                "loads into {} with strict=True; check with scripts/timm_predict.py",
                summary.timm_model
            );
        } else {
            println!(
                "note: this variant (its width or blocks differ from the published model) has timm's names but does not fit {}",
                summary.timm_model
            );
        }
        if summary.timm_model.contains("inception_v3") {
            println!(
                "note: timm's inception_v3 counts the padding in its 3x3 average pools, Keras and xception leave it out: timm's logits differ slightly on the same weights"
            );
        }
    }
    Ok(())
}

/// `xception import --from timm|keras FILE --out FILE.bpk`.
pub fn import(from: Format, file: &Path, out: &Path, json: bool) -> Result<()> {
    let summary = weights::import_file(from, file, out, &burn::tensor::Device::flex())?;
    print_export(&summary, json)
}

/// A reporter for `eval`: a progress bar over the batches on a terminal.
struct EvalProgress {
    bar: Option<ProgressBar>,
}

impl Reporter for EvalProgress {
    fn evaluating(&mut self, batches: usize) {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(batches as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "evaluating [{bar:40}] {pos}/{len} batches, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            self.bar = Some(bar);
        }
    }
    fn evaluated_batch(&mut self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
    fn note(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }
}

/// What `eval` prints with `--json`.
#[derive(Serialize)]
struct EvalOutput {
    weights: String,
    data: PathBuf,
    images: u64,
    loss: f64,
    top1: f64,
    top5: f64,
    crop_pct: f64,
    seconds: f64,
}

/// The options of `xception eval`.
pub struct EvalArgs {
    pub weights: PathBuf,
    pub data: PathBuf,
    pub layout: Layout,
    pub split: Split,
    pub crop_pct: Option<f64>,
    pub batch_size: usize,
    pub workers: usize,
    pub ema: bool,
    pub by_index: bool,
    pub device: DeviceChoice,
    pub json: bool,
}

/// `xception eval --weights W --data DIR`.
pub fn eval(args: EvalArgs) -> Result<()> {
    let started = Instant::now();
    let device = args.device.device();
    let loaded = weights::load(&args.weights, args.ema, &device)?;
    for note in &loaded.notes {
        eprintln!("{note}");
    }
    let dataset = xception_data::open(
        &args.data,
        args.split,
        &DatasetOptions {
            layout: args.layout,
            ..DatasetOptions::default()
        },
    )?;
    if dataset.classes.len() != loaded.config.num_classes() {
        bail!(
            "{} has {} classes but the model has {} outputs",
            args.data.display(),
            dataset.classes.len(),
            loaded.config.num_classes()
        );
    }
    if !args.by_index {
        check_same_classes(&args.data, &dataset.classes, &loaded.classes)?;
    }
    let crop_pct = args.crop_pct.unwrap_or(loaded.crop_pct);
    if !(crop_pct > 0.0 && crop_pct <= 1.0) {
        bail!("--crop-pct must be in (0, 1], got {crop_pct}");
    }
    let loader = Loader::new(
        Arc::new(dataset),
        LoaderConfig {
            batch_size: args.batch_size,
            workers: args.workers,
            prefetch: 4,
            seed: 0,
            shuffle: false,
            drop_last: false,
            transform: Transform::Eval {
                size: loaded.config.input_size() as u32,
                crop_pct,
            },
        },
    )?;
    // BatchNorm folded into the convolutions for this run only (the weights file is untouched).
    let model = loaded.model.folded();
    let mut progress = EvalProgress { bar: None };
    let scores: Scores = evaluate(&model, &loader, &device, &mut progress);
    if let Some(bar) = progress.bar.take() {
        bar.finish_and_clear();
    }
    let output = EvalOutput {
        weights: loaded.source,
        data: args.data.clone(),
        images: scores.images,
        loss: scores.loss,
        top1: scores.top1,
        top5: scores.top5,
        crop_pct,
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        println!(
            "{}: {} images, loss {:.4}, top-1 {:.2}%, top-5 {:.2}% (crop {crop_pct}, {:.1}s)",
            output.weights, output.images, output.loss, output.top1, output.top5, output.seconds
        );
    }
    Ok(())
}

/// Refuses a dataset whose classes (by id, in index order) are not the model's: scores
/// computed against other labels would be meaningless.
fn check_same_classes(data: &Path, found: &[ClassInfo], model: &[ClassInfo]) -> Result<()> {
    let mismatch = found
        .iter()
        .zip(model)
        .enumerate()
        .find(|(_, (found, model))| found.id != model.id);
    if let Some((index, (found, model))) = mismatch {
        bail!(
            "{}: class {index} is `{}` but the model's class {index} is `{}` ({}); the model was trained on other classes. Pass --by-index to score by class index anyway",
            data.display(),
            found.id,
            model.id,
            model.name
        );
    }
    Ok(())
}

/// One class of a prediction.
#[derive(Serialize)]
struct Guess {
    class: usize,
    id: String,
    name: String,
    probability: f64,
}

/// The prediction for one image.
#[derive(Serialize)]
struct Prediction {
    image: PathBuf,
    top: Vec<Guess>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logits: Option<Vec<f32>>,
}

/// `xception predict --weights W IMAGE...`.
#[allow(clippy::too_many_arguments)]
pub fn predict(
    weights_path: &Path,
    images: &[PathBuf],
    top_k: usize,
    crop_pct: Option<f64>,
    ema: bool,
    device: DeviceChoice,
    json: bool,
) -> Result<()> {
    let device = device.device();
    let loaded = weights::load(weights_path, ema, &device)?;
    for note in &loaded.notes {
        eprintln!("{note}");
    }
    let crop_pct = crop_pct.unwrap_or(loaded.crop_pct);
    if !(crop_pct > 0.0 && crop_pct <= 1.0) {
        bail!("--crop-pct must be in (0, 1], got {crop_pct}");
    }
    let size = loaded.config.input_size();
    let transform = Transform::Eval {
        size: size as u32,
        crop_pct,
    };
    let mut predictions = Vec::new();
    let mut unreadable = 0;
    // BatchNorm folded into the convolutions for this run only (the weights file is untouched).
    let model = loaded.model.folded();
    for image in images {
        let mut pixels = vec![0f32; 3 * size * size];
        let decoded = read_file(image)
            .and_then(|bytes| transform.apply_encoded(&bytes, &mut Rng::new(0), &mut pixels));
        if let Err(reason) = decoded {
            // Reported and skipped: one bad file must not cost the other predictions.
            eprintln!("{}: {reason}", image.display());
            unreadable += 1;
            continue;
        }
        let input = Tensor::<4>::from_data(TensorData::new(pixels, [1, 3, size, size]), &device);
        let logits = model.forward(input);
        let probabilities = softmax(logits.clone(), 1);
        let logits: Vec<f32> = logits.into_data().convert::<f32>().iter::<f32>().collect();
        let probabilities: Vec<f32> = probabilities
            .into_data()
            .convert::<f32>()
            .iter::<f32>()
            .collect();
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
        let top = order
            .into_iter()
            .take(top_k.max(1))
            .map(|class| {
                let info = loaded.classes.get(class);
                Guess {
                    class,
                    id: info.map_or_else(|| class.to_string(), |c| c.id.clone()),
                    name: info.map_or_else(|| format!("class {class}"), |c| c.name.clone()),
                    probability: f64::from(probabilities[class]),
                }
            })
            .collect();
        predictions.push(Prediction {
            image: image.clone(),
            top,
            logits: json.then_some(logits),
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&predictions)?);
    } else {
        print_predictions(&predictions);
    }
    if unreadable > 0 {
        bail!(
            "{unreadable} of {} images could not be read (named above)",
            images.len()
        );
    }
    Ok(())
}

fn print_predictions(predictions: &[Prediction]) {
    for prediction in predictions {
        println!("{}", prediction.image.display());
        for guess in &prediction.top {
            println!(
                "  {:6.2}%  {} ({}, class {})",
                100.0 * guess.probability,
                guess.name,
                guess.id,
                guess.class
            );
        }
    }
}

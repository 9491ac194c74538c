//! `xception bench`: throughput measurements, written to a file for docs/benchmarks.md.
//!
//! Four targets: the data pipeline (decode, random resized crop, flip, normalise, batch) on
//! photo-like JPEGs with 1 and 2 worker threads; inference; the full training step, with
//! the median time of its forward, backward and update parts; and, under mpirun, the sum of
//! a whole gradient between the processes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use xception_data::synth::generate_photos;
use xception_data::{ClassInfo, Dataset, Loader, LoaderConfig, RandomResizedCrop, Transform};
use xception_model::{ModelConfig, Network, Summary, XceptionConfig};
use xception_train::distributed::{BUCKET, barrier};

use crate::processes::Processes;

/// What to measure.
pub struct PipelineBench<'a> {
    /// JPEGs to read; generated when absent.
    pub dir: Option<&'a Path>,
    /// Where to keep generated photos (so another tool can read the same files).
    pub photos_out: Option<&'a Path>,
    /// Number of photos to generate.
    pub photos: usize,
    /// Worker thread counts to measure.
    pub threads: &'a [usize],
    /// Output side.
    pub size: u32,
    /// Training's or evaluation's transform.
    pub transform: PipelineTransform,
    /// Timed passes over the files per thread count (the median is reported).
    pub repeats: usize,
}

/// The transform the data pipeline benchmark applies after decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PipelineTransform {
    /// Inception's random resized crop (area 0.05-1, aspect 3/4-4/3) and a horizontal flip.
    Train,
    /// The central 87.5% of each side, resized (what `xception eval` does).
    Eval,
}

impl PipelineTransform {
    fn transform(self, size: u32) -> Transform {
        match self {
            Self::Train => Transform::Train {
                size,
                crop: RandomResizedCrop::default(),
            },
            Self::Eval => Transform::Eval {
                size,
                crop_pct: xception_data::INCEPTION_CROP_PCT,
            },
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Train => "random resized crop (area 0.05-1) + flip",
            Self::Eval => "central 87.5% crop",
        }
    }
}

/// One measurement.
#[derive(Debug, Serialize)]
pub struct PipelineResult {
    /// Worker threads.
    pub threads: usize,
    /// Median images per second over the timed passes.
    pub images_per_second: f64,
    /// Every timed pass, images per second.
    pub passes: Vec<f64>,
}

/// All measurements of one run.
#[derive(Debug, Serialize)]
pub struct PipelineReport {
    /// What was measured.
    pub pipeline: String,
    /// Files read.
    pub files: usize,
    /// Where they are.
    pub dir: String,
    /// Mean file size in bytes.
    pub mean_file_bytes: u64,
    /// Measurements per thread count.
    pub results: Vec<PipelineResult>,
}

fn jpegs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} holds no files to benchmark with", dir.display());
    }
    Ok(files)
}

/// Runs the data pipeline benchmark.
pub fn pipeline(options: &PipelineBench) -> Result<PipelineReport> {
    let temporary;
    let files = match (options.dir, options.photos_out) {
        (Some(dir), _) => jpegs_in(dir)?,
        (None, Some(out)) => generate_photos(out, options.photos, (500, 375), 0)?,
        (None, None) => {
            temporary = tempfile::tempdir()?;
            generate_photos(temporary.path(), options.photos, (500, 375), 0)?
        }
    };
    let dir = files
        .first()
        .and_then(|f| f.parent())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let classes = vec![ClassInfo {
        id: "photos".into(),
        name: "photos".into(),
    }];
    let count = files.len();
    let dataset = Arc::new(Dataset::from_files(
        classes,
        files.into_iter().map(|f| (f, 0)).collect(),
    ));
    let mut results = Vec::new();
    for &threads in options.threads {
        let loader = Loader::new(
            Arc::clone(&dataset),
            LoaderConfig {
                batch_size: 32,
                workers: threads,
                prefetch: 2 * threads,
                seed: 0,
                shuffle: true,
                drop_last: false,
                transform: options.transform.transform(options.size),
            },
        )?;
        // One untimed pass warms the page cache and the allocator.
        let _ = loader.epoch(0, 0).count();
        let mut passes = Vec::new();
        for epoch in 1..=options.repeats.max(1) as u64 {
            let started = Instant::now();
            let images: usize = loader.epoch(epoch, 0).map(|b| b.len()).sum();
            passes.push(images as f64 / started.elapsed().as_secs_f64());
        }
        let mut sorted = passes.clone();
        sorted.sort_by(f64::total_cmp);
        results.push(PipelineResult {
            threads,
            images_per_second: sorted[sorted.len() / 2],
            passes,
        });
    }
    Ok(PipelineReport {
        pipeline: format!(
            "read + decode + {} + normalise to {1}x{1}, batches of 32",
            options.transform.describe(),
            options.size
        ),
        files: count,
        dir,
        mean_file_bytes: bytes / count.max(1) as u64,
        results,
    })
}

/// One model measurement.
#[derive(Debug, Serialize)]
pub struct ModelResult {
    /// The architecture (`model.arch`).
    pub arch: String,
    /// The device measured.
    pub device: String,
    /// Images per forward pass.
    pub batch: usize,
    /// Input side.
    pub size: usize,
    /// Median images per second of the timed passes.
    pub images_per_second: f64,
    /// Median latency of one pass, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile of the passes' latency (nearest rank), milliseconds.
    pub p95_ms: f64,
    /// Peak resident memory of the process during the timed passes (Linux), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Every timed pass, seconds.
    pub seconds: Vec<f64>,
}

/// Times inference (forward pass, evaluation mode, BatchNorm folded) of a model on
/// `device`: `warmup` untimed passes (autotuning and compilation happen there), then
/// `repeats` timed ones, each ended by reading the logits back.
pub fn inference(
    device: crate::device::DeviceChoice,
    model: &ModelConfig,
    batch: usize,
    warmup: usize,
    repeats: usize,
) -> Result<ModelResult> {
    use burn::module::Module;
    use burn::tensor::{Distribution, Tensor};

    let burn_device = device.device();
    let size = model.input_size();
    let arch = model.arch().to_string();
    // As `eval` and `predict` run it: BatchNorm folded into the convolutions.
    let model = Network::new(model, &burn_device)?.valid().folded();
    let images = Tensor::<4>::random(
        [batch, 3, size, size],
        Distribution::Uniform(-1.0, 1.0),
        &burn_device,
    );
    let run = || -> Result<f64> {
        let started = Instant::now();
        let logits = model.forward(images.clone()).into_data();
        let values = logits
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("cannot read the logits back: {e:?}"))?;
        if !values.iter().all(|v| v.is_finite()) {
            bail!("the forward pass on {device} produced non-finite logits");
        }
        Ok(started.elapsed().as_secs_f64())
    };
    for _ in 0..warmup {
        run()?;
    }
    let seconds = (0..repeats.max(1))
        .map(|_| run())
        .collect::<Result<Vec<_>>>()?;
    Ok(ModelResult {
        arch,
        device: device.to_string(),
        batch,
        size,
        images_per_second: batch as f64 / median(&seconds),
        p50_ms: percentile(&seconds, 0.50) * 1e3,
        p95_ms: percentile(&seconds, 0.95) * 1e3,
        peak_rss_mib: peak_rss_mib(),
        seconds,
    })
}

/// Timings of a full training step.
#[derive(Debug, Serialize)]
pub struct TrainStepResult {
    /// The architecture (`model.arch`).
    pub arch: String,
    /// The device.
    pub device: String,
    /// Images per step.
    pub batch: usize,
    /// Input side.
    pub size: usize,
    /// Median images per second of the timed steps.
    pub images_per_second: f64,
    /// Every timed step, seconds.
    pub seconds: Vec<f64>,
    /// Median seconds of each part of a step, in order: forward (with the loss, read back),
    /// backward (with the gradients gathered per parameter), update (the optimizer, then a
    /// device sync).
    pub phases: StepPhases,
    /// Peak resident memory of the process during the timed steps (Linux), MiB.
    pub peak_rss_mib: Option<f64>,
}

/// Median seconds of the parts of a training step. On the CPU devices each part has finished
/// when its time is taken; on wgpu, which queues work, the loss read ends the forward part
/// but backward work may still run during the update's final sync.
#[derive(Debug, Default, Serialize)]
pub struct StepPhases {
    /// Forward pass and loss, until the loss is read back.
    pub forward: f64,
    /// Backward pass and the per-parameter gradient sums.
    pub backward: f64,
    /// Optimizer update and device sync.
    pub update: f64,
}

/// The `q` quantile of `values` by nearest rank (`q = 0.95`: the value 95% of them do not
/// exceed).
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or(0.0)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Peak resident set size of this process so far (Linux `VmHWM`), MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Times full training steps of the paper's model (dropout 0.5, BatchNorm in training mode):
/// forward, cross-entropy, backward, and the paper's SGD update (momentum 0.9, weight decay
/// 1e-5), each ended by reading the loss back and syncing the device.
pub fn train_step(
    device: crate::device::DeviceChoice,
    model_config: &ModelConfig,
    batch: usize,
    warmup: usize,
    repeats: usize,
) -> Result<TrainStepResult> {
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::optim::GradientsParams;
    use burn::tensor::{Distribution, Int, Tensor, TensorData};
    use xception_train::config::OptimizerConfig;
    use xception_train::optim::{GradientSum, Optimizer};

    let base = device.device();
    let train_device = base.clone().autodiff();
    let size = model_config.input_size();
    let mut model = Some(Network::new(model_config, &train_device)?);
    let mut optimizer = Optimizer::new(OptimizerConfig::default());
    let loss_fn = CrossEntropyLossConfig::new().init(&train_device);
    let images = Tensor::<4>::random(
        [batch, 3, size, size],
        Distribution::Uniform(-1.0, 1.0),
        &train_device,
    );
    let labels: Vec<i64> = (0..batch as i64).map(|i| (i * 37) % 1000).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &train_device);
    let mut step = || -> Result<[f64; 3]> {
        let started = Instant::now();
        let current = model.take().ok_or_else(|| anyhow::anyhow!("model lost"))?;
        let logits = current.forward(images.clone());
        let loss = loss_fn.forward(logits, labels.clone());
        let value = loss.clone().into_scalar::<f32>();
        if !value.is_finite() {
            bail!("the training step on {device} produced a non-finite loss");
        }
        let forward_done = Instant::now();
        let mut sum = GradientSum::default();
        sum.add(
            &current,
            GradientsParams::from_grads(loss.backward(), &current),
        );
        let grads = sum.finish(None, &base).grads;
        let backward_done = Instant::now();
        model = Some(optimizer.step(current, grads, 0.045));
        base.sync()
            .map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"))?;
        let done = Instant::now();
        Ok([
            (forward_done - started).as_secs_f64(),
            (backward_done - forward_done).as_secs_f64(),
            (done - backward_done).as_secs_f64(),
        ])
    };
    for _ in 0..warmup {
        step()?;
    }
    // Linux: "5" resets the peak resident size, so the peak is that of the timed steps.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let parts = (0..repeats.max(1))
        .map(|_| step())
        .collect::<Result<Vec<_>>>()?;
    let seconds: Vec<f64> = parts.iter().map(|p| p.iter().sum()).collect();
    let phase = |i: usize| median(&parts.iter().map(|p| p[i]).collect::<Vec<_>>());
    Ok(TrainStepResult {
        arch: model_config.arch().to_string(),
        device: device.to_string(),
        batch,
        size,
        images_per_second: batch as f64 / median(&seconds),
        seconds,
        phases: StepPhases {
            forward: phase(0),
            backward: phase(1),
            update: phase(2),
        },
        peak_rss_mib: peak_rss_mib(),
    })
}

/// Timings of the sum of a whole gradient between the processes of an `mpirun` job.
#[derive(Debug, Serialize)]
pub struct AllreduceResult {
    /// Processes.
    pub ranks: usize,
    /// Values summed: the paper's model's trainable parameters.
    pub values: usize,
    /// Buckets of at most [`BUCKET`] values, each summed by one collective call.
    pub buckets: usize,
    /// Median seconds of the rank-ordered sum the training loop uses.
    pub ordered_seconds: f64,
    /// Every timed rank-ordered sum, seconds.
    pub ordered: Vec<f64>,
    /// Median seconds of `MPI_Allreduce` on the same buckets (summation order not fixed).
    pub mpi_allreduce_seconds: f64,
    /// Every timed `MPI_Allreduce`, seconds.
    pub mpi_allreduce: Vec<f64>,
}

/// Times the sum of a gradient of the paper's model (22,855,952 values) over the processes,
/// in [`BUCKET`]-value buckets as training sends it: the rank-ordered sum training uses,
/// then `MPI_Allreduce` for comparison. Every process takes part; each timed sum starts
/// after a barrier.
pub fn allreduce(processes: &Processes, warmup: usize, repeats: usize) -> Result<AllreduceResult> {
    let world = processes.collective();
    if world.ranks() < 2 {
        anyhow::bail!(
            "--target allreduce measures processes that mpirun started: run it as `mpirun -np 2 xception bench --target allreduce` with a binary built with --features mpi"
        );
    }
    let values = Summary::new(XceptionConfig::default()).trainable_params as usize;
    let mut gradient: Vec<f32> = (0..values).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let mut time = |sum: &mut dyn FnMut(&mut [f32]) -> Result<()>| -> Result<Vec<f64>> {
        let mut seconds = Vec::new();
        for pass in 0..warmup + repeats {
            barrier(world)?;
            let started = Instant::now();
            for bucket in gradient.chunks_mut(BUCKET) {
                sum(bucket)?;
            }
            if pass >= warmup {
                seconds.push(started.elapsed().as_secs_f64());
            }
        }
        Ok(seconds)
    };
    let ordered = time(&mut |bucket| Ok(world.sum(bucket)?))?;
    let mpi_allreduce = time(&mut |bucket| {
        processes.sum_with_mpi_allreduce(bucket);
        Ok(())
    })?;
    Ok(AllreduceResult {
        ranks: world.ranks(),
        values,
        buckets: values.div_ceil(BUCKET),
        ordered_seconds: median(&ordered),
        ordered,
        mpi_allreduce_seconds: median(&mpi_allreduce),
        mpi_allreduce,
    })
}

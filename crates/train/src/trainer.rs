//! The training loop: data, forward and backward on an autodiff device, gradient
//! accumulation and clipping, the optimizer step, EMA, metrics, evaluation, checkpoints and
//! exact resume.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Tensor};
use xception_data::rng::derive;
use xception_data::{
    DataError, Dataset, DatasetOptions, Loader, LoaderConfig, Split, Transform, synth,
};
use xception_model::interop;
use xception_model::{ConfigError, Xception, XceptionConfig};

use crate::checkpoint::{self, Best, Checkpoint, CheckpointContents, CheckpointError, TrainState};
use crate::config::{ConfigFileError, TrainConfig};
use crate::ema::Ema;
use crate::metrics::ClassificationMeter;
use crate::optim::{GradientSum, Optimizer, StateError};
use crate::parallel::DataParallel;
use crate::plot;
use crate::record::{MetricsLog, MetricsRow};
use crate::report::{EvalReport, Reporter, RunStart, Scores, StepReport};
use crate::weights;

/// Which checkpoint a run continues from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// The newest complete checkpoint of the run directory; a fresh start when there is none.
    Auto,
    /// This checkpoint directory.
    Dir(PathBuf),
}

/// How to run, besides the config.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where checkpoints, metrics and plots go.
    pub run_dir: PathBuf,
    /// Continue from a checkpoint.
    pub resume: Option<ResumeFrom>,
    /// Resume even when the config's recipe differs from the checkpoint's.
    pub force: bool,
    /// Stop with a checkpoint, as on Ctrl-C, once this many optimizer steps are taken.
    pub stop_at_step: Option<u64>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every epoch ran.
    Finished,
    /// Stopped early (Ctrl-C or `stop_at_step`) after writing a checkpoint.
    Interrupted,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// How it ended.
    pub outcome: Outcome,
    /// Optimizer steps taken in all.
    pub steps: u64,
    /// Epochs completed.
    pub epochs_done: u64,
    /// The last evaluation.
    pub last_eval: Option<EvalReport>,
    /// The best validation top-1 and its checkpoint.
    pub best: Option<Best>,
    /// The last checkpoint written.
    pub last_checkpoint: Option<PathBuf>,
    /// Seconds of this invocation.
    pub seconds: f64,
}

/// Why a run could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// `train` was given no device.
    #[error("no device to train on")]
    NoDevice,
    /// A device failed during a data-parallel step.
    #[error("{0}")]
    Device(String),
    /// The checkpoint's own config cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    /// The data cannot be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model config is invalid.
    #[error(transparent)]
    Model(#[from] ConfigError),
    /// A checkpoint cannot be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The optimizer state of a checkpoint does not fit.
    #[error("{file}: {source}")]
    OptimizerState {
        /// The state file.
        file: PathBuf,
        /// What does not fit.
        source: StateError,
    },
    /// The config differs from the checkpoint's in fields that change results.
    #[error(
        "the config differs from the one checkpoint {checkpoint} was trained with:\n  {}\nresume with --force to continue with the new values",
        changes.join("\n  ")
    )]
    ConfigChanged {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// `field: old -> new` lines.
        changes: Vec<String>,
    },
    /// A fresh run would mix with an earlier run's checkpoints.
    #[error(
        "run directory {0} already holds checkpoints of an earlier run: continue it with --resume auto, or choose another --run-dir"
    )]
    RunDirInUse(PathBuf),
    /// The dataset's classes do not match the model.
    #[error("model.num_classes is {expected} but {root} has {found} classes")]
    ClassCount {
        /// `model.num_classes`.
        expected: usize,
        /// Classes found.
        found: usize,
        /// The training folder.
        root: PathBuf,
    },
    /// The loss stopped being a number.
    #[error(
        "the loss became {loss} at step {step} (epoch {epoch}, lr {lr}); the run stopped without applying that step. {}",
        match last_checkpoint {
            Some(path) => format!("The last good checkpoint is {}.", path.display()),
            None => "No checkpoint was written yet.".to_string(),
        }
    )]
    NonFiniteLoss {
        /// The value.
        loss: f64,
        /// Steps taken before.
        step: u64,
        /// Epoch (1-based).
        epoch: u64,
        /// The learning rate of the step.
        lr: f64,
        /// The newest checkpoint on disk.
        last_checkpoint: Option<PathBuf>,
    },
    /// `training.init_from` cannot be used.
    #[error("training.init_from {path}: {reason}")]
    InitFrom {
        /// The weights named.
        path: PathBuf,
        /// Why they cannot be used.
        reason: String,
    },
    /// A file of the run directory cannot be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Config fields that never change what a run computes: they may differ on resume.
const RESULT_NEUTRAL: [&str; 7] = [
    "training.init_from",
    "training.device", // and training.devices; their number is checked on its own
    "data.workers",
    "data.prefetch",
    "logging.",
    "checkpoints.",
    "data.root",
];

fn recipe_changes(old: &TrainConfig, new: &TrainConfig) -> Vec<String> {
    let mut changes: Vec<String> = old
        .changed_fields(new)
        .into_iter()
        .filter(|line| !RESULT_NEUTRAL.iter().any(|prefix| line.starts_with(prefix)))
        .collect();
    // Which devices is free; how many is not: each takes `data.batch_size` images.
    let (before, after) = (old.device_names().len(), new.device_names().len());
    if before != after {
        changes.push(format!(
            "number of devices (training.device/devices): {before} -> {after} (the batch per step changes)"
        ));
    }
    changes
}

/// Opens a split of the configured data, generating the synthetic dataset first when the
/// config asks for one and the folder does not exist.
pub fn open_split(
    config: &TrainConfig,
    split: Split,
    reporter: &mut dyn Reporter,
) -> Result<Dataset, TrainError> {
    let root = &config.data.root;
    if let Some(options) = &config.data.synth
        && !root.exists()
    {
        // Generated next to its final place and renamed, so an interrupted generation is
        // never mistaken for a dataset.
        let partial = root.with_extension("partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(io_error(&partial))?;
        }
        reporter.note(&format!(
            "{} does not exist: generating a synthetic dataset there ({} classes, {} + {} images per class)",
            root.display(),
            options.classes,
            options.train_per_class,
            options.val_per_class
        ));
        let files = synth::generate(&partial, options)?;
        std::fs::rename(&partial, root).map_err(io_error(root))?;
        reporter.note(&format!("wrote {files} images to {}", root.display()));
    }
    let options = DatasetOptions {
        layout: config.data.layout,
        val_fraction: config.data.val_fraction,
        split_seed: config.data.split_seed,
    };
    Ok(xception_data::open(root, split, &options)?)
}

/// Evaluates `model` (inference mode) over every batch of `loader`.
pub fn evaluate(
    model: &Xception,
    loader: &Loader,
    device: &Device,
    reporter: &mut dyn Reporter,
) -> Scores {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut meter = ClassificationMeter::default();
    let iter = loader.epoch(0, 0);
    reporter.evaluating(iter.total());
    for batch in iter {
        for bad in &batch.skipped {
            reporter.note(&format!("skipped {}: {}", bad.path.display(), bad.reason));
        }
        if batch.is_empty() {
            reporter.evaluated_batch();
            continue;
        }
        let (images, labels) = batch.into_device(device);
        let logits = model.forward(images);
        let loss = loss_fn.forward(logits.clone(), labels.clone());
        let loss = f64::from(loss.into_scalar::<f32>());
        meter.add(loss, logits, labels);
        reporter.evaluated_batch();
    }
    Scores {
        loss: meter.loss(),
        top1: meter.top1_percent(),
        top5: meter.top5_percent(),
        images: meter.images,
    }
}

/// The loaders of a config: training (shuffled, augmented, last partial batch dropped) and
/// validation (in order, central crop, every image).
pub fn loaders(
    config: &TrainConfig,
    devices: usize,
    train: Dataset,
    val: Dataset,
) -> Result<(Loader, Loader), TrainError> {
    let size = config.model.input_size as u32;
    let base = LoaderConfig {
        batch_size: config.data.batch_size * devices.max(1),
        workers: config.data.workers,
        prefetch: config.data.prefetch,
        seed: config.training.seed,
        shuffle: true,
        drop_last: true,
        transform: Transform::Train {
            size,
            crop: config.data.crop.clone(),
        },
    };
    let val_config = LoaderConfig {
        shuffle: false,
        drop_last: false,
        transform: Transform::Eval {
            size,
            crop_pct: config.data.eval_crop_pct,
        },
        batch_size: config.data.batch_size,
        ..base.clone()
    };
    Ok((
        Loader::new(Arc::new(train), base)?,
        Loader::new(Arc::new(val), val_config)?,
    ))
}

/// Starts `model` from the weights at `init` (`training.init_from`).
fn initialise_from(
    model: Xception,
    config: &TrainConfig,
    init: &Path,
    device: &Device,
    reporter: &mut dyn Reporter,
) -> Result<Xception, TrainError> {
    let init_error = |reason: String| TrainError::InitFrom {
        path: init.to_path_buf(),
        reason,
    };
    // A run directory stands for its best checkpoint (else its newest).
    let source = if init.join("checkpoints").is_dir() {
        let newest = checkpoint::latest(&init.join("checkpoints"))?;
        let state = Checkpoint::open(&newest)?.state;
        match state
            .best
            .map(|b| init.join("checkpoints").join(b.checkpoint))
        {
            Some(best) if best.is_dir() => best,
            _ => newest,
        }
    } else {
        init.to_path_buf()
    };
    let loaded = weights::load(&source, false, device).map_err(|e| init_error(e.to_string()))?;
    let (from, to) = (&loaded.config, &config.model);
    let architecture =
        |c: &XceptionConfig| (c.width, c.middle_blocks, c.residual, c.mid_activation);
    if architecture(from) != architecture(to) {
        return Err(init_error(format!(
            "its architecture (width {}, middle_blocks {}, residual {}, mid_activation {:?}) differs from [model]'s (width {}, middle_blocks {}, residual {}, mid_activation {:?})",
            from.width,
            from.middle_blocks,
            from.residual,
            from.mid_activation,
            to.width,
            to.middle_blocks,
            to.residual,
            to.mid_activation
        )));
    }
    let mut tensors = interop::tensors_by_path(&loaded.model);
    if from.num_classes != to.num_classes {
        tensors.retain(|path, _| !path.starts_with("predictions."));
        reporter.note(&format!(
            "initialised from {}; the classifier is re-initialised ({} -> {} classes)",
            loaded.source, from.num_classes, to.num_classes
        ));
    } else {
        reporter.note(&format!("initialised from {}", loaded.source));
    }
    interop::assign(model, tensors).map_err(|e| init_error(e.to_string()))
}

/// Everything a run carries from step to step.
struct Run<'a> {
    config: &'a TrainConfig,
    config_toml: String,
    classes_json: String,
    checkpoints: PathBuf,
    model: Xception,
    ema: Option<Ema<Xception>>,
    optimizer: Optimizer,
    state: TrainState,
    last_checkpoint: Option<PathBuf>,
}

impl Run<'_> {
    fn save(&mut self, reason: &str, reporter: &mut dyn Reporter) -> Result<PathBuf, TrainError> {
        self.state.reason = reason.to_string();
        self.state.ema_updates = self.ema.as_ref().map_or(0, Ema::updates);
        let valid = self.model.valid();
        let name = checkpoint::checkpoint_name(self.state.step);
        let path = checkpoint::write(
            &self.checkpoints,
            &name,
            CheckpointContents {
                model: &valid,
                ema: self.ema.as_ref().map(Ema::model),
                optimizer: self.optimizer.state_tensors(),
                config_toml: self.config_toml.clone(),
                classes_json: self.classes_json.clone(),
                state: self.state.clone(),
            },
        )?;
        let best = self
            .state
            .best
            .as_ref()
            .filter(|_| self.config.checkpoints.keep_best)
            .map(|b| b.checkpoint.as_str());
        checkpoint::prune(&self.checkpoints, self.config.checkpoints.keep_last, best)?;
        reporter.note(&format!("checkpoint {} ({reason})", path.display()));
        self.last_checkpoint = Some(path.clone());
        Ok(path)
    }
}

/// Trains `config` on `devices` (plain devices; autodiff is added here): one device, or
/// several sharing each batch ([`DataParallel`]), the first holding the model, the
/// optimizer and evaluation. `stop` is polled after every optimizer step: when set, a
/// checkpoint is written and the run returns [`Outcome::Interrupted`].
pub fn train(
    config: &TrainConfig,
    devices: &[Device],
    options: &RunOptions,
    reporter: &mut dyn Reporter,
    stop: &AtomicBool,
) -> Result<RunSummary, TrainError> {
    let started = Instant::now();
    let Some(device) = devices.first() else {
        return Err(TrainError::NoDevice);
    };
    let run_dir = &options.run_dir;
    let checkpoints = run_dir.join("checkpoints");
    std::fs::create_dir_all(run_dir).map_err(io_error(run_dir))?;
    for partial in checkpoint::remove_partial(&checkpoints)? {
        reporter.note(&format!(
            "removed the partial checkpoint {} of an interrupted write",
            partial.display()
        ));
    }

    // Which checkpoint, if any, to continue from.
    let resume_dir = match &options.resume {
        None => {
            if checkpoint::latest(&checkpoints).is_ok() {
                return Err(TrainError::RunDirInUse(run_dir.clone()));
            }
            None
        }
        Some(ResumeFrom::Dir(dir)) => Some(dir.clone()),
        Some(ResumeFrom::Auto) => match checkpoint::latest(&checkpoints) {
            Ok(dir) => Some(dir),
            Err(CheckpointError::NotFound(_)) => {
                reporter.note(&format!(
                    "--resume auto: no checkpoint in {} yet, starting afresh",
                    checkpoints.display()
                ));
                None
            }
            Err(other) => return Err(other.into()),
        },
    };
    let resume = resume_dir.as_deref().map(Checkpoint::open).transpose()?;
    if let Some(resume) = &resume {
        let saved = TrainConfig::parse(&resume.dir.join("config.toml"), &resume.config_toml, &[])?;
        let changes = recipe_changes(&saved, config);
        if !changes.is_empty() {
            if !options.force {
                return Err(TrainError::ConfigChanged {
                    checkpoint: resume.dir.clone(),
                    changes,
                });
            }
            reporter.note(&format!(
                "--force: resuming with a changed config:\n  {}",
                changes.join("\n  ")
            ));
        }
    }

    // Data.
    let train_set = open_split(config, Split::Train, reporter)?;
    let val_set = open_split(config, Split::Val, reporter)?;
    if train_set.classes.len() != config.model.num_classes {
        return Err(TrainError::ClassCount {
            expected: config.model.num_classes,
            found: train_set.classes.len(),
            root: train_set.root.clone(),
        });
    }
    let (train_images, val_images) = (train_set.len(), val_set.len());
    let classes_json = serde_json::to_string_pretty(&train_set.classes).unwrap_or_default();
    let (train_loader, val_loader) = loaders(config, devices.len(), train_set, val_set)?;
    // Each device takes `data.batch_size` images of every batch.
    let batch_size = (config.data.batch_size * devices.len()) as u64;
    let accumulation = u64::from(config.training.grad_accumulation);
    let batches_per_epoch = train_loader.batches_per_epoch() as u64;
    if batches_per_epoch == 0 {
        return Err(DataError::InvalidSetting {
            field: "data.batch_size",
            reason: format!(
                "{batch_size} is larger than the {train_images} training images (the last partial batch is dropped)"
            ),
        }
        .into());
    }
    let steps_per_epoch = batches_per_epoch.div_ceil(accumulation);
    let epochs = u64::from(config.training.epochs);
    let samples_per_epoch = batches_per_epoch * batch_size;
    let total_samples = samples_per_epoch * epochs;

    // Model, EMA and optimizer: fresh from the seed, or read from the checkpoint.
    let parallel = DataParallel::new(devices);
    let train_device = parallel.main_device().clone();
    device.seed(config.training.seed);
    train_device.seed(config.training.seed);
    let mut model = Xception::new(&config.model, &train_device)?;
    let mut optimizer = Optimizer::new(config.optimizer.clone());
    let mut ema = None;
    let config_toml = config.to_toml();
    let state = match &resume {
        Some(resume) => {
            model = checkpoint::load_module(model, &resume.model_file())?;
            optimizer
                .load_state(&model, resume.optimizer_state()?, device)
                .map_err(|source| TrainError::OptimizerState {
                    file: resume.optimizer_file(),
                    source,
                })?;
            if let Some(decay) = config.training.ema_decay {
                let averaged = if resume.ema_file().is_file() {
                    checkpoint::load_module(
                        Xception::new(&config.model, device)?,
                        &resume.ema_file(),
                    )?
                } else {
                    reporter.note("the checkpoint has no EMA weights: the average restarts from the current weights");
                    model.valid()
                };
                ema = Some(Ema::resume(
                    averaged,
                    decay,
                    config.training.ema_warmup,
                    resume.state.ema_updates,
                ));
            }
            let mut state = resume.state.clone();
            state.config_hash = config.hash();
            state
        }
        None => {
            if let Some(init) = &config.training.init_from {
                model = initialise_from(model, config, init, device, reporter)?;
            }
            if let Some(decay) = config.training.ema_decay {
                ema = Some(Ema::new(&model, decay, config.training.ema_warmup));
            }
            TrainState {
                format: checkpoint::FORMAT,
                epoch: 0,
                step: 0,
                batch_in_epoch: 0,
                samples_seen: 0,
                lr: config.schedule.lr(0, samples_per_epoch, total_samples),
                ema_updates: 0,
                seed: config.training.seed,
                config_hash: config.hash(),
                best: None,
                reason: String::new(),
                running: ClassificationMeter::default(),
            }
        }
    };
    if let Some(resume) = &resume {
        // Checkpoints after the one resumed from belong to an abandoned continuation: moved
        // aside (never deleted), so that `--resume auto` cannot pick them up later.
        let newer: Vec<PathBuf> = checkpoint::list(&checkpoints)?
            .into_iter()
            .filter(|(step, path)| *step > resume.state.step && *path != resume.dir)
            .map(|(_, path)| path)
            .collect();
        if !newer.is_empty() {
            let aside = checkpoints.join(format!("superseded-at-step-{}", resume.state.step));
            std::fs::create_dir_all(&aside).map_err(io_error(&aside))?;
            for path in newer {
                if let Some(name) = path.file_name() {
                    let target = aside.join(name);
                    std::fs::rename(&path, &target).map_err(io_error(&path))?;
                }
            }
            reporter.note(&format!(
                "checkpoints newer than the one resumed from were moved to {}",
                aside.display()
            ));
        }
    }
    let config_path = run_dir.join("config.toml");
    std::fs::write(&config_path, &config_toml).map_err(io_error(&config_path))?;
    let (mut log, kept_rows) = MetricsLog::open(run_dir, resume.as_ref().map(|r| r.state.step))
        .map_err(io_error(&run_dir.join("metrics.jsonl")))?;
    let mut curves = plot::Curves::from_rows(&kept_rows);

    reporter.started(&RunStart {
        run_dir: run_dir.clone(),
        resumed_from: resume.as_ref().map(|r| r.dir.clone()),
        train_images,
        val_images,
        classes: config.model.num_classes,
        epochs,
        start_epoch: state.epoch,
        steps_per_epoch,
        start_step: state.step,
        total_steps: steps_per_epoch * epochs,
        images_per_step: batch_size * accumulation,
        device: config.device_names().join(", "),
    });

    let mut run = Run {
        config,
        config_toml,
        classes_json,
        checkpoints,
        model,
        ema,
        optimizer,
        state,
        last_checkpoint: resume.as_ref().map(|r| r.dir.clone()),
    };
    let seed = config.training.seed;
    let mut last_eval = None;
    let stop_requested = |step: u64| {
        stop.load(Ordering::SeqCst) || options.stop_at_step.is_some_and(|at| step >= at)
    };

    while run.state.epoch < epochs {
        let epoch = run.state.epoch;
        let first_batch = run.state.batch_in_epoch;
        let mut batches = train_loader.epoch(epoch, (first_batch * batch_size) as usize);
        let mut batch_in_epoch = first_batch;
        let mut sum = GradientSum::default();
        let mut step_started = Instant::now();
        let mut waited = 0.0;
        let mut step_images = 0u64;
        let mut step_loss = 0.0;
        loop {
            let wait_started = Instant::now();
            let Some(batch) = batches.next() else { break };
            waited += wait_started.elapsed().as_secs_f64();
            batch_in_epoch += 1;
            for bad in &batch.skipped {
                reporter.note(&format!("skipped {}: {}", bad.path.display(), bad.reason));
            }
            if !batch.is_empty() {
                step_images += batch.len() as u64;
                // Dropout's masks come from (seed, step, batch, device), so a resumed run
                // draws the same masks as an uninterrupted one.
                let (step, batch_index) = (run.state.step, u64::from(sum.batches()));
                let seed_of = |device: usize| match device {
                    0 => derive(&[seed, step, batch_index, 0xd20b]),
                    d => derive(&[seed, step, batch_index, 0xd20b, d as u64]),
                };
                let frozen = epoch < u64::from(config.training.freeze_epochs);
                let shares = parallel
                    .forward_backward(&run.model, batch, frozen, seed_of)
                    .map_err(TrainError::Device)?;
                let images: usize = shares.iter().map(|share| share.images).sum();
                let mut value = 0.0;
                let mut parts = Vec::with_capacity(shares.len());
                let mut logits = Vec::with_capacity(shares.len());
                let mut labels = Vec::with_capacity(shares.len());
                for share in shares {
                    let weight = share.images as f64 / images as f64;
                    value += weight * share.loss;
                    parts.push((share.grads, weight));
                    logits.push(share.logits);
                    labels.push(share.labels);
                }
                if !value.is_finite() {
                    let lr = config.schedule.lr(
                        run.state.samples_seen,
                        samples_per_epoch,
                        total_samples,
                    );
                    let _ = log.flush();
                    return Err(TrainError::NonFiniteLoss {
                        loss: value,
                        step: run.state.step,
                        epoch: epoch + 1,
                        lr,
                        last_checkpoint: run.last_checkpoint.clone(),
                    });
                }
                step_loss += value;
                run.state
                    .running
                    .add(value, Tensor::cat(logits, 0), Tensor::cat(labels, 0));
                sum.add_shares(&run.model, parts);
            }
            let step_ready =
                u64::from(sum.batches()) == accumulation || batch_in_epoch == batches_per_epoch;
            if !step_ready {
                continue;
            }
            let batches_in_step = u64::from(sum.batches()).max(1);
            let lr = config
                .schedule
                .lr(run.state.samples_seen, samples_per_epoch, total_samples);
            let (grads, grad_norm) =
                std::mem::take(&mut sum).finish(config.training.grad_clip_norm);
            run.model = run.optimizer.step(run.model, grads, lr);
            if let Some(ema) = &mut run.ema {
                ema.update(&run.model);
            }
            run.state.step += 1;
            run.state.samples_seen += batches_in_step * batch_size;
            run.state.batch_in_epoch = batch_in_epoch;
            run.state.lr = lr;

            let seconds = step_started.elapsed().as_secs_f64().max(1e-9);
            let step_in_epoch = batch_in_epoch.div_ceil(accumulation);
            let report = StepReport {
                epoch,
                step: run.state.step,
                step_in_epoch,
                steps_per_epoch,
                lr,
                loss: step_loss / batches_in_step as f64,
                running_loss: run.state.running.loss(),
                running_top1: run.state.running.top1_percent(),
                running_top5: run.state.running.top5_percent(),
                grad_norm,
                images_per_sec: step_images as f64 / seconds,
                data_wait: (waited / seconds).min(1.0),
            };
            let row = MetricsRow {
                kind: "train".into(),
                epoch: epoch as f64 + batch_in_epoch as f64 / batches_per_epoch as f64,
                step: run.state.step,
                samples: run.state.samples_seen,
                lr: Some(lr),
                loss: report.loss,
                top1: report.running_top1,
                top5: report.running_top5,
                images_per_sec: Some(report.images_per_sec),
                data_wait: Some(report.data_wait),
                grad_norm: Some(grad_norm),
                ..Default::default()
            };
            log.write(&row).map_err(io_error(log.jsonl_path()))?;
            curves.add(&row);
            reporter.step(&report);
            step_started = Instant::now();
            waited = 0.0;
            step_images = 0;
            step_loss = 0.0;

            let stopping = stop_requested(run.state.step);
            let epoch_done = batch_in_epoch == batches_per_epoch;
            if stopping && !epoch_done {
                log.flush().map_err(io_error(log.jsonl_path()))?;
                run.save("interrupt", reporter)?;
                return Ok(summary(&run, Outcome::Interrupted, last_eval, started));
            }
            if let Some(every) = config.checkpoints.every_steps
                && run.state.step.is_multiple_of(every)
                && !epoch_done
            {
                log.flush().map_err(io_error(log.jsonl_path()))?;
                run.save("steps", reporter)?;
            }
        }
        drop(batches);

        // The epoch is done.
        run.state.epoch = epoch + 1;
        run.state.batch_in_epoch = 0;
        run.state.running = ClassificationMeter::default();
        let epochs_done = epoch + 1;
        if epochs_done.is_multiple_of(u64::from(config.training.eval_every_epochs))
            || epochs_done == epochs
        {
            let eval_started = Instant::now();
            let raw = evaluate(&run.model.valid(), &val_loader, device, reporter);
            let ema_scores = run
                .ema
                .as_ref()
                .map(|ema| evaluate(ema.model(), &val_loader, device, reporter));
            let report = EvalReport {
                epochs_done,
                step: run.state.step,
                raw,
                ema: ema_scores,
                seconds: eval_started.elapsed().as_secs_f64(),
            };
            let row = MetricsRow {
                kind: "val".into(),
                epoch: epochs_done as f64,
                step: run.state.step,
                samples: run.state.samples_seen,
                loss: raw.loss,
                top1: raw.top1,
                top5: raw.top5,
                ema_loss: ema_scores.map(|s| s.loss),
                ema_top1: ema_scores.map(|s| s.top1),
                ema_top5: ema_scores.map(|s| s.top5),
                ..Default::default()
            };
            log.write(&row).map_err(io_error(log.jsonl_path()))?;
            curves.add(&row);
            let headline = ema_scores.map_or(raw.top1, |s| s.top1);
            if run.state.best.as_ref().is_none_or(|b| headline > b.top1) {
                run.state.best = Some(Best {
                    top1: headline,
                    epochs_done,
                    checkpoint: checkpoint::checkpoint_name(run.state.step),
                });
            }
            reporter.evaluated(&report);
            last_eval = Some(report);
        }
        log.flush().map_err(io_error(log.jsonl_path()))?;
        if config.logging.plot {
            let path = run_dir.join("curves.png");
            curves.draw(&path).map_err(io_error(&path))?;
        }
        let reason = if epochs_done == epochs {
            "final"
        } else {
            "epoch"
        };
        run.save(reason, reporter)?;
        let stopping = stop_requested(run.state.step);
        if stopping && epochs_done < epochs {
            return Ok(summary(&run, Outcome::Interrupted, last_eval, started));
        }
    }
    Ok(summary(&run, Outcome::Finished, last_eval, started))
}

fn summary(
    run: &Run<'_>,
    outcome: Outcome,
    last_eval: Option<EvalReport>,
    started: Instant,
) -> RunSummary {
    RunSummary {
        outcome,
        steps: run.state.step,
        epochs_done: run.state.epoch,
        last_eval,
        best: run.state.best.clone(),
        last_checkpoint: run.last_checkpoint.clone(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

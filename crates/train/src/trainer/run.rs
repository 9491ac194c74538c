//! A run in progress: everything carried from step to step, how it opens, one epoch of
//! optimizer steps, and checkpoints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use xception_data::rng::derive;
use xception_data::{DataError, HostBatch, Loader};
use xception_model::Network;

use super::data::{RunData, open_data};
use super::start::{self, Restored};
use super::tally::{self, PendingStep, Tally, slot};
use super::{Outcome, RunOptions, RunSummary, TrainError, io_error};
use crate::checkpoint::{self, CheckpointContents, TrainState};
use crate::config::TrainConfig;
use crate::distributed::{BUCKET, Collective};
use crate::ema::Ema;
use crate::metrics::batch_tally;
use crate::optim::{Exchange, GradientSum, Optimizer, StepGradients};
use crate::parallel::{self, DataParallel};
use crate::plot;
use crate::record::{MetricsLog, MetricsRow};
use crate::report::{EvalReport, Reporter, RunStart, StepReport};

/// The sizes of a run, fixed by the config and the data.
pub(super) struct Plan {
    /// Images per loader batch: every device's share, on every process.
    pub batch_size: u64,
    /// Loader batches per optimizer step.
    pub accumulation: u64,
    pub batches_per_epoch: u64,
    pub steps_per_epoch: u64,
    pub epochs: u64,
    pub samples_per_epoch: u64,
    pub total_samples: u64,
}

/// Everything a run carries from step to step.
pub(super) struct Run<'a> {
    pub config: &'a TrainConfig,
    /// The processes training together; rank 0 alone writes files.
    pub world: &'a dyn Collective,
    pub run_dir: PathBuf,
    checkpoints: PathBuf,
    config_toml: String,
    classes_json: String,
    pub plan: Plan,
    parallel: DataParallel,
    /// The first device, without autodiff: evaluation, the EMA and the optimizer state.
    pub device: Device,
    train_loader: Loader,
    pub val_loader: Loader,
    /// The model being trained, absent only while [`Self::apply_step`] replaces it.
    model: Option<Network>,
    pub ema: Option<Ema<Network>>,
    optimizer: Optimizer,
    pub state: TrainState,
    /// The metrics files, on rank 0.
    log: Option<MetricsLog>,
    pub curves: plot::Curves,
    tally: Tally,
    pub last_checkpoint: Option<PathBuf>,
    pub last_eval: Option<EvalReport>,
    /// Whether the last step's processes agreed to stop after it.
    pub stop_agreed: bool,
    started: Instant,
}

/// The batches of the optimizer step being accumulated.
#[derive(Default)]
struct StepInProgress {
    sum: GradientSum,
    /// Loader batches taken, empty ones (every file bad) included.
    loader_batches: u32,
    /// Summed [`batch_tally`]s, on the main device.
    tally: Option<Tensor<1>>,
    images: u64,
}

impl<'a> Run<'a> {
    /// Opens a run: its directory, the checkpoint it resumes from, its data, and the model,
    /// EMA and optimizer (restored or fresh).
    pub fn open(
        config: &'a TrainConfig,
        devices: &[Device],
        world: &'a dyn Collective,
        options: &RunOptions,
        reporter: &mut dyn Reporter,
    ) -> Result<Self, TrainError> {
        let started = Instant::now();
        let device = devices.first().ok_or(TrainError::NoDevice)?.clone();
        let run_dir = options.run_dir.clone();
        let checkpoints = run_dir.join("checkpoints");
        let RunData {
            train_loader,
            val_loader,
            classes_json,
            train_images,
            val_images,
        } = open_data(config, devices.len(), world, reporter)?;
        let plan = Plan::new(
            config,
            devices.len() * world.ranks(),
            &train_loader,
            train_images,
        )?;

        let parallel = DataParallel::new(devices, config.loss_spec());
        let train_device = parallel.main_device().clone();
        device.seed(config.training.seed);
        train_device.seed(config.training.seed);
        let first_lr = config
            .schedule
            .lr(0, plan.samples_per_epoch, plan.total_samples);
        let on = start::StartOn {
            config,
            options,
            world,
            checkpoints: &checkpoints,
            train_device: &train_device,
            device: &device,
            first_lr,
        };
        let (resume, restored) = start::start(&on, reporter)?;
        let Restored {
            model,
            ema,
            optimizer,
            mut state,
        } = restored;
        state.ranks = world.ranks() as u64;
        start::keep_position(&mut state, plan.batch_size, reporter);
        let config_toml = config.to_toml();
        let (log, kept_rows) = if world.rank() == 0 {
            let resumed_step = resume.as_ref().map(|r| r.state.step);
            let (log, kept_rows) = open_files(&run_dir, &config_toml, resumed_step)?;
            (Some(log), kept_rows)
        } else {
            (None, Vec::new())
        };

        reporter.started(&RunStart {
            run_dir: run_dir.clone(),
            resumed_from: resume.as_ref().map(|r| r.dir.clone()),
            train_images,
            val_images,
            classes: config.model.num_classes(),
            epochs: plan.epochs,
            start_epoch: state.epoch,
            steps_per_epoch: plan.steps_per_epoch,
            start_step: state.step,
            total_steps: plan.steps_per_epoch * plan.epochs,
            images_per_step: plan.batch_size * plan.accumulation,
            device: config.device_names().join(", "),
            processes: world.ranks(),
        });
        Ok(Self {
            config,
            world,
            run_dir,
            checkpoints,
            config_toml,
            classes_json,
            plan,
            parallel,
            device,
            train_loader,
            val_loader,
            model: Some(model),
            ema,
            optimizer,
            state,
            log,
            curves: plot::Curves::from_rows(&kept_rows),
            tally: Tally::new(),
            last_checkpoint: resume.map(|r| r.dir),
            last_eval: None,
            stop_agreed: false,
            started,
        })
    }

    /// Runs the optimizer steps left in the current epoch. Returns `Interrupted` when `stop`
    /// asked for a stop mid-epoch (a checkpoint is then written); `None` at the epoch's end.
    pub fn train_epoch(
        &mut self,
        reporter: &mut dyn Reporter,
        stop: &dyn Fn(u64) -> bool,
    ) -> Result<Option<Outcome>, TrainError> {
        let epoch = self.state.epoch;
        let first = (self.state.batch_in_epoch * self.plan.batch_size) as usize;
        let mut batches = self.train_loader.epoch(epoch, first);
        let mut batch_in_epoch = self.state.batch_in_epoch;
        let mut step = StepInProgress::default();
        loop {
            let wait_started = Instant::now();
            let Some(batch) = batches.next() else { break };
            self.tally.waited(wait_started.elapsed());
            batch_in_epoch += 1;
            for bad in &batch.skipped {
                reporter.note(&format!("skipped {}: {}", bad.path.display(), bad.reason));
            }
            let trained = !batch.is_empty();
            if trained {
                self.forward_backward(batch, &mut step)?;
            }
            step.loader_batches += 1;
            if self.world.ranks() > 1 && !self.frozen() {
                parallel::average_running_stats(self.model()?, self.world, trained)?;
            }
            let epoch_done = batch_in_epoch == self.plan.batches_per_epoch;
            if u64::from(step.loader_batches) < self.plan.accumulation && !epoch_done {
                continue;
            }
            let wants_stop = stop(self.state.step + 1);
            let stopping =
                self.apply_step(std::mem::take(&mut step), batch_in_epoch, wants_stop)?;

            let step_count = self.state.step;
            let checkpoint_due = !epoch_done
                && self
                    .config
                    .checkpoints
                    .every_steps
                    .is_some_and(|every| step_count.is_multiple_of(every));
            if step_count.is_multiple_of(self.config.logging.every_steps.max(1)) {
                self.read_steps(reporter)?;
            }
            if stopping && !epoch_done {
                self.save("interrupt", reporter)?;
                return Ok(Some(Outcome::Interrupted));
            }
            if checkpoint_due {
                self.save("steps", reporter)?;
            }
        }
        drop(batches);
        self.read_steps(reporter)?;
        Ok(None)
    }

    /// Forward and backward of one loader batch, split over the devices; its gradients and
    /// metrics are added to `step`.
    fn forward_backward(
        &mut self,
        batch: HostBatch,
        step: &mut StepInProgress,
    ) -> Result<(), TrainError> {
        let images = batch.len();
        step.images += images as u64;
        // Dropout's masks come from (seed, step, batch, device), so a resumed run draws the
        // same masks as an uninterrupted one. Devices are numbered across processes, each
        // process holding `parallel.len()`; batches count from the step's first, empty or not.
        let seed = self.config.training.seed;
        let (step_index, batch_index) = (self.state.step, u64::from(step.loader_batches));
        let first_device = self.world.rank() * self.parallel.len();
        let seed_of = |device: usize| match first_device + device {
            0 => derive(&[seed, step_index, batch_index, 0xd20b]),
            d => derive(&[seed, step_index, batch_index, 0xd20b, d as u64]),
        };
        let frozen = self.frozen();
        let shares = self
            .parallel
            .forward_backward(self.model()?, batch, frozen, seed_of)
            .map_err(TrainError::Device)?;
        let Some(batch) = parallel::combine(shares) else {
            return Ok(());
        };
        let tally = batch_tally(batch.loss, batch.logits, batch.labels).inner();
        step.tally = Some(match step.tally.take() {
            Some(sum) => sum + tally,
            None => tally,
        });
        let grads = if self.world.ranks() > 1 {
            // Weighted by images rather than by fraction of the batch, as
            // `GradientSum::exchange` needs.
            batch
                .grads
                .into_iter()
                .map(|(grads, fraction)| (grads, fraction * images as f64))
                .collect()
        } else {
            batch.grads
        };
        step.sum.add_shares(self.model()?, grads);
        Ok(())
    }

    /// Applies an accumulated step (the device skips it when its loss or gradient norm is
    /// not finite) and records it for the next read. With several processes the step's
    /// gradients, metrics and stop requests are summed over them first. Returns whether to
    /// stop after this step: `wants_stop` here, or on any process.
    fn apply_step(
        &mut self,
        mut step: StepInProgress,
        batch_in_epoch: u64,
        wants_stop: bool,
    ) -> Result<bool, TrainError> {
        let mut batches = u64::from(step.sum.batches());
        let mut tally = step.tally.take();
        let mut stopping = wants_stop;
        if self.world.ranks() > 1 {
            let shared = self.share_step(&mut step, tally, wants_stop)?;
            (tally, batches, stopping) = (Some(shared.tally), shared.batches, shared.stop);
            step.images = shared.images;
        }
        let lr = self.lr();
        let StepGradients { grads, norm } = step
            .sum
            .finish(self.config.training.grad_clip_norm, &self.device);
        let tally = tally.unwrap_or_else(|| Tensor::zeros([slot::NORM], &self.device));
        let values = Tensor::cat(vec![tally, norm], 0);
        let finite = tally::finite(&values);
        // Moved, not cloned: the fused CPU loop then updates the weights' buffers in place.
        if let Some(model) = self.model.take() {
            let model = self.optimizer.step_if(model, grads, lr, finite);
            if let Some(ema) = &mut self.ema {
                ema.update(&model);
            }
            self.model = Some(model);
        }
        self.state.step += 1;
        self.state.samples_seen += u64::from(step.loader_batches) * self.plan.batch_size;
        self.state.batch_in_epoch = batch_in_epoch;
        self.state.lr = lr;
        self.stop_agreed = stopping;
        self.tally.push(PendingStep {
            epoch: self.state.epoch,
            step: self.state.step,
            batch_in_epoch,
            samples: self.state.samples_seen,
            lr,
            batches,
            images: step.images,
            values,
        });
        Ok(stopping)
    }

    /// Sums a step over the processes: gradients (weighted by images), metrics, images and
    /// stop requests. Every process then holds the same gradients and the same metrics, so
    /// all apply or skip the step alike and stop at the same step.
    fn share_step(
        &mut self,
        step: &mut StepInProgress,
        tally: Option<Tensor<1>>,
        wants_stop: bool,
    ) -> Result<SharedStep, TrainError> {
        let mut extra = [0.0f32; slot::NORM + 1];
        if let Some(tally) = tally {
            for (slot, value) in extra.iter_mut().zip(tally.into_data().iter::<f32>()) {
                *slot = value;
            }
        }
        extra[slot::NORM] = f32::from(u8::from(wants_stop));
        let batches = step.loader_batches;
        let model = self.model.as_ref().ok_or(TrainError::ModelLost)?;
        let images = step.sum.exchange(
            model,
            self.world,
            Exchange {
                images: step.images,
                extra: &mut extra,
                device: &self.device,
                bucket: BUCKET,
            },
        )?;
        // The loss slot holds the sum of batch means; over processes, the mean per image
        // (from the loss x images slot) times the batches gives the same reading.
        extra[slot::LOSS] = extra[slot::LOSS + 1] / images.max(1) as f32 * batches as f32;
        Ok(SharedStep {
            tally: Tensor::from_floats(&extra[..slot::NORM], &self.device),
            images,
            batches: u64::from(batches),
            stop: extra[slot::NORM] > 0.0,
        })
    }

    /// Whether the features are frozen this epoch (only the classifier learns).
    fn frozen(&self) -> bool {
        self.state.epoch < u64::from(self.config.training.freeze_epochs)
    }

    /// Whether this process writes the run's files (rank 0).
    pub fn leads(&self) -> bool {
        self.world.rank() == 0
    }

    /// Writes a row to the metrics files (on rank 0) and the curves.
    pub fn log_row(&mut self, row: &MetricsRow) -> Result<(), TrainError> {
        if let Some(log) = &mut self.log {
            log.write(row).map_err(io_error(log.jsonl_path()))?;
        }
        self.curves.add(row);
        Ok(())
    }

    /// Flushes the metrics files (on rank 0).
    pub fn flush_log(&mut self) -> Result<(), TrainError> {
        match &mut self.log {
            Some(log) => log.flush().map_err(io_error(log.jsonl_path())),
            None => Ok(()),
        }
    }

    /// The model being trained.
    pub fn model(&self) -> Result<&Network, TrainError> {
        self.model.as_ref().ok_or(TrainError::ModelLost)
    }

    /// The learning rate of the next step.
    fn lr(&self) -> f64 {
        self.config.schedule.lr(
            self.state.samples_seen,
            self.plan.samples_per_epoch,
            self.plan.total_samples,
        )
    }

    /// Reads the pending steps back, in one transfer: their rows go to the metrics files and
    /// the reporter in order. A step that was not finite (and so not applied) stops the run.
    pub fn read_steps(&mut self, reporter: &mut dyn Reporter) -> Result<(), TrainError> {
        let (steps, throughput) = self.tally.read();
        for read in steps {
            let step = &read.pending;
            if !read.finite() {
                let _ = self.flush_log();
                return Err(TrainError::NonFiniteLoss {
                    loss: read.loss(),
                    grad_norm: read.grad_norm(),
                    step: step.step - 1,
                    epoch: step.epoch + 1,
                    lr: step.lr,
                    last_checkpoint: self.last_checkpoint.clone(),
                });
            }
            self.state
                .running
                .add_tally(step.images, &read.values[slot::TALLY..slot::NORM]);
            let running = &self.state.running;
            let report = StepReport {
                epoch: step.epoch,
                step: step.step,
                step_in_epoch: step.batch_in_epoch.div_ceil(self.plan.accumulation),
                steps_per_epoch: self.plan.steps_per_epoch,
                lr: step.lr,
                loss: read.loss(),
                running_loss: running.loss(),
                running_top1: running.top1_percent(),
                running_top5: running.top5_percent(),
                grad_norm: read.grad_norm(),
                images_per_sec: throughput.images_per_sec,
                data_wait: throughput.data_wait,
            };
            let row = MetricsRow {
                kind: "train".into(),
                epoch: step.epoch as f64
                    + step.batch_in_epoch as f64 / self.plan.batches_per_epoch as f64,
                step: step.step,
                samples: step.samples,
                lr: Some(step.lr),
                loss: report.loss,
                top1: report.running_top1,
                top5: report.running_top5,
                images_per_sec: Some(report.images_per_sec),
                data_wait: Some(report.data_wait),
                grad_norm: Some(report.grad_norm),
                ..Default::default()
            };
            self.log_row(&row)?;
            reporter.step(&report);
        }
        Ok(())
    }

    /// Writes a checkpoint of the current state (`reason` says why) after reading the pending
    /// steps, so that no checkpoint holds a step that was not finite, then prunes old ones.
    pub fn save(
        &mut self,
        reason: &str,
        reporter: &mut dyn Reporter,
    ) -> Result<PathBuf, TrainError> {
        self.read_steps(reporter)?;
        self.flush_log()?;
        self.state.reason = reason.to_string();
        self.state.ema_updates = self.ema.as_ref().map_or(0, Ema::updates);
        let name = checkpoint::checkpoint_name(self.state.step);
        let path = if self.leads() {
            self.write_checkpoint(&name, reason, reporter)?
        } else {
            self.checkpoints.join(name)
        };
        self.last_checkpoint = Some(path.clone());
        if self.world.ranks() > 1 {
            // Every rank must still hold what rank 0 just saved; a device whose kernels
            // round differently from run to run would make them drift apart.
            let packet = start::state_packet(
                self.model()?,
                self.ema.as_ref(),
                &self.optimizer,
                &self.state,
            );
            let when = format!("at checkpoint {}", path.display());
            start::check_same_state(self.world, &packet, &when)?;
        }
        Ok(path)
    }

    /// Writes the checkpoint `name` and prunes older ones (rank 0).
    fn write_checkpoint(
        &mut self,
        name: &str,
        reason: &str,
        reporter: &mut dyn Reporter,
    ) -> Result<PathBuf, TrainError> {
        let valid = self.model()?.valid();
        let path = checkpoint::write(
            &self.checkpoints,
            name,
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
        Ok(path)
    }

    /// What the run did, as it ended with `outcome`.
    pub fn summary(&self, outcome: Outcome) -> RunSummary {
        RunSummary {
            outcome,
            steps: self.state.step,
            epochs_done: self.state.epoch,
            last_eval: self.last_eval.clone(),
            best: self.state.best.clone(),
            last_checkpoint: self.last_checkpoint.clone(),
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// A step summed over the processes.
struct SharedStep {
    /// The step's [`batch_tally`] sums, on the main device.
    tally: Tensor<1>,
    images: u64,
    /// Loader batches in the step.
    batches: u64,
    /// Whether some process asked to stop.
    stop: bool,
}

/// Rank 0's files of the run directory: the resolved config, and the metrics log (rows after
/// `resumed_step` dropped) with the rows it keeps.
fn open_files(
    run_dir: &Path,
    config_toml: &str,
    resumed_step: Option<u64>,
) -> Result<(MetricsLog, Vec<MetricsRow>), TrainError> {
    let config_path = run_dir.join("config.toml");
    std::fs::write(&config_path, config_toml).map_err(io_error(&config_path))?;
    MetricsLog::open(run_dir, resumed_step).map_err(io_error(&run_dir.join("metrics.jsonl")))
}

impl Plan {
    fn new(
        config: &TrainConfig,
        devices: usize,
        train_loader: &Loader,
        train_images: usize,
    ) -> Result<Self, TrainError> {
        // Each device (of every process) takes `data.batch_size` images of every batch.
        let batch_size = (config.data.batch_size * devices) as u64;
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
        let epochs = u64::from(config.training.epochs);
        let samples_per_epoch = batches_per_epoch * batch_size;
        Ok(Self {
            batch_size,
            accumulation,
            batches_per_epoch,
            steps_per_epoch: batches_per_epoch.div_ceil(accumulation),
            epochs,
            samples_per_epoch,
            total_samples: samples_per_epoch * epochs,
        })
    }
}

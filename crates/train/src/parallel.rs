//! Data-parallel training on several devices of one machine: each device takes its share of
//! the batch, runs forward and backward on its own replica of the model, and the gradients
//! are averaged (weighted by share) on the first device, where the optimizer steps.
//!
//! Built on Burn's own multi-device mechanisms, as `burn-train`'s multi-device learner is:
//! replicas are made from the first device's model before each step and `Module::fork`ed
//! onto their device, gradients come back with `GradientsParams::to_device`, and each replica
//! runs on its own long-lived thread. BatchNorm trains on each device's own batch statistics
//! (no synchronised BatchNorm, as in PyTorch's DDP); the running statistics become the mean
//! of the devices', summed in device order on the first device. Burn's own `RunningState`
//! would average the threads' values in hash-map order, which makes three or more devices
//! irreproducible in the last bits: each replica gets running statistics of its own
//! (`valid().train()` gives fresh ones), and [`DataParallel::forward_backward`] writes the
//! mean into the model.
//!
//! Burn 0.22.1 also has a collective `all_reduce`, but only CUDA (and the remote backend)
//! implement it: on wgpu and the CPU backends it panics. The gather to the first device
//! used here works on every device, including mixed ones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use xception_data::HostBatch;
use xception_model::Network;

use crate::by_path;
use crate::distributed::{Collective, CollectiveError};

/// Burn's random generators are one per backend and process: dropout masks drawn on two
/// devices of one backend at once would interleave. Seeding and the forward pass take
/// turns under this lock (backward passes still overlap), so a run stays reproducible.
static RANDOM: Mutex<()> = Mutex::new(());

/// One device's share of a step, as the trainer needs it.
pub struct ShareOutput {
    /// Mean loss over the share's images, detached, on the first device.
    pub loss: Tensor<1>,
    /// Images in the share.
    pub images: usize,
    /// The share's logits, detached, on the first device.
    pub logits: Tensor<2>,
    /// The share's labels, on the first device.
    pub labels: Tensor<1, Int>,
    /// Gradients of the share's mean loss, on the first device.
    pub grads: GradientsParams,
    /// The replica's BatchNorm running statistics after the share, by path, on the first
    /// device (empty with one device, whose model updates its own).
    pub running: Vec<(String, Tensor<1>)>,
}

/// A batch's shares put back together: the loss and gradients one device computing the whole
/// batch would give (BatchNorm aside, whose batch statistics are per device).
pub struct Combined {
    /// The mean loss over all the batch's images (each share's mean loss weighted by its
    /// fraction of the images), detached, on the first device.
    pub loss: Tensor<1>,
    /// Each share's gradients with the same weight, in device order, for
    /// [`crate::optim::GradientSum::add_shares`].
    pub grads: Vec<(GradientsParams, f64)>,
    /// Every image's logits, in batch order.
    pub logits: Tensor<2>,
    /// Every image's label, in batch order.
    pub labels: Tensor<1, Int>,
}

/// Combines the shares of one batch (in device order, as [`DataParallel::forward_backward`]
/// returns them); `None` when there are none. Shares of unequal size (a batch that lost an
/// undecodable image) are weighted by their images: `sum_i (n_i / n) * mean_loss_i` is the
/// batch's mean loss, and its gradient the same sum of the shares' gradients.
pub fn combine(shares: Vec<ShareOutput>) -> Option<Combined> {
    let images: usize = shares.iter().map(|share| share.images).sum();
    let mut loss: Option<Tensor<1>> = None;
    let (mut grads, mut logits, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for share in shares {
        let weight = share.images as f64 / images as f64;
        let weighted = if weight == 1.0 {
            share.loss
        } else {
            share.loss.mul_scalar(weight)
        };
        loss = Some(match loss {
            Some(loss) => loss + weighted,
            None => weighted,
        });
        grads.push((share.grads, weight));
        logits.push(share.logits);
        labels.push(share.labels);
    }
    Some(Combined {
        loss: loss?,
        grads,
        logits: Tensor::cat(logits, 0),
        labels: Tensor::cat(labels, 0),
    })
}

/// What one device is asked to compute.
struct Job {
    model: Network,
    batch: HostBatch,
    seed: u64,
    frozen: bool,
}

/// How the training loss is made from the network's outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossSpec {
    /// Label smoothing of the cross-entropy (`training.label_smoothing`), when not zero.
    pub label_smoothing: Option<f32>,
    /// Weight of the auxiliary classifier's cross-entropy, for a network that has one.
    pub aux_weight: Option<f64>,
}

impl LossSpec {
    /// The cross-entropy of `logits` (and of `aux`, weighted) against `labels`.
    pub fn loss(
        &self,
        logits: Tensor<2>,
        aux: Option<Tensor<2>>,
        labels: Tensor<1, Int>,
    ) -> Tensor<1> {
        let cross_entropy = CrossEntropyLossConfig::new()
            .with_smoothing(self.label_smoothing)
            .init(&logits.device());
        let loss = cross_entropy.forward(logits, labels.clone());
        match (aux, self.aux_weight) {
            (Some(aux), Some(weight)) => {
                loss + cross_entropy.forward(aux, labels).mul_scalar(weight)
            }
            _ => loss,
        }
    }
}

/// A device other than the first, with its thread.
struct Worker {
    jobs: Option<Sender<Job>>,
    results: Receiver<Result<ShareOutput, String>>,
    handle: Option<JoinHandle<()>>,
}

/// The devices of a data-parallel run; the first one holds the model and the optimizer.
pub struct DataParallel {
    devices: Vec<Device>,
    workers: Vec<Worker>,
    loss: LossSpec,
}

/// What every device needs besides its job.
#[derive(Clone)]
struct ShareContext {
    loss: LossSpec,
    main: Device,
}

impl DataParallel {
    /// Devices to train on (plain devices; autodiff is added). The first is the main one.
    ///
    /// # Panics
    /// When `devices` is empty.
    pub fn new(devices: &[Device], loss: LossSpec) -> Self {
        assert!(
            !devices.is_empty(),
            "DataParallel needs at least one device"
        );
        let devices: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
        let main = devices[0].clone();
        let workers = devices[1..]
            .iter()
            .enumerate()
            .map(|(index, device)| {
                let context = ShareContext {
                    loss,
                    main: main.clone(),
                };
                spawn_worker(index + 1, device.clone(), context)
            })
            .collect();
        Self {
            devices,
            workers,
            loss,
        }
    }

    /// How many devices share each batch.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Always false: there is at least the main device.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The main device (with autodiff), where the model and the optimizer live.
    pub fn main_device(&self) -> &Device {
        &self.devices[0]
    }

    /// Runs forward and backward for `batch`, split into one contiguous share per device.
    /// `seed_of(i)` seeds device `i`'s dropout. Returns the shares in device order (empty
    /// shares left out). With one device the work stays on the calling thread.
    pub fn forward_backward(
        &self,
        model: &Network,
        batch: HostBatch,
        frozen: bool,
        seed_of: impl Fn(usize) -> u64,
    ) -> Result<Vec<ShareOutput>, String> {
        let shares = batch.split(self.devices.len());
        let mut shares = shares.into_iter();
        let own = shares.next().unwrap_or_default();
        let mut sent = Vec::new();
        for (index, (worker, share)) in self.workers.iter().zip(shares).enumerate() {
            if share.is_empty() {
                continue;
            }
            let device = &self.devices[index + 1];
            let job = Job {
                model: replica(model).fork(device),
                batch: share,
                seed: seed_of(index + 1),
                frozen,
            };
            let jobs = worker.jobs.as_ref().ok_or("a device's thread has ended")?;
            jobs.send(job)
                .map_err(|_| format!("device {} stopped", index + 1))?;
            sent.push(index);
        }
        let mut outputs = Vec::with_capacity(self.devices.len());
        let alone = self.workers.is_empty();
        let main = if own.is_empty() {
            None
        } else {
            let device = &self.devices[0];
            // With one device the model trains in place; with several, device 0 trains a
            // replica too, so that only the combined statistics reach the model.
            let own_model = if alone { model.clone() } else { replica(model) };
            let context = ShareContext {
                loss: self.loss,
                main: device.clone(),
            };
            Some(compute_share(
                &own_model,
                own,
                seed_of(0),
                frozen,
                device,
                &context,
                alone,
            ))
        };
        // Every sent job is collected, even after a failure, so no worker is left mid-step.
        let mut others = Vec::with_capacity(sent.len());
        for index in sent {
            let result = self.workers[index]
                .results
                .recv()
                .map_err(|_| format!("device {} stopped", index + 1))
                .and_then(|r| r);
            others.push(result);
        }
        if let Some(main) = main {
            outputs.push(main);
        }
        for result in others {
            outputs.push(result?);
        }
        // Frozen layers ran in inference mode: their statistics did not move, and averaging
        // equal values in f32 could still move them by an ulp.
        if !alone && !frozen {
            set_running_means(model, &outputs);
        }
        Ok(outputs)
    }
}

/// A copy of `model` for one device's share: the same parameters (ids and values), and
/// BatchNorm running statistics of its own, so that its updates reach nothing else.
fn replica(model: &Network) -> Network {
    model.valid().train()
}

/// The BatchNorm running statistics (`running_mean`, `running_var`) of a module, by path.
/// Read from `valid()`, which folds the pending per-thread updates in.
fn running_stats(module: &Network) -> Vec<(String, Tensor<1>)> {
    by_path::floats(&module.valid())
        .into_iter()
        .filter(|(path, _)| {
            path.rsplit('.')
                .next()
                .is_some_and(|name| name.starts_with("running_"))
        })
        .collect()
}

/// Writes into `model`'s BatchNorm running statistics the mean of the shares', summed in
/// device order (the order of `outputs`), so the result is the same on every run.
fn set_running_means(model: &Network, outputs: &[ShareOutput]) {
    let shares = outputs.len();
    let mut sums: HashMap<String, Tensor<1>> = HashMap::new();
    for output in outputs {
        for (path, value) in &output.running {
            let sum = match sums.remove(path) {
                Some(sum) => sum + value.clone(),
                None => value.clone(),
            };
            sums.insert(path.clone(), sum);
        }
    }
    // Running statistics are shared state: mapping a clone writes them into `model` itself.
    let _ = by_path::map_floats(model.clone(), |path, value| match sums.remove(path) {
        Some(sum) => sum.div_scalar(shares as f64).to_device(&value.device()),
        None => value,
    });
}

/// Replaces `model`'s BatchNorm running statistics by their mean over the processes of
/// `world` (summed in rank order), after each loader batch: the statistics one process over
/// all their devices would hold, each device's batch statistics weighing alike. A process
/// whose share of the batch was empty (`trained` false: every file bad) is left out of the
/// mean, as an empty device is.
pub fn average_running_stats(
    model: &Network,
    world: &dyn Collective,
    trained: bool,
) -> Result<(), CollectiveError> {
    let stats: std::collections::BTreeMap<String, Tensor<1>> =
        running_stats(model).into_iter().collect();
    let Some(device) = stats.values().next().map(Tensor::device) else {
        return Ok(());
    };
    let sizes: Vec<(String, usize)> = stats
        .iter()
        .map(|(p, t)| (p.clone(), t.dims()[0]))
        .collect();
    let weight = f32::from(u8::from(trained));
    let mut values: Vec<f32> = Tensor::cat(stats.into_values().collect(), 0)
        .into_data()
        .iter::<f32>()
        .map(|v| v * weight)
        .chain([weight])
        .collect();
    world.sum(&mut values)?;
    let Some(contributors) = values.pop().filter(|n| *n > 0.0) else {
        return Ok(());
    };
    values.iter_mut().for_each(|v| *v /= contributors);
    let mut means = HashMap::new();
    let mut offset = 0;
    for (path, size) in sizes {
        let data = TensorData::new(values[offset..offset + size].to_vec(), [size]);
        means.insert(path, Tensor::<1>::from_data(data, &device));
        offset += size;
    }
    // Running statistics are shared state: mapping a clone writes them into `model` itself.
    let _ = by_path::map_floats(model.clone(), |path, value| match means.remove(path) {
        Some(mean) => mean.to_device(&value.device()),
        None => value,
    });
    Ok(())
}

impl Drop for DataParallel {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            worker.jobs.take();
            if let Some(handle) = worker.handle.take() {
                let _ = handle.join();
            }
        }
    }
}

fn spawn_worker(index: usize, device: Device, context: ShareContext) -> Worker {
    let (jobs, inbox) = channel::<Job>();
    let (outbox, results) = channel();
    let handle = std::thread::Builder::new()
        .name(format!("device-{index}"))
        .spawn(move || {
            for job in inbox {
                let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    compute_share(
                        &job.model, job.batch, job.seed, job.frozen, &device, &context, false,
                    )
                }))
                .map_err(|panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic".into());
                    format!("device {index} failed: {what}")
                });
                if outbox.send(output).is_err() {
                    break;
                }
            }
        })
        .ok();
    Worker {
        jobs: Some(jobs),
        results,
        handle,
    }
}

/// Forward and backward of one share on `device`; the results are moved to `main`.
fn compute_share(
    model: &Network,
    batch: HostBatch,
    seed: u64,
    frozen: bool,
    device: &Device,
    context: &ShareContext,
    alone: bool,
) -> ShareOutput {
    let main = &context.main;
    let images = batch.len();
    // The labels reach the main device from the host: devices' integer types differ.
    let host_labels = TensorData::new(batch.labels.clone(), [images]);
    let (inputs, labels) = batch.into_device(device);
    let forward = || {
        device.seed(seed);
        let (logits, aux) = if frozen {
            // Only the classifier learns, and the frozen layers run as at inference: BatchNorm
            // normalises with its running statistics and leaves them as they are, as Keras
            // runs a frozen base when fine-tuning. No gradient flows into the features (nor
            // into an auxiliary classifier, which reads them).
            let features = model.valid().forward_features(inputs.inner()).autodiff();
            (model.classify(features), None)
        } else {
            model.forward_with_aux(inputs)
        };
        let loss = context.loss.loss(logits.clone(), aux, labels.clone());
        (logits, loss)
    };
    let (logits, loss) = if alone {
        forward()
    } else {
        let _turn = RANDOM
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let output = forward();
        // The forward pass, dropout's draws included, ends before another device seeds: a
        // wait per device and step that only multi-device runs pay.
        let _ = device.sync();
        output
    };
    let value = loss.clone().detach();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let (grads, logits, labels, value) = if device == main {
        (grads, logits.detach(), labels, value)
    } else {
        (
            grads.to_device(main, model),
            logits.detach().to_device(main),
            Tensor::from_data(host_labels, main),
            value.to_device(main),
        )
    };
    let running = if alone {
        Vec::new()
    } else {
        let home = main.clone().without_autodiff();
        running_stats(model)
            .into_iter()
            .map(|(path, value)| (path, value.to_device(&home)))
            .collect()
    };
    ShareOutput {
        loss: value,
        images,
        logits,
        labels,
        grads,
        running,
    }
}

#[cfg(test)]
mod loss_tests {
    use super::*;

    fn logits(rows: &[[f32; 3]]) -> Tensor<2> {
        let values: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(values, [rows.len(), 3]), &Device::flex())
    }

    fn labels(values: &[i64]) -> Tensor<1, Int> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &Device::flex(),
        )
    }

    fn value(loss: Tensor<1>) -> f64 {
        f64::from(loss.into_scalar::<f32>())
    }

    /// -sum_k q_k log p_k with q = (1 - a) one_hot + a / K, by hand.
    fn smoothed(row: [f32; 3], label: usize, alpha: f64) -> f64 {
        let row = row.map(f64::from);
        let norm = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        (0..3)
            .map(|k| {
                let q = alpha / 3.0 + if k == label { 1.0 - alpha } else { 0.0 };
                -q * (row[k] - norm)
            })
            .sum()
    }

    #[test]
    fn label_smoothing_spreads_alpha_over_the_classes() {
        let rows = [[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]];
        let spec = LossSpec {
            label_smoothing: Some(0.1),
            aux_weight: None,
        };
        let loss = value(spec.loss(logits(&rows), None, labels(&[0, 2])));
        let expected = (smoothed(rows[0], 0, 0.1) + smoothed(rows[1], 2, 0.1)) / 2.0;
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
        let plain = value(LossSpec::default().loss(logits(&rows), None, labels(&[0, 2])));
        let expected = (smoothed(rows[0], 0, 0.0) + smoothed(rows[1], 2, 0.0)) / 2.0;
        assert!((plain - expected).abs() < 1e-5, "{plain} vs {expected}");
    }

    #[test]
    fn the_auxiliary_loss_is_added_with_its_weight_only_when_configured() {
        let main = [[2.0, -1.0, 0.5]];
        let aux = [[0.0, 1.0, 0.0]];
        let spec = LossSpec {
            label_smoothing: None,
            aux_weight: Some(0.4),
        };
        let loss = value(spec.loss(logits(&main), Some(logits(&aux)), labels(&[1])));
        let expected = smoothed(main[0], 1, 0.0) + 0.4 * smoothed(aux[0], 1, 0.0);
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
        let without = LossSpec::default().loss(logits(&main), Some(logits(&aux)), labels(&[1]));
        assert!((value(without) - smoothed(main[0], 1, 0.0)).abs() < 1e-5);
    }
}

//! The data of a run: its datasets (generating the synthetic one when asked), its loaders,
//! and evaluation over a loader.

use std::sync::Arc;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Tensor};
use xception_data::{
    Dataset, DatasetOptions, Loader, LoaderConfig, Shard, Split, Transform, rng, synth,
};
use xception_model::Network;

use super::{TrainError, io_error};
use crate::config::TrainConfig;
use crate::distributed::{self, Collective};
use crate::metrics::{ClassificationMeter, batch_tally};
use crate::report::{Reporter, Scores};

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
        // never mistaken for a dataset; named by process, so that processes sharing a disk
        // never write into each other's (the first rename wins, the data being the same).
        let partial = root.with_extension(format!("partial-{}", std::process::id()));
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
        if let Err(cause) = std::fs::rename(&partial, root) {
            let _ = std::fs::remove_dir_all(&partial);
            if !root.is_dir() {
                return Err(io_error(root)(cause));
            }
        }
        reporter.note(&format!("wrote {files} images to {}", root.display()));
    }
    let options = DatasetOptions {
        layout: config.data.layout,
        val_fraction: config.data.val_fraction,
        split_seed: config.data.split_seed,
    };
    Ok(xception_data::open(root, split, &options)?)
}

/// Evaluates `model` (inference mode) over every batch of `loader`. The sums stay on the
/// device until the last batch.
pub fn evaluate(
    model: &Network,
    loader: &Loader,
    device: &Device,
    reporter: &mut dyn Reporter,
) -> Scores {
    scores(&evaluate_counts(model, loader, device, reporter))
}

/// [`evaluate`]'s counts, before they become percentages.
pub(super) fn evaluate_counts(
    model: &Network,
    loader: &Loader,
    device: &Device,
    reporter: &mut dyn Reporter,
) -> ClassificationMeter {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut sum: Option<Tensor<1>> = None;
    let mut count = 0u64;
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
        count += batch.len() as u64;
        let (images, labels) = batch.into_device(device);
        let logits = model.forward(images);
        let loss = loss_fn.forward(logits.clone(), labels.clone());
        let tally = batch_tally(loss, logits, labels);
        sum = Some(match sum {
            Some(sum) => sum + tally,
            None => tally,
        });
        reporter.evaluated_batch();
    }
    let mut meter = ClassificationMeter::default();
    if let Some(sum) = sum {
        let values: Vec<f32> = sum.into_data().iter::<f32>().collect();
        meter.add_tally(count, &values);
    }
    meter
}

/// The scores of [`evaluate_counts`]' counts.
pub(super) fn scores(meter: &ClassificationMeter) -> Scores {
    Scores {
        loss: meter.loss(),
        top1: meter.top1_percent(),
        top5: meter.top5_percent(),
        images: meter.images,
    }
}

/// The data of a run: its two loaders and what the run reports and saves about them.
pub(super) struct RunData {
    pub train_loader: Loader,
    pub val_loader: Loader,
    /// The training set's classes, as the checkpoints' `classes.json` holds them.
    pub classes_json: String,
    pub train_images: usize,
    pub val_images: usize,
}

/// Opens both splits of the configured data (checking the class count against the model)
/// and their loaders for `devices` devices per process, each process of `world` taking its
/// shard of every batch. Rank 0 opens first (generating a synthetic dataset when asked), the
/// others after it; then every rank checks that all run the same config on the same data.
pub(super) fn open_data(
    config: &TrainConfig,
    devices: usize,
    world: &dyn Collective,
    reporter: &mut dyn Reporter,
) -> Result<RunData, TrainError> {
    let open_both = |reporter: &mut dyn Reporter| -> Result<_, TrainError> {
        let train_set = open_split(config, Split::Train, reporter)?;
        let val_set = open_split(config, Split::Val, reporter)?;
        Ok((train_set, val_set))
    };
    let (train_set, val_set) = if world.rank() == 0 {
        let sets = open_both(reporter)?;
        distributed::barrier(world)?;
        sets
    } else {
        distributed::barrier(world)?;
        open_both(reporter)?
    };
    if train_set.classes.len() != config.model.num_classes() {
        return Err(TrainError::ClassCount {
            expected: config.model.num_classes(),
            found: train_set.classes.len(),
            root: train_set.root.clone(),
        });
    }
    let (train_images, val_images) = (train_set.len(), val_set.len());
    let classes_json = serde_json::to_string_pretty(&train_set.classes).unwrap_or_default();
    if world.ranks() > 1 {
        // Fields that may differ between machines (paths, workers, which GPU) are left out;
        // the steps at which the loop reads its metrics and checkpoints are not: a
        // non-finite step is found there, and every rank must stop at the same one.
        let mut fingerprint: Vec<(String, String)> = config
            .flatten()
            .into_iter()
            .filter(|(key, _)| {
                !super::start::result_neutral(key)
                    || key == "logging.every_steps"
                    || key == "checkpoints.every_steps"
            })
            .collect();
        // The backend, not the GPU's index: different kernels round differently.
        let names = config.device_names();
        let backends: Vec<&str> = names
            .iter()
            .map(|name| name.split(':').next().unwrap_or(name))
            .map(|backend| match backend {
                "flex" | "ndarray" => backend,
                _ => "wgpu",
            })
            .collect();
        fingerprint.extend([
            ("backends".to_string(), backends.join(",")),
            ("devices per process".to_string(), devices.to_string()),
            ("training images".to_string(), train_images.to_string()),
            ("validation images".to_string(), val_images.to_string()),
            (
                "a class list hashed to".to_string(),
                format!("{:016x}", rng::hash_bytes(0, classes_json.as_bytes())),
            ),
        ]);
        distributed::check_same(world, &fingerprint)?.map_err(TrainError::RanksDiffer)?;
    }
    let shard = Shard {
        index: world.rank(),
        count: world.ranks(),
    };
    let (train_loader, val_loader) =
        loaders(config, devices * world.ranks(), train_set, val_set, shard)?;
    Ok(RunData {
        train_loader,
        val_loader,
        classes_json,
        train_images,
        val_images,
    })
}

/// The loaders of a config for `devices` devices in all: training (shuffled, augmented,
/// last partial batch dropped) and validation (in order, central crop, every image; one
/// device's batch per process), each yielding `shard` of every batch.
pub fn loaders(
    config: &TrainConfig,
    devices: usize,
    train: Dataset,
    val: Dataset,
    shard: Shard,
) -> Result<(Loader, Loader), TrainError> {
    let size = config.model.input_size() as u32;
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
        batch_size: config.data.batch_size * shard.count,
        ..base.clone()
    };
    Ok((
        Loader::new(Arc::new(train), base)?.sharded(shard),
        Loader::new(Arc::new(val), val_config)?.sharded(shard),
    ))
}

//! Where a run starts: the checkpoint it continues from (checked against the config), the
//! checkpoints of an abandoned continuation moved aside, and the model, EMA and optimizer
//! restored from the checkpoint or made fresh from the seed (or `training.init_from`).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use xception_model::Network;
use xception_model::interop;

use super::{ResumeFrom, RunOptions, TrainError, io_error};
use crate::by_path;
use crate::checkpoint::{self, Checkpoint, CheckpointError, Recovered, TrainState};
use crate::config::TrainConfig;
use crate::distributed::{Collective, Packet};
use crate::ema::Ema;
use crate::metrics::ClassificationMeter;
use crate::optim::Optimizer;
use crate::report::Reporter;
use crate::weights;

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

/// Whether the config field `key` (or a `key: old -> new` line) never changes results.
pub(super) fn result_neutral(key: &str) -> bool {
    RESULT_NEUTRAL.iter().any(|prefix| key.starts_with(prefix))
}

fn recipe_changes(old: &TrainConfig, new: &TrainConfig) -> Vec<String> {
    let mut changes: Vec<String> = old
        .changed_fields(new)
        .into_iter()
        .filter(|line| !result_neutral(line))
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

/// Where and on what a run starts.
pub(super) struct StartOn<'a> {
    pub config: &'a TrainConfig,
    pub options: &'a RunOptions,
    pub world: &'a dyn Collective,
    pub checkpoints: &'a Path,
    /// The main training device (with autodiff), for the model.
    pub train_device: &'a Device,
    /// The same device without autodiff, for the EMA and the optimizer state.
    pub device: &'a Device,
    /// The learning rate of a fresh run's first step.
    pub first_lr: f64,
}

/// Where the run starts, on every rank, with the checkpoint it resumes from (on rank 0).
/// Rank 0 restores it or starts fresh ([`begin`]) and sends the result, or its refusal, to
/// the others, which start from a [`blank`] of the config's shape; then every rank compares
/// a checksum of what it holds with rank 0's.
pub(super) fn start(
    on: &StartOn<'_>,
    reporter: &mut dyn Reporter,
) -> Result<(Option<Checkpoint>, Restored), TrainError> {
    let world = on.world;
    if world.ranks() == 1 {
        return begin(on, reporter);
    }
    let when = "after the start state's broadcast";
    if world.rank() == 0 {
        let begun = begin(on, reporter);
        match &begun {
            Ok((_, restored)) => {
                let packet = start_packet(restored);
                send_start(world, Ok(&packet))?;
                check_same_state(world, &packet, when)?;
            }
            Err(error) => send_start(world, Err(error))?,
        }
        // The other ranks stop with this message too: one report is enough.
        return begun.map_err(|error| TrainError::Refused(error.to_string()));
    }
    let mut restored = blank(on.config, on.train_device)?;
    receive_start(world, on.config, &mut restored, on.device)?;
    check_same_state(world, &start_packet(&restored), when)?;
    Ok((None, restored))
}

/// Rank 0's start: the run directory, recovery after an interrupted checkpoint write, the
/// checkpoint to resume from (checked against the config), and the model, EMA and optimizer
/// restored from it or made fresh.
fn begin(
    on: &StartOn<'_>,
    reporter: &mut dyn Reporter,
) -> Result<(Option<Checkpoint>, Restored), TrainError> {
    let (config, run_dir) = (on.config, &on.options.run_dir);
    std::fs::create_dir_all(run_dir).map_err(io_error(run_dir))?;
    recover_checkpoints(on.checkpoints, reporter)?;
    let ranks = on.world.ranks();
    let resume = resume_point(config, on.options, ranks, on.checkpoints, reporter)?;
    let restored = match &resume {
        Some(resume) => restore(config, resume, on.train_device, on.device, reporter)?,
        None => fresh(config, on.train_device, on.device, on.first_lr, reporter)?,
    };
    if let Some(resume) = &resume {
        set_aside_newer(on.checkpoints, resume, reporter)?;
    }
    Ok((resume, restored))
}

/// Cleans up after a checkpoint write that a crash interrupted ([`checkpoint::recover`]),
/// saying what it did.
fn recover_checkpoints(checkpoints: &Path, reporter: &mut dyn Reporter) -> Result<(), TrainError> {
    for recovered in checkpoint::recover(checkpoints)? {
        reporter.note(&match recovered {
            Recovered::Removed(path) => format!(
                "removed {}, left by an interrupted checkpoint write",
                path.display()
            ),
            Recovered::Restored(path) => format!(
                "restored the complete checkpoint {} that an interrupted write had moved aside",
                path.display()
            ),
        });
    }
    Ok(())
}

/// The checkpoint `options` asks to continue from, if any, after checking that `config`
/// computes what the checkpoint's run computed (unless `--force`).
fn resume_point(
    config: &TrainConfig,
    options: &RunOptions,
    ranks: usize,
    checkpoints: &Path,
    reporter: &mut dyn Reporter,
) -> Result<Option<Checkpoint>, TrainError> {
    let resume_dir = match &options.resume {
        None => {
            if checkpoint::latest(checkpoints).is_ok() {
                return Err(TrainError::RunDirInUse(options.run_dir.clone()));
            }
            None
        }
        Some(ResumeFrom::Dir(dir)) => Some(dir.clone()),
        Some(ResumeFrom::Auto) => match checkpoint::latest(checkpoints) {
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
    let Some(resume) = resume_dir.as_deref().map(Checkpoint::open).transpose()? else {
        return Ok(None);
    };
    let saved = TrainConfig::parse(&resume.dir.join("config.toml"), &resume.config_toml, &[])?;
    let mut changes = recipe_changes(&saved, config);
    if resume.state.ranks != ranks as u64 {
        changes.push(format!(
            "number of processes (state.json `ranks`, mpirun -np): {} -> {ranks} (the batch per step changes)",
            resume.state.ranks
        ));
    }
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
    Ok(Some(resume))
}

/// Moves the checkpoints written after `resume` (an abandoned continuation) aside, never
/// deleting them, so that `--resume auto` cannot pick them up later.
fn set_aside_newer(
    checkpoints: &Path,
    resume: &Checkpoint,
    reporter: &mut dyn Reporter,
) -> Result<(), TrainError> {
    let newer: Vec<PathBuf> = checkpoint::list(checkpoints)?
        .into_iter()
        .filter(|(step, path)| *step > resume.state.step && *path != resume.dir)
        .map(|(_, path)| path)
        .collect();
    if newer.is_empty() {
        return Ok(());
    }
    let aside = checkpoints.join(format!("superseded-at-step-{}", resume.state.step));
    std::fs::create_dir_all(&aside).map_err(io_error(&aside))?;
    for path in newer {
        if let Some(name) = path.file_name() {
            std::fs::rename(&path, aside.join(name)).map_err(io_error(&path))?;
        }
    }
    reporter.note(&format!(
        "checkpoints newer than the one resumed from were moved to {}",
        aside.display()
    ));
    Ok(())
}

/// What a run trains and where it stands.
pub(super) struct Restored {
    pub model: Network,
    pub ema: Option<Ema<Network>>,
    pub optimizer: Optimizer,
    pub state: TrainState,
}

/// The model on `train_device` (with autodiff), EMA and optimizer state of `resume`; the
/// EMA and optimizer state live on `device`.
fn restore(
    config: &TrainConfig,
    resume: &Checkpoint,
    train_device: &Device,
    device: &Device,
    reporter: &mut dyn Reporter,
) -> Result<Restored, TrainError> {
    let model = Network::new(&config.model, train_device)?;
    let model = checkpoint::load_module(model, &resume.model_file())?;
    let mut optimizer = Optimizer::new(config.optimizer.clone());
    optimizer
        .load_state(&model, resume.optimizer_state()?, device)
        .map_err(|cause| TrainError::OptimizerState {
            file: resume.optimizer_file(),
            cause,
        })?;
    let ema = match config.training.ema_decay {
        None => None,
        Some(decay) => {
            let averaged = if resume.ema_file().is_file() {
                checkpoint::load_module(Network::new(&config.model, device)?, &resume.ema_file())?
            } else {
                reporter.note(
                    "the checkpoint has no EMA weights: the average restarts from the current weights",
                );
                model.valid()
            };
            Some(Ema::resume(
                averaged,
                decay,
                config.training.ema_warmup,
                resume.state.ema_updates,
            ))
        }
    };
    let mut state = resume.state.clone();
    state.config_hash = config.hash();
    Ok(Restored {
        model,
        ema,
        optimizer,
        state,
    })
}

/// A fresh model on `train_device` from the seed (or `training.init_from`), its EMA, an
/// empty optimizer, and the state before the first step (`first_lr` its learning rate).
fn fresh(
    config: &TrainConfig,
    train_device: &Device,
    device: &Device,
    first_lr: f64,
    reporter: &mut dyn Reporter,
) -> Result<Restored, TrainError> {
    let mut model = Network::new(&config.model, train_device)?;
    if let Some(init) = &config.training.init_from {
        model = initialise_from(model, config, init, device, reporter)?;
    }
    Ok(starting(config, model, first_lr))
}

/// `model` before the first step: its EMA, an empty optimizer, the first position.
fn starting(config: &TrainConfig, model: Network, first_lr: f64) -> Restored {
    let ema = config
        .training
        .ema_decay
        .map(|decay| Ema::new(&model, decay, config.training.ema_warmup));
    Restored {
        model,
        ema,
        optimizer: Optimizer::new(config.optimizer.clone()),
        state: first_state(config, first_lr),
    }
}

/// The state before the first step.
fn first_state(config: &TrainConfig, first_lr: f64) -> TrainState {
    TrainState {
        format: checkpoint::FORMAT,
        epoch: 0,
        step: 0,
        batch_in_epoch: 0,
        samples_seen: 0,
        lr: first_lr,
        ema_updates: 0,
        seed: config.training.seed,
        config_hash: config.hash(),
        best: None,
        reason: String::new(),
        running: ClassificationMeter::default(),
        ranks: 1,
        batch_images: 0,
    }
}

/// Keeps a resumed run's place in its epoch when the images per batch changed (a resume
/// with `--force` on another number of devices or processes, or another `data.batch_size`):
/// it continues from the first batch that starts at or before the sample where the
/// checkpoint stopped, so no image of the epoch is skipped (up to a batch is seen again).
pub(super) fn keep_position(
    state: &mut TrainState,
    batch_images: u64,
    reporter: &mut dyn Reporter,
) {
    let before = state.batch_images;
    if before != 0 && before != batch_images && state.batch_in_epoch > 0 {
        let sample = state.batch_in_epoch * before;
        state.batch_in_epoch = sample / batch_images.max(1);
        reporter.note(&format!(
            "{batch_images} images per batch instead of {before}: continuing the epoch from sample {} (batch {}), where the checkpoint stopped at sample {sample}",
            state.batch_in_epoch * batch_images,
            state.batch_in_epoch
        ));
    }
    state.batch_images = batch_images;
}

/// A model, EMA and optimizer of the config's shape, before rank 0's values arrive
/// ([`receive_start`]): no file is read.
fn blank(config: &TrainConfig, train_device: &Device) -> Result<Restored, TrainError> {
    let model = Network::new(&config.model, train_device)?;
    Ok(starting(config, model, 0.0))
}

/// What a rank holds at the start, as a packet: position, weights, EMA, optimizer state.
fn start_packet(restored: &Restored) -> Packet {
    state_packet(
        &restored.model,
        restored.ema.as_ref(),
        &restored.optimizer,
        &restored.state,
    )
}

/// A run's whole state as a packet: position, weights and BatchNorm statistics, EMA,
/// optimizer state.
pub(super) fn state_packet(
    model: &Network,
    ema: Option<&Ema<Network>>,
    optimizer: &Optimizer,
    state: &TrainState,
) -> Packet {
    let mut packet = Packet {
        document: serde_json::to_value(state).unwrap_or_default(),
        ..Default::default()
    };
    packet.add("model", by_path::floats(model));
    if let Some(ema) = ema {
        packet.add("ema", by_path::floats(ema.model()));
    }
    packet.add("optimizer", optimizer.state_tensors());
    packet
}

/// Rank 0 sends where the run starts (restored, fresh or `init_from`), or why it cannot
/// start, to every other rank, so that no other rank needs the run directory's files.
fn send_start(
    world: &dyn Collective,
    begun: Result<&Packet, &TrainError>,
) -> Result<(), TrainError> {
    let mut bytes = match begun {
        Ok(packet) => {
            let mut bytes = vec![1];
            bytes.extend(packet.encode());
            bytes
        }
        Err(error) => {
            let mut bytes = vec![0];
            bytes.extend(error.to_string().into_bytes());
            bytes
        }
    };
    world.broadcast(&mut bytes)?;
    Ok(())
}

/// The other ranks' side of [`send_start`]: `restored` (from [`blank`]) takes rank 0's
/// values; rank 0's refusal becomes this rank's error, with the same message.
fn receive_start(
    world: &dyn Collective,
    config: &TrainConfig,
    restored: &mut Restored,
    device: &Device,
) -> Result<(), TrainError> {
    let mut bytes = Vec::new();
    world.broadcast(&mut bytes)?;
    let corrupt = |reason: String| {
        TrainError::StartState(format!(
            "the start state from {}: {reason}",
            world.describe(0)
        ))
    };
    match bytes.split_first() {
        Some((1, packet)) => {
            let packet = Packet::decode(packet).map_err(corrupt)?;
            restored.state = serde_json::from_value(packet.document.clone())
                .map_err(|e| corrupt(e.to_string()))?;
            let model = restored.model.clone();
            restored.model = by_path::map_floats(model, replace_from(&packet, "model"));
            if let (Some(ema), Some(decay)) = (&restored.ema, config.training.ema_decay) {
                let averaged =
                    by_path::map_floats(ema.model().clone(), replace_from(&packet, "ema"));
                restored.ema = Some(Ema::resume(
                    averaged,
                    decay,
                    config.training.ema_warmup,
                    restored.state.ema_updates,
                ));
            }
            restored
                .optimizer
                .load_state(&restored.model, packet.data("optimizer"), device)
                .map_err(|e| corrupt(e.to_string()))?;
            Ok(())
        }
        Some((_, message)) => Err(TrainError::Refused(
            String::from_utf8_lossy(message).into_owned(),
        )),
        None => Err(corrupt("nothing arrived".into())),
    }
}

/// A tensor's value from `group` of `packet` when it holds the path (a missing one shows in
/// [`check_start`]'s checksum).
fn replace_from<'p>(
    packet: &'p Packet,
    group: &str,
) -> impl FnMut(&str, burn::tensor::Tensor<1>) -> burn::tensor::Tensor<1> + 'p {
    let values = packet.groups.get(group);
    move |path, value| match values.and_then(|values| values.get(path)) {
        Some(new) if new.len() == value.dims()[0] => burn::tensor::Tensor::from_data(
            burn::tensor::TensorData::new(new.clone(), [new.len()]),
            &value.device(),
        ),
        _ => value,
    }
}

/// Every rank compares the checksum of `packet` (its whole state) with rank 0's; `when` says
/// where the run stands, for the message.
pub(super) fn check_same_state(
    world: &dyn Collective,
    packet: &Packet,
    when: &str,
) -> Result<(), TrainError> {
    if world.ranks() == 1 {
        return Ok(());
    }
    let all = world.gather(&packet.checksum().to_le_bytes())?;
    for (rank, theirs) in all.iter().enumerate() {
        if theirs.as_slice() != all[0].as_slice() {
            return Err(TrainError::RanksDiffer(format!(
                "{when}, {} holds a state (weights, EMA, optimizer, position) with checksum {:02x?} and {} one with {:02x?}: the processes diverged",
                world.describe(rank),
                theirs,
                world.describe(0),
                all[0]
            )));
        }
    }
    Ok(())
}

/// Starts `model` from the weights at `init` (`training.init_from`).
fn initialise_from(
    model: Network,
    config: &TrainConfig,
    init: &Path,
    device: &Device,
    reporter: &mut dyn Reporter,
) -> Result<Network, TrainError> {
    let init_error = |reason: String| TrainError::InitFrom {
        path: init.to_path_buf(),
        reason,
    };
    let loaded = weights::load(init, false, device).map_err(|e| init_error(e.to_string()))?;
    let (from, to) = (&loaded.config, &config.model);
    if from.shape_fields() != to.shape_fields() {
        return Err(init_error(format!(
            "its architecture ({}) differs from [model]'s ({})",
            from.shape_fields(),
            to.shape_fields()
        )));
    }
    for note in &loaded.notes {
        reporter.note(note);
    }
    let mut tensors = interop::tensors_by_path(&loaded.model);
    // An auxiliary classifier only one side has: the target's starts fresh, or the source's
    // is left out.
    if let Some(aux) = to.aux_path()
        && from.has_aux() != to.has_aux()
    {
        tensors.retain(|path, _| !path.starts_with(aux));
        reporter.note(if to.has_aux() {
            "the weights have no auxiliary classifier: model.aux_logits starts it fresh"
        } else {
            "the weights' auxiliary classifier is left out (model.aux_logits is false)"
        });
    }
    if from.num_classes() != to.num_classes() {
        let classifiers = to.classifier_paths();
        tensors.retain(|path, _| !classifiers.iter().any(|c| path.starts_with(c)));
        reporter.note(&format!(
            "initialised from {}; the classifier is re-initialised ({} -> {} classes)",
            loaded.source,
            from.num_classes(),
            to.num_classes()
        ));
    } else {
        reporter.note(&format!("initialised from {}", loaded.source));
    }
    interop::assign(model, tensors).map_err(|e| init_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Silent;
    use crate::distributed::CollectiveError;

    /// Two ranks, the other of which holds `theirs` as its checksum.
    struct OtherHolds(u64);

    impl Collective for OtherHolds {
        fn rank(&self) -> usize {
            0
        }
        fn ranks(&self) -> usize {
            2
        }
        fn describe(&self, rank: usize) -> String {
            format!("rank {rank} on here")
        }
        fn sum(&self, _values: &mut [f32]) -> Result<(), CollectiveError> {
            Ok(())
        }
        fn broadcast(&self, _bytes: &mut Vec<u8>) -> Result<(), CollectiveError> {
            Ok(())
        }
        fn gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
            Ok(vec![bytes.to_vec(), self.0.to_le_bytes().to_vec()])
        }
    }

    #[test]
    fn a_rank_holding_another_state_is_named() {
        let packet = Packet {
            document: serde_json::json!({"step": 3}),
            ..Default::default()
        };
        check_same_state(&OtherHolds(packet.checksum()), &packet, "at step 3").expect("same");
        let error = check_same_state(&OtherHolds(7), &packet, "at step 3")
            .expect_err("diverged")
            .to_string();
        assert!(
            error.starts_with("at step 3, rank 1 on here holds") && error.contains("diverged"),
            "{error}"
        );
    }

    #[test]
    fn another_batch_size_continues_from_the_same_place_in_the_epoch() {
        let config = TrainConfig::parse(Path::new("test.toml"), "", &[]).expect("defaults");
        let mut state = first_state(&config, 0.1);
        state.batch_in_epoch = 3;
        state.batch_images = 8;
        keep_position(&mut state, 12, &mut Silent);
        assert_eq!((state.batch_in_epoch, state.batch_images), (2, 12));
        keep_position(&mut state, 5, &mut Silent);
        assert_eq!(
            (state.batch_in_epoch, state.batch_images),
            (4, 5),
            "sample 24 is in batch 4"
        );
        // A checkpoint that predates the field keeps its position as it is.
        state.batch_images = 0;
        keep_position(&mut state, 7, &mut Silent);
        assert_eq!((state.batch_in_epoch, state.batch_images), (4, 7));
    }
}

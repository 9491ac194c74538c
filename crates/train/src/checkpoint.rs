//! Checkpoints: one directory per save, `<run>/checkpoints/step-00001234/`, holding
//! `model.safetensors`, `ema.safetensors` (when averaging), `optimizer.safetensors`,
//! `config.toml`, `classes.json` and `state.json`.
//!
//! A checkpoint is written into `.tmp-step-…`, every file synced, then renamed into place and
//! the parent synced: a directory named `step-…` is always complete, whatever instant a crash
//! hits. Leftover `.tmp-*` directories are partial by construction and removed on the next run.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::metrics::ClassificationMeter;

/// Version of the checkpoint layout, bumped when files or fields change meaning.
pub const FORMAT: u32 = 1;

const STATE_FILE: &str = "state.json";
const MODEL_FILE: &str = "model.safetensors";
const EMA_FILE: &str = "ema.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const CONFIG_FILE: &str = "config.toml";
const CLASSES_FILE: &str = "classes.json";

/// Where training stands: everything besides the tensors that resuming needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// [`FORMAT`] of the writer.
    pub format: u32,
    /// The epoch in progress (0-based); equal to the epoch count when training finished.
    pub epoch: u64,
    /// Optimizer steps taken.
    pub step: u64,
    /// Loader batches of `epoch` already consumed (the position in the epoch).
    pub batch_in_epoch: u64,
    /// Training samples consumed, which drives the learning-rate schedule.
    pub samples_seen: u64,
    /// The learning rate of the last step taken.
    pub lr: f64,
    /// Updates folded into the EMA weights.
    pub ema_updates: u64,
    /// The run's seed. Every random draw is derived from it and a position: the epoch's order
    /// from (seed, epoch), a sample's augmentation from (seed, epoch, index), dropout from
    /// (seed, step, batch), so the position above is the whole random state.
    pub seed: u64,
    /// Hash of the resolved config ([`crate::TrainConfig::hash`]).
    pub config_hash: String,
    /// Best validation top-1 so far, with the checkpoint that holds it.
    pub best: Option<Best>,
    /// Why this checkpoint was written: `steps`, `epoch`, `interrupt`, `final`.
    pub reason: String,
    /// The epoch's running training loss and accuracy up to this position.
    pub running: ClassificationMeter,
    /// Processes that trained together (`mpirun -np`): the global batch depends on it.
    #[serde(default = "one")]
    pub ranks: u64,
    /// Images per loader batch over all devices and processes, which turns `batch_in_epoch`
    /// into a position in the epoch's order (0 in checkpoints that predate it).
    #[serde(default)]
    pub batch_images: u64,
}

fn one() -> u64 {
    1
}

/// The best validation result and where it is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// Top-1 in percent (of the EMA weights when averaging, else of the raw weights).
    pub top1: f64,
    /// The epoch after which it was measured (1-based count of epochs done).
    pub epochs_done: u64,
    /// The checkpoint directory's name.
    pub checkpoint: String,
}

/// A checkpoint that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file or directory operation failed.
    #[error("checkpoint {path}: {cause}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why (in the message, so not also a `source()`).
        cause: std::io::Error,
    },
    /// A file exists but its content is not what was expected.
    #[error("checkpoint file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No complete checkpoint where one was asked for.
    #[error("no complete checkpoint in {0} (a checkpoint is a step-* directory with state.json)")]
    NotFound(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |cause| CheckpointError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The tensors and texts of one checkpoint, ready to write.
pub struct CheckpointContents<'a, M> {
    /// The trained weights.
    pub model: &'a M,
    /// The averaged weights, when averaging.
    pub ema: Option<&'a M>,
    /// The optimizer's named state.
    pub optimizer: Vec<(String, Tensor<1>)>,
    /// The resolved config as TOML.
    pub config_toml: String,
    /// The class list as JSON (`classes.json`), for inference and export.
    pub classes_json: String,
    /// The position and bookkeeping.
    pub state: TrainState,
}

/// The name of the checkpoint taken after `step` optimizer steps.
pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:09}")
}

/// Writes a checkpoint into `root/<name>` atomically and returns its path. An existing
/// checkpoint of the same name is replaced only once the new one is complete.
pub fn write<M: Module + ModuleSnapshot>(
    root: &Path,
    name: &str,
    contents: CheckpointContents<'_, M>,
) -> Result<PathBuf, CheckpointError> {
    fs::create_dir_all(root).map_err(io(root))?;
    let temp = root.join(format!(".tmp-{name}"));
    if temp.exists() {
        fs::remove_dir_all(&temp).map_err(io(&temp))?;
    }
    fs::create_dir(&temp).map_err(io(&temp))?;

    save_module(contents.model, &temp.join(MODEL_FILE))?;
    if let Some(ema) = contents.ema {
        save_module(ema, &temp.join(EMA_FILE))?;
    }
    write_tensors(&temp.join(OPTIMIZER_FILE), &contents.optimizer)?;
    write_synced(&temp.join(CONFIG_FILE), contents.config_toml.as_bytes())?;
    write_synced(&temp.join(CLASSES_FILE), contents.classes_json.as_bytes())?;
    let state = serde_json::to_vec_pretty(&contents.state)
        .map_err(|e| corrupt(&temp.join(STATE_FILE), e))?;
    write_synced(&temp.join(STATE_FILE), &state)?;
    sync_dir(&temp)?;

    let target = root.join(name);
    if target.exists() {
        let old = root.join(format!(".old-{name}"));
        if old.exists() {
            fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        fs::rename(&target, &old).map_err(io(&target))?;
        fs::rename(&temp, &target).map_err(io(&target))?;
        fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        fs::rename(&temp, &target).map_err(io(&target))?;
    }
    sync_dir(root)?;
    Ok(target)
}

fn save_module<M: ModuleSnapshot>(module: &M, path: &Path) -> Result<(), CheckpointError> {
    // One metadata entry: the safetensors header lists a map's entries in its hash order, which
    // changes from process to process, and identical state must give identical files.
    // The architecture enum adds no path component (checkpoints of either model keep their
    // own paths, as `xception_model::path` has them).
    let mut store = SafetensorsStore::from_file(path)
        .skip_enum_variants(true)
        .clear_metadata()
        .metadata("format", "xception-burn");
    module
        .save_into(&mut store)
        .map_err(|e| corrupt(path, format!("cannot write: {e}")))?;
    sync_file(path)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    fs::write(path, bytes).map_err(io(path))?;
    sync_file(path)
}

fn sync_file(path: &Path) -> Result<(), CheckpointError> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(io(path))
}

fn sync_dir(path: &Path) -> Result<(), CheckpointError> {
    // Directories can be opened and synced on Unix; elsewhere the rename is what we have.
    if cfg!(unix) {
        File::open(path)
            .and_then(|dir| dir.sync_all())
            .map_err(io(path))?;
    }
    Ok(())
}

/// Writes flat f32 tensors under their names as a safetensors file.
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor<1>)]) -> Result<(), CheckpointError> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let data = tensor.clone().into_data().convert::<f32>();
        let values = data
            .try_to_vec::<f32>()
            .map_err(|e| corrupt(path, format!("tensor {name}: {e:?}")))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((name.clone(), values.len(), bytes));
    }
    let mut views = Vec::with_capacity(buffers.len());
    for (name, len, bytes) in &buffers {
        let view = TensorView::new(Dtype::F32, vec![*len], bytes)
            .map_err(|e| corrupt(path, format!("tensor {name}: {e}")))?;
        views.push((name.clone(), view));
    }
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| corrupt(path, format!("cannot write: {e}")))?;
    sync_file(path)
}

/// Reads every f32 tensor of a safetensors file by name.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, TensorData>, CheckpointError> {
    let bytes = fs::read(path).map_err(io(path))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(path, format!("not a complete safetensors file: {e}")))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(corrupt(
                path,
                format!("tensor {name} is {:?}, expected F32", view.dtype()),
            ));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(name, TensorData::new(values, view.shape().to_vec()));
    }
    Ok(tensors)
}

/// Loads weights saved by [`write`] into `module`, which must have the same architecture;
/// every tensor must fit and none may be missing or left over.
pub fn load_module<M: Module + ModuleSnapshot>(
    mut module: M,
    path: &Path,
) -> Result<M, CheckpointError> {
    if !path.is_file() {
        return Err(corrupt(path, "missing"));
    }
    let mut store = SafetensorsStore::from_file(path).skip_enum_variants(true);
    let result = module
        .load_from(&mut store)
        .map_err(|e| corrupt(path, e.to_string()))?;
    if !result.errors.is_empty() {
        return Err(corrupt(path, format!("{:?}", result.errors)));
    }
    if let Some(extra) = result.unused.first() {
        return Err(corrupt(
            path,
            format!(
                "tensor `{extra}` has no place in this model ({} unused); was it saved with another model config?",
                result.unused.len()
            ),
        ));
    }
    Ok(module)
}

/// A complete checkpoint read back from disk (tensors still in files).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The directory.
    pub dir: PathBuf,
    /// Its state.
    pub state: TrainState,
    /// Its config, as written.
    pub config_toml: String,
}

impl Checkpoint {
    /// Reads the state and config of the checkpoint in `dir`.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let state_path = dir.join(STATE_FILE);
        if !state_path.is_file() {
            return Err(CheckpointError::NotFound(dir.to_path_buf()));
        }
        let text = fs::read_to_string(&state_path).map_err(io(&state_path))?;
        let state: TrainState = serde_json::from_str(&text).map_err(|e| corrupt(&state_path, e))?;
        if state.format != FORMAT {
            return Err(corrupt(
                &state_path,
                format!(
                    "format {} is not this program's format {FORMAT}",
                    state.format
                ),
            ));
        }
        let config_path = dir.join(CONFIG_FILE);
        let config_toml = fs::read_to_string(&config_path).map_err(io(&config_path))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            state,
            config_toml,
        })
    }

    /// The model weights file.
    pub fn model_file(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }

    /// The EMA weights file (present when the run averages).
    pub fn ema_file(&self) -> PathBuf {
        self.dir.join(EMA_FILE)
    }

    /// The optimizer state file.
    pub fn optimizer_file(&self) -> PathBuf {
        self.dir.join(OPTIMIZER_FILE)
    }

    /// The optimizer state, ready for [`crate::optim::Optimizer::load_state`].
    pub fn optimizer_state(&self) -> Result<BTreeMap<String, TensorData>, CheckpointError> {
        read_tensors(&self.optimizer_file())
    }
}

/// The complete checkpoints under `root`, oldest first (by step).
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let mut found = Vec::new();
    if !root.exists() {
        return Ok(found);
    }
    for entry in fs::read_dir(root).map_err(io(root))? {
        let entry = entry.map_err(io(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if entry.path().join(STATE_FILE).is_file() {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint under `root`.
pub fn latest(root: &Path) -> Result<PathBuf, CheckpointError> {
    list(root)?
        .pop()
        .map(|(_, path)| path)
        .ok_or_else(|| CheckpointError::NotFound(root.to_path_buf()))
}

/// What [`recover`] did with one leftover of an interrupted write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// A partial (`.tmp-*`) or superseded (`.old-*`) copy was deleted.
    Removed(PathBuf),
    /// The complete copy that a replacement had moved aside (`.old-NAME`) was put back as
    /// `NAME`: the write crashed between its two renames.
    Restored(PathBuf),
}

/// Cleans up after an interrupted [`write`]: `.tmp-*` directories are partial by construction
/// and deleted; `.old-NAME` (a complete checkpoint moved aside while its replacement was
/// renamed into place) is deleted when `NAME` exists, and renamed back to `NAME` when it does
/// not. So a crash at any instant of a replacement leaves a complete `NAME` after this.
pub fn recover(root: &Path) -> Result<Vec<Recovered>, CheckpointError> {
    let mut done = Vec::new();
    if !root.exists() {
        return Ok(done);
    }
    let mut leftovers: Vec<(String, PathBuf)> = Vec::new();
    for entry in fs::read_dir(root).map_err(io(root))? {
        let entry = entry.map_err(io(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") || name.starts_with(".old-") {
            leftovers.push((name, entry.path()));
        }
    }
    // Moved-aside copies first, so a restored name is never taken by a leftover `.tmp-`.
    leftovers.sort_by_key(|(name, _)| !name.starts_with(".old-"));
    for (name, path) in leftovers {
        let target = name
            .strip_prefix(".old-")
            .map(|original| root.join(original));
        match target {
            Some(target) if !target.exists() => {
                fs::rename(&path, &target).map_err(io(&path))?;
                done.push(Recovered::Restored(target));
            }
            _ => {
                fs::remove_dir_all(&path).map_err(io(&path))?;
                done.push(Recovered::Removed(path));
            }
        }
    }
    if !done.is_empty() {
        sync_dir(root)?;
    }
    Ok(done)
}

/// Deletes all but the newest `keep_last` checkpoints and the one named `keep` (the best).
pub fn prune(
    root: &Path,
    keep_last: usize,
    keep: Option<&str>,
) -> Result<Vec<PathBuf>, CheckpointError> {
    let all = list(root)?;
    let cut = all.len().saturating_sub(keep_last);
    let mut removed = Vec::new();
    for (_, path) in &all[..cut] {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if keep.is_some() && name.as_deref() == keep {
            continue;
        }
        fs::remove_dir_all(path).map_err(io(path))?;
        removed.push(path.clone());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(root: &Path, step: u64) {
        let dir = root.join(checkpoint_name(step));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(STATE_FILE), "{}").expect("state");
    }

    /// An error's message and its `source()` chain, as a reporter prints them.
    fn with_causes(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text += &format!(": {cause}");
            source = cause.source();
        }
        text
    }

    #[test]
    fn an_error_names_its_cause_once() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join(checkpoint_name(1));
        fs::create_dir_all(&dir).expect("mkdir");
        let error = read_tensors(&dir.join(MODEL_FILE)).expect_err("no such file");
        let text = with_causes(&error);
        assert!(text.contains(MODEL_FILE), "{text}");
        assert_eq!(text.matches("os error").count(), 1, "{text}");
    }

    #[test]
    fn identical_state_gives_identical_files() {
        use burn::nn::LinearConfig;
        use burn::tensor::Device;
        let root = tempfile::tempdir().expect("temp dir");
        let model = LinearConfig::new(3, 2).init(&Device::flex());
        let bytes: Vec<Vec<u8>> = (0..8)
            .map(|i| {
                let path = root.path().join(format!("model-{i}.safetensors"));
                save_module(&model, &path).expect("save");
                fs::read(&path).expect("read")
            })
            .collect();
        assert!(bytes.iter().all(|b| *b == bytes[0]), "the files differ");
    }

    /// The leftovers of a replacement of `step-5` interrupted at each instant between its
    /// renames, and what must be found after recovery.
    #[test]
    fn a_replacement_interrupted_at_any_instant_leaves_a_complete_checkpoint() {
        let old_copy = |root: &Path| root.join(format!(".old-{}", checkpoint_name(5)));
        let new_copy = |root: &Path| root.join(format!(".tmp-{}", checkpoint_name(5)));
        let mark = |dir: &Path, which: &str| fs::write(dir.join("which"), which).expect("mark");
        // (old checkpoint moved aside?, new copy renamed into place?, old copy deleted?)
        for (moved_aside, renamed, deleted) in [
            (false, false, false),
            (true, false, false),
            (true, true, false),
            (true, true, true),
        ] {
            let root = tempfile::tempdir().expect("temp dir");
            let root = root.path();
            fake(root, 5);
            mark(&root.join(checkpoint_name(5)), "old");
            fs::create_dir_all(new_copy(root)).expect("tmp");
            fs::write(new_copy(root).join(STATE_FILE), "{}").expect("state");
            mark(&new_copy(root), "new");
            if moved_aside {
                fs::rename(root.join(checkpoint_name(5)), old_copy(root)).expect("aside");
            }
            if renamed {
                fs::rename(new_copy(root), root.join(checkpoint_name(5))).expect("in place");
            }
            if deleted {
                fs::remove_dir_all(old_copy(root)).expect("delete");
            }
            recover(root).expect("recover");
            let found = fs::read_to_string(root.join(checkpoint_name(5)).join("which"))
                .expect("a complete step-5");
            assert_eq!(found, if renamed { "new" } else { "old" });
            assert!(!old_copy(root).exists() && !new_copy(root).exists());
            assert_eq!(list(root).expect("list").len(), 1);
        }
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_best() {
        let root = tempfile::tempdir().expect("temp dir");
        for step in 1..=5 {
            fake(root.path(), step);
        }
        // Incomplete: no state.json, so neither listed nor pruned.
        fs::create_dir_all(root.path().join(checkpoint_name(9))).expect("mkdir");
        let removed = prune(root.path(), 2, Some(&checkpoint_name(2))).expect("prune");
        assert_eq!(removed.len(), 2);
        let kept: Vec<u64> = list(root.path())
            .expect("list")
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(kept, [2, 4, 5]);
        assert!(
            latest(root.path())
                .expect("latest")
                .ends_with(checkpoint_name(5))
        );
    }
}

//! Weights for inference, export and fine-tuning from any source a user names: a checkpoint
//! directory of a run, or a weights file ([`xception_model::weights`]: Burnpack, or timm's
//! and Keras' safetensors/PyTorch files), with the class names that go with them. Exports
//! carry the model config, the class names and the preprocessing as metadata.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use xception_data::ClassInfo;
use xception_data::classes::imagenet_classes;
use xception_model::interop::Format;
use xception_model::weights::{
    self as files, META_CLASSES, META_MODEL, META_PREPROCESSING, META_SOURCE, WeightsFile,
    WeightsFileError,
};
pub use xception_model::weights::{ExportFormat, ExportSummary};
use xception_model::{ConfigError, ModelConfig, Network};

use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::config::{ConfigFileError, TrainConfig};

/// The class list of a checkpoint directory.
pub const CLASSES_FILE: &str = "classes.json";

/// A model read from a weights file, ready for inference.
pub struct Weights {
    /// The network (inference mode).
    pub model: Network,
    /// Its configuration.
    pub config: ModelConfig,
    /// Class names, by class index.
    pub classes: Vec<ClassInfo>,
    /// Where the weights came from, in words.
    pub source: String,
    /// The evaluation crop of the run that trained them (0.875 when unknown).
    pub crop_pct: f64,
    /// Lines for the user about what reading them changed (for example float16 widened).
    pub notes: Vec<String>,
}

/// Weights that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A checkpoint problem.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint's config cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    /// The model config is invalid.
    #[error(transparent)]
    Model(#[from] ConfigError),
    /// A weights file problem.
    #[error(transparent)]
    File(#[from] WeightsFileError),
    /// A file that cannot be used as asked.
    #[error("{path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn unreadable(path: &Path, reason: impl std::fmt::Display) -> WeightsError {
    WeightsError::Unreadable {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Class names when a file does not say: ImageNet's for 1000 classes, else `class N`.
pub fn default_classes(count: usize) -> Vec<ClassInfo> {
    if count == 1000 {
        imagenet_classes()
            .iter()
            .map(|c| ClassInfo {
                id: c.wnid.to_string(),
                name: c.name.to_string(),
            })
            .collect()
    } else {
        (0..count)
            .map(|i| ClassInfo {
                id: i.to_string(),
                name: format!("class {i}"),
            })
            .collect()
    }
}

/// What a checkpoint directory holds besides the tensors, read for inference and export.
struct CheckpointInfo {
    checkpoint: Checkpoint,
    config: TrainConfig,
    classes: Vec<ClassInfo>,
}

fn checkpoint_info(dir: &Path) -> Result<CheckpointInfo, WeightsError> {
    let checkpoint = Checkpoint::open(dir)?;
    let config = TrainConfig::parse(&dir.join("config.toml"), &checkpoint.config_toml, &[])?;
    let classes_path = dir.join(CLASSES_FILE);
    let classes = if classes_path.is_file() {
        let text =
            std::fs::read_to_string(&classes_path).map_err(|e| unreadable(&classes_path, e))?;
        serde_json::from_str(&text).map_err(|e| unreadable(&classes_path, e))?
    } else {
        default_classes(config.model.num_classes())
    };
    Ok(CheckpointInfo {
        checkpoint,
        config,
        classes,
    })
}

/// The weights file of a checkpoint: the EMA weights with `ema`.
fn checkpoint_weights_file(info: &CheckpointInfo, ema: bool) -> Result<PathBuf, WeightsError> {
    if ema {
        let file = info.checkpoint.ema_file();
        if !file.is_file() {
            return Err(unreadable(
                &info.checkpoint.dir,
                "has no EMA weights (the run had no training.ema_decay)",
            ));
        }
        Ok(file)
    } else {
        Ok(info.checkpoint.model_file())
    }
}

/// The class names a file's metadata gives, else the defaults for its class count.
fn classes_of(path: &Path, file: &WeightsFile) -> Result<Vec<ClassInfo>, WeightsError> {
    match file.metadata.get(META_CLASSES) {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| unreadable(path, format!("{META_CLASSES}: {e}")))
        }
        None => Ok(default_classes(file.config.num_classes())),
    }
}

/// Reads a weights file (not a checkpoint directory), refusing one whose names are not
/// `expected`'s.
fn load_file(
    path: &Path,
    device: &Device,
    expected: Option<Format>,
) -> Result<Weights, WeightsError> {
    let file = files::read(path, device, expected)?;
    let classes = classes_of(path, &file)?;
    let source = match file.names {
        Some(format) => format!("{} ({format} names)", path.display()),
        None => path.display().to_string(),
    };
    Ok(Weights {
        model: file.model,
        config: file.config,
        classes,
        source,
        crop_pct: xception_data::INCEPTION_CROP_PCT,
        notes: file.notes,
    })
}

/// The checkpoint a run directory stands for: its best (by validation top-1), else its newest.
fn run_checkpoint(run_dir: &Path) -> Result<PathBuf, WeightsError> {
    let checkpoints = run_dir.join("checkpoints");
    let newest = checkpoint::latest(&checkpoints)?;
    let best = Checkpoint::open(&newest)?
        .state
        .best
        .map(|best| checkpoints.join(best.checkpoint));
    Ok(match best {
        Some(best) if best.is_dir() => best,
        _ => newest,
    })
}

/// Reads weights from `path`: a run directory (its best checkpoint, else its newest), a
/// checkpoint directory (`ema` picks its averaged weights), a `.bpk` written by `xception
/// export`/`import`, or a safetensors/PyTorch file with timm's or Keras' names. The
/// [`Weights::source`] says which.
pub fn load(path: &Path, ema: bool, device: &Device) -> Result<Weights, WeightsError> {
    if !path.is_dir() {
        return load_file(path, device, None);
    }
    let (dir, of_run) = if path.join("checkpoints").is_dir() {
        (run_checkpoint(path)?, true)
    } else {
        (path.to_path_buf(), false)
    };
    let info = checkpoint_info(&dir)?;
    let file = checkpoint_weights_file(&info, ema)?;
    let model = Network::new(&info.config.model, device)?;
    let model = checkpoint::load_module(model, &file)?;
    let best = info.checkpoint.state.best.as_ref();
    let which = match best {
        _ if !of_run => String::new(),
        Some(best) if dir.ends_with(&best.checkpoint) => format!(
            ", the run's best: top-1 {:.2}% after epoch {}",
            best.top1, best.epochs_done
        ),
        _ => ", the run's newest".to_string(),
    };
    Ok(Weights {
        model,
        config: info.config.model.clone(),
        classes: info.classes,
        source: format!(
            "{} (step {}{}{which})",
            dir.display(),
            info.checkpoint.state.step,
            if ema { ", EMA weights" } else { "" }
        ),
        crop_pct: info.config.data.eval_crop_pct,
        notes: Vec::new(),
    })
}

/// The metadata an export of `weights` carries.
fn export_metadata(weights: &Weights) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            META_MODEL.to_string(),
            serde_json::to_string(&weights.config).unwrap_or_default(),
        ),
        (
            META_CLASSES.to_string(),
            serde_json::to_string(&weights.classes).unwrap_or_default(),
        ),
        (
            META_PREPROCESSING.to_string(),
            files::preprocessing(&weights.config, weights.crop_pct),
        ),
        (META_SOURCE.to_string(), weights.source.clone()),
    ])
}

/// Writes `weights` to `out` in `format` (through a temporary file renamed into place).
pub fn write_export(
    weights: &Weights,
    format: ExportFormat,
    out: &Path,
) -> Result<ExportSummary, WeightsError> {
    Ok(files::write(
        &weights.model,
        &weights.config,
        format,
        export_metadata(weights),
        out,
    )?)
}

/// Exports the weights at `source` (a checkpoint directory, its EMA weights with `ema`, or
/// any other weights file [`load`] reads) as `format`; `device` does the conversion.
pub fn export_weights(
    source: &Path,
    ema: bool,
    format: ExportFormat,
    out: &Path,
    device: &Device,
) -> Result<ExportSummary, WeightsError> {
    if ema && !source.is_dir() {
        return Err(unreadable(source, "--ema needs a checkpoint directory"));
    }
    let weights = load(source, ema, device)?;
    write_export(&weights, format, out)
}

/// Imports a timm or Keras weights file (safetensors or PyTorch) as a Burnpack file;
/// `device` does the conversion.
pub fn import_file(
    from: Format,
    file: &Path,
    out: &Path,
    device: &Device,
) -> Result<ExportSummary, WeightsError> {
    let mut weights = load_file(file, device, Some(from))?;
    weights.source = format!("imported from {}", file.display());
    let mut summary = write_export(&weights, ExportFormat::Burnpack, out)?;
    summary.notes = weights.notes;
    Ok(summary)
}

//! Weights files: reading any of them (a checkpoint directory, a Burnpack `.bpk`, a
//! safetensors or PyTorch file with timm's or Keras' names) into a model with its class names,
//! and writing exports (timm-named safetensors, Burnpack) that carry the model config, the
//! class names and the preprocessing as metadata.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::store::{
    BurnpackStore, ModuleSnapshot, ModuleStore, PytorchStore, SafetensorsStore, bridge, burn_pack,
};
use burn::tensor::{DType, Device, TensorData};
use serde::{Deserialize, Serialize};
use xception_data::ClassInfo;
use xception_data::classes::imagenet_classes;
use xception_model::interop::{self, Format, InteropError};
use xception_model::{ConfigError, Xception, XceptionConfig};

use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::config::{ConfigFileError, TrainConfig};

/// Metadata key: the model config as JSON.
pub const META_MODEL: &str = "xception.model";
/// Metadata key: the class list as JSON (`[{"id": ..., "name": ...}, ...]`).
pub const META_CLASSES: &str = "xception.classes";
/// Metadata key: the preprocessing, in words.
pub const META_PREPROCESSING: &str = "xception.preprocessing";
/// Metadata key: where the weights come from.
pub const META_SOURCE: &str = "xception.source";
/// The class list of a checkpoint directory.
pub const CLASSES_FILE: &str = "classes.json";

/// Preprocessing every weights file of this project assumes.
pub fn preprocessing(config: &XceptionConfig, crop_pct: f64) -> String {
    format!(
        "RGB, x / 127.5 - 1 (Keras 'tf' mode); evaluation: central crop of {crop_pct} of each side, antialiased bilinear resize to {0}x{0}; NCHW",
        config.input_size
    )
}

/// A model read from a weights file, ready for inference.
pub struct Weights {
    /// The network (inference mode).
    pub model: Xception,
    /// Its configuration.
    pub config: XceptionConfig,
    /// Class names, by class index.
    pub classes: Vec<ClassInfo>,
    /// Where the weights came from, in words.
    pub source: String,
    /// The evaluation crop of the run that trained them (0.875 when unknown).
    pub crop_pct: f64,
}

/// A weights file that cannot be read or written.
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
    /// The tensors do not fit the model.
    #[error("{path}: {source}")]
    Tensors {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        source: InteropError,
    },
    /// The file cannot be read as what it claims to be.
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
        default_classes(config.model.num_classes)
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

/// What a foreign weights file is, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Safetensors,
    Pytorch,
}

fn file_kind(path: &Path) -> Result<FileKind, WeightsError> {
    use std::io::Read;
    let mut magic = [0u8; 8];
    let read = std::fs::File::open(path)
        .and_then(|mut file| file.read(&mut magic))
        .map_err(|e| unreadable(path, e))?;
    let magic = &magic[..read];
    if magic.starts_with(b"\x89HDF\r\n\x1a\n") {
        return Err(unreadable(
            path,
            "is an HDF5 (Keras .h5) file, which this program cannot read: convert it first with `python scripts/keras_h5_to_safetensors.py FILE.h5 FILE.safetensors` (needs h5py), then pass the .safetensors file",
        ));
    }
    // A zip archive (torch.save since 1.6) or a legacy pickle.
    if magic.starts_with(b"PK\x03\x04") || magic.first() == Some(&0x80) {
        Ok(FileKind::Pytorch)
    } else {
        Ok(FileKind::Safetensors)
    }
}

/// Reads every tensor of a safetensors or PyTorch file, floats as f32.
pub fn read_foreign_tensors(path: &Path) -> Result<BTreeMap<String, TensorData>, WeightsError> {
    let tensors = match file_kind(path)? {
        FileKind::Pytorch => {
            // Keys exactly as saved: timm's `rep.0, rep.1, rep.3` must not be renumbered.
            let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
            store
                .get_all_tensors()
                .map_err(|e| unreadable(path, format!("not a readable PyTorch state dict: {e}")))?
                .clone()
        }
        FileKind::Safetensors => {
            let mut store = SafetensorsStore::from_file(path);
            store
                .get_all_tensors()
                .map_err(|e| unreadable(path, format!("not a complete safetensors file: {e}")))?
                .clone()
        }
    };
    let mut out = BTreeMap::new();
    for (name, tensor) in tensors {
        let data = bridge::to_data(&tensor)
            .map_err(|e| unreadable(path, format!("tensor {name}: {e:?}")))?;
        let data = if data.dtype().is_float() {
            data.convert::<f32>()
        } else {
            data
        };
        out.insert(name, data);
    }
    Ok(out)
}

/// The string metadata of a safetensors file, read from its header alone.
fn safetensors_metadata(path: &Path) -> Result<HashMap<String, String>, WeightsError> {
    use std::io::Read;
    let broken =
        |reason: String| unreadable(path, format!("not a complete safetensors file: {reason}"));
    let mut file = std::fs::File::open(path).map_err(|e| unreadable(path, e))?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length)
        .map_err(|e| broken(e.to_string()))?;
    let length = usize::try_from(u64::from_le_bytes(length)).map_err(|e| broken(e.to_string()))?;
    let mut header = vec![0u8; length];
    file.read_exact(&mut header)
        .map_err(|e| broken(e.to_string()))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| broken(e.to_string()))?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default())
}

/// Which foreign naming a set of tensors uses.
fn detect_format(tensors: &BTreeMap<String, TensorData>) -> Format {
    if tensors.keys().any(|k| k.contains('/')) {
        Format::Keras
    } else {
        Format::Timm
    }
}

/// The paper's model with as many classes as the classifier of `tensors` has.
fn infer_config(
    path: &Path,
    format: Format,
    tensors: &BTreeMap<String, TensorData>,
) -> Result<XceptionConfig, WeightsError> {
    let bias = match format {
        Format::Timm => "fc.bias",
        Format::Keras => "predictions/bias",
    };
    let classes = tensors
        .iter()
        .find(|(k, _)| k.trim_end_matches(":0") == bias)
        .map(|(_, data)| data.shape().iter().product::<usize>())
        .ok_or_else(|| unreadable(path, format!("has no classifier bias `{bias}`")))?;
    Ok(XceptionConfig {
        num_classes: classes,
        ..XceptionConfig::default()
    })
}

fn metadata_config(
    path: &Path,
    metadata: &HashMap<String, String>,
) -> Result<Option<(XceptionConfig, Vec<ClassInfo>)>, WeightsError> {
    let Some(model) = metadata.get(META_MODEL) else {
        return Ok(None);
    };
    let config: XceptionConfig =
        serde_json::from_str(model).map_err(|e| unreadable(path, format!("{META_MODEL}: {e}")))?;
    let classes = match metadata.get(META_CLASSES) {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| unreadable(path, format!("{META_CLASSES}: {e}")))?,
        None => default_classes(config.num_classes),
    };
    Ok(Some((config, classes)))
}

/// Reads a foreign (timm or Keras named) file into a model: the config and class names come
/// from the file's metadata when it was written by `xception export`, else the paper's model
/// with the file's number of classes.
pub fn load_foreign(path: &Path, device: &Device) -> Result<Weights, WeightsError> {
    load_foreign_as(path, device, None)
}

/// [`load_foreign`], refusing a file whose names are not `expected`'s.
fn load_foreign_as(
    path: &Path,
    device: &Device,
    expected: Option<Format>,
) -> Result<Weights, WeightsError> {
    let tensors = read_foreign_tensors(path)?;
    let format = detect_format(&tensors);
    if let Some(expected) = expected
        && expected != format
    {
        return Err(unreadable(
            path,
            format!("holds {format} names, not {expected} ones"),
        ));
    }
    let metadata = match file_kind(path)? {
        FileKind::Safetensors => safetensors_metadata(path)?,
        FileKind::Pytorch => HashMap::new(),
    };
    let (config, classes) = match metadata_config(path, &metadata)? {
        Some(found) => found,
        None => {
            let config = infer_config(path, format, &tensors)?;
            let classes = default_classes(config.num_classes);
            (config, classes)
        }
    };
    let model = Xception::new(&config, device)?;
    let model = interop::import(model, &config, format, tensors).map_err(|source| {
        WeightsError::Tensors {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(Weights {
        model,
        config,
        classes,
        source: format!("{} ({format} names)", path.display()),
        crop_pct: 0.875,
    })
}

/// Reads weights from `path`: a checkpoint directory (`ema` picks its averaged weights), a
/// `.bpk` written by `xception export`/`import`, or a safetensors/PyTorch file with timm's
/// or Keras' names.
pub fn load(path: &Path, ema: bool, device: &Device) -> Result<Weights, WeightsError> {
    if path.is_dir() {
        let info = checkpoint_info(path)?;
        let file = checkpoint_weights_file(&info, ema)?;
        let model = Xception::new(&info.config.model, device)?;
        let model = checkpoint::load_module(model, &file)?;
        return Ok(Weights {
            model,
            config: info.config.model.clone(),
            classes: info.classes,
            source: format!(
                "{} (step {}{})",
                path.display(),
                info.checkpoint.state.step,
                if ema { ", EMA weights" } else { "" }
            ),
            crop_pct: info.config.data.eval_crop_pct,
        });
    }
    if !path.exists() {
        return Err(unreadable(path, "no such file or directory"));
    }
    if path.extension().is_some_and(|e| e == "bpk") {
        let reader = burn_pack::Reader::from_file(path)
            .map_err(|e| unreadable(path, format!("not a readable Burnpack file: {e:?}")))?;
        let metadata: HashMap<String, String> = reader
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (config, classes) = metadata_config(path, &metadata)?.ok_or_else(|| {
            unreadable(
                path,
                format!("has no `{META_MODEL}` metadata (not written by xception)"),
            )
        })?;
        let mut model = Xception::new(&config, device)?;
        let result = model
            .load_from(&mut BurnpackStore::from_file(path))
            .map_err(|e| unreadable(path, e))?;
        if let Some(extra) = result.unused.first() {
            return Err(unreadable(
                path,
                format!("tensor `{extra}` has no place in the model"),
            ));
        }
        return Ok(Weights {
            model,
            config,
            classes,
            source: path.display().to_string(),
            crop_pct: 0.875,
        });
    }
    load_foreign(path, device)
}

/// The two export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// timm's `legacy_xception` names and PyTorch layouts.
    Safetensors,
    /// Burn's native file, Burn's names.
    Burnpack,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    /// The file written.
    pub out: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Whether timm's `legacy_xception` can load it with `strict=True`.
    pub timm_loadable: bool,
    /// The metadata written.
    pub metadata: BTreeMap<String, String>,
}

fn export_metadata(
    config: &XceptionConfig,
    classes: &[ClassInfo],
    crop_pct: f64,
    source: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            META_MODEL.to_string(),
            serde_json::to_string(config).unwrap_or_default(),
        ),
        (
            META_CLASSES.to_string(),
            serde_json::to_string(classes).unwrap_or_default(),
        ),
        (
            META_PREPROCESSING.to_string(),
            preprocessing(config, crop_pct),
        ),
        (META_SOURCE.to_string(), source.to_string()),
    ])
}

/// Writes `weights` to `out` in `format` (through a temporary file renamed into place).
pub fn write_export(
    weights: &Weights,
    format: ExportFormat,
    out: &Path,
) -> Result<ExportSummary, WeightsError> {
    let metadata = export_metadata(
        &weights.config,
        &weights.classes,
        weights.crop_pct,
        &weights.source,
    );
    let temp = out.with_extension("partial");
    let tensors = match format {
        ExportFormat::Safetensors => {
            let mut named: Vec<(String, TensorData)> =
                interop::export(&weights.model, &weights.config, Format::Timm);
            // timm's BatchNorm2d has a `num_batches_tracked` counter that a strict load needs.
            let counters: Vec<(String, TensorData)> = named
                .iter()
                .filter_map(|(name, _)| name.strip_suffix(".running_var"))
                .map(|bn| {
                    (
                        format!("{bn}.num_batches_tracked"),
                        TensorData::new(vec![0i64], Vec::<usize>::new()),
                    )
                })
                .collect();
            named.extend(counters);
            write_safetensors(&temp, &named, &metadata)?;
            named.len()
        }
        ExportFormat::Burnpack => {
            let mut store = BurnpackStore::from_file(&temp)
                .overwrite(true)
                .auto_extension(false);
            for (key, value) in &metadata {
                store = store.metadata(key.clone(), value.clone());
            }
            weights
                .model
                .save_into(&mut store)
                .map_err(|e| unreadable(out, format!("cannot write: {e}")))?;
            interop::tensors_by_path(&weights.model).len()
        }
    };
    std::fs::rename(&temp, out).map_err(|e| unreadable(out, e))?;
    Ok(ExportSummary {
        out: out.to_path_buf(),
        tensors,
        timm_loadable: format == ExportFormat::Safetensors
            && interop::timm_compatible(&weights.config),
        metadata,
    })
}

fn write_safetensors(
    path: &Path,
    tensors: &[(String, TensorData)],
    metadata: &BTreeMap<String, String>,
) -> Result<(), WeightsError> {
    use safetensors::{Dtype, tensor::TensorView};
    let views = tensors
        .iter()
        .map(|(name, data)| {
            let dtype = match data.dtype() {
                DType::I64 => Dtype::I64,
                _ => Dtype::F32,
            };
            TensorView::new(dtype, data.shape().to_vec(), data.as_bytes())
                .map(|view| (name.clone(), view))
                .map_err(|e| unreadable(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata: HashMap<String, String> = metadata.clone().into_iter().collect();
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| unreadable(path, format!("cannot write: {e}")))?;
    std::fs::write(path, bytes).map_err(|e| unreadable(path, e))
}

/// Exports the weights at `source` (a checkpoint directory, its EMA weights with `ema`, or
/// any other weights file [`load`] reads) as `format`.
pub fn export_weights(
    source: &Path,
    ema: bool,
    format: ExportFormat,
    out: &Path,
) -> Result<ExportSummary, WeightsError> {
    if ema && !source.is_dir() {
        return Err(unreadable(source, "--ema needs a checkpoint directory"));
    }
    let weights = load(source, ema, &Device::flex())?;
    write_export(&weights, format, out)
}

/// Imports a timm or Keras weights file (safetensors or PyTorch) as a Burnpack file.
pub fn import_file(from: Format, file: &Path, out: &Path) -> Result<ExportSummary, WeightsError> {
    let mut weights = load_foreign_as(file, &Device::flex(), Some(from))?;
    weights.source = format!("imported from {}", file.display());
    write_export(&weights, ExportFormat::Burnpack, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytorch_state_dicts_are_read_with_their_own_names_and_floats_as_f32() {
        // Made with torch.save({'fc.weight': torch.arange(12.).reshape(3, 4),
        // 'fc.bias': float64 [0.5, -1, 2], 'bn1.num_batches_tracked': torch.tensor(7)}).
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_state_dict.pth");
        let tensors = read_foreign_tensors(&path).expect("a PyTorch state dict");
        assert_eq!(
            tensors.keys().collect::<Vec<_>>(),
            ["bn1.num_batches_tracked", "fc.bias", "fc.weight"]
        );
        let weight = &tensors["fc.weight"];
        assert_eq!(weight.shape().to_vec(), [3, 4]);
        assert_eq!(weight.iter::<f32>().collect::<Vec<_>>()[5], 5.0);
        assert_eq!(tensors["fc.bias"].dtype(), DType::F32);
        assert_eq!(
            tensors["fc.bias"].iter::<f32>().collect::<Vec<_>>(),
            [0.5, -1.0, 2.0]
        );
        assert_eq!(detect_format(&tensors), Format::Timm);
    }

    #[test]
    fn hdf5_files_point_to_the_converter() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("weights.h5");
        std::fs::write(&path, b"\x89HDF\r\n\x1a\n...").expect("write");
        let error = read_foreign_tensors(&path).expect_err("HDF5").to_string();
        assert!(error.contains("keras_h5_to_safetensors.py"), "{error}");
    }
}

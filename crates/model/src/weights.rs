//! Weights files of the model: safetensors and PyTorch files with timm's or Keras' names
//! (read, and written with timm's), and Burn's own Burnpack (`.bpk`). Every file this project
//! writes carries the model config, the class names and the preprocessing as string metadata;
//! what the class names mean is the caller's business (they are kept as JSON text here).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::store::{BurnpackStore, ModuleStore, PytorchStore, SafetensorsStore, bridge, burn_pack};
use burn::tensor::{DType, Device, TensorData};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::interop::{self, Format, InteropError};
use crate::network::{ModelConfig, Network};

/// Metadata key: the model config as JSON.
pub const META_MODEL: &str = "xception.model";
/// Metadata key: the class list as JSON (`[{"id": ..., "name": ...}, ...]`).
pub const META_CLASSES: &str = "xception.classes";
/// Metadata key: the preprocessing, in words.
pub const META_PREPROCESSING: &str = "xception.preprocessing";
/// Metadata key: where the weights come from.
pub const META_SOURCE: &str = "xception.source";

/// The preprocessing every weights file of this project assumes, in words.
pub fn preprocessing(config: &ModelConfig, crop_pct: f64) -> String {
    format!(
        "RGB, x / 127.5 - 1 (Keras 'tf' mode); evaluation: central crop of {crop_pct} of each side, antialiased bilinear resize to {0}x{0}; NCHW",
        config.input_size()
    )
}

/// A model read from a weights file.
pub struct WeightsFile {
    /// The network.
    pub model: Network,
    /// Its configuration: from the file's metadata, else the published architecture the
    /// file's names show, with the file's number of classes.
    pub config: ModelConfig,
    /// The file's string metadata (empty for a PyTorch file).
    pub metadata: HashMap<String, String>,
    /// The names the file used: timm's or Keras' (`None`: Burn's own, a `.bpk`).
    pub names: Option<Format>,
    /// Lines for the user about what reading it changed (for example float16 widened to f32).
    pub notes: Vec<String>,
}

/// A weights file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WeightsFileError {
    /// The model config is invalid.
    #[error(transparent)]
    Model(#[from] ConfigError),
    /// The tensors do not fit the model.
    #[error("{path}: {cause}")]
    Tensors {
        /// The file.
        path: PathBuf,
        /// What does not fit (in the message, so not also a `source()`).
        cause: InteropError,
    },
    /// The file cannot be read or written as what it claims to be.
    #[error("{path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn unreadable(path: &Path, reason: impl std::fmt::Display) -> WeightsFileError {
    WeightsFileError::Unreadable {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads the model in `path` onto `device`: a `.bpk` written by this project, or a
/// safetensors/PyTorch file with timm's or Keras' names (refused when `expected` names
/// another naming).
pub fn read(
    path: &Path,
    device: &Device,
    expected: Option<Format>,
) -> Result<WeightsFile, WeightsFileError> {
    if !path.exists() {
        return Err(unreadable(path, "no such file or directory"));
    }
    if path.extension().is_some_and(|e| e == "bpk") {
        read_burnpack(path, device)
    } else {
        read_foreign(path, device, expected)
    }
}

fn read_burnpack(path: &Path, device: &Device) -> Result<WeightsFile, WeightsFileError> {
    let reader = burn_pack::Reader::from_file(path)
        .map_err(|e| unreadable(path, format!("not a readable Burnpack file: {e:?}")))?;
    let metadata: HashMap<String, String> = reader
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let config = metadata_config(path, &metadata)?.ok_or_else(|| {
        unreadable(
            path,
            format!("has no `{META_MODEL}` metadata (not written by xception)"),
        )
    })?;
    let mut model = Network::new(&config, device)?;
    let result = model
        .load_weights(&mut BurnpackStore::from_file(path))
        .map_err(|e| unreadable(path, e))?;
    if let Some(extra) = result.unused.first() {
        return Err(unreadable(
            path,
            format!("tensor `{extra}` has no place in the model"),
        ));
    }
    Ok(WeightsFile {
        model,
        config,
        metadata,
        names: None,
        notes: Vec::new(),
    })
}

fn read_foreign(
    path: &Path,
    device: &Device,
    expected: Option<Format>,
) -> Result<WeightsFile, WeightsFileError> {
    let ForeignTensors { tensors, notes } = read_foreign_tensors(path)?;
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
    let config = match metadata_config(path, &metadata)? {
        Some(config) => config,
        None => infer_config(path, format, &tensors)?,
    };
    let model = Network::new(&config, device)?;
    let model = interop::import(model, &config, format, tensors).map_err(|cause| {
        WeightsFileError::Tensors {
            path: path.to_path_buf(),
            cause,
        }
    })?;
    Ok(WeightsFile {
        model,
        config,
        metadata,
        names: Some(format),
        notes,
    })
}

/// What a foreign weights file is, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Safetensors,
    Pytorch,
}

fn file_kind(path: &Path) -> Result<FileKind, WeightsFileError> {
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

/// The tensors of a foreign file, floats as f32, and what was converted on the way.
pub struct ForeignTensors {
    /// Every tensor by its name in the file.
    pub tensors: BTreeMap<String, TensorData>,
    /// Lines for the user about conversions (for example float16 tensors widened to f32).
    pub notes: Vec<String>,
}

/// Reads every tensor of a safetensors or PyTorch file, floats as f32 (other float types are
/// converted, and a note says so). A float tensor holding NaN or infinite values is refused,
/// naming the tensor and the count: such weights would poison every output.
pub fn read_foreign_tensors(path: &Path) -> Result<ForeignTensors, WeightsFileError> {
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
    let mut converted: BTreeMap<String, usize> = BTreeMap::new();
    for (name, tensor) in tensors {
        let data = bridge::to_data(&tensor)
            .map_err(|e| unreadable(path, format!("tensor {name}: {e:?}")))?;
        let data = if data.dtype().is_float() {
            if data.dtype() != DType::F32 {
                *converted.entry(format!("{:?}", data.dtype())).or_default() += 1;
            }
            let data = data.convert::<f32>();
            let bad = data.iter::<f32>().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                return Err(unreadable(
                    path,
                    format!(
                        "tensor `{name}` holds {bad} non-finite values (NaN or infinite) of {}: refusing weights that would make every output NaN",
                        data.num_elements()
                    ),
                ));
            }
            data
        } else {
            data
        };
        out.insert(name, data);
    }
    let notes = converted
        .into_iter()
        .map(|(dtype, count)| {
            format!(
                "{}: converted {count} {dtype} tensors to F32",
                path.display()
            )
        })
        .collect();
    Ok(ForeignTensors {
        tensors: out,
        notes,
    })
}

/// The string metadata of a safetensors file, read from its header alone.
fn safetensors_metadata(path: &Path) -> Result<HashMap<String, String>, WeightsFileError> {
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

/// The published architecture that `tensors` name (Xception's Keras layers are named
/// `block1_conv1` ..., Inception V3's are all unnamed; timm's Inception V3 starts with
/// `Conv2d_1a_3x3`), with as many classes as its classifier has; for Inception V3 also whether
/// it has the auxiliary classifier and BatchNorm scales other than one.
fn infer_config(
    path: &Path,
    format: Format,
    tensors: &BTreeMap<String, TensorData>,
) -> Result<ModelConfig, WeightsFileError> {
    let key = |k: &String| k.trim_end_matches(":0").to_string();
    let has = |prefix: &str| tensors.keys().any(|k| key(k).starts_with(prefix));
    let (bias, inception) = match format {
        Format::Timm => ("fc.bias", has("Conv2d_1a_3x3.")),
        Format::Keras => ("predictions/bias", !has("block1_conv1")),
    };
    let classes = tensors
        .iter()
        .find(|(k, _)| key(k) == bias)
        .map(|(_, data)| data.shape().iter().product::<usize>())
        .ok_or_else(|| unreadable(path, format!("has no classifier bias `{bias}`")))?;
    if !inception {
        return Ok(ModelConfig::Xception(crate::XceptionConfig {
            num_classes: classes,
            ..Default::default()
        }));
    }
    let scaled = |(k, data): (&String, &TensorData)| {
        let k = key(k);
        let gamma = k.ends_with(".bn.weight") || k.ends_with("/gamma");
        gamma && data.iter::<f32>().any(|v| v != 1.0)
    };
    Ok(ModelConfig::InceptionV3(crate::InceptionV3Config {
        num_classes: classes,
        aux_logits: format == Format::Timm && has("AuxLogits."),
        bn_scale: tensors.iter().any(scaled),
        ..Default::default()
    }))
}

/// The model config a file written by this project carries, if any.
fn metadata_config(
    path: &Path,
    metadata: &HashMap<String, String>,
) -> Result<Option<ModelConfig>, WeightsFileError> {
    metadata
        .get(META_MODEL)
        .map(|model| {
            serde_json::from_str(model).map_err(|e| unreadable(path, format!("{META_MODEL}: {e}")))
        })
        .transpose()
}

/// The two export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// timm's names (`legacy_xception`, `inception_v3`) and PyTorch layouts.
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
    /// Whether timm's model (`legacy_xception`, `inception_v3`) can load it with `strict=True`.
    pub timm_loadable: bool,
    /// The timm call that builds the model it fits (`timm.create_model('inception_v3', ...)`).
    pub timm_model: String,
    /// The metadata written.
    pub metadata: BTreeMap<String, String>,
    /// Lines for the user about conversions made on the way.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Writes `model` to `out` in `format` with `metadata` (through a temporary file renamed
/// into place, so `out` is never half written).
pub fn write(
    model: &Network,
    config: &ModelConfig,
    format: ExportFormat,
    metadata: BTreeMap<String, String>,
    out: &Path,
) -> Result<ExportSummary, WeightsFileError> {
    let temp = out.with_extension("partial");
    let tensors = match format {
        ExportFormat::Safetensors => {
            let mut named: Vec<(String, TensorData)> = interop::export(model, config, Format::Timm);
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
            model
                .save_weights(&mut store)
                .map_err(|e| unreadable(out, format!("cannot write: {e}")))?;
            interop::tensors_by_path(model).len()
        }
    };
    std::fs::rename(&temp, out).map_err(|e| unreadable(out, e))?;
    Ok(ExportSummary {
        out: out.to_path_buf(),
        tensors,
        timm_loadable: format == ExportFormat::Safetensors && interop::timm_compatible(config),
        timm_model: interop::timm_create_call(config),
        metadata,
        notes: Vec::new(),
    })
}

fn write_safetensors(
    path: &Path,
    tensors: &[(String, TensorData)],
    metadata: &BTreeMap<String, String>,
) -> Result<(), WeightsFileError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytorch_state_dicts_are_read_with_their_own_names_and_floats_as_f32() {
        // Made with torch.save({'fc.weight': torch.arange(12.).reshape(3, 4),
        // 'fc.bias': float64 [0.5, -1, 2], 'bn1.num_batches_tracked': torch.tensor(7)}).
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_state_dict.pth");
        let tensors = read_foreign_tensors(&path)
            .expect("a PyTorch state dict")
            .tensors;
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
        let error = read_foreign_tensors(&path).err().expect("HDF5").to_string();
        assert!(error.contains("keras_h5_to_safetensors.py"), "{error}");
    }

    fn safetensors_file(
        dir: &Path,
        name: &str,
        dtype: safetensors::Dtype,
        bytes: &[u8],
    ) -> PathBuf {
        let path = dir.join(name);
        let view = safetensors::tensor::TensorView::new(dtype, vec![3], bytes).expect("view");
        let bytes = safetensors::serialize([("fc.bias", view)], None).expect("serialize");
        std::fs::write(&path, bytes).expect("write");
        path
    }

    #[test]
    fn float16_tensors_are_widened_and_said_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        // 0.5, -1 and 2 as IEEE half-precision bits.
        let halves: Vec<u8> = [0x3800u16, 0xbc00, 0x4000]
            .iter()
            .flat_map(|bits| bits.to_le_bytes())
            .collect();
        let path = safetensors_file(
            dir.path(),
            "half.safetensors",
            safetensors::Dtype::F16,
            &halves,
        );
        let read = read_foreign_tensors(&path).expect("float16 is read");
        let bias = &read.tensors["fc.bias"];
        assert_eq!(bias.dtype(), DType::F32);
        assert_eq!(bias.iter::<f32>().collect::<Vec<_>>(), [0.5, -1.0, 2.0]);
        assert_eq!(read.notes.len(), 1, "{:?}", read.notes);
        assert!(read.notes[0].contains("1 F16 tensors"), "{:?}", read.notes);
    }

    #[test]
    fn non_finite_weights_are_refused_naming_the_tensor() {
        let dir = tempfile::tempdir().expect("temp dir");
        let values: Vec<u8> = [1.0f32, f32::NAN, f32::INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let path = safetensors_file(
            dir.path(),
            "nan.safetensors",
            safetensors::Dtype::F32,
            &values,
        );
        let error = read_foreign_tensors(&path)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains("`fc.bias` holds 2 non-finite values"),
            "{error}"
        );
    }
}

//! The training config: one TOML file with sections for the model, data, optimizer,
//! schedule, training, checkpoints and logging. Unknown fields are rejected; an error names
//! the file, the field path and what was expected. `--set section.field=value` overrides any
//! field before the file is checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xception_data::{Layout, RandomResizedCrop, SynthOptions};
use xception_model::ModelConfig;

use crate::schedule::Schedule;

/// Where the images come from and how they are batched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The dataset folder (relative paths are relative to the working directory).
    pub root: PathBuf,
    /// `auto`, `folders`, `devkit`, `kaggle` or `split` (see docs/data.md).
    pub layout: Layout,
    /// Fraction held out for validation by the `split` layout.
    pub val_fraction: f64,
    /// Seed of the `split` layout.
    pub split_seed: u64,
    /// Images per optimizer step and device (before gradient accumulation).
    pub batch_size: usize,
    /// Decoding threads.
    pub workers: usize,
    /// Batches prepared ahead.
    pub prefetch: usize,
    /// Training augmentation.
    pub crop: RandomResizedCrop,
    /// Fraction of each side kept by the evaluation's central crop.
    pub eval_crop_pct: f64,
    /// When set and `root` does not exist, a synthetic dataset is generated there first.
    pub synth: Option<SynthOptions>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("data/imagenet"),
            layout: Layout::Auto,
            val_fraction: 0.1,
            split_seed: 0,
            batch_size: 32,
            workers: 2,
            prefetch: 4,
            crop: RandomResizedCrop::default(),
            eval_crop_pct: xception_data::INCEPTION_CROP_PCT,
            synth: None,
        }
    }
}

/// The optimizer and its regularisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// SGD with momentum (the paper's ImageNet recipe: momentum 0.9, no dampening).
    Sgd {
        /// Momentum.
        momentum: f64,
        /// Dampening of the momentum (0 for the paper; Burn defaults to 0.1).
        #[serde(default)]
        dampening: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
        /// Added to the gradient as `weight_decay * w` (PyTorch's and TF-slim's convention;
        /// Keras' `l2(x)` regulariser adds `2 * x * w`, i.e. `weight_decay = 2x` here). The
        /// paper's 1e-5 when absent.
        #[serde(default = "default_sgd_weight_decay")]
        weight_decay: f64,
        /// Whether BatchNorm scales and shifts and biases are decayed too.
        #[serde(default)]
        decay_norm_and_bias: bool,
    },
    /// RMSprop with momentum (the paper's JFT recipe).
    Rmsprop {
        /// Momentum.
        momentum: f64,
        /// Decay of the squared-gradient average (TensorFlow's `decay`, PyTorch's `alpha`).
        #[serde(default = "default_rms_decay")]
        decay: f64,
        /// Added to the root mean square (TensorFlow's Inception training used 1.0).
        #[serde(default = "default_rms_epsilon")]
        epsilon: f64,
        /// Added to the gradient as `weight_decay * w`.
        #[serde(default)]
        weight_decay: f64,
        /// Whether BatchNorm scales and shifts and biases are decayed too.
        #[serde(default)]
        decay_norm_and_bias: bool,
    },
}

fn default_sgd_weight_decay() -> f64 {
    1e-5
}

fn default_rms_decay() -> f64 {
    0.9
}

fn default_rms_epsilon() -> f64 {
    1.0
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 1e-5,
            decay_norm_and_bias: false,
        }
    }
}

/// The length and shape of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// Passes over the training set.
    pub epochs: u32,
    /// Seed of initialisation, order and augmentation.
    pub seed: u64,
    /// `flex`, `ndarray`, `wgpu`, `wgpu:N` (the N-th discrete GPU) or `wgpu:local` (under
    /// mpirun/srun, the GPU of the process's rank on its machine).
    pub device: String,
    /// Several devices for data-parallel training (`["wgpu:0", "wgpu:1"]`); when given,
    /// `device` is not used. Each device takes `data.batch_size` images of every batch.
    pub devices: Vec<String>,
    /// Batches whose gradients are summed before each optimizer step.
    pub grad_accumulation: u32,
    /// Clip the global gradient norm to this value; none when absent.
    pub grad_clip_norm: Option<f64>,
    /// Decay of the Polyak average of the weights; none when absent.
    pub ema_decay: Option<f64>,
    /// TensorFlow's `min(decay, (1 + t) / (10 + t))` warm-up of the average.
    pub ema_warmup: bool,
    /// Evaluate on the validation split every this many epochs.
    pub eval_every_epochs: u32,
    /// Start from these weights instead of a random initialisation (fine-tuning): a
    /// checkpoint directory, a run directory (its best checkpoint), a `.bpk`, or a timm/Keras
    /// `.safetensors`/`.pth`. A classifier with another number of classes is re-initialised.
    pub init_from: Option<PathBuf>,
    /// Train only the classifier for this many epochs first (the rest is frozen).
    pub freeze_epochs: u32,
    /// Label smoothing of the cross-entropy (Inception V3's recipe used 0.1), any model.
    /// Written only when set, so configs without it keep their hash.
    #[serde(skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            seed: 0,
            device: "flex".to_string(),
            devices: Vec::new(),
            grad_accumulation: 1,
            grad_clip_norm: None,
            ema_decay: Some(0.9999),
            ema_warmup: true,
            eval_every_epochs: 1,
            init_from: None,
            freeze_epochs: 0,
            label_smoothing: 0.0,
        }
    }
}

/// When checkpoints are written and which are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Also write a checkpoint every this many optimizer steps (epoch ends always write one).
    pub every_steps: Option<u64>,
    /// Number of most recent checkpoints kept.
    pub keep_last: usize,
    /// Also keep the checkpoint with the best validation top-1.
    pub keep_best: bool,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_steps: Some(1000),
            keep_last: 3,
            keep_best: true,
        }
    }
}

/// What the run prints and records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// Print a line (without a terminal) every this many optimizer steps.
    pub every_steps: u64,
    /// Redraw the learning curves PNG every epoch.
    pub plot: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            every_steps: 50,
            plot: true,
        }
    }
}

/// A whole training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The network.
    #[serde(default)]
    pub model: ModelConfig,
    /// The data.
    #[serde(default)]
    pub data: DataConfig,
    /// The optimizer.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule.
    #[serde(default)]
    pub schedule: Schedule,
    /// The run.
    #[serde(default)]
    pub training: TrainingConfig,
    /// Checkpoints.
    #[serde(default)]
    pub checkpoints: CheckpointConfig,
    /// Output.
    #[serde(default)]
    pub logging: LoggingConfig,
}

/// A config that cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, so not also a `source()`).
        cause: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A `--set` override is malformed.
    #[error("--set {assignment}: {reason}")]
    Override {
        /// The override as given.
        assignment: String,
        /// What is wrong.
        reason: String,
    },
    /// A field has the wrong type, an unknown name, or an invalid value.
    #[error("config file {path}: field `{field}`: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The field path, e.g. `optimizer.momentum`.
        field: String,
        /// What was expected.
        message: String,
    },
}

/// Applies `section.field=value` to a parsed TOML table. The value is read as TOML (`0.1`,
/// `true`, `"text"`, `[1, 2]`), or as a bare string when it is not TOML.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), ConfigFileError> {
    let error = |reason: &str| ConfigFileError::Override {
        assignment: assignment.to_string(),
        reason: reason.to_string(),
    };
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| error("expected key=value"))?;
    let path: Vec<&str> = key.trim().split('.').collect();
    if path.iter().any(|part| part.is_empty()) {
        return Err(error("the key has an empty part"));
    }
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (last, parents) = path.split_last().ok_or_else(|| error("empty key"))?;
    let mut table = table;
    for part in parents {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| error(&format!("`{part}` is not a section")))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

impl TrainConfig {
    /// The devices the run trains on: `training.devices` when given, else `training.device`.
    pub fn device_names(&self) -> Vec<String> {
        if self.training.devices.is_empty() {
            vec![self.training.device.clone()]
        } else {
            self.training.devices.clone()
        }
    }

    /// Parses `text` (from `path`, for messages) with `overrides` applied.
    pub fn parse(path: &Path, text: &str, overrides: &[String]) -> Result<Self, ConfigFileError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigFileError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        for assignment in overrides {
            apply_override(&mut table, assignment)?;
        }
        let config: Self =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                ConfigFileError::Field {
                    path: path.to_path_buf(),
                    field: e.path().to_string(),
                    // toml appends "in `section`" lines, which the field path already says.
                    message: e
                        .inner()
                        .to_string()
                        .lines()
                        .filter(|line| !line.starts_with("in `"))
                        .collect::<Vec<_>>()
                        .join(" "),
                }
            })?;
        config
            .validate()
            .map_err(|(field, message)| ConfigFileError::Field {
                path: path.to_path_buf(),
                field,
                message,
            })?;
        Ok(config)
    }

    /// Reads and checks the config file at `path` with `overrides` applied.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigFileError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::parse(path, &text, overrides)
    }

    /// Checks values that deserialise but cannot run, returning the field and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let field = |name: &str, reason: String| Err((name.to_string(), reason));
        if let Err(error) = self.model.validate() {
            return field(error.field(), error.to_string());
        }
        if let Err(error) = self.schedule.validate() {
            return field("schedule", error.to_string());
        }
        if let Err(reason) = self.data.crop.validate() {
            return field("data.crop", reason);
        }
        if self.data.batch_size == 0 {
            return field("data.batch_size", "must be at least 1".into());
        }
        if self.data.workers == 0 {
            return field("data.workers", "must be at least 1".into());
        }
        if !(self.data.eval_crop_pct > 0.0 && self.data.eval_crop_pct <= 1.0) {
            return field("data.eval_crop_pct", "must be in (0, 1]".into());
        }
        if self.training.epochs == 0 {
            return field("training.epochs", "must be at least 1".into());
        }
        if self.training.grad_accumulation == 0 {
            return field("training.grad_accumulation", "must be at least 1".into());
        }
        if let Err(reason) = check_device_name(&self.training.device) {
            return field("training.device", reason);
        }
        for (index, name) in self.training.devices.iter().enumerate() {
            if let Err(reason) = check_device_name(name) {
                return field(&format!("training.devices[{index}]"), reason);
            }
            // A GPU listed twice is a mistake; a CPU backend listed twice gives replicas that
            // share the same cores: no faster, but how a multi-device (or multi-process) run
            // is checked on one machine.
            let cpu = matches!(name.as_str(), "flex" | "ndarray");
            if !cpu && self.training.devices[..index].contains(name) {
                return field(
                    &format!("training.devices[{index}]"),
                    format!("{name:?} is listed twice"),
                );
            }
        }
        if !(0.0..1.0).contains(&self.training.label_smoothing) {
            return field(
                "training.label_smoothing",
                format!("must be in [0, 1), got {}", self.training.label_smoothing),
            );
        }
        if let Some(decay) = self.training.ema_decay
            && !(0.0..1.0).contains(&decay)
        {
            return field(
                "training.ema_decay",
                format!("must be in [0, 1), got {decay}"),
            );
        }
        if let Some(norm) = self.training.grad_clip_norm
            && !(norm.is_finite() && norm > 0.0)
        {
            return field(
                "training.grad_clip_norm",
                format!("must be positive, got {norm}"),
            );
        }
        if self.training.eval_every_epochs == 0 {
            return field("training.eval_every_epochs", "must be at least 1".into());
        }
        if self.checkpoints.every_steps == Some(0) {
            return field(
                "checkpoints.every_steps",
                "must be at least 1 (leave it out for epoch-end checkpoints only)".into(),
            );
        }
        if self.checkpoints.keep_last == 0 {
            return field("checkpoints.keep_last", "must keep at least 1".into());
        }
        Ok(())
    }

    /// The resolved config as TOML, as written into the run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Every field as `path = value`, for comparing configs.
    pub fn flatten(&self) -> BTreeMap<String, String> {
        let mut fields = BTreeMap::new();
        if let Ok(value) = serde_json::to_value(self) {
            flatten_into(&mut fields, String::new(), &value);
        }
        fields
    }

    /// The fields whose values differ between `self` and `other`, as `path: old -> new`.
    pub fn changed_fields(&self, other: &Self) -> Vec<String> {
        let (before, after) = (self.flatten(), other.flatten());
        let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|key| before.get(*key) != after.get(*key))
            .map(|key| {
                let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
                format!(
                    "{key}: {} -> {}",
                    show(before.get(key)),
                    show(after.get(key))
                )
            })
            .collect()
    }

    /// How the training loss is made: label smoothing, and the auxiliary classifier's weight.
    pub fn loss_spec(&self) -> crate::parallel::LossSpec {
        crate::parallel::LossSpec {
            label_smoothing: (self.training.label_smoothing > 0.0)
                .then_some(self.training.label_smoothing as f32),
            aux_weight: self.model.aux_loss_weight(),
        }
    }

    /// A stable hash of every field (FNV-1a of the flattened fields).
    pub fn hash(&self) -> String {
        let mut hash = crate::distributed::Fnv1a::default();
        for (key, value) in self.flatten() {
            for part in [key.as_bytes(), b"=", value.as_bytes(), b"\n"] {
                hash.write(part);
            }
        }
        format!("{:016x}", hash.finish())
    }
}

/// Whether `name` is a device name: `flex`, `ndarray`, `wgpu`, `wgpu:N` or `wgpu:local`.
pub fn check_device_name(name: &str) -> Result<(), String> {
    let known = matches!(name, "flex" | "ndarray" | "wgpu" | "wgpu:local")
        || name
            .strip_prefix("wgpu:")
            .is_some_and(|index| index.parse::<usize>().is_ok());
    if known {
        Ok(())
    } else {
        Err(format!(
            "expected flex, ndarray, wgpu, wgpu:N (N-th discrete GPU) or wgpu:local (the GPU of the process's rank on its machine), got {name:?}"
        ))
    }
}

fn flatten_into(fields: &mut BTreeMap<String, String>, prefix: String, value: &serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten_into(fields, path, inner);
            }
        }
        other => {
            fields.insert(prefix, other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, overrides: &[&str]) -> Result<TrainConfig, ConfigFileError> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        TrainConfig::parse(Path::new("test.toml"), text, &overrides)
    }

    #[test]
    fn an_empty_file_is_the_papers_imagenet_recipe() {
        let config = parse("", &[]).expect("valid");
        assert_eq!(config.model, ModelConfig::default());
        assert_eq!(config.schedule, Schedule::paper_imagenet());
        assert_eq!(config.optimizer, OptimizerConfig::default());
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let error = parse(
            "[optimizer]\nkind = \"sgd\"\nmomentum = 0.9\nmomentun = 1\n",
            &[],
        )
        .expect_err("typo")
        .to_string();
        assert!(error.contains("test.toml"), "{error}");
        assert!(error.contains("momentun"), "{error}");
        let error = parse("[data]\nbatch_size = \"big\"\n", &[])
            .expect_err("type")
            .to_string();
        assert!(error.contains("data.batch_size"), "{error}");
        let error = parse("[traning]\nepochs = 3\n", &[])
            .expect_err("section")
            .to_string();
        assert!(error.contains("traning"), "{error}");
    }

    #[test]
    fn invalid_values_are_named() {
        let error = parse("[training]\nepochs = 0\n", &[])
            .expect_err("zero")
            .to_string();
        assert!(error.contains("training.epochs"), "{error}");
        let error = parse("[model]\ninput_size = 50\n", &[])
            .expect_err("small")
            .to_string();
        assert!(error.contains("model.input_size"), "{error}");
        let error = parse("[training]\ndevice = \"tpu\"\n", &[])
            .expect_err("tpu")
            .to_string();
        assert!(
            error.contains("training.device") && error.contains("wgpu"),
            "{error}"
        );
        let error = parse("[training]\ndevices = [\"wgpu:0\", \"wgpu:x\"]\n", &[])
            .expect_err("bad index")
            .to_string();
        assert!(error.contains("training.devices[1]"), "{error}");
        let error = parse("[training]\ndevices = [\"wgpu:1\", \"wgpu:1\"]\n", &[])
            .expect_err("twice")
            .to_string();
        assert!(error.contains("listed twice"), "{error}");
        let config = parse("[training]\ndevices = [\"flex\", \"flex\"]\n", &[])
            .expect("a CPU backend twice: replicas on the same cores");
        assert_eq!(config.device_names(), ["flex", "flex"]);
        let config =
            parse("[training]\ndevices = [\"wgpu:0\", \"wgpu:1\"]\n", &[]).expect("two GPUs");
        assert_eq!(config.device_names(), ["wgpu:0", "wgpu:1"]);
        let error = parse(
            "[schedule]\nlr = -1.0\n[schedule.decay]\nkind = \"constant\"\n",
            &[],
        )
        .expect_err("negative")
        .to_string();
        assert!(error.contains("schedule.lr"), "{error}");
    }

    #[test]
    fn overrides_set_any_field_before_checking() {
        let config = parse(
            "[data]\nbatch_size = 8\n",
            &[
                "data.batch_size=16",
                "model.num_classes = 10",
                "training.device=ndarray",
                "data.root=/tmp/x",
                "schedule.lr=0.1",
            ],
        )
        .expect("valid");
        assert_eq!(config.data.batch_size, 16);
        assert_eq!(config.model.num_classes(), 10);
        assert_eq!(config.training.device, "ndarray");
        assert_eq!(config.data.root, PathBuf::from("/tmp/x"));
        assert_eq!(config.schedule.lr, 0.1);
        let error = parse("", &["model.num_clases=3"])
            .expect_err("typo")
            .to_string();
        assert!(error.contains("num_clases"), "{error}");
        let error = parse("", &["no_equals"])
            .expect_err("malformed")
            .to_string();
        assert!(error.contains("key=value"), "{error}");
        let error = parse("", &["data.batch_size.x=3"])
            .expect_err("not a section")
            .to_string();
        assert!(error.contains("batch_size"), "{error}");
    }

    #[test]
    fn sgd_without_weight_decay_gets_the_papers() {
        let config = parse("[optimizer]\nkind = \"sgd\"\nmomentum = 0.9\n", &[]).expect("ok");
        assert_eq!(config.optimizer, OptimizerConfig::default());
        let config = parse(
            "[optimizer]\nkind = \"sgd\"\nmomentum = 0.9\nweight_decay = 0.0\n",
            &[],
        )
        .expect("ok");
        assert!(
            matches!(config.optimizer, OptimizerConfig::Sgd { weight_decay, .. } if weight_decay == 0.0)
        );
    }

    #[test]
    fn rmsprop_has_the_papers_jft_defaults() {
        let config = parse("[optimizer]\nkind = \"rmsprop\"\nmomentum = 0.9\n", &[]).expect("ok");
        assert_eq!(
            config.optimizer,
            OptimizerConfig::Rmsprop {
                momentum: 0.9,
                decay: 0.9,
                epsilon: 1.0,
                weight_decay: 0.0,
                decay_norm_and_bias: false,
            }
        );
    }

    #[test]
    fn round_trips_and_reports_changed_fields() {
        let config = parse("[data]\nbatch_size = 8\n", &[]).expect("valid");
        let again = parse(&config.to_toml(), &[]).expect("the resolved config parses");
        assert_eq!(config, again);
        assert_eq!(config.hash(), again.hash());
        let changed = parse("[data]\nbatch_size = 16\n", &["schedule.lr=0.01"]).expect("ok");
        assert_ne!(config.hash(), changed.hash());
        let diff = config.changed_fields(&changed);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(
            diff.iter().any(|d| d == "data.batch_size: 8 -> 16"),
            "{diff:?}"
        );
        assert!(
            diff.iter()
                .any(|d| d.starts_with("schedule.lr: 0.045 -> 0.01")),
            "{diff:?}"
        );
    }
}

#[cfg(test)]
mod preset_tests {
    use super::*;
    use crate::schedule::{Decay, Interval};

    fn preset(name: &str) -> TrainConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs")
            .join(name);
        TrainConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn every_preset_in_configs_parses() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut count = 0;
        for entry in std::fs::read_dir(&folder).expect("configs/") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                TrainConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
                count += 1;
            }
        }
        assert!(count >= 2);
    }

    #[test]
    fn paper_imagenet_is_the_papers_recipe() {
        let config = preset("paper-imagenet.toml");
        assert_eq!(config.model, ModelConfig::default());
        assert_eq!(config.schedule, Schedule::paper_imagenet());
        assert_eq!(
            config.optimizer,
            OptimizerConfig::Sgd {
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
                weight_decay: 1e-5,
                decay_norm_and_bias: false,
            }
        );
        assert_eq!(config.training.ema_decay, Some(0.9999));
        assert_eq!(config.data.eval_crop_pct, 0.875);
    }

    #[test]
    fn paper_jft_is_rmsprop_without_dropout() {
        let config = preset("paper-jft-rmsprop.toml");
        assert!(
            matches!(&config.model, ModelConfig::Xception(model) if model.dropout == 0.0),
            "{:?}",
            config.model
        );
        assert!(
            matches!(config.optimizer, OptimizerConfig::Rmsprop { momentum, .. } if momentum == 0.9)
        );
        assert_eq!(config.schedule.lr, 0.001);
        assert_eq!(
            config.schedule.decay,
            Decay::Staircase {
                rate: 0.9,
                every: Interval::Samples(3_000_000),
            }
        );
    }
}

//! Weight names and layouts of other frameworks: timm's `legacy_xception` and `inception_v3`
//! (PyTorch) and Keras' `applications/xception.py` and `inception_v3.py`. [`slots`] lists, for
//! a configuration, every tensor of the model with its Burn path and its timm and Keras names;
//! [`export`] and [`import`] are the single remapping functions built on it.
//!
//! Layouts: Burn stores convolutions as PyTorch does (`[out, in/groups, kh, kw]`) and linear
//! weights as `[in, out]`. timm's `fc.weight` is `[out, in]`. Keras stores convolution kernels
//! as `[kh, kw, in, out]`, depthwise kernels as `[kh, kw, channels, 1]`, pointwise kernels as
//! `[1, 1, in, out]` and dense kernels as `[in, out]`.
//!
//! Keras leaves the four residual convolutions and their BatchNorms unnamed (`conv2d`,
//! `conv2d_1`, ... and `batch_normalization`, ...); their numbers depend on what the saving
//! session built before, so they are matched by order.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};

use crate::path::ModulePath;

use crate::config::XceptionConfig;
use crate::network::{ModelConfig, Network};

/// A foreign naming and layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// timm's `legacy_xception` state dict (PyTorch layouts).
    Timm,
    /// Keras' Xception weights (TensorFlow layouts).
    Keras,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Timm => "timm",
            Self::Keras => "Keras",
        })
    }
}

/// What a tensor is, which decides its layout in each format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A dense convolution kernel.
    Conv,
    /// A depthwise convolution kernel.
    Depthwise,
    /// A 1x1 convolution kernel.
    Pointwise,
    /// BatchNorm scale.
    Gamma,
    /// The scale of a BatchNorm that has none (Inception V3's): all ones in timm's layout,
    /// absent in Keras'. Its Burn path is the layer's shift, whose shape it has.
    UnitGamma,
    /// BatchNorm shift.
    Beta,
    /// BatchNorm running mean.
    Mean,
    /// BatchNorm running variance.
    Variance,
    /// The classifier's weight matrix.
    DenseWeight,
    /// The classifier's bias.
    DenseBias,
}

/// One tensor of the model under its three names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Path in the Burn module (`entry_flow.0.sepconv1.depthwise.weight`).
    pub burn: String,
    /// Key in timm's `legacy_xception` state dict (`block1.rep.0.conv1.weight`).
    pub timm: String,
    /// Keras `layer/weight` (`block2_sepconv1/depthwise_kernel`); none where Keras' model has
    /// no such tensor (Inception V3's auxiliary classifier).
    pub keras: Option<String>,
    /// What it is.
    pub kind: Kind,
}

impl Slot {
    /// The name in `format`, if the format has the tensor.
    pub fn name(&self, format: Format) -> Option<&str> {
        match format {
            Format::Timm => Some(&self.timm),
            Format::Keras => self.keras.as_deref(),
        }
    }
}

/// Weights that do not fit the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InteropError {
    /// A tensor the model needs is absent.
    #[error("tensor `{0}` is missing")]
    Missing(String),
    /// A tensor has no place in the model.
    #[error("tensor `{0}` has no place in this model (is the model config right?)")]
    Unexpected(String),
    /// A tensor's shape differs from what the model needs.
    #[error("tensor `{key}` has shape {found:?}, the model needs {expected:?}")]
    Shape {
        /// The tensor's name.
        key: String,
        /// The shape the model needs, in the file's layout.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A BatchNorm without scale is given one that is not all ones.
    #[error(
        "tensor `{0}` is a BatchNorm scale that is not all ones, but this model's BatchNorm has no scale (set model.bn_scale = true)"
    )]
    Scaled(String),
    /// A tensor's values are not floats.
    #[error("tensor `{key}`: {reason}")]
    Values {
        /// The tensor's name.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn bn_slots(slots: &mut Vec<Slot>, burn: &str, timm: &str, keras: &str) {
    bn_slots_with(slots, burn, timm, Some(keras), Kind::Gamma);
}

/// A BatchNorm's four tensors; `gamma` is [`Kind::Gamma`], or [`Kind::UnitGamma`] for a
/// layer without scale (whose timm `weight` is all ones, whose Keras layer has no `gamma`);
/// `keras` is `None` where Keras has no such layer.
pub(crate) fn bn_slots_with(
    slots: &mut Vec<Slot>,
    burn: &str,
    timm: &str,
    keras: Option<&str>,
    gamma: Kind,
) {
    for (kind, b, t, k) in [
        (gamma, "gamma", "weight", "gamma"),
        (Kind::Beta, "beta", "bias", "beta"),
        (Kind::Mean, "running_mean", "running_mean", "moving_mean"),
        (
            Kind::Variance,
            "running_var",
            "running_var",
            "moving_variance",
        ),
    ] {
        let unit = kind == Kind::UnitGamma;
        slots.push(Slot {
            burn: format!("{burn}.{}", if unit { "beta" } else { b }),
            timm: format!("{timm}.{t}"),
            keras: keras.filter(|_| !unit).map(|keras| format!("{keras}/{k}")),
            kind,
        });
    }
}

fn conv_bn_slots(slots: &mut Vec<Slot>, burn: &str, timm: (&str, &str), keras: (&str, &str)) {
    slots.push(Slot {
        burn: format!("{burn}.conv.weight"),
        timm: format!("{}.weight", timm.0),
        keras: Some(format!("{}/kernel", keras.0)),
        kind: Kind::Conv,
    });
    bn_slots(slots, &format!("{burn}.bn"), timm.1, keras.1);
}

/// A separable convolution + BN: `timm_sep` names the `SeparableConv2d`, `timm_bn` its BN.
fn sep_slots(slots: &mut Vec<Slot>, burn: &str, timm_sep: &str, timm_bn: &str, keras: &str) {
    slots.push(Slot {
        burn: format!("{burn}.depthwise.weight"),
        timm: format!("{timm_sep}.conv1.weight"),
        keras: Some(format!("{keras}/depthwise_kernel")),
        kind: Kind::Depthwise,
    });
    slots.push(Slot {
        burn: format!("{burn}.pointwise.weight"),
        timm: format!("{timm_sep}.pointwise.weight"),
        keras: Some(format!("{keras}/pointwise_kernel")),
        kind: Kind::Pointwise,
    });
    bn_slots(
        slots,
        &format!("{burn}.bn"),
        timm_bn,
        &format!("{keras}_bn"),
    );
}

/// The name Keras gives the `index`-th unnamed layer of `base` (`conv2d`, `conv2d_1`, ...).
pub(crate) fn keras_unnamed(base: &str, index: usize) -> String {
    if index == 0 {
        base.to_string()
    } else {
        format!("{base}_{index}")
    }
}

/// A downsampling block: timm's `Block` with `rep` indices depending on the leading ReLU.
fn downsample_slots(
    slots: &mut Vec<Slot>,
    burn: &str,
    timm: &str,
    keras_block: usize,
    relu_first: bool,
    residual: Option<usize>,
) {
    let first = usize::from(relu_first);
    for (i, rep) in [first, first + 3].into_iter().enumerate() {
        sep_slots(
            slots,
            &format!("{burn}.sepconv{}", i + 1),
            &format!("{timm}.rep.{rep}"),
            &format!("{timm}.rep.{}", rep + 1),
            &format!("block{keras_block}_sepconv{}", i + 1),
        );
    }
    if let Some(index) = residual {
        conv_bn_slots(
            slots,
            &format!("{burn}.residual"),
            (&format!("{timm}.skip"), &format!("{timm}.skipbn")),
            (
                &keras_unnamed("conv2d", index),
                &keras_unnamed("batch_normalization", index),
            ),
        );
    }
}

/// Every tensor of the model that `config` describes, in the order of the network.
pub fn slots(config: &ModelConfig) -> Vec<Slot> {
    match config {
        ModelConfig::Xception(config) => xception_slots(config),
        ModelConfig::InceptionV3(config) => crate::inception_v3::slots(config),
    }
}

fn xception_slots(config: &XceptionConfig) -> Vec<Slot> {
    let mut slots = Vec::new();
    conv_bn_slots(
        &mut slots,
        "stem.conv1",
        ("conv1", "bn1"),
        ("block1_conv1", "block1_conv1_bn"),
    );
    conv_bn_slots(
        &mut slots,
        "stem.conv2",
        ("conv2", "bn2"),
        ("block1_conv2", "block1_conv2_bn"),
    );
    let mut residuals = 0..;
    let mut next_residual = || {
        config
            .residual
            .then(|| residuals.next().unwrap_or_default())
    };
    for i in 0..3 {
        downsample_slots(
            &mut slots,
            &format!("entry_flow.{i}"),
            &format!("block{}", i + 1),
            i + 2,
            i > 0,
            next_residual(),
        );
    }
    let middle = config.middle_blocks;
    for i in 0..middle {
        for j in 0..3 {
            sep_slots(
                &mut slots,
                &format!("middle_flow.{i}.sepconvs.{j}"),
                &format!("block{}.rep.{}", i + 4, 3 * j + 1),
                &format!("block{}.rep.{}", i + 4, 3 * j + 2),
                &format!("block{}_sepconv{}", i + 5, j + 1),
            );
        }
    }
    downsample_slots(
        &mut slots,
        "exit_block",
        &format!("block{}", middle + 4),
        middle + 5,
        true,
        next_residual(),
    );
    for (i, (timm_sep, timm_bn)) in [("conv3", "bn3"), ("conv4", "bn4")].into_iter().enumerate() {
        sep_slots(
            &mut slots,
            &format!("final_block.sepconv{}", i + 1),
            timm_sep,
            timm_bn,
            &format!("block{}_sepconv{}", middle + 6, i + 1),
        );
    }
    slots.push(Slot {
        burn: "predictions.weight".into(),
        timm: "fc.weight".into(),
        keras: Some("predictions/kernel".into()),
        kind: Kind::DenseWeight,
    });
    slots.push(Slot {
        burn: "predictions.bias".into(),
        timm: "fc.bias".into(),
        keras: Some("predictions/bias".into()),
        kind: Kind::DenseBias,
    });
    slots
}

/// Whether timm's model (`legacy_xception`, `inception_v3`) has exactly this architecture (any
/// number of classes).
pub fn timm_compatible(config: &ModelConfig) -> bool {
    match config {
        ModelConfig::Xception(config) => {
            config.middle_blocks == 8
                && config.width == 1.0
                && config.residual
                && config.mid_activation == crate::MidActivation::None
        }
        ModelConfig::InceptionV3(config) => config.width == 1.0,
    }
}

/// The call that builds timm's model for weights of `config` (strict load).
pub fn timm_create_call(config: &ModelConfig) -> String {
    let classes = config.num_classes();
    match config {
        ModelConfig::Xception(_) => {
            format!("timm.create_model('legacy_xception', num_classes={classes})")
        }
        ModelConfig::InceptionV3(c) => format!(
            "timm.create_model('inception_v3', num_classes={classes}{})",
            if c.aux_logits {
                ", aux_logits=True"
            } else {
                ""
            }
        ),
    }
}

/// `[a, b, c, d]` permuted so that output axis `i` is input axis `order[i]`.
fn permute(values: &[f32], shape: &[usize], order: [usize; 4]) -> (Vec<f32>, Vec<usize>) {
    let out_shape: Vec<usize> = order.iter().map(|&axis| shape[axis]).collect();
    let mut in_strides = [0usize; 4];
    let mut stride = 1;
    for axis in (0..4).rev() {
        in_strides[axis] = stride;
        stride *= shape[axis];
    }
    let mut out = Vec::with_capacity(values.len());
    for a in 0..out_shape[0] {
        for b in 0..out_shape[1] {
            for c in 0..out_shape[2] {
                for d in 0..out_shape[3] {
                    let index = a * in_strides[order[0]]
                        + b * in_strides[order[1]]
                        + c * in_strides[order[2]]
                        + d * in_strides[order[3]];
                    out.push(values[index]);
                }
            }
        }
    }
    (out, out_shape)
}

fn transpose2(values: &[f32], shape: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let (rows, cols) = (shape[0], shape[1]);
    let mut out = Vec::with_capacity(values.len());
    for c in 0..cols {
        for r in 0..rows {
            out.push(values[r * cols + c]);
        }
    }
    (out, vec![cols, rows])
}

/// A Burn-layout tensor in `format`'s layout.
pub fn to_format(
    format: Format,
    kind: Kind,
    values: &[f32],
    shape: &[usize],
) -> (Vec<f32>, Vec<usize>) {
    match (format, kind) {
        (Format::Timm, Kind::DenseWeight) => transpose2(values, shape),
        // [out, in/g, kh, kw] -> [kh, kw, in/g, out] (a depthwise [c, 1, kh, kw] needs
        // [kh, kw, c, 1]: the same axes in a different order).
        (Format::Keras, Kind::Conv | Kind::Pointwise) => permute(values, shape, [2, 3, 1, 0]),
        (Format::Keras, Kind::Depthwise) => permute(values, shape, [2, 3, 0, 1]),
        _ => (values.to_vec(), shape.to_vec()),
    }
}

/// A `format`-layout tensor in Burn's layout.
pub fn from_format(
    format: Format,
    kind: Kind,
    values: &[f32],
    shape: &[usize],
) -> (Vec<f32>, Vec<usize>) {
    match (format, kind) {
        (Format::Timm, Kind::DenseWeight) => transpose2(values, shape),
        (Format::Keras, Kind::Conv | Kind::Pointwise) => permute(values, shape, [3, 2, 0, 1]),
        (Format::Keras, Kind::Depthwise) => permute(values, shape, [2, 3, 0, 1]),
        _ => (values.to_vec(), shape.to_vec()),
    }
}

/// The shape a tensor has in `format`, given its Burn shape.
fn format_shape(format: Format, kind: Kind, shape: &[usize]) -> Vec<usize> {
    match (format, kind) {
        (Format::Timm, Kind::DenseWeight) => vec![shape[1], shape[0]],
        (Format::Keras, Kind::Conv | Kind::Pointwise) => {
            vec![shape[2], shape[3], shape[1], shape[0]]
        }
        (Format::Keras, Kind::Depthwise) => vec![shape[2], shape[3], shape[0], shape[1]],
        _ => shape.to_vec(),
    }
}

/// Every float tensor of a module by path, as host data.
#[derive(Default)]
struct Gather {
    path: ModulePath,
    tensors: BTreeMap<String, TensorData>,
}

impl ModuleVisitor for Gather {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let data = param.val().into_data().convert::<f32>();
        self.tensors.insert(self.path.current(), data);
    }
}

/// Every float tensor's shape by path, read without touching (or initialising) the values.
#[derive(Default)]
struct Shapes {
    path: ModulePath,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl ModuleVisitor for Shapes {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.shapes
            .insert(self.path.current(), param.lazy_shape().to_vec());
    }
}

/// The shape of every float tensor of a module (parameters and BatchNorm statistics) by
/// Burn path, without reading any values.
pub fn shapes_by_path<M: Module>(model: &M) -> BTreeMap<String, Vec<usize>> {
    let mut shapes = Shapes::default();
    model.visit(&mut shapes);
    shapes.shapes
}

/// Replaces float tensors by path, keeping each parameter's id and gradient requirement.
struct Replace {
    path: ModulePath,
    tensors: BTreeMap<String, TensorData>,
}

impl ModuleMapper for Replace {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(data) = self.tensors.remove(&self.path.current()) else {
            return param;
        };
        param.map(|tensor| {
            let require_grad = tensor.is_require_grad();
            let replaced = Tensor::<D>::from_data(data, &tensor.device());
            if require_grad {
                replaced.require_grad()
            } else {
                replaced
            }
        })
    }
}

fn values_of(key: &str, data: &TensorData) -> Result<Vec<f32>, InteropError> {
    data.clone()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| InteropError::Values {
            key: key.to_string(),
            reason: format!("{e:?}"),
        })
}

/// The model's tensors under `format`'s names and layouts, in network order (tensors the
/// format has no name for are left out).
pub fn export(model: &Network, config: &ModelConfig, format: Format) -> Vec<(String, TensorData)> {
    let mut gather = Gather::default();
    model.visit(&mut gather);
    slots(config)
        .into_iter()
        .filter_map(|slot| {
            let name = slot.name(format)?.to_string();
            if slot.kind == Kind::UnitGamma {
                // Shaped like the shift (its Burn path), which its own slot takes later.
                let shape = gather.tensors.get(&slot.burn)?.shape().to_vec();
                let ones = vec![1f32; shape.iter().product()];
                return Some((name, TensorData::new(ones, shape)));
            }
            let data = gather.tensors.remove(&slot.burn)?;
            let shape = data.shape().to_vec();
            let values = data.try_into_vec::<f32>().ok()?;
            let (values, shape) = to_format(format, slot.kind, &values, &shape);
            Some((name, TensorData::new(values, shape)))
        })
        .collect()
}

/// Renames Keras' unnamed layers (`conv2d_7`, `batch_normalization_12`, ...) to the names a
/// fresh session gives them (`conv2d`, `conv2d_1`, ...), keeping their order.
fn canonical_keras_names(tensors: BTreeMap<String, TensorData>) -> BTreeMap<String, TensorData> {
    let mut renamed = BTreeMap::new();
    let mut unnamed: BTreeMap<&str, Vec<(usize, String)>> = BTreeMap::new();
    for key in tensors.keys() {
        let layer = key.split('/').next().unwrap_or_default();
        for base in ["conv2d", "batch_normalization"] {
            let number = if layer == base {
                Some(0)
            } else {
                layer
                    .strip_prefix(base)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .and_then(|n| n.parse::<usize>().ok())
            };
            if let Some(number) = number {
                let list = unnamed.entry(base).or_default();
                if !list.iter().any(|(_, l)| l == layer) {
                    list.push((number, layer.to_string()));
                }
            }
        }
    }
    let mut rename: BTreeMap<String, String> = BTreeMap::new();
    for (base, mut layers) in unnamed {
        layers.sort();
        for (index, (_, layer)) in layers.into_iter().enumerate() {
            rename.insert(layer, keras_unnamed(base, index));
        }
    }
    for (key, data) in tensors {
        let key = key.trim_end_matches(":0").to_string();
        let (layer, weight) = key.split_once('/').unwrap_or((key.as_str(), ""));
        let layer = rename.get(layer).map_or(layer, String::as_str);
        renamed.insert(format!("{layer}/{weight}"), data);
    }
    renamed
}

/// Loads `tensors` (named and laid out as `format`) into `model`, which `config` describes.
/// Every tensor the model needs must be there with the right shape, and nothing else
/// (timm's `num_batches_tracked` counters excepted); tensors the format has no name for (the
/// auxiliary classifier in Keras' files) keep their values.
pub fn import(
    model: Network,
    config: &ModelConfig,
    format: Format,
    tensors: BTreeMap<String, TensorData>,
) -> Result<Network, InteropError> {
    let mut tensors = match format {
        Format::Keras => canonical_keras_names(tensors),
        Format::Timm => tensors
            .into_iter()
            .filter(|(key, _)| !key.ends_with("num_batches_tracked"))
            .collect(),
    };
    let shapes = shapes_by_path(&model);
    let mut burn = BTreeMap::new();
    for slot in slots(config) {
        let Some(key) = slot.name(format).map(str::to_string) else {
            continue;
        };
        let data = tensors
            .remove(&key)
            .ok_or_else(|| InteropError::Missing(key.clone()))?;
        let Some(target) = shapes.get(&slot.burn) else {
            continue;
        };
        let expected = format_shape(format, slot.kind, target);
        if data.shape().to_vec() != expected {
            return Err(InteropError::Shape {
                key,
                expected,
                found: data.shape().to_vec(),
            });
        }
        let values = values_of(&key, &data)?;
        if slot.kind == Kind::UnitGamma {
            if values.iter().any(|&v| v != 1.0) {
                return Err(InteropError::Scaled(key));
            }
            continue;
        }
        let (values, shape) = from_format(format, slot.kind, &values, &expected);
        burn.insert(slot.burn, TensorData::new(values, shape));
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(InteropError::Unexpected(extra.clone()));
    }
    let mut replace = Replace {
        path: ModulePath::default(),
        tensors: burn,
    };
    Ok(model.map(&mut replace))
}

/// Replaces the tensors of `model` named (by Burn path) in `tensors`, checking each shape;
/// parameters not named keep their values.
pub fn assign(
    model: Network,
    tensors: BTreeMap<String, TensorData>,
) -> Result<Network, InteropError> {
    let current = shapes_by_path(&model);
    for (path, data) in &tensors {
        let target = current
            .get(path)
            .ok_or_else(|| InteropError::Unexpected(path.clone()))?;
        if target.as_slice() != data.shape().as_ref() {
            return Err(InteropError::Shape {
                key: path.clone(),
                expected: target.clone(),
                found: data.shape().to_vec(),
            });
        }
    }
    let mut replace = Replace {
        path: ModulePath::default(),
        tensors,
    };
    Ok(model.map(&mut replace))
}

/// The model's float tensors by Burn path (for tests and for reading a module back).
pub fn tensors_by_path<M: Module>(model: &M) -> BTreeMap<String, TensorData> {
    let mut gather = Gather::default();
    model.visit(&mut gather);
    gather.tensors
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::tensor::Device;

    fn small() -> ModelConfig {
        ModelConfig::Xception(XceptionConfig {
            num_classes: 7,
            input_size: 71,
            width: 0.125,
            middle_blocks: 2,
            ..XceptionConfig::default()
        })
    }

    /// `config`'s timm export, name by name, against a `scripts/timm_keys.py` fixture (timm's
    /// state dict without its `num_batches_tracked` counters).
    pub(crate) fn assert_timm_names_and_shapes(config: &ModelConfig, fixture: &str) {
        let model = Network::new(config, &Device::flex()).expect("model");
        let exported: BTreeMap<String, Vec<usize>> = export(&model, config, Format::Timm)
            .into_iter()
            .map(|(name, data)| (name, data.shape().to_vec()))
            .collect();
        let mut expected = BTreeMap::new();
        for line in fixture.lines().filter(|l| !l.starts_with('#')) {
            let (key, shape) = line.split_once(' ').expect("key shape");
            if key.ends_with("num_batches_tracked") {
                continue;
            }
            let shape: Vec<usize> = shape.split('x').map(|d| d.parse().expect("dim")).collect();
            expected.insert(key.to_string(), shape);
        }
        assert_eq!(exported, expected);
    }

    #[test]
    fn timm_names_and_shapes_are_legacy_xceptions() {
        let config = ModelConfig::default();
        let fixture = include_str!("../tests/fixtures/timm_legacy_xception_keys.txt");
        assert_timm_names_and_shapes(&config, fixture);
        assert!(timm_compatible(&config));
        assert!(!timm_compatible(&small()));
    }

    #[test]
    fn export_then_import_gives_the_same_tensors_in_both_formats() {
        let config = small();
        let device = Device::flex();
        let source = Network::new(&config, &device).expect("model");
        let original = tensors_by_path(&source);
        for format in [Format::Timm, Format::Keras] {
            let exported: BTreeMap<String, TensorData> =
                export(&source, &config, format).into_iter().collect();
            assert_eq!(exported.len(), original.len(), "{format:?}");
            let fresh = Network::new(&config, &device).expect("model");
            let imported = import(fresh, &config, format, exported).expect("fits");
            assert_eq!(tensors_by_path(&imported), original, "{format:?}");
        }
    }

    #[test]
    fn keras_layouts_and_unnamed_layers_by_order() {
        let config = small();
        let device = Device::flex();
        let source = Network::new(&config, &device).expect("model");
        let exported: BTreeMap<String, TensorData> = export(&source, &config, Format::Keras)
            .into_iter()
            .collect();
        // HWIO: the stem's first kernel is [3, 3, 3, channels].
        assert_eq!(
            exported["block1_conv1/kernel"].shape().to_vec(),
            [3, 3, 3, 4]
        );
        assert_eq!(
            exported["block2_sepconv1/depthwise_kernel"]
                .shape()
                .to_vec(),
            [3, 3, 8, 1]
        );
        assert_eq!(exported["predictions/kernel"].shape().to_vec(), [256, 7]);
        // Element [o, i, y, x] of Burn's kernel is element [y, x, i, o] of Keras'.
        let burn = tensors_by_path(&source)["stem.conv2.conv.weight"].clone();
        let keras = exported["block1_conv2/kernel"].clone();
        let (b, k): (Vec<f32>, Vec<f32>) =
            (burn.iter::<f32>().collect(), keras.iter::<f32>().collect());
        let (o, i, y, x) = (5, 3, 2, 1);
        let [_, ci, kh, kw] = [8, 4, 3, 3];
        let co = 8;
        assert_eq!(
            b[((o * ci + i) * kh + y) * kw + x],
            k[((y * kw + x) * ci + i) * co + o]
        );

        // A file saved after other layers were built numbers the unnamed layers differently,
        // with ":0" suffixes (Keras 2's h5): matched by order all the same.
        let renamed: BTreeMap<String, TensorData> = exported
            .into_iter()
            .map(|(key, data)| {
                let (layer, weight) = key.split_once('/').expect("layer/weight");
                let layer = match layer {
                    "conv2d" => "conv2d_5".to_string(),
                    "batch_normalization" => "batch_normalization_5".to_string(),
                    other => match other.strip_prefix("conv2d_") {
                        Some(n) => format!("conv2d_{}", n.parse::<usize>().expect("n") + 5),
                        None => match other.strip_prefix("batch_normalization_") {
                            Some(n) => format!(
                                "batch_normalization_{}",
                                n.parse::<usize>().expect("n") + 5
                            ),
                            None => other.to_string(),
                        },
                    },
                };
                (format!("{layer}/{weight}:0"), data)
            })
            .collect();
        let imported = import(
            Network::new(&config, &device).expect("model"),
            &config,
            Format::Keras,
            renamed,
        )
        .expect("fits");
        assert_eq!(tensors_by_path(&imported), tensors_by_path(&source));
    }

    #[test]
    fn missing_extra_and_misshaped_tensors_name_the_key() {
        let config = small();
        let device = Device::flex();
        let source = Network::new(&config, &device).expect("model");
        let exported: BTreeMap<String, TensorData> =
            export(&source, &config, Format::Timm).into_iter().collect();
        let fresh = || Network::new(&config, &device).expect("model");

        let mut missing = exported.clone();
        missing.remove("block2.skipbn.running_var");
        let error = import(fresh(), &config, Format::Timm, missing).expect_err("missing");
        assert_eq!(
            error,
            InteropError::Missing("block2.skipbn.running_var".into())
        );

        let mut extra = exported.clone();
        extra.insert("head.fc.weight".into(), TensorData::new(vec![0f32; 2], [2]));
        let error = import(fresh(), &config, Format::Timm, extra).expect_err("extra");
        assert_eq!(error, InteropError::Unexpected("head.fc.weight".into()));

        let mut shaped = exported;
        shaped.insert("fc.bias".into(), TensorData::new(vec![0f32; 1000], [1000]));
        let error = import(fresh(), &config, Format::Timm, shaped)
            .expect_err("shape")
            .to_string();
        assert!(
            error.contains("fc.bias") && error.contains("[1000]") && error.contains("[7]"),
            "{error}"
        );
    }
}

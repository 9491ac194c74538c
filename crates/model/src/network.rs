//! What the rest of the project knows of a model: [`ModelConfig`] (the `[model]` table, whose
//! `arch` field picks the architecture) and [`Network`] (the module). Adding an architecture
//! means a module of this crate and a variant of each enum here; the training loop, the data
//! pipeline and the command line only ever see these two types.

use burn::module::Module;
use burn::store::{ApplyResult, ModuleSnapshot, ModuleStore};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{ConfigError, XceptionConfig};
use crate::inception_v3::{InceptionV3, InceptionV3Config};
use crate::xception::{ParamCounts, Xception};

/// The architectures, by their `model.arch` names.
pub const ARCHITECTURES: [&str; 2] = ["xception", "inception_v3"];

/// A model's configuration: which architecture, and its fields.
///
/// In TOML, the `[model]` table with an `arch` field (`"xception"`, the default, or
/// `"inception_v3"`); the other fields are the architecture's, and a field that does not apply
/// to it is refused by name. Xception's table is written without `arch`, as before there was a
/// choice, so its configs and their hashes stay as they were.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// The paper's model and its ablations.
    Xception(XceptionConfig),
    /// The paper's baseline, Keras' Inception V3.
    InceptionV3(InceptionV3Config),
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self::Xception(XceptionConfig::default())
    }
}

impl From<XceptionConfig> for ModelConfig {
    fn from(config: XceptionConfig) -> Self {
        Self::Xception(config)
    }
}

impl From<&XceptionConfig> for ModelConfig {
    fn from(config: &XceptionConfig) -> Self {
        Self::Xception(config.clone())
    }
}

impl From<InceptionV3Config> for ModelConfig {
    fn from(config: InceptionV3Config) -> Self {
        Self::InceptionV3(config)
    }
}

impl From<&ModelConfig> for ModelConfig {
    fn from(config: &ModelConfig) -> Self {
        config.clone()
    }
}

impl ModelConfig {
    /// The `model.arch` name.
    pub fn arch(&self) -> &'static str {
        match self {
            Self::Xception(_) => ARCHITECTURES[0],
            Self::InceptionV3(_) => ARCHITECTURES[1],
        }
    }

    /// The architecture's name in prose.
    pub fn display_name(&self) -> &'static str {
        match self {
            Self::Xception(_) => "Xception",
            Self::InceptionV3(_) => "Inception V3",
        }
    }

    /// The architecture and its fields in one line, as `xception info` heads its table.
    pub fn describe(&self) -> String {
        match self {
            Self::Xception(c) => format!(
                "Xception: {} classes, {}x{} input, residual {}, mid activation {}, {} middle \
                 blocks, width {}, dropout {}",
                c.num_classes,
                c.input_size,
                c.input_size,
                c.residual,
                format!("{:?}", c.mid_activation).to_lowercase(),
                c.middle_blocks,
                c.width,
                c.dropout
            ),
            Self::InceptionV3(c) => format!(
                "Inception V3: {} classes, {}x{} input, width {}, dropout {}, BatchNorm scale {}, \
                 auxiliary classifier {}",
                c.num_classes,
                c.input_size,
                c.input_size,
                c.width,
                c.dropout,
                c.bn_scale,
                if c.aux_logits {
                    format!("weight {}", c.aux_loss_weight)
                } else {
                    "none".to_string()
                }
            ),
        }
    }

    /// What the summary's convolution count leaves out, in words (empty when nothing).
    pub fn conv_layers_note(&self) -> &'static str {
        match self {
            Self::Xception(_) => "  (plus the residual 1x1 convolutions)",
            Self::InceptionV3(_) => "",
        }
    }

    /// Checks that the configuration describes a network that can be built and run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::Xception(config) => config.validate(),
            Self::InceptionV3(config) => config.validate(),
        }
    }

    /// Number of output classes.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::Xception(config) => config.num_classes,
            Self::InceptionV3(config) => config.num_classes,
        }
    }

    /// The same model with `classes` outputs.
    pub fn with_num_classes(&self, classes: usize) -> Self {
        let mut config = self.clone();
        match &mut config {
            Self::Xception(config) => config.num_classes = classes,
            Self::InceptionV3(config) => config.num_classes = classes,
        }
        config
    }

    /// The same model for `size` x `size` inputs.
    pub fn with_input_size(&self, size: usize) -> Self {
        let mut config = self.clone();
        match &mut config {
            Self::Xception(config) => config.input_size = size,
            Self::InceptionV3(config) => config.input_size = size,
        }
        config
    }

    /// Side of the square input.
    pub fn input_size(&self) -> usize {
        match self {
            Self::Xception(config) => config.input_size,
            Self::InceptionV3(config) => config.input_size,
        }
    }

    /// The published architecture (defaults) with this configuration's classes: what a
    /// foreign weights file without metadata is taken to hold.
    pub fn published(arch: &str, classes: usize) -> Option<Self> {
        let config = match arch {
            "xception" => Self::Xception(XceptionConfig::default()),
            "inception_v3" => Self::InceptionV3(InceptionV3Config::default()),
            _ => return None,
        };
        Some(config.with_num_classes(classes))
    }

    /// The fields that change the network's feature extractor (not its classifiers or its
    /// training), for comparing an `init_from` checkpoint's model with this one.
    pub fn shape_fields(&self) -> String {
        match self {
            Self::Xception(c) => format!(
                "xception width {} middle_blocks {} residual {} mid_activation {:?}",
                c.width, c.middle_blocks, c.residual, c.mid_activation
            ),
            Self::InceptionV3(c) => {
                format!("inception_v3 width {} bn_scale {}", c.width, c.bn_scale)
            }
        }
    }

    /// Path prefixes of the layers whose shape follows `num_classes` (the classifiers).
    pub fn classifier_paths(&self) -> &'static [&'static str] {
        match self {
            Self::Xception(_) => &["predictions."],
            Self::InceptionV3(_) => &["fc.", "aux_logits.fc."],
        }
    }

    /// Whether the network has an auxiliary classifier.
    pub fn has_aux(&self) -> bool {
        matches!(self, Self::InceptionV3(config) if config.aux_logits)
    }

    /// Path prefix of the auxiliary classifier, when the architecture can have one.
    pub fn aux_path(&self) -> Option<&'static str> {
        match self {
            Self::Xception(_) => None,
            Self::InceptionV3(_) => Some("aux_logits."),
        }
    }

    /// Weight of the auxiliary classifier's loss, when the network has one.
    pub fn aux_loss_weight(&self) -> Option<f64> {
        match self {
            Self::InceptionV3(config) if config.aux_logits => Some(config.aux_loss_weight),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct Tagged<'a, T> {
    arch: &'static str,
    #[serde(flatten)]
    config: &'a T,
}

impl Serialize for ModelConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Xception(config) => config.serialize(serializer),
            Self::InceptionV3(config) => Tagged {
                arch: self.arch(),
                config,
            }
            .serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Through a TOML value (it keeps NaN and infinities, which the checks then name), and
        // the architecture's own struct read with its field path, so that a wrong type names
        // the field (`width: invalid type ...`) although the table is read in two steps.
        let mut table = match toml::Value::deserialize(deserializer)? {
            toml::Value::Table(table) => table,
            other => return Err(D::Error::custom(format!("expected a table, got {other}"))),
        };
        let arch = match table.remove("arch") {
            None => ARCHITECTURES[0].to_string(),
            Some(toml::Value::String(arch)) => arch,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "arch: expected a string, one of {ARCHITECTURES:?}, got {other}"
                )));
            }
        };
        let fields = toml::Value::Table(table);
        let in_arch = |e: serde_path_to_error::Error<toml::de::Error>| {
            let path = e.path().to_string();
            let at = if path == "." {
                String::new()
            } else {
                format!("{path}: ")
            };
            let message = e.into_inner().to_string();
            D::Error::custom(format!("{at}{} (arch = {arch:?})", message.trim_end()))
        };
        match arch.as_str() {
            "xception" => serde_path_to_error::deserialize(fields)
                .map(Self::Xception)
                .map_err(in_arch),
            "inception_v3" => serde_path_to_error::deserialize(fields)
                .map(Self::InceptionV3)
                .map_err(in_arch),
            other => Err(D::Error::custom(format!(
                "unknown arch {other:?}, expected one of {ARCHITECTURES:?}"
            ))),
        }
    }
}

/// A network of any architecture: what training, evaluation, prediction and the weight files
/// work with.
// Inception V3's module tree is 47 KB of handles, Xception's 5 KB: a network is moved a few
// times per training step (into the optimizer and back), where a copy of that size is noise.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    /// Xception.
    Xception(Xception),
    /// Inception V3.
    InceptionV3(InceptionV3),
}

impl Network {
    /// Builds a freshly initialised network on `device`.
    pub fn new(config: &ModelConfig, device: &Device) -> Result<Self, ConfigError> {
        Ok(match config {
            ModelConfig::Xception(config) => Self::Xception(Xception::new(config, device)?),
            ModelConfig::InceptionV3(config) => {
                Self::InceptionV3(InceptionV3::new(config, device)?)
            }
        })
    }

    /// Logits `[N, num_classes]` for images `[N, 3, H, W]` scaled to `[-1, 1]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Self::Xception(model) => model.forward(images),
            Self::InceptionV3(model) => model.forward(images),
        }
    }

    /// The logits and, for a network with an auxiliary classifier, its logits (for the
    /// training loss).
    pub fn forward_with_aux(&self, images: Tensor<4>) -> (Tensor<2>, Option<Tensor<2>>) {
        match self {
            Self::Xception(model) => (model.forward(images), None),
            Self::InceptionV3(model) => model.forward_with_aux(images),
        }
    }

    /// The last feature map, before pooling.
    pub fn forward_features(&self, images: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Xception(model) => model.forward_features(images),
            Self::InceptionV3(model) => model.forward_features(images),
        }
    }

    /// Like [`Self::forward_features`], calling `observe` with each block's Keras name and
    /// output.
    pub fn forward_features_traced(
        &self,
        images: Tensor<4>,
        observe: impl FnMut(&str, &Tensor<4>),
    ) -> Tensor<4> {
        match self {
            Self::Xception(model) => model.forward_features_traced(images, observe),
            Self::InceptionV3(model) => model.forward_features_traced(images, observe),
        }
    }

    /// Global average pooling, dropout and the classifier.
    pub fn classify(&self, features: Tensor<4>) -> Tensor<2> {
        match self {
            Self::Xception(model) => model.classify(features),
            Self::InceptionV3(model) => model.classify(features),
        }
    }

    /// Every BatchNorm folded into the convolution before it (inference mode: the same
    /// logits within float rounding, one pass less per layer), for `eval` and `predict`. A
    /// folded network must not be trained or written to a file.
    pub fn folded(self) -> Self {
        match self {
            Self::Xception(model) => Self::Xception(model.folded()),
            Self::InceptionV3(model) => Self::InceptionV3(model.folded()),
        }
    }

    /// Parameter counts, split as Keras splits them.
    pub fn param_counts(&self) -> ParamCounts {
        crate::xception::param_counts(self)
    }

    /// Parameter counts of every block of the feature extractor, keyed by Keras block name
    /// (checks the analytic summary against the real module).
    pub fn block_param_counts(&self) -> Vec<(String, ParamCounts)> {
        match self {
            Self::Xception(model) => crate::xception::block_param_counts(model),
            Self::InceptionV3(model) => model
                .blocks()
                .into_iter()
                .map(|(name, block)| (name.to_string(), block.counts()))
                .collect(),
        }
    }
}

impl Network {
    /// Writes the weights into a Burn store under the architecture's own paths (the enum adds
    /// no prefix, so an Xception file reads as it did before there was a choice).
    pub fn save_weights<S: ModuleStore>(&self, store: &mut S) -> Result<(), S::Error> {
        match self {
            Self::Xception(model) => model.save_into(store),
            Self::InceptionV3(model) => model.save_into(store),
        }
    }

    /// Reads the weights from a Burn store written by [`Self::save_weights`].
    pub fn load_weights<S: ModuleStore>(&mut self, store: &mut S) -> Result<ApplyResult, S::Error> {
        match self {
            Self::Xception(model) => model.load_from(store),
            Self::InceptionV3(model) => model.load_from(store),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn arch_picks_the_architecture_and_xception_is_the_default() {
        assert_eq!(
            parse("num_classes = 7"),
            Ok(ModelConfig::published("xception", 7).expect("known"))
        );
        let inception = parse("arch = \"inception_v3\"\naux_logits = true").expect("valid");
        assert!(inception.has_aux());
        assert_eq!(inception.arch(), "inception_v3");
        let error = parse("arch = \"resnet\"").expect_err("unknown");
        assert!(
            error.contains("resnet") && error.contains("inception_v3"),
            "{error}"
        );
    }

    #[test]
    fn a_field_of_the_other_architecture_or_of_the_wrong_type_is_named() {
        let error = parse("arch = \"inception_v3\"\nresidual = false").expect_err("Xception's");
        assert!(
            error.contains("residual") && error.contains("inception_v3"),
            "{error}"
        );
        let error = parse("aux_logits = true").expect_err("Inception V3's");
        assert!(
            error.contains("aux_logits") && error.contains("xception"),
            "{error}"
        );
        let error = parse("width = \"wide\"").expect_err("a string");
        assert!(error.contains("width: invalid type"), "{error}");
        let nan = parse("width = nan").expect("NaN deserialises; the checks refuse it");
        assert_eq!(nan.validate().map_err(|e| e.field()), Err("model.width"));
    }

    #[test]
    fn both_architectures_round_trip_through_toml_and_json_and_xception_omits_arch() {
        let inception = ModelConfig::InceptionV3(InceptionV3Config {
            num_classes: 3,
            aux_logits: true,
            ..Default::default()
        });
        for config in [ModelConfig::default(), inception] {
            let text = toml::to_string(&config).expect("TOML");
            assert_eq!(text.contains("arch"), config.arch() != "xception", "{text}");
            assert_eq!(
                toml::from_str::<ModelConfig>(&text).expect("read back"),
                config
            );
            let json = serde_json::to_string(&config).expect("JSON");
            assert_eq!(
                serde_json::from_str::<ModelConfig>(&json).expect("read back"),
                config
            );
        }
    }
}

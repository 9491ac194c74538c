//! The model's configuration: the paper's Xception by default, its ablations as fields.

use serde::{Deserialize, Serialize};

/// Smallest input side Keras' `applications.Xception` accepts; below it the exit flow would
/// shrink to nothing.
pub const MIN_INPUT_SIZE: usize = 71;

/// The non-linearity between the depthwise and the pointwise convolution of every separable
/// convolution (paper, section 4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MidActivation {
    /// No activation: the paper's choice, and the best in its ablation.
    #[default]
    None,
    /// ReLU between depthwise and pointwise.
    Relu,
    /// ELU (alpha 1) between depthwise and pointwise.
    Elu,
}

/// Everything that shapes an Xception network. The defaults are the paper's ImageNet model.
///
/// Serialises as the `[model]` table of a TOML config; unknown fields are rejected so a typo
/// never silently trains the default model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XceptionConfig {
    /// Number of output classes.
    pub num_classes: usize,
    /// Side of the square input image, in pixels (71 or more, as in Keras).
    pub input_size: usize,
    /// Residual connections around every block after the stem (paper, section 4.6).
    pub residual: bool,
    /// Activation between depthwise and pointwise convolutions (paper, section 4.7).
    pub mid_activation: MidActivation,
    /// Number of blocks in the middle flow (8 in the paper).
    pub middle_blocks: usize,
    /// Multiplier on every layer's channel count (1.0 is the paper's width). Channels are
    /// rounded to the nearest integer, and never fall below 1.
    pub width: f64,
    /// Dropout probability before the classifier, active only in training (0.5 in the paper
    /// for ImageNet, none for JFT).
    pub dropout: f64,
    /// BatchNorm's momentum in Keras' convention: the weight of the running statistics in
    /// each update (`running = momentum * running + (1 - momentum) * batch`), which average
    /// over about `1 / (1 - momentum)` steps. The paper's 0.99 (100 steps) suits ImageNet's
    /// thousands of steps per epoch; a short run whose weights still change fast evaluates
    /// on stale statistics unless it is lower.
    pub bn_momentum: f64,
}

impl Default for XceptionConfig {
    fn default() -> Self {
        Self {
            num_classes: 1000,
            input_size: 299,
            residual: true,
            mid_activation: MidActivation::None,
            middle_blocks: 8,
            width: 1.0,
            dropout: 0.5,
            bn_momentum: 0.99,
        }
    }
}

/// A configuration that cannot describe a working network.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `model.num_classes` is zero.
    #[error("model.num_classes must be at least 1, got {0}")]
    NoClasses(usize),
    /// `model.input_size` is below the architecture's minimum.
    #[error(
        "model.input_size must be at least {minimum} for this architecture (as in Keras), got {got}"
    )]
    InputTooSmall {
        /// The architecture's smallest input.
        minimum: usize,
        /// The configured size.
        got: usize,
    },
    /// `model.width` is not a positive finite number.
    #[error("model.width must be a positive finite number, got {0}")]
    BadWidth(f64),
    /// `model.dropout` is not a probability below 1.
    #[error("model.dropout must be in [0, 1), got {0}")]
    BadDropout(f64),
    /// `model.bn_momentum` is not in [0, 1).
    #[error(
        "model.bn_momentum must be in [0, 1) (Keras' convention: 0.99 keeps 99% of the running statistics each step), got {0}"
    )]
    BadBnMomentum(f64),
    /// `model.aux_loss_weight` is negative or not finite.
    #[error("model.aux_loss_weight must be a finite number >= 0, got {0}")]
    BadAuxWeight(f64),
    /// The auxiliary classifier does not fit the input size.
    #[error(
        "model.aux_logits needs a 17x17 or larger grid after mixed7 (input 299 or more, as in timm); model.input_size {input_size} gives {grid}x{grid}"
    )]
    AuxTooSmall {
        /// The configured input size.
        input_size: usize,
        /// The grid it gives.
        grid: usize,
    },
}

impl ConfigError {
    /// The config path of the offending field, e.g. `model.input_size`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::NoClasses(_) => "model.num_classes",
            Self::InputTooSmall { .. } => "model.input_size",
            Self::BadWidth(_) => "model.width",
            Self::BadDropout(_) => "model.dropout",
            Self::BadBnMomentum(_) => "model.bn_momentum",
            Self::BadAuxWeight(_) => "model.aux_loss_weight",
            Self::AuxTooSmall { .. } => "model.aux_logits",
        }
    }
}

/// The fields every architecture has, checked alike.
pub(crate) struct CommonFields {
    pub num_classes: usize,
    pub input_size: usize,
    /// The architecture's smallest input side.
    pub min_input_size: usize,
    pub width: f64,
    pub dropout: f64,
    pub bn_momentum: f64,
}

impl CommonFields {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let probability = |p: f64| p.is_finite() && (0.0..1.0).contains(&p);
        if self.num_classes == 0 {
            return Err(ConfigError::NoClasses(self.num_classes));
        }
        if self.input_size < self.min_input_size {
            return Err(ConfigError::InputTooSmall {
                minimum: self.min_input_size,
                got: self.input_size,
            });
        }
        if !(self.width.is_finite() && self.width > 0.0) {
            return Err(ConfigError::BadWidth(self.width));
        }
        if !probability(self.dropout) {
            return Err(ConfigError::BadDropout(self.dropout));
        }
        if !probability(self.bn_momentum) {
            return Err(ConfigError::BadBnMomentum(self.bn_momentum));
        }
        Ok(())
    }
}

impl XceptionConfig {
    /// Checks that the configuration describes a network that can be built and run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        CommonFields {
            num_classes: self.num_classes,
            input_size: self.input_size,
            min_input_size: MIN_INPUT_SIZE,
            width: self.width,
            dropout: self.dropout,
            bn_momentum: self.bn_momentum,
        }
        .validate()
    }

    /// A layer's channel count at this configuration's width.
    pub fn channels(&self, paper_channels: usize) -> usize {
        ((paper_channels as f64 * self.width).round() as usize).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers_imagenet_model() {
        let config = XceptionConfig::default();
        assert_eq!(config.num_classes, 1000);
        assert_eq!(config.input_size, 299);
        assert!(config.residual);
        assert_eq!(config.mid_activation, MidActivation::None);
        assert_eq!(config.middle_blocks, 8);
        assert_eq!(config.width, 1.0);
        assert_eq!(config.dropout, 0.5);
        assert_eq!(config.bn_momentum, 0.99);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn reads_every_field_from_toml_and_fills_the_rest_with_defaults() {
        let config: XceptionConfig = toml::from_str(
            "num_classes = 10\ninput_size = 96\nresidual = false\nmid_activation = \"elu\"\n\
             middle_blocks = 2\nwidth = 0.25\ndropout = 0.0\nbn_momentum = 0.9\n",
        )
        .expect("valid config");
        assert_eq!(
            config,
            XceptionConfig {
                num_classes: 10,
                input_size: 96,
                residual: false,
                mid_activation: MidActivation::Elu,
                middle_blocks: 2,
                width: 0.25,
                dropout: 0.0,
                bn_momentum: 0.9,
            }
        );
        let partial: XceptionConfig = toml::from_str("num_classes = 5").expect("valid config");
        assert_eq!(partial.input_size, 299);
    }

    #[test]
    fn rejects_unknown_fields_naming_them() {
        let error = toml::from_str::<XceptionConfig>("num_clases = 10")
            .expect_err("a typo must not be ignored")
            .to_string();
        assert!(error.contains("num_clases"), "{error}");
    }

    #[test]
    fn rejects_unknown_activation_naming_the_choices() {
        let error = toml::from_str::<XceptionConfig>("mid_activation = \"gelu\"")
            .expect_err("gelu is not an ablation of the paper")
            .to_string();
        assert!(error.contains("relu") && error.contains("elu"), "{error}");
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            XceptionConfig {
                num_classes: 0,
                ..Default::default()
            },
            XceptionConfig {
                input_size: 70,
                ..Default::default()
            },
            XceptionConfig {
                width: 0.0,
                ..Default::default()
            },
            XceptionConfig {
                width: f64::NAN,
                ..Default::default()
            },
            XceptionConfig {
                dropout: 1.0,
                ..Default::default()
            },
            XceptionConfig {
                bn_momentum: 1.0,
                ..Default::default()
            },
        ];
        let fields = [
            "num_classes",
            "input_size",
            "width",
            "width",
            "dropout",
            "bn_momentum",
        ];
        for (config, field) in cases.iter().zip(fields) {
            let error = config.validate().expect_err("invalid");
            assert!(
                error.field().ends_with(field),
                "{error} should name {field}"
            );
            let error = error.to_string();
            assert!(error.contains(field), "{error} should name {field}");
        }
        let smallest = XceptionConfig {
            input_size: MIN_INPUT_SIZE,
            ..Default::default()
        };
        assert_eq!(smallest.validate(), Ok(()));
    }

    #[test]
    fn width_scales_and_rounds_channels() {
        let quarter = XceptionConfig {
            width: 0.25,
            ..Default::default()
        };
        assert_eq!(quarter.channels(728), 182);
        assert_eq!(quarter.channels(2048), 512);
        let tiny = XceptionConfig {
            width: 0.001,
            ..Default::default()
        };
        assert_eq!(tiny.channels(32), 1);
    }
}

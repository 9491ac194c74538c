//! Inception V3's configuration: Keras' `applications.InceptionV3` by default.

use serde::{Deserialize, Serialize};

use crate::config::{CommonFields, ConfigError};

/// Smallest input side Keras' `applications.InceptionV3` accepts.
pub const MIN_INPUT_SIZE: usize = 75;

/// Everything that shapes an Inception V3 network. The defaults are Keras' model, the baseline
/// of the Xception paper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InceptionV3Config {
    /// Number of output classes.
    pub num_classes: usize,
    /// Side of the square input image, in pixels (75 or more, as in Keras).
    pub input_size: usize,
    /// Multiplier on every layer's channel count (1.0 is the published width), rounded to the
    /// nearest integer and never below 1.
    pub width: f64,
    /// Dropout probability before the classifier (Keras has none; TF-slim trained with 0.2).
    pub dropout: f64,
    /// BatchNorm momentum in Keras' convention (the running statistics' weight per update).
    pub bn_momentum: f64,
    /// BatchNorm with a learned scale (gamma). Keras and TF-slim have none (`scale=False`);
    /// torchvision's weights, which timm's default `inception_v3` tag carries, learned one.
    pub bn_scale: bool,
    /// The auxiliary classifier on the 17x17 grid (Inception V3's paper, TF-slim, timm's
    /// `aux_logits`); Keras has none. Trained with `aux_loss_weight`, unused at evaluation.
    pub aux_logits: bool,
    /// Weight of the auxiliary classifier's loss (0.4 in TF-slim and torchvision's recipe).
    pub aux_loss_weight: f64,
}

impl Default for InceptionV3Config {
    fn default() -> Self {
        Self {
            num_classes: 1000,
            input_size: 299,
            width: 1.0,
            dropout: 0.0,
            bn_momentum: 0.99,
            bn_scale: false,
            aux_logits: false,
            aux_loss_weight: 0.4,
        }
    }
}

impl InceptionV3Config {
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
        .validate()?;
        if !(self.aux_loss_weight.is_finite() && self.aux_loss_weight >= 0.0) {
            return Err(ConfigError::BadAuxWeight(self.aux_loss_weight));
        }
        let grid = super::plan::aux_grid(self);
        if self.aux_logits && grid < super::plan::AUX_MIN_GRID {
            return Err(ConfigError::AuxTooSmall {
                input_size: self.input_size,
                grid,
            });
        }
        Ok(())
    }

    /// A layer's channel count at this configuration's width.
    pub fn channels(&self, published: usize) -> usize {
        ((published as f64 * self.width).round() as usize).max(1)
    }
}

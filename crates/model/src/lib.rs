//! `xception-model`: the Xception image classifier (Chollet, arXiv 1610.02357) and the
//! paper's baseline, Inception V3, as Burn modules faithful to Keras' `applications`, with the
//! paper's ablations as configuration fields and an analytic summary (shapes, parameters,
//! multiply-adds).
//!
//! One module per architecture ([`Xception`] with its plan in [`architecture`];
//! [`inception_v3`]), each built from its plan as data; the rest of the project sees only
//! [`ModelConfig`] and [`Network`] ([`network`]). The interop maps tensor names and layouts to
//! timm's and Keras' ([`interop`]) and reads and writes weights files ([`weights`]).

#![forbid(unsafe_code)]

pub mod architecture;
pub mod config;
mod fold;
mod fused;
pub mod inception_v3;
pub mod interop;
pub mod network;
pub mod path;
pub mod weights;
mod xception;

pub use architecture::{BlockSummary, LayerSummary, Summary};
pub use config::{ConfigError, MIN_INPUT_SIZE, MidActivation, XceptionConfig};
pub use fused::PackedWeights;
pub use inception_v3::{InceptionV3, InceptionV3Config};
pub use network::{ARCHITECTURES, ModelConfig, Network};
pub use xception::{
    BN_EPSILON, ConvBn, DownsampleBlock, FinalBlock, MiddleBlock, ParamCounts, SepConvBn, Stem,
    Xception, block_param_counts,
};

#[cfg(test)]
mod tests;

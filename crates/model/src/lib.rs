//! `xception-model`: the Xception image classifier (Chollet, arXiv 1610.02357) as a Burn
//! module, faithful to Keras' `applications/xception.py`, with the paper's ablations as
//! configuration fields and an analytic summary (shapes, parameters, multiply-adds).
//!
//! The architecture is data ([`architecture::plan`]); the module ([`Xception`]) and the
//! summary ([`Summary`]) are both built from it. Its interop maps tensor names and layouts to
//! timm's and Keras' ([`interop`]) and reads and writes weights files ([`weights`]).

#![forbid(unsafe_code)]

pub mod architecture;
pub mod config;
pub mod interop;
pub mod weights;
mod xception;

pub use architecture::{BlockSummary, LayerSummary, Summary};
pub use config::{ConfigError, MIN_INPUT_SIZE, MidActivation, XceptionConfig};
pub use xception::{
    BN_EPSILON, ConvBn, DownsampleBlock, FinalBlock, MiddleBlock, ParamCounts, SepConvBn, Stem,
    Xception, block_param_counts,
};

#[cfg(test)]
mod tests;

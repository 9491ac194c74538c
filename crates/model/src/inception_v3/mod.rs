//! Inception V3 (Szegedy et al. 2015), the Xception paper's baseline, as Keras'
//! `applications/inception_v3.py` builds it: its configuration, its plan (blocks and
//! convolutions as data), the Burn module and its weight names in timm and Keras.

mod config;
mod module;
mod names;
mod plan;

pub use config::{InceptionV3Config, MIN_INPUT_SIZE};
pub use module::{
    AuxHead, BasicConv, BlockModule, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE,
    InceptionV3, KerasBatchNorm, Stem,
};
pub use names::slots;
pub use plan::{
    AUX_MIN_GRID, BlockKind, BlockPlan, ConvPlan, Padding, aux_grid, aux_input, plan, summary,
};

#[cfg(test)]
mod tests;

//! `xception-data`: image datasets for training and evaluating image classifiers.
//!
//! It indexes ImageNet's train and validation layouts (folders, the devkit's flat folder,
//! Kaggle's) and any folder of class folders ([`dataset`]); decodes by content into RGB8
//! ([`decode`]); crops and resizes with antialiasing straight into normalised planar floats
//! ([`transform`]); and batches with a deterministic parallel loader that can resume at any
//! sample ([`loader`]). It also generates a learnable synthetic dataset ([`synth`]) and checks
//! datasets file by file ([`check`]). It knows nothing of the model.

#![forbid(unsafe_code)]

pub mod check;
pub mod classes;
pub mod dataset;
pub mod decode;
pub mod error;
pub mod loader;
pub mod rng;
pub mod synth;
pub mod transform;

pub use check::{CheckReport, check};
pub use dataset::{ClassInfo, Dataset, DatasetOptions, Layout, Split, open};
pub use error::DataError;
pub use loader::{BadFile, EpochIter, HostBatch, Loader, LoaderConfig, Shard, share};
pub use synth::SynthOptions;
pub use transform::{INCEPTION_CROP_PCT, RandomResizedCrop, Transform};

//! Deterministic weights and inputs shared with `scripts/make_parity_fixtures.py`, which
//! computes Keras' outputs for them: parity is checked without committing a weights file.
//! Test fixture code, included by the model's and the training crate's parity tests.

#![allow(dead_code)] // each test file uses a part

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};
use xception_model::interop::{self, Format};
use xception_model::{InceptionV3Config, ModelConfig, Network, XceptionConfig};

fn fnv1a(text: &str) -> u64 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    u64::from(hash)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The moving variance's centre and spread for `config`'s architecture (`VARIANCE` in the
/// script): Inception V3 has no BatchNorm scale, and needs a gain near one per layer.
fn variance(config: &ModelConfig) -> (f64, f64) {
    match config {
        ModelConfig::Xception(_) => (1.5, 0.5),
        ModelConfig::InceptionV3(_) => (0.6, 0.1),
    }
}

/// The value of element `index` of the Keras weight `name` (`layer/weight`) of shape
/// `shape` (Keras layout).
fn value(name: &str, shape: &[usize], index: usize, key: u64, variance: (f64, f64)) -> f32 {
    let noise = (splitmix64(key + index as u64) >> 40) as f64 / f64::from(1u32 << 23) - 1.0;
    let weight = name.rsplit('/').next().unwrap_or_default();
    let value = match weight {
        "kernel" if shape.len() == 4 => {
            noise * (4.0 / (shape[0] * shape[1] * shape[2]) as f64).sqrt()
        }
        "depthwise_kernel" => noise * (4.0 / (shape[0] * shape[1]) as f64).sqrt(),
        "pointwise_kernel" => noise * (4.0 / shape[2] as f64).sqrt(),
        "kernel" => noise * (3.0 / shape[0] as f64).sqrt(),
        "gamma" => 1.0 + 0.2 * noise,
        "moving_variance" => variance.0 + variance.1 * noise,
        _ => 0.1 * noise,
    };
    value as f32
}

/// Every weight of the model `config` describes, under its Keras name and in Keras'
/// layout, set by the formula of `make_parity_fixtures.py`.
pub fn keras_weights(config: &ModelConfig) -> BTreeMap<String, TensorData> {
    // Names and Keras shapes from an export of a freshly built model; its values are unused.
    let model = Network::new(config, &Device::flex()).expect("a valid config");
    let variance = variance(config);
    interop::export(&model, config, Format::Keras)
        .into_iter()
        .map(|(name, data)| {
            let shape = data.shape().to_vec();
            let key = fnv1a(&name) << 32;
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|i| value(&name, &shape, i, key, variance))
                .collect();
            (name, TensorData::new(values, shape))
        })
        .collect()
}

/// The model the parity fixtures were made with: the paper's architecture with 5 classes
/// at 71x71 and no dropout (Keras' Xception has none).
pub fn config() -> ModelConfig {
    ModelConfig::Xception(XceptionConfig {
        num_classes: 5,
        input_size: 71,
        dropout: 0.0,
        ..XceptionConfig::default()
    })
}

/// The Inception V3 parity model: Keras' architecture with 5 classes at 139x139.
pub fn inception_config() -> ModelConfig {
    ModelConfig::InceptionV3(InceptionV3Config {
        num_classes: 5,
        input_size: 139,
        ..InceptionV3Config::default()
    })
}

/// The Xception parity model ([`config`]) on `device` with the formula's weights.
pub fn model(device: &Device) -> Result<Network, String> {
    model_of(&config(), device)
}

/// The model `config` describes on `device` with the formula's weights, loaded through the
/// Keras import path.
pub fn model_of(config: &ModelConfig, device: &Device) -> Result<Network, String> {
    let model = Network::new(config, device).map_err(|e| e.to_string())?;
    interop::import(model, config, Format::Keras, keras_weights(config)).map_err(|e| e.to_string())
}

/// The parity input: `batch` images of `size` x `size`, NCHW, in [-1, 1].
pub fn input(batch: usize, size: usize, device: &Device) -> Tensor<4> {
    let mut values = Vec::with_capacity(batch * 3 * size * size);
    for n in 0..batch {
        for c in 0..3 {
            for h in 0..size {
                for w in 0..size {
                    let (n, c, h, w) = (n as f64, c as f64, h as f64, w as f64);
                    let x = ((0.05 + 0.11 * n) * h + (0.09 - 0.04 * n) * w + 1.7 * c + n).sin();
                    values.push(x as f32);
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(values, [batch, 3, size, size]), device)
}

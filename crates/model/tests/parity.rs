//! Parity with Keras' Xception and InceptionV3 (TensorFlow 'same' padding, BatchNorm epsilon
//! 1e-3, average pools that leave the padding out): the same weights, set by a formula on both
//! sides, give the same logits. The reference logits come from
//! `scripts/make_parity_fixtures.py` (Keras 3 / TensorFlow).

use burn::tensor::Device;
use xception_model::Network;
mod reference;

fn fixture(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("the fixture is JSON")
}

/// The largest difference between `model`'s logits and the fixture's, for its input size.
fn max_logit_error(model: &Network, fixture: &serde_json::Value, device: &Device) -> f64 {
    let size = fixture["size"].as_u64().expect("size") as usize;
    let logits = model.forward(reference::input(2, size, device));
    let found: Vec<f32> = logits.into_data().convert::<f32>().iter::<f32>().collect();
    let expected: Vec<f64> = fixture["logits"]
        .as_array()
        .expect("rows")
        .iter()
        .flat_map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_f64().expect("a number"))
        })
        .collect();
    assert_eq!(found.len(), expected.len());
    let max_error = found
        .iter()
        .zip(&expected)
        .map(|(f, e)| (f64::from(*f) - e).abs())
        .fold(0.0, f64::max);
    println!(
        "max |logit - keras| = {max_error:.3e} over {} logits (ours {found:?}, keras {expected:?})",
        found.len()
    );
    max_error
}

/// The model as trained and with its BatchNorms folded (the inference path of `eval` and
/// `predict`) both match Keras within 1e-4.
fn assert_parity(model: Network, fixture: &serde_json::Value, device: &Device) {
    let max_error = max_logit_error(&model, fixture, device);
    assert!(max_error <= 1e-4, "max error {max_error}");
    let folded = max_logit_error(&model.folded(), fixture, device);
    assert!(folded <= 1e-4, "max error with BatchNorm folded {folded}");
}

#[test]
fn logits_match_keras_within_1e_4() {
    let fixture = fixture(include_str!("fixtures/keras_parity.json"));
    let device = Device::flex();
    let model = reference::model(&device).expect("the parity model");
    assert_parity(model, &fixture, &device);
}

#[test]
fn inception_v3_logits_match_keras_within_1e_4() {
    let fixture = fixture(include_str!("fixtures/keras_parity_inception_v3.json"));
    assert_eq!(fixture["arch"], "inception_v3");
    let device = Device::flex();
    let config = reference::inception_config();
    let model = reference::model_of(&config, &device).expect("the parity model");
    assert_parity(model, &fixture, &device);
}

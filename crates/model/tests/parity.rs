//! Parity with Keras' Xception (TensorFlow 'same' padding, BatchNorm epsilon 1e-3): the same
//! weights, set by a formula on both sides, give the same logits. The reference logits come
//! from `scripts/make_parity_fixtures.py` (Keras 3 / TensorFlow).

use burn::tensor::Device;
mod reference;

fn fixture() -> serde_json::Value {
    let text = include_str!("fixtures/keras_parity.json");
    serde_json::from_str(text).expect("the fixture is JSON")
}

#[test]
fn logits_match_keras_within_1e_4() {
    let fixture = fixture();
    let device = Device::flex();
    let model = reference::model(&device).expect("the parity model");
    let logits = model.forward(reference::input(2, 71, &device));
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
        "max |logit - keras| = {max_error:.3e} over {} logits",
        found.len()
    );
    assert!(
        max_error <= 1e-4,
        "max error {max_error} (ours {found:?}, keras {expected:?})"
    );
}

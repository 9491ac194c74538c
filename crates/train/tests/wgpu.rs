//! The wgpu device against flex: a narrow model's forward pass (BatchNorm in training
//! mode), backward pass and SGD step agree within 1e-4.
//!
//! Without a GPU this runs on lavapipe, Mesa's software Vulkan (`apt-get install
//! mesa-vulkan-drivers`), where each new kernel costs seconds of shader compilation and
//! Burn's autotuning would time every candidate kernel: the test asks CubeCL for its
//! `minimal` autotune level (in this process only; users' GPUs keep the default). On a
//! machine with no Vulkan driver at all the test says so and passes, unless
//! `XCEPTION_REQUIRE_WGPU=1` (set by `.ci/run`) makes that a failure.

use burn::tensor::{Device, DeviceKind, Tensor};

mod common;
use common::{batch, initial_weights, pixels, step};

/// Whether wgpu finds an adapter: Burn panics on first use when there is none.
fn wgpu_available(device: &Device) -> bool {
    let probe = device.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let found = std::panic::catch_unwind(move || {
        Tensor::<1>::ones([2], &probe).sum().into_scalar::<f32>() == 2.0
    })
    .unwrap_or(false);
    std::panic::set_hook(previous);
    found
}

// One test in this file: the environment is set before any thread could read it.
#[test]
fn wgpu_forward_backward_and_sgd_step_agree_with_flex() {
    // SAFETY: this test binary holds this single test, which sets the variable before any
    // other thread (Burn's included) exists to read the environment.
    unsafe { std::env::set_var("CUBECL_AUTOTUNE_LEVEL", "minimal") };
    let wgpu = Device::wgpu(DeviceKind::DefaultDevice);
    if !wgpu_available(&wgpu) {
        let required = std::env::var("XCEPTION_REQUIRE_WGPU").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "XCEPTION_REQUIRE_WGPU=1 but wgpu found no adapter: install a Vulkan driver \
             (on Debian/Ubuntu without a GPU: apt-get install mesa-vulkan-drivers)"
        );
        eprintln!("SKIPPED: wgpu found no adapter (no Vulkan driver); nothing compared");
        return;
    }

    let weights = initial_weights(5);
    let images: Vec<f32> = pixels(2, 9);
    let labels = vec![2, 0];
    let started = std::time::Instant::now();
    let on_wgpu = step(
        std::slice::from_ref(&wgpu),
        &weights,
        batch(images.clone(), labels.clone()),
    );
    println!("wgpu step: {:.1} s", started.elapsed().as_secs_f64());
    let on_flex = step(&[Device::flex()], &weights, batch(images, labels));

    let logits = on_flex
        .logits
        .iter()
        .zip(&on_wgpu.logits)
        .fold(0.0_f32, |m, (a, b)| m.max((a - b).abs()));
    let (weights_difference, path) = on_flex.weights.max_relative_difference(&on_wgpu.weights);
    println!(
        "wgpu vs flex: loss {:.7} vs {:.7}, max |logit difference| {logits:.2e}, \
         weights after the step (lr 1): max relative difference {weights_difference:.2e} at {path}",
        on_wgpu.loss, on_flex.loss
    );
    assert!(logits < 1e-4, "logits differ by {logits:.2e}");
    assert!((on_wgpu.loss - on_flex.loss).abs() < 1e-4);
    assert!(
        weights_difference < 1e-4,
        "{path} differs by {weights_difference:.2e}"
    );
}

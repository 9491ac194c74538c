//! Tests of the Burn module against the analytic summary and Keras' behaviour.

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor, TensorData, Tolerance};

use crate::{
    MidActivation, Summary, Xception, XceptionConfig, architecture::BlockKind, block_param_counts,
};

fn device() -> Device {
    Device::flex()
}

fn random_images(batch: usize, size: usize, device: &Device) -> Tensor<4> {
    Tensor::random(
        [batch, 3, size, size],
        Distribution::Uniform(-1.0, 1.0),
        device,
    )
}

/// Builds `config`, runs a batch through it, and checks every block's output shape and
/// parameter count against the analytic summary.
fn assert_module_matches_summary(config: &XceptionConfig) {
    let device = device();
    let model = Xception::new(config, &device).expect("valid config");
    let summary = Summary::new(config);

    let counts = model.param_counts();
    assert_eq!(counts.trainable, summary.trainable_params, "{config:?}");
    assert_eq!(
        counts.non_trainable, summary.non_trainable_params,
        "{config:?}"
    );
    assert_eq!(
        model.num_params() as u64,
        summary.total_params,
        "{config:?}"
    );
    let blocks = block_param_counts(&model);
    assert_eq!(blocks.len(), summary.blocks.len());
    for ((name, counts), expected) in blocks.iter().zip(&summary.blocks) {
        assert_eq!(name, &expected.name);
        assert_eq!(counts.trainable, expected.params, "{name} of {config:?}");
        assert_eq!(
            counts.non_trainable, expected.non_trainable_params,
            "{name}"
        );
    }

    let batch = 2;
    let mut shapes = Vec::new();
    let features = model.forward_features_traced(
        random_images(batch, config.input_size, &device),
        |name, x| shapes.push((name.to_string(), x.dims())),
    );
    let expected: Vec<_> = summary
        .blocks
        .iter()
        .map(|b| {
            let [c, h, w] = b.output;
            (b.name.clone(), [batch, c, h, w])
        })
        .collect();
    assert_eq!(shapes, expected, "{config:?}");
    let logits = model.classify(features);
    assert_eq!(logits.dims(), [batch, config.num_classes]);
    let values = logits.into_data().try_to_vec::<f32>().expect("f32 logits");
    assert!(values.iter().all(|v| v.is_finite()), "{config:?}");
}

#[test]
fn paper_model_has_exact_parameter_counts() {
    let model = Xception::new(&XceptionConfig::default(), &device()).expect("valid");
    let counts = model.param_counts();
    assert_eq!(counts.trainable, 22_855_952);
    assert_eq!(counts.non_trainable, 54_528);
    // Burn counts BatchNorm running statistics as parameters too.
    assert_eq!(model.num_params(), 22_910_480);
}

#[test]
fn paper_model_feature_maps_match_keras_at_299() {
    let device = device();
    let config = XceptionConfig::default();
    let model = Xception::new(&config, &device).expect("valid");
    let images = random_images(1, 299, &device);

    let stem_conv1 = model.stem.conv1.forward(images.clone());
    assert_eq!(stem_conv1.dims(), [1, 32, 149, 149]);

    let mut shapes = Vec::new();
    let features = model.forward_features_traced(images, |name, x| {
        shapes.push((name.to_string(), x.dims()));
    });
    let middle = [1, 728, 19, 19];
    let mut expected = vec![
        ("block1".to_string(), [1, 64, 147, 147]),
        ("block2".to_string(), [1, 128, 74, 74]),
        ("block3".to_string(), [1, 256, 37, 37]),
        ("block4".to_string(), middle),
    ];
    expected.extend((5..=12).map(|i| (format!("block{i}"), middle)));
    expected.push(("block13".to_string(), [1, 1024, 10, 10]));
    expected.push(("block14".to_string(), [1, 2048, 10, 10]));
    assert_eq!(shapes, expected);
    assert_eq!(model.classify(features).dims(), [1, 1000]);
}

#[test]
fn paper_model_matches_its_summary_block_by_block() {
    // The forward pass at 299 is covered above; a smaller input exercises the same layers.
    assert_module_matches_summary(&XceptionConfig {
        input_size: 96,
        ..Default::default()
    });
}

#[test]
fn variants_match_their_summaries() {
    let small = XceptionConfig {
        input_size: 80,
        width: 0.125,
        middle_blocks: 2,
        num_classes: 7,
        ..Default::default()
    };
    let variants = [
        small.clone(),
        XceptionConfig {
            input_size: 71,
            ..small.clone()
        },
        XceptionConfig {
            input_size: 150,
            ..small.clone()
        },
        XceptionConfig {
            residual: false,
            ..small.clone()
        },
        XceptionConfig {
            mid_activation: MidActivation::Relu,
            ..small.clone()
        },
        XceptionConfig {
            mid_activation: MidActivation::Elu,
            ..small.clone()
        },
        XceptionConfig {
            middle_blocks: 0,
            ..small.clone()
        },
        XceptionConfig {
            width: 0.3,
            dropout: 0.0,
            ..small.clone()
        },
    ];
    for config in &variants {
        assert_module_matches_summary(config);
    }
}

#[test]
fn invalid_config_is_refused() {
    let config = XceptionConfig {
        input_size: 64,
        ..Default::default()
    };
    let error = Xception::new(&config, &device()).expect_err("too small");
    assert!(error.to_string().contains("input_size"));
}

fn small_model(config: XceptionConfig) -> Xception {
    let config = XceptionConfig {
        input_size: 71,
        width: 0.0625,
        middle_blocks: 1,
        num_classes: 3,
        ..config
    };
    Xception::new(&config, &device()).expect("valid")
}

#[test]
fn mid_activation_sits_between_depthwise_and_pointwise() {
    let model = small_model(XceptionConfig::default());
    let mut sepconv = model.middle_flow[0].sepconvs[0].clone();
    let channels = sepconv.depthwise.weight.dims()[0];
    let x = Tensor::random(
        [2, channels, 9, 9],
        Distribution::Normal(0.0, 1.0),
        &device(),
    );

    let depthwise = sepconv.depthwise.forward(x.clone());
    let by_hand = |mid: Tensor<4>| sepconv.bn.forward(sepconv.pointwise.forward(mid));
    let expectations = [
        (MidActivation::None, by_hand(depthwise.clone())),
        (
            MidActivation::Relu,
            by_hand(burn::tensor::activation::relu(depthwise.clone())),
        ),
        (
            MidActivation::Elu,
            by_hand(burn::tensor::activation::elu(depthwise.clone(), 1.0)),
        ),
    ];
    let mut outputs = Vec::new();
    for (activation, expected) in expectations {
        sepconv.mid_activation = activation;
        let actual = sepconv.forward(x.clone());
        actual
            .to_data()
            .assert_approx_eq::<f32>(&expected.to_data(), Tolerance::default());
        outputs.push(actual.into_data());
    }
    // The three variants really compute different things on inputs with negative values.
    assert_ne!(outputs[0], outputs[1]);
    assert_ne!(outputs[1], outputs[2]);
}

#[test]
fn residual_switch_adds_the_shortcut() {
    let with = small_model(XceptionConfig::default());
    let mut block = with.middle_flow[0].clone();
    let channels = block.sepconvs[0].depthwise.weight.dims()[0];
    let x = Tensor::random(
        [1, channels, 5, 5],
        Distribution::Normal(0.0, 1.0),
        &device(),
    );
    let residual = block.forward(x.clone());
    block.residual = false;
    let plain = block.forward(x.clone());
    (residual - plain)
        .to_data()
        .assert_approx_eq::<f32>(&x.to_data(), Tolerance::default());

    let without = small_model(XceptionConfig {
        residual: false,
        ..Default::default()
    });
    assert!(without.entry_flow.iter().all(|b| b.residual.is_none()));
    assert!(without.exit_block.residual.is_none());
    assert!(without.middle_flow.iter().all(|b| !b.residual));
}

#[test]
fn max_pool_pads_like_tensorflow_same() {
    // An even side gets its one padding row and column at the bottom and right, and padding
    // never wins a max (TensorFlow pads with -inf), so an all-negative input stays negative.
    let model = small_model(XceptionConfig::default());
    let pool = &model.entry_flow[0].pool;
    let values: Vec<f32> = (0..16).map(|v| -1.0 - v as f32).collect();
    let x = Tensor::<4>::from_data(TensorData::new(values, [1, 1, 4, 4]), &device());
    let pooled = pool.forward(x);
    // Rows/columns {0,1,2} and {2,3}: maxima of -1 - (4 * row + col).
    let expected = TensorData::new(vec![-1.0f32, -3.0, -9.0, -11.0], [1, 1, 2, 2]);
    pooled.into_data().assert_eq(&expected, true);
}

#[test]
fn stride_two_shortcut_samples_even_positions() {
    // TensorFlow 'same' for a 1x1 stride-2 convolution pads nothing: output (i, j) reads
    // input (2i, 2j), for odd and even sides alike.
    let model = small_model(XceptionConfig::default());
    let shortcut = model.entry_flow[0].residual.as_ref().expect("residual");
    let channels = shortcut.conv.weight.dims()[1];
    let stride_one = burn::nn::conv::Conv2d {
        stride: [1, 1],
        ..shortcut.conv.clone()
    };
    for side in [5, 6] {
        let x = Tensor::random([1, channels, side, side], Distribution::Default, &device());
        let out = shortcut.conv.forward(x.clone());
        let half = side.div_ceil(2);
        assert_eq!(out.dims()[2..], [half, half]);
        let even_positions = x
            .slice_dim(2, burn::tensor::s![0..;2])
            .slice_dim(3, burn::tensor::s![0..;2]);
        let expected = stride_one.forward(even_positions);
        out.to_data()
            .assert_approx_eq::<f32>(&expected.to_data(), Tolerance::default());
    }
}

#[test]
fn dropout_is_active_only_in_training() {
    let config = XceptionConfig {
        input_size: 71,
        width: 0.0625,
        middle_blocks: 1,
        num_classes: 4,
        dropout: 0.5,
        ..Default::default()
    };
    let device = device().autodiff();
    let model = Xception::new(&config, &device).expect("valid");
    let channels = model.final_block.sepconv2.bn.gamma.dims()[0];
    let features = Tensor::<4>::ones([64, channels, 2, 2], &device);

    let eval = model.valid();
    let eval_features = features.clone().without_autodiff();
    let first = eval.classify(eval_features.clone()).into_data();
    let second = eval.classify(eval_features).into_data();
    assert_eq!(first, second, "evaluation is deterministic");

    let trained = model.classify(features).without_autodiff().into_data();
    assert_ne!(first, trained, "training drops features");
}

#[test]
fn blocks_are_the_papers_fourteen_modules() {
    let config = XceptionConfig {
        input_size: 71,
        width: 0.0625,
        ..Default::default()
    };
    let model = Xception::new(&config, &device()).expect("valid");
    let names: Vec<_> = block_param_counts(&model)
        .into_iter()
        .map(|b| b.0)
        .collect();
    assert_eq!(names.len(), 14);
    assert_eq!(names.last().map(String::as_str), Some("block14"));
    assert!(!model.entry_flow[0].relu_first);
    assert!(model.entry_flow[1..].iter().all(|b| b.relu_first));
    assert!(model.exit_block.relu_first);
    let kinds = crate::architecture::plan(&XceptionConfig::default());
    assert_eq!(kinds[0].kind, BlockKind::Stem);
    assert_eq!(kinds[13].kind, BlockKind::Final);
}

#[test]
fn devices_agree_on_the_same_weights() {
    let model = small_model(XceptionConfig::default());
    let images = random_images(2, 71, &device());
    let expected = model.clone().valid().forward(images.clone()).into_data();
    #[allow(deprecated)] // ndarray stays because users asked for it
    let ndarray = Device::ndarray();
    let moved = model.valid().to_device(&ndarray);
    let actual = moved.forward(images.to_device(&ndarray)).into_data();
    actual.assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-4));
}

/// `bn` with random scale, shift and running statistics (a fresh BatchNorm's fold to the
/// identity and a zero bias).
fn random_statistics(bn: burn::nn::BatchNorm) -> burn::nn::BatchNorm {
    use burn::module::{Param, RunningState};
    let [channels] = bn.gamma.dims();
    let device = bn.gamma.device();
    let random =
        |low, high| Tensor::<1>::random([channels], Distribution::Uniform(low, high), &device);
    burn::nn::BatchNorm {
        gamma: Param::from_tensor(random(0.5, 1.5)),
        beta: Param::from_tensor(random(-0.5, 0.5)),
        running_mean: RunningState::new(random(-0.5, 0.5)),
        running_var: RunningState::new(random(0.5, 1.5)),
        ..bn
    }
}

/// The folded network (on flex, its separable convolutions fused into one kernel each where
/// the CPU has AVX-512) gives the logits of the network as trained, op by op.
#[test]
fn fused_inference_matches_the_ops_one_by_one() {
    for width in [0.0625, 0.25] {
        let config = XceptionConfig {
            width,
            ..XceptionConfig::default()
        };
        let mut model = small_model(config);
        let randomize =
            |sepconv: &mut crate::SepConvBn| sepconv.bn = random_statistics(sepconv.bn.clone());
        for block in model.entry_flow.iter_mut().chain([&mut model.exit_block]) {
            randomize(&mut block.sepconv1);
            randomize(&mut block.sepconv2);
        }
        model
            .middle_flow
            .iter_mut()
            .for_each(|block| block.sepconvs.iter_mut().for_each(randomize));
        randomize(&mut model.final_block.sepconv1);
        randomize(&mut model.final_block.sepconv2);
        let randomize_conv =
            |conv: &mut crate::ConvBn| conv.bn = random_statistics(conv.bn.clone());
        randomize_conv(&mut model.stem.conv1);
        randomize_conv(&mut model.stem.conv2);
        for block in model.entry_flow.iter_mut().chain([&mut model.exit_block]) {
            block.residual.iter_mut().for_each(randomize_conv);
        }

        let images = random_images(3, 71, &device());
        let expected = model.clone().valid().forward(images.clone()).into_data();
        let before = crate::fused::fused_calls();
        let actual = model.valid().folded().forward(images).into_data();
        let fused = crate::fused::fused_calls() - before;
        println!("width {width}: {fused} convolutions fused");
        actual.assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-4));
        // Separable: 4 downsampling blocks of 2, 1 middle block of 3, the final block's 2;
        // dense: the stem's 2 and the 4 shortcuts (other tests running at the same time may
        // add theirs).
        #[cfg(target_arch = "x86_64")]
        if cfg!(feature = "flex-kernels") && std::is_x86_feature_detected!("avx512f") {
            assert!(fused >= 19, "{fused} fused");
        }
    }
}

/// A fused kernel's output against the ops' `expected`; a kernel that declined is a failure
/// wherever it runs (a build with the kernels, a CPU with AVX-512).
fn assert_fused_matches(actual: Result<Tensor<4>, Tensor<4>>, expected: Tensor<4>, case: &str) {
    match actual {
        Ok(actual) => {
            assert_eq!(actual.dims(), expected.dims(), "{case}");
            actual
                .into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-4));
        }
        // Only a build without the kernels or a CPU without AVX-512 runs the ops instead.
        #[cfg(target_arch = "x86_64")]
        Err(_) => assert!(
            !(cfg!(feature = "flex-kernels") && std::is_x86_feature_detected!("avx512f")),
            "{case}: the fused kernel declined"
        ),
        #[cfg(not(target_arch = "x86_64"))]
        Err(_) => {}
    }
}

/// The fused separable convolution against the ops one by one, on shapes at its edges:
/// channels that fill part of a panel of 64 or of a vector of 16 (728 = 11 x 64 + 24, 46,
/// 91), pixel counts that end inside a micro-tile of 6, with and without ReLU, bias and
/// residual, inputs in plain NCHW (the kernel copies them to channels-last).
#[test]
fn fused_separable_convolution_matches_the_ops() {
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::activation::relu;

    let device = device();
    let random =
        |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Uniform(-1.0, 1.0), &device);
    for (batch, c_in, c_out, size, relu_input, bias, residual) in [
        (2, 728, 728, 19, true, true, true),
        (1, 46, 91, 9, false, false, false),
        (3, 64, 128, 13, true, true, false),
        (1, 1024, 1536, 10, false, true, true),
    ] {
        let depthwise = Conv2dConfig::new([c_in, c_in], [3, 3])
            .with_groups(c_in)
            .with_padding(PaddingConfig2d::Same)
            .with_bias(false)
            .init(&device);
        let pointwise = Conv2dConfig::new([c_in, c_out], [1, 1])
            .with_bias(bias)
            .init(&device);
        let x = random([batch, c_in, size, size]);
        let residual = residual.then(|| random([batch, c_out, size, size]));

        let input = if relu_input {
            relu(x.clone())
        } else {
            x.clone()
        };
        let expected = pointwise.forward(depthwise.forward(input));
        let expected = match &residual {
            Some(residual) => expected + residual.clone(),
            None => expected,
        };
        let case = format!("{batch}x{c_in}->{c_out} at {size}, relu {relu_input}, bias {bias}");
        let packed = crate::PackedWeights::new(&pointwise);
        let actual = crate::fused::separable_conv2d(
            x,
            relu_input,
            &depthwise,
            (&pointwise, &packed),
            residual.as_ref(),
        );
        assert_fused_matches(actual, expected, &case);
    }
}

/// The fused convolution (bias, ReLU) against the ops one by one: the stem's strided 3x3
/// convolutions on plain NCHW input, the shortcuts' strided 1x1 ones on odd and even sizes,
/// padded ones ('same' with odd and even kernels, asymmetric explicit padding), channels that
/// fill part of a panel of 64 or of a vector of 16, pixel counts that end inside a micro-tile.
#[test]
fn fused_convolution_matches_the_ops() {
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::activation::relu;

    let device = device();
    for (batch, c_in, c_out, size, kernel, stride, padding, relu_output, bias) in [
        (2, 3, 32, 31, 3, 2, PaddingConfig2d::Valid, true, true),
        (1, 32, 64, 15, 3, 1, PaddingConfig2d::Valid, true, true),
        (3, 64, 128, 13, 1, 2, PaddingConfig2d::Same, false, true),
        (2, 20, 70, 12, 1, 2, PaddingConfig2d::Same, false, false),
        (1, 5, 91, 9, 3, 1, PaddingConfig2d::Same, true, false),
        (1, 8, 16, 10, 2, 1, PaddingConfig2d::Same, false, true),
        (
            2,
            6,
            10,
            8,
            3,
            2,
            PaddingConfig2d::Explicit(1, 0, 0, 1),
            true,
            true,
        ),
    ] {
        let conv = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(padding.clone())
            .with_bias(bias)
            .init(&device);
        let x = Tensor::<4>::random(
            [batch, c_in, size, size],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        let expected = conv.forward(x.clone());
        let expected = if relu_output {
            relu(expected)
        } else {
            expected
        };
        let case =
            format!("{batch}x{c_in}->{c_out} at {size}, {kernel}x{kernel} / {stride}, {padding:?}");
        let packed = crate::PackedWeights::new(&conv);
        let actual = crate::fused::conv2d(x, (&conv, &packed), relu_output);
        assert_fused_matches(actual, expected, &case);
    }
}

/// Max-pooling plus the shortcut in one pass against the pool then the addition, with
/// TensorFlow's 'same' padding asymmetric (even sizes) and symmetric (odd), and NaNs in the
/// input (a NaN wins the window, as in Burn's max-pool).
#[test]
fn fused_max_pool_and_shortcut_match_the_ops() {
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::pool::MaxPool2dConfig;

    let device = device();
    let pool = MaxPool2dConfig::new([3, 3])
        .with_strides([2, 2])
        .with_padding(PaddingConfig2d::Same)
        .init();
    for (batch, channels, size) in [(2, 20, 74), (1, 70, 33), (3, 16, 10), (1, 5, 2)] {
        // A 1x1 convolution's output: channels-last on flex, as the blocks' activations.
        let to_channels_last = Conv2dConfig::new([channels, channels], [1, 1]).init(&device);
        let x = Tensor::random(
            [batch, channels, size, size],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        // About one pixel in 50 NaN: a NaN input value makes every channel of its pixel NaN
        // after the convolution.
        let nans = Tensor::<4>::random(x.shape(), Distribution::Default, &device)
            .greater_elem(1.0 - 0.02 / channels as f64);
        let x = to_channels_last.forward(x.mask_fill(nans, f32::NAN));
        let out = size.div_ceil(2);
        let shortcut = Tensor::<4>::random(
            [batch, channels, out, out],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        let expected = pool.forward(x.clone()) + shortcut.clone();
        if !cfg!(feature = "flex-kernels") {
            continue;
        }
        match crate::fused::max_pool2d_add(x, &pool, shortcut) {
            Ok(actual) => actual
                .into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-6)),
            Err(_) => panic!("{batch}x{channels} at {size}: the fused kernel declined"),
        }
    }
}

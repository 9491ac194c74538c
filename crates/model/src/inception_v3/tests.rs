//! Inception V3's module against its summary, Keras' counts and its weight names.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use super::{InceptionV3Config, plan};
use crate::interop::{self, Format, InteropError};
use crate::{ModelConfig, Network, Summary};

fn small() -> InceptionV3Config {
    InceptionV3Config {
        num_classes: 5,
        input_size: 75,
        width: 0.0625,
        ..Default::default()
    }
}

#[test]
fn keras_model_has_kerass_counts() {
    let summary = Summary::new(ModelConfig::InceptionV3(InceptionV3Config::default()));
    assert_eq!(summary.trainable_params, 23_817_352);
    assert_eq!(summary.non_trainable_params, 34_432);
    assert_eq!(summary.total_params, 23_851_784);
    assert_eq!(summary.conv_layers, 94);
    // Convolutions and classifier; Keras' documentation rounds this to 5.7 G.
    assert!(
        (5.6e9..5.8e9).contains(&(summary.macs as f64)),
        "{}",
        summary.macs
    );
    let output = |name: &str| {
        let block = summary.blocks.iter().find(|b| b.name == name);
        block.map(|b| b.output).expect("block exists")
    };
    assert_eq!(output("stem"), [192, 35, 35]);
    assert_eq!(output("mixed0"), [256, 35, 35]);
    assert_eq!(output("mixed2"), [288, 35, 35]);
    assert_eq!(output("mixed3"), [768, 17, 17]);
    assert_eq!(output("mixed7"), [768, 17, 17]);
    assert_eq!(output("mixed8"), [1280, 8, 8]);
    assert_eq!(output("mixed10"), [2048, 8, 8]);
}

#[test]
fn module_counts_match_the_summary_with_and_without_the_options() {
    let device = Device::flex();
    let variants = [
        InceptionV3Config::default(),
        InceptionV3Config {
            bn_scale: true,
            aux_logits: true,
            num_classes: 10,
            ..Default::default()
        },
    ];
    for config in variants {
        let model_config = ModelConfig::InceptionV3(config.clone());
        let model = Network::new(&model_config, &device).expect("valid");
        let summary = Summary::new(&model_config);
        let counts = model.param_counts();
        assert_eq!(counts.trainable, summary.trainable_params, "{config:?}");
        assert_eq!(counts.non_trainable, summary.non_trainable_params);
        assert_eq!(model.num_params() as u64, summary.total_params);
        for (name, counts) in model.block_param_counts() {
            let block = summary.blocks.iter().find(|b| b.name == name);
            let block = block.expect("the summary has every block");
            assert_eq!(counts.trainable, block.params, "{name}");
            assert_eq!(counts.non_trainable, block.non_trainable_params, "{name}");
        }
    }
}

#[test]
fn every_block_has_the_summarys_shape_and_the_aux_head_its_logits() {
    let device = Device::flex().autodiff();
    let config = InceptionV3Config {
        aux_logits: true,
        input_size: 299,
        width: 0.0625,
        num_classes: 3,
        ..Default::default()
    };
    let model_config = ModelConfig::InceptionV3(config.clone());
    let model = Network::new(&model_config, &device).expect("valid");
    let summary = Summary::new(&model_config);
    let images = Tensor::random([2, 3, 299, 299], Distribution::Uniform(-1.0, 1.0), &device);
    let mut shapes = Vec::new();
    let features = model.forward_features_traced(images.clone(), |name, x| {
        shapes.push((name.to_string(), x.dims()))
    });
    let expected: Vec<_> = summary
        .blocks
        .iter()
        .filter(|b| b.name != "aux")
        .map(|b| {
            let [c, h, w] = b.output;
            (b.name.clone(), [2, c, h, w])
        })
        .collect();
    assert_eq!(shapes, expected);
    assert_eq!(model.classify(features).dims(), [2, 3]);
    let (logits, aux) = model.forward_with_aux(images);
    assert_eq!(logits.dims(), [2, 3]);
    assert_eq!(aux.map(|a| a.dims()), Some([2, 3]));
}

#[test]
fn smallest_input_runs_and_the_aux_head_needs_299() {
    let device = Device::flex();
    let config = small();
    let model = Network::new(&ModelConfig::InceptionV3(config.clone()), &device).expect("valid");
    let images = Tensor::random([1, 3, 75, 75], Distribution::Uniform(-1.0, 1.0), &device);
    assert_eq!(model.forward(images).dims(), [1, 5]);

    let too_small = InceptionV3Config {
        input_size: 74,
        ..small()
    };
    assert_eq!(
        too_small.validate().map_err(|e| e.field()),
        Err("model.input_size")
    );
    let aux = InceptionV3Config {
        aux_logits: true,
        input_size: 298,
        ..small()
    };
    assert_eq!(
        aux.validate().map_err(|e| e.field()),
        Err("model.aux_logits")
    );
    assert_eq!(super::aux_grid(&InceptionV3Config::default()), 17);
}

#[test]
fn keras_names_follow_creation_order() {
    let slots = interop::slots(&ModelConfig::InceptionV3(InceptionV3Config::default()));
    let keras = |burn: &str| {
        let slot = slots.iter().find(|s| s.burn == burn).expect("slot");
        (slot.keras.clone(), slot.timm.clone())
    };
    assert_eq!(
        keras("stem.conv_1a_3x3.conv.weight"),
        (
            Some("conv2d/kernel".into()),
            "Conv2d_1a_3x3.conv.weight".into()
        )
    );
    // mixed0 starts after the stem's five convolutions; its pool branch is its 7th.
    assert_eq!(
        keras("mixed_5b.branch_pool.bn.running_var"),
        (
            Some("batch_normalization_11/moving_variance".into()),
            "Mixed_5b.branch_pool.bn.running_var".into()
        )
    );
    assert_eq!(
        keras("mixed_7c.branch_pool.conv.weight").0,
        Some("conv2d_93/kernel".into())
    );
    assert_eq!(keras("fc.weight").0, Some("predictions/kernel".into()));
    let conv_count = plan(&InceptionV3Config::default())
        .iter()
        .map(|b| b.convs.len())
        .sum::<usize>();
    assert_eq!(conv_count, 94);
}

#[test]
fn timm_names_and_shapes_are_timms_inception_v3() {
    let config = ModelConfig::InceptionV3(InceptionV3Config {
        aux_logits: true,
        ..Default::default()
    });
    let fixture = include_str!("../../tests/fixtures/timm_inception_v3_keys.txt");
    crate::interop::tests::assert_timm_names_and_shapes(&config, fixture);
}

#[test]
fn export_then_import_gives_the_same_tensors() {
    let device = Device::flex();
    for (bn_scale, aux_logits) in [(false, false), (true, true)] {
        let config = ModelConfig::InceptionV3(InceptionV3Config {
            bn_scale,
            aux_logits,
            input_size: 299,
            ..small()
        });
        let source = Network::new(&config, &device).expect("model");
        let original = interop::tensors_by_path(&source);
        for format in [Format::Timm, Format::Keras] {
            let exported: BTreeMap<String, TensorData> = interop::export(&source, &config, format)
                .into_iter()
                .collect();
            let fresh = Network::new(&config, &device).expect("model");
            let imported = interop::import(fresh, &config, format, exported).expect("fits");
            let imported = interop::tensors_by_path(&imported);
            for (path, data) in &original {
                // Keras has no auxiliary classifier: those tensors keep their fresh values.
                if format == Format::Keras && path.starts_with("aux_logits") {
                    continue;
                }
                assert_eq!(&imported[path], data, "{path} via {format}");
            }
        }
    }
}

#[test]
fn a_scale_other_than_one_needs_bn_scale() {
    let device = Device::flex();
    let config = ModelConfig::InceptionV3(small());
    let source = Network::new(&config, &device).expect("model");
    let mut exported: BTreeMap<String, TensorData> =
        interop::export(&source, &config, Format::Timm)
            .into_iter()
            .collect();
    let key = "Mixed_6a.branch3x3.bn.weight".to_string();
    let channels = exported[&key].shape()[0];
    exported.insert(
        key.clone(),
        TensorData::new(vec![0.5f32; channels], [channels]),
    );
    let fresh = Network::new(&config, &device).expect("model");
    let error = interop::import(fresh, &config, Format::Timm, exported).expect_err("refused");
    assert_eq!(error, InteropError::Scaled(key));
    assert!(error.to_string().contains("model.bn_scale"));
}

//! Inception V3's tensors under their three names: the Burn path, timm's `inception_v3` key and
//! Keras' `layer/weight` (Keras names every layer of this model by creation order:
//! `conv2d`, `conv2d_1`, ... and `batch_normalization`, ...).

use super::config::InceptionV3Config;
use super::plan::{AUX_INPUT_BLOCK, ConvPlan, aux_convs, plan};
use crate::interop::{Kind, Slot, bn_slots_with, keras_unnamed};

/// The convolution + BatchNorm `conv` under Burn path `burn`, timm key `timm` and Keras
/// layer number `keras` (none for the auxiliary classifier, which Keras lacks).
fn conv_slots(slots: &mut Vec<Slot>, burn: &str, timm: &str, keras: Option<usize>, scale: bool) {
    let keras_layer = |base: &str| keras.map(|index| keras_unnamed(base, index));
    let conv = keras_layer("conv2d");
    let bn = keras_layer("batch_normalization");
    slots.push(Slot {
        burn: format!("{burn}.conv.weight"),
        timm: format!("{timm}.conv.weight"),
        keras: conv.map(|layer| format!("{layer}/kernel")),
        kind: Kind::Conv,
    });
    let gamma = if scale { Kind::Gamma } else { Kind::UnitGamma };
    let (burn_bn, timm_bn) = (format!("{burn}.bn"), format!("{timm}.bn"));
    bn_slots_with(slots, &burn_bn, &timm_bn, bn.as_deref(), gamma);
}

fn dense_slots(slots: &mut Vec<Slot>, burn: &str, timm: &str, keras: Option<&str>) {
    for (kind, name, keras_name) in [
        (Kind::DenseWeight, "weight", "kernel"),
        (Kind::DenseBias, "bias", "bias"),
    ] {
        slots.push(Slot {
            burn: format!("{burn}.{name}"),
            timm: format!("{timm}.{name}"),
            keras: keras.map(|layer| format!("{layer}/{keras_name}")),
            kind,
        });
    }
}

/// Every tensor of the model that `config` describes, in the order of the network.
pub fn slots(config: &InceptionV3Config) -> Vec<Slot> {
    let mut slots = Vec::new();
    let mut keras_index = 0..;
    let blocks = plan(config);
    let scale = config.bn_scale;
    for block in &blocks {
        for ConvPlan { field, timm, .. } in &block.convs {
            let timm = match block.timm {
                "" => timm.to_string(),
                parent => format!("{parent}.{timm}"),
            };
            let burn = format!("{}.{field}", block.field);
            conv_slots(&mut slots, &burn, &timm, keras_index.next(), scale);
        }
        if block.name == AUX_INPUT_BLOCK && config.aux_logits {
            for conv in aux_convs(config, &blocks) {
                let burn = format!("aux_logits.{}", conv.field);
                let timm = format!("AuxLogits.{}", conv.timm);
                conv_slots(&mut slots, &burn, &timm, None, scale);
            }
            dense_slots(&mut slots, "aux_logits.fc", "AuxLogits.fc", None);
        }
    }
    dense_slots(&mut slots, "fc", "fc", Some("predictions"));
    slots
}

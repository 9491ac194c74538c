//! `xception info`: the layer table, parameter and multiply-add counts of a configuration.

use std::path::Path;

use anyhow::{Result, bail};
use xception_model::{LayerSummary, ModelConfig, Network, Summary};
use xception_train::TrainConfig;

use crate::device::DeviceChoice;

/// The `[model]` table of a training config (the paper's model when the table is absent);
/// the whole file is checked, so a typo in any section is reported.
pub fn load_model_config(path: &Path) -> Result<ModelConfig> {
    Ok(TrainConfig::load(path, &[])?.model)
}

/// Prints the summary of `config`, after checking it against the module built on `device`.
pub fn run(config: Option<&Path>, json: bool, device: DeviceChoice) -> Result<()> {
    let config = match config {
        Some(path) => load_model_config(path)?,
        None => ModelConfig::default(),
    };
    let summary = Summary::new(&config);
    let model = Network::new(&config, &device.device())?;
    let counts = model.param_counts();
    if (counts.trainable, counts.non_trainable)
        != (summary.trainable_params, summary.non_trainable_params)
    {
        bail!(
            "internal error: the module has {counts:?} parameters but the summary counts {} + {}",
            summary.trainable_params,
            summary.non_trainable_params
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", render(&summary));
    }
    Ok(())
}

fn shape(dims: &[usize]) -> String {
    dims.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

/// Digits grouped by thousands, as the paper prints parameter counts.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn layer_row(out: &mut String, layer: &LayerSummary) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "  {:<24} {:<38} {:>14} {:>12} {:>16}",
        layer.name,
        layer.op,
        shape(&layer.output),
        grouped(layer.params),
        grouped(layer.macs)
    );
}

/// The human-readable table.
pub fn render(summary: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", summary.config.describe());
    let _ = writeln!(
        out,
        "{:<26} {:<38} {:>14} {:>12} {:>16}",
        "layer", "operation", "output", "params", "multiply-adds"
    );
    let mut layers = summary.layers.iter().peekable();
    for block in &summary.blocks {
        let _ = writeln!(
            out,
            "{:<65} {:>14} {:>12} {:>16}",
            format!("{} ({})", block.name, block.stage),
            shape(&block.output),
            grouped(block.params),
            grouped(block.macs)
        );
        while let Some(layer) = layers.next_if(|l| l.block == block.name) {
            layer_row(&mut out, layer);
        }
    }
    let _ = writeln!(out, "head");
    for layer in layers {
        layer_row(&mut out, layer);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "trainable parameters      {:>15}",
        grouped(summary.trainable_params)
    );
    let _ = writeln!(
        out,
        "non-trainable parameters  {:>15}  (BatchNorm running mean and variance)",
        grouped(summary.non_trainable_params)
    );
    let _ = writeln!(
        out,
        "total parameters          {:>15}",
        grouped(summary.total_params)
    );
    let _ = writeln!(
        out,
        "multiply-adds per image   {:>15}  ({:.2} G; convolutions and classifier)",
        grouped(summary.macs),
        summary.macs as f64 / 1e9
    );
    let note = summary.config.conv_layers_note();
    let _ = writeln!(
        out,
        "convolution layers        {:>15}{note}",
        summary.conv_layers
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(22_855_952), "22,855,952");
        assert_eq!(grouped(8_357_403_496), "8,357,403,496");
    }

    #[test]
    fn table_lists_every_layer_and_the_totals() {
        let text = render(&Summary::new(ModelConfig::default()));
        for needle in [
            "block1_conv1",
            "block14_sepconv2",
            "predictions",
            "22,855,952",
            "54,528",
            "22,910,480",
            "8,357,403,496",
            "2048x10x10",
            "728x19x19",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
